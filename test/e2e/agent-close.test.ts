// Closing the agent while it cleans its dirty map: the cleaning fdatasyncs production first and
// then writes the map, so close() must wait for it before it closes those files. Before it did,
// the map was written through a closed descriptor (EBADF, an unhandled rejection that killed
// `rewind up` on SIGTERM; with the number reused, a write into whatever file had it by then).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { DirtyMap } from '../../src/agent/dirty-map.js';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { startUp, type Running } from '../../src/runtime/up.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

async function start(dataDir: string): Promise<Running> {
  const running = await startUp({ dataDir, nbd: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'v', sizeBytes: SIZE }], sealBytes: MiB, sealMs: 60_000, quiet: true });
  for (let waited = 0; !running.manager!.agentConnected; waited += 10) {
    assert.ok(waited < 10_000, 'agent connects to the manager');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return running;
}

function write(e: ExportBackend, offset: number, data: Buffer): Promise<number> {
  return new Promise((resolve) => e.write(offset, data, false, resolve));
}

test('closing the agent while it cleans its dirty map waits for the cleaning; the map stays valid', { timeout: 60_000 }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-agent-close-'));
  const rejections: unknown[] = [];
  const onRejection = (reason: unknown): void => {
    rejections.push(reason);
  };
  process.on('unhandledRejection', onRejection);
  let running: Running | undefined;
  try {
    const dataDir = path.join(dir, 'data');
    running = await start(dataDir);
    const e = running.agent!.exports()[0] as ExportBackend;
    for (const region of [1, 5, 9]) assert.equal(await write(e, region * MiB + 512, Buffer.alloc(4096, region)), 0);
    const { committed } = await running.manager!.seal(true);
    for (let waited = 0; running.agent!.seqCommitted < committed; waited += 10) {
      assert.ok(waited < 10_000, 'the agent hears of the commit');
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    // The regions are committed; once quiet (2 s) they may be cleaned. Start a cleaning by hand
    // (as the agent's timer would) and close at once, while its fdatasync is under way.
    await new Promise((resolve) => setTimeout(resolve, 2100));
    (running.agent as unknown as { cleanDirty(): void }).cleanDirty();
    await running.close();
    running = undefined;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(rejections, [], 'no unhandled rejection');
    // The cleaning finished before the files closed: the map on disk has the regions cleared.
    const map = DirtyMap.open(path.join(dataDir, 'agent', 'dirty', 'v.map'), SIZE);
    try {
      assert.deepEqual(map.markedRegions(), [], 'the committed, quiet regions were cleared on disk');
    } finally {
      map.close();
    }
  } finally {
    process.off('unhandledRejection', onRejection);
    await running?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
