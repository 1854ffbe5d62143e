// Losing the manager's history: a real agent whose manager comes back empty (its data directory
// lost) resyncs every volume, and the new manager records the seqs it lost as a history gap:
// after it the newest point equals production and the model byte for byte, new writes keep being
// protected, and points in the gap are refused. An agent older than its manager (restored from an
// old copy of its data directory) is refused with a typed error and changes nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { startAgent, startManager, type Running } from '../../src/runtime/up.js';
import { rng, type ModelWrite, replay, type Rng } from '../support/model.js';
import { until } from '../support/process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZES = [3 * MiB, 1 * MiB];
const TOKEN = 'link-token';
const any = { host: '127.0.0.1', port: 0 };

function call(fn: (done: (errno: number) => void) => void): Promise<void> {
  return new Promise((resolve, reject) =>
    fn((errno) => (errno === 0 ? resolve() : reject(new Error(`errno ${errno}`)))),
  );
}

/** Writes through the agent's production exports one at a time, so seqs follow the model's. */
class Load {
  readonly writes: ModelWrite[] = [];
  constructor(
    private readonly exports: ExportBackend[],
    private readonly random: Rng,
  ) {}

  /** `count` random writes and zeroes; the first takes seq `seqFirst`. */
  async run(count: number, seqFirst: number): Promise<void> {
    for (let i = 0; i < count; i++) {
      const volume = this.random.int(SIZES.length);
      const size = SIZES[volume] as number;
      const length = (1 + this.random.int(16)) * 4 * KiB;
      const offset = this.random.int((size - length) / (4 * KiB)) * 4 * KiB;
      const target = this.exports[volume] as ExportBackend;
      const seq = seqFirst + i;
      if (this.random.int(8) === 0) {
        await call((done) => target.writeZeroes(offset, length, false, done));
        this.writes.push({ seq, volume, kind: 'zero', offset, length });
      } else {
        const data = this.random.bytes(length);
        await call((done) => target.write(offset, data, false, done));
        this.writes.push({ seq, volume, kind: 'write', offset, length, data });
      }
    }
  }
}

async function images(running: Running, point: string): Promise<Buffer[]> {
  const manager = running.manager!;
  const name = `at-${point}-${Date.now()}`;
  const view = await manager.createView(name, 'snapshot', point);
  const bytes = SIZES.map((size, volume) => view.read(volume, 0, size));
  await manager.removeView(name);
  return bytes;
}

function assertEqualImages(actual: Buffer[], expected: Buffer[], what: string): void {
  for (const [volume, bytes] of expected.entries())
    assert.ok((actual[volume] as Buffer).equals(bytes), `${what}: volume ${volume} differs`);
}

function production(dataDir: string): Buffer[] {
  return ['db', 'logs'].map((name) =>
    fs.readFileSync(path.join(dataDir, 'production', `${name}.img`)),
  );
}

