/**
 * The guest agent as the e2e tests run it: the compiled `bin/guest-agent.js` as a child
 * process, against a deployment of real `storage-sim serve --enable-faults` and `host-agent
 * serve` processes on 127.0.0.1:0 with fresh data dirs, each stopped by its PID only.
 */
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { connect, type PromiseClient } from '../../common/client.js';
import {
  AdminServiceClient,
  OperationKind,
  OperationState,
  type Disk,
  type Operation,
  type Violation,
} from '../../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient, OsType, Provisioning, StorageArrayServiceClient, type Lun } from '../../proto/gen/passthru/storage/v1/storage.js';
import { HOST_AGENT_BIN, hostAgentArgs, writeClusterFile } from './host-process.js';
import { ROOT, startService, startStorageSim, tempDir, type ServiceProcess } from './processes.js';

export const GUEST_AGENT_BIN = join(ROOT, 'bin', 'guest-agent.js');
export const EXAMPLE_CLUSTER = join(ROOT, 'examples', 'cluster.json');

/** Builds dist/ when it is missing (the test command builds first; this is for one file run alone). */
export function ensureBuilt(): void {
  if (!existsSync(join(ROOT, 'dist', 'guest-agent', 'cli.js'))) spawnSync('npx', ['tsc', '-p', '.'], { cwd: ROOT, stdio: 'inherit' });
}

export interface GuestRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  /** stdout as bytes (for `disk read` to stdout). */
  stdoutBytes: Buffer;
  stderr: string;
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  /** What the process reads on stdin. */
  input?: string | Buffer;
  timeoutMs?: number;
}

/** Runs `guest-agent ARGS` to its end (SIGKILLed after `timeoutMs`, default 60 s). */
export function runGuest(args: string[], opts: RunOptions = {}): Promise<GuestRun> {
  return new Promise((resolve, reject) => {
    const env = { ...process.env, PASSTHRU_GUEST_ENDPOINT: '', PASSTHRU_GUEST_STATE_DIR: '', PASSTHRU_GUEST_CRASH_AT: '', ...opts.env };
    const child = spawn(process.execPath, [GUEST_AGENT_BIN, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('error', reject);
    // 'close', not 'exit': by then the pipes are drained too.
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stdoutBytes = Buffer.concat(out);
      resolve({ code, signal, stdout: stdoutBytes.toString(), stdoutBytes, stderr });
    });
    child.stdin.end(opts.input ?? '');
  });
}

