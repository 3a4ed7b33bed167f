/**
 * Real storage-sim (and later host-agent) processes for tests: started from the compiled
 * JavaScript, on 127.0.0.1:0, stopped by their PID only (never by name).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const BIN = {
  storageSim: join(ROOT, 'bin', 'storage-sim.js'),
};

export function tempDir(prefix = 'passthru-test-'): { path: string; remove(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, remove: () => rmSync(path, { recursive: true, force: true }) };
}

export interface ServiceProcess {
  child: ChildProcess;
  pid: number;
  /** host:port the service printed. */
  address: string;
  /** Everything it wrote to stderr (its JSON log lines). */
  stderr(): string;
  /** SIGKILL and wait for the exit. */
  kill(): Promise<void>;
  /** SIGTERM and wait for the exit; resolves to the exit code. */
  stop(): Promise<number | null>;
}

/**
 * Starts a passthru service binary and waits for its "serving on ADDRESS" line on stdout.
 */
export function startService(bin: string, args: string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ServiceProcess> {
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...opts.env },
  });
  let out = '';
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.length > 1_000_000) err = err.slice(-500_000);
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${bin} did not start within ${opts.timeoutMs ?? 15000} ms; stderr:\n${err}`));
    }, opts.timeoutMs ?? 15000);
    const exitedEarly = (code: number | null): void => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited with ${code} before serving; stderr:\n${err}`));
    };
    child.once('exit', exitedEarly);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving on (\S+)/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      // Only the start-up listener: kill() and stop() wait on `exited`.
      child.off('exit', exitedEarly);
      resolve({
        child,
        pid: child.pid!,
        address: m[1]!,
        stderr: () => err,
        kill: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
          await exited;
        },
        stop: async () => {
          if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
          return exited;
        },
      });
    });
  });
}

export function startStorageSim(dataDir: string, extra: string[] = []): Promise<ServiceProcess> {
  return startService(BIN.storageSim, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...extra]);
}
