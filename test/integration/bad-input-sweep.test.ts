/**
 * A sweep of generated malformed requests (fast-check) across every RPC of every service we
 * serve that takes input: storage-sim's StorageArrayService and FaultInjectionService,
 * host-agent's GuestService (on a VM's socket) and AdminService, and the standard health
 * service. Each request is a well-formed one with one field made malformed (a value with a
 * control character, one too long, an enum no one defined, a size or offset that breaks the
 * rules). Each must be refused with the status DESIGN.md gives malformed input
 * (INVALID_ARGUMENT; NOT_FOUND where any text could name a thing, such as a group), never
 * with INTERNAL or UNKNOWN, and must change nothing: the array's and the cluster's whole
 * state is compared before and after each RPC's batch. The seed is printed on a failure.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import fc from 'fast-check';
import { connect } from '../../common/client.js';
import { HealthClient } from '../../proto/gen/grpc/health/v1/health.js';
import { DiskSharing, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { IgroupProtocol, OsType, Provisioning } from '../../proto/gen/passthru/storage/v1/storage.js';
import { arrayState } from '../support/array-state.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';

const MiB = 1024 * 1024;
const RUNS = 5;
const SEED = Number(process.env.SWEEP_SEED ?? Date.now() % 2 ** 31);

// ---------------------------------------------------------------- malformed values

/** Text that no name, path, id or reference accepts: it always holds a control character. */
const controlText = fc
  .tuple(fc.string({ maxLength: 20 }), fc.constantFrom('\n', '\t', '\u0000', '\u0007', '\u001b', '\u007f'), fc.string({ maxLength: 20 }))
  .map(([a, b, c]) => a + b + c);
/** Far longer than any field allows. */
const longText = fc.integer({ min: 5000, max: 20_000 }).map((n) => 'x'.repeat(n));
const badText = fc.oneof(controlText, longText);
/** An enum number no one defined. */
const badEnum = fc.integer({ min: 50, max: 100_000 });
/** A size no disk or LUN can have. */
const badSize = fc.oneof(fc.bigInt({ min: 1n, max: 511n }), fc.bigInt({ min: 4n * 1024n * 1024n + 1n, max: 4n * 1024n * 1024n + 511n }), fc.constant(2n ** 63n), fc.constant(2n ** 64n - 1n));
/** An offset not on a 512-byte boundary. */
const badOffset = fc.bigInt({ min: 1n, max: 1n << 40n }).filter((n) => n % 512n !== 0n);
/** A length that is not a whole number of sectors, or more than 1 MiB. */
const badLength = fc.oneof(fc.integer({ min: 1, max: 511 }), fc.integer({ min: MiB + 1, max: 64 * MiB }), fc.integer({ min: 513, max: 4095 }).filter((n) => n % 512 !== 0));
/** A page token no server gave out. */
const badToken = fc.oneof(controlText, fc.string({ minLength: 1, maxLength: 30 }).map((s) => `forged:${s}`));

type Outcome = { code: number; details: string } | 'ok';

async function outcome(p: Promise<unknown>): Promise<Outcome> {
  try {
    await p;
    return 'ok';
  } catch (err) {
    const e = err as ServiceError;
    return { code: e.code, details: e.details };
  }
}

/** A server stream's first answer: its status if it fails before a message. */
function streamOutcome(stream: NodeJS.EventEmitter & { cancel(): void }): Promise<Outcome> {
  return new Promise((resolve) => {
    stream.on('data', () => {
      stream.cancel();
      resolve('ok');
    });
    stream.on('error', (e: ServiceError) => resolve({ code: e.code, details: e.details }));
  });
}

interface Sweep<Req> {
  rpc: string;
  /** A request with one field malformed. */
  gen: fc.Arbitrary<Req>;
  call(req: Req): Promise<Outcome>;
  /** The statuses right for it (INVALID_ARGUMENT unless said). */
  codes?: Code[];
}

/** One field of `base` replaced by a malformed value, each field's turn chosen by fast-check. */
function oneBadField<Req extends object>(base: Req, bad: { [K in keyof Req]?: fc.Arbitrary<Req[K]> }): fc.Arbitrary<Req> {
  const fields = Object.keys(bad) as (keyof Req)[];
  return fc.oneof(...fields.map((f) => (bad[f] as fc.Arbitrary<Req[typeof f]>).map((v) => ({ ...base, [f]: v }) as Req)));
}

