// A view of a whole volume set at one seq, built from the history (docs/ARCHITECTURE.md, "Views
// and clones"): per volume an interval map from byte ranges to where their bytes lie at that seq
// (a redo payload, an undo extent, zeroes) and the replica everywhere else. A clone adds a private
// overlay on top.
import { assert, mergeRanges, RewindError, type ByteRange } from '../core/index.js';
import type { RedoRecord, UndoExtent } from '../log/index.js';
import { preadFully } from '../platform/index.js';
import { IntervalMap } from './interval-map.js';
import type { Overlay } from './overlay.js';
import { GROUP_FIELDS, PIECE_FIELDS, PlanBuffer, ReadAhead, runFileReads } from './file-reads.js';
import { overlay as overlayRuns, Runs } from './runs.js';
import { EXTENT_DATA, KIND_WRITE, TxIndex } from './tx-index.js';

/**
 * Where the bytes of a mapped range lie: the redo payloads or undo extents of transaction `idx`, or
 * zeroes. `id` is small and unique within a view (0 is zeroes). For zeroes the map's value offset
 * is the volume offset itself, so touching zero ranges join into one entry.
 */
export interface ViewSource {
  readonly kind: 'redo' | 'undo' | 'zero';
  readonly idx: number;
  readonly id: number;
}

export interface HistoryTx {
  idx: number;
  seqFirst: number;
  seqLast: number;
}

/**
 * What a view needs to know of a replica: which chunks may hold data; the others read as zeroes.
 */
export interface ReplicaAllocation {
  readonly allocChunkBytes: number;
  chunkMayHoldData(chunk: number): boolean;
}

/** What a view needs from the manager; keeps views free of catalog and apply details. */
export interface History {
  readonly volumeCount: number;
  volumeSize(volume: number): number;
  seqCommitted(): number;
  /** Committed transactions holding any write with seq > `seq` (and <= `upTo`), ascending. */
  txsAfter(seq: number, upTo?: number): HistoryTx[];
  /** The verified records and undo extents of a transaction; a compact TxIndex when it is one. */
  txIndex(idx: number): Promise<{ records: RedoRecord[]; undo: UndoExtent[] }>;
  redoFd(idx: number): number;
  undoFd(idx: number): number;
  /** The transaction's file mapped read-only, or undefined: read it through redoFd/undoFd. */
  mappedFile(idx: number, kind: 'redo' | 'undo'): Buffer | undefined;
  replicaFd(volume: number): number;
  /** Per volume, where the replica may hold data (block status reports the rest as holes). */
  readonly replicas: readonly ReplicaAllocation[];
}

const ZERO: ViewSource = { kind: 'zero', idx: 0, id: 0 };

/**
 * Pieces of one source closer than this in its file are read with one pread (the gap is read too).
 */
const FILE_GAP_BYTES = 16 * 1024;
/**
 * Replica pieces closer than this are read with one pread straight into the target; the pieces in
 * between are written over afterwards.
 */
const REPLICA_GAP_BYTES = 16 * 1024;
/** Read-ahead windows kept per view for its synchronous reads. */
const READ_AHEAD_TOTAL_BYTES = 32 * 1024 * 1024;

export class View {
  readonly name: string;
  readonly kind: 'snapshot' | 'clone';
  seq: number;
  readonly maps: IntervalMap<ViewSource>[];
  readonly overlays: Overlay[] | undefined;
  /** Replaced by adopt(): a view moved to a point older than the journal reads the archive's. */
  private history: History;
  private readonly sources = new Map<string, ViewSource>();
  /** Sources by id, and their file handles (-1 until first read). */
  private readonly sourceById: ViewSource[] = [ZERO];
  private readonly fdById: number[] = [-1];
  private readAhead = new ReadAhead(READ_AHEAD_TOTAL_BYTES);

  private constructor(
    name: string,
    kind: 'snapshot' | 'clone',
    seq: number,
    history: History,
    overlays: Overlay[] | undefined,
  ) {
    this.name = name;
    this.kind = kind;
    this.seq = seq;
    this.history = history;
    this.overlays = overlays;
    this.maps = Array.from({ length: history.volumeCount }, () => new IntervalMap<ViewSource>());
  }

