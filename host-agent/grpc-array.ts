/**
 * The array's control plane over gRPC: storage-sim's StorageArrayService. Calls go through
 * `callArray` (retries, domain errors). Block I/O goes through the block portal instead
 * (portal-client.ts), which this finds with `blockPortal`. Under mTLS each node's
 * reservation commands go with that node's certificate (the array lets a node act only as
 * the initiator its certificate binds); every other call with any one node's.
 */
import { status as Code } from '@grpc/grpc-js';
import { remoteStatus } from '../common/status.js';
import { unaryClient, type UnaryClient } from '../common/unary-client.js';
import { DomainError, FailedPreconditionError, UnavailableError } from '../common/errors.js';
import type { ClientTls } from '../common/tls.js';
import type { Logger } from '../common/logging.js';
import {
  IgroupProtocol,
  type Lun,
  OsType,
  Provisioning,
  ReservationType,
  StorageArrayServiceService,
} from '../proto/gen/passthru/storage/v1/storage.js';
import { callArray } from './array-calls.js';
import { DEFAULT_RETRY, type ArrayLun, type ArrayMap, type GuestOsName, type PoolInfo, type Reservation, type RetryPolicy, type StorageArray } from './array.js';

function lunRef(l: Lun): ArrayLun {
  return { uuid: l.uuid, serial: l.serial, naaId: l.naaId, path: l.path, sizeBytes: Number(l.sizeBytes), comment: l.comment, mapped: l.mapped };
}

/**
 * The portal as the host reaches it: an array listening on every address (0.0.0.0, ::)
 * reports that, and is reached at the host its API was reached at.
 */
