/**
 * The gRPC adapter of the guest's two seams: HostLink (GuestService's control plane) and the
 * simulated guest's hardware (RescanBus, ReadDisk, WriteDisk), over the VM's own endpoint
 * (a Unix socket, the stand-in for VMBus/vsock). Decode and encode only: proto messages in,
 * the guest's plain types out, and every gRPC error turned into the domain error its status
 * stands for, with the host's message as it is.
 */
import { Metadata, status as Code, type ServiceError } from '@grpc/grpc-js';
import { connect, type PromiseClient } from '../common/client.js';
import { PermissionDeniedError, ReportableError, UnavailableError } from '../common/errors.js';
import { domainErrorOfCode, isServiceError, statusDetails } from '../common/status.js';
import {
  DiskSharing,
  GuestOs,
  GuestServiceClient,
  OperationKind,
  OperationState as WireOperationState,
  ResourceState,
  StepEventKind as WireStepEventKind,
  StepState as WireStepState,
  VmState,
  type Disk,
  type Operation,
  type ScsiAddress as WireAddress,
  type WatchOperationResponse,
} from '../proto/gen/passthru/host/v1/host.js';
import type { BusDevice } from './guest-os.js';
import {
  HOST_UNREACHABLE,
  type HostDisk,
  type HostLink,
  type OperationView,
  type ScsiAddress,
  type StepEventView,
  type VmInfo,
  type WatchUpdate,
} from './host-link.js';
import type { SimulatedHardware } from './sim-os.js';

/** The domain error a status stands for, with the host's message unchanged. */
export function errorOfStatus(code: number, message: string, reason: string, field = ''): Error {
  if (code === Code.UNAVAILABLE || code === Code.DEADLINE_EXCEEDED) return new UnavailableError(message, reason);
  // A guest refused for its identity is refused, whichever of the two words the host used.
  if (code === Code.UNAUTHENTICATED) return new PermissionDeniedError(message, reason);
  return domainErrorOfCode(code, message, reason, { object: 'host object', id: field, field }) ?? new ReportableError(`${Code[code] ?? `status ${code}`}: ${message}`, reason);
}

/** A connection that failed or broke (no passthru server answered): grpc-js's own words. */
const BROKEN = /No connection established|Connection dropped|ECONNREFUSED|ECONNRESET|ENOENT|EPIPE|RST_STREAM|Deadline exceeded|socket/i;

/**
 * A gRPC error as a domain error. The host attaches a reason (google.rpc.ErrorInfo) to every
 * error it sends; an UNAVAILABLE or DEADLINE_EXCEEDED without one, or a broken stream, came
 * from the connection, not from the host: HOST_UNREACHABLE.
 */
function hostError(err: unknown, endpoint: string, method: string): Error {
  if (!isServiceError(err)) return err instanceof Error ? err : new Error(String(err));
  const message = (err.details || err.message).replace(/\s*Resolution note:\s*$/, '').trimEnd();
  let reason: string | undefined;
  let field: string | undefined;
  try {
    const d = statusDetails(err);
    reason = d.reason;
    field = d.fieldViolations[0]?.field;
  } catch {
    // Details that do not decode say nothing more.
  }
  const connection = err.code === Code.UNAVAILABLE || err.code === Code.DEADLINE_EXCEEDED || ((err.code === Code.INTERNAL || err.code === Code.CANCELLED) && BROKEN.test(message));
  if (reason === undefined && connection) {
    return new UnavailableError(
      `the host agent at ${endpoint} cannot be reached (${method}: ${message}): is it running, and is this the VM's endpoint? (--endpoint or $PASSTHRU_GUEST_ENDPOINT)`,
      HOST_UNREACHABLE,
    );
  }
  return errorOfStatus(err.code, message, reason ?? `HOST_${Code[err.code] ?? err.code}`, field);
}

