/**
 * The chaos run's books: every operation a client attempted and how it ended, every
 * injection on the timeline, and every broken promise found (during the run and at the end),
 * the first of them kept in words for the report.
 */
import { DomainError } from '../common/errors.js';
import type { ReadCheck } from './volume-model.js';

/** A worker's guest died in the middle of a command (a simulated crash at a named point). */
export class GuestCrash extends Error {
  constructor(readonly point: string) {
    super(`the guest was killed at ${point} (simulated crash)`);
    this.name = 'GuestCrash';
  }
}

/** The worker's VM went down (its node failed, or it restarted on another node) while a command ran. */
export class PoweredOff extends Error {
  constructor() {
    super("the guest's VM went down under the command");
    this.name = 'PoweredOff';
  }
}

export type Outcome = 'succeeded' | 'failed';

export interface Attempt {
  id: number;
  actor: string;
  kind: string;
  /** What was asked, in a few words (mount, size, range, LUN). */
  what: string;
  startMs: number;
  endMs?: number;
  outcome?: Outcome;
  /** For failures: the status kind (or crashed / powered-off / internal), reason and message. */
  error?: { kind: string; reason: string; message: string };
  /** Host operations the attempt started or followed. */
  opIds: string[];
  /** It finished a request an earlier attempt had recorded (same request id). */
  resumed?: boolean;
  /** Set by the final checks: the failure left something behind. */
  dirty?: string;
}

export interface Violation {
  atMs: number;
  /** ORPHAN_LUN, LOST_WRITE, WRONG_BYTES, MOUNT_TABLE, CHECK_INVARIANTS:<kind>, ... */
  kind: string;
  subject: string;
  description: string;
  /** lost: an acknowledged operation not in effect; invariant: something left or wrong. */
  counts: 'invariant' | 'lost' | 'bytes';
}

export interface TimelineEvent {
  atMs: number;
  kind: string;
  detail: string;
  outcome: string;
  ms: number;
}

/** The status kinds a client may be told (DESIGN.md's table); anything else surfacing is itself a bug. */
const DOCUMENTED = new Set(['invalid_argument', 'not_found', 'already_exists', 'failed_precondition', 'resource_exhausted', 'aborted', 'unavailable']);

export function classify(err: unknown): { kind: string; reason: string; message: string } {
  if (err instanceof GuestCrash) return { kind: 'crashed', reason: err.point, message: err.message };
  if (err instanceof PoweredOff) return { kind: 'powered-off', reason: 'VM_DOWN', message: err.message };
  if (err instanceof DomainError) return { kind: err.kind, reason: err.reason, message: err.message };
  const e = err as { reason?: unknown; message?: unknown };
  return { kind: 'internal', reason: typeof e?.reason === 'string' ? e.reason : 'NONE', message: err instanceof Error ? err.message : String(err) };
}

/** What the injector makes the array answer with INTERNAL says so; that INTERNAL may reach a client as it is. */
export const INJECTED_MARK = 'chaos: injected';

export function documented(e: { kind: string; message: string }): boolean {
  return DOCUMENTED.has(e.kind) || e.kind === 'crashed' || e.kind === 'powered-off' || (e.kind === 'internal' && e.message.includes(INJECTED_MARK));
}

export class Ledger {
  readonly t0 = Date.now();
  private nextId = 1;
  readonly attempts: Attempt[] = [];
  readonly violations: Violation[] = [];
  readonly timeline: TimelineEvent[] = [];
  /** Attempts not needed for the final checks are folded into counts only. */
  readonly counts = new Map<string, { attempted: number; succeeded: number; failed: number }>();
  readonly errors = new Map<string, number>();
  crashes = { storageSim: 0, hostAgent: 0, guest: 0 };
  failovers = { failNode: 0, moveGroup: 0 };
  resumed = 0;
  lostWrites = new Set<number>();
  wrongBytes = 0;

  now(): number {
    return Date.now() - this.t0;
  }

  begin(actor: string, kind: string, what: string): Attempt {
    const a: Attempt = { id: this.nextId++, actor, kind, what, startMs: this.now(), opIds: [] };
    const c = this.counts.get(kind) ?? { attempted: 0, succeeded: 0, failed: 0 };
    c.attempted++;
    this.counts.set(kind, c);
    return a;
  }

  /** The last attempts of each actor, for the report of a failing run. */
  readonly recent = new Map<string, Attempt[]>();

  private keep(a: Attempt): void {
    const list = this.recent.get(a.actor) ?? [];
    list.push(a);
    if (list.length > 400) list.shift();
    this.recent.set(a.actor, list);
  }

  succeed(a: Attempt): void {
    a.endMs = this.now();
    a.outcome = 'succeeded';
    this.counts.get(a.kind)!.succeeded++;
    if (a.resumed) this.resumed++;
    if (a.opIds.length > 0) this.attempts.push(a);
    this.keep(a);
  }

  fail(a: Attempt, err: unknown): Attempt['error'] {
    a.endMs = this.now();
    a.outcome = 'failed';
    a.error = classify(err);
    this.counts.get(a.kind)!.failed++;
    const key = `${a.kind} ${a.error.kind} ${a.error.reason}`;
    this.errors.set(key, (this.errors.get(key) ?? 0) + 1);
    if (a.error.kind === 'crashed') this.crashes.guest++;
    this.attempts.push(a);
    this.keep(a);
    if (!documented(a.error)) {
      this.violate('UNEXPECTED_ERROR', `${a.actor} ${a.kind} ${a.what}`, `a client was told ${a.error.kind} (${a.error.reason}): ${a.error.message}`, 'invariant');
    } else if (a.error.reason === 'RESERVATION_CONFLICT' && a.actor !== 'admin') {
      // Fencing is between nodes: a guest's own disk refused as reserved by another node means its I/O went by a node that no longer carries it.
      this.violate('GUEST_FENCED', `${a.actor} ${a.kind} ${a.what}`, `a guest was told its own disk is reserved by another node: ${a.error.message}`, 'invariant');
    }
    return a.error;
  }

  violate(kind: string, subject: string, description: string, counts: Violation['counts'] = 'invariant'): void {
    this.violations.push({ atMs: this.now(), kind, subject, description, counts });
  }

  /** Bytes read back that no allowed content explains: counted, their writes named lost, the first described. */
  bytes(check: ReadCheck, subject: string): void {
    if (check.wrongBytes === 0) return;
    this.wrongBytes += check.wrongBytes;
    for (const m of check.mismatches) for (const w of m.writes) this.lostWrites.add(w);
    const first = check.mismatches[0]!;
    this.violate(
      'WRONG_BYTES',
      subject,
      `${check.wrongBytes} bytes read back are neither what acknowledged writes put there nor what a write in flight might have: first at data byte ${first.at} (writes ${first.writes.join(', ') || 'none: zeros'} expected ${first.expected}, found ${first.found})`,
      'bytes',
    );
  }

  event(kind: string, detail: string, startMs: number, outcome: string): void {
    this.timeline.push({ atMs: startMs, kind, detail, outcome, ms: this.now() - startMs });
  }

  get totals(): { attempted: number; succeeded: number; failed: number } {
    let attempted = 0;
    let succeeded = 0;
    let failed = 0;
    for (const c of this.counts.values()) {
      attempted += c.attempted;
      succeeded += c.succeeded;
      failed += c.failed;
    }
    return { attempted, succeeded, failed };
  }
}
