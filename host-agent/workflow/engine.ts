/**
 * Runs operations: each a list of steps with `do` and `undo`, journaled in the operation's
 * record. The rules (DESIGN.md, "The provisioning workflow"):
 *
 * - A step with outbound calls is journaled as running before its `do` starts, so "it
 *   worked but the reply was lost" is covered: recovery treats a running step as maybe
 *   done. Its `do` returns the model change, which is applied and committed in one
 *   transaction with the step's "done".
 * - A step that fails undoes itself and every finished step, newest first. An undo that
 *   fails stays in the journal and is retried with back-off until it succeeds; only then is
 *   the operation FAILED, with the error that started the rollback.
 * - Once the commit step is done, the operation only goes forward: a failing step after it
 *   is retried with back-off until it succeeds.
 * - At start-up, operations left running are rolled back before their commit point and
 *   forward after it.
 */
import { DomainError, ReportableError } from '../../common/errors.js';
import type { Logger } from '../../common/logging.js';
import type { OperationRecord, StepRecord, StepStateName } from '../model.js';
import type { HostState } from '../state.js';

/** A model change, applied synchronously and committed with the step's journal entry. */
export type Apply = () => void;

export interface StepContext<Env> {
  env: Env;
  op: OperationRecord;
  /** A request id for an outbound call, the same every time this step of this operation runs. */
  requestId(action: string): string;
  /**
   * Journals a choice before the step's outbound calls (a LUN id, a name): the change is
   * committed at once, so a replay after a crash makes the same choice.
   */
  journal(change: Apply): void;
  /** Why a step is slow or retried, shown on the step while it runs. */
  note(message: string): void;
}

export interface StepDef<Env> {
  name: string;
  /** A reason to skip the step (journaled as skipped), or undefined to run it. */
  skip?(ctx: StepContext<Env>): string | undefined;
  /**
   * Choices the step's calls depend on (a LUN id, a SCSI location), made synchronously and
   * journaled in the same write as the step's "running", before `do` starts.
   */
  prepare?(ctx: StepContext<Env>): void;
  do(ctx: StepContext<Env>): Promise<Apply | void> | Apply | void;
  /** Must succeed whether or not `do` ran, or ran halfway. Steps past the commit point need none. */
  undo?(ctx: StepContext<Env>): Promise<Apply | void> | Apply | void;
  /** The commit point: once this step is done, the operation only goes forward. */
  commits?: boolean;
  /**
   * Changes only the model (no array, no hypervisor): its `do` returns its change without
   * waiting, and it is journaled with the next write instead of a write of its own.
   */
  local?: boolean;
}

export interface WorkflowDef<Env> {
  steps: StepDef<Env>[];
  /** Called in the transaction that marks the operation SUCCEEDED. */
  finish?(ctx: StepContext<Env>): void;
}

export type StepEventKindName = 'started' | 'finished' | 'skipped' | 'failed' | 'undo_started' | 'undone';

export interface StepEventRecord {
  step: string;
  kind: StepEventKindName;
  timeMs: number;
  message?: string;
}

/** What a watcher hears: a step event (absent for the final notice) and the operation after it. */
export type OperationListener = (event: StepEventRecord | undefined, op: OperationRecord) => void;

/** Where a test may stop the process: before a step's `do`, after its calls but before its journal, after its journal. */
export type StepPoint = 'before' | 'during' | 'after';
export type StepHook = (op: OperationRecord, step: string, point: StepPoint) => void;

export interface BackoffPolicy {
  firstMs: number;
  maxMs: number;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export function errorOf(err: unknown): { kind: DomainError['kind'] | 'internal'; reason: string; message: string } {
  if (err instanceof DomainError) return { kind: err.kind, reason: err.reason, message: err.message };
  if (err instanceof ReportableError) return { kind: 'internal', reason: err.reason, message: err.message };
  return { kind: 'internal', reason: 'INTERNAL', message: 'internal error; the host agent log has the details' };
}

export class Engine<Env> {
  private readonly listeners = new Map<string, Set<OperationListener>>();
  private readonly running = new Map<string, Promise<void>>();
  /** Lock key → operation holding it. */
  readonly locks = new Map<string, string>();
  private stopping = false;

