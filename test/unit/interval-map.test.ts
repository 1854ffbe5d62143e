// Tests for the views interval map: random operations against a per-byte model, edge cases, and the tree's own invariants.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { AssertionError } from '../../src/core/index.js';
import { IntervalMap, type Mapped, type Piece } from '../../src/views/interval-map.js';
import { rng, type Rng } from '../support/model.js';

/** What one byte maps to: the value and that byte's own offset in the value's source. */
type ByteSource = { value: string; offset: number } | undefined;

/** The obviously-correct model: one slot per byte. */
class ByteModel {
  readonly bytes: ByteSource[];
  constructor(space: number) {
    this.bytes = new Array<ByteSource>(space).fill(undefined);
  }
  set(start: number, end: number, value: string, valueOffset: number): void {
    for (let b = start; b < end; b += 1)
      this.bytes[b] = { value, offset: valueOffset + (b - start) };
  }
  fillGaps(start: number, end: number, value: string, valueOffset: number): void {
    for (let b = start; b < end; b += 1) {
      if (this.bytes[b] === undefined) this.bytes[b] = { value, offset: valueOffset + (b - start) };
    }
  }
  delete(start: number, end: number): void {
    for (let b = start; b < end; b += 1) this.bytes[b] = undefined;
  }
  clear(): void {
    this.bytes.fill(undefined);
  }
  /** Maximal unmapped runs inside [start, end): what fillGaps should report. */
  gapCount(start: number, end: number): number {
    let runs = 0;
    for (let b = start; b < end; b += 1) {
      if (this.bytes[b] === undefined && (b === start || this.bytes[b - 1] !== undefined))
        runs += 1;
    }
    return runs;
  }
  /** Maximal runs in which each byte continues the one before (same value, next offset): the coalesced entry count. */
  runCount(): number {
    let runs = 0;
    this.bytes.forEach((source, b) => {
      if (source !== undefined && !continues(this.bytes[b - 1], source)) runs += 1;
    });
    return runs;
  }
  mappedBytes(): number {
    return this.bytes.filter((source) => source !== undefined).length;
  }
}

function continues(before: ByteSource, source: ByteSource): boolean {
  return (
    before !== undefined &&
    source !== undefined &&
    before.value === source.value &&
    before.offset + 1 === source.offset
  );
}

/** Spreads pieces over a per-byte array of `space` slots, asserting they don't overlap. */
function expand(pieces: Iterable<Piece<string>>, space: number, base = 0): ByteSource[] {
  const bytes = new Array<ByteSource>(space).fill(undefined);
  const seen = new Array<boolean>(space).fill(false);
  for (const piece of pieces) {
    for (let b = piece.start; b < piece.end; b += 1) {
      assert.equal(seen[b - base], false, `byte ${b} covered twice`);
      seen[b - base] = true;
      if (piece.value !== undefined)
        bytes[b - base] = { value: piece.value, offset: piece.valueOffset + (b - piece.start) };
    }
  }
  return bytes;
}

function checkQuery(map: IntervalMap<string>, model: ByteModel, start: number, end: number): void {
  const pieces = map.query(start, end);
  let position = start;
  for (const piece of pieces) {
    assert.equal(piece.start, position, 'query pieces must be contiguous and in order');
    assert.ok(piece.end > piece.start, 'query piece must not be empty');
    if (piece.value === undefined) assert.equal(piece.valueOffset, 0, 'a gap has valueOffset 0');
    position = piece.end;
  }
  assert.equal(position, end, 'query pieces must end at the range end');
  assert.deepEqual(expand(pieces, end - start, start), model.bytes.slice(start, end));
}

function checkAgainstModel(map: IntervalMap<string>, model: ByteModel): void {
  map.checkInvariants();
  const space = model.bytes.length;
  assert.deepEqual(expand(map.entries(), space), model.bytes);
  assert.equal(map.mappedBytes, model.mappedBytes());
  assert.equal(map.size, model.runCount(), 'entries are not coalesced into maximal runs');
}

type Op =
  | { op: 'set' | 'fillGaps'; start: number; end: number; value: string; valueOffset: number }
  | { op: 'delete' | 'query'; start: number; end: number }
  | { op: 'clear' };

