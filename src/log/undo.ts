// Undo segment format: the replica's bytes that one redo segment overwrote, as ascending extents;
// runs of zeroes are extents without bytes. Pure codecs; byte layout in docs/FORMATS.md.
import { assert, crc32c, SegmentError } from '../core/index.js';
import { hex, TRAILER_BYTES } from './redo.js';

export const UNDO_MAGIC = Buffer.from('RWNDUNDO', 'latin1');
/** 2: the body CRC chains header fields only, as in redo version 2 (see chainRedoHeader). */
export const UNDO_VERSION = 2;
/** Version 1 undo segments are still read, never written. */
export const UNDO_VERSION_V1 = 1;
export const UNDO_HEADER_BYTES = 64;
export const EXTENT_HEADER_BYTES = 32;
export const EXTENT_MAGIC = 0x52575558; // "RWUX"
export const UNDO_TRAILER_MAGIC = 0x52575554; // "RWUT"

export interface UndoHeader {
  volumeSetId: Buffer;
  segmentIndex: number;
  seqFirst: number;
  seqLast: number;
}

export interface UndoExtentMeta {
  kind: 'data' | 'zero';
  volume: number;
  offsetBytes: number;
  lengthBytes: number;
}

export interface UndoExtent extends UndoExtentMeta {
  payloadOffsetBytes: number;
}

export interface ParsedUndo {
  header: UndoHeader;
  extents: UndoExtent[];
  dataBytes: number;
  zeroBytes: number;
  fileCrc: number;
}

export function encodeUndoHeader(header: UndoHeader): Buffer {
  assert(header.volumeSetId.length === 16, 'volume set id is 16 bytes');
  const buf = Buffer.alloc(UNDO_HEADER_BYTES);
  UNDO_MAGIC.copy(buf, 0);
  buf.writeUInt16LE(UNDO_VERSION, 8);
  buf.writeUInt16LE(UNDO_HEADER_BYTES, 10);
  buf.writeUInt32LE(0, 12);
  header.volumeSetId.copy(buf, 16);
  buf.writeBigUInt64LE(BigInt(header.segmentIndex), 32);
  buf.writeBigUInt64LE(BigInt(header.seqFirst), 40);
  buf.writeBigUInt64LE(BigInt(header.seqLast), 48);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  return buf;
}

export function encodeExtentHeader(extent: UndoExtentMeta, payloadCrc: number): Buffer {
  assert(extent.lengthBytes > 0, 'extents are never empty');
  const buf = Buffer.alloc(EXTENT_HEADER_BYTES);
  buf.writeUInt32LE(EXTENT_MAGIC, 0);
  buf.writeUInt8(extent.kind === 'data' ? 1 : 2, 4);
  buf.writeUInt16LE(extent.volume, 6);
  buf.writeBigUInt64LE(BigInt(extent.offsetBytes), 8);
  buf.writeBigUInt64LE(BigInt(extent.lengthBytes), 16);
  buf.writeUInt32LE(payloadCrc >>> 0, 24);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 28)), 28);
  return buf;
}

/** The undo body chain: header bytes 0..59, then each extent header's bytes 0..27 (see redo). */
function chainExtentHeader(extentHeader: Buffer, crc: number): number {
  return crc32c(extentHeader.subarray(0, 28), crc);
}

export function encodeUndoTrailer(
  extentCount: number,
  dataBytes: number,
  zeroBytes: number,
  bodyBytes: number,
  bodyCrc: number,
): Buffer {
  const buf = Buffer.alloc(TRAILER_BYTES);
  buf.writeUInt32LE(UNDO_TRAILER_MAGIC, 0);
  buf.writeUInt32LE(UNDO_VERSION, 4);
  buf.writeBigUInt64LE(BigInt(extentCount), 8);
  buf.writeBigUInt64LE(BigInt(dataBytes), 16);
  buf.writeBigUInt64LE(BigInt(zeroBytes), 24);
  buf.writeBigUInt64LE(BigInt(bodyBytes), 48);
  buf.writeUInt32LE(bodyCrc >>> 0, 56);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  return buf;
}

/** Incrementally assembles an undo segment; extents must arrive in ascending (volume, offset). */
export class UndoBuilder {
  readonly pieces: Buffer[] = [];
  private crc: number;
  private bodyBytes = UNDO_HEADER_BYTES;
  private count = 0;
  private dataBytes = 0;
  private zeroBytes = 0;
  private lastVolume = -1;
  private lastEnd = 0;

  /** Bytes in `pieces` not yet drained (a running count: summing the pieces on every call was
   * quadratic in the extents of a segment). */
  private pending: number;

  constructor(header: UndoHeader) {
    const encoded = encodeUndoHeader(header);
    this.pieces.push(encoded);
    this.pending = encoded.length;
    this.crc = crc32c(encoded.subarray(0, 60));
  }

