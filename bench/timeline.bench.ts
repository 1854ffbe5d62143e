// Benchmark of the console's timeline queries (src/manager/timeline.ts) on a catalog of many
// transactions: milliseconds per answer for windows from the whole history down to 10 s, a log
// page, a range's history and a block map, and the first answer, which loads the running totals
// (in chunks). SQLite is synchronous, so a query holds the manager's event loop (the write path,
// in rewind up) while it runs; long scans yield every 20,000 records.
// Run: node dist/bench/timeline.bench.js [TRANSACTIONS]   (default 1,000,000; 16 writes each)
import Database from 'better-sqlite3';
import { Catalog } from '../src/manager/catalog.js';
import { Timeline, type RecordColumns } from '../src/manager/index.js';

const TRANSACTIONS = Number(process.argv[2] ?? 1_000_000);
const WRITES_PER_TX = 16;
const WRITE_BYTES = 4096;
/** One transaction a second, its writes over 0.9 s: a busy volume with the default --seal-ms. */
const TX_EVERY_US = 1_000_000;
const TX_SPAN_US = 900_000;
const T0_US = 1_700_000_000_000_000;
const VOLUME_BYTES = 1 << 30;

const catalog = new Catalog(new Database(':memory:'));
const insert = (idx: number): void =>
  catalog.insertTx({
    idx,
    kind: 'redo',
    seqFirst: (idx - 1) * WRITES_PER_TX + 1,
    seqLast: idx * WRITES_PER_TX,
    timeFirstUs: T0_US + idx * TX_EVERY_US,
    timeLastUs: T0_US + idx * TX_EVERY_US + TX_SPAN_US,
    recordCount: WRITES_PER_TX,
    redoBytes: 128 + WRITES_PER_TX * (48 + WRITE_BYTES),
    redoCrc: 0,
    undoBytes: 0,
    undoCrc: 0,
    state: 'committed',
    receivedAt: '2026-01-01T00:00:00.000Z',
  });
const building = performance.now();
for (let idx = 1; idx <= TRANSACTIONS; idx++) insert(idx);
process.stderr.write(
  `catalog of ${TRANSACTIONS} transactions built in ${((performance.now() - building) / 1000).toFixed(1)} s\n`,
);

/** The records of a transaction, as its index would give them (no files involved). */
function records(idx: number): Promise<RecordColumns> {
  const step = TX_SPAN_US / (WRITES_PER_TX - 1);
  return Promise.resolve({
    seqFirst: (idx - 1) * WRITES_PER_TX + 1,
    recordCount: WRITES_PER_TX,
    recordKind: new Uint8Array(WRITES_PER_TX).fill(1),
    recordVolume: new Uint16Array(WRITES_PER_TX),
    recordOffset: Float64Array.from(
      { length: WRITES_PER_TX },
      (_, i) => ((idx * 7 + i) % 1024) * 4096,
    ),
    recordLength: new Float64Array(WRITES_PER_TX).fill(WRITE_BYTES),
    extentCount: 0,
    extentVolume: new Uint16Array(0),
    extentOffset: new Float64Array(0),
    extentLength: new Float64Array(0),
    recordTimeNs: BigUint64Array.from(
      { length: WRITES_PER_TX },
      (_, i) => BigInt(Math.round(T0_US + idx * TX_EVERY_US + i * step)) * 1000n,
    ),
  });
}

const timeline = new Timeline({
  catalog,
  volumeNames: ['v'],
  volumeSize: () => VOLUME_BYTES,
  seqCommitted: () => TRANSACTIONS * WRITES_PER_TX,
  records,
  gapStartUs: () => 0,
});

async function timed(label: string, work: () => Promise<unknown>): Promise<void> {
  await work(); // warm the statement cache
  const runs = 3;
  const started = performance.now();
  for (let i = 0; i < runs; i++) await work();
  console.log(
    `${label.padEnd(44)} ${((performance.now() - started) / runs).toFixed(1).padStart(9)} ms`,
  );
}

const endUs = T0_US + (TRANSACTIONS + 1) * TX_EVERY_US;
// The first answer loads the running totals from the catalog (in chunks, yielding between them).
const loading = performance.now();
await timeline.buckets({ fromUs: T0_US, toUs: endUs, buckets: 400 });
console.log(
  `${'first answer (loads the running totals)'.padEnd(44)} ${(performance.now() - loading).toFixed(1).padStart(9)} ms`,
);
for (const [label, widthUs] of [
  ['whole history', endUs - T0_US],
  ['last day', 86_400 * TX_EVERY_US],
  ['last hour', 3600 * TX_EVERY_US],
  ['last 10 s', 10 * TX_EVERY_US],
] as const) {
  const fromUs = Math.max(T0_US, endUs - widthUs);
  await timed(`timeline, ${label}, 400 buckets`, () =>
    timeline.buckets({ fromUs, toUs: endUs, buckets: 400 }),
  );
}
const middle = Math.floor(TRANSACTIONS / 2) * WRITES_PER_TX;
await timed('log page of 50 writes', () => timeline.logPage({ fromSeq: middle, limit: 50 }));
await timed('range history, newest 50 (4 KiB)', () =>
  timeline.rangeHistory({ volume: 'v', range: { offset: 0, length: 4096 }, limit: 50 }),
);
await timed('block map of 100,000 writes, 1024 cells', () =>
  timeline.blockMap({ volume: 'v', fromSeq: middle, toSeq: middle + 100_000, cells: 1024 }),
);
