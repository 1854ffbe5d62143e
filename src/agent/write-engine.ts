// The write engine: where a group commit's redo append and production writes run. The pipeline
// decides what is written and when it may be answered; an engine only writes. `InThreadEngine`
// writes on the calling thread (small batches, zero and trim records, the deterministic
// simulation, whose disk lives on the main thread); `WorkerEngine` (worker-engine.ts) has large
// batches checksummed and logged on a worker thread from shared memory while it writes their
// production copies. Both put the same bytes in the log (test/unit/write-engine.test.ts).
import fs from 'node:fs';
import { assert, assertNever, isDiskFull, rethrowIfBug } from '../core/index.js';
import {
  chainRecordHeader,
  encodePadAt,
  encodeRecordHeaderAt,
  RECORD_HEADER_BYTES,
} from '../log/index.js';
import { NbdErrno } from '../nbd/index.js';
import {
  PUNCH_THRESHOLD_BYTES,
  writeAsync,
  writevAsync,
  writeZeroesSync,
  zeroRange,
} from '../platform/index.js';
import { payloadCrc, payloadPieces, type LaidOutRecord, type Payload } from './batch-io.js';
import type { ProductionVolume } from './production-volume.js';
import { sliceFrom, writeAllAt, type LogReservation } from './spool.js';

/** One record of a batch, as the pipeline holds it. */
export interface EngineRecord extends LaidOutRecord {
  readonly volume: ProductionVolume;
}

export interface EngineBatch {
  /** In seq order, each one's place in the log given by the reservation. */
  readonly records: readonly EngineRecord[];
  readonly reservation: LogReservation;
}

export interface EngineOutcome {
  /** Body chain CRC after the batch (and its pad). */
  chainOut: number;
  /** The log write failed (ENOSPC, EIO): nothing of the batch counts as logged. */
  logError: unknown;
  /** Records whose production write failed, with the NBD errno to answer. */
  productionErrnos: Map<EngineRecord, number>;
}

export interface WriteEngine {
  /**
   * Writes the batch's records to the log at its reservation and to production in seq order;
   * resolves once both returned from the kernel. Batches are written one at a time, in order.
   */
  write(batch: EngineBatch): Promise<EngineOutcome>;
  close(): Promise<void>;
}

/** Production writes up to this size run synchronously on the event loop (no threadpool hop). */
export const SYNC_WRITE_BYTES_MAX = 256 * 1024;

export class InThreadEngine implements WriteEngine {
  async write(batch: EngineBatch): Promise<EngineOutcome> {
    const { reservation, records } = batch;
    // Headers are encoded into one buffer; payloads are written from where they are (no copy).
    const headers = Buffer.allocUnsafe(records.length * RECORD_HEADER_BYTES);
    const pieces: Buffer[] = [];
    let crc = reservation.chainIn;
    for (const [i, record] of records.entries()) {
      const at = i * RECORD_HEADER_BYTES;
      encodeRecordHeaderAt(
        headers,
        at,
        {
          kind: record.type,
          volume: record.volume.index,
          seq: record.seq,
          timeNs: record.timeNs,
          offsetBytes: record.offsetBytes,
          lengthBytes: record.lengthBytes,
        },
        record.data ? payloadCrc(record.data) : 0,
      );
      crc = chainRecordHeader(headers, crc, at);
      pieces.push(headers.subarray(at, at + RECORD_HEADER_BYTES));
      if (record.data) for (const piece of payloadPieces(record.data)) pieces.push(piece);
    }
    if (reservation.padBytes > 0) {
      const pad = Buffer.allocUnsafe(reservation.padBytes);
      const written = encodePadAt(
        pad,
        0,
        reservation.positionBytes + reservation.recordBytes,
        reservation.seqFirst + reservation.recordCount,
      );
      assert(written === reservation.padBytes, 'pad fills what was reserved for it');
      crc = chainRecordHeader(pad, crc, 0);
      pieces.push(pad);
    }
    // The log write and the production writes overlap: a large log write goes to the threadpool
    // while the production writes run here.
    const logWrite = writeAllAt(reservation.fd, pieces, reservation.positionBytes);
    const productionErrnos = await writeProduction(records);
    let logError: unknown;
    try {
      await logWrite;
    } catch (error) {
      rethrowIfBug(error);
      logError = error;
    }
    return { chainOut: crc, logError, productionErrnos };
  }

