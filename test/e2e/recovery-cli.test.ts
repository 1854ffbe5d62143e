// The recovery workflow through the `rewind` CLI against a real `rewind up` process and real NBD
// clients: bookmark, step, history, diff, export, restore (dry run, real, undo), and restore
// safety: a connected client is disconnected by a forced restore, new connections are refused
// with the reason, and a kill -9 in the middle of a restore is followed, after the restart, by
// the restore completing.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BIN, freePort, startUpProcess } from '../support/process.js';

const MiB = 1024 * 1024;
const missing = ['qemu-io', 'nbdcopy', 'nbdinfo'].filter(
  (t) => spawnSync('which', [t]).status !== 0,
);
const skip = missing.length > 0 ? `missing ${missing.join(', ')}` : false;
// Debian's python3-libnbd is installed for the system interpreter (a pyenv one may come first on PATH).
const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const hasLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { timeout: 10_000 }).status === 0;
const skipSafety = skip !== false ? skip : !hasLibnbd ? 'missing python3-libnbd' : false;

function cliResult(
  http: number,
  ...args: string[]
): { status: number; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
    timeout: 90_000,
    maxBuffer: 64 << 20,
  });
  return {
    status: result.status ?? -1,
    stdout: result.stdout.toString(),
    stderr: result.stderr.toString(),
  };
}

function cli(http: number, ...args: string[]): string {
  const result = cliResult(http, ...args);
  assert.equal(result.status, 0, `rewind ${args.join(' ')} failed: ${result.stderr}`);
  return result.stdout;
}

function qemuWrite(nbd: number, pattern: number, offset: number, length: number): void {
  execFileSync(
    'qemu-io',
    ['-f', 'raw', `nbd://127.0.0.1:${nbd}/v`, '-c', `write -P ${pattern} ${offset} ${length}`],
    { timeout: 60_000 },
  );
}

