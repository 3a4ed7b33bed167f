/**
 * The StorageArray domain class, driven directly (no gRPC): LUNs, pools, igroups, LUN maps,
 * masked block I/O, thin provisioning, SCSI-3 persistent reservations, request-id replay,
 * durability across a restart and crash-leftover reconciliation. Every refusal is checked
 * to leave the whole observable state (test/support/array-state.ts) unchanged.
 */
import { expect } from 'chai';
import fc from 'fast-check';
import { existsSync, mkdtempSync, readdirSync, readlinkSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DomainError, type ErrorKind, InvalidArgumentError } from '../../common/errors.js';
import { StorageArray, type ArrayOptions, type CreateIgroupInput, type CreateLunInput } from '../../storage-sim/array.js';
import type { LunView, ReservationType } from '../../storage-sim/model.js';
import { MAX_IO_BYTES, MiB, TiB, type OsType } from '../../storage-sim/rules.js';
import { arrayState, type ArrayState } from '../support/array-state.js';

const A = 'iqn.1991-05.com.microsoft:node-a';
const B = 'iqn.1991-05.com.microsoft:node-b';
const C = 'iqn.1991-05.com.microsoft:node-c';
const W1 = '20:00:00:25:b5:00:00:01';
const W2 = '20:00:00:25:b5:00:00:02';
const LUN1 = '/vol/vol1/lun1';
const LUN2 = '/vol/vol1/lun2';
const POOLS = [
  { name: 'aggr1', capacityBytes: 256 * MiB },
  { name: 'aggr2', capacityBytes: 64 * MiB },
];

let dir: string;
let array: StorageArray;

function open(opts: Partial<ArrayOptions> = {}): StorageArray {
  return new StorageArray({ dataDir: dir, pools: POOLS, ...opts });
}

/** Closes the array and opens a new one on the same data dir, as after a restart. */
function reopen(opts: Partial<ArrayOptions> = {}): StorageArray {
  array.close();
  array = new StorageArray({ dataDir: dir, ...opts });
  return array;
}

function lunInput(path: string, over: Partial<CreateLunInput> = {}): CreateLunInput {
  return { requestId: '', path, sizeBytes: BigInt(8 * MiB), osType: 'windows', thin: undefined, comment: '', pool: '', ...over };
}

function makeLun(path: string, over: Partial<CreateLunInput> = {}): LunView {
  return array.createLun(lunInput(path, over));
}

function igroupInput(name: string, initiators: string[], over: Partial<CreateIgroupInput> = {}): CreateIgroupInput {
  return { requestId: '', name, protocol: 'iscsi', osType: 'windows', initiators, ...over };
}

function makeIgroup(name: string, initiators: string[], over: Partial<CreateIgroupInput> = {}) {
  return array.createIgroup(igroupInput(name, initiators, over));
}

function map(lun: string, igroup: string, lunId?: number) {
  return array.mapLun({ requestId: '', lun, igroup, lunId });
}

function write(lun: string, initiator: string, offset: number, data: Buffer, requestId = '') {
  return array.writeBlocks({ requestId, lun, initiator, offsetBytes: BigInt(offset), data });
}

function read(lun: string, initiator: string, offset: number, length: number): Buffer {
  return array.readBlocks({ lun, initiator, offsetBytes: BigInt(offset), lengthBytes: length });
}

/** Deterministic, non-zero bytes. */
function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = ((i * 31 + seed * 17) % 251) + 1;
  return b;
}

interface Expected {
  field?: string;
  reason?: string;
  message?: RegExp;
}

/** Runs fn, which must throw a DomainError of this kind (and field, reason, message). */
function expectError(fn: () => unknown, kind: ErrorKind, want: Expected = {}): DomainError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught, 'expected the call to fail').to.not.equal(undefined);
  expect(caught, String(caught)).to.be.instanceOf(DomainError);
  const err = caught as DomainError;
  expect(err.kind, err.message).to.equal(kind);
  if (want.field !== undefined) expect((err as InvalidArgumentError).field, err.message).to.equal(want.field);
  if (want.reason !== undefined) expect(err.reason, err.message).to.equal(want.reason);
  if (want.message !== undefined) expect(err.message).to.match(want.message);
  return err;
}

/** Like expectError, and the whole observable state (with data) is the same afterwards. */
function expectRefusedUnchanged(fn: () => unknown, kind: ErrorKind, want: Expected = {}): DomainError {
  const before = arrayState(array);
  const err = expectError(fn, kind, want);
  expect(arrayState(array)).to.deep.equal(before);
  return err;
}

function pool(name: string) {
  return array.listPools().find((p) => p.name === name)!;
}

/** Gives each test of the calling describe a fresh array in a fresh data dir. */
function useFreshArray(): void {
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'passthru-array-'));
    array = open();
  });
  afterEach(() => {
    array.close();
    rmSync(dir, { recursive: true, force: true });
  });
}

describe('StorageArray: opening a data dir', () => {
  useFreshArray();
  it('an empty data dir with no pools given gets pool aggr1 of 64 TiB, array name sim1 and serial prefix PTSM', () => {
    array.close();
    rmSync(dir, { recursive: true, force: true });
    array = new StorageArray({ dataDir: dir });
    const info = array.getArray();
    expect(info.name).to.equal('sim1');
    expect(info.serialPrefix).to.equal('PTSM');
    expect(info.pools).to.deep.equal([{ name: 'aggr1', capacityBytes: 64 * TiB, usedBytes: 0, availableBytes: 64 * TiB, lunCount: 0 }]);
    expect([info.lunCount, info.igroupCount, info.mapCount]).to.deep.equal([0, 0, 0]);
    expect(info.faultsEnabled).to.equal(false);
  });

  it('a data dir keeps its array name and serial prefix; opening it as another array is FAILED_PRECONDITION', () => {
    array.close();
    rmSync(dir, { recursive: true, force: true });
    array = new StorageArray({ dataDir: dir, name: 'arrayX', serialPrefix: 'XY' });
    reopen();
    expect(array.name).to.equal('arrayX');
    expect(array.serialPrefix).to.equal('XY');
    array.close();
    expectError(() => new StorageArray({ dataDir: dir, name: 'other' }), 'failed_precondition', { reason: 'DATA_DIR_MISMATCH' });
    expectError(() => new StorageArray({ dataDir: dir, serialPrefix: 'ZZ' }), 'failed_precondition', { reason: 'DATA_DIR_MISMATCH' });
    array = new StorageArray({ dataDir: dir });
  });

  it('a refused start closes the database and data files it opened', function () {
    if (!existsSync('/proc/self/fd')) this.skip();
    const openOnDir = () =>
      readdirSync('/proc/self/fd').filter((fd) => {
        try {
          return readlinkSync(`/proc/self/fd/${fd}`).startsWith(dir);
        } catch {
          return false;
        }
      }).length;
    makeLun(LUN1);
    array.close();
    expect(openOnDir()).to.equal(0);
    expectError(() => new StorageArray({ dataDir: dir, name: 'other' }), 'failed_precondition', { reason: 'DATA_DIR_MISMATCH' });
    expectError(() => open({ pools: [{ name: 'aggr1', capacityBytes: MiB }] }), 'failed_precondition', { reason: 'POOL_TOO_SMALL' });
    expect(openOnDir()).to.equal(0);
    array = open();
  });

  it('a malformed array name or serial prefix is INVALID_ARGUMENT', () => {
    const other = mkdtempSync(join(tmpdir(), 'passthru-array-'));
    try {
      expectError(() => new StorageArray({ dataDir: other, name: 'bad name' }), 'invalid_argument', { field: 'name' });
      expectError(() => new StorageArray({ dataDir: other, serialPrefix: 'TOOLONG' }), 'invalid_argument', { field: 'serial_prefix' });
    } finally {
      rmSync(other, { recursive: true, force: true });
    }
  });

  it('a pool grows when restarted with a larger capacity but cannot shrink below what it holds', () => {
    makeLun(LUN1, { sizeBytes: BigInt(32 * MiB) });
    reopen({ pools: [{ name: 'aggr1', capacityBytes: 512 * MiB }] });
    expect(pool('aggr1').capacityBytes).to.equal(512 * MiB);
    expect(pool('aggr1').usedBytes).to.equal(32 * MiB);
    array.close();
    expectError(() => open({ pools: [{ name: 'aggr1', capacityBytes: 16 * MiB }] }), 'failed_precondition', { reason: 'POOL_TOO_SMALL' });
    array = new StorageArray({ dataDir: dir });
    expect(pool('aggr1').capacityBytes).to.equal(512 * MiB);
  });

  it('a pool configured with a bad name or a non-positive capacity is INVALID_ARGUMENT', () => {
    array.close();
    expectError(() => open({ pools: [{ name: '1bad', capacityBytes: MiB }] }), 'invalid_argument', { field: 'pool' });
    expectError(() => open({ pools: [{ name: 'p', capacityBytes: 0 }] }), 'invalid_argument', { field: 'pool' });
    array = open();
  });
});

