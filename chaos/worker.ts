/**
 * One guest worker per VM: it drives the guest-agent library (GuestAgent over GrpcHostLink and
 * SimulatedGuestOs, built as the CLI builds it) with random commands, valid and not, one at a
 * time or several at once, and remembers what it was told: which mounts were acknowledged
 * (and with which LUN and volume), which were removed, and what every write it saw
 * acknowledged put on the disk (volume-model.ts).
 *
 * A guest can die: at a random crash point of a command (the library's crash hook, as
 * `PASSTHRU_GUEST_CRASH_AT` does for the CLI), or with its VM (its node failed). A dead guest
 * does nothing more, on the host or in its state dir; the next run finishes what it had
 * recorded by running the same command again, as the guest agent's messages say.
 */
import { parseDrivePath, type DrivePath } from '../common/drive-path.js';
import { GrpcHostLink } from '../guest-agent/grpc-host.js';
import type { BusDevice } from '../guest-agent/guest-os.js';
import type { HostLink, OperationView, ScsiAddress, WatchUpdate } from '../guest-agent/host-link.js';
import { SimulatedGuestOs, type SimulatedHardware } from '../guest-agent/sim-os.js';
import { StateDir, type MountRecord, type MountTable, type PendingRequest } from '../guest-agent/state.js';
import { CRASH_POINTS, GuestAgent, type ConnectRequest, type CreateRequest, type MountResult, type RemoveResult } from '../guest-agent/volumes.js';
import type { VmSpec } from './cluster.js';
import { GuestCrash, PoweredOff, type Attempt, type Ledger } from './ledger.js';
import type { GuestLine } from './proxy.js';
import type { Registry } from './registry.js';
import { payload, type Rng } from './rng.js';
import { SECTOR, type VolumeModel } from './volume-model.js';

const MiB = 1024 * 1024;
const HEAD_WINDOW = 2 * MiB;
const TAIL_WINDOW = 256 * 1024;

export interface WorkerEnv {
  ledger: Ledger;
  registry: Registry;
  nextWriteId(): number;
  /** Per-call deadline, rescans before giving up on a disk, and how long a host gone away is waited for. */
  callTimeoutMs: number;
  discoverTimeoutMs: number;
  reconnectTimeoutMs: number;
}

/** What the worker was told is at a mount: a disk (its LUN's model), or not known yet (an unfinished request). */
export type Expect = { kind: 'mounted'; path: string; model: VolumeModel } | { kind: 'uncertain'; path: string; was?: Expect };

/** A path the worker may use, and whether it is valid for its guest OS (labelled by hand, not by the parser under test). */
interface PathChoice {
  path: string;
  valid: boolean;
}

const WINDOWS_PATHS: PathChoice[] = [
  ...['E:', 'F:', 'G:', 'H:', 'e:', 'C:\\mt1', 'c:\\MT1', 'C:\\mt2', 'C:\\data\\deep', 'E:\\logs', 'F:\\x', 'E:\\logs\\more'].map((path) => ({ path, valid: true })),
  ...['A:', 'C:', 'E', 'E:data', '\\\\srv\\share', 'C:\\con', 'C:\\bad<name', 'C:\\trail.', `C:\\${'x'.repeat(300)}`, 'C:\\a\\..\\b', ''].map((path) => ({ path, valid: false })),
];
const LINUX_PATHS: PathChoice[] = [
  ...['/srv/d1', '/srv/d2', '/data', '/data/logs', '/srv/d1/nested', '/mnt/x', '/srv'].map((path) => ({ path, valid: true })),
  ...['srv/rel', '/', '/proc/x', '/dev/sdb', '/srv/../etc', '/srv/a\u0001b', `/${'y'.repeat(300)}`, '/run/x', ''].map((path) => ({ path, valid: false })),
];

type CrashArm = { point: string; n: number } | undefined;

/** The library's seams behind a switch: once the guest is dead (crashed, or its VM went down), nothing more gets through. */
class GuardedLink implements HostLink, SimulatedHardware {
  constructor(
    private readonly inner: GrpcHostLink,
    private readonly check: () => void,
  ) {}

  private async g<T>(call: () => Promise<T>): Promise<T> {
    this.check();
    try {
      return await call();
    } finally {
      this.check();
    }
  }

  self() {
    return this.g(() => this.inner.self());
  }
  createDisk(req: Parameters<HostLink['createDisk']>[0]) {
    return this.g(() => this.inner.createDisk(req));
  }
  connectDisk(req: Parameters<HostLink['connectDisk']>[0]) {
    return this.g(() => this.inner.connectDisk(req));
  }
  removeDisk(req: Parameters<HostLink['removeDisk']>[0]) {
    return this.g(() => this.inner.removeDisk(req));
  }
  async *watchOperation(operationId: string): AsyncIterable<WatchUpdate> {
    this.check();
    for await (const u of this.inner.watchOperation(operationId)) {
      this.check();
      yield u;
    }
    this.check();
  }
  listDisks() {
    return this.g(() => this.inner.listDisks());
  }
  reportMount(req: Parameters<HostLink['reportMount']>[0]) {
    return this.g(() => this.inner.reportMount(req));
  }
  reportUnmount(req: Parameters<HostLink['reportUnmount']>[0]) {
    return this.g(() => this.inner.reportUnmount(req));
  }
  rescanBus(): Promise<BusDevice[]> {
    return this.g(() => this.inner.rescanBus());
  }
  readDisk(at: ScsiAddress, offset: number, length: number): Promise<Buffer> {
    return this.g(() => this.inner.readDisk(at, offset, length));
  }
  writeDisk(requestId: string, at: ScsiAddress, offset: number, data: Buffer): Promise<void> {
    return this.g(() => this.inner.writeDisk(requestId, at, offset, data));
  }
  reconnect(): void {
    this.inner.reconnect();
  }
  close(): void {
    // The worker's connection outlives one command.
  }
}

