// Redo segment format: header, checksummed records in seq order, sealing trailer. Pure codecs over
// buffers; the agent does the file I/O. Byte layout documented in docs/FORMATS.md.
import { assert, crc32c, crc32cRange, SegmentError } from '../core/index.js';

export const REDO_MAGIC = Buffer.from('RWNDREDO', 'latin1');
/**
 * 3: a batch of records may end with a pad record, so the next batch starts on a 4 KiB boundary
 * of the file (direct I/O, no read-modify-write of a partly cached page). 2: the body CRC chains
 * only what no block checks itself (version 1 summed every byte, and a block that ends in its own
 * CRC-32C adds a constant to a running CRC whatever it holds).
 */
export const REDO_VERSION = 3;
/** Version 2 segments (no pad records) are still read, never written. */
export const REDO_VERSION_V2 = 2;
/** Version 1 segments are still read (history written before version 2), never written. */
export const REDO_VERSION_V1 = 1;
export const REDO_HEADER_BYTES = 64;
/** Where the header's own CRC-32C (over the bytes before it) is kept. */
export const REDO_HEADER_CRC_OFFSET = 60;
export const RECORD_HEADER_BYTES = 48;
export const RECORD_MAGIC = 0x52575243; // "RWRC"
export const TRAILER_BYTES = 64;
export const REDO_TRAILER_MAGIC = 0x5257534c; // "RWSL"
/** Largest payload a single write record may carry (NBD requests are at most 32 MiB). */
export const RECORD_PAYLOAD_BYTES_MAX = 64 * 1024 * 1024;
export const VOLUMES_MAX = 65535;

export type RecordKind = 'write' | 'zero' | 'trim';
const KIND_CODE: Record<RecordKind, number> = { write: 1, zero: 2, trim: 3 };
const KIND_BY_CODE: readonly (RecordKind | undefined)[] = [undefined, 'write', 'zero', 'trim'];
/**
 * Kind of a pad record (version 3): no seq of its own, followed by `length` filler bytes that end
 * on a PAD_ALIGN_BYTES boundary of the file. Readers skip it; it is never a RedoRecord.
 */
const KIND_PAD = 4;
/** Pad records end on this boundary: the page size and the direct I/O block. */
export const PAD_ALIGN_BYTES = 4096;

export const SEGMENT_FLAG_RESYNC = 1;
/**
 * With SEGMENT_FLAG_RESYNC: the last segment of a resync; its seqLast is a consistent point again.
 */
export const SEGMENT_FLAG_RESYNC_END = 2;

export interface RedoHeader {
  volumeSetId: Buffer; // 16 bytes
  segmentIndex: number;
  /** The seq the first record of this segment must have (previous segment's seqLast + 1). */
  seqFirst: number;
  createdNs: bigint;
  flags: number;
}

export interface RecordMeta {
  kind: RecordKind;
  volume: number;
  seq: number;
  timeNs: bigint;
  offsetBytes: number;
  lengthBytes: number;
}

/** A parsed record: where its payload lies in the segment file (writes only). */
export interface RedoRecord extends RecordMeta {
  recordOffsetBytes: number;
  payloadOffsetBytes: number;
}

export interface RedoTrailer {
  recordCount: number;
  seqFirst: number;
  seqLast: number;
  timeFirstNs: bigint;
  timeLastNs: bigint;
  bodyBytes: number;
  bodyCrc: number;
}

/**
 * The trailer's body CRC is a chain: CRC-32C over the header's bytes 0..59 and each record header's
 * bytes 0..43, leaving out every block's own CRC field. A record header holds its payload's CRC, so
 * the chain covers payloads without reading them twice, and any rewrite of a field (with the
 * block's own CRC recomputed) changes the chain.
 */
export function chainRedoHeader(header: Buffer): number {
  return crc32cRange(header, 0, 60);
}

/** Continues the body chain over one encoded record header (at `at` in `buf`). */
export function chainRecordHeader(buf: Buffer, crc: number, at = 0): number {
  return crc32cRange(buf, at, at + 44, crc);
}

const TWO_POW_32 = 2 ** 32;

