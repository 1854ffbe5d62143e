// POINT resolution at the edges an operator hits first: a time before the first write (refused,
// never the empty volume by accident), seq 0 asked for by number, `latest` and `now`, and times
// inside and after the history, against a small history whose answers are worked out by hand.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { RedoRecord } from '../../src/log/index.js';
import type { AgentStatus } from '../../src/manager/agent-link.js';
import type { TxRow } from '../../src/manager/catalog.js';
import { PointResolver, type PointSource } from '../../src/manager/points.js';

const BASE_US = Date.UTC(2026, 11, 1, 12, 0, 0) * 1000;
const iso = (us: number): string => new Date(us / 1000).toISOString();

/** Two committed transactions: seqs 1..3 at BASE+1s, +2s, +3s; seqs 4..5 at +10s, +11s. */
function history(options: { captured: number; receivedAtMs: number }): PointSource {
  const times = [0, 1, 2, 3, 10, 11].map((s) => BASE_US + s * 1_000_000);
  const tx = (idx: number, seqFirst: number, seqLast: number): TxRow => ({
    idx,
    kind: 'redo',
    seqFirst,
    seqLast,
    timeFirstUs: times[seqFirst] as number,
    timeLastUs: times[seqLast] as number,
    recordCount: seqLast - seqFirst + 1,
    redoBytes: 0,
    redoCrc: 0,
    undoBytes: 0,
    undoCrc: 0,
    state: 'committed',
    receivedAt: '',
    committedAt: '',
    undoGen: 0,
    firstIdx: null,
    tier: null,
    thinnedAt: null,
  });
  const txs = [tx(1, 1, 3), tx(2, 4, 5)];
  const records = (row: TxRow): RedoRecord[] =>
    Array.from({ length: row.recordCount }, (_, i) => ({
      seq: row.seqFirst + i,
      timeNs: BigInt(times[row.seqFirst + i] as number) * 1000n,
      volume: 0,
      kind: 'write',
      offsetBytes: 0,
      lengthBytes: 4096,
      flags: 0,
      payload: Buffer.alloc(0),
    })) as unknown as RedoRecord[];
  const status: AgentStatus = {
    seqCaptured: options.captured,
    timeCapturedNs: 0n,
    spoolBytes: 0,
    sealedPending: 0,
    mode: 'logging',
    failure: undefined,
    restoring: undefined,
    receivedAtMs: options.receivedAtMs,
    captured: undefined,
    clients: undefined,
  };
  return {
    bookmark: (name: string) =>
      name === 'start' ? ({ name, seq: 2 } as ReturnType<PointSource['bookmark']>) : undefined,
    tx: (idx: number) => txs.find((t) => t.idx === idx),
    txContaining: (seq: number) => txs.find((t) => t.seqFirst <= seq && seq <= t.seqLast),
    firstTx: () => txs[0],
    txAtOrBeforeTime: (us: number) => [...txs].reverse().find((t) => t.timeFirstUs <= us),
    oldestPoint: () => undefined,
    droppedAt: () => undefined,
    committed: () => ({ idx: 2, seq: 5, timeNs: BigInt(times[5] as number) * 1000n }),
    agentStatus: () => status,
    recordsOf: (idx: number) => records(txs.find((t) => t.idx === idx) as TxRow),
    gapStartNs: () => 0n,
  };
}

const quiet = (): PointResolver =>
  new PointResolver(history({ captured: 5, receivedAtMs: Date.now() }));

test('a time before the first write is refused, naming the first write; seq 0 by number is taken', () => {
  const points = quiet();
  assert.throws(
    () => points.resolve(iso(BASE_US - 60_000_000)),
    (error: Error & { code?: string; hint?: string }) =>
      error.code === 'REWIND_POINT_INVALID' &&
      /before the first write in the history, seq 1 \(2026-12-01T12:00:01/.test(error.message) &&
      /0 for the empty volume/.test(error.hint ?? ''),
  );
  assert.throws(() => points.resolve('2020-01-01'), /before the first write/);
  assert.equal(points.resolve('0'), 0);
});

test('times inside and between transactions resolve to the last write at or before them', () => {
  const points = quiet();
  assert.equal(points.resolve(iso(BASE_US + 1_000_000)), 1);
  assert.equal(points.resolve(iso(BASE_US + 2_500_000)), 2);
  assert.equal(points.resolve(iso(BASE_US + 5_000_000)), 3);
  assert.equal(points.resolve(iso(BASE_US + 11_000_000)), 5);
  assert.equal(points.resolve('@start'), 2);
});

test('latest is the last committed write; now is the same only when every captured write is committed', () => {
  assert.equal(quiet().resolve('latest'), 5);
  assert.equal(quiet().resolve(' NOW '), 5);
  const behind = new PointResolver(history({ captured: 7, receivedAtMs: Date.now() }));
  assert.equal(behind.resolve('latest'), 5);
  assert.throws(
    () => behind.resolve('now'),
    (error: Error & { hint?: string }) =>
      /now: writes captured are not all committed yet \(captured seq 7, last committed seq 5\)/.test(
        error.message,
      ) && /seal --wait/.test(error.hint ?? ''),
  );
});
