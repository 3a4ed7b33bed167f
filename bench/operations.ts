/**
 * Following a guest's operation to its end, as the benchmarks do: WatchOperation on the VM's
 * socket until the final state, counted so a run can report how the wire contract behaved.
 */
import { status as GrpcStatus, type ServiceError } from '@grpc/grpc-js';
import type { PromiseClient } from '../common/client.js';
import { OperationState, type GuestServiceClient, type Operation, type WatchOperationResponse } from '../proto/gen/passthru/host/v1/host.js';

/** How long one operation may take before the benchmark gives up on it. */
export const OP_TIMEOUT_MS = 120_000;
/** How long a stream may stay open after its final message before it is cancelled here. */
const WATCH_END_GRACE_MS = 2_000;

export function isFinal(state: OperationState): boolean {
  return state === OperationState.OPERATION_STATE_SUCCEEDED || state === OperationState.OPERATION_STATE_FAILED;
}

/** The error with what was being done in front of its message (the original kept as its cause). */
export function annotate(what: string, err: unknown): Error {
  const e = err instanceof Error ? err : new Error(String(err));
  return new Error(`${what}: ${e.message}`, { cause: e });
}

/** Counters of the wire contract's behaviour, reported in a benchmark's JSON. */
export interface WatchStats {
  /** Operations already final in the CreateDisk/RemoveDisk answer (no Watch needed). */
  finalAtOnce: number;
  streams: number;
  /** Streams the server had not ended WATCH_END_GRACE_MS after their final message (cancelled here). */
  notEndedByServer: number;
  /** Streams past their final message and not yet ended (read when the run is over). */
  awaitingEnd: number;
}

export function newWatchStats(): WatchStats {
  return { finalAtOnce: 0, streams: 0, notEndedByServer: 0, awaitingEnd: 0 };
}

/**
 * Resolves once the operation is SUCCEEDED as WatchOperation reports it; throws with its
 * error once FAILED, or when the stream ends or breaks before a final state.
 */
export function untilDone(guest: PromiseClient<GuestServiceClient>, first: Operation | undefined, what: string, stats: WatchStats = newWatchStats()): Promise<Operation> {
  if (!first) return Promise.reject(new Error(`${what}: the answer carried no operation`));
  const settle = (op: Operation): Operation => {
    if (op.state === OperationState.OPERATION_STATE_SUCCEEDED) return op;
    const code = op.error ? (GrpcStatus[op.error.code] ?? String(op.error.code)) : 'no status';
    throw new Error(`${what}: operation ${op.id} FAILED (${code}): ${op.error?.message ?? '(no message)'}`);
  };
  if (isFinal(first.state)) {
    stats.finalAtOnce++;
    return Promise.resolve().then(() => settle(first));
  }
  stats.streams++;
  return new Promise<Operation>((resolve, reject) => {
    const call = guest.raw.watchOperation({ operationId: first.id }, { deadline: Date.now() + OP_TIMEOUT_MS });
    let last = first;
    let done = false;
    let ended = false;
    call.on('data', (msg: WatchOperationResponse) => {
      if (done) return;
      if (msg.operation) last = msg.operation;
      if (!isFinal(last.state)) return;
      done = true;
      stats.awaitingEnd++;
      try {
        resolve(settle(last));
      } catch (err) {
        reject(err);
      }
      // The contract ends the stream after the final state; do not leave one open if it does not.
      setTimeout(() => {
        if (!ended) {
          stats.notEndedByServer++;
          call.cancel();
        }
      }, WATCH_END_GRACE_MS).unref();
    });
    // Always listened to, so a late error (e.g. the cancel above) is never unhandled.
    call.on('error', (err: ServiceError) => {
      if (done && !ended) stats.awaitingEnd--;
      ended = true;
      if (done) return;
      done = true;
      reject(annotate(`${what}: WatchOperation ${first.id}`, err));
    });
    call.on('end', () => {
      if (done && !ended) stats.awaitingEnd--;
      ended = true;
      if (done) return;
      done = true;
      reject(new Error(`${what}: WatchOperation ${first.id} ended with the operation still ${OperationState[last.state]}`));
    });
  });
}
