/**
 * A VM's line to its host agent, with a switch on it: each worker talks to its VM's
 * GuestService through a Unix socket of its own that forwards every connection, byte for
 * byte, to the VM's real socket. Cutting the line (`drop`) ends every connection at once, as
 * a VMBus channel torn down mid-call would: the guest's calls in flight fail and its client
 * has to dial again. Nothing else is changed on the way.
 */
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { rmSync } from 'node:fs';

export class GuestLine {
  private server?: Server;
  private readonly sockets = new Set<Socket>();
  drops = 0;

  constructor(
    /** Where the worker's client dials. */
    readonly path: string,
    /** The VM's own GuestService socket (the host agent's). */
    private readonly upstream: string,
  ) {}

  get endpoint(): string {
    return `unix:${this.path}`;
  }

  listen(): Promise<void> {
    rmSync(this.path, { force: true });
    const server = createServer((down) => {
      const up = createConnection(this.upstream);
      this.sockets.add(down);
      this.sockets.add(up);
      const end = (): void => {
        down.destroy();
        up.destroy();
        this.sockets.delete(down);
        this.sockets.delete(up);
      };
      down.on('error', end).on('close', end);
      up.on('error', end).on('close', end);
      down.pipe(up);
      up.pipe(down);
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.path, () => resolve());
    });
  }

  /** Ends every connection on the line now; new ones are taken as before. */
  drop(): number {
    const n = this.sockets.size / 2;
    for (const s of [...this.sockets]) s.destroy();
    this.sockets.clear();
    if (n > 0) this.drops++;
    return n;
  }

  async close(): Promise<void> {
    this.drop();
    const server = this.server;
    this.server = undefined;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
    rmSync(this.path, { force: true });
  }
}
