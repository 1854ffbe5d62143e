// Benchmark of the archiver end to end: a manager in this process, a scripted agent shipping
// sealed segments, and the archive on a directory and on S3 (Swift's s3api on loopback).
// - throughput: a backlog of committed history (half random blocks, half text) held back from
//   the store, then let go: plain MiB/s until the backlog is archived, the compression ratio
//   and the requests it took, with encryption on;
// - requests at a steady write rate: a segment a second for a minute with the default batch
//   settings (64 MiB or 10 s), PUTs counted and scaled to an hour;
// - a point older than the journal rebuilt from a full image plus archived increments.
// Run: node dist/bench/archive.js [--no-s3] [--backlog-mib N] [--steady-s N]
// Prints one table; nothing is asserted (the figures go to docs/BENCHMARKS.md).
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { openStore, type ObjectStore } from '../src/archive/index.js';
import { InThreadApply } from '../src/manager/apply-pool.js';
import { Manager } from '../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../test/support/fake-agent.js';
import { SwiftS3, swiftS3Missing } from '../test/support/swift-s3.js';

const MIB = 1024 * 1024;
const BLOCK = 4096;
const VOLUME_BYTES = 1024 * MIB;
const VOLUME_SET_ID = '0b0b0b0b-0b0b-0b0b-0b0b-0b0b0b0b0b0b';
const TOKEN = 'bench';
/** Writes per segment in the backlog run (4 MiB of redo each). */
const BACKLOG_SEGMENT_WRITES = 1024;
/** Writes per segment, one segment a second, in the steady run (200 KiB/s). */
const STEADY_SEGMENT_WRITES = 50;

interface Row {
  what: string;
  figure: string;
  note: string;
}

/**
 * A store whose probe (the archiver's first request) waits until `open()`: the backlog builds up
 * behind it, and nothing of it is read or encoded before the clock starts.
 */
