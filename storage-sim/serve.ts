/** Wires storage-sim together: flags in, a serving array out. */
import type { Logger } from '../common/logging.js';
import { startServer, type RunningServer } from '../common/server.js';
import { StorageArray } from './array.js';
import { FaultPlan } from './faults.js';
import type { PoolRecord } from './model.js';
import { ARRAY_METHODS, storageServices } from './service.js';

export interface ServeArrayOptions {
  listen: string;
  dataDir: string;
  name?: string;
  serialPrefix?: string;
  pools?: PoolRecord[];
  enableFaults?: boolean;
  logger: Logger;
}

export interface ServingArray {
  array: StorageArray;
  faults: FaultPlan;
  running: RunningServer;
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
  let running: RunningServer;
  try {
    running = await startServer({ listen: opts.listen, services: storageServices(array, faults, opts.logger), logger: opts.logger });
  } catch (err) {
    array.close();
    throw err;
  }
  opts.logger.info('array ready', { array: array.name, luns: array.getArray().lunCount, faults: faults.enabled });
  return {
    array,
    faults,
    running,
    close: async (graceMs?: number) => {
      await running.shutdown(graceMs);
      array.close();
    },
  };
}
