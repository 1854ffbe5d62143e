// The write path of a volume set: one global seq across volumes, dirty map write-ahead, production
// pass-through and redo append, group-committed per event-loop turn; replies after both reached the
// kernel, FLUSH/FUA after both are durable. Everything runs through one queue so seq order is
// log order is production order for overlapping writes. The writing itself is the engine's
// (write-engine.ts): on this thread, or a worker for large batches.
import {
  assert,
  crashPoint,
  crc32c,
  errorMessage,
  isDiskFull,
  nowNs,
  rethrowIfBug,
} from '../core/index.js';
import {
  encodeRecordHeader,
  RECORD_HEADER_BYTES,
  SEGMENT_FLAG_RESYNC,
  SEGMENT_FLAG_RESYNC_END,
  type RecordKind,
} from '../log/index.js';
import { NbdErrno, type DoneCallback } from '../nbd/index.js';
import { fdatasyncAsync, isZero, readFullyAsync, writeAsync } from '../platform/index.js';
import type { DirtyMap } from './dirty-map.js';
import type { ProductionVolume } from './production-volume.js';
import type { LogReservation, Spool } from './spool.js';
import type { Payload } from './batch-io.js';
import { writeProduction, type WriteEngine } from './write-engine.js';

export type { ProductionVolume } from './production-volume.js';

interface RecordOp {
  type: RecordKind;
  volume: ProductionVolume;
  seq: number;
  timeNs: bigint;
  offsetBytes: number;
  lengthBytes: number;
  data: Payload | undefined;
  fua: boolean;
  done: DoneCallback;
}
interface FlushOp {
  type: 'flush';
  volume: ProductionVolume;
  done: DoneCallback;
}
interface SealOp {
  type: 'seal';
  done: (seqLast: number) => void;
}
interface ResyncOp {
  type: 'resync';
  /** Read when the barrier runs, so it sees every region the operations before it marked. */
  targets: () => ResyncTarget[];
  options: ResyncOptions;
  done: (error: unknown, result?: ResyncResult) => void;
}
type Op = RecordOp | FlushOp | SealOp | ResyncOp;

/** Regions (indexes in the volume's dirty map) whose current production content is to be logged. */
export interface ResyncTarget {
  volume: ProductionVolume;
  regions: number[];
}
export interface ResyncOptions {
  /** Why, for the log: "unclean stop", "first protection", "failed production write". */
  reason: string;
  /** Skip all-zero regions (only when the replica is known to be zero there: a new volume). */
  skipZero: boolean;
  /**
   * Write each region back to production as read, then fdatasync, before logging it. After an
   * unclean stop, production may hold bytes that were never made durable (a failed fsync drops
   * them from the way to the disk while reads still see them), and a FLUSH after the restart
   * would otherwise claim them durable.
   */
  rewrite?: boolean;
  /** This resync ends degraded mode: operations queued behind it are logged again. */
  endsDegraded?: boolean;
  /**
   * Capture time from which per-write history is missing (the failed write, the start of degraded
   * mode); 0 when unknown (an unclean stop: right after the last logged write).
   */
  gapStartNs?: bigint;
  onProgress?: (regionsDone: number, regionsTotal: number) => void;
}
export interface ResyncResult {
  seqFirst: number;
  seqLast: number;
  records: number;
  bytesRead: number;
}

/** Resync records are appended in groups of about this many payload bytes. */
const RESYNC_APPEND_BYTES = 8 * 1024 * 1024;

/** At most this many operations are processed as one group commit. */
const BATCH_OPS_MAX = 1024;
const BATCH_BYTES_MAX = 64 * 1024 * 1024;

export interface PipelineOptions {
  sealBytes: number;
  /** Where batches are written (a worker, or this thread); closed with the pipeline. */
  engine: WriteEngine;
  /** Spool bound: a batch that would grow the spool past it switches to degraded mode. */
  spoolBytesMax: number;
  onSealed: () => void;
  onFatal: (error: unknown) => void;
  onResync?: (reason: string, result: ResyncResult) => void;
  /** Called when the agent enters degraded mode, with why. */
  onDegraded?: (reason: string) => void;
}

