/**
 * The guest OS seam (DESIGN.md, "Seams we keep"): what the guest agent asks of the operating
 * system it runs in. The simulator (sim-os.ts) is the first implementation, carried over the
 * VM's GuestService (RescanBus, ReadDisk, WriteDisk); a Linux driver would rescan through
 * sysfs, do block I/O on /dev/sdX, initialize with sgdisk and mkfs, and mount with mount(8).
 * The guest volume manager (volumes.ts) only ever talks to this interface.
 */
import type { DrivePath } from '../common/drive-path.js';
import type { ScsiAddress } from './host-link.js';
import type { GuestOs, ParsedDisk } from './layout.js';

/** One disk on the VM's virtual SCSI bus, as a rescan shows it. */
export interface BusDevice {
  address: ScsiAddress;
  serial: string;
  naaId: string;
  sizeBytes: number;
}

/**
 * Block I/O on one disk. Offsets and lengths are multiples of 512 bytes, at most
 * MAX_IO_BYTES a call, inside the disk.
 */
export interface BlockDevice {
  readonly device: BusDevice;
  read(offset: number, length: number): Promise<Buffer>;
  /** A repeat with the same `requestId` is answered from the first write and changes nothing. */
  write(offset: number, data: Buffer, requestId: string): Promise<void>;
}

/** What a new volume is: chosen (and recorded) before the first byte is written, so a retry writes the same bytes. */
export interface VolumeSpec {
  guestOs: GuestOs;
  label: string;
  /** 32 lower-case hexadecimal digits. */
  volumeId: string;
  createdAt: Date;
  diskGuid: string;
  partitionGuid: string;
}

export type PassthruVolume = Extract<ParsedDisk, { kind: 'passthru' }>;

export interface GuestOsDriver {
  /** Rescans the SCSI bus; every disk the VM has now. */
  rescanBus(): Promise<BusDevice[]>;
  open(device: BusDevice): BlockDevice;
  /**
   * Writes a partition table and an empty volume on the disk (DESIGN.md, "What is on a
   * pass-through disk"), then reads it back and fails if a byte differs. `requestId`
   * prefixes the ids of its writes, so a retry of the same initialization is idempotent.
   */
  writeVolume(disk: BlockDevice, spec: VolumeSpec, requestId: string): Promise<void>;
  /** What is on the disk: blank, a passthru volume, or something foreign (with why). */
  probe(disk: BlockDevice): Promise<ParsedDisk>;
  /** Mounts the volume at the path; the guest's mount table records it. */
  mount(disk: BlockDevice, volume: PassthruVolume, path: DrivePath): Promise<void>;
  /** Unmounts whatever is at the path; nothing there is not an error. */
  unmount(path: DrivePath): Promise<void>;
}

/** The most one block I/O call carries (GuestService's limit). */
export const MAX_IO_BYTES = 1024 * 1024;