/** The state dir behind the same switch: a dead guest writes nothing more. */
class GuardedStateDir extends StateDir {
  constructor(
    dir: string,
    reached: (point: string) => void,
    private readonly check: () => void,
  ) {
    super(dir, { reached });
  }

  override async update<T>(change: (t: MountTable) => T): Promise<T> {
    this.check();
    return super.update((t) => {
      this.check();
      return change(t);
    });
  }
}

/** One planned command: what it is, and how to run it. */
interface Planned {
  kind: string;
  what: string;
  /** The mount key it works on, if any (commands on one key in a group are chosen not to trip each other up). */
  key?: string;
  run(agent: GuestAgent, a: Attempt): Promise<void>;
  /** The command may be killed at a crash point. */
  crashable?: boolean;
}

export class Worker {
  readonly expect = new Map<string, Expect>();
  private link: GrpcHostLink;
  private on = true;
  private epoch = 0;
  private offSince = 0;
  /** Commands of the current group still running. */
  private running = 0;
  /** Sector ranges reserved by writes of the current group, per mount key. */
  private reserved = new Map<string, { start: number; end: number }[]>();
  stopped = false;
  /** Acknowledged mounts whose volume a `show` confirmed mid-run, writes and reads done. */
  stats = { writes: 0, reads: 0, bytesWritten: 0, bytesRead: 0, crashesArmed: 0 };

  constructor(
    readonly vm: VmSpec,
    readonly line: GuestLine,
    readonly stateDir: string,
    private readonly rng: Rng,
    private readonly env: WorkerEnv,
  ) {
    this.link = new GrpcHostLink(line.endpoint, env.callTimeoutMs);
    this.daemon = rng.chance(0.5);
  }

  get powered(): boolean {
    return this.on;
  }

  get offForMs(): number {
    return this.on ? 0 : Date.now() - this.offSince;
  }

  /** The VM went down: the guest dies now, its connections with it. */
  powerOff(): void {
    if (!this.on) return;
    this.on = false;
    this.offSince = Date.now();
    this.epoch++;
    this.line.drop();
    this.link.close();
  }

  /** The VM runs again: a fresh guest, with a fresh connection. */
  powerOn(): void {
    if (this.on) return;
    this.link = new GrpcHostLink(this.line.endpoint, this.env.callTimeoutMs);
    this.on = true;
    this.booted = true;
  }

  private booted = false;
  /**
   * Half the guests use the library as a long-running program would: one GuestAgent per boot,
   * which, once it has reached the host, waits a host that goes away out; the others as the
   * CLI does, one per command (a host down at a command's first call is reported at once).
   */
  readonly daemon: boolean;
  private daemonAgent?: { epoch: number; agent: GuestAgent };
  /** The attempt a daemon's single command books its operations to. */
  private current?: Attempt;

  close(): void {
    this.link.close();
  }

  /** The guest's mount table as it is on disk now (read without a lock, as the library reads it). */
  table(): MountTable {
    return new StateDir(this.stateDir).read();
  }

  /**
   * A GuestAgent for one command, as the CLI makes one per run: its own crash hook, and a
   * switch that kills it with the VM (or when its crash fires).
   */
  agent(a: Attempt | undefined, arm: CrashArm = undefined): GuestAgent {
    const epoch = this.epoch;
    let dead: Error | undefined;
    const check = (): void => {
      if (dead) throw dead;
      if (!this.on || this.epoch !== epoch) throw (dead = new PoweredOff());
    };
    const crash = (point: string): void => {
      check();
      if (arm && arm.point === point && --arm.n === 0) throw (dead = new GuestCrash(point));
    };
    const link = new GuardedLink(this.link, check);
    return new GuestAgent(link, new SimulatedGuestOs(link), new GuardedStateDir(this.stateDir, crash, check), {
      discovery: { timeoutMs: this.env.discoverTimeoutMs, firstDelayMs: 20, maxDelayMs: 500 },
      reconnectTimeoutMs: this.env.reconnectTimeoutMs,
      backoff: { firstDelayMs: 50, maxDelayMs: 500 },
      crash: (p) => crash(p),
      progress: (p) => {
        const to = a ?? this.current;
        if (p.kind === 'operation' && to && !to.opIds.includes(p.operationId)) to.opIds.push(p.operationId);
      },
    });
  }

