// The dirty map's mark-ahead for sequential streams: one durable mark covers the next 32 regions,
// a random write marks only its own, and regions marked ahead are cleaned like any other once
// their seq is committed, so the bitmap on disk never keeps them forever. Regions marked ahead by
// a degraded (never-clean) write hold nothing, so a resync skips them and cleaning clears them.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DirtyMap, MARK_AHEAD_REGIONS } from '../../src/agent/dirty-map.js';

const MiB = 1024 * 1024;

describe('dirty map', () => {
  it('marks ahead of a sequential stream, not of a random write, and cleans what it marked ahead', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-dirty-'));
    try {
      const file = path.join(dir, 'v.map');
      const map = DirtyMap.open(file, 1024 * MiB);
      // A sequential stream of 1 MiB writes from region 10.
      const persists: number[] = [];
      for (let region = 10; region < 10 + 3 * MARK_AHEAD_REGIONS; region++) {
        if (map.touch(region * MiB, MiB, region, 1000)) {
          persists.push(region);
          await map.persist();
        }
      }
      // The first write marks its region; the second follows a marked one and marks ahead; each
      // later durable mark covers MARK_AHEAD_REGIONS + 1 regions.
      assert.deepEqual(persists.slice(0, 3), [10, 11, 12 + MARK_AHEAD_REGIONS]);
      assert.ok(persists.length <= 4, `few durable marks for ${3 * MARK_AHEAD_REGIONS} regions`);
      // A random write far away marks its region only.
      assert.equal(map.touch(700 * MiB, 4096, 1000, 1000), true);
      assert.equal(map.isMarked(701), false);
      await map.persist();
      // On disk: what the map holds (the ahead marks are durable too).
      const reopened = DirtyMap.open(file, 1024 * MiB);
      assert.deepEqual(reopened.markedRegions(), map.markedRegions());
      reopened.close();
      // Once every seq is committed and the regions are quiet, all of it is cleaned.
      const marked = map.markedRegions().length;
      assert.ok(
        marked > 3 * MARK_AHEAD_REGIONS,
        'the stream, its marks ahead and the random write',
      );
      assert.equal(map.clean(2000, 10_000, 2000, 4096), marked);
      assert.deepEqual(map.markedRegions(), []);
      const afterClean = DirtyMap.open(file, 1024 * MiB);
      assert.deepEqual(afterClean.markedRegions(), [], 'the cleared bits reached the file');
      afterClean.close();
      map.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('leaves regions only marked ahead out of a resync, and cleans them, even behind a degraded write', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-dirty-'));
    try {
      const map = DirtyMap.open(path.join(dir, 'v.map'), 256 * MiB);
      const never = Number.MAX_SAFE_INTEGER; // what a degraded write is owned by
      // A sequential degraded stream of 4 KiB writes across regions 5 and 6.
      for (let offset = 5 * MiB; offset < 6 * MiB + 64 * 1024; offset += 4096)
        if (map.touch(offset, 4096, never, 1000)) await map.persist();
      assert.equal(map.isMarked(7), true, 'marked ahead');
      assert.equal(map.aheadOnlyCount, MARK_AHEAD_REGIONS);
      assert.deepEqual(map.regionsToResync(), [5, 6], 'only the regions written');
      // A write landing in a region marked ahead makes it one to resync.
      assert.equal(map.touch(9 * MiB, 4096, never, 1000), false, 'already marked: no persist');
      assert.deepEqual(map.regionsToResync(), [5, 6, 9]);
      // The resync logs 5, 6 and 9 (seqs 1..3) and takes the rest; then a logged write (seq 4)
      // lands in 9. Once seq 3 is committed and the regions are quiet, everything but 9 is clean,
      // the ahead-only regions too (no write owns them).
      for (const [i, region] of [5, 6, 9].entries()) map.touch(region * MiB, MiB, i + 1, 2000);
      map.touch(9 * MiB, 4096, 4, 2000);
      map.adoptMarked(3, 2000);
      const marked = map.markedRegions().length;
      assert.equal(marked, 2 + MARK_AHEAD_REGIONS, '5, 6 and the regions marked ahead of 6');
      assert.equal(map.clean(3, 10_000, 2000, 4096), marked - 1, 'all but 9');
      assert.deepEqual(map.markedRegions(), [9]);
      assert.equal(map.aheadOnlyCount, 0);
      // The resync's adoption did not lower 9's owner: it is clean once seq 4 is committed.
      assert.equal(map.clean(4, 10_000, 2000, 4096), 1);
      map.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
