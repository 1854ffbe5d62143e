// POINTs: parsing what an operator gave (a seq, "1234", "0" being the state before the first write;
// an ISO-8601 time; a relative time, "5 minutes ago"; "@NAME" for a bookmark; "latest", the last
// committed write; "now", the same once every write captured is committed), and resolving it
// against the history to a committed, restorable seq, or refusing with the reason and the nearest
// points that would do.
import * as chrono from 'chrono-node';
import { formatTimeNs, RewindError } from '../core/index.js';
import type { RedoRecord } from '../log/index.js';
import type { AgentStatus } from './agent-link.js';
import type { Catalog, HistoryGap, TxRow } from './catalog.js';
import type { CommittedPosition } from './transactions.js';

export type Point =
  | { kind: 'seq'; seq: number }
  | { kind: 'time'; timeNs: bigint; text: string }
  | { kind: 'latest' }
  | { kind: 'now' };

const ISO = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$/;

export function parsePoint(text: string, now = new Date()): Point {
  const trimmed = text.trim();
  if (trimmed.toLowerCase() === 'latest') return { kind: 'latest' };
  if (trimmed.toLowerCase() === 'now') return { kind: 'now' };
  if (/^\d+$/.test(trimmed)) {
    const seq = Number(trimmed);
    if (!Number.isSafeInteger(seq))
      throw new RewindError('REWIND_BAD_ARGUMENT', `point "${text}" is too large for a seq`);
    return { kind: 'seq', seq };
  }
  if (ISO.test(trimmed)) return { kind: 'time', timeNs: isoToNs(trimmed), text: trimmed };
  const parsed = chrono.parseDate(trimmed, now);
  if (!parsed || /^\s*$/.test(trimmed)) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `point "${text}" is not a seq, an ISO-8601 time or a relative time`,
      {
        hint: 'examples: 1234, 0, latest, 2026-11-24T15:03:12Z, "5 minutes ago", @NAME',
      },
    );
  }
  return { kind: 'time', timeNs: BigInt(parsed.getTime()) * 1_000_000n, text: trimmed };
}

/** ISO-8601 to ns, keeping sub-millisecond digits that Date would drop. */
function isoToNs(text: string): bigint {
  const fraction = /\.(\d{1,9})/.exec(text);
  const withoutFraction = text.replace(/\.\d{1,9}/, '');
  const ms = Date.parse(
    withoutFraction.includes('T') || withoutFraction.includes(' ')
      ? withoutFraction
      : `${withoutFraction}T00:00:00Z`,
  );
  if (Number.isNaN(ms))
    throw new RewindError('REWIND_BAD_ARGUMENT', `time "${text}" is not a valid ISO-8601 time`);
  const fractionNs = fraction ? BigInt((fraction[1] ?? '').padEnd(9, '0')) : 0n;
  return BigInt(ms) * 1_000_000n + fractionNs;
}

/** What resolving a point reads of the history. */
export interface PointSource extends Pick<
  Catalog,
  'bookmark' | 'tx' | 'txContaining' | 'firstTx' | 'txAtOrBeforeTime' | 'oldestPoint' | 'droppedAt'
> {
  committed(): CommittedPosition;
  /**
   * The agent's last report: a time past the last committed write is only taken when it is quiet.
   */
  agentStatus(): AgentStatus | undefined;
  /** A committed transaction's records, read synchronously (from the cache when there). */
  recordsOf(idx: number): readonly RedoRecord[];
  /** The history gap (seqs this manager never received) holding `seq`, if any. */
  gapContaining?(seq: number): HistoryGap | undefined;
  /** The history gap whose time span holds `timeUs`, if any. */
  gapAtTime?(timeUs: number): HistoryGap | undefined;
  /** From the header of resync transaction `idx`: when history went missing (0n: unknown). */
  gapStartNs(idx: number): bigint;
  /**
   * With an archive, for a seq the local journal no longer serves (dropped, or inside a thinned
   * run): whether the archive serves it, or why not (what it keeps). Undefined: no archive.
   */
  archive?(seq: number): { served: true } | { served: false; why: string } | undefined;
  /** With an archive: the archived transaction whose first write is at or before `timeUs`. */
  archiveTxAtOrBeforeTime?(
    timeUs: number,
  ): { seqFirst: number; seqLast: number; timeLastUs: number } | undefined;
  /**
   * With an archive: the capture times of the archived writes `seqFirst..seqLast` (one archived
   * transaction), in seq order, when its object is in the archive cache; undefined when it is not.
   */
  archivedRecordTimes?(
    seqFirst: number,
    seqLast: number,
  ): readonly { seq: number; timeNs: bigint }[] | undefined;
}

