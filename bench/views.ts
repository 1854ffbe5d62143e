// Views, on one `rewind up` with a mostly sparse volume: a base layer (1 MiB sequential writes over
// its first viewDataBytes), then a history of small random writes over the same bytes.
// - creation: the POST /api/views call for snapshots with 1k, 100k, 1M (short: 1k, 10k) writes of
//   history after their point, after one untimed warm-up snapshot;
// - reads: fio through a snapshot at the end of the base layer (reads of overwritten blocks come
//   from undo extents spread over the whole history) against a snapshot at the last seq (every
//   read goes to the replica);
// - export: nbdcopy of each snapshot's whole export to null:, in logical bytes per second.
import { formatSize, MiB, TARGETS, type Mode } from './config.js';
import { runFio, type FioJob, type FioResult } from './fio.js';
import { runToolOrThrow, withScope, type Scope } from './processes.js';
import { atLeast, atMost, median, row, type PeakMemory, type Row } from './report.js';
import { startRewindUp, type RewindUp } from './servers.js';

const VOLUME = 'v';
const PAST = 'past';
const LATEST = 'latest';

interface ReadWorkload {
  id: string;
  label: string;
  rw: 'randread' | 'read';
  blockBytes: number;
  iodepth: number;
  metric: 'iops' | 'mbps';
}

const READS: readonly ReadWorkload[] = [
  {
    id: 'randread-4k-qd32',
    label: '4 KiB random read, QD32',
    rw: 'randread',
    blockBytes: 4096,
    iodepth: 32,
    metric: 'iops',
  },
  {
    id: 'read-1m-qd8',
    label: '1 MiB sequential read, QD8',
    rw: 'read',
    blockBytes: MiB,
    iodepth: 8,
    metric: 'mbps',
  },
];

interface History {
  seqBase: number;
  seqLast: number;
}

/** Writes the base layer and the history; returns the seqs at the end of each. */
async function makeHistory(
  mode: Mode,
  up: RewindUp,
  scope: Scope,
  progress: (text: string) => void,
): Promise<History> {
  const fioDir = scope.dir('fio');
  const uri = up.uri(VOLUME);
  await runFio(
    [
      {
        uri,
        rw: 'write',
        blockBytes: MiB,
        iodepth: 8,
        sizeBytes: mode.viewDataBytes,
        length: { ios: mode.viewDataBytes / MiB },
      },
    ],
    fioDir,
    mode.stepTimeoutMs,
  );
  await up.api.sealAndWait();
  const seqBase = (await up.api.status()).seqCommitted;
  const writes = Math.max(...mode.historyWrites);
  const began = performance.now();
  const fio = await runFio(
    [
      {
        uri,
        rw: 'randwrite',
        blockBytes: mode.historyBlockBytes,
        iodepth: 32,
        sizeBytes: mode.viewDataBytes,
        length: { ios: writes },
      },
    ],
    fioDir,
    mode.stepTimeoutMs,
  );
  await up.api.sealAndWait();
  const seqLast = (await up.api.status()).seqCommitted;
  progress(
    `views: history of ${fio.write.ios} writes in ${((performance.now() - began) / 1000).toFixed(1)} s, seqs ${seqBase}..${seqLast}`,
  );
  return { seqBase, seqLast };
}

async function creationRows(
  mode: Mode,
  up: RewindUp,
  history: History,
  progress: (text: string) => void,
): Promise<Row[]> {
  const largest = Math.max(...mode.historyWrites);
  const rows: Row[] = [];
  // Untimed warm-up: the first view after start also pays for compiling the code paths.
  await up.api.createSnapshot('warm-up', history.seqLast);
  await up.api.removeView('warm-up');
  for (const writes of mode.historyWrites) {
    const name = `history-${writes}`;
    const seconds = await up.api.createSnapshot(name, history.seqLast - writes);
    await up.api.removeView(name);
    const ms = seconds * 1000;
    const msPer100k = ms / (writes / 100_000);
    progress(`views: creation with ${writes} writes after the point: ${ms.toFixed(1)} ms`);
    const target =
      writes === largest
        ? atMost(
            msPer100k,
            TARGETS.viewCreationMsPer100k,
            `<= ${TARGETS.viewCreationMsPer100k} ms per 100k writes`,
          )
        : undefined;
    rows.push(
      row(
        {
          id: `view-create.${writes}`,
          section: `view creation (POST /api/views), ${formatSize(mode.historyBlockBytes)} random writes after the point`,
          label: `${writes.toLocaleString('en-US')} writes after the point`,
          value: ms,
          unit: 'ms',
          detail: `${msPer100k.toFixed(1)} ms per 100k writes`,
        },
        target,
      ),
    );
  }
  return rows;
}

