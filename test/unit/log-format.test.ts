// Tests for the redo and undo segment codecs: round trips, truncation, bit flips, reordering and torn tails.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { crc32c, errorMessage, SegmentError } from '../../src/core/index.js';
import {
  buildSealedRedo,
  chainRecordHeader,
  chainRedoHeader,
  encodePadAt,
  encodeRecordHeader,
  encodeRedoHeader,
  encodeRedoTrailer,
  PAD_ALIGN_BYTES,
  padBytesAt,
  parseSealedRedo,
  scanRedo,
  REDO_HEADER_BYTES,
  RECORD_HEADER_BYTES,
  REDO_VERSION,
  TRAILER_BYTES,
  type RecordMeta,
  type RedoHeader,
} from '../../src/log/redo.js';
import {
  EXTENT_HEADER_BYTES,
  UNDO_HEADER_BYTES,
  UndoBuilder,
  parseUndo,
  type UndoExtentMeta,
  type UndoHeader,
} from '../../src/log/undo.js';

const volumeSetId = Buffer.alloc(16, 7);
const FILE = 'f';
const VOLUMES = 4;
type Rec = RecordMeta & { data?: Buffer };

function redoHeader(seqFirst = 1): RedoHeader {
  return { volumeSetId, segmentIndex: 3, seqFirst, createdNs: 123n, flags: 0 };
}

function undoHeader(): UndoHeader {
  return { volumeSetId, segmentIndex: 3, seqFirst: 1, seqLast: 9 };
}

function payload(length: number, seed: number): Buffer {
  const buf = Buffer.alloc(length);
  for (let i = 0; i < length; i++) buf[i] = (seed * 31 + i * 7) & 0xff;
  return buf;
}

/** A ~312-byte sealed segment: a 40-byte write, a zero and a trim. */
function smallRecords(): Rec[] {
  return [
    {
      kind: 'write',
      volume: 0,
      seq: 1,
      timeNs: 10n,
      offsetBytes: 4096,
      lengthBytes: 40,
      data: payload(40, 1),
    },
    { kind: 'zero', volume: 1, seq: 2, timeNs: 20n, offsetBytes: 0, lengthBytes: 2 ** 30 },
    { kind: 'trim', volume: 2, seq: 3, timeNs: 30n, offsetBytes: 512, lengthBytes: 8192 },
  ];
}

function smallRedo(): Buffer {
  return Buffer.concat(buildSealedRedo(redoHeader(), smallRecords()));
}

function smallUndo(): Buffer {
  const builder = new UndoBuilder(undoHeader());
  builder.add({ kind: 'data', volume: 0, offsetBytes: 100, lengthBytes: 20 }, payload(20, 2));
  builder.add({ kind: 'zero', volume: 0, offsetBytes: 200, lengthBytes: 4096 });
  builder.add({ kind: 'data', volume: 1, offsetBytes: 0, lengthBytes: 8 }, payload(8, 3));
  return Buffer.concat(builder.finish());
}

/** Runs `fn` and asserts it threw a SegmentError with one of `codes`, naming the file and an offset. */
function assertRefused(fn: () => unknown, codes: readonly string[], context: string): SegmentError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(caught !== undefined, `${context}: accepted`);
  assert.ok(
    caught instanceof SegmentError,
    `${context}: threw ${errorMessage(caught)} instead of a SegmentError`,
  );
  assert.ok(
    codes.includes(caught.code),
    `${context}: code ${caught.code}, expected one of ${codes.join(', ')}`,
  );
  assert.equal(caught.file, FILE);
  assert.equal(typeof caught.offsetBytes, 'number');
  assert.ok(caught.message.includes(FILE) && caught.message.includes(String(caught.offsetBytes)));
  return caught;
}

