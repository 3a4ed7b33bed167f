/**
 * storage-sim's admin CLI, as an array's own CLI would be: `array`, `lun`, `igroup`, `map`,
 * `unmap`, `maps` and `fault` commands, each one or a few calls of the gRPC API
 * (StorageArrayService, FaultInjectionService) of a running `storage-sim serve`.
 *
 * Every admin command takes `--endpoint <host:port>` (default $PASSTHRU_STORAGE_ENDPOINT,
 * else 127.0.0.1:50051), `--timeout <ms>` (the deadline of each call) and `--json`. Every
 * mutating command sends a fresh random request_id unless `--request-id` names one, so a
 * script that retries a command with the same `--request-id` gets the first answer back.
 *
 * Output. Human: aligned tables with headers and `Key: value` blocks, sizes as 10 GiB.
 * `--json`: one JSON document on stdout (pretty-printed), in the shape of the RPC's response
 * (proto JSON names in camelCase) with these conventions, the same for every command:
 *   - byte counts and other integers are JSON numbers (sizes in bytes; all below 2^53);
 *   - enums are the words the CLI accepts: "linux", "thin", "online", "iscsi", "before", ...
 *     (null when unspecified); a fault's `code` is the gRPC number, `codeName` its name;
 *   - timestamps are RFC 3339 strings (UTC), null when absent;
 *   - every field is present, defaults included (no proto3 omission);
 *   - list commands follow every page and print `{"luns": [...]}` (or igroups, maps,
 *     faults) with no page token; `lun show` is {lun, maps, reservation: {generation,
 *     registrations, holder}} and `igroup show` is {igroup, maps}.
 * Errors never go to stdout, in either mode.
 *
 * Errors: `storage-sim: <STATUS_NAME>: <server message>` on stderr, and an exit code per
 * status class (EXIT_CODES in common/cli.ts, also in `storage-sim --help`):
 *   0 success
 *   1 anything else (INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED, DATA_LOSS, ...)
 *   2 usage error (commander) or INVALID_ARGUMENT (from the server or checked locally)
 *   3 NOT_FOUND
 *   4 ALREADY_EXISTS
 *   5 FAILED_PRECONDITION
 *   6 RESOURCE_EXHAUSTED
 *   7 PERMISSION_DENIED, UNAUTHENTICATED
 *   8 UNAVAILABLE, DEADLINE_EXCEEDED (array not reachable or too slow; retryable)
 *   9 ABORTED
 */
import { status as Code } from '@grpc/grpc-js';
import { Command, InvalidArgumentError as UsageError, Option } from 'commander';
import {
  allPages,
  collect,
  connOptions,
  dash,
  formatFields,
  formatTable,
  intArg,
  requestId,
  runCommand,
  statusName,
  usageExitCodes,
  wordArg,
  yesNo,
  type CliIdentity,
  type ConnOpts,
  type MutateOpts,
  type Output,
} from '../common/cli.js';
import { connect, DEFAULT_TIMEOUT_MS, type PromiseClient } from '../common/client.js';
import { cliConnection } from '../common/tls.js';
import type { EnumCodec } from '../common/enums.js';
import { formatSize, parseSize } from '../common/size.js';
import {
  FaultInjectionServiceClient,
  StorageArrayServiceClient,
  type Fault,
  type GetArrayResponse,
  type Igroup,
  type Lun,
  type LunMap,
  type Pool,
  type ReadReservationKeysResponse,
  type ReadReservationResponse,
} from '../proto/gen/passthru/storage/v1/storage.js';
import { faultTimings, lunStates, osTypes, protocols, provisionings, reservationTypes } from './service.js';

export const DEFAULT_ENDPOINT = '127.0.0.1:50051';
export const ENDPOINT_ENV = 'PASSTHRU_STORAGE_ENDPOINT';

export { EXIT_CODES, formatTable, USAGE_EXIT_CODE } from '../common/cli.js';

