/** Assertions on the gRPC status a refused call comes back with. */
import type { ServiceError } from '@grpc/grpc-js';
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statusDetails } from '../../common/status.js';

/**
 * Awaits a call that must fail with this code and a message a person can act on; returns the
 * error. `expected` checks more: a RegExp the message, a string (or any of a list) the
 * google.rpc ErrorInfo reason or a BadRequest field.
 */
export async function expectStatus(call: Promise<unknown>, code: Code, expected?: string | string[] | RegExp): Promise<ServiceError> {
  let err: ServiceError | undefined;
  try {
    await call;
  } catch (e) {
    err = e as ServiceError;
  }
  expect(err, `expected ${Code[code]}, but the call succeeded`).to.not.equal(undefined);
  expect(Code[err!.code], err!.details).to.equal(Code[code]);
  expect(err!.details, 'a message a person can act on').to.be.a('string').and.not.equal('');
  if (expected instanceof RegExp) {
    expect(err!.details).to.match(expected);
  } else if (expected !== undefined) {
    const d = statusDetails(err!);
    const seen = [d.reason, ...d.fieldViolations.map((f) => f.field)];
    const wanted = Array.isArray(expected) ? expected : [expected];
    expect(
      seen.some((s) => s !== undefined && wanted.includes(s)),
      `reason/field ${JSON.stringify(seen)} of "${err!.details}" names one of ${JSON.stringify(wanted)}`,
    ).to.equal(true);
  }
  return err!;
}
