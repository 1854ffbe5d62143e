// Retention: keeps the manager's journal (redo and undo on this host) within its policy, in the
// background, one bounded step at a time. A step either drops the oldest transactions (the
// oldest point moves forward) or thins a run of them into one transaction (retention-merge.ts);
// the heavy work runs off the turn queue, and only the swap takes a turn: one SQLite transaction
// replaces the rows, the views over the changed history are rebuilt at their own points, and the
// old files go once nothing refers to them. A crash at any step leaves the old history or the
// new one: a merged undo without its row, or files without rows, are removed at the next start.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  crashPoint,
  errorMessage,
  formatTimeNs,
  nowNs,
  rethrowIfBug,
  type LogFunction,
} from '../core/index.js';
import { fsyncDir } from '../platform/index.js';
import type { Applier } from './apply-pool.js';
import type { Catalog, TxRow } from './catalog.js';
import {
  AUTO_JOURNAL_SHARE,
  AUTO_WARN_SHARE,
  DEFAULT_POLICY,
  dropForSpace,
  formatDuration,
  MERGE_TXS_MAX,
  plan,
  policyFrom,
  policyText,
  promisedSpanMs,
  roomDrop,
  tierLabel,
  type Plan,
  type PlanTx,
  type PolicyText,
  type RetentionAction,
  type RetentionPolicy,
} from './retention-policy.js';
import type { TxFiles } from './txfiles.js';

/** What views hold against retention (view-registry.ts). */
export interface ViewPins {
  /** Points that must stay addressable: bookmarks and open views. */
  keepPoints: number[];
  /** The oldest point may not move past this seq (pinned bookmarks, open views, private views). */
  floorSeq: number | undefined;
  /** Private views (restores, exports) read history after this seq: it may not change. */
  frozenAfterSeq: number | undefined;
}

/** What a drop took out of the catalog: its range, size and the files left to remove. */
interface Dropped {
  seqFirst: number;
  seqLast: number;
  count: number;
  bytes: number;
  timeLastUs: number;
  files: string[];
}

export interface RetentionHost {
  catalog: Catalog;
  txFiles: TxFiles;
  volumeCount(): number;
  /** Runs `work` between transactions (the swap of a step). */
  exclusive<T>(work: () => Promise<T>): Promise<T>;
  viewPins(): ViewPins;
  /** Rebuilds, at their own points, the views that read history before `seq`. */
  rebuildViewsBefore(seq: number): Promise<void>;
  /** Where merged undos are built (a worker thread of their own, or in-thread). */
  merger: Applier;
  log: LogFunction;
  /** The file system holding the journal ('auto' limits are a share of its size). */
  dataDir: string;
  /** The first restorable point (PointResolver.historyStart), undefined before there is one. */
  historyStart(): number | undefined;
  /** Between runs with nothing to do (default IDLE_INTERVAL_MS; the simulation looks sooner). */
  idleIntervalMs?: number;
  /**
   * With an archive: the last seq archived. Retention merges and drops as expired only history
   * up to it; a drop at the journal limit past it is reported as history lost to the archive.
   */
  archivedThroughSeq?: () => number;
  /** The archive as the tier after the journal, for the status (undefined: none). */
  archiveTier?: () => ArchiveTier;
}

/** The archive as `rewind retention` shows it, after the journal's tiers. */
export interface ArchiveTier {
  url: string;
  /** Points from this seq to `throughSeq` are kept there (per write); null while empty. */
  fromSeq: number | null;
  throughSeq: number;
  objects: number;
  storedBytes: number;
  backlogTransactions: number;
  /** The archive's own policy and where it stands (archive-retention.ts). */
  policy?: { keepEveryWrite: string; keep: string };
  /** Every write is kept there from this seq on (null: nothing archived). */
  everyWriteFromSeq?: number | null;
  /** The full image the points before it are rebuilt from (null: none yet). */
  baseSeq?: number | null;
  /** Full images kept as coarser points before the base. */
  coarsePoints?: number;
  /** Why the archive's policy cannot delete what it would (no base yet). */
  stuck?: string | null;
}

