/** Wires storage-sim together: flags in, a serving array out. */
import type { Logger } from '../common/logging.js';
import { programMetrics, serveMetrics, type MetricsEndpoint } from '../common/metrics.js';
import { startServer, type RunningServer } from '../common/server.js';
import type { TlsMaterial } from '../common/tls.js';
import { arrayAccessHooks, faultAccessHooks } from './access.js';
import type { Registry } from 'prom-client';
import { arrayMetrics } from './metrics.js';
import { StorageArray } from './array.js';
import { FaultPlan } from './faults.js';
import type { PoolRecord } from './model.js';
import { startPortal, type RunningPortal } from './portal.js';
import { ARRAY_METHODS, storageServices } from './service.js';

export interface ServeArrayOptions {
  listen: string;
  /** host:port of the block portal; by default the gRPC host with a free port. */
  portalListen?: string;
  /** host:port for Prometheus metrics at /metrics; none unless given. */
  metricsListen?: string;
  dataDir: string;
  name?: string;
  serialPrefix?: string;
  pools?: PoolRecord[];
  enableFaults?: boolean;
  /**
   * mTLS on the gRPC API and the block portal: client certificates the CA signed required,
   * and each caller held to its certificate's role (storage-sim/access.ts). Plaintext without.
   */
  tls?: TlsMaterial;
  logger: Logger;
}

export interface ServingArray {
  array: StorageArray;
  faults: FaultPlan;
  running: RunningServer;
  portal: RunningPortal;
  registry: Registry;
  metrics?: MetricsEndpoint;
  /** Stops serving, then closes the database and data files. */
  close(graceMs?: number): Promise<void>;
}

export async function serveArray(opts: ServeArrayOptions): Promise<ServingArray> {
  const array = new StorageArray({
    dataDir: opts.dataDir,
    name: opts.name,
    serialPrefix: opts.serialPrefix,
    pools: opts.pools,
    faultsEnabled: opts.enableFaults ?? false,
  });
  const faults = new FaultPlan(opts.enableFaults ?? false, ARRAY_METHODS);
  const { registry, rpc } = programMetrics('storage-sim');
  const counted = arrayMetrics(registry, array);
  let running: RunningServer;
  let portal: RunningPortal | undefined;
  let metrics: MetricsEndpoint | undefined;
  try {
    portal = await startPortal({ listen: opts.portalListen ?? defaultPortalListen(opts.listen), array, faults, logger: opts.logger, metrics: counted, tls: opts.tls });
    const access = opts.tls ? { array: arrayAccessHooks(), faults: faultAccessHooks() } : undefined;
    running = await startServer({
      listen: opts.listen,
      services: storageServices(array, faults, opts.logger, portal.address, rpc, access),
      logger: opts.logger,
      metrics: rpc,
      tls: opts.tls,
    });
    metrics = opts.metricsListen ? await serveMetrics(opts.metricsListen, registry, opts.logger) : undefined;
  } catch (err) {
    await portal?.close();
    array.close();
    throw err;
  }
  opts.logger.info('array ready', { array: array.name, luns: array.getArray().lunCount, faults: faults.enabled, blockPortal: portal.address, tls: opts.tls ? 'mutual' : 'off' });
  const open = portal;
  return {
    array,
    faults,
    running,
    portal,
    registry,
    metrics,
    close: async (graceMs?: number) => {
      await Promise.all([running.shutdown(graceMs), open.close(), metrics?.close()]);
      array.close();
    },
  };
}

/** The gRPC listen address's host with port 0: the portal sits beside the API. */
export function defaultPortalListen(listen: string): string {
  const m = /^(.*):\d+$/.exec(listen);
  return `${m ? m[1] : '127.0.0.1'}:0`;
}
