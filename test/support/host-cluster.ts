/**
 * A whole embedded deployment for integration tests, in this process but over real gRPC:
 * storage-sim on 127.0.0.1:0 (faults enabled), the host agent on 127.0.0.1:0 with one Unix
 * socket per VM, both on fresh SQLite files in a temp dir.
 */
import { join } from 'node:path';
import { connect, type PromiseClient } from '../../common/client.js';
import { silentLogger, type Logger } from '../../common/logging.js';
import { parseClusterFile, type ClusterFile } from '../../host-agent/cluster-file.js';
import { serveHostAgent, type ServingHostAgent } from '../../host-agent/serve.js';
import type { RetryPolicy } from '../../host-agent/array.js';
import type { BackoffPolicy } from '../../host-agent/workflow/engine.js';
import {
  AdminServiceClient,
  GuestServiceClient,
  OperationState,
  type Operation,
  type Violation,
} from '../../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient, StorageArrayServiceClient } from '../../proto/gen/passthru/storage/v1/storage.js';
import { serveArray, type ServingArray } from '../../storage-sim/serve.js';
import type { GuestLimits } from '../../host-agent/limits.js';
import { tempDir } from './processes.js';

/** 3 nodes (node1 owns Available Storage); vm1 Windows HA on node1, vm2 Linux HA on node2, vm3 Windows non-HA on node2, vm4 Linux non-HA on node3 with 1 x 2 SCSI locations. */
export const DEFAULT_CLUSTER = {
  name: 'test',
  volume: 'passthru',
  availableStorageOwner: 'node1',
  nodes: [
    { name: 'node1', initiator: 'iqn.2026-11.dev.passthru:node1' },
    { name: 'node2', initiator: 'iqn.2026-11.dev.passthru:node2' },
    { name: 'node3', initiator: 'iqn.2026-11.dev.passthru:node3' },
  ],
  vms: [
    { id: 'vm1', name: 'web1', guestOs: 'windows', ha: true, node: 'node1' },
    { id: 'vm2', name: 'db1', guestOs: 'linux', ha: true, node: 'node2' },
    { id: 'vm3', name: 'build1', guestOs: 'windows', ha: false, node: 'node2' },
    { id: 'vm4', name: 'scratch1', guestOs: 'linux', ha: false, node: 'node3', scsiControllers: 1, locationsPerController: 2 },
  ],
};

export const FAST_RETRY: Partial<RetryPolicy> = { attempts: 3, firstDelayMs: 10, maxDelayMs: 50, callTimeoutMs: 2000 };
export const FAST_BACKOFF: BackoffPolicy = { firstMs: 20, maxMs: 200 };

export interface TestCluster {
  dir: string;
  array: ServingArray;
  host: ServingHostAgent;
  admin: PromiseClient<AdminServiceClient>;
  storage: PromiseClient<StorageArrayServiceClient>;
  faults: PromiseClient<FaultInjectionServiceClient>;
  /** A client on the VM's own GuestService socket (cached). */
  guest(vmId: string): PromiseClient<GuestServiceClient>;
  /** Polls the operation (as an admin) until it is SUCCEEDED or FAILED. */
  settle(opId: string, timeoutMs?: number): Promise<Operation>;
  violations(): Promise<Violation[]>;
  /** Stops the host agent and the array (the temp dir stays until remove()). */
  stop(): Promise<void>;
  /** Starts a new host agent on the same data dir and array (after stop or a crash). */
  restartHost(): Promise<void>;
  close(): Promise<void>;
}

export async function startCluster(
  opts: { cluster?: object; logger?: Logger; retry?: Partial<RetryPolicy>; backoff?: BackoffPolicy; pools?: { name: string; capacityBytes: number }[]; storageProbeMs?: number; limits?: Partial<GuestLimits> } = {},
): Promise<TestCluster> {
  const dir = tempDir('passthru-host-');
  const logger = opts.logger ?? silentLogger();
  const file: ClusterFile = parseClusterFile(JSON.stringify(opts.cluster ?? DEFAULT_CLUSTER));
  const array = await serveArray({ listen: '127.0.0.1:0', dataDir: join(dir.path, 'array'), enableFaults: true, logger, pools: opts.pools });
  const startHost = async (): Promise<ServingHostAgent> => {
    const host = await serveHostAgent({
      listen: '127.0.0.1:0',
      storage: array.running.address,
      dataDir: join(dir.path, 'host'),
      cluster: file,
      logger,
      retry: opts.retry ?? FAST_RETRY,
      backoff: opts.backoff ?? FAST_BACKOFF,
      storageProbeMs: opts.storageProbeMs,
      limits: opts.limits,
    });
    await host.ready;
    return host;
  };
  let host = await startHost();
  let admin = connect(AdminServiceClient, host.admin.address);
  const storage = connect(StorageArrayServiceClient, array.running.address);
  const faults = connect(FaultInjectionServiceClient, array.running.address);
  const guests = new Map<string, PromiseClient<GuestServiceClient>>();
  const final = (s: OperationState): boolean => s === OperationState.OPERATION_STATE_SUCCEEDED || s === OperationState.OPERATION_STATE_FAILED;
  const closeClients = (): void => {
    for (const g of guests.values()) g.close();
    guests.clear();
    admin.close();
  };
  const cluster: TestCluster = {
    dir: dir.path,
    array,
    get host() {
      return host;
    },
    get admin() {
      return admin;
    },
    storage,
    faults,
    guest(vmId) {
      let g = guests.get(vmId);
      if (!g) {
        const vm = host.agent.state.vms.get(vmId);
        const endpoint = vm ? `unix:${join(dir.path, 'host', 'sock', `${vmId}.sock`)}` : `unix:${join(dir.path, 'host', 'sock', 'none.sock')}`;
        guests.set(vmId, (g = connect(GuestServiceClient, endpoint)));
      }
      return g;
    },
    async settle(opId, timeoutMs = 20_000) {
      const end = Date.now() + timeoutMs;
      for (;;) {
        const { operation } = await admin.getOperation({ operationId: opId });
        if (final(operation!.state)) return operation!;
        if (Date.now() > end) throw new Error(`operation ${opId} did not end within ${timeoutMs} ms: ${JSON.stringify(operation, (_k, v) => (typeof v === 'bigint' ? String(v) : v))}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async violations() {
      return (await admin.checkInvariants({})).violations;
    },
    async stop() {
      closeClients();
      await host.close(1000);
    },
    async restartHost() {
      host = await startHost();
      admin = connect(AdminServiceClient, host.admin.address);
    },
    async close() {
      closeClients();
      storage.close();
      faults.close();
      await host.close(1000).catch(() => undefined);
      await array.close(1000);
      dir.remove();
    },
  };
  return cluster;
}
