/**
 * Domain errors: what went wrong, in the domain's words, with nothing of gRPC in them.
 * Each class has one meaning from DESIGN.md's error table; `common/status.ts` is the one
 * place that turns them into gRPC status codes.
 */

export type ErrorKind =
  | 'invalid_argument'
  | 'not_found'
  | 'already_exists'
  | 'failed_precondition'
  | 'resource_exhausted'
  | 'aborted'
  | 'unavailable'
  | 'permission_denied';

export abstract class DomainError extends Error {
  abstract readonly kind: ErrorKind;
  /** A short machine-readable reason, e.g. LUN_MAPPED (sent as google.rpc.ErrorInfo). */
  readonly reason: string;

  constructor(message: string, reason: string) {
    super(message);
    this.name = new.target.name;
    this.reason = reason;
  }
}

/** Malformed input. `field` names the offending request field. */
export class InvalidArgumentError extends DomainError {
  readonly kind = 'invalid_argument';
  constructor(
    readonly field: string,
    message: string,
    reason = 'INVALID_ARGUMENT',
  ) {
    super(message, reason);
  }
}

export class NotFoundError extends DomainError {
  readonly kind = 'not_found';
  constructor(
    readonly resourceType: string,
    readonly resourceName: string,
    message = `${resourceType} ${JSON.stringify(resourceName)} does not exist`,
  ) {
    super(message, `${resourceType.toUpperCase().replace(/[^A-Z0-9]+/g, '_')}_NOT_FOUND`);
  }
}

/** The same name with different parameters. */
export class AlreadyExistsError extends DomainError {
  readonly kind = 'already_exists';
  constructor(
    readonly resourceType: string,
    readonly resourceName: string,
    message: string,
  ) {
    super(message, `${resourceType.toUpperCase().replace(/[^A-Z0-9]+/g, '_')}_ALREADY_EXISTS`);
  }
}

export class FailedPreconditionError extends DomainError {
  readonly kind = 'failed_precondition';
  constructor(message: string, reason: string) {
    super(message, reason);
  }
}

/** Out of something. `retryAfterMs`, when set, is sent as google.rpc.RetryInfo. */
export class ResourceExhaustedError extends DomainError {
  readonly kind = 'resource_exhausted';
  constructor(
    message: string,
    reason: string,
    readonly retryAfterMs?: number,
  ) {
    super(message, reason);
  }
}

/** Another operation holds the same resource. */
export class AbortedError extends DomainError {
  readonly kind = 'aborted';
  constructor(message: string, reason = 'BUSY') {
    super(message, reason);
  }
}

/** A dependency cannot be reached; the caller may retry. */
export class UnavailableError extends DomainError {
  readonly kind = 'unavailable';
  constructor(message: string, reason = 'UNAVAILABLE') {
    super(message, reason);
  }
}

export class PermissionDeniedError extends DomainError {
  readonly kind = 'permission_denied';
  constructor(message: string, reason = 'PERMISSION_DENIED') {
    super(message, reason);
  }
}

/**
 * A failure with no meaning in DESIGN.md's table (a dependency's INTERNAL, UNKNOWN, ...)
 * whose message is still safe and useful to show as it is: the dependency's own words.
 */
export class ReportableError extends Error {
  constructor(
    message: string,
    readonly reason: string,
  ) {
    super(message);
    this.name = 'ReportableError';
  }
}

export function isDomainError(err: unknown): err is DomainError {
  return err instanceof DomainError;
}
