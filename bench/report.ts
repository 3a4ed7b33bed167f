/**
 * Small helpers shared by the benchmarks: latency percentiles, closed-loop measurement,
 * the printed table and the JSON results file (bench/results/<name>.json).
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (the nearest folder above this file holding package.json). */
export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('no package.json above bench/');
    dir = up;
  }
  return dir;
}

/** The p-th percentile (0-100) of the values, nearest-rank; NaN for none. Sorts in place. */
export function percentile(values: number[] | Float64Array, p: number): number {
  if (values.length === 0) return Number.NaN;
  values.sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * values.length);
  return values[Math.min(values.length - 1, Math.max(0, rank - 1))]!;
}

export interface Measured {
  /** Operations completed in the measured window. */
  ops: number;
  seconds: number;
  /** Operations per second. */
  rate: number;
  p50Ms: number;
  p99Ms: number;
}

/**
 * Runs `concurrency` closed loops of `op` for warm-up, then for `seconds`, and measures
 * the second part: each loop starts its next call as soon as the previous one answers.
 * An op that throws fails the whole measurement.
 */
export async function closedLoop(
  opts: {
    concurrency: number;
    seconds: number;
    warmupSeconds: number;
    /** Stop the measured window early once this many operations are done. */
    maxOps?: number;
    /** Called right before and right after the measured window (e.g. to read CPU time). */
    window?: { start?(): void; stop?(): void };
  },
  op: (worker: number, n: number) => Promise<unknown>,
): Promise<Measured> {
  let n = 0;
  const phase = async (seconds: number, latencies: number[] | undefined): Promise<number> => {
    const end = performance.now() + seconds * 1000;
    const maxOps = latencies ? (opts.maxOps ?? Infinity) : Infinity;
    let done = 0;
    let started = 0;
    await Promise.all(
      Array.from({ length: opts.concurrency }, async (_, w) => {
        while (performance.now() < end && started++ < maxOps) {
          const t0 = performance.now();
          await op(w, n++);
          latencies?.push(performance.now() - t0);
          done++;
        }
      }),
    );
    return done;
  };
  if (opts.warmupSeconds > 0) await phase(opts.warmupSeconds, undefined);
  const latencies: number[] = [];
  opts.window?.start?.();
  const t0 = performance.now();
  const ops = await phase(opts.seconds, latencies);
  const seconds = (performance.now() - t0) / 1000;
  opts.window?.stop?.();
  return { ops, seconds, rate: ops / seconds, p50Ms: percentile(latencies, 50), p99Ms: percentile(latencies, 99) };
}

export interface Column<Row> {
  title: string;
  value: (row: Row) => string;
  /** Right-aligned (numbers) unless false. */
  right?: boolean;
}

/** Formats rows as a plain-text table with a header and a rule under it. */
export function formatTable<Row>(rows: Row[], columns: Column<Row>[]): string {
  const cells = rows.map((r) => columns.map((c) => c.value(r)));
  const widths = columns.map((c, i) => Math.max(c.title.length, ...cells.map((row) => row[i]!.length)));
  const line = (values: string[]): string =>
    values.map((v, i) => (columns[i]!.right === false ? v.padEnd(widths[i]!) : v.padStart(widths[i]!))).join('  ').trimEnd();
  return [line(columns.map((c) => c.title)), widths.map((w) => '-'.repeat(w)).join('  '), ...cells.map(line)].join('\n');
}

/** A number with a sensible number of digits for a table (— for none). */
export function fmt(value: number | undefined, digits = 1): string {
  if (value === undefined || Number.isNaN(value)) return '—';
  if (Math.abs(value) >= 1000) return Math.round(value).toLocaleString('en-US');
  if (Math.abs(value) >= 100) return value.toFixed(Math.max(0, digits - 1));
  return value.toFixed(digits + (Math.abs(value) < 10 ? 1 : 0));
}

/**
 * Writes the results as JSON to `path`, or to bench/results/<name>.json under the repo root,
 * creating the folder. Returns the path written.
 */
export function writeResults(name: string, results: unknown, path?: string): string {
  const out = path ? resolve(path) : join(repoRoot(), 'bench', 'results', `${name}.json`);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  return out;
}

/** CPU seconds (user + system) a process has used so far, from /proc; NaN when it cannot be read. */
export function procCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of stat (utime, stime), counted from the state field (3).
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch {
    return Number.NaN;
  }
}

/** A bad command line: reported without a stack, exit code 2. */
export function usageError(message: string): Error {
  return Object.assign(new Error(message), { name: 'UsageError' });
}

/** --seconds per measured phase and --warmup (default a third of it, 0.5-1 s), checked. */
export function phaseSeconds(values: { seconds?: string; warmup?: string }): { seconds: number; warmupSeconds: number } {
  const seconds = Number(values.seconds);
  if (!(seconds > 0)) throw usageError(`--seconds ${values.seconds}: give a positive number of seconds per phase`);
  const warmupSeconds = values.warmup !== undefined ? Number(values.warmup) : Math.min(1, Math.max(0.5, seconds / 3));
  if (!(warmupSeconds >= 0)) throw usageError(`--warmup ${values.warmup}: give a number of seconds, 0 or more`);
  return { seconds, warmupSeconds };
}

/** Runs a benchmark's main: a usage error exits 2 with its message, anything else 1 with its stack. */
export function runBench(main: () => Promise<void>): void {
  main().catch((err: unknown) => {
    const usage = err instanceof Error && (err.name === 'UsageError' || String((err as NodeJS.ErrnoException).code).startsWith('ERR_PARSE_ARGS'));
    process.stderr.write(`bench failed: ${err instanceof Error ? (usage ? err.message : (err.stack ?? err.message)) : String(err)}\n`);
    process.exitCode = usage ? 2 : 1;
  });
}
