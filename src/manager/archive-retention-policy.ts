// The archive's retention policy and its plan, pure: every write kept for a window (default 30
// days), then coarser points, which in the archive are full images: one per tier interval until
// the tier's age. What is deleted, for the objects and full images the catalog records: batch
// objects wholly at or before the base (the newest full image of the whole volume set at or before
// the oldest point that must stay per write), full images past every tier or not the newest of
// their tier interval, and the chunks no full image kept references. Without a base nothing is
// deleted: per-write history is the only way back to the points before it.
import { RewindError } from '../core/index.js';
import type { ArchiveFullRow, ArchiveObjectRow } from './catalog.js';
import {
  checkPolicy,
  DEFAULT_POLICY,
  formatDuration,
  formatTiers,
  parseDuration,
  parseTiers,
  tierIndexOf,
  type RetentionPolicy,
  type RetentionTier,
} from './retention-policy.js';

const DAY_MS = 86_400_000;

export interface ArchivePolicy {
  keepEveryWriteMs: number;
  tiers: RetentionTier[];
}

/** Every write for 30 days (no other CDP product keeps that), then a full image a day, a year. */
export const DEFAULT_ARCHIVE_POLICY: ArchivePolicy = {
  keepEveryWriteMs: 30 * DAY_MS,
  tiers: [{ everyMs: DAY_MS, forMs: 365 * DAY_MS }],
};

export interface ArchivePolicyText {
  keepEveryWrite?: string;
  keep?: string;
}

/** The policy given (flags or config), over the default; refuses what it cannot take. */
export function archivePolicyFrom(text: ArchivePolicyText | undefined): ArchivePolicy {
  const policy: ArchivePolicy = {
    keepEveryWriteMs:
      text?.keepEveryWrite === undefined
        ? DEFAULT_ARCHIVE_POLICY.keepEveryWriteMs
        : parseDuration(text.keepEveryWrite, '--archive-keep-every-write'),
    tiers: text?.keep === undefined ? DEFAULT_ARCHIVE_POLICY.tiers : parseTiers(text.keep),
  };
  if (policy.keepEveryWriteMs <= 0) {
    throw new RewindError('REWIND_BAD_ARGUMENT', '--archive-keep-every-write must be more than 0');
  }
  try {
    checkPolicy(asRetentionPolicy(policy));
  } catch (error) {
    if (error instanceof RewindError) {
      throw new RewindError('REWIND_BAD_ARGUMENT', `--archive-keep: ${error.message}`, {
        ...(error.hint !== undefined ? { hint: error.hint } : {}),
      });
    }
    throw error;
  }
  return policy;
}

export function archivePolicyText(policy: ArchivePolicy): Required<ArchivePolicyText> {
  return {
    keepEveryWrite: formatDuration(policy.keepEveryWriteMs),
    keep: formatTiers(policy.tiers),
  };
}

function asRetentionPolicy(policy: ArchivePolicy): RetentionPolicy {
  return { ...DEFAULT_POLICY, keepEveryWriteMs: policy.keepEveryWriteMs, tiers: policy.tiers };
}

export interface ArchivePlanInput {
  policy: ArchivePolicy;
  nowUs: number;
  /** Every batch object, oldest first. */
  objects: readonly Pick<ArchiveObjectRow, 'key' | 'seqFirst' | 'seqLast' | 'timeLastUs'>[];
  /** Every full image, oldest first. */
  fulls: readonly Pick<ArchiveFullRow, 'id' | 'seq' | 'timeUs' | 'volumes' | 'manifestKey'>[];
  /** The volume indexes of the set: a base holds every one of them. */
  volumes: readonly number[];
  /** Points that must stay per write besides the window (pinned bookmarks, open views). */
  holdSeqs: readonly number[];
}

export interface ArchivePlan {
  /** The oldest point kept per write (the window's start, or an older held point). */
  everyWriteFromSeq: number | null;
  /** The full image points before `everyWriteFromSeq` are rebuilt from, when there is one. */
  baseSeq: number | null;
  deleteObjects: string[];
  /** Full images deleted (by id). */
  deleteFulls: number[];
  /** Why nothing older can go, when the plan is held back. */
  stuck: string | undefined;
}

/**
 * What the archive's policy deletes now. Per-write history is kept from the oldest point that
 * must stay (the window's start, pinned bookmarks, open views) on; before it only full images
 * are points, so batch objects that end at or before the base (the newest full image of every
 * volume at or before that point) can go, and each tier keeps the newest full image of each of
 * its intervals. Never deletes the newest object or the base.
 */
export function planArchive(input: ArchivePlanInput): ArchivePlan {
  const { policy, nowUs, objects } = input;
  const windowStartUs = nowUs - policy.keepEveryWriteMs * 1000;
  const last = objects[objects.length - 1];
  if (last === undefined) {
    return {
      everyWriteFromSeq: null,
      baseSeq: null,
      deleteObjects: [],
      deleteFulls: [],
      stuck: undefined,
    };
  }
  // The point just before the first object that reaches into the window (the newest point when
  // every object is older: it is always kept).
  const firstInWindow = objects.find((o) => o.timeLastUs >= windowStartUs);
  let fromSeq = firstInWindow ? firstInWindow.seqFirst - 1 : last.seqLast;
  for (const seq of input.holdSeqs) fromSeq = Math.min(fromSeq, seq);
  const complete = (full: { volumes: readonly number[] }): boolean =>
    input.volumes.every((v) => full.volumes.includes(v));
  const base = [...input.fulls].reverse().find((f) => f.seq <= fromSeq && complete(f));
  if (base === undefined) {
    const older = objects[0] !== undefined && objects[0].timeLastUs < windowStartUs;
    return {
      everyWriteFromSeq: fromSeq,
      baseSeq: null,
      deleteObjects: [],
      deleteFulls: [],
      stuck: older
        ? `no full image of every volume at or before seq ${fromSeq}: the archive keeps every write older than --archive-keep-every-write (take one: rewind full, or --full-every)`
        : undefined,
    };
  }
  const deleteObjects = objects
    .filter((o) => o.seqLast <= base.seq && o !== last)
    .map((o) => o.key);
  // Tiers over the full images older than the base; the base and newer ones are all kept.
  const keptBuckets = new Set<string>();
  const bucketOf = (full: { timeUs: number; volumes: readonly number[] }): string | undefined => {
    const index = tierIndexOf(asRetentionPolicy(policy), (nowUs - full.timeUs) / 1000);
    const tier = policy.tiers[index];
    if (index < 0 || tier === undefined) return undefined;
    return `${index}:${Math.floor(full.timeUs / (tier.everyMs * 1000))}:${full.volumes.join(',')}`;
  };
  // The base is the newest full image of its interval: older ones there go.
  const baseBucket = bucketOf(base);
  if (baseBucket !== undefined) keptBuckets.add(baseBucket);
  const deleteFulls: number[] = [];
  const older = input.fulls.filter(
    (f) => f.seq < base.seq || (f.seq === base.seq && f.id !== base.id),
  );
  for (const full of [...older].reverse()) {
    const index = tierIndexOf(asRetentionPolicy(policy), (nowUs - full.timeUs) / 1000);
    if (index < 0) continue; // inside the window: kept
    const bucket = bucketOf(full);
    if (bucket === undefined || keptBuckets.has(bucket)) deleteFulls.push(full.id);
    else keptBuckets.add(bucket);
  }
  return {
    everyWriteFromSeq: fromSeq,
    baseSeq: base.seq,
    deleteObjects,
    deleteFulls: deleteFulls.sort((a, b) => a - b),
    stuck: undefined,
  };
}