describe('StorageArray: LUNs', () => {
  useFreshArray();
  it('CreateLun returns the LUN with uuid, split path, prefixed 12-character serial, NAA-6 id, size, os_type, thick default, online state, time, comment, pool', () => {
    const before = Date.now();
    const l = makeLun(LUN1, { comment: 'owner: vm-1', osType: 'linux' });
    expect(l.uuid).to.match(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect([l.path, l.volume, l.name]).to.deep.equal([LUN1, 'vol1', 'lun1']);
    expect(l.serial).to.match(/^PTSM[A-Za-z0-9]{8}$/);
    expect(l.naaId).to.equal(`600a0980${Buffer.from(l.serial, 'ascii').toString('hex')}`);
    expect(l.naaId).to.match(/^6[0-9a-f]{31}$/);
    expect(l.sizeBytes).to.equal(8 * MiB);
    expect(l.osType).to.equal('linux');
    expect(l.thin).to.equal(false);
    expect(l.state).to.equal('online');
    expect(l.createdMs).to.be.within(before, Date.now());
    expect(l.comment).to.equal('owner: vm-1');
    expect(l.pool).to.equal('aggr1');
    expect(l.usedBytes).to.equal(8 * MiB);
    expect(l.mapped).to.equal(false);
    expect(existsSync(array.data.pathOf(l.uuid)), 'no data file before the first write').to.equal(false);
  });

  it("a LUN's data file is made at its first write, exactly the LUN's size, and a never-written LUN reads as zeros", () => {
    makeIgroup('h', [A]);
    const l = makeLun(LUN1);
    map(LUN1, 'h');
    expect(read(LUN1, A, 4 * MiB, 4096)).to.deep.equal(Buffer.alloc(4096));
    expect(existsSync(array.data.pathOf(l.uuid))).to.equal(false);
    write(LUN1, A, 512, pattern(1024, 3));
    expect(statSync(array.data.pathOf(l.uuid)).size).to.equal(8 * MiB);
    expect(read(LUN1, A, 0, 2048)).to.deep.equal(Buffer.concat([Buffer.alloc(512), pattern(1024, 3), Buffer.alloc(512)]));
  });

  it('every LUN gets its own serial and uuid', () => {
    const luns = Array.from({ length: 60 }, (_, i) => makeLun(`/vol/v/l${i}`, { thin: true }));
    expect(new Set(luns.map((l) => l.serial)).size).to.equal(60);
    expect(new Set(luns.map((l) => l.uuid)).size).to.equal(60);
  });

  it('GetLun finds a LUN by path, by uuid in either case and by serial', () => {
    const l = makeLun(LUN1);
    for (const ref of [LUN1, l.uuid, l.uuid.toUpperCase(), l.serial]) expect(array.getLun(ref).uuid).to.equal(l.uuid);
  });

  it('GetLun of an unknown LUN is NOT_FOUND, of a malformed reference INVALID_ARGUMENT', () => {
    makeLun(LUN1);
    for (const ref of ['/vol/vol1/nope', randomUUID(), 'PTSMnotthere']) expectError(() => array.getLun(ref), 'not_found', { reason: 'LUN_NOT_FOUND' });
    for (const ref of ['', 'lun1', '/vol/1x/y']) expectError(() => array.getLun(ref), 'invalid_argument', { field: 'lun' });
  });

  it('CreateLun of an existing path with the same parameters returns the same LUN and creates nothing', () => {
    const first = makeLun(LUN1, { comment: 'c', thin: false });
    const before = arrayState(array);
    const again = makeLun(LUN1, { comment: 'c', thin: undefined, pool: 'aggr1' });
    expect(again.uuid).to.equal(first.uuid);
    expect(again.serial).to.equal(first.serial);
    expect(arrayState(array)).to.deep.equal(before);
  });

  const differing: [string, Partial<CreateLunInput>, RegExp][] = [
    ['size', { sizeBytes: BigInt(16 * MiB) }, /size 8388608/],
    ['os_type', { osType: 'linux' }, /os_type windows/],
    ['provisioning', { thin: true }, /thick/],
    ['comment', { comment: 'other' }, /comment ""/],
    ['pool', { pool: 'aggr2' }, /pool aggr1/],
  ];
  for (const [what, over, message] of differing) {
    it(`CreateLun of an existing path with another ${what} is ALREADY_EXISTS and changes nothing`, () => {
      makeLun(LUN1);
      expectRefusedUnchanged(() => makeLun(LUN1, over), 'already_exists', { reason: 'LUN_ALREADY_EXISTS', message });
    });
  }

  it('a thick LUN reserves its size in its pool; a thick LUN the pool cannot hold is RESOURCE_EXHAUSTED and nothing is created', () => {
    makeLun('/vol/v2/a', { pool: 'aggr2', sizeBytes: BigInt(40 * MiB) });
    expect(pool('aggr2')).to.deep.include({ usedBytes: 40 * MiB, availableBytes: 24 * MiB, lunCount: 1 });
    expectRefusedUnchanged(() => makeLun('/vol/v2/b', { sizeBytes: BigInt(24 * MiB + 512) }), 'resource_exhausted', {
      reason: 'POOL_FULL',
      message: /pool aggr2 has 24 MiB free/,
    });
    makeLun('/vol/v2/b', { sizeBytes: BigInt(24 * MiB) });
    expect(pool('aggr2')).to.deep.include({ usedBytes: 64 * MiB, availableBytes: 0, lunCount: 2 });
  });

  it('a thin LUN takes no pool space when created, so it fits a pool with no room for a thick one', () => {
    makeLun('/vol/v2/a', { pool: 'aggr2', sizeBytes: BigInt(64 * MiB) });
    const thin = makeLun('/vol/v2/thin', { sizeBytes: BigInt(TiB), thin: true });
    expect(thin.usedBytes).to.equal(0);
    expect(pool('aggr2')).to.deep.include({ usedBytes: 64 * MiB, lunCount: 2 });
  });

  it('a new volume goes to the first pool; an existing volume keeps its pool; naming an unknown pool is NOT_FOUND', () => {
    expect(makeLun('/vol/va/l', { sizeBytes: BigInt(4 * MiB) }).pool).to.equal('aggr1');
    expect(makeLun('/vol/vb/l', { pool: 'aggr2', sizeBytes: BigInt(4 * MiB) }).pool).to.equal('aggr2');
    expect(makeLun('/vol/vb/m', { sizeBytes: BigInt(4 * MiB) }).pool).to.equal('aggr2');
    expectRefusedUnchanged(() => makeLun('/vol/vb/n', { pool: 'aggr1' }), 'invalid_argument', { field: 'pool', message: /lives in pool aggr2/ });
    expectRefusedUnchanged(() => makeLun('/vol/vc/l', { pool: 'aggr9' }), 'not_found', { reason: 'POOL_NOT_FOUND' });
  });

  it('ListLuns returns LUNs ordered by path in pages, with a token until the last page', () => {
    const paths = Array.from({ length: 25 }, (_, i) => `/vol/v/l${String(i).padStart(2, '0')}`);
    for (const p of [...paths].reverse()) makeLun(p, { thin: true });
    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = array.listLuns({ pageSize: 10, pageToken: token, pathPrefix: '' });
      expect(page.items.length).to.be.at.most(10);
      seen.push(...page.items.map((l) => l.path));
      token = page.nextPageToken;
      pages++;
    } while (token !== '');
    expect(pages).to.equal(3);
    expect(seen).to.deep.equal(paths);
    expect(array.listLuns({ pageSize: 0, pageToken: '', pathPrefix: '' }).items).to.have.length(25);
  });

  it('ListLuns with a path prefix returns only LUNs under it, paged, and the last page has no token', () => {
    for (let i = 0; i < 12; i++) makeLun(`/vol/a/l${String(i).padStart(2, '0')}`, { thin: true });
    for (let i = 0; i < 5; i++) makeLun(`/vol/b/l${i}`, { thin: true });
    makeLun('/vol/ab/x', { thin: true });
    const first = array.listLuns({ pageSize: 5, pageToken: '', pathPrefix: '/vol/a/' });
    expect(first.items.map((l) => l.path)).to.deep.equal(['/vol/a/l00', '/vol/a/l01', '/vol/a/l02', '/vol/a/l03', '/vol/a/l04']);
    const second = array.listLuns({ pageSize: 5, pageToken: first.nextPageToken, pathPrefix: '/vol/a/' });
    const third = array.listLuns({ pageSize: 5, pageToken: second.nextPageToken, pathPrefix: '/vol/a/' });
    expect(third.items.map((l) => l.path)).to.deep.equal(['/vol/a/l10', '/vol/a/l11']);
    expect(third.nextPageToken).to.equal('');
    expect(array.listLuns({ pageSize: 100, pageToken: '', pathPrefix: '/vol/b/' }).items).to.have.length(5);
    expect(array.listLuns({ pageSize: 100, pageToken: '', pathPrefix: '/vol/a' }).items).to.have.length(13);
    expect(array.listLuns({ pageSize: 100, pageToken: '', pathPrefix: '/vol/zzz/' })).to.deep.equal({ items: [], nextPageToken: '' });
  });

  it('ResizeLun grows a LUN, keeps its data and takes the growth from a thick LUN\'s pool', () => {
    makeIgroup('h', [A]);
    const l = makeLun(LUN1);
    map(LUN1, 'h');
    const data = pattern(4096, 1);
    write(LUN1, A, 8 * MiB - 4096, data);
    const grown = array.resizeLun({ requestId: '', lun: l.serial, sizeBytes: BigInt(12 * MiB) });
    expect(grown.sizeBytes).to.equal(12 * MiB);
    expect(grown.usedBytes).to.equal(12 * MiB);
    expect(pool('aggr1').usedBytes).to.equal(12 * MiB);
    expect(statSync(array.data.pathOf(l.uuid)).size).to.equal(12 * MiB);
    expect(read(LUN1, A, 8 * MiB - 4096, 4096)).to.deep.equal(data);
    expect(read(LUN1, A, 8 * MiB, 4096)).to.deep.equal(Buffer.alloc(4096));
    write(LUN1, A, 12 * MiB - 512, pattern(512, 2));
  });

  it('ResizeLun to the same size succeeds and changes nothing; a smaller size is INVALID_ARGUMENT SHRINK_REFUSED', () => {
    makeLun(LUN1);
    const before = arrayState(array);
    expect(array.resizeLun({ requestId: '', lun: LUN1, sizeBytes: BigInt(8 * MiB) }).sizeBytes).to.equal(8 * MiB);
    expect(arrayState(array)).to.deep.equal(before);
    expectRefusedUnchanged(() => array.resizeLun({ requestId: '', lun: LUN1, sizeBytes: BigInt(4 * MiB) }), 'invalid_argument', {
      field: 'size_bytes',
      reason: 'SHRINK_REFUSED',
    });
  });

  it('ResizeLun of a thick LUN beyond its pool\'s free space is RESOURCE_EXHAUSTED; a thin LUN grows regardless', () => {
    makeLun('/vol/v2/a', { pool: 'aggr2', sizeBytes: BigInt(60 * MiB) });
    expectRefusedUnchanged(() => array.resizeLun({ requestId: '', lun: '/vol/v2/a', sizeBytes: BigInt(65 * MiB) }), 'resource_exhausted', {
      reason: 'POOL_FULL',
    });
    makeLun('/vol/v2/t', { thin: true });
    expect(array.resizeLun({ requestId: '', lun: '/vol/v2/t', sizeBytes: BigInt(TiB) }).sizeBytes).to.equal(TiB);
  });

  it('SetLunState takes a LUN offline (block I/O FAILED_PRECONDITION LUN_OFFLINE) and online again', () => {
    makeIgroup('h', [A]);
    makeLun(LUN1);
    map(LUN1, 'h');
    expect(array.setLunState({ requestId: '', lun: LUN1, state: 'offline' }).state).to.equal('offline');
    expect(array.getLun(LUN1).state).to.equal('offline');
    expectRefusedUnchanged(() => read(LUN1, A, 0, 512), 'failed_precondition', { reason: 'LUN_OFFLINE' });
    expectRefusedUnchanged(() => write(LUN1, A, 0, pattern(512, 1)), 'failed_precondition', { reason: 'LUN_OFFLINE' });
    expect(array.setLunState({ requestId: '', lun: LUN1, state: 'online' }).state).to.equal('online');
    write(LUN1, A, 0, pattern(512, 1));
    expectRefusedUnchanged(() => array.setLunState({ requestId: '', lun: LUN1, state: undefined }), 'invalid_argument', { field: 'state' });
  });

  it('DeleteLun of a mapped LUN is FAILED_PRECONDITION LUN_MAPPED naming the igroups, and changes nothing', () => {
    makeIgroup('h1', [A]);
    makeIgroup('h2', [B]);
    makeLun(LUN1);
    map(LUN1, 'h1');
    map(LUN1, 'h2');
    expectRefusedUnchanged(() => array.deleteLun({ requestId: '', lun: LUN1, force: false }), 'failed_precondition', {
      reason: 'LUN_MAPPED',
      message: /h1, h2/,
    });
  });

  it('DeleteLun with force unmaps the LUN from every igroup, deletes it, its file and frees its pool space', () => {
    makeIgroup('h1', [A]);
    makeIgroup('h2', [B]);
    const l = makeLun(LUN1);
    map(LUN1, 'h1');
    map(LUN1, 'h2');
    expect(array.deleteLun({ requestId: '', lun: LUN1, force: true })).to.deep.equal({ deleted: true, unmappedCount: 2 });
    expect(array.getArray()).to.deep.include({ lunCount: 0, mapCount: 0, igroupCount: 2 });
    expect(array.getIgroup('h1').mapCount).to.equal(0);
    expect(existsSync(array.data.pathOf(l.uuid))).to.equal(false);
    expect(pool('aggr1')).to.deep.include({ usedBytes: 0, lunCount: 0 });
  });

  it('DeleteLun of a LUN that is gone succeeds with deleted=false', () => {
    makeLun(LUN1);
    expect(array.deleteLun({ requestId: '', lun: LUN1, force: false })).to.deep.equal({ deleted: true, unmappedCount: 0 });
    expect(array.deleteLun({ requestId: '', lun: LUN1, force: false })).to.deep.equal({ deleted: false, unmappedCount: 0 });
    expect(array.deleteLun({ requestId: '', lun: randomUUID(), force: true })).to.deep.equal({ deleted: false, unmappedCount: 0 });
  });

  it('a LUN created again at a deleted LUN\'s path is a new LUN whose blocks read as zeros', () => {
    makeIgroup('h', [A]);
    const old = makeLun(LUN1);
    map(LUN1, 'h');
    write(LUN1, A, 0, pattern(MiB, 3));
    array.deleteLun({ requestId: '', lun: LUN1, force: true });
    const fresh = makeLun(LUN1);
    expect(fresh.uuid).to.not.equal(old.uuid);
    expect(fresh.serial).to.not.equal(old.serial);
    map(LUN1, 'h');
    expect(read(LUN1, A, 0, MiB)).to.deep.equal(Buffer.alloc(MiB));
  });
});

