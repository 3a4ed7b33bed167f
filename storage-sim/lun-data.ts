/**
 * LUN data: one sparse file per LUN, `<data-dir>/luns/<uuid>.img`, exactly the LUN's size,
 * so tools such as `sgdisk -v` can read a LUN's backing file as a disk image. Never-written
 * blocks are holes and read as zeros. Writes go to the OS page cache with pwrite before the
 * array acknowledges them, so they survive kill -9 of the process (not a power loss: README).
 */
import { closeSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, statSync, unlinkSync, writeSync, constants } from 'node:fs';
import { join } from 'node:path';

/** Descriptors kept open; older ones are closed (LRU) so thousands of LUNs fit any ulimit. */
const OPEN_FILES = 256;

export class LunDataFiles {
  readonly dir: string;
  private readonly fds = new Map<string, number>();

  constructor(dataDir: string) {
    this.dir = join(dataDir, 'luns');
    mkdirSync(this.dir, { recursive: true });
  }

  pathOf(uuid: string): string {
    return join(this.dir, `${uuid}.img`);
  }

  private fd(uuid: string): number {
    let fd = this.fds.get(uuid);
    if (fd !== undefined) {
      this.fds.delete(uuid);
      this.fds.set(uuid, fd);
      return fd;
    }
    fd = openSync(this.pathOf(uuid), constants.O_RDWR | constants.O_CREAT, 0o600);
    this.fds.set(uuid, fd);
    if (this.fds.size > OPEN_FILES) {
      const [oldest, oldFd] = this.fds.entries().next().value as [string, number];
      this.fds.delete(oldest);
      closeSync(oldFd);
    }
    return fd;
  }

  /** Makes the file exist with exactly this size (growing keeps the data). */
  setSize(uuid: string, sizeBytes: number): void {
    ftruncateSync(this.fd(uuid), sizeBytes);
  }

  sizeOf(uuid: string): number | undefined {
    try {
      return statSync(this.pathOf(uuid)).size;
    } catch {
      return undefined;
    }
  }

  read(uuid: string, offset: number, length: number): Buffer {
    const buf = Buffer.allocUnsafe(length);
    const fd = this.fd(uuid);
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    if (done < length) buf.fill(0, done);
    return buf;
  }

  write(uuid: string, offset: number, data: Uint8Array): void {
    const fd = this.fd(uuid);
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
