/**
 * The host agent's gRPC faces: GuestService (one per VM, on that VM's endpoint) and
 * AdminService. Decode, call the domain, encode; which VM is calling comes from the
 * endpoint the call arrived on, never from a field.
 */
import { status as Code } from '@grpc/grpc-js';
import { EnumCodec } from '../common/enums.js';
import { InvalidArgumentError, UnavailableError } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import { GuestServiceDefinition } from '../common/block-messages.js';
import type { RpcMetrics } from '../common/metrics.js';
import { implement, type CallHooks } from '../common/rpc.js';
import type { ServiceRegistration } from '../common/service.js';
import { statusOfKind } from '../common/status.js';
import {
  AdminServiceService,
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
  type Disk,
  type Group,
  type GroupMove as GroupMoveMessage,
  type Node,
  type Operation,
  type Step,
  type StepEvent,
  type Vm,
} from '../proto/gen/passthru/host/v1/host.js';
import type { DiskView, HostAgent, Scope } from './agent.js';
import type { BlockIo } from './block-io.js';
import type { GroupMove } from './failover.js';
import type {
  GroupKindName,
  GuestOsName,
  NodeRecord,
  OperationKindName,
  OperationRecord,
  OperationStateName,
  ResourceStateName,
  Sharing,
  StepRecord,
  StepStateName,
  VmRecord,
} from './model.js';
import type { OperationListener, StepEventKindName, StepEventRecord } from './workflow/engine.js';

export const guestOses = new EnumCodec<GuestOsName>('guest_os', [
  [GuestOs.GUEST_OS_WINDOWS, 'windows'],
  [GuestOs.GUEST_OS_LINUX, 'linux'],
]);
export const sharings = new EnumCodec<Sharing>('sharing', [
  [DiskSharing.DISK_SHARING_SHARED, 'shared'],
  [DiskSharing.DISK_SHARING_DEDICATED, 'dedicated'],
]);
export const groupKinds = new EnumCodec<GroupKindName>('kind', [
  [GroupKind.GROUP_KIND_CLUSTER, 'cluster'],
  [GroupKind.GROUP_KIND_AVAILABLE_STORAGE, 'available'],
  [GroupKind.GROUP_KIND_VM, 'vm'],
  [GroupKind.GROUP_KIND_TEMPORARY, 'temporary'],
]);
export const resourceStates = new EnumCodec<ResourceStateName>('state', [
  [ResourceState.RESOURCE_STATE_ONLINE, 'online'],
  [ResourceState.RESOURCE_STATE_OFFLINE, 'offline'],
  [ResourceState.RESOURCE_STATE_ONLINE_PENDING, 'online_pending'],
  [ResourceState.RESOURCE_STATE_OFFLINE_PENDING, 'offline_pending'],
  [ResourceState.RESOURCE_STATE_FAILED, 'failed'],
]);
export const operationKinds = new EnumCodec<OperationKindName>('kind', [
  [OperationKind.OPERATION_KIND_CREATE_DISK, 'create_disk'],
  [OperationKind.OPERATION_KIND_CONNECT_DISK, 'connect_disk'],
  [OperationKind.OPERATION_KIND_REMOVE_DISK, 'remove_disk'],
  [OperationKind.OPERATION_KIND_ADD_AVAILABLE_DISK, 'add_available_disk'],
  [OperationKind.OPERATION_KIND_REMOVE_AVAILABLE_DISK, 'remove_available_disk'],
]);
export const operationStates = new EnumCodec<OperationStateName>('state', [
  [OperationState.OPERATION_STATE_RUNNING, 'running'],
  [OperationState.OPERATION_STATE_ROLLING_BACK, 'rolling_back'],
  [OperationState.OPERATION_STATE_SUCCEEDED, 'succeeded'],
  [OperationState.OPERATION_STATE_FAILED, 'failed'],
]);
const stepStates = new EnumCodec<StepStateName>('state', [
  [StepState.STEP_STATE_PENDING, 'pending'],
  [StepState.STEP_STATE_RUNNING, 'running'],
  [StepState.STEP_STATE_DONE, 'done'],
  [StepState.STEP_STATE_SKIPPED, 'skipped'],
  [StepState.STEP_STATE_UNDOING, 'undoing'],
  [StepState.STEP_STATE_UNDONE, 'undone'],
  [StepState.STEP_STATE_FAILED, 'failed'],
]);
const stepEventKinds = new EnumCodec<StepEventKindName>('kind', [
  [StepEventKind.STEP_EVENT_KIND_STARTED, 'started'],
  [StepEventKind.STEP_EVENT_KIND_FINISHED, 'finished'],
  [StepEventKind.STEP_EVENT_KIND_SKIPPED, 'skipped'],
  [StepEventKind.STEP_EVENT_KIND_FAILED, 'failed'],
  [StepEventKind.STEP_EVENT_KIND_UNDO_STARTED, 'undo_started'],
  [StepEventKind.STEP_EVENT_KIND_UNDONE, 'undone'],
]);

