// The manager's disk fills up (its data directory on a small tmpfs): that is backpressure, not a
// failure. Client writes keep succeeding, the agent keeps its segments and reports the manager as
// busy, nothing half-stored is committed; once space is freed (the tmpfs grows) the agent's
// resends are stored and applied, and the history at the last seq equals production.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { startAgent, startManager, type Running } from '../../src/runtime/up.js';
import { rng } from '../support/model.js';
import { until } from '../support/process.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;
const skip = process.getuid?.() !== 0 ? 'needs root to mount a small tmpfs' : false;

test(
  'manager disk full: backpressure, nothing lost, everything lands once space is back',
  { skip, timeout: 180_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-mfull-'));
    const small = path.join(dir, 'manager-disk');
    fs.mkdirSync(small);
    const mounted = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=6m', 'tmpfs', small], {
      timeout: 10_000,
    });
    assert.equal(mounted.status, 0, `mount tmpfs: ${mounted.stderr}`);
    const running: Running[] = [];
    const any = { host: '127.0.0.1', port: 0 };
    try {
      const managerRun = await startManager({
        dataDir: path.join(small, 'm'),
        listen: any,
        nbd: any,
        http: any,
        token: 't',
        apiToken: 'a',
        // The disk fills, not the journal: the 'auto' limit (half of this 6 MiB tmpfs) would
        // drop the oldest writes first, at the limit, before the disk is ever full.
        retention: { journalMax: '1T' },
        quiet: true,
      });
      running.push(managerRun);
      const agentRun = await startAgent({
        dataDir: path.join(dir, 'a'),
        nbd: any,
        manager: { host: '127.0.0.1', port: managerRun.linkAddress.port },
        token: 't',
        volumes: [{ name: 'v', sizeBytes: SIZE }],
        sealBytes: 1 * MiB,
        sealMs: 50,
        quiet: true,
      });
      running.push(agentRun);
      const manager = managerRun.manager!;
      const agent = agentRun.agent!;
      await until('agent connects', () => manager.agentConnected);
      const e = agent.exports()[0] as ExportBackend;
      const random = rng(3);
      const model = Buffer.alloc(SIZE);
      for (let i = 0; i < 24; i++) {
        const offset = i * MiB;
        const data = random.bytes(MiB);
        const errno = await new Promise<number>((resolve) => e.write(offset, data, false, resolve));
        assert.equal(errno, 0, 'client writes succeed while the manager is out of space');
        data.copy(model, offset);
      }
      await agent.seal();
      await until('the manager reports backpressure', () =>
        String((manager.status() as { failure: string | null }).failure).includes('manager busy'),
      );
      const stuck = manager.status() as {
        seqCommitted: number;
        seqCaptured: number;
        sealedPending: number;
      };
      assert.ok(stuck.seqCommitted < stuck.seqCaptured, 'not everything could be committed');
      assert.ok(stuck.sealedPending > 0, 'the agent keeps the segments it could not ship');
      // Space comes back: the resends land.
      assert.equal(
        spawnSync('mount', ['-o', 'remount,size=256m', small], { timeout: 10_000 }).status,
        0,
      );
      await until(
        'everything is committed',
        () => {
          const s = manager.status() as { seqCommitted: number };
          return s.seqCommitted === 24;
        },
        90_000,
      );
      const view = await manager.createView('end', 'snapshot', '24');
      assert.ok(
        view.read(0, 0, SIZE).equals(model),
        'the history at the last seq equals production',
      );
      assert.ok(fs.readFileSync(path.join(dir, 'a', 'production', 'v.img')).equals(model));
      const entries: number[] = [];
      for await (const entry of manager.log({})) entries.push(entry.seq);
      assert.deepEqual(
        entries,
        Array.from({ length: 24 }, (_, i) => i + 1),
        'each write committed exactly once',
      );
      await until(
        'the busy report clears',
        () => (manager.status() as { failure: string | null }).failure === null,
        10_000,
      );
    } finally {
      for (const r of running.reverse()) await r.close().catch(() => undefined);
      spawnSync('umount', [small], { timeout: 10_000 });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
