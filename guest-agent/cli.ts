/**
 * guest-agent: the CLI a person (or a script) runs inside a VM to get SAN disks from the host.
 *
 *   guest-agent --endpoint unix:/path/vm1.sock --state-dir DIR disk create --size 10GiB --mount 'C:\mt1'
 *   guest-agent ... disk connect --lun <serial> --mount F:
 *   guest-agent ... disk list | show --mount E: | write ... | read ... | remove --mount E: [--delete-lun]
 *   guest-agent ... rescan
 *
 * Every command takes --json (one JSON document on stdout; errors stay on stderr) and exits
 * with a code per failure class (common/cli.ts). This file only wires options to the guest
 * volume manager (volumes.ts); the generated GuestService code, the volume manager and the
 * disk layout are loaded when a command runs, so a cold start stays quick.
 */
import { createHash } from 'node:crypto';
import { closeSync, fstatSync, openSync, readSync, writeSync } from 'node:fs';
import { Command, Option } from 'commander';
import { dash, formatFields, formatTable, intArg, runCommand, runProgram, usageExitCodes, yesNo, type CliIdentity, type Output } from '../common/cli.js';
import { InvalidArgumentError } from '../common/errors.js';
import { formatSize, parseSize } from '../common/size.js';
import type { CrashPoint, DiskReport, GuestAgent, ListedDisk } from './volumes.js';

export const ENDPOINT_ENV = 'PASSTHRU_GUEST_ENDPOINT';
export const STATE_DIR_ENV = 'PASSTHRU_GUEST_STATE_DIR';
/** Tests only: `<point>[:<n>]` kills the process with SIGKILL the n-th time (default the first) it passes that point. */
export const CRASH_ENV = 'PASSTHRU_GUEST_CRASH_AT';

const DEFAULT_TIMEOUT_MS = 30_000;
const DEFAULT_DISCOVER_TIMEOUT_MS = 30_000;
const DEFAULT_RECONNECT_TIMEOUT_MS = 30_000;
/** --json carries read data as base64; beyond this, read into a file with --to. */
const MAX_JSON_READ_BYTES = 16 * 1024 * 1024;

const EXIT_TABLE = `Exit codes:
  0  success
  1  any other error (INTERNAL, UNKNOWN, a volume that does not read back as written, ...)
  2  usage error, or INVALID_ARGUMENT (size, drive path, offset or length, label, LUN name)
  3  NOT_FOUND (nothing mounted at that path, LUN not in Available Storage, operation unknown)
  4  ALREADY_EXISTS (the mount path holds another disk)
  5  FAILED_PRECONDITION (folder mount on a volume not mounted here, mounts inside the volume,
     a disk holding foreign data without --force, a dedicated disk on an HA VM, VM off,
     an unfinished request of the same mount with other parameters)
  6  RESOURCE_EXHAUSTED (no free SCSI location on the VM, no room on the array)
  7  PERMISSION_DENIED
  8  UNAVAILABLE or DEADLINE_EXCEEDED (host agent or array not reachable, disk not discovered
     in time; a recorded request is finished by running the same command again)
  9  ABORTED (another operation on the same mount or LUN, another guest-agent on that mount)
Errors are printed on stderr as "guest-agent: <STATUS>: <message>", the host's message as it is.`;

const EPILOG = `
Every command talks to the VM's own GuestService endpoint and keeps its mount table in the
state dir; both are required, as options or environment variables:
  --endpoint <target>   $${ENDPOINT_ENV}   unix:/path/to/<vm>.sock (as host-agent vms shows it)
  --state-dir <dir>     $${STATE_DIR_ENV}  one directory per VM: mounts.json and unfinished requests
The guest OS (and so which drive paths are valid) is the VM's own, asked from the host.

Drive paths: on a Windows guest a drive letter D: to Z: not in use, or a folder mount point on C:
or on a volume passthru mounted here (C:\\mt1, E:\\logs); on a Linux guest an absolute path
(/srv/data), not /, nesting allowed. Sizes: 4096, 512KiB, 64MiB, 10GiB, 1TiB.

A command cut short (a crash, the host unreachable) leaves its request recorded in the state dir:
running the same command again finishes it under its first request id; \`disk list\` shows it.

--json prints one JSON document on stdout (camelCase fields, every field present, sizes and
offsets as numbers). A terminal shows each step live on stderr; --json or a pipe shows none.

${EXIT_TABLE}

Examples:
  export ${ENDPOINT_ENV}=unix:/var/lib/passthru/sock/vm1.sock ${STATE_DIR_ENV}=/var/lib/passthru-guest
  guest-agent disk create --size 10GiB --mount 'C:\\mt1'
  guest-agent disk write --mount 'C:\\mt1' --at 0 --from notes.txt
  guest-agent disk read --mount 'C:\\mt1' --at 0 --length 64KiB --to copy.bin
  guest-agent disk connect --lun PTSMab12cd34 --mount F:
  guest-agent disk remove --mount 'C:\\mt1' --delete-lun
`;

