/**
 * The chaos itself: a schedule of injections fixed by the seed (what happens when), carried
 * out one after the other against the real processes:
 *
 *   kill-storage / kill-host  SIGKILL by PID, down for a moment, started again on the same
 *                             data dir and port, waited for until it serves (host: SERVING)
 *   fail-node / recover-node  AdminService FailNode (its VMs' guests die with it; an HA VM's
 *                             guest either restarts with it on the new node or rides the move
 *                             out), RecoverNode a few seconds later
 *   move-group                MoveGroup of an HA VM's group (or Available Storage) by hand
 *   maplun-refused            the array refuses the next MapLun calls (before the map, or
 *                             after it with the reply lost)
 *   maplun-slow               the next MapLun calls are slow (now and then slower than the
 *                             host agent's deadline)
 *   array-fault               another array call refused (CreateLun, UnmapLun, DeleteLun,
 *                             reservations, block I/O)
 *   unavailable               the whole array UNAVAILABLE for a window
 *   drop                      some guests' connections cut mid-call
 *
 * Which node, group, VM or fault a step picks is drawn from its own seeded stream against
 * the cluster as it is when the step runs.
 */
import { status as Code } from '@grpc/grpc-js';
import { GroupKind, NodeState, VmState } from '../proto/gen/passthru/host/v1/host.js';
import { FaultTiming } from '../proto/gen/passthru/storage/v1/storage.js';
import { answered, type Clients } from './admin.js';
import { INJECTED_MARK, type Ledger } from './ledger.js';
import { startWithRetries, type Service } from './processes.js';
import { Rng } from './rng.js';
import { sleep, type Worker } from './worker.js';

export const INJECTIONS = ['kill-storage', 'kill-host', 'fail-node', 'move-group', 'maplun-refused', 'maplun-slow', 'array-fault', 'unavailable', 'drop'] as const;
export type InjectionKind = (typeof INJECTIONS)[number] | 'recover-node';

/** How many of each per minute, on top of one of each early in every run. */
const PER_MINUTE: Record<(typeof INJECTIONS)[number], number> = {
  'kill-storage': 2.5,
  'kill-host': 3,
  'fail-node': 2.5,
  'move-group': 5,
  'maplun-refused': 4,
  'maplun-slow': 4,
  'array-fault': 3,
  unavailable: 3,
  drop: 10,
};

export interface Scheduled {
  atMs: number;
  kind: InjectionKind;
  seed: number;
  /** recover-node: the fail-node it undoes. */
  of?: number;
  index: number;
}

/** The run's injections, from its seed and length: one of each kind in the first 70% of the run, then more at each kind's rate. */
export function schedule(seed: number, seconds: number): Scheduled[] {
  const rng = Rng.derive(seed, 'schedule');
  const ms = seconds * 1000;
  const out: Omit<Scheduled, 'index'>[] = [];
  const add = (kind: (typeof INJECTIONS)[number], atMs: number): void => {
    out.push({ atMs: Math.round(atMs), kind, seed: rng.seed() });
  };
  for (const kind of INJECTIONS) add(kind, ms * (0.05 + 0.65 * rng.next()));
  for (const kind of INJECTIONS) {
    const expected = (PER_MINUTE[kind] * seconds) / 60;
    const n = Math.floor(expected) + (rng.chance(expected % 1) ? 1 : 0);
    for (let i = 0; i < n; i++) add(kind, ms * (0.03 + 0.92 * rng.next()));
  }
  out.sort((a, b) => a.atMs - b.atMs);
  const indexed: Scheduled[] = out.map((e, index) => ({ ...e, index }));
  // Each failed node comes back a few seconds later (the end of the run brings back any still down).
  for (const e of indexed.filter((x) => x.kind === 'fail-node')) {
    indexed.push({ atMs: e.atMs + rng.int(1_500, 6_000), kind: 'recover-node', seed: rng.seed(), of: e.index, index: indexed.length });
  }
  return indexed.sort((a, b) => a.atMs - b.atMs || a.index - b.index);
}

