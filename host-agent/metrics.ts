/**
 * What the host agent counts for Prometheus, besides its RPCs: workflow steps by name and
 * outcome with their durations, operations by kind and result, what is in flight, undos and
 * recoveries, and the size of the cluster it holds. Step figures come from the engine's own
 * events, so they count what the journal says happened.
 */
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { LATENCY_BUCKETS } from '../common/metrics.js';
import type { OperationRecord } from './model.js';
import type { HostState } from './state.js';
import type { OperationListener, StepEventRecord } from './workflow/engine.js';

export interface HostMetrics {
  /** Give to the engine: it hears every step event and every operation's end. */
  observe: OperationListener;
  /** Operations the journal held unfinished at start-up, now settled. */
  recovered(count: number): void;
}

export function hostMetrics(registry: Registry, state: HostState, inFlight: () => number): HostMetrics {
  const steps = new Counter({
    name: 'passthru_workflow_steps_total',
    help: 'Workflow step events by operation kind, step and outcome (started, finished, skipped, failed, undo_started, undone)',
    labelNames: ['kind', 'step', 'outcome'],
    registers: [registry],
  });
  const stepSeconds = new Histogram({
    name: 'passthru_workflow_step_duration_seconds',
    help: 'How long a finished step took, by operation kind and step',
    labelNames: ['kind', 'step'],
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const operations = new Counter({
    name: 'passthru_operations_total',
    help: 'Operations ended, by kind and result (succeeded, failed)',
    labelNames: ['kind', 'result'],
    registers: [registry],
  });
  const operationSeconds = new Histogram({
    name: 'passthru_operation_duration_seconds',
    help: 'From an operation being recorded to its end, by kind and result',
    labelNames: ['kind', 'result'],
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  const undos = new Counter({
    name: 'passthru_workflow_undos_total',
    help: 'Steps undone while rolling an operation back, by operation kind and step',
    labelNames: ['kind', 'step'],
    registers: [registry],
  });
  const recoveries = new Counter({
    name: 'passthru_recovered_operations_total',
    help: 'Operations found unfinished in the journal at start-up and settled (back before the commit point, forward after it)',
    registers: [registry],
  });
  new Gauge({
    name: 'passthru_operations_in_flight',
    help: 'Operations running or rolling back now',
    registers: [registry],
    collect() {
      this.set(inFlight());
    },
  });
  new Gauge({
    name: 'passthru_disks_attached',
    help: 'Pass-through disks attached to VMs',
    registers: [registry],
    collect() {
      this.set(state.attachments.size);
    },
  });
  new Gauge({
    name: 'passthru_vms',
    help: 'VMs by state',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      let running = 0;
      for (const vm of state.vms.values()) if (vm.running) running++;
      this.set({ state: 'running' }, running);
      this.set({ state: 'off' }, state.vms.size - running);
    },
  });
  new Gauge({
    name: 'passthru_nodes',
    help: 'Cluster nodes by state',
    labelNames: ['state'],
    registers: [registry],
    collect() {
      let up = 0;
      for (const n of state.nodes.values()) if (n.up) up++;
      this.set({ state: 'up' }, up);
      this.set({ state: 'down' }, state.nodes.size - up);
    },
  });

  const observe = (event: StepEventRecord | undefined, op: OperationRecord): void => {
    if (!event) {
      operations.inc({ kind: op.kind, result: op.state });
      operationSeconds.observe({ kind: op.kind, result: op.state }, Math.max(0, op.updateMs - op.createMs) / 1000);
      return;
    }
    steps.inc({ kind: op.kind, step: event.step, outcome: event.kind });
    if (event.kind === 'undone') undos.inc({ kind: op.kind, step: event.step });
    if (event.kind === 'finished') {
      const s = op.steps.find((x) => x.name === event.step);
      if (s?.startMs !== undefined && s.endMs !== undefined) stepSeconds.observe({ kind: op.kind, step: event.step }, Math.max(0, s.endMs - s.startMs) / 1000);
    }
  };
  return { observe, recovered: (n) => recoveries.inc(n) };
}