/** Reasons a host gives when it sheds this VM's load for a moment, not for good. */
const SHED = new Set(['RATE_LIMITED', 'TOO_MUCH_IO_IN_FLIGHT', 'TOO_MANY_OPERATIONS']);
/** How long a call keeps being made again while the host sheds load. */
const SHED_PATIENCE_MS = 30_000;

/** The wait a load-shedding refusal asks for (its RetryInfo, a little jittered), or undefined for any other refusal. */
function shedWait(err: ServiceError): number | undefined {
  try {
    const d = statusDetails(err);
    if (!d.reason || !SHED.has(d.reason)) return undefined;
    return Math.ceil((d.retryAfterMs ?? 100) * (1 + Math.random() / 4));
  } catch {
    return undefined;
  }
}

const OS: Partial<Record<GuestOs, VmInfo['guestOs']>> = { [GuestOs.GUEST_OS_WINDOWS]: 'windows', [GuestOs.GUEST_OS_LINUX]: 'linux' };
const KIND: Partial<Record<OperationKind, OperationView['kind']>> = {
  [OperationKind.OPERATION_KIND_CREATE_DISK]: 'create_disk',
  [OperationKind.OPERATION_KIND_CONNECT_DISK]: 'connect_disk',
  [OperationKind.OPERATION_KIND_REMOVE_DISK]: 'remove_disk',
};
const OP_STATE: Record<number, OperationView['state']> = {
  [WireOperationState.OPERATION_STATE_RUNNING]: 'running',
  [WireOperationState.OPERATION_STATE_ROLLING_BACK]: 'rolling_back',
  [WireOperationState.OPERATION_STATE_SUCCEEDED]: 'succeeded',
  [WireOperationState.OPERATION_STATE_FAILED]: 'failed',
};
const STEP_STATE: Record<number, OperationView['steps'][number]['state']> = {
  [WireStepState.STEP_STATE_PENDING]: 'pending',
  [WireStepState.STEP_STATE_RUNNING]: 'running',
  [WireStepState.STEP_STATE_DONE]: 'done',
  [WireStepState.STEP_STATE_SKIPPED]: 'skipped',
  [WireStepState.STEP_STATE_UNDOING]: 'undoing',
  [WireStepState.STEP_STATE_UNDONE]: 'undone',
  [WireStepState.STEP_STATE_FAILED]: 'failed',
};
const EVENT: Record<number, StepEventView['kind']> = {
  [WireStepEventKind.STEP_EVENT_KIND_STARTED]: 'started',
  [WireStepEventKind.STEP_EVENT_KIND_FINISHED]: 'finished',
  [WireStepEventKind.STEP_EVENT_KIND_SKIPPED]: 'skipped',
  [WireStepEventKind.STEP_EVENT_KIND_FAILED]: 'failed',
  [WireStepEventKind.STEP_EVENT_KIND_UNDO_STARTED]: 'undo_started',
  [WireStepEventKind.STEP_EVENT_KIND_UNDONE]: 'undone',
};
const RESOURCE_STATE: Record<number, string> = {
  [ResourceState.RESOURCE_STATE_ONLINE]: 'online',
  [ResourceState.RESOURCE_STATE_OFFLINE]: 'offline',
  [ResourceState.RESOURCE_STATE_ONLINE_PENDING]: 'online_pending',
  [ResourceState.RESOURCE_STATE_OFFLINE_PENDING]: 'offline_pending',
  [ResourceState.RESOURCE_STATE_FAILED]: 'failed',
};

const address = (a: WireAddress | undefined): ScsiAddress => ({ controller: a?.controller ?? 0, location: a?.location ?? 0 });