/**
 * A time among the writes of an archived transaction whose object is not in the archive cache:
 * `Manager.fetchTimes` fetches it, and the time then resolves to its exact seq.
 */
export class ArchivedTimeError extends RewindError {
  override name = 'ArchivedTimeError';
  constructor(
    readonly text: string,
    readonly seqFirst: number,
    readonly seqLast: number,
  ) {
    super(
      'REWIND_POINT_INVALID',
      `time ${text} falls among the archived writes of seqs ${seqFirst}..${seqLast}, whose capture times are not fetched from the archive yet`,
      {
        hint: `rewind archive fetch '${text}' fetches them (snapshot, clone, export and restore do it first); or give a seq from ${seqFirst - 1} to ${seqLast}`,
      },
    );
  }
}

export class PointResolver {
  private readonly source: PointSource;

  constructor(source: PointSource) {
    this.source = source;
  }

  /** Resolves an operator's POINT to a committed, restorable seq, or refuses saying why. */
  resolve(text: string): number {
    const trimmed = text.trim();
    if (trimmed.startsWith('@')) {
      const bookmark = this.source.bookmark(trimmed.slice(1));
      if (!bookmark) {
        throw new RewindError('REWIND_NOT_FOUND', `no bookmark named "${trimmed.slice(1)}"`, {
          hint: 'rewind bookmarks lists them',
        });
      }
      return this.resolve(String(bookmark.seq));
    }
    const point = parsePoint(text);
    if (point.kind === 'time') return this.seqAtTime(point.timeNs, point.text);
    if (point.kind === 'latest' || point.kind === 'now') return this.latest(point.kind);
    const committed = this.source.committed().seq;
    if (point.seq > committed) {
      throw new RewindError(
        'REWIND_POINT_INVALID',
        `seq ${point.seq} is not committed yet (last committed: ${committed})`,
        { hint: 'wait, or run rewind seal --wait' },
      );
    }
    this.refuseLost(`seq ${point.seq}`, this.source.gapContaining?.(point.seq));
    const start = this.historyStart();
    if (start === undefined || point.seq < start)
      return this.orArchive(point.seq, this.beforeHistory(`seq ${point.seq}`, start, point.seq));
    const merged = this.thinnedAt(point.seq);
    if (merged) return this.orArchive(point.seq, thinned(`seq ${point.seq}`, merged));
    this.refuseInsideResync(point.seq);
    return point.seq;
  }

  /**
   * Refuses a point in a history gap: this manager never received those writes (it lost its
   * history and the agent resynced every volume), naming the points on either side.
   */
  private refuseLost(what: string, gap: HistoryGap | undefined): void {
    if (gap === undefined) return;
    let tx = this.source.tx(gap.idxAfter);
    while (tx && tx.kind === 'resync') tx = this.source.tx(tx.idx + 1);
    const after =
      tx?.kind === 'resync-end' && tx.state === 'committed'
        ? `seq ${tx.seqLast} (the end of the resync after it)`
        : 'the end of the resync after it, once committed';
    throw new RewindError(
      'REWIND_POINT_INVALID',
      `${what} lies in a history gap: seqs ${gap.seqFirst}..${gap.seqLast} were lost to this manager (recorded ${gap.recordedAt}) and the agent resynced every volume after them`,
      { hint: `choose seq ${gap.seqFirst - 1} (before the gap) or ${after}` },
    );
  }

  /** The merged transaction holding `seq` strictly inside its run, if any. */
  private thinnedAt(seq: number): TxRow | undefined {
    const tx = this.source.txContaining(seq);
    return tx && tx.kind === 'merged' && seq < tx.seqLast ? tx : undefined;
  }

  /**
   * A seq the local journal refuses (`refusal`): served by the archive if it keeps it, else
   * refused naming what both tiers keep.
   */
  private orArchive(seq: number, refusal: RewindError): number {
    const archive = this.source.archive?.(seq);
    if (archive === undefined) throw refusal;
    if (archive.served) return seq;
    throw new RewindError('REWIND_POINT_INVALID', `${refusal.message}, and not in the archive`, {
      hint: `${refusal.hint ? `${refusal.hint}; ` : ''}${archive.why}`,
    });
  }

