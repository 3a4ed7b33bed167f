/**
 * The array seam: what the host agent asks of the SAN array, control plane and data plane,
 * in the domain's words and with nothing of gRPC. The first implementations are storage-sim's:
 * its gRPC API for the control plane (`grpc-array.ts`) and its block portal for the data
 * plane (`portal-client.ts`); an array with another API plugs in behind these interfaces.
 *
 * Every mutating call carries the caller's request id: the workflow derives it from the
 * operation and step, so a replayed step gets the array's first answer instead of doing
 * the work twice. An implementation retries what is retryable itself and reports the rest
 * as domain errors.
 */
import { createHash } from 'node:crypto';
import type { GuestOsName, LunRef } from './model.js';

export type { GuestOsName };

export interface PoolInfo {
  name: string;
  availableBytes: number;
}

export interface ArrayLun extends LunRef {
  comment: string;
  mapped: boolean;
}

export interface ArrayMap {
  lunUuid: string;
  serial: string;
  lunPath: string;
  igroup: string;
  lunId: number;
}

export interface Reservation {
  holderInitiator?: string;
  registrations: { initiator: string; key: string }[];
}

export interface StorageArray {
  /** Where it is, for messages. */
  readonly endpoint: string;
  /** Where hosts reach LUN data (host:port): the array's block portal. */
  blockPortal(): Promise<string>;
  /** Whether the array answers at all, asked once with this deadline (no retries): for health. */
  answers(timeoutMs: number): Promise<boolean>;
  listPools(): Promise<PoolInfo[]>;
  /** Creates a thick LUN; the same path and parameters return the existing one. */
  createLun(req: { requestId: string; path: string; sizeBytes: number; guestOs: GuestOsName; comment: string }): Promise<ArrayLun>;
  /** By path, uuid or serial; undefined when there is none. */
  findLun(ref: string): Promise<ArrayLun | undefined>;
  listLuns(pathPrefix: string): Promise<ArrayLun[]>;
  /** Deleting a LUN that is gone succeeds. `force` takes its maps with it. */
  deleteLun(req: { requestId: string; lun: string; force?: boolean }): Promise<void>;
  /** Makes sure the igroup exists and holds the initiator. */
  ensureIgroup(req: { requestId: string; name: string; initiator: string }): Promise<void>;
  /**
   * Maps to every one of the igroups at exactly this LUN id, all or none; ALREADY_EXISTS
   * (LUN_ID_ALREADY_EXISTS) when another LUN holds the id in one of them.
   */
  mapLun(req: { requestId: string; lun: string; igroups: readonly string[]; lunId: number }): Promise<void>;
  /** Unmaps from every one of the igroups; unmapping what is not mapped succeeds. */
  unmapLun(req: { requestId: string; lun: string; igroups: readonly string[] }): Promise<void>;
  listMaps(filter: { igroup?: string; lun?: string }): Promise<ArrayMap[]>;
  /** Registers the initiator's key and takes a write-exclusive-registrants-only reservation. */
  reserve(req: { requestId: string; lun: string; initiator: string; key: string }): Promise<void>;
  /** Releases the reservation if the initiator holds it and unregisters its key. */
  release(req: { requestId: string; lun: string; initiator: string; key: string }): Promise<void>;
  /**
   * Fencing: the initiator registers its key and preempts every registration with `fromKey`
   * (a failed node's), taking the reservation over; the failed node can no longer write.
   */
  takeOver(req: { requestId: string; lun: string; initiator: string; key: string; fromKey: string }): Promise<void>;
  readReservation(lun: string): Promise<Reservation>;
  close(): void;
}

/**
 * The array data plane as one node reaches it: block I/O carried with that node's initiator,
 * so the array's masking and reservations, not the host agent, decide what the node may
 * touch. One per node (each its own connection; with mTLS each will present its node's
 * certificate).
 */
export interface DataPlane {
  read(lun: string, offsetBytes: bigint, lengthBytes: number): Promise<Buffer>;
  write(requestId: string, lun: string, offsetBytes: bigint, data: Buffer): Promise<number>;
  close(): void;
}

/** The persistent-reservation key a node uses: stable, derived from its name. */
export function reservationKey(node: string): string {
  return createHash('sha256').update(`passthru-node:${node}`).digest('hex').slice(0, 16);
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  attempts: number;
  firstDelayMs: number;
  maxDelayMs: number;
  /** Deadline of each call. */
  callTimeoutMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, firstDelayMs: 50, maxDelayMs: 1000, callTimeoutMs: 5000 };
