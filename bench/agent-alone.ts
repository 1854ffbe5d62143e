// The agent alone against nbdkit, the targets of the write-path speed issue: `rewind agent` with
// its manager unreachable (the deployment with the manager on a backup host, during an outage of
// the link, so nothing else of Rewind runs on the machine) and nbdkit's file plugin, each with
// every one of its files in the same place: all on a tmpfs (what the software itself costs), on
// the disk with a fresh sparse image, and on the disk with an image written once first. 4 KiB
// random QD32 and QD1 (with its p99 write latency), 1 MiB sequential QD8; on the tmpfs also 4 jobs
// on 4 connections; and a sustained minute on the disk while the agent's spool grows.
import fs from 'node:fs';
import {
  AGENT_WORKLOADS,
  formatSize,
  MEMORY_DIR,
  MULTI_CONNECTION,
  SUSTAINED,
  type AgentWorkload,
  type Mode,
} from './config.js';
import { runFio, type FioJob, type FioResult } from './fio.js';
import { withScope } from './processes.js';
import { atLeast, atMost, median, row, type PeakMemory, type Row } from './report.js';
import { ON_DISK_SPARSE, startAgentAlone, startNbdkit, type Placement } from './servers.js';

type Server = 'nbdkit' | 'agent';
const SERVERS: readonly Server[] = ['nbdkit', 'agent'];

interface Place {
  id: string;
  label: string;
  placement: Placement;
  /** Measured in the full mode only (the short mode checks the rows' shape, not the image kind). */
  fullOnly?: boolean;
}

const PLACES: readonly Place[] = [
  { id: 'tmpfs', label: 'every file on tmpfs', placement: { base: MEMORY_DIR, image: 'sparse' } },
  { id: 'disk', label: 'on the disk, fresh sparse image', placement: ON_DISK_SPARSE },
  {
    id: 'disk-written',
    label: 'on the disk, image written once',
    placement: { ...ON_DISK_SPARSE, image: 'written' },
    fullOnly: true,
  },
];

async function runOnce(
  mode: Mode,
  workload: AgentWorkload,
  server: Server,
  placement: Placement,
  memory: PeakMemory,
): Promise<FioResult> {
  return withScope(mode.graceMs, async (scope) => {
    const endpoint =
      server === 'nbdkit'
        ? await startNbdkit(scope, mode.fileBytes, placement)
        : await startAgentAlone(scope, mode.fileBytes, placement);
    const runSeconds = workload.runSeconds?.[mode.name] ?? mode.runSeconds;
    const job: FioJob = {
      uri: endpoint.uri,
      rw: workload.rw,
      blockBytes: workload.blockBytes,
      iodepth: workload.iodepth,
      sizeBytes: mode.fileBytes,
      length: { rampSeconds: mode.rampSeconds, runSeconds },
    };
    const fio = await runFio(
      Array.from({ length: workload.jobs }, () => job),
      scope.dir('fio'),
      mode.stepTimeoutMs,
    );
    if (server === 'agent') memory.record('agent', endpoint.process.peakRssBytes());
    return fio;
  });
}

const figure = (workload: AgentWorkload, fio: FioResult): number =>
  workload.metric === 'iops' ? fio.write.iops : fio.write.bytesPerSecond / 1e6;

function medianRun(workload: AgentWorkload, runs: FioResult[]): FioResult {
  const middle = median(runs.map((run) => figure(workload, run)));
  return [...runs].sort(
    (a, b) => Math.abs(figure(workload, a) - middle) - Math.abs(figure(workload, b) - middle),
  )[0] as FioResult;
}

function detail(workload: AgentWorkload, runs: FioResult[]): string {
  const run = medianRun(workload, runs);
  const other =
    workload.metric === 'iops'
      ? `${(run.write.bytesPerSecond / 1e6).toFixed(1)} MB/s`
      : `${Math.round(run.write.iops)} IOPS`;
  const latency = `write p50/p99 ${run.write.p50Ms.toFixed(2)}/${run.write.p99Ms.toFixed(2)} ms`;
  const figures = runs.map((r) => Math.round(figure(workload, r))).join(' ');
  return `${other}, ${latency}, ${runs.length} run(s): ${figures}`;
}

/** The rows of one workload in one place; `ratioMin` overrides the workload's target. */
function workloadRows(
  place: Place,
  workload: AgentWorkload,
  runs: Map<Server, FioResult[]>,
  sizeBytes: number,
  ratioMin?: number,
): Row[] {
  const nbdkitRuns = runs.get('nbdkit') ?? [];
  const agentRuns = runs.get('agent') ?? [];
  const nbdkit = median(nbdkitRuns.map((run) => figure(workload, run)));
  const agent = median(agentRuns.map((run) => figure(workload, run)));
  const ratio = agent / nbdkit;
  const section = `agent alone, ${place.label}: ${workload.label} (${formatSize(sizeBytes)})`;
  const unit = workload.metric === 'iops' ? 'IOPS' : 'MB/s';
  const minimum = ratioMin ?? workload.targetRatio;
  const rows = [
    row({
      id: `agent.${place.id}.${workload.id}.nbdkit`,
      section,
      label: 'nbdkit',
      value: nbdkit,
      unit,
      detail: detail(workload, nbdkitRuns),
    }),
    row(
      {
        id: `agent.${place.id}.${workload.id}.agent`,
        section,
        label: 'rewind agent',
        value: agent,
        unit,
        detail: detail(workload, agentRuns),
        ratio,
        ratioTo: 'nbdkit',
      },
      minimum === undefined
        ? undefined
        : atLeast(ratio, minimum, `>= ${minimum.toFixed(2)}x nbdkit`),
    ),
  ];
  if (workload.p99MsMax !== undefined) {
    const p99 = medianRun(workload, agentRuns).write.p99Ms;
    rows.push(
      row(
        {
          id: `agent.${place.id}.${workload.id}.p99`,
          section,
          label: 'rewind agent write p99',
          value: p99,
          unit: 'ms',
          detail: `nbdkit ${medianRun(workload, nbdkitRuns).write.p99Ms.toFixed(3)} ms (median runs)`,
        },
        atMost(p99, workload.p99MsMax, `<= ${workload.p99MsMax} ms`),
      ),
    );
  }
  return rows;
}