const TRUNC_OR_CORRUPT = ['REWIND_SEGMENT_TRUNCATED', 'REWIND_SEGMENT_CORRUPT'];
const ORDER_OR_CORRUPT = ['REWIND_SEGMENT_ORDER', 'REWIND_SEGMENT_CORRUPT'];

const recordArb: fc.Arbitrary<Omit<Rec, 'seq'>> = fc.oneof(
  fc
    .record({
      volume: fc.integer({ min: 0, max: VOLUMES - 1 }),
      timeNs: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      offsetBytes: fc.integer({ min: 0, max: 2 ** 45 }),
      data: fc.uint8Array({ minLength: 1, maxLength: 4096 }),
    })
    .map(({ data, ...rest }) => ({
      ...rest,
      kind: 'write' as const,
      lengthBytes: data.length,
      data: Buffer.from(data),
    })),
  fc.record({
    kind: fc.constantFrom('zero' as const, 'trim' as const),
    volume: fc.integer({ min: 0, max: VOLUMES - 1 }),
    timeNs: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
    offsetBytes: fc.integer({ min: 0, max: 2 ** 45 }),
    lengthBytes: fc.integer({ min: 1, max: 2 ** 40 }),
  }),
);

/** A self-checked block of a segment: `crcAt` holds the CRC-32C of bytes start..crcAt. */
interface Block {
  start: number;
  crcAt: number;
}

/**
 * Flips every bit of every block's checked bytes and recomputes that block's own CRC, as a
 * misdirected or forged block would look; `parse` must refuse each one. A running CRC over whole
 * blocks cannot see these (a block ending in its own CRC adds a constant); the body chain can.
 */
function assertEveryResealedFlipRefused(
  buf: Buffer,
  blocks: readonly Block[],
  parse: (b: Buffer) => unknown,
): number {
  let tried = 0;
  for (const block of blocks) {
    for (let bit = block.start * 8; bit < block.crcAt * 8; bit++) {
      const copy = Buffer.from(buf);
      copy[bit >> 3] = (copy[bit >> 3] as number) ^ (1 << (bit & 7));
      copy.writeUInt32LE(crc32c(copy.subarray(block.start, block.crcAt)), block.crcAt);
      assertRefused(
        () => parse(copy),
        ['REWIND_SEGMENT_CORRUPT', 'REWIND_SEGMENT_TRUNCATED', 'REWIND_SEGMENT_ORDER'],
        `block at ${block.start}, bit ${bit - block.start * 8} resealed`,
      );
      tried += 1;
    }
  }
  return tried;
}

/**
 * The same segment as written by format version 1: version fields 1, and the body CRC run over
 * every byte before the trailer (what version 1 did), all block CRCs fixed up.
 */
function asVersion1(v2: Buffer): Buffer {
  const buf = Buffer.from(v2);
  const trailerAt = buf.length - TRAILER_BYTES;
  buf.writeUInt16LE(1, 8);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  buf.writeUInt32LE(1, trailerAt + 4);
  buf.writeUInt32LE(crc32c(buf.subarray(0, trailerAt)), trailerAt + 56);
  buf.writeUInt32LE(crc32c(buf.subarray(trailerAt, trailerAt + 60)), trailerAt + 60);
  return buf;
}