  /**
   * Refuses a seq strictly inside a run that retention thinned into one transaction: only the run's
   * first and last points were kept.
   */
  refuseThinned(seq: number): void {
    const tx = this.source.txContaining(seq);
    if (tx && tx.kind === 'merged' && seq < tx.seqLast) throw thinned(`seq ${seq}`, tx);
  }

  /** The seq `steps` writes from `from` (negative: back), refused when it is not restorable. */
  afterSteps(what: string, from: number, steps: number): number {
    const target = from + steps;
    const committed = this.source.committed().seq;
    if (target > committed) {
      throw new RewindError(
        'REWIND_POINT_INVALID',
        `${what} is at seq ${from}; ${steps} forward is seq ${target}, past the last committed seq ${committed}`,
        { hint: 'wait, or run rewind seal --wait' },
      );
    }
    this.refuseLost(`seq ${target}`, this.source.gapContaining?.(target));
    const start = this.historyStart();
    if (steps < 0 && (start === undefined || target < start)) {
      const refusal = this.beforeHistory(
        `${what} is at seq ${from}; ${-steps} back`,
        start,
        target,
      );
      return this.orArchive(target, refusal);
    }
    const merged = this.thinnedAt(target);
    if (merged) return this.orArchive(target, thinned(`seq ${target}`, merged));
    this.refuseInsideResync(target);
    return target;
  }

  /**
   * The first restorable seq: 0, or the end of a resync the history begins with (first protection);
   * undefined while that resync is still arriving.
   */
  historyStart(): number | undefined {
    const dropped = this.source.oldestPoint();
    if (dropped) return dropped.seq; // retention dropped what was before it
    let tx = this.source.firstTx();
    if (!tx || tx.kind === 'redo' || tx.kind === 'merged') return tx ? tx.seqFirst - 1 : 0;
    while (tx && tx.kind === 'resync') tx = this.source.tx(tx.idx + 1);
    return tx && tx.kind === 'resync-end' ? tx.seqLast : undefined;
  }

  /** Refuses a seq inside a resync, which has no per-write history, naming the points around it. */
  refuseInsideResync(seq: number): void {
    const tx = this.source.txContaining(seq);
    if (!tx || tx.kind === 'redo' || tx.kind === 'merged') return; // merged: refuseThinned
    if (tx.kind === 'resync-end' && seq === tx.seqLast) return; // the consistent point after it
    // One resync spans consecutive transactions up to its resync-end: the window is all of them.
    let first = tx;
    for (
      let prev = this.source.tx(first.idx - 1);
      prev?.kind === 'resync';
      prev = this.source.tx(first.idx - 1)
    ) {
      first = prev;
    }
    let last: TxRow | undefined = tx;
    while (last && last.kind === 'resync') last = this.source.tx(last.idx + 1);
    const end =
      last && last.kind === 'resync-end' && last.state === 'committed'
        ? `seq ${last.seqLast}`
        : 'its end, once committed';
    // Right after a history gap, the point before the resync is the one before the gap.
    const before =
      (this.source.gapContaining?.(first.seqFirst - 1)?.seqFirst ?? first.seqFirst) - 1;
    throw new RewindError(
      'REWIND_POINT_INVALID',
      `seq ${seq} lies inside a resync (from seq ${first.seqFirst}), which has no per-write history`,
      { hint: `choose seq ${before} or ${end}` },
    );
  }

  /**
   * For the bounds of a listing (`log --from/--to`): the last committed write at or before POINT.
   * Unlike resolve(), nothing is refused for history that is thinned, dropped or not begun: a time
   * before the first write is 0, a time after the last committed write is that write.
   */
  seqAtOrBefore(text: string): number {
    const trimmed = text.trim();
    if (trimmed.startsWith('@')) {
      const bookmark = this.source.bookmark(trimmed.slice(1));
      if (!bookmark)
        throw new RewindError('REWIND_NOT_FOUND', `no bookmark named "${trimmed.slice(1)}"`, {
          hint: 'rewind bookmarks lists them',
        });
      return bookmark.seq;
    }
    const point = parsePoint(trimmed);
    const committed = this.source.committed();
    if (point.kind === 'seq') return Math.min(point.seq, committed.seq);
    if (point.kind !== 'time' || point.timeNs >= committed.timeNs) return committed.seq;
    const tx = this.source.txAtOrBeforeTime(Number(point.timeNs / 1000n) + 1);
    if (!tx) return this.source.oldestPoint()?.seq ?? 0;
    if (tx.kind === 'merged')
      return point.timeNs >= BigInt(tx.timeLastUs) * 1000n ? tx.seqLast : tx.seqFirst - 1;
    let seq = tx.seqFirst - 1;
    for (const record of this.source.recordsOf(tx.idx)) {
      if (record.timeNs > point.timeNs) break;
      seq = record.seq;
    }
    return seq;
  }

