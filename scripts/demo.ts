/**
 * `npm run demo`: what passthru does today, told step by step, on the embedded default: a
 * real storage-sim and a real host-agent holding a 3-node cluster (examples/cluster.json).
 * A guest asks for a disk and the host provisions it through the crash-safe workflow, live;
 * an administrator offers an existing LUN in Available Storage and a VM on another node
 * connects it; node1 fails and vm1 moves with its disk and data while node1 is fenced off;
 * both disks are removed and nothing is left. Exits non-zero on any failure. (The guest's
 * own side, GPT and mount, comes with the guest-agent issue.)
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceError } from '@grpc/grpc-js';
import { connect, type PromiseClient } from '../common/client.js';
import { formatSize } from '../common/size.js';
import {
  AdminServiceClient,
  GuestServiceClient,
  OperationState,
  StepEventKind,
  StepState,
  type Operation,
  type WatchOperationResponse,
} from '../proto/gen/passthru/host/v1/host.js';
import { OsType, Provisioning, StorageArrayServiceClient } from '../proto/gen/passthru/storage/v1/storage.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

function start(bin: string, args: string[]): Promise<{ address: string; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [join(root, 'bin', bin), ...args, '--log-level', 'error'], { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let out = '';
    child.once('exit', (code) => reject(new Error(`${bin} exited with ${code} before serving`)));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving on (\S+)/.exec(out);
      if (!m) return;
      child.removeAllListeners('exit');
      resolve({
        address: m[1]!,
        stop: () =>
          new Promise<void>((done) => {
            if (child.exitCode !== null) return done();
            child.once('exit', () => done());
            child.kill('SIGTERM');
          }),
      });
    });
  });
}

const EVENT_WORDS: Record<number, string> = {
  [StepEventKind.STEP_EVENT_KIND_STARTED]: 'started',
  [StepEventKind.STEP_EVENT_KIND_FINISHED]: 'done',
  [StepEventKind.STEP_EVENT_KIND_SKIPPED]: 'skipped',
  [StepEventKind.STEP_EVENT_KIND_FAILED]: 'FAILED',
  [StepEventKind.STEP_EVENT_KIND_UNDO_STARTED]: 'undoing',
  [StepEventKind.STEP_EVENT_KIND_UNDONE]: 'undone',
};

const STEP_WORDS: Record<number, string> = {
  [StepState.STEP_STATE_DONE]: 'done',
  [StepState.STEP_STATE_SKIPPED]: 'skipped',
  [StepState.STEP_STATE_FAILED]: 'FAILED',
  [StepState.STEP_STATE_UNDONE]: 'undone',
};

/** Follows an operation's steps as they happen, printing the finished and skipped ones. */
function follow(guest: { raw: GuestServiceClient } | { raw: AdminServiceClient }, opId: string): Promise<Operation> {
  return new Promise((resolve, reject) => {
    const stream = (guest.raw as GuestServiceClient).watchOperation({ operationId: opId });
    let last: Operation | undefined;
    stream.on('data', (m: WatchOperationResponse) => {
      if (!last) {
        // The steps that ran before the watch began, as the operation's first message tells them.
        for (const s of m.operation!.steps) {
          const word = STEP_WORDS[s.state];
          if (word) say(`     ${s.name.padEnd(17)} ${word}${s.message ? ` (${s.message})` : ''}`);
        }
      }
      last = m.operation;
      for (const e of m.events) {
        if (e.kind !== StepEventKind.STEP_EVENT_KIND_STARTED) say(`     ${e.step.padEnd(17)} ${EVENT_WORDS[e.kind] ?? e.kind}${e.message ? ` (${e.message})` : ''}`);
      }
    });
    stream.on('error', reject);
    stream.on('end', () => {
      if (!last) return reject(new Error('the watch ended without the operation'));
      if (last.state !== OperationState.OPERATION_STATE_SUCCEEDED) return reject(new Error(`operation ${opId} ended ${OperationState[last.state]}: ${last.error?.message}`));
      resolve(last);
    });
  });
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'pt-demo-'));
  say('passthru demo: pass-through SAN disks for the VMs of a 3-node cluster\n');
  const array = await start('storage-sim.js', ['serve', '--listen', '127.0.0.1:0', '--data-dir', join(dataDir, 'array')]);
  const host = await start('host-agent.js', [
    'serve',
    '--listen',
    '127.0.0.1:0',
    '--storage',
    array.address,
    '--data-dir',
    join(dataDir, 'host'),
    '--cluster',
    join(root, 'examples', 'cluster.json'),
  ]);
  const storage = connect(StorageArrayServiceClient, array.address);
  const admin = connect(AdminServiceClient, host.address);
  const guests: PromiseClient<GuestServiceClient>[] = [];
  try {
    const cluster = await admin.getCluster({});
    const { vms } = await admin.listVms({ node: '' });
    say(`1. storage-sim serves on ${array.address}; host-agent on ${host.address} holds cluster "${cluster.name}":`);
    say(`   nodes ${cluster.nodes.map((n) => n.name).join(', ')} (each with its igroup on the array), Available Storage owned by ${cluster.availableStorageOwner},`);
    say(`   VMs ${vms.map((v) => `${v.id} (${v.name}, ${v.guestOs === 1 ? 'Windows' : 'Linux'}, ${v.ha ? 'HA' : 'not HA'}, on ${v.node})`).join(', ')}.`);

    const vm1 = vms.find((v) => v.id === 'vm1')!;
    const g1 = connect(GuestServiceClient, vm1.guestEndpoint);
    guests.push(g1);
    const self = await g1.getSelf({});
    say(`\n2. Inside ${self.vm!.name}, on its own endpoint ${vm1.guestEndpoint}, the guest asks for 1 GiB at E:`);
    const created = await g1.createDisk({ requestId: 'demo-create-e', mountPath: 'E:', sizeBytes: 1024n ** 3n, sharing: 0 });
    say(`   The host answers at once with operation ${created.operation!.id}; its steps, live:`);
    const op1 = await follow(g1, created.operation!.id);
    const r1 = op1.result!;
    say(`   Attached at SCSI ${r1.address!.controller}:${r1.address!.location}: LUN ${r1.lunPath}, serial ${r1.serial}, NAA ${r1.naaId}, LUN id ${r1.lunId}.`);

    const { lun } = await storage.getLun({ lun: r1.serial });
    const maps = (await storage.listLunMaps({ lun: r1.serial, igroup: '', pageSize: 0, pageToken: '' })).maps;
    const pr = await storage.readReservation({ lun: r1.serial });
    say(`3. On the array: comment "${lun!.comment}";`);
    say(`   mapped to ${maps.map((m) => `${m.igroup}@${m.lunId}`).join(', ')} (one LUN id on every node, so vm1 can move); reserved by ${pr.holderInitiator}.`);
    const groups = (await admin.listGroups({ kind: 0 })).groups;
    const g = groups.find((x) => x.vmId === 'vm1')!;
    say(`   In the cluster: resource "${g.resources[0]!.name}" online in group "${g.name}"; temporary groups left: ${groups.filter((x) => x.kind === 4).length}.`);

    const again = await g1.createDisk({ requestId: 'demo-create-e', mountPath: 'E:', sizeBytes: 1024n ** 3n, sharing: 0 });
    say(`4. The guest's retry with the same request id gets the same operation back (${again.operation!.id === op1.id ? 'same' : 'DIFFERENT'}), nothing done twice.`);
    try {
      await g1.createDisk({ requestId: 'demo-bad', mountPath: 'E:\\..\\windows', sizeBytes: 1024n ** 3n, sharing: 0 });
      throw new Error('an invalid mount path was accepted');
    } catch (err) {
      if ((err as ServiceError).code !== 3) throw err;
      say(`   A bad mount path is refused before anything starts: ${(err as ServiceError).details}`);
    }

    const { lun: spare } = await storage.createLun({
      requestId: 'demo-spare',
      path: '/vol/shared/reports',
      sizeBytes: 512n * 1024n ** 2n,
      osType: OsType.OS_TYPE_LINUX,
      provisioning: Provisioning.PROVISIONING_THIN,
      comment: 'made by a storage admin',
      pool: '',
    });
    say(`\n5. An admin offers an existing LUN, ${spare!.path} (${formatSize(Number(spare!.sizeBytes))}), to the cluster (AddAvailableDisk):`);
    const added = await admin.addAvailableDisk({ requestId: 'demo-add', lun: spare!.path });
    await follow(admin, added.operation!.id);
    const as = (await admin.listGroups({ kind: 2 })).groups[0]!;
    say(`   It is "${as.resources[0]!.name}" in ${as.name}, mapped to every node.`);
    const vm2 = vms.find((v) => v.id === 'vm2')!;
    const g2 = connect(GuestServiceClient, vm2.guestEndpoint);
    guests.push(g2);
    say(`6. ${vm2.name} on ${vm2.node} (which does not own Available Storage) connects it at /srv/reports:`);
    const connected = await g2.connectDisk({ requestId: 'demo-connect', mountPath: '/srv/reports', lun: spare!.serial });
    const op2 = await follow(g2, connected.operation!.id);
    say(`   Attached at SCSI ${op2.result!.address!.controller}:${op2.result!.address!.location}; the resource moved and was renamed, never two for one LUN.`);

    const checked = await admin.checkInvariants({});
    say(`\n7. CheckInvariants across hypervisor, cluster and array: ${checked.violations.length} violations.`);
    if (checked.violations.length > 0) throw new Error(JSON.stringify(checked.violations));

    // Failover: vm1's data survives the loss of node1, and node1 is fenced off the disk.
    const text = Buffer.alloc(4096);
    text.write('written by web1 through its pass-through disk, before node1 failed\n');
    await g1.writeDisk({ requestId: 'demo-write', address: r1.address, offsetBytes: 1024n * 1024n, data: text });
    say(`\n8. web1 writes a block to E: through its own endpoint (carried to the array as node1). Then node1 fails:`);
    const failed = await admin.failNode({ requestId: 'demo-fail-node1', node: 'node1' });
    for (const m of failed.moves) say(`   ${m.group}: ${m.fromNode} -> ${m.toNode}${m.serials.length ? ` (reservations of ${m.serials.join(', ')} preempted)` : ''}`);
    const moved = (await g1.getSelf({})).vm!;
    const back = await g1.readDisk({ address: r1.address, offsetBytes: 1024n * 1024n, lengthBytes: 4096 });
    if (!Buffer.from(back.data).equals(text)) throw new Error('the block read after failover differs from the one written before');
    say(`   ${moved.name} runs on ${moved.node} now, E: at the same SCSI address; the block reads back the same.`);
    try {
      await storage.writeBlocks({ requestId: 'demo-stale', lun: r1.serial, initiator: cluster.nodes.find((n) => n.name === 'node1')!.initiator, offsetBytes: 0n, data: Buffer.alloc(512, 1) });
      throw new Error('the failed node could still write');
    } catch (err) {
      if ((err as ServiceError).code !== 9) throw err;
      say(`   A late write from node1 is refused by the array: ${(err as ServiceError).details}`);
    }
    await admin.recoverNode({ requestId: 'demo-recover-node1', node: 'node1' });
    const home = await admin.moveGroup({ requestId: 'demo-move-back', group: moved.group, node: 'node1' });
    say(`   node1 recovers; ${home.move!.group} moves back to node1 by hand (planned failover, same fencing).`);

    say('\n9. Removal runs the same road backwards. vm1 removes E: and deletes its LUN:');
    const rm1 = await g1.removeDisk({ requestId: 'demo-remove-e', mountPath: 'E:', deleteLun: true });
    await follow(g1, rm1.operation!.id);
    say('   vm2 removes /srv/reports and keeps the LUN on the array:');
    const rm2 = await g2.removeDisk({ requestId: 'demo-remove-reports', mountPath: '/srv/reports', deleteLun: false });
    await follow(g2, rm2.operation!.id);

    const end = await storage.getArray({});
    const after = await admin.checkInvariants({});
    const disks = (await g1.listDisks({})).disks.length + (await g2.listDisks({})).disks.length;
    say(`\n10. Left: ${disks} disks attached, ${end.mapCount} LUN maps on the array, ${end.lunCount} LUN (the kept one), ${after.violations.length} violations.`);
    if (after.violations.length > 0 || end.mapCount !== 0 || end.lunCount !== 1 || disks !== 0) throw new Error('something was left behind');
    say('\nDemo finished: every step did what it said.');
  } finally {
    for (const g of guests) g.close();
    admin.close();
    storage.close();
    await host.stop();
    await array.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
