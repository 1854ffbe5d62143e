// Reading the pieces of a view read that lie in transaction files (redo payloads, undo extents),
// which never change once committed: a plan of groups (pieces of one file close together in it).
// A group of a mapped file is copied from the mapping; otherwise it is read with one pread, with
// read-ahead windows for files read sequentially.
import { preadFully } from '../platform/index.js';

/** A group: window key, fd (-1 when mapped), file span start and end, first piece, piece count. */
export const GROUP_FIELDS = 6;
/** A piece: file offset, length, offset in the target. */
export const PIECE_FIELDS = 3;

export interface FileReadPlan {
  groupCount: number;
  groups: Float64Array;
  /** Per group: the mapped file to copy from, or undefined: read it from the group's fd. */
  mapped: (Buffer | undefined)[];
  pieceCount: number;
  pieces: Float64Array;
}

/** A plan in arrays that grow as groups are added (one is reused for every read). */
export class PlanBuffer implements FileReadPlan {
  groupCount = 0;
  pieceCount = 0;
  groups: Float64Array;
  pieces: Float64Array;
  readonly mapped: (Buffer | undefined)[] = [];

  constructor(pieces: number) {
    this.groups = new Float64Array(Math.max(1, pieces) * GROUP_FIELDS);
    this.pieces = new Float64Array(Math.max(1, pieces) * PIECE_FIELDS);
  }

  /** Room for `more` pieces (and as many groups) after the current ones. */
  reserve(more: number): void {
    const pieces = this.pieceCount + more;
    if (this.pieces.length < pieces * PIECE_FIELDS) {
      const grown = new Float64Array(
        Math.max(pieces, (this.pieces.length / PIECE_FIELDS) * 2) * PIECE_FIELDS,
      );
      grown.set(this.pieces.subarray(0, this.pieceCount * PIECE_FIELDS));
      this.pieces = grown;
    }
    const groups = this.groupCount + more;
    if (this.groups.length < groups * GROUP_FIELDS) {
      const grown = new Float64Array(
        Math.max(groups, (this.groups.length / GROUP_FIELDS) * 2) * GROUP_FIELDS,
      );
      grown.set(this.groups.subarray(0, this.groupCount * GROUP_FIELDS));
      this.groups = grown;
    }
  }
}

/** Read-ahead of a transaction file read sequentially: first and largest window. */
const READ_AHEAD_MIN_BYTES = 32 * 1024;
const READ_AHEAD_MAX_BYTES = 128 * 1024;
/**
 * A read of a file starting at most this far after where the last one ended counts as sequential.
 */
const SEQUENTIAL_SKIP_BYTES = 256 * 1024;
/**
 * The shared scratch buffer for coalesced reads is kept up to this size; larger reads get their
 * own.
 */
const SCRATCH_KEEP_BYTES = 8 * 1024 * 1024;

interface Window {
  start: number;
  length: number;
  bytes: Buffer;
  /** The fetch count when it was last used. */
  used: number;
}

/**
 * Read-ahead per file for reading a view sequentially: a 1 MiB read of a view whose history is
 * made of small writes needs a few bytes from each of many transaction files, each continuing
 * where the previous read of that file stopped. Such a file gets a window read ahead (doubling up
 * to READ_AHEAD_MAX_BYTES) that serves the next reads from memory, once two reads in a row were
 * sequential. Transaction files never change, so a window stays valid; the replica, which does
 * change, is never read ahead.
 *
 * A sequential read of a view cycles through its files, so evicting the least recently used
 * window would evict the one needed next, every time, once the windows outgrow the budget. So a
 * window is evicted only when it has gone unused for two rounds of all the files read; when none
 * is, the file is read directly (one pread per group, as without read-ahead).
 */
export class ReadAhead {
  private readonly totalBytesMax: number;
  /**
   * By key: the file offset where the last read ended, the current window size, and how many reads
   * in a row were sequential.
   */
  private readonly last = new Map<number, { expected: number; size: number; streak: number }>();
  /** Windows by key, least recently used first. */
  private readonly windows = new Map<number, Window>();
  private bytes = 0;
  private fetches = 0;
  private fillCount = 0;

  constructor(totalBytesMax: number) {
    this.totalBytesMax = totalBytesMax;
  }

  /** Bytes held in windows. */
  get windowBytes(): number {
    return this.bytes;
  }

  /** Windows read so far (each one pread). */
  get fills(): number {
    return this.fillCount;
  }

