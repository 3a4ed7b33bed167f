/**
 * The processes a benchmark measures: storage-sim and host-agent started from the compiled
 * JavaScript (their JSON logs to a file), stopped by PID, and their CPU use over a window.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { procCpuSeconds } from './report.js';

/** How long a SIGTERM is given before SIGKILL. */
export const STOP_GRACE_MS = 5_000;

export interface Service {
  name: string;
  child: ChildProcess;
  pid: number;
  address: string;
  /** ms from spawn() to the "serving on" line on stdout. */
  startMs: number;
  logFile: string;
  /** Resolves when the process has exited, however it ended. */
  exited: Promise<void>;
  /** SIGTERM, SIGKILL after STOP_GRACE_MS, and wait for the exit. */
  stop(): Promise<{ ms: number; killed: boolean }>;
}

export async function startService(name: string, script: string, args: string[], logFile: string, timeoutMs: number, nodeArgs: string[] = []): Promise<Service> {
  const logFd = openSync(logFile, 'a');
  const t0 = performance.now();
  const child = spawn(process.execPath, [...nodeArgs, script, ...args], { stdio: ['ignore', 'pipe', logFd] });
  closeSync(logFd);
  const running = (): boolean => child.exitCode === null && child.signalCode === null;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const logTail = (): string => readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
  const { address, startMs } = await new Promise<{ address: string; startMs: number }>((resolve, reject) => {
    let out = '';
    let seen = false;
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${name} did not print "serving on" within ${timeoutMs / 1000} s; its log:\n${logTail()}`));
    }, timeoutMs);
    const early = (code: number | null, signal: NodeJS.Signals | null): void => {
      clearTimeout(timer);
      reject(new Error(`${name} exited (${signal ?? code}) before serving; its log:\n${logTail()}`));
    };
    child.once('exit', early);
    child.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.stdout!.on('data', (d: Buffer) => {
      if (seen) return; // keep draining stdout, nothing more to look for
      out += d.toString();
      const m = /serving on (\S+)/.exec(out);
      if (!m) return;
      seen = true;
      clearTimeout(timer);
      child.off('exit', early);
      resolve({ address: m[1]!, startMs: performance.now() - t0 });
    });
  });
  return {
    name,
    child,
    pid: child.pid!,
    address,
    startMs,
    logFile,
    exited,
    stop: async () => {
      const s0 = performance.now();
      let killed = false;
      if (running()) child.kill('SIGTERM');
      const timer = setTimeout(() => {
        if (running()) {
          killed = true;
          child.kill('SIGKILL');
        }
      }, STOP_GRACE_MS);
      await exited;
      clearTimeout(timer);
      return { ms: performance.now() - s0, killed };
    },
  };
}

/** CPU use of the host agent, the array and this process over a measured window. */
export function cpuWindow(agentPid: number, storagePid: number): {
  window: { start(): void; stop(): void };
  result(): { agentCpu: number; storageCpu: number; clientCpu: number };
} {
  let a0 = 0;
  let s0 = 0;
  let c0 = process.cpuUsage();
  let t0 = 0;
  let out = { agentCpu: Number.NaN, storageCpu: Number.NaN, clientCpu: Number.NaN };
  return {
    window: {
      start: () => {
        a0 = procCpuSeconds(agentPid);
        s0 = procCpuSeconds(storagePid);
        c0 = process.cpuUsage();
        t0 = performance.now();
      },
      stop: () => {
        const wall = (performance.now() - t0) / 1000;
        const c = process.cpuUsage(c0);
        out = {
          agentCpu: (procCpuSeconds(agentPid) - a0) / wall,
          storageCpu: (procCpuSeconds(storagePid) - s0) / wall,
          clientCpu: (c.user + c.system) / 1e6 / wall,
        };
      },
    },
    result: () => out,
  };
}