describe('bad-input sweep: generated malformed requests on every RPC of every service', function () {
  this.timeout(120_000);
  let c: TestCluster;
  let serial = '';
  let lunUuid = '';
  let opId = '';
  const tried: Record<string, number> = {};

  /** Everything a malformed request could have changed. */
  const world = async (): Promise<unknown> => ({
    array: arrayState(c.array.array),
    faults: await c.faults.listFaults({}),
    groups: (await c.admin.listGroups({ kind: 0 })).groups,
    vms: (await c.admin.listVms({ node: '' })).vms,
    nodes: (await c.admin.listNodes({})).nodes,
    disks: (await c.admin.listDisks({ vmId: '' })).disks,
    ops: (await c.admin.listOperations({ vmId: '', state: 0, pageSize: 1000, pageToken: '' })).operations.map((o) => [o.id, o.state]),
  });

  before(async () => {
    c = await startCluster();
    const op = (await c.guest('vm1').createDisk({ requestId: 'sweep-1', mountPath: 'E:', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })).operation!;
    expect((await c.settle(op.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    opId = op.id;
    const [disk] = (await c.guest('vm1').listDisks({})).disks;
    serial = disk!.serial;
    lunUuid = (await c.storage.getLun({ lun: serial })).lun!.uuid;
  });

  after(async () => {
    const total = Object.values(tried).reduce((a, b) => a + b, 0);
    process.stdout.write(`      (${total} malformed requests over ${Object.keys(tried).length} RPCs, seed ${SEED})\n`);
    await c.close();
  });

  const sweeps = (): Sweep<any>[] => {
    const s = c.storage;
    const f = c.faults;
    const g = c.guest('vm1');
    const a = c.admin;
    const addr = { controller: 0, location: 0 };
    const rid = { requestId: fc.oneof(badText, fc.constant('has space')) };
    return [
      // storage-sim: StorageArrayService
      { rpc: 'storage CreateLun', gen: oneBadField({ requestId: '', path: '/vol/sweep/l1', sizeBytes: BigInt(8 * MiB), osType: OsType.OS_TYPE_LINUX, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' }, { ...rid, path: badText, sizeBytes: badSize, osType: badEnum, provisioning: badEnum, comment: longText, pool: badText }), call: (r) => outcome(s.createLun(r)) },
      { rpc: 'storage GetLun', gen: oneBadField({ lun: serial }, { lun: badText }), call: (r) => outcome(s.getLun(r)) },
      { rpc: 'storage ListLuns', gen: oneBadField({ pageSize: 0, pageToken: '', pathPrefix: '' }, { pageSize: fc.integer({ min: 1001, max: 1e9 }), pageToken: badToken, pathPrefix: badText }), call: (r) => outcome(s.listLuns(r)) },
      { rpc: 'storage ResizeLun', gen: oneBadField({ requestId: '', lun: serial, sizeBytes: BigInt(64 * MiB) }, { ...rid, lun: badText, sizeBytes: badSize }), call: (r) => outcome(s.resizeLun(r)) },
      { rpc: 'storage SetLunState', gen: oneBadField({ requestId: '', lun: serial, state: 2 }, { ...rid, lun: badText, state: badEnum }), call: (r) => outcome(s.setLunState(r)) },
      { rpc: 'storage DeleteLun', gen: oneBadField({ requestId: '', lun: serial, force: true }, { ...rid, lun: badText }), call: (r) => outcome(s.deleteLun(r)) },
      { rpc: 'storage CreateIgroup', gen: oneBadField({ requestId: '', name: 'sweep_ig', protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_LINUX, initiators: [] as string[] }, { ...rid, name: badText, protocol: badEnum, osType: badEnum, initiators: badText.map((t) => [t]) }), call: (r) => outcome(s.createIgroup(r)) },
      { rpc: 'storage GetIgroup', gen: oneBadField({ name: 'node1' }, { name: badText }), call: (r) => outcome(s.getIgroup(r)) },
      { rpc: 'storage ListIgroups', gen: oneBadField({ pageSize: 0, pageToken: '', initiator: '' }, { pageSize: fc.integer({ min: 1001, max: 1e9 }), pageToken: badToken, initiator: badText }), call: (r) => outcome(s.listIgroups(r)) },
      { rpc: 'storage AddInitiators', gen: oneBadField({ requestId: '', igroup: 'node1', initiators: ['iqn.2026-11.dev.passthru:extra'] }, { ...rid, igroup: badText, initiators: badText.map((t) => [t]) }), call: (r) => outcome(s.addInitiators(r)) },
      { rpc: 'storage RemoveInitiators', gen: oneBadField({ requestId: '', igroup: 'node1', initiators: ['iqn.2026-11.dev.passthru:node1'], force: true }, { ...rid, igroup: badText, initiators: badText.map((t) => [t]) }), call: (r) => outcome(s.removeInitiators(r)) },
      { rpc: 'storage DeleteIgroup', gen: oneBadField({ requestId: '', name: 'node3' }, { ...rid, name: badText }), call: (r) => outcome(s.deleteIgroup(r)) },
      { rpc: 'storage MapLun', gen: oneBadField({ requestId: '', lun: serial, igroup: 'node1', igroups: [] as string[], lunId: 9 as number | undefined }, { ...rid, lun: badText, igroup: badText, lunId: fc.integer({ min: 4096, max: 2 ** 31 }), igroups: badText.map((t) => [t]) }), call: (r) => outcome(s.mapLun(r.igroups.length > 0 ? { ...r, igroup: '' } : r)) },
      { rpc: 'storage UnmapLun', gen: oneBadField({ requestId: '', lun: serial, igroup: 'node1', igroups: [] as string[] }, { ...rid, lun: badText, igroup: badText }), call: (r) => outcome(s.unmapLun(r)) },
      { rpc: 'storage ListLunMaps', gen: oneBadField({ lun: '', igroup: '', pageSize: 0, pageToken: '' }, { lun: badText, igroup: badText, pageSize: fc.integer({ min: 1001, max: 1e9 }), pageToken: badToken }), call: (r) => outcome(s.listLunMaps(r)) },
      { rpc: 'storage ReadBlocks', gen: oneBadField({ lun: serial, initiator: 'iqn.2026-11.dev.passthru:node1', offsetBytes: 0n, lengthBytes: 512 }, { lun: badText, initiator: badText, offsetBytes: badOffset, lengthBytes: badLength }), call: (r) => outcome(s.readBlocks(r)) },
      { rpc: 'storage WriteBlocks', gen: oneBadField({ requestId: '', lun: serial, initiator: 'iqn.2026-11.dev.passthru:node1', offsetBytes: 0n, data: Buffer.alloc(512, 0xab) }, { ...rid, lun: badText, initiator: badText, offsetBytes: badOffset, data: badLength.filter((n) => n < 2 * MiB).map((n) => Buffer.alloc(n, 0xab)) }), call: (r) => outcome(s.writeBlocks(r)) },
      { rpc: 'storage RegisterReservationKey', gen: oneBadField({ requestId: '', lun: serial, initiator: 'iqn.2026-11.dev.passthru:node2', key: '0x77' }, { ...rid, lun: badText, initiator: badText, key: badText }), call: (r) => outcome(s.registerReservationKey(r)) },
      { rpc: 'storage Reserve', gen: oneBadField({ requestId: '', lun: serial, initiator: 'iqn.2026-11.dev.passthru:node2', key: '0x77', type: 1 }, { ...rid, lun: badText, key: badText, type: badEnum }), call: (r) => outcome(s.reserve(r)) },
      { rpc: 'storage ReleaseReservation', gen: oneBadField({ requestId: '', lun: serial, initiator: 'iqn.2026-11.dev.passthru:node1', key: '0x1' }, { ...rid, lun: badText, initiator: badText, key: badText }), call: (r) => outcome(s.releaseReservation(r)) },
      { rpc: 'storage PreemptReservation', gen: oneBadField({ requestId: '', lun: serial, initiator: 'iqn.2026-11.dev.passthru:node2', key: '0x77', preemptKey: '0x1', type: 1 }, { ...rid, lun: badText, key: badText, preemptKey: badText, type: badEnum }), call: (r) => outcome(s.preemptReservation(r)) },
      { rpc: 'storage ReadReservationKeys', gen: oneBadField({ lun: serial }, { lun: badText }), call: (r) => outcome(s.readReservationKeys(r)) },
      { rpc: 'storage ReadReservation', gen: oneBadField({ lun: serial }, { lun: badText }), call: (r) => outcome(s.readReservation(r)) },
      // storage-sim: FaultInjectionService
      { rpc: 'faults InjectFault', gen: oneBadField({ method: 'GetArray', count: 1, code: 14, message: '', delayMs: 0, timing: 1 }, { method: badText, code: fc.integer({ min: 17, max: 1e6 }), delayMs: fc.integer({ min: 600_001, max: 2 ** 31 }), timing: badEnum, count: fc.integer({ min: 1_000_001, max: 2 ** 31 }) }), call: (r) => outcome(f.injectFault(r)) },
      { rpc: 'faults SetUnavailable', gen: oneBadField({ durationMs: 0 }, { durationMs: fc.integer({ min: 600_001, max: 2 ** 31 }) }), call: (r) => outcome(f.setUnavailable(r)) },
      // host-agent: GuestService on vm1's endpoint (a Windows guest)
      { rpc: 'guest CreateDisk', gen: oneBadField({ requestId: 'sweep-c', mountPath: 'G:', sizeBytes: BigInt(8 * MiB), sharing: 0 }, { requestId: fc.oneof(badText, fc.constant('')), mountPath: badText, sizeBytes: badSize, sharing: badEnum }), call: (r) => outcome(g.createDisk(r)) },
      { rpc: 'guest ConnectDisk', gen: oneBadField({ requestId: 'sweep-k', mountPath: 'H:', lun: serial }, { requestId: fc.oneof(badText, fc.constant('')), mountPath: badText, lun: fc.oneof(longText, fc.constant('')) }), call: (r) => outcome(g.connectDisk(r)) },
      { rpc: 'guest RemoveDisk', gen: oneBadField({ requestId: 'sweep-r', mountPath: 'E:', deleteLun: true }, { requestId: fc.oneof(badText, fc.constant('')), mountPath: badText }), call: (r) => outcome(g.removeDisk(r)) },
      { rpc: 'guest GetOperation', gen: fc.constant({ operationId: '' }), call: (r) => outcome(g.getOperation(r)) },
      { rpc: 'guest WatchOperation', gen: fc.constant({ operationId: '' }), call: (r) => streamOutcome(g.raw.watchOperation(r)) },
      { rpc: 'guest ReportMount', gen: oneBadField({ requestId: 'sweep-m', mountPath: 'E:', serial, volumeId: '0123456789abcdef0123456789abcdef', volumeLabel: 'x' }, { requestId: fc.oneof(badText, fc.constant('')), mountPath: badText, volumeId: badText, volumeLabel: longText }), call: (r) => outcome(g.reportMount(r)) },
      { rpc: 'guest ReportUnmount', gen: oneBadField({ requestId: 'sweep-u', mountPath: 'E:' }, { requestId: fc.oneof(badText, fc.constant('')), mountPath: badText }), call: (r) => outcome(g.reportUnmount(r)) },
      { rpc: 'guest ReadDisk', gen: oneBadField({ address: addr as typeof addr | undefined, offsetBytes: 0n, lengthBytes: 512 }, { address: fc.constant(undefined), offsetBytes: badOffset, lengthBytes: badLength }), call: (r) => outcome(g.readDisk(r)) },
      { rpc: 'guest WriteDisk', gen: oneBadField({ requestId: '', address: addr as typeof addr | undefined, offsetBytes: 0n, data: Buffer.alloc(512, 0xcd) }, { requestId: badText, address: fc.constant(undefined), offsetBytes: badOffset, data: badLength.filter((n) => n < 2 * MiB).map((n) => Buffer.alloc(n, 0xcd)) }), call: (r) => outcome(g.writeDisk(r)) },
      // host-agent: AdminService
      { rpc: 'admin CreateVm', gen: oneBadField({ requestId: 'sweep-vm', id: 'vm9', name: 'nine', guestOs: 2, ha: false, node: 'node1', scsiControllers: 1, locationsPerController: 8 }, { requestId: fc.oneof(badText, fc.constant('')), id: badText, name: badText, guestOs: badEnum, node: badText, scsiControllers: fc.integer({ min: 5, max: 1e6 }), locationsPerController: fc.integer({ min: 65, max: 1e6 }) }), call: (r) => outcome(a.createVm(r)) },
      { rpc: 'admin StartVm', gen: oneBadField({ requestId: 'sweep-s', vmId: 'vm1' }, { requestId: fc.oneof(badText, fc.constant('')), vmId: badText }), call: (r) => outcome(a.startVm(r)) },
      { rpc: 'admin StopVm', gen: oneBadField({ requestId: 'sweep-t', vmId: 'vm1' }, { requestId: fc.oneof(badText, fc.constant('')), vmId: badText }), call: (r) => outcome(a.stopVm(r)) },
      { rpc: 'admin SetHostCapabilities', gen: oneBadField({ requestId: 'sweep-h', node: 'node1', hypervisorEnabled: false as boolean | undefined, hotAddSupported: undefined as boolean | undefined }, { requestId: fc.oneof(badText, fc.constant('')), node: badText }), call: (r) => outcome(a.setHostCapabilities(r)) },
      { rpc: 'admin AddAvailableDisk', gen: oneBadField({ requestId: 'sweep-a', lun: '/vol/passthru/none' }, { requestId: fc.oneof(badText, fc.constant('')), lun: fc.oneof(badText, fc.constant('')) }), call: (r) => outcome(a.addAvailableDisk(r)) },
      { rpc: 'admin RemoveAvailableDisk', gen: oneBadField({ requestId: 'sweep-b', lun: serial }, { requestId: fc.oneof(badText, fc.constant('')), lun: fc.oneof(badText, fc.constant('')) }), call: (r) => outcome(a.removeAvailableDisk(r)) },
      { rpc: 'admin ListOperations', gen: oneBadField({ vmId: '', state: 0, pageSize: 0, pageToken: '' }, { vmId: badText, state: badEnum, pageSize: fc.integer({ min: 1001, max: 1e9 }), pageToken: badToken }), call: (r) => outcome(a.listOperations(r)) },
      { rpc: 'admin GetOperation', gen: fc.constant({ operationId: '' }), call: (r) => outcome(a.getOperation(r)) },
      { rpc: 'admin WatchOperation', gen: fc.constant({ operationId: '' }), call: (r) => streamOutcome(a.raw.watchOperation(r)) },
      { rpc: 'admin ListGroups', gen: oneBadField({ kind: 0 }, { kind: badEnum }), call: (r) => outcome(a.listGroups(r)) },
      { rpc: 'admin ListVms', gen: oneBadField({ node: '' }, { node: badText }), call: (r) => outcome(a.listVms(r)) },
      { rpc: 'admin ListDisks', gen: oneBadField({ vmId: '' }, { vmId: badText }), call: (r) => outcome(a.listDisks(r)) },
      { rpc: 'admin FailNode', gen: oneBadField({ requestId: 'sweep-f', node: 'node3' }, { requestId: fc.oneof(badText, fc.constant('')), node: fc.oneof(badText, fc.constant('')) }), call: (r) => outcome(a.failNode(r)) },
      { rpc: 'admin RecoverNode', gen: oneBadField({ requestId: 'sweep-g', node: 'node3' }, { requestId: fc.oneof(badText, fc.constant('')), node: fc.oneof(badText, fc.constant('')) }), call: (r) => outcome(a.recoverNode(r)) },
      // Any text may name a group: one that is not there is NOT_FOUND.
      { rpc: 'admin MoveGroup', gen: oneBadField({ requestId: 'sweep-mv', group: 'Virtual Machine web1', node: 'node2' }, { requestId: fc.oneof(badText, fc.constant('')), group: fc.oneof(badText, fc.constant('')), node: fc.oneof(badText, fc.constant('')) }), call: (r) => outcome(a.moveGroup(r)), codes: [Code.INVALID_ARGUMENT, Code.NOT_FOUND] },
      // The standard health service: a service it does not know.
      { rpc: 'health Check', gen: fc.record({ service: badText }), call: (r) => outcome(healthCheck(c, r)), codes: [Code.NOT_FOUND] },
    ];
  };

  it('every generated malformed request is refused with the status for malformed input, with a message, and changes nothing', async () => {
    const list = sweeps();
    let seed = SEED;
    for (const sweep of list) {
      const before = await world();
      const samples = fc.sample(sweep.gen, { numRuns: RUNS, seed: seed++ });
      for (const req of samples) {
        const got = await sweep.call(req);
        const shown = JSON.stringify(req, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : Buffer.isBuffer(v) ? `<${v.length} bytes>` : typeof v === 'string' && v.length > 60 ? `${v.slice(0, 60)}…(${v.length})` : v));
        expect(got, `${sweep.rpc} ${shown} (seed ${SEED}) was accepted`).to.not.equal('ok');
        const { code, details } = got as { code: number; details: string };
        expect(Code[code], `${sweep.rpc} ${shown}: ${details} (seed ${SEED})`).to.be.oneOf((sweep.codes ?? [Code.INVALID_ARGUMENT]).map((x) => Code[x]));
        expect(details, `${sweep.rpc}: a message a person can act on`).to.be.a('string').with.length.greaterThan(10);
        tried[sweep.rpc] = (tried[sweep.rpc] ?? 0) + 1;
      }
      expect(await world(), `${sweep.rpc} changed nothing (seed ${SEED})`).to.deep.equal(before);
    }
    expect(Object.values(tried).reduce((x, y) => x + y, 0)).to.be.at.least(200);
    // vm1's disk and the operation that made it are still there, untouched.
    expect((await c.guest('vm1').listDisks({})).disks.map((d) => d.serial)).to.deep.equal([serial]);
    expect((await c.admin.getOperation({ operationId: opId })).operation!.state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    expect(lunUuid).to.not.equal('');
    expect(await c.violations()).to.deep.equal([]);
  });
});

function healthCheck(c: TestCluster, req: { service: string }): Promise<unknown> {
  const h = connect(HealthClient, c.host.admin.address);
  return h.check(req).finally(() => h.close());
}