const EXIT_TABLE = `Exit codes:
  0  success
  1  any other error (INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED, ...)
  2  usage error, or INVALID_ARGUMENT
  3  NOT_FOUND
  4  ALREADY_EXISTS
  5  FAILED_PRECONDITION (e.g. LUN mapped, igroup in use, faults disabled)
  6  RESOURCE_EXHAUSTED (pool full, LUN ids used up)
  7  PERMISSION_DENIED or UNAUTHENTICATED
  8  UNAVAILABLE or DEADLINE_EXCEEDED (array not reachable; retry)
  9  ABORTED
Errors are printed on stderr as "storage-sim: <STATUS>: <message>".`;

const PROGRAM_EPILOG = `
Admin commands talk to a running "storage-sim serve" over gRPC. Each takes:
  --endpoint <host:port>  the array (default $${ENDPOINT_ENV}, else ${DEFAULT_ENDPOINT})
  --timeout <ms>          deadline of each call (default ${DEFAULT_TIMEOUT_MS})
  --tls-dir <dir>         mTLS with a passthru pki init directory's admin.crt, admin.key, ca.crt
                          ($PASSTHRU_TLS_DIR), or --tls-cert, --tls-key, --tls-ca <file>
                          ($PASSTHRU_TLS_CERT, _KEY, _CA); plaintext without. The array's
                          certificate must name the host dialled and carry its role
  --json                  one JSON document on stdout: the RPC response's fields in camelCase,
                          sizes as numbers of bytes, enums as the CLI's words (linux, thin,
                          online, iscsi), times as RFC 3339 strings, every field present
Mutating commands take --request-id <id> (default: a fresh random id); repeating a command
with the same id returns the first answer and changes nothing.

${EXIT_TABLE}

Examples:
  storage-sim lun create /vol/vm_disks/db1 --size 10GiB --os-type linux --thin
  storage-sim igroup create host1 --protocol iscsi --os-type linux --initiator iqn.1993-08.org.debian:01:host1
  storage-sim map /vol/vm_disks/db1 host1
  storage-sim lun list --prefix /vol/vm_disks/ --json
`;

const SHORT_EXIT = '\nExit codes: 0 ok, 1 other, 2 usage/INVALID_ARGUMENT, 3 NOT_FOUND, 4 ALREADY_EXISTS, 5 FAILED_PRECONDITION,\n6 RESOURCE_EXHAUSTED, 7 PERMISSION_DENIED, 8 UNAVAILABLE/DEADLINE_EXCEEDED, 9 ABORTED (see storage-sim --help).';

// ------------------------------------------------------------------ option parsing

/** A gRPC status code by name (UNAVAILABLE, unavailable) or number (14), 1-16. */
function statusCodeArg(text: string): number {
  const byName = (Code as unknown as Record<string, number>)[text.toUpperCase()];
  const n = /^\d+$/.test(text) ? Number(text) : byName;
  if (n === undefined || !Number.isInteger(n) || n < 1 || n > 16) {
    throw new UsageError('Write a gRPC status name (e.g. UNAVAILABLE) or its number 1-16.');
  }
  return n;
}

const CLI: CliIdentity = {
  program: 'storage-sim',
  endpointEnv: ENDPOINT_ENV,
  serverRole: 'array',
  defaultEndpoint: DEFAULT_ENDPOINT,
  endpointHelp: 'storage-sim gRPC endpoint',
  shortExitHelp: SHORT_EXIT,
};

/** The options every admin command takes; `mutating` adds --request-id. */
function withConn(cmd: Command, mutating = false): Command {
  return connOptions(CLI, cmd, mutating);
}

// ------------------------------------------------------------------ running a command

type ArrayClient = PromiseClient<StorageArrayServiceClient>;
type FaultClient = PromiseClient<FaultInjectionServiceClient>;

/** The clients of one command run, made on first use and closed at the end. */
class Session {
  private arrayClient?: ArrayClient;
  private faultClient?: FaultClient;

  constructor(readonly opts: ConnOpts) {}

  get array(): ArrayClient {
    this.arrayClient ??= connect(StorageArrayServiceClient, this.opts.endpoint, cliConnection(this.opts, CLI.serverRole));
    return this.arrayClient;
  }

  get faults(): FaultClient {
    this.faultClient ??= connect(FaultInjectionServiceClient, this.opts.endpoint, cliConnection(this.opts, CLI.serverRole));
    return this.faultClient;
  }

  close(): void {
    this.arrayClient?.close();
    this.faultClient?.close();
  }
}

