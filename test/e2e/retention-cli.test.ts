// Retention as an operator drives it, through the CLI against a real `rewind up`: the policy from
// flags, `rewind retention --json` with its keys, `--simulate` changing nothing, `--set` changing
// the running policy without a restart, history thinned into a tier (a point inside the run is
// refused naming the kept points, its last point still opens), `rewind log` marking the run, and
// a pinned bookmark that a tiny journal limit cannot drop past.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BIN, freePort, startUpProcess } from '../support/process.js';

const skip = spawnSync('which', ['qemu-io']).status === 0 ? false : 'missing qemu-io';

interface RetentionJson {
  journalBytes: number;
  journalBytesMax: number;
  oldestSeq: number;
  everyWriteFromSeq: number;
  policy: { keepEveryWrite: string; keep: string };
  alerts: { level: string; message: string }[];
}

interface LogJson {
  seq: number;
  kind: string;
  seqFirst?: number;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

test(
  'rewind retention: flags, --json, --simulate, --set on a running manager, thinned points refused, a pinned bookmark kept',
  { skip, timeout: 120_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-retention-cli-'));
    const [nbd, http] = [await freePort(), await freePort()];
    let up: ChildProcess | undefined;
    const rewind = (...args: string[]): { status: number | null; out: string; err: string } => {
      const result = spawnSync(process.execPath, [BIN, ...args], {
        env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
        timeout: 30_000,
      });
      return {
        status: result.status,
        out: result.stdout.toString(),
        err: result.stderr.toString(),
      };
    };
    const ok = (...args: string[]): string => {
      const result = rewind(...args);
      assert.equal(result.status, 0, `rewind ${args.join(' ')}: ${result.err}`);
      return result.out;
    };
    const retention = (): RetentionJson => JSON.parse(ok('retention', '--json')) as RetentionJson;
    try {
      up = await startUpProcess([
        '--data',
        path.join(dir, 'data'),
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--volume',
        'v:4M',
        '--seal-ms',
        '100',
        '--journal-max',
        '64M',
        '--keep-every-write',
        '1h',
        '--keep',
        '1s:2h',
      ]);
      // Twelve writes, each in a segment of its own, about 250 ms apart.
      for (let i = 0; i < 12; i++) {
        execFileSync(
          'qemu-io',
          ['-f', 'raw', `nbd://127.0.0.1:${nbd}/v`, '-c', `write -P ${i + 1} ${i * 65536} 4k`],
          { timeout: 20_000 },
        );
        await sleep(250);
      }
      ok('seal', '--wait');
      const first = retention();
      for (const key of ['journalBytes', 'journalBytesMax', 'oldestSeq', 'everyWriteFromSeq'])
        assert.equal(typeof (first as unknown as Record<string, unknown>)[key], 'number', key);
      assert.equal(first.journalBytesMax, 64 * 1024 * 1024, '--journal-max is the limit');
      assert.equal(first.policy.keepEveryWrite, '1h');
      assert.equal(first.everyWriteFromSeq, 0, 'every write kept under the 1 h window');
      await sleep(1500); // every write is now older than the 1 s window simulated next

      const simulated = JSON.parse(
        ok('retention', '--simulate', '--keep-every-write', '1s', '--keep', '1s:2h', '--json'),
      ) as { actions: { kind: string }[] };
      assert.ok(
        simulated.actions.some((a) => a.kind === 'merge'),
        `the simulation would thin: ${JSON.stringify(simulated)}`,
      );
      const afterSimulation = retention();
      assert.equal(afterSimulation.policy.keepEveryWrite, '1h', '--simulate changes no policy');
      assert.equal(afterSimulation.everyWriteFromSeq, 0, '--simulate thins nothing');

      const set = ok('retention', '--set', '--keep-every-write', '1s');
      assert.match(set, /policy: every write for 1s, then 1s:2h/);
      let now = retention();
      for (let waited = 0; now.everyWriteFromSeq === 0; waited += 200) {
        assert.ok(waited < 20_000, 'the running manager thins under the new policy');
        await sleep(200);
        now = retention();
      }
      // The log marks the thinned runs; a point strictly inside one is refused, its end opens.
      const log = ok('log', '--json')
        .trim()
        .split('\n')
        .map((line) => JSON.parse(line) as LogJson);
      const run = log.find(
        (e) => e.kind === 'thinned' && e.seqFirst !== undefined && e.seqFirst < e.seq,
      );
      assert.ok(
        run?.seqFirst !== undefined,
        `a thinned run of several writes: ${JSON.stringify(log)}`,
      );
      assert.match(ok('log'), /thinned\(\d+\.\.\d+\)/, 'the text log marks the run');
      const inside = rewind('snapshot', 'inside', '--at', String(run.seqFirst));
      assert.equal(inside.status, 1, 'a point inside a thinned run is refused');
      assert.match(
        inside.err,
        new RegExp(`no longer kept: seqs ${run.seqFirst}\\.\\.${run.seq} were thinned`),
      );
      assert.match(inside.err, new RegExp(`seq ${run.seqFirst - 1} \\(before the run\\)`));
      ok('snapshot', 'end', '--at', String(run.seq));
      ok('rm', 'end');

      // A pinned bookmark at the last write: a limit far below the journal drops only before it.
      const last = log[log.length - 1] as LogJson;
      ok('bookmark', 'keep', '--at', String(last.seq));
      ok('bookmark', 'keep', '--pin');
      ok('retention', '--set', '--journal-max', '256', '--journal-warn', '256');
      now = retention();
      for (let waited = 0; now.oldestSeq === 0; waited += 200) {
        assert.ok(
          waited < 20_000,
          `the oldest history is dropped at the new limit: ${JSON.stringify(now)}`,
        );
        await sleep(200);
        now = retention();
      }
      assert.equal(now.journalBytesMax, 256, '--set took the limit without a restart');
      assert.ok(now.oldestSeq <= last.seq, `nothing from the pinned bookmark on was dropped`);
      assert.ok(
        now.alerts.length > 0,
        `promised history dropped is alerted: ${JSON.stringify(now)}`,
      );
      ok('snapshot', 'pinned', '--at', '@keep');
      const before = rewind('snapshot', 'gone', '--at', '0');
      assert.equal(before.status, 1, 'a dropped point is refused');
      assert.match(before.err, /no longer kept|before the history starts/);
    } finally {
      up?.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
