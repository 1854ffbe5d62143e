// Retention soak: `rewind up` at a fixed 4 KiB random-write rate for a long run (10 minutes in the
// full mode), twice in the same benchmark run: with a journal limit far below what the writes need
// (a short every-write window, then coarse tiers, the oldest dropped at the limit) and with the
// default policy, under which nothing is thinned or dropped within the run. While fio writes, the
// API is sampled: GET /api/retention (journal bytes against the limit, the seq from which every
// write is a point, and that write's capture time) and GET /api/status (RPO lag in seconds).
// Rows: the largest journal seen against the limit, the shortest every-write window held, ingest
// and RPO with retention as ratios to the run without it.
import { SOAK, type Mode } from './config.js';
import { runFio } from './fio.js';
import { sleep, withScope } from './processes.js';
import { atLeast, atMost, percentile, row, type PeakMemory, type Row } from './report.js';
import type { RetentionFigures } from './rewind-api.js';
import { startRewindUp, type RewindUp } from './servers.js';

const MiB = 1024 * 1024;

interface SoakRun {
  iops: number;
  p99Ms: number;
  lagSeconds: number[];
  /** With retention: what was sampled. */
  journalMaxSeen: number;
  journalBytesMax: number;
  /** The shortest span (ms) from the every-write point to the sample's time, after the warm-up. */
  everyWriteHeldMinMs: number | undefined;
  last: RetentionFigures | undefined;
  samples: number;
  /** Samples whose every-write point was thinned away before its time could be read. */
  skipped: number;
  /** The sampler's failure, if it failed (the run then reports it instead of figures). */
  failure: Error | undefined;
}

/**
 * The capture time of the every-write point `seq`, epoch ms (`historyStartMs` at seq 0).
 * Retention may thin that point into a coarser run between the two requests: then the point is
 * read again from a fresh status, at most three times; undefined if it kept moving.
 */
async function everyWriteFromMs(
  api: RewindUp['api'],
  seq: number,
  historyStartMs: number,
): Promise<number | undefined> {
  let point = seq;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return (await api.pointTimeMs(String(point))) ?? historyStartMs;
    } catch (error) {
      if (!/REWIND_POINT_INVALID/.test((error as Error).message)) throw error;
      point = (await api.retention()).everyWriteFromSeq;
    }
  }
  return undefined;
}

async function soakRun(
  mode: Mode,
  memory: PeakMemory,
  withRetention: boolean,
  progress: (text: string) => void,
): Promise<SoakRun> {
  const key = mode.name;
  return withScope(mode.graceMs, async (scope) => {
    const up = await startRewindUp(
      scope,
      [{ name: 'v', sizeBytes: SOAK.volumeBytes[key] }],
      withRetention ? SOAK.policy[key] : [],
    );
    const startedMs = Date.now();
    const result: SoakRun = {
      iops: 0,
      p99Ms: 0,
      lagSeconds: [],
      journalMaxSeen: 0,
      journalBytesMax: 0,
      everyWriteHeldMinMs: undefined,
      last: undefined,
      samples: 0,
      skipped: 0,
      failure: undefined,
    };
    let writing = true;
    // A failing sample stops the sampler and fails the run after fio, never the process.
    const sampler = (async (): Promise<void> => {
      // The every-write window is full once it has been written for its length plus a seal age.
      const warmMs = SOAK.everyWriteMs[key] + 2000;
      let lastReport = Date.now();
      while (writing) {
        await sleep(SOAK.sampleMs[key]);
        if (!writing) break;
        const nowMs = Date.now();
        const [status, retention] = [await up.api.status(), await up.api.retention()];
        result.samples += 1;
        if (status.seqCommitted > 0) result.lagSeconds.push(status.lagSeconds);
        result.journalMaxSeen = Math.max(result.journalMaxSeen, retention.journalBytes);
        result.journalBytesMax = retention.journalBytesMax;
        result.last = retention;
        if (withRetention && nowMs - startedMs >= warmMs) {
          const fromMs = await everyWriteFromMs(up.api, retention.everyWriteFromSeq, startedMs);
          if (fromMs === undefined) {
            result.skipped += 1;
          } else {
            // Against the moment the point was resolved, not the sample's start: on a loaded
            // machine the requests take a while, and the history moves on meanwhile.
            const heldMs = Date.now() - fromMs;
            result.everyWriteHeldMinMs = Math.min(result.everyWriteHeldMinMs ?? heldMs, heldMs);
          }
        }
        if (nowMs - lastReport >= 60_000) {
          lastReport = nowMs;
          progress(
            `soak ${withRetention ? 'with' : 'without'} retention: ${Math.round((nowMs - startedMs) / 1000)} s, journal ${(retention.journalBytes / MiB).toFixed(0)} MiB, ${retention.steps.merges} merges, ${retention.steps.drops} drops, lag ${status.lagSeconds.toFixed(2)} s`,
          );
        }
      }
    })().catch((error: unknown) => {
      result.failure = error instanceof Error ? error : new Error(String(error));
    });
    try {
      const fio = await runFio(
        [
          {
            uri: up.uri('v'),
            rw: 'randwrite',
            blockBytes: 4096,
            iodepth: 8,
            sizeBytes: SOAK.volumeBytes[key],
            length: { rampSeconds: 0, runSeconds: SOAK.seconds[key] },
            rateIops: SOAK.rateIops[key],
          },
        ],
        scope.dir('fio'),
        SOAK.seconds[key] * 1000 + mode.stepTimeoutMs,
      );
      result.iops = fio.write.iops;
      result.p99Ms = fio.write.p99Ms;
    } finally {
      writing = false;
      await sampler;
    }
    memory.record('rewind up', up.process.peakRssBytes());
    await up.process.stop(mode.graceMs);
    if (result.failure) throw new Error(`soak: sampling failed: ${result.failure.message}`);
    if (result.lagSeconds.length === 0) throw new Error('soak: no sample was taken');
    return result;
  });
}

