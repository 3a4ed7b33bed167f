/**
 * An in-memory `StorageArray` (host-agent/array.ts) for unit tests: LUNs found by path,
 * uuid or serial (serials are deterministic: FAKE00000001, FAKE00000002, ...), igroups,
 * LUN maps with one LUN per id inside an igroup, SCSI-3 reservations reachable only through
 * a mapped igroup, and request-id replay (a repeated id returns the first answer; the same
 * id for another request is refused). It stands for the array *after* GrpcArray's own
 * retries, so a failure injected here is what the workflow sees.
 *
 * Faults: `failNext('mapLun', new UnavailableError('down'))` makes the next call of that
 * method throw (queue several to fail several calls); `down = true` makes every call throw
 * UnavailableError until set back. `calls` logs every call, failed ones marked.
 */
import {
  AlreadyExistsError,
  type DomainError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  UnavailableError,
} from '../../common/errors.js';
import type { ArrayLun, ArrayMap, PoolInfo, Reservation, StorageArray } from '../../host-agent/array.js';
import type { GuestOsName } from '../../host-agent/model.js';

export type ArrayMethod = Exclude<keyof StorageArray, 'endpoint' | 'close'>;

export interface FakeCall {
  method: ArrayMethod;
  args: unknown;
  /** The error the call ended with, if it failed. */
  error?: Error;
}

interface FakeLun {
  uuid: string;
  serial: string;
  naaId: string;
  path: string;
  sizeBytes: number;
  guestOs: GuestOsName;
  comment: string;
}

