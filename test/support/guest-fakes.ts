/**
 * In-memory fakes of the guest agent's own seams, for unit tests of the guest volume
 * manager: a VM's SCSI bus with sparse disks (SimulatedHardware, so the real
 * SimulatedGuestOs runs on it), a host (HostLink) whose operations attach and detach disks
 * on that bus, and a clock whose sleeps take no time.
 */
import { status as Code } from '@grpc/grpc-js';
import { errorOfStatus } from '../../guest-agent/grpc-host.js';
import type { BusDevice } from '../../guest-agent/guest-os.js';
import {
  HOST_UNREACHABLE,
  type AttachedDisk,
  type HostDisk,
  type HostLink,
  type OperationView,
  type ScsiAddress,
  type Sharing,
  type VmInfo,
  type WatchUpdate,
} from '../../guest-agent/host-link.js';
import type { SimulatedHardware } from '../../guest-agent/sim-os.js';
import type { Clock } from '../../guest-agent/discovery.js';
import { UnavailableError } from '../../common/errors.js';

const SECTOR = 512;
const at = (a: ScsiAddress): string => `${a.controller}:${a.location}`;

/** A disk's bytes: only sectors written are kept. */
export class SparseBytes {
  readonly sectors = new Map<number, Buffer>();

  constructor(readonly size: number) {}

  read(offset: number, length: number): Buffer {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i += SECTOR) this.sectors.get((offset + i) / SECTOR)?.copy(out, i);
    return out;
  }

  write(offset: number, data: Buffer): void {
    for (let i = 0; i < data.length; i += SECTOR) this.sectors.set((offset + i) / SECTOR, Buffer.from(data.subarray(i, i + SECTOR)));
  }
}

export interface FakeDisk {
  device: BusDevice;
  bytes: SparseBytes;
}

export const unreachable = (): UnavailableError => new UnavailableError('the host agent at unix:/fake cannot be reached (Connection dropped)', HOST_UNREACHABLE);

/** The VM's bus. A disk can be hidden for its first rescans, as a slow guest OS would see it. */
export class FakeBus implements SimulatedHardware {
  readonly disks = new Map<string, FakeDisk>();
  private readonly hiddenFor = new Map<string, number>();
  rescans = 0;
  readonly writeIds = new Set<string>();
  /** Errors the next block I/O calls throw, in order. */
  readonly ioErrors: Error[] = [];

  attach(disk: FakeDisk, hiddenForRescans = 0): void {
    this.disks.set(at(disk.device.address), disk);
    if (hiddenForRescans > 0) this.hiddenFor.set(at(disk.device.address), hiddenForRescans);
  }

  detach(address: ScsiAddress): void {
    this.disks.delete(at(address));
  }

  async rescanBus(): Promise<BusDevice[]> {
    this.rescans++;
    const out: BusDevice[] = [];
    for (const [key, d] of this.disks) {
      const hidden = this.hiddenFor.get(key) ?? 0;
      if (hidden > 0) this.hiddenFor.set(key, hidden - 1);
      else out.push({ ...d.device, address: { ...d.device.address } });
    }
    return out;
  }

  private disk(address: ScsiAddress): FakeDisk {
    const e = this.ioErrors.shift();
    if (e) throw e;
    const d = this.disks.get(at(address));
    if (!d) throw errorOfStatus(Code.NOT_FOUND, `no disk at SCSI ${at(address)}`, 'DISK_NOT_FOUND');
    return d;
  }

  async readDisk(address: ScsiAddress, offset: number, length: number): Promise<Buffer> {
    if (offset % SECTOR !== 0 || length % SECTOR !== 0 || length > 1024 * 1024) throw new Error(`unaligned or too long read ${offset}+${length}`);
    return this.disk(address).bytes.read(offset, length);
  }

  async writeDisk(requestId: string, address: ScsiAddress, offset: number, data: Buffer): Promise<void> {
    if (offset % SECTOR !== 0 || data.length % SECTOR !== 0 || data.length > 1024 * 1024) throw new Error(`unaligned or too long write ${offset}+${data.length}`);
    const d = this.disk(address);
    // As the host does: a repeated request id is answered from the first write.
    if (requestId !== '' && this.writeIds.has(requestId)) return;
    this.writeIds.add(requestId);
    d.bytes.write(offset, data);
  }
}