/** Degraded mode: the spool is full, so writes reach production and the dirty map only. */
export interface DegradedState {
  sinceNs: bigint;
  /** Writes answered without a log record since then. */
  writes: number;
}

export class WritePipeline {
  private readonly queue: Op[] = [];
  private running = false;
  private seqNext: number;
  /** Last seq whose record reached the log and whose reply went out. */
  seqCaptured: number;
  timeCapturedNs = 0n;
  /** Per volume index: client writes logged since start, and the bytes they cover (for metrics). */
  readonly captured: { writes: number; bytes: number }[] = [];
  private failed: unknown;
  degraded: DegradedState | undefined;
  private readonly spool: Spool;
  private readonly engine: WriteEngine;
  private readonly options: PipelineOptions;
  private closed = false;

  constructor(spool: Spool, options: PipelineOptions) {
    this.spool = spool;
    this.engine = options.engine;
    this.options = options;
    this.seqNext = spool.seqNextExpected;
    this.seqCaptured = this.seqNext - 1;
  }

  get seqAssigned(): number {
    return this.seqNext - 1;
  }

  get queuedOps(): number {
    return this.queue.length;
  }

  submitRecord(
    type: RecordKind,
    volume: ProductionVolume,
    offsetBytes: number,
    lengthBytes: number,
    data: Payload | undefined,
    fua: boolean,
    done: DoneCallback,
  ): void {
    if (this.failed !== undefined || this.closed) {
      done(this.closed ? NbdErrno.ESHUTDOWN : NbdErrno.EIO);
      return;
    }
    assert(offsetBytes + lengthBytes <= volume.sizeBytes, 'record inside the volume');
    const op: RecordOp = {
      type,
      volume,
      seq: this.seqNext,
      timeNs: nowNs(),
      offsetBytes,
      lengthBytes,
      data,
      fua,
      done,
    };
    this.seqNext += 1;
    this.push(op);
  }

  submitFlush(volume: ProductionVolume, done: DoneCallback): void {
    if (this.failed !== undefined || this.closed) {
      done(this.closed ? NbdErrno.ESHUTDOWN : NbdErrno.EIO);
      return;
    }
    this.push({ type: 'flush', volume, done });
  }

  /**
   * Seals the active segment after every operation queued before this call; resolves its seqLast.
   */
  seal(): Promise<number> {
    return new Promise((resolve) => this.push({ type: 'seal', done: resolve }));
  }

  /**
   * Logs the current production content of the regions `targets()` names as resync records
   * (segments flagged RESYNC, which views cannot be placed inside), after every operation queued
   * before this call. `targets` is called then, not now: a degraded write queued before the
   * resync marks its region before the resync reads the marks, so none is left out. Resolves the
   * seq range it used; an empty range (seqFirst > seqLast) when nothing was logged.
   */
  resync(targets: () => ResyncTarget[], options: ResyncOptions): Promise<ResyncResult> {
    return new Promise((resolve, reject) => {
      if (this.failed !== undefined || this.closed)
        return reject(new Error('the write path is stopped'));
      this.push({
        type: 'resync',
        targets,
        options,
        done: (error: unknown, result?: ResyncResult) =>
          error === undefined
            ? resolve(result as ResyncResult)
            : reject(error instanceof Error ? error : new Error(errorMessage(error))),
      });
    });
  }

