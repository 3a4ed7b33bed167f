/**
 * What a guest writes on a blank pass-through disk, and how it recognizes one it (or another
 * guest) wrote before: DESIGN.md, "What is on a pass-through disk". Pure functions: building
 * returns the byte ranges to write; parsing reads through a caller-supplied `read` function.
 *
 * Sectors are 512 bytes. For a disk of N sectors (last LBA L = N - 1):
 *
 * | LBA / byte offset        | contents                                                      |
 * |--------------------------|---------------------------------------------------------------|
 * | LBA 0                    | protective MBR: one entry, type 0xEE, start LBA 1, size        |
 * |                          | min(N - 1, 0xFFFFFFFF); boot signature 0x55 0xAA at 510        |
 * | LBA 1                    | primary GPT header (table below)                              |
 * | LBA 2 .. 33              | partition entry array: 128 entries x 128 bytes (16 KiB)       |
 * | LBA 2048 .. P            | the one partition (1 MiB aligned start and end, P <= L - 33)  |
 * |   byte 1 MiB             |   volume header, one 4 KiB block (table below)                |
 * |   byte 1 MiB + 4096 ..   |   the volume's data area, to the partition's end              |
 * | LBA L - 32 .. L - 1      | backup partition entry array (same bytes as the primary)      |
 * | LBA L                    | backup GPT header                                             |
 *
 * GPT header (UEFI 2.x, all integers little-endian, rest of the sector zero):
 *
 * | off | len | field                                                                      |
 * |-----|-----|----------------------------------------------------------------------------|
 * |   0 |   8 | signature "EFI PART"                                                        |
 * |   8 |   4 | revision 0x00010000 (1.0)                                                   |
 * |  12 |   4 | header size 92                                                              |
 * |  16 |   4 | CRC32 of bytes 0..91 with this field zeroed                                 |
 * |  20 |   4 | reserved, 0                                                                 |
 * |  24 |   8 | my LBA (1 primary, L backup)                                                |
 * |  32 |   8 | alternate LBA (L primary, 1 backup)                                         |
 * |  40 |   8 | first usable LBA 34                                                         |
 * |  48 |   8 | last usable LBA L - 33                                                      |
 * |  56 |  16 | disk GUID (mixed-endian, see below)                                         |
 * |  72 |   8 | partition entries LBA (2 primary, L - 32 backup)                            |
 * |  80 |   4 | number of entries 128                                                       |
 * |  84 |   4 | entry size 128                                                              |
 * |  88 |   4 | CRC32 of the whole 16 KiB entry array                                       |
 *
 * Partition entry: 0 type GUID (16), 16 partition GUID (16), 32 first LBA (8), 40 last LBA
 * (8, inclusive), 48 attributes (8, 0), 56 name (72 bytes: 36 UTF-16LE code units, the
 * volume label, zero padded). Type GUID: EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 ("Microsoft
 * basic data") on a Windows guest, 0FC63DAF-8483-4772-8E79-3D69D8477DE4 ("Linux
 * filesystem") on a Linux guest. GUIDs are stored as GPT does: the first three fields
 * little-endian, the last two (8 bytes) in text order.
 *
 * Volume header (passthru's stand-in for NTFS/ext4; integers little-endian, rest zero):
 *
 * | off | len | field                                                                      |
 * |-----|-----|----------------------------------------------------------------------------|
 * |   0 |   8 | magic "PTHRUVOL"                                                            |
 * |   8 |   4 | format version, 1                                                           |
 * |  12 |   4 | header size, 4096                                                           |
 * |  16 |   1 | guest OS: 1 = windows, 2 = linux                                            |
 * |  17 |   1 | label length in bytes (1..32)                                               |
 * |  18 |   6 | reserved, 0                                                                 |
 * |  24 |  32 | label, UTF-8, zero padded                                                   |
 * |  56 |  16 | volume id: the 16 bytes the 32-hex-digit id spells, in text order           |
 * |  72 |   8 | created at, milliseconds since the Unix epoch (uint64)                      |
 * |  80 |   8 | data offset, bytes from the partition's start (4096)                        |
 * |  88 |   8 | data length in bytes (partition size - 4096)                                |
 * |  96 |   4 | CRC32 of bytes 0..4095 with this field zeroed                               |
 *
 * A volume id is 32 hexadecimal digits (128 bits, no dashes), e.g. a UUID with its dashes
 * removed; parsing always returns it in lower case. CRC32 is the IEEE/zlib one (reflected
 * polynomial 0xEDB88320, initial value and final XOR 0xFFFFFFFF), as GPT uses.
 */
