/**
 * Benchmark of provisioning as a guest sees it: a real storage-sim and a real host-agent
 * process (compiled, default log level, their JSON log lines going to files), a cluster of
 * three nodes and 84 running VMs, measured from this process over each VM's own guest
 * endpoint (a Unix socket).
 *
 *   - Ping with an empty payload on a guest socket at 1 and 64 calls in flight: the floor;
 *   - CreateDisk→done and RemoveDisk→done (16 MiB LUNs, the LUN deleted on removal) at 1 VM
 *     and at 64 VMs at once, each VM's loop creating a disk at a fresh mount path and
 *     removing it again, timed from sending the RPC until WatchOperation shows SUCCEEDED;
 *     first with 10 disks present in the cluster, then with 4,000 (pre-created over 20 more
 *     VMs, 200 each, 64 at a time; how long that took is reported), after an unmeasured
 *     warm-up of 10 cycles on each of the 64 VMs so both phases meet a warm agent;
 *   - start-up with at least 10,000 finished operations in the agent's journal: SIGTERM, a
 *     new host-agent on the same data dir, spawn → "serving on" (beside `node -e 0`);
 *   - CheckInvariants at the end (any violation fails the run).
 *
 * Aims printed beside the figures: create p50 at 1 VM ≤ 3 × CREATE_HOPS × the Ping p50 at 1;
 * provisions/s at 64 VMs ≥ 5 % of the Ping rate at 64; the 4,000-disk p50s ≤ 1.3 × the
 * 10-disk ones; start-up < 1 s.
 *
 * Usage: node dist/bench/provision.js [--seconds N] [--warmup N] [--json-out PATH]
 *        [--only REGEX] [--tmp DIR] [--skip-startup] [--skip-4000] [--sharing shared|dedicated]
 *        [--host-agent PATH] [--agent-cpu-prof DIR] [--sim-cpu-prof DIR]
 *
 *   --seconds N        measured seconds per phase (default 5), after a warm-up (--warmup,
 *                      default a third of it, 0.5-1 s)
 *   --json-out PATH    where the JSON goes (default bench/results/provision.json)
 *   --only REGEX       run only the phases whose name matches: ping, provision-10,
 *                      provision-4000, startup (ratios need their baseline)
 *   --tmp DIR          where the temporary data dir is made (default the OS temp dir; keep
 *                      it short: the guest sockets live there and a socket path has at most
 *                      107 bytes)
 *   --skip-startup     leave out the start-up phase (and the operations it needs)
 *   --skip-4000        leave out pre-creating 4,000 disks and the phase that runs with them
 *   --sharing S        shared (default: HA VMs, each LUN mapped to every node) or dedicated
 *                      (non-HA VMs, each LUN mapped to its VM's node only)
 *   --host-agent PATH  the host agent's entry script (default bin/host-agent.js)
 *   --agent-cpu-prof DIR  run the host agent with --cpu-prof, writing its profile to DIR
 *   --sim-cpu-prof DIR    the same for storage-sim
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, type PromiseClient } from '../common/client.js';
import { DiagnosticsServiceClient } from '../proto/gen/passthru/diag/v1/diag.js';
import {
  AdminServiceClient,
  DiskSharing,
  GuestServiceClient,
  OperationState,
  type Violation,
} from '../proto/gen/passthru/host/v1/host.js';
import { annotate, newWatchStats, untilDone } from './operations.js';
import { cpuWindow, startService, type Service } from './processes.js';
import { closedLoop, fmt, formatTable, percentile, repoRoot, writeResults, type Measured, usageError, phaseSeconds, runBench } from './report.js';

const MiB = 1024 * 1024;
/** Every disk the benchmark makes: small, so the array's pool never limits it. */
const DISK_BYTES = 16 * MiB;

/**
 * Sequential RPC hops one CreateDisk needs before the client sees it SUCCEEDED, as counted
 * for aim (a): the CreateDisk call itself; the agent's calls to storage-sim ListPools,
 * CreateLun, MapLun (one call for every node's igroup), RegisterReservationKey and Reserve;
 * then the client's WatchOperation open and its
 * final message. Correct it here when the workflow's calls change.
 */
const CREATE_HOPS = 8;
/** Creates per measured phase at most: with 4,000 disks present there are 4,096 LUN ids per node. */
const MAX_CREATES_PER_PHASE = 2000;
/** Aim (a): create p50 at 1 VM within this many times the cost of its hops. */
const HOP_AIM = 3;
/** Aim (b): provisions/s at 64 VMs, as a share of the empty Ping rate at 64. */
const PROVISION_AIM = 0.05;
/** Aim (c): p50 with 4,000 disks present, as a multiple of the p50 with 10. */
const SCALE_AIM = 1.3;
/** Aim (d): spawn → "serving on" with the journal below, in ms. */
const STARTUP_AIM_MS = 1000;

