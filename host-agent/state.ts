/**
 * The host agent's records in memory, with the indexes the workflow needs, written through
 * to a Store. A change is made to memory synchronously and then `commit()` hands every
 * record changed since the last commit to the store in one transaction. The workflow never
 * awaits between a change and its commit, so each commit holds exactly one step's change
 * together with its journal entry. If the store refuses a commit, memory is reloaded from
 * it, so memory never claims what was not kept.
 */
import {
  type AttachmentRecord,
  attachmentKey,
  type GroupRecord,
  type HostDiskRecord,
  hostDiskKey,
  type NodeRecord,
  type OperationRecord,
  type RequestRecord,
  requestKey,
  type ResourceRecord,
  type VmRecord,
} from './model.js';
import { AVAILABLE_STORAGE } from './names.js';
import type { Change, Store, Table } from './store.js';

/** key → primary keys, kept in step with one table. */
class Index<T> {
  private readonly map = new Map<string, Set<string>>();
  constructor(private readonly keyOf: (v: T) => string | undefined) {}
  add(pk: string, v: T): void {
    const k = this.keyOf(v);
    if (k === undefined) return;
    let s = this.map.get(k);
    if (!s) this.map.set(k, (s = new Set()));
    s.add(pk);
  }
  remove(pk: string, v: T): void {
    const k = this.keyOf(v);
    if (k === undefined) return;
    const s = this.map.get(k);
    if (!s) return;
    s.delete(pk);
    if (s.size === 0) this.map.delete(k);
  }
  get(k: string): ReadonlySet<string> {
    return this.map.get(k) ?? EMPTY;
  }
  clear(): void {
    this.map.clear();
  }
}
const EMPTY: ReadonlySet<string> = new Set();

export class Records<T> {
  private readonly map = new Map<string, T>();
  constructor(
    readonly table: Table,
    private readonly keyOf: (v: T) => string,
    private readonly changed: (records: Records<unknown>, c: Change, old: unknown) => void,
    private readonly indexes: Index<T>[] = [],
  ) {}

  /** Puts back what a key held (undoing a change not yet committed); records nothing. */
  restore(key: string, old: T | undefined): void {
    const cur = this.map.get(key);
    if (cur !== undefined) for (const i of this.indexes) i.remove(key, cur);
    if (old === undefined) this.map.delete(key);
    else {
      this.map.set(key, old);
      for (const i of this.indexes) i.add(key, old);
    }
  }

  get(key: string): T | undefined {
    return this.map.get(key);
  }
  has(key: string): boolean {
    return this.map.has(key);
  }
  values(): IterableIterator<T> {
    return this.map.values();
  }
  get size(): number {
    return this.map.size;
  }
  /** Stores a record (a new object, never one already stored and then mutated). */
  put(v: T): T {
    const k = this.keyOf(v);
    const old = this.map.get(k);
    if (old !== undefined) for (const i of this.indexes) i.remove(k, old);
    this.map.set(k, v);
    for (const i of this.indexes) i.add(k, v);
    this.changed(this as Records<unknown>, { table: this.table, key: k, value: v }, old);
    return v;
  }
  delete(key: string): void {
    const old = this.map.get(key);
    if (old === undefined) return;
    for (const i of this.indexes) i.remove(key, old);
    this.map.delete(key);
    this.changed(this as Records<unknown>, { table: this.table, key, value: undefined }, old);
  }
  load(values: Iterable<unknown>): void {
    this.map.clear();
    for (const i of this.indexes) i.clear();
    for (const raw of values) {
      const v = raw as T;
      const k = this.keyOf(v);
      this.map.set(k, v);
      for (const i of this.indexes) i.add(k, v);
    }
  }
}

interface UndoEntry {
  records: Records<unknown>;
  key: string;
  old: unknown;
  pendingKey: string;
  oldPending: Change | undefined;
}

export class HostState {
  private pending = new Map<string, Change>();
  /** How to take back each change not yet committed, oldest first. */
  private undoLog: UndoEntry[] = [];
  private readonly record = (records: Records<unknown>, c: Change, old: unknown): void => {
    const pendingKey = `${c.table}\u0000${c.key}`;
    this.undoLog.push({ records, key: c.key, old, pendingKey, oldPending: this.pending.get(pendingKey) });
    this.pending.set(pendingKey, c);
  };

  readonly resourcesByName = new Index<ResourceRecord>((r) => r.name);
  readonly resourcesByGroup = new Index<ResourceRecord>((r) => r.group);
  readonly disksByMount = new Index<ResourceRecord>((r) => (r.vmId !== undefined && r.mountKey !== undefined ? `${r.vmId}\u0000${r.mountKey}` : undefined));
  readonly attachmentsByVm = new Index<AttachmentRecord>((a) => a.vmId);
  readonly attachmentsBySerial = new Index<AttachmentRecord>((a) => a.serial);
  readonly hostDisksByNode = new Index<HostDiskRecord>((h) => h.node);
  readonly hostDisksBySerial = new Index<HostDiskRecord>((h) => h.serial);
  readonly hostDisksByLunId = new Index<HostDiskRecord>((h) => `${h.node}/${h.lunId}`);
  readonly groupsByVm = new Index<GroupRecord>((g) => g.vmId);
  readonly vmsByNode = new Index<VmRecord>((v) => v.node);

