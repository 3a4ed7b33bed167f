/**
 * The host agent's domain: the cluster as one object, with what a guest and an
 * administrator may ask of it. No gRPC here: the services decode, call these methods and
 * map the domain errors they throw.
 */
import { createHash } from 'node:crypto';
import { EventEmitter } from 'node:events';
import {
  AbortedError,
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  ResourceExhaustedError,
  UnavailableError,
} from '../common/errors.js';
import { isInside, parseDrivePath, volumeOf, type DrivePath } from '../common/drive-path.js';
import type { Logger } from '../common/logging.js';
import type { PoolInfo, StorageArray } from './array.js';
import { checkQuota, DEFAULT_GUEST_LIMITS, RequestRate, type GuestLimits } from './limits.js';
import { checkScsiShape, checkVmId, checkVmName, DEFAULT_CONTROLLERS, DEFAULT_LOCATIONS, NODE_NAME_RE, VM_ID_RE, type ClusterFile } from './cluster-file.js';
import { checkCanHotPlug, SimHypervisor, type Hypervisor } from './hypervisor.js';
import { Failover } from './failover.js';
import { checkInvariants, type Violation } from './invariants.js';
import { LunIds } from './lun-ids.js';
import type {
  GuestOsName,
  NodeRecord,
  OperationKindName,
  OperationParams,
  OperationRecord,
  OperationStateName,
  RequestRecord,
  ResourceRecord,
  Sharing,
  VmRecord,
} from './model.js';
import { requestKey } from './model.js';
import { AVAILABLE_STORAGE, CLUSTER_GROUP, newOperationId, OPERATION_ID_RE, unique, vmGroupName } from './names.js';
import type { HostState } from './state.js';
import { Engine, type BackoffPolicy, type OperationListener, type StepContext, type StepHook, type WorkflowDef } from './workflow/engine.js';
import {
  addAvailableWorkflow,
  createValidate,
  type Env,
  lunLock,
  mountLock,
  provisionWorkflow,
  removalWorkflow,
  removeAvailableWorkflow,
} from './workflow/steps.js';

export const MIN_DISK_BYTES = 4 * 1024 * 1024;
export const MAX_DISK_BYTES = 16 * 1024 ** 4;
const MAX_REQUEST_ID = 128;
/** Request ids are kept at least this long (DESIGN.md says 24 hours). */
export const REQUEST_RETENTION_MS = 48 * 3600_000;
/** How long after a create or add failed a command it sent may still reach the array (a slow array runs what it received). */
const LATE_COMMAND_WINDOW_MS = 10 * 60_000;

export type Scope = { vmId: string } | 'admin';
const scopeKey = (s: Scope): string => (s === 'admin' ? 'admin' : `vm:${s.vmId}`);

export interface AgentOptions {
  state: HostState;
  array: StorageArray;
  logger: Logger;
  cluster: { name: string; volume: string };
  hypervisor?: Hypervisor;
  backoff?: BackoffPolicy;
  /** Called at each step point (tests stop the process there). */
  hook?: StepHook;
  /** Hears every step event of every operation, and each operation's end (metrics). */
  observe?: OperationListener;
  /** What each VM may ask of the host (defaults: DEFAULT_GUEST_LIMITS). */
  limits?: Partial<GuestLimits>;
}

export interface DiskView {
  resource: ResourceRecord;
  address: { controller: number; location: number };
}


/** The record with this quota, or none (the store keeps no empty field). */
function withQuota<V extends { quota?: VmRecord['quota'] }>(vm: V, quota: VmRecord['quota']): V {
  const { quota: _old, ...rest } = vm;
  return (quota ? { ...rest, quota } : rest) as V;
}

function checkRequestId(id: string): string {
  if (id === '') throw new InvalidArgumentError('request_id', 'request_id is required: any unique string (at most 128 printable ASCII characters) that a retry repeats');
  if (id.length > MAX_REQUEST_ID || !/^[\x21-\x7e]+$/.test(id)) {
    throw new InvalidArgumentError('request_id', `request_id must be 1-${MAX_REQUEST_ID} printable ASCII characters without spaces`);
  }
  return id;
}

function fingerprint(method: string, params: unknown): string {
  return createHash('sha256').update(method).update('\0').update(JSON.stringify(params)).digest('base64url');
}

export const STEPS: Record<OperationKindName, string[]> = {
  create_disk: ['validate', 'lun.find', 'lun.create', 'lun.map', 'peers.map', 'resource.create', 'scsi.attach', 'resource.offline', 'resource.online', 'group.delete'],
  connect_disk: ['validate', 'lun.find', 'lun.create', 'lun.map', 'peers.map', 'resource.create', 'scsi.attach', 'resource.offline', 'resource.online', 'group.delete'],
  remove_disk: ['validate', 'group.create', 'resource.offline', 'scsi.detach', 'resource.online', 'peers.unmap', 'lun.unmap', 'lun.delete', 'group.delete'],
  add_available_disk: ['validate', 'lun.find', 'lun.map', 'peers.map', 'resource.create'],
  remove_available_disk: ['validate', 'resource.delete', 'peers.unmap', 'lun.unmap'],
};

export class HostAgent extends EventEmitter<{ vmAdded: [VmRecord] }> {
  readonly state: HostState;
  readonly array: StorageArray;
  readonly engine: Engine<Env>;
  readonly cluster: { name: string; volume: string };
  private readonly logger: Logger;
  private readonly env: Env;
  /** False until the journal is recovered: mutations wait. */
  serving = false;
  readonly limits: GuestLimits;
  /** Each VM's request rate on its endpoint. */
  readonly requestRate: RequestRate;

