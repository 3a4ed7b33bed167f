/**
 * The guest's state dir (guest-agent/state.ts) and its locks (guest-agent/file-lock.ts), on
 * real files in a temp folder: the mount table is only ever replaced whole, a write cut short
 * leaves the old table (and its temporary file is swept up), damage is reported with what to
 * do, and a lock left by a process that died is taken over.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { parseDrivePath } from '../../common/drive-path.js';
import { AbortedError, FailedPreconditionError } from '../../common/errors.js';
import { FileLock } from '../../guest-agent/file-lock.js';
import { checkMountPoint, mountsInside } from '../../guest-agent/mount-points.js';
import { StateDir, type MountRecord, type MountTable } from '../../guest-agent/state.js';

class Died extends Error {}

function mount(path: string, os: 'windows' | 'linux' = 'windows'): MountRecord {
  const p = parseDrivePath(os, path);
  return {
    path: p.path,
    key: p.key,
    origin: 'create',
    serial: `S${path.length}`,
    naaId: '',
    sizeBytes: 64 << 20,
    address: { controller: 0, location: 0 },
    lunId: 0,
    lunPath: '',
    sharing: 'shared',
    volumeId: '0'.repeat(32),
    label: 'x',
    dataOffset: 0,
    dataBytes: 0,
    initialized: true,
    operationId: 'op',
    requestId: 'r',
    mountedAt: '',
  };
}

describe('guest state dir (guest-agent/state.ts)', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'pt-guest-state-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads an empty table before the first change, without creating anything', () => {
    const s = new StateDir(join(dir, 'never'));
    expect(s.read()).to.deep.equal({ format: 1, mounts: [], pending: [] });
    expect(existsSync(join(dir, 'never'))).to.equal(false);
  });

  it('writes the whole table on a change, and nothing when the change throws', async () => {
    const s = new StateDir(dir);
    await s.update((t) => void t.mounts.push(mount('E:')));
    expect(s.read().mounts.map((m) => m.path)).to.deep.equal(['E:']);
    const before = readFileSync(s.file, 'utf8');
    await s.update((t) => {
      t.mounts.push(mount('F:'));
      throw new Error('changed my mind');
    }).catch(() => undefined);
    expect(readFileSync(s.file, 'utf8')).to.equal(before);
  });

  it('a write cut short before its rename leaves the old table; the next change sweeps the temporary file', async () => {
    let die = false;
    const s = new StateDir(dir, {
      reached: (point) => {
        if (die && point === 'table-write') throw new Died();
      },
    });
    await s.update((t) => void t.mounts.push(mount('E:')));
    die = true;
    await s.update((t) => void t.mounts.push(mount('F:'))).catch((e) => expect(e).to.be.instanceOf(Died));
    expect(s.read().mounts.map((m) => m.path), 'the old table').to.deep.equal(['E:']);
    const leftovers = readdirSync(dir).filter((n) => n.endsWith('.tmp'));
    expect(leftovers).to.have.length(1);
    expect(JSON.parse(readFileSync(join(dir, leftovers[0]!), 'utf8')).mounts, 'the new table never renamed').to.have.length(2);
    die = false;
    await s.update((t) => void t.mounts.push(mount('G:')));
    expect(s.read().mounts.map((m) => m.path)).to.deep.equal(['E:', 'G:']);
    expect(readdirSync(dir).filter((n) => n.endsWith('.tmp'))).to.deep.equal([]);
  });

  it('reports a damaged or newer table as FAILED_PRECONDITION saying what to do, and never overwrites it', async () => {
    const s = new StateDir(dir);
    for (const [text, why] of [
      ['{"format": 1, "mounts": [', 'not JSON'],
      ['[]', 'format undefined'],
      ['{"format": 2, "mounts": [], "pending": []}', 'written by a newer guest agent'],
      ['{"format": 1}', 'no mounts or pending list'],
    ] as const) {
      writeFileSync(s.file, text);
      expect(() => s.read(), text).to.throw(FailedPreconditionError, why);
      const err = await s.update(() => undefined).catch((e: Error) => e);
      expect(err).to.be.instanceOf(FailedPreconditionError);
      expect((err as Error).message).to.include('restore it from a backup, or move it away');
      expect(readFileSync(s.file, 'utf8')).to.equal(text);
    }
  });

  it("a mount lock held by a live process is ABORTED at once; one left by a process that died is taken over", async () => {
    const s = new StateDir(dir);
    const e = parseDrivePath('windows', 'E:');
    const release = await s.lockMount(e);
    const err = await s.lockMount(parseDrivePath('windows', 'e:')).catch((x: Error) => x);
    expect(err).to.be.instanceOf(AbortedError);
    expect((err as Error).message).to.include(`another guest-agent (pid ${process.pid}) is working on E:`);
    release();
    (await s.lockMount(e))();

    // A lock file naming a process that has exited.
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' }).stdout;
    const path = join(dir, 'locks', 'stale.lock');
    writeFileSync(path, JSON.stringify({ pid: Number(dead), start: '1' }));
    const lock = await FileLock.acquire(path, { waitMs: 0, what: 'testing' });
    expect(JSON.parse(readFileSync(path, 'utf8')).pid).to.equal(process.pid);
    lock.release();
    expect(existsSync(path)).to.equal(false);
    // A lock file a crash left empty.
    writeFileSync(path, '');
    (await FileLock.acquire(path, { waitMs: 0, what: 'testing' })).release();
  });
});

describe('guest mount rules (guest-agent/mount-points.ts)', () => {
  const table = (...paths: string[]): MountTable => {
    const os = paths.some((p) => p.startsWith('/')) ? 'linux' : 'windows';
    return { format: 1, mounts: paths.map((p) => mount(p, os)), pending: [] };
  };
  const check = (os: 'windows' | 'linux', path: string, t: MountTable) => () => checkMountPoint(os, parseDrivePath(os, path), t);

  it('a Windows folder mount point sits on C: or on a volume mounted here', () => {
    expect(check('windows', 'C:\\mt1', table())).to.not.throw();
    expect(check('windows', 'E:\\logs', table('E:'))).to.not.throw();
    expect(check('windows', 'E:\\logs', table())).to.throw(FailedPreconditionError, 'no passthru volume is mounted at E: in this guest');
    const underWay: MountTable = { ...table(), pending: [{ kind: 'create', requestId: 'r', mountPath: 'E:', key: 'E:', createdAt: '', phase: 'attached' }] };
    expect(check('windows', 'E:\\logs', underWay)).to.throw(FailedPreconditionError, 'its mount has not finished');
  });

  it('no new mount hides mounts already there; nesting inside one is allowed', () => {
    expect(check('windows', 'C:\\mt1', table('C:\\mt1\\inner'))).to.throw(FailedPreconditionError, 'must be an empty folder');
    expect(check('linux', '/srv', table('/srv/data', '/srv/data/logs'))).to.throw(FailedPreconditionError, '/srv/data, /srv/data/logs are mounted inside /srv');
    expect(check('linux', '/srv/data/logs/old', table('/srv/data', '/srv/data/logs'))).to.not.throw();
    expect(check('linux', '/srv2', table('/srv'))).to.not.throw();
  });

  it('lists the mounts inside a volume, case-folded on Windows', () => {
    expect(mountsInside('windows', parseDrivePath('windows', 'e:'), table('E:', 'E:\\a', 'E:\\a\\b', 'F:\\x'))).to.deep.equal(['E:\\a', 'E:\\a\\b']);
    expect(mountsInside('linux', parseDrivePath('linux', '/srv'), table('/srv', '/srvx', '/srv/a'))).to.deep.equal(['/srv/a']);
  });
});
