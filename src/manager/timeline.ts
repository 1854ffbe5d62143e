// History questions the console's timeline asks, each bounded whatever the history's size: writes
// and payload bytes per time bucket (from the catalog's transaction rows where a transaction lies
// inside one bucket, from its index where it crosses buckets), the marks on that time axis
// (transactions, bookmarks, resync windows, restores), pages of the write log by seq, the history
// of a byte range newest first, and the block map of a volume between two seqs.
import { formatTimeNs, mergeRanges, RewindError, type ByteRange } from '../core/index.js';
import { RECORD_HEADER_BYTES, REDO_HEADER_BYTES, TRAILER_BYTES } from '../log/index.js';
import { KIND_WRITE, KIND_ZERO } from '../views/index.js';
import type { Catalog, TxKind, TxRow } from './catalog.js';
import type { LogEntry, StoredHistory } from './stored-history.js';

/** A transaction's records as columns (a TxIndex is one). */
export interface RecordColumns {
  readonly seqFirst: number;
  readonly recordCount: number;
  readonly recordKind: Uint8Array;
  readonly recordVolume: Uint16Array;
  readonly recordOffset: Float64Array;
  readonly recordLength: Float64Array;
  readonly recordTimeNs: BigUint64Array;
}

/** The catalog queries the timeline runs (Catalog has them). */
export type TimelineCatalog = Pick<
  Catalog,
  | 'txsInTime'
  | 'lastTxInTime'
  | 'bucketTotals'
  | 'txsAcrossBuckets'
  | 'txsFromSeq'
  | 'txsBeforeSeq'
  | 'resyncWindows'
  | 'timeSpan'
  | 'bookmarks'
  | 'restores'
>;

/** What the timeline needs from the manager; keeps it free of the apply path and the agent link. */
export interface TimelineHistory {
  readonly catalog: TimelineCatalog;
  readonly volumeNames: readonly string[];
  volumeSize(volume: number): number;
  seqCommitted(): number;
  records(idx: number): Promise<RecordColumns>;
  /** A resync's first transaction: the capture time (µs) history is missing from; 0: unknown. */
  gapStartUs(idx: number): number;
}

/** Buckets one timeline answer may have (a chart is at most a few thousand pixels wide). */
export const TIMELINE_BUCKETS_MAX = 4000;
/** Transactions crossing buckets read from their indexes per answer; past it, spread evenly. */
const INDEXES_PER_ANSWER_MAX = 512;
/**
 * Transactions crossing buckets taken into an answer. Capture times follow seq order, so at most
 * one transaction crosses each bucket boundary (and one each edge of the window): this is never
 * reached unless the clock went back.
 */
const CROSSING_TXS_MAX = 2 * TIMELINE_BUCKETS_MAX + 2;
/** Writes listed one by one when the window holds at most this many. */
export const TIMELINE_WRITES_MAX = 500;
/** Transaction marks per answer (more: only the count is said). */
const TX_MARKS_MAX = 2000;
/** Resync windows, bookmarks and restores marked per answer. */
const MARKS_MAX = 1000;
/** Log entries per page. */
export const LOG_PAGE_MAX = 10_000;
/** Records one page or one range history may look at before it stops and says where to go on. */
const SCAN_RECORDS_MAX = 2_000_000;
/** Transactions fetched from the catalog per step of a scan. */
const SCAN_TXS_STEP = 256;
/** Records one block map may count (a wider window is refused with a hint). */
const BLOCKMAP_RECORDS_MAX = 5_000_000;
/** Cells a block map may have. */
export const BLOCKMAP_CELLS_MAX = 65_536;
/** Cells are whole multiples of this (the smallest block a client writes). */
const BLOCKMAP_CELL_ALIGN_BYTES = 4096;
/** A redo file's bytes that are not payload: header and trailer, plus a header per record. */
const REDO_LAYOUT = {
  fixedBytes: REDO_HEADER_BYTES + TRAILER_BYTES,
  recordHeaderBytes: RECORD_HEADER_BYTES,
};

export interface TimelineWindow {
  fromUs: number;
  toUs: number;
  buckets: number;
}

