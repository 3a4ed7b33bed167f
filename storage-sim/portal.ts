/**
 * The array's block portal: its data plane on a TCP port of its own, as iSCSI is a real
 * array's (wire format: common/block-wire.ts). A session logs in as an initiator, then each
 * READ and WRITE runs as that initiator through the same domain calls as gRPC's ReadBlocks
 * and WriteBlocks: masking, reservations, request-id replay and the fault plan (under those
 * two method names) decide exactly as they do there.
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type TLSSocket } from 'node:tls';
import { status as Code } from '@grpc/grpc-js';
import {
  decodeRequest,
  encodeReply,
  FrameReader,
  MAX_IO_BYTES,
  PORTAL_VERSION,
  ProtocolError,
  type OpName,
  type PortalReply,
  type PortalRequest,
} from '../common/block-wire.js';
import { FailedPreconditionError, InvalidArgumentError, isDomainError } from '../common/errors.js';
import { identityOfCertificate, type PeerIdentity } from '../common/identity.js';
import type { Logger } from '../common/logging.js';
import { statusOfKind } from '../common/status.js';
import { listenTcp, parseListen } from '../common/listen.js';
import type { TlsMaterial } from '../common/tls.js';
import { ownInitiator } from './access.js';
import type { StorageArray } from './array.js';
import type { FaultPlan, FaultTiming } from './faults.js';
import type { PortalMetrics } from './metrics.js';
import { parseInitiator } from './rules.js';

/** Replies not yet taken by the host before the session stops reading more requests. */
const MAX_QUEUED_BYTES = 8 * MAX_IO_BYTES;

export interface RunningPortal {
  /** host:port the portal listens on. */
  address: string;
  port: number;
  /** Ends every open session, as a network cut would; the portal goes on listening. */
  dropSessions(): void;
  /** Stops taking sessions and ends the open ones. */
  close(): Promise<void>;
}

const CODE_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Code).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]));

const METHOD: Record<Exclude<OpName, 'login'>, string> = { read: 'ReadBlocks', write: 'WriteBlocks' };

function errorReply(req: { op: OpName; tag: number }, err: unknown, logger: Logger): PortalReply {
  if (isDomainError(err)) {
    return {
      op: req.op,
      tag: req.tag,
      code: statusOfKind[err.kind],
      reason: err.reason,
      field: err instanceof InvalidArgumentError ? err.field : '',
      message: err.message,
    };
  }
  if (err instanceof FaultStatus) return { op: req.op, tag: req.tag, code: err.code, reason: 'INJECTED_FAULT', field: '', message: err.message };
  logger.error('internal error', { portal: true, op: req.op, error: err instanceof Error ? err.stack : String(err) });
  return { op: req.op, tag: req.tag, code: 13, reason: 'INTERNAL', field: '', message: 'internal error; the array log has the details' };
}

/** A failure the fault plan asked for, with its status code as given. */
class FaultStatus extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

class Session {
  private initiator: string | undefined;
  private readonly reader = new FrameReader();
  private ended = false;

