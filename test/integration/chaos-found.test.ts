/**
 * Regressions for bugs the chaos run (issue 6, `npm run chaos`) found, each made to happen
 * deterministically here: real storage-sim with fault injection and the host agent over real
 * gRPC (test/support/host-cluster.ts), a fresh cluster per test.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statusDetails } from '../../common/status.js';
import { DiskSharing } from '../../proto/gen/passthru/host/v1/host.js';
import { FaultTiming } from '../../proto/gen/passthru/storage/v1/storage.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The call's error (or undefined when it succeeded). */
async function failure(call: Promise<unknown>): Promise<ServiceError | undefined> {
  try {
    await call;
    return undefined;
  } catch (err) {
    return err as ServiceError;
  }
}

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

  it("a guest's write in flight through the old node when its VM's group moves is answered UNAVAILABLE (retry), not FAILED_PRECONDITION reservation conflict; the retry lands through the new node", async () => {
    c = await startCluster();
    const g = c.guest('vm1');
    const { operation } = await g.createDisk({ requestId: 'fenced-create', mountPath: 'E:', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_SHARED });
    const address = (await c.settle(operation!.id)).result!.address!;
    // The write reaches the array through node1's session and is held there while the group moves to node2.
    await c.faults.injectFault({ method: 'WriteBlocks', count: 1, code: 0, message: '', delayMs: 500, timing: FaultTiming.FAULT_TIMING_BEFORE });
    const data = Buffer.alloc(4096, 0x37);
    const write = failure(g.writeDisk({ requestId: 'fenced-write', address, offsetBytes: BigInt(MiB), data }));
    await sleep(100);
    const moved = await c.admin.moveGroup({ requestId: 'fenced-move', group: 'Virtual Machine web1', node: 'node2' });
    expect(moved.move?.toNode).to.equal('node2');
    const err = await write;
    expect(err, 'the write was refused: the guest must hear why').to.not.equal(undefined);
    expect(Code[err!.code], err!.details).to.equal('UNAVAILABLE');
    expect(statusDetails(err!).reason, 'a reason the guest agent retries on').to.equal('VM_MOVING');
    // Nothing was written; the same write again goes through node2, the owner now.
    expect((await g.readDisk({ address, offsetBytes: BigInt(MiB), lengthBytes: 4096 })).data.equals(Buffer.alloc(4096))).to.equal(true);
    expect((await g.writeDisk({ requestId: 'fenced-write', address, offsetBytes: BigInt(MiB), data })).writtenBytes).to.equal(4096);
    expect((await g.readDisk({ address, offsetBytes: BigInt(MiB), lengthBytes: 4096 })).data.equals(data)).to.equal(true);
    expect(await c.violations()).to.deep.equal([]);
  });
});