const date = (ms: number | undefined): Date | undefined => (ms === undefined ? undefined : new Date(ms));

/** Step records are never changed in place, so one message per record serves every event that carries it. */
const stepMessages = new WeakMap<StepRecord, Step>();

function toStep(s: StepRecord): Step {
  let m = stepMessages.get(s);
  if (!m) {
    m = { name: s.name, state: stepStates.toWire(s.state), startTime: date(s.startMs), endTime: date(s.endMs), message: s.message ?? '' };
    stepMessages.set(s, m);
  }
  return m;
}

export function toOperation(op: OperationRecord): Operation {
  const lun = op.data.lun;
  return {
    id: op.id,
    kind: operationKinds.toWire(op.kind),
    vmId: op.vmId,
    mountPath: op.mountPath,
    requestId: op.requestId,
    state: operationStates.toWire(op.state),
    steps: op.steps.map(toStep),
    result:
      op.state === 'succeeded' && lun
        ? {
            address: op.data.address,
            serial: lun.serial,
            naaId: lun.naaId,
            lunId: op.data.lunId ?? 0,
            lunPath: lun.path,
            sizeBytes: BigInt(lun.sizeBytes),
          }
        : undefined,
    error:
      op.error && op.state === 'failed'
        ? { code: op.error.kind === 'internal' ? Code.INTERNAL : statusOfKind[op.error.kind], message: op.error.message, details: [] }
        : undefined,
    createTime: new Date(op.createMs),
    updateTime: new Date(op.updateMs),
    committed: op.committed,
  };
}

function toEvent(e: StepEventRecord): StepEvent {
  return { step: e.step, kind: stepEventKinds.toWire(e.kind), time: new Date(e.timeMs), message: e.message ?? '' };
}

export function toVm(vm: VmRecord, endpoint: (id: string) => string): Vm {
  return {
    id: vm.id,
    name: vm.name,
    guestOs: guestOses.toWire(vm.guestOs),
    state: vm.running ? VmState.VM_STATE_RUNNING : VmState.VM_STATE_OFF,
    ha: vm.ha,
    node: vm.node,
    scsiControllers: vm.controllers,
    locationsPerController: vm.locationsPerController,
    group: vm.group,
    guestEndpoint: endpoint(vm.id),
  };
}

function toNode(n: NodeRecord): Node {
  return {
    name: n.name,
    initiator: n.initiator,
    state: n.up ? NodeState.NODE_STATE_UP : NodeState.NODE_STATE_DOWN,
    hypervisorEnabled: n.hypervisorEnabled,
    hotAddSupported: n.hotAddSupported,
  };
}

