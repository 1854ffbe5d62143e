// Transaction files on the manager: where redo and undo segments live, open handles for view reads,
// and a bounded cache of their verified record and extent lists in compact form (TxIndex: typed
// arrays, no object per record). Each transaction's index is also kept on disk (`index/N.idx`,
// docs/FORMATS.md), bound to the exact redo and undo files, so that after a restart a view reads a
// few bytes per record instead of re-reading and re-verifying every payload. The on-disk index is
// only a cache: written best-effort from lists that were verified (at receive, or by a full parse),
// and any index that is missing, damaged or not bound to the current files is ignored and rebuilt
// by a full, verifying parse.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { assert, rethrowIfBug, RewindError } from '../core/index.js';
import { DIR_MODE_PRIVATE, FILE_MODE_PRIVATE, mapReadOnly } from '../platform/index.js';
import {
  parseSealedRedo,
  parseSegmentFileName,
  parseUndo,
  REDO_HEADER_BYTES,
  segmentFileName,
  TRAILER_BYTES,
  UNDO_HEADER_BYTES,
  type RedoRecord,
  type UndoExtent,
} from '../log/index.js';
import { TX_INDEX_BINDING_BYTES, TxIndex } from '../views/index.js';

export { TxIndex };

/**
 * Transaction files kept mapped (each is one kernel mapping; Linux allows 65,530 per process by
 * default). A file dropped from this set is unmapped when its Buffer is garbage-collected.
 */
const MAPPED_FILES_MAX = 4096;

/** Parsed transactions kept in memory, counted in records plus extents (about 30 bytes each). */
const CACHE_ITEMS_MAX = 4_000_000;

/** Which files a transaction has: a redo (not when merged) and the undo of a generation. */
export interface TxLayout {
  hasRedo: boolean;
  undoGen: number;
}

const DEFAULT_LAYOUT: TxLayout = { hasRedo: true, undoGen: 0 };

export class TxFiles {
  readonly redoDir: string;
  readonly undoDir: string;
  readonly indexDir: string;
  private readonly volumeCount: () => number;
  private readonly fds = new Map<string, number>();
  /**
   * Mapped files by `2 * idx` (redo) and `2 * idx + 1` (undo), least recently used first; null:
   * pread it.
   */
  private readonly maps = new Map<number, Buffer | null>();
  private readonly cache = new Map<number, TxIndex>();
  private cachedItems = 0;
  /**
   * Transactions whose files differ from the default (a redo, and the undo of generation 0): merged
   * ones, with no redo and a later undo generation. Set from the catalog.
   */
  private readonly layouts = new Map<number, TxLayout>();

  constructor(root: string, volumeCount: () => number) {
    this.redoDir = path.join(root, 'redo');
    this.undoDir = path.join(root, 'undo');
    this.indexDir = path.join(root, 'index');
    this.volumeCount = volumeCount;
  }

  /** Records that transaction `idx` is merged: no redo, its undo of generation `undoGen`. */
  setLayout(idx: number, layout: TxLayout): void {
    this.layouts.set(idx, layout);
  }

  private layoutOf(idx: number): TxLayout {
    return this.layouts.get(idx) ?? DEFAULT_LAYOUT;
  }

  hasRedo(idx: number): boolean {
    return this.layoutOf(idx).hasRedo;
  }

  redoPath(idx: number): string {
    assert(this.layoutOf(idx).hasRedo, `transaction ${idx} has a redo file`);
    return path.join(this.redoDir, segmentFileName(idx, 'redo'));
  }

  undoPath(idx: number, undoGen = this.layoutOf(idx).undoGen): string {
    return path.join(this.undoDir, segmentFileName(idx, 'undo', undoGen));
  }

  indexPath(idx: number, undoGen = this.layoutOf(idx).undoGen): string {
    return path.join(this.indexDir, segmentFileName(idx, 'idx', undoGen));
  }

  /**
   * Forgets every handle, mapping and cached index of transaction `idx` (its files are about to be
   * replaced or removed). Mappings already handed out stay valid: Linux keeps an unlinked file's
   * pages for as long as they are mapped.
   */
  evict(idx: number): void {
    for (const file of this.layoutOf(idx).hasRedo ? [this.redoPath(idx)] : []) this.closeFd(file);
    this.closeFd(this.undoPath(idx));
    this.maps.delete(2 * idx);
    this.maps.delete(2 * idx + 1);
    const cached = this.cache.get(idx);
    if (cached) {
      this.cache.delete(idx);
      this.cachedItems -= cached.items;
    }
    this.layouts.delete(idx);
  }

