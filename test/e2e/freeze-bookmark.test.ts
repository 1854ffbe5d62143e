// Application-consistent bookmarks through the CLI:
// - the proof: a file written just before `rewind bookmark NAME --freeze DIR` is in a snapshot at
//   the bookmark (real ext4 on nbdfuse + loop over a real `rewind up`), and that snapshot is a
//   clean filesystem (e2fsck -fn passes with no journal to replay);
// - the thaw happens whatever fails: a seal that is never committed (the frozen window's bound),
//   Ctrl-C, a failing pre hook; hooks run in order with what they are told (against a stand-in
//   API that records what it was asked, so the failures can be made to happen).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  blockDeviceSkipReason,
  isFrozen,
  loopOverFile,
  loopOverNbd,
  run,
  runStatus,
} from '../support/blockdev.js';
import { BIN, freePort, startUpProcess } from '../support/process.js';

const skip = blockDeviceSkipReason([
  'nbdfuse',
  'nbdcopy',
  'losetup',
  'mkfs.ext4',
  'e2fsck',
  'debugfs',
  'fsfreeze',
  'fusermount3',
  'mount',
  'umount',
]);

/** `rewind ARGS` run asynchronously (the stand-in API lives in this process), with its output. */
function rewind(
  server: string,
  args: string[],
  options: { onStarted?: (pid: number) => void } = {},
): Promise<{ status: number | null; signal: string | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, REWIND_SERVER: server },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  if (child.pid !== undefined) options.onStarted?.(child.pid);
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 60_000);
  return new Promise((resolve) =>
    child.once('close', (status, signal) => {
      clearTimeout(killer);
      resolve({ status, signal, stdout, stderr });
    }),
  );
}

