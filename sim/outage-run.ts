// Outage run with real processes: `rewind manager` and `rewind agent` linked through a chaos proxy
// that delays chunks, cuts connections mid-frame and refuses the link for whole outages (1 s to
// minutes), while a libnbd client writes 4 KiB blocks that each hold their id, at a steady rate.
// The spool is small (--spool-bytes 1M), so a long outage fills it and the agent runs degraded
// until the link is back, ships its backlog and one resync.
// Checks at the end (after `seal --wait`):
// - seqs are gap-free; the history at the last seq equals production, byte for byte;
// - every write the client saw answered is in the history (its block holds its id);
// - the windows without per-write history are exact: every answered write either has its own
//   record (same block, captured between its send and its answer) or lies in a window (a view at
//   its answer time is refused as inside one); a view at a record's capture time is accepted.
// Usage: node dist/sim/outage-run.js [--outages 1,3,10] [--seed S] [--json]
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { REGION_BYTES_DEFAULT } from '../src/agent/dirty-map.js';
import { BIN, freePort, prng, PYTHON, sleep } from './process-support.js';

const BLOCK = 4096;
const VOLUME_BYTES = 64 * 1024 * 1024;
const BLOCKS = VOLUME_BYTES / BLOCK;
const WRITES_PER_SECOND = 250;
/** The agent's dirty-map region: what a resync logs per record. */
const DIRTY_REGION_BYTES = REGION_BYTES_DEFAULT;

/** Writes block after block (each holds its id) at a steady rate, FLUSH every 32; prints "id sent answered" (ns). */
const WRITER = `
import nbd, sys, time, os
h = nbd.NBD()
h.connect_uri(sys.argv[1])
blocks, rate, stop = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
i = 1
start = time.monotonic()
while not os.path.exists(stop):
    buf = (i).to_bytes(8, 'little') * ${BLOCK / 8}
    sent = time.time_ns()
    h.pwrite(buf, (i % blocks) * ${BLOCK})
    if i % 32 == 0:
        h.flush()
    print(i, sent, time.time_ns(), flush=True)
    i += 1
    ahead = start + i / rate - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
`;

const PROBE = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off in sys.stdin.read().split():
    b = h.pread(8, int(off))
    print(off, int.from_bytes(b, 'little'), flush=True)
