/**
 * The Store seam (host-agent/store.ts): one behavioural suite run against MemoryStore and
 * SqliteStore, so the in-memory store unit tests use promises what the SQLite one keeps;
 * then what only SqliteStore has: durability across close/reopen, the schema version, and
 * one host agent per data dir.
 */
import Database from 'better-sqlite3';
import { expect } from 'chai';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DomainError } from '../../common/errors.js';
import { type Change, MemoryStore, SCHEMA_VERSION, SqliteStore, type Store, TABLES, type Table } from '../../host-agent/store.js';

const dirs: string[] = [];
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'passthru-host-store-'));
  dirs.push(d);
  return d;
}

after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const put = (table: Table, key: string, value: unknown): Change => ({ table, key, value });
const del = (table: Table, key: string): Change => ({ table, key, value: undefined });
const entries = (store: Store, table: Table): [string, unknown][] => [...store.load()[table]].sort(([a], [b]) => (a < b ? -1 : 1));

const kinds: { name: string; open: () => Store }[] = [
  { name: 'MemoryStore', open: () => new MemoryStore() },
  { name: 'SqliteStore', open: () => new SqliteStore(tempDir()) },
];

for (const kind of kinds) {
  describe(`host-agent Store contract: ${kind.name}`, () => {
    let store: Store;
    beforeEach(() => {
      store = kind.open();
    });
    afterEach(() => store.close());

    it('loads every table, empty, from a new store', () => {
      const snap = store.load();
      expect(Object.keys(snap).sort()).to.deep.equal([...TABLES].sort());
      for (const t of TABLES) expect(snap[t].size, t).to.equal(0);
    });

    it('keeps JSON records as they were given: puts, overwrites and deletes', () => {
      const op = { id: 'op-1', steps: [{ name: 'validate', state: 'done', startMs: 1 }], data: { lunId: 0, nodes: ['a', 'b'] }, committed: false };
      store.apply([put('operations', 'op-1', op), put('vms', 'vm1', { id: 'vm1', n: 1 }), put('vms', 'vm2', { id: 'vm2', n: 2 })]);
      store.apply([put('vms', 'vm1', { id: 'vm1', n: 10 }), del('vms', 'vm2')]);
      expect(entries(store, 'operations')).to.deep.equal([['op-1', op]]);
      expect(entries(store, 'vms')).to.deep.equal([['vm1', { id: 'vm1', n: 10 }]]);
    });

    it('deleting a key that is not there succeeds and changes nothing', () => {
      store.apply([put('groups', 'g', { name: 'g' })]);
      store.apply([del('groups', 'missing'), del('nodes', 'g')]);
      expect(entries(store, 'groups')).to.deep.equal([['g', { name: 'g' }]]);
    });

    it('an empty change list is accepted', () => {
      store.apply([]);
      expect(store.load().meta.size).to.equal(0);
    });

    it('the last change to a key in one list wins', () => {
      store.apply([put('meta', 'k', { v: 1 }), put('meta', 'k', { v: 2 }), del('meta', 'x'), put('meta', 'x', { v: 3 })]);
      expect(entries(store, 'meta')).to.deep.equal([
        ['k', { v: 2 }],
        ['x', { v: 3 }],
      ]);
      store.apply([put('meta', 'k', { v: 4 }), del('meta', 'k')]);
      expect(store.load().meta.has('k')).to.equal(false);
    });

    it('keeps the same key in different tables apart', () => {
      store.apply([put('nodes', 'same', { t: 'nodes' }), put('vms', 'same', { t: 'vms' })]);
      store.apply([del('nodes', 'same')]);
      expect(store.load().nodes.has('same')).to.equal(false);
      expect(store.load().vms.get('same')).to.deep.equal({ t: 'vms' });
    });

    it('keeps keys with separators, NUL and non-ASCII characters exactly (request keys hold a NUL)', () => {
      const keys = ['vm:vm1\u0000req-1', 'vm:vm1\u0000req-10', 'a/b/c', 'Disk VM vm1 MP C 数据', 'emoji 😀'];
      store.apply(keys.map((k, i) => put('requests', k, { i })));
      expect(entries(store, 'requests').map(([k]) => k).sort()).to.deep.equal([...keys].sort());
      store.apply([del('requests', 'vm:vm1\u0000req-1')]);
      expect(store.load().requests.has('vm:vm1\u0000req-1')).to.equal(false);
      expect(store.load().requests.get('vm:vm1\u0000req-10')).to.deep.equal({ i: 1 });
    });

    it('stores a copy: changing the object after apply, or what load returned, changes nothing stored', () => {
      const rec = { id: 'vm1', disks: ['A'] };
      store.apply([put('vms', 'vm1', rec)]);
      rec.disks.push('B');
      const loaded = store.load().vms.get('vm1') as { disks: string[] };
      loaded.disks.push('C');
      expect(store.load().vms.get('vm1')).to.deep.equal({ id: 'vm1', disks: ['A'] });
    });

    const bad: { name: string; value: unknown }[] = [
      { name: 'a function', value: () => 1 },
      { name: 'a BigInt (not JSON)', value: { sizeBytes: 10n } },
    ];
    for (const b of bad) {
      it(`apply is all or nothing: a list with one value that cannot be kept (${b.name}) throws and writes none of it`, () => {
        store.apply([put('vms', 'kept', { v: 0 })]);
        expect(() => store.apply([put('vms', 'kept', { v: 1 }), put('vms', 'new', { v: 2 }), put('nodes', 'n', b.value), put('groups', 'g', { v: 3 })])).to.throw();
        expect(entries(store, 'vms')).to.deep.equal([['kept', { v: 0 }]]);
        expect(store.load().nodes.size).to.equal(0);
        expect(store.load().groups.size).to.equal(0);
      });
    }

    it('apply is all or nothing: a change to an unknown table throws and writes none of the list', () => {
      expect(() => store.apply([put('vms', 'a', { v: 1 }), { table: 'bogus' as Table, key: 'x', value: {} }])).to.throw();
      expect(store.load().vms.size).to.equal(0);
    });
  });
}