describe('StorageArray: igroups', () => {
  useFreshArray();
  it('CreateIgroup stores canonical initiator names once each, in the order given', () => {
    const ig = makeIgroup('h', ['IQN.1991-05.COM.Microsoft:Node-A', A, 'eui.02004567a425678d']);
    expect(ig).to.deep.include({ name: 'h', protocol: 'iscsi', osType: 'windows', mapCount: 0 });
    expect(ig.initiators).to.deep.equal([A, 'eui.02004567A425678D']);
    expect(array.getIgroup('h').initiators).to.deep.equal(ig.initiators);
  });

  it('an fcp igroup takes WWPNs only, an iscsi igroup iSCSI names only, a mixed igroup both', () => {
    expect(makeIgroup('f', ['20000025B5000001'], { protocol: 'fcp' }).initiators).to.deep.equal([W1]);
    expectRefusedUnchanged(() => makeIgroup('f2', [A], { protocol: 'fcp' }), 'invalid_argument', { field: 'initiators', message: /cannot join an fcp igroup/ });
    expectRefusedUnchanged(() => makeIgroup('i2', [W2], { protocol: 'iscsi' }), 'invalid_argument', { field: 'initiators', message: /cannot join an iscsi igroup/ });
    expect(makeIgroup('m', [B, W2], { protocol: 'mixed' }).initiators).to.deep.equal([B, W2]);
    expectRefusedUnchanged(() => array.addInitiators({ requestId: '', igroup: 'f', initiators: [C] }), 'invalid_argument', { field: 'initiators' });
  });

  it('CreateIgroup of an existing name with the same parameters (initiators in any order) returns it; other parameters are ALREADY_EXISTS', () => {
    const first = makeIgroup('h', [A, B]);
    expect(makeIgroup('h', [B, A])).to.deep.equal(first);
    expectRefusedUnchanged(() => makeIgroup('h', [A]), 'already_exists', { reason: 'IGROUP_ALREADY_EXISTS' });
    expectRefusedUnchanged(() => makeIgroup('h', [A, B], { osType: 'linux' }), 'already_exists');
    expectRefusedUnchanged(() => makeIgroup('h', [A, B], { protocol: 'mixed' }), 'already_exists');
  });

  it('one initiator may sit in two igroups of the same os_type, not of different os_types', () => {
    makeIgroup('h1', [A]);
    makeIgroup('h2', [A]);
    expect(array.listIgroups({ pageSize: 0, pageToken: '', initiator: A }).items.map((g) => g.name)).to.deep.equal(['h1', 'h2']);
    expectRefusedUnchanged(() => makeIgroup('lx', [A], { osType: 'linux' }), 'failed_precondition', {
      reason: 'INITIATOR_OS_TYPE_CONFLICT',
      message: /already in igroup h1 of os_type windows/,
    });
    makeIgroup('lx', [B], { osType: 'linux' });
    expectRefusedUnchanged(() => array.addInitiators({ requestId: '', igroup: 'lx', initiators: [B, A] }), 'failed_precondition', {
      reason: 'INITIATOR_OS_TYPE_CONFLICT',
    });
  });

  it('AddInitiators adds new ones, ignores ones already there, and refuses an empty list or an unknown igroup', () => {
    makeIgroup('h', [A]);
    expect(array.addInitiators({ requestId: '', igroup: 'h', initiators: [A.toUpperCase(), B] }).initiators).to.deep.equal([A, B]);
    const before = arrayState(array);
    expect(array.addInitiators({ requestId: '', igroup: 'h', initiators: [B] }).initiators).to.deep.equal([A, B]);
    expect(arrayState(array)).to.deep.equal(before);
    expectRefusedUnchanged(() => array.addInitiators({ requestId: '', igroup: 'h', initiators: [] }), 'invalid_argument', { field: 'initiators' });
    expectRefusedUnchanged(() => array.addInitiators({ requestId: '', igroup: 'nope', initiators: [C] }), 'not_found', { reason: 'IGROUP_NOT_FOUND' });
  });

  it('RemoveInitiators removes present ones, ignores absent ones, and while LUNs are mapped needs force', () => {
    makeIgroup('h', [A, B, C]);
    expect(array.removeInitiators({ requestId: '', igroup: 'h', initiators: [C, 'iqn.2000-01.com.absent:x'], force: false }).initiators).to.deep.equal([
      A,
      B,
    ]);
    expect(array.listIgroups({ pageSize: 0, pageToken: '', initiator: C }).items).to.deep.equal([]);
    makeLun(LUN1);
    map(LUN1, 'h');
    expectRefusedUnchanged(() => array.removeInitiators({ requestId: '', igroup: 'h', initiators: [B], force: false }), 'failed_precondition', {
      reason: 'IGROUP_MAPPED',
    });
    expect(array.removeInitiators({ requestId: '', igroup: 'h', initiators: [B], force: true }).initiators).to.deep.equal([A]);
    expectError(() => read(LUN1, B, 0, 512), 'permission_denied');
  });

  it('DeleteIgroup is refused while LUNs are mapped to it, deletes it once unmapped, and deleting what is gone succeeds', () => {
    makeIgroup('h', [A]);
    makeLun(LUN1);
    map(LUN1, 'h');
    expectRefusedUnchanged(() => array.deleteIgroup({ requestId: '', name: 'h' }), 'failed_precondition', { reason: 'IGROUP_MAPPED' });
    array.unmapLun({ requestId: '', lun: LUN1, igroup: 'h' });
    expect(array.deleteIgroup({ requestId: '', name: 'h' })).to.deep.equal({ deleted: true });
    expect(array.deleteIgroup({ requestId: '', name: 'h' })).to.deep.equal({ deleted: false });
    expectError(() => array.getIgroup('h'), 'not_found');
    expect(array.listIgroups({ pageSize: 0, pageToken: '', initiator: A }).items).to.deep.equal([]);
    makeIgroup('lx', [A], { osType: 'linux' });
  });

  it('ListIgroups pages in name order and filters by an initiator written in any case', () => {
    for (let i = 0; i < 7; i++) makeIgroup(`g${i}`, i % 2 === 0 ? [A] : []);
    const p1 = array.listIgroups({ pageSize: 3, pageToken: '', initiator: '' });
    const p2 = array.listIgroups({ pageSize: 3, pageToken: p1.nextPageToken, initiator: '' });
    const p3 = array.listIgroups({ pageSize: 3, pageToken: p2.nextPageToken, initiator: '' });
    expect([...p1.items, ...p2.items, ...p3.items].map((g) => g.name)).to.deep.equal(['g0', 'g1', 'g2', 'g3', 'g4', 'g5', 'g6']);
    expect(p3.nextPageToken).to.equal('');
    const withA = array.listIgroups({ pageSize: 0, pageToken: '', initiator: A.toUpperCase() });
    expect(withA.items.map((g) => g.name)).to.deep.equal(['g0', 'g2', 'g4', 'g6']);
  });
});

describe('StorageArray: LUN maps', () => {
  useFreshArray();
  beforeEach(() => {
    makeIgroup('h1', [A]);
    makeIgroup('h2', [B]);
    for (const p of [LUN1, LUN2, '/vol/vol1/lun3']) makeLun(p, { thin: true });
  });

  it('MapLun without an id takes the lowest free id of the igroup, reusing freed ids', () => {
    expect([map(LUN1, 'h1').lunId, map(LUN2, 'h1').lunId, map('/vol/vol1/lun3', 'h1').lunId]).to.deep.equal([0, 1, 2]);
    array.unmapLun({ requestId: '', lun: LUN2, igroup: 'h1' });
    expect(map(LUN2, 'h1').lunId).to.equal(1);
    expect(map(LUN1, 'h2').lunId).to.equal(0);
  });

  it('MapLun at a given id 0-4095; an id in use is ALREADY_EXISTS naming the holder; 4096 is INVALID_ARGUMENT', () => {
    expect(map(LUN1, 'h1', 4095).lunId).to.equal(4095);
    expect(map(LUN2, 'h1', 0).lunId).to.equal(0);
    expectRefusedUnchanged(() => map('/vol/vol1/lun3', 'h1', 4095), 'already_exists', { reason: 'LUN_ID_ALREADY_EXISTS', message: /taken by \/vol\/vol1\/lun1/ });
    for (const id of [4096, -1, 1.5]) expectRefusedUnchanged(() => map('/vol/vol1/lun3', 'h1', id), 'invalid_argument', { field: 'lun_id' });
  });

  it('MapLun of a LUN already mapped to the igroup returns the map when no id or the same id is given, ALREADY_EXISTS for another id', () => {
    map(LUN1, 'h1', 5);
    const before = arrayState(array);
    expect(map(LUN1, 'h1').lunId).to.equal(5);
    expect(map(LUN1, 'h1', 5).lunId).to.equal(5);
    expect(arrayState(array)).to.deep.equal(before);
    expectRefusedUnchanged(() => map(LUN1, 'h1', 6), 'already_exists', { reason: 'LUN_MAP_ALREADY_EXISTS' });
  });

  it('a LUN maps to several igroups; ListLunMaps lists by LUN, by igroup, by both, or all', () => {
    const l1 = array.getLun(LUN1);
    expect(map(LUN1, 'h1')).to.deep.equal({ lunUuid: l1.uuid, lunPath: LUN1, serial: l1.serial, igroup: 'h1', lunId: 0 });
    map(LUN1, 'h2', 7);
    map(LUN2, 'h1');
    expect(array.getLun(LUN1).mapped).to.equal(true);
    expect(array.getLun('/vol/vol1/lun3').mapped).to.equal(false);
    const all = (q: { lun?: string; igroup?: string }) =>
      array.listLunMaps({ lun: q.lun ?? '', igroup: q.igroup ?? '', pageSize: 0, pageToken: '' }).items.map((m) => `${m.lunPath}@${m.igroup}#${m.lunId}`);
    expect(all({ lun: LUN1 })).to.deep.equal([`${LUN1}@h1#0`, `${LUN1}@h2#7`]);
    expect(all({ igroup: 'h1' })).to.deep.equal([`${LUN1}@h1#0`, `${LUN2}@h1#1`]);
    expect(all({ lun: l1.serial, igroup: 'h2' })).to.deep.equal([`${LUN1}@h2#7`]);
    expect(all({})).to.deep.equal([`${LUN1}@h1#0`, `${LUN2}@h1#1`, `${LUN1}@h2#7`]);
    expect(array.getIgroup('h1').mapCount).to.equal(2);
    expect(array.getArray().mapCount).to.equal(3);
    const p1 = array.listLunMaps({ lun: '', igroup: '', pageSize: 2, pageToken: '' });
    const p2 = array.listLunMaps({ lun: '', igroup: '', pageSize: 2, pageToken: p1.nextPageToken });
    expect([...p1.items, ...p2.items].map((m) => m.lunId)).to.deep.equal([0, 1, 7]);
    expect(p2.nextPageToken).to.equal('');
  });

  it('ListLunMaps of an unknown LUN or igroup is NOT_FOUND', () => {
    expectError(() => array.listLunMaps({ lun: '/vol/vol1/zz', igroup: '', pageSize: 0, pageToken: '' }), 'not_found');
    expectError(() => array.listLunMaps({ lun: '', igroup: 'zz', pageSize: 0, pageToken: '' }), 'not_found');
    expectError(() => array.listLunMaps({ lun: LUN1, igroup: 'zz', pageSize: 0, pageToken: '' }), 'not_found');
  });

  it('UnmapLun removes one map; unmapping what is not mapped, or an unknown LUN or igroup, succeeds with unmapped=false', () => {
    map(LUN1, 'h1');
    map(LUN1, 'h2');
    expect(array.unmapLun({ requestId: '', lun: LUN1, igroup: 'h1' })).to.deep.equal({ unmapped: true });
    expect(array.listLunMaps({ lun: LUN1, igroup: '', pageSize: 0, pageToken: '' }).items.map((m) => m.igroup)).to.deep.equal(['h2']);
    const before = arrayState(array);
    expect(array.unmapLun({ requestId: '', lun: LUN1, igroup: 'h1' })).to.deep.equal({ unmapped: false });
    expect(array.unmapLun({ requestId: '', lun: '/vol/vol1/zz', igroup: 'h1' })).to.deep.equal({ unmapped: false });
    expect(array.unmapLun({ requestId: '', lun: LUN1, igroup: 'zz' })).to.deep.equal({ unmapped: false });
    expect(arrayState(array)).to.deep.equal(before);
  });

  it('MapLun of an unknown LUN or igroup is NOT_FOUND and changes nothing', () => {
    expectRefusedUnchanged(() => map('/vol/vol1/zz', 'h1'), 'not_found', { reason: 'LUN_NOT_FOUND' });
    expectRefusedUnchanged(() => map(LUN1, 'zz'), 'not_found', { reason: 'IGROUP_NOT_FOUND' });
  });

  it('an igroup holding all 4096 LUN ids refuses another map as RESOURCE_EXHAUSTED LUN_IDS_EXHAUSTED', function () {
    this.timeout(20_000);
    // 4096 LUN files: creating them on tmpfs takes a tenth of the time it takes on a disk.
    if (existsSync('/dev/shm')) {
      array.close();
      rmSync(dir, { recursive: true, force: true });
      dir = mkdtempSync(join('/dev/shm', 'passthru-array-'));
      array = open();
      makeIgroup('h2', [B]);
      makeLun(LUN1, { thin: true });
    }
    for (let i = 0; i < 4096; i++) {
      makeLun(`/vol/many/l${i}`, { thin: true, sizeBytes: BigInt(4 * MiB) });
      map(`/vol/many/l${i}`, 'h2', i);
    }
    // 4096 LUN files are too many to digest; a map cannot touch data anyway.
    const before = arrayState(array, { data: false });
    expectError(() => map(LUN1, 'h2'), 'resource_exhausted', { reason: 'LUN_IDS_EXHAUSTED' });
    expect(arrayState(array, { data: false })).to.deep.equal(before);
  });
});

describe('StorageArray: block I/O and LUN masking', () => {
  useFreshArray();
  beforeEach(() => {
    makeIgroup('h1', [A]);
    makeIgroup('h2', [B]);
    makeLun(LUN1);
    map(LUN1, 'h1');
  });

  it('never-written blocks read as zeros, and a write reads back exactly', () => {
    expect(read(LUN1, A, 0, MAX_IO_BYTES)).to.deep.equal(Buffer.alloc(MAX_IO_BYTES));
    const data = pattern(64 * 1024, 9);
    expect(write(LUN1, A, 3 * MiB + 512, data)).to.deep.equal({ writtenBytes: data.length });
    expect(read(LUN1, A, 3 * MiB + 512, data.length)).to.deep.equal(data);
    expect(read(LUN1, A, 3 * MiB, 512)).to.deep.equal(Buffer.alloc(512));
  });

  it('an initiator in no igroup the LUN is mapped to is PERMISSION_DENIED LUN_MASKED: it reads nothing and writes nothing', () => {
    write(LUN1, A, 0, pattern(4096, 1));
    for (const who of [B, C, W1]) {
      expectRefusedUnchanged(() => read(LUN1, who, 0, 4096), 'permission_denied', { reason: 'LUN_MASKED', message: /LUN masking/ });
      expectRefusedUnchanged(() => write(LUN1, who, 0, pattern(4096, 2)), 'permission_denied', { reason: 'LUN_MASKED' });
    }
    expect(read(LUN1, A, 0, 4096)).to.deep.equal(pattern(4096, 1));
  });

  it('mapping the LUN to an initiator\'s igroup unmasks it; unmapping masks it again', () => {
    expectError(() => read(LUN1, B, 0, 512), 'permission_denied');
    map(LUN1, 'h2');
    expect(read(LUN1, B, 0, 512)).to.have.length(512);
    array.unmapLun({ requestId: '', lun: LUN1, igroup: 'h2' });
    expectError(() => read(LUN1, B, 0, 512), 'permission_denied');
  });

  it('an initiator is recognized in any spelling of its name', () => {
    write(LUN1, A.toUpperCase(), 0, pattern(512, 4));
    expect(read(LUN1, `  ${A}  `, 0, 512)).to.deep.equal(pattern(512, 4));
  });

  it('I/O may reach exactly the LUN\'s last byte and up to 1 MiB per call', () => {
    write(LUN1, A, 8 * MiB - MAX_IO_BYTES, pattern(MAX_IO_BYTES, 5));
    expect(read(LUN1, A, 8 * MiB - 512, 512)).to.deep.equal(pattern(MAX_IO_BYTES, 5).subarray(MAX_IO_BYTES - 512));
  });

  const bad: [string, () => unknown, string][] = [
    ['an unaligned offset', () => read(LUN1, A, 100, 512), 'offset_bytes'],
    ['a zero length', () => read(LUN1, A, 0, 0), 'length_bytes'],
    ['an unaligned length', () => read(LUN1, A, 0, 1000), 'length_bytes'],
    ['more than 1 MiB', () => read(LUN1, A, 0, MAX_IO_BYTES + 512), 'length_bytes'],
    ['a range past the end', () => read(LUN1, A, 8 * MiB - 512, 1024), 'offset_bytes'],
    ['a malformed initiator', () => read(LUN1, 'node-a', 0, 512), 'initiator'],
    ['an unaligned write offset', () => write(LUN1, A, 4, pattern(512, 1)), 'offset_bytes'],
    ['an empty write', () => write(LUN1, A, 0, Buffer.alloc(0)), 'data'],
    ['a write of 1000 bytes', () => write(LUN1, A, 0, pattern(1000, 1)), 'data'],
    ['a write over 1 MiB', () => write(LUN1, A, 0, pattern(MAX_IO_BYTES + 512, 1)), 'data'],
    ['a write past the end', () => write(LUN1, A, 8 * MiB, pattern(512, 1)), 'offset_bytes'],
  ];
  for (const [what, call, field] of bad) {
    it(`block I/O with ${what} is INVALID_ARGUMENT on ${field} and changes nothing`, () => {
      write(LUN1, A, 0, pattern(4096, 1));
      expectRefusedUnchanged(call, 'invalid_argument', { field });
    });
  }

  it('block I/O on an unknown LUN is NOT_FOUND', () => {
    expectRefusedUnchanged(() => read('/vol/vol1/none', A, 0, 512), 'not_found');
    expectRefusedUnchanged(() => write(randomUUID(), A, 0, pattern(512, 1)), 'not_found');
  });
});

