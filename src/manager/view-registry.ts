// The views of a manager: named snapshots and clones (kept in the catalog, rebuilt at start, each
// exported over NBD as VOLUME@NAME), the private views restores and image exports read from, and
// stepping a view write by write. Every view takes each new transaction's undo extents before
// the replica changes, so none ever moves on its own.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  assert,
  errorMessage,
  rethrowIfBug,
  RewindError,
  type LogFunction,
} from '../core/index.js';
import type { ExportBackend } from '../nbd/index.js';
import type { UndoExtent } from '../log/index.js';
import { DIR_MODE_PRIVATE } from '../platform/index.js';
import { Overlay, View } from '../views/index.js';
import type { Catalog } from './catalog.js';
import type { PointResolver } from './points.js';
import {
  ImageHistory,
  type ArchivedHistory,
  type FetchProgress,
  type OldPoints,
} from './old-points.js';
import type { LogEntry, StoredHistory } from './stored-history.js';
import { ViewExport } from './view-export.js';

/** Names of views and bookmarks: they appear in NBD export names and file names. */
export const VIEW_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const VIEW_NAME_HINT = 'use letters, digits, dot, dash and underscore (at most 64)';

export interface StepRequest {
  forward?: number;
  back?: number;
  to?: string;
  discardWrites?: boolean;
}

export interface StepResult {
  from: number;
  to: number;
  crossed: LogEntry[];
}

export interface ViewRegistryOptions {
  /** Where clone overlays live (one directory per clone). */
  clonesDir: string;
  history: StoredHistory;
  catalog: Pick<Catalog, 'views' | 'addView' | 'removeView' | 'updateViewSeq'>;
  points: PointResolver;
  /** Runs `work` between transactions (a view is built or moved while nothing is applied). */
  exclusive: <T>(work: () => Promise<T>) => Promise<T>;
  log: LogFunction;
  /** Exports appeared or disappeared: the NBD server drops clients of `removed`. */
  onExportsChanged?: (removed: string[]) => void;
  /** With an archive: points older than the journal, served from it. */
  oldPoints?: OldPoints;
}

export class ViewRegistry {
  private readonly options: ViewRegistryOptions;
  private readonly history: StoredHistory;
  readonly views = new Map<string, View>();
  /** Views used by restores and image exports: not exported, but they take undo like any view. */
  private readonly internalViews = new Set<View>();
  private readonly viewExports = new Map<string, ExportBackend[]>();
  /** Views at points older than the journal, with the archived history each reads. */
  private readonly archived = new Map<View, ArchivedHistory | ImageHistory>();

  constructor(options: ViewRegistryOptions) {
    this.options = options;
    this.history = options.history;
  }

  /** Rebuilds the cataloged views at start, each at its seq (or the last committed one). */
  async load(): Promise<void> {
    for (const row of this.options.catalog.views()) {
      const seq = Math.min(row.seq, this.history.seqCommitted());
      let history: StoredHistory | ArchivedHistory | ImageHistory;
      try {
        await this.prefetch(seq);
        history = this.historyAt(seq);
      } catch (error) {
        rethrowIfBug(error);
        // Its objects cannot be fetched now (the archive is down): left out, tried next start.
        this.options.log(
          'error',
          `view ${row.name} at seq ${seq} is not served: ${errorMessage(error)}`,
        );
        continue;
      }
      const overlays = row.kind === 'clone' ? this.openOverlays(row.name) : undefined;
      const view = await View.build(row.name, row.kind, seq, history, overlays);
      if (history !== this.history)
        this.archived.set(view, history as ArchivedHistory | ImageHistory);
      this.register(view);
    }
  }

  /**
   * Fetches what a view at `seq` needs from the archive, when the journal cannot serve it
   * (outside the turn queue: a long fetch must not hold up transactions).
   */
  async prefetch(seq: number, onProgress?: (progress: FetchProgress) => void): Promise<void> {
    const oldPoints = this.options.oldPoints;
    if (oldPoints?.anchorOf(seq) === undefined) return;
    const planned = oldPoints.plan(seq);
    if ('refused' in planned) {
      throw new RewindError('REWIND_POINT_INVALID', `seq ${seq}: ${planned.refused}`);
    }
    await oldPoints.fetch(planned.plan, onProgress);
  }

  /** The history a view at `seq` reads: the journal's, or the archive's before it (fetched). */
  private historyAt(seq: number): StoredHistory | ArchivedHistory | ImageHistory {
    const oldPoints = this.options.oldPoints;
    if (oldPoints?.anchorOf(seq) === undefined) return this.history;
    const planned = oldPoints.plan(seq);
    if ('refused' in planned) {
      throw new RewindError('REWIND_POINT_INVALID', `seq ${seq}: ${planned.refused}`);
    }
    if (planned.plan.objects.some((o) => !o.cached)) {
      throw new RewindError('REWIND_BUSY', `seq ${seq}: its archive objects are not fetched`, {
        hint: 'try again (retention moved the history while they were fetched)',
      });
    }
    return oldPoints.history(planned.plan, this.history);
  }