/** Runs one command: its output on stdout, or its error on stderr and an exit code. */
function run(o: ConnOpts, body: (s: Session) => Promise<Output>): Promise<void> {
  return runCommand(CLI, o, new Session(o), body);
}

// ------------------------------------------------------------------ JSON shapes

function word<D extends string>(codec: EnumCodec<D>, wire: number): D | null {
  if (wire === 0) return null;
  try {
    return codec.fromWire(wire) ?? null;
  } catch {
    return `unknown(${wire})` as D;
  }
}

const time = (d: Date | undefined): string | null => (d ? d.toISOString() : null);

function lunJson(l: Lun) {
  return {
    uuid: l.uuid,
    path: l.path,
    volume: l.volume,
    name: l.name,
    serial: l.serial,
    naaId: l.naaId,
    sizeBytes: Number(l.sizeBytes),
    osType: word(osTypes, l.osType),
    provisioning: word(provisionings, l.provisioning),
    state: word(lunStates, l.state),
    createTime: time(l.createTime),
    comment: l.comment,
    pool: l.pool,
    usedBytes: Number(l.usedBytes),
    mapped: l.mapped,
  };
}

function igroupJson(g: Igroup) {
  return {
    name: g.name,
    protocol: word(protocols, g.protocol),
    osType: word(osTypes, g.osType),
    initiators: g.initiators,
    createTime: time(g.createTime),
    mapCount: g.mapCount,
  };
}

function mapJson(m: LunMap) {
  return { lunUuid: m.lunUuid, lunPath: m.lunPath, serial: m.serial, igroup: m.igroup, lunId: m.lunId };
}

function poolJson(p: Pool) {
  return {
    name: p.name,
    capacityBytes: Number(p.capacityBytes),
    usedBytes: Number(p.usedBytes),
    availableBytes: Number(p.availableBytes),
    lunCount: p.lunCount,
  };
}

function faultJson(f: Fault) {
  return {
    id: f.id,
    method: f.method,
    remaining: f.remaining,
    code: f.code,
    codeName: f.code === 0 ? null : statusName(f.code),
    message: f.message,
    delayMs: f.delayMs,
    timing: word(faultTimings, f.timing),
  };
}

function reservationJson(r: ReadReservationResponse, keys: ReadReservationKeysResponse) {
  return {
    generation: keys.generation,
    registrations: keys.registrations.map((k) => ({ initiator: k.initiator, key: k.key })),
    holder: r.reserved
      ? { initiator: r.holderInitiator, key: r.holderKey, type: word(reservationTypes, r.type) }
      : null,
  };
}

function arrayJson(a: GetArrayResponse) {
  return {
    name: a.name,
    serialPrefix: a.serialPrefix,
    model: a.model,
    version: a.version,
    minLunSizeBytes: Number(a.minLunSizeBytes),
    maxLunSizeBytes: Number(a.maxLunSizeBytes),
    maxIoBytes: a.maxIoBytes,
    lunCount: a.lunCount,
    igroupCount: a.igroupCount,
    mapCount: a.mapCount,
    pools: a.pools.map(poolJson),
    faultsEnabled: a.faultsEnabled,
  };
}

// ------------------------------------------------------------------ text formatting

const size = (n: number): string => formatSize(n);
const sizeExact = (n: number): string => (n < 1024 ? formatSize(n) : `${formatSize(n)} (${n} bytes)`);

function lunFields(l: ReturnType<typeof lunJson>): string {
  return formatFields([
    ['Path', l.path],
    ['UUID', l.uuid],
    ['Serial', l.serial],
    ['NAA ID', l.naaId],
    ['Size', sizeExact(l.sizeBytes)],
    ['Used', size(l.usedBytes)],
    ['OS type', dash(l.osType)],
    ['Provisioning', dash(l.provisioning)],
    ['State', dash(l.state)],
    ['Pool', l.pool],
    ['Volume', l.volume],
    ['Comment', dash(l.comment)],
    ['Created', dash(l.createTime)],
    ['Mapped', yesNo(l.mapped)],
  ]);
}

