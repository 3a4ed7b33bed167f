import type {
  handleServerStreamingCall,
  handleUnaryCall,
  Metadata,
  sendUnaryData,
  ServerUnaryCall,
  ServerWritableStream,
  ServiceDefinition,
  UntypedServiceImplementation,
} from '@grpc/grpc-js';
import { status as Code } from '@grpc/grpc-js';
import { identityOfCertificate, type PeerIdentity } from './identity.js';
import { isDomainError } from './errors.js';
import type { Logger } from './logging.js';
import type { RpcMetrics } from './metrics.js';
import { toStatus } from './status.js';

/** What a handler knows about its call besides the request. */
export interface CallContext {
  /** Short method name, e.g. CreateLun. */
  method: string;
  peer: string;
  metadata: Metadata;
  /** Fields added here land on the RPC's log line (e.g. opId). */
  log: Record<string, unknown>;
  /** Aborted when the client cancels or the deadline passes. */
  signal: AbortSignal;
  /**
   * Who is calling, from the client certificate of an mTLS connection (role, node and
   * initiator: common/identity.ts); undefined on a plaintext one. Read on first use.
   */
  readonly identity: PeerIdentity | undefined;
}

export type UnaryHandler<Req, Res> = (req: Req, ctx: CallContext) => Promise<Res> | Res;
export type StreamHandler<Req, Res> = (
  req: Req,
  ctx: CallContext,
  send: (res: Res) => void,
) => Promise<void>;

/**
 * Runs around every call of a service; a hook that throws fails the call with its status.
 * Fault injection and (later) authorization plug in here, so handlers stay plain.
 */
export interface CallHooks {
  /** The request is the decoded message, the handler's own: a hook may check it. */
  before?(ctx: CallContext, request: unknown): Promise<void> | void;
  /** After the handler succeeded, before the reply is sent. */
  after?(ctx: CallContext): Promise<void> | void;
}

export interface ImplementOptions {
  logger: Logger;
  hooks?: CallHooks;
  /**
   * Reads and block I/O: their successful calls log at debug. Every other method changes
   * something, and each of its calls writes an audit line (who, what, result) at info.
   */
  quietMethods?: ReadonlySet<string>;
  /** Who is calling, for audit lines: e.g. vm:vm1, or an admin certificate's subject. The peer address by default. */
  caller?: (ctx: CallContext) => string;
  /** Where each call is counted and timed. */
  metrics?: RpcMetrics;
}

type RequestOf<M> = M extends { requestDeserialize: (b: Buffer) => infer R } ? R : never;
type ResponseOf<M> = M extends { responseSerialize: (v: infer R) => Buffer } ? R : never;

/** Handlers typed by the generated definition: each gets its request type, returns its response type. */
export type HandlersOf<Def> = {
  [K in keyof Def]: Def[K] extends { requestStream: false; responseStream: true }
    ? StreamHandler<RequestOf<Def[K]>, ResponseOf<Def[K]>>
    : UnaryHandler<RequestOf<Def[K]>, ResponseOf<Def[K]>>;
};

/**
 * The call's context. Its signal and peer are made on first use: grpc-js reports every
 * call's stream close as 'cancelled', even after a normal answer, and aborting a signal
 * builds a DOMException with a stack trace, a cost each call would pay for nothing when
 * its handler never looks at the signal.
 */
function contextOf(method: string, call: ServerUnaryCall<unknown, unknown> | ServerWritableStream<unknown, unknown>): CallContext {
  let abort: AbortController | undefined;
  let cancelled = false;
  let peer: string | undefined;
  let identity: PeerIdentity | undefined | null = null;
  call.on('cancelled', () => {
    cancelled = true;
    abort?.abort();
  });
  return {
    method,
    get peer(): string {
      return (peer ??= call.getPeer());
    },
    metadata: call.metadata,
    log: {},
    get identity(): PeerIdentity | undefined {
      if (identity === null) identity = identityOfCertificate(call.getAuthContext()?.sslPeerCertificate);
      return identity;
    },
    get signal(): AbortSignal {
      if (!abort) {
        abort = new AbortController();
        if (cancelled) abort.abort();
      }
      return abort.signal;
    },
  };
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return typeof (value as PromiseLike<unknown> | undefined)?.then === 'function';
}

/** Runs each hook in order, the next once the last settled; synchronous while they are. */
function inOrder<A extends unknown[]>(fns: ((...a: A) => unknown)[], args: A, from = 0): Promise<void> | void {
  for (let i = from; i < fns.length; i++) {
    const r = fns[i]!(...args);
    if (isPromiseLike(r)) return Promise.resolve(r).then(() => inOrder(fns, args, i + 1));
  }
}

