/**
 * The steps of DESIGN.md's workflows, each one unit with `do` and `undo`, named as there.
 * A step's outbound calls (array, hypervisor) happen in `do`; the model change it returns
 * is committed together with the step's "done". Choices that must survive a crash (a LUN
 * id, a SCSI location, names) are journaled before the calls that depend on them.
 */
import { DomainError, FailedPreconditionError, ResourceExhaustedError } from '../../common/errors.js';
import { parseDrivePath, type DrivePath } from '../../common/drive-path.js';
import { reservationKey, type StorageArray } from '../array.js';
import type { Hypervisor, ScsiAddress } from '../hypervisor.js';
import type { LunIds } from '../lun-ids.js';
import type { LunRef, OperationData, OperationRecord, ResourceRecord, VmRecord } from '../model.js';
import { AVAILABLE_STORAGE, availableDiskName, diskResourceName, lunComment, lunPathFor, temporaryGroupName, unique } from '../names.js';
import type { HostState } from '../state.js';
import type { StepContext, StepDef, WorkflowDef } from './engine.js';

export interface Env {
  state: HostState;
  array: StorageArray;
  hypervisor: Hypervisor;
  lunIds: LunIds;
  cluster: { name: string; volume: string };
  /** Adds a lock key to a running operation (the LUN it just created). */
  lock(opId: string, key: string): void;
  /** Operations other than this one that have not ended. */
  openOperations(): Iterable<OperationRecord>;
}

export type Ctx = StepContext<Env>;
export type Step = StepDef<Env>;

export const mountLock = (vmId: string, mountKey: string): string => `mount:${vmId}/${mountKey}`;
export const lunLock = (serial: string): string => `lun:${serial}`;

// ---------------------------------------------------------------- helpers

function vmOf(ctx: Ctx): VmRecord {
  const vm = ctx.env.state.vms.get(ctx.op.vmId);
  if (!vm) throw new FailedPreconditionError(`VM ${ctx.op.vmId} no longer exists`, 'VM_GONE');
  return vm;
}

function mountOf(ctx: Ctx): DrivePath {
  return parseDrivePath(vmOf(ctx).guestOs, ctx.op.mountPath);
}

function lunOf(ctx: Ctx): LunRef {
  const lun = ctx.op.data.lun;
  if (!lun) throw new Error(`operation ${ctx.op.id} has no LUN at step that needs one`);
  return lun;
}

/** Replaces the operation's record with more of what its steps learned. */
function learn(ctx: Ctx, data: Partial<OperationData>, locks?: string[]): void {
  const op = ctx.env.state.operations.get(ctx.op.id)!;
  ctx.env.state.operations.put({ ...op, data: { ...op.data, ...data }, locks: locks ?? op.locks });
}

function putResource(ctx: Ctx, serial: string, patch: Partial<ResourceRecord>): ResourceRecord {
  const r = ctx.env.state.resources.get(serial);
  if (!r) throw new Error(`no disk resource for LUN ${serial}`);
  return ctx.env.state.resources.put({ ...r, ...patch });
}

/** The node whose view matters: the VM's node, or for Available Storage its owner. */
function localNode(ctx: Ctx): string {
  return ctx.op.vmId !== '' ? vmOf(ctx).node : ctx.env.state.availableStorage().owner;
}

/** Where the LUN is mapped: every node for a shared disk, the VM's node for a dedicated one. */
function nodesFor(ctx: Ctx): string[] {
  if (ctx.op.data.nodes) return ctx.op.data.nodes;
  if (ctx.op.params.sharing === 'dedicated') return [vmOf(ctx).node];
  return [...ctx.env.state.nodes.values()].map((n) => n.name).sort();
}

/** Unmaps the LUN from the nodes' igroups in one call; unmapping what is not mapped succeeds. */
function unmapFrom(ctx: Ctx, lun: LunRef, nodes: readonly string[], idSuffix = ''): Promise<void> {
  if (nodes.length === 0) return Promise.resolve();
  return ctx.env.array.unmapLun({ requestId: ctx.requestId(`unmap${idSuffix}`), lun: lun.uuid, igroups: nodes });
}

const skipUnlessCreate = (ctx: Ctx): string | undefined => (ctx.op.kind === 'create_disk' ? undefined : 'the LUN exists already');

// ---------------------------------------------------------------- shared steps

