/**
 * Benchmark of pass-through block I/O and of failover, as a guest and an administrator see
 * them: a real storage-sim and a real host-agent process (compiled, default log level, their
 * JSON log lines going to files), a cluster of three nodes, measured from this process over
 * each VM's own guest endpoint (a Unix socket), the admin API and the array's API.
 *
 *   - 1 MiB WriteDisk and ReadDisk through the host agent at 1 and 4 in flight on one 256 MiB
 *     shared disk of an HA VM (offsets wrapping over the disk), BESIDE the array's own
 *     WriteBlocks and ReadBlocks of 1 MiB at 1 and 4 in flight on the same LUN, sent as the
 *     initiator of the node the VM runs on (aim: host ≥ 70 % of the array);
 *   - 4 KiB ReadDisk and WriteDisk at 1 and 64 in flight beside the array's 4 KiB calls
 *     (calls/s, reported only);
 *   - failover: node1 runs 8 HA VMs holding 64 shared disks (8 each); FailNode(node1), and per
 *     disk the time from sending it until the disk's resource is Online on its new node
 *     (ListGroups polled back to back, a few ms apart, beside the time FailNode returns);
 *     then every disk written (and read back) through its VM's socket, and a WriteBlocks as
 *     node1's initiator to every LUN refused (FAILED_PRECONDITION, reservation conflict);
 *     then RecoverNode(node1) and MoveGroup of each VM group back to node1, timed, with the
 *     same checks the other way round;
 *   - CheckInvariants at the end (any violation, or a failed check, fails the run).
 *
 * Usage: node dist/bench/io.js [--seconds N] [--warmup N] [--json-out PATH] [--only REGEX]
 *        [--tmp DIR] [--skip-failover] [--host-agent PATH] [--agent-cpu-prof DIR]
 *
 *   --seconds N        measured seconds per I/O round (default 2), after a warm-up (--warmup,
 *                      default a third of it, 0.5-1 s)
 *   --rounds N         rounds per row (default 3): the array's path and the host agent's in
 *                      turns; a row's figures are its median round's, the ratio the median
 *                      of the rounds' ratios
 *   --json-out PATH    where the JSON goes (default bench/results/io.json)
 *   --only REGEX       run only the phases whose name matches: write-1m, read-1m, write-4k,
 *                      read-4k, failover (each I/O phase holds its host and array rows)
 *   --tmp DIR          where the temporary data dir is made (default the OS temp dir; keep
 *                      it short: the guest sockets live there and a socket path has at most
 *                      107 bytes)
 *   --skip-failover    leave out the failover phase (and the 64 disks it needs)
 *   --host-agent PATH  the host agent's entry script (default bin/host-agent.js)
 *   --agent-cpu-prof DIR  run the host agent with --cpu-prof, writing its profile to DIR
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import { connect, type PromiseClient } from '../common/client.js';
import {
  AdminServiceClient,
  DiskSharing,
  GroupKind,
  GuestServiceClient,
  NodeState,
  ResourceState,
  VmState,
  type FailNodeResponse,
  type GroupMove,
  type Operation,
  type ScsiAddress,
  type Violation,
} from '../proto/gen/passthru/host/v1/host.js';
import { StorageArrayServiceClient } from '../proto/gen/passthru/storage/v1/storage.js';
import { annotate, untilDone } from './operations.js';
import { cpuWindow, startService, type Service } from './processes.js';
import { closedLoop, fmt, formatTable, percentile, repoRoot, writeResults, type Measured, usageError, phaseSeconds, runBench } from './report.js';

const KiB = 1024;
const MiB = 1024 * KiB;
/** The disk the I/O phases run on; offsets wrap over all of it. */
const IO_DISK_BYTES = 256 * MiB;
/** Aim: host-agent MiB/s at least this share of the array's, 1 MiB calls, same concurrency. */
const HOST_AIM = 0.7;
const BIG_CONCURRENCY = [1, 4];
const SMALL_CONCURRENCY = [1, 64];

const NODES = ['node1', 'node2', 'node3'];
const INITIATOR = (node: string): string => `iqn.2026-11.dev.passthru:${node}`;
/** The node that fails, and where its HA VMs run before. */
const FAILED_NODE = 'node1';
/** The I/O VM runs elsewhere, so the failover moves only the failover VMs' disks. */
const IO_NODE = 'node2';
const FAILOVER_VMS = 8;
const DISKS_PER_FAILOVER_VM = 8;
const FAILOVER_DISK_BYTES = 16 * MiB;
/** Gap between ListGroups polls while the failover runs (one poll in flight at a time). */
const POLL_GAP_MS = 2;
/** Longest the failover (or the move back) may take before the run fails. */
const FAILOVER_TIMEOUT_MS = 60_000;
/** Bytes written (and read back) to each disk to show it is writable after a move. */
const PROBE_BYTES = 4 * KiB;
/** SIGTERM, then SIGKILL after this long. */

const PHASES = ['write-1m', 'read-1m', 'write-4k', 'read-4k', 'failover'] as const;
type Phase = (typeof PHASES)[number];

interface Row extends Measured {
  phase: Phase;
  name: string;
  /** Through the host agent (guest socket) or straight to the array. */
  via: 'host agent' | 'array';
  blockBytes: number;
  concurrency: number;
  unit: 'MiB/s' | 'calls/s';
  /** The row this one is compared with (same phase and concurrency). */
  baseline?: string;
  ratio?: number;
  aim?: number;
  met?: boolean;
  /** Each round's rate, and (host rows) each round's ratio to the array round before it. */
  roundRates?: number[];
  roundRatios?: number[];
  /** CPU seconds per wall second in the measured window: host-agent, storage-sim, this process. */
  agentCpu?: number;
  storageCpu?: number;
  clientCpu?: number;
}

interface Check {
  name: string;
  ok: boolean;
  detail: string;
}

// ---------------------------------------------------------------- processes

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

/** A disk the benchmark created, as the operation's result and the array describe it. */
interface BenchDisk {
  vmId: string;
  mountPath: string;
  serial: string;
  address: ScsiAddress;
  /** The LUN's uuid on the array (looked up by serial). */
  lun: string;
  /** The VM's group (ListVms). */
  group: string;
}

