import { Metadata, status as Code, type ServiceError, type StatusObject } from '@grpc/grpc-js';
import { Any } from '../proto/gen/google/protobuf/any.js';
import { Status } from '../proto/gen/google/rpc/status.js';
import { BadRequest, ErrorInfo, ResourceInfo, RetryInfo } from '../proto/gen/google/rpc/error_details.js';
import {
  AbortedError,
  AlreadyExistsError,
  DomainError,
  FailedPreconditionError,
  InvalidArgumentError,
  isDomainError,
  NotFoundError,
  PermissionDeniedError,
  ReportableError,
  ResourceExhaustedError,
  UnavailableError,
  type ErrorKind,
} from './errors.js';
import type { Logger } from './logging.js';

/** The one mapping from domain errors to gRPC status (DESIGN.md, "Errors"). */
export const statusOfKind: Record<ErrorKind, Code> = {
  invalid_argument: Code.INVALID_ARGUMENT,
  not_found: Code.NOT_FOUND,
  already_exists: Code.ALREADY_EXISTS,
  failed_precondition: Code.FAILED_PRECONDITION,
  resource_exhausted: Code.RESOURCE_EXHAUSTED,
  aborted: Code.ABORTED,
  unavailable: Code.UNAVAILABLE,
  permission_denied: Code.PERMISSION_DENIED,
};

export const ERROR_DOMAIN = 'passthru.dev';
const DETAILS_KEY = 'grpc-status-details-bin';
const TYPE_PREFIX = 'type.googleapis.com/';

function pack(typeName: string, value: Uint8Array): Any {
  return { typeUrl: TYPE_PREFIX + typeName, value: Buffer.from(value) };
}

function detailsOf(err: DomainError): Any[] {
  const details: Any[] = [
    pack('google.rpc.ErrorInfo', ErrorInfo.encode({ reason: err.reason, domain: ERROR_DOMAIN, metadata: {} }).finish()),
  ];
  const e = err as DomainError & Record<string, unknown>;
  if (err.kind === 'invalid_argument' && typeof e.field === 'string') {
    details.push(
      pack(
        'google.rpc.BadRequest',
        BadRequest.encode({ fieldViolations: [{ field: e.field, description: err.message }] }).finish(),
      ),
    );
  }
  if ((err.kind === 'not_found' || err.kind === 'already_exists') && typeof e.resourceType === 'string') {
    details.push(
      pack(
        'google.rpc.ResourceInfo',
        ResourceInfo.encode({
          resourceType: e.resourceType,
          resourceName: String(e.resourceName ?? ''),
          owner: '',
          description: err.message,
        }).finish(),
      ),
    );
  }
  if (err.kind === 'resource_exhausted' && typeof e.retryAfterMs === 'number') {
    const ms = e.retryAfterMs;
    details.push(
      pack(
        'google.rpc.RetryInfo',
        RetryInfo.encode({
          retryDelay: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 },
        }).finish(),
      ),
    );
  }
  return details;
}

/**
 * Turns anything a handler threw into the status sent to the client. Domain errors keep
 * their message and carry google.rpc details; anything else is INTERNAL with a generic text,
 * its stack going to the log only.
 */
export function toStatus(err: unknown, logger?: Logger, context: Record<string, unknown> = {}): Partial<StatusObject> {
  if (isDomainError(err)) {
    const code = statusOfKind[err.kind];
    const metadata = new Metadata();
    const body = Status.encode({ code, message: err.message, details: detailsOf(err) }).finish();
    metadata.set(DETAILS_KEY, Buffer.from(body));
    return { code, details: err.message, metadata };
  }
  if (isServiceError(err)) {
    // Already a status (e.g. a dependency's answer passed through on purpose).
    return { code: err.code, details: err.details, metadata: err.metadata };
  }
  if (err instanceof ReportableError) {
    // A dependency's failure with no meaning in the table (its INTERNAL, UNKNOWN, ...): INTERNAL,
    // but in the dependency's own words and with its reason, as an operation's error shows it.
    // Without this a call the handler makes itself (CreateDisk's pool check) said only
    // "internal error" while the same failure inside a workflow step named the array and why.
    logger?.error('dependency failed', { ...context, error: err.stack });
    const metadata = new Metadata();
    const details = [pack('google.rpc.ErrorInfo', ErrorInfo.encode({ reason: err.reason, domain: ERROR_DOMAIN, metadata: {} }).finish())];
    metadata.set(DETAILS_KEY, Buffer.from(Status.encode({ code: Code.INTERNAL, message: err.message, details }).finish()));
    return { code: Code.INTERNAL, details: err.message, metadata };
  }
  logger?.error('internal error', { ...context, error: err instanceof Error ? err.stack : String(err) });
  return { code: Code.INTERNAL, details: 'internal error; the server log has the details' };
}

export function isServiceError(err: unknown): err is ServiceError {
  return (
    typeof err === 'object' &&
    err !== null &&
    typeof (err as ServiceError).code === 'number' &&
    'details' in err &&
    'metadata' in err
  );
}

export interface StatusDetails {
  reason?: string;
  retryAfterMs?: number;
  fieldViolations: { field: string; description: string }[];
}

