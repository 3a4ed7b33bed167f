/**
 * A guest whose host sheds its load: the host agent started with a tight request rate per
 * VM (3 a second, bursts of 3), the compiled guest-agent CLI as a process. Each command
 * makes several calls; the host refuses those past the rate with RESOURCE_EXHAUSTED and the
 * time to wait, and the guest waits and asks again, so the commands succeed as if nothing
 * happened, and the host's log shows the refusals.
 */
import { expect } from 'chai';
import { deploymentForFile } from '../support/guest-cli.js';

describe('guest-agent against a host that rate-limits it (e2e)', function () {
  this.timeout(120_000);
  const deployment = deploymentForFile({ hostExtra: ['--guest-rate', '3', '--guest-burst', '3', '--log-level', 'warn'] });

  it('create, list and remove succeed through the refusals, waiting as the host asks; the host logged each refusal as RATE_LIMITED for that VM', async () => {
    const d = deployment();
    const vm2 = d.guest('vm2');
    await vm2.ok(['disk', 'create', '--size', '8MiB', '--mount', '/srv/slow']);
    const listed = JSON.parse(await vm2.ok(['disk', 'list', '--json'])) as { disks: { mount: string }[] } | { mount: string }[];
    expect(JSON.stringify(listed)).to.include('/srv/slow');
    await vm2.ok(['disk', 'remove', '--mount', '/srv/slow', '--delete-lun']);
    const refusals = d.host
      .stderr()
      .split('\n')
      .filter((l) => l.includes('"reason":"RATE_LIMITED"'));
    expect(refusals.length, 'the host refused some calls').to.be.greaterThan(0);
    for (const l of refusals) expect(JSON.parse(l)).to.include({ vmId: 'vm2', code: 'RESOURCE_EXHAUSTED' });
    expect(await d.disks('vm2')).to.deep.equal([]);
  });
});
