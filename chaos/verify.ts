/**
 * The end of a chaos run, once everything is quiet: every promise checked against what the
 * clients were told.
 *
 *   - CheckInvariants is empty, and no operation is left running;
 *   - every acknowledged mount is in effect: in the guest's mount table, attached on the host
 *     at the same SCSI address with the same serial and the volume reported, its volume read
 *     from the disk the one acknowledged, every acknowledged byte read back through the
 *     guest as written; every acknowledged removal too (gone from both, its LUN deleted or
 *     left on the array unmapped, with its volume and data);
 *   - nothing the clients were not told of: no LUN, LUN map, disk, resource or temporary
 *     group the run cannot account for (a failed operation that left one is named);
 *   - the guests' mount tables agree with the host, and `disk list` finds nothing to say.
 *
 * LUNs nobody mounts (Available Storage, left by a removal) are read from the array's own
 * backing files: their volume and acknowledged bytes must be there too.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { allPages } from '../common/cli.js';
import { parseDiskLayout } from '../guest-agent/layout.js';
import { GroupKind, OperationState, ResourceState, type Disk, type Operation } from '../proto/gen/passthru/host/v1/host.js';
import type { Lun, LunMap } from '../proto/gen/passthru/storage/v1/storage.js';
import { lunFilePath } from '../storage-sim/lun-data.js';
import { ADMIN_VOLUME, answered, type Clients } from './admin.js';
import { NODES, VOLUME } from './cluster.js';
import type { Ledger } from './ledger.js';
import type { Registry } from './registry.js';
import type { VolumeModel } from './volume-model.js';
import type { Worker } from './worker.js';

export interface VerifyEnv {
  ledger: Ledger;
  clients: Clients;
  registry: Registry;
  workers: Worker[];
  /** storage-sim's data dir (its luns/<uuid>.img files). */
  arrayDir: string;
}

export interface Verified {
  lunsOnArray: number;
  mapsOnArray: number;
  mountsChecked: number;
  bytesVerified: number;
  lunsReadFromArray: number;
}

