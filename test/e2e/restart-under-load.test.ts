// rewind up stopped by SIGTERM and by SIGKILL while fio is writing, then restarted: seqs stay
// continuous and gap-free, and the history at the last seq equals production byte for byte (after
// SIGKILL because the restart resyncs the dirty regions).
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BIN, freePort, startUpProcess } from '../support/process.js';

const SIZE = 16 * 1024 * 1024;
const missing = ['fio', 'nbdcopy'].filter((t) => spawnSync('which', [t]).status !== 0);

async function up(dir: string, nbd: number, http: number): Promise<ChildProcess> {
  return startUpProcess([
    '--data',
    dir,
    '--nbd',
    `127.0.0.1:${nbd}`,
    '--http',
    `127.0.0.1:${http}`,
    '--volume',
    `v:${SIZE}`,
    '--seal-ms',
    '100',
    '--seal-bytes',
    '2M',
  ]);
}

const cli = (http: number, ...args: string[]): string =>
  execFileSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
    timeout: 90_000,
    maxBuffer: 256 << 20,
  }).toString();

test(
  'SIGTERM and SIGKILL under fio load, then restart: seq continuous, history equals production',
  { skip: missing.length ? `missing ${missing.join(', ')}` : false },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-restart-'));
    const [nbd, http] = [await freePort(), await freePort()];
    let child: ChildProcess | undefined;
    let fio: ChildProcess | undefined;
    try {
      for (const signal of ['SIGTERM', 'SIGKILL'] as const) {
        child = await up(dir, nbd, http);
        fio = spawn(
          'fio',
          [
            '--name=load',
            '--ioengine=nbd',
            `--uri=nbd://127.0.0.1:${nbd}/v`,
            '--rw=randwrite',
            '--bs=4k',
            '--iodepth=8',
            '--size=16M',
            '--time_based',
            '--runtime=20',
            '--verify_state_save=0',
            `--directory=${dir}`,
          ],
          { stdio: 'ignore' },
        );
        await new Promise((r) => setTimeout(r, 1500));
        child.kill(signal);
        await new Promise((r) => child!.once('exit', r));
        fio.kill('SIGKILL');
        child = await up(dir, nbd, http);
        cli(http, 'seal', '--wait');
        const seqs = cli(http, 'log', '--json')
          .trim()
          .split('\n')
          .map((l) => (JSON.parse(l) as { seq: number }).seq);
        assert.ok(seqs.length > 100, `${signal}: fio's writes were captured (${seqs.length})`);
        seqs.forEach((seq, i) => assert.equal(seq, i + 1, `${signal}: seq continuous at ${i + 1}`));
        {
          // After SIGTERM every write was logged; after SIGKILL the restart resynced the dirty
          // regions. Either way the history at the last seq must equal production.
          const last = seqs[seqs.length - 1] as number;
          cli(http, 'snapshot', 'end', '--at', String(last));
          execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/v@end`, path.join(dir, 'end.img')], {
            timeout: 60_000,
          });
          const production = fs.readFileSync(path.join(dir, 'production', 'v.img'));
          assert.ok(
            fs.readFileSync(path.join(dir, 'end.img')).equals(production),
            `${signal}: the history at the last seq equals production`,
          );
          cli(http, 'rm', 'end');
        }
        child.kill('SIGTERM');
        await new Promise((r) => child!.once('exit', r));
        child = undefined;
      }
    } finally {
      if (fio && fio.exitCode === null) fio.kill('SIGKILL');
      if (child && child.exitCode === null) child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