function igroupFields(g: ReturnType<typeof igroupJson>): string {
  return formatFields([
    ['Name', g.name],
    ['Protocol', dash(g.protocol)],
    ['OS type', dash(g.osType)],
    ['Initiators', g.initiators.length === 0 ? '-' : g.initiators.join(', ')],
    ['Maps', String(g.mapCount)],
    ['Created', dash(g.createTime)],
  ]);
}

function mapsTable(maps: ReturnType<typeof mapJson>[], empty = 'no LUN maps\n'): string {
  if (maps.length === 0) return empty;
  return formatTable(
    [{ header: 'IGROUP' }, { header: 'LUN ID', right: true }, { header: 'SERIAL' }, { header: 'LUN PATH' }],
    maps.map((m) => [m.igroup, String(m.lunId), m.serial, m.lunPath]),
  );
}

function faultText(f: ReturnType<typeof faultJson>): string {
  const what = [
    f.delayMs > 0 ? `be delayed ${f.delayMs} ms` : '',
    f.codeName ? `fail with ${f.codeName}${f.timing === 'after' ? ' after running (reply lost)' : ''}` : '',
  ]
    .filter(Boolean)
    .join(', then ');
  return `fault ${f.id}: the next ${f.remaining} call${f.remaining === 1 ? '' : 's'} of ${f.method} will ${what}`;
}

// ------------------------------------------------------------------ commands

function addArrayCommands(program: Command): void {
  const array = program.command('array').description("The array's identity, limits and pools.");
  withConn(array.command('show').description('Show the array: name, serial prefix, limits and pools with capacity, used and available space.'))
    .action((o: ConnOpts) =>
      run(o, async (s) => {
        const a = arrayJson(await s.array.getArray({}));
        const pools = a.pools.length === 0
          ? 'no pools\n'
          : formatTable(
              [
                { header: 'POOL' },
                { header: 'CAPACITY', right: true },
                { header: 'USED', right: true },
                { header: 'AVAILABLE', right: true },
                { header: 'USED%', right: true },
                { header: 'LUNS', right: true },
              ],
              a.pools.map((p) => [
                p.name,
                size(p.capacityBytes),
                size(p.usedBytes),
                size(p.availableBytes),
                p.capacityBytes === 0 ? '-' : `${((100 * p.usedBytes) / p.capacityBytes).toFixed(1)}%`,
                String(p.lunCount),
              ]),
            );
        const text =
          formatFields([
            ['Name', a.name],
            ['Model', a.model],
            ['Version', a.version],
            ['Serial prefix', a.serialPrefix],
            ['LUN size', `${size(a.minLunSizeBytes)} to ${size(a.maxLunSizeBytes)}`],
            ['Max I/O', size(a.maxIoBytes)],
            ['LUNs', String(a.lunCount)],
            ['Igroups', String(a.igroupCount)],
            ['LUN maps', String(a.mapCount)],
            ['Faults enabled', yesNo(a.faultsEnabled)],
          ]) +
          '\n' +
          pools;
        return { json: a, text };
      }),
    );
}

