// The short, seeded kill -9 sweep of the default test run (the long sweep is its own command, see
// docs/RESILIENCE.md): real agent and manager processes, killed at named crash points and at
// random times under fio and libnbd write loads, restarted and checked each time.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { checkFioWrites, runSweep, startFio } from '../../sim/kill-sweep.js';

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const missing = ['nbdcopy', 'fio', 'nbdkit'].filter((t) => spawnSync('which', [t]).status !== 0);
const hasLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { timeout: 10_000 }).status === 0;
const skip =
  missing.length > 0
    ? `missing ${missing.join(', ')}`
    : !hasLibnbd
      ? 'missing python3-libnbd'
      : false;

test(
  'kill -9 sweep (short, seeded): every answered write survives, history equals production',
  { skip, timeout: 240_000 },
  async (t) => {
    const results = await runSweep({ iterations: 6, seed: 20261124, json: false });
    assert.equal(results.length, 6);
    assert.ok(
      results.some((r) => r.victim === 'agent') && results.some((r) => r.victim === 'manager'),
      'both sides were killed',
    );
    assert.ok(
      results.some((r) => r.fioVerified > 0),
      'fio writes were answered and checked',
    );
    for (const r of results)
      t.diagnostic(
        `${r.victim} ${r.point}${r.crashedAtPoint ? ' (at the point)' : ''}: ${r.replied} stamped and ${r.fioVerified} fio writes answered and found, history to seq ${r.seqLast}, ${r.resyncRecords} resync records`,
      );
  },
);

test(
  'kill -9 sweep with a 12 MiB journal (short, seeded): the same checks while retention thins and drops, the manager killed inside merges and swaps',
  { skip, timeout: 240_000 },
  async (t) => {
    const results = await runSweep({
      iterations: 4,
      seed: 20261202,
      json: false,
      managerShare: 1,
      journalMax: '12M',
      managerPoints: ['merge', 'swap'],
    });
    assert.equal(results.length, 4);
    assert.ok(
      results.some((r) => r.oldestSeq > 0),
      'the oldest history was dropped at the limit',
    );
    assert.ok(
      results.some((r) => r.retentionSteps > 0),
      'retention merged or dropped while the load ran',
    );
    assert.ok(
      results.some((r) => r.crashedAtPoint),
      'the manager died at a merge or a swap',
    );
    for (const r of results)
      t.diagnostic(
        `${r.victim} ${r.point}${r.crashedAtPoint ? ' (at the point)' : ''}: history ${r.oldestSeq}..${r.seqLast}, ${r.thinnedRuns} thinned runs, ${r.retentionSteps} retention steps, ${r.replied} stamped and ${r.fioVerified} fio writes answered and found`,
      );
  },
);

test(
  "the sweep's fio check fails when an answered write is lost or stale",
  { skip, timeout: 60_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-fiocheck-'));
    const image = path.join(dir, 'disk.img');
    const socket = path.join(dir, 'nbd.sock');
    fs.writeFileSync(image, '');
    fs.truncateSync(image, 64 * 1024 * 1024);
    const nbdkit = spawn('nbdkit', ['-f', '-U', socket, 'file', image], { stdio: 'ignore' });
    try {
      for (let waited = 0; !fs.existsSync(socket); waited += 20) {
        assert.ok(waited < 10_000, 'nbdkit started');
        await new Promise((r) => setTimeout(r, 20));
      }
      const uri = `nbd+unix:///?socket=${socket}`;
      const fio = startFio(dir, uri, 77);
      const code = await new Promise((r) => fio.once('exit', r));
      assert.equal(code, 0, 'fio wrote its whole pass');
      const answered = checkFioWrites(dir, uri, 77);
      assert.ok(answered > 1000, `${answered} answered writes checked`);
      // Another seed's pass stands for stale blocks left by an earlier iteration: all refused.
      assert.throws(
        () => checkFioWrites(dir, uri, 78),
        /writes fio saw answered are missing or wrong/,
      );
      // One answered write lost: zero its first 4 KiB in the image behind the export.
      const first = fs
        .readFileSync(path.join(dir, 'fio_clat.1.log'), 'utf8')
        .split('\n')[0]
        ?.split(',')
        .map((f) => f.trim());
      const offset = Number(first?.[4]);
      const fd = fs.openSync(image, 'r+');
      fs.writeSync(fd, Buffer.alloc(4096), 0, 4096, offset);
      fs.closeSync(fd);
      assert.throws(
        () => checkFioWrites(dir, uri, 77),
        new RegExp(
          `1 writes fio saw answered are missing or wrong in the image, first at offsets ${offset}`,
        ),
      );
    } finally {
      nbdkit.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
