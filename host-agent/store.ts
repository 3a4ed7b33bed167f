/**
 * The seam between the host agent's state and where it is kept. The workflow and models
 * never see SQL: they change records in memory and hand the changed records to `apply`,
 * which must make all of them durable together or none (one transaction). Records are
 * JSON values keyed by a string inside a table, the shape etcd offers too, so a
 * multi-host store can replace SQLite behind this interface.
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { FailedPreconditionError } from '../common/errors.js';

export const TABLES = ['nodes', 'vms', 'groups', 'resources', 'attachments', 'host_disks', 'operations', 'requests', 'meta'] as const;
export type Table = (typeof TABLES)[number];

export type Change =
  | { table: Table; key: string; value: unknown }
  | { table: Table; key: string; value: undefined };

export type Snapshot = Record<Table, Map<string, unknown>>;

export interface Store {
  /** Everything stored, table by table. */
  load(): Snapshot;
  /** Makes every change durable, all together or none; throws if it could not. */
  apply(changes: readonly Change[]): void;
  close(): void;
}

function emptySnapshot(): Snapshot {
  return Object.fromEntries(TABLES.map((t) => [t, new Map<string, unknown>()])) as Snapshot;
}

/** Keeps records in memory only: for unit tests, and to keep the interface honest. */
export class MemoryStore implements Store {
  private readonly data = Object.fromEntries(TABLES.map((t) => [t, new Map<string, string>()])) as Record<Table, Map<string, string>>;
  /** Set to make the next apply fail, as a full disk would. */
  failNext: Error | undefined;

  load(): Snapshot {
    const out = emptySnapshot();
    for (const t of TABLES) for (const [k, v] of this.data[t]) out[t].set(k, JSON.parse(v));
    return out;
  }

  apply(changes: readonly Change[]): void {
    if (this.failNext) {
      const err = this.failNext;
      this.failNext = undefined;
      throw err;
    }
    // Encoded as SQLite's store encodes them (so what one refuses, both refuse), and all
    // checked before any is kept.
    const encoded = changes.map((c) => {
      if (!TABLES.includes(c.table)) throw new TypeError(`no table ${String(c.table)}`);
      const json = c.value === undefined ? undefined : (JSON.stringify(c.value) as string | undefined);
      if (c.value !== undefined && json === undefined) throw new TypeError(`${c.table}/${c.key}: a value JSON cannot hold`);
      return { table: c.table, key: c.key, json };
    });
    for (const c of encoded) {
      if (c.json === undefined) this.data[c.table].delete(c.key);
      else this.data[c.table].set(c.key, c.json);
    }
  }

  close(): void {}
}

/** Each entry brings the schema from version i to i+1; never edit a released one, add one. */
const MIGRATIONS: string[] = [
  TABLES.map((t) => `CREATE TABLE ${t} (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;`).join('\n'),
];

export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * One SQLite file in the data dir, WAL journal, synchronous=NORMAL: a change `apply`
 * returned from survives kill -9 of the process; a power loss may take the last
 * transactions since the last checkpoint (README).
 */
export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly put: Record<Table, Database.Statement>;
  private readonly del: Record<Table, Database.Statement>;
  private readonly applyAll: (changes: readonly Change[]) => void;

  constructor(dataDir: string) {
    this.db = new Database(join(dataDir, 'host-agent.db'), { timeout: 1000 });
    try {
      // One host agent owns a data dir; a second one is refused instead of sharing it.
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('wal_autocheckpoint = 16384');
      this.migrate();
    } catch (err) {
      this.db.close();
      if (err instanceof Error && /database is locked|SQLITE_BUSY/i.test(err.message)) {
        throw new FailedPreconditionError(`data dir ${dataDir} is in use by another host-agent: stop it, or give this one another --data-dir`, 'DATA_DIR_IN_USE');
      }
      throw err;
    }
    this.put = Object.fromEntries(
      TABLES.map((t) => [t, this.db.prepare(`INSERT INTO ${t} (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`)]),
    ) as Record<Table, Database.Statement>;
    this.del = Object.fromEntries(TABLES.map((t) => [t, this.db.prepare(`DELETE FROM ${t} WHERE key = ?`)])) as Record<Table, Database.Statement>;
    this.applyAll = this.db.transaction((changes: readonly Change[]) => {
      for (const c of changes) {
        if (c.value === undefined) this.del[c.table].run(c.key);
        else this.put[c.table].run(c.key, JSON.stringify(c.value));
      }
    });
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new FailedPreconditionError(
        `the data dir was written by a newer host-agent (schema ${version}, this one knows ${SCHEMA_VERSION}): run that version`,
        'SCHEMA_TOO_NEW',
      );
    }
    for (let v = version; v < SCHEMA_VERSION; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  load(): Snapshot {
    const out = emptySnapshot();
    for (const t of TABLES) {
      const rows = this.db.prepare(`SELECT key, value FROM ${t}`).raw().all() as [string, string][];
      const m = out[t];
      for (const [k, v] of rows) m.set(k, JSON.parse(v));
    }
    return out;
  }

  apply(changes: readonly Change[]): void {
    if (changes.length > 0) this.applyAll(changes);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