  /**
   * Builds the view in time proportional to the extents written after `seq`: per volume, the
   * records at or before `seq` of the first transaction after it (newest wins), then the undo
   * extents of each transaction after it, oldest first, where still unmapped. The lists are
   * overlaid in typed arrays and each map is loaded in one pass.
   */
  static async build(
    name: string,
    kind: 'snapshot' | 'clone',
    seq: number,
    history: History,
    overlays?: Overlay[],
  ): Promise<View> {
    assert(seq >= 0 && seq <= history.seqCommitted(), 'view seq is committed');
    const view = new View(name, kind, seq, history, overlays);
    const volumes = view.maps.length;
    const lists = Array.from({ length: volumes }, () => ({ runs: new Runs(), bounds: [0] }));
    const txs = history.txsAfter(seq);
    for (const [position, tx] of txs.entries()) {
      const index = await view.loadIndex(tx.idx);
      if (position === 0) view.addRecordRuns(lists, index, tx.idx, seq);
      const source = view.source('undo', tx.idx).id;
      for (let volume = 0; volume < volumes; volume++) {
        const { from, to } = index.extentRange(volume);
        if (from === to) continue;
        const list = lists[volume] as { runs: Runs; bounds: number[] };
        for (let i = from; i < to; i++) {
          const offset = index.extentOffset[i] as number;
          const data = index.extentKind[i] === EXTENT_DATA;
          list.runs.push(
            offset,
            offset + (index.extentLength[i] as number),
            data ? source : ZERO.id,
            data ? (index.extentPayload[i] as number) : offset,
          );
        }
        list.bounds.push(list.runs.count);
      }
    }
    lists.forEach((list, volume) => {
      const merged = overlayRuns(list.runs, list.bounds);
      const sources = merged.source;
      (view.maps[volume] as IntervalMap<ViewSource>).load(
        merged.count,
        merged.start,
        merged.end,
        merged.offset,
        (i) => view.sourceById[sources[i] as number] as ViewSource,
      );
    });
    return view;
  }

  /** The first list of each volume: the records of `index` at or before `seq`, newest wins. */
  private addRecordRuns(
    lists: { runs: Runs; bounds: number[] }[],
    index: TxIndex,
    idx: number,
    seq: number,
  ): void {
    const count = Math.min(index.recordCount, seq - index.seqFirst + 1);
    if (count <= 0) return;
    const source = this.source('redo', idx).id;
    // Each record is a list of one, newest first; overlaid, they become one list per volume.
    const singles = Array.from({ length: lists.length }, () => ({ runs: new Runs(), bounds: [0] }));
    for (let i = count - 1; i >= 0; i--) {
      const single = singles[index.recordVolume[i] as number] as { runs: Runs; bounds: number[] };
      const offset = index.recordOffset[i] as number;
      const write = index.recordKind[i] === KIND_WRITE;
      single.runs.push(
        offset,
        offset + (index.recordLength[i] as number),
        write ? source : ZERO.id,
        write ? (index.recordPayload[i] as number) : offset,
      );
      single.bounds.push(single.runs.count);
    }
    singles.forEach((single, volume) => {
      if (single.runs.count === 0) return;
      const merged = overlayRuns(single.runs, single.bounds);
      const list = lists[volume] as { runs: Runs; bounds: number[] };
      list.runs.append(merged, 0, merged.count);
      list.bounds.push(list.runs.count);
    });
  }

  private async loadIndex(idx: number): Promise<TxIndex> {
    const index = await this.history.txIndex(idx);
    return index instanceof TxIndex ? index : TxIndex.fromLists(index.records, index.undo);
  }

  private source(kind: 'redo' | 'undo', idx: number): ViewSource {
    const key = `${kind}${idx}`;
    const known = this.sources.get(key);
    if (known) return known;
    const created: ViewSource = { kind, idx, id: this.sourceById.length };
    this.sources.set(key, created);
    this.sourceById.push(created);
    this.fdById.push(-1);
    return created;
  }

  private fdOf(source: ViewSource): number {
    let fd = this.fdById[source.id] as number;
    if (fd < 0) {
      fd =
        source.kind === 'redo' ? this.history.redoFd(source.idx) : this.history.undoFd(source.idx);
      this.fdById[source.id] = fd;
    }
    return fd;
  }

