/**
 * The crash-safety proof for the host agent's workflows, with real processes: a
 * `host-agent serve` started with the hidden `--crash-at [kind:]step@point` flag SIGKILLs
 * itself at one point of one step of CreateDisk or RemoveDisk (before the step is journaled
 * as running, after its outbound calls but before its result is journaled, right after it
 * is journaled done). A host agent started again without the flag on the same data dir must
 * settle the operation by DESIGN.md's commit-point rule: roll back before the commit point
 * (FAILED, ABORTED, nothing of it left), forward after it (SUCCEEDED, complete), with the
 * cluster model and the array's maps agreeing and no temporary group left. A retry with the
 * same request id gets the same operation back.
 *
 * Also: a plain SIGKILL (no flag) with 16 CreateDisk in flight, and a CreateLun that the
 * array still holds when the process dies and runs after the restarted agent rolled back.
 *
 * One storage-sim (faults enabled) serves the whole file; every case has its own data dir,
 * cluster name, node names (so its own igroups on the array) and array volume.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { connect, type PromiseClient } from '../../common/client.js';
import {
  AdminServiceClient,
  DiskSharing,
  GroupKind,
  GuestServiceClient,
  OperationKind,
  OperationState,
  ResourceState,
  StepState,
  type Disk,
  type Operation,
  type Vm,
} from '../../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient, FaultTiming, StorageArrayServiceClient, type LunMap } from '../../proto/gen/passthru/storage/v1/storage.js';
import {
  exitWithin,
  pollUntil,
  sleep,
  startHostAgent,
  threeNodeCluster,
  writeClusterFile,
  type ClusterFileShape,
} from '../support/host-process.js';
import { startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

const MiB = 1024 * 1024;
const DISK_BYTES = 4 * MiB;

const CREATE_STEPS = ['lun.create', 'lun.map', 'peers.map', 'resource.create', 'scsi.attach', 'resource.offline', 'resource.online', 'group.delete'] as const;
const REMOVE_STEPS = ['group.create', 'resource.offline', 'scsi.detach', 'resource.online', 'peers.unmap', 'lun.unmap', 'lun.delete', 'group.delete'] as const;
const POINTS = ['before', 'during', 'after'] as const;
type Point = (typeof POINTS)[number];
type Kind = 'create_disk' | 'remove_disk';

/** The step whose "done" is the commit point (DESIGN.md). */
const COMMIT: Record<Kind, string> = { create_disk: 'resource.online', remove_disk: 'scsi.detach' };
const STEPS: Record<Kind, readonly string[]> = { create_disk: CREATE_STEPS, remove_disk: REMOVE_STEPS };

/** Whether a crash at this point leaves the operation past its commit point. */
function pastCommit(kind: Kind, step: string, point: Point): boolean {
  const steps = STEPS[kind];
  const i = steps.indexOf(step);
  const c = steps.indexOf(COMMIT[kind]);
  return i > c || (i === c && point === 'after');
}

/** The VMs of threeNodeCluster, with a mount each. */
const VMS = [
  { id: 'vm1', node: 0, mount: 'E:', ha: true, label: 'Windows HA VM' },
  { id: 'vm2', node: 1, mount: '/mnt/data', ha: true, label: 'Linux HA VM' },
  { id: 'vm3', node: 2, mount: 'F:', ha: false, label: 'Windows non-HA VM' },
] as const;

const json = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x));
const final = (s: OperationState): boolean => s === OperationState.OPERATION_STATE_SUCCEEDED || s === OperationState.OPERATION_STATE_FAILED;
const CALL = { timeoutMs: 10_000 };
/** How long an injected fault holds an array call. */
const HOLD_MS = 300;

type Admin = PromiseClient<AdminServiceClient>;
type Guest = PromiseClient<GuestServiceClient>;
type Storage = PromiseClient<StorageArrayServiceClient>;

