/**
 * Pass-through block I/O and failover, through the wire: storage-sim (faults enabled) and the
 * host agent in this process over real gRPC (test/support/host-cluster.ts), a fresh cluster
 * per test: node1 (owns Available Storage and the Cluster Group), node2, node3; vm1 "web1"
 * Windows HA on node1, vm2 "db1" Linux HA on node2, vm3 "build1" Windows non-HA on node2,
 * vm4 "scratch1" Linux non-HA on node3.
 *
 * DESIGN.md "Failover": a failed node's in-flight operations are settled by the commit-point
 * rule, then every group it owned moves to a surviving node; an HA VM restarts there with the
 * same SCSI attachments, the new owner preempts the failed node's persistent reservations (the
 * old node can no longer write); a non-HA VM goes down with its node and comes back with it.
 * GuestService ReadDisk/WriteDisk carry a VM's I/O, by SCSI address, to the array as the node
 * the VM runs on: the array's masking and reservations decide. Every test that changes
 * anything ends with CheckInvariants empty.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statusDetails } from '../../common/status.js';
import {
  DiskSharing,
  GroupKind,
  NodeState,
  OperationState,
  ResourceState,
  StepState,
  VmState,
  type CreateDiskRequest,
  type Disk,
  type Group,
  type GroupMove,
  type Operation,
  type ScsiAddress,
} from '../../proto/gen/passthru/host/v1/host.js';
import { FaultTiming, OsType, Provisioning, type Lun, type LunMap } from '../../proto/gen/passthru/storage/v1/storage.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;
const DISK_BYTES = 64 * MiB;
const SIZE = BigInt(DISK_BYTES);
const PREFIX = '/vol/passthru/';
const NODES = ['node1', 'node2', 'node3'];
const INITIATOR: Record<string, string> = {
  node1: 'iqn.2026-11.dev.passthru:node1',
  node2: 'iqn.2026-11.dev.passthru:node2',
  node3: 'iqn.2026-11.dev.passthru:node3',
};
/** How long an array call is held by a delay fault: well under the host agent's 2 s call deadline in tests. */
const HOLD_MS = 1000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const json = (x: unknown): string => JSON.stringify(x, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v));

// ---------------------------------------------------------------- helpers

let nextId = 0;
/** A fresh request id. */
const rid = (tag = 'r'): string => `${tag}-${++nextId}`;

/** Deterministic, position-dependent bytes: two patterns never agree on a sector. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

function expectSucceeded(op: Operation): void {
  expect(OperationState[op.state], json(op.error ?? op.steps.filter((s) => s.message))).to.equal('OPERATION_STATE_SUCCEEDED');
}

const createReq = (mountPath: string, o: Partial<CreateDiskRequest> = {}): CreateDiskRequest => ({
  requestId: rid('create'),
  mountPath,
  sizeBytes: SIZE,
  sharing: DiskSharing.DISK_SHARING_UNSPECIFIED,
  ...o,
});

/** CreateDisk on the VM's socket; waits for it to succeed. */
async function create(c: TestCluster, vmId: string, mountPath: string, o: Partial<CreateDiskRequest> = {}): Promise<Operation> {
  const { operation } = await c.guest(vmId).createDisk(createReq(mountPath, o));
  const op = await c.settle(operation!.id);
  expectSucceeded(op);
  return op;
}

const addressOf = (op: Operation): ScsiAddress => op.result!.address!;

async function write(c: TestCluster, vmId: string, address: ScsiAddress | undefined, offset: number | bigint, data: Buffer, requestId = ''): Promise<number> {
  return (await c.guest(vmId).writeDisk({ requestId, address, offsetBytes: BigInt(offset), data })).writtenBytes;
}

async function read(c: TestCluster, vmId: string, address: ScsiAddress | undefined, offset: number | bigint, length: number): Promise<Buffer> {
  return Buffer.from((await c.guest(vmId).readDisk({ address, offsetBytes: BigInt(offset), lengthBytes: length })).data);
}

/** The LUN's bytes as the array gives them to an initiator (its masking and reservations apply). */
async function arrayRead(c: TestCluster, lun: string, node: string, offset: number, length: number): Promise<Buffer> {
  return Buffer.from((await c.storage.readBlocks({ lun, initiator: INITIATOR[node]!, offsetBytes: BigInt(offset), lengthBytes: length })).data);
}

/** Compares buffers without dumping a megabyte into the failure message. */
function expectBytes(actual: Buffer, expected: Buffer, what: string): void {
  expect(actual.length, `${what}: length`).to.equal(expected.length);
  if (!actual.equals(expected)) {
    let i = 0;
    while (actual[i] === expected[i]) i++;
    expect.fail(`${what}: bytes differ first at +${i} (sector ${Math.floor(i / 512)}): got ${actual.subarray(i, i + 8).toString('hex')}, want ${expected.subarray(i, i + 8).toString('hex')}`);
  }
}

async function reservation(c: TestCluster, lun: string): Promise<{ holder: string | undefined; registrations: { initiator: string; key: string }[] }> {
  const [r, k] = await Promise.all([c.storage.readReservation({ lun }), c.storage.readReservationKeys({ lun })]);
  return { holder: r.reserved ? r.holderInitiator : undefined, registrations: k.registrations.map((x) => ({ initiator: x.initiator, key: x.key })) };
}

async function allLuns(c: TestCluster, prefix = PREFIX): Promise<Lun[]> {
  const out: Lun[] = [];
  let pageToken = '';
  do {
    const page = await c.storage.listLuns({ pageSize: 1000, pageToken, pathPrefix: prefix });
    out.push(...page.luns);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return out;
}

async function allMaps(c: TestCluster): Promise<LunMap[]> {
  const out: LunMap[] = [];
  let pageToken = '';
  do {
    const page = await c.storage.listLunMaps({ lun: '', igroup: '', pageSize: 1000, pageToken });
    out.push(...page.maps);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return out.sort((a, b) => (a.igroup < b.igroup ? -1 : a.igroup > b.igroup ? 1 : a.lunId - b.lunId));
}

async function groups(c: TestCluster, kind = GroupKind.GROUP_KIND_UNSPECIFIED): Promise<Group[]> {
  return (await c.admin.listGroups({ kind })).groups;
}

async function group(c: TestCluster, name: string): Promise<Group> {
  const g = (await groups(c)).find((x) => x.name === name);
  expect(g, `group ${name}`).to.not.equal(undefined);
  return g!;
}

async function nodeStates(c: TestCluster): Promise<Record<string, string>> {
  return Object.fromEntries((await c.admin.listNodes({})).nodes.map((n) => [n.name, NodeState[n.state]]));
}

/** Everything a refused call must leave as it was (the cluster, every VM's disks, the array's LUNs, maps and reservations). */
async function snapshot(c: TestCluster): Promise<string> {
  const vms = (await c.admin.listVms({ node: '' })).vms;
  const luns = await allLuns(c, '');
  const reservations: Record<string, unknown> = {};
  for (const l of luns) reservations[l.serial] = await reservation(c, l.uuid);
  return json({
    nodes: (await c.admin.listNodes({})).nodes,
    groups: await groups(c),
    vms,
    disks: (await c.admin.listDisks({ vmId: '' })).disks,
    operations: (await c.admin.listOperations({ vmId: '', state: 0, pageSize: 1000, pageToken: '' })).operations.length,
    luns,
    maps: await allMaps(c),
    reservations,
  });
}

/** Polls the operation until `pred` holds. */
async function until(c: TestCluster, opId: string, pred: (op: Operation) => boolean, what: string, timeoutMs = 10_000): Promise<Operation> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const op = (await c.admin.getOperation({ operationId: opId })).operation!;
    if (pred(op)) return op;
    if (Date.now() > end) throw new Error(`operation ${opId}: ${what} not seen within ${timeoutMs} ms; steps ${json(op.steps.map((s) => `${s.name}=${StepState[s.state]}`))}`);
    await sleep(5);
  }
}

const stepRunning = (name: string) => (op: Operation): boolean => op.steps.find((s) => s.name === name)?.state === StepState.STEP_STATE_RUNNING;

/** Holds the next `count` calls of an array RPC for `ms` (they then run). */
async function hold(c: TestCluster, method: string, ms = HOLD_MS, count = 1): Promise<void> {
  await c.faults.injectFault({ method, count, code: 0, message: '', delayMs: ms, timing: FaultTiming.FAULT_TIMING_BEFORE });
}

/** Polls until every injected fault was used up (the held calls have reached the array). */
async function faultsUsedUp(c: TestCluster, timeoutMs = 10_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while ((await c.faults.listFaults({})).faults.length > 0) {
    if (Date.now() > end) throw new Error(`faults not used up within ${timeoutMs} ms`);
    await sleep(5);
  }
}

/** The node the one group on its way somewhere is moving to (the survivor whose fencing is held). */
async function movingTarget(c: TestCluster): Promise<string> {
  // The wire does not show a group's destination; the in-process host agent does.
  const moving = [...c.host.agent.state.groups.values()].filter((g) => g.movingTo);
  expect(moving.map((g) => g.name), 'groups on their way').to.have.length(1);
  return moving[0]!.movingTo!;
}

/** A LUN made by a storage administrator directly on the array. */
async function arrayLun(c: TestCluster, path: string): Promise<Lun> {
  const { lun } = await c.storage.createLun({
    requestId: rid('lun'),
    path,
    sizeBytes: SIZE,
    osType: OsType.OS_TYPE_WINDOWS,
    provisioning: Provisioning.PROVISIONING_THIN,
    comment: 'made by a storage admin',
    pool: '',
  });
  return lun!;
}

async function addAvailable(c: TestCluster, lun: string): Promise<void> {
  const { operation } = await c.admin.addAvailableDisk({ requestId: rid('add'), lun });
  expectSucceeded(await c.settle(operation!.id));
}

async function connect(c: TestCluster, vmId: string, mountPath: string, lun: string): Promise<Operation> {
  const { operation } = await c.guest(vmId).connectDisk({ requestId: rid('connect'), mountPath, lun });
  const op = await c.settle(operation!.id);
  expectSucceeded(op);
  return op;
}

const sortMoves = (moves: GroupMove[]): GroupMove[] =>
  [...moves].map((m) => ({ ...m, serials: [...m.serials].sort() })).sort((a, b) => (a.group < b.group ? -1 : 1));

