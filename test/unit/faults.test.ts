/**
 * FaultPlan (storage-sim/faults.ts): what may be injected, and what `decide` tells the gRPC
 * layer to do with each call. Time is passed in explicitly, so nothing here sleeps.
 */
import { expect } from 'chai';
import { DomainError, FailedPreconditionError, InvalidArgumentError } from '../../common/errors.js';
import { FaultPlan, type FaultTiming } from '../../storage-sim/faults.js';
import { ARRAY_METHODS } from '../../storage-sim/service.js';

const METHODS = new Set(['CreateLun', 'MapLun', 'GetLun']);

function plan(enabled = true): FaultPlan {
  return new FaultPlan(enabled, METHODS);
}

function inject(p: FaultPlan, over: Partial<{ method: string; count: number; code: number; message: string; delayMs: number; timing: FaultTiming }> = {}) {
  return p.inject({ method: 'CreateLun', count: 1, code: 14, message: '', delayMs: 0, timing: 'before', ...over });
}

function refused(fn: () => unknown): DomainError {
  try {
    fn();
  } catch (err) {
    expect(err).to.be.instanceOf(DomainError);
    return err as DomainError;
  }
  expect.fail('expected the call to be refused');
}

describe('FaultPlan: disabled', () => {
  it('every admin call on a disabled plan is FAILED_PRECONDITION FAULTS_DISABLED, telling how to enable it', () => {
    const p = plan(false);
    for (const call of [() => inject(p), () => p.setUnavailable(1000), () => p.list(), () => p.clear()]) {
      const err = refused(call);
      expect(err).to.be.instanceOf(FailedPreconditionError);
      expect(err.reason).to.equal('FAULTS_DISABLED');
      expect(err.message).to.match(/--enable-faults/);
    }
  });

  it('a disabled plan lets every call through with no delay', () => {
    const p = plan(false);
    for (const timing of ['before', 'after'] as const) expect(p.decide('CreateLun', timing)).to.deep.equal({ delayMs: 0 });
  });
});

describe('FaultPlan: injecting', () => {
  it('InjectFault returns the fault with an id, the short method name, count, code, default message and timing', () => {
    const p = plan();
    const f = inject(p, { method: '/passthru.storage.v1.StorageArrayService/MapLun', count: 3, code: 10 });
    expect(f).to.deep.equal({ id: 1, method: 'MapLun', remaining: 3, code: 10, message: 'injected fault on MapLun', delayMs: 0, timing: 'before' });
    expect(inject(p, { message: 'boom' })).to.deep.include({ id: 2, method: 'CreateLun', message: 'boom' });
    expect(p.list().faults.map((x) => x.id)).to.deep.equal([1, 2]);
  });

  it('count 0 means one call', () => {
    const p = plan();
    expect(inject(p, { count: 0 }).remaining).to.equal(1);
    expect(p.decide('CreateLun', 'before').fail).to.not.equal(undefined);
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 0 });
  });

  const bad: [string, Parameters<typeof inject>[1], string, RegExp][] = [
    ['an unknown method', { method: 'FormatDisk' }, 'method', /not an RPC of the array: one of CreateLun, MapLun, GetLun/],
    ['an empty method', { method: '' }, 'method', /not an RPC/],
    ['code 17', { code: 17 }, 'code', /not a gRPC status code/],
    ['neither a code nor a delay', { code: 0, delayMs: 0 }, 'code', /status code \(1-16\), a delay_ms, or both/],
    ['a delay over 10 minutes', { delayMs: 600_001 }, 'delay_ms', /more than 600000/],
    ['a count over a million', { count: 1_000_001 }, 'count', /more than 1000000/],
    ['AFTER timing without a code', { code: 0, delayMs: 10, timing: 'after' }, 'timing', /needs a status code/],
    ['a negative code', { code: -1 }, 'code', /code/],
    ['a fractional code', { code: 2.5 }, 'code', /code/],
    ['a negative delay', { delayMs: -5 }, 'delay_ms', /delay_ms/],
    ['a negative count', { count: -1 }, 'count', /count/],
  ];
  for (const [what, over, field, message] of bad) {
    it(`InjectFault with ${what} is INVALID_ARGUMENT on ${field} and adds nothing`, () => {
      const p = plan();
      const err = refused(() => inject(p, over));
      expect(err).to.be.instanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).field).to.equal(field);
      expect(err.message).to.match(message);
      expect(p.list().faults).to.deep.equal([]);
      expect(p.decide(over?.method ?? 'CreateLun', 'before')).to.deep.equal({ delayMs: 0 });
    });
  }

  it('the faults can target every StorageArrayService RPC, and no FaultInjectionService RPC', () => {
    expect(ARRAY_METHODS.size).to.equal(25);
    for (const m of ['CreateLun', 'WriteBlocks', 'ReadReservation', 'GetArray']) expect(ARRAY_METHODS.has(m), m).to.equal(true);
    for (const m of ['InjectFault', 'ClearFaults', 'Check']) expect(ARRAY_METHODS.has(m), m).to.equal(false);
    const p = new FaultPlan(true, ARRAY_METHODS);
    for (const m of ARRAY_METHODS) inject(p, { method: m });
    expect(p.list().faults).to.have.length(25);
  });
});