export async function measureSoak(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  const key = mode.name;
  progress(`soak: ${SOAK.seconds[key]} s at ${SOAK.rateIops[key]} IOPS without retention`);
  const plain = await soakRun(mode, memory, false, progress);
  progress(`soak: the same with ${SOAK.policy[key].join(' ')}`);
  const kept = await soakRun(mode, memory, true, progress);
  const section = `Retention soak: 4 KiB random write at ${SOAK.rateIops[key]} IOPS for ${SOAK.seconds[key]} s, ${SOAK.policy[key].join(' ')}`;
  const steps = kept.last?.steps;
  const needMiB = (plain.journalMaxSeen / MiB).toFixed(0);
  const rows: Row[] = [
    row(
      {
        id: 'soak.journal.max',
        section,
        label: 'largest journal seen, with retention',
        value: kept.journalMaxSeen / MiB,
        unit: 'MiB',
        detail: `limit ${(kept.journalBytesMax / MiB).toFixed(0)} MiB; the run without retention reached ${needMiB} MiB; ${steps?.merges ?? 0} merges, ${steps?.drops ?? 0} drops, ${((steps?.freedBytes ?? 0) / MiB).toFixed(0)} MiB freed; ${kept.samples} samples`,
      },
      atMost(kept.journalMaxSeen, kept.journalBytesMax, '<= the limit'),
    ),
    row(
      {
        id: 'soak.every-write.held',
        section,
        label: 'shortest every-write window held',
        value: (kept.everyWriteHeldMinMs ?? 0) / 1000,
        unit: 's',
        detail: `promised ${SOAK.everyWriteMs[key] / 1000} s; ${kept.skipped} samples skipped (their point thinned meanwhile); alerts at the end: ${kept.last?.alerts.map((a) => a.message).join('; ') || 'none'}`,
      },
      atLeast(kept.everyWriteHeldMinMs ?? 0, SOAK.everyWriteMs[key], '>= the promised window'),
    ),
    row(
      {
        id: 'soak.ingest',
        section,
        label: 'write IOPS with retention',
        value: kept.iops,
        unit: 'IOPS',
        detail: `without: ${plain.iops.toFixed(0)} IOPS; p99 completion ${kept.p99Ms.toFixed(2)} ms against ${plain.p99Ms.toFixed(2)} ms`,
        ratio: kept.iops / plain.iops,
        ratioTo: 'no retention',
      },
      atLeast(kept.iops / plain.iops, SOAK.iopsRatioMin, `>= ${SOAK.iopsRatioMin}x`),
    ),
  ];
  const keptP99 = percentile(kept.lagSeconds, 99);
  const plainP99 = percentile(plain.lagSeconds, 99);
  // A lag under a seal age is noise: the ratio compares against at least 100 ms.
  const ratio = Math.max(keptP99, 0.1) / Math.max(plainP99, 0.1);
  rows.push(
    row(
      {
        id: 'soak.rpo.p99',
        section,
        label: 'RPO lag p99 (sampled), with retention',
        value: keptP99,
        unit: 's',
        detail: `without: ${plainP99.toFixed(2)} s; max ${percentile(kept.lagSeconds, 100).toFixed(2)} s against ${percentile(plain.lagSeconds, 100).toFixed(2)} s`,
        ratio,
        ratioTo: 'no retention',
      },
      atMost(ratio, SOAK.rpoP99RatioMax, `<= ${SOAK.rpoP99RatioMax}x`),
    ),
  );
  return rows;
}