function toDisk(d: DiskView): Disk {
  const r = d.resource;
  return {
    vmId: r.vmId ?? '',
    mountPath: r.mountPath ?? '',
    serial: r.lun.serial,
    naaId: r.lun.naaId,
    sizeBytes: BigInt(r.lun.sizeBytes),
    address: d.address,
    lunId: r.lunId,
    lunPath: r.lun.path,
    sharing: sharings.toWire(r.sharing),
    resource: r.name,
    resourceState: resourceStates.toWire(r.state),
    mounted: r.mounted !== undefined,
    volumeId: r.mounted?.volumeId ?? '',
    volumeLabel: r.mounted?.label ?? '',
  };
}

function toMove(m: GroupMove): GroupMoveMessage {
  return { group: m.group, fromNode: m.from, toNode: m.to, vmId: m.vmId ?? '', vmRunning: m.vmRunning, serials: m.serials };
}

/** A view of the bytes, not a copy: a 1 MiB block is copied enough on its way already. */
function asBuffer(data: Uint8Array): Buffer {
  return Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function blockIo(agent: HostAgent): BlockIo {
  if (!agent.blockIo) throw new UnavailableError('this host agent has no data path to the array', 'NO_DATA_PATH');
  return agent.blockIo;
}

const final = (op: OperationRecord): boolean => op.state === 'succeeded' || op.state === 'failed';

/**
 * WatchOperation for both services: the operation as it stands, then its step events, those
 * the engine tells together (one journal write) in one message, ending after the final state.
 * Subscribes before reading, so nothing falls between.
 */
async function watchOperation(
  agent: HostAgent,
  scope: Scope,
  id: string,
  signal: AbortSignal,
  send: (m: { events: StepEvent[]; operation: Operation }) => void,
): Promise<void> {
  if (id === '') throw new InvalidArgumentError('operation_id', 'operation_id is required');
  await new Promise<void>((resolve, reject) => {
    let unsubscribe: () => void = () => undefined;
    let ended = false;
    const done = (): void => {
      ended = true;
      unsubscribe();
      signal.removeEventListener('abort', done);
      resolve();
    };
    let queued: StepEvent[] | undefined;
    let latest: OperationRecord | undefined;
    const sendQueued = (): void => {
      const events = queued!;
      queued = undefined;
      if (ended) return;
      send({ events, operation: toOperation(latest!) });
      if (final(latest!)) done();
    };
    const listener: OperationListener = (event, op) => {
      latest = op;
      if (!queued) {
        queued = [];
        queueMicrotask(sendQueued);
      }
      if (event) queued.push(toEvent(event));
    };
    try {
      unsubscribe = agent.watch(scope, id, listener);
    } catch (err) {
      reject(err);
      return;
    }
    signal.addEventListener('abort', done);
    const op = agent.operation(scope, id);
    send({ events: [], operation: toOperation(op) });
    if (final(op)) done();
  });
}

/** A request's own words on a log line, cut short: a hostile value must not flood the log. */
function logged(value: string): string {
  return value.length > 256 ? `${value.slice(0, 256)}…` : value;
}

const BLOCK_IO = new Set(['ReadDisk', 'WriteDisk']);
const GUEST_QUIET = new Set(['GetSelf', 'GetOperation', 'WatchOperation', 'ListDisks', 'RescanBus', 'ReadDisk', 'WriteDisk']);
const ADMIN_QUIET = new Set(['GetCluster', 'ListNodes', 'ListGroups', 'ListVms', 'ListOperations', 'GetOperation', 'WatchOperation', 'CheckInvariants', 'ListDisks']);

export function guestService(agent: HostAgent, vmId: string, endpoint: (id: string) => string, logger: Logger, metrics?: RpcMetrics): ServiceRegistration {
  const scope: Scope = { vmId };
  return {
    name: 'passthru.host.v1.GuestService',
    definition: GuestServiceDefinition,
    implementation: implement(
      GuestServiceDefinition,
      {
        getSelf: () => ({ vm: toVm(agent.vm(vmId), endpoint) }),
        createDisk: async (req, ctx) => {
          ctx.log.mount = logged(req.mountPath);
          const op = await agent.createDisk(vmId, {
            requestId: req.requestId,
            mountPath: req.mountPath,
            sizeBytes: req.sizeBytes,
            sharing: sharings.fromWire(req.sharing),
          });
          ctx.log.opId = op.id;
          return { operation: toOperation(op) };
        },
        connectDisk: async (req, ctx) => {
          ctx.log.mount = logged(req.mountPath);
          ctx.log.lun = logged(req.lun);
          const op = await agent.connectDisk(vmId, req);
          ctx.log.opId = op.id;
          return { operation: toOperation(op) };
        },
        removeDisk: async (req, ctx) => {
          ctx.log.mount = logged(req.mountPath);
          const op = await agent.removeDisk(vmId, req);
          ctx.log.opId = op.id;
          return { operation: toOperation(op) };
        },
        getOperation: (req) => ({ operation: toOperation(agent.operation(scope, req.operationId)) }),
        watchOperation: (req, ctx, send) => watchOperation(agent, scope, req.operationId, ctx.signal, send),
        listDisks: () => ({ disks: agent.disks(vmId).map(toDisk) }),
        rescanBus: () => ({
          devices: agent.rescan(vmId).map((d) => ({
            address: d.address,
            serial: d.resource.lun.serial,
            naaId: d.resource.lun.naaId,
            sizeBytes: BigInt(d.resource.lun.sizeBytes),
          })),
        }),
        reportMount: (req, ctx) => {
          ctx.log.mount = logged(req.mountPath);
          ctx.log.serial = logged(req.serial);
          return { disk: toDisk(agent.reportMount(vmId, req)) };
        },
        reportUnmount: (req, ctx) => {
          ctx.log.mount = logged(req.mountPath);
          return { disk: toDisk(agent.reportUnmount(vmId, req)) };
        },
        readDisk: async (req) => ({ data: await blockIo(agent).read(vmId, req) }),
        writeDisk: async (req) => ({ writtenBytes: await blockIo(agent).write(vmId, { ...req, data: asBuffer(req.data) }) }),
      },
      // The endpoint is the VM's own: it, not any request field, says who calls.
      {
        logger: logger.child({ vmId }),
        quietMethods: GUEST_QUIET,
        caller: () => `vm:${vmId}`,
        metrics,
        // Block I/O is bounded by the calls a VM has in flight, not by a rate.
        hooks: { before: (ctx) => (BLOCK_IO.has(ctx.method) ? undefined : agent.requestRate.admit(vmId, ctx.method)) },
      },
    ),
  };
}

/** `hooks` run before every AdminService call: with mTLS, the admin-only check (serve.ts). */
export function adminService(agent: HostAgent, endpoint: (id: string) => string, logger: Logger, metrics?: RpcMetrics, hooks?: CallHooks): ServiceRegistration {
  const vm = (v: VmRecord): Vm => toVm(v, endpoint);
  return {
    name: 'passthru.host.v1.AdminService',
    definition: AdminServiceService,
    implementation: implement(
      AdminServiceService,
      {
        getCluster: () => {
          const s = agent.state;
          return {
            name: agent.cluster.name,
            nodes: [...s.nodes.values()].map(toNode),
            availableStorageOwner: s.availableStorage().owner,
            vmCount: s.vms.size,
            diskCount: s.attachments.size,
            operationsInFlight: agent.inFlight,
            serving: agent.serving,
          };
        },
        listNodes: () => ({ nodes: [...agent.state.nodes.values()].map(toNode) }),
        listGroups: (req) => {
          const kind = groupKinds.fromWire(req.kind);
          const groups: Group[] = [...agent.state.groups.values()]
            .filter((g) => !kind || g.kind === kind)
            .sort((a, b) => (a.name < b.name ? -1 : 1))
            .map((g) => ({
              name: g.name,
              kind: groupKinds.toWire(g.kind),
              ownerNode: g.owner,
              vmId: g.vmId ?? '',
              resources: agent.state.resourcesIn(g.name).map((r) => ({
                name: r.name,
                state: resourceStates.toWire(r.state),
                serial: r.lun.serial,
                vmId: r.vmId ?? '',
                mountPath: r.mountPath ?? '',
              })),
            }));
          return { groups };
        },
        listVms: (req) => {
          if (req.node !== '') agent.node(req.node);
          const vms = req.node === '' ? [...agent.state.vms.values()] : agent.state.vmsOn(req.node);
          return { vms: vms.sort((a, b) => (a.id < b.id ? -1 : 1)).map(vm) };
        },
        createVm: (req, ctx) => {
          ctx.log.vmId = logged(req.id);
          return {
            vm: vm(
              agent.createVm({
                requestId: req.requestId,
                id: req.id,
                name: req.name,
                guestOs: guestOses.fromWire(req.guestOs),
                ha: req.ha,
                node: req.node,
                controllers: req.scsiControllers,
                locationsPerController: req.locationsPerController,
              }),
            ),
          };
        },
        startVm: (req, ctx) => {
          ctx.log.vmId = logged(req.vmId);
          return { vm: vm(agent.setVmRunning(req.requestId, req.vmId, true)) };
        },
        stopVm: (req, ctx) => {
          ctx.log.vmId = logged(req.vmId);
          return { vm: vm(agent.setVmRunning(req.requestId, req.vmId, false)) };
        },
        setHostCapabilities: (req, ctx) => {
          ctx.log.node = logged(req.node);
          const caps = { hypervisorEnabled: req.hypervisorEnabled, hotAddSupported: req.hotAddSupported };
          return { node: toNode(agent.setHostCapabilities(req.requestId, req.node, caps)) };
        },
        addAvailableDisk: async (req, ctx) => {
          ctx.log.lun = logged(req.lun);
          const op = await agent.addAvailableDisk(req);
          ctx.log.opId = op.id;
          return { operation: toOperation(op) };
        },
        removeAvailableDisk: async (req, ctx) => {
          ctx.log.lun = logged(req.lun);
          const op = await agent.removeAvailableDisk(req);
          ctx.log.opId = op.id;
          return { operation: toOperation(op) };
        },
        listOperations: (req) => {
          const page = agent.listOperations({
            vmId: req.vmId,
            state: operationStates.fromWire(req.state),
            pageSize: req.pageSize,
            pageToken: req.pageToken,
          });
          return { operations: page.ops.map(toOperation), nextPageToken: page.next };
        },
        getOperation: (req) => ({ operation: toOperation(agent.operation('admin', req.operationId)) }),
        watchOperation: (req, ctx, send) => watchOperation(agent, 'admin', req.operationId, ctx.signal, send),
        checkInvariants: async () => ({ violations: await agent.checkInvariants() }),
        listDisks: (req) => ({ disks: agent.allDisks(req.vmId).map((d) => toDisk(d.disk)) }),
        failNode: (req, ctx) => {
          ctx.log.node = logged(req.node);
          return agent.adminChangeAsync(req.requestId, 'FailNode', req.node, async () => {
            const r = await agent.failover.failNode(req.node);
            return { node: toNode(r.node), moves: r.moves.map(toMove), settledOperations: r.settled };
          });
        },
        recoverNode: (req, ctx) => {
          ctx.log.node = logged(req.node);
          return agent.adminChangeAsync(req.requestId, 'RecoverNode', req.node, async () => {
            const r = await agent.failover.recoverNode(req.node);
            return { node: toNode(r.node), startedVms: r.started };
          });
        },
        moveGroup: (req, ctx) => {
          ctx.log.group = logged(req.group);
          ctx.log.node = logged(req.node);
          return agent.adminChangeAsync(req.requestId, 'MoveGroup', [req.group, req.node], async () => ({
            move: toMove(await agent.failover.moveGroup(req.group, req.node)),
          }));
        },
      },
      { logger: logger.child({ endpoint: 'admin' }), quietMethods: ADMIN_QUIET, metrics, hooks },
    ),
  };
}

