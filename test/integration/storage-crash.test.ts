/**
 * The durability proof for storage-sim: a real `storage-sim serve` process under concurrent
 * load is killed with SIGKILL at a random moment, restarted on the same data dir, and
 * everything it acknowledged must be there: LUNs, maps, deletes, unmaps and every written
 * sector, byte for byte. Requests that were in flight at the kill may or may not have
 * happened; retrying them with their own request ids must settle them consistently.
 *
 * The run is driven by a seed (random unless CRASH_SEED is set); it is printed on failure so
 * a failing run can be repeated: CRASH_SEED=<seed> npx mocha --import=tsx <this file>.
 */
import { randomUUID } from 'node:crypto';
import { closeSync, openSync, readdirSync, readSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { expect } from 'chai';
import { connect, type PromiseClient } from '../../common/client.js';
import {
  IgroupProtocol,
  OsType,
  Provisioning,
  StorageArrayServiceClient,
  type CreateLunRequest,
  type DeleteLunRequest,
  type Lun,
  type LunMap,
  type MapLunRequest,
  type UnmapLunRequest,
  type WriteBlocksRequest,
} from '../../proto/gen/passthru/storage/v1/storage.js';
import { startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

type Client = PromiseClient<StorageArrayServiceClient>;

const SECTOR = 512;
const MiB = 1024 * 1024;
const IGROUP = 'crash_hosts';
const INITIATOR = 'iqn.2024-01.com.example:crash-host1';
const LOOPS = 8;
const MAX_LIVE_LUNS_PER_LOOP = 5;
const CALL_TIMEOUT_MS = 15_000;

// ---------------------------------------------------------------- seeded randomness

/** mulberry32: small, fast, good enough to drive choices reproducibly. */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function intIn(r: () => number, lo: number, hi: number): number {
  return lo + Math.floor(r() * (hi - lo + 1));
}

/** Random bytes from a seeded xorshift: distinct content for every write. */
function fillRandom(r: () => number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(length);
  let x = (Math.floor(r() * 0xffffffff) | 1) >>> 0;
  for (let i = 0; i + 4 <= length; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    buf.writeUInt32LE(x >>> 0, i);
  }
  return buf;
}

// ---------------------------------------------------------------- the model of what was acknowledged

interface WriteRecord {
  id: number;
  offset: number;
  data: Buffer;
  /** Sectors whose acknowledged content this write is. */
  refs: number;
}

type Pending =
  | { kind: 'create'; req: CreateLunRequest }
  | { kind: 'map'; req: MapLunRequest }
  | { kind: 'unmap'; req: UnmapLunRequest }
  | { kind: 'delete'; req: DeleteLunRequest }
  | { kind: 'write'; req: WriteBlocksRequest; write: WriteRecord };

interface ModelLun {
  path: string;
  sizeBytes: number;
  thin: boolean;
  loop: number;
  createReq: CreateLunRequest;
  /** Set once a CreateLun for it was acknowledged (or its retry answered). */
  created?: { uuid: string; serial: string };
  /** The acknowledged first answer, to compare replays with. */
  createAnswer?: Lun;
  deleted: boolean;
  /** The acknowledged LUN id in IGROUP; undefined = acknowledged unmapped. */
  mapId?: number;
  /** Acknowledged write id per sector (0 = never written: zeros). */
  sectors: Int32Array;
  extentsAcked: Set<number>;
  extentsTried: Set<number>;
  /** Recent acknowledged write ranges, to overwrite the same blocks. */
  ranges: { offset: number; length: number }[];
  /** The one request on this LUN that was in flight at the kill. */
  pending?: Pending;
}

interface AckedReplay {
  kind: 'create' | 'map' | 'write' | 'delete' | 'unmap';
  lun: ModelLun;
  req: CreateLunRequest | MapLunRequest | WriteBlocksRequest | DeleteLunRequest | UnmapLunRequest;
  answer: unknown;
}

class Model {
  readonly luns = new Map<string, ModelLun>();
  readonly writes = new Map<number, WriteRecord>();
  readonly acked: AckedReplay[] = [];
  private nextWrite = 1;
  readonly counts = {
    creates: 0,
    maps: 0,
    unmaps: 0,
    deletes: 0,
    writes: 0,
    inFlightRetried: 0,
    replays: 0,
    lunsVerified: 0,
    mapsVerified: 0,
    goneVerified: 0,
    sectorsVerified: 0,
    writtenSectorsVerified: 0,
  };

  newWrite(offset: number, data: Buffer): WriteRecord {
    return { id: this.nextWrite++, offset, data, refs: 0 };
  }

  ackWrite(lun: ModelLun, w: WriteRecord): void {
    const first = w.offset / SECTOR;
    const n = w.data.length / SECTOR;
    this.writes.set(w.id, w);
    for (let s = first; s < first + n; s++) {
      const old = lun.sectors[s]!;
      if (old !== 0) {
        const ow = this.writes.get(old)!;
        if (--ow.refs === 0) this.writes.delete(old);
      }
      lun.sectors[s] = w.id;
      w.refs++;
    }
    if (w.refs === 0) this.writes.delete(w.id);
    for (const e of extentsOf(w.offset, w.data.length)) lun.extentsAcked.add(e);
    lun.ranges.push({ offset: w.offset, length: w.data.length });
    if (lun.ranges.length > 16) lun.ranges.shift();
    this.counts.writes++;
  }

  /** Forgets a deleted LUN's data (its sectors no longer hold writes alive). */
  dropData(lun: ModelLun): void {
    for (let s = 0; s < lun.sectors.length; s++) {
      const id = lun.sectors[s]!;
      if (id === 0) continue;
      const w = this.writes.get(id)!;
      if (--w.refs === 0) this.writes.delete(id);
      lun.sectors[s] = 0;
    }
  }

  /** The content an acknowledged sector must have (undefined: zeros). */
  sectorContent(lun: ModelLun, s: number): Buffer | undefined {
    const id = lun.sectors[s]!;
    if (id === 0) return undefined;
    const w = this.writes.get(id)!;
    const at = s * SECTOR - w.offset;
    return w.data.subarray(at, at + SECTOR);
  }
}

function extentsOf(offset: number, length: number): number[] {
  const out: number[] = [];
  for (let e = Math.floor(offset / MiB); e <= Math.floor((offset + length - 1) / MiB); e++) out.push(e);
  return out;
}

/** Pool space a thin LUN holds for these extents (the last one cut at the LUN's end). */
function thinUsed(extents: Set<number>, sizeBytes: number): number {
  let total = 0;
  for (const e of extents) total += Math.min(MiB, sizeBytes - e * MiB);
  return total;
}

// ---------------------------------------------------------------- load

interface LoadRun {
  killing: boolean;
  /** An error that was not caused by the kill: the test fails with it. */
  failures: string[];
}

function lunRequest(model: Model, r: () => number, seed: number, loop: number, n: number): ModelLun {
  const thin = r() < 0.5;
  let sizeBytes = intIn(r, 4, 8) * MiB;
  if (r() < 0.3) sizeBytes += intIn(r, 1, 2047) * SECTOR;
  const path = `/vol/crash_${loop}/s${seed}_l${loop}_n${n}`;
  const createReq: CreateLunRequest = {
    requestId: `create-${seed}-${loop}-${n}`,
    path,
    sizeBytes: BigInt(sizeBytes),
    osType: OsType.OS_TYPE_LINUX,
    provisioning: thin ? Provisioning.PROVISIONING_THIN : Provisioning.PROVISIONING_THICK,
    comment: `crash test loop ${loop}`,
    pool: '',
  };
  const lun: ModelLun = {
    path,
    sizeBytes,
    thin,
    loop,
    createReq,
    deleted: false,
    sectors: new Int32Array(Math.ceil(sizeBytes / SECTOR)),
    extentsAcked: new Set(),
    extentsTried: new Set(),
    ranges: [],
  };
  model.luns.set(path, lun);
  return lun;
}

/**
 * One client loop: owns its LUNs, one request at a time, until the kill. Every answer is
 * recorded as acknowledged; the request that fails because of the kill is left pending.
 */
async function clientLoop(client: Client, model: Model, run: LoadRun, seed: number, cycle: number, loop: number): Promise<void> {
  const r = rng(seed * 1000 + cycle * 100 + loop);
  let n = 0;
  const idOf = (kind: string): string => `${kind}-${seed}-c${cycle}-l${loop}-${n++}`;
  const opts = { timeoutMs: CALL_TIMEOUT_MS };
  while (!run.killing) {
    const live = [...model.luns.values()].filter((l) => l.loop === loop && !l.deleted && l.created);
    const mapped = live.filter((l) => l.mapId !== undefined);
    const unmapped = live.filter((l) => l.mapId === undefined);
    const x = r();
    let op: Pending;
    let lun: ModelLun;
    if (live.length < 2 || (x < 0.1 && live.length < MAX_LIVE_LUNS_PER_LOOP)) {
      lun = lunRequest(model, r, seed, loop, cycle * 100_000 + n++);
      op = { kind: 'create', req: lun.createReq };
    } else if (unmapped.length > 0 && x < 0.3) {
      lun = unmapped[intIn(r, 0, unmapped.length - 1)]!;
      op =
        r() < 0.85 || live.length < 3
          ? { kind: 'map', req: { requestId: idOf('map'), lun: lun.path, igroup: IGROUP, igroups: [] } }
          : { kind: 'delete', req: { requestId: idOf('delete'), lun: lun.path, force: false } };
    } else if (mapped.length > 0 && x < 0.33) {
      lun = mapped[intIn(r, 0, mapped.length - 1)]!;
      op = { kind: 'unmap', req: { requestId: idOf('unmap'), lun: lun.path, igroup: IGROUP, igroups: [] } };
    } else if (mapped.length > 0 && x < 0.36 && live.length > 2) {
      lun = mapped[intIn(r, 0, mapped.length - 1)]!;
      op = { kind: 'delete', req: { requestId: idOf('delete'), lun: lun.path, force: true } };
    } else if (mapped.length > 0) {
      lun = mapped[intIn(r, 0, mapped.length - 1)]!;
      const sectors = lun.sizeBytes / SECTOR;
      let offset: number;
      let length: number;
      if (lun.ranges.length > 0 && r() < 0.4) {
        // Overwrite blocks written before (sometimes shifted a little).
        const prior = lun.ranges[intIn(r, 0, lun.ranges.length - 1)]!;
        length = prior.length;
        const shift = r() < 0.5 ? 0 : intIn(r, -8, 8) * SECTOR;
        offset = Math.min(Math.max(0, prior.offset + shift), lun.sizeBytes - length);
      } else {
        const y = r();
        const lenSectors = y < 0.5 ? intIn(r, 1, 16) : y < 0.8 ? intIn(r, 17, 512) : 2048;
        length = Math.min(lenSectors, sectors) * SECTOR;
        offset = intIn(r, 0, sectors - length / SECTOR) * SECTOR;
      }
      const write = model.newWrite(offset, fillRandom(r, length));
      for (const e of extentsOf(offset, length)) lun.extentsTried.add(e);
      op = {
        kind: 'write',
        write,
        req: { requestId: idOf('write'), lun: lun.created!.uuid, initiator: INITIATOR, offsetBytes: BigInt(offset), data: write.data },
      };
    } else {
      lun = unmapped[0]!;
      op = { kind: 'map', req: { requestId: idOf('map'), lun: lun.path, igroup: IGROUP, igroups: [] } };
    }

    let answer: unknown;
    try {
      answer = await send(client, op, opts);
    } catch (err) {
      if (run.killing) {
        lun.pending = op;
        return;
      }
      run.failures.push(`loop ${loop}: ${op.kind} ${lun.path} failed before any kill: ${(err as Error).message}`);
      return;
    }
    const problem = applyAnswer(model, lun, op, answer);
    if (problem) {
      run.failures.push(`loop ${loop}: ${problem}`);
      return;
    }
    model.acked.push({ kind: op.kind, lun, req: op.req, answer });
  }
}

function send(client: Client, op: Pending, opts: { timeoutMs: number }): Promise<unknown> {
  switch (op.kind) {
    case 'create':
      return client.createLun(op.req, opts);
    case 'map':
      return client.mapLun(op.req, opts);
    case 'unmap':
      return client.unmapLun(op.req, opts);
    case 'delete':
      return client.deleteLun(op.req, opts);
    case 'write':
      return client.writeBlocks(op.req, opts);
  }
}

/** Records an acknowledged (or settled by retry) answer; returns a problem if it is wrong. */
function applyAnswer(model: Model, lun: ModelLun, op: Pending, answer: unknown): string | undefined {
  switch (op.kind) {
    case 'create': {
      const got = (answer as { lun?: Lun }).lun;
      if (!got) return `CreateLun ${lun.path} answered without a LUN`;
      if (got.path !== lun.path || Number(got.sizeBytes) !== lun.sizeBytes || (got.provisioning === Provisioning.PROVISIONING_THIN) !== lun.thin) {
        return `CreateLun ${lun.path} answered ${got.path} ${got.sizeBytes} provisioning ${got.provisioning}`;
      }
      if (lun.created && (lun.created.uuid !== got.uuid || lun.created.serial !== got.serial)) {
        return `CreateLun ${lun.path} answered uuid ${got.uuid}/${got.serial}, but the LUN found after restart is ${lun.created.uuid}/${lun.created.serial}`;
      }
      lun.created = { uuid: got.uuid, serial: got.serial };
      lun.createAnswer ??= got;
      model.counts.creates++;
      return undefined;
    }
    case 'map': {
      const m = (answer as { map?: LunMap }).map;
      if (!m || m.lunUuid !== lun.created?.uuid || m.igroup !== IGROUP) {
        return `MapLun ${lun.path} answered ${JSON.stringify(m)}`;
      }
      if (lun.mapId !== undefined && lun.mapId !== m.lunId) {
        return `MapLun ${lun.path} answered LUN id ${m.lunId}, but the map found after restart has ${lun.mapId}`;
      }
      lun.mapId = m.lunId;
      model.counts.maps++;
      return undefined;
    }
    case 'unmap':
      if (!(answer as { unmapped: boolean }).unmapped) return `UnmapLun ${lun.path} of a mapped LUN answered unmapped=false`;
      lun.mapId = undefined;
      model.counts.unmaps++;
      return undefined;
    case 'delete':
      if (!(answer as { deleted: boolean }).deleted) return `DeleteLun ${lun.path} of an existing LUN answered deleted=false`;
      lun.deleted = true;
      lun.mapId = undefined;
      model.dropData(lun);
      model.counts.deletes++;
      return undefined;
    case 'write':
      if ((answer as { writtenBytes: number }).writtenBytes !== op.write.data.length) {
        return `WriteBlocks ${lun.path} answered ${(answer as { writtenBytes: number }).writtenBytes} of ${op.write.data.length} bytes`;
      }
      model.ackWrite(lun, op.write);
      return undefined;
  }
}

// ---------------------------------------------------------------- verification

async function listAllLuns(client: Client): Promise<Lun[]> {
  const out: Lun[] = [];
  let pageToken = '';
  do {
    const page = await client.listLuns({ pageSize: 1000, pageToken, pathPrefix: '' });
    out.push(...page.luns);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return out;
}

async function listAllMaps(client: Client): Promise<LunMap[]> {
  const out: LunMap[] = [];
  let pageToken = '';
  do {
    const page = await client.listLunMaps({ lun: '', igroup: '', pageSize: 1000, pageToken });
    out.push(...page.maps);
    pageToken = page.nextPageToken;
  } while (pageToken !== '');
  return out;
}

function readFileRange(path: string, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const fd = openSync(path, 'r');
  try {
    let done = 0;
    while (done < length) {
      const n = readSync(fd, buf, done, length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return buf;
}

const ZERO_SECTOR = Buffer.alloc(SECTOR);

/**
 * Checks the restarted array against the model. Pending requests widen what is allowed
 * (either outcome); nothing else does. Returns every problem found (empty: all good).
 */
async function verify(client: Client, model: Model, dataDir: string): Promise<string[]> {
  const problems: string[] = [];
  const luns = await listAllLuns(client);
  const byPath = new Map(luns.map((l) => [l.path, l]));
  const byUuid = new Map(luns.map((l) => [l.uuid, l]));
  const maps = (await listAllMaps(client)).filter((m) => m.igroup === IGROUP);
  const mapByUuid = new Map(maps.map((m) => [m.lunUuid, m]));

  // LUNs: acknowledged ones exist unchanged; acknowledged deletes are gone; nothing unknown.
  for (const lun of model.luns.values()) {
    const found = byPath.get(lun.path);
    const p = lun.pending;
    if (lun.deleted) {
      if (found) problems.push(`LUN ${lun.path}: deletion was acknowledged, but it exists (uuid ${found.uuid})`);
      else model.counts.goneVerified++;
      if (lun.created && byUuid.has(lun.created.uuid)) problems.push(`LUN ${lun.path}: deleted uuid ${lun.created.uuid} is back`);
      continue;
    }
    if (!lun.created) {
      // Its CreateLun never got an answer: it may exist, as the request asked.
      if (!p || p.kind !== 'create') problems.push(`model: LUN ${lun.path} neither created nor pending`);
      else if (found) {
        if (Number(found.sizeBytes) !== lun.sizeBytes || (found.provisioning === Provisioning.PROVISIONING_THIN) !== lun.thin) {
          problems.push(`LUN ${lun.path} (create in flight) exists with other parameters: ${found.sizeBytes} ${found.provisioning}`);
        }
        if (mapByUuid.has(found.uuid)) problems.push(`LUN ${lun.path} (create in flight) is mapped, though no map was ever sent`);
      }
      continue;
    }
    if (!found) {
      if (p?.kind === 'delete') continue; // the in-flight delete happened
      problems.push(`LUN ${lun.path}: creation was acknowledged (uuid ${lun.created.uuid}), but it is missing`);
      continue;
    }
    model.counts.lunsVerified++;
    if (found.uuid !== lun.created.uuid || found.serial !== lun.created.serial) {
      problems.push(`LUN ${lun.path}: acknowledged as ${lun.created.uuid}/${lun.created.serial}, found ${found.uuid}/${found.serial}`);
    }
    if (Number(found.sizeBytes) !== lun.sizeBytes) problems.push(`LUN ${lun.path}: size ${found.sizeBytes}, acknowledged ${lun.sizeBytes}`);
    if ((found.provisioning === Provisioning.PROVISIONING_THIN) !== lun.thin) problems.push(`LUN ${lun.path}: provisioning changed to ${found.provisioning}`);
    // Maps.
    const m = mapByUuid.get(found.uuid);
    const mapUncertain = p?.kind === 'map' || p?.kind === 'unmap' || p?.kind === 'delete';
    if (lun.mapId !== undefined) {
      if (!m) {
        if (!mapUncertain) problems.push(`LUN ${lun.path}: map at LUN id ${lun.mapId} was acknowledged, but it is missing`);
      } else if (m.lunId !== lun.mapId) {
        problems.push(`LUN ${lun.path}: mapped at LUN id ${m.lunId}, acknowledged ${lun.mapId}`);
      } else model.counts.mapsVerified++;
    } else if (m && !mapUncertain) {
      problems.push(`LUN ${lun.path}: acknowledged unmapped, but mapped at LUN id ${m.lunId}`);
    } else if (!m) model.counts.mapsVerified++;
    if (found.mapped !== (m !== undefined)) problems.push(`LUN ${lun.path}: mapped=${found.mapped} disagrees with ListLunMaps`);
    // Pool space.
    const used = Number(found.usedBytes);
    if (!lun.thin && used !== lun.sizeBytes) problems.push(`thick LUN ${lun.path}: uses ${used} bytes of its pool, not its size ${lun.sizeBytes}`);
    if (lun.thin) {
      const low = thinUsed(lun.extentsAcked, lun.sizeBytes);
      const high = thinUsed(lun.extentsTried, lun.sizeBytes);
      if (used < low) problems.push(`thin LUN ${lun.path}: uses ${used} bytes, less than its acknowledged writes allocated (${low})`);
      if (used > high) problems.push(`thin LUN ${lun.path}: uses ${used} bytes, more than every write sent could allocate (${high})`);
    }
  }
  const known = new Set(model.luns.keys());
  for (const l of luns) if (!known.has(l.path)) problems.push(`LUN ${l.path} (uuid ${l.uuid}) exists, but no request ever created it`);
  for (const m of maps) if (!byUuid.has(m.lunUuid)) problems.push(`map of a LUN that does not exist: ${JSON.stringify(m)}`);

  // Pool: its used bytes are the sum of its LUNs'; LUN count agrees.
  const pools = (await client.listPools({})).pools;
  const sumUsed = luns.reduce((a, l) => a + Number(l.usedBytes), 0);
  const poolUsed = pools.reduce((a, p) => a + Number(p.usedBytes), 0);
  const poolLuns = pools.reduce((a, p) => a + p.lunCount, 0);
  if (poolUsed !== sumUsed) problems.push(`pools use ${poolUsed} bytes, but their LUNs hold ${sumUsed}`);
  if (poolLuns !== luns.length) problems.push(`pools count ${poolLuns} LUNs, ListLuns has ${luns.length}`);
  const thickSum = luns.filter((l) => l.provisioning !== Provisioning.PROVISIONING_THIN).reduce((a, l) => a + Number(l.sizeBytes), 0);
  if (poolUsed < thickSum) problems.push(`pools use ${poolUsed} bytes, less than their thick LUNs reserve (${thickSum})`);

  // Data files: at most one per LUN (made at its first write), of its size; nothing else in
  // <dataDir>/luns. A LUN without one reads as zeros, which the sector check below holds
  // against every acknowledged write.
  const lunsDir = join(dataDir, 'luns');
  const files = readdirSync(lunsDir);
  for (const f of files) {
    const uuid = f.endsWith('.img') ? f.slice(0, -4) : undefined;
    if (!uuid || !byUuid.has(uuid)) problems.push(`orphan file ${join(lunsDir, f)}: no LUN has it`);
  }
  for (const l of luns) {
    const file = join(lunsDir, `${l.uuid}.img`);
    let size: number | undefined;
    try {
      size = statSync(file).size;
    } catch {
      continue;
    }
    if (size !== Number(l.sizeBytes)) problems.push(`LUN ${l.path}: data file is ${size} bytes, the LUN ${l.sizeBytes}`);
  }

  // Data: every touched MiB of every surviving LUN, sector by sector.
  const jobs: (() => Promise<void>)[] = [];
  for (const lun of model.luns.values()) {
    if (lun.deleted || !lun.created) continue;
    const found = byPath.get(lun.path);
    if (!found || found.uuid !== lun.created.uuid) continue;
    const pendingWrite = lun.pending?.kind === 'write' ? lun.pending.write : undefined;
    const chunks = new Set<number>();
    for (let s = 0; s < lun.sectors.length; s++) if (lun.sectors[s] !== 0) chunks.add(Math.floor((s * SECTOR) / MiB));
    if (pendingWrite) for (const e of extentsOf(pendingWrite.offset, pendingWrite.data.length)) chunks.add(e);
    // Through the array when the initiator surely reaches it; else straight from its file.
    const viaRpc = lun.mapId !== undefined && mapByUuid.get(found.uuid)?.lunId === lun.mapId;
    const file = join(lunsDir, `${found.uuid}.img`);
    for (const c of [...chunks].sort((a, b) => a - b)) {
      jobs.push(async () => {
        const offset = c * MiB;
        const length = Math.min(MiB, lun.sizeBytes - offset);
        const data = viaRpc
          ? (await client.readBlocks({ lun: found.uuid, initiator: INITIATOR, offsetBytes: BigInt(offset), lengthBytes: length })).data
          : readFileRange(file, offset, length);
        if (data.length !== length) {
          problems.push(`LUN ${lun.path}: read of ${length} bytes at ${offset} returned ${data.length}`);
          return;
        }
        let bad = 0;
        for (let i = 0; i < length; i += SECTOR) {
          const s = (offset + i) / SECTOR;
          const got = data.subarray(i, i + SECTOR);
          const want = model.sectorContent(lun, s);
          model.counts.sectorsVerified++;
          if (want) model.counts.writtenSectorsVerified++;
          if (got.equals(want ?? ZERO_SECTOR)) continue;
          if (pendingWrite && s * SECTOR >= pendingWrite.offset && s * SECTOR < pendingWrite.offset + pendingWrite.data.length) {
            const at = s * SECTOR - pendingWrite.offset;
            if (got.equals(pendingWrite.data.subarray(at, at + SECTOR))) continue;
          }
          if (bad++ < 3) {
            problems.push(
              `LUN ${lun.path} (${found.uuid}, ${viaRpc ? 'ReadBlocks' : 'file'}): sector ${s} holds neither its acknowledged content` +
                `${want ? ` (write #${lun.sectors[s]})` : ' (zeros)'}${pendingWrite ? ` nor the in-flight write #${pendingWrite.id}` : ''}`,
            );
          }
        }
        if (bad > 3) problems.push(`LUN ${lun.path}: ${bad - 3} more bad sectors in MiB ${c}`);
      });
    }
  }
  await runLimited(jobs, 4);
  return problems;
}

async function runLimited(jobs: (() => Promise<void>)[], limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < jobs.length) await jobs[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, jobs.length) }, worker));
}

/**
 * Retries every request that was in flight at the kill, with its own request id: each must
 * succeed, agree with what the restarted array showed, and leave the outcome certain.
 */
async function retryPending(client: Client, model: Model, before: Lun[], beforeMaps: LunMap[]): Promise<string[]> {
  const problems: string[] = [];
  const byPath = new Map(before.map((l) => [l.path, l]));
  const mapOf = new Map(beforeMaps.filter((m) => m.igroup === IGROUP).map((m) => [m.lunUuid, m]));
  for (const lun of model.luns.values()) {
    const op = lun.pending;
    if (!op) continue;
    const seen = byPath.get(lun.path);
    if (op.kind === 'create' && seen) lun.created = { uuid: seen.uuid, serial: seen.serial };
    if (op.kind === 'map' && seen) {
      const m = mapOf.get(seen.uuid);
      if (m) lun.mapId = m.lunId;
    }
    let answer: unknown;
    try {
      answer = await send(client, op, { timeoutMs: CALL_TIMEOUT_MS });
    } catch (err) {
      problems.push(`retry of in-flight ${op.kind} ${lun.path} (request id ${op.req.requestId}) failed: ${(err as Error).message}`);
      lun.pending = undefined;
      continue;
    }
    lun.pending = undefined;
    const problem = applyAnswer(model, lun, op, answer);
    if (problem) problems.push(`retry of in-flight ${op.kind}: ${problem}`);
    else model.acked.push({ kind: op.kind, lun, req: op.req, answer });
    model.counts.inFlightRetried++;
  }
  return problems;
}

/**
 * Replays a sample of acknowledged requests with their request ids: each must return its
 * first answer and change nothing (the verification that follows proves the latter: an old
 * write replayed over a newer one, or a create replayed after a delete, would show).
 */
async function replayAcked(client: Client, model: Model, r: () => number, count: number): Promise<string[]> {
  const problems: string[] = [];
  const pool = model.acked.filter((a) => {
    if (a.kind === 'write') return !a.lun.deleted && a.lun.mapId !== undefined; // block I/O needs a reachable LUN
    return true;
  });
  for (let i = 0; i < count && pool.length > 0; i++) {
    const a = pool.splice(intIn(r, 0, pool.length - 1), 1)[0]!;
    const op = { kind: a.kind, req: a.req } as Pending;
    let answer: unknown;
    try {
      answer = await send(client, op, { timeoutMs: CALL_TIMEOUT_MS });
    } catch (err) {
      problems.push(`replay of acknowledged ${a.kind} ${a.lun.path} (request id ${a.req.requestId}) failed: ${(err as Error).message}`);
      continue;
    }
    model.counts.replays++;
    const same =
      a.kind === 'create'
        ? (answer as { lun?: Lun }).lun?.uuid === (a.answer as { lun?: Lun }).lun?.uuid &&
          (answer as { lun?: Lun }).lun?.serial === (a.answer as { lun?: Lun }).lun?.serial
        : a.kind === 'map'
          ? (answer as { map?: LunMap }).map?.lunId === (a.answer as { map?: LunMap }).map?.lunId &&
            (answer as { map?: LunMap }).map?.lunUuid === (a.answer as { map?: LunMap }).map?.lunUuid
          : JSON.stringify(answer) === JSON.stringify(a.answer);
    if (!same) {
      problems.push(`replay of acknowledged ${a.kind} ${a.lun.path} answered ${safeJson(answer)}, first answer was ${safeJson(a.answer)}`);
    }
  }
  return problems;
}

function safeJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? x.toString() : Buffer.isBuffer(x) ? `<${x.length} bytes>` : x));
}