  /** Maps record `i` of `index` (transaction `idx`) over whatever was mapped there. */
  private mapRecord(idx: number, index: TxIndex, i: number): void {
    const map = this.maps[index.recordVolume[i] as number] as IntervalMap<ViewSource>;
    const start = index.recordOffset[i] as number;
    const end = start + (index.recordLength[i] as number);
    if (index.recordKind[i] === KIND_WRITE)
      map.set(start, end, this.source('redo', idx), index.recordPayload[i] as number);
    else map.set(start, end, ZERO, start);
  }

  /**
   * Takes over the maps, sources and seq of `rebuilt`, a view built anew: at the same seq over
   * history whose transaction files changed (retention merged some: the bytes it gives are the
   * same), or at another seq (a step across thinned history). One synchronous swap, so a reader
   * sees the old maps or the new ones. Overlays (a clone's own writes) are kept.
   */
  adopt(rebuilt: View): void {
    assert(rebuilt.maps.length === this.maps.length, 'a view adopts maps of the same volumes');
    this.seq = rebuilt.seq;
    this.history = rebuilt.history;
    this.maps.splice(0, this.maps.length, ...rebuilt.maps);
    this.sources.clear();
    for (const [key, source] of rebuilt.sources) this.sources.set(key, source);
    this.sourceById.splice(0, this.sourceById.length, ...rebuilt.sourceById);
    this.fdById.splice(0, this.fdById.length, ...rebuilt.fdById);
    this.readAhead = rebuilt.readAhead;
  }

