// The outage run in short (sim/outage-run.ts): real `rewind manager` and `rewind agent` processes
// linked through a chaos proxy (delays, cuts mid-frame, outages of 1 and 3 s) under a steady
// libnbd write load with a 1 MiB spool, so the agent goes degraded and back. The history must equal
// production, hold every answered write, and place every write without a record of its own inside
// a window that views refuse. The long form (outages of minutes) is in docs/RESILIENCE.md.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { test } from 'node:test';
import { runOutage } from '../../sim/outage-run.js';

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const missing = ['nbdcopy'].filter((t) => spawnSync('which', [t]).status !== 0);
const hasLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { timeout: 10_000 }).status === 0;
const skip =
  missing.length > 0
    ? `missing ${missing.join(', ')}`
    : !hasLibnbd
      ? 'missing python3-libnbd'
      : false;

test(
  'link outages through a chaos proxy, degraded mode and back: history exact, windows exact',
  { skip, timeout: 300_000 },
  async (t) => {
    const report = await runOutage({ outagesSeconds: [1, 3], seed: 20261125 }, (line) =>
      t.diagnostic(line),
    );
    t.diagnostic(JSON.stringify(report));
    assert.ok(report.degradedEntered >= 1, 'the spool overflowed into degraded mode');
    assert.ok(
      report.writesInWindows > 0 && report.resyncRecords > 0,
      'some writes were covered by a resync',
    );
    assert.ok(report.midFrameCuts > 0, 'the proxy cut connections mid-frame');
  },
);
