// Mutation classes of the corruption sweep (sim/corruption-sweep.ts): each takes one valid segment
// and returns damaged copies, with the codes a reader may refuse them with. Raw damage (cuts, bit
// flips, zeroed or misdirected sectors, moved records) leaves checksums as they were; deliberate
// field rewrites (absurd lengths, seq gaps, wrong volumes, reserved fields) recompute the checksum
// that covers the field, so the reader's own validation of that field is what is tested.
import { RECORD_PAYLOAD_BYTES_MAX } from '../src/log/index.js';
import {
  fixHeaderCrc,
  fixTrailerCrc,
  fixUnitCrc,
  NAMED_CODES,
  resealBody,
  SECTOR_BYTES,
  UNIT_LAYOUT,
  type NamedCode,
  type RecordShape,
  type Rng,
  type SegmentFormat,
  type Subject,
  type Unit,
} from './corruption-segments.js';

export interface Mutation {
  /** What kind of change (groups the report), e.g. "cut in the trailer". */
  label: string;
  /** Exactly where, to reproduce it. */
  detail: string;
  bytes: Buffer;
  allowed: readonly NamedCode[];
}

export interface ParserClass {
  name: string;
  formats: readonly SegmentFormat[];
  /** Segment shape for this class (default: a few sectors, up to 6000-byte payloads). */
  shape?: RecordShape;
  /** Damaged copies of `subject`; `another` gives a second valid segment of the same volume set. */
  mutate(rng: Rng, subject: Subject, another: () => Subject): Mutation[];
}

const CORRUPT = 'REWIND_SEGMENT_CORRUPT';
const TRUNCATED = 'REWIND_SEGMENT_TRUNCATED';
const ORDER = 'REWIND_SEGMENT_ORDER';
const U64_MAX = 2n ** 64n - 1n;
const SAFE_MAX = BigInt(Number.MAX_SAFE_INTEGER);

function unitWord(format: SegmentFormat): string {
  return format === 'redo' ? 'record' : 'extent';
}

/** Header, the units in `order` (indexes into subject.units, repeats allowed), trailer. */
function rearrange(s: Subject, order: readonly number[]): Buffer {
  const pieces = [s.bytes.subarray(0, s.units[0]?.start ?? s.trailerAt)];
  for (const i of order) {
    const unit = s.units[i];
    if (unit) pieces.push(s.bytes.subarray(unit.start, unit.end));
  }
  pieces.push(s.bytes.subarray(s.trailerAt));
  return Buffer.concat(pieces);
}

/** Half the time, rewrites the trailer's body length and CRC too (a writer that sealed what it had). */
function maybeReseal(rng: Rng, buf: Buffer, format: SegmentFormat): string {
  if (!rng.chance(0.5)) return '';
  resealBody(buf, format);
  return ', body resealed';
}

function pickUnit(rng: Rng, s: Subject): { index: number; start: number; carriesData: boolean } {
  const index = rng.below(s.units.length);
  const unit = s.units[index] as Unit;
  return { index, start: unit.start, carriesData: unit.carriesData };
}

function isAllZero(buf: Buffer): boolean {
  return buf.every((b) => b === 0);
}

const truncation: ParserClass = {
  name: 'truncation',
  formats: ['redo', 'undo'],
  shape: { minBytes: 0, lastPayloadMax: 512 },
  mutate(_rng, s) {
    const last = s.units[s.units.length - 1];
    const out: Mutation[] = [];
    for (let cut = last?.start ?? s.trailerAt; cut < s.bytes.length; cut++) {
      const where = cut < s.trailerAt ? `in the last ${unitWord(s.format)}` : 'in the trailer';
      out.push({
        label: `cut ${where}`,
        detail: `cut to ${cut} of ${s.bytes.length} bytes`,
        bytes: s.bytes.subarray(0, cut),
        allowed: [TRUNCATED],
      });
    }
    return out;
  },
};

const bitFlips: ParserClass = {
  name: 'bit-flips',
  formats: ['redo', 'undo'],
  mutate(rng, s) {
    const bits = s.bytes.length * 8;
    const count = rng.int(1, 8);
    const burst = count > 1 && rng.chance(0.3);
    const base = rng.below(bits - 32);
    const chosen = new Set<number>();
    while (chosen.size < count) chosen.add(burst ? base + rng.below(32) : rng.below(bits));
    const buf = Buffer.from(s.bytes);
    for (const bit of chosen) buf[bit >> 3] = (buf[bit >> 3] as number) ^ (1 << (bit & 7));
    const label = burst
      ? 'burst of flipped bits'
      : count === 1
        ? 'one flipped bit'
        : 'scattered flipped bits';
    return [
      {
        label,
        detail: `bits ${[...chosen].sort((a, b) => a - b).join(',')} of ${s.bytes.length} bytes`,
        bytes: buf,
        allowed: NAMED_CODES,
      },
    ];
  },
};

