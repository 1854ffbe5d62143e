// One transaction's trip through the manager: save the undo (replica bytes the redo will overwrite,
// read ascending, each byte once, zero runs without bytes, durable before the replica is touched),
// then apply the newest write of each range in offset order and make the replica durable.
import fsp from 'node:fs/promises';
import path from 'node:path';
import { assert, assertNever, crc32c, mergeRanges, type ByteRange } from '../core/index.js';
import {
  parseUndo,
  UndoBuilder,
  type RedoRecord,
  type UndoExtent,
  type UndoHeader,
} from '../log/index.js';
import {
  FILE_MODE_PRIVATE,
  fdatasyncAsync,
  fsyncDir,
  isZero,
  preadFully,
  writeFullySync,
  writeZeroesSync,
  zeroRange,
} from '../platform/index.js';
import { IntervalMap } from '../views/index.js';
import { ALLOC_CHUNK_BYTES, type ReplicaVolume } from './replica.js';

/**
 * What undo and apply need of a replica: its file and handle, and whether a chunk may hold data.
 * A ReplicaVolume is one; the apply worker (apply-worker.ts) builds its own over the same file.
 */
export interface ReplicaTarget {
  readonly index: number;
  readonly file: string;
  readonly fd: number;
  chunkMayHoldData(chunk: number): boolean;
}

const READ_PIECE_BYTES = 4 * 1024 * 1024;
const ZERO_BLOCK_BYTES = 4096;
/** Undo bytes built up before they are written out (bounds the memory of one undo). */
export const UNDO_FLUSH_BYTES = 16 * 1024 * 1024;

export interface UndoResult {
  bytes: number;
  fileCrc: number;
  extents: UndoExtent[];
}

/** Writes the undo segment for `records` to `file` (temp, fdatasync, rename, fsync dir). */
export async function saveUndo(
  file: string,
  header: { volumeSetId: Buffer; segmentIndex: number; seqFirst: number; seqLast: number },
  records: readonly RedoRecord[],
  replicas: readonly ReplicaTarget[],
): Promise<UndoResult> {
  return writeUndoFile(file, header, replicas.length, async (builder, flush) => {
    for (const replica of replicas) {
      const ranges = mergeRanges(
        records
          .filter((r) => r.volume === replica.index)
          .map((r) => ({ offset: r.offsetBytes, length: r.lengthBytes })),
      );
      for (const range of ranges) {
        addRangeToUndo(builder, replica, range);
        if (builder.pendingBytes >= UNDO_FLUSH_BYTES) await flush();
      }
    }
  });
}

/**
 * Writes an undo segment whose extents `fill` adds to the builder (calling `flush` to stream what
 * it has so far, every UNDO_FLUSH_BYTES or so): a temp file, fdatasync, rename, fsync of the
 * directory; then it is read back and verified against the checksum it was written with.
 */
