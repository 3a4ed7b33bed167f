/**
 * The unary gRPC client over node:http2 (common/unary-client.ts) against a real storage-sim
 * (grpc-js server) and against hand-made HTTP/2 servers for what a gRPC server may send but
 * ours does not. The same calls through grpc-js and through it must end alike: the same
 * response, or the same code, message and google.rpc details.
 */
import { Metadata, status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import http2, { type Http2Server } from 'node:http2';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '../../common/client.js';
import { silentLogger } from '../../common/logging.js';
import { statusDetails } from '../../common/status.js';
import { unaryClient } from '../../common/unary-client.js';
import {
  FaultInjectionServiceClient,
  FaultTiming,
  IgroupProtocol,
  OsType,
  Provisioning,
  StorageArrayServiceClient,
  StorageArrayServiceService,
} from '../../proto/gen/passthru/storage/v1/storage.js';
import { serveArray, type ServingArray } from '../../storage-sim/serve.js';

const MiB = 1024 * 1024;
const A = 'iqn.1991-05.com.microsoft:node-a';

async function outcome(p: Promise<unknown>): Promise<{ ok: unknown } | { code: number; details: string; reason?: string; fields: string[] }> {
  try {
    return { ok: await p };
  } catch (err) {
    const e = err as ServiceError;
    const d = statusDetails(e);
    return { code: e.code, details: e.details, reason: d.reason, fields: d.fieldViolations.map((f) => f.field) };
  }
}

async function failure(p: Promise<unknown>): Promise<ServiceError> {
  try {
    await p;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('expected the call to fail');
}

/** A plain HTTP/2 server answering every stream with `answer`. */
async function h2Server(answer: (stream: http2.ServerHttp2Stream) => void): Promise<{ server: Http2Server; endpoint: string }> {
  const server = http2.createServer();
  server.on('stream', (stream) => {
    stream.on('error', () => undefined);
    stream.on('data', () => undefined);
    stream.on('end', () => answer(stream));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, endpoint: `127.0.0.1:${(server.address() as { port: number }).port}` };
}

function grpcFrame(body: Buffer): Buffer {
  const f = Buffer.alloc(5 + body.length);
  f.writeUInt32BE(body.length, 1);
  body.copy(f, 5);
  return f;
}

describe('unary gRPC client over node:http2', function () {
  this.timeout(30_000);
  let dir: string;
  let sim: ServingArray;
  let lun: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'passthru-unary-'));
    sim = await serveArray({ listen: '127.0.0.1:0', dataDir: dir, logger: silentLogger(), enableFaults: true });
    const c = connect(StorageArrayServiceClient, sim.running.address);
    await c.createIgroup({ requestId: '', name: 'node-a', protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_HYPER_V, initiators: [A] });
    const res = await c.createLun({ requestId: '', path: '/vol/v/u', sizeBytes: BigInt(16 * MiB), osType: OsType.OS_TYPE_HYPER_V, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' });
    lun = res.lun!.uuid;
    await c.mapLun({ igroups: [], requestId: '', lun, igroup: 'node-a', lunId: 0 });
    await c.writeBlocks({ requestId: '', lun, initiator: A, offsetBytes: 0n, data: Buffer.alloc(MiB, 0x42) });
    c.close();
  });

  after(async () => {
    await sim.close(500);
    rmSync(dir, { recursive: true, force: true });
  });

  it('ends every call as grpc-js does: responses, and refusals with the same code, message, reason and field', async () => {
    const grpcJs = connect(StorageArrayServiceClient, sim.running.address, { timeoutMs: 5000 });
    const ours = unaryClient(StorageArrayServiceService, sim.running.address, { timeoutMs: 5000 });
    try {
      const calls: [string, (c: typeof ours) => Promise<unknown>][] = [
        ['ListPools', (c) => c.listPools({})],
        ['GetLun by uuid', (c) => c.getLun({ lun })],
        ['GetLun unknown', (c) => c.getLun({ lun: 'PTSMNOTHERE1' })],
        ['GetLun malformed', (c) => c.getLun({ lun: 'not a lun' })],
        ['CreateLun too small', (c) => c.createLun({ requestId: '', path: '/vol/v/x', sizeBytes: 5n, osType: OsType.OS_TYPE_LINUX, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' })],
        ['DeleteLun mapped', (c) => c.deleteLun({ requestId: '', lun, force: false })],
        ['ReadBlocks masked', (c) => c.readBlocks({ lun, initiator: 'iqn.1991-05.com.microsoft:stranger', offsetBytes: 0n, lengthBytes: 512 })],
        ['ReadReservation', (c) => c.readReservation({ lun })],
      ];
      for (const [what, call] of calls) {
        const a = await outcome(call(grpcJs as unknown as typeof ours));
        const b = await outcome(call(ours));
        expect(b, what).to.deep.equal(a);
      }
    } finally {
      grpcJs.close();
      ours.close();
    }
  });

  it('carries a 1 MiB response, and 100 calls at once each get their own answer', async () => {
    const c = unaryClient(StorageArrayServiceService, sim.running.address, { timeoutMs: 10_000 });
    try {
      const r = await c.readBlocks({ lun, initiator: A, offsetBytes: 0n, lengthBytes: MiB });
      expect(Buffer.from(r.data).equals(Buffer.alloc(MiB, 0x42))).to.equal(true);
      const luns = await Promise.all(Array.from({ length: 100 }, (_, i) => c.getLun({ lun: i % 2 === 0 ? lun : 'PTSMNOTHERE1' }).then((x) => x.lun!.uuid, (e: ServiceError) => e.code)));
      luns.forEach((x, i) => expect(x).to.equal(i % 2 === 0 ? lun : Code.NOT_FOUND));
    } finally {
      c.close();
    }
  });

  it('a call the server holds past its deadline is DEADLINE_EXCEEDED at the deadline', async () => {
    const faults = connect(FaultInjectionServiceClient, sim.running.address);
    const c = unaryClient(StorageArrayServiceService, sim.running.address, { timeoutMs: 5000 });
    try {
      await faults.injectFault({ method: 'ListPools', count: 1, code: 0, message: '', delayMs: 1500, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const t0 = Date.now();
      const e = await failure(c.listPools({}, { timeoutMs: 200 }));
      expect(e.code).to.equal(Code.DEADLINE_EXCEEDED);
      expect(Date.now() - t0).to.be.lessThan(1000);
    } finally {
      await faults.clearFaults({});
      faults.close();
      c.close();
    }
  });

  it('an unknown method is UNIMPLEMENTED, as the server says', async () => {
    const fake = { bogus: { ...StorageArrayServiceService.listPools, path: '/passthru.storage.v1.StorageArrayService/Bogus' } };
    const c = unaryClient(fake, sim.running.address, { timeoutMs: 5000 });
    try {
      expect((await failure(c.bogus({}))).code).to.equal(Code.UNIMPLEMENTED);
    } finally {
      c.close();
    }
  });

  it('nobody listening is UNAVAILABLE; a server that comes up on that address is reached by the next call', async () => {
    const probe = await h2Server((s) => s.respond({ ':status': 200 }));
    const endpoint = probe.endpoint;
    await new Promise<void>((r) => probe.server.close(() => r()));
    const c = unaryClient(StorageArrayServiceService, endpoint, { timeoutMs: 3000 });
    try {
      const e = await failure(c.listPools({}));
      expect(e.code).to.equal(Code.UNAVAILABLE);
      expect(e.details).to.include(endpoint);
      const dir2 = mkdtempSync(join(tmpdir(), 'passthru-unary-2-'));
      const second = await serveArray({ listen: endpoint, dataDir: dir2, logger: silentLogger() });
      try {
        expect((await c.listPools({})).pools.length).to.be.greaterThan(0);
        // The server goes away and comes back: the client opens a new connection.
        await second.close(200);
        expect((await failure(c.listPools({}))).code).to.equal(Code.UNAVAILABLE);
        const third = await serveArray({ listen: endpoint, dataDir: dir2, logger: silentLogger() });
        expect((await c.listPools({})).pools.length).to.be.greaterThan(0);
        await third.close(200);
      } finally {
        rmSync(dir2, { recursive: true, force: true });
      }
    } finally {
      c.close();
    }
  });

  const odd: [string, (s: http2.ServerHttp2Stream) => void, Code, RegExp][] = [
    ['HTTP 503 with no gRPC status', (s) => s.respond({ ':status': 503 }, { endStream: true }), Code.UNAVAILABLE, /503/],
    ['HTTP 404 with no gRPC status', (s) => s.respond({ ':status': 404 }, { endStream: true }), Code.UNIMPLEMENTED, /404/],
    ['a trailers-only refusal with a percent-encoded message', (s) => s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '9', 'grpc-message': 'pool%20%C3%BCber%20full' }, { endStream: true }), Code.FAILED_PRECONDITION, /^pool über full$/],
    ['OK with no message', (s) => {
      s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      s.on('wantTrailers', () => s.sendTrailers({ 'grpc-status': '0' }));
      s.end();
    }, Code.INTERNAL, /no message/],
    ['OK with two messages', (s) => {
      s.respond({ ':status': 200, 'content-type': 'application/grpc' }, { waitForTrailers: true });
      s.on('wantTrailers', () => s.sendTrailers({ 'grpc-status': '0' }));
      s.end(Buffer.concat([grpcFrame(Buffer.alloc(0)), grpcFrame(Buffer.alloc(0))]));
    }, Code.INTERNAL, /not exactly one/],
    ['a status over 16', (s) => s.respond({ ':status': 200, 'content-type': 'application/grpc', 'grpc-status': '42', 'grpc-message': 'odd' }, { endStream: true }), Code.UNKNOWN, /odd/],
    ['a stream reset', (s) => s.close(http2.constants.NGHTTP2_INTERNAL_ERROR), Code.UNAVAILABLE, /closed before an answer|stream/i],
  ];
  for (const [what, answer, code, message] of odd) {
    it(`a server answering ${what} fails the call with ${Code[code]}`, async () => {
      const { server, endpoint } = await h2Server(answer);
      const c = unaryClient(StorageArrayServiceService, endpoint, { timeoutMs: 3000 });
      try {
        const e = await failure(c.listPools({}));
        expect(Code[e.code], e.details).to.equal(Code[code]);
        expect(e.details).to.match(message);
        expect(e.metadata).to.be.instanceOf(Metadata);
      } finally {
        c.close();
        await new Promise<void>((r) => server.close(() => r()));
      }
    });
  }
});
