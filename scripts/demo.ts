/**
 * `npm run demo`: what passthru does today, told step by step. Starts a real storage-sim in a
 * temporary data dir and plays a two-node cluster's use of a shared SAN disk: create a LUN,
 * map it to both hosts, write from one node, read from the other, fence the first node with
 * a persistent reservation, then clean up and show that nothing is left. Exits non-zero on
 * any failure. (When host-agent and guest-agent land, the demo grows into the whole road.)
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ServiceError } from '@grpc/grpc-js';
import { connect } from '../common/client.js';
import {
  IgroupProtocol,
  OsType,
  Provisioning,
  ReservationType,
  StorageArrayServiceClient,
} from '../proto/gen/passthru/storage/v1/storage.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
const NODES = [
  { igroup: 'node1', iqn: 'iqn.1991-05.com.microsoft:node1.cluster.local' },
  { igroup: 'node2', iqn: 'iqn.1991-05.com.microsoft:node2.cluster.local' },
];

function say(text: string): void {
  process.stdout.write(`${text}\n`);
}

function startArray(dataDir: string): Promise<{ address: string; stop(): Promise<void> }> {
  const child = spawn(process.execPath, [join(root, 'bin', 'storage-sim.js'), 'serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--log-level', 'error'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let out = '';
    child.once('exit', (code) => reject(new Error(`storage-sim exited with ${code} before serving`)));
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /serving on (\S+)/.exec(out);
      if (!m) return;
      child.removeAllListeners('exit');
      resolve({
        address: m[1]!,
        stop: () =>
          new Promise<void>((done) => {
            child.once('exit', () => done());
            child.kill('SIGTERM');
          }),
      });
    });
  });
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'passthru-demo-'));
  say('passthru demo: a simulated SAN array serving a two-node cluster\n');
  const array = await startArray(dataDir);
  const storage = connect(StorageArrayServiceClient, array.address);
  try {
    const info = await storage.getArray({});
    say(`1. Started storage-sim "${info.name}" on ${array.address} (data in ${dataDir}).`);
    say(`   Pool ${info.pools[0]!.name}: ${Number(info.pools[0]!.capacityBytes) / 1024 ** 4} TiB.`);

    for (const n of NODES) {
      await storage.createIgroup({
        requestId: `demo-igroup-${n.igroup}`,
        name: n.igroup,
        protocol: IgroupProtocol.IGROUP_PROTOCOL_ISCSI,
        osType: OsType.OS_TYPE_WINDOWS,
        initiators: [n.iqn],
      });
    }
    say(`2. Each host has an igroup holding its iSCSI initiator: ${NODES.map((n) => `${n.igroup} (${n.iqn})`).join(', ')}.`);

    const { lun } = await storage.createLun({
      requestId: 'demo-lun',
      path: '/vol/demo/vm1_disk1',
      sizeBytes: 1024n ** 3n,
      osType: OsType.OS_TYPE_WINDOWS,
      provisioning: Provisioning.PROVISIONING_THIN,
      comment: 'demo: VM vm1, mount C:\\mt1',
      pool: '',
    });
    say(`3. Created a 1 GiB thin LUN ${lun!.path}: serial ${lun!.serial}, NAA id ${lun!.naaId}.`);

    const ids: string[] = [];
    for (const n of NODES) {
      const { map } = await storage.mapLun({ requestId: `demo-map-${n.igroup}`, lun: lun!.path, igroup: n.igroup });
      ids.push(`${n.igroup} at LUN id ${map!.lunId}`);
    }
    say(`4. Mapped it to both hosts (${ids.join(', ')}): a shared cluster disk both can see.`);

    const text = Buffer.alloc(512);
    text.write('hello from node1, written through the SAN\n');
    await storage.writeBlocks({ requestId: 'demo-write', lun: lun!.serial, initiator: NODES[0]!.iqn, offsetBytes: 0n, data: text });
    const read = await storage.readBlocks({ lun: lun!.serial, initiator: NODES[1]!.iqn, offsetBytes: 0n, lengthBytes: 512 });
    if (!read.data.equals(text)) throw new Error('node2 read back other bytes than node1 wrote');
    say(`5. node1 wrote a line; node2 read it back: "${read.data.toString('utf8').replace(/\0+$/, '').trim()}"`);

    try {
      await storage.readBlocks({ lun: lun!.serial, initiator: 'iqn.1991-05.com.example:stranger', offsetBytes: 0n, lengthBytes: 512 });
      throw new Error('a host outside the igroups read the LUN: masking is broken');
    } catch (err) {
      if ((err as ServiceError).code !== 7) throw err;
      say('6. A host in no igroup tried to read it and was refused (LUN masking: PERMISSION_DENIED).');
    }

    const [n1, n2] = NODES as [(typeof NODES)[0], (typeof NODES)[0]];
    await storage.registerReservationKey({ requestId: 'demo-reg1', lun: lun!.serial, initiator: n1.iqn, key: '0x1' });
    await storage.registerReservationKey({ requestId: 'demo-reg2', lun: lun!.serial, initiator: n2.iqn, key: '0x2' });
    await storage.reserve({
      requestId: 'demo-reserve',
      lun: lun!.serial,
      initiator: n1.iqn,
      key: '0x1',
      type: ReservationType.RESERVATION_TYPE_WRITE_EXCLUSIVE_REGISTRANTS_ONLY,
    });
    say('7. Both nodes registered persistent-reservation keys; node1 holds the reservation.');
    await storage.preemptReservation({
      requestId: 'demo-preempt',
      lun: lun!.serial,
      initiator: n2.iqn,
      key: '0x2',
      preemptKey: '0x1',
      type: 0,
    });
    try {
      await storage.writeBlocks({ requestId: 'demo-stale-write', lun: lun!.serial, initiator: n1.iqn, offsetBytes: 0n, data: Buffer.alloc(512, 1) });
      throw new Error('the fenced node could still write');
    } catch (err) {
      if ((err as ServiceError).code !== 9) throw err;
      say(`8. node1 "failed": node2 preempted its key. node1's next write was refused: ${(err as ServiceError).details}`);
    }
    const after = await storage.readBlocks({ lun: lun!.serial, initiator: n2.iqn, offsetBytes: 0n, lengthBytes: 512 });
    if (!after.data.equals(text)) throw new Error('the refused write changed the data');
    say('   The data is unchanged: the fenced node could not touch it.');

    for (const n of NODES) await storage.unmapLun({ requestId: `demo-unmap-${n.igroup}`, lun: lun!.path, igroup: n.igroup });
    await storage.deleteLun({ requestId: 'demo-delete', lun: lun!.path, force: false });
    for (const n of NODES) await storage.deleteIgroup({ requestId: `demo-igroup-del-${n.igroup}`, name: n.igroup });
    const end = await storage.getArray({});
    if (end.lunCount !== 0 || end.mapCount !== 0 || end.igroupCount !== 0) throw new Error('something was left on the array');
    say(`9. Unmapped and deleted everything: the array holds ${end.lunCount} LUNs, ${end.mapCount} maps, ${end.igroupCount} igroups.`);
    say('\nDemo finished: every step did what it said.');
  } finally {
    storage.close();
    await array.stop();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