function addLunCommands(program: Command): void {
  const lun = program
    .command('lun')
    .description('Create, list, show, resize, take online/offline and delete LUNs. A <lun> is its path, uuid or serial.');

  withConn(
    lun
      .command('create <path>')
      .description('Create a LUN at /vol/<volume>/<name>. The same path with the same parameters returns the existing LUN.')
      .requiredOption('--size <size>', 'size, e.g. 10GiB, 512MiB, 1TiB, 100GB')
      .addOption(new Option('--os-type <type>', `host OS type: ${osTypes.names.join(', ')}`).argParser(wordArg(osTypes)).makeOptionMandatory())
      .option('--thin', 'thin provisioning (default thick: the whole size is reserved in the pool)')
      .option('--comment <text>', 'free text, e.g. who owns the LUN')
      .option('--pool <name>', "pool of a new volume (default: the volume's pool, else the first pool)"),
    true,
  ).action((path: string, o: MutateOpts & { size: string; osType: string; thin?: boolean; comment?: string; pool?: string }) =>
    run(o, async (s) => {
      const sizeBytes = parseSize(o.size, 'size');
      const res = await s.array.createLun({
        requestId: requestId(o),
        path,
        sizeBytes: BigInt(sizeBytes),
        osType: osTypes.toWire(osTypes.fromName(o.osType)),
        provisioning: provisionings.toWire(o.thin ? 'thin' : 'thick'),
        comment: o.comment ?? '',
        pool: o.pool ?? '',
      });
      const l = lunJson(res.lun!);
      return { json: { lun: l }, text: lunFields(l) };
    }),
  );

  withConn(
    lun
      .command('list')
      .description('List LUNs ordered by path (every page), optionally only those under a path prefix.')
      .option('--prefix <path>', 'only LUNs whose path starts with this, e.g. /vol/vm_disks/')
      .option('--page-size <n>', 'LUNs asked for per call (1-1000)', intArg('--page-size', 1, 1000), 100),
  ).action((o: ConnOpts & { prefix?: string; pageSize: number }) =>
    run(o, async (s) => {
      const luns = (
        await allPages(async (pageToken) => {
          const r = await s.array.listLuns({ pageSize: o.pageSize, pageToken, pathPrefix: o.prefix ?? '' });
          return { items: r.luns, next: r.nextPageToken };
        })
      ).map(lunJson);
      const text =
        luns.length === 0
          ? `no LUNs${o.prefix ? ` under ${o.prefix}` : ''}\n`
          : formatTable(
              [
                { header: 'PATH' },
                { header: 'SERIAL' },
                { header: 'SIZE', right: true },
                { header: 'OS TYPE' },
                { header: 'PROVISIONING' },
                { header: 'STATE' },
                { header: 'MAPPED' },
                { header: 'USED', right: true },
              ],
              luns.map((l) => [
                l.path,
                l.serial,
                size(l.sizeBytes),
                dash(l.osType),
                dash(l.provisioning),
                dash(l.state),
                yesNo(l.mapped),
                size(l.usedBytes),
              ]),
            );
      return { json: { luns }, text };
    }),
  );

  withConn(
    lun.command('show <lun>').description('Show a LUN: every field (NAA id included), its maps and its persistent reservation.'),
  ).action((ref: string, o: ConnOpts) =>
    run(o, async (s) => {
      const l = lunJson((await s.array.getLun({ lun: ref })).lun!);
      const [maps, reservation, keys] = await Promise.all([
        allPages(async (pageToken) => {
          const r = await s.array.listLunMaps({ lun: l.uuid, igroup: '', pageSize: 1000, pageToken });
          return { items: r.maps, next: r.nextPageToken };
        }),
        s.array.readReservation({ lun: l.uuid }),
        s.array.readReservationKeys({ lun: l.uuid }),
      ]);
      const pr = reservationJson(reservation, keys);
      let text = lunFields(l);
      text += '\nMaps:\n' + mapsTable(maps.map(mapJson), 'not mapped\n');
      text +=
        '\nReservation:\n' +
        formatFields([
          ['Generation', String(pr.generation)],
          ['Holder', pr.holder ? `${pr.holder.initiator} (key ${pr.holder.key}, ${dash(pr.holder.type)})` : 'none'],
          ['Registrations', pr.registrations.length === 0 ? 'none' : pr.registrations.map((r) => `${r.initiator} (key ${r.key})`).join(', ')],
        ]);
      return { json: { lun: l, maps: maps.map(mapJson), reservation: pr }, text };
    }),
  );

  withConn(
    lun
      .command('resize <lun>')
      .description('Grow a LUN to a new size (a LUN never shrinks); its data is kept.')
      .requiredOption('--size <size>', 'the new size, e.g. 20GiB'),
    true,
  ).action((ref: string, o: MutateOpts & { size: string }) =>
    run(o, async (s) => {
      const sizeBytes = parseSize(o.size, 'size');
      const l = lunJson((await s.array.resizeLun({ requestId: requestId(o), lun: ref, sizeBytes: BigInt(sizeBytes) })).lun!);
      return { json: { lun: l }, text: `LUN ${l.path} is ${sizeExact(l.sizeBytes)}\n` };
    }),
  );

  for (const state of ['online', 'offline'] as const) {
    withConn(
      lun
        .command(`${state} <lun>`)
        .description(state === 'online' ? 'Bring a LUN online (block I/O allowed).' : 'Take a LUN offline (no block I/O until it is online again).'),
      true,
    ).action((ref: string, o: MutateOpts) =>
      run(o, async (s) => {
        const l = lunJson((await s.array.setLunState({ requestId: requestId(o), lun: ref, state: lunStates.toWire(state) })).lun!);
        return { json: { lun: l }, text: `LUN ${l.path} is ${dash(l.state)}\n` };
      }),
    );
  }

  withConn(
    lun
      .command('delete <lun>')
      .description('Delete a LUN and its data. Refused while it is mapped unless --force. Deleting a LUN that does not exist succeeds.')
      .option('--force', 'unmap it from every igroup first'),
    true,
  ).action((ref: string, o: MutateOpts & { force?: boolean }) =>
    run(o, async (s) => {
      const r = await s.array.deleteLun({ requestId: requestId(o), lun: ref, force: o.force ?? false });
      const text = r.deleted
        ? `deleted LUN ${ref}${r.unmappedCount > 0 ? ` (unmapped from ${r.unmappedCount} igroup${r.unmappedCount === 1 ? '' : 's'})` : ''}\n`
        : `LUN ${ref} does not exist: nothing to delete\n`;
      return { json: { deleted: r.deleted, unmappedCount: r.unmappedCount }, text };
    }),
  );
}

