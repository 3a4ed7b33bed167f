/**
 * A lock file held by one process: created with O_EXCL, naming the holder's PID and start
 * time. A holder that no longer runs (killed, crashed) leaves its file behind; the next
 * taker sees the PID gone (or reused by another process started later) and takes over.
 *
 * Limit: taking over a stale lock is a read, a check and an unlink; two processes doing it
 * at the same instant could both succeed. The guest agent holds these locks for one command
 * on one VM's state dir, where that race needs two runs started within microseconds of each
 * other after a crash.
 */
import { closeSync, openSync, readFileSync, unlinkSync, writeSync } from 'node:fs';
import { AbortedError } from '../common/errors.js';

interface Holder {
  pid: number;
  /** Start time in clock ticks since boot (/proc/<pid>/stat field 22), '' when unknown. */
  start: string;
}

function startTime(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? '';
  } catch {
    return '';
  }
}

function running(h: Holder): boolean {
  try {
    process.kill(h.pid, 0);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  // Alive (or not ours to signal): the same process only if it started when the holder did.
  const now = startTime(h.pid);
  return h.start === '' || now === '' || now === h.start;
}

function readHolder(path: string): { text: string; holder?: Holder } | undefined {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  try {
    const h = JSON.parse(text) as Holder;
    if (Number.isSafeInteger(h.pid) && h.pid > 0 && typeof h.start === 'string') return { text, holder: h };
  } catch {
    // A lock file cut short by a crash between its creation and its write: no one holds it.
  }
  return { text };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class FileLock {
  private constructor(private readonly path: string) {}

  /**
   * Takes the lock, waiting up to `waitMs` for a live holder to let go; then ABORTED,
   * naming the holder and `what` it is doing.
   */
  static async acquire(path: string, opts: { waitMs: number; what: string }): Promise<FileLock> {
    const me = JSON.stringify({ pid: process.pid, start: startTime(process.pid) });
    const end = Date.now() + opts.waitMs;
    for (;;) {
      try {
        const fd = openSync(path, 'wx', 0o600);
        try {
          writeSync(fd, me);
        } finally {
          closeSync(fd);
        }
        return new FileLock(path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const seen = readHolder(path);
      if (!seen) continue;
      if (!seen.holder || !running(seen.holder)) {
        // Stale: unlink it unless someone replaced it meanwhile.
        if (readHolder(path)?.text === seen.text) {
          try {
            unlinkSync(path);
          } catch (err) {
            if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
          }
        }
        continue;
      }
      if (Date.now() >= end) {
        throw new AbortedError(`another guest-agent (pid ${seen.holder.pid}) is ${opts.what}: wait for it to finish, then try again`, 'GUEST_BUSY');
      }
      await sleep(10);
    }
  }

  release(): void {
    try {
      unlinkSync(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
}
