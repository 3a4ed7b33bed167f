/**
 * What the admin CLIs (storage-sim's and host-agent's) share: the options every command
 * takes (--endpoint, --timeout, --json, --request-id), running one command (its output on
 * stdout, or its error on stderr and an exit code per status class), option parsers, paging,
 * and text tables.
 *
 * Exit codes, the same for every passthru CLI:
 *   0 success
 *   1 anything else (INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED, DATA_LOSS, ...)
 *   2 usage error (commander) or INVALID_ARGUMENT (from the server or checked locally)
 *   3 NOT_FOUND
 *   4 ALREADY_EXISTS
 *   5 FAILED_PRECONDITION
 *   6 RESOURCE_EXHAUSTED
 *   7 PERMISSION_DENIED, UNAUTHENTICATED
 *   8 UNAVAILABLE, DEADLINE_EXCEEDED (server not reachable or too slow; retryable)
 *   9 ABORTED
 */
import { randomUUID } from 'node:crypto';
import { status as Code } from '@grpc/grpc-js';
import { InvalidArgumentError as UsageError, Option, type Command } from 'commander';
import { DEFAULT_TIMEOUT_MS } from './client.js';
import type { EnumCodec } from './enums.js';
import { isDomainError } from './errors.js';
import { parseSize } from './size.js';
import type { Role } from './identity.js';
import { isServiceError, statusDetails, statusOfKind } from './status.js';
import type { TlsFlags } from './tls.js';

/** gRPC status → process exit code. A status not listed exits 1. */
export const EXIT_CODES: ReadonlyMap<Code, number> = new Map([
  [Code.INVALID_ARGUMENT, 2],
  [Code.NOT_FOUND, 3],
  [Code.ALREADY_EXISTS, 4],
  [Code.FAILED_PRECONDITION, 5],
  [Code.RESOURCE_EXHAUSTED, 6],
  [Code.PERMISSION_DENIED, 7],
  [Code.UNAUTHENTICATED, 7],
  [Code.UNAVAILABLE, 8],
  [Code.DEADLINE_EXCEEDED, 8],
  [Code.ABORTED, 9],
]);
export const USAGE_EXIT_CODE = 2;

/** The name of a gRPC status code: NOT_FOUND for 5. */
export function statusName(code: number): string {
  return (Code as unknown as Record<number, string | undefined>)[code] ?? `STATUS_${code}`;
}

// ------------------------------------------------------------------ option parsing

/** Which CLI this is: its program name, and the server its admin commands talk to. */
export interface CliIdentity {
  /** The program name that starts every error line: `storage-sim: NOT_FOUND: ...`. */
  program: string;
  /** The environment variable naming the default endpoint. */
  endpointEnv: string;
  defaultEndpoint: string;
  /** --endpoint's help text, e.g. "storage-sim gRPC endpoint". */
  endpointHelp: string;
  /** Appended to every admin command's --help: the exit codes in short. */
  shortExitHelp: string;
  /** With mTLS, the role the server's certificate must carry. */
  serverRole?: Role;
}

/** --tls-cert, --tls-key, --tls-ca or --tls-dir (or PASSTHRU_TLS_*): mTLS to the server. */
export interface ConnOpts extends TlsFlags {
  endpoint: string;
  timeout: number;
  json?: boolean;
}

export interface MutateOpts extends ConnOpts {
  requestId?: string;
}

/** A whole number from min to max, as a commander option parser. */
export function intArg(what: string, min: number, max: number): (text: string) => number {
  return (text) => {
    const n = Number(text);
    if (!/^\s*\d+\s*$/.test(text) || !Number.isSafeInteger(n) || n < min || n > max) {
      throw new UsageError(`${what} must be a whole number from ${min} to ${max}.`);
    }
    return n;
  };
}

/** A size such as 10GiB (B, KiB, MiB, GiB, TiB), as a commander option parser. */
export function sizeArg(what: string): (text: string) => number {
  return (text) => {
    try {
      return parseSize(text, what);
    } catch (err) {
      throw new UsageError(err instanceof Error ? err.message : String(err));
    }
  };
}

/** A CLI word of an enum (case-insensitive), as a commander option parser. */
export function wordArg<D extends string>(codec: EnumCodec<D>): (text: string) => D {
  return (text) => {
    const found = codec.names.find((n) => n === text.toLowerCase());
    if (found === undefined) throw new UsageError(`Write one of ${codec.names.join(', ')}.`);
    return found;
  };
}

/** A repeatable option's values, in order. */
export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

/** The options every admin command takes; `mutating` adds --request-id. */
export function connOptions(cli: CliIdentity, cmd: Command, mutating = false): Command {
  cmd
    .addOption(new Option('--endpoint <host:port>', cli.endpointHelp).env(cli.endpointEnv).default(cli.defaultEndpoint))
    .addOption(
      new Option('--timeout <ms>', 'deadline of each call, in milliseconds')
        .argParser(intArg('--timeout', 1, 3_600_000))
        .default(DEFAULT_TIMEOUT_MS),
    )
    .option('--json', 'print one JSON document on stdout instead of text')
    .addOption(new Option('--tls-cert <file>', 'mTLS: client certificate (PEM), with --tls-key and --tls-ca').env('PASSTHRU_TLS_CERT'))
    .addOption(new Option('--tls-key <file>', "mTLS: the client certificate's private key (PEM)").env('PASSTHRU_TLS_KEY'))
    .addOption(new Option('--tls-ca <file>', "mTLS: the CA certificate the server's must chain to (PEM)").env('PASSTHRU_TLS_CA'))
    .addOption(new Option('--tls-dir <dir>', 'mTLS from a passthru pki init directory: its admin.crt, admin.key and ca.crt').env('PASSTHRU_TLS_DIR'));
  if (mutating) cmd.option('--request-id <id>', 'idempotency key (default: a fresh random id)');
  return cmd.addHelpText('after', cli.shortExitHelp);
}