function addIgroupCommands(program: Command): void {
  const igroup = program
    .command('igroup')
    .description('Initiator groups: the hosts (IQNs or WWPNs) a LUN can be mapped to.');

  withConn(
    igroup
      .command('create <name>')
      .description('Create an igroup. The same name with the same parameters returns the existing igroup.')
      .addOption(new Option('--protocol <protocol>', `${protocols.names.join(', ')}`).argParser(wordArg(protocols)).makeOptionMandatory())
      .addOption(new Option('--os-type <type>', `host OS type: ${osTypes.names.join(', ')}`).argParser(wordArg(osTypes)).makeOptionMandatory())
      .option('--initiator <name>', 'an IQN, eui.… name or WWPN (repeatable)', collect, []),
    true,
  ).action((name: string, o: MutateOpts & { protocol: string; osType: string; initiator: string[] }) =>
    run(o, async (s) => {
      const g = igroupJson(
        (
          await s.array.createIgroup({
            requestId: requestId(o),
            name,
            protocol: protocols.toWire(protocols.fromName(o.protocol)),
            osType: osTypes.toWire(osTypes.fromName(o.osType)),
            initiators: o.initiator,
          })
        ).igroup!,
      );
      return { json: { igroup: g }, text: igroupFields(g) };
    }),
  );

  withConn(
    igroup
      .command('list')
      .description('List igroups (every page).')
      .option('--initiator <name>', 'only the igroups holding this initiator')
      .option('--page-size <n>', 'igroups asked for per call (1-1000)', intArg('--page-size', 1, 1000), 100),
  ).action((o: ConnOpts & { initiator?: string; pageSize: number }) =>
    run(o, async (s) => {
      const igroups = (
        await allPages(async (pageToken) => {
          const r = await s.array.listIgroups({ pageSize: o.pageSize, pageToken, initiator: o.initiator ?? '' });
          return { items: r.igroups, next: r.nextPageToken };
        })
      ).map(igroupJson);
      const text =
        igroups.length === 0
          ? 'no igroups\n'
          : formatTable(
              [{ header: 'NAME' }, { header: 'PROTOCOL' }, { header: 'OS TYPE' }, { header: 'MAPS', right: true }, { header: 'INITIATORS' }],
              igroups.map((g) => [g.name, dash(g.protocol), dash(g.osType), String(g.mapCount), g.initiators.join(', ') || '-']),
            );
      return { json: { igroups }, text };
    }),
  );

  withConn(igroup.command('show <name>').description('Show an igroup: protocol, OS type, initiators and the LUNs mapped to it.')).action(
    (name: string, o: ConnOpts) =>
      run(o, async (s) => {
        const g = igroupJson((await s.array.getIgroup({ name })).igroup!);
        const maps = (
          await allPages(async (pageToken) => {
            const r = await s.array.listLunMaps({ lun: '', igroup: name, pageSize: 1000, pageToken });
            return { items: r.maps, next: r.nextPageToken };
          })
        ).map(mapJson);
        return { json: { igroup: g, maps }, text: igroupFields(g) + '\nMaps:\n' + mapsTable(maps, 'no LUNs mapped\n') };
      }),
  );

  withConn(
    igroup
      .command('add <name> <initiator...>')
      .description('Add initiators to an igroup; one already in it is not an error.'),
    true,
  ).action((name: string, initiators: string[], o: MutateOpts) =>
    run(o, async (s) => {
      const g = igroupJson((await s.array.addInitiators({ requestId: requestId(o), igroup: name, initiators })).igroup!);
      return { json: { igroup: g }, text: `igroup ${g.name} initiators: ${g.initiators.join(', ') || '-'}\n` };
    }),
  );

  withConn(
    igroup
      .command('remove <name> <initiator...>')
      .description('Remove initiators from an igroup; one not in it is not an error. Refused while LUNs are mapped unless --force.')
      .option('--force', 'remove even while LUNs are mapped (the host loses its paths to them)'),
    true,
  ).action((name: string, initiators: string[], o: MutateOpts & { force?: boolean }) =>
    run(o, async (s) => {
      const g = igroupJson(
        (await s.array.removeInitiators({ requestId: requestId(o), igroup: name, initiators, force: o.force ?? false })).igroup!,
      );
      return { json: { igroup: g }, text: `igroup ${g.name} initiators: ${g.initiators.join(', ') || '-'}\n` };
    }),
  );

  withConn(
    igroup
      .command('delete <name>')
      .description('Delete an igroup. Refused while LUNs are mapped to it. Deleting an igroup that does not exist succeeds.'),
    true,
  ).action((name: string, o: MutateOpts) =>
    run(o, async (s) => {
      const r = await s.array.deleteIgroup({ requestId: requestId(o), name });
      return {
        json: { deleted: r.deleted },
        text: r.deleted ? `deleted igroup ${name}\n` : `igroup ${name} does not exist: nothing to delete\n`,
      };
    }),
  );
}

