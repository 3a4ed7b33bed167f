/**
 * Benchmark of the guest-agent CLI as a person at a prompt feels it: the wall time of whole
 * processes, from spawn until they exit, against a real storage-sim and host-agent (processes,
 * examples/cluster.json, default log level to files):
 *
 *   - `node -e 0` (the floor: starting Node itself, nothing of ours) and a cold
 *     `guest-agent disk list` (a new process each time: load, GetSelf + ListDisks on the VM's
 *     socket, read the mount table, print), one disk mounted, interleaved run by run so both
 *     see the same machine; `guest-agent --help` (our modules without a call) beside them.
 *     Aim: `disk list` under 300 ms at p50.
 *   - a full `guest-agent disk create` (ask, follow the operation, rescan, write and read
 *     back the GPT and volume, mount, report) on a new mount each time, and the
 *     `disk remove --delete-lun` that follows it.
 *
 * "Cold" is a new process with the operating system's file cache warm (the runs before it
 * read the same files); the first `--warmup` runs of each kind are not counted.
 *
 * Usage: node dist/bench/cli.js [--repeats N] [--warmup N] [--creates N] [--size SIZE]
 *        [--json-out PATH] [--tmp DIR]
 *
 *   --repeats N    counted runs of node -e 0, --help and disk list each (default 30)
 *   --warmup N     runs of each not counted first (default 3)
 *   --creates N    counted disk create + disk remove pairs (default 10)
 *   --size SIZE    the size of each created disk (default 1GiB, as the demo)
 *   --json-out     where the JSON goes (default bench/results/cli.json)
 *   --tmp DIR      where the temporary data dir is made (keep it short: sockets live there)
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { parseSize } from '../common/size.js';
import { startService, type Service } from './processes.js';
import { fmt, formatTable, percentile, repoRoot, runBench, usageError, writeResults } from './report.js';

const LIST_AIM_MS = 300;

interface Row {
  name: string;
  command: string;
  runs: number;
  p50Ms: number;
  p99Ms: number;
  minMs: number;
  maxMs: number;
  /** p50 less the p50 of `node -e 0` in the same run. */
  overNodeMs?: number;
  aimMs?: number;
  met?: boolean;
}

/** Runs a process to its end; its wall time in ms. A non-zero exit fails the benchmark with its stderr. */
function timed(args: string[], env: NodeJS.ProcessEnv = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, ...env } });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      const ms = performance.now() - t0;
      if (code === 0) resolve(ms);
      else reject(new Error(`node ${args.join(' ')} exited ${code ?? signal}: ${stderr.trim()}`));
    });
  });
}

function row(name: string, command: string, ms: number[]): Row {
  const sorted = [...ms];
  return {
    name,
    command,
    runs: ms.length,
    p50Ms: percentile(sorted, 50),
    p99Ms: percentile(sorted, 99),
    minMs: Math.min(...ms),
    maxMs: Math.max(...ms),
  };
}

