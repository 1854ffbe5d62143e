// An outage of the agent-manager link, through a proxy the test can cut and heal:
// - while the link is down, sealed segments wait in the spool (status shows the backlog);
// - when the spool bound is reached the agent runs degraded: writes still succeed, only the dirty
//   map records them, status says degraded;
// - when the link returns the backlog ships in order, then one resync logs the dirty regions and
//   per-write logging resumes; the history at the end equals production; points inside the window
//   without per-write history are refused, and points before and after it rebuild exactly.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { ExportBackend } from '../../src/nbd/backend.js';
import type { LogEntry } from '../../src/manager/index.js';
import { startAgent, startManager, type Running } from '../../src/runtime/up.js';
import { rng } from '../support/model.js';
import { until } from '../support/process.js';

const KiB = 1024;
const SIZE = 8 * 1024 * KiB;

/** A TCP proxy that can drop every connection and refuse new ones (cut) until healed. */
class Proxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  cut = false;

  async start(target: number): Promise<number> {
    this.server = net.createServer((client) => {
      if (this.cut) {
        client.destroy();
        return;
      }
      const upstream = net.connect(target, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('close', () => this.sockets.delete(s));
        s.on('error', () => undefined);
      }
      client.pipe(upstream).pipe(client);
      client.on('close', () => upstream.destroy());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    return (this.server?.address() as net.AddressInfo).port;
  }

  drop(): void {
    this.cut = true;
    for (const s of this.sockets) s.destroy();
  }

  async close(): Promise<void> {
    this.drop();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

function write(e: ExportBackend, offset: number, data: Buffer): Promise<number> {
  return new Promise((resolve) => e.write(offset, data, false, resolve));
}

test('outage: backlog in the spool, degraded mode when it is full, then ship, resync and resume', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-outage-'));
  const any = { host: '127.0.0.1', port: 0 };
  const proxy = new Proxy();
  const running: Running[] = [];
  try {
    const manager = await startManager({
      dataDir: path.join(dir, 'm'),
      listen: any,
      nbd: any,
      http: any,
      token: 't',
      apiToken: 'a',
      quiet: true,
    });
    running.push(manager);
    const port = await proxy.start(manager.linkAddress.port);
    const agentRun = await startAgent({
      dataDir: path.join(dir, 'a'),
      nbd: any,
      manager: { host: '127.0.0.1', port },
      token: 't',
      volumes: [{ name: 'v', sizeBytes: SIZE }],
      sealBytes: 128 * KiB,
      sealMs: 50,
      spoolBytes: 1024 * KiB,
      quiet: true,
    });
    running.push(agentRun);
    const agent = agentRun.agent!;
    const m = manager.manager!;
    const e = agent.exports()[0] as ExportBackend;
    const random = rng(7);
    const model = Buffer.alloc(SIZE);
    const put = async (offset: number, length: number): Promise<void> => {
      const data = random.bytes(length);
      assert.equal(await write(e, offset, data), 0, 'every write succeeds, whatever the link does');
      data.copy(model, offset);
    };
    await until('agent connects', () => m.agentConnected);
    for (let i = 0; i < 8; i++) await put(i * 64 * KiB, 64 * KiB);
    const before = await m.seal(true);
    const modelBefore = Buffer.from(model);

    // Link down: segments pile up in the spool.
    proxy.drop();
    await until('agent notices the outage', () => !m.agentConnected);
    for (let i = 0; i < 6; i++) await put(1024 * KiB + i * 64 * KiB, 64 * KiB);
    await until('segments wait in the spool', () => agent.status().sealedPending > 0);
    assert.equal(agent.status().mode, 'logging');
    const backlog = agent.status();
    // Past the spool bound: degraded, and the writes still succeed.
    for (let i = 0; i < 40; i++)
      await put(2048 * KiB + random.int(SIZE - 2048 * KiB - 64 * KiB), 64 * KiB);
    assert.equal(agent.status().mode, 'degraded');
    await new Promise((r) => setTimeout(r, 5));
    const duringDegraded = new Date().toISOString(); // after degraded writes, before the resync
    await new Promise((r) => setTimeout(r, 5));
    const degradedSeq = agent.status().seqCaptured;
    assert.ok(
      agent.status().spoolBytes <= 1024 * KiB + 128 * KiB,
      `the spool stays bounded (${agent.status().spoolBytes})`,
    );
    assert.ok(
      backlog.seqCaptured <= degradedSeq,
      'no seq is consumed by degraded writes beyond the logged ones',
    );

    // Link back: the backlog ships, then the resync, then per-write logging again.
    proxy.cut = false;
    await until('agent reconnects', () => m.agentConnected);
    await until('degraded mode ends', () => agent.status().mode === 'logging', 60_000);
    await put(0, 4 * KiB); // logged per write again
    const end = await m.seal(true);
    const entries: LogEntry[] = [];
    for await (const entry of m.log({})) entries.push(entry);
    assert.deepEqual(
      entries.map((x) => x.seq),
      entries.map((_, i) => i + 1),
      'seqs are gap-free',
    );
    const resync = entries.filter((x) => x.resync);
    assert.ok(resync.length > 0, 'the degraded writes came back as a resync');
    const last = entries[entries.length - 1] as LogEntry;
    assert.equal(last.resync, false, 'the write after the resync is logged per write');
    assert.equal(end.seqLast, last.seq);
    const viewAt = async (seq: number): Promise<Buffer> => {
      const name = `at${seq}`;
      const view = await m.createView(name, 'snapshot', String(seq));
      const image = view.read(0, 0, SIZE);
      await m.removeView(name);
      return image;
    };
    assert.ok(
      (await viewAt(last.seq)).equals(model),
      'the history at the end equals the model (and production)',
    );
    assert.ok(fs.readFileSync(path.join(dir, 'a', 'production', 'v.img')).equals(model));
    assert.ok(
      (await viewAt(before.seqLast)).equals(modelBefore),
      'the point before the outage rebuilds exactly',
    );
    const firstResync = resync[0] as LogEntry;
    await assert.rejects(
      m.createView('inside', 'snapshot', String(firstResync.seq)),
      /inside a resync/,
    );
    // A time inside the window without per-write history is refused too, and says so.
    await assert.rejects(
      m.createView('inside-time', 'snapshot', duringDegraded),
      /falls in a window without per-write history/,
    );
  } finally {
    for (const r of running.reverse()) await r.close();
    await proxy.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