/**
 * lun.map: one LUN id free on every node it goes to, then one MapLun to every node's igroup
 * at that id (all or none).
 */
export const lunMap: Step = {
  name: 'lun.map',
  skip: (ctx) => (ctx.op.kind === 'connect_disk' ? 'Available Storage disks are mapped to every node already' : undefined),
  prepare(ctx) {
    if (ctx.op.data.lunId === undefined) learn(ctx, { lunId: ctx.env.lunIds.choose(nodesFor(ctx), ctx.op.id), nodes: nodesFor(ctx) });
  },
  async do(ctx) {
    const { array, lunIds, state } = ctx.env;
    const lun = lunOf(ctx);
    const nodes = nodesFor(ctx);
    for (let attempt = 1; ; attempt++) {
      if (ctx.op.data.lunId === undefined) {
        ctx.journal(() => learn(ctx, { lunId: lunIds.choose(nodes, ctx.op.id), nodes }));
      }
      const lunId = ctx.op.data.lunId!;
      try {
        await array.mapLun({ requestId: ctx.requestId(`map:${lunId}`), lun: lun.uuid, igroups: nodes, lunId });
      } catch (err) {
        if (!(err instanceof DomainError && err.reason === 'LUN_ID_ALREADY_EXISTS') || attempt >= 4) throw err;
        // Something passthru did not map holds that id on a node (the array mapped
        // nothing): learn where, and choose again.
        const held = await Promise.all(nodes.map(async (n) => (await array.listMaps({ igroup: n })).some((m) => m.lunId === lunId && m.lunUuid !== lun.uuid)));
        const where = nodes.filter((_n, i) => held[i]);
        for (const n of where.length > 0 ? where : nodes) lunIds.takenOnArray(n, lunId);
        ctx.journal(() => learn(ctx, { lunId: undefined }));
        ctx.note(`LUN id ${lunId} is taken on node ${(where.length > 0 ? where : nodes).join(', ')} by a map passthru did not make; choosing another`);
        continue;
      }
      const node = localNode(ctx);
      return () => {
        state.hostDisks.put({ node, serial: lun.serial, lunUuid: lun.uuid, lunId });
      };
    }
  },
  async undo(ctx) {
    const { lunIds, state } = ctx.env;
    const lun = ctx.op.data.lun;
    if (!lun) return;
    const nodes = nodesFor(ctx);
    await unmapFrom(ctx, lun, nodes);
    const node = localNode(ctx);
    return () => {
      state.hostDisks.delete(`${node}/${lun.serial}`);
      if (ctx.op.data.lunId !== undefined) lunIds.released(ctx.op.data.lunId);
    };
  },
};

/** peers.map: every other node rescans and records the LUN as a host disk. */
export const peersMap: Step = {
  name: 'peers.map',
  local: true,
  skip: (ctx) => {
    if (ctx.op.kind === 'connect_disk') return 'every node sees Available Storage disks already';
    if (ctx.op.params.sharing === 'dedicated') return 'a dedicated disk is seen by its own node only';
    return undefined;
  },
  do(ctx) {
    const lun = lunOf(ctx);
    const local = localNode(ctx);
    return () => {
      for (const node of nodesFor(ctx)) {
        if (node !== local) ctx.env.state.hostDisks.put({ node, serial: lun.serial, lunUuid: lun.uuid, lunId: ctx.op.data.lunId! });
      }
    };
  },
  undo(ctx) {
    const lun = ctx.op.data.lun;
    if (!lun) return;
    const local = localNode(ctx);
    return () => {
      for (const node of nodesFor(ctx)) if (node !== local) ctx.env.state.hostDisks.delete(`${node}/${lun.serial}`);
    };
  },
};

/** peers.unmap: every other node forgets the host disk. */
export const peersUnmap: Step = {
  name: 'peers.unmap',
  local: true,
  skip: (ctx) => (ctx.op.data.sharing === 'dedicated' ? 'a dedicated disk is seen by its own node only' : undefined),
  do(ctx) {
    const lun = lunOf(ctx);
    const local = localNode(ctx);
    return () => {
      for (const h of ctx.env.state.hostDisksOfSerial(lun.serial)) if (h.node !== local) ctx.env.state.hostDisks.delete(`${h.node}/${h.serial}`);
    };
  },
};

