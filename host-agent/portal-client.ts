/**
 * One node's data plane through the array's block portal (common/block-wire.ts): a TCP
 * session logged in as the node's initiator, READ and WRITE commands pipelined on it by tag.
 * The array's masking and reservations judge every command by that initiator. A session
 * that drops fails what it had in flight as UNAVAILABLE, which `callArray` retries on a new
 * session with the same request ids; a portal that cannot be reached is looked up again
 * (an array that restarted may listen elsewhere).
 */
import { connect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { status as Code } from '@grpc/grpc-js';
import { decodeReply, DirectFrameReader, encodeRequest, isErrorReply, PORTAL_VERSION, ProtocolError, READ_REPLY_HEADER_BYTES, type PortalReply, type PortalRequest } from '../common/block-wire.js';
import type { Logger } from '../common/logging.js';
import { clientTlsOptions, type ClientTls } from '../common/tls.js';
import { markSpareHead } from '../common/block-messages.js';
import { RemoteStatusError } from '../common/status.js';
import { callArray } from './array-calls.js';
import { DEFAULT_RETRY, type DataPlane, type RetryPolicy } from './array.js';

type Command = PortalRequest extends infer R ? (R extends { tag: number } ? Omit<R, 'tag'> : never) : never;

interface Pending {
  resolve(rep: PortalReply): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
}

const unreachable = (details: string): RemoteStatusError => new RemoteStatusError({ code: Code.UNAVAILABLE, details });

function splitHostPort(address: string): { host: string; port: number } {
  const m = /^\[?([^\]]*)\]?:(\d+)$/.exec(address);
  if (!m) throw unreachable(`block portal address ${JSON.stringify(address)} is not host:port`);
  return { host: m[1]!, port: Number(m[2]) };
}

/** A logged-in session: commands out, tagged replies back. */
export class PortalSession {
  private readonly pending = new Map<number, Pending>();
  private nextTag = 1;
  private closedBecause: string | undefined;

  private constructor(
    private readonly socket: Socket,
    readonly address: string,
  ) {
    socket.setNoDelay(true);
    socket.setKeepAlive(true, 30_000);
    socket.on('error', (err) => this.end(err.message));
    socket.on('close', () => this.end('the array closed the session'));
  }