async function measureWorkload(
  mode: Mode,
  place: Place,
  workload: AgentWorkload,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Map<Server, FioResult[]>> {
  const runs = new Map<Server, FioResult[]>(SERVERS.map((server) => [server, []]));
  // Interleaved within each repetition, so a slow spell of the shared machine hits both.
  for (let repetition = 1; repetition <= mode.repetitions; repetition += 1) {
    for (const server of SERVERS) {
      const fio = await runOnce(mode, workload, server, place.placement, memory);
      runs.get(server)?.push(fio);
      progress(
        `agent alone ${place.id} ${workload.id} ${server} #${repetition}: ${Math.round(fio.write.iops)} IOPS, ${(fio.write.bytesPerSecond / 1e6).toFixed(1)} MB/s`,
      );
    }
  }
  return runs;
}

export async function measureAgentAlone(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  if (!fs.existsSync(MEMORY_DIR)) throw new Error(`no tmpfs at ${MEMORY_DIR} for the tmpfs rows`);
  const rows: Row[] = [];
  for (const place of PLACES) {
    if (place.fullOnly === true && mode.name === 'short') continue;
    let qd32Ratio: number | undefined;
    for (const workload of AGENT_WORKLOADS) {
      const runs = await measureWorkload(mode, place, workload, memory, progress);
      const placeRows = workloadRows(place, workload, runs, mode.fileBytes);
      if (workload === AGENT_WORKLOADS[0]) qd32Ratio = placeRows[1]?.ratio;
      rows.push(...placeRows);
    }
    if (place.id === 'tmpfs') {
      const runs = await measureWorkload(mode, place, MULTI_CONNECTION, memory, progress);
      rows.push(...workloadRows(place, MULTI_CONNECTION, runs, mode.fileBytes, qd32Ratio));
    }
  }
  rows.push(...(await measureSustained(mode, memory, progress)));
  return rows;
}

/**
 * A minute of the QD32 workload on the disk, from a fresh start: the agent's spool grows by about
 * 4 KiB per write (segments sealed, none shipped), which once cost it half its rate. Rows: its
 * rate against nbdkit's over the whole run, and its last interval against its first.
 */
async function measureSustained(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  const seconds = SUSTAINED.seconds[mode.name];
  const intervalMs = SUSTAINED.intervalMs[mode.name];
  const workload = SUSTAINED.workload;
  const results = new Map<Server, FioResult>();
  for (const server of SERVERS) {
    const fio = await withScope(mode.graceMs, async (scope) => {
      const endpoint =
        server === 'nbdkit'
          ? await startNbdkit(scope, mode.fileBytes)
          : await startAgentAlone(scope, mode.fileBytes, ON_DISK_SPARSE);
      const result = await runFio(
        [
          {
            uri: endpoint.uri,
            rw: workload.rw,
            blockBytes: workload.blockBytes,
            iodepth: workload.iodepth,
            sizeBytes: mode.fileBytes,
            length: { rampSeconds: 0, runSeconds: seconds },
            iopsLogMs: intervalMs,
          },
        ],
        scope.dir('fio'),
        mode.stepTimeoutMs,
      );
      if (server === 'agent') memory.record('agent', endpoint.process.peakRssBytes());
      return result;
    });
    results.set(server, fio);
    progress(`sustained ${seconds} s ${server}: ${Math.round(fio.write.iops)} IOPS`);
  }
  const nbdkit = results.get('nbdkit') as FioResult;
  const agent = results.get('agent') as FioResult;
  const series = (fio: FioResult): string => fio.iopsPerInterval.map(Math.round).join(' ');
  const kept = (fio: FioResult): number => {
    const intervals = fio.iopsPerInterval;
    if (intervals.length < 2) throw new Error('sustained run: fewer than two iops intervals');
    return (intervals[intervals.length - 1] as number) / (intervals[0] as number);
  };
  const section = `agent alone, on the disk, sustained ${seconds} s: ${workload.label}, manager unreachable (spool growing)`;
  const ratio = agent.write.iops / nbdkit.write.iops;
  return [
    row({
      id: 'agent.sustained.nbdkit',
      section,
      label: 'nbdkit',
      value: nbdkit.write.iops,
      unit: 'IOPS',
      detail: `per ${intervalMs / 1000} s: ${series(nbdkit)}`,
    }),
    row(
      {
        id: 'agent.sustained.agent',
        section,
        label: 'rewind agent',
        value: agent.write.iops,
        unit: 'IOPS',
        detail: `per ${intervalMs / 1000} s: ${series(agent)}`,
        ratio,
        ratioTo: 'nbdkit',
      },
      atLeast(ratio, workload.targetRatio, `>= ${workload.targetRatio}x nbdkit`),
    ),
    row(
      {
        id: 'agent.sustained.kept',
        section,
        label: 'rewind agent, last interval / first',
        value: kept(agent),
        unit: 'x',
        detail: `nbdkit ${kept(nbdkit).toFixed(2)}x`,
      },
      atLeast(kept(agent), SUSTAINED.keptRatioMin, `>= ${SUSTAINED.keptRatioMin}x`),
    ),
  ];
}
