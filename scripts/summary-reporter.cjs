// Mocha reporter: the usual spec output, then one closing line "N passed, N failed" (what CI
// reads), also written to .test-summary.json for .ci/run to repeat at the very end.
'use strict';
const Mocha = require('mocha');
const { writeFileSync } = require('node:fs');

const { EVENT_RUN_END, EVENT_TEST_PASS, EVENT_TEST_FAIL, EVENT_TEST_PENDING } = Mocha.Runner.constants;

class SummaryReporter extends Mocha.reporters.Spec {
  constructor(runner, options) {
    super(runner, options);
    const counts = { passed: 0, failed: 0, skipped: 0 };
    runner.on(EVENT_TEST_PASS, () => counts.passed++);
    runner.on(EVENT_TEST_FAIL, () => counts.failed++);
    runner.on(EVENT_TEST_PENDING, () => counts.skipped++);
    runner.once(EVENT_RUN_END, () => {
      writeFileSync('.test-summary.json', JSON.stringify(counts));
      // After Spec's own epilogue.
      setImmediate(() => process.stdout.write(`\n${counts.passed} passed, ${counts.failed} failed, ${counts.skipped} skipped\n`));
    });
  }
}

module.exports = SummaryReporter;
