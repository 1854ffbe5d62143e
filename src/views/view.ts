// A view of a whole volume set at one seq, built from the history (DESIGN.md "Views"): per volume an
// interval map from byte ranges to where their bytes lie at that seq (a redo payload, an undo
// extent, zeroes) and the replica everywhere else. A clone adds a private overlay on top.
import { assert, mergeRanges, RewindError, type ByteRange } from '../core/index.js';
import type { RedoRecord, UndoExtent } from '../log/index.js';
import { preadFully } from '../platform/index.js';
import { IntervalMap } from './interval-map.js';
import type { Overlay } from './overlay.js';

export type ViewSource = { kind: 'redo'; idx: number } | { kind: 'undo'; idx: number } | { kind: 'zero' };

export interface HistoryTx {
  idx: number;
  seqFirst: number;
  seqLast: number;
}

/** What a view needs from the manager; keeps views free of catalog and apply details. */
export interface History {
  readonly volumeCount: number;
  volumeSize(volume: number): number;
  seqCommitted(): number;
  /** Committed transactions holding any write with seq > `seq` (and <= `upTo`), ascending. */
  txsAfter(seq: number, upTo?: number): HistoryTx[];
  txIndex(idx: number): Promise<{ records: RedoRecord[]; undo: UndoExtent[] }>;
  redoFd(idx: number): number;
  undoFd(idx: number): number;
  replicaFd(volume: number): number;
}

const ZERO: ViewSource = { kind: 'zero' };

export class View {
  readonly name: string;
  readonly kind: 'snapshot' | 'clone';
  seq: number;
  readonly maps: IntervalMap<ViewSource>[];
  readonly overlays: Overlay[] | undefined;
  private readonly history: History;
  private readonly sources = new Map<string, ViewSource>();

  private constructor(name: string, kind: 'snapshot' | 'clone', seq: number, history: History, overlays: Overlay[] | undefined) {
    this.name = name;
    this.kind = kind;
    this.seq = seq;
    this.history = history;
    this.overlays = overlays;
    this.maps = Array.from({ length: history.volumeCount }, () => new IntervalMap<ViewSource>());
  }

  /** Builds the view in time proportional to the extents written after `seq`. */
  static async build(name: string, kind: 'snapshot' | 'clone', seq: number, history: History, overlays?: Overlay[]): Promise<View> {
    assert(seq >= 0 && seq <= history.seqCommitted(), 'view seq is committed');
    const view = new View(name, kind, seq, history, overlays);
    const txs = history.txsAfter(seq);
    const first = txs[0];
    if (first) {
      const index = await history.txIndex(first.idx);
      for (const record of index.records) {
        if (record.seq > seq) break;
        view.mapRecord(first.idx, record);
      }
    }
    for (const tx of txs) view.addUndo(tx.idx, (await history.txIndex(tx.idx)).undo);
    return view;
  }

  private source(kind: 'redo' | 'undo', idx: number): ViewSource {
    const key = `${kind}${idx}`;
    const known = this.sources.get(key);
    if (known) return known;
    const created: ViewSource = { kind, idx };
    this.sources.set(key, created);
    return created;
  }

  private mapRecord(idx: number, record: RedoRecord): void {
    const map = this.maps[record.volume] as IntervalMap<ViewSource>;
    const end = record.offsetBytes + record.lengthBytes;
    if (record.kind === 'write') map.set(record.offsetBytes, end, this.source('redo', idx), record.payloadOffsetBytes);
    else map.set(record.offsetBytes, end, ZERO, 0);
  }

  /**
   * Maps the ranges of an undo segment that the view does not map yet. Called while building, and
   * by the manager for every open view after a transaction's undo is durable and before the replica
   * is overwritten, so the view never moves.
   */
  addUndo(idx: number, extents: readonly UndoExtent[]): void {
    const source = this.source('undo', idx);
    for (const extent of extents) {
      const map = this.maps[extent.volume] as IntervalMap<ViewSource>;
      const end = extent.offsetBytes + extent.lengthBytes;
      if (extent.kind === 'data') map.fillGaps(extent.offsetBytes, end, source, extent.payloadOffsetBytes);
      else map.fillGaps(extent.offsetBytes, end, ZERO, 0);
    }
  }