const SHORT_EXIT = '\nExit codes: 0 ok, 1 other, 2 usage/INVALID_ARGUMENT, 3 NOT_FOUND, 4 ALREADY_EXISTS, 5 FAILED_PRECONDITION,\n6 RESOURCE_EXHAUSTED, 7 PERMISSION_DENIED, 8 UNAVAILABLE, 9 ABORTED (see guest-agent --help).';

const CLI: CliIdentity = {
  program: 'guest-agent',
  endpointEnv: ENDPOINT_ENV,
  defaultEndpoint: '',
  endpointHelp: "the VM's GuestService endpoint",
  shortExitHelp: SHORT_EXIT,
};

interface Globals {
  endpoint?: string;
  stateDir?: string;
  json?: boolean;
  timeout: number;
  discoverTimeout: number;
  reconnectTimeout: number;
}

const msArg = (what: string): ((text: string) => number) => intArg(`${what} (milliseconds)`, 1, 3_600_000);

/** `<point>[:<n>]` from the environment: a function that SIGKILLs this process the n-th time it passes that point. */
function crashHook(spec: string | undefined, points: readonly string[]): ((point: string) => void) | undefined {
  if (!spec) return undefined;
  const m = /^([a-z-]+)(?::(\d+))?$/.exec(spec);
  if (!m || !points.includes(m[1]!)) {
    throw new Error(`${CRASH_ENV}=${spec} names no crash point: write <point>[:<n>] with a point of ${points.join(', ')}`);
  }
  let left = Number(m[2] ?? '1');
  return (point) => {
    if (point === m[1] && --left === 0) process.kill(process.pid, 'SIGKILL');
  };
}

/** Runs one command with a guest agent on the endpoint and state dir; output or error as common/cli.ts prints them. */
async function run(cmd: Command, body: (agent: GuestAgent, g: Globals) => Promise<Output | void>): Promise<void> {
  const g = cmd.optsWithGlobals() as Globals;
  if (!g.endpoint) cmd.error(`error: the VM's endpoint is required: --endpoint unix:/path/to/<vm>.sock or $${ENDPOINT_ENV}`);
  if (!g.stateDir) cmd.error(`error: a state dir is required: --state-dir <dir> or $${STATE_DIR_ENV} (one per VM; it holds the mount table)`);
  const [{ GrpcHostLink }, { SimulatedGuestOs }, { StateDir }, volumes, { ProgressDisplay }] = await Promise.all([
    import('./grpc-host.js'),
    import('./sim-os.js'),
    import('./state.js'),
    import('./volumes.js'),
    import('./progress.js'),
  ]);
  const endpoint = g.endpoint!.startsWith('/') ? `unix:${g.endpoint}` : g.endpoint!;
  const link = new GrpcHostLink(endpoint, g.timeout);
  const display = !g.json && process.stderr.isTTY ? new ProgressDisplay(process.stderr) : undefined;
  const crash = crashHook(process.env[CRASH_ENV], volumes.CRASH_POINTS);
  const agent = new volumes.GuestAgent(link, new SimulatedGuestOs(link), new StateDir(g.stateDir!, { reached: crash }), {
    discovery: { timeoutMs: g.discoverTimeout, firstDelayMs: 20, maxDelayMs: 1_000 },
    reconnectTimeoutMs: g.reconnectTimeout,
    ...(display ? { progress: (p) => display.show(p) } : {}),
    ...(crash ? { crash: crash as (p: CrashPoint) => void } : {}),
  });
  await runCommand(CLI, { endpoint, timeout: g.timeout, json: g.json }, link, async () => {
    try {
      return await body(agent, g);
    } finally {
      display?.end();
    }
  });
}

// ------------------------------------------------------------------ text

const scsi = (a: { controller: number; location: number } | null): string => (a ? `${a.controller}:${a.location}` : '-');

