// The manager of one volume set, as the API and the runtime see it: opens the catalog, the replicas
// and the transaction files, wires the stages together (agent link -> transaction pipeline ->
// views), and answers for all of them. Each job lives in its own module:
//   agent-link.ts      the agent connection: hello, frames, seal and restore requests
//   transactions.ts    each segment's turn: store, apply, sync, commit; recovery
//   stored-history.ts  the committed history as views and the log read it
//   points.ts          POINT parsing and resolution
//   view-registry.ts   snapshots, clones, their exports, stepping
//   restore.ts, image-export.ts, queries.ts   production restores, image export, history queries
import path from 'node:path';
import {
  formatTimeNs,
  rethrowIfBug,
  RewindError,
  type LogFunction,
  type LogLevel,
} from '../core/index.js';
import type { ExportBackend } from '../nbd/index.js';
import { ensureDir } from '../platform/index.js';
import type { View } from '../views/index.js';
import { AgentLink, type AgentStatus } from './agent-link.js';
import { ApplyWorker, type Applier } from './apply-pool.js';
import { ArchiveRetention } from './archive-retention.js';
import { DEFAULT_ARCHIVE_POLICY } from './archive-retention-policy.js';
import { Archiver, type ArchiveSettings, type ArchiveStatus } from './archiving.js';
import { verifyArchive, type VerifyProgress, type VerifyResult } from './archive-verify.js';
import type { ArchiveFullRow, ArchiveObjectRow } from './catalog.js';
import {
  FULL_EVERY_MS_DEFAULT,
  FullImages,
  type FullProgress,
  type FullResult,
} from './full-images.js';
import {
  OldPoints,
  type ArchivedHistory,
  type FetchProgress,
  type OldPointPlan,
} from './old-points.js';
import { Catalog } from './catalog.js';
import { ImageExporter } from './image-export.js';
import { ArchivedTimeError, PointResolver } from './points.js';
import { ReplicaVolume } from './replica.js';
import { Restorer } from './restore.js';
import { Retention } from './retention.js';
import { formatDuration, type PolicyText, type RetentionPolicy } from './retention-policy.js';
import { StoredHistory, type LogEntry, type LogFilter } from './stored-history.js';
import { TxPipeline, type CommitEvent, type CommittedPosition } from './transactions.js';
import { TxFiles } from './txfiles.js';
import { VIEW_NAME, ViewRegistry, type StepRequest, type StepResult } from './view-registry.js';

export interface ManagerOptions {
  dataDir: string;
  token: string;
  tls?: { cert: string | Buffer; key: string | Buffer };
  log: LogFunction;
  /** Called when exports appear or disappear (views created or removed). */
  onExportsChanged?: (removed: string[]) => void;
  /**
   * The deterministic simulation's hooks: where undo building and replica writes run (default: a
   * worker thread) and how the catalog's SQLite database is opened (default: the file).
   */
  applier?: Applier;
  openCatalog?: (file: string) => Catalog;
  /** Where retention builds merged undos (default: a worker thread of its own). */
  retentionMerger?: Applier;
  /** The retention policy's settings given at start (flags, config file); the rest as stored. */
  retention?: PolicyText;
  /** Retention starts its background work at open unless false (the simulation starts it). */
  startRetention?: boolean;
  /** How often retention looks for work when it has none (the simulation looks more often). */
  retentionIdleMs?: number;
  /** Called after each commit from open on (recovery's commits included). */
  onCommitted?: (event: CommitEvent) => void;
  /**
   * `rewind up`: the spool directory of the agent in this process. Segments it names are read
   * from there and linked into the redo directory rather than sent over the link and copied.
   */
  localSpoolDir?: string;
  /** The only directory image exports write to; default DATA/exports (created at open). */
  exportDir?: string;
  /**
   * The archive: its opened store (closed by close(); the caller's to close when open fails), the
   * key (when objects are encrypted), batching and the old points' cache.
   */
  archive?: ArchiveSettings;
  /** The archiver starts at open unless false (tests that start it later). */
  startArchiver?: boolean;
}

export interface ManagerStatus {
  volumeSet: { id: string | null; name: string | null };
  volumes: { name: string; sizeBytes: number }[];
  agentConnected: boolean;
  seqCaptured: number;
  seqCommitted: number;
  lagWrites: number;
  lagSeconds: number;
  lastCommittedTime: string | null;
  spoolBytes: number;
  sealedPending: number;
  mode: string;
  failure: string | null;
  offline: { restore: number; volumes: string[] } | null;
  transactions: number;
  views: number;
  /** Redo and undo on this host (the retention policy bounds it). */
  journalBytes: number;
}

export interface Bookmark {
  name: string;
  seq: number;
  time: string;
}