  /** A window holding bytes [start, end) of the file, or undefined: read them directly. */
  fetch(
    key: number,
    fd: number,
    start: number,
    end: number,
  ): { start: number; bytes: Buffer } | undefined {
    const now = ++this.fetches;
    let last = this.last.get(key);
    if (last === undefined) {
      // only a hint: forgetting it costs one direct read
      if (this.last.size >= 65536) this.last.clear();
      last = { expected: -1, size: 0, streak: 0 };
      this.last.set(key, last);
    }
    const expected = last.expected;
    last.expected = end;
    const window = this.windows.get(key);
    if (window !== undefined && start >= window.start && end <= window.start + window.length) {
      window.used = now;
      this.windows.delete(key);
      this.windows.set(key, window);
      return window;
    }
    if (expected < 0 || start < expected || start - expected > SEQUENTIAL_SKIP_BYTES) {
      last.size = 0;
      last.streak = 0;
      return undefined;
    }
    last.streak += 1;
    // twice in a row: a random read lands near the last one now and then
    if (last.streak < 2) return undefined;
    const size = Math.min(READ_AHEAD_MAX_BYTES, Math.max(READ_AHEAD_MIN_BYTES, 2 * last.size));
    const length = Math.max(size, end - start);
    if (length > READ_AHEAD_MAX_BYTES) return undefined; // as large as a window: read it directly
    let bytes = window !== undefined && window.bytes.length >= length ? window.bytes : undefined;
    if (bytes === undefined) {
      const freed = window?.bytes.length ?? 0;
      if (!this.makeRoom(length - freed, key, now)) return undefined;
      if (window !== undefined) {
        this.windows.delete(key);
        this.bytes -= freed;
      }
      bytes = Buffer.allocUnsafeSlow(length);
      this.bytes += length;
    } else {
      this.windows.delete(key);
    }
    last.size = size;
    this.fillCount += 1;
    preadFully(fd, bytes, 0, length, start);
    const filled: Window = { start, length, bytes, used: now };
    this.windows.set(key, filled);
    return filled;
  }

  /**
   * Evicts stale windows (not `key`'s) until `more` bytes fit; false when they do not. Stale: not
   * used for two rounds of every file read (fetches of other files in between).
   */
  private makeRoom(more: number, key: number, now: number): boolean {
    const staleAfter = 2 * Math.max(this.windows.size, this.last.size);
    for (const [oldKey, old] of this.windows) {
      if (this.bytes + more <= this.totalBytesMax) break;
      if (oldKey === key) continue;
      if (now - old.used <= staleAfter) return false; // the least recently used is still in use
      this.windows.delete(oldKey);
      this.bytes -= old.bytes.length;
    }
    return this.bytes + more <= this.totalBytesMax;
  }
}

let scratch = Buffer.allocUnsafeSlow(1024 * 1024);

function scratchBuffer(bytes: number): Buffer {
  if (bytes <= scratch.length) return scratch;
  if (bytes > SCRATCH_KEEP_BYTES) return Buffer.allocUnsafeSlow(bytes);
  scratch = Buffer.allocUnsafeSlow(Math.min(SCRATCH_KEEP_BYTES, 2 ** Math.ceil(Math.log2(bytes))));
  return scratch;
}

/**
 * Reads every piece of `plan` into `target`: from a read-ahead window, one pread, or one pread of
 * the group's span.
 */
export function runFileReads(target: Buffer, plan: FileReadPlan, readAhead: ReadAhead): void {
  const groups = plan.groups;
  const pieces = plan.pieces;
  for (let g = 0; g < plan.groupCount; g++) {
    const at = g * GROUP_FIELDS;
    const key = groups[at] as number;
    const fd = groups[at + 1] as number;
    const spanStart = groups[at + 2] as number;
    const spanEnd = groups[at + 3] as number;
    const first = groups[at + 4] as number;
    const stop = first + (groups[at + 5] as number);
    const mapped = plan.mapped[g];
    if (mapped !== undefined) {
      plan.mapped[g] = undefined; // the plan is reused: hold no mapping past this read
      const buffer = mapped.buffer;
      const base = mapped.byteOffset;
      for (let p = first; p < stop; p++) {
        target.set(
          new Uint8Array(
            buffer,
            base + (pieces[p * PIECE_FIELDS] as number),
            pieces[p * PIECE_FIELDS + 1],
          ),
          pieces[p * PIECE_FIELDS + 2],
        );
      }
      continue;
    }
    const window = readAhead.fetch(key, fd, spanStart, spanEnd);
    if (window !== undefined) {
      // A typed-array set from a view is the cheapest copy Node offers for many small pieces.
      const buffer = window.bytes.buffer;
      const base = window.bytes.byteOffset - window.start;
      for (let p = first; p < stop; p++) {
        target.set(
          new Uint8Array(
            buffer,
            base + (pieces[p * PIECE_FIELDS] as number),
            pieces[p * PIECE_FIELDS + 1],
          ),
          pieces[p * PIECE_FIELDS + 2],
        );
      }
    } else if (stop - first === 1) {
      preadFully(
        fd,
        target,
        pieces[first * PIECE_FIELDS + 2] as number,
        spanEnd - spanStart,
        spanStart,
      );
    } else {
      const span = scratchBuffer(spanEnd - spanStart);
      preadFully(fd, span, 0, spanEnd - spanStart, spanStart);
      const buffer = span.buffer;
      const base = span.byteOffset - spanStart;
      for (let p = first; p < stop; p++) {
        target.set(
          new Uint8Array(
            buffer,
            base + (pieces[p * PIECE_FIELDS] as number),
            pieces[p * PIECE_FIELDS + 1],
          ),
          pieces[p * PIECE_FIELDS + 2],
        );
      }
    }
  }
}