/** Bytes a pad record at `positionBytes` takes (header and filler) to end on the next boundary. */
export function padBytesAt(positionBytes: number): number {
  const filler =
    (PAD_ALIGN_BYTES - ((positionBytes + RECORD_HEADER_BYTES) % PAD_ALIGN_BYTES)) % PAD_ALIGN_BYTES;
  return RECORD_HEADER_BYTES + filler;
}

/**
 * A pad record at `positionBytes` of the file, encoded into `buf` at `at`, its filler zeroed:
 * `seqNext` is the seq the next record will carry (a pad takes none). Returns its bytes.
 */
export function encodePadAt(
  buf: Buffer,
  at: number,
  positionBytes: number,
  seqNext: number,
): number {
  const bytes = padBytesAt(positionBytes);
  buf.fill(0, at, at + bytes);
  buf.writeUInt32LE(RECORD_MAGIC, at);
  buf[at + 4] = KIND_PAD;
  writeU64LE(buf, seqNext, at + 8);
  writeU64LE(buf, bytes - RECORD_HEADER_BYTES, at + 32);
  buf.writeUInt32LE(crc32cRange(buf, at, at + 44), at + 44);
  return bytes;
}

/** Writes a safe integer as u64 little-endian without a BigInt (a record header has four). */
export function writeU64LE(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32LE(value % TWO_POW_32, at);
  buf.writeUInt32LE(Math.floor(value / TWO_POW_32), at + 4);
}

export function encodeRedoHeader(header: RedoHeader): Buffer {
  assert(header.volumeSetId.length === 16, 'volume set id is 16 bytes');
  assert(Number.isSafeInteger(header.seqFirst) && header.seqFirst >= 1, 'seqFirst >= 1');
  const buf = Buffer.alloc(REDO_HEADER_BYTES);
  REDO_MAGIC.copy(buf, 0);
  buf.writeUInt16LE(REDO_VERSION, 8);
  buf.writeUInt16LE(REDO_HEADER_BYTES, 10);
  buf.writeUInt32LE(header.flags, 12);
  header.volumeSetId.copy(buf, 16);
  buf.writeBigUInt64LE(BigInt(header.segmentIndex), 32);
  buf.writeBigUInt64LE(BigInt(header.seqFirst), 40);
  buf.writeBigUInt64LE(header.createdNs, 48);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  return buf;
}

/** Encodes a record header; `payloadCrc` is crc32c of the payload (0 for zero and trim). */
export function encodeRecordHeader(
  record: RecordMeta,
  payloadCrc: number,
  target?: Buffer,
): Buffer {
  assert(record.volume >= 0 && record.volume <= VOLUMES_MAX, 'volume index in range');
  assert(record.lengthBytes > 0, 'records are never empty');
  assert(
    record.kind !== 'write' || record.lengthBytes <= RECORD_PAYLOAD_BYTES_MAX,
    'payload bounded',
  );
  const buf = target ?? Buffer.allocUnsafe(RECORD_HEADER_BYTES);
  encodeRecordHeaderAt(buf, 0, record, payloadCrc);
  return buf;
}

/** encodeRecordHeader into `buf` at `at` (a batch's headers share one buffer). */
export function encodeRecordHeaderAt(
  buf: Buffer,
  at: number,
  record: RecordMeta,
  payloadCrc: number,
): void {
  buf.writeUInt32LE(RECORD_MAGIC, at);
  buf[at + 4] = KIND_CODE[record.kind];
  buf[at + 5] = 0;
  buf.writeUInt16LE(record.volume, at + 6);
  writeU64LE(buf, record.seq, at + 8);
  buf.writeBigUInt64LE(record.timeNs, at + 16);
  writeU64LE(buf, record.offsetBytes, at + 24);
  writeU64LE(buf, record.lengthBytes, at + 32);
  buf.writeUInt32LE(payloadCrc >>> 0, at + 40);
  buf.writeUInt32LE(crc32cRange(buf, at, at + 44), at + 44);
}

/**
 * `version` is the segment header's: a recovered version 1 active segment is sealed as version 1.
 */
