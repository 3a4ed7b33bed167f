/** The per-VM limits as plain arithmetic: the token bucket, the in-flight count, the quota. */
import { expect } from 'chai';
import { ResourceExhaustedError } from '../../common/errors.js';
import { checkQuota, InFlight, RequestRate } from '../../host-agent/limits.js';

function refusal(f: () => void): ResourceExhaustedError {
  try {
    f();
  } catch (err) {
    expect(err).to.be.instanceOf(ResourceExhaustedError);
    return err as ResourceExhaustedError;
  }
  throw new Error('expected a refusal');
}

describe('host-agent per-VM limits', () => {
  it('a VM gets its burst at once, then one request per 1/rate seconds; the refusal says how long until the next', () => {
    const r = new RequestRate({ ratePerSecond: 10, burst: 3 });
    for (let i = 0; i < 3; i++) r.admit('vm1', 'ListDisks', 1000);
    const e = refusal(() => r.admit('vm1', 'ListDisks', 1000));
    expect(e.reason).to.equal('RATE_LIMITED');
    expect(e.retryAfterMs).to.equal(100);
    expect(e.message).to.match(/vm1.*10 a second.*ListDisks/);
    expect(refusal(() => r.admit('vm1', 'GetSelf', 1060)).retryAfterMs).to.equal(40);
    r.admit('vm1', 'GetSelf', 1100);
    // Another VM has its own bucket.
    r.admit('vm2', 'GetSelf', 1100);
    // A quiet VM refills to its burst, not beyond.
    for (let i = 0; i < 3; i++) r.admit('vm1', 'x', 60_000);
    refusal(() => r.admit('vm1', 'x', 60_000));
  });

  it('in flight: the bound refuses the next one with its reason and wait; leaving makes room, per VM', () => {
    const f = new InFlight('block I/O calls', 'TOO_MUCH_IO_IN_FLIGHT', () => 2, 5);
    f.enter('vm1');
    f.enter('vm1');
    f.enter('vm2');
    const e = refusal(() => f.enter('vm1'));
    expect(e).to.include({ reason: 'TOO_MUCH_IO_IN_FLIGHT', retryAfterMs: 5 });
    f.leave('vm1');
    f.enter('vm1');
  });

  it('quota: the disk count and the bytes, each only when set', () => {
    checkQuota('vm1', {}, { disks: 500, bytes: 2 ** 50 }, 2 ** 40);
    expect(refusal(() => checkQuota('vm1', { disks: 2 }, { disks: 2, bytes: 0 }, 1)).reason).to.equal('QUOTA_DISKS');
    checkQuota('vm1', { disks: 2 }, { disks: 1, bytes: 0 }, 1);
    expect(refusal(() => checkQuota('vm1', { bytes: 100 }, { disks: 0, bytes: 60 }, 41)).reason).to.equal('QUOTA_BYTES');
    checkQuota('vm1', { bytes: 100 }, { disks: 0, bytes: 60 }, 40);
  });
});