describe('format version 1 (history written before version 2)', () => {
  it('is still read, with the same content, and version fields must agree', () => {
    const redo = smallRedo();
    const redoV1 = asVersion1(redo);
    const strip = (records: readonly object[]): unknown[] => records.map((r) => ({ ...r }));
    assert.deepEqual(
      strip(parseSealedRedo(redoV1, FILE, VOLUMES).records),
      strip(parseSealedRedo(redo, FILE, VOLUMES).records),
    );
    const undo = smallUndo();
    const undoV1 = asVersion1(undo);
    assert.deepEqual(
      parseUndo(undoV1, FILE, VOLUMES).extents,
      parseUndo(undo, FILE, VOLUMES).extents,
    );
    // A version 1 header with a version 2 trailer (or the reverse) is refused.
    for (const [mixed, parse] of [
      [
        Buffer.concat([
          redoV1.subarray(0, redoV1.length - TRAILER_BYTES),
          redo.subarray(redo.length - TRAILER_BYTES),
        ]),
        (b: Buffer) => parseSealedRedo(b, FILE, VOLUMES),
      ],
      [
        Buffer.concat([
          undoV1.subarray(0, undoV1.length - TRAILER_BYTES),
          undo.subarray(undo.length - TRAILER_BYTES),
        ]),
        (b: Buffer) => parseUndo(b, FILE, VOLUMES),
      ],
    ] as const) {
      assertRefused(() => parse(mixed), ['REWIND_SEGMENT_CORRUPT'], 'mixed versions');
    }
    // Every truncation and bit flip of a version 1 segment is still refused.
    for (let bit = 0; bit < redoV1.length * 8; bit++) {
      const flipped = Buffer.from(redoV1);
      flipped[bit >> 3] = (flipped[bit >> 3] as number) ^ (1 << (bit & 7));
      assertRefused(
        () => parseSealedRedo(flipped, FILE, VOLUMES),
        ['REWIND_SEGMENT_CORRUPT', 'REWIND_SEGMENT_TRUNCATED', 'REWIND_SEGMENT_ORDER'],
        `v1 bit ${bit}`,
      );
    }
  });
});

/** A version 3 segment whose every record is followed by a pad to the next 4 KiB boundary. */
function paddedRedo(records: readonly Rec[]): { buf: Buffer; padsAt: number[] } {
  const header = encodeRedoHeader(redoHeader());
  const pieces: Buffer[] = [header];
  let crc = chainRedoHeader(header);
  let at = REDO_HEADER_BYTES;
  const padsAt: number[] = [];
  for (const record of records) {
    const recordHeader = encodeRecordHeader(record, record.data ? crc32c(record.data) : 0);
    crc = chainRecordHeader(recordHeader, crc);
    pieces.push(recordHeader);
    at += RECORD_HEADER_BYTES;
    if (record.data) {
      pieces.push(record.data);
      at += record.data.length;
    }
    const pad = Buffer.alloc(padBytesAt(at));
    encodePadAt(pad, 0, at, record.seq + 1);
    crc = chainRecordHeader(pad, crc);
    padsAt.push(at);
    pieces.push(pad);
    at += pad.length;
  }
  const first = records[0] as Rec;
  const last = records[records.length - 1] as Rec;
  pieces.push(
    encodeRedoTrailer({
      recordCount: records.length,
      seqFirst: first.seq,
      seqLast: last.seq,
      timeFirstNs: first.timeNs,
      timeLastNs: last.timeNs,
      bodyBytes: at,
      bodyCrc: crc,
    }),
  );
  return { buf: Buffer.concat(pieces), padsAt };
}

