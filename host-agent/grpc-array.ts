/**
 * The array seam over gRPC: storage-sim's StorageArrayService as the control plane
 * (`GrpcArray`) and as one node's data plane (`GrpcDataPlane`). UNAVAILABLE and
 * DEADLINE_EXCEEDED are retried here with back-off (safe, because every mutating call
 * carries a request id); what still fails comes back as a domain error.
 */
import { status as Code } from '@grpc/grpc-js';
import { connect, type PromiseClient } from '../common/client.js';
import { DomainError } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import { fromStatus, isServiceError } from '../common/status.js';
import {
  IgroupProtocol,
  type Lun,
  OsType,
  Provisioning,
  ReservationType,
  StorageArrayServiceClient,
} from '../proto/gen/passthru/storage/v1/storage.js';
import { DEFAULT_RETRY, type ArrayLun, type ArrayMap, type DataPlane, type GuestOsName, type PoolInfo, type Reservation, type RetryPolicy, type StorageArray } from './array.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function lunRef(l: Lun): ArrayLun {
  return { uuid: l.uuid, serial: l.serial, naaId: l.naaId, path: l.path, sizeBytes: Number(l.sizeBytes), comment: l.comment, mapped: l.mapped };
}

function retryable(err: unknown): boolean {
  return isServiceError(err) && (err.code === Code.UNAVAILABLE || err.code === Code.DEADLINE_EXCEEDED);
}

/** One array call with the retry policy; the array's refusal comes back as a domain error. */
async function callArray<R>(endpoint: string, retry: RetryPolicy, logger: Logger, method: string, fn: () => Promise<R>): Promise<R> {
  let delay = retry.firstDelayMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (!isServiceError(err)) throw err;
      if (!retryable(err) || attempt >= retry.attempts) throw fromStatus(err, { source: 'storage array', reasonPrefix: 'ARRAY', endpoint, method });
      logger.warn('array call retried', { method, attempt, code: Code[err.code], error: err.details });
      await sleep(delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, retry.maxDelayMs);
    }
  }
}

export class GrpcArray implements StorageArray {
  private readonly client: PromiseClient<StorageArrayServiceClient>;

  constructor(
    readonly endpoint: string,
    private readonly logger: Logger,
    private readonly retry: RetryPolicy = DEFAULT_RETRY,
  ) {
    this.client = connect(StorageArrayServiceClient, endpoint, { timeoutMs: retry.callTimeoutMs });
  }

  private call<R>(method: string, fn: () => Promise<R>): Promise<R> {
    return callArray(this.endpoint, this.retry, this.logger, method, fn);
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

  async mapLun(req: { requestId: string; lun: string; igroup: string; lunId: number }): Promise<void> {
    await this.call('MapLun', () => this.client.mapLun(req));
  }

  async unmapLun(req: { requestId: string; lun: string; igroup: string }): Promise<void> {
    await this.call('UnmapLun', () => this.client.unmapLun(req));
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
      this.client.registerReservationKey({ requestId: `${req.requestId}:register`, lun: req.lun, initiator: req.initiator, key: req.key }),
    );
    await this.call('Reserve', () =>
      this.client.reserve({
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
        this.client.registerReservationKey({ requestId: `${req.requestId}:unregister`, lun: req.lun, initiator: req.initiator, key: '0' }),
      );
    } catch (err) {
      // Releasing on a LUN that is gone, or no longer mapped to this node, is done already.
      if (err instanceof DomainError && (err.kind === 'not_found' || err.kind === 'permission_denied')) return;
      throw err;
    }
  }

  async takeOver(req: { requestId: string; lun: string; initiator: string; key: string; fromKey: string }): Promise<void> {
    // Each call is idempotent by itself, so an empty request id (no replay record) is safe too.
    const id = (part: string): string => (req.requestId === '' ? '' : `${req.requestId}:${part}`);
    await this.call('RegisterReservationKey', () =>
      this.client.registerReservationKey({ requestId: id('register'), lun: req.lun, initiator: req.initiator, key: req.key }),
    );
    await this.call('PreemptReservation', () =>
      this.client.preemptReservation({
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
      this.client.reserve({
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
    this.client.close();
  }
}

/** The data plane over gRPC (ReadBlocks / WriteBlocks) as one node's initiator, on its own connection. */
export class GrpcDataPlane implements DataPlane {
  private readonly client: PromiseClient<StorageArrayServiceClient>;

  constructor(
    readonly endpoint: string,
    readonly initiator: string,
    private readonly logger: Logger,
    private readonly retry: RetryPolicy = DEFAULT_RETRY,
  ) {
    // A channel of its own: grpc-js shares one connection between clients with equal options.
    this.client = connect(StorageArrayServiceClient, endpoint, { timeoutMs: retry.callTimeoutMs, channelKey: initiator });
  }

  async read(lun: string, offsetBytes: bigint, lengthBytes: number): Promise<Buffer> {
    const res = await callArray(this.endpoint, this.retry, this.logger, 'ReadBlocks', () =>
      this.client.readBlocks({ lun, initiator: this.initiator, offsetBytes, lengthBytes }),
    );
    // Already a Buffer over the decoded message: no copy.
    return res.data;
  }

  async write(requestId: string, lun: string, offsetBytes: bigint, data: Buffer): Promise<number> {
    const res = await callArray(this.endpoint, this.retry, this.logger, 'WriteBlocks', () =>
      this.client.writeBlocks({ requestId, lun, initiator: this.initiator, offsetBytes, data }),
    );
    return res.writtenBytes;
  }

  close(): void {
    this.client.close();
  }
}
