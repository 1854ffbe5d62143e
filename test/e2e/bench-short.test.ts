// The benchmark end to end in its short mode (`node dist/bench/run.js --short --json`): every row
// is present with a finite positive figure, and every target row says PASS or MISS. It checks the
// shape of the result only, never the speed (a MISS is a valid outcome).
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const RUN = fileURLToPath(new URL('../../bench/run.js', import.meta.url));
// About 150 s on an idle 2-core machine; the bound only catches a hang (a loaded machine took
// 240 s once), never slowness.
const TIMEOUT_MS = 480_000;
const KILL_GRACE_MS = 5_000;
const missing = ['fio', 'nbdkit', 'qemu-nbd', 'nbdcopy', 'nbdinfo'].filter(
  (tool) => spawnSync('which', [tool]).status !== 0,
);

interface BenchRow {
  id: string;
  value: number;
  unit: string;
  target?: string;
  result?: string;
}

const SERVERS = ['nbdkit', 'qemu-nbd', 'rewind'];
const WORKLOAD_IDS = [
  'randwrite-4k-qd32',
  'randwrite-4k-qd1',
  'write-1m-qd8',
  'randrw-4k-70r-qd32',
];
/** The agent-alone rows of the short mode (the written-once image is measured in the full mode only). */
const AGENT_ROWS = [
  ...['tmpfs', 'disk'].flatMap((place) =>
    ['randwrite-4k-qd32', 'randwrite-4k-qd1', 'write-1m-qd8'].flatMap((workload) => [
      `agent.${place}.${workload}.nbdkit`,
      `agent.${place}.${workload}.agent`,
    ]),
  ),
  'agent.tmpfs.randwrite-4k-qd1.p99',
  'agent.disk.randwrite-4k-qd1.p99',
  'agent.tmpfs.randwrite-4k-qd32-4jobs.nbdkit',
  'agent.tmpfs.randwrite-4k-qd32-4jobs.agent',
  'agent.sustained.nbdkit',
  'agent.sustained.agent',
  'agent.sustained.kept',
];
const EXPECTED_ROWS = [
  ...AGENT_ROWS,
  ...WORKLOAD_IDS.flatMap((workload) => SERVERS.map((server) => `ingest.${workload}.${server}`)),
  'rpo.half-peak.p50',
  'rpo.half-peak.p99',
  'rpo.peak.p50',
  'rpo.peak.p99',
  'apply.random-4k',
  'apply.sequential-1m',
  'view-create.1000',
  'view-create.10000',
  'view-read.randread-4k-qd32.replica',
  'view-read.randread-4k-qd32.history',
  'view-read.read-1m-qd8.replica',
  'view-read.read-1m-qd8.history',
  'export.latest',
  'export.past',
  'memory.agent-sparse',
  'memory.rewind-up',
  'memory.agent',
  'memory.manager',
  'soak.journal.max',
  'soak.every-write.held',
  'soak.ingest',
  'soak.rpo.p99',
];
/** Rows whose figure may be 0 (an RPO lag sampled while nothing waits to commit). */
const ZERO_ALLOWED = new Set(['soak.rpo.p99']);
/** The targets: each of these rows must carry a PASS/MISS verdict. */
const TARGET_ROWS = [
  ...AGENT_ROWS.filter((id) => !id.endsWith('.nbdkit')),
  'ingest.randwrite-4k-qd32.rewind',
  'ingest.write-1m-qd8.rewind',
  'rpo.half-peak.p99',
  'apply.random-4k',
  'view-create.10000',
  'view-read.randread-4k-qd32.history',
  'view-read.read-1m-qd8.history',
  'export.latest',
  'export.past',
  'memory.agent-sparse',
  'soak.journal.max',
  'soak.every-write.held',
  'soak.ingest',
  'soak.rpo.p99',
];

/** Runs the short benchmark; the child is killed (SIGTERM, then SIGKILL) if it outlives the timeout. */
async function runShortBench(): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [RUN, '--short', '--json'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.once('close', (status) => resolve(status)),
  );
  const timers = [
    setTimeout(() => child.kill('SIGTERM'), TIMEOUT_MS),
    setTimeout(() => child.kill('SIGKILL'), TIMEOUT_MS + KILL_GRACE_MS),
  ];
  try {
    return { status: await exited, stdout, stderr };
  } finally {
    for (const timer of timers) clearTimeout(timer);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  }
}

test(
  'npm run bench --short --json: every row, finite positive figures, PASS/MISS on every target',
  {
    skip: missing.length ? `missing ${missing.join(', ')}` : false,
    timeout: TIMEOUT_MS + 2 * KILL_GRACE_MS,
  },
  async () => {
    const { status, stdout, stderr } = await runShortBench();
    assert.equal(status, 0, `bench failed:\n${stderr.slice(-4000)}`);
    const report = JSON.parse(stdout) as {
      mode: string;
      rows: BenchRow[];
      failures: unknown[];
      machine: { cpus: number };
    };
    assert.equal(report.mode, 'short');
    assert.deepEqual(report.failures, [], 'no section failed');
    assert.ok(report.machine.cpus > 0);
    const byId = new Map(report.rows.map((row) => [row.id, row]));
    assert.equal(byId.size, report.rows.length, 'row ids are unique');
    for (const id of EXPECTED_ROWS) {
      const row = byId.get(id);
      assert.ok(row, `row ${id} is present`);
      assert.ok(
        Number.isFinite(row.value) && (row.value > 0 || (ZERO_ALLOWED.has(id) && row.value === 0)),
        `row ${id} has a finite positive value (got ${row.value})`,
      );
      assert.ok(row.unit.length > 0, `row ${id} has a unit`);
    }
    for (const id of TARGET_ROWS) {
      const row = byId.get(id);
      assert.ok(row?.target, `row ${id} states its target`);
      assert.ok(
        row.result === 'PASS' || row.result === 'MISS',
        `row ${id} says PASS or MISS (got ${row.result})`,
      );
    }
  },
);
