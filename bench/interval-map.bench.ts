// Benchmark of the views interval map: prints ops/s for set, fillGaps and query at 100k and 1M entries.
// Run: node dist/bench/interval-map.bench.js   (inputs are drawn before timing, so only the map is measured)
import { IntervalMap } from '../src/views/interval-map.js';
import { rng, type Rng } from '../test/support/model.js';

const PAGE_BYTES = 4096;
/** A 1 TiB address space, in pages. */
const SPACE_PAGES = 2 ** 28;
const LENGTH_PAGES_MAX = 16;
const FILL_OPS = 100_000;
const QUERY_OPS = 100_000;
const QUERY_BYTES = 64 * 1024;
const SET_SECONDS_MAX_PER_MILLION = 3;
const FILL_SECONDS_MAX_PER_100K = 0.3;

interface Ranges {
  starts: Float64Array;
  ends: Float64Array;
}

/** Random 4 KiB-aligned ranges of 1..lengthPagesMax pages anywhere in the first `spacePages` pages. */
function randomRanges(
  random: Rng,
  count: number,
  lengthPagesMax: number,
  spacePages = SPACE_PAGES,
): Ranges {
  const starts = new Float64Array(count);
  const ends = new Float64Array(count);
  for (let index = 0; index < count; index += 1) {
    const page = random.int(spacePages - lengthPagesMax);
    starts[index] = page * PAGE_BYTES;
    ends[index] = (page + 1 + random.int(lengthPagesMax)) * PAGE_BYTES;
  }
  return { starts, ends };
}

/** Runs `operation` over every range and returns the seconds taken. */
function time(
  ranges: Ranges,
  operation: (start: number, end: number, index: number) => void,
): number {
  const began = performance.now();
  for (let index = 0; index < ranges.starts.length; index += 1) {
    operation(ranges.starts[index] ?? 0, ranges.ends[index] ?? 0, index);
  }
  return (performance.now() - began) / 1000;
}

function report(what: string, count: number, seconds: number, note = ''): void {
  const rate = Math.round(count / seconds).toLocaleString('en-US');
  console.log(`${what.padEnd(34)} ${rate.padStart(12)} ops/s  ${seconds.toFixed(3)} s${note}`);
}

function benchAt(entriesTarget: number, seed: number): void {
  const random = rng(seed);
  const sets = randomRanges(random, entriesTarget, LENGTH_PAGES_MAX);
  const fills = randomRanges(random, FILL_OPS, LENGTH_PAGES_MAX * 4);
  const queries = randomRanges(random, QUERY_OPS, 1);
  const map = new IntervalMap<number>();

  const setSeconds = time(sets, (start, end, index) => map.set(start, end, index, 0));
  const setLimit = (SET_SECONDS_MAX_PER_MILLION * entriesTarget) / 1_000_000;
  report(
    `set x${entriesTarget}`,
    entriesTarget,
    setSeconds,
    `  (target < ${setLimit.toFixed(1)} s; ${map.size} entries)`,
  );

  let pieces = 0;
  const querySeconds = time(queries, (start) => {
    pieces += map.query(start, start + QUERY_BYTES).length;
  });
  report(
    `query 64 KiB x${QUERY_OPS} @ ${map.size}`,
    QUERY_OPS,
    querySeconds,
    `  (${(pieces / QUERY_OPS).toFixed(2)} pieces each)`,
  );

  let added = 0;
  const fillSeconds = time(fills, (start, end, index) => {
    added += map.fillGaps(start, end, -index, 0);
  });
  report(
    `fillGaps x${FILL_OPS} @ ${map.size - added}`,
    FILL_OPS,
    fillSeconds,
    `  (target < ${FILL_SECONDS_MAX_PER_100K} s; ${added} pieces added)`,
  );

  const emptyMap = new IntervalMap<number>();
  const emptyFillSeconds = time(fills, (start, end, index) => {
    emptyMap.fillGaps(start, end, index, 0);
  });
  report(`fillGaps x${FILL_OPS} into an empty map`, FILL_OPS, emptyFillSeconds);
}

/** Most sets overwrite earlier ones here: the path that splits, trims and removes entries. */
function benchOverwrites(count: number, spacePages: number, seed: number): void {
  const sets = randomRanges(rng(seed), count, LENGTH_PAGES_MAX, spacePages);
  const map = new IntervalMap<number>();
  const seconds = time(sets, (start, end, index) => map.set(start, end, index, 0));
  const spaceGiB = (spacePages * PAGE_BYTES) / 2 ** 30;
  report(
    `set x${count} in ${spaceGiB} GiB (overwrites)`,
    count,
    seconds,
    `  (${map.size} entries left)`,
  );
}

/** Sequential writes of one source join into a single entry. */
function benchSequential(count: number): void {
  const map = new IntervalMap<number>();
  const began = performance.now();
  for (let index = 0; index < count; index += 1)
    map.set(index * PAGE_BYTES, (index + 1) * PAGE_BYTES, 0, index * PAGE_BYTES);
  const seconds = (performance.now() - began) / 1000;
  report(`set x${count} sequential, one source`, count, seconds, `  (${map.size} entry)`);
}

function main(): void {
  console.log(
    `interval map benchmark (node ${process.version}, ${PAGE_BYTES} B pages in a 1 TiB space)`,
  );
  // A short warm-up so the first measured run is not the one that pays for JIT compilation.
  benchAt(20_000, 1);
  console.log('---');
  benchAt(100_000, 2);
  benchAt(1_000_000, 3);
  benchOverwrites(1_000_000, 2 ** 20, 4);
  benchSequential(1_000_000);
}

main();