const zeroedSectors: ParserClass = {
  name: 'zeroed-sectors',
  formats: ['redo', 'undo'],
  mutate(rng, s) {
    const sectors = Math.ceil(s.bytes.length / SECTOR_BYTES);
    const candidates: number[] = [];
    for (let k = 0; k < sectors; k++)
      if (!isAllZero(s.bytes.subarray(k * SECTOR_BYTES, (k + 1) * SECTOR_BYTES)))
        candidates.push(k);
    const chosen = new Set<number>([rng.pick(candidates)]);
    if (candidates.length > 1 && rng.chance(0.3)) chosen.add(rng.pick(candidates));
    const buf = Buffer.from(s.bytes);
    for (const k of chosen)
      buf.fill(0, k * SECTOR_BYTES, Math.min(buf.length, (k + 1) * SECTOR_BYTES));
    const label = chosen.has(sectors - 1)
      ? 'last (partial) sector zeroed'
      : chosen.has(0)
        ? 'first sector zeroed'
        : 'inner sector zeroed';
    return [
      {
        label,
        detail: `4 KiB sectors ${[...chosen].join(',')} of ${sectors} zeroed (${s.bytes.length} bytes)`,
        bytes: buf,
        allowed: NAMED_CODES,
      },
    ];
  },
};

/** A sector written to the wrong place: from another segment, or from elsewhere in this one. */
const misdirected: ParserClass = {
  name: 'misdirected',
  formats: ['redo'],
  mutate(rng, s, another) {
    const size = rng.pick([512, SECTOR_BYTES]);
    const fromSelf = rng.chance(0.3);
    const source = fromSelf ? s : another();
    for (let attempt = 0; attempt < 16; attempt++) {
      const dst = rng.below(Math.ceil(s.bytes.length / size));
      const src =
        !fromSelf && rng.chance(0.5) ? dst : rng.below(Math.ceil(source.bytes.length / size));
      const n = Math.min(size, s.bytes.length - dst * size, source.bytes.length - src * size);
      if (n <= 0 || (fromSelf && src === dst)) continue;
      const buf = Buffer.from(s.bytes);
      source.bytes.copy(buf, dst * size, src * size, src * size + n);
      if (buf.equals(s.bytes)) continue;
      const from = fromSelf ? 'this segment' : 'another segment';
      return [
        {
          label: `${size}-byte sector from ${from}`,
          detail: `sector ${dst} <- sector ${src} of ${from} (${n} bytes of ${s.bytes.length})`,
          bytes: buf,
          allowed: NAMED_CODES,
        },
      ];
    }
    return [];
  },
};

const reordered: ParserClass = {
  name: 'reordered',
  formats: ['redo'],
  mutate(rng, s) {
    const n = s.units.length;
    const i = rng.below(n);
    const j = (i + 1 + rng.below(n - 1)) % n;
    const order = [...Array(n).keys()];
    const swap = rng.chance(0.5);
    if (swap) [order[i], order[j]] = [j, i];
    else order.splice(j, 0, ...order.splice(i, 1));
    const buf = rearrange(s, order);
    const resealed = maybeReseal(rng, buf, s.format);
    return [
      {
        label: swap ? 'two records swapped' : 'a record moved',
        detail: `order ${order.join(',')}${resealed}`,
        bytes: buf,
        allowed: [ORDER],
      },
    ];
  },
};

const duplicated: ParserClass = {
  name: 'duplicated',
  formats: ['redo'],
  mutate(rng, s) {
    const n = s.units.length;
    const i = rng.below(n);
    const at = rng.below(n + 1);
    const order = [...Array(n).keys()];
    order.splice(at, 0, i);
    const buf = rearrange(s, order);
    const resealed = maybeReseal(rng, buf, s.format);
    const label = at === i + 1 ? 'record repeated in place' : 'record copied elsewhere';
    return [{ label, detail: `order ${order.join(',')}${resealed}`, bytes: buf, allowed: [ORDER] }];
  },
};

const dropped: ParserClass = {
  name: 'dropped',
  formats: ['redo'],
  mutate(rng, s) {
    const n = s.units.length;
    const i = rng.below(n);
    const order = [...Array(n).keys()].filter((k) => k !== i);
    const buf = rearrange(s, order);
    const resealed = maybeReseal(rng, buf, s.format);
    return [
      {
        label: i === n - 1 ? 'last record dropped' : 'inner record dropped',
        detail: `record ${i} of ${n} dropped${resealed}`,
        bytes: buf,
        allowed: [ORDER, CORRUPT],
      },
    ];
  },
};