describe('format version 3 pad records', () => {
  it('are skipped: the records and their seqs are those of the same segment without pads', () => {
    const records = smallRecords();
    const { buf, padsAt } = paddedRedo(records);
    assert.equal(buf.readUInt16LE(8), REDO_VERSION);
    for (const at of padsAt)
      assert.equal((at + padBytesAt(at)) % PAD_ALIGN_BYTES, 0, 'on a boundary');
    const parsed = parseSealedRedo(buf, FILE, VOLUMES);
    const plain = parseSealedRedo(
      Buffer.concat(buildSealedRedo(redoHeader(), records)),
      FILE,
      VOLUMES,
    );
    const fields = (r: RecordMeta): unknown[] => [
      r.kind,
      r.volume,
      r.seq,
      r.offsetBytes,
      r.lengthBytes,
    ];
    assert.deepEqual(parsed.records.map(fields), plain.records.map(fields));
    // A pad's own header is covered like any block: each bit flip of it is refused.
    const first = padsAt[0] as number;
    for (let bit = 0; bit < RECORD_HEADER_BYTES * 8; bit++) {
      const copy = Buffer.from(buf);
      copy[first + (bit >> 3)] = (copy[first + (bit >> 3)] as number) ^ (1 << (bit & 7));
      assertRefused(
        () => parseSealedRedo(copy, FILE, VOLUMES),
        ['REWIND_SEGMENT_CORRUPT', 'REWIND_SEGMENT_TRUNCATED', 'REWIND_SEGMENT_ORDER'],
        `pad header bit ${bit}`,
      );
    }
    // A pad rewritten with its CRC fixed up is refused too: wrong seq, length short of the
    // boundary, a field that must be zero.
    for (const [name, at, mutate] of [
      ['seq', 8, (b: Buffer, o: number) => b.writeUInt32LE(b.readUInt32LE(o) + 1, o)],
      ['length', 32, (b: Buffer, o: number) => b.writeUInt32LE(b.readUInt32LE(o) - 8, o)],
      ['volume', 6, (b: Buffer, o: number) => b.writeUInt16LE(1, o)],
      ['time', 16, (b: Buffer, o: number) => b.writeUInt32LE(1, o)],
    ] as const) {
      const copy = Buffer.from(buf);
      mutate(copy, first + at);
      copy.writeUInt32LE(crc32c(copy.subarray(first, first + 44)), first + 44);
      assertRefused(
        () => parseSealedRedo(copy, FILE, VOLUMES),
        ['REWIND_SEGMENT_CORRUPT', 'REWIND_SEGMENT_ORDER'],
        `pad ${name} resealed`,
      );
    }
  });

  it('are refused in a version 2 segment, which never had them', () => {
    const { buf } = paddedRedo(smallRecords());
    const v2 = Buffer.from(buf);
    const trailerAt = v2.length - TRAILER_BYTES;
    v2.writeUInt16LE(2, 8);
    v2.writeUInt32LE(crc32c(v2.subarray(0, 60)), 60);
    v2.writeUInt32LE(2, trailerAt + 4);
    v2.writeUInt32LE(crc32c(v2.subarray(trailerAt, trailerAt + 60)), trailerAt + 60);
    assertRefused(() => parseSealedRedo(v2, FILE, VOLUMES), ['REWIND_SEGMENT_CORRUPT'], 'v2 pad');
    assert.match(
      errorMessage(captured(() => parseSealedRedo(v2, FILE, VOLUMES))),
      /unknown record kind 4/,
    );
  });

  it('a torn pad filler ends the valid prefix at the pad', () => {
    const { buf, padsAt } = paddedRedo(smallRecords());
    const second = padsAt[1] as number;
    const cut = buf.subarray(0, second + RECORD_HEADER_BYTES + 10);
    const scan = scanRedo(cut, FILE, VOLUMES);
    assert.equal(scan.records.length, 2);
    assert.equal(scan.validBytes, second);
    assert.equal(scan.stopReason?.code, 'REWIND_SEGMENT_TRUNCATED');
  });
});

function captured(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  return undefined;
}

