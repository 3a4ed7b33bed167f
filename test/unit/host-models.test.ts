/**
 * The host agent's small pure models: the cluster file, LUN id choice, names (cluster
 * names with a unique suffix, LUN paths and comments on the array) and reservation keys.
 */
import { expect } from 'chai';
import { DomainError, InvalidArgumentError } from '../../common/errors.js';
import { parseDrivePath } from '../../common/drive-path.js';
import { silentLogger } from '../../common/logging.js';
import { reservationKey } from '../../host-agent/array.js';
import { parseClusterFile } from '../../host-agent/cluster-file.js';
import { LunIds, MAX_LUN_ID } from '../../host-agent/lun-ids.js';
import type { OperationRecord } from '../../host-agent/model.js';
import { availableDiskName, diskResourceName, lunComment, lunPathFor, newOperationId, temporaryGroupName, unique } from '../../host-agent/names.js';
import { crashHook } from '../../host-agent/serve.js';
import { HostState } from '../../host-agent/state.js';
import { MemoryStore } from '../../host-agent/store.js';

const IQN = (n: string): string => `iqn.2026-11.dev.passthru:${n}`;
const MINIMAL = { nodes: [{ name: 'node1', initiator: IQN('node1') }] };
const FULL = {
  name: 'prod-east',
  volume: 'pt_vol1',
  availableStorageOwner: 'node2',
  nodes: [
    { name: 'node1', initiator: IQN('node1'), hypervisorEnabled: true, hotAddSupported: false },
    { name: 'node2', initiator: IQN('node2'), hypervisorEnabled: false, hotAddSupported: true },
  ],
  vms: [
    { id: 'vm-1', name: 'Web server 1', guestOs: 'windows', ha: true, node: 'node1', state: 'running', scsiControllers: 2, locationsPerController: 8 },
    { id: 'vm2', guestOs: 'linux', node: 'node2', state: 'off' },
  ],
};

/** A copy of FULL with one change made by `edit`. */
function full(edit: (f: any) => void): string {
  const f = structuredClone(FULL) as any;
  edit(f);
  return JSON.stringify(f);
}

function errorOf(fn: () => unknown): DomainError {
  try {
    fn();
  } catch (err) {
    if (err instanceof DomainError) return err;
    throw err;
  }
  throw new Error('expected a DomainError, nothing was thrown');
}

