/**
 * host-agent's admin CLI, as a failover cluster's own admin tools would be: `cluster`,
 * `groups`, `vms`, `disks`, `ops`, `op`, `fail-node`, `recover-node`, `move-group`,
 * `add-available-disk`, `remove-available-disk`, `check`, `vm` and `node` commands, each
 * one or a few calls of passthru.host.v1.AdminService on a running `host-agent serve`.
 *
 * Every admin command takes `--endpoint <host:port>` (default $PASSTHRU_HOST_ENDPOINT, else
 * 127.0.0.1:50061), `--timeout <ms>` (the deadline of each unary call; a watch has none) and
 * `--json`. Every mutating command sends a fresh random request_id unless `--request-id`
 * names one, and prints the id it sent under --json (`requestId`), so a script can repeat
 * the command with the same id and get the first answer back.
 *
 * Output. Human: aligned tables with headers and `Key: value` blocks, sizes as 64 MiB.
 * `--json`: one JSON document on stdout (pretty-printed), the RPC's response in proto3 JSON
 * form, with these conventions, the same for every command:
 *   - field names in camelCase, as proto3 JSON (and grpcurl) write them;
 *   - enums by their proto names: "VM_STATE_RUNNING", "GROUP_KIND_AVAILABLE_STORAGE", ...;
 *   - every field present, defaults included (no proto3 omission); a message not set is null;
 *   - byte counts and other integers are JSON numbers (all below 2^53);
 *   - timestamps are RFC 3339 strings (UTC), null when absent;
 *   - an operation's error (google.rpc.Status) is {code, codeName, message};
 *   - `ops` follows pages up to --limit and prints {"operations": [...]} with no page token.
 * Following an operation (`ops --watch`, `--wait`) with --json prints JSON lines instead:
 * one compact JSON object per line, each a WatchOperation message ({events, operation});
 * `add-available-disk --wait` (and remove) prints its own response as the first line.
 * Errors never go to stdout, in either mode.
 *
 * Errors: `host-agent: <STATUS_NAME>: <server message>` on stderr, and an exit code per
 * status class (common/cli.ts; also in `host-agent --help`). Following an operation exits 0
 * when it SUCCEEDED and with the exit code of its error's status when it FAILED (the error
 * on stderr too); `check` exits 1 when it finds a violation.
 */
import { Metadata } from '@grpc/grpc-js';
import { Command, InvalidArgumentError as UsageError, Option } from 'commander';
import {
  connOptions,
  dash,
  EXIT_CODES,
  formatFields,
  formatTable,
  intArg,
  requestId,
  runCommand,
  statusName,
  usageExitCodes,
  yesNo,
  type CliIdentity,
  type ConnOpts,
  type MutateOpts,
  type Output,
} from '../common/cli.js';
import { connect, DEFAULT_TIMEOUT_MS, type PromiseClient } from '../common/client.js';
import { cliConnection } from '../common/tls.js';
import { formatSize } from '../common/size.js';
import {
  AdminServiceClient,
  diskSharingToJSON,
  GroupKind,
  groupKindToJSON,
  GuestOs,
  guestOsToJSON,
  nodeStateToJSON,
  operationKindToJSON,
  OperationState,
  operationStateToJSON,
  resourceStateToJSON,
  stepEventKindToJSON,
  StepState,
  stepStateToJSON,
  vmStateToJSON,
  type AdminServiceWatchOperationResponse,
  type Disk,
  type DiskResult,
  type GetClusterResponse,
  type Group,
  type GroupMove,
  type Node,
  type Operation,
  type Resource,
  type ScsiAddress,
  type Step,
  type StepEvent,
  type Violation,
  type Vm,
} from '../proto/gen/passthru/host/v1/host.js';
import type { Status } from '../proto/gen/google/rpc/status.js';

export const DEFAULT_ENDPOINT = '127.0.0.1:50061';
export const ENDPOINT_ENV = 'PASSTHRU_HOST_ENDPOINT';

const EXIT_TABLE = `Exit codes:
  0  success (an operation followed to SUCCEEDED; check found no violation)
  1  any other error (INTERNAL, UNKNOWN, UNIMPLEMENTED, CANCELLED, ...); check found violations
  2  usage error, or INVALID_ARGUMENT
  3  NOT_FOUND (VM, node, group, operation, LUN)
  4  ALREADY_EXISTS
  5  FAILED_PRECONDITION (e.g. node down, VM off, no hot add, VM not HA)
  6  RESOURCE_EXHAUSTED
  7  PERMISSION_DENIED or UNAUTHENTICATED
  8  UNAVAILABLE or DEADLINE_EXCEEDED (host agent not reachable or recovering; retry)
  9  ABORTED (another operation in flight)
An operation followed with --watch or --wait that ends FAILED exits with the code of its error.
Errors are printed on stderr as "host-agent: <STATUS>: <message>".`;