/** Ranges inside [0, space); half the offsets follow the position, so same-value neighbours join. */
function arbOp(space: number): fc.Arbitrary<Op> {
  const range = fc
    .tuple(fc.integer({ min: 0, max: space - 1 }), fc.integer({ min: 1, max: space }))
    .map(([start, length]) => ({ start, end: Math.min(space, start + length) }));
  const mapping = fc
    .tuple(range, fc.constantFrom('a', 'b', 'c'), fc.oneof(fc.constant(-1), fc.nat(40)))
    .map(([r, value, offset]) => ({
      ...r,
      value,
      valueOffset: offset === -1 ? r.start + 1000 : offset,
    }));
  return fc.oneof(
    {
      weight: 4,
      arbitrary: fc
        .tuple(fc.constantFrom('set' as const, 'fillGaps' as const), mapping)
        .map(([op, m]) => ({ op, ...m })),
    },
    {
      weight: 2,
      arbitrary: fc
        .tuple(fc.constantFrom('delete' as const, 'query' as const), range)
        .map(([op, r]) => ({ op, ...r })),
    },
    { weight: 1, arbitrary: fc.constant<Op>({ op: 'clear' }) },
  );
}

function runOp(map: IntervalMap<string>, model: ByteModel, op: Op): void {
  switch (op.op) {
    case 'set':
      map.set(op.start, op.end, op.value, op.valueOffset);
      model.set(op.start, op.end, op.value, op.valueOffset);
      break;
    case 'fillGaps': {
      const expected = model.gapCount(op.start, op.end);
      assert.equal(
        map.fillGaps(op.start, op.end, op.value, op.valueOffset),
        expected,
        'fillGaps count',
      );
      model.fillGaps(op.start, op.end, op.value, op.valueOffset);
      break;
    }
    case 'delete':
      map.delete(op.start, op.end);
      model.delete(op.start, op.end);
      break;
    case 'query':
      checkQuery(map, model, op.start, op.end);
      break;
    case 'clear':
      map.clear();
      model.clear();
      break;
  }
}

function randomOp(random: Rng, space: number, lengthMax: number): Op {
  const start = random.int(space);
  const end = Math.min(space, start + 1 + random.int(lengthMax));
  const value = random.pick(['a', 'b', 'c']);
  const valueOffset = random.bool() ? start + 1000 : random.int(40);
  const roll = random.int(10);
  if (roll < 4) return { op: 'set', start, end, value, valueOffset };
  if (roll < 6) return { op: 'fillGaps', start, end, value, valueOffset };
  if (roll < 8) return { op: 'delete', start, end };
  return { op: 'query', start, end };
}

describe('IntervalMap against a per-byte model', () => {
  for (const [nodeSizeMax, space] of [
    [4, 160],
    [5, 96],
    [64, 64],
  ] as const) {
    it(`random operation sequences (nodeSizeMax ${nodeSizeMax}, ${space} bytes)`, () => {
      fc.assert(
        fc.property(fc.array(arbOp(space), { maxLength: 60 }), (ops) => {
          const map = new IntervalMap<string>({ nodeSizeMax });
          const model = new ByteModel(space);
          for (const op of ops) {
            runOp(map, model, op);
            checkAgainstModel(map, model);
          }
        }),
        { numRuns: 300 },
      );
    });
  }

  it('a long seeded run keeps a deep tree equal to the model (nodeSizeMax 4)', () => {
    const space = 4096;
    const random = rng(0x5eed);
    const map = new IntervalMap<string>({ nodeSizeMax: 4 });
    const model = new ByteModel(space);
    for (let step = 0; step < 20_000; step += 1) {
      // Mostly short ranges so the map holds many entries; now and then a long one sweeps many away.
      const lengthMax = random.int(50) === 0 ? space : 24;
      runOp(map, model, randomOp(random, space, lengthMax));
      map.checkInvariants();
      if (step % 200 === 0) checkAgainstModel(map, model);
    }
    checkAgainstModel(map, model);
  });

  it('removing 2000 entries one by one in random order rebalances down to an empty root', () => {
    const random = rng(7);
    const map = new IntervalMap<string>({ nodeSizeMax: 4 });
    const starts = Array.from({ length: 2000 }, (_, index) => index * 10);
    for (const start of starts) map.set(start, start + 5, 'a', start);
    map.checkInvariants();
    assert.equal(map.size, 2000);
    for (let left = starts.length; left > 0; left -= 1) {
      const [start] = starts.splice(random.int(left), 1);
      assert.ok(start !== undefined);
      map.delete(start, start + 5);
      map.checkInvariants();
    }
    assert.equal(map.size, 0);
    assert.equal(map.mappedBytes, 0);
    assert.deepEqual([...map.entries()], []);
  });
});

function entriesOf(map: IntervalMap<string>): Array<Mapped<string>> {
  map.checkInvariants();
  return [...map.entries()];
}

