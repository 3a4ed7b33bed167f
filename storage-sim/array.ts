/**
 * The simulated SAN array: pools, LUNs, igroups, LUN maps, masked block I/O and SCSI-3
 * persistent reservations. Plain TypeScript, no gRPC: callers give parsed values and get
 * views back; every refusal is a typed DomainError.
 *
 * State lives in memory for speed and in SQLite for durability. A mutation validates
 * first (every DomainError is thrown before anything changes), then writes its rows and its
 * replay record in one transaction, then updates memory; if anything fails after the checks,
 * memory is reloaded from the database so the two never disagree.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { crc32 } from 'node:zlib';
import {
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  isDomainError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
} from '../common/errors.js';
import { formatSize } from '../common/size.js';
import { LunDataFiles } from './lun-data.js';
import {
  naaIdOf,
  type IgroupRecord,
  type IgroupView,
  type LunMapView,
  type LunRecord,
  type LunState,
  type LunView,
  type PoolRecord,
  type PoolView,
  type ReservationState,
  type ReservationType,
} from './model.js';
import {
  checkComment,
  checkIgroupName,
  checkIo,
  checkPage,
  checkPathPrefix,
  checkPoolName,
  checkRequestId,
  checkLunSize,
  classifyLunRef,
  EXTENT_BYTES,
  initiatorFits,
  MAX_INITIATORS_PER_CALL,
  MAX_IO_BYTES,
  MAX_LUN_BYTES,
  MAX_LUN_ID,
  MIN_LUN_BYTES,
  pageToken,
  parseInitiator,
  parseLunPath,
  parseReservationKey,
  type IgroupProtocol,
  type OsType,
} from './rules.js';
import { ArrayStore, type LoadedArray } from './store.js';

/** Igroups one MapLun or UnmapLun may name: a cluster's nodes, with room to spare. */
const MAX_IGROUPS_PER_CALL = 64;

export const MODEL = 'passthru storage-sim';
export const VERSION = '0.1.0';
/** Replay records are kept at least this long (DESIGN.md asks for 24 hours). */
export const REQUEST_RETENTION_MS = 48 * 3600 * 1000;
const SERIAL_CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';

export interface ArrayOptions {
  dataDir: string;
  /** Fixed at the first start; a later start naming another array is refused. */
  name?: string;
  serialPrefix?: string;
  /** Pools to create, or to grow, at start. With none and an empty array: aggr1 of 64 TiB. */
  pools?: PoolRecord[];
  faultsEnabled?: boolean;
}

export interface ArrayInfo {
  name: string;
  serialPrefix: string;
  model: string;
  version: string;
  minLunSizeBytes: number;
  maxLunSizeBytes: number;
  maxIoBytes: number;
  lunCount: number;
  igroupCount: number;
  mapCount: number;
  pools: PoolView[];
  faultsEnabled: boolean;
}

export interface Page<T> {
  items: T[];
  nextPageToken: string;
}

/** Requests as the array takes them. Sizes and offsets arrive as bigint, straight off the wire. */
export interface CreateLunInput {
  requestId: string;
  path: string;
  sizeBytes: bigint;
  osType: OsType | undefined;
  /** Undefined means thick, as an ONTAP LUN is space-reserved by default. */
  thin: boolean | undefined;
  comment: string;
  pool: string;
}

export interface CreateIgroupInput {
  requestId: string;
  name: string;
  protocol: IgroupProtocol | undefined;
  osType: OsType | undefined;
  initiators: string[];
}

export interface IoTarget {
  lun: string;
  initiator: string;
}

export class StorageArray {
  readonly name: string;
  readonly serialPrefix: string;
  readonly faultsEnabled: boolean;
  readonly data: LunDataFiles;
  private readonly store: ArrayStore;

  private pools = new Map<string, PoolRecord>();
  private poolUsed = new Map<string, number>();
  private luns = new Map<string, LunRecord>();
  private lunByPath = new Map<string, string>();
  private lunBySerial = new Map<string, string>();
  private sortedPaths: string[] | undefined;
  private volumes = new Map<string, { pool: string; luns: number }>();
  private igroups = new Map<string, IgroupRecord>();
  private igroupsOfInitiator = new Map<string, Set<string>>();
  /** lun uuid → igroup → LUN id */
  private mapsOfLun = new Map<string, Map<string, number>>();
  /** igroup → LUN id → lun uuid */
  private mapsOfIgroup = new Map<string, Map<number, string>>();
  private extents = new Map<string, Set<number>>();
  private reservations = new Map<string, ReservationState>();
  private pruneTimer: NodeJS.Timeout;
  /** File removals that must wait until the metadata change has committed. */
  private afterCommit: (() => void)[] = [];

