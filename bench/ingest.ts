// Ingest: every workload of the table against nbdkit, qemu-nbd and Rewind, one server at a time on
// a fresh file or data dir, `repetitions` times (servers interleaved, so a slow spell of the machine
// does not hit one server only); the row is the median run, and Rewind's ratio is to nbdkit.
import { formatSize, WORKLOADS, type Mode, type Workload } from './config.js';
import { runFio, type FioResult } from './fio.js';
import { withScope } from './processes.js';
import { atLeast, median, row, type PeakMemory, type Row } from './report.js';
import { INGEST_RUNNERS, SERVER_KINDS, type ServerKind } from './servers.js';

async function runOnce(
  mode: Mode,
  workload: Workload,
  server: ServerKind,
  memory: PeakMemory,
): Promise<FioResult> {
  return withScope(mode.graceMs, async (scope) => {
    const endpoint = await INGEST_RUNNERS[server](scope, mode.fileBytes);
    const fio = await runFio(
      [
        {
          uri: endpoint.uri,
          rw: workload.rw,
          blockBytes: workload.blockBytes,
          iodepth: workload.iodepth,
          sizeBytes: mode.fileBytes,
          ...(workload.readPercent === undefined ? {} : { readPercent: workload.readPercent }),
          length: { rampSeconds: mode.rampSeconds, runSeconds: mode.runSeconds },
        },
      ],
      scope.dir('fio'),
      mode.stepTimeoutMs,
    );
    if (server === 'rewind') memory.record('rewind up', endpoint.process.peakRssBytes());
    return fio;
  });
}

const figure = (workload: Workload, fio: FioResult): number =>
  workload.metric === 'iops' ? fio.iops : fio.bytesPerSecond / 1e6;

/** The run whose figure is the median (for its secondary figures). */
function medianRun(workload: Workload, runs: FioResult[]): FioResult {
  const middle = median(runs.map((run) => figure(workload, run)));
  return [...runs].sort(
    (a, b) => Math.abs(figure(workload, a) - middle) - Math.abs(figure(workload, b) - middle),
  )[0] as FioResult;
}

function detail(workload: Workload, runs: FioResult[]): string {
  const run = medianRun(workload, runs);
  const other =
    workload.metric === 'iops'
      ? `${(run.bytesPerSecond / 1e6).toFixed(1)} MB/s`
      : `${Math.round(run.iops)} IOPS`;
  const latency = `write p50/p99 ${run.write.p50Ms.toFixed(2)}/${run.write.p99Ms.toFixed(2)} ms`;
  return `${other}, ${latency}, ${runs.length} run(s): ${runs.map((r) => Math.round(figure(workload, r))).join(' ')}`;
}

function workloadRows(mode: Mode, workload: Workload, runs: Map<ServerKind, FioResult[]>): Row[] {
  const medians = new Map(
    SERVER_KINDS.map((server) => [
      server,
      median((runs.get(server) ?? []).map((run) => figure(workload, run))),
    ]),
  );
  const nbdkit = medians.get('nbdkit') ?? 0;
  return SERVER_KINDS.map((server) => {
    const value = medians.get(server) ?? 0;
    const ratio = value / nbdkit;
    const fields = {
      id: `ingest.${workload.id}.${server}`,
      section: `ingest: ${workload.label} (${formatSize(mode.fileBytes)} file)`,
      label: server,
      value,
      unit: workload.metric === 'iops' ? 'IOPS' : 'MB/s',
      detail: detail(workload, runs.get(server) ?? []),
      ...(server === 'nbdkit' ? {} : { ratio, ratioTo: 'nbdkit' }),
    };
    const target =
      server === 'rewind' && workload.targetRatio !== undefined
        ? atLeast(ratio, workload.targetRatio, `>= ${workload.targetRatio}x nbdkit`)
        : undefined;
    return row(fields, target);
  });
}

export async function measureIngest(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  const rows: Row[] = [];
  for (const workload of WORKLOADS) {
    const runs = new Map<ServerKind, FioResult[]>(SERVER_KINDS.map((server) => [server, []]));
    for (let repetition = 1; repetition <= mode.repetitions; repetition += 1) {
      for (const server of SERVER_KINDS) {
        const fio = await runOnce(mode, workload, server, memory);
        runs.get(server)?.push(fio);
        progress(
          `ingest ${workload.id} ${server} #${repetition}: ${Math.round(fio.iops)} IOPS, ${(fio.bytesPerSecond / 1e6).toFixed(1)} MB/s`,
        );
      }
    }
    rows.push(...workloadRows(mode, workload, runs));
  }
  return rows;
}