  constructor(
    private readonly state: HostState,
    private readonly env: Env,
    private readonly workflows: Record<OperationRecord['kind'], WorkflowDef<Env>>,
    private readonly logger: Logger,
    private readonly opts: { backoff?: BackoffPolicy; hook?: StepHook; observe?: OperationListener } = {},
  ) {}

  private readonly aborted = new Map<string, Error>();

  /**
   * Asks a running operation to stop by the commit-point rule: before it, it rolls back at
   * its next step with `reason`; past it, it goes on to the end. Resolves when it has ended.
   */
  abort(opId: string, reason: Error): Promise<void> {
    const run = this.running.get(opId);
    if (!run) return Promise.resolve();
    this.aborted.set(opId, reason);
    return run.finally(() => this.aborted.delete(opId));
  }

  /** The operation holding a lock key, if any. */
  holder(key: string): string | undefined {
    return this.locks.get(key);
  }

  /** Takes an operation's locks; the caller checked they are free. */
  lock(op: OperationRecord): void {
    for (const k of op.locks) this.locks.set(k, op.id);
  }

  private unlock(op: OperationRecord): void {
    for (const k of op.locks) if (this.locks.get(k) === op.id) this.locks.delete(k);
  }

  subscribe(opId: string, listener: OperationListener): () => void {
    let set = this.listeners.get(opId);
    if (!set) this.listeners.set(opId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(opId);
    };
  }

  /**
   * The operation as last told (every event goes out once what it tells is written), while
   * it runs: what callers see, never a step whose write is still to come.
   */
  view(id: string): OperationRecord | undefined {
    return this.told.get(id) ?? this.state.operations.get(id);
  }

  private readonly told = new Map<string, OperationRecord>();

  /** A note written on a running operation (no event of its own) is what callers see from now on. */
  private noteWritten(op: OperationRecord): void {
    if (this.told.has(op.id)) this.told.set(op.id, op);
  }

  private emit(op: OperationRecord, event: StepEventRecord | undefined): void {
    if (event) this.told.set(op.id, op);
    else this.told.delete(op.id);
    try {
      this.opts.observe?.(event, op);
    } catch (err) {
      this.logger.error('operation observer failed', { opId: op.id, error: String(err) });
    }
    const set = this.listeners.get(op.id);
    if (!set) return;
    for (const l of [...set]) {
      try {
        l(event, op);
      } catch (err) {
        this.logger.error('operation listener failed', { opId: op.id, error: String(err) });
      }
    }
  }

  /**
   * Starts running an operation already recorded (and locked); returns at once. The first
   * step waits for the next turn of the event loop, so whoever started it can subscribe
   * to its events before any happens.
   */
  start(op: OperationRecord): void {
    this.track(op.id, new Promise<void>((r) => setImmediate(r)).then(() => this.forward(op.id)));
  }

  private track(id: string, run: Promise<void>): void {
    const p = run
      .catch((err: unknown) => {
        // Only the store failing gets here; the journal still says where the operation stands.
        this.logger.error('operation stopped: the journal could not be written', { opId: id, error: String(err) });
      })
      .finally(() => this.running.delete(id));
    this.running.set(id, p);
  }

  /** Runs every unfinished operation of the journal to its end: back before the commit point, forward after. */
  async recover(): Promise<number> {
    const open = [...this.state.operations.values()].filter((o) => o.state === 'running' || o.state === 'rolling_back');
    for (const op of open) this.lock(op);
    for (const op of open) {
      this.logger.warn('recovering operation', { opId: op.id, kind: op.kind, committed: op.committed, state: op.state });
      this.track(op.id, op.committed ? this.forward(op.id) : this.rollBack(op.id, undefined));
    }
    await Promise.all([...this.running.values()]);
    return open.length;
  }

  /** Waits for running operations to end (for up to `ms`); the journal covers the rest. */
  async drain(ms: number): Promise<boolean> {
    this.stopping = true;
    const all = Promise.all([...this.running.values()]).then(() => true);
    return Promise.race([all, sleep(ms).then(() => false)]);
  }

  get inFlight(): number {
    return this.running.size;
  }

  private current(id: string): OperationRecord {
    return this.state.operations.get(id)!;
  }

  /** Replaces the operation's record (records are never mutated in place) in the current transaction. */
  private update(id: string, change: (op: OperationRecord) => Partial<OperationRecord>): OperationRecord {
    const op = this.current(id);
    const next = { ...op, ...change(op), updateMs: Date.now() };
    this.state.operations.put(next);
    return next;
  }

