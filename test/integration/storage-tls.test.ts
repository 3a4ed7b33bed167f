/**
 * storage-sim under mTLS, served in-process on 127.0.0.1:0 with a CA from `passthru pki
 * init`: who gets in (no certificate, another CA's, the array's own role expected of it),
 * reflection and health for a client with a certificate, and the roles: host nodes and
 * admins change the array, a host node does block I/O and reservations only as the initiator
 * its certificate binds (gRPC and block portal alike), FaultInjectionService is the admin's.
 */
import { credentials, Metadata, status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type PromiseClient } from '../../common/client.js';
import type { Role } from '../../common/identity.js';
import { silentLogger } from '../../common/logging.js';
import { RemoteStatusError } from '../../common/status.js';
import { grpcClientTls, type TlsMaterial } from '../../common/tls.js';
import { unaryClient } from '../../common/unary-client.js';
import { PortalSession } from '../../host-agent/portal-client.js';
import { HealthCheckResponse_ServingStatus as Serving, HealthClient } from '../../proto/gen/grpc/health/v1/health.js';
import {
  FaultInjectionServiceClient,
  IgroupProtocol,
  OsType,
  Provisioning,
  ReservationType,
  StorageArrayServiceClient,
  StorageArrayServiceService,
} from '../../proto/gen/passthru/storage/v1/storage.js';
import { serveArray, type ServingArray } from '../../storage-sim/serve.js';
import { makePki, type TestPki } from '../support/pki.js';
import { ReflectionClient } from '../support/reflection-client.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;
const N1 = 'iqn.2026-11.dev.passthru:node1';
const N2 = 'iqn.2026-11.dev.passthru:node2';
const KEY1 = '1111';
const KEY2 = '2222';

type Storage = PromiseClient<InstanceType<typeof StorageArrayServiceClient>>;
type Faults = PromiseClient<InstanceType<typeof FaultInjectionServiceClient>>;

async function portalRefusal(p: Promise<unknown>): Promise<RemoteStatusError> {
  try {
    await p;
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(RemoteStatusError);
    return err as RemoteStatusError;
  }
  throw new Error('expected the portal to refuse, but it let the session in');
}