/** The parts a manager is made of, built by `open`. */
interface Parts {
  options: ManagerOptions;
  catalog: Catalog;
  replicas: ReplicaVolume[];
  txFiles: TxFiles;
  applier: Applier;
  history: StoredHistory;
  pipeline: TxPipeline;
  points: PointResolver;
  registry: ViewRegistry;
  link: AgentLink;
  retention: Retention;
  merger: Applier;
  commitObservers: Set<(event: CommitEvent) => void>;
  archiver: Archiver | undefined;
  oldPoints: OldPoints | undefined;
  archiveRetention: ArchiveRetention | undefined;
}

export type { CommitEvent };

export class Manager {
  readonly options: ManagerOptions;
  readonly catalog: Catalog;
  /** The committed history as views, points and the log read it. */
  readonly history: StoredHistory;
  readonly restorer: Restorer;
  readonly exporter: ImageExporter;
  private readonly replicaList: ReplicaVolume[];
  private readonly txFiles: TxFiles;
  private readonly applier: Applier;
  private readonly pipeline: TxPipeline;
  private readonly points: PointResolver;
  private readonly registry: ViewRegistry;
  private readonly link: AgentLink;
  readonly retention: Retention;
  private readonly merger: Applier;
  /** Packs committed transactions into the archive (undefined without one). */
  readonly archiver: Archiver | undefined;
  /** Points older than the journal, served from the archive (undefined without one). */
  readonly oldPoints: OldPoints | undefined;
  /** The archive's own policy: what it deletes and when (undefined without an archive). */
  readonly archiveRetention: ArchiveRetention | undefined;
  /** Virtual full images in the archive (undefined without one). */
  readonly fullImages: FullImages | undefined;
  /** Called after each commit (the console's events, the metrics); an observer must not throw. */
  readonly commitObservers: Set<(event: CommitEvent) => void>;

  private constructor(parts: Parts) {
    this.options = parts.options;
    this.catalog = parts.catalog;
    this.replicaList = parts.replicas;
    this.txFiles = parts.txFiles;
    this.applier = parts.applier;
    this.history = parts.history;
    this.pipeline = parts.pipeline;
    this.points = parts.points;
    this.registry = parts.registry;
    this.link = parts.link;
    this.retention = parts.retention;
    this.merger = parts.merger;
    this.commitObservers = parts.commitObservers;
    this.archiver = parts.archiver;
    this.oldPoints = parts.oldPoints;
    this.archiveRetention = parts.archiveRetention;
    const archiver = parts.archiver;
    this.fullImages = archiver
      ? new FullImages({
          catalog: this.catalog,
          store: archiver.store,
          key: archiver.key,
          counted: (kind) => archiver.counted(kind),
          withView: (seq, work) => this.registry.withView(seq, work),
          seqCommitted: () => this.seqCommitted(),
          seqTimeUs: (seq) => this.seqTimeUs(seq),
          log: this.options.log,
          retryMsMax: archiver.retryMsMax,
          exclusive: (work) =>
            this.archiveRetention ? this.archiveRetention.exclusive(work) : work(),
        })
      : undefined;
    this.restorer = new Restorer({
      volumeIndex: (name) => this.history.volumeIndex(name),
      volumeSize: (volume) => this.history.volumeSize(volume),
      volumeNames: () => this.history.volumeNames(),
      // A restore to a point older than the journal writes back what was written since it,
      // archived writes included.
      log: (filter) => this.logAcrossArchive(filter),
      resolvePoint: (text) => this.points.resolve(text),
      seqCommitted: () => this.seqCommitted(),
      waitCommitted: (seq, timeoutMs) => this.pipeline.waitCommitted(seq, timeoutMs),
      withView: (seq, work) => this.registry.withView(seq, work),
      prefetch: (seq) => this.prefetchRestore(seq),
      clone: (name) => this.registry.clone(name),
      clientsOf: (name) => this.link.agentStatus?.clients?.[this.history.volumeIndex(name)],
      agentReportAfter: async (afterMs, timeoutMs) => {
        const deadline = Date.now() + timeoutMs;
        while ((this.link.agentStatus?.receivedAtMs ?? 0) < afterMs && Date.now() < deadline)
          await new Promise((resolve) => setTimeout(resolve, 50));
      },
      agent: this.link,
      restores: this.catalog,
      note: this.options.log,
    });
    this.exporter = new ImageExporter({
      volumeIndex: (name) => this.history.volumeIndex(name),
      volumeSize: (volume) => this.history.volumeSize(volume),
      resolvePoint: (text) => this.points.resolve(text),
      withView: (seq, work) => this.registry.withView(seq, work),
      note: this.options.log,
      exportDir: exportDirOf(this.options),
    });
  }

