// First protection of a volume that already holds data: until the resync of that data has fully
// arrived, there is no point to restore to, and views say so. Real processes: the agent dies
// (REWIND_CRASH_AT=ship:2) after shipping two of the resync's segments, so the manager holds a
// committed part of the resync and nothing else; after a restart the resync completes and the
// history starts at its end, equal to the image.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  BIN,
  exited,
  freePort,
  startRewind,
  until,
  type RewindProcess,
} from '../support/process.js';
import { rng } from '../support/model.js';

const MiB = 1024 * 1024;

test(
  'views refuse every point until the first protection resync has arrived, then the history starts at its end',
  { timeout: 120_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-histstart-'));
    const procs: RewindProcess[] = [];
    try {
      const image = path.join(dir, 'existing.img');
      const original = rng(7).bytes(8 * MiB); // every 1 MiB region holds data
      fs.writeFileSync(image, original);
      const [link, nbd, http, agentNbd] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const manager = startRewind([
        'manager',
        '--data',
        path.join(dir, 'm'),
        '--listen',
        `127.0.0.1:${link}`,
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--token',
        't',
      ]);
      procs.push(manager);
      await until('manager up', () => manager.out().includes('API:'));
      const agentArgs = [
        'agent',
        '--manager',
        `127.0.0.1:${link}`,
        '--data',
        path.join(dir, 'a'),
        '--nbd',
        `127.0.0.1:${agentNbd}`,
        '--token',
        't',
        '--volume',
        `v:${image}`,
        '--seal-bytes',
        '1M',
      ];
      const agent = startRewind(agentArgs, { REWIND_CRASH_AT: 'ship:2' });
      procs.push(agent);
      await exited(agent);
      assert.equal(
        agent.child.signalCode ?? agent.child.exitCode,
        'SIGKILL',
        `the agent died at its crash point: ${agent.out().slice(-2000)}`,
      );

      const cli = (...args: string[]): { status: number | null; out: string } => {
        const r = spawnSync(
          process.execPath,
          [
            BIN,
            ...args,
            '--server',
            `http://127.0.0.1:${http}`,
            '--api-token-file',
            path.join(dir, 'm', 'api-token'),
          ],
          { timeout: 30_000 },
        );
        return { status: r.status, out: `${r.stdout}${r.stderr}` };
      };
      // The manager committed part of the resync (it has seqs), but no point is restorable yet.
      let log: { seq: number; resync: boolean }[] = [];
      await until('the shipped resync segments are committed', () => {
        const r = cli('log', '--json');
        log =
          r.status === 0
            ? r.out
                .trim()
                .split('\n')
                .filter(Boolean)
                .map((l) => JSON.parse(l) as { seq: number; resync: boolean })
            : [];
        return log.length > 0;
      });
      assert.ok(
        log.every((e) => e.resync),
        'only resync records so far',
      );
      const last = log[log.length - 1]?.seq as number;
      for (const at of ['1', String(last)]) {
        const refused = cli('snapshot', 'early', '--at', at);
        assert.notEqual(refused.status, 0, `a view at ${at} is refused`);
        assert.match(refused.out, /the history has not started yet/);
      }

      // The agent comes back: the resync completes and the history starts at its end.
      const again = startRewind(agentArgs);
      procs.push(again);
      await until('agent up again', () => again.out().includes('volume v:'));
      const sealed = cli('seal', '--wait');
      assert.equal(sealed.status, 0, sealed.out);
      const full = cli('log', '--json')
        .out.trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as { seq: number });
      const end = full[full.length - 1]?.seq as number;
      const created = cli('snapshot', 'start', '--at', String(end));
      assert.equal(created.status, 0, created.out);
      const copy = path.join(dir, 'start.img');
      const nbdcopy = spawnSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/v@start`, copy], {
        timeout: 60_000,
      });
      assert.equal(nbdcopy.status, 0, `${nbdcopy.stderr}`);
      assert.ok(
        fs.readFileSync(copy).equals(original),
        'the history at the end of the resync equals the image',
      );
      const inside = cli('snapshot', 'inside', '--at', String(end - 1));
      assert.notEqual(inside.status, 0, 'a point inside the resync is refused');
    } finally {
      for (const p of procs) p.child.kill('SIGKILL');
      await Promise.all(procs.map(exited));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
