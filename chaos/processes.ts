/**
 * The two services the chaos run breaks: storage-sim and host-agent as real processes from
 * the compiled JavaScript, each on a fixed loopback port (chosen free at the first start and
 * kept, so clients and the host agent find a restarted process where the old one was),
 * their JSON logs appended to a file in the run's directory. Killed with SIGKILL by PID,
 * never by name.
 */
import type { ChildProcess } from 'node:child_process';
import { startService } from '../bench/processes.js';
export { repoRoot } from '../bench/report.js';
export { freePort } from '../test/support/host-process.js';

export interface Running {
  child: ChildProcess;
  pid: number;
  /** host:port from its "serving on" line. */
  address: string;
  exited: Promise<void>;
}

/**
 * A service that can be started, SIGKILLed and started again with the same arguments. Its
 * stderr (JSON log lines) is appended to `logFile`.
 */
export class Service {
  private current?: Running;
  starts = 0;

  constructor(
    readonly name: string,
    private readonly script: string,
    private readonly args: string[],
    readonly logFile: string,
    private readonly startTimeoutMs = 60_000,
  ) {}

  get pid(): number | undefined {
    return this.current?.pid;
  }

  get running(): boolean {
    const c = this.current?.child;
    return c !== undefined && c.exitCode === null && c.signalCode === null;
  }

  /** Starts it and waits for "serving on" (host-agent prints it once health is SERVING). */
  async start(): Promise<Running> {
    if (this.running) throw new Error(`${this.name} runs already (pid ${this.pid})`);
    this.starts++;
    const { child, pid, address, exited } = await startService(this.name, this.script, this.args, this.logFile, this.startTimeoutMs);
    this.current = { child, pid, address, exited };
    return this.current;
  }

  /** SIGKILL by PID and wait for the exit. */
  async kill(): Promise<void> {
    const c = this.current;
    if (!c) return;
    if (this.running) process.kill(c.pid, 'SIGKILL');
    await c.exited;
  }

  /** SIGTERM by PID, SIGKILL after `graceMs`, and wait for the exit. */
  async stop(graceMs = 5_000): Promise<void> {
    const c = this.current;
    if (!c || !this.running) return;
    process.kill(c.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      if (this.running) process.kill(c.pid, 'SIGKILL');
    }, graceMs);
    await c.exited;
    clearTimeout(timer);
  }
}

/**
 * Starts a service, trying again a few times when the start fails: a port kept across a
 * restart can be taken for a moment by another process's outgoing connection.
 */
export async function startWithRetries(s: Service, attempts = 5): Promise<Running> {
  for (let i = 1; ; i++) {
    try {
      return await s.start();
    } catch (err) {
      if (i >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 200 * i));
    }
  }
}