const LUN_PATH_RE = /^\/vol\/[A-Za-z_][A-Za-z0-9_]{0,202}\/[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$/;
const MAX_LUN_ID = 4095;
const MAX_COMMENT = 254;

export class FakeArray implements StorageArray {
  readonly endpoint = 'fake-array';
  /** Every call throws UnavailableError while set. */
  down = false;
  readonly calls: FakeCall[] = [];
  /** Pool name → bytes free. */
  readonly pools = new Map<string, number>([['pool0', 1024 ** 4]]);
  /** By uuid. */
  readonly luns = new Map<string, FakeLun>();
  /** Igroup name → initiators (lower case). */
  readonly igroups = new Map<string, Set<string>>();
  /** LUN uuid → igroup → LUN id. */
  readonly maps = new Map<string, Map<string, number>>();
  /** LUN uuid → holder and registrations (initiator → key). */
  readonly reservations = new Map<string, { holder?: string; registrations: Map<string, string> }>();
  private readonly requests = new Map<string, { method: string; fingerprint: string; result: unknown }>();
  private readonly faults = new Map<ArrayMethod, DomainError[]>();
  private counter = 0;
  closed = false;

  /** Makes the next call of `method` throw `error` (each call queued fails one call). */
  failNext(method: ArrayMethod, error: DomainError): void {
    let q = this.faults.get(method);
    if (!q) this.faults.set(method, (q = []));
    q.push(error);
  }

  /** The calls of one method, in order. */
  callsOf(method: ArrayMethod): FakeCall[] {
    return this.calls.filter((c) => c.method === method);
  }

  /** Every map as the array holds it, sorted, for comparisons. */
  allMaps(): ArrayMap[] {
    const out: ArrayMap[] = [];
    for (const [uuid, byIg] of this.maps) {
      const lun = this.luns.get(uuid)!;
      for (const [igroup, lunId] of byIg) out.push({ lunUuid: uuid, serial: lun.serial, lunPath: lun.path, igroup, lunId });
    }
    return out.sort((a, b) => (a.igroup < b.igroup ? -1 : a.igroup > b.igroup ? 1 : a.lunId - b.lunId));
  }

  /** Creates a LUN directly, as an administrator would outside passthru. */
  adminCreateLun(path: string, sizeBytes = 64 * 1024 * 1024, comment = ''): ArrayLun {
    return this.view(this.makeLun(path, sizeBytes, 'windows', comment));
  }

  /** Maps directly, as an administrator would outside passthru (makes the igroup if needed). */
  adminMap(lun: string, igroup: string, lunId: number): void {
    const l = this.lunOrThrow(lun);
    if (!this.igroups.has(igroup)) this.igroups.set(igroup, new Set());
    this.insertMap(l, igroup, lunId);
  }

  // ---------------------------------------------------------------- plumbing

  /** Logs the call, applies faults, and runs `fn` on a later tick, as a remote call would. */
  private async call<R>(method: ArrayMethod, args: unknown, fn: () => R): Promise<R> {
    const entry: FakeCall = { method, args };
    this.calls.push(entry);
    await Promise.resolve();
    try {
      if (this.closed) throw new Error('fake array: called after close()');
      if (this.down) throw new UnavailableError(`storage array at ${this.endpoint} cannot be reached (${method}); retry later`, 'ARRAY_UNAVAILABLE');
      const fault = this.faults.get(method)?.shift();
      if (fault) throw fault;
      return fn();
    } catch (err) {
      entry.error = err as Error;
      throw err;
    }
  }

  /** A mutation under a request id: a replay returns the first answer; failures are not recorded. */
  private replay<R>(method: string, requestId: string, params: unknown, fn: () => R): R {
    if (requestId === '') return fn();
    const fingerprint = JSON.stringify(params);
    const prior = this.requests.get(requestId);
    if (prior) {
      if (prior.method !== method || prior.fingerprint !== fingerprint) {
        throw new InvalidArgumentError('request_id', `request_id ${requestId} was already used for a different ${prior.method} request`, 'REQUEST_ID_REUSED');
      }
      return structuredClone(prior.result) as R;
    }
    const result = fn();
    this.requests.set(requestId, { method, fingerprint, result: structuredClone(result) });
    return result;
  }

  private find(ref: string): FakeLun | undefined {
    const byUuid = this.luns.get(ref.toLowerCase());
    if (byUuid) return byUuid;
    for (const l of this.luns.values()) if (l.path === ref || l.serial === ref) return l;
    return undefined;
  }

  private lunOrThrow(ref: string): FakeLun {
    const l = this.find(ref);
    if (!l) throw new NotFoundError('LUN', ref);
    return l;
  }

  private igroupOrThrow(name: string): Set<string> {
    const ig = this.igroups.get(name);
    if (!ig) throw new NotFoundError('igroup', name);
    return ig;
  }

  private view(l: FakeLun): ArrayLun {
    return { uuid: l.uuid, serial: l.serial, naaId: l.naaId, path: l.path, sizeBytes: l.sizeBytes, comment: l.comment, mapped: (this.maps.get(l.uuid)?.size ?? 0) > 0 };
  }

  private makeLun(path: string, sizeBytes: number, guestOs: GuestOsName, comment: string): FakeLun {
    if (!LUN_PATH_RE.test(path)) throw new InvalidArgumentError('path', `path ${JSON.stringify(path)} is not a valid LUN path`);
    if (comment.length > MAX_COMMENT) throw new InvalidArgumentError('comment', `comment is ${comment.length} characters long; at most ${MAX_COMMENT}`);
    const existing = this.find(path);
    if (existing) {
      if (existing.sizeBytes === sizeBytes) return existing;
      throw new AlreadyExistsError('LUN', path, `LUN ${path} already exists with size ${existing.sizeBytes}`);
    }
    const [pool, free] = [...this.pools].reduce((a, p) => (p[1] > a[1] ? p : a), ['', -1] as [string, number]);
    if (free < sizeBytes) throw new ResourceExhaustedError(`no pool has room for ${sizeBytes} bytes`, 'POOL_FULL');
    this.pools.set(pool, free - sizeBytes);
    const n = ++this.counter;
    const serial = `FAKE${String(n).padStart(8, '0')}`;
    const lun: FakeLun = {
      uuid: `00000000-0000-4000-8000-${n.toString(16).padStart(12, '0')}`,
      serial,
      naaId: `600a0980${Buffer.from(serial, 'ascii').toString('hex')}`,
      path,
      sizeBytes,
      guestOs,
      comment,
    };
    this.luns.set(lun.uuid, lun);
    return lun;
  }

  /** Throws what mapping the LUN there would refuse; true when it is mapped there already. */
  private checkMap(lun: FakeLun, igroup: string, lunId: number): boolean {
    if (!Number.isInteger(lunId) || lunId < 0 || lunId > MAX_LUN_ID) throw new InvalidArgumentError('lun_id', `lun_id ${lunId} is out of range`);
    const current = this.maps.get(lun.uuid)?.get(igroup);
    if (current === lunId) return true;
    if (current !== undefined) throw new AlreadyExistsError('LUN map', `${lun.path}@${igroup}`, `LUN ${lun.path} is already mapped to ${igroup} at ${current}`);
    for (const [uuid, byIg] of this.maps) {
      if (byIg.get(igroup) === lunId) {
        throw new AlreadyExistsError('LUN id', `${igroup}/${lunId}`, `LUN id ${lunId} of igroup ${igroup} is taken by ${this.luns.get(uuid)!.path}`);
      }
    }
    return false;
  }

  private insertMap(lun: FakeLun, igroup: string, lunId: number): void {
    if (this.checkMap(lun, igroup, lunId)) return;
    let m = this.maps.get(lun.uuid);
    if (!m) this.maps.set(lun.uuid, (m = new Map()));
    m.set(igroup, lunId);
  }

  /** Reservation commands only reach a LUN through an igroup it is mapped to that holds the initiator. */
  private reachable(ref: string, initiator: string): FakeLun {
    const lun = this.lunOrThrow(ref);
    const wanted = initiator.toLowerCase();
    for (const ig of this.maps.get(lun.uuid)?.keys() ?? []) if (this.igroups.get(ig)?.has(wanted)) return lun;
    throw new PermissionDeniedError(`initiator ${initiator} is not in an igroup LUN ${lun.path} is mapped to`, 'LUN_NOT_MAPPED_TO_INITIATOR');
  }

  // ---------------------------------------------------------------- StorageArray

  answers(): Promise<boolean> {
    return Promise.resolve(!this.down);
  }

  blockPortal(): Promise<string> {
    return this.call('blockPortal', {}, () => '127.0.0.1:1');
  }

  listPools(): Promise<PoolInfo[]> {
    return this.call('listPools', {}, () => [...this.pools].map(([name, availableBytes]) => ({ name, availableBytes })));
  }

  createLun(req: { requestId: string; path: string; sizeBytes: number; guestOs: GuestOsName; comment: string }): Promise<ArrayLun> {
    return this.call('createLun', req, () =>
      this.replay('createLun', req.requestId, { ...req, requestId: undefined }, () => this.view(this.makeLun(req.path, req.sizeBytes, req.guestOs, req.comment))),
    );
  }

  findLun(ref: string): Promise<ArrayLun | undefined> {
    return this.call('findLun', { ref }, () => {
      const l = this.find(ref);
      return l ? this.view(l) : undefined;
    });
  }

  listLuns(pathPrefix: string): Promise<ArrayLun[]> {
    return this.call('listLuns', { pathPrefix }, () =>
      [...this.luns.values()].filter((l) => l.path.startsWith(pathPrefix)).sort((a, b) => (a.path < b.path ? -1 : 1)).map((l) => this.view(l)),
    );
  }

  deleteLun(req: { requestId: string; lun: string }): Promise<void> {
    return this.call('deleteLun', req, () =>
      this.replay('deleteLun', req.requestId, { lun: req.lun }, () => {
        const lun = this.find(req.lun);
        if (!lun) return;
        const maps = this.maps.get(lun.uuid);
        if (maps && maps.size > 0) {
          throw new FailedPreconditionError(`LUN ${lun.path} is mapped to ${[...maps.keys()].join(', ')}: unmap it first`, 'LUN_MAPPED');
        }
        this.luns.delete(lun.uuid);
        this.reservations.delete(lun.uuid);
        const pool = [...this.pools.keys()][0]!;
        this.pools.set(pool, this.pools.get(pool)! + lun.sizeBytes);
      }),
    );
  }

  ensureIgroup(req: { requestId: string; name: string; initiator: string }): Promise<void> {
    return this.call('ensureIgroup', req, () =>
      this.replay('ensureIgroup', req.requestId, { name: req.name, initiator: req.initiator }, () => {
        let ig = this.igroups.get(req.name);
        if (!ig) this.igroups.set(req.name, (ig = new Set()));
        ig.add(req.initiator.toLowerCase());
      }),
    );
  }

  /** All igroups or none, as the array maps them. */
  mapLun(req: { requestId: string; lun: string; igroups: readonly string[]; lunId: number }): Promise<void> {
    return this.call('mapLun', req, () =>
      this.replay('mapLun', req.requestId, { lun: req.lun, igroups: req.igroups, lunId: req.lunId }, () => {
        const lun = this.lunOrThrow(req.lun);
        for (const ig of req.igroups) this.igroupOrThrow(ig);
        for (const ig of req.igroups) this.checkMap(lun, ig, req.lunId);
        for (const ig of req.igroups) this.insertMap(lun, ig, req.lunId);
      }),
    );
  }

  unmapLun(req: { requestId: string; lun: string; igroups: readonly string[] }): Promise<void> {
    return this.call('unmapLun', req, () =>
      this.replay('unmapLun', req.requestId, { lun: req.lun, igroups: req.igroups }, () => {
        const lun = this.find(req.lun);
        if (!lun) return;
        const m = this.maps.get(lun.uuid);
        for (const ig of req.igroups) m?.delete(ig);
        if (m?.size === 0) this.maps.delete(lun.uuid);
      }),
    );
  }

  listMaps(filter: { igroup?: string; lun?: string }): Promise<ArrayMap[]> {
    return this.call('listMaps', filter, () => {
      const lun = filter.lun ? this.lunOrThrow(filter.lun) : undefined;
      if (filter.igroup) this.igroupOrThrow(filter.igroup);
      return this.allMaps().filter((m) => (!lun || m.lunUuid === lun.uuid) && (!filter.igroup || m.igroup === filter.igroup));
    });
  }

  reserve(req: { requestId: string; lun: string; initiator: string; key: string }): Promise<void> {
    return this.call('reserve', req, () =>
      this.replay('reserve', req.requestId, { lun: req.lun, initiator: req.initiator, key: req.key }, () => {
        const lun = this.reachable(req.lun, req.initiator);
        let pr = this.reservations.get(lun.uuid);
        if (!pr) this.reservations.set(lun.uuid, (pr = { registrations: new Map() }));
        pr.registrations.set(req.initiator.toLowerCase(), req.key);
        // Write exclusive, registrants only: a registrant reserving again is a no-op.
        if (pr.holder === undefined) pr.holder = req.initiator.toLowerCase();
      }),
    );
  }

  release(req: { requestId: string; lun: string; initiator: string; key: string }): Promise<void> {
    return this.call('release', req, () =>
      this.replay('release', req.requestId, { lun: req.lun, initiator: req.initiator, key: req.key }, () => {
        // As GrpcArray: a LUN that is gone, or no longer reachable from the initiator, is released already.
        const lun = this.find(req.lun);
        if (!lun) return;
        try {
          this.reachable(req.lun, req.initiator);
        } catch {
          return;
        }
        const pr = this.reservations.get(lun.uuid);
        if (!pr) return;
        const who = req.initiator.toLowerCase();
        pr.registrations.delete(who);
        if (pr.holder === who) pr.holder = undefined;
        if (pr.registrations.size === 0 && pr.holder === undefined) this.reservations.delete(lun.uuid);
      }),
    );
  }

  takeOver(req: { requestId: string; lun: string; initiator: string; key: string; fromKey: string }): Promise<void> {
    return this.call('takeOver', req, () =>
      this.replay('takeOver', req.requestId, { lun: req.lun, initiator: req.initiator, key: req.key, fromKey: req.fromKey }, () => {
        const lun = this.reachable(req.lun, req.initiator);
        let pr = this.reservations.get(lun.uuid);
        if (!pr) this.reservations.set(lun.uuid, (pr = { registrations: new Map() }));
        const who = req.initiator.toLowerCase();
        pr.registrations.set(who, req.key);
        for (const [i, k] of [...pr.registrations]) if (k === req.fromKey && i !== who) pr.registrations.delete(i);
        pr.holder = who;
      }),
    );
  }

  readReservation(lun: string): Promise<Reservation> {
    return this.call('readReservation', { lun }, () => {
      const l = this.lunOrThrow(lun);
      const pr = this.reservations.get(l.uuid);
      return {
        holderInitiator: pr?.holder,
        registrations: [...(pr?.registrations ?? [])].map(([initiator, key]) => ({ initiator, key })),
      };
    });
  }

  close(): void {
    this.closed = true;
  }
}
