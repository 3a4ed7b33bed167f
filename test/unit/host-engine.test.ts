/**
 * The workflow engine on its own: synthetic workflows whose steps record what they are asked
 * to do, over HostState on a MemoryStore. What is checked is the journal (each step's state,
 * times and message, the operation's state and error), the order of do/undo calls, the
 * events listeners hear, and what the store holds afterwards.
 */
import { expect } from 'chai';
import { FailedPreconditionError, UnavailableError } from '../../common/errors.js';
import { silentLogger } from '../../common/logging.js';
import type { OperationKindName, OperationRecord, StepRecord, StepStateName } from '../../host-agent/model.js';
import { HostState } from '../../host-agent/state.js';
import { MemoryStore } from '../../host-agent/store.js';
import { Engine, type StepContext, type StepDef, type StepEventKindName, type WorkflowDef } from '../../host-agent/workflow/engine.js';

interface Env {
  calls: string[];
  /** The harness's current state (a new one after a restart). */
  readonly state: HostState;
}

type Ctx = StepContext<Env>;

interface StepOpts {
  /** Throw from `do` this many times (Infinity: always), then succeed. */
  doFails?: number;
  /** Throw from `undo` this many times, then succeed. */
  undoFails?: number;
  doError?: () => Error;
  undoError?: () => Error;
  skip?: string;
  commits?: boolean;
  /** Runs inside `do` / `undo`, before it returns or throws. */
  onDo?: (ctx: Ctx) => void;
  onUndo?: (ctx: Ctx) => void;
  noUndo?: boolean;
}

const KINDS: OperationKindName[] = ['create_disk', 'connect_disk', 'remove_disk', 'add_available_disk', 'remove_available_disk'];
const BACKOFF = { firstMs: 1, maxMs: 4 };

class Harness {
  readonly store: MemoryStore;
  state: HostState;
  engine: Engine<Env>;
  readonly env: Env;
  private n = 0;

  constructor(
    readonly steps: StepDef<Env>[],
    store = new MemoryStore(),
    private readonly finish?: WorkflowDef<Env>['finish'],
  ) {
    this.store = store;
    const self = this;
    this.env = {
      calls: [],
      get state() {
        return self.state;
      },
    };
    this.state = new HostState(store);
    this.engine = this.newEngine();
  }

  newEngine(): Engine<Env> {
    const wf: WorkflowDef<Env> = { steps: this.steps, finish: this.finish };
    const workflows = Object.fromEntries(KINDS.map((k) => [k, wf])) as Record<OperationKindName, WorkflowDef<Env>>;
    return new Engine(this.state, this.env, workflows, silentLogger(), { backoff: BACKOFF });
  }

  /** A restart: memory read again from the store, a new engine. */
  restart(): void {
    this.state = new HostState(this.store);
    this.engine = this.newEngine();
  }

  /** A recorded, locked operation whose steps are all pending (or as given). */
  record(patch: Partial<OperationRecord> = {}): OperationRecord {
    const id = `op-test${++this.n}`;
    const now = Date.now();
    const op: OperationRecord = {
      id,
      kind: 'create_disk',
      scope: 'admin',
      requestId: `r${this.n}`,
      vmId: '',
      mountPath: '',
      mountKey: '',
      state: 'running',
      committed: false,
      steps: this.steps.map((s) => ({ name: s.name, state: 'pending' })),
      params: {},
      data: {},
      createMs: now,
      updateMs: now,
      locks: [`test:${id}`],
      ...patch,
    };
    this.state.transact(() => this.state.operations.put(op));
    return op;
  }

  /** Records, locks and starts an operation; resolves with it once it has ended. */
  run(listen?: (kind: StepEventKindName | 'end', step: string, op: OperationRecord) => void): Promise<OperationRecord> {
    const op = this.record();
    const ended = this.ended(op.id, listen);
    this.engine.lock(op);
    this.engine.start(op);
    return ended;
  }

