// The compact index of one transaction: its redo records and undo extents as typed arrays (no
// object per record), what views are built from. It encodes to a small checksummed file bound to
// the exact redo and undo files it describes (their headers, trailers and sizes), so that a view
// built after a restart reads a few bytes per record instead of re-reading and re-verifying every
// payload. Byte layout in docs/FORMATS.md ("Transaction index").
import { assert, crc32c, SegmentError } from '../core/index.js';
import {
  hex,
  RECORD_HEADER_BYTES,
  type RecordKind,
  type RedoRecord,
  type UndoExtent,
} from '../log/index.js';

export const TX_INDEX_MAGIC = Buffer.from('RWNDTIDX', 'latin1');
export const TX_INDEX_VERSION = 1;
export const TX_INDEX_HEADER_BYTES = 64;
/** Redo header, redo trailer, undo header, undo trailer: 64 bytes each, copied from the files. */
export const TX_INDEX_BINDING_BYTES = 256;

/** Record kind codes (as in the redo format). */
export const KIND_WRITE = 1;
export const KIND_ZERO = 2;
export const KIND_TRIM = 3;
/** Extent kind codes (as in the undo format). */
export const EXTENT_DATA = 1;
export const EXTENT_ZERO = 2;

const RECORD_KINDS: readonly (RecordKind | undefined)[] = [undefined, 'write', 'zero', 'trim'];

/** Bytes per record and per extent in the encoded body (before padding). */
const RECORD_BYTES = 8 * 4 + 2 + 1;
const EXTENT_BYTES = 8 * 3 + 2 + 1;

const align8 = (bytes: number): number => Math.ceil(bytes / 8) * 8;

export class TxIndex {
  /** Seq of record 0 (records are gap-free in seq order). */
  readonly seqFirst: number;
  readonly recordCount: number;
  readonly recordKind: Uint8Array;
  readonly recordVolume: Uint16Array;
  readonly recordOffset: Float64Array;
  readonly recordLength: Float64Array;
  /** Where a write's payload lies in the redo file. */
  readonly recordPayload: Float64Array;
  readonly recordTimeNs: BigUint64Array;
  /** Extents ascend by (volume, offset) without overlap, as in the undo file. */
  readonly extentCount: number;
  readonly extentKind: Uint8Array;
  readonly extentVolume: Uint16Array;
  readonly extentOffset: Float64Array;
  readonly extentLength: Float64Array;
  readonly extentPayload: Float64Array;

  private constructor(
    seqFirst: number,
    recordCount: number,
    extentCount: number,
    body?: ArrayBuffer,
    bodyOffset = 0,
  ) {
    this.seqFirst = seqFirst;
    this.recordCount = recordCount;
    this.extentCount = extentCount;
    const r = recordCount;
    const e = extentCount;
    if (body === undefined) {
      this.recordTimeNs = new BigUint64Array(r);
      this.recordOffset = new Float64Array(r);
      this.recordLength = new Float64Array(r);
      this.recordPayload = new Float64Array(r);
      this.recordVolume = new Uint16Array(r);
      this.recordKind = new Uint8Array(r);
      this.extentOffset = new Float64Array(e);
      this.extentLength = new Float64Array(e);
      this.extentPayload = new Float64Array(e);
      this.extentVolume = new Uint16Array(e);
      this.extentKind = new Uint8Array(e);
      return;
    }
    // Views straight onto the decoded body (8-byte aligned), in the order encode() writes them.
    let at = bodyOffset;
    const take = <A>(
      make: (buffer: ArrayBuffer, offset: number, length: number) => A,
      length: number,
      bytesEach: number,
    ): A => {
      const array = make(body, at, length);
      at += align8(length * bytesEach);
      return array;
    };
    this.recordTimeNs = take((b, o, n) => new BigUint64Array(b, o, n), r, 8);
    this.recordOffset = take((b, o, n) => new Float64Array(b, o, n), r, 8);
    this.recordLength = take((b, o, n) => new Float64Array(b, o, n), r, 8);
    this.recordPayload = take((b, o, n) => new Float64Array(b, o, n), r, 8);
    this.recordVolume = take((b, o, n) => new Uint16Array(b, o, n), r, 2);
    this.recordKind = take((b, o, n) => new Uint8Array(b, o, n), r, 1);
    this.extentOffset = take((b, o, n) => new Float64Array(b, o, n), e, 8);
    this.extentLength = take((b, o, n) => new Float64Array(b, o, n), e, 8);
    this.extentPayload = take((b, o, n) => new Float64Array(b, o, n), e, 8);
    this.extentVolume = take((b, o, n) => new Uint16Array(b, o, n), e, 2);
    this.extentKind = take((b, o, n) => new Uint8Array(b, o, n), e, 1);
  }