function mountPathFor(os: GuestOsName, n: number): string {
  return os === 'windows' ? `C:\\d${n}` : `/mnt/d${n}`;
}


function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number';
}

function codeName(err: unknown): string {
  return isServiceError(err) ? (GrpcStatus[err.code] ?? String(err.code)) : 'not a gRPC error';
}

function errText(err: unknown): string {
  if (isServiceError(err)) return `${codeName(err)}: ${err.details}`;
  return err instanceof Error ? err.message : String(err);
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Runs `fn` over `items`, `concurrency` at a time. */
async function eachLimit<T>(items: T[], concurrency: number, fn: (item: T, i: number) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        await fn(items[i]!, i);
      }
    }),
  );
}

/** A 4 KiB block that names the disk and the moment, so a read-back shows it is this write's. */
function probeBlock(serial: string, tag: string): Buffer {
  const b = Buffer.alloc(PROBE_BYTES);
  b.write(`passthru bench io ${serial} ${tag} ${Date.now()} `.padEnd(256, '.'));
  randomBytes(PROBE_BYTES - 256).copy(b, 256);
  return b;
}

function summary(values: number[]): { n: number; p50Ms: number; p99Ms: number; maxMs: number } {
  const v = [...values];
  return { n: v.length, p50Ms: percentile(v, 50), p99Ms: percentile(v, 99), maxMs: v.length ? Math.max(...v) : Number.NaN };
}