const PROGRAM_EPILOG = `
Admin commands talk to a running "host-agent serve" (AdminService) over gRPC. Each takes:
  --endpoint <host:port>  the host agent (default $${ENDPOINT_ENV}, else ${DEFAULT_ENDPOINT})
  --timeout <ms>          deadline of each call (default ${DEFAULT_TIMEOUT_MS}; following an operation has none)
  --tls-dir <dir>         mTLS with a passthru pki init directory's admin.crt, admin.key, ca.crt
                          ($PASSTHRU_TLS_DIR), or --tls-cert, --tls-key, --tls-ca <file>
                          ($PASSTHRU_TLS_CERT, _KEY, _CA); plaintext without. The host agent's
                          certificate must name the host dialled and carry its role
  --json                  one JSON document on stdout: the RPC response's fields in camelCase,
                          enums by their proto names (VM_STATE_RUNNING), integers as numbers,
                          times as RFC 3339 strings, every field present; --watch and --wait
                          print one JSON object per line, one per WatchOperation message
Mutating commands take --request-id <id> (default: a fresh random id, printed under --json);
repeating a command with the same id returns the first answer and changes nothing.

${EXIT_TABLE}

Examples:
  host-agent cluster
  host-agent groups --kind available
  host-agent vms --node node1
  host-agent add-available-disk /vol/shared/reports --wait
  host-agent ops --state failed
  host-agent fail-node node1 && host-agent recover-node node1
  host-agent move-group "Virtual Machine web1" node1
  host-agent node caps node2 --hot-add off
`;

const SHORT_EXIT =
  '\nExit codes: 0 ok, 1 other, 2 usage/INVALID_ARGUMENT, 3 NOT_FOUND, 4 ALREADY_EXISTS, 5 FAILED_PRECONDITION,\n6 RESOURCE_EXHAUSTED, 7 PERMISSION_DENIED, 8 UNAVAILABLE/DEADLINE_EXCEEDED, 9 ABORTED (see host-agent --help).';

const CLI: CliIdentity = {
  program: 'host-agent',
  endpointEnv: ENDPOINT_ENV,
  serverRole: 'host-agent',
  defaultEndpoint: DEFAULT_ENDPOINT,
  endpointHelp: 'host-agent AdminService endpoint',
  shortExitHelp: SHORT_EXIT,
};

// ------------------------------------------------------------------ option parsing

/** The options every admin command takes; `mutating` adds --request-id. */
function withConn(cmd: Command, mutating = false): Command {
  return connOptions(CLI, cmd, mutating);
}

/** A word of a fixed list (case-insensitive) → its value, as a commander option parser. */
function choiceArg<V>(words: Record<string, V>): (text: string) => V {
  return (text) => {
    const key = text.toLowerCase();
    if (!Object.hasOwn(words, key)) throw new UsageError(`Write one of ${Object.keys(words).join(', ')}.`);
    return words[key]!;
  };
}

const GROUP_KIND_WORDS: Record<string, GroupKind> = {
  cluster: GroupKind.GROUP_KIND_CLUSTER,
  available: GroupKind.GROUP_KIND_AVAILABLE_STORAGE,
  vm: GroupKind.GROUP_KIND_VM,
  temporary: GroupKind.GROUP_KIND_TEMPORARY,
};
const OPERATION_STATE_WORDS: Record<string, OperationState> = {
  running: OperationState.OPERATION_STATE_RUNNING,
  rolling_back: OperationState.OPERATION_STATE_ROLLING_BACK,
  succeeded: OperationState.OPERATION_STATE_SUCCEEDED,
  failed: OperationState.OPERATION_STATE_FAILED,
};
const GUEST_OS_WORDS: Record<string, GuestOs> = { windows: GuestOs.GUEST_OS_WINDOWS, linux: GuestOs.GUEST_OS_LINUX };
const ON_OFF: Record<string, boolean> = { on: true, off: false };

// ------------------------------------------------------------------ running a command

type AdminClient = PromiseClient<AdminServiceClient>;

/** The client of one command run, made on first use and closed at the end. */
class Session {
  private client?: AdminClient;

  constructor(readonly opts: ConnOpts) {}

  get admin(): AdminClient {
    this.client ??= connect(AdminServiceClient, this.opts.endpoint, cliConnection(this.opts, CLI.serverRole));
    return this.client;
  }

  close(): void {
    this.client?.close();
  }
}