const figure = (read: ReadWorkload, fio: FioResult): number =>
  read.metric === 'iops' ? fio.iops : fio.bytesPerSecond / 1e6;

async function readRows(
  mode: Mode,
  up: RewindUp,
  scope: Scope,
  progress: (text: string) => void,
): Promise<Row[]> {
  const fioDir = scope.dir('fio');
  const rows: Row[] = [];
  for (const read of READS) {
    const figures = new Map<string, number[]>([
      [LATEST, []],
      [PAST, []],
    ]);
    for (let repetition = 1; repetition <= mode.repetitions; repetition += 1) {
      for (const view of [LATEST, PAST]) {
        const job: FioJob = {
          uri: up.uri(`${VOLUME}@${view}`),
          rw: read.rw,
          blockBytes: read.blockBytes,
          iodepth: read.iodepth,
          sizeBytes: mode.viewDataBytes,
          length: { rampSeconds: mode.rampSeconds, runSeconds: mode.runSeconds },
        };
        const value = figure(read, await runFio([job], fioDir, mode.stepTimeoutMs));
        figures.get(view)?.push(value);
        progress(
          `views: ${read.id} from ${view} #${repetition}: ${value.toFixed(1)} ${read.metric === 'iops' ? 'IOPS' : 'MB/s'}`,
        );
      }
    }
    const latest = median(figures.get(LATEST) ?? []);
    const past = median(figures.get(PAST) ?? []);
    const section = `view reads: ${read.label} over the ${formatSize(mode.viewDataBytes)} written`;
    const unit = read.metric === 'iops' ? 'IOPS' : 'MB/s';
    const runs = (view: string): string =>
      `runs: ${(figures.get(view) ?? []).map((v) => v.toFixed(0)).join(' ')}`;
    rows.push(
      row({
        id: `view-read.${read.id}.replica`,
        section,
        label: 'snapshot at the last seq (replica)',
        value: latest,
        unit,
        detail: runs(LATEST),
      }),
    );
    rows.push(
      row(
        {
          id: `view-read.${read.id}.history`,
          section,
          label: 'snapshot before the history (undo)',
          value: past,
          unit,
          detail: runs(PAST),
          ratio: past / latest,
          ratioTo: 'replica',
        },
        atLeast(past / latest, TARGETS.viewReadRatio, `>= ${TARGETS.viewReadRatio}x replica`),
      ),
    );
  }
  return rows;
}

async function exportRows(
  mode: Mode,
  up: RewindUp,
  progress: (text: string) => void,
): Promise<Row[]> {
  const rows: Row[] = [];
  for (const [view, label] of [
    [LATEST, 'snapshot at the last seq'],
    [PAST, 'snapshot before the history'],
  ] as const) {
    const { seconds } = await runToolOrThrow(
      'nbdcopy',
      [up.uri(`${VOLUME}@${view}`), 'null:'],
      mode.stepTimeoutMs,
    );
    const gbps = mode.viewVolumeBytes / seconds / 1e9;
    progress(`export: ${view} in ${seconds.toFixed(2)} s = ${gbps.toFixed(2)} GB/s logical`);
    rows.push(
      row(
        {
          id: `export.${view}`,
          section: `full-image export: nbdcopy to null:, ${formatSize(mode.viewVolumeBytes)} volume with ${formatSize(mode.viewDataBytes)} of data`,
          label,
          value: gbps,
          unit: 'GB/s',
          detail: `${seconds.toFixed(2)} s for ${formatSize(mode.viewVolumeBytes)} (logical)`,
        },
        atLeast(gbps, TARGETS.exportGBps, `>= ${TARGETS.exportGBps} GB/s`),
      ),
    );
  }
  return rows;
}

export async function measureViews(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  return withScope(mode.graceMs, async (scope) => {
    const up = await startRewindUp(scope, [{ name: VOLUME, sizeBytes: mode.viewVolumeBytes }]);
    const history = await makeHistory(mode, up, scope, progress);
    const rows = await creationRows(mode, up, history, progress);
    await up.api.createSnapshot(PAST, history.seqBase);
    await up.api.createSnapshot(LATEST, history.seqLast);
    rows.push(
      ...(await readRows(mode, up, scope, progress)),
      ...(await exportRows(mode, up, progress)),
    );
    memory.record('rewind up', up.process.peakRssBytes());
    return rows;
  });
}