/** lun.unmap: unmap from every igroup this disk was mapped to; the node forgets it too. */
export const lunUnmap: Step = {
  name: 'lun.unmap',
  async do(ctx) {
    const lun = lunOf(ctx);
    const nodes = ctx.op.data.nodes ?? [];
    await unmapFrom(ctx, lun, nodes);
    return () => {
      for (const h of ctx.env.state.hostDisksOfSerial(lun.serial)) ctx.env.state.hostDisks.delete(`${h.node}/${h.serial}`);
      const r = ctx.env.state.resources.get(lun.serial);
      if (r) putResource(ctx, lun.serial, { mappedNodes: [] });
      if (ctx.op.data.lunId !== undefined) ctx.env.lunIds.released(ctx.op.data.lunId);
    };
  },
};

// ---------------------------------------------------------------- provisioning

/** validate (create): everything that can be checked before anything is done. */
export function createValidate(check: (ctx: Ctx) => Promise<void> | void): Step {
  return { name: 'validate', do: check };
}

export const lunFind: Step = {
  name: 'lun.find',
  skip: (ctx) => (ctx.op.kind === 'create_disk' ? 'a new LUN is created instead' : undefined),
  async do(ctx) {
    if (ctx.op.kind === 'add_available_disk') {
      const lun = await ctx.env.array.findLun(ctx.op.params.lun!);
      if (!lun) throw new FailedPreconditionError(`LUN ${ctx.op.params.lun} no longer exists on the array`, 'LUN_GONE');
      const ref: LunRef = { uuid: lun.uuid, serial: lun.serial, naaId: lun.naaId, path: lun.path, sizeBytes: lun.sizeBytes };
      return () => learn(ctx, { lun: ref, sharing: 'shared' });
    }
    // connect: take the LUN's disk resource from Available Storage.
    const serial = ctx.op.data.lun?.serial;
    const r = serial ? ctx.env.state.resources.get(serial) : undefined;
    if (!r) throw new FailedPreconditionError(`LUN ${ctx.op.params.lun} left Available Storage`, 'LUN_GONE');
    return () =>
      learn(ctx, {
        lun: r.lun,
        lunId: r.lunId,
        nodes: r.mappedNodes,
        sharing: 'shared',
        previousResource: ctx.op.data.previousResource ?? { name: r.name, group: r.group, state: r.state },
      });
  },
};

export const lunCreate: Step = {
  name: 'lun.create',
  skip: skipUnlessCreate,
  async do(ctx) {
    const vm = vmOf(ctx);
    const mount = mountOf(ctx);
    const { cluster, array } = ctx.env;
    const lun = await array.createLun({
      requestId: ctx.requestId('create'),
      path: lunPathFor(cluster.volume, vm.id, mount, ctx.op.id),
      sizeBytes: ctx.op.params.sizeBytes!,
      guestOs: vm.guestOs,
      comment: lunComment(cluster.name, vm.id, mount, ctx.op.id),
    });
    const ref: LunRef = { uuid: lun.uuid, serial: lun.serial, naaId: lun.naaId, path: lun.path, sizeBytes: lun.sizeBytes };
    return () => {
      learn(ctx, { lun: ref, createdLun: true, sharing: ctx.op.params.sharing }, [...ctx.op.locks, lunLock(ref.serial)]);
      ctx.env.lock(ctx.op.id, lunLock(ref.serial));
    };
  },
  async undo(ctx) {
    // The path holds the operation id: a LUN there can only have been made by this
    // operation, so it goes with any map a late call of ours may have left on it.
    const vm = vmOf(ctx);
    const path = lunPathFor(ctx.env.cluster.volume, vm.id, mountOf(ctx), ctx.op.id);
    await ctx.env.array.deleteLun({ requestId: ctx.requestId('delete'), lun: path, force: true });
    return () => learn(ctx, { createdLun: false });
  },
};

