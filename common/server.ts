import { Server, ServerCredentials, type ChannelOptions } from '@grpc/grpc-js';
import { DiagnosticsServiceService, type PingRequest, type PingResponse } from '../proto/gen/passthru/diag/v1/diag.js';
import { HealthRegistry } from './health.js';
import type { Logger } from './logging.js';
import { loadDescriptorSet, reflectionServices } from './reflection.js';
import { implement } from './rpc.js';
import type { ServiceRegistration } from './service.js';

/** 1 MiB of block data plus room for the message around it. */
export const MAX_MESSAGE_BYTES = 4 * 1024 * 1024;

export interface StartServerOptions {
  /** host:port (port 0 picks a free one) or unix:/path/to/socket. */
  listen: string;
  services: ServiceRegistration[];
  logger: Logger;
  /** Overall health until the program says otherwise; NOT_SERVING while it recovers. */
  initialHealth?: 'SERVING' | 'NOT_SERVING';
  channelOptions?: ChannelOptions;
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

export function diagnosticsService(logger: Logger): ServiceRegistration {
  return {
    name: 'passthru.diag.v1.DiagnosticsService',
    definition: DiagnosticsServiceService,
    implementation: implement(
      DiagnosticsServiceService,
      { ping: (req: PingRequest): PingResponse => ({ receivedBytes: req.payload.length }) },
      { logger, quietMethods: new Set(['Ping']) },
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
    ...opts.channelOptions,
  });
  const health = new HealthRegistry(opts.initialHealth ?? 'SERVING');
  const services: ServiceRegistration[] = [...opts.services, diagnosticsService(opts.logger), health.registration()];
  const names = (): string[] => [...services.map((s) => s.name), ...reflection.map((s) => s.name)];
  const reflection = reflectionServices(loadDescriptorSet(), names);
  for (const s of [...services, ...reflection]) server.addService(s.definition, s.implementation);
  for (const s of opts.services) health.set(s.name, opts.initialHealth ?? 'SERVING');

  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(opts.listen, ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  const address = opts.listen.startsWith('unix:') ? opts.listen : `${opts.listen.replace(/:\d+$/, '')}:${port}`;
  opts.logger.info('listening', { address, services: names() });

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
