// Transaction files on the manager: where redo and undo segments live, open handles for view reads,
// and a bounded cache of their parsed (verified) record and extent lists.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { RewindError } from '../core/index.js';
import { parseSealedRedo, parseUndo, type RedoRecord, type UndoExtent } from '../log/index.js';

export interface TxIndex {
  records: RedoRecord[];
  undo: UndoExtent[];
}

/** Parsed transactions kept in memory, counted in records plus extents. */
const CACHE_ITEMS_MAX = 4_000_000;

export class TxFiles {
  readonly redoDir: string;
  readonly undoDir: string;
  private readonly volumeCount: () => number;
  private readonly fds = new Map<string, number>();
  private readonly cache = new Map<number, TxIndex>();
  private cachedItems = 0;

  constructor(root: string, volumeCount: () => number) {
    this.redoDir = path.join(root, 'redo');
    this.undoDir = path.join(root, 'undo');
    this.volumeCount = volumeCount;
  }

  redoPath(idx: number): string {
    return path.join(this.redoDir, `${String(idx).padStart(16, '0')}.redo`);
  }

  undoPath(idx: number): string {
    return path.join(this.undoDir, `${String(idx).padStart(16, '0')}.undo`);
  }

  /** An open read handle of a transaction file, kept for view reads. */
  fd(file: string): number {
    let fd = this.fds.get(file);
    if (fd === undefined) {
      fd = fs.openSync(file, 'r');
      this.fds.set(file, fd);
    }
    return fd;
  }

  /** The verified record and undo extent lists of a committed transaction. */
  async index(idx: number): Promise<TxIndex> {
    const cached = this.cache.get(idx);
    if (cached) {
      this.cache.delete(idx); // refresh LRU position
      this.cache.set(idx, cached);
      return cached;
    }
    const redoFile = this.redoPath(idx);
    const undoFile = this.undoPath(idx);
    const [redoBuf, undoBuf] = await Promise.all([fsp.readFile(redoFile), fsp.readFile(undoFile)]);
    const redo = parseSealedRedo(redoBuf, redoFile, this.volumeCount());
    const undo = parseUndo(undoBuf, undoFile, this.volumeCount());
    if (undo.header.segmentIndex !== idx) {
      throw new RewindError('REWIND_SEGMENT_CORRUPT', `${undoFile} belongs to transaction ${undo.header.segmentIndex}, expected ${idx}`);
    }
    const entry = { records: redo.records, undo: undo.extents };
    this.remember(idx, entry);
    return entry;
  }

  cached(idx: number): TxIndex | undefined {
    return this.cache.get(idx);
  }

  remember(idx: number, entry: TxIndex): void {
    this.cache.set(idx, entry);
    this.cachedItems += entry.records.length + entry.undo.length;
    for (const [oldIdx, old] of this.cache) {
      if (this.cachedItems <= CACHE_ITEMS_MAX || oldIdx === idx) break;
      this.cache.delete(oldIdx);
      this.cachedItems -= old.records.length + old.undo.length;
    }
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
  }
}
