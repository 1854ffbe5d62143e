// The plain payload of a batch object (before the codec compresses and encrypts it): a header, an
// index of the transactions it holds, then each transaction's redo and undo bytes as the manager
// stored them. Pure; docs/FORMATS.md "Archive batch objects" has it byte by byte.
import { assert, crc32c, RewindError } from '../core/index.js';

export const BATCH_MAGIC = 'RWAB';
export const BATCH_VERSION = 1;
export const BATCH_HEADER_BYTES = 32;
export const BATCH_ENTRY_BYTES = 88;
/** A batch never holds more transactions than this (its index stays small). */
export const BATCH_TXS_MAX = 65_536;

/** Transaction kinds as stored in an entry (1 redo, 2 resync, 3 resync-end). */
export type BatchTxKind = 'redo' | 'resync' | 'resync-end';
const KIND_CODES: Record<BatchTxKind, number> = { redo: 1, resync: 2, 'resync-end': 3 };

export interface BatchTx {
  idx: number;
  kind: BatchTxKind;
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  redo: Buffer;
  undo: Buffer;
}

/** Where a transaction's files lie in the plain payload, and their CRC-32C. */
export interface BatchEntry {
  idx: number;
  kind: BatchTxKind;
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  redoOffset: number;
  redoLength: number;
  redoCrc: number;
  undoOffset: number;
  undoLength: number;
  undoCrc: number;
}

/** The plain payload of a batch, and its index as recorded in the catalog. */
export function encodeBatch(
  volumeSetId: Buffer,
  txs: readonly BatchTx[],
): { plain: Buffer; entries: BatchEntry[] } {
  assert(volumeSetId.length === 16, 'a volume set id is 16 bytes');
  assert(txs.length > 0 && txs.length <= BATCH_TXS_MAX, 'a batch holds 1..BATCH_TXS_MAX txs');
  const header = Buffer.alloc(BATCH_HEADER_BYTES);
  header.write(BATCH_MAGIC, 0, 'latin1');
  header.writeUInt16LE(BATCH_VERSION, 4);
  header.writeUInt16LE(BATCH_HEADER_BYTES, 6);
  header.writeUInt32LE(txs.length, 8);
  header.writeUInt32LE(BATCH_ENTRY_BYTES, 12);
  volumeSetId.copy(header, 16);
  const index = Buffer.alloc(BATCH_ENTRY_BYTES * txs.length);
  const entries: BatchEntry[] = [];
  let at = BATCH_HEADER_BYTES + index.length;
  for (const [i, tx] of txs.entries()) {
    const entry: BatchEntry = {
      idx: tx.idx,
      kind: tx.kind,
      seqFirst: tx.seqFirst,
      seqLast: tx.seqLast,
      timeFirstUs: tx.timeFirstUs,
      timeLastUs: tx.timeLastUs,
      redoOffset: at,
      redoLength: tx.redo.length,
      redoCrc: crc32c(tx.redo),
      undoOffset: at + tx.redo.length,
      undoLength: tx.undo.length,
      undoCrc: crc32c(tx.undo),
    };
    at += tx.redo.length + tx.undo.length;
    writeEntry(index, i * BATCH_ENTRY_BYTES, entry);
    entries.push(entry);
  }
  const plain = Buffer.concat([header, index, ...txs.flatMap((tx) => [tx.redo, tx.undo])]);
  assert(plain.length === at, 'the batch payload is as long as its index says');
  return { plain, entries };
}

function writeEntry(buffer: Buffer, at: number, entry: BatchEntry): void {
  const u64 = (value: number, offset: number): void => {
    buffer.writeBigUInt64LE(BigInt(value), at + offset);
  };
  u64(entry.idx, 0);
  u64(entry.seqFirst, 8);
  u64(entry.seqLast, 16);
  u64(entry.timeFirstUs, 24);
  u64(entry.timeLastUs, 32);
  u64(entry.redoOffset, 40);
  u64(entry.redoLength, 48);
  u64(entry.undoOffset, 56);
  u64(entry.undoLength, 64);
  buffer.writeUInt32LE(entry.redoCrc, at + 72);
  buffer.writeUInt32LE(entry.undoCrc, at + 76);
  buffer.writeUInt8(KIND_CODES[entry.kind], at + 80);
}