export interface TimelineWrite {
  seq: number;
  timeUs: number;
  time: string;
  volume: string;
  kind: LogEntry['kind'];
  offset: number;
  length: number;
  resync: boolean;
}

export interface TimelineAnswer {
  fromUs: number;
  toUs: number;
  bucketUs: number;
  /** Per bucket: writes, and payload bytes (zero and trim records carry none). */
  writes: number[];
  bytes: number[];
  /** False when some transactions crossing buckets were spread evenly rather than read. */
  exact: boolean;
  /** How the buckets were counted: `transactions` (rows only), `writes` (indexes read too). */
  resolution: 'transactions' | 'writes';
  /** The first and last seq captured inside the window (null: no write in it). */
  seqFirst: number | null;
  seqLast: number | null;
  writesTotal: number;
  /** Every write in the window, when there are at most TIMELINE_WRITES_MAX (else null). */
  list: TimelineWrite[] | null;
  transactions: {
    idx: number;
    kind: TxKind;
    seqFirst: number;
    seqLast: number;
    fromUs: number;
    toUs: number;
    writes: number;
  }[];
  transactionsTruncated: boolean;
  bookmarks: { name: string; seq: number; timeUs: number }[];
  /** Windows without per-write history (resyncs): no point inside is restorable. */
  gaps: { seqFirst: number; seqLast: number | null; fromUs: number; toUs: number | null }[];
  restores: {
    id: number;
    state: string;
    volumes: string[];
    seq: number;
    seqBefore: number | null;
    seqLast: number | null;
    fromUs: number;
    toUs: number | null;
  }[];
  /** The whole history: capture times of the first and last committed writes, the last seq. */
  history: { firstUs: number | null; lastUs: number | null; seqCommitted: number };
}

export interface LogPage {
  entries: LogEntry[];
  /** Where the next page starts; null when the range is exhausted. */
  nextSeq: number | null;
}

export interface RangeHistoryPage {
  entries: LogEntry[];
  /** Pass as `beforeSeq` for older entries; null when there are none. */
  nextBeforeSeq: number | null;
}

export interface BlockMap {
  volume: string;
  fromSeq: number;
  toSeq: number;
  sizeBytes: number;
  cellBytes: number;
  /** Per cell: the writes that touched it, and the bytes of it they covered (overlaps again). */
  writes: number[];
  bytes: number[];
  /** Distinct bytes written in the window (merged ranges). */
  changedBytes: number;
  ranges: number;
  writesTotal: number;
}

export class Timeline {
  private readonly history: TimelineHistory;

  constructor(history: TimelineHistory) {
    this.history = history;
  }

  /** The timeline of a manager's stored history and catalog. */
  static of(history: StoredHistory, catalog: Catalog): Timeline {
    return new Timeline({
      catalog,
      get volumeNames() {
        return history.volumeNames();
      },
      volumeSize: (volume) => history.volumeSize(volume),
      seqCommitted: () => history.seqCommitted(),
      records: (idx) => history.txIndex(idx),
      gapStartUs: (idx) => Number(history.gapStartNs(idx) / 1000n),
    });
  }