// ---------------------------------------------------------------- the harness

/** Progress on stderr when CRASH_DEBUG is set. */
function dbg(message: string): void {
  if (process.env.CRASH_DEBUG) process.stderr.write(`[storage-crash] ${message}\n`);
}

interface Harness {
  seed: number;
  dir: { path: string; remove(): void };
  model: Model;
  sim?: ServiceProcess;
  client?: Client;
  log: string[];
}

async function start(h: Harness): Promise<Client> {
  h.sim = await startStorageSim(h.dir.path);
  h.client = connect(StorageArrayServiceClient, h.sim.address, { timeoutMs: CALL_TIMEOUT_MS });
  return h.client;
}

async function createIgroup(client: Client, seed: number): Promise<void> {
  await client.createIgroup({
    requestId: `igroup-${seed}`,
    name: IGROUP,
    protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI,
    osType: OsType.OS_TYPE_LINUX,
    initiators: [INITIATOR],
  });
}

/** Runs the load for `ms`, then SIGKILLs the process while requests are in flight. */
async function loadThenKill(h: Harness, cycle: number, ms: number): Promise<number> {
  dbg(`cycle ${cycle} load ${ms}`);
  const run: LoadRun = { killing: false, failures: [] };
  const loops = Array.from({ length: LOOPS }, (_, i) => clientLoop(h.client!, h.model, run, h.seed, cycle, i));
  await new Promise((resolve) => setTimeout(resolve, ms));
  run.killing = true;
  dbg('killing');
  await h.sim!.kill();
  dbg('killed');
  await Promise.all(loops);
  dbg('loops done');
  h.client!.close();
  if (run.failures.length > 0) throw new Error(`load failed:\n${run.failures.join('\n')}`);
  return [...h.model.luns.values()].filter((l) => l.pending).length;
}