  /**
   * `latest`: the last committed write. `now`: the same, taken only when the agent's last report
   * says every write it captured is committed (otherwise "now" would silently mean an older point).
   */
  private latest(kind: 'latest' | 'now'): number {
    const committed = this.source.committed();
    if (kind === 'now') {
      const status = this.source.agentStatus();
      if (status === undefined || status.seqCaptured !== committed.seq) {
        throw new RewindError(
          'REWIND_POINT_INVALID',
          `now: writes captured are not all committed yet (${status === undefined ? 'no report from the agent' : `captured seq ${status.seqCaptured}`}, last committed seq ${committed.seq})`,
          { hint: 'run rewind seal --wait first, or give latest (the last committed write)' },
        );
      }
    }
    const start = this.historyStart();
    if (start === undefined || committed.seq < start)
      throw this.beforeHistory(kind, start, committed.seq);
    this.refuseInsideResync(committed.seq);
    return committed.seq;
  }

  private seqAtTime(timeNs: bigint, text: string): number {
    this.refuseLost(`time ${text}`, this.source.gapAtTime?.(Number(timeNs / 1000n)));
    const committed = this.source.committed();
    if (timeNs > committed.timeNs) {
      const status = this.source.agentStatus();
      const nowNs = BigInt(Date.now()) * 1_000_000n;
      if (timeNs > nowNs)
        throw new RewindError('REWIND_POINT_INVALID', `time ${text} is in the future`);
      const quiet =
        status !== undefined &&
        status.seqCaptured === committed.seq &&
        BigInt(status.receivedAtMs) * 1_000_000n >= timeNs;
      if (!quiet) {
        throw new RewindError(
          'REWIND_POINT_INVALID',
          `writes captured up to ${text} are not all committed yet (last committed write: ${formatTimeNs(committed.timeNs)})`,
          { hint: 'wait, or run rewind seal --wait' },
        );
      }
      this.refuseInsideResync(committed.seq);
      return committed.seq;
    }
    const oldest = this.source.oldestPoint();
    if (oldest && timeNs < BigInt(oldest.timeUs) * 1000n) {
      const refusal = this.beforeHistory(`time ${text}`, oldest.seq, oldest.seq - 1);
      return this.archivedSeqAtTime(timeNs, text, refusal);
    }
    const tx = this.source.txAtOrBeforeTime(Number(timeNs / 1000n) + 1);
    if (!tx) return this.archivedSeqAtTime(timeNs, text, this.beforeFirstWrite(text));
    if (tx.kind === 'merged') {
      // Only the state after the run's last write was kept locally; the archive may have more.
      if (timeNs < BigInt(tx.timeLastUs) * 1000n)
        return this.archivedSeqAtTime(timeNs, text, thinned(`time ${text}`, tx));
      this.refuseInsideGap(tx.seqLast, timeNs, text);
      return tx.seqLast;
    }
    return this.seqAtTimeIn(tx, timeNs, text);
  }

  /**
   * A time the journal no longer resolves (`refusal`), from the archive's catalog: the last seq
   * of the archived transaction before it, when the time lies after that transaction's last
   * write and before the next one's first (capture times are kept to the µs per transaction).
   * A time among the writes of one is looked up in its archived redo when that is in the archive
   * cache (the last write at or before it); else ArchivedTimeError says what to fetch.
   */
  private archivedSeqAtTime(timeNs: bigint, text: string, refusal: RewindError): number {
    const tx = this.source.archiveTxAtOrBeforeTime?.(Number(timeNs / 1000n));
    if (tx === undefined) throw refusal;
    let seq = tx.seqLast;
    if (timeNs < BigInt(tx.timeLastUs + 1) * 1000n) {
      const times = this.source.archivedRecordTimes?.(tx.seqFirst, tx.seqLast);
      if (times === undefined) throw new ArchivedTimeError(text, tx.seqFirst, tx.seqLast);
      seq = tx.seqFirst - 1;
      for (const record of times) {
        if (record.timeNs > timeNs) break;
        seq = record.seq;
      }
      if (seq === 0) throw this.beforeFirstWrite(text);
    }
    const archive = this.source.archive?.(seq);
    // Undefined: the journal serves that seq itself (the archived transaction ends at its start).
    if (archive === undefined || archive.served) return seq;
    return this.orArchive(seq, refusal);
  }

