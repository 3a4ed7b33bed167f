/**
 * Benchmark of storage-sim, as users run it: a real `storage-sim serve` process (compiled,
 * default log level, its JSON log lines going to a file), measured from this process over
 * gRPC on 127.0.0.1.
 *
 *   - Ping with an empty payload at 1 and 64 calls in flight: the floor every RPC pays;
 *   - CreateLun + MapLun pairs at 1 and 64 concurrent clients (each a durable commit with a
 *     request id, as the host agent sends them), against the empty Ping at the same
 *     concurrency (aim at 64: >= 25 %);
 *   - WriteBlocks and ReadBlocks of 1 MiB at 1 and 4 in flight to a thick LUN, against Ping
 *     carrying the same 1 MiB and doing nothing (aim >= 60 %), beside fs.writeSync of 1 MiB
 *     to a local file in this process (reported only).
 *
 * Usage: node dist/bench/storage.js [--seconds N] [--warmup N] [--json-out PATH]
 *        [--only REGEX] [--tmp DIR] [--server-cpu-prof DIR]
 *
 *   --seconds N            measured seconds per phase (default 3), after a warm-up (--warmup,
 *                          default a third of it, 0.5-1 s)
 *   --json-out PATH        where the JSON goes (default bench/results/storage.json)
 *   --only REGEX           run only the phases whose name matches (ratios need their baseline)
 *   --tmp DIR              where the temporary data dir is made (default the OS temp dir)
 *   --server-cpu-prof DIR  run storage-sim with --cpu-prof, writing its profile to DIR
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, ftruncateSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { connect, type PromiseClient } from '../common/client.js';
import { DiagnosticsServiceClient } from '../proto/gen/passthru/diag/v1/diag.js';
import {
  IgroupProtocol,
  OsType,
  Provisioning,
  StorageArrayServiceClient,
} from '../proto/gen/passthru/storage/v1/storage.js';
import { closedLoop, fmt, formatTable, repoRoot, writeResults, type Measured, procCpuSeconds, phaseSeconds, runBench } from './report.js';

const MiB = 1024 * 1024;
/** Block I/O wraps around this much of the LUN (and of the local file), so the page cache holds it. */
const IO_SPAN = 256 * MiB;

interface Row extends Measured {
  name: string;
  concurrency: number;
  unit: 'calls/s' | 'pairs/s' | 'MiB/s' | 'files/s';
  /** The row this one is compared with (same concurrency). */
  baseline?: string;
  ratio?: number;
  aim?: number;
  met?: boolean;
  /** CPU seconds per wall second in the measured window: the server process and this one. */
  serverCpu?: number;
  clientCpu?: number;
}

// ---------------------------------------------------------------- the server process

interface Server {
  child: ChildProcess;
  address: string;
  dataDir: string;
  logFile: string;
  /** SIGTERM and wait (a graceful exit, which also writes a --cpu-prof profile). */
  stop(): Promise<void>;
}

async function startServer(root: string, workDir: string, cpuProfDir: string | undefined): Promise<Server> {
  const dataDir = join(workDir, 'data');
  const logFile = join(workDir, 'storage-sim.log');
  const logFd = openSync(logFile, 'a');
  const nodeArgs = cpuProfDir ? ['--cpu-prof', '--cpu-prof-dir', cpuProfDir] : [];
  const child = spawn(process.execPath, [...nodeArgs, join(root, 'bin', 'storage-sim.js'), 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir], {
    stdio: ['ignore', 'pipe', logFd],
  });
  closeSync(logFd);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const logTail = (): string => readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
  const address = await new Promise<string>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`storage-sim did not start in 15 s; its log:\n${logTail()}`));
    }, 15_000);
    child.once('exit', (code) => reject(new Error(`storage-sim exited with ${code} before serving; its log:\n${logTail()}`)));
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving on (\S+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
  });
  return {
    child,
    address,
    dataDir,
    logFile,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}


/** Measures CPU use of the server and of this process over the measured window. */
function cpuWindow(pid: number): { window: { start(): void; stop(): void }; result(): { serverCpu: number; clientCpu: number } } {
  let s0 = 0;
  let c0 = process.cpuUsage();
  let t0 = 0;
  let out = { serverCpu: Number.NaN, clientCpu: Number.NaN };
  return {
    window: {
      start: () => {
        s0 = procCpuSeconds(pid);
        c0 = process.cpuUsage();
        t0 = performance.now();
      },
      stop: () => {
        const wall = (performance.now() - t0) / 1000;
        const c = process.cpuUsage(c0);
        out = { serverCpu: (procCpuSeconds(pid) - s0) / wall, clientCpu: (c.user + c.system) / 1e6 / wall };
      },
    },
    result: () => out,
  };
}