  /** The agent for a single command: the daemon's own (made at boot) or a fresh one as the CLI makes. */
  private agentFor(a: Attempt, arm: CrashArm, single: boolean): GuestAgent {
    if (!this.daemon || !single || arm) return this.agent(a, arm);
    if (this.daemonAgent?.epoch !== this.epoch) this.daemonAgent = { epoch: this.epoch, agent: this.agent(undefined) };
    this.current = a;
    return this.daemonAgent.agent;
  }

  // ------------------------------------------------------------------ the loop

  async loop(stop: () => boolean): Promise<void> {
    while (!stop()) {
      if (!this.on) {
        await sleep(50);
        continue;
      }
      if (this.booted) {
        // A guest that just booted finishes what it had recorded, most of the time at once.
        this.booted = false;
        if (this.rng.chance(0.7)) await this.resolvePending(1);
        continue;
      }
      const r = this.rng;
      this.reserved.clear();
      if (r.chance(0.12)) await this.runGroup(this.planGroup());
      else await this.runGroup([this.plan(this.pickAction())].filter((p): p is Planned => p !== undefined));
      await sleep(r.int(0, 20));
    }
    this.stopped = true;
  }

  private pickAction(): string {
    const mounted = this.table().mounts.length;
    if (mounted === 0) return this.rng.weighted({ create: 70, connect: 15, remove: 5, write: 3, list: 3, resolve: 4 });
    return this.rng.weighted({ create: mounted < 6 ? 20 : 8, connect: 7, remove: mounted > 3 ? 16 : 10, write: 28, read: 16, list: 4, show: 5, rescan: 2, resolve: 3 });
  }

  /** A path for a command: a valid one most of the time. */
  private pickPath(): PathChoice {
    const valid = this.rng.chance(0.85);
    return this.rng.pick(this.paths().filter((p) => p.valid === valid));
  }

  private plan(action: string, key?: string): Planned | undefined {
    switch (action) {
      case 'create':
        return this.planCreate();
      case 'connect':
        return this.planConnect();
      case 'remove':
        return this.planRemove(key);
      case 'write':
        return this.planWrite(key);
      case 'read':
        return this.planRead(key);
      case 'show':
        return this.planShow(key);
      case 'list':
        return { kind: 'list', what: '', run: async (agent) => void (await agent.list()) };
      case 'rescan':
        return { kind: 'rescan', what: '', run: async (agent) => void (await agent.rescan()) };
      case 'resolve':
        return this.planResolve();
      default:
        return undefined;
    }
  }

  /** Several commands at once: often on one mount (reads beside writes, a removal beside I/O, the same command twice). */
  private planGroup(): Planned[] {
    const r = this.rng;
    const mounted = this.table().mounts;
    const style = r.weighted({ oneMount: 45, twice: 20, mixed: 35 });
    if (style === 'oneMount' && mounted.length > 0) {
      const m = r.pick(mounted);
      const combo = r.pick([
        ['write', 'write'],
        ['write', 'read'],
        ['read', 'read', 'write'],
        ['remove', 'write'],
        ['remove', 'read'],
        ['show', 'write'],
        ['write', 'write', 'read'],
      ]);
      return combo.map((c) => this.plan(c, m.key)).filter((p): p is Planned => p !== undefined);
    }
    if (style === 'twice') {
      const first = this.plan(r.pick(['create', 'remove', 'connect']));
      if (!first) return [];
      return [first, { ...first }];
    }
    const n = r.int(2, 3);
    const out: Planned[] = [];
    const keys = new Set<string>();
    for (let i = 0; i < n; i++) {
      const p = this.plan(this.pickAction());
      // Independent commands on distinct mounts: a create beside a write of the same path would race in ways nobody promised.
      if (!p || (p.key !== undefined && keys.has(p.key))) continue;
      if (p.key !== undefined) keys.add(p.key);
      out.push(p);
    }
    return out;
  }

  private async runGroup(plans: Planned[]): Promise<void> {
    this.running = plans.length;
    await Promise.all(plans.map((p) => this.runOne(p, { single: plans.length === 1 })));
    this.running = 0;
  }

  /** Runs one command and books its outcome; `final`: finishing what was recorded, no crashes, every follow-up done. */
  private async runOne(p: Planned, opts: { final?: boolean; single?: boolean } = {}): Promise<void> {
    const a = this.env.ledger.begin(this.vm.id, p.kind, p.what);
    let arm: CrashArm;
    if (p.crashable && !opts.final && this.rng.chance(0.1)) {
      const point = this.rng.pick([...CRASH_POINTS]);
      arm = { point, n: point === 'table-write' ? this.rng.int(1, 5) : 1 };
      this.stats.crashesArmed++;
    }
    try {
      await p.run(this.agentFor(a, arm, opts.single === true), a);
      this.env.ledger.succeed(a);
    } catch (err) {
      const e = this.env.ledger.fail(a, err);
      await this.afterFailure(p, a, err, opts.final === true);
      // As a person would: a host that cannot be reached is tried again in a while, not at once.
      if (e?.reason === 'HOST_UNREACHABLE') await sleep(this.rng.int(300, 1_500));
    }
  }