class GatedStore implements ObjectStore {
  private gate: Promise<void>;
  private release: () => void = () => undefined;
  constructor(private readonly inner: ObjectStore) {
    this.gate = new Promise((resolve) => (this.release = resolve));
  }
  get url(): string {
    return this.inner.url;
  }
  open(): void {
    this.release();
  }
  async probe(): ReturnType<ObjectStore['probe']> {
    await this.gate;
    return this.inner.probe();
  }
  put(key: string, body: Buffer): Promise<void> {
    return this.inner.put(key, body);
  }
  get(key: string, range?: { offset: number; length: number }): Promise<Buffer> {
    return this.inner.get(key, range);
  }
  head(key: string): ReturnType<ObjectStore['head']> {
    return this.inner.head(key);
  }
  delete(keys: string[]): Promise<void> {
    return this.inner.delete(keys);
  }
  list(prefix: string): Promise<string[]> {
    return this.inner.list(prefix);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Half random blocks, half English-like text: history that compresses about 2:1. */
function block(n: number): Buffer {
  if (n % 2 === 0) return crypto.randomBytes(BLOCK);
  const words = ['the', 'volume', 'write', 'backup', 'point', 'rewind', 'segment', 'replica'];
  let text = '';
  while (text.length < BLOCK) text += `${words[(n * 7 + text.length) % words.length]} ${n} `;
  return Buffer.from(text.slice(0, BLOCK));
}

function segment(first: number, writes: number): FakeRecord[] {
  const now = BigInt(Date.now()) * 1_000_000n;
  return Array.from({ length: writes }, (_, i) => ({
    volume: 0,
    kind: 'write' as const,
    offset: (((first + i) * 7919) % (VOLUME_BYTES / BLOCK)) * BLOCK,
    length: BLOCK,
    data: block(first + i),
    timeNs: now + BigInt(i),
  }));
}

async function withManager<T>(
  store: ObjectStore,
  batch: { bytes?: number; ms?: number; journalMax?: string },
  run: (manager: Manager, agent: FakeAgent) => Promise<T>,
): Promise<T> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-bench-archive-'));
  const manager = await Manager.open({
    dataDir: path.join(dir, 'data'),
    token: TOKEN,
    log: () => undefined,
    applier: new InThreadApply(),
    retentionMerger: new InThreadApply(),
    retention: { keepEveryWrite: '3650d', keep: 'none', journalMax: batch.journalMax ?? '8G' },
    archive: {
      store,
      key: crypto.randomBytes(32),
      ...(batch.bytes !== undefined ? { batchBytesMax: batch.bytes } : {}),
      ...(batch.ms !== undefined ? { batchMs: batch.ms } : {}),
      fullEveryMs: null,
    },
  });
  const { port } = await manager.listen('127.0.0.1', 0);
  const agent = await FakeAgent.connect(port, {
    token: TOKEN,
    volumeSetId: VOLUME_SET_ID,
    volumes: [{ name: 'a', sizeBytes: VOLUME_BYTES }],
  });
  try {
    return await run(manager, agent);
  } finally {
    agent.close();
    await manager.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function throughput(
  name: string,
  open: () => Promise<ObjectStore>,
  backlogMib: number,
): Promise<Row[]> {
  const gated = new GatedStore(await open());
  return withManager(gated, { ms: 0 }, async (manager, agent) => {
    const segments = Math.ceil((backlogMib * MIB) / (BACKLOG_SEGMENT_WRITES * BLOCK));
    for (let s = 0; s < segments; s++) {
      await agent.ship(segment(s * BACKLOG_SEGMENT_WRITES, BACKLOG_SEGMENT_WRITES));
    }
    const before = manager.archiveStatus();
    const backlogBytes = before?.backlog.bytes ?? 0;
    const started = process.hrtime.bigint();
    gated.open();
    await manager.archiver?.drain(600_000);
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    const status = manager.archiveStatus();
    if (!status || status.backlog.transactions !== 0) throw new Error(`${name}: not drained`);
    return [
      {
        what: `archive throughput, ${name}, encrypted`,
        figure: `${(status.plainBytes / MIB / seconds).toFixed(1)} MiB/s`,
        note: `${(backlogBytes / MIB).toFixed(0)} MiB of redo+undo backlog in ${seconds.toFixed(2)} s, ${status.objects} objects, ${status.requests.put} PUTs`,
      },
      {
        what: `compression ratio, ${name}`,
        figure: `${status.compressionRatio.toFixed(2)}`,
        note: `${(status.plainBytes / MIB).toFixed(1)} MiB plain, ${(status.storedBytes / MIB).toFixed(1)} MiB stored (half random, half text)`,
      },
    ];
  });
}

async function steady(
  name: string,
  open: () => Promise<ObjectStore>,
  seconds: number,
): Promise<Row> {
  return withManager(await open(), {}, async (manager, agent) => {
    const started = Date.now();
    for (let s = 0; s < seconds; s++) {
      await agent.ship(segment(s * STEADY_SEGMENT_WRITES, STEADY_SEGMENT_WRITES));
      const due = started + (s + 1) * 1000;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, due - Date.now())));
    }
    const elapsed = (Date.now() - started) / 1000;
    const status = manager.archiveStatus();
    const puts = status?.requests.put ?? 0;
    const kib = (STEADY_SEGMENT_WRITES * BLOCK) / 1024;
    return {
      what: `requests per hour, ${name}, steady`,
      figure: `${Math.round((puts / elapsed) * 3600)} PUT/h`,
      note: `${puts} PUTs, ${status?.requests.get ?? 0} GETs, ${status?.requests.head ?? 0} HEADs in ${elapsed.toFixed(0)} s at one ${kib} KiB segment a second (batches of 64 MiB or 10 s), no LIST`,
    };
  });
}

/** Writes `count` blocks from block `first` on, in order, each from `data(n)`. */
function sequential(first: number, count: number, data: (n: number) => Buffer): FakeRecord[] {
  const now = BigInt(Date.now()) * 1_000_000n;
  return Array.from({ length: count }, (_, i) => ({
    volume: 0,
    kind: 'write' as const,
    offset: (first + i) * BLOCK,
    length: BLOCK,
    data: data(first + i),
    timeNs: now + BigInt(i),
  }));
}

