/**
 * Everything a client can observe of a StorageArray, in one comparable value: counts, pools,
 * every LUN, igroup and LUN map (all pages), each LUN's reservation state, and a digest of
 * each LUN's data file. Two snapshots deep-equal means nothing changed.
 */
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import type { StorageArray } from '../../storage-sim/array.js';
import type { IgroupView, LunMapView, LunView, PoolView, ReservationState } from '../../storage-sim/model.js';

export interface ArrayState {
  counts: { luns: number; igroups: number; maps: number };
  pools: PoolView[];
  luns: LunView[];
  igroups: IgroupView[];
  maps: LunMapView[];
  reservations: Record<string, ReservationState>;
  /** LUN uuid → sha256 of its backing file (or "missing"). */
  data: Record<string, string>;
}

function allPages<T>(list: (pageToken: string) => { items: T[]; nextPageToken: string }): T[] {
  const out: T[] = [];
  let token = '';
  do {
    const page = list(token);
    out.push(...page.items);
    token = page.nextPageToken;
  } while (token !== '');
  return out;
}

const CHUNK = 1024 * 1024;
const ZERO = Buffer.alloc(CHUNK);
const chunk = Buffer.alloc(CHUNK);

/**
 * A digest of a file's size and contents, or "missing" when it does not exist. All-zero
 * chunks (the holes of a sparse LUN file) are skipped cheaply, so large mostly-empty files
 * cost a read, not a hash; any non-zero byte, wherever it is, changes the digest.
 */
export function fileDigest(path: string): string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch {
    return 'missing';
  }
  try {
    const hash = createHash('sha256');
    let offset = 0;
    for (;;) {
      const n = readSync(fd, chunk, 0, CHUNK, offset);
      if (n === 0) break;
      const part = chunk.subarray(0, n);
      if (!part.equals(ZERO.subarray(0, n))) hash.update(`@${offset}:`).update(part);
      offset += n;
    }
    return `${offset}:${hash.digest('hex')}`;
  } finally {
    closeSync(fd);
  }
}

export function arrayState(array: StorageArray, opts: { data?: boolean } = {}): ArrayState {
  const info = array.getArray();
  const luns = allPages((pageToken) => array.listLuns({ pageSize: 1000, pageToken, pathPrefix: '' }));
  const igroups = allPages((pageToken) => array.listIgroups({ pageSize: 1000, pageToken, initiator: '' }));
  const maps = allPages((pageToken) => array.listLunMaps({ lun: '', igroup: '', pageSize: 1000, pageToken }));
  const reservations: Record<string, ReservationState> = {};
  const data: Record<string, string> = {};
  for (const l of luns) {
    reservations[l.uuid] = array.readReservation(l.uuid);
    if (opts.data !== false) data[l.uuid] = fileDigest(array.data.pathOf(l.uuid));
  }
  return {
    counts: { luns: info.lunCount, igroups: info.igroupCount, maps: info.mapCount },
    pools: array.listPools(),
    luns,
    igroups,
    maps,
    reservations,
    data,
  };
}