export function portalAddress(reported: string, endpoint: string): string {
  const m = /^(.*):(\d+)$/.exec(reported);
  if (!m) throw new UnavailableError(`the storage array at ${endpoint} offers no block portal (it reported ${JSON.stringify(reported)}): block I/O cannot reach it`, 'ARRAY_NO_PORTAL');
  const host = m[1]!;
  if (host !== '0.0.0.0' && host !== '[::]' && host !== '::' && host !== '') return reported;
  const api = /^(?:dns:\/*|ipv4:|ipv6:)?(.*):\d+$/.exec(endpoint);
  return `${api ? api[1] : '127.0.0.1'}:${m[2]}`;
}

type Client = UnaryClient<typeof StorageArrayServiceService>;

export class GrpcArray implements StorageArray {
  /** Plaintext: the one client. mTLS: one per node, by initiator, made on first use. */
  private readonly clients = new Map<string, Client>();

  constructor(
    readonly endpoint: string,
    private readonly logger: Logger,
    private readonly retry: RetryPolicy = DEFAULT_RETRY,
    /** mTLS: each node's certificate by initiator (lower case); filled by the time of the first call. */
    private readonly nodeTls?: ReadonlyMap<string, ClientTls>,
  ) {}

  /** The client for calls that act as no node in particular. */
  private get client(): Client {
    return this.as(undefined);
  }

  /** The client that acts as `initiator`'s node (under mTLS its certificate is the node's). */
  private as(initiator: string | undefined): Client {
    if (!this.nodeTls) return this.clientWith('', undefined);
    const key = initiator?.toLowerCase() ?? this.nodeTls.keys().next().value;
    const tls = key === undefined ? undefined : this.nodeTls.get(key);
    if (!tls) throw new FailedPreconditionError(`no node certificate for initiator ${initiator ?? '(any)'}: the host agent cannot act as it on the array`, 'NO_NODE_CERTIFICATE');
    return this.clientWith(key!, tls);
  }

  private clientWith(key: string, tls: ClientTls | undefined): Client {
    let c = this.clients.get(key);
    if (!c) this.clients.set(key, (c = unaryClient(StorageArrayServiceService, this.endpoint, { timeoutMs: this.retry.callTimeoutMs, tls })));
    return c;
  }

  private call<R>(method: string, fn: () => Promise<R>): Promise<R> {
    return callArray(this.endpoint, this.retry, this.logger, method, fn);
  }

  async blockPortal(): Promise<string> {
    const res = await this.call('GetArray', () => this.client.getArray({}));
    return portalAddress(res.blockPortal, this.endpoint);
  }

  async answers(timeoutMs: number): Promise<boolean> {
    try {
      await this.client.getArray({}, { timeoutMs });
      return true;
    } catch (err) {
      // Any answer, even a refusal, is the array answering.
      const st = remoteStatus(err);
      return st !== undefined && st.code !== Code.UNAVAILABLE && st.code !== Code.DEADLINE_EXCEEDED;
    }
  }

  async listPools(): Promise<PoolInfo[]> {
    const res = await this.call('ListPools', () => this.client.listPools({}));
    return res.pools.map((p) => ({ name: p.name, availableBytes: Number(p.availableBytes) }));
  }

  async createLun(req: { requestId: string; path: string; sizeBytes: number; guestOs: GuestOsName; comment: string }): Promise<ArrayLun> {
    const res = await this.call('CreateLun', () =>
      this.client.createLun({
        requestId: req.requestId,
        path: req.path,
        sizeBytes: BigInt(req.sizeBytes),
        // The LUN is presented to a Hyper-V host for a Windows guest, to a Linux host otherwise.
        osType: req.guestOs === 'windows' ? OsType.OS_TYPE_HYPER_V : OsType.OS_TYPE_LINUX,
        provisioning: Provisioning.PROVISIONING_THICK,
        comment: req.comment,
        pool: '',
      }),
    );
    return lunRef(res.lun!);
  }

  async findLun(ref: string): Promise<ArrayLun | undefined> {
    try {
      const res = await this.call('GetLun', () => this.client.getLun({ lun: ref }));
      return lunRef(res.lun!);
    } catch (err) {
      if (err instanceof DomainError && err.kind === 'not_found') return undefined;
      throw err;
    }
  }

  async listLuns(pathPrefix: string): Promise<ArrayLun[]> {
    const out: ArrayLun[] = [];
    let pageToken = '';
    do {
      const res = await this.call('ListLuns', () => this.client.listLuns({ pageSize: 1000, pageToken, pathPrefix }));
      out.push(...res.luns.map(lunRef));
      pageToken = res.nextPageToken;
    } while (pageToken !== '');
    return out;
  }

  async deleteLun(req: { requestId: string; lun: string; force?: boolean }): Promise<void> {
    await this.call('DeleteLun', () => this.client.deleteLun({ requestId: req.requestId, lun: req.lun, force: req.force ?? false }));
  }

  async ensureIgroup(req: { requestId: string; name: string; initiator: string }): Promise<void> {
    try {
      await this.call('CreateIgroup', () =>
        this.client.createIgroup({
          requestId: req.requestId,
          name: req.name,
          protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI,
          osType: OsType.OS_TYPE_HYPER_V,
          initiators: [req.initiator],
        }),
      );
    } catch (err) {
      // It exists with other members (an admin added some): make sure ours is among them.
      if (!(err instanceof DomainError && err.kind === 'already_exists')) throw err;
      await this.call('AddInitiators', () => this.client.addInitiators({ requestId: '', igroup: req.name, initiators: [req.initiator] }));
    }
  }

  async mapLun(req: { requestId: string; lun: string; igroups: readonly string[]; lunId: number }): Promise<void> {
    await this.call('MapLun', () => this.client.mapLun({ requestId: req.requestId, lun: req.lun, igroup: '', igroups: [...req.igroups], lunId: req.lunId }));
  }

  async unmapLun(req: { requestId: string; lun: string; igroups: readonly string[] }): Promise<void> {
    await this.call('UnmapLun', () => this.client.unmapLun({ requestId: req.requestId, lun: req.lun, igroup: '', igroups: [...req.igroups] }));
  }

  async listMaps(filter: { igroup?: string; lun?: string }): Promise<ArrayMap[]> {
    const out: ArrayMap[] = [];
    let pageToken = '';
    do {
      const res = await this.call('ListLunMaps', () =>
        this.client.listLunMaps({ igroup: filter.igroup ?? '', lun: filter.lun ?? '', pageSize: 1000, pageToken }),
      );
      out.push(...res.maps.map((m) => ({ lunUuid: m.lunUuid, serial: m.serial, lunPath: m.lunPath, igroup: m.igroup, lunId: m.lunId })));
      pageToken = res.nextPageToken;
    } while (pageToken !== '');
    return out;
  }

  async reserve(req: { requestId: string; lun: string; initiator: string; key: string }): Promise<void> {
    await this.call('RegisterReservationKey', () =>
      this.as(req.initiator).registerReservationKey({ requestId: `${req.requestId}:register`, lun: req.lun, initiator: req.initiator, key: req.key }),
    );
    await this.call('Reserve', () =>
      this.as(req.initiator).reserve({
        requestId: `${req.requestId}:reserve`,
        lun: req.lun,
        initiator: req.initiator,
        key: req.key,
        type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
      }),
    );
  }

  async release(req: { requestId: string; lun: string; initiator: string; key: string }): Promise<void> {
    try {
      // Unregistering (key 0) also releases a reservation the initiator holds (SPC-3).
      await this.call('RegisterReservationKey', () =>
        this.as(req.initiator).registerReservationKey({ requestId: `${req.requestId}:unregister`, lun: req.lun, initiator: req.initiator, key: '0' }),
      );
    } catch (err) {
      // Releasing on a LUN that is gone, or no longer mapped to this node, is done already
      // (LUN masking; a refusal of the node's certificate is no such thing).
      if (err instanceof DomainError && (err.kind === 'not_found' || (err.kind === 'permission_denied' && err.reason === 'LUN_MASKED'))) return;
      throw err;
    }
  }

  async takeOver(req: { requestId: string; lun: string; initiator: string; key: string; fromKey: string }): Promise<void> {
    // Each call is idempotent by itself, so an empty request id (no replay record) is safe too.
    const id = (part: string): string => (req.requestId === '' ? '' : `${req.requestId}:${part}`);
    await this.call('RegisterReservationKey', () =>
      this.as(req.initiator).registerReservationKey({ requestId: id('register'), lun: req.lun, initiator: req.initiator, key: req.key }),
    );
    await this.call('PreemptReservation', () =>
      this.as(req.initiator).preemptReservation({
        requestId: id('preempt'),
        lun: req.lun,
        initiator: req.initiator,
        key: req.key,
        preemptKey: req.fromKey,
        type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
      }),
    );
    // Nobody held it (the failed node had released it): take it.
    await this.call('Reserve', () =>
      this.as(req.initiator).reserve({
        requestId: id('reserve'),
        lun: req.lun,
        initiator: req.initiator,
        key: req.key,
        type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
      }),
    );
  }

  async readReservation(lun: string): Promise<Reservation> {
    const [res, keys] = await Promise.all([
      this.call('ReadReservation', () => this.client.readReservation({ lun })),
      this.call('ReadReservationKeys', () => this.client.readReservationKeys({ lun })),
    ]);
    return {
      holderInitiator: res.reserved ? res.holderInitiator : undefined,
      registrations: keys.registrations.map((r) => ({ initiator: r.initiator, key: r.key })),
    };
  }

  close(): void {
    for (const c of this.clients.values()) c.close();
    this.clients.clear();
  }
}
