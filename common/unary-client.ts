/**
 * A unary-only gRPC client over node:http2, for the host agent's calls to the array's
 * control plane: each provisioning makes several, and grpc-js spends about three times the
 * CPU of the call itself on its channel, resolver, load-balancing, retry and interceptor
 * machinery (bench/provision.ts), which the host agent's one event loop pays for every
 * disk. This speaks the same protocol (gRPC over HTTP/2, PROTOCOL-HTTP2.md): one
 * length-prefixed message each way, `grpc-timeout`, status and details from trailers (or a
 * trailers-only response), HTTP statuses mapped as the spec maps them. It fails calls as
 * grpc-js does (an Error with `code`, `details` and `metadata`), so callers and
 * `common/status.ts` cannot tell the two apart. Servers, streams and the CLIs keep grpc-js.
 */
import http2, { type ClientHttp2Session, type ClientHttp2Stream, type IncomingHttpHeaders, type IncomingHttpStatusHeader } from 'node:http2';
import { connect as netConnect } from 'node:net';
import { Metadata, status as Code, type ServiceError } from '@grpc/grpc-js';
import { MAX_MESSAGE_BYTES, RECEIVE_WINDOW_BYTES } from './limits.js';
import { clientTlsOptions, type ClientTls } from './tls.js';

interface UnaryMethod<Req, Res> {
  path: string;
  requestStream: false;
  responseStream: false;
  requestSerialize(value: Req): Buffer;
  responseDeserialize(value: Buffer): Res;
}

/** A generated service definition's unary methods as promise-returning functions. */
export type UnaryClient<Def> = {
  [K in keyof Def as Def[K] extends { requestStream: false; responseStream: false } ? K : never]: Def[K] extends UnaryMethod<infer Req, infer Res>
    ? (req: Req, opts?: { timeoutMs?: number }) => Promise<Res>
    : never;
} & { close(): void };

/** HTTP statuses without a gRPC status, as PROTOCOL-HTTP2.md maps them. */
function codeOfHttpStatus(status: number): Code {
  switch (status) {
    case 400:
      return Code.INTERNAL;
    case 401:
      return Code.UNAUTHENTICATED;
    case 403:
      return Code.PERMISSION_DENIED;
    case 404:
      return Code.UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
      return Code.UNAVAILABLE;
    default:
      return Code.UNKNOWN;
  }
}

function callError(code: Code, details: string, metadata = new Metadata()): ServiceError {
  return Object.assign(new Error(`${code} ${Code[code]}: ${details}`), { code, details, metadata });
}

function decodeMessage(details: string): string {
  try {
    return decodeURIComponent(details);
  } catch {
    return details;
  }
}

/** Where to connect: host:port, [v6]:port, dns:host:port, ipv4:/ipv6:host:port or unix:/path. */
function authorityOf(endpoint: string, tls: boolean): { authority: string; socketPath?: string } {
  if (endpoint.startsWith('unix:')) return { authority: 'http://localhost', socketPath: endpoint.slice(5).replace(/^\/\/(?=\/)/, '') };
  const bare = endpoint.replace(/^(dns:(\/\/[^/]*\/)?|ipv4:|ipv6:)/, '');
  return { authority: `${tls ? 'https' : 'http'}://${bare}` };
}


class Channel {
  private session: ClientHttp2Session | undefined;

  constructor(
    private readonly endpoint: string,
    private readonly tls?: ClientTls,
  ) {}

  /** The open session, or a new one: a session that closed or went away is never reused. */
  private open(): ClientHttp2Session {
    const s = this.session;
    if (s && !s.closed && !s.destroyed) return s;
    const { authority, socketPath } = authorityOf(this.endpoint, this.tls !== undefined);
    const session = http2.connect(authority, {
      settings: { initialWindowSize: RECEIVE_WINDOW_BYTES },
      maxSessionMemory: Number.MAX_SAFE_INTEGER,
      ...(socketPath ? { createConnection: () => netConnect(socketPath) } : {}),
      ...(this.tls ? clientTlsOptions(this.tls) : {}),
    });
    session.on('connect', () => {
      try {
        session.setLocalWindowSize(RECEIVE_WINDOW_BYTES);
      } catch {
        // The session closed as it opened; its calls fail on their own.
      }
    });
    const drop = (): void => {
      if (this.session === session) this.session = undefined;
    };
    session.on('goaway', drop);
    session.on('close', drop);
    // Errors reach each stream as well; a session error with no call left is nobody's.
    session.on('error', drop);
    // An idle connection must not keep the process alive.
    session.unref();
    this.session = session;
    return session;
  }

