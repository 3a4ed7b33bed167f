/**
 * The administrators of the chaos run: the array's (making LUNs outside passthru, one now and
 * then with something already on it) and the cluster's (putting LUNs into Available Storage,
 * taking them out, adding back what a removal left on the array, deleting it for good). They
 * give the guests LUNs to connect, some blank, some holding a volume a guest wrote before,
 * and they are clients too: each of their operations is counted and checked like a guest's.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { connect, type PromiseClient } from '../common/client.js';
import { errorOfStatus } from '../guest-agent/grpc-host.js';
import { AdminServiceClient, OperationState, type Operation } from '../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient, IgroupProtocol, OsType, Provisioning, StorageArrayServiceClient } from '../proto/gen/passthru/storage/v1/storage.js';
import { INITIATOR_PREFIX } from './cluster.js';
import type { Ledger } from './ledger.js';
import type { Registry } from './registry.js';
import type { Rng } from './rng.js';
import { VolumeModel } from './volume-model.js';
import { sleep } from './worker.js';

const MiB = 1024 * 1024;
export const ADMIN_VOLUME = 'chaosadmin';
export const ADMIN_IGROUP = 'chaos_admin';
export const ADMIN_INITIATOR = `${INITIATOR_PREFIX}admin`;

export interface Clients {
  admin: PromiseClient<AdminServiceClient>;
  storage: PromiseClient<StorageArrayServiceClient>;
  faults: PromiseClient<FaultInjectionServiceClient>;
  close(): void;
}

export function clients(hostAddress: string, storageAddress: string): Clients {
  const admin = connect(AdminServiceClient, hostAddress, { timeoutMs: 15_000 });
  const storage = connect(StorageArrayServiceClient, storageAddress, { timeoutMs: 15_000 });
  const faults = connect(FaultInjectionServiceClient, storageAddress, { timeoutMs: 5_000 });
  return {
    admin,
    storage,
    faults,
    close() {
      admin.close();
      storage.close();
      faults.close();
    },
  };
}

const isService = (err: unknown): err is ServiceError => typeof err === 'object' && err !== null && 'code' in err && 'details' in err;

/** Errors that mean "not answered" (the process is down or restarting, a fault was injected): worth the same request again. */
const RETRIED = new Set<number>([Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED, Code.INTERNAL, Code.UNKNOWN, Code.ABORTED, Code.CANCELLED]);

/** For a call that must happen (an administrator cleaning up after itself): every refusal but a final one is tried again. */
const ANY_ERROR = new Set<number>([...RETRIED, Code.RESOURCE_EXHAUSTED, Code.FAILED_PRECONDITION]);

/** Calls until answered with something other than "try again", for up to `ms`; a request id in the call makes that safe. */
export async function answered<T>(call: () => Promise<T>, ms = 60_000, retried: Set<number> = RETRIED): Promise<T> {
  const end = Date.now() + ms;
  let delay = 50;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (!isService(err) || !retried.has(err.code) || Date.now() > end) throw err;
      await sleep(delay);
      delay = Math.min(delay * 2, 1_000);
    }
  }
}

/** The operation once it is SUCCEEDED or FAILED (polled as the administrator, through host restarts). */
export async function finalOperation(c: Clients, id: string, ms = 120_000): Promise<Operation> {
  const end = Date.now() + ms;
  for (;;) {
    const { operation } = await answered(() => c.admin.getOperation({ operationId: id }), Math.max(1_000, end - Date.now()));
    if (operation && (operation.state === OperationState.OPERATION_STATE_SUCCEEDED || operation.state === OperationState.OPERATION_STATE_FAILED)) return operation;
    if (Date.now() > end) throw new Error(`operation ${id} did not end within ${ms} ms (state ${operation?.state})`);
    await sleep(50);
  }
}

/** The administrators' loop: one action at a time, at seeded random moments, until told to stop. */
export class Administrators {
  private n = 0;
  stopped = false;

  constructor(
    private readonly c: Clients,
    private readonly registry: Registry,
    private readonly ledger: Ledger,
    private readonly rng: Rng,
    private readonly runTag: string,
    private readonly maxAvailable: number,
  ) {}

  /** The igroup the array's administrator writes through when preparing a LUN. */
  async setUp(): Promise<void> {
    await answered(() =>
      this.c.storage.createIgroup({ requestId: `${this.runTag}:admin-igroup`, name: ADMIN_IGROUP, protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_LINUX, initiators: [ADMIN_INITIATOR] }),
    );
  }

  async loop(stop: () => boolean): Promise<void> {
    while (!stop()) {
      await sleep(this.rng.int(150, 1_000));
      if (stop()) break;
      const available = this.registry.where('available');
      const retained = this.registry.where('retained');
      const action = this.rng.weighted({
        blank: available.length < this.maxAvailable ? 30 : 2,
        foreign: available.length < this.maxAvailable ? 6 : 0,
        reAdd: retained.length > 0 ? 25 : 0,
        deleteRetained: retained.length > 3 ? 20 : 0,
        takeBack: available.length > 2 ? 10 : 0,
      });
      try {
        if (action === 'blank' || action === 'foreign') await this.addNew(action === 'foreign');
        else if (action === 'reAdd') await this.addAvailable(this.rng.pick(retained));
        else if (action === 'deleteRetained') await this.deleteLun(this.rng.pick(retained));
        else await this.takeBack(this.rng.pick(available));
      } catch {
        // Counted as a failed attempt already; the next action goes on.
      }
    }
    this.stopped = true;
  }

