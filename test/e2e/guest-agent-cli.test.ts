/**
 * The guest agent end to end: the compiled `bin/guest-agent.js` run as a child process, as
 * the guest of the VMs of examples/cluster.json, against a real `host-agent serve` in front
 * of a real `storage-sim serve` (both processes on 127.0.0.1:0). What the CLI says is
 * checked against the host (AdminService), the array (its API and the LUN's backing file,
 * with an independent GPT parser and the real `sgdisk -v`) and the guest's state dir. After
 * every test the cluster's invariants hold (CheckInvariants finds nothing).
 *
 * The tests run in order: C:\mt1 of vm1, made by the first, is used by those after.
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, fstatSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import {
  DiskSharing,
  GroupKind,
  OperationKind,
  OperationState,
} from '../../proto/gen/passthru/host/v1/host.js';
import { IgroupProtocol, OsType } from '../../proto/gen/passthru/storage/v1/storage.js';
import { deploymentForFile, describeRun, GUEST_AGENT_BIN, runGuest, type Deployment, type Guest } from '../support/guest-cli.js';
import { independentCheck, type DiskImage } from '../support/guest-layout-check.js';

const MiB = 1024 * 1024;
const GiB = 1024 * MiB;

const escape = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** A table row: these cells in order, two or more spaces apart. */
const row = (...cells: string[]): RegExp => new RegExp(`^${cells.map(escape).join('\\s{2,}')}(\\s|$)`, 'm');

/** A LUN's backing file on the array, as a disk image. */
function lunImage(d: Deployment, uuid: string): DiskImage & { close(): void } {
  const fd = openSync(join(d.dir, 'array', 'luns', `${uuid}.img`), 'r');
  return {
    size: fstatSync(fd).size,
    read(offset, length) {
      const b = Buffer.alloc(length);
      readSync(fd, b, 0, length, offset);
      return b;
    },
    close: () => closeSync(fd),
  };
}

