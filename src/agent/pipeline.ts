// The write path of a volume set: one global seq across volumes, dirty map write-ahead, production
// pass-through and redo append, group-committed per event-loop turn; replies after both reached the
// kernel, FLUSH/FUA after both are durable. Everything runs through one queue so seq order is
// log order is production order for overlapping writes.
import fs from 'node:fs';
import { assert, assertNever, crc32c, errorMessage, nowNs } from '../core/index.js';
import { encodeRecordHeader, RECORD_HEADER_BYTES, type RecordKind } from '../log/index.js';
import { NbdErrno, type DoneCallback } from '../nbd/backend.js';
import { fdatasyncAsync, PUNCH_THRESHOLD_BYTES, writeAsync, writeZeroesSync, zeroRange } from '../platform/index.js';
import type { DirtyMap } from './dirty-map.js';
import type { Spool } from './spool.js';

export interface ProductionVolume {
  readonly name: string;
  readonly index: number;
  readonly sizeBytes: number;
  readonly path: string;
  readonly fd: number;
  readonly blockDevice: boolean;
  readonly dirty: DirtyMap;
}

interface RecordOp {
  type: RecordKind;
  volume: ProductionVolume;
  seq: number;
  timeNs: bigint;
  offsetBytes: number;
  lengthBytes: number;
  data: Buffer | undefined;
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
type Op = RecordOp | FlushOp | SealOp;

/** Production writes up to this size run synchronously on the event loop (no threadpool hop). */
const SYNC_WRITE_BYTES_MAX = 256 * 1024;
/** At most this many operations are processed as one group commit. */
const BATCH_OPS_MAX = 1024;
const BATCH_BYTES_MAX = 64 * 1024 * 1024;

export interface PipelineOptions {
  sealBytes: number;
  onSealed: () => void;
  onFatal: (error: unknown) => void;
}

export class WritePipeline {
  private readonly queue: Op[] = [];
  private running = false;
  private seqNext: number;
  /** Last seq whose record reached the log and whose reply went out. */
  seqCaptured: number;
  timeCapturedNs = 0n;
  private failed: unknown;
  private readonly spool: Spool;
  private readonly options: PipelineOptions;
  private closed = false;