function copyExport(nbd: number, name: string, file: string): Buffer {
  execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/${name}`, file], { timeout: 60_000 });
  return fs.readFileSync(file);
}

async function stop(
  child: ChildProcess | undefined,
  signal: NodeJS.Signals = 'SIGTERM',
): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await exited;
}

test(
  'recovery through the CLI: bookmark, step, history, diff, export, restore and its undo',
  { skip },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rcli-'));
    const SIZE = 8 * MiB;
    const [nbd, http] = [await freePort(), await freePort()];
    let child: ChildProcess | undefined;
    try {
      child = await startUpProcess([
        '--data',
        path.join(dir, 'data'),
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--volume',
        `v:${SIZE}`,
        '--seal-ms',
        '100',
        '--export-dir',
        path.join(dir, 'exports'),
      ]);
      qemuWrite(nbd, 0xa1, 0, MiB); // seq 1
      qemuWrite(nbd, 0xb2, MiB, MiB); // seq 2
      cli(http, 'seal', '--wait');
      assert.match(cli(http, 'bookmark', 'good'), /@good = seq 2/);
      qemuWrite(nbd, 0xc3, 0, 512 * 1024); // seq 3: the "damage"
      cli(http, 'seal', '--wait');
      const model = (seq: number): Buffer => {
        const image = Buffer.alloc(SIZE);
        if (seq >= 1) image.fill(0xa1, 0, MiB);
        if (seq >= 2) image.fill(0xb2, MiB, 2 * MiB);
        if (seq >= 3) image.fill(0xc3, 0, 512 * 1024);
        return image;
      };
      assert.match(cli(http, 'bookmarks'), /@good\tseq 2/);

      // Step a snapshot through the history, checking the export after each move.
      cli(http, 'snapshot', 's', '--at', '1');
      const forward = JSON.parse(cli(http, 'step', 's', '--forward', '2', '--json')) as {
        from: number;
        to: number;
        crossed: { seq: number }[];
      };
      assert.deepEqual(
        [forward.from, forward.to, forward.crossed.map((e) => e.seq)],
        [1, 3, [2, 3]],
      );
      assert.ok(copyExport(nbd, 'v@s', path.join(dir, 's3.img')).equals(model(3)));
      assert.match(cli(http, 'step', 's', '--back', '3'), /seq 3 -> 0 \(3 writes crossed\)/);
      assert.ok(copyExport(nbd, 'v@s', path.join(dir, 's0.img')).equals(model(0)));
      cli(http, 'step', 's', '--to', '@good');
      assert.ok(copyExport(nbd, 'v@s', path.join(dir, 's2.img')).equals(model(2)));
      const tooFar = cliResult(http, 'step', 's', '--forward', '100');
      assert.equal(tooFar.status, 1);
      assert.match(tooFar.stderr, /^rewind: .*past the last committed seq/);

      // Which writes touched the first 4 KiB, and what changed between two points.
      assert.deepEqual(
        (
          JSON.parse(cli(http, 'history', 'v', '--range', '0:4K', '--json')) as { seq: number }[]
        ).map((e) => e.seq),
        [3, 1],
      );
      const changed = JSON.parse(cli(http, 'diff', 'v', '--from', '1', '--to', '3', '--json')) as {
        ranges: { offset: number; length: number }[];
      };
      assert.deepEqual(changed.ranges, [
        { offset: 0, length: 512 * 1024 },
        { offset: MiB, length: MiB },
      ]);
      assert.match(
        cliResult(http, 'history', 'v', '--range', `${SIZE}:1`).stderr,
        /not inside volume v/,
      );

      // A full image at the bookmark: equal to the model, sparse, with the SHA-256 printed.
      // A name inside --export-dir; a path out of it is refused and nothing is written there.
      const file = path.join(dir, 'exports', 'good.img');
      const exported = cli(http, 'export', 'v', '--at', '@good', '--to', 'good.img');
      assert.match(exported, new RegExp(`^${file}: v at seq 2`));
      const outside = path.join(dir, 'outside.img');
      assert.match(
        cliResult(http, 'export', 'v', '--at', '@good', '--to', outside).stderr,
        /is outside the export directory/,
      );
      assert.equal(fs.existsSync(outside), false);
      assert.ok(fs.readFileSync(file).equals(model(2)));
      assert.match(
        exported,
        new RegExp(`sha256 ${createHash('sha256').update(model(2)).digest('hex')}`),
      );
      assert.ok(fs.statSync(file).blocks * 512 < SIZE, 'the image is sparse');

      // Restore production: dry run, then for real, then undo it.
      const plan = JSON.parse(
        cli(http, 'restore', 'v', '--at', '@good', '--dry-run', '--json'),
      ) as { bytes: number };
      assert.equal(plan.bytes, 512 * 1024);
      const production = path.join(dir, 'data', 'production', 'v.img');
      assert.ok(fs.readFileSync(production).equals(model(3)), 'a dry run changes nothing');
      const restored = cli(http, 'restore', 'v', '--at', '@good');
      assert.match(restored, /restore #1 done: v restored to history at seq 2/);
      assert.ok(fs.readFileSync(production).equals(model(2)), 'production is back at the bookmark');
      const before = (JSON.parse(cli(http, 'restores', '--json')) as { seqBefore: number }[])[0]
        ?.seqBefore;
      assert.equal(before, 3);
      cli(http, 'restore', 'v', '--at', String(before));
      assert.ok(
        fs.readFileSync(production).equals(model(3)),
        'restoring to the seq before the restore undoes it',
      );
      const refused = cliResult(http, 'restore', 'v', '--at', '9999');
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /not committed/);
    } finally {
      await stop(child);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

const READER = `
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
try:
    for i in range(100000):
        h.pread(4096, 0)
        time.sleep(0.005)
    print("never disconnected", flush=True)
except Exception as e:
    print("disconnected:", e, flush=True)
`;

test(
  'restore safety: clients disconnected, new ones refused, kill -9 mid-restore then the restart completes it',
  { skip: skipSafety },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rsafe-'));
    const SIZE = 256 * MiB;
    const [nbd, http] = [await freePort(), await freePort()];
    const args = [
      '--data',
      path.join(dir, 'data'),
      '--nbd',
      `127.0.0.1:${nbd}`,
      '--http',
      `127.0.0.1:${http}`,
      '--volume',
      `v:${SIZE}`,
      '--seal-ms',
      '200',
    ];
    let child: ChildProcess | undefined;
    let reader: ChildProcess | undefined;
    let restore: ChildProcess | undefined;
    try {
      child = await startUpProcess(args);
      qemuWrite(nbd, 0xaa, 0, SIZE);
      cli(http, 'seal', '--wait');
      cli(http, 'bookmark', 'good');
      qemuWrite(nbd, 0xbb, 0, SIZE);
      cli(http, 'seal', '--wait');
      let readerOut = '';
      reader = spawn(PYTHON, ['-c', READER, `nbd://127.0.0.1:${nbd}/v`], {
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      reader.stdout?.on('data', (c: Buffer) => (readerOut += c.toString()));
      for (let waited = 0; !readerOut.includes('connected'); waited += 20) {
        assert.ok(waited < 10_000, 'the reader connects');
        await new Promise((r) => setTimeout(r, 20));
      }
      // A client is connected: the restore needs --force, which disconnects it (without it the
      // restore is refused: test/e2e/restore-clients.test.ts).
      restore = spawn(process.execPath, [BIN, 'restore', 'v', '--at', '@good', '--force'], {
        env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
        stdio: 'ignore',
      });
      // Wait until the restore is writing.
      let status: { state: string; bytesDone: number } | undefined;
      for (
        let waited = 0;
        !(status && status.state === 'running' && status.bytesDone > 0);
        waited += 25
      ) {
        assert.ok(waited < 30_000, `the restore starts writing (${JSON.stringify(status)})`);
        await new Promise((r) => setTimeout(r, 25));
        const list = JSON.parse(cliResult(http, 'restores', '--json').stdout || '[]') as {
          state: string;
          bytesDone: number;
        }[];
        status = list[0];
      }
      for (let waited = 0; !readerOut.includes('disconnected'); waited += 20) {
        assert.ok(waited < 10_000, `the connected client is disconnected (${readerOut})`);
        await new Promise((r) => setTimeout(r, 20));
      }
      // libnbd prints the server's reason in its debug output only.
      const info = spawnSync('nbdinfo', [`nbd://127.0.0.1:${nbd}/v`], {
        timeout: 20_000,
        env: { ...process.env, LIBNBD_DEBUG: '1' },
      });
      assert.notEqual(info.status, 0, 'a new connection is refused during the restore');
      assert.match(info.stderr.toString(), /volume v is offline: production restore #1 is running/);
      await stop(child, 'SIGKILL');
      await stop(restore, 'SIGKILL');
      child = await startUpProcess(args);
      let final: { state: string; message: string | null } | undefined;
      for (let waited = 0; final?.state !== 'done'; waited += 100) {
        assert.ok(
          waited < 90_000,
          `the interrupted restore completes after the restart (${JSON.stringify(final)})`,
        );
        assert.notEqual(final?.state, 'failed', final?.message ?? '');
        await new Promise((r) => setTimeout(r, 100));
        final = (
          JSON.parse(cliResult(http, 'restores', '--json').stdout || '[]') as {
            state: string;
            message: string | null;
          }[]
        )[0];
      }
      const production = fs.readFileSync(path.join(dir, 'data', 'production', 'v.img'));
      assert.ok(
        production.equals(Buffer.alloc(SIZE, 0xaa)),
        'production equals the bookmarked point',
      );
      assert.equal(
        spawnSync('nbdinfo', [`nbd://127.0.0.1:${nbd}/v`], { timeout: 20_000 }).status,
        0,
        'the volume is online again',
      );
      // The history agrees: the last seq is the restored image.
      cli(http, 'seal', '--wait');
      const last = (JSON.parse(cli(http, 'status', '--json')) as { seqCommitted: number })
        .seqCommitted;
      cli(http, 'snapshot', 'end', '--at', String(last));
      assert.ok(
        copyExport(nbd, 'v@end', path.join(dir, 'end.img')).equals(production),
        'the history at the last seq equals production',
      );
    } finally {
      reader?.kill('SIGKILL');
      await stop(restore, 'SIGKILL');
      await stop(child);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