describe('StorageArray: thin provisioning', () => {
  useFreshArray();
  beforeEach(() => {
    makeIgroup('h', [A]);
  });

  it('a thin LUN allocates 1 MiB extents as written, once each, and its pool counts them', () => {
    makeLun(LUN1, { thin: true, sizeBytes: BigInt(16 * MiB) });
    map(LUN1, 'h');
    write(LUN1, A, 0, pattern(512, 1));
    expect(array.getLun(LUN1).usedBytes).to.equal(MiB);
    write(LUN1, A, 4096, pattern(512, 1));
    expect(array.getLun(LUN1).usedBytes).to.equal(MiB);
    write(LUN1, A, 2 * MiB - 512, pattern(1024, 2));
    expect(array.getLun(LUN1).usedBytes).to.equal(3 * MiB);
    expect(pool('aggr1').usedBytes).to.equal(3 * MiB);
    makeLun(LUN2, { sizeBytes: BigInt(8 * MiB) });
    expect(pool('aggr1').usedBytes).to.equal(11 * MiB);
    array.deleteLun({ requestId: '', lun: LUN1, force: true });
    expect(pool('aggr1').usedBytes).to.equal(8 * MiB);
  });

  it('a thin LUN whose size is not a whole number of extents counts only the bytes of its last extent', () => {
    makeLun(LUN1, { thin: true, sizeBytes: BigInt(4 * MiB + 512) });
    map(LUN1, 'h');
    write(LUN1, A, 4 * MiB, pattern(512, 1));
    expect(array.getLun(LUN1).usedBytes).to.equal(512);
    expect(pool('aggr1').usedBytes).to.equal(512);
    array.resizeLun({ requestId: '', lun: LUN1, sizeBytes: BigInt(6 * MiB) });
    expect(array.getLun(LUN1).usedBytes).to.equal(MiB);
    expect(pool('aggr1').usedBytes).to.equal(MiB);
  });

  it('a thin write into a full pool is RESOURCE_EXHAUSTED POOL_FULL and writes nothing; written extents stay writable', () => {
    makeLun('/vol/v2/thick', { pool: 'aggr2', sizeBytes: BigInt(62 * MiB) });
    makeLun('/vol/v2/thin', { thin: true, sizeBytes: BigInt(8 * MiB) });
    map('/vol/v2/thin', 'h');
    write('/vol/v2/thin', A, 0, pattern(MiB, 1));
    write('/vol/v2/thin', A, MiB, pattern(512, 2));
    expect(pool('aggr2')).to.deep.include({ usedBytes: 64 * MiB, availableBytes: 0 });
    const err = expectRefusedUnchanged(() => write('/vol/v2/thin', A, 5 * MiB, pattern(4096, 3)), 'resource_exhausted', { reason: 'POOL_FULL' });
    expect(err.message).to.match(/nothing was written/);
    expect(read('/vol/v2/thin', A, 5 * MiB, 4096)).to.deep.equal(Buffer.alloc(4096));
    // A write spanning a held extent and a new one is refused whole.
    expectRefusedUnchanged(() => write('/vol/v2/thin', A, 2 * MiB - 512, pattern(1024, 4)), 'resource_exhausted');
    expect(read('/vol/v2/thin', A, 2 * MiB - 512, 512)).to.deep.equal(Buffer.alloc(512));
    write('/vol/v2/thin', A, MiB + 512, pattern(512, 5));
    expect(read('/vol/v2/thin', A, MiB + 512, 512)).to.deep.equal(pattern(512, 5));
  });
});

describe('StorageArray: persistent reservations', () => {
  useFreshArray();
  const KA = '0xa';
  const KB = '0xb';
  const kA = '000000000000000a';
  const kB = '000000000000000b';
  const reg = (initiator: string, key: string, requestId = '') => array.registerReservationKey({ requestId, lun: LUN1, initiator, key });
  const reserve = (initiator: string, key: string, type: ReservationType | undefined, requestId = '') =>
    array.reserve({ requestId, lun: LUN1, initiator, key, type });
  const release = (initiator: string, key: string, requestId = '') => array.releaseReservation({ requestId, lun: LUN1, initiator, key });
  const preempt = (initiator: string, key: string, preemptKey: string, type?: ReservationType, requestId = '') =>
    array.preemptReservation({ requestId, lun: LUN1, initiator, key, preemptKey, type });

  beforeEach(() => {
    makeIgroup('cluster', [A, B, C]);
    makeLun(LUN1);
    map(LUN1, 'cluster');
  });

  it('RegisterReservationKey bumps the generation; the same key again changes nothing; key 0 unregisters', () => {
    expect(reg(A, KA)).to.deep.equal({ generation: 1 });
    expect(reg(B, KB)).to.deep.equal({ generation: 2 });
    expect(reg(A, '0x00A')).to.deep.equal({ generation: 2 });
    expect(array.readReservationKeys(LUN1)).to.deep.equal({
      generation: 2,
      registrations: [
        { initiator: A, key: kA },
        { initiator: B, key: kB },
      ],
    });
    expect(reg(A, '0')).to.deep.equal({ generation: 3 });
    expect(reg(A, '0')).to.deep.equal({ generation: 3 });
    expect(array.readReservationKeys(LUN1).registrations).to.deep.equal([{ initiator: B, key: kB }]);
  });

  it('Reserve needs a registration with the same key (else FAILED_PRECONDITION reservation conflict)', () => {
    expectRefusedUnchanged(() => reserve(A, KA, 'write_exclusive'), 'failed_precondition', { reason: 'RESERVATION_CONFLICT', message: /not registered/ });
    reg(A, KA);
    expectRefusedUnchanged(() => reserve(A, KB, 'write_exclusive'), 'failed_precondition', { message: /another key/ });
    reserve(A, KA, 'write_exclusive');
    expect(array.readReservation(LUN1)).to.deep.equal({
      generation: 1,
      registrations: { [A]: kA },
      holder: { initiator: A, key: kA, type: 'write_exclusive' },
    });
  });

  // holder A (key A), registered B (key B), unregistered-but-mapped C.
  const access: [ReservationType, Record<'A' | 'B' | 'C', { read: boolean; write: boolean }>][] = [
    ['write_exclusive', { A: { read: true, write: true }, B: { read: true, write: false }, C: { read: true, write: false } }],
    ['exclusive_access', { A: { read: true, write: true }, B: { read: false, write: false }, C: { read: false, write: false } }],
    ['write_exclusive_registrants_only', { A: { read: true, write: true }, B: { read: true, write: true }, C: { read: true, write: false } }],
    ['exclusive_access_registrants_only', { A: { read: true, write: true }, B: { read: true, write: true }, C: { read: false, write: false } }],
  ];
  for (const [type, rules] of access) {
    const summary = Object.entries(rules)
      .map(([who, r]) => `${who}:${r.read ? 'r' : '-'}${r.write ? 'w' : '-'}`)
      .join(' ');
    it(`${type}: holder, other registrant and unregistered initiator get exactly ${summary}; refusals are reservation conflicts that change nothing`, () => {
      reg(A, KA);
      reg(B, KB);
      reserve(A, KA, type);
      const who = { A, B, C };
      for (const [name, r] of Object.entries(rules) as ['A' | 'B' | 'C', { read: boolean; write: boolean }][]) {
        const initiator = who[name];
        if (r.read) expect(read(LUN1, initiator, 0, 512), `${name} read`).to.have.length(512);
        else expectRefusedUnchanged(() => read(LUN1, initiator, 0, 512), 'failed_precondition', { reason: 'RESERVATION_CONFLICT', message: /reservation conflict/ });
        const data = pattern(512, name.charCodeAt(0));
        if (r.write) {
          write(LUN1, initiator, 0, data);
          expect(read(LUN1, A, 0, 512), `${name} write`).to.deep.equal(data);
        } else {
          expectRefusedUnchanged(() => write(LUN1, initiator, 0, data), 'failed_precondition', { reason: 'RESERVATION_CONFLICT', message: /reservation conflict/ });
        }
      }
    });
  }

  it('Reserve when another initiator holds the reservation is a conflict; the holder reserving the same type again succeeds', () => {
    reg(A, KA);
    reg(B, KB);
    reserve(A, KA, 'write_exclusive');
    expect(reserve(A, KA, 'write_exclusive')).to.deep.equal({ generation: 2 });
    expectRefusedUnchanged(() => reserve(B, KB, 'write_exclusive'), 'failed_precondition', { reason: 'RESERVATION_CONFLICT' });
    expectRefusedUnchanged(() => reserve(A, KA, 'exclusive_access'), 'failed_precondition', { reason: 'RESERVATION_CONFLICT' });
    expectRefusedUnchanged(() => reserve(A, KA, undefined), 'invalid_argument', { field: 'type' });
  });

  it('a registrants-only reservation is shared: another registrant reserving the same type succeeds without taking it', () => {
    reg(A, KA);
    reg(B, KB);
    reserve(A, KA, 'write_exclusive_registrants_only');
    const before = arrayState(array);
    reserve(B, KB, 'write_exclusive_registrants_only');
    expect(arrayState(array)).to.deep.equal(before);
  });

  it('ReleaseReservation by the holder opens I/O again; by a non-holder it returns released=false and keeps the reservation', () => {
    reg(A, KA);
    reg(B, KB);
    reserve(A, KA, 'exclusive_access');
    expect(release(B, KB)).to.deep.equal({ released: false });
    expectError(() => read(LUN1, B, 0, 512), 'failed_precondition');
    expectRefusedUnchanged(() => release(C, '0x1'), 'failed_precondition', { reason: 'RESERVATION_CONFLICT' });
    expect(release(A, KA)).to.deep.equal({ released: true });
    expect(array.readReservation(LUN1).holder).to.equal(undefined);
    write(LUN1, C, 0, pattern(512, 1));
    expect(release(A, KA)).to.deep.equal({ released: false });
  });

  it('unregistering the holder releases its reservation', () => {
    reg(A, KA);
    reserve(A, KA, 'exclusive_access');
    reg(A, '0');
    expect(array.readReservation(LUN1).holder).to.equal(undefined);
    write(LUN1, B, 0, pattern(512, 1));
  });

  it('fencing: B preempts A\'s key: A loses registration and reservation, A\'s write is a reservation conflict changing nothing, A still reads', () => {
    reg(A, KA);
    reg(B, KB);
    reserve(A, KA, 'write_exclusive_registrants_only');
    const original = pattern(4096, 7);
    write(LUN1, A, 0, original);
    expect(preempt(B, KB, KA)).to.deep.equal({ generation: 3, removedRegistrations: 1 });
    expect(array.readReservation(LUN1)).to.deep.equal({
      generation: 3,
      registrations: { [B]: kB },
      holder: { initiator: B, key: kB, type: 'write_exclusive_registrants_only' },
    });
    expectRefusedUnchanged(() => write(LUN1, A, 0, pattern(4096, 8)), 'failed_precondition', { reason: 'RESERVATION_CONFLICT', message: /reservation conflict/ });
    expect(read(LUN1, A, 0, 4096)).to.deep.equal(original);
    write(LUN1, B, 0, pattern(4096, 9));
  });

  it('PreemptReservation takes over with the type given, removes every registration holding the key, and needs the caller registered', () => {
    reg(A, KA);
    reg(C, KA);
    reg(B, KB);
    reserve(A, KA, 'write_exclusive');
    expect(preempt(B, KB, KA, 'exclusive_access')).to.deep.include({ removedRegistrations: 2 });
    expect(array.readReservation(LUN1).holder).to.deep.equal({ initiator: B, key: kB, type: 'exclusive_access' });
    expectError(() => read(LUN1, A, 0, 512), 'failed_precondition');
    expectRefusedUnchanged(() => preempt(A, KA, KB), 'failed_precondition', { reason: 'RESERVATION_CONFLICT', message: /not registered/ });
    const before = arrayState(array);
    expect(preempt(B, KB, '0x77')).to.deep.equal({ generation: array.readReservation(LUN1).generation, removedRegistrations: 0 });
    expect(arrayState(array)).to.deep.equal(before);
  });

  it('every reservation command needs an initiator that can reach the LUN (PERMISSION_DENIED otherwise)', () => {
    reg(A, KA);
    const outsider = 'iqn.2000-01.org.other:x';
    expectRefusedUnchanged(() => reg(outsider, '0x1'), 'permission_denied', { reason: 'LUN_MASKED' });
    expectRefusedUnchanged(() => reserve(outsider, '0x1', 'write_exclusive'), 'permission_denied');
    expectRefusedUnchanged(() => release(outsider, '0x1'), 'permission_denied');
    expectRefusedUnchanged(() => preempt(outsider, '0x1', KA), 'permission_denied');
  });

  it('malformed and null keys are INVALID_ARGUMENT naming key or preempt_key', () => {
    reg(A, KA);
    expectRefusedUnchanged(() => reg(A, 'xyz'), 'invalid_argument', { field: 'key' });
    expectRefusedUnchanged(() => reserve(A, '0', 'write_exclusive'), 'invalid_argument', { field: 'key' });
    expectRefusedUnchanged(() => release(A, ''), 'invalid_argument', { field: 'key' });
    expectRefusedUnchanged(() => preempt(A, KA, '0'), 'invalid_argument', { field: 'preempt_key' });
    expectRefusedUnchanged(() => preempt(A, KA, '0x12345678901234567'), 'invalid_argument', { field: 'preempt_key' });
  });

  it('deleting a LUN drops its reservation: a LUN created at the same path starts with none', () => {
    reg(A, KA);
    reserve(A, KA, 'exclusive_access');
    array.deleteLun({ requestId: '', lun: LUN1, force: true });
    makeLun(LUN1);
    expect(array.readReservation(LUN1)).to.deep.equal({ generation: 0, registrations: {} });
    reopen();
    expect(array.readReservation(LUN1)).to.deep.equal({ generation: 0, registrations: {} });
  });

  it('ReadReservationKeys and ReadReservation of an unknown LUN are NOT_FOUND', () => {
    expectError(() => array.readReservationKeys('/vol/vol1/none'), 'not_found');
    expectError(() => array.readReservation(randomUUID()), 'not_found');
  });
});