  constructor(spool: Spool, options: PipelineOptions) {
    this.spool = spool;
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

  submitRecord(type: RecordKind, volume: ProductionVolume, offsetBytes: number, lengthBytes: number, data: Buffer | undefined, fua: boolean, done: DoneCallback): void {
    if (this.failed !== undefined || this.closed) {
      done(this.closed ? NbdErrno.ESHUTDOWN : NbdErrno.EIO);
      return;
    }
    assert(offsetBytes + lengthBytes <= volume.sizeBytes, 'record inside the volume');
    const op: RecordOp = { type, volume, seq: this.seqNext, timeNs: nowNs(), offsetBytes, lengthBytes, data, fua, done };
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

  /** Seals the active segment after every operation queued before this call; resolves its seqLast. */
  seal(): Promise<number> {
    return new Promise((resolve) => this.push({ type: 'seal', done: resolve }));
  }

  /** Stops accepting operations and waits until the queue is drained. */
  async close(): Promise<void> {
    this.closed = true;
    for (let guard = 0; this.running || this.queue.length > 0; guard++) {
      assert(guard < 600_000, 'pipeline drains');
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
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
        const batch = this.takeBatch();
        const last = batch[batch.length - 1];
        if (last?.type === 'seal') {
          batch.pop();
          if (batch.length > 0) await this.process(batch);
          await this.sealNow();
          last.done(this.seqCaptured);
        } else {
          await this.process(batch);
          if (this.spool.activeBytes >= this.options.sealBytes) await this.sealNow();
        }
      }
    } catch (error) {
      this.fail(error);
    } finally {
      this.running = false;
    }
  }

  private takeBatch(): Op[] {
    let bytes = 0;
    let count = 0;
    for (const op of this.queue) {
      count += 1;
      if (op.type === 'seal') break;
      if (op.type === 'write') bytes += op.lengthBytes;
      if (count >= BATCH_OPS_MAX || bytes >= BATCH_BYTES_MAX) break;
    }
    return this.queue.splice(0, count);
  }

  private async sealNow(): Promise<void> {
    if (this.failed !== undefined) return;
    const sealed = await this.spool.seal();
    if (sealed) this.options.onSealed();
  }

  private async process(batch: Op[]): Promise<void> {
    if (this.failed !== undefined) {
      for (const op of batch) if (op.type !== 'seal') op.done(NbdErrno.EIO);
      return;
    }
    const records = batch.filter((op): op is RecordOp => op.type !== 'flush' && op.type !== 'seal');
    await this.markDirty(records);
    const logWrite = records.length > 0 ? this.appendLog(records) : Promise.resolve();
    const errnos = await this.writeProduction(records);
    try {
      await logWrite;
    } catch (error) {
      // The log is the history: without it no reply may claim success (and seqs would gap).
      this.fail(error);
      for (const op of batch) if (op.type !== 'seal') op.done(NbdErrno.EIO);
      return;
    }
    const syncErrno = await this.syncIfAsked(batch);
    const lastRecord = records[records.length - 1];
    if (lastRecord) {
      this.seqCaptured = lastRecord.seq;
      this.timeCapturedNs = lastRecord.timeNs;
    }
    for (const op of batch) {
      if (op.type === 'seal') continue;
      const own = op.type === 'flush' ? 0 : (errnos.get(op) ?? 0);
      op.done(own !== 0 ? own : op.type === 'flush' || op.fua ? syncErrno : 0);
    }
  }

  private async markDirty(records: readonly RecordOp[]): Promise<void> {
    const nowMs = Date.now();
    const toPersist = new Set<DirtyMap>();
    for (const op of records) {
      if (op.volume.dirty.touch(op.offsetBytes, op.lengthBytes, op.seq, nowMs)) toPersist.add(op.volume.dirty);
    }
    await Promise.all([...toPersist].map((dirty) => dirty.persist()));
  }

  private appendLog(records: readonly RecordOp[]): Promise<void> {
    const pieces: Buffer[] = [];
    const headers = Buffer.allocUnsafe(records.length * RECORD_HEADER_BYTES);
    records.forEach((op, i) => {
      const header = headers.subarray(i * RECORD_HEADER_BYTES, (i + 1) * RECORD_HEADER_BYTES);
      encodeRecordHeader(
        { kind: op.type, volume: op.volume.index, seq: op.seq, timeNs: op.timeNs, offsetBytes: op.offsetBytes, lengthBytes: op.lengthBytes },
        op.data ? crc32c(op.data) : 0,
        header,
      );
      pieces.push(header);
      if (op.data) pieces.push(op.data);
    });
    const first = records[0] as RecordOp;
    const last = records[records.length - 1] as RecordOp;
    return this.spool.append(pieces, first.seq, records.length, first.timeNs, last.timeNs);
  }

  /** Writes each record to production in seq order; overlapping asynchronous writes are chained. */
  private async writeProduction(records: readonly RecordOp[]): Promise<Map<RecordOp, number>> {
    const errnos = new Map<RecordOp, number>();
    const pending: { op: RecordOp; promise: Promise<void> }[] = [];
    for (const op of records) {
      const overlapping = pending.filter((p) => p.op.volume === op.volume && overlaps(p.op, op));
      if (overlapping.length > 0) await Promise.all(overlapping.map((p) => p.promise));
      const promise = this.writeOne(op).catch((error: unknown) => {
        errnos.set(op, errnoOf(error));
      });
      pending.push({ op, promise });
    }
    await Promise.all(pending.map((p) => p.promise));
    return errnos;
  }

  private async writeOne(op: RecordOp): Promise<void> {
    const { fd } = op.volume;
    switch (op.type) {
      case 'write': {
        const data = op.data as Buffer;
        if (data.length <= SYNC_WRITE_BYTES_MAX) writeFullySync(fd, data, op.offsetBytes);
        else await writeAsync(fd, data, op.offsetBytes);
        return;
      }
      case 'zero':
      case 'trim':
        if (op.lengthBytes < PUNCH_THRESHOLD_BYTES) writeZeroesSync(fd, op.offsetBytes, op.lengthBytes);
        else await zeroRange(fd, op.volume.path, op.volume.blockDevice, op.offsetBytes, op.lengthBytes);
        return;
      default:
        assertNever(op.type, 'record kind');
    }
  }

  /** FLUSH and FUA: the log and the production images involved become durable before the reply. */
  private async syncIfAsked(batch: readonly Op[]): Promise<number> {
    const volumes = new Set<ProductionVolume>();
    for (const op of batch) {
      if (op.type === 'flush' || (op.type !== 'seal' && op.fua)) volumes.add(op.volume);
    }
    if (volumes.size === 0) return 0;
    try {
      await Promise.all([this.spool.sync(), ...[...volumes].map((v) => fdatasyncAsync(v.fd))]);
      return 0;
    } catch (error) {
      // An fsync failure is fatal for that file: never retry and then acknowledge.
      this.fail(error);
      return NbdErrno.EIO;
    }
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

function overlaps(a: RecordOp, b: RecordOp): boolean {
  return a.offsetBytes < b.offsetBytes + b.lengthBytes && b.offsetBytes < a.offsetBytes + a.lengthBytes;
}

function writeFullySync(fd: number, data: Buffer, positionBytes: number): void {
  let done = 0;
  for (let guard = 0; done < data.length; guard++) {
    assert(guard <= data.length, 'writeSync makes progress');
    done += fs.writeSync(fd, data, done, data.length - done, positionBytes + done);
  }
}

function errnoOf(error: unknown): number {
  const code = (error as { code?: string }).code;
  if (code === 'ENOSPC' || code === 'EDQUOT') return NbdErrno.ENOSPC;
  return NbdErrno.EIO;
}
