/**
 * The cluster file: what the embedded default's cluster looks like at first start (nodes,
 * the owner of Available Storage, VMs). After the first start the host agent's own store
 * is the truth; later starts add nodes and VMs the file names and the store lacks, and
 * change nothing else.
 */
import { readFileSync } from 'node:fs';
import { InvalidArgumentError } from '../common/errors.js';
import { parseSize } from '../common/size.js';
import type { GuestOsName } from './model.js';

export interface ClusterFileNode {
  name: string;
  initiator: string;
  hypervisorEnabled: boolean;
  hotAddSupported: boolean;
}

export interface ClusterFileVm {
  id: string;
  name: string;
  guestOs: GuestOsName;
  ha: boolean;
  node: string;
  running: boolean;
  scsiControllers: number;
  locationsPerController: number;
  /** Its own quota, where the host's defaults do not fit it. */
  maxDisks?: number;
  maxBytes?: number;
}

export interface ClusterFile {
  name: string;
  /** The array volume passthru creates its LUNs in. */
  volume: string;
  availableStorageOwner: string;
  nodes: ClusterFileNode[];
  vms: ClusterFileVm[];
}

export const NODE_NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;
export const VM_ID_RE = /^[a-z0-9][a-z0-9-]{0,31}$/;
const IQN_RE = /^iqn\.\d{4}-\d{2}\.[a-z0-9][a-z0-9.-]*(:[\x21-\x7e]+)?$/i;
const VOLUME_RE = /^[A-Za-z_][A-Za-z0-9_]{0,202}$/;
export const DEFAULT_CONTROLLERS = 4;
export const DEFAULT_LOCATIONS = 64;
/** Hyper-V's limits: 4 SCSI controllers of 64 locations. */
export const MAX_CONTROLLERS = 4;
export const MAX_LOCATIONS = 64;

export function checkVmName(field: string, v: unknown): string {
  if (typeof v !== 'string' || v.length < 1 || v.length > 100 || /[\x00-\x1f\x7f]/.test(v) || v.trim() !== v) {
    throw new InvalidArgumentError(field, `${field} must be 1-100 printable characters without leading or trailing spaces`);
  }
  return v;
}

export function checkVmId(field: string, v: unknown): string {
  if (typeof v !== 'string' || !VM_ID_RE.test(v)) {
    throw new InvalidArgumentError(field, `${field} ${JSON.stringify(v)} is invalid: 1-32 characters, lower-case letters, digits and hyphens, starting with a letter or digit`);
  }
  return v;
}

export function checkScsiShape(fields: { controllers: string; locations: string }, controllers: number, locations: number): void {
  if (!Number.isInteger(controllers) || controllers < 1 || controllers > MAX_CONTROLLERS) {
    throw new InvalidArgumentError(fields.controllers, `${fields.controllers} must be 1-${MAX_CONTROLLERS} SCSI controllers (or left out for ${DEFAULT_CONTROLLERS})`);
  }
  if (!Number.isInteger(locations) || locations < 1 || locations > MAX_LOCATIONS) {
    throw new InvalidArgumentError(fields.locations, `${fields.locations} must be 1-${MAX_LOCATIONS} locations per controller (or left out for ${DEFAULT_LOCATIONS})`);
  }
}

function obj(field: string, v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidArgumentError(field, `${field} must be an object`);
  return v as Record<string, unknown>;
}

function bool(field: string, v: unknown, dflt: boolean): boolean {
  if (v === undefined) return dflt;
  if (typeof v !== 'boolean') throw new InvalidArgumentError(field, `${field} must be true or false`);
  return v;
}

function int(field: string, v: unknown, dflt: number): number {
  if (v === undefined) return dflt;
  if (typeof v !== 'number' || !Number.isInteger(v)) throw new InvalidArgumentError(field, `${field} must be a whole number`);
  return v;
}