  /** Writes and bytes per bucket of [fromUs, toUs), with the marks inside it. */
  async buckets(window: TimelineWindow): Promise<TimelineAnswer> {
    const { fromUs, toUs } = checkWindow(window);
    const bucketUs = Math.max(1, Math.ceil((toUs - fromUs) / window.buckets));
    const count = Math.ceil((toUs - fromUs) / bucketUs);
    const writes = new Array<number>(count).fill(0);
    const bytes = new Array<number>(count).fill(0);
    const catalog = this.history.catalog;
    const span = { fromUs, toUs, bucketUs };
    for (const row of catalog.bucketTotals(span, REDO_LAYOUT)) {
      writes[row.bucket] = (writes[row.bucket] as number) + row.writes;
      bytes[row.bucket] = (bytes[row.bucket] as number) + row.bytes;
    }
    const crossing = catalog.txsAcrossBuckets(span, CROSSING_TXS_MAX);
    const exact = crossing.length <= INDEXES_PER_ANSWER_MAX;
    for (const [i, tx] of crossing.entries()) {
      if (i < INDEXES_PER_ANSWER_MAX) await this.countRecords(tx, span, writes, bytes);
      else spreadEvenly(tx, span, writes, bytes);
    }
    const writesTotal = writes.reduce((sum, n) => sum + n, 0);
    const edges = writesTotal > 0 ? await this.seqEdges(fromUs, toUs) : undefined;
    const marks = catalog.txsInTime(fromUs, toUs, TX_MARKS_MAX + 1);
    const spanAll = catalog.timeSpan();
    return {
      fromUs,
      toUs,
      bucketUs,
      writes,
      bytes,
      exact,
      resolution: crossing.length > 0 && exact ? 'writes' : 'transactions',
      seqFirst: edges?.seqFirst ?? null,
      seqLast: edges?.seqLast ?? null,
      writesTotal,
      list:
        exact && writesTotal > 0 && writesTotal <= TIMELINE_WRITES_MAX
          ? await this.writesIn(fromUs, toUs)
          : exact && writesTotal === 0
            ? []
            : null,
      transactions: marks.slice(0, TX_MARKS_MAX).map((tx) => ({
        idx: tx.idx,
        kind: tx.kind,
        seqFirst: tx.seqFirst,
        seqLast: tx.seqLast,
        fromUs: tx.timeFirstUs,
        toUs: tx.timeLastUs,
        writes: tx.recordCount,
      })),
      transactionsTruncated: marks.length > TX_MARKS_MAX,
      bookmarks: catalog
        .bookmarks()
        .filter((b) => b.timeUs >= fromUs && b.timeUs < toUs)
        .slice(0, MARKS_MAX)
        .map((b) => ({ name: b.name, seq: b.seq, timeUs: b.timeUs })),
      gaps: this.gaps(fromUs, toUs),
      restores: this.restores(fromUs, toUs),
      history: {
        firstUs: spanAll?.firstUs ?? null,
        lastUs: spanAll?.lastUs ?? null,
        seqCommitted: this.history.seqCommitted(),
      },
    };
  }

  /** Adds the records of `tx` captured in the window to their buckets. */
  private async countRecords(
    tx: TxRow,
    span: { fromUs: number; toUs: number; bucketUs: number },
    writes: number[],
    bytes: number[],
  ): Promise<void> {
    const records = await this.history.records(tx.idx);
    for (let i = 0; i < records.recordCount; i++) {
      const timeUs = Number((records.recordTimeNs[i] as bigint) / 1000n);
      if (timeUs < span.fromUs || timeUs >= span.toUs) continue;
      const bucket = Math.floor((timeUs - span.fromUs) / span.bucketUs);
      writes[bucket] = (writes[bucket] as number) + 1;
      if (records.recordKind[i] === KIND_WRITE)
        bytes[bucket] = (bytes[bucket] as number) + (records.recordLength[i] as number);
    }
  }

  /** The first and last seq captured in [fromUs, toUs), given that there is one. */
  private async seqEdges(
    fromUs: number,
    toUs: number,
  ): Promise<{ seqFirst: number; seqLast: number } | undefined> {
    const catalog = this.history.catalog;
    const first = catalog.txsInTime(fromUs, toUs, 1)[0];
    const last = catalog.lastTxInTime(fromUs, toUs);
    if (!first || !last) return undefined;
    const inWindow = (timeNs: bigint): boolean => {
      const timeUs = Number(timeNs / 1000n);
      return timeUs >= fromUs && timeUs < toUs;
    };
    let seqFirst: number | undefined;
    const firstRecords = await this.history.records(first.idx);
    for (let i = 0; i < firstRecords.recordCount && seqFirst === undefined; i++)
      if (inWindow(firstRecords.recordTimeNs[i] as bigint)) seqFirst = firstRecords.seqFirst + i;
    let seqLast: number | undefined;
    const lastRecords = await this.history.records(last.idx);
    for (let i = lastRecords.recordCount - 1; i >= 0 && seqLast === undefined; i--)
      if (inWindow(lastRecords.recordTimeNs[i] as bigint)) seqLast = lastRecords.seqFirst + i;
    if (seqFirst === undefined || seqLast === undefined) return undefined;
    return { seqFirst, seqLast };
  }