  constructor(opts: AgentOptions) {
    super();
    this.limits = { ...DEFAULT_GUEST_LIMITS, ...opts.limits };
    this.requestRate = new RequestRate(this.limits);
    this.state = opts.state;
    this.array = opts.array;
    this.logger = opts.logger;
    this.cluster = opts.cluster;
    const open = (): Iterable<OperationRecord> => this.openOperations();
    this.env = {
      state: this.state,
      array: this.array,
      hypervisor: opts.hypervisor ?? new SimHypervisor(this.state),
      lunIds: new LunIds(this.state, open),
      cluster: this.cluster,
      lock: (opId, key) => this.engine.locks.set(key, opId),
      openOperations: open,
    };
    const workflows: Record<OperationKindName, WorkflowDef<Env>> = {
      create_disk: provisionWorkflow(createValidate((ctx) => this.validateAttach(ctx))),
      connect_disk: provisionWorkflow(createValidate((ctx) => this.validateAttach(ctx))),
      remove_disk: removalWorkflow(createValidate(() => undefined)),
      add_available_disk: addAvailableWorkflow(createValidate(() => undefined)),
      remove_available_disk: removeAvailableWorkflow(createValidate(() => undefined)),
    };
    this.workflows = workflows;
    this.engine = new Engine(this.state, this.env, workflows, this.logger, { backoff: opts.backoff, hook: opts.hook, observe: opts.observe });
    this.failover = new Failover(this, this.logger);
  }

  private readonly workflows: Record<OperationKindName, WorkflowDef<Env>>;

  /** Operations that have not ended (each holds at least one lock while it runs). */
  *openOperations(): Iterable<OperationRecord> {
    for (const id of new Set(this.engine.locks.values())) {
      const op = this.state.operations.get(id);
      if (op && (op.state === 'running' || op.state === 'rolling_back')) yield op;
    }
  }

  // ---------------------------------------------------------------- start-up

  /** Adds what the cluster file names and the store lacks; the store wins on everything else. */
  seed(file: ClusterFile): void {
    this.state.transact(() => {
      const meta = this.state.meta.get('cluster');
      if (!meta) this.state.meta.put({ key: 'cluster', value: { name: file.name, volume: file.volume } });
      for (const n of file.nodes) {
        if (!this.state.nodes.has(n.name)) this.state.nodes.put({ ...n, up: true });
      }
      if (!this.state.groups.has(CLUSTER_GROUP)) this.state.groups.put({ name: CLUSTER_GROUP, kind: 'cluster', owner: file.availableStorageOwner });
      if (!this.state.groups.has(AVAILABLE_STORAGE)) this.state.groups.put({ name: AVAILABLE_STORAGE, kind: 'available', owner: file.availableStorageOwner });
      for (const v of file.vms) {
        // A VM's quota follows the file at every start: an operator changes it there.
        const quota = v.maxDisks === undefined && v.maxBytes === undefined ? undefined : { ...(v.maxDisks !== undefined ? { disks: v.maxDisks } : {}), ...(v.maxBytes !== undefined ? { bytes: v.maxBytes } : {}) };
        const have = this.state.vms.get(v.id);
        if (have) {
          if (JSON.stringify(have.quota) !== JSON.stringify(quota)) this.state.vms.put(withQuota(have, quota));
          continue;
        }
        this.putNewVm(
          withQuota<Omit<VmRecord, 'group' | 'configuredDisks'>>(
            {
              id: v.id,
              name: v.name,
              guestOs: v.guestOs,
              running: v.running,
              ha: v.ha,
              node: v.node,
              controllers: v.scsiControllers,
              locationsPerController: v.locationsPerController,
            },
            quota,
          ),
        );
      }
    });
  }

  private putNewVm(v: Omit<VmRecord, 'group' | 'configuredDisks'>): VmRecord {
    const group = unique(vmGroupName(v.name), (n) => this.state.groups.has(n));
    this.state.groups.put({ name: group, kind: 'vm', owner: v.node, vmId: v.id });
    return this.state.vms.put({ ...v, group, configuredDisks: [] });
  }

  /** Every node's igroup on the array, named after the node and holding its initiator. */
  async ensureIgroups(): Promise<void> {
    for (const n of this.state.nodes.values()) {
      await this.array.ensureIgroup({ requestId: '', name: n.name, initiator: n.initiator });
    }
  }

  /** Settles the journal (back before the commit point, forward after); then mutations are served. */
  async recover(): Promise<number> {
    this.pruneRequests();
    const n = await this.engine.recover();
    await this.failover.resume();
    this.serving = true;
    // Rolled back here or by the process before (killed before its own sweeps ran), a
    // recent create or add may still have a command on its way to the array.
    const recent = Date.now() - LATE_COMMAND_WINDOW_MS;
    if ([...this.state.operations.values()].some((o) => (o.kind === 'create_disk' || o.kind === 'add_available_disk') && o.state === 'failed' && o.updateMs >= recent)) {
      this.watchForLateLuns();
    }
    return n;
  }

  private readonly timers = new Set<NodeJS.Timeout>();

  /**
   * A CreateLun the previous process sent before it died may still reach the array after
   * its operation was rolled back (an array runs a command it received, caller gone or
   * not), and so may a MapLun of AddAvailableDisk, whose LUN outlives the rollback. Sweep
   * for such LUNs and maps now and a few times over the next minute.
   */
  private watchForLateLuns(): void {
    for (const delay of [0, 1000, 2000, 4000, 8000, 16000, 32000, 64000]) {
      const t = setTimeout(() => {
        this.timers.delete(t);
        this.sweepLateLuns().catch((err: unknown) => this.logger.warn('late LUN sweep failed', { error: String(err) }));
      }, delay);
      t.unref();
      this.timers.add(t);
    }
  }

  /** Deletes LUNs of this cluster's volume made by create operations that ended FAILED. */
  async sweepLateLuns(): Promise<number> {
    let swept = 0;
    for (const l of await this.array.listLuns(`/vol/${this.cluster.volume}/`)) {
      if (this.state.resources.has(l.serial)) continue;
      const m = /_op_([0-9a-z]+)$/.exec(l.path);
      const op = m ? this.state.operations.get(`op-${m[1]}`) : undefined;
      if (!op || op.kind !== 'create_disk' || op.state !== 'failed') continue;
      await this.array.deleteLun({ requestId: `${op.id}:sweep:${l.serial}`, lun: l.uuid, force: true });
      this.logger.warn('deleted a LUN created after its operation was rolled back', { opId: op.id, lun: l.path, serial: l.serial });
      swept++;
    }
    return swept + (await this.sweepLateMaps());
  }

