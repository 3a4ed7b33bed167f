/**
 * What one VM may ask of its host, through real services on loopback: its endpoint's request
 * rate, operations and block I/O calls in flight, and its quota of disks and bytes. A VM over
 * a limit hears RESOURCE_EXHAUSTED with the time to wait (RetryInfo), nothing is done for it,
 * and other VMs go on as if it were not there.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statusDetails } from '../../common/status.js';
import { DiskSharing, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { FaultTiming } from '../../proto/gen/passthru/storage/v1/storage.js';
import { DEFAULT_CLUSTER, startCluster, type TestCluster } from '../support/host-cluster.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;
const create = (c: TestCluster, vm: string, mount: string, size: number, requestId = `${vm}-${mount}-${size}-${Math.random()}`) =>
  c.guest(vm).createDisk({ requestId, mountPath: mount, sizeBytes: BigInt(size), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED });

describe('per-VM limits and quotas', function () {
  this.timeout(60_000);

  describe('request rate', () => {
    let c: TestCluster;
    before(async () => {
      c = await startCluster({ limits: { ratePerSecond: 20, burst: 20 } });
    });
    after(async () => {
      await c.close();
    });

    it('a VM flooding its endpoint is refused RESOURCE_EXHAUSTED (RATE_LIMITED, with RetryInfo) past its burst, while another VM provisions; after the wait it is served again', async () => {
      const flood = await Promise.allSettled(Array.from({ length: 60 }, () => c.guest('vm1').listDisks({})));
      const refused = flood.filter((r): r is PromiseRejectedResult => r.status === 'rejected').map((r) => r.reason as ServiceError);
      expect(flood.filter((r) => r.status === 'fulfilled').length).to.be.within(20, 25);
      expect(refused.length).to.be.at.least(35);
      for (const e of refused) {
        expect(e.code).to.equal(Code.RESOURCE_EXHAUSTED);
        const d = statusDetails(e);
        expect(d.reason).to.equal('RATE_LIMITED');
        expect(d.retryAfterMs).to.be.greaterThan(0).and.at.most(1000);
      }
      // Another VM is not held back by vm1's flood.
      const op = (await create(c, 'vm2', '/data', 16 * MiB)).operation!;
      expect((await c.settle(op.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      await new Promise((r) => setTimeout(r, statusDetails(refused[0]!).retryAfterMs! + 60));
      expect((await c.guest('vm1').listDisks({})).disks).to.deep.equal([]);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('during a flood from vm1 (thousands of calls for a second and a half), vm1 is refused with RetryInfo while vm2\'s creates and removes all complete', async () => {
      const g1 = c.guest('vm1');
      let stop = false;
      let sent = 0;
      const refusedWithWait: number[] = [];
      const flooders = Array.from({ length: 32 }, async () => {
        while (!stop) {
          sent++;
          try {
            await g1.listDisks({});
          } catch (err) {
            const d = statusDetails(err as ServiceError);
            if ((err as ServiceError).code === Code.RESOURCE_EXHAUSTED && d.reason === 'RATE_LIMITED') refusedWithWait.push(d.retryAfterMs ?? 0);
            else throw err;
          }
        }
      });
      const provisioned: string[] = [];
      for (let i = 0; i < 4; i++) {
        const op = (await create(c, 'vm2', `/flood${i}`, 16 * MiB)).operation!;
        expect((await c.settle(op.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
        const rm = (await c.guest('vm2').removeDisk({ requestId: `flood-rm-${i}`, mountPath: `/flood${i}`, deleteLun: true })).operation!;
        expect((await c.settle(rm.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
        provisioned.push(op.id);
      }
      await new Promise((r) => setTimeout(r, 1500));
      stop = true;
      await Promise.all(flooders);
      expect(sent, 'calls vm1 made').to.be.greaterThan(1000);
      expect(refusedWithWait.length, 'refused with RATE_LIMITED').to.be.greaterThan(sent * 0.9);
      expect(refusedWithWait.every((ms) => ms > 0)).to.equal(true);
      expect(provisioned).to.have.length(4);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('block I/O is not counted against the request rate', async () => {
      const op = (await create(c, 'vm2', '/io', 16 * MiB)).operation!;
      await c.settle(op.id);
      await new Promise((r) => setTimeout(r, 1100));
      const [disk] = (await c.guest('vm2').listDisks({})).disks.filter((d) => d.mountPath === '/io');
      for (let i = 0; i < 60; i++) await c.guest('vm2').readDisk({ address: disk!.address, offsetBytes: 0n, lengthBytes: 512 });
    });
  });

  describe('in flight', () => {
    let c: TestCluster;
    before(async () => {
      c = await startCluster({ limits: { operationsInFlight: 2, ioInFlight: 2 } });
    });
    after(async () => {
      await c.close();
    });

    it('a third operation while two run on the VM is RESOURCE_EXHAUSTED (TOO_MANY_OPERATIONS) and starts nothing; a retry of a running one still gets it back', async () => {
      await c.faults.injectFault({ method: 'CreateLun', count: 2, code: 0, message: '', delayMs: 800, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const a = (await create(c, 'vm1', 'E:', 16 * MiB, 'inflight-a')).operation!;
      const b = (await create(c, 'vm1', 'F:', 16 * MiB, 'inflight-b')).operation!;
      const err = await expectStatus(create(c, 'vm1', 'G:', 16 * MiB), Code.RESOURCE_EXHAUSTED, 'TOO_MANY_OPERATIONS');
      expect(statusDetails(err).retryAfterMs).to.be.greaterThan(0);
      expect((await create(c, 'vm1', 'E:', 16 * MiB, 'inflight-a')).operation!.id, 'the retry is answered first').to.equal(a.id);
      // Another VM is not limited by vm1's operations.
      const other = (await create(c, 'vm2', '/x', 16 * MiB)).operation!;
      for (const id of [a.id, b.id, other.id]) expect((await c.settle(id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      expect((await c.guest('vm1').listDisks({})).disks.map((d) => d.mountPath).sort()).to.deep.equal(['E:', 'F:']);
      const third = (await create(c, 'vm1', 'G:', 16 * MiB)).operation!;
      expect((await c.settle(third.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    });

    it('a third block I/O call in flight on the VM is RESOURCE_EXHAUSTED (TOO_MUCH_IO_IN_FLIGHT, RetryInfo) and writes nothing', async () => {
      const [disk] = (await c.guest('vm1').listDisks({})).disks.filter((d) => d.mountPath === 'E:');
      await c.faults.injectFault({ method: 'WriteBlocks', count: 2, code: 0, message: '', delayMs: 500, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const held = [0, 1].map((i) => c.guest('vm1').writeDisk({ requestId: `held-${i}`, address: disk!.address, offsetBytes: BigInt(i * 512), data: Buffer.alloc(512, 1) }));
      await new Promise((r) => setTimeout(r, 100));
      const err = await expectStatus(
        c.guest('vm1').writeDisk({ requestId: 'over', address: disk!.address, offsetBytes: 4096n, data: Buffer.alloc(512, 9) }),
        Code.RESOURCE_EXHAUSTED,
        'TOO_MUCH_IO_IN_FLIGHT',
      );
      expect(statusDetails(err).retryAfterMs).to.be.greaterThan(0);
      await Promise.all(held);
      const back = await c.guest('vm1').readDisk({ address: disk!.address, offsetBytes: 4096n, lengthBytes: 512 });
      expect(Buffer.from(back.data).equals(Buffer.alloc(512, 0)), 'the refused write wrote nothing').to.equal(true);
    });
  });

  describe('quotas', () => {
    let c: TestCluster;
    before(async () => {
      const cluster = structuredClone(DEFAULT_CLUSTER) as typeof DEFAULT_CLUSTER & { vms: Record<string, unknown>[] };
      cluster.vms[0] = { ...cluster.vms[0], maxDisks: 2 };
      cluster.vms[1] = { ...cluster.vms[1], maxBytes: '100MiB' };
      c = await startCluster({ cluster });
    });
    after(async () => {
      await c.close();
    });

    it('a disk past the VM\'s disk quota is RESOURCE_EXHAUSTED (QUOTA_DISKS) in the call and changes nothing; removing one makes room', async () => {
      for (const m of ['E:', 'F:']) expect((await c.settle((await create(c, 'vm1', m, 16 * MiB)).operation!.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      const luns = (await c.storage.listLuns({ pageSize: 1000, pageToken: '', pathPrefix: '' })).luns.length;
      await expectStatus(create(c, 'vm1', 'G:', 16 * MiB), Code.RESOURCE_EXHAUSTED, 'QUOTA_DISKS');
      expect((await c.storage.listLuns({ pageSize: 1000, pageToken: '', pathPrefix: '' })).luns.length).to.equal(luns);
      await c.settle((await c.guest('vm1').removeDisk({ requestId: 'q-rm', mountPath: 'F:', deleteLun: true })).operation!.id);
      expect((await c.settle((await create(c, 'vm1', 'G:', 16 * MiB)).operation!.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      expect(await c.violations()).to.deep.equal([]);
    });

    it('a disk past the VM\'s byte quota is RESOURCE_EXHAUSTED (QUOTA_BYTES) saying how much is left; a smaller one fits', async () => {
      expect((await c.settle((await create(c, 'vm2', '/a', 64 * MiB)).operation!.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      await expectStatus(create(c, 'vm2', '/b', 64 * MiB), Code.RESOURCE_EXHAUSTED, 'QUOTA_BYTES');
      await expectStatus(create(c, 'vm2', '/b', 64 * MiB), Code.RESOURCE_EXHAUSTED, /100 MiB/);
      expect((await c.settle((await create(c, 'vm2', '/b', 32 * MiB)).operation!.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
      // vm3 has no quota of its own and the host sets none.
      expect((await c.settle((await create(c, 'vm3', 'E:', 128 * MiB)).operation!.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    });
  });
});
