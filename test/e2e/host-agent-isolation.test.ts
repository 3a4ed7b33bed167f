/**
 * One VM cannot reach another's disk through its own endpoint (storage-sim and host-agent
 * running as processes, each VM's client on its socket): vm1 has a disk with data on
 * it; vm2 (Linux) and vm3 (Windows, so vm1's drive paths are valid syntax for it) try every
 * way in that knowing vm1's serial, NAA id, SCSI address, mount path and operation id gives
 * them. Each attempt is NOT_FOUND (or touches only the caller's own namespace), says nothing
 * of vm1, and changes nothing: vm1's disk, data and the whole cluster are as before. The
 * endpoints themselves are a 0600 socket each in a directory only the host agent's user can
 * enter.
 */
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type PromiseClient } from '../../common/client.js';
import { DiskSharing, GuestServiceClient, OperationState, type Disk } from '../../proto/gen/passthru/host/v1/host.js';
import { deploy, type Deployment } from '../support/guest-cli.js';
import { expectStatus } from '../support/status.js';

const MiB = 1024 * 1024;

describe('VM isolation on the guest endpoints (storage-sim and host-agent as processes)', function () {
  this.timeout(120_000);
  let d: Deployment;
  const clients = new Map<string, PromiseClient<GuestServiceClient>>();
  /** The VM's own endpoint, as its guest reaches it. */
  const guest = (vm: string): PromiseClient<GuestServiceClient> => {
    let g = clients.get(vm);
    if (!g) clients.set(vm, (g = connect(GuestServiceClient, d.endpoint(vm))));
    return g;
  };
  const c = {
    get admin() {
      return d.admin;
    },
    get storage() {
      return d.storage;
    },
    guest,
    settle: (id: string) => d.settle(id),
    violations: () => d.violations(),
  };
  let victim: Disk;
  let opId: string;
  const secret = Buffer.alloc(4096, 0).fill('vm1-only ');

  /** Everything an attack could have changed, as the admin and vm1 see it. */
  const world = async (): Promise<unknown> => ({
    groups: (await c.admin.listGroups({ kind: 0 })).groups,
    disks: (await c.admin.listDisks({ vmId: '' })).disks,
    ops: (await c.admin.listOperations({ vmId: '', state: 0, pageSize: 1000, pageToken: '' })).operations.map((o) => [o.id, o.state]),
    luns: (await c.storage.listLuns({ pageSize: 1000, pageToken: '', pathPrefix: '' })).luns.map((l) => l.serial),
    data: Buffer.from((await c.guest('vm1').readDisk({ address: victim.address, offsetBytes: 0n, lengthBytes: 4096 })).data).toString('hex'),
  });

  before(async function () {
    this.timeout(180_000);
    d = await deploy();
    const op = (await c.guest('vm1').createDisk({ requestId: 'v-1', mountPath: 'E:', sizeBytes: BigInt(64 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })).operation!;
    expect((await c.settle(op.id)).state).to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
    opId = op.id;
    [victim] = (await c.guest('vm1').listDisks({})).disks;
    await c.guest('vm1').writeDisk({ requestId: 'v-2', address: victim!.address, offsetBytes: 0n, data: secret });
  });
  after(async () => {
    for (const g of clients.values()) g.close();
    await d.close();
  });

  it('each VM\'s endpoint is a 0600 socket in a 0700 directory', () => {
    const dir = join(d.hostDataDir, 'sock');
    expect(statSync(dir).mode & 0o777).to.equal(0o700);
    for (const vm of ['vm1', 'vm2', 'vm3', 'vm4']) expect(statSync(join(dir, `${vm}.sock`)).mode & 0o777, vm).to.equal(0o600);
  });

  for (const attacker of ['vm2', 'vm3']) {
    it(`${attacker} cannot see, watch, read, write, connect, report or remove vm1's disk by its operation id, serial, NAA id, SCSI address or mount: NOT_FOUND, nothing said of vm1, nothing changed`, async () => {
      const g = c.guest(attacker);
      const before = await world();
      const hidden = (text: string): void => {
        expect(text).to.not.include(victim.serial);
        expect(text).to.not.include('vm1');
      };
      // Seeing: its lists hold nothing of vm1's.
      hidden(JSON.stringify((await g.listDisks({})).disks));
      hidden(JSON.stringify((await g.rescanBus({})).devices));
      // The operation id.
      hidden((await expectStatus(g.getOperation({ operationId: opId }), Code.NOT_FOUND)).details);
      const watch = g.raw.watchOperation({ operationId: opId });
      const watched = await new Promise<{ code: number; details: string }>((resolve) => {
        watch.on('data', () => resolve({ code: -1, details: 'a message' }));
        watch.on('error', (e: { code: number; details: string }) => resolve(e));
      });
      expect(watched.code).to.equal(Code.NOT_FOUND);
      hidden(watched.details);
      // The SCSI address: nothing of its own there, so NOT_FOUND, for reads and writes.
      hidden((await expectStatus(g.readDisk({ address: victim.address, offsetBytes: 0n, lengthBytes: 4096 }), Code.NOT_FOUND)).details);
      hidden((await expectStatus(g.writeDisk({ requestId: 'x-1', address: victim.address, offsetBytes: 0n, data: Buffer.alloc(4096, 0xee) }), Code.NOT_FOUND)).details);
      // The serial and NAA id: refused exactly as a LUN that does not exist is (the answer
      // repeats what was asked, and nothing more).
      const mount = attacker === 'vm3' ? 'F:' : '/stolen';
      const asUnknown = async (lun: string, call: (lun: string, id: string) => Promise<unknown>): Promise<void> => {
        const real = (await expectStatus(call(lun, `x-${lun}`), Code.NOT_FOUND)).details;
        const made = (await expectStatus(call('PTSMNOTHERE1', `x-made-${lun}`), Code.NOT_FOUND)).details;
        expect(real.split(lun).join('<lun>')).to.equal(made.split('PTSMNOTHERE1').join('<lun>'));
        expect(real).to.not.include('vm1');
      };
      for (const lun of [victim.serial, victim.naaId]) {
        await asUnknown(lun, (l, id) => g.connectDisk({ requestId: id, mountPath: mount, lun: l }));
        await asUnknown(lun, (l, id) => g.reportMount({ requestId: id, mountPath: mount, serial: l, volumeId: 'v', volumeLabel: 'l' }));
      }
      if (attacker === 'vm3') {
        // vm1's mount path is valid on a Windows guest, and means vm3's own E:, where there is nothing.
        hidden((await expectStatus(g.reportUnmount({ requestId: 'x-u', mountPath: 'E:' }), Code.NOT_FOUND)).details);
        const removal = (await g.removeDisk({ requestId: 'x-rm', mountPath: 'E:', deleteLun: true })).operation!;
        expect(removal.state, 'nothing of vm3\'s at E: to remove').to.equal(OperationState.OPERATION_STATE_SUCCEEDED);
        hidden(JSON.stringify(removal));
      }
      const after = await world();
      const strip = (w: unknown): unknown => ({ ...(w as object), ops: ((w as { ops: [string, number][] }).ops).filter(([id]) => id === opId) });
      expect(strip(after)).to.deep.equal(strip(before));
      expect((after as { data: string }).data).to.equal(secret.toString('hex'));
      expect(await c.violations()).to.deep.equal([]);
    });
  }

  it('a VM with a disk of its own at the same SCSI address reads and writes its own disk there, never vm1\'s', async () => {
    const g = c.guest('vm2');
    const op = (await g.createDisk({ requestId: 'own-1', mountPath: '/own', sizeBytes: BigInt(16 * MiB), sharing: DiskSharing.DISK_SHARING_UNSPECIFIED })).operation!;
    await c.settle(op.id);
    const [own] = (await g.listDisks({})).disks;
    expect(own!.address).to.deep.equal(victim.address);
    const read = await g.readDisk({ address: victim.address, offsetBytes: 0n, lengthBytes: 4096 });
    expect(Buffer.from(read.data).equals(secret)).to.equal(false);
    await g.writeDisk({ requestId: 'own-2', address: victim.address, offsetBytes: 0n, data: Buffer.alloc(4096, 0x11) });
    const mine = await c.guest('vm1').readDisk({ address: victim.address, offsetBytes: 0n, lengthBytes: 4096 });
    expect(Buffer.from(mine.data).equals(secret), 'vm1\'s bytes unchanged').to.equal(true);
  });
});