  /**
   * Unmaps what a MapLun of a rolled-back AddAvailableDisk mapped after its undo had run:
   * the maps to the nodes it chose, at the LUN id it chose, of a LUN no resource owns and no
   * operation works on. (Found by the chaos run: the administrator's LUN stayed mapped to
   * every node with nothing owning it.)
   */
  private async sweepLateMaps(): Promise<number> {
    let swept = 0;
    const recent = Date.now() - LATE_COMMAND_WINDOW_MS;
    for (const op of this.state.operations.values()) {
      const lun = op.data.lun;
      if (op.kind !== 'add_available_disk' || op.state !== 'failed' || op.updateMs < recent || !lun || op.data.lunId === undefined) continue;
      if (this.state.resources.has(lun.serial) || this.engine.holder(lunLock(lun.serial))) continue;
      let maps;
      try {
        maps = await this.array.listMaps({ lun: lun.uuid });
      } catch (err) {
        if (err instanceof NotFoundError) continue;
        throw err;
      }
      const late = maps.filter((m) => (op.data.nodes ?? []).includes(m.igroup) && m.lunId === op.data.lunId).map((m) => m.igroup);
      if (late.length === 0) continue;
      // No request id: unmapping is idempotent, and a map that lands again is unmapped again.
      await this.array.unmapLun({ requestId: '', lun: lun.uuid, igroups: late });
      this.logger.warn('unmapped a late map of an AddAvailableDisk rolled back', { opId: op.id, lun: lun.path, serial: lun.serial, nodes: late });
      swept++;
    }
    return swept;
  }

  private pruneRequests(): void {
    const cutoff = Date.now() - REQUEST_RETENTION_MS;
    const old = [...this.state.requests.values()].filter((r) => r.createMs < cutoff);
    if (old.length === 0) return;
    this.state.transact(() => {
      for (const r of old) this.state.requests.delete(requestKey(r.scope, r.requestId));
    });
  }

  async close(graceMs = 2000): Promise<void> {
    for (const t of this.timers) clearTimeout(t);
    this.failover.stop();
    await this.engine.drain(graceMs);
    this.array.close();
    this.state.close();
  }

  // ---------------------------------------------------------------- lookups

  vm(id: string, field = 'vm_id'): VmRecord {
    if (!VM_ID_RE.test(id)) throw new InvalidArgumentError(field, `${field} ${JSON.stringify(id.slice(0, 64))} is not a VM id: 1-32 lower-case letters, digits and hyphens`);
    const vm = this.state.vms.get(id);
    if (!vm) throw new NotFoundError('VM', id);
    return vm;
  }

  node(name: string, field = 'node'): NodeRecord {
    if (!NODE_NAME_RE.test(name)) throw new InvalidArgumentError(field, `${field} ${JSON.stringify(name.slice(0, 64))} is not a node name: 1-63 lower-case letters, digits and hyphens`);
    const n = this.state.nodes.get(name);
    if (!n) throw new NotFoundError('node', name);
    return n;
  }

  /** An operation as a caller may see it: a VM sees only its own (others are NOT_FOUND). */
  operation(scope: Scope, id: string): OperationRecord {
    if (id === '') throw new InvalidArgumentError('operation_id', 'operation_id is required: the id CreateDisk, ConnectDisk or RemoveDisk answered with');
    const op = this.engine.view(id);
    if (!op || (scope !== 'admin' && op.vmId !== scope.vmId)) throw new NotFoundError('operation', id);
    return op;
  }

  watch(scope: Scope, id: string, listener: OperationListener): () => void {
    this.operation(scope, id);
    return this.engine.subscribe(id, listener);
  }

  private requireServing(): void {
    if (!this.serving) throw new UnavailableError('the host agent is recovering its journal after a restart; retry in a moment', 'RECOVERING');
  }

  // ---------------------------------------------------------------- operations

  /** The first answer to a request id, or undefined; a reused id with other parameters is refused. */
  /** What a request id recorded, if anything; the same id with another request's fingerprint is refused. */
  private recorded(scope: Scope, requestId: string, fp: string): RequestRecord | undefined {
    const rec = this.state.requests.get(requestKey(scopeKey(scope), requestId));
    if (rec && rec.fingerprint !== fp) {
      throw new InvalidArgumentError('request_id', `request_id ${requestId} was used for a different request: use a new request id for a new request`, 'REQUEST_ID_REUSED');
    }
    return rec;
  }

  /** The operation a request id started, if any. */
  private replay(scope: Scope, requestId: string, fp: string): OperationRecord | undefined {
    const rec = this.recorded(scope, requestId, fp);
    return rec?.opId ? this.state.operations.get(rec.opId) : undefined;
  }

  private draft(kind: OperationKindName, scope: Scope, requestId: string, vmId: string, mount: DrivePath | undefined, params: OperationParams): OperationRecord {
    const now = Date.now();
    return {
      id: newOperationId(),
      kind,
      scope: scopeKey(scope),
      requestId,
      vmId,
      mountPath: mount?.path ?? '',
      mountKey: mount?.key ?? '',
      state: 'running',
      committed: false,
      steps: STEPS[kind].map((name) => ({ name, state: 'pending' as const })),
      params,
      data: {},
      createMs: now,
      updateMs: now,
      locks: [],
    };
  }

  private busy(keys: string[], what: string): void {
    for (const k of keys) {
      const holder = this.engine.holder(k);
      if (holder) throw new AbortedError(`operation ${holder} is in flight on ${what}: wait for it to end (WatchOperation), then retry`, 'OPERATION_IN_FLIGHT');
    }
  }

