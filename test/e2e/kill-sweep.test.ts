// The short, seeded kill -9 sweep of the default test run (the long sweep is its own command, see
// docs/RESILIENCE.md): real agent and manager processes, killed at named crash points and at
// random times under a libnbd write load, restarted and checked each time.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { test } from 'node:test';
import { runSweep } from '../../sim/kill-sweep.js';

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const missing = ['nbdcopy'].filter((t) => spawnSync('which', [t]).status !== 0);
const hasLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { timeout: 10_000 }).status === 0;
const skip = missing.length > 0 ? `missing ${missing.join(', ')}` : !hasLibnbd ? 'missing python3-libnbd' : false;

test('kill -9 sweep (short, seeded): every answered write survives, history equals production', { skip, timeout: 240_000 }, async (t) => {
  const results = await runSweep({ iterations: 6, seed: 20261124, json: false });
  assert.equal(results.length, 6);
  assert.ok(results.some((r) => r.victim === 'agent') && results.some((r) => r.victim === 'manager'), 'both sides were killed');
  for (const r of results) t.diagnostic(`${r.victim} ${r.point}${r.crashedAtPoint ? ' (at the point)' : ''}: ${r.replied} writes answered, history to seq ${r.seqLast}, ${r.resyncRecords} resync records`);
});