`;

/**
 * A TCP proxy between agent and manager: each chunk is delayed (order kept), some connections are
 * cut in the middle of a chunk (a prefix goes through, then both sides are closed), and an outage
 * closes everything and refuses new connections until it ends.
 */
export class ChaosProxy {
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();
  private refusing = false;
  cuts = 0;
  delayMsMax = 0;
  cutPerChunk = 0;

  constructor(private readonly random: (max: number) => number) {}

  async start(target: number): Promise<number> {
    this.server = net.createServer((client) => {
      if (this.refusing) {
        client.destroy();
        return;
      }
      const upstream = net.connect(target, '127.0.0.1');
      const pair = [client, upstream];
      const close = (): void => pair.forEach((s) => s.destroy());
      for (const s of pair) {
        this.sockets.add(s);
        s.on('close', () => {
          this.sockets.delete(s);
          close();
        });
        s.on('error', () => undefined);
      }
      this.forward(client, upstream, close);
      this.forward(upstream, client, close);
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    return (this.server?.address() as net.AddressInfo).port;
  }

  private forward(from: net.Socket, to: net.Socket, close: () => void): void {
    // Chunks leave in order, as TCP delivers them: a FIFO per direction, each chunk held until
    // its due time (no earlier than the one before). A cut sends a prefix of its chunk after
    // everything queued before it, then closes both sides.
    const queue: { due: number; chunk: Buffer; cutAfter: boolean }[] = [];
    let timer: NodeJS.Timeout | undefined;
    let cut = false;
    const drain = (): void => {
      timer = undefined;
      while (queue.length > 0 && (queue[0] as { due: number }).due <= Date.now()) {
        const head = queue.shift() as (typeof queue)[number];
        if (to.destroyed) return;
        if (head.chunk.length > 0) to.write(head.chunk);
        if (head.cutAfter) {
          close();
          return;
        }
      }
      if (queue.length > 0)
        timer = setTimeout(drain, Math.max(0, (queue[0] as { due: number }).due - Date.now()));
    };
    from.on('data', (chunk: Buffer) => {
      if (cut) return;
      const last = queue[queue.length - 1]?.due ?? 0;
      const due = Math.max(Date.now() + this.random(this.delayMsMax + 1), last);
      if (this.cutPerChunk > 0 && this.random(1_000_000) < this.cutPerChunk * 1_000_000) {
        cut = true;
        this.cuts += 1;
        queue.push({ due, chunk: chunk.subarray(0, this.random(chunk.length)), cutAfter: true });
      } else {
        queue.push({ due, chunk, cutAfter: false });
      }
      if (!timer) timer = setTimeout(drain, Math.max(0, due - Date.now()));
    });
  }

  /** Closes every connection and refuses new ones for `ms`. */
  async outage(ms: number): Promise<void> {
    this.refusing = true;
    for (const s of this.sockets) s.destroy();
    await sleep(ms);
    this.refusing = false;
  }

  async close(): Promise<void> {
    this.refusing = true;
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

class Proc {
  out = '';
  /** Times the agent logged that it entered degraded mode. */
  degradedEntered = 0;
  private line = '';
  readonly child: ChildProcess;
  constructor(args: string[]) {
    this.child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child.stdout?.on(
      'data',
      (c: Buffer) => (this.out = (this.out + c.toString()).slice(-50_000)),
    );
    this.child.stderr?.on('data', (c: Buffer) => {
      this.out = (this.out + c.toString()).slice(-50_000);
      const lines = (this.line + c.toString()).split('\n');
      this.line = lines.pop() ?? '';
      for (const l of lines) if (l.includes('"degraded mode: ')) this.degradedEntered += 1;
    });
  }
  async ready(marker: string): Promise<void> {
    for (let waited = 0; !this.out.includes(marker); waited += 25) {
      if (this.child.exitCode !== null || waited > 30_000)
        throw new Error(`process did not start: ${this.out.slice(-2000)}`);
      await sleep(25);
    }
  }
}

export interface OutageOptions {
  outagesSeconds: number[];
  seed: number;
}

export interface OutageReport {
  seed: number;
  outagesSeconds: number[];
  writesAnswered: number;
  perWriteRecords: number;
  resyncRecords: number;
  writesInWindows: number;
  midFrameCuts: number;
  degradedEntered: number;
  seqLast: number;
  viewsChecked: number;
  seconds: number;
}

interface Status {
  agentConnected: boolean;
  seqCaptured: number;
  seqCommitted: number;
  mode: string;
  sealedPending: number;
}

export async function runOutage(
  options: OutageOptions,
  progress: (line: string) => void = () => undefined,
): Promise<OutageReport> {
  const started = Date.now();
  const random = prng(options.seed);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-outage-'));
  const [link, nbd, http, agentNbd] = [
    await freePort(),
    await freePort(),
    await freePort(),
    await freePort(),
  ];
  const proxy = new ChaosProxy(random);
  const procs: Proc[] = [];
  let writer: ChildProcess | undefined;
  try {
    const manager = new Proc([
      'manager',
      '--data',
      path.join(dir, 'm'),
      '--listen',
      `127.0.0.1:${link}`,
      '--nbd',
      `127.0.0.1:${nbd}`,
      '--http',
      `127.0.0.1:${http}`,
      '--token',
      'outage',
    ]);
    procs.push(manager);
    await manager.ready('API:');
    const proxyPort = await proxy.start(link);
    const agent = new Proc([
      'agent',
      '--manager',
      `127.0.0.1:${proxyPort}`,
      '--data',
      path.join(dir, 'a'),
      '--nbd',
      `127.0.0.1:${agentNbd}`,
      '--token',
      'outage',
      '--volume',
      `v:${VOLUME_BYTES}`,
      '--seal-ms',
      '100',
      '--seal-bytes',
      '128K',
      '--spool-bytes',
      '1M',
    ]);
    procs.push(agent);
    await agent.ready('volume v:');
    const token = fs.readFileSync(path.join(dir, 'm', 'api-token'), 'utf8').trim();
    const api = async <T>(
      method: string,
      route: string,
      body?: object,
    ): Promise<{ ok: boolean; body: T | string }> => {
      const r = await fetch(`http://127.0.0.1:${http}${route}`, {
        method,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body ? { 'content-type': 'application/json' } : {}),
        },
        ...(body ? { body: JSON.stringify(body) } : {}),
      });
      const text = await r.text();
      return { ok: r.ok, body: route === '/api/log' || !r.ok ? text : (JSON.parse(text) as T) };
    };
    const status = async (): Promise<Status> =>
      (await api<Status>('GET', '/api/status')).body as Status;

    // The client: steady writes from now to the end.
    const stopFile = path.join(dir, 'stop-writer');
    const answered: { id: number; sentNs: bigint; answeredNs: bigint }[] = [];
    writer = spawn(
      PYTHON,
      [
        '-c',
        WRITER,
        `nbd://127.0.0.1:${agentNbd}/v`,
        String(BLOCKS),
        String(WRITES_PER_SECOND),
        stopFile,
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let pending = '';
    let writerErr = '';
    writer.stderr?.on('data', (c: Buffer) => (writerErr += c.toString()));
    writer.stdout?.on('data', (c: Buffer) => {
      pending += c.toString();
      const lines = pending.split('\n');
      pending = lines.pop() ?? '';
      for (const line of lines) {
        const [id, sent, done] = line.split(' ');
        answered.push({
          id: Number(id),
          sentNs: BigInt(sent as string),
          answeredNs: BigInt(done as string),
        });
      }
    });
    const writerExited = new Promise((r) => writer?.once('exit', r));

    for (const seconds of options.outagesSeconds) {
      // A stretch of bad link: delays up to 30 ms, and some connections cut mid-frame.
      proxy.delayMsMax = 30;
      proxy.cutPerChunk = 0.02;
      await sleep(2000 + random(2000));
      proxy.cutPerChunk = 0;
      progress(`outage of ${seconds} s (${answered.length} writes answered so far)`);
      await proxy.outage(seconds * 1000);
      // Link back: wait for the backlog, and the resync if the spool overflowed, to be committed.
      for (let waited = 0; ; waited += 200) {
        const s = await status();
        if (
          s.agentConnected &&
          s.mode === 'logging' &&
          s.sealedPending === 0 &&
          s.seqCommitted >= s.seqCaptured - 64
        )
          break;
        assert.ok(
          waited < 120_000 + seconds * 2000,
          `the agent catches up after an outage of ${seconds} s: ${JSON.stringify(s)}`,
        );
        await sleep(200);
      }
      progress(`caught up after the ${seconds} s outage`);
    }
    proxy.delayMsMax = 0;
    fs.writeFileSync(stopFile, '');
    await writerExited;
    assert.ok(answered.length > 0, `the client wrote: ${writerErr}`);
    const sealed = (
      await api<{ seqLast: number; committed: number }>('POST', '/api/seal', {
        wait: true,
        timeoutMs: 120_000,
      })
    ).body as { seqLast: number; committed: number };

    // The history.
    const log = (await api<string>('GET', '/api/log')).body
      .trim()
      .split('\n')
      .filter(Boolean)
      .map(
        (l) =>
          JSON.parse(l) as {
            seq: number;
            time: string;
            timeNs?: string;
            offset: number;
            length: number;
            resync: boolean;
          },
      );
    log.forEach((e, i) => assert.equal(e.seq, i + 1, `seq gap at ${i + 1}`));
    const seqLast = log.length;
    assert.equal(sealed.committed, seqLast, 'everything captured is committed');
    let viewsChecked = 0;
    const createView = async (
      name: string,
      at: string,
    ): Promise<{ ok: boolean; body: unknown }> => {
      const r = await api('POST', '/api/views', { name, kind: 'snapshot', at });
      if (r.ok) await api('DELETE', `/api/views/${name}`);
      viewsChecked += 1;
      return r;
    };

    // History at the last seq equals production.
    assert.ok(
      (await api('POST', '/api/views', { name: 'last', kind: 'snapshot', at: String(seqLast) })).ok,
    );
    const image = path.join(dir, 'last.img');
    const copy = spawnSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/v@last`, image], {
      timeout: 120_000,
    });
    assert.equal(copy.status, 0, `nbdcopy: ${copy.stderr}`);
    assert.ok(
      fs.readFileSync(image).equals(fs.readFileSync(path.join(dir, 'a', 'production', 'v.img'))),
      'the history at the last seq equals production',
    );
    fs.rmSync(image);
    // Every answered write is in it: each block holds the id of the last answered write to it.
    const lastId = new Map<number, number>();
    for (const w of answered) lastId.set((w.id % BLOCKS) * BLOCK, w.id);
    const probe = spawnSync(PYTHON, ['-c', PROBE, `nbd://127.0.0.1:${nbd}/v@last`], {
      input: [...lastId.keys()].join(' '),
      timeout: 120_000,
    });
    assert.equal(probe.status, 0, `probe: ${probe.stderr}`);
    for (const line of probe.stdout.toString().trim().split('\n')) {
      const [offset, id] = line.split(' ').map(Number) as [number, number];
      assert.equal(
        id,
        lastId.get(offset),
        `the answered write ${lastId.get(offset)} at ${offset} is in the history`,
      );
    }
    viewsChecked += 1;
    await api('DELETE', '/api/views/last');

    // Windows: each answered write has its record, or lies in a window without per-write history.
    const recordTimes = new Map<number, bigint[]>();
    for (const e of log) {
      if (e.resync) continue;
      const ns = BigInt(Date.parse(e.time)) * 1_000_000n;
      const list = recordTimes.get(e.offset) ?? [];
      list.push(ns);
      recordTimes.set(e.offset, list);
    }
    const unlogged: typeof answered = [];
    for (const w of answered) {
      // Log times are printed to the millisecond: widen the interval by one on each side.
      const times = recordTimes.get((w.id % BLOCKS) * BLOCK) ?? [];
      const logged = times.some(
        (t) =>
          t >= w.sentNs - 1_000_000n - ((w.sentNs - 1_000_000n) % 1_000_000n) &&
          t <= w.answeredNs + 1_000_000n,
      );
      if (!logged) unlogged.push(w);
    }
    const perWrite = log.filter((e) => !e.resync).length;
    assert.equal(
      perWrite,
      answered.length - unlogged.length,
      'every per-write record is one answered write',
    );
    if (unlogged.length > 0)
      assert.ok(
        log.some((e) => e.resync),
        'writes without their own record are covered by a resync',
      );
    // A resync logs the regions written while the agent was degraded (and a few hot ones still
    // dirty from just before), not the volume: regions only marked ahead hold nothing to log.
    // Summed per spell (a run of answered writes without a record): each spell's resync may log
    // again what an earlier one did.
    const unloggedIds = new Set(unlogged.map((w) => w.id));
    let unloggedRegions = 0;
    let spell = new Set<number>();
    for (const w of answered) {
      if (!unloggedIds.has(w.id)) {
        unloggedRegions += spell.size;
        spell = new Set();
        continue;
      }
      spell.add(Math.floor(((w.id % BLOCKS) * BLOCK) / DIRTY_REGION_BYTES));
    }
    unloggedRegions += spell.size;
    const resyncRecords = log.length - perWrite;
    assert.ok(
      resyncRecords <= unloggedRegions + 4 * agent.degradedEntered,
      `${resyncRecords} resync records for ${unloggedRegions} regions written without a record (summed per spell) in ${agent.degradedEntered} degraded spells`,
    );
    // A time inside a window is refused, and says so; sampled.
    for (let i = 0; i < Math.min(40, unlogged.length); i++) {
      const w = unlogged[random(unlogged.length)] as (typeof unlogged)[number];
      const at = new Date(Number(w.answeredNs / 1_000_000n) + 1).toISOString();
      const r = await createView(`in-${i}`, at);
      assert.ok(
        !r.ok && /window without per-write history|inside a resync/.test(String(r.body)),
        `a view at ${at}, when write ${w.id} was answered without a record of its own, is refused: ${String(r.body).slice(0, 300)}`,
      );
    }
    // A record's own time is a valid point; sampled.
    const records = log.filter((e) => !e.resync);
    for (let i = 0; i < Math.min(20, records.length); i++) {
      const e = records[random(records.length)] as (typeof records)[number];
      const r = await createView(`at-${i}`, String(e.seq));
      assert.ok(
        r.ok,
        `a view at seq ${e.seq} (a per-write record) is accepted: ${String(r.body).slice(0, 300)}`,
      );
    }
    return {
      seed: options.seed,
      outagesSeconds: options.outagesSeconds,
      writesAnswered: answered.length,
      perWriteRecords: perWrite,
      resyncRecords,
      writesInWindows: unlogged.length,
      midFrameCuts: proxy.cuts,
      degradedEntered: agent.degradedEntered,
      seqLast,
      viewsChecked,
      seconds: Math.round((Date.now() - started) / 1000),
    };
  } catch (error) {
    throw new Error(
      `outage run failed (seed ${options.seed}): ${(error as Error).message}\n--- agent ---\n${procs[1]?.out.slice(-12000) ?? ''}\n--- manager ---\n${procs[0]?.out.slice(-12000) ?? ''}`,
    );
  } finally {
    writer?.kill('SIGKILL');
    for (const p of procs) p.child.kill('SIGKILL');
    await proxy.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const argv = process.argv.slice(2);
  const get = (name: string): string | undefined =>
    argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined;
  const options: OutageOptions = {
    outagesSeconds: (get('--outages') ?? '1,3,10').split(',').map(Number),
    seed: Number(get('--seed') ?? Math.floor(Math.random() * 2 ** 31)),
  };
  console.error(`outage run: outages ${options.outagesSeconds.join(', ')} s, seed ${options.seed}`);
  runOutage(options, (line) => console.error(line))
    .then((report) => {
      if (argv.includes('--json')) console.log(JSON.stringify(report));
      else console.log(`outage run passed: ${JSON.stringify(report)}`);
    })
    .catch((error: unknown) => {
      console.error((error as Error).message);
      process.exit(1);
    });
}
