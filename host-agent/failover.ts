/**
 * Failover and planned moves. A node that fails first has its in-flight operations settled by
 * the commit-point rule; then every group it owned moves to a surviving node: each HA VM
 * restarts there with the same SCSI attachments, the new owner preempts the failed node's
 * persistent reservations (fencing: the old node can no longer write) and brings the disks
 * Online; a non-HA VM goes down with its node and comes back with it.
 *
 * Each group move is journaled before its fencing (`movingTo`) and finished in one
 * transaction after it, and the fencing calls are idempotent, so a restart in the middle
 * finishes what was started (`resume`).
 */
import { AbortedError, FailedPreconditionError, InvalidArgumentError, NotFoundError, UnavailableError } from '../common/errors.js';
import type { Logger } from '../common/logging.js';
import type { HostAgent } from './agent.js';
import { reservationKey } from './array.js';
import type { GroupRecord, NodeRecord, VmRecord } from './model.js';

export interface GroupMove {
  group: string;
  from: string;
  to: string;
  vmId?: string;
  vmRunning: boolean;
  serials: string[];
}

export interface FailoverResult {
  node: NodeRecord;
  moves: GroupMove[];
  settled: string[];
}

/** How many disks are fenced at once during a move, and how many groups move at once. */
const FENCE_WIDTH = 16;
const MOVE_WIDTH = 8;

async function inBatches<T>(items: T[], width: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(width, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]!);
    }),
  );
}

export class Failover {
  constructor(
    private readonly agent: HostAgent,
    private readonly logger: Logger,
  ) {}

  private get state() {
    return this.agent.state;
  }

  /** The node that takes a group over: up, hypervisor enabled, fewest VMs (as planned so far); ties by name. */
  private target(away: string, load?: Map<string, number>): string {
    const count = (n: string): number => load?.get(n) ?? this.state.vmsOn(n).length;
    const candidates = [...this.state.nodes.values()]
      .filter((n) => n.up && n.name !== away && n.hypervisorEnabled)
      .sort((a, b) => count(a.name) - count(b.name) || (a.name < b.name ? -1 : 1));
    if (candidates.length === 0) throw new FailedPreconditionError(`no surviving node with its hypervisor enabled can take over from ${away}`, 'NO_SURVIVING_NODE');
    return candidates[0]!.name;
  }

  async failNode(name: string): Promise<FailoverResult> {
    if (name === '') throw new InvalidArgumentError('node', 'node is required');
    const node = this.agent.node(name);
    if (node.up) {
      this.target(name);
      // Written first: from here on the node counts as failed, and a restart finishes the failover.
      this.state.transact(() => this.state.nodes.put({ ...node, up: false }));
      this.logger.warn('node failed', { node: name });
    }
    const settled = await this.settle(name);
    const moves = await this.finishingLater(() => this.evacuate(name));
    return { node: this.state.nodes.get(name)!, moves, settled };
  }

  private retry: NodeJS.Timeout | undefined;
  private stopped = false;

  /**
   * Runs a move; if it fails (the array down while fencing), the caller hears why, and the
   * move, journaled as under way, is finished in the background as soon as it can be:
   * a failover is never left half done waiting for someone to ask again.
   */
  private async finishingLater<R>(move: () => Promise<R>): Promise<R> {
    try {
      return await move();
    } catch (err) {
      this.retryInBackground(200);
      throw err;
    }
  }

  private retryInBackground(delayMs: number): void {
    if (this.retry || this.stopped) return;
    this.retry = setTimeout(() => {
      this.resume().then(
        () => {
          this.retry = undefined;
          this.logger.info('finished moves that had failed');
        },
        (err: unknown) => {
          this.retry = undefined;
          this.logger.warn('moves still cannot finish; retrying', { error: err instanceof Error ? err.message : String(err), retryInMs: delayMs });
          this.retryInBackground(Math.min(delayMs * 2, 5000));
        },
      );
    }, delayMs);
    this.retry.unref();
  }

  /** No more background retries (the agent is closing; a restart resumes what is left). */
  stop(): void {
    this.stopped = true;
    if (this.retry) clearTimeout(this.retry);
  }