/** Runs one command: its output on stdout, or its error on stderr and an exit code. */
function run(o: ConnOpts, body: (s: Session) => Promise<Output | void>): Promise<void> {
  return runCommand(CLI, o, new Session(o), body);
}

// ------------------------------------------------------------------ JSON shapes (proto3 JSON, every field present)

const time = (d: Date | undefined): string | null => (d ? d.toISOString() : null);

function addressJson(a: ScsiAddress | undefined) {
  return a ? { controller: a.controller, location: a.location } : null;
}

function nodeJson(n: Node) {
  return {
    name: n.name,
    initiator: n.initiator,
    state: nodeStateToJSON(n.state),
    hypervisorEnabled: n.hypervisorEnabled,
    hotAddSupported: n.hotAddSupported,
  };
}

function vmJson(v: Vm) {
  return {
    id: v.id,
    name: v.name,
    guestOs: guestOsToJSON(v.guestOs),
    state: vmStateToJSON(v.state),
    ha: v.ha,
    node: v.node,
    scsiControllers: v.scsiControllers,
    locationsPerController: v.locationsPerController,
    group: v.group,
    guestEndpoint: v.guestEndpoint,
  };
}

function resourceJson(r: Resource) {
  return { name: r.name, state: resourceStateToJSON(r.state), serial: r.serial, vmId: r.vmId, mountPath: r.mountPath };
}

function groupJson(g: Group) {
  return { name: g.name, kind: groupKindToJSON(g.kind), ownerNode: g.ownerNode, vmId: g.vmId, resources: g.resources.map(resourceJson) };
}

function diskJson(d: Disk) {
  return {
    vmId: d.vmId,
    mountPath: d.mountPath,
    serial: d.serial,
    naaId: d.naaId,
    sizeBytes: Number(d.sizeBytes),
    address: addressJson(d.address),
    lunId: d.lunId,
    lunPath: d.lunPath,
    sharing: diskSharingToJSON(d.sharing),
    resource: d.resource,
    resourceState: resourceStateToJSON(d.resourceState),
    mounted: d.mounted,
    volumeId: d.volumeId,
    volumeLabel: d.volumeLabel,
  };
}

function stepJson(s: Step) {
  return { name: s.name, state: stepStateToJSON(s.state), startTime: time(s.startTime), endTime: time(s.endTime), message: s.message };
}

function resultJson(r: DiskResult | undefined) {
  if (!r) return null;
  return { address: addressJson(r.address), serial: r.serial, naaId: r.naaId, lunId: r.lunId, lunPath: r.lunPath, sizeBytes: Number(r.sizeBytes) };
}

function errorJson(e: Status | undefined) {
  return e ? { code: e.code, codeName: statusName(e.code), message: e.message } : null;
}

function operationJson(op: Operation) {
  return {
    id: op.id,
    kind: operationKindToJSON(op.kind),
    vmId: op.vmId,
    mountPath: op.mountPath,
    requestId: op.requestId,
    state: operationStateToJSON(op.state),
    steps: op.steps.map(stepJson),
    result: resultJson(op.result),
    error: errorJson(op.error),
    createTime: time(op.createTime),
    updateTime: time(op.updateTime),
    committed: op.committed,
  };
}

function eventJson(e: StepEvent) {
  return { step: e.step, kind: stepEventKindToJSON(e.kind), time: time(e.time), message: e.message };
}

function watchJson(m: AdminServiceWatchOperationResponse) {
  return { events: m.events.map(eventJson), operation: m.operation ? operationJson(m.operation) : null };
}

function moveJson(m: GroupMove) {
  return { group: m.group, fromNode: m.fromNode, toNode: m.toNode, vmId: m.vmId, vmRunning: m.vmRunning, serials: m.serials };
}

function violationJson(v: Violation) {
  return { kind: v.kind, subject: v.subject, description: v.description };
}

function clusterJson(c: GetClusterResponse) {
  return {
    name: c.name,
    nodes: c.nodes.map(nodeJson),
    availableStorageOwner: c.availableStorageOwner,
    vmCount: c.vmCount,
    diskCount: c.diskCount,
    operationsInFlight: c.operationsInFlight,
    serving: c.serving,
  };
}

// ------------------------------------------------------------------ text formatting

/** The word people read for a proto enum name: VM_STATE_RUNNING → running ('-' if unspecified). */
function word(protoName: string): string {
  const m = /^(?:GUEST_OS|VM_STATE|NODE_STATE|GROUP_KIND|RESOURCE_STATE|DISK_SHARING|OPERATION_KIND|OPERATION_STATE|STEP_STATE|STEP_EVENT_KIND)_(.+)$/.exec(protoName);
  const rest = m ? m[1]! : protoName;
  if (rest === 'UNSPECIFIED') return '-';
  if (rest === 'AVAILABLE_STORAGE') return 'available';
  return rest.toLowerCase();
}

