// Starts that must not harm what is there: a second `rewind up` on a data directory (or on a
// production image) another one uses is refused at once, naming that process, and changes nothing,
// while the first keeps working with its history intact; a kill -9 leaves no stale lock. A start
// that fails (a bad volume list, a bad flag value, a port in use, a refused volume list) exits 1
// within seconds and leaves no data directory it created.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BIN, freePort, startUpProcess } from '../support/process.js';
import { ModelVolumeSet } from '../support/model.js';

const MiB = 1024 * 1024;
const SIZE = 4 * MiB;
/** What "at once" means for a refused or failed start, start-up of node included. */
const FAILED_START_MS_MAX = 5000;
const missing = ['qemu-io', 'nbdcopy'].filter((t) => spawnSync('which', [t]).status !== 0);
const skip = missing.length > 0 ? `missing ${missing.join(', ')}` : false;

/** Runs `rewind ARGS` to its end (killed after 3 x the limit), with its time and output. */
async function runToEnd(
  args: string[],
): Promise<{ status: number | null; stderr: string; elapsedMs: number }> {
  const startedMs = Date.now();
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const killer = setTimeout(() => child.kill('SIGKILL'), 3 * FAILED_START_MS_MAX);
  const status = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  clearTimeout(killer);
  return { status, stderr, elapsedMs: Date.now() - startedMs };
}

/** Every file under `dir` with its size and modification time (what a refused start must keep). */
function tree(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (at: string): void => {
    for (const name of fs.readdirSync(at).sort()) {
      const full = path.join(at, name);
      const stat = fs.statSync(full);
      if (stat.isDirectory()) walk(full);
      else out[path.relative(dir, full)] = `${stat.size} ${stat.mtimeMs}`;
    }
  };
  walk(dir);
  return out;
}

/**
 * The tree once two looks 3 s apart agree (at most 30 s): longer than the agent's 2 s of quiet
 * before it cleans a dirty region, so a clean still due cannot fall after the second look.
 */
async function settledTree(dir: string): Promise<Record<string, string>> {
  let last = tree(dir);
  for (let waitedMs = 0; waitedMs < 30_000; waitedMs += 3000) {
    await new Promise((r) => setTimeout(r, 3000));
    const now = tree(dir);
    if (JSON.stringify(now) === JSON.stringify(last)) return now;
    last = now;
  }
  assert.fail(`${dir} kept changing`);
}

function upArgs(data: string, nbd: number, http: number, ...volumes: string[]): string[] {
  const args = ['--data', data, '--nbd', `127.0.0.1:${nbd}`, '--http', `127.0.0.1:${http}`];
  for (const volume of volumes.length > 0 ? volumes : [`v:${SIZE}`]) args.push('--volume', volume);
  return [...args, '--seal-ms', '100'];
}

function cli(http: number, ...args: string[]): string {
  return execFileSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
    timeout: 30_000,
  }).toString();
}

function qemuWrite(nbd: number, pattern: number, offset: number, length: number): void {
  execFileSync(
    'qemu-io',
    ['-f', 'raw', `nbd://127.0.0.1:${nbd}/v`, '-c', `write -P ${pattern} ${offset} ${length}`],
    { timeout: 20_000 },
  );
}

