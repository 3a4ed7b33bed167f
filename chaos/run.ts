/**
 * One chaos run from start to end (issue 6, "Chaos under load: nothing lost, nothing
 * leaked"): real storage-sim (faults enabled) and host-agent processes on loopback, a
 * cluster of 3 nodes and M VMs, one guest worker per VM driving the guest-agent library, the
 * administrators, and the seeded injections; then quiet, and every promise checked
 * (verify.ts). Bounded in time, cleans up its processes (by PID) and its temporary dir.
 *
 *   chaos        until `seconds` have passed: workers, administrators and injections at once
 *   stop         workers finish the command they are in, administrators theirs, the last
 *                injection its restart
 *   quiet        faults cleared, every node recovered, every guest's VM running again, no
 *                operation in flight; each guest finishes what it had recorded (the same
 *                command again), then the host is quiet again
 *   verify       the checks, then the summary line and the report
 */
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Administrators, answered, clients, type Clients } from './admin.js';
import { OsType, Provisioning } from '../proto/gen/passthru/storage/v1/storage.js';
import { lunFilePath } from '../storage-sim/lun-data.js';
import { clusterFile, vmSpecs, VOLUME } from './cluster.js';
import { Injector, schedule, type Scheduled } from './injector.js';
import { Ledger, type Attempt, type TimelineEvent, type Violation } from './ledger.js';
import { freePort, repoRoot, Service, startWithRetries } from './processes.js';
import { GuestLine } from './proxy.js';
import { Registry } from './registry.js';
import { Rng } from './rng.js';
import { verify, type Verified } from './verify.js';
import { sleep, Worker, type Expect } from './worker.js';

export interface ChaosOptions {
  seconds: number;
  vms: number;
  seed: number;
  /** Where the run's temporary dir is made (default the OS's; keep it short: sockets live there). */
  tmp?: string;
  /** Keep the temporary dir (data dirs, logs) after the run. */
  keep?: boolean;
  /** Progress lines (phases), for a person watching. */
  progress?: (line: string) => void;
  /** How long the quiet phase may take before the run gives up waiting (default 120 s). */
  quietTimeoutMs?: number;
  /**
   * Tests only: once everything is quiet, break three promises behind the system's back (flip
   * acknowledged bytes in a LUN's backing file, put a LUN nobody made on the array, take an
   * acknowledged mount out of a guest's table), so a test can see the checks catch them.
   */
  sabotage?: boolean;
}

export interface ChaosReport {
  seed: number;
  seconds: number;
  vms: number;
  /** The command that replays this run's schedule. */
  replay: string;
  summary: string;
  ok: boolean;
  operations: { attempted: number; succeeded: number; failedClean: number; failedDirty: number; resumed: number; byKind: Record<string, { attempted: number; succeeded: number; failed: number }> };
  crashes: { storageSim: number; hostAgent: number; guest: number; total: number };
  failovers: { failNode: number; moveGroup: number; total: number };
  invariantViolations: number;
  acknowledgedLost: number;
  payloadBytesWrong: number;
  firstBrokenPromise: (Violation & { replay: string }) | null;
  violations: Violation[];
  violationsTotal: number;
  timeline: TimelineEvent[];
  notReached: Scheduled[];
  schedule: Scheduled[];
  errors: Record<string, number>;
  dirtyFailures: { id: number; actor: string; kind: string; what: string; error: string; why: string }[];
  /** The last commands of each client named in a broken promise, oldest first. */
  traces: Record<string, string[]>;
  /** Where each LUN named in a broken promise was put, and when (s into the run). */
  lunHistories: Record<string, string[]>;
  verified: Verified | null;
  io: { writes: number; reads: number; bytesWritten: number; bytesRead: number };
  phasesMs: { start: number; chaos: number; stop: number; quiet: number; verify: number; total: number };
  /** The kept temporary dir (with --keep), else null. */
  dir: string | null;
}

/** What each run in this process must undo at once if the process is told to stop (a signal, a watchdog). */
const live = new Set<() => void>();

/** SIGKILLs (by PID) the services every run in this process started and removes their temporary dirs, now. */
export function emergencyStop(): void {
  for (const stop of [...live]) stop();
}