const NODES = ['node1', 'node2', 'node3'];
/** VMs w1..w64: the ones whose loops are measured (the 1-VM phase uses w1). */
const WORKER_VMS = 64;
/** VMs f1..f20 hold the disks already present: the first 10 on f1, then 200 on each. */
const FILL_VMS = 20;
const DISKS_PER_FILL_VM = 200;
const BASE_DISKS = 10;
const FILLED_DISKS = FILL_VMS * DISKS_PER_FILL_VM;
const PRECREATE_CONCURRENCY = 64;
/**
 * Create+remove cycles per worker VM run, unmeasured, before the first provisioning phase:
 * without them the 10-disk figures include the agent's (and the array's) JIT and cache
 * warm-up that the 4,000-disk phase, run later, no longer pays, which flatters aim (c).
 */
const AGENT_WARMUP_CYCLES_PER_VM = 10;
/** Finished operations (each create and each remove is one) the journal holds before start-up is timed. */
const JOURNAL_OPS = 10_000;
/** Restarts timed (the median is the figure), and `node -e 0` runs beside them. */
const STARTUP_RUNS = 3;
const NODE_RUNS = 5;

const PHASES = ['ping', 'provision-10', 'provision-4000', 'startup'] as const;
type Phase = (typeof PHASES)[number];

interface Row extends Measured {
  name: string;
  phase: Phase;
  /** Disks present in the cluster before the phase (besides the measured loops' own). */
  disks?: number;
  concurrency: number;
  unit: 'calls/s' | 'provisions/s' | 'removes/s';
  /** CPU seconds per wall second in the measured window: host-agent, storage-sim, this process. */
  agentCpu?: number;
  storageCpu?: number;
  clientCpu?: number;
}

interface Aim {
  name: string;
  measured: string;
  target: string;
  met: boolean;
  /** The measured figure and the bound it is held against, in the same unit. */
  value: number;
  bound: number;
}

// ---------------------------------------------------------------- processes

/** Bare Node start-up: the share of a restart that is not the host agent's own. */
async function timeBareNode(): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, ['-e', '0'], { stdio: 'ignore' });
  await new Promise<void>((resolve, reject) => {
    child.once('exit', () => resolve());
    child.once('error', reject);
  });
  return performance.now() - t0;
}



// ---------------------------------------------------------------- the cluster and its VMs

type GuestOsName = 'windows' | 'linux';

interface VmSpec {
  id: string;
  name: string;
  guestOs: GuestOsName;
  ha: boolean;
  node: string;
  state: 'running';
}

interface GuestVm {
  spec: VmSpec;
  endpoint: string;
  guest: PromiseClient<GuestServiceClient>;
}

function vmSpecs(ha: boolean): { workers: VmSpec[]; fills: VmSpec[] } {
  const spec = (id: string, i: number): VmSpec => ({
    id,
    name: id,
    // Both guest OSes, so both kinds of mount path are exercised.
    guestOs: i % 2 === 0 ? 'windows' : 'linux',
    ha,
    node: NODES[i % NODES.length]!,
    state: 'running',
  });
  return {
    workers: Array.from({ length: WORKER_VMS }, (_, i) => spec(`w${i + 1}`, i)),
    // Not HA, so their disks can be dedicated: 4,000 shared disks would hold 4,000 of the
    // 4,096 LUN ids of every node, leaving the measured phases none to work with.
    fills: Array.from({ length: FILL_VMS }, (_, i) => ({ ...spec(`f${i + 1}`, i), ha: false })),
  };
}

/** A folder mount point on Windows (not limited to 23 drive letters), a path on Linux. */
function mountPathFor(os: GuestOsName, n: number): string {
  return os === 'windows' ? `C:\\d${n}` : `/mnt/d${n}`;
}

/** How the WatchOperation streams behaved, reported in the JSON. */
const watchStats = newWatchStats();

