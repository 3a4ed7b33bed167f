/**
 * The simulated guest OS: the first implementation of the guest OS seam (guest-os.ts). Its
 * "hardware" is the VM's GuestService: RescanBus is the SCSI bus, ReadDisk/WriteDisk the
 * block path. It initializes a disk with layout.ts (what a real guest's sgdisk and mkfs
 * would write) and reads every byte back. Mounting is the guest's own bookkeeping: folder
 * contents are not simulated, so there is nothing more to do at the OS level.
 */
import type { DrivePath } from '../common/drive-path.js';
import { parseOnDisk } from './disk-io.js';
import type { BlockDevice, BusDevice, GuestOsDriver, PassthruVolume, VolumeSpec } from './guest-os.js';
import { MAX_IO_BYTES } from './guest-os.js';
import type { ScsiAddress } from './host-link.js';
import { buildDiskLayout, parseDiskLayout, type ParsedDisk } from './layout.js';

/** The VM's virtual hardware as the host agent presents it. */
export interface SimulatedHardware {
  rescanBus(): Promise<BusDevice[]>;
  readDisk(address: ScsiAddress, offset: number, length: number): Promise<Buffer>;
  writeDisk(requestId: string, address: ScsiAddress, offset: number, data: Buffer): Promise<void>;
}

export class SimulatedGuestOs implements GuestOsDriver {
  constructor(private readonly hardware: SimulatedHardware) {}

  rescanBus(): Promise<BusDevice[]> {
    return this.hardware.rescanBus();
  }

  open(device: BusDevice): BlockDevice {
    const hw = this.hardware;
    return {
      device,
      read: (offset, length) => hw.readDisk(device.address, offset, length),
      write: (offset, data, requestId) => hw.writeDisk(requestId, device.address, offset, data),
    };
  }

  async writeVolume(disk: BlockDevice, spec: VolumeSpec, requestId: string): Promise<void> {
    const layout = buildDiskLayout({ diskBytes: disk.device.sizeBytes, ...spec });
    const pieces: { offset: number; data: Buffer }[] = [];
    for (const w of layout.writes) {
      for (let at = 0; at < w.data.length; at += MAX_IO_BYTES) pieces.push({ offset: w.offset + at, data: w.data.subarray(at, at + MAX_IO_BYTES) });
    }
    // The backup header last of all: until it is there the disk reads as foreign, never as a half-written passthru volume.
    for (const [i, p] of pieces.entries()) await disk.write(p.offset, p.data, `${requestId}:${i}`);
    for (const p of pieces) {
      const back = await disk.read(p.offset, p.data.length);
      if (!back.equals(p.data)) {
        const at = p.data.findIndex((b, i) => back[i] !== b);
        throw new Error(`the disk at SCSI ${disk.device.address.controller}:${disk.device.address.location} read back other bytes than were written (first at byte ${p.offset + at}): the volume was not initialized`);
      }
    }
  }

  probe(disk: BlockDevice): Promise<ParsedDisk> {
    return parseOnDisk(disk, (read) => parseDiskLayout(read, disk.device.sizeBytes));
  }

  async mount(_disk: BlockDevice, _volume: PassthruVolume, _path: DrivePath): Promise<void> {
    // Nothing at the OS level: the mount table in the state dir is the simulated guest's mount.
  }

  async unmount(_path: DrivePath): Promise<void> {
    // As for mount.
  }
}