export async function writeUndoFile(
  file: string,
  header: UndoHeader,
  volumeCount: number,
  fill: (builder: UndoBuilder, flush: () => Promise<void>) => Promise<void>,
): Promise<UndoResult> {
  const temp = `${file}.tmp`;
  const handle = await fsp.open(temp, 'w', FILE_MODE_PRIVATE);
  let bytes = 0;
  let crc = 0;
  const write = async (pieces: Buffer[]): Promise<void> => {
    for (const piece of pieces) crc = crc32c(piece, crc);
    if (pieces.length === 0) return;
    const { bytesWritten } = await handle.writev(pieces, bytes);
    const total = pieces.reduce((sum, p) => sum + p.length, 0);
    assert(bytesWritten === total, 'undo writev wrote everything');
    bytes += total;
  };
  try {
    const builder = new UndoBuilder(header);
    await fill(builder, () => write(builder.drain()));
    await write(builder.finish());
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await fsp.rename(temp, file);
  await fsyncDir(path.dirname(file));
  // Read back and verify what was just written (pair assertion: checked on write and on read).
  const parsed = parseUndo(await fsp.readFile(file), file, volumeCount);
  assert(parsed.fileCrc === crc, 'undo file reads back with the checksum it was written with');
  return { bytes, fileCrc: crc, extents: parsed.extents };
}

/** Adds the replica's current content of one range: zero runs as extents without bytes. */
function addRangeToUndo(builder: UndoBuilder, replica: ReplicaTarget, range: ByteRange): void {
  const end = range.offset + range.length;
  let pendingZero: { offset: number; length: number } | undefined;
  const emitZero = (): void => {
    if (pendingZero)
      builder.add({
        kind: 'zero',
        volume: replica.index,
        offsetBytes: pendingZero.offset,
        lengthBytes: pendingZero.length,
      });
    pendingZero = undefined;
  };
  const addZero = (offset: number, length: number): void => {
    if (pendingZero && pendingZero.offset + pendingZero.length === offset)
      pendingZero.length += length;
    else {
      emitZero();
      pendingZero = { offset, length };
    }
  };
  for (let at = range.offset; at < end;) {
    const chunk = Math.floor(at / ALLOC_CHUNK_BYTES);
    const chunkEnd = Math.min(end, (chunk + 1) * ALLOC_CHUNK_BYTES);
    if (!replica.chunkMayHoldData(chunk)) {
      addZero(at, chunkEnd - at); // never written: reads as zeroes without touching the disk
      at = chunkEnd;
      continue;
    }
    const pieceEnd = Math.min(end, at + READ_PIECE_BYTES, nextUnallocated(replica, chunk, end));
    const data = Buffer.allocUnsafe(pieceEnd - at);
    preadFully(replica.fd, data, 0, data.length, at);
    splitZeroRuns(data, at, addZero, (offset, bytes) => {
      emitZero();
      builder.add(
        { kind: 'data', volume: replica.index, offsetBytes: offset, lengthBytes: bytes.length },
        bytes,
      );
    });
    at = pieceEnd;
  }
  emitZero();
}

function nextUnallocated(replica: ReplicaTarget, chunk: number, end: number): number {
  let next = chunk + 1;
  while (next * ALLOC_CHUNK_BYTES < end && replica.chunkMayHoldData(next)) next += 1;
  return next * ALLOC_CHUNK_BYTES;
}

/** Splits `data` (at volume offset `base`) into runs of all-zero 4 KiB blocks and data runs. */
function splitZeroRuns(
  data: Buffer,
  base: number,
  onZero: (offset: number, length: number) => void,
  onData: (offset: number, bytes: Buffer) => void,
): void {
  let runStart = 0;
  let runIsZero: boolean | undefined;
  const close = (upTo: number): void => {
    if (runIsZero === undefined || upTo === runStart) return;
    if (runIsZero) onZero(base + runStart, upTo - runStart);
    else onData(base + runStart, data.subarray(runStart, upTo));
  };
  for (let at = 0; at < data.length; at += ZERO_BLOCK_BYTES) {
    const blockEnd = Math.min(data.length, at + ZERO_BLOCK_BYTES);
    const zero = isZero(data.subarray(at, blockEnd));
    if (zero !== runIsZero) {
      close(at);
      runStart = at;
      runIsZero = zero;
    }
  }
  close(data.length);
}

type ApplySource = 'data' | 'zero';

/**
 * First half of applying a redo segment, on the thread that owns the replicas: marks the chunks
 * its writes reach as holding data, durably, before any of those bytes are written.
 */
export async function markApplied(
  records: readonly RedoRecord[],
  replicas: readonly ReplicaVolume[],
): Promise<void> {
  for (const replica of replicas) {
    let marked = false;
    for (const r of records) {
      if (r.volume !== replica.index || r.kind !== 'write') continue;
      replica.markData(r.offsetBytes, r.lengthBytes);
      marked = true;
    }
    if (marked) await replica.persistAlloc();
  }
}

/**
 * Second half: writes a verified redo segment held in `buf` to the replicas: per volume, the
 * newest record of each byte range, in offset order. Not durable until syncReplicas. Idempotent,
 * so a crash mid-apply re-applies.
 */
export async function writeRedo(
  buf: Buffer,
  records: readonly RedoRecord[],
  replicas: readonly ReplicaTarget[],
): Promise<void> {
  for (const replica of replicas) {
    const own = records.filter((r) => r.volume === replica.index);
    if (own.length === 0) continue;
    const map = new IntervalMap<ApplySource>();
    for (const r of own)
      map.set(
        r.offsetBytes,
        r.offsetBytes + r.lengthBytes,
        r.kind === 'write' ? 'data' : 'zero',
        r.kind === 'write' ? r.payloadOffsetBytes : 0,
      );
    for (const piece of map.entries())
      await applyPiece(buf, replica, piece.start, piece.end, piece.value, piece.valueOffset);
  }
}

/** Makes what writeRedo wrote to `replicas` durable. */
export async function syncReplicas(replicas: readonly ReplicaTarget[]): Promise<void> {
  for (const replica of replicas) await fdatasyncAsync(replica.fd);
}

/** The replicas that `records` write to. */
export function replicasOf<T extends { index: number }>(
  records: readonly RedoRecord[],
  replicas: readonly T[],
): T[] {
  const touched = new Set(records.map((r) => r.volume));
  return replicas.filter((replica) => touched.has(replica.index));
}

/** All of it on this thread (recovery and tests; the manager runs writeRedo in its worker). */
export async function applyRedo(
  buf: Buffer,
  records: readonly RedoRecord[],
  replicas: readonly ReplicaVolume[],
): Promise<void> {
  await markApplied(records, replicas);
  await writeRedo(buf, records, replicas);
  await syncReplicas(replicasOf(records, replicas));
}

async function applyPiece(
  buf: Buffer,
  replica: ReplicaTarget,
  start: number,
  end: number,
  source: ApplySource,
  sourceOffset: number,
): Promise<void> {
  switch (source) {
    case 'data': {
      writeFullySync(replica.fd, buf.subarray(sourceOffset, sourceOffset + (end - start)), start);
      return;
    }
    case 'zero':
      if (end - start < ALLOC_CHUNK_BYTES) writeZeroesSync(replica.fd, start, end - start);
      else await zeroRange(replica.fd, replica.file, false, start, end - start);
      return;
    default:
      assertNever(source, 'apply source');
  }
}