const onOff = (b: boolean): string => (b ? 'on' : 'off');
const scsi = (a: { controller: number; location: number } | null): string => (a ? `${a.controller}:${a.location}` : '-');
const plural = (n: number, one: string, many = `${one}s`): string => `${n} ${n === 1 ? one : many}`;

function nodesTable(nodes: ReturnType<typeof nodeJson>[]): string {
  if (nodes.length === 0) return 'no nodes\n';
  return formatTable(
    [{ header: 'NODE' }, { header: 'STATE' }, { header: 'INITIATOR' }, { header: 'HYPERVISOR' }, { header: 'HOT-ADD' }],
    nodes.map((n) => [n.name, word(n.state), n.initiator, onOff(n.hypervisorEnabled), onOff(n.hotAddSupported)]),
  );
}

function nodeFields(n: ReturnType<typeof nodeJson>): string {
  return formatFields([
    ['Node', n.name],
    ['State', word(n.state)],
    ['Initiator', n.initiator],
    ['Hypervisor', onOff(n.hypervisorEnabled)],
    ['Hot add/remove', onOff(n.hotAddSupported)],
  ]);
}

function vmFields(v: ReturnType<typeof vmJson>): string {
  return formatFields([
    ['VM', v.id],
    ['Name', v.name],
    ['Guest OS', word(v.guestOs)],
    ['State', word(v.state)],
    ['HA', yesNo(v.ha)],
    ['Node', v.node],
    ['SCSI', `${v.scsiControllers} controllers x ${v.locationsPerController} locations`],
    ['Group', v.group],
    ['Guest endpoint', dash(v.guestEndpoint)],
  ]);
}

function errorText(e: ReturnType<typeof errorJson>): string {
  return e ? `${e.codeName}: ${e.message}` : '';
}

function resultText(r: ReturnType<typeof resultJson>): string {
  if (!r) return '-';
  const parts = [`serial ${r.serial}`];
  if (r.address) parts.push(`SCSI ${scsi(r.address)}`);
  parts.push(`LUN id ${r.lunId}`);
  if (r.lunPath) parts.push(r.lunPath);
  if (r.sizeBytes > 0) parts.push(formatSize(r.sizeBytes));
  return parts.join(', ');
}

function opsTable(ops: ReturnType<typeof operationJson>[]): string {
  return formatTable(
    [{ header: 'ID' }, { header: 'KIND' }, { header: 'VM' }, { header: 'MOUNT' }, { header: 'STATE' }, { header: 'COMMITTED' }, { header: 'ERROR' }],
    ops.map((op) => [op.id, word(op.kind), dash(op.vmId), dash(op.mountPath), word(op.state), yesNo(op.committed), dash(errorText(op.error))]),
  );
}

function stepsTable(steps: ReturnType<typeof stepJson>[]): string {
  if (steps.length === 0) return 'no steps\n';
  return formatTable(
    [{ header: 'STEP' }, { header: 'STATE' }, { header: 'STARTED' }, { header: 'ENDED' }, { header: 'MESSAGE' }],
    steps.map((s) => [s.name, word(s.state), dash(s.startTime), dash(s.endTime), s.message]),
  );
}

function operationText(op: ReturnType<typeof operationJson>): string {
  const pairs: [string, string][] = [
    ['Operation', op.id],
    ['Kind', word(op.kind)],
    ['VM', dash(op.vmId)],
    ['Mount', dash(op.mountPath)],
    ['Request ID', dash(op.requestId)],
    ['State', word(op.state)],
    ['Committed', yesNo(op.committed)],
    ['Created', dash(op.createTime)],
    ['Updated', dash(op.updateTime)],
  ];
  if (op.result) pairs.push(['Result', resultText(op.result)]);
  if (op.error) pairs.push(['Error', errorText(op.error)]);
  return formatFields(pairs) + '\nSteps:\n' + stepsTable(op.steps);
}

/** One move in words: what moved where, or what stayed down. */
function moveText(m: ReturnType<typeof moveJson>): string {
  const vm = m.vmId ? ` (VM ${m.vmId} ${m.vmRunning ? 'running' : 'off'})` : '';
  const disks = m.serials.length > 0 ? `; reservations taken over for ${m.serials.join(', ')}` : '';
  if (m.fromNode === m.toNode) return `group ${m.group} stays on node ${m.fromNode}${vm}${disks}`;
  return `moved group ${m.group} from ${m.fromNode} to ${m.toNode}${vm}${disks}`;
}

