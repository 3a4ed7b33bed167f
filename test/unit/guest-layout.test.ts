/**
 * The on-disk layout a guest writes (guest-agent/layout.ts): protective MBR, primary and
 * backup GPT, one 1 MiB-aligned partition, the passthru volume header. Every layout is
 * checked by an independent parser written here (its own bitwise CRC32, its own GUID
 * decoding, fields re-derived from raw bytes), by parseDiskLayout round trips, and, when the
 * `sgdisk` binary is installed, by `sgdisk -v` on a sparse file.
 * Disks are never allocated whole: writes land in a sparse Map of sector number -> bytes.
 */
import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InvalidArgumentError } from '../../common/errors.js';
import { buildDiskLayout, parseDiskLayout, type DiskLayout } from '../../guest-agent/layout.js';
import { guidText, independentCheck, refCrc32 } from '../support/guest-layout-check.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;
const TiB = 1024 * GiB;
const SECTOR = 512;

// ---- an in-memory disk --------------------------------------------------------------

class SparseDisk {
  readonly sectors = new Map<number, Buffer>();
  constructor(readonly size: number) {}
  write(offset: number, data: Buffer): void {
    expect(offset % SECTOR, 'writes are sector aligned').to.equal(0);
    expect(data.length % SECTOR, 'writes are whole sectors').to.equal(0);
    expect(offset + data.length).to.be.at.most(this.size);
    for (let i = 0; i < data.length; i += SECTOR) this.sectors.set((offset + i) / SECTOR, Buffer.from(data.subarray(i, i + SECTOR)));
  }
  read = (offset: number, length: number): Buffer => {
    const out = Buffer.alloc(length);
    for (let pos = offset; pos < offset + length; ) {
      const lba = Math.floor(pos / SECTOR);
      const within = pos - lba * SECTOR;
      const n = Math.min(SECTOR - within, offset + length - pos);
      const s = this.sectors.get(lba);
      if (s) s.copy(out, pos - offset, within, within + n);
      pos += n;
    }
    return out;
  };
  flip(offset: number, mask = 0x01): void {
    const lba = Math.floor(offset / SECTOR);
    const s = this.sectors.get(lba) ?? Buffer.alloc(SECTOR);
    s[offset % SECTOR]! ^= mask;
    this.sectors.set(lba, s);
  }
}

function applied(layout: DiskLayout, size: number): SparseDisk {
  const disk = new SparseDisk(size);
  for (const w of layout.writes) disk.write(w.offset, w.data);
  return disk;
}

// ---- tests -----------------------------------------------------------------------------

const CREATED = new Date('2024-05-06T07:08:09.123Z');
const VOLUME_ID = '0123456789abcdef0123456789ABCDEF';

