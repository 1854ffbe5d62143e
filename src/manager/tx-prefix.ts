// Running totals over the committed transactions that hold writes, in index order: the capture
// times of each one's first and last write, its seqs, and the payload bytes up to and including
// it. Capture time follows seq order, so binary search finds where a moment falls; the timeline
// counts the writes and bytes of any window from two lookups per bucket boundary instead of
// reading the transaction rows inside it. Loaded from the catalog once, a chunk of rows per
// event-loop turn, then kept up by each commit.
import { assert } from '../core/index.js';
import { RECORD_HEADER_BYTES, REDO_HEADER_BYTES, TRAILER_BYTES } from '../log/index.js';
import type { TxRow } from './catalog.js';

export type TxSummary = Pick<
  TxRow,
  | 'idx'
  | 'kind'
  | 'timeFirstUs'
  | 'timeLastUs'
  | 'seqFirst'
  | 'seqLast'
  | 'recordCount'
  | 'redoBytes'
>;

/** Rows read from the catalog per event-loop turn while loading (about 10 ms of work). */
const LOAD_CHUNK_ROWS = 2000;
/** Room for this many transactions at first; it doubles as needed. */
const CAPACITY_INITIAL = 1024;

/**
 * A transaction's payload bytes: its redo file less the header, trailer and record headers; a
 * thinned (merged) one has no redo left, so its bytes are not known any more (0).
 */
export function payloadBytes(tx: Pick<TxRow, 'kind' | 'redoBytes' | 'recordCount'>): number {
  if (tx.kind === 'merged') return 0;
  return tx.redoBytes - REDO_HEADER_BYTES - TRAILER_BYTES - RECORD_HEADER_BYTES * tx.recordCount;
}

export class TxPrefix {
  /** Entries in use; the arrays may be longer. */
  count = 0;
  private idx = new Float64Array(CAPACITY_INITIAL);
  private firstUs = new Float64Array(CAPACITY_INITIAL);
  private lastUs = new Float64Array(CAPACITY_INITIAL);
  private seqFirst = new Float64Array(CAPACITY_INITIAL);
  private seqLast = new Float64Array(CAPACITY_INITIAL);
  /** Payload bytes of every transaction up to and including this one. */
  private bytesThrough = new Float64Array(CAPACITY_INITIAL);
  /** 1 for a thinned (merged) transaction: its writes' own times are gone. */
  private thinned = new Uint8Array(CAPACITY_INITIAL);

  /** Reads every committed transaction with writes, `read` giving the next rows after an index. */
  static async load(read: (afterIdx: number, limit: number) => TxSummary[]): Promise<TxPrefix> {
    const prefix = new TxPrefix();
    for (;;) {
      const rows = read(prefix.lastIdx, LOAD_CHUNK_ROWS);
      for (const row of rows) prefix.append(row);
      if (rows.length < LOAD_CHUNK_ROWS) return prefix;
      // Let the write path and the apply queue run between chunks of a long history.
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  get lastIdx(): number {
    return this.count === 0 ? 0 : (this.idx[this.count - 1] as number);
  }

  /** Adds the next committed transaction (ignored without writes, or when already here). */
  append(tx: TxSummary): void {
    if ((tx.recordCount === 0 && tx.kind !== 'merged') || tx.idx <= this.lastIdx) return;
    if (this.count === this.idx.length) this.grow();
    const at = this.count;
    const before = at === 0 ? 0 : (this.bytesThrough[at - 1] as number);
    this.idx[at] = tx.idx;
    this.firstUs[at] = tx.timeFirstUs;
    this.lastUs[at] = tx.timeLastUs;
    this.seqFirst[at] = tx.seqFirst;
    this.seqLast[at] = tx.seqLast;
    this.bytesThrough[at] = before + payloadBytes(tx);
    this.thinned[at] = tx.kind === 'merged' ? 1 : 0;
    this.count += 1;
  }

  /** The position of the first transaction whose last write was captured at or after `us`. */
  endingAtOrAfter(us: number): number {
    let low = 0;
    let high = this.count;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((this.lastUs[middle] as number) < us) low = middle + 1;
      else high = middle;
    }
    return low;
  }

  /** The transaction at `position`, with the writes and payload bytes before it. */
  at(position: number): TxSummary & {
    seqBefore: number;
    bytesBefore: number;
    bytes: number;
    thinned: boolean;
  } {
    assert(position >= 0 && position < this.count, 'a prefix position in use');
    const bytesBefore = position === 0 ? 0 : (this.bytesThrough[position - 1] as number);
    const seqFirst = this.seqFirst[position] as number;
    const seqLast = this.seqLast[position] as number;
    const thinned = this.thinned[position] === 1;
    return {
      idx: this.idx[position] as number,
      kind: thinned ? 'merged' : 'redo', // thinned or not is all the timeline asks
      timeFirstUs: this.firstUs[position] as number,
      timeLastUs: this.lastUs[position] as number,
      seqFirst,
      seqLast,
      recordCount: seqLast - seqFirst + 1,
      redoBytes: 0, // not kept: `bytes` is the payload
      seqBefore: seqFirst - 1,
      bytesBefore,
      bytes: (this.bytesThrough[position] as number) - bytesBefore,
      thinned,
    };
  }

  /**
   * The last seq captured before the transaction at `position` and the payload bytes up to it:
   * everything before it, or (position = count) everything there is.
   */
  totalsBefore(position: number): { seq: number; bytes: number } {
    if (position < this.count) {
      const tx = this.at(position);
      return { seq: tx.seqBefore, bytes: tx.bytesBefore };
    }
    if (this.count === 0) return { seq: 0, bytes: 0 };
    return {
      seq: this.seqLast[this.count - 1] as number,
      bytes: this.bytesThrough[this.count - 1] as number,
    };
  }

  private grow(): void {
    const bigger = (from: Float64Array<ArrayBuffer>): Float64Array<ArrayBuffer> => {
      const to = new Float64Array(from.length * 2);
      to.set(from);
      return to;
    };
    this.idx = bigger(this.idx);
    this.firstUs = bigger(this.firstUs);
    this.lastUs = bigger(this.lastUs);
    this.seqFirst = bigger(this.seqFirst);
    this.seqLast = bigger(this.seqLast);
    this.bytesThrough = bigger(this.bytesThrough);
    const thinned = new Uint8Array(this.thinned.length * 2);
    thinned.set(this.thinned);
    this.thinned = thinned;
  }
}