  /**
   * Opens the manager of `options.dataDir`: finishes any transaction a crash interrupted and
   * rebuilds the views. What it opened is closed again if it fails.
   */
  static async open(options: ManagerOptions): Promise<Manager> {
    const root = path.join(options.dataDir, 'manager');
    await ensureDir(root);
    await ensureDir(exportDirOf(options));
    const catalogFile = path.join(root, 'catalog.sqlite');
    const catalog = options.openCatalog
      ? options.openCatalog(catalogFile)
      : new Catalog(catalogFile);
    const replicas: ReplicaVolume[] = [];
    const txFiles = new TxFiles(root, () => replicas.length);
    const applier = options.applier ?? new ApplyWorker();
    // Merges are background work: their thread runs at a lower priority than ingest's.
    const merger = options.retentionMerger ?? new ApplyWorker({ nice: MERGE_NICE });
    try {
      await ensureDir(txFiles.redoDir);
      await ensureDir(txFiles.undoDir);
      for (const row of catalog.mergedTxs()) {
        txFiles.setLayout(row.idx, { hasRedo: false, undoGen: row.undoGen });
      }
      for (const volume of catalog.volumes()) {
        replicas.push(
          ReplicaVolume.open(path.join(root, 'replica'), volume.idx, volume.name, volume.sizeBytes),
        );
      }
      if (options.archive) Archiver.checkAgainstCatalog(catalog, options.archive);
      const policy = Retention.policyOf(catalog, options.retention);
      const manager = Manager.assemble({
        options,
        root,
        catalog,
        replicas,
        txFiles,
        applier,
        merger,
        policy,
      });
      await manager.pipeline.recover();
      await manager.registry.load();
      if (options.startRetention !== false) manager.retention.start();
      if (options.startArchiver !== false) {
        manager.archiver?.start();
        manager.archiveRetention?.start(options.archive?.retentionIntervalMs);
        const every = options.archive?.fullEveryMs;
        manager.fullImages?.startSchedule(
          every === null ? undefined : (every ?? FULL_EVERY_MS_DEFAULT),
        );
      }
      return manager;
    } catch (error) {
      rethrowIfBug(error);
      await merger.close();
      await applier.close();
      for (const replica of replicas) replica.close();
      txFiles.close();
      catalog.close();
      throw error;
    }
  }