  /**
   * Runs step 0 (validate) on a draft, then records the operation, its request id and its
   * locks in one transaction and starts it. Whatever validate refuses fails the call and
   * leaves nothing behind.
   */
  private async begin(
    op: OperationRecord,
    fp: string,
    recheck: () => OperationRecord | undefined,
    what: string,
    /** Model checks repeated in the same tick as the recording, so concurrent calls cannot both pass. */
    final?: () => void,
  ): Promise<OperationRecord> {
    if (op.vmId !== '') this.checkOperationsInFlight(op.vmId);
    const validate = this.workflows[op.kind].steps[0]!;
    const ctx: StepContext<Env> = {
      env: this.env,
      op,
      requestId: (a) => `${op.id}:validate:${a}`,
      journal: () => {
        throw new Error('validate journals nothing');
      },
      note: () => undefined,
    };
    const start = Date.now();
    await validate.do(ctx);
    // The world may have moved while validate waited on the array: look again.
    const again = recheck();
    if (again) return again;
    this.busy(op.locks, what);
    final?.();
    const recorded: OperationRecord = {
      ...op,
      steps: op.steps.map((s, i) => (i === 0 ? { ...s, state: 'done', startMs: start, endMs: Date.now() } : s)),
    };
    this.state.transact(() => {
      this.state.operations.put(recorded);
      this.state.requests.put({ scope: op.scope, requestId: op.requestId, fingerprint: fp, opId: op.id, createMs: Date.now() });
    });
    this.engine.lock(recorded);
    this.logger.info('operation started', { opId: op.id, kind: op.kind, vmId: op.vmId, mount: op.mountPath, requestId: op.requestId });
    this.engine.start(recorded);
    return this.state.operations.get(op.id)!;
  }

  /** A VM may have so many operations running at once; a retry is answered before this. */
  private checkOperationsInFlight(vmId: string): void {
    let n = 0;
    for (const o of this.openOperations()) if (o.vmId === vmId) n++;
    if (n >= this.limits.operationsInFlight) {
      throw new ResourceExhaustedError(
        `VM ${vmId} has ${n} operations running, its limit: wait for one to end (WatchOperation), then retry`,
        'TOO_MANY_OPERATIONS',
        1000,
      );
    }
  }

  /** What step 0 of create and connect checks in the model, synchronously. */
  /** A VM whose group is moving takes no new operation until it has arrived. */
  private checkNotMoving(vm: VmRecord): void {
    const to = this.state.groups.get(vm.group)?.movingTo;
    if (to) throw new AbortedError(`VM ${vm.id} is moving to node ${to}: retry once it has arrived`, 'VM_MOVING');
  }

  private checkAttach(op: OperationRecord): void {
    const vm = this.vm(op.vmId);
    this.checkNotMoving(vm);
    const node = this.node(vm.node);
    checkCanHotPlug(this.env.hypervisor.capabilities(vm.node), vm, node);
    const mount = parseDrivePath(vm.guestOs, op.mountPath);
    const volume = volumeOf(mount);
    if (volume && volume.key !== 'C:') {
      // The volume must be a finished disk of this VM, and stay one while the folder mount is made.
      const holder = this.engine.holder(mountLock(vm.id, volume.key));
      if (holder) {
        throw new AbortedError(`operation ${holder} is in flight on ${volume.path} of VM ${vm.id}, the volume ${mount.path} sits on: wait for it to end`, 'OPERATION_IN_FLIGHT');
      }
      const disk = this.state.diskAt(vm.id, volume.key);
      if (!disk || disk.group !== vm.group) {
        throw new FailedPreconditionError(
          `${mount.path} is a folder mount point on ${volume.path}, but VM ${vm.id} has no passthru volume at ${volume.path}: mount one there first or use a folder on C:`,
          'MOUNT_VOLUME_MISSING',
        );
      }
    }
    if (op.params.sharing === 'dedicated' && vm.ha) {
      throw new FailedPreconditionError(
        `VM ${vm.id} is highly available: its disks must be shared so they can follow it to another node; leave out --dedicated`,
        'DEDICATED_ON_HA_VM',
      );
    }
    let pending = 0;
    let pendingBytes = 0;
    for (const o of this.openOperations()) {
      if (o.id === op.id || o.vmId !== vm.id || (o.kind !== 'create_disk' && o.kind !== 'connect_disk') || o.data.address) continue;
      pending++;
      pendingBytes += this.bytesOf(o);
    }
    const attached = this.state.attachmentsOf(vm.id);
    const attachedBytes = attached.reduce((sum, a) => sum + (this.state.resources.get(a.serial)?.lun.sizeBytes ?? 0), 0);
    checkQuota(
      vm.id,
      { disks: vm.quota?.disks ?? this.limits.maxDisks, bytes: vm.quota?.bytes ?? this.limits.maxBytes },
      { disks: attached.length + pending, bytes: attachedBytes + pendingBytes },
      this.bytesOf(op),
    );
    const capacity = vm.controllers * vm.locationsPerController;
    if (this.state.attachmentsOf(vm.id).length + pending >= capacity) {
      throw new ResourceExhaustedError(
        `VM ${vm.id} has no free SCSI location: all ${capacity} (${vm.controllers} controllers x ${vm.locationsPerController}) are in use or being filled; remove a disk first`,
        'NO_FREE_SCSI_LOCATION',
      );
    }
  }

  /** The size of the disk a create or connect brings. */
  private bytesOf(op: OperationRecord): number {
    return op.params.sizeBytes ?? op.data.lun?.sizeBytes ?? 0;
  }

  private poolsAsked: Promise<PoolInfo[]> | undefined;

  /**
   * The array's pools, asked once for every validate waiting at the same time: a pre-check
   * that may be one round trip old, as it could be by the time lun.create runs anyway.
   */
  private poolRoom(): Promise<PoolInfo[]> {
    this.poolsAsked ??= this.array.listPools().finally(() => {
      this.poolsAsked = undefined;
    });
    return this.poolsAsked;
  }

