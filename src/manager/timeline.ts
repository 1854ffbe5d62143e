// History questions the console's timeline asks, each bounded whatever the history's size: writes
// and payload bytes per time bucket (from the catalog's transaction rows where a transaction lies
// inside one bucket, from its index where it crosses buckets), the marks on that time axis
// (transactions, bookmarks, resync windows, restores), pages of the write log by seq, the history
// of a byte range newest first, and the block map of a volume between two seqs.
import { formatTimeNs, mergeRanges, RewindError, type ByteRange } from '../core/index.js';
import { KIND_WRITE, KIND_ZERO } from '../views/index.js';
import type { Catalog, TxKind } from './catalog.js';
import { TxPrefix, type TxSummary } from './tx-prefix.js';
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
  /** The undo's extents: for a thinned (merged) transaction, the ranges its run wrote. */
  readonly extentCount: number;
  readonly extentVolume: Uint16Array;
  readonly extentOffset: Float64Array;
  readonly extentLength: Float64Array;
}

/** The catalog queries the timeline runs (Catalog has them). */
export type TimelineCatalog = Pick<
  Catalog,
  | 'txsInTime'
  | 'txSummariesAfter'
  | 'mergedInTime'
  | 'historyShape'
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
/**
 * Transaction indexes read per answer for the bucket boundaries that fall inside a transaction
 * (at most one per boundary, since capture time follows seq order); past it, a transaction's
 * writes are taken as spread evenly over its time span and the answer says it is not exact.
 */
