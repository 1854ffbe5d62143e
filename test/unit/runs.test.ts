// Tests for overlaying sorted run lists by priority (how views are built in bulk): random lists
// against a per-byte model, edge cases, and loading the result into an IntervalMap.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { IntervalMap } from '../../src/views/interval-map.js';
import { overlay, Runs } from '../../src/views/runs.js';
import { rng, type Rng } from '../support/model.js';

type Owner = { source: number; offset: number } | undefined;

/** Random sorted, disjoint lists over [0, space); list i uses source ids 10*i+1.. so owners are traceable. */
function randomLists(
  random: Rng,
  lists: number,
  space: number,
  maxRuns: number,
  maxLength: number,
): { runs: Runs; bounds: number[]; owners: Owner[] } {
  const runs = new Runs(2);
  const bounds = [0];
  const owners: Owner[] = new Array<Owner>(space).fill(undefined);
  const listRuns: { start: number; end: number; source: number; offset: number }[][] = [];
  for (let list = 0; list < lists; list++) {
    const mine: { start: number; end: number; source: number; offset: number }[] = [];
    let at = random.int(8);
    const count = random.int(maxRuns + 1);
    for (let i = 0; i < count && at < space; i++) {
      const length = 1 + random.int(Math.min(maxLength, space - at));
      // Source 0 is "zeroes" in views: its offset is the position itself.
      const source = random.bool(0.15) ? 0 : 10 * list + 1 + random.int(3);
      const offset = source === 0 ? at : random.int(1000);
      mine.push({ start: at, end: at + length, source, offset });
      at += length + (random.bool(0.3) ? 0 : random.int(12));
    }
    for (const run of mine) runs.push(run.start, run.end, run.source, run.offset);
    bounds.push(runs.count);
    listRuns.push(mine);
  }
  // The model: each byte from the first list that maps it.
  for (const mine of listRuns) {
    for (const run of mine) {
      for (let b = run.start; b < run.end; b++)
        if (owners[b] === undefined)
          owners[b] = { source: run.source, offset: run.offset + (b - run.start) };
    }
  }
  return { runs, bounds, owners };
}

function ownersOf(result: Runs, space: number): Owner[] {
  const owners: Owner[] = new Array<Owner>(space).fill(undefined);
  for (let i = 0; i < result.count; i++) {
    const start = result.start[i] as number;
    const end = result.end[i] as number;
    assert.ok(start < end, 'runs are not empty');
    if (i > 0) assert.ok((result.end[i - 1] as number) <= start, 'runs are sorted and disjoint');
    for (let b = start; b < end; b++)
      owners[b] = {
        source: result.source[i] as number,
        offset: (result.offset[i] as number) + (b - start),
      };
  }
  return owners;
}

describe('overlay of run lists by priority', () => {
  it('matches the per-byte model for random lists (1 to 40 lists, dense and sparse)', () => {
    const random = rng(11);
    for (let round = 0; round < 300; round++) {
      const space = 50 + random.int(400);
      const lists = 1 + random.int(40);
      const { runs, bounds, owners } = randomLists(
        random,
        lists,
        space,
        1 + random.int(20),
        1 + random.int(60),
      );
      const result = overlay(runs, bounds);
      assert.deepEqual(ownersOf(result, space), owners, `round ${round}: ${lists} lists`);
    }
  });

  it('handles no lists, empty lists and a single list', () => {
    assert.equal(overlay(new Runs(), [0]).count, 0);
    const empty = new Runs();
    assert.equal(overlay(empty, [0, 0, 0, 0]).count, 0);
    const one = new Runs();
    one.push(5, 10, 3, 100);
    one.push(12, 13, 4, 0);
    const result = overlay(one, [0, 2]);
    assert.equal(result.count, 2);
    assert.deepEqual(
      [result.start[1], result.end[1], result.source[1], result.offset[1]],
      [12, 13, 4, 0],
    );
  });

  it('a higher list splits a lower run in three and keeps the offsets moving with the starts', () => {
    const runs = new Runs(1);
    runs.push(10, 20, 1, 500); // high
    runs.push(0, 100, 2, 1000); // low
    const result = overlay(runs, [0, 1, 2]);
    const got = Array.from({ length: result.count }, (_, i) => [
      result.start[i],
      result.end[i],
      result.source[i],
      result.offset[i],
    ]);
    assert.deepEqual(got, [
      [0, 10, 2, 1000],
      [10, 20, 1, 500],
      [20, 100, 2, 1020],
    ]);
  });

  it('the result loads into an IntervalMap equal to one built with fillGaps in priority order', () => {
    const random = rng(12);
    for (let round = 0; round < 100; round++) {
      const space = 200 + random.int(2000);
      const { runs, bounds } = randomLists(random, 1 + random.int(12), space, 30, 50);
      const expected = new IntervalMap<number>({ nodeSizeMax: 4 });
      for (let list = 0; list + 1 < bounds.length; list++) {
        for (let i = bounds[list] as number; i < (bounds[list + 1] as number); i++)
          expected.fillGaps(
            runs.start[i] as number,
            runs.end[i] as number,
            runs.source[i] as number,
            runs.offset[i] as number,
          );
      }
      const result = overlay(runs, bounds);
      const loaded = new IntervalMap<number>({ nodeSizeMax: 4 });
      const sources = result.source;
      loaded.load(
        result.count,
        result.start,
        result.end,
        result.offset,
        (i) => sources[i] as number,
      );
      loaded.checkInvariants();
      assert.deepEqual([...loaded.entries()], [...expected.entries()], `round ${round}`);
    }
  });
});
