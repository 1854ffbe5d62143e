// Points older than the local journal, served from the archive: the view at P is the local view
// at B (the nearest local point after P: the end of the thinned run holding P, or the oldest
// local point) with the archived undo of every transaction in (P, B] laid over it, newest to
// oldest, and the records at or before P of the archived transaction holding P+1. The objects
// needed are fetched into a bounded cache (DATA/archive-cache, least recently used out first,
// objects open views read never) as one redo and one undo file per transaction, so the view
// code reads them like the journal's own files.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { decodeBatch, decodeObject } from '../archive/index.js';
import { assert, rethrowIfBug, RewindError, type LogFunction } from '../core/index.js';
import { parseSealedRedo, parseUndo, type RedoRecord, type UndoExtent } from '../log/index.js';
import { FILE_MODE_PRIVATE, DIR_MODE_PRIVATE } from '../platform/index.js';
import type { History, HistoryTx } from '../views/index.js';
import type { Archiver } from './archiving.js';
import type { ArchiveTxRow, Catalog, TxRow } from './catalog.js';
import type { StoredHistory } from './stored-history.js';

/** What serving a point from the archive takes: the transactions, their objects, the bytes. */
export interface OldPointPlan {
  seq: number;
  /** The local point the archived undo is laid over. */
  anchorSeq: number;
  txs: ArchiveTxRow[];
  objects: { key: string; storedBytes: number; cached: boolean }[];
  /** Stored bytes of the objects not in the cache yet. */
  fetchBytes: number;
}

export interface FetchProgress {
  done: number;
  total: number;
  key: string;
  bytes: number;
}

interface CachedObject {
  dir: string;
  bytes: number;
  usedAtMs: number;
  /** Views reading it: never evicted while any does. */
  pins: number;
}

/** Where the local history begins and how it is thinned (PointResolver and the catalog). */
export interface LocalStart {
  historyStart(): number | undefined;
  txContaining(seq: number): TxRow | undefined;
}

export class OldPoints {
  private readonly catalog: Catalog;
  private readonly archiver: Archiver;
  private readonly local: LocalStart;
  private readonly dir: string;
  private readonly cacheBytesMax: number;
  private readonly log: LogFunction;
  private readonly cached = new Map<string, CachedObject>();
  private fetching: Promise<void> = Promise.resolve();

