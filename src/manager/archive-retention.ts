// The archive's retention: carries out the plan of archive-retention-policy.ts against the catalog
// and the store. The catalog forgets first (one SQLite transaction, the keys queued in
// archive_deletions), then the store deletes the queued keys and the queue empties; a crash or a
// store that is down in between leaves keys queued, deleted on the next run. Runs on a timer and
// on demand, never while a full image is being taken (the two share `exclusive`: a full that found
// a chunk stored must not see it deleted before the full is recorded).
import {
  errorMessage,
  formatTimeNs,
  nowNs,
  rethrowIfBug,
  type LogFunction,
} from '../core/index.js';
import type { ObjectStore } from '../archive/index.js';
import {
  archivePolicyText,
  planArchive,
  type ArchivePlan,
  type ArchivePolicy,
} from './archive-retention-policy.js';
import type { Catalog } from './catalog.js';

/** How often the policy is applied by itself. */
export const ARCHIVE_RETENTION_INTERVAL_MS_DEFAULT = 10 * 60_000;
/** Keys deleted per store request at most (S3's DeleteObjects takes 1000). */
const DELETE_KEYS_MAX = 1000;

export interface ArchiveRetentionHost {
  catalog: Catalog;
  store: ObjectStore;
  log: LogFunction;
  /** Points that must stay per write besides the window (pinned bookmarks, open views). */
  holdSeqs(): number[];
}

export interface ArchiveRetentionStatus {
  policy: { keepEveryWrite: string; keep: string };
  /** Every write from this seq on is kept in the archive (null: nothing archived). */
  everyWriteFromSeq: number | null;
  /** The full image points before it are rebuilt from (null: none yet). */
  baseSeq: number | null;
  /** Full images kept as coarser points before the base, oldest first. */
  coarsePoints: { seq: number; time: string }[];
  deleted: { objects: number; txs: number; fulls: number; chunks: number };
  /** Keys the catalog forgot that the store has not deleted yet. */
  pendingDeletions: number;
  stuck: string | null;
  lastRunAt: string | null;
  lastError: string | null;
}

export class ArchiveRetention {
  private readonly host: ArchiveRetentionHost;
  private policyNow: ArchivePolicy;
  private timer: NodeJS.Timeout | undefined;
  private lock: Promise<void> = Promise.resolve();
  private lastPlan: ArchivePlan | undefined;
  private lastRunAt: string | undefined;
  private lastError: string | undefined;
  private closed = false;
  readonly deleted = { objects: 0, txs: 0, fulls: 0, chunks: 0 };

  constructor(host: ArchiveRetentionHost, policy: ArchivePolicy) {
    this.host = host;
    this.policyNow = policy;
  }

  get policy(): ArchivePolicy {
    return this.policyNow;
  }

  /** Applies the policy every `intervalMs` (and once soon after the start). */
  start(intervalMs = ARCHIVE_RETENTION_INTERVAL_MS_DEFAULT): void {
    if (this.timer !== undefined || this.closed) return;
    const tick = (): void => {
      void this.run().catch((error: unknown) => {
        rethrowIfBug(error);
      });
    };
    this.timer = setInterval(tick, intervalMs);
    this.timer.unref();
    setImmediate(tick);
  }

  async stop(): Promise<void> {
    this.closed = true;
    clearInterval(this.timer);
    await this.lock;
  }

  /**
   * Runs `work` with nothing else of the archive's retention running, and keeps it from running
   * until `work` is done (taking a full image holds this).
   */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    const result = this.lock.then(work);
    this.lock = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }

  /** Plans against the catalog now, forgets what the plan deletes, then deletes it in the store. */
  run(nowUs = Number(nowNs() / 1000n)): Promise<ArchivePlan> {
    return this.exclusive(async () => {
      const plan = this.plan(nowUs);
      this.lastPlan = plan;
      this.lastRunAt = new Date().toISOString();
      if (!this.closed && (plan.deleteObjects.length > 0 || plan.deleteFulls.length > 0)) {
        const reason = `archive policy ${this.describe()} (every write from seq ${plan.everyWriteFromSeq}, base full image at seq ${plan.baseSeq})`;
        const forgot = this.host.catalog.forgetArchived(
          plan.deleteObjects,
          plan.deleteFulls,
          reason,
        );
        this.deleted.objects += forgot.objects;
        this.deleted.txs += forgot.txs;
        this.deleted.fulls += forgot.fulls;
        this.deleted.chunks += forgot.chunks;
        this.host.log(
          'info',
          `archive retention: ${forgot.objects} batch objects (${forgot.txs} transactions up to seq ${plan.baseSeq}), ${forgot.fulls} full images and ${forgot.chunks} chunks go; every write from seq ${plan.everyWriteFromSeq} is kept`,
        );
      }
      await this.deletePending();
      return plan;
    });
  }

  /** What the policy would delete now; changes nothing. */
  plan(nowUs = Number(nowNs() / 1000n)): ArchivePlan {
    const catalog = this.host.catalog;
    return planArchive({
      policy: this.policyNow,
      nowUs,
      objects: catalog.archiveObjects(),
      fulls: catalog.fulls(),
      volumes: catalog.volumes().map((v) => v.idx),
      holdSeqs: this.host.holdSeqs(),
    });
  }

  status(nowUs = Number(nowNs() / 1000n)): ArchiveRetentionStatus {
    const plan = this.lastPlan ?? this.plan(nowUs);
    const base = plan.baseSeq;
    return {
      policy: archivePolicyText(this.policyNow),
      everyWriteFromSeq: plan.everyWriteFromSeq,
      baseSeq: base,
      coarsePoints: this.host.catalog
        .fulls()
        .filter((f) => base !== null && f.seq < base)
        .map((f) => ({ seq: f.seq, time: formatTimeNs(BigInt(f.timeUs) * 1000n) })),
      deleted: { ...this.deleted },
      pendingDeletions: this.host.catalog.pendingArchiveDeletionCount(),
      stuck: plan.stuck ?? null,
      lastRunAt: this.lastRunAt ?? null,
      lastError: this.lastError ?? null,
    };
  }

  private describe(): string {
    const text = archivePolicyText(this.policyNow);
    return `--archive-keep-every-write ${text.keepEveryWrite} --archive-keep ${text.keep}`;
  }

  /** Deletes the queued keys in the store; a failure leaves the rest queued for the next run. */
  private async deletePending(): Promise<void> {
    const catalog = this.host.catalog;
    for (let round = 0; round < 1_000_000 && !this.closed; round++) {
      const pending = catalog.pendingArchiveDeletions(DELETE_KEYS_MAX);
      if (pending.length === 0) break;
      const keys = pending.map((p) => p.key);
      try {
        await this.host.store.delete(keys);
      } catch (error) {
        rethrowIfBug(error);
        this.lastError = errorMessage(error);
        this.host.log(
          'warn',
          `archive retention: ${keys.length} deletes failed, tried again on the next run: ${this.lastError}`,
        );
        return;
      }
      catalog.archiveDeletionsDone(keys);
      this.lastError = undefined;
    }
  }
}
