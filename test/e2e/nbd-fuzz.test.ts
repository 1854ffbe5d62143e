// The short, seeded NBD fuzzing runs of the default test run (the long run is its own command, see
// docs/RESILIENCE.md): hostile handshakes and requests against an in-process server on memory and
// against a real `rewind up` process; no reply may break the spec, the canaries and the scratch
// slots must read back as the fuzzer's model says, and the server must stay up.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { EXPORT_BYTES } from '../../sim/nbd-fuzz-model.js';
import { runFuzzOn, type FuzzOptions, type FuzzReport } from '../../sim/nbd-fuzz-run.js';
import { startTarget, type TargetKind } from '../../sim/nbd-fuzz-target.js';

// No tolerated deviations: the one the fuzzer found (FAST_ZERO answered with ENOTSUP instead of
// EINVAL) is fixed.
const TOLERATE: string[] = [];

function explain(report: FuzzReport): string {
  return report.violations
    .map(
      (violation) =>
        `[${violation.rule}] connection ${String(violation.connection)}: ${violation.detail}\n  ${violation.exchange.join('\n  ')}`,
    )
    .join('\n');
}

async function fuzz(kind: TargetKind, options: Omit<FuzzOptions, 'target'>): Promise<FuzzReport> {
  const target = await startTarget(kind, EXPORT_BYTES);
  try {
    return await runFuzzOn(target, { ...options, target: kind });
  } finally {
    await target.close();
  }
}

function checkReport(report: FuzzReport, requests: number): void {
  assert.ok(report.ok, `seed ${report.seed} on ${report.target}:\n${explain(report)}`);
  assert.ok(report.requests >= requests, `sent ${report.requests} of ${requests} requests`);
  assert.ok(report.probes > 0, 'the server answered liveness probes');
  assert.ok(report.serverDisconnects > 0, 'hostile input made the server disconnect');
  for (const errno of ['OK', 'EINVAL', 'EPERM', 'ENOSPC'])
    assert.ok((report.errnos[errno] ?? 0) > 0, `some replies were ${errno}`);
}

test(
  'NBD fuzzing (memory, seeded): 20,000 requests, every reply as the spec says, nothing stored altered',
  { timeout: 60_000 },
  async (t) => {
    const report = await fuzz('memory', {
      requests: 20_000,
      seed: 20260101,
      concurrency: 4,
      checkEvery: 50,
      timeoutMs: 10_000,
      tolerate: TOLERATE,
    });
    t.diagnostic(
      `${report.requests} requests on ${report.connections} connections in ${report.seconds} s; errnos ${JSON.stringify(report.errnos)}`,
    );
    checkReport(report, 20_000);
  },
);

test(
  'NBD fuzzing (rewind up, seeded): 5,000 requests, every reply as the spec says, nothing stored altered',
  { timeout: 90_000 },
  async (t) => {
    const report = await fuzz('rewind', {
      requests: 5_000,
      seed: 20260102,
      concurrency: 4,
      checkEvery: 25,
      timeoutMs: 10_000,
      tolerate: TOLERATE,
    });
    t.diagnostic(
      `${report.requests} requests on ${report.connections} connections in ${report.seconds} s; errnos ${JSON.stringify(report.errnos)}`,
    );
    checkReport(report, 5_000);
  },
);