  /** Step 0 of create and connect: the model, then (create) the array's pool room. */
  private async validateAttach(ctx: StepContext<Env>): Promise<void> {
    const op = ctx.op;
    this.checkAttach(op);
    if (op.kind === 'create_disk') {
      const size = op.params.sizeBytes!;
      // A pre-check only: the array has the last word when lun.create asks it.
      const pools = await this.poolRoom();
      const roomiest = pools.reduce((a, p) => (p.availableBytes > a ? p.availableBytes : a), 0);
      if (roomiest < size) {
        throw new ResourceExhaustedError(
          `no pool of the array has room for a disk of ${size} bytes (at most ${roomiest} bytes free): ask for less or free space on the array`,
          'POOL_FULL',
        );
      }
    }
  }

  async createDisk(vmId: string, req: { requestId: string; mountPath: string; sizeBytes: bigint; sharing: Sharing | undefined }): Promise<OperationRecord> {
    const vm = this.vm(vmId);
    const requestId = checkRequestId(req.requestId);
    const mount = parseDrivePath(vm.guestOs, req.mountPath);
    if (req.sizeBytes === 0n) throw new InvalidArgumentError('size_bytes', `size_bytes is required: at least ${MIN_DISK_BYTES} bytes (4 MiB)`);
    if (req.sizeBytes < BigInt(MIN_DISK_BYTES) || req.sizeBytes > BigInt(MAX_DISK_BYTES) || req.sizeBytes % 512n !== 0n) {
      throw new InvalidArgumentError('size_bytes', `size_bytes ${req.sizeBytes} is invalid: a multiple of 512 bytes from 4 MiB to 16 TiB`);
    }
    const sizeBytes = Number(req.sizeBytes);
    const sharing = req.sharing ?? 'shared';
    const scope: Scope = { vmId };
    const fp = fingerprint('CreateDisk', [mount.key, sizeBytes, sharing]);
    const settled = (): OperationRecord | undefined =>
      this.replay(scope, requestId, fp) ??
      this.sameDiskAt(vmId, mount, 'create_disk', (r) => r.lun.sizeBytes === sizeBytes && r.sharing === sharing);
    const first = settled();
    if (first) return Promise.resolve(first);
    this.requireServing();
    const op = this.draft('create_disk', scope, requestId, vmId, mount, { sizeBytes, sharing });
    op.locks = [mountLock(vmId, mount.key)];
    this.busy(op.locks, `${mount.path} of VM ${vmId}`);
    return this.begin(op, fp, settled, `${mount.path} of VM ${vmId}`, () => this.checkAttach(op));
  }

  /**
   * A disk already at the mount: the operation that put it there when it is what this request
   * asks for (creates are idempotent), ALREADY_EXISTS when it is another. Undefined when the
   * mount is free or an operation is still working on it.
   */
  private sameDiskAt(vmId: string, mount: DrivePath, kind: OperationKindName, same: (r: ResourceRecord) => boolean): OperationRecord | undefined {
    const existing = this.state.diskAt(vmId, mount.key);
    if (!existing || this.engine.holder(mountLock(vmId, mount.key))) return undefined;
    const by = existing.attachedBy ? this.state.operations.get(existing.attachedBy) : undefined;
    if (by?.kind === kind && same(existing)) return by;
    throw new AlreadyExistsError(
      'mount',
      mount.path,
      `VM ${vmId} already has a disk at ${mount.path} (LUN ${existing.lun.serial}, ${existing.lun.sizeBytes} bytes, ${existing.sharing}): remove it first or choose another mount path`,
    );
  }

  /** The Available Storage resource a guest names by serial or NAA id. */
  private availableResource(ref: string): ResourceRecord {
    const r = this.findResource(ref);
    if (!r || r.group !== AVAILABLE_STORAGE) {
      throw new NotFoundError('LUN', ref, `LUN ${ref} is not in Available Storage: an administrator adds it with AddAvailableDisk`);
    }
    return r;
  }

  private findResource(ref: string): ResourceRecord | undefined {
    const byserial = this.state.resources.get(ref);
    if (byserial) return byserial;
    const naa = ref.toLowerCase().replace(/^naa\./, '');
    for (const r of this.state.resources.values()) if (r.lun.naaId.toLowerCase() === naa || r.lun.uuid === ref || r.lun.path === ref) return r;
    return undefined;
  }

  async connectDisk(vmId: string, req: { requestId: string; mountPath: string; lun: string }): Promise<OperationRecord> {
    const vm = this.vm(vmId);
    const requestId = checkRequestId(req.requestId);
    const mount = parseDrivePath(vm.guestOs, req.mountPath);
    if (req.lun === '' || req.lun.length > 256) throw new InvalidArgumentError('lun', 'lun is required: the serial or NAA id of a LUN in Available Storage');
    const scope: Scope = { vmId };
    const fp = fingerprint('ConnectDisk', [mount.key, req.lun]);
    const settled = (): OperationRecord | undefined =>
      this.replay(scope, requestId, fp) ??
      this.sameDiskAt(vmId, mount, 'connect_disk', (r) => r.lun.serial === req.lun || r.lun.naaId === req.lun.toLowerCase().replace(/^naa\./, ''));
    const first = settled();
    if (first) return Promise.resolve(first);
    this.requireServing();
    const found = this.findResource(req.lun);
    if (found && found.vmId === vmId && found.mountPath !== undefined && found.group !== AVAILABLE_STORAGE) {
      throw new FailedPreconditionError(`LUN ${found.lun.serial} is already this VM's disk at ${found.mountPath}`, 'LUN_IN_USE');
    }
    const r = this.availableResource(req.lun);
    const op = this.draft('connect_disk', scope, requestId, vmId, mount, { lun: req.lun });
    op.data = { lun: r.lun };
    op.locks = [mountLock(vmId, mount.key), lunLock(r.lun.serial)];
    this.busy(op.locks, `${mount.path} of VM ${vmId} or LUN ${r.lun.serial}`);
    return this.begin(op, fp, settled, `${mount.path} of VM ${vmId} or LUN ${r.lun.serial}`, () => {
      this.checkAttach(op);
      if (this.state.resources.get(r.lun.serial)?.group !== AVAILABLE_STORAGE) this.availableResource(req.lun);
    });
  }