  private closeFd(file: string): void {
    const fd = this.fds.get(file);
    if (fd === undefined) return;
    this.fds.delete(file);
    fs.closeSync(fd);
  }

  /**
   * Removes the files of transactions without a committed row, and temp files: left by a crash
   * before the row was written (the agent still holds the segment and resends it), or, for an index
   * file, a stale cache entry.
   */
  async removeUncataloged(
    committed: readonly { idx: number; kind: string; undoGen: number }[],
  ): Promise<void> {
    const rows = new Map(committed.map((row) => [row.idx, row]));
    const kept = (dir: string, name: string): boolean => {
      const file = parseSegmentFileName(name);
      const row = file && rows.get(file.index);
      if (!file || !row) return false;
      if (dir === this.redoDir) return row.kind !== 'merged' && file.generation === 0;
      return file.generation === row.undoGen; // an undo or index of an older (or unswapped) merge
    };
    for (const dir of [this.redoDir, this.undoDir, this.indexDir]) {
      if (!fs.existsSync(dir)) continue; // the index dir is made on first use
      for (const name of await fsp.readdir(dir)) {
        if (!kept(dir, name)) await fsp.rm(path.join(dir, name), { force: true });
      }
    }
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

  /**
   * A committed transaction's redo or undo file mapped read-only (see mapReadOnly), or undefined
   * when it cannot be mapped: then read it through fd(). Committed transaction files never change,
   * so a mapping stays valid for as long as anyone holds it.
   */
  mapped(idx: number, kind: 'redo' | 'undo'): Buffer | undefined {
    const key = kind === 'redo' ? 2 * idx : 2 * idx + 1;
    let map = this.maps.get(key);
    if (map !== undefined) {
      this.maps.delete(key); // refresh LRU position
    } else {
      map = mapReadOnly(this.fd(kind === 'redo' ? this.redoPath(idx) : this.undoPath(idx))) ?? null;
      if (this.maps.size >= MAPPED_FILES_MAX)
        this.maps.delete(this.maps.keys().next().value as number);
    }
    this.maps.set(key, map);
    return map ?? undefined;
  }

  /** Loads that found no usable index file and parsed the transaction's files in full. */
  fullParses = 0;

  /**
   * The verified record and undo extent lists of a committed transaction: from the cache, else from
   * its index file when that is intact and bound to the current redo and undo files, else from a
   * full parse of both files (which then writes the index file).
   */
  async index(idx: number): Promise<TxIndex> {
    const cached = this.cache.get(idx);
    if (cached) {
      this.cache.delete(idx); // refresh LRU position
      this.cache.set(idx, cached);
      return cached;
    }
    const redoFile = this.hasRedo(idx) ? this.redoPath(idx) : undefined;
    const undoFile = this.undoPath(idx);
    const indexFile = this.indexPath(idx);
    let binding: Buffer | undefined;
    try {
      binding = readBinding(redoFile, undoFile);
      const stored = TxIndex.decode(
        await fsp.readFile(indexFile),
        indexFile,
        idx,
        binding,
        this.volumeCount(),
      );
      this.cacheEntry(idx, stored);
      return stored;
    } catch (error) {
      rethrowIfBug(error);
      // Missing, damaged or stale: the full parse below verifies everything and says what is wrong.
    }
    this.fullParses += 1;
    const [redoBuf, undoBuf] = await Promise.all([
      redoFile === undefined ? Promise.resolve(undefined) : fsp.readFile(redoFile),
      fsp.readFile(undoFile),
    ]);
    const records =
      redoBuf === undefined
        ? []
        : parseSealedRedo(redoBuf, redoFile as string, this.volumeCount()).records;
    const undo = parseUndo(undoBuf, undoFile, this.volumeCount());
    if (undo.header.segmentIndex !== idx) {
      throw new RewindError(
        'REWIND_SEGMENT_CORRUPT',
        `${undoFile} belongs to transaction ${undo.header.segmentIndex}, expected ${idx}`,
      );
    }
    const entry = TxIndex.fromLists(records, undo.extents);
    // The binding of the buffers just verified, not of a second read of the files.
    this.store(idx, entry, Buffer.concat([bindingOf(redoBuf), bindingOf(undoBuf)]));
    this.cacheEntry(idx, entry);
    return entry;
  }

  cached(idx: number): TxIndex | undefined {
    return this.cache.get(idx);
  }

  /**
   * Caches the verified lists of a transaction whose redo and undo files are in place (the apply
   * path calls this once the undo is durable) and writes its index file.
   */
  remember(
    idx: number,
    entry: { records: readonly RedoRecord[]; undo: readonly UndoExtent[] } | TxIndex,
  ): void {
    const index = entry instanceof TxIndex ? entry : TxIndex.fromLists(entry.records, entry.undo);
    try {
      const redoFile = this.hasRedo(idx) ? this.redoPath(idx) : undefined;
      this.store(idx, index, readBinding(redoFile, this.undoPath(idx)));
    } catch (error) {
      rethrowIfBug(error);
      // Best-effort: without an index file the next cold load parses the files in full.
    }
    this.cacheEntry(idx, index);
  }

  private cacheEntry(idx: number, entry: TxIndex): void {
    const old = this.cache.get(idx);
    if (old) {
      this.cache.delete(idx);
      this.cachedItems -= old.items;
    }
    this.cache.set(idx, entry);
    this.cachedItems += entry.items;
    for (const [oldIdx, oldEntry] of this.cache) {
      if (this.cachedItems <= CACHE_ITEMS_MAX || oldIdx === idx) break;
      this.cache.delete(oldIdx);
      this.cachedItems -= oldEntry.items;
    }
  }

  /**
   * Writes the index file (synchronously: a few bytes per record; a failure only costs speed
   * later).
   */
  private store(idx: number, index: TxIndex, binding: Buffer): void {
    storeIndex(this.indexPath(idx), idx, index, binding);
  }

  close(): void {
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    this.maps.clear();
  }
}

/** Writes an index file, best effort (a torn or missing one only means a full parse later). */
function storeIndex(file: string, idx: number, index: TxIndex, binding: Buffer): void {
  const bytes = index.encode(idx, binding);
  try {
    try {
      fs.writeFileSync(file, bytes, { mode: FILE_MODE_PRIVATE });
    } catch (error) {
      rethrowIfBug(error);
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: DIR_MODE_PRIVATE }); // first one
      fs.writeFileSync(file, bytes, { mode: FILE_MODE_PRIVATE });
    }
  } catch (error) {
    rethrowIfBug(error);
    // a torn file would be refused anyway; do not keep its space
    fs.rmSync(file, { force: true });
  }
}