  constructor(options: {
    catalog: Catalog;
    archiver: Archiver;
    local: LocalStart;
    dir: string;
    cacheBytesMax: number;
    log: LogFunction;
  }) {
    this.catalog = options.catalog;
    this.archiver = options.archiver;
    this.local = options.local;
    this.dir = options.dir;
    this.cacheBytesMax = options.cacheBytesMax;
    this.log = options.log;
    // A cache: what a previous run left is not trusted, and fetched again when needed.
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true, mode: DIR_MODE_PRIVATE });
  }

  /** The local point after `seq` that serves it, when the local journal cannot serve it itself. */
  anchorOf(seq: number): number | undefined {
    const start = this.local.historyStart();
    if (start === undefined) return undefined;
    if (seq < start) return start;
    const tx = this.local.txContaining(seq);
    if (tx && tx.kind === 'merged' && seq > tx.seqFirst - 1 && seq < tx.seqLast) return tx.seqLast;
    return undefined;
  }

  /**
   * The plan for point `seq` the local journal cannot serve, or why the archive cannot either
   * (undefined, with the reason).
   */
  plan(seq: number): { plan: OldPointPlan } | { refused: string } {
    const anchorSeq = this.anchorOf(seq);
    if (anchorSeq === undefined) return { refused: 'the local journal serves it' };
    const txs = this.catalog.archiveTxsBetweenSeqs(seq + 1, anchorSeq);
    const first = txs[0];
    const last = txs[txs.length - 1];
    if (!first || !last || first.seqFirst > seq + 1 || last.seqLast !== anchorSeq) {
      return { refused: this.coverage() };
    }
    for (let i = 1; i < txs.length; i++) {
      if ((txs[i] as ArchiveTxRow).seqFirst !== (txs[i - 1] as ArchiveTxRow).seqLast + 1)
        return { refused: this.coverage() };
    }
    if (first.kind === 'resync' || (first.kind === 'resync-end' && seq !== first.seqLast)) {
      if (seq >= first.seqFirst)
        return { refused: `seq ${seq} lies inside a resync, which has no per-write history` };
    }
    const keys = [...new Set(txs.map((tx) => tx.objectKey))];
    const objects = keys.map((key) => ({
      key,
      storedBytes: this.catalog.archiveObject(key)?.storedBytes ?? 0,
      cached: this.cached.has(key),
    }));
    const fetchBytes = objects.reduce((sum, o) => sum + (o.cached ? 0 : o.storedBytes), 0);
    return { plan: { seq, anchorSeq, txs, objects, fetchBytes } };
  }

  /** What the archive holds, for refusals: "the archive keeps seqs A..B". */
  coverage(): string {
    const first = this.catalog.firstArchivedTx();
    const last = this.catalog.lastArchivedTx();
    if (!first || !last) return 'the archive holds nothing yet';
    return `the archive keeps per-write history of seqs ${first.seqFirst - 1}..${last.seqLast} (with gaps where history was dropped before it was archived)`;
  }

  /**
   * Fetches the objects of `plan` not cached yet (one at a time), evicting the least recently
   * used unpinned objects beyond the bound. A store error (REWIND_ARCHIVE_UNAVAILABLE) leaves
   * the cache as it was, with nothing half written.
   */
  async fetch(plan: OldPointPlan, onProgress?: (progress: FetchProgress) => void): Promise<void> {
    // One fetch at a time; a failed one is its caller's error, and the next one still runs.
    const run = this.fetching.then(() => this.fetchNow(plan, onProgress));
    this.fetching = run.catch((error: unknown) => {
      rethrowIfBug(error);
    });
    await run;
  }

  private async fetchNow(
    plan: OldPointPlan,
    onProgress?: (progress: FetchProgress) => void,
  ): Promise<void> {
    const missing = plan.objects.filter((o) => !this.cached.has(o.key));
    let bytes = 0;
    for (const [i, object] of missing.entries()) {
      if (this.cached.has(object.key)) continue;
      this.archiver.counted('get');
      const stored = await this.archiver.store.get(object.key);
      bytes += stored.length;
      const plain = decodeObject(stored, {
        name: object.key,
        ...(this.archiver.key ? { key: this.archiver.key } : {}),
      });
      const entries = decodeBatch(plain, object.key);
      const dir = path.join(this.dir, crypto.createHash('sha256').update(object.key).digest('hex'));
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(`${dir}.tmp`, { recursive: true, mode: DIR_MODE_PRIVATE });
      for (const entry of entries) {
        const write = (name: string, offset: number, length: number): void => {
          fs.writeFileSync(path.join(`${dir}.tmp`, name), plain.subarray(offset, offset + length), {
            mode: FILE_MODE_PRIVATE,
          });
        };
        write(`${entry.idx}.redo`, entry.redoOffset, entry.redoLength);
        write(`${entry.idx}.undo`, entry.undoOffset, entry.undoLength);
      }
      fs.renameSync(`${dir}.tmp`, dir);
      this.cached.set(object.key, { dir, bytes: plain.length, usedAtMs: Date.now(), pins: 0 });
      onProgress?.({ done: i + 1, total: missing.length, key: object.key, bytes });
      this.log(
        'info',
        `archive: fetched ${object.key} (${stored.length} bytes) for seq ${plan.seq}`,
      );
    }
    this.evict(new Set(plan.objects.map((o) => o.key)));
  }

  private evict(keep: ReadonlySet<string>): void {
    let total = [...this.cached.values()].reduce((sum, c) => sum + c.bytes, 0);
    const order = [...this.cached.entries()].sort((a, b) => a[1].usedAtMs - b[1].usedAtMs);
    for (const [key, object] of order) {
      if (total <= this.cacheBytesMax) break;
      if (object.pins > 0 || keep.has(key)) continue;
      fs.rmSync(object.dir, { recursive: true, force: true });
      this.cached.delete(key);
      total -= object.bytes;
    }
  }

  /** The history a view at `plan.seq` reads; pins its objects until `release()`. */
  history(plan: OldPointPlan, local: StoredHistory): ArchivedHistory {
    const files = new Map<number, { redo: string; undo: string }>();
    for (const tx of plan.txs) {
      const object = this.cached.get(tx.objectKey);
      assert(object !== undefined, 'an old point is built from fetched objects');
      object.usedAtMs = Date.now();
      files.set(tx.idx, {
        redo: path.join(object.dir, `${tx.idx}.redo`),
        undo: path.join(object.dir, `${tx.idx}.undo`),
      });
    }
    const keys = [...new Set(plan.txs.map((tx) => tx.objectKey))];
    for (const key of keys) (this.cached.get(key) as CachedObject).pins += 1;
    let released = false;
    return new ArchivedHistory(plan, local, files, () => {
      if (released) return;
      released = true;
      for (const key of keys) {
        const object = this.cached.get(key);
        if (object) object.pins -= 1;
      }
      this.evict(new Set());
    });
  }

  /** The objects the cache holds and their bytes. */
  cacheStatus(): { objects: number; bytes: number; bytesMax: number } {
    const objects = [...this.cached.values()];
    return {
      objects: objects.length,
      bytes: objects.reduce((sum, c) => sum + c.bytes, 0),
      bytesMax: this.cacheBytesMax,
    };
  }
}