/** Several hooks as one: each `before` in the order given (e.g. access, then faults), then each `after`. */
export function chainHooks(...all: (CallHooks | undefined)[]): CallHooks {
  const befores = all.flatMap((h) => (h?.before ? [h.before.bind(h)] : []));
  const afters = all.flatMap((h) => (h?.after ? [h.after.bind(h)] : []));
  return {
    before: (ctx, request) => inOrder(befores, [ctx, request]),
    after: (ctx) => inOrder(afters, [ctx]),
  };
}

function shortName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** passthru.host.v1.GuestService from /passthru.host.v1.GuestService/CreateDisk. */
function serviceName(path: string): string {
  return path.slice(1, path.lastIndexOf('/'));
}

/**
 * Turns plain `async (req, ctx) => res` handlers into a grpc-js implementation: one log line
 * per call ({method, code, ms, ...ctx.log}), hooks before and after, every error through the
 * one status mapping, and the callback called exactly once.
 */
export function implement<Def extends ServiceDefinition>(
  definition: Def,
  handlers: HandlersOf<Def>,
  opts: ImplementOptions,
): UntypedServiceImplementation {
  const impl: UntypedServiceImplementation = {};
  for (const key of Object.keys(definition) as (keyof Def & string)[]) {
    const def = definition[key]!;
    const method = shortName(def.path);
    const handler = handlers[key] as unknown;
    if (typeof handler !== 'function') throw new Error(`no handler for ${def.path}`);
    const service = serviceName(def.path);
    const mutation = !opts.quietMethods?.has(method);
    const finish = (ctx: CallContext, started: bigint, code: Code, err?: unknown): void => {
      const ms = Number(process.hrtime.bigint() - started) / 1e6;
      opts.metrics?.observe(service, method, Code[code] ?? String(code), ms / 1000);
      // A mutation's line is its audit record: logged whatever the level of its outcome.
      const level = code === Code.OK ? (mutation ? 'info' : 'debug') : code === Code.INTERNAL ? 'error' : 'warn';
      if (!opts.logger.isLevelEnabled(level)) return;
      const fields: Record<string, unknown> = { method, code: Code[code], ms: Math.round(ms * 1000) / 1000, ...ctx.log };
      if (mutation) {
        fields.audit = true;
        // With mTLS the certificate says who; without, only the address can.
        fields.who = opts.caller ? opts.caller(ctx) : (ctx.identity?.subject ?? ctx.peer);
      }
      if (err !== undefined && code !== Code.INTERNAL) {
        fields.error = err instanceof Error ? err.message : String(err);
        if (isDomainError(err)) fields.reason = err.reason;
      }
      opts.logger.log(level, 'rpc', fields);
    };
    if (def.responseStream && !def.requestStream) {
      const stream = handler as StreamHandler<unknown, unknown>;
      const h: handleServerStreamingCall<unknown, unknown> = (call) => {
        const started = process.hrtime.bigint();
        const ctx = contextOf(method, call);
        void (async () => {
          try {
            await opts.hooks?.before?.(ctx, call.request);
            await stream(call.request, ctx, (res) => call.write(res));
            await opts.hooks?.after?.(ctx);
            call.end();
            finish(ctx, started, Code.OK);
          } catch (err) {
            const st = toStatus(err, opts.logger, { method, ...ctx.log });
            // grpc-js sends a stream's status from its 'error' event; destroy() would tear the
            // stream down before the status went out, leaving the client waiting.
            if (!ctx.signal.aborted) call.emit('error', st);
            finish(ctx, started, ctx.signal.aborted ? Code.CANCELLED : (st.code ?? Code.UNKNOWN), err);
          }
        })();
      };
      impl[key] = h;
    } else if (!def.requestStream && !def.responseStream) {
      const unary = handler as UnaryHandler<unknown, unknown>;
      const h: handleUnaryCall<unknown, unknown> = (call, callback: sendUnaryData<unknown>) => {
        const started = process.hrtime.bigint();
        const ctx = contextOf(method, call);
        void (async () => {
          let res: unknown;
          try {
            // Awaits only what is a promise: a plain handler with no hooks answers in the same
            // turn, without a microtask hop per await.
            const before = opts.hooks?.before?.(ctx, call.request);
            if (isPromiseLike(before)) await before;
            res = unary(call.request, ctx);
            if (isPromiseLike(res)) res = await res;
            const after = opts.hooks?.after?.(ctx);
            if (isPromiseLike(after)) await after;
          } catch (err) {
            const st = toStatus(err, opts.logger, { method, ...ctx.log });
            callback(st);
            finish(ctx, started, st.code ?? Code.UNKNOWN, err);
            return;
          }
          callback(null, res);
          finish(ctx, started, Code.OK);
        })();
      };
      impl[key] = h;
    } else {
      throw new Error(`${def.path}: client and bidi streaming are not handled by implement()`);
    }
  }
  return impl;
}