/**
 * The index file of transaction `idx` from its record and undo lists, bound to its files as they
 * are now (a retention merge writes its merged undo's index where it built it, off the main
 * thread).
 */
export function writeIndexFile(
  file: string,
  idx: number,
  redoFile: string | undefined,
  undoFile: string,
  lists: { records: readonly RedoRecord[]; undo: readonly UndoExtent[] },
): void {
  let binding: Buffer;
  try {
    binding = readBinding(redoFile, undoFile);
  } catch (error) {
    rethrowIfBug(error);
    return; // no index: the files are parsed in full when first needed
  }
  storeIndex(file, idx, TxIndex.fromLists(lists.records, lists.undo), binding);
}

/**
 * Header and trailer of a whole segment file in memory (redo and undo share both sizes); zeroes for
 * a merged transaction's redo, which it does not have.
 */
function bindingOf(buf: Buffer | undefined): Buffer {
  if (buf === undefined) return Buffer.alloc(REDO_HEADER_BYTES + TRAILER_BYTES);
  return Buffer.concat([
    buf.subarray(0, REDO_HEADER_BYTES),
    buf.subarray(buf.length - TRAILER_BYTES),
  ]);
}

/** Header and trailer of the redo file, then of the undo file, as they are on disk now. */
function readBinding(redoFile: string | undefined, undoFile: string): Buffer {
  const binding = Buffer.alloc(TX_INDEX_BINDING_BYTES);
  let at = redoFile === undefined ? REDO_HEADER_BYTES + TRAILER_BYTES : 0;
  for (const file of redoFile === undefined ? [undoFile] : [redoFile, undoFile]) {
    const fd = fs.openSync(file, 'r');
    try {
      const size = fs.fstatSync(fd).size;
      if (size < UNDO_HEADER_BYTES + TRAILER_BYTES)
        throw new RewindError(
          'REWIND_SEGMENT_TRUNCATED',
          `${file} is too short to be a sealed segment`,
        );
      readExactly(fd, binding, at, REDO_HEADER_BYTES, 0);
      readExactly(fd, binding, at + REDO_HEADER_BYTES, TRAILER_BYTES, size - TRAILER_BYTES);
    } finally {
      fs.closeSync(fd);
    }
    at += REDO_HEADER_BYTES + TRAILER_BYTES;
  }
  return binding;
}

function readExactly(
  fd: number,
  target: Buffer,
  targetOffset: number,
  length: number,
  position: number,
): void {
  let done = 0;
  while (done < length) {
    const n = fs.readSync(fd, target, targetOffset + done, length - done, position + done);
    if (n === 0) throw new RewindError('REWIND_SEGMENT_TRUNCATED', 'segment file ended early');
    done += n;
  }
}
