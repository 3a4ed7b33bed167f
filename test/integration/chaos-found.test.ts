/**
 * Regressions for bugs the chaos run (issue 6, `npm run chaos`) found, each made to happen
 * deterministically here: real storage-sim with fault injection and the host agent over real
 * gRPC (test/support/host-cluster.ts), a fresh cluster per test.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statusDetails } from '../../common/status.js';
import { DiskSharing } from '../../proto/gen/passthru/host/v1/host.js';
import { FaultTiming } from '../../proto/gen/passthru/storage/v1/storage.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;

describe('bugs the chaos run found', function () {
  this.timeout(60_000);
  let c: TestCluster;
  afterEach(async () => {
    await c?.close();
  });

  it("an array's INTERNAL answer to a call the RPC makes itself (CreateDisk's pool check) reaches the guest as INTERNAL in the array's words, not a generic 'internal error'", async () => {
    c = await startCluster();
    const message = 'chaos: injected INTERNAL on ListPools';
    await c.faults.injectFault({ method: 'ListPools', count: 1, code: Code.INTERNAL, message, delayMs: 0, timing: FaultTiming.FAULT_TIMING_BEFORE });
    const err = await expectStatus(
      c.guest('vm1').createDisk({ requestId: 'internal-1', mountPath: 'E:', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_SHARED }),
      Code.INTERNAL,
    );
    expect(err.details, 'the person reading it learns the array failed, and why').to.equal(`storage array: ListPools failed with INTERNAL: ${message}`);
    expect(statusDetails(err).reason).to.equal('ARRAY_INTERNAL');
    // Refused before anything started: the same request id works once the array answers.
    const { operation } = await c.guest('vm1').createDisk({ requestId: 'internal-1', mountPath: 'E:', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_SHARED });
    expect((await c.settle(operation!.id)).error).to.equal(undefined);
    expect(await c.violations()).to.deep.equal([]);
  });
});
