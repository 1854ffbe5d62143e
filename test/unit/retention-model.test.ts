// Retention against the model: random histories spread over days, random policies (tiers, a
// journal limit small enough to drop), bookmarks (some pinned) and views open while it runs.
// Afterwards every point is tried: each one retention reports as kept rebuilds byte-identical to
// a plain replay of writes 1..N, and every other one is refused with a named error; the views
// opened before still read what they read; all of it again after a restart.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager, type PolicyText } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';

const VOLUMES = [
  { name: 'a', sizeBytes: 256 * 1024 },
  { name: 'b', sizeBytes: 128 * 1024 },
];
const VOLUME_SET_ID = '0b0b0b0b-0b0b-0b0b-0b0b-0b0b0b0b0b0b';
const TOKEN = 't';
const SECTOR = 512;
const SEEDS = Number(process.env.REWIND_RETENTION_SEEDS ?? 5);

function rng(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
}

interface History {
  writes: ModelWrite[];
  segments: FakeRecord[][];
}

/** Segments over the last ten days, each a few writes, zeroes and trims a moment apart. */
function history(next: (n: number) => number, nowMs: number): History {
  const writes: ModelWrite[] = [];
  const segments: FakeRecord[][] = [];
  let timeMs = nowMs - 10 * 86_400_000;
  let seq = 1;
  const count = 25 + next(30);
  for (let s = 0; s < count; s++) {
    timeMs += [1000, 60_000, 600_000, 3_600_000, 6 * 3_600_000][next(5)] as number;
    const records: FakeRecord[] = [];
    for (let r = 0; r < 1 + next(6); r++) {
      const volume = next(VOLUMES.length);
      const sectors = (VOLUMES[volume] as { sizeBytes: number }).sizeBytes / SECTOR;
      const length = (1 + next(16)) * SECTOR;
      const offset = next(sectors - length / SECTOR) * SECTOR;
      const kind = next(8) === 0 ? 'zero' : next(12) === 0 ? 'trim' : 'write';
      const data = kind === 'write' ? Buffer.alloc(length, 1 + next(255)) : undefined;
      const timeNs = BigInt(timeMs + r) * 1_000_000n;
      records.push({ volume, kind, offset, length, ...(data ? { data } : {}), timeNs });
      writes.push({ seq: seq++, volume, kind, offset, length, ...(data ? { data } : {}) });
    }
    segments.push(records);
  }
  return { writes, segments };
}

function replay(writes: readonly ModelWrite[], seq: number): Buffer[] {
  const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
  for (const w of writes) if (w.seq <= seq) model.apply(w);
  return VOLUMES.map((_v, i) => model.image(i));
}

function randomPolicy(next: (n: number) => number, journalBytes: number): PolicyText {
  const keepEveryWrite = ['30m', '6h', '2d'][next(3)] as string;
  const tiers = [['10m:1d', '1h:4d', '1d:8d'], ['1h:3d'], ['1m:12h', '6h:9d'], ['1d:20d']][
    next(4)
  ] as string[];
  // Tiers must outlast the every-write window; those that do not are left out.
  const spanMs = { '30m': 1_800_000, '6h': 21_600_000, '2d': 172_800_000 }[
    keepEveryWrite
  ] as number;
  const units: Record<string, number> = { m: 60_000, h: 3_600_000, d: 86_400_000 };
  const kept = tiers.filter((t) => {
    const forText = t.split(':')[1] as string;
    return Number(forText.slice(0, -1)) * (units[forText.slice(-1)] as number) > spanMs;
  });
  const small = next(3) === 0;
  return {
    keepEveryWrite,
    keep: kept.join(',') || 'none',
    journalMax: small
      ? String(Math.max(4096, Math.floor(journalBytes * (0.2 + next(5) / 10))))
      : '1G',
    journalWarn: 'auto',
    onFull: 'drop-oldest',
  };
}

async function imagesAt(manager: Manager, seq: number, name: string): Promise<Buffer[] | Error> {
  try {
    const view = await manager.createView(name, 'snapshot', String(seq));
    const images = VOLUMES.map((v, i) => view.read(i, 0, v.sizeBytes));
    await manager.removeView(name);
    return images;
  } catch (error) {
    if (error instanceof RewindError) return error;
    throw error;
  }
}

