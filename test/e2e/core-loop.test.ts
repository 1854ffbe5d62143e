// The core loop against the independent model: random histories of writes, zeroes and trims over two
// volumes with random seal points, through the agent's write path, shipped and applied by the
// manager; every seq rebuilds byte-identically, including views opened before later transactions
// were applied, and after a restart.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { startUp, type Running } from '../../src/runtime/up.js';
import { ModelVolumeSet, randomHistory, rng, type ModelWrite } from '../support/model.js';

const SIZES = [1024 * 1024, 512 * 1024];

function call(fn: (done: (errno: number) => void) => void): Promise<void> {
  return new Promise((resolve, reject) =>
    fn((errno) => (errno === 0 ? resolve() : reject(new Error(`errno ${errno}`)))),
  );
}

async function start(dataDir: string): Promise<Running> {
  const running = await startUp({
    dataDir,
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    volumes: [
      { name: 'a', sizeBytes: SIZES[0] as number },
      { name: 'b', sizeBytes: SIZES[1] as number },
    ],
    sealBytes: 256 * 1024,
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

async function submit(exports: ExportBackend[], w: ModelWrite): Promise<void> {
  const e = exports[w.volume] as ExportBackend;
  if (w.kind === 'write') await call((d) => e.write(w.offset, w.data as Buffer, false, d));
  else if (w.kind === 'zero') await call((d) => e.writeZeroes(w.offset, w.length, false, d));
  else await call((d) => e.trim(w.offset, w.length, false, d));
}

async function checkAllSeqs(running: Running, history: ModelWrite[], label: string): Promise<void> {
  const manager = running.manager!;
  const model = new ModelVolumeSet(SIZES);
  for (let seq = 0; seq <= history.length; seq++) {
    if (seq > 0) model.apply(history[seq - 1] as ModelWrite);
    const name = `${label}-${seq}`;
    const view = await manager.createView(name, 'snapshot', String(seq));
    for (let v = 0; v < SIZES.length; v++) {
      const got = view.read(v, 0, SIZES[v] as number);
      assert.ok(
        got.equals(model.image(v)),
        `${label}: volume ${v} at seq ${seq} differs from the model`,
      );
    }
    await manager.removeView(name);
  }
}

test('every seq of random histories rebuilds byte-identically, before and after restart', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-core-'));
  let running: Running | undefined;
  try {
    for (const seed of [1, 2, 3]) {
      fs.rmSync(dir, { recursive: true, force: true });
      running = await start(dir);
      const random = rng(seed);
      const history = randomHistory(random, SIZES, 60, { maxLength: 96 * 1024 });
      const exports = running.agent!.exports();
      // A view opened early must not move while later transactions are applied under it.
      let early: { seq: number; images: Buffer[]; name: string } | undefined;
      const model = new ModelVolumeSet(SIZES);
      for (const w of history) {
        await submit(exports, w);
        model.apply(w);
        if (random.bool(0.1)) await running.manager!.seal(true);
        if (!early && w.seq >= 20) {
          await running.manager!.seal(true);
          const view = await running.manager!.createView('early', 'snapshot', String(w.seq));
          early = { seq: w.seq, images: SIZES.map((_, v) => model.image(v)), name: view.name };
        }
      }
      await running.manager!.seal(true);
      assert.equal(running.manager!.seqCommitted(), history.length);
      const earlyView = running.manager!.views.get('early')!;
      for (let v = 0; v < SIZES.length; v++)
        assert.ok(
          earlyView.read(v, 0, SIZES[v] as number).equals(early!.images[v] as Buffer),
          `early view moved (seed ${seed})`,
        );
      // Production equals the model's final image.
      for (let v = 0; v < SIZES.length; v++)
        assert.ok(
          fs.readFileSync(running.agent!.volumes[v]!.path).equals(model.image(v)),
          `production differs (seed ${seed})`,
        );
      await checkAllSeqs(running, history, `s${seed}`);
      await running.close();
      running = await start(dir);
      assert.equal(running.manager!.seqCommitted(), history.length, 'history survives a restart');
      const reopened = running.manager!.views.get('early')!;
      for (let v = 0; v < SIZES.length; v++)
        assert.ok(
          reopened.read(v, 0, SIZES[v] as number).equals(early!.images[v] as Buffer),
          'early view after restart',
        );
      await checkAllSeqs(running, history, `r${seed}`);
      await running.close();
      running = undefined;
    }
  } finally {
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a clone takes writes in its overlay, never in production or the replica', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-clone-'));
  const running = await start(dir);
  try {
    const exports = running.agent!.exports();
    await call((d) => exports[0]!.write(0, Buffer.alloc(4096, 1), false, d));
    await running.manager!.seal(true);
    const clone = await running.manager!.createView('c', 'clone', '1');
    const cloneExport = running.manager!.exports().find((e) => e.name === 'a@c')!;
    assert.equal(cloneExport.readOnly, false);
    await call((d) => cloneExport.write(0, Buffer.alloc(4096, 9), true, d));
    assert.ok(clone.read(0, 0, 4096).equals(Buffer.alloc(4096, 9)));
    assert.ok(
      fs
        .readFileSync(running.agent!.volumes[0]!.path)
        .subarray(0, 4096)
        .equals(Buffer.alloc(4096, 1)),
      'production untouched',
    );
    const snap = await running.manager!.createView('s', 'snapshot', '1');
    assert.ok(snap.read(0, 0, 4096).equals(Buffer.alloc(4096, 1)), 'history untouched');
    const snapExport = running.manager!.exports().find((e) => e.name === 'a@s')!;
    assert.equal(snapExport.readOnly, true);
  } finally {
    await running.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('points that are not committed or not parseable are refused with a reason', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-points-'));
  const running = await start(dir);
  try {
    await assert.rejects(running.manager!.createView('x', 'snapshot', '5'), /not committed yet/);
    await assert.rejects(
      running.manager!.createView('y', 'snapshot', 'next blue moon'),
      /not a seq/,
    );
    await assert.rejects(running.manager!.createView('bad name!', 'snapshot', '0'), /invalid/);
    const view = await running.manager!.createView('zero', 'snapshot', '0');
    assert.equal(view.seq, 0);
  } finally {
    await running.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
