/**
 * Block-level helpers of the guest (guest-agent/disk-io.ts) on an in-memory disk that
 * checks every call is sector-aligned and at most 1 MiB: byte-granular reads and writes,
 * and layout.ts's synchronous parser run against a disk read asynchronously. Also the
 * progress display (guest-agent/progress.ts) on a fake terminal.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { expect } from 'chai';
import { parseOnDisk, readRange, writeRange } from '../../guest-agent/disk-io.js';
import type { BlockDevice } from '../../guest-agent/guest-os.js';
import { buildDiskLayout, describeGpt, parseDiskLayout } from '../../guest-agent/layout.js';
import { ProgressDisplay } from '../../guest-agent/progress.js';
import { SparseBytes } from '../support/guest-fakes.js';

const MiB = 1024 * 1024;

function device(size: number): BlockDevice & { bytes: SparseBytes; calls: string[] } {
  const bytes = new SparseBytes(size);
  const calls: string[] = [];
  const check = (offset: number, length: number): void => {
    expect(offset % 512, `offset ${offset}`).to.equal(0);
    expect(length % 512, `length ${length}`).to.equal(0);
    expect(length).to.be.within(512, MiB);
    expect(offset + length).to.be.at.most(size);
  };
  return {
    bytes,
    calls,
    device: { address: { controller: 0, location: 0 }, serial: 'S', naaId: 'N', sizeBytes: size },
    async read(offset, length) {
      check(offset, length);
      calls.push(`r${offset}+${length}`);
      return bytes.read(offset, length);
    },
    async write(offset, data, requestId) {
      check(offset, data.length);
      calls.push(`w${offset}+${data.length}:${requestId}`);
      bytes.write(offset, data);
    },
  };
}

describe('guest block helpers (guest-agent/disk-io.ts)', () => {
  it('writes any byte range, keeping the bytes of the partial sectors at its ends, in calls of at most 1 MiB with their own request ids', async () => {
    const d = device(8 * MiB);
    const before = randomBytes(4 * MiB);
    d.bytes.write(0, before);
    const data = randomBytes(2 * MiB + 300);
    const at = 1000;
    await writeRange(d, at, data.length, async (o, n) => data.subarray(o, o + n), 'w1');
    const expected = Buffer.from(before);
    data.copy(expected, at);
    expect(d.bytes.read(0, 4 * MiB).equals(expected)).to.equal(true);
    const writes = d.calls.filter((c) => c.startsWith('w'));
    expect(writes).to.deep.equal([`w512+${MiB}:w1:0`, `w${512 + MiB}+${MiB}:w1:1`, `w${512 + 2 * MiB}+1024:w1:2`]);
  });

  it('a write inside one sector reads that sector once', async () => {
    const d = device(4 * MiB);
    d.bytes.write(0, Buffer.alloc(512, 1));
    await writeRange(d, 10, 3, async () => Buffer.from('abc'), 'w2');
    expect(d.calls).to.deep.equal(['r0+512', 'w0+512:w2:0']);
    const s = d.bytes.read(0, 512);
    expect(s.subarray(10, 13).toString()).to.equal('abc');
    expect(s[9]).to.equal(1);
    expect(s[13]).to.equal(1);
  });

  it('refuses to write when the source ends early', async () => {
    const d = device(4 * MiB);
    const err = await writeRange(d, 0, 100, async () => Buffer.alloc(10), 'w3').catch((e: Error) => e);
    expect((err as Error).message).to.include('ended early');
    expect(d.calls.filter((c) => c.startsWith('w'))).to.deep.equal([]);
  });

  it('reads any byte range in order, at most 1 MiB a call', async () => {
    const d = device(8 * MiB);
    const data = randomBytes(3 * MiB);
    d.bytes.write(0, data);
    const got: Buffer[] = [];
    await readRange(d, 7, 2 * MiB + 5, (c) => void got.push(Buffer.from(c)));
    expect(Buffer.concat(got).equals(data.subarray(7, 7 + 2 * MiB + 5))).to.equal(true);
    expect(d.calls).to.have.length(3);
  });

  it('runs the synchronous layout parser against the disk, fetching what it asks for', async () => {
    const size = 64 * MiB;
    const d = device(size);
    const layout = buildDiskLayout({ diskBytes: size, guestOs: 'linux', label: 'data', volumeId: 'cd'.repeat(16), createdAt: new Date(5) });
    for (const w of layout.writes) d.bytes.write(w.offset, w.data);
    const parsed = await parseOnDisk(d, (read) => parseDiskLayout(read, size));
    expect(parsed).to.include({ kind: 'passthru', label: 'data', volumeId: 'cd'.repeat(16) });
    const gpt = await parseOnDisk(d, (read) => describeGpt(read, size));
    expect(gpt!.partition).to.include({ number: 1, name: 'data', firstLba: 2048, typeName: 'Linux filesystem' });
    expect(gpt!.backupHeaderLba).to.equal(size / 512 - 1);
    expect(await parseOnDisk(device(size), (read) => parseDiskLayout(read, size))).to.deep.equal({ kind: 'blank' });
  });

  it('fetches beyond the usual regions when a table says its entries lie elsewhere', async () => {
    const size = 64 * MiB;
    const d = device(size);
    d.bytes.write(0, Buffer.alloc(512, 1));
    let asked = 0;
    const got = await parseOnDisk(d, (read) => {
      asked++;
      return read(10 * MiB, 512)[0];
    });
    expect(got).to.equal(0);
    expect(asked).to.equal(2);
  });
});

describe('guest progress display (guest-agent/progress.ts)', () => {
  it('shows a line per step as it ends and the step under way in place, cleared before the result', () => {
    let out = '';
    const tty = new Writable({
      write(chunk, _enc, done) {
        out += chunk.toString();
        done();
      },
    });
    const p = new ProgressDisplay(tty);
    p.show({ kind: 'operation', operationId: 'op-1', resumed: false });
    p.show({ kind: 'host-step', step: 'lun.create', event: 'started', message: '', timeMs: 100 });
    p.show({ kind: 'host-step', step: 'lun.create', event: 'finished', message: '', timeMs: 112 });
    p.show({ kind: 'host-step', step: 'lun.find', event: 'skipped', message: 'a new LUN is created instead', timeMs: 112 });
    p.show({ kind: 'guest-step', step: 'discover', done: false, detail: 'rescanning' });
    p.end();
    expect(out).to.equal(
      '  host operation op-1:\n' +
        '\r\x1b[K  ... lun.create       ' +
        '\r\x1b[K  ok  lun.create       done (12 ms)\n' +
        '  --  lun.find         skipped: a new LUN is created instead\n' +
        '\r\x1b[K  ... discover         rescanning' +
        '\r\x1b[K',
    );
  });
});