  ended(id: string, listen?: (kind: StepEventKindName | 'end', step: string, op: OperationRecord) => void): Promise<OperationRecord> {
    return new Promise((resolve) => {
      const off = this.engine.subscribe(id, (ev, op) => {
        listen?.(ev ? ev.kind : 'end', ev?.step ?? '', op);
        if (!ev) {
          off();
          resolve(op);
        }
      });
    });
  }

  op(id: string): OperationRecord {
    return this.state.operations.get(id)!;
  }

  /** What the store holds for the operation (not memory). */
  stored(id: string): OperationRecord {
    return this.store.load().operations.get(id) as OperationRecord;
  }

  /** The model changes steps made (meta records named after the step), as stored. */
  storedMarks(): string[] {
    return [...this.store.load().meta.keys()].sort();
  }
}

/** A step that records its calls in env.calls and marks its model change as a meta record. */
function rec(name: string, o: StepOpts = {}): StepDef<Env> {
  let doFails = o.doFails ?? 0;
  let undoFails = o.undoFails ?? 0;
  const s: StepDef<Env> = {
    name,
    commits: o.commits,
    do(ctx) {
      ctx.env.calls.push(`do ${name}`);
      o.onDo?.(ctx);
      if (doFails > 0) {
        doFails--;
        throw o.doError?.() ?? new UnavailableError(`${name} could not reach the array`, 'ARRAY_UNAVAILABLE');
      }
      return () => {
        ctx.env.state.meta.put({ key: name, value: 'done' });
      };
    },
  };
  if (o.skip !== undefined) s.skip = () => o.skip;
  if (!o.noUndo) {
    s.undo = (ctx) => {
      ctx.env.calls.push(`undo ${name}`);
      o.onUndo?.(ctx);
      if (undoFails > 0) {
        undoFails--;
        throw o.undoError?.() ?? new UnavailableError(`undo of ${name} could not reach the array`, 'ARRAY_UNAVAILABLE');
      }
      return () => {
        ctx.env.state.meta.delete(name);
      };
    };
  }
  return s;
}

function harness(steps: StepDef<Env>[], store?: MemoryStore, finish?: WorkflowDef<Env>['finish']): Harness {
  return new Harness(steps, store, finish);
}

const states = (op: OperationRecord): StepStateName[] => op.steps.map((s) => s.state);
const stepOf = (op: OperationRecord, name: string): StepRecord => op.steps.find((s) => s.name === name)!;