  /** Every write captured in [fromUs, toUs) (the caller knows there are few). */
  private async writesIn(fromUs: number, toUs: number): Promise<TimelineWrite[]> {
    const out: TimelineWrite[] = [];
    // Transactions' capture times follow seq order, so only one without a write in the window can
    // overlap it (one that spans it whole); the rest hold at least one.
    for (const tx of this.history.catalog.txsInTime(fromUs, toUs, TIMELINE_WRITES_MAX + 2)) {
      const records = await this.history.records(tx.idx);
      for (let i = 0; i < records.recordCount; i++) {
        const timeNs = records.recordTimeNs[i] as bigint;
        const timeUs = Number(timeNs / 1000n);
        if (timeUs < fromUs || timeUs >= toUs) continue;
        const entry = this.entry(records, i, tx.kind);
        out.push({ ...entry, timeUs });
        if (out.length >= TIMELINE_WRITES_MAX) return out;
      }
    }
    return out;
  }

  private gaps(fromUs: number, toUs: number): TimelineAnswer['gaps'] {
    const windows = this.history.catalog.resyncWindows(fromUs, toUs, MARKS_MAX);
    return windows.map(({ first, last, beforeUs }) => {
      // The window starts where per-write history stops: the time the resync's header names, or
      // (unknown: an unclean stop) right after the last logged write.
      const namedUs = this.history.gapStartUs(first.idx);
      const startUs = namedUs > 0 ? namedUs : beforeUs > 0 ? beforeUs : first.timeFirstUs;
      return {
        seqFirst: first.seqFirst,
        seqLast: last ? last.seqLast - 1 : null,
        fromUs: Math.min(startUs, first.timeFirstUs),
        toUs: last ? last.timeLastUs : null,
      };
    });
  }

  private restores(fromUs: number, toUs: number): TimelineAnswer['restores'] {
    const out: TimelineAnswer['restores'] = [];
    for (const row of this.history.catalog.restores()) {
      const startUs = Date.parse(row.startedAt) * 1000;
      const endUs = row.finishedAt === null ? null : Date.parse(row.finishedAt) * 1000;
      if (startUs >= toUs || (endUs !== null && endUs < fromUs)) continue;
      out.push({
        id: row.id,
        state: row.state,
        volumes: (JSON.parse(row.spec) as { volumes: string[] }).volumes,
        seq: row.seq,
        seqBefore: row.seqFirst,
        seqLast: row.seqLast,
        fromUs: startUs,
        toUs: endUs,
      });
      if (out.length >= MARKS_MAX) break;
    }
    return out;
  }

  /**
   * Up to `limit` committed writes with seq in [fromSeq, toSeq], oldest first, optionally of one
   * volume. A page that had to look at SCAN_RECORDS_MAX records stops early; `nextSeq` says where
   * to go on either way.
   */
  async logPage(query: {
    fromSeq: number;
    toSeq?: number;
    limit: number;
    volume?: string;
  }): Promise<LogPage> {
    const volume = query.volume === undefined ? undefined : this.volumeIndex(query.volume);
    checkLimit(query.limit, LOG_PAGE_MAX, 'limit');
    const toSeq = Math.min(query.toSeq ?? Number.MAX_SAFE_INTEGER, this.history.seqCommitted());
    const entries: LogEntry[] = [];
    /** The next seq to look at. */
    let seq = Math.max(1, query.fromSeq);
    let scanned = 0;
    const full = (): boolean => entries.length >= query.limit || scanned >= SCAN_RECORDS_MAX;
    while (seq <= toSeq && !full()) {
      const txs = this.history.catalog.txsFromSeq(seq, SCAN_TXS_STEP);
      if (txs.length === 0) break;
      for (const tx of txs) {
        if (seq > toSeq || full()) break;
        const records = await this.history.records(tx.idx);
        seq = Math.max(seq, records.seqFirst);
        while (seq <= tx.seqLast && seq <= toSeq && !full()) {
          const i = seq - records.seqFirst;
          scanned += 1;
          seq += 1;
          if (volume === undefined || records.recordVolume[i] === volume)
            entries.push(this.entry(records, i, tx.kind));
        }
      }
    }
    return { entries, nextSeq: seq <= toSeq ? seq : null };
  }