function toOperation(op: Operation | undefined): OperationView {
  if (!op) throw new Error('the host answered without the operation');
  const state = OP_STATE[op.state];
  if (!state) throw new Error(`the host reported operation ${op.id} in an unknown state ${op.state}`);
  return {
    id: op.id,
    kind: KIND[op.kind] ?? 'other',
    mountPath: op.mountPath,
    requestId: op.requestId,
    state,
    steps: op.steps.map((s) => ({ name: s.name, state: STEP_STATE[s.state] ?? 'pending', message: s.message, timeMs: (s.endTime ?? s.startTime)?.getTime() })),
    ...(op.result
      ? {
          result: {
            address: address(op.result.address),
            serial: op.result.serial,
            naaId: op.result.naaId,
            lunId: op.result.lunId,
            lunPath: op.result.lunPath,
            sizeBytes: Number(op.result.sizeBytes),
          },
        }
      : {}),
    ...(op.error ? { error: errorOfStatus(op.error.code, op.error.message, `OPERATION_${Code[op.error.code] ?? op.error.code}`) } : {}),
  };
}

function toDisk(d: Disk | undefined): HostDisk {
  if (!d) throw new Error('the host answered without the disk');
  return {
    mountPath: d.mountPath,
    serial: d.serial,
    naaId: d.naaId,
    sizeBytes: Number(d.sizeBytes),
    address: address(d.address),
    lunId: d.lunId,
    lunPath: d.lunPath,
    sharing: d.sharing === DiskSharing.DISK_SHARING_DEDICATED ? 'dedicated' : 'shared',
    resource: d.resource,
    resourceState: RESOURCE_STATE[d.resourceState] ?? 'unknown',
    mounted: d.mounted,
    volumeId: d.volumeId,
    volumeLabel: d.volumeLabel,
  };
}

export class GrpcHostLink implements HostLink, SimulatedHardware {
  private client?: PromiseClient<GuestServiceClient>;
  /**
   * WriteDisk goes over a connection of its own. Over one HTTP/2 connection on the VM's Unix
   * socket, a large WriteDisk on its way to the host and a large ReadDisk answer on its way
   * back, in flight together, could both stall for good (each side's sending waiting on the
   * other's receiving): every later call on that connection timed out, and a new client got
   * the same pooled connection. Found by the chaos run (a guest reading and writing at once
   * lost its host). Now each connection carries large messages one way only.
   */
  private writer?: PromiseClient<GuestServiceClient>;

  constructor(
    readonly endpoint: string,
    private readonly timeoutMs: number,
  ) {}

  private get guest(): PromiseClient<GuestServiceClient> {
    this.client ??= connect(GuestServiceClient, this.endpoint, { timeoutMs: this.timeoutMs });
    return this.client;
  }

  private get writes(): PromiseClient<GuestServiceClient> {
    this.writer ??= connect(GuestServiceClient, this.endpoint, { timeoutMs: this.timeoutMs, channelKey: 'guest-writes' });
    return this.writer;
  }

  /**
   * One call. A host shedding load (this VM over its request rate, or with too much in
   * flight) says how long to wait; the call is made again after that, for a while: every
   * call is a read or carries its request id, so doing it again is safe.
   */
  private async call<T>(method: string, body: (c: PromiseClient<GuestServiceClient>) => Promise<T>, client = (): PromiseClient<GuestServiceClient> => this.guest): Promise<T> {
    const giveUpAt = Date.now() + SHED_PATIENCE_MS;
    for (;;) {
      try {
        return await body(client());
      } catch (err) {
        const waitMs = isServiceError(err) && err.code === Code.RESOURCE_EXHAUSTED ? shedWait(err) : undefined;
        if (waitMs === undefined || Date.now() + waitMs > giveUpAt) throw hostError(err, this.endpoint, method);
        await new Promise((r) => setTimeout(r, waitMs));
      }
    }
  }

  async self(): Promise<VmInfo> {
    const vm = (await this.call('GetSelf', (c) => c.getSelf({}))).vm;
    const guestOs = vm ? OS[vm.guestOs] : undefined;
    if (!vm || !guestOs) throw new Error(`the host at ${this.endpoint} did not say which guest OS this VM runs`);
    return { id: vm.id, name: vm.name, guestOs, ha: vm.ha, node: vm.node, running: vm.state === VmState.VM_STATE_RUNNING };
  }

