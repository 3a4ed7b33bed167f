/**
 * What a volume's data area must hold, sector by sector, from what its worker was told.
 *
 * Each 512-byte sector of the data area has a list of possible contents. A content is
 * described, not stored: bytes of write N at data-area position p are `payload(N, p)` (rng.ts),
 * so a sector is a few runs of "write N from byte a to b" over zeros. An acknowledged write
 * makes its bytes certain (every possibility gets them); a write that failed, or was in
 * flight when something died, may have reached each sector or not, so each sector keeps both
 * possibilities: "old or new, never anything else". A possibility list is never narrowed by
 * a read (a write the client saw fail could still land later, which would itself be a broken
 * promise, and is caught by keeping the list honest).
 *
 * The first possibility of each sector is the one where every acknowledged write landed and
 * no failed one did: when a sector matches nothing, its writes are the acknowledged ones lost.
 *
 * Reads in flight see what was possible when they started plus whatever became possible
 * while they ran (a write acknowledged meanwhile may or may not be in what they read).
 */
import { fillPayload } from './rng.js';

export const SECTOR = 512;

/** Bytes [from, to) of a sector written by write `w`. */
interface Run {
  w: number;
  from: number;
  to: number;
}

/** One possible content of a sector: a write id for the whole sector (0: zeros), or runs of writes over zeros. */
type Content = number | readonly Run[];

function runsOf(c: Content): readonly Run[] {
  if (typeof c !== 'number') return c;
  return c === 0 ? [] : [{ w: c, from: 0, to: SECTOR }];
}

/** `c` with bytes [from, to) replaced by write `w`. */
function applyWrite(c: Content, w: number, from: number, to: number): Content {
  if (from === 0 && to === SECTOR) return w;
  const out: Run[] = [];
  for (const r of runsOf(c)) {
    if (r.to <= from || r.from >= to) out.push(r);
    else {
      if (r.from < from) out.push({ w: r.w, from: r.from, to: from });
      if (r.to > to) out.push({ w: r.w, from: to, to: r.to });
    }
  }
  out.push({ w, from, to });
  out.sort((a, b) => a.from - b.from);
  const merged: Run[] = [];
  for (const r of out) {
    const last = merged[merged.length - 1];
    if (last && last.w === r.w && last.to === r.from) merged[merged.length - 1] = { w: r.w, from: last.from, to: r.to };
    else merged.push(r);
  }
  if (merged.length === 1 && merged[0]!.from === 0 && merged[0]!.to === SECTOR) return merged[0]!.w;
  return merged;
}

function keyOf(c: Content): string {
  return typeof c === 'number' ? String(c) : c.map((r) => `${r.w}@${r.from}-${r.to}`).join(',');
}

/** The 512 bytes a content stands for, sector `s` of the data area. */
function render(c: Content, s: number): Buffer {
  const out = Buffer.alloc(SECTOR);
  for (const r of runsOf(c)) fillPayload(out, r.from, r.w, s * SECTOR + r.from, r.to - r.from);
  return out;
}