  add(extent: UndoExtentMeta, data?: Buffer): void {
    assert(
      extent.volume > this.lastVolume ||
        (extent.volume === this.lastVolume && extent.offsetBytes >= this.lastEnd),
      'undo extents ascend without overlap',
    );
    assert((extent.kind === 'data') === (data !== undefined), 'only data extents carry bytes');
    const header = encodeExtentHeader(extent, data ? crc32c(data) : 0);
    this.crc = chainExtentHeader(header, this.crc);
    this.push(header);
    if (data) {
      assert(data.length === extent.lengthBytes, 'extent payload length matches');
      this.push(data);
      this.dataBytes += data.length;
    } else {
      this.zeroBytes += extent.lengthBytes;
    }
    this.count += 1;
    this.lastVolume = extent.volume;
    this.lastEnd = extent.offsetBytes + extent.lengthBytes;
  }

  /** Takes the pieces built so far (to stream them to disk) and keeps building. */
  drain(): Buffer[] {
    this.pending = 0;
    return this.pieces.splice(0, this.pieces.length);
  }

  get pendingBytes(): number {
    return this.pending;
  }

  finish(): Buffer[] {
    this.pieces.push(
      encodeUndoTrailer(this.count, this.dataBytes, this.zeroBytes, this.bodyBytes, this.crc),
    );
    return this.pieces;
  }

  private push(piece: Buffer): void {
    this.pieces.push(piece);
    this.pending += piece.length;
    this.bodyBytes += piece.length;
  }
}

export function parseUndo(buf: Buffer, file: string, volumeCount: number): ParsedUndo {
  const header = decodeUndoHeader(buf, file);
  const extents: UndoExtent[] = [];
  let at = UNDO_HEADER_BYTES;
  // Version 1 ran its body CRC over every byte; version 2 chains the header fields only.
  const version = buf.readUInt16LE(8);
  const v1 = version === UNDO_VERSION_V1;
  let crc = v1 ? crc32c(buf.subarray(0, UNDO_HEADER_BYTES)) : crc32c(buf.subarray(0, 60));
  let dataBytes = 0;
  let zeroBytes = 0;
  let lastVolume = -1;
  let lastEnd = 0;
  for (let guard = 0; guard <= buf.length; guard++) {
    if (buf.length - at < 4)
      throw new SegmentError(
        'REWIND_SEGMENT_TRUNCATED',
        file,
        at,
        'undo segment ends without a trailer',
      );
    if (buf.readUInt32LE(at) === UNDO_TRAILER_MAGIC) break;
    const extent = decodeExtentAt(buf, at, file, volumeCount);
    if (
      extent.volume < lastVolume ||
      (extent.volume === lastVolume && extent.offsetBytes < lastEnd)
    ) {
      throw new SegmentError(
        'REWIND_SEGMENT_ORDER',
        file,
        at,
        'undo extents are not ascending and disjoint',
      );
    }
    extents.push(extent);
    const end = extent.payloadOffsetBytes + (extent.kind === 'data' ? extent.lengthBytes : 0);
    crc = v1
      ? crc32c(buf.subarray(at, end), crc)
      : chainExtentHeader(buf.subarray(at, at + EXTENT_HEADER_BYTES), crc);
    if (extent.kind === 'data') dataBytes += extent.lengthBytes;
    else zeroBytes += extent.lengthBytes;
    lastVolume = extent.volume;
    lastEnd = extent.offsetBytes + extent.lengthBytes;
    at = end;
  }
  verifyUndoTrailer(buf, at, file, { version, count: extents.length, dataBytes, zeroBytes, crc });
  return { header, extents, dataBytes, zeroBytes, fileCrc: crc32c(buf) };
}