export function encodeRedoTrailer(trailer: RedoTrailer, version = REDO_VERSION): Buffer {
  const buf = Buffer.alloc(TRAILER_BYTES);
  buf.writeUInt32LE(REDO_TRAILER_MAGIC, 0);
  buf.writeUInt32LE(version, 4);
  buf.writeBigUInt64LE(BigInt(trailer.recordCount), 8);
  buf.writeBigUInt64LE(BigInt(trailer.seqFirst), 16);
  buf.writeBigUInt64LE(BigInt(trailer.seqLast), 24);
  buf.writeBigUInt64LE(trailer.timeFirstNs, 32);
  buf.writeBigUInt64LE(trailer.timeLastNs, 40);
  buf.writeBigUInt64LE(BigInt(trailer.bodyBytes), 48);
  buf.writeUInt32LE(trailer.bodyCrc >>> 0, 56);
  buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
  return buf;
}

function readU64(buf: Buffer, at: number, file: string, what: string): number {
  const value = buf.readBigUInt64LE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, at, `${what} ${value} is out of range`);
  }
  return Number(value);
}

export function decodeRedoHeader(buf: Buffer, file: string): RedoHeader {
  if (buf.length < REDO_HEADER_BYTES) {
    throw new SegmentError(
      'REWIND_SEGMENT_TRUNCATED',
      file,
      buf.length,
      `header needs ${REDO_HEADER_BYTES} bytes`,
    );
  }
  if (!buf.subarray(0, 8).equals(REDO_MAGIC)) {
    throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, 0, `expected magic RWNDREDO`);
  }
  const crcExpected = buf.readUInt32LE(REDO_HEADER_CRC_OFFSET);
  const crcActual = crc32c(buf.subarray(0, REDO_HEADER_CRC_OFFSET));
  if (crcExpected !== crcActual) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      REDO_HEADER_CRC_OFFSET,
      `header crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  }
  const version = buf.readUInt16LE(8);
  if (version !== REDO_VERSION && version !== REDO_VERSION_V2 && version !== REDO_VERSION_V1) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      8,
      `version ${version}, expected ${REDO_VERSION} (or ${REDO_VERSION_V2}, ${REDO_VERSION_V1})`,
    );
  }
  // Fixed and reserved fields must hold what this version writes: a later format that uses them is
  // refused, never misread.
  if (buf.readUInt16LE(10) !== REDO_HEADER_BYTES)
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      10,
      `header bytes ${buf.readUInt16LE(10)}, expected ${REDO_HEADER_BYTES}`,
    );
  if (buf.readUInt32LE(56) !== 0)
    throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, 56, 'reserved header field is not zero');
  const seqFirst = readU64(buf, 40, file, 'seqFirst');
  if (seqFirst < 1)
    throw new SegmentError('REWIND_SEGMENT_CORRUPT', file, 40, 'seqFirst is 0, expected >= 1');
  return {
    flags: buf.readUInt32LE(12),
    volumeSetId: Buffer.from(buf.subarray(16, 32)),
    segmentIndex: readU64(buf, 32, file, 'segment index'),
    seqFirst,
    createdNs: buf.readBigUInt64LE(48),
  };
}

export function hex(value: number): string {
  return `0x${(value >>> 0).toString(16).padStart(8, '0')}`;
}

export interface ScanResult {
  header: RedoHeader;
  records: RedoRecord[];
  /** Bytes of the valid prefix: header plus every complete, checksummed, in-order record. */
  validBytes: number;
  /** Body chain CRC of the valid prefix (continues when appending). */
  validCrc: number;
  trailer: RedoTrailer | undefined;
  /** Why scanning stopped before the end of the buffer, if it did. */
  stopReason: SegmentError | undefined;
}

/**
 * Reads records from `buf` in order, verifying each, and stops at the first that is incomplete,
 * corrupt or out of order. Used for both sealed segments (via parseSealedRedo) and the torn tail
 * of an active segment after a crash.
 */
export function scanRedo(buf: Buffer, file: string, volumeCount: number): ScanResult {
  const header = decodeRedoHeader(buf, file);
  const records: RedoRecord[] = [];
  let at = REDO_HEADER_BYTES;
  // Version 1 ran its body CRC over every byte; versions 2 and 3 chain the header fields only.
  const version = buf.readUInt16LE(8);
  const v1 = version === REDO_VERSION_V1;
  const padsAllowed = version >= REDO_VERSION;
  let crc = v1 ? crc32c(buf.subarray(0, REDO_HEADER_BYTES)) : chainRedoHeader(buf);
  let seqExpected = header.seqFirst;
  let stopReason: SegmentError | undefined;
  let trailer: RedoTrailer | undefined;
  const guardMax = buf.length; // every iteration consumes at least one header
  for (let guard = 0; at < buf.length && guard <= guardMax; guard++) {
    if (buf.length - at >= 4 && buf.readUInt32LE(at) === REDO_TRAILER_MAGIC) {
      const result = decodeTrailerAt(buf, at, file, crc, version);
      if (result instanceof SegmentError) stopReason = result;
      else trailer = result;
      break;
    }
    if (padsAllowed && buf.length - at >= RECORD_HEADER_BYTES && buf[at + 4] === KIND_PAD) {
      const pad = decodePadAt(buf, at, file, seqExpected);
      if (pad instanceof SegmentError) {
        stopReason = pad;
        break;
      }
      crc = chainRecordHeader(buf, crc, at);
      at += pad;
      continue;
    }
    const parsed = decodeRecordAt(buf, at, file, seqExpected, volumeCount);
    if (parsed instanceof SegmentError) {
      stopReason = parsed;
      break;
    }
    records.push(parsed);
    const end = parsed.payloadOffsetBytes + (parsed.kind === 'write' ? parsed.lengthBytes : 0);
    crc = v1 ? crc32c(buf.subarray(at, end), crc) : chainRecordHeader(buf, crc, at);
    at = end;
    seqExpected += 1;
  }
  return {
    header,
    records,
    validBytes: trailer ? at + TRAILER_BYTES : at,
    validCrc: crc,
    trailer,
    stopReason,
  };
}

/**
 * A pad record at `at` (version 3): its bytes (header and filler), or why it is refused. Every
 * field but the filler length is fixed, its seq is the next record's, and it ends on the boundary;
 * the filler itself is not read (written as zeroes, covered by nothing).
 */
function decodePadAt(
  buf: Buffer,
  at: number,
  file: string,
  seqExpected: number,
): number | SegmentError {
  const magic = buf.readUInt32LE(at);
  if (magic !== RECORD_MAGIC)
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at,
      `record magic ${hex(magic)}, expected ${hex(RECORD_MAGIC)}`,
    );
  const crcExpected = buf.readUInt32LE(at + 44);
  const crcActual = crc32cRange(buf, at, at + 44);
  if (crcExpected !== crcActual)
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 44,
      `pad header crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  if (buf.readBigUInt64LE(at + 8) !== BigInt(seqExpected))
    return new SegmentError(
      'REWIND_SEGMENT_ORDER',
      file,
      at + 8,
      `pad seq ${buf.readBigUInt64LE(at + 8)}, expected ${seqExpected}`,
    );
  const bytes = padBytesAt(at);
  const fixedZero =
    buf[at + 5] === 0 &&
    buf.readUInt16LE(at + 6) === 0 &&
    buf.readBigUInt64LE(at + 16) === 0n &&
    buf.readBigUInt64LE(at + 24) === 0n &&
    buf.readUInt32LE(at + 40) === 0;
  if (!fixedZero)
    return new SegmentError('REWIND_SEGMENT_CORRUPT', file, at, 'pad record field is not zero');
  if (buf.readBigUInt64LE(at + 32) !== BigInt(bytes - RECORD_HEADER_BYTES))
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 32,
      `pad of ${buf.readBigUInt64LE(at + 32)} filler bytes, expected ${bytes - RECORD_HEADER_BYTES} (to the next ${PAD_ALIGN_BYTES}-byte boundary)`,
    );
  if (buf.length - at < bytes)
    return new SegmentError(
      'REWIND_SEGMENT_TRUNCATED',
      file,
      at + RECORD_HEADER_BYTES,
      `pad filler cut short (${buf.length - at - RECORD_HEADER_BYTES} of ${bytes - RECORD_HEADER_BYTES} bytes)`,
    );
  return bytes;
}

