/**
 * The guest volume manager (guest-agent/volumes.ts) on in-memory fakes of its own seams
 * (test/support/guest-fakes.ts): the real SimulatedGuestOs over a fake SCSI bus, a fake host
 * whose operations attach and detach disks, a real state dir in a temp folder, a clock whose
 * sleeps take no time. What the e2e tests cannot make happen on purpose is made here: disks
 * that show late or at the wrong address, watches that drop, crashes at every point.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { parseDrivePath } from '../../common/drive-path.js';
import { DomainError, FailedPreconditionError, UnavailableError } from '../../common/errors.js';
import { errorOfStatus } from '../../guest-agent/grpc-host.js';
import { buildDiskLayout, parseDiskLayout } from '../../guest-agent/layout.js';
import { SimulatedGuestOs } from '../../guest-agent/sim-os.js';
import { StateDir, type MountTable } from '../../guest-agent/state.js';
import { CRASH_POINTS, defaultLabel, GuestAgent, type CrashPoint, type Progress } from '../../guest-agent/volumes.js';
import { FakeBus, FakeClock, FakeHost, newDisk, unreachable } from '../support/guest-fakes.js';

const MiB = 1024 * 1024;

class Crash extends Error {}

interface World {
  dir: string;
  bus: FakeBus;
  host: FakeHost;
  clock: FakeClock;
  progress: Progress[];
  /** A guest agent on the world (a new one per call: a new run of the CLI). */
  agent(opts?: { crashAt?: CrashPoint; discoveryMs?: number }): GuestAgent;
  table(): MountTable;
}

let dirs: string[] = [];

function world(vm?: Partial<FakeHost['vm']>): World {
  const dir = mkdtempSync(join(tmpdir(), 'pt-guest-unit-'));
  dirs.push(dir);
  const bus = new FakeBus();
  const host = new FakeHost(bus, { id: 'vm1', name: 'web1', guestOs: 'windows', ha: true, node: 'node1', running: true, ...vm });
  const clock = new FakeClock();
  const progress: Progress[] = [];
  return {
    dir,
    bus,
    host,
    clock,
    progress,
    agent: (opts = {}) =>
      new GuestAgent(host, new SimulatedGuestOs(bus), new StateDir(dir), {
        clock,
        discovery: { timeoutMs: opts.discoveryMs ?? 5_000, firstDelayMs: 20, maxDelayMs: 1_000 },
        reconnectTimeoutMs: 10_000,
        progress: (p) => progress.push(p),
        crash: (point) => {
          if (point === opts.crashAt) throw new Crash(point);
        },
      }),
    table: () => JSON.parse(readFileSync(join(dir, 'mounts.json'), 'utf8')) as MountTable,
  };
}

async function rejects(p: Promise<unknown>): Promise<Error> {
  try {
    await p;
  } catch (err) {
    return err as Error;
  }
  throw new Error('expected a rejection');
}

