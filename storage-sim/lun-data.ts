/**
 * LUN data: one sparse file per LUN, `<data-dir>/luns/<uuid>.img`, exactly the LUN's size,
 * so tools such as `sgdisk -v` can read a LUN's backing file as a disk image. The file is
 * made at the LUN's first write: a LUN never written has no file and reads as zeros, and
 * creating a LUN costs no file system work (file creation dominated CreateLun). Never-written
 * blocks are holes and read as zeros. Writes go to the OS page cache with pwrite before the
 * array acknowledges them, so they survive kill -9 of the process (not a power loss: README).
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, statSync, unlinkSync, writeSync, constants } from 'node:fs';
import { dirname, join } from 'node:path';

/** The backing file of a LUN on an array with this data dir (a tool may read it as a disk image). */
export function lunFilePath(dataDir: string, uuid: string): string {
  return join(dataDir, 'luns', `${uuid}.img`);
}

/** Descriptors kept open; older ones are closed (LRU) so thousands of LUNs fit any ulimit. */
const OPEN_FILES = 256;

export class LunDataFiles {
  readonly dir: string;
  private readonly fds = new Map<string, number>();

  constructor(private readonly dataDir: string) {
    this.dir = dirname(lunFilePath(dataDir, ''));
    mkdirSync(this.dir, { recursive: true });
  }

  pathOf(uuid: string): string {
    return lunFilePath(this.dataDir, uuid);
  }

  /**
   * The LUN's open file; with `createSize`, made at that size when missing. Undefined when
   * the file does not exist and none was to be made.
   */
  private fd(uuid: string, createSize?: number): number | undefined {
    let fd = this.fds.get(uuid);
    if (fd !== undefined) {
      this.fds.delete(uuid);
      this.fds.set(uuid, fd);
      return fd;
    }
    try {
      fd = openSync(this.pathOf(uuid), constants.O_RDWR);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
      if (createSize === undefined) return undefined;
      fd = openSync(this.pathOf(uuid), constants.O_RDWR | constants.O_CREAT, 0o600);
      ftruncateSync(fd, createSize);
    }
    this.fds.set(uuid, fd);
    if (this.fds.size > OPEN_FILES) {
      const [oldest, oldFd] = this.fds.entries().next().value as [string, number];
      this.fds.delete(oldest);
      closeSync(oldFd);
    }
    return fd;
  }

  /** Gives the LUN's file, if it has one yet, exactly this size (growing keeps the data). */
  setSize(uuid: string, sizeBytes: number): void {
    const fd = this.fd(uuid);
    if (fd !== undefined) ftruncateSync(fd, sizeBytes);
  }

  sizeOf(uuid: string): number | undefined {
    try {
      return statSync(this.pathOf(uuid)).size;
    } catch {
      return undefined;
    }
  }

  read(uuid: string, offset: number, length: number): Buffer {
    const fd = this.fd(uuid);
    if (fd === undefined) return Buffer.alloc(length);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    if (done < length) buf.fill(0, done);
    return buf;
  }

  /** Writes at offset; the first write makes the file, `lunSize` bytes long. */
  write(uuid: string, offset: number, data: Uint8Array, lunSize: number): void {
    const fd = this.fd(uuid, lunSize)!;
    let done = 0;
    while (done < data.length) done += writeSync(fd, data, done, data.length - done, offset + done);
  }

  /** Removes the LUN's file. Not an error if it is already gone. */
  remove(uuid: string): void {
    const fd = this.fds.get(uuid);
    if (fd !== undefined) {
      this.fds.delete(uuid);
      closeSync(fd);
    }
    try {
      unlinkSync(this.pathOf(uuid));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  /** uuids of every file in the directory (to find files a crash left without a LUN). */
  listFiles(): string[] {
    return readdirSync(this.dir)
      .filter((f) => f.endsWith('.img'))
      .map((f) => f.slice(0, -4));
  }

  close(): void {
    for (const fd of this.fds.values()) closeSync(fd);
    this.fds.clear();
  }
}
