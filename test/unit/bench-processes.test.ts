// The benchmark's process scopes: a measurement that fails carries what its servers logged as
// warnings or errors (the benchmark once lost a whole run to a bare "fio exited with 1" while the
// agent had said why: its disk was full), and the scope still stops its processes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { withScope } from '../../bench/processes.js';

const SERVER = `
process.stdout.write('{"level":30,"msg":"nbd server listening"}\\n');
process.stdout.write('{"level":40,"msg":"manager busy: no space"}\\n');
process.stderr.write('{"level":50,"msg":"write path stopped: ENOSPC"}\\n');
process.stderr.write('rewind: stopping failed: ENOSPC\\n');
setInterval(() => {}, 1000);
`;

test('a failed measurement carries the servers warnings and errors, and its processes are stopped', async () => {
  let pid = 0;
  const failed = withScope(2000, async (scope) => {
    const server = scope.start('rewind agent', process.execPath, ['-e', SERVER]);
    pid = server.pid;
    for (
      let waited = 0;
      !server.output.includes('stopping failed') && waited < 10_000;
      waited += 20
    )
      await new Promise((resolve) => setTimeout(resolve, 20));
    throw new Error('fio exited with 1');
  });
  await assert.rejects(failed, (error: Error) => {
    assert.match(error.message, /^fio exited with 1\nthe servers logged:\n/);
    assert.match(error.message, /rewind agent: manager busy: no space/);
    assert.match(error.message, /rewind agent: write path stopped: ENOSPC/);
    assert.match(error.message, /rewind agent: rewind: stopping failed: ENOSPC/);
    assert.doesNotMatch(error.message, /nbd server listening/, 'info lines are left out');
    return true;
  });
  assert.throws(() => process.kill(pid, 0), /ESRCH/, 'the server was stopped');
});

test('a failure with nothing logged is passed on as it is', async () => {
  const original = new Error('nbdinfo did not reach the export');
  await assert.rejects(
    withScope(2000, async (scope) => {
      scope.start('quiet', process.execPath, ['-e', 'setTimeout(() => {}, 200)']);
      throw original;
    }),
    (error: unknown) => error === original,
  );
});
