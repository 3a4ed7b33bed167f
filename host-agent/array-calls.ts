/**
 * One array call with the retry policy, whichever way it travels (gRPC, the block portal).
 * UNAVAILABLE and DEADLINE_EXCEEDED are retried with jittered back-off: safe, because every
 * mutating call carries a request id. What still fails comes back as a domain error.
 */
import { status as Code } from '@grpc/grpc-js';
import type { Logger } from '../common/logging.js';
import { fromRemoteStatus, remoteStatus } from '../common/status.js';
import type { RetryPolicy } from './array.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export async function callArray<R>(endpoint: string, retry: RetryPolicy, logger: Logger, method: string, fn: () => Promise<R>): Promise<R> {
  let delay = retry.firstDelayMs;
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      const st = remoteStatus(err);
      if (!st) throw err;
      const retryable = st.code === Code.UNAVAILABLE || st.code === Code.DEADLINE_EXCEEDED;
      if (!retryable || attempt >= retry.attempts) throw fromRemoteStatus(st, { source: 'storage array', reasonPrefix: 'ARRAY', endpoint, method });
      logger.warn('array call retried', { method, attempt, code: Code[st.code], error: st.details });
      await sleep(delay * (0.5 + Math.random()));
      delay = Math.min(delay * 2, retry.maxDelayMs);
    }
  }
}