  /**
   * Maps the ranges of an undo segment that the view does not map yet. Called by the manager for
   * every open view after a transaction's undo is durable and before the replica is overwritten,
   * so the view never moves.
   */
  addUndo(idx: number, extents: readonly UndoExtent[]): void {
    const source = this.source('undo', idx);
    for (const extent of extents) {
      const map = this.maps[extent.volume] as IntervalMap<ViewSource>;
      const end = extent.offsetBytes + extent.lengthBytes;
      if (extent.kind === 'data')
        map.fillGaps(extent.offsetBytes, end, source, extent.payloadOffsetBytes);
      else map.fillGaps(extent.offsetBytes, end, ZERO, extent.offsetBytes);
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
    const indexes: { idx: number; index: TxIndex }[] = [];
    for (const tx of txs) indexes.push({ idx: tx.idx, index: await this.loadIndex(tx.idx) });
    // The crossed records of each transaction: indexes [from, to) of its records.
    const crossed = indexes.map(({ idx, index }) => ({
      idx,
      index,
      from: Math.max(0, low + 1 - index.seqFirst),
      to: Math.min(index.recordCount, high + 1 - index.seqFirst),
    }));
    if (target > this.seq) {
      // Forward: each crossed write now shows its own bytes; everything else is unchanged.
      for (const { idx, index, from, to } of crossed)
        for (let i = from; i < to; i++) this.mapRecord(idx, index, i);
    } else {
      // Back: the ranges the crossed writes touched are mapped again as at `target`: first by the
      // writes at or before it in the transaction holding it, then by the before-images (undo) of
      // the transactions after it, earliest first.
      const touched = Array.from({ length: this.maps.length }, () => [] as ByteRange[]);
      for (const { index, from, to } of crossed) {
        for (let i = from; i < to; i++)
          touched[index.recordVolume[i] as number]?.push({
            offset: index.recordOffset[i] as number,
            length: index.recordLength[i] as number,
          });
      }
      const ranges = touched.map((list) => mergeRanges(list));
      ranges.forEach((list, volume) =>
        list.forEach((r) => this.maps[volume]?.delete(r.offset, r.offset + r.length)),
      );
      const first = indexes[0];
      if (first) {
        const { idx, index } = first;
        const count = Math.min(index.recordCount, target - index.seqFirst + 1);
        for (let i = 0; i < count; i++) {
          const volume = index.recordVolume[i] as number;
          const offset = index.recordOffset[i] as number;
          for (const piece of clip(ranges[volume] ?? [], offset, index.recordLength[i] as number)) {
            const map = this.maps[volume] as IntervalMap<ViewSource>;
            if (index.recordKind[i] === KIND_WRITE)
              map.set(
                piece.start,
                piece.end,
                this.source('redo', idx),
                (index.recordPayload[i] as number) + piece.start - offset,
              );
            else map.set(piece.start, piece.end, ZERO, piece.start);
          }
        }
      }
      for (const { idx, index } of indexes) {
        const source = this.source('undo', idx);
        for (let i = 0; i < index.extentCount; i++) {
          const volume = index.extentVolume[i] as number;
          const offset = index.extentOffset[i] as number;
          for (const piece of clip(ranges[volume] ?? [], offset, index.extentLength[i] as number)) {
            const map = this.maps[volume] as IntervalMap<ViewSource>;
            if (index.extentKind[i] === EXTENT_DATA)
              map.fillGaps(
                piece.start,
                piece.end,
                source,
                (index.extentPayload[i] as number) + piece.start - offset,
              );
            else map.fillGaps(piece.start, piece.end, ZERO, piece.start);
          }
        }
      }
    }
    this.seq = target;
    const out: { idx: number; record: RedoRecord }[] = [];
    for (const { idx, index, from, to } of crossed)
      for (let i = from; i < to; i++) out.push({ idx, record: index.record(i) });
    return out;
  }

  get mappedExtents(): number {
    return this.maps.reduce((sum, map) => sum + map.size, 0);
  }

  /**
   * Reads the view's bytes (synchronously: a read never straddles an apply, see ARCHITECTURE.md).
   */
  read(volume: number, offsetBytes: number, lengthBytes: number): Buffer {
    const target = Buffer.allocUnsafe(lengthBytes);
    const overlay = this.overlays?.[volume];
    if (overlay) {
      for (const piece of overlay.map.query(offsetBytes, offsetBytes + lengthBytes)) {
        const at = piece.start - offsetBytes;
        if (piece.value === undefined)
          this.readBase(volume, target, at, piece.start, piece.end - piece.start);
        else if (piece.value === 'zero') target.fill(0, at, at + piece.end - piece.start);
        else preadFully(overlay.dataFd, target, at, piece.end - piece.start, piece.start);
      }
      return target;
    }
    this.readBase(volume, target, 0, offsetBytes, lengthBytes);
    return target;
  }

  /**
   * Reads [offsetBytes, +lengthBytes) of the history-and-replica image into `target` at
   * `targetOffset`. Few preads however many pieces: replica pieces close to each other are read in
   * one pread straight into the target (the pieces between them are written over afterwards), and
   * the pieces of each transaction file close to each other in that file in one pread.
   */
  private readBase(
    volume: number,
    target: Buffer,
    targetOffset: number,
    offsetBytes: number,
    lengthBytes: number,
  ): void {
    if (this.readReplicaAndZeroes(volume, target, targetOffset, offsetBytes, lengthBytes, PLAN))
      runFileReads(target, PLAN, this.readAhead);
  }

  /**
   * Looks up the pieces of the range, reads its replica pieces and fills its zero pieces into
   * `target`, and puts groups for its transaction-file pieces in `plan`. Returns whether there are
   * any.
   */
  private readReplicaAndZeroes(
    volume: number,
    target: Buffer,
    targetOffset: number,
    offsetBytes: number,
    lengthBytes: number,
    plan: PlanBuffer,
  ): boolean {
    const map = this.maps[volume] as IntervalMap<ViewSource>;
    const pieces = PIECES;
    pieces.count = 0;
    map.forEachPiece(offsetBytes, offsetBytes + lengthBytes, pieces.add);
    const count = pieces.count;
    const starts = pieces.start;
    const ends = pieces.end;
    const offsets = pieces.offset;
    const values = pieces.value;
    const shift = targetOffset - offsetBytes; // target position of a volume offset
    // 1. The replica, in runs that may span other pieces (those are written later, over it).
    let runStart = -1;
    let runEnd = -1;
    for (let i = 0; i < count; i++) {
      if (values[i] !== undefined) continue;
      const start = starts[i] as number;
      if (runStart >= 0 && start - runEnd <= REPLICA_GAP_BYTES) {
        runEnd = ends[i] as number;
        continue;
      }
      if (runStart >= 0) this.readReplica(volume, target, runStart + shift, runStart, runEnd);
      runStart = start;
      runEnd = ends[i] as number;
    }
    if (runStart >= 0) this.readReplica(volume, target, runStart + shift, runStart, runEnd);
    // 2. Zeroes; and the pieces of each transaction file chained by source, in volume order.
    const chains = pieces.chains(this.sourceById.length);
    let filePieces = 0;
    for (let i = 0; i < count; i++) {
      const value = values[i];
      if (value === undefined) continue;
      if (value.kind === 'zero')
        target.fill(0, (starts[i] as number) + shift, (ends[i] as number) + shift);
      else {
        chains.link(i, value.id);
        filePieces += 1;
      }
    }
    if (filePieces === 0) {
      chains.reset();
      return false;
    }
    // 3. Per chain, pieces ascending in the file and close together form one group.
    try {
      plan.groupCount = 0;
      plan.pieceCount = 0;
      plan.reserve(filePieces);
      const groups = plan.groups;
      const planPieces = plan.pieces;
      let groupCount = 0;
      let pieceCount = 0;
      const mapped = plan.mapped;
      for (let c = 0; c < chains.touchedCount; c++) {
        const id = chains.touched[c] as number;
        const source = this.sourceById[id] as ViewSource;
        const mapping = this.history.mappedFile(source.idx, source.kind as 'redo' | 'undo');
        let first = chains.head[id] as number;
        while (first >= 0) {
          const groupFirst = pieceCount;
          let spanEnd = -1;
          let i = first;
          for (; i >= 0; i = chains.next[i] as number) {
            const offset = offsets[i] as number;
            if (spanEnd >= 0 && (offset < spanEnd || offset - spanEnd > FILE_GAP_BYTES)) break;
            const length = (ends[i] as number) - (starts[i] as number);
            planPieces[pieceCount * PIECE_FIELDS] = offset;
            planPieces[pieceCount * PIECE_FIELDS + 1] = length;
            planPieces[pieceCount * PIECE_FIELDS + 2] = (starts[i] as number) + shift;
            pieceCount += 1;
            spanEnd = offset + length;
          }
          const at = groupCount * GROUP_FIELDS;
          groups[at] = id; // the read-ahead key: one file of this view
          if (mapping === undefined) {
            groups[at + 1] = this.fdOf(source);
            mapped[groupCount] = undefined;
          } else {
            if (spanEnd > mapping.length) {
              mapped.length = 0; // the plan is reused: hold no mapping past this read
              throw new RewindError(
                'REWIND_SEGMENT_CORRUPT',
                `the ${source.kind} file of transaction ${source.idx} holds ${mapping.length} bytes, but its index places data up to byte ${spanEnd}`,
              );
            }
            groups[at + 1] = -1;
            mapped[groupCount] = mapping;
          }
          groups[at + 2] = offsets[first] as number;
          groups[at + 3] = spanEnd;
          groups[at + 4] = groupFirst;
          groups[at + 5] = pieceCount - groupFirst;
          groupCount += 1;
          first = i;
        }
      }
      plan.groupCount = groupCount;
      plan.pieceCount = pieceCount;
    } finally {
      chains.reset();
    }
    return true;
  }

  /**
   * Replica bytes [start, end) into `target` at `at`; chunks never written with data are zeroes
   * without a read.
   */
  private readReplica(
    volume: number,
    target: Buffer,
    at: number,
    start: number,
    end: number,
  ): void {
    const replica = this.history.replicas[volume];
    if (replica !== undefined) {
      const chunkBytes = replica.allocChunkBytes;
      let hole = true;
      for (let chunk = Math.floor(start / chunkBytes); hole && chunk * chunkBytes < end; chunk++)
        hole = !replica.chunkMayHoldData(chunk);
      if (hole) {
        target.fill(0, at, at + end - start);
        return;
      }
    }
    preadFully(this.history.replicaFd(volume), target, at, end - start, start);
  }

  /**
   * base:allocation for a range: zero pieces of the history, and replica chunks never written with
   * data, are holes that read as zeroes; the rest is data. Clones: the overlay's zero ranges too.
   */
  zeroPieces(
    volume: number,
    offsetBytes: number,
    lengthBytes: number,
  ): { lengthBytes: number; zero: boolean }[] {
    const out: { lengthBytes: number; zero: boolean }[] = [];
    const push = (length: number, zero: boolean): void => {
      const last = out[out.length - 1];
      if (last && last.zero === zero) last.lengthBytes += length;
      else out.push({ lengthBytes: length, zero });
    };
    const end = offsetBytes + lengthBytes;
    const overlay = this.overlays?.[volume];
    if (overlay) {
      overlay.map.forEachPiece(offsetBytes, end, (start, pieceEnd, value) => {
        if (value === undefined) this.basePieces(volume, start, pieceEnd, push);
        else push(pieceEnd - start, value === 'zero');
      });
    } else {
      this.basePieces(volume, offsetBytes, end, push);
    }
    return out;
  }

  private basePieces(
    volume: number,
    start: number,
    end: number,
    push: (length: number, zero: boolean) => void,
  ): void {
    const map = this.maps[volume] as IntervalMap<ViewSource>;
    const replica = this.history.replicas[volume];
    map.forEachPiece(start, end, (pieceStart, pieceEnd, value) => {
      if (value !== undefined) return push(pieceEnd - pieceStart, value.kind === 'zero');
      if (replica === undefined) return push(pieceEnd - pieceStart, false);
      // The replica reads as zeroes in chunks never written with data.
      const chunkBytes = replica.allocChunkBytes;
      for (let at = pieceStart; at < pieceEnd;) {
        const chunk = Math.floor(at / chunkBytes);
        const next = Math.min(pieceEnd, (chunk + 1) * chunkBytes);
        push(next - at, !replica.chunkMayHoldData(chunk));
        at = next;
      }
    });
  }
}

/**
 * The pieces of one read, in typed arrays (reads are synchronous, so one list serves every view).
 */
class PieceList {
  count = 0;
  start: Float64Array = new Float64Array(256);
  end: Float64Array = new Float64Array(256);
  offset: Float64Array = new Float64Array(256);
  value: (ViewSource | undefined)[] = [];
  private readonly chainState = new Chains();