test(
  'a bookmark with --freeze holds a file written just before it (ext4 on nbdfuse + loop)',
  { skip },
  async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-freeze-'));
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    const [nbd, httpPort] = [await freePort(), await freePort()];
    const server = `http://127.0.0.1:${httpPort}`;
    const up = await startUpProcess([
      '--data',
      path.join(dir, 'data'),
      '--nbd',
      `127.0.0.1:${nbd}`,
      '--http',
      `127.0.0.1:${httpPort}`,
      '--volume',
      'fs:64M',
      '--seal-ms',
      '200',
    ]);
    let attached: Awaited<ReturnType<typeof loopOverNbd>> | undefined;
    let mounted = false;
    try {
      attached = await loopOverNbd(path.join(dir, 'fuse'), `nbd://127.0.0.1:${nbd}/fs`);
      await run('mkfs.ext4', ['-q', '-F', attached.loop]);
      await run('mount', [attached.loop, mnt]);
      mounted = true;
      const content = 'written just before the bookmark\n'.repeat(3000);
      await fsp.writeFile(path.join(mnt, 'fresh.txt'), content); // no fsync: in the page cache
      const taken = await rewind(server, ['bookmark', 'app', '--freeze', mnt]);
      assert.equal(taken.status, 0, taken.stderr);
      assert.match(taken.stdout, /^bookmark @app = seq \d+ \(.*\); .* frozen \d+ ms\n$/);
      assert.equal(await isFrozen(mnt), false, 'thawed after the bookmark');

      // Without a freeze, a bookmark right after a write is only as good as the page cache.
      await fsp.writeFile(path.join(mnt, 'unfrozen.txt'), 'not flushed yet\n');
      assert.equal((await rewind(server, ['bookmark', 'plain', '--wait'])).status, 0);

      const image = path.join(dir, 'app.img');
      assert.equal((await rewind(server, ['snapshot', 's', '--at', '@app'])).status, 0);
      await run('nbdcopy', [`nbd://127.0.0.1:${nbd}/fs@s`, image]);
      const check = await runStatus('e2fsck', ['-fn', image]);
      assert.equal(check.status, 0, `the frozen point is a clean filesystem: ${check.stdout}`);
      assert.equal(await run('debugfs', ['-R', 'cat /fresh.txt', image]), content);

      const plainImage = path.join(dir, 'plain.img');
      assert.equal((await rewind(server, ['snapshot', 'p', '--at', '@plain'])).status, 0);
      await run('nbdcopy', [`nbd://127.0.0.1:${nbd}/fs@p`, plainImage]);
      const plain = await runStatus('debugfs', ['-R', 'cat /unfrozen.txt', plainImage]);
      t.diagnostic(
        `without --freeze the file written just before was ${plain.stdout === 'not flushed yet\n' ? 'there (written back in time)' : 'missing'}`,
      );
    } finally {
      if (mounted) await runStatus('umount', [mnt]);
      await attached?.detach();
      const exited = new Promise((r) => up.once('exit', r));
      up.kill('SIGTERM');
      await exited;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

/** A stand-in for the API: seal answers (or never does), bookmarks are recorded. */
interface StandIn {
  url: string;
  sealCalls: number;
  frozenAtSeal: boolean[];
  bookmarks: unknown[];
  close: () => Promise<void>;
}

async function standIn(mountpoint: string, sealAnswers: boolean): Promise<StandIn> {
  const state: Omit<StandIn, 'url' | 'close'> = { sealCalls: 0, frozenAtSeal: [], bookmarks: [] };
  const stalled: http.ServerResponse[] = [];
  const server = http.createServer((request, response) => {
    let body = '';
    request.on('data', (c: Buffer) => (body += c.toString()));
    request.on('end', () => {
      void (async () => {
        if (request.url === '/api/seal') {
          state.sealCalls += 1;
          state.frozenAtSeal.push(await isFrozen(mountpoint));
          if (!sealAnswers) {
            stalled.push(response); // never answered
            return;
          }
          response.setHeader('content-type', 'application/json');
          response.end(JSON.stringify({ seqLast: 7, committed: 7 }));
          return;
        }
        if (request.url === '/api/bookmarks') {
          state.bookmarks.push(JSON.parse(body));
          response.statusCode = 201;
          response.setHeader('content-type', 'application/json');
          response.end(JSON.stringify({ name: 'b', seq: 7, time: '2026-12-01T00:00:00.000000Z' }));
          return;
        }
        response.statusCode = 404;
        response.end('{}');
      })();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  return Object.assign<Omit<StandIn, 'url' | 'close'>, Pick<StandIn, 'url' | 'close'>>(state, {
    url: `http://127.0.0.1:${port}`,
    close: async () => {
      for (const response of stalled) response.destroy();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  });
}

test(
  'the thaw happens whatever fails: an uncommitted seal, Ctrl-C, a failing pre hook; hooks run in order',
  { skip },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-thaw-'));
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    const loop = await loopOverFile(path.join(dir, 'fs.img'), 64 << 20);
    let mounted = false;
    const hookLog = path.join(dir, 'hooks.log');
    const hooks = [
      '--pre',
      `echo "pre $REWIND_HOOK $REWIND_BOOKMARK" >> ${hookLog}`,
      '--post',
      `echo "post $REWIND_BOOKMARK_RESULT \${REWIND_BOOKMARK_SEQ:-none}" >> ${hookLog}`,
    ];
    const readLog = (): string[] => {
      const lines = fs.existsSync(hookLog) ? fs.readFileSync(hookLog, 'utf8').trim() : '';
      fs.rmSync(hookLog, { force: true });
      return lines ? lines.split('\n') : [];
    };
    try {
      await run('mkfs.ext4', ['-q', '-F', loop]);
      await run('mount', [loop, mnt]);
      mounted = true;

      // Everything answers: pre, frozen seal, thaw, bookmark at the sealed seq, post.
      let api = await standIn(mnt, true);
      const ok = await rewind(api.url, ['bookmark', 'b', '--freeze', mnt, ...hooks]);
      await api.close();
      assert.equal(ok.status, 0, ok.stderr);
      assert.deepEqual(api.frozenAtSeal, [true], 'frozen while the seal runs');
      assert.deepEqual(api.bookmarks, [{ name: 'b', at: '7' }], 'the bookmark names the seal');
      assert.deepEqual(readLog(), ['pre pre b', 'post ok 7']);
      assert.equal(await isFrozen(mnt), false);

      // The seal is never committed: the bound thaws, no bookmark, post told it failed.
      api = await standIn(mnt, false);
      const startedMs = Date.now();
      const late = await rewind(api.url, [
        'bookmark',
        'b',
        '--freeze',
        mnt,
        '--freeze-ms',
        '1500',
        ...hooks,
      ]);
      const elapsedMs = Date.now() - startedMs;
      await api.close();
      assert.equal(late.status, 1);
      assert.match(late.stderr, /^rewind: no bookmark taken: .* within --freeze-ms 1500/m);
      assert.ok(elapsedMs < 6000, `gave up after ${elapsedMs} ms`);
      assert.deepEqual(api.frozenAtSeal, [true]);
      assert.deepEqual(api.bookmarks, []);
      assert.deepEqual(readLog(), ['pre pre b', 'post failed none']);
      assert.equal(await isFrozen(mnt), false, 'thawed after the bound');

      // Ctrl-C while frozen: thawed, post run, exit status 130.
      api = await standIn(mnt, false);
      let pid = 0;
      const result = rewind(api.url, ['bookmark', 'b', '--freeze', mnt, ...hooks], {
        onStarted: (p) => (pid = p),
      });
      for (let waited = 0; api.sealCalls === 0 || api.frozenAtSeal.length === 0; waited += 20) {
        assert.ok(waited < 20_000, 'the seal is asked for');
        await new Promise((r) => setTimeout(r, 20));
      }
      process.kill(pid, 'SIGINT');
      const interrupted = await result;
      await api.close();
      assert.equal(interrupted.status, 130, interrupted.stderr);
      assert.match(interrupted.stderr, /interrupted by SIGINT/);
      assert.deepEqual(readLog(), ['pre pre b', 'post failed none']);
      assert.equal(await isFrozen(mnt), false, 'thawed after Ctrl-C');

      // A failing pre hook: nothing frozen, no seal, post still runs (it undoes pre).
      api = await standIn(mnt, true);
      const refused = await rewind(api.url, [
        'bookmark',
        'b',
        '--freeze',
        mnt,
        '--pre',
        'exit 3',
        '--post',
        `echo "post $REWIND_BOOKMARK_RESULT" >> ${hookLog}`,
      ]);
      await api.close();
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /--pre hook failed: .*exit status 3/);
      assert.equal(api.sealCalls, 0);
      assert.deepEqual(readLog(), ['post failed']);
      assert.equal(await isFrozen(mnt), false);
    } finally {
      if (mounted) {
        await runStatus('fsfreeze', ['-u', mnt]);
        await runStatus('umount', [mnt]);
      }
      await runStatus('losetup', ['-d', loop]);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
