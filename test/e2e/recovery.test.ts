// Recovery tools against the independent model, through the real agent write path and manager:
// - stepping a snapshot forward, back and to points always shows the model at its seq;
// - restoring production to a random point makes it equal the model there, and restoring to the
//   seq before that restore undoes it exactly; a partial restore changes exactly its ranges;
// - diff and history agree with the model; bookmarks resolve and survive a restart;
// - an exported image equals the model byte for byte, is sparse, and its SHA-256 matches.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import type { ByteRange } from '../../src/core/index.js';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { blockHistory, diff } from '../../src/manager/queries.js';
import { startUp, type Running } from '../../src/runtime/up.js';
import { randomHistory, replay, rng, type ModelWrite, type Rng } from '../support/model.js';
import { apiEnv } from '../support/process.js';

const SIZES = [1024 * 1024, 512 * 1024];
const NAMES = ['a', 'b'];

async function start(dataDir: string): Promise<Running> {
  const running = await startUp({
    dataDir,
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    volumes: NAMES.map((name, i) => ({ name, sizeBytes: SIZES[i] as number })),
    sealBytes: 256 * 1024,
    sealMs: 60_000,
    quiet: true,
  });
  for (let waited = 0; !running.manager!.agentConnected; waited += 10) {
    assert.ok(waited < 10_000, 'agent connects to the manager');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return running;
}

function call(fn: (done: (errno: number) => void) => void): Promise<void> {
  return new Promise((resolve, reject) =>
    fn((errno) => (errno === 0 ? resolve() : reject(new Error(`errno ${errno}`)))),
  );
}

/** Submits the writes through the agent's exports and waits until they are committed. */
async function play(running: Running, writes: ModelWrite[]): Promise<void> {
  const exports = running.agent!.exports();
  for (const w of writes) {
    const e = exports[w.volume] as ExportBackend;
    if (w.kind === 'write') await call((d) => e.write(w.offset, w.data as Buffer, false, d));
    else if (w.kind === 'zero') await call((d) => e.writeZeroes(w.offset, w.length, false, d));
    else await call((d) => e.trim(w.offset, w.length, false, d));
  }
  await running.manager!.seal(true);
}

function production(dir: string, volume: number): Buffer {
  return fs.readFileSync(path.join(dir, 'production', `${NAMES[volume]}.img`));
}

function readView(running: Running, name: string, volume: number): Buffer {
  return running.manager!.views.get(name)!.read(volume, 0, SIZES[volume] as number);
}

function randomRanges(random: Rng, size: number, count: number): ByteRange[] {
  const out: ByteRange[] = [];
  for (let i = 0; i < count; i++) {
    const offset = random.int(size - 1);
    out.push({ offset, length: 1 + random.int(Math.min(64 * 1024, size - offset)) });
  }
  return out;
}

test('stepping a snapshot forward, back and to points always equals the model', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-step-'));
  let running: Running | undefined;
  try {
    for (const seed of [11, 12]) {
      fs.rmSync(dir, { recursive: true, force: true });
      running = await start(dir);
      const random = rng(seed);
      const history = randomHistory(random, SIZES, 80, { maxLength: 64 * 1024 });
      await play(running, history);
      const manager = running.manager!;
      let seq = random.int(history.length + 1);
      await manager.createView('s', 'snapshot', String(seq));
      for (let step = 0; step < 40; step++) {
        const choice = random.int(3);
        let result;
        if (choice === 0 && seq < history.length)
          result = await manager.stepView('s', {
            forward: 1 + random.int(Math.min(10, history.length - seq)),
          });
        else if (choice === 1 && seq > 0)
          result = await manager.stepView('s', { back: 1 + random.int(Math.min(10, seq)) });
        else result = await manager.stepView('s', { to: String(random.int(history.length + 1)) });
        assert.equal(result.from, seq);
        // The writes crossed are exactly those between the two points, in seq order.
        const low = Math.min(result.from, result.to);
        const high = Math.max(result.from, result.to);
        assert.deepEqual(
          result.crossed.map((e) => e.seq),
          history.filter((w) => w.seq > low && w.seq <= high).map((w) => w.seq),
        );
        seq = result.to;
        const model = replay(SIZES, history, seq);
        for (let v = 0; v < SIZES.length; v++)
          assert.ok(
            readView(running, 's', v).equals(model[v] as Buffer),
            `seed ${seed} step ${step}: volume ${v} at seq ${seq} differs from the model`,
          );
      }
      // Stepping past the end or before the start is refused and leaves the view where it was.
      await assert.rejects(
        manager.stepView('s', { forward: history.length + 1 }),
        /past the last committed/,
      );
      await assert.rejects(manager.stepView('s', { back: seq + 1 }), /before the history starts/);
      assert.equal(manager.views.get('s')!.seq, seq);
      // A clone with writes of its own steps only with discardWrites.
      const clone = await manager.createView('c', 'clone', '5');
      const cloneExport = manager.exports().find((e) => e.name === 'a@c')!;
      await call((d) => cloneExport.write(0, Buffer.alloc(4096, 0x77), false, d));
      await assert.rejects(manager.stepView('c', { forward: 1 }), /writes of its own/);
      await manager.stepView('c', { forward: 1, discardWrites: true });
      assert.ok(
        clone.read(0, 0, SIZES[0] as number).equals(replay(SIZES, history, 6)[0] as Buffer),
        'the clone is the history at seq 6 once its writes are dropped',
      );
      // The step is durable: after a restart the snapshot is where it was stepped to.
      await running.close();
      running = await start(dir);
      assert.equal(running.manager!.views.get('s')!.seq, seq);
      assert.ok(readView(running, 's', 0).equals(replay(SIZES, history, seq)[0] as Buffer));
      await running.close();
      running = undefined;
    }
  } finally {
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('restore to a random point equals the model; restoring to the seq before it undoes it; partial restores change only their ranges', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-restore-'));
  let running: Running | undefined;
  try {
    running = await start(dir);
    const manager = running.manager!;
    const random = rng(21);
    const history = randomHistory(random, SIZES, 60, { maxLength: 96 * 1024 });
    await play(running, history);
    const end = history.length;
    const before = [production(dir, 0), production(dir, 1)];
    assert.ok(
      before[0]!.equals(replay(SIZES, history, end)[0] as Buffer),
      'production equals the model before any restore',
    );

    // Dry run: the ranges written after the point, nothing changed.
    const point = 1 + random.int(end - 1);
    const plan = await manager.restorer.plan({ volumes: ['a', 'b'], at: String(point) });
    const touched = (v: number): ByteRange[] =>
      history
        .filter((w) => w.seq > point && w.volume === v)
        .map((w) => ({ offset: w.offset, length: w.length }));
    assert.equal(plan.volumes[0]!.bytes, mergedBytes(touched(0)));
    assert.ok(production(dir, 0).equals(before[0]!), 'a dry run changes nothing');

    // Full restore of both volumes.
    const started = await manager.restorer.start({ volumes: ['a', 'b'], at: String(point) });
    const done = await manager.restorer.settled(started.id);
    assert.equal(done.state, 'done', done.message ?? '');
    assert.equal(done.seqBefore, end);
    const atPoint = replay(SIZES, history, point);
    for (let v = 0; v < 2; v++)
      assert.ok(
        production(dir, v).equals(atPoint[v] as Buffer),
        `volume ${v} equals the model at seq ${point}`,
      );
    assert.equal(running.agent!.restoring, undefined, 'the volumes are online again');
    // The restore is in the history: the history at its end equals production.
    await manager.seal(true);
    const snap = await manager.createView(
      'after-restore',
      'snapshot',
      String(manager.seqCommitted()),
    );
    assert.ok(snap.read(0, 0, SIZES[0] as number).equals(atPoint[0] as Buffer));
    await manager.removeView('after-restore');

    // Undo: restore to the seq just before the restore.
    const undo = await manager.restorer.settled(
      (await manager.restorer.start({ volumes: ['a', 'b'], at: String(done.seqBefore) })).id,
    );
    assert.equal(undo.state, 'done', undo.message ?? '');
    for (let v = 0; v < 2; v++)
      assert.ok(
        production(dir, v).equals(before[v] as Buffer),
        `volume ${v} is back to its state before the first restore`,
      );

    // Partial restore: only the given ranges of one volume change.
    const ranges = randomRanges(random, SIZES[0] as number, 3);
    const partialPoint = random.int(end);
    const partial = await manager.restorer.settled(
      (await manager.restorer.start({ volumes: ['a'], at: String(partialPoint), ranges })).id,
    );
    assert.equal(partial.state, 'done', partial.message ?? '');
    const expected = Buffer.from(before[0] as Buffer);
    const old = replay(SIZES, history, partialPoint)[0] as Buffer;
    for (const r of ranges) old.copy(expected, r.offset, r.offset, r.offset + r.length);
    assert.ok(production(dir, 0).equals(expected), 'exactly the requested ranges were restored');
    assert.ok(production(dir, 1).equals(before[1] as Buffer), 'the other volume is untouched');

    // From a clone: repair a range with the clone's current content, including its own writes.
    const clone = await manager.createView('fix', 'clone', String(partialPoint));
    const cloneExport = manager.exports().find((e) => e.name === 'a@fix')!;
    await call((d) => cloneExport.write(8192, Buffer.alloc(4096, 0x42), false, d));
    await call((d) => cloneExport.write(12288, Buffer.alloc(512, 0x43), false, d));
    // rewind diff --clone: exactly the ranges the clone wrote itself, merged; the other volume none.
    const cloneDiff = await promisify(execFile)(
      process.execPath,
      ['bin/rewind.js', 'diff', 'a', '--clone', 'fix', '--json'],
      { env: apiEnv(running), timeout: 20_000 },
    );
    assert.deepEqual(JSON.parse(cloneDiff.stdout), {
      clone: 'fix',
      seq: partialPoint,
      ranges: [{ offset: 8192, length: 4096 + 512 }],
      bytes: 4608,
    });
    assert.deepEqual(manager.restorer.cloneRanges('b', 'fix').ranges, []);
    assert.throws(() => manager.restorer.cloneRanges('a', 'nope'), /No snapshot or clone|no/i);
    const fromClone = await manager.restorer.settled(
      (
        await manager.restorer.start({
          volumes: ['a'],
          fromClone: 'fix',
          ranges: [{ offset: 0, length: 65536 }],
        })
      ).id,
    );
    assert.equal(fromClone.state, 'done', fromClone.message ?? '');
    assert.ok(
      production(dir, 0)
        .subarray(0, 65536)
        .equals(clone.read(0, 0, 65536)),
      'the range holds the clone content',
    );
    assert.ok(
      production(dir, 0).subarray(65536).equals(expected.subarray(65536)),
      'nothing else changed',
    );

    // Bad requests are refused with a reason and change nothing.
    await assert.rejects(manager.restorer.start({ volumes: ['nope'], at: '1' }), /no volume named/);
    await assert.rejects(
      manager.restorer.start({ volumes: ['a'], at: String(manager.seqCommitted() + 100) }),
      /not committed/,
    );
    await assert.rejects(
      manager.restorer.start({
        volumes: ['a'],
        at: '1',
        ranges: [{ offset: SIZES[0] as number, length: 1 }],
      }),
      /not inside volume/,
    );
    await assert.rejects(
      manager.restorer.start({ volumes: ['a', 'b'], at: '1', ranges: [{ offset: 0, length: 1 }] }),
      /one volume/,
    );
  } finally {
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('diff, history, bookmarks and image export agree with the model', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-queries-'));
  let running: Running | undefined;
  try {
    running = await start(dir);
    const random = rng(31);
    const history = randomHistory(random, SIZES, 50, { maxLength: 64 * 1024 });
    await play(running, history);
    const manager = running.manager!;
    for (let i = 0; i < 10; i++) {
      const a = random.int(history.length + 1);
      const b = random.int(history.length + 1);
      const result = await diff(manager, 'a', String(a), String(b));
      const expected = history.filter(
        (w) => w.volume === 0 && w.seq > Math.min(a, b) && w.seq <= Math.max(a, b),
      );
      assert.equal(
        result.bytes,
        mergedBytes(expected.map((w) => ({ offset: w.offset, length: w.length }))),
      );
      // Outside the listed ranges the two points are byte-identical.
      const [imageA, imageB] = [
        replay(SIZES, history, a)[0] as Buffer,
        replay(SIZES, history, b)[0] as Buffer,
      ];
      let at = 0;
      for (const r of [...result.ranges, { offset: SIZES[0] as number, length: 0 }]) {
        assert.ok(
          imageA.subarray(at, r.offset).equals(imageB.subarray(at, r.offset)),
          `diff ${a}..${b}: bytes ${at}..${r.offset} differ but are not listed`,
        );
        at = r.offset + r.length;
      }
      const range = randomRanges(random, SIZES[0] as number, 1)[0] as ByteRange;
      const listed = await blockHistory(manager, 'a', range);
      const touching = history
        .filter(
          (w) =>
            w.volume === 0 &&
            w.offset < range.offset + range.length &&
            range.offset < w.offset + w.length,
        )
        .map((w) => w.seq)
        .reverse();
      assert.deepEqual(
        listed.map((e) => e.seq),
        touching,
        'history lists every write touching the range, newest first',
      );
    }
    const mark = await manager.addBookmark('before-trouble', '20');
    assert.equal(mark.seq, 20);
    await assert.rejects(manager.addBookmark('before-trouble', '3'), /already exists/);
    await assert.rejects(manager.createView('x', 'snapshot', '@nope'), /no bookmark/);
    await running.close();
    running = await start(dir);
    assert.deepEqual(
      running.manager!.bookmarks().map((b) => [b.name, b.seq]),
      [['before-trouble', 20]],
    );
    const view = await running.manager!.createView('at-mark', 'snapshot', '@before-trouble');
    assert.equal(view.seq, 20);

    // Export at the bookmark: equal to the model, sparse, with the right checksum.
    // A name inside the export directory (DATA/exports by default).
    const file = 'a-at-20.img';
    const job = await running.manager!.exporter.settled(
      (
        await running.manager!.exporter.start({
          volume: 'a',
          at: '@before-trouble',
          file,
          overwrite: false,
        })
      ).id,
    );
    assert.equal(job.state, 'done', job.message ?? '');
    assert.equal(job.file, path.join(fs.realpathSync(dir), 'exports', file));
    const image = fs.readFileSync(job.file);
    const model = replay(SIZES, history, 20)[0] as Buffer;
    assert.ok(image.equals(model), 'the exported image equals the model');
    assert.equal(job.sha256, createHash('sha256').update(model).digest('hex'));
    await assert.rejects(
      running.manager!.exporter.start({ volume: 'a', at: '20', file, overwrite: false }),
      /exists/,
    );
    assert.equal(fs.existsSync(`${job.file}.partial`), false);
  } finally {
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

function mergedBytes(ranges: ByteRange[]): number {
  const sorted = [...ranges].sort((x, y) => x.offset - y.offset);
  let total = 0;
  let end = -1;
  for (const r of sorted) {
    const start = Math.max(r.offset, end);
    const stop = r.offset + r.length;
    if (stop > start) total += stop - start;
    end = Math.max(end, stop);
  }
  return total;
}