  private static assemble(opened: {
    options: ManagerOptions;
    root: string;
    catalog: Catalog;
    replicas: ReplicaVolume[];
    txFiles: TxFiles;
    applier: Applier;
    merger: Applier;
    policy: RetentionPolicy;
  }): Manager {
    const { options, root, catalog, replicas, txFiles, applier, merger, policy } = opened;
    // The registry takes each transaction's undo before its replica writes; it is built after the
    // pipeline, which only calls back once a turn runs (after open).
    const later: {
      registry?: ViewRegistry;
      retention?: Retention;
      oldPoints?: OldPoints;
      archiveRetention?: ArchiveRetention;
    } = {};
    const archiver = options.archive
      ? new Archiver({ catalog, txFiles, log: options.log }, options.archive)
      : undefined;
    const commitObservers = new Set<(event: CommitEvent) => void>(
      options.onCommitted ? [options.onCommitted] : [],
    );
    const pipeline = new TxPipeline({
      catalog,
      txFiles,
      replicas,
      applier,
      log: options.log,
      onUndo: (idx, extents) => later.registry?.addUndo(idx, extents),
      admission: () => later.retention?.admission(),
      makeRoom: (bytes, resync) => later.retention?.makeRoom(bytes, resync),
      onCommitted: (event) => {
        later.retention?.committed(event.tx);
        archiver?.committed();
        for (const observe of commitObservers) observe(event);
      },
    });
    const history = new StoredHistory({
      catalog,
      txFiles,
      replicas,
      seqCommitted: () => pipeline.committed.seq,
    });
    const link: AgentLink = new AgentLink({
      token: options.token,
      log: options.log,
      ...(options.tls ? { tls: options.tls } : {}),
      ...(options.localSpoolDir !== undefined ? { localSpoolDir: options.localSpoolDir } : {}),
      host: {
        adoptVolumeSet: (hello) =>
          adoptVolumeSet(catalog, replicas, path.join(root, 'replica'), hello),
        committed: () => pipeline.committed,
        expectGap: (gap) => pipeline.expectGap(gap),
        volumeCount: () => replicas.length,
        receive: (arriving) => pipeline.receive(arriving),
        onAgentConnected: () => manager.restorer.resumeAll(),
      },
    });
    const points = new PointResolver({
      committed: () => pipeline.committed,
      agentStatus: () => link.agentStatus,
      bookmark: (name) => catalog.bookmark(name),
      tx: (idx) => catalog.tx(idx),
      txContaining: (seq) => catalog.txContaining(seq),
      gapContaining: (seq) => catalog.gapContaining(seq),
      gapAtTime: (timeUs) => catalog.gapAtTime(timeUs),
      firstTx: () => catalog.firstTx(),
      txAtOrBeforeTime: (timeUs) => catalog.txAtOrBeforeTime(timeUs),
      oldestPoint: () => catalog.oldestPoint(),
      droppedAt: (seq) => catalog.droppedAt(seq),
      recordsOf: (idx) => history.recordsOf(idx),
      gapStartNs: (idx) => history.gapStartNs(idx),
      archive: (seq) => {
        if (later.oldPoints?.anchorOf(seq) === undefined) return undefined;
        const planned = later.oldPoints.plan(seq);
        return 'plan' in planned ? { served: true } : { served: false, why: planned.refused };
      },
      ...(archiver
        ? {
            archiveTxAtOrBeforeTime: (timeUs: number) => catalog.archiveTxAtOrBeforeTime(timeUs),
            archivedRecordTimes: (seqFirst: number, seqLast: number) =>
              later.oldPoints?.recordTimes(seqFirst, seqLast),
          }
        : {}),
    });
    const oldPoints = archiver
      ? new OldPoints({
          catalog,
          archiver,
          local: {
            historyStart: () => points.historyStart(),
            txContaining: (seq) => catalog.txContaining(seq),
          },
          dir: path.join(options.dataDir, 'archive-cache'),
          cacheBytesMax: options.archive?.cacheBytesMax ?? ARCHIVE_CACHE_BYTES_DEFAULT,
          log: options.log,
        })
      : undefined;
    if (oldPoints) later.oldPoints = oldPoints;
    const registry = new ViewRegistry({
      clonesDir: path.join(root, 'clones'),
      history,
      catalog,
      points,
      exclusive: (work) => pipeline.exclusive(work),
      log: options.log,
      ...(options.onExportsChanged ? { onExportsChanged: options.onExportsChanged } : {}),
      ...(oldPoints ? { oldPoints } : {}),
    });
    later.registry = registry;
    const retention = new Retention(
      {
        catalog,
        txFiles,
        volumeCount: () => replicas.length,
        exclusive: (work) => pipeline.exclusive(work),
        viewPins: () => registry.pins(),
        rebuildViewsBefore: (seq) => registry.rebuildBefore(seq),
        merger,
        log: options.log,
        dataDir: root,
        historyStart: () => points.historyStart(),
        ...(options.retentionIdleMs !== undefined
          ? { idleIntervalMs: options.retentionIdleMs }
          : {}),
        ...(archiver
          ? {
              archivedThroughSeq: () => archiver.archivedThroughSeq(),
              archiveTier: () => {
                const status = archiver.status();
                const kept = later.archiveRetention?.status();
                return {
                  url: status.url,
                  fromSeq: status.archivedFromSeq,
                  throughSeq: status.archivedThroughSeq,
                  objects: status.objects,
                  storedBytes: status.storedBytes,
                  backlogTransactions: status.backlog.transactions,
                  ...(kept
                    ? {
                        policy: kept.policy,
                        everyWriteFromSeq: kept.everyWriteFromSeq,
                        baseSeq: kept.baseSeq,
                        coarsePoints: kept.coarsePoints.length,
                        stuck: kept.stuck,
                      }
                    : {}),
                };
              },
            }
          : {}),
      },
      policy,
    );
    later.retention = retention;
    const archiveRetention = archiver
      ? new ArchiveRetention(
          {
            catalog,
            store: archiver.store,
            log: options.log,
            holdSeqs: () => [...registry.viewSeqs(), ...pinnedBookmarkSeqs(catalog)],
          },
          options.archive?.policy ?? DEFAULT_ARCHIVE_POLICY,
        )
      : undefined;
    if (archiveRetention) later.archiveRetention = archiveRetention;
    const manager: Manager = new Manager({
      options,
      catalog,
      replicas,
      txFiles,
      applier,
      history,
      pipeline,
      points,
      registry,
      link,
      retention,
      merger,
      commitObservers,
      archiver,
      oldPoints,
      archiveRetention,
    });
    return manager;
  }

