// Points older than the journal, against the model: a manager with a small journal limit and a
// directory archive takes a random history over ten days (writes, zeroes, trims on two volumes).
// First with archiving stopped, so the limit drops history the archive never saw; then with
// archiving keeping up, and a policy that thins and drops. Every seq from 0 to the last is
// tried: each one the journal or the archive keeps rebuilds byte-identical to a replay of writes
// 1..N, every seq from the archive's first point on is kept, and the others are refused
// REWIND_POINT_INVALID naming what both tiers keep. A snapshot opened at an archived point reads
// the same after more history and retention. Then again after a restart, with no LIST.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openStore, type ObjectStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';

const VOLUMES = [
  { name: 'a', sizeBytes: 256 * 1024 },
  { name: 'b', sizeBytes: 128 * 1024 },
];
const VOLUME_SET_ID = '0e0e0e0e-0e0e-0e0e-0e0e-0e0e0e0e0e0e';
const TOKEN = 't';
const SECTOR = 512;
const SEEDS = Number(process.env.REWIND_ARCHIVE_SEEDS ?? 3);

function rng(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
}

/** `count` segments from `startMs` on, each a few writes, zeroes and trims a moment apart. */
/** The capture time (ms) each model write was shipped with. */
const captureMs = new WeakMap<ModelWrite, number>();
/** Times among the writes of archived transactions resolved (the open snapshot keeps their
 * objects cached; test/unit/archive-time-points.test.ts covers the fetch first). */
const timesInside = { resolved: 0, fetched: 0 };

function segments(
  next: (n: number) => number,
  startMs: number,
  count: number,
  writes: ModelWrite[],
): FakeRecord[][] {
  const out: FakeRecord[][] = [];
  let timeMs = startMs;
  for (let s = 0; s < count; s++) {
    timeMs += [60_000, 600_000, 3_600_000, 4 * 3_600_000][next(4)] as number;
    const records: FakeRecord[] = [];
    for (let r = 0; r < 1 + next(5); r++) {
      const volume = next(VOLUMES.length);
      const sectors = (VOLUMES[volume] as { sizeBytes: number }).sizeBytes / SECTOR;
      const length = (1 + next(24)) * SECTOR;
      const offset = next(sectors - length / SECTOR) * SECTOR;
      const kind = next(8) === 0 ? 'zero' : next(12) === 0 ? 'trim' : 'write';
      const data = kind === 'write' ? Buffer.alloc(length, 1 + next(255)) : undefined;
      const seq = writes.length + 1;
      records.push({
        volume,
        kind,
        offset,
        length,
        ...(data ? { data } : {}),
        timeNs: BigInt(timeMs + r) * 1_000_000n,
      });
      const write: ModelWrite = { seq, volume, kind, offset, length, ...(data ? { data } : {}) };
      captureMs.set(write, timeMs + r);
      writes.push(write);
    }
    out.push(records);
  }
  return out;
}

function replay(writes: readonly ModelWrite[], seq: number): Buffer[] {
  const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
  for (const w of writes) if (w.seq <= seq) model.apply(w);
  return VOLUMES.map((_v, i) => model.image(i));
}

/** The directory store, counting LISTs (steady running and old points need none). */
function counting(store: ObjectStore, lists: { count: number }): ObjectStore {
  return {
    url: store.url,
    probe: () => store.probe(),
    put: (key, body) => store.put(key, body),
    get: (key, range) => store.get(key, range),
    head: (key) => store.head(key),
    delete: (keys) => store.delete(keys),
    list: (prefix) => {
      lists.count += 1;
      return store.list(prefix);
    },
    close: () => store.close(),
  };
}

async function imagesAt(manager: Manager, seq: number): Promise<Buffer[] | RewindError> {
  try {
    const view = await manager.createView(`check-${seq}`, 'snapshot', String(seq));
    const images = VOLUMES.map((v, i) => view.read(i, 0, v.sizeBytes));
    await manager.removeView(`check-${seq}`);
    return images;
  } catch (error) {
    if (error instanceof RewindError) return error;
    throw error;
  }
}

