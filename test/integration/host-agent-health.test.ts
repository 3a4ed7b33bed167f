/**
 * Health as a load balancer or an operator's probe sees it: the host agent reports its
 * storage dependency (passthru.storage.v1.StorageArrayService) NOT_SERVING while the array
 * does not answer and SERVING again once it does, on its admin endpoint and on every VM's.
 */
import { expect } from 'chai';
import { connect } from '../../common/client.js';
import { HealthCheckResponse_ServingStatus as Serving, HealthClient } from '../../proto/gen/grpc/health/v1/health.js';
import { STORAGE_DEPENDENCY } from '../../host-agent/serve.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { join } from 'node:path';

async function until(what: string, check: () => Promise<boolean>, timeoutMs = 5000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`${what} did not happen within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('host-agent health of the storage dependency', function () {
  this.timeout(30_000);
  let c: TestCluster;
  before(async () => {
    c = await startCluster({ storageProbeMs: 100 });
  });
  after(async () => {
    await c.close();
  });

  it('is SERVING while the array answers, NOT_SERVING during an outage (the host agent itself still serving), SERVING after it', async () => {
    const admin = connect(HealthClient, c.host.admin.address);
    const vm = connect(HealthClient, `unix:${join(c.dir, 'host', 'sock', 'vm1.sock')}`);
    const status = async (h: typeof admin, service: string): Promise<Serving> => (await h.check({ service })).status;
    try {
      await until('storage SERVING', async () => (await status(admin, STORAGE_DEPENDENCY)) === Serving.SERVING);
      expect(await status(vm, STORAGE_DEPENDENCY)).to.equal(Serving.SERVING);
      await c.faults.setUnavailable({ durationMs: 1500 });
      await until('storage NOT_SERVING', async () => (await status(admin, STORAGE_DEPENDENCY)) === Serving.NOT_SERVING);
      expect(await status(vm, STORAGE_DEPENDENCY)).to.equal(Serving.NOT_SERVING);
      expect(await status(admin, ''), 'the host agent itself').to.equal(Serving.SERVING);
      const listed = await admin.list({});
      expect(listed.statuses[STORAGE_DEPENDENCY]?.status).to.equal(Serving.NOT_SERVING);
      await until('storage SERVING again', async () => (await status(admin, STORAGE_DEPENDENCY)) === Serving.SERVING, 6000);
      expect(await status(vm, STORAGE_DEPENDENCY)).to.equal(Serving.SERVING);
    } finally {
      admin.close();
      vm.close();
    }
  });
});