function decodeRecordAt(
  buf: Buffer,
  at: number,
  file: string,
  seqExpected: number,
  volumeCount: number,
): RedoRecord | SegmentError {
  if (buf.length - at < RECORD_HEADER_BYTES) {
    return new SegmentError(
      'REWIND_SEGMENT_TRUNCATED',
      file,
      at,
      `record header cut short (${buf.length - at} of ${RECORD_HEADER_BYTES} bytes)`,
    );
  }
  const magic = buf.readUInt32LE(at);
  if (magic !== RECORD_MAGIC) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at,
      `record magic ${hex(magic)}, expected ${hex(RECORD_MAGIC)}`,
    );
  }
  const crcExpected = buf.readUInt32LE(at + 44);
  const crcActual = crc32cRange(buf, at, at + 44);
  if (crcExpected !== crcActual) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 44,
      `record header crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  }
  if (buf.readUInt8(at + 5) !== 0)
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 5,
      'reserved record byte is not zero',
    );
  const kind = KIND_BY_CODE[buf.readUInt8(at + 4)];
  if (kind === undefined)
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 4,
      `unknown record kind ${buf.readUInt8(at + 4)}`,
    );
  const volume = buf.readUInt16LE(at + 6);
  if (volume >= volumeCount) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 6,
      `volume index ${volume}, expected < ${volumeCount}`,
    );
  }
  const seqBig = buf.readBigUInt64LE(at + 8);
  if (seqBig !== BigInt(seqExpected)) {
    return new SegmentError(
      'REWIND_SEGMENT_ORDER',
      file,
      at + 8,
      `record seq ${seqBig}, expected ${seqExpected}`,
    );
  }
  const offsetBig = buf.readBigUInt64LE(at + 24);
  const lengthBig = buf.readBigUInt64LE(at + 32);
  if (offsetBig + lengthBig > BigInt(Number.MAX_SAFE_INTEGER) || lengthBig === 0n) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 24,
      `record range ${offsetBig}+${lengthBig} is invalid`,
    );
  }
  const lengthBytes = Number(lengthBig);
  const payloadOffsetBytes = at + RECORD_HEADER_BYTES;
  if (kind === 'write') {
    if (lengthBytes > RECORD_PAYLOAD_BYTES_MAX) {
      return new SegmentError(
        'REWIND_SEGMENT_CORRUPT',
        file,
        at + 32,
        `payload length ${lengthBytes} exceeds ${RECORD_PAYLOAD_BYTES_MAX}`,
      );
    }
    if (buf.length - payloadOffsetBytes < lengthBytes) {
      return new SegmentError(
        'REWIND_SEGMENT_TRUNCATED',
        file,
        payloadOffsetBytes,
        `payload cut short (${buf.length - payloadOffsetBytes} of ${lengthBytes} bytes)`,
      );
    }
    const payloadCrcExpected = buf.readUInt32LE(at + 40);
    const payloadCrcActual = crc32c(
      buf.subarray(payloadOffsetBytes, payloadOffsetBytes + lengthBytes),
    );
    if (payloadCrcActual !== payloadCrcExpected) {
      return new SegmentError(
        'REWIND_SEGMENT_CORRUPT',
        file,
        payloadOffsetBytes,
        `payload crc32c ${hex(payloadCrcActual)}, expected ${hex(payloadCrcExpected)}`,
      );
    }
  }
  return {
    kind,
    volume,
    seq: seqExpected,
    timeNs: buf.readBigUInt64LE(at + 16),
    offsetBytes: Number(offsetBig),
    lengthBytes,
    recordOffsetBytes: at,
    payloadOffsetBytes,
  };
}

function decodeTrailerAt(
  buf: Buffer,
  at: number,
  file: string,
  bodyCrc: number,
  versionExpected: number,
): RedoTrailer | SegmentError {
  if (buf.length - at < TRAILER_BYTES) {
    return new SegmentError(
      'REWIND_SEGMENT_TRUNCATED',
      file,
      at,
      `trailer cut short (${buf.length - at} of ${TRAILER_BYTES} bytes)`,
    );
  }
  const crcExpected = buf.readUInt32LE(at + 60);
  const crcActual = crc32c(buf.subarray(at, at + 60));
  if (crcExpected !== crcActual) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 60,
      `trailer crc32c ${hex(crcActual)}, expected ${hex(crcExpected)}`,
    );
  }
  const version = buf.readUInt32LE(at + 4);
  if (version !== versionExpected)
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 4,
      `trailer version ${version}, expected ${versionExpected} (the header's)`,
    );
  const trailer: RedoTrailer = {
    recordCount: Number(buf.readBigUInt64LE(at + 8)),
    seqFirst: Number(buf.readBigUInt64LE(at + 16)),
    seqLast: Number(buf.readBigUInt64LE(at + 24)),
    timeFirstNs: buf.readBigUInt64LE(at + 32),
    timeLastNs: buf.readBigUInt64LE(at + 40),
    bodyBytes: Number(buf.readBigUInt64LE(at + 48)),
    bodyCrc: buf.readUInt32LE(at + 56),
  };
  if (trailer.bodyBytes !== at) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 48,
      `trailer says body is ${trailer.bodyBytes} bytes, found ${at}`,
    );
  }
  if (trailer.bodyCrc !== bodyCrc) {
    return new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      at + 56,
      `body crc32c ${hex(bodyCrc)}, expected ${hex(trailer.bodyCrc)}`,
    );
  }
  return trailer;
}