// ---------------------------------------------------------------- the benchmark

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seconds: { type: 'string', default: '3' },
      warmup: { type: 'string' },
      'json-out': { type: 'string' },
      only: { type: 'string' },
      'server-cpu-prof': { type: 'string' },
      tmp: { type: 'string' },
    },
  });
  const { seconds, warmupSeconds } = phaseSeconds(values);
  const only = values.only ? new RegExp(values.only, 'i') : undefined;

  const root = repoRoot();
  const workDir = mkdtempSync(join(values.tmp ?? tmpdir(), 'passthru-bench-'));
  let server: Server;
  try {
    server = await startServer(root, workDir, values['server-cpu-prof']);
  } catch (err) {
    rmSync(workDir, { recursive: true, force: true });
    throw err;
  }
  const pid = server.child.pid!;
  const storage: PromiseClient<StorageArrayServiceClient> = connect(StorageArrayServiceClient, server.address);
  const diag: PromiseClient<DiagnosticsServiceClient> = connect(DiagnosticsServiceClient, server.address);
  const rows: Row[] = [];
  const started = Date.now();
  process.stderr.write(`storage-sim pid ${pid} on ${server.address}, data ${server.dataDir}, log ${server.logFile}\n`);

  const measure = async (
    row: Omit<Row, keyof Measured | 'serverCpu' | 'clientCpu'>,
    op: (worker: number, n: number) => Promise<unknown>,
    limits: { maxOps?: number; warmupSeconds?: number } = {},
  ): Promise<void> => {
    if (only && !only.test(row.name)) return;
    process.stderr.write(`  ${row.name} x${row.concurrency} ...`);
    const cpu = cpuWindow(pid);
    const m = await closedLoop(
      { concurrency: row.concurrency, seconds, warmupSeconds: limits.warmupSeconds ?? warmupSeconds, maxOps: limits.maxOps, window: cpu.window },
      op,
    );
    const r: Row = { ...row, ...m, ...cpu.result() };
    const base = rows.find((b) => b.name === row.baseline && b.concurrency === row.concurrency);
    if (base) {
      r.ratio = r.rate / base.rate;
      if (r.aim !== undefined) r.met = r.ratio >= r.aim;
    }
    rows.push(r);
    process.stderr.write(` ${fmt(r.rate)} ${r.unit}\n`);
  };

  try {
    // Empty unary RPC: the floor.
    const empty = Buffer.alloc(0);
    for (const c of [1, 64]) {
      await measure({ name: 'Ping (empty)', concurrency: c, unit: 'calls/s' }, () => diag.ping({ payload: empty }));
    }

    // What creating a file costs on the data dir's file system, from this process: every
    // CreateLun creates its LUN's file, so this bounds the pair rate from above.
    const files = join(workDir, 'local-files');
    mkdirSync(files);
    await measure(
      { name: 'create+ftruncate file (local)', concurrency: 1, unit: 'files/s' },
      async (_w, n) => {
        const fd = openSync(join(files, `${n}.img`), 'w');
        ftruncateSync(fd, 128 * MiB);
        closeSync(fd);
      },
      { maxOps: 5000, warmupSeconds: 0 },
    );

    // CreateLun + MapLun pairs: durable commits, each with its request id.
    const run = Date.now().toString(36);
    const igroups = new Map<string, { name: string; maps: number }>();
    let igroupSeq = 0;
    const igroupFor = async (key: string): Promise<string> => {
      let ig = igroups.get(key);
      // At most 4096 LUN ids an igroup: move on to a fresh igroup well before that.
      if (!ig || ig.maps >= 4000) {
        const seq = igroupSeq++;
        const name = `bench_${run}_${seq}`;
        await storage.createIgroup({
          requestId: `bench-${run}-ig-${seq}`,
          name,
          protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI,
          osType: OsType.OS_TYPE_LINUX,
          initiators: [`iqn.2024-01.com.example:bench-${key}`],
        });
        igroups.set(key, (ig = { name, maps: 0 }));
      }
      ig.maps++;
      return ig.name;
    };
    for (const c of [1, 64]) {
      await measure(
        { name: 'CreateLun+MapLun', concurrency: c, unit: 'pairs/s', baseline: 'Ping (empty)', aim: c === 64 ? 0.25 : undefined },
        async (w, n) => {
          const igroup = await igroupFor(`c${c}-w${w}`);
          const path = `/vol/bench_${run}/c${c}_w${w}_n${n}`;
          await storage.createLun({
            requestId: `bench-${run}-create-${c}-${n}`,
            path,
            sizeBytes: BigInt(128 * MiB),
            osType: OsType.OS_TYPE_LINUX,
            provisioning: Provisioning.PROVISIONING_THICK,
            comment: 'bench',
            pool: '',
          });
          await storage.mapLun({ requestId: `bench-${run}-map-${c}-${n}`, lun: path, igroup, igroups: [] });
        },
      );
    }

    // 1 MiB block I/O against Ping carrying the same bytes.
    const block = randomBytes(MiB);
    const initiator = 'iqn.2024-01.com.example:bench-io';
    const ioLun = `/vol/bench_${run}/io`;
    const lun = (
      await storage.createLun({
        requestId: `bench-${run}-io-lun`,
        path: ioLun,
        sizeBytes: BigInt(IO_SPAN),
        osType: OsType.OS_TYPE_LINUX,
        provisioning: Provisioning.PROVISIONING_THICK,
        comment: 'bench block I/O',
        pool: '',
      })
    ).lun!;
    await storage.createIgroup({
      requestId: `bench-${run}-io-ig`,
      name: `bench_${run}_io`,
      protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI,
      osType: OsType.OS_TYPE_LINUX,
      initiators: [initiator],
    });
    await storage.mapLun({ requestId: `bench-${run}-io-map`, lun: ioLun, igroup: `bench_${run}_io`, igroups: [] });
    const spanMiB = IO_SPAN / MiB;
    for (const c of [1, 4]) {
      await measure({ name: 'Ping (1 MiB payload)', concurrency: c, unit: 'MiB/s' }, () => diag.ping({ payload: block }));
    }
    for (const c of [1, 4]) {
      await measure({ name: 'WriteBlocks 1 MiB', concurrency: c, unit: 'MiB/s', baseline: 'Ping (1 MiB payload)', aim: 0.6 }, (_w, n) =>
        storage.writeBlocks({
          requestId: `bench-${run}-w${c}-${n}`,
          lun: lun.uuid,
          initiator,
          offsetBytes: BigInt((n % spanMiB) * MiB),
          data: block,
        }),
      );
    }
    for (const c of [1, 4]) {
      await measure({ name: 'ReadBlocks 1 MiB', concurrency: c, unit: 'MiB/s', baseline: 'Ping (1 MiB payload)', aim: 0.6 }, async (_w, n) => {
        const res = await storage.readBlocks({ lun: lun.uuid, initiator, offsetBytes: BigInt((n % spanMiB) * MiB), lengthBytes: MiB });
        if (res.data.length !== MiB) throw new Error(`ReadBlocks returned ${res.data.length} bytes`);
      });
    }
    // The same bytes to a local file from this process: what the disk path costs alone.
    const local = join(workDir, 'local.img');
    const fd = openSync(local, 'w');
    try {
      await measure({ name: 'fs.writeSync 1 MiB (local file)', concurrency: 1, unit: 'MiB/s' }, async (_w, n) => {
        const at = (n % spanMiB) * MiB;
        let done = 0;
        while (done < MiB) done += writeSync(fd, block, done, MiB - done, at + done);
      });
    } finally {
      closeSync(fd);
    }
  } finally {
    storage.close();
    diag.close();
    await server.stop();
    rmSync(workDir, { recursive: true, force: true });
  }

  const table = formatTable(rows, [
    { title: 'benchmark', value: (r) => r.name, right: false },
    { title: 'conc', value: (r) => String(r.concurrency) },
    { title: 'rate', value: (r) => fmt(r.rate) },
    { title: 'unit', value: (r) => r.unit, right: false },
    { title: 'p50 ms', value: (r) => fmt(r.p50Ms, 2) },
    { title: 'p99 ms', value: (r) => fmt(r.p99Ms, 2) },
    { title: 'baseline', value: (r) => r.baseline ?? '', right: false },
    { title: 'ratio', value: (r) => (r.ratio === undefined ? '' : `${(r.ratio * 100).toFixed(1)}%`) },
    { title: 'aim', value: (r) => (r.aim === undefined ? '' : `>=${Math.round(r.aim * 100)}%`) },
    { title: 'met?', value: (r) => (r.met === undefined ? '' : r.met ? 'yes' : 'NO'), right: false },
    { title: 'srv cpu', value: (r) => fmt(r.serverCpu, 2) },
    { title: 'cli cpu', value: (r) => fmt(r.clientCpu, 2) },
  ]);
  process.stdout.write(`\n${table}\n\n`);
  const results = {
    name: 'storage',
    startedAt: new Date(started).toISOString(),
    durationSeconds: (Date.now() - started) / 1000,
    secondsPerPhase: seconds,
    warmupSeconds,
    node: process.version,
    cpus: cpus().length,
    cpuModel: cpus()[0]?.model,
    server: { logLevel: 'info (default)', log: 'JSON lines to a file', dataDirParent: values.tmp ?? tmpdir(), cpuProfDir: values['server-cpu-prof'] ?? null },
    notes: 'srv/cli cpu: CPU seconds per wall second of the storage-sim process and of the benchmark process in the measured window',
    rows,
  };
  const out = writeResults('storage', results, values['json-out']);
  process.stdout.write(`results written to ${out}\n`);
  const missed = rows.filter((r) => r.met === false);
  if (missed.length > 0) process.stdout.write(`aims missed: ${missed.map((r) => `${r.name} x${r.concurrency}`).join(', ')}\n`);
}

runBench(main);