  async removeDisk(vmId: string, req: { requestId: string; mountPath: string; deleteLun: boolean }): Promise<OperationRecord> {
    const vm = this.vm(vmId);
    const requestId = checkRequestId(req.requestId);
    const mount = parseDrivePath(vm.guestOs, req.mountPath);
    const scope: Scope = { vmId };
    const fp = fingerprint('RemoveDisk', [mount.key, req.deleteLun]);
    const first = this.replay(scope, requestId, fp);
    if (first) return Promise.resolve(first);
    this.requireServing();
    const op = this.draft('remove_disk', scope, requestId, vmId, mount, { deleteLun: req.deleteLun });
    op.locks = [mountLock(vmId, mount.key)];
    this.busy(op.locks, `${mount.path} of VM ${vmId}`);
    const r = this.state.diskAt(vmId, mount.key);
    const attachment = r ? this.state.attachmentOfSerial(r.lun.serial) : undefined;
    if (!r || !attachment) return this.nothingToDo(op, fp, `nothing is attached at ${mount.path}`);
    checkCanHotPlug(this.env.hypervisor.capabilities(vm.node), vm, this.node(vm.node));
    this.checkNotMoving(vm);
    const checkInside = (): void => {
      const inside = this.state
        .disksOfVm(vmId)
        .map((d) => d.mountPath)
        .filter((p): p is string => p !== undefined && p !== r.mountPath);
      for (const o of this.openOperations()) if (o.vmId === vmId && (o.kind === 'create_disk' || o.kind === 'connect_disk')) inside.push(o.mountPath);
      const within = inside.filter((p) => isInside(parseDrivePath(vm.guestOs, p), mount));
      if (within.length > 0) {
        throw new FailedPreconditionError(
          `other disks are mounted (or being mounted) inside the volume at ${mount.path} (${[...new Set(within)].join(', ')}): remove them first`,
          'MOUNTS_INSIDE_VOLUME',
        );
      }
    };
    checkInside();
    op.locks.push(lunLock(r.lun.serial));
    this.busy(op.locks, `${mount.path} of VM ${vmId}`);
    op.data = {
      lun: r.lun,
      lunId: r.lunId,
      nodes: r.mappedNodes,
      sharing: r.sharing,
      resource: r.name,
      vmGroup: r.group,
      address: { controller: attachment.controller, location: attachment.location },
    };
    return this.begin(op, fp, () => this.replay(scope, requestId, fp), `${mount.path} of VM ${vmId}`, checkInside);
  }

  /** Removing what is already gone succeeds: an operation with nothing to do, recorded under its request id. */
  private nothingToDo(op: OperationRecord, fp: string, why: string): OperationRecord {
    const now = Date.now();
    const done: OperationRecord = {
      ...op,
      state: 'succeeded',
      steps: op.steps.map((s, i) => (i === 0 ? { ...s, state: 'done', startMs: now, endMs: now, message: why } : { ...s, state: 'skipped', startMs: now, endMs: now })),
    };
    this.state.transact(() => {
      this.state.operations.put(done);
      this.state.requests.put({ scope: op.scope, requestId: op.requestId, fingerprint: fp, opId: op.id, createMs: now });
    });
    return done;
  }

  async addAvailableDisk(req: { requestId: string; lun: string }): Promise<OperationRecord> {
    const requestId = checkRequestId(req.requestId);
    if (req.lun === '' || req.lun.length > 470) throw new InvalidArgumentError('lun', 'lun is required: the LUN path, uuid or serial on the array');
    const fp = fingerprint('AddAvailableDisk', [req.lun]);
    const first = this.replay('admin', requestId, fp);
    if (first) return first;
    this.requireServing();
    const lun = await this.array.findLun(req.lun);
    if (!lun) throw new NotFoundError('LUN', req.lun, `the array has no LUN ${req.lun}: give its path, uuid or serial`);
    // One operation per LUN: a second add (or a removal) while one runs is ABORTED.
    this.busy([lunLock(lun.serial)], `LUN ${lun.serial}`);
    const known = this.state.resources.get(lun.serial);
    if (known) {
      if (known.group === AVAILABLE_STORAGE) {
        throw new AlreadyExistsError('LUN', lun.serial, `LUN ${lun.serial} is already in Available Storage as ${known.name}`);
      }
      throw new FailedPreconditionError(`LUN ${lun.serial} is in use as ${known.name}`, 'LUN_IN_USE');
    }
    const maps = await this.array.listMaps({ lun: lun.uuid });
    const onNodes = maps.filter((m) => this.state.nodes.has(m.igroup));
    if (onNodes.length > 0) {
      throw new FailedPreconditionError(
        `LUN ${lun.path} is already mapped to node igroup(s) ${onNodes.map((m) => m.igroup).join(', ')}: unmap it first, passthru maps it to every node itself`,
        'LUN_MAPPED',
      );
    }
    const op = this.draft('add_available_disk', 'admin', requestId, '', undefined, { lun: req.lun });
    op.data = { lun: { uuid: lun.uuid, serial: lun.serial, naaId: lun.naaId, path: lun.path, sizeBytes: lun.sizeBytes } };
    op.locks = [lunLock(lun.serial)];
    this.busy(op.locks, `LUN ${lun.serial}`);
    const started = await this.begin(op, fp, () => this.replay('admin', requestId, fp), `LUN ${lun.serial}`);
    // Rolled back, its MapLun may still land (a slow array runs what it received): sweep then.
    if (started.state === 'running') {
      const off = this.engine.subscribe(started.id, (_e, o) => {
        if (o.state === 'failed') this.watchForLateLuns();
        if (o.state === 'failed' || o.state === 'succeeded') off();
      });
    }
    return started;
  }