describe('host-agent cluster file', () => {
  it('accepts a minimal file and fills in the defaults', () => {
    expect(parseClusterFile(JSON.stringify(MINIMAL))).to.deep.equal({
      name: 'passthru',
      volume: 'passthru',
      availableStorageOwner: 'node1',
      nodes: [{ name: 'node1', initiator: IQN('node1'), hypervisorEnabled: true, hotAddSupported: true }],
      vms: [],
    });
  });

  it('accepts a full file as written', () => {
    expect(parseClusterFile(JSON.stringify(FULL))).to.deep.equal({
      name: 'prod-east',
      volume: 'pt_vol1',
      availableStorageOwner: 'node2',
      nodes: FULL.nodes,
      vms: [
        { id: 'vm-1', name: 'Web server 1', guestOs: 'windows', ha: true, node: 'node1', running: true, scsiControllers: 2, locationsPerController: 8 },
        { id: 'vm2', name: 'vm2', guestOs: 'linux', ha: false, node: 'node2', running: false, scsiControllers: 4, locationsPerController: 64 },
      ],
    });
  });

  const invalid: { name: string; text: string; field: string }[] = [
    { name: 'not JSON', text: '{nodes:', field: 'cluster' },
    { name: 'a list at the top', text: '[]', field: 'cluster file' },
    { name: 'an unknown top-level field', text: full((f) => (f.owner = 'node1')), field: 'owner' },
    { name: 'a cluster name with capitals', text: full((f) => (f.name = 'Prod')), field: 'name' },
    { name: 'a volume with a hyphen', text: full((f) => (f.volume = 'pt-vol')), field: 'volume' },
    { name: 'a volume starting with a digit', text: full((f) => (f.volume = '1vol')), field: 'volume' },
    { name: 'no nodes', text: full((f) => (f.nodes = [])), field: 'nodes' },
    { name: 'nodes not a list', text: full((f) => (f.nodes = { node1: {} })), field: 'nodes' },
    { name: 'a node that is not an object', text: full((f) => (f.nodes[1] = 'node2')), field: 'nodes[1]' },
    { name: 'a node name with an underscore', text: full((f) => (f.nodes[0].name = 'node_1')), field: 'nodes[0].name' },
    { name: 'a node without a name', text: full((f) => delete f.nodes[0].name), field: 'nodes[0].name' },
    { name: 'an initiator that is not an IQN', text: full((f) => (f.nodes[0].initiator = 'node1')), field: 'nodes[0].initiator' },
    { name: 'an initiator over 223 characters', text: full((f) => (f.nodes[0].initiator = `iqn.2026-11.dev.passthru:${'x'.repeat(200)}`)), field: 'nodes[0].initiator' },
    { name: 'hypervisorEnabled not a boolean', text: full((f) => (f.nodes[0].hypervisorEnabled = 'yes')), field: 'nodes[0].hypervisorEnabled' },
    { name: 'hotAddSupported not a boolean', text: full((f) => (f.nodes[1].hotAddSupported = 1)), field: 'nodes[1].hotAddSupported' },
    { name: 'a node listed twice', text: full((f) => (f.nodes[1].name = 'node1')), field: 'nodes' },
    { name: 'one initiator for two nodes (case aside)', text: full((f) => (f.nodes[1].initiator = IQN('NODE1'))), field: 'nodes' },
    { name: 'an Available Storage owner that is no node', text: full((f) => (f.availableStorageOwner = 'node9')), field: 'availableStorageOwner' },
    { name: 'vms not a list', text: full((f) => (f.vms = {})), field: 'vms' },
    { name: 'a VM that is not an object', text: full((f) => (f.vms[0] = null)), field: 'vms[0]' },
    { name: 'a VM id with capitals', text: full((f) => (f.vms[0].id = 'VM1')), field: 'vms[0].id' },
    { name: 'a VM id listed twice', text: full((f) => (f.vms[1].id = 'vm-1')), field: 'vms[1].id' },
    { name: 'a VM name with a control character', text: full((f) => (f.vms[0].name = 'web\n1')), field: 'vms[0].name' },
    { name: 'a VM name with a trailing space', text: full((f) => (f.vms[0].name = 'web ')), field: 'vms[0].name' },
    { name: 'an unknown guest OS', text: full((f) => (f.vms[0].guestOs = 'macos')), field: 'vms[0].guestOs' },
    { name: 'a VM on an unknown node', text: full((f) => (f.vms[1].node = 'node3')), field: 'vms[1].node' },
    { name: 'an unknown VM state', text: full((f) => (f.vms[0].state = 'paused')), field: 'vms[0].state' },
    { name: 'ha not a boolean', text: full((f) => (f.vms[0].ha = 'true')), field: 'vms[0].ha' },
    { name: 'scsiControllers not a whole number', text: full((f) => (f.vms[0].scsiControllers = 1.5)), field: 'vms[0].scsiControllers' },
    { name: 'scsiControllers above 4', text: full((f) => (f.vms[0].scsiControllers = 5)), field: 'vms[0].scsiControllers' },
    { name: 'scsiControllers 0', text: full((f) => (f.vms[0].scsiControllers = 0)), field: 'vms[0].scsiControllers' },
    { name: 'locationsPerController not a number', text: full((f) => (f.vms[0].locationsPerController = '8')), field: 'vms[0].locationsPerController' },
    { name: 'locationsPerController above 64', text: full((f) => (f.vms[0].locationsPerController = 65)), field: 'vms[0].locationsPerController' },
    { name: 'a negative maxDisks', text: full((f) => (f.vms[0].maxDisks = -1)), field: 'vms[0].maxDisks' },
    { name: 'maxDisks not a whole number', text: full((f) => (f.vms[0].maxDisks = 2.5)), field: 'vms[0].maxDisks' },
    { name: 'a maxBytes that is no size', text: full((f) => (f.vms[0].maxBytes = '10 parsecs')), field: 'vms[0].maxBytes' },
    { name: 'a negative maxBytes', text: full((f) => (f.vms[0].maxBytes = -5)), field: 'vms[0].maxBytes' },
  ];
  it('reads a VM\'s own quota: maxDisks as a count, maxBytes as bytes or a size with its unit', () => {
    const file = parseClusterFile(full((f) => {
      f.vms[0].maxDisks = 3;
      f.vms[0].maxBytes = '1GiB';
      f.vms[1].maxBytes = 4194304;
    }));
    expect(file.vms[0]).to.include({ maxDisks: 3, maxBytes: 1024 ** 3 });
    expect(file.vms[1]).to.include({ maxBytes: 4194304 });
    expect(file.vms[1].maxDisks).to.equal(undefined);
  });
  for (const c of invalid) {
    it(`refuses ${c.name}, naming ${c.field}`, () => {
      const err = errorOf(() => parseClusterFile(c.text));
      expect(err).to.be.instanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).to.equal(c.field);
      expect(err.message.length).to.be.greaterThan(10);
    });
  }
});