import { randomUUID } from 'node:crypto';
import { InvalidArgumentError } from '../common/errors.js';

export type GuestOs = 'windows' | 'linux';

export const SECTOR_BYTES = 512;
export const MIN_DISK_BYTES = 4 * 1024 * 1024;
export const ALIGN_BYTES = 1024 * 1024;
export const VOLUME_HEADER_BYTES = 4096;
export const VOLUME_FORMAT_VERSION = 1;
export const VOLUME_MAGIC = 'PTHRUVOL';
export const MAX_LABEL_BYTES = 32;

const GPT_SIGNATURE = 'EFI PART';
const GPT_REVISION = 0x00010000;
const GPT_HEADER_SIZE = 92;
const ENTRY_COUNT = 128;
const ENTRY_SIZE = 128;
const ENTRY_ARRAY_BYTES = ENTRY_COUNT * ENTRY_SIZE; // 16 KiB
const ENTRY_ARRAY_SECTORS = ENTRY_ARRAY_BYTES / SECTOR_BYTES; // 32
const FIRST_USABLE_LBA = 2n + BigInt(ENTRY_ARRAY_SECTORS); // 34
const ALIGN_SECTORS = BigInt(ALIGN_BYTES / SECTOR_BYTES); // 2048
const NAME_CODE_UNITS = 36;

export const PARTITION_TYPE: Readonly<Record<GuestOs, string>> = {
  windows: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7',
  linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4',
};
const OS_CODE: Readonly<Record<GuestOs, number>> = { windows: 1, linux: 2 };

// ---------------------------------------------------------------------------------------
// CRC32 (IEEE 802.3, reflected 0xEDB88320)

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