export function replayCommand(o: { seconds: number; vms: number; seed: number }): string {
  return `npm run chaos -- --seconds ${o.seconds} --vms ${o.vms} --seed ${o.seed}`;
}

export function summaryLine(r: Pick<ChaosReport, 'operations' | 'crashes' | 'failovers' | 'invariantViolations' | 'acknowledgedLost' | 'payloadBytesWrong'>): string {
  return (
    `operations ${r.operations.attempted} attempted, ${r.operations.succeeded} succeeded, ${r.operations.failedClean} failed clean; ` +
    `${r.crashes.total} crashes, ${r.failovers.total} failovers; ` +
    `${r.invariantViolations} invariant violations, ${r.acknowledgedLost} acknowledged operations lost, ${r.payloadBytesWrong} payload bytes wrong`
  );
}

/** What `sabotage` broke, on the timeline. */
async function sabotage(c: Clients, workers: Worker[], arrayDir: string, ledger: Ledger): Promise<void> {
  const find = () => {
    const mounted = workers.flatMap((w) => [...w.expect.values()].filter((e) => e.kind === 'mounted').map((e) => ({ w, e: e as Extract<Expect, { kind: 'mounted' }> })));
    const written = mounted.find((x) => x.e.model.written);
    return { written, other: mounted.find((x) => x !== written && x.e.model !== written?.e.model) };
  };
  // Two acknowledged mounts, one with acknowledged bytes: made through the guests' usual commands if the run left none.
  for (const w of workers.slice(0, 2)) {
    const f = find();
    if (f.written && f.other) break;
    await w.mountAndWrite(w.vm.guestOs === 'windows' ? 'Y:' : '/sabotage');
  }
  const { written, other } = find();
  if (!written || !other) throw new Error('sabotage: could not get two acknowledged mounts, one with written data, to break');
  const { model } = written.e;
  const lun = (await answered(() => c.storage.getLun({ lun: model.serial }))).lun!;
  const first = model.rangesToVerify()[0]!;
  const fd = openSync(lunFilePath(arrayDir, lun.uuid), 'r+');
  try {
    writeSync(fd, Buffer.alloc(16, 0xee), 0, 16, model.dataOffset + first.start);
  } finally {
    closeSync(fd);
  }
  ledger.event('sabotage', `16 bytes of LUN ${model.serial} at data byte ${first.start} overwritten in its backing file`, ledger.now(), 'done');
  await answered(() => c.storage.createLun({ requestId: 'sabotage-orphan', path: `/vol/${VOLUME}/sabotage_orphan`, sizeBytes: BigInt(4 * 1024 * 1024), osType: OsType.OS_TYPE_LINUX, provisioning: Provisioning.PROVISIONING_THIN, comment: 'sabotage', pool: '' }));
  ledger.event('sabotage', `LUN /vol/${VOLUME}/sabotage_orphan made on the array by hand`, ledger.now(), 'done');
  const tablePath = join(other.w.stateDir, 'mounts.json');
  const table = JSON.parse(readFileSync(tablePath, 'utf8')) as { mounts: { path: string }[] };
  table.mounts = table.mounts.filter((m) => m.path !== other.e.path);
  writeFileSync(tablePath, JSON.stringify(table, null, 2));
  ledger.event('sabotage', `${other.e.path} taken out of ${other.w.vm.id}'s mount table`, ledger.now(), 'done');
}

/** Polls until nothing is in flight on the host (operations, moves); false if it does not settle in time. */
async function hostQuiet(c: Clients, ms: number): Promise<boolean> {
  const end = Date.now() + ms;
  let calm = 0;
  while (Date.now() < end) {
    try {
      const cluster = await c.admin.getCluster({});
      // Twice in a row: a background retry (a failover finishing) may start between two looks.
      calm = cluster.serving && cluster.operationsInFlight === 0 ? calm + 1 : 0;
      if (calm >= 2) return true;
    } catch {
      calm = 0;
    }
    await sleep(100);
  }
  return false;
}

/** Polls CheckInvariants until it finds nothing, for up to `ms` (verify checks it again either way). */
async function settled(c: Clients, ms: number): Promise<void> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if ((await c.admin.checkInvariants({})).violations.length === 0) return;
    } catch {
      // Look again.
    }
    await sleep(500);
  }
}

