/**
 * Seeded randomness for the chaos run: one stream per actor (each worker, the injector, the
 * administrator) derived from the run's seed, so the same seed gives the same schedule of
 * actions and faults. What the run cannot fix is the interleaving: which call reaches a
 * process first is up to the machine.
 *
 * Payloads are a pure function of (write id, byte position in the volume's data area), so a
 * worker never keeps the bytes it wrote: it recomputes what any byte must hold.
 */

/** mulberry32: small, fast, good enough to drive choices reproducibly. */
export class Rng {
  private a: number;

  constructor(seed: number) {
    this.a = seed >>> 0;
  }

  /** A stream of its own for `name` (a worker, the injector), independent of the order actors draw in. */
  static derive(seed: number, name: string): Rng {
    let h = (seed ^ 0x811c9dc5) >>> 0;
    for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
    return new Rng(mix32(h, seed));
  }

  /** [0, 1) */
  next(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** An integer in [lo, hi]. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[Math.floor(this.next() * items.length)]!;
  }

  /** One of the keys, each as likely as its weight. */
  weighted<K extends string>(weights: Readonly<Record<K, number>>): K {
    const entries = Object.entries(weights) as [K, number][];
    const total = entries.reduce((s, [, w]) => s + w, 0);
    let x = this.next() * total;
    for (const [k, w] of entries) {
      if ((x -= w) < 0) return k;
    }
    return entries[entries.length - 1]![0];
  }

  /** A 32-bit seed for a derived stream. */
  seed(): number {
    return Math.floor(this.next() * 0x1_0000_0000) >>> 0;
  }
}

function mix32(a: number, b: number): number {
  let h = Math.imul(a ^ Math.imul(b, 0x9e3779b1), 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The 32-bit word of write `writeId` at byte position `p` (rounded down to a multiple of 4) of the data area. */
function payloadWord(writeId: number, p: number): number {
  const word = Math.floor(p / 4);
  return mix32(Math.imul(writeId, 0x2545f491) + 1 + Math.floor(word / 0x1_0000_0000), (word >>> 0) ^ 0x5bd1e995);
}

/** The bytes write `writeId` puts at data-area positions [from, from + length). */
export function payload(writeId: number, from: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  fillPayload(out, 0, writeId, from, length);
  return out;
}

/** Writes the payload of `writeId` for positions [from, from + length) into `out` at `at`. */
export function fillPayload(out: Buffer, at: number, writeId: number, from: number, length: number): void {
  let p = from;
  const end = from + length;
  let o = at;
  // Leading bytes up to a word boundary, then whole words, then the tail.
  const byteOf = (q: number): number => (payloadWord(writeId, q) >>> ((q % 4) * 8)) & 0xff;
  while (p < end && p % 4 !== 0) out[o++] = byteOf(p++);
  while (end - p >= 4) {
    out.writeUInt32LE(payloadWord(writeId, p), o);
    o += 4;
    p += 4;
  }
  while (p < end) out[o++] = byteOf(p++);
}
