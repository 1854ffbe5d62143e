// Test oracle: a plain in-memory model of a volume set, its replay at any seq, and seeded random histories.
// It shares no code with the product on purpose: a bug there must not be copied into the oracle.
import assert from 'node:assert/strict';
import fc from 'fast-check';

export type ModelWriteKind = 'write' | 'zero' | 'trim';

/** One captured write; `data` only for 'write', and then `length === data.length`. */
export type ModelWrite = {
  seq: number;
  volume: number;
  kind: ModelWriteKind;
  offset: number;
  length: number;
  data?: Buffer;
};

/** Every volume as a plain Buffer; writes are applied byte for byte, in seq order. */
export class ModelVolumeSet {
  private readonly volumes: Buffer[];
  private seqLast = 0;

  constructor(sizes: number[]) {
    for (const size of sizes)
      assert.ok(Number.isSafeInteger(size) && size >= 0, `bad volume size ${size}`);
    this.volumes = sizes.map((size) => Buffer.alloc(size));
  }

  apply(w: ModelWrite): void {
    const volume = this.volumes[w.volume];
    assert.ok(volume !== undefined, `seq ${w.seq}: no volume ${w.volume}`);
    assert.ok(w.seq > this.seqLast, `seq ${w.seq} applied after seq ${this.seqLast}`);
    assert.ok(
      Number.isSafeInteger(w.offset) && w.offset >= 0,
      `seq ${w.seq}: bad offset ${w.offset}`,
    );
    assert.ok(
      Number.isSafeInteger(w.length) && w.length > 0,
      `seq ${w.seq}: bad length ${w.length}`,
    );
    assert.ok(
      w.offset + w.length <= volume.length,
      `seq ${w.seq}: range past the end of volume ${w.volume}`,
    );
    this.seqLast = w.seq;
    if (w.kind === 'write') {
      assert.ok(w.data !== undefined, `seq ${w.seq}: write without data`);
      assert.equal(w.data.length, w.length, `seq ${w.seq}: data length differs from length`);
      w.data.copy(volume, w.offset);
    } else {
      // Zero and trim both read back as zeroes afterwards; only the hint to the storage differs.
      assert.equal(w.data, undefined, `seq ${w.seq}: ${w.kind} with data`);
      volume.fill(0, w.offset, w.offset + w.length);
    }
  }

  /** A copy of the volume's current bytes. */
  image(volume: number): Buffer {
    const bytes = this.volumes[volume];
    assert.ok(bytes !== undefined, `no volume ${volume}`);
    return Buffer.from(bytes);
  }

  get volumeCount(): number {
    return this.volumes.length;
  }
}

/** The images of every volume after applying, in order, the writes with seq <= `seq` (seq 0: all zero). */
export function replay(sizes: number[], writes: ModelWrite[], seq: number): Buffer[] {
  const model = new ModelVolumeSet(sizes);
  for (const w of writes) {
    if (w.seq <= seq) model.apply(w);
  }
  return sizes.map((_, volume) => model.image(volume));
}

export interface Rng {
  /** An integer in [0, max), for any positive safe integer max. */
  int(max: number): number;
  /** True with probability p (default 0.5). */
  bool(p?: number): boolean;
  bytes(n: number): Buffer;
  pick<V>(items: readonly V[]): V;
}

/** A deterministic PRNG (mulberry32): the same seed always gives the same sequence. */
export function rng(seed: number): Rng {
  let state = seed >>> 0;
  const next32 = (): number => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  };
  // 53 random bits, so that int() stays uniform for volumes larger than 4 GiB.
  const unit = (): number => (next32() * 2 ** 21 + (next32() >>> 11)) / 2 ** 53;
  return {
    int(max: number): number {
      assert.ok(Number.isSafeInteger(max) && max > 0, `rng.int: bad max ${max}`);
      return Math.floor(unit() * max);
    },
    bool(p = 0.5): boolean {
      return unit() < p;
    },
    bytes(n: number): Buffer {
      const out = Buffer.alloc(n);
      for (let i = 0; i < n; i += 1) out[i] = next32() & 0xff;
      return out;
    },
    pick<V>(items: readonly V[]): V {
      assert.ok(items.length > 0, 'rng.pick from an empty list');
      return items[Math.floor(unit() * items.length)] as V;
    },
  };
}

export interface HistoryOptions {
  /** Longest write in bytes (default 64 KiB, and never more than the volume). */
  maxLength?: number;
  /** Offsets and lengths are multiples of this (default 1); every volume size must be too. */
  align?: number;
  /** Aim some writes at ranges written before, so that overwrites are common (default true). */
  hotspot?: boolean;
}

const MAX_LENGTH_DEFAULT = 64 * 1024;

/** `count` writes with seqs 1..count: mostly data writes, some zeroes and trims, some overwrites, some at the last byte. */
export function randomHistory(
  random: Rng,
  sizes: number[],
  count: number,
  options: HistoryOptions = {},
): ModelWrite[] {
  const align = options.align ?? 1;
  const maxLength = options.maxLength ?? MAX_LENGTH_DEFAULT;
  const hotspot = options.hotspot ?? true;
  checkShape(sizes, align, maxLength);
  const writes: ModelWrite[] = [];
  for (let seq = 1; seq <= count; seq += 1) {
    const volume = random.int(sizes.length);
    const units = (sizes[volume] as number) / align;
    const lengthUnits = randomLengthUnits(random, Math.min(units, Math.floor(maxLength / align)));
    const earlier = hotspot ? writes.filter((w) => w.volume === volume) : [];
    const offsetUnits = randomOffsetUnits(random, units, lengthUnits, earlier, align);
    const kind = random.pick<ModelWriteKind>([
      'write',
      'write',
      'write',
      'write',
      'write',
      'write',
      'zero',
      'trim',
    ]);
    writes.push(makeWrite(seq, volume, kind, offsetUnits * align, lengthUnits * align, random));
  }
  return writes;
}

