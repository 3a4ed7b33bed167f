/**
 * Prometheus metrics (prom-client), one registry per serving program instance (tests run
 * several in one process), served over HTTP at /metrics on `--metrics-listen`. Every gRPC
 * call is counted by service, method and code and timed; each program adds its own.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Histogram, Registry } from 'prom-client';
import { listenTcp, parseListen } from './listen.js';
import type { Logger } from './logging.js';

/** Seconds, from a fast local call to a slow workflow step or a call held by a fault. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];

export class RpcMetrics {
  private readonly calls: Counter<'service' | 'method' | 'code'>;
  private readonly seconds: Histogram<'service' | 'method'>;

  constructor(readonly registry: Registry) {
    this.calls = new Counter({
      name: 'passthru_rpc_requests_total',
      help: 'gRPC calls answered, by service, method and status code',
      labelNames: ['service', 'method', 'code'],
      registers: [registry],
    });
    this.seconds = new Histogram({
      name: 'passthru_rpc_duration_seconds',
      help: 'Time from a call arriving to its answer (a server stream: to its end), by service and method',
      labelNames: ['service', 'method'],
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    });
  }

  observe(service: string, method: string, code: string, seconds: number): void {
    this.calls.inc({ service, method, code });
    this.seconds.observe({ service, method }, seconds);
  }
}

/** A program's metrics: its registry and the RPC metrics every service of it records into. */
export function programMetrics(program: string): { registry: Registry; rpc: RpcMetrics } {
  const registry = new Registry();
  registry.setDefaultLabels({ program });
  return { registry, rpc: new RpcMetrics(registry) };
}

export interface MetricsEndpoint {
  /** host:port it listens on. */
  address: string;
  close(): Promise<void>;
}

/** Serves `GET /metrics` (Prometheus text format) on host:port; port 0 picks a free one. */
export async function serveMetrics(listen: string, registry: Registry, logger: Logger): Promise<MetricsEndpoint> {
  const at = parseListen('metrics-listen', listen);
  const server: Server = createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('only GET /metrics is served here\n');
      return;
    }
    registry.metrics().then(
      (text) => res.writeHead(200, { 'content-type': registry.contentType }).end(text),
      (err: unknown) => {
        logger.error('metrics collection failed', { error: err instanceof Error ? err.stack : String(err) });
        res.writeHead(500, { 'content-type': 'text/plain' }).end('metrics collection failed; the log has the details\n');
      },
    );
  });
  const { address } = await listenTcp(server, at);
  logger.info('metrics listening', { address });
  return {
    address,
    close: () =>
      new Promise<void>((done) => {
        server.close(() => done());
        server.closeAllConnections();
      }),
  };
}