describe('StorageArray: request ids', () => {
  useFreshArray();
  beforeEach(() => {
    makeIgroup('h', [A, B]);
  });

  /**
   * For each mutating method: do it under a request id, change the state since, then
   * replay: the first answer comes back and nothing changes; the same id with other
   * parameters is INVALID_ARGUMENT REQUEST_ID_REUSED.
   */
  interface ReplayCase {
    method: string;
    setup?: () => void;
    call: (id: string) => unknown;
    changeSince: () => void;
    other: (id: string) => unknown;
  }
  const cases: ReplayCase[] = [
    {
      method: 'CreateLun, after the LUN was deleted',
      call: (id) => array.createLun(lunInput(LUN1, { requestId: id })),
      changeSince: () => array.deleteLun({ requestId: '', lun: LUN1, force: false }),
      other: (id) => array.createLun(lunInput(LUN1, { requestId: id, sizeBytes: BigInt(16 * MiB) })),
    },
    {
      method: 'ResizeLun, after another resize',
      setup: () => makeLun(LUN1),
      call: (id) => array.resizeLun({ requestId: id, lun: LUN1, sizeBytes: BigInt(12 * MiB) }),
      changeSince: () => array.resizeLun({ requestId: '', lun: LUN1, sizeBytes: BigInt(16 * MiB) }),
      other: (id) => array.resizeLun({ requestId: id, lun: LUN1, sizeBytes: BigInt(20 * MiB) }),
    },
    {
      method: 'ResizeLun, after the LUN was deleted',
      setup: () => makeLun(LUN1),
      call: (id) => array.resizeLun({ requestId: id, lun: LUN1, sizeBytes: BigInt(12 * MiB) }),
      changeSince: () => array.deleteLun({ requestId: '', lun: LUN1, force: true }),
      other: (id) => array.resizeLun({ requestId: id, lun: LUN2, sizeBytes: BigInt(12 * MiB) }),
    },
    {
      method: 'SetLunState, after the state was flipped back',
      setup: () => makeLun(LUN1),
      call: (id) => array.setLunState({ requestId: id, lun: LUN1, state: 'offline' }),
      changeSince: () => array.setLunState({ requestId: '', lun: LUN1, state: 'online' }),
      other: (id) => array.setLunState({ requestId: id, lun: LUN1, state: 'online' }),
    },
    {
      method: 'DeleteLun, after a LUN was created again at the path',
      setup: () => makeLun(LUN1),
      call: (id) => array.deleteLun({ requestId: id, lun: LUN1, force: false }),
      changeSince: () => makeLun(LUN1),
      other: (id) => array.deleteLun({ requestId: id, lun: LUN1, force: true }),
    },
    {
      method: 'CreateIgroup, after the igroup was deleted',
      call: (id) => array.createIgroup(igroupInput('g', [C], { requestId: id })),
      changeSince: () => array.deleteIgroup({ requestId: '', name: 'g' }),
      other: (id) => array.createIgroup(igroupInput('g', [], { requestId: id })),
    },
    {
      method: 'AddInitiators, after the initiator was removed again',
      call: (id) => array.addInitiators({ requestId: id, igroup: 'h', initiators: [C] }),
      changeSince: () => array.removeInitiators({ requestId: '', igroup: 'h', initiators: [C], force: false }),
      other: (id) => array.addInitiators({ requestId: id, igroup: 'h', initiators: ['iqn.2000-01.com.other:x'] }),
    },
    {
      method: 'AddInitiators, after the igroup was deleted',
      setup: () => makeIgroup('g', []),
      call: (id) => array.addInitiators({ requestId: id, igroup: 'g', initiators: [C] }),
      changeSince: () => array.deleteIgroup({ requestId: '', name: 'g' }),
      other: (id) => array.addInitiators({ requestId: id, igroup: 'g', initiators: [B] }),
    },
    {
      method: 'RemoveInitiators, after the initiator was added back',
      call: (id) => array.removeInitiators({ requestId: id, igroup: 'h', initiators: [B], force: false }),
      changeSince: () => array.addInitiators({ requestId: '', igroup: 'h', initiators: [B] }),
      other: (id) => array.removeInitiators({ requestId: id, igroup: 'h', initiators: [B], force: true }),
    },
    {
      method: 'RemoveInitiators, after the igroup was deleted',
      setup: () => makeIgroup('g', [C]),
      call: (id) => array.removeInitiators({ requestId: id, igroup: 'g', initiators: [C], force: false }),
      changeSince: () => array.deleteIgroup({ requestId: '', name: 'g' }),
      other: (id) => array.removeInitiators({ requestId: id, igroup: 'g', initiators: [A], force: false }),
    },
    {
      method: 'DeleteIgroup, after the igroup was created again',
      setup: () => makeIgroup('g', [C]),
      call: (id) => array.deleteIgroup({ requestId: id, name: 'g' }),
      changeSince: () => makeIgroup('g', []),
      other: (id) => array.deleteIgroup({ requestId: id, name: 'g2' }),
    },
    {
      method: 'MapLun, after the LUN was unmapped and deleted',
      setup: () => makeLun(LUN1),
      call: (id) => array.mapLun({ requestId: id, lun: LUN1, igroup: 'h', lunId: undefined }),
      changeSince: () => array.deleteLun({ requestId: '', lun: LUN1, force: true }),
      other: (id) => array.mapLun({ requestId: id, lun: LUN1, igroup: 'h', lunId: 3 }),
    },
    {
      method: 'UnmapLun, after the LUN was mapped again',
      setup: () => {
        makeLun(LUN1);
        map(LUN1, 'h', 2);
      },
      call: (id) => array.unmapLun({ requestId: id, lun: LUN1, igroup: 'h' }),
      changeSince: () => map(LUN1, 'h', 9),
      other: (id) => array.unmapLun({ requestId: id, lun: LUN2, igroup: 'h' }),
    },
    {
      method: 'WriteBlocks, after the blocks were overwritten',
      setup: () => {
        makeLun(LUN1, { thin: true });
        map(LUN1, 'h');
      },
      call: (id) => write(LUN1, A, 0, pattern(4096, 1), id),
      changeSince: () => write(LUN1, A, 0, pattern(4096, 2)),
      other: (id) => write(LUN1, A, 0, pattern(4096, 3), id),
    },
    {
      method: 'WriteBlocks, after the LUN was unmapped from the writer',
      setup: () => {
        makeLun(LUN1, { thin: true });
        map(LUN1, 'h');
      },
      call: (id) => write(LUN1, A, 0, pattern(4096, 1), id),
      changeSince: () => array.unmapLun({ requestId: '', lun: LUN1, igroup: 'h' }),
      other: (id) => write(LUN1, A, 512, pattern(4096, 1), id),
    },
    {
      method: 'RegisterReservationKey, after the key was unregistered',
      setup: () => {
        makeLun(LUN1);
        map(LUN1, 'h');
      },
      call: (id) => array.registerReservationKey({ requestId: id, lun: LUN1, initiator: A, key: '0x1' }),
      changeSince: () => array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0' }),
      other: (id) => array.registerReservationKey({ requestId: id, lun: LUN1, initiator: A, key: '0x2' }),
    },
    {
      method: 'RegisterReservationKey, after the LUN was unmapped from the initiator',
      setup: () => {
        makeLun(LUN1);
        map(LUN1, 'h');
      },
      call: (id) => array.registerReservationKey({ requestId: id, lun: LUN1, initiator: A, key: '0x1' }),
      changeSince: () => array.unmapLun({ requestId: '', lun: LUN1, igroup: 'h' }),
      other: (id) => array.registerReservationKey({ requestId: id, lun: LUN1, initiator: B, key: '0x1' }),
    },
    {
      method: 'Reserve, after the reservation was released',
      setup: () => {
        makeLun(LUN1);
        map(LUN1, 'h');
        array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0x1' });
      },
      call: (id) => array.reserve({ requestId: id, lun: LUN1, initiator: A, key: '0x1', type: 'write_exclusive' }),
      changeSince: () => array.releaseReservation({ requestId: '', lun: LUN1, initiator: A, key: '0x1' }),
      other: (id) => array.reserve({ requestId: id, lun: LUN1, initiator: A, key: '0x1', type: 'exclusive_access' }),
    },
    {
      method: 'ReleaseReservation, after the reservation was taken again',
      setup: () => {
        makeLun(LUN1);
        map(LUN1, 'h');
        array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0x1' });
        array.reserve({ requestId: '', lun: LUN1, initiator: A, key: '0x1', type: 'write_exclusive' });
      },
      call: (id) => array.releaseReservation({ requestId: id, lun: LUN1, initiator: A, key: '0x1' }),
      changeSince: () => array.reserve({ requestId: '', lun: LUN1, initiator: A, key: '0x1', type: 'exclusive_access' }),
      other: (id) => array.releaseReservation({ requestId: id, lun: LUN1, initiator: A, key: '0x2' }),
    },
    {
      method: 'PreemptReservation, after the preempted node registered again',
      setup: () => {
        makeLun(LUN1);
        map(LUN1, 'h');
        array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0xa' });
        array.registerReservationKey({ requestId: '', lun: LUN1, initiator: B, key: '0xb' });
        array.reserve({ requestId: '', lun: LUN1, initiator: A, key: '0xa', type: 'write_exclusive' });
      },
      call: (id) => array.preemptReservation({ requestId: id, lun: LUN1, initiator: B, key: '0xb', preemptKey: '0xa', type: undefined }),
      changeSince: () => array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0xa' }),
      other: (id) => array.preemptReservation({ requestId: id, lun: LUN1, initiator: B, key: '0xb', preemptKey: '0xc', type: undefined }),
    },
  ];
  for (const c of cases) {
    it(`${c.method.replace(', after', ' replayed under its request id after')} returns the first answer and changes nothing; other parameters under the id are INVALID_ARGUMENT`, () => {
      c.setup?.();
      const first = JSON.parse(JSON.stringify(c.call('rid-1'))) as unknown;
      c.changeSince();
      const before = arrayState(array);
      expect(c.call('rid-1')).to.deep.equal(first);
      expect(arrayState(array)).to.deep.equal(before);
      expectRefusedUnchanged(() => c.other('rid-1'), 'invalid_argument', { field: 'request_id', reason: 'REQUEST_ID_REUSED' });
    });
  }

  it('a CreateLun replay returns the original LUN (same uuid and serial) and does not recreate it', () => {
    const first = array.createLun(lunInput(LUN1, { requestId: 'create-1' }));
    array.deleteLun({ requestId: '', lun: LUN1, force: false });
    const replay = array.createLun(lunInput(LUN1, { requestId: 'create-1' }));
    expect(replay.uuid).to.equal(first.uuid);
    expect(replay.serial).to.equal(first.serial);
    expect(array.getArray().lunCount).to.equal(0);
    expect(existsSync(array.data.pathOf(first.uuid))).to.equal(false);
  });

  it('a WriteBlocks replay does not write the data again', () => {
    makeLun(LUN1);
    map(LUN1, 'h');
    write(LUN1, A, 0, pattern(512, 1), 'w-1');
    write(LUN1, A, 0, pattern(512, 2));
    write(LUN1, A, 0, pattern(512, 1), 'w-1');
    expect(read(LUN1, A, 0, 512)).to.deep.equal(pattern(512, 2));
  });

  it('a request id used for one method is INVALID_ARGUMENT for another, naming the first method', () => {
    makeLun(LUN1, { requestId: 'shared' });
    expectRefusedUnchanged(() => array.deleteLun({ requestId: 'shared', lun: LUN1, force: false }), 'invalid_argument', {
      reason: 'REQUEST_ID_REUSED',
      message: /different CreateLun request/,
    });
  });

  it('a refused request leaves no replay record: the same id succeeds once the cause is gone', () => {
    makeLun('/vol/v2/big', { pool: 'aggr2', sizeBytes: BigInt(60 * MiB) });
    expectError(() => array.createLun(lunInput('/vol/v2/l', { requestId: 'r', sizeBytes: BigInt(8 * MiB) })), 'resource_exhausted');
    array.deleteLun({ requestId: '', lun: '/vol/v2/big', force: false });
    expect(array.createLun(lunInput('/vol/v2/l', { requestId: 'r', sizeBytes: BigInt(8 * MiB) })).path).to.equal('/vol/v2/l');
  });

  it('a malformed request id is INVALID_ARGUMENT on request_id for every mutating method and changes nothing', () => {
    makeLun(LUN1);
    map(LUN1, 'h');
    for (const id of ['x'.repeat(129), 'has space', 'tab\t']) {
      const calls: (() => unknown)[] = [
        () => array.createLun(lunInput(LUN2, { requestId: id })),
        () => array.resizeLun({ requestId: id, lun: LUN1, sizeBytes: BigInt(16 * MiB) }),
        () => array.setLunState({ requestId: id, lun: LUN1, state: 'offline' }),
        () => array.deleteLun({ requestId: id, lun: LUN1, force: true }),
        () => array.createIgroup(igroupInput('g', [], { requestId: id })),
        () => array.addInitiators({ requestId: id, igroup: 'h', initiators: [C] }),
        () => array.removeInitiators({ requestId: id, igroup: 'h', initiators: [B], force: true }),
        () => array.deleteIgroup({ requestId: id, name: 'h' }),
        () => array.mapLun({ requestId: id, lun: LUN1, igroup: 'h', lunId: 9 }),
        () => array.unmapLun({ requestId: id, lun: LUN1, igroup: 'h' }),
        () => write(LUN1, A, 0, pattern(512, 1), id),
        () => array.registerReservationKey({ requestId: id, lun: LUN1, initiator: A, key: '0x1' }),
      ];
      for (const call of calls) expectRefusedUnchanged(call, 'invalid_argument', { field: 'request_id' });
    }
  });
});

