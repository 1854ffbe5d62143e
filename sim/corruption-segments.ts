// Building blocks of the corruption sweep (sim/corruption-sweep.ts): a seeded PRNG, valid random
// redo and undo segments with their byte layout (where each record or extent lies), checksum
// fixers for deliberate field rewrites, and the judge that decides whether a parser's answer to a
// mutated segment is a named refusal, an acceptance of the original content, or a violation.
import { crc32c, SegmentError } from '../src/core/index.js';
import {
  buildSealedRedo,
  parseSealedRedo,
  parseUndo,
  RECORD_HEADER_BYTES,
  TRAILER_BYTES,
  UndoBuilder,
  EXTENT_HEADER_BYTES,
  type RecordMeta,
  type RedoHeader,
  type UndoExtentMeta,
  type UndoHeader,
} from '../src/log/index.js';

export const NAMED_CODES = [
  'REWIND_SEGMENT_CORRUPT',
  'REWIND_SEGMENT_TRUNCATED',
  'REWIND_SEGMENT_ORDER',
  'REWIND_SEQ_GAP',
] as const;
export type NamedCode = (typeof NAMED_CODES)[number];
export const SECTOR_BYTES = 4096;

/** sfc32 seeded through splitmix32: small, fast and identical on every platform. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(seed: number, stream: string) {
    let h = seed >>> 0;
    for (let i = 0; i < stream.length; i++)
      h = Math.imul(h ^ stream.charCodeAt(i), 0x01000193) >>> 0;
    const next = (): number => {
      h = (h + 0x9e3779b9) >>> 0;
      let z = h;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      return (z ^ (z >>> 16)) >>> 0;
    };
    this.a = next();
    this.b = next();
    this.c = next();
    this.d = next();
    for (let i = 0; i < 12; i++) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, n) for n <= 2^53. */
  below(n: number): number {
    return Math.floor(((this.u32() * 2 ** 21 + (this.u32() >>> 11)) / 2 ** 53) * n);
  }

  /** Uniform in [lo, hi], both included. */
  int(lo: number, hi: number): number {
    return lo + this.below(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from an empty list');
    return items[this.below(items.length)] as T;
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(n: number): Buffer {
    const buf = Buffer.allocUnsafe(n);
    for (let at = 0; at < n; at += 4) {
      const v = this.u32();
      for (let k = 0; k < 4 && at + k < n; k++) buf[at + k] = (v >>> (8 * k)) & 0xff;
    }
    return buf;
  }
}

export interface VolumeSet {
  id: Buffer;
  sizes: number[];
}

export function randomVolumeSet(rng: Rng, sizeMin: number, sizeMax: number): VolumeSet {
  const count = rng.int(2, 4);
  const sizes = Array.from(
    { length: count },
    () => rng.int(sizeMin / SECTOR_BYTES, sizeMax / SECTOR_BYTES) * SECTOR_BYTES,
  );
  return { id: rng.bytes(16), sizes };
}

export function uuidOf(id: Buffer): string {
  const hex = id.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export type Rec = RecordMeta & { data?: Buffer };

export interface RecordShape {
  /** Records in the segment; when absent, 2..10 and more until `minBytes`. */
  count?: number;
  /** Keep adding records until the segment has at least this many bytes (sector-level faults need a few sectors). */
  minBytes: number;
  /** Largest payload of the last record, and of every undo extent (truncation walks every byte of the last). */
  lastPayloadMax: number;
}

export const DEFAULT_SHAPE: RecordShape = { minBytes: 2 * SECTOR_BYTES + 1, lastPayloadMax: 6000 };
const PAYLOAD_MAX = 6000;

/** A random write, zero or trim that lies inside its volume. */
function randomRecord(
  rng: Rng,
  set: VolumeSet,
  seq: number,
  timeNs: bigint,
  payloadMax: number,
): Rec {
  const volume = rng.below(set.sizes.length);
  const size = set.sizes[volume] as number;
  const roll = rng.below(10);
  if (roll < 6) {
    const lengthBytes = Math.min(
      size,
      rng.chance(0.5) && payloadMax >= 512
        ? rng.int(1, Math.floor(payloadMax / 512)) * 512
        : rng.int(1, payloadMax),
    );
    const offsetBytes = rng.chance(0.5)
      ? rng.below(Math.floor((size - lengthBytes) / 512) + 1) * 512
      : rng.below(size - lengthBytes + 1);
    return {
      kind: 'write',
      volume,
      seq,
      timeNs,
      offsetBytes,
      lengthBytes,
      data: rng.bytes(lengthBytes),
    };
  }
  const offsetBytes = rng.below(size);
  return {
    kind: roll < 8 ? 'zero' : 'trim',
    volume,
    seq,
    timeNs,
    offsetBytes,
    lengthBytes: rng.int(1, size - offsetBytes),
  };
}

/** Valid records from `seqFirst`, in seq order with rising capture times, all inside their volumes. */
export function randomRecords(
  rng: Rng,
  set: VolumeSet,
  seqFirst: number,
  shape: RecordShape,
): Rec[] {
  const count = shape.count ?? rng.int(2, 10);
  const records: Rec[] = [];
  let timeNs = 1_700_000_000_000_000_000n + (rng.u64() % 10n ** 17n);
  let bytes = 2 * TRAILER_BYTES;
  const add = (payloadMax: number): void => {
    timeNs += BigInt(rng.int(1, 5_000_000));
    const record = randomRecord(rng, set, seqFirst + records.length, timeNs, payloadMax);
    records.push(record);
    bytes += RECORD_HEADER_BYTES + (record.data?.length ?? 0);
  };
  while (
    records.length < count - 1 ||
    (shape.count === undefined && bytes + RECORD_HEADER_BYTES < shape.minBytes)
  )
    add(PAYLOAD_MAX);
  add(shape.lastPayloadMax);
  return records;
}

export interface Unit {
  /** Where the record (or extent) header starts and where its payload ends. */
  start: number;
  end: number;
  carriesData: boolean;
}

export type SegmentFormat = 'redo' | 'undo';

/** A valid segment and its layout; mutations work on copies of `bytes`. */
export interface Subject {
  format: SegmentFormat;
  bytes: Buffer;
  volumeCount: number;
  units: Unit[];
  trailerAt: number;
}

/** Field positions inside a record (redo) or extent (undo) header. */
export interface UnitLayout {
  headerBytes: number;
  crcAt: number;
  volumeAt: number;
  reservedAt: number;
  offsetAt: number;
  lengthAt: number;
}

export const UNIT_LAYOUT: Record<SegmentFormat, UnitLayout> = {
  redo: {
    headerBytes: RECORD_HEADER_BYTES,
    crcAt: 44,
    volumeAt: 6,
    reservedAt: 5,
    offsetAt: 24,
    lengthAt: 32,
  },
  undo: {
    headerBytes: EXTENT_HEADER_BYTES,
    crcAt: 28,
    volumeAt: 6,
    reservedAt: 5,
    offsetAt: 8,
    lengthAt: 16,
  },
};

export const FILE_NAME = 'mutated';

export function redoSubject(bytes: Buffer, volumeCount: number): Subject {
  const parsed = parseSealedRedo(bytes, FILE_NAME, volumeCount);
  const units = parsed.records.map((r) => ({
    start: r.recordOffsetBytes,
    end: r.payloadOffsetBytes + (r.kind === 'write' ? r.lengthBytes : 0),
    carriesData: r.kind === 'write',
  }));
  return { format: 'redo', bytes, volumeCount, units, trailerAt: bytes.length - TRAILER_BYTES };
}

export function buildRedo(
  set: VolumeSet,
  header: Omit<RedoHeader, 'volumeSetId'>,
  records: readonly Rec[],
): Buffer {
  return Buffer.concat(buildSealedRedo({ ...header, volumeSetId: set.id }, records));
}

export function randomRedoSubject(
  rng: Rng,
  set: VolumeSet,
  shape: RecordShape = DEFAULT_SHAPE,
): Subject {
  const seqFirst = rng.int(1, 2 ** 40);
  const header = {
    segmentIndex: rng.int(1, 2 ** 32),
    seqFirst,
    createdNs: rng.u64(),
    flags: rng.pick([0, 1, 3]),
  };
  return redoSubject(
    buildRedo(set, header, randomRecords(rng, set, seqFirst, shape)),
    set.sizes.length,
  );
}

/** Ascending, disjoint extents over every volume: data extents (random bytes) and zero runs. */
export function randomUndoSubject(
  rng: Rng,
  set: VolumeSet,
  shape: RecordShape = DEFAULT_SHAPE,
): Subject {
  const seqFirst = rng.int(1, 2 ** 40);
  const header: UndoHeader = {
    volumeSetId: set.id,
    segmentIndex: rng.int(1, 2 ** 32),
    seqFirst,
    seqLast: seqFirst + rng.int(0, 1000),
  };
  const builder = new UndoBuilder(header);
  let bytes = 2 * TRAILER_BYTES;
  set.sizes.forEach((size, volume) => {
    const last = volume === set.sizes.length - 1;
    let at = 0;
    for (let k = rng.int(1, 4); (k > 0 || (last && bytes < shape.minBytes)) && at < size; k--) {
      const offsetBytes = at + rng.below(Math.min(65536, size - at));
      const room = size - offsetBytes;
      const data = rng.chance(0.6)
        ? rng.bytes(Math.min(room, rng.int(1, shape.lastPayloadMax)))
        : undefined;
      const extent: UndoExtentMeta = data
        ? { kind: 'data', volume, offsetBytes, lengthBytes: data.length }
        : {
            kind: 'zero',
            volume,
            offsetBytes,
            lengthBytes: rng.int(1, rng.chance(0.2) ? room : Math.min(room, 65536)),
          };
      builder.add(extent, data);
      bytes += EXTENT_HEADER_BYTES + (data?.length ?? 0);
      at = offsetBytes + extent.lengthBytes;
    }
  });
  return undoSubject(Buffer.concat(builder.finish()), set.sizes.length);
}

export function undoSubject(bytes: Buffer, volumeCount: number): Subject {
  const parsed = parseUndo(bytes, FILE_NAME, volumeCount);
  const units = parsed.extents.map((e) => ({
    start: e.payloadOffsetBytes - EXTENT_HEADER_BYTES,
    end: e.payloadOffsetBytes + (e.kind === 'data' ? e.lengthBytes : 0),
    carriesData: e.kind === 'data',
  }));
  return { format: 'undo', bytes, volumeCount, units, trailerAt: bytes.length - TRAILER_BYTES };
}

// ---- Checksum fixers: a deliberate rewrite of a field passes its checksum, so the check under
// test is the field's own validation, not the CRC.

export function fixHeaderCrc(buf: Buffer): void {
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
}

export function fixUnitCrc(buf: Buffer, format: SegmentFormat, at: number): void {
  const { crcAt } = UNIT_LAYOUT[format];
  buf.writeUInt32LE(crc32c(buf.subarray(at, at + crcAt)), at + crcAt);
}

export function fixTrailerCrc(buf: Buffer): void {
  const at = buf.length - TRAILER_BYTES;
  buf.writeUInt32LE(crc32c(buf.subarray(at, at + 60)), at + 60);
}

/**
 * Rewrites the trailer's body length and body CRC (same place in both formats) for the bytes before
 * it. The body CRC is the format's chain (docs/FORMATS.md): the header's bytes 0..59 and each record
 * or extent header up to its own CRC, walked here independently of the parsers.
 */
export function resealBody(buf: Buffer, format: SegmentFormat): void {
  const at = buf.length - TRAILER_BYTES;
  const { headerBytes, crcAt, lengthAt } = UNIT_LAYOUT[format];
  let chain = crc32c(buf.subarray(0, 60));
  for (let unit = 64; unit + headerBytes <= at;) {
    chain = crc32c(buf.subarray(unit, unit + crcAt), chain);
    const carriesData = buf[unit + 4] === 1; // redo: write; undo: data
    const length = buf.readBigUInt64LE(unit + lengthAt);
    if (carriesData && length > BigInt(at)) break; // an absurd length: nothing sensible follows
    unit += headerBytes + (carriesData ? Number(length) : 0);
  }
  buf.writeBigUInt64LE(BigInt(at), at + 48);
  buf.writeUInt32LE(chain >>> 0, at + 56);
  fixTrailerCrc(buf);
}

// ---- Judging a parser's answer.

export type Outcome =
  | { kind: 'refused'; code: NamedCode }
  | { kind: 'identical' }
  | { kind: 'violation'; detail: string };

/** The canonical encoding of what a parser read: equal to the original bytes iff the content is. */
export function reencode(format: SegmentFormat, bytes: Buffer, volumeCount: number): Buffer {
  if (format === 'redo') {
    const parsed = parseSealedRedo(bytes, FILE_NAME, volumeCount);
    const records = parsed.records.map((r): Rec => {
      const meta: RecordMeta = {
        kind: r.kind,
        volume: r.volume,
        seq: r.seq,
        timeNs: r.timeNs,
        offsetBytes: r.offsetBytes,
        lengthBytes: r.lengthBytes,
      };
      return r.kind === 'write'
        ? {
            ...meta,
            data: bytes.subarray(r.payloadOffsetBytes, r.payloadOffsetBytes + r.lengthBytes),
          }
        : meta;
    });
    return Buffer.concat(buildSealedRedo(parsed.header, records));
  }
  const parsed = parseUndo(bytes, FILE_NAME, volumeCount);
  const builder = new UndoBuilder(parsed.header);
  for (const e of parsed.extents) {
    const meta: UndoExtentMeta = {
      kind: e.kind,
      volume: e.volume,
      offsetBytes: e.offsetBytes,
      lengthBytes: e.lengthBytes,
    };
    builder.add(
      meta,
      e.kind === 'data'
        ? bytes.subarray(e.payloadOffsetBytes, e.payloadOffsetBytes + e.lengthBytes)
        : undefined,
    );
  }
  return Buffer.concat(builder.finish());
}

export function isNamedCode(code: string): code is NamedCode {
  return (NAMED_CODES as readonly string[]).includes(code);
}

/**
 * Parses `mutated` as the original's format: a SegmentError with an allowed code, naming the file
 * and an offset inside it, is a refusal; an acceptance must re-encode to the original bytes.
 */
export function judgeParse(
  subject: Subject,
  mutated: Buffer,
  allowed: readonly NamedCode[],
): Outcome {
  let canonical: Buffer;
  try {
    canonical = reencode(subject.format, mutated, subject.volumeCount);
  } catch (error) {
    if (!(error instanceof SegmentError))
      return { kind: 'violation', detail: `crashed: ${describeError(error)}` };
    if (!allowed.includes(error.code as NamedCode))
      return {
        kind: 'violation',
        detail: `refused with ${error.code}, expected ${allowed.join(' or ')}: ${error.message}`,
      };
    if (
      error.file !== FILE_NAME ||
      !(error.offsetBytes >= 0 && error.offsetBytes <= mutated.length)
    ) {
      return {
        kind: 'violation',
        detail: `refusal names ${error.file} at byte ${error.offsetBytes}, outside the ${mutated.length}-byte file`,
      };
    }
    return { kind: 'refused', code: error.code as NamedCode };
  }
  if (canonical.equals(subject.bytes)) return { kind: 'identical' };
  return { kind: 'violation', detail: 'accepted with different content' };
}

export function describeError(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return String(error);
}