  /** After a create, connect or removal failed: an unfinished request left in the table makes the mount uncertain. */
  private async afterFailure(p: Planned, a: Attempt, err: unknown, final: boolean): Promise<void> {
    if (p.key === undefined || !['create', 'connect', 'remove'].includes(p.kind)) return;
    let t: MountTable;
    try {
      t = this.table();
    } catch (e) {
      this.env.ledger.violate('MOUNT_TABLE_UNREADABLE', this.vm.id, `the guest's mount table cannot be read after ${a.kind} ${a.what}: ${(e as Error).message}`);
      return;
    }
    const pending = t.pending.find((x) => x.key === p.key);
    if (!pending) {
      // The host answered for good (refused, or the operation failed and was undone): what was there before the request is there still.
      const e = this.expect.get(p.key);
      if (e?.kind === 'uncertain') {
        if (e.was) this.expect.set(p.key, e.was);
        else this.expect.delete(p.key);
      }
      this.settleLimbo(p.key);
    }
    if (pending) {
      // A volume the request chose (recorded before its first write) may be on its disk now, whatever becomes of the request.
      if (pending.kind !== 'remove' && pending.volume && pending.result) {
        const m = this.env.registry.get(pending.result.serial);
        if (m && !m.mayHold.has(pending.volume.volumeId)) {
          m.mayHold.add(pending.volume.volumeId);
          m.note(`${this.vm.id} ${a.kind} #${a.id} (${a.error?.kind} ${a.error?.reason}) chose volume ${pending.volume.volumeId} for it, unfinished`);
        }
      }
      const was = this.expect.get(p.key);
      if (was?.kind !== 'uncertain') this.expect.set(p.key, { kind: 'uncertain', path: pending.mountPath, ...(was ? { was } : {}) });
      // A connect that stopped with the disk attached (not blank, another OS's volume): do what the error says, most of the time at once.
      const reason = (err as { reason?: string }).reason;
      if ((reason === 'DISK_NOT_EMPTY' || reason === 'VOLUME_OF_OTHER_OS') && pending.kind === 'connect' && (final || this.rng.chance(0.8))) {
        await this.runOne(this.rng.chance(0.5) ? this.resumePlan(pending, { force: true }) : this.removePlan(pending.mountPath, pending.key, this.rng.chance(0.3)), { final });
      }
    }
  }

  // ------------------------------------------------------------------ paths, sizes

  private paths(): PathChoice[] {
    return this.vm.guestOs === 'windows' ? WINDOWS_PATHS : LINUX_PATHS;
  }

  private keyOf(path: string): string | undefined {
    try {
      return parseDrivePath(this.vm.guestOs, path).key;
    } catch {
      return undefined;
    }
  }

  private pickSize(): { size: number; valid: boolean } {
    const r = this.rng;
    const round = (n: number): number => Math.floor(n / SECTOR) * SECTOR;
    const which = r.weighted({ small: 55, medium: 22, min: 8, large: 5, invalid: 10 });
    switch (which) {
      case 'small':
        return { size: round(r.int(4 * MiB, 64 * MiB)), valid: true };
      case 'medium':
        return { size: round(r.int(64 * MiB, 512 * MiB)), valid: true };
      case 'min':
        return { size: 4 * MiB, valid: true };
      case 'large':
        return { size: round(r.int(1024, 64 * 1024) * MiB), valid: true };
      default:
        return { size: r.pick([0, 4 * MiB - SECTOR, 16 * 1024 ** 4 + SECTOR, 5 * MiB + 100, 1.5, -SECTOR]), valid: false };
    }
  }

  // ------------------------------------------------------------------ create, connect, remove

  private planCreate(): Planned {
    const r = this.rng;
    const choice = this.pickPath();
    const size = this.pickSize();
    const sharing = this.vm.ha ? (r.chance(0.05) ? 'dedicated' : undefined) : r.chance(0.35) ? 'dedicated' : undefined;
    const labelPick = r.weighted({ none: 75, valid: 20, invalid: 5 });
    const label = labelPick === 'valid' ? `v${r.int(1, 99999)}` : labelPick === 'invalid' ? 'x'.repeat(40) : undefined;
    // Invalid in more than one way: refused for any of them (the guest checks path, size, sharing, label in that order).
    const expectKinds = [...(!choice.valid || !size.valid || labelPick === 'invalid' ? ['invalid_argument'] : []), ...(sharing === 'dedicated' && this.vm.ha ? ['failed_precondition'] : [])];
    return this.createPlan(choice.path, size.size, sharing, label, expectKinds.length > 0 ? expectKinds : undefined);
  }

