/**
 * The host agent against a failing array, over real gRPC: storage-sim with fault injection
 * and the host agent in this process (test/support/host-cluster.ts), a fresh cluster per test.
 *
 * DESIGN.md, "When errors surface" and "Failure": a step whose array call is refused ends the
 * operation FAILED with the array's status, after every finished step was undone newest
 * first, and nothing is left (no LUN, map, reservation, temporary group, resource or slot);
 * UNAVAILABLE is retried inside the step first; an undo that fails is retried until the array
 * is back; past the commit point nothing is rolled back, the step is retried until it goes
 * through.
 *
 * Every failing fault here also carries a short delay, so that a WatchOperation opened right
 * after the RPC returned is subscribed before the step fails and hears every rollback event.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { capturingLogger } from '../support/log-capture.js';
import {
  DiskSharing,
  GroupKind,
  OperationState,
  ResourceState,
  StepEventKind,
  StepState,
  type AdminServiceWatchOperationResponse,
  type Operation,
  type StepEvent,
} from '../../proto/gen/passthru/host/v1/host.js';
import { FaultTiming, OsType, Provisioning, type Lun } from '../../proto/gen/passthru/storage/v1/storage.js';
import { FAST_RETRY, startCluster, type TestCluster } from '../support/host-cluster.js';

const MiB = 1024 * 1024;
const SIZE = 64n * BigInt(MiB);
const NODES = ['node1', 'node2', 'node3'];
const PREFIX = '/vol/passthru/';
/** Long enough for a watcher to subscribe before the faulted call answers. */
const FAULT_DELAY_MS = 200;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- helpers

interface FaultSpec {
  method: string;
  code: number;
  message: string;
  count?: number;
  timing?: 'before' | 'after';
  delayMs?: number;
}

async function inject(c: TestCluster, f: FaultSpec): Promise<void> {
  await c.faults.injectFault({
    method: f.method,
    count: f.count ?? 1,
    code: f.code,
    message: f.message,
    delayMs: f.delayMs ?? FAULT_DELAY_MS,
    timing: f.timing === 'after' ? FaultTiming.FAULT_TIMING_AFTER : FaultTiming.FAULT_TIMING_BEFORE,
  });
}

/** Polls until every injected fault was used up (the faulted calls reached the array). */
async function faultsUsedUp(c: TestCluster, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while ((await c.faults.listFaults({})).faults.length > 0) {
    if (Date.now() > end) throw new Error(`faults not used up within ${timeoutMs} ms: ${JSON.stringify((await c.faults.listFaults({})).faults)}`);
    await sleep(5);
  }
}

/** Polls the operation until `pred` holds; returns the operation then. */
async function until(c: TestCluster, opId: string, pred: (op: Operation) => boolean, what: string, timeoutMs = 10_000): Promise<Operation> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const op = (await c.admin.getOperation({ operationId: opId })).operation!;
    if (pred(op)) return op;
    if (Date.now() > end) throw new Error(`operation ${opId}: ${what} not seen within ${timeoutMs} ms; last: ${show(op)}`);
    await sleep(10);
  }
}

function show(op: Operation): string {
  return JSON.stringify(
    {
      state: OperationState[op.state],
      committed: op.committed,
      error: op.error,
      steps: op.steps.map((s) => `${s.name}=${StepState[s.state]}${s.message ? ` (${s.message})` : ''}`),
    },
    (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v),
  );
}

/**
 * Opens an admin WatchOperation and waits for its first message (the state so far), so
 * every later event is heard. `done` resolves with the events once the stream ends.
 */
async function watch(c: TestCluster, opId: string): Promise<{ done: Promise<StepEvent[]> }> {
  const call = c.admin.raw.watchOperation({ operationId: opId });
  const events: StepEvent[] = [];
  let first: () => void = () => undefined;
  const ready = new Promise<void>((r) => (first = r));
  const done = new Promise<StepEvent[]>((resolve, reject) => {
    call.on('data', (m: AdminServiceWatchOperationResponse) => {
      events.push(...m.events);
      first();
    });
    call.on('end', () => resolve(events));
    call.on('error', reject);
  });
  done.catch(() => undefined);
  await Promise.race([ready, done]);
  return { done };
}

const kindName = (k: StepEventKind): string => StepEventKind[k].replace('STEP_EVENT_KIND_', '').toLowerCase();

async function createDisk(c: TestCluster, vmId: string, mountPath: string, requestId: string, sizeBytes = SIZE): Promise<Operation> {
  const res = await c.guest(vmId).createDisk({ requestId, mountPath, sizeBytes, sharing: DiskSharing.DISK_SHARING_UNSPECIFIED });
  return res.operation!;
}

async function removeDisk(c: TestCluster, vmId: string, mountPath: string, requestId: string, deleteLun = true): Promise<Operation> {
  return (await c.guest(vmId).removeDisk({ requestId, mountPath, deleteLun })).operation!;
}

