// Tests for the test oracle itself: volume-set semantics, replay at every seq, the PRNG and the history generators.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  arbHistory,
  ModelVolumeSet,
  randomHistory,
  replay,
  rng,
  type ModelWrite,
} from '../support/model.js';

/** A second, independent formulation: each byte holds what the newest covering write with seq <= `seq` left there. */
function lastWriterImages(sizes: number[], writes: ModelWrite[], seq: number): Buffer[] {
  return sizes.map((size, volume) => {
    const image = Buffer.alloc(size);
    for (let b = 0; b < size; b += 1) {
      const covering = writes.filter(
        (w) => w.volume === volume && w.seq <= seq && w.offset <= b && b < w.offset + w.length,
      );
      const newest = covering.reduce<ModelWrite | undefined>(
        (best, w) => (best === undefined || w.seq > best.seq ? w : best),
        undefined,
      );
      image[b] = newest?.data?.[b - newest.offset] ?? 0;
    }
    return image;
  });
}

function checkHistoryShape(
  sizes: number[],
  writes: ModelWrite[],
  align: number,
  maxLength: number,
): void {
  writes.forEach((w, index) => {
    const size = sizes[w.volume];
    assert.ok(size !== undefined, `seq ${w.seq}: no volume ${w.volume}`);
    assert.equal(w.seq, index + 1, 'seqs are gap-free from 1');
    assert.ok(w.length >= 1 && w.length <= maxLength, `seq ${w.seq}: length ${w.length}`);
    assert.ok(w.offset >= 0 && w.offset + w.length <= size, `seq ${w.seq}: range out of volume`);
    assert.equal(w.offset % align, 0);
    assert.equal(w.length % align, 0);
    if (w.kind === 'write') assert.equal(w.data?.length, w.length);
    else assert.equal(w.data, undefined);
  });
}

describe('ModelVolumeSet', () => {
  it('writes land at their offset, zero and trim read back as zeroes', () => {
    const model = new ModelVolumeSet([8, 4]);
    model.apply({
      seq: 1,
      volume: 0,
      kind: 'write',
      offset: 0,
      length: 8,
      data: Buffer.from([1, 2, 3, 4, 5, 6, 7, 8]),
    });
    model.apply({
      seq: 2,
      volume: 1,
      kind: 'write',
      offset: 1,
      length: 3,
      data: Buffer.from([9, 9, 9]),
    });
    model.apply({ seq: 3, volume: 0, kind: 'zero', offset: 1, length: 2 });
    model.apply({ seq: 4, volume: 0, kind: 'trim', offset: 6, length: 2 });
    assert.deepEqual(model.image(0), Buffer.from([1, 0, 0, 4, 5, 6, 0, 0]));
    assert.deepEqual(model.image(1), Buffer.from([0, 9, 9, 9]));
  });

  it('image is a copy', () => {
    const model = new ModelVolumeSet([4]);
    model.image(0).fill(7);
    assert.deepEqual(model.image(0), Buffer.alloc(4));
  });

  it('refuses malformed writes', () => {
    const model = new ModelVolumeSet([8]);
    assert.throws(() => model.apply({ seq: 1, volume: 1, kind: 'zero', offset: 0, length: 1 }));
    assert.throws(() => model.apply({ seq: 1, volume: 0, kind: 'zero', offset: 4, length: 5 }));
    assert.throws(() => model.apply({ seq: 1, volume: 0, kind: 'zero', offset: 0, length: 0 }));
    assert.throws(() =>
      model.apply({
        seq: 1,
        volume: 0,
        kind: 'write',
        offset: 0,
        length: 2,
        data: Buffer.alloc(3),
      }),
    );
    assert.throws(() => model.apply({ seq: 1, volume: 0, kind: 'write', offset: 0, length: 2 }));
    assert.throws(() =>
      model.apply({ seq: 1, volume: 0, kind: 'trim', offset: 0, length: 2, data: Buffer.alloc(2) }),
    );
    model.apply({ seq: 5, volume: 0, kind: 'zero', offset: 0, length: 1 });
    assert.throws(
      () => model.apply({ seq: 5, volume: 0, kind: 'zero', offset: 0, length: 1 }),
      'seqs only go up',
    );
  });
});

describe('replay', () => {
  const sizes = [4, 6];
  const writes: ModelWrite[] = [
    { seq: 1, volume: 0, kind: 'write', offset: 0, length: 4, data: Buffer.from([1, 1, 1, 1]) },
    { seq: 2, volume: 1, kind: 'write', offset: 2, length: 4, data: Buffer.from([2, 2, 2, 2]) },
    { seq: 3, volume: 0, kind: 'trim', offset: 1, length: 2 },
    { seq: 4, volume: 1, kind: 'write', offset: 5, length: 1, data: Buffer.from([4]) },
    { seq: 5, volume: 0, kind: 'zero', offset: 0, length: 4 },
  ];

  it('seq 0 is all zero', () => {
    assert.deepEqual(replay(sizes, writes, 0), [Buffer.alloc(4), Buffer.alloc(6)]);
  });

  it('gives the images written by hand at each seq', () => {
    const expected = [
      [
        [0, 0, 0, 0],
        [0, 0, 0, 0, 0, 0],
      ],
      [
        [1, 1, 1, 1],
        [0, 0, 0, 0, 0, 0],
      ],
      [
        [1, 1, 1, 1],
        [0, 0, 2, 2, 2, 2],
      ],
      [
        [1, 0, 0, 1],
        [0, 0, 2, 2, 2, 2],
      ],
      [
        [1, 0, 0, 1],
        [0, 0, 2, 2, 2, 4],
      ],
      [
        [0, 0, 0, 0],
        [0, 0, 2, 2, 2, 4],
      ],
    ];
    expected.forEach((images, seq) => {
      assert.deepEqual(
        replay(sizes, writes, seq),
        images.map((bytes) => Buffer.from(bytes)),
        `seq ${seq}`,
      );
    });
  });

  it('every seq of random histories matches the newest covering write per byte', () => {
    for (const seed of [1, 2, 3]) {
      const historySizes = [64, 33, 1];
      const history = randomHistory(rng(seed), historySizes, 60, { maxLength: 20 });
      for (let seq = 0; seq <= history.length; seq += 1) {
        assert.deepEqual(
          replay(historySizes, history, seq),
          lastWriterImages(historySizes, history, seq),
          `seed ${seed} seq ${seq}`,
        );
      }
    }
  });

  it('every seq of fast-check histories matches the newest covering write per byte', () => {
    const historySizes = [48, 17];
    fc.assert(
      fc.property(arbHistory(historySizes, 25, { maxLength: 16 }), fc.nat(30), (history, seq) => {
        assert.deepEqual(
          replay(historySizes, history, seq),
          lastWriterImages(historySizes, history, seq),
        );
      }),
      { numRuns: 200 },
    );
  });
});