/** After a restart: verify, settle in-flight requests, replay some acknowledged ones, verify again. */
async function checkRestarted(h: Harness, r: () => number): Promise<string[]> {
  const client = h.client!;
  const problems = await verify(client, h.model, h.dir.path);
  if (problems.length > 0) return problems.map((p) => `after restart: ${p}`);
  const luns = await listAllLuns(client);
  const maps = await listAllMaps(client);
  problems.push(...(await retryPending(client, h.model, luns, maps)));
  problems.push(...(await replayAcked(client, h.model, r, 20)));
  if (problems.length > 0) return problems;
  return (await verify(client, h.model, h.dir.path)).map((p) => `after retries and replays: ${p}`);
}

function seedOf(): number {
  const env = process.env.CRASH_SEED;
  return env !== undefined && env !== '' ? Number(env) >>> 0 : Math.floor(Math.random() * 2 ** 31);
}

describe('storage-sim durability under kill -9 (real process)', function () {
  this.timeout(60_000);
  let h: Harness | undefined;

  afterEach(async () => {
    h?.client?.close();
    if (h?.sim) await h.sim.kill();
    h?.dir.remove();
    h = undefined;
  });

  it('keeps every acknowledged LUN, map, delete, unmap and written sector across 3 SIGKILL/restart cycles under 8 concurrent client loops, and in-flight requests settle on retry', async () => {
    const seed = seedOf();
    h = { seed, dir: tempDir('passthru-crash-'), model: new Model(), log: [] };
    const r = rng(seed);
    try {
      await createIgroup(await start(h), seed);
      for (let cycle = 1; cycle <= 3; cycle++) {
        const delay = intIn(r, 400, 1200);
        const inFlight = await loadThenKill(h, cycle, delay);
        h.log.push(`cycle ${cycle}: killed after ${delay} ms with ${inFlight} requests in flight`);
        dbg(h.log[h.log.length - 1]!);
        await start(h);
        const problems = await checkRestarted(h, r);
        expect(problems, `cycle ${cycle}: ${problems.slice(0, 20).join('\n')}`).to.deep.equal([]);
      }
      const c = h.model.counts;
      h.log.push(`verified: ${JSON.stringify(c)}`);
      dbg(h.log[h.log.length - 1]!);
      // The verification must have had something to check, or a pass means nothing.
      expect(c.creates, 'acknowledged creates').to.be.greaterThan(10);
      expect(c.maps, 'acknowledged maps').to.be.greaterThan(10);
      expect(c.writes, 'acknowledged writes').to.be.greaterThan(50);
      expect(c.unmaps + c.deletes, 'acknowledged unmaps and deletes').to.be.greaterThan(3);
      expect(c.lunsVerified, 'LUN checks').to.be.greaterThan(20);
      expect(c.goneVerified, 'deleted-LUN checks').to.be.greaterThan(0);
      expect(c.writtenSectorsVerified, 'written sectors checked').to.be.greaterThan(10_000);
      // How many were in flight at each kill is up to timing; at least one must have been retried.
      expect(c.inFlightRetried, 'in-flight requests retried').to.be.at.least(1);
      expect(c.replays, 'acknowledged requests replayed').to.be.greaterThan(30);
      expect(await h.sim!.stop(), 'exit code of a graceful stop').to.equal(0);
    } catch (err) {
      const e = err as Error;
      e.message = `[CRASH_SEED=${seed}] ${e.message}\n${h.log.join('\n')}`;
      throw e;
    }
  });

  it('its verifier reports an acknowledged sector changed behind the array and an orphan data file (the durability check can fail)', async () => {
    const seed = seedOf();
    h = { seed, dir: tempDir('passthru-crash-'), model: new Model(), log: [] };
    const r = rng(seed + 1);
    try {
      await createIgroup(await start(h), seed);
      await loadThenKill(h, 1, 400);
      await start(h);
      expect(await checkRestarted(h, r)).to.deep.equal([]);

      // Change one acknowledged sector in its LUN's file, and leave a file no LUN owns.
      const victim = [...h.model.luns.values()].find((l) => !l.deleted && l.created && l.sectors.some((id) => id !== 0));
      expect(victim, 'a LUN with acknowledged data').to.not.equal(undefined);
      const s = victim!.sectors.findIndex((id) => id !== 0);
      const file = join(h.dir.path, 'luns', `${victim!.created!.uuid}.img`);
      const fd = openSync(file, 'r+');
      const flipped = Buffer.from(h.model.sectorContent(victim!, s)!);
      flipped[100] = flipped[100]! ^ 0xff;
      writeSync(fd, flipped, 0, SECTOR, s * SECTOR);
      closeSync(fd);
      const orphan = join(h.dir.path, 'luns', `${randomUUID()}.img`);
      writeFileSync(orphan, '');

      const problems = await verify(h.client!, h.model, h.dir.path);
      expect(problems.some((p) => p.includes(victim!.path) && p.includes(`sector ${s} `)), problems.join('\n')).to.equal(true);
      expect(problems.some((p) => p.includes(`orphan file ${orphan}`)), problems.join('\n')).to.equal(true);
    } catch (err) {
      const e = err as Error;
      e.message = `[CRASH_SEED=${seed}] ${e.message}`;
      throw e;
    }
  });
});
