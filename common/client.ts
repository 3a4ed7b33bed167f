import { credentials, Metadata, type CallOptions, type ChannelCredentials, type Client, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { MAX_MESSAGE_BYTES, RECEIVE_WINDOW_BYTES } from './limits.js';
import type { GrpcClientTls } from './tls.js';

export interface CallOpts {
  /** Deadline from now; every outbound call has one. */
  timeoutMs?: number;
  metadata?: Metadata;
}

type Callback<Res> = (err: ServiceError | null, res: Res) => void;

/** A generated grpc-js client with each unary method returning a promise instead. */
export type PromiseClient<C> = {
  [K in keyof C as C[K] extends (...a: never[]) => ClientUnaryCall ? K : never]: C[K] extends (
    req: infer Req,
    md: Metadata,
    opts: Partial<CallOptions>,
    cb: Callback<infer Res>,
  ) => ClientUnaryCall
    ? (req: Req, opts?: CallOpts) => Promise<Res>
    : never;
} & { raw: C; close(): void };

export const DEFAULT_TIMEOUT_MS = 30_000;

/**
 * Accepts host:port, dns:…, unix:… (gRPC target syntax). Plaintext, or mTLS with `tls`
 * (common/tls.ts `grpcClientTls`: made there so that a client without TLS never loads it).
 */
export function connect<C extends Client>(
  Ctor: new (address: string, creds: ChannelCredentials, options?: object) => C,
  endpoint: string,
  defaults: { timeoutMs?: number; channelKey?: string; tls?: GrpcClientTls } = {},
): PromiseClient<C> {
  const client = new Ctor(endpoint, defaults.tls?.credentials ?? credentials.createInsecure(), {
    ...defaults.tls?.options,
    // Clients with different keys get separate connections (grpc-js pools equal option sets).
    ...(defaults.channelKey ? { 'passthru.channel': defaults.channelKey } : {}),
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    // A 1 MiB block read arrives in one window instead of sixteen 64 KiB round trips.
    'grpc-node.flow_control_window': RECEIVE_WINDOW_BYTES,
  });
  const target = client as unknown as Record<string, unknown>;
  return new Proxy({} as PromiseClient<C>, {
    get(_t, prop: string) {
      if (prop === 'raw') return client;
      if (prop === 'close') return () => client.close();
      const fn = target[prop];
      if (typeof fn !== 'function') return undefined;
      return (req: unknown, opts: CallOpts = {}) =>
        new Promise((resolve, reject) => {
          const deadline = Date.now() + (opts.timeoutMs ?? defaults.timeoutMs ?? DEFAULT_TIMEOUT_MS);
          (fn as (...a: unknown[]) => ClientUnaryCall).call(
            client,
            req,
            opts.metadata ?? new Metadata(),
            { deadline },
            (err: ServiceError | null, res: unknown) => (err ? reject(err) : resolve(res)),
          );
        });
    },
  });
}