/** Bytes [offset, offset + length) of a LUN's backing file (zeros past its end or without one: never written). */
function readLunFile(arrayDir: string, uuid: string, offset: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let fd: number;
  try {
    fd = openSync(lunFilePath(arrayDir, uuid), 'r');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return out;
    throw err;
  }
  try {
    let done = 0;
    while (done < length) {
      const n = readSync(fd, out, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

export async function verify(env: VerifyEnv): Promise<Verified> {
  const { ledger: l, clients: c, registry } = env;
  const out: Verified = { lunsOnArray: 0, mapsOnArray: 0, mountsChecked: 0, bytesVerified: 0, lunsReadFromArray: 0 };

  // ---- the host's own cross-checks, and nothing left running
  const { violations } = await answered(() => c.admin.checkInvariants({}));
  for (const v of violations) l.violate(`CHECK_INVARIANTS:${v.kind}`, v.subject, v.description);
  const ops = await allPages<Operation>(async (token) => {
    const r = await answered(() => c.admin.listOperations({ vmId: '', state: 0, pageSize: 1000, pageToken: token }));
    return { items: r.operations, next: r.nextPageToken };
  });
  const opById = new Map(ops.map((o) => [o.id, o]));
  for (const o of ops) {
    if (o.state === OperationState.OPERATION_STATE_RUNNING || o.state === OperationState.OPERATION_STATE_ROLLING_BACK) {
      l.violate('OPERATION_NOT_SETTLED', o.id, `operation ${o.id} (${o.vmId} ${o.mountPath}) is still ${OperationState[o.state]} once everything is quiet`);
    }
  }

  // ---- the array as it is
  const luns = await allPages<Lun>(async (token) => {
    const r = await answered(() => c.storage.listLuns({ pageSize: 1000, pageToken: token, pathPrefix: '' }));
    return { items: r.luns, next: r.nextPageToken };
  });
  const maps = await allPages<LunMap>(async (token) => {
    const r = await answered(() => c.storage.listLunMaps({ lun: '', igroup: '', pageSize: 1000, pageToken: token }));
    return { items: r.maps, next: r.nextPageToken };
  });
  out.lunsOnArray = luns.length;
  out.mapsOnArray = maps.length;
  const lunBySerial = new Map(luns.map((x) => [x.serial, x]));
  const mapsOf = new Map<string, LunMap[]>();
  for (const m of maps) mapsOf.set(m.serial, [...(mapsOf.get(m.serial) ?? []), m]);

  // ---- the host as it is
  const { groups } = await answered(() => c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED }));
  const { disks: hostDisks } = await answered(() => c.admin.listDisks({ vmId: '' }));
  const { vms } = await answered(() => c.admin.listVms({ node: '' }));
  for (const g of groups.filter((x) => x.kind === GroupKind.GROUP_KIND_TEMPORARY)) {
    l.violate('TEMPORARY_GROUP_LEFT', g.name, `temporary group ${g.name} is still there once everything is quiet`);
  }
  const inAvailable = new Set(groups.filter((g) => g.kind === GroupKind.GROUP_KIND_AVAILABLE_STORAGE).flatMap((g) => g.resources.map((r) => r.serial)));

  // ---- each guest: its table, the host's disks of its VM, its volumes and their bytes
  const accounted = new Set<string>();
  for (const w of env.workers) {
    const vm = vms.find((v) => v.id === w.vm.id);
    let table;
    try {
      table = w.table();
    } catch (err) {
      l.violate('MOUNT_TABLE_UNREADABLE', w.vm.id, (err as Error).message);
      continue;
    }
    for (const p of table.pending) {
      l.violate('REQUEST_UNFINISHED', `${w.vm.id} ${p.mountPath}`, `the guest still has an unfinished \`disk ${p.kind}\` of ${p.mountPath} (request ${p.requestId}, ${p.phase}) after running it again`);
    }
    const mine = hostDisks.filter((d) => d.vmId === w.vm.id);
    const hostAt = new Map<string, Disk>();
    for (const d of mine) hostAt.set(w.drivePath(d.mountPath).key, d);
    for (const [key, e] of w.expect) {
      if (e.kind === 'uncertain') {
        l.violate('UNRESOLVED', `${w.vm.id} ${e.path}`, `what is at ${e.path} was never settled: an unfinished request the guest could not finish`);
        continue;
      }
      const model = e.model;
      accounted.add(model.serial);
      const rec = table.mounts.find((m) => m.key === key);
      const host = hostAt.get(key);
      if (!rec || rec.serial !== model.serial || rec.volumeId !== model.volumeId) {
        l.violate('MOUNT_LOST', `${w.vm.id} ${e.path}`, `${model.describe()} was acknowledged at ${e.path}; the guest's mount table has ${rec ? `LUN ${rec.serial} volume ${rec.volumeId}` : 'nothing'} there`, 'lost');
        continue;
      }
      if (!host || host.serial !== model.serial) {
        l.violate('DISK_LOST', `${w.vm.id} ${e.path}`, `${model.describe()} was acknowledged at ${e.path}; the host has ${host ? `LUN ${host.serial}` : 'no disk'} there`, 'lost');
        continue;
      }
      if (!host.mounted || host.volumeId !== rec.volumeId || host.address?.controller !== rec.address.controller || host.address?.location !== rec.address.location) {
        l.violate(
          'MOUNT_TABLE_DISAGREES',
          `${w.vm.id} ${e.path}`,
          `the guest has volume ${rec.volumeId} at SCSI ${rec.address.controller}:${rec.address.location}, the host ${host.mounted ? `volume ${host.volumeId}` : 'no mount reported'} at SCSI ${host.address?.controller}:${host.address?.location}`,
        );
      }
      if (host.resourceState !== ResourceState.RESOURCE_STATE_ONLINE) {
        l.violate('DISK_NOT_ONLINE', `${w.vm.id} ${e.path}`, `LUN ${model.serial} is ${ResourceState[host.resourceState]} once everything is quiet`);
      }
      const onArray = lunBySerial.get(model.serial);
      const nodeMaps = (mapsOf.get(model.serial) ?? []).map((m) => m.igroup);
      if (!onArray) l.violate('LUN_LOST', model.serial, `${model.describe()} is gone from the array`, 'lost');
      else if (vm && !nodeMaps.includes(vm.node)) l.violate('MAP_LOST', model.serial, `${model.describe()} is not mapped to node ${vm.node}, where its VM runs`);
      out.mountsChecked++;
      await checkMounted(w, key, model, env, out);
    }
    for (const m of table.mounts) {
      if (w.expect.get(m.key)?.kind !== 'mounted') l.violate('MOUNT_NOT_ACKNOWLEDGED', `${w.vm.id} ${m.path}`, `the guest's mount table has LUN ${m.serial} at ${m.path}, which no acknowledged create or connect left there`);
    }
    for (const [key, d] of hostAt) {
      if (w.expect.get(key)?.kind !== 'mounted') l.violate('DISK_LEFT_BEHIND', `${w.vm.id} ${d.mountPath}`, `the host has LUN ${d.serial} attached at ${d.mountPath}, which no acknowledged create or connect put there`);
    }
    try {
      const listed = await w.agent(undefined).list();
      for (const d of listed.disks) {
        if (d.state !== 'mounted' || d.problems.length > 0) l.violate('DISK_LIST_PROBLEM', `${w.vm.id} ${d.mountPath}`, `disk list says ${d.state}${d.problems.length ? `: ${d.problems.join('; ')}` : ''}`);
      }
    } catch (err) {
      l.violate('DISK_LIST_FAILED', w.vm.id, `disk list failed once everything was quiet: ${(err as Error).message}`);
    }
  }

  // ---- every LUN the run knows: where it must be, and nothing else on the array
  for (const model of registry.all()) {
    const lun = lunBySerial.get(model.serial);
    const nodeMaps = (mapsOf.get(model.serial) ?? []).filter((m) => (NODES as readonly string[]).includes(m.igroup));
    const otherMaps = (mapsOf.get(model.serial) ?? []).filter((m) => !(NODES as readonly string[]).includes(m.igroup));
    if (lun) model.uuid = lun.uuid;
    switch (model.place.kind) {
      case 'mounted':
        if (!accounted.has(model.serial)) l.violate('LUN_PLACE', model.serial, `${model.describe()}, but no guest has it acknowledged`);
        break;
      case 'limbo':
        l.violate('UNRESOLVED', model.serial, `${model.describe()}: never settled`);
        break;
      case 'deleted':
        if (lun) l.violate('LUN_NOT_DELETED', model.serial, `LUN ${model.serial} (${lun.path}) was deleted by an acknowledged operation, but the array still has it`, 'lost');
        break;
      case 'available':
        if (!lun) l.violate('LUN_LOST', model.serial, `${model.describe()} is gone from the array`, 'lost');
        else if (!inAvailable.has(model.serial)) l.violate('AVAILABLE_LOST', model.serial, `${model.describe()}, acknowledged into Available Storage, is not there`, 'lost');
        else if (nodeMaps.length !== NODES.length) l.violate('MAP_LOST', model.serial, `${model.describe()} is mapped to ${nodeMaps.map((m) => m.igroup).join(', ') || 'no node'}, not every node`);
        break;
      case 'retained':
        if (!lun) l.violate('LUN_LOST', model.serial, `${model.describe()}: a removal without delete left it on the array, which no longer has it`, 'lost');
        else if (nodeMaps.length > 0) l.violate('ORPHAN_MAP', model.serial, `${model.describe()} is still mapped to ${nodeMaps.map((m) => m.igroup).join(', ')}`);
        if (inAvailable.has(model.serial)) l.violate('AVAILABLE_UNEXPECTED', model.serial, `${model.describe()} sits in Available Storage though nobody acknowledged adding it`);
        break;
    }
    if (otherMaps.length > 0) l.violate('ORPHAN_MAP', model.serial, `LUN ${model.serial} is mapped to igroup ${otherMaps.map((m) => m.igroup).join(', ')}`);
    if (lun && (model.place.kind === 'available' || model.place.kind === 'retained')) {
      out.lunsReadFromArray++;
      checkOnArray(model, lun, env, out);
    }
  }
  const failedOps = new Map<string, { attempt: (typeof l.attempts)[number] }>();
  for (const a of l.attempts) if (a.outcome === 'failed') for (const id of a.opIds) failedOps.set(id, { attempt: a });
  for (const lun of luns) {
    if (registry.get(lun.serial)) continue;
    if (!lun.path.startsWith(`/vol/${VOLUME}/`) && !lun.path.startsWith(`/vol/${ADMIN_VOLUME}/`)) continue;
    const opId = /_op_([0-9a-z]+)$/.exec(lun.path)?.[1];
    const culprit = opId ? failedOps.get(`op-${opId}`)?.attempt : undefined;
    if (culprit) culprit.dirty = `left LUN ${lun.path} on the array`;
    const op = opId ? opById.get(`op-${opId}`) : undefined;
    l.violate(
      'ORPHAN_LUN',
      lun.serial,
      `LUN ${lun.path} (${lun.comment}) is on the array but no acknowledged operation accounts for it${op ? ` (made by operation ${op.id}, ${OperationState[op.state]})` : ''}${culprit ? `; attempt ${culprit.id} (${culprit.actor} ${culprit.kind} ${culprit.what}) failed with ${culprit.error?.kind} and left it` : ''}`,
    );
  }
  for (const [serial, list] of mapsOf) {
    if (!registry.get(serial) && list.some((m) => m.lunPath.startsWith(`/vol/${VOLUME}/`) || m.lunPath.startsWith(`/vol/${ADMIN_VOLUME}/`))) {
      l.violate('ORPHAN_MAP', serial, `LUN ${list[0]!.lunPath} is mapped to ${list.map((m) => m.igroup).join(', ')} but no acknowledged operation accounts for it`);
    }
  }
  for (const serial of inAvailable) {
    if (registry.get(serial)?.place.kind !== 'available') l.violate('AVAILABLE_UNEXPECTED', serial, `LUN ${serial} sits in Available Storage though nobody acknowledged adding it (the run has it ${registry.get(serial)?.place.kind ?? 'nowhere'})`);
  }
  // A failed create or connect whose operation attached a disk nobody then acknowledged or removed left it behind.
  for (const a of l.attempts) {
    if (a.outcome !== 'failed' || a.dirty) continue;
    for (const id of a.opIds) {
      const op = opById.get(id);
      if (op?.state !== OperationState.OPERATION_STATE_SUCCEEDED || !op.result) continue;
      const model = registry.get(op.result.serial);
      if (!model) a.dirty = `its operation ${id} attached LUN ${op.result.serial}, which nobody acknowledged`;
    }
  }
  return out;
}

/** A mounted volume through its guest: the volume on the disk, then every acknowledged byte. */
async function checkMounted(w: Worker, key: string, model: VolumeModel, env: VerifyEnv, out: Verified): Promise<void> {
  const e = w.expect.get(key);
  if (e?.kind !== 'mounted') return;
  const l = env.ledger;
  try {
    const shown = await w.agent(undefined).show(e.path);
    if (shown.content !== 'passthru' || shown.volume?.volumeId !== model.volumeId || (model.label !== null && shown.volume?.label !== model.label)) {
      l.violate('VOLUME_WRONG', `${w.vm.id} ${e.path}`, `${model.describe()}: the disk holds ${shown.content === 'passthru' ? `volume ${shown.volume?.volumeId} "${shown.volume?.label}"` : `a ${shown.content} disk (${shown.reason})`}`, 'lost');
      return;
    }
  } catch (err) {
    l.violate('VOLUME_UNREADABLE', `${w.vm.id} ${e.path}`, `disk show failed once everything was quiet: ${(err as Error).message}`);
    return;
  }
  for (const r of model.rangesToVerify()) {
    const chunks: Buffer[] = [];
    try {
      await w.agent(undefined).read({ mount: e.path, at: r.start, length: r.end - r.start }, (c) => void chunks.push(Buffer.from(c)));
    } catch (err) {
      l.violate('DATA_UNREADABLE', `${w.vm.id} ${e.path}`, `reading ${r.start}+${r.end - r.start} back failed once everything was quiet: ${(err as Error).message}`);
      return;
    }
    const data = Buffer.concat(chunks);
    out.bytesVerified += data.length;
    l.bytes(model.checkNow(r.start, data), `${w.vm.id} ${e.path} (${model.describe()}) at the end, ${r.start}+${r.end - r.start}`);
  }
}

/** A LUN no guest has mounted, read from the array's backing file: its volume, then every acknowledged byte. */
function checkOnArray(model: VolumeModel, lun: Lun, env: VerifyEnv, out: Verified): void {
  const l = env.ledger;
  const size = Number(lun.sizeBytes);
  const parsed = parseDiskLayout((o, n) => readLunFile(env.arrayDir, lun.uuid, o, Math.max(0, Math.min(n, size - o))), size);
  if (model.volumeId !== null) {
    // An unfinished request's initialization may have landed (its volume chosen and recorded before its first write).
    // Cut between its writes, it reads as foreign (the backup header goes last): each sector old or new.
    const landed = (parsed.kind === 'passthru' && model.mayHold.has(parsed.volumeId)) || (parsed.kind === 'foreign' && model.mayHold.size > 0);
    if (!landed && (parsed.kind !== 'passthru' || parsed.volumeId !== model.volumeId)) {
      l.violate('VOLUME_WRONG', model.serial, `${model.describe()}: its backing file holds ${parsed.kind === 'passthru' ? `volume ${parsed.volumeId}` : `a ${parsed.kind} disk${parsed.kind === 'foreign' ? ` (${parsed.reason})` : ''}`}`, 'lost');
      return;
    }
  } else if (model.foreign && parsed.kind !== 'foreign' && !(parsed.kind === 'passthru' && model.mayHold.has(parsed.volumeId))) {
    // (A foreign disk an unfinished initialization reached in part still reads as foreign.)
    l.violate('VOLUME_WRONG', model.serial, `${model.describe()}: prepared with bytes at LBA 0, it reads as ${parsed.kind}`, 'lost');
  }
  if (model.dataBytes === 0) return;
  for (const r of model.rangesToVerify()) {
    const data = readLunFile(env.arrayDir, lun.uuid, model.dataOffset + r.start, r.end - r.start);
    out.bytesVerified += data.length;
    l.bytes(model.checkNow(r.start, data), `${model.describe()} on the array (its backing file), ${r.start}+${r.end - r.start}`);
  }
}
