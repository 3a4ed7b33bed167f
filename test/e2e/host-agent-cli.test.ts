/**
 * The host-agent admin CLI end to end: the compiled `bin/host-agent.js` run as a child
 * process against a real `host-agent serve` (examples/cluster.json) in front of a real
 * `storage-sim serve --enable-faults`, both on 127.0.0.1:0. Each read command's table and
 * --json are checked against what AdminService itself answers.
 *
 * The tests run in order and build on each other: a LUN goes into Available Storage, vm1 gets
 * a disk, node1 fails and recovers, web1's group moves back.
 */
import { execFile, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { connect, type PromiseClient } from '../../common/client.js';
import {
  AdminServiceClient,
  diskSharingToJSON,
  DiskSharing,
  groupKindToJSON,
  GuestServiceClient,
  guestOsToJSON,
  nodeStateToJSON,
  operationKindToJSON,
  operationStateToJSON,
  resourceStateToJSON,
  stepStateToJSON,
  vmStateToJSON,
  type Disk,
  type Group,
  type Node,
  type Vm,
} from '../../proto/gen/passthru/host/v1/host.js';
import { HOST_AGENT_BIN } from '../support/host-process.js';
import { BIN, ROOT, startService, startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const MiB = 1024 ** 2;
const CLUSTER_FILE = join(ROOT, 'examples', 'cluster.json');
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

let sim: ServiceProcess;
let host: ServiceProcess;
let dir: { path: string; remove(): void };
let admin: PromiseClient<AdminServiceClient>;

function exec(bin: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { env: { ...process.env, ...env }, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `host-agent ARGS --endpoint <the test's host agent>` (no --endpoint when `endpoint` is null). */
function cli(args: string[], opts: { endpoint?: string | null; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  const endpoint = opts.endpoint === undefined ? host.address : opts.endpoint;
  return exec(HOST_AGENT_BIN, endpoint === null ? args : [...args, '--endpoint', endpoint], {
    PASSTHRU_HOST_ENDPOINT: '',
    ...opts.env,
  });
}

/** `storage-sim ARGS --endpoint <the test's array>`, which must succeed. */
async function array(args: string[]): Promise<string> {
  const r = await exec(BIN.storageSim, [...args, '--endpoint', sim.address]);
  expect(r.code, `storage-sim ${args.join(' ')}: ${r.stderr}`).to.equal(0);
  return r.stdout;
}

function describeRun(args: string[], r: Run): string {
  return `host-agent ${args.join(' ')} exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
}

/** Runs a command that must succeed; returns its stdout. */
async function ok(args: string[]): Promise<string> {
  const r = await cli(args);
  expect(r.code, describeRun(args, r)).to.equal(0);
  expect(r.stderr, describeRun(args, r)).to.equal('');
  return r.stdout;
}

/** Runs a command with --json that must succeed; returns the one JSON document it printed. */
async function okJson(args: string[]): Promise<any> {
  return JSON.parse(await ok([...args, '--json']));
}

/** Runs a command that must fail with `code`; returns its stderr (stdout must be empty). */
async function fails(args: string[], code: number, opts: { endpoint?: string | null } = {}): Promise<string> {
  const r = await cli(args, opts);
  expect(r.code, describeRun(args, r)).to.equal(code);
  expect(r.stdout, describeRun(args, r)).to.equal('');
  return r.stderr;
}

/** The JSON lines a --watch / --wait --json printed. */
function jsonLines(stdout: string): any[] {
  return stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l));
}

/** The ServiceError an AdminService call fails with. */
async function rpcError(call: Promise<unknown>): Promise<ServiceError> {
  try {
    await call;
  } catch (err) {
    return err as ServiceError;
  }
  throw new Error('the call succeeded');
}

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };
  server.close();
  await once(server, 'close');
  return port;
}

// What --json must print for what AdminService answers (proto3 JSON, enum names, every field).
const nodeJson = (n: Node) => ({ ...n, state: nodeStateToJSON(n.state) });
const vmJson = (v: Vm) => ({ ...v, guestOs: guestOsToJSON(v.guestOs), state: vmStateToJSON(v.state) });
const groupJson = (g: Group) => ({
  ...g,
  kind: groupKindToJSON(g.kind),
  resources: g.resources.map((r) => ({ ...r, state: resourceStateToJSON(r.state) })),
});
const diskJson = (d: Disk) => ({
  ...d,
  sizeBytes: Number(d.sizeBytes),
  address: d.address ? { ...d.address } : null,
  sharing: diskSharingToJSON(d.sharing),
  resourceState: resourceStateToJSON(d.resourceState),
});

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** A table row: these cells in order, two or more spaces apart. */
const row = (...cells: string[]): RegExp => new RegExp(`^${cells.map(escape).join('\\s{2,}')}(\\s|$)`, 'm');

describe('host-agent admin CLI (e2e)', function () {
  this.timeout(60_000);

  before(async function () {
    this.timeout(180_000);
    if (!existsSync(join(ROOT, 'dist', 'host-agent', 'admin-cli.js'))) {
      // The test command builds first; this is for running this file alone on a clean tree.
      spawnSync('npx', ['tsc', '-p', '.'], { cwd: ROOT, stdio: 'inherit' });
    }
    dir = tempDir('passthru-host-cli-');
    sim = await startStorageSim(join(dir.path, 'array'), ['--enable-faults', '--log-level', 'warn']);
    host = await startService(
      HOST_AGENT_BIN,
      ['serve', '--listen', '127.0.0.1:0', '--storage', sim.address, '--data-dir', join(dir.path, 'host'), '--cluster', CLUSTER_FILE, '--log-level', 'warn'],
      { timeoutMs: 30_000 },
    );
    admin = connect(AdminServiceClient, host.address, { timeoutMs: 10_000 });
  });

  after(async function () {
    this.timeout(30_000);
    admin?.close();
    await host?.stop();
    await sim?.stop();
    dir?.remove();
  });

  describe('help and usage', () => {
    it('host-agent --help exits 0, lists every command and documents the exit codes, --json and the endpoint variable', async () => {
      const out = await ok(['--help']);
      for (const cmd of [
        'serve',
        'cluster',
        'groups',
        'vms',
        'disks',
        'ops',
        'op',
        'check',
        'fail-node',
        'recover-node',
        'move-group',
        'add-available-disk',
        'remove-available-disk',
        'vm',
        'node',
      ]) {
        expect(out).to.match(new RegExp(`^  ${cmd}\\b`, 'm'), cmd);
      }
      expect(out).to.match(/Exit codes:/);
      expect(out).to.match(/3\s+NOT_FOUND/);
      expect(out).to.match(/8\s+UNAVAILABLE or DEADLINE_EXCEEDED/);
      expect(out).to.include('PASSTHRU_HOST_ENDPOINT');
      expect(out).to.include('--json');
    });

    it('a leaf command --help names --endpoint, --timeout, --json and --request-id', async () => {
      const out = await ok(['vm', 'create', '--help']);
      for (const opt of ['--os', '--node', '--name', '--ha', '--controllers', '--locations', '--endpoint', '--timeout', '--json', '--request-id']) {
        expect(out).to.include(opt);
      }
    });

    it('serve --help still works next to the admin commands', async () => {
      const out = await ok(['serve', '--help']);
      for (const opt of ['--listen', '--storage', '--data-dir', '--cluster']) expect(out).to.include(opt);
    });

    it('an unknown option is a usage error: exit 2 with commander\'s message on stderr', async () => {
      const stderr = await fails(['vms', '--bogus'], 2);
      expect(stderr).to.match(/unknown option '--bogus'/);
    });

    it('a --kind or --state that is not a known word is a usage error: exit 2 listing the valid ones', async () => {
      expect(await fails(['groups', '--kind', 'pets'], 2)).to.match(/cluster, available, vm, temporary/);
      expect(await fails(['ops', '--state', 'done'], 2)).to.match(/running, rolling_back, succeeded, failed/);
      expect(await fails(['node', 'caps', 'node2', '--hot-add', 'maybe'], 2)).to.match(/on, off/);
    });

    it('a group command without its subcommand, or a missing argument, is a usage error: exit 2', async () => {
      const r = await cli(['vm'], { endpoint: null });
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/Usage: host-agent vm/);
      expect((await cli(['move-group', 'Available Storage'])).code).to.equal(2);
      expect((await cli(['vm', 'create', 'vm7', '--node', 'node1'])).code).to.equal(2); // no --os
    });

    it('ops --watch with --limit is a usage error: exit 2', async () => {
      expect(await fails(['ops', '--watch', 'op-x', '--limit', '3'], 2)).to.match(/--watch follows one operation/);
    });
  });

  describe('reading the cluster', () => {
    it('cluster prints name, serving, Available Storage owner, counts and a node table matching GetCluster', async () => {
      const c = await admin.getCluster({});
      const out = await ok(['cluster']);
      expect(out).to.match(/^Cluster:\s+lab$/m);
      expect(out).to.match(/^Serving:\s+yes$/m);
      expect(out).to.match(new RegExp(`^Available Storage owner:\\s+${c.availableStorageOwner}$`, 'm'));
      expect(out).to.match(new RegExp(`^VMs:\\s+${c.vmCount}$`, 'm'));
      expect(out).to.match(/^Disks:\s+0$/m);
      expect(out).to.match(/^Operations in flight:\s+0$/m);
      expect(out).to.match(row('NODE', 'STATE', 'INITIATOR', 'HYPERVISOR', 'HOT-ADD'));
      expect(c.nodes).to.have.length(3);
      for (const n of c.nodes) expect(out).to.match(row(n.name, 'up', n.initiator, 'on', 'on'));
    });

    it('cluster --json is GetCluster with enum names and every field', async () => {
      const c = await admin.getCluster({});
      const j = await okJson(['cluster']);
      expect(j).to.deep.equal({ ...c, nodes: c.nodes.map(nodeJson) });
      expect(j).to.include({ name: 'lab', availableStorageOwner: 'node1', vmCount: 4, serving: true });
      expect(j.nodes[0].state).to.equal('NODE_STATE_UP');
    });

    it('$PASSTHRU_HOST_ENDPOINT is the default endpoint; --endpoint overrides it', async () => {
      const viaEnv = await cli(['cluster', '--json'], { endpoint: null, env: { PASSTHRU_HOST_ENDPOINT: host.address } });
      expect(viaEnv.code, viaEnv.stderr).to.equal(0);
      expect(JSON.parse(viaEnv.stdout).name).to.equal('lab');
      const override = await cli(['cluster', '--json'], { env: { PASSTHRU_HOST_ENDPOINT: '127.0.0.1:1' } });
      expect(override.code, override.stderr).to.equal(0);
    });

    it('groups prints every group with kind, owner and VM, matching ListGroups', async () => {
      const { groups } = await admin.listGroups({ kind: 0 });
      const out = await ok(['groups']);
      expect(out).to.match(row('GROUP / RESOURCE', 'KIND', 'OWNER', 'VM', 'STATE', 'SERIAL', 'MOUNT'));
      expect(groups.map((g) => g.name)).to.include.members(['Cluster Group', 'Available Storage', 'Virtual Machine web1', 'Virtual Machine scratch1']);
      const kindWord: Record<string, string> = {
        GROUP_KIND_CLUSTER: 'cluster',
        GROUP_KIND_AVAILABLE_STORAGE: 'available',
        GROUP_KIND_VM: 'vm',
      };
      for (const g of groups) expect(out).to.match(row(g.name, kindWord[groupKindToJSON(g.kind)]!, g.ownerNode, g.vmId || '-'));
    });

    it('groups --json is ListGroups; --kind narrows it to one kind', async () => {
      const all = await admin.listGroups({ kind: 0 });
      expect(await okJson(['groups'])).to.deep.equal({ groups: all.groups.map(groupJson) });
      const vms = await okJson(['groups', '--kind', 'vm']);
      expect(vms.groups.map((g: { name: string }) => g.name)).to.have.members([
        'Virtual Machine web1',
        'Virtual Machine db1',
        'Virtual Machine build1',
        'Virtual Machine scratch1',
      ]);
      for (const g of vms.groups) expect(g.kind).to.equal('GROUP_KIND_VM');
      const text = await ok(['groups', '--kind', 'cluster']);
      expect(text).to.match(row('Cluster Group', 'cluster', 'node1', '-'));
      expect(text).not.to.include('Virtual Machine');
    });

    it('vms prints id, name, guest OS, state, HA, node, SCSI shape and group, matching ListVms', async () => {
      const { vms } = await admin.listVms({ node: '' });
      const out = await ok(['vms']);
      expect(out).to.match(row('ID', 'NAME', 'GUEST OS', 'STATE', 'HA', 'NODE', 'SCSI', 'GROUP'));
      expect(vms).to.have.length(4);
      expect(out).to.match(row('vm1', 'web1', 'windows', 'running', 'yes', 'node1', '4x64', 'Virtual Machine web1'));
      expect(out).to.match(row('vm4', 'scratch1', 'linux', 'running', 'no', 'node3', '1x2', 'Virtual Machine scratch1'));
      expect(await okJson(['vms'])).to.deep.equal({ vms: vms.map(vmJson) });
    });

    it('vms --node lists only that node\'s VMs; an unknown node is NOT_FOUND (exit 3)', async () => {
      const { vms } = await okJson(['vms', '--node', 'node2']);
      expect(vms.map((v: { id: string }) => v.id)).to.deep.equal(['vm2', 'vm3']);
      const stderr = await fails(['vms', '--node', 'node9'], 3);
      expect(stderr).to.match(/^host-agent: NOT_FOUND: .*node9/);
    });

    it('disks and ops say there is nothing yet; check finds no violations (exit 0)', async () => {
      expect(await ok(['disks'])).to.equal('no disks\n');
      expect(await okJson(['disks'])).to.deep.equal({ disks: [] });
      expect(await ok(['ops'])).to.equal('no operations\n');
      expect(await okJson(['ops'])).to.deep.equal({ operations: [] });
      expect(await ok(['check'])).to.equal('no violations\n');
      expect(await okJson(['check'])).to.deep.equal({ violations: [] });
    });
  });

  describe('Available Storage', () => {
    let opId: string;
    let serial: string;

    before(async () => {
      await array(['lun', 'create', '/vol/x/l1', '--size', '64MiB', '--os-type', 'linux']);
    });

    it('add-available-disk LUN --wait prints the operation, a line per step and its success; exit 0', async () => {
      const out = await ok(['add-available-disk', '/vol/x/l1', '--wait']);
      const m = /^operation (\S+) \(add_available_disk\) (running|succeeded)$/m.exec(out);
      expect(m, out).to.not.equal(null);
      opId = m![1]!;
      const op = (await admin.getOperation({ operationId: opId })).operation!;
      expect(operationStateToJSON(op.state)).to.equal('OPERATION_STATE_SUCCEEDED');
      serial = op.result!.serial;
      for (const s of op.steps) expect(out, s.name).to.match(new RegExp(`^\\S+Z\\s+${escape(s.name)}\\s+(finished|skipped)`, 'm'));
      expect(out).to.match(new RegExp(`^operation ${opId} succeeded: serial ${serial}, LUN id \\d+, /vol/x/l1, 64 MiB\\n$`, 'm'));
    });

    it('groups --kind available shows "Cluster Disk 1" Offline with the LUN\'s serial, as ListGroups does', async () => {
      const out = await ok(['groups', '--kind', 'available']);
      expect(out).to.match(row('Available Storage', 'available', 'node1', '-'));
      expect(out).to.match(new RegExp(`^  Cluster Disk 1\\s{2,}offline\\s{2,}${serial}\\s{2,}-$`, 'm'));
      const { groups } = await admin.listGroups({ kind: 2 });
      expect(await okJson(['groups', '--kind', 'available'])).to.deep.equal({ groups: groups.map(groupJson) });
      expect(groups[0]!.resources.map((r) => r.name)).to.deep.equal(['Cluster Disk 1']);
    });

    it('ops --watch OP prints each of its steps and its final state; exit 0', async () => {
      const op = (await admin.getOperation({ operationId: opId })).operation!;
      const out = await ok(['ops', '--watch', opId]);
      const lines = out.trimEnd().split('\n');
      expect(lines).to.have.length(op.steps.length + 1);
      op.steps.forEach((s, i) => {
        expect(lines[i]).to.match(new RegExp(`^${escape(s.endTime!.toISOString())}\\s+${escape(s.name)}\\s+(finished|skipped)`));
      });
      expect(lines.at(-1)).to.match(new RegExp(`^operation ${opId} succeeded`));
    });

    it('ops --watch OP --json prints one WatchOperation message per line, ending SUCCEEDED', async () => {
      const msgs = jsonLines(await ok(['ops', '--watch', opId, '--json']));
      expect(msgs.length).to.be.greaterThan(0);
      const last = msgs.at(-1);
      expect(last.operation).to.include({ id: opId, kind: 'OPERATION_KIND_ADD_AVAILABLE_DISK', state: 'OPERATION_STATE_SUCCEEDED', committed: true });
      expect(last.operation.result).to.include({ serial, lunPath: '/vol/x/l1', sizeBytes: 64 * MiB });
      expect(last.operation.error).to.equal(null);
    });

    it('ops lists the operation as ListOperations does; --state and --vm filter', async () => {
      const { operations } = await admin.listOperations({ vmId: '', state: 0, pageSize: 100, pageToken: '' });
      const out = await ok(['ops']);
      expect(out).to.match(row('ID', 'KIND', 'VM', 'MOUNT', 'STATE', 'COMMITTED', 'ERROR'));
      expect(out).to.match(row(opId, 'add_available_disk', '-', '-', 'succeeded', 'yes', '-'));
      const j = await okJson(['ops']);
      expect(j.operations.map((o: { id: string }) => o.id)).to.deep.equal(operations.map((o) => o.id));
      expect(j.operations[0]).to.include({ id: opId, kind: operationKindToJSON(operations[0]!.kind), state: 'OPERATION_STATE_SUCCEEDED', requestId: operations[0]!.requestId });
      expect((await okJson(['ops', '--state', 'succeeded'])).operations).to.have.length(operations.length);
      expect(await okJson(['ops', '--state', 'failed'])).to.deep.equal({ operations: [] });
      expect(await ok(['ops', '--vm', 'vm2'])).to.equal('no operations\n');
    });

    it('op OP shows its fields and a steps table, as GetOperation does', async () => {
      const op = (await admin.getOperation({ operationId: opId })).operation!;
      const out = await ok(['op', opId]);
      expect(out).to.match(new RegExp(`^Operation:\\s+${opId}$`, 'm'));
      expect(out).to.match(/^Kind:\s+add_available_disk$/m);
      expect(out).to.match(/^State:\s+succeeded$/m);
      expect(out).to.match(/^Committed:\s+yes$/m);
      expect(out).to.match(new RegExp(`^Request ID:\\s+${escape(op.requestId)}$`, 'm'));
      expect(out).to.match(row('STEP', 'STATE', 'STARTED', 'ENDED', 'MESSAGE'));
      for (const s of op.steps) expect(out).to.match(row(s.name, 'done', s.startTime!.toISOString(), s.endTime!.toISOString()));
      const { operation } = await okJson(['op', opId]);
      expect(operation).to.include({
        id: op.id,
        kind: 'OPERATION_KIND_ADD_AVAILABLE_DISK',
        requestId: op.requestId,
        state: 'OPERATION_STATE_SUCCEEDED',
        createTime: op.createTime!.toISOString(),
        updateTime: op.updateTime!.toISOString(),
        committed: true,
      });
      expect(operation.steps).to.deep.equal(
        op.steps.map((s) => ({ name: s.name, state: stepStateToJSON(s.state), startTime: s.startTime!.toISOString(), endTime: s.endTime!.toISOString(), message: s.message })),
      );
    });

    it('the same LUN again is ALREADY_EXISTS (exit 4); a LUN not on the array is NOT_FOUND (exit 3); an unknown operation too', async () => {
      expect(await fails(['add-available-disk', '/vol/x/l1'], 4)).to.match(/^host-agent: ALREADY_EXISTS: /);
      expect(await fails(['add-available-disk', '/vol/x/nope'], 3)).to.match(/^host-agent: NOT_FOUND: /);
      expect(await fails(['op', 'op-nope'], 3)).to.match(/^host-agent: NOT_FOUND: /);
      expect(await fails(['ops', '--watch', 'op-nope'], 3)).to.match(/^host-agent: NOT_FOUND: /);
    });

    it('a --request-id is sent as given and printed under --json; repeating it returns the first operation', async () => {
      await array(['lun', 'create', '/vol/x/l2', '--size', '64MiB', '--os-type', 'linux']);
      const first = await okJson(['add-available-disk', '/vol/x/l2', '--request-id', 'cli-add-l2']);
      expect(first.requestId).to.equal('cli-add-l2');
      expect(first.operation).to.include({ requestId: 'cli-add-l2', kind: 'OPERATION_KIND_ADD_AVAILABLE_DISK' });
      const again = await okJson(['add-available-disk', '/vol/x/l2', '--request-id', 'cli-add-l2']);
      expect(again.operation.id).to.equal(first.operation.id);
      // Let it end before removing the LUN (another operation on it would be ABORTED).
      expect(await ok(['ops', '--watch', first.operation.id])).to.match(/ succeeded/);
      // Without --request-id a fresh one is made, and shown.
      const msgs = jsonLines(await ok(['remove-available-disk', '/vol/x/l2', '--wait', '--json']));
      expect(msgs[0].requestId).to.match(UUID);
      expect(msgs[0].operation.kind).to.equal('OPERATION_KIND_REMOVE_AVAILABLE_DISK');
      expect(msgs.at(-1).operation.state).to.equal('OPERATION_STATE_SUCCEEDED');
      const { groups } = await okJson(['groups', '--kind', 'available']);
      expect(groups[0].resources.map((r: { name: string }) => r.name)).to.deep.equal(['Cluster Disk 1']);
    });

    it('an operation that fails: --wait prints the failure and exits with its status class (RESOURCE_EXHAUSTED: 6)', async () => {
      await array(['lun', 'create', '/vol/x/l3', '--size', '64MiB', '--os-type', 'linux']);
      await array(['fault', 'inject', 'MapLun', '--code', 'RESOURCE_EXHAUSTED', '--message', 'injected: no LUN ids left']);
      try {
        const args = ['add-available-disk', '/vol/x/l3', '--wait'];
        const r = await cli(args);
        expect(r.code, describeRun(args, r)).to.equal(6);
        const opLine = /^operation (\S+) \(add_available_disk\)/m.exec(r.stdout);
        expect(opLine, r.stdout).to.not.equal(null);
        // Its step lines: live events, or (if it ended before the watch began) each step's last state.
        expect(r.stdout).to.match(/lun\.map\s+(failed|undone)\s/);
        expect(r.stdout).to.match(new RegExp(`^operation ${opLine![1]} failed: RESOURCE_EXHAUSTED: .*no LUN ids left`, 'm'));
        expect(r.stderr).to.match(new RegExp(`^host-agent: operation ${opLine![1]} failed: RESOURCE_EXHAUSTED: `, 'm'));
        // Watching it again says the same, and so does ops --state failed.
        const again = await cli(['ops', '--watch', opLine![1]!]);
        expect(again.code).to.equal(6);
        const failed = await okJson(['ops', '--state', 'failed']);
        expect(failed.operations.map((o: { id: string }) => o.id)).to.deep.equal([opLine![1]]);
        expect(failed.operations[0].error).to.include({ code: Code.RESOURCE_EXHAUSTED, codeName: 'RESOURCE_EXHAUSTED' });
        expect(await ok(['ops', '--state', 'failed'])).to.match(
          new RegExp(`^${opLine![1]}\\s+add_available_disk\\s+-\\s+-\\s+failed\\s+no\\s+RESOURCE_EXHAUSTED: .*no LUN ids left$`, 'm'),
        );
      } finally {
        await array(['fault', 'clear']);
      }
    });

    it('check finds a LUN map removed behind the agent\'s back (exit 1, a table), and none once it is back', async () => {
      const maps = JSON.parse(await array(['maps', '--lun', '/vol/x/l1', '--igroup', 'node2', '--json'])).maps;
      expect(maps).to.have.length(1);
      await array(['unmap', '/vol/x/l1', 'node2']);
      try {
        const r = await cli(['check']);
        expect(r.code, describeRun(['check'], r)).to.equal(1);
        expect(r.stderr).to.equal('');
        expect(r.stdout).to.match(row('KIND', 'SUBJECT', 'DESCRIPTION'));
        const { violations } = await admin.checkInvariants({});
        expect(violations.length).to.be.greaterThan(0);
        for (const v of violations) expect(r.stdout).to.include(v.kind);
        const j = await cli(['check', '--json']);
        expect(j.code).to.equal(1);
        expect(JSON.parse(j.stdout)).to.deep.equal({ violations: violations.map((v) => ({ ...v })) });
      } finally {
        await array(['map', '/vol/x/l1', 'node2', '--lun-id', String(maps[0].lunId)]);
      }
      expect(await ok(['check'])).to.equal('no violations\n');
    });
  });

  describe('VMs and nodes', () => {
    it('vm stop vm1 and vm start vm1 change its state, as ListVms then says', async () => {
      expect(await ok(['vm', 'stop', 'vm1'])).to.equal('VM vm1 (web1) is off on node node1\n');
      expect(vmStateToJSON((await admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!.state)).to.equal('VM_STATE_OFF');
      expect(await ok(['vms', '--node', 'node1'])).to.match(row('vm1', 'web1', 'windows', 'off'));
      const started = await okJson(['vm', 'start', 'vm1']);
      expect(started.requestId).to.match(UUID);
      expect(started.vm).to.include({ id: 'vm1', state: 'VM_STATE_RUNNING', node: 'node1' });
      expect(vmStateToJSON((await admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!.state)).to.equal('VM_STATE_RUNNING');
    });

    it('node caps node2 --hot-add off, then on', async () => {
      const off = await ok(['node', 'caps', 'node2', '--hot-add', 'off']);
      expect(off).to.match(/^Node:\s+node2$/m);
      expect(off).to.match(/^Hot add\/remove:\s+off$/m);
      expect(off).to.match(/^Hypervisor:\s+on$/m);
      let n = (await admin.listNodes({})).nodes.find((x) => x.name === 'node2')!;
      expect(n).to.include({ hotAddSupported: false, hypervisorEnabled: true });
      expect(await ok(['cluster'])).to.match(row('node2', 'up', n.initiator, 'on', 'off'));
      const on = await okJson(['node', 'caps', 'node2', '--hot-add', 'on']);
      n = (await admin.listNodes({})).nodes.find((x) => x.name === 'node2')!;
      expect(on.node).to.deep.equal(nodeJson(n));
      expect(on.node.hotAddSupported).to.equal(true);
    });

    it('vm create makes a VM (the same again is idempotent; other settings are ALREADY_EXISTS, exit 4)', async () => {
      const v = await okJson(['vm', 'create', 'vm9', '--os', 'linux', '--node', 'node3', '--name', 'extra1', '--controllers', '2', '--locations', '8']);
      expect(v.vm).to.include({ id: 'vm9', name: 'extra1', guestOs: 'GUEST_OS_LINUX', state: 'VM_STATE_RUNNING', ha: false, node: 'node3', scsiControllers: 2, locationsPerController: 8 });
      expect(await ok(['vms', '--node', 'node3'])).to.match(row('vm9', 'extra1', 'linux', 'running', 'no', 'node3', '2x8', 'Virtual Machine extra1'));
      const again = await ok(['vm', 'create', 'vm9', '--os', 'linux', '--node', 'node3', '--name', 'extra1', '--controllers', '2', '--locations', '8']);
      expect(again).to.match(/^VM:\s+vm9$/m);
      expect(await fails(['vm', 'create', 'vm9', '--os', 'windows', '--node', 'node3', '--name', 'extra1'], 4)).to.match(/^host-agent: ALREADY_EXISTS: /);
    });

    it('an unknown node is NOT_FOUND: exit 3 with the server\'s message on stderr', async () => {
      const err = await rpcError(admin.setHostCapabilities({ requestId: 'probe-1', node: 'node9', hotAddSupported: false }));
      expect(err.code).to.equal(Code.NOT_FOUND);
      const stderr = await fails(['node', 'caps', 'node9', '--hot-add', 'off'], 3);
      expect(stderr).to.equal(`host-agent: NOT_FOUND: ${err.details}\n`);
      expect(await fails(['vm', 'create', 'vm8', '--os', 'linux', '--node', 'node9'], 3)).to.equal(`host-agent: NOT_FOUND: ${err.details}\n`);
      expect(await fails(['vm', 'stop', 'vm99'], 3)).to.match(/^host-agent: NOT_FOUND: .*vm99/);
    });

    it('a bad value the server refuses is INVALID_ARGUMENT: exit 2', async () => {
      expect(await fails(['vm', 'create', 'Bad_Id!', '--os', 'linux', '--node', 'node1'], 2)).to.match(/^host-agent: INVALID_ARGUMENT: /);
    });

    it('an endpoint nobody serves is UNAVAILABLE: exit 8 with a hint', async () => {
      const port = await closedPort();
      const stderr = await fails(['cluster'], 8, { endpoint: `127.0.0.1:${port}` });
      expect(stderr).to.match(/^host-agent: UNAVAILABLE: /);
      expect(stderr).to.include(`is host-agent serving at 127.0.0.1:${port}?`);
      expect(await fails(['ops', '--watch', 'op-x'], 8, { endpoint: `127.0.0.1:${port}` })).to.match(/^host-agent: UNAVAILABLE: /);
    });
  });

  describe('disks and failover', () => {
    let diskSerial: string;

    it('disks lists a disk vm1 got (through its GuestService, followed with ops --watch) with size, SCSI slot, LUN id and state, as ListDisks does', async () => {
      const vm1 = (await admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!;
      // The array takes its time creating the LUN, so the operation is still running below.
      await array(['fault', 'inject', 'CreateLun', '--delay-ms', '4000']);
      const guest = connect(GuestServiceClient, vm1.guestEndpoint, { timeoutMs: 10_000 });
      let opId: string;
      try {
        const r = await guest.createDisk({ requestId: 'cli-e2e-e', mountPath: 'E:', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_SHARED });
        opId = r.operation!.id;
      } finally {
        guest.close();
      }
      // Stopping a VM with an operation in flight is ABORTED: exit 9.
      expect(await fails(['vm', 'stop', 'vm1'], 9)).to.match(/^host-agent: ABORTED: .*in flight/);
      const watched = await ok(['ops', '--watch', opId]);
      expect(watched).to.match(/lun\.create\s+started/);
      expect(watched).to.match(/lun\.create\s+finished/);
      expect(watched).to.match(/scsi\.attach\s+finished/);
      expect(watched).to.match(new RegExp(`^operation ${opId} succeeded: serial \\S+, SCSI 0:0, LUN id \\d+`, 'm'));

      const { disks } = await admin.listDisks({ vmId: '' });
      expect(disks).to.have.length(1);
      const d = disks[0]!;
      diskSerial = d.serial;
      const out = await ok(['disks']);
      expect(out).to.match(row('VM', 'MOUNT', 'SERIAL', 'SIZE', 'SCSI', 'LUN ID', 'SHARING', 'STATE', 'MOUNTED'));
      expect(out).to.match(row('vm1', 'E:', d.serial, '64 MiB', `${d.address!.controller}:${d.address!.location}`, String(d.lunId), 'shared', 'online', 'no'));
      expect(await okJson(['disks'])).to.deep.equal({ disks: disks.map(diskJson) });
      expect(await okJson(['disks', '--vm', 'vm1'])).to.deep.equal({ disks: disks.map(diskJson) });
      expect(await ok(['disks', '--vm', 'vm2'])).to.equal('no disks on VM vm2\n');
      expect((await okJson(['ops', '--vm', 'vm1'])).operations.map((o: { id: string }) => o.id)).to.deep.equal([opId]);
      expect(await ok(['cluster'])).to.match(/^Disks:\s+1$/m);
    });

    let target: string;

    it('fail-node node1 moves web1\'s group (with its disk) and Available Storage to another node and prints what moved where', async () => {
      const out = await ok(['fail-node', 'node1', '--request-id', 'cli-fail-node1']);
      expect(out).to.match(/^node node1 is down$/m);
      expect(out).to.match(/^settled operations: none$/m);
      const m = /^moved group Virtual Machine web1 from node1 to (\S+) \(VM vm1 running\); reservations taken over for (\S+)$/m.exec(out);
      expect(m, out).to.not.equal(null);
      target = m![1]!;
      expect(m![2]).to.equal(diskSerial);
      expect(out).to.match(/^moved group Available Storage from node1 to \S+(; reservations taken over for .+)?$/m);
      expect(out).to.match(row('GROUP', 'FROM', 'TO', 'VM', 'VM STATE', 'DISKS'));
      expect(out).to.match(row('Virtual Machine web1', 'node1', target, 'vm1', 'running', diskSerial));
    });

    it('the same --request-id again returns the first answer; --json shows the request id, the node down and the moves', async () => {
      const j = await okJson(['fail-node', 'node1', '--request-id', 'cli-fail-node1']);
      expect(j.requestId).to.equal('cli-fail-node1');
      expect(j.node).to.include({ name: 'node1', state: 'NODE_STATE_DOWN' });
      expect(j.settledOperations).to.deep.equal([]);
      const web1 = j.moves.find((x: { group: string }) => x.group === 'Virtual Machine web1');
      expect(web1).to.deep.equal({ group: 'Virtual Machine web1', fromNode: 'node1', toNode: target, vmId: 'vm1', vmRunning: true, serials: [diskSerial] });
      const as = j.moves.find((x: { group: string }) => x.group === 'Available Storage');
      expect(as).to.include({ fromNode: 'node1', vmId: '', vmRunning: false });
      expect(as.toNode).to.not.equal('node1');
    });

    it('vms then shows vm1 running on the new node; cluster shows node1 down and the new Available Storage owner', async () => {
      expect(await ok(['vms'])).to.match(row('vm1', 'web1', 'windows', 'running', 'yes', target, '4x64', 'Virtual Machine web1'));
      expect((await okJson(['vms', '--node', target])).vms.map((v: { id: string }) => v.id)).to.include('vm1');
      const c = await admin.getCluster({});
      const out = await ok(['cluster']);
      expect(out).to.match(new RegExp(`^Available Storage owner:\\s+${c.availableStorageOwner}$`, 'm'));
      expect(c.availableStorageOwner).to.not.equal('node1');
      expect(out).to.match(row('node1', 'down'));
      expect(await ok(['groups', '--kind', 'vm'])).to.match(row('Virtual Machine web1', 'vm', target, 'vm1'));
      expect(await ok(['disks', '--vm', 'vm1'])).to.match(row('vm1', 'E:', diskSerial, '64 MiB'));
    });

    it('moving a group to a down node is FAILED_PRECONDITION: exit 5', async () => {
      const stderr = await fails(['move-group', 'Virtual Machine web1', 'node1'], 5);
      expect(stderr).to.match(/^host-agent: FAILED_PRECONDITION: /);
    });

    it('recover-node node1 brings it up again', async () => {
      const out = await ok(['recover-node', 'node1']);
      expect(out).to.match(/^node node1 is up$/m);
      expect(out).to.match(/^(no VMs started|started \d+ VMs?: .+)$/m);
      expect(nodeStateToJSON((await admin.listNodes({})).nodes.find((n) => n.name === 'node1')!.state)).to.equal('NODE_STATE_UP');
      const j = await okJson(['recover-node', 'node1']);
      expect(j.requestId).to.match(UUID);
      expect(j.node).to.include({ name: 'node1', state: 'NODE_STATE_UP' });
      expect(j.startedVms).to.be.an('array');
    });

    it('move-group "Virtual Machine web1" node1 moves it back', async () => {
      const out = await ok(['move-group', 'Virtual Machine web1', 'node1']);
      expect(out).to.equal(`moved group Virtual Machine web1 from ${target} to node1 (VM vm1 running); reservations taken over for ${diskSerial}\n`);
      expect(await ok(['vms', '--node', 'node1'])).to.match(row('vm1', 'web1', 'windows', 'running', 'yes', 'node1'));
      const d = (await admin.listDisks({ vmId: 'vm1' })).disks[0]!;
      expect(resourceStateToJSON(d.resourceState)).to.equal('RESOURCE_STATE_ONLINE');
      const j = await okJson(['move-group', 'Available Storage', 'node1']);
      expect(j.requestId).to.match(UUID);
      expect(j.move).to.include({ group: 'Available Storage', toNode: 'node1' });
      expect((await admin.getCluster({})).availableStorageOwner).to.equal('node1');
    });

    it('moving a non-HA VM\'s group is FAILED_PRECONDITION (exit 5); an unknown group is NOT_FOUND (exit 3)', async () => {
      expect(await fails(['move-group', 'Virtual Machine build1', 'node1'], 5)).to.match(/^host-agent: FAILED_PRECONDITION: /);
      expect(await fails(['move-group', 'No Such Group', 'node1'], 3)).to.match(/^host-agent: NOT_FOUND: /);
      expect(await fails(['fail-node', 'node9'], 3)).to.match(/^host-agent: NOT_FOUND: /);
    });

    it('check finds no violations after all of it', async () => {
      expect(await ok(['check'])).to.equal('no violations\n');
    });
  });
});