describe('host-agent workflow engine', () => {
  describe('running forward', () => {
    it('runs the steps in order, journals each one done with start and end times, and ends SUCCEEDED', async () => {
      const before = Date.now();
      const h = harness([rec('a'), rec('b'), rec('c')]);
      const op = await h.run();
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'do c']);
      expect(op.state).to.equal('succeeded');
      expect(op.error).to.equal(undefined);
      for (const s of op.steps) {
        expect(s.state, s.name).to.equal('done');
        expect(s.startMs, s.name).to.be.a('number').and.at.least(before);
        expect(s.endMs, s.name).to.be.a('number').and.at.least(s.startMs!);
      }
      expect(op.steps[1]!.startMs).to.be.at.least(op.steps[0]!.endMs!);
      expect(h.stored(op.id)).to.deep.equal(op);
    });

    it('commits each step\'s model change with its "done", and the finish hook with SUCCEEDED', async () => {
      const h = harness([rec('a'), rec('b')], undefined, (ctx) => {
        ctx.env.state.meta.put({ key: 'finished', value: true });
      });
      const op = await h.run();
      expect(op.state).to.equal('succeeded');
      expect(h.storedMarks()).to.deep.equal(['a', 'b', 'finished']);
    });

    it('journals a skipped step as skipped with its reason and never runs it', async () => {
      const h = harness([rec('a'), rec('b', { skip: 'not needed here' }), rec('c')]);
      const op = await h.run();
      expect(h.env.calls).to.deep.equal(['do a', 'do c']);
      expect(stepOf(op, 'b')).to.include({ state: 'skipped', message: 'not needed here' });
      expect(stepOf(op, 'b').startMs).to.be.a('number');
      expect(op.state).to.equal('succeeded');
    });

    it('journals a step as running before its do starts, and a note as its message', async () => {
      let seen: StepRecord | undefined;
      const h = harness([
        rec('a', {
          onDo: (ctx) => {
            ctx.note('waiting for the array');
            seen = h.stored(ctx.op.id).steps[0];
          },
        }),
      ]);
      const op = await h.run();
      expect(seen).to.include({ state: 'running', message: 'waiting for the array' });
      expect(op.steps[0]!.state).to.equal('done');
    });

    it('gives a step the same request id every time it runs for the same operation, and a different one per step and operation', async () => {
      const ids: string[] = [];
      const h = harness([rec('a', { onDo: (ctx) => ids.push(ctx.requestId('map')) }), rec('b', { onDo: (ctx) => ids.push(ctx.requestId('map')) })]);
      const op1 = await h.run();
      const op2 = await h.run();
      expect(ids).to.deep.equal([`${op1.id}:a:map`, `${op1.id}:b:map`, `${op2.id}:a:map`, `${op2.id}:b:map`]);
    });

    it('releases the operation\'s locks when it ends', async () => {
      const h = harness([rec('a', { onDo: (ctx) => expect(h.engine.holder(`test:${ctx.op.id}`)).to.equal(ctx.op.id) })]);
      const op = await h.run();
      expect(h.engine.holder(`test:${op.id}`)).to.equal(undefined);
    });
  });

  describe('rolling back', () => {
    const cases: { name: string; failAt: string; undone: string[] }[] = [
      { name: 'the first step', failAt: 'a', undone: ['a'] },
      { name: 'a middle step', failAt: 'c', undone: ['c', 'a'] },
      { name: 'the last step', failAt: 'e', undone: ['e', 'd', 'c', 'a'] },
    ];
    for (const c of cases) {
      it(`a failure in ${c.name} undoes it and every earlier done step newest first, never a skipped or pending one`, async () => {
        const names = ['a', 'b', 'c', 'd', 'e'];
        const h = harness(names.map((n) => (n === 'b' ? rec(n, { skip: 'skipped here' }) : rec(n, { doFails: n === c.failAt ? Infinity : 0 }))));
        const op = await h.run();
        const ran = names.slice(0, names.indexOf(c.failAt) + 1).filter((n) => n !== 'b');
        expect(h.env.calls).to.deep.equal([...ran.map((n) => `do ${n}`), ...c.undone.map((n) => `undo ${n}`)]);
        expect(op.state).to.equal('failed');
        for (const n of names) {
          const want: StepStateName = n === 'b' && names.indexOf(c.failAt) > 1 ? 'skipped' : c.undone.includes(n) ? 'undone' : 'pending';
          expect(stepOf(op, n).state, n).to.equal(want);
        }
        expect(h.storedMarks(), 'model changes of undone steps are gone').to.deep.equal([]);
        expect(h.stored(op.id)).to.deep.equal(op);
      });
    }

    it('ends FAILED with the original error, and the failed step keeps its message after its undo', async () => {
      const h = harness([
        rec('a', { undoFails: 1, undoError: () => new UnavailableError('the undo hit something else', 'OTHER') }),
        rec('b', { doFails: Infinity, doError: () => new FailedPreconditionError('the LUN is mapped elsewhere', 'LUN_MAPPED') }),
      ]);
      const op = await h.run();
      expect(op.state).to.equal('failed');
      expect(op.error).to.deep.equal({ kind: 'failed_precondition', reason: 'LUN_MAPPED', message: 'the LUN is mapped elsewhere' });
      expect(stepOf(op, 'b')).to.include({ state: 'undone', message: 'the LUN is mapped elsewhere' });
      expect(stepOf(op, 'b').endMs).to.be.a('number');
      expect(stepOf(op, 'a').state).to.equal('undone');
    });

    it('the failed step keeps its own failure message even when its undo had to be retried', async () => {
      const h = harness([rec('a'), rec('b', { doFails: Infinity, undoFails: 1, doError: () => new FailedPreconditionError('the LUN is mapped elsewhere', 'LUN_MAPPED') })]);
      const op = await h.run();
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'undo b', 'undo b', 'undo a']);
      expect(op.error?.message).to.equal('the LUN is mapped elsewhere');
      expect(stepOf(op, 'b')).to.include({ state: 'undone', message: 'the LUN is mapped elsewhere' });
    });

    it('reports an error that is not a domain error as INTERNAL with a generic message (nothing of it leaks)', async () => {
      const h = harness([rec('a', { doFails: Infinity, doError: () => new TypeError('secret stack detail') })]);
      const op = await h.run();
      expect(op.error?.kind).to.equal('internal');
      expect(op.error?.reason).to.equal('INTERNAL');
      expect(op.error?.message).to.not.include('secret');
    });

    it('retries an undo that throws until it succeeds, showing rolling_back and the undo failure meanwhile', async () => {
      const seen: { opState: string; stepState: string; message?: string }[] = [];
      const h = harness([
        rec('a', {
          undoFails: 3,
          onUndo: (ctx) => {
            const stored = h.stored(ctx.op.id);
            seen.push({ opState: stored.state, stepState: stored.steps[0]!.state, message: stored.steps[0]!.message });
          },
        }),
        rec('b', { doFails: Infinity }),
      ]);
      const op = await h.run();
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'undo b', 'undo a', 'undo a', 'undo a', 'undo a']);
      expect(seen.map((s) => s.opState)).to.deep.equal(['rolling_back', 'rolling_back', 'rolling_back', 'rolling_back']);
      expect(seen.map((s) => s.stepState)).to.deep.equal(['undoing', 'undoing', 'undoing', 'undoing']);
      expect(seen[1]!.message).to.match(/^undo failed, retrying: undo of a could not reach the array/);
      expect(op.state).to.equal('failed');
      expect(stepOf(op, 'a').state).to.equal('undone');
      expect(stepOf(op, 'a').message, 'a step that did not fail ends without the retry message').to.equal(undefined);
      expect(op.error?.message).to.equal('b could not reach the array');
    });

    it('retries an undo that throws a non-domain error too, and never drops it', async () => {
      const h = harness([rec('a', { undoFails: 2, undoError: () => new Error('boom') }), rec('b', { doFails: Infinity })]);
      const op = await h.run();
      expect(h.env.calls.filter((c) => c === 'undo a')).to.have.length(3);
      expect(op.state).to.equal('failed');
    });

    it('a failing commit step (not yet done) is still rolled back, its own undo included', async () => {
      const h = harness([rec('a'), rec('b', { commits: true, doFails: Infinity }), rec('c')]);
      const op = await h.run();
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'undo b', 'undo a']);
      expect(op.committed).to.equal(false);
      expect(op.state).to.equal('failed');
    });

    it('runs a step without an undo through the rollback as undone', async () => {
      const h = harness([rec('a', { noUndo: true }), rec('b', { doFails: Infinity })]);
      const op = await h.run();
      expect(states(op)).to.deep.equal(['undone', 'undone']);
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'undo b']);
    });
  });

  describe('past the commit point', () => {
    it('retries a failing step forward until it succeeds and never undoes anything', async () => {
      const retries: string[] = [];
      const h = harness([rec('a'), rec('b', { commits: true }), rec('c', { doFails: 3 }), rec('d')]);
      const op = await h.run((kind, step, o) => {
        if (kind === 'failed') retries.push(`${step} ${o.state} ${stepOf(o, step).state} ${stepOf(o, step).message}`);
      });
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'do c', 'do c', 'do c', 'do c', 'do d']);
      expect(retries).to.deep.equal(Array(3).fill('c running running retrying: c could not reach the array'));
      expect(op.state).to.equal('succeeded');
      expect(op.committed).to.equal(true);
      expect(op.error).to.equal(undefined);
      expect(states(op)).to.deep.equal(['done', 'done', 'done', 'done']);
      expect(h.storedMarks()).to.deep.equal(['a', 'b', 'c', 'd']);
    });

    it('journals committed=true in the same commit as the commit step\'s "done"', async () => {
      let atB: OperationRecord | undefined;
      const h = harness([rec('a', { commits: true }), rec('b', { onDo: (ctx) => (atB = h.stored(ctx.op.id)) })]);
      await h.run();
      expect(atB?.committed).to.equal(true);
      expect(atB?.steps[0]!.state).to.equal('done');
    });
  });

  describe('recover()', () => {
    /** Writes an operation into the store as a crashed agent would have left it, then restarts. */
    function crashed(h: Harness, steps: StepStateName[], patch: Partial<OperationRecord> = {}): OperationRecord {
      const op = h.record({ steps: h.steps.map((s, i) => ({ name: s.name, state: steps[i]!, startMs: steps[i] === 'pending' ? undefined : 1 })), ...patch });
      h.restart();
      return op;
    }

    it('rolls back an operation left running before its commit point, a running step included, with ABORTED / HOST_AGENT_RESTARTED', async () => {
      const h = harness([rec('a'), rec('b', { skip: 'x' }), rec('c'), rec('d'), rec('e')]);
      const op = crashed(h, ['done', 'skipped', 'done', 'running', 'pending']);
      expect(await h.engine.recover()).to.equal(1);
      expect(h.env.calls).to.deep.equal(['undo d', 'undo c', 'undo a']);
      const after = h.op(op.id);
      expect(after.state).to.equal('failed');
      expect(after.error?.kind).to.equal('aborted');
      expect(after.error?.reason).to.equal('HOST_AGENT_RESTARTED');
      expect(states(after)).to.deep.equal(['undone', 'skipped', 'undone', 'undone', 'pending']);
      expect(h.stored(op.id)).to.deep.equal(after);
    });

    it('finishes a rollback that was under way, undoing the step left undoing again, and keeps the original error', async () => {
      const h = harness([rec('a'), rec('b'), rec('c')]);
      const error = { kind: 'unavailable' as const, reason: 'ARRAY_UNAVAILABLE', message: 'the array was down' };
      const op = crashed(h, ['done', 'undoing', 'undone'], { state: 'rolling_back', error });
      await h.engine.recover();
      expect(h.env.calls).to.deep.equal(['undo b', 'undo a']);
      expect(h.op(op.id).error).to.deep.equal(error);
      expect(h.op(op.id).state).to.equal('failed');
    });

    it('rolls forward an operation past its commit point from the first step not done, re-doing a step left running', async () => {
      const ids: string[] = [];
      const h = harness([rec('a'), rec('b', { commits: true }), rec('c', { onDo: (ctx) => ids.push(ctx.requestId('call')) }), rec('d')]);
      const op = crashed(h, ['done', 'done', 'running', 'pending'], { committed: true });
      expect(await h.engine.recover()).to.equal(1);
      expect(h.env.calls).to.deep.equal(['do c', 'do d']);
      expect(ids).to.deep.equal([`${op.id}:c:call`]);
      expect(h.op(op.id).state).to.equal('succeeded');
      expect(states(h.op(op.id))).to.deep.equal(['done', 'done', 'done', 'done']);
    });

    it('the failed step keeps its failure message when a restart came while it was being undone', async () => {
      const h = harness([rec('a'), rec('b')]);
      const error = { kind: 'failed_precondition' as const, reason: 'LUN_MAPPED', message: 'the LUN is mapped elsewhere' };
      const op = h.record({
        state: 'rolling_back',
        error,
        steps: [
          { name: 'a', state: 'done', startMs: 1, endMs: 2 },
          { name: 'b', state: 'undoing', startMs: 2, endMs: 3, message: 'undo failed, retrying: array down', error: 'the LUN is mapped elsewhere' },
        ],
      });
      h.restart();
      await h.engine.recover();
      expect(h.env.calls).to.deep.equal(['undo b', 'undo a']);
      expect(stepOf(h.op(op.id), 'b')).to.include({ state: 'undone', message: 'the LUN is mapped elsewhere' });
    });

    it('an engine stopped (drain) while an undo keeps failing leaves it rolling_back in the journal; recover() finishes the rollback', async () => {
      let failing = true;
      const h = harness([
        {
          ...rec('a'),
          undo(ctx) {
            ctx.env.calls.push('undo a');
            if (failing) throw new UnavailableError('array down', 'ARRAY_UNAVAILABLE');
          },
        },
        rec('b', { doFails: Infinity }),
      ]);
      const op = h.record();
      h.engine.lock(op);
      h.engine.start(op);
      while (h.env.calls.filter((c) => c === 'undo a').length < 2) await new Promise((r) => setTimeout(r, 1));
      expect(await h.engine.drain(2000)).to.equal(true);
      const stored = h.stored(op.id);
      expect(stored.state).to.equal('rolling_back');
      expect(stepOf(stored, 'a').state).to.equal('undoing');
      expect(stepOf(stored, 'a').message).to.match(/^undo failed, retrying: array down/);
      failing = false;
      h.restart();
      expect(await h.engine.recover()).to.equal(1);
      expect(h.op(op.id).state).to.equal('failed');
      expect(h.op(op.id).error?.message).to.equal('b could not reach the array');
      expect(states(h.op(op.id))).to.deep.equal(['undone', 'undone']);
    });

    it('holds the operation\'s locks while it recovers and releases them after', async () => {
      let held: string | undefined;
      const h = harness([rec('a', { onUndo: (ctx) => (held = h.engine.holder(`test:${ctx.op.id}`)) })]);
      const op = crashed(h, ['running']);
      await h.engine.recover();
      expect(held).to.equal(op.id);
      expect(h.engine.holder(`test:${op.id}`)).to.equal(undefined);
    });

    it('leaves ended operations alone and recovers nothing on a quiet journal', async () => {
      const h = harness([rec('a')]);
      crashed(h, ['done'], { state: 'succeeded' });
      crashed(h, ['undone'], { state: 'failed' });
      expect(await h.engine.recover()).to.equal(0);
      expect(h.env.calls).to.deep.equal([]);
    });
  });

  describe('listeners', () => {
    it('hear started / finished / skipped / failed / undo_started / undone in order, then a final notice', async () => {
      const heard: string[] = [];
      const h = harness([rec('a'), rec('b', { skip: 'no' }), rec('c', { doFails: Infinity }), rec('d')]);
      const op = await h.run((kind, step, o) => heard.push(kind === 'end' ? `end ${o.state}` : `${kind} ${step}`));
      expect(heard).to.deep.equal([
        'started a',
        'finished a',
        'skipped b',
        'started c',
        'failed c',
        'undo_started c',
        'undone c',
        'undo_started a',
        'undone a',
        'end failed',
      ]);
      expect(op.state).to.equal('failed');
    });

    it('hear a successful run as started/finished per step and a final notice with the SUCCEEDED operation', async () => {
      const heard: string[] = [];
      const h = harness([rec('a'), rec('b')]);
      await h.run((kind, step, o) => heard.push(kind === 'end' ? `end ${o.state}` : `${kind} ${step} ${stepOf(o, step).state}`));
      expect(heard).to.deep.equal(['started a running', 'finished a done', 'started b running', 'finished b done', 'end succeeded']);
    });

    it('a listener that throws does not disturb the operation or the other listeners', async () => {
      const h = harness([rec('a'), rec('b')]);
      const op = h.record();
      let others = 0;
      h.engine.subscribe(op.id, () => {
        throw new Error('listener bug');
      });
      const ended = h.ended(op.id, () => others++);
      h.engine.lock(op);
      h.engine.start(op);
      expect((await ended).state).to.equal('succeeded');
      expect(others).to.equal(5);
    });
  });

  describe('when the store refuses a commit', () => {
    it('HostState.commit throws, memory is reloaded and the change is not visible, indexes included', () => {
      const store = new MemoryStore();
      const state = new HostState(store);
      state.transact(() => state.vms.put(vm('vm1')));
      store.failNext = new Error('disk full');
      expect(() => state.transact(() => state.vms.put(vm('vm2')))).to.throw('disk full');
      expect(state.vms.has('vm2')).to.equal(false);
      expect(state.vmsOn('n1').map((v) => v.id)).to.deep.equal(['vm1']);
      state.transact(() => state.vms.put(vm('vm3')));
      expect([...store.load().vms.keys()].sort()).to.deep.equal(['vm1', 'vm3']);
    });

    it('HostState.transact drops a change that throws halfway (memory reloaded), and commits nothing of it', () => {
      const store = new MemoryStore();
      const state = new HostState(store);
      expect(() =>
        state.transact(() => {
          state.vms.put(vm('vm1'));
          throw new Error('halfway');
        }),
      ).to.throw('halfway');
      expect(state.vms.has('vm1')).to.equal(false);
      expect(state.vmsOn('n1')).to.deep.equal([]);
      state.commit();
      expect(store.load().vms.size).to.equal(0);
    });

    it('a step whose "done" cannot be committed leaves no half change and the operation rolls back', async () => {
      const h = harness([
        rec('a'),
        rec('b', {
          onDo: () => {
            h.store.failNext = new Error('disk full');
          },
        }),
        rec('c'),
      ]);
      const op = await h.run();
      expect(op.state).to.equal('failed');
      expect(op.error?.kind).to.equal('internal');
      expect(h.state.meta.has('b'), 'b\'s model change is not in memory').to.equal(false);
      expect(h.storedMarks()).to.deep.equal([]);
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'undo b', 'undo a']);
      expect(h.stored(op.id)).to.deep.equal(h.op(op.id));
    });

    it('a journal write that fails before a step starts leaves that step pending and rolls back what ran; memory and journal agree', async () => {
      const h = harness([rec('a'), rec('b'), rec('c')]);
      const op = h.record();
      h.engine.subscribe(op.id, (ev) => {
        if (ev?.kind === 'finished' && ev.step === 'a') h.store.failNext = new Error('disk full');
      });
      h.engine.lock(op);
      h.engine.start(op);
      expect(await h.engine.drain(2000)).to.equal(true);
      // a's "done" is written with b's "running"; the write after b (before c starts) fails:
      // c never starts, b and a are undone, and memory and journal agree.
      expect(h.env.calls).to.deep.equal(['do a', 'do b', 'undo b', 'undo a']);
      expect(states(h.stored(op.id))).to.deep.equal(['undone', 'undone', 'pending']);
      expect(h.op(op.id)).to.deep.equal(h.stored(op.id));
      expect(h.op(op.id).state).to.equal('failed');
      h.restart();
      expect(await h.engine.recover()).to.equal(0);
    });
  });
});

function vm(id: string): import('../../host-agent/model.js').VmRecord {
  return {
    id,
    name: id,
    guestOs: 'linux',
    running: true,
    ha: false,
    node: 'n1',
    controllers: 1,
    locationsPerController: 2,
    group: `Virtual Machine ${id}`,
    configuredDisks: [],
  };
}