  constructor(
    private readonly socket: Socket,
    private readonly array: StorageArray,
    private readonly faults: FaultPlan,
    private readonly logger: Logger,
    private readonly metrics: PortalMetrics | undefined,
    /** With mTLS, who the client certificate says is calling: LOGIN may only be as its initiator. */
    private readonly mtls: { identity: PeerIdentity | undefined } | undefined,
  ) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => socket.resume());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.ended = true;
      if (!this.initiator) return;
      this.metrics?.sessions(-1);
      this.logger.info('portal session ended', { initiator: this.initiator, peer: this.peer });
    });
  }

  private get peer(): string {
    return `${this.socket.remoteAddress}:${this.socket.remotePort}`;
  }

  private onData(chunk: Buffer): void {
    try {
      for (const frame of this.reader.push(chunk)) this.onRequest(decodeRequest(frame));
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      this.logger.warn('portal session dropped', { peer: this.peer, initiator: this.initiator, error: err.message });
      this.socket.destroy();
    }
  }

  private send(rep: PortalReply): void {
    if (rep.op !== 'login') {
      const n = rep.code !== 0 ? 0 : rep.op === 'read' ? (rep as { data: Buffer }).data.length : (rep as { writtenBytes: number }).writtenBytes;
      this.metrics?.command(rep.op, CODE_NAMES[rep.code] ?? String(rep.code), n);
    }
    if (this.ended) return;
    let ok = true;
    for (const b of encodeReply(rep)) ok = this.socket.write(b) && ok;
    // The host is not taking its replies: stop reading its requests until it does.
    if (!ok && this.socket.writableLength > MAX_QUEUED_BYTES) this.socket.pause();
  }

  private onRequest(req: PortalRequest): void {
    if (req.op === 'login') {
      this.send(this.login(req));
      return;
    }
    if (!this.initiator) {
      this.send(errorReply(req, new FailedPreconditionError('log in first: the session has no initiator yet', 'PORTAL_NOT_LOGGED_IN'), this.logger));
      return;
    }
    if (!this.faults.enabled) {
      this.send(this.run(req, this.initiator));
      return;
    }
    // With faults on, a call may be delayed or failed before or after it runs.
    const initiator = this.initiator;
    void (async () => {
      try {
        await this.fault(req, 'before');
        const rep = this.run(req, initiator);
        if (rep.code === 0) await this.fault(req, 'after');
        this.send(rep);
      } catch (err) {
        this.send(errorReply(req, err, this.logger));
      }
    })();
  }

  private async fault(req: PortalRequest & { op: 'read' | 'write' }, timing: FaultTiming): Promise<void> {
    const d = this.faults.decide(METHOD[req.op], timing);
    if (d.delayMs > 0) await sleep(d.delayMs);
    if (d.fail) throw new FaultStatus(d.fail.code, d.fail.message);
  }

  private login(req: PortalRequest & { op: 'login' }): PortalReply {
    try {
      if (req.version !== PORTAL_VERSION) {
        throw new FailedPreconditionError(`block portal version ${req.version} is not spoken here: this array speaks version ${PORTAL_VERSION}`, 'PORTAL_VERSION');
      }
      if (this.initiator !== undefined) {
        throw new FailedPreconditionError(`this session is logged in as ${this.initiator} already: open another session for another initiator`, 'PORTAL_LOGGED_IN');
      }
      this.initiator = this.mtls ? ownInitiator('block portal LOGIN', this.mtls.identity, req.initiator) : parseInitiator('initiator', req.initiator).name;
      this.metrics?.sessions(1);
      this.logger.info('portal session', { initiator: this.initiator, peer: this.peer, ...(this.mtls ? { who: this.mtls.identity?.subject } : {}) });
      return { op: 'login', tag: req.tag, code: 0, version: PORTAL_VERSION, maxIoBytes: MAX_IO_BYTES };
    } catch (err) {
      return errorReply(req, err, this.logger);
    }
  }

  private run(req: PortalRequest & { op: 'read' | 'write' }, initiator: string): PortalReply {
    try {
      if (req.op === 'read') {
        const data = this.array.readBlocks({ lun: req.lun, initiator, offsetBytes: req.offsetBytes, lengthBytes: req.lengthBytes });
        return { op: 'read', tag: req.tag, code: 0, data };
      }
      const { writtenBytes } = this.array.writeBlocks({ requestId: req.requestId, lun: req.lun, initiator, offsetBytes: req.offsetBytes, data: req.data });
      return { op: 'write', tag: req.tag, code: 0, writtenBytes };
    } catch (err) {
      return errorReply(req, err, this.logger);
    }
  }
}

/**
 * Listens on `listen` (host:port; port 0 picks a free one). With `tls`, sessions are TLS with
 * a client certificate the CA signed required, and each logs in only as its node's initiator.
 */
export async function startPortal(opts: { listen: string; array: StorageArray; faults: FaultPlan; logger: Logger; metrics?: PortalMetrics; tls?: TlsMaterial }): Promise<RunningPortal> {
  const at = parseListen('portal-listen', opts.listen);
  const sockets = new Set<Socket>();
  const accept = (socket: Socket, mtls?: { identity: PeerIdentity | undefined }): void => {
    new Session(socket, opts.array, opts.faults, opts.logger, opts.metrics, mtls);
  };
  const tls = opts.tls;
  const server: Server = tls
    ? createTlsServer({ cert: tls.cert, key: tls.key, ca: tls.ca, requestCert: true, rejectUnauthorized: true }, (socket: TLSSocket) =>
        accept(socket, { identity: identityOfCertificate(socket.getPeerCertificate()) }),
      )
    : createServer((socket) => accept(socket));
  // Every TCP connection, a TLS one still in its handshake too, so close() and dropSessions() end it.
  server.on('connection', (raw: Socket) => {
    sockets.add(raw);
    raw.on('close', () => sockets.delete(raw));
  });
  // A handshake refused (no certificate, another CA's) is the client's failure, not the portal's.
  server.on('tlsClientError', (err: Error, socket: TLSSocket) => {
    opts.logger.warn('portal TLS handshake refused', { peer: `${socket.remoteAddress}:${socket.remotePort}`, error: err.message });
    socket.destroy();
  });
  const { address, port } = await listenTcp(server, at);
  return {
    address,
    port,
    dropSessions: () => {
      for (const s of sockets) s.destroy();
    },
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        for (const s of sockets) s.destroy();
      }),
  };
}