  /**
   * Moves the view to `target` (a committed seq) in time proportional to the transactions holding
   * the writes crossed, not to the volume size; returns those writes in seq order. The history
   * index is loaded first and the maps are changed in one synchronous pass, so a reader sees the
   * view entirely at the old seq or entirely at the new one.
   */
  async stepTo(target: number): Promise<{ idx: number; record: RedoRecord }[]> {
    assert(target >= 0 && target <= this.history.seqCommitted(), 'step target is committed');
    const low = Math.min(this.seq, target);
    const high = Math.max(this.seq, target);
    if (low === high) return [];
    const txs = this.history.txsAfter(low, high);
    const indexes = await Promise.all(txs.map(async (tx) => ({ idx: tx.idx, ...(await this.history.txIndex(tx.idx)) })));
    const crossed: { idx: number; record: RedoRecord }[] = [];
    for (const index of indexes) for (const record of index.records) if (record.seq > low && record.seq <= high) crossed.push({ idx: index.idx, record });
    if (target > this.seq) {
      // Forward: each crossed write now shows its own bytes; everything else is unchanged.
      for (const { idx, record } of crossed) this.mapRecord(idx, record);
    } else {
      // Back: the ranges the crossed writes touched are mapped again as at `target`: first by the
      // writes at or before it in the transaction holding it, then by the before-images (undo) of
      // the transactions after it, earliest first.
      const touched = Array.from({ length: this.maps.length }, () => [] as ByteRange[]);
      for (const { record } of crossed) touched[record.volume]?.push({ offset: record.offsetBytes, length: record.lengthBytes });
      const ranges = touched.map((list) => mergeRanges(list));
      ranges.forEach((list, volume) => list.forEach((r) => this.maps[volume]?.delete(r.offset, r.offset + r.length)));
      const first = indexes[0];
      if (first) {
        for (const record of first.records) {
          if (record.seq > target) break;
          for (const piece of clip(ranges[record.volume] ?? [], record.offsetBytes, record.lengthBytes)) {
            const map = this.maps[record.volume] as IntervalMap<ViewSource>;
            if (record.kind === 'write') map.set(piece.start, piece.end, this.source('redo', first.idx), record.payloadOffsetBytes + piece.start - record.offsetBytes);
            else map.set(piece.start, piece.end, ZERO, 0);
          }
        }
      }
      for (const index of indexes) {
        const source = this.source('undo', index.idx);
        for (const extent of index.undo) {
          for (const piece of clip(ranges[extent.volume] ?? [], extent.offsetBytes, extent.lengthBytes)) {
            const map = this.maps[extent.volume] as IntervalMap<ViewSource>;
            if (extent.kind === 'data') map.fillGaps(piece.start, piece.end, source, extent.payloadOffsetBytes + piece.start - extent.offsetBytes);
            else map.fillGaps(piece.start, piece.end, ZERO, 0);
          }
        }
      }
    }
    this.seq = target;
    return crossed;
  }

  get mappedExtents(): number {
    return this.maps.reduce((sum, map) => sum + map.size, 0);
  }

  /** Reads the view's bytes (synchronously: a read never straddles an apply, see ARCHITECTURE.md). */
  read(volume: number, offsetBytes: number, lengthBytes: number): Buffer {
    const target = Buffer.allocUnsafe(lengthBytes);
    const overlay = this.overlays?.[volume];
    if (overlay) {
      for (const piece of overlay.map.query(offsetBytes, offsetBytes + lengthBytes)) {
        const at = piece.start - offsetBytes;
        if (piece.value === undefined) this.readBase(volume, target, at, piece.start, piece.end - piece.start);
        else if (piece.value === 'zero') target.fill(0, at, at + piece.end - piece.start);
        else preadFully(overlay.dataFd, target, at, piece.end - piece.start, piece.start);
      }
      return target;
    }
    this.readBase(volume, target, 0, offsetBytes, lengthBytes);
    return target;
  }

  private readBase(volume: number, target: Buffer, targetOffset: number, offsetBytes: number, lengthBytes: number): void {
    const map = this.maps[volume] as IntervalMap<ViewSource>;
    for (const piece of map.query(offsetBytes, offsetBytes + lengthBytes)) {
      const at = targetOffset + piece.start - offsetBytes;
      const length = piece.end - piece.start;
      const value = piece.value;
      if (value === undefined) preadFully(this.history.replicaFd(volume), target, at, length, piece.start);
      else if (value.kind === 'zero') target.fill(0, at, at + length);
      else if (value.kind === 'redo') preadFully(this.history.redoFd(value.idx), target, at, length, piece.valueOffset);
      else preadFully(this.history.undoFd(value.idx), target, at, length, piece.valueOffset);
    }
  }

  /** base:allocation for a range: zero pieces are holes that read as zeroes, the rest data. */
  zeroPieces(volume: number, offsetBytes: number, lengthBytes: number): { lengthBytes: number; zero: boolean }[] {
    if (this.overlays) return [{ lengthBytes, zero: false }];
    const map = this.maps[volume] as IntervalMap<ViewSource>;
    const out: { lengthBytes: number; zero: boolean }[] = [];
    for (const piece of map.query(offsetBytes, offsetBytes + lengthBytes)) {
      const zero = piece.value !== undefined && piece.value.kind === 'zero';
      const last = out[out.length - 1];
      if (last && last.zero === zero) last.lengthBytes += piece.end - piece.start;
      else out.push({ lengthBytes: piece.end - piece.start, zero });
    }
    return out;
  }
}

/** The parts of [offset, offset + length) inside `ranges` (merged, ascending). */
function clip(ranges: readonly ByteRange[], offsetBytes: number, lengthBytes: number): { start: number; end: number }[] {
  const end = offsetBytes + lengthBytes;
  const out: { start: number; end: number }[] = [];
  // Binary search for the first range ending after offsetBytes.
  let lo = 0;
  let hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    const r = ranges[mid] as ByteRange;
    if (r.offset + r.length <= offsetBytes) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < ranges.length; i++) {
    const r = ranges[i] as ByteRange;
    if (r.offset >= end) break;
    out.push({ start: Math.max(offsetBytes, r.offset), end: Math.min(end, r.offset + r.length) });
  }
  return out;
}

export function refuse(message: string, hint?: string): never {
  throw new RewindError('REWIND_POINT_INVALID', message, hint === undefined ? {} : { hint });
}
