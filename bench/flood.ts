/**
 * Benchmark of one guest flooding its host while others provision: a real storage-sim and a
 * real host-agent process (default per-VM limits), a cluster of three nodes, 8 tenant VMs
 * and one flooder.
 *
 *   - without the flood: each tenant VM creates a disk and removes it again in a closed
 *     loop; CreateDisk→done and RemoveDisk→done latency (p50, p99) across them;
 *   - with the flood: the same, while another process floods the flooder VM's endpoint with
 *     ListDisks, 64 calls in flight (as many a second as one process makes, over a lean
 *     HTTP/2 client); its calls answered and refused (RESOURCE_EXHAUSTED with RetryInfo)
 *     are counted;
 *   - CheckInvariants at the end (any violation fails the run).
 *
 * Aim printed beside the figures: the tenants' p99 with the flood at most 2 × without it.
 *
 * Usage: node dist/bench/flood.js [--seconds N] [--json-out PATH] [--tmp DIR]
 */
import { fork } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { connect } from '../common/client.js';
import { statusDetails } from '../common/status.js';
import { unaryClient } from '../common/unary-client.js';
import { AdminServiceClient, DiskSharing, GuestServiceClient, GuestServiceService } from '../proto/gen/passthru/host/v1/host.js';
import { untilDone } from './operations.js';
import { cpuWindow, startService, type Service } from './processes.js';
import { closedLoop, fmt, formatTable, phaseSeconds, repoRoot, runBench, writeResults, type Measured } from './report.js';

const MiB = 1024 * 1024;
const TENANTS = 8;
/** Flooding processes, each with this many calls in flight. */
const FLOOD_PROCESSES = 1;
const FLOOD_IN_FLIGHT = 64;

/** The flood, in its own process so it does not share this one's CPU: prints its counts as JSON at the end. */
async function floodChild(endpoint: string, seconds: number): Promise<void> {
  // The lean HTTP/2 client: a flooder wants as many calls a second as one process can make.
  const g = unaryClient(GuestServiceService, endpoint, { timeoutMs: 10_000 });
  const end = Date.now() + seconds * 1000;
  const counts = { answered: 0, refused: 0, refusedWithRetryInfo: 0, other: 0 };
  await Promise.all(
    Array.from({ length: FLOOD_IN_FLIGHT }, async () => {
      while (Date.now() < end) {
        try {
          await g.listDisks({});
          counts.answered++;
        } catch (err) {
          const e = err as ServiceError;
          if (e.code !== Code.RESOURCE_EXHAUSTED) counts.other++;
          else {
            counts.refused++;
            if ((statusDetails(e).retryAfterMs ?? 0) > 0) counts.refusedWithRetryInfo++;
          }
        }
      }
    }),
  );
  g.close();
  process.send!({ ...counts, seconds });
}