/** Reads the google.rpc details a passthru server attached to an error (client side). */
export function statusDetails(err: ServiceError): StatusDetails {
  const out: StatusDetails = { fieldViolations: [] };
  const raw = err.metadata?.get(DETAILS_KEY)?.[0];
  if (!raw || typeof raw === 'string') return out;
  const st = Status.decode(raw);
  for (const d of st.details) {
    const type = d.typeUrl.slice(d.typeUrl.lastIndexOf('/') + 1);
    if (type === 'google.rpc.ErrorInfo') out.reason = ErrorInfo.decode(d.value).reason;
    else if (type === 'google.rpc.RetryInfo') {
      const delay = RetryInfo.decode(d.value).retryDelay;
      if (delay) out.retryAfterMs = Number(delay.seconds) * 1000 + Math.floor(delay.nanos / 1_000_000);
    } else if (type === 'google.rpc.BadRequest') out.fieldViolations.push(...BadRequest.decode(d.value).fieldViolations);
  }
  return out;
}

/**
 * A status a dependency answered with, whatever carried it (gRPC, the block portal): the
 * code, its message and the details a passthru server attaches.
 */
export interface RemoteStatus {
  code: number;
  details: string;
  reason?: string;
  /** The request field at fault, for INVALID_ARGUMENT. */
  field?: string;
  retryAfterMs?: number;
}

/** A dependency's refusal that did not come as a gRPC ServiceError. */
export class RemoteStatusError extends Error {
  constructor(readonly status: RemoteStatus) {
    super(status.details);
    this.name = 'RemoteStatusError';
  }
}

/** The status a gRPC error carries, with its google.rpc details read. */
export function remoteStatusOf(err: ServiceError): RemoteStatus {
  const d = statusDetails(err);
  return { code: err.code, details: err.details || err.message, reason: d.reason, field: d.fieldViolations[0]?.field, retryAfterMs: d.retryAfterMs };
}

/** A dependency's status from a gRPC error or a RemoteStatusError; undefined for anything else. */
export function remoteStatus(err: unknown): RemoteStatus | undefined {
  if (err instanceof RemoteStatusError) return err.status;
  return isServiceError(err) ? remoteStatusOf(err) : undefined;
}

/**
 * The way back (client side): a dependency's status as a domain error, its message kept and
 * attributed to the dependency, its details (reason, field, retry delay) carried over.
 * UNAVAILABLE and DEADLINE_EXCEEDED both mean it cannot be reached; a code with no domain
 * meaning becomes a ReportableError.
 */
export function fromRemoteStatus(st: RemoteStatus, from: { source: string; reasonPrefix: string; endpoint: string; method: string }): Error {
  const name = Code[st.code] ?? String(st.code);
  if (st.code === Code.UNAVAILABLE || st.code === Code.DEADLINE_EXCEEDED) {
    return new UnavailableError(
      `${from.source} at ${from.endpoint} cannot be reached (${from.method}: ${st.details || name}); retry later`,
      `${from.reasonPrefix}_UNAVAILABLE`,
    );
  }
  const where = { object: `${from.source} object`, id: from.method, field: st.field || from.method, ...(st.retryAfterMs !== undefined ? { retryAfterMs: st.retryAfterMs } : {}) };
  return (
    domainErrorOfCode(st.code, `${from.source}: ${st.details}`, st.reason || `${from.reasonPrefix}_${name}`, where) ??
    new ReportableError(`${from.source}: ${from.method} failed with ${name}: ${st.details || 'no details'}`, `${from.reasonPrefix}_${name}`)
  );
}

/**
 * The domain error a status code stands for (the inverse of statusOfKind), or undefined for
 * a code with no domain meaning (UNAVAILABLE included: whether the peer or the path to it
 * failed is the caller's to say). `object` and `id` name what a NOT_FOUND or ALREADY_EXISTS
 * is about, `field` what an INVALID_ARGUMENT is about.
 */
export function domainErrorOfCode(
  code: number,
  message: string,
  reason: string,
  where: { object: string; id: string; field: string; retryAfterMs?: number },
): DomainError | undefined {
  switch (code) {
    case Code.INVALID_ARGUMENT:
      return new InvalidArgumentError(where.field, message, reason);
    case Code.NOT_FOUND:
      return Object.assign(new NotFoundError(where.object, where.id, message), { reason });
    case Code.ALREADY_EXISTS:
      return Object.assign(new AlreadyExistsError(where.object, where.id, message), { reason });
    case Code.FAILED_PRECONDITION:
      return new FailedPreconditionError(message, reason);
    case Code.RESOURCE_EXHAUSTED:
      return new ResourceExhaustedError(message, reason, where.retryAfterMs);
    case Code.ABORTED:
      return new AbortedError(message, reason);
    case Code.PERMISSION_DENIED:
      return new PermissionDeniedError(message, reason);
    default:
      return undefined;
  }
}

/** fromRemoteStatus for a gRPC error. */
export function fromStatus(err: ServiceError, from: { source: string; reasonPrefix: string; endpoint: string; method: string }): Error {
  return fromRemoteStatus(remoteStatusOf(err), from);
}
