/**
 * Regressions for bugs the chaos run (issue 6, `npm run chaos`) found, each made to happen
 * deterministically here: real storage-sim with fault injection and the host agent over real
 * gRPC (test/support/host-cluster.ts), a fresh cluster per test.
 */
import { status as Code, type ServiceError } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statusDetails } from '../../common/status.js';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type PromiseClient } from '../../common/client.js';
import { GrpcHostLink } from '../../guest-agent/grpc-host.js';
import { AdminServiceClient, DiskSharing, OperationState, StepState } from '../../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient, FaultTiming, OsType, Provisioning, StorageArrayServiceClient } from '../../proto/gen/passthru/storage/v1/storage.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { pollUntil, startHostAgent, threeNodeCluster, writeClusterFile } from '../support/host-process.js';
import { startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';
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

  it("the guest's link to its host carries a 1 MiB WriteDisk and a 1 MiB ReadDisk at once without wedging the connection (an HTTP/2 connection saturated both ways over the VM's Unix socket stopped for good)", async () => {
    c = await startCluster();
    const { operation } = await c.guest('vm2').createDisk({ requestId: 'duplex', mountPath: '/srv/duplex', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_SHARED });
    const address = (await c.settle(operation!.id)).result!.address!;
    const link = new GrpcHostLink(`unix:${join(c.dir, 'host', 'sock', 'vm2.sock')}`, 3_000);
    try {
      // Each round has a fair chance to wedge a shared connection; twenty rounds make it a near certainty.
      for (let round = 0; round < 20; round++) {
        const data = Buffer.alloc(MiB, round + 1);
        await Promise.all([link.writeDisk('', address, 0, data), link.readDisk(address, 8 * MiB, MiB), link.writeDisk('', address, 16 * MiB, data), link.readDisk(address, 24 * MiB, MiB)]);
        expect((await link.readDisk(address, 0, MiB)).equals(data), `round ${round}`).to.equal(true);
      }
      expect((await link.self()).id).to.equal('vm2');
    } finally {
      link.close();
    }
  });

  describe('with real processes, the host agent SIGKILLed', () => {
    let dir: ReturnType<typeof tempDir>;
    const procs: ServiceProcess[] = [];
    const clients: { close(): void }[] = [];
    afterEach(async () => {
      for (const c of clients.splice(0)) c.close();
      for (const p of procs.splice(0)) await p.kill();
      dir?.remove();
    });

    /**
     * storage-sim (faults on) and a host agent process on a three-node cluster, a LUN of the
     * administrator's on the array, and the next MapLun held `holdMs` by the array before it
     * runs it, whoever is still waiting by then.
     */
    async function lateMapRig(lunPath: string, holdMs: number, extra: string[] = []) {
      dir = tempDir('passthru-late-map-');
      const array = await startStorageSim(join(dir.path, 'array'), ['--enable-faults']);
      procs.push(array);
      mkdirSync(join(dir.path, 'host'));
      const cluster = threeNodeCluster('late', 'passthru');
      const opts = { storage: array.address, dataDir: join(dir.path, 'host'), cluster: writeClusterFile(dir.path, cluster), extra };
      procs.push(await startHostAgent(opts));
      const storage = connect(StorageArrayServiceClient, array.address);
      const faults = connect(FaultInjectionServiceClient, array.address);
      clients.push(storage, faults);
      const { lun } = await storage.createLun({ requestId: 'late-lun', path: lunPath, sizeBytes: BigInt(16 * MiB), osType: OsType.OS_TYPE_LINUX, provisioning: Provisioning.PROVISIONING_THIN, comment: '', pool: '' });
      await faults.injectFault({ method: 'MapLun', count: 1, code: 0, message: '', delayMs: holdMs, timing: FaultTiming.FAULT_TIMING_BEFORE });
      const nodes = cluster.nodes.map((n) => n.name);
      return {
        lun: lun!,
        host: (): ServiceProcess => procs.at(-1)!,
        /** The igroups the LUN is mapped to now. */
        maps: async (): Promise<string[]> => (await storage.listLunMaps({ lun: lun!.uuid, igroup: '', pageSize: 100, pageToken: '' })).maps.map((m) => m.igroup),
        /** A new host agent on the same data dir, after a SIGKILL of the one running (and `meanwhile`, between the two). */
        async restartHost(meanwhile?: () => Promise<void>): Promise<ServiceProcess> {
          await procs.pop()!.kill();
          await meanwhile?.();
          procs.push(await startHostAgent(opts));
          return procs.at(-1)!;
        },
        /** The held MapLun lands on the nodes, then the host agent running now unmaps it; nothing else is out of place. */
        async expectLateMapSwept(admin: PromiseClient<AdminServiceClient>): Promise<void> {
          await pollUntil(this.maps, (igroups) => igroups.some((g) => nodes.includes(g)), 8_000, 'the late MapLun lands');
          await pollUntil(this.maps, (igroups) => igroups.length === 0, 15_000, 'the late map is swept');
          // The host agent logs once the array has answered its UnmapLun: the line may trail the map's going by a moment.
          const log = await pollUntil(async () => this.host().stderr(), (text) => text.includes('unmapped a late map'), 5_000, 'the sweep logged');
          expect(log).to.include('unmapped a late map');
          expect((await admin.checkInvariants({})).violations).to.deep.equal([]);
        },
      };
    }

    it("a MapLun of AddAvailableDisk that reaches the array after its operation was rolled back (the host agent killed meanwhile) leaves no map behind: it is swept", async () => {
      const rig = await lateMapRig('/vol/shared/reports', 4_000);
      const first = connect(AdminServiceClient, rig.host().address);
      const { operation } = await first.addAvailableDisk({ requestId: 'late-add', lun: rig.lun.path });
      await pollUntil(() => first.getOperation({ operationId: operation!.id }), (r) => r.operation!.steps.find((x) => x.name === 'lun.map')?.state === StepState.STEP_STATE_RUNNING, 5_000, 'lun.map under way');
      first.close();
      // Recovery rolls the operation back (unmapping what is not mapped yet); the held MapLun lands after that.
      const admin = connect(AdminServiceClient, (await rig.restartHost()).address);
      clients.push(admin);
      const op = (await pollUntil(() => admin.getOperation({ operationId: operation!.id }), (r) => r.operation!.state === OperationState.OPERATION_STATE_FAILED, 10_000, 'rolled back')).operation!;
      expect(op.error?.code).to.equal(Code.ABORTED);
      await rig.expectLateMapSwept(admin);
      // The LUN is the administrator's again, unmapped: adding it once more works.
      const again = await admin.addAvailableDisk({ requestId: 'late-add-2', lun: rig.lun.path });
      expect((await pollUntil(() => admin.getOperation({ operationId: again.operation!.id }), (r) => r.operation!.state === OperationState.OPERATION_STATE_SUCCEEDED || r.operation!.state === OperationState.OPERATION_STATE_FAILED, 10_000, 'added')).operation!.state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    });

    it("a MapLun of AddAvailableDisk that lands after its operation failed in a host agent that was SIGKILLed before it could sweep is swept by the next host agent", async () => {
      // One attempt of 1 s per array call: the held MapLun fails the operation in this process.
      const rig = await lateMapRig('/vol/shared/ledger', 6_000, ['--array-attempts', '1', '--array-timeout-ms', '1000']);
      const first = connect(AdminServiceClient, rig.host().address);
      const { operation } = await first.addAvailableDisk({ requestId: 'late-add', lun: rig.lun.path });
      const failed = (await pollUntil(() => first.getOperation({ operationId: operation!.id }), (r) => r.operation!.state === OperationState.OPERATION_STATE_FAILED, 5_000, 'rolled back in the first process')).operation!;
      expect(failed.error?.code, 'the array did not answer in time').to.equal(Code.UNAVAILABLE);
      first.close();
      // Killed with its sweep timers, before the held MapLun runs.
      const host = await rig.restartHost(async () => {
        expect(await rig.maps(), 'the MapLun is still held').to.deep.equal([]);
      });
      const admin = connect(AdminServiceClient, host.address);
      clients.push(admin);
      await rig.expectLateMapSwept(admin);
    });
  });
});