  /** In-flight operations of the node's VMs: rolled back before their commit point, forward after. */
  private async settle(name: string): Promise<string[]> {
    const ops = [...this.agent.openOperations()].filter((o) => o.vmId !== '' && this.state.vms.get(o.vmId)?.node === name);
    const reason = new UnavailableError(
      `node ${name} failed before the operation reached its commit point; it was rolled back: send the request again`,
      'NODE_FAILED',
    );
    await Promise.all(ops.map((o) => this.agent.engine.abort(o.id, reason)));
    return ops.map((o) => o.id);
  }

  /**
   * Moves every group a down node still owns, several at once (targets are planned first so
   * the load spreads); a non-HA VM's group stays down with it.
   */
  private async evacuate(name: string): Promise<GroupMove[]> {
    const moves: GroupMove[] = [];
    const planned: [GroupRecord, string][] = [];
    const load = new Map([...this.state.nodes.values()].map((n) => [n.name, this.state.vmsOn(n.name).length]));
    for (const g of [...this.state.groups.values()].filter((x) => x.owner === name).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      if (g.kind === 'temporary') continue;
      const vm = g.vmId ? this.state.vms.get(g.vmId) : undefined;
      if (g.kind === 'vm' && vm && !vm.ha) {
        const m = this.downWithNode(g, vm);
        if (m) moves.push(m);
        continue;
      }
      const to = g.movingTo ?? this.target(name, load);
      if (g.kind === 'vm') load.set(to, (load.get(to) ?? 0) + 1);
      planned.push([g, to]);
    }
    await inBatches(planned, MOVE_WIDTH, async ([g, to]) => {
      moves.push(await this.move(g, to));
    });
    return moves.sort((a, b) => (a.group < b.group ? -1 : 1));
  }

  /** The non-HA VM goes down with its node; undefined when it is down already. */
  private downWithNode(g: GroupRecord, vm: VmRecord): GroupMove | undefined {
    const resources = this.state.resourcesIn(g.name);
    if (!vm.running && resources.every((r) => r.state === 'offline')) return undefined;
    this.state.transact(() => {
      this.state.vms.put({ ...vm, running: false, downWithNode: vm.downWithNode ?? { wasRunning: vm.running } });
      for (const r of resources) this.state.resources.put({ ...r, state: 'offline' });
    });
    return { group: g.name, from: g.owner, to: g.owner, vmId: vm.id, vmRunning: false, serials: [] };
  }

  /**
   * Moves a group to a node: journal the intent, fence its disks, then switch owner in one
   * transaction. If the destination fails meanwhile, the group goes on to another survivor,
   * fencing the failed destination too.
   */
  private async move(g: GroupRecord, to: string, fencedOff: string[] = []): Promise<GroupMove> {
    const from = this.state.nodes.get(g.owner)!;
    const dest = this.state.nodes.get(to)!;
    if (g.movingTo !== to) this.state.transact(() => this.state.groups.put({ ...this.state.groups.get(g.name)!, movingTo: to }));
    const resources = this.state.resourcesIn(g.name);
    if (g.kind === 'vm') {
      // Only a VM's disks are reserved (Available Storage disks are Offline, reserved by nobody).
      const away = [from.name, ...fencedOff];
      await inBatches(resources, FENCE_WIDTH, async (r) => {
        for (const node of away) {
          await this.agent.array.takeOver({ requestId: '', lun: r.lun.uuid, initiator: dest.initiator, key: reservationKey(dest.name), fromKey: reservationKey(node) });
        }
      });
    }
    if (!this.state.nodes.get(to)!.up) {
      const next = this.target(to);
      this.logger.warn('the destination of a move failed; moving on', { group: g.name, failed: to, to: next });
      return this.move(this.state.groups.get(g.name)!, next, [...fencedOff, to]);
    }
    const vm = g.vmId ? this.state.vms.get(g.vmId) : undefined;
    this.state.transact(() => {
      const cur = this.state.groups.get(g.name)!;
      this.state.groups.put({ ...cur, owner: to, movingTo: undefined });
      if (vm && g.kind === 'vm') {
        // A running VM restarts on the new node (failover) or carries on there (planned move).
        this.state.vms.put({ ...this.state.vms.get(vm.id)!, node: to, downWithNode: undefined });
        for (const r of resources) this.state.resources.put({ ...this.state.resources.get(r.lun.serial)!, state: 'online', reservedBy: to });
      }
    });
    this.logger.info('group moved', { group: g.name, from: from.name, to, disks: resources.length });
    return {
      group: g.name,
      from: from.name,
      to,
      vmId: vm?.id,
      vmRunning: vm ? this.state.vms.get(vm.id)!.running : false,
      serials: g.kind === 'vm' ? resources.map((r) => r.lun.serial) : [],
    };
  }