  readonly nodes = new Records<NodeRecord>('nodes', (n) => n.name, this.record);
  readonly vms = new Records<VmRecord>('vms', (v) => v.id, this.record, [this.vmsByNode]);
  readonly groups = new Records<GroupRecord>('groups', (g) => g.name, this.record, [this.groupsByVm]);
  /** Keyed by the LUN's serial: never two resources for one LUN. */
  readonly resources = new Records<ResourceRecord>('resources', (r) => r.lun.serial, this.record, [
    this.resourcesByName,
    this.resourcesByGroup,
    this.disksByMount,
  ]);
  readonly attachments = new Records<AttachmentRecord>('attachments', (a) => attachmentKey(a.vmId, a.controller, a.location), this.record, [
    this.attachmentsByVm,
    this.attachmentsBySerial,
  ]);
  readonly hostDisks = new Records<HostDiskRecord>('host_disks', (h) => hostDiskKey(h.node, h.serial), this.record, [
    this.hostDisksByNode,
    this.hostDisksBySerial,
    this.hostDisksByLunId,
  ]);
  readonly operations = new Records<OperationRecord>('operations', (o) => o.id, this.record);
  readonly requests = new Records<RequestRecord>('requests', (r) => requestKey(r.scope, r.requestId), this.record);
  readonly meta = new Records<{ key: string; value: unknown }>('meta', (m) => m.key, this.record);

  constructor(private readonly store: Store) {
    this.reload();
  }

  /** Reads everything from the store, dropping changes not committed. */
  reload(): void {
    const snap = this.store.load();
    this.nodes.load(snap.nodes.values());
    this.vms.load(snap.vms.values());
    this.groups.load(snap.groups.values());
    this.resources.load(snap.resources.values());
    this.attachments.load(snap.attachments.values());
    this.hostDisks.load(snap.host_disks.values());
    this.operations.load(snap.operations.values());
    this.requests.load(snap.requests.values());
    this.meta.load(snap.meta.values());
    this.pending.clear();
    this.undoLog = [];
  }

  /** A point to come back to: rollbackTo() takes back every change made after it (none committed since). */
  mark(): number {
    return this.undoLog.length;
  }

  /** Takes back the changes made since `mark`, newest first, as if they never happened. */
  rollbackTo(mark: number): void {
    while (this.undoLog.length > mark) {
      const e = this.undoLog.pop()!;
      e.records.restore(e.key, e.old);
      if (e.oldPending) this.pending.set(e.pendingKey, e.oldPending);
      else this.pending.delete(e.pendingKey);
    }
  }

  /** Changes made and not yet committed. */
  get uncommitted(): number {
    return this.pending.size;
  }

  /**
   * Makes every change since the last commit durable in one transaction. If the store
   * refuses, memory is reloaded from it: nothing is claimed that was not kept.
   */
  commit(): void {
    if (this.pending.size === 0) return;
    const changes = [...this.pending.values()];
    this.pending.clear();
    this.undoLog = [];
    try {
      this.store.apply(changes);
    } catch (err) {
      this.reload();
      throw err;
    }
  }

  /** Runs a change and commits it; a change that throws is taken back and nothing of it is kept. */
  transact<R>(change: () => R): R {
    const m = this.mark();
    let result: R;
    try {
      result = change();
    } catch (err) {
      this.rollbackTo(m);
      throw err;
    }
    this.commit();
    return result;
  }

  close(): void {
    this.store.close();
  }

  // -------------------------------------------------------------- lookups

  resourceByName(name: string): ResourceRecord | undefined {
    for (const serial of this.resourcesByName.get(name)) return this.resources.get(serial);
    return undefined;
  }

  resourcesIn(group: string): ResourceRecord[] {
    return [...this.resourcesByGroup.get(group)].map((s) => this.resources.get(s)!);
  }

  /** The disk (resource) a VM has at a mount, if any. */
  diskAt(vmId: string, mountKey: string): ResourceRecord | undefined {
    for (const serial of this.disksByMount.get(`${vmId}\u0000${mountKey}`)) return this.resources.get(serial);
    return undefined;
  }

  disksOfVm(vmId: string): ResourceRecord[] {
    const out: ResourceRecord[] = [];
    for (const pk of this.attachmentsByVm.get(vmId)) {
      const a = this.attachments.get(pk)!;
      const r = this.resources.get(a.serial);
      if (r) out.push(r);
    }
    return out;
  }

  attachmentsOf(vmId: string): AttachmentRecord[] {
    return [...this.attachmentsByVm.get(vmId)].map((k) => this.attachments.get(k)!);
  }

  attachmentOfSerial(serial: string): AttachmentRecord | undefined {
    for (const k of this.attachmentsBySerial.get(serial)) return this.attachments.get(k);
    return undefined;
  }

  hostDisksOf(node: string): HostDiskRecord[] {
    return [...this.hostDisksByNode.get(node)].map((k) => this.hostDisks.get(k)!);
  }

  hostDisksOfSerial(serial: string): HostDiskRecord[] {
    return [...this.hostDisksBySerial.get(serial)].map((k) => this.hostDisks.get(k)!);
  }

  /** Whether a node already sees some LUN at this LUN id. */
  lunIdUsed(node: string, lunId: number): boolean {
    return this.hostDisksByLunId.get(`${node}/${lunId}`).size > 0;
  }

  groupOfVm(vmId: string): GroupRecord | undefined {
    const vm = this.vms.get(vmId);
    return vm ? this.groups.get(vm.group) : undefined;
  }

  temporaryGroupsOf(vmId: string): GroupRecord[] {
    return [...this.groupsByVm.get(vmId)].map((n) => this.groups.get(n)!).filter((g) => g.kind === 'temporary');
  }

  availableStorage(): GroupRecord {
    const g = this.groups.get(AVAILABLE_STORAGE);
    if (!g) throw new Error('the cluster has no Available Storage group');
    return g;
  }

  vmsOn(node: string): VmRecord[] {
    return [...this.vmsByNode.get(node)].map((id) => this.vms.get(id)!);
  }
}