test('a manager that lost its history is resynced by the agent; the gap is refused, the rest equals the model', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-manager-lost-'));
  const running: Running[] = [];
  try {
    const first = await startManager({
      dataDir: path.join(dir, 'm1'),
      listen: any,
      nbd: any,
      http: any,
      token: TOKEN,
      apiToken: 'api',
      quiet: true,
    });
    running.push(first);
    const port = first.linkAddress.port;
    const agentDir = path.join(dir, 'a');
    const agentRun = await startAgent({
      dataDir: agentDir,
      nbd: any,
      manager: { host: '127.0.0.1', port },
      token: TOKEN,
      volumes: [
        { name: 'db', sizeBytes: SIZES[0] as number },
        { name: 'logs', sizeBytes: SIZES[1] as number },
      ],
      sealBytes: 256 * KiB,
      sealMs: 100,
      quiet: true,
    });
    running.push(agentRun);
    const agent = agentRun.agent!;
    const load = new Load(agent.exports(), rng(4242));
    await load.run(60, 1);
    await until('the agent connected', () => first.manager!.status().agentConnected);
    await first.manager!.seal(true);
    await until('the agent has every write acknowledged', () => agent.seqCommitted === 60);

    // The backup host is lost: its manager stops and its data directory is deleted. The agent
    // goes on writing into its spool, then a fresh manager comes up on the same address.
    await first.close();
    running.splice(running.indexOf(first), 1);
    fs.rmSync(path.join(dir, 'm1'), { recursive: true, force: true });
    await load.run(40, 61);
    await until('the writes made meanwhile are sealed', () => agent.status().sealedPending > 0);
    const second = await startManager({
      dataDir: path.join(dir, 'm2'),
      listen: { host: '127.0.0.1', port },
      nbd: any,
      http: any,
      token: TOKEN,
      apiToken: 'api',
      quiet: true,
    });
    running.push(second);
    const manager = second.manager!;
    await until(
      'the resync for the lost history is logged',
      () => agent.lastResync?.reason === 'manager lost history',
    );
    const resync = agent.lastResync!;
    assert.ok(resync.seqFirst > 100, 'the resync comes after every write the agent logged');
    // Every region of both volumes, zero ones too (1 MiB regions: 3 + 1).
    assert.equal(resync.records, 4);
    await until('the resync is committed', () => manager.status().seqCommitted >= resync.seqLast);

    const latest = await images(second, 'latest');
    assertEqualImages(latest, production(agentDir), 'the newest point against production');
    assertEqualImages(
      latest,
      replay(SIZES, load.writes, 100),
      'the newest point against the model',
    );
    assert.equal((await images(second, String(resync.seqLast))).length, 2);
    // The seqs the new manager never received are refused by name, as is a time before them.
    for (const seq of [1, 60, 61, resync.seqFirst - 1])
      await assert.rejects(manager.createView(`gap-${seq}`, 'snapshot', String(seq)), (error) => {
        assert.equal((error as { code: string }).code, 'REWIND_POINT_INVALID');
        assert.match(
          (error as Error).message,
          new RegExp(`history gap: seqs 1\\.\\.${resync.seqFirst - 1} were lost`),
        );
        return true;
      });
    await assert.rejects(
      manager.createView('inside', 'snapshot', String(resync.seqFirst)),
      // A fresh manager's history begins with that resync: it starts at its end.
      new RegExp(`before the history starts \\(seq ${resync.seqLast}\\)`),
    );

    // Per-write history goes on after the resync and equals the model at every new point.
    await load.run(30, resync.seqLast + 1);
    const { seqLast } = await manager.seal(true);
    assert.equal(seqLast, resync.seqLast + 30);
    for (const point of [resync.seqLast, resync.seqLast + 1, resync.seqLast + 17, seqLast])
      assertEqualImages(
        await images(second, String(point)),
        replay(SIZES, load.writes, point),
        `seq ${point}`,
      );
    assertEqualImages(await images(second, 'latest'), production(agentDir), 'production at last');
    assert.equal(agent.status().failure, undefined, 'the agent reports no failure');
  } finally {
    for (const r of running.reverse()) await r.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an agent older than its manager (an old copy of its data directory) is refused, typed', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-agent-behind-'));
  const running: Running[] = [];
  try {
    const managerRun = await startManager({
      dataDir: path.join(dir, 'm'),
      listen: any,
      nbd: any,
      http: any,
      token: TOKEN,
      apiToken: 'api',
      quiet: true,
    });
    running.push(managerRun);
    const manager = managerRun.manager!;
    const agentDir = path.join(dir, 'a');
    const options = {
      dataDir: agentDir,
      nbd: any,
      manager: { host: '127.0.0.1', port: managerRun.linkAddress.port },
      token: TOKEN,
      volumes: [
        { name: 'db', sizeBytes: SIZES[0] as number },
        { name: 'logs', sizeBytes: SIZES[1] as number },
      ],
      sealBytes: 256 * KiB,
      sealMs: 100,
      quiet: true,
    };
    let agentRun = await startAgent(options);
    const random = rng(77);
    await new Load(agentRun.agent!.exports(), random).run(5, 1);
    await until('the agent connected', () => manager.status().agentConnected);
    await manager.seal(true);
    await agentRun.close();
    fs.cpSync(agentDir, path.join(dir, 'old-copy'), { recursive: true });
    agentRun = await startAgent({ ...options, volumes: [] });
    await new Load(agentRun.agent!.exports(), random).run(10, 6);
    await until('the agent reconnected', () => manager.status().agentConnected);
    await manager.seal(true);
    await agentRun.close();
    const committed = manager.status().seqCommitted;
    assert.equal(committed, 15);

    fs.rmSync(agentDir, { recursive: true, force: true });
    fs.cpSync(path.join(dir, 'old-copy'), agentDir, { recursive: true });
    agentRun = await startAgent({ ...options, volumes: [] });
    running.push(agentRun);
    const old = agentRun.agent!;
    await until('the old agent is refused', () => old.status().failure !== undefined);
    assert.match(
      old.status().failure ?? '',
      /^REWIND_AGENT_BEHIND: .*committed seq 15.*ends at seq 5/,
    );
    assert.equal(manager.status().agentConnected, false, 'the old agent has no session');
    assert.equal(manager.status().seqCommitted, committed, 'nothing of the manager changed');
  } finally {
    for (const r of running.reverse()) await r.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('a manager restored from an older copy keeps its points before the gap; the agent resyncs the rest', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-manager-old-'));
  const running: Running[] = [];
  const managerOptions = (port: number) => ({
    dataDir: path.join(dir, 'm'),
    listen: { host: '127.0.0.1', port },
    nbd: any,
    http: any,
    token: TOKEN,
    apiToken: 'api',
    quiet: true,
  });
  try {
    let managerRun = await startManager(managerOptions(0));
    running.push(managerRun);
    const port = managerRun.linkAddress.port;
    const agentDir = path.join(dir, 'a');
    const agentRun = await startAgent({
      dataDir: agentDir,
      nbd: any,
      manager: { host: '127.0.0.1', port },
      token: TOKEN,
      volumes: [
        { name: 'db', sizeBytes: SIZES[0] as number },
        { name: 'logs', sizeBytes: SIZES[1] as number },
      ],
      sealBytes: 256 * KiB,
      sealMs: 100,
      quiet: true,
    });
    running.push(agentRun);
    const agent = agentRun.agent!;
    const load = new Load(agent.exports(), rng(99));
    await load.run(25, 1);
    const first = managerRun.manager!;
    await until('the agent connected', () => first.status().agentConnected);
    await first.seal(true);
    // A copy of the manager's data directory at seq 25 (the manager stopped for it).
    await managerRun.close();
    running.splice(running.indexOf(managerRun), 1);
    fs.cpSync(path.join(dir, 'm'), path.join(dir, 'copy'), { recursive: true });
    managerRun = await startManager(managerOptions(port));
    running.push(managerRun);
    await load.run(25, 26);
    // The agent reconnects with a back-off: a seal asked before that has no agent to ask.
    const restarted = managerRun.manager!;
    await until('the agent reconnected', () => restarted.status().agentConnected);
    await restarted.seal(true);
    await until('the agent has every write acknowledged', () => agent.seqCommitted === 50);
    await managerRun.close();
    running.splice(running.indexOf(managerRun), 1);
    fs.rmSync(path.join(dir, 'm'), { recursive: true, force: true });
    fs.cpSync(path.join(dir, 'copy'), path.join(dir, 'm'), { recursive: true });

    managerRun = await startManager(managerOptions(port));
    running.push(managerRun);
    const manager = managerRun.manager!;
    await until('the resync for the lost history is committed', () => {
      const resync = agent.lastResync;
      return (
        resync?.reason === 'manager lost history' && manager.status().seqCommitted >= resync.seqLast
      );
    });
    const resync = agent.lastResync!;
    assert.equal(resync.seqFirst, 51);
    for (const point of [0, 1, 13, 25])
      assertEqualImages(
        await images(managerRun, String(point)),
        replay(SIZES, load.writes, point),
        `seq ${point}, before the gap`,
      );
    await assert.rejects(
      manager.createView('gap', 'snapshot', '26'),
      /seq 26 lies in a history gap: seqs 26\.\.50 were lost/,
    );
    await assert.rejects(manager.createView('inside', 'snapshot', '52'), (error) => {
      assert.match((error as Error).message, /inside a resync/);
      assert.match((error as { hint: string }).hint, /choose seq 25 or seq 54/);
      return true;
    });
    assertEqualImages(
      await images(managerRun, String(resync.seqLast)),
      replay(SIZES, load.writes, 50),
      'the end of the resync',
    );
    assertEqualImages(await images(managerRun, 'latest'), production(agentDir), 'production');
  } finally {
    for (const r of running.reverse()) await r.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
