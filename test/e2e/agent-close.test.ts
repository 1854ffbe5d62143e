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
  const running = await startUp({
    dataDir,
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    volumes: [{ name: 'v', sizeBytes: SIZE }],
    sealBytes: MiB,
    sealMs: 60_000,
    quiet: true,
  });
  for (let waited = 0; !running.manager!.agentConnected; waited += 10) {
    assert.ok(waited < 10_000, 'agent connects to the manager');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  return running;
}

function write(e: ExportBackend, offset: number, data: Buffer): Promise<number> {
  return new Promise((resolve) => e.write(offset, data, false, resolve));
}

test(
  'closing the agent while it cleans its dirty map waits for the cleaning; the map stays valid',
  { timeout: 60_000 },
  async () => {
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
      for (const region of [1, 5, 9])
        assert.equal(await write(e, region * MiB + 512, Buffer.alloc(4096, region)), 0);
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
        assert.deepEqual(
          map.markedRegions(),
          [],
          'the committed, quiet regions were cleared on disk',
        );
      } finally {
        map.close();
      }
    } finally {
      process.off('unhandledRejection', onRejection);
      await running?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

// An fsync that failed may have dropped writes the log holds, and Linux reports it once: the fsync
// close() makes afterwards succeeds without having written them. So a clean stop after the write
// path stopped must still leave the agent unclean, or the next start skips the resync that writes
// the dirty regions back (and a FLUSH after the restart would claim them durable).
test(
  'a clean stop after the write path stopped leaves the state unclean: the next start resyncs',
  { timeout: 60_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-agent-failed-close-'));
    let running: Running | undefined;
    try {
      const dataDir = path.join(dir, 'data');
      running = await start(dataDir);
      const e = running.agent!.exports()[0] as ExportBackend;
      for (const region of [2, 7])
        assert.equal(await write(e, region * MiB, Buffer.alloc(4096, region)), 0);
      // As the cleaning's fdatasync does when production's fsync fails.
      (running.agent as unknown as { pipeline: { fatal(error: unknown): void } }).pipeline.fatal(
        Object.assign(new Error('EIO: i/o error, fsync (injected)'), { code: 'EIO' }),
      );
      assert.equal(running.agent!.status().mode, 'failed');
      assert.equal(
        await write(e, 3 * MiB, Buffer.alloc(4096, 3)),
        5,
        'a write after the failure gets EIO',
      ); // NBD EIO = 5
      await running.close();
      running = undefined;
      const state = JSON.parse(
        fs.readFileSync(path.join(dataDir, 'agent', 'state.json'), 'utf8'),
      ) as { cleanShutdown: boolean };
      assert.equal(state.cleanShutdown, false, 'the stop after a failure is recorded as unclean');
      running = await start(dataDir);
      const resync = running.agent!.lastResync;
      assert.equal(resync?.reason, 'unclean stop', 'the restart resyncs');
      assert.ok(
        (resync?.records ?? 0) >= 2,
        `the dirty regions are logged again (${resync?.records} records)`,
      );
      assert.equal(running.agent!.status().mode, 'logging');
      const e2 = running.agent!.exports()[0] as ExportBackend;
      assert.equal(
        await write(e2, 4 * MiB, Buffer.alloc(4096, 4)),
        0,
        'the restarted agent takes writes',
      );
    } finally {
      await running?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
