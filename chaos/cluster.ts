/**
 * The cluster the chaos run drives: 3 nodes and M VMs spread over them, half of them highly
 * available, Windows and Linux guests mixed (all four combinations), every fifth VM with
 * only 1 x 4 SCSI locations so "no free SCSI location" happens too.
 */
export const NODES = ['node1', 'node2', 'node3'] as const;
export const VOLUME = 'chaos';
export const INITIATOR_PREFIX = 'iqn.2026-11.dev.passthru.chaos:';

export interface VmSpec {
  id: string;
  name: string;
  guestOs: 'windows' | 'linux';
  ha: boolean;
  node: string;
  scsiControllers: number;
  locationsPerController: number;
}

export function vmSpecs(count: number): VmSpec[] {
  return Array.from({ length: count }, (_, i) => ({
    id: `vm${i + 1}`,
    name: `chaos${i + 1}`,
    ha: i % 2 === 0,
    guestOs: Math.floor(i / 2) % 2 === 0 ? 'windows' : 'linux',
    node: NODES[i % NODES.length]!,
    scsiControllers: i % 5 === 4 ? 1 : 4,
    locationsPerController: i % 5 === 4 ? 4 : 64,
  }));
}

export function clusterFile(vms: VmSpec[]): object {
  return {
    name: 'chaos',
    volume: VOLUME,
    availableStorageOwner: NODES[0],
    nodes: NODES.map((n) => ({ name: n, initiator: `${INITIATOR_PREFIX}${n}` })),
    vms: vms.map((v) => ({ ...v, state: 'running' })),
  };
}
