/**
 * The guest's state dir: its durable mount table (`mounts.json`) and the requests it has
 * made and not yet finished, in one document that is only ever replaced whole: written to a
 * temporary file, fsynced, renamed over the old one, and the directory fsynced. A crash at
 * any instant leaves the old table or the new one, never a mix; a temporary file a crash
 * left behind is ignored and swept up.
 *
 * Each request is recorded here before it is sent (its request id, mount and parameters),
 * then each step it reaches (the host's operation id, the disk the host attached, the
 * volume about to be written, the mount), so a run after a crash picks it up where it
 * stopped instead of asking twice.
 *
 * Locks (files under `locks/`, see file-lock.ts): `table.lock` for each read-modify-write of
 * the table (milliseconds), and one per mount for a whole command on that mount, so two
 * runs never drive the same mount at once. Readers need no lock.
 */
import { createHash } from 'node:crypto';
import { closeSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { DrivePath, GuestOsName } from '../common/drive-path.js';
import { FailedPreconditionError } from '../common/errors.js';
import { FileLock } from './file-lock.js';
import type { AttachedDisk, ScsiAddress, Sharing } from './host-link.js';

export const TABLE_FILE = 'mounts.json';
const FORMAT = 1;

/** A volume mounted in this guest. */
export interface MountRecord {
  /** Normalized drive path: E:, C:\mt1, /srv/data. */
  path: string;
  /** Identity for comparisons (case-folded on Windows). */
  key: string;
  /** How the disk came: `disk create` or `disk connect`. */
  origin: 'create' | 'connect';
  serial: string;
  naaId: string;
  sizeBytes: number;
  address: ScsiAddress;
  lunId: number;
  lunPath: string;
  /** For `create`: what was asked. */
  sharing?: Sharing;
  /** For `connect`: the LUN as it was named (serial or NAA id). */
  lun?: string;
  volumeId: string;
  label: string;
  /** Byte range of the volume's data area on the disk. */
  dataOffset: number;
  dataBytes: number;
  /** Whether this guest initialized the volume (false: found on the disk and kept). */
  initialized: boolean;
  operationId: string;
  requestId: string;
  mountedAt: string;
}

/** A VolumeSpec as stored (the date as text). */
export interface StoredVolumeSpec {
  guestOs: GuestOsName;
  label: string;
  volumeId: string;
  createdAt: string;
  diskGuid: string;
  partitionGuid: string;
}

interface PendingBase {
  requestId: string;
  mountPath: string;
  key: string;
  createdAt: string;
  /** The host's operation, once it answered. */
  operationId?: string;
}

/**
 * A `disk create` or `disk connect` not finished yet. Phases: `requested` (recorded, maybe
 * sent), `running` (the host answered with an operation), `attached` (the operation
 * succeeded: `result` is the disk), `mounted` (in the mount table; the host not yet told).
 */
export interface AttachRequest extends PendingBase {
  kind: 'create' | 'connect';
  phase: 'requested' | 'running' | 'attached' | 'mounted';
  sizeBytes?: number;
  sharing?: Sharing;
  lun?: string;
  /** The label asked for; without one, a label is made from the mount path. */
  label?: string;
  /** Chosen before the first byte of a new volume is written. */
  volume?: StoredVolumeSpec;
  result?: AttachedDisk;
}

/**
 * A `disk remove` not finished yet. Phases: `requested`, `unmounted` (out of the mount
 * table; `unmounted` keeps what was mounted, to mount it again if the host refuses),
 * `running` (the host answered with an operation).
 */
export interface RemoveRequest extends PendingBase {
  kind: 'remove';
  phase: 'requested' | 'unmounted' | 'running';
  deleteLun: boolean;
  unmounted?: MountRecord;
  /** An unfinished create or connect of the mount this removal took the place of: put back if the host refuses the removal. */
  supersedes?: AttachRequest;
}

export type PendingRequest = AttachRequest | RemoveRequest;

export interface MountTable {
  format: number;
  /** The VM this state dir belongs to, set at its first change. */
  vm?: { id: string; name: string; guestOs: GuestOsName };
  mounts: MountRecord[];
  pending: PendingRequest[];
}

export interface StateHooks {
  /** Tests only: called at named points (`table-write`: the new table is on disk under its temporary name, not yet renamed). */
  reached?(point: string): void;
}

const TABLE_LOCK_WAIT_MS = 10_000;

export class StateDir {
  constructor(
    readonly dir: string,
    private readonly hooks: StateHooks = {},
  ) {}

  get file(): string {
    return join(this.dir, TABLE_FILE);
  }

  /** The table as last written (an empty one before the first change). Needs no lock: the file is only ever replaced whole. */
  read(): MountTable {
    let text: string;
    try {
      text = readFileSync(this.file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { format: FORMAT, mounts: [], pending: [] };
      throw err;
    }
    return this.parse(text);
  }

  private parse(text: string): MountTable {
    const damaged = (why: string): never => {
      throw new FailedPreconditionError(
        `the mount table ${this.file} is damaged (${why}); the guest agent only ever replaces it whole, so something else wrote it: restore it from a backup, or move it away to start with an empty table`,
        'STATE_DAMAGED',
      );
    };
    let t: MountTable;
    try {
      t = JSON.parse(text) as MountTable;
    } catch (err) {
      return damaged(`not JSON: ${(err as Error).message}`);
    }
    if (typeof t !== 'object' || t === null) return damaged('not a JSON object');
    if (t.format !== FORMAT) {
      return damaged(typeof t.format === 'number' && t.format > FORMAT ? `format ${t.format}, written by a newer guest agent` : `format ${String(t.format)}, not ${FORMAT}`);
    }
    if (!Array.isArray(t.mounts) || !Array.isArray(t.pending)) return damaged('no mounts or pending list');
    return t;
  }

  /**
   * Reads the table under the table lock, lets `change` modify it, and writes it back
   * atomically if it changed. If `change` throws, nothing is written.
   */
  async update<T>(change: (t: MountTable) => T): Promise<T> {
    this.ensureDir();
    const lock = await FileLock.acquire(join(this.dir, 'locks', 'table.lock'), { waitMs: TABLE_LOCK_WAIT_MS, what: `writing ${this.file}` });
    try {
      this.sweepTemporaries();
      const table = this.read();
      const before = JSON.stringify(table);
      const result = change(table);
      const after = JSON.stringify(table, null, 2);
      if (JSON.stringify(JSON.parse(after)) !== before) this.write(after);
      return result;
    } finally {
      lock.release();
    }
  }

  /** Held for a whole command on one mount: a second run on the same mount is ABORTED at once. */
  async lockMount(mount: DrivePath): Promise<() => void> {
    this.ensureDir();
    const name = createHash('sha256').update(mount.key).digest('hex').slice(0, 16);
    const lock = await FileLock.acquire(join(this.dir, 'locks', `mount-${name}.lock`), { waitMs: 0, what: `working on ${mount.path}` });
    return () => lock.release();
  }

  private ensureDir(): void {
    mkdirSync(join(this.dir, 'locks'), { recursive: true, mode: 0o700 });
  }

  private write(text: string): void {
    const temporary = join(this.dir, `.${TABLE_FILE}.${process.pid}.tmp`);
    const fd = openSync(temporary, 'w', 0o600);
    try {
      writeSync(fd, `${text}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    this.hooks.reached?.('table-write');
    renameSync(temporary, this.file);
    // The rename itself is durable only once the directory is.
    const dirFd = openSync(this.dir, 'r');
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  }

  /** Temporary files of writes a crash cut short: never renamed, so never part of the table. */
  private sweepTemporaries(): void {
    for (const name of readdirSync(this.dir)) {
      if (name.startsWith(`.${TABLE_FILE}.`) && name.endsWith('.tmp')) {
        try {
          unlinkSync(join(this.dir, name));
        } catch {
          // Another run swept it first.
        }
      }
    }
  }
}