  async close(): Promise<void> {
    // Nothing of its own: every write it started has been awaited.
  }
}

/**
 * Writes each record to production in seq order. Small writes run synchronously, so they are
 * done before the next is issued. Large ones go to the threadpool one at a time per volume, in
 * seq order: concurrent writes to one file only take turns on its inode lock (and spin on it,
 * which costs CPU), so more of them at once buys nothing.
 */
export async function writeProduction<R extends EngineRecord>(
  records: readonly R[],
): Promise<Map<R, number>> {
  const errnos = new Map<R, number>();
  const chains = new Map<ProductionVolume, Promise<void>>();
  for (const record of records) {
    const chain = chains.get(record.volume);
    if (chain === undefined && isSynchronous(record)) {
      try {
        writeSynchronously(record);
      } catch (error) {
        rethrowIfBug(error);
        errnos.set(record, errnoOf(error));
      }
      continue;
    }
    // Behind an asynchronous write of the same volume, even a small write waits its turn (it may
    // overlap, and overlapping writes reach production in seq order).
    const write = (): Promise<void> =>
      writeAsynchronously(record).catch((error: unknown) => {
        rethrowIfBug(error);
        errnos.set(record, errnoOf(error));
      });
    chains.set(record.volume, chain === undefined ? write() : chain.then(write));
  }
  if (chains.size > 0) await Promise.all(chains.values());
  return errnos;
}

/** Production writes done on the calling thread: small writes, and zeroes short enough to write. */
function isSynchronous(record: EngineRecord): boolean {
  return record.type === 'write'
    ? record.lengthBytes <= SYNC_WRITE_BYTES_MAX
    : record.lengthBytes < PUNCH_THRESHOLD_BYTES;
}

function writeSynchronously(record: EngineRecord): void {
  const { fd } = record.volume;
  if (record.type !== 'write') {
    writeZeroesSync(fd, record.offsetBytes, record.lengthBytes);
    return;
  }
  const data = record.data as Payload;
  if (Buffer.isBuffer(data)) {
    let done = 0;
    for (let guard = 0; done < data.length; guard++) {
      assert(guard <= data.length, 'writeSync makes progress');
      done += fs.writeSync(fd, data, done, data.length - done, record.offsetBytes + done);
    }
    return;
  }
  const pieces = payloadPieces(data);
  let done = 0;
  for (let guard = 0; done < record.lengthBytes; guard++) {
    assert(guard <= record.lengthBytes, 'writevSync makes progress');
    done += fs.writevSync(fd, sliceFrom(pieces, done), record.offsetBytes + done);
  }
}

async function writeAsynchronously(record: EngineRecord): Promise<void> {
  const { fd } = record.volume;
  switch (record.type) {
    case 'write': {
      const data = record.data as Payload;
      if (Buffer.isBuffer(data)) {
        await writeAsync(fd, data, record.offsetBytes);
        return;
      }
      const pieces = payloadPieces(data);
      let done = 0;
      for (let guard = 0; done < record.lengthBytes; guard++) {
        assert(guard <= record.lengthBytes, 'writev makes progress');
        done += await writevAsync(fd, sliceFrom(pieces, done), record.offsetBytes + done);
      }
      return;
    }
    case 'zero':
    case 'trim':
      await zeroRange(
        fd,
        record.volume.path,
        record.volume.blockDevice,
        record.offsetBytes,
        record.lengthBytes,
      );
      return;
    default:
      assertNever(record.type, 'record kind');
  }
}

export function errnoOf(error: unknown): number {
  return isDiskFull(error) ? NbdErrno.ENOSPC : NbdErrno.EIO;
}
