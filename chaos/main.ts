/**
 * `npm run chaos -- --seconds N --vms M --seed S`: one chaos run (run.ts), its summary line on
 * stdout and its JSON report in a file. Exit 0 when every promise held, 1 when one broke (the
 * first is named, with the command that replays the run), 2 for a bad command line.
 *
 *   --seconds N    how long the chaos lasts (default 60), then quiet and the checks
 *   --vms M        VMs, one guest worker each (default 32), half HA, Windows and Linux
 *   --seed S       fixes the schedule of actions and faults (default: a random one, printed)
 *   --report PATH  the JSON report (default chaos/results/chaos-<seed>.json under the repo)
 *   --tmp DIR      where the temporary dir goes (default the OS's; keep the path short:
 *                  the VMs' sockets live in it)
 *   --keep         keep the temporary dir (data dirs and the services' logs) after the run
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { repoRoot } from './processes.js';
import { emergencyStop, runChaos } from './run.js';

function usage(message: string): never {
  process.stderr.write(`chaos: ${message}\nusage: npm run chaos -- [--seconds N] [--vms M] [--seed S] [--report PATH] [--tmp DIR] [--keep]\n`);
  process.exit(2);
}

function whole(name: string, text: string | undefined, fallback: number, min: number, max: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < min || n > max) usage(`--${name} ${text}: give a whole number from ${min} to ${max}`);
  return n;
}

async function main(): Promise<void> {
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({
      options: {
        seconds: { type: 'string' },
        vms: { type: 'string' },
        seed: { type: 'string' },
        report: { type: 'string' },
        tmp: { type: 'string' },
        keep: { type: 'boolean' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    usage((err as Error).message);
  }
  const seconds = whole('seconds', values.seconds as string | undefined, 60, 1, 24 * 3600);
  const vms = whole('vms', values.vms as string | undefined, 32, 1, 256);
  const seed = whole('seed', values.seed as string | undefined, Math.floor(Math.random() * 0x7fffffff), 0, 0xffffffff);
  const reportPath = resolve((values.report as string | undefined) ?? join(repoRoot(), 'chaos', 'results', `chaos-${seed}.json`));
  process.stderr.write(`chaos: seed ${seed}, ${seconds} s, ${vms} VMs (replay: npm run chaos -- --seconds ${seconds} --vms ${vms} --seed ${seed})\n`);
  // Stopped from outside, or stuck past any sane bound: the services go (by PID) and the temporary dir with them.
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`chaos: ${signal}: stopping storage-sim and host-agent, removing the temporary dir\n`);
      emergencyStop();
      process.exit(130);
    });
  }
  const boundMs = (seconds + 600) * 1000;
  setTimeout(() => {
    process.stderr.write(`chaos: the run did not finish within ${boundMs / 1000} s; stopping it (replay: npm run chaos -- --seconds ${seconds} --vms ${vms} --seed ${seed} --keep)\n`);
    emergencyStop();
    process.exit(1);
  }, boundMs).unref();
  const r = await runChaos({
    seconds,
    vms,
    seed,
    tmp: values.tmp as string | undefined,
    keep: values.keep === true,
    progress: (line) => process.stderr.write(`chaos: ${line}\n`),
  });
  mkdirSync(dirname(reportPath), { recursive: true });
  writeFileSync(reportPath, `${JSON.stringify(r, null, 2)}\n`);
  process.stdout.write(`${r.summary}\n`);
  process.stdout.write(`report: ${reportPath}${r.dir ? `; data and logs kept in ${r.dir}` : ''}\n`);
  if (!r.ok) {
    const f = r.firstBrokenPromise;
    if (f) process.stdout.write(`FAILED: first broken promise at ${(f.atMs / 1000).toFixed(1)} s: ${f.kind} ${f.subject}: ${f.description}\n`);
    process.stdout.write(`replay: ${r.replay}${r.dir ? '' : ' --keep'}\n`);
    process.exitCode = 1;
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`chaos failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
