/**
 * HostAgent with the real workflows and steps, over HostState on a MemoryStore, the
 * in-process SimHypervisor and an in-memory fake of the StorageArray seam. After every
 * scenario the agent's own cross-check (checkInvariants, which reads the fake array) must
 * find nothing, and what a failure left is compared with what was there before it.
 */
import { DEFAULT_CLUSTER } from '../support/host-cluster.js';
import { expect } from 'chai';
import { DomainError, FailedPreconditionError, ResourceExhaustedError, UnavailableError } from '../../common/errors.js';
import { silentLogger } from '../../common/logging.js';
import { HostAgent } from '../../host-agent/agent.js';
import type { StorageArray } from '../../host-agent/array.js';
import { parseClusterFile } from '../../host-agent/cluster-file.js';
import { SimHypervisor, type Hypervisor } from '../../host-agent/hypervisor.js';
import type { OperationRecord, StepStateName } from '../../host-agent/model.js';
import { HostState } from '../../host-agent/state.js';
import { MemoryStore } from '../../host-agent/store.js';
import type { StepHook } from '../../host-agent/workflow/engine.js';
import { type ArrayMethod, FakeArray } from '../support/fake-array.js';

const MiB = 1024 * 1024;
const SIZE = 8n * BigInt(MiB);

const CLUSTER = DEFAULT_CLUSTER;
const INITIATOR: Record<string, string> = Object.fromEntries(CLUSTER.nodes.map((n) => [n.name, n.initiator]));

/** A SimHypervisor whose next hotAdd / hotRemove can be made to throw. */
class FaultyHypervisor implements Hypervisor {
  private readonly sim: SimHypervisor;
  readonly faults: { hotAdd: Error[]; hotRemove: Error[] } = { hotAdd: [], hotRemove: [] };
  constructor(state: HostState) {
    this.sim = new SimHypervisor(state);
  }
  capabilities(node: string): ReturnType<Hypervisor['capabilities']> {
    return this.sim.capabilities(node);
  }
  hotAdd(...args: Parameters<Hypervisor['hotAdd']>): void {
    const f = this.faults.hotAdd.shift();
    if (f) throw f;
    this.sim.hotAdd(...args);
  }
  hotRemove(...args: Parameters<Hypervisor['hotRemove']>): void {
    const f = this.faults.hotRemove.shift();
    if (f) throw f;
    this.sim.hotRemove(...args);
  }
}

interface World {
  agent: HostAgent;
  fake: FakeArray;
  store: MemoryStore;
  hypervisor: FaultyHypervisor;
}

async function start(opts: { store?: MemoryStore; fake?: FakeArray; array?: StorageArray; hook?: StepHook; cluster?: object } = {}): Promise<World> {
  const store = opts.store ?? new MemoryStore();
  const fake = opts.fake ?? new FakeArray();
  const state = new HostState(store);
  const hypervisor = new FaultyHypervisor(state);
  const agent = new HostAgent({
    state,
    array: opts.array ?? fake,
    logger: silentLogger(),
    cluster: { name: 'test', volume: 'passthru' },
    backoff: { firstMs: 1, maxMs: 5 },
    hypervisor,
    hook: opts.hook,
  });
  agent.seed(parseClusterFile(JSON.stringify(opts.cluster ?? CLUSTER)));
  await agent.ensureIgroups();
  await agent.recover();
  return { agent, fake, store, hypervisor };
}

/** Resolves with the operation once it has ended (SUCCEEDED or FAILED). */
function settle(agent: HostAgent, id: string): Promise<OperationRecord> {
  const op = agent.state.operations.get(id)!;
  if (op.state === 'succeeded' || op.state === 'failed') return Promise.resolve(op);
  return new Promise((resolve) => {
    const off = agent.watch('admin', id, (ev, o) => {
      if (!ev) {
        off();
        resolve(o);
      }
    });
  });
}

let reqN = 0;
const rid = (): string => `req-${++reqN}`;

async function create(w: World, vmId: string, mountPath: string, sharing?: 'shared' | 'dedicated'): Promise<OperationRecord> {
  const op = await w.agent.createDisk(vmId, { requestId: rid(), mountPath, sizeBytes: SIZE, sharing });
  return settle(w.agent, op.id);
}

async function remove(w: World, vmId: string, mountPath: string, deleteLun: boolean): Promise<OperationRecord> {
  const op = await w.agent.removeDisk(vmId, { requestId: rid(), mountPath, deleteLun });
  return settle(w.agent, op.id);
}

/** An administrator's LUN put into Available Storage; returns its serial. */
async function availableDisk(w: World, name: string): Promise<string> {
  const lun = w.fake.adminCreateLun(`/vol/passthru/${name}`);
  const op = await w.agent.addAvailableDisk({ requestId: rid(), lun: lun.path });
  expect((await settle(w.agent, op.id)).state).to.equal('succeeded');
  return lun.serial;
}

async function connect(w: World, vmId: string, mountPath: string, serial: string): Promise<OperationRecord> {
  const op = await w.agent.connectDisk(vmId, { requestId: rid(), mountPath, lun: serial });
  return settle(w.agent, op.id);
}

async function expectConsistent(w: World): Promise<void> {
  expect(await w.agent.checkInvariants()).to.deep.equal([]);
  expect(w.agent.inFlight, 'no operation still running').to.equal(0);
  expect([...w.agent.engine.locks.keys()], 'no lock still held').to.deep.equal([]);
}

