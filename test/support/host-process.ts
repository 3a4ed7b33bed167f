/**
 * Real `host-agent serve` processes for tests: a cluster file written for the test, the
 * process started from the compiled JavaScript on 127.0.0.1:0, its stdout followed line by
 * line, its exit (code and signal) observable, and stopped by its PID only.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { ROOT, startService, type ServiceProcess } from './processes.js';

export const HOST_AGENT_BIN = join(ROOT, 'bin', 'host-agent.js');

export interface ClusterFileShape {
  name: string;
  volume: string;
  availableStorageOwner: string;
  nodes: { name: string; initiator: string }[];
  vms: { id: string; name: string; guestOs: 'windows' | 'linux'; ha: boolean; node: string }[];
}

/**
 * Three nodes (the first owns Available Storage); vm1 a Windows HA VM on node 1, vm2 a Linux
 * HA VM on node 2, vm3 a Windows non-HA VM on node 3. `prefix` makes the node names (and so
 * the array's igroups) and initiators unique, so many host agents can share one array.
 */
export function threeNodeCluster(prefix: string, volume: string): ClusterFileShape {
  const node = (i: number): string => `${prefix}-node${i}`;
  return {
    name: prefix,
    volume,
    availableStorageOwner: node(1),
    nodes: [1, 2, 3].map((i) => ({ name: node(i), initiator: `iqn.2026-11.dev.passthru:${node(i)}` })),
    vms: [
      { id: 'vm1', name: 'web1', guestOs: 'windows', ha: true, node: node(1) },
      { id: 'vm2', name: 'db1', guestOs: 'linux', ha: true, node: node(2) },
      { id: 'vm3', name: 'build1', guestOs: 'windows', ha: false, node: node(3) },
    ],
  };
}

/** Writes the cluster file into `dir` and returns its path. */
export function writeClusterFile(dir: string, cluster: object, name = 'cluster.json'): string {
  const path = join(dir, name);
  writeFileSync(path, JSON.stringify(cluster, null, 2));
  return path;
}

export interface HostAgentOptions {
  storage: string;
  dataDir: string;
  cluster: string;
  /** `[kind:]step[@before|during|after]`: the process SIGKILLs itself there. */
  crashAt?: string;
  extra?: string[];
}

export function hostAgentArgs(o: HostAgentOptions): string[] {
  return [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--storage',
    o.storage,
    '--data-dir',
    o.dataDir,
    '--cluster',
    o.cluster,
    ...(o.crashAt ? ['--crash-at', o.crashAt] : []),
    ...(o.extra ?? []),
  ];
}

/** Starts `host-agent serve` and waits for its "serving on" line (journal recovered). */
export function startHostAgent(o: HostAgentOptions): Promise<ServiceProcess> {
  return startService(HOST_AGENT_BIN, hostAgentArgs(o), { timeoutMs: 20_000 });
}

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** How the child ended (at once if it already has). */
export function exitOf(child: ChildProcess): Promise<Exit> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve({ code: child.exitCode, signal: child.signalCode });
  return new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
}

/** The child's exit, or a rejection naming `what` after `ms`. */
export async function exitWithin(child: ChildProcess, ms: number, what: string): Promise<Exit> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      exitOf(child),
      new Promise<never>((_r, reject) => {
        timer = setTimeout(() => reject(new Error(`${what}: the process (pid ${child.pid}) did not exit within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** A process followed from its first byte: for starts that may never print "serving on". */
export interface WatchedProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the match once stdout matches; rejects if the process exits first or after `ms`. */
  waitForStdout(re: RegExp, ms?: number): Promise<RegExpExecArray>;
  exit: Promise<Exit>;
  /** SIGKILL (if still running) and wait for the exit. */
  kill(): Promise<Exit>;
  /** SIGTERM (if still running) and wait for the exit. */
  stop(): Promise<Exit>;
}

export function spawnWatched(bin: string, args: string[]): WatchedProcess {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  child.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    for (const w of [...waiters]) w();
  });
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.length > 1_000_000) err = err.slice(-500_000);
  });
  const exit = exitOf(child);
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  return {
    child,
    stdout: () => out,
    stderr: () => err,
    exit,
    waitForStdout(re, ms = 20_000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = re.exec(out);
          if (m) {
            done();
            resolve(m);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`${bin}: stdout did not match ${re} within ${ms} ms; stdout:\n${out}\nstderr:\n${err}`));
        }, ms);
        const done = (): void => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        void exit.then((e) => {
          if (!waiters.has(check)) return;
          done();
          reject(new Error(`${bin} exited (${e.code ?? e.signal}) before stdout matched ${re}; stdout:\n${out}\nstderr:\n${err}`));
        });
        waiters.add(check);
        check();
      });
    },
    async kill() {
      if (running()) child.kill('SIGKILL');
      return exit;
    },
    async stop() {
      if (running()) child.kill('SIGTERM');
      return exit;
    },
  };
}

/** A TCP port that was free a moment ago (listen on 0, note the port, close). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      if (addr === null || typeof addr === 'string') {
        srv.close();
        reject(new Error('no TCP address'));
        return;
      }
      srv.close(() => resolve(addr.port));
    });
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `read` until `done` says so; throws with the last value after `ms`. */
export async function pollUntil<T>(read: () => Promise<T>, done: (v: T) => boolean, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await read();
    if (done(v)) return v;
    if (Date.now() > end) {
      throw new Error(`${what} within ${ms} ms; last: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x))}`);
    }
    await sleep(5);
  }
}
