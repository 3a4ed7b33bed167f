/**
 * The storage-sim admin CLI end to end: the compiled `bin/storage-sim.js` run as a child
 * process against a real `storage-sim serve --enable-faults` on 127.0.0.1:0.
 */
import { execFile, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { expect } from 'chai';
import { BIN, ROOT, startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

const GiB = 1024 ** 3;
const IQN1 = 'iqn.1993-08.org.debian:01:e2e-host1';
const IQN2 = 'iqn.1993-08.org.debian:01:e2e-host2';
const IQN3 = 'iqn.1993-08.org.debian:01:e2e-host3';

let sim: ServiceProcess;
let dir: { path: string; remove(): void };

/** Runs `storage-sim ARGS` against the test array (via $PASSTHRU_STORAGE_ENDPOINT). */
function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [BIN.storageSim, ...args],
      { env: { ...process.env, PASSTHRU_STORAGE_ENDPOINT: sim?.address ?? '127.0.0.1:1', ...env }, timeout: 30_000 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

function describeRun(args: string[], r: Run): string {
  return `storage-sim ${args.join(' ')} exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`;
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
  const out = await ok([...args, '--json']);
  return JSON.parse(out);
}

/** Runs a command that must fail with `code`; returns its stderr (stdout must be empty). */
async function fails(args: string[], code: number, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const r = await cli(args, env);
  expect(r.code, describeRun(args, r)).to.equal(code);
  expect(r.stdout, describeRun(args, r)).to.equal('');
  return r.stderr;
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

describe('storage-sim admin CLI (e2e)', function () {
  before(async function () {
    this.timeout(180_000);
    if (!existsSync(join(ROOT, 'dist', 'storage-sim', 'cli.js'))) {
      // The test command builds first; this is for running this file alone on a clean tree.
      spawnSync('npx', ['tsc', '-p', '.'], { cwd: ROOT, stdio: 'inherit' });
    }
    dir = tempDir('passthru-storage-cli-');
    sim = await startStorageSim(dir.path, ['--enable-faults', '--log-level', 'warn']);
  });

  after(async function () {
    if (sim && sim.child.exitCode === null && sim.child.signalCode === null) {
      const exited = once(sim.child, 'exit');
      process.kill(sim.pid, 'SIGTERM');
      await exited;
    }
    dir?.remove();
  });

  describe('help', () => {
    it('storage-sim --help exits 0, lists every command and documents the exit codes and --json', async () => {
      const out = await ok(['--help']);
      for (const cmd of ['serve', 'array', 'lun', 'igroup', 'map', 'unmap', 'maps', 'fault']) {
        expect(out).to.match(new RegExp(`^  ${cmd}\\b`, 'm'), cmd);
      }
      expect(out).to.match(/Exit codes:/);
      expect(out).to.match(/3\s+NOT_FOUND/);
      expect(out).to.match(/8\s+UNAVAILABLE or DEADLINE_EXCEEDED/);
      expect(out).to.match(/PASSTHRU_STORAGE_ENDPOINT/);
      expect(out).to.match(/--json/);
    });

    it('storage-sim serve --help exits 0 and names its options', async () => {
      const out = await ok(['serve', '--help']);
      for (const opt of ['--listen', '--data-dir', '--pool', '--enable-faults']) expect(out).to.include(opt);
    });

    it('storage-sim lun --help and igroup --help exit 0 and list their subcommands', async () => {
      const lun = await ok(['lun', '--help']);
      for (const cmd of ['create', 'list', 'show', 'resize', 'online', 'offline', 'delete']) {
        expect(lun).to.match(new RegExp(`^  ${cmd}\\b`, 'm'), cmd);
      }
      const igroup = await ok(['igroup', '--help']);
      for (const cmd of ['create', 'list', 'show', 'add', 'remove', 'delete']) {
        expect(igroup).to.match(new RegExp(`^  ${cmd}\\b`, 'm'), cmd);
      }
    });

    it('a leaf command --help names --endpoint, --timeout, --json and --request-id', async () => {
      const out = await ok(['lun', 'create', '--help']);
      for (const opt of ['--size', '--os-type', '--thin', '--endpoint', '--timeout', '--json', '--request-id']) {
        expect(out).to.include(opt);
      }
    });

    it('a group command without its subcommand is a usage error: exit 2', async () => {
      const r = await cli(['lun']);
      expect(r.code).to.equal(2);
      expect(r.stderr).to.match(/Usage: storage-sim lun/);
    });

    it('an unknown option is a usage error: exit 2 with commander\'s message on stderr', async () => {
      const stderr = await fails(['lun', 'list', '--bogus'], 2);
      expect(stderr).to.match(/unknown option '--bogus'/);
    });

    it('an os type that is not a known word is a usage error: exit 2 listing the valid ones', async () => {
      const stderr = await fails(['lun', 'create', '/vol/e2e/x', '--size', '1GiB', '--os-type', 'bsd'], 2);
      expect(stderr).to.match(/windows, hyper_v, linux, vmware/);
    });
  });

  describe('array', () => {
    it('array show prints the name, serial prefix, limits and a pool table with human-readable sizes', async () => {
      const out = await ok(['array', 'show']);
      expect(out).to.match(/^Name:\s+sim1$/m);
      expect(out).to.match(/^Serial prefix:\s+PTSM$/m);
      expect(out).to.match(/^LUN size:\s+4 MiB to 16 TiB$/m);
      expect(out).to.match(/^Faults enabled:\s+yes$/m);
      expect(out).to.match(/^POOL\s+CAPACITY\s+USED\s+AVAILABLE\s+USED%\s+LUNS$/m);
      expect(out).to.match(/^aggr1\s+64 TiB\s+\S+ \S?i?B\s+\S+ \S?i?B\s+/m);
    });

    it('array show --json gives limits and pool capacity, used and available as numbers of bytes', async () => {
      const a = await okJson(['array', 'show']);
      expect(a).to.include({ name: 'sim1', serialPrefix: 'PTSM', minLunSizeBytes: 4 * 1024 ** 2, faultsEnabled: true });
      expect(a.pools).to.have.length(1);
      const p = a.pools[0];
      expect(p.name).to.equal('aggr1');
      expect(p.capacityBytes).to.equal(64 * 1024 ** 4);
      expect(p.usedBytes + p.availableBytes).to.equal(p.capacityBytes);
    });

    it('--endpoint overrides $PASSTHRU_STORAGE_ENDPOINT', async () => {
      const r = await cli(['array', 'show', '--endpoint', sim.address, '--json'], { PASSTHRU_STORAGE_ENDPOINT: '127.0.0.1:1' });
      expect(r.code, r.stderr).to.equal(0);
      expect(JSON.parse(r.stdout).name).to.equal('sim1');
    });
  });

  describe('LUNs', () => {
    it('lun create --json creates a LUN: size in bytes, enums as words, a 12-character serial and an NAA-6 id', async () => {
      const { lun } = await okJson(['lun', 'create', '/vol/e2e/a', '--size', '10GiB', '--os-type', 'linux', '--thin', '--comment', 'owner=e2e']);
      expect(lun).to.include({
        path: '/vol/e2e/a',
        volume: 'e2e',
        name: 'a',
        sizeBytes: 10 * GiB,
        osType: 'linux',
        provisioning: 'thin',
        state: 'online',
        comment: 'owner=e2e',
        pool: 'aggr1',
        usedBytes: 0,
        mapped: false,
      });
      expect(lun.serial).to.match(/^PTSM[A-Za-z0-9]{8}$/);
      expect(lun.naaId).to.match(/^6[0-9a-f]{31}$/);
      expect(Date.parse(lun.createTime)).to.be.closeTo(Date.now(), 60_000);
    });

    it('lun create prints the new LUN as Key: value lines with its size human-readable (thick by default)', async () => {
      const out = await ok(['lun', 'create', '/vol/e2e/b', '--size', '1GiB', '--os-type', 'windows']);
      expect(out).to.match(/^Path:\s+\/vol\/e2e\/b$/m);
      expect(out).to.match(/^Serial:\s+PTSM\w{8}$/m);
      expect(out).to.match(/^NAA ID:\s+6[0-9a-f]{31}$/m);
      expect(out).to.match(/^Size:\s+1 GiB \(1073741824 bytes\)$/m);
      expect(out).to.match(/^Provisioning:\s+thick$/m);
      expect(out).to.match(/^Used:\s+1 GiB$/m);
    });

    it('lun create with the same path and parameters returns the existing LUN and exits 0', async () => {
      const first = await okJson(['lun', 'show', '/vol/e2e/a']);
      const again = await okJson(['lun', 'create', '/vol/e2e/a', '--size', '10GiB', '--os-type', 'linux', '--thin', '--comment', 'owner=e2e']);
      expect(again.lun.uuid).to.equal(first.lun.uuid);
      expect(again.lun.serial).to.equal(first.lun.serial);
    });

    it('--request-id is sent as the request id: a repeat replays the first answer, other parameters are INVALID_ARGUMENT', async () => {
      const args = ['lun', 'create', '/vol/e2e/rid', '--size', '8MiB', '--os-type', 'linux', '--request-id', 'e2e-rid-1'];
      const first = await okJson(args);
      const replay = await okJson(args);
      expect(replay.lun.uuid).to.equal(first.lun.uuid);
      const stderr = await fails(['lun', 'create', '/vol/e2e/rid2', '--size', '8MiB', '--os-type', 'linux', '--request-id', 'e2e-rid-1'], 2);
      expect(stderr).to.match(/^storage-sim: INVALID_ARGUMENT: /);
      await ok(['lun', 'delete', '/vol/e2e/rid']);
    });

    it('lun list follows every page and prints a table of path, serial, size, os type, provisioning, state, mapped and used', async () => {
      const out = await ok(['lun', 'list', '--prefix', '/vol/e2e/', '--page-size', '1']);
      const lines = out.trimEnd().split('\n');
      expect(lines[0]).to.match(/^PATH\s+SERIAL\s+SIZE\s+OS TYPE\s+PROVISIONING\s+STATE\s+MAPPED\s+USED$/);
      expect(lines.slice(1).map((l) => l.split(/\s+/)[0])).to.deep.equal(['/vol/e2e/a', '/vol/e2e/b']);
      expect(lines[1]).to.match(/^\/vol\/e2e\/a\s+PTSM\w{8}\s+10 GiB\s+linux\s+thin\s+online\s+no\s+0 B$/);
      expect(lines[2]).to.match(/^\/vol\/e2e\/b\s+PTSM\w{8}\s+1 GiB\s+windows\s+thick\s+online\s+no\s+1 GiB$/);
      // Columns line up: every row's serial starts where the SERIAL header does.
      const col = lines[0]!.indexOf('SERIAL');
      for (const l of lines.slice(1)) expect(l.slice(col, col + 4)).to.equal('PTSM');
    });

    it('lun list --json lists every LUN across pages in path order, sizes in bytes', async () => {
      const { luns } = await okJson(['lun', 'list', '--prefix', '/vol/e2e/', '--page-size', '1']);
      expect(luns.map((l: { path: string }) => l.path)).to.deep.equal(['/vol/e2e/a', '/vol/e2e/b']);
      expect(luns[1]).to.include({ sizeBytes: GiB, usedBytes: GiB, osType: 'windows', provisioning: 'thick' });
    });

    it('lun list --prefix with no LUNs under it says so (text) and gives an empty list (JSON)', async () => {
      expect(await ok(['lun', 'list', '--prefix', '/vol/none/'])).to.equal('no LUNs under /vol/none/\n');
      expect(await okJson(['lun', 'list', '--prefix', '/vol/none/'])).to.deep.equal({ luns: [] });
    });

    it('lun show by serial prints every field, that it is not mapped and that it has no reservation', async () => {
      const { lun } = await okJson(['lun', 'show', '/vol/e2e/a']);
      const out = await ok(['lun', 'show', lun.serial]);
      expect(out).to.match(new RegExp(`^UUID:\\s+${lun.uuid}$`, 'm'));
      expect(out).to.match(new RegExp(`^NAA ID:\\s+${lun.naaId}$`, 'm'));
      expect(out).to.match(/^Size:\s+10 GiB \(10737418240 bytes\)$/m);
      expect(out).to.match(/^OS type:\s+linux$/m);
      expect(out).to.match(/^State:\s+online$/m);
      expect(out).to.match(/^Comment:\s+owner=e2e$/m);
      expect(out).to.match(/^Mapped:\s+no$/m);
      expect(out).to.match(/^Maps:\nnot mapped$/m);
      expect(out).to.match(/^Holder:\s+none$/m);
    });

    it('lun show --json by uuid gives the LUN, its maps and its reservation', async () => {
      const byPath = await okJson(['lun', 'show', '/vol/e2e/a']);
      const byUuid = await okJson(['lun', 'show', byPath.lun.uuid]);
      expect(byUuid).to.deep.equal(byPath);
      expect(byUuid.maps).to.deep.equal([]);
      expect(byUuid.reservation).to.deep.equal({ generation: 0, registrations: [], holder: null });
    });

    it('lun resize grows the LUN and prints its new size; --json gives it in bytes', async () => {
      expect(await ok(['lun', 'resize', '/vol/e2e/b', '--size', '2GiB'])).to.equal('LUN /vol/e2e/b is 2 GiB (2147483648 bytes)\n');
      const { lun } = await okJson(['lun', 'resize', '/vol/e2e/b', '--size', '3GiB']);
      expect(lun).to.include({ path: '/vol/e2e/b', sizeBytes: 3 * GiB, usedBytes: 3 * GiB });
    });

    it('lun resize to a smaller size is INVALID_ARGUMENT: exit 2', async () => {
      const stderr = await fails(['lun', 'resize', '/vol/e2e/b', '--size', '1GiB'], 2);
      expect(stderr).to.match(/^storage-sim: INVALID_ARGUMENT: LUN \/vol\/e2e\/b is \d+ bytes; a LUN only grows/);
    });

    it('lun offline takes the LUN offline and lun online brings it back', async () => {
      expect(await ok(['lun', 'offline', '/vol/e2e/b'])).to.equal('LUN /vol/e2e/b is offline\n');
      expect((await okJson(['lun', 'show', '/vol/e2e/b'])).lun.state).to.equal('offline');
      expect((await okJson(['lun', 'online', '/vol/e2e/b'])).lun.state).to.equal('online');
    });

    it('lun delete deletes the LUN; deleting it again succeeds and says there was nothing to delete', async () => {
      await ok(['lun', 'create', '/vol/e2e/gone', '--size', '8MiB', '--os-type', 'linux']);
      expect(await ok(['lun', 'delete', '/vol/e2e/gone'])).to.equal('deleted LUN /vol/e2e/gone\n');
      expect(await ok(['lun', 'delete', '/vol/e2e/gone'])).to.equal('LUN /vol/e2e/gone does not exist: nothing to delete\n');
      expect(await okJson(['lun', 'delete', '/vol/e2e/gone'])).to.deep.equal({ deleted: false, unmappedCount: 0 });
      await fails(['lun', 'show', '/vol/e2e/gone'], 3);
    });
  });

  describe('igroups and LUN maps', () => {
    it('igroup create --json creates an igroup with its protocol and os type as words and its initiators', async () => {
      const { igroup } = await okJson(['igroup', 'create', 'e2e-h1', '--protocol', 'iscsi', '--os-type', 'linux', '--initiator', IQN1]);
      expect(igroup).to.include({ name: 'e2e-h1', protocol: 'iscsi', osType: 'linux', mapCount: 0 });
      expect(igroup.initiators).to.deep.equal([IQN1]);
      expect(igroup.createTime).to.be.a('string');
    });

    it('igroup create prints the igroup as Key: value lines', async () => {
      const out = await ok(['igroup', 'create', 'e2e-h2', '--protocol', 'iscsi', '--os-type', 'linux']);
      expect(out).to.match(/^Name:\s+e2e-h2$/m);
      expect(out).to.match(/^Protocol:\s+iscsi$/m);
      expect(out).to.match(/^Initiators:\s+-$/m);
    });

    it('igroup add adds initiators, and adding one already there is not an error', async () => {
      expect(await ok(['igroup', 'add', 'e2e-h1', IQN2, IQN3])).to.equal(`igroup e2e-h1 initiators: ${IQN1}, ${IQN2}, ${IQN3}\n`);
      const { igroup } = await okJson(['igroup', 'add', 'e2e-h1', IQN2]);
      expect(igroup.initiators).to.deep.equal([IQN1, IQN2, IQN3]);
    });

    it('igroup remove removes initiators while no LUN is mapped', async () => {
      expect(await ok(['igroup', 'remove', 'e2e-h1', IQN3])).to.equal(`igroup e2e-h1 initiators: ${IQN1}, ${IQN2}\n`);
      const { igroup } = await okJson(['igroup', 'remove', 'e2e-h1', IQN3]);
      expect(igroup.initiators).to.deep.equal([IQN1, IQN2]);
    });

    it('map maps a LUN at the lowest free LUN id, and --lun-id picks the id', async () => {
      expect(await ok(['map', '/vol/e2e/a', 'e2e-h1'])).to.equal('mapped LUN /vol/e2e/a to igroup e2e-h1 as LUN id 0\n');
      const { map } = await okJson(['map', '/vol/e2e/b', 'e2e-h1', '--lun-id', '7']);
      expect(map).to.include({ lunPath: '/vol/e2e/b', igroup: 'e2e-h1', lunId: 7 });
      expect(map.serial).to.match(/^PTSM\w{8}$/);
      await ok(['map', '/vol/e2e/a', 'e2e-h2', '--lun-id', '3']);
    });

    it('maps lists every map as an aligned table ordered by igroup and LUN id', async () => {
      const lines = (await ok(['maps'])).trimEnd().split('\n');
      expect(lines[0]).to.match(/^IGROUP\s+LUN ID\s+SERIAL\s+LUN PATH$/);
      expect(lines).to.have.length(4);
      expect(lines[1]).to.match(/^e2e-h1\s+0  PTSM\w{8}  \/vol\/e2e\/a$/);
      expect(lines[2]).to.match(/^e2e-h1\s+7  PTSM\w{8}  \/vol\/e2e\/b$/);
      expect(lines[3]).to.match(/^e2e-h2\s+3  PTSM\w{8}  \/vol\/e2e\/a$/);
      // LUN ids are right-aligned under their header.
      const end = lines[0]!.indexOf('LUN ID') + 'LUN ID'.length;
      for (const l of lines.slice(1)) expect(l[end - 1]).to.match(/\d/);
    });

    it('maps --lun and maps --igroup --json list the maps of one LUN or one igroup', async () => {
      const ofLun = await okJson(['maps', '--lun', '/vol/e2e/a']);
      expect(ofLun.maps.map((m: { igroup: string; lunId: number }) => [m.igroup, m.lunId])).to.deep.equal([
        ['e2e-h1', 0],
        ['e2e-h2', 3],
      ]);
      const ofIgroup = await okJson(['maps', '--igroup', 'e2e-h1', '--page-size', '1']);
      expect(ofIgroup.maps.map((m: { lunPath: string }) => m.lunPath)).to.deep.equal(['/vol/e2e/a', '/vol/e2e/b']);
    });

    it('lun show lists the igroups a mapped LUN is mapped to', async () => {
      const out = await ok(['lun', 'show', '/vol/e2e/a']);
      expect(out).to.match(/^Mapped:\s+yes$/m);
      expect(out).to.match(/^e2e-h1\s+0\s+PTSM\w{8}\s+\/vol\/e2e\/a$/m);
      expect(out).to.match(/^e2e-h2\s+3\s+PTSM\w{8}\s+\/vol\/e2e\/a$/m);
      const json = await okJson(['lun', 'show', '/vol/e2e/a']);
      expect(json.lun.mapped).to.equal(true);
      expect(json.maps).to.have.length(2);
    });

    it('igroup show prints the igroup, its initiators and the LUNs mapped to it; --json adds maps', async () => {
      const out = await ok(['igroup', 'show', 'e2e-h1']);
      expect(out).to.match(new RegExp(`^Initiators:\\s+${IQN1}, ${IQN2}$`, 'm'));
      expect(out).to.match(/^Maps:\s+2$/m);
      expect(out).to.match(/^e2e-h1\s+7\s+PTSM\w{8}\s+\/vol\/e2e\/b$/m);
      const json = await okJson(['igroup', 'show', 'e2e-h1']);
      expect(json.igroup).to.include({ name: 'e2e-h1', mapCount: 2 });
      expect(json.maps.map((m: { lunId: number }) => m.lunId)).to.deep.equal([0, 7]);
    });

    it('igroup list prints a table of name, protocol, os type, maps and initiators; --json lists every igroup', async () => {
      const lines = (await ok(['igroup', 'list'])).trimEnd().split('\n');
      expect(lines[0]).to.match(/^NAME\s+PROTOCOL\s+OS TYPE\s+MAPS\s+INITIATORS$/);
      expect(lines.some((l) => new RegExp(`^e2e-h1\\s+iscsi\\s+linux\\s+2  ${IQN1}, ${IQN2}$`).test(l)), lines.join('\n')).to.equal(true);
      expect(lines.some((l) => /^e2e-h2\s+iscsi\s+linux\s+1  -$/.test(l)), lines.join('\n')).to.equal(true);
      const { igroups } = await okJson(['igroup', 'list', '--page-size', '1']);
      expect(igroups.map((g: { name: string }) => g.name)).to.include.members(['e2e-h1', 'e2e-h2']);
    });

    it('igroup remove is FAILED_PRECONDITION while LUNs are mapped (exit 5) and works with --force', async () => {
      const stderr = await fails(['igroup', 'remove', 'e2e-h1', IQN2], 5);
      expect(stderr).to.match(/^storage-sim: FAILED_PRECONDITION: igroup e2e-h1 has 2 LUN map/);
      const { igroup } = await okJson(['igroup', 'remove', 'e2e-h1', IQN2, '--force']);
      expect(igroup.initiators).to.deep.equal([IQN1]);
    });

    it('unmap removes a map; unmapping again succeeds and says there was nothing to do', async () => {
      expect(await ok(['unmap', '/vol/e2e/b', 'e2e-h1'])).to.equal('unmapped LUN /vol/e2e/b from igroup e2e-h1\n');
      expect(await ok(['unmap', '/vol/e2e/b', 'e2e-h1'])).to.equal('LUN /vol/e2e/b was not mapped to igroup e2e-h1: nothing to do\n');
      expect(await okJson(['unmap', '/vol/e2e/b', 'e2e-h1'])).to.deep.equal({ unmapped: false });
      expect((await okJson(['maps', '--igroup', 'e2e-h1'])).maps).to.have.length(1);
    });

    it('igroup delete is FAILED_PRECONDITION while a LUN is mapped, then deletes it once unmapped; again says nothing to delete', async () => {
      await fails(['igroup', 'delete', 'e2e-h2'], 5);
      expect(await okJson(['unmap', '/vol/e2e/a', 'e2e-h2'])).to.deep.equal({ unmapped: true });
      expect(await ok(['igroup', 'delete', 'e2e-h2'])).to.equal('deleted igroup e2e-h2\n');
      expect(await ok(['igroup', 'delete', 'e2e-h2'])).to.equal('igroup e2e-h2 does not exist: nothing to delete\n');
      expect(await okJson(['igroup', 'delete', 'e2e-h2'])).to.deep.equal({ deleted: false });
      await fails(['igroup', 'show', 'e2e-h2'], 3);
    });
  });

  describe('faults', () => {
    afterEach(async () => {
      await cli(['fault', 'clear']);
    });

    it('fault inject makes the next call fail with the injected status, and the CLI exits with its class (UNAVAILABLE: 8)', async () => {
      expect(await ok(['fault', 'inject', 'GetArray', '--code', 'UNAVAILABLE'])).to.match(
        /^fault \d+: the next 1 call of GetArray will fail with UNAVAILABLE\n$/,
      );
      const stderr = await fails(['array', 'show'], 8);
      expect(stderr).to.equal('storage-sim: UNAVAILABLE: injected fault on GetArray\n');
      await ok(['array', 'show']);
    });

    it('fault inject --code takes a number and a lower-case RPC name; ABORTED exits 9 with the injected message', async () => {
      await ok(['fault', 'inject', 'getLun', '--code', '10', '--message', 'busy elsewhere']);
      const stderr = await fails(['lun', 'show', '/vol/e2e/a'], 9);
      expect(stderr).to.equal('storage-sim: ABORTED: busy elsewhere\n');
    });

    it('fault inject --json returns the fault; fault list prints it as a table and as JSON; fault clear removes it', async () => {
      const { fault } = await okJson(['fault', 'inject', 'MapLun', '--code', '14', '--count', '3', '--delay-ms', '5', '--after', '--message', 'lost reply']);
      expect(fault).to.include({ method: 'MapLun', remaining: 3, code: 14, codeName: 'UNAVAILABLE', delayMs: 5, timing: 'after', message: 'lost reply' });
      const lines = (await ok(['fault', 'list'])).trimEnd().split('\n');
      expect(lines[0]).to.match(/^ID\s+METHOD\s+REMAINING\s+CODE\s+DELAY\s+TIMING\s+MESSAGE$/);
      expect(lines[1]).to.match(new RegExp(`^\\s*${fault.id}\\s+MapLun\\s+3\\s+UNAVAILABLE\\s+5 ms\\s+after\\s+lost reply$`));
      const listed = await okJson(['fault', 'list']);
      expect(listed).to.deep.equal({ faults: [fault], unavailableUntil: null });
      expect(await ok(['fault', 'clear'])).to.equal('cleared 1 fault\n');
      expect(await okJson(['fault', 'clear'])).to.deep.equal({ cleared: 0 });
      expect(await ok(['fault', 'list'])).to.equal('no faults\n');
    });

    it('fault unavailable makes every array call UNAVAILABLE (exit 8) until the window ends; 0 ends it now', async () => {
      expect(await ok(['fault', 'unavailable', '60000'])).to.match(/^array unavailable until \d{4}-\d\d-\d\dT/);
      const stderr = await fails(['lun', 'list'], 8);
      expect(stderr).to.match(/^storage-sim: UNAVAILABLE: /);
      expect(Date.parse((await okJson(['fault', 'list'])).unavailableUntil)).to.be.greaterThan(Date.now());
      expect(await okJson(['fault', 'unavailable', '0'])).to.deep.equal({ unavailableUntil: null });
      await ok(['lun', 'list']);
    });

    it('fault inject of a method the array does not have is INVALID_ARGUMENT: exit 2', async () => {
      const stderr = await fails(['fault', 'inject', 'NoSuchRpc'], 2);
      expect(stderr).to.match(/^storage-sim: INVALID_ARGUMENT: method "NoSuchRpc" is not an RPC of the array/);
    });
  });

  describe('errors', () => {
    it('a size that does not parse is INVALID_ARGUMENT: exit 2, the reason on stderr, nothing on stdout', async () => {
      const stderr = await fails(['lun', 'create', '/vol/e2e/bad', '--size', '10XB', '--os-type', 'linux'], 2);
      expect(stderr).to.equal('storage-sim: INVALID_ARGUMENT: size "10XB" is not a size: write e.g. 4096, 512MiB, 10GiB or 1TiB\n');
      await fails(['lun', 'show', '/vol/e2e/bad'], 3);
    });

    it('an unknown LUN is NOT_FOUND: exit 3 with the server message on stderr, in text and --json mode', async () => {
      expect(await fails(['lun', 'show', '/vol/e2e/nope'], 3)).to.equal('storage-sim: NOT_FOUND: LUN "/vol/e2e/nope" does not exist\n');
      expect(await fails(['lun', 'resize', '/vol/e2e/nope', '--size', '1GiB', '--json'], 3)).to.match(/^storage-sim: NOT_FOUND: /);
    });

    it('creating an existing path with a different size is ALREADY_EXISTS: exit 4', async () => {
      const stderr = await fails(['lun', 'create', '/vol/e2e/a', '--size', '20GiB', '--os-type', 'linux', '--thin', '--comment', 'owner=e2e'], 4);
      expect(stderr).to.match(/^storage-sim: ALREADY_EXISTS: LUN \/vol\/e2e\/a already exists with size 10737418240/);
    });

    it('deleting a mapped LUN is FAILED_PRECONDITION: exit 5; --force deletes it and its maps', async () => {
      await ok(['lun', 'create', '/vol/e2e/mapped', '--size', '8MiB', '--os-type', 'linux']);
      await ok(['igroup', 'create', 'e2e-h9', '--protocol', 'iscsi', '--os-type', 'linux', '--initiator', IQN1]);
      await ok(['map', '/vol/e2e/mapped', 'e2e-h9']);
      const stderr = await fails(['lun', 'delete', '/vol/e2e/mapped'], 5);
      expect(stderr).to.equal('storage-sim: FAILED_PRECONDITION: LUN /vol/e2e/mapped is mapped to e2e-h9: unmap it first, or delete with force\n');
      expect(await okJson(['lun', 'delete', '/vol/e2e/mapped', '--force'])).to.deep.equal({ deleted: true, unmappedCount: 1 });
      expect((await okJson(['maps', '--igroup', 'e2e-h9'])).maps).to.deep.equal([]);
    });

    it('an array nobody listens on is UNAVAILABLE: exit 8 at once, with a hint naming the endpoint', async () => {
      const endpoint = `127.0.0.1:${await closedPort()}`;
      const started = Date.now();
      const stderr = await fails(['lun', 'list', '--endpoint', endpoint, '--timeout', '2000'], 8);
      expect(Date.now() - started).to.be.lessThan(10_000);
      expect(stderr).to.match(/^storage-sim: UNAVAILABLE: /);
      expect(stderr).to.include(`is storage-sim serving at ${endpoint}?`);
    });

    it('an array that never answers is DEADLINE_EXCEEDED after --timeout: exit 8', async () => {
      const sockets = new Set<Socket>();
      const silent: Server = createServer((s) => sockets.add(s));
      silent.listen(0, '127.0.0.1');
      await once(silent, 'listening');
      try {
        const { port } = silent.address() as { port: number };
        const started = Date.now();
        const stderr = await fails(['array', 'show', '--timeout', '300'], 8, { PASSTHRU_STORAGE_ENDPOINT: `127.0.0.1:${port}` });
        expect(Date.now() - started).to.be.lessThan(10_000);
        expect(stderr).to.match(/^storage-sim: DEADLINE_EXCEEDED: /);
      } finally {
        for (const s of sockets) s.destroy();
        silent.close();
      }
    });

    it('fault commands against an array started without --enable-faults are FAILED_PRECONDITION: exit 5', async function () {
      const plainDir = tempDir('passthru-storage-cli-plain-');
      const plain = await startStorageSim(plainDir.path, ['--log-level', 'warn']);
      try {
        const stderr = await fails(['fault', 'list', '--endpoint', plain.address], 5);
        expect(stderr).to.match(/^storage-sim: FAILED_PRECONDITION: fault injection is disabled/);
      } finally {
        const exited = once(plain.child, 'exit');
        process.kill(plain.pid, 'SIGTERM');
        await exited;
        plainDir.remove();
      }
    });
  });
});