  async removeAvailableDisk(req: { requestId: string; lun: string }): Promise<OperationRecord> {
    const requestId = checkRequestId(req.requestId);
    if (req.lun === '') throw new InvalidArgumentError('lun', 'lun is required: the serial or NAA id of a LUN in Available Storage');
    const fp = fingerprint('RemoveAvailableDisk', [req.lun]);
    const first = this.replay('admin', requestId, fp);
    if (first) return Promise.resolve(first);
    this.requireServing();
    const op = this.draft('remove_available_disk', 'admin', requestId, '', undefined, { lun: req.lun });
    const known = this.findResource(req.lun);
    if (!known) {
      // Taking out what is not there succeeds, for a LUN that exists; a name the array does not know is a mistake.
      const onArray = await this.array.findLun(req.lun);
      if (!onArray) throw new NotFoundError('LUN', req.lun, `the array has no LUN ${req.lun}: give its path, uuid, serial or NAA id`);
      this.busy([lunLock(onArray.serial)], `LUN ${onArray.serial}`);
      const again = this.replay('admin', requestId, fp);
      if (again) return again;
      return this.nothingToDo(op, fp, `LUN ${req.lun} is not in Available Storage`);
    }
    if (known.group !== AVAILABLE_STORAGE) {
      throw new FailedPreconditionError(`LUN ${known.lun.serial} is in use as ${known.name} (VM ${known.vmId ?? '?'} at ${known.mountPath ?? '?'}): remove the disk from the VM first`, 'LUN_IN_USE');
    }
    const r = known;
    op.data = { lun: r.lun, lunId: r.lunId, nodes: r.mappedNodes, sharing: 'shared', resource: r.name };
    op.locks = [lunLock(r.lun.serial)];
    this.busy(op.locks, `LUN ${r.lun.serial}`);
    return this.begin(op, fp, () => this.replay('admin', requestId, fp), `LUN ${r.lun.serial}`);
  }

  // ---------------------------------------------------------------- what a guest sees

  disks(vmId: string): DiskView[] {
    this.vm(vmId);
    const out: DiskView[] = [];
    for (const a of this.state.attachmentsOf(vmId)) {
      const r = this.state.resources.get(a.serial);
      if (r) out.push({ resource: r, address: { controller: a.controller, location: a.location } });
    }
    return out.sort((x, y) => x.address.controller - y.address.controller || x.address.location - y.address.location);
  }

  /** The VM's SCSI bus after a rescan: what sits at each location. */
  rescan(vmId: string): DiskView[] {
    const vm = this.vm(vmId);
    if (!vm.running) throw new FailedPreconditionError(`VM ${vmId} is off`, 'VM_NOT_RUNNING');
    return this.disks(vmId);
  }

  private diskForReport(vmId: string, mountPath: string, requestId: string): { vm: VmRecord; mount: DrivePath; r: ResourceRecord } {
    const vm = this.vm(vmId);
    checkRequestId(requestId);
    const mount = parseDrivePath(vm.guestOs, mountPath);
    const r = this.state.diskAt(vmId, mount.key);
    if (!r || !this.state.attachmentOfSerial(r.lun.serial)) throw new NotFoundError('mount', mount.path, `VM ${vmId} has no disk at ${mount.path}`);
    return { vm, mount, r };
  }

  reportMount(vmId: string, req: { requestId: string; mountPath: string; serial: string; volumeId: string; volumeLabel: string }): DiskView {
    const { mount, r } = this.diskForReport(vmId, req.mountPath, req.requestId);
    if (req.serial !== r.lun.serial) {
      throw new FailedPreconditionError(`the disk at ${mount.path} is LUN ${r.lun.serial}, not ${req.serial}: rescan and mount the right disk`, 'SERIAL_MISMATCH');
    }
    if (req.volumeId === '' || req.volumeId.length > 64 || /[\x00-\x1f\x7f]/.test(req.volumeId)) {
      throw new InvalidArgumentError('volume_id', 'volume_id is required: 1-64 printable characters');
    }
    if (req.volumeLabel.length > 36 || /[\x00-\x1f\x7f]/.test(req.volumeLabel)) {
      throw new InvalidArgumentError('volume_label', 'volume_label must be at most 36 printable characters (a GPT partition name)');
    }
    const mounted = { volumeId: req.volumeId, label: req.volumeLabel, path: mount.path };
    if (JSON.stringify(r.mounted) !== JSON.stringify(mounted)) {
      this.state.transact(() => this.state.resources.put({ ...r, mounted }));
    }
    return this.viewOf(r.lun.serial);
  }

  reportUnmount(vmId: string, req: { requestId: string; mountPath: string }): DiskView {
    const { r } = this.diskForReport(vmId, req.mountPath, req.requestId);
    if (r.mounted) this.state.transact(() => this.state.resources.put({ ...r, mounted: undefined }));
    return this.viewOf(r.lun.serial);
  }

  private viewOf(serial: string): DiskView {
    const a = this.state.attachmentOfSerial(serial)!;
    return { resource: this.state.resources.get(serial)!, address: { controller: a.controller, location: a.location } };
  }

  // ---------------------------------------------------------------- admin

  /**
   * An admin change under its request id: a retry gets the first reply back and changes
   * nothing; the same id for another request is refused.
   */
  private adminChange<R>(requestId: string, method: string, params: unknown, change: () => R): R {
    checkRequestId(requestId);
    const fp = fingerprint(method, params);
    const rec = this.recorded('admin', requestId, fp);
    if (rec) return rec.reply as R;
    return this.state.transact(() => {
      const reply = change();
      this.state.requests.put({ scope: 'admin', requestId, fingerprint: fp, reply, createMs: Date.now() });
      return reply;
    });
  }