function listText(disks: ListedDisk[]): string {
  if (disks.length === 0) return 'no disks\n';
  let out = formatTable(
    [
      { header: 'MOUNT' },
      { header: 'SERIAL' },
      { header: 'SIZE', right: true },
      { header: 'SCSI' },
      { header: 'LUN ID', right: true },
      { header: 'LABEL' },
      { header: 'STATE' },
    ],
    disks.map((d) => [d.mountPath, dash(d.serial), d.sizeBytes ? formatSize(d.sizeBytes) : '-', scsi(d.address), d.lunId === null ? '-' : String(d.lunId), dash(d.label), d.state]),
  );
  const problems = disks.flatMap((d) => d.problems.map((p) => `  ${d.mountPath}: ${p}\n`));
  if (problems.length > 0) out += `\nDisagreements between this guest's mount table and the host:\n${problems.join('')}`;
  return out;
}

function showText(r: DiskReport): string {
  let out = formatFields([
    ['Mount', r.mountPath],
    ['Mounted here', yesNo(r.mounted)],
    ['Serial', r.serial],
    ['NAA id', r.naaId],
    ['SCSI', scsi(r.address)],
    ['Size', `${formatSize(r.sizeBytes)} (${r.sizeBytes} bytes, ${r.sizeBytes / 512} sectors)`],
    ['Content', r.content === 'passthru' ? 'GPT with a passthru volume' : r.content === 'blank' ? 'blank (never initialized)' : `foreign: ${r.reason}`],
  ]);
  if (r.gpt) {
    const p = r.gpt.partition;
    out += '\nPartition table (protective MBR + GPT, read from the disk):\n';
    out += formatFields([
      ['Disk GUID', r.gpt.diskGuid],
      ['Headers', `primary at LBA ${r.gpt.primaryHeaderLba}, backup at LBA ${r.gpt.backupHeaderLba}`],
      ['Usable LBAs', `${r.gpt.firstUsableLba}-${r.gpt.lastUsableLba}`],
      ['Entries', `${r.gpt.entryCount} x ${r.gpt.entrySize} bytes`],
      [`Partition ${p.number}`, `LBA ${p.firstLba}-${p.lastLba} (${formatSize((p.lastLba - p.firstLba + 1) * 512)}, starts at ${formatSize(p.firstLba * 512)})`],
      ['Type', `${p.typeName} (${p.typeGuid})`],
      ['Partition GUID', p.partitionGuid],
      ['Name', p.name],
    ]);
  }
  if (r.volume) {
    const v = r.volume;
    out += '\nVolume (header at the partition start):\n';
    out += formatFields([
      ['Label', v.label],
      ['Volume id', v.volumeId],
      ['Guest OS', v.guestOs],
      ['Created', v.createdAt],
      ['Data area', `${formatSize(v.dataBytes)} (${v.dataBytes} bytes) from disk byte ${v.dataOffset}`],
    ]);
  }
  return out;
}

// ------------------------------------------------------------------ commands

/** The bytes to write: a regular file read where it lies, or stdin (`-`) read whole first. */
async function openSource(from: string): Promise<{ length: number; read(at: number, n: number): Promise<Buffer>; close(): void }> {
  if (from === '-') {
    const chunks: Buffer[] = [];
    for await (const c of process.stdin) chunks.push(c as Buffer);
    const all = Buffer.concat(chunks);
    return { length: all.length, read: async (at, n) => all.subarray(at, at + n), close: () => undefined };
  }
  const fd = openSync(from, 'r');
  const length = fstatSync(fd).size;
  return {
    length,
    read: async (at, n) => {
      const buf = Buffer.alloc(n);
      let got = 0;
      while (got < n) {
        const r = readSync(fd, buf, got, n - got, at + got);
        if (r === 0) break;
        got += r;
      }
      return buf.subarray(0, got);
    },
    close: () => closeSync(fd),
  };
}

