// What the benchmark runs, as data: the ingest workloads (every server gets each with the same fio
// options), the targets of the issue, and the sizes and durations of the full and the short mode.

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

export interface Workload {
  id: string;
  label: string;
  rw: 'randwrite' | 'write' | 'randrw';
  blockBytes: number;
  iodepth: number;
  /** Share of reads in a mixed workload, in percent. */
  readPercent?: number;
  /** The figure the row shows: operations per second or megabytes per second. */
  metric: 'iops' | 'mbps';
  /** Rewind's ingest must reach this share of nbdkit's. */
  targetRatio?: number;
}

export const WORKLOADS: readonly Workload[] = [
  {
    id: 'randwrite-4k-qd32',
    label: '4 KiB random write, QD32',
    rw: 'randwrite',
    blockBytes: 4 * KiB,
    iodepth: 32,
    metric: 'iops',
    targetRatio: 0.5,
  },
  {
    id: 'randwrite-4k-qd1',
    label: '4 KiB random write, QD1',
    rw: 'randwrite',
    blockBytes: 4 * KiB,
    iodepth: 1,
    metric: 'iops',
  },
  {
    id: 'write-1m-qd8',
    label: '1 MiB sequential write, QD8',
    rw: 'write',
    blockBytes: MiB,
    iodepth: 8,
    metric: 'mbps',
    targetRatio: 0.3,
  },
  {
    id: 'randrw-4k-70r-qd32',
    label: '4 KiB random 70% read / 30% write, QD32',
    rw: 'randrw',
    readPercent: 70,
    blockBytes: 4 * KiB,
    iodepth: 32,
    metric: 'iops',
  },
];

/**
 * The agent alone (no manager on the machine, its manager unreachable) against nbdkit, both with
 * every file in the same place: the targets of the write-path speed issue (19). The 4 KiB QD1
 * workload also has a latency target; `jobs` > 1 runs that many fio jobs, one NBD connection
 * each, and its target is the single-connection QD32 ratio of the same place.
 */
export interface AgentWorkload extends Workload {
  jobs: number;
  /** Shorter than the mode's run for large writes: 1 GB/s for 10 s would put 10 GB in a tmpfs. */
  runSeconds?: { full: number; short: number };
  p99MsMax?: number;
}

export const AGENT_WORKLOADS: readonly AgentWorkload[] = [
  { ...(WORKLOADS[0] as Workload), targetRatio: 0.85, jobs: 1 },
  { ...(WORKLOADS[1] as Workload), targetRatio: 0.7, jobs: 1, p99MsMax: 0.5 },
  {
    ...(WORKLOADS[2] as Workload),
    targetRatio: 0.45,
    jobs: 1,
    runSeconds: { full: 5, short: 1.5 },
  },
];

/** 4 jobs of the QD32 workload on 4 connections (tmpfs only). */
export const MULTI_CONNECTION: AgentWorkload = {
  ...(WORKLOADS[0] as Workload),
  id: 'randwrite-4k-qd32-4jobs',
  label: '4 KiB random write, QD32, 4 jobs on 4 connections',
  jobs: 4,
};

/** The sustained run: the QD32 workload for a minute on the disk, the agent's spool growing. */
export const SUSTAINED = {
  workload: { ...(WORKLOADS[0] as Workload), targetRatio: 0.85 },
  seconds: { full: 60, short: 3 },
  /** Its rate over the last interval against the first one: the spool's growth must not slow it. */
  keptRatioMin: 0.8,
  /** The intervals compared: 10 s (1 s in the short mode). */
  intervalMs: { full: 10_000, short: 1000 },
} as const;

/** The tmpfs where the agent-alone rows put every file of both servers. */
export const MEMORY_DIR = '/dev/shm';

/**
 * The retention soak: `rewind up` at a fixed 4 KiB random-write rate, once with a journal limit
 * far below what the run's writes need (a short every-write window, then coarse tiers) and once
 * with the default policy (nothing is thinned or dropped within the run), in the same run.
 */
