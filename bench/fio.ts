// Runs fio with its nbd ioengine and reads its --output-format=json report. Time-based jobs warm
// up for ramp_time before measuring; count-based jobs do exactly `ios` operations (io_size), which
// is how the benchmark makes a history of a given length.
import fs from 'node:fs';
import path from 'node:path';
import { runToolOrThrow } from './processes.js';

export interface FioJob {
  uri: string;
  rw: 'randwrite' | 'write' | 'randrw' | 'randread' | 'read';
  blockBytes: number;
  iodepth: number;
  /** The byte range the job works in, from offset 0. */
  sizeBytes: number;
  readPercent?: number;
  /** Fixed time after a warm-up, or a fixed number of operations. */
  length: { rampSeconds: number; runSeconds: number } | { ios: number };
  rateIops?: number;
}

export interface FioDirection {
  iops: number;
  bytesPerSecond: number;
  ios: number;
  /** Completion latency percentiles in ms (p50, p99); 0 when the direction did nothing. */
  p50Ms: number;
  p99Ms: number;
}

export interface FioResult {
  read: FioDirection;
  write: FioDirection;
  /** Read plus write operations per second. */
  iops: number;
  bytesPerSecond: number;
}

interface FioJsonDirection {
  iops: number;
  bw_bytes: number;
  total_ios: number;
  clat_ns?: { percentile?: Record<string, number> };
}
interface FioJson {
  jobs: { jobname: string; error: number; read: FioJsonDirection; write: FioJsonDirection }[];
}

const milliseconds = (seconds: number): string => `${Math.round(seconds * 1000)}ms`;

function jobArgs(name: string, job: FioJob): string[] {
  const args = [
    `--name=${name}`,
    '--ioengine=nbd',
    `--uri=${job.uri}`,
    `--rw=${job.rw}`,
    `--bs=${job.blockBytes}`,
    `--iodepth=${job.iodepth}`,
    `--size=${job.sizeBytes}`,
    '--norandommap',
    '--randrepeat=0',
  ];
  if (job.readPercent !== undefined) args.push(`--rwmixread=${job.readPercent}`);
  if (job.rateIops !== undefined) args.push(`--rate_iops=${job.rateIops}`);
  if ('ios' in job.length)
    args.push(`--io_size=${job.length.ios * job.blockBytes}`, `--number_ios=${job.length.ios}`);
  else
    args.push(
      '--time_based',
      `--ramp_time=${milliseconds(job.length.rampSeconds)}`,
      `--runtime=${milliseconds(job.length.runSeconds)}`,
    );
  return args;
}

/** Runs the jobs side by side in one fio process; their figures are summed. */
export async function runFio(
  jobs: readonly FioJob[],
  workDir: string,
  timeoutMs: number,
): Promise<FioResult> {
  const output = path.join(workDir, `fio-${process.pid}-${Date.now()}.json`);
  const args = [
    '--output-format=json',
    `--output=${output}`,
    ...jobs.flatMap((job, index) => jobArgs(`job${index}`, job)),
  ];
  try {
    await runToolOrThrow('fio', args, timeoutMs);
    return summarize(JSON.parse(fs.readFileSync(output, 'utf8')) as FioJson);
  } finally {
    fs.rmSync(output, { force: true });
  }
}

function summarize(report: FioJson): FioResult {
  const failed = report.jobs.find((job) => job.error !== 0);
  if (failed) throw new Error(`fio job ${failed.jobname} reported error ${failed.error}`);
  const read = sumDirections(report.jobs.map((job) => job.read));
  const write = sumDirections(report.jobs.map((job) => job.write));
  return {
    read,
    write,
    iops: read.iops + write.iops,
    bytesPerSecond: read.bytesPerSecond + write.bytesPerSecond,
  };
}

/** Sums rates and counts; latency percentiles are taken from the busiest job. */
function sumDirections(directions: FioJsonDirection[]): FioDirection {
  const busiest = [...directions].sort((a, b) => b.total_ios - a.total_ios)[0];
  const percentile = (key: string): number => (busiest?.clat_ns?.percentile?.[key] ?? 0) / 1e6;
  return {
    iops: directions.reduce((sum, d) => sum + d.iops, 0),
    bytesPerSecond: directions.reduce((sum, d) => sum + d.bw_bytes, 0),
    ios: directions.reduce((sum, d) => sum + d.total_ios, 0),
    p50Ms: percentile('50.000000'),
    p99Ms: percentile('99.000000'),
  };
}