  private createPlan(path: string, size: number, sharing: 'dedicated' | undefined, label: string | undefined, expectKind: string[] | undefined): Planned {
    const req: CreateRequest = { mount: path, sizeBytes: size, ...(sharing ? { sharing } : {}), ...(label !== undefined ? { label } : {}) };
    const key = this.keyOf(path);
    return {
      kind: 'create',
      what: `${JSON.stringify(path)} ${size} bytes${sharing ? ' dedicated' : ''}${label !== undefined ? ` label ${label.length}` : ''}`,
      key,
      crashable: true,
      run: async (agent, a) => {
        let result: MountResult;
        try {
          result = await agent.create(req);
        } catch (err) {
          this.checkRefusal(a, err, expectKind);
          throw err;
        }
        if (expectKind) this.invalidAccepted(a, expectKind);
        a.resumed = result.resumed;
        if (!result.alreadyMounted && result.mount.sizeBytes !== size) {
          this.env.ledger.violate('WRONG_SIZE', `${this.vm.id} ${result.mount.path}`, `asked for ${size} bytes, got a disk of ${result.mount.sizeBytes}`);
        }
        this.mounted(result, a);
      },
    };
  }

  /** Tests only (run.ts's sabotage): a disk of this guest's own at `path` with acknowledged bytes on it, through the usual commands. */
  async mountAndWrite(path: string): Promise<void> {
    await this.runOne(this.createPlan(path, 8 * MiB, undefined, undefined, undefined), { final: true });
    const write = this.planWrite(this.keyOf(path));
    if (write) await this.runOne(write, { final: true });
  }

  private planConnect(): Planned {
    const r = this.rng;
    const choice = this.pickPath();
    const available = this.env.registry.where('available');
    const sameOs = available.filter((m) => !m.foreign && (m.guestOs === null || m.guestOs === this.vm.guestOs));
    const others = available.filter((m) => !sameOs.includes(m));
    const pick = r.weighted({ same: 65, other: 10, nonexistent: 12, inUse: 13 });
    let lun: string;
    let model: VolumeModel | undefined;
    if (pick === 'same' && sameOs.length > 0) model = r.pick(sameOs);
    else if (pick === 'other' && others.length > 0) model = r.pick(others);
    if (model) lun = r.chance(0.3) ? (r.chance(0.5) ? `naa.${model.naaId}` : model.naaId.toUpperCase()) : model.serial;
    else if (pick === 'inUse' && this.env.registry.where('mounted').length > 0) lun = r.pick(this.env.registry.where('mounted')).serial;
    else lun = r.pick(['CHAOSnothing1', 'naa.600a0980000000000000000000000000', ' ', 'bad lun']);
    const req: ConnectRequest = { mount: choice.path, lun, ...(r.chance(0.15) ? { label: `c${r.int(1, 999)}` } : {}) };
    const key = this.keyOf(choice.path);
    return {
      kind: 'connect',
      what: `${JSON.stringify(choice.path)} lun ${lun}`,
      key,
      crashable: true,
      run: async (agent, a) => {
        let result: MountResult;
        try {
          result = await agent.connect(req);
        } catch (err) {
          this.checkRefusal(a, err, choice.valid ? undefined : ['invalid_argument']);
          model?.note(`${this.vm.id} connect #${a.id} at ${choice.path} failed: ${(err as { kind?: string }).kind ?? 'internal'} ${(err as { reason?: string }).reason ?? ''}`);
          // Only a disk that is not a readable volume of this guest's OS may be refused as such (and then forced).
          const reason = (err as { reason?: string }).reason;
          if (model && (reason === 'DISK_NOT_EMPTY' || reason === 'VOLUME_OF_OTHER_OS') && model.volumeId !== null && model.guestOs === this.vm.guestOs && !model.foreign && model.mayHold.size === 0) {
            this.env.ledger.violate('VOLUME_NOT_RECOGNIZED', `${this.vm.id} connect ${choice.path}`, `${model.describe()} holds a ${model.guestOs} volume, but the guest refused it: ${(err as Error).message}`, 'lost');
          }
          // Held by this request only if the request recorded at the mount is a connect of this very LUN.
          const mine = (p: PendingRequest): boolean => p.key === key && p.kind === 'connect' && this.env.registry.find(p.lun ?? '') === model;
          if (model && key !== undefined && model.place.kind === 'available' && this.table().pending.some(mine)) {
            model.place = { kind: 'limbo', vm: this.vm.id, key, from: 'connect' };
          }
          throw err;
        }
        if (!choice.valid) this.invalidAccepted(a, ['invalid_argument']);
        a.resumed = result.resumed;
        this.mounted(result, a);
      },
    };
  }

  private planRemove(key?: string): Planned | undefined {
    const r = this.rng;
    const mounted = this.table().mounts;
    let path: string;
    let valid = true;
    if (key !== undefined) {
      const m = mounted.find((x) => x.key === key);
      if (!m) return undefined;
      path = m.path;
    } else if (mounted.length > 0 && r.chance(0.7)) path = r.pick(mounted).path;
    else {
      const c = r.pick(this.paths());
      path = c.path;
      valid = c.valid;
    }
    const k = this.keyOf(path);
    return this.removePlan(path, k, r.chance(0.6), valid);
  }