/** Half the writes are short (down to one unit), the rest spread up to the maximum. */
function randomLengthUnits(random: Rng, maxUnits: number): number {
  if (random.bool()) return 1 + random.int(Math.min(maxUnits, 8));
  return 1 + random.int(maxUnits);
}

function randomOffsetUnits(
  random: Rng,
  units: number,
  lengthUnits: number,
  earlier: ModelWrite[],
  align: number,
): number {
  const lastOffsetUnits = units - lengthUnits;
  const roll = random.int(10);
  if (roll === 0) return lastOffsetUnits; // ends at the volume's last byte
  if (roll <= 3 && earlier.length > 0) {
    // Land near an earlier write: starting inside it, or just before it so the two overlap.
    const target = random.pick(earlier.slice(-16));
    const shift = random.int(target.length / align + lengthUnits - 1) - lengthUnits + 1;
    return Math.min(lastOffsetUnits, Math.max(0, target.offset / align + shift));
  }
  return random.int(lastOffsetUnits + 1);
}

function makeWrite(
  seq: number,
  volume: number,
  kind: ModelWriteKind,
  offset: number,
  length: number,
  random: Rng,
): ModelWrite {
  if (kind === 'write') return { seq, volume, kind, offset, length, data: random.bytes(length) };
  return { seq, volume, kind, offset, length };
}

function checkShape(sizes: number[], align: number, maxLength: number): void {
  assert.ok(sizes.length > 0, 'a history needs at least one volume');
  assert.ok(Number.isSafeInteger(align) && align > 0, `bad align ${align}`);
  assert.ok(maxLength >= align, `maxLength ${maxLength} below align ${align}`);
  for (const size of sizes)
    assert.ok(
      size > 0 && size % align === 0,
      `volume size ${size} is not a positive multiple of ${align}`,
    );
}

type Placement =
  { at: 'anywhere'; offsetUnits: number } | { at: 'end' } | { at: 'again'; back: number };

interface Step {
  volume: number;
  kind: ModelWriteKind;
  lengthUnits: number;
  placement: Placement;
  dataSeed: number;
}

/** fast-check histories of 1..maxCount writes, the same shape as randomHistory; shrinks toward few, short, early writes. */
export function arbHistory(
  sizes: number[],
  maxCount: number,
  options: HistoryOptions = {},
): fc.Arbitrary<ModelWrite[]> {
  const align = options.align ?? 1;
  const maxLength = options.maxLength ?? MAX_LENGTH_DEFAULT;
  checkShape(sizes, align, maxLength);
  assert.ok(maxCount >= 1, 'arbHistory needs maxCount >= 1');
  const unitsMax = Math.max(...sizes) / align;
  const placements: Array<fc.Arbitrary<Placement>> = [
    fc.record({
      at: fc.constant('anywhere' as const),
      offsetUnits: fc.integer({ min: 0, max: unitsMax - 1 }),
    }),
    fc.record({ at: fc.constant('end' as const) }),
  ];
  if (options.hotspot ?? true)
    placements.push(fc.record({ at: fc.constant('again' as const), back: fc.nat() }));
  const step: fc.Arbitrary<Step> = fc.record({
    volume: fc.integer({ min: 0, max: sizes.length - 1 }),
    kind: fc.oneof(
      { arbitrary: fc.constant<ModelWriteKind>('write'), weight: 6 },
      { arbitrary: fc.constant<ModelWriteKind>('zero'), weight: 1 },
      { arbitrary: fc.constant<ModelWriteKind>('trim'), weight: 1 },
    ),
    lengthUnits: fc.integer({ min: 1, max: Math.max(1, Math.floor(maxLength / align)) }),
    placement: fc.oneof(...placements),
    dataSeed: fc.nat(),
  });
  return fc
    .array(step, { minLength: 1, maxLength: maxCount })
    .map((steps) => stepsToWrites(steps, sizes, align));
}

/** Clamps each step into its volume, so every generated value is a valid history. */
function stepsToWrites(steps: Step[], sizes: number[], align: number): ModelWrite[] {
  const writes: ModelWrite[] = [];
  steps.forEach((step, index) => {
    const units = (sizes[step.volume] as number) / align;
    const lengthUnits = Math.min(step.lengthUnits, units);
    const lastOffsetUnits = units - lengthUnits;
    const offsetUnits = Math.min(
      lastOffsetUnits,
      placementUnits(step.placement, writes, lastOffsetUnits, align),
    );
    const random = rng(step.dataSeed);
    writes.push(
      makeWrite(
        index + 1,
        step.volume,
        step.kind,
        offsetUnits * align,
        lengthUnits * align,
        random,
      ),
    );
  });
  return writes;
}

function placementUnits(
  placement: Placement,
  earlier: ModelWrite[],
  lastOffsetUnits: number,
  align: number,
): number {
  switch (placement.at) {
    case 'anywhere':
      return placement.offsetUnits;
    case 'end':
      return lastOffsetUnits;
    case 'again': {
      const target = earlier[earlier.length - 1 - (placement.back % Math.max(1, earlier.length))];
      return target === undefined ? 0 : target.offset / align;
    }
  }
}
