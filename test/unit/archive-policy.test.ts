// The archive's retention policy and its executor, without a manager: which batch objects, full
// images and chunks a policy deletes (every write kept for the window and for pinned points, a
// base full image of every volume before that, one full image per tier interval, nothing at all
// without a base), the policy's flags refused when they cannot work, and the executor against a
// directory store: the catalog forgets first and queues the keys, the store deletes them, a
// store that fails or a crash in between leaves them queued for the next run.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openStore, type ObjectStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { ArchiveRetention } from '../../src/manager/archive-retention.js';
import {
  archivePolicyFrom,
  DEFAULT_ARCHIVE_POLICY,
  planArchive,
  type ArchivePlanInput,
} from '../../src/manager/archive-retention-policy.js';
import { Catalog } from '../../src/manager/catalog.js';

const DAY_US = 86_400_000_000;
const NOW_US = 1000 * DAY_US;

/** One object per day for `days` days before now, 10 seqs each. */
function dailyObjects(days: number): ArchivePlanInput['objects'] {
  return Array.from({ length: days }, (_, d) => ({
    key: `o/${d}`,
    seqFirst: d * 10 + 1,
    seqLast: d * 10 + 10,
    timeLastUs: NOW_US - (days - d) * DAY_US + DAY_US / 2,
  }));
}

/** A full image at the end of day `d`'s object. */
function fullAt(
  id: number,
  d: number,
  days: number,
  volumes = [0, 1],
): ArchivePlanInput['fulls'][0] {
  return {
    id,
    seq: d * 10 + 10,
    timeUs: NOW_US - (days - d) * DAY_US + DAY_US / 2,
    volumes,
    manifestKey: `f/${id}`,
  };
}

function input(overrides: Partial<ArchivePlanInput>): ArchivePlanInput {
  return {
    policy: archivePolicyFrom({ keepEveryWrite: '10d', keep: '1d:30d,7d:90d' }),
    nowUs: NOW_US,
    objects: dailyObjects(60),
    fulls: [],
    volumes: [0, 1],
    holdSeqs: [],
    ...overrides,
  };
}

describe('archive retention: the plan', () => {
  it('deletes nothing without a full image before the window, and says why', () => {
    const plan = planArchive(input({}));
    assert.deepEqual(plan.deleteObjects, []);
    assert.equal(plan.baseSeq, null);
    assert.equal(plan.everyWriteFromSeq, 500); // day 50 of 60 is where the 10-day window starts
    assert.match(plan.stuck ?? '', /no full image of every volume at or before seq 500/);
  });

  it('a history younger than the window: nothing to do and nothing stuck', () => {
    const plan = planArchive(input({ objects: dailyObjects(5) }));
    assert.deepEqual(plan.deleteObjects, []);
    assert.equal(plan.stuck, undefined);
  });

  it('a base full image: the objects at or before it go, every write after it stays', () => {
    const fulls = [fullAt(1, 20, 60), fullAt(2, 45, 60), fullAt(3, 55, 60)];
    const plan = planArchive(input({ fulls }));
    assert.equal(plan.baseSeq, 460); // the newest full at or before seq 500
    assert.deepEqual(
      plan.deleteObjects,
      dailyObjects(60)
        .filter((o) => o.seqLast <= 460)
        .map((o) => o.key),
    );
    assert.ok(!plan.deleteObjects.includes('o/46'), 'the object after the base stays');
    assert.deepEqual(plan.deleteFulls, [], 'day 20 is in the 7d:90d tier, alone in its week');
  });

  it('a full image of only some volumes is no base', () => {
    const plan = planArchive(input({ fulls: [fullAt(1, 45, 60, [0])] }));
    assert.equal(plan.baseSeq, null);
    assert.deepEqual(plan.deleteObjects, []);
  });

  it('a pinned point keeps every write from it on', () => {
    const fulls = [fullAt(1, 20, 60), fullAt(2, 45, 60)];
    const plan = planArchive(input({ fulls, holdSeqs: [300] }));
    assert.equal(plan.everyWriteFromSeq, 300);
    assert.equal(plan.baseSeq, 210);
    assert.ok(plan.deleteObjects.every((key) => Number(key.slice(2)) <= 20));
  });

  it('tiers keep the newest full image of each interval, none past the last tier', () => {
    const days = 200;
    const fulls = Array.from({ length: days }, (_, d) => fullAt(d + 1, d, days));
    const plan = planArchive(input({ objects: dailyObjects(days), fulls }));
    const base = fulls.find((f) => f.seq === plan.baseSeq);
    assert.ok(base);
    const kept = fulls.filter((f) => !plan.deleteFulls.includes(f.id));
    for (const full of kept) {
      const ageDays = (NOW_US - full.timeUs) / DAY_US;
      assert.ok(ageDays <= 90, `full at ${ageDays.toFixed(1)} days is past every tier`);
    }
    // The 1d:30d tier keeps one a day, every daily one; the 7d:90d tier one a week.
    const inTier = (from: number, to: number): number =>
      kept.filter((f) => {
        const age = (NOW_US - f.timeUs) / DAY_US;
        return age > from && age <= to;
      }).length;
    assert.equal(inTier(10.5, 30), 19); // ages 11.5 .. 29.5 days
    const weekly = inTier(30, 90);
    assert.ok(weekly >= 8 && weekly <= 10, `${weekly} weekly points between 30 and 90 days`);
    // The newest object is never deleted; nothing younger than the base goes.
    assert.ok(!plan.deleteObjects.includes(`o/${days - 1}`));
  });

  it('the policy flags: defaults, and refusals that say what is wrong', () => {
    assert.deepEqual(archivePolicyFrom(undefined), DEFAULT_ARCHIVE_POLICY);
    assert.equal(archivePolicyFrom({ keepEveryWrite: '7d' }).keepEveryWriteMs, 7 * 86_400_000);
    assert.deepEqual(archivePolicyFrom({ keep: 'none' }).tiers, []);
    const refused = (text: { keepEveryWrite?: string; keep?: string }, pattern: RegExp): void =>
      assert.throws(
        () => archivePolicyFrom(text),
        (error: unknown) =>
          error instanceof RewindError &&
          error.code === 'REWIND_BAD_ARGUMENT' &&
          pattern.test(error.message),
      );
    refused({ keepEveryWrite: 'soon' }, /--archive-keep-every-write "soon" is not a duration/);
    refused({ keepEveryWrite: '0d' }, /more than 0/);
    refused({ keepEveryWrite: '30d', keep: '1d:20d' }, /--archive-keep: tier 1d:20d ends at/);
  });
});

