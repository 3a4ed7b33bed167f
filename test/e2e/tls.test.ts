/**
 * mTLS end to end through real processes: `passthru pki init` makes the CA from the cluster
 * file; storage-sim and host-agent start with `--tls-dir`; a guest's disk is provisioned,
 * written, failed over and fenced with every array call and portal session on a node's
 * certificate; the admin CLIs work with the admin's certificate (flags or environment) and
 * are refused without one or with a node's; health and reflection answer a client with a
 * certificate; and a program given the wrong files refuses to start, saying which.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from '../../common/client.js';
import { grpcClientTls, loadTls, pkiFiles, type TlsMaterial } from '../../common/tls.js';
import { PortalSession } from '../../host-agent/portal-client.js';
import { HealthCheckResponse_ServingStatus as Serving, HealthClient } from '../../proto/gen/grpc/health/v1/health.js';
import { AdminServiceClient, GuestServiceClient, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { StorageArrayServiceClient } from '../../proto/gen/passthru/storage/v1/storage.js';
import { HOST_AGENT_BIN, hostAgentArgs, pollUntil, spawnWatched, startHostAgent, threeNodeCluster, writeClusterFile } from '../support/host-process.js';
import { BIN, ROOT, startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';
import { ReflectionClient } from '../support/reflection-client.js';
import { expectStatus } from '../support/status.js';

const PASSTHRU_BIN = join(ROOT, 'bin', 'passthru.js');

interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs a passthru CLI to its end; never throws on a non-zero exit. */
function run(bin: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

describe('mTLS end to end (real processes)', function () {
  this.timeout(120_000);
  const dir = tempDir('passthru-tls-e2e-');
  const pki = join(dir.path, 'pki');
  const cluster = threeNodeCluster('tls', 'tlsvol');
  const [n1, n2] = cluster.nodes;
  const procs: ServiceProcess[] = [];
  const closers: { close(): void }[] = [];
  let clusterFile: string;
  let sim: ServiceProcess;
  let agent: ServiceProcess;
  const tls = (name: string): TlsMaterial => loadTls(pkiFiles(pki, name));

  before(async () => {
    clusterFile = writeClusterFile(dir.path, cluster);
  });

  after(async () => {
    for (const c of closers) c.close();
    for (const p of procs) await p.kill();
    dir.remove();
  });

  it('passthru pki init makes the CA from the cluster file; a second run keeps it all', async () => {
    const first = await run(PASSTHRU_BIN, ['pki', 'init', pki, '--cluster', clusterFile, '--json']);
    expect(first.code, first.stderr).to.equal(0);
    const files = (JSON.parse(first.stdout) as { files: { path: string; action: string; identity: string }[] }).files;
    expect(files.map((f) => `${f.path} ${f.action}`)).to.deep.equal([
      'ca.crt created',
      'array.crt created',
      'host-agent.crt created',
      'admin.crt created',
      'nodes/tls-node1.crt created',
      'nodes/tls-node2.crt created',
      'nodes/tls-node3.crt created',
    ]);
    expect(files.find((f) => f.path === 'nodes/tls-node2.crt')!.identity).to.equal(`host-node tls-node2 ${n2!.initiator}`);
    for (const key of ['ca.key', 'array.key', 'host-agent.key', 'admin.key', 'nodes/tls-node1.key']) {
      expect(statSync(join(pki, key)).mode & 0o777, key).to.equal(0o600);
    }
    const key = readFileSync(join(pki, 'admin.key'));
    const again = await run(PASSTHRU_BIN, ['pki', 'init', pki, '--cluster', clusterFile]);
    expect(again.code, again.stderr).to.equal(0);
    expect(again.stdout).to.not.contain('created');
    expect(readFileSync(join(pki, 'admin.key')).equals(key)).to.equal(true);
    const clash = await run(PASSTHRU_BIN, ['pki', 'init', pki, '--node', 'tls-node1=iqn.2026-11.dev.passthru:someone-else']);
    expect(clash.code).to.equal(5);
    expect(clash.stderr).to.match(/^passthru: FAILED_PRECONDITION: .*nodes\/tls-node1\.crt/);
    const shown = await run(PASSTHRU_BIN, ['pki', 'show', join(pki, 'nodes', 'tls-node1.crt')]);
    expect(shown.stdout).to.match(/Role:\s+host-node/).and.match(new RegExp(`Initiator:\\s+${n1!.initiator.replace(/\./g, '\\.')}`));
  });

  it('refuses to start on files that do not fit, saying which', async () => {
    const wrongRole = spawnWatched(BIN.storageSim, ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(dir.path, 'never'), '--tls-cert', join(pki, 'admin.crt'), '--tls-key', join(pki, 'admin.key'), '--tls-ca', join(pki, 'ca.crt')]);
    expect((await wrongRole.exit).code).to.not.equal(0);
    expect(wrongRole.stderr()).to.match(/admin\.crt is a certificate of role admin, not array/);
    const halfFlags = spawnWatched(BIN.storageSim, ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(dir.path, 'never'), '--tls-cert', join(pki, 'array.crt')]);
    expect((await halfFlags.exit).code).to.not.equal(0);
    expect(halfFlags.stderr()).to.match(/--tls-cert, --tls-key and --tls-ca go together/);
    // A node whose certificate binds another node: the host agent names it and does not start.
    const otherPki = join(dir.path, 'pki-other');
    const made = await run(PASSTHRU_BIN, ['pki', 'init', otherPki, '--node', `tls-node1=${n1!.initiator}`, '--node', `tls-node2=${n2!.initiator}`, '--node', 'tls-node3=iqn.2026-11.dev.passthru:not-node3']);
    expect(made.code, made.stderr).to.equal(0);
    const host = spawnWatched(HOST_AGENT_BIN, hostAgentArgs({ storage: '127.0.0.1:1', dataDir: join(dir.path, 'never-host'), cluster: clusterFile, extra: ['--tls-dir', otherPki] }));
    expect((await host.exit).code).to.not.equal(0);
    expect(host.stderr()).to.match(/tls-node3\.crt is not node tls-node3's certificate: it binds node tls-node3 with initiator iqn\.2026-11\.dev\.passthru:not-node3/);
  });

  it('storage-sim and host-agent over mTLS: a disk provisioned, written, failed over, the failed node fenced', async () => {
    sim = await startStorageSim(join(dir.path, 'array'), ['--tls-dir', pki]);
    procs.push(sim);
    agent = await startHostAgent({ storage: sim.address, dataDir: join(dir.path, 'host'), cluster: clusterFile, extra: ['--tls-dir', pki] });
    procs.push(agent);
    const admin = connect(AdminServiceClient, agent.address, { tls: grpcClientTls(tls('admin'), agent.address, 'host-agent') });
    const storage = connect(StorageArrayServiceClient, sim.address, { tls: grpcClientTls(tls('admin'), sim.address, 'array') });
    closers.push(admin, storage);
    const vm1 = (await admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!;
    expect(vm1.node).to.equal(n1!.name);
    const guest = connect(GuestServiceClient, vm1.guestEndpoint);
    closers.push(guest);
    const { operation } = await guest.createDisk({ requestId: 'tls-create', mountPath: 'E:', sizeBytes: 8n << 20n, sharing: 0 });
    const done = await pollUntil(() => guest.getOperation({ operationId: operation!.id }), (r) => r.operation!.state !== OperationState.OPERATION_STATE_RUNNING, 15_000, 'create');
    expect(done.operation!.state, JSON.stringify(done.operation!.error)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    const serial = done.operation!.result!.serial;
    const bytes = Buffer.alloc(4096, 0x7e);
    await guest.writeDisk({ requestId: 'tls-w1', address: { controller: 0, location: 0 }, offsetBytes: 0n, data: bytes });

    // The array saw node1, by its certificate, take the reservation and write through the portal.
    expect((await storage.readReservation({ lun: serial })).holderInitiator).to.equal(n1!.initiator);
    expect(sim.stderr()).to.match(/"message":"portal session"[^\n]*"who":"CN=tls-node1, OU=host-node, O=passthru"/);
    expect(agent.stderr()).to.not.match(/"level":"error"/);

    await admin.failNode({ requestId: 'tls-fail', node: n1!.name });
    const moved = await pollUntil(
      async () => (await admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!,
      (v) => v.node !== n1!.name && v.state === vm1.state,
      15_000,
      'vm1 restarted on a survivor',
    );
    const owner = cluster.nodes.find((n) => n.name === moved.node)!;
    expect((await storage.readReservation({ lun: serial })).holderInitiator, 'fenced over to the new owner').to.equal(owner.initiator);

    // node1, with its own certificate, is refused by the reservation: gRPC and portal alike.
    const asNode1 = connect(StorageArrayServiceClient, sim.address, { tls: grpcClientTls(tls(`nodes/${n1!.name}`), sim.address, 'array') });
    closers.push(asNode1);
    await expectStatus(asNode1.writeBlocks({ requestId: 'late', lun: serial, initiator: '', offsetBytes: 0n, data: Buffer.alloc(512, 1) }), Code.FAILED_PRECONDITION, /reservation conflict/);
    // ... and cannot slip out of the fence by naming the new owner's initiator.
    await expectStatus(asNode1.writeBlocks({ requestId: 'late2', lun: serial, initiator: owner.initiator, offsetBytes: 0n, data: Buffer.alloc(512, 1) }), Code.PERMISSION_DENIED, 'INITIATOR_NOT_YOURS');
    const array = await storage.getArray({});
    const session = await PortalSession.open(array.blockPortal, '', 5000, { tls: tls(`nodes/${n1!.name}`), serverRole: 'array' });
    closers.push(session);
    let refused: unknown;
    await session.command({ op: 'write', lun: serial, offsetBytes: 0n, requestId: 'late3', data: Buffer.alloc(512, 2) }, 5000).catch((e: unknown) => (refused = e));
    expect(String(refused)).to.match(/reservation conflict/);
    await PortalSession.open(array.blockPortal, owner.initiator, 5000, { tls: tls(`nodes/${n1!.name}`), serverRole: 'array' }).then(
      () => expect.fail('node1 logged in as the new owner'),
      (e: Error) => expect(e.message).to.match(/binds/),
    );

    // The guest reads its data on the new node; nothing of node1's late writes landed.
    const guest2 = connect(GuestServiceClient, moved.guestEndpoint);
    closers.push(guest2);
    const back = await guest2.readDisk({ address: { controller: 0, location: 0 }, offsetBytes: 0n, lengthBytes: 4096 });
    expect(Buffer.from(back.data).equals(bytes)).to.equal(true);
    expect((await admin.checkInvariants({})).violations).to.deep.equal([]);
  });

  it('health and strict reflection answer a client with a certificate, on both servers', async () => {
    for (const [address, role, service] of [
      [sim.address, 'array', 'passthru.storage.v1.StorageArrayService'],
      [agent.address, 'host-agent', 'passthru.host.v1.AdminService'],
    ] as const) {
      const health = connect(HealthClient, address, { tls: grpcClientTls(tls('admin'), address, role) });
      closers.push(health);
      expect((await health.check({ service })).status, address).to.equal(Serving.SERVING);
      for (const version of ['v1', 'v1alpha'] as const) {
        const r = new ReflectionClient(address, version, grpcClientTls(tls('admin'), address, role));
        closers.push(r);
        expect(await r.listServices()).to.include(service);
        expect((await r.describe(service)).methods.length).to.be.greaterThan(3);
      }
    }
  });

  it('AdminService refuses a plaintext client and a certificate from another CA', async () => {
    const plain = connect(AdminServiceClient, agent.address, { timeoutMs: 5000 });
    // Another CA's admin certificate, presented by a client that trusts this CA's servers.
    const foreign = { ...loadTls(pkiFiles(join(dir.path, 'pki-other'), 'admin')), ca: tls('admin').ca };
    const other = connect(AdminServiceClient, agent.address, { timeoutMs: 5000, tls: grpcClientTls(foreign, agent.address, 'host-agent') });
    closers.push(plain, other);
    await expectStatus(plain.getCluster({}), Code.UNAVAILABLE);
    await expectStatus(other.getCluster({}), Code.UNAVAILABLE);
  });

  it('the admin CLIs: the admin certificate by flags or environment; none, or a node\'s, refused', async () => {
    const hostEnv = { PASSTHRU_HOST_ENDPOINT: agent.address };
    const ok = await run(HOST_AGENT_BIN, ['cluster', '--json', '--tls-dir', pki], hostEnv);
    expect(ok.code, ok.stderr).to.equal(0);
    expect((JSON.parse(ok.stdout) as { name: string }).name).to.equal('tls');
    const byEnv = await run(HOST_AGENT_BIN, ['vms', '--json'], { ...hostEnv, PASSTHRU_TLS_CERT: join(pki, 'admin.crt'), PASSTHRU_TLS_KEY: join(pki, 'admin.key'), PASSTHRU_TLS_CA: join(pki, 'ca.crt') });
    expect(byEnv.code, byEnv.stderr).to.equal(0);
    const plain = await run(HOST_AGENT_BIN, ['cluster', '--timeout', '3000'], hostEnv);
    expect(plain.code).to.equal(8);
    expect(plain.stderr).to.contain('--tls-dir');
    const node = await run(HOST_AGENT_BIN, ['cluster', '--tls-cert', join(pki, 'nodes', 'tls-node2.crt'), '--tls-key', join(pki, 'nodes', 'tls-node2.key'), '--tls-ca', join(pki, 'ca.crt')], hostEnv);
    expect(node.code).to.equal(7);
    expect(node.stderr).to.contain('host-agent: PERMISSION_DENIED: AdminService.GetCluster needs an admin certificate; the caller is host-node tls-node2');
    const luns = await run(BIN.storageSim, ['lun', 'list', '--json'], { PASSTHRU_STORAGE_ENDPOINT: sim.address, PASSTHRU_TLS_DIR: pki });
    expect(luns.code, luns.stderr).to.equal(0);
    expect((JSON.parse(luns.stdout) as { luns: unknown[] }).luns).to.have.length(1);
    const wrongServer = await run(BIN.storageSim, ['lun', 'list', '--endpoint', agent.address, '--tls-dir', pki, '--timeout', '3000']);
    expect(wrongServer.code, 'the host agent is not the array').to.equal(8);
    expect(wrongServer.stderr).to.match(/role host-agent/);
    expect(`${ok.stderr}${byEnv.stderr}${luns.stderr}`, 'no warning on stderr').to.equal('');
  });
});