function addDiskCommands(program: Command): void {
  const disk = program.command('disk').description('Ask the host for disks, and mount, inspect, read, write and remove them.');

  disk
    .command('create')
    .description('Provision a new LUN, have the host attach it, find it on the SCSI bus, initialize it (GPT + volume) and mount it.')
    .requiredOption('--size <size>', 'the disk size: 4MiB to 16TiB, a multiple of 512 bytes (e.g. 10GiB)')
    .requiredOption('--mount <path>', "where to mount it: E:, C:\\mt1 (Windows), /srv/data (Linux)")
    .option('--dedicated', 'mapped to this node only (non-HA VMs only; the default is shared by every node)')
    .option('--label <label>', 'the volume label, 1-32 bytes (default: from the mount path, e.g. "mt1", "Volume E")')
    .option('--force', 'initialize the disk even if it holds something else (its contents are lost)')
    .addHelpText('after', SHORT_EXIT)
    .action((o: { size: string; mount: string; dedicated?: boolean; label?: string; force?: boolean }, cmd: Command) =>
      run(cmd, async (agent) => {
        const sizeBytes = parseSize(o.size, '--size');
        const r = await agent.create({ mount: o.mount, sizeBytes, sharing: o.dedicated ? 'dedicated' : 'shared', label: o.label, force: o.force });
        return { json: r, text: mountedText(r) };
      }),
    );

  disk
    .command('connect')
    .description('Attach a LUN an administrator put in Available Storage and mount it: a volume on it is kept with its data; a blank disk is initialized.')
    .requiredOption('--lun <serial>', 'the LUN: its serial or NAA id, as Available Storage lists it')
    .requiredOption('--mount <path>', 'where to mount it')
    .option('--label <label>', 'the label of the new volume if the disk is blank (a volume on the disk keeps its own)')
    .option('--force', 'initialize the disk even if it holds something other than a passthru volume (its contents are lost)')
    .addHelpText('after', SHORT_EXIT)
    .action((o: { lun: string; mount: string; label?: string; force?: boolean }, cmd: Command) =>
      run(cmd, async (agent) => {
        const r = await agent.connect({ mount: o.mount, lun: o.lun, label: o.label, force: o.force });
        return { json: r, text: mountedText(r) };
      }),
    );

  disk
    .command('list')
    .description("This guest's disks: the mount table merged with the host's view, each disagreement flagged.")
    .addHelpText('after', SHORT_EXIT)
    .action((_o: object, cmd: Command) =>
      run(cmd, async (agent) => {
        const r = await agent.list();
        return { json: r, text: listText(r.disks) };
      }),
    );

  disk
    .command('show')
    .description('The partition table and the volume as read from the disk itself.')
    .requiredOption('--mount <path>', 'the mount path')
    .addHelpText('after', SHORT_EXIT)
    .action((o: { mount: string }, cmd: Command) =>
      run(cmd, async (agent) => {
        const r = await agent.show(o.mount);
        return { json: r, text: showText(r) };
      }),
    );

  disk
    .command('write')
    .description("Write a file's bytes into the volume's data area (after its header) at an offset.")
    .requiredOption('--mount <path>', 'the mount path')
    .requiredOption('--at <offset>', 'byte offset in the data area (e.g. 0, 4096, 1MiB)')
    .requiredOption('--from <file>', 'the file to write, or - for stdin')
    .addHelpText('after', SHORT_EXIT)
    .action((o: { mount: string; at: string; from: string }, cmd: Command) =>
      run(cmd, async (agent) => {
        const at = parseSize(o.at, '--at');
        const source = await openSource(o.from);
        try {
          if (source.length === 0) {
            throw new InvalidArgumentError('from', `nothing to write: ${o.from === '-' ? 'stdin' : o.from} is empty`, 'EMPTY_SOURCE');
          }
          const m = await agent.write({ mount: o.mount, at, length: source.length }, source.read);
          const json = { mountPath: m.path, serial: m.serial, at, length: source.length };
          return { json, text: `wrote ${source.length} bytes at ${at} of the data area of ${m.path} (LUN ${m.serial})\n` };
        } finally {
          source.close();
        }
      }),
    );

  disk
    .command('read')
    .description("Read bytes from the volume's data area: to stdout, or into a file with --to.")
    .requiredOption('--mount <path>', 'the mount path')
    .requiredOption('--at <offset>', 'byte offset in the data area')
    .requiredOption('--length <size>', 'how many bytes (e.g. 512, 1MiB)')
    .option('--to <file>', 'write them into this file (created or truncated) instead of stdout')
    .addHelpText('after', SHORT_EXIT)
    .action((o: { mount: string; at: string; length: string; to?: string }, cmd: Command) =>
      run(cmd, async (agent, g) => {
        const at = parseSize(o.at, '--at');
        const length = parseSize(o.length, '--length');
        if (g.json && o.to === undefined && length > MAX_JSON_READ_BYTES) {
          throw new InvalidArgumentError('length', `--json carries at most ${MAX_JSON_READ_BYTES} bytes of data; read more into a file with --to`, 'TOO_LONG_FOR_JSON');
        }
        const hash = createHash('sha256');
        const kept: Buffer[] = [];
        let fd: number | undefined;
        let sink: (chunk: Buffer) => Promise<void> | void;
        if (o.to !== undefined) {
          sink = (c) => {
            fd ??= openSync(o.to!, 'w');
            writeSync(fd, c);
          };
        } else if (g.json) {
          sink = (c) => void kept.push(Buffer.from(c));
        } else {
          sink = (c) =>
            new Promise<void>((resolve, reject) => {
              process.stdout.write(c, (err) => (err ? reject(err) : resolve()));
            });
        }
        let m;
        try {
          m = await agent.read({ mount: o.mount, at, length }, (c) => {
            hash.update(c);
            return sink(c);
          });
        } finally {
          if (fd !== undefined) closeSync(fd);
        }
        const json = { mountPath: m.path, serial: m.serial, at, length, sha256: hash.digest('hex'), to: o.to ?? null, data: o.to === undefined ? Buffer.concat(kept).toString('base64') : null };
        if (o.to !== undefined) return { json, text: `read ${length} bytes at ${at} of the data area of ${m.path} into ${o.to}\n` };
        // The bytes themselves went to stdout.
        return g.json ? { json, text: '' } : undefined;
      }),
    );

  disk
    .command('remove')
    .description('Unmount the volume, then have the host detach the disk; the LUN stays on the array unless --delete-lun.')
    .requiredOption('--mount <path>', 'the mount path')
    .option('--delete-lun', 'delete the LUN on the array too (its data is gone)')
    .addHelpText('after', SHORT_EXIT)
    .action((o: { mount: string; deleteLun?: boolean }, cmd: Command) =>
      run(cmd, async (agent) => {
        const r = await agent.remove({ mount: o.mount, deleteLun: o.deleteLun ?? false });
        const d = r.detached;
        const text = d
          ? `${r.mountPath} ${r.unmounted ? 'unmounted and ' : ''}detached from SCSI ${scsi(d.address)}: LUN ${d.serial} ${r.lunDeleted ? 'deleted from the array' : `kept on the array (${d.lunPath})`}\n`
          : r.unmounted
            ? `${r.mountPath} unmounted; the host had no disk attached there any more\n`
            : `nothing was attached at ${r.mountPath}\n`;
        return { json: r, text: (r.resumed ? 'finished the removal an earlier run began\n' : '') + text };
      }),
    );
}

