/**
 * The array's metadata in SQLite: one database file in the data dir, WAL journal,
 * synchronous=NORMAL. Each change the array acknowledges is one transaction, committed
 * before the reply is sent: it survives kill -9 of the process (the WAL is in the OS page
 * cache); a power loss may take the last transactions before the next checkpoint (README).
 */
import Database from 'better-sqlite3';
import { join } from 'node:path';
import { FailedPreconditionError } from '../common/errors.js';
import type { IgroupRecord, LunMapRecord, LunRecord, PoolRecord, ReservationState } from './model.js';
import type { IgroupProtocol, OsType } from './rules.js';

/** Each entry brings the schema from version i to i+1; never edit a released one, add one. */
const MIGRATIONS: string[] = [
  `CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
   CREATE TABLE pools (name TEXT PRIMARY KEY, capacity_bytes INTEGER NOT NULL);
   CREATE TABLE luns (
     uuid TEXT PRIMARY KEY, path TEXT NOT NULL UNIQUE, volume TEXT NOT NULL, name TEXT NOT NULL,
     serial TEXT NOT NULL UNIQUE, size_bytes INTEGER NOT NULL, os_type TEXT NOT NULL,
     thin INTEGER NOT NULL, state TEXT NOT NULL, comment TEXT NOT NULL, pool TEXT NOT NULL,
     created_ms INTEGER NOT NULL);
   CREATE TABLE igroups (name TEXT PRIMARY KEY, protocol TEXT NOT NULL, os_type TEXT NOT NULL,
     initiators TEXT NOT NULL, created_ms INTEGER NOT NULL);
   CREATE TABLE lun_maps (lun_uuid TEXT NOT NULL, igroup TEXT NOT NULL, lun_id INTEGER NOT NULL,
     PRIMARY KEY (lun_uuid, igroup), UNIQUE (igroup, lun_id)) WITHOUT ROWID;
   CREATE TABLE lun_extents (lun_uuid TEXT NOT NULL, extent INTEGER NOT NULL,
     PRIMARY KEY (lun_uuid, extent)) WITHOUT ROWID;
   CREATE TABLE reservations (lun_uuid TEXT PRIMARY KEY, state TEXT NOT NULL);
   CREATE TABLE requests (request_id TEXT PRIMARY KEY, method TEXT NOT NULL,
     fingerprint TEXT NOT NULL, response TEXT NOT NULL, created_ms INTEGER NOT NULL) WITHOUT ROWID;`,
];

export const SCHEMA_VERSION = MIGRATIONS.length;

export interface StoredRequest {
  method: string;
  fingerprint: string;
  response: string;
}

export interface LoadedArray {
  pools: PoolRecord[];
  luns: LunRecord[];
  igroups: IgroupRecord[];
  maps: LunMapRecord[];
  extents: Map<string, number[]>;
  reservations: Map<string, ReservationState>;
}

interface LunRow {
  uuid: string;
  path: string;
  volume: string;
  name: string;
  serial: string;
  size_bytes: number;
  os_type: string;
  thin: number;
  state: string;
  comment: string;
  pool: string;
  created_ms: number;
}

export class ArrayStore {
  readonly db: Database.Database;
  private readonly stmt;