function addMapCommands(program: Command): void {
  withConn(
    program
      .command('map <lun> <igroup>')
      .description('Map a LUN to an igroup, at a LUN id (the lowest free one in the igroup unless --lun-id).')
      .option('--lun-id <n>', 'LUN id 0-4095, unique inside the igroup', intArg('--lun-id', 0, 4095)),
    true,
  ).action((ref: string, igroup: string, o: MutateOpts & { lunId?: number }) =>
    run(o, async (s) => {
      const m = mapJson((await s.array.mapLun({ requestId: requestId(o), lun: ref, igroup, igroups: [], lunId: o.lunId })).map!);
      return { json: { map: m }, text: `mapped LUN ${m.lunPath} to igroup ${m.igroup} as LUN id ${m.lunId}\n` };
    }),
  );

  withConn(
    program.command('unmap <lun> <igroup>').description('Unmap a LUN from an igroup. Unmapping what is not mapped succeeds.'),
    true,
  ).action((ref: string, igroup: string, o: MutateOpts) =>
    run(o, async (s) => {
      const r = await s.array.unmapLun({ requestId: requestId(o), lun: ref, igroup, igroups: [] });
      return {
        json: { unmapped: r.unmapped },
        text: r.unmapped ? `unmapped LUN ${ref} from igroup ${igroup}\n` : `LUN ${ref} was not mapped to igroup ${igroup}: nothing to do\n`,
      };
    }),
  );

  withConn(
    program
      .command('maps')
      .description('List LUN maps (every page): of one LUN, of one igroup, or all.')
      .option('--lun <lun>', 'only the maps of this LUN (path, uuid or serial)')
      .option('--igroup <name>', 'only the maps of this igroup')
      .option('--page-size <n>', 'maps asked for per call (1-1000)', intArg('--page-size', 1, 1000), 100),
  ).action((o: ConnOpts & { lun?: string; igroup?: string; pageSize: number }) =>
    run(o, async (s) => {
      const maps = (
        await allPages(async (pageToken) => {
          const r = await s.array.listLunMaps({ lun: o.lun ?? '', igroup: o.igroup ?? '', pageSize: o.pageSize, pageToken });
          return { items: r.maps, next: r.nextPageToken };
        })
      ).map(mapJson);
      return { json: { maps }, text: mapsTable(maps) };
    }),
  );
}