describe('host-agent MemoryStore', () => {
  it('failNext makes the next apply throw, write nothing, and only that one', () => {
    const store = new MemoryStore();
    store.failNext = new Error('disk full');
    expect(() => store.apply([put('vms', 'a', { v: 1 })])).to.throw('disk full');
    expect(store.load().vms.size).to.equal(0);
    store.apply([put('vms', 'a', { v: 1 })]);
    expect(store.load().vms.get('a')).to.deep.equal({ v: 1 });
  });
});

describe('host-agent SqliteStore', () => {
  it('keeps what apply returned from across close and reopen', () => {
    const dir = tempDir();
    let store = new SqliteStore(dir);
    store.apply([put('operations', 'op-1', { id: 'op-1', state: 'running' }), put('requests', 'vm:vm1\u0000r1', { opId: 'op-1' })]);
    store.apply([put('operations', 'op-1', { id: 'op-1', state: 'succeeded' })]);
    store.close();
    store = new SqliteStore(dir);
    expect(store.load().operations.get('op-1')).to.deep.equal({ id: 'op-1', state: 'succeeded' });
    expect(store.load().requests.get('vm:vm1\u0000r1')).to.deep.equal({ opId: 'op-1' });
    store.close();
  });

  it('a failed apply leaves the database usable, and what it refused is absent after reopen', () => {
    const dir = tempDir();
    let store = new SqliteStore(dir);
    expect(() => store.apply([put('vms', 'a', { v: 1 }), put('vms', 'b', { v: 2n })])).to.throw();
    store.apply([put('vms', 'c', { v: 3 })]);
    store.close();
    store = new SqliteStore(dir);
    expect(entries(store, 'vms')).to.deep.equal([['c', { v: 3 }]]);
    store.close();
  });

  it('sets the schema version (user_version) on a new data dir, WAL journal', () => {
    const dir = tempDir();
    new SqliteStore(dir).close();
    const db = new Database(join(dir, 'host-agent.db'), { readonly: true });
    try {
      expect(SCHEMA_VERSION).to.be.at.least(1);
      expect(db.pragma('user_version', { simple: true })).to.equal(SCHEMA_VERSION);
      expect(db.pragma('journal_mode', { simple: true })).to.equal('wal');
    } finally {
      db.close();
    }
  });

  it('refuses a data dir written by a newer schema with FAILED_PRECONDITION and leaves it untouched', () => {
    const dir = tempDir();
    new SqliteStore(dir).close();
    const db = new Database(join(dir, 'host-agent.db'));
    db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
    db.close();
    let err: unknown;
    try {
      new SqliteStore(dir).close();
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(DomainError);
    expect((err as DomainError).kind).to.equal('failed_precondition');
    expect((err as DomainError).reason).to.equal('SCHEMA_TOO_NEW');
    expect((err as DomainError).message).to.include(String(SCHEMA_VERSION + 1));
    const again = new Database(join(dir, 'host-agent.db'));
    try {
      expect(again.pragma('user_version', { simple: true }), 'the refused open left the file as it was and closed it').to.equal(SCHEMA_VERSION + 1);
    } finally {
      again.close();
    }
  });

  it('refuses a second store on a data dir in use (DATA_DIR_IN_USE) quickly, and lets it in once the first closes', () => {
    const dir = tempDir();
    const first = new SqliteStore(dir);
    first.apply([put('meta', 'owner', { who: 'first' })]);
    const t0 = Date.now();
    let err: unknown;
    try {
      new SqliteStore(dir).close();
    } catch (e) {
      err = e;
    }
    expect(Date.now() - t0, 'refused within a few seconds').to.be.below(4000);
    expect(err).to.be.instanceOf(DomainError);
    expect((err as DomainError).kind).to.equal('failed_precondition');
    expect((err as DomainError).reason).to.equal('DATA_DIR_IN_USE');
    expect(first.load().meta.get('owner'), 'the first store still works').to.deep.equal({ who: 'first' });
    first.close();
    const second = new SqliteStore(dir);
    expect(second.load().meta.get('owner')).to.deep.equal({ who: 'first' });
    second.close();
  });

  it('close() twice is harmless', () => {
    const store = new SqliteStore(tempDir());
    store.close();
    store.close();
  });
});
