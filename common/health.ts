import { status as Code, type ServerWritableStream } from '@grpc/grpc-js';
import {
  HealthCheckResponse_ServingStatus as WireStatus,
  HealthService,
  type HealthCheckRequest,
  type HealthCheckResponse,
  type HealthServer,
} from '../proto/gen/grpc/health/v1/health.js';
import type { ServiceRegistration } from './service.js';

export type ServingStatus = 'SERVING' | 'NOT_SERVING';

/** The service name the health protocol uses for the server as a whole. */
export const WHOLE_SERVER = '';

type Watcher = ServerWritableStream<HealthCheckRequest, HealthCheckResponse>;

/**
 * The serving status of a server and of each of its services, answered over
 * grpc.health.v1.Health so load balancers, orchestrators and grpc-health-probe can see it.
 */
export class HealthRegistry {
  private readonly statuses = new Map<string, ServingStatus>();
  private readonly watchers = new Map<string, Set<Watcher>>();
  private shuttingDown = false;

  constructor(overall: ServingStatus) {
    this.statuses.set(WHOLE_SERVER, overall);
  }

  /** Sets a service's status ("" is the whole server). Ignored once shutdown() has begun. */
  set(service: string, status: ServingStatus): void {
    // A handler finishing late must not report SERVING from a server that is going away.
    if (this.shuttingDown) return;
    if (this.statuses.get(service) === status) return;
    this.statuses.set(service, status);
    this.notify(service, status);
  }

  /** The status of a service, undefined when it was never set. */
  get(service: string): ServingStatus | undefined {
    return this.statuses.get(service);
  }

  /**
   * Marks everything NOT_SERVING, tells every watcher and ends their streams: a graceful
   * shutdown waits for open calls, and a Watch would otherwise never finish.
   */
  shutdown(): void {
    this.shuttingDown = true;
    for (const service of this.statuses.keys()) this.statuses.set(service, 'NOT_SERVING');
    for (const [service, watchers] of this.watchers) {
      const last = this.wireStatus(service);
      for (const watcher of watchers) {
        watcher.write({ status: last });
        watcher.end();
      }
    }
    this.watchers.clear();
  }

  registration(): ServiceRegistration {
    const implementation: HealthServer = {
      check: (call, callback) => {
        const status = this.statuses.get(call.request.service);
        if (status === undefined) {
          callback({ code: Code.NOT_FOUND, details: `unknown service "${call.request.service}"` });
          return;
        }
        callback(null, { status: WireStatus[status] });
      },
      list: (_call, callback) => {
        const statuses: Record<string, HealthCheckResponse> = {};
        for (const [service, status] of this.statuses) statuses[service] = { status: WireStatus[status] };
        callback(null, { statuses });
      },
      watch: (call) => this.watch(call),
    };
    return { name: 'grpc.health.v1.Health', definition: HealthService, implementation };
  }

  private watch(call: Watcher): void {
    const service = call.request.service;
    call.write({ status: this.wireStatus(service) });
    if (this.shuttingDown) {
      call.end();
      return;
    }
    const watchers = this.watchers.get(service) ?? new Set<Watcher>();
    watchers.add(call);
    this.watchers.set(service, watchers);
    call.on('cancelled', () => {
      watchers.delete(call);
      if (watchers.size === 0 && this.watchers.get(service) === watchers) this.watchers.delete(service);
    });
  }

  private notify(service: string, status: ServingStatus): void {
    for (const watcher of this.watchers.get(service) ?? []) watcher.write({ status: WireStatus[status] });
  }

  /** Watch, unlike Check, answers an unknown service with SERVICE_UNKNOWN and keeps watching. */
  private wireStatus(service: string): WireStatus {
    const status = this.statuses.get(service);
    return status === undefined ? WireStatus.SERVICE_UNKNOWN : WireStatus[status];
  }
}