  /** One administrator step, counted: what it says, whether it worked. */
  private async step<T>(kind: string, what: string, body: () => Promise<T>): Promise<T> {
    const a = this.ledger.begin('admin', kind, what);
    try {
      const r = await body();
      this.ledger.succeed(a);
      return r;
    } catch (err) {
      this.ledger.fail(a, isService(err) ? errorOfStatus(err.code, err.details, `ARRAY_${Code[err.code]}`) : err);
      throw err;
    }
  }

  /** A LUN made on the array (blank, or with bytes at LBA 0 that are neither a GPT nor zeros), then put into Available Storage. */
  async addNew(foreign: boolean): Promise<void> {
    const n = ++this.n;
    const path = `/vol/${ADMIN_VOLUME}/lun${n}`;
    const size = Math.floor(this.rng.int(4 * MiB, 48 * MiB) / 512) * 512;
    const osType = this.rng.chance(0.5) ? OsType.OS_TYPE_WINDOWS : OsType.OS_TYPE_LINUX;
    const id = (s: string): string => `${this.runTag}:admin:${n}:${s}`;
    const lun = await this.step('lun-create', path, async () =>
      (await answered(() => this.c.storage.createLun({ requestId: id('create'), path, sizeBytes: BigInt(size), osType, provisioning: Provisioning.PROVISIONING_THIN, comment: 'chaos administrator', pool: '' }))).lun!,
    );
    const model = this.registry.add(new VolumeModel(lun.serial, lun.naaId, size, { place: { kind: 'retained' } }));
    model.uuid = lun.uuid;
    if (foreign) {
      await this.step('lun-prepare', `${path} (bytes at LBA 0)`, async () => {
        const unmap = (): Promise<unknown> => answered(() => this.c.storage.unmapLun({ requestId: id('unmap'), lun: lun.uuid, igroup: ADMIN_IGROUP, igroups: [] }), 60_000, ANY_ERROR);
        try {
          await answered(() => this.c.storage.mapLun({ requestId: id('map'), lun: lun.uuid, igroup: ADMIN_IGROUP, igroups: [] }));
          const junk = Buffer.alloc(512, 0x5a);
          junk.write(`chaos administrator was here ${n}`);
          await answered(() => this.c.storage.writeBlocks({ requestId: id('write'), lun: lun.uuid, initiator: ADMIN_INITIATOR, offsetBytes: 0n, data: junk }));
        } catch (err) {
          // A MapLun may map and still fail (its reply lost): what the administrator mapped for itself it takes back, whatever failed.
          await unmap();
          throw err;
        }
        await unmap();
      });
      model.foreign = true;
    }
    await this.addAvailable(model);
  }

  /** AddAvailableDisk, followed to its end: the LUN is in Available Storage, or (failed) stays where it was. */
  addAvailable(model: VolumeModel): Promise<void> {
    return this.operation('add-available', model, (requestId) => this.c.admin.addAvailableDisk({ requestId, lun: model.serial }), () => {
      model.place = { kind: 'available' };
    });
  }

  /** RemoveAvailableDisk: out of Available Storage, unmapped, left on the array. */
  takeBack(model: VolumeModel): Promise<void> {
    return this.operation('remove-available', model, (requestId) => this.c.admin.removeAvailableDisk({ requestId, lun: model.serial }), () => {
      // A LUN a guest connected meanwhile is that guest's now (its worker says so); otherwise it is off the cluster, on the array.
      if (model.place.kind === 'available') model.place = { kind: 'retained' };
    });
  }

  /** An administrator's cluster operation on a LUN, followed to its end; `succeeded` says what it did. */
  private async operation(kind: string, model: VolumeModel, start: (requestId: string) => Promise<{ operation?: Operation }>, succeeded: () => void): Promise<void> {
    const requestId = `${this.runTag}:admin:${++this.n}:${kind}`;
    await this.step(kind, model.serial, async () => {
      const { operation } = await answered(() => start(requestId), 60_000);
      const op = await finalOperation(this.c, operation!.id);
      if (op.state === OperationState.OPERATION_STATE_FAILED) throw errorOfStatus(op.error?.code ?? 2, op.error?.message ?? 'failed', 'OPERATION_FAILED');
      succeeded();
    });
  }

  /** A LUN nobody uses any more, deleted on the array by its administrator. */
  async deleteLun(model: VolumeModel): Promise<void> {
    const n = ++this.n;
    await this.step('lun-delete', model.serial, async () => {
      await answered(() => this.c.storage.deleteLun({ requestId: `${this.runTag}:admin:${n}:delete`, lun: model.serial, force: false }));
      model.place = { kind: 'deleted' };
    });
  }
}
