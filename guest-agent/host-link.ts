/**
 * The guest's side of its host agent's GuestService, in the guest's words: who this VM is,
 * asking for a disk, following the operation, the host's view of the disks, and telling the
 * host about mounts. The gRPC adapter (grpc-host.ts) implements it over the VM's endpoint;
 * nothing in the domain knows it is gRPC.
 *
 * Errors are the domain errors of common/errors.ts carrying the host's own message and
 * reason. A host that cannot be reached at all (no socket, connection dropped, deadline)
 * is an UnavailableError with reason HOST_UNREACHABLE: the one case where the guest cannot
 * know whether a mutating request arrived, and so retries it under the same request id.
 */
import type { GuestOsName } from '../common/drive-path.js';

export const HOST_UNREACHABLE = 'HOST_UNREACHABLE';

export type Sharing = 'shared' | 'dedicated';

export interface ScsiAddress {
  controller: number;
  location: number;
}

export interface VmInfo {
  id: string;
  name: string;
  /** The VM's own OS, which decides what a drive path is. */
  guestOs: GuestOsName;
  ha: boolean;
  node: string;
  running: boolean;
}

export type OperationKind = 'create_disk' | 'connect_disk' | 'remove_disk' | 'other';
export type OperationState = 'running' | 'rolling_back' | 'succeeded' | 'failed';
export type StepState = 'pending' | 'running' | 'done' | 'skipped' | 'undoing' | 'undone' | 'failed';
export type StepEventKind = 'started' | 'finished' | 'skipped' | 'failed' | 'undo_started' | 'undone';

export interface StepView {
  name: string;
  state: StepState;
  message: string;
  /** When its latest transition happened (end, else start), ms since the epoch. */
  timeMs?: number;
}

export interface StepEventView {
  step: string;
  kind: StepEventKind;
  timeMs: number;
  message: string;
}

/** Where the host attached a disk, and which LUN it is. */
export interface AttachedDisk {
  address: ScsiAddress;
  serial: string;
  naaId: string;
  lunId: number;
  lunPath: string;
  sizeBytes: number;
}

export interface OperationView {
  id: string;
  kind: OperationKind;
  mountPath: string;
  requestId: string;
  state: OperationState;
  steps: StepView[];
  /** Set once SUCCEEDED with a disk (absent for a removal that had nothing to do). */
  result?: AttachedDisk;
  /** Set once FAILED: the domain error its status stands for, with the host's message. */
  error?: Error;
}

export interface WatchUpdate {
  events: StepEventView[];
  operation: OperationView;
}

/** A disk attached to this VM, as the host sees it. */
export interface HostDisk {
  mountPath: string;
  serial: string;
  naaId: string;
  sizeBytes: number;
  address: ScsiAddress;
  lunId: number;
  lunPath: string;
  sharing: Sharing;
  resource: string;
  /** online, offline, online_pending, offline_pending, failed. */
  resourceState: string;
  mounted: boolean;
  volumeId: string;
  volumeLabel: string;
}

export interface HostLink {
  self(): Promise<VmInfo>;
  /** The operation as the host started it, or the first one again for a repeated request id. */
  createDisk(req: { requestId: string; mountPath: string; sizeBytes: number; sharing: Sharing }): Promise<OperationView>;
  connectDisk(req: { requestId: string; mountPath: string; lun: string }): Promise<OperationView>;
  removeDisk(req: { requestId: string; mountPath: string; deleteLun: boolean }): Promise<OperationView>;
  /** The operation as it stands, then its step events, ending after its final state. */
  watchOperation(operationId: string): AsyncIterable<WatchUpdate>;
  listDisks(): Promise<HostDisk[]>;
  reportMount(req: { requestId: string; mountPath: string; serial: string; volumeId: string; volumeLabel: string }): Promise<HostDisk>;
  reportUnmount(req: { requestId: string; mountPath: string }): Promise<HostDisk>;
  /** Drops the connection, so the next call dials afresh (the host may have restarted). */
  reconnect(): void;
  close(): void;
}