/** Every point: kept ones equal the replay; from the archive's first point on, all are kept. */
async function checkEveryPoint(
  manager: Manager,
  writes: readonly ModelWrite[],
  label: string,
): Promise<{ kept: Set<number>; fromArchive: number }> {
  const kept = new Set<number>();
  const archive = manager.archiveStatus();
  assert.ok(archive && archive.archivedFromSeq !== null, `${label}: the archive holds history`);
  const localOldest = manager.retention.status().oldestSeq;
  let fromArchive = 0;
  // Times among the writes of an archived transaction older than the journal: the exact seq,
  // once the transaction's object is fetched (before that, refused saying so). First, before the
  // points below fill the cache.
  const inside = manager.catalog
    .archiveTxsBetweenSeqs(0, writes.length)
    .filter((tx) => tx.seqLast > tx.seqFirst && manager.archivePlan(String(tx.seqFirst)) !== null);
  for (const tx of inside.slice(0, 4)) {
    const seq = tx.seqFirst + Math.floor((tx.seqLast - tx.seqFirst) / 2);
    const at = isoMicros((captureMs.get(writes[seq - 1] as ModelWrite) as number) * 1000);
    const cached = manager.archivePlan(String(seq))?.objects.find((o) => o.key === tx.objectKey);
    if (cached?.cached !== true) {
      await assert.rejects(manager.createView('at-time', 'snapshot', at), (error) => {
        assert.match((error as Error).message, /not fetched from the archive yet/);
        assert.match((error as RewindError).hint ?? '', /rewind archive fetch/);
        return true;
      });
      await manager.fetchTimes(at);
      timesInside.fetched += 1;
    }
    const view = await manager.createView('at-time', 'snapshot', at);
    assert.equal(view.seq, seq, `${label}: time ${at} among seqs ${tx.seqFirst}..${tx.seqLast}`);
    const want = replay(writes, seq);
    VOLUMES.forEach((v, i) =>
      assert.ok(view.read(i, 0, v.sizeBytes).equals(want[i] as Buffer), `${label}: at ${at}`),
    );
    await manager.removeView('at-time');
    timesInside.resolved += 1;
  }
  for (let seq = 0; seq <= writes.length; seq++) {
    const got = await imagesAt(manager, seq);
    if (got instanceof RewindError) {
      assert.equal(got.code, 'REWIND_POINT_INVALID', `${label}: seq ${seq}: ${got.message}`);
      assert.match(got.message, /no longer kept|before the history starts/, `${label}: ${seq}`);
      assert.match(got.hint ?? '', /archive keeps per-write history of seqs \d+\.\.\d+/);
      assert.match(got.hint ?? '', /oldest kept point is seq \d+|nearest kept points/);
      assert.ok(seq < archive.archivedFromSeq, `${label}: seq ${seq} refused, archive has it`);
      continue;
    }
    const want = replay(writes, seq);
    got.forEach((image, i) =>
      assert.ok(image.equals(want[i] as Buffer), `${label}: volume ${i} at seq ${seq} differs`),
    );
    kept.add(seq);
    if (manager.archivePlan(String(seq)) !== null) fromArchive += 1;
  }
  // Times older than the journal: just after each archived transaction, its last seq.
  for (const tx of manager.catalog.archiveTxsBetweenSeqs(0, writes.length - 1)) {
    // (After the last write, a time is refused until the agent reports it quiet.)
    if (tx.seqLast === writes.length) continue;
    const at = isoMicros(tx.timeLastUs + 1);
    const view = await manager.createView('at-time', 'snapshot', at);
    assert.equal(view.seq, tx.seqLast, `${label}: time ${at} resolves to seq ${tx.seqLast}`);
    const want = replay(writes, tx.seqLast);
    VOLUMES.forEach((v, i) =>
      assert.ok(view.read(i, 0, v.sizeBytes).equals(want[i] as Buffer), `${label}: at ${at}`),
    );
    await manager.removeView('at-time');
  }
  // A restore to an archived point writes back every byte that differs now.
  const now = replay(writes, writes.length);
  for (const seq of [...kept].filter((p) => manager.archivePlan(String(p)) !== null).slice(0, 8)) {
    const plan = await manager.restorer.plan({
      volumes: VOLUMES.map((v) => v.name),
      at: String(seq),
    });
    const then = replay(writes, seq);
    VOLUMES.forEach((v, i) => {
      const ranges = plan.volumes[i]?.ranges ?? [];
      const covered = (offset: number): boolean =>
        ranges.some((r) => offset >= r.offset && offset < r.offset + r.length);
      for (let offset = 0; offset < v.sizeBytes; offset++) {
        if ((now[i] as Buffer)[offset] === (then[i] as Buffer)[offset]) continue;
        assert.ok(covered(offset), `${label}: restore to ${seq} misses ${v.name} byte ${offset}`);
      }
    });
  }
  for (let seq = archive.archivedFromSeq; seq <= writes.length; seq++)
    assert.ok(kept.has(seq), `${label}: seq ${seq} kept (archive from ${archive.archivedFromSeq})`);
  assert.ok(kept.has(localOldest), `${label}: the local oldest point ${localOldest} is kept`);
  return { kept, fromArchive };
}

/** An ISO-8601 time with microseconds. */
function isoMicros(us: number): string {
  const fraction = String(us % 1_000_000).padStart(6, '0');
  return new Date(Math.floor(us / 1000)).toISOString().replace(/\.\d{3}Z$/, `.${fraction}Z`);
}

