/**
 * The chaos run's own administrator (chaos/admin.ts) against a real storage-sim with fault
 * injection and the host agent over gRPC: whatever it did for itself on the array it undoes,
 * so what the final checks find left behind is the system's doing, never the harness's.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { ADMIN_IGROUP, Administrators } from '../../chaos/admin.js';
import { Ledger } from '../../chaos/ledger.js';
import { Registry } from '../../chaos/registry.js';
import { Rng } from '../../chaos/rng.js';
import { FaultTiming } from '../../proto/gen/passthru/storage/v1/storage.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';

describe("the chaos run's administrator", function () {
  this.timeout(60_000);
  let c: TestCluster;
  afterEach(async () => {
    await c?.close();
  });

  it('preparing a foreign LUN whose MapLun maps and then fails (reply lost) takes its own map back: the LUN is left mapped to nobody', async () => {
    c = await startCluster();
    const registry = new Registry();
    const ledger = new Ledger();
    const admins = new Administrators({ ...c, close: () => undefined }, registry, ledger, new Rng(1), 'admin-test', 4);
    await admins.setUp();
    await c.faults.injectFault({ method: 'MapLun', count: 1, code: Code.RESOURCE_EXHAUSTED, message: 'injected after mapping', delayMs: 0, timing: FaultTiming.FAULT_TIMING_AFTER });
    let refusal: unknown;
    await admins.addNew(true).catch((err: unknown) => (refusal = err));
    expect((refusal as { code?: number } | undefined)?.code, 'the MapLun refusal reaches the administrator').to.equal(Code.RESOURCE_EXHAUSTED);
    const [model] = registry.all();
    expect(model, 'the LUN it made is known to the run').to.not.equal(undefined);
    expect(model!.place.kind).to.equal('retained');
    const { maps } = await c.storage.listLunMaps({ lun: model!.uuid!, igroup: '', pageSize: 100, pageToken: '' });
    expect(maps.map((m) => m.igroup), `no map to ${ADMIN_IGROUP} or anyone`).to.deep.equal([]);
    expect(ledger.counts.get('lun-prepare'), 'counted as a failed step of the administrator').to.deep.equal({ attempted: 1, succeeded: 0, failed: 1 });
  });
});