  call<Req, Res>(method: UnaryMethod<Req, Res>, req: Req, timeoutMs: number): Promise<Res> {
    return new Promise<Res>((resolve, reject) => {
      let stream: ClientHttp2Stream;
      let message: Buffer;
      try {
        message = method.requestSerialize(req);
      } catch (err) {
        reject(callError(Code.INTERNAL, `request serialization failed: ${err instanceof Error ? err.message : String(err)}`));
        return;
      }
      try {
        stream = this.open().request({
          ':method': 'POST',
          ':path': method.path,
          'content-type': 'application/grpc',
          te: 'trailers',
          'grpc-timeout': `${Math.max(1, Math.ceil(timeoutMs))}m`,
          'user-agent': 'passthru-unary/1',
        });
      } catch (err) {
        reject(callError(Code.UNAVAILABLE, `${this.endpoint}: ${err instanceof Error ? err.message : String(err)}`));
        return;
      }
      let settled = false;
      const finish = (err: ServiceError | undefined, res?: Res): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(res as Res);
      };
      const timer = setTimeout(() => {
        finish(callError(Code.DEADLINE_EXCEEDED, `deadline of ${timeoutMs} ms exceeded`));
        stream.close(http2.constants.NGHTTP2_CANCEL);
      }, timeoutMs);

      let headers: (IncomingHttpHeaders & IncomingHttpStatusHeader) | undefined;
      const chunks: Buffer[] = [];
      let received = 0;
      stream.on('response', (h) => {
        headers = h;
      });
      stream.on('data', (chunk: Buffer) => {
        received += chunk.length;
        if (received > MAX_MESSAGE_BYTES + 5) {
          finish(callError(Code.RESOURCE_EXHAUSTED, `response larger than ${MAX_MESSAGE_BYTES} bytes`));
          stream.close(http2.constants.NGHTTP2_CANCEL);
          return;
        }
        chunks.push(chunk);
      });
      const conclude = (trailers: IncomingHttpHeaders): void => {
        if (settled) return;
        if (!headers) {
          finish(callError(Code.UNAVAILABLE, `${this.endpoint}: the stream ended without a response`));
          return;
        }
        const httpStatus = Number(headers[':status']);
        // A trailers-only response carries its status in the headers.
        const all = { ...headers, ...trailers };
        const statusText = all['grpc-status'];
        if (statusText === undefined) {
          if (httpStatus !== 200) finish(callError(codeOfHttpStatus(httpStatus), `HTTP status ${httpStatus} from ${this.endpoint}`));
          else finish(callError(Code.UNKNOWN, `${this.endpoint} sent no grpc-status`));
          return;
        }
        const code = Number(statusText) as Code;
        // Details (grpc-status-details-bin) come in the trailers, or in the headers of a trailers-only response.
        const metadata = Metadata.fromHttp2Headers(Object.keys(trailers).length > 0 ? trailers : headers);
        for (const k of ['grpc-status', 'grpc-message', 'content-type']) metadata.remove(k);
        if (code !== Code.OK) {
          const details = typeof all['grpc-message'] === 'string' ? decodeMessage(all['grpc-message']) : Code[code] ?? 'unknown status';
          finish(callError(Number.isInteger(code) && code >= 0 && code <= 16 ? code : Code.UNKNOWN, details, metadata));
          return;
        }
        const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
        if (body.length < 5 || body[0] !== 0 || body.readUInt32BE(1) !== body.length - 5) {
          finish(callError(Code.INTERNAL, body.length < 5 ? `${this.endpoint} answered OK with no message` : `${this.endpoint} sent a message that is compressed or not exactly one`));
          return;
        }
        try {
          finish(undefined, method.responseDeserialize(body.subarray(5)));
        } catch (err) {
          finish(callError(Code.INTERNAL, `response deserialization failed: ${err instanceof Error ? err.message : String(err)}`));
        }
      };
      let trailers: IncomingHttpHeaders = {};
      stream.on('trailers', (t) => {
        trailers = t;
      });
      stream.on('end', () => conclude(trailers));
      stream.on('error', (err: Error) => finish(callError(Code.UNAVAILABLE, `${this.endpoint}: ${err.message}`)));
      stream.on('close', () => {
        if (settled) return;
        const rst = stream.rstCode;
        if (!headers) finish(callError(Code.UNAVAILABLE, `${this.endpoint}: the connection closed before an answer (HTTP/2 code ${rst})`));
        else if (rst === http2.constants.NGHTTP2_REFUSED_STREAM) finish(callError(Code.UNAVAILABLE, `${this.endpoint} refused the stream`));
        else if (rst === http2.constants.NGHTTP2_CANCEL) finish(callError(Code.CANCELLED, `${this.endpoint} cancelled the call`));
        else conclude(trailers);
      });
      const frame = Buffer.allocUnsafe(message.length + 5);
      frame[0] = 0;
      frame.writeUInt32BE(message.length, 1);
      message.copy(frame, 5);
      stream.end(frame);
    });
  }

  close(): void {
    this.session?.close();
    this.session = undefined;
  }
}

/**
 * A client for a generated service definition (e.g. StorageArrayServiceService): each unary
 * method a function of (request, {timeoutMs}) returning the response. One HTTP/2 connection,
 * made at the first call and again after it closes; over mTLS when `tls` is given.
 */
export function unaryClient<Def extends object>(definition: Def, endpoint: string, defaults: { timeoutMs: number; tls?: ClientTls }): UnaryClient<Def> {
  const channel = new Channel(endpoint, defaults.tls);
  const client: Record<string, unknown> = { close: () => channel.close() };
  for (const [name, m] of Object.entries(definition) as [string, { requestStream: boolean; responseStream: boolean }][]) {
    if (m.requestStream || m.responseStream) continue;
    const method = m as UnaryMethod<unknown, unknown>;
    client[name] = (req: unknown, opts: { timeoutMs?: number } = {}) => channel.call(method, req, opts.timeoutMs ?? defaults.timeoutMs);
  }
  return client as UnaryClient<Def>;
}