function addFaultCommands(program: Command): void {
  const fault = program
    .command('fault')
    .description('Fault injection for tests (storage-sim serve --enable-faults; otherwise FAILED_PRECONDITION, exit 5).');

  withConn(
    fault
      .command('inject <method>')
      .description('Make the next calls of one StorageArrayService RPC (e.g. MapLun) fail with a status, be delayed, or both.')
      .option('--count <n>', 'how many calls (default 1)', intArg('--count', 1, 1_000_000), 1)
      .option('--code <status>', 'status to fail with: a name (UNAVAILABLE) or number (14); default UNAVAILABLE unless only --delay-ms is given', statusCodeArg)
      .option('--delay-ms <ms>', 'delay each call by this long first', intArg('--delay-ms', 0, 600_000), 0)
      .option('--after', 'fail after the call ran and its change is durable (the reply is lost)')
      .option('--message <text>', 'status message (default: "injected fault on <method>")'),
  ).action((method: string, o: ConnOpts & { count: number; code?: number; delayMs: number; after?: boolean; message?: string }) =>
    run(o, async (s) => {
      const code = o.code ?? (o.delayMs > 0 ? 0 : Code.UNAVAILABLE);
      // MapLun, mapLun and /passthru.storage.v1.StorageArrayService/MapLun all name one RPC.
      const name = /^[a-z]/.test(method) ? method[0]!.toUpperCase() + method.slice(1) : method;
      const r = await s.faults.injectFault({
        method: name,
        count: o.count,
        code,
        message: o.message ?? '',
        delayMs: o.delayMs,
        timing: faultTimings.toWire(o.after ? 'after' : 'before'),
      });
      const f = faultJson(r.fault!);
      return { json: { fault: f }, text: `${faultText(f)}\n` };
    }),
  );

  withConn(
    fault
      .command('unavailable')
      .argument('<ms>', 'how long, in milliseconds (0 ends the window now)', intArg('<ms>', 0, 600_000))
      .description('Make every StorageArrayService RPC fail with UNAVAILABLE for a time.'),
  ).action((ms: number, o: ConnOpts) =>
    run(o, async (s) => {
      const r = await s.faults.setUnavailable({ durationMs: ms });
      const until = time(r.unavailableUntil);
      return {
        json: { unavailableUntil: until },
        text: until ? `array unavailable until ${until}\n` : 'array available\n',
      };
    }),
  );

  withConn(fault.command('list').description('List the pending faults and any unavailable window.')).action((o: ConnOpts) =>
    run(o, async (s) => {
      const r = await s.faults.listFaults({});
      const faults = r.faults.map(faultJson);
      const until = time(r.unavailableUntil);
      let text =
        faults.length === 0
          ? 'no faults\n'
          : formatTable(
              [
                { header: 'ID', right: true },
                { header: 'METHOD' },
                { header: 'REMAINING', right: true },
                { header: 'CODE' },
                { header: 'DELAY', right: true },
                { header: 'TIMING' },
                { header: 'MESSAGE' },
              ],
              faults.map((f) => [
                String(f.id),
                f.method,
                String(f.remaining),
                f.codeName ?? '-',
                f.delayMs > 0 ? `${f.delayMs} ms` : '-',
                dash(f.timing),
                f.message,
              ]),
            );
      if (until) text += `array unavailable until ${until}\n`;
      return { json: { faults, unavailableUntil: until }, text };
    }),
  );

  withConn(fault.command('clear').description('Clear every fault and end any unavailable window.')).action((o: ConnOpts) =>
    run(o, async (s) => {
      const r = await s.faults.clearFaults({});
      return { json: { cleared: r.cleared }, text: `cleared ${r.cleared} fault${r.cleared === 1 ? '' : 's'}\n` };
    }),
  );
}

/** Adds the admin commands (array, lun, igroup, map, unmap, maps, fault) to storage-sim. */
export function addAdminCommands(program: Command): void {
  addArrayCommands(program);
  addLunCommands(program);
  addIgroupCommands(program);
  addMapCommands(program);
  addFaultCommands(program);
  program.addHelpText('after', PROGRAM_EPILOG);
  usageExitCodes(program);
}