describe('StorageArray: durability across a restart', () => {
  useFreshArray();
  it('LUNs, igroups, maps, data, extents and pool usage, reservations and replay records survive close and reopen', () => {
    makeIgroup('h1', [A, B]);
    makeIgroup('f1', [W1], { protocol: 'fcp', osType: 'linux' });
    const thick = array.createLun(lunInput(LUN1, { requestId: 'c1', comment: 'keep me' }));
    makeLun('/vol/v2/thin', { thin: true, sizeBytes: BigInt(16 * MiB), pool: 'aggr2' });
    makeLun('/vol/v2/off', { thin: true, osType: 'linux' });
    array.setLunState({ requestId: '', lun: '/vol/v2/off', state: 'offline' });
    map(LUN1, 'h1', 3);
    map('/vol/v2/thin', 'h1');
    map('/vol/v2/thin', 'f1', 17);
    write('/vol/v2/thin', A, 5 * MiB, pattern(MiB, 1), 'w1');
    write(LUN1, B, 4096, pattern(8192, 2));
    array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0xa' });
    array.registerReservationKey({ requestId: '', lun: LUN1, initiator: B, key: '0xb' });
    array.reserve({ requestId: 'res-1', lun: LUN1, initiator: A, key: '0xa', type: 'write_exclusive' });
    const before = arrayState(array);
    expect(before.pools.find((p) => p.name === 'aggr2')!.usedBytes).to.equal(MiB);

    reopen();
    expect(arrayState(array)).to.deep.equal(before);
    expect(read('/vol/v2/thin', A, 5 * MiB, MiB)).to.deep.equal(pattern(MiB, 1));
    expect(read(LUN1, B, 4096, 8192)).to.deep.equal(pattern(8192, 2));
    // Reservations still fence after the restart.
    expectError(() => write(LUN1, B, 0, pattern(512, 3)), 'failed_precondition', { reason: 'RESERVATION_CONFLICT' });
    // Extents are still counted: rewriting the same extent takes no more space.
    write('/vol/v2/thin', A, 5 * MiB, pattern(512, 4));
    expect(array.getLun('/vol/v2/thin').usedBytes).to.equal(MiB);
    // Replay records survive: a replay returns the first answer, other parameters are refused.
    array.deleteLun({ requestId: '', lun: '/vol/v2/off', force: false });
    expect(array.createLun(lunInput(LUN1, { requestId: 'c1', comment: 'keep me' })).uuid).to.equal(thick.uuid);
    expectError(() => array.createLun(lunInput(LUN1, { requestId: 'c1' })), 'invalid_argument', { reason: 'REQUEST_ID_REUSED' });
    expect(array.reserve({ requestId: 'res-1', lun: LUN1, initiator: A, key: '0xa', type: 'write_exclusive' })).to.deep.equal({ generation: 2 });
    expect(write('/vol/v2/thin', A, 5 * MiB, pattern(MiB, 1), 'w1')).to.deep.equal({ writtenBytes: MiB });
    expect(read('/vol/v2/thin', A, 5 * MiB, 512)).to.deep.equal(pattern(512, 4));
  });

  it('new serials after a restart never repeat an existing one, and the next LUN goes on working', () => {
    const serials = new Set(Array.from({ length: 20 }, (_, i) => makeLun(`/vol/v/l${i}`, { thin: true }).serial));
    reopen();
    for (let i = 20; i < 40; i++) serials.add(makeLun(`/vol/v/l${i}`, { thin: true }).serial);
    expect(serials.size).to.equal(40);
  });

  it('start-up removes a data file with no LUN (a create or delete cut short)', () => {
    makeLun(LUN1);
    const orphan = join(array.data.dir, `${randomUUID()}.img`);
    writeFileSync(orphan, pattern(4096, 1));
    const before = arrayState(array);
    reopen();
    expect(existsSync(orphan)).to.equal(false);
    expect(arrayState(array)).to.deep.equal(before);
  });

  it('start-up gives a truncated LUN file its recorded size back, and trims a file longer than its LUN (a resize cut short)', () => {
    makeIgroup('h', [A]);
    const short = makeLun(LUN1);
    const long = makeLun(LUN2);
    map(LUN1, 'h');
    map(LUN2, 'h');
    write(LUN1, A, 0, pattern(512, 2));
    write(LUN2, A, 0, pattern(4096, 1));
    truncateSync(array.data.pathOf(short.uuid), 0);
    truncateSync(array.data.pathOf(long.uuid), 12 * MiB);
    reopen();
    expect(statSync(array.data.pathOf(short.uuid)).size).to.equal(8 * MiB);
    expect(statSync(array.data.pathOf(long.uuid)).size).to.equal(8 * MiB);
    expect(read(LUN1, A, 8 * MiB - 512, 512)).to.deep.equal(Buffer.alloc(512));
    expect(read(LUN2, A, 0, 4096)).to.deep.equal(pattern(4096, 1));
  });

  it('a LUN whose data file is missing at start-up reads as zeros, and its next write makes the file again', () => {
    makeIgroup('h', [A]);
    const l = makeLun(LUN1);
    map(LUN1, 'h');
    write(LUN1, A, 0, pattern(512, 4));
    array.close();
    rmSync(array.data.pathOf(l.uuid));
    array = new StorageArray({ dataDir: dir });
    expect(read(LUN1, A, 0, 512)).to.deep.equal(Buffer.alloc(512));
    write(LUN1, A, 1024, pattern(512, 5));
    expect(statSync(array.data.pathOf(l.uuid)).size).to.equal(8 * MiB);
    expect(read(LUN1, A, 1024, 512)).to.deep.equal(pattern(512, 5));
  });
});