  /** A group moved by hand (planned failover): the same fencing, the VM keeps running. */
  async moveGroup(name: string, to: string): Promise<GroupMove> {
    if (name === '') throw new InvalidArgumentError('group', 'group is required: a name as ListGroups shows it');
    if (to === '') throw new InvalidArgumentError('node', 'node is required');
    const g = this.state.groups.get(name);
    if (!g) throw new NotFoundError('group', name);
    const dest = this.agent.node(to);
    if (g.kind === 'temporary') throw new FailedPreconditionError(`group ${name} is a temporary group: it belongs to its operation and never moves`, 'TEMPORARY_GROUP');
    const vm = g.vmId ? this.state.vms.get(g.vmId) : undefined;
    if (g.kind === 'vm' && vm && !vm.ha) {
      throw new FailedPreconditionError(`VM ${vm.id} is not highly available: its group stays on node ${g.owner}`, 'VM_NOT_HA');
    }
    if (!dest.up) throw new FailedPreconditionError(`node ${to} is down`, 'NODE_DOWN');
    if (!dest.hypervisorEnabled && g.kind === 'vm') throw new FailedPreconditionError(`the hypervisor is not enabled on node ${to}`, 'HYPERVISOR_DISABLED');
    if (g.movingTo && g.movingTo !== to) throw new AbortedError(`group ${name} is moving to ${g.movingTo} already`, 'GROUP_MOVING');
    if (g.owner === to && !g.movingTo) return { group: name, from: to, to, vmId: vm?.id, vmRunning: vm?.running ?? false, serials: [] };
    if (vm) {
      for (const o of this.agent.openOperations()) {
        if (o.vmId === vm.id) throw new AbortedError(`operation ${o.id} is in flight on VM ${vm.id}: wait for it to end, then move the group`, 'OPERATION_IN_FLIGHT');
      }
    }
    return this.finishingLater(() => this.move(g, to));
  }

  async recoverNode(name: string): Promise<{ node: NodeRecord; started: string[] }> {
    if (name === '') throw new InvalidArgumentError('node', 'node is required');
    const node = this.agent.node(name);
    if (!node.up) this.state.transact(() => this.state.nodes.put({ ...node, up: true }));
    const started: string[] = [];
    for (const vm of this.state.vmsOn(name).filter((v) => v.downWithNode)) {
      const resources = this.state.resourcesIn(vm.group);
      // Its disks were reserved by this node all along; taking them again is idempotent.
      await inBatches(resources, FENCE_WIDTH, (r) =>
        this.agent.array.takeOver({ requestId: '', lun: r.lun.uuid, initiator: node.initiator, key: reservationKey(name), fromKey: reservationKey(name) }),
      );
      this.state.transact(() => {
        this.state.vms.put({ ...this.state.vms.get(vm.id)!, running: vm.downWithNode!.wasRunning, downWithNode: undefined });
        for (const r of resources) this.state.resources.put({ ...r, state: 'online', reservedBy: name });
      });
      if (vm.downWithNode!.wasRunning) started.push(vm.id);
    }
    this.logger.info('node recovered', { node: name, started });
    return { node: this.state.nodes.get(name)!, started };
  }

  /** At start-up: finish moves and failovers a restart cut short. */
  async resume(): Promise<void> {
    for (const g of [...this.state.groups.values()].filter((x) => x.movingTo)) await this.move(g, g.movingTo!);
    for (const n of [...this.state.nodes.values()].filter((x) => !x.up)) {
      if ([...this.state.groups.values()].some((g) => g.owner === n.name && g.kind !== 'temporary' && !(g.kind === 'vm' && !this.state.vms.get(g.vmId ?? '')?.ha))) {
        this.logger.warn('finishing the failover of a node', { node: n.name });
        await this.evacuate(n.name);
      }
    }
  }
}