function movesTable(moves: ReturnType<typeof moveJson>[]): string {
  if (moves.length === 0) return 'no groups moved\n';
  return formatTable(
    [{ header: 'GROUP' }, { header: 'FROM' }, { header: 'TO' }, { header: 'VM' }, { header: 'VM STATE' }, { header: 'DISKS' }],
    moves.map((m) => [
      m.group,
      m.fromNode,
      m.fromNode === m.toNode ? `${m.toNode} (stays, down)` : m.toNode,
      dash(m.vmId),
      m.vmId ? (m.vmRunning ? 'running' : 'off') : '-',
      m.serials.join(', ') || '-',
    ]),
  );
}

// ------------------------------------------------------------------ following an operation

const STEP_WIDTH = 16;
const KIND_WIDTH = 12;

function eventLine(t: string | null, step: string, kind: string, message: string): string {
  return `${dash(t)}  ${step.padEnd(STEP_WIDTH)}  ${kind.padEnd(KIND_WIDTH)}  ${message}`.trimEnd() + '\n';
}

/** What a step's state says happened last, in the words of the event stream. */
const STATE_AS_EVENT: Partial<Record<StepState, string>> = {
  [StepState.STEP_STATE_RUNNING]: 'started',
  [StepState.STEP_STATE_DONE]: 'finished',
  [StepState.STEP_STATE_SKIPPED]: 'skipped',
  [StepState.STEP_STATE_FAILED]: 'failed',
  [StepState.STEP_STATE_UNDOING]: 'undo_started',
  [StepState.STEP_STATE_UNDONE]: 'undone',
};

const isFinal = (op: Operation): boolean =>
  op.state === OperationState.OPERATION_STATE_SUCCEEDED || op.state === OperationState.OPERATION_STATE_FAILED;

/**
 * Follows WatchOperation to the operation's final state. Text: first what the operation has
 * done so far (one line per step begun, at its latest transition), then one line per event
 * (`time step kind message`), then the final state. JSON: one line per stream message.
 * Exits 0 when it SUCCEEDED, with its error's exit code when it FAILED.
 */
async function follow(s: Session, o: ConnOpts, operationId: string): Promise<void> {
  // No deadline: an operation takes as long as it takes; the server ends the stream at its end.
  const stream = s.admin.raw.watchOperation({ operationId }, new Metadata(), {});
  let last: Operation | undefined;
  let first = true;
  try {
    for await (const m of stream as AsyncIterable<AdminServiceWatchOperationResponse>) {
      if (o.json) {
        process.stdout.write(`${JSON.stringify(watchJson(m))}\n`);
      } else {
        if (first && m.operation) {
          for (const step of m.operation.steps) {
            const kind = STATE_AS_EVENT[step.state];
            if (kind) process.stdout.write(eventLine(time(step.endTime ?? step.startTime), step.name, kind, step.message));
          }
        }
        for (const e of m.events) process.stdout.write(eventLine(time(e.time), e.step, word(stepEventKindToJSON(e.kind)), e.message));
      }
      first = false;
      if (m.operation) last = m.operation;
    }
  } finally {
    stream.cancel();
  }
  if (!last) throw new Error(`the watch of operation ${operationId} ended before it said anything`);
  const op = operationJson(last);
  if (!isFinal(last)) {
    if (!o.json) process.stdout.write(`operation ${op.id} ${word(op.state)}\n`);
    process.stderr.write(`host-agent: the watch of operation ${op.id} ended while it was ${word(op.state)}; watch it again\n`);
    process.exitCode = 1;
    return;
  }
  if (last.state === OperationState.OPERATION_STATE_SUCCEEDED) {
    if (!o.json) process.stdout.write(`operation ${op.id} succeeded${op.result ? `: ${resultText(op.result)}` : ''}\n`);
    return;
  }
  const err = op.error;
  if (!o.json) process.stdout.write(`operation ${op.id} failed${err ? `: ${errorText(err)}` : ''}\n`);
  process.stderr.write(`host-agent: operation ${op.id} failed${err ? `: ${errorText(err)}` : ''}\n`);
  process.exitCode = err ? (EXIT_CODES.get(err.code) ?? 1) : 1;
}

// ------------------------------------------------------------------ commands