/**
 * A point older than the journal served from a full image plus archived redo: 64 MiB of text
 * written, a full image taken, then 40 MiB of random 4 KiB writes in 1 MiB segments under an
 * 8 MiB journal limit (the journal keeps the newest only). The point two segments after the
 * full is opened with an empty cache: the plan, then the time to fetch, materialise and serve.
 */
async function fromFull(name: string, open: () => Promise<ObjectStore>): Promise<Row> {
  return withManager(await open(), { ms: 0, journalMax: '8M' }, async (manager, agent) => {
    const text = (n: number): Buffer => block(n * 2 + 1);
    const fillBlocks = (64 * MIB) / BLOCK;
    for (let at = 0; at < fillBlocks; at += 1024) await agent.ship(sequential(at, 1024, text));
    await manager.archiver?.drain(600_000);
    const full = await manager.takeFull({ volumes: [] });
    const perSegment = MIB / BLOCK;
    for (let s = 0; s < 40; s++) {
      await agent.ship(segment(fillBlocks + s * perSegment, perSegment));
    }
    await manager.archiver?.drain(600_000);
    const seq = full.seq + 2 * perSegment;
    const plan = manager.archivePlan(String(seq));
    if (plan === null) throw new Error(`${name}: seq ${seq} is still in the journal`);
    const started = process.hrtime.bigint();
    const view = await manager.createView('bench-old', 'snapshot', String(seq));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    view.read(0, 0, 64 * MIB);
    await manager.removeView('bench-old');
    return {
      what: `point from the archive, ${name}`,
      figure: `${seconds.toFixed(2)} s`,
      note: `way ${plan.way}: full image at seq ${plan.anchorSeq} (${full.chunks.total} chunks, ${full.chunks.zero} zero) + ${plan.increments} increments, ${(plan.fetchBytes / MIB).toFixed(1)} MiB fetched; ${plan.otherWay}`,
    };
  });
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'no-s3': { type: 'boolean' },
      'backlog-mib': { type: 'string' },
      'steady-s': { type: 'string' },
    },
  });
  const backlogMib = Number(values['backlog-mib'] ?? 128);
  const steadyS = Number(values['steady-s'] ?? 60);
  const rows: Row[] = [];
  const dirs: string[] = [];
  const directory = async (): Promise<ObjectStore> => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-bench-archive-dir-'));
    dirs.push(dir);
    return openStore(dir);
  };
  try {
    process.stderr.write('archive bench: directory\n');
    rows.push(...(await throughput('directory', directory, backlogMib)));
    rows.push(await steady('directory', directory, steadyS));
    rows.push(await fromFull('directory', directory));
    const missing = swiftS3Missing();
    if (values['no-s3'] === true || missing !== undefined) {
      rows.push({ what: 'S3 rows', figure: 'skipped', note: missing ?? '--no-s3' });
    } else {
      process.stderr.write('archive bench: S3 (Swift s3api on loopback)\n');
      const swift = await SwiftS3.start();
      try {
        Object.assign(process.env, swift.env());
        const client = new S3Client({ endpoint: swift.endpoint, forcePathStyle: true });
        await client.send(new CreateBucketCommand({ Bucket: 'bench' }));
        client.destroy();
        let run = 0;
        const s3 = (): Promise<ObjectStore> =>
          openStore(`s3://bench/run-${(run += 1)}`, {
            s3Endpoint: swift.endpoint,
            s3PathStyle: true,
          });
        rows.push(...(await throughput('S3 (Swift)', s3, backlogMib)));
        rows.push(await steady('S3 (Swift)', s3, steadyS));
        rows.push(await fromFull('S3 (Swift)', s3));
      } finally {
        await swift.stop();
      }
    }
  } finally {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  }
  const width = Math.max(...rows.map((r) => r.what.length));
  console.log(`archive benchmark, ${new Date().toISOString()}, ${os.cpus().length} cores`);
  for (const row of rows) {
    console.log(`${row.what.padEnd(width)}  ${row.figure.padStart(12)}  ${row.note}`);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