  /** Patches one step; a field patched to undefined is removed, as the store would drop it. */
  private setStep(id: string, i: number, patch: Partial<StepRecord>): OperationRecord {
    const merge = (s: StepRecord): StepRecord => {
      const next: Record<string, unknown> = { ...s, ...patch };
      for (const k of Object.keys(next)) if (next[k] === undefined) delete next[k];
      return next as unknown as StepRecord;
    };
    return this.update(id, (op) => ({ steps: op.steps.map((s, j) => (j === i ? merge(s) : s)) }));
  }

  private context(id: string, step: string): StepContext<Env> {
    const self = this;
    return {
      env: this.env,
      get op() {
        return self.current(id);
      },
      requestId: (action) => `${id}:${step}:${action}`,
      journal: (change) => this.state.transact(change),
      note: (message) => {
        const i = this.current(id).steps.findIndex((s) => s.name === step);
        if (i >= 0) this.noteWritten(this.state.transact(() => this.setStep(id, i, { message })));
      },
    };
  }

  /**
   * Runs the operation's steps from the first one not done. The journal is written before
   * every outbound call (a step's "running", with every synchronous step finished since the
   * last write), after the commit step, and at the end: control never returns to the event
   * loop with a change not written, so each write holds whole steps with their model
   * changes, and events are sent once what they tell is durable.
   */
  private async forward(id: string): Promise<void> {
    const def = this.workflows[this.current(id).kind];
    let delay = this.opts.backoff?.firstMs ?? 100;
    /** Events waiting for the write that makes them true, each with the operation as it stood. */
    let events: [StepEventRecord, OperationRecord][] = [];
    let written: string[] = [];
    const event = (e: StepEventRecord): void => {
      events.push([e, this.current(id)]);
    };
    /** Writes everything so far, then tells it. */
    const flush = (): OperationRecord => {
      this.state.commit();
      mark = this.state.mark();
      const op = this.current(id);
      const [ev, hooks] = [events, written];
      events = [];
      written = [];
      for (const [e, at] of ev) this.emit(at, e);
      for (const name of hooks) this.opts.hook?.(op, name, 'after');
      return op;
    };
    /** Where the changes not yet written began: a synchronous failure takes back what came after. */
    let mark = this.state.mark();
    /** Takes back what the failing step changed and was not written, and its untold events. */
    const discard = (): void => {
      this.state.rollbackTo(mark);
      events = [];
      written = [];
    };
    for (let i = 0; i < def.steps.length; ) {
      const step = def.steps[i]!;
      const rec = this.current(id).steps[i]!;
      if (rec.state === 'done' || rec.state === 'skipped') {
        i++;
        continue;
      }
      const ctx = this.context(id, step.name);
      let apply: Apply | void;
      /** Whether the step's `do` began: a journal write failing before it leaves the step pending. */
      let started = false;
      const startMs = Date.now();
      try {
        const stop = this.aborted.get(id);
        if (stop && !this.current(id).committed) throw stop;
        const skip = step.skip?.(ctx);
        if (skip !== undefined) {
          this.setStep(id, i, { state: 'skipped', startMs, endMs: startMs, message: skip });
          event({ step: step.name, kind: 'skipped', timeMs: startMs, message: skip });
          i++;
          continue;
        }
        this.opts.hook?.(this.current(id), step.name, 'before');
        step.prepare?.(ctx);
        this.setStep(id, i, { state: 'running', startMs });
        event({ step: step.name, kind: 'started', timeMs: startMs });
        if (step.local) {
          started = true;
          const out = step.do(ctx);
          if (out instanceof Promise) throw new Error(`step ${step.name} is marked local but waits on something`);
          apply = out;
        } else {
          flush();
          started = true;
          apply = await step.do(ctx);
          mark = this.state.mark();
        }
        this.opts.hook?.(this.current(id), step.name, 'during');
        const endMs = Date.now();
        apply?.();
        this.setStep(id, i, { state: 'done', endMs });
        if (step.commits) this.update(id, () => ({ committed: true }));
        event({ step: step.name, kind: 'finished', timeMs: endMs });
        written.push(step.name);
        if (step.commits) flush();
        delay = this.opts.backoff?.firstMs ?? 100;
        i++;
      } catch (err) {
        discard();
        const e = errorOf(err);
        if (e.kind === 'internal') this.logger.error('step failed', { opId: id, step: step.name, error: err instanceof Error ? err.stack : String(err) });
        if (!this.current(id).committed) {
          await this.rollBack(id, { index: i, error: err, started });
          return;
        }
        // Past the commit point there is no way back: retry until it goes through.
        this.logger.warn('step failed after the commit point; retrying', { opId: id, step: step.name, error: e.message, retryInMs: delay });
        const op = this.state.transact(() => this.setStep(id, i, { state: 'running', message: `retrying: ${e.message}` }));
        this.emit(op, { step: step.name, kind: 'failed', timeMs: Date.now(), message: `retrying: ${e.message}` });
        if (this.stopping) return;
        await sleep(delay);
        delay = Math.min(delay * 2, this.opts.backoff?.maxMs ?? 5000);
      }
    }
    const ctx = this.context(id, '');
    def.finish?.(ctx);
    this.update(id, () => ({ state: 'succeeded' }));
    const op = flush();
    this.unlock(op);
    this.logger.info('operation succeeded', { opId: id, kind: op.kind, vmId: op.vmId, mount: op.mountPath, ms: op.updateMs - op.createMs });
    this.emit(op, undefined);
  }

