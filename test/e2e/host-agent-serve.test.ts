/**
 * `host-agent serve` as a process: what it prints, its health while it recovers and once it
 * serves, waiting for an array that is not there yet, refusing a data dir in use and a bad
 * cluster file, strict server reflection on its TCP and Unix-socket endpoints, the
 * permissions of the VMs' sockets, and a clean SIGTERM.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { connect } from '../../common/client.js';
import { HealthCheckResponse_ServingStatus as Serving, HealthClient } from '../../proto/gen/grpc/health/v1/health.js';
import { AdminServiceClient, GuestServiceClient, type Vm } from '../../proto/gen/passthru/host/v1/host.js';
import {
  freePort,
  HOST_AGENT_BIN,
  hostAgentArgs,
  pollUntil,
  sleep,
  spawnWatched,
  threeNodeCluster,
  writeClusterFile,
  type WatchedProcess,
} from '../support/host-process.js';
import { BIN, startService, startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';
import { ReflectionClient, type ReflectionVersion } from '../support/reflection-client.js';

const ADMIN = 'passthru.host.v1.AdminService';
const GUEST = 'passthru.host.v1.GuestService';
const COMMON = ['passthru.diag.v1.DiagnosticsService', 'grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];
const CALL = { timeoutMs: 5000 };
const LISTENING = /host-agent listening on (\S+) \(recovering\)\n/;
const SERVING = /host-agent serving on (\S+)\n/;

describe('host-agent serve as a process', function () {
  this.timeout(60_000);
  const root = tempDir('passthru-hserve-');
  let sim: ServiceProcess;
  const procs = new Set<WatchedProcess | ServiceProcess>();
  const clients = new Set<{ close(): void }>();
  let n = 0;

  before(async () => {
    sim = await startStorageSim(join(root.path, 'array'));
  });

  afterEach(async () => {
    for (const c of clients) c.close();
    clients.clear();
    await Promise.all([...procs].map((p) => p.kill()));
    procs.clear();
  });

  after(async () => {
    await sim?.stop();
    root.remove();
  });

  function track<T extends { close(): void }>(c: T): T {
    clients.add(c);
    return c;
  }

  /** A fresh dir with a cluster file of its own (own node names, so own igroups on the array). */
  function fresh(): { dir: string; dataDir: string; cluster: string } {
    const name = `s${n++}`;
    const dir = join(root.path, name);
    mkdirSync(dir, { recursive: true });
    return { dir, dataDir: join(dir, 'host'), cluster: writeClusterFile(dir, threeNodeCluster(name, `serve_${name}`)) };
  }

  function spawnHost(o: { storage: string; dataDir: string; cluster: string; extra?: string[] }): WatchedProcess {
    const p = spawnWatched(HOST_AGENT_BIN, hostAgentArgs(o));
    procs.add(p);
    return p;
  }

  async function health(endpoint: string, service: string): Promise<Serving> {
    const client = connect(HealthClient, endpoint, CALL);
    try {
      return (await client.check({ service })).status;
    } finally {
      client.close();
    }
  }

  async function vmsOf(address: string): Promise<Vm[]> {
    const admin = track(connect(AdminServiceClient, address, CALL));
    return (await admin.listVms({ node: '' })).vms;
  }

  it('prints "listening on ADDR (recovering)", then "serving on" the same address; health is SERVING then, on TCP and on every VM socket', async () => {
    const f = fresh();
    const p = spawnHost({ storage: sim.address, ...f });
    const listening = (await p.waitForStdout(LISTENING))[1]!;
    const serving = (await p.waitForStdout(SERVING))[1]!;
    expect(listening).to.match(/^127\.0\.0\.1:\d+$/);
    expect(listening).to.not.equal('127.0.0.1:0');
    expect(serving).to.equal(listening);
    expect(p.stdout().indexOf('listening on')).to.be.lessThan(p.stdout().indexOf('serving on'));
    expect(await health(serving, '')).to.equal(Serving.SERVING);
    expect(await health(serving, ADMIN)).to.equal(Serving.SERVING);
    const vms = await vmsOf(serving);
    expect(vms.map((v) => v.id)).to.deep.equal(['vm1', 'vm2', 'vm3']);
    for (const vm of vms) {
      expect(await health(vm.guestEndpoint, ''), `${vm.id} overall`).to.equal(Serving.SERVING);
      expect(await health(vm.guestEndpoint, GUEST), `${vm.id} GuestService`).to.equal(Serving.SERVING);
    }
    const admin = track(connect(AdminServiceClient, serving, CALL));
    expect((await admin.getCluster({})).serving).to.equal(true);
  });

  it('while the array cannot be reached it prints "listening on" but not "serving on" and says NOT_SERVING; once a storage-sim starts on that port it serves', async () => {
    const f = fresh();
    const port = await freePort();
    const storage = `127.0.0.1:${port}`;
    const p = spawnHost({ storage, ...f, extra: ['--array-attempts', '1', '--array-timeout-ms', '500'] });
    const address = (await p.waitForStdout(LISTENING))[1]!;
    expect(await health(address, '')).to.equal(Serving.NOT_SERVING);
    expect(await health(address, ADMIN)).to.equal(Serving.NOT_SERVING);
    const vms = await vmsOf(address);
    for (const vm of vms) expect(await health(vm.guestEndpoint, GUEST), `${vm.id} GuestService`).to.equal(Serving.NOT_SERVING);
    // A mutation while recovering is refused as retryable, and starts nothing.
    const guest = track(connect(GuestServiceClient, vms[0]!.guestEndpoint, CALL));
    const refused = await guest.createDisk({ requestId: 'early', mountPath: 'E:', sizeBytes: 4n * 1024n * 1024n, sharing: 0 }).then(
      () => undefined,
      (err: ServiceError) => err,
    );
    expect(refused?.code, `CreateDisk while recovering: ${refused?.message}`).to.equal(Code.UNAVAILABLE);
    await sleep(1500);
    expect(p.stdout(), 'stdout while the array is unreachable').to.not.match(/serving on/);
    expect(await health(address, '')).to.equal(Serving.NOT_SERVING);

    const array = await startService(BIN.storageSim, ['serve', '--listen', storage, '--data-dir', join(f.dir, 'late-array')]);
    procs.add(array);
    expect(array.address).to.equal(storage);
    expect((await p.waitForStdout(SERVING, 20_000))[1]).to.equal(address);
    expect(await health(address, '')).to.equal(Serving.SERVING);
    expect(await health(address, ADMIN)).to.equal(Serving.SERVING);
    for (const vm of vms) expect(await health(vm.guestEndpoint, GUEST), `${vm.id} GuestService`).to.equal(Serving.SERVING);
    expect(await p.stop(), 'exit after SIGTERM').to.deep.equal({ code: 0, signal: null });
    expect(await array.stop()).to.equal(0);
  });

  it('a second host-agent on a data dir in use exits non-zero saying so, and the first keeps serving', async () => {
    const f = fresh();
    const first = spawnHost({ storage: sim.address, ...f });
    const address = (await first.waitForStdout(SERVING))[1]!;
    const vms = await vmsOf(address);
    const second = spawnSync(process.execPath, [HOST_AGENT_BIN, ...hostAgentArgs({ storage: sim.address, ...f })], { encoding: 'utf8', timeout: 15_000 });
    expect(second.status, `second host-agent's exit; stderr: ${second.stderr}`).to.not.equal(0);
    expect(second.status).to.not.equal(null);
    expect(second.stdout).to.not.match(/listening on|serving on/);
    expect(second.stderr).to.match(/data dir .*host.* is in use by another host-agent/);
    expect(await health(address, '')).to.equal(Serving.SERVING);
    for (const vm of vms) {
      const guest = track(connect(GuestServiceClient, vm.guestEndpoint, CALL));
      expect((await guest.getSelf({})).vm?.id, `${vm.id} still answers on its socket`).to.equal(vm.id);
    }
  });

  const badFiles: { what: string; text: string | undefined; message: RegExp }[] = [
    { what: 'a missing file', text: undefined, message: /cannot read cluster file .*missing\.json/ },
    { what: 'a file that is not JSON', text: '{"nodes": [', message: /is not valid JSON/ },
    {
      what: 'a VM on a node the file does not list',
      text: JSON.stringify({ ...threeNodeCluster('bad', 'bad'), vms: [{ id: 'vm1', guestOs: 'windows', node: 'nowhere' }] }),
      message: /vms\[0\]\.node must name one of the nodes/,
    },
    {
      what: 'two nodes with one initiator',
      text: JSON.stringify({ name: 'bad', nodes: [{ name: 'a', initiator: 'iqn.2026-11.dev.passthru:x' }, { name: 'b', initiator: 'iqn.2026-11.dev.passthru:x' }] }),
      message: /initiator iqn\.2026-11\.dev\.passthru:x is given to two nodes/,
    },
    { what: 'an unknown field', text: JSON.stringify({ ...threeNodeCluster('bad', 'bad'), vmz: [] }), message: /unknown field "vmz"/ },
  ];
  for (const bad of badFiles) {
    it(`refuses ${bad.what} as the cluster file with a message naming the problem and a non-zero exit`, () => {
      const f = fresh();
      const path = join(f.dir, 'missing.json');
      if (bad.text !== undefined) writeFileSync(path, bad.text);
      const r = spawnSync(process.execPath, [HOST_AGENT_BIN, ...hostAgentArgs({ storage: sim.address, dataDir: f.dataDir, cluster: path })], { encoding: 'utf8', timeout: 15_000 });
      expect(r.status, `exit; stderr: ${r.stderr}`).to.equal(1);
      expect(r.stdout).to.not.match(/listening on|serving on/);
      expect(r.stderr).to.match(/^host-agent: /m);
      expect(r.stderr).to.match(bad.message);
    });
  }

  for (const version of ['v1', 'v1alpha'] as ReflectionVersion[]) {
    it(`${version} reflection: TCP lists and strictly resolves AdminService; each VM socket lists and strictly resolves GuestService only`, async () => {
      const f = fresh();
      const p = spawnHost({ storage: sim.address, ...f });
      const address = (await p.waitForStdout(SERVING))[1]!;
      const admin = new ReflectionClient(address, version);
      try {
        expect((await admin.listServices()).sort()).to.deep.equal([ADMIN, ...COMMON].sort());
        const d = await admin.describe(ADMIN);
        expect(d.methods.map((m) => m.name)).to.include.members(['ListVms', 'GetOperation', 'WatchOperation', 'CheckInvariants']);
        expect(d.files).to.include.members(['google/protobuf/timestamp.proto', 'google/rpc/status.proto']);
      } finally {
        admin.close();
      }
      for (const vm of await vmsOf(address)) {
        const guest = new ReflectionClient(vm.guestEndpoint, version);
        try {
          expect((await guest.listServices()).sort(), `${vm.id} socket`).to.deep.equal([GUEST, ...COMMON].sort());
          const d = await guest.describe(GUEST);
          expect(d.methods.map((m) => m.name)).to.include.members(['CreateDisk', 'RemoveDisk', 'GetOperation', 'ListDisks']);
          const op = d.messages.find((m) => m.name === 'passthru.host.v1.Operation');
          expect(op?.fields.find((x) => x.name === 'error')?.type).to.equal('google.rpc.Status');
        } finally {
          guest.close();
        }
      }
    });
  }

  it('gives each VM socket mode 0600 in a socket dir of mode 0700; SIGTERM exits 0 and removes the sockets', async () => {
    const f = fresh();
    const p = spawnHost({ storage: sim.address, ...f });
    const address = (await p.waitForStdout(SERVING))[1]!;
    const vms = await vmsOf(address);
    const sockDir = join(f.dataDir, 'sock');
    expect(statSync(sockDir).mode & 0o777, `mode of ${sockDir}`).to.equal(0o700);
    const paths = vms.map((vm) => vm.guestEndpoint.replace(/^unix:/, ''));
    expect(paths).to.deep.equal(vms.map((vm) => join(sockDir, `${vm.id}.sock`)));
    for (const path of paths) {
      const st = statSync(path);
      expect(st.isSocket(), `${path} is a socket`).to.equal(true);
      expect(st.mode & 0o777, `mode of ${path}`).to.equal(0o600);
    }
    for (const c of clients) c.close();
    clients.clear();
    expect(await p.stop(), 'exit after SIGTERM').to.deep.equal({ code: 0, signal: null });
    await pollUntil(
      async () => paths.filter((path) => statSync(path, { throwIfNoEntry: false }) !== undefined),
      (left) => left.length === 0,
      2000,
      'the VM sockets were not removed',
    );
  });
});