describe('IntervalMap edge cases', () => {
  it('adjacent entries of different values stay apart', () => {
    const map = new IntervalMap<string>();
    map.set(0, 10, 'a', 0);
    map.set(10, 20, 'b', 10);
    assert.deepEqual(entriesOf(map), [
      { start: 0, end: 10, value: 'a', valueOffset: 0 },
      { start: 10, end: 20, value: 'b', valueOffset: 10 },
    ]);
  });

  it('adjacent entries of one value join only when their offsets continue', () => {
    const map = new IntervalMap<string>();
    map.set(10, 20, 'a', 110);
    map.set(0, 10, 'a', 100);
    map.set(20, 30, 'a', 120);
    assert.deepEqual(entriesOf(map), [{ start: 0, end: 30, value: 'a', valueOffset: 100 }]);
    map.set(30, 40, 'a', 0);
    assert.equal(entriesOf(map).length, 2);
  });

  it('a range set inside an entry splits it and moves the right part offset', () => {
    const map = new IntervalMap<string>();
    map.set(0, 100, 'a', 1000);
    map.set(40, 60, 'b', 0);
    assert.deepEqual(entriesOf(map), [
      { start: 0, end: 40, value: 'a', valueOffset: 1000 },
      { start: 40, end: 60, value: 'b', valueOffset: 0 },
      { start: 60, end: 100, value: 'a', valueOffset: 1060 },
    ]);
    assert.equal(map.mappedBytes, 100);
  });

  it('an exact overlap replaces the entry', () => {
    const map = new IntervalMap<string>();
    map.set(10, 20, 'a', 0);
    map.set(10, 20, 'b', 5);
    assert.deepEqual(entriesOf(map), [{ start: 10, end: 20, value: 'b', valueOffset: 5 }]);
  });

  it('a set over several entries replaces them and trims the ones at its edges', () => {
    const map = new IntervalMap<string>();
    for (let start = 0; start < 100; start += 10) map.set(start, start + 5, 'a', start);
    map.set(12, 83, 'b', 0);
    assert.deepEqual(entriesOf(map), [
      { start: 0, end: 5, value: 'a', valueOffset: 0 },
      { start: 10, end: 12, value: 'a', valueOffset: 10 },
      { start: 12, end: 83, value: 'b', valueOffset: 0 },
      { start: 83, end: 85, value: 'a', valueOffset: 83 },
      { start: 90, end: 95, value: 'a', valueOffset: 90 },
    ]);
  });

  it('fillGaps maps only the gaps, at offsets relative to its start, and counts them', () => {
    const map = new IntervalMap<string>();
    map.set(10, 20, 'a', 0);
    map.set(30, 40, 'a', 50);
    assert.equal(map.fillGaps(0, 50, 'c', 100), 3);
    assert.deepEqual(entriesOf(map), [
      { start: 0, end: 10, value: 'c', valueOffset: 100 },
      { start: 10, end: 20, value: 'a', valueOffset: 0 },
      { start: 20, end: 30, value: 'c', valueOffset: 120 },
      { start: 30, end: 40, value: 'a', valueOffset: 50 },
      { start: 40, end: 50, value: 'c', valueOffset: 140 },
    ]);
    assert.equal(map.fillGaps(5, 45, 'd', 0), 0);
    assert.equal(map.fillGaps(0, 60, 'c', 100), 1);
    assert.equal(entriesOf(map).at(-1)?.end, 60, 'the last gap joins the entry before it');
    assert.equal(map.size, 5);
  });

  it('delete in the middle of an entry keeps both sides', () => {
    const map = new IntervalMap<string>();
    map.set(0, 100, 'a', 7);
    map.delete(30, 70);
    map.delete(200, 300);
    assert.deepEqual(entriesOf(map), [
      { start: 0, end: 30, value: 'a', valueOffset: 7 },
      { start: 70, end: 100, value: 'a', valueOffset: 77 },
    ]);
    assert.equal(map.mappedBytes, 60);
  });

  it('query reports gaps and clips entries with their offsets', () => {
    const map = new IntervalMap<string>();
    assert.deepEqual(map.query(5, 15), [{ start: 5, end: 15, value: undefined, valueOffset: 0 }]);
    map.set(10, 20, 'a', 100);
    assert.deepEqual(map.query(0, 30), [
      { start: 0, end: 10, value: undefined, valueOffset: 0 },
      { start: 10, end: 20, value: 'a', valueOffset: 100 },
      { start: 20, end: 30, value: undefined, valueOffset: 0 },
    ]);
    assert.deepEqual(map.query(12, 15), [{ start: 12, end: 15, value: 'a', valueOffset: 102 }]);
    assert.deepEqual(map.query(20, 21), [{ start: 20, end: 21, value: undefined, valueOffset: 0 }]);
    assert.deepEqual(map.query(19, 20), [{ start: 19, end: 20, value: 'a', valueOffset: 109 }]);
  });

  it('positions near 2^50 and up to 2^53 keep exact offsets', () => {
    const map = new IntervalMap<string>();
    const base = 2 ** 50;
    map.set(base, base + 8192, 'a', base - 4096);
    map.set(base + 4096, base + 4097, 'b', 2 ** 52);
    map.set(2 ** 53 - 10, 2 ** 53, 'c', 2 ** 53 - 10);
    assert.deepEqual(map.query(base + 4095, base + 4098), [
      { start: base + 4095, end: base + 4096, value: 'a', valueOffset: base - 1 },
      { start: base + 4096, end: base + 4097, value: 'b', valueOffset: 2 ** 52 },
      { start: base + 4097, end: base + 4098, value: 'a', valueOffset: base + 1 },
    ]);
    assert.deepEqual(map.query(2 ** 53 - 1, 2 ** 53), [
      { start: 2 ** 53 - 1, end: 2 ** 53, value: 'c', valueOffset: 2 ** 53 - 1 },
    ]);
    assert.equal(map.fillGaps(0, 2 ** 53, 'd', 0), 2);
    assert.equal(map.mappedBytes, 2 ** 53);
    map.delete(base, 2 ** 53);
    assert.deepEqual(entriesOf(map), [{ start: 0, end: base, value: 'd', valueOffset: 0 }]);
  });

  it('refuses empty, negative, fractional and too large ranges and offsets', () => {
    const map = new IntervalMap<string>();
    assert.throws(() => map.set(5, 5, 'a', 0), AssertionError);
    assert.throws(() => map.set(6, 5, 'a', 0), AssertionError);
    assert.throws(() => map.set(-1, 5, 'a', 0), AssertionError);
    assert.throws(() => map.set(0, 5, 'a', -1), AssertionError);
    assert.throws(() => map.set(0.5, 5, 'a', 0), AssertionError);
    assert.throws(() => map.set(0, 2 ** 53 + 2, 'a', 0), AssertionError);
    assert.throws(() => map.set(0, 10, 'a', 2 ** 53 - 5), AssertionError);
    assert.throws(() => map.fillGaps(3, 3, 'a', 0), AssertionError);
    assert.throws(() => map.delete(3, 2), AssertionError);
    assert.throws(() => map.query(3, 3), AssertionError);
    assert.throws(() => new IntervalMap<string>({ nodeSizeMax: 3 }), AssertionError);
    assert.equal(map.size, 0);
  });

  it('entries are copies and clear empties the map', () => {
    const map = new IntervalMap<string>();
    map.set(0, 10, 'a', 0);
    for (const entry of map.entries()) entry.end = 99;
    assert.deepEqual(entriesOf(map), [{ start: 0, end: 10, value: 'a', valueOffset: 0 }]);
    map.clear();
    assert.equal(map.size, 0);
    assert.equal(map.mappedBytes, 0);
    map.set(0, 10, 'b', 0);
    assert.equal(entriesOf(map).length, 1);
  });

  it('filling the hole between two joinable entries joins all three, also across leaves', () => {
    for (const nodeSizeMax of [4, 64]) {
      const map = new IntervalMap<string>({ nodeSizeMax });
      // Every other 10-byte slot of one source, then the holes in a shuffled order.
      for (let slot = 0; slot < 200; slot += 2) map.set(slot * 10, slot * 10 + 10, 'a', slot * 10);
      assert.equal(entriesOf(map).length, 100);
      const random = rng(nodeSizeMax);
      const holes = Array.from({ length: 100 }, (_, index) => index * 2 + 1).sort(
        () => random.int(3) - 1,
      );
      for (const slot of holes) map.set(slot * 10, slot * 10 + 10, 'a', slot * 10);
      assert.deepEqual(entriesOf(map), [{ start: 0, end: 2000, value: 'a', valueOffset: 0 }]);
    }
  });

  it('values are compared by identity when joining', () => {
    const source = { name: 'segment-1' };
    const map = new IntervalMap<{ name: string }>();
    map.set(0, 10, source, 0);
    map.set(10, 20, source, 10);
    map.set(20, 30, { name: 'segment-1' }, 20);
    map.checkInvariants();
    assert.equal(map.size, 2);
  });

  it('100k random 4 KiB-aligned sets in 1 TiB keep every invariant and the byte count', () => {
    const random = rng(42);
    const map = new IntervalMap<number>();
    const pages = 2 ** 28;
    for (let index = 0; index < 100_000; index += 1) {
      const page = random.int(pages - 16);
      map.set(page * 4096, (page + 1 + random.int(16)) * 4096, index, 0);
    }
    map.checkInvariants();
    let bytes = 0;
    for (const piece of map.query(0, 2 ** 40))
      if (piece.value !== undefined) bytes += piece.end - piece.start;
    assert.equal(bytes, map.mappedBytes);
  });
});

