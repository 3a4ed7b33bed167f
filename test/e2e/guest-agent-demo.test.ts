/**
 * `npm run demo` end to end: the compiled demo (dist/scripts/demo.js) run as a process, as
 * `npm run demo` runs it after building. It starts its own storage-sim and host-agent, drives
 * the guest-agent CLI through create, write, list, a failover, read and remove, and must
 * exit 0 having said each step in words.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { expect } from 'chai';
import { ensureBuilt } from '../support/guest-cli.js';
import { ROOT } from '../support/processes.js';

function runDemo(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(ROOT, 'dist', 'scripts', 'demo.js')], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 90_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('npm run demo (e2e)', function () {
  this.timeout(120_000);

  it('provisions a disk at C:\\mt1 for an HA VM, keeps its text through a failover, removes it and leaves nothing, exiting 0', async () => {
    ensureBuilt();
    const r = await runDemo();
    expect(r.code, `demo exited ${r.code}\nstdout:\n${r.stdout}\nstderr:\n${r.stderr}`).to.equal(0);
    expect(r.stderr).to.equal('');
    const out = r.stdout;
    expect(out).to.match(/^2\. Inside web1: guest-agent disk create --size 1GiB --mount 'C:\\mt1'$/m);
    expect(out).to.match(/^ {5}\| C:\\mt1 mounted: LUN \w+ \(1 GiB\) at SCSI 0:0, LUN id \d+; new volume "mt1"/m);
    expect(out).to.match(/^ {5}\| C:\\mt1 {2}\w+ {2}1 GiB {2}0:0 +\d+ {2}mt1 {4}mounted$/m);
    expect(out).to.include(`The disk resource sits in the VM's own group "Virtual Machine web1", and no temporary group is left.`);
    expect(out).to.match(/web1 restarted on node[23], its disk still attached at SCSI 0:0 and online there\./);
    expect(out).to.include('A late write from the failed node1 is refused by the array');
    expect(out).to.match(/^ {5}\| Hello from web1, written at .* before anything failed\.$/m);
    expect(out).to.include('The same line: the data survived the failover.');
    expect(out).to.match(/deleted from the array$/m);
    expect(out).to.include('Left on the array: 0 LUNs and 0 LUN maps. Cross-checks of hypervisor, cluster and array: 0 problems.');
    expect(out.trimEnd().split('\n').pop()).to.equal('Demo finished: every step did what it said.');
  });
});