async function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<'timeout'>((r) => (timer = setTimeout(() => r('timeout'), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

export async function runChaos(o: ChaosOptions): Promise<ChaosReport> {
  const say = o.progress ?? (() => undefined);
  const quietMs = o.quietTimeoutMs ?? 120_000;
  const root = mkdtempSync(join(o.tmp ?? tmpdir(), 'chaos-'));
  const dirs = { array: join(root, 'array'), host: join(root, 'host'), guests: join(root, 'g'), lines: join(root, 'l'), logs: join(root, 'logs') };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  const specs = vmSpecs(o.vms);
  const clusterPath = join(root, 'cluster.json');
  writeFileSync(clusterPath, JSON.stringify(clusterFile(specs), null, 2));
  const ledger = new Ledger();
  const registry = new Registry();
  const runTag = `chaos-${o.seed}`;
  const plan = schedule(o.seed, o.seconds);
  const bin = (name: string): string => join(repoRoot(), 'bin', `${name}.js`);
  const [storagePort, hostPort] = [await freePort(), await freePort()];
  const storage = new Service('storage-sim', bin('storage-sim'), ['serve', '--listen', `127.0.0.1:${storagePort}`, '--data-dir', dirs.array, '--enable-faults', '--pool', 'aggr1=1PiB', '--log-level', 'warn'], join(dirs.logs, 'storage-sim.log'));
  const host = new Service(
    'host-agent',
    bin('host-agent'),
    ['serve', '--listen', `127.0.0.1:${hostPort}`, '--storage', `127.0.0.1:${storagePort}`, '--data-dir', dirs.host, '--cluster', clusterPath, '--log-level', 'warn'],
    join(dirs.logs, 'host-agent.log'),
  );
  const lines: GuestLine[] = [];
  const workers: Worker[] = [];
  let c: Clients | undefined;
  const phases = { start: 0, chaos: 0, stop: 0, quiet: 0, verify: 0, total: 0 };
  let verified: Verified | null = null;
  let injector: Injector | undefined;
  let failure: unknown;
  const stopNow = (): void => {
    for (const s of [host, storage]) {
      if (s.running && s.pid !== undefined) process.kill(s.pid, 'SIGKILL');
    }
    if (!o.keep) rmSync(root, { recursive: true, force: true });
  };
  live.add(stopNow);
  const t0 = Date.now();
  let mark = t0;
  const phase = (name: keyof typeof phases): void => {
    const now = Date.now();
    phases[name] = now - mark;
    mark = now;
  };
  try {
    say(`starting storage-sim and host-agent (3 nodes, ${o.vms} VMs) in ${root}`);
    await startWithRetries(storage);
    await startWithRetries(host);
    c = clients(`127.0.0.1:${hostPort}`, `127.0.0.1:${storagePort}`);
    const admins = new Administrators(c, registry, ledger, Rng.derive(o.seed, 'admin'), runTag, Math.max(4, Math.ceil(o.vms / 2)));
    await admins.setUp();
    let writeId = 0;
    for (const vm of specs) {
      const line = new GuestLine(join(dirs.lines, `${vm.id}.sock`), join(dirs.host, 'sock', `${vm.id}.sock`));
      await line.listen();
      lines.push(line);
      workers.push(
        new Worker(vm, line, join(dirs.guests, vm.id), Rng.derive(o.seed, vm.id), {
          ledger,
          registry,
          nextWriteId: () => ++writeId,
          callTimeoutMs: 10_000,
          discoverTimeoutMs: 15_000,
          reconnectTimeoutMs: 20_000,
        }),
      );
    }
    injector = new Injector({ ledger, clients: c, storage, host, workers, runTag }, plan);
    phase('start');

    // ---- chaos
    const chaosEndMs = ledger.now() + o.seconds * 1000;
    say(`chaos for ${o.seconds} s: ${plan.length} injections scheduled (seed ${o.seed})`);
    let quietDone = false;
    const timeUp = (): boolean => ledger.now() >= chaosEndMs;
    const watching = injector.powerWatch(() => quietDone);
    const working = workers.map((w) => w.loop(timeUp));
    const administering = admins.loop(timeUp);
    await injector.run(chaosEndMs);
    while (!timeUp()) await sleep(50);
    phase('chaos');

    // ---- stop: every command in flight ends (each is bounded by the guest's reconnect timeout)
    say('stopping: letting the commands in flight end');
    const stopped = await within(Promise.all([...working, administering]), quietMs);
    if (stopped === 'timeout') {
      const stuck = workers.filter((w) => !w.stopped).map((w) => w.vm.id);
      ledger.violate('HUNG', stuck.join(' ') || 'admin', `commands still running ${quietMs} ms after the chaos ended (${stuck.length ? `guests ${stuck.join(', ')}` : 'the administrators'})`);
      throw new Error(`commands hung after the chaos ended: ${stuck.join(', ') || 'admin'}`);
    }
    phase('stop');

    // ---- quiet
    say('quiet: faults cleared, nodes recovered, unfinished requests finished');
    await answered(() => c!.faults.clearFaults({}), 30_000);
    const recovered = await injector.recoverAll();
    if (recovered.length > 0) ledger.event('recover-node', recovered.join(' '), ledger.now(), 'recovered at the end of the chaos');
    const end = Date.now() + quietMs;
    while (workers.some((w) => !w.powered) && Date.now() < end) await sleep(100);
    for (const w of workers.filter((x) => !x.powered)) ledger.violate('VM_NOT_BACK', w.vm.id, `VM ${w.vm.id} did not run again once every node was recovered`);
    if (!(await hostQuiet(c, Math.max(1_000, end - Date.now())))) ledger.violate('NOT_QUIET', 'host-agent', 'operations were still in flight long after the chaos ended');
    const left = await within(Promise.all(workers.map((w) => w.resolvePending(8))), Math.max(1_000, end - Date.now()));
    if (left === 'timeout') ledger.violate('HUNG', 'guests', 'finishing the recorded requests did not end in time');
    if (!(await hostQuiet(c, Math.max(1_000, end - Date.now())))) ledger.violate('NOT_QUIET', 'host-agent', 'operations were still in flight after the guests finished their requests');
    // Quiet includes what the host cleans up by itself (a command a slow array held landing late, then swept): given time, not excused.
    await settled(c, 30_000);
    quietDone = true;
    await watching;
    phase('quiet');

    if (o.sabotage) await sabotage(c, workers, dirs.array, ledger);

    // ---- verify
    say('verifying every promise');
    verified = await verify({ ledger, clients: c, registry, workers, arrayDir: dirs.array });
    phase('verify');
  } catch (err) {
    failure = err;
  } finally {
    live.delete(stopNow);
    for (const w of workers) w.close();
    c?.close();
    await Promise.all([host.stop().catch(() => undefined), storage.stop().catch(() => undefined)]);
    await Promise.all(lines.map((l) => l.close()));
    if (!o.keep) rmSync(root, { recursive: true, force: true });
  }
  if (failure) {
    ledger.violate('RUN_ABORTED', 'chaos', `the run could not finish: ${failure instanceof Error ? failure.message : String(failure)}`);
  }
  phases.total = Date.now() - t0;
  return report(o, registry, ledger, plan, injector, verified, workers, phases, o.keep ? root : null);
}

/**
 * For every actor a violation names (its subject starts with the actor): its last commands,
 * and the last commands of it that named the mount the violation is about, one line each.
 */
function traces(ledger: Ledger, registry: Registry): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  const line = (a: Attempt): string =>
    `#${a.id} ${(a.startMs / 1000).toFixed(2)}-${((a.endMs ?? a.startMs) / 1000).toFixed(2)}s ${a.kind} ${a.what}: ${a.outcome === 'succeeded' ? 'ok' : `${a.error?.kind} ${a.error?.reason}`}${a.resumed ? ' (resumed)' : ''}${a.opIds.length ? ` ops ${a.opIds.join(',')}` : ''}`;
  const words = (v: Violation): string => {
    const serials = `${v.subject} ${v.description}`.match(/\b[A-Za-z]{4}[A-Za-z0-9]{8}\b/g) ?? [];
    return `${v.subject} ${v.description} ${serials.flatMap((x) => registry.get(x)?.history.map((h) => h.place) ?? []).join(' ')}`;
  };
  for (const v of ledger.violations.slice(0, 50)) {
    const [first, ...rest] = v.subject.split(' ');
    const path = rest.join(' ');
    for (const actor of [first!, ...(words(v).match(/\b(?:vm\d+|admin)\b/g) ?? [])]) {
      const list = ledger.recent.get(actor);
      if (!list) continue;
      if (!out[actor]) out[actor] = list.slice(-60).map(line);
      if (actor === first && path !== '' && !out[`${actor} ${path}`]) {
        const about = list.filter((a) => a.what.includes(path) || a.what.includes(JSON.stringify(path))).slice(-40);
        if (about.length > 0) out[`${actor} ${path}`] = about.map(line);
      }
    }
  }
  return out;
}

function lunHistories(ledger: Ledger, registry: Registry): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const v of ledger.violations.slice(0, 50)) {
    for (const serial of `${v.subject} ${v.description}`.match(/\b[A-Za-z]{4}[A-Za-z0-9]{8}\b/g) ?? []) {
      const m = registry.get(serial);
      if (m && !out[serial]) out[serial] = m.history.map((h) => `${((h.atMs - ledger.t0) / 1000).toFixed(2)}s ${h.place}`);
    }
  }
  return out;
}