describe('host-agent LunIds', () => {
  let state: HostState;
  let open: OperationRecord[];
  let ids: LunIds;

  beforeEach(() => {
    state = new HostState(new MemoryStore());
    open = [];
    ids = new LunIds(state, () => open);
  });

  /** Makes `node` see a disk at each of these LUN ids. */
  function used(node: string, ...lunIds: number[]): void {
    state.transact(() => {
      for (const id of lunIds) state.hostDisks.put({ node, serial: `S${node}${id}`, lunUuid: `u-${node}-${id}`, lunId: id });
    });
  }
  function freed(node: string, id: number): void {
    state.transact(() => state.hostDisks.delete(`${node}/S${node}${id}`));
  }
  function openOp(id: string, lunId: number, nodes: string[]): void {
    open.push({ id, data: { lunId, nodes } } as unknown as OperationRecord);
  }
  const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

  const lowest: { name: string; used: Record<string, number[]>; nodes: string[]; want: number }[] = [
    { name: 'nothing used', used: {}, nodes: ['n1', 'n2'], want: 0 },
    { name: 'a gap on one node', used: { n1: [0, 2] }, nodes: ['n1'], want: 1 },
    { name: 'gaps at different ids on two nodes', used: { n1: [0, 1], n2: [0, 2] }, nodes: ['n1', 'n2'], want: 3 },
    { name: 'another node\'s ids do not count', used: { n1: [0, 1], n2: [0, 2] }, nodes: ['n2'], want: 1 },
  ];
  for (const c of lowest) {
    it(`chooses the lowest id free on every given node: ${c.name}`, () => {
      for (const [n, l] of Object.entries(c.used)) used(n, ...l);
      expect(ids.choose(c.nodes, 'op-a')).to.equal(c.want);
    });
  }

  it('chooses the lowest id free for each node set, whatever it chose before for another set', () => {
    used('n1', 0, 1, 2);
    used('n2', 0);
    expect(ids.choose(['n1', 'n2'], 'op-a')).to.equal(3);
    expect(ids.choose(['n2'], 'op-b'), 'id 1 is free on n2').to.equal(1);
  });

  // Each choice below on a fresh LunIds, so one case does not lean on another's earlier choice.
  const fresh = (): LunIds => new LunIds(state, () => open);

  it('skips ids that open operations chose on the same nodes, but not its own choice', () => {
    openOp('op-a', 0, ['n1', 'n2']);
    openOp('op-b', 1, ['n2']);
    openOp('op-c', 2, ['n3']);
    expect(fresh().choose(['n1', 'n2'], 'op-x')).to.equal(2);
    expect(fresh().choose(['n1'], 'op-x')).to.equal(1);
    expect(fresh().choose(['n3'], 'op-x')).to.equal(0);
    expect(fresh().choose(['n1', 'n2'], 'op-a'), 'op-a replaying may choose its own id again').to.equal(0);
  });

  it('skips an id the array said is taken on a node, on that node only', () => {
    ids.takenOnArray('n1', 0);
    expect(ids.choose(['n1', 'n2'], 'op-a')).to.equal(1);
    const other = fresh();
    other.takenOnArray('n1', 0);
    expect(other.choose(['n2'], 'op-a')).to.equal(0);
  });

  it('gives back a released id to later choices', () => {
    used('n1', 0, 1, 2);
    expect(ids.choose(['n1'], 'op-a')).to.equal(3);
    freed('n1', 1);
    ids.released(1);
    expect(ids.choose(['n1'], 'op-b')).to.equal(1);
  });

  it('wraps around: an id freed below the last choice is found when nothing above is free', () => {
    used('n1', ...range(0, MAX_LUN_ID - 1));
    expect(ids.choose(['n1'], 'op-a')).to.equal(MAX_LUN_ID);
    used('n1', MAX_LUN_ID);
    freed('n1', 7);
    expect(ids.choose(['n1'], 'op-b')).to.equal(7);
  });

  it('refuses with RESOURCE_EXHAUSTED / LUN_IDS_EXHAUSTED when no id is free on every node', () => {
    used('n1', ...range(0, 2047));
    used('n2', ...range(2048, MAX_LUN_ID));
    const err = errorOf(() => ids.choose(['n1', 'n2'], 'op-a'));
    expect(err.kind).to.equal('resource_exhausted');
    expect(err.reason).to.equal('LUN_IDS_EXHAUSTED');
    expect(err.message).to.include('n1').and.include('n2');
    expect(ids.choose(['n1'], 'op-a')).to.equal(2048);
  });
});

