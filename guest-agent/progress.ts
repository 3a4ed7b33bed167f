/**
 * The live progress display of a guest-agent command on a terminal: a line per step as it
 * ends (the host's workflow steps from WatchOperation, then the guest's own: discover,
 * initialize, mount, report), and the step under way on one line rewritten in place. Only
 * for a terminal; the CLI shows nothing of it under --json or when stderr is not a TTY.
 */
import type { Progress } from './volumes.js';

const CLEAR = '\r\x1b[K';

/** How a step that ended is shown: a mark, then a word. */
const ENDED: Record<string, [string, string]> = {
  finished: ['ok', 'done'],
  skipped: ['--', 'skipped'],
  failed: ['!!', 'FAILED'],
  undone: ['<-', 'undone'],
};

export class ProgressDisplay {
  /** The line shown in place, if any (it is cleared before anything else is written). */
  private live = false;
  private readonly started = new Map<string, number>();

  constructor(private readonly out: NodeJS.WritableStream) {}

  private line(text: string): void {
    this.out.write(`${this.live ? CLEAR : ''}${text}\n`);
    this.live = false;
  }

  private inPlace(text: string): void {
    this.out.write(`${CLEAR}${text}`);
    this.live = true;
  }

  show(p: Progress): void {
    switch (p.kind) {
      case 'note':
        this.line(`  ${p.message}`);
        return;
      case 'operation':
        this.line(`  host operation ${p.operationId}:`);
        return;
      case 'retry':
        this.inPlace(`  ... ${p.what}: ${p.error}; trying again in ${p.delayMs} ms`);
        return;
      case 'host-step': {
        const name = p.step.padEnd(17);
        if (p.event === 'started' || p.event === 'undo_started') {
          this.started.set(p.step, p.timeMs);
          this.inPlace(`  ... ${name}${p.event === 'undo_started' ? ' undoing' : ''}`);
          return;
        }
        const since = this.started.get(p.step);
        const took = p.event === 'finished' && since !== undefined ? ` (${Math.max(0, p.timeMs - since)} ms)` : '';
        const [mark, word] = ENDED[p.event] ?? ['  ', p.event];
        this.line(`  ${mark}  ${name}${word}${took}${p.message ? `: ${p.message}` : ''}`);
        return;
      }
      case 'guest-step':
        if (p.done) this.line(`  ok  ${p.step.padEnd(17)}${p.detail}`);
        else this.inPlace(`  ... ${p.step.padEnd(17)}${p.detail}`);
        return;
    }
  }

  /** Clears the line in place, so the command's own output starts on a clean line. */
  end(): void {
    if (this.live) this.out.write(CLEAR);
    this.live = false;
  }
}