async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '6' },
      warmup: { type: 'string' },
      'json-out': { type: 'string' },
      tmp: { type: 'string' },
      'flood-child': { type: 'string' },
    },
  });
  const { seconds, warmupSeconds } = phaseSeconds(values);
  if (values['flood-child']) return floodChild(values['flood-child'], seconds + warmupSeconds);

  const root = repoRoot();
  const work = mkdtempSync(join(values.tmp ?? tmpdir(), 'pt-flood-'));
  const clusterFile = join(work, 'cluster.json');
  const vms = [...Array.from({ length: TENANTS }, (_, i) => ({ id: `t${i + 1}`, guestOs: 'linux', ha: true, node: `node${(i % 3) + 1}` })), { id: 'flooder', guestOs: 'linux', ha: true, node: 'node1' }];
  writeFileSync(
    clusterFile,
    JSON.stringify({ name: 'flood', volume: 'passthru', nodes: [1, 2, 3].map((n) => ({ name: `node${n}`, initiator: `iqn.2026-11.dev.passthru:node${n}` })), vms }),
  );
  let storage: Service | undefined;
  let agent: Service | undefined;
  try {
    storage = await startService('storage-sim', join(root, 'bin', 'storage-sim.js'), ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(work, 'array')], join(work, 'storage-sim.log'), 15_000);
    agent = await startService(
      'host-agent',
      join(root, 'bin', 'host-agent.js'),
      ['serve', '--listen', '127.0.0.1:0', '--storage', storage.address, '--data-dir', join(work, 'host'), '--cluster', clusterFile, '--socket-dir', join(work, 's')],
      join(work, 'host-agent.log'),
      60_000,
    );
    const endpoint = (vm: string): string => `unix:${join(work, 's', `${vm}.sock`)}`;
    const tenants = Array.from({ length: TENANTS }, (_, i) => connect(GuestServiceClient, endpoint(`t${i + 1}`), { timeoutMs: 60_000 }));
    // Each loop creates a disk and removes it again; the create is what is timed.
    const provision = async (label: string): Promise<{ create: Measured; cycle: Measured; cpu: ReturnType<ReturnType<typeof cpuWindow>['result']> }> => {
      const createLat: number[] = [];
      const cpu = cpuWindow(agent!.pid, storage!.pid);
      const measured = await closedLoop({ concurrency: TENANTS, seconds, warmupSeconds, window: cpu.window }, async (w) => {
        const g = tenants[w]!;
        const mount = `/d${w}`;
        const t0 = performance.now();
        await untilDone(g, (await g.createDisk({ requestId: `${label}-${w}-${t0}`, mountPath: mount, sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })).operation, `create ${mount}`);
        createLat.push(performance.now() - t0);
        await untilDone(g, (await g.removeDisk({ requestId: `${label}-${w}-${t0}-rm`, mountPath: mount, deleteLun: true })).operation, `remove ${mount}`);
      });
      createLat.sort((a, b) => a - b);
      const pick = (p: number): number => createLat[Math.min(createLat.length - 1, Math.max(0, Math.ceil((p / 100) * createLat.length) - 1))]!;
      return { create: { ...measured, p50Ms: pick(50), p99Ms: pick(99) }, cycle: measured, cpu: cpu.result() };
    };

    process.stderr.write(`  tenants alone (${TENANTS} VMs, create+remove loops) ...`);
    const alone = await provision('alone');
    process.stderr.write(` create p99 ${fmt(alone.create.p99Ms)} ms\n  tenants with vm "flooder" flooding its endpoint (${FLOOD_PROCESSES === 1 ? "one process" : `${FLOOD_PROCESSES} processes`}, ${FLOOD_IN_FLIGHT} calls in flight) ...`);
    type Counts = { answered: number; refused: number; refusedWithRetryInfo: number; other: number; seconds: number };
    const floods = Array.from({ length: FLOOD_PROCESSES }, () => {
      const child = fork(process.argv[1]!, ['--flood-child', endpoint('flooder'), '--seconds', String(seconds), '--warmup', String(warmupSeconds)], { stdio: ['ignore', 'ignore', 'inherit', 'ipc'] });
      return new Promise<Counts>((resolve, reject) => {
        child.once('message', (m) => resolve(m as Counts));
        child.once('exit', (code) => (code === 0 ? undefined : reject(new Error(`a flood process exited ${code}`))));
      });
    });
    const flooded = await provision('flooded');
    const flood = (await Promise.all(floods)).reduce((a, b) => ({
      answered: a.answered + b.answered,
      refused: a.refused + b.refused,
      refusedWithRetryInfo: a.refusedWithRetryInfo + b.refusedWithRetryInfo,
      other: a.other + b.other,
      seconds: Math.max(a.seconds, b.seconds),
    }));
    process.stderr.write(` create p99 ${fmt(flooded.create.p99Ms)} ms\n`);
    for (const t of tenants) t.close();

    const admin = connect(AdminServiceClient, agent.address);
    const violations = (await admin.checkInvariants({})).violations;
    admin.close();

    const rows = [
      { name: 'CreateDisk→done, tenants alone', m: alone.create, cpu: alone.cpu },
      { name: 'CreateDisk→done, tenants during the flood', m: flooded.create, cpu: flooded.cpu },
    ];
    process.stdout.write(
      `\n${formatTable(rows, [
        { title: 'benchmark', value: (r) => r.name, right: false },
        { title: 'VMs', value: () => String(TENANTS) },
        { title: 'creates', value: (r) => String(r.m.ops) },
        { title: 'p50 ms', value: (r) => fmt(r.m.p50Ms, 2) },
        { title: 'p99 ms', value: (r) => fmt(r.m.p99Ms, 2) },
        { title: 'agent cpu', value: (r) => fmt(r.cpu.agentCpu, 3) },
        { title: 'sim cpu', value: (r) => fmt(r.cpu.storageCpu, 3) },
      ])}\n`,
    );
    const floodRate = (flood.answered + flood.refused + flood.other) / flood.seconds;
    process.stdout.write(
      `\nflood on vm "flooder": ${fmt(floodRate)} calls/s for ${fmt(flood.seconds)} s; ${flood.answered} answered, ${flood.refused} refused RESOURCE_EXHAUSTED (${flood.refusedWithRetryInfo} with RetryInfo), ${flood.other} other\n`,
    );
    const ratio = flooded.create.p99Ms / alone.create.p99Ms;
    const met = ratio <= 2;
    process.stdout.write(`aim: tenants' create p99 with the flood ${fmt(ratio, 2)} × without it (<= 2 ×): ${met ? 'met' : 'NOT MET'}\nCheckInvariants: ${violations.length} violations\n`);
    const out = writeResults('flood', { seconds, tenants: TENANTS, floodProcesses: FLOOD_PROCESSES, floodInFlight: FLOOD_IN_FLIGHT, alone, flooded, flood: { ...flood, rate: floodRate }, p99Ratio: ratio, aimMet: met, violations }, values['json-out']);
    process.stdout.write(`\nresults written to ${out}\n`);
    if (violations.length > 0) throw new Error(`CheckInvariants found ${violations.length} violations: ${JSON.stringify(violations)}`);
    if (flood.refusedWithRetryInfo === 0) throw new Error('the flood was never refused with RetryInfo: the limit did not hold');
  } finally {
    await agent?.stop();
    await storage?.stop();
    rmSync(work, { recursive: true, force: true });
  }
}

runBench(main);
