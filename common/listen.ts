/**
 * TCP listeners of our own beside the gRPC servers (the metrics endpoint, the block portal):
 * the flag's host:port read one way, and the bound address told back one way.
 */
import type { Server } from 'node:net';
import { InvalidArgumentError } from './errors.js';

export interface ListenAddress {
  /** Undefined: every interface. */
  host: string | undefined;
  port: number;
}

/**
 * `--<flag> host:port` ([v6]:port; `:port` for every interface; port 0 picks a free one), or
 * INVALID_ARGUMENT naming the flag.
 */
export function parseListen(flag: string, listen: string): ListenAddress {
  const m = /^(.*):(\d+)$/.exec(listen);
  const port = m ? Number(m[2]) : Number.NaN;
  if (!m || port > 65535) throw new InvalidArgumentError(flag, `--${flag} ${listen} is not host:port (a port from 0 to 65535; 0 picks a free one)`);
  return { host: m[1] === '' ? undefined : m[1]!.replace(/^\[(.*)\]$/, '$1'), port };
}

/** Listens there; resolves to the bound address as host:port ([v6]:port) and its port. */
export function listenTcp(server: Server, at: ListenAddress): Promise<{ address: string; port: number }> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.off('error', reject);
      const a = server.address() as { address: string; port: number };
      resolve({ address: `${a.address.includes(':') ? `[${a.address}]` : a.address}:${a.port}`, port: a.port });
    });
  });
}
