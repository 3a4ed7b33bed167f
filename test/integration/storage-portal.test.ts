/**
 * The array's block portal through real sockets: storage-sim served in-process on
 * 127.0.0.1:0, the host agent's portal client (sessions, PortalDataPlane) and raw TCP for
 * what a well-behaved client never sends. The portal must judge exactly as gRPC's
 * ReadBlocks/WriteBlocks do (masking, reservations, request-id replay, faults), survive
 * hostile bytes by dropping only that session, and the client must carry a command across
 * a dropped session and an array that comes back on another port.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as tcpConnect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeRequest } from '../../common/block-wire.js';
import { connect, type PromiseClient } from '../../common/client.js';
import { DomainError } from '../../common/errors.js';
import { silentLogger } from '../../common/logging.js';
import { RemoteStatusError } from '../../common/status.js';
import { GrpcArray } from '../../host-agent/grpc-array.js';
import { PortalDataPlane, PortalSession } from '../../host-agent/portal-client.js';
import {
  FaultInjectionServiceClient,
  FaultTiming,
  IgroupProtocol,
  OsType,
  Provisioning,
  ReservationType,
  StorageArrayServiceClient,
} from '../../proto/gen/passthru/storage/v1/storage.js';
import { serveArray, type ServingArray } from '../../storage-sim/serve.js';

const MiB = 1024 * 1024;
const A = 'iqn.1991-05.com.microsoft:node-a';
const B = 'iqn.1991-05.com.microsoft:node-b';
const FAST = { attempts: 3, firstDelayMs: 10, maxDelayMs: 50, callTimeoutMs: 2000 };

type Storage = PromiseClient<InstanceType<typeof StorageArrayServiceClient>>;

async function refusal(p: Promise<unknown>): Promise<RemoteStatusError> {
  try {
    await p;
  } catch (err) {
    expect(err, String(err)).to.be.instanceOf(RemoteStatusError);
    return err as RemoteStatusError;
  }
  throw new Error('expected a refusal, but the command succeeded');
}

/** Bytes to a raw TCP connection; resolves when the array closes it (or after `ms`, false). */
function closedAfter(socket: Socket, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const t = setTimeout(() => resolve(false), ms);
    socket.on('close', () => {
      clearTimeout(t);
      resolve(true);
    });
    socket.on('error', () => undefined);
  });
}

