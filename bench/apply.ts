// Manager apply rate against agent ingest, in split mode: the agent runs alone (its manager address
// has nobody listening yet) while fio writes a fixed number of operations, so the sealed segments
// pile up in its spool; then the manager starts and takes them all to committed. The rate is read
// from the catalog, not from the wall clock (which would include the agent's reconnect backoff):
// the writes of every transaction after the first over the time from the first commit to the last.
// The first transaction is left out: it starts while the kernel still writes back the agent's
// burst of dirty pages, and its cost depends on where a manager version stamps received_at.
import { MiB, TARGETS, type Mode } from './config.js';
import { runFio } from './fio.js';
import { sleep, withScope } from './processes.js';
import { atLeast, row, type PeakMemory, type Row } from './report.js';
import { hasActiveSegment, readTransactions } from './rewind-api.js';
import { splitLink, startRewindAgent, startRewindManager } from './servers.js';

interface ApplyCase {
  id: string;
  label: string;
  rw: 'randwrite' | 'write';
  blockBytes: number;
  iodepth: number;
  writes: (mode: Mode) => number;
  targetRatio?: number;
}

const CASES: readonly ApplyCase[] = [
  {
    id: 'random-4k',
    label: '4 KiB random writes',
    rw: 'randwrite',
    blockBytes: 4096,
    iodepth: 32,
    writes: (mode) => mode.applyRandomWrites,
    targetRatio: TARGETS.applyRatioRandom4k,
  },
  {
    id: 'sequential-1m',
    label: '1 MiB sequential writes',
    rw: 'write',
    blockBytes: MiB,
    iodepth: 8,
    writes: (mode) => mode.applySequentialBytes / MiB,
  },
];

interface ApplyResult {
  writes: number;
  ingestIops: number;
  applySeconds: number;
  /** The first transaction was left out (warm-up); false when there were too few to do so. */
  firstLeftOut: boolean;
  transactions: number;
}

async function waitSealed(agentDataDir: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (hasActiveSegment(agentDataDir)) {
    if (Date.now() > deadline)
      throw new Error(`the agent did not seal its active segment within ${timeoutMs} ms`);
    await sleep(100);
  }
}

async function measureCase(mode: Mode, apply: ApplyCase, memory: PeakMemory): Promise<ApplyResult> {
  return withScope(mode.graceMs, async (scope) => {
    const link = await splitLink();
    const agent = await startRewindAgent(scope, link, [{ name: 'v', sizeBytes: mode.fileBytes }]);
    const fio = await runFio(
      [
        {
          uri: agent.uri('v'),
          rw: apply.rw,
          blockBytes: apply.blockBytes,
          iodepth: apply.iodepth,
          sizeBytes: mode.fileBytes,
          length: { ios: apply.writes(mode) },
        },
      ],
      scope.dir('fio'),
      mode.stepTimeoutMs,
    );
    await waitSealed(agent.dataDir, mode.stepTimeoutMs);
    const manager = await startRewindManager(scope, link);
    await manager.api.waitCommitted(fio.write.ios, mode.stepTimeoutMs);
    memory.record('agent', agent.process.peakRssBytes());
    memory.record('manager', manager.process.peakRssBytes());
    // The agent first: a manager with a connected agent does not stop on SIGTERM (see BENCHMARKS.md).
    await agent.process.stop(mode.graceMs);
    await manager.process.stop(mode.graceMs);
    const txs = readTransactions(manager.dataDir);
    const first = txs[0];
    const last = txs[txs.length - 1];
    if (!first || !last) throw new Error('the manager committed no transaction');
    if (txs.length < 3) {
      // Too few to leave one out (the short mode): all of them, from the first's received_at.
      const writes = txs.reduce((sum, tx) => sum + tx.recordCount, 0);
      return {
        writes,
        ingestIops: fio.write.iops,
        applySeconds: (last.committedAtMs - first.receivedAtMs) / 1000,
        transactions: txs.length,
        firstLeftOut: false,
      };
    }
    const writes = txs.slice(1).reduce((sum, tx) => sum + tx.recordCount, 0);
    return {
      writes,
      ingestIops: fio.write.iops,
      applySeconds: (last.committedAtMs - first.committedAtMs) / 1000,
      transactions: txs.length - 1,
      firstLeftOut: true,
    };
  });
}

export async function measureApply(
  mode: Mode,
  memory: PeakMemory,
  progress: (text: string) => void,
): Promise<Row[]> {
  const rows: Row[] = [];
  for (const apply of CASES) {
    const result = await measureCase(mode, apply, memory);
    const applyIops = result.writes / result.applySeconds;
    const ratio = applyIops / result.ingestIops;
    const megabytes = (iops: number): string => ((iops * apply.blockBytes) / 1e6).toFixed(1);
    progress(
      `apply ${apply.id}: ${Math.round(applyIops)} writes/s vs ingest ${Math.round(result.ingestIops)} writes/s`,
    );
    const target =
      apply.targetRatio === undefined
        ? undefined
        : atLeast(ratio, apply.targetRatio, `>= ${apply.targetRatio}x ingest`);
    rows.push(
      row(
        {
          id: `apply.${apply.id}`,
          section: 'manager apply rate (split mode, spooled segments) vs agent ingest',
          label: apply.label,
          value: applyIops,
          unit: 'writes/s',
          detail: `${megabytes(applyIops)} MB/s applied; ingest ${Math.round(result.ingestIops)} writes/s = ${megabytes(result.ingestIops)} MB/s; ${result.writes} writes in ${result.transactions} transactions${result.firstLeftOut ? ' after the first' : ''}, ${result.applySeconds.toFixed(2)} s`,
          ratio,
          ratioTo: 'ingest',
        },
        target,
      ),
    );
  }
  return rows;
}
