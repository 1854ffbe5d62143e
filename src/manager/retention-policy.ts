// The retention policy and its plan, pure: what an operator sets (a journal size limit, a window
// in which every write is kept, coarser tiers after it, what to do when the limit is reached with
// only promised history left), and, for a list of committed transactions, which runs to thin into
// one point per tier interval and which of the oldest to drop. Nothing here touches a file.
import { parseSize, RewindError } from '../core/index.js';
import type { TxKind } from './catalog.js';

/** One coarser tier: one point per `everyMs`, kept until history is `forMs` old. */
export interface RetentionTier {
  everyMs: number;
  forMs: number;
}

export type OnJournalFull = 'drop-oldest' | 'stop-applying';

export interface RetentionPolicy {
  /** Hard limit of the journal (redo and undo on this host), or 'auto': half its file system. */
  journalBytesMax: number | 'auto';
  /** Warn above this, or 'auto': 80 % of the limit. */
  journalBytesWarn: number | 'auto';
  keepEveryWriteMs: number;
  tiers: RetentionTier[];
  onFull: OnJournalFull;
}

/**
 * For a fresh install: every write for a day, then a point a minute for a week, an hour for 30
 * days, a day for a year, in at most half the file system holding the data directory; at the
 * limit, the oldest history goes first (and the operator is told).
 */
const HOUR_MS = 3_600_000;
const DAY_MS = 24 * HOUR_MS;

export const DEFAULT_POLICY: RetentionPolicy = {
  journalBytesMax: 'auto',
  journalBytesWarn: 'auto',
  keepEveryWriteMs: DAY_MS,
  tiers: [
    { everyMs: 60_000, forMs: 7 * DAY_MS },
    { everyMs: HOUR_MS, forMs: 30 * DAY_MS },
    { everyMs: DAY_MS, forMs: 365 * DAY_MS },
  ],
  onFull: 'drop-oldest',
};

/** 'auto' limit: this share of the data directory's file system. */
export const AUTO_JOURNAL_SHARE = 0.5;
/** 'auto' warning: this share of the limit. */
export const AUTO_WARN_SHARE = 0.8;
/** The finest tier interval accepted (a point per second). */
const TIER_EVERY_MS_MIN = 1000;

const DURATION_UNITS_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
  w: 7 * 86_400_000,
};