function copyExport(nbd: number, name: string, file: string): Buffer {
  execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/${name}`, file], { timeout: 30_000 });
  return fs.readFileSync(file);
}

async function stop(child: ChildProcess | undefined, signal: NodeJS.Signals): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await exited;
}

function assertRefusedFast(
  result: { status: number | null; stderr: string; elapsedMs: number },
  pattern: RegExp,
  what: string,
): void {
  assert.equal(result.status, 1, `${what}: exit status 1 (${result.stderr})`);
  assert.ok(
    result.elapsedMs < FAILED_START_MS_MAX,
    `${what}: exited after ${result.elapsedMs} ms, not within ${FAILED_START_MS_MAX} ms`,
  );
  assert.match(result.stderr, pattern, what);
  const lines = result.stderr.split('\n').filter((l) => l.startsWith('rewind: '));
  assert.equal(lines.length, 1, `${what}: one error line (${result.stderr})`);
}

test(
  'a second rewind up on the same data directory is refused naming the first; the first keeps its history; kill -9 leaves no stale lock',
  { skip },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-lock-up-'));
    const data = path.join(dir, 'data');
    const [nbd, http] = [await freePort(), await freePort()];
    let first: ChildProcess | undefined;
    try {
      first = await startUpProcess(upArgs(data, nbd, http));
      const model = new ModelVolumeSet([SIZE]);
      qemuWrite(nbd, 0x11, 0, 64 * 1024);
      model.apply({ seq: 1, volume: 0, kind: 'write', offset: 0, length: 65536, data: fill(0x11) });
      cli(http, 'seal', '--wait');
      // The first process itself still writes for a moment (its dirty map is cleaned once the
      // region has been quiet 2 s): compare from when it has settled.
      const before = await settledTree(data);

      const second = await runToEnd(['up', ...upArgs(data, await freePort(), await freePort())]);
      assertRefusedFast(
        second,
        new RegExp(
          `data directory ${data} is in use by process ${first.pid} \\(.*up --data ${data}`,
        ),
        'the second start',
      );
      assert.deepEqual(tree(data), before, 'the refused start changed nothing in the directory');

      // The first still takes writes and commits them.
      qemuWrite(nbd, 0x22, MiB, 64 * 1024);
      model.apply({
        seq: 2,
        volume: 0,
        kind: 'write',
        offset: MiB,
        length: 65536,
        data: fill(0x22),
      });
      assert.match(cli(http, 'seal', '--wait'), /committed 2/);

      // kill -9: the lock goes with the process, the next start needs no cleaning up.
      await stop(first, 'SIGKILL');
      first = await startUpProcess(upArgs(data, nbd, http));
      cli(http, 'snapshot', 's1', '--at', '1');
      cli(http, 'snapshot', 's2', '--at', '2');
      assert.ok(copyExport(nbd, 'v@s2', path.join(dir, 's2.img')).equals(model.image(0)));
      const atOne = new ModelVolumeSet([SIZE]);
      atOne.apply({ seq: 1, volume: 0, kind: 'write', offset: 0, length: 65536, data: fill(0x11) });
      assert.ok(copyExport(nbd, 'v@s1', path.join(dir, 's1.img')).equals(atOne.image(0)));
    } finally {
      await stop(first, 'SIGTERM');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('a production image protected by one rewind up is refused to another', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-lock-img-'));
  const image = path.join(dir, 'prod.img');
  fs.writeFileSync(image, Buffer.alloc(SIZE));
  let first: ChildProcess | undefined;
  try {
    first = await startUpProcess(
      upArgs(path.join(dir, 'a'), await freePort(), await freePort(), `v:${image}`),
    );
    const other = path.join(dir, 'b');
    const second = await runToEnd([
      'up',
      ...upArgs(other, await freePort(), await freePort(), `v:${image}`),
    ]);
    assertRefusedFast(
      second,
      new RegExp(`production image ${image} \\(volume v\\) is in use by process ${first.pid}`),
      'the second protection of the image',
    );
    assert.equal(fs.existsSync(other), false, 'the refused start left no data directory');
  } finally {
    await stop(first, 'SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('failed starts exit 1 within seconds and leave no data directory they made', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-failstart-'));
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
  const taken = (blocker.address() as net.AddressInfo).port;
  try {
    const cases: { what: string; args: (data: string) => string[]; error: RegExp }[] = [
      {
        what: 'an invalid volume name',
        args: (data) => upArgs(data, 0, 0, 'bad name:4M'),
        error: /volume name "bad name" is invalid/,
      },
      {
        what: 'a volume given twice',
        args: (data) => upArgs(data, 0, 0, 'v:4M', 'v:8M'),
        error: /volume "v" is given twice/,
      },
      {
        what: 'an image that does not exist',
        args: (data) => upArgs(data, 0, 0, `v:${dir}/missing.img`),
        error: /production image .*missing\.img does not exist/,
      },
      {
        what: 'a bad --seal-ms',
        args: (data) => [...upArgs(data, 0, 0), '--seal-ms', 'soon'],
        error: /--seal-ms "soon" is not a number of milliseconds/,
      },
      {
        what: 'the NBD port in use',
        args: (data) => upArgs(data, taken, 0),
        error: new RegExp(`NBD address 127.0.0.1:${taken} \\(--nbd\\) is in use`),
      },
      {
        // The API listens last: the manager and the agent are open by then and must be closed.
        what: 'the HTTP port in use',
        args: (data) => upArgs(data, 0, taken),
        error: new RegExp(`HTTP API address 127.0.0.1:${taken} \\(--http\\) is in use`),
      },
      {
        what: 'a manager on a port in use',
        args: (data) => [
          'manager',
          '--data',
          data,
          '--token',
          't',
          '--listen',
          `127.0.0.1:${taken}`,
          '--nbd',
          '127.0.0.1:0',
          '--http',
          '127.0.0.1:0',
        ],
        error: /agent link address .* \(--listen\) is in use/,
      },
    ];
    for (const [i, c] of cases.entries()) {
      const data = path.join(dir, `data${i}`);
      const args = c.args(data);
      const result = await runToEnd(args[0] === 'manager' ? args : ['up', ...args]);
      assertRefusedFast(result, c.error, c.what);
      assert.equal(fs.existsSync(data), false, `${c.what}: no data directory left behind`);
    }

    // A refused volume list on an existing data directory: refused before anything is opened.
    const data = path.join(dir, 'existing');
    const first = await startUpProcess(upArgs(data, 0, 0, 'a:4M', 'b:4M'));
    await stop(first, 'SIGTERM');
    const before = tree(data);
    const changed = await runToEnd(['up', ...upArgs(data, 0, 0, 'a:4M')]);
    assertRefusedFast(changed, /volume list changed: b missing/, 'a volume left out');
    assert.deepEqual(tree(data), before, 'the refused volume list changed nothing');
  } finally {
    blocker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function fill(pattern: number): Buffer {
  return Buffer.alloc(64 * 1024, pattern);
}