export interface SealedRedo {
  header: RedoHeader;
  records: RedoRecord[];
  trailer: RedoTrailer;
  fileCrc: number;
}

/** Verifies a whole sealed segment; any defect is a typed SegmentError naming file and offset. */
export function parseSealedRedo(buf: Buffer, file: string, volumeCount: number): SealedRedo {
  const scan = scanRedo(buf, file, volumeCount);
  if (scan.stopReason) throw scan.stopReason;
  const trailer = scan.trailer;
  if (!trailer)
    throw new SegmentError(
      'REWIND_SEGMENT_TRUNCATED',
      file,
      buf.length,
      'no trailer: segment is not sealed',
    );
  if (scan.validBytes !== buf.length) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      scan.validBytes,
      `${buf.length - scan.validBytes} bytes after the trailer`,
    );
  }
  const first = scan.records[0];
  const last = scan.records[scan.records.length - 1];
  const trailerAt = buf.length - TRAILER_BYTES;
  if (trailer.recordCount !== scan.records.length) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      trailerAt + 8,
      `trailer counts ${trailer.recordCount} records, found ${scan.records.length}`,
    );
  }
  const seqLastExpected = last ? last.seq : scan.header.seqFirst - 1;
  if (trailer.seqFirst !== scan.header.seqFirst || trailer.seqLast !== seqLastExpected) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      trailerAt + 16,
      `trailer seq range ${trailer.seqFirst}..${trailer.seqLast}, records hold ${scan.header.seqFirst}..${seqLastExpected}`,
    );
  }
  if (
    first &&
    last &&
    (trailer.timeFirstNs !== first.timeNs || trailer.timeLastNs !== last.timeNs)
  ) {
    throw new SegmentError(
      'REWIND_SEGMENT_CORRUPT',
      file,
      trailerAt + 32,
      'trailer time range does not match records',
    );
  }
  return { header: scan.header, records: scan.records, trailer, fileCrc: crc32c(buf) };
}