/** "90s", "15m", "4h", "7d", "2w" (also a plain number of seconds). */
export function parseDuration(text: string, what: string): number {
  const match = /^\s*(\d+)\s*(ms|s|m|h|d|w)?\s*$/.exec(text);
  if (!match) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not a duration`, {
      hint: 'a number with s, m, h, d or w (e.g. 90s, 15m, 4h, 7d)',
    });
  }
  return Number(match[1]) * (DURATION_UNITS_MS[match[2] ?? 's'] as number);
}

export function formatDuration(ms: number): string {
  for (const unit of ['w', 'd', 'h', 'm', 's'] as const) {
    const size = DURATION_UNITS_MS[unit] as number;
    if (ms >= size && ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

/** "1m:24h,1h:7d,1d:90d": EVERY:FOR tiers, each coarser and longer than the one before. */
export function parseTiers(text: string): RetentionTier[] {
  if (text.trim() === '' || text.trim() === 'none') return [];
  return text.split(',').map((part) => {
    const match = /^\s*([^:]+):([^:]+)\s*$/.exec(part);
    if (!match) {
      throw new RewindError('REWIND_BAD_ARGUMENT', `tier "${part}" is not EVERY:FOR`, {
        hint: 'e.g. --keep 1m:7d,1h:30d,1d:365d (each FOR longer than --keep-every-write and the tier before)',
      });
    }
    return {
      everyMs: parseDuration(match[1] as string, 'tier interval'),
      forMs: parseDuration(match[2] as string, 'tier span'),
    };
  });
}

export function formatTiers(tiers: readonly RetentionTier[]): string {
  return tiers.map(tierLabel).join(',') || 'none';
}

export function tierLabel(tier: RetentionTier): string {
  return `${formatDuration(tier.everyMs)}:${formatDuration(tier.forMs)}`;
}

/** A policy as the flags, the config file and the API give it (all strings, all optional). */
export interface PolicyText {
  journalMax?: string;
  journalWarn?: string;
  keepEveryWrite?: string;
  keep?: string;
  onFull?: string;
}

/** `base` with the given settings changed; refuses anything it cannot take, naming it. */
export function policyFrom(
  text: PolicyText,
  base: RetentionPolicy = DEFAULT_POLICY,
): RetentionPolicy {
  const size = (value: string, what: string): number | 'auto' =>
    value.trim() === 'auto' ? 'auto' : parseSize(value, what);
  const policy: RetentionPolicy = {
    journalBytesMax:
      text.journalMax === undefined ? base.journalBytesMax : size(text.journalMax, '--journal-max'),
    journalBytesWarn:
      text.journalWarn === undefined
        ? base.journalBytesWarn
        : size(text.journalWarn, '--journal-warn'),
    keepEveryWriteMs:
      text.keepEveryWrite === undefined
        ? base.keepEveryWriteMs
        : parseDuration(text.keepEveryWrite, '--keep-every-write'),
    tiers: text.keep === undefined ? base.tiers : parseTiers(text.keep),
    onFull: text.onFull === undefined ? base.onFull : onFullFrom(text.onFull),
  };
  checkPolicy(policy);
  return policy;
}

function onFullFrom(text: string): OnJournalFull {
  if (text === 'drop-oldest' || text === 'stop-applying') return text;
  throw new RewindError('REWIND_BAD_ARGUMENT', `--on-journal-full "${text}" is not a choice`, {
    hint: 'drop-oldest (the default) or stop-applying',
  });
}

export function checkPolicy(policy: RetentionPolicy): void {
  const max = policy.journalBytesMax;
  const warn = policy.journalBytesWarn;
  if (max !== 'auto' && max <= 0) {
    throw new RewindError('REWIND_BAD_ARGUMENT', '--journal-max must be more than 0 bytes');
  }
  if (max !== 'auto' && warn !== 'auto' && warn > max) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `--journal-warn (${warn}) is above --journal-max (${max})`,
    );
  }
  let spanMs = policy.keepEveryWriteMs;
  let everyMs = 0;
  for (const tier of policy.tiers) {
    const label = tierLabel(tier);
    if (tier.everyMs < TIER_EVERY_MS_MIN) {
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `tier ${label}: one point per second is the finest`,
      );
    }
    if (tier.forMs <= spanMs) {
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `tier ${label} ends at ${formatDuration(tier.forMs)}, not after the tier before it (${formatDuration(spanMs)})`,
        { hint: 'each tier keeps history longer than the one before it' },
      );
    }
    if (tier.everyMs < everyMs) {
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `tier ${label} is finer than the tier before it`,
        {
          hint: 'each tier is as coarse as the one before it or coarser',
        },
      );
    }
    spanMs = tier.forMs;
    everyMs = tier.everyMs;
  }
}

/** How long the policy keeps history at all: its last tier's span, or the every-write window. */
export function promisedSpanMs(policy: RetentionPolicy): number {
  return policy.tiers[policy.tiers.length - 1]?.forMs ?? policy.keepEveryWriteMs;
}

export function policyText(policy: RetentionPolicy): Required<PolicyText> {
  const size = (value: number | 'auto'): string => (value === 'auto' ? 'auto' : String(value));
  return {
    journalMax: size(policy.journalBytesMax),
    journalWarn: size(policy.journalBytesWarn),
    keepEveryWrite: formatDuration(policy.keepEveryWriteMs),
    keep: formatTiers(policy.tiers),
    onFull: policy.onFull,
  };
}

// ---- the plan ----

/** A committed transaction as the planner sees it. */
export interface PlanTx {
  idx: number;
  kind: TxKind;
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  /** Redo plus undo bytes on disk. */
  bytes: number;
  redoBytes: number;
  /** The tier a merged transaction was thinned into (its label), else null. */
  tier: string | null;
}

export interface PlanInput {
  /** Committed transactions, oldest first, consecutive. */
  txs: readonly PlanTx[];
  nowUs: number;
  policy: RetentionPolicy;
  /** The limit with 'auto' resolved, and the journal's bytes now (all of it, not only `txs`). */
  journalBytesMax: number;
  journalBytes: number;
  /** The most transactions one merge takes (a longer run is merged in steps). */
  mergeTxsMax: number;
  /** Points that must stay addressable: bookmarks and open views. */
  keepPoints: readonly number[];
  /** No transaction with a later seq may change (views a restore or an export reads from). */
  frozenAfterSeq: number | undefined;
  /** The oldest point may not move past this seq (pinned bookmarks, open views). */
  dropFloorSeq: number | undefined;
  /**
   * With an archive: the last seq whose transaction is archived. Nothing after it is merged or
   * dropped as expired (its per-write history must reach the archive first); drops for space at
   * the journal limit still take it (and the caller reports that loudly).
   */
  archivedThroughSeq?: number | undefined;
}

export type RetentionAction =
  | { kind: 'merge'; firstIdx: number; lastIdx: number; tier: string }
  | { kind: 'drop'; lastIdx: number; reason: string; promised: boolean };

export interface Plan {
  /** In the order they should run: drops of expired history, drops for space, merges. */
  actions: RetentionAction[];
  /** Over the limit, nothing more may be dropped under the policy (stop-applying, or pins). */
  stuck: string | undefined;
}

/** Merges cover at most this many transactions at a time; a longer run is merged in steps. */
export const MERGE_TXS_MAX = 256;

/** Where a transaction's age puts it: -1 every write kept, 0..n-1 a tier, n past every tier. */
export function tierIndexOf(policy: RetentionPolicy, ageMs: number): number {
  if (ageMs <= policy.keepEveryWriteMs) return -1;
  const index = policy.tiers.findIndex((tier) => ageMs <= tier.forMs);
  return index === -1 ? policy.tiers.length : index;
}

/** Resync transactions are left whole: points inside them are refused anyway. */
function mergeable(tx: PlanTx): boolean {
  return tx.kind === 'redo' || tx.kind === 'merged';
}

/** A point strictly inside the transaction (not its end, not the end of the one before it). */
function holdsPointInside(tx: PlanTx, points: readonly number[]): boolean {
  return points.some((p) => p > tx.seqFirst - 1 && p < tx.seqLast);
}

export function plan(input: PlanInput): Plan {
  const actions: RetentionAction[] = [];
  const expired = expiredPrefix(input);
  if (expired) actions.push(expired);
  const from = expired ? input.txs.findIndex((t) => t.idx === expired.lastIdx) + 1 : 0;
  const merges = mergeRuns(input, from);
  const space = spaceDrops(input, from, merges);
  // Space goes first (at once), then the merges that are not of history being dropped anyway;
  // the drop counted on those merges freeing their redo bytes, so it drops no more than needed.
  if (space.action) actions.push(space.action);
  const droppedUpTo = space.action?.kind === 'drop' ? space.action.lastIdx : 0;
  actions.push(...merges.filter((m) => m.kind === 'merge' && m.firstIdx > droppedUpTo));
  return { actions, stuck: space.stuck };
}

/** The oldest transactions past every tier: dropped as the policy says (never promised). */
function expiredPrefix(input: PlanInput): RetentionAction | undefined {
  const { policy } = input;
  let last: PlanTx | undefined;
  for (const tx of input.txs) {
    const index = tierIndexOf(policy, (input.nowUs - tx.timeLastUs) / 1000);
    if (index < policy.tiers.length || !dropAllowed(input, tx) || !archived(input, tx)) break;
    if (tx.kind !== 'resync') last = tx; // a drop ends at a consistent point
  }
  if (!last) return undefined;
  return {
    kind: 'drop',
    lastIdx: last.idx,
    reason: `older than the policy keeps history (${formatDuration(promisedSpanMs(policy))})`,
    promised: false,
  };
}

/** Without an archive everything counts as archived. */
function archived(input: { archivedThroughSeq?: number | undefined }, tx: PlanTx): boolean {
  return input.archivedThroughSeq === undefined || tx.seqLast <= input.archivedThroughSeq;
}

function dropAllowed(input: { dropFloorSeq: number | undefined }, tx: PlanTx): boolean {
  return input.dropFloorSeq === undefined || tx.seqLast <= input.dropFloorSeq;
}

/**
 * Runs of consecutive transactions in the same tier interval, each to become one transaction:
 * split where a point must stay (a bookmark or a view at the boundary, or inside a transaction),
 * at resyncs, and where history may not change.
 */
function mergeRuns(input: PlanInput, from: number): RetentionAction[] {
  const { policy, keepPoints } = input;
  const actions: RetentionAction[] = [];
  let run: { tier: number; bucket: number; txs: PlanTx[] } | undefined;
  const close = (): void => {
    if (run && needsMerge(run.txs)) {
      const tier = policy.tiers[run.tier] as RetentionTier;
      const txs = run.txs.slice(0, input.mergeTxsMax);
      actions.push({
        kind: 'merge',
        firstIdx: (txs[0] as PlanTx).idx,
        lastIdx: (txs[txs.length - 1] as PlanTx).idx,
        tier: tierLabel(tier),
      });
    }
    run = undefined;
  };
  for (const tx of input.txs.slice(from)) {
    const tierIndex = tierIndexOf(policy, (input.nowUs - tx.timeLastUs) / 1000);
    const frozen =
      (input.frozenAfterSeq !== undefined && tx.seqLast > input.frozenAfterSeq) ||
      !archived(input, tx);
    if (
      tierIndex < 0 ||
      tierIndex >= policy.tiers.length ||
      frozen ||
      !mergeable(tx) ||
      holdsPointInside(tx, keepPoints)
    ) {
      close();
      continue;
    }
    const everyUs = (policy.tiers[tierIndex] as RetentionTier).everyMs * 1000;
    const bucket = Math.floor(tx.timeLastUs / everyUs);
    const boundaryKept = keepPoints.includes(tx.seqFirst - 1);
    if (!run || run.tier !== tierIndex || run.bucket !== bucket || boundaryKept) {
      close();
      run = { tier: tierIndex, bucket, txs: [] };
    }
    run.txs.push(tx);
  }
  close();
  return actions;
}

/** A run changes something when it joins transactions or strips a redo (one merged one is done). */
function needsMerge(txs: readonly PlanTx[]): boolean {
  return txs.length > 1 || txs[0]?.kind === 'redo';
}

/**
 * Over the limit after the merges (counted as freeing their redo bytes, which they at least do):
 * the oldest transactions go until the journal fits, as far as pins allow; history the policy
 * still promises goes only under drop-oldest.
 */
function spaceDrops(
  input: PlanInput,
  from: number,
  merges: readonly RetentionAction[],
): { action: RetentionAction | undefined; stuck: string | undefined } {
  const merged = new Set<number>();
  for (const m of merges) {
    if (m.kind === 'merge') for (let idx = m.firstIdx; idx <= m.lastIdx; idx++) merged.add(idx);
  }
  const txs = input.txs.slice(from);
  const expired = input.txs.slice(0, from).reduce((sum, tx) => sum + tx.bytes, 0);
  const credits = txs.reduce((sum, tx) => sum + (merged.has(tx.idx) ? tx.redoBytes : 0), 0);
  let bytes = input.journalBytes - expired - credits;
  if (bytes <= input.journalBytesMax) return { action: undefined, stuck: undefined };
  if (input.policy.onFull === 'stop-applying') {
    return {
      action: undefined,
      stuck: `the journal is over its limit (${bytes} of ${input.journalBytesMax} bytes) with only history the policy keeps; applying waits (--on-journal-full stop-applying)`,
    };
  }
  let last: PlanTx | undefined;
  for (const tx of txs) {
    if (bytes <= input.journalBytesMax) break;
    if (!dropAllowed(input, tx)) {
      return {
        action: last ? dropForSpace(last.idx) : undefined,
        stuck: `the journal is over its limit, and a pinned bookmark or an open view holds seq ${input.dropFloorSeq}: nothing after it is dropped`,
      };
    }
    bytes -= tx.bytes - (merged.has(tx.idx) ? tx.redoBytes : 0);
    if (tx.kind !== 'resync') last = tx;
  }
  return { action: last ? dropForSpace(last.idx) : undefined, stuck: undefined };
}

/** A drop of the oldest history, up to `lastIdx`, for space (promised history, reported loudly). */
export function dropForSpace(lastIdx: number): Extract<RetentionAction, { kind: 'drop' }> {
  return {
    kind: 'drop',
    lastIdx,
    reason: 'the journal reached its size limit',
    promised: true,
  };
}

export interface RoomInput {
  /** The oldest committed transactions, in order (enough of them to make the room). */
  txs: readonly PlanTx[];
  /** The committed journal's bytes now, and what the transaction about to commit adds. */
  journalBytes: number;
  incomingBytes: number;
  /** Where the drop brings the journal, with the incoming bytes counted (at most the limit). */
  targetBytes: number;
  dropFloorSeq: number | undefined;
}

/**
 * The oldest transactions to drop at once so a transaction about to commit fits: the journal
 * with its bytes is brought to `targetBytes` (a little under the limit, so not every commit has
 * to drop). The drop ends at a consistent point (never inside a resync window) and never passes
 * the floor; it may fall short of the target when the floor or `txs` ends first (`short`).
 */
export function roomDrop(input: RoomInput): { lastIdx: number | undefined; short: boolean } {
  let bytes = input.journalBytes + input.incomingBytes;
  let lastIdx: number | undefined;
  let pending = 0; // bytes of a resync window not yet closed by a consistent point
  for (const tx of input.txs) {
    if (bytes <= input.targetBytes) break;
    if (!dropAllowed(input, tx)) return { lastIdx, short: true };
    pending += tx.bytes;
    if (tx.kind === 'resync') continue;
    bytes -= pending;
    pending = 0;
    lastIdx = tx.idx;
  }
  return { lastIdx, short: bytes > input.targetBytes };
}