  constructor(dataDir: string) {
    // A short busy wait: a second server on this data dir is refused within a second.
    this.db = new Database(join(dataDir, 'array.db'), { timeout: 1000 });
    try {
      // One process owns the array: no per-transaction file locks, and a second storage-sim
      // on the same data dir is refused instead of corrupting it. Set before WAL mode so
      // SQLite keeps the WAL index in process memory.
      this.db.pragma('locking_mode = EXCLUSIVE');
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('wal_autocheckpoint = 16384');
      this.db.pragma('foreign_keys = OFF');
      this.migrate();
    } catch (err) {
      this.db.close();
      if ((err as { code?: string }).code === 'SQLITE_BUSY') {
        throw new FailedPreconditionError(
          `the data dir ${dataDir} is in use by another storage-sim: stop it, or give this one another --data-dir`,
          'DATA_DIR_IN_USE',
        );
      }
      throw err;
    }
    const db = this.db;
    this.stmt = {
      getMeta: db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?'),
      setMeta: db.prepare('INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value'),
      upsertPool: db.prepare(
        'INSERT INTO pools (name, capacity_bytes) VALUES (@name, @capacityBytes) ON CONFLICT (name) DO UPDATE SET capacity_bytes = excluded.capacity_bytes',
      ),
      insertLun: db.prepare(
        `INSERT INTO luns (uuid, path, volume, name, serial, size_bytes, os_type, thin, state, comment, pool, created_ms)
         VALUES (@uuid, @path, @volume, @name, @serial, @sizeBytes, @osType, @thin, @state, @comment, @pool, @createdMs)`,
      ),
      updateLun: db.prepare('UPDATE luns SET size_bytes = @sizeBytes, state = @state, comment = @comment WHERE uuid = @uuid'),
      deleteLun: db.prepare('DELETE FROM luns WHERE uuid = ?'),
      deleteLunMaps: db.prepare('DELETE FROM lun_maps WHERE lun_uuid = ?'),
      deleteLunExtents: db.prepare('DELETE FROM lun_extents WHERE lun_uuid = ?'),
      insertIgroup: db.prepare(
        'INSERT INTO igroups (name, protocol, os_type, initiators, created_ms) VALUES (@name, @protocol, @osType, @initiators, @createdMs)',
      ),
      setInitiators: db.prepare('UPDATE igroups SET initiators = ? WHERE name = ?'),
      deleteIgroup: db.prepare('DELETE FROM igroups WHERE name = ?'),
      insertMap: db.prepare('INSERT INTO lun_maps (lun_uuid, igroup, lun_id) VALUES (?, ?, ?)'),
      deleteMap: db.prepare('DELETE FROM lun_maps WHERE lun_uuid = ? AND igroup = ?'),
      insertExtent: db.prepare('INSERT OR IGNORE INTO lun_extents (lun_uuid, extent) VALUES (?, ?)'),
      putReservation: db.prepare(
        'INSERT INTO reservations (lun_uuid, state) VALUES (?, ?) ON CONFLICT (lun_uuid) DO UPDATE SET state = excluded.state',
      ),
      deleteReservation: db.prepare('DELETE FROM reservations WHERE lun_uuid = ?'),
      getRequest: db.prepare<[string], StoredRequest>('SELECT method, fingerprint, response FROM requests WHERE request_id = ?'),
      putRequest: db.prepare(
        'INSERT INTO requests (request_id, method, fingerprint, response, created_ms) VALUES (?, ?, ?, ?, ?)',
      ),
      pruneRequests: db.prepare('DELETE FROM requests WHERE created_ms < ?'),
    };
  }

  private migrate(): void {
    const current = this.db.pragma('user_version', { simple: true }) as number;
    if (current > MIGRATIONS.length) {
      throw new Error(
        `array.db has schema version ${current}, newer than this storage-sim knows (${MIGRATIONS.length}): upgrade storage-sim`,
      );
    }
    for (let v = current; v < MIGRATIONS.length; v++) {
      this.db.transaction(() => {
        this.db.exec(MIGRATIONS[v]!);
        this.db.pragma(`user_version = ${v + 1}`);
      })();
    }
  }