  private removePlan(path: string, key: string | undefined, deleteLun: boolean, valid = true): Planned {
    return {
      kind: 'remove',
      what: `${JSON.stringify(path)}${deleteLun ? ' --delete-lun' : ''}`,
      key,
      crashable: true,
      run: async (agent, a) => {
        let result: RemoveResult;
        try {
          result = await agent.remove({ mount: path, deleteLun });
        } catch (err) {
          this.checkRefusal(a, err, valid ? undefined : ['invalid_argument']);
          throw err;
        }
        if (!valid) this.invalidAccepted(a, ['invalid_argument']);
        a.resumed = result.resumed;
        this.removed(result, a);
      },
    };
  }

  /** The same command as a recorded request, run again (what `guest-agent disk list` tells a person to do). */
  private resumePlan(p: PendingRequest, extra: { force?: boolean } = {}): Planned {
    if (p.kind === 'remove') return this.removePlan(p.mountPath, p.key, p.deleteLun);
    const base = { key: p.key, crashable: true };
    if (p.kind === 'create') {
      const req: CreateRequest = { mount: p.mountPath, sizeBytes: p.sizeBytes ?? 0, ...(p.sharing === 'dedicated' ? { sharing: 'dedicated' as const } : {}), ...(p.label !== undefined ? { label: p.label } : {}), ...extra };
      return {
        ...base,
        kind: 'create',
        what: `${JSON.stringify(p.mountPath)} again (request ${p.requestId})${extra.force ? ' --force' : ''}`,
        run: async (agent, a) => {
          const result = await agent.create(req);
          a.resumed = result.resumed;
          this.mounted(result, a);
        },
      };
    }
    const req: ConnectRequest = { mount: p.mountPath, lun: p.lun ?? '', ...(p.label !== undefined ? { label: p.label } : {}), ...extra };
    return {
      ...base,
      kind: 'connect',
      what: `${JSON.stringify(p.mountPath)} lun ${p.lun} again (request ${p.requestId})${extra.force ? ' --force' : ''}`,
      run: async (agent, a) => {
        const result = await agent.connect(req);
        a.resumed = result.resumed;
        this.mounted(result, a);
      },
    };
  }

  private planResolve(): Planned | undefined {
    const t = this.table();
    if (t.pending.length === 0) return undefined;
    const p = this.rng.pick(t.pending);
    const reason = p.kind === 'connect' && p.phase === 'attached' && this.rng.chance(0.3);
    return reason ? this.removePlan(p.mountPath, p.key, this.rng.chance(0.5)) : this.resumePlan(p);
  }

  /**
   * Finishes the requests the guest has recorded, each by running its command again (a
   * connect the disk's contents stop is given back with a removal); up to `rounds` passes.
   * Returns the requests still unfinished.
   */
  async resolvePending(rounds: number): Promise<PendingRequest[]> {
    for (let round = 0; round < rounds; round++) {
      const pending = this.table().pending;
      if (pending.length === 0 || !this.on) return pending;
      for (const p of pending) await this.runOne(this.resumePlan(p), { final: true });
      if (round < rounds - 1 && this.table().pending.length > 0) await sleep(Math.min(2_000, 100 * 2 ** round));
    }
    return this.table().pending;
  }

  // ------------------------------------------------------------------ what the answers mean

  /** A create or connect acknowledged: the mount holds this LUN's volume now. */
  private mounted(result: MountResult, a: Attempt): void {
    const m = result.mount;
    const registry = this.env.registry;
    const known = registry.get(m.serial);
    const model = registry.forDisk(m, { kind: 'mounted', vm: this.vm.id, key: m.key, path: m.path }, this.vm.guestOs);
    if (known && !result.alreadyMounted) {
      if (m.initialized) {
        // A new volume on a disk that held none (or held one and was forced): the data area keeps its bytes.
        if (known.dataBytes !== 0 && (known.dataOffset !== m.dataOffset || known.dataBytes !== m.dataBytes)) {
          this.env.ledger.violate('LAYOUT_CHANGED', `${this.vm.id} ${m.path}`, `LUN ${m.serial} was initialized with its data area at ${m.dataOffset} (+${m.dataBytes}), not ${known.dataOffset} (+${known.dataBytes}) as before`);
        }
      } else if (known.volumeId !== null && known.volumeId !== m.volumeId && !known.mayHold.has(m.volumeId)) {
        this.env.ledger.violate('VOLUME_REPLACED', `${this.vm.id} ${m.path}`, `connect kept volume ${m.volumeId} on LUN ${m.serial}, but the volume acknowledged on it was ${known.volumeId}`, 'lost');
      }
    }
    model.note(`${this.vm.id} ${a.kind} #${a.id} at ${m.path}: ${m.initialized ? 'initialized' : 'kept'} volume ${m.volumeId}${result.resumed ? ' (resumed)' : ''}${result.alreadyMounted ? ' (already mounted)' : ''}`);
    model.mayHold.clear();
    model.volumeId = m.volumeId;
    model.label = m.label;
    model.guestOs = this.vm.guestOs;
    model.dataOffset = m.dataOffset;
    model.dataBytes = m.dataBytes;
    model.foreign = false;
    model.place = { kind: 'mounted', vm: this.vm.id, key: m.key, path: m.path };
    const before = this.expect.get(m.key);
    if (before?.kind === 'mounted' && before.model !== model) {
      this.env.ledger.violate('MOUNT_REPLACED', `${this.vm.id} ${m.path}`, `${a.kind} answered with LUN ${m.serial} at ${m.path}, where LUN ${before.model.serial} was acknowledged and never removed`, 'lost');
    }
    this.expect.set(m.key, { kind: 'mounted', path: m.path, model });
  }