// ---------------------------------------------------------------- the benchmark

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '5' },
      warmup: { type: 'string' },
      'json-out': { type: 'string' },
      only: { type: 'string' },
      tmp: { type: 'string' },
      'skip-startup': { type: 'boolean', default: false },
      'skip-4000': { type: 'boolean', default: false },
      sharing: { type: 'string', default: 'shared' },
      'host-agent': { type: 'string' },
      'agent-cpu-prof': { type: 'string' },
      'sim-cpu-prof': { type: 'string' },
    },
  });
  const { seconds, warmupSeconds } = phaseSeconds(values);
  if (values.sharing !== 'shared' && values.sharing !== 'dedicated') {
    throw usageError(`--sharing ${values.sharing}: give shared or dedicated`);
  }
  const shared = values.sharing === 'shared';
  const sharing = shared ? DiskSharing.DISK_SHARING_SHARED : DiskSharing.DISK_SHARING_DEDICATED;
  let only: RegExp | undefined;
  try {
    only = values.only ? new RegExp(values.only, 'i') : undefined;
  } catch (err) {
    throw usageError(`--only ${values.only}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const skip4000 = values['skip-4000'];
  const want = (phase: Phase): boolean =>
    (!only || only.test(phase)) && !(phase === 'provision-4000' && skip4000) && !(phase === 'startup' && values['skip-startup']);
  const needDisks = want('provision-10') || want('provision-4000') || want('startup');

  const root = repoRoot();
  const agentScript = values['host-agent'] ? resolve(values['host-agent']) : join(root, 'bin', 'host-agent.js');
  if (!existsSync(agentScript)) throw usageError(`${agentScript} does not exist (build the host agent first: npm run build)`);
  const workDir = mkdtempSync(join(values.tmp ?? tmpdir(), 'passthru-bench-'));
  const started = Date.now();
  const rows: Row[] = [];
  const aims: Aim[] = [];
  const { workers: workerSpecs, fills: fillSpecs } = vmSpecs(shared);
  const clusterFile = join(workDir, 'cluster.json');
  const agentDataDir = join(workDir, 'host-agent');
  const socketDir = join(workDir, 'sock');
  mkdirSync(socketDir);
  writeFileSync(
    clusterFile,
    `${JSON.stringify(
      {
        name: 'bench',
        availableStorageOwner: NODES[0],
        nodes: NODES.map((name) => ({ name, initiator: `iqn.2026-11.dev.passthru:${name}` })),
        vms: [...workerSpecs, ...fillSpecs],
      },
      null,
      2,
    )}\n`,
  );

  let storage: Service | undefined;
  let agent: Service | undefined;
  const clients: { close(): void }[] = [];
  const startAgent = (storageAddress: string): Promise<Service> =>
    startService(
      'host-agent',
      agentScript,
      ['serve', '--listen', '127.0.0.1:0', '--storage', storageAddress, '--data-dir', agentDataDir, '--cluster', clusterFile, '--socket-dir', socketDir],
      join(workDir, 'host-agent.log'),
      60_000,
      values['agent-cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', resolve(values['agent-cpu-prof'])] : [],
    );

  let firstStartMs = Number.NaN;
  let agentWarmup: { cycles: number; seconds: number } | undefined;
  let precreate: { disks: number; from: number; to: number; concurrency: number; seconds: number; rate: number } | undefined;
  let startup:
    | {
        journalOps: number;
        topUpOps: number;
        topUpSeconds: number;
        disksPresent: number;
        shutdownMs: number;
        shutdownKilled: boolean;
        runsMs: number[];
        medianMs: number;
        bareNodeRunsMs: number[];
        bareNodeMedianMs: number;
        diskCountAfter: number | undefined;
        servingAfter: boolean | undefined;
        operationsListed: number | string;
        firstCycleAfterMs: { create: number; remove: number } | undefined;
      }
    | undefined;
  let violations: Violation[] = [];
  /** watchStats before the processes stop (stopping ends every stream). */
  let watchAtEnd = { ...watchStats };
  /** Finished operations this run caused (each create and each remove that SUCCEEDED). */
  let finishedOps = 0;
  let disksPresent = 0;
  let seq = 0;

  try {
    storage = await startService(
      'storage-sim',
      join(root, 'bin', 'storage-sim.js'),
      ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(workDir, 'storage-sim')],
      join(workDir, 'storage-sim.log'),
      15_000,
      values['sim-cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', resolve(values['sim-cpu-prof'])] : [],
    );
    agent = await startAgent(storage.address);
    firstStartMs = agent.startMs;
    process.stderr.write(
      `storage-sim pid ${storage.pid} on ${storage.address}; host-agent pid ${agent.pid} on ${agent.address} ` +
        `(started in ${fmt(firstStartMs)} ms); work dir ${workDir}\n`,
    );

    let admin = connect(AdminServiceClient, agent.address);
    clients.push(admin);
    const listed = new Map((await admin.listVms({ node: '' })).vms.map((v) => [v.id, v]));
    const guestOf = (spec: VmSpec): GuestVm => {
      const vm = listed.get(spec.id);
      if (!vm) throw new Error(`ListVms does not list ${spec.id}, which the cluster file defines`);
      if (!vm.guestEndpoint) throw new Error(`ListVms gives ${spec.id} no guest endpoint`);
      const guest = connect(GuestServiceClient, vm.guestEndpoint);
      clients.push(guest);
      return { spec, endpoint: vm.guestEndpoint, guest };
    };
    const workers = workerSpecs.map(guestOf);
    const fills = fillSpecs.map(guestOf);
    const diag = connect(DiagnosticsServiceClient, workers[0]!.endpoint);
    clients.push(diag);

    const createDisk = async (vm: GuestVm, n: number, tag: string, as = sharing): Promise<number> => {
      const mountPath = mountPathFor(vm.spec.guestOs, n);
      const what = `CreateDisk ${mountPath} on ${vm.spec.id}`;
      const t0 = performance.now();
      let res;
      try {
        res = await vm.guest.createDisk({ requestId: `bench-${tag}-${n}-create`, mountPath, sizeBytes: BigInt(DISK_BYTES), sharing: as });
      } catch (err) {
        throw annotate(what, err);
      }
      await untilDone(vm.guest, res.operation, what, watchStats);
      const ms = performance.now() - t0;
      finishedOps++;
      return ms;
    };
    const removeDisk = async (vm: GuestVm, n: number, tag: string): Promise<number> => {
      const mountPath = mountPathFor(vm.spec.guestOs, n);
      const what = `RemoveDisk ${mountPath} on ${vm.spec.id}`;
      const t0 = performance.now();
      let res;
      try {
        res = await vm.guest.removeDisk({ requestId: `bench-${tag}-${n}-remove`, mountPath, deleteLun: true });
      } catch (err) {
        throw annotate(what, err);
      }
      await untilDone(vm.guest, res.operation, what, watchStats);
      const ms = performance.now() - t0;
      finishedOps++;
      return ms;
    };

    /** Disks [from, to) of the fill layout, `concurrency` at a time, spread over the fill VMs. */
    const fillDisks = async (from: number, to: number, concurrency: number): Promise<number> => {
      const order: number[] = [];
      for (let k = 0; k < DISKS_PER_FILL_VM; k++) {
        for (let v = 0; v < FILL_VMS; v++) {
          const i = v * DISKS_PER_FILL_VM + k;
          if (i >= from && i < to) order.push(i);
        }
      }
      const t0 = performance.now();
      let next = 0;
      let lastReport = t0;
      await Promise.all(
        Array.from({ length: Math.min(concurrency, order.length) }, async () => {
          while (next < order.length) {
            const i = order[next++]!;
            await createDisk(fills[Math.floor(i / DISKS_PER_FILL_VM)]!, i, 'fill', DiskSharing.DISK_SHARING_DEDICATED);
            disksPresent++;
            if (performance.now() - lastReport > 5000) {
              lastReport = performance.now();
              process.stderr.write(`    ${disksPresent.toLocaleString('en-US')} disks present ...\n`);
            }
          }
        }),
      );
      return (performance.now() - t0) / 1000;
    };

    const measure = async (
      row: Omit<Row, keyof Measured | 'agentCpu' | 'storageCpu' | 'clientCpu'>,
      op: (worker: number, n: number) => Promise<unknown>,
    ): Promise<Row> => {
      const cpu = cpuWindow(agent!.pid, storage!.pid);
      const m = await closedLoop({ concurrency: row.concurrency, seconds, warmupSeconds, window: cpu.window }, op);
      const r: Row = { ...row, ...m, ...cpu.result() };
      rows.push(r);
      return r;
    };

    /**
     * Creates, then removes, as two measured phases: `concurrency` closed loops each create a
     * disk at a fresh mount path and wait for it to be done (worker w on VM w; a single worker
     * goes round all the worker VMs, so no VM runs out of SCSI locations), up to
     * MAX_CREATES_PER_PHASE (LUN ids are 4,096 per node, and a shared disk takes one on every
     * node); then the same loops remove what was created and wait for each removal.
     */
    const measureProvision = async (phase: Phase, concurrency: number): Promise<void> => {
      const label = `${phase} x${concurrency}`;
      process.stderr.write(`  ${label} ...`);
      const disks = disksPresent;
      const created: { vm: GuestVm; n: number }[] = [];
      const creates: number[] = [];
      let recording = false;
      const createCpu = cpuWindow(agent!.pid, storage!.pid);
      const cm = await closedLoop(
        {
          concurrency,
          seconds,
          warmupSeconds,
          maxOps: MAX_CREATES_PER_PHASE,
          window: {
            start: () => {
              recording = true;
              createCpu.window.start();
            },
            stop: () => {
              recording = false;
              createCpu.window.stop();
            },
          },
        },
        async (w) => {
          const n = seq++;
          const vm = concurrency === 1 ? workers[n % workers.length]! : workers[w]!;
          const rec = recording;
          const ms = await createDisk(vm, n, 'loop');
          created.push({ vm, n });
          if (rec) creates.push(ms);
        },
      );
      rows.push({
        phase,
        disks,
        concurrency,
        ops: cm.ops,
        seconds: cm.seconds,
        rate: cm.rate,
        ...createCpu.result(),
        name: 'CreateDisk→done',
        unit: 'provisions/s',
        p50Ms: percentile(creates, 50),
        p99Ms: percentile(creates, 99),
      });
      const removes: number[] = [];
      const removeCpu = cpuWindow(agent!.pid, storage!.pid);
      let next = 0;
      const rm = await closedLoop({ concurrency, seconds, warmupSeconds: 0, maxOps: created.length, window: removeCpu.window }, async () => {
        const d = created[next++];
        if (!d) return;
        removes.push(await removeDisk(d.vm, d.n, 'loop'));
      });
      // What the measured window did not reach is removed before the next phase.
      await Promise.all(
        Array.from({ length: concurrency }, async () => {
          for (let d = created[next++]; d; d = created[next++]) await removeDisk(d.vm, d.n, 'loop');
        }),
      );
      rows.push({
        phase,
        disks,
        concurrency,
        ops: rm.ops,
        seconds: rm.seconds,
        rate: rm.rate,
        ...removeCpu.result(),
        name: 'RemoveDisk→done',
        unit: 'removes/s',
        p50Ms: percentile(removes, 50),
        p99Ms: percentile(removes, 99),
      });
      process.stderr.write(` ${fmt(cm.rate)} provisions/s (create p50 ${fmt(percentile(creates, 50), 2)} ms), ${fmt(rm.rate)} removes/s\n`);
    };

    // 1. The floor: an empty RPC on a guest socket.
    if (want('ping')) {
      const empty = Buffer.alloc(0);
      for (const c of [1, 64]) {
        process.stderr.write(`  ping x${c} ...`);
        const r = await measure({ name: 'Ping (guest socket)', phase: 'ping', concurrency: c, unit: 'calls/s' }, () => diag.ping({ payload: empty }));
        process.stderr.write(` ${fmt(r.rate)} calls/s\n`);
      }
    }

    // 2. Provisioning with 10 disks present, then with 4,000.
    if (needDisks) {
      await fillDisks(0, BASE_DISKS, BASE_DISKS);
    }
    if (want('provision-10') || want('provision-4000')) {
      process.stderr.write(`  warming the agent up: ${AGENT_WARMUP_CYCLES_PER_VM} create+remove cycles on each of ${workers.length} VMs ...`);
      const t0 = performance.now();
      await Promise.all(
        workers.map(async (vm) => {
          for (let i = 0; i < AGENT_WARMUP_CYCLES_PER_VM; i++) {
            const n = seq++;
            await createDisk(vm, n, 'warmup');
            await removeDisk(vm, n, 'warmup');
          }
        }),
      );
      agentWarmup = { cycles: AGENT_WARMUP_CYCLES_PER_VM * workers.length, seconds: (performance.now() - t0) / 1000 };
      process.stderr.write(` ${fmt(agentWarmup.seconds)} s\n`);
    }
    if (want('provision-10')) {
      for (const c of [1, WORKER_VMS]) await measureProvision('provision-10', c);
    }
    if (!skip4000 && (want('provision-4000') || want('startup'))) {
      process.stderr.write(`  pre-creating ${(FILLED_DISKS - disksPresent).toLocaleString('en-US')} disks, ${PRECREATE_CONCURRENCY} at a time ...\n`);
      const from = disksPresent;
      const s = await fillDisks(from, FILLED_DISKS, PRECREATE_CONCURRENCY);
      precreate = { disks: FILLED_DISKS - from, from, to: FILLED_DISKS, concurrency: PRECREATE_CONCURRENCY, seconds: s, rate: (FILLED_DISKS - from) / s };
      process.stderr.write(`    done in ${fmt(s)} s (${fmt(precreate.rate)} disks/s)\n`);
    }
    if (want('provision-4000')) {
      for (const c of [1, WORKER_VMS]) await measureProvision('provision-4000', c);
    }

    // 3. Start-up with at least JOURNAL_OPS finished operations on record.
    if (want('startup')) {
      const topUpFrom = finishedOps;
      const t0 = performance.now();
      if (finishedOps < JOURNAL_OPS) {
        process.stderr.write(`  startup: ${(JOURNAL_OPS - finishedOps).toLocaleString('en-US')} more operations for the journal ...\n`);
        let lastReport = t0;
        await Promise.all(
          workers.map(async (vm) => {
            while (finishedOps < JOURNAL_OPS) {
              const n = seq++;
              await createDisk(vm, n, 'journal');
              await removeDisk(vm, n, 'journal');
              if (performance.now() - lastReport > 5000) {
                lastReport = performance.now();
                process.stderr.write(`    ${finishedOps.toLocaleString('en-US')} operations ...\n`);
              }
            }
          }),
        );
      }
      const topUpSeconds = (performance.now() - t0) / 1000;
      const journalOps = finishedOps;
      process.stderr.write(`  startup: ${journalOps.toLocaleString('en-US')} finished operations, ${disksPresent} disks; restarting the host agent ...\n`);

      const before = await admin.getCluster({});
      admin.close();
      const shutdown = await agent.stop();
      const runsMs: number[] = [];
      for (let i = 0; i < STARTUP_RUNS; i++) {
        if (i > 0) await agent.stop();
        agent = await startAgent(storage.address);
        runsMs.push(agent.startMs);
        process.stderr.write(`    start ${i + 1}: ${fmt(agent.startMs)} ms\n`);
      }
      const bareNodeRunsMs: number[] = [];
      for (let i = 0; i < NODE_RUNS; i++) bareNodeRunsMs.push(await timeBareNode());

      admin = connect(AdminServiceClient, agent.address);
      clients.push(admin);
      const after = await admin.getCluster({});
      if (after.diskCount !== before.diskCount) {
        process.stderr.write(`    WARNING: ${before.diskCount} disks before the restart, ${after.diskCount} after\n`);
      }
      // What the journal holds after the restart, as the admin API lists it.
      let operationsListed: number | string;
      try {
        let count = 0;
        let pageToken = '';
        for (let page = 0; page < 10_000; page++) {
          const res = await admin.listOperations({ vmId: '', state: OperationState.OPERATION_STATE_UNSPECIFIED, pageSize: 1000, pageToken });
          count += res.operations.length;
          pageToken = res.nextPageToken;
          if (!pageToken) break;
        }
        operationsListed = count;
        if (count < journalOps) process.stderr.write(`    WARNING: ListOperations lists ${count} operations; ${journalOps} finished before the restart\n`);
      } catch (err) {
        operationsListed = `ListOperations failed: ${err instanceof Error ? err.message : String(err)}`;
        process.stderr.write(`    WARNING: ${operationsListed}\n`);
      }
      // The restarted agent provisions: one cycle on a fresh connection to w1's endpoint.
      let firstCycleAfterMs: { create: number; remove: number } | undefined;
      {
        const w1 = workers[0]!;
        const vm = (await admin.listVms({ node: '' })).vms.find((v) => v.id === w1.spec.id);
        const guest = connect(GuestServiceClient, vm?.guestEndpoint || w1.endpoint);
        clients.push(guest);
        const fresh: GuestVm = { ...w1, guest };
        const n = seq++;
        const create = await createDisk(fresh, n, 'after-restart');
        const remove = await removeDisk(fresh, n, 'after-restart');
        firstCycleAfterMs = { create, remove };
      }
      startup = {
        journalOps,
        topUpOps: journalOps - topUpFrom,
        topUpSeconds,
        disksPresent,
        shutdownMs: shutdown.ms,
        shutdownKilled: shutdown.killed,
        runsMs,
        medianMs: percentile([...runsMs], 50),
        bareNodeRunsMs,
        bareNodeMedianMs: percentile([...bareNodeRunsMs], 50),
        diskCountAfter: after.diskCount,
        servingAfter: after.serving,
        operationsListed,
        firstCycleAfterMs,
      };
    }

    // 4. Whatever ran, the models and the array must still agree.
    violations = (await admin.checkInvariants({})).violations;
    watchAtEnd = { ...watchStats };
  } finally {
    for (const c of clients) c.close();
    if (agent) await agent.stop();
    if (storage) await storage.stop();
    rmSync(workDir, { recursive: true, force: true });
  }

  // ------------------------------------------------------------ aims
  const row = (phase: Phase, name: string, c: number): Row | undefined =>
    rows.find((r) => r.phase === phase && r.name === name && r.concurrency === c);
  const ping1 = row('ping', 'Ping (guest socket)', 1);
  const ping64 = row('ping', 'Ping (guest socket)', 64);
  const create1 = row('provision-10', 'CreateDisk→done', 1);
  const create64 = row('provision-10', 'CreateDisk→done', WORKER_VMS);
  if (ping1 && create1) {
    const bound = HOP_AIM * CREATE_HOPS * ping1.p50Ms;
    aims.push({
      name: `(a) create p50, 1 VM, ${BASE_DISKS} disks vs ${HOP_AIM} × ${CREATE_HOPS} hops × Ping p50`,
      measured: `${fmt(create1.p50Ms, 2)} ms (${fmt(create1.p50Ms / (CREATE_HOPS * ping1.p50Ms))} × the hops)`,
      target: `<= ${fmt(bound, 2)} ms`,
      met: create1.p50Ms <= bound,
      value: create1.p50Ms,
      bound,
    });
  }
  if (ping64 && create64) {
    const share = create64.rate / ping64.rate;
    aims.push({
      name: `(b) provisions/s, ${WORKER_VMS} VMs vs Ping/s x64`,
      measured: `${fmt(create64.rate)}/s = ${(share * 100).toFixed(2)}%`,
      target: `>= ${Math.round(PROVISION_AIM * 100)}% (${fmt(PROVISION_AIM * ping64.rate)}/s)`,
      met: share >= PROVISION_AIM,
      value: share,
      bound: PROVISION_AIM,
    });
  }
  for (const c of [1, WORKER_VMS]) {
    for (const name of ['CreateDisk→done', 'RemoveDisk→done']) {
      const small = row('provision-10', name, c);
      const big = row('provision-4000', name, c);
      if (!small || !big) continue;
      const ratio = big.p50Ms / small.p50Ms;
      aims.push({
        name: `(c) ${name} p50 x${c}, ${FILLED_DISKS.toLocaleString('en-US')} vs ${BASE_DISKS} disks`,
        measured: `${fmt(big.p50Ms, 2)} vs ${fmt(small.p50Ms, 2)} ms = ${ratio.toFixed(2)}×`,
        target: `<= ${SCALE_AIM}×`,
        met: ratio <= SCALE_AIM,
        value: ratio,
        bound: SCALE_AIM,
      });
    }
  }
  if (startup) {
    aims.push({
      name: `(d) start-up, ${startup.journalOps.toLocaleString('en-US')} operations, ${startup.disksPresent.toLocaleString('en-US')} disks`,
      measured: `${fmt(startup.medianMs)} ms (bare node ${fmt(startup.bareNodeMedianMs)} ms)`,
      target: `< ${STARTUP_AIM_MS} ms`,
      met: startup.medianMs < STARTUP_AIM_MS,
      value: startup.medianMs,
      bound: STARTUP_AIM_MS,
    });
  }

  // ------------------------------------------------------------ report
  const table = formatTable(rows, [
    { title: 'benchmark', value: (r) => r.name, right: false },
    { title: 'disks', value: (r) => (r.disks === undefined ? '' : r.disks.toLocaleString('en-US')) },
    { title: 'conc', value: (r) => String(r.concurrency) },
    { title: 'rate', value: (r) => fmt(r.rate) },
    { title: 'unit', value: (r) => r.unit, right: false },
    { title: 'p50 ms', value: (r) => fmt(r.p50Ms, 2) },
    { title: 'p99 ms', value: (r) => fmt(r.p99Ms, 2) },
    { title: 'agent cpu', value: (r) => fmt(r.agentCpu, 2) },
    { title: 'sim cpu', value: (r) => fmt(r.storageCpu, 2) },
    { title: 'cli cpu', value: (r) => fmt(r.clientCpu, 2) },
  ]);
  process.stdout.write(`\n${table}\n`);
  const lines: string[] = [];
  lines.push(`host-agent first start (empty data dir): ${fmt(firstStartMs)} ms`);
  if (agentWarmup) {
    lines.push(`agent warm-up before the provisioning phases (unmeasured): ${agentWarmup.cycles} create+remove cycles at ${WORKER_VMS} VMs in ${fmt(agentWarmup.seconds)} s`);
  }
  if (precreate) {
    lines.push(
      `pre-created ${precreate.disks.toLocaleString('en-US')} disks (${precreate.from} → ${precreate.to.toLocaleString('en-US')}), ` +
        `${precreate.concurrency} at a time, in ${fmt(precreate.seconds)} s (${fmt(precreate.rate)} disks/s)`,
    );
  }
  if (startup) {
    lines.push(
      `journal: ${startup.journalOps.toLocaleString('en-US')} finished operations (${startup.topUpOps.toLocaleString('en-US')} added for this phase in ${fmt(startup.topUpSeconds)} s); ` +
        `listed after restart: ${typeof startup.operationsListed === 'number' ? startup.operationsListed.toLocaleString('en-US') : startup.operationsListed}`,
    );
    lines.push(`SIGTERM → exit: ${fmt(startup.shutdownMs)} ms${startup.shutdownKilled ? ' (did not exit in 5 s: SIGKILLed)' : ''}`);
    lines.push(
      `restart spawn → "serving on": ${startup.runsMs.map((v) => fmt(v)).join(', ')} ms (median ${fmt(startup.medianMs)}); ` +
        `bare \`node -e 0\`: median ${fmt(startup.bareNodeMedianMs)} ms of ${NODE_RUNS} (${((startup.bareNodeMedianMs / startup.medianMs) * 100).toFixed(0)}% of it)`,
    );
    lines.push(`disks after restart: ${startup.diskCountAfter ?? '—'} (expected ${startup.disksPresent}); serving: ${startup.servingAfter}`);
    if (startup.firstCycleAfterMs) {
      lines.push(`first create / remove after restart: ${fmt(startup.firstCycleAfterMs.create, 2)} / ${fmt(startup.firstCycleAfterMs.remove, 2)} ms`);
    }
  }
  const unended = watchAtEnd.notEndedByServer + watchAtEnd.awaitingEnd;
  if (unended > 0) {
    lines.push(`WARNING: ${unended.toLocaleString('en-US')} of ${watchAtEnd.streams.toLocaleString('en-US')} WatchOperation streams were not ended by the server after the final state`);
  }
  lines.push(`CheckInvariants: ${violations.length} violation${violations.length === 1 ? '' : 's'}`);
  for (const v of violations.slice(0, 20)) lines.push(`  ${v.kind} ${v.subject}: ${v.description}`);
  if (violations.length > 20) lines.push(`  ... and ${violations.length - 20} more`);
  process.stdout.write(`\n${lines.join('\n')}\n`);
  if (aims.length > 0) {
    const aimTable = formatTable(aims, [
      { title: 'aim', value: (a) => a.name, right: false },
      { title: 'measured', value: (a) => a.measured },
      { title: 'target', value: (a) => a.target },
      { title: 'met?', value: (a) => (a.met ? 'yes' : 'NO'), right: false },
    ]);
    process.stdout.write(`\n${aimTable}\n`);
  }
  process.stdout.write('\n');

  const results = {
    name: 'provision',
    startedAt: new Date(started).toISOString(),
    durationSeconds: (Date.now() - started) / 1000,
    secondsPerPhase: seconds,
    warmupSeconds,
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    setup: {
      nodes: NODES,
      workerVms: WORKER_VMS,
      fillVms: FILL_VMS,
      disksPerFillVm: DISKS_PER_FILL_VM,
      baseDisks: BASE_DISKS,
      filledDisks: skip4000 ? null : FILLED_DISKS,
      diskBytes: DISK_BYTES,
      sharing: values.sharing,
      ha: shared,
      guestOs: 'alternating windows (C:\\d<n>) and linux (/mnt/d<n>)',
      completion: 'WatchOperation right after CreateDisk/RemoveDisk; time until the SUCCEEDED message',
      hostAgent: agentScript,
      logs: 'JSON lines to files, default level',
      dataDirParent: values.tmp ?? tmpdir(),
    },
    hops: { create: CREATE_HOPS, aimMultiple: HOP_AIM },
    aimsConfig: { provisionShareOfPing64: PROVISION_AIM, scaleP50: SCALE_AIM, startupMs: STARTUP_AIM_MS },
    notes:
      'agent/sim/cli cpu: CPU seconds per wall second of host-agent, storage-sim and the benchmark in the measured window; ' +
      'provisions/s = creates completed per second in a phase of creates only; removes/s likewise in the phase of removes that follows; the disks already present are dedicated disks of non-HA VMs',
    firstStartMs,
    agentWarmup: agentWarmup ?? null,
    rows,
    aims,
    precreate: precreate ?? null,
    startup: startup ?? null,
    finishedOps,
    watch: watchAtEnd,
    invariants: { violations: violations.length, list: violations },
  };
  const out = writeResults('provision', results, values['json-out']);
  process.stdout.write(`results written to ${out}\n`);
  const missed = aims.filter((a) => !a.met);
  if (missed.length > 0) process.stdout.write(`aims missed: ${missed.map((a) => a.name).join('; ')}\n`);
  if (violations.length > 0) {
    process.stdout.write(`CheckInvariants found ${violations.length} violation(s): the run fails\n`);
    process.exitCode = 1;
  }
}

runBench(main);
