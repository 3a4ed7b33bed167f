/**
 * `npm run demo`: passthru end to end, told step by step. It starts a real storage-sim and a
 * real host-agent holding a 3-node cluster (examples/cluster.json) on a temp data dir, then,
 * as the guest of the HA VM web1, runs the real guest-agent CLI: a 1 GiB disk at C:\mt1, a
 * line of text written into it, the guest's list; the cluster's groups as the administrator
 * sees them; node1 fails and web1 runs on another node with its disk, where the text reads
 * back the same (and node1 is fenced off the LUN); the disk is removed with its LUN, and
 * nothing is left on the array. Exits 0 when every step did what it said, non-zero otherwise.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceError } from '@grpc/grpc-js';
import { connect } from '../common/client.js';
import { AdminServiceClient, GroupKind, ResourceState } from '../proto/gen/passthru/host/v1/host.js';
import { StorageArrayServiceClient } from '../proto/gen/passthru/storage/v1/storage.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

/** What a program printed, indented, as the person running it would see it. */
function quote(text: string): void {
  for (const line of text.trimEnd().split('\n')) say(`     | ${line}`);
}

function start(bin: string, args: string[]): Promise<{ address: string; printed: string; stop(): Promise<void> }> {
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
        printed: out,
        stop: () =>
          new Promise<void>((done) => {
            if (child.exitCode !== null || child.signalCode !== null) return done();
            child.once('exit', () => done());
            child.kill('SIGTERM');
          }),
      });
    });
  });
}

/**
 * Runs the guest-agent CLI as the guest of a VM and returns what it printed. On a terminal
 * it shares the demo's stderr, so its live progress shows; any failure ends the demo with
 * the CLI's own words.
 */
