import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { BIN, startStorageSim, tempDir, type ServiceProcess } from '../support/processes.js';

describe('storage-sim serve as a process', () => {
  const dir = tempDir('passthru-serve-');
  let first: ServiceProcess;

  before(async () => {
    first = await startStorageSim(dir.path);
  });

  after(async () => {
    await first?.stop();
    dir.remove();
  });

  it('a second server on a data dir in use exits non-zero saying so, and the first stops cleanly afterwards', async () => {
    const second = spawnSync(process.execPath, [BIN.storageSim, 'serve', '--listen', '127.0.0.1:0', '--data-dir', dir.path], {
      encoding: 'utf8',
      timeout: 15_000,
    });
    expect(second.status).to.equal(1);
    expect(second.stdout).to.not.match(/serving on/);
    expect(second.stderr).to.match(/data dir .* is in use by another storage-sim: stop it, or give this one another --data-dir/);
    expect(await first.stop(), 'exit code of the first server after SIGTERM').to.equal(0);
    first = await startStorageSim(dir.path);
  });
});