describe('IntervalMap bulk load and forEachPiece', () => {
  /** The entries of a map built with random operations: a sorted, disjoint input for load. */
  function entriesOf(random: Rng, space: number, ops: number): Mapped<string>[] {
    const built = new IntervalMap<string>();
    const model = new ByteModel(space);
    for (let i = 0; i < ops; i += 1) runOp(built, model, randomOp(random, space, 40));
    return [...built.entries()];
  }

  function loaded(entries: readonly Mapped<string>[], nodeSizeMax: number): IntervalMap<string> {
    const map = new IntervalMap<string>({ nodeSizeMax });
    map.load(
      entries.length,
      entries.map((e) => e.start),
      entries.map((e) => e.end),
      entries.map((e) => e.valueOffset),
      (i) => (entries[i] as Mapped<string>).value,
    );
    return map;
  }

  for (const nodeSizeMax of [4, 5, 8, 64]) {
    it(`load gives a valid tree equal to its input for 0..600 entries (nodeSizeMax ${nodeSizeMax})`, () => {
      const random = rng(nodeSizeMax);
      for (let round = 0; round < 60; round += 1) {
        const entries = entriesOf(random, 2000, random.int(round < 10 ? 8 : 600));
        const map = loaded(entries, nodeSizeMax);
        map.checkInvariants();
        assert.deepEqual([...map.entries()], entries);
        assert.equal(
          map.mappedBytes,
          entries.reduce((sum, e) => sum + e.end - e.start, 0),
        );
        // The loaded tree keeps working like any other: more operations against the model.
        const model = new ByteModel(2000);
        for (const e of entries) model.set(e.start, e.end, e.value, e.valueOffset);
        for (let i = 0; i < 200; i += 1) runOp(map, model, randomOp(random, 2000, 60));
        checkAgainstModel(map, model);
      }
    });
  }

  it('load joins touching entries that set would join, and keeps the others apart', () => {
    const map = new IntervalMap<string>({ nodeSizeMax: 4 });
    map.load(
      4,
      [0, 10, 20, 30],
      [10, 20, 30, 40],
      [100, 110, 0, 5],
      (i) => ['a', 'a', 'a', 'b'][i] as string,
    );
    assert.deepEqual(
      [...map.entries()],
      [
        { start: 0, end: 20, value: 'a', valueOffset: 100 },
        { start: 20, end: 30, value: 'a', valueOffset: 0 },
        { start: 30, end: 40, value: 'b', valueOffset: 5 },
      ],
    );
    map.checkInvariants();
  });

  it('load refuses overlapping or unsorted input and a map that is not empty', () => {
    const value = (): string => 'a';
    assert.throws(
      () => new IntervalMap<string>().load(2, [0, 5], [10, 20], [0, 0], value),
      AssertionError,
    );
    assert.throws(
      () => new IntervalMap<string>().load(2, [20, 0], [30, 10], [0, 0], value),
      AssertionError,
    );
    assert.throws(() => new IntervalMap<string>().load(1, [5], [5], [0], value), AssertionError);
    const full = new IntervalMap<string>();
    full.set(0, 1, 'a', 0);
    assert.throws(() => full.load(1, [5], [6], [0], value), AssertionError);
  });

  it('forEachPiece visits exactly the pieces query returns', () => {
    const random = rng(77);
    for (const nodeSizeMax of [4, 64]) {
      const map = new IntervalMap<string>({ nodeSizeMax });
      const model = new ByteModel(3000);
      for (let i = 0; i < 400; i += 1) runOp(map, model, randomOp(random, 3000, 50));
      for (let i = 0; i < 300; i += 1) {
        const start = random.int(3000);
        const end = Math.min(3000, start + 1 + random.int(random.bool() ? 30 : 3000));
        const visited: Piece<string>[] = [];
        map.forEachPiece(start, end, (s, e, value, valueOffset) =>
          visited.push(
            value === undefined
              ? { start: s, end: e, value, valueOffset: 0 }
              : { start: s, end: e, value, valueOffset },
          ),
        );
        assert.deepEqual(visited, map.query(start, end));
      }
    }
  });
});