describe('old points from the archive, against the model', () => {
  const totals = { fromArchive: 0, refused: 0, merges: 0, unarchivedDrops: 0 };
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}: every point either tier keeps equals the replay; the others are named`, async () => {
      const next = rng(seed * 104_729);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-model-'));
      const lists = { count: 0 };
      const open = async (startArchiver: boolean): Promise<Manager> =>
        Manager.open({
          dataDir: path.join(dir, 'data'),
          token: TOKEN,
          log: () => undefined,
          applier: new InThreadApply(),
          retentionMerger: new InThreadApply(),
          startRetention: false,
          startArchiver,
          archive: {
            store: counting(await openStore(path.join(dir, 'archive')), lists),
            key: undefined,
            batchBytesMax: 16 * 1024 + next(64 * 1024),
            batchMs: 0,
            cacheBytesMax: 96 * 1024,
          },
        });
      let manager = await open(false);
      let agent: FakeAgent | undefined;
      try {
        const journalMax = 96 * 1024 + next(64 * 1024);
        manager.retention.setPolicy({
          keepEveryWrite: '3650d',
          keep: 'none',
          journalMax: String(journalMax),
        });
        const { port } = await manager.listen('127.0.0.1', 0);
        agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
        const writes: ModelWrite[] = [];
        const startMs = Date.now() - 10 * 86_400_000;
        // Archiving stopped: the limit drops history the archive never gets.
        const early = segments(next, startMs, 15 + next(10), writes);
        for (const segment of early) await agent.ship(segment);
        manager.archiver?.start();
        await manager.archiver?.drain(20_000);
        // Archiving keeps up: everything reaches the archive before the limit drops it.
        const lastEarlyMs = Number((early.at(-1)?.at(-1)?.timeNs ?? 0n) / 1_000_000n);
        const later = segments(next, lastEarlyMs, 30 + next(20), writes);
        let held: { seq: number; images: Buffer[] } | undefined;
        for (const [s, segment] of later.entries()) {
          await agent.ship(segment);
          await manager.archiver?.drain(20_000);
          if (s === Math.floor(later.length / 2)) {
            // A snapshot at an archived point, kept open through what follows.
            const seq = (manager.archiveStatus()?.archivedFromSeq ?? 0) + 1;
            if (manager.archivePlan(String(seq)) !== null) {
              await manager.createView('held', 'snapshot', String(seq));
              held = { seq, images: replay(writes, seq) };
            }
          }
        }
        manager.retention.setPolicy({ keepEveryWrite: '2d', keep: '6h:4d,1d:8d' });
        await manager.retention.settle(10_000);
        const label = `seed ${seed} (journal ${journalMax})`;
        const status = manager.retention.status();
        assert.equal(status.pendingActions, 0, `${label}: retention settled`);
        totals.merges += status.steps.merges;
        totals.unarchivedDrops += manager.retention.unarchivedDrops;
        const { kept, fromArchive } = await checkEveryPoint(manager, writes, label);
        totals.fromArchive += fromArchive;
        totals.refused += writes.length + 1 - kept.size;
        if (held) {
          const view = manager.views.get('held');
          assert.ok(view, `${label}: the held snapshot is open`);
          VOLUMES.forEach((v, i) =>
            assert.ok(
              view.read(i, 0, v.sizeBytes).equals(held?.images[i] as Buffer),
              `${label}: the snapshot at archived seq ${held?.seq} moved`,
            ),
          );
        }
        // The cache is within its bound, but for the objects the open snapshot reads.
        const cache = manager.oldPoints?.cacheStatus();
        const heldKeys = held ? (manager.archivePlan(String(held.seq))?.objects ?? []) : [];
        const heldBytes = heldKeys.reduce(
          (sum, o) => sum + (manager.catalog.archiveObject(o.key)?.plainBytes ?? 0),
          0,
        );
        assert.ok(cache && cache.bytes <= cache.bytesMax + heldBytes, JSON.stringify(cache));
        agent.close();
        agent = undefined;
        await manager.close();
        manager = await open(true);
        const again = await checkEveryPoint(manager, writes, `${label} after a restart`);
        assert.deepEqual([...again.kept], [...kept], `${label}: the same points after a restart`);
        if (held) assert.ok(manager.views.get('held'), `${label}: the snapshot is back`);
        assert.equal(lists.count, 0, `${label}: no LIST`);
      } finally {
        agent?.close();
        await manager.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
  it('points came from the archive, some were refused, history was thinned and lost', () => {
    assert.ok(totals.fromArchive > 0 && totals.refused > 0, JSON.stringify(totals));
    assert.ok(totals.merges > 0 && totals.unarchivedDrops > 0, JSON.stringify(totals));
    assert.ok(timesInside.resolved > 0, JSON.stringify(timesInside));
  });
});
