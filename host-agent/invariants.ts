/**
 * Every cross-check between the hypervisor model, the cluster model and the array. Each
 * broken promise comes back as a violation; a healthy, quiet cluster has none. What a
 * running operation holds is skipped: it is in the middle of changing it.
 */
import type { StorageArray } from './array.js';
import type { OperationRecord } from './model.js';
import { AVAILABLE_STORAGE, CLUSTER_GROUP } from './names.js';
import type { HostState } from './state.js';

export interface Violation {
  kind: string;
  subject: string;
  description: string;
}

async function pool<T, R>(items: T[], width: number, fn: (t: T) => Promise<R>): Promise<R[]> {
  const out: R[] = new Array(items.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) {
        const i = next++;
        out[i] = await fn(items[i]!);
      }
    }),
  );
  return out;
}

export async function checkInvariants(
  state: HostState,
  array: StorageArray,
  volume: string,
  open: OperationRecord[],
): Promise<Violation[]> {
  const v: Violation[] = [];
  const add = (kind: string, subject: string, description: string): void => {
    v.push({ kind, subject, description });
  };
  const busySerials = new Set<string>();
  const busyGroups = new Set<string>();
  const busyVms = new Set<string>();
  const busyPaths = new Set<string>();
  // A group on its way to another node is in the middle of changing too.
  for (const g of state.groups.values()) {
    if (!g.movingTo) continue;
    busyGroups.add(g.name);
    for (const r of state.resourcesIn(g.name)) busySerials.add(r.lun.serial);
    if (g.vmId) busyVms.add(g.vmId);
  }
  for (const op of open) {
    if (op.data.lun) busySerials.add(op.data.lun.serial);
    if (op.data.tempGroup) busyGroups.add(op.data.tempGroup);
    if (op.vmId) busyVms.add(op.vmId);
    if (op.kind === 'create_disk') busyPaths.add(op.id.replace(/-/g, '_'));
  }

  // ---- groups
  const nodes = new Set([...state.nodes.values()].map((n) => n.name));
  if (!state.groups.has(CLUSTER_GROUP)) add('GROUP_MISSING', CLUSTER_GROUP, 'the cluster has no Cluster Group');
  if (!state.groups.has(AVAILABLE_STORAGE)) add('GROUP_MISSING', AVAILABLE_STORAGE, 'the cluster has no Available Storage group');
  for (const g of state.groups.values()) {
    if (!nodes.has(g.owner)) add('GROUP_OWNER_UNKNOWN', g.name, `group ${g.name} is owned by unknown node ${g.owner}`);
    const stayer = g.kind === 'vm' && state.vms.get(g.vmId ?? '')?.ha === false;
    if (state.nodes.get(g.owner)?.up === false && !stayer && !busyGroups.has(g.name) && g.kind !== 'temporary') {
      add('GROUP_ON_DOWN_NODE', g.name, `group ${g.name} is still owned by node ${g.owner}, which is down: it should have moved to a surviving node`);
    }
    if (g.kind === 'temporary' && !busyGroups.has(g.name)) {
      add('TEMPORARY_GROUP_LEFT', g.name, `temporary group ${g.name} outlived its operation ${g.opId ?? '?'}`);
    }
    if (g.kind === 'vm') {
      const vm = g.vmId ? state.vms.get(g.vmId) : undefined;
      if (!vm || vm.group !== g.name) add('VM_GROUP_ORPHAN', g.name, `group ${g.name} belongs to no VM`);
      else if (g.owner !== vm.node) add('VM_GROUP_OWNER', g.name, `group ${g.name} is owned by ${g.owner} but VM ${vm.id} runs on ${vm.node}`);
    }
  }
  for (const vm of state.vms.values()) {
    if (!state.groups.has(vm.group)) add('VM_GROUP_MISSING', vm.id, `VM ${vm.id} has no resource group ${vm.group}`);
    if (!nodes.has(vm.node)) add('VM_NODE_UNKNOWN', vm.id, `VM ${vm.id} runs on unknown node ${vm.node}`);
  }

  // ---- resources, attachments, host disks
  const names = new Map<string, string>();
  for (const r of state.resources.values()) {
    const serial = r.lun.serial;
    const other = names.get(r.name);
    if (other) add('RESOURCE_NAME_DUPLICATE', r.name, `resources for LUNs ${other} and ${serial} share the name ${r.name}`);
    names.set(r.name, serial);
    if (busySerials.has(serial)) continue;
    const g = state.groups.get(r.group);
    if (!g) {
      add('RESOURCE_GROUP_MISSING', r.name, `resource ${r.name} sits in group ${r.group}, which does not exist`);
      continue;
    }
    const att = state.attachmentOfSerial(serial);
    if (g.kind === 'vm') {
      const vm = state.vms.get(g.vmId ?? '');
      if (!att || att.vmId !== g.vmId) add('RESOURCE_WITHOUT_SLOT', r.name, `resource ${r.name} is in ${g.name} but LUN ${serial} is not attached to VM ${g.vmId}`);
      if (r.vmId !== g.vmId) add('RESOURCE_VM_MISMATCH', r.name, `resource ${r.name} names VM ${r.vmId} but sits in ${g.name}`);
      const downWithNode = vm?.downWithNode !== undefined || state.nodes.get(g.owner)?.up === false;
      if (r.state !== 'online' && !(downWithNode && r.state === 'offline')) add('RESOURCE_NOT_ONLINE', r.name, `resource ${r.name} of VM ${g.vmId} is ${r.state}`);
      if (r.reservedBy !== g.owner) add('RESERVATION_HOLDER', r.name, `LUN ${serial} should be reserved by ${g.owner}, the group's owner, passthru recorded ${r.reservedBy ?? 'nobody'}`);
      if (vm && !vm.configuredDisks.includes(serial)) add('VM_CONFIG_MISSING_DISK', r.name, `VM ${vm.id}'s configuration lacks LUN ${serial}`);
    } else if (g.kind === 'available') {
      if (att) add('AVAILABLE_DISK_ATTACHED', r.name, `resource ${r.name} is in Available Storage but attached to VM ${att.vmId}`);
      if (r.vmId !== undefined) add('AVAILABLE_DISK_CLAIMED', r.name, `resource ${r.name} is in Available Storage but names VM ${r.vmId}`);
    } else {
      add('RESOURCE_MISPLACED', r.name, `resource ${r.name} sits in ${g.kind} group ${g.name} with no operation running`);
    }
    const expected = new Set(r.mappedNodes);
    for (const n of r.mappedNodes) {
      if (!state.hostDisks.has(`${n}/${serial}`)) add('HOST_DISK_MISSING', `${n}/${serial}`, `node ${n} should see LUN ${serial} (${r.name})`);
    }
    for (const h of state.hostDisksOfSerial(serial)) {
      if (!expected.has(h.node)) add('HOST_DISK_UNEXPECTED', `${h.node}/${serial}`, `node ${h.node} sees LUN ${serial} but it is not mapped there`);
      if (h.lunId !== r.lunId) add('HOST_DISK_LUN_ID', `${h.node}/${serial}`, `node ${h.node} sees LUN ${serial} at id ${h.lunId}, not ${r.lunId}`);
    }
    if (r.sharing === 'shared' && r.mappedNodes.length !== nodes.size) {
      add('SHARED_DISK_NOT_ON_EVERY_NODE', r.name, `shared LUN ${serial} is mapped to ${r.mappedNodes.join(', ')}, not every node`);
    }
  }
  for (const a of state.attachments.values()) {
    if (busySerials.has(a.serial) || busyVms.has(a.vmId)) continue;
    const subject = `${a.vmId} ${a.controller}:${a.location}`;
    const vm = state.vms.get(a.vmId);
    const r = state.resources.get(a.serial);
    if (!vm) add('SLOT_WITHOUT_VM', subject, `LUN ${a.serial} is attached to unknown VM ${a.vmId}`);
    if (!r) add('SLOT_WITHOUT_RESOURCE', subject, `the SCSI location holds LUN ${a.serial}, which has no disk resource`);
    else if (state.groups.get(r.group)?.kind !== 'vm' || state.groups.get(r.group)?.vmId !== a.vmId) {
      add('SLOT_RESOURCE_ELSEWHERE', subject, `LUN ${a.serial} is attached but its resource sits in ${r.group}`);
    }
    if (vm && (a.controller >= vm.controllers || a.location >= vm.locationsPerController)) add('SLOT_OUT_OF_RANGE', subject, 'the VM has no such SCSI location');
    if (vm && !state.hostDisks.has(`${vm.node}/${a.serial}`)) add('SLOT_HOST_DISK_MISSING', subject, `node ${vm.node} does not see LUN ${a.serial}`);
  }
  for (const h of state.hostDisks.values()) {
    if (busySerials.has(h.serial)) continue;
    if (!state.resources.has(h.serial)) add('ORPHAN_HOST_DISK', `${h.node}/${h.serial}`, `node ${h.node} sees LUN ${h.serial}, which no resource owns`);
  }

  // ---- the array
  // A removal without delete leaves its LUN on the array on purpose.
  const retained = new Set<string>();
  for (const op of state.operations.values()) {
    if (op.state === 'succeeded' && op.data.lun && ((op.kind === 'remove_disk' && !op.params.deleteLun) || op.kind === 'remove_available_disk')) {
      retained.add(op.data.lun.serial);
    }
  }
  const luns = await array.listLuns(`/vol/${volume}/`);
  const lunBySerial = new Map(luns.map((l) => [l.serial, l]));
  for (const l of luns) {
    if (busySerials.has(l.serial) || [...busyPaths].some((p) => l.path.endsWith(p))) continue;
    if (!state.resources.has(l.serial) && !retained.has(l.serial)) add('ORPHAN_LUN', l.serial, `LUN ${l.path} (${l.comment}) is on the array but no disk resource owns it`);
  }
  const nodeMaps = (await Promise.all([...nodes].map((n) => array.listMaps({ igroup: n })))).flat();
  const mapKey = new Set(nodeMaps.map((m) => `${m.igroup}/${m.serial}`));
  for (const m of nodeMaps) {
    if (busySerials.has(m.serial)) continue;
    const r = state.resources.get(m.serial);
    if (!r) add('ORPHAN_MAP', `${m.igroup}/${m.serial}`, `LUN ${m.lunPath} is mapped to node ${m.igroup} at id ${m.lunId} but no disk resource owns it`);
    else if (!r.mappedNodes.includes(m.igroup)) add('MAP_UNEXPECTED', `${m.igroup}/${m.serial}`, `LUN ${m.lunPath} is mapped to node ${m.igroup} but ${r.name} does not need it there`);
    else if (m.lunId !== r.lunId) add('MAP_LUN_ID', `${m.igroup}/${m.serial}`, `LUN ${m.lunPath} is at id ${m.lunId} on ${m.igroup}, passthru recorded ${r.lunId}`);
  }
  const reserved: { serial: string; owner: string; uuid: string }[] = [];
  for (const r of state.resources.values()) {
    if (busySerials.has(r.lun.serial)) continue;
    if (!lunBySerial.has(r.lun.serial) && !(await array.findLun(r.lun.uuid))) {
      add('LUN_MISSING', r.lun.serial, `resource ${r.name} stands for LUN ${r.lun.path}, which the array no longer has`);
      continue;
    }
    for (const n of r.mappedNodes) {
      if (!mapKey.has(`${n}/${r.lun.serial}`)) add('MAP_MISSING', `${n}/${r.lun.serial}`, `LUN ${r.lun.path} of ${r.name} is not mapped to node ${n}`);
    }
    const g = state.groups.get(r.group);
    if (g?.kind === 'vm') reserved.push({ serial: r.lun.serial, owner: g.owner, uuid: r.lun.uuid });
    else if (r.reservedBy) add('RESERVATION_LEFT', r.name, `${r.name} is not a VM's disk but passthru recorded a reservation by ${r.reservedBy}`);
  }
  const holders = await pool(reserved, 16, (x) => array.readReservation(x.uuid));
  reserved.forEach((x, i) => {
    const owner = state.nodes.get(x.owner);
    const holder = holders[i]!.holderInitiator;
    if (owner && holder?.toLowerCase() !== owner.initiator.toLowerCase()) {
      add('RESERVATION_HOLDER', x.serial, `LUN ${x.serial} is reserved by ${holder ?? 'nobody'} on the array, not by ${owner.name} (${owner.initiator}), its group's owner`);
    }
  });
  return v;
}