async function succeeded(c: TestCluster, op: Operation): Promise<Operation> {
  const done = await c.settle(op.id);
  expect(done.state, show(done)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
  return done;
}

/** A LUN made on the array directly, outside passthru's volume (an admin's existing LUN). */
async function shelfLun(c: TestCluster, name: string): Promise<Lun> {
  const res = await c.storage.createLun({
    requestId: '',
    path: `/vol/shelf/${name}`,
    sizeBytes: SIZE,
    osType: OsType.OS_TYPE_HYPER_V,
    provisioning: Provisioning.PROVISIONING_THICK,
    comment: 'an existing LUN',
    pool: '',
  });
  return res.lun!;
}

async function lunsUnderPassthru(c: TestCluster): Promise<string[]> {
  return (await c.storage.listLuns({ pageSize: 1000, pageToken: '', pathPrefix: PREFIX })).luns.map((l) => l.path);
}

async function mapsOfNode(c: TestCluster, node: string): Promise<string[]> {
  return (await c.storage.listLunMaps({ lun: '', igroup: node, pageSize: 1000, pageToken: '' })).maps.map((m) => `${m.lunPath}@${m.lunId}`);
}

async function mapsOfLun(c: TestCluster, lun: string): Promise<{ igroup: string; lunId: number }[]> {
  const maps = (await c.storage.listLunMaps({ lun, igroup: '', pageSize: 1000, pageToken: '' })).maps;
  return maps.map((m) => ({ igroup: m.igroup, lunId: m.lunId })).sort((a, b) => (a.igroup < b.igroup ? -1 : 1));
}

/** Nothing of any disk operation is left: array, cluster, hypervisor all empty, invariants hold. */
async function expectNothingLeft(c: TestCluster, vmIds: string[] = ['vm1']): Promise<void> {
  expect(await lunsUnderPassthru(c), `LUNs left under ${PREFIX}`).to.deep.equal([]);
  for (const n of NODES) expect(await mapsOfNode(c, n), `maps left on igroup ${n}`).to.deep.equal([]);
  const groups = (await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups;
  expect(groups.filter((g) => g.kind === GroupKind.GROUP_KIND_TEMPORARY).map((g) => g.name), 'temporary groups').to.deep.equal([]);
  expect(groups.flatMap((g) => g.resources.map((r) => `${g.name}: ${r.name}`)), 'disk resources').to.deep.equal([]);
  for (const vm of vmIds) {
    expect((await c.guest(vm).listDisks({})).disks, `disks of ${vm}`).to.deep.equal([]);
    expect((await c.guest(vm).rescanBus({})).devices, `SCSI bus of ${vm}`).to.deep.equal([]);
  }
  expect(await c.violations()).to.deep.equal([]);
}

/**
 * The operation ended FAILED with `code` and the array's reason, and was rolled back: the
 * failed step reported FAILED (event) with the reason, then it and every step done before it
 * were undone newest first (undo_started/undone pairs), the rest never ran.
 */
function expectRolledBack(
  op: Operation,
  events: StepEvent[],
  failedStep: string,
  want: { code: number; message?: string; skipped: string[]; /** false where the failed step's own undo was retried (see the dedicated test) */ stepMessage?: boolean },
): void {
  const ctx = show(op);
  expect(op.state, ctx).to.equal(OperationState.OPERATION_STATE_FAILED);
  expect(op.committed, ctx).to.equal(false);
  expect(op.error, ctx).to.not.equal(undefined);
  expect(op.error!.code, ctx).to.equal(want.code);
  if (want.message !== undefined) expect(op.error!.message, ctx).to.contain(want.message);
  expect(op.result, ctx).to.equal(undefined);

  const failed = events.filter((e) => e.kind === StepEventKind.STEP_EVENT_KIND_FAILED);
  expect(failed.map((e) => e.step), 'failed events').to.deep.equal([failedStep]);
  if (want.message !== undefined) expect(failed[0]!.message).to.contain(want.message);

  const at = op.steps.findIndex((s) => s.name === failedStep);
  expect(at, ctx).to.be.greaterThan(0);
  op.steps.forEach((s, i) => {
    const expected =
      i > at ? StepState.STEP_STATE_PENDING : want.skipped.includes(s.name) ? StepState.STEP_STATE_SKIPPED : StepState.STEP_STATE_UNDONE;
    expect(StepState[s.state], `step ${s.name}: ${ctx}`).to.equal(StepState[expected]);
  });
  // The failed step keeps why it failed.
  if (want.message !== undefined && want.stepMessage !== false) expect(op.steps[at]!.message, ctx).to.contain(want.message);

  const undone = op.steps
    .slice(0, at + 1)
    .filter((s) => s.state === StepState.STEP_STATE_UNDONE)
    .map((s) => s.name)
    .reverse();
  const undoEvents = events
    .filter((e) => e.kind === StepEventKind.STEP_EVENT_KIND_UNDO_STARTED || e.kind === StepEventKind.STEP_EVENT_KIND_UNDONE)
    .map((e) => `${kindName(e.kind)} ${e.step}`);
  expect(undoEvents, 'undo events, newest step first').to.deep.equal(undone.flatMap((s) => [`undo_started ${s}`, `undone ${s}`]));
  const failedAt = events.indexOf(failed[0]!);
  const firstUndo = events.findIndex((e) => e.kind === StepEventKind.STEP_EVENT_KIND_UNDO_STARTED);
  expect(failedAt, 'the failure is reported before the rollback starts').to.be.lessThan(firstUndo);
  expect(
    events.filter((e) => e.kind === StepEventKind.STEP_EVENT_KIND_STARTED && op.steps.findIndex((s) => s.name === e.step) > at).map((e) => e.step),
    'no step after the failed one started',
  ).to.deep.equal([]);
}

const CREATE_SKIPPED = ['lun.find'];
const CONNECT_SKIPPED = ['lun.create', 'lun.map', 'peers.map'];

// ---------------------------------------------------------------- tests

describe('host-agent against a failing array (fault injection)', function () {
  this.timeout(60_000);
  let c: TestCluster;

  afterEach(async () => {
    await c?.close();
  });

  describe('CreateDisk: a step refused by the array rolls back everything before it', () => {
    beforeEach(async () => {
      c = await startCluster();
    });

    interface Case {
      title: string;
      fault: FaultSpec;
      step: string;
      code: number;
      /** Whether the operation's message must carry the array's reason (see the INTERNAL test below). */
      checkMessage?: boolean;
      /** A fault after the call: the array's change is checked to exist while the reply is held. */
      during?: (c: TestCluster) => Promise<void>;
    }

    const cases: Case[] = [
      {
        title: 'CreateLun refused RESOURCE_EXHAUSTED → FAILED RESOURCE_EXHAUSTED at lun.create, validate undone',
        fault: { method: 'CreateLun', code: Code.RESOURCE_EXHAUSTED, message: 'aggregate aggr1 has no room for a thick LUN (injected)' },
        step: 'lun.create',
        code: Code.RESOURCE_EXHAUSTED,
      },
      {
        title: 'CreateLun refused FAILED_PRECONDITION → FAILED FAILED_PRECONDITION at lun.create',
        fault: { method: 'CreateLun', code: Code.FAILED_PRECONDITION, message: 'volume passthru is offline (injected)' },
        step: 'lun.create',
        code: Code.FAILED_PRECONDITION,
      },
      {
        title: 'CreateLun answering INTERNAL → FAILED INTERNAL at lun.create',
        fault: { method: 'CreateLun', code: Code.INTERNAL, message: 'wafl panic in aggr1 (injected)' },
        step: 'lun.create',
        code: Code.INTERNAL,
        checkMessage: false,
      },
      {
        title: 'MapLun refused (one call for every node\'s igroup, all or none) → FAILED at lun.map, mapped on no node, the LUN undone',
        fault: { method: 'MapLun', code: Code.FAILED_PRECONDITION, message: 'igroup is being modified (injected)', count: 1 },
        step: 'lun.map',
        code: Code.FAILED_PRECONDITION,
      },
      {
        title: 'MapLun answering INTERNAL → FAILED INTERNAL at lun.map, everything undone',
        fault: { method: 'MapLun', code: Code.INTERNAL, message: 'map table corrupt (injected)', count: 1 },
        step: 'lun.map',
        code: Code.INTERNAL,
        checkMessage: false,
      },
      {
        title: 'RegisterReservationKey refused → FAILED at resource.online, slot, resource, temporary group, maps and LUN undone',
        fault: { method: 'RegisterReservationKey', code: Code.FAILED_PRECONDITION, message: 'reservation conflict: key table full (injected)' },
        step: 'resource.online',
        code: Code.FAILED_PRECONDITION,
      },
      {
        title: 'Reserve refused (key registered) → FAILED at resource.online, the key unregistered and everything undone',
        fault: { method: 'Reserve', code: Code.FAILED_PRECONDITION, message: 'reservation conflict: held by another initiator (injected)' },
        step: 'resource.online',
        code: Code.FAILED_PRECONDITION,
      },
      {
        title: 'Reserve answering INTERNAL → FAILED INTERNAL at resource.online, everything undone',
        fault: { method: 'Reserve', code: Code.INTERNAL, message: 'PR table corrupt (injected)' },
        step: 'resource.online',
        code: Code.INTERNAL,
        checkMessage: false,
      },
      {
        title: 'CreateLun made the LUN but its reply was lost (fault AFTER) → FAILED at lun.create, the LUN the array made is deleted by its path',
        fault: { method: 'CreateLun', code: Code.FAILED_PRECONDITION, message: 'link dropped after the LUN was made (injected)', timing: 'after', delayMs: 300 },
        step: 'lun.create',
        code: Code.FAILED_PRECONDITION,
        during: async (c) => {
          expect(await lunsUnderPassthru(c), 'the array made the LUN before the reply was lost').to.have.length(1);
        },
      },
      {
        title: 'MapLun mapped on every node\'s igroup but its reply was lost (fault AFTER) → FAILED at lun.map, all three maps and the LUN undone',
        fault: { method: 'MapLun', code: Code.FAILED_PRECONDITION, message: 'link dropped after the maps were made (injected)', timing: 'after', delayMs: 300 },
        step: 'lun.map',
        code: Code.FAILED_PRECONDITION,
        during: async (c) => {
          expect((await Promise.all(NODES.map((n) => mapsOfNode(c, n)))).flat(), 'maps on the array while the reply is held').to.have.length(3);
        },
      },
      {
        title: 'Reserve took the reservation but its reply was lost (fault AFTER) → FAILED at resource.online, the reservation released by the undo, everything undone',
        fault: { method: 'Reserve', code: Code.FAILED_PRECONDITION, message: 'link dropped after the reservation was taken (injected)', timing: 'after', delayMs: 300 },
        step: 'resource.online',
        code: Code.FAILED_PRECONDITION,
        during: async (c) => {
          const luns = (await c.storage.listLuns({ pageSize: 1000, pageToken: '', pathPrefix: PREFIX })).luns;
          expect(luns).to.have.length(1);
          const r = await c.storage.readReservation({ lun: luns[0]!.uuid });
          expect([r.reserved, r.holderInitiator], 'reserved on the array while the reply is held').to.deep.equal([true, 'iqn.2026-11.dev.passthru:node1']);
        },
      },
    ];

    for (const k of cases) {
      it(k.title, async () => {
        await inject(c, k.fault);
        const op = await createDisk(c, 'vm1', 'E:', 'create-1');
        expect(op.state).to.equal(OperationState.OPERATION_STATE_RUNNING);
        const w = await watch(c, op.id);
        if (k.during) {
          await faultsUsedUp(c);
          await k.during(c);
        }
        const events = await w.done;
        const done = await c.settle(op.id);
        expectRolledBack(done, events, k.step, {
          code: k.code,
          message: k.checkMessage === false ? undefined : k.fault.message,
          skipped: CREATE_SKIPPED,
        });
        if (k.checkMessage !== false) expect(done.error!.message).to.match(/^storage array: /);
        await expectNothingLeft(c);

        // A retry with the same request id gets the failed operation back and changes nothing.
        const again = await createDisk(c, 'vm1', 'E:', 'create-1');
        expect(again.id).to.equal(op.id);
        expect(again.state).to.equal(OperationState.OPERATION_STATE_FAILED);

        // The same request with a new request id goes through.
        const second = await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-2'));
        expect(second.id).to.not.equal(op.id);
        const disks = (await c.guest('vm1').listDisks({})).disks;
        expect(disks.map((d) => [d.mountPath, d.serial])).to.deep.equal([['E:', second.result!.serial]]);
        expect(await lunsUnderPassthru(c)).to.deep.equal([second.result!.lunPath]);
        expect(await c.violations()).to.deep.equal([]);
      });
    }

    it("an array's INTERNAL answer ends the operation INTERNAL with a message naming the array's reason (not a generic 'internal error')", async () => {
      const message = 'wafl panic in aggr1 (injected)';
      await inject(c, { method: 'CreateLun', code: Code.INTERNAL, message });
      const op = await createDisk(c, 'vm1', 'E:', 'create-internal');
      const done = await c.settle(op.id);
      expect(done.state).to.equal(OperationState.OPERATION_STATE_FAILED);
      expect(done.error?.code).to.equal(Code.INTERNAL);
      expect(done.error?.message, 'the person reading it must learn the array failed, and why').to.contain(message);
      expect(done.error?.message).to.contain('storage array');
    });
  });

  describe('retryable failures (UNAVAILABLE)', () => {
    it('UNAVAILABLE on CreateLun, MapLun, Reserve and DEADLINE_EXCEEDED on RegisterReservationKey, two calls each (under the 3 attempts) → retried inside each step, the operation SUCCEEDS with no step failed', async () => {
      c = await startCluster();
      // FAST_RETRY: 3 attempts, so two UNAVAILABLE answers in a row are absorbed.
      expect(FAST_RETRY.attempts).to.equal(3);
      await inject(c, { method: 'CreateLun', code: Code.UNAVAILABLE, message: 'link flap (injected)', count: 2, delayMs: 0 });
      await inject(c, { method: 'MapLun', code: Code.UNAVAILABLE, message: 'link flap (injected)', count: 2, delayMs: 0 });
      await inject(c, { method: 'Reserve', code: Code.UNAVAILABLE, message: 'link flap (injected)', count: 2, delayMs: 0 });
      await inject(c, { method: 'RegisterReservationKey', code: Code.DEADLINE_EXCEEDED, message: 'slow (injected)', count: 2, delayMs: 0 });
      const op = await createDisk(c, 'vm1', 'E:', 'create-1');
      const done = await succeeded(c, op);
      expect((await c.faults.listFaults({})).faults, 'every injected failure was hit').to.deep.equal([]);
      expect(done.steps.filter((s) => s.state !== StepState.STEP_STATE_DONE && s.state !== StepState.STEP_STATE_SKIPPED).map((s) => s.name)).to.deep.equal([]);
      expect(done.steps.map((s) => s.message).filter((m) => m !== '' && !m.startsWith('a new LUN'))).to.deep.equal([]);
      expect((await c.guest('vm1').listDisks({})).disks).to.have.length(1);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the array unavailable for a window shorter than the retry budget, falling on lun.map → MapLun retried inside the step, the operation SUCCEEDS', async () => {
      // A budget well above the window: 6 attempts, sleeps of at least 10+20+40+50+50 ms.
      const cap = capturingLogger();
      c = await startCluster({ logger: cap.logger, retry: { attempts: 6, firstDelayMs: 20, maxDelayMs: 100, callTimeoutMs: 2000 } });
      // CreateLun held 100 ms on the array; once it is held, the array goes down for 130 ms,
      // so the outage ends about 30 ms after CreateLun answers, when lun.map calls MapLun.
      await c.faults.injectFault({ method: 'CreateLun', count: 1, code: 0, message: '', delayMs: 100, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const op = await createDisk(c, 'vm1', 'E:', 'create-1');
      await faultsUsedUp(c);
      await c.faults.setUnavailable({ durationMs: 130 });
      const done = await succeeded(c, op);
      const retried = cap.lines().filter((l) => l.message === 'array call retried');
      expect(retried.map((l) => l.method), 'calls retried inside the workflow').to.include('MapLun');
      expect(retried.every((l) => l.code === 'UNAVAILABLE')).to.equal(true);
      expect(done.steps.find((s) => s.name === 'lun.map')!.state).to.equal(StepState.STEP_STATE_DONE);
      expect((await c.guest('vm1').listDisks({})).disks).to.have.length(1);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the array unavailable for longer than the retries during validate (ListPools) → CreateDisk itself fails UNAVAILABLE and records nothing; the same request id works once the array is back', async () => {
      c = await startCluster();
      const before = (await c.admin.listOperations({ vmId: '', state: OperationState.OPERATION_STATE_UNSPECIFIED, pageSize: 0, pageToken: '' })).operations;
      await c.faults.setUnavailable({ durationMs: 5000 });
      const err = await createDisk(c, 'vm1', 'E:', 'create-1').then(
        () => undefined,
        (e: ServiceError) => e,
      );
      expect(err, 'CreateDisk must fail').to.not.equal(undefined);
      expect(Code[err!.code]).to.equal('UNAVAILABLE');
      expect(err!.details).to.match(/storage array .*cannot be reached/);
      await c.faults.clearFaults({});
      const after = (await c.admin.listOperations({ vmId: '', state: OperationState.OPERATION_STATE_UNSPECIFIED, pageSize: 0, pageToken: '' })).operations;
      expect(after.map((o) => o.id)).to.deep.equal(before.map((o) => o.id));
      await expectNothingLeft(c);
      // Nothing was recorded under that request id either.
      await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-1'));
    });

    it('ListPools UNAVAILABLE exactly as many times as the attempts (3) → CreateDisk fails UNAVAILABLE, all three attempts made, no operation recorded; two times → it succeeds', async () => {
      c = await startCluster();
      await inject(c, { method: 'ListPools', code: Code.UNAVAILABLE, message: 'controller failover (injected)', count: 3, delayMs: 0 });
      const err = await createDisk(c, 'vm1', 'E:', 'create-1').then(
        () => undefined,
        (e: ServiceError) => e,
      );
      expect(err?.code).to.equal(Code.UNAVAILABLE);
      expect((await c.faults.listFaults({})).faults, 'three attempts used the three faults').to.deep.equal([]);
      const ops = (await c.admin.listOperations({ vmId: '', state: OperationState.OPERATION_STATE_UNSPECIFIED, pageSize: 0, pageToken: '' })).operations;
      expect(ops).to.deep.equal([]);

      await inject(c, { method: 'ListPools', code: Code.UNAVAILABLE, message: 'controller failover (injected)', count: 2, delayMs: 0 });
      await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-2'));
    });
  });

  describe('undo refused by the array', () => {
    beforeEach(async () => {
      c = await startCluster();
    });

    it('MapLun refused, then the undo\'s UnmapLun and DeleteLun refused a few times (non-retryable) → the undo is retried until the array accepts, FAILED with the MapLun error, nothing left', async () => {
      const message = 'igroup is being modified (injected)';
      await inject(c, { method: 'MapLun', code: Code.FAILED_PRECONDITION, message, count: 1 });
      // Three UnmapLun run side by side per undo attempt: 4 refusals span at least two attempts.
      await inject(c, { method: 'UnmapLun', code: Code.FAILED_PRECONDITION, message: 'unmap refused (injected)', count: 4, delayMs: 0 });
      await inject(c, { method: 'DeleteLun', code: Code.FAILED_PRECONDITION, message: 'delete refused (injected)', count: 2, delayMs: 0 });
      const op = await createDisk(c, 'vm1', 'E:', 'create-1');
      const w = await watch(c, op.id);
      const done = await c.settle(op.id);
      // The step message of lun.map (whose own undo was retried) is the subject of the test
      // "after an undo was retried, the failed step still shows why it failed" below.
      expectRolledBack(done, await w.done, 'lun.map', { code: Code.FAILED_PRECONDITION, message, skipped: CREATE_SKIPPED, stepMessage: false });
      expect((await c.faults.listFaults({})).faults, 'every refusal was met (and retried past)').to.deep.equal([]);
      expect(done.error!.message).to.not.match(/unmap refused|delete refused/);
      await expectNothingLeft(c);
      await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-2'));
    });
  });

  describe('the array down while a rollback runs', () => {
    beforeEach(async () => {
      c = await startCluster();
    });

    /**
     * Reserve is held 300 ms then refused; as soon as it is held the whole array goes down
     * for 1.5 s, so every undo of the rollback meets an unavailable array first.
     */
    async function reserveFailsThenArrayDown(requestId: string): Promise<{ op: Operation; events: Promise<StepEvent[]>; downUntil: number; seen: Operation }> {
      const message = 'reservation conflict: held by another initiator (injected)';
      await inject(c, { method: 'Reserve', code: Code.FAILED_PRECONDITION, message, delayMs: 300 });
      const op = await createDisk(c, 'vm1', 'E:', requestId);
      const w = await watch(c, op.id);
      await faultsUsedUp(c);
      const downFrom = Date.now();
      await c.faults.setUnavailable({ durationMs: 1500 });
      const downUntil = downFrom + 1500;
      const seen = await until(
        c,
        op.id,
        (o) => o.state === OperationState.OPERATION_STATE_ROLLING_BACK && o.steps.some((s) => s.message.startsWith('undo failed, retrying: ')),
        'ROLLING_BACK with an undo being retried',
      );
      return { op, events: w.done, downUntil, seen };
    }

    it('an undo meeting an unavailable array is retried: the operation shows ROLLING_BACK with "undo failed, retrying: …" while the array is down, then ends FAILED with the Reserve error and nothing left', async () => {
      const { op, events, downUntil, seen } = await reserveFailsThenArrayDown('create-1');
      expect(Date.now(), 'seen while the array was still down').to.be.lessThan(downUntil);
      const retrying = seen.steps.find((s) => s.message.startsWith('undo failed, retrying: '))!;
      expect(retrying.state, show(seen)).to.equal(StepState.STEP_STATE_UNDOING);
      expect(retrying.message).to.match(/storage array .*cannot be reached/);
      expect(seen.error, 'no error is published before the rollback is complete').to.equal(undefined);

      // Still rolling back near the end of the outage: FAILED only once the undo is complete.
      await sleep(Math.max(0, downUntil - Date.now() - 200));
      const late = (await c.admin.getOperation({ operationId: op.id })).operation!;
      expect(late.state, show(late)).to.equal(OperationState.OPERATION_STATE_ROLLING_BACK);

      const done = await c.settle(op.id, 20_000);
      expect(Date.now()).to.be.at.least(downUntil - 50);
      // The error is Reserve's, not the UNAVAILABLE the undo met.
      expectRolledBack(done, await events, 'resource.online', { code: Code.FAILED_PRECONDITION, skipped: CREATE_SKIPPED });
      expect(done.error!.message).to.contain('reservation conflict: held by another initiator');
      expect(done.error!.message).to.not.match(/cannot be reached|unavailable/i);
      await expectNothingLeft(c);
      await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-2'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('after an undo was retried, the failed step still shows why it failed (the Reserve error), not the undo\'s old retry note', async () => {
      const { op } = await reserveFailsThenArrayDown('create-1');
      const done = await c.settle(op.id, 20_000);
      expect(done.state).to.equal(OperationState.OPERATION_STATE_FAILED);
      const step = done.steps.find((s) => s.name === 'resource.online')!;
      expect(step.state).to.equal(StepState.STEP_STATE_UNDONE);
      expect(step.message, show(done)).to.contain('reservation conflict: held by another initiator');
      expect(step.message, show(done)).to.not.match(/^undo failed, retrying/);
      for (const s of done.steps.filter((s) => s.name !== 'resource.online')) {
        expect(s.message, `step ${s.name} (undone after retries) carries no stale retry note: ${show(done)}`).to.not.match(/^undo failed, retrying/);
      }
    });
  });

  describe('RemoveDisk: past the commit point (scsi.detach) nothing is rolled back', () => {
    beforeEach(async () => {
      c = await startCluster();
      await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-1'));
    });

    const cases = [
      { method: 'RegisterReservationKey', step: 'resource.online', what: 'the reservation release' },
      { method: 'UnmapLun', step: 'lun.unmap', what: 'UnmapLun' },
      { method: 'DeleteLun', step: 'lun.delete', what: 'DeleteLun' },
    ];
    for (const k of cases) {
      it(`${k.what} refused until the faults are cleared → the operation stays RUNNING (committed) with "retrying: …" on ${k.step}, never rolls back, and SUCCEEDS after ClearFaults with nothing left`, async () => {
        const message = `${k.method} refused while the array is busy (injected)`;
        await inject(c, { method: k.method, code: Code.FAILED_PRECONDITION, message, count: 100_000, delayMs: 0 });
        const op = await removeDisk(c, 'vm1', 'E:', 'remove-1');
        const w = await watch(c, op.id);
        const seen = await until(
          c,
          op.id,
          (o) => o.steps.find((s) => s.name === k.step)!.message.startsWith('retrying: '),
          `"retrying" on ${k.step}`,
        );
        expect(seen.state, show(seen)).to.equal(OperationState.OPERATION_STATE_RUNNING);
        expect(seen.committed).to.equal(true);
        const step = seen.steps.find((s) => s.name === k.step)!;
        expect(step.state).to.equal(StepState.STEP_STATE_RUNNING);
        expect(step.message).to.contain(message);
        expect(seen.steps.find((s) => s.name === 'scsi.detach')!.state).to.equal(StepState.STEP_STATE_DONE);
        // Detached already: the guest no longer sees it.
        expect((await c.guest('vm1').listDisks({})).disks).to.deep.equal([]);

        // Several retries later it is still going forward, not back.
        await sleep(500);
        const later = (await c.admin.getOperation({ operationId: op.id })).operation!;
        expect(later.state, show(later)).to.equal(OperationState.OPERATION_STATE_RUNNING);
        expect(later.steps.filter((s) => s.state === StepState.STEP_STATE_UNDOING || s.state === StepState.STEP_STATE_UNDONE)).to.deep.equal([]);

        await c.faults.clearFaults({});
        const done = await succeeded(c, op);
        expect(done.error).to.equal(undefined);
        const events = await w.done;
        expect(events.filter((e) => e.kind === StepEventKind.STEP_EVENT_KIND_UNDO_STARTED || e.kind === StepEventKind.STEP_EVENT_KIND_UNDONE)).to.deep.equal([]);
        const failed = events.filter((e) => e.kind === StepEventKind.STEP_EVENT_KIND_FAILED);
        expect(failed.length, 'retries reported as failed events').to.be.at.least(2);
        expect(failed.every((e) => e.step === k.step && e.message.startsWith('retrying: '))).to.equal(true);
        expect(done.steps.map((s) => StepState[s.state])).to.deep.equal(done.steps.map(() => 'STEP_STATE_DONE'));
        await expectNothingLeft(c);
      });
    }

    it('UnmapLun refused a while on a removal that keeps the LUN → retried forward, SUCCEEDS; the LUN stays on the array, mapped nowhere, not an orphan', async () => {
      const message = 'UnmapLun refused (injected)';
      await inject(c, { method: 'UnmapLun', code: Code.FAILED_PRECONDITION, message, count: 100_000, delayMs: 0 });
      const op = await removeDisk(c, 'vm1', 'E:', 'remove-1', false);
      await until(c, op.id, (o) => o.steps.find((s) => s.name === 'lun.unmap')!.message.startsWith('retrying: '), '"retrying" on lun.unmap');
      await c.faults.clearFaults({});
      const done = await succeeded(c, op);
      expect(done.steps.find((s) => s.name === 'lun.delete')!.state).to.equal(StepState.STEP_STATE_SKIPPED);
      expect(await lunsUnderPassthru(c)).to.have.length(1);
      for (const n of NODES) expect(await mapsOfNode(c, n)).to.deep.equal([]);
      expect((await c.guest('vm1').listDisks({})).disks).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the reservation release refused once (count 1) → resource.online retried once, the removal SUCCEEDS with the reservation released and nothing left', async () => {
      await inject(c, { method: 'RegisterReservationKey', code: Code.FAILED_PRECONDITION, message: 'release refused once (injected)', delayMs: 50 });
      const op = await removeDisk(c, 'vm1', 'E:', 'remove-1');
      const w = await watch(c, op.id);
      const done = await succeeded(c, op);
      const events = await w.done;
      const failed = events.filter((e) => e.kind === StepEventKind.STEP_EVENT_KIND_FAILED);
      expect(failed.map((e) => [e.step, e.message.startsWith('retrying: ') && e.message.includes('release refused once')])).to.deep.equal([['resource.online', true]]);
      expect(events.some((e) => e.kind === StepEventKind.STEP_EVENT_KIND_UNDO_STARTED)).to.equal(false);
      expect(done.steps.find((s) => s.name === 'resource.online')!.state).to.equal(StepState.STEP_STATE_DONE);
      await expectNothingLeft(c);
    });
  });

  describe('Available Storage', () => {
    beforeEach(async () => {
      c = await startCluster();
    });

    it('ConnectDisk failing at Reserve → rolled back: the resource is back in Available Storage as "Cluster Disk 1", Offline, still mapped to every node at its LUN id, unreserved; connecting again succeeds', async () => {
      const lun = await shelfLun(c, 'lun1');
      await succeeded(c, (await c.admin.addAvailableDisk({ requestId: 'add-1', lun: lun.path })).operation!);
      const mapsBefore = await mapsOfLun(c, lun.uuid);
      expect(mapsBefore.map((m) => m.igroup)).to.deep.equal(NODES);
      expect(new Set(mapsBefore.map((m) => m.lunId)).size, 'one LUN id on every node').to.equal(1);
      const available = async (): Promise<unknown> =>
        (await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_AVAILABLE_STORAGE })).groups.map((g) => ({
          name: g.name,
          resources: g.resources.map((r) => ({ name: r.name, state: ResourceState[r.state], serial: r.serial, vmId: r.vmId, mountPath: r.mountPath })),
        }));
      const before = await available();
      expect(before).to.deep.equal([
        { name: 'Available Storage', resources: [{ name: 'Cluster Disk 1', state: 'RESOURCE_STATE_OFFLINE', serial: lun.serial, vmId: '', mountPath: '' }] },
      ]);

      const message = 'reservation conflict: held by another initiator (injected)';
      await inject(c, { method: 'Reserve', code: Code.FAILED_PRECONDITION, message });
      const op = (await c.guest('vm2').connectDisk({ requestId: 'connect-1', mountPath: '/mnt/data', lun: lun.serial })).operation!;
      const w = await watch(c, op.id);
      const done = await c.settle(op.id);
      expectRolledBack(done, await w.done, 'resource.online', { code: Code.FAILED_PRECONDITION, message, skipped: CONNECT_SKIPPED });

      expect(await available(), 'back in Available Storage under its name').to.deep.equal(before);
      const groups = (await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups;
      expect(groups.filter((g) => g.kind !== GroupKind.GROUP_KIND_AVAILABLE_STORAGE).flatMap((g) => g.resources.map((r) => r.name))).to.deep.equal([]);
      expect(groups.filter((g) => g.kind === GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
      expect(await mapsOfLun(c, lun.uuid), 'still mapped to every node at the same id').to.deep.equal(mapsBefore);
      const res = await c.storage.readReservation({ lun: lun.uuid });
      expect(res.reserved, 'no reservation left').to.equal(false);
      expect((await c.storage.readReservationKeys({ lun: lun.uuid })).registrations, 'no key left registered').to.deep.equal([]);
      expect((await c.guest('vm2').listDisks({})).disks).to.deep.equal([]);
      expect((await c.guest('vm2').rescanBus({})).devices).to.deep.equal([]);
      expect((await c.storage.getLun({ lun: lun.uuid })).lun?.path, 'the LUN is kept').to.equal(lun.path);
      expect(await c.violations()).to.deep.equal([]);

      const ok = await succeeded(c, (await c.guest('vm2').connectDisk({ requestId: 'connect-2', mountPath: '/mnt/data', lun: lun.serial })).operation!);
      expect(ok.result?.serial).to.equal(lun.serial);
      expect((await c.guest('vm2').listDisks({})).disks.map((d) => [d.mountPath, d.serial])).to.deep.equal([['/mnt/data', lun.serial]]);
      expect((await c.storage.readReservation({ lun: lun.uuid })).holderInitiator).to.equal('iqn.2026-11.dev.passthru:node2');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('AddAvailableDisk failing at MapLun → rolled back: mapped on no node, no resource in Available Storage, the LUN itself kept (the cluster did not create it)', async () => {
      const lun = await shelfLun(c, 'lun2');
      const message = 'igroup is being modified (injected)';
      await inject(c, { method: 'MapLun', code: Code.FAILED_PRECONDITION, message, count: 1 });
      const op = (await c.admin.addAvailableDisk({ requestId: 'add-1', lun: lun.path })).operation!;
      const w = await watch(c, op.id);
      const done = await c.settle(op.id);
      expectRolledBack(done, await w.done, 'lun.map', { code: Code.FAILED_PRECONDITION, message, skipped: [] });

      expect(await mapsOfLun(c, lun.uuid), 'mapped nowhere').to.deep.equal([]);
      for (const n of NODES) expect(await mapsOfNode(c, n)).to.deep.equal([]);
      const groups = (await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups;
      expect(groups.flatMap((g) => g.resources.map((r) => `${g.name}: ${r.name}`))).to.deep.equal([]);
      const kept = (await c.storage.getLun({ lun: lun.uuid })).lun!;
      expect([kept.path, kept.serial, kept.mapped]).to.deep.equal([lun.path, lun.serial, false]);
      expect(await c.violations()).to.deep.equal([]);

      await succeeded(c, (await c.admin.addAvailableDisk({ requestId: 'add-2', lun: lun.path })).operation!);
      expect((await mapsOfLun(c, lun.uuid)).map((m) => m.igroup)).to.deep.equal(NODES);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('RemoveAvailableDisk: past the commit point (resource.delete) nothing is rolled back', () => {
    it('UnmapLun refused until the faults are cleared → RUNNING (committed) with "retrying: …" on lun.unmap, SUCCEEDS after ClearFaults: unmapped everywhere, no resource, the LUN kept', async () => {
      c = await startCluster();
      const lun = await shelfLun(c, 'lun3');
      await succeeded(c, (await c.admin.addAvailableDisk({ requestId: 'add-1', lun: lun.path })).operation!);
      await inject(c, { method: 'UnmapLun', code: Code.FAILED_PRECONDITION, message: 'unmap refused (injected)', count: 100_000, delayMs: 0 });
      const op = (await c.admin.removeAvailableDisk({ requestId: 'rm-1', lun: lun.serial })).operation!;
      const seen = await until(c, op.id, (o) => o.steps.find((s) => s.name === 'lun.unmap')!.message.startsWith('retrying: '), '"retrying" on lun.unmap');
      expect([seen.state, seen.committed], show(seen)).to.deep.equal([OperationState.OPERATION_STATE_RUNNING, true]);
      await sleep(300);
      const later = (await c.admin.getOperation({ operationId: op.id })).operation!;
      expect(later.state, show(later)).to.equal(OperationState.OPERATION_STATE_RUNNING);
      await c.faults.clearFaults({});
      await succeeded(c, op);
      expect(await mapsOfLun(c, lun.uuid)).to.deep.equal([]);
      const groups = (await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups;
      expect(groups.flatMap((g) => g.resources.map((r) => r.name))).to.deep.equal([]);
      expect((await c.storage.getLun({ lun: lun.uuid })).lun?.path).to.equal(lun.path);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('a slow array', () => {
    it('CreateLun slower than the call deadline → DEADLINE_EXCEEDED retried with the same request id: the operation SUCCEEDS with one LUN, and the late first call makes no second one', async () => {
      c = await startCluster({ retry: { ...FAST_RETRY, callTimeoutMs: 500 } });
      await c.faults.injectFault({ method: 'CreateLun', count: 1, code: 0, message: '', delayMs: 1000, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const done = await succeeded(c, await createDisk(c, 'vm1', 'E:', 'create-1'));
      const step = done.steps.find((x) => x.name === 'lun.create')!;
      expect(step.endTime!.getTime() - step.startTime!.getTime(), 'the first call ran into its deadline before the retry').to.be.at.least(500);
      expect(await lunsUnderPassthru(c)).to.deep.equal([done.result!.lunPath]);
      // The first CreateLun, held past its deadline, runs on the array now: same request id, no second LUN.
      await sleep(1200);
      expect(await lunsUnderPassthru(c)).to.deep.equal([done.result!.lunPath]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('CreateLun delayed 300 ms on each of 8 concurrent CreateDisk (two VMs, two nodes) → all 8 SUCCEED in parallel, each with its own LUN, LUN id and SCSI location', async () => {
      c = await startCluster();
      await c.faults.injectFault({ method: 'CreateLun', count: 8, code: 0, message: '', delayMs: 300, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const wanted = [
        ...['E:', 'F:', 'G:', 'H:'].map((m) => ({ vm: 'vm1', mount: m })),
        ...['/d1', '/d2', '/d3', '/d4'].map((m) => ({ vm: 'vm2', mount: m })),
      ];
      const t0 = Date.now();
      const ops = await Promise.all(wanted.map((w, i) => createDisk(c, w.vm, w.mount, `slow-${i}`)));
      const done = await Promise.all(ops.map((o) => c.settle(o.id, 30_000)));
      const elapsed = Date.now() - t0;
      for (const d of done) expect(d.state, show(d)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      expect((await c.faults.listFaults({})).faults, 'each CreateLun was delayed').to.deep.equal([]);
      for (const d of done) {
        const s = d.steps.find((x) => x.name === 'lun.create')!;
        const ms = s.endTime!.getTime() - s.startTime!.getTime();
        expect(ms, `lun.create of ${d.mountPath}`).to.be.at.least(290);
      }
      expect(elapsed, 'the creates ran side by side, not one after another').to.be.lessThan(8 * 300);
      const results = done.map((d) => d.result!);
      expect(new Set(results.map((r) => r.serial)).size).to.equal(8);
      expect(new Set(results.map((r) => r.lunId)).size, 'shared disks: one LUN id each, free on every node').to.equal(8);
      for (const vm of ['vm1', 'vm2']) {
        const disks = (await c.guest(vm).listDisks({})).disks;
        expect(disks).to.have.length(4);
        expect(new Set(disks.map((d) => `${d.address!.controller}:${d.address!.location}`)).size).to.equal(4);
      }
      expect(await lunsUnderPassthru(c)).to.have.length(8);
      for (const n of NODES) expect(await mapsOfNode(c, n)).to.have.length(8);
      expect(await c.violations()).to.deep.equal([]);
    });
  });
});
