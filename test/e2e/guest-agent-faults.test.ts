/**
 * The guest agent when things go wrong, end to end (the compiled CLI as a process, real
 * storage-sim and host-agent processes): the host refusing (no free SCSI location), the
 * array down (before and during an operation), the guest SIGKILLed at each point of a
 * create and of a removal (the next run finishes the recorded request, asking the host
 * nothing twice), the host agent killed mid-operation (the guest reconnects and resumes its
 * watch), and a failover of the VM's node between a write and a read. After every test the
 * cluster's invariants hold.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as Code } from '@grpc/grpc-js';
import { expect } from 'chai';
import { OperationKind, OperationState } from '../../proto/gen/passthru/host/v1/host.js';
import { deploymentForFile, describeRun, type Deployment, type Guest } from '../support/guest-cli.js';
import { exitWithin } from '../support/host-process.js';


function table(g: Guest): { mounts: any[]; pending: any[] } {
  return JSON.parse(readFileSync(join(g.stateDir, 'mounts.json'), 'utf8'));
}

describe('guest-agent under faults (e2e)', function () {
  this.timeout(120_000);
  // Quick array retries, so an array that is down is reported in about a second.
  const deployment = deploymentForFile({ hostExtra: ['--array-attempts', '2', '--array-timeout-ms', '1000'] });
  let d: Deployment;
  before(() => {
    d = deployment();
  });

  /** The VM's create operations for one mount. */
  async function creates(vmId: string, mount: string): Promise<number> {
    return (await d.operations(vmId)).filter((o) => o.kind === OperationKind.OPERATION_KIND_CREATE_DISK && o.mountPath === mount).length;
  }

  describe('the host refuses', () => {
    it('no free SCSI location on a VM with 1 x 2 locations: RESOURCE_EXHAUSTED (exit 6), the host message as it is, nothing left recorded', async () => {
      const vm4 = d.guest('vm4');
      await vm4.ok(['disk', 'create', '--size', '8MiB', '--mount', '/a']);
      await vm4.ok(['disk', 'create', '--size', '8MiB', '--mount', '/b']);
      const err = await vm4.fails(['disk', 'create', '--size', '8MiB', '--mount', '/c'], 6);
      expect(err).to.equal('guest-agent: RESOURCE_EXHAUSTED: VM vm4 has no free SCSI location: all 2 (1 controllers x 2) are in use or being filled; remove a disk first\n');
      expect(table(vm4).pending).to.deep.equal([]);
      expect(table(vm4).mounts.map((m) => m.path)).to.deep.equal(['/a', '/b']);
      await vm4.ok(['disk', 'remove', '--mount', '/a', '--delete-lun']);
      await vm4.ok(['disk', 'create', '--size', '8MiB', '--mount', '/c']);
      await vm4.ok(['disk', 'remove', '--mount', '/b', '--delete-lun']);
      await vm4.ok(['disk', 'remove', '--mount', '/c', '--delete-lun']);
    });

    it('the array down before the operation starts: UNAVAILABLE (exit 8), nothing started, nothing recorded; it works once the array is back', async () => {
      const vm2 = d.guest('vm2');
      await d.faults.setUnavailable({ durationMs: 60_000 });
      try {
        const err = await vm2.fails(['disk', 'create', '--size', '64MiB', '--mount', '/srv/down'], 8);
        expect(err).to.match(/^guest-agent: UNAVAILABLE: .*cannot be reached/);
        expect(await creates('vm2', '/srv/down')).to.equal(0);
        expect(table(vm2).pending).to.deep.equal([]);
      } finally {
        await d.faults.setUnavailable({ durationMs: 0 });
      }
      await vm2.ok(['disk', 'create', '--size', '64MiB', '--mount', '/srv/down']);
      await vm2.ok(['disk', 'remove', '--mount', '/srv/down', '--delete-lun']);
    });

    it('the array failing during the operation: the operation rolls back and ends FAILED, the guest exits with its status and drops the request', async () => {
      const vm2 = d.guest('vm2');
      await d.faults.injectFault({ method: 'CreateLun', count: 2, code: Code.UNAVAILABLE, message: 'controller A is rebooting', delayMs: 0, timing: 0 });
      const err = await vm2.fails(['disk', 'create', '--size', '64MiB', '--mount', '/srv/flaky'], 8);
      expect(err).to.match(/^guest-agent: UNAVAILABLE: .*controller A is rebooting/);
      const [op] = (await d.operations('vm2')).filter((o) => o.mountPath === '/srv/flaky');
      expect(op!.state).to.equal(OperationState.OPERATION_STATE_FAILED);
      expect(table(vm2).pending).to.deep.equal([]);
      expect(table(vm2).mounts).to.deep.equal([]);
      expect((await d.storage.getArray({})).lunCount).to.equal(0);
    });
  });

  describe('the guest killed mid-way (SIGKILL at a named point), the next run finishing what it recorded', () => {
    const points: { at: string; phase: string | null; what: string }[] = [
      { at: 'requested', phase: 'requested', what: 'after recording the request, before sending it' },
      { at: 'sent', phase: 'running', what: 'after the host answered with its operation' },
      { at: 'attached', phase: 'attached', what: 'between attach and mount' },
      { at: 'initialized', phase: 'attached', what: 'after writing the volume, before checking it' },
      { at: 'table-write:5', phase: 'attached', what: 'in the middle of writing the mount into the table' },
      { at: 'mounted', phase: 'mounted', what: 'after mounting, before telling the host' },
    ];
    let n = 0;
    for (const p of points) {
      it(`${p.what} (${p.at})`, async () => {
        const vm2 = d.guest('vm2');
        const mount = `/srv/crash${++n}`;
        const args = ['disk', 'create', '--size', '64MiB', '--mount', mount];
        const killed = await vm2.run(args, { env: { PASSTHRU_GUEST_CRASH_AT: p.at } });
        expect(killed.signal, describeRun(args, killed)).to.equal('SIGKILL');
        const t = table(vm2);
        expect(t.pending.map((x) => [x.mountPath, x.phase])).to.deep.equal([[mount, p.phase]]);
        const listed = (await vm2.okJson(['disk', 'list'])).disks.find((x: any) => x.mountPath === mount);
        expect(listed.problems.join(' ')).to.include(`guest-agent disk create --mount ${mount} --size 64MiB`);

        const r = await vm2.okJson(args);
        expect(r).to.include({ resumed: true, alreadyMounted: false, requestId: t.pending[0].requestId });
        expect(await creates('vm2', mount), 'the host was asked once').to.equal(1);
        expect(table(vm2).pending).to.deep.equal([]);
        expect(table(vm2).mounts.map((m) => m.path)).to.deep.equal([mount]);
        const [disk] = await d.disks('vm2');
        expect(disk).to.include({ mountPath: mount, mounted: true, volumeId: r.mount.volumeId });
        const shown = await vm2.okJson(['disk', 'show', '--mount', mount]);
        expect(shown.volume.volumeId).to.equal(r.mount.volumeId);
        await vm2.ok(['disk', 'remove', '--mount', mount, '--delete-lun']);
      });
    }

    it('a run with other parameters while a request is recorded is FAILED_PRECONDITION, naming the command that finishes it', async () => {
      const vm1 = d.guest('vm1');
      const killed = await vm1.run(['disk', 'create', '--size', '64MiB', '--mount', 'C:\\mt1'], { env: { PASSTHRU_GUEST_CRASH_AT: 'attached' } });
      expect(killed.signal).to.equal('SIGKILL');
      const err = await vm1.fails(['disk', 'create', '--size', '128MiB', '--mount', 'c:\\mt1'], 5);
      expect(err).to.include("an earlier `disk create` of C:\\mt1 has not finished").and.include("run `guest-agent disk create --mount 'C:\\mt1' --size 64MiB` to finish it");
      const other = await vm1.fails(['disk', 'connect', '--lun', 'PTSMnothing12', '--mount', 'C:\\mt1'], 5);
      expect(other).to.include('has not finished');
      // A removal takes the place of the unfinished create: the disk goes, nothing is left.
      const r = await vm1.okJson(['disk', 'remove', '--mount', 'C:\\mt1', '--delete-lun']);
      expect(r.superseded).to.include('the unfinished `disk create` of C:\\mt1');
      expect(r.lunDeleted).to.equal(true);
      expect(table(vm1).pending).to.deep.equal([]);
      expect(await d.disks('vm1')).to.deep.equal([]);
    });

    for (const at of ['unmounted', 'sent']) {
      it(`a removal killed ${at === 'sent' ? 'after the host answered' : 'after unmounting, before asking the host'} (${at}) is finished by the next run`, async () => {
        const vm2 = d.guest('vm2');
        const mount = `/srv/going-${at}`;
        await vm2.ok(['disk', 'create', '--size', '64MiB', '--mount', mount]);
        const args = ['disk', 'remove', '--mount', mount, '--delete-lun'];
        const killed = await vm2.run(args, { env: { PASSTHRU_GUEST_CRASH_AT: at } });
        expect(killed.signal).to.equal('SIGKILL');
        expect(table(vm2).mounts, 'unmounted first').to.deep.equal([]);
        expect(table(vm2).pending.map((x) => x.kind)).to.deep.equal(['remove']);
        const r = await vm2.okJson(args);
        expect(r).to.include({ resumed: true, lunDeleted: true });
        const removes = (await d.operations('vm2')).filter((o) => o.kind === OperationKind.OPERATION_KIND_REMOVE_DISK && o.mountPath === mount);
        expect(removes, 'the host was asked once').to.have.length(1);
        expect(table(vm2).pending).to.deep.equal([]);
        expect(await d.disks('vm2')).to.deep.equal([]);
      });
    }
  });

  describe('the host agent killed mid-operation', () => {
    it('the guest reconnects, resumes its watch and finishes once the host agent is back (rolled forward past the commit point)', async () => {
      await d.restartHost(['--array-attempts', '2', '--array-timeout-ms', '1000', '--crash-at', 'create_disk:resource.online@after']);
      const vm1 = d.guest('vm1');
      const args = ['disk', 'create', '--size', '64MiB', '--mount', 'E:', '--reconnect-timeout', '60000'];
      const running = vm1.run(args);
      const exit = await exitWithin(d.host.child, 30_000, 'the host agent crashing at resource.online');
      expect(exit.signal).to.equal('SIGKILL');
      // Down for a moment, as a restart takes.
      await new Promise((r) => setTimeout(r, 500));
      await d.restartHost(['--array-attempts', '2', '--array-timeout-ms', '1000']);
      const r = await running;
      expect(r.code, describeRun(args, r)).to.equal(0);
      expect(r.stdout).to.match(/^E: mounted: LUN \w+ \(64 MiB\)/);
      expect(await creates('vm1', 'E:')).to.equal(1);
      const [disk] = await d.disks('vm1');
      expect(disk).to.include({ mountPath: 'E:', mounted: true });
      await vm1.ok(['disk', 'remove', '--mount', 'E:', '--delete-lun']);
    });
  });

  describe('failover', () => {
    it("the VM's node fails between a write and a read: the VM runs on another node and the data reads back the same", async () => {
      const vm1 = d.guest('vm1');
      await vm1.ok(['disk', 'create', '--size', '64MiB', '--mount', 'C:\\mt2']);
      const before = await vm1.okJson(['disk', 'list']);
      expect(before.vm.node).to.equal('node1');
      const text = Buffer.from(`written on node1 at ${new Date().toISOString()}\n`);
      writeFileSync(join(d.dir, 'failover.txt'), text);
      await vm1.ok(['disk', 'write', '--mount', 'C:\\mt2', '--at', '100', '--from', join(d.dir, 'failover.txt')]);

      // The read races the failover: block I/O during the move is retried until the VM runs again.
      const [failed, read] = await Promise.all([
        d.admin.failNode({ requestId: 'guest-failover', node: 'node1' }),
        vm1.run(['disk', 'read', '--mount', 'C:\\mt2', '--at', '100', '--length', String(text.length)]),
      ]);
      expect(read.code, describeRun(['disk', 'read'], read)).to.equal(0);
      expect(read.stdout).to.equal(text.toString());
      const moved = failed.moves.find((m) => m.vmId === 'vm1')!;
      expect(moved.toNode).to.not.equal('node1');
      const after = await vm1.okJson(['disk', 'list']);
      expect(after.vm.node).to.equal(moved.toNode);
      expect(after.disks.map((x: any) => [x.mountPath, x.state, x.address])).to.deep.equal(before.disks.map((x: any) => [x.mountPath, 'mounted', x.address]));
      const again = await vm1.run(['disk', 'read', '--mount', 'C:\\mt2', '--at', '100', '--length', String(text.length)]);
      expect(again.stdout).to.equal(text.toString());

      await vm1.ok(['disk', 'remove', '--mount', 'C:\\mt2', '--delete-lun']);
      await d.admin.recoverNode({ requestId: 'guest-recover', node: 'node1' });
    });
  });
});