export function describeRun(args: string[], r: GuestRun): string {
  return `guest-agent ${args.join(' ')} exited ${r.code ?? r.signal}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
}

/** A guest agent bound to one VM's endpoint and one state dir. */
export interface Guest {
  vmId: string;
  endpoint: string;
  stateDir: string;
  run(args: string[], opts?: RunOptions): Promise<GuestRun>;
  /** Runs a command that must succeed (exit 0, nothing on stderr); returns stdout. */
  ok(args: string[], opts?: RunOptions): Promise<string>;
  /** Runs a command with --json that must succeed; returns the document. */
  okJson(args: string[], opts?: RunOptions): Promise<any>;
  /** Runs a command that must fail with this exit code and print nothing on stdout; returns stderr. */
  fails(args: string[], code: number, opts?: RunOptions): Promise<string>;
}

export interface Deployment {
  dir: string;
  sim: ServiceProcess;
  host: ServiceProcess;
  hostDataDir: string;
  admin: PromiseClient<AdminServiceClient>;
  storage: PromiseClient<StorageArrayServiceClient>;
  faults: PromiseClient<FaultInjectionServiceClient>;
  endpoint(vmId: string): string;
  /** A guest agent for the VM with a fresh state dir (or the one named). */
  guest(vmId: string, stateDir?: string): Guest;
  violations(): Promise<Violation[]>;
  /** The VM's operations, oldest first. */
  operations(vmId: string): Promise<Operation[]>;
  /** The VM's disks as the host sees them. */
  disks(vmId: string): Promise<Disk[]>;
  /** Polls the operation as the admin until it is final. */
  settle(operationId: string): Promise<Operation>;
  /** A LUN made on the array by its admin (not by passthru), then put into Available Storage by the cluster admin. */
  availableLun(path: string, os: 'windows' | 'linux', sizeBytes: number, prepare?: (lun: Lun) => Promise<void>): Promise<Lun>;
  /** Stops the host agent (if it still runs) and starts it again on the same data dir, with these extra serve flags. */
  restartHost(extra?: string[]): Promise<void>;
  close(): Promise<void>;
}

let stateDirs = 0;

/**
 * One deployment for the whole test file (mocha hooks: made before, closed after), with
 * CheckInvariants required to find nothing after every test. Returns a getter.
 */
export function deploymentForFile(opts: { cluster?: object; hostExtra?: string[] } = {}): () => Deployment {
  let d: Deployment | undefined;
  before(async function () {
    this.timeout(180_000);
    d = await deploy(opts);
  });
  after(async function () {
    this.timeout(30_000);
    await d?.close();
  });
  afterEach(async function () {
    if (!d) return;
    expect(await d.violations(), 'CheckInvariants after the test').to.deep.equal([]);
  });
  return () => d!;
}

/**
 * storage-sim (faults enabled) and a host agent for the cluster file, both processes.
 * `hostExtra` are more `host-agent serve` flags (e.g. faster array retries).
 */
export async function deploy(opts: { cluster?: object; hostExtra?: string[] } = {}): Promise<Deployment> {
  ensureBuilt();
  const dir = tempDir('pt-guest-');
  const clusterFile = opts.cluster ? writeClusterFile(dir.path, opts.cluster) : EXAMPLE_CLUSTER;
  const sim = await startStorageSim(join(dir.path, 'array'), ['--enable-faults', '--log-level', 'error']);
  const hostDataDir = join(dir.path, 'host');
  const startHost = (extra: string[]): Promise<ServiceProcess> =>
    startService(HOST_AGENT_BIN, hostAgentArgs({ storage: sim.address, dataDir: hostDataDir, cluster: clusterFile, extra: ['--log-level', 'error', ...extra] }), {
      timeoutMs: 30_000,
    });
  let host = await startHost(opts.hostExtra ?? []);
  let admin = connect(AdminServiceClient, host.address, { timeoutMs: 15_000 });
  const storage = connect(StorageArrayServiceClient, sim.address, { timeoutMs: 15_000 });
  const faults = connect(FaultInjectionServiceClient, sim.address, { timeoutMs: 15_000 });
  const endpoint = (vmId: string): string => `unix:${join(hostDataDir, 'sock', `${vmId}.sock`)}`;
  const d: Deployment = {
    dir: dir.path,
    sim,
    get host() {
      return host;
    },
    hostDataDir,
    get admin() {
      return admin;
    },
    storage,
    faults,
    endpoint,
    guest(vmId, stateDir) {
      const state = stateDir ?? join(dir.path, 'guests', `${vmId}-${++stateDirs}`);
      mkdirSync(join(dir.path, 'guests'), { recursive: true });
      const run = (args: string[], o: RunOptions = {}): Promise<GuestRun> =>
        runGuest(args, { ...o, env: { PASSTHRU_GUEST_ENDPOINT: endpoint(vmId), PASSTHRU_GUEST_STATE_DIR: state, ...o.env } });
      const g: Guest = {
        vmId,
        endpoint: endpoint(vmId),
        stateDir: state,
        run,
        async ok(args, o) {
          const r = await run(args, o);
          expect(r.code, describeRun(args, r)).to.equal(0);
          expect(r.stderr, describeRun(args, r)).to.equal('');
          return r.stdout;
        },
        async okJson(args, o) {
          return JSON.parse(await g.ok([...args, '--json'], o));
        },
        async fails(args, code, o) {
          const r = await run(args, o);
          expect(r.code, describeRun(args, r)).to.equal(code);
          expect(r.stdout, describeRun(args, r)).to.equal('');
          expect(r.stderr, describeRun(args, r)).to.match(/^guest-agent: /);
          return r.stderr;
        },
      };
      return g;
    },
    async violations() {
      return (await admin.checkInvariants({})).violations;
    },
    async operations(vmId) {
      const ops: Operation[] = [];
      let pageToken = '';
      do {
        const r = await admin.listOperations({ vmId, state: OperationState.OPERATION_STATE_UNSPECIFIED, pageSize: 1000, pageToken });
        ops.push(...r.operations);
        pageToken = r.nextPageToken;
      } while (pageToken !== '');
      return ops.filter((o) => o.kind !== OperationKind.OPERATION_KIND_UNSPECIFIED).sort((a, b) => a.createTime!.getTime() - b.createTime!.getTime());
    },
    async disks(vmId) {
      return (await admin.listDisks({ vmId })).disks;
    },
    async settle(operationId) {
      const end = Date.now() + 30_000;
      for (;;) {
        const { operation } = await admin.getOperation({ operationId });
        if (operation!.state === OperationState.OPERATION_STATE_SUCCEEDED || operation!.state === OperationState.OPERATION_STATE_FAILED) return operation!;
        if (Date.now() > end) throw new Error(`operation ${operationId} did not end within 30 s`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async availableLun(path, os, sizeBytes, prepare) {
      const { lun } = await storage.createLun({
        requestId: `lun-${path}`,
        path,
        sizeBytes: BigInt(sizeBytes),
        osType: os === 'windows' ? OsType.OS_TYPE_WINDOWS : OsType.OS_TYPE_LINUX,
        provisioning: Provisioning.PROVISIONING_THIN,
        comment: 'made by a storage admin',
        pool: '',
      });
      await prepare?.(lun!);
      const added = await admin.addAvailableDisk({ requestId: `add-${path}`, lun: lun!.serial });
      const op = await d.settle(added.operation!.id);
      expect(op.state, `AddAvailableDisk ${path}: ${op.error?.message}`).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      return lun!;
    },
    async restartHost(extra = []) {
      admin.close();
      await host.stop();
      host = await startHost(extra);
      admin = connect(AdminServiceClient, host.address, { timeoutMs: 15_000 });
    },
    async close() {
      admin.close();
      storage.close();
      faults.close();
      await host.stop();
      await sim.stop();
      dir.remove();
    },
  };
  return d;
}