  /** adminChange for a change that waits on the array: replayed the same way, recorded once it is done. */
  async adminChangeAsync<R>(requestId: string, method: string, params: unknown, change: () => Promise<R>): Promise<R> {
    checkRequestId(requestId);
    const fp = fingerprint(method, params);
    const rec = this.recorded('admin', requestId, fp);
    if (rec) return rec.reply as R;
    const reply = await change();
    this.state.transact(() => this.state.requests.put({ scope: 'admin', requestId, fingerprint: fp, reply, createMs: Date.now() }));
    return reply;
  }

  /** Every VM's disks, or one VM's. */
  allDisks(vmId: string): { vmId: string; disk: DiskView }[] {
    const ids = vmId === '' ? [...this.state.vms.values()].map((v) => v.id).sort() : [this.vm(vmId).id];
    return ids.flatMap((id) => this.disks(id).map((disk) => ({ vmId: id, disk })));
  }

  createVm(req: {
    requestId: string;
    id: string;
    name: string;
    guestOs: GuestOsName | undefined;
    ha: boolean;
    node: string;
    controllers: number;
    locationsPerController: number;
  }): VmRecord {
    const id = checkVmId('id', req.id);
    const name = req.name === '' ? id : checkVmName('name', req.name);
    if (!req.guestOs) throw new InvalidArgumentError('guest_os', 'guest_os is required: GUEST_OS_WINDOWS or GUEST_OS_LINUX');
    const controllers = req.controllers || DEFAULT_CONTROLLERS;
    const locations = req.locationsPerController || DEFAULT_LOCATIONS;
    checkScsiShape({ controllers: 'scsi_controllers', locations: 'locations_per_controller' }, controllers, locations);
    if (req.node === '') throw new InvalidArgumentError('node', 'node is required: the node the VM runs on');
    const node = this.node(req.node);
    const wanted = { id, name, guestOs: req.guestOs, ha: req.ha, node: node.name, controllers, locationsPerController: locations };
    let added = false;
    const vm = this.adminChange(req.requestId, 'CreateVm', wanted, () => {
      const existing = this.state.vms.get(id);
      if (existing) {
        const same = existing.name === name && existing.guestOs === wanted.guestOs && existing.ha === wanted.ha && existing.controllers === controllers && existing.locationsPerController === locations;
        if (same) return existing;
        throw new AlreadyExistsError('VM', id, `VM ${id} already exists with other settings (${existing.guestOs}, ${existing.ha ? 'HA' : 'not HA'}, ${existing.controllers}x${existing.locationsPerController}): choose another id`);
      }
      added = true;
      return this.putNewVm({ ...wanted, running: true });
    });
    if (added) this.emit('vmAdded', vm);
    return vm;
  }

  setVmRunning(requestId: string, id: string, running: boolean): VmRecord {
    this.vm(id);
    return this.adminChange(requestId, running ? 'StartVm' : 'StopVm', id, () => {
      const vm = this.vm(id);
      if (vm.running === running) return vm;
      for (const o of this.openOperations()) {
        if (o.vmId === id) throw new AbortedError(`operation ${o.id} is in flight on VM ${id}: wait for it to end`, 'OPERATION_IN_FLIGHT');
      }
      if (running && !this.node(vm.node).up) throw new FailedPreconditionError(`node ${vm.node} is down: VM ${id} cannot start there`, 'NODE_DOWN');
      return this.state.vms.put({ ...vm, running });
    });
  }

  setHostCapabilities(requestId: string, name: string, caps: { hypervisorEnabled?: boolean; hotAddSupported?: boolean }): NodeRecord {
    if (name === '') throw new InvalidArgumentError('node', 'node is required');
    this.node(name);
    return this.adminChange(requestId, 'SetHostCapabilities', [name, caps.hypervisorEnabled ?? null, caps.hotAddSupported ?? null], () => {
      const n = this.node(name);
      const next = { ...n, hypervisorEnabled: caps.hypervisorEnabled ?? n.hypervisorEnabled, hotAddSupported: caps.hotAddSupported ?? n.hotAddSupported };
      if (next.hypervisorEnabled === n.hypervisorEnabled && next.hotAddSupported === n.hotAddSupported) return n;
      return this.state.nodes.put(next);
    });
  }

  listOperations(filter: { vmId: string; state: OperationStateName | undefined; pageSize: number; pageToken: string }): { ops: OperationRecord[]; next: string } {
    if (filter.pageSize > 1000) throw new InvalidArgumentError('page_size', 'page_size must be at most 1000 (0 means 100)');
    if (filter.pageToken !== '' && !OPERATION_ID_RE.test(filter.pageToken)) throw new InvalidArgumentError('page_token', 'page_token is not one this server gave out: pass next_page_token as it came');
    if (filter.vmId !== '') checkVmId('vm_id', filter.vmId);
    const size = filter.pageSize || 100;
    const all = [...this.state.operations.values()]
      .filter((o) => (filter.vmId === '' || o.vmId === filter.vmId) && (!filter.state || o.state === filter.state) && (filter.pageToken === '' || o.id > filter.pageToken))
      .sort((a, b) => (a.id < b.id ? -1 : 1));
    const ops = all.slice(0, size);
    return { ops: ops.map((o) => this.engine.view(o.id) ?? o), next: all.length > size ? ops[ops.length - 1]!.id : '' };
  }

  readonly failover: Failover;

  /** Guest block I/O: installed by whoever wires the data plane (serve.ts). */
  blockIo?: import('./block-io.js').BlockIo;

  /** Every cross-check between the models and the array; none on a healthy, quiet cluster. */
  checkInvariants(): Promise<Violation[]> {
    return checkInvariants(this.state, this.array, this.cluster.volume, [...this.openOperations()]);
  }

  get inFlight(): number {
    return this.engine.inFlight;
  }
}