/** The refusal of a point that neither the journal nor the archive keeps, naming both. */
export function neitherKeeps(local: RewindError, archive: string): RewindError {
  return new RewindError('REWIND_POINT_INVALID', local.message, {
    hint: `${local.hint ?? ''}${local.hint ? '; ' : ''}${archive}`,
  });
}

/**
 * The local history with archived transactions before its anchor: `txsAfter(seq)` for a seq
 * before the anchor lists the archived transactions in (seq, anchor], then the local ones after
 * the anchor; files of archived transactions are the cache's.
 */
export class ArchivedHistory implements History {
  readonly plan: OldPointPlan;
  private readonly local: StoredHistory;
  private readonly files: ReadonlyMap<number, { redo: string; undo: string }>;
  private readonly fds = new Map<string, number>();
  private readonly indexes = new Map<number, { records: RedoRecord[]; undo: UndoExtent[] }>();
  readonly release: () => void;

  constructor(
    plan: OldPointPlan,
    local: StoredHistory,
    files: ReadonlyMap<number, { redo: string; undo: string }>,
    release: () => void,
  ) {
    this.plan = plan;
    this.local = local;
    this.files = files;
    this.release = () => {
      for (const fd of this.fds.values()) fs.closeSync(fd);
      this.fds.clear();
      release();
    };
  }

  get volumeCount(): number {
    return this.local.volumeCount;
  }

  get replicas(): History['replicas'] {
    return this.local.replicas;
  }

  volumeSize(volume: number): number {
    return this.local.volumeSize(volume);
  }

  seqCommitted(): number {
    return this.local.seqCommitted();
  }

  txsAfter(seq: number, upTo?: number): HistoryTx[] {
    const anchor = this.plan.anchorSeq;
    if (seq >= anchor) return this.local.txsAfter(seq, upTo);
    const archived = this.plan.txs
      .filter((tx) => tx.seqLast > seq && (upTo === undefined || tx.seqFirst <= upTo))
      .map((tx) => ({ idx: tx.idx, seqFirst: tx.seqFirst, seqLast: tx.seqLast }));
    if (upTo !== undefined && upTo <= anchor) return archived;
    return [...archived, ...this.local.txsAfter(anchor, upTo)];
  }

  async txIndex(idx: number): Promise<{ records: RedoRecord[]; undo: UndoExtent[] }> {
    const files = this.files.get(idx);
    if (files === undefined) return this.local.txIndex(idx);
    const known = this.indexes.get(idx);
    if (known) return known;
    const volumes = this.local.volumeCount;
    const records = parseSealedRedo(fs.readFileSync(files.redo), files.redo, volumes).records;
    const undo = parseUndo(fs.readFileSync(files.undo), files.undo, volumes).extents;
    const index = { records, undo };
    this.indexes.set(idx, index);
    return index;
  }

  redoFd(idx: number): number {
    const files = this.files.get(idx);
    return files === undefined ? this.local.redoFd(idx) : this.fd(files.redo);
  }

  undoFd(idx: number): number {
    const files = this.files.get(idx);
    return files === undefined ? this.local.undoFd(idx) : this.fd(files.undo);
  }

  mappedFile(idx: number, kind: 'redo' | 'undo'): Buffer | undefined {
    return this.files.has(idx) ? undefined : this.local.mappedFile(idx, kind);
  }

  replicaFd(volume: number): number {
    return this.local.replicaFd(volume);
  }

  private fd(file: string): number {
    const known = this.fds.get(file);
    if (known !== undefined) return known;
    const fd = fs.openSync(file, 'r');
    this.fds.set(file, fd);
    return fd;
  }
}