export function newDisk(serial: string, sizeBytes: number, address: ScsiAddress = { controller: 0, location: 0 }): FakeDisk {
  const naaId = `600a0980${Buffer.from(serial).toString('hex')}`;
  return { device: { address, serial, naaId, sizeBytes }, bytes: new SparseBytes(sizeBytes) };
}

interface FakeOp {
  view: OperationView;
  /** What happens when the operation runs (at its first watch). */
  run(): void;
  ran: boolean;
}

/**
 * A host agent: CreateDisk attaches a new disk at the next free location, ConnectDisk one of
 * `available`, RemoveDisk detaches; each runs when first watched. Idempotent by request id.
 */
export class FakeHost implements HostLink {
  readonly calls: string[] = [];
  /** Errors the next calls of a method throw, in order. */
  readonly failNext: Record<string, Error[]> = {};
  readonly disks = new Map<string, HostDisk>();
  readonly available = new Map<string, FakeDisk>();
  readonly ops = new Map<string, FakeOp>();
  readonly requests = new Map<string, string>();
  /** Makes the next operation end FAILED with this error instead. */
  failOperation?: Error;
  /** Called when CreateDisk arrives (before anything happens). */
  onCreate?: (req: { requestId: string }) => void;
  /** Where the next attached disk goes, and for how many rescans it stays hidden. */
  nextAddress?: ScsiAddress;
  hideNewDisks = 0;
  /** Where a new disk shows on the bus, if not where the host says it attached it (a broken bus). */
  busAddress?: ScsiAddress;
  reconnects = 0;
  private location = 0;
  private serials = 0;

  constructor(
    readonly bus: FakeBus,
    readonly vm: VmInfo = { id: 'vm1', name: 'web1', guestOs: 'windows', ha: true, node: 'node1', running: true },
  ) {}

  private enter(method: string): void {
    this.calls.push(method);
    const e = this.failNext[method]?.shift();
    if (e) throw e;
  }

  async self(): Promise<VmInfo> {
    this.enter('GetSelf');
    return { ...this.vm };
  }

  private start(kind: OperationView['kind'], requestId: string, mountPath: string, run: () => AttachedDisk | undefined): OperationView {
    const known = this.requests.get(requestId);
    if (known) return this.ops.get(known)!.view;
    const id = `op-${this.ops.size + 1}`;
    const view: OperationView = {
      id,
      kind,
      mountPath,
      requestId,
      state: 'running',
      steps: [
        { name: 'validate', state: 'done', message: '', timeMs: 1 },
        { name: 'scsi.attach', state: 'pending', message: '' },
      ],
    };
    const failure = this.failOperation;
    this.failOperation = undefined;
    const op: FakeOp = {
      view,
      ran: false,
      run: () => {
        op.ran = true;
        if (failure) {
          op.view = { ...view, state: 'failed', error: failure, steps: [view.steps[0]!, { name: 'scsi.attach', state: 'failed', message: failure.message }] };
          return;
        }
        const result = run();
        op.view = { ...view, state: 'succeeded', ...(result ? { result } : {}), steps: [view.steps[0]!, { name: 'scsi.attach', state: 'done', message: '', timeMs: 2 }] };
      },
    };
    this.ops.set(id, op);
    this.requests.set(requestId, id);
    return view;
  }

  private attach(mountPath: string, disk: FakeDisk, sharing: Sharing): AttachedDisk {
    const address = this.nextAddress ?? { controller: 0, location: this.location++ };
    disk.device.address = this.busAddress ?? address;
    this.bus.attach(disk, this.hideNewDisks);
    this.disks.set(mountPath.toUpperCase(), {
      mountPath,
      serial: disk.device.serial,
      naaId: disk.device.naaId,
      sizeBytes: disk.device.sizeBytes,
      address,
      lunId: 0,
      lunPath: `/vol/passthru/${disk.device.serial}`,
      sharing,
      resource: `Disk VM vm1 MP ${mountPath}`,
      resourceState: 'online',
      mounted: false,
      volumeId: '',
      volumeLabel: '',
    });
    return { address, serial: disk.device.serial, naaId: disk.device.naaId, lunId: 0, lunPath: `/vol/passthru/${disk.device.serial}`, sizeBytes: disk.device.sizeBytes };
  }