function addReadCommands(program: Command): void {
  withConn(program.command('cluster').description('Show the cluster: name, serving, Available Storage owner, counts, and its nodes.')).action(
    (o: ConnOpts) =>
      run(o, async (s) => {
        const c = clusterJson(await s.admin.getCluster({}));
        const text =
          formatFields([
            ['Cluster', c.name],
            ['Serving', yesNo(c.serving)],
            ['Available Storage owner', dash(c.availableStorageOwner)],
            ['VMs', String(c.vmCount)],
            ['Disks', String(c.diskCount)],
            ['Operations in flight', String(c.operationsInFlight)],
          ]) +
          '\n' +
          nodesTable(c.nodes);
        return { json: c, text };
      }),
  );

  withConn(
    program
      .command('groups')
      .description('List the cluster groups (Cluster Group, Available Storage, one per VM, temporary ones) with their owner and resources.')
      .addOption(new Option('--kind <kind>', `only one kind: ${Object.keys(GROUP_KIND_WORDS).join(', ')}`).argParser(choiceArg(GROUP_KIND_WORDS))),
  ).action((o: ConnOpts & { kind?: GroupKind }) =>
    run(o, async (s) => {
      const groups = (await s.admin.listGroups({ kind: o.kind ?? GroupKind.GROUP_KIND_UNSPECIFIED })).groups.map(groupJson);
      if (groups.length === 0) return { json: { groups }, text: 'no groups\n' };
      // One table: a row per group, its resources indented under it.
      const rows: string[][] = [];
      for (const g of groups) {
        rows.push([g.name, word(g.kind), g.ownerNode, dash(g.vmId)]);
        for (const r of g.resources) rows.push([`  ${r.name}`, '', '', '', word(r.state), r.serial, dash(r.mountPath)]);
      }
      const text = formatTable(
        [
          { header: 'GROUP / RESOURCE' },
          { header: 'KIND' },
          { header: 'OWNER' },
          { header: 'VM' },
          { header: 'STATE' },
          { header: 'SERIAL' },
          { header: 'MOUNT' },
        ],
        rows,
      );
      return { json: { groups }, text };
    }),
  );

  withConn(
    program
      .command('vms')
      .description('List the VMs: guest OS, state, HA, node, SCSI shape and group.')
      .option('--node <node>', 'only the VMs on this node'),
  ).action((o: ConnOpts & { node?: string }) =>
    run(o, async (s) => {
      const vms = (await s.admin.listVms({ node: o.node ?? '' })).vms.map(vmJson);
      const text =
        vms.length === 0
          ? `no VMs${o.node ? ` on node ${o.node}` : ''}\n`
          : formatTable(
              [
                { header: 'ID' },
                { header: 'NAME' },
                { header: 'GUEST OS' },
                { header: 'STATE' },
                { header: 'HA' },
                { header: 'NODE' },
                { header: 'SCSI' },
                { header: 'GROUP' },
              ],
              vms.map((v) => [v.id, v.name, word(v.guestOs), word(v.state), yesNo(v.ha), v.node, `${v.scsiControllers}x${v.locationsPerController}`, v.group]),
            );
      return { json: { vms }, text };
    }),
  );

  withConn(
    program
      .command('disks')
      .description("List the VMs' pass-through disks as the host sees them: SCSI slot, LUN, sharing, resource state, guest mount.")
      .option('--vm <id>', "only this VM's disks"),
  ).action((o: ConnOpts & { vm?: string }) =>
    run(o, async (s) => {
      const disks = (await s.admin.listDisks({ vmId: o.vm ?? '' })).disks.map(diskJson);
      const text =
        disks.length === 0
          ? `no disks${o.vm ? ` on VM ${o.vm}` : ''}\n`
          : formatTable(
              [
                { header: 'VM' },
                { header: 'MOUNT' },
                { header: 'SERIAL' },
                { header: 'SIZE', right: true },
                { header: 'SCSI' },
                { header: 'LUN ID', right: true },
                { header: 'SHARING' },
                { header: 'STATE' },
                { header: 'MOUNTED' },
              ],
              disks.map((d) => [
                d.vmId,
                dash(d.mountPath),
                d.serial,
                formatSize(d.sizeBytes),
                scsi(d.address),
                String(d.lunId),
                word(d.sharing),
                word(d.resourceState),
                d.mounted ? d.volumeLabel || 'yes' : 'no',
              ]),
            );
      return { json: { disks }, text };
    }),
  );

  withConn(
    program
      .command('ops')
      .description("List operations (every page, up to --limit), optionally only one VM's or those in one state; or follow one to its end with --watch.")
      .option('--vm <id>', "only this VM's operations")
      .addOption(
        new Option('--state <state>', `only operations in this state: ${Object.keys(OPERATION_STATE_WORDS).join(', ')}`).argParser(
          choiceArg(OPERATION_STATE_WORDS),
        ),
      )
      .option('--limit <n>', 'at most this many operations (default 50)', intArg('--limit', 1, 100_000))
      .option('--watch <op-id>', 'follow this operation (WatchOperation): a line per step event, then its final state'),
  ).action((o: ConnOpts & { vm?: string; state?: OperationState; limit?: number; watch?: string }, cmd: Command) => {
    if (o.watch !== undefined && (o.vm !== undefined || o.state !== undefined || o.limit !== undefined)) {
      cmd.error('error: --watch follows one operation and takes no --vm, --state or --limit');
    }
    return run(o, async (s) => {
      if (o.watch !== undefined) return follow(s, o, o.watch);
      const limit = o.limit ?? 50;
      const ops: Operation[] = [];
      let token = '';
      let more = false;
      do {
        const r = await s.admin.listOperations({
          vmId: o.vm ?? '',
          state: o.state ?? OperationState.OPERATION_STATE_UNSPECIFIED,
          pageSize: Math.min(limit - ops.length, 1000),
          pageToken: token,
        });
        ops.push(...r.operations);
        token = r.nextPageToken;
        more = token !== '';
      } while (more && ops.length < limit);
      if (ops.length > limit) {
        ops.length = limit;
        more = true;
      }
      const operations = ops.map(operationJson);
      let text = operations.length === 0 ? 'no operations\n' : opsTable(operations);
      if (more) text += `(the first ${limit}; --limit shows more)\n`;
      return { json: { operations }, text };
    });
  });

  withConn(program.command('op <op-id>').description('Show one operation: its fields, result or error, and its steps.')).action(
    (id: string, o: ConnOpts) =>
      run(o, async (s) => {
        const op = operationJson((await s.admin.getOperation({ operationId: id })).operation!);
        return { json: { operation: op }, text: operationText(op) };
      }),
  );

  withConn(
    program.command('check').description('Cross-check hypervisor, cluster and array (CheckInvariants); exits 1 if it finds a violation.'),
  ).action((o: ConnOpts) =>
    run(o, async (s) => {
      const violations = (await s.admin.checkInvariants({})).violations.map(violationJson);
      if (violations.length === 0) return { json: { violations }, text: 'no violations\n' };
      const text = formatTable(
        [{ header: 'KIND' }, { header: 'SUBJECT' }, { header: 'DESCRIPTION' }],
        violations.map((v) => [v.kind, v.subject, v.description]),
      );
      return { json: { violations }, text, exitCode: 1 };
    }),
  );
}