export const resourceCreate: Step = {
  name: 'resource.create',
  local: true,
  do(ctx) {
    const { state } = ctx.env;
    const lun = lunOf(ctx);
    if (ctx.op.kind === 'add_available_disk') {
      return () => {
        const name = ctx.op.data.resource ?? availableDiskName((n) => state.resourceByName(n) !== undefined);
        state.resources.put({
          name,
          group: AVAILABLE_STORAGE,
          state: 'offline',
          lun,
          lunId: ctx.op.data.lunId!,
          sharing: 'shared',
          mappedNodes: nodesFor(ctx),
        });
        learn(ctx, { resource: name });
      };
    }
    const vm = vmOf(ctx);
    const mount = mountOf(ctx);
    return () => {
      const tempGroup = ctx.op.data.tempGroup ?? unique(temporaryGroupName(vm.id, mount), (n) => state.groups.has(n));
      const name = ctx.op.data.resource ?? unique(diskResourceName(vm.id, mount), (n) => state.resourceByName(n) !== undefined);
      state.groups.put({ name: tempGroup, kind: 'temporary', owner: vm.node, vmId: vm.id, opId: ctx.op.id });
      const placed = { name, group: tempGroup, vmId: vm.id, mountPath: mount.path, mountKey: mount.key };
      if (ctx.op.kind === 'connect_disk') {
        // The Available Storage resource moves in, renamed: never two resources for one LUN.
        putResource(ctx, lun.serial, { ...placed, state: 'offline' });
      } else {
        state.resources.put({
          ...placed,
          state: 'offline',
          lun,
          lunId: ctx.op.data.lunId!,
          sharing: ctx.op.params.sharing!,
          mappedNodes: nodesFor(ctx),
        });
      }
      learn(ctx, { tempGroup, resource: name });
    };
  },
  undo(ctx) {
    const { state } = ctx.env;
    return () => {
      const serial = ctx.op.data.lun?.serial;
      const r = serial ? state.resources.get(serial) : undefined;
      if (ctx.op.kind === 'add_available_disk') {
        if (r && r.group === AVAILABLE_STORAGE) state.resources.delete(serial!);
        return;
      }
      const prev = ctx.op.data.previousResource;
      if (r && r.group === ctx.op.data.tempGroup) {
        if (ctx.op.kind === 'connect_disk' && prev) {
          state.resources.put({ ...r, name: prev.name, group: prev.group, state: prev.state, vmId: undefined, mountPath: undefined, mountKey: undefined, mounted: undefined });
        } else {
          state.resources.delete(serial!);
        }
      }
      if (ctx.op.data.tempGroup) state.groups.delete(ctx.op.data.tempGroup);
    };
  },
};

function chooseAddress(ctx: Ctx, vm: VmRecord): ScsiAddress {
  const taken = new Set(ctx.env.state.attachmentsOf(vm.id).map((a) => `${a.controller}/${a.location}`));
  for (const op of ctx.env.openOperations()) {
    if (op.id !== ctx.op.id && op.vmId === vm.id && op.data.address) taken.add(`${op.data.address.controller}/${op.data.address.location}`);
  }
  for (let c = 0; c < vm.controllers; c++) {
    for (let l = 0; l < vm.locationsPerController; l++) if (!taken.has(`${c}/${l}`)) return { controller: c, location: l };
  }
  throw new ResourceExhaustedError(
    `VM ${vm.id} has no free SCSI location: all ${vm.controllers * vm.locationsPerController} (${vm.controllers} controllers x ${vm.locationsPerController}) are in use; remove a disk first`,
    'NO_FREE_SCSI_LOCATION',
  );
}

export const scsiAttach: Step = {
  name: 'scsi.attach',
  prepare(ctx) {
    if (!ctx.op.data.address) learn(ctx, { address: chooseAddress(ctx, vmOf(ctx)) });
  },
  async do(ctx) {
    const { state, hypervisor } = ctx.env;
    const vm = vmOf(ctx);
    const lun = lunOf(ctx);
    const address = ctx.op.data.address!;
    const disk = state.hostDisks.get(`${vm.node}/${lun.serial}`);
    if (!disk) throw new FailedPreconditionError(`node ${vm.node} does not see LUN ${lun.serial}`, 'HOST_DISK_MISSING');
    await hypervisor.hotAdd(vm, address, disk);
    return () => {
      state.attachments.put({ vmId: vm.id, controller: address.controller, location: address.location, serial: lun.serial });
    };
  },
  async undo(ctx) {
    const { state, hypervisor } = ctx.env;
    const address = ctx.op.data.address;
    const serial = ctx.op.data.lun?.serial;
    if (!address || !serial) return;
    const key = `${ctx.op.vmId}/${address.controller}/${address.location}`;
    const a = state.attachments.get(key);
    const vm = state.vms.get(ctx.op.vmId);
    if (vm && a?.serial === serial) await hypervisor.hotRemove(vm, address);
    return () => {
      if (a && a.serial === serial) state.attachments.delete(key);
    };
  },
};