/** Values no length field may hold: zero, past 2^53 with the offset, all ones, beyond the file or the payload bound. */
function absurdLength(rng: Rng, s: Subject, start: number, carriesData: boolean): bigint {
  const layout = UNIT_LAYOUT[s.format];
  const offset = s.bytes.readBigUInt64LE(start + layout.offsetAt);
  const room = BigInt(s.bytes.length - start - layout.headerBytes);
  const small = BigInt(rng.below(65536));
  const values = [0n, U64_MAX, SAFE_MAX - offset + 1n + small];
  if (carriesData) values.push(room + 1n + small);
  if (carriesData && s.format === 'redo')
    values.push(BigInt(RECORD_PAYLOAD_BYTES_MAX) + 1n + (rng.u64() % 2n ** 40n));
  return rng.pick(values);
}

const TRAILER_COUNTERS: Record<SegmentFormat, readonly [number, string][]> = {
  redo: [
    [8, 'record count'],
    [48, 'body bytes'],
  ],
  undo: [
    [8, 'extent count'],
    [16, 'data bytes'],
    [24, 'zero bytes'],
    [48, 'body bytes'],
  ],
};

const absurdLengths: ParserClass = {
  name: 'absurd-lengths',
  formats: ['redo', 'undo'],
  mutate(rng, s) {
    const buf = Buffer.from(s.bytes);
    if (rng.chance(0.8)) {
      const unit = pickUnit(rng, s);
      const value = absurdLength(rng, s, unit.start, unit.carriesData);
      buf.writeBigUInt64LE(value, unit.start + UNIT_LAYOUT[s.format].lengthAt);
      fixUnitCrc(buf, s.format, unit.start);
      const resealed = maybeReseal(rng, buf, s.format);
      const label = `${unitWord(s.format)} length`;
      return [
        {
          label,
          detail: `${unitWord(s.format)} ${unit.index} length := ${value}${resealed}`,
          bytes: buf,
          allowed: [CORRUPT, TRUNCATED],
        },
      ];
    }
    const [field, what] = rng.pick(TRAILER_COUNTERS[s.format]);
    const at = s.trailerAt + field;
    const value = rng.pick([
      U64_MAX,
      SAFE_MAX + 1n + BigInt(rng.below(65536)),
      buf.readBigUInt64LE(at) + 2n ** 32n + BigInt(rng.below(65536)),
    ]);
    buf.writeBigUInt64LE(value, at);
    fixTrailerCrc(buf);
    return [
      {
        label: `trailer ${what}`,
        detail: `trailer ${what} := ${value}`,
        bytes: buf,
        allowed: [CORRUPT],
      },
    ];
  },
};

/** Another seq: next or previous ones, far ones, 0 and all ones. */
function otherSeq(rng: Rng, seq: bigint): bigint {
  const small = 1n + BigInt(rng.below(1000));
  const candidates = [
    seq + small,
    seq - small,
    seq + 2n ** 32n,
    0n,
    U64_MAX,
    SAFE_MAX + small,
  ].filter((v) => v >= 0n && v <= U64_MAX && v !== seq);
  return rng.pick(candidates);
}

const seqGaps: ParserClass = {
  name: 'seq-gaps',
  formats: ['redo'],
  mutate(rng, s) {
    const buf = Buffer.from(s.bytes);
    const roll = rng.below(20);
    if (roll < 12) {
      const unit = pickUnit(rng, s);
      const value = otherSeq(rng, buf.readBigUInt64LE(unit.start + 8));
      buf.writeBigUInt64LE(value, unit.start + 8);
      fixUnitCrc(buf, 'redo', unit.start);
      const resealed = maybeReseal(rng, buf, s.format);
      return [
        {
          label: 'record seq',
          detail: `record ${unit.index} seq := ${value}${resealed}`,
          bytes: buf,
          allowed: [ORDER, CORRUPT],
        },
      ];
    }
    if (roll < 17) {
      const value = otherSeq(rng, buf.readBigUInt64LE(40));
      buf.writeBigUInt64LE(value, 40);
      fixHeaderCrc(buf);
      const resealed = maybeReseal(rng, buf, s.format);
      return [
        {
          label: 'header seqFirst',
          detail: `header seqFirst := ${value}${resealed}`,
          bytes: buf,
          allowed: [ORDER, CORRUPT],
        },
      ];
    }
    const [field, what] = rng.pick([
      [16, 'seqFirst'],
      [24, 'seqLast'],
    ] as const);
    const value = otherSeq(rng, buf.readBigUInt64LE(s.trailerAt + field));
    buf.writeBigUInt64LE(value, s.trailerAt + field);
    fixTrailerCrc(buf);
    return [
      {
        label: `trailer ${what}`,
        detail: `trailer ${what} := ${value}`,
        bytes: buf,
        allowed: [CORRUPT],
      },
    ];
  },
};