const INDEXES_PER_ANSWER_MAX = 512;
/** Writes listed one by one when the window holds at most this many. */
export const TIMELINE_WRITES_MAX = 500;
/** Transaction marks per answer (more: none, and the answer says so). */
const TX_MARKS_MAX = 1000;
/** Resync windows, bookmarks and restores marked per answer. */
const MARKS_MAX = 1000;
/** Log entries per page. */
export const LOG_PAGE_MAX = 10_000;
/** Records one page or one range history may look at before it stops and says where to go on. */
const SCAN_RECORDS_MAX = 2_000_000;
/** Transactions fetched from the catalog per step of a scan. */
const SCAN_TXS_STEP = 256;
/** Records one block map may count (a wider window is refused with a hint). */
const BLOCKMAP_RECORDS_MAX = 2_000_000;
/** Long scans let the event loop (the write path, in rewind up) run after this many records. */
const SCAN_YIELD_RECORDS = 20_000;
/** Cells a block map may have. */
export const BLOCKMAP_CELLS_MAX = 65_536;
/** Cells are whole multiples of this (the smallest block a client writes). */
const BLOCKMAP_CELL_ALIGN_BYTES = 4096;
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
  /** Runs retention thinned into one point (merged): their writes' own times are gone. */
  thinned: {
    seqFirst: number;
    seqLast: number;
    fromUs: number;
    toUs: number;
    tier: string | null;
  }[];
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
  private prefix: TxPrefix | undefined;
  private prefixLoading: Promise<TxPrefix> | undefined;
  private prefixShape = '';
  private readonly pendingCommits: TxSummary[] = [];

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

  /** A transaction just committed (Timeline.of wires this to the manager's commit observers). */
  committed(tx: TxSummary): void {
    if (this.prefixLoading) this.pendingCommits.push(tx);
    else this.prefix?.append(tx);
  }

  /**
   * The running totals, loaded from the catalog on first use, and again once retention has
   * thinned or dropped history since (the catalog's history shape tells).
   */
  private async totals(): Promise<TxPrefix> {
    const shape = this.history.catalog.historyShape();
    if (this.prefix && this.prefixShape === shape) return this.prefix;
    if (this.prefix) {
      this.prefix = undefined;
      this.prefixLoading = undefined;
    }
    this.prefixLoading ??= TxPrefix.load((afterIdx, limit) =>
      this.history.catalog.txSummariesAfter(afterIdx, limit),
    ).then((prefix) => {
      // Commits during the load: those it read already are ignored by append.
      for (const tx of this.pendingCommits.splice(0)) prefix.append(tx);
      this.prefix = prefix;
      this.prefixShape = shape;
      this.prefixLoading = undefined;
      return prefix;
    });
    return this.prefixLoading;
  }

  /** Writes and bytes per bucket of [fromUs, toUs), with the marks inside it. */
  async buckets(window: TimelineWindow): Promise<TimelineAnswer> {
    const { fromUs, toUs } = checkWindow(window);
    const bucketUs = Math.max(1, Math.ceil((toUs - fromUs) / window.buckets));
    const count = Math.ceil((toUs - fromUs) / bucketUs);
    const counter = new BoundaryCounter(await this.totals(), (idx) => this.history.records(idx));
    // The window's edges first, so that they are read exactly whatever the interior costs.
    const first = await counter.before(fromUs);
    const last = await counter.before(toUs);
    const writes: number[] = [];
    const bytes: number[] = [];
    let previous = first;
    for (let b = 0; b < count; b++) {
      const next = b === count - 1 ? last : await counter.before(fromUs + (b + 1) * bucketUs);
      writes.push(next.seq - previous.seq);
      bytes.push(next.bytes - previous.bytes);
      previous = next;
    }
    const writesTotal = last.seq - first.seq;
    const exact = !counter.spread;
    const catalog = this.history.catalog;
    const marks = catalog.txsInTime(fromUs, toUs, TX_MARKS_MAX + 1);
    const thinned = catalog.mergedInTime(fromUs, toUs, MARKS_MAX).map((tx) => ({
      seqFirst: tx.seqFirst,
      seqLast: tx.seqLast,
      fromUs: tx.timeFirstUs,
      toUs: tx.timeLastUs,
      tier: tx.tier ?? null,
    }));
    const spanAll = catalog.timeSpan();
    return {
      fromUs,
      toUs,
      bucketUs,
      writes,
      bytes,
      exact,
      resolution: counter.reads > 0 ? 'writes' : 'transactions',
      seqFirst: writesTotal > 0 ? first.seq + 1 : null,
      seqLast: writesTotal > 0 ? last.seq : null,
      writesTotal,
      list:
        writesTotal === 0
          ? []
          : writesTotal <= TIMELINE_WRITES_MAX && thinned.length === 0
            ? await this.writesIn(fromUs, toUs)
            : null,
      thinned,
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
        if (tx.kind === 'merged') {
          // A thinned run: one entry per volume, at its last seq, covering what it wrote.
          if (tx.seqLast <= toSeq) entries.push(...this.thinnedEntries(tx, records, volume));
          seq = tx.seqLast + 1;
          continue;
        }
        seq = Math.max(seq, records.seqFirst);
        while (seq <= tx.seqLast && seq <= toSeq && !full()) {
          const i = seq - records.seqFirst;
          scanned += 1;
          if (scanned % SCAN_YIELD_RECORDS === 0) await yieldTurn();
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
        if (tx.kind === 'merged') {
          // A thinned run: the ranges it wrote that touch `range`, at its last seq.
          const touching = { offset, length, volume };
          if (tx.seqLast <= seq)
            entries.push(...this.thinnedEntries(tx, records, volume, touching));
          seq = Math.min(seq, tx.seqFirst - 1);
          continue;
        }
        seq = Math.min(seq, tx.seqLast);
        while (seq >= records.seqFirst && !full()) {
          const i = seq - records.seqFirst;
          scanned += 1;
          if (scanned % SCAN_YIELD_RECORDS === 0) await yieldTurn();
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
        if (tx.kind === 'merged') {
          // A thinned run with any seq in the window: each range it wrote, once.
          for (let e = 0; e < records.extentCount; e++) {
            if (records.extentVolume[e] !== volume) continue;
            const extent = {
              offset: records.extentOffset[e] as number,
              length: records.extentLength[e] as number,
            };
            ranges.push(extent);
            addToCells(extent, cellBytes, writes, bytes);
          }
          seq = tx.seqLast + 1;
          continue;
        }
        for (let i = Math.max(0, seq - records.seqFirst); i < records.recordCount; i++) {
          if (records.seqFirst + i > toSeq) break;
          if (records.recordVolume[i] !== volume) continue;
          const offset = records.recordOffset[i] as number;
          const length = records.recordLength[i] as number;
          ranges.push({ offset, length });
          if (ranges.length % SCAN_YIELD_RECORDS === 0) await yieldTurn();
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
      resync: kind === 'resync' || kind === 'resync-end',
    };
  }

  /**
   * A thinned run's entries (kind `thinned`, at its last seq, `seqFirst` its first): per volume
   * the span of the ranges it wrote, or, given `touching`, each range it wrote that touches it.
   */
  private thinnedEntries(
    tx: { seqFirst: number; seqLast: number; timeLastUs: number },
    records: RecordColumns,
    volume: number | undefined,
    touching?: { offset: number; length: number; volume: number },
  ): LogEntry[] {
    const time = formatTimeNs(BigInt(tx.timeLastUs) * 1000n);
    const entry = (v: number, offset: number, length: number): LogEntry => ({
      seq: tx.seqLast,
      seqFirst: tx.seqFirst,
      time,
      volume: this.history.volumeNames[v] ?? '?',
      kind: 'thinned',
      offset,
      length,
      resync: false,
    });
    const out: LogEntry[] = [];
    const spans = new Map<number, { start: number; end: number }>();
    for (let e = 0; e < records.extentCount; e++) {
      const v = records.extentVolume[e] as number;
      if (volume !== undefined && v !== volume) continue;
      const start = records.extentOffset[e] as number;
      const end = start + (records.extentLength[e] as number);
      if (touching) {
        if (start < touching.offset + touching.length && touching.offset < end)
          out.push(entry(v, start, end - start));
        continue;
      }
      const span = spans.get(v);
      spans.set(v, {
        start: Math.min(span?.start ?? start, start),
        end: Math.max(span?.end ?? end, end),
      });
    }
    for (const [v, span] of spans) out.push(entry(v, span.start, span.end - span.start));
    return out;
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

/** Lets other work of the event loop run in the middle of a long scan. */
function yieldTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
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

/**
 * Writes (as the last seq) and payload bytes captured before a moment, for the bucket boundaries
 * of one answer: the running totals up to the last transaction that ended before it, plus, when
 * the moment falls inside a transaction, that transaction's records before it, from its index (at
 * most INDEXES_PER_ANSWER_MAX indexes per answer; past that, a linear share of the transaction).
 */
class BoundaryCounter {
  reads = 0;
  spread = false;
  private readonly prefix: TxPrefix;
  private readonly records: (idx: number) => Promise<RecordColumns>;
  /** Per transaction read: its records' capture times and the payload bytes before each. */
  private readonly read = new Map<number, { timeNs: BigUint64Array; bytesBefore: Float64Array }>();

  constructor(prefix: TxPrefix, records: (idx: number) => Promise<RecordColumns>) {
    this.prefix = prefix;
    this.records = records;
  }

  async before(us: number): Promise<{ seq: number; bytes: number }> {
    const position = this.prefix.endingAtOrAfter(us);
    const base = this.prefix.totalsBefore(position);
    if (position === this.prefix.count) return base;
    const tx = this.prefix.at(position);
    if (tx.timeFirstUs >= us) return base;
    const inside = tx.thinned ? undefined : await this.inside(tx);
    if (!inside) {
      // A thinned run has no times per write any more: that is the history, not an estimate.
      if (!tx.thinned) this.spread = true;
      const share = (us - tx.timeFirstUs) / (tx.timeLastUs - tx.timeFirstUs + 1);
      return { seq: base.seq + tx.recordCount * share, bytes: base.bytes + tx.bytes * share };
    }
    // Records captured before `us` (their µs floor below it): times ascend within a transaction.
    const limitNs = BigInt(us) * 1000n;
    let low = 0;
    let high = inside.timeNs.length;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if ((inside.timeNs[middle] as bigint) < limitNs) low = middle + 1;
      else high = middle;
    }
    return { seq: base.seq + low, bytes: base.bytes + (inside.bytesBefore[low] as number) };
  }

  private async inside(
    tx: TxSummary,
  ): Promise<{ timeNs: BigUint64Array; bytesBefore: Float64Array } | undefined> {
    const known = this.read.get(tx.idx);
    if (known) return known;
    if (this.reads >= INDEXES_PER_ANSWER_MAX) return undefined;
    this.reads += 1;
    const records = await this.records(tx.idx);
    const bytesBefore = new Float64Array(records.recordCount + 1);
    for (let i = 0; i < records.recordCount; i++) {
      const payload =
        records.recordKind[i] === KIND_WRITE ? (records.recordLength[i] as number) : 0;
      bytesBefore[i + 1] = (bytesBefore[i] as number) + payload;
    }
    const entry = { timeNs: records.recordTimeNs.subarray(0, records.recordCount), bytesBefore };
    this.read.set(tx.idx, entry);
    return entry;
  }
}
