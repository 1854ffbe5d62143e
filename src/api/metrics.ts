// Prometheus metrics (GET /metrics, prom-client, names prefixed rewind_): the manager's state read
// at each scrape (seq, lag, spool, journal, mode, views, tasks, per-volume captured counts the
// agent reports), counters and apply-duration histograms fed by each commit, and the process's
// own metrics. Docs: docs/CONSOLE.md "Metrics"; dashboard: docs/grafana/rewind.json.
import {
  collectDefaultMetrics,
  Counter,
  Gauge,
  Histogram,
  Registry,
  type LabelValues,
} from 'prom-client';
import type { CommitEvent, Manager } from '../manager/index.js';
import type { OverviewSource } from './overview.js';

/** The modes the agent can be in (rewind_mode has one series per mode, 1 for the current one). */
const MODES = ['logging', 'degraded', 'failed', 'disconnected'] as const;
/** Seconds: from a few milliseconds of a small segment to the minutes of a huge resync. */
const DURATION_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** Default process metrics dropped: gauges named like counters (promtool refuses them). */
const NON_COUNTERS_NAMED_TOTAL = [
  'nodejs_active_handles_total',
  'nodejs_active_requests_total',
  'nodejs_active_resources_total',
];

type Labels = 'volume_set' | 'volume' | 'kind' | 'mode' | 'id' | 'role';

export class Metrics {
  readonly registry = new Registry();
  private readonly manager: Manager;
  private readonly source: OverviewSource;
  private readonly committedWrites: Counter<Labels>;
  private readonly committedBytes: Counter<Labels>;
  private readonly committedTxs: Counter<Labels>;
  private readonly applySeconds: Histogram<Labels>;
  private readonly transactionSeconds: Histogram<Labels>;
  private readonly onCommit = (event: CommitEvent): void => this.commit(event);