function addFailoverCommands(program: Command): void {
  withConn(
    program
      .command('fail-node <node>')
      .description(
        'Fail a node: its in-flight operations are settled, then every group it owned moves to a surviving node (HA VMs restart there; a non-HA VM goes down with its node).',
      ),
    true,
  ).action((node: string, o: MutateOpts) =>
    run(o, async (s) => {
      const id = requestId(o);
      const r = await s.admin.failNode({ requestId: id, node });
      const json = {
        requestId: id,
        node: r.node ? nodeJson(r.node) : null,
        moves: r.moves.map(moveJson),
        settledOperations: r.settledOperations,
      };
      const text =
        `node ${node} is ${json.node ? word(json.node.state) : 'down'}\n` +
        `settled operations: ${r.settledOperations.length === 0 ? 'none' : r.settledOperations.join(', ')}\n` +
        json.moves.map((m) => `${moveText(m)}\n`).join('') +
        (json.moves.length > 0 ? '\n' : '') +
        movesTable(json.moves);
      return { json, text };
    }),
  );

  withConn(program.command('recover-node <node>').description('A failed node is back: it is up again and its non-HA VMs start with their disks.'), true).action(
    (node: string, o: MutateOpts) =>
      run(o, async (s) => {
        const id = requestId(o);
        const r = await s.admin.recoverNode({ requestId: id, node });
        const json = { requestId: id, node: r.node ? nodeJson(r.node) : null, startedVms: r.startedVms };
        const text =
          `node ${node} is ${json.node ? word(json.node.state) : 'up'}\n` +
          (r.startedVms.length === 0 ? 'no VMs started\n' : `started ${plural(r.startedVms.length, 'VM')}: ${r.startedVms.join(', ')}\n`);
        return { json, text };
      }),
  );

  withConn(
    program
      .command('move-group <group> <node>')
      .description('Move one group (e.g. "Virtual Machine web1", "Available Storage") to another node: a planned failover, with the same fencing.'),
    true,
  ).action((group: string, node: string, o: MutateOpts) =>
    run(o, async (s) => {
      const id = requestId(o);
      const r = await s.admin.moveGroup({ requestId: id, group, node });
      const move = r.move ? moveJson(r.move) : null;
      return { json: { requestId: id, move }, text: move ? `${moveText(move)}\n` : `group ${group} moved to ${node}\n` };
    }),
  );
}

