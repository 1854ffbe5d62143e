// The agent's spool disk fills up (its data directory on a small tmpfs, production elsewhere): a
// log append that hits ENOSPC is rolled back and the agent runs degraded instead of failing.
// Client writes keep succeeding; once space is back and the backlog has shipped, one resync logs
// the dirty regions, and the history at the last seq equals production.
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
  'spool disk full: the append is rolled back, the agent runs degraded, then resyncs',
  { skip, timeout: 180_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-sfull-'));
    const small = path.join(dir, 'agent-disk');
    fs.mkdirSync(small);
    assert.equal(
      spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small], { timeout: 10_000 })
        .status,
      0,
    );
    const running: Running[] = [];
    const any = { host: '127.0.0.1', port: 0 };
    try {
      const image = path.join(dir, 'v.img');
      fs.closeSync(fs.openSync(image, 'w'));
      fs.truncateSync(image, SIZE);
      const managerRun = await startManager({
        dataDir: path.join(dir, 'm'),
        listen: any,
        nbd: any,
        http: any,
        token: 't',
        apiToken: 'a',
        quiet: true,
      });
      running.push(managerRun);
      const manager = managerRun.manager!;
      // The manager is stopped from accepting (its link closed) so the spool has to hold everything.
      const agentRun = await startAgent({
        dataDir: path.join(small, 'a'),
        nbd: any,
        manager: { host: '127.0.0.1', port: 1 },
        token: 't',
        volumes: [{ name: 'v', path: image }],
        sealBytes: 512 * 1024,
        sealMs: 50,
        quiet: true,
      });
      running.push(agentRun);
      const agent = agentRun.agent!;
      const e = agent.exports()[0] as ExportBackend;
      const random = rng(5);
      const model = Buffer.alloc(SIZE);
      for (let i = 0; i < 12; i++) {
        const data = random.bytes(MiB);
        assert.equal(
          await new Promise<number>((resolve) => e.write(i * MiB, data, false, resolve)),
          0,
          'client writes succeed while the spool disk is full',
        );
        data.copy(model, i * MiB);
      }
      assert.equal(agent.status().mode, 'degraded', 'a full spool disk means degraded, not failed');
      assert.equal(agent.status().failure, undefined);
      assert.ok(fs.readFileSync(image).equals(model), 'production has every write');
      // Space back, and a manager to ship to: the backlog ships, then the resync.
      assert.equal(
        spawnSync('mount', ['-o', 'remount,size=256m', small], { timeout: 10_000 }).status,
        0,
      );
      await agentRun.close();
      running.pop();
      const again = await startAgent({
        dataDir: path.join(small, 'a'),
        nbd: any,
        manager: { host: '127.0.0.1', port: managerRun.linkAddress.port },
        token: 't',
        volumes: [{ name: 'v', path: image }],
        sealBytes: 512 * 1024,
        sealMs: 50,
        quiet: true,
      });
      running.push(again);
      await until(
        'the agent is logging again and everything is committed',
        () => {
          const s = manager.status() as {
            seqCommitted: number;
            seqCaptured: number;
            agentConnected: boolean;
          };
          return (
            again.agent!.status().mode === 'logging' &&
            s.agentConnected &&
            s.seqCommitted === again.agent!.status().seqCaptured &&
            s.seqCommitted > 0
          );
        },
        90_000,
      );
      const last = (manager.status() as { seqCommitted: number }).seqCommitted;
      const view = await manager.createView('end', 'snapshot', String(last));
      assert.ok(
        view.read(0, 0, SIZE).equals(model),
        'the history at the last seq equals production',
      );
    } finally {
      for (const r of running.reverse()) await r.close().catch(() => undefined);
      spawnSync('umount', [small], { timeout: 10_000 });
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
