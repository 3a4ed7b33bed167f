/**
 * An independent reader of the layout a guest writes (guest-agent/layout.ts): its own
 * bitwise CRC32, its own GUID decoding, every field re-derived from raw bytes and checked
 * with chai. Deliberately shares nothing with the module it checks. Used on in-memory disks
 * by the layout's unit tests and on a LUN's backing file by the guest-agent e2e tests.
 */
import { expect } from 'chai';

const MiB = 1024 * 1024;
const SECTOR = 512;

/** A disk image: its size and a reader of its bytes. */
export interface DiskImage {
  readonly size: number;
  read(offset: number, length: number): Buffer;
}

export function refCrc32(bytes: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of bytes) {
    crc ^= byte;
    for (let bit = 0; bit < 8; bit++) crc = (crc >>> 1) ^ (0xedb88320 & -(crc & 1));
  }
  return (crc ^ 0xffffffff) >>> 0;
}

export function guidText(b: Uint8Array): string {
  const hex = (i: number) => b[i]!.toString(16).padStart(2, '0');
  const seq = (idx: number[]) => idx.map(hex).join('');
  return [seq([3, 2, 1, 0]), seq([5, 4]), seq([7, 6]), seq([8, 9]), seq([10, 11, 12, 13, 14, 15])].join('-').toUpperCase();
}

interface RefHeader {
  my: bigint;
  alt: bigint;
  firstUsable: bigint;
  lastUsable: bigint;
  diskGuid: string;
  entriesLba: bigint;
  count: number;
  size: number;
  entriesCrc: number;
}

function refHeader(sector: Buffer): RefHeader {
  expect(sector.subarray(0, 8).toString('ascii')).to.equal('EFI PART');
  expect(sector.readUInt32LE(8), 'revision 1.0').to.equal(0x00010000);
  expect(sector.readUInt32LE(12), 'header size').to.equal(92);
  const h = Buffer.from(sector.subarray(0, 92));
  const crc = h.readUInt32LE(16);
  h.fill(0, 16, 20);
  expect(refCrc32(h), 'header CRC').to.equal(crc);
  expect(sector.readUInt32LE(20), 'reserved').to.equal(0);
  expect(sector.subarray(92).every((x) => x === 0), 'rest of header sector zero').to.equal(true);
  return {
    my: sector.readBigUInt64LE(24),
    alt: sector.readBigUInt64LE(32),
    firstUsable: sector.readBigUInt64LE(40),
    lastUsable: sector.readBigUInt64LE(48),
    diskGuid: guidText(sector.subarray(56, 72)),
    entriesLba: sector.readBigUInt64LE(72),
    count: sector.readUInt32LE(80),
    size: sector.readUInt32LE(84),
    entriesCrc: sector.readUInt32LE(88),
  };
}

export const TYPES = { windows: 'EBD0A0A2-B9E5-4433-87C0-68B6B72699C7', linux: '0FC63DAF-8483-4772-8E79-3D69D8477DE4' } as const;