describe('guest volume manager (guest-agent/volumes.ts)', () => {
  afterEach(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
    dirs = [];
  });

  describe('create', () => {
    it('records the request in the state dir before the host hears of it', async () => {
      const w = world();
      let seen: unknown;
      w.host.onCreate = (req) => {
        seen = w.table().pending.map((p) => [p.requestId === req.requestId, p.kind, p.mountPath, p.phase]);
      };
      await w.agent().create({ mount: 'C:\\mt1', sizeBytes: 64 * MiB });
      expect(seen).to.deep.equal([[true, 'create', 'C:\\mt1', 'requested']]);
    });

    it('initializes the disk for the guest OS GetSelf names, mounts it, records it and tells the host', async () => {
      const w = world();
      const r = await w.agent().create({ mount: 'c:\\Mt1', sizeBytes: 64 * MiB });
      expect(r.mount).to.include({ path: 'C:\\Mt1', label: 'Mt1', initialized: true, sizeBytes: 64 * MiB });
      const disk = [...w.bus.disks.values()][0]!;
      const parsed = parseDiskLayout((o, l) => disk.bytes.read(o, l), disk.device.sizeBytes);
      expect(parsed).to.include({ kind: 'passthru', guestOs: 'windows', label: 'Mt1', volumeId: r.mount.volumeId });
      expect(w.table().mounts).to.deep.equal([r.mount]);
      expect(w.table().pending).to.deep.equal([]);
      expect(w.host.disks.get('C:\\MT1')).to.include({ mounted: true, volumeId: r.mount.volumeId, volumeLabel: 'Mt1' });
      expect(w.host.calls).to.deep.equal(['GetSelf', 'CreateDisk', 'WatchOperation', 'ReportMount']);
    });

    it("takes the guest OS from GetSelf: a Linux VM's paths are absolute, and C:\\mt1 is refused before the host is asked", async () => {
      const w = world({ guestOs: 'linux', ha: false });
      const err = await rejects(w.agent().create({ mount: 'C:\\mt1', sizeBytes: 64 * MiB }));
      expect(err).to.be.instanceOf(DomainError).and.include({ kind: 'invalid_argument' });
      expect(w.host.calls).to.deep.equal(['GetSelf']);
      const r = await w.agent().create({ mount: '/srv/data', sizeBytes: 64 * MiB, sharing: 'dedicated' });
      expect(r.mount).to.include({ label: 'data', sharing: 'dedicated' });
      const disk = [...w.bus.disks.values()][0]!;
      expect(parseDiskLayout((o, l) => disk.bytes.read(o, l), disk.device.sizeBytes)).to.include({ guestOs: 'linux' });
    });

    it('a host refusal comes back as it is, with nothing left recorded', async () => {
      const w = world();
      w.host.failNext.CreateDisk = [errorOfStatus(Code.RESOURCE_EXHAUSTED, 'VM vm1 has no free SCSI location', 'NO_FREE_SCSI_LOCATION')];
      const err = await rejects(w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB }));
      expect(err.message).to.equal('VM vm1 has no free SCSI location');
      expect(w.table().pending).to.deep.equal([]);
    });

    it('an operation that ends FAILED throws its error and drops the request', async () => {
      const w = world();
      w.host.failOperation = errorOfStatus(Code.UNAVAILABLE, 'the storage array cannot be reached', 'ARRAY_UNAVAILABLE');
      const err = await rejects(w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB }));
      expect(err).to.be.instanceOf(UnavailableError);
      expect(err.message).to.equal('the storage array cannot be reached');
      expect(w.table()).to.include({}).and.have.property('pending').that.deep.equals([]);
      expect(w.table().mounts).to.deep.equal([]);
    });

    it('a host unreachable at the first call is reported at once, without waiting', async () => {
      const w = world();
      w.host.failNext.GetSelf = [unreachable()];
      const err = await rejects(w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB }));
      expect(err.message).to.include('cannot be reached');
      expect(w.clock.sleeps).to.deep.equal([]);
    });

    it('a watch that drops is resumed after reconnecting, with back-off, and the steps it missed are still told', async () => {
      const w = world();
      w.host.failNext.WatchOperation = [unreachable(), unreachable()];
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      expect(w.host.reconnects).to.equal(2);
      expect(w.clock.sleeps).to.deep.equal([50, 100]);
      expect(w.host.calls.filter((c) => c === 'CreateDisk')).to.have.length(1);
      const told = w.progress.filter((p) => p.kind === 'host-step').map((p) => `${p.step}:${p.event}`);
      expect(told).to.include.members(['validate:finished', 'scsi.attach:finished']);
      expect(w.progress.filter((p) => p.kind === 'retry')).to.have.length(2);
    });

    it('a host unreachable for longer than the reconnect timeout gives up, keeping the request and saying how to finish it', async () => {
      const w = world();
      w.host.failNext.WatchOperation = Array.from({ length: 100 }, unreachable);
      const err = await rejects(w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB }));
      expect(err.message).to.include('cannot be reached').and.include('run `guest-agent disk create --mount E: --size 64MiB` again to finish it');
      expect(w.table().pending.map((p) => p.phase)).to.deep.equal(['running']);
      w.host.failNext.WatchOperation = [];
      const r = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      expect(r.resumed).to.equal(true);
    });

    it('the same request again returns the mount already there, asking the host only to hear of it again', async () => {
      const w = world();
      const first = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.host.calls.length = 0;
      const again = await w.agent().create({ mount: 'e:', sizeBytes: 64 * MiB });
      expect(again).to.include({ alreadyMounted: true });
      expect(again.mount).to.deep.equal(first.mount);
      expect(w.host.calls).to.deep.equal(['GetSelf', 'ReportMount']);
      const other = await rejects(w.agent().create({ mount: 'E:', sizeBytes: 128 * MiB }));
      expect(other).to.include({ kind: 'already_exists' });
    });
  });

  describe('two runs at once', () => {
    it('on two mounts both finish, the table holding both; on one mount the second is ABORTED at once', async () => {
      const w = world();
      const [e, f] = await Promise.all([w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB }), w.agent().create({ mount: 'F:', sizeBytes: 64 * MiB })]);
      expect(w.table().mounts.map((m) => m.volumeId).sort()).to.deep.equal([e.mount.volumeId, f.mount.volumeId].sort());
      const both = await Promise.allSettled([w.agent().create({ mount: 'G:', sizeBytes: 64 * MiB }), w.agent().create({ mount: 'g:', sizeBytes: 64 * MiB })]);
      const refused = both.filter((x): x is PromiseRejectedResult => x.status === 'rejected');
      expect(refused).to.have.length(1);
      expect(refused[0]!.reason).to.include({ kind: 'aborted', reason: 'GUEST_BUSY' });
      expect(refused[0]!.reason.message).to.include('is working on G:');
    });
  });

  describe('crash and resume', () => {
    for (const point of CRASH_POINTS.filter((p) => p !== 'unmounted' && p !== 'table-write')) {
      it(`a run that dies at "${point}" is finished by the next one, the host asked once`, async () => {
        const w = world();
        const crashed = await rejects(w.agent({ crashAt: point }).create({ mount: 'C:\\mt1', sizeBytes: 64 * MiB, label: 'data' }));
        expect(crashed).to.be.instanceOf(Crash);
        const r = await w.agent().create({ mount: 'C:\\mt1', sizeBytes: 64 * MiB });
        expect(r).to.include({ resumed: true, alreadyMounted: false });
        expect(r.mount.label, 'the label recorded with the request').to.equal('data');
        expect(w.host.requests.size).to.equal(1);
        expect([...w.host.ops.values()].map((o) => o.view.state)).to.deep.equal(['succeeded']);
        expect(w.table().pending).to.deep.equal([]);
        const disk = [...w.bus.disks.values()][0]!;
        expect(parseDiskLayout((o, l) => disk.bytes.read(o, l), disk.device.sizeBytes)).to.include({ kind: 'passthru', volumeId: r.mount.volumeId });
      });
    }

    it('a run that dies after writing the volume finds it on the disk and keeps it (the volume chosen before the first write)', async () => {
      const w = world();
      await rejects(w.agent({ crashAt: 'initialized' }).create({ mount: 'E:', sizeBytes: 64 * MiB }));
      const spec = w.table().pending[0]!;
      expect(spec.kind === 'create' && spec.volume?.volumeId).to.match(/^[0-9a-f]{32}$/);
      const writes = w.bus.writeIds.size;
      const r = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      expect(r.mount.volumeId).to.equal(spec.kind === 'create' ? spec.volume!.volumeId : '');
      expect(w.bus.writeIds.size, 'nothing written again').to.equal(writes);
    });

    it('other parameters for a mount with a request recorded are FAILED_PRECONDITION, naming the command that finishes it', async () => {
      const w = world();
      await rejects(w.agent({ crashAt: 'attached' }).create({ mount: 'E:', sizeBytes: 64 * MiB }));
      const err = await rejects(w.agent().create({ mount: 'E:', sizeBytes: 128 * MiB }));
      expect(err).to.be.instanceOf(FailedPreconditionError).and.include({ reason: 'REQUEST_PENDING' });
      expect(err.message).to.include('guest-agent disk create --mount E: --size 64MiB');
    });
  });

  describe('discovery', () => {
    it('waits, backing off, for a disk that shows on the bus a few rescans late', async () => {
      const w = world();
      w.host.hideNewDisks = 3;
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      expect(w.bus.rescans).to.equal(4);
      expect(w.clock.sleeps).to.deep.equal([20, 40, 80]);
    });

    it('never takes a disk by its position: another disk at the reported address is not it, and the timeout says what was seen', async () => {
      const w = world();
      w.host.nextAddress = { controller: 0, location: 5 };
      w.host.busAddress = { controller: 0, location: 6 };
      w.bus.attach(newDisk('PTSMstranger1', 64 * MiB, { controller: 0, location: 5 }));
      const err = await rejects(w.agent({ discoveryMs: 3_000 }).create({ mount: 'E:', sizeBytes: 64 * MiB }));
      expect(err).to.be.instanceOf(UnavailableError).and.include({ reason: 'DISCOVERY_TIMEOUT' });
      expect(err.message).to.include('did not appear at SCSI 0:5 within 3000 ms').and.include('at SCSI 0:5 the bus shows serial PTSMstranger1');
      expect(err.message).to.include('serial PTSM00000001 shows at SCSI 0:6 instead, which is not where the host attached it');
      expect(w.bus.writeIds.size, 'neither disk was written').to.equal(0);
      expect(err.message, 'the request stays, and the message says so').to.include('run `guest-agent disk create --mount E: --size 64MiB` again');
      expect(w.table().pending.map((p) => p.phase)).to.deep.equal(['attached']);
      expect(w.table().mounts).to.deep.equal([]);
    });
  });

  describe('connect', () => {
    function usedDisk(serial: string, guestOs: 'windows' | 'linux') {
      const d = newDisk(serial, 64 * MiB);
      const layout = buildDiskLayout({ diskBytes: 64 * MiB, guestOs, label: 'reports', volumeId: 'ab'.repeat(16), createdAt: new Date(0) });
      for (const x of layout.writes) d.bytes.write(x.offset, x.data);
      const data = Buffer.alloc(512, 7);
      d.bytes.write(layout.dataOffset, data);
      return { d, layout, data };
    }

    it('keeps the passthru volume found on a LUN used before, and its data', async () => {
      const w = world();
      const { d, layout, data } = usedDisk('PTSMreports01', 'windows');
      w.host.available.set('PTSMreports01', d);
      const r = await w.agent().connect({ mount: 'F:', lun: 'PTSMreports01', label: 'ignored' });
      expect(r.mount).to.include({ origin: 'connect', label: 'reports', volumeId: 'ab'.repeat(16), initialized: false, dataOffset: layout.dataOffset });
      const back: Buffer[] = [];
      await w.agent().read({ mount: 'F:', at: 0, length: 512 }, (c) => void back.push(Buffer.from(c)));
      expect(Buffer.concat(back).equals(data)).to.equal(true);
    });

    it('refuses a disk holding something else, writing nothing, until --force', async () => {
      const w = world();
      const d = newDisk('PTSMforeign01', 64 * MiB);
      const junk = Buffer.alloc(512, 0xee);
      d.bytes.write(0, junk);
      w.host.available.set('PTSMforeign01', d);
      const err = await rejects(w.agent().connect({ mount: 'F:', lun: 'PTSMforeign01' }));
      expect(err).to.include({ reason: 'DISK_NOT_EMPTY' });
      expect(err.message).to.include('Nothing was written').and.include('--force');
      expect(d.bytes.read(0, 512).equals(junk)).to.equal(true);
      expect(w.bus.writeIds.size).to.equal(0);
      const r = await w.agent().connect({ mount: 'F:', lun: 'PTSMforeign01', force: true });
      expect(r).to.include({ resumed: true });
      expect(r.mount).to.include({ initialized: true, label: 'Volume F' });
    });

    it("refuses a passthru volume of the other guest OS (it could not read it) unless --force", async () => {
      const w = world();
      const { d } = usedDisk('PTSMlinux0001', 'linux');
      w.host.available.set('PTSMlinux0001', d);
      const err = await rejects(w.agent().connect({ mount: 'F:', lun: 'PTSMlinux0001' }));
      expect(err).to.include({ reason: 'VOLUME_OF_OTHER_OS' });
    });

    it('while a connect of /srv is unfinished, no mount is made inside /srv (finishing it would hide it), and giving it up works (found by the chaos run)', async () => {
      const w = world({ guestOs: 'linux', ha: false });
      const { d } = usedDisk('PTSMwindows01', 'windows');
      w.host.available.set('PTSMwindows01', d);
      expect(await rejects(w.agent().connect({ mount: '/srv', lun: 'PTSMwindows01' }))).to.include({ reason: 'VOLUME_OF_OTHER_OS' });
      for (const inside of ['/srv/d1', '/srv/d1/nested']) {
        const err = await rejects(w.agent().create({ mount: inside, sizeBytes: 64 * MiB }));
        expect(err, inside).to.be.instanceOf(FailedPreconditionError).and.include({ reason: 'MOUNT_POINT_PENDING' });
        expect(err.message).to.include('inside /srv, whose `disk connect` has not finished');
      }
      await w.agent().create({ mount: '/data', sizeBytes: 64 * MiB });
      const r = await w.agent().remove({ mount: '/srv', deleteLun: false });
      expect(r.detached?.serial).to.equal('PTSMwindows01');
      expect(w.table().pending).to.deep.equal([]);
      await w.agent().create({ mount: '/srv/d1', sizeBytes: 64 * MiB });
    });
  });

  describe('remove', () => {
    it('unmounts first, then tells the host, then asks it to detach', async () => {
      const w = world();
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.host.calls.length = 0;
      let tableAtRemove: unknown;
      const remove = w.host.removeDisk.bind(w.host);
      w.host.removeDisk = async (req) => {
        tableAtRemove = w.table().mounts.length;
        return remove(req);
      };
      const r = await w.agent().remove({ mount: 'E:', deleteLun: true });
      expect(tableAtRemove, 'unmounted before the host is asked').to.equal(0);
      expect(w.host.calls).to.deep.equal(['GetSelf', 'ReportUnmount', 'RemoveDisk', 'WatchOperation']);
      expect(r).to.include({ lunDeleted: true, mountPath: 'E:' });
      expect(w.bus.disks.size).to.equal(0);
      expect(w.table()).to.deep.include({ mounts: [], pending: [] });
    });

    it('refuses a volume that other mounts sit inside, naming them, changing nothing', async () => {
      const w = world();
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      await w.agent().create({ mount: 'E:\\logs', sizeBytes: 64 * MiB });
      await w.agent().create({ mount: 'E:\\logs\\old', sizeBytes: 64 * MiB });
      const before = w.table();
      w.host.calls.length = 0;
      const err = await rejects(w.agent().remove({ mount: 'E:', deleteLun: true }));
      expect(err).to.be.instanceOf(FailedPreconditionError).and.include({ reason: 'MOUNTS_INSIDE_VOLUME' });
      expect(err.message).to.include('E:\\logs, E:\\logs\\old are mounted');
      expect(w.host.calls).to.deep.equal(['GetSelf']);
      expect(w.table()).to.deep.equal(before);
    });

    it('mounts the volume again when the host refuses to detach, so nothing changed', async () => {
      const w = world();
      const made = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.host.failNext.RemoveDisk = [errorOfStatus(Code.FAILED_PRECONDITION, 'hot remove is not supported on node node1', 'HOT_PLUG_UNSUPPORTED')];
      const err = await rejects(w.agent().remove({ mount: 'E:', deleteLun: false }));
      expect(err.message).to.equal('hot remove is not supported on node node1 (E: is mounted again)');
      expect(w.table().mounts).to.deep.equal([made.mount]);
      expect(w.table().pending).to.deep.equal([]);
      expect(w.host.disks.get('E:')).to.include({ mounted: true });
    });

    it('a removal the host refuses, whose volume then cannot be mounted again (the host gone for a while), stays recorded: the disk is not forgotten, and the same command finishes it (found by the chaos run)', async () => {
      const w = world();
      const made = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.host.failNext.RemoveDisk = [errorOfStatus(Code.ABORTED, 'operation op-9 is in flight on VM vm1', 'OPERATION_IN_FLIGHT')];
      const rescan = w.bus.rescanBus.bind(w.bus);
      let down = true;
      w.bus.rescanBus = async () => {
        if (down) throw unreachable();
        return rescan();
      };
      const err = await rejects(w.agent().remove({ mount: 'E:', deleteLun: false }));
      expect(err.message).to.include('operation op-9 is in flight').and.include('could not be mounted again').and.include('guest-agent disk remove --mount E:');
      const t = w.table();
      expect(t.mounts, 'unmounted').to.deep.equal([]);
      expect(t.pending.map((p) => [p.kind, p.mountPath, p.phase]), 'the removal stays recorded, with what was mounted').to.deep.equal([['remove', 'E:', 'unmounted']]);
      expect((t.pending[0] as { unmounted?: unknown }).unmounted).to.deep.equal(made.mount);
      // The host back, the same command finishes the removal.
      down = false;
      const r = await w.agent().remove({ mount: 'E:', deleteLun: false });
      expect(r).to.include({ resumed: true });
      expect(r.detached?.serial).to.equal(made.mount.serial);
      expect(w.table()).to.deep.include({ mounts: [], pending: [] });
    });

    it('a volume whose disk the host detached behind the guest\'s back is unmounted, and the removal succeeds', async () => {
      const w = world();
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.host.disks.delete('E:');
      const r = await w.agent().remove({ mount: 'E:', deleteLun: false });
      expect(r).to.include({ unmounted: true, detached: null, lunDeleted: false });
      expect(w.table()).to.deep.include({ mounts: [], pending: [] });
    });

    it('a removal that takes the place of an unfinished create and is then refused by the host puts that request back, so the disk it attached is not lost (found by the chaos run)', async () => {
      const w = world();
      await rejects(w.agent({ crashAt: 'sent' }).create({ mount: 'E:', sizeBytes: 64 * MiB }));
      w.host.failNext.RemoveDisk = [errorOfStatus(Code.FAILED_PRECONDITION, 'hot remove is not supported on node node1', 'HOT_PLUG_UNSUPPORTED')];
      const err = await rejects(w.agent().remove({ mount: 'E:', deleteLun: true }));
      expect(err.message).to.include('hot remove is not supported on node node1').and.include('disk create` of E: is recorded again');
      expect(w.host.disks.get('E:'), 'the create attached its disk').to.not.equal(undefined);
      expect(w.table().pending.map((p) => [p.kind, p.mountPath])).to.deep.equal([['create', 'E:']]);
      // Nothing lost: the same command finishes the create, or a removal gives the disk back.
      const r = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      expect(r).to.include({ resumed: true });
      expect([...w.host.ops.values()].filter((o) => o.view.kind === 'create_disk').length, 'the host asked to create once').to.equal(1);
      await w.agent().remove({ mount: 'E:', deleteLun: true });
      expect(w.bus.disks.size).to.equal(0);
      expect(w.table()).to.deep.include({ mounts: [], pending: [] });
    });

    it('a removal refused for the mounts inside the volume keeps the unfinished create it would have taken the place of (found by the chaos run)', async () => {
      const w = world();
      await rejects(w.agent({ crashAt: 'mounted' }).create({ mount: 'E:', sizeBytes: 64 * MiB }));
      await w.agent().create({ mount: 'E:\\logs', sizeBytes: 64 * MiB });
      const before = w.table();
      const err = await rejects(w.agent().remove({ mount: 'E:', deleteLun: true }));
      expect(err).to.include({ reason: 'MOUNTS_INSIDE_VOLUME' });
      expect(w.table(), 'nothing changed').to.deep.equal(before);
      const r = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      expect(r).to.include({ resumed: true });
      expect(w.host.disks.get('E:')).to.include({ mounted: true });
    });

    it('a removal of a mount with an unfinished create takes its place', async () => {
      const w = world();
      await rejects(w.agent({ crashAt: 'attached' }).create({ mount: 'E:', sizeBytes: 64 * MiB }));
      const r = await w.agent().remove({ mount: 'E:', deleteLun: true });
      expect(r.superseded).to.include('the unfinished `disk create` of E:');
      expect(w.bus.disks.size).to.equal(0);
      expect(w.table()).to.deep.include({ mounts: [], pending: [] });
    });
  });

  describe('list', () => {
    it('flags each disagreement between the mount table and the host instead of hiding it', async () => {
      const w = world();
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      await w.agent().create({ mount: 'F:', sizeBytes: 64 * MiB });
      await w.agent().create({ mount: 'G:', sizeBytes: 64 * MiB });
      w.host.disks.delete('E:'); // detached behind the guest's back
      w.host.disks.get('F:')!.mounted = false; // the host lost the report
      w.host.disks.set('H:', { ...w.host.disks.get('G:')!, mountPath: 'H:', serial: 'PTSMsomeone01' }); // not mounted here
      const { disks } = await w.agent().list();
      const by = Object.fromEntries(disks.map((x) => [x.mountPath, x]));
      expect(by['E:']!.state).to.equal('missing');
      expect(by['E:']!.problems[0]).to.include('the host shows no disk there');
      expect(by['F:']!.state).to.equal('mounted');
      expect(by['F:']!.problems[0]).to.include('the host has no record of the mount');
      expect(by['G:']!.problems).to.deep.equal([]);
      expect(by['H:']!.state).to.equal('not mounted');
      expect(by['H:']!.problems[0]).to.include('not mounted in this guest');
    });

    it('refuses a state dir that belongs to another VM', async () => {
      const w = world();
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.host.vm.id = 'vm9';
      const err = await rejects(w.agent().list());
      expect(err).to.include({ reason: 'STATE_DIR_OF_ANOTHER_VM' });
    });
  });

  describe('read and write', () => {
    it("reach only the volume's data area, bounds-checked before anything is sent", async () => {
      const w = world();
      const { mount } = await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      const err = await rejects(w.agent().write({ mount: 'E:', at: mount.dataBytes - 1, length: 2 }, async () => Buffer.alloc(2)));
      expect(err).to.include({ kind: 'invalid_argument', reason: 'OUT_OF_RANGE' });
      await w.agent().write({ mount: 'E:', at: 0, length: 3 }, async (o, n) => Buffer.from('abc').subarray(o, o + n));
      const disk = [...w.bus.disks.values()][0]!;
      expect(disk.bytes.read(mount.dataOffset, 512).subarray(0, 3).toString()).to.equal('abc');
      expect(disk.bytes.read(1024 * 1024, 512).subarray(0, 8).toString(), 'the header stays').to.equal('PTHRUVOL');
    });

    it('wait out a failover: block I/O that is UNAVAILABLE while the VM moves is retried', async () => {
      const w = world();
      await w.agent().create({ mount: 'E:', sizeBytes: 64 * MiB });
      w.bus.ioErrors.push(
        errorOfStatus(Code.UNAVAILABLE, 'node node1 has failed; VM vm1 is restarting on another node: retry in a moment', 'VM_FAILING_OVER'),
        errorOfStatus(Code.FAILED_PRECONDITION, 'disk resource is online pending, not online', 'RESOURCE_NOT_ONLINE'),
      );
      const got: Buffer[] = [];
      await w.agent().read({ mount: 'E:', at: 0, length: 10 }, (c) => void got.push(c));
      expect(Buffer.concat(got)).to.have.length(10);
      expect(w.clock.sleeps).to.have.length(2);
    });
  });

  it('makes a default label from the mount path', () => {
    expect(defaultLabel(parseDrivePath('windows', 'C:\\mt1'))).to.equal('mt1');
    expect(defaultLabel(parseDrivePath('windows', 'e:'))).to.equal('Volume E');
    expect(defaultLabel(parseDrivePath('linux', '/srv/data/'))).to.equal('data');
    expect(Buffer.byteLength(defaultLabel(parseDrivePath('linux', `/${'é'.repeat(40)}`)))).to.be.at.most(32);
  });
});