export function crc32(data: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// ---------------------------------------------------------------------------------------
// GUIDs

const GUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** A GUID in text form to GPT's 16-byte on-disk form (first three fields little-endian). */
export function guidToBytes(guid: string): Buffer {
  if (!GUID_RE.test(guid)) throw new InvalidArgumentError('guid', `${JSON.stringify(guid)} is not a GUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)`);
  const hex = guid.replace(/-/g, '');
  const b = Buffer.from(hex, 'hex');
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  return b;
}

/** GPT's 16-byte on-disk form to upper-case text. */
export function bytesToGuid(bytes: Uint8Array): string {
  const b = Buffer.from(bytes.subarray(0, 16));
  b.subarray(0, 4).reverse();
  b.subarray(4, 6).reverse();
  b.subarray(6, 8).reverse();
  const h = b.toString('hex').toUpperCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// ---------------------------------------------------------------------------------------
// Input validation

/** Throws InvalidArgumentError unless `label` is 1..32 UTF-8 bytes of printable characters. */
export function validateLabel(label: string): void {
  if (typeof label !== 'string' || label.length === 0) throw new InvalidArgumentError('label', 'a volume label must not be empty', 'LABEL_INVALID');
  // \p{C}: control (Cc), format (Cf), lone surrogate (Cs), private use (Co), unassigned (Cn).
  if (/\p{C}/u.test(label)) {
    throw new InvalidArgumentError('label', `volume label ${JSON.stringify(label)} holds a control or non-printable character`, 'LABEL_INVALID');
  }
  const bytes = Buffer.byteLength(label, 'utf8');
  if (bytes > MAX_LABEL_BYTES) {
    throw new InvalidArgumentError('label', `volume label ${JSON.stringify(label)} is ${bytes} bytes in UTF-8; at most ${MAX_LABEL_BYTES} are allowed`, 'LABEL_TOO_LONG');
  }
}

function validateDiskBytes(diskBytes: number): void {
  if (!Number.isSafeInteger(diskBytes) || diskBytes <= 0 || diskBytes % SECTOR_BYTES !== 0) {
    throw new InvalidArgumentError('diskBytes', `disk size ${diskBytes} is not a positive whole number of ${SECTOR_BYTES}-byte sectors`, 'DISK_SIZE_INVALID');
  }
  if (diskBytes < MIN_DISK_BYTES) {
    throw new InvalidArgumentError('diskBytes', `disk size ${diskBytes} bytes is below the ${MIN_DISK_BYTES} bytes (4 MiB) a passthru volume needs`, 'DISK_TOO_SMALL');
  }
}

const VOLUME_ID_RE = /^[0-9a-f]{32}$/i;

// ---------------------------------------------------------------------------------------
// Building

export interface BuildLayoutInput {
  diskBytes: number;
  guestOs: GuestOs;
  label: string;
  /** 32 hexadecimal digits. */
  volumeId: string;
  createdAt: Date;
  diskGuid?: string;
  partitionGuid?: string;
}

export interface PartitionRange {
  /** Inclusive LBAs. */
  firstLba: bigint;
  lastLba: bigint;
}

export interface DiskLayout {
  /** Byte ranges to write, in ascending offset order; everything else may stay as it is. */
  writes: { offset: number; data: Buffer }[];
  partition: PartitionRange;
  /** Byte offset on the disk where the volume's data area starts. */
  dataOffset: number;
  dataBytes: number;
}

interface Geometry {
  lastLba: bigint;
  lastUsable: bigint;
  partFirst: bigint;
  partLast: bigint;
}

function geometry(diskBytes: number): Geometry {
  const sectors = BigInt(diskBytes / SECTOR_BYTES);
  const lastLba = sectors - 1n;
  const lastUsable = lastLba - 1n - BigInt(ENTRY_ARRAY_SECTORS);
  const partFirst = ALIGN_SECTORS;
  const partLast = ((lastUsable + 1n) / ALIGN_SECTORS) * ALIGN_SECTORS - 1n;
  return { lastLba, lastUsable, partFirst, partLast };
}

function buildMbr(diskSectors: bigint): Buffer {
  const mbr = Buffer.alloc(SECTOR_BYTES);
  const e = 446;
  mbr[e] = 0x00; // not bootable
  mbr[e + 1] = 0x00; // start CHS 0/0/2
  mbr[e + 2] = 0x02;
  mbr[e + 3] = 0x00;
  mbr[e + 4] = 0xee; // GPT protective
  mbr[e + 5] = 0xff; // end CHS: beyond what CHS can express
  mbr[e + 6] = 0xff;
  mbr[e + 7] = 0xff;
  mbr.writeUInt32LE(1, e + 8);
  const size = diskSectors - 1n > 0xffffffffn ? 0xffffffff : Number(diskSectors - 1n);
  mbr.writeUInt32LE(size, e + 12);
  mbr[510] = 0x55;
  mbr[511] = 0xaa;
  return mbr;
}

function buildGptHeader(f: {
  myLba: bigint;
  alternateLba: bigint;
  lastUsable: bigint;
  diskGuid: Buffer;
  entriesLba: bigint;
  entriesCrc: number;
}): Buffer {
  const h = Buffer.alloc(SECTOR_BYTES);
  h.write(GPT_SIGNATURE, 0, 'latin1');
  h.writeUInt32LE(GPT_REVISION, 8);
  h.writeUInt32LE(GPT_HEADER_SIZE, 12);
  h.writeBigUInt64LE(f.myLba, 24);
  h.writeBigUInt64LE(f.alternateLba, 32);
  h.writeBigUInt64LE(FIRST_USABLE_LBA, 40);
  h.writeBigUInt64LE(f.lastUsable, 48);
  f.diskGuid.copy(h, 56);
  h.writeBigUInt64LE(f.entriesLba, 72);
  h.writeUInt32LE(ENTRY_COUNT, 80);
  h.writeUInt32LE(ENTRY_SIZE, 84);
  h.writeUInt32LE(f.entriesCrc, 88);
  h.writeUInt32LE(crc32(h.subarray(0, GPT_HEADER_SIZE)), 16);
  return h;
}

function buildVolumeHeader(f: { guestOs: GuestOs; label: string; volumeId: string; createdAtMs: number; dataBytes: number }): Buffer {
  const v = Buffer.alloc(VOLUME_HEADER_BYTES);
  v.write(VOLUME_MAGIC, 0, 'latin1');
  v.writeUInt32LE(VOLUME_FORMAT_VERSION, 8);
  v.writeUInt32LE(VOLUME_HEADER_BYTES, 12);
  v[16] = OS_CODE[f.guestOs];
  const label = Buffer.from(f.label, 'utf8');
  v[17] = label.length;
  label.copy(v, 24);
  Buffer.from(f.volumeId, 'hex').copy(v, 56);
  v.writeBigUInt64LE(BigInt(f.createdAtMs), 72);
  v.writeBigUInt64LE(BigInt(VOLUME_HEADER_BYTES), 80);
  v.writeBigUInt64LE(BigInt(f.dataBytes), 88);
  v.writeUInt32LE(crc32(v), 96);
  return v;
}

/** What a guest writes to initialize a blank disk of `diskBytes` bytes. */
export function buildDiskLayout(input: BuildLayoutInput): DiskLayout {
  const { diskBytes, guestOs, label, volumeId, createdAt } = input;
  validateDiskBytes(diskBytes);
  if (guestOs !== 'windows' && guestOs !== 'linux') {
    throw new InvalidArgumentError('guestOs', `guest OS ${JSON.stringify(guestOs)} is neither "windows" nor "linux"`);
  }
  validateLabel(label);
  if (typeof volumeId !== 'string' || !VOLUME_ID_RE.test(volumeId)) {
    throw new InvalidArgumentError('volumeId', `volume id ${JSON.stringify(volumeId)} is not 32 hexadecimal digits`, 'VOLUME_ID_INVALID');
  }
  const createdAtMs = createdAt instanceof Date ? createdAt.getTime() : NaN;
  if (!Number.isSafeInteger(createdAtMs) || createdAtMs < 0) {
    throw new InvalidArgumentError('createdAt', 'created-at must be a valid date at or after 1970-01-01', 'CREATED_AT_INVALID');
  }
  const diskGuidText = input.diskGuid ?? randomUUID();
  const partGuidText = input.partitionGuid ?? randomUUID();
  for (const [field, g] of [['diskGuid', diskGuidText], ['partitionGuid', partGuidText]] as const) {
    if (!GUID_RE.test(g)) throw new InvalidArgumentError(field, `${field} ${JSON.stringify(g)} is not a GUID`, 'GUID_INVALID');
    if (/^[0-]+$/.test(g)) throw new InvalidArgumentError(field, `${field} must not be the all-zero GUID`, 'GUID_INVALID');
  }
  if (diskGuidText.toLowerCase() === partGuidText.toLowerCase()) {
    throw new InvalidArgumentError('partitionGuid', 'the partition GUID must differ from the disk GUID', 'GUID_INVALID');
  }

  const g = geometry(diskBytes);
  const diskGuid = guidToBytes(diskGuidText);

  const entries = Buffer.alloc(ENTRY_ARRAY_BYTES);
  guidToBytes(PARTITION_TYPE[guestOs]).copy(entries, 0);
  guidToBytes(partGuidText).copy(entries, 16);
  entries.writeBigUInt64LE(g.partFirst, 32);
  entries.writeBigUInt64LE(g.partLast, 40);
  // A label of at most 32 UTF-8 bytes has at most 32 UTF-16 code units: it always fits in 36.
  const name = Buffer.from(label, 'utf16le');
  name.copy(entries, 56, 0, Math.min(name.length, NAME_CODE_UNITS * 2));
  const entriesCrc = crc32(entries);

  const primary = buildGptHeader({ myLba: 1n, alternateLba: g.lastLba, lastUsable: g.lastUsable, diskGuid, entriesLba: 2n, entriesCrc });
  const backupEntriesLba = g.lastLba - BigInt(ENTRY_ARRAY_SECTORS);
  const backup = buildGptHeader({ myLba: g.lastLba, alternateLba: 1n, lastUsable: g.lastUsable, diskGuid, entriesLba: backupEntriesLba, entriesCrc });

  const partitionOffset = Number(g.partFirst) * SECTOR_BYTES;
  const partitionBytes = Number(g.partLast - g.partFirst + 1n) * SECTOR_BYTES;
  const dataBytes = partitionBytes - VOLUME_HEADER_BYTES;
  const volume = buildVolumeHeader({ guestOs, label, volumeId: volumeId.toLowerCase(), createdAtMs, dataBytes });

  return {
    writes: [
      { offset: 0, data: buildMbr(g.lastLba + 1n) },
      { offset: SECTOR_BYTES, data: primary },
      { offset: 2 * SECTOR_BYTES, data: entries },
      { offset: partitionOffset, data: volume },
      { offset: Number(backupEntriesLba) * SECTOR_BYTES, data: Buffer.from(entries) },
      { offset: Number(g.lastLba) * SECTOR_BYTES, data: backup },
    ],
    partition: { firstLba: g.partFirst, lastLba: g.partLast },
    dataOffset: partitionOffset + VOLUME_HEADER_BYTES,
    dataBytes,
  };
}

// ---------------------------------------------------------------------------------------
// Parsing

export type ParsedDisk =
  | { kind: 'blank' }
  | {
      kind: 'passthru';
      guestOs: GuestOs;
      label: string;
      /** 32 lower-case hexadecimal digits. */
      volumeId: string;
      createdAt: Date;
      partition: PartitionRange;
      dataOffset: number;
      dataBytes: number;
    }
  | { kind: 'foreign'; reason: string };

class Foreign extends Error {}

function foreign(reason: string): never {
  throw new Foreign(reason);
}

interface GptHeader {
  myLba: bigint;
  alternateLba: bigint;
  firstUsable: bigint;
  lastUsable: bigint;
  diskGuid: string;
  entriesLba: bigint;
  entryCount: number;
  entrySize: number;
  entriesCrc: number;
}

/**
 * What is on a disk: `blank` (LBA 0 and 1 all zeros), `passthru` (a valid GPT, primary and
 * backup, with one partition holding a valid passthru volume header), or `foreign`, with a
 * reason a person can act on. Throws only for a bad `diskBytes`, never for the disk's bytes.
 * `read(offset, length)` returns the disk's bytes at that byte offset.
 */
export function parseDiskLayout(read: (offset: number, length: number) => Buffer, diskBytes: number): ParsedDisk {
  if (!Number.isSafeInteger(diskBytes) || diskBytes <= 0 || diskBytes % SECTOR_BYTES !== 0) {
    throw new InvalidArgumentError('diskBytes', `disk size ${diskBytes} is not a positive whole number of ${SECTOR_BYTES}-byte sectors`, 'DISK_SIZE_INVALID');
  }
  const readExact = (offset: number, length: number, what: string): Buffer => {
    const b = read(offset, length);
    if (!Buffer.isBuffer(b) || b.length < length) foreign(`could not read the ${what} (${length} bytes at offset ${offset}): the disk returned ${Buffer.isBuffer(b) ? b.length : 0} bytes`);
    return b.subarray(0, length);
  };
  try {
    if (diskBytes < 2 * SECTOR_BYTES) foreign(`the disk is only ${diskBytes} bytes, too small for a partition table`);
    const head = readExact(0, 2 * SECTOR_BYTES, 'first two sectors');
    if (head.every((x) => x === 0)) return { kind: 'blank' };
    if (diskBytes < MIN_DISK_BYTES) foreign(`the disk is not blank and is only ${diskBytes} bytes, below the 4 MiB a passthru volume needs`);
    return parseWritten(readExact, diskBytes, head);
  } catch (e) {
    if (e instanceof Foreign) return { kind: 'foreign', reason: e.message };
    throw e;
  }
}

function parseWritten(readExact: (offset: number, length: number, what: string) => Buffer, diskBytes: number, head: Buffer): ParsedDisk {
  const lastLba = BigInt(diskBytes / SECTOR_BYTES) - 1n;

  // LBA 0: protective MBR.
  const mbr = head.subarray(0, SECTOR_BYTES);
  if (mbr[510] !== 0x55 || mbr[511] !== 0xaa) foreign('LBA 0 holds no MBR boot signature (0x55AA): the disk holds something other than a partition table');
  const types = [0, 1, 2, 3].map((i) => mbr[446 + i * 16 + 4]!);
  const protectiveIndex = types.indexOf(0xee);
  if (protectiveIndex < 0) {
    foreign(`the MBR is not a protective MBR (partition types ${types.map((t) => '0x' + t.toString(16).padStart(2, '0')).join(', ')}, none 0xEE): the disk holds an MBR-partitioned (not GPT) layout`);
  }
  if (types.some((t, i) => i !== protectiveIndex && t !== 0)) foreign('the MBR is a hybrid MBR (a 0xEE entry beside other partitions), not a plain protective MBR');
  if (mbr.readUInt32LE(446 + protectiveIndex * 16 + 8) !== 1) foreign('the protective MBR partition does not start at LBA 1');

  // LBA 1 and the last LBA: primary and backup GPT headers.
  const primary = parseGptHeader(head.subarray(SECTOR_BYTES, 2 * SECTOR_BYTES), 'primary');
  if (primary.myLba !== 1n) foreign(`the primary GPT header says it sits at LBA ${primary.myLba}, not 1`);
  if (primary.alternateLba !== lastLba) {
    foreign(`the primary GPT header puts the backup header at LBA ${primary.alternateLba} but the disk's last LBA is ${lastLba}: the disk was resized or the table was written for another size`);
  }
  checkUsableRange(primary, lastLba, 'primary');
  const primaryEntries = readEntries(readExact, primary, 'primary');

  const backup = parseGptHeader(readExact(Number(lastLba) * SECTOR_BYTES, SECTOR_BYTES, 'backup GPT header'), 'backup');
  if (backup.myLba !== lastLba) foreign(`the backup GPT header says it sits at LBA ${backup.myLba}, not at the last LBA ${lastLba}`);
  if (backup.alternateLba !== 1n) foreign(`the backup GPT header points at LBA ${backup.alternateLba} for the primary header, not 1`);
  if (backup.entriesLba <= backup.lastUsable || backup.entriesLba >= lastLba) foreign(`the backup GPT entry array LBA ${backup.entriesLba} is not between the last usable LBA and the backup header`);
  const backupEntries = readEntries(readExact, backup, 'backup');
  const mismatched = (['firstUsable', 'lastUsable', 'diskGuid', 'entryCount', 'entrySize', 'entriesCrc'] as const).filter((k) => primary[k] !== backup[k]);
  if (mismatched.length > 0) foreign(`the backup GPT header does not mirror the primary (${mismatched.join(', ')} differ)`);
  if (!primaryEntries.equals(backupEntries)) foreign('the backup GPT entry array differs from the primary');

  // The one partition.
  const used: number[] = [];
  for (let i = 0; i < primary.entryCount; i++) {
    const e = primaryEntries.subarray(i * primary.entrySize, i * primary.entrySize + 16);
    if (!e.every((x) => x === 0)) used.push(i);
  }
  if (used.length === 0) foreign('the GPT holds no partition');
  if (used.length > 1) foreign(`the GPT holds ${used.length} partitions; a passthru disk holds exactly one`);
  const entry = primaryEntries.subarray(used[0]! * primary.entrySize, (used[0]! + 1) * primary.entrySize);
  const typeGuid = bytesToGuid(entry.subarray(0, 16));
  const guestOs = (Object.keys(PARTITION_TYPE) as GuestOs[]).find((os) => PARTITION_TYPE[os] === typeGuid);
  if (guestOs === undefined) foreign(`the partition's type ${typeGuid} is neither Microsoft basic data nor Linux filesystem`);
  const firstLba = entry.readBigUInt64LE(32);
  const partLast = entry.readBigUInt64LE(40);
  if (firstLba < primary.firstUsable || partLast > primary.lastUsable || partLast < firstLba) {
    foreign(`the partition (LBA ${firstLba}..${partLast}) lies outside the usable LBAs ${primary.firstUsable}..${primary.lastUsable}`);
  }
  if (firstLba % ALIGN_SECTORS !== 0n) foreign(`the partition starts at LBA ${firstLba}, not on a 1 MiB boundary`);
  const partitionOffset = Number(firstLba) * SECTOR_BYTES;
  const partitionBytes = Number(partLast - firstLba + 1n) * SECTOR_BYTES;
  if (partitionBytes < VOLUME_HEADER_BYTES) foreign(`the partition is ${partitionBytes} bytes, too small for a passthru volume header`);

  // The volume header at the partition's start.
  const v = readExact(partitionOffset, VOLUME_HEADER_BYTES, 'volume header');
  if (v.toString('latin1', 0, 8) !== VOLUME_MAGIC) foreign('the partition holds no passthru volume header (another file system, or never initialized by passthru)');
  const version = v.readUInt32LE(8);
  if (version !== VOLUME_FORMAT_VERSION) foreign(`the passthru volume header has format version ${version}; this guest agent reads version ${VOLUME_FORMAT_VERSION}`);
  const stored = v.readUInt32LE(96);
  const copy = Buffer.from(v);
  copy.writeUInt32LE(0, 96);
  if (crc32(copy) !== stored) foreign('passthru volume header CRC mismatch: the header is damaged');
  if (v.readUInt32LE(12) !== VOLUME_HEADER_BYTES) foreign(`the passthru volume header size is ${v.readUInt32LE(12)}, not ${VOLUME_HEADER_BYTES}`);
  const osCode = v[16]!;
  const headerOs = (Object.keys(OS_CODE) as GuestOs[]).find((os) => OS_CODE[os] === osCode);
  if (headerOs === undefined) foreign(`the passthru volume header names an unknown guest OS (code ${osCode})`);
  if (headerOs !== guestOs) foreign(`the passthru volume header says guest OS ${headerOs} but the partition is typed for ${guestOs}`);
  const labelLength = v[17]!;
  if (labelLength < 1 || labelLength > MAX_LABEL_BYTES) foreign(`the passthru volume header's label length ${labelLength} is outside 1..${MAX_LABEL_BYTES}`);
  const labelBytes = v.subarray(24, 24 + labelLength);
  const label = labelBytes.toString('utf8');
  if (!Buffer.from(label, 'utf8').equals(labelBytes)) foreign('the passthru volume header label is not valid UTF-8');
  try {
    validateLabel(label);
  } catch {
    foreign(`the passthru volume header label ${JSON.stringify(label)} holds non-printable characters`);
  }
  const volumeId = v.subarray(56, 72).toString('hex');
  const createdAtMs = v.readBigUInt64LE(72);
  if (createdAtMs > BigInt(Number.MAX_SAFE_INTEGER)) foreign('the passthru volume header created-at is out of range');
  const dataOffsetInPartition = v.readBigUInt64LE(80);
  const dataLength = v.readBigUInt64LE(88);
  if (dataOffsetInPartition < BigInt(VOLUME_HEADER_BYTES) || dataOffsetInPartition + dataLength > BigInt(partitionBytes)) {
    foreign(`the passthru volume header's data area (offset ${dataOffsetInPartition}, ${dataLength} bytes) does not fit its ${partitionBytes}-byte partition`);
  }
  return {
    kind: 'passthru',
    guestOs,
    label,
    volumeId,
    createdAt: new Date(Number(createdAtMs)),
    partition: { firstLba, lastLba: partLast },
    dataOffset: partitionOffset + Number(dataOffsetInPartition),
    dataBytes: Number(dataLength),
  };
}

function parseGptHeader(sector: Buffer, which: 'primary' | 'backup'): GptHeader {
  if (sector.toString('latin1', 0, 8) !== GPT_SIGNATURE) {
    foreign(which === 'primary' ? 'LBA 1 holds no GPT header ("EFI PART" signature missing)' : 'the last LBA holds no backup GPT header ("EFI PART" signature missing): the disk was resized or the backup is damaged');
  }
  const revision = sector.readUInt32LE(8);
  if (revision !== GPT_REVISION) foreign(`${which} GPT header revision 0x${revision.toString(16)} is not 1.0`);
  const size = sector.readUInt32LE(12);
  if (size < GPT_HEADER_SIZE || size > SECTOR_BYTES) foreign(`${which} GPT header size ${size} is outside ${GPT_HEADER_SIZE}..${SECTOR_BYTES}`);
  const copy = Buffer.from(sector.subarray(0, size));
  const stored = copy.readUInt32LE(16);
  copy.writeUInt32LE(0, 16);
  if (crc32(copy) !== stored) foreign(`${which} GPT header CRC mismatch`);
  const entryCount = sector.readUInt32LE(80);
  const entrySize = sector.readUInt32LE(84);
  if (entrySize < 128 || entrySize % 8 !== 0 || entrySize > 4096) foreign(`${which} GPT entry size ${entrySize} is invalid`);
  if (entryCount < 1 || entryCount * entrySize > 1024 * 1024) foreign(`${which} GPT entry count ${entryCount} is invalid`);
  return {
    myLba: sector.readBigUInt64LE(24),
    alternateLba: sector.readBigUInt64LE(32),
    firstUsable: sector.readBigUInt64LE(40),
    lastUsable: sector.readBigUInt64LE(48),
    diskGuid: bytesToGuid(sector.subarray(56, 72)),
    entriesLba: sector.readBigUInt64LE(72),
    entryCount,
    entrySize,
    entriesCrc: sector.readUInt32LE(88),
  };
}

function checkUsableRange(h: GptHeader, lastLba: bigint, which: string): void {
  const arraySectors = BigInt(Math.ceil((h.entryCount * h.entrySize) / SECTOR_BYTES));
  if (h.entriesLba < 2n || h.entriesLba + arraySectors > h.firstUsable) foreign(`${which} GPT entry array (LBA ${h.entriesLba}) overlaps the usable LBAs`);
  if (h.firstUsable > h.lastUsable || h.lastUsable >= lastLba - arraySectors) {
    foreign(`${which} GPT usable LBAs ${h.firstUsable}..${h.lastUsable} do not fit a disk whose last LBA is ${lastLba}`);
  }
}

function readEntries(readExact: (offset: number, length: number, what: string) => Buffer, h: GptHeader, which: 'primary' | 'backup'): Buffer {
  const entries = readExact(Number(h.entriesLba) * SECTOR_BYTES, h.entryCount * h.entrySize, `${which} GPT entry array`);
  if (crc32(entries) !== h.entriesCrc) foreign(`${which} GPT entry array CRC mismatch`);
  return entries;
}

// ---------------------------------------------------------------------------------------
// Describing (what `disk show` prints)

export interface GptDetails {
  diskGuid: string;
  primaryHeaderLba: number;
  backupHeaderLba: number;
  firstUsableLba: number;
  lastUsableLba: number;
  entryCount: number;
  entrySize: number;
  partition: {
    /** 1-based, as sgdisk numbers partitions. */
    number: number;
    typeGuid: string;
    typeName: string;
    partitionGuid: string;
    /** The GPT partition name (UTF-16LE on disk): the volume label. */
    name: string;
    firstLba: number;
    lastLba: number;
  };
}

const TYPE_NAMES: Readonly<Record<GuestOs, string>> = { windows: 'Microsoft basic data', linux: 'Linux filesystem' };

/**
 * The partition table's fields of a disk parseDiskLayout reads as passthru (undefined for
 * any other disk), for people: GUIDs, usable range, the one partition's entry.
 */
export function describeGpt(read: (offset: number, length: number) => Buffer, diskBytes: number): GptDetails | undefined {
  const parsed = parseDiskLayout(read, diskBytes);
  if (parsed.kind !== 'passthru') return undefined;
  // parseDiskLayout has checked every field read below: signatures, CRCs, ranges, one entry.
  const h = read(SECTOR_BYTES, SECTOR_BYTES);
  const entriesLba = Number(h.readBigUInt64LE(72));
  const entryCount = h.readUInt32LE(80);
  const entrySize = h.readUInt32LE(84);
  const entries = read(entriesLba * SECTOR_BYTES, entryCount * entrySize);
  let index = 0;
  while (entries.subarray(index * entrySize, index * entrySize + 16).every((x) => x === 0)) index++;
  const e = entries.subarray(index * entrySize, (index + 1) * entrySize);
  const name = e.subarray(56, 56 + NAME_CODE_UNITS * 2).toString('utf16le').replace(/\0+$/, '');
  return {
    diskGuid: bytesToGuid(h.subarray(56, 72)),
    primaryHeaderLba: Number(h.readBigUInt64LE(24)),
    backupHeaderLba: Number(h.readBigUInt64LE(32)),
    firstUsableLba: Number(h.readBigUInt64LE(40)),
    lastUsableLba: Number(h.readBigUInt64LE(48)),
    entryCount,
    entrySize,
    partition: {
      number: index + 1,
      typeGuid: bytesToGuid(e.subarray(0, 16)),
      typeName: TYPE_NAMES[parsed.guestOs],
      partitionGuid: bytesToGuid(e.subarray(16, 32)),
      name,
      firstLba: Number(e.readBigUInt64LE(32)),
      lastLba: Number(e.readBigUInt64LE(40)),
    },
  };
}