  /** A removal acknowledged: nothing is at the mount any more; the LUN went or stays on the array, unmapped. */
  private removed(result: RemoveResult, a: Attempt): void {
    const key = this.keyOf(result.mountPath);
    if (key === undefined) return;
    const before = this.expect.get(key);
    const d = result.detached;
    const registry = this.env.registry;
    if (d) {
      const model = registry.get(d.serial) ?? registry.forDisk({ ...d, volumeId: '', label: '', dataOffset: 0, dataBytes: 0 }, { kind: 'retained' }, this.vm.guestOs);
      if (model.volumeId === '') {
        model.volumeId = null;
        model.guestOs = null;
        model.label = null;
      }
      model.note(`${this.vm.id} remove #${a.id} of ${result.mountPath} detached it${result.superseded ? ` (in place of ${result.superseded})` : ''}`);
      model.place = result.lunDeleted ? { kind: 'deleted' } : { kind: 'retained' };
    }
    const expected = before?.kind === 'mounted' ? before : before?.kind === 'uncertain' && before.was?.kind === 'mounted' ? before.was : undefined;
    if (expected && (!d || d.serial !== expected.model.serial) && before?.kind === 'mounted') {
      this.env.ledger.violate(
        'REMOVED_WRONG_DISK',
        `${this.vm.id} ${result.mountPath}`,
        `removal detached ${d ? `LUN ${d.serial}` : 'nothing'} at ${result.mountPath}, where ${expected.model.describe()} was acknowledged`,
        'lost',
      );
    }
    if (!before && d && !result.superseded) {
      this.env.ledger.violate('DISK_LEFT_BEHIND', `${this.vm.id} ${result.mountPath}`, `removal found LUN ${d.serial} at ${result.mountPath}, which no acknowledged create or connect put there (attempt ${a.id})`);
    }
    this.expect.delete(key);
    this.settleLimbo(key, d?.serial);
  }

  /**
   * Nothing is pending at the mount any more: a LUN an unfinished connect held and that did
   * not end up here (its operation failed, or a removal gave it up before it attached) is
   * back in Available Storage.
   */
  private settleLimbo(key: string, detached?: string): void {
    for (const m of this.env.registry.where('limbo')) {
      if (m.place.kind === 'limbo' && m.place.vm === this.vm.id && m.place.key === key && m.place.from === 'connect' && m.serial !== detached) m.place = { kind: 'available' };
    }
  }

  /** A refusal of a request known to be invalid must be the documented one. */
  private checkRefusal(a: Attempt, err: unknown, expectKinds: string[] | undefined): void {
    if (!expectKinds) return;
    const kind = (err as { kind?: string }).kind;
    if ((kind !== undefined && expectKinds.includes(kind)) || kind === 'unavailable' || err instanceof GuestCrash || err instanceof PoweredOff) return;
    this.env.ledger.violate('WRONG_REFUSAL', `${this.vm.id} ${a.kind} ${a.what}`, `an invalid request should be refused ${expectKinds.join(' or ')}, it was ${kind ?? 'internal'}: ${(err as Error).message}`);
  }

  private invalidAccepted(a: Attempt, expectKinds: string[]): void {
    this.env.ledger.violate('INVALID_ACCEPTED', `${this.vm.id} ${a.kind} ${a.what}`, `an invalid request (should be ${expectKinds.join(' or ')}) succeeded`);
  }

  // ------------------------------------------------------------------ read, write, show

  /** A mounted volume to do I/O on: the one named, else any. */
  private target(key?: string): MountRecord | undefined {
    const mounts = this.table().mounts;
    if (key !== undefined) return mounts.find((m) => m.key === key);
    return mounts.length > 0 ? this.rng.pick(mounts) : undefined;
  }

  private modelOf(m: MountRecord): VolumeModel {
    return this.env.registry.forDisk(m, { kind: 'limbo', vm: this.vm.id, key: m.key, from: 'create' }, this.vm.guestOs);
  }

  /** A byte range in the data area's head or tail window, kept clear of ranges other writes of this group hold. */
  private pickRange(m: MountRecord, forWrite: boolean): { at: number; length: number } | undefined {
    const r = this.rng;
    const size = m.dataBytes;
    for (let tries = 0; tries < 8; tries++) {
      const tail = r.chance(0.2);
      const lo = tail ? Math.max(0, size - TAIL_WINDOW) : 0;
      const hi = tail ? size : Math.min(size, HEAD_WINDOW);
      const want = r.weighted({ tiny: 55, medium: 30, big: 15 });
      const max = want === 'tiny' ? 4096 : want === 'medium' ? 192 * 1024 : Math.floor(1.6 * MiB);
      const length = Math.min(r.int(1, max), hi - lo);
      const at = lo + r.int(0, hi - lo - length);
      if (!forWrite) return { at, length };
      const s0 = Math.floor(at / SECTOR);
      const s1 = Math.ceil((at + length) / SECTOR);
      const held = this.reserved.get(m.key) ?? [];
      if (held.some((h) => s0 < h.end && h.start < s1)) continue;
      held.push({ start: s0, end: s1 });
      this.reserved.set(m.key, held);
      return { at, length };
    }
    return undefined;
  }