  /**
   * A time before the first write. Its state is seq 0 (the empty volume), but a time there is
   * almost always a mistake (a time zone, a day before protection began), and restoring to it
   * would zero the volume: refused. Seq 0 is taken when it is asked for by number.
   */
  private beforeFirstWrite(text: string): RewindError {
    const first = this.source.firstTx();
    const firstTime = first ? ` (${formatTimeNs(BigInt(first.timeFirstUs) * 1000n)})` : '';
    return new RewindError(
      'REWIND_POINT_INVALID',
      first
        ? `time ${text} is before the first write in the history, seq ${first.seqFirst}${firstTime}`
        : `time ${text}: nothing has been written yet`,
      {
        hint:
          this.historyStart() === 0
            ? 'give a later time, or 0 for the empty volume before the first write'
            : 'give a later time',
      },
    );
  }

  /** The refusal of a point before `start`, naming the drop that took it when retention did. */
  private beforeHistory(what: string, start: number | undefined, seq: number): RewindError {
    const dropped = start === undefined ? undefined : this.source.droppedAt(seq);
    if (!dropped || start === undefined) return beforeHistory(what, start);
    const oldest = this.source.oldestPoint();
    const oldestTime = oldest ? ` (${formatTimeNs(BigInt(oldest.timeUs) * 1000n)})` : '';
    return new RewindError(
      'REWIND_POINT_INVALID',
      `${what} is no longer kept: seqs ${dropped.seqFirst - 1}..${dropped.seqLast - 1} were dropped on ${dropped.at} (${dropped.reason})`,
      { hint: `the oldest kept point is seq ${start}${oldestTime}` },
    );
  }

  private seqAtTimeIn(tx: TxRow, timeNs: bigint, text: string): number {
    let seq = tx.seqFirst - 1;
    let seqTimeNs = 0n;
    for (const record of this.source.recordsOf(tx.idx)) {
      if (record.timeNs > timeNs) break;
      seq = record.seq;
      seqTimeNs = record.timeNs;
    }
    if (seq === 0) throw this.beforeFirstWrite(text); // within the first write's microsecond
    this.refuseInsideResync(seq);
    if (timeNs > seqTimeNs) this.refuseInsideGap(seq, timeNs, text);
    return seq;
  }

  /**
   * Refuses a time inside a window without per-write history: after the write at `seq` and before
   * the resync that follows it has read production (from the window's start, when known).
   */
  private refuseInsideGap(seq: number, timeNs: bigint, text: string): void {
    const next = this.source.txContaining(seq + 1);
    // Only a resync opens such a window (a merged run after it has no redo to read either).
    if (!next || next.kind === 'redo' || next.kind === 'merged' || next.seqFirst !== seq + 1)
      return;
    const gapStartNs = this.source.gapStartNs(next.idx);
    if (gapStartNs === 0n || timeNs >= gapStartNs) {
      const from = gapStartNs > 0n ? formatTimeNs(gapStartNs) : `the write at seq ${seq}`;
      throw new RewindError(
        'REWIND_POINT_INVALID',
        `time ${text} falls in a window without per-write history (from ${from} until a resync from seq ${next.seqFirst})`,
        { hint: `choose seq ${seq}, or the end of that resync (rewind log marks its records)` },
      );
    }
  }
}

/** The refusal of a point inside a run thinned into `tx`, naming the points kept around it. */
function thinned(what: string, tx: TxRow): RewindError {
  const when = tx.thinnedAt ?? 'an earlier retention step';
  const end = formatTimeNs(BigInt(tx.timeLastUs) * 1000n);
  return new RewindError(
    'REWIND_POINT_INVALID',
    `${what} is no longer kept: seqs ${tx.seqFirst}..${tx.seqLast} were thinned into one ${tx.tier ?? ''} point on ${when}`,
    {
      hint: `the nearest kept points are seq ${tx.seqFirst - 1} (before the run) and seq ${tx.seqLast} (${end})`,
    },
  );
}

/** The refusal of a point before `start` (historyStart()), also while the history has not begun. */
function beforeHistory(what: string, start: number | undefined): RewindError {
  if (start === undefined) {
    return new RewindError(
      'REWIND_POINT_INVALID',
      `${what}: the history has not started yet (the first protection's resync of the data already on the volume is still arriving)`,
      { hint: 'wait until rewind status shows it committed' },
    );
  }
  return new RewindError(
    'REWIND_POINT_INVALID',
    `${what} is before the history starts (seq ${start})`,
  );
}