describe('host-agent names', () => {
  it('unique() keeps a free name and suffixes a taken one with the lowest free " (n)"', () => {
    expect(unique('Disk VM vm1 MP E', () => false)).to.equal('Disk VM vm1 MP E');
    const taken = new Set(['Disk VM vm1 MP E', 'Disk VM vm1 MP E (2)', 'Disk VM vm1 MP E (4)']);
    expect(unique('Disk VM vm1 MP E', (n) => taken.has(n))).to.equal('Disk VM vm1 MP E (3)');
    expect(unique('x', (n) => n === 'x')).to.equal('x (2)');
  });

  it('availableDiskName() is Cluster Disk N with the lowest N free', () => {
    const taken = new Set(['Cluster Disk 1', 'Cluster Disk 3']);
    expect(availableDiskName((n) => taken.has(n))).to.equal('Cluster Disk 2');
  });

  const mounts: { os: 'windows' | 'linux'; path: string; resource: string }[] = [
    { os: 'windows', path: 'E:', resource: 'Disk VM vm1 MP E' },
    { os: 'windows', path: 'C:\\mt1', resource: 'Disk VM vm1 MP C mt1' },
    { os: 'linux', path: '/mnt/data', resource: 'Disk VM vm1 MP mnt data' },
  ];
  for (const m of mounts) {
    it(`names the disk resource and its temporary group patent style for ${m.path}`, () => {
      const p = parseDrivePath(m.os, m.path);
      expect(diskResourceName('vm1', p)).to.equal(m.resource);
      expect(temporaryGroupName('vm1', p)).to.equal(`${m.resource} Group`);
    });
  }

  const paths: { os: 'windows' | 'linux'; vm: string; path: string }[] = [
    { os: 'windows', vm: 'vm1', path: 'E:' },
    { os: 'windows', vm: 'web-01', path: 'C:\\my data\\ünïcödé & stuff' },
    { os: 'linux', vm: 'db-1', path: '/mnt/数据/a b/c.d-e' },
    { os: 'linux', vm: 'x'.repeat(32), path: '/' + 'y'.repeat(255) },
  ];
  for (const c of paths) {
    it(`lunPathFor is /vol/<volume>/<safe name> holding the op id, for ${c.vm} at ${c.path.slice(0, 40)}`, () => {
      const op = newOperationId();
      const path = lunPathFor('pt_vol1', c.vm, parseDrivePath(c.os, c.path), op);
      expect(path.startsWith('/vol/pt_vol1/')).to.equal(true);
      const name = path.slice('/vol/pt_vol1/'.length);
      expect(name).to.match(/^[A-Za-z0-9_]+$/);
      expect(name.length).to.be.at.most(255);
      expect(name).to.include(op.replace(/-/g, '_'));
      expect(name.startsWith(c.vm.replace(/-/g, '_'))).to.equal(true);
    });
  }

  it('lunPathFor gives two operations on one mount two paths', () => {
    const p = parseDrivePath('windows', 'E:');
    expect(lunPathFor('v', 'vm1', p, newOperationId())).to.not.equal(lunPathFor('v', 'vm1', p, newOperationId()));
  });

  it('operation ids are unique, sortable by creation and safe characters', () => {
    const a = newOperationId();
    const b = newOperationId();
    expect(a).to.not.equal(b);
    expect(a).to.match(/^op-[a-z0-9]+$/);
    expect(a.slice(0, 12) <= b.slice(0, 12)).to.equal(true);
  });

  const longCluster = 'c'.repeat(63);
  const longVm = 'v'.repeat(32);
  const comments: { name: string; os: 'windows' | 'linux'; path: string }[] = [
    { name: 'a short mount', os: 'windows', path: 'E:' },
    { name: 'a 260-character Windows mount', os: 'windows', path: 'C:\\' + 'a'.repeat(200) + '\\' + 'b'.repeat(56) },
    { name: 'a 4000-byte Linux mount', os: 'linux', path: ('/' + 'd'.repeat(199)).repeat(20) },
    { name: 'a long mount of characters outside the BMP', os: 'linux', path: '/' + '😀'.repeat(63) + '/' + '😀'.repeat(63) },
  ];
  for (const c of comments) {
    it(`lunComment fits 254 characters and names cluster, VM and op: ${c.name}`, () => {
      const mount = parseDrivePath(c.os, c.path);
      const op = newOperationId();
      for (const cluster of ['test', longCluster]) {
        const comment = lunComment(cluster, longVm, mount, op);
        expect(comment.length).to.be.at.most(254);
        expect(comment).to.include(`cluster=${cluster}`).and.include(`vm=${longVm}`).and.include(`op=${op}`);
        expect(comment).to.not.match(/[\x00-\x1f\x7f]/);
        if (mount.path.length < 80) expect(comment.endsWith(mount.path)).to.equal(true);
      }
    });
  }

  it('lunComment never cuts a character in half (no lone UTF-16 surrogate) when it shortens the mount', () => {
    const mount = parseDrivePath('linux', '/' + '😀'.repeat(63) + '/' + '😀'.repeat(63));
    const lone = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
    for (const cluster of ['a', 'ab', 'abc', 'abcd']) {
      expect(lunComment(cluster, 'vm1', mount, 'op-0000000001234567890ab'), `cluster ${cluster}`).to.not.match(lone);
    }
  });

  it('reservationKey is 16 hex digits, stable per node, different between nodes', () => {
    const k = reservationKey('node1');
    expect(k).to.match(/^[0-9a-f]{16}$/);
    expect(reservationKey('node1')).to.equal(k);
    expect(reservationKey('node2')).to.not.equal(k);
    expect(k, 'never the all-zero key, which means unregister').to.not.match(/^0+$/);
    // Pinned: a key that changed between versions would lock a node out of its own reservations after an upgrade.
    expect(k).to.equal('ead8b5639fcdfdd7');
  });
});

describe('host-agent --crash-at (the test setting that names a step)', () => {
  it('takes [kind:]step[@point] naming a real step, and refuses a step no workflow has, a point that is not before/during/after, or garbage, naming the setting', () => {
    const quiet = silentLogger();
    for (const ok of ['lun.map', 'create_disk:lun.map@during', 'remove_disk:scsi.detach@after', 'resource.online@before']) {
      expect(() => crashHook(ok, quiet), ok).to.not.throw();
    }
    for (const bad of ['lun.mapp', 'lun.map@later', 'create_disk:', '', 'LUN.MAP', 'lun.map@during@after']) {
      let err: unknown;
      try {
        crashHook(bad, quiet);
      } catch (e) {
        err = e;
      }
      expect(err, bad).to.be.instanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).to.equal('crash-at');
    }
  });
});