describe('storage-sim with mTLS', function () {
  this.timeout(30_000);
  let pki: TestPki;
  let other: TestPki;
  let dir: string;
  let sim: ServingArray;
  let lun: string;
  const closers: { close(): void }[] = [];

  const storageAs = (tls: TlsMaterial | undefined, serverRole: Role | undefined = 'array'): Storage => {
    const c = connect(StorageArrayServiceClient, sim.running.address, { timeoutMs: 5000, tls: tls && grpcClientTls(tls, sim.running.address, serverRole) });
    closers.push(c);
    return c;
  };
  const faultsAs = (tls: TlsMaterial): Faults => {
    const c = connect(FaultInjectionServiceClient, sim.running.address, { timeoutMs: 5000, tls: grpcClientTls(tls, sim.running.address, 'array') });
    closers.push(c);
    return c;
  };
  const portalAs = async (name: string, initiator: string): Promise<PortalSession> => {
    const s = await PortalSession.open(sim.portal.address, initiator, 3000, { tls: pki.tls(name), serverRole: 'array' });
    closers.push(s);
    return s;
  };

  before(async () => {
    [pki, other] = await Promise.all([
      makePki([
        { name: 'node1', initiator: N1 },
        { name: 'node2', initiator: N2 },
      ]),
      makePki([{ name: 'node1', initiator: N1 }], 'passthru-pki-other-'),
    ]);
    dir = mkdtempSync(join(tmpdir(), 'passthru-tls-sim-'));
    sim = await serveArray({ listen: '127.0.0.1:0', dataDir: dir, logger: silentLogger(), enableFaults: true, tls: pki.tls('array') });
    // The host agent's part, done as node1 would: igroups, a LUN mapped to both nodes.
    const node1 = storageAs(pki.tls('nodes/node1'));
    for (const [name, initiator] of [['node1', N1], ['node2', N2]] as const) {
      await node1.createIgroup({ requestId: '', name, protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_HYPER_V, initiators: [initiator] });
    }
    const created = await node1.createLun({ requestId: '', path: '/vol/tls/shared', sizeBytes: BigInt(8 * MiB), osType: OsType.OS_TYPE_HYPER_V, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' });
    lun = created.lun!.uuid;
    await node1.mapLun({ requestId: '', lun, igroup: '', igroups: ['node1', 'node2'], lunId: 0 });
  });

  afterEach(() => {
    for (const c of closers.splice(0)) c.close();
  });

  after(async () => {
    await sim?.close(1000);
    rmSync(dir, { recursive: true, force: true });
    pki?.remove();
    other?.remove();
  });

  describe('who gets in', () => {
    it('refuses a plaintext client', async () => {
      await expectStatus(storageAs(undefined).getArray({}), Code.UNAVAILABLE);
    });

    it('refuses a TLS client without a certificate', async () => {
      const ca = pki.tls('admin').ca;
      const c = new StorageArrayServiceClient(`localhost:${sim.running.port}`, credentials.createSsl(ca));
      try {
        const err = await new Promise<{ code: number }>((resolve) => c.getArray({}, new Metadata(), { deadline: Date.now() + 5000 }, (e) => resolve(e ?? { code: Code.OK })));
        expect(Code[err.code]).to.equal('UNAVAILABLE');
      } finally {
        c.close();
      }
    });

    it('refuses a client certificate from another CA (gRPC and portal)', async () => {
      // The client trusts this array's CA; its own certificate is another CA's.
      const foreign = { ...other.tls('nodes/node1'), ca: pki.tls('admin').ca };
      await expectStatus(storageAs(foreign).getArray({}), Code.UNAVAILABLE);
      await expectStatus(storageAs({ ...other.tls('admin'), ca: foreign.ca }).listLuns({ pageSize: 10, pageToken: '', pathPrefix: '' }), Code.UNAVAILABLE);
      const e = await portalRefusal(PortalSession.open(sim.portal.address, N1, 3000, { tls: foreign, serverRole: 'array' }));
      expect(e.status.code).to.equal(Code.UNAVAILABLE);
    });

    it('a client refuses an array whose CA it does not trust', async () => {
      await expectStatus(storageAs(other.tls('admin')).getArray({}), Code.UNAVAILABLE, /certificate/);
    });

    it('a client that expects the host agent refuses the array (its certificate carries another role)', async () => {
      const err = await expectStatus(storageAs(pki.tls('admin'), 'host-agent').getArray({}), Code.UNAVAILABLE);
      expect(err.details).to.match(/role array|not the host-agent/);
    });

    it('the unary client of the host agent and the block portal refuse another CA too', async () => {
      const c = unaryClient(StorageArrayServiceService, sim.running.address, { timeoutMs: 3000, tls: { tls: other.tls('nodes/node1'), serverRole: 'array' } });
      closers.push(c);
      await expectStatus(c.getArray({}), Code.UNAVAILABLE);
      const e = await portalRefusal(PortalSession.open(sim.portal.address, N1, 3000, { tls: other.tls('nodes/node1'), serverRole: 'array' }));
      expect(e.status.code).to.equal(Code.UNAVAILABLE);
    });

    it('refuses a plaintext portal session', async () => {
      const e = await portalRefusal(PortalSession.open(sim.portal.address, N1, 3000));
      expect(e.status.code).to.equal(Code.UNAVAILABLE);
    });

    it('serves health and reflection (v1 and v1alpha, described strictly) to a client with a certificate', async () => {
      const tls = pki.tls('nodes/node2');
      const health = connect(HealthClient, sim.running.address, { timeoutMs: 5000, tls: grpcClientTls(tls, sim.running.address, 'array') });
      closers.push(health);
      expect((await health.check({ service: '' })).status).to.equal(Serving.SERVING);
      expect((await health.check({ service: 'passthru.storage.v1.StorageArrayService' })).status).to.equal(Serving.SERVING);
      for (const version of ['v1', 'v1alpha'] as const) {
        const r = new ReflectionClient(sim.running.address, version, grpcClientTls(tls, sim.running.address, 'array'));
        closers.push(r);
        expect(await r.listServices()).to.include.members(['passthru.storage.v1.StorageArrayService', 'passthru.storage.v1.FaultInjectionService', 'grpc.health.v1.Health']);
        const d = await r.describe('passthru.storage.v1.StorageArrayService');
        expect(d.methods.map((m) => m.name)).to.include.members(['CreateLun', 'WriteBlocks', 'Reserve']);
      }
    });

    it('plaintext reflection is refused too', async () => {
      const r = new ReflectionClient(sim.running.address, 'v1');
      closers.push(r);
      let failed: unknown;
      try {
        await r.listServices();
      } catch (err) {
        failed = err;
      }
      expect(failed, 'reflection over plaintext must fail').to.not.equal(undefined);
    });
  });

  describe('roles', () => {
    it('reads are open to every passthru certificate, changes only to host nodes and admins', async () => {
      for (const name of ['array', 'host-agent', 'admin', 'nodes/node1']) {
        expect((await storageAs(pki.tls(name)).getLun({ lun })).lun!.uuid, name).to.equal(lun);
      }
      for (const name of ['array', 'host-agent']) {
        const err = await expectStatus(
          storageAs(pki.tls(name)).createLun({ requestId: '', path: `/vol/tls/by_${name.replace('-', '_')}`, sizeBytes: BigInt(4 * MiB), osType: OsType.OS_TYPE_LINUX, provisioning: 0, comment: '', pool: '' }),
          Code.PERMISSION_DENIED,
          'ROLE_REQUIRED',
        );
        expect(err.details).to.match(/CreateLun changes the array: it needs a host-node or an admin certificate; the caller is/);
      }
      const admin = storageAs(pki.tls('admin'));
      const made = await admin.createLun({ requestId: '', path: '/vol/tls/by_admin', sizeBytes: BigInt(4 * MiB), osType: OsType.OS_TYPE_LINUX, provisioning: 0, comment: '', pool: '' });
      await admin.deleteLun({ requestId: '', lun: made.lun!.uuid, force: false });
      // Nothing the refused callers asked for exists.
      const left = await admin.listLuns({ pageSize: 100, pageToken: '', pathPrefix: '/vol/tls/' });
      expect(left.luns.map((l) => l.path)).to.deep.equal(['/vol/tls/shared']);
    });

    it('block I/O acts as the initiator of the caller\'s node certificate: empty means its own, another node\'s is refused', async () => {
      const node1 = storageAs(pki.tls('nodes/node1'));
      const data = Buffer.alloc(512, 0x41);
      expect((await node1.writeBlocks({ requestId: '', lun, initiator: '', offsetBytes: 0n, data })).writtenBytes).to.equal(512);
      // Its own initiator, spelled in capitals, is still its own.
      expect((await node1.writeBlocks({ requestId: '', lun, initiator: N1.toUpperCase(), offsetBytes: 512n, data })).writtenBytes).to.equal(512);
      const err = await expectStatus(node1.writeBlocks({ requestId: '', lun, initiator: N2, offsetBytes: 1024n, data: Buffer.alloc(512, 0x42) }), Code.PERMISSION_DENIED, 'INITIATOR_NOT_YOURS');
      expect(err.details).to.contain(N2).and.contain('node1');
      await expectStatus(node1.readBlocks({ lun, initiator: N2, offsetBytes: 0n, lengthBytes: 512 }), Code.PERMISSION_DENIED, 'INITIATOR_NOT_YOURS');
      // The refused write changed nothing.
      const back = await node1.readBlocks({ lun, initiator: '', offsetBytes: 1024n, lengthBytes: 512 });
      expect(back.data.equals(Buffer.alloc(512))).to.equal(true);
      // An admin has no initiator: block I/O needs a node's certificate.
      await expectStatus(storageAs(pki.tls('admin')).readBlocks({ lun, initiator: N1, offsetBytes: 0n, lengthBytes: 512 }), Code.PERMISSION_DENIED, 'ROLE_REQUIRED');
    });

    it('reservation commands too: a node cannot register, reserve or preempt as another, and fencing holds', async () => {
      const node1 = storageAs(pki.tls('nodes/node1'));
      const node2 = storageAs(pki.tls('nodes/node2'));
      const wrotl = ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY;
      await node1.registerReservationKey({ requestId: '', lun, initiator: '', key: KEY1 });
      await node1.reserve({ requestId: '', lun, initiator: '', key: KEY1, type: wrotl });
      // node2 pretending to be node1, or taking node1's key as node1: refused, nothing changes.
      await expectStatus(node2.registerReservationKey({ requestId: '', lun, initiator: N1, key: KEY2 }), Code.PERMISSION_DENIED, 'INITIATOR_NOT_YOURS');
      await expectStatus(node2.releaseReservation({ requestId: '', lun, initiator: N1, key: KEY1 }), Code.PERMISSION_DENIED, 'INITIATOR_NOT_YOURS');
      await expectStatus(node2.preemptReservation({ requestId: '', lun, initiator: N1, key: KEY1, preemptKey: KEY1, type: wrotl }), Code.PERMISSION_DENIED, 'INITIATOR_NOT_YOURS');
      await expectStatus(storageAs(pki.tls('admin')).reserve({ requestId: '', lun, initiator: N1, key: KEY1, type: wrotl }), Code.PERMISSION_DENIED, 'ROLE_REQUIRED');
      expect((await node2.readReservation({ lun })).holderInitiator).to.equal(N1);
      // node2 as itself fences node1: node1's writes are refused by the reservation.
      await node2.registerReservationKey({ requestId: '', lun, initiator: '', key: KEY2 });
      await node2.preemptReservation({ requestId: '', lun, initiator: '', key: KEY2, preemptKey: KEY1, type: wrotl });
      expect((await node1.readReservation({ lun })).holderInitiator).to.equal(N2);
      await expectStatus(node1.writeBlocks({ requestId: '', lun, initiator: '', offsetBytes: 0n, data: Buffer.alloc(512, 0x43) }), Code.FAILED_PRECONDITION, /reservation conflict/);
      await node2.registerReservationKey({ requestId: '', lun, initiator: '', key: '0' });
    });

    it('FaultInjectionService is the admin\'s alone', async () => {
      for (const name of ['nodes/node1', 'array', 'host-agent']) {
        const err = await expectStatus(faultsAs(pki.tls(name)).listFaults({}), Code.PERMISSION_DENIED, 'ROLE_REQUIRED');
        expect(err.details).to.match(/FaultInjectionService\.ListFaults needs an admin certificate/);
      }
      await expectStatus(faultsAs(pki.tls('nodes/node2')).setUnavailable({ durationMs: 60_000 }), Code.PERMISSION_DENIED);
      const admin = faultsAs(pki.tls('admin'));
      await admin.injectFault({ method: 'GetArray', count: 1, code: Code.UNAVAILABLE, message: 'injected', delayMs: 0, timing: 0 });
      await expectStatus(storageAs(pki.tls('nodes/node1')).getArray({}), Code.UNAVAILABLE, /injected/);
      await admin.clearFaults({});
    });

    it('a refused call does not use up an injected fault (access is checked first)', async () => {
      const admin = faultsAs(pki.tls('admin'));
      await admin.injectFault({ method: 'CreateLun', count: 1, code: Code.RESOURCE_EXHAUSTED, message: 'injected', delayMs: 0, timing: 0 });
      await expectStatus(
        storageAs(pki.tls('array')).createLun({ requestId: '', path: '/vol/tls/x', sizeBytes: BigInt(4 * MiB), osType: OsType.OS_TYPE_LINUX, provisioning: 0, comment: '', pool: '' }),
        Code.PERMISSION_DENIED,
      );
      expect((await admin.listFaults({})).faults).to.have.length(1);
      await admin.clearFaults({});
    });
  });

  describe('block portal', () => {
    it('lets a node log in as its own initiator only', async () => {
      const s = await portalAs('nodes/node2', N2);
      const rep = await s.command({ op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 }, 3000);
      expect(rep.code).to.equal(0);
      const e = await portalRefusal(portalAs('nodes/node2', N1));
      expect(e.status.code).to.equal(Code.PERMISSION_DENIED);
      expect(e.status.reason).to.equal('INITIATOR_NOT_YOURS');
      expect(e.status.details).to.contain(N1);
      const admin = await portalRefusal(portalAs('admin', N1));
      expect(admin.status.code).to.equal(Code.PERMISSION_DENIED);
      expect(admin.status.reason).to.equal('ROLE_REQUIRED');
    });

    it('an empty LOGIN initiator is the certificate\'s own', async () => {
      const s = await portalAs('nodes/node1', '');
      const rep = await s.command({ op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 }, 3000);
      expect(rep.code).to.equal(0);
    });
  });
});