  // ---- the agent link ----

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    return this.link.listen(host, port);
  }

  /** Serves one agent connection (from listen(), or a simulated link in the simulation). */
  acceptAgent(socket: Parameters<AgentLink['accept']>[0]): void {
    this.link.accept(socket);
  }

  get agentConnected(): boolean {
    return this.link.connected;
  }

  get agentStatus(): AgentStatus | undefined {
    return this.link.agentStatus;
  }

  /** Asks the agent to seal its active segment; with `wait`, returns once it is committed. */
  async seal(wait: boolean, timeoutMs = 60_000): Promise<{ seqLast: number; committed: number }> {
    const seqLast = await this.link.requestSeal(timeoutMs);
    if (wait) await this.pipeline.waitCommitted(seqLast, timeoutMs);
    return { seqLast, committed: this.seqCommitted() };
  }

  // ---- the committed history ----

  seqCommitted(): number {
    return this.pipeline.committed.seq;
  }

  waitCommitted(seq: number, timeoutMs: number): Promise<void> {
    return this.pipeline.waitCommitted(seq, timeoutMs);
  }

  /** Segments whose early store was used by their turn (the simulation checks it happens). */
  get earlyStores(): number {
    return this.pipeline.earlyStores;
  }

  get replicas(): readonly ReplicaVolume[] {
    return this.replicaList;
  }

  volumeIndex(name: string): number {
    return this.history.volumeIndex(name);
  }

  volumeSize(volume: number): number {
    return this.history.volumeSize(volume);
  }

  /** Resolves an operator's POINT to a committed, restorable seq, or refuses saying why. */
  resolvePoint(text: string): number {
    return this.points.resolve(text);
  }

  /** The last committed write at or before POINT, for listings (never refused: see points.ts). */
  seqAtOrBefore(text: string): number {
    return this.points.seqAtOrBefore(text);
  }

  log(filter: LogFilter): AsyncGenerator<LogEntry> {
    return this.history.log(filter);
  }

  /**
   * As `log`, and when `filter.from - 1` is a point older than the journal that the archive
   * serves, the archived writes from it up to the journal first (fetched like the point's view):
   * a restore to such a point must write back every range written since.
   */
  async *logAcrossArchive(filter: LogFilter): AsyncGenerator<LogEntry> {
    const from = filter.from ?? 1;
    // The writes since the point are the archived undo's transactions: the undo way only.
    const planned =
      this.oldPoints?.anchorOf(from - 1) === undefined
        ? undefined
        : this.oldPoints?.plan(from - 1, 'undo');
    if (this.oldPoints === undefined || planned === undefined) {
      yield* this.history.log(filter);
      return;
    }
    if (!('plan' in planned)) {
      throw new RewindError(
        'REWIND_POINT_INVALID',
        `the writes since seq ${from - 1} are not all kept (${planned.refused})`,
        { hint: 'a snapshot or export at that point works; a restore needs every write since' },
      );
    }
    const { plan } = planned;
    await this.oldPoints.fetch(plan);
    const archived = this.oldPoints.history(plan, this.history) as ArchivedHistory;
    const volume =
      filter.volume === undefined ? undefined : this.history.volumeIndex(filter.volume);
    const to = Math.min(filter.to ?? this.seqCommitted(), this.seqCommitted());
    try {
      for (const tx of plan.txs) {
        for (const record of (await archived.txIndex(tx.idx)).records) {
          if (record.seq < from || record.seq > to) continue;
          if (volume !== undefined && record.volume !== volume) continue;
          yield this.history.logEntry(record, tx.kind);
        }
      }
    } finally {
      archived.release();
    }
    if (to > plan.anchorSeq) yield* this.history.log({ ...filter, from: plan.anchorSeq + 1 });
  }

  /** What a restore to `seq` reads from the archive: its view, and the archived writes since. */
  private async prefetchRestore(seq: number): Promise<void> {
    const oldPoints = this.oldPoints;
    if (oldPoints?.anchorOf(seq) === undefined) return;
    await this.registry.prefetch(seq);
    const since = oldPoints.plan(seq, 'undo');
    if (!('plan' in since)) {
      throw new RewindError(
        'REWIND_POINT_INVALID',
        `the writes since seq ${seq} are not all kept (${since.refused})`,
        { hint: 'a snapshot or export at that point works; a restore needs every write since' },
      );
    }
    await oldPoints.fetch(since.plan);
  }

  note(level: LogLevel, message: string): void {
    this.options.log(level, message);
  }

  // ---- views ----

  get views(): ReadonlyMap<string, View> {
    return this.registry.views;
  }

  createView(name: string, kind: 'snapshot' | 'clone', pointText: string): Promise<View> {
    return this.registry.create(name, kind, pointText);
  }

  removeView(name: string): Promise<void> {
    return this.registry.remove(name);
  }

  stepView(name: string, how: StepRequest): Promise<StepResult> {
    return this.registry.step(name, how);
  }

  /** A private view at `seq`, held still while `work` runs. */
  withView<T>(seq: number, work: (view: View) => Promise<T>): Promise<T> {
    return this.registry.withView(seq, work);
  }

  exports(): ExportBackend[] {
    return this.registry.exports();
  }

  // ---- bookmarks ----

  async addBookmark(name: string, pointText: string | undefined): Promise<Bookmark> {
    if (!VIEW_NAME.test(name)) {
      throw new RewindError('REWIND_BAD_ARGUMENT', `bookmark name "${name}" is invalid`, {
        hint: 'use letters, digits, dot, dash and underscore (at most 64)',
      });
    }
    return this.pipeline.exclusive(async () => {
      const seq = pointText === undefined ? this.seqCommitted() : this.points.resolve(pointText);
      if (pointText === undefined) this.points.refuseInsideResync(seq);
      const timeNs = await this.history.seqTimeNs(seq);
      this.catalog.addBookmark({
        name,
        seq,
        timeUs: Number(timeNs / 1000n),
        createdAt: new Date().toISOString(),
        pinnedUntil: null,
      });
      return { name, seq, time: formatTimeNs(timeNs) };
    });
  }

  /** Pins a bookmark ('forever', or until an ISO time) so history from it on is never dropped. */
  pinBookmark(name: string, until: string | null): Bookmark & { pinnedUntil: string | null } {
    if (until !== null && until !== 'forever' && Number.isNaN(Date.parse(until))) {
      throw new RewindError('REWIND_BAD_ARGUMENT', `--until "${until}" is not a time`, {
        hint: 'an ISO-8601 time, e.g. 2027-01-31T00:00:00Z',
      });
    }
    if (!this.catalog.pinBookmark(name, until)) {
      throw new RewindError('REWIND_NOT_FOUND', `no bookmark named "${name}"`, {
        hint: 'rewind bookmarks lists them',
      });
    }
    const row = this.catalog.bookmark(name);
    return {
      name,
      seq: row?.seq ?? 0,
      time: formatTimeNs(BigInt(row?.timeUs ?? 0) * 1000n),
      pinnedUntil: until,
    };
  }

  removeBookmark(name: string): void {
    if (!this.catalog.removeBookmark(name)) {
      throw new RewindError('REWIND_NOT_FOUND', `no bookmark named "${name}"`, {
        hint: 'rewind bookmarks lists them',
      });
    }
  }

  bookmarks(): (Bookmark & { createdAt: string; pinnedUntil: string | null })[] {
    return this.catalog.bookmarks().map((b) => ({
      name: b.name,
      seq: b.seq,
      time: formatTimeNs(BigInt(b.timeUs) * 1000n),
      createdAt: b.createdAt,
      pinnedUntil: b.pinnedUntil,
    }));
  }

  // ---- status and shutdown ----

  /** Since when writes are captured while none is committed yet (their times are not known). */
  private uncommittedSinceMs: number | undefined;

  /**
   * How far the committed point lags behind the last captured write, in capture time. Before the
   * first commit the last committed write has no time: the lag is then counted from when the
   * manager first saw captured writes waiting (a lower bound), never from the epoch.
   */
  private lagSeconds(
    agent: AgentStatus | undefined,
    seqCaptured: number,
    committed: CommittedPosition,
  ): number {
    if (!agent || seqCaptured <= committed.seq) {
      this.uncommittedSinceMs = undefined;
      return 0;
    }
    if (committed.seq > 0) {
      this.uncommittedSinceMs = undefined;
      return Math.max(0, Number(agent.timeCapturedNs - committed.timeNs) / 1e9);
    }
    this.uncommittedSinceMs ??= agent.receivedAtMs;
    return Math.max(0, (Date.now() - this.uncommittedSinceMs) / 1000);
  }

  status(): ManagerStatus {
    const agent = this.link.agentStatus;
    const connected = this.link.connected;
    const committed = this.pipeline.committed;
    const seqCaptured = Math.max(agent?.seqCaptured ?? committed.seq, committed.seq);
    const lagSeconds = this.lagSeconds(agent, seqCaptured, committed);
    return {
      volumeSet: {
        id: this.catalog.getMeta('volumeSetId') ?? null,
        name: this.catalog.getMeta('volumeSetName') ?? null,
      },
      volumes: this.replicaList.map((r) => ({ name: r.name, sizeBytes: r.sizeBytes })),
      agentConnected: connected,
      seqCaptured,
      seqCommitted: committed.seq,
      lagWrites: seqCaptured - committed.seq,
      lagSeconds,
      lastCommittedTime: committed.timeNs > 0n ? formatTimeNs(committed.timeNs) : null,
      spoolBytes: agent?.spoolBytes ?? 0,
      sealedPending: agent?.sealedPending ?? 0,
      mode: connected ? (agent?.mode ?? 'logging') : 'disconnected',
      failure: agent?.failure ?? null,
      offline: agent?.restoring
        ? { restore: agent.restoring.id, volumes: agent.restoring.volumes }
        : null,
      transactions: committed.idx,
      views: this.registry.views.size,
      journalBytes: this.catalog.journalBytes(),
    };
  }

  /** The archive's state with its full images, or undefined when none is configured. */
  archiveStatus(): (ArchiveStatus & { fulls: FullsStatus }) | undefined {
    const status = this.archiver?.status();
    if (status === undefined || this.fullImages === undefined) return undefined;
    const totals = this.catalog.fullTotals();
    const schedule = this.fullImages.schedule();
    const alerts = [...status.alerts];
    if (schedule.lastError !== null) {
      alerts.push({
        level: 'error',
        message: `the scheduled full image failed: ${schedule.lastError}`,
      });
    }
    return {
      ...status,
      alerts,
      ...(this.archiveRetention ? { retention: this.archiveRetention.status() } : {}),
      fulls: {
        count: totals.fulls,
        chunks: totals.chunks,
        chunkStoredBytes: totals.chunkStoredBytes,
        newest: this.catalog.newestFull() ?? null,
        running: this.fullImages.progress(),
        every: schedule.everyMs === null ? 'off' : formatDuration(schedule.everyMs),
        nextAt: schedule.nextAt,
        lastError: schedule.lastError,
      },
    };
  }

  /**
   * Takes a virtual full image of `volumes` (names; all when empty) at POINT (the newest
   * committed seq when not given); progress per chunk. Refused REWIND_BUSY while one runs.
   */
  async takeFull(
    request: { volumes: string[]; at?: string },
    onProgress?: (progress: FullProgress) => void,
  ): Promise<FullResult> {
    this.requireArchiver();
    const fulls = this.fullImages as FullImages;
    const volumes = request.volumes.map((name) => this.history.volumeIndex(name));
    const seq = request.at === undefined ? this.seqCommitted() : this.points.resolve(request.at);
    return await fulls.take({ seq, volumes, reason: 'command' }, onProgress);
  }

  /** The full images the catalog records, oldest first. */
  fulls(): ArchiveFullRow[] {
    this.requireArchiver();
    return this.catalog.fulls();
  }

  /** Capture time of write `seq` in µs (0 for seq 0), from the journal or the archive's rows. */
  private async seqTimeUs(seq: number): Promise<number> {
    if (seq === 0) return 0;
    const local = this.catalog.txContaining(seq);
    if (local && local.kind !== 'merged') {
      return Number((await this.history.seqTimeNs(seq)) / 1000n);
    }
    // The records of an archived transaction are not local: its first or last capture time.
    const archived = this.catalog.archiveTxContaining(seq);
    if (archived) return seq === archived.seqFirst ? archived.timeFirstUs : archived.timeLastUs;
    return local ? local.timeLastUs : 0;
  }

  /** The archiver, or the one "no archive configured" refusal. */
  requireArchiver(): Archiver {
    if (this.archiver) return this.archiver;
    throw new RewindError('REWIND_NOT_FOUND', 'this manager has no archive configured', {
      hint: 'start it with --archive DIR or --archive s3://BUCKET/PREFIX',
    });
  }

  /**
   * What serving POINT takes from the archive (objects and bytes to fetch), or null when the
   * journal serves it; refused like any POINT when neither tier keeps it.
   */
  archivePlan(pointText: string): OldPointPlan | null {
    const seq = this.points.resolve(pointText);
    if (this.oldPoints?.anchorOf(seq) === undefined) return null;
    const planned = this.oldPoints.plan(seq);
    return 'plan' in planned ? planned.plan : null;
  }

  /** Fetches what POINT needs from the archive into the cache (progress per object). */
  async fetchPoint(
    pointText: string,
    onProgress?: (progress: FetchProgress) => void,
  ): Promise<void> {
    await this.fetchTimes(pointText, onProgress);
    await this.registry.prefetch(this.points.resolve(pointText), onProgress);
  }

  /**
   * When POINT is a time among the writes of an archived transaction, fetches that transaction's
   * object into the archive cache, so the time resolves to its exact seq from then on (while the
   * object stays cached); nothing otherwise. A POINT refused for another reason is left to the
   * command that takes it.
   */
  async fetchTimes(
    pointText: string,
    onProgress?: (progress: FetchProgress) => void,
  ): Promise<void> {
    try {
      this.points.resolve(pointText);
    } catch (error) {
      rethrowIfBug(error);
      if (!(error instanceof ArchivedTimeError) || this.oldPoints === undefined) return;
      await this.oldPoints.fetchSeqs(error.seqFirst, error.seqLast, onProgress);
    }
  }

  /** The objects the catalog records, oldest first. */
  archiveObjects(): ArchiveObjectRow[] {
    this.requireArchiver();
    return this.catalog.archiveObjects();
  }

  /** Checks every recorded object against the catalog (deep: reads and decodes each). */
  verifyArchive(options: {
    deep: boolean;
    onProgress?: (progress: VerifyProgress) => void;
  }): Promise<VerifyResult> {
    const archiver = this.requireArchiver();
    const old = this.oldPoints;
    const points = old && {
      sample: () => old.verifySample(),
      compare: (seq: number) =>
        old.compareWithJournal(seq, this.history, (at, work) => this.registry.withView(at, work)),
    };
    return verifyArchive(
      { catalog: this.catalog, txFiles: this.txFiles, archiver, ...(points ? { points } : {}) },
      options,
    );
  }

  /** Set by the first close(): a second one would close file descriptors reused since. */
  private closing: Promise<void> | undefined;

  close(): Promise<void> {
    this.closing ??= this.closeOnce();
    return this.closing;
  }

  private async closeOnce(): Promise<void> {
    await this.archiveRetention?.stop();
    await this.fullImages?.close();
    await this.archiver?.stop();
    await this.retention.stop();
    await this.link.close();
    await this.pipeline.close();
    this.registry.close();
    await this.merger.close();
    await this.applier.close();
    for (const replica of this.replicaList) replica.close();
    this.txFiles.close();
    this.catalog.close();
    await this.archiver?.store.close();
  }
}