function guestAgent(env: { endpoint: string; stateDir: string }, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(root, 'bin', 'guest-agent.js'), ...args], {
      env: { ...process.env, PASSTHRU_GUEST_ENDPOINT: env.endpoint, PASSTHRU_GUEST_STATE_DIR: env.stateDir },
      stdio: ['ignore', 'pipe', process.stderr.isTTY ? 'inherit' : 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (code === 0) resolve(out);
      else reject(new Error(`guest-agent ${args.join(' ')} failed (${code ?? signal})${err ? `: ${err.trim()}` : ''}`));
    });
  });
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'pt-demo-'));
  say('passthru demo: a SAN disk for a virtual machine, from the guest asking to the data surviving a node failure\n');
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
    '--metrics-listen',
    '127.0.0.1:0',
  ]);
  const metricsUrl = /metrics on (http:\S+)/.exec(host.printed)?.[1];
  const storage = connect(StorageArrayServiceClient, array.address);
  const admin = connect(AdminServiceClient, host.address);
  try {
    const cluster = await admin.getCluster({});
    const { vms } = await admin.listVms({ node: '' });
    const vm = vms.find((v) => v.id === 'vm1')!;
    say(`1. A simulated storage array (storage-sim) serves on ${array.address}.`);
    say(`   The host agent serves cluster "${cluster.name}" on ${host.address}: nodes ${cluster.nodes.map((n) => n.name).join(', ')}, ${vms.length} VMs.`);
    say(`   The VM ${vm.name} runs Windows on ${vm.node} and is highly available: if its node fails, it restarts on another.`);
    say(`   Inside ${vm.name}, the guest agent talks to the host only through the VM's own endpoint, ${vm.guestEndpoint}.`);

    const guest = { endpoint: vm.guestEndpoint, stateDir: join(dataDir, 'guest-web1') };
    say(`\n2. Inside ${vm.name}: guest-agent disk create --size 1GiB --mount 'C:\\mt1'`);
    say('   The host creates a LUN on the array, maps it to every node, attaches it to a free slot of the');
    say("   VM's SCSI controller through its crash-safe workflow; the guest finds it by serial number,");
    say('   writes a partition table and a volume on it, and mounts it at the folder C:\\mt1:');
    quote(await guestAgent(guest, ['disk', 'create', '--size', '1GiB', '--mount', 'C:\\mt1']));

    const line = `Hello from ${vm.name}, written at ${new Date().toISOString()} before anything failed.\n`;
    const file = join(dataDir, 'hello.txt');
    writeFileSync(file, line);
    say(`\n3. The guest writes a line of text into the volume: guest-agent disk write --mount 'C:\\mt1' --at 0 --from hello.txt`);
    quote(await guestAgent(guest, ['disk', 'write', '--mount', 'C:\\mt1', '--at', '0', '--from', file]));
    say('   and lists its disks (the mount table it keeps, checked against what the host says):');
    quote(await guestAgent(guest, ['disk', 'list']));

    const groups = (await admin.listGroups({ kind: GroupKind.GROUP_KIND_UNSPECIFIED })).groups;
    say('\n4. The cluster as its administrator sees it (AdminService ListGroups):');
    for (const g of groups) say(`     ${g.name.padEnd(28)} owner ${g.ownerNode}${g.resources.map((r) => `; ${r.name} (${ResourceState[r.state]!.replace('RESOURCE_STATE_', '').toLowerCase()})`).join('')}`);
    const vmGroup = groups.find((g) => g.vmId === vm.id)!;
    const temporary = groups.filter((g) => g.kind === GroupKind.GROUP_KIND_TEMPORARY);
    if (vmGroup.resources.length !== 1 || temporary.length > 0) throw new Error('the disk resource is not alone in the VM group, or a temporary group is left');
    say(`   The disk resource sits in the VM's own group "${vmGroup.name}", and no temporary group is left.`);

    const [disk] = (await admin.listDisks({ vmId: vm.id })).disks;
    say(`\n5. Now ${vm.node} fails (AdminService FailNode):`);
    const failed = await admin.failNode({ requestId: 'demo-fail-node1', node: vm.node });
    for (const m of failed.moves) say(`     ${m.group} moves from ${m.fromNode} to ${m.toNode}${m.serials.length ? `, taking over the reservation of LUN ${m.serials.join(', ')}` : ''}`);
    const moved = (await admin.listVms({ node: '' })).vms.find((v) => v.id === vm.id)!;
    const [after] = (await admin.listDisks({ vmId: vm.id })).disks;
    if (moved.node === vm.node || !after || after.serial !== disk!.serial || after.resourceState !== ResourceState.RESOURCE_STATE_ONLINE) {
      throw new Error(`after the failover ${vm.name} is on ${moved.node} and its disk ${JSON.stringify(after)}`);
    }
    say(`   ${vm.name} restarted on ${moved.node}, its disk still attached at SCSI ${after.address!.controller}:${after.address!.location} and online there.`);
    try {
      const node = cluster.nodes.find((n) => n.name === vm.node)!;
      await storage.writeBlocks({ requestId: 'demo-stale', lun: disk!.serial, initiator: node.initiator, offsetBytes: 0n, data: Buffer.alloc(512, 1) });
      throw new Error(`the failed node ${vm.node} could still write to the LUN`);
    } catch (err) {
      if ((err as ServiceError).code !== 9) throw err;
      say(`   A late write from the failed ${vm.node} is refused by the array (it was fenced off): ${(err as ServiceError).details}`);
    }

    say(`\n6. On ${moved.node}, the guest reads its text back: guest-agent disk read --mount 'C:\\mt1' --at 0 --length ${Buffer.byteLength(line)}`);
    const back = await guestAgent(guest, ['disk', 'read', '--mount', 'C:\\mt1', '--at', '0', '--length', String(Buffer.byteLength(line))]);
    quote(back);
    if (back !== line) throw new Error('the text read after the failover differs from the text written before it');
    say('   The same line: the data survived the failover.');

    say(`\n7. The guest removes the disk and deletes its LUN: guest-agent disk remove --mount 'C:\\mt1' --delete-lun`);
    say('   It unmounts the volume first, then the host detaches the disk, unmaps the LUN from every node and deletes it:');
    quote(await guestAgent(guest, ['disk', 'remove', '--mount', 'C:\\mt1', '--delete-lun']));

    const end = await storage.getArray({});
    const { violations } = await admin.checkInvariants({});
    say(`\n8. Left on the array: ${end.lunCount} LUNs and ${end.mapCount} LUN maps. Cross-checks of hypervisor, cluster and array: ${violations.length} problems.`);
    if (end.lunCount !== 0 || end.mapCount !== 0 || violations.length !== 0) throw new Error(`something was left behind: ${JSON.stringify(violations)}`);

    if (!metricsUrl) throw new Error('the host agent did not say where its metrics are');
    say(`\n9. What the host agent counted, as Prometheus scrapes it (GET ${metricsUrl}):`);
    const scraped = await (await fetch(metricsUrl)).text();
    const counted = scraped.split('\n').filter((l) => /^passthru_operations_total\{|^passthru_rpc_requests_total\{[^}]*method="(CreateDisk|RemoveDisk|FailNode)"/.test(l));
    if (!counted.some((l) => /kind="create_disk",result="succeeded"/.test(l))) throw new Error(`the metrics do not show the create: ${counted.join(' / ')}`);
    quote(counted.map((l) => l.replace(/,?program="host-agent"/, '')).join('\n'));
    say('\nDemo finished: every step did what it said.');
  } finally {
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
