/**
 * Discovery: after the host reports a disk attached, the guest rescans its SCSI bus until a
 * disk with the reported serial and NAA id sits at the reported (controller, location),
 * backing off between rescans, and gives up with a clear error after a bounded time. A disk
 * is never taken by its position alone: another disk at that address, or the right disk at
 * another address, is not it.
 */
import { UnavailableError } from '../common/errors.js';
import type { BusDevice, GuestOsDriver } from './guest-os.js';
import type { AttachedDisk, ScsiAddress } from './host-link.js';

export interface Backoff {
  firstDelayMs: number;
  maxDelayMs: number;
}

export interface DiscoveryPolicy extends Backoff {
  timeoutMs: number;
}

export const DEFAULT_DISCOVERY: DiscoveryPolicy = { timeoutMs: 30_000, firstDelayMs: 20, maxDelayMs: 1_000 };

export interface Clock {
  now(): number;
  sleep(ms: number): Promise<void>;
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms) => new Promise((r) => setTimeout(r, ms)),
};

export const scsi = (a: ScsiAddress): string => `${a.controller}:${a.location}`;

/** NAA ids compare without case and without a `naa.` prefix. */
const naa = (id: string): string => id.toLowerCase().replace(/^naa\./, '');

function isIt(d: BusDevice, want: AttachedDisk): boolean {
  return d.serial === want.serial && (d.naaId === '' || want.naaId === '' || naa(d.naaId) === naa(want.naaId));
}

/** Where the bus left things, in words, for the timeout message. */
function whatWasSeen(devices: BusDevice[] | undefined, want: AttachedDisk, lastError: Error | undefined): string {
  if (!devices) return `no rescan answered${lastError ? ` (last error: ${lastError.message})` : ''}`;
  const at = devices.find((d) => d.address.controller === want.address.controller && d.address.location === want.address.location);
  const elsewhere = devices.find((d) => isIt(d, want));
  const parts = [at ? `at SCSI ${scsi(want.address)} the bus shows serial ${at.serial} (NAA ${at.naaId})` : `SCSI ${scsi(want.address)} is empty on the bus`];
  if (elsewhere) parts.push(`serial ${want.serial} shows at SCSI ${scsi(elsewhere.address)} instead, which is not where the host attached it`);
  return parts.join('; ');
}

/**
 * Rescans until the disk is at its address; returns the bus's view of it. Errors for which
 * `transient` says true count as a rescan that did not find it; others end discovery.
 */
export async function discover(
  os: GuestOsDriver,
  want: AttachedDisk,
  policy: DiscoveryPolicy,
  clock: Clock,
  transient: (err: unknown) => boolean = () => false,
): Promise<{ device: BusDevice; rescans: number }> {
  const start = clock.now();
  let delay = policy.firstDelayMs;
  let rescans = 0;
  let devices: BusDevice[] | undefined;
  let lastError: Error | undefined;
  for (;;) {
    rescans++;
    try {
      devices = await os.rescanBus();
      const at = devices.find((d) => d.address.controller === want.address.controller && d.address.location === want.address.location);
      if (at && isIt(at, want)) return { device: at, rescans };
    } catch (err) {
      if (!transient(err)) throw err;
      lastError = err as Error;
    }
    const left = start + policy.timeoutMs - clock.now();
    if (left <= 0) {
      throw new UnavailableError(
        `the disk the host attached (serial ${want.serial}, NAA ${want.naaId}) did not appear at SCSI ${scsi(want.address)} within ${policy.timeoutMs} ms (${rescans} rescans): ${whatWasSeen(devices, want, lastError)}`,
        'DISCOVERY_TIMEOUT',
      );
    }
    await clock.sleep(Math.min(delay, left));
    delay = Math.min(delay * 2, policy.maxDelayMs);
  }
}