export interface RetentionAlert {
  level: 'warn' | 'error';
  message: string;
}

export interface TierStatus {
  tier: string;
  /** Ages of history the tier covers (ms): from `fromAgeMs` to `toAgeMs`. */
  fromAgeMs: number;
  toAgeMs: number;
  transactions: number;
  points: number;
  bytes: number;
  oldest: string | null;
  newest: string | null;
}

export interface RetentionStatus {
  policy: Required<PolicyText>;
  journalBytes: number;
  journalBytesMax: number;
  journalBytesWarn: number;
  oldestSeq: number;
  oldestTime: string | null;
  /** From this point on, every write is a point (none thinned after it). */
  everyWriteFromSeq: number;
  tiers: TierStatus[];
  /** Journal growth over the last RATE_WINDOW_MS, and when the limit is reached at that rate. */
  bytesPerSecond: number;
  secondsUntilLimit: number | null;
  /** Applying waits: the journal is full of history the policy keeps (stop-applying). */
  applyingStopped: boolean;
  alerts: RetentionAlert[];
  /** The archive tier, when one is configured. */
  archive: ArchiveTier | null;
  pendingActions: number;
  steps: { merges: number; drops: number; freedBytes: number; lastError: string | null };
}

export interface Simulation {
  policy: Required<PolicyText>;
  actions: {
    kind: 'merge' | 'drop';
    seqFirst: number;
    seqLast: number;
    transactions: number;
    /** Bytes it frees at least (a merge frees its redo at least; a drop all of it). */
    freedBytesAtLeast: number;
    detail: string;
  }[];
  freedBytesAtLeast: number;
  oldestSeqAfter: number;
  stuck: string | null;
}

/** Between steps with nothing to do. */
const IDLE_INTERVAL_MS = 10_000;
/** Steps run back to back while there is work, each on its own turn of the event loop. */
const STEPS_PER_RUN_MAX = 64;
/** Rows of history older than the every-write window read per plan (thinned history is short). */
const PLAN_TXS_MAX = 100_000;
/** A drop at the limit brings the journal this share under it, so not every commit drops. */
const ROOM_SLACK_SHARE = 0.01;
/** The oldest transactions read first to find the drop that makes room (more if short). */
const ROOM_TXS_FIRST = 256;
/** Journal growth is measured over this window. */
const RATE_WINDOW_MS = 10 * 60_000;
/** The share of the promised span held below which history is reported short (Zerto). */
const HELD_WARN_SHARE = 0.85;
const HELD_ERROR_SHARE = 0.75;

export class Retention {
  private readonly host: RetentionHost;
  private policyNow: RetentionPolicy;
  private timer: NodeJS.Timeout | undefined;
  /** The run under way (background or asked for): runs never overlap. */
  private running: Promise<void> | undefined;
  private stopped = false;
  private stuck: string | undefined;
  private pending = 0;
  private merges = 0;
  private drops = 0;
  private freedBytes = 0;
  private lastError: string | undefined;
  /** The last drop of history the policy still promised, for the alerts. */
  private promisedDrop: { message: string; atMs: number } | undefined;
  /** The step under way, if any (the simulation counts crashes inside one). */
  working: 'merge' | 'drop' | undefined;
  /** Files of drops made in a turn still being removed (the simulation counts those too). */
  removalsPending = 0;
  /** Files of rows dropped in a turn, waiting for the step under way (a merge may read them). */
  private deferredFiles: string[] = [];
  private removing: Promise<void> = Promise.resolve();
  /** Drops made in a transaction's turn to keep the journal within its limit. */
  roomDrops = 0;
  /** Drops that took history the archive did not have yet, and the last one's message. */
  unarchivedDrops = 0;
  private unarchivedDrop: { message: string; atMs: number } | undefined;
  /** The journal as of the last plan plus what committed since, against the limit then. */
  private approxJournalBytes = 0;
  private approxJournalBytesMax = Number.POSITIVE_INFINITY;