  /**
   * The committed writes of `volume` that touched `range`, newest first, at most `limit`, with
   * seq at or before `beforeSeq` (default: all). Stops after SCAN_RECORDS_MAX records looked at.
   */
  async rangeHistory(query: {
    volume: string;
    range: ByteRange;
    limit: number;
    beforeSeq?: number;
  }): Promise<RangeHistoryPage> {
    const volume = this.volumeIndex(query.volume);
    checkLimit(query.limit, LOG_PAGE_MAX, 'limit');
    const { offset, length } = query.range;
    const end = offset + length;
    const entries: LogEntry[] = [];
    /** The next seq to look at (going back). */
    let seq = Math.min(query.beforeSeq ?? Number.MAX_SAFE_INTEGER, this.history.seqCommitted());
    let scanned = 0;
    const full = (): boolean => entries.length >= query.limit || scanned >= SCAN_RECORDS_MAX;
    while (seq >= 1 && !full()) {
      const txs = this.history.catalog.txsBeforeSeq(seq, SCAN_TXS_STEP);
      if (txs.length === 0) {
        seq = 0;
        break;
      }
      for (const tx of txs) {
        if (full()) break;
        const records = await this.history.records(tx.idx);
        seq = Math.min(seq, tx.seqLast);
        while (seq >= records.seqFirst && !full()) {
          const i = seq - records.seqFirst;
          scanned += 1;
          seq -= 1;
          if (records.recordVolume[i] !== volume) continue;
          const at = records.recordOffset[i] as number;
          if (at < end && offset < at + (records.recordLength[i] as number))
            entries.push(this.entry(records, i, tx.kind));
        }
      }
    }
    return { entries, nextBeforeSeq: seq >= 1 ? seq : null };
  }

  /**
   * Which parts of `volume` the writes with seq in (fromSeq, toSeq] touched, as `cells` equal
   * cells (whole multiples of 4 KiB), from the log: cost proportional to the writes in the window.
   */
  async blockMap(query: {
    volume: string;
    fromSeq: number;
    toSeq: number;
    cells: number;
  }): Promise<BlockMap> {
    const volume = this.volumeIndex(query.volume);
    checkLimit(query.cells, BLOCKMAP_CELLS_MAX, 'cells');
    const committed = this.history.seqCommitted();
    const fromSeq = Math.min(query.fromSeq, query.toSeq);
    const toSeq = Math.max(query.fromSeq, query.toSeq);
    if (!Number.isSafeInteger(fromSeq) || fromSeq < 0 || toSeq > committed)
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `a block map needs seqs between 0 and the last committed seq ${committed}, not ${fromSeq}..${toSeq}`,
      );
    const sizeBytes = this.history.volumeSize(volume);
    const align = BLOCKMAP_CELL_ALIGN_BYTES;
    const cellBytes = Math.max(align, Math.ceil(sizeBytes / query.cells / align) * align);
    const cells = Math.max(1, Math.ceil(sizeBytes / cellBytes));
    const writes = new Array<number>(cells).fill(0);
    const bytes = new Array<number>(cells).fill(0);
    const ranges: ByteRange[] = [];
    let seq = fromSeq + 1;
    while (seq <= toSeq) {
      const txs = this.history.catalog.txsFromSeq(seq, SCAN_TXS_STEP);
      if (txs.length === 0) break;
      for (const tx of txs) {
        if (tx.seqFirst > toSeq) break;
        const records = await this.history.records(tx.idx);
        for (let i = Math.max(0, seq - records.seqFirst); i < records.recordCount; i++) {
          if (records.seqFirst + i > toSeq) break;
          if (records.recordVolume[i] !== volume) continue;
          const offset = records.recordOffset[i] as number;
          const length = records.recordLength[i] as number;
          ranges.push({ offset, length });
          if (ranges.length > BLOCKMAP_RECORDS_MAX)
            throw new RewindError(
              'REWIND_BAD_ARGUMENT',
              `more than ${BLOCKMAP_RECORDS_MAX} writes of ${query.volume} between seq ${fromSeq} and ${toSeq}`,
              { hint: 'pick a narrower window' },
            );
          addToCells({ offset, length }, cellBytes, writes, bytes);
        }
        seq = tx.seqLast + 1;
      }
    }
    const merged = mergeRanges(ranges);
    return {
      volume: query.volume,
      fromSeq,
      toSeq,
      sizeBytes,
      cellBytes,
      writes,
      bytes,
      changedBytes: merged.reduce((sum, r) => sum + r.length, 0),
      ranges: merged.length,
      writesTotal: ranges.length,
    };
  }

  private entry(records: RecordColumns, i: number, kind: TxKind): LogEntry {
    const code = records.recordKind[i];
    return {
      seq: records.seqFirst + i,
      time: formatTimeNs(records.recordTimeNs[i] as bigint),
      volume: this.history.volumeNames[records.recordVolume[i] as number] ?? '?',
      kind: code === KIND_WRITE ? 'write' : code === KIND_ZERO ? 'zero' : 'trim',
      offset: records.recordOffset[i] as number,
      length: records.recordLength[i] as number,
      resync: kind !== 'redo',
    };
  }

  private volumeIndex(name: string): number {
    const index = this.history.volumeNames.indexOf(name);
    if (index === -1)
      throw new RewindError('REWIND_NOT_FOUND', `no volume named "${name}"`, {
        hint: `volumes: ${this.history.volumeNames.join(', ') || 'none yet'}`,
      });
    return index;
  }
}