  private async rollBack(id: string, failure: { index: number; error: unknown; started?: boolean } | undefined): Promise<void> {
    const def = this.workflows[this.current(id).kind];
    let op = this.state.transact(() => {
      if (failure) {
        const e = errorOf(failure.error);
        if (failure.started === false) this.setStep(id, failure.index, { message: `not started: ${e.message}` });
        else this.setStep(id, failure.index, { state: 'failed', endMs: Date.now(), message: e.message, error: e.message });
        return this.update(id, () => ({ state: 'rolling_back', error: e }));
      }
      return this.update(id, (o) => ({
        state: 'rolling_back',
        error: o.error ?? {
          kind: 'aborted',
          reason: 'HOST_AGENT_RESTARTED',
          message: 'the host agent stopped before the operation reached its commit point; it was rolled back: send the request again with a new request id',
        },
      }));
    });
    if (failure && failure.started !== false) {
      const s = op.steps[failure.index]!;
      this.emit(op, { step: s.name, kind: 'failed', timeMs: s.endMs!, message: s.message });
    }
    this.logger.warn('rolling back operation', { opId: id, kind: op.kind, error: op.error?.message });
    const undoable: StepStateName[] = ['running', 'done', 'failed', 'undoing'];
    for (let i = def.steps.length - 1; i >= 0; i--) {
      const step = def.steps[i]!;
      if (!undoable.includes(this.current(id).steps[i]!.state)) continue;
      const ctx = this.context(id, step.name);
      const startMs = Date.now();
      op = this.state.transact(() => this.setStep(id, i, { state: 'undoing' }));
      this.emit(op, { step: step.name, kind: 'undo_started', timeMs: startMs });
      let delay = this.opts.backoff?.firstMs ?? 100;
      for (;;) {
        try {
          const apply = step.undo ? await step.undo(ctx) : undefined;
          const endMs = Date.now();
          op = this.state.transact(() => {
            apply?.();
            return this.setStep(id, i, {
              state: 'undone',
              endMs,
              // The failed step keeps saying why it failed, whatever its undo's retries said meanwhile.
              message: this.current(id).steps[i]!.error,
            });
          });
          this.emit(op, { step: step.name, kind: 'undone', timeMs: endMs });
          break;
        } catch (err) {
          // An undo is never dropped: it stays in the journal and is tried again.
          const e = errorOf(err);
          this.logger.warn('undo failed; retrying', { opId: id, step: step.name, error: e.message, retryInMs: delay });
          if (e.kind === 'internal') this.logger.error('undo error', { opId: id, step: step.name, error: err instanceof Error ? err.stack : String(err) });
          this.noteWritten(this.state.transact(() => this.setStep(id, i, { message: `undo failed, retrying: ${e.message}` })));
          if (this.stopping) return;
          await sleep(delay);
          delay = Math.min(delay * 2, this.opts.backoff?.maxMs ?? 5000);
        }
      }
    }
    op = this.state.transact(() => this.update(id, () => ({ state: 'failed' })));
    this.unlock(op);
    this.logger.warn('operation failed and was rolled back', { opId: id, kind: op.kind, error: op.error?.message });
    this.emit(op, undefined);
  }
}