/** Every point: kept ones equal the replay, the others are refused as no longer kept. */
async function checkEveryPoint(
  manager: Manager,
  writes: readonly ModelWrite[],
  label: string,
): Promise<Set<number>> {
  const kept = new Set<number>();
  const status = manager.retention.status();
  const last = writes[writes.length - 1]?.seq ?? 0;
  for (let seq = 0; seq <= last; seq++) {
    const got = await imagesAt(manager, seq, `check-${seq}`);
    if (got instanceof Error) {
      assert.equal(
        (got as RewindError).code,
        'REWIND_POINT_INVALID',
        `${label}: seq ${seq}: ${got.message}`,
      );
      assert.match(got.message, /no longer kept|before the history starts/, `${label}: seq ${seq}`);
      assert.ok(
        seq < status.everyWriteFromSeq,
        `${label}: seq ${seq} refused though every write from ${status.everyWriteFromSeq} is kept`,
      );
      continue;
    }
    const want = replay(writes, seq);
    got.forEach((image, i) =>
      assert.ok(
        image.equals(want[i] as Buffer),
        `${label}: volume ${i} at seq ${seq} differs from the replay`,
      ),
    );
    kept.add(seq);
  }
  assert.ok(kept.has(status.oldestSeq), `${label}: the oldest point ${status.oldestSeq} is kept`);
  for (let seq = status.everyWriteFromSeq; seq <= last; seq++)
    assert.ok(kept.has(seq), `${label}: seq ${seq} kept`);
  for (let seq = 0; seq < status.oldestSeq; seq++)
    assert.ok(!kept.has(seq), `${label}: seq ${seq} is before the oldest point`);
  return kept;
}

describe('retention against the model', () => {
  const totals = { merges: 0, drops: 0, pointsRefused: 0 };
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}: kept points equal the replay, the others are refused, views stay put`, async () => {
      const next = rng(seed * 7919);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-retention-'));
      const open = (): Promise<Manager> =>
        Manager.open({
          dataDir: dir,
          token: TOKEN,
          log: () => undefined,
          applier: new InThreadApply(),
          retentionMerger: new InThreadApply(),
        });
      let manager = await open();
      let agent: FakeAgent | undefined;
      try {
        // Nothing is thinned while the history is written.
        manager.retention.setPolicy({ keepEveryWrite: '3650d', keep: 'none', journalMax: '1T' });
        const { port } = await manager.listen('127.0.0.1', 0);
        agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
        const { writes, segments } = history(next, Date.now());
        for (const segment of segments) await agent.ship(segment);
        const last = writes.length;
        const bookmarks: number[] = [];
        for (let b = 0; b < next(4); b++) {
          const seq = next(last + 1);
          const mark = await manager.addBookmark(`b${b}`, String(seq));
          bookmarks.push(mark.seq);
          if (next(2) === 0) manager.pinBookmark(`b${b}`, 'forever');
        }
        const views: { name: string; seq: number }[] = [];
        for (let v = 0; v < next(3); v++) {
          const seq = next(last + 1);
          await manager.createView(`v${v}`, 'snapshot', String(seq));
          views.push({ name: `v${v}`, seq });
        }
        const policy = randomPolicy(next, manager.retention.status().journalBytes);
        manager.retention.setPolicy(policy);
        await manager.retention.settle(10_000);
        const label = `seed ${seed} ${JSON.stringify(policy)}`;
        const status = manager.retention.status();
        assert.equal(status.pendingActions, 0, `${label}: retention settled`);
        const kept = await checkEveryPoint(manager, writes, label);
        totals.merges += status.steps.merges;
        totals.drops += status.steps.drops;
        totals.pointsRefused += last + 1 - kept.size;
        for (const seq of [...bookmarks, ...views.map((v) => v.seq)])
          assert.ok(kept.has(seq), `${label}: seq ${seq} (bookmark or view) kept`);
        for (const v of views) {
          const view = manager.views.get(v.name);
          assert.ok(view);
          const want = replay(writes, v.seq);
          VOLUMES.forEach((vol, i) =>
            assert.ok(
              view.read(i, 0, vol.sizeBytes).equals(want[i] as Buffer),
              `${label}: view ${v.name} moved`,
            ),
          );
        }
        const pinned = manager.bookmarks().filter((b) => b.pinnedUntil !== null);
        for (const b of pinned)
          assert.ok(status.oldestSeq <= b.seq, `${label}: nothing dropped after pinned @${b.name}`);
        if (status.journalBytes > status.journalBytesMax) {
          assert.ok(
            status.alerts.some((a) => a.level === 'error'),
            `${label}: over the limit, and said so`,
          );
        }
        // The log: per-write entries from everyWriteFromSeq on; thinned ranges before it.
        for await (const entry of manager.log({})) {
          if (entry.kind === 'thinned')
            assert.ok(
              entry.seq <= status.everyWriteFromSeq,
              `${label}: thinned entry at ${entry.seq}`,
            );
        }
        agent.close();
        agent = undefined;
        await manager.close();
        manager = await open();
        const again = await checkEveryPoint(manager, writes, `${label} after a restart`);
        assert.deepEqual([...again], [...kept], `${label}: the same points after a restart`);
      } finally {
        agent?.close();
        await manager.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
  it('thinned and dropped history in these seeds (the checks above were not vacuous)', () => {
    assert.ok(
      totals.merges > 0 && totals.drops > 0 && totals.pointsRefused > 0,
      JSON.stringify(totals),
    );
  });
});
