/**
 * Issue 6, "Chaos under load: nothing lost, nothing leaked": a short seeded chaos run
 * (chaos/run.ts, what `npm run chaos` runs) against real storage-sim and host-agent
 * processes, which must keep every promise; and a tiny run whose promises are broken on
 * purpose behind the system's back, which the checks must catch (so they are not checks
 * that cannot fail).
 *
 * A failure names the first broken promise and the command that replays the run's schedule.
 */
import { writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect } from 'chai';
import { INJECTIONS } from '../../chaos/injector.js';
import { runChaos, type ChaosReport } from '../../chaos/run.js';
import { ensureBuilt } from '../support/guest-cli.js';

const SUMMARY = /^operations (\d+) attempted, (\d+) succeeded, (\d+) failed clean; (\d+) crashes, (\d+) failovers; (\d+) invariant violations, (\d+) acknowledged operations lost, (\d+) payload bytes wrong$/;

/** The summary, the first broken promise and how to replay it; the whole report saved beside, for a failing run. */
function explain(r: ChaosReport): string {
  const f = r.firstBrokenPromise;
  let saved = '';
  if (!r.ok) {
    saved = join(tmpdir(), `chaos-test-${r.seed}-${Date.now()}.json`);
    writeFileSync(saved, JSON.stringify(r, null, 2));
  }
  return `${r.summary}\n${saved ? `report: ${saved}\n` : ''}${f ? `first broken promise at ${(f.atMs / 1000).toFixed(1)} s: ${f.kind} ${f.subject}: ${f.description}\n` : ''}replay: ${r.replay} --keep\n${r.violations
    .slice(0, 10)
    .map((v) => `  ${v.kind} ${v.subject}: ${v.description}`)
    .join('\n')}`;
}

describe('chaos under load (issue 6)', function () {
  this.timeout(90_000);
  before(function () {
    this.timeout(120_000);
    ensureBuilt();
  });

  it('a short seeded run (12 VMs, 12 s of kills, failovers, moves, array faults, dropped connections): 0 violations, 0 acknowledged operations lost, 0 payload bytes wrong', async () => {
    const t0 = Date.now();
    const r = await runChaos({ seconds: 12, vms: 12, seed: 6 });
    const ms = Date.now() - t0;
    expect(r.summary).to.match(SUMMARY);
    expect(r.ok, explain(r)).to.equal(true);
    const [, attempted, succeeded, failedClean, crashes, failovers, violations, lost, wrong] = SUMMARY.exec(r.summary)!.map(Number);
    expect([violations, lost, wrong], explain(r)).to.deep.equal([0, 0, 0]);
    expect(succeeded! + failedClean!, 'every failure clean').to.equal(attempted);
    // It was chaos: every kind of injection happened, the processes died and came back, groups moved.
    expect(new Set(r.timeline.map((e) => e.kind)), JSON.stringify(r.notReached)).to.include.members([...INJECTIONS, 'recover-node']);
    expect(crashes, 'storage-sim and host-agent SIGKILLed').to.be.at.least(2);
    expect(r.crashes.storageSim).to.be.at.least(1);
    expect(r.crashes.hostAgent).to.be.at.least(1);
    expect(failovers, 'a node failed over or a group moved').to.be.at.least(1);
    // Under load: commands of every kind, some of them finishing what a crashed or cut-off run recorded.
    for (const kind of ['create', 'connect', 'remove', 'write', 'read', 'list', 'show']) expect(r.operations.byKind[kind]?.succeeded ?? 0, kind).to.be.greaterThan(0);
    expect(succeeded).to.be.greaterThan(150);
    expect(r.operations.resumed, 'requests finished under their first request id').to.be.greaterThan(0);
    expect(r.verified!.mountsChecked).to.be.greaterThan(5);
    expect(r.verified!.bytesVerified).to.be.greaterThan(0);
    expect(ms, 'the short run stays short').to.be.below(45_000);
  });

  it('promises broken behind the system\'s back are caught: acknowledged bytes changed, a LUN nobody made, an acknowledged mount gone from a guest\'s table', async () => {
    const r = await runChaos({ seconds: 4, vms: 4, seed: 7, sabotage: true });
    expect(r.ok).to.equal(false);
    const [, , , , , , violations, lost, wrong] = SUMMARY.exec(r.summary)!.map(Number);
    expect(wrong, r.summary).to.equal(16);
    expect(lost, r.summary).to.be.greaterThan(0);
    expect(violations, r.summary).to.be.greaterThan(0);
    const kinds = new Set(r.violations.map((v) => v.kind));
    expect([...kinds]).to.include.members(['WRONG_BYTES', 'ORPHAN_LUN', 'CHECK_INVARIANTS:ORPHAN_LUN', 'MOUNT_LOST']);
    expect(r.firstBrokenPromise).to.not.equal(null);
    expect(r.replay).to.equal('npm run chaos -- --seconds 4 --vms 4 --seed 7');
  });
});