  readonly add = (
    start: number,
    end: number,
    value: ViewSource | undefined,
    offset: number,
  ): void => {
    const at = this.count;
    if (at === this.start.length) this.grow();
    this.start[at] = start;
    this.end[at] = end;
    this.offset[at] = offset;
    this.value[at] = value;
    this.count = at + 1;
  };

  chains(sources: number): Chains {
    this.chainState.prepare(sources, this.start.length);
    return this.chainState;
  }

  private grow(): void {
    const grown = (old: Float64Array): Float64Array => {
      const array = new Float64Array(old.length * 2);
      array.set(old);
      return array;
    };
    this.start = grown(this.start);
    this.end = grown(this.end);
    this.offset = grown(this.offset);
  }
}

/** Singly linked lists of piece indexes per source id, in the order linked. */
class Chains {
  head = new Int32Array(64).fill(-1);
  tail = new Int32Array(64);
  next = new Int32Array(256);
  touched = new Int32Array(64);
  touchedCount = 0;

  prepare(sources: number, pieces: number): void {
    if (this.head.length < sources) {
      const size = Math.max(sources, this.head.length * 2);
      this.head = new Int32Array(size).fill(-1);
      this.tail = new Int32Array(size);
      this.touched = new Int32Array(size);
    }
    if (this.next.length < pieces) this.next = new Int32Array(pieces);
  }

  link(piece: number, id: number): void {
    this.next[piece] = -1;
    if ((this.head[id] as number) < 0) {
      this.head[id] = piece;
      this.touched[this.touchedCount++] = id;
    } else {
      this.next[this.tail[id] as number] = piece;
    }
    this.tail[id] = piece;
  }

  reset(): void {
    for (let i = 0; i < this.touchedCount; i++) this.head[this.touched[i] as number] = -1;
    this.touchedCount = 0;
  }
}

const PIECES = new PieceList();
const PLAN = new PlanBuffer(256);

/** The parts of [offset, offset + length) inside `ranges` (merged, ascending). */
function clip(
  ranges: readonly ByteRange[],
  offsetBytes: number,
  lengthBytes: number,
): { start: number; end: number }[] {
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