  constructor(manager: Manager, source: OverviewSource, role: 'up' | 'manager') {
    this.manager = manager;
    this.source = source;
    const registers = [this.registry];
    const volumeSet = (): string => this.volumeSet();
    const gauge = (
      name: string,
      help: string,
      labelNames: Labels[],
      collect: (set: (labels: LabelValues<Labels>, value: number) => void) => void,
    ): void => {
      new Gauge<Labels>({
        name,
        help,
        labelNames,
        registers,
        collect() {
          this.reset();
          collect((labels, value) => this.set(labels, value));
        },
      });
    };
    const status = () => this.source.status();
    gauge(
      'rewind_info',
      'the volume set this process serves (value 1)',
      ['volume_set', 'id', 'role'],
      (set) => set({ volume_set: volumeSet(), id: status().volumeSet.id ?? '', role }, 1),
    );
    gauge('rewind_agent_connected', '1 while an agent is connected', ['volume_set'], (set) =>
      set({ volume_set: volumeSet() }, status().agentConnected ? 1 : 0),
    );
    gauge('rewind_mode', 'the agent mode: 1 for the current one', ['volume_set', 'mode'], (set) => {
      const mode = status().mode;
      for (const each of MODES) set({ volume_set: volumeSet(), mode: each }, mode === each ? 1 : 0);
    });
    gauge(
      'rewind_degraded',
      '1 while the agent runs degraded (writes only in the dirty map)',
      ['volume_set'],
      (set) => set({ volume_set: volumeSet() }, status().mode === 'degraded' ? 1 : 0),
    );
    const perSet = (name: string, help: string, value: () => number): void =>
      gauge(name, help, ['volume_set'], (set) => set({ volume_set: volumeSet() }, value()));
    perSet('rewind_seq_captured', 'last seq the agent captured', () => status().seqCaptured);
    perSet('rewind_seq_committed', 'last seq committed to history', () => status().seqCommitted);
    perSet('rewind_lag_writes', 'writes captured but not committed yet', () => status().lagWrites);
    perSet(
      'rewind_lag_seconds',
      'capture time between the last captured and the last committed write (RPO)',
      () => status().lagSeconds,
    );
    perSet('rewind_spool_bytes', "bytes in the agent's spool", () => status().spoolBytes);
    perSet(
      'rewind_spool_segments',
      'sealed segments waiting to ship',
      () => status().sealedPending,
    );
    perSet('rewind_journal_bytes', "bytes of the manager's redo and undo files", () =>
      this.source.journalBytes(),
    );
    perSet(
      'rewind_transactions',
      'committed transactions in the journal',
      () => status().transactions,
    );
    perSet('rewind_bookmarks', 'bookmarks', () => this.manager.catalog.bookmarks().length);
    perSet(
      'rewind_restores_running',
      'production restores running',
      () => this.manager.catalog.runningRestores().length,
    );
    perSet(
      'rewind_exports_running',
      'image exports running',
      () => this.manager.exporter.list().filter((job) => job.state === 'running').length,
    );
    gauge('rewind_views', 'open snapshots and clones', ['volume_set', 'kind'], (set) => {
      const views = [...this.manager.views.values()];
      for (const kind of ['snapshot', 'clone'] as const)
        set({ volume_set: volumeSet(), kind }, views.filter((v) => v.kind === kind).length);
    });
    gauge('rewind_volume_size_bytes', 'size of each volume', ['volume_set', 'volume'], (set) => {
      for (const volume of status().volumes)
        set({ volume_set: volumeSet(), volume: volume.name }, volume.sizeBytes);
    });
    gauge(
      'rewind_volume_offline',
      '1 while a restore holds the volume offline',
      ['volume_set', 'volume'],
      (set) => {
        const offline = new Set(status().offline?.volumes ?? []);
        for (const volume of status().volumes)
          set({ volume_set: volumeSet(), volume: volume.name }, offline.has(volume.name) ? 1 : 0);
      },
    );
    if (manager.archiver) this.archiveMetrics(perSet);
    // What the agent reports: counts since the agent started (a restart is a counter reset).
    const overview = this.source;
    const captured = (name: string, help: string, pick: 'writes' | 'bytes'): void => {
      new Counter<Labels>({
        name,
        help,
        labelNames: ['volume_set', 'volume'],
        registers,
        collect() {
          this.reset();
          const counts = overview.captured();
          overview.status().volumes.forEach((volume, index) => {
            const count = counts[index];
            if (count) this.inc({ volume_set: volumeSet(), volume: volume.name }, count[pick]);
          });
        },
      });
    };
    captured(
      'rewind_writes_captured_total',
      'client writes (write, zero, trim) the agent logged since it started',
      'writes',
    );
    captured(
      'rewind_bytes_captured_total',
      'bytes covered by the client writes the agent logged since it started (zeroes and trims included)',
      'bytes',
    );
    const counter = (name: string, help: string, labelNames: Labels[]): Counter<Labels> =>
      new Counter<Labels>({ name, help, labelNames, registers });
    this.committedWrites = counter(
      'rewind_writes_committed_total',
      'writes committed to history by this process (resync records included)',
      ['volume_set', 'volume'],
    );
    this.committedBytes = counter(
      'rewind_bytes_committed_total',
      'payload bytes committed to history by this process (zero and trim records carry none)',
      ['volume_set', 'volume'],
    );
    this.committedTxs = counter(
      'rewind_transactions_committed_total',
      'transactions committed by this process, by kind (redo, resync, resync-end)',
      ['volume_set', 'kind'],
    );
    this.applySeconds = new Histogram<Labels>({
      name: 'rewind_apply_duration_seconds',
      help: "a transaction's replica writes and their fdatasync",
      labelNames: ['volume_set'],
      buckets: DURATION_BUCKETS_S,
      registers,
    });
    this.transactionSeconds = new Histogram<Labels>({
      name: 'rewind_transaction_duration_seconds',
      help: "from a segment's turn in the apply queue to its commit (redo copy, undo, apply, catalog)",
      labelNames: ['volume_set'],
      buckets: DURATION_BUCKETS_S,
      registers,
    });
    collectDefaultMetrics({ register: this.registry, prefix: 'rewind_' });
    // prom-client names these gauges with the counters' _total suffix, which promtool refuses.
    for (const name of NON_COUNTERS_NAMED_TOTAL) this.registry.removeSingleMetric(`rewind_${name}`);
    manager.commitObservers.add(this.onCommit);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  close(): void {
    this.manager.commitObservers.delete(this.onCommit);
    this.registry.clear();
  }

  private volumeSet(): string {
    return this.manager.catalog.getMeta('volumeSetName') ?? 'none';
  }

  /** The archive's state, when one is configured (docs/CONSOLE.md "Metrics"). */
  private archiveMetrics(perSet: (name: string, help: string, value: () => number) => void): void {
    const archive = () => this.manager.requireArchiver().status();
    perSet('rewind_archive_seq', 'the last seq archived', () => archive().archivedThroughSeq);
    perSet(
      'rewind_archive_backlog_transactions',
      'committed transactions not archived yet',
      () => archive().backlog.transactions,
    );
    perSet(
      'rewind_archive_backlog_bytes',
      'redo and undo bytes not archived yet',
      () => archive().backlog.bytes,
    );
    perSet('rewind_archive_objects', 'objects in the archive', () => archive().objects);
    perSet(
      'rewind_archive_stored_bytes',
      'bytes stored in the archive',
      () => archive().storedBytes,
    );
    perSet('rewind_archive_ok', '1 unless archiving waits for the store or stopped', () =>
      ['waiting', 'stopped'].includes(archive().state) ? 0 : 1,
    );
    const volumeSet = (): string => this.volumeSet();
    new Counter<Labels>({
      name: 'rewind_archive_requests_total',
      help: 'requests made to the archive store since the manager started, by kind',
      labelNames: ['volume_set', 'kind'],
      registers: [this.registry],
      collect() {
        this.reset();
        const requests = archive().requests;
        for (const kind of ['put', 'get', 'head'] as const)
          this.inc({ volume_set: volumeSet(), kind }, requests[kind]);
      },
    });
  }

  private commit(event: CommitEvent): void {
    const volumeSet = this.volumeSet();
    const names = this.manager.replicas.map((r) => r.name);
    const writes = new Array<number>(names.length).fill(0);
    const bytes = new Array<number>(names.length).fill(0);
    for (const record of event.records) {
      writes[record.volume] = (writes[record.volume] ?? 0) + 1;
      if (record.kind === 'write')
        bytes[record.volume] = (bytes[record.volume] ?? 0) + record.lengthBytes;
    }
    names.forEach((volume, index) => {
      this.committedWrites.inc({ volume_set: volumeSet, volume }, writes[index] ?? 0);
      this.committedBytes.inc({ volume_set: volumeSet, volume }, bytes[index] ?? 0);
    });
    this.committedTxs.inc({ volume_set: volumeSet, kind: event.tx.kind });
    if (event.applyMs !== undefined)
      this.applySeconds.observe({ volume_set: volumeSet }, event.applyMs / 1000);
    const turnMs = Date.now() - Date.parse(event.tx.receivedAt);
    if (Number.isFinite(turnMs) && turnMs >= 0)
      this.transactionSeconds.observe({ volume_set: volumeSet }, turnMs / 1000);
  }
}