function count(text: string | undefined, what: string, min: number): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min) throw usageError(`${what} ${text}: give a whole number, ${min} or more`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      repeats: { type: 'string', default: '30' },
      warmup: { type: 'string', default: '3' },
      creates: { type: 'string', default: '10' },
      size: { type: 'string', default: '1GiB' },
      'json-out': { type: 'string' },
      tmp: { type: 'string' },
    },
  });
  const repeats = count(values.repeats, '--repeats', 1);
  const warmup = count(values.warmup, '--warmup', 0);
  const creates = count(values.creates, '--creates', 1);
  let sizeBytes: number;
  try {
    sizeBytes = parseSize(values.size!, '--size');
  } catch (err) {
    throw usageError((err as Error).message);
  }

  const root = repoRoot();
  const guestAgent = join(root, 'bin', 'guest-agent.js');
  if (!existsSync(join(root, 'dist', 'guest-agent', 'cli.js'))) throw usageError('dist/ is missing: npm run build first (npm run bench:cli does)');
  const workDir = mkdtempSync(join(values.tmp ?? tmpdir(), 'pt-bench-cli-'));
  const started = Date.now();
  const services: Service[] = [];
  try {
    const array = await startService('storage-sim', join(root, 'bin', 'storage-sim.js'), ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(workDir, 'array')], join(workDir, 'storage-sim.log'), 30_000);
    services.push(array);
    const host = await startService(
      'host-agent',
      join(root, 'bin', 'host-agent.js'),
      ['serve', '--listen', '127.0.0.1:0', '--storage', array.address, '--data-dir', join(workDir, 'host'), '--cluster', join(root, 'examples', 'cluster.json')],
      join(workDir, 'host-agent.log'),
      30_000,
    );
    services.push(host);
    const env = { PASSTHRU_GUEST_ENDPOINT: `unix:${join(workDir, 'host', 'sock', 'vm1.sock')}`, PASSTHRU_GUEST_STATE_DIR: join(workDir, 'guest-vm1') };
    const guest = (args: string[]): Promise<number> => timed([guestAgent, ...args], env);
    const size = values.size!;

    // One disk mounted, so the list has something to merge and print.
    await guest(['disk', 'create', '--size', size, '--mount', 'C:\\listed']);

    process.stderr.write(`measuring node -e 0, guest-agent --help and guest-agent disk list: ${warmup} + ${repeats} runs each, interleaved\n`);
    const node: number[] = [];
    const help: number[] = [];
    const list: number[] = [];
    for (let i = 0; i < warmup + repeats; i++) {
      const counted = i >= warmup;
      const a = await timed(['-e', '0']);
      const b = await guest(['--help']);
      const c = await guest(['disk', 'list']);
      if (counted) {
        node.push(a);
        help.push(b);
        list.push(c);
      }
    }

    process.stderr.write(`measuring guest-agent disk create --size ${size} and disk remove --delete-lun: ${creates} pairs\n`);
    const create: number[] = [];
    const remove: number[] = [];
    for (let i = 0; i < creates; i++) {
      const mount = `C:\\bench${i}`;
      create.push(await guest(['disk', 'create', '--size', size, '--mount', mount]));
      remove.push(await guest(['disk', 'remove', '--mount', mount, '--delete-lun']));
    }
    await guest(['disk', 'remove', '--mount', 'C:\\listed', '--delete-lun']);

    const floor = row('node -e 0', 'node -e 0', node);
    const rows: Row[] = [
      floor,
      row('guest-agent --help', 'guest-agent --help', help),
      { ...row('guest-agent disk list (cold)', 'guest-agent disk list', list), aimMs: LIST_AIM_MS },
      row(`guest-agent disk create ${size}`, `guest-agent disk create --size ${size} --mount C:\\benchN`, create),
      row('guest-agent disk remove --delete-lun', 'guest-agent disk remove --mount C:\\benchN --delete-lun', remove),
    ];
    for (const r of rows.slice(1)) r.overNodeMs = r.p50Ms - floor.p50Ms;
    for (const r of rows) if (r.aimMs !== undefined) r.met = r.p50Ms < r.aimMs;

    process.stdout.write(
      `\n${formatTable(rows, [
        { title: 'command', value: (r) => r.name, right: false },
        { title: 'runs', value: (r) => String(r.runs) },
        { title: 'p50 ms', value: (r) => fmt(r.p50Ms) },
        { title: 'p99 ms', value: (r) => fmt(r.p99Ms) },
        { title: 'min ms', value: (r) => fmt(r.minMs) },
        { title: 'max ms', value: (r) => fmt(r.maxMs) },
        { title: 'p50 over node', value: (r) => (r.overNodeMs === undefined ? '' : fmt(r.overNodeMs)) },
        { title: 'aim', value: (r) => (r.aimMs === undefined ? '' : `p50 < ${r.aimMs} ms`) },
        { title: 'met', value: (r) => (r.met === undefined ? '' : r.met ? 'yes' : 'NO'), right: false },
      ])}\n\n`,
    );
    const results = {
      name: 'cli',
      startedAt: new Date(started).toISOString(),
      durationSeconds: (Date.now() - started) / 1000,
      node: process.version,
      cpus: cpus().length,
      cpuModel: cpus()[0]?.model,
      repeats,
      warmup,
      creates,
      sizeBytes,
      aims: { listP50Ms: LIST_AIM_MS },
      notes:
        'Wall time of whole processes from spawn to exit, their stdout to /dev/null. disk list: one disk mounted, GetSelf and ListDisks on the VM socket. ' +
        'node -e 0, --help and disk list are interleaved run by run; the first --warmup runs of each are not counted. ' +
        'disk create: ask, follow the operation, rescan, write and read back the GPT and volume, mount, report; each on a new mount, removed after.',
      rows,
    };
    const out = writeResults('cli', results, values['json-out']);
    process.stdout.write(`aim: a cold guest-agent disk list under ${LIST_AIM_MS} ms (p50): ${rows[2]!.met ? 'met' : 'NOT met'}\nresults written to ${out}\n`);
  } finally {
    for (const s of services.reverse()) await s.stop();
    rmSync(workDir, { recursive: true, force: true });
  }
}

runBench(main);