  constructor(host: RetentionHost, policy: RetentionPolicy) {
    this.host = host;
    this.policyNow = policy;
  }

  /** The stored policy, changed by `text` where it says anything (flags and config at start). */
  static policyOf(catalog: Catalog, text: PolicyText | undefined): RetentionPolicy {
    const stored = catalog.getMeta('retentionPolicy');
    const base = stored ? policyFrom(JSON.parse(stored) as PolicyText) : DEFAULT_POLICY;
    const policy = text ? policyFrom(text, base) : base;
    catalog.setMeta('retentionPolicy', JSON.stringify(policyText(policy)));
    return policy;
  }

  get policy(): RetentionPolicy {
    return this.policyNow;
  }

  /** Changes the policy of the running manager: stored, and taken by the next step. */
  setPolicy(text: PolicyText): RetentionPolicy {
    const policy = policyFrom(text, this.policyNow);
    this.host.catalog.setMeta('retentionPolicy', JSON.stringify(policyText(policy)));
    this.policyNow = policy;
    this.host.log('info', `retention policy changed: ${JSON.stringify(policyText(policy))}`);
    this.kick();
    return policy;
  }

  start(): void {
    this.stopped = false;
    this.schedule(0);
  }

  /** Asks for a run soon (a commit that may have taken the journal over its limit, say). */
  kick(): void {
    if (!this.stopped && this.running === undefined) this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.running;
    this.flushRemovals();
    await this.removing;
  }

  /** A transaction committed: a run starts at once when the journal may be over its limit. */
  committed(row: TxRow): void {
    this.approxJournalBytes += row.redoBytes + row.undoBytes;
    if (this.approxJournalBytes > this.approxJournalBytesMax) this.kick();
  }

  /** Why new segments must wait (stop-applying with a full journal), or undefined. */
  admission(): string | undefined {
    return this.policyNow.onFull === 'stop-applying' ? this.stuck : undefined;
  }

