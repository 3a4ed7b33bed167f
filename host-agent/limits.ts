/**
 * What one VM may ask of its host: a request rate on its endpoint, operations and block I/O
 * calls in flight at once, and a quota of disks and bytes. A VM over a limit hears
 * RESOURCE_EXHAUSTED with the time to wait (RetryInfo) and nothing is done for it; other
 * VMs are not slowed by its queue, because it has none.
 */
import { ResourceExhaustedError } from '../common/errors.js';
import { formatSize } from '../common/size.js';

export interface GuestLimits {
  /** Requests a second a VM's endpoint takes, sustained (block I/O is bounded by ioInFlight instead). */
  ratePerSecond: number;
  /** Requests a VM may make at once after being quiet. */
  burst: number;
  /** Create, connect and remove operations a VM may have running at once. */
  operationsInFlight: number;
  /** ReadDisk and WriteDisk calls a VM may have in flight at once. */
  ioInFlight: number;
  /** Disks a VM may have (attached, or being created or connected) unless its own quota says otherwise; none = its SCSI locations. */
  maxDisks?: number;
  /** Bytes of disks a VM may have unless its own quota says otherwise; none = no limit. */
  maxBytes?: number;
}

export const DEFAULT_GUEST_LIMITS: GuestLimits = { ratePerSecond: 200, burst: 400, operationsInFlight: 64, ioInFlight: 64 };

interface Bucket {
  tokens: number;
  atMs: number;
}

/** A token bucket per VM: `burst` tokens, refilled at `ratePerSecond`. */
export class RequestRate {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly limits: Pick<GuestLimits, 'ratePerSecond' | 'burst'>) {}

  /** Takes a token for the VM's request, or refuses it with the time until one is there. */
  admit(vmId: string, method: string, nowMs = Date.now()): void {
    const { ratePerSecond: rate, burst } = this.limits;
    let b = this.buckets.get(vmId);
    if (!b) this.buckets.set(vmId, (b = { tokens: burst, atMs: nowMs }));
    b.tokens = Math.min(burst, b.tokens + ((nowMs - b.atMs) * rate) / 1000);
    b.atMs = nowMs;
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return;
    }
    const waitMs = Math.max(1, Math.ceil(((1 - b.tokens) * 1000) / rate));
    throw new ResourceExhaustedError(
      `VM ${vmId} is over its request rate (${rate} a second, bursts of ${burst}); ${method} was not run: retry in ${waitMs} ms`,
      'RATE_LIMITED',
      waitMs,
    );
  }
}

/** Counts what a VM has in flight of one kind; `enter` refuses past the bound. */
export class InFlight {
  private readonly counts = new Map<string, number>();

  constructor(
    private readonly what: string,
    private readonly reason: string,
    private readonly bound: () => number,
    private readonly retryAfterMs: number,
  ) {}

  enter(vmId: string): void {
    const n = this.counts.get(vmId) ?? 0;
    if (n >= this.bound()) {
      throw new ResourceExhaustedError(`VM ${vmId} has ${n} ${this.what} in flight, its limit: wait for one to end, then retry`, this.reason, this.retryAfterMs);
    }
    this.counts.set(vmId, n + 1);
  }

  leave(vmId: string): void {
    const n = (this.counts.get(vmId) ?? 1) - 1;
    if (n <= 0) this.counts.delete(vmId);
    else this.counts.set(vmId, n);
  }
}

/** Refuses a disk that would take the VM past its quota of disks or bytes. */
export function checkQuota(vmId: string, quota: { disks?: number; bytes?: number }, have: { disks: number; bytes: number }, adding: number): void {
  if (quota.disks !== undefined && have.disks + 1 > quota.disks) {
    throw new ResourceExhaustedError(
      `VM ${vmId} has ${have.disks} disks (attached or on their way), its quota: remove one first or ask an administrator for more`,
      'QUOTA_DISKS',
    );
  }
  if (quota.bytes !== undefined && have.bytes + adding > quota.bytes) {
    throw new ResourceExhaustedError(
      `VM ${vmId} has ${formatSize(have.bytes)} of disks and a quota of ${formatSize(quota.bytes)}: ${formatSize(adding)} more does not fit; ask for less, remove a disk, or ask an administrator for more`,
      'QUOTA_BYTES',
    );
  }
}