describe('host-agent process: SIGKILL at each point of each workflow step, then restart on the same data dir', function () {
  this.timeout(60_000);
  const root = tempDir('passthru-hcrash-');
  let sim: ServiceProcess;
  let storage: Storage;
  let faults: PromiseClient<FaultInjectionServiceClient>;
  /** What a case started, stopped in afterEach whatever happened. */
  const procs = new Set<ServiceProcess>();
  const clients = new Set<{ close(): void }>();
  let caseNo = 0;

  before(async () => {
    sim = await startStorageSim(join(root.path, 'array'), ['--enable-faults']);
    storage = connect(StorageArrayServiceClient, sim.address, CALL);
    faults = connect(FaultInjectionServiceClient, sim.address, CALL);
  });

  afterEach(async () => {
    await faults.clearFaults({});
    for (const c of clients) c.close();
    clients.clear();
    await Promise.all([...procs].map((p) => p.kill()));
    procs.clear();
  });

  after(async () => {
    storage?.close();
    faults?.close();
    await sim?.stop();
    root.remove();
  });

  /** One case's world: data dir, cluster file, the host agent of the moment and clients on it. */
  class Host {
    readonly dir: string;
    readonly dataDir: string;
    readonly cluster: ClusterFileShape;
    readonly clusterPath: string;
    agent!: ServiceProcess;
    admin!: Admin;
    vms = new Map<string, Vm>();
    private guests = new Map<string, Guest>();

    constructor(readonly name: string) {
      this.dir = join(root.path, name);
      this.dataDir = join(this.dir, 'host');
      mkdirSync(this.dir, { recursive: true });
      this.cluster = threeNodeCluster(name, `crash_${name.replace(/-/g, '_')}`);
      this.clusterPath = writeClusterFile(this.dir, this.cluster);
    }

    node(i: number): { name: string; initiator: string } {
      return this.cluster.nodes[i]!;
    }

    async start(crashAt?: string): Promise<void> {
      this.closeClients();
      this.agent = await startHostAgent({
        storage: sim.address,
        dataDir: this.dataDir,
        cluster: this.clusterPath,
        crashAt,
        extra: ['--array-attempts', '3'],
      });
      procs.add(this.agent);
      this.admin = this.track(connect(AdminServiceClient, this.agent.address, CALL));
      this.vms = new Map((await this.admin.listVms({ node: '' })).vms.map((v) => [v.id, v]));
    }

    /** The VM's own GuestService, at the endpoint AdminService.ListVms gives. */
    guest(vmId: string): Guest {
      let g = this.guests.get(vmId);
      if (!g) {
        const vm = this.vms.get(vmId);
        if (!vm) throw new Error(`no VM ${vmId} in ListVms`);
        expect(vm.guestEndpoint).to.match(/^unix:\//);
        this.guests.set(vmId, (g = this.track(connect(GuestServiceClient, vm.guestEndpoint, CALL))));
      }
      return g;
    }

    private track<T extends { close(): void }>(c: T): T {
      clients.add(c);
      return c;
    }

    closeClients(): void {
      for (const g of this.guests.values()) {
        g.close();
        clients.delete(g);
      }
      this.guests.clear();
      if (this.admin) {
        this.admin.close();
        clients.delete(this.admin);
      }
    }

    /** SIGTERM; a clean stop exits 0. */
    async stop(): Promise<void> {
      this.closeClients();
      expect(await this.agent.stop(), `exit code of host-agent ${this.name} after SIGTERM`).to.equal(0);
      procs.delete(this.agent);
    }

    /** Waits for the crash the flag asked for: the process ends by SIGKILL. */
    async crashed(spec: string): Promise<void> {
      const exit = await exitWithin(this.agent.child, 15_000, `--crash-at ${spec}`);
      procs.delete(this.agent);
      this.closeClients();
      expect(exit, `how host-agent ended with --crash-at ${spec}; its log:\n${this.agent.stderr().slice(-3000)}`).to.deep.equal({ code: null, signal: 'SIGKILL' });
      const line = this.agent.stderr().split('\n').find((l) => l.includes('crashing on purpose (--crash-at)'));
      expect(line, `host-agent's log with --crash-at ${spec}`).to.not.equal(undefined);
      const { step, point } = JSON.parse(line!) as { step: string; point: string };
      expect(`${step}@${point}`, 'where host-agent says it crashed').to.equal(spec.replace(/^[a-z_]+:/, ''));
    }

    async settle(vmId: string, opId: string): Promise<Operation> {
      const g = this.guest(vmId);
      const r = await pollUntil(() => g.getOperation({ operationId: opId }), (x) => final(x.operation!.state), 20_000, `operation ${opId} did not end`);
      return r.operation!;
    }

    volumePrefix(): string {
      return `/vol/${this.cluster.volume}/`;
    }

    async lunsOnArray(): Promise<{ serial: string; uuid: string; path: string }[]> {
      return (await storage.listLuns({ pathPrefix: this.volumePrefix(), pageSize: 1000, pageToken: '' })).luns;
    }

    /** Every node igroup's maps, by node name. */
    async mapsByNode(): Promise<Record<string, { serial: string; lunId: number }[]>> {
      const out: Record<string, { serial: string; lunId: number }[]> = {};
      for (const n of this.cluster.nodes) {
        const maps: LunMap[] = (await storage.listLunMaps({ lun: '', igroup: n.name, pageSize: 1000, pageToken: '' })).maps;
        out[n.name] = maps.map((m) => ({ serial: m.serial, lunId: m.lunId })).sort((a, b) => a.serial.localeCompare(b.serial));
      }
      return out;
    }

    async temporaryGroups(): Promise<string[]> {
      return (await this.admin.listGroups({ kind: GroupKind.GROUP_KIND_TEMPORARY })).groups.map((g) => g.name);
    }

    async vmGroupResources(vmId: string): Promise<{ serial: string; state: ResourceState }[]> {
      const name = this.vms.get(vmId)!.group;
      const g = (await this.admin.listGroups({ kind: GroupKind.GROUP_KIND_VM })).groups.find((x) => x.name === name);
      expect(g, `VM ${vmId}'s group ${name}`).to.not.equal(undefined);
      return g!.resources.map((r) => ({ serial: r.serial, state: r.state }));
    }

    async expectConsistent(): Promise<void> {
      const violations = (await this.admin.checkInvariants({})).violations;
      expect(violations, `CheckInvariants: ${json(violations)}`).to.deep.equal([]);
      expect(await this.temporaryGroups(), 'temporary groups left').to.deep.equal([]);
    }

    /** The array's maps are exactly `disk` on `nodes` (nothing else on any node of this cluster). */
    async expectMaps(disk: { serial: string; lunId: number } | undefined, nodes: string[]): Promise<void> {
      const want: Record<string, { serial: string; lunId: number }[]> = {};
      for (const n of this.cluster.nodes) want[n.name] = disk && nodes.includes(n.name) ? [{ serial: disk.serial, lunId: disk.lunId }] : [];
      expect(await this.mapsByNode(), 'LUN maps per node igroup').to.deep.equal(want);
    }
  }

  /** Sends a request whose reply the crash may cut off: the operation, or undefined when the process died first. */
  async function sendThroughCrash(call: () => Promise<{ operation?: Operation }>): Promise<Operation | undefined> {
    try {
      return (await call()).operation;
    } catch (err) {
      expect((err as ServiceError).code, `a request cut off by the crash: ${(err as Error).message}`).to.equal(Code.UNAVAILABLE);
      return undefined;
    }
  }

  /**
   * After the restart: the request sent again with its request id returns the one operation
   * this VM has of that kind (the one the first reply named, if it came), and again once ended.
   */
  async function sameOperationOnRetry(h: Host, vmId: string, kind: OperationKind, first: Operation | undefined, resend: () => Promise<{ operation?: Operation }>): Promise<Operation> {
    const again = (await resend()).operation!;
    const ofKind = (await h.admin.listOperations({ vmId, state: 0, pageSize: 0, pageToken: '' })).operations.filter((o) => o.kind === kind);
    expect(ofKind.map((o) => o.id), `VM ${vmId}'s operations of kind ${OperationKind[kind]}`).to.deep.equal([again.id]);
    if (first) expect(again.id, 'operation id on retry with the same request id').to.equal(first.id);
    const op = await h.settle(vmId, again.id);
    const third = (await resend()).operation!;
    expect(third.id, 'operation id on retry once it ended').to.equal(op.id);
    expect(third.state).to.equal(op.state);
    return op;
  }

  function sharingFor(vm: (typeof VMS)[number], step: string): DiskSharing {
    // A non-HA VM gets a dedicated disk, except where the step under test is skipped for one.
    return !vm.ha && step !== 'peers.map' && step !== 'peers.unmap' ? DiskSharing.DISK_SHARING_DEDICATED : DiskSharing.DISK_SHARING_SHARED;
  }

  function nodesFor(h: Host, vm: (typeof VMS)[number], sharing: DiskSharing): string[] {
    return sharing === DiskSharing.DISK_SHARING_DEDICATED ? [h.node(vm.node).name] : h.cluster.nodes.map((n) => n.name);
  }

  function expectRolledBack(op: Operation, kind: Kind): void {
    expect(op.state, `state of ${json(op)}`).to.equal(OperationState.OPERATION_STATE_FAILED);
    expect(op.committed).to.equal(false);
    expect(op.error?.code, `error of ${json(op.error)}`).to.equal(Code.ABORTED);
    expect(op.result).to.equal(undefined);
    for (const s of op.steps.slice(1)) {
      expect([StepState.STEP_STATE_PENDING, StepState.STEP_STATE_SKIPPED, StepState.STEP_STATE_UNDONE], `${kind} step ${s.name} after roll-back: ${StepState[s.state]}`).to.include(s.state);
    }
  }

  function expectRolledForward(op: Operation, kind: Kind): void {
    expect(op.state, `state of ${json(op)}`).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    expect(op.committed).to.equal(true);
    expect(op.error).to.equal(undefined);
    for (const s of op.steps) {
      expect([StepState.STEP_STATE_DONE, StepState.STEP_STATE_SKIPPED], `${kind} step ${s.name} after roll-forward: ${StepState[s.state]}`).to.include(s.state);
    }
  }

  /** Everything of the VM's one disk, as the guest, the cluster and the array see it. */
  async function expectDiskAttached(h: Host, vm: (typeof VMS)[number], disk: Disk, nodes: string[]): Promise<void> {
    const disks = (await h.guest(vm.id).listDisks({})).disks;
    expect(disks.map((d) => ({ serial: d.serial, address: d.address, lunId: d.lunId, state: d.resourceState, sharing: d.sharing })), 'ListDisks').to.deep.equal([
      { serial: disk.serial, address: disk.address, lunId: disk.lunId, state: ResourceState.RESOURCE_STATE_ONLINE, sharing: disk.sharing },
    ]);
    const bus = (await h.guest(vm.id).rescanBus({})).devices;
    expect(bus.map((d) => d.serial), 'RescanBus').to.deep.equal([disk.serial]);
    expect(await h.vmGroupResources(vm.id), "the VM group's resources").to.deep.equal([{ serial: disk.serial, state: ResourceState.RESOURCE_STATE_ONLINE }]);
    const luns = await h.lunsOnArray();
    expect(luns.map((l) => l.serial), `LUNs under ${h.volumePrefix()}`).to.deep.equal([disk.serial]);
    await h.expectMaps({ serial: disk.serial, lunId: disk.lunId }, nodes);
    const reservation = await storage.readReservation({ lun: luns[0]!.uuid });
    expect(reservation.holderInitiator, 'reservation holder').to.equal(h.node(vm.node).initiator);
  }

  /** Nothing of a disk on the VM, in the cluster or on the array. */
  async function expectNoDisk(h: Host, vm: (typeof VMS)[number]): Promise<void> {
    expect((await h.guest(vm.id).listDisks({})).disks, 'ListDisks').to.deep.equal([]);
    expect((await h.guest(vm.id).rescanBus({})).devices, 'RescanBus').to.deep.equal([]);
    expect(await h.vmGroupResources(vm.id), "the VM group's resources").to.deep.equal([]);
    expect((await h.lunsOnArray()).map((l) => l.path), `LUNs under ${h.volumePrefix()}`).to.deep.equal([]);
    await h.expectMaps(undefined, []);
  }

  /** Whether the crash came after `target`'s outbound calls (at or past its "during"). */
  function reached(kind: Kind, step: string, point: Point, target: string): boolean {
    const i = STEPS[kind].indexOf(step);
    const t = STEPS[kind].indexOf(target);
    return i > t || (i === t && point !== 'before');
  }

  /**
   * What the array holds between the crash and the restart: proof that the process died
   * where the flag said (e.g. "during" lun.create: the LUN exists, the journal does not know).
   */
  async function expectArrayAtCrash(h: Host, kind: Kind, step: string, point: Point, vm: (typeof VMS)[number], nodes: string[]): Promise<void> {
    const at = (target: string): boolean => reached(kind, step, point, target);
    const lunThere = kind === 'create_disk' ? at('lun.create') : !at('lun.delete');
    const mapsThere = kind === 'create_disk' ? at('lun.map') : !at('lun.unmap');
    const reserved = kind === 'create_disk' ? at('resource.online') : !at('resource.online');
    const luns = await h.lunsOnArray();
    const where = `at the crash (${kind}:${step}@${point})`;
    expect(luns.length, `LUNs under ${h.volumePrefix()} ${where}`).to.equal(lunThere ? 1 : 0);
    const maps = Object.entries(await h.mapsByNode()).filter(([, m]) => m.length > 0).map(([node]) => node);
    expect(maps, `node igroups holding a map ${where}`).to.deep.equal(mapsThere ? nodes : []);
    if (lunThere) {
      const r = await storage.readReservation({ lun: luns[0]!.uuid });
      expect(r.holderInitiator, `reservation holder ${where}`).to.equal(reserved ? h.node(vm.node).initiator : '');
    }
  }

  // The VM turns with the step and the point, so every step and every point meets each VM
  // (Windows HA, Linux HA, Windows non-HA with a dedicated disk) somewhere in the matrix.
  const cases: { kind: Kind; step: string; point: Point; vm: (typeof VMS)[number] }[] = [];
  for (const kind of ['create_disk', 'remove_disk'] as const) {
    STEPS[kind].forEach((step, s) => POINTS.forEach((point, p) => cases.push({ kind, step, point, vm: VMS[(s + p) % VMS.length]! })));
  }

  for (const { kind, step, point, vm } of cases) {
    const forward = pastCommit(kind, step, point);
    const spec = `${kind}:${step}@${point}`;
    const outcome =
      kind === 'create_disk'
        ? forward
          ? 'rolls forward: SUCCEEDED and the disk fully attached'
          : 'rolls back: FAILED (ABORTED) and no LUN, map, slot, resource or group left'
        : forward
          ? 'rolls forward: SUCCEEDED and the disk, its maps and its LUN gone'
          : 'rolls back: FAILED (ABORTED) and the disk still attached and usable';
    const sharing = sharingFor(vm, step);
    const what = `${vm.label}, ${sharing === DiskSharing.DISK_SHARING_DEDICATED ? 'dedicated' : 'shared'} disk`;
    it(`${kind === 'create_disk' ? 'CreateDisk' : 'RemoveDisk'} (${what}) killed ${point} ${step} ${outcome}; invariants hold and a retry gets the same operation`, async () => {
      const n = caseNo++;
      const h = new Host(`k${n}`);
      const nodes = nodesFor(h, vm, sharing);
      const createReq = { requestId: `create-${n}`, mountPath: vm.mount, sizeBytes: BigInt(DISK_BYTES), sharing };

      if (kind === 'create_disk') {
        await h.start(spec);
        const first = await sendThroughCrash(() => h.guest(vm.id).createDisk(createReq));
        await h.crashed(spec);
        await expectArrayAtCrash(h, kind, step, point, vm, nodes);
        await h.start();
        const op = await sameOperationOnRetry(h, vm.id, OperationKind.OPERATION_KIND_CREATE_DISK, first, () => h.guest(vm.id).createDisk(createReq));
        if (forward) {
          expectRolledForward(op, kind);
          const disks = (await h.guest(vm.id).listDisks({})).disks;
          expect(disks.map((d) => d.serial)).to.deep.equal([op.result!.serial]);
          expect(disks[0]!.address).to.deep.equal(op.result!.address);
          expect(disks[0]!.lunId).to.equal(op.result!.lunId);
          await expectDiskAttached(h, vm, disks[0]!, nodes);
          await h.expectConsistent();
          return;
        }
        expectRolledBack(op, kind);
        await expectNoDisk(h, vm);
        await h.expectConsistent();
        // Nothing of it is held either: a new request at the same mount gets the first SCSI
        // location, the first LUN id and the resource name without a suffix.
        const again = await h.settle(vm.id, (await h.guest(vm.id).createDisk({ ...createReq, requestId: `create-again-${n}` })).operation!.id);
        expect(again.state, json(again)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
        const disk = (await h.guest(vm.id).listDisks({})).disks[0]!;
        expect({ address: disk.address, lunId: disk.lunId }).to.deep.equal({ address: { controller: 0, location: 0 }, lunId: 0 });
        expect(disk.resource, 'resource name').to.not.match(/\(\d+\)$/);
        await expectDiskAttached(h, vm, disk, nodes);
        await h.expectConsistent();
        return;
      }

      // RemoveDisk: the disk is made by a host agent without the flag, which then stops cleanly.
      await h.start();
      const made = await h.settle(vm.id, (await h.guest(vm.id).createDisk(createReq)).operation!.id);
      expect(made.state, json(made)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      const disk = (await h.guest(vm.id).listDisks({})).disks[0]!;
      await expectDiskAttached(h, vm, disk, nodes);
      await h.stop();

      await h.start(spec);
      const removeReq = { requestId: `remove-${n}`, mountPath: vm.mount, deleteLun: true };
      const first = await sendThroughCrash(() => h.guest(vm.id).removeDisk(removeReq));
      await h.crashed(spec);
      await expectArrayAtCrash(h, kind, step, point, vm, nodes);
      await h.start();
      const op = await sameOperationOnRetry(h, vm.id, OperationKind.OPERATION_KIND_REMOVE_DISK, first, () => h.guest(vm.id).removeDisk(removeReq));
      if (forward) {
        expectRolledForward(op, kind);
        await expectNoDisk(h, vm);
        await h.expectConsistent();
        return;
      }
      expectRolledBack(op, kind);
      await expectDiskAttached(h, vm, disk, nodes);
      await h.expectConsistent();
      // Usable: the VM's node reads back what it writes through the array's masking and
      // reservation, and the disk can still be removed (no lock or state left behind).
      const lun = (await h.lunsOnArray())[0]!;
      const initiator = h.node(vm.node).initiator;
      const data = randomBytes(4096);
      await storage.writeBlocks({ requestId: `write-${n}`, lun: lun.uuid, initiator, offsetBytes: 0n, data });
      const read = await storage.readBlocks({ lun: lun.uuid, initiator, offsetBytes: 0n, lengthBytes: data.length });
      expect(Buffer.from(read.data).equals(data), 'data read back through the VM node').to.equal(true);
      const removed = await h.settle(vm.id, (await h.guest(vm.id).removeDisk({ ...removeReq, requestId: `remove-again-${n}` })).operation!.id);
      expect(removed.state, json(removed)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      await expectNoDisk(h, vm);
      await h.expectConsistent();
    });
  }

  it('SIGKILL with 16 CreateDisk in flight on different mounts: after a restart each is SUCCEEDED or FAILED (ABORTED), invariants hold and every SUCCEEDED disk is listed', async () => {
    const h = new Host('burst');
    await h.start();
    const letters = 'EFGHIJKLMNOPQRSTUVWXYZ';
    const reqs = Array.from({ length: 16 }, (_x, i) => {
      const vm = VMS[i % VMS.length]!;
      const mount = vm.id === 'vm2' ? `/mnt/d${i}` : `${letters[i]}:`;
      const sharing = !vm.ha && i % 2 === 0 ? DiskSharing.DISK_SHARING_DEDICATED : DiskSharing.DISK_SHARING_SHARED;
      return { vm, req: { requestId: `burst-${i}`, mountPath: mount, sizeBytes: BigInt(DISK_BYTES), sharing } };
    });
    // Hold some operations at the array (MapLun of lun.map, Reserve of the commit step) so the
    // kill finds them there while others have already ended. A held call still runs on the
    // array after the kill, as a real array would; the restart waits until they all have.
    await faults.injectFault({ method: 'MapLun', count: 6, code: 0, message: '', delayMs: HOLD_MS, timing: FaultTiming.FAULT_TIMING_BEFORE });
    await faults.injectFault({ method: 'Reserve', count: 5, code: 0, message: '', delayMs: HOLD_MS, timing: FaultTiming.FAULT_TIMING_BEFORE });
    const started = await Promise.all(reqs.map(({ vm, req }) => h.guest(vm.id).createDisk(req).then((r) => r.operation!)));
    // Kill once a few have ended, so the kill finds operations on both sides of the commit point.
    const before = (
      await pollUntil(
        () => h.admin.listOperations({ vmId: '', state: 0, pageSize: 0, pageToken: '' }),
        (r) => r.operations.filter((o) => final(o.state)).length >= 4,
        20_000,
        'four of the 16 operations did not end',
      )
    ).operations;
    const killedAt = Date.now();
    await h.agent.kill();
    procs.delete(h.agent);
    const unfinished = before.filter((o) => !final(o.state)).length;
    await sleep(2 * HOLD_MS);
    await faults.clearFaults({});
    await h.start();
    const ended: Operation[] = [];
    for (const [i, { vm, req }] of reqs.entries()) {
      const again = (await h.guest(vm.id).createDisk(req)).operation!;
      expect(again.id, `request ${req.requestId} retried after the restart`).to.equal(started[i]!.id);
      ended.push(await h.settle(vm.id, again.id));
    }
    const succeeded = ended.filter((o) => o.state === OperationState.OPERATION_STATE_SUCCEEDED);
    const failed = ended.filter((o) => o.state === OperationState.OPERATION_STATE_FAILED);
    const settledByRecovery = ended.filter((o) => o.updateTime!.getTime() >= killedAt).length;
    expect(unfinished, 'operations still running when the process was killed').to.be.greaterThan(0);
    expect(settledByRecovery, 'operations settled by the restarted host agent').to.be.greaterThan(0);
    expect(succeeded.length + failed.length, 'operations that ended').to.equal(16);
    for (const o of failed) {
      expect(o.error?.code, `error of ${o.id} ${json(o.error)}`).to.equal(Code.ABORTED);
      expect(o.committed, `${o.id} failed though committed`).to.equal(false);
    }
    await h.expectConsistent();
    for (const [i, o] of ended.entries()) {
      const { vm, req } = reqs[i]!;
      const disks = (await h.guest(vm.id).listDisks({})).disks;
      const listed = disks.filter((d) => d.mountPath === req.mountPath);
      if (o.state === OperationState.OPERATION_STATE_SUCCEEDED) {
        expect(listed.map((d) => d.serial), `ListDisks of ${vm.id} at ${req.mountPath}`).to.deep.equal([o.result!.serial]);
      } else {
        expect(listed, `ListDisks of ${vm.id} at ${req.mountPath} after a rolled-back create`).to.deep.equal([]);
      }
    }
    const luns = (await h.lunsOnArray()).map((l) => l.serial).sort();
    expect(luns, `LUNs under ${h.volumePrefix()}`).to.deep.equal(succeeded.map((o) => o.result!.serial).sort());
    // The array's maps: each SUCCEEDED disk on every node (shared) or on its VM's node (dedicated), at its LUN id; nothing else.
    const want: Record<string, { serial: string; lunId: number }[]> = Object.fromEntries(h.cluster.nodes.map((n) => [n.name, []]));
    for (const [i, o] of ended.entries()) {
      if (o.state !== OperationState.OPERATION_STATE_SUCCEEDED) continue;
      const { vm, req } = reqs[i]!;
      for (const node of nodesFor(h, vm, req.sharing)) want[node]!.push({ serial: o.result!.serial, lunId: o.result!.lunId });
    }
    for (const m of Object.values(want)) m.sort((a, b) => a.serial.localeCompare(b.serial));
    expect(await h.mapsByNode(), 'LUN maps per node igroup').to.deep.equal(want);

    // What the rolled-back ones held (mounts, LUN ids, SCSI locations, names) is free again.
    const retried = await Promise.all(
      [...ended.entries()]
        .filter(([, o]) => o.state === OperationState.OPERATION_STATE_FAILED)
        .map(async ([i]) => {
          const { vm, req } = reqs[i]!;
          const op = (await h.guest(vm.id).createDisk({ ...req, requestId: `${req.requestId}-again` })).operation!;
          return h.settle(vm.id, op.id);
        }),
    );
    expect(retried.map((o) => OperationState[o.state])).to.deep.equal(retried.map(() => 'OPERATION_STATE_SUCCEEDED'));
    await h.expectConsistent();
    expect((await h.lunsOnArray()).length, 'LUNs once every mount has its disk').to.equal(16);
  });
  it('a CreateLun the array still holds when host-agent is SIGKILLed lands after the roll-back and must not leave an orphan LUN', async () => {
    // DESIGN.md: "No orphan LUN, map, slot, resource or temporary group survives either
    // path." A call the dead process sent is not undone by its death: a slow array runs it
    // when it gets to it, here after the restarted host agent has rolled the operation back.
    const h = new Host('zombie');
    await h.start();
    const vm = VMS[0];
    await faults.injectFault({ method: 'CreateLun', count: 1, code: 0, message: '', delayMs: 1500, timing: FaultTiming.FAULT_TIMING_BEFORE });
    const op = (await h.guest(vm.id).createDisk({ requestId: 'zombie-1', mountPath: vm.mount, sizeBytes: BigInt(DISK_BYTES), sharing: DiskSharing.DISK_SHARING_SHARED })).operation!;
    await pollUntil(() => h.admin.getOperation({ operationId: op.id }), (r) => r.operation!.steps.find((x) => x.name === 'lun.create')?.state === StepState.STEP_STATE_RUNNING, 5000, 'lun.create did not start');
    await h.agent.kill();
    procs.delete(h.agent);
    const killedAt = Date.now();
    await h.start();
    const ended = await h.settle(vm.id, op.id);
    expectRolledBack(ended, 'create_disk');
    // The held CreateLun lands about 1.5 s after it was sent; give the host agent time after that.
    await sleep(Math.max(0, killedAt + 1500 - Date.now()));
    const left = await pollUntil(
      async () => ({ luns: (await h.lunsOnArray()).map((l) => l.path), violations: (await h.admin.checkInvariants({})).violations }),
      (x) => x.luns.length === 0 && x.violations.length === 0,
      8000,
      `the LUN of rolled-back operation ${op.id} is still on the array`,
    ).catch((err: Error) => err);
    expect(left instanceof Error ? left.message : '', 'orphan left by a call the dead host agent had in flight').to.equal('');
  });
});
