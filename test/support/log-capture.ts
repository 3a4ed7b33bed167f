/** A winston logger that keeps its JSON lines, for tests that read what a service logged. */
import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../common/logging.js';

export function capturingLogger(level = 'warn'): { logger: Logger; raw: () => string; lines: () => Record<string, unknown>[] } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(...chunk.toString('utf8').split('\n').filter((l) => l !== ''));
      cb();
    },
  });
  return {
    logger: createLogger({ service: 'test', level, stream }),
    raw: () => lines.join('\n'),
    lines: () => lines.map((l) => JSON.parse(l) as Record<string, unknown>),
  };
}
