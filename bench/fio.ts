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
  /** Log the job's write IOPS every this many ms (FioResult.iopsPerInterval). */
  iopsLogMs?: number;
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
  /** With iopsLogMs: the jobs' summed operations per second in each interval, in order. */
  iopsPerInterval: number[];
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

function jobArgs(name: string, job: FioJob, logPrefix: string): string[] {
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
  if (job.iopsLogMs !== undefined)
    args.push(`--write_iops_log=${logPrefix}-${name}`, `--log_avg_msec=${job.iopsLogMs}`);
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
  const stem = `fio-${process.pid}-${Date.now()}`;
  const output = path.join(workDir, `${stem}.json`);
  const logPrefix = path.join(workDir, stem);
  const args = [
    '--output-format=json',
    `--output=${output}`,
    ...jobs.flatMap((job, index) => jobArgs(`job${index}`, job, logPrefix)),
  ];
  try {
    await runToolOrThrow('fio', args, timeoutMs);
    const result = summarize(JSON.parse(fs.readFileSync(output, 'utf8')) as FioJson);
    result.iopsPerInterval = readIopsLogs(workDir, stem);
    return result;
  } finally {
    fs.rmSync(output, { force: true });
    for (const name of fs.readdirSync(workDir))
      if (name.startsWith(stem)) fs.rmSync(path.join(workDir, name), { force: true });
  }
}

/**
 * fio's iops logs (`PREFIX-jobN_iops.1.log`: "msec, value, direction, ...", one line per
 * interval): the value of each interval summed over the jobs.
 */
function readIopsLogs(workDir: string, stem: string): number[] {
  const sums: number[] = [];
  for (const name of fs.readdirSync(workDir)) {
    if (!name.startsWith(stem) || !name.includes('_iops.')) continue;
    const lines = fs.readFileSync(path.join(workDir, name), 'utf8').trim().split('\n');
    lines.forEach((line, index) => {
      const value = Number(line.split(',')[1]);
      if (Number.isFinite(value)) sums[index] = (sums[index] ?? 0) + value;
    });
  }
  return sums;
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
    iopsPerInterval: [],
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