export function parseClusterFile(text: string, source = 'cluster file'): ClusterFile {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw new InvalidArgumentError('cluster', `${source} is not valid JSON: ${(err as Error).message}`);
  }
  const top = obj(source, raw);
  const known = new Set(['name', 'volume', 'availableStorageOwner', 'nodes', 'vms']);
  for (const k of Object.keys(top)) if (!known.has(k)) throw new InvalidArgumentError(k, `${source}: unknown field ${JSON.stringify(k)} (known: ${[...known].join(', ')})`);
  const name = top.name === undefined ? 'passthru' : top.name;
  if (typeof name !== 'string' || !NODE_NAME_RE.test(name)) throw new InvalidArgumentError('name', `${source}: name must be 1-63 lower-case letters, digits and hyphens`);
  const volume = top.volume === undefined ? 'passthru' : top.volume;
  if (typeof volume !== 'string' || !VOLUME_RE.test(volume)) {
    throw new InvalidArgumentError('volume', `${source}: volume must be an array volume name: letters, digits and underscores, starting with a letter or underscore`);
  }
  if (!Array.isArray(top.nodes) || top.nodes.length === 0) throw new InvalidArgumentError('nodes', `${source}: nodes must list at least one node`);
  const nodes: ClusterFileNode[] = top.nodes.map((n, i) => {
    const f = `nodes[${i}]`;
    const o = obj(f, n);
    if (typeof o.name !== 'string' || !NODE_NAME_RE.test(o.name)) {
      throw new InvalidArgumentError(`${f}.name`, `${source}: ${f}.name must be 1-63 lower-case letters, digits and hyphens (it names the node's igroup)`);
    }
    if (typeof o.initiator !== 'string' || !IQN_RE.test(o.initiator) || o.initiator.length > 223) {
      throw new InvalidArgumentError(`${f}.initiator`, `${source}: ${f}.initiator must be an iSCSI qualified name such as iqn.2026-11.dev.passthru:${o.name}`);
    }
    return {
      name: o.name,
      initiator: o.initiator,
      hypervisorEnabled: bool(`${f}.hypervisorEnabled`, o.hypervisorEnabled, true),
      hotAddSupported: bool(`${f}.hotAddSupported`, o.hotAddSupported, true),
    };
  });
  const nodeNames = new Set<string>();
  const initiators = new Set<string>();
  for (const n of nodes) {
    if (nodeNames.has(n.name)) throw new InvalidArgumentError('nodes', `${source}: node ${n.name} is listed twice`);
    if (initiators.has(n.initiator.toLowerCase())) throw new InvalidArgumentError('nodes', `${source}: initiator ${n.initiator} is given to two nodes`);
    nodeNames.add(n.name);
    initiators.add(n.initiator.toLowerCase());
  }
  const owner = top.availableStorageOwner ?? nodes[0]!.name;
  if (typeof owner !== 'string' || !nodeNames.has(owner)) {
    throw new InvalidArgumentError('availableStorageOwner', `${source}: availableStorageOwner must name one of the nodes (${[...nodeNames].join(', ')})`);
  }
  const vmsRaw = top.vms ?? [];
  if (!Array.isArray(vmsRaw)) throw new InvalidArgumentError('vms', `${source}: vms must be a list`);
  const ids = new Set<string>();
  const vms: ClusterFileVm[] = vmsRaw.map((v, i) => {
    const f = `vms[${i}]`;
    const o = obj(f, v);
    const id = checkVmId(`${f}.id`, o.id);
    if (ids.has(id)) throw new InvalidArgumentError(`${f}.id`, `${source}: VM ${id} is listed twice`);
    ids.add(id);
    if (o.guestOs !== 'windows' && o.guestOs !== 'linux') throw new InvalidArgumentError(`${f}.guestOs`, `${source}: ${f}.guestOs must be "windows" or "linux"`);
    if (typeof o.node !== 'string' || !nodeNames.has(o.node)) throw new InvalidArgumentError(`${f}.node`, `${source}: ${f}.node must name one of the nodes`);
    const state = o.state ?? 'running';
    if (state !== 'running' && state !== 'off') throw new InvalidArgumentError(`${f}.state`, `${source}: ${f}.state must be "running" or "off"`);
    const vm: ClusterFileVm = {
      id,
      name: o.name === undefined ? id : checkVmName(`${f}.name`, o.name),
      guestOs: o.guestOs,
      ha: bool(`${f}.ha`, o.ha, false),
      node: o.node,
      running: state === 'running',
      scsiControllers: int(`${f}.scsiControllers`, o.scsiControllers, DEFAULT_CONTROLLERS),
      locationsPerController: int(`${f}.locationsPerController`, o.locationsPerController, DEFAULT_LOCATIONS),
    };
    checkScsiShape({ controllers: `${f}.scsiControllers`, locations: `${f}.locationsPerController` }, vm.scsiControllers, vm.locationsPerController);
    if (o.maxDisks !== undefined) {
      vm.maxDisks = int(`${f}.maxDisks`, o.maxDisks, 0);
      if (vm.maxDisks < 0) throw new InvalidArgumentError(`${f}.maxDisks`, `${source}: ${f}.maxDisks must be 0 or more`);
    }
    if (o.maxBytes !== undefined) vm.maxBytes = sizeOf(`${f}.maxBytes`, o.maxBytes);
    return vm;
  });
  return { name, volume, availableStorageOwner: owner, nodes, vms };
}

/** A size in bytes: a whole number, or text such as "100GiB". */
function sizeOf(field: string, v: unknown): number {
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return v;
  if (typeof v === 'string') return parseSize(v, field);
  throw new InvalidArgumentError(field, `${field} must be a size: a whole number of bytes or text such as "100GiB"`);
}

export function readClusterFile(path: string): ClusterFile {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new InvalidArgumentError('cluster', `cannot read cluster file ${path}: ${(err as Error).message}`);
  }
  return parseClusterFile(text, path);
}