function addAvailableStorageCommands(program: Command): void {
  for (const which of ['add', 'remove'] as const) {
    withConn(
      program
        .command(`${which}-available-disk <lun>`)
        .description(
          which === 'add'
            ? 'Put an existing array LUN (path, uuid or serial) into Available Storage: mapped to every node, one disk resource. Runs as an operation.'
            : "Take a LUN's disk resource out of Available Storage and unmap it from every node. Runs as an operation.",
        )
        .option('--wait', 'follow the operation to its end (like ops --watch) and exit with its outcome'),
      true,
    ).action((lun: string, o: MutateOpts & { wait?: boolean }) =>
      run(o, async (s) => {
        const id = requestId(o);
        const req = { requestId: id, lun };
        const r = which === 'add' ? await s.admin.addAvailableDisk(req) : await s.admin.removeAvailableDisk(req);
        const op = operationJson(r.operation!);
        const json = { requestId: id, operation: op };
        const text = `operation ${op.id} (${word(op.kind)}) ${word(op.state)}\n`;
        if (!o.wait) return { json, text };
        process.stdout.write(o.json ? `${JSON.stringify(json)}\n` : text);
        return follow(s, o, op.id);
      }),
    );
  }
}

function addVmCommands(program: Command): void {
  const vm = program.command('vm').description('Create, start and stop VMs.');

  withConn(
    vm
      .command('create <id>')
      .description('Create a VM on a node (it starts running). The same id with the same settings returns the existing VM.')
      .addOption(new Option('--os <os>', 'guest OS: windows or linux').argParser(choiceArg(GUEST_OS_WORDS)).makeOptionMandatory())
      .requiredOption('--node <node>', 'the node it runs on')
      .option('--name <name>', 'display name (default: the id)')
      .option('--ha', 'highly available: its group moves to another node when its node fails')
      .option('--controllers <n>', 'virtual SCSI controllers, 1-4 (default 4)', intArg('--controllers', 1, 4))
      .option('--locations <n>', 'locations per controller, 1-64 (default 64)', intArg('--locations', 1, 64)),
    true,
  ).action((id: string, o: MutateOpts & { os: GuestOs; node: string; name?: string; ha?: boolean; controllers?: number; locations?: number }) =>
    run(o, async (s) => {
      const rid = requestId(o);
      const r = await s.admin.createVm({
        requestId: rid,
        id,
        name: o.name ?? '',
        guestOs: o.os,
        ha: o.ha ?? false,
        node: o.node,
        scsiControllers: o.controllers ?? 0,
        locationsPerController: o.locations ?? 0,
      });
      const v = vmJson(r.vm!);
      return { json: { requestId: rid, vm: v }, text: vmFields(v) };
    }),
  );

  for (const action of ['start', 'stop'] as const) {
    withConn(vm.command(`${action} <id>`).description(action === 'start' ? 'Start a VM on its node.' : 'Stop a VM (its disks stay attached).'), true).action(
      (id: string, o: MutateOpts) =>
        run(o, async (s) => {
          const rid = requestId(o);
          const req = { requestId: rid, vmId: id };
          const r = action === 'start' ? await s.admin.startVm(req) : await s.admin.stopVm(req);
          const v = vmJson(r.vm!);
          return { json: { requestId: rid, vm: v }, text: `VM ${v.id} (${v.name}) is ${word(v.state)} on node ${v.node}\n` };
        }),
    );
  }
}

function addNodeCommands(program: Command): void {
  const node = program.command('node').description("A node's host capabilities.");

  withConn(
    node
      .command('caps <node>')
      .description('Set what the host OS reports: hypervisor enabled, hot add/remove supported (left out: unchanged). Prints the node.')
      .addOption(new Option('--hypervisor <on|off>', 'hypervisor enabled').argParser(choiceArg(ON_OFF)))
      .addOption(new Option('--hot-add <on|off>', 'SCSI hot add/remove supported').argParser(choiceArg(ON_OFF))),
    true,
  ).action((name: string, o: MutateOpts & { hypervisor?: boolean; hotAdd?: boolean }) =>
    run(o, async (s) => {
      const rid = requestId(o);
      const r = await s.admin.setHostCapabilities({ requestId: rid, node: name, hypervisorEnabled: o.hypervisor, hotAddSupported: o.hotAdd });
      const n = nodeJson(r.node!);
      return { json: { requestId: rid, node: n }, text: nodeFields(n) };
    }),
  );
}

/**
 * Adds the admin commands (cluster, groups, vms, disks, ops, op, check, fail-node,
 * recover-node, move-group, add-/remove-available-disk, vm, node) to host-agent.
 */
export function addAdminCommands(program: Command): void {
  addReadCommands(program);
  addFailoverCommands(program);
  addAvailableStorageCommands(program);
  addVmCommands(program);
  addNodeCommands(program);
  program.addHelpText('after', PROGRAM_EPILOG);
  usageExitCodes(program);
}
