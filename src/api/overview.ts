// The overview of one manager as the console shows it and the metrics export it: the volume set and
// its volumes, the agent's connection and mode, captured and committed seq, lag, spool and journal
// bytes, open views, and running tasks (restores, image exports). Built from the Manager's public
// methods only.
import type {
  CommitEvent,
  ExportJob,
  Manager,
  ManagerStatus,
  RestoreStatus,
} from '../manager/index.js';

export interface Overview extends Omit<ManagerStatus, 'volumes' | 'views'> {
  /** A resync is arriving: its last transaction (resync-end) is not committed yet. */
  resyncing: boolean;
  journalBytes: number;
  volumes: {
    name: string;
    sizeBytes: number;
    /** Held offline by a production restore. */
    offline: boolean;
    /** Client writes the agent logged since it started, and their bytes (null: not reported). */
    writesCaptured: number | null;
    bytesCaptured: number | null;
  }[];
  views: { name: string; kind: 'snapshot' | 'clone'; seq: number; exports: string[] }[];
  bookmarks: number;
  /** Restores running, then the latest finished ones. */
  restores: RestoreStatus[];
  exports: ExportJob[];
}

/** Finished restores and exports the overview still lists. */
const FINISHED_TASKS_SHOWN = 5;
export class OverviewSource {
  private readonly manager: Manager;
  /**
   * The journal's bytes: summed from the catalog (a scan of every transaction row) once, and
   * again after retention thinned or dropped history; kept up by each commit in between.
   */
  private journal: { bytes: number; shape: string } | undefined;
  private readonly onCommit = (event: CommitEvent): void => {
    if (this.journal) this.journal.bytes += event.tx.redoBytes + event.tx.undoBytes;
  };

  constructor(manager: Manager) {
    this.manager = manager;
    manager.commitObservers.add(this.onCommit);
  }

  close(): void {
    this.manager.commitObservers.delete(this.onCommit);
  }

  status(): ManagerStatus {
    return this.manager.status();
  }

  journalBytes(): number {
    const shape = this.manager.catalog.historyShape();
    if (this.journal?.shape !== shape)
      this.journal = { bytes: this.manager.catalog.journalBytes(), shape };
    return this.journal.bytes;
  }

  /** Per volume index, what the agent reported as captured (checked where it was decoded). */
  captured(): readonly ({ writes: number; bytes: number } | undefined)[] {
    return this.manager.agentStatus?.captured ?? [];
  }

  overview(): Overview {
    const { volumes, views: _count, ...status } = this.status();
    const captured = this.captured();
    const offline = new Set(status.offline?.volumes ?? []);
    const restores = this.manager.restorer.list();
    const exports = this.manager.exporter.list();
    return {
      ...status,
      resyncing: this.manager.catalog.lastTx()?.kind === 'resync',
      journalBytes: this.journalBytes(),
      volumes: volumes.map((volume, index) => ({
        ...volume,
        offline: offline.has(volume.name),
        writesCaptured: captured[index]?.writes ?? null,
        bytesCaptured: captured[index]?.bytes ?? null,
      })),
      views: [...this.manager.views.values()].map((view) => ({
        name: view.name,
        kind: view.kind,
        seq: view.seq,
        exports: volumes.map((volume) => `${volume.name}@${view.name}`),
      })),
      bookmarks: this.manager.catalog.bookmarks().length,
      restores: latest(restores, (r) => r.state === 'running'),
      exports: latest(exports, (e) => e.state === 'running'),
    };
  }
}

/** The running ones, then the last few others, newest first. */
function latest<T>(all: T[], running: (item: T) => boolean): T[] {
  const finished = all.filter((item) => !running(item)).slice(-FINISHED_TASKS_SHOWN);
  return [...all.filter(running), ...finished.reverse()];
}
