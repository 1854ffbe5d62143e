// Resync: the agent logs the current content of regions whose history it cannot vouch for.
// - first protection of an image that already holds data;
// - restart after an unclean stop, where production may hold bytes the log never saw;
// - a production write that failed (ENOSPC on a full filesystem) after its record was logged.
// Each time the history at the resync's end must equal production byte for byte, points inside
// the resync are refused, and per-write history continues after it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { ExportBackend } from '../../src/nbd/backend.js';
import type { LogEntry } from '../../src/manager/index.js';
import { startUp, type Running } from '../../src/runtime/up.js';
import type { VolumeSpec } from '../../src/agent/agent.js';
import { rng } from '../support/model.js';

const MiB = 1024 * 1024;

async function start(dataDir: string, volumes: VolumeSpec[]): Promise<Running> {
  const running = await startUp({
    dataDir,
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    volumes,
    sealBytes: 2 * MiB,
    sealMs: 60_000,
    quiet: true,
  });
  for (
    let waited = 0;
    !(running.manager!.status() as { agentConnected: boolean }).agentConnected;
    waited += 10
  ) {
    assert.ok(waited < 10_000, 'agent connects to the manager');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return running;
}

function write(e: ExportBackend, offset: number, data: Buffer): Promise<number> {
  return new Promise((resolve) => e.write(offset, data, false, resolve));
}

async function log(running: Running): Promise<LogEntry[]> {
  const out: LogEntry[] = [];
  for await (const entry of running.manager!.log({})) out.push(entry);
  return out;
}

async function viewImage(running: Running, seq: number, sizeBytes: number): Promise<Buffer> {
  const name = `at-${seq}`;
  const view = await running.manager!.createView(name, 'snapshot', String(seq));
  const image = view.read(0, 0, sizeBytes);
  await running.manager!.removeView(name);
  return image;
}

const randomBytes = (seed: number, length: number): Buffer => rng(seed).bytes(length);

test('first protection of an existing image logs its data as a resync; history starts after it', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-resync-'));
  let running: Running | undefined;
  try {
    const SIZE = 8 * MiB;
    const image = path.join(dir, 'existing.img');
    const original = Buffer.alloc(SIZE);
    randomBytes(1, 300_000).copy(original, MiB + 4096); // region 1 only: the last chunk is all zero
    fs.writeFileSync(image, original);
    running = await start(path.join(dir, 'data'), [{ name: 'v', path: image }]);
    await running.manager!.seal(true);
    const entries = await log(running);
    // Region 1 as data, and the END segment's forced zero record for region 7; zero regions skipped.
    assert.deepEqual(
      entries.map((e) => [e.seq, e.kind, e.offset, e.length, e.resync]),
      [
        [1, 'write', MiB, MiB, true],
        [2, 'zero', 7 * MiB, MiB, true],
      ],
    );
    assert.ok(
      (await viewImage(running, 2, SIZE)).equals(original),
      'the history after the first sync equals the image',
    );
    await assert.rejects(
      running.manager!.createView('inside', 'snapshot', '1'),
      /before the history starts \(seq 2\)/,
    );
    // Per-write history continues after it.
    const exports = running.agent!.exports();
    const data = Buffer.alloc(8192, 0x5a);
    assert.equal(await write(exports[0] as ExportBackend, 3 * MiB, data), 0);
    await running.manager!.seal(true);
    const expected = Buffer.from(original);
    data.copy(expected, 3 * MiB);
    assert.ok((await viewImage(running, 3, SIZE)).equals(expected));
    assert.ok((await viewImage(running, 2, SIZE)).equals(original));
    // A clean restart resyncs nothing.
    await running.close();
    running = await start(path.join(dir, 'data'), []);
    await running.manager!.seal(true);
    assert.equal((await log(running)).length, 3);
  } finally {
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('after an unclean stop the dirty regions are resynced, so bytes the log never saw reach history', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-resync-'));
  let running: Running | undefined;
  try {
    const SIZE = 16 * MiB;
    const data = path.join(dir, 'data');
    running = await start(data, [{ name: 'v', sizeBytes: SIZE }]);
    const exports = running.agent!.exports();
    for (const [i, offset] of [0, 5 * MiB + 100, 9 * MiB].entries())
      assert.equal(
        await write(exports[0] as ExportBackend, offset, randomBytes(10 + i, 64 * 1024)),
        0,
      );
    await running.manager!.seal(true);
    await running.close();
    // What a crash leaves: a state not marked clean, and production bytes that reached the disk
    // without a log record (a write the agent never answered), inside a region marked dirty.
    const stateFile = path.join(data, 'agent', 'state.json');
    fs.writeFileSync(
      stateFile,
      JSON.stringify({ ...JSON.parse(fs.readFileSync(stateFile, 'utf8')), cleanShutdown: false }),
    );
    const production = path.join(data, 'production', 'v.img');
    const fd = fs.openSync(production, 'r+');
    fs.writeSync(fd, randomBytes(20, 20_000), 0, 20_000, 5 * MiB + 50_000);
    fs.closeSync(fd);
    running = await start(data, []);
    await running.manager!.seal(true);
    const entries = await log(running);
    assert.deepEqual(
      entries.slice(0, 3).map((e) => [e.seq, e.resync]),
      [
        [1, false],
        [2, false],
        [3, false],
      ],
    );
    const resync = entries.slice(3);
    assert.deepEqual(
      resync.map((e) => [e.offset, e.resync]),
      [
        [0, true],
        [5 * MiB, true],
        [9 * MiB, true],
      ],
      'the three dirty regions, in order',
    );
    const last = (entries[entries.length - 1] as LogEntry).seq;
    assert.ok(
      (await viewImage(running, last, SIZE)).equals(fs.readFileSync(production)),
      'history at the resync end equals production',
    );
    await assert.rejects(
      running.manager!.createView('inside', 'snapshot', String(last - 1)),
      /inside a resync/,
    );
  } finally {
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

const tmpfsSkip =
  process.getuid?.() !== 0
    ? 'needs root to mount a small tmpfs'
    : spawnSync('which', ['mount']).status !== 0
      ? 'missing mount'
      : false;

test(
  'a production write that fails with ENOSPC gets the error, and a resync brings history back to production',
  { skip: tmpfsSkip },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-resync-'));
    const small = path.join(dir, 'small');
    fs.mkdirSync(small);
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small], {
      timeout: 10_000,
    });
    assert.equal(mounted.status, 0, `mount tmpfs: ${mounted.stderr}`);
    let running: Running | undefined;
    try {
      const SIZE = 16 * MiB;
      const image = path.join(small, 'v.img');
      fs.closeSync(fs.openSync(image, 'w'));
      fs.truncateSync(image, SIZE); // sparse: 16 MiB of volume on a 4 MiB filesystem
      running = await start(path.join(dir, 'data'), [{ name: 'v', path: image }]);
      const e = running.agent!.exports()[0] as ExportBackend;
      const errnos: number[] = [];
      for (let i = 0; i < 8; i++) errnos.push(await write(e, i * MiB, randomBytes(30 + i, MiB)));
      assert.equal(errnos[0], 0, 'the first write fits');
      assert.ok(
        errnos.includes(28),
        `a write past the free space fails with ENOSPC (got ${errnos.join(',')})`,
      );
      // The write path keeps going for writes into space that exists.
      assert.equal(await write(e, 4096, Buffer.alloc(4096, 0xee)), 0);
      await running.manager!.seal(true);
      const status = running.manager!.status() as { mode: string; failure?: string };
      assert.equal(status.mode, 'logging', `not failed: ${status.failure ?? ''}`);
      const entries = await log(running);
      assert.ok(
        entries.some((entry) => entry.resync && entry.seq > 2),
        'the failed writes were followed by a resync',
      );
      const last = (entries[entries.length - 1] as LogEntry).seq;
      assert.ok(
        (await viewImage(running, last, SIZE)).equals(fs.readFileSync(image)),
        'history at the last seq equals production',
      );
    } finally {
      await running?.close();
      spawnSync('umount', [small], { timeout: 10_000 });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
