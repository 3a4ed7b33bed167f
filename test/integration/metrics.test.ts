/**
 * Prometheus metrics as an operator scrapes them: storage-sim and host-agent served
 * in-process with --metrics-listen on 127.0.0.1:0, scraped over HTTP before and after real
 * work through the guest and admin endpoints. The figures must move by what was done.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { join } from 'node:path';
import { silentLogger } from '../../common/logging.js';
import { parseClusterFile } from '../../host-agent/cluster-file.js';
import { serveHostAgent, type ServingHostAgent } from '../../host-agent/serve.js';
import { FaultTiming } from '../../proto/gen/passthru/storage/v1/storage.js';
import { serveArray, type ServingArray } from '../../storage-sim/serve.js';
import { connect } from '../../common/client.js';
import { DiskSharing, GuestServiceClient, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient } from '../../proto/gen/passthru/storage/v1/storage.js';
import { DEFAULT_CLUSTER, FAST_BACKOFF, FAST_RETRY } from '../support/host-cluster.js';
import { tempDir } from '../support/processes.js';

const MiB = 1024 * 1024;

/** The value of one sample: `name{labels...}` with every given label, or 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  let seen = false;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^[^{ ]+(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const have = Object.fromEntries([...(m[1] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) {
      total += Number(m[2]);
      seen = true;
    }
  }
  return seen ? total : 0;
}

async function scrape(address: string): Promise<string> {
  const res = await fetch(`http://${address}/metrics`);
  expect(res.status).to.equal(200);
  expect(res.headers.get('content-type')).to.match(/^text\/plain/);
  return res.text();
}

describe('Prometheus metrics', function () {
  this.timeout(60_000);
  const dir = tempDir('passthru-metrics-');
  let array: ServingArray;
  let host: ServingHostAgent;

  before(async () => {
    const logger = silentLogger();
    array = await serveArray({ listen: '127.0.0.1:0', dataDir: join(dir.path, 'array'), enableFaults: true, logger, metricsListen: '127.0.0.1:0' });
    host = await serveHostAgent({
      listen: '127.0.0.1:0',
      storage: array.running.address,
      dataDir: join(dir.path, 'host'),
      cluster: parseClusterFile(JSON.stringify(DEFAULT_CLUSTER)),
      logger,
      retry: FAST_RETRY,
      backoff: FAST_BACKOFF,
      metricsListen: '127.0.0.1:0',
    });
    await host.ready;
  });

  after(async () => {
    await host.close(500);
    await array.close(500);
    dir.remove();
  });

  const settle = async (guest: ReturnType<typeof connect<GuestServiceClient>>, id: string): Promise<OperationState> => {
    for (;;) {
      const { operation } = await guest.getOperation({ operationId: id });
      if (operation!.state === OperationState.OPERATION_STATE_SUCCEEDED || operation!.state === OperationState.OPERATION_STATE_FAILED) return operation!.state;
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  it('a disk created, written and removed moves the host agent\'s RPC, operation, step and disk figures, and the array\'s LUNs, maps and portal figures', async () => {
    const guest = connect(GuestServiceClient, `unix:${join(dir.path, 'host', 'sock', 'vm1.sock')}`);
    try {
      const h0 = await scrape(host.metrics!.address);
      const a0 = await scrape(array.metrics!.address);
      const created = await guest.createDisk({ requestId: 'm-1', mountPath: 'E:', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED });
      expect(await settle(guest, created.operation!.id)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      const [disk] = (await guest.listDisks({})).disks;
      const a1 = await scrape(array.metrics!.address);
      expect(sample(a1, 'passthru_array_objects', { kind: 'lun' }) - sample(a0, 'passthru_array_objects', { kind: 'lun' })).to.equal(1);
      expect(sample(a1, 'passthru_array_objects', { kind: 'map' }) - sample(a0, 'passthru_array_objects', { kind: 'map' })).to.equal(3);
      expect(sample(a1, 'passthru_rpc_requests_total', { method: 'CreateLun', code: 'OK' })).to.equal(1);
      expect(sample(a1, 'passthru_pool_bytes', { kind: 'used' }) - sample(a0, 'passthru_pool_bytes', { kind: 'used' })).to.equal(64 * MiB);
      await guest.writeDisk({ requestId: 'w-1', address: disk!.address, offsetBytes: 0n, data: Buffer.alloc(8192, 1) });
      await guest.readDisk({ address: disk!.address, offsetBytes: 0n, lengthBytes: 4096 });
      const removed = await guest.removeDisk({ requestId: 'm-2', mountPath: 'E:', deleteLun: true });
      expect(await settle(guest, removed.operation!.id)).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);

      const h1 = await scrape(host.metrics!.address);
      const d = (name: string, labels: Record<string, string>): number => sample(h1, name, labels) - sample(h0, name, labels);
      expect(d('passthru_rpc_requests_total', { service: 'passthru.host.v1.GuestService', method: 'CreateDisk', code: 'OK' })).to.equal(1);
      expect(d('passthru_rpc_requests_total', { method: 'WriteDisk', code: 'OK' })).to.equal(1);
      expect(d('passthru_rpc_duration_seconds_count', { method: 'CreateDisk' })).to.equal(1);
      expect(d('passthru_operations_total', { kind: 'create_disk', result: 'succeeded' })).to.equal(1);
      expect(d('passthru_operations_total', { kind: 'remove_disk', result: 'succeeded' })).to.equal(1);
      expect(d('passthru_workflow_steps_total', { kind: 'create_disk', step: 'lun.create', outcome: 'finished' })).to.equal(1);
      expect(d('passthru_workflow_steps_total', { kind: 'create_disk', step: 'lun.find', outcome: 'skipped' })).to.equal(1);
      expect(d('passthru_workflow_step_duration_seconds_count', { kind: 'remove_disk', step: 'lun.delete' })).to.equal(1);
      expect(sample(h1, 'passthru_operations_in_flight')).to.equal(0);
      expect(sample(h1, 'passthru_disks_attached')).to.equal(0);
      expect(sample(h1, 'passthru_nodes', { state: 'up' })).to.equal(3);
      expect(h1, 'every sample names its program').to.match(/passthru_operations_total\{[^}]*program="host-agent"/);

      const a2 = await scrape(array.metrics!.address);
      expect(sample(a2, 'passthru_portal_commands_total', { op: 'write', code: 'OK' }) - sample(a1, 'passthru_portal_commands_total', { op: 'write', code: 'OK' })).to.equal(1);
      expect(sample(a2, 'passthru_portal_bytes_total', { op: 'read' }) - sample(a1, 'passthru_portal_bytes_total', { op: 'read' })).to.equal(4096);
      expect(sample(a2, 'passthru_portal_sessions')).to.be.at.least(1);
      expect(sample(a2, 'passthru_array_objects', { kind: 'lun' })).to.equal(sample(a0, 'passthru_array_objects', { kind: 'lun' }));
    } finally {
      guest.close();
    }
  });

  it('a create the array refuses counts as failed, with its undone steps and a refused call by its code', async () => {
    const guest = connect(GuestServiceClient, `unix:${join(dir.path, 'host', 'sock', 'vm2.sock')}`);
    const faults = connect(FaultInjectionServiceClient, array.running.address);
    try {
      const h0 = await scrape(host.metrics!.address);
      await faults.injectFault({ method: 'Reserve', count: 1, code: Code.FAILED_PRECONDITION, message: 'refused (injected)', delayMs: 0, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const created = await guest.createDisk({ requestId: 'm-3', mountPath: '/data', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED });
      expect(await settle(guest, created.operation!.id)).to.equal(OperationState.OPERATION_STATE_FAILED);
      await guest.getOperation({ operationId: 'op-that-is-not' }).catch(() => undefined);
      const h1 = await scrape(host.metrics!.address);
      const d = (name: string, labels: Record<string, string>): number => sample(h1, name, labels) - sample(h0, name, labels);
      expect(d('passthru_operations_total', { kind: 'create_disk', result: 'failed' })).to.equal(1);
      expect(d('passthru_workflow_undos_total', { kind: 'create_disk', step: 'lun.create' })).to.equal(1);
      expect(d('passthru_workflow_steps_total', { kind: 'create_disk', step: 'resource.online', outcome: 'failed' })).to.equal(1);
      expect(d('passthru_rpc_requests_total', { method: 'GetOperation', code: 'NOT_FOUND' })).to.equal(1);
    } finally {
      guest.close();
      faults.close();
    }
  });

  it('only GET /metrics is served', async () => {
    const res = await fetch(`http://${host.metrics!.address}/other`);
    expect(res.status).to.equal(404);
    await res.text();
  });
});