/** The seqs of bookmarks pinned now (the archive's retention keeps every write from them on). */
function pinnedBookmarkSeqs(catalog: Catalog): number[] {
  const nowMs = Date.now();
  return catalog
    .bookmarks()
    .filter(
      (b) =>
        b.pinnedUntil !== null &&
        (b.pinnedUntil === 'forever' || Date.parse(b.pinnedUntil) > nowMs),
    )
    .map((b) => b.seq);
}

/**
 * Checks an agent's volume set against the one this manager protects and adopts it the first time;
 * volumes may be added, never changed or removed. New volumes get a replica.
 */
/** The full images part of `rewind archive status`. */
export interface FullsStatus {
  count: number;
  chunks: number;
  chunkStoredBytes: number;
  newest: ArchiveFullRow | null;
  running: FullProgress | null;
  /** The schedule's interval (`24h`, or `off`). */
  every: string;
  nextAt: string | null;
  lastError: string | null;
}

/** The archive cache's bound when none is given (DATA/archive-cache). */
const ARCHIVE_CACHE_BYTES_DEFAULT = 1024 * 1024 * 1024;

/** The nice value of retention's merge thread (ingest's threads stay at the process's). */
const MERGE_NICE = 10;

function adoptVolumeSet(
  catalog: Catalog,
  replicas: ReplicaVolume[],
  replicaDir: string,
  hello: {
    volumeSetId: string;
    volumeSetName: string;
    volumes: { name: string; sizeBytes: number }[];
  },
): void {
  const known = catalog.getMeta('volumeSetId');
  if (known && known !== hello.volumeSetId) {
    throw new RewindError(
      'REWIND_CONFIG',
      `this manager protects volume set ${catalog.getMeta('volumeSetName') ?? ''} (${known}), not ${hello.volumeSetId}`,
    );
  }
  const existing = catalog.volumes();
  for (const [idx, row] of existing.entries()) {
    const given = hello.volumes[idx];
    if (!given || given.name !== row.name || given.sizeBytes !== row.sizeBytes) {
      throw new RewindError(
        'REWIND_CONFIG',
        `volume ${row.name} (${row.sizeBytes} bytes) changed or disappeared in the agent's volume list`,
      );
    }
  }
  if (!known) {
    catalog.setMeta('volumeSetId', hello.volumeSetId);
    catalog.setMeta('volumeSetName', hello.volumeSetName);
  }
  for (let idx = 0; idx < hello.volumes.length; idx++) {
    const given = hello.volumes[idx] as { name: string; sizeBytes: number };
    // The replica first, then its row; a disk error between the two (or in an earlier hello)
    // leaves a replica the next hello opens again, never a row without an open replica.
    replicas[idx] ??= ReplicaVolume.open(replicaDir, idx, given.name, given.sizeBytes);
    if (idx >= existing.length) catalog.addVolume(idx, given.name, given.sizeBytes);
  }
}

/** Where image exports go: the directory given at start, else DATA/exports. */
export function exportDirOf(options: Pick<ManagerOptions, 'dataDir' | 'exportDir'>): string {
  return path.resolve(options.exportDir ?? path.join(options.dataDir, 'exports'));
}
