/**
 * storage-sim through the wire: serveArray in-process on 127.0.0.1:0, the generated clients
 * over real gRPC. Status codes and messages for bad requests on every RPC (with the array's
 * whole state checked unchanged after each), request-id retries, paging, masking,
 * reservations and fencing, fault injection, rich error details and health.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type PromiseClient } from '../../common/client.js';
import { silentLogger } from '../../common/logging.js';
import { statusDetails } from '../../common/status.js';
import { HealthCheckResponse_ServingStatus as Serving, HealthClient } from '../../proto/gen/grpc/health/v1/health.js';
import {
  FaultInjectionServiceClient,
  FaultTiming,
  IgroupProtocol,
  LunState,
  OsType,
  Provisioning,
  ReservationType,
  StorageArrayServiceClient,
  type AddInitiatorsRequest,
  type CreateIgroupRequest,
  type CreateLunRequest,
  type DeleteLunRequest,
  type InjectFaultRequest,
  type ListLunMapsRequest,
  type ListLunsRequest,
  type MapLunRequest,
  type PreemptReservationRequest,
  type ReadBlocksRequest,
  type RegisterReservationKeyRequest,
  type ReserveRequest,
  type WriteBlocksRequest,
} from '../../proto/gen/passthru/storage/v1/storage.js';
import { serveArray, type ServeArrayOptions, type ServingArray } from '../../storage-sim/serve.js';
import { arrayState } from '../support/array-state.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;
const A = 'iqn.1991-05.com.microsoft:node-a';
const B = 'iqn.1991-05.com.microsoft:node-b';
const STORAGE = 'passthru.storage.v1.StorageArrayService';

type Storage = PromiseClient<InstanceType<typeof StorageArrayServiceClient>>;
type Faults = PromiseClient<InstanceType<typeof FaultInjectionServiceClient>>;

interface Sim {
  dir: string;
  served: ServingArray;
  storage: Storage;
  faults: Faults;
  close(): Promise<void>;
}

async function startSim(enableFaults: boolean): Promise<Sim> {
  const dir = mkdtempSync(join(tmpdir(), 'passthru-storage-svc-'));
  return serveOn(dir, { enableFaults, pools: [
    { name: 'aggr1', capacityBytes: 4096 * MiB },
    { name: 'aggr2', capacityBytes: 16 * MiB },
  ] });
}

/** Serves the array in `dir` (new or existing) with clients on it; close() removes the dir. */
async function serveOn(dir: string, opts: Partial<ServeArrayOptions> = {}): Promise<Sim> {
  const served = await serveArray({ listen: '127.0.0.1:0', dataDir: dir, logger: silentLogger(), ...opts });
  const storage = connect(StorageArrayServiceClient, served.running.address, { timeoutMs: 10_000 });
  const faults = connect(FaultInjectionServiceClient, served.running.address, { timeoutMs: 10_000 });
  return {
    dir,
    served,
    storage,
    faults,
    close: async () => {
      storage.close();
      faults.close();
      await served.close(1000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Full request messages (ts-proto encodes every field, so none may be missing).
const createLunReq = (o: Partial<CreateLunRequest>): CreateLunRequest => ({
  requestId: '',
  path: '',
  sizeBytes: BigInt(8 * MiB),
  osType: OsType.OS_TYPE_WINDOWS,
  provisioning: Provisioning.PROVISIONING_UNSPECIFIED,
  comment: '',
  pool: '',
  ...o,
});
const createIgroupReq = (o: Partial<CreateIgroupRequest>): CreateIgroupRequest => ({
  requestId: '',
  name: '',
  protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI,
  osType: OsType.OS_TYPE_WINDOWS,
  initiators: [],
  ...o,
});
const mapReq = (o: Partial<MapLunRequest>): MapLunRequest => ({ requestId: '', lun: '', igroup: '', igroups: [], lunId: undefined, ...o });
const readReq = (o: Partial<ReadBlocksRequest>): ReadBlocksRequest => ({ lun: '', initiator: A, offsetBytes: 0n, lengthBytes: 512, ...o });
const writeReq = (o: Partial<WriteBlocksRequest>): WriteBlocksRequest => ({
  requestId: '',
  lun: '',
  initiator: A,
  offsetBytes: 0n,
  data: Buffer.alloc(512, 1),
  ...o,
});
const registerReq = (o: Partial<RegisterReservationKeyRequest>): RegisterReservationKeyRequest => ({ requestId: '', lun: '', initiator: A, key: '', ...o });
const reserveReq = (o: Partial<ReserveRequest>): ReserveRequest => ({
  requestId: '',
  lun: '',
  initiator: A,
  key: '',
  type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE,
  ...o,
});
const preemptReq = (o: Partial<PreemptReservationRequest>): PreemptReservationRequest => ({
  requestId: '',
  lun: '',
  initiator: A,
  key: '',
  preemptKey: '',
  type: ReservationType.RESERVATION_TYPE_UNSPECIFIED,
  ...o,
});
const listLunsReq = (o: Partial<ListLunsRequest>): ListLunsRequest => ({ pageSize: 0, pageToken: '', pathPrefix: '', ...o });
const listMapsReq = (o: Partial<ListLunMapsRequest>): ListLunMapsRequest => ({ lun: '', igroup: '', pageSize: 0, pageToken: '', ...o });
const deleteLunReq = (o: Partial<DeleteLunRequest>): DeleteLunRequest => ({ requestId: '', lun: '', force: false, ...o });
const addReq = (o: Partial<AddInitiatorsRequest>): AddInitiatorsRequest => ({ requestId: '', igroup: '', initiators: [], ...o });
const injectReq = (o: Partial<InjectFaultRequest>): InjectFaultRequest => ({
  method: 'GetArray',
  count: 1,
  code: Code.UNAVAILABLE,
  message: '',
  delayMs: 0,
  timing: FaultTiming.FAULT_TIMING_UNSPECIFIED,
  ...o,
});

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((i * 7 + seed * 13) % 251) + 1;
  return b;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('storage-sim over gRPC', function () {
  this.timeout(20_000);
  let sim: Sim;
  let storage: Storage;

  before(async () => {
    sim = await startSim(true);
    storage = sim.storage;
  });
  after(async () => {
    await sim.close();
  });
  afterEach(async () => {
    await sim.faults.clearFaults({});
  });

  describe('bad requests on every RPC', () => {
    const L1 = '/vol/bad/lun1';
    const L2 = '/vol/bad/lun2';
    before(async () => {
      await storage.createIgroup(createIgroupReq({ name: 'bad_h1', initiators: [A] }));
      await storage.createIgroup(createIgroupReq({ name: 'bad_h2', initiators: [B] }));
      await storage.createLun(createLunReq({ path: L1, requestId: 'bad-create-1' }));
      await storage.createLun(createLunReq({ path: L2, provisioning: Provisioning.PROVISIONING_THIN }));
      await storage.mapLun(mapReq({ lun: L1, igroup: 'bad_h1', lunId: 0 }));
      await storage.writeBlocks(writeReq({ lun: L1, data: pattern(4096, 1) }));
      await storage.registerReservationKey(registerReq({ lun: L1, key: '0xa' }));
    });

    const cases: [string, () => Promise<unknown>, Code, RegExp][] = [
      ['CreateLun with os_type 99', () => storage.createLun(createLunReq({ path: '/vol/bad/x', osType: 99 as OsType })), Code.INVALID_ARGUMENT, /os_type 99 is not a known value: one of windows, hyper_v, linux, vmware/],
      ['CreateLun with provisioning 7', () => storage.createLun(createLunReq({ path: '/vol/bad/x', provisioning: 7 as Provisioning })), Code.INVALID_ARGUMENT, /provisioning 7 is not a known value/],
      ['CreateLun of 2^63 bytes', () => storage.createLun(createLunReq({ path: '/vol/bad/x', sizeBytes: 2n ** 63n })), Code.INVALID_ARGUMENT, /size_bytes 9223372036854775808 is out of range/],
      ['CreateLun of 2^64-1 bytes', () => storage.createLun(createLunReq({ path: '/vol/bad/x', sizeBytes: 2n ** 64n - 1n })), Code.INVALID_ARGUMENT, /not a multiple of 512/],
      ['CreateLun of size 0', () => storage.createLun(createLunReq({ path: '/vol/bad/x', sizeBytes: 0n })), Code.INVALID_ARGUMENT, /size_bytes is required/],
      ['CreateLun of an unaligned size', () => storage.createLun(createLunReq({ path: '/vol/bad/x', sizeBytes: BigInt(8 * MiB + 100) })), Code.INVALID_ARGUMENT, /not a multiple of 512/],
      ['CreateLun without os_type', () => storage.createLun(createLunReq({ path: '/vol/bad/x', osType: OsType.OS_TYPE_UNSPECIFIED })), Code.INVALID_ARGUMENT, /os_type is required/],
      ['CreateLun with an empty path', () => storage.createLun(createLunReq({ path: '' })), Code.INVALID_ARGUMENT, /path is required/],
      ['CreateLun with a bad volume name', () => storage.createLun(createLunReq({ path: '/vol/b-d/x' })), Code.INVALID_ARGUMENT, /volume name "b-d" is invalid/],
      ['CreateLun with a 255-character comment', () => storage.createLun(createLunReq({ path: '/vol/bad/x', comment: 'c'.repeat(255) })), Code.INVALID_ARGUMENT, /at most 254/],
      ['CreateLun with a 129-character request id', () => storage.createLun(createLunReq({ path: '/vol/bad/x', requestId: 'r'.repeat(129) })), Code.INVALID_ARGUMENT, /request_id/],
      ['CreateLun in an unknown pool', () => storage.createLun(createLunReq({ path: '/vol/newvol/x', pool: 'aggr9' })), Code.NOT_FOUND, /pool "aggr9" does not exist/],
      ['CreateLun of an existing path with another size', () => storage.createLun(createLunReq({ path: L1, sizeBytes: BigInt(16 * MiB) })), Code.ALREADY_EXISTS, /already exists with size 8388608/],
      ['CreateLun of a thick LUN the pool cannot hold', () => storage.createLun(createLunReq({ path: '/vol/small/x', pool: 'aggr2', sizeBytes: BigInt(32 * MiB) })), Code.RESOURCE_EXHAUSTED, /pool aggr2 has 16 MiB free/],
      ['CreateLun reusing a request id with other parameters', () => storage.createLun(createLunReq({ path: '/vol/bad/x', requestId: 'bad-create-1' })), Code.INVALID_ARGUMENT, /already used for a different CreateLun request/],
      ['GetLun with an empty reference', () => storage.getLun({ lun: '' }), Code.INVALID_ARGUMENT, /lun is required/],
      ['GetLun of an unknown LUN', () => storage.getLun({ lun: '/vol/bad/none' }), Code.NOT_FOUND, /LUN "\/vol\/bad\/none" does not exist/],
      ['ListLuns with a garbage page token', () => storage.listLuns(listLunsReq({ pageToken: 'garbage-token' })), Code.INVALID_ARGUMENT, /page_token is not one this server gave out/],
      ['ListLuns with page size 1001', () => storage.listLuns(listLunsReq({ pageSize: 1001 })), Code.INVALID_ARGUMENT, /page_size 1001 is more than 1000/],
      ['ListLuns with a prefix outside /vol', () => storage.listLuns(listLunsReq({ pathPrefix: 'bad' })), Code.INVALID_ARGUMENT, /path_prefix/],
      ['ResizeLun to a smaller size', () => storage.resizeLun({ requestId: '', lun: L1, sizeBytes: BigInt(4 * MiB) }), Code.INVALID_ARGUMENT, /only grows/],
      ['ResizeLun to 2^63 bytes', () => storage.resizeLun({ requestId: '', lun: L1, sizeBytes: 2n ** 63n }), Code.INVALID_ARGUMENT, /out of range/],
      ['ResizeLun of an unknown LUN', () => storage.resizeLun({ requestId: '', lun: '/vol/bad/none', sizeBytes: BigInt(16 * MiB) }), Code.NOT_FOUND, /does not exist/],
      ['SetLunState without a state', () => storage.setLunState({ requestId: '', lun: L1, state: LunState.LUN_STATE_UNSPECIFIED }), Code.INVALID_ARGUMENT, /state is required/],
      ['SetLunState with state 9', () => storage.setLunState({ requestId: '', lun: L1, state: 9 as LunState }), Code.INVALID_ARGUMENT, /state 9 is not a known value/],
      ['DeleteLun of a mapped LUN', () => storage.deleteLun(deleteLunReq({ lun: L1 })), Code.FAILED_PRECONDITION, /is mapped to bad_h1: unmap it first, or delete with force/],
      ['DeleteLun with a malformed reference', () => storage.deleteLun(deleteLunReq({ lun: 'lun1' })), Code.INVALID_ARGUMENT, /neither a LUN path/],
      ['CreateIgroup without a protocol', () => storage.createIgroup(createIgroupReq({ name: 'x', protocol: IgroupProtocol.IGROUP_PROTOCOL_UNSPECIFIED })), Code.INVALID_ARGUMENT, /protocol is required/],
      ['CreateIgroup with protocol 42', () => storage.createIgroup(createIgroupReq({ name: 'x', protocol: 42 as IgroupProtocol })), Code.INVALID_ARGUMENT, /protocol 42 is not a known value/],
      ['CreateIgroup with os_type 99', () => storage.createIgroup(createIgroupReq({ name: 'x', osType: 99 as OsType })), Code.INVALID_ARGUMENT, /os_type 99/],
      ['CreateIgroup with a malformed initiator', () => storage.createIgroup(createIgroupReq({ name: 'x', initiators: ['iqn.2024-13.com.x'] })), Code.INVALID_ARGUMENT, /not a valid iSCSI qualified name/],
      ['CreateIgroup with an empty name', () => storage.createIgroup(createIgroupReq({ name: '' })), Code.INVALID_ARGUMENT, /name is required/],
      ['CreateIgroup of an existing name with other initiators', () => storage.createIgroup(createIgroupReq({ name: 'bad_h1', initiators: [B] })), Code.ALREADY_EXISTS, /igroup bad_h1 already exists/],
      ['GetIgroup of an unknown igroup', () => storage.getIgroup({ name: 'nope' }), Code.NOT_FOUND, /igroup "nope" does not exist/],
      ['GetIgroup of a malformed name', () => storage.getIgroup({ name: 'a b' }), Code.INVALID_ARGUMENT, /igroup name "a b" is invalid/],
      ['ListIgroups by a malformed initiator', () => storage.listIgroups({ pageSize: 0, pageToken: '', initiator: 'host1' }), Code.INVALID_ARGUMENT, /neither an iSCSI name/],
      ['ListIgroups with a garbage page token', () => storage.listIgroups({ pageSize: 0, pageToken: '$$', initiator: '' }), Code.INVALID_ARGUMENT, /page_token/],
      ['AddInitiators with no initiators', () => storage.addInitiators(addReq({ igroup: 'bad_h1' })), Code.INVALID_ARGUMENT, /initiators is empty/],
      ['AddInitiators to an unknown igroup', () => storage.addInitiators(addReq({ igroup: 'nope', initiators: [B] })), Code.NOT_FOUND, /does not exist/],
      ['AddInitiators with a WWPN to an iscsi igroup', () => storage.addInitiators(addReq({ igroup: 'bad_h1', initiators: ['20:00:00:25:b5:00:00:01'] })), Code.INVALID_ARGUMENT, /cannot join an iscsi igroup/],
      ['RemoveInitiators from a mapped igroup', () => storage.removeInitiators({ requestId: '', igroup: 'bad_h1', initiators: [A], force: false }), Code.FAILED_PRECONDITION, /has 1 LUN map/],
      ['DeleteIgroup of a mapped igroup', () => storage.deleteIgroup({ requestId: '', name: 'bad_h1' }), Code.FAILED_PRECONDITION, /unmap its LUNs first/],
      ['DeleteIgroup of a malformed name', () => storage.deleteIgroup({ requestId: '', name: '' }), Code.INVALID_ARGUMENT, /name is required/],
      ['MapLun at LUN id 4096', () => storage.mapLun(mapReq({ lun: L2, igroup: 'bad_h1', lunId: 4096 })), Code.INVALID_ARGUMENT, /lun_id 4096 is out of range: 0 to 4095/],
      ['MapLun at an id in use', () => storage.mapLun(mapReq({ lun: L2, igroup: 'bad_h1', lunId: 0 })), Code.ALREADY_EXISTS, /LUN id 0 of igroup bad_h1 is taken by \/vol\/bad\/lun1/],
      ['MapLun of an unknown LUN', () => storage.mapLun(mapReq({ lun: '/vol/bad/none', igroup: 'bad_h1' })), Code.NOT_FOUND, /does not exist/],
      ['MapLun to an unknown igroup', () => storage.mapLun(mapReq({ lun: L2, igroup: 'nope' })), Code.NOT_FOUND, /igroup "nope"/],
      ['UnmapLun with an empty LUN', () => storage.unmapLun({ igroups: [], requestId: '', lun: '', igroup: 'bad_h1' }), Code.INVALID_ARGUMENT, /lun is required/],
      ['ListLunMaps with a garbage page token', () => storage.listLunMaps(listMapsReq({ pageToken: 'nonsense' })), Code.INVALID_ARGUMENT, /page_token/],
      ['ListLunMaps of an unknown igroup', () => storage.listLunMaps(listMapsReq({ igroup: 'nope' })), Code.NOT_FOUND, /does not exist/],
      ['ReadBlocks at an unaligned offset', () => storage.readBlocks(readReq({ lun: L1, offsetBytes: 100n })), Code.INVALID_ARGUMENT, /offset_bytes 100 is not a non-negative multiple of 512/],
      ['ReadBlocks of length 0', () => storage.readBlocks(readReq({ lun: L1, lengthBytes: 0 })), Code.INVALID_ARGUMENT, /length_bytes 0 must be a positive multiple of 512/],
      ['ReadBlocks of 2 MiB', () => storage.readBlocks(readReq({ lun: L1, lengthBytes: 2 * MiB })), Code.INVALID_ARGUMENT, /the most one call carries/],
      ['ReadBlocks at offset 2^63', () => storage.readBlocks(readReq({ lun: L1, offsetBytes: 2n ** 63n })), Code.INVALID_ARGUMENT, /ends past the LUN's last byte/],
      ['ReadBlocks as a masked initiator', () => storage.readBlocks(readReq({ lun: L1, initiator: B })), Code.PERMISSION_DENIED, /LUN masking/],
      ['ReadBlocks with a malformed initiator', () => storage.readBlocks(readReq({ lun: L1, initiator: 'eui.1' })), Code.INVALID_ARGUMENT, /EUI-64/],
      ['WriteBlocks with no data', () => storage.writeBlocks(writeReq({ lun: L1, data: Buffer.alloc(0) })), Code.INVALID_ARGUMENT, /data 0 must be a positive multiple of 512/],
      ['WriteBlocks past the end', () => storage.writeBlocks(writeReq({ lun: L1, offsetBytes: BigInt(8 * MiB) })), Code.INVALID_ARGUMENT, /past the LUN's last byte/],
      ['WriteBlocks as a masked initiator', () => storage.writeBlocks(writeReq({ lun: L1, initiator: B, data: pattern(512, 9) })), Code.PERMISSION_DENIED, /LUN masking/],
      ['RegisterReservationKey with a malformed key', () => storage.registerReservationKey(registerReq({ lun: L1, key: 'zz' })), Code.INVALID_ARGUMENT, /not a reservation key/],
      ['RegisterReservationKey as a masked initiator', () => storage.registerReservationKey(registerReq({ lun: L1, initiator: B, key: '0xb' })), Code.PERMISSION_DENIED, /LUN masking/],
      ['Reserve without a type', () => storage.reserve(reserveReq({ lun: L1, key: '0xa', type: ReservationType.RESERVATION_TYPE_UNSPECIFIED })), Code.INVALID_ARGUMENT, /type is required/],
      ['Reserve with type 77', () => storage.reserve(reserveReq({ lun: L1, key: '0xa', type: 77 as ReservationType })), Code.INVALID_ARGUMENT, /type 77 is not a known value/],
      ['Reserve with a key not registered', () => storage.reserve(reserveReq({ lun: L1, key: '0xc' })), Code.FAILED_PRECONDITION, /reservation conflict/],
      ['ReleaseReservation with an empty key', () => storage.releaseReservation({ requestId: '', lun: L1, initiator: A, key: '' }), Code.INVALID_ARGUMENT, /not a reservation key/],
      ['PreemptReservation with a null preempt key', () => storage.preemptReservation(preemptReq({ lun: L1, key: '0xa', preemptKey: '0' })), Code.INVALID_ARGUMENT, /preempt_key must not be zero/],
      ['PreemptReservation with type 9', () => storage.preemptReservation(preemptReq({ lun: L1, key: '0xa', preemptKey: '0xb', type: 9 as ReservationType })), Code.INVALID_ARGUMENT, /type 9/],
      ['ReadReservationKeys of an unknown LUN', () => storage.readReservationKeys({ lun: '/vol/bad/none' }), Code.NOT_FOUND, /does not exist/],
      ['ReadReservation with a malformed reference', () => storage.readReservation({ lun: 'x' }), Code.INVALID_ARGUMENT, /neither a LUN path/],
      ['InjectFault on an unknown method', () => sim.faults.injectFault(injectReq({ method: 'Format' })), Code.INVALID_ARGUMENT, /not an RPC of the array/],
      ['InjectFault with code 17', () => sim.faults.injectFault(injectReq({ code: 17 })), Code.INVALID_ARGUMENT, /not a gRPC status code/],
      ['InjectFault with timing 5', () => sim.faults.injectFault(injectReq({ timing: 5 as FaultTiming })), Code.INVALID_ARGUMENT, /timing 5 is not a known value/],
      ['SetUnavailable for more than 10 minutes', () => sim.faults.setUnavailable({ durationMs: 600_001 }), Code.INVALID_ARGUMENT, /duration_ms 600001 is more than 600000/],
    ];
    for (const [name, call, code, message] of cases) {
      it(`${name} is ${Code[code]} with a clear message and changes nothing`, async () => {
        const before = arrayState(sim.served.array);
        const faultsBefore = await sim.faults.listFaults({});
        await expectStatus(call(), code, message);
        expect(arrayState(sim.served.array)).to.deep.equal(before);
        expect(await sim.faults.listFaults({})).to.deep.equal(faultsBefore);
      });
    }

    it('an INVALID_ARGUMENT carries google.rpc ErrorInfo (reason) and BadRequest (the field) details', async () => {
      const err = await expectStatus(storage.createLun(createLunReq({ path: '/vol/bad/x', sizeBytes: 1000n })), Code.INVALID_ARGUMENT);
      const d = statusDetails(err);
      expect(d.reason).to.equal('INVALID_ARGUMENT');
      expect(d.fieldViolations).to.have.length(1);
      expect(d.fieldViolations[0]!.field).to.equal('size_bytes');
      expect(d.fieldViolations[0]!.description).to.equal(err.details);
      const enumErr = await expectStatus(storage.createLun(createLunReq({ path: '/vol/bad/x', osType: 99 as OsType })), Code.INVALID_ARGUMENT);
      expect(statusDetails(enumErr).fieldViolations.map((v) => v.field)).to.deep.equal(['os_type']);
    });

    it('other refusals carry their ErrorInfo reason: LUN_NOT_FOUND, LUN_MAPPED, REQUEST_ID_REUSED, LUN_MASKED', async () => {
      const reasons = await Promise.all(
        [
          storage.getLun({ lun: '/vol/bad/none' }),
          storage.deleteLun(deleteLunReq({ lun: L1 })),
          storage.createLun(createLunReq({ path: '/vol/bad/y', requestId: 'bad-create-1' })),
          storage.readBlocks(readReq({ lun: L1, initiator: B })),
        ].map(async (p) => {
          const err = await p.then(
            () => expect.fail('expected a refusal'),
            (e: ServiceError) => e,
          );
          return statusDetails(err).reason;
        }),
      );
      expect(reasons).to.deep.equal(['LUN_NOT_FOUND', 'LUN_MAPPED', 'REQUEST_ID_REUSED', 'LUN_MASKED']);
    });
  });

  describe('idempotency', () => {
    it('CreateLun retried under its request_id returns the first LUN and creates no second one, even after the LUN was deleted', async () => {
      const req = createLunReq({ path: '/vol/idem/l1', requestId: 'idem-create-1' });
      const first = (await storage.createLun(req)).lun!;
      const count = (await storage.getArray({})).lunCount;
      const again = (await storage.createLun(req)).lun!;
      expect(again).to.deep.equal(first);
      expect((await storage.getArray({})).lunCount).to.equal(count);
      await storage.deleteLun(deleteLunReq({ lun: first.uuid }));
      expect((await storage.createLun(req)).lun!.uuid).to.equal(first.uuid);
      await expectStatus(storage.getLun({ lun: '/vol/idem/l1' }), Code.NOT_FOUND);
    });

    it('the same request_id with other parameters is INVALID_ARGUMENT and changes nothing', async () => {
      await storage.createLun(createLunReq({ path: '/vol/idem/l2', requestId: 'idem-create-2' }));
      const before = arrayState(sim.served.array);
      const err = await expectStatus(
        storage.createLun(createLunReq({ path: '/vol/idem/l2', requestId: 'idem-create-2', comment: 'different' })),
        Code.INVALID_ARGUMENT,
        /request_id "idem-create-2" was already used for a different CreateLun request/,
      );
      expect(statusDetails(err).fieldViolations[0]!.field).to.equal('request_id');
      expect(arrayState(sim.served.array)).to.deep.equal(before);
    });

    it('a create without a request id is idempotent by name: the same path and parameters return the same LUN', async () => {
      const a = (await storage.createLun(createLunReq({ path: '/vol/idem/l3' }))).lun!;
      const b = (await storage.createLun(createLunReq({ path: '/vol/idem/l3' }))).lun!;
      expect(b.uuid).to.equal(a.uuid);
      const g1 = (await storage.createIgroup(createIgroupReq({ name: 'idem_g', initiators: [A] }))).igroup!;
      const g2 = (await storage.createIgroup(createIgroupReq({ name: 'idem_g', initiators: [A.toUpperCase()] }))).igroup!;
      expect(g2).to.deep.equal(g1);
    });

    it('MapLun to several igroups maps to all at the lowest id free in every one, or to none; UnmapLun from several counts what it removed; both retry by request id', async () => {
      await storage.createLun(createLunReq({ path: '/vol/multi/m1' }));
      await storage.createLun(createLunReq({ path: '/vol/multi/m2' }));
      await storage.createLun(createLunReq({ path: '/vol/multi/blocker' }));
      for (const name of ['multi_a', 'multi_b', 'multi_c']) await storage.createIgroup(createIgroupReq({ name, initiators: [] }));
      // Id 0 is taken in multi_b only: the common lowest free id is 1.
      await storage.mapLun(mapReq({ lun: '/vol/multi/blocker', igroup: 'multi_b', lunId: 0 }));
      const res = await storage.mapLun(mapReq({ requestId: 'multi-map', lun: '/vol/multi/m1', igroups: ['multi_a', 'multi_b', 'multi_c'] }));
      expect(res.maps.map((m) => [m.igroup, m.lunId])).to.deep.equal([['multi_a', 1], ['multi_b', 1], ['multi_c', 1]]);
      expect(res.map).to.deep.equal(res.maps[0]);
      expect(await storage.mapLun(mapReq({ requestId: 'multi-map', lun: '/vol/multi/m1', igroups: ['multi_a', 'multi_b', 'multi_c'] }))).to.deep.equal(res);
      // Id 0 asked for m2 is taken in multi_b: nothing is mapped, not even in multi_a.
      const before = arrayState(sim.served.array);
      await expectStatus(storage.mapLun(mapReq({ lun: '/vol/multi/m2', igroups: ['multi_a', 'multi_b'], lunId: 0 })), Code.ALREADY_EXISTS, 'LUN_ID_ALREADY_EXISTS');
      expect(arrayState(sim.served.array)).to.deep.equal(before);
      const un = await storage.unmapLun({ requestId: 'multi-unmap', lun: '/vol/multi/m1', igroup: '', igroups: ['multi_a', 'multi_c', 'multi_b'] });
      expect(un).to.deep.equal({ unmapped: true, unmappedCount: 3 });
      expect(await storage.unmapLun({ requestId: 'multi-unmap', lun: '/vol/multi/m1', igroup: '', igroups: ['multi_a', 'multi_c', 'multi_b'] })).to.deep.equal(un);
      expect(await storage.unmapLun({ requestId: '', lun: '/vol/multi/m1', igroup: '', igroups: ['multi_a'] })).to.deep.equal({ unmapped: false, unmappedCount: 0 });
    });

    it('MapLun and UnmapLun refuse igroup and igroups together, an igroup named twice, and a malformed or unknown one in the list, changing nothing', async () => {
      await storage.createLun(createLunReq({ path: '/vol/multi/bad' }));
      await storage.createIgroup(createIgroupReq({ name: 'multi_x', initiators: [] }));
      const before = arrayState(sim.served.array);
      await expectStatus(storage.mapLun(mapReq({ lun: '/vol/multi/bad', igroup: 'multi_x', igroups: ['multi_x'] })), Code.INVALID_ARGUMENT, 'igroups');
      await expectStatus(storage.mapLun(mapReq({ lun: '/vol/multi/bad', igroups: ['multi_x', 'multi_x'] })), Code.INVALID_ARGUMENT, /named twice/);
      await expectStatus(storage.mapLun(mapReq({ lun: '/vol/multi/bad', igroups: ['multi_x', 'bad name!'] })), Code.INVALID_ARGUMENT, 'igroups[1]');
      await expectStatus(storage.mapLun(mapReq({ lun: '/vol/multi/bad', igroups: ['multi_x', 'multi_nope'] })), Code.NOT_FOUND, /multi_nope/);
      await expectStatus(storage.unmapLun({ requestId: '', lun: '/vol/multi/bad', igroup: 'multi_x', igroups: ['multi_x'] }), Code.INVALID_ARGUMENT, 'igroups');
      expect(arrayState(sim.served.array)).to.deep.equal(before);
    });

    it('MapLun, UnmapLun, DeleteLun and DeleteIgroup retried under their request ids return their first answers', async () => {
      await storage.createLun(createLunReq({ path: '/vol/idem/m1' }));
      await storage.createIgroup(createIgroupReq({ name: 'idem_m', initiators: [] }));
      const map = await storage.mapLun(mapReq({ requestId: 'idem-map', lun: '/vol/idem/m1', igroup: 'idem_m' }));
      expect(await storage.unmapLun({ igroups: [], requestId: 'idem-unmap', lun: '/vol/idem/m1', igroup: 'idem_m' })).to.deep.equal({ unmapped: true, unmappedCount: 1 });
      expect(await storage.mapLun(mapReq({ requestId: 'idem-map', lun: '/vol/idem/m1', igroup: 'idem_m' }))).to.deep.equal(map);
      expect((await storage.listLunMaps(listMapsReq({ igroup: 'idem_m' }))).maps).to.deep.equal([]);
      expect(await storage.unmapLun({ igroups: [], requestId: 'idem-unmap', lun: '/vol/idem/m1', igroup: 'idem_m' })).to.deep.equal({ unmapped: true, unmappedCount: 1 });
      expect(await storage.deleteLun(deleteLunReq({ requestId: 'idem-del', lun: '/vol/idem/m1' }))).to.deep.equal({ deleted: true, unmappedCount: 0 });
      expect(await storage.deleteLun(deleteLunReq({ requestId: 'idem-del', lun: '/vol/idem/m1' }))).to.deep.equal({ deleted: true, unmappedCount: 0 });
      expect(await storage.deleteLun(deleteLunReq({ lun: '/vol/idem/m1' }))).to.deep.equal({ deleted: false, unmappedCount: 0 });
      expect(await storage.deleteIgroup({ requestId: 'idem-delg', name: 'idem_m' })).to.deep.equal({ deleted: true });
      expect(await storage.deleteIgroup({ requestId: 'idem-delg', name: 'idem_m' })).to.deep.equal({ deleted: true });
      expect(await storage.deleteIgroup({ requestId: '', name: 'idem_m' })).to.deep.equal({ deleted: false });
    });
  });

  describe('LUNs, paging and data', () => {
    it('ListLuns pages through 250 LUNs under a prefix 100 at a time, in path order, and ignores LUNs outside the prefix', async function () {
      this.timeout(30_000);
      const paths = Array.from({ length: 250 }, (_, i) => `/vol/paged/l${String(i).padStart(3, '0')}`);
      for (let i = 0; i < paths.length; i += 25) {
        await Promise.all(paths.slice(i, i + 25).map((path) => storage.createLun(createLunReq({ path, sizeBytes: BigInt(4 * MiB), provisioning: Provisioning.PROVISIONING_THIN }))));
      }
      for (const path of ['/vol/pagedx/a', '/vol/page/a', '/vol/aaa/a']) await storage.createLun(createLunReq({ path, provisioning: Provisioning.PROVISIONING_THIN }));
      const sizes: number[] = [];
      const seen: string[] = [];
      let token = '';
      do {
        const page = await storage.listLuns(listLunsReq({ pageSize: 100, pageToken: token, pathPrefix: '/vol/paged/' }));
        sizes.push(page.luns.length);
        seen.push(...page.luns.map((l) => l.path));
        token = page.nextPageToken;
      } while (token !== '');
      expect(sizes).to.deep.equal([100, 100, 50]);
      expect(seen).to.deep.equal(paths);
      const all = await storage.listLuns(listLunsReq({ pageSize: 1000, pathPrefix: '/vol/page' }));
      expect(all.luns.map((l) => l.path)).to.include.members(['/vol/page/a', '/vol/pagedx/a']);
      expect(all.luns).to.have.length(252);
    });

    it('a LUN on the wire has its uuid, serial, NAA id, size, os_type, provisioning, state, create time, pool and usage', async () => {
      const before = Date.now();
      const lun = (await storage.createLun(createLunReq({ path: '/vol/wire/l1', osType: OsType.OS_TYPE_LINUX, provisioning: Provisioning.PROVISIONING_THIN, comment: 'vm 7' }))).lun!;
      expect(lun.uuid).to.match(/^[0-9a-f-]{36}$/);
      expect(lun.serial).to.match(/^PTSM[A-Za-z0-9]{8}$/);
      expect(lun.naaId).to.equal(`600a0980${Buffer.from(lun.serial).toString('hex')}`);
      expect(lun).to.deep.include({ path: '/vol/wire/l1', volume: 'wire', name: 'l1', sizeBytes: BigInt(8 * MiB), osType: OsType.OS_TYPE_LINUX, provisioning: Provisioning.PROVISIONING_THIN, state: LunState.LUN_STATE_ONLINE, comment: 'vm 7', pool: 'aggr1', usedBytes: 0n, mapped: false });
      expect(lun.createTime!.getTime()).to.be.within(before - 1000, Date.now() + 1000);
      expect((await storage.getLun({ lun: lun.serial })).lun).to.deep.equal(lun);
    });

    it('masking: only an initiator in a mapped igroup reads and writes; another is PERMISSION_DENIED and gets no data', async () => {
      await storage.createLun(createLunReq({ path: '/vol/mask/l1' }));
      await storage.createIgroup(createIgroupReq({ name: 'mask_a', initiators: [A] }));
      await storage.createIgroup(createIgroupReq({ name: 'mask_b', initiators: [B] }));
      await storage.mapLun(mapReq({ lun: '/vol/mask/l1', igroup: 'mask_a' }));
      const data = pattern(8192, 3);
      expect(await storage.writeBlocks(writeReq({ lun: '/vol/mask/l1', offsetBytes: 4096n, data }))).to.deep.equal({ writtenBytes: 8192 });
      expect((await storage.readBlocks(readReq({ lun: '/vol/mask/l1', offsetBytes: 4096n, lengthBytes: 8192 }))).data).to.deep.equal(data);
      expect((await storage.readBlocks(readReq({ lun: '/vol/mask/l1', offsetBytes: 0n, lengthBytes: 4096 }))).data).to.deep.equal(Buffer.alloc(4096));
      await expectStatus(storage.readBlocks(readReq({ lun: '/vol/mask/l1', initiator: B, offsetBytes: 4096n, lengthBytes: 8192 })), Code.PERMISSION_DENIED, /not in any igroup that LUN \/vol\/mask\/l1 is mapped to/);
      await expectStatus(storage.writeBlocks(writeReq({ lun: '/vol/mask/l1', initiator: B, offsetBytes: 4096n, data: pattern(512, 4) })), Code.PERMISSION_DENIED);
      expect((await storage.readBlocks(readReq({ lun: '/vol/mask/l1', offsetBytes: 4096n, lengthBytes: 8192 }))).data).to.deep.equal(data);
      await storage.mapLun(mapReq({ lun: '/vol/mask/l1', igroup: 'mask_b' }));
      expect((await storage.readBlocks(readReq({ lun: '/vol/mask/l1', initiator: B, offsetBytes: 4096n, lengthBytes: 8192 }))).data).to.deep.equal(data);
    });

    it('a thin write into a full pool is RESOURCE_EXHAUSTED and writes nothing', async () => {
      await storage.createLun(createLunReq({ path: '/vol/tiny/thick', pool: 'aggr2', sizeBytes: BigInt(15 * MiB) }));
      await storage.createLun(createLunReq({ path: '/vol/tiny/thin', provisioning: Provisioning.PROVISIONING_THIN }));
      await storage.createIgroup(createIgroupReq({ name: 'tiny', initiators: [A] }));
      await storage.mapLun(mapReq({ lun: '/vol/tiny/thin', igroup: 'tiny' }));
      await storage.writeBlocks(writeReq({ lun: '/vol/tiny/thin', data: pattern(512, 1) }));
      const before = arrayState(sim.served.array);
      await expectStatus(storage.writeBlocks(writeReq({ lun: '/vol/tiny/thin', offsetBytes: BigInt(3 * MiB), data: pattern(512, 2) })), Code.RESOURCE_EXHAUSTED, /pool aggr2 is full.*nothing was written/);
      expect(arrayState(sim.served.array)).to.deep.equal(before);
      expect((await storage.readBlocks(readReq({ lun: '/vol/tiny/thin', offsetBytes: BigInt(3 * MiB) }))).data).to.deep.equal(Buffer.alloc(512));
    });
  });

  describe('persistent reservations and fencing', () => {
    it('B preempts A\'s key: A\'s write is FAILED_PRECONDITION "reservation conflict" and changes nothing; A can still read', async () => {
      const lun = '/vol/fence/shared';
      await storage.createLun(createLunReq({ path: lun }));
      await storage.createIgroup(createIgroupReq({ name: 'fence_a', initiators: [A] }));
      await storage.createIgroup(createIgroupReq({ name: 'fence_b', initiators: [B] }));
      await storage.mapLun(mapReq({ lun, igroup: 'fence_a', lunId: 1 }));
      await storage.mapLun(mapReq({ lun, igroup: 'fence_b', lunId: 1 }));
      expect(await storage.registerReservationKey(registerReq({ lun, initiator: A, key: '0xaaaa' }))).to.deep.equal({ generation: 1 });
      expect(await storage.registerReservationKey(registerReq({ lun, initiator: B, key: '0xbbbb' }))).to.deep.equal({ generation: 2 });
      await storage.reserve(reserveReq({ lun, initiator: A, key: '0xaaaa', type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY }));
      expect(await storage.readReservation({ lun })).to.deep.equal({
        generation: 2,
        reserved: true,
        holderInitiator: A,
        holderKey: '000000000000aaaa',
        type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
      });
      const original = pattern(4096, 5);
      await storage.writeBlocks(writeReq({ lun, initiator: A, data: original }));
      await storage.writeBlocks(writeReq({ lun, initiator: B, offsetBytes: 8192n, data: pattern(512, 6) }));

      expect(await storage.preemptReservation(preemptReq({ lun, initiator: B, key: '0xbbbb', preemptKey: '0xaaaa' }))).to.deep.equal({ generation: 3, removedRegistrations: 1 });
      expect(await storage.readReservationKeys({ lun })).to.deep.equal({ generation: 3, registrations: [{ initiator: B, key: '000000000000bbbb' }] });
      expect(await storage.readReservation({ lun })).to.deep.include({ reserved: true, holderInitiator: B, holderKey: '000000000000bbbb' });

      const before = arrayState(sim.served.array);
      await expectStatus(storage.writeBlocks(writeReq({ lun, initiator: A, data: pattern(4096, 7) })), Code.FAILED_PRECONDITION, /reservation conflict/);
      expect(arrayState(sim.served.array)).to.deep.equal(before);
      expect((await storage.readBlocks(readReq({ lun, initiator: A, lengthBytes: 4096 }))).data).to.deep.equal(original);
      await storage.writeBlocks(writeReq({ lun, initiator: B, data: pattern(512, 8) }));
      await expectStatus(storage.reserve(reserveReq({ lun, initiator: A, key: '0xaaaa' })), Code.FAILED_PRECONDITION, /reservation conflict.*not registered/);
    });

    it('exclusive access held by A refuses B\'s reads too, until A releases it', async () => {
      const lun = '/vol/fence/ea';
      await storage.createLun(createLunReq({ path: lun }));
      await storage.createIgroup(createIgroupReq({ name: 'fence_ab', initiators: [A, B] }));
      await storage.mapLun(mapReq({ lun, igroup: 'fence_ab' }));
      await storage.registerReservationKey(registerReq({ lun, initiator: A, key: '1' }));
      await storage.reserve(reserveReq({ lun, initiator: A, key: '1', type: ReservationType.RESERVATION_TYPE_EXCLUSIVE_ACCESS }));
      await expectStatus(storage.readBlocks(readReq({ lun, initiator: B })), Code.FAILED_PRECONDITION, /reservation conflict/);
      expect(await storage.releaseReservation({ requestId: '', lun, initiator: A, key: '1' })).to.deep.equal({ released: true });
      expect((await storage.readBlocks(readReq({ lun, initiator: B }))).data).to.have.length(512);
    });
  });

  describe('fault injection', () => {
    it('the next 2 calls fail with the injected code and message, then calls succeed', async () => {
      const { fault } = await sim.faults.injectFault(injectReq({ method: 'GetArray', count: 2, code: Code.RESOURCE_EXHAUSTED, message: 'slow down' }));
      expect(fault).to.deep.include({ method: 'GetArray', remaining: 2, code: Code.RESOURCE_EXHAUSTED, timing: FaultTiming.FAULT_TIMING_BEFORE });
      expect((await sim.faults.listFaults({})).faults.map((f) => f.remaining)).to.deep.equal([2]);
      await expectStatus(storage.getArray({}), Code.RESOURCE_EXHAUSTED, /^slow down$/);
      await expectStatus(storage.getArray({}), Code.RESOURCE_EXHAUSTED, /^slow down$/);
      expect((await storage.getArray({})).faultsEnabled).to.equal(true);
      expect((await sim.faults.listFaults({})).faults).to.deep.equal([]);
    });

    it('a fault before the call changes nothing: the LUN is not created', async () => {
      await sim.faults.injectFault(injectReq({ method: 'CreateLun', code: Code.INTERNAL }));
      const before = arrayState(sim.served.array);
      await expectStatus(storage.createLun(createLunReq({ path: '/vol/fault/before', requestId: 'fb-1' })), Code.INTERNAL, /injected fault on CreateLun/);
      expect(arrayState(sim.served.array)).to.deep.equal(before);
      expect((await storage.createLun(createLunReq({ path: '/vol/fault/before', requestId: 'fb-1' }))).lun!.path).to.equal('/vol/fault/before');
    });

    it('a delay fault delays the call by at least its delay, then it succeeds', async () => {
      await sim.faults.injectFault(injectReq({ method: 'ListPools', code: 0, delayMs: 300 }));
      const t0 = performance.now();
      const res = await storage.listPools({});
      const elapsed = performance.now() - t0;
      expect(res.pools.map((p) => p.name)).to.deep.equal(['aggr1', 'aggr2']);
      expect(elapsed).to.be.at.least(295);
      const t1 = performance.now();
      await storage.listPools({});
      expect(performance.now() - t1).to.be.below(250);
    });

    it('AFTER timing: the change happens and the reply is lost; a retry with the same request_id returns the LUN', async () => {
      await sim.faults.injectFault(injectReq({ method: 'CreateLun', code: Code.UNAVAILABLE, timing: FaultTiming.FAULT_TIMING_AFTER }));
      const req = createLunReq({ path: '/vol/fault/after', requestId: 'after-1' });
      const count = (await storage.getArray({})).lunCount;
      await expectStatus(storage.createLun(req), Code.UNAVAILABLE);
      const exists = (await storage.getLun({ lun: '/vol/fault/after' })).lun!;
      expect((await storage.getArray({})).lunCount).to.equal(count + 1);
      const retried = (await storage.createLun(req)).lun!;
      expect(retried.uuid).to.equal(exists.uuid);
      expect((await storage.getArray({})).lunCount).to.equal(count + 1);
    });

    it('SetUnavailable makes every array call UNAVAILABLE until the window ends', async () => {
      const { unavailableUntil } = await sim.faults.setUnavailable({ durationMs: 800 });
      expect(unavailableUntil!.getTime()).to.be.within(Date.now() + 500, Date.now() + 850);
      expect((await sim.faults.listFaults({})).unavailableUntil!.getTime()).to.equal(unavailableUntil!.getTime());
      await expectStatus(storage.getArray({}), Code.UNAVAILABLE, /unavailable/);
      await expectStatus(storage.createLun(createLunReq({ path: '/vol/fault/outage' })), Code.UNAVAILABLE);
      await expectStatus(storage.getLun({ lun: '/vol/bad/lun1' }), Code.UNAVAILABLE);
      await sleep(Math.max(0, unavailableUntil!.getTime() - Date.now()) + 20);
      expect((await storage.getArray({})).name).to.equal('sim1');
      await expectStatus(storage.getLun({ lun: '/vol/fault/outage' }), Code.NOT_FOUND);
    });

    it('SetUnavailable 0 ends an outage at once', async () => {
      await sim.faults.setUnavailable({ durationMs: 60_000 });
      await expectStatus(storage.getArray({}), Code.UNAVAILABLE);
      expect(await sim.faults.setUnavailable({ durationMs: 0 })).to.deep.equal({ unavailableUntil: undefined });
      await storage.getArray({});
    });

    it('ClearFaults removes every fault and the outage', async () => {
      await sim.faults.injectFault(injectReq({ method: 'GetArray', count: 5 }));
      await sim.faults.injectFault(injectReq({ method: 'ListPools', count: 5 }));
      await sim.faults.setUnavailable({ durationMs: 60_000 });
      expect((await sim.faults.listFaults({})).faults).to.have.length(2);
      expect(await sim.faults.clearFaults({})).to.deep.equal({ cleared: 3 });
      expect(await sim.faults.listFaults({})).to.deep.equal({ faults: [], unavailableUntil: undefined });
      await storage.getArray({});
      await storage.listPools({});
    });
  });

  describe('health', () => {
    it('Health Check answers SERVING for the StorageArrayService and the FaultInjectionService, NOT_FOUND for an unknown service', async () => {
      const health = connect(HealthClient, sim.served.running.address, { timeoutMs: 5000 });
      try {
        expect(await health.check({ service: STORAGE })).to.deep.equal({ status: Serving.SERVING });
        expect(await health.check({ service: 'passthru.storage.v1.FaultInjectionService' })).to.deep.equal({ status: Serving.SERVING });
        expect(await health.check({ service: '' })).to.deep.equal({ status: Serving.SERVING });
        await expectStatus(health.check({ service: 'passthru.storage.v1.Nope' }), Code.NOT_FOUND);
      } finally {
        health.close();
      }
    });
  });
});

describe('storage-sim over gRPC with fault injection disabled', function () {
  this.timeout(20_000);
  let sim: Sim;
  before(async () => {
    sim = await startSim(false);
  });
  after(async () => {
    await sim.close();
  });

  it('every FaultInjectionService RPC is FAILED_PRECONDITION naming --enable-faults, and GetArray says faults are off', async () => {
    const message = /fault injection is disabled on this array: start storage-sim with --enable-faults/;
    await expectStatus(sim.faults.injectFault(injectReq({})), Code.FAILED_PRECONDITION, message);
    await expectStatus(sim.faults.setUnavailable({ durationMs: 1000 }), Code.FAILED_PRECONDITION, message);
    await expectStatus(sim.faults.listFaults({}), Code.FAILED_PRECONDITION, message);
    await expectStatus(sim.faults.clearFaults({}), Code.FAILED_PRECONDITION, message);
    expect((await sim.storage.getArray({})).faultsEnabled).to.equal(false);
    await sim.storage.getArray({});
  });

  it('a restarted server on the same data dir still has the LUN, its map, its data and its replay record', async () => {
    const lun = (await sim.storage.createLun(createLunReq({ path: '/vol/restart/l1', requestId: 'restart-1' }))).lun!;
    await sim.storage.createIgroup(createIgroupReq({ name: 'restart', initiators: [A] }));
    await sim.storage.mapLun(mapReq({ lun: lun.uuid, igroup: 'restart', lunId: 12 }));
    await sim.storage.writeBlocks(writeReq({ lun: lun.uuid, offsetBytes: BigInt(MiB), data: pattern(4096, 11) }));
    const before = arrayState(sim.served.array);
    sim.storage.close();
    sim.faults.close();
    await sim.served.close(1000);
    sim = await serveOn(sim.dir);
    const { served, storage } = sim;
    expect(arrayState(served.array)).to.deep.equal(before);
    expect((await storage.readBlocks(readReq({ lun: '/vol/restart/l1', offsetBytes: BigInt(MiB), lengthBytes: 4096 }))).data).to.deep.equal(pattern(4096, 11));
    expect((await storage.listLunMaps(listMapsReq({ lun: lun.serial }))).maps.map((m) => m.lunId)).to.deep.equal([12]);
    expect((await storage.createLun(createLunReq({ path: '/vol/restart/l1', requestId: 'restart-1' }))).lun!.uuid).to.equal(lun.uuid);
  });
});