  /** Stops accepting operations, waits until the queue is drained, and closes the engine. */
  async close(): Promise<void> {
    this.closed = true;
    for (let guard = 0; this.running || this.queue.length > 0; guard++) {
      assert(guard < 600_000, 'pipeline drains');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
    await this.engine.close();
  }

  private push(op: Op): void {
    this.queue.push(op);
    if (!this.running) {
      this.running = true;
      setImmediate(() => void this.run());
    }
  }

  private async run(): Promise<void> {
    try {
      for (let guard = 0; this.queue.length > 0; guard++) {
        assert(guard < Number.MAX_SAFE_INTEGER, 'run loop bounded');
        const { ops, barrier } = this.takeBatch();
        if (ops.length > 0) {
          try {
            await this.process(ops);
          } catch (error) {
            // process() answers a batch only once nothing more can throw: none of these was
            // answered.
            for (const op of ops) op.done(NbdErrno.EIO);
            throw error;
          }
        }
        if (barrier?.type === 'seal') {
          await this.sealNow();
          barrier.done(this.seqCaptured);
        } else if (barrier?.type === 'resync') {
          if (this.failed !== undefined) {
            barrier.done(this.failed);
            continue;
          }
          if (barrier.options.endsDegraded && this.degraded) {
            barrier.options.gapStartNs = this.degraded.sinceNs;
            this.degraded = undefined;
          }
          try {
            barrier.done(undefined, await this.resyncNow(barrier.targets(), barrier.options));
          } catch (error) {
            barrier.done(error);
            throw error;
          }
        } else if (this.spool.activeBytes >= this.options.sealBytes) {
          await this.sealNow();
        }
      }
    } catch (error) {
      rethrowIfBug(error);
      this.fail(error);
      this.answerQueued();
    } finally {
      this.running = false;
    }
  }

  /**
   * The write path stopped: everything still queued is answered now (requests get EIO, a seal
   * resolves where capture stopped, a resync fails), or its clients would wait forever and close()
   * would never drain.
   */
  private answerQueued(): void {
    for (const op of this.queue.splice(0)) {
      if (op.type === 'seal') op.done(this.seqCaptured);
      else if (op.type === 'resync') op.done(this.failed ?? new Error('the write path is stopped'));
      else op.done(NbdErrno.EIO);
    }
  }

  /** The next group commit: records and flushes up to the limits, or up to a seal or resync. */
  private takeBatch(): { ops: (RecordOp | FlushOp)[]; barrier: SealOp | ResyncOp | undefined } {
    let bytes = 0;
    let count = 0;
    for (const op of this.queue) {
      if (op.type === 'seal' || op.type === 'resync') {
        const ops = this.queue.splice(0, count) as (RecordOp | FlushOp)[];
        this.queue.shift();
        return { ops, barrier: op };
      }
      count += 1;
      if (op.type === 'write') bytes += op.lengthBytes;
      if (count >= BATCH_OPS_MAX || bytes >= BATCH_BYTES_MAX) break;
    }
    return { ops: this.queue.splice(0, count) as (RecordOp | FlushOp)[], barrier: undefined };
  }

  private async sealNow(): Promise<void> {
    if (this.failed !== undefined) return;
    const sealed = await this.spool.seal();
    if (sealed) this.options.onSealed();
  }

  /**
   * Reads each target region from production and appends it as a resync record. Operations still
   * queued behind were given seqs on arrival; they move up past the resync records (nothing about
   * them has been logged or answered yet), so the log stays gap-free and in seq order.
   */
  private async resyncNow(
    targets: readonly ResyncTarget[],
    options: ResyncOptions,
  ): Promise<ResyncResult> {
    await this.sealNow(); // a segment holds records of one kind
    const regions = targets.flatMap(({ volume, regions: list }) =>
      [...list].sort((a, b) => a - b).map((region) => ({ volume, region })),
    );
    const result: ResyncResult = {
      seqFirst: this.seqCaptured + 1,
      seqLast: this.seqCaptured,
      records: 0,
      bytesRead: 0,
    };
    if (regions.length === 0) return result;
    // Resync records carry the time the resync started (after every logged write); operations
    // queued behind it are stamped no earlier, so capture time stays monotonic in seq order.
    const timeNs = nowNs() > this.timeCapturedNs ? nowNs() : this.timeCapturedNs;
    // One segment per chunk of regions, so segments stay bounded; the last is flagged END, which
    // tells the manager where the consistent point after the resync is.
    const regionBytesMax = Math.max(...targets.map((t) => t.volume.dirty.regionBytes));
    const rewritten = new Set<ProductionVolume>();
    const chunkRegions = Math.max(1, Math.floor(this.options.sealBytes / regionBytesMax));
    for (let chunkStart = 0; chunkStart < regions.length; chunkStart += chunkRegions) {
      const chunk = regions.slice(chunkStart, chunkStart + chunkRegions);
      const lastChunk = chunkStart + chunkRegions >= regions.length;
      const flags = SEGMENT_FLAG_RESYNC | (lastChunk ? SEGMENT_FLAG_RESYNC_END : 0);
      let pieces: Buffer[] = [];
      let headers: Buffer[] = [];
      let pendingFirst = 0;
      let pendingCount = 0;
      let pendingBytes = 0;
      const appendPending = async (): Promise<void> => {
        if (pendingCount === 0) return;
        await this.spool.append(
          pieces,
          headers,
          pendingFirst,
          pendingCount,
          timeNs,
          timeNs,
          flags,
          options.gapStartNs ?? 0n,
        );
        pieces = [];
        headers = [];
        pendingCount = 0;
        pendingBytes = 0;
      };
      for (const [i, { volume, region }] of chunk.entries()) {
        const offsetBytes = region * volume.dirty.regionBytes;
        const lengthBytes = Math.min(volume.dirty.regionBytes, volume.sizeBytes - offsetBytes);
        const data = Buffer.allocUnsafe(lengthBytes);
        await readFullyAsync(volume.fd, data, offsetBytes);
        if (options.rewrite) {
          await writeAsync(volume.fd, data, offsetBytes);
          rewritten.add(volume);
        }
        result.bytesRead += lengthBytes;
        options.onProgress?.(chunkStart + i + 1, regions.length);
        const zero = isZero(data);
        // A skipped zero region needs no record; but the END segment must exist, so its last
        // region is always logged (as a zero record, which changes nothing on a zero replica).
        const mustLog =
          lastChunk &&
          i === chunk.length - 1 &&
          pendingCount === 0 &&
          this.spool.activeRecords === 0;
        if (zero && options.skipZero && !mustLog) continue;
        const seq = result.seqFirst + result.records;
        // Write-ahead as for any write: the region stays marked until this record is committed.
        if (volume.dirty.touch(offsetBytes, lengthBytes, seq, Date.now()))
          await volume.dirty.persist();
        const header = encodeRecordHeader(
          {
            kind: zero ? 'zero' : 'write',
            volume: volume.index,
            seq,
            timeNs,
            offsetBytes,
            lengthBytes,
          },
          zero ? 0 : crc32c(data),
        );
        if (pendingCount === 0) pendingFirst = seq;
        pieces.push(header);
        headers.push(header);
        if (!zero) pieces.push(data);
        pendingCount += 1;
        pendingBytes += zero ? 0 : lengthBytes;
        result.records += 1;
        result.seqLast = seq;
        if (pendingBytes >= RESYNC_APPEND_BYTES) await appendPending();
      }
      await appendPending();
      await this.sealNow();
    }
    for (const volume of rewritten) await fdatasyncAsync(volume.fd);
    // Everything queued (including what arrived while this ran) moves up past the resync records.
    for (const op of this.queue) {
      if (op.type !== 'write' && op.type !== 'zero' && op.type !== 'trim') continue;
      op.seq += result.records;
      if (op.timeNs < timeNs) op.timeNs = timeNs;
    }
    this.seqNext += result.records;
    this.seqCaptured = result.seqLast;
    this.timeCapturedNs = timeNs;
    return result;
  }

  private async process(batch: (RecordOp | FlushOp)[]): Promise<void> {
    if (this.failed !== undefined) {
      for (const op of batch) op.done(NbdErrno.EIO);
      return;
    }
    const records = batch.filter((op): op is RecordOp => op.type !== 'flush');
    if (
      this.degraded === undefined &&
      records.length > 0 &&
      this.spool.redoBytes + logBytes(records) > this.options.spoolBytesMax
    ) {
      this.degraded = { sinceNs: records[0]?.timeNs ?? nowNs(), writes: 0 };
      this.options.onDegraded?.(
        `the spool holds ${this.spool.redoBytes} bytes of per-write history, its bound is ${this.options.spoolBytesMax}`,
      );
    }
    if (this.degraded !== undefined && records.length > 0)
      return this.processDegraded(batch, records);
    await this.markDirty(records);
    const { logError, errnos } = await this.writeBatch(records);
    if (logError !== undefined) {
      if (isDiskFull(logError) && this.degraded === undefined) {
        // The spool's disk is full: the batch was not logged (the spool rolled it back), but it
        // reached production; from here on the agent runs degraded, as with a full spool.
        this.degraded = { sinceNs: records[0]?.timeNs ?? nowNs(), writes: 0 };
        this.options.onDegraded?.(`the spool's disk is full (${errorMessage(logError)})`);
        await this.markNeverClean(records); // they were marked with seqs that are handed back now
        return this.finishDegraded(batch, records, errnos);
      }
      // The log is the history: without it no reply may claim success (and seqs would gap).
      this.fail(logError);
      for (const op of batch) op.done(NbdErrno.EIO);
      return;
    }
    const syncErrno = await this.syncIfAsked(batch);
    const lastRecord = records[records.length - 1];
    if (lastRecord) {
      this.seqCaptured = lastRecord.seq;
      this.timeCapturedNs = lastRecord.timeNs;
    }
    for (const op of records) {
      const counts = (this.captured[op.volume.index] ??= { writes: 0, bytes: 0 });
      counts.writes += 1;
      counts.bytes += op.lengthBytes;
    }
    if (errnos.size > 0) await this.compensate([...errnos.keys()]);
    for (const op of batch) {
      const own = op.type === 'flush' ? 0 : (errnos.get(op) ?? 0);
      op.done(own !== 0 ? own : op.type === 'flush' || op.fua ? syncErrno : 0);
    }
  }

  /**
   * Degraded mode: no log record, so no seq. The seqs these records were given on arrival go back
   * (everything queued behind moves down), the dirty map marks their regions durably as never
   * clean until a resync logs them, production is written, and the client is answered. FLUSH and
   * FUA make production durable.
   */
  private async processDegraded(batch: (RecordOp | FlushOp)[], records: RecordOp[]): Promise<void> {
    await this.markNeverClean(records);
    return this.finishDegraded(batch, records, await writeProduction(records));
  }

  /** Write-ahead for degraded writes: their regions stay dirty until a resync logs them. */
  private async markNeverClean(records: readonly RecordOp[]): Promise<void> {
    const nowMs = Date.now();
    const toPersist = new Set<DirtyMap>();
    for (const op of records) {
      if (op.volume.dirty.touch(op.offsetBytes, op.lengthBytes, Number.MAX_SAFE_INTEGER, nowMs))
        toPersist.add(op.volume.dirty);
    }
    await Promise.all([...toPersist].map((dirty) => dirty.persist()));
  }

  /**
   * Hands the batch's seqs back (its regions are already marked never clean), makes FLUSH/FUA
   * durable on production, answers.
   */
  private async finishDegraded(
    batch: (RecordOp | FlushOp)[],
    records: RecordOp[],
    errnos: Map<RecordOp, number>,
  ): Promise<void> {
    for (const op of this.queue)
      if (op.type === 'write' || op.type === 'zero' || op.type === 'trim') op.seq -= records.length;
    this.seqNext -= records.length;
    (this.degraded as DegradedState).writes += records.length;
    const volumes = new Set<ProductionVolume>();
    for (const op of batch) if (op.type === 'flush' || op.fua) volumes.add(op.volume);
    let syncErrno = 0;
    try {
      await Promise.all([...volumes].map((v) => fdatasyncAsync(v.fd)));
    } catch (error) {
      rethrowIfBug(error);
      this.fail(error);
      syncErrno = NbdErrno.EIO;
    }
    for (const op of batch) {
      const own = op.type === 'flush' ? 0 : (errnos.get(op) ?? 0);
      op.done(own !== 0 ? own : op.type === 'flush' || op.fua ? syncErrno : 0);
    }
  }

  /**
   * A production write failed after its record was logged: the log says the bytes were written,
   * production may hold the old bytes or part of the new. The client gets the error; the history
   * is brought back to production by logging those regions' current content as a resync (the
   * range is unspecified from the failed write's seq until then, as on a disk after a failed
   * write). If production cannot even be read back, the write path stops (EIO for everything).
   */
  private async compensate(failed: readonly RecordOp[]): Promise<void> {
    const byVolume = new Map<ProductionVolume, Set<number>>();
    for (const op of failed) {
      const regions = byVolume.get(op.volume) ?? new Set<number>();
      const regionBytes = op.volume.dirty.regionBytes;
      for (
        let r = Math.floor(op.offsetBytes / regionBytes);
        r <= Math.floor((op.offsetBytes + op.lengthBytes - 1) / regionBytes);
        r++
      )
        regions.add(r);
      byVolume.set(op.volume, regions);
    }
    const targets = [...byVolume].map(([volume, regions]) => ({ volume, regions: [...regions] }));
    try {
      const gapStartNs = failed.reduce(
        (min, op) => (op.timeNs < min ? op.timeNs : min),
        failed[0]?.timeNs ?? 0n,
      );
      const result = await this.resyncNow(targets, {
        reason: 'failed production write',
        skipZero: false,
        gapStartNs,
      });
      this.options.onResync?.('failed production write', result);
    } catch (error) {
      rethrowIfBug(error);
      this.fail(error);
    }
  }

  private async markDirty(records: readonly RecordOp[]): Promise<void> {
    const nowMs = Date.now();
    const toPersist = new Set<DirtyMap>();
    for (const op of records) {
      if (op.volume.dirty.touch(op.offsetBytes, op.lengthBytes, op.seq, nowMs))
        toPersist.add(op.volume.dirty);
    }
    await Promise.all([...toPersist].map((dirty) => dirty.persist()));
  }

  /**
   * The batch's records go to the log (at the place the spool reserves for them) and to
   * production, through the engine. A log write that failed, or a segment that could not be
   * started, is returned (the spool is as before the batch); production is written either way.
   */
  private async writeBatch(
    records: readonly RecordOp[],
  ): Promise<{ logError: unknown; errnos: Map<RecordOp, number> }> {
    if (records.length === 0) return { logError: undefined, errnos: new Map() };
    const first = records[0] as RecordOp;
    const last = records[records.length - 1] as RecordOp;
    let reservation: LogReservation;
    try {
      reservation = await this.spool.reserve({
        recordCount: records.length,
        recordBytes: logBytes(records),
        seqFirst: first.seq,
        timeFirstNs: first.timeNs,
        timeLastNs: last.timeNs,
      });
    } catch (error) {
      rethrowIfBug(error);
      return { logError: error, errnos: await writeProduction(records) };
    }
    const outcome = await this.engine.write({ records, reservation });
    if (outcome.logError === undefined) {
      this.spool.commit(reservation, outcome.chainOut);
      crashPoint('append');
    } else {
      this.spool.rollback(reservation);
    }
    return {
      logError: outcome.logError,
      errnos: outcome.productionErrnos as Map<RecordOp, number>,
    };
  }

  /** FLUSH and FUA: the log and the production images involved become durable before the reply. */
  private async syncIfAsked(batch: readonly (RecordOp | FlushOp)[]): Promise<number> {
    const volumes = new Set<ProductionVolume>();
    for (const op of batch) {
      if (op.type === 'flush' || op.fua) volumes.add(op.volume);
    }
    if (volumes.size === 0) return 0;
    try {
      await Promise.all([this.spool.sync(), ...[...volumes].map((v) => fdatasyncAsync(v.fd))]);
      crashPoint('fsync');
      return 0;
    } catch (error) {
      rethrowIfBug(error);
      // An fsync failure is fatal for that file: never retry and then acknowledge.
      this.fail(error);
      return NbdErrno.EIO;
    }
  }

  /** Stops the write path for good (until a restart): an fsync of a file it depends on failed. */
  fatal(error: unknown): void {
    this.fail(error);
  }

  private fail(error: unknown): void {
    if (this.failed !== undefined) return;
    this.failed = error;
    this.options.onFatal(error);
  }

  get failure(): string | undefined {
    return this.failed === undefined ? undefined : errorMessage(this.failed);
  }
}

/** Bytes the records of a batch add to the log. */
function logBytes(records: readonly RecordOp[]): number {
  return records.reduce(
    (sum, op) => sum + RECORD_HEADER_BYTES + (op.type === 'write' ? op.lengthBytes : 0),
    0,
  );
}