/** A disk of a VM, written with its own pattern at a few places, checked later. */
interface Written {
  vmId: string;
  op: Operation;
  chunks: { offset: number; data: Buffer }[];
}

async function writeSome(c: TestCluster, vmId: string, op: Operation, seed: number): Promise<Written> {
  const chunks = [
    { offset: 0, data: pattern(4096, seed) },
    { offset: 5 * MiB + 512, data: pattern(64 * 1024, seed + 1) },
    { offset: DISK_BYTES - MiB, data: pattern(MiB, seed + 2) },
  ];
  for (const ch of chunks) expect(await write(c, vmId, addressOf(op), ch.offset, ch.data, rid('w'))).to.equal(ch.data.length);
  return { vmId, op, chunks };
}

async function expectWritten(c: TestCluster, w: Written, what: string): Promise<void> {
  for (const ch of w.chunks) expectBytes(await read(c, w.vmId, addressOf(w.op), ch.offset, ch.data.length), ch.data, `${what}: ${w.vmId} at +${ch.offset}`);
}

// ---------------------------------------------------------------- tests

describe('host-agent failover and pass-through block I/O over gRPC', function () {
  this.timeout(60_000);
  let c: TestCluster;
  beforeEach(async () => {
    c = await startCluster();
  });
  afterEach(async () => {
    await c.faults.clearFaults({}).catch(() => undefined);
    await c.close();
  });

  // ============================================================ block I/O
  describe('GuestService ReadDisk / WriteDisk', () => {
    it('WriteDisk then ReadDisk by SCSI address round-trips bytes at several offsets from 512 B to 1 MiB, and the array holds them as the VM\'s node reads them', async () => {
      const e = await create(c, 'vm1', 'E:');
      const d = await create(c, 'vm2', '/data');
      const fresh = await read(c, 'vm1', addressOf(e), 0, 4096);
      expect(fresh.equals(Buffer.alloc(4096)), 'a new disk reads back zeros').to.equal(true);
      const cases = [
        { offset: 0, length: 512 },
        { offset: 512, length: 4096 },
        { offset: 8192, length: 3 * 512 },
        { offset: MiB, length: MiB },
        { offset: 32 * MiB + 512, length: 64 * 1024 },
        { offset: DISK_BYTES - MiB - 512, length: 512 },
        { offset: DISK_BYTES - MiB, length: MiB },
      ];
      const written = cases.map((k, i) => ({ ...k, data: pattern(k.length, 100 + i) }));
      for (const [vmId, op, node] of [['vm1', e, 'node1'], ['vm2', d, 'node2']] as const) {
        for (const w of written) {
          expect(await write(c, vmId, addressOf(op), w.offset, w.data), `written_bytes at +${w.offset}`).to.equal(w.length);
          expectBytes(await read(c, vmId, addressOf(op), w.offset, w.length), w.data, `${vmId} reads back +${w.offset}`);
        }
        // Nothing written later clobbered anything written before, and the array has every byte.
        for (const w of written) {
          expectBytes(await read(c, vmId, addressOf(op), w.offset, w.length), w.data, `${vmId} re-reads +${w.offset}`);
          expectBytes(await arrayRead(c, op.result!.serial, node, w.offset, w.length), w.data, `array as ${node} at +${w.offset}`);
        }
        // Between the written pieces the disk is still zero.
        expectBytes(await read(c, vmId, addressOf(op), 4608, 8192 - 4608), Buffer.alloc(8192 - 4608), `${vmId} gap`);
      }
      expect(await c.violations()).to.deep.equal([]);
    });

    it('refuses malformed reads and writes with INVALID_ARGUMENT naming the field, and a refused write changes no byte', async () => {
      const e = await create(c, 'vm1', 'E:');
      const a = addressOf(e);
      const serial = e.result!.serial;
      const before = { head: pattern(2 * MiB, 7), tail: pattern(2 * MiB, 8) };
      await write(c, 'vm1', a, 0, before.head.subarray(0, MiB));
      await write(c, 'vm1', a, MiB, before.head.subarray(MiB));
      await write(c, 'vm1', a, DISK_BYTES - 2 * MiB, before.tail.subarray(0, MiB));
      await write(c, 'vm1', a, DISK_BYTES - MiB, before.tail.subarray(MiB));
      const junk = (n: number): Buffer => Buffer.alloc(n, 0xee);

      // Reads.
      await expectStatus(read(c, 'vm1', a, 100, 512), Code.INVALID_ARGUMENT, 'offset_bytes');
      await expectStatus(read(c, 'vm1', a, 513, 512), Code.INVALID_ARGUMENT, 'offset_bytes');
      await expectStatus(read(c, 'vm1', a, 0, 0), Code.INVALID_ARGUMENT, 'length_bytes');
      await expectStatus(read(c, 'vm1', a, 0, 1000), Code.INVALID_ARGUMENT, 'length_bytes');
      await expectStatus(read(c, 'vm1', a, 0, MiB + 512), Code.INVALID_ARGUMENT, 'length_bytes');
      await expectStatus(read(c, 'vm1', a, DISK_BYTES - 512, 1024), Code.INVALID_ARGUMENT, ['offset_bytes', 'length_bytes']);
      await expectStatus(read(c, 'vm1', a, DISK_BYTES, 512), Code.INVALID_ARGUMENT, ['offset_bytes', 'length_bytes']);
      await expectStatus(read(c, 'vm1', a, 1n << 62n, 512), Code.INVALID_ARGUMENT, ['offset_bytes', 'length_bytes']);
      await expectStatus(read(c, 'vm1', a, (1n << 64n) - 512n, 512), Code.INVALID_ARGUMENT, ['offset_bytes', 'length_bytes']);
      await expectStatus(read(c, 'vm1', undefined, 0, 512), Code.INVALID_ARGUMENT, 'address');

      // Writes: each with junk that would show if any of it landed.
      await expectStatus(write(c, 'vm1', a, 100, junk(512)), Code.INVALID_ARGUMENT, 'offset_bytes');
      await expectStatus(write(c, 'vm1', a, 4096 + 1, junk(4096)), Code.INVALID_ARGUMENT, 'offset_bytes');
      await expectStatus(write(c, 'vm1', a, 0, Buffer.alloc(0)), Code.INVALID_ARGUMENT, 'data');
      await expectStatus(write(c, 'vm1', a, 0, junk(1000)), Code.INVALID_ARGUMENT, 'data');
      await expectStatus(write(c, 'vm1', a, 512, junk(513)), Code.INVALID_ARGUMENT, 'data');
      await expectStatus(write(c, 'vm1', a, 0, junk(MiB + 512)), Code.INVALID_ARGUMENT, 'data');
      await expectStatus(write(c, 'vm1', a, DISK_BYTES - 512, junk(1024)), Code.INVALID_ARGUMENT, ['offset_bytes', 'data']);
      await expectStatus(write(c, 'vm1', a, DISK_BYTES, junk(512)), Code.INVALID_ARGUMENT, ['offset_bytes', 'data']);
      await expectStatus(write(c, 'vm1', a, (1n << 64n) - 512n, junk(512)), Code.INVALID_ARGUMENT, ['offset_bytes', 'data']);
      await expectStatus(write(c, 'vm1', undefined, 0, junk(512)), Code.INVALID_ARGUMENT, 'address');
      await expectStatus(write(c, 'vm1', a, 0, junk(512), 'has space'), Code.INVALID_ARGUMENT, 'request_id');
      await expectStatus(write(c, 'vm1', a, 0, junk(512), 'x'.repeat(129)), Code.INVALID_ARGUMENT, 'request_id');

      for (const [off, want] of [[0, before.head], [DISK_BYTES - 2 * MiB, before.tail]] as const) {
        for (let i = 0; i < want.length; i += MiB) {
          expectBytes(await read(c, 'vm1', a, off + i, MiB), want.subarray(i, i + MiB), `guest view at +${off + i} after refused writes`);
          expectBytes(await arrayRead(c, serial, 'node1', off + i, MiB), want.subarray(i, i + MiB), `array at +${off + i} after refused writes`);
        }
      }
      expect(await c.violations()).to.deep.equal([]);
    });

    it('an address with nothing attached is NOT_FOUND for read and write, on a VM with disks and on one without', async () => {
      const e = await create(c, 'vm1', 'E:');
      expect(addressOf(e)).to.deep.equal({ controller: 0, location: 0 });
      const before = await snapshot(c);
      for (const addr of [
        { controller: 0, location: 1 },
        { controller: 1, location: 0 },
        { controller: 3, location: 63 },
        { controller: 0, location: 64 },
        { controller: 4, location: 0 },
        { controller: 4294967295, location: 4294967295 },
      ]) {
        await expectStatus(read(c, 'vm1', addr, 0, 512), Code.NOT_FOUND);
        await expectStatus(write(c, 'vm1', addr, 0, pattern(512, 1)), Code.NOT_FOUND);
      }
      // vm4 has no disk at all (and only 1 x 2 locations).
      for (const addr of [{ controller: 0, location: 0 }, { controller: 0, location: 1 }]) {
        await expectStatus(read(c, 'vm4', addr, 0, 512), Code.NOT_FOUND);
        await expectStatus(write(c, 'vm4', addr, 0, pattern(512, 1)), Code.NOT_FOUND);
      }
      expect(await snapshot(c)).to.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a VM cannot read or write another VM\'s disk by guessing its address: NOT_FOUND (or its own disk there), the other VM\'s bytes unchanged', async () => {
      const e = await create(c, 'vm1', 'E:');
      const f = await create(c, 'vm1', 'F:');
      const mine = [await writeSome(c, 'vm1', e, 11), await writeSome(c, 'vm1', f, 21)];
      for (const op of [e, f]) {
        await expectStatus(read(c, 'vm2', addressOf(op), 0, 4096), Code.NOT_FOUND);
        await expectStatus(write(c, 'vm2', addressOf(op), 0, pattern(4096, 99), rid('guess')), Code.NOT_FOUND);
        // vm4 runs on another node and has no disks either.
        await expectStatus(write(c, 'vm4', addressOf(op), 0, pattern(4096, 98)), Code.NOT_FOUND);
      }
      // Once vm2 has a disk of its own at 0:0, the address is its own disk, never vm1's.
      const own = await create(c, 'vm2', '/data');
      expect(addressOf(own)).to.deep.equal(addressOf(e));
      expectBytes(await read(c, 'vm2', addressOf(own), 0, 4096), Buffer.alloc(4096), 'vm2 at 0:0 sees its own, empty disk');
      await write(c, 'vm2', addressOf(own), 0, pattern(4096, 97));
      expectBytes(await arrayRead(c, own.result!.serial, 'node2', 0, 4096), pattern(4096, 97), 'vm2\'s write went to its own LUN');
      await expectStatus(read(c, 'vm2', addressOf(f), 0, 512), Code.NOT_FOUND);
      for (const w of mine) await expectWritten(c, w, 'vm1\'s disks after vm2 guessed');
      expectBytes(await arrayRead(c, e.result!.serial, 'node1', 0, 4096), mine[0]!.chunks[0]!.data, 'vm1\'s LUN on the array');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a stopped VM gets FAILED_PRECONDITION for read and write, nothing is written, and I/O works again once it is started', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 31);
      await c.admin.stopVm({ requestId: rid('stop'), vmId: 'vm1' });
      await expectStatus(read(c, 'vm1', addressOf(e), 0, 512), Code.FAILED_PRECONDITION);
      await expectStatus(write(c, 'vm1', addressOf(e), 0, pattern(4096, 1), rid('w')), Code.FAILED_PRECONDITION);
      expectBytes(await arrayRead(c, e.result!.serial, 'node1', 0, 4096), w.chunks[0]!.data, 'the array after a refused write');
      await c.admin.startVm({ requestId: rid('start'), vmId: 'vm1' });
      await expectWritten(c, w, 'after StartVm');
      await write(c, 'vm1', addressOf(e), 0, pattern(512, 2));
      expectBytes(await read(c, 'vm1', addressOf(e), 0, 512), pattern(512, 2), 'write after StartVm');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('while a new disk\'s resource is OnlinePending (CreateDisk held at the Reserve of resource.online) I/O at its address is FAILED_PRECONDITION and nothing reaches the LUN; once Online it works', async () => {
      await hold(c, 'Reserve', 1500);
      const { operation } = await c.guest('vm1').createDisk(createReq('E:'));
      await until(c, operation!.id, stepRunning('resource.online'), 'resource.online running');
      const listed = (await c.guest('vm1').listDisks({})).disks;
      expect(listed.map((d) => [d.mountPath, ResourceState[d.resourceState]])).to.deep.equal([['E:', 'RESOURCE_STATE_ONLINE_PENDING']]);
      const a = listed[0]!.address!;
      const serial = listed[0]!.serial;
      await expectStatus(read(c, 'vm1', a, 0, 512), Code.FAILED_PRECONDITION, 'RESOURCE_NOT_ONLINE');
      await expectStatus(write(c, 'vm1', a, 0, pattern(512, 5), rid('w')), Code.FAILED_PRECONDITION, 'RESOURCE_NOT_ONLINE');
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect(op.result!.address).to.deep.equal(a);
      expectBytes(await arrayRead(c, serial, 'node1', 0, 512), Buffer.alloc(512), 'the refused write left the LUN zero');
      await write(c, 'vm1', a, 0, pattern(512, 6));
      expectBytes(await read(c, 'vm1', a, 0, 512), pattern(512, 6), 'write once Online');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('during a RemoveDisk held at resource.online the disk is already detached (past scsi.detach): I/O at its address is refused and changes nothing, while the VM\'s other disk keeps working', async () => {
      const e = await create(c, 'vm1', 'E:');
      const f = await create(c, 'vm1', 'F:');
      const we = await writeSome(c, 'vm1', e, 41);
      const wf = await writeSome(c, 'vm1', f, 51);
      // resource.online of the removal releases the reservation: RegisterReservationKey with key 0.
      await hold(c, 'RegisterReservationKey', 1500);
      const { operation } = await c.guest('vm1').removeDisk({ requestId: rid('remove'), mountPath: 'E:', deleteLun: false });
      await until(c, operation!.id, stepRunning('resource.online'), 'resource.online running');
      const [ge] = (await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).filter((g) => g.vmId === 'vm1');
      expect(ge?.resources.map((r) => [r.serial, ResourceState[r.state]])).to.deep.equal([[e.result!.serial, 'RESOURCE_STATE_ONLINE_PENDING']]);
      const rRead = await expectStatus(read(c, 'vm1', addressOf(e), 0, 4096), Code.NOT_FOUND);
      const rWrite = await expectStatus(write(c, 'vm1', addressOf(e), 0, pattern(4096, 1), rid('w')), Code.NOT_FOUND);
      expect(rRead.code).to.equal(rWrite.code);
      await expectWritten(c, wf, 'the other disk during the removal');
      await write(c, 'vm1', addressOf(f), 512, pattern(512, 3));
      expectSucceeded(await c.settle(operation!.id));
      // The LUN stays on the array (no delete) with vm1's bytes, untouched by the refused write.
      const lun = (await allLuns(c)).find((l) => l.serial === e.result!.serial)!;
      await c.storage.mapLun({ igroups: [], requestId: rid('map'), lun: lun.uuid, igroup: 'node3', lunId: 200 });
      expectBytes(await arrayRead(c, lun.uuid, 'node3', 0, 4096), we.chunks[0]!.data, 'the removed disk\'s bytes');
      await c.storage.unmapLun({ igroups: [], requestId: rid('unmap'), lun: lun.uuid, igroup: 'node3' });
      expect(await c.violations()).to.deep.equal([]);
    });

    it('WriteDisk with the same request_id twice writes once: a retry after other data was written under another id is answered from the first and overwrites nothing', async () => {
      const e = await create(c, 'vm1', 'E:');
      const a = addressOf(e);
      const first = pattern(8192, 1);
      const second = pattern(8192, 2);
      expect(await write(c, 'vm1', a, 4096, first, 'write-1')).to.equal(8192);
      expect(await write(c, 'vm1', a, 4096, second, 'write-2')).to.equal(8192);
      expect(await write(c, 'vm1', a, 4096, first, 'write-1'), 'the retry answers with the first result').to.equal(8192);
      expectBytes(await read(c, 'vm1', a, 4096, 8192), second, 'the retry did not overwrite');
      expectBytes(await arrayRead(c, e.result!.serial, 'node1', 4096, 8192), second, 'the array after the retry');
      // The same id for other bytes is another request.
      await expectStatus(write(c, 'vm1', a, 4096, pattern(8192, 3), 'write-1'), Code.INVALID_ARGUMENT, ['request_id', 'REQUEST_ID_REUSED']);
      expectBytes(await read(c, 'vm1', a, 4096, 8192), second, 'after a reused id was refused');
      // Without a request id every call writes.
      await write(c, 'vm1', a, 4096, first);
      await write(c, 'vm1', a, 4096, second);
      await write(c, 'vm1', a, 4096, first);
      expectBytes(await read(c, 'vm1', a, 4096, 8192), first, 'writes without a request id');
      // Request ids are the VM's own: vm2 using "write-2" on its disk writes.
      const d = await create(c, 'vm2', '/data');
      const mine = pattern(8192, 4);
      expect(await write(c, 'vm2', addressOf(d), 4096, mine, 'write-2')).to.equal(8192);
      expectBytes(await read(c, 'vm2', addressOf(d), 4096, 8192), mine, 'vm2\'s write with an id vm1 used');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a WriteDisk request_id reused for other bytes is INVALID_ARGUMENT whose BadRequest names the request_id field', async () => {
      const e = await create(c, 'vm1', 'E:');
      await write(c, 'vm1', addressOf(e), 0, pattern(512, 1), 'write-1');
      const err = await expectStatus(write(c, 'vm1', addressOf(e), 0, pattern(512, 2), 'write-1'), Code.INVALID_ARGUMENT, 'REQUEST_ID_REUSED');
      expect(statusDetails(err).fieldViolations.map((f) => f.field), err.details).to.include('request_id');
      expectBytes(await read(c, 'vm1', addressOf(e), 0, 512), pattern(512, 1), 'after the refused reuse');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the array\'s masking and reservations decide: only the VM\'s node (the registrant) may write a shared disk; after FailNode the failed node\'s WriteBlocks is FAILED_PRECONDITION (reservation conflict) and changes nothing', async () => {
      const e = await create(c, 'vm1', 'E:');
      const serial = e.result!.serial;
      const w = await writeSome(c, 'vm1', e, 61);
      const direct = (node: string, data: Buffer): Promise<unknown> =>
        c.storage.writeBlocks({ requestId: rid('direct'), lun: serial, initiator: INITIATOR[node]!, offsetBytes: 0n, data });
      // A shared disk is mapped to every node, but only the reservation holder's registrants may write.
      await expectStatus(direct('node2', pattern(4096, 1)), Code.FAILED_PRECONDITION, 'RESERVATION_CONFLICT');
      await expectStatus(direct('node3', pattern(4096, 1)), Code.FAILED_PRECONDITION, 'RESERVATION_CONFLICT');
      // An initiator in no igroup the LUN is mapped to is masked.
      await expectStatus(
        c.storage.writeBlocks({ requestId: rid('direct'), lun: serial, initiator: 'iqn.2026-11.dev.passthru:stranger', offsetBytes: 0n, data: pattern(512, 1) }),
        Code.PERMISSION_DENIED,
      );
      await expectStatus(c.storage.readBlocks({ lun: serial, initiator: 'iqn.2026-11.dev.passthru:stranger', offsetBytes: 0n, lengthBytes: 512 }), Code.PERMISSION_DENIED);

      const failed = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      const to = failed.moves.find((m) => m.vmId === 'vm1')!.toNode;
      await expectStatus(direct('node1', pattern(4096, 2)), Code.FAILED_PRECONDITION, 'RESERVATION_CONFLICT');
      await expectStatus(
        c.storage.writeBlocks({ requestId: rid('direct'), lun: serial, initiator: INITIATOR.node1!, offsetBytes: BigInt(DISK_BYTES - MiB), data: pattern(MiB, 3) }),
        Code.FAILED_PRECONDITION,
        'RESERVATION_CONFLICT',
      );
      expectBytes(await arrayRead(c, serial, to, 0, 4096), w.chunks[0]!.data, 'the LUN after node1\'s late write');
      await expectWritten(c, w, 'through the VM after node1\'s late writes');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a dedicated disk is masked from every other node: ReadBlocks and WriteBlocks as another node are PERMISSION_DENIED', async () => {
      const d = await create(c, 'vm3', 'D:', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      const w = await writeSome(c, 'vm3', d, 71);
      for (const node of ['node1', 'node3']) {
        await expectStatus(arrayRead(c, d.result!.serial, node, 0, 512), Code.PERMISSION_DENIED, 'LUN_MASKED');
        await expectStatus(
          c.storage.writeBlocks({ requestId: rid('direct'), lun: d.result!.serial, initiator: INITIATOR[node]!, offsetBytes: 0n, data: pattern(512, 1) }),
          Code.PERMISSION_DENIED,
          'LUN_MASKED',
        );
      }
      await expectWritten(c, w, 'the dedicated disk');
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  // ============================================================ FailNode
  describe('AdminService.FailNode', () => {
    it('FailNode(node1): vm1 (HA) restarts on a survivor with the same SCSI attachments, its group there, every disk Online and reserved by the new node, node1\'s key gone; its bytes read back the same and new writes work', async () => {
      const e = await create(c, 'vm1', 'E:');
      const f = await create(c, 'vm1', 'F:', { sizeBytes: SIZE });
      const written = [await writeSome(c, 'vm1', e, 1000), await writeSome(c, 'vm1', f, 2000)];
      const bus = (await c.guest('vm1').rescanBus({})).devices;
      expect(bus.map((x) => x.serial).sort()).to.deep.equal([e.result!.serial, f.result!.serial].sort());
      const node1Keys: Record<string, string> = {};
      for (const op of [e, f]) {
        const r = await reservation(c, op.result!.serial);
        expect(r.holder, 'reserved by node1 before the failure').to.equal(INITIATOR.node1);
        const reg = r.registrations.find((x) => x.initiator === INITIATOR.node1);
        expect(reg, 'node1 registered').to.not.equal(undefined);
        node1Keys[op.result!.serial] = reg!.key;
      }

      const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect(res.node!.name).to.equal('node1');
      expect(NodeState[res.node!.state]).to.equal('NODE_STATE_DOWN');
      expect(res.settledOperations).to.deep.equal([]);
      const vmMove = res.moves.find((m) => m.group === 'Virtual Machine web1');
      expect(vmMove, json(res.moves)).to.not.equal(undefined);
      const to = vmMove!.toNode;
      expect(['node2', 'node3']).to.include(to);
      expect({ ...vmMove!, serials: [...vmMove!.serials].sort() }).to.deep.equal({
        group: 'Virtual Machine web1',
        fromNode: 'node1',
        toNode: to,
        vmId: 'vm1',
        vmRunning: true,
        serials: [e.result!.serial, f.result!.serial].sort(),
      });
      expect(await nodeStates(c)).to.deep.equal({ node1: 'NODE_STATE_DOWN', node2: 'NODE_STATE_UP', node3: 'NODE_STATE_UP' });

      const { vm } = await c.guest('vm1').getSelf({});
      expect([vm!.node, VmState[vm!.state]]).to.deep.equal([to, 'VM_STATE_RUNNING']);
      expect((await c.guest('vm1').rescanBus({})).devices, 'the same SCSI attachments').to.deep.equal(bus);
      const g = await group(c, 'Virtual Machine web1');
      expect(g.ownerNode).to.equal(to);
      expect(g.resources.map((r) => [r.serial, ResourceState[r.state]]).sort()).to.deep.equal(
        [e.result!.serial, f.result!.serial].sort().map((s) => [s, 'RESOURCE_STATE_ONLINE']),
      );
      for (const op of [e, f]) {
        const r = await reservation(c, op.result!.serial);
        expect(r.holder, `holder of ${op.result!.serial}`).to.equal(INITIATOR[to]);
        expect(r.registrations.map((x) => x.initiator), 'node1 no longer registered').to.not.include(INITIATOR.node1);
        expect(r.registrations.map((x) => x.key), 'node1\'s key no longer registered').to.not.include(node1Keys[op.result!.serial]);
        expect(r.registrations.map((x) => x.initiator)).to.include(INITIATOR[to]);
      }
      for (const w of written) await expectWritten(c, w, 'after FailNode');
      const after = pattern(MiB, 3000);
      expect(await write(c, 'vm1', addressOf(e), 10 * MiB, after, rid('w'))).to.equal(MiB);
      expectBytes(await read(c, 'vm1', addressOf(e), 10 * MiB, MiB), after, 'a write after failover');
      expectBytes(await arrayRead(c, e.result!.serial, to, 10 * MiB, MiB), after, `the array as ${to}`);
      expect((await c.admin.listDisks({ vmId: 'vm1' })).disks.map((d) => ResourceState[d.resourceState])).to.deep.equal(['RESOURCE_STATE_ONLINE', 'RESOURCE_STATE_ONLINE']);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('FailNode moves Available Storage and the Cluster Group off node1, lists every move, and ConnectDisk of Available Storage disks (added before and after) still works', async () => {
      const before = await arrayLun(c, '/vol/admin/before');
      await addAvailable(c, before.serial);
      const e = await create(c, 'vm1', 'E:');
      const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      const moved = sortMoves(res.moves);
      expect(moved.map((m) => [m.group, m.fromNode])).to.deep.equal([
        ['Available Storage', 'node1'],
        ['Cluster Group', 'node1'],
        ['Virtual Machine web1', 'node1'],
      ]);
      for (const m of moved) expect(['node2', 'node3'], `${m.group} moves to a survivor`).to.include(m.toNode);
      expect(moved[0]).to.deep.include({ vmId: '', vmRunning: false });
      expect(moved[1]).to.deep.equal({ group: 'Cluster Group', fromNode: 'node1', toNode: moved[1]!.toNode, vmId: '', vmRunning: false, serials: [] });
      expect(moved[2]).to.deep.include({ vmId: 'vm1', vmRunning: true, serials: [e.result!.serial] });
      const owners = Object.fromEntries((await groups(c)).map((g) => [g.name, g.ownerNode]));
      expect(owners).to.deep.include({
        'Available Storage': moved[0]!.toNode,
        'Cluster Group': moved[1]!.toNode,
        'Virtual Machine web1': moved[2]!.toNode,
        'Virtual Machine db1': 'node2',
        'Virtual Machine build1': 'node2',
        'Virtual Machine scratch1': 'node3',
      });
      expect((await c.admin.getCluster({})).availableStorageOwner).to.equal(moved[0]!.toNode);
      const as = await group(c, 'Available Storage');
      expect(as.resources.map((r) => [r.serial, ResourceState[r.state]])).to.deep.equal([[before.serial, 'RESOURCE_STATE_OFFLINE']]);
      expect(await c.violations()).to.deep.equal([]);

      // A LUN added after the failover, and the one added before, both connect.
      const later = await arrayLun(c, '/vol/admin/after');
      await addAvailable(c, later.serial);
      const c1 = await connect(c, 'vm1', 'G:', before.serial);
      const c2 = await connect(c, 'vm2', '/mnt/later', later.serial);
      for (const [vmId, op, node] of [['vm1', c1, moved[2]!.toNode], ['vm2', c2, 'node2']] as const) {
        const data = pattern(4096, op.result!.serial.length + vmId.length);
        await write(c, vmId, addressOf(op), 0, data);
        expectBytes(await read(c, vmId, addressOf(op), 0, 4096), data, `${vmId} on a connected disk`);
        expect((await reservation(c, op.result!.serial)).holder).to.equal(INITIATOR[node]);
      }
      expect((await group(c, 'Available Storage')).resources).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('FailNode replays its first answer for the same request id and refuses the id for another node; FailNode of a node already down changes nothing', async () => {
      await create(c, 'vm1', 'E:');
      const req = { requestId: 'fail-node1', node: 'node1' };
      const first = await c.admin.failNode(req);
      const state = await snapshot(c);
      expect(await c.admin.failNode(req), 'the replay').to.deep.equal(first);
      expect(await snapshot(c)).to.equal(state);
      await expectStatus(c.admin.failNode({ requestId: 'fail-node1', node: 'node2' }), Code.INVALID_ARGUMENT, ['request_id', 'REQUEST_ID_REUSED']);
      expect(await snapshot(c)).to.equal(state);
      const again = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect(NodeState[again.node!.state]).to.equal('NODE_STATE_DOWN');
      expect(again.moves, 'nothing moves again').to.deep.equal([]);
      expect(again.settledOperations).to.deep.equal([]);
      expect(await snapshot(c)).to.equal(state);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('FailNode is FAILED_PRECONDITION when no other node is up (or none has its hypervisor enabled), NOT_FOUND for an unknown node, INVALID_ARGUMENT without one; each changes nothing', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 5);
      let state = await snapshot(c);
      await expectStatus(c.admin.failNode({ requestId: rid('fail'), node: 'node9' }), Code.NOT_FOUND);
      await expectStatus(c.admin.failNode({ requestId: rid('fail'), node: '' }), Code.INVALID_ARGUMENT, 'node');
      expect(await snapshot(c)).to.equal(state);

      // node2 and node3 are up but cannot run VMs.
      for (const n of ['node2', 'node3']) await c.admin.setHostCapabilities({ requestId: rid('caps'), node: n, hypervisorEnabled: false });
      state = await snapshot(c);
      await expectStatus(c.admin.failNode({ requestId: rid('fail'), node: 'node1' }), Code.FAILED_PRECONDITION);
      expect(await snapshot(c)).to.equal(state);
      for (const n of ['node2', 'node3']) await c.admin.setHostCapabilities({ requestId: rid('caps'), node: n, hypervisorEnabled: true });

      // node3 then node2 fail; node1 is the last one up.
      await c.admin.failNode({ requestId: rid('fail'), node: 'node3' });
      const f2 = await c.admin.failNode({ requestId: rid('fail'), node: 'node2' });
      expect(f2.moves.find((m) => m.vmId === 'vm2')).to.deep.include({ fromNode: 'node2', toNode: 'node1', vmRunning: true });
      state = await snapshot(c);
      const refused = await expectStatus(c.admin.failNode({ requestId: 'fail-last', node: 'node1' }), Code.FAILED_PRECONDITION);
      expect(refused.details).to.match(/node1/);
      expect(await snapshot(c)).to.equal(state);
      expect(await nodeStates(c)).to.deep.equal({ node1: 'NODE_STATE_UP', node2: 'NODE_STATE_DOWN', node3: 'NODE_STATE_DOWN' });
      await expectWritten(c, w, 'vm1 on the last node up');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a WriteDisk retried with the same request_id after its VM failed over is answered from the first write and overwrites nothing', async () => {
      const e = await create(c, 'vm1', 'E:');
      const a = addressOf(e);
      const first = pattern(4096, 1);
      const second = pattern(4096, 2);
      expect(await write(c, 'vm1', a, 0, first, 'in-flight-write')).to.equal(4096);
      await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect(await write(c, 'vm1', a, 0, second, 'after-failover')).to.equal(4096);
      // The guest never heard back from the first write (its node died) and sends it again.
      expect(await write(c, 'vm1', a, 0, first, 'in-flight-write'), 'the retry is answered from the first write').to.equal(4096);
      expectBytes(await read(c, 'vm1', a, 0, 4096), second, 'the retry did not overwrite the later write');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('while node1\'s failover is fencing (held at the array) vm1\'s I/O is refused UNAVAILABLE (VM_FAILING_OVER) and changes nothing; once it runs on the survivor it reads and writes', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 84);
      await hold(c, 'PreemptReservation', 1500);
      const failing = c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      await faultsUsedUp(c);
      await expectStatus(write(c, 'vm1', addressOf(e), 0, pattern(4096, 1), rid('w')), Code.UNAVAILABLE, 'VM_FAILING_OVER');
      await expectStatus(read(c, 'vm1', addressOf(e), 0, 4096), Code.UNAVAILABLE, 'VM_FAILING_OVER');
      const res = await failing;
      const to = res.moves.find((m) => m.vmId === 'vm1')!.toNode;
      expectBytes(await arrayRead(c, e.result!.serial, to, 0, 4096), w.chunks[0]!.data, 'the LUN after the refused write');
      await expectWritten(c, w, 'after the failover');
      await write(c, 'vm1', addressOf(e), 0, pattern(4096, 2));
      expectBytes(await arrayRead(c, e.result!.serial, to, 0, 4096), pattern(4096, 2), 'a write once moved');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('an HA VM that was stopped when its node failed moves stopped: its group and disks go to the new node (Online, reserved there), it stays off, and StartVm gives it its data', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 45);
      await c.admin.stopVm({ requestId: rid('stop'), vmId: 'vm1' });
      const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      const m = res.moves.find((x) => x.vmId === 'vm1')!;
      expect(m).to.deep.include({ fromNode: 'node1', vmRunning: false, serials: [e.result!.serial] });
      const vm = (await c.guest('vm1').getSelf({})).vm!;
      expect([vm.node, VmState[vm.state]]).to.deep.equal([m.toNode, 'VM_STATE_OFF']);
      expect((await reservation(c, e.result!.serial)).holder).to.equal(INITIATOR[m.toNode]);
      expect(await c.violations()).to.deep.equal([]);
      await c.admin.startVm({ requestId: rid('start'), vmId: 'vm1' });
      await expectWritten(c, w, 'vm1 started on its new node');
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  // ============================================================ non-HA
  describe('non-HA VMs go down with their node and come back with it', () => {
    it('FailNode(node2) takes vm3 (non-HA, dedicated disk) down with node2 while vm2 (HA) moves; RecoverNode(node2) starts vm3 again with its disk Online and its data; invariants hold throughout', async () => {
      const d = await create(c, 'vm3', 'D:', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      const s = await create(c, 'vm3', 'S:');
      const v2 = await create(c, 'vm2', '/data');
      const w3 = [await writeSome(c, 'vm3', d, 10), await writeSome(c, 'vm3', s, 20)];
      const w2 = await writeSome(c, 'vm2', v2, 30);
      const bus3 = (await c.guest('vm3').rescanBus({})).devices;

      const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node2' });
      const moves = sortMoves(res.moves);
      const m2 = moves.find((m) => m.vmId === 'vm2')!;
      expect(['node1', 'node3']).to.include(m2.toNode);
      expect(moves).to.deep.equal(
        sortMoves([
          { group: 'Virtual Machine build1', fromNode: 'node2', toNode: 'node2', vmId: 'vm3', vmRunning: false, serials: [] },
          { group: 'Virtual Machine db1', fromNode: 'node2', toNode: m2.toNode, vmId: 'vm2', vmRunning: true, serials: [v2.result!.serial] },
        ]),
      );
      let vm3 = (await c.guest('vm3').getSelf({})).vm!;
      expect([vm3.node, VmState[vm3.state]]).to.deep.equal(['node2', 'VM_STATE_OFF']);
      let g3 = await group(c, 'Virtual Machine build1');
      expect(g3.ownerNode).to.equal('node2');
      expect(g3.resources.map((r) => ResourceState[r.state])).to.deep.equal(['RESOURCE_STATE_OFFLINE', 'RESOURCE_STATE_OFFLINE']);
      // Its disks stay attached (they come back with the node), but it gets no I/O while off.
      expect((await c.admin.listDisks({ vmId: 'vm3' })).disks.map((x) => [x.mountPath, ResourceState[x.resourceState]])).to.deep.equal([
        ['D:', 'RESOURCE_STATE_OFFLINE'],
        ['S:', 'RESOURCE_STATE_OFFLINE'],
      ]);
      await expectStatus(read(c, 'vm3', addressOf(d), 0, 512), Code.FAILED_PRECONDITION);
      await expectStatus(write(c, 'vm3', addressOf(d), 0, pattern(512, 1)), Code.FAILED_PRECONDITION);
      await expectStatus(c.admin.startVm({ requestId: rid('start'), vmId: 'vm3' }), Code.FAILED_PRECONDITION, 'NODE_DOWN');
      const down = await snapshot(c);
      await expectStatus(c.guest('vm3').createDisk(createReq('E:')), Code.FAILED_PRECONDITION);
      await expectStatus(c.guest('vm3').removeDisk({ requestId: rid('remove'), mountPath: 'D:', deleteLun: true }), Code.FAILED_PRECONDITION);
      await expectStatus(c.guest('vm3').rescanBus({}), Code.FAILED_PRECONDITION);
      expect(await snapshot(c), 'refused calls on a VM down with its node change nothing').to.equal(down);
      // vm2 runs on its new node with its data.
      const vm2 = (await c.guest('vm2').getSelf({})).vm!;
      expect([vm2.node, VmState[vm2.state]]).to.deep.equal([m2.toNode, 'VM_STATE_RUNNING']);
      await expectWritten(c, w2, 'vm2 after node2 failed');
      expect((await reservation(c, v2.result!.serial)).holder).to.equal(INITIATOR[m2.toNode]);
      expect(await c.violations(), 'after FailNode').to.deep.equal([]);

      const rec = await c.admin.recoverNode({ requestId: rid('recover'), node: 'node2' });
      expect(NodeState[rec.node!.state]).to.equal('NODE_STATE_UP');
      expect(rec.startedVms).to.deep.equal(['vm3']);
      expect((await nodeStates(c)).node2).to.equal('NODE_STATE_UP');
      vm3 = (await c.guest('vm3').getSelf({})).vm!;
      expect([vm3.node, VmState[vm3.state]]).to.deep.equal(['node2', 'VM_STATE_RUNNING']);
      g3 = await group(c, 'Virtual Machine build1');
      expect(g3.ownerNode).to.equal('node2');
      expect(g3.resources.map((r) => ResourceState[r.state])).to.deep.equal(['RESOURCE_STATE_ONLINE', 'RESOURCE_STATE_ONLINE']);
      expect((await c.guest('vm3').rescanBus({})).devices).to.deep.equal(bus3);
      for (const op of [d, s]) expect((await reservation(c, op.result!.serial)).holder).to.equal(INITIATOR.node2);
      for (const w of w3) await expectWritten(c, w, 'vm3 after RecoverNode');
      await write(c, 'vm3', addressOf(d), 0, pattern(512, 77));
      expectBytes(await arrayRead(c, d.result!.serial, 'node2', 0, 512), pattern(512, 77), 'vm3 writes after RecoverNode');
      // vm2 stays where it went.
      expect((await c.guest('vm2').getSelf({})).vm!.node).to.equal(m2.toNode);
      expect(await c.violations(), 'after RecoverNode').to.deep.equal([]);
    });

    it('RecoverNode of a node that is up starts nothing and changes nothing; of an unknown node is NOT_FOUND, of none INVALID_ARGUMENT', async () => {
      const d = await create(c, 'vm4', '/scratch', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      await writeSome(c, 'vm4', d, 40);
      const state = await snapshot(c);
      const up = await c.admin.recoverNode({ requestId: rid('recover'), node: 'node3' });
      expect(NodeState[up.node!.state]).to.equal('NODE_STATE_UP');
      expect(up.startedVms).to.deep.equal([]);
      expect(await snapshot(c)).to.equal(state);
      await expectStatus(c.admin.recoverNode({ requestId: rid('recover'), node: 'node9' }), Code.NOT_FOUND);
      await expectStatus(c.admin.recoverNode({ requestId: rid('recover'), node: '' }), Code.INVALID_ARGUMENT, 'node');
      expect(await snapshot(c)).to.equal(state);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a non-HA VM stopped before its node failed stays off after RecoverNode, but its disks are Online again as before the failure, and it gets I/O once started', async () => {
      const d = await create(c, 'vm4', '/scratch', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      const w = await writeSome(c, 'vm4', d, 40);
      await c.admin.stopVm({ requestId: rid('stop'), vmId: 'vm4' });
      const stopped = (await c.admin.listDisks({ vmId: 'vm4' })).disks.map((x) => ResourceState[x.resourceState]);
      expect(stopped, 'StopVm leaves the disk resources Online').to.deep.equal(['RESOURCE_STATE_ONLINE']);
      expect(await c.violations()).to.deep.equal([]);
      await c.admin.failNode({ requestId: rid('fail'), node: 'node3' });
      expect(await c.violations(), 'after FailNode').to.deep.equal([]);
      const rec = await c.admin.recoverNode({ requestId: rid('recover'), node: 'node3' });
      expect(rec.startedVms, 'it was off before: RecoverNode does not start it').to.deep.equal([]);
      expect(VmState[(await c.guest('vm4').getSelf({})).vm!.state]).to.equal('VM_STATE_OFF');
      expect((await c.admin.listDisks({ vmId: 'vm4' })).disks.map((x) => ResourceState[x.resourceState]), 'its disks as before the failure').to.deep.equal(stopped);
      expect(await c.violations(), 'after RecoverNode').to.deep.equal([]);
      await c.admin.startVm({ requestId: rid('start'), vmId: 'vm4' });
      await expectWritten(c, w, 'vm4 started by hand after RecoverNode');
      await write(c, 'vm4', addressOf(d), 0, pattern(512, 4));
      expectBytes(await read(c, 'vm4', addressOf(d), 0, 512), pattern(512, 4), 'a write once started');
      expect(await c.violations()).to.deep.equal([]);
    });

  });

  // ============================================================ FailNode during an operation
  describe('FailNode in the middle of an operation', () => {
    for (const held of ['CreateLun', 'MapLun', 'Reserve']) {
      it(`a CreateDisk on vm1 held at ${held} when node1 fails ends SUCCEEDED (the disk moved with the VM) or FAILED (fully gone), never half; FailNode's settledOperations names it`, async () => {
        await create(c, 'vm1', 'E:');
        await hold(c, held);
        const { operation } = await c.guest('vm1').createDisk(createReq('F:'));
        const id = operation!.id;
        const step = { CreateLun: 'lun.create', MapLun: 'lun.map', Reserve: 'resource.online' }[held]!;
        await until(c, id, stepRunning(step), `${step} running`);
        const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
        expect(res.settledOperations).to.deep.equal([id]);
        // Settled first: by the time FailNode answers, the operation has ended.
        const op = (await c.admin.getOperation({ operationId: id })).operation!;
        expect(['OPERATION_STATE_SUCCEEDED', 'OPERATION_STATE_FAILED'], json(op)).to.include(OperationState[op.state]);
        const to = res.moves.find((m) => m.vmId === 'vm1')!.toNode;
        const lunsOfOp = (await allLuns(c)).filter((l) => l.path.endsWith(id.replace(/-/g, '_')));
        const disks = (await c.guest('vm1').listDisks({})).disks;
        if (op.state === OperationState.OPERATION_STATE_SUCCEEDED) {
          expect(op.committed).to.equal(true);
          expect(held, 'only a create past its commit point rolls forward').to.equal('Reserve');
          const serial = op.result!.serial;
          expect(disks.map((x) => x.mountPath)).to.deep.equal(['E:', 'F:']);
          expect(res.moves.find((m) => m.vmId === 'vm1')!.serials).to.include(serial);
          expect(lunsOfOp.map((l) => l.serial)).to.deep.equal([serial]);
          expect((await allMaps(c)).filter((m) => m.serial === serial).map((m) => m.igroup)).to.deep.equal(NODES);
          const r = await reservation(c, serial);
          expect(r.holder).to.equal(INITIATOR[to]);
          expect(r.registrations.map((x) => x.initiator)).to.not.include(INITIATOR.node1);
          const data = pattern(4096, 9);
          await write(c, 'vm1', addressOf(op), 0, data);
          expectBytes(await arrayRead(c, serial, to, 0, 4096), data, 'the rolled-forward disk on the new node');
        } else {
          expect(op.committed).to.equal(false);
          expect(op.error, 'a failed operation says why').to.not.equal(undefined);
          expect(disks.map((x) => x.mountPath)).to.deep.equal(['E:']);
          expect(lunsOfOp, 'no LUN of the rolled-back operation').to.deep.equal([]);
          const serials = new Set((await allLuns(c)).map((l) => l.serial));
          expect((await allMaps(c)).filter((m) => !serials.has(m.serial))).to.deep.equal([]);
          expect((await allMaps(c)).length, 'only E:\'s maps').to.equal(NODES.length);
          expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
          // The mount is free for a new request on the new node.
          const again = await create(c, 'vm1', 'F:');
          expect((await reservation(c, again.result!.serial)).holder).to.equal(INITIATOR[to]);
        }
        expect(await c.violations()).to.deep.equal([]);
      });
    }

    it('an operation on a VM of another node is not settled by FailNode(node1) and ends SUCCEEDED', async () => {
      await hold(c, 'MapLun');
      const { operation } = await c.guest('vm2').createDisk(createReq('/data'));
      await until(c, operation!.id, stepRunning('lun.map'), 'lun.map running');
      const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect(res.settledOperations).to.deep.equal([]);
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect((await reservation(c, op.result!.serial)).holder).to.equal(INITIATOR.node2);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a RemoveDisk on vm1 held past its commit point (the release of resource.online) when node1 fails rolls forward: SUCCEEDED, the disk gone from the VM and the array, the VM moved with its other disk', async () => {
      const e = await create(c, 'vm1', 'E:');
      const f = await create(c, 'vm1', 'F:');
      const wf = await writeSome(c, 'vm1', f, 66);
      await hold(c, 'RegisterReservationKey');
      const { operation } = await c.guest('vm1').removeDisk({ requestId: rid('remove'), mountPath: 'E:', deleteLun: true });
      const id = operation!.id;
      await until(c, id, stepRunning('resource.online'), 'resource.online running');
      const res = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect(res.settledOperations).to.deep.equal([id]);
      const op = (await c.admin.getOperation({ operationId: id })).operation!;
      expectSucceeded(op);
      const m = res.moves.find((x) => x.vmId === 'vm1')!;
      expect(m.serials).to.deep.equal([f.result!.serial]);
      expect((await c.guest('vm1').listDisks({})).disks.map((d) => d.mountPath)).to.deep.equal(['F:']);
      expect((await allLuns(c)).map((l) => l.serial)).to.deep.equal([f.result!.serial]);
      expect((await allMaps(c)).filter((x) => x.serial === e.result!.serial)).to.deep.equal([]);
      await expectWritten(c, wf, 'the remaining disk after the failover');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a second node failing while the first node\'s failover is fencing (held at the array) leaves no group on a down node: vm1 ends on the one node still up', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 81);
      await hold(c, 'PreemptReservation', 1500);
      const first = c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      await faultsUsedUp(c);
      // vm1's move is on its way to a survivor, its fencing held; that survivor fails too.
      const web1 = await group(c, 'Virtual Machine web1');
      expect(web1.ownerNode, 'still node1 while its move is fenced').to.equal('node1');
      const heading = await movingTarget(c);
      const other = heading === 'node3' ? 'node2' : 'node3';
      const second = await c.admin.failNode({ requestId: rid('fail'), node: heading });
      expect(NodeState[second.node!.state]).to.equal('NODE_STATE_DOWN');
      const res = await first;
      expect(res.moves.find((x) => x.vmId === 'vm1')).to.not.equal(undefined);
      const up = Object.entries(await nodeStates(c)).filter(([, st]) => st === 'NODE_STATE_UP').map(([n]) => n);
      expect(up).to.deep.equal([other]);
      const owners = Object.fromEntries((await groups(c)).map((g) => [g.name, g.ownerNode]));
      expect(owners['Virtual Machine web1'], `vm1's group (moving to ${heading} when it failed)`).to.equal(other);
      expect(owners['Available Storage']).to.equal(other);
      expect(owners['Cluster Group']).to.equal(other);
      const vm = (await c.guest('vm1').getSelf({})).vm!;
      expect([vm.node, VmState[vm.state]]).to.deep.equal([other, 'VM_STATE_RUNNING']);
      expect((await reservation(c, e.result!.serial)).holder).to.equal(INITIATOR[other]);
      await expectWritten(c, w, 'vm1 after two failures');
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  // ============================================================ MoveGroup
  describe('AdminService.MoveGroup', () => {
    it('MoveGroup("Virtual Machine web1", node3) is a planned failover with the same fencing: node3 holds every reservation, node1\'s key is gone and its writes refused, the VM keeps running with its data', async () => {
      const e = await create(c, 'vm1', 'E:');
      const f = await create(c, 'vm1', 'F:');
      const written = [await writeSome(c, 'vm1', e, 500), await writeSome(c, 'vm1', f, 600)];
      const bus = (await c.guest('vm1').rescanBus({})).devices;
      const res = await c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node3' });
      expect(sortMoves([res.move!])[0]).to.deep.equal({
        group: 'Virtual Machine web1',
        fromNode: 'node1',
        toNode: 'node3',
        vmId: 'vm1',
        vmRunning: true,
        serials: [e.result!.serial, f.result!.serial].sort(),
      });
      const vm = (await c.guest('vm1').getSelf({})).vm!;
      expect([vm.node, VmState[vm.state]]).to.deep.equal(['node3', 'VM_STATE_RUNNING']);
      expect((await c.guest('vm1').rescanBus({})).devices).to.deep.equal(bus);
      expect((await group(c, 'Virtual Machine web1')).ownerNode).to.equal('node3');
      expect(await nodeStates(c), 'a planned move fails no node').to.deep.equal({ node1: 'NODE_STATE_UP', node2: 'NODE_STATE_UP', node3: 'NODE_STATE_UP' });
      for (const op of [e, f]) {
        const r = await reservation(c, op.result!.serial);
        expect(r.holder).to.equal(INITIATOR.node3);
        expect(r.registrations.map((x) => x.initiator)).to.deep.equal([INITIATOR.node3]);
        await expectStatus(
          c.storage.writeBlocks({ requestId: rid('direct'), lun: op.result!.serial, initiator: INITIATOR.node1!, offsetBytes: 0n, data: pattern(512, 1) }),
          Code.FAILED_PRECONDITION,
          'RESERVATION_CONFLICT',
        );
      }
      for (const w of written) await expectWritten(c, w, 'after MoveGroup');
      const data = pattern(8192, 700);
      await write(c, 'vm1', addressOf(e), 0, data);
      expectBytes(await arrayRead(c, e.result!.serial, 'node3', 0, 8192), data, 'a write after the move, on the array as node3');
      expect(await c.violations()).to.deep.equal([]);

      // And back: node1 takes the reservations again, node3's key goes.
      const back = await c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node1' });
      expect(back.move).to.deep.include({ fromNode: 'node3', toNode: 'node1', vmRunning: true });
      for (const op of [e, f]) {
        const r = await reservation(c, op.result!.serial);
        expect(r.holder).to.equal(INITIATOR.node1);
        expect(r.registrations.map((x) => x.initiator)).to.deep.equal([INITIATOR.node1]);
      }
      expectBytes(await read(c, 'vm1', addressOf(e), 0, 8192), data, 'after moving back');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('MoveGroup replays its first answer for the same request id; moving a group to the node that owns it changes nothing', async () => {
      await create(c, 'vm1', 'E:');
      const req = { requestId: 'move-web1', group: 'Virtual Machine web1', node: 'node2' };
      const first = await c.admin.moveGroup(req);
      const state = await snapshot(c);
      expect(await c.admin.moveGroup(req)).to.deep.equal(first);
      expect(await snapshot(c)).to.equal(state);
      await expectStatus(c.admin.moveGroup({ ...req, node: 'node3' }), Code.INVALID_ARGUMENT, ['request_id', 'REQUEST_ID_REUSED']);
      const same = await c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node2' });
      expect(same.move).to.deep.include({ fromNode: 'node2', toNode: 'node2', vmRunning: true });
      expect(await snapshot(c)).to.equal(state);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('MoveGroup refuses a non-HA VM\'s group, a temporary group and a down node with FAILED_PRECONDITION, an unknown group or node with NOT_FOUND, a missing one with INVALID_ARGUMENT; each changes nothing', async () => {
      await create(c, 'vm1', 'E:');
      await create(c, 'vm3', 'D:', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      let state = await snapshot(c);
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine build1', node: 'node1' }), Code.FAILED_PRECONDITION, 'VM_NOT_HA');
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine scratch1', node: 'node1' }), Code.FAILED_PRECONDITION, 'VM_NOT_HA');
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine nobody', node: 'node2' }), Code.NOT_FOUND);
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node9' }), Code.NOT_FOUND);
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: '', node: 'node2' }), Code.INVALID_ARGUMENT, 'group');
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: '' }), Code.INVALID_ARGUMENT, 'node');
      expect(await snapshot(c)).to.equal(state);

      await c.admin.failNode({ requestId: rid('fail'), node: 'node3' });
      state = await snapshot(c);
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node3' }), Code.FAILED_PRECONDITION, 'NODE_DOWN');
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Available Storage', node: 'node3' }), Code.FAILED_PRECONDITION, 'NODE_DOWN');
      expect(await snapshot(c)).to.equal(state);
      expect(await c.violations()).to.deep.equal([]);

      // A temporary group belongs to its operation.
      await hold(c, 'Reserve', 1500);
      const { operation } = await c.guest('vm1').createDisk(createReq('F:'));
      await until(c, operation!.id, stepRunning('resource.online'), 'resource.online running');
      const temp = await groups(c, GroupKind.GROUP_KIND_TEMPORARY);
      expect(temp.map((g) => g.vmId)).to.deep.equal(['vm1']);
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: temp[0]!.name, node: 'node2' }), Code.FAILED_PRECONDITION, 'TEMPORARY_GROUP');
      expect((await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).map((g) => g.ownerNode)).to.deep.equal(['node1']);
      expectSucceeded(await c.settle(operation!.id));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('moving Available Storage and the Cluster Group works and ConnectDisk still works afterwards', async () => {
      const lun = await arrayLun(c, '/vol/admin/shelf');
      await addAvailable(c, lun.serial);
      const as = await c.admin.moveGroup({ requestId: rid('move'), group: 'Available Storage', node: 'node2' });
      expect(as.move).to.deep.equal({ group: 'Available Storage', fromNode: 'node1', toNode: 'node2', vmId: '', vmRunning: false, serials: [] }); // an Available Storage disk is reserved by nobody: nothing to take over
      const cg = await c.admin.moveGroup({ requestId: rid('move'), group: 'Cluster Group', node: 'node3' });
      expect(cg.move).to.deep.include({ group: 'Cluster Group', fromNode: 'node1', toNode: 'node3' });
      expect((await c.admin.getCluster({})).availableStorageOwner).to.equal('node2');
      expect((await group(c, 'Cluster Group')).ownerNode).to.equal('node3');
      expect(await c.violations()).to.deep.equal([]);
      const op = await connect(c, 'vm1', 'E:', lun.serial);
      expect((await reservation(c, lun.serial)).holder).to.equal(INITIATOR.node1);
      const data = pattern(4096, 12);
      await write(c, 'vm1', addressOf(op), 0, data);
      expectBytes(await read(c, 'vm1', addressOf(op), 0, 4096), data, 'the connected disk');
      const later = await arrayLun(c, '/vol/admin/shelf2');
      await addAvailable(c, later.serial);
      await connect(c, 'vm2', '/mnt/shelf2', later.serial);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('while an operation is in flight on the VM, MoveGroup of its group is ABORTED and changes nothing; once it ended the move goes through', async () => {
      await create(c, 'vm1', 'E:');
      await hold(c, 'MapLun');
      const { operation } = await c.guest('vm1').createDisk(createReq('F:'));
      await until(c, operation!.id, stepRunning('lun.map'), 'lun.map running');
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node2' }), Code.ABORTED, 'OPERATION_IN_FLIGHT');
      expect((await group(c, 'Virtual Machine web1')).ownerNode).to.equal('node1');
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect((await reservation(c, op.result!.serial)).holder, 'the new disk reserved where the VM ran').to.equal(INITIATOR.node1);
      const moved = await c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node2' });
      expect(moved.move!.serials).to.have.length(2);
      expect((await reservation(c, op.result!.serial)).holder).to.equal(INITIATOR.node2);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('while a group is moving (its fencing held at the array), a new CreateDisk on the VM is ABORTED; the move then completes', async () => {
      const e = await create(c, 'vm1', 'E:');
      await hold(c, 'PreemptReservation', 1500);
      const moving = c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node2' });
      await faultsUsedUp(c);
      await expectStatus(c.guest('vm1').createDisk(createReq('F:')), Code.ABORTED, 'VM_MOVING');
      const res = await moving;
      expect(res.move).to.deep.include({ fromNode: 'node1', toNode: 'node2', vmRunning: true, serials: [e.result!.serial] });
      expect((await c.guest('vm1').listDisks({})).disks.map((d) => d.mountPath)).to.deep.equal(['E:']);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('MoveGroup to a node whose hypervisor is disabled is FAILED_PRECONDITION for a VM\'s group and changes nothing', async () => {
      await create(c, 'vm1', 'E:');
      await c.admin.setHostCapabilities({ requestId: rid('caps'), node: 'node2', hypervisorEnabled: false });
      const state = await snapshot(c);
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node2' }), Code.FAILED_PRECONDITION, 'HYPERVISOR_DISABLED');
      expect(await snapshot(c)).to.equal(state);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a move of Available Storage takes over no reservation (its disks are reserved by nobody), so its GroupMove lists no serials', async () => {
      const lun = await arrayLun(c, '/vol/admin/shelf');
      await addAvailable(c, lun.serial);
      const res = await c.admin.moveGroup({ requestId: rid('move'), group: 'Available Storage', node: 'node2' });
      expect((await reservation(c, lun.serial)).holder, 'nobody holds an Available Storage disk').to.equal(undefined);
      expect((await reservation(c, lun.serial)).registrations).to.deep.equal([]);
      expect(res.move!.serials, 'GroupMove.serials: "the disks whose reservations the new owner took over"').to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('I/O during a planned move is refused UNAVAILABLE (VM_MOVING, retry) and never lands through the fenced node; after the move it goes through node3', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 91);
      // takeOver: RegisterReservationKey, PreemptReservation (node1 fenced), then Reserve: hold the last.
      await hold(c, 'Reserve', 1500);
      const moving = c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node3' });
      await faultsUsedUp(c);
      const r = await reservation(c, e.result!.serial);
      expect(r.registrations.map((x) => x.initiator), 'node1 preempted').to.deep.equal([INITIATOR.node3]);
      await expectStatus(write(c, 'vm1', addressOf(e), 0, pattern(4096, 1), rid('w')), Code.UNAVAILABLE, 'VM_MOVING');
      await expectStatus(read(c, 'vm1', addressOf(e), 0, 4096), Code.UNAVAILABLE, 'VM_MOVING');
      expectBytes(await arrayRead(c, e.result!.serial, 'node3', 0, 4096), w.chunks[0]!.data, 'the LUN after the refused write');
      await moving;
      await expectWritten(c, w, 'after the move');
      await write(c, 'vm1', addressOf(e), 0, pattern(4096, 2));
      expectBytes(await arrayRead(c, e.result!.serial, 'node3', 0, 4096), pattern(4096, 2), 'a write after the move');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a node failing while a group is being moved to it by hand leaves no group on a down node: vm1 ends on a node that is up', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 82);
      await hold(c, 'PreemptReservation', 1500);
      const moving = c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node3' });
      await faultsUsedUp(c);
      await c.admin.failNode({ requestId: rid('fail'), node: 'node3' });
      const moved = await moving.then(
        (r) => r,
        (err: ServiceError) => err,
      );
      const vm = (await c.guest('vm1').getSelf({})).vm!;
      const states = await nodeStates(c);
      expect(states[vm.node], `vm1 runs on ${vm.node} (MoveGroup answered ${json(moved)})`).to.equal('NODE_STATE_UP');
      expect(VmState[vm.state]).to.equal('VM_STATE_RUNNING');
      expect((await group(c, 'Virtual Machine web1')).ownerNode).to.equal(vm.node);
      expect((await reservation(c, e.result!.serial)).holder).to.equal(INITIATOR[vm.node]);
      await expectWritten(c, w, 'vm1 after its destination failed');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the source node failing during a planned move finishes the move: vm1 on the destination, node1 fenced, invariants hold', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 83);
      await hold(c, 'PreemptReservation', 1500);
      const moving = c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node2' });
      await faultsUsedUp(c);
      const failed = await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect(failed.moves.find((x) => x.vmId === 'vm1')).to.deep.include({ fromNode: 'node1', toNode: 'node2', vmRunning: true });
      expect((await moving).move).to.deep.include({ fromNode: 'node1', toNode: 'node2' });
      const vm = (await c.guest('vm1').getSelf({})).vm!;
      expect([vm.node, VmState[vm.state]]).to.deep.equal(['node2', 'VM_STATE_RUNNING']);
      const r = await reservation(c, e.result!.serial);
      expect(r.holder).to.equal(INITIATOR.node2);
      expect(r.registrations.map((x) => x.initiator)).to.deep.equal([INITIATOR.node2]);
      await expectWritten(c, w, 'vm1 after the move and the failure');
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  // ============================================================ the array down
  describe('the array down during a failover, a move or block I/O', () => {
    /** Waits until CheckInvariants is empty (a move finishing in the background), or fails with the last violations. */
    async function quiet(what: string): Promise<void> {
      const end = Date.now() + 15_000;
      for (;;) {
        // CheckInvariants reads the array too: while it is down that is UNAVAILABLE, and we wait.
        const v = await c.violations().catch((err: ServiceError) => {
          if (err.code !== Code.UNAVAILABLE) throw err;
          return [{ kind: 'ARRAY_DOWN', subject: '', description: err.details }];
        });
        const moving = (await groups(c)).some((g) => g.vmId === 'vm1' && g.ownerNode === 'node1');
        if (v.length === 0 && !moving) return;
        if (Date.now() > end) throw new Error(`${what}: ${json(v)}`);
        await sleep(50);
      }
    }

    it('FailNode while the array cannot be reached is UNAVAILABLE; vm1\'s I/O is refused meanwhile (UNAVAILABLE) and changes nothing; once the array is back the failover finishes by itself: vm1 on a survivor, its disk reserved there, node1 fenced, data intact, no violations', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 1000);
      await c.faults.setUnavailable({ durationMs: 1500 });
      await expectStatus(c.admin.failNode({ requestId: rid('fail'), node: 'node1' }), Code.UNAVAILABLE, 'ARRAY_UNAVAILABLE');
      expect((await nodeStates(c)).node1).to.equal('NODE_STATE_DOWN');
      await expectStatus(write(c, 'vm1', addressOf(e), 0, pattern(512, 1)), Code.UNAVAILABLE);
      await quiet('after the array came back');
      const vm = (await c.guest('vm1').getSelf({})).vm!;
      expect(vm.node).to.not.equal('node1');
      expect(VmState[vm.state]).to.equal('VM_STATE_RUNNING');
      const pr = await reservation(c, e.result!.serial);
      expect(pr.holder).to.equal(INITIATOR[vm.node]);
      expect(pr.registrations.map((r) => r.initiator)).to.not.include(INITIATOR.node1);
      await expectStatus(
        c.storage.writeBlocks({ requestId: '', lun: e.result!.serial, initiator: INITIATOR.node1!, offsetBytes: 0n, data: pattern(512, 2) }),
        Code.FAILED_PRECONDITION,
        'RESERVATION_CONFLICT',
      );
      await expectWritten(c, w, 'vm1 after the delayed failover');
    });

    it('MoveGroup while the array cannot be reached is UNAVAILABLE; new operations on the VM are ABORTED while the move is under way; the move finishes by itself once the array is back, with the same fencing', async () => {
      const e = await create(c, 'vm1', 'E:');
      const w = await writeSome(c, 'vm1', e, 1100);
      await c.faults.setUnavailable({ durationMs: 1500 });
      await expectStatus(c.admin.moveGroup({ requestId: rid('move'), group: 'Virtual Machine web1', node: 'node3' }), Code.UNAVAILABLE, 'ARRAY_UNAVAILABLE');
      await expectStatus(c.guest('vm1').createDisk(createReq('F:')), Code.ABORTED, 'VM_MOVING');
      await quiet('after the array came back');
      expect((await c.guest('vm1').getSelf({})).vm!.node).to.equal('node3');
      const pr = await reservation(c, e.result!.serial);
      expect(pr.holder).to.equal(INITIATOR.node3);
      expect(pr.registrations.map((r) => r.initiator)).to.deep.equal([INITIATOR.node3]);
      await expectWritten(c, w, 'vm1 after the delayed move');
    });

    it('RecoverNode while the array cannot be reached is UNAVAILABLE and the non-HA VM stays off with its disk Offline; RecoverNode again once the array is back starts it with its disk Online and its data, no violations', async () => {
      const d = await create(c, 'vm3', 'D:', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      const w = await writeSome(c, 'vm3', d, 1300);
      await c.admin.failNode({ requestId: rid('fail'), node: 'node2' });
      await c.faults.setUnavailable({ durationMs: 1000 });
      await expectStatus(c.admin.recoverNode({ requestId: rid('recover'), node: 'node2' }), Code.UNAVAILABLE, 'ARRAY_UNAVAILABLE');
      const vm3 = (await c.admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm3')!;
      expect(VmState[vm3.state]).to.equal('VM_STATE_OFF');
      expect((await group(c, vm3.group)).resources.map((r) => ResourceState[r.state])).to.deep.equal(['RESOURCE_STATE_OFFLINE']);
      await sleep(1100);
      expect((await c.admin.recoverNode({ requestId: rid('recover'), node: 'node2' })).startedVms).to.deep.equal(['vm3']);
      expect((await group(c, vm3.group)).resources.map((r) => ResourceState[r.state])).to.deep.equal(['RESOURCE_STATE_ONLINE']);
      await expectWritten(c, w, 'vm3 after RecoverNode');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('ReadDisk and WriteDisk while the array cannot be reached are UNAVAILABLE after the retries, and the bytes on the disk are those written before', async () => {
      const e = await create(c, 'vm2', '/mnt/io');
      const w = await writeSome(c, 'vm2', e, 1200);
      await c.faults.setUnavailable({ durationMs: 1000 });
      await expectStatus(write(c, 'vm2', addressOf(e), 0, pattern(4096, 7), rid('w')), Code.UNAVAILABLE, 'ARRAY_UNAVAILABLE');
      await expectStatus(read(c, 'vm2', addressOf(e), 0, 4096), Code.UNAVAILABLE, 'ARRAY_UNAVAILABLE');
      await sleep(1100);
      await expectWritten(c, w, 'vm2 after the array came back');
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  // ============================================================ restart
  describe('a restart after FailNode', () => {
    it('after FailNode(node1) and FailNode(node2) a restarted host agent shows the same VM nodes, group owners and down nodes, CheckInvariants is empty, and the VMs read their data', async () => {
      const e = await create(c, 'vm1', 'E:');
      const d = await create(c, 'vm3', 'D:', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      const w1 = await writeSome(c, 'vm1', e, 800);
      const w3 = await writeSome(c, 'vm3', d, 900);
      const failReq = { requestId: 'fail-before-restart', node: 'node1' };
      const failed = await c.admin.failNode(failReq);
      await c.admin.failNode({ requestId: rid('fail'), node: 'node2' });
      const look = async (): Promise<unknown> => ({
        vms: (await c.admin.listVms({ node: '' })).vms.map((v) => ({ id: v.id, node: v.node, state: VmState[v.state] })),
        groups: (await groups(c)).map((g) => ({ name: g.name, owner: g.ownerNode, resources: g.resources.map((r) => [r.serial, ResourceState[r.state]]) })),
        nodes: await nodeStates(c),
        availableStorageOwner: (await c.admin.getCluster({})).availableStorageOwner,
      });
      const before = await look();
      expect(await c.violations()).to.deep.equal([]);
      await c.stop();
      await c.restartHost();
      expect(await look()).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
      expect(await c.admin.failNode(failReq), 'the FailNode request id replays after the restart').to.deep.equal(failed);
      await expectWritten(c, w1, 'vm1 after the restart');
      expect((await reservation(c, e.result!.serial)).holder).to.equal(INITIATOR[(await c.guest('vm1').getSelf({})).vm!.node]);
      await expectStatus(read(c, 'vm3', addressOf(d), 0, 512), Code.FAILED_PRECONDITION);
      expect(await c.violations()).to.deep.equal([]);
      // vm3 went down with node2 before the restart and still comes back with it.
      expect((await c.admin.recoverNode({ requestId: rid('recover'), node: 'node2' })).startedVms).to.deep.equal(['vm3']);
      await expectWritten(c, w3, 'vm3 after the restart and RecoverNode');
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  // ============================================================ ListDisks
  describe('AdminService.ListDisks', () => {
    it('lists every VM\'s disks with vm_id, the same records the VMs\' own ListDisks give; filtered by vm_id it lists only that VM\'s; an unknown VM is NOT_FOUND', async () => {
      const ops = {
        vm1: [await create(c, 'vm1', 'E:'), await create(c, 'vm1', 'C:\\mt1')],
        vm2: [await create(c, 'vm2', '/data')],
        vm3: [await create(c, 'vm3', 'D:', { sharing: DiskSharing.DISK_SHARING_DEDICATED })],
        vm4: [] as Operation[],
      };
      const all = (await c.admin.listDisks({ vmId: '' })).disks;
      expect(all.map((d) => [d.vmId, d.mountPath, d.serial])).to.have.deep.members(
        Object.entries(ops).flatMap(([vmId, list]) => list.map((o) => [vmId, o.mountPath, o.result!.serial])),
      );
      expect(all).to.have.length(4);
      const byVm: Disk[] = [];
      for (const vmId of ['vm1', 'vm2', 'vm3', 'vm4'] as const) {
        const one = (await c.admin.listDisks({ vmId })).disks;
        expect(one.map((d) => d.vmId), vmId).to.deep.equal(ops[vmId].map(() => vmId));
        expect(one, `${vmId}: admin and guest ListDisks agree`).to.deep.equal((await c.guest(vmId).listDisks({})).disks);
        for (const d of one) {
          const op = ops[vmId].find((o) => o.result!.serial === d.serial)!;
          expect(d.address).to.deep.equal(op.result!.address);
          expect(ResourceState[d.resourceState]).to.equal('RESOURCE_STATE_ONLINE');
          expect(DiskSharing[d.sharing]).to.equal(vmId === 'vm3' ? 'DISK_SHARING_DEDICATED' : 'DISK_SHARING_SHARED');
        }
        byVm.push(...one);
      }
      expect(all).to.have.deep.members(byVm);
      await expectStatus(c.admin.listDisks({ vmId: 'vm9' }), Code.NOT_FOUND);
      // After a failover the moved VM's disks are listed the same, still with their vm_id.
      await c.admin.failNode({ requestId: rid('fail'), node: 'node1' });
      expect((await c.admin.listDisks({ vmId: 'vm1' })).disks.map((d) => [d.vmId, d.mountPath])).to.deep.equal([
        ['vm1', 'E:'],
        ['vm1', 'C:\\mt1'],
      ]);
      expect(await c.violations()).to.deep.equal([]);
    });
  });
});
