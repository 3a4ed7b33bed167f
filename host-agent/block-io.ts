/**
 * Pass-through block I/O: a VM reads and writes the disks attached to it, by SCSI address,
 * and the host carries each call to the array as the node the VM runs on. The host checks
 * only what is its to know (the address holds this VM's disk, the VM runs, the resource is
 * Online); whether the node may reach the LUN is the array's masking and reservations.
 */
import { createHash } from 'node:crypto';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../common/errors.js';
import type { HostAgent } from './agent.js';
import type { DataPlane } from './array.js';
import { InFlight } from './limits.js';
import type { ResourceRecord, VmRecord } from './model.js';

const SECTOR = 512;
export const MAX_IO_BYTES = 1024 * 1024;
const MAX_REQUEST_ID = 128;

export interface DiskAddress {
  controller: number;
  location: number;
}

export class BlockIo {
  /** Each VM's calls in flight: a VM that floods its disk waits its turn, others do not. */
  private readonly inFlight: InFlight;

  constructor(
    private readonly agent: HostAgent,
    /** The data plane of a node (its initiator, its connection). */
    private readonly dataPlane: (node: string) => DataPlane | undefined,
  ) {
    this.inFlight = new InFlight('block I/O calls', 'TOO_MUCH_IO_IN_FLIGHT', () => agent.limits.ioInFlight, 5);
  }

  private async bounded<R>(vmId: string, io: () => Promise<R>): Promise<R> {
    this.inFlight.enter(vmId);
    try {
      return await io();
    } finally {
      this.inFlight.leave(vmId);
    }
  }

  /** The disk at the address of this VM, ready for I/O, with the node to carry it. */
  private target(vmId: string, address: DiskAddress | undefined): { vm: VmRecord; disk: ResourceRecord; plane: DataPlane } {
    const vm = this.agent.vm(vmId);
    if (!address) throw new InvalidArgumentError('address', 'address is required: the disk\'s SCSI controller and location, as RescanBus lists them');
    const a = this.agent.state.attachments.get(`${vmId}/${address.controller}/${address.location}`);
    const disk = a ? this.agent.state.resources.get(a.serial) : undefined;
    if (!a || !disk) {
      throw new NotFoundError('disk', `${address.controller}:${address.location}`, `VM ${vmId} has no disk at SCSI ${address.controller}:${address.location}: RescanBus lists its disks`);
    }
    if (!vm.running) throw new FailedPreconditionError(`VM ${vmId} is off: start it first`, 'VM_NOT_RUNNING');
    // A failed node carries nothing more, even before its VMs have moved: retry once they run elsewhere.
    if (this.agent.state.nodes.get(vm.node)?.up === false) {
      throw new UnavailableError(`node ${vm.node} has failed; VM ${vmId} is restarting on another node: retry in a moment`, 'VM_FAILING_OVER');
    }
    const moving = this.agent.state.groups.get(vm.group)?.movingTo;
    if (moving) throw new UnavailableError(`VM ${vmId} is moving to node ${moving}: retry in a moment`, 'VM_MOVING');
    if (disk.state !== 'online') {
      throw new FailedPreconditionError(`disk resource ${disk.name} is ${disk.state.replace('_', ' ')}, not online: retry once its operation or move has ended`, 'RESOURCE_NOT_ONLINE');
    }
    const plane = this.dataPlane(vm.node);
    if (!plane) throw new UnavailableError(`node ${vm.node} has no path to the array`, 'NO_DATA_PATH');
    return { vm, disk, plane };
  }

  private checkRange(disk: ResourceRecord, offset: bigint, length: number, lengthField: string): void {
    if (offset % BigInt(SECTOR) !== 0n) throw new InvalidArgumentError('offset_bytes', `offset_bytes ${offset} is not a multiple of ${SECTOR}`);
    if (length === 0 || length % SECTOR !== 0 || length > MAX_IO_BYTES) {
      throw new InvalidArgumentError(lengthField, `${lengthField} ${length} must be a multiple of ${SECTOR} from ${SECTOR} to ${MAX_IO_BYTES} (1 MiB)`);
    }
    if (offset + BigInt(length) > BigInt(disk.lun.sizeBytes)) {
      throw new InvalidArgumentError('offset_bytes', `${length} bytes at offset ${offset} run past the end of the ${disk.lun.sizeBytes}-byte disk`);
    }
  }

  async read(vmId: string, req: { address: DiskAddress | undefined; offsetBytes: bigint; lengthBytes: number }): Promise<Buffer> {
    const { disk, plane } = this.target(vmId, req.address);
    this.checkRange(disk, req.offsetBytes, req.lengthBytes, 'length_bytes');
    return this.bounded(vmId, () => plane.read(disk.lun.uuid, req.offsetBytes, req.lengthBytes));
  }

  async write(vmId: string, req: { requestId: string; address: DiskAddress | undefined; offsetBytes: bigint; data: Buffer }): Promise<number> {
    if (req.requestId.length > MAX_REQUEST_ID || !/^[\x21-\x7e]*$/.test(req.requestId)) {
      throw new InvalidArgumentError('request_id', `request_id must be at most ${MAX_REQUEST_ID} printable ASCII characters without spaces (or empty)`);
    }
    const { vm, disk, plane } = this.target(vmId, req.address);
    this.checkRange(disk, req.offsetBytes, req.data.length, 'data');
    // Request ids are the VM's own: scoped so two VMs' ids never meet on the array.
    const id = req.requestId === '' ? '' : `vm:${vmId}:${createHash('sha256').update(req.requestId).digest('base64url').slice(0, 32)}`;
    try {
      return await this.bounded(vmId, () => plane.write(id, disk.lun.uuid, req.offsetBytes, req.data));
    } catch (err) {
      throw this.fencedByMove(err, vmId, vm.node);
    }
  }

  /**
   * A write that went out through `node` and came back "reservation conflict" because the
   * VM's group moved (or its node failed) while it was on its way: the new owner fenced the
   * old node, as it must, and nothing was written. That is the failover's business, not the
   * guest's: UNAVAILABLE with the reason a guest already retries on, and the retry goes
   * through the node that carries the VM now. Any other refusal is passed on as it is.
   * (Found by the chaos run: a write in flight across a MoveGroup failed the guest's command
   * with FAILED_PRECONDITION, though its I/O is promised to ride a move out.)
   */
  private fencedByMove(err: unknown, vmId: string, node: string): unknown {
    if (!(err instanceof FailedPreconditionError) || err.reason !== 'RESERVATION_CONFLICT') return err;
    const state = this.agent.state;
    const vm = state.vms.get(vmId);
    if (state.nodes.get(node)?.up === false) {
      return new UnavailableError(`node ${node} failed while this write was on its way through it; the array refused it (nothing was written): retry in a moment`, 'VM_FAILING_OVER');
    }
    if (vm && (vm.node !== node || state.groups.get(vm.group)?.movingTo)) {
      return new UnavailableError(`VM ${vmId} moved from node ${node} while this write was on its way through it; the array refused it (nothing was written): retry in a moment`, 'VM_MOVING');
    }
    return err;
  }
}