function setConfigured(ctx: Ctx, serial: string, on: boolean): void {
  const vm = vmOf(ctx);
  const has = vm.configuredDisks.includes(serial);
  if (on === has) return;
  ctx.env.state.vms.put({ ...vm, configuredDisks: on ? [...vm.configuredDisks, serial] : vm.configuredDisks.filter((s) => s !== serial) });
}

/**
 * resource.offline: the disk resource goes offline and the cluster manager records the VM's
 * new configuration, with the disk (attach) or without it (detach).
 */
function resourceOffline(configured: boolean): Step {
  return {
    name: 'resource.offline',
    local: true,
    do(ctx) {
      const serial = lunOf(ctx).serial;
      return () => {
        putResource(ctx, serial, { state: 'offline' });
        setConfigured(ctx, serial, configured);
      };
    },
    undo(ctx) {
      const serial = ctx.op.data.lun?.serial;
      return () => {
        if (!serial) return;
        // Before an attach it was offline already; before a detach it was online in the VM's group.
        if (!configured && ctx.env.state.resources.has(serial)) putResource(ctx, serial, { state: 'online' });
        setConfigured(ctx, serial, !configured);
      };
    },
  };
}

export const resourceOfflineForAttach = resourceOffline(true);
export const resourceOfflineForDetach = resourceOffline(false);

/** resource.online (commit point): the owner node takes the reservation; the resource joins the VM's group. */
export const resourceOnlineForAttach: Step = {
  name: 'resource.online',
  commits: true,
  prepare(ctx) {
    putResource(ctx, lunOf(ctx).serial, { state: 'online_pending' });
  },
  async do(ctx) {
    const vm = vmOf(ctx);
    const lun = lunOf(ctx);
    const node = ctx.env.state.nodes.get(vm.node)!;
    await ctx.env.array.reserve({ requestId: ctx.requestId('reserve'), lun: lun.uuid, initiator: node.initiator, key: reservationKey(node.name) });
    return () => {
      putResource(ctx, lun.serial, { state: 'online', group: vm.group, reservedBy: node.name, attachedBy: ctx.op.id });
    };
  },
  async undo(ctx) {
    const vm = vmOf(ctx);
    const lun = ctx.op.data.lun;
    if (!lun) return;
    const node = ctx.env.state.nodes.get(vm.node)!;
    await ctx.env.array.release({ requestId: ctx.requestId('release'), lun: lun.uuid, initiator: node.initiator, key: reservationKey(node.name) });
    return () => {
      const r = ctx.env.state.resources.get(lun.serial);
      if (r) putResource(ctx, lun.serial, { state: 'offline', group: ctx.op.data.tempGroup!, reservedBy: undefined, attachedBy: undefined });
    };
  },
};

export const groupDeleteAfterAttach: Step = {
  name: 'group.delete',
  local: true,
  do(ctx) {
    return () => {
      if (ctx.op.data.tempGroup) ctx.env.state.groups.delete(ctx.op.data.tempGroup);
    };
  },
};

export function provisionWorkflow(validate: Step): WorkflowDef<Env> {
  return {
    steps: [validate, lunFind, lunCreate, lunMap, peersMap, resourceCreate, scsiAttach, resourceOfflineForAttach, resourceOnlineForAttach, groupDeleteAfterAttach],
  };
}

// ---------------------------------------------------------------- removal

export const groupCreateForDetach: Step = {
  name: 'group.create',
  local: true,
  do(ctx) {
    const vm = vmOf(ctx);
    const mount = mountOf(ctx);
    const serial = lunOf(ctx).serial;
    return () => {
      const { state } = ctx.env;
      const tempGroup = ctx.op.data.tempGroup ?? unique(temporaryGroupName(vm.id, mount), (n) => state.groups.has(n));
      state.groups.put({ name: tempGroup, kind: 'temporary', owner: vm.node, vmId: vm.id, opId: ctx.op.id });
      putResource(ctx, serial, { group: tempGroup });
      learn(ctx, { tempGroup });
    };
  },
  undo(ctx) {
    return () => {
      const serial = ctx.op.data.lun?.serial;
      const r = serial ? ctx.env.state.resources.get(serial) : undefined;
      if (r && r.group === ctx.op.data.tempGroup) putResource(ctx, serial!, { group: ctx.op.data.vmGroup! });
      if (ctx.op.data.tempGroup) ctx.env.state.groups.delete(ctx.op.data.tempGroup);
    };
  },
};