describe('archive retention: the executor', () => {
  async function setUp(): Promise<{
    dir: string;
    catalog: Catalog;
    store: ObjectStore;
    keys: string[];
  }> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-retention-'));
    const catalog = new Catalog(path.join(dir, 'catalog.sqlite'));
    catalog.addVolume(0, 'a', 4096);
    const store = await openStore(path.join(dir, 'archive'));
    const keys: string[] = [];
    const objects = dailyObjects(60);
    for (const [i, o] of objects.entries()) {
      await store.put(o.key, Buffer.from(`object ${i}`));
      keys.push(o.key);
      catalog.recordArchiveObject(
        {
          key: o.key,
          firstIdx: i + 1,
          lastIdx: i + 1,
          seqFirst: o.seqFirst,
          seqLast: o.seqLast,
          timeFirstUs: o.timeLastUs - 1,
          timeLastUs: o.timeLastUs,
          txCount: 1,
          plainBytes: 9,
          storedBytes: 9,
          sha256: '00',
          createdAt: new Date().toISOString(),
        },
        [
          {
            idx: i + 1,
            kind: 'redo',
            seqFirst: o.seqFirst,
            seqLast: o.seqLast,
            timeFirstUs: o.timeLastUs - 1,
            timeLastUs: o.timeLastUs,
            objectKey: o.key,
            redoOffset: 0,
            redoLength: 1,
            redoCrc: 0,
            undoOffset: 1,
            undoLength: 1,
            undoCrc: 0,
          },
        ],
      );
    }
    // Two full images sharing chunk "c1"; the old one alone has "c0".
    for (const chunk of ['c0', 'c1', 'c2']) {
      await store.put(`chunks/${chunk}`, Buffer.from(chunk));
      catalog.recordChunk({
        id: chunk,
        key: `chunks/${chunk}`,
        plainBytes: 2,
        storedBytes: 2,
        createdAt: new Date().toISOString(),
      });
    }
    for (const [d, chunks] of [
      [5, ['c0', 'c1']],
      [45, ['c1', 'c2']],
    ] as const) {
      const f = fullAt(0, d, 60, [0]);
      await store.put(f.manifestKey.replace('f/0', `f/${d}`), Buffer.from('manifest'));
      catalog.recordFull(
        {
          seq: f.seq,
          timeUs: f.timeUs,
          manifestKey: `f/${d}`,
          volumes: [0],
          logicalBytes: 4096,
          chunkCount: 2,
          newChunks: 2,
          storedBytes: 4,
          createdAt: new Date().toISOString(),
        },
        [...chunks],
      );
    }
    return { dir, catalog, store, keys };
  }

  it('forgets, then deletes in the store; a failing store leaves the keys queued', async () => {
    const { dir, catalog, store } = await setUp();
    try {
      // keep 1d:30d: the full image of day 5 (55 days old) is past every tier.
      const policy = archivePolicyFrom({ keepEveryWrite: '10d', keep: '1d:30d' });
      let failDeletes = true;
      const flaky: ObjectStore = Object.create(store) as ObjectStore;
      flaky.delete = async (keys) => {
        if (failDeletes) {
          throw new RewindError('REWIND_ARCHIVE_UNAVAILABLE', 'the store is down (test)');
        }
        return store.delete(keys);
      };
      const retention = new ArchiveRetention(
        { catalog, store: flaky, log: () => undefined, holdSeqs: () => [] },
        policy,
      );
      const plan = await retention.run(NOW_US);
      assert.equal(plan.baseSeq, 460);
      assert.equal(plan.deleteObjects.length, 46);
      assert.equal(catalog.archiveObjects().length, 14, 'the catalog forgot 46 objects');
      assert.equal(catalog.fulls().length, 1);
      assert.deepEqual(
        catalog.archiveChunks().map((c) => c.id),
        ['c1', 'c2'],
        'c0 belonged only to the full image that went',
      );
      const queued = catalog.pendingArchiveDeletionCount();
      assert.equal(queued, 46 + 1 + 1);
      assert.equal(retention.status(NOW_US).pendingDeletions, queued);
      assert.match(retention.status(NOW_US).lastError ?? '', /the store is down/);
      assert.ok(await store.head('o/0'), 'nothing deleted while the store fails');

      failDeletes = false;
      await retention.run(NOW_US);
      assert.equal(catalog.pendingArchiveDeletionCount(), 0);
      for (const key of ['o/0', 'o/45', 'f/5', 'chunks/c0']) {
        assert.equal(await store.head(key), undefined, `${key} deleted`);
      }
      for (const key of ['o/46', 'o/59', 'f/45', 'chunks/c1', 'chunks/c2']) {
        assert.ok(await store.head(key), `${key} kept`);
      }
      assert.deepEqual(retention.status(NOW_US).deleted, {
        objects: 46,
        txs: 46,
        fulls: 1,
        chunks: 1,
      });
    } finally {
      catalog.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a crash between forgetting and deleting: the next start deletes what was queued', async () => {
    const { dir, catalog, store } = await setUp();
    try {
      const policy = archivePolicyFrom({ keepEveryWrite: '10d', keep: '1d:30d' });
      // The forgetting of a run, and then nothing (the process died before the store's deletes).
      const plan = new ArchiveRetention(
        { catalog, store, log: () => undefined, holdSeqs: () => [] },
        policy,
      ).plan(NOW_US);
      catalog.forgetArchived(plan.deleteObjects, plan.deleteFulls, 'test');
      catalog.close();
      const reopened = new Catalog(path.join(dir, 'catalog.sqlite'));
      try {
        assert.equal(reopened.pendingArchiveDeletionCount(), 48);
        assert.ok(await store.head('o/0'));
        const retention = new ArchiveRetention(
          { catalog: reopened, store, log: () => undefined, holdSeqs: () => [] },
          policy,
        );
        const again = await retention.run(NOW_US);
        assert.deepEqual(again.deleteObjects, [], 'nothing more to forget');
        assert.equal(reopened.pendingArchiveDeletionCount(), 0);
        assert.equal(await store.head('o/0'), undefined);
        assert.equal(await store.head('chunks/c0'), undefined);
      } finally {
        reopened.close();
      }
    } finally {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a run waits for a full image being taken (exclusive)', async () => {
    const { dir, catalog, store } = await setUp();
    try {
      const policy = archivePolicyFrom({ keepEveryWrite: '10d', keep: '1d:30d' });
      const retention = new ArchiveRetention(
        { catalog, store, log: () => undefined, holdSeqs: () => [] },
        policy,
      );
      let release: () => void = () => undefined;
      const full = retention.exclusive(() => new Promise<void>((resolve) => (release = resolve)));
      const run = retention.run(NOW_US);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(catalog.archiveObjects().length, 60, 'nothing forgotten while the full runs');
      release();
      await full;
      await run;
      assert.equal(catalog.archiveObjects().length, 14);
    } finally {
      catalog.close();
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
