/**
 * The host agent through the wire: storage-sim and host-agent in this process over real
 * gRPC (test/support/host-cluster.ts), each VM's GuestService on its own Unix socket, the
 * AdminService on TCP. Checks DESIGN.md's contract end to end: the provisioning and removal
 * workflows step by step, what the array and the cluster look like afterwards, operation
 * streams, idempotency, Available Storage, isolation between VMs, concurrency, the error
 * table (every refused call changing nothing), names and paging. Every test that changes
 * anything ends with CheckInvariants empty.
 */
import { status as Code, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { join } from 'node:path';
import { statusDetails } from '../../common/status.js';
import {
  DiskSharing,
  GroupKind,
  GuestOs,
  NodeState,
  OperationKind,
  OperationState,
  ResourceState,
  StepEventKind,
  StepState,
  VmState,
  type CreateDiskRequest,
  type Group,
  type Operation,
  type WatchOperationResponse,
} from '../../proto/gen/passthru/host/v1/host.js';
import { FaultTiming, OsType, Provisioning, type Lun, type LunMap } from '../../proto/gen/passthru/storage/v1/storage.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const NODES = ['node1', 'node2', 'node3'];
const INITIATOR: Record<string, string> = {
  node1: 'iqn.2026-11.dev.passthru:node1',
  node2: 'iqn.2026-11.dev.passthru:node2',
  node3: 'iqn.2026-11.dev.passthru:node3',
};

const PROVISION = ['validate', 'lun.find', 'lun.create', 'lun.map', 'peers.map', 'resource.create', 'scsi.attach', 'resource.offline', 'resource.online', 'group.delete'];
const REMOVAL = ['validate', 'group.create', 'resource.offline', 'scsi.detach', 'resource.online', 'peers.unmap', 'lun.unmap', 'lun.delete', 'group.delete'];
const ADD_AVAILABLE = ['validate', 'lun.find', 'lun.map', 'peers.map', 'resource.create'];
const REMOVE_AVAILABLE = ['validate', 'resource.delete', 'peers.unmap', 'lun.unmap'];

// ---------------------------------------------------------------- helpers

let nextId = 0;
/** A fresh request id. */
const rid = (tag = 'r'): string => `${tag}-${++nextId}`;

const createReq = (o: Partial<CreateDiskRequest>): CreateDiskRequest => ({
  requestId: rid('create'),
  mountPath: '',
  sizeBytes: BigInt(8 * MiB),
  sharing: DiskSharing.DISK_SHARING_UNSPECIFIED,
  ...o,
});

const stateName = (s: OperationState): string => OperationState[s] ?? String(s);
const stepStateName = (s: StepState): string => StepState[s] ?? String(s);
const eventKindName = (k: StepEventKind): string => StepEventKind[k] ?? String(k);

function stepsOf(op: Operation): { name: string; state: string; message: string }[] {
  return op.steps.map((s) => ({ name: s.name, state: stepStateName(s.state), message: s.message }));
}

/** Steps ran in the listed order: each started no earlier than the previous one ended. */
function expectStepsInOrder(op: Operation, names: string[]): void {
  expect(op.steps.map((s) => s.name)).to.deep.equal(names);
  let last = 0;
  for (const s of op.steps) {
    expect(s.startTime, `${s.name} has a start time`).to.be.instanceOf(Date);
    expect(s.endTime, `${s.name} has an end time`).to.be.instanceOf(Date);
    expect(s.startTime!.getTime(), `${s.name} starts after the step before ended`).to.be.at.least(last);
    expect(s.endTime!.getTime()).to.be.at.least(s.startTime!.getTime());
    last = s.endTime!.getTime();
  }
}

function expectSucceeded(op: Operation): void {
  expect(stateName(op.state), JSON.stringify(op.error ?? op.steps.find((s) => s.message && s.state === StepState.STEP_STATE_FAILED))).to.equal('OPERATION_STATE_SUCCEEDED');
  expect(op.error).to.equal(undefined);
}

async function allLuns(c: TestCluster, prefix = ''): Promise<Lun[]> {
  const out: Lun[] = [];
  let pageToken = '';
  do {
    const page = await c.storage.listLuns({ pageSize: 1000, pageToken, pathPrefix: prefix });
    out.push(...page.luns);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return out;
}

async function allMaps(c: TestCluster, filter: { lun?: string; igroup?: string } = {}): Promise<LunMap[]> {
  const out: LunMap[] = [];
  let pageToken = '';
  do {
    const page = await c.storage.listLunMaps({ lun: filter.lun ?? '', igroup: filter.igroup ?? '', pageSize: 1000, pageToken });
    out.push(...page.maps);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return out.sort((a, b) => (a.igroup < b.igroup ? -1 : a.igroup > b.igroup ? 1 : a.lunId - b.lunId));
}

async function allOperations(c: TestCluster, filter: { vmId?: string; state?: OperationState; pageSize?: number } = {}): Promise<Operation[]> {
  const out: Operation[] = [];
  let pageToken = '';
  for (let pages = 0; ; pages++) {
    expect(pages, 'paging ends').to.be.below(10_000);
    const page = await c.admin.listOperations({ vmId: filter.vmId ?? '', state: filter.state ?? OperationState.OPERATION_STATE_UNSPECIFIED, pageSize: filter.pageSize ?? 1000, pageToken });
    out.push(...page.operations);
    if (page.nextPageToken === '') return out;
    pageToken = page.nextPageToken;
  }
}

async function groups(c: TestCluster, kind = GroupKind.GROUP_KIND_UNSPECIFIED): Promise<Group[]> {
  return (await c.admin.listGroups({ kind })).groups;
}

/** Everything a refused call must leave as it was. */
async function snapshot(c: TestCluster): Promise<unknown> {
  const vms = (await c.admin.listVms({ node: '' })).vms;
  const disks: Record<string, unknown> = {};
  for (const vm of vms) disks[vm.id] = (await c.guest(vm.id).listDisks({})).disks;
  return {
    groups: await groups(c),
    operations: (await allOperations(c)).length,
    luns: await allLuns(c),
    maps: await allMaps(c),
    vms,
    nodes: (await c.admin.listNodes({})).nodes,
    disks,
  };
}

/** CreateDisk on a VM's socket, then waits for the operation to end. */
async function create(c: TestCluster, vmId: string, mountPath: string, o: Partial<CreateDiskRequest> = {}): Promise<Operation> {
  const { operation } = await c.guest(vmId).createDisk(createReq({ mountPath, ...o }));
  return c.settle(operation!.id);
}

async function remove(c: TestCluster, vmId: string, mountPath: string, deleteLun = true): Promise<Operation> {
  const { operation } = await c.guest(vmId).removeDisk({ requestId: rid('remove'), mountPath, deleteLun });
  return c.settle(operation!.id);
}

/** A LUN made by a storage administrator directly on the array. */
async function arrayLun(c: TestCluster, path: string, osType = OsType.OS_TYPE_WINDOWS, size = 64 * MiB): Promise<Lun> {
  const { lun } = await c.storage.createLun({
    requestId: rid('lun'),
    path,
    sizeBytes: BigInt(size),
    osType,
    provisioning: Provisioning.PROVISIONING_THIN,
    comment: 'made by a storage admin',
    pool: '',
  });
  return lun!;
}

async function addAvailable(c: TestCluster, lun: string): Promise<Operation> {
  const { operation } = await c.admin.addAvailableDisk({ requestId: rid('add'), lun });
  return c.settle(operation!.id);
}

interface Watched {
  msgs: WatchOperationResponse[];
  error?: ServiceError;
  ended: boolean;
}

/** Reads a WatchOperation stream to its end (or error). */
function collect(stream: ClientReadableStream<WatchOperationResponse>, onMessage?: (m: WatchOperationResponse) => void): Promise<Watched> {
  return new Promise((resolve) => {
    const out: Watched = { msgs: [], ended: false };
    const timer = setTimeout(() => {
      stream.cancel();
      resolve(out);
    }, 20_000);
    stream.on('data', (m: WatchOperationResponse) => {
      out.msgs.push(m);
      onMessage?.(m);
    });
    stream.on('error', (e: ServiceError) => {
      clearTimeout(timer);
      out.error = e;
      resolve(out);
    });
    stream.on('end', () => {
      clearTimeout(timer);
      out.ended = true;
      resolve(out);
    });
  });
}

/**
 * The events a watcher should hear after seeing `first`, given how the operation ended:
 * a step pending then becomes started+finished (or skipped); a running one only finished.
 */
function eventsAfter(first: Operation, last: Operation): string[] {
  const out: string[] = [];
  last.steps.forEach((s, i) => {
    const before = first.steps[i]!.state;
    if (before === StepState.STEP_STATE_DONE || before === StepState.STEP_STATE_SKIPPED) return;
    if (s.state === StepState.STEP_STATE_SKIPPED) out.push(`${s.name} STEP_EVENT_KIND_SKIPPED`);
    else {
      if (before !== StepState.STEP_STATE_RUNNING) out.push(`${s.name} STEP_EVENT_KIND_STARTED`);
      out.push(`${s.name} STEP_EVENT_KIND_FINISHED`);
    }
  });
  return out;
}

const eventsOf = (w: Watched): string[] => w.msgs.flatMap((m) => m.events).map((e) => `${e.step} ${eventKindName(e.kind)}`);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function delayArray(c: TestCluster, method: string, delayMs: number, count = 1): Promise<void> {
  await c.faults.injectFault({ method, count, code: 0, message: '', delayMs, timing: FaultTiming.FAULT_TIMING_BEFORE });
}

async function failArray(c: TestCluster, method: string, code: Code, count = 1): Promise<void> {
  await c.faults.injectFault({ method, count, code, message: `injected ${Code[code]}`, delayMs: 0, timing: FaultTiming.FAULT_TIMING_BEFORE });
}

/** The one resource of a VM's group with this serial (and there must be exactly one in the cluster). */
async function resourceOf(c: TestCluster, serial: string): Promise<{ group: Group; name: string; state: ResourceState; mountPath: string; vmId: string }> {
  const found = (await groups(c)).flatMap((g) => g.resources.filter((r) => r.serial === serial).map((r) => ({ group: g, ...r })));
  expect(found, `exactly one resource for LUN ${serial}`).to.have.length(1);
  return found[0]!;
}

// ---------------------------------------------------------------- tests

describe('host-agent over gRPC', function () {
  this.timeout(60_000);

  describe('the cluster as the guests and the administrator see it', () => {
    let c: TestCluster;
    before(async () => {
      c = await startCluster();
    });
    after(async () => {
      await c.close();
    });

    const expected = [
      { id: 'vm1', name: 'web1', guestOs: GuestOs.GUEST_OS_WINDOWS, ha: true, node: 'node1', controllers: 4, locations: 64 },
      { id: 'vm2', name: 'db1', guestOs: GuestOs.GUEST_OS_LINUX, ha: true, node: 'node2', controllers: 4, locations: 64 },
      { id: 'vm3', name: 'build1', guestOs: GuestOs.GUEST_OS_WINDOWS, ha: false, node: 'node2', controllers: 4, locations: 64 },
      { id: 'vm4', name: 'scratch1', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node3', controllers: 1, locations: 2 },
    ];

    for (const e of expected) {
      it(`GetSelf on ${e.id}'s own socket names ${e.id} (${e.name}), its guest OS, node, HA, SCSI shape, group and endpoint`, async () => {
        const { vm } = await c.guest(e.id).getSelf({});
        expect(vm).to.deep.equal({
          id: e.id,
          name: e.name,
          guestOs: e.guestOs,
          state: VmState.VM_STATE_RUNNING,
          ha: e.ha,
          node: e.node,
          scsiControllers: e.controllers,
          locationsPerController: e.locations,
          group: `Virtual Machine ${e.name}`,
          guestEndpoint: `unix:${join(c.dir, 'host', 'sock', `${e.id}.sock`)}`,
        });
      });
    }

    it('ListVms lists the four VMs sorted by id with the same records GetSelf gives; filtered by node it lists only that node\'s VMs', async () => {
      const { vms } = await c.admin.listVms({ node: '' });
      expect(vms.map((v) => v.id)).to.deep.equal(['vm1', 'vm2', 'vm3', 'vm4']);
      for (const v of vms) expect(v).to.deep.equal((await c.guest(v.id).getSelf({})).vm);
      expect((await c.admin.listVms({ node: 'node2' })).vms.map((v) => v.id)).to.deep.equal(['vm2', 'vm3']);
      expect((await c.admin.listVms({ node: 'node1' })).vms.map((v) => v.id)).to.deep.equal(['vm1']);
      await expectStatus(c.admin.listVms({ node: 'node9' }), Code.NOT_FOUND);
    });

    it('ListNodes and GetCluster show three up nodes with their initiators, hypervisor enabled and hot add, Available Storage on node1, serving, nothing in flight', async () => {
      const { nodes } = await c.admin.listNodes({});
      expect(nodes).to.deep.equal(
        NODES.map((name) => ({ name, initiator: INITIATOR[name], state: NodeState.NODE_STATE_UP, hypervisorEnabled: true, hotAddSupported: true })),
      );
      const cluster = await c.admin.getCluster({});
      expect(cluster).to.deep.equal({
        name: 'test',
        nodes,
        availableStorageOwner: 'node1',
        vmCount: 4,
        diskCount: 0,
        operationsInFlight: 0,
        serving: true,
      });
    });

    it('every node has its igroup on the array, named after the node and holding its initiator', async () => {
      for (const n of NODES) {
        const { igroup } = await c.storage.getIgroup({ name: n });
        expect(igroup!.initiators).to.deep.equal([INITIATOR[n]]);
      }
    });

    it('ListGroups shows Cluster Group and Available Storage owned by node1 and one "Virtual Machine <name>" group per VM on its node, all empty', async () => {
      const all = await groups(c);
      expect(all).to.deep.equal(
        [
          { name: 'Available Storage', kind: GroupKind.GROUP_KIND_AVAILABLE_STORAGE, ownerNode: 'node1', vmId: '', resources: [] },
          { name: 'Cluster Group', kind: GroupKind.GROUP_KIND_CLUSTER, ownerNode: 'node1', vmId: '', resources: [] },
          { name: 'Virtual Machine build1', kind: GroupKind.GROUP_KIND_VM, ownerNode: 'node2', vmId: 'vm3', resources: [] },
          { name: 'Virtual Machine db1', kind: GroupKind.GROUP_KIND_VM, ownerNode: 'node2', vmId: 'vm2', resources: [] },
          { name: 'Virtual Machine scratch1', kind: GroupKind.GROUP_KIND_VM, ownerNode: 'node3', vmId: 'vm4', resources: [] },
          { name: 'Virtual Machine web1', kind: GroupKind.GROUP_KIND_VM, ownerNode: 'node1', vmId: 'vm1', resources: [] },
        ],
      );
      expect((await groups(c, GroupKind.GROUP_KIND_VM)).map((g) => g.vmId).sort()).to.deep.equal(['vm1', 'vm2', 'vm3', 'vm4']);
      expect((await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE)).map((g) => g.name)).to.deep.equal(['Available Storage']);
      expect((await groups(c, GroupKind.GROUP_KIND_CLUSTER)).map((g) => g.name)).to.deep.equal(['Cluster Group']);
      expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
    });

    it('a fresh cluster has no disks, no bus devices, no operations and no invariant violations', async () => {
      for (const vm of ['vm1', 'vm2', 'vm3', 'vm4']) {
        expect((await c.guest(vm).listDisks({})).disks).to.deep.equal([]);
        expect((await c.guest(vm).rescanBus({})).devices).to.deep.equal([]);
      }
      expect(await allOperations(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('CreateDisk: the provisioning workflow', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    const cases = [
      { vm: 'vm1', vmName: 'web1', os: 'Windows', node: 'node1', mount: 'E:', resource: 'Disk VM vm1 MP E', token: 'E', osType: OsType.OS_TYPE_HYPER_V, why: 'which owns Available Storage' },
      { vm: 'vm2', vmName: 'db1', os: 'Linux', node: 'node2', mount: '/mnt/data', resource: 'Disk VM vm2 MP mnt data', token: 'mnt_data', osType: OsType.OS_TYPE_LINUX, why: 'which does not own Available Storage' },
    ];
    for (const t of cases) {
      it(`on a ${t.os} HA VM (${t.vm} on ${t.node}, ${t.why}): returns the operation at once, runs every step in DESIGN.md's order and ends SUCCEEDED and committed with the disk's address, serial, NAA id and LUN id`, async () => {
        const requestId = rid('create');
        const { operation: first } = await c.guest(t.vm).createDisk(createReq({ requestId, mountPath: t.mount, sizeBytes: BigInt(GiB) }));
        expect(first!.id).to.match(/^op-[0-9a-z]+$/);
        expect(['OPERATION_STATE_RUNNING', 'OPERATION_STATE_SUCCEEDED']).to.include(stateName(first!.state));
        expect(first!.kind).to.equal(OperationKind.OPERATION_KIND_CREATE_DISK);
        expect(first!.vmId).to.equal(t.vm);
        expect(first!.mountPath).to.equal(t.mount);
        expect(first!.requestId).to.equal(requestId);
        expect(first!.steps.map((s) => s.name)).to.deep.equal(PROVISION);
        expect(stepStateName(first!.steps[0]!.state)).to.equal('STEP_STATE_DONE');
        expect(first!.createTime).to.be.instanceOf(Date);

        const op = await c.settle(first!.id);
        expectSucceeded(op);
        expect(op.committed).to.equal(true);
        expectStepsInOrder(op, PROVISION);
        expect(stepsOf(op).map((s) => `${s.name} ${s.state}`)).to.deep.equal(PROVISION.map((n) => `${n} ${n === 'lun.find' ? 'STEP_STATE_SKIPPED' : 'STEP_STATE_DONE'}`));
        expect(op.steps[1]!.message, 'lun.find says why it was skipped').to.not.equal('');
        const r = op.result!;
        expect(r.address).to.deep.equal({ controller: 0, location: 0 });
        expect(r.serial).to.have.length(12);
        expect(r.naaId).to.match(/^6[0-9a-f]{31}$/);
        expect(r.lunId).to.be.a('number').within(0, 4095);
        expect(r.sizeBytes).to.equal(BigInt(GiB));
        expect(r.lunPath).to.equal(`/vol/passthru/${t.vm}_${t.token}_${op.id.replace(/-/g, '_')}`);

        // The array: the LUN, its comment, one LUN id on every node's igroup, the reservation.
        const { lun } = await c.storage.getLun({ lun: r.serial });
        expect(lun!.path).to.equal(r.lunPath);
        expect(lun!.naaId).to.equal(r.naaId);
        expect(lun!.sizeBytes).to.equal(BigInt(GiB));
        expect(lun!.osType).to.equal(t.osType);
        expect(lun!.comment).to.include('cluster=test').and.include(`vm=${t.vm}`).and.include(`op=${op.id}`);
        expect(lun!.path).to.include(op.id.replace(/-/g, '_'));
        const maps = await allMaps(c, { lun: r.serial });
        expect(maps.map((m) => [m.igroup, m.lunId])).to.deep.equal(NODES.map((n) => [n, r.lunId]));
        const pr = await c.storage.readReservation({ lun: r.serial });
        expect(pr.reserved).to.equal(true);
        expect(pr.holderInitiator).to.equal(INITIATOR[t.node]);

        // The guest's view.
        const { disks } = await c.guest(t.vm).listDisks({});
        expect(disks).to.deep.equal([
          {
            mountPath: t.mount,
            serial: r.serial,
            naaId: r.naaId,
            sizeBytes: BigInt(GiB),
            address: { controller: 0, location: 0 },
            lunId: r.lunId,
            lunPath: r.lunPath,
            sharing: DiskSharing.DISK_SHARING_SHARED,
            resource: t.resource,
            resourceState: ResourceState.RESOURCE_STATE_ONLINE,
            mounted: false,
            volumeId: '',
            volumeLabel: '',
            vmId: t.vm,
          },
        ]);
        expect((await c.guest(t.vm).rescanBus({})).devices).to.deep.equal([{ address: { controller: 0, location: 0 }, serial: r.serial, naaId: r.naaId, sizeBytes: BigInt(GiB) }]);

        // The cluster's view: the resource online in the VM's group, no temporary group left.
        const all = await groups(c);
        const vmGroup = all.find((g) => g.name === `Virtual Machine ${t.vmName}`)!;
        expect(vmGroup.ownerNode).to.equal(t.node);
        expect(vmGroup.resources).to.deep.equal([{ name: t.resource, state: ResourceState.RESOURCE_STATE_ONLINE, serial: r.serial, vmId: t.vm, mountPath: t.mount }]);
        expect(all.filter((g) => g.kind === GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
        expect(all.find((g) => g.name === 'Available Storage')!.resources).to.deep.equal([]);
        const cluster = await c.admin.getCluster({});
        expect(cluster.diskCount).to.equal(1);
        expect(cluster.operationsInFlight).to.equal(0);
        expect((await c.guest(t.vm).getOperation({ operationId: op.id })).operation).to.deep.equal(op);
        expect(await c.violations()).to.deep.equal([]);
      });
    }

    it('a second and third disk on one VM take the next free SCSI locations and distinct LUN ids', async () => {
      const a = await create(c, 'vm1', 'E:');
      const b = await create(c, 'vm1', 'F:');
      const d = await create(c, 'vm1', 'C:\\mt1');
      for (const op of [a, b, d]) expectSucceeded(op);
      expect([a, b, d].map((o) => o.result!.address)).to.deep.equal([
        { controller: 0, location: 0 },
        { controller: 0, location: 1 },
        { controller: 0, location: 2 },
      ]);
      expect(new Set([a, b, d].map((o) => o.result!.lunId)).size).to.equal(3);
      expect((await c.guest('vm1').listDisks({})).disks.map((x) => [x.mountPath, x.resource])).to.deep.equal([
        ['E:', 'Disk VM vm1 MP E'],
        ['F:', 'Disk VM vm1 MP F'],
        ['C:\\mt1', 'Disk VM vm1 MP C mt1'],
      ]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a Windows mount path is normalized and case-folded: "e:" is stored as E: and "c:/MT1/" as C:\\MT1, the same mount as C:\\mt1', async () => {
      const e = await create(c, 'vm1', 'e:');
      expectSucceeded(e);
      expect(e.mountPath).to.equal('E:');
      const f = await create(c, 'vm1', 'c:/MT1/');
      expectSucceeded(f);
      expect(f.mountPath).to.equal('C:\\MT1');
      // Same mount, same size, new request id: the creating operation comes back.
      const again = await c.guest('vm1').createDisk(createReq({ mountPath: 'C:\\mt1' }));
      expect(again.operation!.id).to.equal(f.id);
      expect((await c.guest('vm1').listDisks({})).disks).to.have.length(2);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a dedicated disk on a non-HA VM (vm3 on node2) is mapped to node2 only, peers.map is journaled as SKIPPED with a message, and node2 holds the reservation', async () => {
      const op = await create(c, 'vm3', 'E:', { sharing: DiskSharing.DISK_SHARING_DEDICATED });
      expectSucceeded(op);
      expectStepsInOrder(op, PROVISION);
      const peers = op.steps.find((s) => s.name === 'peers.map')!;
      expect(stepStateName(peers.state)).to.equal('STEP_STATE_SKIPPED');
      expect(peers.message).to.match(/dedicated/);
      const r = op.result!;
      expect((await allMaps(c, { lun: r.serial })).map((m) => [m.igroup, m.lunId])).to.deep.equal([['node2', r.lunId]]);
      const pr = await c.storage.readReservation({ lun: r.serial });
      expect(pr.holderInitiator).to.equal(INITIATOR.node2);
      const { disks } = await c.guest('vm3').listDisks({});
      expect(disks.map((d) => [d.mountPath, d.sharing, d.resource])).to.deep.equal([['E:', DiskSharing.DISK_SHARING_DEDICATED, 'Disk VM vm3 MP E']]);
      expect(await c.violations()).to.deep.equal([]);

      // Its removal skips peers.unmap too and leaves nothing mapped.
      const rm = await remove(c, 'vm3', 'E:', true);
      expectSucceeded(rm);
      expect(stepStateName(rm.steps.find((s) => s.name === 'peers.unmap')!.state)).to.equal('STEP_STATE_SKIPPED');
      expect(await allMaps(c)).to.deep.equal([]);
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a shared disk on a non-HA VM (sharing left unspecified) is mapped to every node', async () => {
      const op = await create(c, 'vm3', 'F:');
      expectSucceeded(op);
      expect(stepStateName(op.steps.find((s) => s.name === 'peers.map')!.state)).to.equal('STEP_STATE_DONE');
      expect((await allMaps(c, { lun: op.result!.serial })).map((m) => m.igroup)).to.deep.equal(NODES);
      expect((await c.guest('vm3').listDisks({})).disks[0]!.sharing).to.equal(DiskSharing.DISK_SHARING_SHARED);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('sharing DEDICATED on an HA VM is FAILED_PRECONDITION and starts nothing', async () => {
      const before = await snapshot(c);
      await expectStatus(c.guest('vm1').createDisk(createReq({ mountPath: 'E:', sharing: DiskSharing.DISK_SHARING_DEDICATED })), Code.FAILED_PRECONDITION, 'DEDICATED_ON_HA_VM');
      await expectStatus(c.guest('vm2').createDisk(createReq({ mountPath: '/mnt/x', sharing: DiskSharing.DISK_SHARING_DEDICATED })), Code.FAILED_PRECONDITION, 'DEDICATED_ON_HA_VM');
      expect(await snapshot(c)).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a step that fails before the commit point (MapLun refused by the array) rolls back newest first: operation FAILED with the status, the created LUN deleted, nothing left', async () => {
      await failArray(c, 'MapLun', Code.FAILED_PRECONDITION, 1);
      const { operation } = await c.guest('vm1').createDisk(createReq({ mountPath: 'E:' }));
      const op = await c.settle(operation!.id);
      expect(stateName(op.state)).to.equal('OPERATION_STATE_FAILED');
      expect(op.committed).to.equal(false);
      expect(op.result).to.equal(undefined);
      expect(op.error!.code).to.equal(Code.FAILED_PRECONDITION);
      expect(op.error!.message).to.not.equal('');
      const s = Object.fromEntries(stepsOf(op).map((x) => [x.name, x.state]));
      expect(s).to.deep.include({ 'lun.find': 'STEP_STATE_SKIPPED', 'lun.create': 'STEP_STATE_UNDONE', 'lun.map': 'STEP_STATE_UNDONE', 'peers.map': 'STEP_STATE_PENDING' });
      expect(op.steps.find((x) => x.name === 'lun.map')!.message).to.match(/injected/);
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await allMaps(c)).to.deep.equal([]);
      expect((await c.guest('vm1').listDisks({})).disks).to.deep.equal([]);
      expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
      // The mount is free again: a new request goes through.
      expectSucceeded(await create(c, 'vm1', 'E:'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('UNAVAILABLE from the array inside a step is retried with back-off and the operation still succeeds', async () => {
      await failArray(c, 'CreateLun', Code.UNAVAILABLE, 2);
      const op = await create(c, 'vm2', '/mnt/retry');
      expectSucceeded(op);
      expect((await c.faults.listFaults({})).faults).to.deep.equal([]);
      expect(await allLuns(c)).to.have.length(1);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('failures, rollback and roll-forward', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.faults.clearFaults({});
      await c.close();
    });

    /** Polls (as an admin) until the operation matches, or fails the test. */
    async function until(opId: string, what: string, ok: (op: Operation) => boolean, timeoutMs = 5000): Promise<Operation> {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const { operation } = await c.admin.getOperation({ operationId: opId });
        if (ok(operation!)) return operation!;
        if (Date.now() > end) throw new Error(`operation ${opId} never ${what}: ${stateName(operation!.state)} ${JSON.stringify(stepsOf(operation!))}`);
        await sleep(5);
      }
    }

    it('while an operation waits in resource.online, its temporary group "Disk VM vm1 MP E Group" holds the resource OnlinePending on node1 (the reservation being taken) and CheckInvariants skips what it holds; afterwards the group is gone', async () => {
      await delayArray(c, 'Reserve', 400);
      const { operation } = await c.guest('vm1').createDisk(createReq({ mountPath: 'E:' }));
      await until(operation!.id, 'reached resource.online', (op) => op.steps[8]!.state === StepState.STEP_STATE_RUNNING);
      const temp = await groups(c, GroupKind.GROUP_KIND_TEMPORARY);
      expect(temp.map((g) => ({ name: g.name, owner: g.ownerNode, vmId: g.vmId, resources: g.resources.map((r) => [r.name, r.state, r.mountPath]) }))).to.deep.equal([
        { name: 'Disk VM vm1 MP E Group', owner: 'node1', vmId: 'vm1', resources: [['Disk VM vm1 MP E', ResourceState.RESOURCE_STATE_ONLINE_PENDING, 'E:']] },
      ]);
      expect((await c.admin.getCluster({})).operationsInFlight).to.equal(1);
      expect(await c.violations(), 'a running operation is in the middle of changing what it holds').to.deep.equal([]);
      expectSucceeded(await c.settle(operation!.id));
      expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('an undo that fails (DeleteLun UNAVAILABLE past the call retries) is retried with back-off: the operation shows ROLLING_BACK with the reason on the step, then ends FAILED with nothing left', async () => {
      await failArray(c, 'MapLun', Code.FAILED_PRECONDITION, 1);
      await failArray(c, 'DeleteLun', Code.UNAVAILABLE, 9);
      const { operation } = await c.guest('vm2').createDisk(createReq({ mountPath: '/mnt/undo' }));
      const rolling = await until(operation!.id, 'showed its undo being retried', (op) => /undo failed, retrying/.test(op.steps[2]!.message));
      expect(stateName(rolling.state)).to.equal('OPERATION_STATE_ROLLING_BACK');
      expect(stepStateName(rolling.steps[2]!.state)).to.equal('STEP_STATE_UNDOING');
      const op = await c.settle(operation!.id);
      expect(stateName(op.state)).to.equal('OPERATION_STATE_FAILED');
      expect(op.error!.code, 'the error that started the rollback').to.equal(Code.FAILED_PRECONDITION);
      expect(stepStateName(op.steps[2]!.state)).to.equal('STEP_STATE_UNDONE');
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await allMaps(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a step failing after the commit point (UnmapLun refused during a removal) is retried until it goes through: the operation rolls forward and SUCCEEDS, with FAILED "retrying" events but no undo', async () => {
      const created = await create(c, 'vm1', 'E:');
      await delayArray(c, 'ReleaseReservation', 200);
      await failArray(c, 'UnmapLun', Code.FAILED_PRECONDITION, 2);
      const { operation } = await c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'E:', deleteLun: false });
      const w = await collect(c.admin.raw.watchOperation({ operationId: operation!.id }));
      const op = w.msgs[w.msgs.length - 1]!.operation!;
      expectSucceeded(op);
      const ev = eventsOf(w);
      expect(ev).to.include('lun.unmap STEP_EVENT_KIND_FAILED');
      expect(w.msgs.flatMap((m) => m.events).find((e) => e.kind === StepEventKind.STEP_EVENT_KIND_FAILED)!.message).to.match(/^retrying: /);
      expect(ev.filter((e) => /UNDO|UNDONE/.test(e))).to.deep.equal([]);
      expect(await allMaps(c)).to.deep.equal([]);
      expect((await c.storage.getLun({ lun: created.result!.serial })).lun!.mapped).to.equal(false);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a ConnectDisk that fails at its commit step (reservation refused) rolls back: the resource returns to Available Storage under its old name, still mapped to every node', async () => {
      const l = await arrayLun(c, '/vol/extra/back');
      expectSucceeded(await addAvailable(c, l.path));
      const asBefore = await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE);
      const mapsBefore = await allMaps(c);
      await failArray(c, 'Reserve', Code.FAILED_PRECONDITION, 1);
      const op = await c.settle((await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/r', lun: l.serial })).operation!.id);
      expect(stateName(op.state)).to.equal('OPERATION_STATE_FAILED');
      expect(op.error!.code).to.equal(Code.FAILED_PRECONDITION);
      expect(op.committed).to.equal(false);
      expect(await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE)).to.deep.equal(asBefore);
      expect(await allMaps(c)).to.deep.equal(mapsBefore);
      expect((await c.guest('vm2').listDisks({})).disks).to.deep.equal([]);
      expect((await c.storage.readReservation({ lun: l.serial })).reserved).to.equal(false);
      expect(await c.violations()).to.deep.equal([]);
      // And it can still be connected.
      expectSucceeded(await c.settle((await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/r', lun: l.serial })).operation!.id));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('hot add switched off while a CreateDisk runs: scsi.attach fails, the operation rolls back and ends FAILED (FAILED_PRECONDITION) with nothing left, without waiting for hot add to return', async () => {
      await delayArray(c, 'CreateLun', 300);
      const { operation } = await c.guest('vm1').createDisk(createReq({ mountPath: 'E:' }));
      await c.admin.setHostCapabilities({ requestId: rid(), node: 'node1', hotAddSupported: false });
      try {
        const op = await c.settle(operation!.id, 5000);
        expect(stateName(op.state)).to.equal('OPERATION_STATE_FAILED');
        expect(op.error!.code).to.equal(Code.FAILED_PRECONDITION);
        expect(op.steps.find((s) => s.name === 'scsi.attach')!.message).to.match(/hot add/);
        expect(await allLuns(c)).to.deep.equal([]);
        expect(await allMaps(c)).to.deep.equal([]);
        expect((await groups(c)).flatMap((g) => g.resources)).to.deep.equal([]);
        expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
        expect(await c.violations()).to.deep.equal([]);
      } finally {
        await c.admin.setHostCapabilities({ requestId: rid(), node: 'node1', hotAddSupported: true });
        const ended = await c.settle(operation!.id);
        expect(ended.steps.find((s) => s.name === 'scsi.attach')!.message, 'the failed step keeps saying why it failed').to.not.match(/^undo failed/);
      }
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('WatchOperation', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('first message has no events and the operation so far; then every step started/finished/skipped in order, events written together in one message; the last message carries the final state and the stream ends', async () => {
      await delayArray(c, 'CreateLun', 300);
      const { operation } = await c.guest('vm1').createDisk(createReq({ mountPath: 'E:' }));
      const w = await collect(c.guest('vm1').raw.watchOperation({ operationId: operation!.id }));
      expect(w.error).to.equal(undefined);
      expect(w.ended).to.equal(true);
      const first = w.msgs[0]!;
      expect(first.events).to.deep.equal([]);
      expect(stateName(first.operation!.state)).to.equal('OPERATION_STATE_RUNNING');
      expect(stepStateName(first.operation!.steps[2]!.state), 'lun.create is still waiting on the array').to.equal('STEP_STATE_RUNNING');
      const last = w.msgs[w.msgs.length - 1]!;
      expectSucceeded(last.operation!);
      expect(last.operation).to.deep.equal(await c.settle(operation!.id));
      const later = w.msgs.slice(1);
      expect(later.every((m) => m.events.length > 0), 'every message after the first carries events').to.equal(true);
      expect(later.slice(0, -1).every((m) => stateName(m.operation!.state) === 'OPERATION_STATE_RUNNING'), 'only the last message is final').to.equal(true);
      expect(eventsOf(w)).to.deep.equal(eventsAfter(first.operation!, last.operation!));
      expect(eventsOf(w)).to.include('group.delete STEP_EVENT_KIND_FINISHED');
      // Each message's operation is the operation as it stands after its events: every step an
      // event names is at least as far as the event says.
      const rank: Record<number, number> = { [StepState.STEP_STATE_RUNNING]: 1, [StepState.STEP_STATE_DONE]: 2, [StepState.STEP_STATE_SKIPPED]: 2 };
      for (const m of later) {
        for (const e of m.events) {
          const s = m.operation!.steps.find((x) => x.name === e.step)!;
          const want = { [StepEventKind.STEP_EVENT_KIND_STARTED]: 1, [StepEventKind.STEP_EVENT_KIND_FINISHED]: 2, [StepEventKind.STEP_EVENT_KIND_SKIPPED]: 2 }[e.kind as number]!;
          expect(rank[s.state] ?? 0, `${e.step} after ${eventKindName(e.kind)}`).to.be.at.least(want);
          expect(e.time).to.be.instanceOf(Date);
        }
      }
      const commit = later.find((m) => m.events.some((e) => e.step === 'resource.online' && e.kind === StepEventKind.STEP_EVENT_KIND_FINISHED))!;
      expect(commit.operation!.committed, 'committed once resource.online finished').to.equal(true);
      const beforeCommit = later.find((m) => m.events.some((e) => e.step === 'resource.online' && e.kind === StepEventKind.STEP_EVENT_KIND_STARTED))!;
      expect(beforeCommit.operation!.committed).to.equal(false);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a removal streams its steps too, with lun.delete SKIPPED when the LUN is kept', async () => {
      expectSucceeded(await create(c, 'vm2', '/mnt/w'));
      await delayArray(c, 'ReleaseReservation', 200);
      const { operation } = await c.guest('vm2').removeDisk({ requestId: rid(), mountPath: '/mnt/w', deleteLun: false });
      const w = await collect(c.guest('vm2').raw.watchOperation({ operationId: operation!.id }));
      expect(w.ended).to.equal(true);
      const last = w.msgs[w.msgs.length - 1]!.operation!;
      expectSucceeded(last);
      expect(eventsOf(w)).to.deep.equal(eventsAfter(w.msgs[0]!.operation!, last));
      expect(eventsOf(w)).to.include('lun.delete STEP_EVENT_KIND_SKIPPED');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a second watcher connecting mid-way gets the current state first, then exactly the events the first watcher heard after that point', async () => {
      await delayArray(c, 'CreateLun', 200);
      await delayArray(c, 'MapLun', 400, 3);
      const { operation } = await c.guest('vm2').createDisk(createReq({ mountPath: '/mnt/mid' }));
      const id = operation!.id;
      let second: Promise<Watched> | undefined;
      const firstWatch = collect(c.guest('vm2').raw.watchOperation({ operationId: id }), (m) => {
        if (!second && m.events.some((e) => e.step === 'lun.map' && e.kind === StepEventKind.STEP_EVENT_KIND_STARTED)) {
          second = collect(c.admin.raw.watchOperation({ operationId: id }));
        }
      });
      const w1 = await firstWatch;
      expect(second, 'the second watcher joined').to.not.equal(undefined);
      const w2 = await second!;
      expect(w1.ended && w2.ended).to.equal(true);
      const head = w2.msgs[0]!;
      expect(head.events).to.deep.equal([]);
      expect(stepStateName(head.operation!.steps[2]!.state)).to.equal('STEP_STATE_DONE');
      expect(stepStateName(head.operation!.steps[3]!.state), 'joined while lun.map waits on the array').to.equal('STEP_STATE_RUNNING');
      const ev1 = eventsOf(w1);
      const firstSeenAtJoin = ev1.indexOf('lun.map STEP_EVENT_KIND_STARTED') + 1;
      expect(eventsOf(w2)).to.deep.equal(ev1.slice(firstSeenAtJoin));
      expect(w2.msgs[w2.msgs.length - 1]!.operation).to.deep.equal(w1.msgs[w1.msgs.length - 1]!.operation);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('watching a finished operation gives one message with its final state and ends', async () => {
      const op = await create(c, 'vm1', 'E:');
      for (const stream of [c.guest('vm1').raw.watchOperation({ operationId: op.id }), c.admin.raw.watchOperation({ operationId: op.id })]) {
        const w = await collect(stream);
        expect(w.ended).to.equal(true);
        expect(w.msgs).to.have.length(1);
        expect(w.msgs[0]!.events).to.deep.equal([]);
        expect(w.msgs[0]!.operation).to.deep.equal(op);
      }
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a rolled-back operation streams FAILED, UNDO_STARTED and UNDONE events and ends FAILED', async () => {
      await delayArray(c, 'CreateLun', 200);
      await failArray(c, 'MapLun', Code.FAILED_PRECONDITION, 1);
      const { operation } = await c.guest('vm1').createDisk(createReq({ mountPath: 'G:' }));
      const w = await collect(c.guest('vm1').raw.watchOperation({ operationId: operation!.id }));
      expect(w.ended).to.equal(true);
      const ev = eventsOf(w);
      expect(ev).to.include.members(['lun.map STEP_EVENT_KIND_FAILED', 'lun.map STEP_EVENT_KIND_UNDO_STARTED', 'lun.map STEP_EVENT_KIND_UNDONE', 'lun.create STEP_EVENT_KIND_UNDONE']);
      expect(ev.indexOf('lun.map STEP_EVENT_KIND_UNDONE'), 'newest first').to.be.below(ev.indexOf('lun.create STEP_EVENT_KIND_UNDO_STARTED'));
      const last = w.msgs[w.msgs.length - 1]!;
      expect(stateName(last.operation!.state)).to.equal('OPERATION_STATE_FAILED');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('WatchOperation of an unknown operation is NOT_FOUND and of an empty id INVALID_ARGUMENT, on both services', async () => {
      for (const stream of [c.guest('vm1').raw.watchOperation({ operationId: 'op-nope' }), c.admin.raw.watchOperation({ operationId: 'op-nope' })]) {
        const w = await collect(stream);
        expect(w.msgs).to.deep.equal([]);
        expect(Code[w.error!.code]).to.equal('NOT_FOUND');
      }
      const w = await collect(c.guest('vm1').raw.watchOperation({ operationId: '' }));
      expect(Code[w.error!.code]).to.equal('INVALID_ARGUMENT');
      await expectStatus(c.guest('vm1').getOperation({ operationId: 'op-nope' }), Code.NOT_FOUND);
      await expectStatus(c.admin.getOperation({ operationId: 'op-nope' }), Code.NOT_FOUND);
    });
  });

  describe('idempotency', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('the same request_id returns the same operation id and changes nothing, while running and after it ended', async () => {
      const req = createReq({ mountPath: 'E:' });
      await delayArray(c, 'CreateLun', 200);
      const a = (await c.guest('vm1').createDisk(req)).operation!;
      const b = (await c.guest('vm1').createDisk(req)).operation!;
      expect(b.id).to.equal(a.id);
      const op = await c.settle(a.id);
      expectSucceeded(op);
      const before = await snapshot(c);
      const again = (await c.guest('vm1').createDisk(req)).operation!;
      expect(again).to.deep.equal(op);
      expect(await snapshot(c)).to.deep.equal(before);
      expect(await allLuns(c)).to.have.length(1);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('two identical requests sent at once (a retry racing the first) get one operation', async () => {
      const req = createReq({ mountPath: '/mnt/race' });
      const [a, b] = await Promise.all([c.guest('vm2').createDisk(req), c.guest('vm2').createDisk(req)]);
      expect(b.operation!.id).to.equal(a.operation!.id);
      expectSucceeded(await c.settle(a.operation!.id));
      expect(await allLuns(c)).to.have.length(1);
      expect(await allOperations(c)).to.have.length(1);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the same request_id with other parameters is INVALID_ARGUMENT (REQUEST_ID_REUSED) and changes nothing', async () => {
      const req = createReq({ mountPath: 'E:', sizeBytes: BigInt(8 * MiB) });
      expectSucceeded(await c.settle((await c.guest('vm1').createDisk(req)).operation!.id));
      const before = await snapshot(c);
      await expectStatus(c.guest('vm1').createDisk({ ...req, sizeBytes: BigInt(16 * MiB) }), Code.INVALID_ARGUMENT, 'REQUEST_ID_REUSED');
      await expectStatus(c.guest('vm1').createDisk({ ...req, mountPath: 'F:' }), Code.INVALID_ARGUMENT, 'REQUEST_ID_REUSED');
      await expectStatus(c.guest('vm1').removeDisk({ requestId: req.requestId, mountPath: 'E:', deleteLun: false }), Code.INVALID_ARGUMENT, 'REQUEST_ID_REUSED');
      expect(await snapshot(c)).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('request ids are scoped to the VM: vm1 and vm2 may use the same id for different requests', async () => {
      const a = (await c.guest('vm1').createDisk(createReq({ requestId: 'shared-id', mountPath: 'E:' }))).operation!;
      const b = (await c.guest('vm2').createDisk(createReq({ requestId: 'shared-id', mountPath: '/mnt/e' }))).operation!;
      expect(a.id).to.not.equal(b.id);
      expectSucceeded(await c.settle(a.id));
      expectSucceeded(await c.settle(b.id));
      expect(await allLuns(c)).to.have.length(2);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('CreateDisk at a mount that already has a disk with the same size and sharing (new request id) returns the creating operation; another size or sharing is ALREADY_EXISTS', async () => {
      const op = await create(c, 'vm3', 'E:', { sizeBytes: BigInt(16 * MiB) });
      expectSucceeded(op);
      const before = await snapshot(c);
      const same = (await c.guest('vm3').createDisk(createReq({ mountPath: 'E:', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_SHARED }))).operation!;
      expect(same.id).to.equal(op.id);
      expectSucceeded(same);
      await expectStatus(c.guest('vm3').createDisk(createReq({ mountPath: 'E:', sizeBytes: BigInt(32 * MiB) })), Code.ALREADY_EXISTS);
      await expectStatus(c.guest('vm3').createDisk(createReq({ mountPath: 'e:', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_DEDICATED })), Code.ALREADY_EXISTS);
      expect(await snapshot(c)).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('RemoveDisk of a mount with nothing attached succeeds with an operation that did nothing', async () => {
      const before = (await snapshot(c)) as { operations: number };
      const { operation } = await c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'K:', deleteLun: true });
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect(op.kind).to.equal(OperationKind.OPERATION_KIND_REMOVE_DISK);
      expect(op.mountPath).to.equal('K:');
      expect(op.steps.map((s) => s.name)).to.deep.equal(REMOVAL);
      expect(stepStateName(op.steps[0]!.state)).to.equal('STEP_STATE_DONE');
      expect(op.steps[0]!.message).to.match(/nothing is attached/);
      expect(op.steps.slice(1).every((s) => s.state === StepState.STEP_STATE_SKIPPED)).to.equal(true);
      const after = (await snapshot(c)) as { operations: number };
      expect({ ...after, operations: after.operations - 1 }).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('RemoveDisk twice succeeds twice: a new request id finds nothing left, the same request id returns the first removal', async () => {
      const created = await create(c, 'vm2', '/mnt/twice');
      const req = { requestId: rid(), mountPath: '/mnt/twice', deleteLun: true };
      const first = await c.settle((await c.guest('vm2').removeDisk(req)).operation!.id);
      expectSucceeded(first);
      expect(stepStateName(first.steps.find((s) => s.name === 'scsi.detach')!.state)).to.equal('STEP_STATE_DONE');
      const before = await snapshot(c);
      const retry = (await c.guest('vm2').removeDisk(req)).operation!;
      expect(retry).to.deep.equal(first);
      expect(await snapshot(c)).to.deep.equal(before);
      const second = await remove(c, 'vm2', '/mnt/twice', true);
      expectSucceeded(second);
      expect(second.id).to.not.equal(first.id);
      expect(second.steps[0]!.message).to.match(/nothing is attached/);
      await expectStatus(c.storage.getLun({ lun: created.result!.serial }), Code.NOT_FOUND);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('RemoveDisk: the removal workflow and mounts inside volumes', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('without delete_lun: steps in DESIGN.md\'s removal order, lun.delete SKIPPED with a message, the LUN stays on the array unmapped from every node and unreserved', async () => {
      const created = await create(c, 'vm1', 'E:');
      const r = created.result!;
      const { operation } = await c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'E:', deleteLun: false });
      expect(operation!.kind).to.equal(OperationKind.OPERATION_KIND_REMOVE_DISK);
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect(op.committed).to.equal(true);
      expectStepsInOrder(op, REMOVAL);
      expect(stepsOf(op).map((s) => `${s.name} ${s.state}`)).to.deep.equal(REMOVAL.map((n) => `${n} ${n === 'lun.delete' ? 'STEP_STATE_SKIPPED' : 'STEP_STATE_DONE'}`));
      expect(op.steps.find((s) => s.name === 'lun.delete')!.message).to.match(/not asked/);
      const { lun } = await c.storage.getLun({ lun: r.serial });
      expect(lun!.path).to.equal(r.lunPath);
      expect(lun!.mapped).to.equal(false);
      expect(await allMaps(c)).to.deep.equal([]);
      expect((await c.storage.readReservation({ lun: r.serial })).reserved).to.equal(false);
      expect((await c.storage.readReservationKeys({ lun: r.serial })).registrations, 'the node\'s key is unregistered').to.deep.equal([]);
      expect((await c.guest('vm1').listDisks({})).disks).to.deep.equal([]);
      expect((await c.guest('vm1').rescanBus({})).devices).to.deep.equal([]);
      expect((await groups(c)).flatMap((g) => g.resources)).to.deep.equal([]);
      expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
      expect((await c.admin.getCluster({})).diskCount).to.equal(0);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('with delete_lun: lun.delete runs and the LUN is gone from the array', async () => {
      const created = await create(c, 'vm2', '/data');
      const op = await remove(c, 'vm2', '/data', true);
      expectSucceeded(op);
      expectStepsInOrder(op, REMOVAL);
      expect(stepsOf(op).every((s) => s.state === 'STEP_STATE_DONE')).to.equal(true);
      await expectStatus(c.storage.getLun({ lun: created.result!.serial }), Code.NOT_FOUND);
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the SCSI location and the LUN id a removal frees are reused by the next disk', async () => {
      const a = await create(c, 'vm1', 'E:');
      const b = await create(c, 'vm1', 'F:');
      expectSucceeded(await remove(c, 'vm1', 'E:', true));
      const d = await create(c, 'vm1', 'G:');
      expect(d.result!.address).to.deep.equal(a.result!.address);
      expect(d.result!.lunId).to.equal(a.result!.lunId);
      expect(d.result!.lunId).to.not.equal(b.result!.lunId);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a Windows folder mount point C:\\mt1 works both ways', async () => {
      const op = await create(c, 'vm1', 'C:\\mt1');
      expectSucceeded(op);
      expect((await c.guest('vm1').listDisks({})).disks.map((d) => [d.mountPath, d.resource])).to.deep.equal([['C:\\mt1', 'Disk VM vm1 MP C mt1']]);
      expectSucceeded(await remove(c, 'vm1', 'C:\\mt1'));
      expect((await c.guest('vm1').listDisks({})).disks).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('E:\\data is FAILED_PRECONDITION while no disk is at E:, accepted once E: has one; removing E: while E:\\data exists is FAILED_PRECONDITION, and works once E:\\data is removed', async () => {
      const before = await snapshot(c);
      await expectStatus(c.guest('vm1').createDisk(createReq({ mountPath: 'E:\\data' })), Code.FAILED_PRECONDITION, 'MOUNT_VOLUME_MISSING');
      expect(await snapshot(c)).to.deep.equal(before);
      expectSucceeded(await create(c, 'vm1', 'E:'));
      expectSucceeded(await create(c, 'vm1', 'E:\\data'));
      const mid = await snapshot(c);
      await expectStatus(c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'E:', deleteLun: true }), Code.FAILED_PRECONDITION, 'MOUNTS_INSIDE_VOLUME');
      await expectStatus(c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'e:', deleteLun: false }), Code.FAILED_PRECONDITION, 'MOUNTS_INSIDE_VOLUME');
      expect(await snapshot(c)).to.deep.equal(mid);
      expectSucceeded(await remove(c, 'vm1', 'E:\\data'));
      expectSucceeded(await remove(c, 'vm1', 'E:'));
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('another VM\'s E: does not count as a volume: vm3 cannot mount E:\\data on vm1\'s E:', async () => {
      expectSucceeded(await create(c, 'vm1', 'E:'));
      await expectStatus(c.guest('vm3').createDisk(createReq({ mountPath: 'E:\\data' })), Code.FAILED_PRECONDITION, 'MOUNT_VOLUME_MISSING');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('Linux nesting: /mnt/a then /mnt/a/b is allowed; removing /mnt/a while /mnt/a/b exists is FAILED_PRECONDITION; /mnt/ab is not inside /mnt/a', async () => {
      expectSucceeded(await create(c, 'vm2', '/mnt/a'));
      expectSucceeded(await create(c, 'vm2', '/mnt/a/b'));
      expectSucceeded(await create(c, 'vm2', '/mnt/ab'));
      const mid = await snapshot(c);
      await expectStatus(c.guest('vm2').removeDisk({ requestId: rid(), mountPath: '/mnt/a', deleteLun: true }), Code.FAILED_PRECONDITION, 'MOUNTS_INSIDE_VOLUME');
      await expectStatus(c.guest('vm2').removeDisk({ requestId: rid(), mountPath: '/mnt/a/', deleteLun: true }), Code.FAILED_PRECONDITION, 'MOUNTS_INSIDE_VOLUME');
      expect(await snapshot(c)).to.deep.equal(mid);
      expectSucceeded(await remove(c, 'vm2', '/mnt/ab'));
      expectSucceeded(await remove(c, 'vm2', '/mnt/a/b'));
      expectSucceeded(await remove(c, 'vm2', '/mnt/a'));
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a folder mount created while its volume\'s removal is in flight never ends up attached without its volume', async () => {
      expectSucceeded(await create(c, 'vm1', 'E:'));
      await delayArray(c, 'ReleaseReservation', 400);
      const rm = (await c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'E:', deleteLun: true })).operation!;
      let inner: Operation | undefined;
      try {
        inner = (await c.guest('vm1').createDisk(createReq({ mountPath: 'E:\\data' }))).operation!;
      } catch (e) {
        expect(['FAILED_PRECONDITION', 'ABORTED']).to.include(Code[(e as ServiceError).code]);
      }
      await c.settle(rm.id);
      if (inner) await c.settle(inner.id);
      const mounts = (await c.guest('vm1').listDisks({})).disks.map((d) => d.mountPath);
      if (mounts.includes('E:\\data')) expect(mounts, 'E:\\data is attached, so E: must be too').to.include('E:');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a volume whose folder mount is being created cannot be removed from under it', async () => {
      expectSucceeded(await create(c, 'vm1', 'E:'));
      await delayArray(c, 'CreateLun', 400);
      const inner = (await c.guest('vm1').createDisk(createReq({ mountPath: 'E:\\data' }))).operation!;
      let rm: Operation | undefined;
      try {
        rm = (await c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'E:', deleteLun: true })).operation!;
      } catch (e) {
        expect(['FAILED_PRECONDITION', 'ABORTED']).to.include(Code[(e as ServiceError).code]);
      }
      await c.settle(inner.id);
      if (rm) await c.settle(rm.id);
      const mounts = (await c.guest('vm1').listDisks({})).disks.map((d) => d.mountPath);
      if (mounts.includes('E:\\data')) expect(mounts, 'E:\\data is attached, so E: must be too').to.include('E:');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a folder mount created while its volume\'s own creation is still uncommitted never ends up attached when that creation rolls back', async () => {
      // E:'s creation waits in resource.online (Reserve delayed), then the array refuses the reservation: E: rolls back.
      await c.faults.injectFault({ method: 'Reserve', count: 1, code: Code.FAILED_PRECONDITION, message: 'injected reservation conflict', delayMs: 500, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const outer = (await c.guest('vm1').createDisk(createReq({ mountPath: 'E:' }))).operation!;
      for (let i = 0; i < 100; i++) {
        const now = (await c.admin.getOperation({ operationId: outer.id })).operation!;
        if (now.steps.find((s) => s.name === 'resource.online')!.state === StepState.STEP_STATE_RUNNING) break;
        await sleep(10);
      }
      let inner: Operation | undefined;
      try {
        inner = (await c.guest('vm1').createDisk(createReq({ mountPath: 'E:\\data' }))).operation!;
      } catch (e) {
        expect(['FAILED_PRECONDITION', 'ABORTED']).to.include(Code[(e as ServiceError).code]);
      }
      expect(stateName((await c.settle(outer.id)).state)).to.equal('OPERATION_STATE_FAILED');
      if (inner) await c.settle(inner.id);
      const mounts = (await c.guest('vm1').listDisks({})).disks.map((d) => d.mountPath);
      if (mounts.includes('E:\\data')) expect(mounts, 'E:\\data is attached, so E: must be too').to.include('E:');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('RemoveDisk on vm3 of the mount E: that vm1 has changes nothing of vm1\'s disk', async () => {
      const op = await create(c, 'vm1', 'E:');
      const rm = await remove(c, 'vm3', 'E:', true);
      expectSucceeded(rm);
      expect(rm.steps[0]!.message).to.match(/nothing is attached/);
      expect((await c.guest('vm1').listDisks({})).disks.map((d) => d.serial)).to.deep.equal([op.result!.serial]);
      expect((await c.storage.getLun({ lun: op.result!.serial })).lun!.mapped).to.equal(true);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('Available Storage', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('while AddAvailableDisk of a LUN runs, a second AddAvailableDisk and a RemoveAvailableDisk of that LUN are ABORTED; afterwards removal works', async () => {
      const lun = await arrayLun(c, '/vol/extra/busy', OsType.OS_TYPE_LINUX);
      await delayArray(c, 'MapLun', 300, 3);
      const { operation } = await c.admin.addAvailableDisk({ requestId: rid(), lun: lun.path });
      await expectStatus(c.admin.addAvailableDisk({ requestId: rid(), lun: lun.serial }), Code.ABORTED, 'OPERATION_IN_FLIGHT');
      await expectStatus(c.admin.removeAvailableDisk({ requestId: rid(), lun: lun.serial }), Code.ABORTED, 'OPERATION_IN_FLIGHT');
      expectSucceeded(await c.settle(operation!.id));
      const removed = await c.admin.removeAvailableDisk({ requestId: rid(), lun: lun.serial });
      expectSucceeded(await c.settle(removed.operation!.id));
      expect((await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_AVAILABLE_STORAGE })).groups[0]!.resources).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('AddAvailableDisk of a LUN made on the array puts "Cluster Disk 1" in Available Storage, mapped to every node at one LUN id', async () => {
      const lun = await arrayLun(c, '/vol/extra/lun1', OsType.OS_TYPE_WINDOWS);
      const { operation } = await c.admin.addAvailableDisk({ requestId: rid(), lun: lun.path });
      expect(operation!.kind).to.equal(OperationKind.OPERATION_KIND_ADD_AVAILABLE_DISK);
      expect(['OPERATION_STATE_RUNNING', 'OPERATION_STATE_SUCCEEDED']).to.include(stateName(operation!.state));
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect(op.committed).to.equal(true);
      expectStepsInOrder(op, ADD_AVAILABLE);
      expect(op.steps.every((s) => s.state === StepState.STEP_STATE_DONE)).to.equal(true);
      const as = (await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE))[0]!;
      expect(as.ownerNode).to.equal('node1');
      expect(as.resources.map((r) => ({ name: r.name, serial: r.serial, vmId: r.vmId, mountPath: r.mountPath }))).to.deep.equal([
        { name: 'Cluster Disk 1', serial: lun.serial, vmId: '', mountPath: '' },
      ]);
      const maps = await allMaps(c, { lun: lun.serial });
      expect(maps.map((m) => m.igroup)).to.deep.equal(NODES);
      expect(new Set(maps.map((m) => m.lunId)).size).to.equal(1);
      expect((await c.admin.getCluster({})).diskCount).to.equal(0);
      // A guest does not see an administrator's operation.
      await expectStatus(c.guest('vm1').getOperation({ operationId: op.id }), Code.NOT_FOUND);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('ConnectDisk by serial from vm2 (not on the Available Storage owner) and by NAA id from vm1: attached, the resource moved and renamed (never two for one LUN), lun.create SKIPPED, the LUN id kept', async () => {
      const l1 = await arrayLun(c, '/vol/extra/lun1', OsType.OS_TYPE_WINDOWS);
      const l2 = await arrayLun(c, '/vol/extra/lun2', OsType.OS_TYPE_HYPER_V);
      expectSucceeded(await addAvailable(c, l1.path));
      expectSucceeded(await addAvailable(c, l2.serial));
      const as = (await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE))[0]!;
      expect(as.resources.map((r) => [r.name, r.serial]).sort()).to.deep.equal([
        ['Cluster Disk 1', l1.serial],
        ['Cluster Disk 2', l2.serial],
      ]);
      const id1 = (await allMaps(c, { lun: l1.serial }))[0]!.lunId;

      const { operation } = await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/a', lun: l1.serial });
      expect(operation!.kind).to.equal(OperationKind.OPERATION_KIND_CONNECT_DISK);
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expect(op.committed).to.equal(true);
      expectStepsInOrder(op, PROVISION);
      const st = Object.fromEntries(stepsOf(op).map((s) => [s.name, s.state]));
      expect(st).to.deep.equal({
        validate: 'STEP_STATE_DONE',
        'lun.find': 'STEP_STATE_DONE',
        'lun.create': 'STEP_STATE_SKIPPED',
        'lun.map': 'STEP_STATE_SKIPPED',
        'peers.map': 'STEP_STATE_SKIPPED',
        'resource.create': 'STEP_STATE_DONE',
        'scsi.attach': 'STEP_STATE_DONE',
        'resource.offline': 'STEP_STATE_DONE',
        'resource.online': 'STEP_STATE_DONE',
        'group.delete': 'STEP_STATE_DONE',
      });
      expect(op.steps.find((s) => s.name === 'lun.create')!.message).to.not.equal('');
      expect(op.result).to.deep.include({ serial: l1.serial, naaId: l1.naaId, lunId: id1, lunPath: l1.path, sizeBytes: l1.sizeBytes });
      const res = await resourceOf(c, l1.serial);
      expect(res.name).to.equal('Disk VM vm2 MP srv a');
      expect(res.group.name).to.equal('Virtual Machine db1');
      expect(res.state).to.equal(ResourceState.RESOURCE_STATE_ONLINE);
      expect((await c.storage.readReservation({ lun: l1.serial })).holderInitiator).to.equal(INITIATOR.node2);
      expect((await allMaps(c, { lun: l1.serial })).map((m) => [m.igroup, m.lunId])).to.deep.equal(NODES.map((n) => [n, id1]));
      expect((await c.guest('vm2').listDisks({})).disks.map((d) => [d.mountPath, d.serial, d.resource, d.sharing])).to.deep.equal([
        ['/srv/a', l1.serial, 'Disk VM vm2 MP srv a', DiskSharing.DISK_SHARING_SHARED],
      ]);

      const op2 = await c.settle((await c.guest('vm1').connectDisk({ requestId: rid(), mountPath: 'F:', lun: `naa.${l2.naaId}` })).operation!.id);
      expectSucceeded(op2);
      expect(op2.result!.serial).to.equal(l2.serial);
      const res2 = await resourceOf(c, l2.serial);
      expect([res2.name, res2.group.name]).to.deep.equal(['Disk VM vm1 MP F', 'Virtual Machine web1']);
      expect((await c.storage.readReservation({ lun: l2.serial })).holderInitiator).to.equal(INITIATOR.node1);
      expect((await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE))[0]!.resources).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('ConnectDisk by a bare NAA id (no "naa." prefix) works too, and a repeat with a new request id returns the connecting operation', async () => {
      const l = await arrayLun(c, '/vol/extra/naa', OsType.OS_TYPE_LINUX);
      expectSucceeded(await addAvailable(c, l.uuid));
      const op = await c.settle((await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/n', lun: l.naaId })).operation!.id);
      expectSucceeded(op);
      const again = (await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/n', lun: l.serial })).operation!;
      expect(again.id).to.equal(op.id);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('RemoveDisk without delete puts nothing back in Available Storage (observed: the LUN stays on the array, unmapped); AddAvailableDisk then works again and the LUN can be connected again', async () => {
      const l = await arrayLun(c, '/vol/extra/again', OsType.OS_TYPE_LINUX);
      expectSucceeded(await addAvailable(c, l.path));
      expectSucceeded(await c.settle((await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/x', lun: l.serial })).operation!.id));
      const rm = await remove(c, 'vm2', '/srv/x', false);
      expectSucceeded(rm);
      expect((await groups(c)).flatMap((g) => g.resources)).to.deep.equal([]);
      expect((await c.storage.getLun({ lun: l.serial })).lun!.mapped).to.equal(false);
      expect(await allMaps(c)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
      await expectStatus(c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/y', lun: l.serial }), Code.NOT_FOUND);

      expectSucceeded(await addAvailable(c, l.path));
      expect((await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE))[0]!.resources.map((r) => r.name)).to.deep.equal(['Cluster Disk 1']);
      expectSucceeded(await c.settle((await c.guest('vm3').connectDisk({ requestId: rid(), mountPath: 'H:', lun: l.serial })).operation!.id));
      expect((await resourceOf(c, l.serial)).name).to.equal('Disk VM vm3 MP H');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a LUN passthru created and a removal kept can be added to Available Storage and connected by another VM, data path intact', async () => {
      const created = await create(c, 'vm1', 'E:');
      expectSucceeded(await remove(c, 'vm1', 'E:', false));
      expectSucceeded(await addAvailable(c, created.result!.serial));
      const op = await c.settle((await c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/old', lun: created.result!.serial })).operation!.id);
      expectSucceeded(op);
      expect(op.result!.lunPath).to.equal(created.result!.lunPath);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('RemoveAvailableDisk takes the resource out of Available Storage and unmaps the LUN from every node; the LUN stays on the array', async () => {
      const l = await arrayLun(c, '/vol/extra/out');
      expectSucceeded(await addAvailable(c, l.path));
      const { operation } = await c.admin.removeAvailableDisk({ requestId: rid(), lun: l.serial });
      expect(operation!.kind).to.equal(OperationKind.OPERATION_KIND_REMOVE_AVAILABLE_DISK);
      const op = await c.settle(operation!.id);
      expectSucceeded(op);
      expectStepsInOrder(op, REMOVE_AVAILABLE);
      expect((await groups(c, GroupKind.GROUP_KIND_AVAILABLE_STORAGE))[0]!.resources).to.deep.equal([]);
      expect(await allMaps(c)).to.deep.equal([]);
      expect((await c.storage.getLun({ lun: l.serial })).lun!.path).to.equal(l.path);
      expect(await c.violations()).to.deep.equal([]);
      // Back in, then connect: the LUN id chosen again is free on every node.
      expectSucceeded(await addAvailable(c, l.path));
      expect((await allMaps(c, { lun: l.serial })).map((m) => m.igroup)).to.deep.equal(NODES);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('RemoveAvailableDisk of a LUN already taken out of Available Storage succeeds (removing what is already gone succeeds)', async () => {
      const l = await arrayLun(c, '/vol/extra/gone');
      expectSucceeded(await addAvailable(c, l.path));
      expectSucceeded(await c.settle((await c.admin.removeAvailableDisk({ requestId: rid(), lun: l.serial })).operation!.id));
      const before = await snapshot(c);
      const { operation } = await c.admin.removeAvailableDisk({ requestId: rid(), lun: l.serial });
      expectSucceeded(await c.settle(operation!.id));
      const after = (await snapshot(c)) as { operations: number };
      expect({ ...after, operations: (before as { operations: number }).operations }).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('ConnectDisk of a serial not in Available Storage is NOT_FOUND and changes nothing, whether the LUN exists on the array or belongs to another VM', async () => {
      const l = await arrayLun(c, '/vol/extra/notadded');
      const other = await create(c, 'vm1', 'E:');
      const before = await snapshot(c);
      await expectStatus(c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/z', lun: l.serial }), Code.NOT_FOUND);
      await expectStatus(c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/z', lun: 'ZZZZZZZZZZZZ' }), Code.NOT_FOUND);
      await expectStatus(c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/z', lun: other.result!.serial }), Code.NOT_FOUND);
      await expectStatus(c.guest('vm1').connectDisk({ requestId: rid(), mountPath: 'G:', lun: other.result!.serial }), Code.FAILED_PRECONDITION);
      expect(await snapshot(c)).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('ConnectDisk at a mount that already has a disk is ALREADY_EXISTS', async () => {
      const l = await arrayLun(c, '/vol/extra/busy');
      expectSucceeded(await addAvailable(c, l.path));
      expectSucceeded(await create(c, 'vm2', '/srv/taken'));
      const before = await snapshot(c);
      await expectStatus(c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/taken', lun: l.serial }), Code.ALREADY_EXISTS);
      expect(await snapshot(c)).to.deep.equal(before);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('two VMs connecting the same Available Storage LUN at once: exactly one gets it, the other is ABORTED or NOT_FOUND', async () => {
      const l = await arrayLun(c, '/vol/extra/contended');
      expectSucceeded(await addAvailable(c, l.path));
      const results = await Promise.allSettled([
        c.guest('vm1').connectDisk({ requestId: rid(), mountPath: 'E:', lun: l.serial }),
        c.guest('vm2').connectDisk({ requestId: rid(), mountPath: '/srv/c', lun: l.serial }),
      ]);
      const ok = results.filter((r) => r.status === 'fulfilled');
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(ok).to.have.length(1);
      expect(refused).to.have.length(1);
      expect(['ABORTED', 'NOT_FOUND']).to.include(Code[(refused[0]!.reason as ServiceError).code]);
      expectSucceeded(await c.settle(ok[0]!.value.operation!.id));
      await resourceOf(c, l.serial);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('AddAvailableDisk: an unknown LUN is NOT_FOUND; twice with a new request id ALREADY_EXISTS; the same request id returns the same operation; a LUN in use by a VM or mapped outside passthru is FAILED_PRECONDITION', async () => {
      const before0 = await snapshot(c);
      await expectStatus(c.admin.addAvailableDisk({ requestId: rid(), lun: '/vol/extra/none' }), Code.NOT_FOUND);
      expect(await snapshot(c)).to.deep.equal(before0);
      const l = await arrayLun(c, '/vol/extra/twice');
      const requestId = rid();
      const first = (await c.admin.addAvailableDisk({ requestId, lun: l.path })).operation!;
      expectSucceeded(await c.settle(first.id));
      const before = await snapshot(c);
      expect((await c.admin.addAvailableDisk({ requestId, lun: l.path })).operation!.id).to.equal(first.id);
      await expectStatus(c.admin.addAvailableDisk({ requestId: rid(), lun: l.path }), Code.ALREADY_EXISTS);
      await expectStatus(c.admin.addAvailableDisk({ requestId: rid(), lun: l.serial }), Code.ALREADY_EXISTS);
      await expectStatus(c.admin.addAvailableDisk({ requestId, lun: l.serial }), Code.INVALID_ARGUMENT, 'REQUEST_ID_REUSED');
      expect(await snapshot(c)).to.deep.equal(before);
      const used = await create(c, 'vm1', 'E:');
      const mid = await snapshot(c);
      await expectStatus(c.admin.addAvailableDisk({ requestId: rid(), lun: used.result!.serial }), Code.FAILED_PRECONDITION, 'LUN_IN_USE');
      expect(await snapshot(c)).to.deep.equal(mid);
      const foreign = await arrayLun(c, '/vol/extra/foreign');
      await c.storage.mapLun({ igroups: [], requestId: '', lun: foreign.path, igroup: 'node3', lunId: 100 });
      const mid2 = await snapshot(c);
      await expectStatus(c.admin.addAvailableDisk({ requestId: rid(), lun: foreign.path }), Code.FAILED_PRECONDITION, 'LUN_MAPPED');
      expect(await snapshot(c)).to.deep.equal(mid2);
      await c.storage.unmapLun({ igroups: [], requestId: '', lun: foreign.path, igroup: 'node3' });
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a LUN id held on one node by a map passthru did not make is avoided: the shared disk gets one id free on every node', async () => {
      const foreign = await arrayLun(c, '/vol/extra/squatter');
      await c.storage.mapLun({ igroups: [], requestId: '', lun: foreign.path, igroup: 'node2', lunId: 0 });
      const op = await create(c, 'vm1', 'E:');
      expectSucceeded(op);
      expect(op.result!.lunId).to.not.equal(0);
      const maps = await allMaps(c, { lun: op.result!.serial });
      expect(maps.map((m) => [m.igroup, m.lunId])).to.deep.equal(NODES.map((n) => [n, op.result!.lunId]));
      await c.storage.unmapLun({ igroups: [], requestId: '', lun: foreign.path, igroup: 'node2' });
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('isolation between VMs', () => {
    let c: TestCluster;
    let op1: Operation;
    before(async () => {
      c = await startCluster();
      op1 = await create(c, 'vm1', 'E:');
      expectSucceeded(op1);
    });
    after(async () => {
      await c.close();
    });

    it('vm2\'s socket cannot GetOperation or WatchOperation vm1\'s operation (NOT_FOUND); vm1 and the admin can', async () => {
      await expectStatus(c.guest('vm2').getOperation({ operationId: op1.id }), Code.NOT_FOUND);
      await expectStatus(c.guest('vm3').getOperation({ operationId: op1.id }), Code.NOT_FOUND);
      const w = await collect(c.guest('vm2').raw.watchOperation({ operationId: op1.id }));
      expect(w.msgs).to.deep.equal([]);
      expect(Code[w.error!.code]).to.equal('NOT_FOUND');
      expect(w.error!.details).to.not.include('vm1');
      expect((await c.guest('vm1').getOperation({ operationId: op1.id })).operation!.id).to.equal(op1.id);
      expect((await c.admin.getOperation({ operationId: op1.id })).operation!.id).to.equal(op1.id);
    });

    it('ListDisks and RescanBus on vm2 and vm3 never show vm1\'s disk', async () => {
      for (const vm of ['vm2', 'vm3', 'vm4']) {
        expect((await c.guest(vm).listDisks({})).disks, vm).to.deep.equal([]);
        expect((await c.guest(vm).rescanBus({})).devices, vm).to.deep.equal([]);
      }
      expect((await c.guest('vm1').listDisks({})).disks.map((d) => d.serial)).to.deep.equal([op1.result!.serial]);
    });

    it('ReportMount and ReportUnmount for a mount only another VM has are NOT_FOUND and record nothing', async () => {
      const before = await snapshot(c);
      await expectStatus(c.guest('vm3').reportMount({ requestId: rid(), mountPath: 'E:', serial: op1.result!.serial, volumeId: 'v-1', volumeLabel: 'data' }), Code.NOT_FOUND);
      await expectStatus(c.guest('vm3').reportUnmount({ requestId: rid(), mountPath: 'E:' }), Code.NOT_FOUND);
      await expectStatus(c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'F:', serial: op1.result!.serial, volumeId: 'v-1', volumeLabel: 'data' }), Code.NOT_FOUND);
      expect(await snapshot(c)).to.deep.equal(before);
    });

    it('ReportMount with a wrong serial is FAILED_PRECONDITION (SERIAL_MISMATCH) and records nothing; a malformed volume id is INVALID_ARGUMENT', async () => {
      const before = await snapshot(c);
      await expectStatus(c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'E:', serial: 'WRONGSERIAL1', volumeId: 'v-1', volumeLabel: 'data' }), Code.FAILED_PRECONDITION, 'SERIAL_MISMATCH');
      await expectStatus(c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'E:', serial: op1.result!.serial, volumeId: '', volumeLabel: 'data' }), Code.INVALID_ARGUMENT, 'volume_id');
      await expectStatus(c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'E:', serial: op1.result!.serial, volumeId: 'v-1', volumeLabel: 'x'.repeat(37) }), Code.INVALID_ARGUMENT, 'volume_label');
      expect(await snapshot(c)).to.deep.equal(before);
    });

    it('ReportMount with the right serial records mounted, volume id and label in ListDisks; ReportUnmount clears them', async () => {
      const { disk } = await c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'e:', serial: op1.result!.serial, volumeId: 'vol-1234', volumeLabel: 'Data' });
      expect(disk).to.deep.include({ mountPath: 'E:', mounted: true, volumeId: 'vol-1234', volumeLabel: 'Data' });
      expect((await c.guest('vm1').listDisks({})).disks[0]).to.deep.include({ mounted: true, volumeId: 'vol-1234', volumeLabel: 'Data' });
      // Reporting the same mount again changes nothing.
      const again = await c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'E:', serial: op1.result!.serial, volumeId: 'vol-1234', volumeLabel: 'Data' });
      expect(again.disk).to.deep.equal(disk);
      const un = await c.guest('vm1').reportUnmount({ requestId: rid(), mountPath: 'E:' });
      expect(un.disk).to.deep.include({ mounted: false, volumeId: '', volumeLabel: '' });
      expect((await c.guest('vm1').listDisks({})).disks[0]).to.deep.include({ mounted: false, volumeId: '', volumeLabel: '' });
      expect(await c.violations()).to.deep.equal([]);
    });

    it('ListOperations filtered by vm_id shows each VM only its own operations', async () => {
      expect((await allOperations(c, { vmId: 'vm1' })).map((o) => o.id)).to.include(op1.id);
      expect(await allOperations(c, { vmId: 'vm2' })).to.deep.equal([]);
    });
  });

  describe('concurrency', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('two CreateDisk on the same mount with different request ids at once: one proceeds, the other is ABORTED; one disk results', async () => {
      const results = await Promise.allSettled([
        c.guest('vm1').createDisk(createReq({ mountPath: 'E:' })),
        c.guest('vm1').createDisk(createReq({ mountPath: 'E:' })),
      ]);
      const ok = results.filter((r) => r.status === 'fulfilled');
      const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      expect(ok, 'one proceeds').to.have.length(1);
      expect(refused).to.have.length(1);
      expect(Code[(refused[0]!.reason as ServiceError).code]).to.equal('ABORTED');
      expect(statusDetails(refused[0]!.reason as ServiceError).reason).to.equal('OPERATION_IN_FLIGHT');
      expectSucceeded(await c.settle(ok[0]!.value.operation!.id));
      expect((await c.guest('vm1').listDisks({})).disks).to.have.length(1);
      expect(await allLuns(c)).to.have.length(1);
      expect(await allOperations(c)).to.have.length(1);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('while a CreateDisk is in flight on a mount, a second CreateDisk and a RemoveDisk there are ABORTED, StopVm is ABORTED, and other mounts proceed', async () => {
      await delayArray(c, 'CreateLun', 500);
      const first = (await c.guest('vm2').createDisk(createReq({ mountPath: '/mnt/slow' }))).operation!;
      const before = await allOperations(c);
      await expectStatus(c.guest('vm2').createDisk(createReq({ mountPath: '/mnt/slow', sizeBytes: BigInt(16 * MiB) })), Code.ABORTED, 'OPERATION_IN_FLIGHT');
      await expectStatus(c.guest('vm2').removeDisk({ requestId: rid(), mountPath: '/mnt/slow', deleteLun: true }), Code.ABORTED, 'OPERATION_IN_FLIGHT');
      await expectStatus(c.admin.stopVm({ requestId: rid(), vmId: 'vm2' }), Code.ABORTED);
      expect(await allOperations(c)).to.have.length(before.length);
      expect((await c.admin.getCluster({})).operationsInFlight).to.equal(1);
      expect((await allOperations(c, { state: OperationState.OPERATION_STATE_RUNNING })).map((o) => o.id)).to.deep.equal([first.id]);
      const other = await create(c, 'vm2', '/mnt/fast');
      expectSucceeded(other);
      expectSucceeded(await c.settle(first.id));
      expect((await c.guest('vm2').getSelf({})).vm!.state).to.equal(VmState.VM_STATE_RUNNING);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('64 concurrent CreateDisk across vm1..vm3 all succeed with distinct SCSI locations per VM and distinct LUN ids, no LUN id twice in any igroup; then 64 concurrent removals leave nothing', async () => {
      const letters = 'DEFGHIJKLMNOPQRSTUVWX'.split(''); // 21
      const jobs: { vm: string; mount: string; sharing: DiskSharing }[] = [
        ...letters.map((l) => ({ vm: 'vm1', mount: `${l}:`, sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })),
        ...Array.from({ length: 22 }, (_, i) => ({ vm: 'vm2', mount: `/mnt/c${i}`, sharing: DiskSharing.DISK_SHARING_SHARED })),
        ...letters.map((l, i) => ({ vm: 'vm3', mount: `${l}:`, sharing: i % 2 === 0 ? DiskSharing.DISK_SHARING_DEDICATED : DiskSharing.DISK_SHARING_SHARED })),
      ];
      expect(jobs).to.have.length(64);
      const started = await Promise.all(jobs.map((j) => c.guest(j.vm).createDisk(createReq({ mountPath: j.mount, sharing: j.sharing, sizeBytes: BigInt(4 * MiB) }))));
      const ops = await Promise.all(started.map((s) => c.settle(s.operation!.id, 60_000)));
      ops.forEach((op) => expectSucceeded(op));
      for (const vm of ['vm1', 'vm2', 'vm3']) {
        const addrs = ops.filter((o) => o.vmId === vm).map((o) => `${o.result!.address!.controller}:${o.result!.address!.location}`);
        expect(new Set(addrs).size, `distinct SCSI locations on ${vm}`).to.equal(addrs.length);
        const disks = (await c.guest(vm).listDisks({})).disks;
        expect(disks).to.have.length(addrs.length);
      }
      // Every disk includes node2 (vm2 and vm3 run there; shared disks are on every node), so every LUN id is distinct.
      const ids = ops.map((o) => o.result!.lunId);
      expect(new Set(ids).size, 'distinct LUN ids').to.equal(64);
      const maps = await allMaps(c);
      for (const n of NODES) {
        const onNode = maps.filter((m) => m.igroup === n).map((m) => m.lunId);
        expect(new Set(onNode).size, `no LUN id twice on ${n}`).to.equal(onNode.length);
      }
      for (const op of ops) {
        const j = jobs.find((x) => x.vm === op.vmId && x.mount === op.mountPath)!;
        const want = j.sharing === DiskSharing.DISK_SHARING_DEDICATED ? ['node2'] : NODES;
        expect(maps.filter((m) => m.serial === op.result!.serial).map((m) => [m.igroup, m.lunId])).to.deep.equal(want.map((n) => [n, op.result!.lunId]));
      }
      expect((await c.admin.getCluster({})).diskCount).to.equal(64);
      expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);

      const removing = await Promise.all(jobs.map((j) => c.guest(j.vm).removeDisk({ requestId: rid(), mountPath: j.mount, deleteLun: true })));
      const removed = await Promise.all(removing.map((s) => c.settle(s.operation!.id, 60_000)));
      removed.forEach((op) => expectSucceeded(op));
      expect(await allLuns(c)).to.deep.equal([]);
      expect(await allMaps(c)).to.deep.equal([]);
      for (const vm of ['vm1', 'vm2', 'vm3']) expect((await c.guest(vm).listDisks({})).disks).to.deep.equal([]);
      expect((await groups(c)).flatMap((g) => g.resources)).to.deep.equal([]);
      expect(await groups(c, GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('three concurrent CreateDisk on vm4 (1 x 2 SCSI locations): two disks attached, the third refused RESOURCE_EXHAUSTED (at the call or as a FAILED operation), nothing left of it', async () => {
      const results = await Promise.allSettled(['/a', '/b', '/c'].map((m) => c.guest('vm4').createDisk(createReq({ mountPath: m }))));
      let exhausted = 0;
      let succeeded = 0;
      for (const r of results) {
        if (r.status === 'rejected') {
          expect(Code[(r.reason as ServiceError).code]).to.equal('RESOURCE_EXHAUSTED');
          exhausted++;
          continue;
        }
        const op = await c.settle(r.value.operation!.id);
        if (op.state === OperationState.OPERATION_STATE_SUCCEEDED) succeeded++;
        else {
          expect(op.error!.code).to.equal(Code.RESOURCE_EXHAUSTED);
          exhausted++;
        }
      }
      expect([succeeded, exhausted]).to.deep.equal([2, 1]);
      expect((await c.guest('vm4').listDisks({})).disks).to.have.length(2);
      expect(await allLuns(c)).to.have.length(2);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('bad input and refused calls change nothing', () => {
    let c: TestCluster;
    before(async () => {
      c = await startCluster();
      expectSucceeded(await create(c, 'vm1', 'E:'));
      expectSucceeded(await create(c, 'vm2', '/mnt/data'));
    });
    after(async () => {
      await c.close();
    });

    const guestCreate = (vm: string, o: Partial<CreateDiskRequest>) => () => c.guest(vm).createDisk(createReq(o));
    const cases: { name: string; call: () => Promise<unknown>; code: Code; fieldOrReason?: string }[] = [
      { name: 'CreateDisk with an empty request_id', call: guestCreate('vm1', { requestId: '', mountPath: 'F:' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'CreateDisk with a 129-character request_id', call: guestCreate('vm1', { requestId: 'r'.repeat(129), mountPath: 'F:' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'CreateDisk with a request_id holding a space', call: guestCreate('vm1', { requestId: 'a b', mountPath: 'F:' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'CreateDisk of size 0', call: guestCreate('vm1', { mountPath: 'F:', sizeBytes: 0n }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'size_bytes' },
      { name: 'CreateDisk of a size not a multiple of 512', call: guestCreate('vm1', { mountPath: 'F:', sizeBytes: BigInt(8 * MiB + 100) }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'size_bytes' },
      { name: 'CreateDisk of less than 4 MiB', call: guestCreate('vm1', { mountPath: 'F:', sizeBytes: BigInt(4 * MiB - 512) }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'size_bytes' },
      { name: 'CreateDisk of more than 16 TiB', call: guestCreate('vm1', { mountPath: 'F:', sizeBytes: BigInt(16 * TiB + 512) }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'size_bytes' },
      { name: 'CreateDisk of 2^64-512 bytes', call: guestCreate('vm1', { mountPath: 'F:', sizeBytes: 2n ** 64n - 512n }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'size_bytes' },
      { name: 'CreateDisk with sharing 7', call: guestCreate('vm1', { mountPath: 'F:', sharing: 7 as DiskSharing }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'sharing' },
      { name: 'CreateDisk at C: (Windows boot volume)', call: guestCreate('vm1', { mountPath: 'C:' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at A: (reserved floppy drive)', call: guestCreate('vm1', { mountPath: 'A:' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'DRIVE_LETTER_RESERVED' },
      { name: 'CreateDisk at E:\\..\\x', call: guestCreate('vm1', { mountPath: 'E:\\..\\x' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at E:\\con (device name)', call: guestCreate('vm1', { mountPath: 'E:\\con' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'DRIVE_PATH_RESERVED_NAME' },
      { name: 'CreateDisk at a relative Windows path', call: guestCreate('vm1', { mountPath: 'relative' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at an empty mount path', call: guestCreate('vm1', { mountPath: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at a UNC path', call: guestCreate('vm1', { mountPath: '\\\\server\\share' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at a Linux path on a Windows guest', call: guestCreate('vm1', { mountPath: '/mnt/x' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at / (Linux root)', call: guestCreate('vm2', { mountPath: '/' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at a relative Linux path', call: guestCreate('vm2', { mountPath: 'relative' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at /proc/x', call: guestCreate('vm2', { mountPath: '/proc/x' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'DRIVE_PATH_RESERVED_NAME' },
      { name: 'CreateDisk at /mnt/../etc', call: guestCreate('vm2', { mountPath: '/mnt/../etc' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at a drive letter on a Linux guest', call: guestCreate('vm2', { mountPath: 'E:' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at a path with a control character', call: guestCreate('vm2', { mountPath: '/mnt/a\u0001b' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'CreateDisk at an existing mount with another size', call: guestCreate('vm2', { mountPath: '/mnt/data', sizeBytes: BigInt(64 * MiB) }), code: Code.ALREADY_EXISTS },
      { name: 'ConnectDisk with an empty lun', call: () => c.guest('vm1').connectDisk({ requestId: rid(), mountPath: 'F:', lun: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'lun' },
      { name: 'ConnectDisk with an empty request_id', call: () => c.guest('vm1').connectDisk({ requestId: '', mountPath: 'F:', lun: 'X' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'ConnectDisk at a bad mount path', call: () => c.guest('vm1').connectDisk({ requestId: rid(), mountPath: 'C:', lun: 'X' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'ConnectDisk of an unknown LUN', call: () => c.guest('vm1').connectDisk({ requestId: rid(), mountPath: 'F:', lun: 'NOSUCHSERIAL' }), code: Code.NOT_FOUND },
      { name: 'RemoveDisk with an empty request_id', call: () => c.guest('vm1').removeDisk({ requestId: '', mountPath: 'E:', deleteLun: true }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'RemoveDisk at a bad mount path', call: () => c.guest('vm2').removeDisk({ requestId: rid(), mountPath: '/proc', deleteLun: true }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'ReportMount with a 129-character request_id', call: () => c.guest('vm1').reportMount({ requestId: 'r'.repeat(129), mountPath: 'E:', serial: 'X', volumeId: 'v', volumeLabel: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'ReportMount at a bad mount path', call: () => c.guest('vm1').reportMount({ requestId: rid(), mountPath: 'C:', serial: 'X', volumeId: 'v', volumeLabel: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'mount_path' },
      { name: 'ReportUnmount of a mount with no disk', call: () => c.guest('vm1').reportUnmount({ requestId: rid(), mountPath: 'Q:' }), code: Code.NOT_FOUND },
      { name: 'GetOperation of an unknown operation', call: () => c.guest('vm1').getOperation({ operationId: 'op-unknown' }), code: Code.NOT_FOUND },
      { name: 'AddAvailableDisk with an empty request_id', call: () => c.admin.addAvailableDisk({ requestId: '', lun: '/vol/x/y' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'request_id' },
      { name: 'AddAvailableDisk with an empty lun', call: () => c.admin.addAvailableDisk({ requestId: rid(), lun: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'lun' },
      { name: 'AddAvailableDisk of an unknown LUN', call: () => c.admin.addAvailableDisk({ requestId: rid(), lun: '/vol/x/none' }), code: Code.NOT_FOUND },
      { name: 'RemoveAvailableDisk of an unknown LUN', call: () => c.admin.removeAvailableDisk({ requestId: rid(), lun: 'NOSUCHSERIAL' }), code: Code.NOT_FOUND },
      { name: 'RemoveAvailableDisk with an empty lun', call: () => c.admin.removeAvailableDisk({ requestId: rid(), lun: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'lun' },
      { name: 'CreateVm with a bad id', call: () => c.admin.createVm({ requestId: rid(), id: 'VM_1', name: 'x', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node1', scsiControllers: 0, locationsPerController: 0 }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'id' },
      { name: 'CreateVm on an unknown node', call: () => c.admin.createVm({ requestId: rid(), id: 'vm9', name: 'x', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node9', scsiControllers: 0, locationsPerController: 0 }), code: Code.NOT_FOUND },
      { name: 'CreateVm without a node', call: () => c.admin.createVm({ requestId: rid(), id: 'vm9', name: 'x', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: '', scsiControllers: 0, locationsPerController: 0 }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'node' },
      { name: 'CreateVm without a guest OS', call: () => c.admin.createVm({ requestId: rid(), id: 'vm9', name: 'x', guestOs: GuestOs.GUEST_OS_UNSPECIFIED, ha: false, node: 'node1', scsiControllers: 0, locationsPerController: 0 }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'guest_os' },
      { name: 'CreateVm with guest OS 9', call: () => c.admin.createVm({ requestId: rid(), id: 'vm9', name: 'x', guestOs: 9 as GuestOs, ha: false, node: 'node1', scsiControllers: 0, locationsPerController: 0 }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'guest_os' },
      { name: 'CreateVm with 5 SCSI controllers', call: () => c.admin.createVm({ requestId: rid(), id: 'vm9', name: 'x', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node1', scsiControllers: 5, locationsPerController: 0 }), code: Code.INVALID_ARGUMENT },
      { name: 'CreateVm duplicating vm1 with other settings', call: () => c.admin.createVm({ requestId: rid(), id: 'vm1', name: 'web1', guestOs: GuestOs.GUEST_OS_LINUX, ha: true, node: 'node1', scsiControllers: 0, locationsPerController: 0 }), code: Code.ALREADY_EXISTS },
      { name: 'StartVm of an unknown VM', call: () => c.admin.startVm({ requestId: rid(), vmId: 'vm9' }), code: Code.NOT_FOUND },
      { name: 'StopVm of an unknown VM', call: () => c.admin.stopVm({ requestId: rid(), vmId: 'vm9' }), code: Code.NOT_FOUND },
      { name: 'SetHostCapabilities of an unknown node', call: () => c.admin.setHostCapabilities({ requestId: rid(), node: 'node9', hypervisorEnabled: false }), code: Code.NOT_FOUND },
      { name: 'ListOperations with page_size 5000', call: () => c.admin.listOperations({ vmId: '', state: 0, pageSize: 5000, pageToken: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'page_size' },
      { name: 'ListOperations with state 9', call: () => c.admin.listOperations({ vmId: '', state: 9 as OperationState, pageSize: 0, pageToken: '' }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'state' },
      { name: 'ListGroups with kind 9', call: () => c.admin.listGroups({ kind: 9 as GroupKind }), code: Code.INVALID_ARGUMENT, fieldOrReason: 'kind' },
      { name: 'ListVms of an unknown node', call: () => c.admin.listVms({ node: 'node9' }), code: Code.NOT_FOUND },
      { name: 'admin GetOperation of an unknown operation', call: () => c.admin.getOperation({ operationId: 'op-unknown' }), code: Code.NOT_FOUND },
    ];
    for (const t of cases) {
      it(`${t.name} is ${Code[t.code]}${t.fieldOrReason ? ` (${t.fieldOrReason})` : ''} and changes nothing`, async () => {
        const before = await snapshot(c);
        await expectStatus(t.call(), t.code, t.fieldOrReason);
        expect(await snapshot(c)).to.deep.equal(before);
        expect(await c.violations()).to.deep.equal([]);
      });
    }

    it('a VM that is off: CreateDisk, RemoveDisk and RescanBus are FAILED_PRECONDITION and change nothing; once started again CreateDisk works', async () => {
      const { vm } = await c.admin.stopVm({ requestId: rid(), vmId: 'vm1' });
      expect(vm!.state).to.equal(VmState.VM_STATE_OFF);
      expect((await c.guest('vm1').getSelf({})).vm!.state).to.equal(VmState.VM_STATE_OFF);
      const before = await snapshot(c);
      await expectStatus(c.guest('vm1').createDisk(createReq({ mountPath: 'F:' })), Code.FAILED_PRECONDITION, 'VM_NOT_RUNNING');
      await expectStatus(c.guest('vm1').removeDisk({ requestId: rid(), mountPath: 'E:', deleteLun: true }), Code.FAILED_PRECONDITION, 'VM_NOT_RUNNING');
      await expectStatus(c.guest('vm1').rescanBus({}), Code.FAILED_PRECONDITION, 'VM_NOT_RUNNING');
      expect(await snapshot(c)).to.deep.equal(before);
      expect((await c.admin.startVm({ requestId: rid(), vmId: 'vm1' })).vm!.state).to.equal(VmState.VM_STATE_RUNNING);
      expectSucceeded(await create(c, 'vm1', 'F:'));
      expectSucceeded(await remove(c, 'vm1', 'F:'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('hypervisor disabled on node1: CreateDisk on vm1 is FAILED_PRECONDITION and changes nothing while vm2 on node2 is unaffected; restored, it works', async () => {
      const { node } = await c.admin.setHostCapabilities({ requestId: rid(), node: 'node1', hypervisorEnabled: false });
      expect(node).to.deep.include({ name: 'node1', hypervisorEnabled: false, hotAddSupported: true });
      const before = await snapshot(c);
      await expectStatus(c.guest('vm1').createDisk(createReq({ mountPath: 'F:' })), Code.FAILED_PRECONDITION, 'HYPERVISOR_DISABLED');
      expect(await snapshot(c)).to.deep.equal(before);
      expectSucceeded(await create(c, 'vm2', '/mnt/other'));
      expectSucceeded(await remove(c, 'vm2', '/mnt/other'));
      await c.admin.setHostCapabilities({ requestId: rid(), node: 'node1', hypervisorEnabled: true });
      expectSucceeded(await create(c, 'vm1', 'F:'));
      expectSucceeded(await remove(c, 'vm1', 'F:'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('no hot add on node2: CreateDisk and RemoveDisk on vm2 are FAILED_PRECONDITION and change nothing; restored, they work', async () => {
      const { node } = await c.admin.setHostCapabilities({ requestId: rid(), node: 'node2', hotAddSupported: false });
      expect(node).to.deep.include({ name: 'node2', hypervisorEnabled: true, hotAddSupported: false });
      const before = await snapshot(c);
      await expectStatus(c.guest('vm2').createDisk(createReq({ mountPath: '/mnt/hot' })), Code.FAILED_PRECONDITION, 'HOT_ADD_UNSUPPORTED');
      await expectStatus(c.guest('vm2').removeDisk({ requestId: rid(), mountPath: '/mnt/data', deleteLun: false }), Code.FAILED_PRECONDITION, 'HOT_ADD_UNSUPPORTED');
      expect(await snapshot(c)).to.deep.equal(before);
      await c.admin.setHostCapabilities({ requestId: rid(), node: 'node2', hotAddSupported: true });
      expect((await c.admin.listNodes({})).nodes.find((n) => n.name === 'node2')).to.deep.include({ hypervisorEnabled: true, hotAddSupported: true });
      expectSucceeded(await create(c, 'vm2', '/mnt/hot'));
      expectSucceeded(await remove(c, 'vm2', '/mnt/hot'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('no free SCSI location on vm4 (1 x 2): the third CreateDisk is RESOURCE_EXHAUSTED and changes nothing', async () => {
      expectSucceeded(await create(c, 'vm4', '/s1'));
      expectSucceeded(await create(c, 'vm4', '/s2'));
      const before = await snapshot(c);
      await expectStatus(c.guest('vm4').createDisk(createReq({ mountPath: '/s3' })), Code.RESOURCE_EXHAUSTED, 'NO_FREE_SCSI_LOCATION');
      expect(await snapshot(c)).to.deep.equal(before);
      expectSucceeded(await remove(c, 'vm4', '/s1'));
      expectSucceeded(await create(c, 'vm4', '/s3'));
      expectSucceeded(await remove(c, 'vm4', '/s2'));
      expectSucceeded(await remove(c, 'vm4', '/s3'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('CreateVm with the settings of an existing VM returns it; a new VM gets its group, its socket and disks', async () => {
      const same = await c.admin.createVm({ requestId: rid(), id: 'vm1', name: 'web1', guestOs: GuestOs.GUEST_OS_WINDOWS, ha: true, node: 'node1', scsiControllers: 0, locationsPerController: 0 });
      expect(same.vm).to.deep.equal((await c.guest('vm1').getSelf({})).vm);
      const { vm } = await c.admin.createVm({ requestId: rid(), id: 'vm5', name: 'web1', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node3', scsiControllers: 1, locationsPerController: 4 });
      expect(vm).to.deep.include({ id: 'vm5', name: 'web1', node: 'node3', state: VmState.VM_STATE_RUNNING, scsiControllers: 1, locationsPerController: 4 });
      expect(vm!.group, 'a second VM named web1 gets a unique group name').to.equal('Virtual Machine web1 (2)');
      const g = (await groups(c)).find((x) => x.vmId === 'vm5')!;
      expect([g.name, g.ownerNode]).to.deep.equal(['Virtual Machine web1 (2)', 'node3']);
      // Its socket comes up shortly after.
      let self;
      for (let i = 0; i < 100 && !self; i++) {
        try {
          self = (await c.guest('vm5').getSelf({})).vm;
        } catch {
          await sleep(20);
        }
      }
      expect(self).to.deep.equal(vm);
      expectSucceeded(await create(c, 'vm5', '/mnt/new'));
      expectSucceeded(await remove(c, 'vm5', '/mnt/new'));
      expect(await c.violations()).to.deep.equal([]);
    });

    it('pool full: a 1 GiB disk on an array with a 64 MiB pool is RESOURCE_EXHAUSTED and changes nothing; a 16 MiB disk fits', async () => {
      const small = await startCluster({ pools: [{ name: 'aggr1', capacityBytes: 64 * 2 ** 20 }] });
      try {
        const before = await snapshot(small);
        await expectStatus(small.guest('vm1').createDisk(createReq({ mountPath: 'E:', sizeBytes: BigInt(GiB) })), Code.RESOURCE_EXHAUSTED, 'POOL_FULL');
        expect(await snapshot(small)).to.deep.equal(before);
        expectSucceeded(await create(small, 'vm1', 'E:', { sizeBytes: BigInt(16 * MiB) }));
        expect(await small.violations()).to.deep.equal([]);
      } finally {
        await small.close();
      }
    });
  });

  describe('request ids on AdminService (DESIGN.md: every mutating RPC takes one; a retry returns the first result and changes nothing)', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('CreateVm reusing a request id for a different VM is INVALID_ARGUMENT and creates nothing', async () => {
      const requestId = rid('vm');
      await c.admin.createVm({ requestId, id: 'vm5', name: 'five', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node1', scsiControllers: 0, locationsPerController: 0 });
      const before = await snapshot(c);
      await expectStatus(
        c.admin.createVm({ requestId, id: 'vm6', name: 'six', guestOs: GuestOs.GUEST_OS_LINUX, ha: false, node: 'node1', scsiControllers: 0, locationsPerController: 0 }),
        Code.INVALID_ARGUMENT,
      );
      expect(await snapshot(c)).to.deep.equal(before);
    });

    it('StopVm retried with its request id after the VM was started again changes nothing', async () => {
      const requestId = rid('stop');
      await c.admin.stopVm({ requestId, vmId: 'vm3' });
      await c.admin.startVm({ requestId: rid('start'), vmId: 'vm3' });
      await c.admin.stopVm({ requestId, vmId: 'vm3' });
      expect((await c.guest('vm3').getSelf({})).vm!.state, 'the retry must not stop the VM a second time').to.equal(VmState.VM_STATE_RUNNING);
    });

    it('SetHostCapabilities retried with its request id after a later change changes nothing', async () => {
      const requestId = rid('caps');
      await c.admin.setHostCapabilities({ requestId, node: 'node3', hotAddSupported: false });
      await c.admin.setHostCapabilities({ requestId: rid('caps'), node: 'node3', hotAddSupported: true });
      await c.admin.setHostCapabilities({ requestId, node: 'node3', hotAddSupported: false });
      const node3 = (await c.admin.listNodes({})).nodes.find((n) => n.name === 'node3')!;
      expect(node3.hotAddSupported, 'the retry must not switch hot add off again').to.equal(true);
    });

    it('StopVm with an empty or a 129-character request id is INVALID_ARGUMENT (request_id), as on every other RPC', async () => {
      await expectStatus(c.admin.stopVm({ requestId: '', vmId: 'vm3' }), Code.INVALID_ARGUMENT, 'request_id');
      await expectStatus(c.admin.stopVm({ requestId: 'r'.repeat(129), vmId: 'vm3' }), Code.INVALID_ARGUMENT, 'request_id');
      expect((await c.guest('vm3').getSelf({})).vm!.state).to.equal(VmState.VM_STATE_RUNNING);
    });
  });

  describe('names', () => {
    let c: TestCluster;
    beforeEach(async () => {
      c = await startCluster();
    });
    afterEach(async () => {
      await c.close();
    });

    it('/mnt/a b and /mnt/a/b both give "Disk VM vm2 MP mnt a b": the second gets a numeric suffix and both appear in ListGroups', async () => {
      const a = await create(c, 'vm2', '/mnt/a b');
      const b = await create(c, 'vm2', '/mnt/a/b');
      expectSucceeded(a);
      expectSucceeded(b);
      const vmGroup = (await groups(c)).find((g) => g.name === 'Virtual Machine db1')!;
      expect(vmGroup.resources.map((r) => [r.name, r.mountPath])).to.have.deep.members([
        ['Disk VM vm2 MP mnt a b', '/mnt/a b'],
        ['Disk VM vm2 MP mnt a b (2)', '/mnt/a/b'],
      ]);
      const disks = (await c.guest('vm2').listDisks({})).disks;
      expect(disks.map((d) => d.resource)).to.have.members(['Disk VM vm2 MP mnt a b', 'Disk VM vm2 MP mnt a b (2)']);
      // The LUN paths differ too (safe characters only).
      expect(a.result!.lunPath).to.not.equal(b.result!.lunPath);
      for (const p of [a.result!.lunPath, b.result!.lunPath]) expect(p).to.match(/^\/vol\/passthru\/[A-Za-z0-9_]+$/);
      expect(await c.violations()).to.deep.equal([]);
      // Removing the first frees its name for the next mount that wants it (':' separates like '/').
      expectSucceeded(await remove(c, 'vm2', '/mnt/a b'));
      const d = await create(c, 'vm2', '/mnt/a:b');
      expectSucceeded(d);
      expect((await resourceOf(c, d.result!.serial)).name).to.equal('Disk VM vm2 MP mnt a b');
      expect(await c.violations()).to.deep.equal([]);
    });

    it('the same mount on two VMs gives two names, each with its VM id', async () => {
      expectSucceeded(await create(c, 'vm1', 'E:'));
      expectSucceeded(await create(c, 'vm3', 'E:'));
      const names = (await groups(c)).flatMap((g) => g.resources.map((r) => r.name)).sort();
      expect(names).to.deep.equal(['Disk VM vm1 MP E', 'Disk VM vm3 MP E']);
      expect(await c.violations()).to.deep.equal([]);
    });
  });

  describe('ListOperations', () => {
    let c: TestCluster;
    const ids: { vm1: string[]; vm2: string[]; failed: string[]; admin: string[] } = { vm1: [], vm2: [], failed: [], admin: [] };
    before(async () => {
      c = await startCluster();
      for (const m of ['E:', 'F:', 'G:']) ids.vm1.push((await create(c, 'vm1', m)).id);
      for (const m of ['/a', '/b']) ids.vm2.push((await create(c, 'vm2', m)).id);
      ids.vm1.push((await remove(c, 'vm1', 'G:')).id);
      await failArray(c, 'CreateLun', Code.FAILED_PRECONDITION, 1);
      const failed = await create(c, 'vm2', '/c');
      expect(stateName(failed.state)).to.equal('OPERATION_STATE_FAILED');
      ids.failed.push(failed.id);
      ids.vm2.push(failed.id);
      const lun = await arrayLun(c, '/vol/extra/l');
      ids.admin.push((await addAvailable(c, lun.path)).id);
    });
    after(async () => {
      await c.close();
    });

    it('page_size 2, following next_page_token until it is empty, lists every operation once, in id order', async () => {
      const pages: number[] = [];
      const seen: string[] = [];
      let pageToken = '';
      do {
        const page = await c.admin.listOperations({ vmId: '', state: 0, pageSize: 2, pageToken });
        expect(page.operations.length).to.be.at.most(2);
        pages.push(page.operations.length);
        seen.push(...page.operations.map((o) => o.id));
        pageToken = page.nextPageToken;
      } while (pageToken !== '');
      const all = [...ids.vm1, ...ids.vm2, ...ids.admin];
      expect(seen).to.have.length(all.length);
      expect([...seen].sort()).to.deep.equal([...all].sort());
      expect(seen).to.deep.equal([...seen].sort());
      expect(pages.slice(0, -1).every((n) => n === 2)).to.equal(true);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('filters by vm_id and by state, alone and together, and pages through a filter', async () => {
      expect((await allOperations(c, { vmId: 'vm1' })).map((o) => o.id).sort()).to.deep.equal([...ids.vm1].sort());
      expect((await allOperations(c, { vmId: 'vm2', pageSize: 1 })).map((o) => o.id).sort()).to.deep.equal([...ids.vm2].sort());
      expect((await allOperations(c, { state: OperationState.OPERATION_STATE_FAILED })).map((o) => o.id)).to.deep.equal(ids.failed);
      expect((await allOperations(c, { vmId: 'vm1', state: OperationState.OPERATION_STATE_FAILED }))).to.deep.equal([]);
      expect((await allOperations(c, { vmId: 'vm2', state: OperationState.OPERATION_STATE_SUCCEEDED, pageSize: 1 })).map((o) => o.id).sort()).to.deep.equal(ids.vm2.filter((i) => !ids.failed.includes(i)).sort());
      expect((await allOperations(c, { state: OperationState.OPERATION_STATE_RUNNING }))).to.deep.equal([]);
      expect(await allOperations(c, { vmId: 'vm4' })).to.deep.equal([]);
      const succeeded = await allOperations(c, { state: OperationState.OPERATION_STATE_SUCCEEDED, pageSize: 3 });
      expect(succeeded.every((o) => o.state === OperationState.OPERATION_STATE_SUCCEEDED)).to.equal(true);
      expect(succeeded).to.have.length(ids.vm1.length + ids.vm2.length + ids.admin.length - ids.failed.length);
    });

    it('page_size 0 means the default (100): one page holds them all', async () => {
      const page = await c.admin.listOperations({ vmId: '', state: 0, pageSize: 0, pageToken: '' });
      expect(page.operations).to.have.length(ids.vm1.length + ids.vm2.length + ids.admin.length);
      expect(page.nextPageToken).to.equal('');
    });

    it('the operations a listing returns are the same records GetOperation returns', async () => {
      for (const o of await allOperations(c)) expect((await c.admin.getOperation({ operationId: o.id })).operation).to.deep.equal(o);
    });
  });
});