  async createDisk(req: { requestId: string; mountPath: string; sizeBytes: number; sharing: Sharing }): Promise<OperationView> {
    this.enter('CreateDisk');
    this.onCreate?.(req);
    return this.start('create_disk', req.requestId, req.mountPath, () => this.attach(req.mountPath, newDisk(`PTSM${String(++this.serials).padStart(8, '0')}`, req.sizeBytes), req.sharing));
  }

  async connectDisk(req: { requestId: string; mountPath: string; lun: string }): Promise<OperationView> {
    this.enter('ConnectDisk');
    const disk = this.available.get(req.lun);
    if (!disk && !this.requests.has(req.requestId)) throw errorOfStatus(Code.NOT_FOUND, `LUN ${req.lun} is not in Available Storage`, 'LUN_NOT_FOUND');
    return this.start('connect_disk', req.requestId, req.mountPath, () => {
      this.available.delete(req.lun);
      return this.attach(req.mountPath, disk!, 'shared');
    });
  }

  async removeDisk(req: { requestId: string; mountPath: string; deleteLun: boolean }): Promise<OperationView> {
    this.enter('RemoveDisk');
    return this.start('remove_disk', req.requestId, req.mountPath, () => {
      const d = this.disks.get(req.mountPath.toUpperCase());
      if (!d) return undefined;
      this.disks.delete(req.mountPath.toUpperCase());
      this.bus.detach(d.address);
      return { address: d.address, serial: d.serial, naaId: d.naaId, lunId: d.lunId, lunPath: d.lunPath, sizeBytes: d.sizeBytes };
    });
  }

  private op(id: string): FakeOp {
    const op = this.ops.get(id);
    if (!op) throw errorOfStatus(Code.NOT_FOUND, `operation ${id} does not exist`, 'OPERATION_NOT_FOUND');
    return op;
  }

  async *watchOperation(operationId: string): AsyncIterable<WatchUpdate> {
    this.enter('WatchOperation');
    const op = this.op(operationId);
    yield { events: [], operation: op.view };
    if (op.ran) return;
    op.run();
    const last = op.view.steps[1]!;
    yield {
      events: [
        { step: 'scsi.attach', kind: 'started', timeMs: 1, message: '' },
        { step: 'scsi.attach', kind: last.state === 'failed' ? 'failed' : 'finished', timeMs: 2, message: last.message },
      ],
      operation: op.view,
    };
  }

  async listDisks(): Promise<HostDisk[]> {
    this.enter('ListDisks');
    return [...this.disks.values()].map((d) => ({ ...d }));
  }

  async reportMount(req: { requestId: string; mountPath: string; serial: string; volumeId: string; volumeLabel: string }): Promise<HostDisk> {
    this.enter('ReportMount');
    const d = this.disks.get(req.mountPath.toUpperCase());
    if (!d) throw errorOfStatus(Code.NOT_FOUND, `VM vm1 has no disk at ${req.mountPath}`, 'MOUNT_NOT_FOUND');
    Object.assign(d, { mounted: true, volumeId: req.volumeId, volumeLabel: req.volumeLabel });
    return { ...d };
  }

  async reportUnmount(req: { requestId: string; mountPath: string }): Promise<HostDisk> {
    this.enter('ReportUnmount');
    const d = this.disks.get(req.mountPath.toUpperCase());
    if (!d) throw errorOfStatus(Code.NOT_FOUND, `VM vm1 has no disk at ${req.mountPath}`, 'MOUNT_NOT_FOUND');
    Object.assign(d, { mounted: false, volumeId: '', volumeLabel: '' });
    return { ...d };
  }

  reconnect(): void {
    this.reconnects++;
  }

  close(): void {}
}

/** A clock whose sleeps advance it at once, remembering each. */
export class FakeClock implements Clock {
  t = 1_700_000_000_000;
  readonly sleeps: number[] = [];

  now(): number {
    return this.t;
  }

  async sleep(ms: number): Promise<void> {
    this.sleeps.push(ms);
    this.t += ms;
  }
}