describe('guest disk layout (guest-agent/layout.ts)', () => {
  const cases: { os: 'windows' | 'linux'; size: number; name: string; label: string }[] = [];
  for (const os of ['windows', 'linux'] as const) {
    for (const [size, name] of [[4 * MiB, '4 MiB'], [GiB, '1 GiB'], [16 * TiB, '16 TiB']] as const) {
      cases.push({ os, size, name, label: os === 'windows' ? 'Data disk 1' : 'données-été ✓' });
    }
  }

  for (const c of cases) {
    describe(`${c.os}, ${c.name}`, () => {
      const layout = buildDiskLayout({ diskBytes: c.size, guestOs: c.os, label: c.label, volumeId: VOLUME_ID, createdAt: CREATED });

      it('passes the independent parser (signatures, CRCs, LBAs, type, alignment, name, backup mirrors primary)', () => {
        const disk = applied(layout, c.size);
        const ref = independentCheck(disk, c.os, c.label);
        expect(ref.volumeId).to.equal(VOLUME_ID.toLowerCase());
        expect(ref.createdAt).to.equal(CREATED.getTime());
        expect(layout.partition).to.deep.equal({ firstLba: ref.first, lastLba: ref.lastP });
        expect(layout.dataOffset).to.equal(ref.dataOffset);
        expect(layout.dataBytes).to.equal(ref.dataBytes);
        expect(disk.sectors.size, 'only the metadata sectors are written').to.equal(1 + 1 + 32 + 8 + 32 + 1);
      });

      it('round-trips through parseDiskLayout', () => {
        const disk = applied(layout, c.size);
        const parsed = parseDiskLayout(disk.read, c.size);
        expect(parsed).to.deep.equal({
          kind: 'passthru',
          guestOs: c.os,
          label: c.label,
          volumeId: VOLUME_ID.toLowerCase(),
          createdAt: CREATED,
          partition: layout.partition,
          dataOffset: layout.dataOffset,
          dataBytes: layout.dataBytes,
        });
      });

      it('reads a blank disk as blank', () => {
        expect(parseDiskLayout(new SparseDisk(c.size).read, c.size)).to.deep.equal({ kind: 'blank' });
      });

      const corruptions: { what: string; at: (l: DiskLayout) => number; reason: RegExp }[] = [
        { what: 'the primary entry array', at: () => 2 * SECTOR + 56, reason: /primary GPT entry array CRC mismatch/ },
        { what: 'the backup entry array', at: () => c.size - 33 * SECTOR + 40, reason: /backup GPT entry array CRC mismatch/ },
        { what: 'the primary header', at: () => SECTOR + 40, reason: /primary GPT header CRC mismatch/ },
        { what: 'the backup header', at: () => c.size - SECTOR + 48, reason: /backup GPT header CRC mismatch/ },
        { what: 'the volume header (a field)', at: (l) => l.dataOffset - 4096 + 30, reason: /volume header CRC mismatch/ },
        { what: 'the volume header (its magic)', at: (l) => l.dataOffset - 4096, reason: /partition holds no passthru volume header/ },
        { what: 'the MBR boot signature', at: () => 510, reason: /boot signature/ },
      ];
      for (const k of corruptions) {
        it(`reads a flipped byte in ${k.what} as foreign, with a reason`, () => {
          const disk = applied(layout, c.size);
          disk.flip(k.at(layout));
          const parsed = parseDiskLayout(disk.read, c.size);
          expect(parsed.kind).to.equal('foreign');
          expect(parsed.kind === 'foreign' ? parsed.reason : '').to.match(k.reason);
        });
      }
    });
  }

  describe('foreign disks', () => {
    const size = 64 * MiB;

    it('an MBR-partitioned disk (NTFS partition, type 0x07) is foreign', () => {
      const disk = new SparseDisk(size);
      const mbr = Buffer.alloc(SECTOR);
      mbr[446] = 0x80;
      mbr[446 + 4] = 0x07;
      mbr.writeUInt32LE(2048, 446 + 8);
      mbr.writeUInt32LE(size / SECTOR - 2048, 446 + 12);
      mbr[510] = 0x55;
      mbr[511] = 0xaa;
      disk.write(0, mbr);
      const parsed = parseDiskLayout(disk.read, size);
      expect(parsed).to.have.property('kind', 'foreign');
      expect(parsed.kind === 'foreign' && parsed.reason).to.match(/not a protective MBR/);
    });

    it('random bytes in LBA 0 are foreign', () => {
      const disk = new SparseDisk(size);
      let x = 12345;
      const junk = Buffer.alloc(SECTOR);
      for (let i = 0; i < SECTOR; i++) junk[i] = (x = (x * 1103515245 + 12345) >>> 0) >>> 24;
      junk[510] = 0;
      disk.write(0, junk);
      expect(parseDiskLayout(disk.read, size)).to.have.property('kind', 'foreign');
    });

    it('a layout built for a smaller disk (disk since grown) is foreign', () => {
      const layout = buildDiskLayout({ diskBytes: 32 * MiB, guestOs: 'linux', label: 'x', volumeId: VOLUME_ID, createdAt: CREATED });
      const disk = applied(layout, size);
      const parsed = parseDiskLayout(disk.read, size);
      expect(parsed.kind === 'foreign' && parsed.reason).to.match(/resized/);
    });

    it('a partition of another type is foreign', () => {
      const layout = buildDiskLayout({ diskBytes: size, guestOs: 'linux', label: 'x', volumeId: VOLUME_ID, createdAt: CREATED });
      const disk = applied(layout, size);
      // Rewrite the type GUID (EFI System) and fix every CRC so only the type is wrong.
      const entries = disk.read(2 * SECTOR, 16384);
      Buffer.from('28732ac11ff8d211ba4b00a0c93ec93b', 'hex').copy(entries, 0);
      const ecrc = refCrc32(entries);
      for (const [hOff, eOff] of [[SECTOR, 2 * SECTOR], [size - SECTOR, size - 33 * SECTOR]] as const) {
        disk.write(eOff, entries);
        const h = disk.read(hOff, SECTOR);
        h.writeUInt32LE(ecrc, 88);
        h.writeUInt32LE(0, 16);
        h.writeUInt32LE(refCrc32(h.subarray(0, 92)), 16);
        disk.write(hOff, h);
      }
      const parsed = parseDiskLayout(disk.read, size);
      expect(parsed.kind === 'foreign' && parsed.reason).to.match(/neither Microsoft basic data nor Linux filesystem/);
    });
  });

  describe('input validation', () => {
    const ok = { diskBytes: 64 * MiB, guestOs: 'windows' as const, label: 'L', volumeId: VOLUME_ID, createdAt: CREATED };
    const bad: [string, Partial<typeof ok> & Record<string, unknown>, string][] = [
      ['disk size not a multiple of 512', { diskBytes: 64 * MiB + 1 }, 'diskBytes'],
      ['disk below 4 MiB', { diskBytes: 4 * MiB - 512 }, 'diskBytes'],
      ['empty label', { label: '' }, 'label'],
      ['label of 33 bytes', { label: 'a'.repeat(33) }, 'label'],
      ['label of 11 three-byte characters (33 bytes)', { label: '✓'.repeat(11) }, 'label'],
      ['label with a newline', { label: 'a\nb' }, 'label'],
      ['label with NUL', { label: 'a\0' }, 'label'],
      ['label with a lone surrogate', { label: 'a\ud800' }, 'label'],
      ['volume id not hex', { volumeId: 'z'.repeat(32) }, 'volumeId'],
      ['volume id too short', { volumeId: 'ab' }, 'volumeId'],
      ['invalid date', { createdAt: new Date(NaN) }, 'createdAt'],
      ['bad disk GUID', { diskGuid: 'not-a-guid' } as never, 'diskGuid'],
    ];
    for (const [name, patch, field] of bad) {
      it(`refuses ${name} with InvalidArgumentError(${field})`, () => {
        let err: unknown;
        try {
          buildDiskLayout({ ...ok, ...patch } as never);
        } catch (e) {
          err = e;
        }
        expect(err).to.be.instanceOf(InvalidArgumentError);
        expect((err as InvalidArgumentError).field).to.equal(field);
      });
    }

    it('accepts a 32-byte label and the exact 4 MiB minimum', () => {
      const l = buildDiskLayout({ ...ok, diskBytes: 4 * MiB, label: 'b'.repeat(32) });
      expect(l.partition).to.deep.equal({ firstLba: 2048n, lastLba: 6143n });
    });

    it('uses given GUIDs in mixed-endian form and random distinct ones otherwise', () => {
      const diskGuid = '00112233-4455-6677-8899-AABBCCDDEEFF';
      const partitionGuid = 'FFEEDDCC-BBAA-9988-7766-554433221100';
      const l = buildDiskLayout({ ...ok, diskGuid, partitionGuid });
      const hdr = l.writes.find((w) => w.offset === SECTOR)!.data;
      expect(hdr.subarray(56, 72).toString('hex')).to.equal('33221100554477668899aabbccddeeff');
      expect(guidText(hdr.subarray(56, 72))).to.equal(diskGuid);
      const ent = l.writes.find((w) => w.offset === 2 * SECTOR)!.data;
      expect(guidText(ent.subarray(16, 32))).to.equal(partitionGuid);
      const a = applied(buildDiskLayout(ok), ok.diskBytes);
      const b = applied(buildDiskLayout(ok), ok.diskBytes);
      const ga = independentCheck(a, 'windows', 'L');
      const gb = independentCheck(b, 'windows', 'L');
      expect(ga.diskGuid).to.not.equal(gb.diskGuid);
      expect(ga.partGuid).to.not.equal(gb.partGuid);
      expect(ga.partGuid[14], 'random GUIDs are version 4').to.equal('4');
    });
  });

  describe('sgdisk -v', () => {
    let sgdisk: string | undefined;
    try {
      sgdisk = execFileSync('sh', ['-c', 'command -v sgdisk'], { encoding: 'utf8' }).trim() || undefined;
    } catch {
      sgdisk = undefined;
    }
    for (const os of ['windows', 'linux'] as const) {
      const title = sgdisk
        ? `${os}: sgdisk -v accepts a 64 MiB sparse file with the layout`
        : `${os}: sgdisk -v check SKIPPED (sgdisk is not installed on PATH)`;
      it(title, function () {
        if (!sgdisk) {
          console.log(`    [guest-layout] SKIPPED the sgdisk half of the layout check: no sgdisk binary on PATH (install Debian's gdisk)`);
          this.skip();
        }
        const dir = mkdtempSync(join(tmpdir(), 'passthru-layout-'));
        try {
          const file = join(dir, 'disk.img');
          const size = 64 * MiB;
          const layout = buildDiskLayout({ diskBytes: size, guestOs: os, label: `vol ${os}`, volumeId: VOLUME_ID, createdAt: CREATED });
          const fd = openSync(file, 'w');
          try {
            ftruncateSync(fd, size);
            for (const w of layout.writes) writeSync(fd, w.data, 0, w.data.length, w.offset);
          } finally {
            closeSync(fd);
          }
          const out = execFileSync(sgdisk!, ['-v', file], { encoding: 'utf8' });
          expect(out).to.match(/No problems found/);
          const info = execFileSync(sgdisk!, ['-i', '1', file], { encoding: 'utf8' });
          expect(info).to.contain(os === 'windows' ? 'Microsoft basic data' : 'Linux filesystem');
          expect(info).to.contain(`Partition name: 'vol ${os}'`);
          expect(info).to.match(/First sector: 2048 /);
        } finally {
          rmSync(dir, { recursive: true, force: true });
        }
      });
    }
  });
});