function mountedText(r: Awaited<ReturnType<GuestAgent['create']>>): string {
  const m = r.mount;
  const head = r.alreadyMounted ? `${m.path} is already mounted` : `${m.path} mounted${r.resumed ? ' (finished the request an earlier run began)' : ''}`;
  const volume = r.alreadyMounted ? `volume "${m.label}"` : m.initialized ? `new volume "${m.label}"` : `its volume "${m.label}" kept with its data`;
  return `${head}: LUN ${m.serial} (${formatSize(m.sizeBytes)}) at SCSI ${scsi(m.address)}, LUN id ${m.lunId}; ${volume} (id ${m.volumeId}), data area ${formatSize(m.dataBytes)}\n`;
}

export function buildProgram(): Command {
  const program = new Command('guest-agent')
    .description('The guest side of passthru, run inside a VM: ask the host for a SAN disk, find it on the SCSI bus, initialize it and mount it at a drive path.')
    .addOption(new Option('--endpoint <target>', "the VM's GuestService endpoint, unix:/path/to/<vm>.sock").env(ENDPOINT_ENV))
    .addOption(new Option('--state-dir <dir>', "this VM's state dir (mount table, unfinished requests)").env(STATE_DIR_ENV))
    .option('--json', 'print one JSON document on stdout instead of text')
    .addOption(new Option('--timeout <ms>', 'deadline of each call to the host').argParser(msArg('--timeout')).default(DEFAULT_TIMEOUT_MS))
    .addOption(
      new Option('--discover-timeout <ms>', 'how long to rescan for an attached disk before giving up').argParser(msArg('--discover-timeout')).default(DEFAULT_DISCOVER_TIMEOUT_MS),
    )
    .addOption(
      new Option('--reconnect-timeout <ms>', 'how long to retry a host that went away mid-command (dropped connection, restart)')
        .argParser(msArg('--reconnect-timeout'))
        .default(DEFAULT_RECONNECT_TIMEOUT_MS),
    )
    .showHelpAfterError();
  addDiskCommands(program);
  program
    .command('rescan')
    .description("Rescan the VM's SCSI bus: every disk on it, and where this guest has it mounted.")
    .addHelpText('after', SHORT_EXIT)
    .action((_o: object, cmd: Command) =>
      run(cmd, async (agent) => {
        const r = await agent.rescan();
        const t =
          r.devices.length === 0
            ? 'no disks on the bus\n'
            : formatTable(
                [{ header: 'SCSI' }, { header: 'SERIAL' }, { header: 'NAA ID' }, { header: 'SIZE', right: true }, { header: 'MOUNT' }],
                r.devices.map((d) => [scsi(d.address), d.serial, d.naaId, formatSize(d.sizeBytes), dash(d.mountPath)]),
              );
        return { json: r, text: t };
      }),
    );
  program.addHelpText('after', EPILOG);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  usageExitCodes(program);
  await runProgram('guest-agent', program, argv);
}
