import type { Http2Server, ServerHttp2Session } from 'node:http2';
import { Server, type ChannelOptions } from '@grpc/grpc-js';
import { DiagnosticsServiceService, type PingRequest, type PingResponse } from '../proto/gen/passthru/diag/v1/diag.js';
import { HealthRegistry } from './health.js';
import type { Logger } from './logging.js';
import { loadDescriptorSet, reflectionServices } from './reflection.js';
import { implement } from './rpc.js';
import type { ServiceRegistration } from './service.js';
import { MAX_MESSAGE_BYTES } from './limits.js';
import { serverCredentials, type TlsMaterial } from './tls.js';
import type { RpcMetrics } from './metrics.js';


/**
 * HTTP/2 receive windows the server offers: per stream, room for a whole 1 MiB block write
 * and its framing; per connection, several of them. With HTTP/2's default 64 KiB window a
 * client sends a 1 MiB message in 16 rounds of WINDOW_UPDATE, each a trip through both
 * processes' event loops (bench/storage.ts: 1 MiB writes with 4 in flight went from about
 * 150 to about 240 MiB/s with these).
 */
export const STREAM_WINDOW_BYTES = 2 * 1024 * 1024;
export const CONNECTION_WINDOW_BYTES = 16 * 1024 * 1024;

export interface StartServerOptions {
  /** host:port (port 0 picks a free one) or unix:/path/to/socket. */
  listen: string;
  services: ServiceRegistration[];
  logger: Logger;
  /** Overall health until the program says otherwise; NOT_SERVING while it recovers. */
  initialHealth?: 'SERVING' | 'NOT_SERVING';
  channelOptions?: ChannelOptions;
  /** mTLS: this certificate, and client certificates the CA signed required. Plaintext without. */
  tls?: TlsMaterial;
  /** Where the diagnostics service's calls are counted (the program's own services count theirs). */
  metrics?: RpcMetrics;
}

export interface RunningServer {
  server: Server;
  /** The port bound (0 for a Unix socket). */
  port: number;
  /** Where clients connect, e.g. 127.0.0.1:43121. */
  address: string;
  health: HealthRegistry;
  /** Stops taking calls, lets running ones finish for up to graceMs, then cuts them. */
  shutdown(graceMs?: number): Promise<void>;
}

export function diagnosticsService(logger: Logger, metrics?: RpcMetrics): ServiceRegistration {
  return {
    name: 'passthru.diag.v1.DiagnosticsService',
    definition: DiagnosticsServiceService,
    implementation: implement(
      DiagnosticsServiceService,
      { ping: (req: PingRequest): PingResponse => ({ receivedBytes: req.payload.length }) },
      { logger, quietMethods: new Set(['Ping']), metrics },
    ),
  };
}

/**
 * The one way every passthru program serves gRPC: its services, plus diagnostics, the
 * standard health service and server reflection (v1 and v1alpha) with complete descriptors,
 * so grpcurl needs no proto files.
 */
export async function startServer(opts: StartServerOptions): Promise<RunningServer> {
  const server = new Server({
    'grpc.max_receive_message_length': MAX_MESSAGE_BYTES,
    'grpc.max_send_message_length': MAX_MESSAGE_BYTES,
    // No channelz service is served, so its per-call bookkeeping would be kept for nobody.
    'grpc.enable_channelz': 0,
    ...opts.channelOptions,
  });
  const health = new HealthRegistry(opts.initialHealth ?? 'SERVING');
  const services: ServiceRegistration[] = [...opts.services, diagnosticsService(opts.logger, opts.metrics), health.registration()];
  const names = (): string[] => [...services.map((s) => s.name), ...reflection.map((s) => s.name)];
  const reflection = reflectionServices(loadDescriptorSet(), names);
  for (const s of [...services, ...reflection]) server.addService(s.definition, s.implementation);
  for (const s of opts.services) health.set(s.name, opts.initialHealth ?? 'SERVING');

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(opts.listen, serverCredentials(opts.tls), (err, p) => (err ? reject(err) : resolve(p)));
  });
  const address = opts.listen.startsWith('unix:') ? opts.listen : `${opts.listen.replace(/:\d+$/, '')}:${port}`;
  const widened = widenReceiveWindows(server);
  opts.logger.info('listening', { address, tls: opts.tls ? 'mutual' : 'off', services: names(), ...(widened ? {} : { http2Windows: 'default' }) });

  let stopping: Promise<void> | undefined;
  const shutdown = (graceMs = 5000): Promise<void> => {
    stopping ??= new Promise<void>((resolve) => {
      health.shutdown();
      const timer = setTimeout(() => {
        opts.logger.warn('grace period over; cutting remaining calls', { graceMs });
        server.forceShutdown();
        resolve();
      }, graceMs);
      server.tryShutdown(() => {
        clearTimeout(timer);
        resolve();
      });
    });
    return stopping;
  };
  return { server, port, address, health, shutdown };
}

/**
 * Offers larger HTTP/2 receive windows on every connection the server accepts. grpc-js has
 * no server option for it (its `grpc-node.flow_control_window` only reaches clients), so
 * this reaches its HTTP/2 servers through a field it does not export; when a grpc-js
 * version lacks it, nothing changes and false says so (the windows stay at the default).
 */
function widenReceiveWindows(server: Server): boolean {
  const http2Servers = (server as unknown as { http2Servers?: unknown }).http2Servers;
  if (!(http2Servers instanceof Map)) return false;
  for (const h2 of http2Servers.keys() as Iterable<Http2Server>) {
    if (typeof h2?.on !== 'function') return false;
    h2.on('session', (session: ServerHttp2Session) => {
      try {
        session.settings({ initialWindowSize: STREAM_WINDOW_BYTES });
        session.setLocalWindowSize(CONNECTION_WINDOW_BYTES);
      } catch {
        // A session closing as it opens: nothing to widen.
      }
    });
  }
  return http2Servers.size > 0;
}

/**
 * Graceful stop on SIGINT/SIGTERM: stop the server, then let the program close what it owns
 * (databases, files) before exiting. A second signal exits at once.
 */
export function stopOnSignals(running: RunningServer, logger: Logger, close: () => Promise<void> | void): void {
  let signalled = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (signalled) process.exit(130);
    signalled = true;
    logger.info('stopping', { signal });
    void (async () => {
      try {
        await running.shutdown();
        await close();
        logger.info('stopped');
        process.exitCode = 0;
      } catch (err) {
        logger.error('stop failed', { error: err instanceof Error ? err.stack : String(err) });
        process.exitCode = 1;
      }
      // Let winston flush its last line before the process ends.
      setImmediate(() => process.exit());
    })();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}