const wrongVolume: ParserClass = {
  name: 'wrong-volume',
  formats: ['redo'],
  mutate(rng, s) {
    const unit = pickUnit(rng, s);
    const volume = s.volumeCount + rng.below(65536 - s.volumeCount);
    const buf = Buffer.from(s.bytes);
    buf.writeUInt16LE(volume, unit.start + UNIT_LAYOUT.redo.volumeAt);
    fixUnitCrc(buf, 'redo', unit.start);
    const resealed = maybeReseal(rng, buf, s.format);
    return [
      {
        label: 'record volume index out of range',
        detail: `record ${unit.index} volume := ${volume} of ${s.volumeCount}${resealed}`,
        bytes: buf,
        allowed: [CORRUPT],
      },
    ];
  },
};

interface FixedField {
  label: string;
  at: (s: Subject, unitStart: number) => number;
  bytes: 1 | 2 | 4;
  /** Which checksum covers it: the header's, the unit's (both also in the body CRC) or the trailer's. */
  covered: 'header' | 'unit' | 'trailer';
}

/** Fields with one legal value (version, header size) or reserved as 0, per docs/FORMATS.md. */
const FIXED_FIELDS: Record<SegmentFormat, readonly FixedField[]> = {
  redo: [
    { label: 'redo header version', at: () => 8, bytes: 2, covered: 'header' },
    { label: 'redo header header-bytes', at: () => 10, bytes: 2, covered: 'header' },
    { label: 'redo header reserved', at: () => 56, bytes: 4, covered: 'header' },
    {
      label: 'redo record reserved byte',
      at: (_s, u) => u + UNIT_LAYOUT.redo.reservedAt,
      bytes: 1,
      covered: 'unit',
    },
    { label: 'redo trailer version', at: (s) => s.trailerAt + 4, bytes: 4, covered: 'trailer' },
  ],
  undo: [
    { label: 'undo header version', at: () => 8, bytes: 2, covered: 'header' },
    { label: 'undo header header-bytes', at: () => 10, bytes: 2, covered: 'header' },
    { label: 'undo header flags', at: () => 12, bytes: 4, covered: 'header' },
    { label: 'undo header reserved', at: () => 56, bytes: 4, covered: 'header' },
    {
      label: 'undo extent reserved byte',
      at: (_s, u) => u + UNIT_LAYOUT.undo.reservedAt,
      bytes: 1,
      covered: 'unit',
    },
    { label: 'undo trailer version', at: (s) => s.trailerAt + 4, bytes: 4, covered: 'trailer' },
    { label: 'undo trailer reserved', at: (s) => s.trailerAt + 32, bytes: 4, covered: 'trailer' },
  ],
};

/** Fixed or reserved fields rewritten with their checksums recomputed: refused, or read as the original. */
const reservedFields: ParserClass = {
  name: 'reserved-fields',
  formats: ['redo', 'undo'],
  mutate(rng, s) {
    const field = rng.pick(FIXED_FIELDS[s.format]);
    const unit = pickUnit(rng, s);
    const at = field.at(s, unit.start);
    const buf = Buffer.from(s.bytes);
    const old = buf.readUIntLE(at, field.bytes);
    const value = (old + 1 + rng.below(2 ** (8 * field.bytes) - 1)) % 2 ** (8 * field.bytes);
    buf.writeUIntLE(value, at, field.bytes);
    if (field.covered === 'header') fixHeaderCrc(buf);
    if (field.covered === 'unit') fixUnitCrc(buf, s.format, unit.start);
    if (field.covered === 'trailer') fixTrailerCrc(buf);
    else resealBody(buf, s.format);
    return [
      {
        label: field.label,
        detail: `${field.label} at byte ${at} := ${value} (was ${old}), checksums recomputed`,
        bytes: buf,
        allowed: NAMED_CODES,
      },
    ];
  },
};

export const PARSER_CLASSES: readonly ParserClass[] = [
  truncation,
  bitFlips,
  zeroedSectors,
  misdirected,
  reordered,
  duplicated,
  dropped,
  absurdLengths,
  seqGaps,
  wrongVolume,
  reservedFields,
];

/** Raw damage a stored or shipped redo segment may suffer (for the manager-level sweep). */
export const REDO_DAMAGE: readonly ParserClass[] = [
  truncation,
  bitFlips,
  zeroedSectors,
  misdirected,
  reordered,
  duplicated,
  dropped,
  seqGaps,
];
export const REDO_ABSURD_LENGTHS = absurdLengths;
