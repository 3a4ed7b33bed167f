/**
 * The audit trail as an operator reads it: one JSON line per mutating call, saying who
 * (the VM an endpoint belongs to, or the caller on TCP), what, which disk or object, the
 * result and the operation id; and nothing in any log line that should not be there, block
 * data or reservation keys, whatever the level.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { DiskSharing, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { reservationKey } from '../../host-agent/array.js';
import { startCluster, type TestCluster } from '../support/host-cluster.js';
import { capturingLogger } from '../support/log-capture.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;

describe('audit lines and what logs leave out', function () {
  this.timeout(60_000);
  const capture = capturingLogger('debug');
  let c: TestCluster;

  before(async () => {
    c = await startCluster({ logger: capture.logger });
  });
  after(async () => {
    await c.close();
  });

  const audits = (method: string): Record<string, unknown>[] => capture.lines().filter((l) => l.audit === true && l.method === method);

  it('a guest\'s CreateDisk and RemoveDisk each write one audit line: the VM, the method, the mount, the result and the operation id', async () => {
    const g = c.guest('vm1');
    const created = (await g.createDisk({ requestId: 'a-1', mountPath: 'e:', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })).operation!;
    expect((await c.settle(created.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    const removed = (await g.removeDisk({ requestId: 'a-2', mountPath: 'E:', deleteLun: true })).operation!;
    await c.settle(removed.id);
    const [create] = audits('CreateDisk');
    expect(create).to.include({ who: 'vm:vm1', code: 'OK', mount: 'e:', opId: created.id, audit: true, vmId: 'vm1' });
    const [remove] = audits('RemoveDisk');
    expect(remove).to.include({ who: 'vm:vm1', code: 'OK', mount: 'E:', opId: removed.id });
    expect(capture.lines().filter((l) => l.method === 'ListDisks' && l.audit === true), 'reads are not audited').to.deep.equal([]);
  });

  it('a refused mutation is audited too, with its status and the reason, and the caller is the endpoint\'s VM whatever the request says', async () => {
    await expectStatus(c.guest('vm2').createDisk({ requestId: 'a-3', mountPath: 'relative/path', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED }), Code.INVALID_ARGUMENT);
    const line = audits('CreateDisk').find((l) => l.who === 'vm:vm2');
    expect(line).to.include({ code: 'INVALID_ARGUMENT', mount: 'relative/path' });
    expect(line!.error).to.be.a('string').and.match(/absolute/i);
    expect(line!.opId).to.equal(undefined);
  });

  it('admin changes are audited with their target: FailNode and RecoverNode name the node', async () => {
    await c.admin.failNode({ requestId: 'a-4', node: 'node3' });
    await c.admin.recoverNode({ requestId: 'a-5', node: 'node3' });
    const [fail] = audits('FailNode');
    expect(fail).to.include({ code: 'OK', node: 'node3' });
    expect(fail!.who).to.be.a('string').and.match(/127\.0\.0\.1|ipv4/);
    expect(audits('RecoverNode')[0]).to.include({ code: 'OK', node: 'node3' });
  });

  it('no log line, at any level, holds block data or a reservation key', async () => {
    const g = c.guest('vm1');
    const created = (await g.createDisk({ requestId: 'a-6', mountPath: 'F:', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })).operation!;
    await c.settle(created.id);
    const [disk] = (await g.listDisks({})).disks.filter((d) => d.mountPath === 'F:');
    const marker = 'SECRET-PAYLOAD-7f3a';
    const data = Buffer.alloc(4096, 0);
    data.write(marker.repeat(10));
    await g.writeDisk({ requestId: 'a-7', address: disk!.address, offsetBytes: 0n, data });
    const read = await g.readDisk({ address: disk!.address, offsetBytes: 0n, lengthBytes: 4096 });
    expect(Buffer.from(read.data).includes(marker)).to.equal(true);
    const raw = capture.raw();
    expect(raw).to.not.include(marker);
    expect(raw).to.not.include(Buffer.from(marker).toString('base64').slice(0, 16));
    for (const node of ['node1', 'node2', 'node3']) expect(raw, `the key of ${node}`).to.not.include(reservationKey(node));
  });
});
