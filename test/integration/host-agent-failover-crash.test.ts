/**
 * A host agent killed with SIGKILL in the middle of a failover: the node is journaled down
 * and some groups are journaled as moving while their reservations are being taken over.
 * After a restart the failover is finished: every HA VM of the failed node runs on a
 * survivor with its disks Online and reserved by the new owner, and the failed node is fenced.
 */
import { expect } from 'chai';
import { join } from 'node:path';
import { connect } from '../../common/client.js';
import { AdminServiceClient, GuestServiceClient, NodeState, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { FaultInjectionServiceClient, FaultTiming, StorageArrayServiceClient } from '../../proto/gen/passthru/storage/v1/storage.js';
import { pollUntil, sleep, startHostAgent, threeNodeCluster, writeClusterFile } from '../support/host-process.js';
import { startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

describe('host-agent killed in the middle of a failover (real processes)', function () {
  this.timeout(120_000);
  const procs: ServiceProcess[] = [];
  const dir = tempDir('passthru-fo-crash-');
  after(async () => {
    for (const p of procs) await p.kill();
    dir.remove();
  });

  it('finishes the failover at start-up: each HA VM runs on a survivor, its disks Online and reserved by the new owner, the failed node refused by the array, CheckInvariants empty', async () => {
    const sim = await startStorageSim(join(dir.path, 'array'), ['--enable-faults']);
    procs.push(sim);
    const cluster = threeNodeCluster('fc', 'fcvol');
    const file = writeClusterFile(dir.path, cluster);
    const opts = { storage: sim.address, dataDir: join(dir.path, 'host'), cluster: file };
    let agent = await startHostAgent(opts);
    procs.push(agent);
    const admin = connect(AdminServiceClient, agent.address);
    const vm1 = (await admin.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!;
    const guest = connect(GuestServiceClient, vm1.guestEndpoint);
    const serials: string[] = [];
    for (const mount of ['E:', 'F:', 'G:']) {
      const { operation } = await guest.createDisk({ requestId: `c-${mount}`, mountPath: mount, sizeBytes: 8n << 20n, sharing: 0 });
      const done = await pollUntil(() => guest.getOperation({ operationId: operation!.id }), (r) => r.operation!.state === OperationState.OPERATION_STATE_SUCCEEDED, 10_000, 'create');
      serials.push(done.operation!.result!.serial);
    }
    const bytes = Buffer.alloc(4096, 0x5a);
    await guest.writeDisk({ requestId: 'before', address: { controller: 0, location: 0 }, offsetBytes: 0n, data: bytes });

    // Hold the fencing on the array, fail node 1, and kill the agent while it waits.
    const faults = connect(FaultInjectionServiceClient, sim.address);
    await faults.injectFault({ method: 'PreemptReservation', count: 3, code: 0, message: '', delayMs: 1500, timing: FaultTiming.FAULT_TIMING_BEFORE });
    admin.failNode({ requestId: 'fail-1', node: 'fc-node1' }).catch(() => undefined);
    await sleep(400);
    await agent.kill();
    admin.close();
    guest.close();

    agent = await startHostAgent(opts);
    procs.push(agent);
    // The restarted agent itself finished the move (it was cut short mid-fencing).
    expect(agent.stderr()).to.match(/"message":"group moved"[^\n]*"group":"Virtual Machine web1"|"group":"Virtual Machine web1"[^\n]*"message":"group moved"/);
    const admin2 = connect(AdminServiceClient, agent.address);
    const nodes = (await admin2.listNodes({})).nodes;
    expect(nodes.find((n) => n.name === 'fc-node1')!.state).to.equal(NodeState.NODE_STATE_DOWN);
    const moved = (await admin2.listVms({ node: '' })).vms.find((v) => v.id === 'vm1')!;
    expect(moved.node, 'vm1 runs on a survivor').to.not.equal('fc-node1');
    const groups = (await admin2.listGroups({ kind: 0 })).groups;
    expect(groups.filter((g) => g.ownerNode === 'fc-node1').map((g) => g.name), 'only non-HA groups stay on the failed node').to.deep.equal([]);
    const storage = connect(StorageArrayServiceClient, sim.address);
    const newOwner = cluster.nodes.find((n) => n.name === moved.node)!;
    for (const serial of serials) {
      const pr = await storage.readReservation({ lun: serial });
      expect(pr.holderInitiator, `reservation of ${serial}`).to.equal(newOwner.initiator);
      const keys = await storage.readReservationKeys({ lun: serial });
      expect(keys.registrations.map((r) => r.initiator)).to.not.include(cluster.nodes[0]!.initiator);
    }
    const err = await storage
      .writeBlocks({ requestId: 'late', lun: serials[0]!, initiator: cluster.nodes[0]!.initiator, offsetBytes: 0n, data: Buffer.alloc(512, 1) })
      .then(() => undefined, (e: { code: number }) => e);
    expect(err?.code, 'the failed node is fenced').to.equal(9);
    const guest2 = connect(GuestServiceClient, moved.guestEndpoint);
    const back = await guest2.readDisk({ address: { controller: 0, location: 0 }, offsetBytes: 0n, lengthBytes: 4096 });
    expect(Buffer.from(back.data).equals(bytes)).to.equal(true);
    // The held calls of the killed agent land late: they change nothing that matters.
    await sleep(1500);
    expect((await admin2.checkInvariants({})).violations).to.deep.equal([]);
    for (const c of [admin2, guest2, storage, faults]) c.close();
  });
});