  /** Builds a view at `seq` over the history that serves it, remembered for archived ones. */
  private async buildAt(
    name: string,
    kind: 'snapshot' | 'clone',
    seq: number,
    overlays: Overlay[] | undefined,
  ): Promise<View> {
    const history = this.historyAt(seq);
    try {
      const view = await View.build(name, kind, seq, history, overlays);
      if (history !== this.history)
        this.archived.set(view, history as ArchivedHistory | ImageHistory);
      return view;
    } catch (error) {
      rethrowIfBug(error);
      if (history !== this.history) (history as ArchivedHistory | ImageHistory).release();
      throw error;
    }
  }

  private forget(view: View): void {
    this.archived.get(view)?.release();
    this.archived.delete(view);
  }

  /** A view of `name`, or the one "no snapshot or clone named" refusal. */
  get(name: string): View {
    const view = this.views.get(name);
    if (!view) {
      throw new RewindError('REWIND_NOT_FOUND', `no snapshot or clone named "${name}"`, {
        hint: 'rewind ls lists them',
      });
    }
    return view;
  }

  /** The clone called `name`, or a refusal. */
  clone(name: string): View {
    const view = this.views.get(name);
    if (!view || view.kind !== 'clone') {
      throw new RewindError('REWIND_NOT_FOUND', `no clone named "${name}"`, {
        hint: 'rewind ls lists snapshots and clones',
      });
    }
    return view;
  }

  async create(name: string, kind: 'snapshot' | 'clone', pointText: string): Promise<View> {
    if (!VIEW_NAME.test(name)) {
      throw new RewindError('REWIND_BAD_ARGUMENT', `name "${name}" is invalid`, {
        hint: VIEW_NAME_HINT,
      });
    }
    this.refuseTaken(name);
    if (this.history.volumeCount === 0) {
      throw new RewindError('REWIND_BUSY', 'no volume set is known yet: no agent has connected');
    }
    await this.prefetch(this.options.points.resolve(pointText));
    return this.options.exclusive(async () => {
      const seq = this.options.points.resolve(pointText);
      this.refuseTaken(name);
      const overlays = kind === 'clone' ? this.openOverlays(name) : undefined;
      const view = await this.buildAt(name, kind, seq, overlays);
      this.options.catalog.addView({ name, kind, seq, createdAt: new Date().toISOString() });
      this.register(view);
      return view;
    });
  }

  private refuseTaken(name: string): void {
    if (this.views.has(name)) {
      throw new RewindError(
        'REWIND_CONFLICT',
        `a snapshot or clone named "${name}" already exists`,
      );
    }
  }

  async remove(name: string): Promise<void> {
    const view = this.get(name);
    await this.options.exclusive(async () => {
      const exports = this.viewExports.get(name) ?? [];
      this.views.delete(name);
      this.forget(view);
      this.viewExports.delete(name);
      this.options.onExportsChanged?.(exports.map((e) => e.name));
      for (const overlay of view.overlays ?? []) overlay.close();
      this.options.catalog.removeView(name);
      await fsp.rm(path.join(this.options.clonesDir, name), { recursive: true, force: true });
    });
  }

  /** The NBD exports of every view (VOLUME@NAME). */
  exports(): ExportBackend[] {
    return [...this.viewExports.values()].flat();
  }

  /**
   * Runs `work` with a private view at `seq` that stays put while new transactions are applied
   * (it takes their undo like any view). Built between transactions, released when `work` settles.
   */
  async withView<T>(seq: number, work: (view: View) => Promise<T>): Promise<T> {
    await this.prefetch(seq);
    const view = await this.options.exclusive(async () => {
      assert(seq <= this.history.seqCommitted(), 'internal view at a committed seq');
      const built = await this.buildAt(`internal-${seq}`, 'snapshot', seq, undefined);
      this.internalViews.add(built);
      return built;
    });
    try {
      return await work(view);
    } finally {
      this.internalViews.delete(view);
      this.forget(view);
    }
  }

  /**
   * What the views hold against retention: every open view's point stays addressable and bounds the
   * oldest point; history after a private view's point may not change at all while it reads.
   */
  /** The seq of every open view, named or internal (the archive's retention holds them). */
  viewSeqs(): number[] {
    return [...this.views.values(), ...this.internalViews].map((v) => v.seq);
  }

  pins(): {
    keepPoints: number[];
    floorSeq: number | undefined;
    frozenAfterSeq: number | undefined;
  } {
    // A view at a point older than the journal holds the local point it is built on; one read
    // from a full image's materialised image holds nothing local.
    const local = (v: View): boolean => !(this.archived.get(v) instanceof ImageHistory);
    const held = (v: View): number => this.archived.get(v)?.plan.anchorSeq ?? v.seq;
    const named = [...this.views.values()].filter(local).map(held);
    const internal = [...this.internalViews].filter(local).map(held);
    const all = [...named, ...internal];
    return {
      keepPoints: named,
      floorSeq: all.length > 0 ? Math.min(...all) : undefined,
      frozenAfterSeq: internal.length > 0 ? Math.min(...internal) : undefined,
    };
  }