/**
 * scsi.detach (commit point): hot-remove from its SCSI location. Its undo runs only when a
 * crash came between the hot-remove and its journal entry: the disk goes back where it was.
 */
export const scsiDetach: Step = {
  name: 'scsi.detach',
  commits: true,
  async undo(ctx) {
    const vm = vmOf(ctx);
    const address = ctx.op.data.address!;
    const lun = lunOf(ctx);
    const disk = ctx.env.state.hostDisks.get(`${vm.node}/${lun.serial}`);
    if (disk && vm.running) await ctx.env.hypervisor.hotAdd(vm, address, disk);
    return () => {
      ctx.env.state.attachments.put({ vmId: vm.id, controller: address.controller, location: address.location, serial: lun.serial });
    };
  },
  async do(ctx) {
    const vm = vmOf(ctx);
    const address = ctx.op.data.address!;
    await ctx.env.hypervisor.hotRemove(vm, address);
    return () => {
      const key = `${vm.id}/${address.controller}/${address.location}`;
      if (ctx.env.state.attachments.get(key)?.serial === lunOf(ctx).serial) ctx.env.state.attachments.delete(key);
    };
  },
};

/** resource.online (removal): online again in the temporary group, the reservation released. */
export const resourceOnlineForDetach: Step = {
  name: 'resource.online',
  prepare(ctx) {
    putResource(ctx, lunOf(ctx).serial, { state: 'online_pending' });
  },
  async do(ctx) {
    const lun = lunOf(ctx);
    const r = ctx.env.state.resources.get(lun.serial);
    const holder = r?.reservedBy ? ctx.env.state.nodes.get(r.reservedBy) : undefined;
    if (holder) {
      await ctx.env.array.release({ requestId: ctx.requestId('release'), lun: lun.uuid, initiator: holder.initiator, key: reservationKey(holder.name) });
    }
    return () => {
      if (r) putResource(ctx, lun.serial, { state: 'online', reservedBy: undefined, mounted: undefined });
    };
  },
};

export const lunDelete: Step = {
  name: 'lun.delete',
  skip: (ctx) => (ctx.op.params.deleteLun ? undefined : 'not asked: the LUN stays on the array, where an admin may add it to Available Storage again'),
  async do(ctx) {
    await ctx.env.array.deleteLun({ requestId: ctx.requestId('delete'), lun: lunOf(ctx).uuid });
  },
};

export const groupDeleteAfterDetach: Step = {
  name: 'group.delete',
  local: true,
  do(ctx) {
    return () => {
      const serial = lunOf(ctx).serial;
      if (ctx.env.state.resources.get(serial)?.group === ctx.op.data.tempGroup) ctx.env.state.resources.delete(serial);
      if (ctx.op.data.tempGroup) ctx.env.state.groups.delete(ctx.op.data.tempGroup);
    };
  },
};

export function removalWorkflow(validate: Step): WorkflowDef<Env> {
  return {
    steps: [validate, groupCreateForDetach, resourceOfflineForDetach, scsiDetach, resourceOnlineForDetach, peersUnmap, lunUnmap, lunDelete, groupDeleteAfterDetach],
  };
}

// ---------------------------------------------------------------- Available Storage

/** An existing LUN into Available Storage: mapped to every node, one disk resource (commit point). */
export function addAvailableWorkflow(validate: Step): WorkflowDef<Env> {
  return { steps: [validate, lunFind, lunMap, peersMap, { ...resourceCreate, commits: true }] };
}

/** resource.delete (commit point): the disk resource leaves Available Storage. */
export const resourceDelete: Step = {
  name: 'resource.delete',
  local: true,
  commits: true,
  do(ctx) {
    const serial = lunOf(ctx).serial;
    return () => {
      if (ctx.env.state.resources.get(serial)?.group === AVAILABLE_STORAGE) ctx.env.state.resources.delete(serial);
    };
  },
};

export function removeAvailableWorkflow(validate: Step): WorkflowDef<Env> {
  return { steps: [validate, resourceDelete, peersUnmap, lunUnmap] };
}

