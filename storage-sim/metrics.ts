/**
 * What storage-sim counts for Prometheus, besides its RPCs: the array's contents (LUNs,
 * igroups, maps, pool capacity and use, read at each scrape) and the block portal's
 * commands and bytes.
 */
import { Counter, Gauge, type Registry } from 'prom-client';
import type { StorageArray } from './array.js';

export interface PortalMetrics {
  command(op: 'read' | 'write', code: string, bytes: number): void;
  sessions(delta: number): void;
}

export function arrayMetrics(registry: Registry, array: StorageArray): PortalMetrics {
  new Gauge({
    name: 'passthru_array_objects',
    help: 'LUNs, igroups and LUN maps on the array',
    labelNames: ['kind'],
    registers: [registry],
    collect() {
      const a = array.getArray();
      this.set({ kind: 'lun' }, a.lunCount);
      this.set({ kind: 'igroup' }, a.igroupCount);
      this.set({ kind: 'map' }, a.mapCount);
    },
  });
  new Gauge({
    name: 'passthru_pool_bytes',
    help: 'Pool capacity, bytes used and bytes available, by pool',
    labelNames: ['pool', 'kind'],
    registers: [registry],
    collect() {
      for (const p of array.listPools()) {
        this.set({ pool: p.name, kind: 'capacity' }, p.capacityBytes);
        this.set({ pool: p.name, kind: 'used' }, p.usedBytes);
        this.set({ pool: p.name, kind: 'available' }, p.availableBytes);
      }
    },
  });
  const commands = new Counter({
    name: 'passthru_portal_commands_total',
    help: 'Block portal READ and WRITE commands answered, by opcode and status code',
    labelNames: ['op', 'code'],
    registers: [registry],
  });
  const bytes = new Counter({
    name: 'passthru_portal_bytes_total',
    help: 'Block data moved through the portal by successful commands, by opcode',
    labelNames: ['op'],
    registers: [registry],
  });
  const sessions = new Gauge({
    name: 'passthru_portal_sessions',
    help: 'Block portal sessions logged in now',
    registers: [registry],
  });
  return {
    command: (op, code, n) => {
      commands.inc({ op, code });
      if (code === 'OK') bytes.inc({ op }, n);
    },
    sessions: (delta) => sessions.inc(delta),
  };
}