export interface InjectorEnv {
  ledger: Ledger;
  clients: Clients;
  storage: Service;
  host: Service;
  workers: Worker[];
  runTag: string;
}

const codeName = (err: unknown): string => {
  const c = (err as { code?: number }).code;
  return typeof c === 'number' ? (Code[c] ?? String(c)) : err instanceof Error ? err.message : String(err);
};

export class Injector {
  /** Which node each fail-node failed, by its index in the schedule. */
  private readonly failed = new Map<number, string>();
  /** Guests whose VM is going down with a FailNode still on its way: not turned back on until it has answered. */
  private readonly held = new Set<Worker>();
  readonly done: Scheduled[] = [];
  readonly notReached: Scheduled[] = [];

  constructor(
    private readonly env: InjectorEnv,
    private readonly plan: Scheduled[],
  ) {}

  /** Carries out the schedule in order until `untilMs` (the run's clock); what is left is noted as not reached. */
  async run(untilMs: number): Promise<void> {
    const l = this.env.ledger;
    for (const e of this.plan) {
      const wait = e.atMs - l.now();
      if (e.atMs >= untilMs || l.now() >= untilMs) {
        this.notReached.push(e);
        continue;
      }
      if (wait > 0) await sleep(wait);
      const started = l.now();
      let outcome: string;
      let detail = '';
      try {
        const r = await this.carryOut(e, Rng.derive(e.seed, e.kind));
        detail = r.detail;
        outcome = r.outcome;
      } catch (err) {
        outcome = `error: ${codeName(err)}`;
      }
      l.event(e.kind, detail, started, outcome);
      this.done.push(e);
    }
  }