describe('redo segment codec', () => {
  it("refuses a rewrite of any header, record or trailer field even with that block's own CRC recomputed", () => {
    const buf = smallRedo();
    const recordStarts = parseSealedRedo(buf, FILE, VOLUMES).records.map(
      (r) => r.recordOffsetBytes,
    );
    const blocks: Block[] = [
      { start: 0, crcAt: 60 },
      ...recordStarts.map((start) => ({ start, crcAt: start + RECORD_HEADER_BYTES - 4 })),
      { start: buf.length - TRAILER_BYTES, crcAt: buf.length - 4 },
    ];
    const tried = assertEveryResealedFlipRefused(buf, blocks, (b) =>
      parseSealedRedo(b, FILE, VOLUMES),
    );
    assert.equal(tried, (60 + 3 * 44 + 60) * 8);
  });

  it('round-trips random record lists', () => {
    fc.assert(
      fc.property(
        fc.array(recordArb, { maxLength: 12 }),
        fc.integer({ min: 1, max: 2 ** 40 }),
        (raw, seqFirst) => {
          const records: Rec[] = raw.map((r, i) => ({ ...r, seq: seqFirst + i }));
          const buf = Buffer.concat(buildSealedRedo(redoHeader(seqFirst), records));
          const parsed = parseSealedRedo(buf, FILE, VOLUMES);
          assert.equal(parsed.header.seqFirst, seqFirst);
          assert.ok(parsed.header.volumeSetId.equals(volumeSetId));
          assert.equal(parsed.records.length, records.length);
          assert.equal(parsed.trailer.recordCount, records.length);
          records.forEach((want, i) => {
            const got = parsed.records[i];
            assert.ok(got);
            assert.deepEqual(
              {
                kind: got.kind,
                volume: got.volume,
                seq: got.seq,
                timeNs: got.timeNs,
                offsetBytes: got.offsetBytes,
                lengthBytes: got.lengthBytes,
              },
              {
                kind: want.kind,
                volume: want.volume,
                seq: want.seq,
                timeNs: want.timeNs,
                offsetBytes: want.offsetBytes,
                lengthBytes: want.lengthBytes,
              },
            );
            if (want.data) {
              assert.ok(
                buf
                  .subarray(got.payloadOffsetBytes, got.payloadOffsetBytes + got.lengthBytes)
                  .equals(want.data),
              );
            }
          });
        },
      ),
      { numRuns: 100 },
    );
  });

  it('refuses every truncation of a sealed segment', () => {
    const buf = smallRedo();
    assert.equal(parseSealedRedo(buf, FILE, VOLUMES).records.length, 3);
    for (let length = 0; length < buf.length; length++) {
      assertRefused(
        () => parseSealedRedo(buf.subarray(0, length), FILE, VOLUMES),
        TRUNC_OR_CORRUPT,
        `length ${length}`,
      );
    }
  });

  it('refuses every single bit flip of a sealed segment', () => {
    const buf = smallRedo();
    assert.ok(buf.length >= 290 && buf.length <= 330, `segment is ${buf.length} bytes`);
    for (let bit = 0; bit < buf.length * 8; bit++) {
      const flipped = Buffer.from(buf);
      flipped[bit >> 3] = (flipped[bit >> 3] as number) ^ (1 << (bit & 7));
      assertRefused(
        () => parseSealedRedo(flipped, FILE, VOLUMES),
        ['REWIND_SEGMENT_CORRUPT', 'REWIND_SEGMENT_TRUNCATED', 'REWIND_SEGMENT_ORDER'],
        `bit ${bit}`,
      );
    }
  });

  it('refuses swapped records', () => {
    // Two zero records of the same size: swap their bytes so seqs arrive 2, 1.
    const records: Rec[] = [
      { kind: 'zero', volume: 0, seq: 1, timeNs: 1n, offsetBytes: 0, lengthBytes: 512 },
      { kind: 'trim', volume: 1, seq: 2, timeNs: 2n, offsetBytes: 512, lengthBytes: 1024 },
    ];
    const buf = Buffer.concat(buildSealedRedo(redoHeader(), records));
    const a = REDO_HEADER_BYTES;
    const b = a + RECORD_HEADER_BYTES;
    const swapped = Buffer.concat([
      buf.subarray(0, a),
      buf.subarray(b, b + RECORD_HEADER_BYTES),
      buf.subarray(a, b),
      buf.subarray(b + RECORD_HEADER_BYTES),
    ]);
    assert.equal(swapped.length, buf.length);
    const err = assertRefused(
      () => parseSealedRedo(swapped, FILE, VOLUMES),
      ORDER_OR_CORRUPT,
      'swapped',
    );
    assert.equal(err.offsetBytes >= a, true);
  });

  it('refuses a duplicated record', () => {
    const buf = smallRedo();
    const first = buf.subarray(REDO_HEADER_BYTES, REDO_HEADER_BYTES + RECORD_HEADER_BYTES + 40);
    const dup = Buffer.concat([
      buf.subarray(0, REDO_HEADER_BYTES),
      first,
      buf.subarray(REDO_HEADER_BYTES),
    ]);
    assertRefused(
      () => parseSealedRedo(dup, FILE, VOLUMES),
      ['REWIND_SEGMENT_ORDER', 'REWIND_SEGMENT_CORRUPT'],
      'duplicate',
    );
  });

  it('refuses a record whose volume index is out of range', () => {
    const records: Rec[] = [
      { kind: 'zero', volume: 2, seq: 1, timeNs: 1n, offsetBytes: 0, lengthBytes: 512 },
    ];
    const buf = Buffer.concat(buildSealedRedo(redoHeader(), records));
    assert.equal(parseSealedRedo(buf, FILE, 3).records.length, 1);
    const err = assertRefused(
      () => parseSealedRedo(buf, FILE, 2),
      ['REWIND_SEGMENT_CORRUPT'],
      'volume 2 of 2',
    );
    assert.equal(err.offsetBytes, REDO_HEADER_BYTES + 6);
  });

  it('scans the complete records of an unsealed segment with a torn tail', () => {
    const full = smallRedo();
    const body = full.subarray(0, full.length - TRAILER_BYTES);
    const next = Buffer.concat(
      buildSealedRedo(redoHeader(4), [
        {
          kind: 'write',
          volume: 3,
          seq: 4,
          timeNs: 40n,
          offsetBytes: 0,
          lengthBytes: 64,
          data: payload(64, 9),
        },
      ]),
    ).subarray(REDO_HEADER_BYTES, REDO_HEADER_BYTES + RECORD_HEADER_BYTES + 64);
    for (const cut of [
      1,
      20,
      RECORD_HEADER_BYTES - 1,
      RECORD_HEADER_BYTES,
      RECORD_HEADER_BYTES + 63,
    ]) {
      const torn = Buffer.concat([body, next.subarray(0, cut)]);
      const scan = scanRedo(torn, FILE, VOLUMES);
      assert.equal(scan.records.length, 3, `cut ${cut}`);
      assert.deepEqual(
        scan.records.map((r) => r.seq),
        [1, 2, 3],
      );
      assert.equal(scan.validBytes, body.length, `cut ${cut}`);
      assert.equal(scan.trailer, undefined);
      assert.ok(scan.stopReason instanceof SegmentError);
      assert.equal(scan.stopReason.code, 'REWIND_SEGMENT_TRUNCATED', `cut ${cut}`);
      assert.equal(scan.stopReason.file, FILE);
      assert.equal(scan.stopReason.offsetBytes >= body.length, true);
      assertRefused(
        () => parseSealedRedo(torn, FILE, VOLUMES),
        TRUNC_OR_CORRUPT,
        `sealed parse of cut ${cut}`,
      );
    }
    // With the whole next record appended it is scanned too, still without a trailer.
    const whole = scanRedo(Buffer.concat([body, next]), FILE, VOLUMES);
    assert.equal(whole.records.length, 4);
    assert.equal(whole.validBytes, body.length + next.length);
    assert.equal(whole.stopReason, undefined);
  });
});