// ---------------------------------------------------------------- the benchmark

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '2' },
      rounds: { type: 'string', default: '3' },
      warmup: { type: 'string' },
      'json-out': { type: 'string' },
      only: { type: 'string' },
      tmp: { type: 'string' },
      'skip-failover': { type: 'boolean', default: false },
      'host-agent': { type: 'string' },
      'agent-cpu-prof': { type: 'string' },
    },
  });
  const { seconds, warmupSeconds } = phaseSeconds(values);
  const rounds = Number(values.rounds);
  if (!Number.isInteger(rounds) || rounds < 1 || rounds > 50) throw usageError(`--rounds ${values.rounds}: give a whole number from 1 to 50`);
  let only: RegExp | undefined;
  try {
    only = values.only ? new RegExp(values.only, 'i') : undefined;
  } catch (err) {
    throw usageError(`--only ${values.only}: ${err instanceof Error ? err.message : String(err)}`);
  }
  const want = (phase: Phase): boolean => (!only || only.test(phase)) && !(phase === 'failover' && values['skip-failover']);
  const ioPhases = PHASES.filter((p) => p !== 'failover' && want(p));
  if (ioPhases.length === 0 && !want('failover')) throw usageError(`--only ${values.only}: matches none of ${PHASES.join(', ')}`);

  const root = repoRoot();
  const agentScript = values['host-agent'] ? resolve(values['host-agent']) : join(root, 'bin', 'host-agent.js');
  if (!existsSync(agentScript)) throw usageError(`${agentScript} does not exist (build the host agent first: npm run build)`);
  const workDir = mkdtempSync(join(values.tmp ?? tmpdir(), 'passthru-bench-'));
  const started = Date.now();
  const run = started.toString(36);
  const rows: Row[] = [];
  const checks: Check[] = [];
  const check = (name: string, ok: boolean, detail: string): void => {
    checks.push({ name, ok, detail });
    process.stderr.write(`    ${ok ? 'ok' : 'FAILED'}: ${name}${detail ? ` (${detail})` : ''}\n`);
  };

  const ioVm: VmSpec = { id: 'io1', name: 'io1', guestOs: 'linux', ha: true, node: IO_NODE, state: 'running' };
  const failoverVms: VmSpec[] = Array.from({ length: FAILOVER_VMS }, (_, i) => ({
    id: `fo${i + 1}`,
    name: `fo${i + 1}`,
    guestOs: i % 2 === 0 ? 'windows' : 'linux',
    ha: true,
    node: FAILED_NODE,
    state: 'running',
  }));
  const clusterFile = join(workDir, 'cluster.json');
  const socketDir = join(workDir, 'sock');
  mkdirSync(socketDir);
  writeFileSync(
    clusterFile,
    `${JSON.stringify(
      {
        name: 'bench',
        availableStorageOwner: FAILED_NODE,
        nodes: NODES.map((name) => ({ name, initiator: INITIATOR(name) })),
        vms: [ioVm, ...failoverVms],
      },
      null,
      2,
    )}\n`,
  );

  let storage: Service | undefined;
  let agent: Service | undefined;
  const clients: { close(): void }[] = [];
  let violations: Violation[] = [];
  let ioSetup: Record<string, unknown> | undefined;
  let failover: Record<string, unknown> | undefined;

  try {
    storage = await startService(
      'storage-sim',
      join(root, 'bin', 'storage-sim.js'),
      ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(workDir, 'storage-sim')],
      join(workDir, 'storage-sim.log'),
      15_000,
    );
    agent = await startService(
      'host-agent',
      agentScript,
      ['serve', '--listen', '127.0.0.1:0', '--storage', storage.address, '--data-dir', join(workDir, 'host-agent'), '--cluster', clusterFile, '--socket-dir', socketDir],
      join(workDir, 'host-agent.log'),
      60_000,
      values['agent-cpu-prof'] ? ['--cpu-prof', '--cpu-prof-dir', resolve(values['agent-cpu-prof'])] : [],
    );
    process.stderr.write(
      `storage-sim pid ${storage.pid} on ${storage.address}; host-agent pid ${agent.pid} on ${agent.address} ` +
        `(started in ${fmt(agent.startMs)} ms); work dir ${workDir}\n`,
    );
    const agentPid = agent.pid;
    const storagePid = storage.pid;

    const admin = connect(AdminServiceClient, agent.address);
    clients.push(admin);
    const array = connect(StorageArrayServiceClient, storage.address);
    clients.push(array);
    const initiatorOf = new Map((await admin.listNodes({})).nodes.map((n) => [n.name, n.initiator]));
    const listVms = async (): Promise<Map<string, { node: string; group: string; endpoint: string; state: VmState }>> =>
      new Map(
        (await admin.listVms({ node: '' })).vms.map((v) => [v.id, { node: v.node, group: v.group, endpoint: v.guestEndpoint, state: v.state }]),
      );
    const vmsAtStart = await listVms();
    const guestFor = (vmId: string, endpoint?: string): PromiseClient<GuestServiceClient> => {
      const at = endpoint ?? vmsAtStart.get(vmId)?.endpoint;
      if (!at) throw new Error(`ListVms gives ${vmId} no guest endpoint`);
      const guest = connect(GuestServiceClient, at);
      clients.push(guest);
      return guest;
    };

    /** Creates a shared disk on the VM, waits for it, and looks its LUN up on the array. */
    const createDisk = async (vm: VmSpec, guest: PromiseClient<GuestServiceClient>, mountPath: string, sizeBytes: number): Promise<BenchDisk> => {
      const what = `CreateDisk ${mountPath} on ${vm.id}`;
      let op: Operation;
      try {
        const res = await guest.createDisk({ requestId: `bench-${run}-${vm.id}-${mountPath}`, mountPath, sizeBytes: BigInt(sizeBytes), sharing: DiskSharing.DISK_SHARING_SHARED });
        op = await untilDone(guest, res.operation, what);
      } catch (err) {
        throw annotate(what, err);
      }
      const result = op.result;
      if (!result?.address || !result.serial) throw new Error(`${what}: the SUCCEEDED operation carries no address or serial`);
      const lun = (await array.getLun({ lun: result.serial })).lun;
      if (!lun) throw new Error(`${what}: the array has no LUN with serial ${result.serial}`);
      return { vmId: vm.id, mountPath, serial: result.serial, address: result.address, lun: lun.uuid, group: vmsAtStart.get(vm.id)?.group ?? '' };
    };

    type RowSpec = Omit<Row, keyof Measured | 'agentCpu' | 'storageCpu' | 'clientCpu' | 'ratio' | 'met' | 'rounds'>;
    const once = async (row: RowSpec, op: (worker: number, n: number) => Promise<unknown>): Promise<Row> => {
      const cpu = cpuWindow(agentPid, storagePid);
      const m = await closedLoop({ concurrency: row.concurrency, seconds, warmupSeconds, window: cpu.window }, op);
      const scale = row.unit === 'MiB/s' ? row.blockBytes / MiB : 1;
      return { ...row, ...m, rate: m.rate * scale, ...cpu.result() };
    };
    const median = (xs: number[]): number => percentile([...xs], 50);
    /** The round whose rate is the median one: its figures stand for the row. */
    const medianRound = (rs: Row[]): Row => [...rs].sort((a, b) => a.rate - b.rate)[Math.floor((rs.length - 1) / 2)]!;
    /**
     * The array's path and the host agent's, measured in turns (array, host, array, host, ...)
     * so that both meet the machine in the same moods: on a shared machine the speed drifts
     * by tens of percent within a minute. The ratio is the median of the rounds' own ratios.
     */
    const measurePair = async (
      arrayRow: RowSpec,
      arrayOp: (worker: number, n: number) => Promise<unknown>,
      hostRow: RowSpec,
      hostOp: (worker: number, n: number) => Promise<unknown>,
    ): Promise<void> => {
      process.stderr.write(`  ${hostRow.name} vs ${arrayRow.name} x${hostRow.concurrency}, ${rounds} rounds ...`);
      const arrays: Row[] = [];
      const hosts: Row[] = [];
      for (let i = 0; i < rounds; i++) {
        arrays.push(await once(arrayRow, arrayOp));
        hosts.push(await once(hostRow, hostOp));
      }
      const a: Row = { ...medianRound(arrays), roundRates: arrays.map((r) => r.rate) };
      const h: Row = { ...medianRound(hosts), roundRates: hosts.map((r) => r.rate) };
      h.ratio = median(hosts.map((r, i) => r.rate / arrays[i]!.rate));
      h.roundRatios = hosts.map((r, i) => r.rate / arrays[i]!.rate);
      if (h.aim !== undefined) h.met = h.ratio >= h.aim;
      rows.push(a, h);
      process.stderr.write(` ${fmt(h.rate)} vs ${fmt(a.rate)} ${h.unit}: ${(h.ratio * 100).toFixed(1)}% of the array (rounds ${h.roundRatios.map((x) => `${(x * 100).toFixed(0)}%`).join(', ')})\n`);
    };

    // 1. Block I/O: the host agent's path beside the array's own, on the same LUN.
    if (ioPhases.length > 0) {
      const guest = guestFor(ioVm.id);
      const t0 = performance.now();
      const disk = await createDisk(ioVm, guest, '/mnt/io', IO_DISK_BYTES);
      const createMs = performance.now() - t0;
      const node = (await listVms()).get(ioVm.id)?.node ?? '';
      const initiator = initiatorOf.get(node);
      if (!initiator) throw new Error(`ListVms puts ${ioVm.id} on "${node}", which ListNodes does not list`);
      const address = disk.address;
      process.stderr.write(
        `  I/O disk: ${IO_DISK_BYTES / MiB} MiB on ${ioVm.id} at ${address.controller}:${address.location}, serial ${disk.serial}, ` +
          `LUN ${disk.lun}; the VM runs on ${node} (${initiator}); created in ${fmt(createMs)} ms\n`,
      );

      // Fill the whole LUN first (unmeasured), so no phase reads holes or allocates extents.
      const fill = randomBytes(MiB);
      const spanMiB = IO_DISK_BYTES / MiB;
      const f0 = performance.now();
      await eachLimit(
        Array.from({ length: spanMiB }, (_, i) => i),
        4,
        async (i) => {
          await array.writeBlocks({ requestId: `bench-${run}-fill-${i}`, lun: disk.lun, initiator, offsetBytes: BigInt(i * MiB), data: fill });
        },
      );
      const fillSeconds = (performance.now() - f0) / 1000;
      process.stderr.write(`  filled the LUN through the array in ${fmt(fillSeconds)} s\n`);

      // The host's path must carry the bytes both ways, or the figures measure nothing.
      process.stderr.write('  round trips between the guest socket and the array:\n');
      {
        const a = randomBytes(MiB);
        try {
          await guest.writeDisk({ requestId: `bench-${run}-rt-w`, address, offsetBytes: BigInt(5 * MiB), data: a });
        } catch (err) {
          if (isServiceError(err) && err.code === GrpcStatus.UNIMPLEMENTED) {
            throw new Error(`the host agent does not implement GuestService.WriteDisk yet (${errText(err)})`);
          }
          throw annotate('WriteDisk 1 MiB', err);
        }
        const back = (await array.readBlocks({ lun: disk.lun, initiator, offsetBytes: BigInt(5 * MiB), lengthBytes: MiB })).data;
        check('1 MiB WriteDisk reads back through ReadBlocks', Buffer.compare(back, a) === 0, `${back.length} bytes`);
        const b = randomBytes(MiB);
        await array.writeBlocks({ requestId: `bench-${run}-rt-b`, lun: disk.lun, initiator, offsetBytes: BigInt(7 * MiB), data: b });
        const got = (await guest.readDisk({ address, offsetBytes: BigInt(7 * MiB), lengthBytes: MiB })).data;
        check('1 MiB WriteBlocks reads back through ReadDisk', Buffer.compare(got, b) === 0, `${got.length} bytes`);
        const c = randomBytes(4 * KiB);
        await guest.writeDisk({ requestId: `bench-${run}-rt-c`, address, offsetBytes: BigInt(9 * MiB + 3 * 512), data: c });
        const got4 = (await guest.readDisk({ address, offsetBytes: BigInt(9 * MiB + 3 * 512), lengthBytes: 4 * KiB })).data;
        check('4 KiB WriteDisk at a 512-byte offset reads back through ReadDisk', Buffer.compare(got4, c) === 0, `${got4.length} bytes`);
      }

      const big = randomBytes(MiB);
      const small = randomBytes(4 * KiB);
      const offset = (n: number, bytes: number): bigint => BigInt((n % (IO_DISK_BYTES / bytes)) * bytes);
      const expectLength = (what: string, got: number, want: number): void => {
        if (got !== want) throw new Error(`${what} returned ${got} bytes, not ${want}`);
      };
      for (const phase of ioPhases) {
        const write = phase.startsWith('write');
        const bytes = phase.endsWith('1m') ? MiB : 4 * KiB;
        const label = bytes === MiB ? '1 MiB' : '4 KiB';
        const unit = bytes === MiB ? 'MiB/s' : 'calls/s';
        const arrayName = `${write ? 'WriteBlocks' : 'ReadBlocks'} ${label} (array)`;
        const hostName = `${write ? 'WriteDisk' : 'ReadDisk'} ${label} (host agent)`;
        const data = bytes === MiB ? big : small;
        for (const c of bytes === MiB ? BIG_CONCURRENCY : SMALL_CONCURRENCY) {
          let r = 0;
          await measurePair(
            { phase, name: arrayName, via: 'array', blockBytes: bytes, concurrency: c, unit },
            async (_w, n) => {
              if (write) {
                await array.writeBlocks({ requestId: `bench-${run}-${phase}-a${c}-${++r}-${n}`, lun: disk.lun, initiator, offsetBytes: offset(n, bytes), data });
              } else {
                const res = await array.readBlocks({ lun: disk.lun, initiator, offsetBytes: offset(n, bytes), lengthBytes: bytes });
                expectLength('ReadBlocks', res.data.length, bytes);
              }
            },
            { phase, name: hostName, via: 'host agent', blockBytes: bytes, concurrency: c, unit, baseline: arrayName, aim: bytes === MiB ? HOST_AIM : undefined },
            async (_w, n) => {
              if (write) {
                await guest.writeDisk({ requestId: `bench-${run}-${phase}-h${c}-${++r}-${n}`, address, offsetBytes: offset(n, bytes), data });
              } else {
                const res = await guest.readDisk({ address, offsetBytes: offset(n, bytes), lengthBytes: bytes });
                expectLength('ReadDisk', res.data.length, bytes);
              }
            },
          );
        }
      }
      ioSetup = { vm: ioVm.id, node, initiator, serial: disk.serial, lun: disk.lun, address, diskBytes: IO_DISK_BYTES, createMs, fillSeconds };
    }

    // 2. Failover of node1 with 64 shared disks on its HA VMs, and the way back.
    if (want('failover')) {
      process.stderr.write(`  failover: creating ${FAILOVER_VMS * DISKS_PER_FAILOVER_VM} shared disks on ${FAILOVER_VMS} HA VMs on ${FAILED_NODE} ...`);
      const c0 = performance.now();
      const disks: BenchDisk[] = [];
      await Promise.all(
        failoverVms.map(async (vm) => {
          const guest = guestFor(vm.id);
          for (let k = 0; k < DISKS_PER_FAILOVER_VM; k++) disks.push(await createDisk(vm, guest, mountPathFor(vm.guestOs, k), FAILOVER_DISK_BYTES));
        }),
      );
      const createSeconds = (performance.now() - c0) / 1000;
      process.stderr.write(` ${fmt(createSeconds)} s\n`);
      const bySerial = new Map(disks.map((d) => [d.serial, d]));
      const specOf = new Map(failoverVms.map((v) => [v.id, v]));

      /** Each disk's group owner and resource state, as ListGroups shows them. */
      const snapshot = async (): Promise<Map<string, { owner: string; state: ResourceState }>> => {
        const out = new Map<string, { owner: string; state: ResourceState }>();
        for (const g of (await admin.listGroups({ kind: GroupKind.GROUP_KIND_VM })).groups) {
          for (const r of g.resources) if (bySerial.has(r.serial)) out.set(r.serial, { owner: g.ownerNode, state: r.state });
        }
        return out;
      };
      /** Disks not Online, or not on a node that `ok` accepts. */
      const notOnline = (snap: Map<string, { owner: string; state: ResourceState }>, ok: (owner: string) => boolean): string[] =>
        disks.filter((d) => {
          const s = snap.get(d.serial);
          return !s || s.state !== ResourceState.RESOURCE_STATE_ONLINE || !ok(s.owner);
        }).map((d) => d.serial);

      /** A 4 KiB write to each disk through its VM's socket (fresh connections, as a restarted guest makes), read back. */
      const writeEach = async (tag: string): Promise<{ ok: number; failed: string[]; latencies: number[]; seconds: number }> => {
        const vms = await listVms();
        const guests = new Map(failoverVms.map((v) => [v.id, guestFor(v.id, vms.get(v.id)?.endpoint)]));
        const failed: string[] = [];
        const latencies: number[] = [];
        const t0 = performance.now();
        await eachLimit(disks, 64, async (d) => {
          const guest = guests.get(d.vmId)!;
          const block = probeBlock(d.serial, tag);
          const s0 = performance.now();
          try {
            await guest.writeDisk({ requestId: `bench-${run}-${tag}-${d.serial}`, address: d.address, offsetBytes: BigInt(PROBE_BYTES), data: block });
            latencies.push(performance.now() - s0);
            const back = (await guest.readDisk({ address: d.address, offsetBytes: BigInt(PROBE_BYTES), lengthBytes: PROBE_BYTES })).data;
            if (Buffer.compare(back, block) !== 0) failed.push(`${d.vmId} ${d.mountPath}: read back differs`);
          } catch (err) {
            failed.push(`${d.vmId} ${d.mountPath}: ${errText(err)}`);
          }
        });
        const seconds = (performance.now() - t0) / 1000;
        for (const g of guests.values()) g.close();
        return { ok: disks.length - failed.length, failed, latencies, seconds };
      };

      /** A WriteBlocks to each LUN as `node`'s initiator: how many were accepted, refused for the reservation, or failed otherwise. */
      const writeAsNode = async (node: string, tag: string, list: BenchDisk[] = disks): Promise<{ accepted: string[]; conflicts: number; other: string[] }> => {
        const initiator = initiatorOf.get(node)!;
        const accepted: string[] = [];
        const other: string[] = [];
        let conflicts = 0;
        await eachLimit(list, 16, async (d) => {
          try {
            await array.writeBlocks({ requestId: `bench-${run}-${tag}-${d.serial}`, lun: d.lun, initiator, offsetBytes: BigInt(2 * PROBE_BYTES), data: probeBlock(d.serial, tag) });
            accepted.push(d.serial);
          } catch (err) {
            if (isServiceError(err) && err.code === GrpcStatus.FAILED_PRECONDITION && /reservation/i.test(err.details)) conflicts++;
            else other.push(`${d.serial}: ${errText(err)}`);
          }
        });
        return { accepted, conflicts, other };
      };

      /**
       * Sends `action`, and polls ListGroups back to back (POLL_GAP_MS apart) until every disk
       * is Online on a node `ok` accepts: per disk, the ms from sending until the first poll
       * that showed it so (its answer's arrival: an upper bound), and the arrival of the last
       * poll that did not (a lower bound, roughly).
       */
      const timeMove = async <T>(
        what: string,
        ok: (owner: string) => boolean,
        action: () => Promise<T>,
      ): Promise<{
        result: T;
        rpcMs: number;
        seenMs: Map<string, number>;
        lastNotMs: Map<string, number>;
        statesSeen: Map<string, Set<string>>;
        polls: number;
        pollMeanMs: number;
        seenBeforeReturn: number;
        pendingAfterReturn: string[];
        /** The last disk's first poll showing it Online. */
        lastSeenMs: number;
      }> => {
        const seenMs = new Map<string, number>();
        const lastNotMs = new Map<string, number>();
        const statesSeen = new Map<string, Set<string>>(disks.map((d) => [d.serial, new Set<string>()]));
        let rpcMs: number | undefined;
        let failure: unknown;
        let result: T | undefined;
        let polls = 0;
        let pollTime = 0;
        let pendingAfterReturn: string[] | undefined;
        const t0 = performance.now();
        const sent = action().then(
          (r) => {
            rpcMs = performance.now() - t0;
            result = r;
          },
          (err: unknown) => {
            rpcMs = performance.now() - t0;
            failure = err;
          },
        );
        while (failure === undefined && (seenMs.size < disks.length || rpcMs === undefined)) {
          if (performance.now() - t0 > FAILOVER_TIMEOUT_MS) {
            const missing = disks.filter((d) => !seenMs.has(d.serial)).map((d) => `${d.serial} (${[...statesSeen.get(d.serial)!].join(' → ')})`);
            throw new Error(`${what}: ${missing.length} disks not Online on the new node after ${FAILOVER_TIMEOUT_MS / 1000} s: ${missing.slice(0, 8).join(', ')}`);
          }
          const returnedBefore = rpcMs !== undefined;
          const p0 = performance.now();
          const snap = await snapshot();
          const at = performance.now() - t0;
          polls++;
          pollTime += performance.now() - p0;
          for (const d of disks) {
            if (seenMs.has(d.serial)) continue;
            const s = snap.get(d.serial);
            statesSeen.get(d.serial)!.add(s ? `${s.owner}/${ResourceState[s.state]?.replace('RESOURCE_STATE_', '') ?? s.state}` : 'absent');
            if (s && s.state === ResourceState.RESOURCE_STATE_ONLINE && ok(s.owner)) seenMs.set(d.serial, at);
            else lastNotMs.set(d.serial, at);
          }
          // The first poll sent after the RPC returned: what it had not finished when it answered.
          if (returnedBefore && pendingAfterReturn === undefined) pendingAfterReturn = notOnline(snap, ok);
          if (seenMs.size < disks.length || rpcMs === undefined) await sleep(POLL_GAP_MS);
        }
        await sent;
        if (failure !== undefined) throw annotate(what, failure);
        const seenBeforeReturn = [...seenMs.values()].filter((ms) => ms <= rpcMs!).length;
        return {
          result: result as T,
          rpcMs: rpcMs!,
          seenMs,
          lastNotMs,
          statesSeen,
          polls,
          pollMeanMs: pollTime / Math.max(1, polls),
          seenBeforeReturn,
          pendingAfterReturn: pendingAfterReturn ?? [],
          lastSeenMs: Math.max(...seenMs.values()),
        };
      };

      /**
       * Per disk, the time until Online: the first poll that showed it, or the RPC's return
       * when that came first and the first poll sent after the return showed the disk Online
       * (the RPC had finished it before answering).
       */
      const perDisk = (m: { rpcMs: number; seenMs: Map<string, number>; pendingAfterReturn: string[] }): Map<string, number> => {
        const pending = new Set(m.pendingAfterReturn);
        return new Map(disks.map((d) => [d.serial, pending.has(d.serial) ? m.seenMs.get(d.serial)! : Math.min(m.seenMs.get(d.serial)!, m.rpcMs)]));
      };

      // Before: every disk Online on node1, node1 can write every LUN (the control for the fencing check).
      {
        const snap = await snapshot();
        const bad = notOnline(snap, (o) => o === FAILED_NODE);
        check(`all ${disks.length} disks Online on ${FAILED_NODE} before the failover`, bad.length === 0, bad.length ? `not: ${bad.slice(0, 8).join(', ')}` : '');
        const w = await writeAsNode(FAILED_NODE, 'pre-node1');
        check(
          `WriteBlocks as ${FAILED_NODE}'s initiator accepted on every LUN before the failover (control)`,
          w.accepted.length === disks.length,
          `${w.accepted.length} accepted, ${w.conflicts} reservation conflicts, ${w.other.length} other${w.other.length ? `: ${w.other.slice(0, 3).join('; ')}` : ''}`,
        );
      }

      process.stderr.write(`  failover: FailNode(${FAILED_NODE}) ...\n`);
      const fail = await timeMove(
        `FailNode(${FAILED_NODE})`,
        (owner) => owner !== FAILED_NODE,
        () => admin.failNode({ requestId: `bench-${run}-fail`, node: FAILED_NODE }, { timeoutMs: FAILOVER_TIMEOUT_MS }),
      );
      const failTimes = perDisk(fail);
      const failAllMs = Math.max(...failTimes.values());
      const failRes: FailNodeResponse = fail.result;
      process.stderr.write(
        `    FailNode returned in ${fmt(fail.rpcMs, 2)} ms; all ${disks.length} disks Online on their new nodes by ${fmt(failAllMs, 2)} ms ` +
          `(per disk p50 ${fmt(percentile([...failTimes.values()], 50), 2)} ms; ${fail.polls} polls, ${fmt(fail.pollMeanMs, 2)} ms each)\n`,
      );

      // What FailNode said it did.
      const vmMoves = failRes.moves.filter((m: GroupMove) => specOf.has(m.vmId));
      const movedSerials = new Set(vmMoves.flatMap((m) => m.serials));
      check(
        `FailNode reports all ${FAILOVER_VMS} VM groups moved off ${FAILED_NODE} with their VMs running`,
        vmMoves.length === FAILOVER_VMS && vmMoves.every((m) => m.toNode !== FAILED_NODE && m.toNode !== '' && m.vmRunning),
        vmMoves.map((m) => `${m.group}: ${m.fromNode}→${m.toNode}${m.vmRunning ? '' : ' (not running)'}`).join(', '),
      );
      check(
        `FailNode reports the reservations of all ${disks.length} disks taken over`,
        disks.every((d) => movedSerials.has(d.serial)),
        `${disks.filter((d) => movedSerials.has(d.serial)).length} of ${disks.length} serials listed`,
      );
      check(
        'every disk Online in the first poll after FailNode returned',
        fail.pendingAfterReturn.length === 0,
        fail.pendingAfterReturn.length ? `${fail.pendingAfterReturn.length} not yet` : '',
      );
      check(
        `${FAILED_NODE} is DOWN after FailNode`,
        failRes.node?.state === NodeState.NODE_STATE_DOWN,
        `FailNode answers ${failRes.node ? NodeState[failRes.node.state] : 'no node'}`,
      );
      const vmsAfterFail = await listVms();
      const newNodeOf = new Map(failoverVms.map((v) => [v.id, vmsAfterFail.get(v.id)?.node ?? '']));
      check(
        `all ${FAILOVER_VMS} HA VMs running on a surviving node`,
        failoverVms.every((v) => {
          const s = vmsAfterFail.get(v.id);
          return s && s.state === VmState.VM_STATE_RUNNING && s.node !== FAILED_NODE;
        }),
        failoverVms.map((v) => `${v.id}→${vmsAfterFail.get(v.id)?.node}/${VmState[vmsAfterFail.get(v.id)?.state ?? 0]?.replace('VM_STATE_', '')}`).join(' '),
      );
      {
        const listed = (await admin.listDisks({ vmId: '' })).disks.filter((d) => bySerial.has(d.serial));
        const bad = listed.filter((d) => d.resourceState !== ResourceState.RESOURCE_STATE_ONLINE);
        check(
          `ListDisks shows all ${disks.length} disks Online after the failover`,
          listed.length === disks.length && bad.length === 0,
          `${listed.length} listed, ${bad.length} not Online${bad.length ? `: ${bad.slice(0, 4).map((d) => `${d.serial} ${ResourceState[d.resourceState]}`).join(', ')}` : ''}`,
        );
      }
      const afterFailWrites = await writeEach('after-fail');
      check(
        `WriteDisk (and a read back) through the VM's socket works on all ${disks.length} disks after the failover`,
        afterFailWrites.failed.length === 0,
        `${afterFailWrites.ok} ok in ${fmt(afterFailWrites.seconds * 1000)} ms${afterFailWrites.failed.length ? `; ${afterFailWrites.failed.slice(0, 3).join('; ')}` : ''}`,
      );
      const fenced = await writeAsNode(FAILED_NODE, 'fenced-node1');
      check(
        `WriteBlocks as ${FAILED_NODE}'s initiator refused on every LUN (FAILED_PRECONDITION, reservation conflict)`,
        fenced.conflicts === disks.length,
        `${fenced.conflicts} refused, ${fenced.accepted.length} ACCEPTED, ${fenced.other.length} other${fenced.other.length ? `: ${fenced.other.slice(0, 3).join('; ')}` : ''}`,
      );

      // The way back: RecoverNode, then each VM group moved back to node1 by hand.
      process.stderr.write(`  failover: RecoverNode(${FAILED_NODE}) and MoveGroup back ...\n`);
      const r0 = performance.now();
      const recovered = await admin.recoverNode({ requestId: `bench-${run}-recover`, node: FAILED_NODE }, { timeoutMs: FAILOVER_TIMEOUT_MS });
      const recoverMs = performance.now() - r0;
      check(`${FAILED_NODE} is UP after RecoverNode`, recovered.node?.state === NodeState.NODE_STATE_UP, `${fmt(recoverMs, 2)} ms; started: ${recovered.startedVms.join(', ') || 'none'}`);
      const groups = failoverVms.map((v) => ({ vm: v.id, group: vmsAfterFail.get(v.id)?.group ?? '' }));
      const moveMs: number[] = [];
      const back = await timeMove(
        `MoveGroup back to ${FAILED_NODE}`,
        (owner) => owner === FAILED_NODE,
        async () => {
          const moves: GroupMove[] = [];
          for (const g of groups) {
            const m0 = performance.now();
            const res = await admin.moveGroup({ requestId: `bench-${run}-back-${g.vm}`, group: g.group, node: FAILED_NODE }, { timeoutMs: FAILOVER_TIMEOUT_MS });
            moveMs.push(performance.now() - m0);
            if (res.move) moves.push(res.move);
          }
          return moves;
        },
      );
      const backTimes = perDisk(back);
      const backAllMs = Math.max(...backTimes.values());
      process.stderr.write(
        `    ${groups.length} MoveGroup calls in ${fmt(back.rpcMs, 2)} ms (p50 ${fmt(percentile([...moveMs], 50), 2)} ms each); ` +
          `all disks Online on ${FAILED_NODE} by ${fmt(backAllMs, 2)} ms\n`,
      );
      const vmsBack = await listVms();
      check(
        `all ${FAILOVER_VMS} HA VMs running on ${FAILED_NODE} again`,
        failoverVms.every((v) => vmsBack.get(v.id)?.node === FAILED_NODE && vmsBack.get(v.id)?.state === VmState.VM_STATE_RUNNING),
        failoverVms.map((v) => `${v.id}@${vmsBack.get(v.id)?.node}`).join(' '),
      );
      const afterBackWrites = await writeEach('after-back');
      check(
        `WriteDisk (and a read back) through the VM's socket works on all ${disks.length} disks after the move back`,
        afterBackWrites.failed.length === 0,
        `${afterBackWrites.ok} ok in ${fmt(afterBackWrites.seconds * 1000)} ms${afterBackWrites.failed.length ? `; ${afterBackWrites.failed.slice(0, 3).join('; ')}` : ''}`,
      );
      {
        // The nodes the groups had moved to can no longer write the LUNs.
        let conflicts = 0;
        const accepted: string[] = [];
        const other: string[] = [];
        for (const node of new Set(newNodeOf.values())) {
          const w = await writeAsNode(node, `fenced-${node}`, disks.filter((d) => newNodeOf.get(d.vmId) === node));
          conflicts += w.conflicts;
          accepted.push(...w.accepted);
          other.push(...w.other);
        }
        check(
          'WriteBlocks as the interim owner node\'s initiator refused on every LUN after the move back',
          conflicts === disks.length,
          `${conflicts} refused, ${accepted.length} ACCEPTED, ${other.length} other${other.length ? `: ${other.slice(0, 3).join('; ')}` : ''}`,
        );
      }

      const failSummary = summary([...failTimes.values()]);
      const backSummary = summary([...backTimes.values()]);
      failover = {
        vms: FAILOVER_VMS,
        disksPerVm: DISKS_PER_FAILOVER_VM,
        disks: disks.length,
        diskBytes: FAILOVER_DISK_BYTES,
        createSeconds,
        pollGapMs: POLL_GAP_MS,
        failNode: {
          rpcMs: fail.rpcMs,
          perDiskOnline: failSummary,
          allOnlineMs: failAllMs,
          lastSeenByPollMs: fail.lastSeenMs,
          seenOnlineBeforeReturn: fail.seenBeforeReturn,
          pendingInFirstPollAfterReturn: fail.pendingAfterReturn.length,
          polls: fail.polls,
          pollMeanMs: fail.pollMeanMs,
          moves: failRes.moves,
          settledOperations: failRes.settledOperations,
          statesSeen: Object.fromEntries([...fail.statesSeen].map(([s, v]) => [s, [...v]])),
          perDiskMs: Object.fromEntries(failTimes),
          perDiskLastNotOnlineMs: Object.fromEntries(fail.lastNotMs),
        },
        writesAfterFail: { ...summary(afterFailWrites.latencies), seconds: afterFailWrites.seconds, failed: afterFailWrites.failed },
        fencing: { refused: fenced.conflicts, accepted: fenced.accepted, other: fenced.other },
        recoverNode: { rpcMs: recoverMs, startedVms: recovered.startedVms },
        moveBack: {
          groups: groups.length,
          totalMs: back.rpcMs,
          perMove: summary(moveMs),
          perDiskOnline: backSummary,
          allOnlineMs: backAllMs,
          lastSeenByPollMs: back.lastSeenMs,
          polls: back.polls,
          pollMeanMs: back.pollMeanMs,
          pendingInFirstPollAfterReturn: back.pendingAfterReturn.length,
          moves: back.result,
        },
        writesAfterMoveBack: { ...summary(afterBackWrites.latencies), seconds: afterBackWrites.seconds, failed: afterBackWrites.failed },
      };
    }

    // 3. Whatever ran, the models and the array must still agree.
    violations = (await admin.checkInvariants({})).violations;
  } finally {
    for (const c of clients) c.close();
    if (agent) await agent.stop();
    if (storage) await storage.stop();
    rmSync(workDir, { recursive: true, force: true });
  }

  // ------------------------------------------------------------ report
  if (rows.length > 0) {
    const table = formatTable(rows, [
      { title: 'benchmark', value: (r) => r.name, right: false },
      { title: 'conc', value: (r) => String(r.concurrency) },
      { title: 'rate', value: (r) => fmt(r.rate) },
      { title: 'unit', value: (r) => r.unit, right: false },
      { title: 'p50 ms', value: (r) => fmt(r.p50Ms, 2) },
      { title: 'p99 ms', value: (r) => fmt(r.p99Ms, 2) },
      { title: 'host/array', value: (r) => (r.ratio === undefined ? '' : `${(r.ratio * 100).toFixed(1)}%`) },
      { title: 'aim', value: (r) => (r.aim === undefined ? '' : `>=${Math.round(r.aim * 100)}%`) },
      { title: 'met?', value: (r) => (r.met === undefined ? '' : r.met ? 'yes' : 'NO'), right: false },
      { title: 'agent cpu', value: (r) => fmt(r.agentCpu, 2) },
      { title: 'sim cpu', value: (r) => fmt(r.storageCpu, 2) },
      { title: 'cli cpu', value: (r) => fmt(r.clientCpu, 2) },
    ]);
    process.stdout.write(`\n${table}\n`);
  }
  if (failover) {
    const f = failover as {
      disks: number;
      failNode: { rpcMs: number; perDiskOnline: ReturnType<typeof summary>; allOnlineMs: number; pollMeanMs: number; polls: number; seenOnlineBeforeReturn: number };
      writesAfterFail: ReturnType<typeof summary> & { seconds: number };
      recoverNode: { rpcMs: number };
      moveBack: { groups: number; totalMs: number; perMove: ReturnType<typeof summary>; perDiskOnline: ReturnType<typeof summary>; allOnlineMs: number };
      writesAfterMoveBack: ReturnType<typeof summary> & { seconds: number };
    };
    const frows = [
      { what: `FailNode(${FAILED_NODE}) → disk Online on its new node`, n: f.failNode.perDiskOnline.n, p50: f.failNode.perDiskOnline.p50Ms, p99: f.failNode.perDiskOnline.p99Ms, total: f.failNode.allOnlineMs },
      { what: `FailNode(${FAILED_NODE}) RPC`, n: 1, p50: Number.NaN, p99: Number.NaN, total: f.failNode.rpcMs },
      { what: '4 KiB WriteDisk after the failover (fresh socket)', n: f.writesAfterFail.n, p50: f.writesAfterFail.p50Ms, p99: f.writesAfterFail.p99Ms, total: f.writesAfterFail.seconds * 1000 },
      { what: `RecoverNode(${FAILED_NODE}) RPC`, n: 1, p50: Number.NaN, p99: Number.NaN, total: f.recoverNode.rpcMs },
      { what: `MoveGroup back to ${FAILED_NODE} (one by one)`, n: f.moveBack.perMove.n, p50: f.moveBack.perMove.p50Ms, p99: f.moveBack.perMove.p99Ms, total: f.moveBack.totalMs },
      { what: `  → disk Online on ${FAILED_NODE} (from the first MoveGroup)`, n: f.moveBack.perDiskOnline.n, p50: f.moveBack.perDiskOnline.p50Ms, p99: f.moveBack.perDiskOnline.p99Ms, total: f.moveBack.allOnlineMs },
      { what: '4 KiB WriteDisk after the move back (fresh socket)', n: f.writesAfterMoveBack.n, p50: f.writesAfterMoveBack.p50Ms, p99: f.writesAfterMoveBack.p99Ms, total: f.writesAfterMoveBack.seconds * 1000 },
    ];
    const ftable = formatTable(frows, [
      { title: 'failover', value: (r) => r.what, right: false },
      { title: 'n', value: (r) => String(r.n) },
      { title: 'p50 ms', value: (r) => fmt(r.p50, 2) },
      { title: 'p99 ms', value: (r) => fmt(r.p99, 2) },
      { title: 'total ms', value: (r) => fmt(r.total, 2) },
    ]);
    process.stdout.write(`\n${ftable}\n`);
    process.stdout.write(
      `(${f.disks} disks; ListGroups polled ${f.failNode.polls} times, ${fmt(f.failNode.pollMeanMs, 2)} ms a poll + ${POLL_GAP_MS} ms gap; ` +
        `${f.failNode.seenOnlineBeforeReturn} disks seen Online before FailNode returned)\n`,
    );
  }
  const lines: string[] = [];
  const failed = checks.filter((c) => !c.ok);
  lines.push(`checks: ${checks.length - failed.length} of ${checks.length} passed`);
  for (const c of failed) lines.push(`  FAILED: ${c.name}${c.detail ? ` (${c.detail})` : ''}`);
  lines.push(`CheckInvariants: ${violations.length} violation${violations.length === 1 ? '' : 's'}`);
  for (const v of violations.slice(0, 20)) lines.push(`  ${v.kind} ${v.subject}: ${v.description}`);
  if (violations.length > 20) lines.push(`  ... and ${violations.length - 20} more`);
  process.stdout.write(`\n${lines.join('\n')}\n\n`);

  const results = {
    name: 'io',
    startedAt: new Date(started).toISOString(),
    durationSeconds: (Date.now() - started) / 1000,
    secondsPerPhase: seconds,
    warmupSeconds,
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    setup: {
      nodes: NODES,
      hostAgent: values['host-agent'] ? resolve(values['host-agent']) : 'bin/host-agent.js',
      logs: 'JSON lines to files, default level',
      dataDirParent: values.tmp ?? tmpdir(),
      io: ioSetup ?? null,
      requestIds: 'every WriteDisk and WriteBlocks carries a fresh request id',
    },
    aimsConfig: { hostShareOfArray1MiB: HOST_AIM },
    notes:
      'rate: MiB/s for 1 MiB calls, calls/s for 4 KiB; host/array: the host-agent row against the array row of the same phase and concurrency, ' +
      'both on the same LUN as the same initiator (the node the VM runs on), the LUN filled first; agent/sim/cli cpu: CPU seconds per wall second ' +
      'of host-agent, storage-sim and the benchmark in the measured window. Failover per disk: from sending FailNode (or the first MoveGroup) until ' +
      'the first ListGroups poll that showed the disk Online on a node that qualifies, or until the RPC returned when that was earlier and the first ' +
      'poll sent after the return showed the disk Online.',
    rows,
    failover: failover ?? null,
    checks,
    invariants: { violations: violations.length, list: violations },
  };
  const out = writeResults('io', results, values['json-out']);
  process.stdout.write(`results written to ${out}\n`);
  const missed = rows.filter((r) => r.met === false);
  if (missed.length > 0) process.stdout.write(`aims missed: ${missed.map((r) => `${r.name} x${r.concurrency}`).join(', ')}\n`);
  if (failed.length > 0 || violations.length > 0) {
    process.stdout.write(`${failed.length} check(s) failed, ${violations.length} invariant violation(s): the run fails\n`);
    process.exitCode = 1;
  }
}

runBench(main);
