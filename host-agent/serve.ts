/**
 * Wires the host agent together: store, array client, the cluster from its file, the
 * AdminService on TCP and one GuestService endpoint (Unix socket) per VM. Health is
 * NOT_SERVING until every node's igroup is on the array and the journal is recovered.
 */
import { chmodSync, mkdirSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { InvalidArgumentError } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import { programMetrics, serveMetrics, type MetricsEndpoint } from '../common/metrics.js';
import { startServer, type RunningServer } from '../common/server.js';
import type { ClientTls } from '../common/tls.js';
import type { Registry } from 'prom-client';
import { HostAgent, STEPS } from './agent.js';
import { DEFAULT_RETRY, type RetryPolicy } from './array.js';
import { GrpcArray } from './grpc-array.js';
import { PortalDataPlane } from './portal-client.js';
import { BlockIo } from './block-io.js';
import type { ClusterFile } from './cluster-file.js';
import type { VmRecord } from './model.js';
import { adminService, guestService } from './service.js';
import type { GuestLimits } from './limits.js';
import { hostMetrics } from './metrics.js';
import { adminAccessHooks, nodeIdentities, type HostAgentTls } from './tls.js';
import { HostState } from './state.js';
import { SqliteStore } from './store.js';
import type { BackoffPolicy, StepHook, StepPoint } from './workflow/engine.js';

/** sun_path holds 108 bytes with its terminating NUL. */
const MAX_SOCKET_PATH = 107;

export interface ServeHostAgentOptions {
  listen: string;
  /** The array's address, host:port. */
  storage: string;
  dataDir: string;
  cluster: ClusterFile;
  /** Where the VMs' sockets go (default <data-dir>/sock). */
  socketDir?: string;
  /** host:port for Prometheus metrics at /metrics; none unless given. */
  metricsListen?: string;
  /** How often the array is asked whether it answers, for the health of the storage dependency (default 2 s). */
  storageProbeMs?: number;
  /** What each VM may ask of the host (rates, in flight, quotas). */
  limits?: Partial<GuestLimits>;
  logger: Logger;
  retry?: Partial<RetryPolicy>;
  backoff?: BackoffPolicy;
  /** Tests: SIGKILL this process at a step point, e.g. "lun.map", "create_disk:scsi.attach@after". */
  crashAt?: string;
  /**
   * mTLS (host-agent/tls.ts): AdminService with this certificate, admins only; the array
   * called with each node's certificate. Plaintext without.
   */
  tls?: HostAgentTls;
}

export interface ServingHostAgent {
  agent: HostAgent;
  admin: RunningServer;
  guests: Map<string, RunningServer>;
  /** The Prometheus registry, and its endpoint when --metrics-listen was given. */
  registry: Registry;
  metrics?: MetricsEndpoint;
  /** Settles once the igroups are ensured and the journal recovered (health SERVING). */
  ready: Promise<void>;
  close(graceMs?: number): Promise<void>;
}

const ADMIN = 'passthru.host.v1.AdminService';
const GUEST = 'passthru.host.v1.GuestService';
/** The health entry of the storage dependency: NOT_SERVING while the array does not answer. */
export const STORAGE_DEPENDENCY = 'passthru.storage.v1.StorageArrayService';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const KNOWN_STEPS = new Set(Object.values(STEPS).flat());

/** "[kind:]step[@before|during|after]" → a hook that kills this process there. */
export function crashHook(spec: string, logger: Logger): StepHook {
  const m = /^(?:([a-z_]+):)?([a-z.]+)(?:@(before|during|after))?$/.exec(spec);
  if (!m) throw new InvalidArgumentError('crash-at', `--crash-at ${spec} is not [kind:]step[@before|during|after], e.g. create_disk:lun.map@during`);
  const [, kind, step, point = 'during'] = m;
  if (!KNOWN_STEPS.has(step!)) throw new InvalidArgumentError('crash-at', `--crash-at names no step: ${step} is not one of ${[...KNOWN_STEPS].join(', ')}`);
  return (op, name, at: StepPoint) => {
    if (name !== step || at !== point || (kind && op.kind !== kind)) return;
    logger.warn('crashing on purpose (--crash-at)', { opId: op.id, step: name, point: at });
    process.kill(process.pid, 'SIGKILL');
  };
}

export async function serveHostAgent(opts: ServeHostAgentOptions): Promise<ServingHostAgent> {
  const { logger } = opts;
  const dataDir = resolve(opts.dataDir);
  const socketDir = resolve(opts.socketDir ?? join(dataDir, 'sock'));
  mkdirSync(dataDir, { recursive: true });
  mkdirSync(socketDir, { recursive: true });
  // Only the host agent's user may enter: a VM's endpoint is that VM's alone.
  chmodSync(socketDir, 0o700);
  const socketPath = (id: string): string => join(socketDir, `${id}.sock`);
  const longest = socketPath('x'.repeat(32));
  if (Buffer.byteLength(longest) > MAX_SOCKET_PATH) {
    throw new InvalidArgumentError('socket-dir', `socket dir ${socketDir} is too long for Unix socket paths (at most ${MAX_SOCKET_PATH} bytes with the VM's name): give a shorter --socket-dir`);
  }
  const endpoint = (id: string): string => `unix:${socketPath(id)}`;

  const state = new HostState(new SqliteStore(dataDir));
  const stored = state.meta.get('cluster')?.value as { name: string; volume: string } | undefined;
  const cluster = stored ?? { name: opts.cluster.name, volume: opts.cluster.volume };
  // Each node's certificate, by initiator: filled once the cluster is seeded, before any call.
  const nodeTls = new Map<string, ClientTls>();
  const array = new GrpcArray(opts.storage, logger, { ...DEFAULT_RETRY, ...opts.retry }, opts.tls ? nodeTls : undefined);
  const { registry, rpc } = programMetrics('host-agent');
  let inFlight = (): number => 0;
  const counted = hostMetrics(registry, state, () => inFlight());
  const agent = new HostAgent({
    state,
    array,
    logger,
    cluster,
    backoff: opts.backoff,
    hook: opts.crashAt ? crashHook(opts.crashAt, logger) : undefined,
    observe: counted.observe,
    limits: opts.limits,
  });
  inFlight = () => agent.engine.inFlight;
  // One data path per node: a block portal session as that node's initiator.
  const planes = new Map<string, PortalDataPlane>();
  const portal = (): Promise<string> => array.blockPortal();
  agent.blockIo = new BlockIo(agent, (node) => {
    let p = planes.get(node);
    const n = state.nodes.get(node);
    if (!p && n) planes.set(node, (p = new PortalDataPlane(portal, n.initiator, logger, { ...DEFAULT_RETRY, ...opts.retry }, nodeTls.get(n.initiator.toLowerCase()))));
    return p;
  });
  let admin: RunningServer | undefined;
  let metrics: MetricsEndpoint | undefined;
  const guests = new Map<string, RunningServer>();
  try {
    agent.seed(opts.cluster);
    if (opts.tls) for (const [initiator, tls] of nodeIdentities(opts.tls, state.nodes.values())) nodeTls.set(initiator, tls);
    admin = await startServer({
      listen: opts.listen,
      services: [adminService(agent, endpoint, logger, rpc, opts.tls ? adminAccessHooks() : undefined)],
      logger,
      initialHealth: 'NOT_SERVING',
      metrics: rpc,
      tls: opts.tls?.server,
    });
    metrics = opts.metricsListen ? await serveMetrics(opts.metricsListen, registry, logger) : undefined;
  } catch (err) {
    await admin?.shutdown(0);
    state.close();
    array.close();
    throw err;
  }
  let storageStatus: 'SERVING' | 'NOT_SERVING' | undefined;
  const setStorageHealth = (status: 'SERVING' | 'NOT_SERVING'): void => {
    if (status === storageStatus) return;
    storageStatus = status;
    if (status === 'NOT_SERVING') logger.warn('the storage array does not answer', { storage: opts.storage });
    else logger.info('the storage array answers', { storage: opts.storage });
    admin.health.set(STORAGE_DEPENDENCY, status);
    for (const g of guests.values()) g.health.set(STORAGE_DEPENDENCY, status);
  };
  const probeMs = opts.storageProbeMs ?? 2000;
  let probeTimer: NodeJS.Timeout | undefined;
  let probing = true;
  const probe = async (): Promise<void> => {
    setStorageHealth((await array.answers(Math.min(probeMs, 1000))) ? 'SERVING' : 'NOT_SERVING');
    if (probing) probeTimer = setTimeout(() => void probe(), probeMs);
  };
  void probe();

  let healthy = false;
  const startGuest = async (vm: VmRecord): Promise<void> => {
    if (guests.has(vm.id)) return;
    rmSync(socketPath(vm.id), { force: true });
    const running = await startServer({
      listen: endpoint(vm.id),
      services: [guestService(agent, vm.id, endpoint, logger, rpc)],
      logger: logger.child({ vmId: vm.id }),
      metrics: rpc,
      initialHealth: healthy ? 'SERVING' : 'NOT_SERVING',
    });
    chmodSync(socketPath(vm.id), 0o600);
    if (storageStatus) running.health.set(STORAGE_DEPENDENCY, storageStatus);
    guests.set(vm.id, running);
  };
  agent.on('vmAdded', (vm) => {
    startGuest(vm).catch((err: unknown) => logger.error('guest endpoint failed to start', { vmId: vm.id, error: String(err) }));
  });
  for (const vm of state.vms.values()) await startGuest(vm);


  const setHealth = (status: 'SERVING' | 'NOT_SERVING'): void => {
    admin.health.set('', status);
    admin.health.set(ADMIN, status);
    for (const g of guests.values()) {
      g.health.set('', status);
      g.health.set(GUEST, status);
    }
  };
  const ready = (async () => {
    const started = Date.now();
    for (let delay = 200; ; delay = Math.min(delay * 2, 5000)) {
      try {
        await agent.ensureIgroups();
        break;
      } catch (err) {
        logger.warn('cannot make sure of the node igroups yet; retrying', { error: err instanceof Error ? err.message : String(err), retryInMs: delay });
        await sleep(delay);
      }
    }
    const recovered = await agent.recover();
    counted.recovered(recovered);
    healthy = true;
    setHealth('SERVING');
    logger.info('host agent ready', { cluster: cluster.name, nodes: state.nodes.size, vms: state.vms.size, disks: state.attachments.size, recovered, ms: Date.now() - started });
  })();

  return {
    agent,
    admin,
    guests,
    registry,
    metrics,
    ready,
    close: async (graceMs = 5000) => {
      probing = false;
      clearTimeout(probeTimer);
      await Promise.all([admin.shutdown(graceMs), ...[...guests.values()].map((g) => g.shutdown(graceMs)), metrics?.close()]);
      await agent.close(graceMs);
      for (const p of planes.values()) p.close();
      for (const id of guests.keys()) rmSync(socketPath(id), { force: true });
    },
  };
}
