// The manager's stored history, read side: the volume set's volumes and replicas, the catalog's
// committed transactions and their redo and undo files, as views, POINTs and the log see them.
// Implements the views' `History` port; writes nothing but caches.
import fs from 'node:fs';
import { formatTimeNs, RewindError } from '../core/index.js';
import {
  decodeRedoHeader,
  parseSealedRedo,
  REDO_HEADER_BYTES,
  type RedoRecord,
  type UndoExtent,
} from '../log/index.js';
import { preadFully } from '../platform/index.js';
import type { History, HistoryTx, TxIndex } from '../views/index.js';
import type { Catalog, TxKind } from './catalog.js';
import type { ReplicaVolume } from './replica.js';
import type { TxFiles } from './txfiles.js';

/**
 * One committed write as `rewind log` shows it; or, kind `thinned`, a byte range written somewhere
 * in seqs `seqFirst`..`seq` that retention thinned into one point (at `seq`, `time`).
 */
export interface LogEntry {
  seq: number;
  time: string;
  volume: string;
  kind: 'write' | 'zero' | 'trim' | 'thinned';
  offset: number;
  length: number;
  /** Part of a resync transaction: the region's content at that moment, not a client write. */
  resync: boolean;
  /** Thinned: the first seq of the run. */
  seqFirst?: number;
}

export interface LogFilter {
  volume?: string;
  /** First and last seq (inclusive). */
  from?: number;
  to?: number;
}

export class StoredHistory implements History {
  private readonly catalog: Catalog;
  private readonly txFiles: TxFiles;
  /** By volume index; grows when an agent adds volumes. */
  readonly replicas: readonly ReplicaVolume[];
  private readonly committedSeq: () => number;

  constructor(options: {
    catalog: Catalog;
    txFiles: TxFiles;
    replicas: readonly ReplicaVolume[];
    seqCommitted: () => number;
  }) {
    this.catalog = options.catalog;
    this.txFiles = options.txFiles;
    this.replicas = options.replicas;
    this.committedSeq = options.seqCommitted;
  }

  // ---- volumes ----

  get volumeCount(): number {
    return this.replicas.length;
  }

  volumeSize(volume: number): number {
    return (this.replicas[volume] as ReplicaVolume).sizeBytes;
  }

  volumeNames(): string[] {
    return this.replicas.map((r) => r.name);
  }

  /** The index of the volume called `name`, or the one "no volume named" refusal. */
  volumeIndex(name: string): number {
    const index = this.replicas.findIndex((r) => r.name === name);
    if (index === -1) {
      throw new RewindError('REWIND_NOT_FOUND', `no volume named "${name}"`, {
        hint: `volumes: ${this.volumeNames().join(', ') || 'none yet'}`,
      });
    }
    return index;
  }

  // ---- History (for views) ----

  seqCommitted(): number {
    return this.committedSeq();
  }

  txsAfter(seq: number, upTo?: number): HistoryTx[] {
    return this.catalog.committedTxs(seq + 1, upTo).filter((tx) => tx.seqLast > seq);
  }

  txIndex(idx: number): Promise<TxIndex> {
    return this.txFiles.index(idx);
  }

  redoFd(idx: number): number {
    return this.txFiles.fd(this.txFiles.redoPath(idx));
  }

  undoFd(idx: number): number {
    return this.txFiles.fd(this.txFiles.undoPath(idx));
  }

  mappedFile(idx: number, kind: 'redo' | 'undo'): Buffer | undefined {
    return this.txFiles.mapped(idx, kind);
  }

  replicaFd(volume: number): number {
    return (this.replicas[volume] as ReplicaVolume).fd;
  }

  // ---- records ----

  /** A committed transaction's records, synchronously: from the cache, else a verifying parse. */
  recordsOf(idx: number): readonly RedoRecord[] {
    if (!this.txFiles.hasRedo(idx)) return []; // merged: no records of its own
    const cached = this.txFiles.cached(idx);
    if (cached) return cached.records;
    const file = this.txFiles.redoPath(idx);
    return parseSealedRedo(fs.readFileSync(file), file, this.replicas.length).records;
  }

  /** From the header of transaction `idx`'s redo file: when history went missing (0n: unknown). */
  gapStartNs(idx: number): bigint {
    const file = this.txFiles.redoPath(idx);
    const head = Buffer.alloc(REDO_HEADER_BYTES);
    preadFully(this.txFiles.fd(file), head, 0, REDO_HEADER_BYTES, 0);
    const createdNs = decodeRedoHeader(head, file).createdNs;
    return createdNs > 0n ? createdNs : 0n;
  }

  /** Every committed write matching `filter`, in seq order, read transaction by transaction. */
  async *log(filter: LogFilter): AsyncGenerator<LogEntry> {
    const volume = filter.volume === undefined ? undefined : this.volumeIndex(filter.volume);
    const from = filter.from ?? 1;
    const to = Math.min(filter.to ?? this.committedSeq(), this.committedSeq());
    for (const tx of this.catalog.committedTxs(from, to)) {
      const index = await this.txFiles.index(tx.idx);
      if (tx.kind === 'merged') {
        yield* this.thinnedEntries(tx, index.undo, volume);
        continue;
      }
      for (const record of index.records) {
        if (record.seq < from || record.seq > to) continue;
        if (volume !== undefined && record.volume !== volume) continue;
        yield this.logEntry(record, tx.kind);
      }
    }
  }

  /** A merged transaction's ranges (its undo's extents) as log entries at its last seq. */
  private *thinnedEntries(
    tx: { seqFirst: number; seqLast: number; timeLastUs: number },
    extents: readonly UndoExtent[],
    volume: number | undefined,
  ): Generator<LogEntry> {
    const time = formatTimeNs(BigInt(tx.timeLastUs) * 1000n);
    for (const extent of extents) {
      if (volume !== undefined && extent.volume !== volume) continue;
      yield {
        seq: tx.seqLast,
        seqFirst: tx.seqFirst,
        time,
        volume: (this.replicas[extent.volume] as ReplicaVolume).name,
        kind: 'thinned',
        offset: extent.offsetBytes,
        length: extent.lengthBytes,
        resync: false,
      };
    }
  }

  /** Whether any transaction holding seqs after `from` up to `to` was thinned. */
  thinnedBetween(from: number, to: number): boolean {
    return this.catalog.committedTxs(from + 1, to).some((tx) => tx.kind === 'merged');
  }

  logEntry(record: RedoRecord, kind: TxKind): LogEntry {
    return {
      seq: record.seq,
      time: formatTimeNs(record.timeNs),
      volume: (this.replicas[record.volume] as ReplicaVolume).name,
      kind: record.kind,
      offset: record.offsetBytes,
      length: record.lengthBytes,
      resync: kind !== 'redo',
    };
  }

  /** The kind of committed transaction `idx` (a write crossed by a step needs it). */
  txKind(idx: number): TxKind {
    return this.catalog.tx(idx)?.kind ?? 'redo';
  }

  /** Capture time of the write at `seq` (0: the first write's time, or now when there is none). */
  async seqTimeNs(seq: number): Promise<bigint> {
    const tx = this.catalog.txContaining(Math.max(seq, 1));
    if (!tx) return BigInt(Date.now()) * 1_000_000n;
    const { records } = await this.txFiles.index(tx.idx);
    const record = records.find((r) => r.seq === Math.max(seq, 1));
    return record?.timeNs ?? BigInt(tx.timeLastUs) * 1000n;
  }
}