describe('storage-sim block portal', function () {
  this.timeout(30_000);
  let dir: string;
  let sim: ServingArray;
  let storage: Storage;
  let faults: PromiseClient<InstanceType<typeof FaultInjectionServiceClient>>;
  let lun: string;
  const sessions: PortalSession[] = [];

  const session = async (initiator: string): Promise<PortalSession> => {
    const s = await PortalSession.open(sim.portal.address, initiator, 2000);
    sessions.push(s);
    return s;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'passthru-portal-'));
    sim = await serveArray({ listen: '127.0.0.1:0', dataDir: dir, logger: silentLogger(), enableFaults: true });
    storage = connect(StorageArrayServiceClient, sim.running.address, { timeoutMs: 10_000 });
    faults = connect(FaultInjectionServiceClient, sim.running.address, { timeoutMs: 10_000 });
    for (const [name, initiator] of [['node-a', A], ['node-b', B]] as const) {
      await storage.createIgroup({ requestId: '', name, protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_HYPER_V, initiators: [initiator] });
    }
    const created = await storage.createLun({ requestId: '', path: '/vol/vol1/portal', sizeBytes: BigInt(64 * MiB), osType: OsType.OS_TYPE_HYPER_V, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' });
    lun = created.lun!.uuid;
    await storage.mapLun({ igroups: [], requestId: '', lun, igroup: 'node-a', lunId: 0 });
  });

  afterEach(async () => {
    for (const s of sessions.splice(0)) s.close();
    await faults.clearFaults({});
  });

  after(async () => {
    storage.close();
    faults.close();
    await sim.close(1000);
    rmSync(dir, { recursive: true, force: true });
  });

  it('GetArray names the portal, and a session logged in as a mapped node reads back what it wrote, the same bytes gRPC ReadBlocks gives', async () => {
    const info = await storage.getArray({});
    expect(info.blockPortal).to.equal(sim.portal.address);
    const s = await session(A);
    const data = Buffer.alloc(MiB, 0).fill('passthru ');
    const w = await s.command({ op: 'write', lun, offsetBytes: BigInt(4 * MiB), requestId: '', data }, 2000);
    expect(w).to.include({ code: 0, writtenBytes: MiB });
    const r = (await s.command({ op: 'read', lun, offsetBytes: BigInt(4 * MiB), lengthBytes: MiB }, 2000)) as { data: Buffer };
    expect(r.data.equals(data)).to.equal(true);
    const viaGrpc = await storage.readBlocks({ lun, initiator: A, offsetBytes: BigInt(4 * MiB), lengthBytes: MiB });
    expect(Buffer.from(viaGrpc.data).equals(data)).to.equal(true);
  });

  it('many commands in flight on one session each get their own answer (tags)', async () => {
    const s = await session(A);
    const writes = Array.from({ length: 32 }, (_, i) =>
      s.command({ op: 'write', lun, offsetBytes: BigInt(i * 4096), requestId: `tag-${i}`, data: Buffer.alloc(4096, i) }, 5000),
    );
    await Promise.all(writes);
    const reads = await Promise.all(Array.from({ length: 32 }, (_, i) => s.command({ op: 'read', lun, offsetBytes: BigInt(i * 4096), lengthBytes: 4096 }, 5000)));
    reads.forEach((r, i) => expect((r as { data: Buffer }).data.equals(Buffer.alloc(4096, i)), `block ${i}`).to.equal(true));
  });

  it('an initiator whose igroup the LUN is not mapped to is PERMISSION_DENIED (masking), reads and writes alike, and nothing is written', async () => {
    const s = await session(B);
    const before = await storage.readBlocks({ lun, initiator: A, offsetBytes: 0n, lengthBytes: 512 });
    for (const cmd of [
      { op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 } as const,
      { op: 'write', lun, offsetBytes: 0n, requestId: '', data: Buffer.alloc(512, 9) } as const,
    ]) {
      const e = await refusal(s.command(cmd, 2000));
      expect(e.status.code).to.equal(Code.PERMISSION_DENIED);
      expect(e.status.details).to.match(/node-b|not mapped|mask/i);
    }
    const after = await storage.readBlocks({ lun, initiator: A, offsetBytes: 0n, lengthBytes: 512 });
    expect(Buffer.from(after.data).equals(Buffer.from(before.data))).to.equal(true);
  });

  it('a write by a node the reservation fences out is FAILED_PRECONDITION (RESERVATION_CONFLICT) and changes nothing; reads pass', async () => {
    await storage.mapLun({ igroups: [], requestId: '', lun, igroup: 'node-b', lunId: 0 });
    try {
      await storage.registerReservationKey({ requestId: '', lun, initiator: A, key: 'a1' });
      await storage.reserve({ requestId: '', lun, initiator: A, key: 'a1', type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY });
      const s = await session(B);
      const e = await refusal(s.command({ op: 'write', lun, offsetBytes: 8192n, requestId: '', data: Buffer.alloc(512, 7) }, 2000));
      expect(e.status).to.include({ code: Code.FAILED_PRECONDITION, reason: 'RESERVATION_CONFLICT' });
      const r = (await s.command({ op: 'read', lun, offsetBytes: 8192n, lengthBytes: 512 }, 2000)) as { data: Buffer };
      expect(r.data.equals(Buffer.alloc(512, 7))).to.equal(false);
    } finally {
      await storage.registerReservationKey({ requestId: '', lun, initiator: A, key: '0' });
      await storage.unmapLun({ igroups: [], requestId: '', lun, igroup: 'node-b' });
    }
  });

  it('a write retried with its request id is answered from the first and writes nothing again; the id with other data is INVALID_ARGUMENT', async () => {
    const s = await session(A);
    const first = Buffer.alloc(512, 1);
    await s.command({ op: 'write', lun, offsetBytes: 16384n, requestId: 'replay-1', data: first }, 2000);
    await s.command({ op: 'write', lun, offsetBytes: 16384n, requestId: '', data: Buffer.alloc(512, 2) }, 2000);
    const again = await s.command({ op: 'write', lun, offsetBytes: 16384n, requestId: 'replay-1', data: first }, 2000);
    expect(again).to.include({ code: 0, writtenBytes: 512 });
    const r = (await s.command({ op: 'read', lun, offsetBytes: 16384n, lengthBytes: 512 }, 2000)) as { data: Buffer };
    expect(r.data.equals(Buffer.alloc(512, 2)), 'the replay wrote nothing').to.equal(true);
    const e = await refusal(s.command({ op: 'write', lun, offsetBytes: 16384n, requestId: 'replay-1', data: Buffer.alloc(512, 3) }, 2000));
    expect(e.status).to.include({ code: Code.INVALID_ARGUMENT, field: 'request_id' });
  });

  it('bad I/O is refused with the field at fault: an unaligned offset, a length over 1 MiB, past the end, an unknown LUN', async () => {
    const s = await session(A);
    const cases: [Parameters<PortalSession['command']>[0], number, string | RegExp][] = [
      [{ op: 'read', lun, offsetBytes: 100n, lengthBytes: 512 }, Code.INVALID_ARGUMENT, 'offset_bytes'],
      [{ op: 'read', lun, offsetBytes: 0n, lengthBytes: 2 * MiB }, Code.INVALID_ARGUMENT, 'length_bytes'],
      [{ op: 'read', lun, offsetBytes: BigInt(64 * MiB), lengthBytes: 512 }, Code.INVALID_ARGUMENT, /end|past|beyond|size/i],
      [{ op: 'write', lun: 'PTSMNOTHERE1', offsetBytes: 0n, requestId: '', data: Buffer.alloc(512) }, Code.NOT_FOUND, /LUN/],
      [{ op: 'read', lun: 'no such thing', offsetBytes: 0n, lengthBytes: 512 }, Code.INVALID_ARGUMENT, 'lun'],
    ];
    for (const [cmd, code, want] of cases) {
      const e = await refusal(s.command(cmd, 2000));
      expect(e.status.code, e.status.details).to.equal(code);
      if (typeof want === 'string') expect(e.status.field).to.equal(want);
      else expect(e.status.details).to.match(want);
    }
  });

  it('a session must log in first, once, in version 1, as a well-formed initiator', async () => {
    const raw = await PortalSession.open(sim.portal.address, A, 2000);
    sessions.push(raw);
    const again = await refusal(raw.command({ op: 'login', version: 1, initiator: B }, 2000));
    expect(again.status).to.include({ code: Code.FAILED_PRECONDITION, reason: 'PORTAL_LOGGED_IN' });
    for (const [initiator, code, reason] of [['not an initiator', Code.INVALID_ARGUMENT, undefined]] as const) {
      const e = await refusal(PortalSession.open(sim.portal.address, initiator, 2000));
      expect(e.status.code).to.equal(code);
      expect(e.status.field).to.equal('initiator');
      if (reason) expect(e.status.reason).to.equal(reason);
    }
    // Version and order are what only a foreign client gets wrong: raw frames.
    const sock = tcpConnect(sim.portal.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    const replies: Buffer[] = [];
    sock.on('data', (d) => replies.push(d));
    sock.write(Buffer.concat(encodeRequest({ op: 'read', tag: 5, lun, offsetBytes: 0n, lengthBytes: 512 })));
    sock.write(Buffer.concat(encodeRequest({ op: 'login', tag: 6, version: 2, initiator: A })));
    await new Promise((r) => setTimeout(r, 200));
    const all = Buffer.concat(replies).toString('latin1');
    expect(all).to.include('PORTAL_NOT_LOGGED_IN');
    expect(all).to.include('PORTAL_VERSION');
    sock.destroy();
  });

  it('bytes that break the format end only that session: the array closes it, and other sessions go on', async () => {
    const good = await session(A);
    for (const bad of [Buffer.from([0, 0, 0, 2, 1, 1]), Buffer.from([0xff, 0xff, 0xff, 0xff]), Buffer.from([0, 0, 0, 8, 42, 0, 0, 0, 0, 0, 0, 1])]) {
      const sock = tcpConnect(sim.portal.port, '127.0.0.1');
      const closed = closedAfter(sock, 2000);
      sock.write(bad);
      expect(await closed, `closed after ${bad.toString('hex')}`).to.equal(true);
    }
    const r = await good.command({ op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 }, 2000);
    expect(r.code).to.equal(0);
  });

  it('the fault plan applies as it does to gRPC: a WriteBlocks fault before writes nothing, after writes and loses the reply; an outage is UNAVAILABLE', async () => {
    const s = await session(A);
    await s.command({ op: 'write', lun, offsetBytes: 32768n, requestId: '', data: Buffer.alloc(512, 1) }, 2000);
    await faults.injectFault({ method: 'WriteBlocks', count: 1, code: Code.UNAVAILABLE, message: 'array busy', delayMs: 0, timing: FaultTiming.FAULT_TIMING_BEFORE });
    const before = await refusal(s.command({ op: 'write', lun, offsetBytes: 32768n, requestId: '', data: Buffer.alloc(512, 2) }, 2000));
    expect(before.status).to.include({ code: Code.UNAVAILABLE, details: 'array busy' });
    let r = (await s.command({ op: 'read', lun, offsetBytes: 32768n, lengthBytes: 512 }, 2000)) as { data: Buffer };
    expect(r.data[0]).to.equal(1);
    await faults.injectFault({ method: 'WriteBlocks', count: 1, code: Code.INTERNAL, message: 'lost reply', delayMs: 0, timing: FaultTiming.FAULT_TIMING_AFTER });
    const after = await refusal(s.command({ op: 'write', lun, offsetBytes: 32768n, requestId: '', data: Buffer.alloc(512, 3) }, 2000));
    expect(after.status.code).to.equal(Code.INTERNAL);
    r = (await s.command({ op: 'read', lun, offsetBytes: 32768n, lengthBytes: 512 }, 2000)) as { data: Buffer };
    expect(r.data[0]).to.equal(3);
    await faults.setUnavailable({ durationMs: 60_000 });
    const down = await refusal(s.command({ op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 }, 2000));
    expect(down.status.code).to.equal(Code.UNAVAILABLE);
  });

  it('a command the array holds past its deadline is DEADLINE_EXCEEDED; the session stays usable', async () => {
    const s = await session(A);
    await faults.injectFault({ method: 'ReadBlocks', count: 1, code: 0, message: '', delayMs: 600, timing: FaultTiming.FAULT_TIMING_BEFORE });
    const e = await refusal(s.command({ op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 }, 200));
    expect(e.status.code).to.equal(Code.DEADLINE_EXCEEDED);
    await new Promise((r) => setTimeout(r, 500));
    expect((await s.command({ op: 'read', lun, offsetBytes: 0n, lengthBytes: 512 }, 2000)).code).to.equal(0);
  });

  describe('PortalDataPlane (the host agent\'s data path)', () => {
    it('carries a write across a session the array dropped: the retry goes out on a new session with the same request id', async () => {
      const array = new GrpcArray(sim.running.address, silentLogger(), FAST);
      const plane = new PortalDataPlane(() => array.blockPortal(), A, silentLogger(), FAST);
      try {
        await plane.write('', lun, 0n, Buffer.alloc(512, 4));
        // Cut every session, then write: the first try meets a dead session.
        await faults.injectFault({ method: 'WriteBlocks', count: 1, code: 0, message: '', delayMs: 300, timing: FaultTiming.FAULT_TIMING_BEFORE });
        const pending = plane.write('drop-1', lun, 512n, Buffer.alloc(512, 5));
        await new Promise((r) => setTimeout(r, 50));
        sim.portal.dropSessions();
        expect(await pending).to.equal(512);
        expect((await plane.read(lun, 512n, 512))[0]).to.equal(5);
      } finally {
        plane.close();
        array.close();
      }
    });

    it('a refusal comes back as the domain error with the array\'s words; UNAVAILABLE is retried, then reported as the array unreachable', async () => {
      const array = new GrpcArray(sim.running.address, silentLogger(), FAST);
      const plane = new PortalDataPlane(() => array.blockPortal(), B, silentLogger(), FAST);
      try {
        const denied = await plane.read(lun, 0n, 512).then(() => undefined, (e: unknown) => e);
        expect(denied).to.be.instanceOf(DomainError);
        expect(denied).to.include({ kind: 'permission_denied' });
        expect((denied as Error).message).to.match(/^storage array: /);
        await faults.setUnavailable({ durationMs: 60_000 });
        const down = await plane.read(lun, 0n, 512).then(() => undefined, (e: unknown) => e);
        expect(down).to.include({ kind: 'unavailable', reason: 'ARRAY_UNAVAILABLE' });
        expect((down as Error).message).to.match(/cannot be reached \(ReadBlocks/);
      } finally {
        plane.close();
        array.close();
      }
    });
  });
});

describe('storage-sim block portal across an array restart', function () {
  this.timeout(30_000);

  it('the data plane finds the portal again when the array comes back on another portal port, and the data is there', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'passthru-portal-restart-'));
    let sim = await serveArray({ listen: '127.0.0.1:0', dataDir: dir, logger: silentLogger() });
    const api = sim.running.address;
    const storage = connect(StorageArrayServiceClient, api, { timeoutMs: 10_000 });
    const array = new GrpcArray(api, silentLogger(), { ...FAST, attempts: 8, maxDelayMs: 200 });
    const plane = new PortalDataPlane(() => array.blockPortal(), A, silentLogger(), { ...FAST, attempts: 8, maxDelayMs: 200 });
    try {
      await storage.createIgroup({ requestId: '', name: 'node-a', protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_HYPER_V, initiators: [A] });
      const { lun } = await storage.createLun({ requestId: '', path: '/vol/vol1/r', sizeBytes: BigInt(8 * MiB), osType: OsType.OS_TYPE_HYPER_V, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' });
      await storage.mapLun({ igroups: [], requestId: '', lun: lun!.uuid, igroup: 'node-a', lunId: 0 });
      await plane.write('w-1', lun!.uuid, 0n, Buffer.alloc(512, 8));
      const oldPortal = sim.portal.address;
      await sim.close(500);
      sim = await serveArray({ listen: api, dataDir: dir, logger: silentLogger() });
      expect(sim.portal.address).to.not.equal(oldPortal);
      expect((await plane.read(lun!.uuid, 0n, 512))[0]).to.equal(8);
    } finally {
      plane.close();
      array.close();
      storage.close();
      await sim.close(500);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
