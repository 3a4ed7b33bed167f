/**
 * Fault injection, the array's test feature: fail or delay the next N calls of one RPC, or
 * make the whole array unavailable for a while. Held in memory only; a restart clears it.
 * Plain TypeScript: the gRPC layer asks `decide` before and after each call.
 */
import { FailedPreconditionError, InvalidArgumentError } from '../common/errors.js';

export type FaultTiming = 'before' | 'after';

export interface Fault {
  id: number;
  method: string;
  remaining: number;
  /** A gRPC status code 1-16, or 0 for a delay alone. */
  code: number;
  message: string;
  delayMs: number;
  timing: FaultTiming;
}

export interface FaultDecision {
  delayMs: number;
  /** Fail the call with this status code and message. */
  fail?: { code: number; message: string };
}

const MAX_DELAY_MS = 600_000;
const MAX_COUNT = 1_000_000;

/**
 * Off the wire these are unsigned; a direct caller could still pass -1, which would make a
 * fault that never runs out (its count never reaches zero) or a code no status has.
 */
function requireWhole(field: string, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new InvalidArgumentError(field, `${field} ${value} is not a whole number of 0 or more`);
  }
}

export class FaultPlan {
  private faults: Fault[] = [];
  private nextId = 1;
  private unavailableUntilMs = 0;

  constructor(
    readonly enabled: boolean,
    /** The RPC names faults may target, e.g. MapLun. */
    private readonly methods: ReadonlySet<string>,
  ) {}

  private requireEnabled(): void {
    if (!this.enabled) {
      throw new FailedPreconditionError(
        'fault injection is disabled on this array: start storage-sim with --enable-faults to use it',
        'FAULTS_DISABLED',
      );
    }
  }

  inject(req: { method: string; count: number; code: number; message: string; delayMs: number; timing: FaultTiming }): Fault {
    this.requireEnabled();
    const method = req.method.includes('/') ? req.method.slice(req.method.lastIndexOf('/') + 1) : req.method;
    if (!this.methods.has(method)) {
      throw new InvalidArgumentError('method', `method ${JSON.stringify(req.method)} is not an RPC of the array: one of ${[...this.methods].join(', ')}`);
    }
    requireWhole('count', req.count);
    requireWhole('code', req.code);
    requireWhole('delay_ms', req.delayMs);
    if (req.code > 16) throw new InvalidArgumentError('code', `code ${req.code} is not a gRPC status code (1-16, or 0 for a delay alone)`);
    if (req.code === 0 && req.delayMs === 0) {
      throw new InvalidArgumentError('code', 'a fault needs a status code (1-16), a delay_ms, or both');
    }
    if (req.delayMs > MAX_DELAY_MS) throw new InvalidArgumentError('delay_ms', `delay_ms ${req.delayMs} is more than ${MAX_DELAY_MS}`);
    if (req.count > MAX_COUNT) throw new InvalidArgumentError('count', `count ${req.count} is more than ${MAX_COUNT}`);
    if (req.timing === 'after' && req.code === 0) {
      throw new InvalidArgumentError('timing', 'a fault after the call needs a status code: it loses the reply');
    }
    const fault: Fault = {
      id: this.nextId++,
      method,
      remaining: req.count === 0 ? 1 : req.count,
      code: req.code,
      message: req.message || `injected fault on ${method}`,
      delayMs: req.delayMs,
      timing: req.timing,
    };
    this.faults.push(fault);
    return { ...fault };
  }

  setUnavailable(durationMs: number, nowMs = Date.now()): number {
    this.requireEnabled();
    requireWhole('duration_ms', durationMs);
    if (durationMs > MAX_DELAY_MS) throw new InvalidArgumentError('duration_ms', `duration_ms ${durationMs} is more than ${MAX_DELAY_MS}`);
    this.unavailableUntilMs = durationMs === 0 ? 0 : nowMs + durationMs;
    return this.unavailableUntilMs;
  }

  list(): { faults: Fault[]; unavailableUntilMs: number } {
    this.requireEnabled();
    return { faults: this.faults.map((f) => ({ ...f })), unavailableUntilMs: this.unavailableUntilMs };
  }

  clear(): number {
    this.requireEnabled();
    const n = this.faults.length + (this.unavailableUntilMs > 0 ? 1 : 0);
    this.faults = [];
    this.unavailableUntilMs = 0;
    return n;
  }

  /** What to do with a call of `method` at this point; consumes one use of a matching fault. */
  decide(method: string, timing: FaultTiming, nowMs = Date.now()): FaultDecision {
    if (!this.enabled) return { delayMs: 0 };
    if (timing === 'before' && nowMs < this.unavailableUntilMs) {
      return { delayMs: 0, fail: { code: 14, message: 'the storage array is unavailable (injected outage)' } };
    }
    const i = this.faults.findIndex((f) => f.method === method && f.timing === timing);
    if (i < 0) return { delayMs: 0 };
    const f = this.faults[i]!;
    if (--f.remaining === 0) this.faults.splice(i, 1);
    return { delayMs: f.delayMs, ...(f.code !== 0 ? { fail: { code: f.code, message: f.message } } : {}) };
  }
}