function report(
  o: ChaosOptions,
  registry: Registry,
  ledger: Ledger,
  plan: Scheduled[],
  injector: Injector | undefined,
  verified: Verified | null,
  workers: Worker[],
  phasesMs: ChaosReport['phasesMs'],
  dir: string | null,
): ChaosReport {
  const totals = ledger.totals;
  const dirty = ledger.attempts.filter((a) => a.outcome === 'failed' && a.dirty);
  for (const a of dirty) ledger.violate('FAILED_NOT_CLEAN', `${a.actor} ${a.kind} ${a.what}`, `attempt ${a.id} failed (${a.error?.kind} ${a.error?.reason}) and ${a.dirty}`);
  const invariantViolations = ledger.violations.filter((v) => v.counts === 'invariant').length;
  const acknowledgedLost = ledger.violations.filter((v) => v.counts === 'lost').length + ledger.lostWrites.size;
  const replay = replayCommand(o);
  const first = [...ledger.violations].sort((a, b) => a.atMs - b.atMs)[0];
  const r: ChaosReport = {
    seed: o.seed,
    seconds: o.seconds,
    vms: o.vms,
    replay,
    summary: '',
    ok: ledger.violations.length === 0 && ledger.wrongBytes === 0 && ledger.lostWrites.size === 0,
    operations: {
      attempted: totals.attempted,
      succeeded: totals.succeeded,
      failedClean: totals.failed - dirty.length,
      failedDirty: dirty.length,
      resumed: ledger.resumed,
      byKind: Object.fromEntries(ledger.counts),
    },
    crashes: { ...ledger.crashes, total: ledger.crashes.storageSim + ledger.crashes.hostAgent },
    failovers: { ...ledger.failovers, total: ledger.failovers.failNode + ledger.failovers.moveGroup },
    invariantViolations,
    acknowledgedLost,
    payloadBytesWrong: ledger.wrongBytes,
    firstBrokenPromise: first ? { ...first, replay } : null,
    violations: ledger.violations.slice(0, 500),
    violationsTotal: ledger.violations.length,
    timeline: ledger.timeline,
    notReached: injector?.notReached ?? [],
    schedule: plan,
    errors: Object.fromEntries([...ledger.errors].sort((a, b) => b[1] - a[1])),
    traces: traces(ledger, registry),
    lunHistories: lunHistories(ledger, registry),
    dirtyFailures: dirty.map((a) => ({ id: a.id, actor: a.actor, kind: a.kind, what: a.what, error: `${a.error?.kind} ${a.error?.reason}: ${a.error?.message}`, why: a.dirty! })),
    verified,
    io: workers.reduce(
      (s, w) => ({ writes: s.writes + w.stats.writes, reads: s.reads + w.stats.reads, bytesWritten: s.bytesWritten + w.stats.bytesWritten, bytesRead: s.bytesRead + w.stats.bytesRead }),
      { writes: 0, reads: 0, bytesWritten: 0, bytesRead: 0 },
    ),
    phasesMs,
    dir,
  };
  r.summary = summaryLine(r);
  return r;
}