  /** Runs fn in one transaction: all of its writes commit together, or none do. */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn)();
  }

  getMeta(key: string): string | undefined {
    return this.stmt.getMeta.get(key)?.value;
  }

  setMeta(key: string, value: string): void {
    this.stmt.setMeta.run(key, value);
  }

  upsertPool(pool: PoolRecord): void {
    this.stmt.upsertPool.run(pool);
  }

  loadAll(): LoadedArray {
    const pools = this.db
      .prepare<[], { name: string; capacity_bytes: number }>('SELECT name, capacity_bytes FROM pools ORDER BY rowid')
      .all()
      .map((r) => ({ name: r.name, capacityBytes: r.capacity_bytes }));
    const luns = this.db
      .prepare<[], LunRow>('SELECT * FROM luns')
      .all()
      .map(
        (r): LunRecord => ({
          uuid: r.uuid,
          path: r.path,
          volume: r.volume,
          name: r.name,
          serial: r.serial,
          sizeBytes: r.size_bytes,
          osType: r.os_type as OsType,
          thin: r.thin === 1,
          state: r.state as LunRecord['state'],
          comment: r.comment,
          pool: r.pool,
          createdMs: r.created_ms,
        }),
      );
    const igroups = this.db
      .prepare<[], { name: string; protocol: string; os_type: string; initiators: string; created_ms: number }>(
        'SELECT * FROM igroups ORDER BY rowid',
      )
      .all()
      .map(
        (r): IgroupRecord => ({
          name: r.name,
          protocol: r.protocol as IgroupProtocol,
          osType: r.os_type as OsType,
          initiators: JSON.parse(r.initiators) as string[],
          createdMs: r.created_ms,
        }),
      );
    const maps = this.db
      .prepare<[], { lun_uuid: string; igroup: string; lun_id: number }>('SELECT * FROM lun_maps')
      .all()
      .map((r) => ({ lunUuid: r.lun_uuid, igroup: r.igroup, lunId: r.lun_id }));
    const extents = new Map<string, number[]>();
    for (const r of this.db
      .prepare<[], { lun_uuid: string; extent: number }>('SELECT lun_uuid, extent FROM lun_extents')
      .iterate()) {
      let list = extents.get(r.lun_uuid);
      if (!list) extents.set(r.lun_uuid, (list = []));
      list.push(r.extent);
    }
    const reservations = new Map<string, ReservationState>();
    for (const r of this.db.prepare<[], { lun_uuid: string; state: string }>('SELECT * FROM reservations').iterate()) {
      reservations.set(r.lun_uuid, JSON.parse(r.state) as ReservationState);
    }
    return { pools, luns, igroups, maps, extents, reservations };
  }

  insertLun(lun: LunRecord): void {
    this.stmt.insertLun.run({ ...lun, thin: lun.thin ? 1 : 0 });
  }

  updateLun(lun: LunRecord): void {
    this.stmt.updateLun.run({ uuid: lun.uuid, sizeBytes: lun.sizeBytes, state: lun.state, comment: lun.comment });
  }

  /** Deletes a LUN with its maps, extents and reservation state. */
  deleteLun(uuid: string): void {
    this.stmt.deleteLun.run(uuid);
    this.stmt.deleteLunMaps.run(uuid);
    this.stmt.deleteLunExtents.run(uuid);
    this.stmt.deleteReservation.run(uuid);
  }

  insertIgroup(ig: IgroupRecord): void {
    this.stmt.insertIgroup.run({ ...ig, initiators: JSON.stringify(ig.initiators) });
  }

  setInitiators(igroup: string, initiators: string[]): void {
    this.stmt.setInitiators.run(JSON.stringify(initiators), igroup);
  }

  deleteIgroup(name: string): void {
    this.stmt.deleteIgroup.run(name);
  }

  insertMap(m: LunMapRecord): void {
    this.stmt.insertMap.run(m.lunUuid, m.igroup, m.lunId);
  }

  deleteMap(lunUuid: string, igroup: string): void {
    this.stmt.deleteMap.run(lunUuid, igroup);
  }

  addExtents(lunUuid: string, extents: number[]): void {
    for (const e of extents) this.stmt.insertExtent.run(lunUuid, e);
  }

  putReservation(lunUuid: string, state: ReservationState): void {
    this.stmt.putReservation.run(lunUuid, JSON.stringify(state));
  }

  getRequest(requestId: string): StoredRequest | undefined {
    return this.stmt.getRequest.get(requestId);
  }

  putRequest(requestId: string, method: string, fingerprint: string, response: string, nowMs: number): void {
    this.stmt.putRequest.run(requestId, method, fingerprint, response, nowMs);
  }

  /**
   * Forgets replay records older than the cut-off; returns how many went. A full scan, run
   * hourly: cheaper overall than an index every mutation would have to write.
   */
  pruneRequests(beforeMs: number): number {
    return this.stmt.pruneRequests.run(beforeMs).changes;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
