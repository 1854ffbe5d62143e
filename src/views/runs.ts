// Building a view's map in bulk: lists of sorted, disjoint runs (byte range, source id, offset in
// the source), given in priority order, overlaid into one sorted, disjoint list in which each byte
// comes from the first list that maps it. Pairwise merging, bottom up, costs O(n log k) for n runs
// in k lists, in typed arrays with no object per run; the result loads into an IntervalMap in O(n).
import { assert } from '../core/index.js';

/**
 * Runs in typed arrays; `offset` is the position in the run's source that corresponds to `start`.
 */
export class Runs {
  count = 0;
  start: Float64Array;
  end: Float64Array;
  offset: Float64Array;
  source: Int32Array;

  constructor(capacity = 16) {
    const size = Math.max(1, capacity);
    this.start = new Float64Array(size);
    this.end = new Float64Array(size);
    this.offset = new Float64Array(size);
    this.source = new Int32Array(size);
  }

  push(start: number, end: number, source: number, offset: number): void {
    if (this.count === this.start.length) this.grow(this.count * 2);
    const at = this.count;
    this.start[at] = start;
    this.end[at] = end;
    this.source[at] = source;
    this.offset[at] = offset;
    this.count = at + 1;
  }

  /** Makes room for `more` runs after the current ones. */
  reserve(more: number): void {
    if (this.count + more > this.start.length)
      this.grow(Math.max(this.start.length * 2, this.count + more));
  }

  /** Appends runs [from, to) of `other`. */
  append(other: Runs, from: number, to: number): void {
    const n = to - from;
    if (this.count + n > this.start.length) this.grow(Math.max(this.count * 2, this.count + n));
    this.start.set(other.start.subarray(from, to), this.count);
    this.end.set(other.end.subarray(from, to), this.count);
    this.offset.set(other.offset.subarray(from, to), this.count);
    this.source.set(other.source.subarray(from, to), this.count);
    this.count += n;
  }

  private grow(capacity: number): void {
    const grown = (old: Float64Array): Float64Array => {
      const array = new Float64Array(capacity);
      array.set(old.subarray(0, this.count));
      return array;
    };
    this.start = grown(this.start);
    this.end = grown(this.end);
    this.offset = grown(this.offset);
    const source = new Int32Array(capacity);
    source.set(this.source.subarray(0, this.count));
    this.source = source;
  }
}

/**
 * Lists in priority order, concatenated in `runs`: list i is runs [bounds[i], bounds[i + 1]),
 * sorted by start and disjoint. Returns one sorted, disjoint list holding, for every byte some list
 * maps, the run of the first list that maps it (clipped; its offset moved along with its start).
 * `runs` is consumed: its arrays may be reused for the result.
 */
export function overlay(runs: Runs, bounds: readonly number[]): Runs {
  assert(
    bounds.length >= 1 && bounds[0] === 0 && bounds[bounds.length - 1] === runs.count,
    'runs: bounds cover the runs',
  );
  if (bounds.length <= 2) return runs;
  // Two buffers used in turn, level by level. An overlay of some lists never holds more runs than
  // twice the runs of those lists (only their ends and starts are boundaries), so they rarely grow.
  let current = runs;
  let spare = new Runs(runs.count + (runs.count >>> 2));
  let currentBounds = bounds;
  while (currentBounds.length > 2) {
    const lists = currentBounds.length - 1;
    const merged = spare;
    merged.count = 0;
    const mergedBounds = [0];
    for (let list = 0; list < lists; list += 2) {
      const highFrom = currentBounds[list] as number;
      const highTo = currentBounds[list + 1] as number;
      if (list + 1 < lists) {
        const lowTo = currentBounds[list + 2] as number;
        // A run of the higher list can split at most one run of the lower list in two.
        merged.reserve(2 * (highTo - highFrom) + (lowTo - highTo));
        mergePair(current, highFrom, highTo, highTo, lowTo, merged);
      } else {
        merged.append(current, highFrom, highTo);
      }
      mergedBounds.push(merged.count);
    }
    spare = current; // the caller's runs too: they are consumed
    current = merged;
    currentBounds = mergedBounds;
  }
  return current;
}

/**
 * Merges runs [aFrom, aTo) (wins) and [bFrom, bTo) of `runs` into `out`, which has room for them.
 */
function mergePair(
  runs: Runs,
  aFrom: number,
  aTo: number,
  bFrom: number,
  bTo: number,
  out: Runs,
): void {
  const starts = runs.start;
  const ends = runs.end;
  const offsets = runs.offset;
  const sources = runs.source;
  const outStarts = out.start;
  const outEnds = out.end;
  const outOffsets = out.offset;
  const outSources = out.source;
  let o = out.count;
  assert(o + 2 * (aTo - aFrom) + (bTo - bFrom) <= outStarts.length, 'runs: merge output has room');
  let a = aFrom;
  let b = bFrom;
  let nextA = a < aTo ? (starts[a] as number) : Infinity;
  let position = 0; // everything before it is decided
  while (b < bTo) {
    const bStart = starts[b] as number;
    const from = bStart > position ? bStart : position;
    const bEnd = ends[b] as number;
    if (from >= bEnd) {
      b += 1;
      continue;
    }
    if (nextA <= from) {
      outStarts[o] = nextA;
      position = outEnds[o] = ends[a] as number;
      outOffsets[o] = offsets[a] as number;
      outSources[o] = sources[a] as number;
      o += 1;
      a += 1;
      nextA = a < aTo ? (starts[a] as number) : Infinity;
      continue;
    }
    const to = nextA < bEnd ? nextA : bEnd;
    outStarts[o] = from;
    outEnds[o] = to;
    outOffsets[o] = (offsets[b] as number) + (from - bStart);
    outSources[o] = sources[b] as number;
    o += 1;
    position = to;
    if (to === bEnd) b += 1;
  }
  out.count = o;
  if (a < aTo) out.append(runs, a, aTo);
}
