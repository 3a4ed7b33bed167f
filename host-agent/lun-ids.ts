/**
 * Chooses LUN ids. A shared disk is mapped to every node at one LUN id, so the id must be
 * free in every node's igroup at once; the array picks per igroup, so the host agent picks.
 * An id is taken on a node when the node sees a disk there, when a running operation has
 * chosen it (journaled before its MapLun calls), or when the array refused it because
 * something passthru did not map sits there.
 */
import { ResourceExhaustedError } from '../common/errors.js';
import type { OperationRecord } from './model.js';
import type { HostState } from './state.js';

export const MAX_LUN_ID = 4095;

export class LunIds {
  private readonly foreign = new Map<string, Set<number>>();
  /** Per set of nodes: no id below it is free on all of them (a hint; choose() wraps around when it is wrong). */
  private readonly hints = new Map<string, number>();

  constructor(
    private readonly state: HostState,
    private readonly openOperations: () => Iterable<OperationRecord>,
  ) {}

  private chosenByOthers(opId: string): Map<string, Set<number>> {
    const out = new Map<string, Set<number>>();
    for (const op of this.openOperations()) {
      if (op.id === opId || op.data.lunId === undefined) continue;
      for (const n of op.data.nodes ?? []) {
        let s = out.get(n);
        if (!s) out.set(n, (s = new Set()));
        s.add(op.data.lunId);
      }
    }
    return out;
  }

  /** The lowest LUN id free on every one of the nodes, for operation `opId`. */
  choose(nodes: readonly string[], opId: string): number {
    const others = this.chosenByOthers(opId);
    const free = (id: number): boolean =>
      nodes.every((n) => !this.state.lunIdUsed(n, id) && !others.get(n)?.has(id) && !this.foreign.get(n)?.has(id));
    const set = nodes.join('\u0000');
    const hint = this.hints.get(set) ?? 0;
    for (let id = hint; id <= MAX_LUN_ID; id++) {
      if (free(id)) {
        this.hints.set(set, id);
        return id;
      }
    }
    for (let id = 0; id < hint; id++) {
      if (free(id)) {
        this.hints.set(set, id);
        return id;
      }
    }
    throw new ResourceExhaustedError(
      `no LUN id is free in every node's igroup (${nodes.join(', ')}): all ${MAX_LUN_ID + 1} are in use; remove disks first`,
      'LUN_IDS_EXHAUSTED',
    );
  }

  /** The array said the id is taken on the node by a map passthru did not make. */
  takenOnArray(node: string, lunId: number): void {
    let s = this.foreign.get(node);
    if (!s) this.foreign.set(node, (s = new Set()));
    s.add(lunId);
  }

  /** An id was given back; later choices may reuse it. */
  released(lunId: number): void {
    for (const [set, hint] of this.hints) if (lunId < hint) this.hints.set(set, lunId);
  }
}