  private schedule(delayMs: number): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.run(), delayMs);
    this.timer.unref();
  }

  private run(): void {
    if (this.running !== undefined || this.stopped) return;
    let failed = false;
    this.running = this.steps(STEPS_PER_RUN_MAX)
      .catch((error: unknown) => {
        rethrowIfBug(error);
        failed = true;
        this.lastError = errorMessage(error);
        this.host.log('error', `retention step failed (retried later): ${this.lastError}`);
      })
      .finally(() => {
        this.running = undefined;
        const idleMs = this.host.idleIntervalMs ?? IDLE_INTERVAL_MS;
        // A step that failed is tried again after the idle interval, not at once: a lasting
        // failure (an unreadable undo, a full disk) must not become a loop of plans and retries.
        if (!this.stopped) this.schedule(this.pending > 0 && !failed ? 0 : idleMs);
      });
  }

  /** Runs steps until there is nothing left to do (tests, and an operator waiting for it). */
  async settle(stepsMax: number): Promise<void> {
    for (let round = 0; round < stepsMax; round++) {
      while (this.running !== undefined) await this.running;
      if (this.stopped) return;
      const current = this.steps(1);
      this.running = current;
      try {
        await current;
      } finally {
        this.running = undefined;
      }
      if (this.pending === 0) return;
    }
  }

  private async steps(stepsMax: number): Promise<void> {
    for (let step = 0; step < stepsMax && !this.stopped; step++) {
      if (!(await this.step())) return;
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** Plans against the history now and carries out the first action; false when idle. */
  private async step(): Promise<boolean> {
    const planned = this.plan(this.policyNow, MERGE_TXS_MAX);
    // What commits add is counted against this (committed()); a simulation leaves it alone.
    this.approxJournalBytes = planned.journalBytes;
    this.approxJournalBytesMax = planned.journalBytesMax;
    this.stuck = planned.stuck;
    this.pending = planned.actions.length;
    const action = planned.actions[0];
    if (action === undefined) return false;
    this.working = action.kind;
    try {
      if (action.kind === 'drop') await this.drop(action);
      else await this.merge(action);
    } finally {
      this.working = undefined;
      this.flushRemovals();
    }
    this.lastError = undefined;
    return true;
  }

  // ---- planning ----

  private journalLimits(policy: RetentionPolicy): { max: number; warn: number } {
    let max = policy.journalBytesMax;
    if (max === 'auto') max = this.autoLimit();
    const warn =
      policy.journalBytesWarn === 'auto'
        ? Math.floor(max * AUTO_WARN_SHARE)
        : policy.journalBytesWarn;
    return { max, warn };
  }

  /** Half the file system the journal is on; unbounded (and said so) when it cannot be read. */
  private autoLimit(): number {
    try {
      const stats = fs.statfsSync(this.host.dataDir);
      return Math.floor(stats.blocks * stats.bsize * AUTO_JOURNAL_SHARE);
    } catch (error) {
      rethrowIfBug(error);
      this.lastError = `cannot size the 'auto' journal limit: ${errorMessage(error)}; set --journal-max`;
      return Number.POSITIVE_INFINITY;
    }
  }

  private plan(
    policy: RetentionPolicy,
    mergeTxsMax: number,
  ): Plan & { journalBytes: number; journalBytesMax: number } {
    const catalog = this.host.catalog;
    const nowUs = nowUsOfCapture();
    // The plan needs every transaction older than the every-write window (few, once thinned),
    // plus the oldest ones when the journal is over its limit (drops take a prefix).
    const old = catalog.committedTxsBefore(nowUs - policy.keepEveryWriteMs * 1000, PLAN_TXS_MAX);
    const journalBytes = catalog.journalBytes();
    const { max } = this.journalLimits(policy);
    const rows =
      journalBytes > max && old.length < PLAN_TXS_MAX ? catalog.oldestTxs(PLAN_TXS_MAX) : old;
    const pins = this.host.viewPins();
    const floor = minDefined(pins.floorSeq, this.pinnedBookmarkFloor(nowUs));
    const planned = plan({
      txs: rows.map(planTx),
      nowUs,
      policy,
      journalBytesMax: max,
      journalBytes,
      keepPoints: [...pins.keepPoints, ...catalog.bookmarks().map((b) => b.seq)],
      frozenAfterSeq: pins.frozenAfterSeq,
      dropFloorSeq: floor,
      mergeTxsMax,
      archivedThroughSeq: this.host.archivedThroughSeq?.(),
    });
    return { ...planned, journalBytes, journalBytesMax: max };
  }

  private pinnedBookmarkFloor(nowUs: number): number | undefined {
    let floor: number | undefined;
    for (const bookmark of this.host.catalog.bookmarks()) {
      const until = bookmark.pinnedUntil;
      if (until === null || (until !== 'forever' && Date.parse(until) * 1000 <= nowUs)) continue;
      floor = minDefined(floor, bookmark.seq);
    }
    return floor;
  }

  // ---- the two steps ----

  private async merge(action: Extract<RetentionAction, { kind: 'merge' }>): Promise<void> {
    const { catalog, txFiles } = this.host;
    const rows = catalog.txsBetween(action.firstIdx, action.lastIdx);
    const first = rows[0] as TxRow;
    const last = rows[rows.length - 1] as TxRow;
    const undoGen = Math.max(...rows.map((r) => r.undoGen)) + 1;
    const file = txFiles.undoPath(last.idx, undoGen);
    const header = {
      volumeSetId: Buffer.from((catalog.getMeta('volumeSetId') ?? '').replace(/-/g, ''), 'hex'),
      segmentIndex: last.idx,
      seqFirst: first.seqFirst,
      seqLast: last.seqLast,
    };
    const inputs = rows.map((r) => txFiles.undoPath(r.idx));
    const indexFile = txFiles.indexPath(last.idx, undoGen);
    const merged = await this.host.merger.mergeUndo(
      inputs,
      file,
      indexFile,
      header,
      this.host.volumeCount(),
    );
    crashPoint('merge'); // merged undo durable, rows not swapped (a restart removes the file)
    const old = rows.map((r) => this.filesOf(r));
    const swapped = await this.host.exclusive(async () => {
      // Pins may have changed while the undo was built: a view made inside the run since.
      const pins = this.host.viewPins();
      const keep = [...pins.keepPoints, ...catalog.bookmarks().map((b) => b.seq)];
      const frozen = pins.frozenAfterSeq !== undefined && last.seqLast > pins.frozenAfterSeq;
      if (frozen || keep.some((p) => p > first.seqFirst - 1 && p < last.seqLast)) return false;
      // A drop in a transaction's turn (makeRoom) may have taken some of the run since.
      const now = catalog.txsBetween(first.idx, last.idx);
      if (now.length !== rows.length || now[0]?.idx !== first.idx) return false;
      catalog.mergeTxs(
        first.idx,
        last.idx,
        { undoGen, undoBytes: merged.bytes, undoCrc: merged.fileCrc, tier: action.tier },
        new Date().toISOString(),
      );
      for (const row of rows) txFiles.evict(row.idx);
      // Its index file was written beside the merged undo (the next view load reads it).
      txFiles.setLayout(last.idx, { hasRedo: false, undoGen });
      await this.host.rebuildViewsBefore(last.seqLast);
      return true;
    });
    if (!swapped) {
      await fsp.rm(file, { force: true });
      await fsp.rm(indexFile, { force: true });
      return;
    }
    crashPoint('swap'); // rows swapped, old files still there (a restart removes them)
    await this.removeFiles(old.flat());
    const before = rows.reduce((sum, r) => sum + r.redoBytes + r.undoBytes, 0);
    this.merges += 1;
    this.freedBytes += before - merged.bytes;
    this.host.log(
      'info',
      `retention: thinned seq ${first.seqFirst}..${last.seqLast} (${rows.length} transactions) into one ${action.tier} point; ${before - merged.bytes} bytes freed`,
    );
  }

  private async drop(action: Extract<RetentionAction, { kind: 'drop' }>): Promise<void> {
    const dropped = await this.host.exclusive(async () => this.dropRows(action));
    if (dropped === undefined) return;
    crashPoint('swap');
    await this.removeFiles(dropped.files);
    this.droppedLog(action, dropped);
  }

  /**
   * The catalog side of a drop (the caller holds the turn): the rows go in one SQLite
   * transaction, unless a pin taken since the plan holds them. The files are the caller's to
   * remove.
   */
  private dropRows(action: Extract<RetentionAction, { kind: 'drop' }>): Dropped | undefined {
    const { catalog, txFiles } = this.host;
    const rows = catalog.txsBetween(0, action.lastIdx);
    // Drops take a prefix: none left means a drop in a transaction's turn took them since.
    const last = rows[rows.length - 1];
    if (last === undefined) return undefined;
    const floor = minDefined(
      this.host.viewPins().floorSeq,
      this.pinnedBookmarkFloor(nowUsOfCapture()),
    );
    if (floor !== undefined && last.seqLast > floor) return undefined;
    const range = catalog.dropTxs(last.idx, action.reason, new Date().toISOString());
    for (const row of rows) txFiles.evict(row.idx);
    return {
      ...range,
      count: rows.length,
      bytes: rows.reduce((sum, r) => sum + r.redoBytes + r.undoBytes, 0),
      timeLastUs: last.timeLastUs,
      files: rows.flatMap((r) => this.filesOf(r)),
    };
  }

  private droppedLog(action: Extract<RetentionAction, { kind: 'drop' }>, dropped: Dropped): void {
    this.drops += 1;
    const archivedSeq = this.host.archivedThroughSeq?.();
    if (archivedSeq !== undefined && dropped.seqLast > archivedSeq) {
      const from = Math.max(dropped.seqFirst, archivedSeq + 1);
      const lost = `seqs ${from}..${dropped.seqLast} dropped before they were archived (${action.reason}): their per-write history is gone from both tiers`;
      this.unarchivedDrop = { message: lost, atMs: nowUsOfCapture() / 1000 };
      this.unarchivedDrops += 1;
      this.host.log('error', `retention: ${lost}`);
    }
    this.freedBytes += dropped.bytes;
    const message = `retention: dropped seq ${dropped.seqFirst}..${dropped.seqLast} (${dropped.count} transactions, ${dropped.bytes} bytes): ${action.reason}; the oldest point is now seq ${dropped.seqLast} (${formatTimeNs(BigInt(dropped.timeLastUs) * 1000n)})`;
    if (action.promised) {
      this.promisedDrop = { message, atMs: nowUsOfCapture() / 1000 };
      this.host.log('error', `${message}; this was history the policy keeps`);
    } else {
      this.host.log('info', message);
    }
  }

  // ---- room at the limit, in a transaction's turn ----

  /**
   * Called in a transaction's turn once its redo and undo are stored, before it is applied and
   * committed: the journal limit holds at every commit, not only after the next background
   * step. Under drop-oldest the oldest history goes at once (the catalog's rows now, the files
   * in the background, after any merge reading them); under stop-applying the transaction
   * waits, with the reason returned. Pins may keep the journal over its limit (the plan reports
   * it as stuck); so may one transaction larger than the whole limit, which is let through.
   */
  makeRoom(bytes: number, resync: boolean): string | undefined {
    const { max } = this.journalLimits(this.policyNow);
    const catalog = this.host.catalog;
    const journal = catalog.journalBytes();
    if (journal + bytes <= max || bytes > max) return undefined;
    const floor = minDefined(
      this.host.viewPins().floorSeq,
      this.pinnedBookmarkFloor(nowUsOfCapture()),
    );
    const target = Math.max(bytes, max - Math.floor(max * ROOM_SLACK_SHARE));
    let found: { lastIdx: number | undefined; short: boolean } = {
      lastIdx: undefined,
      short: true,
    };
    for (let limit = ROOM_TXS_FIRST; ; limit *= 4) {
      const rows = catalog.oldestTxs(limit);
      found = roomDrop({
        txs: rows.map(planTx),
        journalBytes: journal,
        incomingBytes: bytes,
        targetBytes: target,
        dropFloorSeq: floor,
      });
      if (!found.short || rows.length < limit || limit >= PLAN_TXS_MAX) break;
    }
    // Nothing can be dropped at all (pins hold even the oldest history, or it is one resync
    // window with no consistent end yet): waiting would free nothing, so it goes over the limit,
    // and the plan reports it.
    if (found.lastIdx === undefined) return undefined;
    if (this.policyNow.onFull === 'stop-applying') {
      // A resync window already begun is let through to its end, as at admission.
      if (resync) return undefined;
      return `the journal would pass its limit (${journal} bytes held, ${bytes} more, limit ${max}) with only history the policy keeps; applying waits (--on-journal-full stop-applying)`;
    }
    const action = dropForSpace(found.lastIdx);
    const dropped = this.dropRows(action);
    if (dropped === undefined) return undefined;
    crashPoint('swap'); // rows dropped in the turn, files still there (a restart removes them)
    this.roomDrops += 1;
    this.droppedLog(action, dropped);
    this.removeLater(dropped.files);
    return undefined;
  }

  /** Files of rows dropped in a turn: removed now, or once the step under way is done. */
  private removeLater(files: readonly string[]): void {
    this.deferredFiles.push(...files);
    if (this.working === undefined) this.flushRemovals();
  }

  private flushRemovals(): void {
    if (this.deferredFiles.length === 0) return;
    const files = this.deferredFiles.splice(0);
    this.removalsPending += 1;
    const removal = this.removing.then(() => this.removeFiles(files));
    this.removing = removal
      .catch((error: unknown) => {
        rethrowIfBug(error);
        // Left behind: a restart removes files without a row.
        this.host.log('warn', `retention: could not remove dropped files: ${errorMessage(error)}`);
      })
      .finally(() => {
        this.removalsPending -= 1;
      });
  }

  private filesOf(row: TxRow): string[] {
    const txFiles = this.host.txFiles;
    const files = [txFiles.undoPath(row.idx, row.undoGen), txFiles.indexPath(row.idx, row.undoGen)];
    if (row.kind !== 'merged') files.push(txFiles.redoPath(row.idx));
    return files;
  }

  private async removeFiles(files: readonly string[]): Promise<void> {
    const dirs = new Set<string>();
    for (const file of files) {
      await fsp.rm(file, { force: true });
      dirs.add(path.dirname(file));
    }
    for (const dir of dirs) if (fs.existsSync(dir)) await fsyncDir(dir);
  }

  // ---- what it shows ----

  status(): RetentionStatus {
    const catalog = this.host.catalog;
    const policy = this.policyNow;
    const nowMs = nowUsOfCapture() / 1000;
    const { max, warn } = this.journalLimits(policy);
    const journalBytes = catalog.journalBytes();
    const oldest = this.oldestPoint();
    // committed_at is stamped from the wall clock (Date), capture times from nowNs.
    const since = new Date(Date.now() - RATE_WINDOW_MS).toISOString();
    const bytesPerSecond = catalog.journalBytesSince(since) / (RATE_WINDOW_MS / 1000);
    const secondsUntilLimit =
      bytesPerSecond > 0 && journalBytes < max
        ? Math.round((max - journalBytes) / bytesPerSecond)
        : null;
    return {
      policy: policyText(policy),
      journalBytes,
      journalBytesMax: max,
      journalBytesWarn: warn,
      oldestSeq: oldest.seq,
      oldestTime: oldest.timeUs > 0 ? formatTimeNs(BigInt(oldest.timeUs) * 1000n) : null,
      everyWriteFromSeq: Math.max(oldest.seq, catalog.lastMergedSeq() ?? 0),
      tiers: this.tierStatus(policy, nowMs),
      bytesPerSecond: Math.round(bytesPerSecond),
      secondsUntilLimit,
      applyingStopped: this.admission() !== undefined,
      alerts: this.alerts({ journalBytes, max, warn, oldestUs: oldest.timeUs, nowMs }),
      archive: this.host.archiveTier?.() ?? null,
      pendingActions: this.pending,
      steps: {
        merges: this.merges,
        drops: this.drops,
        freedBytes: this.freedBytes,
        lastError: this.lastError ?? null,
      },
    };
  }

  /**
   * The oldest restorable point: where the last drop left it, else where the history starts (the
   * state before the first write, or the end of a resync it begins with).
   */
  private oldestPoint(): { seq: number; timeUs: number } {
    const dropped = this.host.catalog.oldestPoint();
    if (dropped) return dropped;
    const first = this.host.catalog.firstTx();
    const seq = this.host.historyStart() ?? (first ? first.seqLast : 0);
    const tx = seq > 0 ? this.host.catalog.txContaining(seq) : undefined;
    return { seq, timeUs: tx?.timeLastUs ?? first?.timeFirstUs ?? 0 };
  }

  private tierStatus(policy: RetentionPolicy, nowMs: number): TierStatus[] {
    const spans = [
      { tier: 'every write', fromAgeMs: 0, toAgeMs: policy.keepEveryWriteMs },
      ...policy.tiers.map((tier, i) => ({
        tier: tierLabel(tier),
        fromAgeMs: i === 0 ? policy.keepEveryWriteMs : (policy.tiers[i - 1]?.forMs ?? 0),
        toAgeMs: tier.forMs,
      })),
    ];
    return spans.map((span) => {
      const stats = this.host.catalog.spanStats(
        (nowMs - span.toAgeMs) * 1000,
        (nowMs - span.fromAgeMs) * 1000 + 1,
      );
      const time = (us: number | null): string | null =>
        us === null ? null : formatTimeNs(BigInt(us) * 1000n);
      return {
        ...span,
        transactions: stats.transactions,
        points: stats.points,
        bytes: stats.bytes,
        oldest: time(stats.firstUs),
        newest: time(stats.lastUs),
      };
    });
  }

  private alerts(at: {
    journalBytes: number;
    max: number;
    warn: number;
    oldestUs: number;
    nowMs: number;
  }): RetentionAlert[] {
    const alerts: RetentionAlert[] = [];
    if (at.journalBytes > at.max) {
      alerts.push({
        level: 'error',
        message: `the journal holds ${at.journalBytes} bytes, over its limit of ${at.max}`,
      });
    } else if (at.journalBytes > at.warn) {
      alerts.push({
        level: 'warn',
        message: `the journal holds ${at.journalBytes} bytes, over its warning threshold of ${at.warn}`,
      });
    }
    if (this.stuck) alerts.push({ level: 'error', message: this.stuck });
    if (this.promisedDrop && at.nowMs - this.promisedDrop.atMs < RATE_WINDOW_MS * 6) {
      alerts.push({ level: 'error', message: this.promisedDrop.message });
    }
    if (this.unarchivedDrop && at.nowMs - this.unarchivedDrop.atMs < RATE_WINDOW_MS * 6) {
      alerts.push({ level: 'error', message: this.unarchivedDrop.message });
    }
    const dropped = this.host.catalog.oldestPoint() !== undefined;
    const promisedMs = promisedSpanMs(this.policyNow);
    const heldMs = at.oldestUs > 0 ? at.nowMs - at.oldestUs / 1000 : 0;
    if (dropped && heldMs < promisedMs * HELD_WARN_SHARE) {
      alerts.push({
        level: heldMs < promisedMs * HELD_ERROR_SHARE ? 'error' : 'warn',
        message: `history reaches back ${formatDuration(Math.round(heldMs / 1000) * 1000)} of the ${formatDuration(promisedMs)} the policy keeps (${Math.round((100 * heldMs) / promisedMs)} %)`,
      });
    }
    if (this.lastError)
      alerts.push({ level: 'warn', message: `the last retention step failed: ${this.lastError}` });
    return alerts;
  }

  /** What `text` would change, against the history now; changes nothing. */
  simulate(text: PolicyText): Simulation {
    const policy = policyFrom(text, this.policyNow);
    const planned = this.plan(policy, Number.POSITIVE_INFINITY);
    const catalog = this.host.catalog;
    const actions = planned.actions.map((action) => {
      const rows = catalog.txsBetween(
        action.kind === 'merge' ? action.firstIdx : 0,
        action.kind === 'merge' ? action.lastIdx : action.lastIdx,
      );
      const first = rows[0] as TxRow;
      const last = rows[rows.length - 1] as TxRow;
      const freed = rows.reduce(
        (sum, r) => sum + (action.kind === 'merge' ? r.redoBytes : r.redoBytes + r.undoBytes),
        0,
      );
      return {
        kind: action.kind,
        seqFirst: first.seqFirst,
        seqLast: last.seqLast,
        transactions: rows.length,
        freedBytesAtLeast: freed,
        detail: action.kind === 'merge' ? `thinned into one ${action.tier} point` : action.reason,
      };
    });
    const lastDrop = [...planned.actions].reverse().find((a) => a.kind === 'drop');
    const oldestAfter = lastDrop
      ? (catalog.tx(lastDrop.lastIdx)?.seqLast ?? 0)
      : this.oldestPoint().seq;
    return {
      policy: policyText(policy),
      actions,
      freedBytesAtLeast: actions.reduce((sum, a) => sum + a.freedBytesAtLeast, 0),
      oldestSeqAfter: oldestAfter,
      stuck: planned.stuck ?? null,
    };
  }
}

function planTx(row: TxRow): PlanTx {
  return {
    idx: row.idx,
    kind: row.kind,
    seqFirst: row.seqFirst,
    seqLast: row.seqLast,
    timeFirstUs: row.timeFirstUs,
    timeLastUs: row.timeLastUs,
    bytes: row.redoBytes + row.undoBytes,
    redoBytes: row.redoBytes,
    tier: row.tier,
  };
}

/**
 * Now on the clock capture times are taken on (core nowNs): ages of history are measured against
 * the times its writes were stamped with, in the simulation too.
 */
function nowUsOfCapture(): number {
  return Number(nowNs() / 1000n);
}

function minDefined(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.min(a, b);
}