/** The command's --request-id, or a fresh random one. */
export function requestId(o: MutateOpts): string {
  return o.requestId ?? randomUUID();
}

/**
 * Usage errors (unknown option, missing argument, a group command without its subcommand)
 * exit 2 instead of commander's 1; help and --version still exit 0. Commander has written
 * its message already and nothing of ours is on stdout yet, so exiting here loses nothing.
 */
export function usageExitCodes(cmd: Command): void {
  cmd.exitOverride((err) => {
    process.exit(err.exitCode === 0 ? 0 : USAGE_EXIT_CODE);
  });
  for (const sub of cmd.commands) usageExitCodes(sub);
}

// ------------------------------------------------------------------ running a command

/** What a command prints: `json` with --json, `text` otherwise; then exits `exitCode` (default 0). */
export interface Output {
  json: unknown;
  text: string;
  exitCode?: number;
}

/**
 * Runs one command with a session (its clients, closed at the end): its output on stdout,
 * or its error on stderr and an exit code. A body that printed for itself (a stream)
 * returns nothing, having set process.exitCode if it failed.
 */
export async function runCommand<S extends { close(): void }>(
  cli: CliIdentity,
  o: ConnOpts,
  session: S,
  body: (s: S) => Promise<Output | void>,
): Promise<void> {
  try {
    const out = await body(session);
    if (out) {
      process.stdout.write(o.json ? `${JSON.stringify(out.json, null, 2)}\n` : out.text);
      if (out.exitCode !== undefined && out.exitCode !== 0) process.exitCode = out.exitCode;
    }
  } catch (err) {
    reportError(cli, err, o);
  } finally {
    session.close();
  }
}

const CHANNEL_FAILURE = /No connection established|ECONNREFUSED|ECONNRESET|ENOTFOUND|EHOSTUNREACH|resolution|Connection dropped/i;

/** `<program>: <STATUS>: <message>` on stderr, and the status's exit code. */
export function reportError(cli: CliIdentity, err: unknown, o: ConnOpts): void {
  let code: number;
  let message: string;
  if (isServiceError(err)) {
    code = err.code;
    // grpc-js ends a connection failure with an empty "Resolution note:"; drop it.
    message = (err.details || err.message).replace(/\s*Resolution note:\s*$/, '').trimEnd();
    let retryAfterMs: number | undefined;
    try {
      retryAfterMs = statusDetails(err).retryAfterMs;
    } catch {
      // Details that do not decode are only a lost hint.
    }
    if (retryAfterMs !== undefined) message += ` (retry after ${retryAfterMs} ms)`;
  } else if (isDomainError(err)) {
    // Checked here before any call (e.g. a size that does not parse).
    code = statusOfKind[err.kind];
    message = err.message;
  } else {
    process.stderr.write(`${cli.program}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
    return;
  }
  process.stderr.write(`${cli.program}: ${statusName(code)}: ${message}\n`);
  // The hint only when the channel (not the server itself, e.g. an injected outage) failed.
  if (code === Code.DEADLINE_EXCEEDED || (code === Code.UNAVAILABLE && CHANNEL_FAILURE.test(message))) {
    const tls = o.tlsDir || o.tlsCert ? '' : '; if it serves mTLS, give --tls-dir or --tls-cert, --tls-key and --tls-ca';
    process.stderr.write(`${cli.program}: is ${cli.program} serving at ${o.endpoint}? (--endpoint or $${cli.endpointEnv}${tls})\n`);
  }
  process.exitCode = EXIT_CODES.get(code) ?? 1;
}

/** Calls a paged list RPC until its last page. */
export async function allPages<T>(fetch: (pageToken: string) => Promise<{ items: T[]; next: string }>): Promise<T[]> {
  const all: T[] = [];
  let token = '';
  do {
    const page = await fetch(token);
    all.push(...page.items);
    token = page.next;
  } while (token !== '');
  return all;
}

// ------------------------------------------------------------------ text formatting

export interface Column {
  header: string;
  /** Right-align (numbers, sizes). */
  right?: boolean;
}

/**
 * An aligned table: a header row, then one row each, columns two spaces apart, the last
 * column not padded, no trailing spaces.
 */
export function formatTable(columns: Column[], rows: string[][]): string {
  const widths = columns.map((c, i) => Math.max(c.header.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((cell, i) => {
        const last = i === cells.length - 1;
        if (columns[i]!.right) return cell.padStart(widths[i]!);
        return last ? cell : cell.padEnd(widths[i]!);
      })
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.header)), ...rows.map((r) => line(columns.map((_, i) => r[i] ?? '')))].join('\n') + '\n';
}

/** `Key:  value` lines, values aligned. */
export function formatFields(pairs: [string, string][]): string {
  const width = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${`${k}:`.padEnd(width)}  ${v}`.trimEnd()).join('\n') + '\n';
}

/** '-' for nothing. */
export const dash = (s: string | null | undefined): string => (s === null || s === undefined || s === '' ? '-' : s);
export const yesNo = (b: boolean): string => (b ? 'yes' : 'no');

/** Runs a program's command line; what escapes its commands is printed plainly, exit code 1. */
export async function runProgram(name: string, program: Command, argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (err) {
    process.stderr.write(`${name}: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  }
}