/** Everything a scenario may leave behind, in the models and on the array (operations and requests aside). */
function world(w: World): unknown {
  const s = w.agent.state;
  const reservations = [...w.fake.reservations].map(([uuid, pr]) => ({ uuid, holder: pr.holder, registrations: [...pr.registrations] }));
  // Through JSON, as the SQLite store would keep it: a field set to undefined and one left out are the same.
  return JSON.parse(
    JSON.stringify({
    luns: [...w.fake.luns.values()].map((l) => l.path).sort(),
    maps: w.fake.allMaps(),
    reservations,
    groups: [...s.groups.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    resources: [...s.resources.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    attachments: [...s.attachments.values()],
    hostDisks: [...s.hostDisks.values()].sort((a, b) => (`${a.node}/${a.serial}` < `${b.node}/${b.serial}` ? -1 : 1)),
    vms: [...s.vms.values()],
    }),
  ) as unknown;
}

const stateOf = (op: OperationRecord, step: string): StepStateName | undefined => op.steps.find((s) => s.name === step)?.state;

/** The DomainError a call fails with, whether it throws at once or rejects later. */
async function rejection(call: () => unknown): Promise<DomainError> {
  try {
    await call();
  } catch (err) {
    if (err instanceof DomainError) return err;
    throw err;
  }
  throw new Error('expected a DomainError, the call succeeded');
}

describe('HostAgent over a fake array', () => {
  let w: World;
  beforeEach(async () => {
    w = await start();
  });

  describe('happy paths', () => {
    it('creates a shared disk: a LUN named after the op, mapped to every node at one LUN id, attached, reserved by the VM\'s node, in the VM\'s group', async () => {
      const op = await create(w, 'vm1', 'E:');
      expect(op.state, JSON.stringify(op.error)).to.equal('succeeded');
      expect(op.committed).to.equal(true);
      expect(op.steps.map((s) => `${s.name}:${s.state}`)).to.deep.equal([
        'validate:done',
        'lun.find:skipped',
        'lun.create:done',
        'lun.map:done',
        'peers.map:done',
        'resource.create:done',
        'scsi.attach:done',
        'resource.offline:done',
        'resource.online:done',
        'group.delete:done',
      ]);
      const lun = op.data.lun!;
      const arrayLun = [...w.fake.luns.values()].find((l) => l.serial === lun.serial)!;
      expect(arrayLun.path).to.equal(`/vol/passthru/vm1_E_${op.id.replace(/-/g, '_')}`);
      expect(arrayLun.comment).to.include('cluster=test').and.include('vm=vm1').and.include(`op=${op.id}`);
      expect(arrayLun.sizeBytes).to.equal(Number(SIZE));
      expect(w.fake.allMaps().map((m) => `${m.igroup}@${m.lunId}`)).to.deep.equal([`node1@${op.data.lunId}`, `node2@${op.data.lunId}`, `node3@${op.data.lunId}`]);
      expect(w.fake.reservations.get(lun.uuid)?.holder).to.equal(INITIATOR.node1);
      const r = w.agent.state.resources.get(lun.serial)!;
      expect(r).to.include({ name: 'Disk VM vm1 MP E', group: 'Virtual Machine web1', state: 'online', reservedBy: 'node1', attachedBy: op.id, sharing: 'shared', vmId: 'vm1', mountPath: 'E:' });
      expect(r.mappedNodes).to.deep.equal(['node1', 'node2', 'node3']);
      expect(w.agent.disks('vm1').map((d) => d.address)).to.deep.equal([{ controller: 0, location: 0 }]);
      expect(w.agent.state.hostDisksOfSerial(lun.serial).map((h) => h.node).sort()).to.deep.equal(['node1', 'node2', 'node3']);
      expect(w.agent.vm('vm1').configuredDisks).to.deep.equal([lun.serial]);
      expect(w.agent.state.temporaryGroupsOf('vm1')).to.deep.equal([]);
      await expectConsistent(w);
    });

    it('creates a dedicated disk on a non-HA VM: mapped to its own node only, peers.map skipped', async () => {
      const op = await create(w, 'vm3', 'F:', 'dedicated');
      expect(op.state, JSON.stringify(op.error)).to.equal('succeeded');
      expect(stateOf(op, 'peers.map')).to.equal('skipped');
      expect(w.fake.allMaps().map((m) => m.igroup)).to.deep.equal(['node2']);
      expect(w.agent.state.hostDisksOfSerial(op.data.lun!.serial).map((h) => h.node)).to.deep.equal(['node2']);
      expect(w.fake.reservations.get(op.data.lun!.uuid)?.holder).to.equal(INITIATOR.node2);
      await expectConsistent(w);
    });

    it('refuses a dedicated disk on an HA VM in the call itself, starting nothing', async () => {
      const before = world(w);
      const err = await rejection(() => w.agent.createDisk('vm1', { requestId: rid(), mountPath: 'E:', sizeBytes: SIZE, sharing: 'dedicated' }));
      expect(err.kind).to.equal('failed_precondition');
      expect(err.reason).to.equal('DEDICATED_ON_HA_VM');
      expect(world(w)).to.deep.equal(before);
      expect(w.agent.state.operations.size).to.equal(0);
    });

    it('adds a LUN to Available Storage, connects it to a VM (renamed, moved, reserved, no new map), and removes it again', async () => {
      const serial = await availableDisk(w, 'shared1');
      const r0 = w.agent.state.resources.get(serial)!;
      expect(r0).to.include({ name: 'Cluster Disk 1', group: 'Available Storage', state: 'offline' });
      expect(w.fake.allMaps().map((m) => m.igroup)).to.deep.equal(['node1', 'node2', 'node3']);
      await expectConsistent(w);
      const mapsBefore = w.fake.callsOf('mapLun').length;

      const op = await connect(w, 'vm2', '/mnt/shared', serial);
      expect(op.state, JSON.stringify(op.error)).to.equal('succeeded');
      expect(w.fake.callsOf('mapLun').length, 'an Available Storage disk is mapped already').to.equal(mapsBefore);
      const r = w.agent.state.resources.get(serial)!;
      expect(r).to.include({ name: 'Disk VM vm2 MP mnt shared', group: 'Virtual Machine db1', state: 'online', reservedBy: 'node2', vmId: 'vm2' });
      expect(w.agent.state.resourceByName('Cluster Disk 1'), 'never two resources for one LUN').to.equal(undefined);
      expect(w.fake.reservations.get(r.lun.uuid)?.holder).to.equal(INITIATOR.node2);
      await expectConsistent(w);

      const rm = await remove(w, 'vm2', '/mnt/shared', false);
      expect(rm.state, JSON.stringify(rm.error)).to.equal('succeeded');
      expect(w.fake.luns.size, 'the LUN stays on the array').to.equal(1);
      expect(w.fake.allMaps()).to.deep.equal([]);
      expect(w.agent.state.resources.size).to.equal(0);
      await expectConsistent(w);
    });

    const removals: { name: string; deleteLun: boolean; lunsLeft: number }[] = [
      { name: 'keeps the LUN on the array when not asked to delete it', deleteLun: false, lunsLeft: 1 },
      { name: 'deletes the LUN when asked', deleteLun: true, lunsLeft: 0 },
    ];
    for (const c of removals) {
      it(`removes a created disk: detached, unmapped, reservation released, resource gone; ${c.name}`, async () => {
        const created = await create(w, 'vm2', '/mnt/data');
        expect(created.state).to.equal('succeeded');
        const rm = await remove(w, 'vm2', '/mnt/data', c.deleteLun);
        expect(rm.state, JSON.stringify(rm.error)).to.equal('succeeded');
        expect(stateOf(rm, 'lun.delete')).to.equal(c.deleteLun ? 'done' : 'skipped');
        expect(w.fake.luns.size).to.equal(c.lunsLeft);
        expect(w.fake.allMaps()).to.deep.equal([]);
        expect(w.fake.reservations.size).to.equal(0);
        const s = w.agent.state;
        expect([s.resources.size, s.attachments.size, s.hostDisks.size]).to.deep.equal([0, 0, 0]);
        expect(w.agent.vm('vm2').configuredDisks).to.deep.equal([]);
        expect(s.temporaryGroupsOf('vm2')).to.deep.equal([]);
        await expectConsistent(w);
      });
    }

    it('removing what is not there succeeds at once and changes nothing', async () => {
      const before = world(w);
      const op = await w.agent.removeDisk('vm1', { requestId: rid(), mountPath: 'E:', deleteLun: true });
      expect(op.state).to.equal('succeeded');
      expect(world(w)).to.deep.equal(before);
    });

    it('a request id repeated returns the first operation; the same mount with other parameters is ALREADY_EXISTS', async () => {
      const first = await w.agent.createDisk('vm1', { requestId: 'same', mountPath: 'E:', sizeBytes: SIZE, sharing: undefined });
      const again = await w.agent.createDisk('vm1', { requestId: 'same', mountPath: 'E:', sizeBytes: SIZE, sharing: undefined });
      expect(again.id).to.equal(first.id);
      await settle(w.agent, first.id);
      const retry = await w.agent.createDisk('vm1', { requestId: 'other', mountPath: 'e:', sizeBytes: SIZE, sharing: 'shared' });
      expect(retry.id, 'the same disk again is the first operation').to.equal(first.id);
      const err = await rejection(() => w.agent.createDisk('vm1', { requestId: 'third', mountPath: 'E:', sizeBytes: 2n * SIZE, sharing: undefined }));
      expect(err.kind).to.equal('already_exists');
      expect(w.fake.callsOf('createLun')).to.have.length(1);
      await expectConsistent(w);
    });
  });

  describe('a failure before the commit point rolls back to nothing', () => {
    const cases: { name: string; step: string; fail: (w: World) => void; kind: string }[] = [
      { name: 'CreateLun unavailable', step: 'lun.create', fail: (w) => w.fake.failNext('createLun', new UnavailableError('array down', 'ARRAY_UNAVAILABLE')), kind: 'unavailable' },
      { name: 'CreateLun pool full', step: 'lun.create', fail: (w) => w.fake.failNext('createLun', new ResourceExhaustedError('pool full', 'POOL_FULL')), kind: 'resource_exhausted' },
      { name: 'MapLun unavailable (first node)', step: 'lun.map', fail: (w) => w.fake.failNext('mapLun', new UnavailableError('array down', 'ARRAY_UNAVAILABLE')), kind: 'unavailable' },
      { name: 'hot-add refused by the hypervisor', step: 'scsi.attach', fail: (w) => w.hypervisor.faults.hotAdd.push(new FailedPreconditionError('hot add failed', 'HOT_ADD_FAILED')), kind: 'failed_precondition' },
      { name: 'Reserve refused', step: 'resource.online', fail: (w) => w.fake.failNext('reserve', new FailedPreconditionError('reservation conflict', 'RESERVATION_CONFLICT')), kind: 'failed_precondition' },
      { name: 'Reserve unavailable', step: 'resource.online', fail: (w) => w.fake.failNext('reserve', new UnavailableError('array down', 'ARRAY_UNAVAILABLE')), kind: 'unavailable' },
    ];
    for (const c of cases) {
      for (const vm of [
        { id: 'vm1', mount: 'E:' },
        { id: 'vm2', mount: '/mnt/data' },
      ]) {
        it(`create on ${vm.id}: ${c.name} in ${c.step} ends FAILED with that error, the array and models as before`, async () => {
          const before = world(w);
          c.fail(w);
          const op = await create(w, vm.id, vm.mount);
          expect(op.state).to.equal('failed');
          expect(op.error?.kind).to.equal(c.kind);
          expect(stateOf(op, c.step)).to.equal('undone');
          expect(op.steps.find((s) => s.name === c.step)?.message).to.equal(op.error?.message);
          expect(world(w)).to.deep.equal(before);
          expect([...w.fake.luns.values()], 'no LUN left on the array').to.deep.equal([]);
          await expectConsistent(w);
        });
      }
    }

    it('create: a MapLun refused for one node\'s igroup maps nothing on any node, and the create rolls back', async () => {
      const before = world(w);
      const orig = w.fake.mapLun.bind(w.fake);
      w.fake.mapLun = (req) => (req.igroups.includes('node3') ? Promise.reject(new UnavailableError('node3 path down')) : orig(req));
      const op = await create(w, 'vm1', 'E:');
      expect(op.state).to.equal('failed');
      expect(world(w)).to.deep.equal(before);
      w.fake.mapLun = orig;
      await expectConsistent(w);
    });

    it('create: an undo that fails (array down) keeps the operation rolling back and retried until the array is back', async () => {
      const before = world(w);
      w.fake.failNext('reserve', new UnavailableError('array down', 'ARRAY_UNAVAILABLE'));
      const created = await w.agent.createDisk('vm1', { requestId: rid(), mountPath: 'E:', sizeBytes: SIZE, sharing: undefined });
      const seen: string[] = [];
      const off = w.agent.watch('admin', created.id, (ev, o) => {
        if (ev?.kind === 'failed' && ev.step === 'resource.online') w.fake.down = true;
        if (w.fake.down || seen.length > 0) seen.push(`${ev ? `${ev.kind} ${ev.step}` : 'end'}: ${o.state}`);
      });
      while (w.fake.down === false || w.fake.calls.filter((c) => c.error).length < 6) await new Promise((r) => setTimeout(r, 2));
      const mid = w.agent.state.operations.get(created.id)!;
      expect(mid.state).to.equal('rolling_back');
      expect(mid.steps.some((s) => s.state === 'undoing' && /^undo failed, retrying/.test(s.message ?? ''))).to.equal(true);
      w.fake.down = false;
      const op = await settle(w.agent, created.id);
      off();
      expect(op.state).to.equal('failed');
      expect(op.error?.message, 'the error that started the rollback').to.equal('array down');
      expect(seen[0]).to.equal('failed resource.online: rolling_back');
      expect(seen.slice(1, -1).every((s) => s.endsWith(': rolling_back')), seen.join('\n')).to.equal(true);
      expect(seen[seen.length - 1]).to.equal('end: failed');
      expect(world(w)).to.deep.equal(before);
      await expectConsistent(w);
    });

    it('create: when the array refuses a LUN id (a map passthru did not make), another id is chosen and the disk is created', async () => {
      const other = w.fake.adminCreateLun('/vol/other/foreign');
      w.fake.adminMap(other.path, 'node2', 0);
      const op = await create(w, 'vm1', 'E:');
      expect(op.state, JSON.stringify(op.error)).to.equal('succeeded');
      expect(op.data.lunId).to.equal(1);
      const ours = w.fake.allMaps().filter((m) => m.serial === op.data.lun!.serial);
      expect(ours.map((m) => `${m.igroup}@${m.lunId}`)).to.deep.equal(['node1@1', 'node2@1', 'node3@1']);
      expect((await w.agent.checkInvariants()).filter((v) => !v.subject.includes(other.serial))).to.deep.equal([]);
    });

    it('a LUN an administrator mapped to a node igroup behind passthru\'s back is reported (ORPHAN_MAP): masking lets the node reach a LUN it has no reason to see', async () => {
      const other = w.fake.adminCreateLun('/vol/other/foreign');
      w.fake.adminMap(other.path, 'node2', 0);
      const v = await w.agent.checkInvariants();
      expect(v.map((x) => `${x.kind} ${x.subject}`)).to.deep.equal([`ORPHAN_MAP node2/${other.serial}`]);
    });

    it('add to Available Storage: a MapLun failure rolls back, no map and no resource left', async () => {
      const lun = w.fake.adminCreateLun('/vol/san/avail1');
      const before = world(w);
      w.fake.failNext('mapLun', new UnavailableError('array down', 'ARRAY_UNAVAILABLE'));
      const started = await w.agent.addAvailableDisk({ requestId: rid(), lun: lun.path });
      const op = await settle(w.agent, started.id);
      expect(op.state).to.equal('failed');
      expect(op.error?.kind).to.equal('unavailable');
      expect(world(w)).to.deep.equal(before);
      await expectConsistent(w);
    });

    it('remove: a hot-remove refused before the commit point rolls back, the disk attached and online in the VM\'s group as before', async () => {
      expect((await create(w, 'vm2', '/mnt/data')).state).to.equal('succeeded');
      const before = world(w);
      w.hypervisor.faults.hotRemove.push(new FailedPreconditionError('hot remove failed', 'HOT_REMOVE_FAILED'));
      const rm = await remove(w, 'vm2', '/mnt/data', true);
      expect(rm.state).to.equal('failed');
      expect(rm.error?.reason).to.equal('HOT_REMOVE_FAILED');
      expect(stateOf(rm, 'scsi.detach')).to.equal('undone');
      expect(world(w)).to.deep.equal(before);
      await expectConsistent(w);
    });

    it('connect: a failed reservation puts the disk back in Available Storage under its old name and state', async () => {
      const serial = await availableDisk(w, 'shared1');
      const before = world(w);
      w.fake.failNext('reserve', new UnavailableError('array down', 'ARRAY_UNAVAILABLE'));
      const op = await connect(w, 'vm2', '/mnt/shared', serial);
      expect(op.state).to.equal('failed');
      expect(op.error?.kind).to.equal('unavailable');
      expect(world(w)).to.deep.equal(before);
      expect(w.agent.state.resources.get(serial)).to.include({ name: 'Cluster Disk 1', group: 'Available Storage', state: 'offline' });
      await expectConsistent(w);
    });
  });

  describe('a failure after the commit point is retried forward', () => {
    const cases: { name: string; method: ArrayMethod; deleteLun: boolean }[] = [
      { name: 'the reservation release', method: 'release', deleteLun: false },
      { name: 'UnmapLun', method: 'unmapLun', deleteLun: false },
      { name: 'DeleteLun', method: 'deleteLun', deleteLun: true },
    ];
    for (const c of cases) {
      it(`remove: ${c.name} failing twice is retried until the removal succeeds`, async () => {
        expect((await create(w, 'vm2', '/mnt/data')).state).to.equal('succeeded');
        w.fake.failNext(c.method, new UnavailableError('array down', 'ARRAY_UNAVAILABLE'));
        w.fake.failNext(c.method, new UnavailableError('array down', 'ARRAY_UNAVAILABLE'));
        const rm = await remove(w, 'vm2', '/mnt/data', c.deleteLun);
        expect(rm.state, JSON.stringify(rm.error)).to.equal('succeeded');
        expect(rm.steps.every((s) => s.state === 'done' || s.state === 'skipped')).to.equal(true);
        expect(w.fake.callsOf(c.method).filter((x) => x.error)).to.have.length(2);
        expect(w.fake.allMaps()).to.deep.equal([]);
        expect(w.agent.state.resources.size).to.equal(0);
        await expectConsistent(w);
      });
    }
  });

  describe('temporary groups', () => {
    const cases: { name: string; vm: string; node: string; mount: string; connect: boolean }[] = [
      { name: 'create on a VM on the node that owns Available Storage', vm: 'vm1', node: 'node1', mount: 'E:', connect: false },
      { name: 'create on a VM on another node', vm: 'vm2', node: 'node2', mount: '/mnt/data', connect: false },
      { name: 'connect on a VM on the node that owns Available Storage', vm: 'vm1', node: 'node1', mount: 'E:', connect: true },
      { name: 'connect on a VM on another node', vm: 'vm2', node: 'node2', mount: '/mnt/data', connect: true },
    ];
    for (const c of cases) {
      it(`${c.name} goes through a temporary group owned by the VM's node, deleted at the end`, async () => {
        const serial = c.connect ? await availableDisk(w, 'shared1') : undefined;
        const op = c.connect
          ? await w.agent.connectDisk(c.vm, { requestId: rid(), mountPath: c.mount, lun: serial! })
          : await w.agent.createDisk(c.vm, { requestId: rid(), mountPath: c.mount, sizeBytes: SIZE, sharing: undefined });
        const seen: { at: string; groups: string[]; owner?: string; resourceGroup?: string }[] = [];
        const ended = new Promise<OperationRecord>((resolve) => {
          const off = w.agent.watch('admin', op.id, (ev, o) => {
            if (ev?.kind === 'finished' && ['resource.create', 'scsi.attach', 'resource.online'].includes(ev.step)) {
              const temps = w.agent.state.temporaryGroupsOf(c.vm);
              const lun = o.data.lun!;
              seen.push({ at: ev.step, groups: temps.map((g) => g.name), owner: temps[0]?.owner, resourceGroup: w.agent.state.resources.get(lun.serial)?.group });
            }
            if (!ev) {
              off();
              resolve(o);
            }
          });
        });
        const done = await ended;
        expect(done.state, JSON.stringify(done.error)).to.equal('succeeded');
        const temp = `Disk VM ${c.vm} MP ${c.mount === 'E:' ? 'E' : 'mnt data'} Group`;
        const vmGroup = w.agent.vm(c.vm).group;
        expect(seen).to.deep.equal([
          { at: 'resource.create', groups: [temp], owner: c.node, resourceGroup: temp },
          { at: 'scsi.attach', groups: [temp], owner: c.node, resourceGroup: temp },
          { at: 'resource.online', groups: [temp], owner: c.node, resourceGroup: vmGroup },
        ]);
        expect(done.data.tempGroup).to.equal(temp);
        expect(w.agent.state.groups.has(temp)).to.equal(false);
        await expectConsistent(w);
      });
    }
  });

  describe('concurrency', () => {
    it('64 concurrent creates on one VM get 64 different SCSI locations and LUN ids, with no LUN id refused by the array', async () => {
      const ops = await Promise.all(Array.from({ length: 64 }, (_, i) => w.agent.createDisk('vm1', { requestId: rid(), mountPath: `C:\\mt${i}`, sizeBytes: SIZE, sharing: undefined })));
      const done = await Promise.all(ops.map((o) => settle(w.agent, o.id)));
      expect(done.map((o) => o.state)).to.deep.equal(Array(64).fill('succeeded'));
      const slots = new Set(done.map((o) => `${o.data.address!.controller}:${o.data.address!.location}`));
      expect(slots.size).to.equal(64);
      expect(new Set(done.map((o) => o.data.lunId)).size).to.equal(64);
      expect(w.fake.callsOf('mapLun').filter((c) => c.error), 'no map refused').to.deep.equal([]);
      expect(w.agent.disks('vm1')).to.have.length(64);
      await expectConsistent(w);
    });

    it('64 concurrent creates across three VMs (shared and dedicated) get unique locations per VM and LUN ids unique per node', async () => {
      const plan = Array.from({ length: 64 }, (_, i) => {
        const vm = ['vm1', 'vm2', 'vm3'][i % 3]!;
        const mount = vm === 'vm2' ? `/mnt/d${i}` : `C:\\mt${i}`;
        const sharing = vm === 'vm3' && i % 2 === 0 ? ('dedicated' as const) : undefined;
        return { vm, mount, sharing };
      });
      const ops = await Promise.all(plan.map((p) => w.agent.createDisk(p.vm, { requestId: rid(), mountPath: p.mount, sizeBytes: SIZE, sharing: p.sharing })));
      const done = await Promise.all(ops.map((o) => settle(w.agent, o.id)));
      expect(done.filter((o) => o.state !== 'succeeded').map((o) => o.error)).to.deep.equal([]);
      for (const vm of ['vm1', 'vm2', 'vm3']) {
        const mine = done.filter((o) => o.vmId === vm);
        expect(new Set(mine.map((o) => `${o.data.address!.controller}:${o.data.address!.location}`)).size, vm).to.equal(mine.length);
      }
      for (const node of ['node1', 'node2', 'node3']) {
        const ids = w.fake.allMaps().filter((m) => m.igroup === node).map((m) => m.lunId);
        expect(new Set(ids).size, node).to.equal(ids.length);
      }
      expect(w.fake.callsOf('mapLun').filter((c) => c.error), 'no map refused').to.deep.equal([]);
      await expectConsistent(w);
    });

    it('a VM with 1 x 2 SCSI locations gets RESOURCE_EXHAUSTED on a third disk, in the call, starting nothing', async () => {
      expect((await create(w, 'vm4', '/a')).state).to.equal('succeeded');
      expect((await create(w, 'vm4', '/b')).state).to.equal('succeeded');
      const before = world(w);
      const opsBefore = w.agent.state.operations.size;
      const err = await rejection(() => w.agent.createDisk('vm4', { requestId: rid(), mountPath: '/c', sizeBytes: SIZE, sharing: undefined }));
      expect(err.kind).to.equal('resource_exhausted');
      expect(err.reason).to.equal('NO_FREE_SCSI_LOCATION');
      expect(world(w)).to.deep.equal(before);
      expect(w.agent.state.operations.size).to.equal(opsBefore);
      await expectConsistent(w);
    });

    it('three concurrent creates on a VM with 1 x 2 SCSI locations: two succeed, the third is refused in the call with RESOURCE_EXHAUSTED', async () => {
      const results = await Promise.allSettled(['/a', '/b', '/c'].map(async (m) => w.agent.createDisk('vm4', { requestId: rid(), mountPath: m, sizeBytes: SIZE, sharing: undefined })));
      const started = results.filter((r): r is PromiseFulfilledResult<OperationRecord> => r.status === 'fulfilled').map((r) => r.value);
      const done = await Promise.all(started.map((o) => settle(w.agent, o.id)));
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as DomainError);
      const failed = done.filter((o) => o.state === 'failed');
      expect(done.filter((o) => o.state === 'succeeded'), 'two disks attached').to.have.length(2);
      expect([...refused.map((e) => e.kind), ...failed.map((o) => o.error?.kind)], 'the third is out of locations').to.deep.equal(['resource_exhausted']);
      await expectConsistent(w);
      const startedThenFailed = failed.map((o) => `${o.error?.reason} in step ${o.steps.filter((s) => s.state === 'undone').pop()?.name}, after LUN ${o.data.lun?.path} was created, mapped and rolled back`);
      expect(startedThenFailed, 'refused by validate in the call, not started and failed later').to.deep.equal([]);
    });

    it('two concurrent connects of one Available Storage LUN: one gets it, the other is ABORTED', async () => {
      const serial = await availableDisk(w, 'shared1');
      const results = await Promise.allSettled([
        (async () => w.agent.connectDisk('vm1', { requestId: rid(), mountPath: 'E:', lun: serial }))(),
        (async () => w.agent.connectDisk('vm2', { requestId: rid(), mountPath: '/mnt/shared', lun: serial }))(),
      ]);
      const ok = results.filter((r): r is PromiseFulfilledResult<OperationRecord> => r.status === 'fulfilled');
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => (r.reason as DomainError).kind);
      expect(ok).to.have.length(1);
      expect(refused).to.deep.equal(['aborted']);
      expect((await settle(w.agent, ok[0]!.value.id)).state).to.equal('succeeded');
      await expectConsistent(w);
    });

    it('a second operation on a mount with one in flight is ABORTED', async () => {
      const first = await w.agent.createDisk('vm1', { requestId: rid(), mountPath: 'E:', sizeBytes: SIZE, sharing: undefined });
      const err = await rejection(() => w.agent.removeDisk('vm1', { requestId: rid(), mountPath: 'E:', deleteLun: true }));
      expect(err.kind).to.equal('aborted');
      expect((await settle(w.agent, first.id)).state).to.equal('succeeded');
      await expectConsistent(w);
    });
  });

  describe('mounts inside mounts', () => {
    it('a folder mount on E: needs a passthru volume at E:, and E: cannot be removed while it holds one', async () => {
      const missing = await rejection(() => w.agent.createDisk('vm1', { requestId: rid(), mountPath: 'E:\\data', sizeBytes: SIZE, sharing: undefined }));
      expect(missing.reason).to.equal('MOUNT_VOLUME_MISSING');
      expect((await create(w, 'vm1', 'E:')).state).to.equal('succeeded');
      expect((await create(w, 'vm1', 'E:\\data')).state).to.equal('succeeded');
      const inside = await rejection(() => w.agent.removeDisk('vm1', { requestId: rid(), mountPath: 'E:', deleteLun: true }));
      expect(inside.kind).to.equal('failed_precondition');
      expect(inside.reason).to.equal('MOUNTS_INSIDE_VOLUME');
      expect((await remove(w, 'vm1', 'e:\\DATA', true)).state, 'Windows mount paths are case-insensitive').to.equal('succeeded');
      expect((await remove(w, 'vm1', 'E:', true)).state).to.equal('succeeded');
      expect(w.fake.luns.size).to.equal(0);
      await expectConsistent(w);
    });
  });

  describe('names', () => {
    it('a second mount with the same patent-style name gets " (2)" on its disk resource', async () => {
      const a = await create(w, 'vm2', '/mnt/data');
      const b = await create(w, 'vm2', '/mnt data');
      expect([a.state, b.state]).to.deep.equal(['succeeded', 'succeeded']);
      expect(w.agent.state.resources.get(a.data.lun!.serial)!.name).to.equal('Disk VM vm2 MP mnt data');
      expect(w.agent.state.resources.get(b.data.lun!.serial)!.name).to.equal('Disk VM vm2 MP mnt data (2)');
      await expectConsistent(w);
    });

    it('two such mounts created at once get resources "…" and "… (2)", and temporary groups that never share a name', async () => {
      const temps = new Set<string>();
      const ops = await Promise.all(['/mnt/data', '/mnt data'].map((m) => w.agent.createDisk('vm2', { requestId: rid(), mountPath: m, sizeBytes: SIZE, sharing: undefined })));
      const ended = ops.map(
        (op) =>
          new Promise<OperationRecord>((resolve) => {
            const off = w.agent.watch('admin', op.id, (ev, o) => {
              if (ev?.step === 'resource.create' && ev.kind === 'finished') temps.add(o.data.tempGroup!);
              if (!ev) {
                off();
                resolve(o);
              }
            });
          }),
      );
      const done = await Promise.all(ended);
      expect(done.map((o) => o.state)).to.deep.equal(['succeeded', 'succeeded']);
      // Whether the two temporary groups overlap in time depends on scheduling; when they do, the second gets " (2)".
      expect([...temps].every((t) => t === 'Disk VM vm2 MP mnt data Group' || t === 'Disk VM vm2 MP mnt data Group (2)')).to.equal(true);
      expect(done.map((o) => w.agent.state.resources.get(o.data.lun!.serial)!.name).sort()).to.deep.equal(['Disk VM vm2 MP mnt data', 'Disk VM vm2 MP mnt data (2)']);
      await expectConsistent(w);
    });

    it('two VMs with the same name get "Virtual Machine <name>" and "… (2)" groups', async () => {
      const vm = w.agent.createVm({ requestId: 'create-vm5', id: 'vm5', name: 'web1', guestOs: 'windows', ha: false, node: 'node3', controllers: 0, locationsPerController: 0 });
      expect(w.agent.vm('vm1').group).to.equal('Virtual Machine web1');
      expect(vm.group).to.equal('Virtual Machine web1 (2)');
      await expectConsistent(w);
    });
  });

  describe('a crash at any step point is recovered at start-up', () => {
    /** Runs `scenario`; when the hook reaches (step, point) the agent "dies": its array calls fail from then on and what the store held at that instant is all a new agent gets. */
    async function crashAt(step: string, point: 'before' | 'during' | 'after', scenario: (w: World) => Promise<OperationRecord>, kind: OperationRecord['kind'], setup?: (w: World) => Promise<void>): Promise<{ w2: World; opId: string } | undefined> {
      const fake = new FakeArray();
      let dead = false;
      let snapshot: ReturnType<MemoryStore['load']> | undefined;
      const array = new Proxy(fake, {
        get(target, prop, receiver) {
          const v = Reflect.get(target, prop, receiver) as unknown;
          if (typeof v !== 'function' || prop === 'close') return v;
          return (...args: unknown[]) => (dead ? Promise.reject(new UnavailableError('the old agent is dead')) : (v as (...a: unknown[]) => unknown).apply(target, args));
        },
      }) as StorageArray;
      const hook: StepHook = (op, s, p) => {
        if (!dead && op.kind === kind && s === step && p === point) {
          snapshot = w1.store.load();
          dead = true;
        }
      };
      const w1 = await start({ fake, array, hook });
      if (setup) await setup(w1);
      const opId = (await scenario(w1)).id;
      // Let the old agent run until it "dies" (or its operation ends without reaching the point), then stop it.
      for (let i = 0; i < 2000 && !dead && ['running', 'rolling_back'].includes(w1.agent.state.operations.get(opId)!.state); i++) {
        await new Promise((r) => setTimeout(r, 1));
      }
      expect(await w1.agent.engine.drain(2000), 'the old agent stopped').to.equal(true);
      if (!snapshot) return undefined;
      const store = new MemoryStore();
      store.apply(Object.entries(snapshot).flatMap(([table, m]) => [...(m as Map<string, unknown>)].map(([key, value]) => ({ table: table as never, key, value }))));
      const w2 = await start({ store, fake });
      return { w2, opId };
    }

    const createSteps = ['lun.create', 'lun.map', 'peers.map', 'resource.create', 'scsi.attach', 'resource.offline', 'resource.online', 'group.delete'];
    for (const step of createSteps) {
      for (const point of ['before', 'during', 'after'] as const) {
        const committed = step === 'group.delete' || (step === 'resource.online' && point === 'after');
        it(`create, crash ${point} ${step}: ${committed ? 'rolled forward to SUCCEEDED' : 'rolled back, nothing left'}`, async () => {
          const r = await crashAt(step, point, (x) => x.agent.createDisk('vm2', { requestId: 'c1', mountPath: '/mnt/data', sizeBytes: SIZE, sharing: undefined }), 'create_disk');
          expect(r, 'the hook was reached').to.not.equal(undefined);
          const op = r!.w2.agent.state.operations.get(r!.opId)!;
          expect(op.state).to.equal(committed ? 'succeeded' : 'failed');
          if (!committed) {
            expect(op.error?.reason).to.equal('HOST_AGENT_RESTARTED');
            expect([...r!.w2.fake.luns.values()]).to.deep.equal([]);
            expect(r!.w2.fake.allMaps()).to.deep.equal([]);
            expect(r!.w2.agent.state.resources.size).to.equal(0);
            expect(r!.w2.agent.state.hostDisks.size).to.equal(0);
          } else {
            expect(r!.w2.agent.disks('vm2')).to.have.length(1);
          }
          await expectConsistent(r!.w2);
        });
      }
    }

    const connectSteps = ['lun.find', 'resource.create', 'scsi.attach', 'resource.offline', 'resource.online', 'group.delete'];
    for (const step of connectSteps) {
      for (const point of ['before', 'during', 'after'] as const) {
        const committed = step === 'group.delete' || (step === 'resource.online' && point === 'after');
        it(`connect, crash ${point} ${step}: ${committed ? 'rolled forward to SUCCEEDED' : 'rolled back into Available Storage'}`, async () => {
          let serial = '';
          const r = await crashAt(step, point, (x) => x.agent.connectDisk('vm2', { requestId: 'k1', mountPath: '/mnt/shared', lun: serial }), 'connect_disk', async (x) => {
            serial = await availableDisk(x, 'shared1');
          });
          expect(r, 'the hook was reached').to.not.equal(undefined);
          const op = r!.w2.agent.state.operations.get(r!.opId)!;
          expect(op.state).to.equal(committed ? 'succeeded' : 'failed');
          const res = r!.w2.agent.state.resources.get(serial)!;
          if (committed) expect(res).to.include({ name: 'Disk VM vm2 MP mnt shared', group: 'Virtual Machine db1', state: 'online' });
          else expect(res).to.include({ name: 'Cluster Disk 1', group: 'Available Storage', state: 'offline' });
          expect(r!.w2.fake.allMaps().map((m) => m.igroup), 'still mapped to every node').to.deep.equal(['node1', 'node2', 'node3']);
          await expectConsistent(r!.w2);
        });
      }
    }

    const removeSteps = ['group.create', 'resource.offline', 'scsi.detach', 'resource.online', 'peers.unmap', 'lun.unmap', 'lun.delete', 'group.delete'];
    for (const step of removeSteps) {
      for (const point of ['before', 'during', 'after'] as const) {
        const committed = !['group.create', 'resource.offline'].includes(step) && !(step === 'scsi.detach' && point !== 'after');
        it(`remove, crash ${point} ${step}: ${committed ? 'rolled forward to SUCCEEDED' : 'rolled back, the disk still attached'}`, async () => {
          const r = await crashAt(
            step,
            point,
            (x) => x.agent.removeDisk('vm2', { requestId: 'r1', mountPath: '/mnt/data', deleteLun: true }),
            'remove_disk',
            async (x) => {
              expect((await create(x, 'vm2', '/mnt/data')).state).to.equal('succeeded');
            },
          );
          expect(r, 'the hook was reached').to.not.equal(undefined);
          const op = r!.w2.agent.state.operations.get(r!.opId)!;
          expect(op.state).to.equal(committed ? 'succeeded' : 'failed');
          expect(r!.w2.agent.disks('vm2')).to.have.length(committed ? 0 : 1);
          if (committed) expect([...r!.w2.fake.luns.values()]).to.deep.equal([]);
          await expectConsistent(r!.w2);
        });
      }
    }
  });
});
