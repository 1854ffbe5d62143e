// One batch's bytes, laid out and written: the records of a group commit as they go to the redo
// log (headers, payloads, a pad to a 4 KiB boundary), their checksums, the log write and the
// production writes. Shared by the write worker and the engine on the main thread, so both write
// the same bytes; every function here is synchronous and runs on whichever thread calls it.
import fs from 'node:fs';
import { assert, crc32c, crc32cRange } from '../core/index.js';
import {
  chainRecordHeader,
  encodePadAt,
  RECORD_HEADER_BYTES,
  RECORD_MAGIC,
  writeU64LE,
  type RecordKind,
} from '../log/index.js';

/**
 * A write's payload: one buffer, or the pieces it arrived in from the socket, in order (a large
 * write spread over several reads is not joined: that copy would run on the event loop).
 */
export type Payload = Buffer | readonly Buffer[];

export function payloadPieces(payload: Payload): readonly Buffer[] {
  return Buffer.isBuffer(payload) ? [payload] : payload;
}

/** CRC-32C of a payload, piece after piece. */
export function payloadCrc(payload: Payload): number {
  if (Buffer.isBuffer(payload)) return crc32c(payload);
  let crc = 0;
  for (const piece of payload as readonly Buffer[]) crc = crc32c(piece, crc);
  return crc;
}

/** Copies a payload into `target` at `at`; returns the bytes copied. */
export function copyPayload(payload: Payload, target: Buffer, at: number): number {
  let done = 0;
  for (const piece of payloadPieces(payload)) done += piece.copy(target, at + done);
  return done;
}

/** What a batch's layout needs of each record. */
export interface LaidOutRecord {
  readonly type: RecordKind;
  readonly volume: { readonly index: number };
  readonly seq: number;
  readonly timeNs: bigint;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly data: Payload | undefined;
}

/** Where a laid-out batch lies in its buffer and where it goes in the log. */
export interface BatchPlacement {
  /** The batch occupies buffer[startBytes, endBytes): records, then the pad if any. */
  startBytes: number;
  endBytes: number;
  /** Where buffer[startBytes] goes in the segment file. */
  logPositionBytes: number;
  /** Where the pad starts (endBytes when there is none). */
  padAtBytes: number;
  /** The seq after the batch's last record (a pad carries it). */
  seqNext: number;
  /** Body chain CRC before the batch. */
  chainIn: number;
}

const KIND_CODE: Record<RecordKind, number> = { write: 1, zero: 2, trim: 3 };

/**
 * Copies the records into `buffer` from `startBytes` as the log holds them, each header with
 * every field but its two CRCs (finishBatch fills those), then the pad. Returns the end.
 */
export function layOutBatch(
  buffer: Buffer,
  startBytes: number,
  records: readonly LaidOutRecord[],
  pad: { bytes: number; positionBytes: number },
): number {
  let at = startBytes;
  for (const record of records) {
    buffer.writeUInt32LE(RECORD_MAGIC, at);
    buffer[at + 4] = KIND_CODE[record.type];
    buffer[at + 5] = 0;
    buffer.writeUInt16LE(record.volume.index, at + 6);
    writeU64LE(buffer, record.seq, at + 8);
    buffer.writeBigUInt64LE(record.timeNs, at + 16);
    writeU64LE(buffer, record.offsetBytes, at + 24);
    writeU64LE(buffer, record.lengthBytes, at + 32);
    at += RECORD_HEADER_BYTES;
    if (record.type === 'write') {
      const copied = copyPayload(record.data as Payload, buffer, at);
      assert(copied === record.lengthBytes, 'payload length matches its record');
      at += copied;
    }
  }
  if (pad.bytes > 0) {
    const last = records[records.length - 1] as LaidOutRecord;
    const written = encodePadAt(buffer, at, pad.positionBytes, last.seq + 1);
    assert(written === pad.bytes, 'pad fills what was reserved for it');
    at += written;
  }
  return at;
}

/**
 * Fills the payload and header CRCs of the records laid out in buffer[startBytes, padAtBytes)
 * and returns the body chain CRC after them and the pad. The payload CRC is the native one (the
 * cost that binds: it reads every byte), the header CRC the short JavaScript one.
 */
export function finishBatch(buffer: Buffer, placement: BatchPlacement): number {
  let crc = placement.chainIn;
  let at = placement.startBytes;
  for (let guard = 0; at < placement.padAtBytes; guard++) {
    assert(guard <= placement.padAtBytes - placement.startBytes, 'batch walk makes progress');
    assert(buffer.readUInt32LE(at) === RECORD_MAGIC, 'a laid-out record starts here');
    const kind = buffer[at + 4];
    const lengthBytes = readU64(buffer, at + 32);
    const payloadAt = at + RECORD_HEADER_BYTES;
    const payloadBytes = kind === KIND_CODE.write ? lengthBytes : 0;
    const payloadCrc =
      payloadBytes > 0 ? crc32c(buffer.subarray(payloadAt, payloadAt + payloadBytes)) : 0;
    buffer.writeUInt32LE(payloadCrc, at + 40);
    buffer.writeUInt32LE(crc32cRange(buffer, at, at + 44), at + 44);
    crc = chainRecordHeader(buffer, crc, at);
    at = payloadAt + payloadBytes;
  }
  assert(at === placement.padAtBytes, 'records end where the pad starts');
  if (placement.endBytes > placement.padAtBytes) crc = chainRecordHeader(buffer, crc, at);
  return crc;
}

function readU64(buffer: Buffer, at: number): number {
  return buffer.readUInt32LE(at) + buffer.readUInt32LE(at + 4) * 2 ** 32;
}

/** Writes buffer[start, end) at `positionBytes` of `fd`, all of it (pwrite may write less). */
export function writeRangeSync(
  fd: number,
  buffer: Buffer,
  startBytes: number,
  endBytes: number,
  positionBytes: number,
): void {
  let done = 0;
  const total = endBytes - startBytes;
  for (let guard = 0; done < total; guard++) {
    assert(guard <= total, 'pwrite makes progress');
    done += fs.writeSync(fd, buffer, startBytes + done, total - done, positionBytes + done);
  }
}

/** The production writes of a laid-out batch, in seq order: volume, offset, payload, length. */
export function productionWrites(
  buffer: Buffer,
  startBytes: number,
  padAtBytes: number,
): { volumeIndex: number; offsetBytes: number; payloadAtBytes: number; lengthBytes: number }[] {
  const writes = [];
  let at = startBytes;
  for (let guard = 0; at < padAtBytes; guard++) {
    assert(guard <= padAtBytes - startBytes, 'batch walk makes progress');
    const lengthBytes = readU64(buffer, at + 32);
    const write = buffer[at + 4] === KIND_CODE.write;
    if (write)
      writes.push({
        volumeIndex: buffer.readUInt16LE(at + 6),
        offsetBytes: readU64(buffer, at + 24),
        payloadAtBytes: at + RECORD_HEADER_BYTES,
        lengthBytes,
      });
    at += RECORD_HEADER_BYTES + (write ? lengthBytes : 0);
  }
  return writes;
}