describe('rng', () => {
  it('is deterministic per seed and differs between seeds', () => {
    const draw = (seed: number): number[] => {
      const random = rng(seed);
      return Array.from({ length: 20 }, () => random.int(1_000_000));
    };
    assert.deepEqual(draw(9), draw(9));
    assert.notDeepEqual(draw(9), draw(10));
    assert.deepEqual(rng(3).bytes(32), rng(3).bytes(32));
  });

  it('keeps int, bool, bytes and pick in range', () => {
    const random = rng(11);
    const seen = new Set<number>();
    for (let i = 0; i < 10_000; i += 1) {
      const value = random.int(7);
      assert.ok(Number.isInteger(value) && value >= 0 && value < 7);
      seen.add(value);
      const big = random.int(2 ** 50);
      assert.ok(Number.isInteger(big) && big >= 0 && big < 2 ** 50);
    }
    assert.equal(seen.size, 7);
    assert.equal(random.bytes(13).length, 13);
    assert.equal(random.bool(0), false);
    assert.equal(random.bool(1), true);
    assert.ok(['x', 'y'].includes(random.pick(['x', 'y'])));
    assert.throws(() => random.pick([]));
    assert.throws(() => random.int(0));
  });
});

describe('randomHistory', () => {
  it('has the documented shape and mix', () => {
    const sizes = [1 << 16, 4096];
    const writes = randomHistory(rng(5), sizes, 2000, { maxLength: 512 });
    checkHistoryShape(sizes, writes, 1, 512);
    const kinds = new Set(writes.map((w) => w.kind));
    assert.deepEqual([...kinds].sort(), ['trim', 'write', 'zero']);
    assert.ok(
      writes.filter((w) => w.kind === 'write').length > writes.length / 2,
      'mostly data writes',
    );
    assert.ok(
      writes.some((w) => w.length === 1),
      'some one-byte writes',
    );
    assert.ok(
      writes.some((w) => w.length === 512),
      'some writes of maxLength',
    );
    assert.ok(
      writes.some((w) => w.offset + w.length === sizes[w.volume]),
      'some writes touch the last byte',
    );
    const overlapping = writes.filter((w, index) =>
      writes
        .slice(0, index)
        .some(
          (e) =>
            e.volume === w.volume &&
            e.offset < w.offset + w.length &&
            w.offset < e.offset + e.length,
        ),
    );
    assert.ok(overlapping.length > writes.length / 10, 'a good share overwrite earlier writes');
  });

  it('respects align and stays deterministic', () => {
    const sizes = [1 << 20, 8192];
    const writes = randomHistory(rng(6), sizes, 500, { align: 4096, maxLength: 65536 });
    checkHistoryShape(sizes, writes, 4096, 65536);
    assert.deepEqual(randomHistory(rng(6), sizes, 500, { align: 4096, maxLength: 65536 }), writes);
  });

  it('refuses sizes that are not multiples of align', () => {
    assert.throws(() => randomHistory(rng(1), [5000], 10, { align: 4096 }));
  });
});

describe('arbHistory', () => {
  it('produces gap-free, in-bounds, aligned histories', () => {
    const sizes = [16384, 4096];
    fc.assert(
      fc.property(arbHistory(sizes, 30, { align: 512, maxLength: 8192 }), (writes) => {
        assert.ok(writes.length >= 1 && writes.length <= 30);
        checkHistoryShape(sizes, writes, 512, 8192);
      }),
      { numRuns: 300 },
    );
  });

  it('reaches the last byte and overwrites earlier writes', () => {
    const sizes = [1024];
    const histories = fc.sample(arbHistory(sizes, 20, { maxLength: 64 }), {
      numRuns: 200,
      seed: 1,
    });
    const overwrites = histories.filter((writes) =>
      writes.some((w, index) =>
        writes
          .slice(0, index)
          .some((e) => e.offset < w.offset + w.length && w.offset < e.offset + e.length),
      ),
    );
    assert.ok(overwrites.length > histories.length / 4, 'many histories overwrite earlier writes');
    const samples = histories.flat();
    assert.ok(samples.some((w) => w.offset + w.length === 1024));
    assert.ok(samples.some((w) => w.length === 1));
    assert.ok(samples.some((w) => w.kind === 'zero') && samples.some((w) => w.kind === 'trim'));
  });
});