  private planWrite(key?: string): Planned | undefined {
    const r = this.rng;
    const m = this.target(key);
    if (!m || r.chance(0.04)) {
      // Refused before any I/O: a range past the end of a mounted volume, or a path with nothing mounted.
      const mountedKeys = new Set(this.table().mounts.map((x) => x.key));
      const unmounted = this.paths().filter((p) => { const k = this.keyOf(p.path); return k === undefined || !mountedKeys.has(k); });
      const path = m?.path ?? r.pick(unmounted).path;
      const at = m ? m.dataBytes - r.int(0, 10) : r.int(0, 1000);
      const length = m ? 4096 : 100;
      return {
        kind: 'write',
        what: `${JSON.stringify(path)} ${at}+${length} (refused)`,
        key: this.keyOf(path),
        run: async (agent) => {
          await agent.write({ mount: path, at, length }, async (_o, n) => Buffer.alloc(n));
          this.env.ledger.violate('INVALID_ACCEPTED', `${this.vm.id} write ${path}`, `a write of ${length} bytes at ${at} ${m ? `past the end of a ${m.dataBytes}-byte data area` : 'on a path with nothing mounted'} succeeded`);
        },
      };
    }
    const range = this.pickRange(m, true);
    if (!range) return undefined;
    const w = this.env.nextWriteId();
    const { at, length } = range;
    return {
      kind: 'write',
      what: `${m.path} (LUN ${m.serial}) write #${w} ${at}+${length}`,
      key: m.key,
      run: async (agent) => {
        const model = this.modelOf(m);
        model.beginWrite(w, at, at + length);
        const rec = await agent.write({ mount: m.path, at, length }, async (o, n) => payload(w, at + o, n));
        if (rec.serial !== m.serial) {
          this.env.ledger.violate('WROTE_ELSEWHERE', `${this.vm.id} ${m.path}`, `write #${w} was meant for LUN ${m.serial} and went to ${rec.serial}`);
          return;
        }
        model.ackWrite(w, at, at + length);
        this.stats.writes++;
        this.stats.bytesWritten += length;
      },
    };
  }

  private planRead(key?: string): Planned | undefined {
    const m = this.target(key);
    if (!m) return undefined;
    const range = this.pickRange(m, false);
    if (!range) return undefined;
    const { at, length } = range;
    return {
      kind: 'read',
      what: `${m.path} (LUN ${m.serial}) ${at}+${length}`,
      key: m.key,
      run: async (agent) => {
        const model = this.modelOf(m);
        const inflight = model.beginRead(at, at + length);
        const chunks: Buffer[] = [];
        let rec: MountRecord;
        try {
          rec = await agent.read({ mount: m.path, at, length }, (c) => void chunks.push(Buffer.from(c)));
        } catch (err) {
          model.endRead(inflight, Buffer.alloc(0));
          throw err;
        }
        const data = Buffer.concat(chunks);
        const check = model.endRead(inflight, data);
        if (rec.serial !== m.serial) return;
        if (data.length !== length) {
          this.env.ledger.violate('SHORT_READ', `${this.vm.id} ${m.path}`, `read of ${length} bytes at ${at} returned ${data.length}`);
          return;
        }
        this.stats.reads++;
        this.stats.bytesRead += length;
        this.env.ledger.bytes(check, `${this.vm.id} ${m.path} (LUN ${m.serial}) read ${at}+${length}`);
      },
    };
  }

  private planShow(key?: string): Planned | undefined {
    const m = this.target(key);
    if (!m) return undefined;
    return {
      kind: 'show',
      what: m.path,
      key: m.key,
      run: async (agent) => {
        const before = this.expect.get(m.key);
        const report = await agent.show(m.path);
        const now = this.expect.get(m.key);
        // Only when nothing else of this group works on the mount and the worker knows what must be there.
        if (this.running > 1 || before?.kind !== 'mounted' || now !== before || report.serial !== before.model.serial) return;
        if (report.content !== 'passthru' || report.volume?.volumeId !== before.model.volumeId) {
          this.env.ledger.violate(
            'VOLUME_WRONG',
            `${this.vm.id} ${m.path}`,
            `disk show found ${report.content === 'passthru' ? `volume ${report.volume?.volumeId}` : `a ${report.content} disk (${report.reason})`} on LUN ${report.serial}, where volume ${before.model.volumeId} was acknowledged`,
            'lost',
          );
        }
      },
    };
  }

  /** The mount path as the guest normalizes it. */
  drivePath(path: string): DrivePath {
    return parseDrivePath(this.vm.guestOs, path);
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export type { OperationView };