  async createDisk(req: { requestId: string; mountPath: string; sizeBytes: number; sharing: 'shared' | 'dedicated' }): Promise<OperationView> {
    const sharing = req.sharing === 'dedicated' ? DiskSharing.DISK_SHARING_DEDICATED : DiskSharing.DISK_SHARING_SHARED;
    const r = await this.call('CreateDisk', (c) => c.createDisk({ requestId: req.requestId, mountPath: req.mountPath, sizeBytes: BigInt(req.sizeBytes), sharing }));
    return toOperation(r.operation);
  }

  async connectDisk(req: { requestId: string; mountPath: string; lun: string }): Promise<OperationView> {
    return toOperation((await this.call('ConnectDisk', (c) => c.connectDisk(req))).operation);
  }

  async removeDisk(req: { requestId: string; mountPath: string; deleteLun: boolean }): Promise<OperationView> {
    return toOperation((await this.call('RemoveDisk', (c) => c.removeDisk(req))).operation);
  }

  async *watchOperation(operationId: string): AsyncIterable<WatchUpdate> {
    // No deadline: an operation takes what it takes; the host ends the stream after its final state.
    const giveUpAt = Date.now() + SHED_PATIENCE_MS;
    for (;;) {
      const stream = this.guest.raw.watchOperation({ operationId }, new Metadata(), {});
      let heard = false;
      try {
        for await (const m of stream as AsyncIterable<WatchOperationResponse>) {
          heard = true;
          yield {
            events: m.events.map((e) => ({ step: e.step, kind: EVENT[e.kind] ?? 'started', timeMs: e.time?.getTime() ?? Date.now(), message: e.message })),
            operation: toOperation(m.operation),
          };
        }
        return;
      } catch (err) {
        // A host shedding load refuses the watch before its first message: ask again after the wait.
        const waitMs = !heard && isServiceError(err) && err.code === Code.RESOURCE_EXHAUSTED ? shedWait(err) : undefined;
        if (waitMs === undefined || Date.now() + waitMs > giveUpAt) throw hostError(err, this.endpoint, 'WatchOperation');
        await new Promise((r) => setTimeout(r, waitMs));
      } finally {
        stream.cancel();
      }
    }
  }

  async listDisks(): Promise<HostDisk[]> {
    return (await this.call('ListDisks', (c) => c.listDisks({}))).disks.map(toDisk);
  }

  async reportMount(req: { requestId: string; mountPath: string; serial: string; volumeId: string; volumeLabel: string }): Promise<HostDisk> {
    return toDisk((await this.call('ReportMount', (c) => c.reportMount(req))).disk);
  }

  async reportUnmount(req: { requestId: string; mountPath: string }): Promise<HostDisk> {
    return toDisk((await this.call('ReportUnmount', (c) => c.reportUnmount(req))).disk);
  }

  async rescanBus(): Promise<BusDevice[]> {
    const r = await this.call('RescanBus', (c) => c.rescanBus({}));
    return r.devices.map((d) => ({ address: address(d.address), serial: d.serial, naaId: d.naaId, sizeBytes: Number(d.sizeBytes) }));
  }

  async readDisk(at: ScsiAddress, offset: number, length: number): Promise<Buffer> {
    const r = await this.call('ReadDisk', (c) => c.readDisk({ address: at, offsetBytes: BigInt(offset), lengthBytes: length }));
    const data = r.data;
    if (data.length !== length) throw new Error(`ReadDisk of ${length} bytes at ${offset} returned ${data.length}`);
    return data;
  }

  async writeDisk(requestId: string, at: ScsiAddress, offset: number, data: Buffer): Promise<void> {
    const r = await this.call('WriteDisk', (c) => c.writeDisk({ requestId, address: at, offsetBytes: BigInt(offset), data }), () => this.writes);
    if (r.writtenBytes !== data.length) throw new Error(`WriteDisk of ${data.length} bytes at ${offset} wrote ${r.writtenBytes}`);
  }

  reconnect(): void {
    this.close();
  }

  close(): void {
    this.client?.close();
    this.writer?.close();
    this.client = undefined;
    this.writer = undefined;
  }
}