function dedupe(list: Content[]): Content[] {
  const seen = new Set<string>();
  return list.filter((c) => {
    const k = keyOf(c);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** Sectors [first, last] a byte range [start, end) touches, each with the part of it covered. */
function* sectorsOf(start: number, end: number): Generator<{ s: number; from: number; to: number }> {
  for (let s = Math.floor(start / SECTOR); s * SECTOR < end; s++) {
    yield { s, from: Math.max(start - s * SECTOR, 0), to: Math.min(end - s * SECTOR, SECTOR) };
  }
}

export interface Mismatch {
  /** Data-area byte position of the first wrong byte. */
  at: number;
  wrongBytes: number;
  /** The acknowledged writes the sector should show. */
  writes: number[];
  /** Expected (the acknowledged possibility) and found, a few bytes around the first difference, hex. */
  expected: string;
  found: string;
}

export interface ReadCheck {
  wrongBytes: number;
  mismatches: Mismatch[];
}

class ReadInFlight {
  readonly allowed = new Map<number, Content[]>();
  constructor(
    readonly start: number,
    readonly end: number,
  ) {}
}

/** Where a LUN the run knows about is now. */
export type Place =
  | { kind: 'mounted'; vm: string; key: string; path: string }
  | { kind: 'available' }
  | { kind: 'retained' }
  | { kind: 'deleted' }
  /** An unfinished request holds it (a connect not settled, a create given up): settled at the end. */
  | { kind: 'limbo'; vm: string; key: string; from: 'connect' | 'create' };

function placeWords(p: Place): string {
  if (p.kind === 'mounted') return `mounted by ${p.vm} at ${p.path}`;
  if (p.kind === 'limbo') return `held by an unfinished ${p.from} of ${p.vm} at ${p.key}`;
  return p.kind;
}

/** A LUN the run made or was handed, its volume, and what its data area must hold. */
export class VolumeModel {
  /** Per written sector: one whole-sector content as a number (the common case, kept small), else the list of possibilities. */
  private readonly sectors = new Map<number, number | Content[]>();
  private readonly reads = new Set<ReadInFlight>();
  private where: Place;
  /** Each place it was put in, with when (ms since the epoch), for the report of a failing run. */
  readonly history: { atMs: number; place: string }[] = [];
  /** The passthru volume on it; null while unknown (blank, foreign, or a create given up before it wrote one). */
  volumeId: string | null;
  guestOs: 'windows' | 'linux' | null;
  label: string | null;
  dataOffset: number;
  dataBytes: number;
  /** The array's uuid, once seen (for reading its backing file). */
  uuid?: string;
  /** An administrator wrote bytes at LBA 0: a disk that is neither blank nor passthru. */
  foreign = false;
  /**
   * Volumes an unfinished create or connect chose for this disk (the guest records its choice
   * before the first byte): cut short, its initialization may have landed or not, so the disk
   * may hold one of these instead of the acknowledged volume, and nothing else.
   */
  readonly mayHold = new Set<string>();

  constructor(
    readonly serial: string,
    readonly naaId: string,
    readonly sizeBytes: number,
    init: { place: Place; volumeId?: string | null; guestOs?: 'windows' | 'linux' | null; label?: string | null; dataOffset?: number; dataBytes?: number },
  ) {
    this.where = init.place;
    this.history.push({ atMs: Date.now(), place: placeWords(init.place) });
    this.volumeId = init.volumeId ?? null;
    this.guestOs = init.guestOs ?? null;
    this.label = init.label ?? null;
    this.dataOffset = init.dataOffset ?? 0;
    this.dataBytes = init.dataBytes ?? 0;
  }

  get place(): Place {
    return this.where;
  }

  set place(p: Place) {
    this.where = p;
    this.note(placeWords(p));
  }

  /** Something that happened to it, for the report of a failing run. */
  note(what: string): void {
    this.history.push({ atMs: Date.now(), place: what });
    if (this.history.length > 60) this.history.shift();
  }

  private get(s: number): Content[] {
    const v = this.sectors.get(s);
    if (v === undefined) return [0];
    return typeof v === 'number' ? [v] : v;
  }

  private set(s: number, list: Content[]): void {
    const only = list.length === 1 ? list[0] : undefined;
    this.sectors.set(s, typeof only === 'number' ? only : list);
  }

  /** Whether any byte of the data area was ever written (by a write acknowledged or not). */
  get written(): boolean {
    return this.sectors.size > 0;
  }

  /** A write of data-area bytes [start, end) is about to be sent: each sector may now hold it. */
  beginWrite(w: number, start: number, end: number): void {
    for (const { s, from, to } of sectorsOf(start, end)) {
      const before = this.get(s);
      const added = before.map((c) => applyWrite(c, w, from, to));
      this.set(s, dedupe([...before, ...added]));
      for (const r of this.reads) {
        if (s * SECTOR < r.end && (s + 1) * SECTOR > r.start) r.allowed.set(s, dedupe([...(r.allowed.get(s) ?? []), ...added]));
      }
    }
  }

  /** The write was acknowledged: its bytes are certain now. */
  ackWrite(w: number, start: number, end: number): void {
    for (const { s, from, to } of sectorsOf(start, end)) this.set(s, dedupe(this.get(s).map((c) => applyWrite(c, w, from, to))));
  }

  /** A read of [start, end) is about to be sent. */
  beginRead(start: number, end: number): ReadInFlight {
    const r = new ReadInFlight(start, end);
    for (const { s } of sectorsOf(start, end)) r.allowed.set(s, [...this.get(s)]);
    this.reads.add(r);
    return r;
  }

  /** The bytes the read returned, checked sector by sector against what was possible while it ran. */
  endRead(r: ReadInFlight, data: Buffer): ReadCheck {
    this.reads.delete(r);
    return this.check(r.start, data, (s) => r.allowed.get(s) ?? this.get(s));
  }

  /** Checks bytes read now (nothing in flight) at data-area position `start`. */
  checkNow(start: number, data: Buffer): ReadCheck {
    return this.check(start, data, (s) => this.get(s));
  }

  private check(start: number, data: Buffer, allowed: (s: number) => Content[]): ReadCheck {
    const out: ReadCheck = { wrongBytes: 0, mismatches: [] };
    for (const { s, from, to } of sectorsOf(start, start + data.length)) {
      const got = data.subarray(s * SECTOR + from - start, s * SECTOR + to - start);
      const options = allowed(s);
      let best = Infinity;
      let firstAt = -1;
      for (const c of options) {
        const want = render(c, s).subarray(from, to);
        if (want.equals(got)) {
          best = 0;
          break;
        }
        let wrong = 0;
        let first = -1;
        for (let i = 0; i < got.length; i++) {
          if (got[i] !== want[i]) {
            wrong++;
            if (first < 0) first = i;
          }
        }
        if (wrong < best) {
          best = wrong;
          firstAt = first;
        }
      }
      if (best === 0) continue;
      out.wrongBytes += best;
      if (out.mismatches.length < 8) {
        const acked = options[0]!;
        const want = render(acked, s).subarray(from, to);
        const lo = Math.max(0, firstAt - 4);
        out.mismatches.push({
          at: s * SECTOR + from + firstAt,
          wrongBytes: best,
          writes: [...new Set(runsOf(acked).map((x) => x.w))],
          expected: want.subarray(lo, lo + 16).toString('hex'),
          found: got.subarray(lo, lo + 16).toString('hex'),
        });
      }
    }
    return out;
  }

  /** The acknowledged writes a sector range should show (for naming what was lost). */
  writesIn(start: number, end: number): number[] {
    const ids = new Set<number>();
    for (const { s } of sectorsOf(start, end)) for (const r of runsOf(this.get(s)[0]!)) ids.add(r.w);
    return [...ids];
  }

  /**
   * The byte ranges to read back at the end: every sector ever written, neighbours within
   * `gap` bytes joined (so some never-written bytes are checked to be zeros too), each at most
   * `maxLength` bytes.
   */
  rangesToVerify(gap = 64 * 1024, maxLength = 4 * 1024 * 1024): { start: number; end: number }[] {
    const sectors = [...this.sectors.keys()].sort((a, b) => a - b);
    const out: { start: number; end: number }[] = [];
    for (const s of sectors) {
      const start = s * SECTOR;
      const last = out[out.length - 1];
      if (last && start - last.end <= gap && start + SECTOR - last.start <= maxLength) last.end = Math.min(start + SECTOR, this.dataBytes || Infinity);
      else out.push({ start, end: Math.min(start + SECTOR, this.dataBytes || Infinity) });
    }
    return out;
  }

  describe(): string {
    return `LUN ${this.serial} (${placeWords(this.place)}${this.volumeId ? `, volume ${this.volumeId}` : ''})`;
  }
}