  private async carryOut(e: Scheduled, rng: Rng): Promise<{ detail: string; outcome: string }> {
    const { clients: c, ledger: l } = this.env;
    switch (e.kind) {
      case 'kill-storage':
      case 'kill-host': {
        const s = e.kind === 'kill-storage' ? this.env.storage : this.env.host;
        const down = rng.chance(0.3) ? 0 : rng.int(50, 1_500);
        const pid = s.pid;
        await s.kill();
        if (e.kind === 'kill-storage') l.crashes.storageSim++;
        else l.crashes.hostAgent++;
        await sleep(down);
        const t0 = Date.now();
        const r = await startWithRetries(s);
        return { detail: `pid ${pid} SIGKILLed, down ${down} ms`, outcome: `serving again (pid ${r.pid}) after ${Date.now() - t0} ms` };
      }
      case 'fail-node': {
        const { nodes } = await answered(() => c.admin.listNodes({}), 10_000);
        const up = nodes.filter((n) => n.state === NodeState.NODE_STATE_UP).map((n) => n.name);
        if (up.length < 2) return { detail: `only ${up.join(', ')} up`, outcome: 'skipped: a failover needs a surviving node' };
        const node = rng.pick(up);
        const { vms } = await answered(() => c.admin.listVms({ node }), 10_000);
        // The node's VMs go down with it: a non-HA VM's guest for good (until recovery), an HA VM's half the time (it restarts on the new node).
        const died: string[] = [];
        for (const vm of vms) {
          const w = this.env.workers.find((x) => x.vm.id === vm.id);
          if (w && vm.state === VmState.VM_STATE_RUNNING && (!vm.ha || rng.chance(0.5))) {
            w.powerOff();
            this.held.add(w);
            died.push(vm.id);
          }
        }
        this.failed.set(e.index, node);
        const release = (): void => {
          for (const w of this.held) if (died.includes(w.vm.id)) this.held.delete(w);
        };
        try {
          const r = await answered(() => c.admin.failNode({ requestId: `${this.env.runTag}:fail:${e.index}`, node }), 15_000);
          l.failovers.failNode++;
          release();
          return { detail: `${node}; guests down: ${died.join(' ') || 'none'}`, outcome: `moved ${r.moves.filter((m) => m.fromNode !== m.toNode).length} groups, settled ${r.settledOperations.length} operations` };
        } catch (err) {
          release();
          // The array refused or could not be reached while fencing: the node is down and its failover finishes in the background.
          const down = await this.tookEffect(async () => (await c.admin.listNodes({})).nodes.some((n) => n.name === node && n.state !== NodeState.NODE_STATE_UP));
          if (down) l.failovers.failNode++;
          return { detail: `${node}; guests down: ${died.join(' ') || 'none'}`, outcome: `FailNode: ${codeName(err)}${down ? ' (node down, failover finishing in the background)' : ''}` };
        }
      }
      case 'recover-node': {
        const node = this.failed.get(e.of ?? -1);
        if (!node) return { detail: '', outcome: 'skipped: its fail-node failed no node' };
        await this.recover(node, `${this.env.runTag}:recover:${e.index}`);
        return { detail: node, outcome: 'recovered' };
      }
      case 'move-group': {
        const [{ groups }, { nodes }, { vms }] = await Promise.all([
          answered(() => c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED }), 10_000),
          answered(() => c.admin.listNodes({}), 10_000),
          answered(() => c.admin.listVms({ node: '' }), 10_000),
        ]);
        const ha = new Set(vms.filter((v) => v.ha).map((v) => v.id));
        const movable = groups.filter((g) => (g.kind === GroupKind.GROUP_KIND_VM && ha.has(g.vmId)) || (g.kind === GroupKind.GROUP_KIND_AVAILABLE_STORAGE && rng.chance(0.3)));
        if (movable.length === 0) return { detail: '', outcome: 'skipped: nothing to move' };
        const g = rng.pick(movable);
        const to = nodes.filter((n) => n.state === NodeState.NODE_STATE_UP && n.name !== g.ownerNode).map((n) => n.name);
        if (to.length === 0) return { detail: g.name, outcome: 'skipped: no other node up' };
        const node = rng.pick(to);
        try {
          // ABORTED while an operation of the VM is in flight: an administrator tries again in a moment.
          const r = await answered(() => c.admin.moveGroup({ requestId: `${this.env.runTag}:move:${e.index}`, group: g.name, node }), 2_000, new Set([Code.DEADLINE_EXCEEDED, Code.CANCELLED, Code.ABORTED]));
          l.failovers.moveGroup++;
          return { detail: `${g.name} ${g.ownerNode} -> ${node}`, outcome: `moved to ${r.move?.toNode}` };
        } catch (err) {
          // Refused while fencing (the array down, a fault): the move, journaled, finishes in the background.
          const moved = await this.tookEffect(async () => (await c.admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups.some((x) => x.name === g.name && x.ownerNode === node), 5_000);
          if (moved) l.failovers.moveGroup++;
          return { detail: `${g.name} ${g.ownerNode} -> ${node}`, outcome: `MoveGroup: ${codeName(err)}${moved ? ' (moved in the background)' : ''}` };
        }
      }
      case 'maplun-refused': {
        const after = rng.chance(0.4);
        const code = rng.pick([Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED, Code.INTERNAL, Code.ABORTED]);
        const count = rng.int(1, 3);
        await this.inject('MapLun', count, code, 0, after);
        return { detail: `next ${count} MapLun ${Code[code]} ${after ? 'after mapping (reply lost)' : 'before mapping'}`, outcome: 'injected' };
      }
      case 'maplun-slow': {
        const delay = rng.chance(0.15) ? rng.int(5_500, 7_000) : rng.int(200, 3_000);
        const count = rng.int(1, 5);
        await this.inject('MapLun', count, 0, delay, false);
        return { detail: `next ${count} MapLun delayed ${delay} ms`, outcome: 'injected' };
      }
      case 'array-fault': {
        const method = rng.pick(['CreateLun', 'UnmapLun', 'DeleteLun', 'RegisterReservationKey', 'Reserve', 'PreemptReservation', 'ReleaseReservation', 'WriteBlocks', 'ReadBlocks', 'ListPools']);
        const after = method !== 'ReadBlocks' && method !== 'ListPools' && rng.chance(0.4);
        const code = rng.pick([Code.UNAVAILABLE, Code.INTERNAL, Code.ABORTED]);
        const count = rng.int(1, 3);
        await this.inject(method, count, code, 0, after);
        return { detail: `next ${count} ${method} ${Code[code]} ${after ? 'after the call (reply lost)' : 'before the call'}`, outcome: 'injected' };
      }
      case 'unavailable': {
        const ms = rng.int(200, 2_500);
        await answered(() => c.faults.setUnavailable({ durationMs: ms }), 5_000);
        return { detail: `array UNAVAILABLE for ${ms} ms`, outcome: 'injected' };
      }
      case 'drop': {
        const n = rng.int(1, Math.min(4, this.env.workers.length));
        const picked = new Set<Worker>();
        while (picked.size < n) picked.add(rng.pick(this.env.workers));
        // Mid-call: a moment after the pick, when the guests are likely inside a command.
        await sleep(rng.int(0, 30));
        const cut = [...picked].map((w) => `${w.vm.id}:${w.line.drop()}`);
        return { detail: `guest connections of ${[...picked].map((w) => w.vm.id).join(' ')}`, outcome: `cut ${cut.join(' ')}` };
      }
    }
  }

  /** Polls `check` (the cluster as the administrator sees it) until true, for up to `ms`. */
  private async tookEffect(check: () => Promise<boolean>, ms = 1_000): Promise<boolean> {
    const end = Date.now() + ms;
    for (;;) {
      try {
        if (await check()) return true;
      } catch {
        // The host agent is restarting: look again.
      }
      if (Date.now() > end) return false;
      await sleep(100);
    }
  }

  private async inject(method: string, count: number, code: number, delayMs: number, after: boolean): Promise<void> {
    await answered(
      () =>
        this.env.clients.faults.injectFault({
          method,
          count,
          code,
          message: `${INJECTED_MARK} ${code ? Code[code] : 'delay'} on ${method}`,
          delayMs,
          timing: after ? FaultTiming.FAULT_TIMING_AFTER : FaultTiming.FAULT_TIMING_BEFORE,
        }),
      5_000,
    );
  }

  /** RecoverNode until it is done (it waits on the array for the reservations of the node's VMs' disks). */
  async recover(node: string, requestId: string): Promise<void> {
    await answered(() => this.env.clients.admin.recoverNode({ requestId, node }), 60_000);
  }

  /**
   * Turns the guests of VMs that run again back on: every `everyMs`, each guest off for at
   * least `minOffMs` whose VM runs on a node that is up.
   */
  async powerWatch(stop: () => boolean, everyMs = 200, minOffMs = 300): Promise<void> {
    while (!stop()) {
      await sleep(everyMs);
      const off = this.env.workers.filter((w) => !w.powered && !this.held.has(w) && w.offForMs >= minOffMs);
      if (off.length === 0) continue;
      try {
        const [{ vms }, { nodes }] = await Promise.all([this.env.clients.admin.listVms({ node: '' }), this.env.clients.admin.listNodes({})]);
        const up = new Set(nodes.filter((n) => n.state === NodeState.NODE_STATE_UP).map((n) => n.name));
        for (const w of off) {
          const vm = vms.find((v) => v.id === w.vm.id);
          if (vm && vm.state === VmState.VM_STATE_RUNNING && up.has(vm.node)) w.powerOn();
        }
      } catch {
        // The host agent is restarting: look again next round.
      }
    }
  }

  /** Nodes still down at the end of the chaos, brought back. */
  async recoverAll(): Promise<string[]> {
    const { nodes } = await answered(() => this.env.clients.admin.listNodes({}), 60_000);
    const down = nodes.filter((n) => n.state !== NodeState.NODE_STATE_UP).map((n) => n.name);
    for (const n of down) await this.recover(n, `${this.env.runTag}:recover-end:${n}`);
    return down;
  }
}