function decodeUndoHeader(buf: Buffer, file: string): UndoHeader {
  if (buf.length < UNDO_HEADER_BYTES)
    throw new SegmentError(
      'REWIND_SEGMENT_TRUNCATED',
      file,
      buf.length,
      `header needs ${UNDO_HEADER_BYTES} bytes`,
    );
  if (!buf.subarray(0, 8).equals(UNDO_MAGIC))
    throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, 0, 'expected magic RWNDUNDO');
  const crcExpected = buf.readUInt32LE(60);
  const crcActual = crc32c(buf.subarray(0, 60));
  if (crcExpected !== crcActual)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      60,
      `header crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  const version = buf.readUInt16LE(8);
  if (version !== UNDO_VERSION && version !== UNDO_VERSION_V1)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      8,
      `version ${version}, expected ${UNDO_VERSION} (or ${UNDO_VERSION_V1})`,
    );
  if (buf.readUInt16LE(10) !== UNDO_HEADER_BYTES)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      10,
      `header bytes ${buf.readUInt16LE(10)}, expected ${UNDO_HEADER_BYTES}`,
    );
  if (buf.readUInt32LE(12) !== 0 || buf.readUInt32LE(56) !== 0)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      12,
      'header flags or reserved field is not zero',
    );
  return {
    volumeSetId: Buffer.from(buf.subarray(16, 32)),
    segmentIndex: Number(buf.readBigUInt64LE(32)),
    seqFirst: Number(buf.readBigUInt64LE(40)),
    seqLast: Number(buf.readBigUInt64LE(48)),
  };
}

function decodeExtentAt(buf: Buffer, at: number, file: string, volumeCount: number): UndoExtent {
  if (buf.length - at < EXTENT_HEADER_BYTES)
    throw new SegmentError('REWIND_SEGMENT_TRUNCATED', file, at, 'extent header cut short');
  const magic = buf.readUInt32LE(at);
  if (magic !== EXTENT_MAGIC)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at,
      `extent magic ${hex(magic)}, expected ${hex(EXTENT_MAGIC)}`,
    );
  const crcExpected = buf.readUInt32LE(at + 28);
  const crcActual = crc32c(buf.subarray(at, at + 28));
  if (crcExpected !== crcActual)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 28,
      `extent header crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  if (buf.readUInt8(at + 5) !== 0)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 5,
      'reserved extent byte is not zero',
    );
  const kindCode = buf.readUInt8(at + 4);
  if (kindCode !== 1 && kindCode !== 2)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 4,
      `unknown extent kind ${kindCode}`,
    );
  const volume = buf.readUInt16LE(at + 6);
  if (volume >= volumeCount)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 6,
      `volume index ${volume}, expected < ${volumeCount}`,
    );
  const offsetBig = buf.readBigUInt64LE(at + 8);
  const lengthBig = buf.readBigUInt64LE(at + 16);
  if (lengthBig === 0n || offsetBig + lengthBig > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 8,
      `extent range ${offsetBig}+${lengthBig} is invalid`,
    );
  }
  const lengthBytes = Number(lengthBig);
  const payloadOffsetBytes = at + EXTENT_HEADER_BYTES;
  if (kindCode === 1) {
    if (buf.length - payloadOffsetBytes < lengthBytes)
      throw new SegmentError(
        'REWIND_SEGMENT_TRUNCATED',
        file,
        payloadOffsetBytes,
        'extent payload cut short',
      );
    const payloadCrc = crc32c(buf.subarray(payloadOffsetBytes, payloadOffsetBytes + lengthBytes));
    const expected = buf.readUInt32LE(at + 24);
    if (payloadCrc !== expected)
      throw new SegmentError(
        'REWIND_SEGMENT_CORRUPT',
        file,
        payloadOffsetBytes,
        `extent payload crc32c ${hex(payloadCrc)}, expected ${hex(expected)}`,
      );
  }
  return {
    kind: kindCode === 1 ? 'data' : 'zero',
    volume,
    offsetBytes: Number(offsetBig),
    lengthBytes,
    payloadOffsetBytes,
  };
}

function verifyUndoTrailer(
  buf: Buffer,
  at: number,
  file: string,
  seen: { version: number; count: number; dataBytes: number; zeroBytes: number; crc: number },
): void {
  if (buf.length - at < TRAILER_BYTES)
    throw new SegmentError('REWIND_SEGMENT_TRUNCATED', file, at, 'trailer cut short');
  if (buf.length - at > TRAILER_BYTES)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + TRAILER_BYTES,
      'bytes after the trailer',
    );
  const crcExpected = buf.readUInt32LE(at + 60);
  const crcActual = crc32c(buf.subarray(at, at + 60));
  if (crcExpected !== crcActual)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 60,
      `trailer crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  const checks: [number, number, number, string][] = [
    [4, buf.readUInt32LE(at + 4), seen.version, 'version'],
    [32, Number(buf.readBigUInt64LE(at + 32) | buf.readBigUInt64LE(at + 40)), 0, 'reserved bytes'],
    [8, Number(buf.readBigUInt64LE(at + 8)), seen.count, 'extent count'],
    [16, Number(buf.readBigUInt64LE(at + 16)), seen.dataBytes, 'data bytes'],
    [24, Number(buf.readBigUInt64LE(at + 24)), seen.zeroBytes, 'zero bytes'],
    [48, Number(buf.readBigUInt64LE(at + 48)), at, 'body bytes'],
    [56, buf.readUInt32LE(at + 56), seen.crc, 'body crc32c'],
  ];
  for (const [field, stored, actual, what] of checks) {
    if (stored !== actual)
      throw new SegmentError(
        'REWIND_SEGMENT_CORRUPT',
        file,
        at + field,
        `trailer ${what} ${stored}, found ${actual}`,
      );
  }
}
