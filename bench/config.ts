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
    targetRatio: 0.85,
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
    targetRatio: 0.45,
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

export const TARGETS = {
  rpoP99HalfPeakMs: 1000,
  applyRatioRandom4k: 1.5,
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