export const SOAK = {
  rateIops: { full: 2000, short: 1000 },
  seconds: { full: 600, short: 20 },
  volumeBytes: { full: GiB, short: 128 * MiB },
  /** Policy flags of the run with retention (16 MiB/s of redo and undo at 2000 IOPS). */
  policy: {
    full: [
      '--journal-max',
      '1G',
      '--journal-warn',
      '768M',
      '--keep-every-write',
      '30s',
      '--keep',
      '10s:2m,1m:30m',
    ],
    short: [
      '--journal-max',
      '40M',
      '--journal-warn',
      '32M',
      '--keep-every-write',
      '3s',
      '--keep',
      '2s:30s',
    ],
  },
  everyWriteMs: { full: 30_000, short: 3_000 },
  sampleMs: { full: 5_000, short: 500 },
  /** Ingest and RPO with retention against without: at least / at most these ratios. */
  iopsRatioMin: 0.95,
  rpoP99RatioMax: 1.5,
} as const;

export const TARGETS = {
  rpoP99HalfPeakMs: 1000,
  applyRatioRandom4k: 1.2,
  viewCreationMsPer100k: 100,
  viewReadRatio: 0.8,
  exportGBps: 1,
  agentRssSparseMiB: 256,
} as const;

export interface Mode {
  name: 'full' | 'short';
  repetitions: number;
  rampSeconds: number;
  runSeconds: number;
  /** Size of the served file / protected volume for ingest, RPO and apply runs. */
  fileBytes: number;
  /** Writes piled up in the agent's spool before the manager starts. */
  applyRandomWrites: number;
  applySequentialBytes: number;
  /** History sizes (writes after the view's point) for view creation, ascending. */
  historyWrites: number[];
  historyBlockBytes: number;
  /** The views volume: mostly sparse, with data in its first viewDataBytes. */
  viewVolumeBytes: number;
  viewDataBytes: number;
  /** Each of the two sparse volumes the agent protects for its memory figure. */
  sparseVolumeBytes: number;
  sparseLoadSeconds: number;
  /** How long a server gets to stop after SIGTERM before SIGKILL. */
  graceMs: number;
  /** Upper bound for any single tool run or wait. */
  stepTimeoutMs: number;
}

export const FULL: Mode = {
  name: 'full',
  repetitions: 3,
  rampSeconds: 2,
  runSeconds: 10,
  fileBytes: 2 * GiB,
  applyRandomWrites: 100_000,
  applySequentialBytes: 2 * GiB,
  historyWrites: [1_000, 100_000, 1_000_000],
  historyBlockBytes: 512,
  viewVolumeBytes: 8 * GiB,
  viewDataBytes: GiB,
  sparseVolumeBytes: 512 * GiB,
  sparseLoadSeconds: 10,
  graceMs: 20_000,
  stepTimeoutMs: 900_000,
};

export const SHORT: Mode = {
  name: 'short',
  repetitions: 1,
  rampSeconds: 0.5,
  runSeconds: 1.5,
  fileBytes: 128 * MiB,
  applyRandomWrites: 10_000,
  applySequentialBytes: 128 * MiB,
  historyWrites: [1_000, 10_000],
  historyBlockBytes: 512,
  viewVolumeBytes: 512 * MiB,
  viewDataBytes: 64 * MiB,
  sparseVolumeBytes: 8 * GiB,
  sparseLoadSeconds: 2,
  graceMs: 10_000,
  stepTimeoutMs: 60_000,
};

export function formatSize(bytes: number): string {
  if (bytes % GiB === 0) return `${bytes / GiB} GiB`;
  if (bytes % MiB === 0) return `${bytes / MiB} MiB`;
  return `${bytes / KiB} KiB`;
}

export { KiB, MiB, GiB };
