// A time among the writes of one archived transaction, through the real CLI against `rewind up`:
// a burst of writes sealed as one transaction, their capture times read from `rewind log --json`
// while the journal still has them, then pushed out of the journal by its limit. `rewind snapshot
// --at TIME` (a time between two writes of that transaction) fetches its object's times from the
// archive, lands on the write before TIME, and the view read with nbdcopy equals the model.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { formatTimeNs } from '../../src/core/index.js';
import { BIN, freePort, startUpProcess, until } from '../support/process.js';

const tools = ['qemu-io', 'nbdcopy'].filter((t) => spawnSync('which', [t]).status !== 0);
const VOLUME_BYTES = 4 * 1024 * 1024;
const BLOCK = 64 * 1024;

test(
  'rewind snapshot --at a time among the writes of an archived transaction',
  { skip: tools.length > 0 ? `missing ${tools.join(', ')}` : false, timeout: 120_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-time-'));
    const [nbd, http] = [await freePort(), await freePort()];
    const rewind = (...args: string[]): { status: number | null; out: string; err: string } => {
      const result = spawnSync(process.execPath, [BIN, ...args], {
        env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
        timeout: 30_000,
      });
      return { status: result.status, out: `${result.stdout}`, err: `${result.stderr}` };
    };
    const ok = (...args: string[]): string => {
      const result = rewind(...args);
      assert.equal(result.status, 0, `rewind ${args.join(' ')}: ${result.err}`);
      return result.out;
    };
    // The model: every write in order.
    const writes: { offset: number; data: Buffer }[] = [];
    const replay = (seq: number): Buffer => {
      const image = Buffer.alloc(VOLUME_BYTES);
      for (const w of writes.slice(0, seq)) w.data.copy(image, w.offset);
      return image;
    };
    /** Writes `count` random 64 KiB blocks in one qemu-io run, then seals them as a transaction. */
    const burst = (count: number): void => {
      const commands: string[] = [];
      for (let i = 0; i < count; i++) {
        const offset = crypto.randomInt(VOLUME_BYTES / BLOCK) * BLOCK;
        const data = crypto.randomBytes(BLOCK);
        const source = path.join(dir, `w${writes.length}`);
        fs.writeFileSync(source, data);
        commands.push('-c', `write -s ${source} ${offset} 64k`);
        writes.push({ offset, data });
      }
      execFileSync('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${nbd}/v`, ...commands]);
      ok('seal', '--wait');
    };
    let up: ChildProcess | undefined;
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
        '60000',
        '--archive',
        path.join(dir, 'archive'),
        '--archive-batch-ms',
        '50',
        '--journal-max',
        '512K',
      ]);
      burst(1);
      burst(4); // seqs 2..5, one transaction
      const log = ok('log', '--json')
        .split('\n')
        .filter((line) => line.trim() !== '')
        .map((line) => JSON.parse(line) as { seq: number; time: string });
      const timeOf = (seq: number): string => {
        const entry = log.find((e) => e.seq === seq);
        assert.ok(entry, `seq ${seq} in the log`);
        return entry.time;
      };
      // Just before the capture time of seq 4 (the log prints µs): the state after seq 3.
      const micros = (iso: string): bigint =>
        BigInt(Date.parse(iso.replace(/\.\d{6}Z$/, '.000Z'))) * 1000n +
        BigInt(/\.(\d{6})Z$/.exec(iso)?.[1] ?? '0');
      const before4 = micros(timeOf(4)) - 1n;
      assert.ok(before4 >= micros(timeOf(3)), 'seqs 3 and 4 are at least 1 µs apart');
      const at = formatTimeNs(before4 * 1000n);
      // Push seqs 1..5 out of the journal (512 KiB) once the archive has them.
      for (let i = 0; i < 6; i++) burst(4);
      await until(
        'the journal dropped seqs 1..5 and the archive has everything',
        () => {
          const retention = JSON.parse(ok('retention', '--json')) as { oldestSeq: number };
          const archive = JSON.parse(ok('archive', 'status', '--json')) as {
            archivedThroughSeq: number;
          };
          return retention.oldestSeq > 5 && archive.archivedThroughSeq === writes.length;
        },
        30_000,
      );

      const snapshot = rewind('snapshot', 'mid', '--at', at);
      assert.equal(snapshot.status, 0, snapshot.err);
      assert.match(snapshot.out, /snapshot mid at seq 3;/);
      assert.match(snapshot.err, /seq 3 is older than the journal/);
      const file = path.join(dir, 'mid.img');
      execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/v@mid`, file], { timeout: 60_000 });
      assert.ok(fs.readFileSync(file).equals(replay(3)), 'the view at seq 3 equals the model');
    } finally {
      up?.kill('SIGTERM');
      if (up) await new Promise((resolve) => up?.once('exit', resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