  constructor(opts: ArrayOptions) {
    mkdirSync(opts.dataDir, { recursive: true });
    this.store = new ArrayStore(opts.dataDir);
    this.data = new LunDataFiles(opts.dataDir);
    try {
      this.faultsEnabled = opts.faultsEnabled ?? false;
      const wanted = {
        name: opts.name ?? this.store.getMeta('name') ?? 'sim1',
        serialPrefix: opts.serialPrefix ?? this.store.getMeta('serial_prefix') ?? 'PTSM',
      };
      if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/.test(wanted.name)) {
        throw new InvalidArgumentError('name', `array name ${JSON.stringify(wanted.name)} is invalid: 1-64 letters, digits, _ . -`);
      }
      if (!/^[A-Za-z0-9]{1,6}$/.test(wanted.serialPrefix)) {
        throw new InvalidArgumentError('serial_prefix', `serial prefix ${JSON.stringify(wanted.serialPrefix)} is invalid: 1-6 letters or digits`);
      }
      for (const key of ['name', 'serial_prefix'] as const) {
        const stored = this.store.getMeta(key);
        const value = key === 'name' ? wanted.name : wanted.serialPrefix;
        if (stored !== undefined && stored !== value) {
          throw new FailedPreconditionError(
            `the data dir belongs to the array with ${key} ${JSON.stringify(stored)}, not ${JSON.stringify(value)}: use another data dir or drop the flag`,
            'DATA_DIR_MISMATCH',
          );
        }
      }
      this.name = wanted.name;
      this.serialPrefix = wanted.serialPrefix;
      this.store.transaction(() => {
        this.store.setMeta('name', this.name);
        this.store.setMeta('serial_prefix', this.serialPrefix);
      });
      this.load(this.store.loadAll());
      this.configurePools(opts.pools ?? []);
      this.reconcileFiles();
      this.store.pruneRequests(Date.now() - REQUEST_RETENTION_MS);
      this.pruneTimer = setInterval(() => this.store.pruneRequests(Date.now() - REQUEST_RETENTION_MS), 3600_000);
      this.pruneTimer.unref();
    } catch (err) {
      // A refused start (another array's data dir, a pool that cannot shrink) must not leave
      // the database and data files open: the caller may well try again with other options.
      this.data.close();
      this.store.close();
      throw err;
    }
  }

  close(): void {
    clearInterval(this.pruneTimer);
    this.data.close();
    this.store.close();
  }

  // ---------------------------------------------------------------- state bookkeeping

  private load(s: LoadedArray): void {
    this.pools = new Map(s.pools.map((p) => [p.name, p]));
    this.poolUsed = new Map(s.pools.map((p) => [p.name, 0]));
    this.luns = new Map();
    this.lunByPath = new Map();
    this.lunBySerial = new Map();
    this.volumes = new Map();
    this.sortedPaths = undefined;
    this.extents = new Map([...s.extents].map(([uuid, list]) => [uuid, new Set(list)]));
    for (const lun of s.luns) this.indexLun(lun);
    this.igroups = new Map();
    this.igroupsOfInitiator = new Map();
    for (const ig of s.igroups) this.indexIgroup(ig);
    this.mapsOfLun = new Map();
    this.mapsOfIgroup = new Map();
    for (const m of s.maps) this.indexMap(m.lunUuid, m.igroup, m.lunId);
    this.reservations = new Map(s.reservations);
  }

  /** Puts memory back to what the database holds, after a failure past the checks. */
  private reload(): void {
    this.load(this.store.loadAll());
  }

  private configurePools(pools: PoolRecord[]): void {
    if (pools.length === 0 && this.pools.size === 0) pools = [{ name: 'aggr1', capacityBytes: 64 * 1024 ** 4 }];
    for (const p of pools) {
      checkPoolName('pool', p.name);
      if (!Number.isSafeInteger(p.capacityBytes) || p.capacityBytes <= 0) {
        throw new InvalidArgumentError('pool', `pool ${p.name} needs a positive capacity`);
      }
      const used = this.poolUsed.get(p.name) ?? 0;
      if (p.capacityBytes < used) {
        throw new FailedPreconditionError(
          `pool ${p.name} already holds ${formatSize(used)}; it cannot shrink to ${formatSize(p.capacityBytes)}`,
          'POOL_TOO_SMALL',
        );
      }
    }
    this.store.transaction(() => pools.forEach((p) => this.store.upsertPool(p)));
    for (const p of pools) {
      this.pools.set(p.name, p);
      if (!this.poolUsed.has(p.name)) this.poolUsed.set(p.name, 0);
    }
  }

  /**
   * Makes the data files match the metadata after a crash: a LUN's file, where it has one,
   * gets exactly its recorded size (a resize cut short is undone), and files with no LUN (a
   * delete cut short) are removed.
   */
  private reconcileFiles(): void {
    for (const lun of this.luns.values()) {
      const size = this.data.sizeOf(lun.uuid);
      if (size !== undefined && size !== lun.sizeBytes) this.data.setSize(lun.uuid, lun.sizeBytes);
    }
    for (const uuid of this.data.listFiles()) if (!this.luns.has(uuid)) this.data.remove(uuid);
  }

  private usedBy(lun: LunRecord): number {
    return lun.thin ? thinUsed(this.extents.get(lun.uuid), lun.sizeBytes) : lun.sizeBytes;
  }

  private adjustPool(pool: string, delta: number): void {
    this.poolUsed.set(pool, (this.poolUsed.get(pool) ?? 0) + delta);
  }

  private indexLun(lun: LunRecord): void {
    this.luns.set(lun.uuid, lun);
    this.lunByPath.set(lun.path, lun.uuid);
    this.lunBySerial.set(lun.serial, lun.uuid);
    const vol = this.volumes.get(lun.volume);
    if (vol) vol.luns++;
    else this.volumes.set(lun.volume, { pool: lun.pool, luns: 1 });
    this.adjustPool(lun.pool, this.usedBy(lun));
    this.sortedPaths = undefined;
  }

  private unindexLun(lun: LunRecord): void {
    this.adjustPool(lun.pool, -this.usedBy(lun));
    this.luns.delete(lun.uuid);
    this.lunByPath.delete(lun.path);
    this.lunBySerial.delete(lun.serial);
    const vol = this.volumes.get(lun.volume)!;
    if (--vol.luns === 0) this.volumes.delete(lun.volume);
    this.extents.delete(lun.uuid);
    this.reservations.delete(lun.uuid);
    for (const ig of this.mapsOfLun.get(lun.uuid)?.keys() ?? []) this.unindexMap(lun.uuid, ig);
    this.mapsOfLun.delete(lun.uuid);
    this.sortedPaths = undefined;
  }

  private indexIgroup(ig: IgroupRecord): void {
    this.igroups.set(ig.name, ig);
    for (const i of ig.initiators) this.linkInitiator(i, ig.name);
  }

  private linkInitiator(initiator: string, igroup: string): void {
    let set = this.igroupsOfInitiator.get(initiator);
    if (!set) this.igroupsOfInitiator.set(initiator, (set = new Set()));
    set.add(igroup);
  }

  private unlinkInitiator(initiator: string, igroup: string): void {
    const set = this.igroupsOfInitiator.get(initiator);
    set?.delete(igroup);
    if (set?.size === 0) this.igroupsOfInitiator.delete(initiator);
  }

  private indexMap(lunUuid: string, igroup: string, lunId: number): void {
    let byIg = this.mapsOfLun.get(lunUuid);
    if (!byIg) this.mapsOfLun.set(lunUuid, (byIg = new Map()));
    byIg.set(igroup, lunId);
    let byId = this.mapsOfIgroup.get(igroup);
    if (!byId) this.mapsOfIgroup.set(igroup, (byId = new Map()));
    byId.set(lunId, lunUuid);
  }

  private unindexMap(lunUuid: string, igroup: string): void {
    const byIg = this.mapsOfLun.get(lunUuid);
    const lunId = byIg?.get(igroup);
    if (lunId === undefined) return;
    byIg!.delete(igroup);
    if (byIg!.size === 0) this.mapsOfLun.delete(lunUuid);
    const byId = this.mapsOfIgroup.get(igroup)!;
    byId.delete(lunId);
    if (byId.size === 0) this.mapsOfIgroup.delete(igroup);
  }

  /**
   * Runs a mutation under its request id: a replay returns the first answer and changes
   * nothing; the same id for a different request is refused. `change` throws its
   * DomainErrors before it writes; its rows and the replay record commit together.
   */
  private mutate<T>(requestId: string, method: string, params: unknown, change: () => T): T {
    checkRequestId(requestId);
    let fingerprint = '';
    if (requestId !== '') {
      fingerprint = JSON.stringify(params, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
      const prior = this.store.getRequest(requestId);
      if (prior) {
        if (prior.method !== method || prior.fingerprint !== fingerprint) {
          throw new InvalidArgumentError(
            'request_id',
            `request_id ${JSON.stringify(requestId)} was already used for a different ${prior.method} request: use a new id for a new request`,
            'REQUEST_ID_REUSED',
          );
        }
        return JSON.parse(prior.response) as T;
      }
    }
    let result: T;
    try {
      result = this.store.transaction(() => {
        const r = change();
        if (requestId !== '') this.store.putRequest(requestId, method, fingerprint, JSON.stringify(r ?? null), Date.now());
        return r;
      });
    } catch (err) {
      this.afterCommit = [];
      if (!isDomainError(err)) this.reload();
      throw err;
    }
    const pending = this.afterCommit;
    this.afterCommit = [];
    for (const action of pending) action();
    return result;
  }

  // ---------------------------------------------------------------- lookups and views

  private findLun(ref: string, field = 'lun'): LunRecord | undefined {
    const kind = classifyLunRef(field, ref);
    const uuid = kind === 'path' ? this.lunByPath.get(ref) : kind === 'serial' ? this.lunBySerial.get(ref) : ref.toLowerCase();
    return uuid === undefined ? undefined : this.luns.get(uuid);
  }

  private lunOrThrow(ref: string, field = 'lun'): LunRecord {
    const lun = this.findLun(ref, field);
    if (!lun) throw new NotFoundError('LUN', ref);
    return lun;
  }

  private igroupOrThrow(name: string, field = 'igroup'): IgroupRecord {
    checkIgroupName(field, name);
    const ig = this.igroups.get(name);
    if (!ig) throw new NotFoundError('igroup', name);
    return ig;
  }

  private lunView(lun: LunRecord): LunView {
    return {
      ...lun,
      naaId: naaIdOf(lun.serial),
      usedBytes: this.usedBy(lun),
      mapped: (this.mapsOfLun.get(lun.uuid)?.size ?? 0) > 0,
    };
  }

  private igroupView(ig: IgroupRecord): IgroupView {
    return { ...ig, initiators: [...ig.initiators], mapCount: this.mapsOfIgroup.get(ig.name)?.size ?? 0 };
  }

  private mapView(lunUuid: string, igroup: string, lunId: number): LunMapView {
    const lun = this.luns.get(lunUuid)!;
    return { lunUuid, lunPath: lun.path, serial: lun.serial, igroup, lunId };
  }

  private poolView(p: PoolRecord): PoolView {
    const used = this.poolUsed.get(p.name) ?? 0;
    let lunCount = 0;
    for (const l of this.luns.values()) if (l.pool === p.name) lunCount++;
    return { name: p.name, capacityBytes: p.capacityBytes, usedBytes: used, availableBytes: Math.max(0, p.capacityBytes - used), lunCount };
  }

  private available(pool: string): number {
    return this.pools.get(pool)!.capacityBytes - (this.poolUsed.get(pool) ?? 0);
  }

  getArray(): ArrayInfo {
    let mapCount = 0;
    for (const m of this.mapsOfLun.values()) mapCount += m.size;
    return {
      name: this.name,
      serialPrefix: this.serialPrefix,
      model: MODEL,
      version: VERSION,
      minLunSizeBytes: MIN_LUN_BYTES,
      maxLunSizeBytes: MAX_LUN_BYTES,
      maxIoBytes: MAX_IO_BYTES,
      lunCount: this.luns.size,
      igroupCount: this.igroups.size,
      mapCount,
      pools: this.listPools(),
      faultsEnabled: this.faultsEnabled,
    };
  }

  listPools(): PoolView[] {
    return [...this.pools.values()].map((p) => this.poolView(p));
  }

  // ---------------------------------------------------------------- LUNs

  private newSerial(): string {
    for (;;) {
      const bytes = randomBytes(12);
      let s = this.serialPrefix;
      for (let i = 0; s.length < 12; i++) s += SERIAL_CHARS[bytes[i]! % SERIAL_CHARS.length];
      if (!this.lunBySerial.has(s)) return s;
    }
  }

  createLun(req: CreateLunInput): LunView {
    const where = parseLunPath('path', req.path);
    const sizeBytes = checkLunSize('size_bytes', req.sizeBytes);
    if (req.osType === undefined) {
      throw new InvalidArgumentError('os_type', 'os_type is required: windows, hyper_v, linux or vmware');
    }
    const comment = checkComment('comment', req.comment);
    if (req.pool !== '') checkPoolName('pool', req.pool);
    const thin = req.thin ?? false;
    const params = { ...req, requestId: undefined, thin };
    return this.mutate(req.requestId, 'CreateLun', params, () => {
      const existing = this.findLun(where.path, 'path');
      if (existing) {
        const diffs: string[] = [];
        if (existing.sizeBytes !== sizeBytes) diffs.push(`size ${existing.sizeBytes}`);
        if (existing.osType !== req.osType) diffs.push(`os_type ${existing.osType}`);
        if (existing.thin !== thin) diffs.push(existing.thin ? 'thin' : 'thick');
        if (existing.comment !== comment) diffs.push(`comment ${JSON.stringify(existing.comment)}`);
        if (req.pool !== '' && existing.pool !== req.pool) diffs.push(`pool ${existing.pool}`);
        if (diffs.length > 0) {
          throw new AlreadyExistsError('LUN', where.path, `LUN ${where.path} already exists with ${diffs.join(', ')}: delete it first or choose another path`);
        }
        return this.lunView(existing);
      }
      const volume = this.volumes.get(where.volume);
      let pool = req.pool;
      if (pool === '') pool = volume?.pool ?? this.pools.keys().next().value!;
      if (!this.pools.has(pool)) throw new NotFoundError('pool', pool);
      if (volume && volume.pool !== pool) {
        throw new InvalidArgumentError('pool', `volume ${where.volume} lives in pool ${volume.pool}, not ${pool}: omit pool or name ${volume.pool}`);
      }
      if (!thin && sizeBytes > this.available(pool)) {
        throw new ResourceExhaustedError(
          `pool ${pool} has ${formatSize(this.available(pool))} free; a thick LUN of ${formatSize(sizeBytes)} does not fit: use a smaller size, thin provisioning or another pool`,
          'POOL_FULL',
        );
      }
      const lun: LunRecord = {
        uuid: randomUUID(),
        path: where.path,
        volume: where.volume,
        name: where.name,
        serial: this.newSerial(),
        sizeBytes,
        osType: req.osType!,
        thin,
        state: 'online',
        comment,
        pool,
        createdMs: Date.now(),
      };
      // No data file yet: it is made at the first write (lun-data.ts).
      this.store.insertLun(lun);
      this.indexLun(lun);
      return this.lunView(lun);
    });
  }

  getLun(ref: string): LunView {
    return this.lunView(this.lunOrThrow(ref));
  }

  listLuns(opts: { pageSize: number; pageToken: string; pathPrefix: string }): Page<LunView> {
    const prefix = checkPathPrefix('path_prefix', opts.pathPrefix);
    const page = checkPage(opts.pageSize, opts.pageToken);
    this.sortedPaths ??= [...this.lunByPath.keys()].sort();
    const paths = this.sortedPaths;
    let i = page.after === undefined ? lowerBound(paths, prefix) : upperBound(paths, page.after);
    const items: LunView[] = [];
    while (i < paths.length && items.length < page.size && paths[i]!.startsWith(prefix)) {
      items.push(this.lunView(this.luns.get(this.lunByPath.get(paths[i]!)!)!));
      i++;
    }
    const more = i < paths.length && paths[i]!.startsWith(prefix);
    return { items, nextPageToken: more ? pageToken(items[items.length - 1]!.path) : '' };
  }

  resizeLun(req: { requestId: string; lun: string; sizeBytes: bigint }): LunView {
    const sizeBytes = checkLunSize('size_bytes', req.sizeBytes);
    return this.mutate(req.requestId, 'ResizeLun', { lun: req.lun, sizeBytes }, () => {
      const lun = this.lunOrThrow(req.lun);
      if (sizeBytes === lun.sizeBytes) return this.lunView(lun);
      if (sizeBytes < lun.sizeBytes) {
        throw new InvalidArgumentError('size_bytes', `LUN ${lun.path} is ${lun.sizeBytes} bytes; a LUN only grows, so give more than that`, 'SHRINK_REFUSED');
      }
      if (!lun.thin && sizeBytes - lun.sizeBytes > this.available(lun.pool)) {
        throw new ResourceExhaustedError(
          `pool ${lun.pool} has ${formatSize(this.available(lun.pool))} free; growing thick LUN ${lun.path} by ${formatSize(sizeBytes - lun.sizeBytes)} does not fit`,
          'POOL_FULL',
        );
      }
      const grown = { ...lun, sizeBytes };
      // Grow the file first: start-up trims a file longer than its LUN back to the record.
      this.data.setSize(lun.uuid, sizeBytes);
      this.store.updateLun(grown);
      this.replaceLun(lun, grown);
      return this.lunView(grown);
    });
  }

  /** Swaps in a LUN's new record (same uuid, path and pool), keeping pool usage right. */
  private replaceLun(before: LunRecord, after: LunRecord): void {
    this.adjustPool(before.pool, -this.usedBy(before));
    this.luns.set(after.uuid, after);
    this.adjustPool(after.pool, this.usedBy(after));
  }

  setLunState(req: { requestId: string; lun: string; state: LunState | undefined }): LunView {
    if (req.state === undefined) throw new InvalidArgumentError('state', 'state is required: online or offline');
    return this.mutate(req.requestId, 'SetLunState', { lun: req.lun, state: req.state }, () => {
      const lun = this.lunOrThrow(req.lun);
      if (lun.state === req.state) return this.lunView(lun);
      const changed = { ...lun, state: req.state! };
      this.store.updateLun(changed);
      this.replaceLun(lun, changed);
      return this.lunView(changed);
    });
  }

  deleteLun(req: { requestId: string; lun: string; force: boolean }): { deleted: boolean; unmappedCount: number } {
    classifyLunRef('lun', req.lun);
    return this.mutate(req.requestId, 'DeleteLun', { lun: req.lun, force: req.force }, () => {
      const lun = this.findLun(req.lun);
      if (!lun) return { deleted: false, unmappedCount: 0 };
      const maps = this.mapsOfLun.get(lun.uuid);
      if (maps && maps.size > 0 && !req.force) {
        throw new FailedPreconditionError(
          `LUN ${lun.path} is mapped to ${[...maps.keys()].join(', ')}: unmap it first, or delete with force`,
          'LUN_MAPPED',
        );
      }
      const unmappedCount = maps?.size ?? 0;
      this.store.deleteLun(lun.uuid);
      this.unindexLun(lun);
      // Only once the delete has committed: a crash in between leaves a file with no LUN,
      // which start-up removes; never a LUN whose data is gone.
      this.afterCommit.push(() => this.data.remove(lun.uuid));
      return { deleted: true, unmappedCount };
    });
  }

  // ---------------------------------------------------------------- igroups

  private parseInitiators(field: string, list: string[], protocol: IgroupProtocol): string[] {
    if (list.length > MAX_INITIATORS_PER_CALL) {
      throw new InvalidArgumentError(field, `${list.length} initiators in one call; at most ${MAX_INITIATORS_PER_CALL}`);
    }
    const out: string[] = [];
    for (const raw of list) {
      const i = parseInitiator(field, raw);
      if (!initiatorFits(protocol, i.kind)) {
        throw new InvalidArgumentError(
          field,
          `initiator ${i.name} is ${i.kind === 'fcp' ? 'an FC WWPN' : 'an iSCSI name'} and cannot join an ${protocol} igroup`,
        );
      }
      if (!out.includes(i.name)) out.push(i.name);
    }
    return out;
  }

  /** One initiator may sit in several igroups, but only of one os_type (as in ONTAP). */
  private checkInitiatorOsType(initiators: string[], osType: OsType, igroup: string): void {
    for (const i of initiators) {
      for (const other of this.igroupsOfInitiator.get(i) ?? []) {
        const o = this.igroups.get(other)!;
        if (other !== igroup && o.osType !== osType) {
          throw new FailedPreconditionError(
            `initiator ${i} is already in igroup ${other} of os_type ${o.osType}; it cannot also join an igroup of os_type ${osType}`,
            'INITIATOR_OS_TYPE_CONFLICT',
          );
        }
      }
    }
  }

  createIgroup(req: CreateIgroupInput): IgroupView {
    checkIgroupName('name', req.name);
    if (req.protocol === undefined) throw new InvalidArgumentError('protocol', 'protocol is required: iscsi, fcp or mixed');
    if (req.osType === undefined) throw new InvalidArgumentError('os_type', 'os_type is required: windows, hyper_v, linux or vmware');
    const initiators = this.parseInitiators('initiators', req.initiators, req.protocol);
    const params = { name: req.name, protocol: req.protocol, osType: req.osType, initiators };
    return this.mutate(req.requestId, 'CreateIgroup', params, () => {
      const existing = this.igroups.get(req.name);
      if (existing) {
        const same =
          existing.protocol === req.protocol &&
          existing.osType === req.osType &&
          existing.initiators.length === initiators.length &&
          initiators.every((i) => existing.initiators.includes(i));
        if (!same) {
          throw new AlreadyExistsError(
            'igroup',
            req.name,
            `igroup ${req.name} already exists (${existing.protocol}, ${existing.osType}, initiators ${existing.initiators.join(', ') || 'none'}): add initiators to it, or choose another name`,
          );
        }
        return this.igroupView(existing);
      }
      this.checkInitiatorOsType(initiators, req.osType!, req.name);
      const ig: IgroupRecord = { name: req.name, protocol: req.protocol!, osType: req.osType!, initiators, createdMs: Date.now() };
      this.store.insertIgroup(ig);
      this.indexIgroup(ig);
      return this.igroupView(ig);
    });
  }

  getIgroup(name: string): IgroupView {
    return this.igroupView(this.igroupOrThrow(name, 'name'));
  }

  listIgroups(opts: { pageSize: number; pageToken: string; initiator: string }): Page<IgroupView> {
    const page = checkPage(opts.pageSize, opts.pageToken);
    const only = opts.initiator === '' ? undefined : this.igroupsOfInitiator.get(parseInitiator('initiator', opts.initiator).name) ?? new Set<string>();
    const names = [...(only ?? this.igroups.keys())].sort();
    let i = page.after === undefined ? 0 : upperBound(names, page.after);
    const items: IgroupView[] = [];
    for (; i < names.length && items.length < page.size; i++) items.push(this.igroupView(this.igroups.get(names[i]!)!));
    return { items, nextPageToken: i < names.length ? pageToken(items[items.length - 1]!.name) : '' };
  }

  addInitiators(req: { requestId: string; igroup: string; initiators: string[] }): IgroupView {
    checkIgroupName('igroup', req.igroup);
    if (req.initiators.length === 0) throw new InvalidArgumentError('initiators', 'initiators is empty: give at least one initiator to add');
    // Only the request's own canonical names before the replay lookup: the igroup (and so its
    // protocol) is looked up inside, so a retry is answered even once the igroup is gone.
    const add = this.parseInitiators('initiators', req.initiators, 'mixed');
    return this.mutate(req.requestId, 'AddInitiators', { igroup: req.igroup, initiators: add }, () => {
      const ig = this.igroupOrThrow(req.igroup);
      this.parseInitiators('initiators', req.initiators, ig.protocol);
      const fresh = add.filter((i) => !ig.initiators.includes(i));
      if (fresh.length === 0) return this.igroupView(ig);
      this.checkInitiatorOsType(fresh, ig.osType, ig.name);
      const initiators = [...ig.initiators, ...fresh];
      this.store.setInitiators(ig.name, initiators);
      this.igroups.set(ig.name, { ...ig, initiators });
      for (const i of fresh) this.linkInitiator(i, ig.name);
      return this.igroupView(this.igroups.get(ig.name)!);
    });
  }

  removeInitiators(req: { requestId: string; igroup: string; initiators: string[]; force: boolean }): IgroupView {
    checkIgroupName('igroup', req.igroup);
    if (req.initiators.length === 0) throw new InvalidArgumentError('initiators', 'initiators is empty: give at least one initiator to remove');
    // As in addInitiators: the igroup is looked up after the replay lookup.
    const remove = this.parseInitiators('initiators', req.initiators, 'mixed');
    return this.mutate(req.requestId, 'RemoveInitiators', { igroup: req.igroup, initiators: remove, force: req.force }, () => {
      const ig = this.igroupOrThrow(req.igroup);
      this.parseInitiators('initiators', req.initiators, ig.protocol);
      const present = remove.filter((i) => ig.initiators.includes(i));
      if (present.length === 0) return this.igroupView(ig);
      const maps = this.mapsOfIgroup.get(ig.name)?.size ?? 0;
      if (maps > 0 && !req.force) {
        throw new FailedPreconditionError(
          `igroup ${ig.name} has ${maps} LUN map(s); removing ${present.join(', ')} would cut that host off its LUNs: unmap them first, or remove with force`,
          'IGROUP_MAPPED',
        );
      }
      const initiators = ig.initiators.filter((i) => !present.includes(i));
      this.store.setInitiators(ig.name, initiators);
      this.igroups.set(ig.name, { ...ig, initiators });
      for (const i of present) this.unlinkInitiator(i, ig.name);
      return this.igroupView(this.igroups.get(ig.name)!);
    });
  }

  deleteIgroup(req: { requestId: string; name: string }): { deleted: boolean } {
    checkIgroupName('name', req.name);
    return this.mutate(req.requestId, 'DeleteIgroup', { name: req.name }, () => {
      const ig = this.igroups.get(req.name);
      if (!ig) return { deleted: false };
      const maps = this.mapsOfIgroup.get(ig.name);
      if (maps && maps.size > 0) {
        throw new FailedPreconditionError(
          `igroup ${ig.name} has ${maps.size} LUN map(s): unmap its LUNs first`,
          'IGROUP_MAPPED',
        );
      }
      this.store.deleteIgroup(ig.name);
      this.igroups.delete(ig.name);
      for (const i of ig.initiators) this.unlinkInitiator(i, ig.name);
      return { deleted: true };
    });
  }

  // ---------------------------------------------------------------- LUN maps

  /** The igroups of a MapLun or UnmapLun that names several: each well formed, none twice. */
  private checkIgroupList(names: readonly string[]): string[] {
    if (names.length === 0) throw new InvalidArgumentError('igroups', 'name at least one igroup');
    if (names.length > MAX_IGROUPS_PER_CALL) throw new InvalidArgumentError('igroups', `at most ${MAX_IGROUPS_PER_CALL} igroups a call, not ${names.length}`);
    names.forEach((n, i) => checkIgroupName(`igroups[${i}]`, n));
    const twice = names.find((n, i) => names.indexOf(n) !== i);
    if (twice !== undefined) throw new InvalidArgumentError('igroups', `igroup ${twice} is named twice`);
    return [...names];
  }

  private checkLunId(lunId: number | undefined): void {
    if (lunId !== undefined && (!Number.isInteger(lunId) || lunId < 0 || lunId > MAX_LUN_ID)) {
      throw new InvalidArgumentError('lun_id', `lun_id ${lunId} is out of range: 0 to ${MAX_LUN_ID}, or leave it out for the lowest free id`);
    }
  }

  mapLun(req: { requestId: string; lun: string; igroup: string; lunId: number | undefined }): LunMapView {
    classifyLunRef('lun', req.lun);
    checkIgroupName('igroup', req.igroup);
    this.checkLunId(req.lunId);
    const maps = this.mutate(req.requestId, 'MapLun', { lun: req.lun, igroup: req.igroup, lunId: req.lunId ?? null }, () => this.mapTo(req.lun, [req.igroup], req.lunId)[0]!);
    return maps;
  }

  /**
   * Maps a LUN to every one of the igroups at one LUN id (a shared cluster disk), all or
   * none: an igroup where the LUN sits at another id, or where another LUN holds the id,
   * refuses the whole call and nothing is mapped. Maps already there at that id stay.
   */
  mapLunToIgroups(req: { requestId: string; lun: string; igroups: readonly string[]; lunId: number | undefined }): LunMapView[] {
    classifyLunRef('lun', req.lun);
    const names = this.checkIgroupList(req.igroups);
    this.checkLunId(req.lunId);
    return this.mutate(req.requestId, 'MapLun', { lun: req.lun, igroups: names, lunId: req.lunId ?? null }, () => this.mapTo(req.lun, names, req.lunId));
  }

  private mapTo(lunRef: string, names: readonly string[], wantedId: number | undefined): LunMapView[] {
    const lun = this.lunOrThrow(lunRef);
    const groups = names.map((n, i) => this.igroupOrThrow(n, names.length === 1 ? 'igroup' : `igroups[${i}]`));
    const mapped = this.mapsOfLun.get(lun.uuid);
    let lunId = wantedId;
    for (const ig of groups) {
      const current = mapped?.get(ig.name);
      if (current === undefined || current === lunId) continue;
      if (lunId === undefined) {
        lunId = current;
        continue;
      }
      throw new AlreadyExistsError(
        'LUN map',
        `${lun.path}@${ig.name}`,
        `LUN ${lun.path} is already mapped to igroup ${ig.name} at LUN id ${current}, not ${lunId}: unmap it first to move it`,
      );
    }
    const fresh = groups.filter((ig) => mapped?.get(ig.name) === undefined);
    if (lunId !== undefined) {
      for (const ig of fresh) {
        const holder = this.mapsOfIgroup.get(ig.name)?.get(lunId);
        if (holder !== undefined) {
          throw new AlreadyExistsError(
            'LUN id',
            `${ig.name}/${lunId}`,
            `LUN id ${lunId} of igroup ${ig.name} is taken by ${this.luns.get(holder)!.path}: choose another id or leave it out`,
          );
        }
      }
    } else {
      lunId = 0;
      while (lunId <= MAX_LUN_ID && fresh.some((ig) => this.mapsOfIgroup.get(ig.name)?.has(lunId!))) lunId++;
      if (lunId > MAX_LUN_ID) {
        const where = fresh.length === 1 ? `igroup ${fresh[0]!.name} uses` : `igroups ${fresh.map((g) => g.name).join(', ')} use between them`;
        throw new ResourceExhaustedError(`${where} all ${MAX_LUN_ID + 1} LUN ids: unmap a LUN first`, 'LUN_IDS_EXHAUSTED');
      }
    }
    for (const ig of fresh) {
      this.store.insertMap({ lunUuid: lun.uuid, igroup: ig.name, lunId });
      this.indexMap(lun.uuid, ig.name, lunId);
    }
    return groups.map((ig) => this.mapView(lun.uuid, ig.name, lunId!));
  }

  unmapLun(req: { requestId: string; lun: string; igroup: string }): { unmapped: boolean } {
    classifyLunRef('lun', req.lun);
    checkIgroupName('igroup', req.igroup);
    return this.mutate(req.requestId, 'UnmapLun', { lun: req.lun, igroup: req.igroup }, () => ({ unmapped: this.unmapFrom(req.lun, [req.igroup]) > 0 }));
  }

  /** Unmaps the LUN from every one of the igroups; what is not mapped (or is gone) is skipped. */
  unmapLunFromIgroups(req: { requestId: string; lun: string; igroups: readonly string[] }): { unmappedCount: number } {
    classifyLunRef('lun', req.lun);
    const names = this.checkIgroupList(req.igroups);
    return this.mutate(req.requestId, 'UnmapLun', { lun: req.lun, igroups: names }, () => ({ unmappedCount: this.unmapFrom(req.lun, names) }));
  }

  private unmapFrom(lunRef: string, names: readonly string[]): number {
    const lun = this.findLun(lunRef);
    let n = 0;
    for (const ig of names) {
      if (!lun || this.mapsOfLun.get(lun.uuid)?.get(ig) === undefined) continue;
      this.store.deleteMap(lun.uuid, ig);
      this.unindexMap(lun.uuid, ig);
      n++;
    }
    return n;
  }

  listLunMaps(opts: { lun: string; igroup: string; pageSize: number; pageToken: string }): Page<LunMapView> {
    const page = checkPage(opts.pageSize, opts.pageToken);
    let all: LunMapView[];
    if (opts.lun !== '') {
      const lun = this.lunOrThrow(opts.lun);
      if (opts.igroup !== '') this.igroupOrThrow(opts.igroup);
      all = [...(this.mapsOfLun.get(lun.uuid) ?? [])]
        .filter(([ig]) => opts.igroup === '' || ig === opts.igroup)
        .map(([ig, id]) => this.mapView(lun.uuid, ig, id));
    } else if (opts.igroup !== '') {
      const ig = this.igroupOrThrow(opts.igroup);
      all = [...(this.mapsOfIgroup.get(ig.name) ?? [])].map(([id, uuid]) => this.mapView(uuid, ig.name, id));
    } else {
      all = [];
      for (const [uuid, byIg] of this.mapsOfLun) for (const [ig, id] of byIg) all.push(this.mapView(uuid, ig, id));
    }
    const keyOf = (m: LunMapView): string => `${m.igroup}\u0000${String(m.lunId).padStart(4, '0')}`;
    all.sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
    let i = page.after === undefined ? 0 : all.findIndex((m) => keyOf(m) > page.after!);
    if (i < 0) i = all.length;
    const items = all.slice(i, i + page.size);
    const more = i + page.size < all.length;
    return { items, nextPageToken: more ? pageToken(keyOf(items[items.length - 1]!)) : '' };
  }

  // ---------------------------------------------------------------- block I/O

  /**
   * A target as the request names it, syntax checked, the initiator in canonical form and
   * nothing looked up: what a replay fingerprint holds, so that a retry is answered from its
   * replay record before masking is checked, even once the LUN is unmapped or gone.
   */
  private targetOf(t: IoTarget): IoTarget {
    classifyLunRef('lun', t.lun);
    return { lun: t.lun, initiator: parseInitiator('initiator', t.initiator).name };
  }

  /** The LUN an initiator may reach: it must sit in an igroup the LUN is mapped to. */
  private reachable(t: IoTarget): { lun: LunRecord; initiator: string } {
    const lun = this.lunOrThrow(t.lun);
    const initiator = parseInitiator('initiator', t.initiator).name;
    const mine = this.igroupsOfInitiator.get(initiator);
    const maps = this.mapsOfLun.get(lun.uuid);
    let masked = true;
    if (mine && maps) for (const ig of mine) if (maps.has(ig)) masked = false;
    if (masked) {
      throw new PermissionDeniedError(
        `initiator ${initiator} is not in any igroup that LUN ${lun.path} is mapped to (LUN masking): map the LUN to the host's igroup first`,
        'LUN_MASKED',
      );
    }
    return { lun, initiator };
  }

  private checkOnline(lun: LunRecord): void {
    if (lun.state !== 'online') {
      throw new FailedPreconditionError(`LUN ${lun.path} is offline: bring it online before block I/O`, 'LUN_OFFLINE');
    }
  }

  /** SPC-3's access rules for each reservation type. */
  private checkReservation(lun: LunRecord, initiator: string, access: 'read' | 'write'): void {
    const pr = this.reservations.get(lun.uuid);
    const holder = pr?.holder;
    if (!pr || !holder) return;
    const registered = pr.registrations[initiator] !== undefined;
    const isHolder = holder.initiator === initiator && pr.registrations[initiator] === holder.key;
    const allowed = {
      write_exclusive: access === 'read' || isHolder,
      exclusive_access: isHolder,
      write_exclusive_registrants_only: access === 'read' || registered,
      exclusive_access_registrants_only: registered,
    }[holder.type];
    if (!allowed) {
      throw new FailedPreconditionError(
        `reservation conflict: LUN ${lun.path} is reserved (${holder.type}) by ${holder.initiator} and initiator ${initiator} may not ${access} it`,
        'RESERVATION_CONFLICT',
      );
    }
  }

  readBlocks(req: IoTarget & { offsetBytes: bigint; lengthBytes: number }): Buffer {
    const { lun, initiator } = this.reachable(req);
    const offset = checkIo('length_bytes', req.offsetBytes, req.lengthBytes, lun.sizeBytes);
    this.checkOnline(lun);
    this.checkReservation(lun, initiator, 'read');
    return this.data.read(lun.uuid, offset, req.lengthBytes);
  }

  writeBlocks(req: IoTarget & { requestId: string; offsetBytes: bigint; data: Uint8Array }): { writtenBytes: number } {
    // The initiator is left out of what makes a retry the same write: a cluster retries a
    // write through another node's path after a failover, with the same id.
    const { lun: lunRef } = this.targetOf(req);
    const params = { lun: lunRef, offset: req.offsetBytes, length: req.data.length, crc: req.requestId === '' ? 0 : crc32(req.data) };
    return this.mutate(req.requestId, 'WriteBlocks', params, () => {
      const { lun, initiator } = this.reachable(req);
      const offset = checkIo('data', req.offsetBytes, req.data.length, lun.sizeBytes);
      this.checkOnline(lun);
      this.checkReservation(lun, initiator, 'write');
      const fresh: number[] = [];
      if (lun.thin) {
        const have = this.extents.get(lun.uuid);
        const first = Math.floor(offset / EXTENT_BYTES);
        const last = Math.floor((offset + req.data.length - 1) / EXTENT_BYTES);
        for (let e = first; e <= last; e++) if (!have?.has(e)) fresh.push(e);
        if (fresh.length > 0) {
          const before = this.usedBy(lun);
          const after = this.usedWith(lun, fresh);
          if (after - before > this.available(lun.pool)) {
            throw new ResourceExhaustedError(
              `pool ${lun.pool} is full (${formatSize(this.available(lun.pool))} free): thin LUN ${lun.path} cannot allocate ${formatSize(after - before)} for this write; nothing was written`,
              'POOL_FULL',
            );
          }
        }
      }
      // Data before metadata: a crash in between leaves written-but-unacknowledged data in
      // extents not yet counted; the next write there counts them. Never the reverse.
      this.data.write(lun.uuid, offset, req.data, lun.sizeBytes);
      if (fresh.length > 0) {
        this.store.addExtents(lun.uuid, fresh);
        const before = this.usedBy(lun);
        let set = this.extents.get(lun.uuid);
        if (!set) this.extents.set(lun.uuid, (set = new Set()));
        for (const e of fresh) set.add(e);
        this.adjustPool(lun.pool, this.usedBy(lun) - before);
      }
      return { writtenBytes: req.data.length };
    });
  }

  private usedWith(lun: LunRecord, more: number[]): number {
    return thinUsed(new Set([...(this.extents.get(lun.uuid) ?? []), ...more]), lun.sizeBytes);
  }

  // ---------------------------------------------------------------- persistent reservations

  private prOf(uuid: string): ReservationState {
    const pr = this.reservations.get(uuid);
    return pr ? structuredClone(pr) : { generation: 0, registrations: {} };
  }

  private savePr(uuid: string, pr: ReservationState): void {
    this.store.putReservation(uuid, pr);
    this.reservations.set(uuid, pr);
  }

  private conflict(lun: LunRecord, message: string): FailedPreconditionError {
    return new FailedPreconditionError(`reservation conflict on LUN ${lun.path}: ${message}`, 'RESERVATION_CONFLICT');
  }

  /** The caller's registration must hold the key it gives. */
  private requireRegistered(lun: LunRecord, pr: ReservationState, initiator: string, key: string): void {
    const have = pr.registrations[initiator];
    if (have === undefined) throw this.conflict(lun, `initiator ${initiator} is not registered: register a key first`);
    if (have !== key) throw this.conflict(lun, `initiator ${initiator} is registered with another key than ${key}`);
  }

  registerReservationKey(req: IoTarget & { requestId: string; key: string }): { generation: number } {
    const key = parseReservationKey('key', req.key, true);
    return this.mutate(req.requestId, 'RegisterReservationKey', { ...this.targetOf(req), key }, () => {
      const { lun, initiator } = this.reachable(req);
      const pr = this.prOf(lun.uuid);
      const unregister = /^0+$/.test(key);
      if (unregister) {
        if (pr.registrations[initiator] === undefined) return { generation: pr.generation };
        delete pr.registrations[initiator];
        if (pr.holder?.initiator === initiator) delete pr.holder;
      } else {
        if (pr.registrations[initiator] === key) return { generation: pr.generation };
        pr.registrations[initiator] = key;
        if (pr.holder?.initiator === initiator) pr.holder.key = key;
      }
      pr.generation++;
      this.savePr(lun.uuid, pr);
      return { generation: pr.generation };
    });
  }

  reserve(req: IoTarget & { requestId: string; key: string; type: ReservationType | undefined }): { generation: number } {
    const key = parseReservationKey('key', req.key, false);
    if (req.type === undefined) {
      throw new InvalidArgumentError('type', 'type is required: write_exclusive, exclusive_access, or one of their registrants_only forms');
    }
    return this.mutate(req.requestId, 'Reserve', { ...this.targetOf(req), key, type: req.type }, () => {
      const { lun, initiator } = this.reachable(req);
      const pr = this.prOf(lun.uuid);
      this.requireRegistered(lun, pr, initiator, key);
      const h = pr.holder;
      if (h) {
        const sameHolder = h.initiator === initiator;
        const allRegistrants = h.type.endsWith('registrants_only');
        if (h.type === req.type && (sameHolder || allRegistrants)) return { generation: pr.generation };
        throw this.conflict(lun, `it is already reserved (${h.type}) by ${h.initiator}`);
      }
      pr.holder = { initiator, key, type: req.type! };
      this.savePr(lun.uuid, pr);
      return { generation: pr.generation };
    });
  }

  releaseReservation(req: IoTarget & { requestId: string; key: string }): { released: boolean } {
    const key = parseReservationKey('key', req.key, false);
    return this.mutate(req.requestId, 'ReleaseReservation', { ...this.targetOf(req), key }, () => {
      const { lun, initiator } = this.reachable(req);
      const pr = this.prOf(lun.uuid);
      this.requireRegistered(lun, pr, initiator, key);
      const h = pr.holder;
      if (!h || (h.initiator !== initiator && !h.type.endsWith('registrants_only'))) return { released: false };
      delete pr.holder;
      this.savePr(lun.uuid, pr);
      return { released: true };
    });
  }

  preemptReservation(
    req: IoTarget & { requestId: string; key: string; preemptKey: string; type: ReservationType | undefined },
  ): { generation: number; removedRegistrations: number } {
    const key = parseReservationKey('key', req.key, false);
    const preemptKey = parseReservationKey('preempt_key', req.preemptKey, false);
    const params = { ...this.targetOf(req), key, preemptKey, type: req.type ?? null };
    return this.mutate(req.requestId, 'PreemptReservation', params, () => {
      const { lun, initiator } = this.reachable(req);
      const pr = this.prOf(lun.uuid);
      this.requireRegistered(lun, pr, initiator, key);
      let removed = 0;
      for (const [who, k] of Object.entries(pr.registrations)) {
        if (k === preemptKey && who !== initiator) {
          delete pr.registrations[who];
          removed++;
        }
      }
      const h = pr.holder;
      if (h && h.key === preemptKey && h.initiator !== initiator) {
        pr.holder = { initiator, key, type: req.type ?? h.type };
      }
      if (removed === 0 && pr.holder === h) return { generation: pr.generation, removedRegistrations: 0 };
      pr.generation++;
      this.savePr(lun.uuid, pr);
      return { generation: pr.generation, removedRegistrations: removed };
    });
  }

  readReservationKeys(ref: string): { generation: number; registrations: { initiator: string; key: string }[] } {
    const lun = this.lunOrThrow(ref);
    const pr = this.prOf(lun.uuid);
    return {
      generation: pr.generation,
      registrations: Object.entries(pr.registrations)
        .map(([initiator, key]) => ({ initiator, key }))
        .sort((a, b) => (a.initiator < b.initiator ? -1 : 1)),
    };
  }

  readReservation(ref: string): ReservationState {
    return this.prOf(this.lunOrThrow(ref).uuid);
  }
}

/** Pool space a thin LUN holds: its written extents, the last one cut at the LUN's end. */
function thinUsed(extents: Set<number> | undefined, sizeBytes: number): number {
  if (!extents || extents.size === 0) return 0;
  const last = Math.floor((sizeBytes - 1) / EXTENT_BYTES);
  return extents.size * EXTENT_BYTES - (extents.has(last) ? (last + 1) * EXTENT_BYTES - sizeBytes : 0);
}

function lowerBound(sorted: string[], key: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! < key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function upperBound(sorted: string[], key: string): number {
  let lo = 0;
  let hi = sorted.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (sorted[mid]! <= key) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