  /** From verified record and extent lists (a parsed redo segment and its undo segment). */
  static fromLists(records: readonly RedoRecord[], undo: readonly UndoExtent[]): TxIndex {
    const seqFirst = records[0]?.seq ?? 0;
    const index = new TxIndex(seqFirst, records.length, undo.length);
    const { recordKind, recordVolume, recordOffset, recordLength, recordPayload, recordTimeNs } =
      index;
    for (let i = 0; i < records.length; i++) {
      const record = records[i] as RedoRecord;
      assert(record.seq === seqFirst + i, 'transaction index: records are gap-free in seq order');
      recordKind[i] =
        record.kind === 'write' ? KIND_WRITE : record.kind === 'zero' ? KIND_ZERO : KIND_TRIM;
      recordVolume[i] = record.volume;
      recordOffset[i] = record.offsetBytes;
      recordLength[i] = record.lengthBytes;
      recordPayload[i] = record.payloadOffsetBytes;
      recordTimeNs[i] = record.timeNs;
    }
    const { extentKind, extentVolume, extentOffset, extentLength, extentPayload } = index;
    for (let i = 0; i < undo.length; i++) {
      const extent = undo[i] as UndoExtent;
      extentKind[i] = extent.kind === 'data' ? EXTENT_DATA : EXTENT_ZERO;
      extentVolume[i] = extent.volume;
      extentOffset[i] = extent.offsetBytes;
      extentLength[i] = extent.lengthBytes;
      extentPayload[i] = extent.payloadOffsetBytes;
    }
    return index;
  }

  /** Records plus extents: what the manager's cache counts. */
  get items(): number {
    return this.recordCount + this.extentCount;
  }

  record(i: number): RedoRecord {
    assert(i >= 0 && i < this.recordCount, 'transaction index: record index in range');
    const payloadOffsetBytes = this.recordPayload[i] as number;
    return {
      kind: RECORD_KINDS[this.recordKind[i] as number] as RecordKind,
      volume: this.recordVolume[i] as number,
      seq: this.seqFirst + i,
      timeNs: this.recordTimeNs[i] as bigint,
      offsetBytes: this.recordOffset[i] as number,
      lengthBytes: this.recordLength[i] as number,
      recordOffsetBytes: payloadOffsetBytes - RECORD_HEADER_BYTES,
      payloadOffsetBytes,
    };
  }

  extent(i: number): UndoExtent {
    assert(i >= 0 && i < this.extentCount, 'transaction index: extent index in range');
    return {
      kind: this.extentKind[i] === EXTENT_DATA ? 'data' : 'zero',
      volume: this.extentVolume[i] as number,
      offsetBytes: this.extentOffset[i] as number,
      lengthBytes: this.extentLength[i] as number,
      payloadOffsetBytes: this.extentPayload[i] as number,
    };
  }

  /** The records as objects (made on each call: the index itself keeps only the typed arrays). */
  get records(): RedoRecord[] {
    return Array.from({ length: this.recordCount }, (_, i) => this.record(i));
  }