describe('StorageArray: bad input is refused and changes nothing', () => {
  useFreshArray();
  beforeEach(() => {
    // aggr2 ends up full: a 4 MiB thick LUN and one written extent of a thin LUN.
    array.close();
    array = open({ pools: [POOLS[0]!, { name: 'aggr2', capacityBytes: 5 * MiB }] });
    makeIgroup('h1', [A]);
    makeIgroup('h2', [B]);
    makeIgroup('fc', [W1], { protocol: 'fcp' });
    makeLun(LUN1, { requestId: 'known-create' });
    makeLun(LUN2, { thin: true });
    makeLun('/vol/v2/full', { pool: 'aggr2', sizeBytes: BigInt(4 * MiB) });
    makeLun('/vol/v2/thin', { thin: true, sizeBytes: BigInt(4 * MiB) });
    map(LUN1, 'h1', 0);
    map(LUN2, 'h1', 1);
    map('/vol/v2/thin', 'h1', 2);
    write(LUN1, A, 0, pattern(8192, 1));
    write('/vol/v2/thin', A, 0, pattern(8192, 2));
    array.registerReservationKey({ requestId: '', lun: LUN2, initiator: A, key: '0xa' });
    array.reserve({ requestId: '', lun: LUN2, initiator: A, key: '0xa', type: 'exclusive_access' });
    map(LUN2, 'h2', 0);
  });

  const big = BigInt(8 * MiB);
  interface BadCase {
    name: string;
    call: () => unknown;
    kind: ErrorKind;
    field?: string;
    reason?: string;
  }
  const cases: BadCase[] = [
    // CreateLun
    { name: 'CreateLun with an empty path', call: () => makeLun(''), kind: 'invalid_argument', field: 'path' },
    { name: 'CreateLun with a path outside /vol', call: () => makeLun('/lun1'), kind: 'invalid_argument', field: 'path' },
    { name: 'CreateLun with a hyphen in the volume', call: () => makeLun('/vol/v-1/l'), kind: 'invalid_argument', field: 'path' },
    { name: 'CreateLun with a 256-character name', call: () => makeLun(`/vol/v/${'n'.repeat(256)}`), kind: 'invalid_argument', field: 'path' },
    { name: 'CreateLun with size 0', call: () => makeLun('/vol/v/x', { sizeBytes: 0n }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'CreateLun with an unaligned size', call: () => makeLun('/vol/v/x', { sizeBytes: big + 1n }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'CreateLun below 4 MiB', call: () => makeLun('/vol/v/x', { sizeBytes: BigInt(2 * MiB) }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'CreateLun above 16 TiB', call: () => makeLun('/vol/v/x', { sizeBytes: BigInt(16 * TiB) + 512n, thin: true }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'CreateLun with a negative size', call: () => makeLun('/vol/v/x', { sizeBytes: -big }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'CreateLun of 2^63 bytes', call: () => makeLun('/vol/v/x', { sizeBytes: 2n ** 63n }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'CreateLun without os_type', call: () => makeLun('/vol/v/x', { osType: undefined }), kind: 'invalid_argument', field: 'os_type' },
    { name: 'CreateLun with a 255-character comment', call: () => makeLun('/vol/v/x', { comment: 'c'.repeat(255) }), kind: 'invalid_argument', field: 'comment' },
    { name: 'CreateLun with a newline in the comment', call: () => makeLun('/vol/v/x', { comment: 'a\nb' }), kind: 'invalid_argument', field: 'comment' },
    { name: 'CreateLun with a malformed pool name', call: () => makeLun('/vol/v/x', { pool: 'aggr-1' }), kind: 'invalid_argument', field: 'pool' },
    { name: 'CreateLun in an unknown pool', call: () => makeLun('/vol/v/x', { pool: 'aggr9' }), kind: 'not_found' },
    { name: 'CreateLun in a volume of another pool', call: () => makeLun('/vol/v2/x', { pool: 'aggr1' }), kind: 'invalid_argument', field: 'pool' },
    { name: 'CreateLun of an existing path with another size', call: () => makeLun(LUN1, { sizeBytes: big * 2n }), kind: 'already_exists' },
    { name: 'CreateLun of a thick LUN a pool cannot hold', call: () => makeLun('/vol/v2/x', { sizeBytes: BigInt(8 * MiB) }), kind: 'resource_exhausted', reason: 'POOL_FULL' },
    { name: 'CreateLun reusing a request id with other parameters', call: () => makeLun('/vol/v/x', { requestId: 'known-create' }), kind: 'invalid_argument', field: 'request_id' },
    { name: 'CreateLun with a 129-character request id', call: () => makeLun('/vol/v/x', { requestId: 'r'.repeat(129) }), kind: 'invalid_argument', field: 'request_id' },
    // GetLun / ListLuns
    { name: 'GetLun of an unknown path', call: () => array.getLun('/vol/v/none'), kind: 'not_found' },
    { name: 'GetLun of an unknown uuid', call: () => array.getLun(randomUUID()), kind: 'not_found' },
    { name: 'GetLun of something that is no reference', call: () => array.getLun('lun1'), kind: 'invalid_argument', field: 'lun' },
    { name: 'ListLuns with a garbage page token', call: () => array.listLuns({ pageSize: 10, pageToken: 'garbage', pathPrefix: '' }), kind: 'invalid_argument', field: 'page_token' },
    { name: 'ListLuns with page size 1001', call: () => array.listLuns({ pageSize: 1001, pageToken: '', pathPrefix: '' }), kind: 'invalid_argument', field: 'page_size' },
    { name: 'ListLuns with a negative page size', call: () => array.listLuns({ pageSize: -1, pageToken: '', pathPrefix: '' }), kind: 'invalid_argument', field: 'page_size' },
    { name: 'ListLuns with a prefix outside /vol', call: () => array.listLuns({ pageSize: 10, pageToken: '', pathPrefix: 'vol/' }), kind: 'invalid_argument', field: 'path_prefix' },
    // ResizeLun / SetLunState / DeleteLun
    { name: 'ResizeLun to a smaller size', call: () => array.resizeLun({ requestId: '', lun: LUN1, sizeBytes: BigInt(4 * MiB) }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'ResizeLun to an unaligned size', call: () => array.resizeLun({ requestId: '', lun: LUN1, sizeBytes: big * 2n + 7n }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'ResizeLun beyond 16 TiB', call: () => array.resizeLun({ requestId: '', lun: LUN2, sizeBytes: BigInt(17 * TiB) }), kind: 'invalid_argument', field: 'size_bytes' },
    { name: 'ResizeLun of a thick LUN beyond its pool', call: () => array.resizeLun({ requestId: '', lun: '/vol/v2/full', sizeBytes: BigInt(65 * MiB) }), kind: 'resource_exhausted' },
    { name: 'ResizeLun of an unknown LUN', call: () => array.resizeLun({ requestId: '', lun: '/vol/v/none', sizeBytes: big * 2n }), kind: 'not_found' },
    { name: 'ResizeLun of a malformed reference', call: () => array.resizeLun({ requestId: '', lun: 'x', sizeBytes: big * 2n }), kind: 'invalid_argument', field: 'lun' },
    { name: 'SetLunState without a state', call: () => array.setLunState({ requestId: '', lun: LUN1, state: undefined }), kind: 'invalid_argument', field: 'state' },
    { name: 'SetLunState of an unknown LUN', call: () => array.setLunState({ requestId: '', lun: randomUUID(), state: 'offline' }), kind: 'not_found' },
    { name: 'DeleteLun of a mapped LUN without force', call: () => array.deleteLun({ requestId: '', lun: LUN1, force: false }), kind: 'failed_precondition', reason: 'LUN_MAPPED' },
    { name: 'DeleteLun of a malformed reference', call: () => array.deleteLun({ requestId: '', lun: 'vol1/lun1', force: true }), kind: 'invalid_argument', field: 'lun' },
    // igroups
    { name: 'CreateIgroup with an empty name', call: () => makeIgroup('', []), kind: 'invalid_argument', field: 'name' },
    { name: 'CreateIgroup with a slash in the name', call: () => makeIgroup('a/b', []), kind: 'invalid_argument', field: 'name' },
    { name: 'CreateIgroup without a protocol', call: () => makeIgroup('g', [], { protocol: undefined }), kind: 'invalid_argument', field: 'protocol' },
    { name: 'CreateIgroup without an os_type', call: () => makeIgroup('g', [], { osType: undefined }), kind: 'invalid_argument', field: 'os_type' },
    { name: 'CreateIgroup with a malformed initiator', call: () => makeIgroup('g', ['iqn.bad']), kind: 'invalid_argument', field: 'initiators' },
    { name: 'CreateIgroup with a WWPN in an iscsi igroup', call: () => makeIgroup('g', [W2]), kind: 'invalid_argument', field: 'initiators' },
    {
      name: 'CreateIgroup with 257 initiators',
      call: () => makeIgroup('g', Array.from({ length: 257 }, (_, i) => `iqn.2000-01.com.x:n${i}`)),
      kind: 'invalid_argument',
      field: 'initiators',
    },
    { name: 'CreateIgroup of an existing name with other initiators', call: () => makeIgroup('h1', [C]), kind: 'already_exists' },
    { name: 'CreateIgroup putting an initiator in igroups of two os_types', call: () => makeIgroup('g', [A], { osType: 'vmware' }), kind: 'failed_precondition', reason: 'INITIATOR_OS_TYPE_CONFLICT' },
    { name: 'GetIgroup of an unknown igroup', call: () => array.getIgroup('none'), kind: 'not_found' },
    { name: 'GetIgroup of a malformed name', call: () => array.getIgroup('-x'), kind: 'invalid_argument', field: 'name' },
    { name: 'ListIgroups by a malformed initiator', call: () => array.listIgroups({ pageSize: 0, pageToken: '', initiator: 'nope' }), kind: 'invalid_argument', field: 'initiator' },
    { name: 'ListIgroups with a garbage page token', call: () => array.listIgroups({ pageSize: 0, pageToken: '%%%', initiator: '' }), kind: 'invalid_argument', field: 'page_token' },
    { name: 'AddInitiators to an unknown igroup', call: () => array.addInitiators({ requestId: '', igroup: 'none', initiators: [C] }), kind: 'not_found' },
    { name: 'AddInitiators with an empty list', call: () => array.addInitiators({ requestId: '', igroup: 'h1', initiators: [] }), kind: 'invalid_argument', field: 'initiators' },
    { name: 'AddInitiators with a malformed initiator', call: () => array.addInitiators({ requestId: '', igroup: 'h1', initiators: [C, 'eui.123'] }), kind: 'invalid_argument', field: 'initiators' },
    { name: 'AddInitiators with an iSCSI name to an fcp igroup', call: () => array.addInitiators({ requestId: '', igroup: 'fc', initiators: [C] }), kind: 'invalid_argument', field: 'initiators' },
    { name: 'RemoveInitiators from a mapped igroup without force', call: () => array.removeInitiators({ requestId: '', igroup: 'h1', initiators: [A], force: false }), kind: 'failed_precondition', reason: 'IGROUP_MAPPED' },
    { name: 'RemoveInitiators with an empty list', call: () => array.removeInitiators({ requestId: '', igroup: 'h1', initiators: [], force: true }), kind: 'invalid_argument', field: 'initiators' },
    { name: 'RemoveInitiators from an unknown igroup', call: () => array.removeInitiators({ requestId: '', igroup: 'none', initiators: [A], force: true }), kind: 'not_found' },
    { name: 'DeleteIgroup of an igroup with maps', call: () => array.deleteIgroup({ requestId: '', name: 'h1' }), kind: 'failed_precondition', reason: 'IGROUP_MAPPED' },
    { name: 'DeleteIgroup of a malformed name', call: () => array.deleteIgroup({ requestId: '', name: ' h1' }), kind: 'invalid_argument', field: 'name' },
    // maps
    { name: 'MapLun at LUN id 4096', call: () => map('/vol/v2/full', 'h1', 4096), kind: 'invalid_argument', field: 'lun_id' },
    { name: 'MapLun at a negative LUN id', call: () => map('/vol/v2/full', 'h1', -1), kind: 'invalid_argument', field: 'lun_id' },
    { name: 'MapLun at an id in use', call: () => map('/vol/v2/full', 'h1', 1), kind: 'already_exists', reason: 'LUN_ID_ALREADY_EXISTS' },
    { name: 'MapLun of a mapped LUN at another id', call: () => map(LUN1, 'h1', 9), kind: 'already_exists' },
    { name: 'MapLun of an unknown LUN', call: () => map('/vol/v/none', 'h1'), kind: 'not_found' },
    { name: 'MapLun to an unknown igroup', call: () => map(LUN1, 'none'), kind: 'not_found' },
    { name: 'MapLun to a malformed igroup name', call: () => map(LUN1, 'a b'), kind: 'invalid_argument', field: 'igroup' },
    { name: 'UnmapLun of a malformed LUN reference', call: () => array.unmapLun({ requestId: '', lun: '', igroup: 'h1' }), kind: 'invalid_argument', field: 'lun' },
    { name: 'UnmapLun from a malformed igroup name', call: () => array.unmapLun({ requestId: '', lun: LUN1, igroup: '' }), kind: 'invalid_argument', field: 'igroup' },
    { name: 'ListLunMaps of an unknown LUN', call: () => array.listLunMaps({ lun: '/vol/v/none', igroup: '', pageSize: 0, pageToken: '' }), kind: 'not_found' },
    { name: 'ListLunMaps with a garbage page token', call: () => array.listLunMaps({ lun: '', igroup: '', pageSize: 0, pageToken: 'zz' }), kind: 'invalid_argument', field: 'page_token' },
    // block I/O
    { name: 'ReadBlocks at an unaligned offset', call: () => read(LUN1, A, 1, 512), kind: 'invalid_argument', field: 'offset_bytes' },
    { name: 'ReadBlocks at a negative offset', call: () => read(LUN1, A, -512, 512), kind: 'invalid_argument', field: 'offset_bytes' },
    { name: 'ReadBlocks of a negative length', call: () => read(LUN1, A, 0, -512), kind: 'invalid_argument', field: 'length_bytes' },
    { name: 'ReadBlocks past the end', call: () => read(LUN1, A, 8 * MiB, 512), kind: 'invalid_argument', field: 'offset_bytes' },
    { name: 'ReadBlocks as a masked initiator', call: () => read(LUN1, B, 0, 512), kind: 'permission_denied', reason: 'LUN_MASKED' },
    { name: 'ReadBlocks under another initiator\'s exclusive reservation', call: () => read(LUN2, B, 0, 512), kind: 'failed_precondition', reason: 'RESERVATION_CONFLICT' },
    { name: 'WriteBlocks as a masked initiator', call: () => write(LUN1, B, 0, pattern(512, 9)), kind: 'permission_denied' },
    { name: 'WriteBlocks under another initiator\'s exclusive reservation', call: () => write(LUN2, B, 0, pattern(512, 9)), kind: 'failed_precondition', reason: 'RESERVATION_CONFLICT' },
    { name: 'WriteBlocks of an unaligned length', call: () => write(LUN1, A, 0, pattern(513, 9)), kind: 'invalid_argument', field: 'data' },
    { name: 'WriteBlocks at a negative offset', call: () => write(LUN1, A, -512, pattern(512, 9)), kind: 'invalid_argument', field: 'offset_bytes' },
    { name: 'WriteBlocks into a full pool', call: () => write('/vol/v2/thin', A, 2 * MiB, pattern(512, 9)), kind: 'resource_exhausted', reason: 'POOL_FULL' },
    { name: 'WriteBlocks with a malformed initiator', call: () => write(LUN1, 'iqn.2000-13.x', 0, pattern(512, 9)), kind: 'invalid_argument', field: 'initiator' },
    // reservations
    { name: 'RegisterReservationKey with a malformed key', call: () => array.registerReservationKey({ requestId: '', lun: LUN1, initiator: A, key: '0xZZ' }), kind: 'invalid_argument', field: 'key' },
    { name: 'Reserve without a type', call: () => array.reserve({ requestId: '', lun: LUN1, initiator: A, key: '0x1', type: undefined }), kind: 'invalid_argument', field: 'type' },
    { name: 'Reserve by an unregistered initiator', call: () => array.reserve({ requestId: '', lun: LUN1, initiator: A, key: '0x1', type: 'write_exclusive' }), kind: 'failed_precondition', reason: 'RESERVATION_CONFLICT' },
    { name: 'Reserve a LUN another initiator holds', call: () => array.reserve({ requestId: '', lun: LUN2, initiator: A, key: '0xa', type: 'write_exclusive' }), kind: 'failed_precondition' },
    { name: 'ReleaseReservation with the wrong key', call: () => array.releaseReservation({ requestId: '', lun: LUN2, initiator: A, key: '0xb' }), kind: 'failed_precondition' },
    { name: 'PreemptReservation with a null preempt key', call: () => array.preemptReservation({ requestId: '', lun: LUN2, initiator: A, key: '0xa', preemptKey: '0', type: undefined }), kind: 'invalid_argument', field: 'preempt_key' },
    { name: 'PreemptReservation by an unregistered initiator', call: () => array.preemptReservation({ requestId: '', lun: LUN2, initiator: B, key: '0xb', preemptKey: '0xa', type: undefined }), kind: 'failed_precondition' },
    { name: 'ReadReservationKeys of an unknown LUN', call: () => array.readReservationKeys('/vol/v/none'), kind: 'not_found' },
  ];
  for (const c of cases) {
    it(`${c.name} is ${c.kind.toUpperCase()}${c.field ? ` on ${c.field}` : ''}${c.reason ? ` (${c.reason})` : ''} and changes nothing`, () => {
      expectRefusedUnchanged(c.call, c.kind, { field: c.field, reason: c.reason });
    });
  }
});

// ------------------------------------------------------------------ model-based property

type RefOsType = Extract<OsType, 'windows' | 'linux'>;
interface RefLun {
  sizeBytes: number;
  thin: boolean;
  osType: RefOsType;
  extents: Set<number>;
}
interface RefIgroup {
  osType: RefOsType;
  initiators: string[];
}
type Outcome = 'ok' | ErrorKind;

/** The array's rules, restated as simply as possible over a handful of LUNs and igroups. */
class Reference {
  luns = new Map<string, RefLun>();
  igroups = new Map<string, RefIgroup>();
  /** `${path}|${igroup}` → LUN id */
  maps = new Map<string, number>();

  constructor(readonly capacity: number) {}

  used(): number {
    let n = 0;
    for (const l of this.luns.values()) n += l.thin ? l.extents.size * MiB : l.sizeBytes;
    return n;
  }

  mapsOfLun(path: string): string[] {
    return [...this.maps.keys()].filter((k) => k.startsWith(`${path}|`));
  }

  mapsOfIgroup(name: string): string[] {
    return [...this.maps.keys()].filter((k) => k.endsWith(`|${name}`));
  }

  osConflict(initiators: string[], osType: RefOsType, self: string): boolean {
    for (const [name, g] of this.igroups) if (name !== self && g.osType !== osType && initiators.some((i) => g.initiators.includes(i))) return true;
    return false;
  }
}

const PATHS = ['/vol/p/a', '/vol/p/b', '/vol/q/c'];
const NAMES = ['g1', 'g2', 'g3'];
const INITIATORS = [A, B, C];
const BAD_INITIATOR = 'iqn.bad';
const SIZES = [4 * MiB, 8 * MiB, 12 * MiB, 1000];
const CAPACITY = 24 * MiB;

type Op =
  | { op: 'createLun'; path: number; size: number; osType: RefOsType; thin: boolean }
  | { op: 'deleteLun'; path: number; force: boolean }
  | { op: 'resizeLun'; path: number; size: number }
  | { op: 'createIgroup'; name: number; osType: RefOsType; initiators: string[] }
  | { op: 'deleteIgroup'; name: number }
  | { op: 'addInitiators'; name: number; initiators: string[] }
  | { op: 'removeInitiators'; name: number; initiators: string[]; force: boolean }
  | { op: 'mapLun'; path: number; name: number; lunId: number | undefined }
  | { op: 'unmapLun'; path: number; name: number }
  | { op: 'write'; path: number; initiator: number; extent: number };

const osTypeArb = fc.constantFrom<RefOsType>('windows', 'linux');
const initiatorsArb = fc.subarray([...INITIATORS, BAD_INITIATOR], { minLength: 0, maxLength: 3 }).chain((l) => fc.shuffledSubarray(l, { minLength: l.length, maxLength: l.length }));
const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ op: fc.constant('createLun' as const), path: fc.nat(2), size: fc.nat(3), osType: osTypeArb, thin: fc.boolean() }),
  fc.record({ op: fc.constant('deleteLun' as const), path: fc.nat(2), force: fc.boolean() }),
  fc.record({ op: fc.constant('resizeLun' as const), path: fc.nat(2), size: fc.nat(3) }),
  fc.record({ op: fc.constant('createIgroup' as const), name: fc.nat(2), osType: osTypeArb, initiators: initiatorsArb }),
  fc.record({ op: fc.constant('deleteIgroup' as const), name: fc.nat(2) }),
  fc.record({ op: fc.constant('addInitiators' as const), name: fc.nat(2), initiators: initiatorsArb }),
  fc.record({ op: fc.constant('removeInitiators' as const), name: fc.nat(2), initiators: initiatorsArb, force: fc.boolean() }),
  fc.record({ op: fc.constant('mapLun' as const), path: fc.nat(2), name: fc.nat(2), lunId: fc.option(fc.constantFrom(0, 1, 2, 4095, 4096), { nil: undefined }) }),
  fc.record({ op: fc.constant('unmapLun' as const), path: fc.nat(2), name: fc.nat(2) }),
  fc.record({ op: fc.constant('write' as const), path: fc.nat(2), initiator: fc.nat(2), extent: fc.nat(12) }),
);

/** What the reference says the op does (and does it to the reference when it succeeds). */
function applyToReference(ref: Reference, o: Op): Outcome {
  switch (o.op) {
    case 'createLun': {
      const path = PATHS[o.path]!;
      const size = SIZES[o.size]!;
      if (size % 512 !== 0 || size < 4 * MiB) return 'invalid_argument';
      const have = ref.luns.get(path);
      if (have) return have.sizeBytes === size && have.osType === o.osType && have.thin === o.thin ? 'ok' : 'already_exists';
      if (!o.thin && size > ref.capacity - ref.used()) return 'resource_exhausted';
      ref.luns.set(path, { sizeBytes: size, thin: o.thin, osType: o.osType, extents: new Set() });
      return 'ok';
    }
    case 'deleteLun': {
      const path = PATHS[o.path]!;
      if (!ref.luns.has(path)) return 'ok';
      const maps = ref.mapsOfLun(path);
      if (maps.length > 0 && !o.force) return 'failed_precondition';
      for (const k of maps) ref.maps.delete(k);
      ref.luns.delete(path);
      return 'ok';
    }
    case 'resizeLun': {
      const path = PATHS[o.path]!;
      const size = SIZES[o.size]!;
      if (size % 512 !== 0 || size < 4 * MiB) return 'invalid_argument';
      const l = ref.luns.get(path);
      if (!l) return 'not_found';
      if (size === l.sizeBytes) return 'ok';
      if (size < l.sizeBytes) return 'invalid_argument';
      if (!l.thin && size - l.sizeBytes > ref.capacity - ref.used()) return 'resource_exhausted';
      l.sizeBytes = size;
      return 'ok';
    }
    case 'createIgroup': {
      const name = NAMES[o.name]!;
      if (o.initiators.includes(BAD_INITIATOR)) return 'invalid_argument';
      const have = ref.igroups.get(name);
      if (have) {
        const same = have.osType === o.osType && have.initiators.length === o.initiators.length && o.initiators.every((i) => have.initiators.includes(i));
        return same ? 'ok' : 'already_exists';
      }
      if (ref.osConflict(o.initiators, o.osType, name)) return 'failed_precondition';
      ref.igroups.set(name, { osType: o.osType, initiators: [...o.initiators] });
      return 'ok';
    }
    case 'deleteIgroup': {
      const name = NAMES[o.name]!;
      if (!ref.igroups.has(name)) return 'ok';
      if (ref.mapsOfIgroup(name).length > 0) return 'failed_precondition';
      ref.igroups.delete(name);
      return 'ok';
    }
    case 'addInitiators': {
      const name = NAMES[o.name]!;
      if (o.initiators.length === 0 || o.initiators.includes(BAD_INITIATOR)) return 'invalid_argument';
      const g = ref.igroups.get(name);
      if (!g) return 'not_found';
      const fresh = o.initiators.filter((i) => !g.initiators.includes(i));
      if (fresh.length === 0) return 'ok';
      if (ref.osConflict(fresh, g.osType, name)) return 'failed_precondition';
      g.initiators.push(...fresh);
      return 'ok';
    }
    case 'removeInitiators': {
      const name = NAMES[o.name]!;
      if (o.initiators.length === 0 || o.initiators.includes(BAD_INITIATOR)) return 'invalid_argument';
      const g = ref.igroups.get(name);
      if (!g) return 'not_found';
      const present = o.initiators.filter((i) => g.initiators.includes(i));
      if (present.length === 0) return 'ok';
      if (ref.mapsOfIgroup(name).length > 0 && !o.force) return 'failed_precondition';
      g.initiators = g.initiators.filter((i) => !present.includes(i));
      return 'ok';
    }
    case 'mapLun': {
      const path = PATHS[o.path]!;
      const name = NAMES[o.name]!;
      if (o.lunId !== undefined && o.lunId > 4095) return 'invalid_argument';
      if (!ref.luns.has(path) || !ref.igroups.has(name)) return 'not_found';
      const current = ref.maps.get(`${path}|${name}`);
      if (current !== undefined) return o.lunId === undefined || o.lunId === current ? 'ok' : 'already_exists';
      const used = new Set(ref.mapsOfIgroup(name).map((k) => ref.maps.get(k)!));
      let id = o.lunId;
      if (id !== undefined) {
        if (used.has(id)) return 'already_exists';
      } else {
        id = 0;
        while (used.has(id)) id++;
      }
      ref.maps.set(`${path}|${name}`, id);
      return 'ok';
    }
    case 'unmapLun':
      ref.maps.delete(`${PATHS[o.path]!}|${NAMES[o.name]!}`);
      return 'ok';
    case 'write': {
      const path = PATHS[o.path]!;
      const initiator = INITIATORS[o.initiator]!;
      const l = ref.luns.get(path);
      if (!l) return 'not_found';
      const reachable = ref.mapsOfLun(path).some((k) => ref.igroups.get(k.split('|')[1]!)!.initiators.includes(initiator));
      if (!reachable) return 'permission_denied';
      if ((o.extent + 1) * MiB > l.sizeBytes) return 'invalid_argument';
      if (l.thin && !l.extents.has(o.extent)) {
        if (MiB > ref.capacity - ref.used()) return 'resource_exhausted';
        l.extents.add(o.extent);
      }
      return 'ok';
    }
  }
}

function applyToArray(o: Op): void {
  switch (o.op) {
    case 'createLun':
      array.createLun(lunInput(PATHS[o.path]!, { sizeBytes: BigInt(SIZES[o.size]!), osType: o.osType, thin: o.thin }));
      return;
    case 'deleteLun':
      array.deleteLun({ requestId: '', lun: PATHS[o.path]!, force: o.force });
      return;
    case 'resizeLun':
      array.resizeLun({ requestId: '', lun: PATHS[o.path]!, sizeBytes: BigInt(SIZES[o.size]!) });
      return;
    case 'createIgroup':
      array.createIgroup(igroupInput(NAMES[o.name]!, o.initiators, { osType: o.osType }));
      return;
    case 'deleteIgroup':
      array.deleteIgroup({ requestId: '', name: NAMES[o.name]! });
      return;
    case 'addInitiators':
      array.addInitiators({ requestId: '', igroup: NAMES[o.name]!, initiators: o.initiators });
      return;
    case 'removeInitiators':
      array.removeInitiators({ requestId: '', igroup: NAMES[o.name]!, initiators: o.initiators, force: o.force });
      return;
    case 'mapLun':
      array.mapLun({ requestId: '', lun: PATHS[o.path]!, igroup: NAMES[o.name]!, lunId: o.lunId });
      return;
    case 'unmapLun':
      array.unmapLun({ requestId: '', lun: PATHS[o.path]!, igroup: NAMES[o.name]! });
      return;
    case 'write':
      write(PATHS[o.path]!, INITIATORS[o.initiator]!, o.extent * MiB, pattern(512, o.extent + 1));
      return;
  }
}

/** The array's state in the reference's terms. */
function projected(s: ArrayState) {
  return {
    luns: s.luns.map((l) => ({ path: l.path, sizeBytes: l.sizeBytes, thin: l.thin, osType: l.osType, usedBytes: l.usedBytes, mapped: l.mapped })),
    igroups: s.igroups.map((g) => ({ name: g.name, osType: g.osType, initiators: g.initiators, mapCount: g.mapCount })),
    maps: s.maps.map((m) => `${m.lunPath}|${m.igroup}#${m.lunId}`).sort(),
    pool: { used: s.pools[0]!.usedBytes, luns: s.pools[0]!.lunCount },
  };
}

function expectedOf(ref: Reference): ReturnType<typeof projected> {
  const paths = [...ref.luns.keys()].sort();
  return {
    luns: paths.map((path) => {
      const l = ref.luns.get(path)!;
      return { path, sizeBytes: l.sizeBytes, thin: l.thin, osType: l.osType, usedBytes: l.thin ? l.extents.size * MiB : l.sizeBytes, mapped: ref.mapsOfLun(path).length > 0 };
    }),
    igroups: [...ref.igroups.keys()].sort().map((name) => {
      const g = ref.igroups.get(name)!;
      return { name, osType: g.osType, initiators: g.initiators, mapCount: ref.mapsOfIgroup(name).length };
    }),
    maps: [...ref.maps].map(([k, id]) => `${k}#${id}`).sort(),
    pool: { used: ref.used(), luns: ref.luns.size },
  };
}

describe('StorageArray: random operation sequences against a reference model (property)', () => {
  useFreshArray();
  it('after every valid or invalid operation the array equals the reference, and a refused operation changes nothing', function () {
    this.timeout(30_000);
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 30 }), (ops) => {
        array.close();
        rmSync(dir, { recursive: true, force: true });
        array = new StorageArray({ dataDir: dir, pools: [{ name: 'aggr1', capacityBytes: CAPACITY }] });
        const ref = new Reference(CAPACITY);
        for (const [i, o] of ops.entries()) {
          const before = arrayState(array, { data: false });
          const expected = applyToReference(ref, o);
          let actual: Outcome = 'ok';
          try {
            applyToArray(o);
          } catch (err) {
            if (!(err instanceof DomainError)) throw err;
            actual = err.kind;
          }
          const label = `op ${i}: ${JSON.stringify(o)}`;
          expect(actual, label).to.equal(expected);
          const after = arrayState(array, { data: false });
          if (actual !== 'ok') expect(after, label).to.deep.equal(before);
          expect(projected(after), label).to.deep.equal(expectedOf(ref));
        }
      }),
      { numRuns: 60 },
    );
  });
});