/** Re-derives and checks everything from raw bytes; returns what it found. */
export function independentCheck(disk: DiskImage, os: 'windows' | 'linux', label: string) {
  const size = disk.size;
  const sectors = BigInt(size / SECTOR);
  const last = sectors - 1n;

  // Protective MBR.
  const mbr = disk.read(0, SECTOR);
  expect(mbr[510]).to.equal(0x55);
  expect(mbr[511]).to.equal(0xaa);
  expect(mbr[446 + 4], 'partition type 0xEE').to.equal(0xee);
  expect(mbr.readUInt32LE(446 + 8), 'starts at LBA 1').to.equal(1);
  expect(mbr.readUInt32LE(446 + 12)).to.equal(Number(sectors - 1n > 0xffffffffn ? 0xffffffffn : sectors - 1n));
  for (let i = 1; i < 4; i++) expect(mbr.subarray(446 + i * 16, 462 + i * 16).every((x) => x === 0), `MBR entry ${i} empty`).to.equal(true);

  // Primary header and entries.
  const p = refHeader(disk.read(SECTOR, SECTOR));
  expect(p.my).to.equal(1n);
  expect(p.alt).to.equal(last);
  expect(p.firstUsable).to.equal(34n);
  expect(p.lastUsable).to.equal(last - 33n);
  expect(p.entriesLba).to.equal(2n);
  expect(p.count).to.equal(128);
  expect(p.size).to.equal(128);
  const entries = disk.read(2 * SECTOR, 128 * 128);
  expect(refCrc32(entries), 'entry array CRC').to.equal(p.entriesCrc);

  // Backup mirrors primary.
  const b = refHeader(disk.read(Number(last) * SECTOR, SECTOR));
  expect(b.my).to.equal(last);
  expect(b.alt).to.equal(1n);
  expect(b.entriesLba).to.equal(last - 32n);
  expect({ ...b, my: 0n, alt: 0n, entriesLba: 0n }).to.deep.equal({ ...p, my: 0n, alt: 0n, entriesLba: 0n });
  const backupEntries = disk.read(Number(last - 32n) * SECTOR, 128 * 128);
  expect(backupEntries.equals(entries), 'backup entry array equals primary').to.equal(true);

  // The one partition.
  const e = entries.subarray(0, 128);
  expect(guidText(e.subarray(0, 16))).to.equal(TYPES[os]);
  const partGuid = guidText(e.subarray(16, 32));
  expect(partGuid).to.not.equal('00000000-0000-0000-0000-000000000000');
  expect(partGuid).to.not.equal(p.diskGuid);
  const first = e.readBigUInt64LE(32);
  const lastP = e.readBigUInt64LE(40);
  expect(first).to.equal(2048n);
  expect((first * 512n) % BigInt(MiB), 'start 1 MiB aligned').to.equal(0n);
  expect(((lastP + 1n) * 512n) % BigInt(MiB), 'end 1 MiB aligned').to.equal(0n);
  expect(lastP <= p.lastUsable).to.equal(true);
  expect(p.lastUsable - lastP < 2048n, 'partition ends at the last aligned boundary').to.equal(true);
  expect(e.readBigUInt64LE(48), 'attributes').to.equal(0n);
  const nameRaw = e.subarray(56, 128);
  const name = nameRaw.toString('utf16le').replace(/\0+$/, '');
  expect(name).to.equal(label);
  expect(entries.subarray(128).every((x) => x === 0), 'other 127 entries empty').to.equal(true);

  // Volume header.
  const vOff = Number(first) * SECTOR;
  const v = disk.read(vOff, 4096);
  expect(v.subarray(0, 8).toString('ascii')).to.equal('PTHRUVOL');
  expect(v.readUInt32LE(8)).to.equal(1);
  expect(v.readUInt32LE(12)).to.equal(4096);
  expect(v[16]).to.equal(os === 'windows' ? 1 : 2);
  const labelLen = v[17]!;
  expect(v.subarray(24, 24 + labelLen).toString('utf8')).to.equal(label);
  const vc = Buffer.from(v);
  const vcrc = vc.readUInt32LE(96);
  vc.fill(0, 96, 100);
  expect(refCrc32(vc), 'volume header CRC').to.equal(vcrc);
  const partBytes = Number(lastP - first + 1n) * SECTOR;
  expect(v.readBigUInt64LE(80)).to.equal(4096n);
  expect(v.readBigUInt64LE(88)).to.equal(BigInt(partBytes - 4096));
  return {
    first,
    lastP,
    diskGuid: p.diskGuid,
    partGuid,
    volumeId: v.subarray(56, 72).toString('hex'),
    createdAt: Number(v.readBigUInt64LE(72)),
    dataOffset: vOff + 4096,
    dataBytes: partBytes - 4096,
  };
}