function checkWindow(window: TimelineWindow): { fromUs: number; toUs: number } {
  const { fromUs, toUs } = window;
  if (!Number.isSafeInteger(fromUs) || !Number.isSafeInteger(toUs) || fromUs < 0 || toUs <= fromUs)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `a timeline needs from < to (µs since the epoch), not ${fromUs}..${toUs}`,
    );
  checkLimit(window.buckets, TIMELINE_BUCKETS_MAX, 'buckets');
  return { fromUs, toUs };
}

function checkLimit(value: number, max: number, what: string): void {
  if (!Number.isSafeInteger(value) || value < 1 || value > max)
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} must be 1..${max}, not ${value}`);
}

/** A transaction too many to read: its writes and bytes spread evenly over its time span. */
function spreadEvenly(
  tx: TxRow,
  span: { fromUs: number; toUs: number; bucketUs: number },
  writes: number[],
  bytes: number[],
): void {
  const payload =
    tx.redoBytes - REDO_LAYOUT.fixedBytes - REDO_LAYOUT.recordHeaderBytes * tx.recordCount;
  const lengthUs = Math.max(1, tx.timeLastUs - tx.timeFirstUs + 1);
  const firstUs = Math.max(span.fromUs, tx.timeFirstUs);
  const lastUs = Math.min(span.toUs - 1, tx.timeLastUs);
  for (let b = Math.floor((firstUs - span.fromUs) / span.bucketUs); ; b++) {
    const bucketFromUs = span.fromUs + b * span.bucketUs;
    if (bucketFromUs > lastUs || b >= writes.length) break;
    const overlapUs =
      Math.min(lastUs + 1, bucketFromUs + span.bucketUs) - Math.max(firstUs, bucketFromUs);
    const share = overlapUs / lengthUs;
    writes[b] = (writes[b] as number) + tx.recordCount * share;
    bytes[b] = (bytes[b] as number) + payload * share;
  }
}

/** Counts one write in the cells its range touches, with the bytes of each it covers. */
function addToCells(range: ByteRange, cellBytes: number, writes: number[], bytes: number[]): void {
  const end = range.offset + range.length;
  for (let cell = Math.floor(range.offset / cellBytes); cell * cellBytes < end; cell++) {
    if (cell >= writes.length) break;
    const covered =
      Math.min(end, (cell + 1) * cellBytes) - Math.max(range.offset, cell * cellBytes);
    writes[cell] = (writes[cell] as number) + 1;
    bytes[cell] = (bytes[cell] as number) + covered;
  }
}
