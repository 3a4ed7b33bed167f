/**
 * The host agent's records: the hypervisor's view (nodes, VMs, SCSI attachments, host
 * disks) and the failover cluster's (groups, disk resources), plus the operations journal.
 * Plain data, JSON-safe, so the store can keep them as they are.
 */
import type { GuestOsName } from '../common/drive-path.js';

export type { GuestOsName };
export type ResourceStateName = 'online' | 'offline' | 'online_pending' | 'offline_pending' | 'failed';
export type GroupKindName = 'cluster' | 'available' | 'vm' | 'temporary';
export type Sharing = 'shared' | 'dedicated';

/** A host of the cluster, with what the patent asks its OS: hypervisor on, hot add/remove. */
export interface NodeRecord {
  name: string;
  /** The node's iSCSI initiator; its igroup on the array carries the node's name. */
  initiator: string;
  up: boolean;
  hypervisorEnabled: boolean;
  hotAddSupported: boolean;
}

export interface VmRecord {
  id: string;
  name: string;
  guestOs: GuestOsName;
  running: boolean;
  ha: boolean;
  /** The node it runs on (or last ran on). */
  node: string;
  controllers: number;
  locationsPerController: number;
  /** Its resource group's name. */
  group: string;
  /** The disk resources (LUN serials) the cluster manager records in the VM's configuration. */
  configuredDisks: string[];
  /** A non-HA VM whose node failed: its disks come back with the node, and it runs again if it ran before. */
  downWithNode?: { wasRunning: boolean };
  /** Its own quota of disks and bytes, where the host's defaults do not fit it. */
  quota?: { disks?: number; bytes?: number };
}

export interface GroupRecord {
  name: string;
  kind: GroupKindName;
  owner: string;
  /** The VM of a VM group or of a temporary group. */
  vmId?: string;
  /** The operation a temporary group belongs to. */
  opId?: string;
  /** Set while the group moves (failover or by hand): where to. A restart finishes the move. */
  movingTo?: string;
}

/** The LUN behind a disk, as the array named it. */
export interface LunRef {
  uuid: string;
  serial: string;
  naaId: string;
  path: string;
  sizeBytes: number;
}

/** A cluster disk resource; one per LUN the cluster knows (keyed by the LUN's serial). */
export interface ResourceRecord {
  name: string;
  group: string;
  state: ResourceStateName;
  lun: LunRef;
  /** The LUN id it has in every node igroup it is mapped to. */
  lunId: number;
  sharing: Sharing;
  /** Nodes whose igroup the LUN is mapped to by passthru. */
  mappedNodes: string[];
  /** The node holding its SCSI-3 persistent reservation, as passthru took it. */
  reservedBy?: string;
  /** Set while the disk belongs to a VM at a mount path (or is on its way in or out). */
  vmId?: string;
  mountPath?: string;
  mountKey?: string;
  /** The operation that made it the VM's disk (what a repeated create/connect returns). */
  attachedBy?: string;
  /** What the guest reported mounting. */
  mounted?: { volumeId: string; label: string; path: string };
}

export interface AttachmentRecord {
  vmId: string;
  controller: number;
  location: number;
  serial: string;
}

/** A LUN as one node sees it after a rescan: a local disk at a LUN id. */
export interface HostDiskRecord {
  node: string;
  serial: string;
  lunUuid: string;
  lunId: number;
}

export type OperationKindName = 'create_disk' | 'connect_disk' | 'remove_disk' | 'add_available_disk' | 'remove_available_disk';
export type OperationStateName = 'running' | 'rolling_back' | 'succeeded' | 'failed';
export type StepStateName = 'pending' | 'running' | 'done' | 'skipped' | 'failed' | 'undoing' | 'undone';

export interface StepRecord {
  name: string;
  state: StepStateName;
  startMs?: number;
  endMs?: number;
  /** What is happening or happened: a skip reason, a retry note, the failure. */
  message?: string;
  /** Why the step failed, kept through its undo and its retries. */
  error?: string;
}

export interface OperationError {
  kind: import('../common/errors.js').ErrorKind | 'internal';
  reason: string;
  message: string;
}

/** What a request asked for; also what makes two requests with one request id the same. */
export interface OperationParams {
  sizeBytes?: number;
  sharing?: Sharing;
  /** connect / available disk: the LUN as the caller named it. */
  lun?: string;
  deleteLun?: boolean;
}

/** What the steps learned and chose, journaled so a replay makes the same choices. */
export interface OperationData {
  lun?: LunRef;
  /** lun.create made the LUN: only then may an undo delete it. */
  createdLun?: boolean;
  lunId?: number;
  nodes?: string[];
  resource?: string;
  /** connect: the Available Storage resource's name and state before it moved. */
  previousResource?: { name: string; group: string; state: ResourceStateName };
  tempGroup?: string;
  address?: { controller: number; location: number };
  /** remove: the VM group the resource left, and its guest-reported mount. */
  vmGroup?: string;
  sharing?: Sharing;
}

export interface OperationRecord {
  id: string;
  kind: OperationKindName;
  /** Who asked: vm:<id> or admin; request ids are unique within it. */
  scope: string;
  requestId: string;
  vmId: string;
  mountPath: string;
  mountKey: string;
  state: OperationStateName;
  /** Past the commit point: recovery rolls forward. */
  committed: boolean;
  steps: StepRecord[];
  params: OperationParams;
  data: OperationData;
  error?: OperationError;
  createMs: number;
  updateMs: number;
  /** What it holds while it runs: vm mount and LUN keys (one operation each at a time). */
  locks: string[];
}

export interface RequestRecord {
  scope: string;
  requestId: string;
  /** Method and parameters, so a reused id with other parameters is refused. */
  fingerprint: string;
  opId?: string;
  /** A reply that is not an operation (admin changes), as JSON. */
  reply?: unknown;
  createMs: number;
}

export const attachmentKey = (vmId: string, controller: number, location: number): string => `${vmId}/${controller}/${location}`;
export const hostDiskKey = (node: string, serial: string): string => `${node}/${serial}`;
export const requestKey = (scope: string, requestId: string): string => `${scope}\u0000${requestId}`;
