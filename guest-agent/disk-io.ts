/**
 * Block-level helpers over a BlockDevice: running layout.ts's synchronous parsers against a
 * disk that is read asynchronously, and byte-granular reads and writes of a range, carried
 * as sector-aligned calls of at most 1 MiB (the partial sectors at either end of a write are
 * read, patched and written back).
 */
import { MAX_IO_BYTES, type BlockDevice } from './guest-os.js';
import { SECTOR_BYTES as S, VOLUME_HEADER_BYTES } from './layout.js';

/** Thrown by the cache's read when a parser asks for bytes not fetched yet. */
class NeedBytes extends Error {
  constructor(
    readonly offset: number,
    readonly length: number,
  ) {
    super(`${length} bytes at ${offset} are not read yet`);
  }
}

/** The sectors of one disk read so far. */
class SectorCache {
  private readonly sectors = new Map<number, Buffer>();

  constructor(private readonly disk: BlockDevice) {}

  private get size(): number {
    return this.disk.device.sizeBytes;
  }

  /** The bytes, cut short at the disk's end (as a real read would be); NeedBytes when some are not read yet. */
  read(offset: number, length: number): Buffer {
    const end = Math.min(offset + length, this.size);
    if (offset < 0 || offset >= end) return Buffer.alloc(0);
    const out = Buffer.alloc(end - offset);
    for (let lba = Math.floor(offset / S); lba * S < end; lba++) {
      const sector = this.sectors.get(lba);
      if (!sector) throw new NeedBytes(offset, end - offset);
      const from = Math.max(offset, lba * S);
      const to = Math.min(end, (lba + 1) * S);
      sector.copy(out, from - offset, from - lba * S, to - lba * S);
    }
    return out;
  }

  async fetch(offset: number, length: number): Promise<void> {
    const start = Math.max(0, Math.floor(offset / S) * S);
    const end = Math.min(this.size, Math.ceil((offset + length) / S) * S);
    for (let pos = start; pos < end; pos += MAX_IO_BYTES) {
      const n = Math.min(MAX_IO_BYTES, end - pos);
      const data = await this.disk.read(pos, n);
      for (let i = 0; i < n; i += S) this.sectors.set((pos + i) / S, data.subarray(i, i + S));
    }
  }
}

/**
 * Where a passthru layout keeps what a parser reads first: LBA 0-33 (MBR, primary GPT and
 * entries), the volume header at 1 MiB, the last 33 sectors (backup entries and header).
 */
function layoutRegions(size: number): [number, number][] {
  return [
    [0, 34 * S],
    [1024 * 1024, VOLUME_HEADER_BYTES],
    [Math.max(0, size - 33 * S), 33 * S],
  ];
}

/**
 * Runs a parser that reads synchronously against the disk: the usual regions are fetched
 * first, then whatever else the parser asks for, and the parse run again, until it is done.
 */
export async function parseOnDisk<T>(disk: BlockDevice, parse: (read: (offset: number, length: number) => Buffer) => T): Promise<T> {
  const cache = new SectorCache(disk);
  await Promise.all(layoutRegions(disk.device.sizeBytes).map(([o, l]) => cache.fetch(o, l)));
  // A GPT names at most a few regions (headers, two entry arrays, the volume header).
  for (let round = 0; round < 16; round++) {
    try {
      return parse((o, l) => cache.read(o, l));
    } catch (err) {
      if (!(err instanceof NeedBytes)) throw err;
      await cache.fetch(err.offset, err.length);
    }
  }
  throw new Error('reading the partition table took more reads than a GPT can need');
}

/** Reads `length` bytes at byte `offset` (any alignment), handing them to `sink` in order, at most 1 MiB at a time. */
export async function readRange(disk: BlockDevice, offset: number, length: number, sink: (chunk: Buffer) => Promise<void> | void): Promise<void> {
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const alignedStart = Math.floor(pos / S) * S;
    const alignedEnd = Math.min(Math.ceil(end / S) * S, alignedStart + MAX_IO_BYTES);
    const data = await disk.read(alignedStart, alignedEnd - alignedStart);
    const upTo = Math.min(end, alignedEnd);
    await sink(data.subarray(pos - alignedStart, upTo - alignedStart));
    pos = upTo;
  }
}

/**
 * Writes `length` bytes at byte `offset` (any alignment), taken from `source(at, n)` (`at`
 * counted from the first byte written). Whole sectors go in calls of at most 1 MiB, each
 * with the request id `<requestId>:<n>` so a retry of the same call is idempotent; a sector
 * the range covers only in part is read first and patched. Not atomic against another writer
 * of the same sectors.
 */
export async function writeRange(
  disk: BlockDevice,
  offset: number,
  length: number,
  source: (at: number, n: number) => Promise<Buffer>,
  requestId: string,
): Promise<void> {
  const end = offset + length;
  const alignedStart = Math.floor(offset / S) * S;
  const alignedEnd = Math.ceil(end / S) * S;
  let headSector: Buffer | undefined;
  for (let chunkStart = alignedStart, n = 0; chunkStart < alignedEnd; chunkStart += MAX_IO_BYTES, n++) {
    const chunkEnd = Math.min(chunkStart + MAX_IO_BYTES, alignedEnd);
    const block = Buffer.alloc(chunkEnd - chunkStart);
    if (chunkStart < offset) {
      headSector = await disk.read(chunkStart, S);
      headSector.copy(block, 0);
    }
    if (chunkEnd === alignedEnd && end < alignedEnd) {
      const tailStart = alignedEnd - S;
      // A write inside one sector: its head read is its tail too.
      const tail = tailStart === alignedStart && headSector ? headSector : await disk.read(tailStart, S);
      tail.copy(block, tailStart - chunkStart);
    }
    const from = Math.max(chunkStart, offset);
    const to = Math.min(chunkEnd, end);
    const data = await source(from - offset, to - from);
    if (data.length !== to - from) throw new Error(`the data to write ended early: ${data.length} of ${to - from} bytes at ${from - offset}`);
    data.copy(block, from - chunkStart);
    await disk.write(chunkStart, block, `${requestId}:${n}`);
  }
}