  /**
   * Rebuilds, at their own points, the views that read history before `seq` (retention just swapped
   * transactions there); each takes its new maps in one synchronous step. Runs between
   * transactions.
   */
  async rebuildBefore(seq: number): Promise<void> {
    for (const view of this.views.values()) {
      if (view.seq >= seq || this.archived.get(view) instanceof ImageHistory) continue;
      const seqBefore = view.seq;
      const history = this.archived.get(view) ?? this.history;
      const rebuilt = await View.build(view.name, view.kind, view.seq, history, view.overlays);
      assert(view.seq === seqBefore, 'a view does not move while retention rebuilds it');
      view.adopt(rebuilt);
    }
  }

  /** A transaction's undo is durable and its replica writes come next: every view maps it first. */
  addUndo(idx: number, extents: readonly UndoExtent[]): void {
    // A view over a materialised image reads no replica that changes: it takes no undo.
    for (const view of this.views.values()) {
      if (!(this.archived.get(view) instanceof ImageHistory)) view.addUndo(idx, extents);
    }
    for (const view of this.internalViews) {
      if (!(this.archived.get(view) instanceof ImageHistory)) view.addUndo(idx, extents);
    }
  }

  /**
   * Moves a snapshot (or a clone without writes of its own, or with `discardWrites`) to another
   * point; returns the writes crossed. Its NBD clients read the new content on their next read.
   */
  async step(name: string, how: StepRequest): Promise<StepResult> {
    const view = this.get(name);
    const given = [how.forward, how.back, how.to].filter((v) => v !== undefined).length;
    if (given !== 1) {
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        'give exactly one of --forward N, --back N or --to POINT',
      );
    }
    for (const n of [how.forward, how.back]) {
      if (n !== undefined && (!Number.isSafeInteger(n) || n < 1)) {
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          `a step count must be a positive integer, not ${n}`,
        );
      }
    }
    return this.options.exclusive(async () => {
      const from = view.seq;
      const points = this.options.points;
      const target =
        how.to !== undefined
          ? points.resolve(how.to)
          : points.afterSteps(name, from, how.forward ?? -(how.back as number));
      const overlays = view.overlays ?? [];
      if (overlays.some((o) => o.hasWrites)) {
        if (!how.discardWrites) {
          throw new RewindError(
            'REWIND_CONFLICT',
            `clone ${name} has writes of its own; stepping would mix them with another point`,
            { hint: 'add --discard-writes to drop them, or make a new clone' },
          );
        }
        for (const overlay of overlays) await overlay.discard();
      }
      const old = this.options.oldPoints;
      const archived =
        old !== undefined && (this.archived.has(view) || old.anchorOf(target) !== undefined);
      if (archived || this.history.thinnedBetween(Math.min(from, target), Math.max(from, target))) {
        // Thinned history has no writes to step across, and archived history is read from its
        // objects: the view is built anew at the target.
        if (archived) await this.prefetch(target);
        const rebuilt = await this.buildAt(view.name, view.kind, target, view.overlays);
        const history = this.archived.get(rebuilt);
        this.forget(view);
        if (history) {
          this.archived.delete(rebuilt);
          this.archived.set(view, history);
        }
        view.adopt(rebuilt);
        this.options.catalog.updateViewSeq(name, target);
        const crossed: LogEntry[] = [];
        const range = { from: Math.min(from, target) + 1, to: Math.max(from, target) };
        for await (const entry of this.history.log(range)) crossed.push(entry);
        return { from, to: target, crossed };
      }
      const crossed = await view.stepTo(target);
      this.options.catalog.updateViewSeq(name, target);
      const kinds = new Map<number, ReturnType<StoredHistory['txKind']>>();
      const kindOf = (idx: number): ReturnType<StoredHistory['txKind']> => {
        const known = kinds.get(idx) ?? this.history.txKind(idx);
        kinds.set(idx, known);
        return known;
      };
      return {
        from,
        to: target,
        crossed: crossed.map(({ idx, record }) => this.history.logEntry(record, kindOf(idx))),
      };
    });
  }

  close(): void {
    for (const view of this.views.values())
      for (const overlay of view.overlays ?? []) overlay.close();
  }

  private openOverlays(name: string): Overlay[] {
    const dir = path.join(this.options.clonesDir, name);
    fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE_PRIVATE });
    return this.history.replicas.map((replica) =>
      Overlay.open(
        path.join(dir, `${replica.name}.img`),
        path.join(dir, `${replica.name}.journal`),
        replica.sizeBytes,
      ),
    );
  }

  private register(view: View): void {
    this.views.set(view.name, view);
    this.viewExports.set(
      view.name,
      this.history.replicas.map(
        (replica) =>
          new ViewExport(view, {
            volume: replica.index,
            name: `${replica.name}@${view.name}`,
            sizeBytes: replica.sizeBytes,
            log: this.options.log,
          }),
      ),
    );
    this.options.onExportsChanged?.([]);
  }
}