  /** The undo extents as objects (made on each call). */
  get undo(): UndoExtent[] {
    return Array.from({ length: this.extentCount }, (_, i) => this.extent(i));
  }

  /** The extents of `volume`: indexes [from, to) (extents ascend by volume). */
  extentRange(volume: number): { from: number; to: number } {
    const volumes = this.extentVolume;
    let low = 0;
    let high = this.extentCount;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((volumes[middle] as number) < volume) low = middle + 1;
      else high = middle;
    }
    const from = low;
    high = this.extentCount;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((volumes[middle] as number) <= volume) low = middle + 1;
      else high = middle;
    }
    return { from, to: low };
  }

  /**
   * The index file: header, then the 256 binding bytes, then the arrays (each padded to 8 bytes).
   */
  encode(segmentIndex: number, binding: Buffer): Buffer {
    assert(binding.length === TX_INDEX_BINDING_BYTES, 'transaction index: binding is 256 bytes');
    const r = this.recordCount;
    const e = this.extentCount;
    const arrays: ArrayBufferView[] = [
      this.recordTimeNs,
      this.recordOffset,
      this.recordLength,
      this.recordPayload,
      this.recordVolume,
      this.recordKind,
      this.extentOffset,
      this.extentLength,
      this.extentPayload,
      this.extentVolume,
      this.extentKind,
    ];
    const bodyBytes = arrays.reduce((sum, array) => sum + align8(array.byteLength), 0);
    // zeroed: padding and reserved bytes
    const out = Buffer.alloc(TX_INDEX_HEADER_BYTES + TX_INDEX_BINDING_BYTES + bodyBytes);
    let at = TX_INDEX_HEADER_BYTES + TX_INDEX_BINDING_BYTES;
    binding.copy(out, TX_INDEX_HEADER_BYTES);
    for (const array of arrays) {
      out.set(new Uint8Array(array.buffer, array.byteOffset, array.byteLength), at);
      at += align8(array.byteLength);
    }
    TX_INDEX_MAGIC.copy(out, 0);
    out.writeUInt16LE(TX_INDEX_VERSION, 8);
    out.writeUInt16LE(TX_INDEX_HEADER_BYTES, 10);
    out.writeBigUInt64LE(BigInt(segmentIndex), 16);
    out.writeBigUInt64LE(BigInt(this.seqFirst), 24);
    out.writeBigUInt64LE(BigInt(r), 32);
    out.writeBigUInt64LE(BigInt(e), 40);
    out.writeBigUInt64LE(BigInt(bodyBytes), 48);
    out.writeUInt32LE(crc32c(out.subarray(TX_INDEX_HEADER_BYTES)), 56);
    out.writeUInt32LE(crc32c(out.subarray(0, 60)), 60);
    assert(
      RECORD_BYTES * r + EXTENT_BYTES * e <= bodyBytes,
      'transaction index: body holds every array',
    );
    return out;
  }

  /**
   * Decodes an index file, verifying its checksums, that it belongs to `segmentIndex`, and that its
   * binding equals `binding` (the same bytes read from the redo and undo files now), so an index of
   * other or changed files is refused. Throws SegmentError naming the file and offset.
   * (`volumeCount` bounds the volume indexes.)
   */
  static decode(
    buf: Buffer,
    file: string,
    segmentIndex: number,
    binding: Buffer,
    volumeCount: number,
  ): TxIndex {
    const corrupt = (at: number, what: string): never => {
      throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, at, what);
    };
    if (buf.length < TX_INDEX_HEADER_BYTES + TX_INDEX_BINDING_BYTES)
      throw new SegmentError(
        'REWIND_SEGMENT_TRUNCATED',
        file,
        buf.length,
        'index header cut short',
      );
    if (!buf.subarray(0, 8).equals(TX_INDEX_MAGIC)) corrupt(0, 'expected magic RWNDTIDX');
    const headerCrc = crc32c(buf.subarray(0, 60));
    if (headerCrc !== buf.readUInt32LE(60))
      corrupt(60, `header crc32c ${hex(headerCrc)}, expected ${hex(buf.readUInt32LE(60))}`);
    if (buf.readUInt16LE(8) !== TX_INDEX_VERSION)
      corrupt(8, `version ${buf.readUInt16LE(8)}, expected ${TX_INDEX_VERSION}`);
    if (buf.readUInt16LE(10) !== TX_INDEX_HEADER_BYTES)
      corrupt(10, `header bytes ${buf.readUInt16LE(10)}, expected ${TX_INDEX_HEADER_BYTES}`);
    const number = (at: number): number => {
      const value = buf.readBigUInt64LE(at);
      if (value > BigInt(Number.MAX_SAFE_INTEGER)) corrupt(at, `value ${value} out of range`);
      return Number(value);
    };
    if (number(16) !== segmentIndex)
      corrupt(16, `index of transaction ${number(16)}, expected ${segmentIndex}`);
    const seqFirst = number(24);
    const r = number(32);
    const e = number(40);
    const bodyBytes = number(48);
    const bodyAt = TX_INDEX_HEADER_BYTES + TX_INDEX_BINDING_BYTES;
    const expectedBody =
      align8(r * 8) * 4 + align8(r * 2) + align8(r) + align8(e * 8) * 3 + align8(e * 2) + align8(e);
    if (bodyBytes !== expectedBody)
      corrupt(
        48,
        `body bytes ${bodyBytes}, expected ${expectedBody} for ${r} records and ${e} extents`,
      );
    if (buf.length !== bodyAt + bodyBytes)
      corrupt(buf.length, `file is ${buf.length} bytes, expected ${bodyAt + bodyBytes}`);
    const bodyCrc = crc32c(buf.subarray(TX_INDEX_HEADER_BYTES));
    if (bodyCrc !== buf.readUInt32LE(56))
      corrupt(56, `body crc32c ${hex(bodyCrc)}, expected ${hex(buf.readUInt32LE(56))}`);
    if (!buf.subarray(TX_INDEX_HEADER_BYTES, bodyAt).equals(binding))
      corrupt(TX_INDEX_HEADER_BYTES, 'the redo or undo file differs from the one indexed');
    // Typed arrays need aligned offsets: copy the body into a fresh buffer (one memcpy).
    const body = new ArrayBuffer(bodyBytes);
    new Uint8Array(body).set(buf.subarray(bodyAt));
    const index = new TxIndex(seqFirst, r, e, body, 0);
    index.check(file, volumeCount);
    return index;
  }

  /** Cheap structural checks of a decoded index (each O(n), no I/O). */
  private check(file: string, volumeCount: number): void {
    for (let i = 0; i < this.recordCount; i++) {
      const kind = this.recordKind[i] as number;
      if (
        kind < KIND_WRITE ||
        kind > KIND_TRIM ||
        !((this.recordLength[i] as number) > 0) ||
        (this.recordVolume[i] as number) >= volumeCount
      ) {
        throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, 0, `index record ${i} is invalid`);
      }
    }
    let lastVolume = -1;
    let lastEnd = 0;
    for (let i = 0; i < this.extentCount; i++) {
      const kind = this.extentKind[i] as number;
      const volume = this.extentVolume[i] as number;
      const offset = this.extentOffset[i] as number;
      if (
        (kind !== EXTENT_DATA && kind !== EXTENT_ZERO) ||
        !((this.extentLength[i] as number) > 0) ||
        volume >= volumeCount ||
        volume < lastVolume ||
        (volume === lastVolume && offset < lastEnd)
      ) {
        throw new SegmentError(
          'REWIND_SEGMENT_CORRUPT',
          file,
          0,
          `index extent ${i} is invalid or out of order`,
        );
      }
      lastVolume = volume;
      lastEnd = offset + (this.extentLength[i] as number);
    }
  }
}