describe('FaultPlan: deciding', () => {
  it('a fault fails exactly the next N calls of its method with its code and message, then calls pass', () => {
    const p = plan();
    inject(p, { count: 2, code: 8, message: 'quota' });
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 0, fail: { code: 8, message: 'quota' } });
    expect(p.list().faults[0]!.remaining).to.equal(1);
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 0, fail: { code: 8, message: 'quota' } });
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 0 });
    expect(p.list().faults).to.deep.equal([]);
  });

  it('a fault touches only its own method and its own timing', () => {
    const p = plan();
    inject(p, { method: 'MapLun', timing: 'after' });
    expect(p.decide('CreateLun', 'after')).to.deep.equal({ delayMs: 0 });
    expect(p.decide('MapLun', 'before')).to.deep.equal({ delayMs: 0 });
    expect(p.list().faults[0]!.remaining).to.equal(1);
    expect(p.decide('MapLun', 'after').fail?.code).to.equal(14);
    expect(p.list().faults).to.deep.equal([]);
  });

  it('a delay-only fault delays without failing; a delay with a code does both', () => {
    const p = plan();
    inject(p, { code: 0, delayMs: 250 });
    inject(p, { code: 4, delayMs: 100 });
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 250 });
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 100, fail: { code: 4, message: 'injected fault on CreateLun' } });
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 0 });
  });

  it('faults on one method are used in the order they were injected', () => {
    const p = plan();
    inject(p, { code: 5, count: 1 });
    inject(p, { code: 6, count: 2 });
    expect([1, 2, 3, 4].map(() => p.decide('CreateLun', 'before').fail?.code)).to.deep.equal([5, 6, 6, undefined]);
  });

  it('list returns copies: changing them does not change the plan', () => {
    const p = plan();
    inject(p, { count: 1 });
    const listed = p.list().faults[0]!;
    listed.remaining = 100;
    listed.code = 1;
    expect(p.decide('CreateLun', 'before').fail?.code).to.equal(14);
    expect(p.decide('CreateLun', 'before')).to.deep.equal({ delayMs: 0 });
  });
});

describe('FaultPlan: unavailability', () => {
  const t0 = 1_700_000_000_000;

  it('SetUnavailable fails every method before it runs with UNAVAILABLE until the window ends', () => {
    const p = plan();
    expect(p.setUnavailable(5000, t0)).to.equal(t0 + 5000);
    for (const m of ['CreateLun', 'GetLun', 'AnyOther']) {
      expect(p.decide(m, 'before', t0 + 4999)).to.deep.equal({ delayMs: 0, fail: { code: 14, message: 'the storage array is unavailable (injected outage)' } });
    }
    expect(p.decide('CreateLun', 'before', t0 + 5000)).to.deep.equal({ delayMs: 0 });
    expect(p.list().unavailableUntilMs).to.equal(t0 + 5000);
  });

  it('an outage does not use up injected faults and does not fail the after-step of a call already run', () => {
    const p = plan();
    inject(p, { code: 9 });
    p.setUnavailable(1000, t0);
    expect(p.decide('CreateLun', 'before', t0 + 1).fail?.code).to.equal(14);
    expect(p.decide('CreateLun', 'after', t0 + 1)).to.deep.equal({ delayMs: 0 });
    expect(p.decide('CreateLun', 'before', t0 + 2000).fail?.code).to.equal(9);
  });

  it('SetUnavailable 0 ends an outage at once; more than 10 minutes is INVALID_ARGUMENT', () => {
    const p = plan();
    p.setUnavailable(60_000, t0);
    expect(p.setUnavailable(0, t0 + 1)).to.equal(0);
    expect(p.decide('CreateLun', 'before', t0 + 2)).to.deep.equal({ delayMs: 0 });
    const err = refused(() => p.setUnavailable(600_001, t0));
    expect((err as InvalidArgumentError).field).to.equal('duration_ms');
    expect(p.list().unavailableUntilMs).to.equal(0);
  });

  it('SetUnavailable with a negative duration is INVALID_ARGUMENT and leaves the outage as it was', () => {
    const p = plan();
    p.setUnavailable(60_000, t0);
    const err = refused(() => p.setUnavailable(-1, t0));
    expect((err as InvalidArgumentError).field).to.equal('duration_ms');
    expect(p.list().unavailableUntilMs).to.equal(t0 + 60_000);
  });

  it('ClearFaults removes every fault and the outage and says how many things it cleared', () => {
    const p = plan();
    inject(p);
    inject(p, { method: 'MapLun' });
    p.setUnavailable(60_000, t0);
    expect(p.clear()).to.equal(3);
    expect(p.list()).to.deep.equal({ faults: [], unavailableUntilMs: 0 });
    expect(p.decide('CreateLun', 'before', t0 + 1)).to.deep.equal({ delayMs: 0 });
    expect(p.decide('MapLun', 'before', t0 + 1)).to.deep.equal({ delayMs: 0 });
    expect(p.clear()).to.equal(0);
  });
});