function batchError(name: string, detail: string): RewindError {
  return new RewindError('REWIND_ARCHIVE_CORRUPT', `archive batch ${name}: ${detail}`, {
    hint: 'rewind archive verify --deep names every damaged object',
  });
}

/**
 * The index of a batch's plain payload, every field checked (magic, version, sizes, reserved
 * bytes, entries inside the payload and back to back, each file's CRC-32C); `name` is its key.
 */
export function decodeBatch(plain: Buffer, name: string): BatchEntry[] {
  if (plain.length < BATCH_HEADER_BYTES) throw batchError(name, 'shorter than its header');
  if (plain.toString('latin1', 0, 4) !== BATCH_MAGIC) throw batchError(name, 'bad magic');
  if (plain.readUInt16LE(4) !== BATCH_VERSION) {
    throw batchError(name, `version ${plain.readUInt16LE(4)}, expected ${BATCH_VERSION}`);
  }
  if (plain.readUInt16LE(6) !== BATCH_HEADER_BYTES || plain.readUInt32LE(12) !== BATCH_ENTRY_BYTES)
    throw batchError(name, 'header or entry size is not this version');
  const count = plain.readUInt32LE(8);
  if (count === 0 || count > BATCH_TXS_MAX) throw batchError(name, `${count} transactions`);
  let at = BATCH_HEADER_BYTES + count * BATCH_ENTRY_BYTES;
  if (plain.length < at) throw batchError(name, 'shorter than its index');
  const entries: BatchEntry[] = [];
  for (let i = 0; i < count; i++) {
    const entry = readEntry(plain, BATCH_HEADER_BYTES + i * BATCH_ENTRY_BYTES, name);
    if (entry.redoOffset !== at || entry.undoOffset !== at + entry.redoLength)
      throw batchError(name, `transaction ${entry.idx} is not where the one before it ended`);
    at = entry.undoOffset + entry.undoLength;
    if (at > plain.length) throw batchError(name, `transaction ${entry.idx} runs past the end`);
    if (crc32c(plain.subarray(entry.redoOffset, entry.undoOffset)) !== entry.redoCrc)
      throw batchError(name, `transaction ${entry.idx}: redo CRC-32C mismatch`);
    if (crc32c(plain.subarray(entry.undoOffset, at)) !== entry.undoCrc)
      throw batchError(name, `transaction ${entry.idx}: undo CRC-32C mismatch`);
    entries.push(entry);
  }
  if (at !== plain.length) throw batchError(name, `${plain.length - at} bytes after the last`);
  return entries;
}

function readEntry(buffer: Buffer, at: number, name: string): BatchEntry {
  const u64 = (offset: number): number => {
    const value = buffer.readBigUInt64LE(at + offset);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw batchError(name, 'a field is too large');
    return Number(value);
  };
  const code = buffer.readUInt8(at + 80);
  const kind = (Object.keys(KIND_CODES) as BatchTxKind[]).find((k) => KIND_CODES[k] === code);
  if (kind === undefined) throw batchError(name, `unknown transaction kind ${code}`);
  if (buffer.subarray(at + 81, at + BATCH_ENTRY_BYTES).some((byte) => byte !== 0))
    throw batchError(name, 'reserved entry bytes are not zero');
  return {
    idx: u64(0),
    kind,
    seqFirst: u64(8),
    seqLast: u64(16),
    timeFirstUs: u64(24),
    timeLastUs: u64(32),
    redoOffset: u64(40),
    redoLength: u64(48),
    undoOffset: u64(56),
    undoLength: u64(64),
    redoCrc: buffer.readUInt32LE(at + 72),
    undoCrc: buffer.readUInt32LE(at + 76),
  };
}

/** The object key of a batch: `VOLUMESETID/tx/<firstIdx>-<lastIdx>`, 16 digits each (sorts). */
export function batchKey(volumeSetId: string, firstIdx: number, lastIdx: number): string {
  const pad = (n: number): string => String(n).padStart(16, '0');
  return `${volumeSetId}/tx/${pad(firstIdx)}-${pad(lastIdx)}`;
}