/** Builds a complete sealed segment in memory (resync transactions, tests, clone overlays). */
export function buildSealedRedo(
  header: RedoHeader,
  records: readonly (RecordMeta & { data?: Buffer })[],
): Buffer[] {
  const pieces: Buffer[] = [encodeRedoHeader(header)];
  let crc = chainRedoHeader(pieces[0] as Buffer);
  let bodyBytes = REDO_HEADER_BYTES;
  records.forEach((record, i) => {
    assert(record.seq === header.seqFirst + i, 'records are gap-free from seqFirst');
    assert((record.kind === 'write') === (record.data !== undefined), 'only writes carry data');
    const payloadCrc = record.data ? crc32c(record.data) : 0;
    const recordHeader = encodeRecordHeader(record, payloadCrc);
    pieces.push(recordHeader);
    crc = chainRecordHeader(recordHeader, crc);
    bodyBytes += RECORD_HEADER_BYTES;
    if (record.data) {
      assert(record.data.length === record.lengthBytes, 'payload length matches');
      pieces.push(record.data);
      bodyBytes += record.data.length;
    }
  });
  const first = records[0];
  const last = records[records.length - 1];
  pieces.push(
    encodeRedoTrailer({
      recordCount: records.length,
      seqFirst: header.seqFirst,
      seqLast: last ? last.seq : header.seqFirst - 1,
      timeFirstNs: first ? first.timeNs : 0n,
      timeLastNs: last ? last.timeNs : 0n,
      bodyBytes,
      bodyCrc: crc,
    }),
  );
  return pieces;
}
