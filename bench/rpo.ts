// RPO lag: for every write of a 4 KiB random-write run (after its warm-up), the time from its
// capture (stamped on arrival, just before the reply) to the commit of the transaction holding it
// at the manager. Measured at peak (no limit) and then at half the rate that run reached (fio
// --rate_iops), with Rewind's default seal size and age; each run ends by waiting for the lag to
// drain on its own, without a forced seal, so the last writes see the same seal age as all others.
import { TARGETS, type Mode } from './config.js';
import { runFio } from './fio.js';
import { withScope } from './processes.js';
import { atMost, percentile, row, type PeakMemory, type Row } from './report.js';
import { captureTimeMs, commitTimeOf, readTransactions } from './rewind-api.js';
import { startRewindUp } from './servers.js';

interface Load {
  id: string;
  label: string;
  rateIops: number | undefined;
}

interface LagResult {
  lagsMs: number[];
  achievedIops: number;
}

async function measureLags(mode: Mode, load: Load, memory: PeakMemory): Promise<LagResult> {
  return withScope(mode.graceMs, async (scope) => {
    const up = await startRewindUp(scope, [{ name: 'v', sizeBytes: mode.fileBytes }]);
    const measuredFromMs = Date.now() + mode.rampSeconds * 1000;
    const fio = await runFio(
      [
        {
          uri: up.uri('v'),
          rw: 'randwrite',
          blockBytes: 4096,
          iodepth: 32,
          sizeBytes: mode.fileBytes,
          length: { rampSeconds: mode.rampSeconds, runSeconds: mode.runSeconds },
          ...(load.rateIops === undefined ? {} : { rateIops: load.rateIops }),
        },
      ],
      scope.dir('fio'),
      mode.stepTimeoutMs,
    );
    const status = await up.api.status();
    await up.api.waitCommitted(status.seqCaptured, mode.stepTimeoutMs);
    const log = await up.api.log();
    memory.record('rewind up', up.process.peakRssBytes());
    await up.process.stop(mode.graceMs);
    const txs = readTransactions(up.dataDir);
    const lagsMs = log
      .filter((entry) => !entry.resync)
      .map((entry) => ({
        captured: captureTimeMs(entry.time),
        committed: commitTimeOf(txs, entry.seq),
      }))
      .filter((write) => write.captured >= measuredFromMs)
      .map((write) => {
        if (write.committed === undefined)
          throw new Error('a logged write has no committed transaction');
        return write.committed - write.captured;
      });
    if (lagsMs.length === 0) throw new Error(`RPO ${load.id}: no writes after the warm-up`);
    return { lagsMs, achievedIops: fio.write.iops };
  });
}

export async function measureRpo(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  // Peak first: the rate it reaches without a limit is the peak that "half peak" halves.
  const peakLoad: Load = { id: 'peak', label: 'peak', rateIops: undefined };
  const peak = await measureLags(mode, peakLoad, memory);
  const halfLoad: Load = {
    id: 'half-peak',
    label: 'half peak',
    rateIops: Math.max(1, Math.round(peak.achievedIops / 2)),
  };
  const half = await measureLags(mode, halfLoad, memory);
  const rows: Row[] = [];
  for (const [load, { lagsMs, achievedIops }] of [
    [halfLoad, half],
    [peakLoad, peak],
  ] as const) {
    const p50 = percentile(lagsMs, 50);
    const p99 = percentile(lagsMs, 99);
    progress(
      `rpo ${load.id}: p50 ${p50.toFixed(0)} ms, p99 ${p99.toFixed(0)} ms over ${lagsMs.length} writes at ${Math.round(achievedIops)} IOPS`,
    );
    const section = 'RPO lag: 4 KiB random write QD32, capture -> commit at the manager';
    const detail = `${lagsMs.length} writes at ${Math.round(achievedIops)} IOPS${load.rateIops === undefined ? ' (unlimited)' : ` (rate_iops ${load.rateIops})`}, max ${percentile(lagsMs, 100).toFixed(0)} ms`;
    rows.push(
      row({
        id: `rpo.${load.id}.p50`,
        section,
        label: `p50 at ${load.label}`,
        value: p50,
        unit: 'ms',
        detail,
      }),
    );
    const target =
      load.id === 'half-peak'
        ? atMost(p99, TARGETS.rpoP99HalfPeakMs, `<= ${TARGETS.rpoP99HalfPeakMs} ms`)
        : undefined;
    rows.push(
      row(
        {
          id: `rpo.${load.id}.p99`,
          section,
          label: `p99 at ${load.label}`,
          value: p99,
          unit: 'ms',
          detail,
        },
        target,
      ),
    );
  }
  return rows;
}