function commandPath(name: string): string | undefined {
  try {
    return execFileSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

function table(g: Guest): { mounts: any[]; pending: any[]; vm?: any } {
  return JSON.parse(readFileSync(join(g.stateDir, 'mounts.json'), 'utf8'));
}

describe('guest-agent CLI (e2e)', function () {
  this.timeout(120_000);
  const deployment = deploymentForFile();
  let d: Deployment;
  let vm1: Guest;
  let vm2: Guest;
  let vm3: Guest;
  let mt1: any;

  before(() => {
    d = deployment();
    vm1 = d.guest('vm1');
    vm2 = d.guest('vm2');
    vm3 = d.guest('vm3');
  });

  describe('help and usage', () => {
    it('--help lists the commands, the environment variables, the drive paths and the exit codes', async () => {
      const r = await runGuest(['--help']);
      expect(r.code).to.equal(0);
      for (const word of ['disk', 'rescan', 'PASSTHRU_GUEST_ENDPOINT', 'PASSTHRU_GUEST_STATE_DIR', 'Exit codes', 'FAILED_PRECONDITION', 'C:\\mt1', '--json']) {
        expect(r.stdout).to.include(word);
      }
      const disk = await runGuest(['disk', '--help']);
      expect(disk.code).to.equal(0);
      for (const cmd of ['create', 'connect', 'list', 'show', 'write', 'read', 'remove']) expect(disk.stdout).to.match(new RegExp(`^  ${cmd}\\b`, 'm'));
    });

    it('refuses to run without an endpoint or a state dir (exit 2, naming the option and the variable)', async () => {
      const noEndpoint = await runGuest(['disk', 'list', '--state-dir', join(d.dir, 'x')]);
      expect(noEndpoint.code, describeRun(['disk', 'list'], noEndpoint)).to.equal(2);
      expect(noEndpoint.stderr).to.include('--endpoint').and.include('PASSTHRU_GUEST_ENDPOINT');
      const noState = await runGuest(['disk', 'list', '--endpoint', d.endpoint('vm1')]);
      expect(noState.code).to.equal(2);
      expect(noState.stderr).to.include('--state-dir').and.include('PASSTHRU_GUEST_STATE_DIR');
      const unknown = await runGuest(['disk', 'frobnicate']);
      expect(unknown.code).to.equal(2);
    });

    it('an endpoint nobody serves is UNAVAILABLE at once (exit 8), saying where it looked', async () => {
      const g = d.guest('vm1');
      const start = Date.now();
      const err = await g.fails(['disk', 'list', '--endpoint', `unix:${join(d.dir, 'nobody.sock')}`], 8);
      expect(Date.now() - start).to.be.below(5_000);
      expect(err).to.match(/^guest-agent: UNAVAILABLE: the host agent at unix:.*nobody\.sock cannot be reached/);
    });
  });

  describe('create', () => {
    it('creates a 1 GiB disk at C:\\mt1 for a Windows HA VM: attached, a GPT and volume on it, mounted, and the host told', async () => {
      const r = await vm1.okJson(['disk', 'create', '--size', '1GiB', '--mount', 'C:\\mt1']);
      mt1 = r.mount;
      expect(r).to.include({ alreadyMounted: false, resumed: false });
      expect(mt1).to.include({ path: 'C:\\mt1', origin: 'create', sizeBytes: GiB, label: 'mt1', sharing: 'shared', initialized: true });
      expect(mt1.volumeId).to.match(/^[0-9a-f]{32}$/);
      expect(mt1.dataOffset).to.equal(MiB + 4096);

      // One operation on the host, the one the guest recorded, succeeded.
      const ops = await d.operations('vm1');
      expect(ops.map((o) => [o.id, o.requestId, o.kind, o.state])).to.deep.equal([
        [r.operationId, r.requestId, OperationKind.OPERATION_KIND_CREATE_DISK, OperationState.OPERATION_STATE_SUCCEEDED],
      ]);
      // The mount table says the same, with nothing left pending.
      const t = table(vm1);
      expect(t.vm).to.deep.equal({ id: 'vm1', name: 'web1', guestOs: 'windows' });
      expect(t.mounts).to.deep.equal([mt1]);
      expect(t.pending).to.deep.equal([]);
      // The host knows the mount, and the disk resource sits in the VM's group: no temporary group left.
      const [disk] = await d.disks('vm1');
      expect(disk).to.include({ mountPath: 'C:\\mt1', serial: mt1.serial, mounted: true, volumeId: mt1.volumeId, volumeLabel: 'mt1', sharing: DiskSharing.DISK_SHARING_SHARED });
      const groups = (await d.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups;
      expect(groups.find((g) => g.vmId === 'vm1')!.resources.map((x) => x.serial)).to.deep.equal([mt1.serial]);
      expect(groups.filter((g) => g.kind === GroupKind.GROUP_KIND_TEMPORARY)).to.deep.equal([]);
    });

    it("writes a layout the LUN's backing file proves right: an independent parser, and sgdisk -v when installed", async () => {
      const { lun } = await d.storage.getLun({ lun: mt1.serial });
      const image = lunImage(d, lun!.uuid);
      try {
        expect(image.size).to.equal(GiB);
        const found = independentCheck(image, 'windows', 'mt1');
        expect(found.volumeId).to.equal(mt1.volumeId);
        expect(found.dataOffset).to.equal(mt1.dataOffset);
        expect(found.dataBytes).to.equal(mt1.dataBytes);
      } finally {
        image.close();
      }
      const bin = commandPath('sgdisk');
      if (!bin) {
        console.log("    [guest-agent] SKIPPED the sgdisk half of the layout check: no sgdisk binary on PATH (install Debian's gdisk)");
        return;
      }
      const file = join(d.dir, 'array', 'luns', `${lun!.uuid}.img`);
      expect(execFileSync(bin, ['-v', file], { encoding: 'utf8' })).to.include('No problems found');
      const info = execFileSync(bin, ['-i', '1', file], { encoding: 'utf8' });
      expect(info).to.include('Microsoft basic data').and.include("Partition name: 'mt1'").and.include('First sector: 2048');
    });

    it('asked again for the same disk at the same mount, answers with the mount already there and asks the host nothing', async () => {
      const before = (await d.operations('vm1')).length;
      const r = await vm1.okJson(['disk', 'create', '--size', '1024MiB', '--mount', 'c:\\MT1']);
      expect(r).to.include({ alreadyMounted: true });
      expect(r.mount).to.deep.equal(mt1);
      expect(await d.operations('vm1')).to.have.length(before);
      const text = await vm1.ok(['disk', 'create', '--size', '1GiB', '--mount', 'C:\\mt1']);
      expect(text).to.match(/^C:\\mt1 is already mounted: LUN \w+ \(1 GiB\)/);
    });

    it('a dedicated disk is refused on an HA VM before asking (exit 5) and made on a non-HA one', async () => {
      const before = (await d.operations('vm1')).length;
      const err = await vm1.fails(['disk', 'create', '--size', '64MiB', '--mount', 'E:', '--dedicated'], 5);
      expect(err).to.include('FAILED_PRECONDITION').and.include('highly available');
      expect(await d.operations('vm1')).to.have.length(before);

      const r = await vm3.okJson(['disk', 'create', '--size', '64MiB', '--mount', 'E:', '--dedicated']);
      expect(r.mount).to.include({ path: 'E:', sharing: 'dedicated', label: 'Volume E' });
      expect((await d.disks('vm3'))[0]!.sharing).to.equal(DiskSharing.DISK_SHARING_DEDICATED);
      const gone = await vm3.okJson(['disk', 'remove', '--mount', 'E:', '--delete-lun']);
      expect(gone).to.include({ lunDeleted: true });
    });

    it('shows each step live on a terminal (a pty from script(1)), and nothing of it under --json or through a pipe', async function () {
      const script = commandPath('script');
      if (!script) {
        console.log('    [guest-agent] SKIPPED the terminal half of the progress check: no script(1) on PATH (util-linux)');
        this.skip();
      }
      const quote = (a: string): string => `'${a.replace(/'/g, `'\\''`)}'`;
      const onTerminal = (args: string[]): string =>
        execFileSync(script!, ['-qec', [process.execPath, GUEST_AGENT_BIN, ...args].map(quote).join(' '), '/dev/null'], {
          encoding: 'utf8',
          env: { ...process.env, PASSTHRU_GUEST_ENDPOINT: vm3.endpoint, PASSTHRU_GUEST_STATE_DIR: vm3.stateDir, PASSTHRU_GUEST_CRASH_AT: '' },
        });
      const out = onTerminal(['disk', 'create', '--size', '64MiB', '--mount', 'G:']);
      for (const step of ['validate', 'lun.create', 'scsi.attach', 'resource.online', 'group.delete']) expect(out).to.match(new RegExp(`ok  ${escape(step)} +done`));
      expect(out).to.match(/ok  discover +found serial \w+ .* at SCSI \d+:\d+ after 1 rescan/);
      expect(out).to.match(/ok  initialize +volume "Volume G" .* written and read back/);
      expect(out).to.match(/ok  report +the host records G: as mounted/);
      expect(out).to.match(/\nG: mounted: LUN \w+ \(64 MiB\)/);
      // Under --json, on the same terminal, only the document; through a pipe (as every other test runs it) stderr stays empty: Guest.ok checks it.
      const json = onTerminal(['disk', 'remove', '--mount', 'G:', '--delete-lun', '--json']);
      expect(JSON.parse(json.replace(/\r/g, ''))).to.include({ mountPath: 'G:', lunDeleted: true });
    });

    it('refuses sizes that are not 4 MiB to 16 TiB in 512-byte steps (exit 2) before asking the host', async () => {
      const before = (await d.operations('vm3')).length;
      for (const size of ['3MiB', '5000000', '17TiB', 'ten', '0']) {
        const err = await vm3.fails(['disk', 'create', '--size', size, '--mount', 'F:'], 2);
        expect(err).to.match(/INVALID_ARGUMENT: (size|--size)/);
      }
      expect(await d.operations('vm3')).to.have.length(before);
    });
  });

  describe('list, show, rescan', () => {
    it('disk list shows the mount, serial, size, SCSI address, LUN id, label and state; --json gives both views', async () => {
      const text = await vm1.ok(['disk', 'list']);
      expect(text).to.match(row('MOUNT', 'SERIAL', 'SIZE', 'SCSI', 'LUN ID', 'LABEL', 'STATE'));
      expect(text).to.match(row('C:\\mt1', mt1.serial, '1 GiB', `${mt1.address.controller}:${mt1.address.location}`, String(mt1.lunId), 'mt1', 'mounted'));
      expect(text).to.not.include('Disagreements');
      const r = await vm1.okJson(['disk', 'list']);
      expect(r.vm).to.include({ id: 'vm1', name: 'web1', guestOs: 'windows', ha: true, node: 'node1' });
      expect(r.disks).to.have.length(1);
      expect(r.disks[0]).to.include({ mountPath: 'C:\\mt1', serial: mt1.serial, state: 'mounted', label: 'mt1', volumeId: mt1.volumeId });
      expect(r.disks[0].problems).to.deep.equal([]);
      expect(r.disks[0].guest).to.deep.equal(mt1);
      expect(r.disks[0].host).to.include({ mounted: true, resourceState: 'online' });
    });

    it('takes the endpoint and state dir from flags as well as from the environment', async () => {
      const r = await runGuest(['--endpoint', vm1.endpoint, '--state-dir', vm1.stateDir, 'disk', 'list', '--json']);
      expect(r.code, describeRun(['disk', 'list'], r)).to.equal(0);
      expect(JSON.parse(r.stdout).disks.map((x: any) => x.mountPath)).to.deep.equal(['C:\\mt1']);
      const bare = await runGuest(['disk', 'list', '--json', '--endpoint', vm1.endpoint.slice('unix:'.length), '--state-dir', vm1.stateDir]);
      expect(bare.code, 'a bare socket path is a unix: endpoint').to.equal(0);
    });

    it('disk show reads the partition table and the volume from the disk itself', async () => {
      const text = await vm1.ok(['disk', 'show', '--mount', 'C:\\mt1']);
      expect(text).to.match(/^Content:\s+GPT with a passthru volume$/m);
      expect(text).to.match(/^Type:\s+Microsoft basic data \(EBD0A0A2-B9E5-4433-87C0-68B6B72699C7\)$/m);
      expect(text).to.match(/^Name:\s+mt1$/m);
      expect(text).to.match(new RegExp(`^Volume id:\\s+${mt1.volumeId}$`, 'm'));
      const r = await vm1.okJson(['disk', 'show', '--mount', 'C:\\mt1']);
      expect(r).to.include({ mountPath: 'C:\\mt1', serial: mt1.serial, content: 'passthru', mounted: true, reason: null });
      expect(r.gpt).to.include({ primaryHeaderLba: 1, backupHeaderLba: GiB / 512 - 1, firstUsableLba: 34, lastUsableLba: GiB / 512 - 34, entryCount: 128 });
      expect(r.gpt.partition).to.include({ number: 1, firstLba: 2048, name: 'mt1', typeName: 'Microsoft basic data' });
      expect(r.volume).to.include({ label: 'mt1', volumeId: mt1.volumeId, guestOs: 'windows', dataOffset: mt1.dataOffset, dataBytes: mt1.dataBytes });
      await vm1.fails(['disk', 'show', '--mount', 'Q:'], 3);
    });

    it('rescan lists the bus with where each disk is mounted', async () => {
      const text = await vm1.ok(['rescan']);
      expect(text).to.match(row(`${mt1.address.controller}:${mt1.address.location}`, mt1.serial, mt1.naaId, '1 GiB', 'C:\\mt1'));
      const r = await vm1.okJson(['rescan']);
      expect(r.devices).to.deep.equal([{ address: mt1.address, serial: mt1.serial, naaId: mt1.naaId, sizeBytes: GiB, mountPath: 'C:\\mt1' }]);
    });
  });

  describe('read and write', () => {
    const first = randomBytes(5000);

    it("writes a file into the volume's data area and reads it back (stdout, --to, --json)", async () => {
      const file = join(d.dir, 'first.bin');
      writeFileSync(file, first);
      expect(await vm1.ok(['disk', 'write', '--mount', 'C:\\mt1', '--at', '4096', '--from', file])).to.equal(`wrote 5000 bytes at 4096 of the data area of C:\\mt1 (LUN ${mt1.serial})\n`);
      const out = await vm1.run(['disk', 'read', '--mount', 'C:\\mt1', '--at', '4096', '--length', '5000']);
      expect(out.code).to.equal(0);
      expect(out.stdoutBytes.equals(first)).to.equal(true);
      const copy = join(d.dir, 'copy.bin');
      await vm1.ok(['disk', 'read', '--mount', 'C:\\mt1', '--at', '4096', '--length', '5000', '--to', copy]);
      expect(readFileSync(copy).equals(first)).to.equal(true);
      const j = await vm1.okJson(['disk', 'read', '--mount', 'C:\\mt1', '--at', '4096', '--length', '5000']);
      expect(Buffer.from(j.data, 'base64').equals(first)).to.equal(true);
      expect(j).to.include({ mountPath: 'C:\\mt1', at: 4096, length: 5000 });
      // On the array, the bytes sit after the volume header, in the data area.
      const { lun } = await d.storage.getLun({ lun: mt1.serial });
      const image = lunImage(d, lun!.uuid);
      try {
        expect(image.read(mt1.dataOffset + 4096, 5000).equals(first)).to.equal(true);
        expect(image.read(MiB, 8).toString('latin1'), 'the volume header is untouched').to.equal('PTHRUVOL');
      } finally {
        image.close();
      }
    });

    it('writes at any byte offset, keeping the bytes around it, and across 1 MiB calls (from stdin)', async () => {
      const small = randomBytes(700);
      const file = join(d.dir, 'small.bin');
      writeFileSync(file, small);
      await vm1.ok(['disk', 'write', '--mount', 'C:\\mt1', '--at', '10', '--from', file]);
      const around = await vm1.run(['disk', 'read', '--mount', 'C:\\mt1', '--at', '0', '--length', '9096']);
      const expected = Buffer.alloc(9096);
      small.copy(expected, 10);
      first.copy(expected, 4096);
      expect(around.stdoutBytes.equals(expected)).to.equal(true);

      const big = randomBytes(1.5 * MiB);
      await vm1.ok(['disk', 'write', '--mount', 'C:\\mt1', '--at', String(2 * MiB - 100), '--from', '-'], { input: big });
      const back = await vm1.run(['disk', 'read', '--mount', 'C:\\mt1', '--at', String(2 * MiB - 100), '--length', String(big.length)]);
      expect(back.stdoutBytes.equals(big)).to.equal(true);
    });

    it('refuses a range past the end of the data area (exit 2) and writes nothing', async () => {
      const end = mt1.dataBytes;
      const err = await vm1.fails(['disk', 'read', '--mount', 'C:\\mt1', '--at', String(end - 10), '--length', '20'], 2);
      expect(err).to.include('INVALID_ARGUMENT').and.include('past the end of the data area of C:\\mt1');
      const file = join(d.dir, 'twenty.bin');
      writeFileSync(file, Buffer.alloc(20, 0xab));
      await vm1.fails(['disk', 'write', '--mount', 'C:\\mt1', '--at', String(end - 10), '--from', file], 2);
      const tail = await vm1.run(['disk', 'read', '--mount', 'C:\\mt1', '--at', String(end - 10), '--length', '10']);
      expect(tail.stdoutBytes.equals(Buffer.alloc(10)), 'the last bytes of the data area are untouched').to.equal(true);
      // The backup GPT after the data area is intact too.
      const shown = await vm1.okJson(['disk', 'show', '--mount', 'C:\\mt1']);
      expect(shown.content).to.equal('passthru');
      await vm1.fails(['disk', 'read', '--mount', 'Q:', '--at', '0', '--length', '1'], 3);
      writeFileSync(join(d.dir, 'empty.bin'), '');
      await vm1.fails(['disk', 'write', '--mount', 'C:\\mt1', '--at', '0', '--from', join(d.dir, 'empty.bin')], 2);
    });
  });

  describe('nested mounts', () => {
    it('a folder mount point on a volume passthru mounted is allowed; removing that volume first is FAILED_PRECONDITION naming it', async () => {
      await vm1.ok(['disk', 'create', '--size', '64MiB', '--mount', 'E:']);
      const logs = await vm1.okJson(['disk', 'create', '--size', '64MiB', '--mount', 'E:\\logs']);
      expect(logs.mount).to.include({ path: 'E:\\logs', label: 'logs' });
      const before = (await d.operations('vm1')).length;
      const err = await vm1.fails(['disk', 'remove', '--mount', 'E:'], 5);
      expect(err).to.include('FAILED_PRECONDITION').and.include('E:\\logs');
      expect(await d.operations('vm1')).to.have.length(before);
      expect(table(vm1).mounts.map((m) => m.path)).to.deep.equal(['C:\\mt1', 'E:', 'E:\\logs']);
      await vm1.ok(['disk', 'remove', '--mount', 'E:\\logs', '--delete-lun']);
      await vm1.ok(['disk', 'remove', '--mount', 'E:', '--delete-lun']);
      expect(table(vm1).mounts.map((m) => m.path)).to.deep.equal(['C:\\mt1']);
    });

    it('on Linux, a mount nested inside another is allowed, one over them is not, and the outer one is removed last', async () => {
      await vm2.ok(['disk', 'create', '--size', '64MiB', '--mount', '/srv/data']);
      await vm2.ok(['disk', 'create', '--size', '64MiB', '--mount', '/srv/data/logs/']);
      const over = await vm2.fails(['disk', 'create', '--size', '64MiB', '--mount', '/srv'], 5);
      expect(over).to.include('/srv/data, /srv/data/logs are mounted inside /srv');
      const err = await vm2.fails(['disk', 'remove', '--mount', '/srv/data'], 5);
      expect(err).to.include('/srv/data/logs');
      const list = await vm2.okJson(['disk', 'list']);
      expect(list.disks.map((x: any) => [x.mountPath, x.state])).to.deep.equal([
        ['/srv/data', 'mounted'],
        ['/srv/data/logs', 'mounted'],
      ]);
      const show = await vm2.okJson(['disk', 'show', '--mount', '/srv/data/logs']);
      expect(show.gpt.partition).to.include({ typeName: 'Linux filesystem', typeGuid: '0FC63DAF-8483-4772-8E79-3D69D8477DE4', name: 'logs' });
      await vm2.ok(['disk', 'remove', '--mount', '/srv/data/logs', '--delete-lun']);
      await vm2.ok(['disk', 'remove', '--mount', '/srv/data', '--delete-lun']);
    });
  });

  describe('drive paths the guest refuses before asking the host', () => {
    const windows: [string, number, RegExp][] = [
      ['', 2, /is empty/],
      ['   ', 2, /only whitespace/],
      ['C:', 2, /boot volume C:/],
      ['A:', 2, /floppy/],
      ['B:\\x', 2, /floppy/],
      ['E', 2, /not a drive letter/],
      ['1:', 2, /not a drive letter/],
      ['E:data', 2, /relative to the current folder/],
      ['\\mt1', 2, /no drive letter/],
      ['/mnt/data', 2, /no drive letter/],
      ['\\\\server\\share', 2, /UNC network path/],
      ['\\\\?\\C:\\x', 2, /device prefix/],
      ['C:\\mt9\\..\\x', 2, /contains "\.\."/],
      ['C:\\.\\x', 2, /contains "\."/],
      ['C:\\CON', 2, /reserves for the device CON/],
      ['C:\\mt9\\nul.txt', 2, /reserves for the device NUL/],
      ['C:\\LPT1', 2, /device LPT1/],
      ['C:\\com9.log', 2, /device COM9/],
      ['C:\\a<b', 2, /contains "<"/],
      ['C:\\a>b', 2, /contains ">"/],
      ['C:\\a|b', 2, /contains "\|"/],
      ['C:\\a?b', 2, /contains "\?"/],
      ['C:\\a*b', 2, /contains "\*"/],
      ['C:\\a"b', 2, /contains """/],
      ['C:\\a:b', 2, /contains ":"/],
      ['C:\\tab\there', 2, /control character/],
      ['C:\\trailing.', 2, /ending with a dot/],
      ['C:\\trailing ', 2, /ending with a space/],
      [`C:\\${'x'.repeat(256)}`, 2, /folder name of 256 characters/],
      [`C:\\${`${'d'.repeat(50)}\\`.repeat(6)}`, 2, /characters long once normalized; at most 260/],
      ['C:\\MT1', 4, /C:\\mt1 is already mounted/],
      ['G:\\data', 5, /no passthru volume is mounted at G:/],
    ];
    const linux: [string, number, RegExp][] = [
      ['relative/x', 2, /not an absolute path/],
      ['srv', 2, /not an absolute path/],
      ['C:\\mt1', 2, /not an absolute path/],
      ['/', 2, /root file system/],
      ['//', 2, /root file system/],
      ['/srv/../etc', 2, /contains "\.\."/],
      ['/srv/./x', 2, /contains "\."/],
      ['/proc/x', 2, /pseudo-filesystem/],
      ['/dev', 2, /pseudo-filesystem/],
      ['/sys/kernel', 2, /pseudo-filesystem/],
      ['/run', 2, /pseudo-filesystem/],
      ['/a\u0001b', 2, /control character/],
      [`/${'n'.repeat(256)}`, 2, /name of 256 bytes/],
      ['/data/', 4, /\/data is already mounted/],
    ];

    async function refused(g: Guest, cases: [string, number, RegExp][]): Promise<void> {
      const before = (await d.operations(g.vmId)).length;
      const mounts = table(g).mounts;
      // A few at a time: each is a process.
      for (let i = 0; i < cases.length; i += 4) {
        await Promise.all(
          cases.slice(i, i + 4).map(async ([path, code, message]) => {
            const err = await g.fails(['disk', 'create', '--size', '2GiB', '--mount', path], code);
            const status = { 2: 'INVALID_ARGUMENT', 4: 'ALREADY_EXISTS', 5: 'FAILED_PRECONDITION' }[code];
            expect(err, JSON.stringify(path)).to.match(new RegExp(`^guest-agent: ${status}: `));
            expect(err, JSON.stringify(path)).to.match(message);
          }),
        );
      }
      expect(await d.operations(g.vmId), 'nothing was asked of the host').to.have.length(before);
      expect(table(g).mounts, 'the mount table is unchanged').to.deep.equal(mounts);
      expect(table(g).pending, 'no request is left recorded').to.deep.equal([]);
    }

    it(`refuses every invalid Windows drive path form (vm1, a Windows guest)`, async () => {
      await refused(vm1, windows);
    });

    it('refuses every invalid Linux path form (vm2, a Linux guest)', async () => {
      await vm2.ok(['disk', 'create', '--size', '64MiB', '--mount', '/data']);
      await refused(vm2, linux);
      await vm2.ok(['disk', 'remove', '--mount', '/data', '--delete-lun']);
    });
  });

  describe('connect', () => {
    it('connects a LUN used before, removed without --delete-lun and added back to Available Storage by an admin: its volume and data are kept', async () => {
      const made = await vm1.okJson(['disk', 'create', '--size', '64MiB', '--mount', 'F:', '--label', 'reports']);
      const serial = made.mount.serial;
      const words = Buffer.from('quarterly numbers, written by web1\n');
      writeFileSync(join(d.dir, 'words.txt'), words);
      await vm1.ok(['disk', 'write', '--mount', 'F:', '--at', '0', '--from', join(d.dir, 'words.txt')]);
      const removed = await vm1.ok(['disk', 'remove', '--mount', 'F:']);
      expect(removed).to.match(new RegExp(`^F: unmounted and detached from SCSI \\d+:\\d+: LUN ${serial} kept on the array \\(/vol/passthru/`));
      expect((await d.storage.getLun({ lun: serial })).lun!.serial).to.equal(serial);

      const added = await d.admin.addAvailableDisk({ requestId: `add-${serial}`, lun: serial });
      expect((await d.settle(added.operation!.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);

      // Another Windows VM takes it, by serial.
      const r = await vm3.okJson(['disk', 'connect', '--lun', serial, '--mount', 'F:']);
      expect(r.mount).to.include({ path: 'F:', origin: 'connect', serial, label: 'reports', volumeId: made.mount.volumeId, initialized: false });
      const text = await vm3.run(['disk', 'read', '--mount', 'F:', '--at', '0', '--length', String(words.length)]);
      expect(text.stdout).to.equal(words.toString());
      const again = await vm3.okJson(['disk', 'connect', '--lun', serial, '--mount', 'F:']);
      expect(again).to.include({ alreadyMounted: true });
      await vm3.ok(['disk', 'remove', '--mount', 'F:', '--delete-lun']);
      await d.storage.getLun({ lun: serial }).then(
        () => expect.fail('the LUN is still on the array'),
        (err) => expect(err.code).to.equal(5),
      );
    });

    it('connects a blank LUN by its NAA id and initializes it (Linux guest)', async () => {
      const lun = await d.availableLun('/vol/shared/blank', 'linux', 64 * MiB);
      const r = await vm2.okJson(['disk', 'connect', '--lun', `naa.${lun.naaId}`, '--mount', '/srv/blank']);
      expect(r.mount).to.include({ serial: lun.serial, label: 'blank', initialized: true });
      const shown = await vm2.okJson(['disk', 'show', '--mount', '/srv/blank']);
      expect(shown.volume.guestOs).to.equal('linux');
      await vm2.ok(['disk', 'remove', '--mount', '/srv/blank', '--delete-lun']);
    });

    it('refuses a LUN holding foreign data (exit 5, nothing written), keeps the request, and initializes it on the same command with --force', async () => {
      // Someone else's MBR-partitioned disk: one NTFS partition (type 0x07), written before passthru saw it.
      const mbr = Buffer.alloc(512);
      mbr[446 + 4] = 0x07;
      mbr.writeUInt32LE(2048, 446 + 8);
      mbr.writeUInt32LE(100_000, 446 + 12);
      mbr[510] = 0x55;
      mbr[511] = 0xaa;
      const lun = await d.availableLun('/vol/shared/foreign', 'windows', 64 * MiB, async (l) => {
        const initiator = 'iqn.2026-11.dev.passthru:old-server';
        await d.storage.createIgroup({ requestId: 'old-ig', name: 'old-server', protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI, osType: OsType.OS_TYPE_WINDOWS, initiators: [initiator] });
        await d.storage.mapLun({ igroups: [], requestId: 'old-map', lun: l.path, igroup: 'old-server' });
        await d.storage.writeBlocks({ requestId: 'old-write', lun: l.path, initiator, offsetBytes: 0n, data: mbr });
        await d.storage.unmapLun({ igroups: [], requestId: 'old-unmap', lun: l.path, igroup: 'old-server' });
        await d.storage.deleteIgroup({ requestId: 'old-del', name: 'old-server' });
      });
      const err = await vm1.fails(['disk', 'connect', '--lun', lun.serial, '--mount', 'H:'], 5);
      expect(err).to.include('FAILED_PRECONDITION').and.include('not blank').and.include('MBR-partitioned').and.include('--force').and.include('Nothing was written');
      const image = lunImage(d, lun.uuid);
      try {
        expect(image.read(0, 512).equals(mbr), 'the foreign MBR is untouched').to.equal(true);
      } finally {
        image.close();
      }
      // Attached, not mounted: the list says so and how to go on.
      const listed = (await vm1.okJson(['disk', 'list'])).disks.find((x: any) => x.mountPath === 'H:');
      expect(listed.state).to.equal('connecting: attached, not mounted yet');
      expect(listed.problems[0]).to.include(`guest-agent disk connect --mount H: --lun ${lun.serial}`);

      const r = await vm1.okJson(['disk', 'connect', '--lun', lun.serial, '--mount', 'H:', '--force']);
      expect(r).to.include({ resumed: true });
      expect(r.mount).to.include({ label: 'Volume H', initialized: true });
      expect(table(vm1).pending).to.deep.equal([]);
      await vm1.ok(['disk', 'remove', '--mount', 'H:', '--delete-lun']);
    });
  });

  describe('remove', () => {
    it('removing a mount with nothing attached succeeds with nothing to do', async () => {
      expect(await vm1.ok(['disk', 'remove', '--mount', 'K:'])).to.equal('nothing was attached at K:\n');
      const r = await vm1.okJson(['disk', 'remove', '--mount', 'K:', '--delete-lun']);
      expect(r).to.include({ mountPath: 'K:', detached: null, lunDeleted: false });
    });

    it("refuses a state dir that belongs to another VM (exit 5), touching nothing", async () => {
      const other = d.guest('vm2', vm1.stateDir);
      const err = await other.fails(['disk', 'list'], 5);
      expect(err).to.include('belongs to VM vm1 (windows)').and.include('VM vm2 (linux)');
    });

    it('remove --delete-lun unmounts, detaches and deletes: the table, the host and the array agree afterwards', async () => {
      const r = await vm1.okJson(['disk', 'remove', '--mount', 'C:\\mt1', '--delete-lun']);
      expect(r).to.include({ mountPath: 'C:\\mt1', lunDeleted: true, resumed: false, superseded: null });
      expect(r.detached).to.include({ serial: mt1.serial });
      expect(table(vm1).mounts).to.deep.equal([]);
      expect(await d.disks('vm1')).to.deep.equal([]);
      expect((await vm1.okJson(['disk', 'list'])).disks).to.deep.equal([]);
      const array = await d.storage.getArray({});
      expect(array.mapCount).to.equal(0);
      expect(array.lunCount).to.equal(0);
    });
  });
});