  /**
   * Connects and logs in as `initiator`; UNAVAILABLE if either fails within `timeoutMs`. With
   * `tls`, over mTLS with that (the node's) certificate, which the array holds the login to.
   */
  static open(address: string, initiator: string, timeoutMs: number, tls?: ClientTls): Promise<PortalSession> {
    const { host, port } = splitHostPort(address);
    return new Promise((resolve, reject) => {
      const reader = new DirectFrameReader();
      let session: PortalSession | undefined;
      // The socket reads straight into the reply frames: a block arrives with no copy.
      const options = {
        host,
        port,
        onread: {
          buffer: () => reader.readBuffer(),
          callback: (n: number) => {
            try {
              for (const frame of reader.filled(n)) session?.onReply(decodeReply(frame));
            } catch (err) {
              if (!(err instanceof ProtocolError)) throw err;
              session?.end(err.message);
            }
            return true;
          },
        },
      };
      const socket = tls ? tlsConnect({ ...options, ...clientTlsOptions(tls) }) : connect(options);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(unreachable(`no session with the block portal at ${address} within ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(unreachable(`block portal at ${address}: ${err.message}`));
      });
      socket.once(tls ? 'secureConnect' : 'connect', () => {
        session = new PortalSession(socket, address);
        session
          .command({ op: 'login', version: PORTAL_VERSION, initiator }, timeoutMs)
          .then(() => {
            clearTimeout(timer);
            resolve(session!);
          })
          .catch((err: unknown) => {
            clearTimeout(timer);
            session?.close();
            reject(err instanceof Error ? err : new Error(String(err)));
          });
      });
    });
  }

  get closed(): boolean {
    return this.closedBecause !== undefined;
  }

  /** Sends one command; its reply, or a RemoteStatusError with the array's refusal. */
  command(cmd: Command, timeoutMs: number): Promise<PortalReply> {
    if (this.closedBecause !== undefined) return Promise.reject(unreachable(`block portal at ${this.address}: ${this.closedBecause}`));
    const tag = this.nextTag;
    this.nextTag = this.nextTag === 0xffffffff ? 1 : this.nextTag + 1;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(tag);
        reject(new RemoteStatusError({ code: Code.DEADLINE_EXCEEDED, details: `block portal at ${this.address} gave no answer within ${timeoutMs} ms` }));
      }, timeoutMs);
      this.pending.set(tag, { resolve, reject, timer });
      this.socket.cork();
      for (const b of encodeRequest({ ...cmd, tag } as PortalRequest)) this.socket.write(b);
      this.socket.uncork();
    });
  }

  onReply(rep: PortalReply): void {
    const p = this.pending.get(rep.tag);
    // A reply after its deadline: the caller has moved on (a retry carries the same request id).
    if (!p) return;
    this.pending.delete(rep.tag);
    clearTimeout(p.timer);
    if (isErrorReply(rep)) p.reject(new RemoteStatusError({ code: rep.code, details: rep.message, reason: rep.reason, field: rep.field }));
    else p.resolve(rep);
  }

  end(why: string): void {
    if (this.closedBecause !== undefined) return;
    this.closedBecause = why;
    this.socket.destroy();
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(unreachable(`block portal at ${this.address}: ${why}`));
    }
    this.pending.clear();
  }

  close(): void {
    this.end('the host closed the session');
  }
}

export class PortalDataPlane implements DataPlane {
  private session: Promise<PortalSession> | undefined;
  private address: string | undefined;
  private closed = false;

  constructor(
    /** Where the array's portal is now (asked again when it cannot be reached). */
    private readonly discover: () => Promise<string>,
    readonly initiator: string,
    private readonly logger: Logger,
    private readonly retry: RetryPolicy = DEFAULT_RETRY,
    /** mTLS with this node's certificate: the array lets the session log in only as its initiator. */
    private readonly tls?: ClientTls,
  ) {}

  private open(): Promise<PortalSession> {
    const current = this.session;
    if (current) {
      // A session that has ended is replaced on the next command.
      return current.then((s) => (s.closed ? this.reopen(current) : s));
    }
    return this.reopen(undefined);
  }

  private reopen(stale: Promise<PortalSession> | undefined): Promise<PortalSession> {
    if (this.session !== stale) return this.open();
    if (this.closed) return Promise.reject(unreachable('the data plane is closed'));
    const opening = (async () => {
      this.address ??= await this.discover();
      try {
        const s = await PortalSession.open(this.address, this.initiator, this.retry.callTimeoutMs, this.tls);
        this.logger.info('block portal session', { portal: this.address, initiator: this.initiator });
        if (this.closed) s.close();
        return s;
      } catch (err) {
        // Perhaps the array restarted on another port: look again next time.
        this.address = undefined;
        throw err;
      }
    })();
    this.session = opening;
    opening.catch(() => {
      if (this.session === opening) this.session = undefined;
    });
    return opening;
  }

  private call(method: string, cmd: Command): Promise<PortalReply> {
    return callArray(this.address ?? 'its block portal', this.retry, this.logger, method, async () => (await this.open()).command(cmd, this.retry.callTimeoutMs));
  }

  async read(lun: string, offsetBytes: bigint, lengthBytes: number): Promise<Buffer> {
    const rep = await this.call('ReadBlocks', { op: 'read', lun, offsetBytes, lengthBytes });
    // The block sits in its reply frame after the frame's spent 8-byte header.
    return markSpareHead((rep as Extract<PortalReply, { op: 'read'; code: 0 }>).data, READ_REPLY_HEADER_BYTES);
  }

  async write(requestId: string, lun: string, offsetBytes: bigint, data: Buffer): Promise<number> {
    const rep = await this.call('WriteBlocks', { op: 'write', lun, offsetBytes, requestId, data });
    return (rep as Extract<PortalReply, { op: 'write'; code: 0 }>).writtenBytes;
  }

  close(): void {
    this.closed = true;
    void this.session?.then((s) => s.close()).catch(() => undefined);
  }
}
