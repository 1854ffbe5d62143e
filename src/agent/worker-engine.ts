// The main thread's side of the write worker (write-worker.ts): a large batch of writes is laid
// out in shared memory (its payloads copied once, at the place they take in the log), the worker
// checksums it and writes it to the log while this side writes the payloads to production (on the
// event loop, or the threadpool for large ones). Small batches and batches with zero or trim
// records are written here alone (InThreadEngine): a worker round trip would only add latency.
import { Worker } from 'node:worker_threads';
import fs from 'node:fs';
import { assert, reviveError, RewindError, type SerializedError } from '../core/index.js';
import { PAD_ALIGN_BYTES } from '../log/index.js';
import { createSharedMemory } from '../platform/index.js';
import { layOutBatch, type BatchPlacement } from './batch-io.js';
import {
  InThreadEngine,
  writeProduction,
  type EngineBatch,
  type EngineOutcome,
  type WriteEngine,
} from './write-engine.js';

/** Shared memory for one batch: the largest batch the worker takes, plus a page of alignment. */
export const WORKER_ARENA_BYTES = 16 * 1024 * 1024 + 2 * PAD_ALIGN_BYTES;
/**
 * Batches of fewer bytes than this stay on the event loop. Measured on this machine kind (2 cores
 * shared with fio and other load), 4 KiB writes at QD32 went 26k -> 20k IOPS when batches of a
 * dozen records went to the worker: both threads sat idle 70-90 % of the time waiting for each
 * other's wake-ups, and a hand-over costs more CPU than the writes it moves (36 vs 21 us per
 * write in all). Large batches are where two threads copying at once pays.
 */
export const WORKER_BYTES_MIN = Number(process.env.REWIND_WORKER_BYTES_MIN ?? 256 * 1024);

export interface WorkerSetup {
  arenaFd: number;
  arenaBytes: number;
}

export interface WorkerRequest {
  id: number;
  placement: BatchPlacement;
  /** The segment's buffered descriptor, for the batch's head before `directFromBytes`. */
  logFd: number;
  /** The segment's direct descriptor, for the batch from `directFromBytes` on (if direct). */
  directFd: number | undefined;
  /** Where in the file the direct part starts (the batch's end when nothing goes direct). */
  directFromBytes: number;
}

export interface WorkerResponse {
  id: number;
  chainOut: number;
  logError: SerializedError | undefined;
  /** The worker could not handle the request at all (a bug: it is thrown again here). */
  error?: SerializedError;
}

/** What the worker answers about a batch: its log write. */
interface LogOutcome {
  chainOut: number;
  logError: unknown;
}

interface Waiter {
  resolve: (outcome: LogOutcome) => void;
  reject: (error: Error) => void;
}

export class WorkerEngine implements WriteEngine {
  private readonly inThread = new InThreadEngine();
  private readonly arena: Buffer;
  private readonly arenaFd: number;
  private readonly worker: Worker;
  private readonly waiters = new Map<number, Waiter>();
  private nextId = 1;
  private lost: Error | undefined;

  private constructor(arena: { buffer: Buffer; fd: number }) {
    this.arena = arena.buffer;
    this.arenaFd = arena.fd;
    const setup: WorkerSetup = { arenaFd: arena.fd, arenaBytes: WORKER_ARENA_BYTES };
    this.worker = new Worker(new URL('./write-worker.js', import.meta.url), { workerData: setup });
    this.worker.unref();
    this.worker.on('message', (response: WorkerResponse) => this.answer(response));
    this.worker.on('error', (error) => this.stop(`it failed: ${error.message}`));
    this.worker.on('exit', (code) => this.stop(`exit code ${code}`));
  }

  /** A worker engine, or the in-thread engine alone without shared memory (no /dev/shm). */
  static start(): WriteEngine {
    const arena = createSharedMemory(WORKER_ARENA_BYTES);
    if (arena === undefined) return new InThreadEngine();
    return new WorkerEngine(arena);
  }

  async write(batch: EngineBatch): Promise<EngineOutcome> {
    if (!this.takes(batch)) return this.inThread.write(batch);
    if (this.lost !== undefined) throw this.lost;
    const { reservation, records } = batch;
    // The batch starts in the arena where its first byte falls in a page of the file, so a batch
    // that starts on a 4 KiB boundary of the file also does in memory (direct I/O needs both).
    const startBytes = reservation.positionBytes % PAD_ALIGN_BYTES;
    const padAtBytes = startBytes + reservation.recordBytes;
    const endBytes = layOutBatch(this.arena, startBytes, records, {
      bytes: reservation.padBytes,
      positionBytes: reservation.positionBytes + reservation.recordBytes,
    });
    assert(endBytes === padAtBytes + reservation.padBytes, 'the batch fills its reservation');
    const id = this.nextId++;
    const request: WorkerRequest = {
      id,
      placement: {
        startBytes,
        endBytes,
        logPositionBytes: reservation.positionBytes,
        padAtBytes,
        seqNext: reservation.seqFirst + reservation.recordCount,
        chainIn: reservation.chainIn,
      },
      logFd: reservation.fd,
      directFd: reservation.directFd,
      directFromBytes: reservation.directFromBytes,
    };
    const logged = new Promise<LogOutcome>((resolve, reject) => {
      assert(this.waiters.size === 0, 'one batch in the worker at a time');
      this.waiters.set(id, { resolve, reject });
      this.worker.ref(); // a batch in flight keeps the process alive; an idle worker does not
      this.worker.postMessage(request);
    });
    // Production is written here while the worker writes the log (both awaited at once, so a lost
    // worker's rejection is never left unhandled meanwhile).
    const [{ chainOut, logError }, productionErrnos] = await Promise.all([
      logged,
      writeProduction(records),
    ]);
    return { chainOut, logError, productionErrnos };
  }

  async close(): Promise<void> {
    await this.inThread.close();
    if (this.lost === undefined) {
      this.lost = new RewindError('REWIND_SHUTDOWN', 'the write worker was closed');
      await this.worker.terminate();
    }
    fs.closeSync(this.arenaFd);
  }

  /** Batches the worker takes: several records (or many bytes) of plain writes that fit. */
  private takes(batch: EngineBatch): boolean {
    const { reservation, records } = batch;
    const bytes = reservation.recordBytes + reservation.padBytes;
    if (bytes + PAD_ALIGN_BYTES > WORKER_ARENA_BYTES) return false;
    if (bytes < WORKER_BYTES_MIN) return false;
    return records.every((record) => record.type === 'write');
  }

  private answer(response: WorkerResponse): void {
    const waiter = this.waiters.get(response.id);
    assert(waiter !== undefined, 'a worker answer to a batch in flight');
    this.waiters.delete(response.id);
    if (this.waiters.size === 0) this.worker.unref();
    if (response.error !== undefined) {
      waiter.reject(reviveError(response.error, 'the write worker'));
      return;
    }
    waiter.resolve({
      chainOut: response.chainOut,
      logError:
        response.logError === undefined
          ? undefined
          : reviveError(response.logError, 'the write worker'),
    });
  }

  /** The worker is gone: what it had is failed (the pipeline stops, as for a failed log write). */
  private stop(why: string): void {
    if (this.lost !== undefined) return;
    this.lost = new RewindError('REWIND_IO', `the write worker stopped: ${why}`);
    for (const waiter of this.waiters.values()) waiter.reject(this.lost);
    this.waiters.clear();
  }
}