const undoArb = fc.array(
  fc.record({
    volumeStep: fc.integer({ min: 0, max: 1 }),
    gap: fc.integer({ min: 0, max: 2 ** 20 }),
    zero: fc.option(fc.integer({ min: 1, max: 2 ** 40 }), { nil: undefined }),
    data: fc.uint8Array({ minLength: 1, maxLength: 4096 }),
  }),
  { maxLength: 10 },
);

describe('undo segment codec', () => {
  it("refuses a rewrite of any header, extent or trailer field even with that block's own CRC recomputed", () => {
    const buf = smallUndo();
    const extentStarts = parseUndo(buf, FILE, VOLUMES).extents.map(
      (e) => e.payloadOffsetBytes - EXTENT_HEADER_BYTES,
    );
    assert.equal(extentStarts[0], UNDO_HEADER_BYTES);
    const blocks: Block[] = [
      { start: 0, crcAt: 60 },
      ...extentStarts.map((start) => ({ start, crcAt: start + EXTENT_HEADER_BYTES - 4 })),
      { start: buf.length - TRAILER_BYTES, crcAt: buf.length - 4 },
    ];
    const tried = assertEveryResealedFlipRefused(buf, blocks, (b) => parseUndo(b, FILE, VOLUMES));
    assert.equal(tried, (60 + 3 * 28 + 60) * 8);
  });

  it('round-trips random ascending extents', () => {
    fc.assert(
      fc.property(undoArb, (raw) => {
        const builder = new UndoBuilder(undoHeader());
        const want: { meta: UndoExtentMeta; data?: Buffer }[] = [];
        let volume = 0;
        let end = 0;
        for (const r of raw) {
          if (r.volumeStep === 1 && volume < VOLUMES - 1) {
            volume += 1;
            end = 0;
          }
          const offsetBytes = end + r.gap;
          if (r.zero !== undefined) {
            const meta: UndoExtentMeta = { kind: 'zero', volume, offsetBytes, lengthBytes: r.zero };
            builder.add(meta);
            want.push({ meta });
          } else {
            const data = Buffer.from(r.data);
            const meta: UndoExtentMeta = {
              kind: 'data',
              volume,
              offsetBytes,
              lengthBytes: data.length,
            };
            builder.add(meta, data);
            want.push({ meta, data });
          }
          end = offsetBytes + (want[want.length - 1] as { meta: UndoExtentMeta }).meta.lengthBytes;
        }
        const buf = Buffer.concat(builder.finish());
        const parsed = parseUndo(buf, FILE, VOLUMES);
        assert.deepEqual(parsed.header, undoHeader());
        assert.equal(parsed.extents.length, want.length);
        want.forEach(({ meta, data }, i) => {
          const got = parsed.extents[i];
          assert.ok(got);
          assert.deepEqual(
            {
              kind: got.kind,
              volume: got.volume,
              offsetBytes: got.offsetBytes,
              lengthBytes: got.lengthBytes,
            },
            meta,
          );
          if (data)
            assert.ok(
              buf
                .subarray(got.payloadOffsetBytes, got.payloadOffsetBytes + got.lengthBytes)
                .equals(data),
            );
        });
      }),
      { numRuns: 100 },
    );
  });

  it('refuses every truncation and every bit flip of an undo segment', () => {
    const buf = smallUndo();
    assert.equal(parseUndo(buf, FILE, VOLUMES).extents.length, 3);
    for (let length = 0; length < buf.length; length++) {
      assertRefused(
        () => parseUndo(buf.subarray(0, length), FILE, VOLUMES),
        TRUNC_OR_CORRUPT,
        `length ${length}`,
      );
    }
    for (let bit = 0; bit < buf.length * 8; bit++) {
      const flipped = Buffer.from(buf);
      flipped[bit >> 3] = (flipped[bit >> 3] as number) ^ (1 << (bit & 7));
      assertRefused(
        () => parseUndo(flipped, FILE, VOLUMES),
        ['REWIND_SEGMENT_CORRUPT', 'REWIND_SEGMENT_TRUNCATED', 'REWIND_SEGMENT_ORDER'],
        `bit ${bit}`,
      );
    }
  });

  it('refuses an out-of-range volume index', () => {
    const buf = smallUndo();
    assertRefused(() => parseUndo(buf, FILE, 1), ['REWIND_SEGMENT_CORRUPT'], 'volume 1 of 1');
  });
});
