/** The array's objects as the domain holds them: plain data, times in epoch milliseconds. */
import type { IgroupProtocol, OsType } from './rules.js';

export type LunState = 'online' | 'offline';
export type ReservationType =
  | 'write_exclusive'
  | 'exclusive_access'
  | 'write_exclusive_registrants_only'
  | 'exclusive_access_registrants_only';

export interface PoolRecord {
  name: string;
  capacityBytes: number;
}

export interface LunRecord {
  uuid: string;
  path: string;
  volume: string;
  name: string;
  serial: string;
  sizeBytes: number;
  osType: OsType;
  thin: boolean;
  state: LunState;
  comment: string;
  pool: string;
  createdMs: number;
}

export interface IgroupRecord {
  name: string;
  protocol: IgroupProtocol;
  osType: OsType;
  /** Canonical initiator names, in the order added. */
  initiators: string[];
  createdMs: number;
}

export interface LunMapRecord {
  lunUuid: string;
  igroup: string;
  lunId: number;
}

/** SPC-3 persistent reservation state of one LUN. Keys are 16 lower-case hex digits. */
export interface ReservationState {
  generation: number;
  /** initiator → registered key */
  registrations: Record<string, string>;
  holder?: { initiator: string; key: string; type: ReservationType };
}

/** What the API shows of a LUN: its record plus what follows from the rest of the array. */
export interface LunView extends LunRecord {
  naaId: string;
  usedBytes: number;
  mapped: boolean;
}

export interface IgroupView extends IgroupRecord {
  mapCount: number;
}

export interface LunMapView {
  lunUuid: string;
  lunPath: string;
  serial: string;
  igroup: string;
  lunId: number;
}

export interface PoolView {
  name: string;
  capacityBytes: number;
  usedBytes: number;
  availableBytes: number;
  lunCount: number;
}

/**
 * The NAA-6 (IEEE Registered Extended) designator of a LUN: NAA 6, NetApp's OUI 00a098, then
 * the serial's 12 ASCII bytes, as ONTAP reports it (e.g. 600a0980 + hex of the serial).
 */
export function naaIdOf(serial: string): string {
  return `600a0980${Buffer.from(serial, 'ascii').toString('hex')}`;
}
