/**
 * The guest volume manager: what `guest-agent disk ...` does, as a library. It asks the host
 * agent for a disk (HostLink), follows the operation, finds the disk on the VM's SCSI bus,
 * initializes it or recognizes the volume on it, mounts it (GuestOsDriver), and keeps the
 * mount table in the state dir (StateDir); and the same road back for removal.
 *
 * Crash safety: every request is recorded in the state dir before it is sent and each step
 * it reaches after (see state.ts), so the same command run again after a crash finishes the
 * recorded request, under its first request id, instead of asking twice. A host that goes
 * away mid-way (its connection dropped, the agent restarting) is retried with back-off for
 * a bounded time, and a watch is resumed where it stopped. A host that cannot be reached at
 * the first call of a run is reported at once.
 */
import { randomUUID } from 'node:crypto';
import { parseDrivePath, type DrivePath } from '../common/drive-path.js';
import {
  AlreadyExistsError,
  DomainError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../common/errors.js';
import { formatSize } from '../common/size.js';
import { parseOnDisk, readRange, writeRange } from './disk-io.js';
import { DEFAULT_DISCOVERY, discover, realClock, scsi, type Backoff, type Clock, type DiscoveryPolicy } from './discovery.js';
import type { BlockDevice, BusDevice, GuestOsDriver, PassthruVolume, VolumeSpec } from './guest-os.js';
import {
  HOST_UNREACHABLE,
  type AttachedDisk,
  type HostDisk,
  type HostLink,
  type OperationView,
  type ScsiAddress,
  type Sharing,
  type StepEventKind,
  type StepView,
  type VmInfo,
} from './host-link.js';
import { describeGpt, MAX_LABEL_BYTES, MIN_DISK_BYTES, parseDiskLayout, validateLabel, type GptDetails, type GuestOs } from './layout.js';
import { checkMountPoint, mountsInside } from './mount-points.js';
import type { AttachRequest, MountRecord, MountTable, PendingRequest, RemoveRequest, StateDir, StoredVolumeSpec } from './state.js';

export const MAX_DISK_BYTES = 16 * 1024 ** 4;

/** Where a test may have the process killed: after the request is recorded, sent, attached, the volume written, mounted, unmounted. */
export const CRASH_POINTS = ['requested', 'sent', 'attached', 'initialized', 'mounted', 'unmounted', 'table-write'] as const;
export type CrashPoint = (typeof CRASH_POINTS)[number];

export type GuestStep = 'discover' | 'initialize' | 'mount' | 'report' | 'unmount';

/** What a run is doing, for a progress display. */
export type Progress =
  | { kind: 'note'; message: string }
  | { kind: 'operation'; operationId: string; resumed: boolean }
  | { kind: 'host-step'; step: string; event: StepEventKind; message: string; timeMs: number }
  | { kind: 'guest-step'; step: GuestStep; done: boolean; detail: string }
  | { kind: 'retry'; what: string; delayMs: number; error: string };

export interface GuestAgentOptions {
  discovery?: DiscoveryPolicy;
  /** How long a host that went away mid-way is retried (reconnecting, resuming a watch) before giving up. */
  reconnectTimeoutMs?: number;
  backoff?: Backoff;
  clock?: Clock;
  progress?: (p: Progress) => void;
  /** Tests only: called at each crash point as it is passed. */
  crash?: (point: CrashPoint) => void;
}

export interface CreateRequest {
  mount: string;
  sizeBytes: number;
  sharing?: Sharing;
  /** The volume label; by default one made from the mount path. */
  label?: string;
  /** Initialize the disk even if something other than a blank disk or a passthru volume is on it. */
  force?: boolean;
}

export interface ConnectRequest {
  mount: string;
  /** The LUN's serial or NAA id, as Available Storage lists it. */
  lun: string;
  /** The label if the disk is blank and so gets a new volume; a volume already there keeps its own. */
  label?: string;
  force?: boolean;
}

export interface MountResult {
  mount: MountRecord;
  requestId: string;
  operationId: string;
  /** The volume was mounted there already: nothing was asked of the host. */
  alreadyMounted: boolean;
  /** This run finished a request an earlier run had recorded. */
  resumed: boolean;
}

export interface RemoveResult {
  mountPath: string;
  requestId: string;
  operationId: string;
  /** Whether a volume was mounted there in this guest (and so was unmounted). */
  unmounted: boolean;
  /** The disk the host detached; null when nothing was attached there. */
  detached: AttachedDisk | null;
  lunDeleted: boolean;
  resumed: boolean;
  /** An unfinished create or connect of the same mount this removal took the place of. */
  superseded: string | null;
}

export interface ListedDisk {
  mountPath: string;
  serial: string;
  naaId: string;
  sizeBytes: number;
  address: ScsiAddress | null;
  lunId: number | null;
  label: string;
  volumeId: string;
  /** mounted, mounted (resource offline), not mounted, missing, or the request under way. */
  state: string;
  /** Where the mount table and the host disagree, each in words with what to do. */
  problems: string[];
  guest: MountRecord | null;
  host: HostDisk | null;
  pending: PendingRequest | null;
}

export interface DiskReport {
  mountPath: string;
  serial: string;
  naaId: string;
  address: ScsiAddress;
  sizeBytes: number;
  mounted: boolean;
  content: 'blank' | 'passthru' | 'foreign';
  /** Why the content is foreign. */
  reason: string | null;
  gpt: GptDetails | null;
  volume: { label: string; volumeId: string; guestOs: GuestOs; createdAt: string; dataOffset: number; dataBytes: number } | null;
}

export interface BusEntry extends BusDevice {
  /** Where this guest has it mounted, if it does. */
  mountPath: string | null;
}

/** Retried while a host that answered before comes back. */
const TRANSIENT = new Set([HOST_UNREACHABLE, 'RECOVERING', 'VM_FAILING_OVER', 'VM_MOVING']);
/** Block I/O also waits out a disk resource that is coming online again (a failover or move). */
const TRANSIENT_IO = new Set([...TRANSIENT, 'RESOURCE_NOT_ONLINE']);

/** Errors whose message already says how to go on. */
const SAYS_WHAT_TO_DO = new Set(['DISK_NOT_EMPTY', 'VOLUME_OF_OTHER_OS', 'REQUEST_PENDING']);

const reasonOf = (err: unknown): string | undefined => (err instanceof DomainError ? err.reason : undefined);
const isUnreachable = (err: unknown): boolean => err instanceof UnavailableError && err.reason === HOST_UNREACHABLE;

const final = (op: OperationView): boolean => op.state === 'succeeded' || op.state === 'failed';

const STATE_AS_EVENT: Partial<Record<StepView['state'], StepEventKind>> = {
  running: 'started',
  done: 'finished',
  skipped: 'skipped',
  failed: 'failed',
  undoing: 'undo_started',
  undone: 'undone',
};

/** A label made from the mount: the folder's name (C:\mt1 -> mt1, /srv/data -> data), "Volume E" for a drive letter. */
export function defaultLabel(mount: DrivePath): string {
  const base = mount.kind === 'drive-letter' ? `Volume ${mount.path[0]}` : mount.path.split(/[\\/]/).filter((s) => s !== '').pop()!;
  let label = '';
  for (const ch of base.replace(/\p{C}/gu, '')) {
    if (Buffer.byteLength(label + ch, 'utf8') > MAX_LABEL_BYTES) break;
    label += ch;
  }
  return label.trim() || 'passthru';
}

/** A size as a command-line argument: 10GiB when a unit divides it, else bytes. */
function sizeArg(bytes: number): string {
  for (const [unit, n] of [['TiB', 1024 ** 4], ['GiB', 1024 ** 3], ['MiB', 1024 ** 2], ['KiB', 1024]] as const) {
    if (bytes % n === 0) return `${bytes / n}${unit}`;
  }
  return String(bytes);
}

const shellWord = (s: string): string => (/^[A-Za-z0-9:/_.,-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/** The command that finishes a pending request (run again, same parameters). */
export function commandFor(p: PendingRequest): string {
  const mount = `--mount ${shellWord(p.mountPath)}`;
  if (p.kind === 'remove') return `guest-agent disk remove ${mount}${p.deleteLun ? ' --delete-lun' : ''}`;
  if (p.kind === 'connect') return `guest-agent disk connect ${mount} --lun ${shellWord(p.lun ?? '')}`;
  return `guest-agent disk create ${mount} --size ${sizeArg(p.sizeBytes ?? 0)}${p.sharing === 'dedicated' ? ' --dedicated' : ''}`;
}

const PHASE_WORDS: Record<PendingRequest['phase'], string> = {
  requested: 'recorded, not confirmed by the host',
  running: 'the host is working on it',
  attached: 'attached, not mounted yet',
  mounted: 'mounted, the host not told yet',
  unmounted: 'unmounted, the host not asked to detach yet',
};

/** An unfinished create or connect a removal takes the place of, in words. */
const supersededWords = (p: AttachRequest): string => `the unfinished \`disk ${p.kind}\` of ${p.mountPath} (request ${p.requestId}: ${PHASE_WORDS[p.phase]})`;

function pendingConflict(p: PendingRequest): FailedPreconditionError {
  const giveUp = p.kind === 'remove' ? '' : `, or \`guest-agent disk remove --mount ${shellWord(p.mountPath)}\` to give it up`;
  return new FailedPreconditionError(
    `an earlier \`disk ${p.kind}\` of ${p.mountPath} has not finished (request ${p.requestId}${p.operationId ? `, operation ${p.operationId}` : ''}: ${PHASE_WORDS[p.phase]}): run \`${commandFor(p)}\` to finish it${giveUp}`,
    'REQUEST_PENDING',
  );
}

const sameLun = (a: string | undefined, b: string): boolean => a !== undefined && a.toLowerCase().replace(/^naa\./, '') === b.toLowerCase().replace(/^naa\./, '');

function putPending(t: MountTable, p: PendingRequest): void {
  t.pending = [...t.pending.filter((x) => x.requestId !== p.requestId), p];
}

function dropPending(t: MountTable, requestId: string): void {
  t.pending = t.pending.filter((x) => x.requestId !== requestId);
}

function putMount(t: MountTable, m: MountRecord): void {
  t.mounts = [...t.mounts.filter((x) => x.key !== m.key), m].sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
}

const toStored = (s: VolumeSpec): StoredVolumeSpec => ({ ...s, createdAt: s.createdAt.toISOString() });
const fromStored = (s: StoredVolumeSpec): VolumeSpec => ({ ...s, createdAt: new Date(s.createdAt) });

type AttachWhat = { kind: 'create'; sizeBytes: number; sharing: Sharing } | { kind: 'connect'; lun: string };

export class GuestAgent {
  private readonly discovery: DiscoveryPolicy;
  private readonly reconnectTimeoutMs: number;
  private readonly backoff: Backoff;
  private readonly clock: Clock;
  private selfInfo?: Promise<VmInfo>;
  /** Whether the host has answered in this run: only then is an unreachable host worth waiting for. */
  private contacted = false;

  constructor(
    private readonly host: HostLink,
    private readonly os: GuestOsDriver,
    private readonly state: StateDir,
    private readonly opts: GuestAgentOptions = {},
  ) {
    this.discovery = opts.discovery ?? DEFAULT_DISCOVERY;
    this.reconnectTimeoutMs = opts.reconnectTimeoutMs ?? 30_000;
    this.backoff = opts.backoff ?? { firstDelayMs: 50, maxDelayMs: 1_000 };
    this.clock = opts.clock ?? realClock;
  }

  // ---------------------------------------------------------------- plumbing

  private emit(p: Progress): void {
    this.opts.progress?.(p);
  }

  private step(step: GuestStep, done: boolean, detail: string): void {
    this.emit({ kind: 'guest-step', step, done, detail });
  }

  private crash(point: CrashPoint): void {
    this.opts.crash?.(point);
  }

  private transient(err: unknown, reasons: Set<string>): boolean {
    const reason = reasonOf(err);
    if (reason === HOST_UNREACHABLE) return this.contacted;
    return reason !== undefined && reasons.has(reason) && (err instanceof UnavailableError || err instanceof FailedPreconditionError);
  }

  /** Calls the host, retrying what is transient with back-off for up to the reconnect timeout. */
  private async retrying<T>(what: string, call: () => Promise<T>, reasons: Set<string> = TRANSIENT): Promise<T> {
    const start = this.clock.now();
    let delay = this.backoff.firstDelayMs;
    for (;;) {
      try {
        const result = await call();
        this.contacted = true;
        return result;
      } catch (err) {
        if (!this.transient(err, reasons)) throw err;
        const left = start + this.reconnectTimeoutMs - this.clock.now();
        if (left <= 0) throw err;
        if (isUnreachable(err)) this.host.reconnect();
        else this.contacted = true;
        const wait = Math.min(delay, left);
        this.emit({ kind: 'retry', what, delayMs: wait, error: (err as Error).message });
        await this.clock.sleep(wait);
        delay = Math.min(delay * 2, this.backoff.maxDelayMs);
      }
    }
  }

  /** Who this VM is; the guest OS, and so what a drive path is, comes from the host, never from a guess. */
  self(): Promise<VmInfo> {
    this.selfInfo ??= this.retrying('GetSelf', () => this.host.self());
    return this.selfInfo;
  }

  /** Throws if the state dir belongs to another VM. */
  private checkOwner(t: MountTable, self: VmInfo): void {
    if (t.vm && (t.vm.id !== self.id || t.vm.guestOs !== self.guestOs)) {
      throw new FailedPreconditionError(
        `the state dir ${this.state.dir} belongs to VM ${t.vm.id} (${t.vm.guestOs}), but the endpoint answers as VM ${self.id} (${self.guestOs}): give each VM its own state dir`,
        'STATE_DIR_OF_ANOTHER_VM',
      );
    }
  }

  /** A read-modify-write of the table, bound to this VM. */
  private change<T>(self: VmInfo, fn: (t: MountTable) => T): Promise<T> {
    return this.state.update((t) => {
      this.checkOwner(t, self);
      t.vm ??= { id: self.id, name: self.name, guestOs: self.guestOs };
      return fn(t);
    });
  }

  private table(self: VmInfo): MountTable {
    const t = this.state.read();
    this.checkOwner(t, self);
    return t;
  }

  /** The disk with block I/O that waits out a failover or a host restart. */
  private reliable(disk: BlockDevice): BlockDevice {
    return {
      device: disk.device,
      read: (o, l) => this.retrying('ReadDisk', () => disk.read(o, l), TRANSIENT_IO),
      write: (o, d, id) => this.retrying('WriteDisk', () => disk.write(o, d, id), TRANSIENT_IO),
    };
  }

  /** Follows an operation to its final state, resuming the watch when the connection drops. */
  private async follow(operationId: string): Promise<OperationView> {
    const seen = new Set<string>();
    const tell = (step: string, event: StepEventKind, message: string, timeMs: number): void => {
      const key = `${step}:${event}`;
      if (seen.has(key)) return;
      seen.add(key);
      this.emit({ kind: 'host-step', step, event, message, timeMs });
    };
    let failingSince: number | undefined;
    let delay = this.backoff.firstDelayMs;
    for (;;) {
      let lastError: unknown;
      try {
        let first = true;
        for await (const u of this.host.watchOperation(operationId)) {
          this.contacted = true;
          failingSince = undefined;
          delay = this.backoff.firstDelayMs;
          if (first) {
            // Each watch starts with the operation as it stands: the steps done while no one watched.
            for (const s of u.operation.steps) {
              const event = STATE_AS_EVENT[s.state];
              if (event) tell(s.name, event, s.message, s.timeMs ?? this.clock.now());
            }
            first = false;
          }
          for (const e of u.events) tell(e.step, e.kind, e.message, e.timeMs);
          if (final(u.operation)) return u.operation;
        }
        lastError = new UnavailableError(`the watch of operation ${operationId} ended before the operation did`, HOST_UNREACHABLE);
      } catch (err) {
        if (!this.transient(err, TRANSIENT)) throw err;
        lastError = err;
      }
      failingSince ??= this.clock.now();
      const left = failingSince + this.reconnectTimeoutMs - this.clock.now();
      if (left <= 0) throw lastError;
      if (isUnreachable(lastError)) this.host.reconnect();
      const wait = Math.min(delay, left);
      this.emit({ kind: 'retry', what: 'WatchOperation', delayMs: wait, error: (lastError as Error).message });
      await this.clock.sleep(wait);
      delay = Math.min(delay * 2, this.backoff.maxDelayMs);
    }
  }

  /** Follows a recorded operation; one the host no longer knows drops the request. */
  private async settle(self: VmInfo, p: PendingRequest): Promise<OperationView> {
    try {
      return await this.follow(p.operationId!);
    } catch (err) {
      if (!(err instanceof NotFoundError)) throw err;
      await this.change(self, (t) => dropPending(t, p.requestId));
      throw new NotFoundError(
        'operation',
        p.operationId!,
        `the host no longer knows operation ${p.operationId} of the \`disk ${p.kind}\` of ${p.mountPath} an earlier run recorded (${err.message}); the record is dropped: run the command again`,
      );
    }
  }

  /**
   * For an error that leaves a request recorded: how to pick it up. Errors that say so
   * themselves are left alone.
   */
  private withResumeHint(err: unknown, p: PendingRequest): unknown {
    if (!(err instanceof DomainError) || SAYS_WHAT_TO_DO.has(err.reason)) return err;
    if (!this.state.read().pending.some((x) => x.requestId === p.requestId)) return err;
    err.message += `; the request is recorded in ${this.state.dir}: run \`${commandFor(p)}\` again to finish it${p.kind === 'remove' ? '' : `, or \`guest-agent disk remove --mount ${shellWord(p.mountPath)}\` to give it up`}`;
    return err;
  }

  // ---------------------------------------------------------------- create and connect

  async create(req: CreateRequest): Promise<MountResult> {
    const self = await this.self();
    const mount = parseDrivePath(self.guestOs, req.mount);
    const size = req.sizeBytes;
    if (!Number.isSafeInteger(size) || size % 512 !== 0 || size < MIN_DISK_BYTES || size > MAX_DISK_BYTES) {
      throw new InvalidArgumentError('size', `size ${Number.isSafeInteger(size) ? formatSize(size) : String(size)} is invalid: a multiple of 512 bytes from 4 MiB to 16 TiB`, 'SIZE_INVALID');
    }
    const sharing = req.sharing ?? 'shared';
    if (sharing === 'dedicated' && self.ha) {
      throw new FailedPreconditionError(
        `VM ${self.id} (${self.name}) is highly available: its disks must be shared so they can follow it to another node; leave out --dedicated`,
        'DEDICATED_ON_HA_VM',
      );
    }
    if (req.label !== undefined) validateLabel(req.label);
    return this.attach(self, mount, { kind: 'create', sizeBytes: size, sharing }, req);
  }

  async connect(req: ConnectRequest): Promise<MountResult> {
    const self = await this.self();
    const mount = parseDrivePath(self.guestOs, req.mount);
    const lun = req.lun.trim();
    if (lun === '' || lun.length > 256 || !/^[\x21-\x7e]+$/.test(lun)) {
      throw new InvalidArgumentError('lun', `--lun ${JSON.stringify(req.lun)} is not a LUN serial or NAA id: give the serial (e.g. PTSMab12cd34) or NAA id as Available Storage lists it`, 'LUN_INVALID');
    }
    if (req.label !== undefined) validateLabel(req.label);
    return this.attach(self, mount, { kind: 'connect', lun }, req);
  }

  private async attach(self: VmInfo, mount: DrivePath, what: AttachWhat, run: { label?: string; force?: boolean }): Promise<MountResult> {
    const release = await this.state.lockMount(mount);
    try {
      const start = await this.change(self, (t): { existing: MountRecord } | { pending: AttachRequest; resumed: boolean } => {
        const pending = t.pending.find((p) => p.key === mount.key);
        if (pending) {
          const same =
            pending.kind === what.kind &&
            (what.kind === 'create' ? pending.sizeBytes === what.sizeBytes && pending.sharing === what.sharing : sameLun(pending.lun, what.lun));
          if (same) return { pending: pending as AttachRequest, resumed: true };
          throw pendingConflict(pending);
        }
        const existing = t.mounts.find((m) => m.key === mount.key);
        if (existing) {
          const same =
            existing.origin === what.kind &&
            (what.kind === 'create'
              ? existing.sizeBytes === what.sizeBytes && existing.sharing === what.sharing
              : sameLun(existing.lun, what.lun) || existing.serial === what.lun || sameLun(existing.naaId, what.lun));
          if (same) return { existing };
          throw new AlreadyExistsError(
            'mount',
            mount.path,
            `${existing.path} is already mounted (LUN ${existing.serial}, ${formatSize(existing.sizeBytes)}, volume "${existing.label}", from \`disk ${existing.origin}\`): remove it first (\`guest-agent disk remove --mount ${shellWord(existing.path)}\`) or choose another mount path`,
          );
        }
        checkMountPoint(self.guestOs, mount, t);
        const p: AttachRequest = {
          ...what,
          requestId: randomUUID(),
          mountPath: mount.path,
          key: mount.key,
          createdAt: new Date(this.clock.now()).toISOString(),
          phase: 'requested',
          ...(run.label !== undefined ? { label: run.label } : {}),
        };
        t.pending.push(p);
        return { pending: p, resumed: false };
      });
      if ('existing' in start) {
        // Asked again for what is there: nothing for the host to do but hear of the mount again, in case it never did.
        await this.report(start.existing);
        return { mount: start.existing, requestId: start.existing.requestId, operationId: start.existing.operationId, alreadyMounted: true, resumed: false };
      }
      let p = start.pending;
      if (start.resumed) this.emit({ kind: 'note', message: `finishing the \`disk ${p.kind}\` of ${p.mountPath} an earlier run recorded (request ${p.requestId}: ${PHASE_WORDS[p.phase]})` });
      else this.crash('requested');
      try {
        if (p.phase === 'requested') p = await this.sendAttach(self, p);
        if (p.phase === 'running') p = await this.settleAttach(self, p);
        let record: MountRecord | undefined;
        if (p.phase === 'attached') ({ p, record } = await this.mountAttached(self, mount, p, run));
        record ??= this.state.read().mounts.find((m) => m.key === mount.key);
        if (!record) throw new Error(`the request of ${mount.path} is mounted but the mount table has no entry for it`);
        await this.report(record);
        await this.change(self, (t) => dropPending(t, p.requestId));
        return { mount: record, requestId: p.requestId, operationId: p.operationId!, alreadyMounted: false, resumed: start.resumed };
      } catch (err) {
        throw this.withResumeHint(err, p);
      }
    } finally {
      release();
    }
  }

  private async sendAttach(self: VmInfo, p: AttachRequest): Promise<AttachRequest> {
    let op: OperationView;
    try {
      op = await this.retrying(p.kind === 'create' ? 'CreateDisk' : 'ConnectDisk', () =>
        p.kind === 'create'
          ? this.host.createDisk({ requestId: p.requestId, mountPath: p.mountPath, sizeBytes: p.sizeBytes!, sharing: p.sharing! })
          : this.host.connectDisk({ requestId: p.requestId, mountPath: p.mountPath, lun: p.lun! }),
      );
    } catch (err) {
      // The host answered: what step 0 checks fails the call itself and starts nothing. Unreachable: it may have started, so the record stays.
      if (!isUnreachable(err)) await this.change(self, (t) => dropPending(t, p.requestId));
      throw err;
    }
    const next: AttachRequest = { ...p, phase: 'running', operationId: op.id };
    await this.change(self, (t) => putPending(t, next));
    this.emit({ kind: 'operation', operationId: op.id, resumed: false });
    this.crash('sent');
    return next;
  }

  private async settleAttach(self: VmInfo, p: AttachRequest): Promise<AttachRequest> {
    const op = await this.settle(self, p);
    if (op.state === 'failed') {
      await this.change(self, (t) => dropPending(t, p.requestId));
      throw op.error ?? new Error(`operation ${op.id} failed without saying why`);
    }
    if (!op.result) throw new Error(`operation ${op.id} succeeded without saying which disk it attached`);
    const next: AttachRequest = { ...p, phase: 'attached', result: op.result };
    await this.change(self, (t) => putPending(t, next));
    this.crash('attached');
    return next;
  }

  /** Discovers the attached disk, initializes it or keeps its volume, mounts it, records the mount. */
  private async mountAttached(
    self: VmInfo,
    mount: DrivePath,
    p: AttachRequest,
    run: { label?: string; force?: boolean },
  ): Promise<{ p: AttachRequest; record: MountRecord }> {
    const want = p.result!;
    this.step('discover', false, `rescanning the SCSI bus for serial ${want.serial} at SCSI ${scsi(want.address)}`);
    const { device, rescans } = await discover(this.os, want, this.discovery, this.clock, (err) => this.transient(err, TRANSIENT));
    this.step('discover', true, `found serial ${device.serial} (NAA ${device.naaId}, ${formatSize(device.sizeBytes)}) at SCSI ${scsi(device.address)} after ${rescans} rescan${rescans === 1 ? '' : 's'}`);
    const disk = this.reliable(this.os.open(device));
    const found = await this.os.probe(disk);
    let spec = p.volume ? fromStored(p.volume) : undefined;
    let volume: PassthruVolume | undefined;
    if (found.kind === 'passthru' && spec && found.volumeId === spec.volumeId) {
      volume = found; // written by an earlier run of this request
    } else if (found.kind === 'passthru' && !spec && (found.guestOs === self.guestOs || !run.force)) {
      if (found.guestOs !== self.guestOs) {
        throw new FailedPreconditionError(
          `the disk at SCSI ${scsi(device.address)} (serial ${device.serial}) holds passthru volume "${found.label}" of a ${found.guestOs} guest; this VM runs ${self.guestOs} and cannot read it. Nothing was written. Run the same command with --force to initialize it anyway (its contents are lost), or \`guest-agent disk remove --mount ${shellWord(mount.path)}\` to give it back`,
          'VOLUME_OF_OTHER_OS',
        );
      }
      volume = found;
      this.step('initialize', true, `kept the volume on the disk: "${found.label}" (id ${found.volumeId}, created ${found.createdAt.toISOString()}), its data untouched`);
    }
    if (!volume) {
      if (!spec) {
        if (found.kind !== 'blank' && !run.force) {
          const what = found.kind === 'foreign' ? found.reason : `passthru volume "${found.label}" of a ${found.guestOs} guest`;
          throw new FailedPreconditionError(
            `the disk at SCSI ${scsi(device.address)} (serial ${device.serial}) is not blank and holds no passthru volume: ${what}. Nothing was written. Run the same command with --force to initialize it anyway (its contents are lost), or \`guest-agent disk remove --mount ${shellWord(mount.path)}\` to give it back`,
            'DISK_NOT_EMPTY',
          );
        }
        spec = {
          guestOs: self.guestOs,
          label: run.label ?? p.label ?? defaultLabel(mount),
          volumeId: randomUUID().replace(/-/g, ''),
          createdAt: new Date(this.clock.now()),
          diskGuid: randomUUID(),
          partitionGuid: randomUUID(),
        };
        // Chosen and recorded before the first write, so a run after a crash writes the very same bytes.
        p = { ...p, volume: toStored(spec) };
        const recorded = p;
        await this.change(self, (t) => putPending(t, recorded));
      }
      this.step('initialize', false, `writing a GPT (protective MBR, primary and backup) and volume "${spec.label}" on ${formatSize(device.sizeBytes)}`);
      await this.os.writeVolume(disk, spec, `${p.requestId}:init`);
      this.crash('initialized');
      const back = await this.os.probe(disk);
      if (back.kind !== 'passthru' || back.volumeId !== spec.volumeId || back.label !== spec.label || back.guestOs !== spec.guestOs) {
        throw new Error(
          `the disk at SCSI ${scsi(device.address)} does not read back as the volume just written (${back.kind === 'foreign' ? back.reason : back.kind === 'blank' ? 'it reads blank' : `volume ${back.volumeId}`}): it was not mounted`,
        );
      }
      volume = back;
      this.step('initialize', true, `volume "${back.label}" (id ${back.volumeId}) written and read back: partition LBA ${back.partition.firstLba}-${back.partition.lastLba}, data area ${formatSize(back.dataBytes)}`);
    }
    this.step('mount', false, `mounting "${volume.label}" at ${mount.path}`);
    await this.os.mount(disk, volume, mount);
    const record: MountRecord = {
      path: mount.path,
      key: mount.key,
      origin: p.kind,
      serial: device.serial,
      naaId: device.naaId,
      sizeBytes: device.sizeBytes,
      address: device.address,
      lunId: want.lunId,
      lunPath: want.lunPath,
      ...(p.kind === 'create' ? { sharing: p.sharing! } : { lun: p.lun! }),
      volumeId: volume.volumeId,
      label: volume.label,
      dataOffset: volume.dataOffset,
      dataBytes: volume.dataBytes,
      initialized: spec !== undefined,
      operationId: p.operationId!,
      requestId: p.requestId,
      mountedAt: new Date(this.clock.now()).toISOString(),
    };
    const next: AttachRequest = { ...p, phase: 'mounted' };
    await this.change(self, (t) => {
      putMount(t, record);
      putPending(t, next);
    });
    this.step('mount', true, `${mount.path} mounted`);
    this.crash('mounted');
    return { p: next, record };
  }

  private async report(m: MountRecord): Promise<void> {
    this.step('report', false, `telling the host ${m.path} is mounted`);
    await this.retrying('ReportMount', () =>
      this.host.reportMount({ requestId: `${m.requestId}:mount`, mountPath: m.path, serial: m.serial, volumeId: m.volumeId, volumeLabel: m.label }),
    );
    this.step('report', true, `the host records ${m.path} as mounted`);
  }

  // ---------------------------------------------------------------- remove

  async remove(req: { mount: string; deleteLun: boolean }): Promise<RemoveResult> {
    const self = await this.self();
    const mount = parseDrivePath(self.guestOs, req.mount);
    const release = await this.state.lockMount(mount);
    try {
      let superseded: string | null = null;
      /** The unfinished create or connect this removal takes the place of, its operation followed to its end. */
      let settled: AttachRequest | undefined;
      for (;;) {
        const start = await this.change(self, (t): { unfinished: AttachRequest } | { pending: RemoveRequest; resumed: boolean } => {
          const pending = t.pending.find((p) => p.key === mount.key);
          if (pending?.kind === 'remove') {
            if (pending.deleteLun === req.deleteLun) return { pending, resumed: true };
            throw pendingConflict(pending);
          }
          // Checked before anything is given up, so a refused removal changes nothing.
          const inside = mountsInside(self.guestOs, mount, t);
          if (inside.length > 0) {
            throw new FailedPreconditionError(
              `${inside.join(', ')} ${inside.length === 1 ? 'is' : 'are'} mounted (or being mounted) inside the volume at ${mount.path}: remove ${inside.length === 1 ? 'it' : 'them'} first`,
              'MOUNTS_INSIDE_VOLUME',
            );
          }
          if (pending && pending.requestId !== settled?.requestId) return { unfinished: pending };
          const p: RemoveRequest = {
            kind: 'remove',
            requestId: randomUUID(),
            mountPath: mount.path,
            key: mount.key,
            createdAt: new Date(this.clock.now()).toISOString(),
            phase: 'requested',
            deleteLun: req.deleteLun,
            ...(pending ? { supersedes: pending } : {}),
          };
          // In one write: the unfinished request goes as the removal taking its place is recorded,
          // which keeps it (to put it back if the host refuses), so a crash never loses both.
          if (pending) dropPending(t, pending.requestId);
          t.pending.push(p);
          return { pending: p, resumed: false };
        });
        if ('unfinished' in start) {
          superseded = await this.giveUp(self, start.unfinished);
          settled = start.unfinished;
          continue;
        }
        let p = start.pending;
        if (start.resumed) {
          this.emit({ kind: 'note', message: `finishing the \`disk remove\` of ${p.mountPath} an earlier run recorded (request ${p.requestId}: ${PHASE_WORDS[p.phase]})` });
          if (p.supersedes) superseded = supersededWords(p.supersedes);
        } else this.crash('requested');
        try {
          return await this.finishRemove(self, mount, p, start.resumed, superseded);
        } catch (err) {
          p = (this.state.read().pending.find((x) => x.requestId === p.requestId) as RemoveRequest | undefined) ?? p;
          throw this.withResumeHint(err, p);
        }
      }
    } finally {
      release();
    }
  }

  /**
   * A create or connect left unfinished is given up for the removal: its operation followed to
   * its end. Its record goes when the removal is recorded in its place (and comes back if the
   * host refuses the removal).
   */
  private async giveUp(self: VmInfo, p: AttachRequest): Promise<string> {
    const what = supersededWords(p);
    this.emit({ kind: 'note', message: `removing in place of ${what}` });
    // Not yet sent (or not confirmed): the removal itself settles whatever the host has.
    if (p.phase === 'running') await this.settle(self, p);
    return what;
  }

  private async finishRemove(self: VmInfo, mount: DrivePath, p: RemoveRequest, resumed: boolean, superseded: string | null): Promise<RemoveResult> {
    if (p.phase === 'requested') {
      const entry = this.state.read().mounts.find((m) => m.key === mount.key);
      if (entry) {
        this.step('unmount', false, `unmounting "${entry.label}" from ${mount.path}`);
        await this.os.unmount(mount);
      }
      const next: RemoveRequest = { ...p, phase: 'unmounted', ...(entry ? { unmounted: entry } : {}) };
      await this.change(self, (t) => {
        t.mounts = t.mounts.filter((m) => m.key !== mount.key);
        putPending(t, next);
      });
      if (entry) this.step('unmount', true, `${mount.path} unmounted`);
      p = next;
      this.crash('unmounted');
    }
    if (p.phase === 'unmounted') {
      const current = p;
      let op: OperationView;
      try {
        try {
          await this.retrying('ReportUnmount', () => this.host.reportUnmount({ requestId: `${current.requestId}:unmount`, mountPath: current.mountPath }));
        } catch (err) {
          // Nothing attached there: the removal below says so.
          if (!(err instanceof NotFoundError)) throw err;
        }
        op = await this.retrying('RemoveDisk', () => this.host.removeDisk({ requestId: current.requestId, mountPath: current.mountPath, deleteLun: current.deleteLun }));
      } catch (err) {
        if (!isUnreachable(err)) await this.mountAgain(self, mount, current, err);
        throw err;
      }
      p = { ...p, phase: 'running', operationId: op.id };
      const running = p;
      await this.change(self, (t) => putPending(t, running));
      this.emit({ kind: 'operation', operationId: op.id, resumed: false });
      this.crash('sent');
    }
    const op = await this.settle(self, p);
    if (op.state === 'failed') {
      const err = op.error ?? new Error(`operation ${op.id} failed without saying why`);
      await this.mountAgain(self, mount, p, err);
      throw err;
    }
    await this.change(self, (t) => dropPending(t, p.requestId));
    return {
      mountPath: mount.path,
      requestId: p.requestId,
      operationId: op.id,
      unmounted: p.unmounted !== undefined,
      detached: op.result ?? null,
      lunDeleted: p.deleteLun && op.result !== undefined,
      resumed,
      superseded,
    };
  }

  /**
   * The host refused the removal, so the disk is still attached: mount the volume again and
   * drop the request, so nothing changed. Says in `err` what became of the mount.
   */
  private async mountAgain(self: VmInfo, mount: DrivePath, p: RemoveRequest, err: unknown): Promise<void> {
    const entry = p.unmounted;
    let note: string | undefined;
    let remounted = true;
    if (entry) {
      try {
        const quick = { ...this.discovery, timeoutMs: Math.min(this.discovery.timeoutMs, 5_000) };
        const { device } = await discover(this.os, entry, quick, this.clock, (e) => this.transient(e, TRANSIENT));
        const disk = this.reliable(this.os.open(device));
        const found = await this.os.probe(disk);
        if (found.kind !== 'passthru' || found.volumeId !== entry.volumeId) throw new Error(`the volume on it is not ${entry.volumeId} any more`);
        await this.os.mount(disk, found, mount);
        await this.change(self, (t) => putMount(t, entry));
        await this.report(entry).catch(() => undefined);
        note = `${mount.path} is mounted again`;
      } catch (again) {
        remounted = false;
        note = `${mount.path} could not be mounted again (${(again as Error).message})`;
      }
    }
    // Not mounted again, its disk still attached: the removal stays recorded (under a new
    // request id, the refused one being settled), so the disk is not forgotten and the same
    // command finishes it. (Found by the chaos run: the mount and the request were both
    // dropped, leaving the guest no record of a disk the host still had attached.)
    const kept: RemoveRequest | undefined = remounted ? undefined : { ...p, requestId: randomUUID(), phase: 'unmounted', createdAt: new Date(this.clock.now()).toISOString() };
    if (kept) delete kept.operationId;
    await this.change(self, (t) => {
      dropPending(t, p.requestId);
      if (kept) putPending(t, kept);
      // The unfinished request this removal took the place of is recorded again: the refused
      // removal changed nothing. (Found by the chaos run: it was dropped for good, and the disk
      // its operation had attached was left with no record in the guest.)
      else if (p.supersedes) putPending(t, p.supersedes);
    });
    if (kept) note = `${note}; the removal is still recorded: run \`${commandFor(kept)}\` again to finish it`;
    else if (p.supersedes) note = `${note ? `${note}; ` : ''}the unfinished \`disk ${p.supersedes.kind}\` of ${p.supersedes.mountPath} is recorded again`;
    if (note && err instanceof Error) err.message += ` (${note})`;
  }

  // ---------------------------------------------------------------- list, show, rescan

  /** The mount table merged with the host's view of the disks, disagreements flagged. */
  async list(): Promise<{ vm: VmInfo; disks: ListedDisk[] }> {
    const [self, hostDisks] = await Promise.all([this.self(), this.retrying('ListDisks', () => this.host.listDisks())]);
    const t = this.table(self);
    const keyOf = (path: string): string => {
      try {
        return parseDrivePath(self.guestOs, path).key;
      } catch {
        return path;
      }
    };
    const keys = new Set<string>([...t.mounts.map((m) => m.key), ...t.pending.map((p) => p.key), ...hostDisks.filter((d) => d.mountPath !== '').map((d) => keyOf(d.mountPath))]);
    const disks: ListedDisk[] = [];
    for (const key of [...keys].sort()) {
      const guest = t.mounts.find((m) => m.key === key) ?? null;
      const host = hostDisks.find((d) => keyOf(d.mountPath) === key) ?? null;
      const pending = t.pending.find((p) => p.key === key) ?? null;
      const mountPath = guest?.path ?? pending?.mountPath ?? host!.mountPath;
      const attached = pending && pending.kind !== 'remove' ? pending.result : undefined;
      const problems: string[] = [];
      let state: string;
      if (pending) {
        state = `${pending.kind === 'remove' ? 'removing' : pending.kind === 'create' ? 'creating' : 'connecting'}: ${PHASE_WORDS[pending.phase]}`;
        problems.push(`an earlier \`disk ${pending.kind}\` did not finish: run \`${commandFor(pending)}\` again to finish it`);
      } else if (guest && host) {
        state = host.resourceState === 'online' ? 'mounted' : `mounted (resource ${host.resourceState.replace('_', ' ')})`;
      } else if (guest) {
        state = 'missing';
      } else {
        state = 'not mounted';
      }
      if (guest && !host && pending?.kind !== 'remove') {
        problems.push(`the mount table has ${guest.path} (serial ${guest.serial}) but the host shows no disk there: it was detached behind this guest's back; \`guest-agent disk remove --mount ${shellWord(guest.path)}\` clears the entry`);
      }
      if (guest && host) {
        if (guest.serial !== host.serial) problems.push(`the mount table has serial ${guest.serial} at ${guest.path}, the host serial ${host.serial}`);
        if (scsi(guest.address) !== scsi(host.address)) problems.push(`the mount table has ${guest.path} at SCSI ${scsi(guest.address)}, the host at SCSI ${scsi(host.address)}`);
        if (!pending && !host.mounted) problems.push(`the host has no record of the mount: run \`guest-agent disk ${guest.origin}\` with the same arguments again to report it`);
        if (host.mounted && host.volumeId !== guest.volumeId) problems.push(`the host records volume ${host.volumeId} at ${guest.path}, the mount table volume ${guest.volumeId}`);
      }
      if (!guest && host && !pending) {
        problems.push(`the host has a disk at ${host.mountPath} (serial ${host.serial}) that is not mounted in this guest: \`guest-agent disk remove --mount ${shellWord(host.mountPath)}\` detaches it`);
      }
      const serial = guest?.serial ?? host?.serial ?? attached?.serial ?? '';
      disks.push({
        mountPath,
        serial,
        naaId: guest?.naaId ?? host?.naaId ?? attached?.naaId ?? '',
        sizeBytes: guest?.sizeBytes ?? host?.sizeBytes ?? attached?.sizeBytes ?? (pending?.kind === 'create' ? (pending.sizeBytes ?? 0) : 0),
        address: guest?.address ?? host?.address ?? attached?.address ?? null,
        lunId: guest?.lunId ?? host?.lunId ?? attached?.lunId ?? null,
        label: guest?.label ?? (host?.mounted ? host.volumeLabel : ''),
        volumeId: guest?.volumeId ?? (host?.mounted ? host.volumeId : ''),
        state,
        problems,
        guest,
        host,
        pending,
      });
    }
    return { vm: self, disks };
  }

  /** What is on the disk mounted (or attached) at the path, read from the disk itself. */
  async show(mountArg: string): Promise<DiskReport> {
    const self = await this.self();
    const mount = parseDrivePath(self.guestOs, mountArg);
    const t = this.table(self);
    const guest = t.mounts.find((m) => m.key === mount.key);
    let want: { address: ScsiAddress; serial: string } | undefined = guest;
    if (!want) {
      const pending = t.pending.find((p) => p.key === mount.key);
      want = pending?.kind !== 'remove' ? pending?.result : undefined;
    }
    if (!want) {
      const host = (await this.retrying('ListDisks', () => this.host.listDisks())).find((d) => d.mountPath !== '' && parseDrivePath(self.guestOs, d.mountPath).key === mount.key);
      want = host;
    }
    if (!want) throw new NotFoundError('mount', mount.path, `nothing is mounted or attached at ${mount.path} (\`guest-agent disk list\` shows what is)`);
    const disk = await this.onBus(want, mount);
    const size = disk.device.sizeBytes;
    const { parsed, gpt } = await parseOnDisk(disk, (read) => ({ parsed: parseDiskLayout(read, size), gpt: describeGpt(read, size) }));
    return {
      mountPath: mount.path,
      serial: disk.device.serial,
      naaId: disk.device.naaId,
      address: disk.device.address,
      sizeBytes: size,
      mounted: guest !== undefined,
      content: parsed.kind,
      reason: parsed.kind === 'foreign' ? parsed.reason : null,
      gpt: gpt ?? null,
      volume:
        parsed.kind === 'passthru'
          ? { label: parsed.label, volumeId: parsed.volumeId, guestOs: parsed.guestOs, createdAt: parsed.createdAt.toISOString(), dataOffset: parsed.dataOffset, dataBytes: parsed.dataBytes }
          : null,
    };
  }

  /** The disk at the address, checked to be the one with that serial, never another at the same place. */
  private async onBus(want: { address: ScsiAddress; serial: string }, mount: DrivePath): Promise<BlockDevice> {
    const devices = await this.retrying('RescanBus', () => this.os.rescanBus());
    const d = devices.find((x) => scsi(x.address) === scsi(want.address));
    if (!d || d.serial !== want.serial) {
      throw new FailedPreconditionError(
        `${mount.path} is serial ${want.serial} at SCSI ${scsi(want.address)}, but the bus shows ${d ? `serial ${d.serial}` : 'nothing'} there: the disk was detached or replaced behind this guest's back (\`guest-agent disk list\` shows it)`,
        'DISK_NOT_ON_BUS',
      );
    }
    return this.reliable(this.os.open(d));
  }

  /** The VM's SCSI bus after a rescan, with where each disk is mounted here. */
  async rescan(): Promise<{ vm: VmInfo; devices: BusEntry[] }> {
    const [self, devices] = await Promise.all([this.self(), this.retrying('RescanBus', () => this.os.rescanBus())]);
    const t = this.table(self);
    return {
      vm: self,
      devices: devices
        .map((d) => ({ ...d, mountPath: t.mounts.find((m) => m.serial === d.serial && scsi(m.address) === scsi(d.address))?.path ?? null }))
        .sort((a, b) => a.address.controller - b.address.controller || a.address.location - b.address.location),
    };
  }

  // ---------------------------------------------------------------- read and write

  /** The mounted volume at the path, with its range checked against its data area. */
  private async mountedRange(mountArg: string, at: number, length: number): Promise<{ record: MountRecord; disk: BlockDevice }> {
    const self = await this.self();
    const mount = parseDrivePath(self.guestOs, mountArg);
    if (!Number.isSafeInteger(at) || at < 0) throw new InvalidArgumentError('at', `--at ${at} must be a whole number of bytes, 0 or more`, 'OFFSET_INVALID');
    if (!Number.isSafeInteger(length) || length <= 0) throw new InvalidArgumentError('length', `the length ${length} must be a whole number of bytes, 1 or more`, 'LENGTH_INVALID');
    const record = this.table(self).mounts.find((m) => m.key === mount.key);
    if (!record) throw new NotFoundError('mount', mount.path, `nothing is mounted at ${mount.path} in this guest (\`guest-agent disk list\` shows what is)`);
    if (at + length > record.dataBytes) {
      throw new InvalidArgumentError(
        at >= record.dataBytes ? 'at' : 'length',
        `${length} bytes at ${at} run past the end of the data area of ${mount.path} (${record.dataBytes} bytes, ${formatSize(record.dataBytes)}): the volume's data area ends at ${record.dataBytes}`,
        'OUT_OF_RANGE',
      );
    }
    return { record, disk: await this.onBus(record, mount) };
  }

  /** Reads `length` bytes at `at` of the volume's data area (after its header), handing them to `sink` in order. */
  async read(req: { mount: string; at: number; length: number }, sink: (chunk: Buffer) => Promise<void> | void): Promise<MountRecord> {
    const { record, disk } = await this.mountedRange(req.mount, req.at, req.length);
    await readRange(disk, record.dataOffset + req.at, req.length, sink);
    return record;
  }

  /** Writes `length` bytes, taken from `source(offset, n)`, at `at` of the volume's data area. */
  async write(req: { mount: string; at: number; length: number }, source: (offset: number, n: number) => Promise<Buffer>): Promise<MountRecord> {
    const { record, disk } = await this.mountedRange(req.mount, req.at, req.length);
    await writeRange(disk, record.dataOffset + req.at, req.length, source, `w:${randomUUID()}`);
    return record;
  }
}
