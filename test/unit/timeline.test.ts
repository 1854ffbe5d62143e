// The console's history queries (src/manager/timeline.ts) against a plain model: a random history
// of writes with bursty capture times, cut into transactions and cataloged in a real (in-memory)
// SQLite catalog, then buckets over random windows, the seq edges and the writes listed, log pages,
// range histories and block maps, each compared with a direct count over the list of writes.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { Catalog, type TxKind } from '../../src/manager/catalog.js';
import { Timeline, type RecordColumns } from '../../src/manager/index.js';
import { rng, type Rng } from '../support/model.js';

interface Write {
  seq: number;
  timeUs: number;
  volume: number;
  kind: 'write' | 'zero' | 'trim';
  offset: number;
  length: number;
  tx: number;
}

const SIZES = [8 << 20, 2 << 20];
const NAMES = ['db', 'logs'];
const KIND_CODE = { write: 1, zero: 2, trim: 3 } as const;
const NO_EXTENTS = {
  extentCount: 0,
  extentVolume: new Uint16Array(0),
  extentOffset: new Float64Array(0),
  extentLength: new Float64Array(0),
};

/** Writes in bursts (several in one µs, then quiet for up to seconds), cut into transactions. */
function history(random: Rng, count: number): { writes: Write[]; kinds: Map<number, TxKind> } {
  const writes: Write[] = [];
  let timeUs = 1_700_000_000_000_000;
  let tx = 1;
  let left = 1 + random.int(60);
  for (let seq = 1; seq <= count; seq++) {
    const roll = random.int(10);
    timeUs += roll < 3 ? 0 : roll < 8 ? 1 + random.int(50) : 1 + random.int(3_000_000);
    const volume = random.int(SIZES.length);
    const length = 512 * (1 + random.int(64));
    const offset = 512 * random.int(((SIZES[volume] as number) - length) / 512 + 1);
    const kind = random.pick(['write', 'write', 'write', 'zero', 'trim'] as const);
    writes.push({ seq, timeUs, volume, kind, offset, length, tx });
    if (--left === 0) {
      tx += 1;
      left = 1 + random.int(random.bool(0.1) ? 400 : 60);
    }
  }
  // A few runs of transactions are a resync (a run of `resync`, closed by a `resync-end`).
  const kinds = new Map<number, TxKind>();
  const last = writes[writes.length - 1]?.tx ?? 0;
  for (let t = 2; t < last - 3; t += 8 + random.int(15)) {
    const run = random.int(3);
    for (let i = 0; i < run; i++) kinds.set(t + i, 'resync');
    kinds.set(t + run, 'resync-end');
    t += run;
  }
  return { writes, kinds };
}

/**
 * The history cataloged in a real (in-memory) catalog: the first half before the timeline's first
 * answer (which loads its running totals from the catalog), the rest as commits after it.
 */
async function setUp(seed: number, count: number) {
  const random = rng(seed);
  const { writes, kinds } = history(random, count);
  const catalog = new Catalog(new Database(':memory:'));
  const byTx = new Map<number, Write[]>();
  for (const w of writes) {
    const list = byTx.get(w.tx) ?? [];
    list.push(w);
    byTx.set(w.tx, list);
  }
  const columns = new Map<number, RecordColumns>();
  let committed = 0;
  const timeline = new Timeline({
    catalog,
    volumeNames: NAMES,
    volumeSize: (volume) => SIZES[volume] as number,
    seqCommitted: () => committed,
    records: async (idx) => columns.get(idx) as RecordColumns,
    gapStartUs: () => 0,
  });
  const half = Math.floor(byTx.size / 2);
  for (const [idx, list] of byTx) {
    const first = list[0] as Write;
    const last = list[list.length - 1] as Write;
    const payload = list.reduce((sum, w) => sum + (w.kind === 'write' ? w.length : 0), 0);
    const row = {
      idx,
      kind: kinds.get(idx) ?? 'redo',
      seqFirst: first.seq,
      seqLast: last.seq,
      timeFirstUs: first.timeUs,
      timeLastUs: last.timeUs,
      recordCount: list.length,
      // Header and trailer (64 bytes each), then a 48-byte header per record and the payloads.
      redoBytes: 128 + 48 * list.length + payload,
      redoCrc: 0,
      undoBytes: 0,
      undoCrc: 0,
      state: 'committed' as const,
      receivedAt: new Date().toISOString(),
    };
    catalog.insertTx(row);
    columns.set(idx, {
      seqFirst: first.seq,
      recordCount: list.length,
      recordKind: Uint8Array.from(list, (w) => KIND_CODE[w.kind]),
      recordVolume: Uint16Array.from(list, (w) => w.volume),
      recordOffset: Float64Array.from(list, (w) => w.offset),
      recordLength: Float64Array.from(list, (w) => w.length),
      // Sub-µs digits the catalog does not keep, so buckets must floor as the catalog does.
      recordTimeNs: BigUint64Array.from(
        list,
        (w) => BigInt(w.timeUs) * 1000n + BigInt(w.seq % 2 === 0 ? 0 : w.seq % 1000),
      ),
      ...NO_EXTENTS,
    });
    committed = last.seq;
    if (idx === half) await timeline.buckets({ fromUs: 1, toUs: 2, buckets: 1 });
    if (idx > half) timeline.committed(row);
  }
  return { random, writes, kinds, catalog, timeline, columns, byTx };
}

test('timeline buckets, seq edges and listed writes equal a direct count', async () => {
  const { random, writes, timeline } = await setUp(17, 4000);
  const firstUs = (writes[0] as Write).timeUs;
  const lastUs = (writes[writes.length - 1] as Write).timeUs;
  let listed = 0;
  let approximate = 0;
  for (let round = 0; round < 300; round++) {
    // Windows from the whole history down to a few µs around one write.
    const around = random.pick(writes).timeUs;
    const widthUs = Math.max(1, Math.floor((lastUs - firstUs + 10) / 2 ** random.int(28)));
    // Some windows start or end exactly at a write's capture time.
    const roll = random.int(4);
    const fromUs =
      roll === 0
        ? around
        : roll === 1
          ? around - widthUs
          : Math.max(0, around - random.int(widthUs));
    const toUs = fromUs + widthUs;
    const buckets = 1 + random.int(600);
    const answer = await timeline.buckets({ fromUs, toUs, buckets });
    const inside = writes.filter((w) => w.timeUs >= fromUs && w.timeUs < toUs);
    assert.equal(answer.writesTotal > 0, inside.length > 0);
    assert.equal(answer.seqFirst, inside[0]?.seq ?? null, `seqFirst of ${fromUs}..${toUs}`);
    assert.equal(answer.seqLast, inside[inside.length - 1]?.seq ?? null);
    if (!answer.exact) {
      approximate += 1;
      const total = answer.writes.reduce((a, b) => a + b, 0);
      assert.ok(Math.abs(total - inside.length) <= inside.length * 0.5 + 2, 'spread roughly');
      continue;
    }
    const model = {
      writes: new Array<number>(answer.writes.length).fill(0),
      bytes: [] as number[],
    };
    model.bytes = new Array<number>(answer.writes.length).fill(0);
    for (const w of inside) {
      const b = Math.floor((w.timeUs - fromUs) / answer.bucketUs);
      model.writes[b] = (model.writes[b] as number) + 1;
      if (w.kind === 'write') model.bytes[b] = (model.bytes[b] as number) + w.length;
    }
    assert.equal(answer.bucketUs, Math.max(1, Math.ceil(widthUs / buckets)));
    assert.deepEqual(answer.writes, model.writes, `writes of ${fromUs}..${toUs} / ${buckets}`);
    assert.deepEqual(answer.bytes, model.bytes, `bytes of ${fromUs}..${toUs} / ${buckets}`);
    if (inside.length <= 500) {
      listed += 1;
      assert.deepEqual(
        answer.list?.map((w) => [w.seq, w.volume, w.kind, w.offset, w.length, w.timeUs]),
        inside.map((w) => [w.seq, NAMES[w.volume], w.kind, w.offset, w.length, w.timeUs]),
      );
    } else assert.equal(answer.list, null);
  }
  assert.ok(listed > 50, `windows small enough to list every write: ${listed}`);
  assert.ok(approximate < 30, `windows spread rather than read: ${approximate}`);
});

test('a window with more crossing transactions than it may read spreads them, keeping totals', async () => {
  const { writes, timeline } = await setUp(5, 40_000);
  const fromUs = (writes[0] as Write).timeUs;
  const toUs = (writes[writes.length - 1] as Write).timeUs + 1;
  const answer = await timeline.buckets({ fromUs, toUs, buckets: 4000 });
  assert.equal(answer.exact, false);
  const total = answer.writes.reduce((a, b) => a + b, 0);
  assert.ok(Math.abs(total - writes.length) < 1e-6, `all writes counted once: ${total}`);
  const bytes = writes.reduce((sum, w) => sum + (w.kind === 'write' ? w.length : 0), 0);
  assert.ok(Math.abs(answer.bytes.reduce((a, b) => a + b, 0) - bytes) < 1e-3);
});

test('log pages, range histories and block maps equal the list of writes', async () => {
  const { random, writes, timeline } = await setUp(23, 3000);
  for (let round = 0; round < 20; round++) {
    const fromSeq = 1 + random.int(writes.length);
    const toSeq = Math.min(writes.length, fromSeq + random.int(1500));
    const volume = random.bool() ? undefined : random.pick(NAMES);
    const limit = 1 + random.int(300);
    const seen: number[] = [];
    let next: number | null = fromSeq;
    for (let pages = 0; next !== null; pages++) {
      assert.ok(pages < 4000, 'pages end');
      const page = await timeline.logPage({
        fromSeq: next,
        toSeq,
        limit,
        ...(volume ? { volume } : {}),
      });
      assert.ok(page.entries.length <= limit);
      seen.push(...page.entries.map((e) => e.seq));
      next = page.nextSeq;
    }
    const expected = writes
      .filter((w) => w.seq >= fromSeq && w.seq <= toSeq)
      .filter((w) => volume === undefined || NAMES[w.volume] === volume)
      .map((w) => w.seq);
    assert.deepEqual(seen, expected, `log ${fromSeq}..${toSeq} ${volume ?? 'all'} by ${limit}`);
  }
  for (let round = 0; round < 20; round++) {
    const v = random.int(NAMES.length);
    const length = 4096 * (1 + random.int(64));
    const offset = 4096 * random.int(((SIZES[v] as number) - length) / 4096);
    const limit = 1 + random.int(40);
    const seen: number[] = [];
    let before: number | undefined = undefined;
    for (let pages = 0; ; pages++) {
      assert.ok(pages < 4000, 'pages end');
      const page = await timeline.rangeHistory({
        volume: NAMES[v] as string,
        range: { offset, length },
        limit,
        ...(before !== undefined ? { beforeSeq: before } : {}),
      });
      seen.push(...page.entries.map((e) => e.seq));
      if (page.nextBeforeSeq === null) break;
      before = page.nextBeforeSeq;
    }
    const expected = writes
      .filter((w) => w.volume === v && w.offset < offset + length && offset < w.offset + w.length)
      .map((w) => w.seq)
      .reverse();
    assert.deepEqual(seen, expected, `history of ${NAMES[v]} ${offset}:${length}`);
  }
  for (let round = 0; round < 20; round++) {
    const v = random.int(NAMES.length);
    const a = random.int(writes.length + 1);
    const b = random.int(writes.length + 1);
    const cells = 1 + random.int(700);
    const map = await timeline.blockMap({
      volume: NAMES[v] as string,
      fromSeq: a,
      toSeq: b,
      cells,
    });
    const inWindow = writes.filter(
      (w) => w.volume === v && w.seq > Math.min(a, b) && w.seq <= Math.max(a, b),
    );
    const model = new Array<number>(map.writes.length).fill(0);
    const covered = new Uint8Array(SIZES[v] as number);
    for (const w of inWindow) {
      for (let c = 0; c < model.length; c++) {
        const start = c * map.cellBytes;
        if (w.offset < start + map.cellBytes && start < w.offset + w.length)
          model[c] = (model[c] as number) + 1;
      }
      covered.fill(1, w.offset, w.offset + w.length);
    }
    assert.ok(
      map.cellBytes % 4096 === 0 && map.writes.length * map.cellBytes >= (SIZES[v] as number),
    );
    assert.deepEqual(map.writes, model, `block map of ${NAMES[v]} ${a}..${b} in ${cells}`);
    assert.equal(
      map.changedBytes,
      covered.reduce((sum, x) => sum + x, 0),
    );
    assert.equal(map.writesTotal, inWindow.length);
  }
});

test('resync windows are marked from the write before them to their end', async () => {
  const { writes, kinds, timeline } = await setUp(31, 3000);
  const fromUs = (writes[0] as Write).timeUs;
  const toUs = (writes[writes.length - 1] as Write).timeUs + 1;
  const answer = await timeline.buckets({ fromUs, toUs, buckets: 100 });
  // Each run: first resync transaction .. its resync-end, whose last seq is consistent again.
  const runs: { seqFirst: number; seqLast: number; fromUs: number; toUs: number }[] = [];
  const txWrites = (tx: number): Write[] => writes.filter((w) => w.tx === tx);
  for (const [tx, kind] of [...kinds.entries()].sort((x, y) => x[0] - y[0])) {
    if (kinds.get(tx - 1) === 'resync') continue; // inside a run
    let end = tx;
    if (kind === 'resync') while (kinds.get(end) !== 'resync-end') end += 1;
    const before = txWrites(tx - 1);
    const closing = txWrites(end);
    runs.push({
      seqFirst: (txWrites(tx)[0] as Write).seq,
      seqLast: (closing[closing.length - 1] as Write).seq - 1,
      fromUs: (before[before.length - 1] as Write).timeUs,
      toUs: (closing[closing.length - 1] as Write).timeUs,
    });
  }
  assert.ok(runs.length >= 3, `resync runs in the history: ${runs.length}`);
  assert.deepEqual(answer.gaps, runs);
});

test('after retention thins and drops history, the timeline counts what is left', async () => {
  const { writes, kinds, catalog, timeline, columns, byTx } = await setUp(41, 3000);
  const whole = async (): Promise<Awaited<ReturnType<Timeline['buckets']>>> =>
    timeline.buckets({
      fromUs: (writes[0] as Write).timeUs,
      toUs: (writes[writes.length - 1] as Write).timeUs + 1,
      buckets: 50,
    });
  assert.equal((await whole()).writesTotal, writes.length);
  // Drop the first five transactions; thin a run of five redo transactions in the middle into
  // one, as retention does: no records of its own, its undo's extents the ranges it wrote.
  catalog.dropTxs(5, 'test', new Date().toISOString());
  const redo = [...byTx.keys()].filter((idx) => idx > 20 && !kinds.has(idx));
  const run = redo
    .slice(0, 5)
    .filter((idx, i, all) => i === 0 || idx === (all[i - 1] as number) + 1);
  assert.ok(run.length >= 2, 'a run of consecutive redo transactions to thin');
  const first = run[0] as number;
  const last = run[run.length - 1] as number;
  const thinnedWrites = run.flatMap((idx) => byTx.get(idx) ?? []);
  catalog.mergeTxs(first, last, { undoGen: 1, undoBytes: 0, undoCrc: 0, tier: '1h' }, 'now');
  const v0 = thinnedWrites.filter((w) => w.volume === 0);
  columns.set(last, {
    seqFirst: (thinnedWrites[0] as Write).seq,
    recordCount: 0,
    recordKind: new Uint8Array(0),
    recordVolume: new Uint16Array(0),
    recordOffset: new Float64Array(0),
    recordLength: new Float64Array(0),
    recordTimeNs: new BigUint64Array(0),
    extentCount: v0.length,
    extentVolume: new Uint16Array(v0.length),
    extentOffset: Float64Array.from(v0, (w) => w.offset),
    extentLength: Float64Array.from(v0, (w) => w.length),
  });
  const dropped = [1, 2, 3, 4, 5].flatMap((idx) => byTx.get(idx) ?? []).length;
  const after = await whole();
  // The totals were rebuilt: the dropped writes are gone, the thinned ones still count.
  assert.equal(after.writesTotal, writes.length - dropped);
  assert.equal(after.seqFirst, dropped + 1);
  assert.deepEqual(
    after.thinned.map((t) => [t.seqFirst, t.seqLast, t.tier]),
    [
      [
        (thinnedWrites[0] as Write).seq,
        (thinnedWrites[thinnedWrites.length - 1] as Write).seq,
        '1h',
      ],
    ],
  );
  assert.ok(after.exact, 'a thinned run is the history, not an estimate');
  // The log shows the run as one entry on volume 0 at its last seq, and nothing of it otherwise.
  const page = await timeline.logPage({
    fromSeq: (thinnedWrites[0] as Write).seq,
    toSeq: (thinnedWrites[thinnedWrites.length - 1] as Write).seq,
    limit: 100,
  });
  assert.deepEqual(
    page.entries.map((e) => [e.kind, e.seq, e.seqFirst, e.volume]),
    [
      [
        'thinned',
        (thinnedWrites[thinnedWrites.length - 1] as Write).seq,
        (thinnedWrites[0] as Write).seq,
        'db',
      ],
    ],
  );
  // The block map over the run counts its ranges (on volume 0), once each.
  const map = await timeline.blockMap({
    volume: 'db',
    fromSeq: (thinnedWrites[0] as Write).seq - 1,
    toSeq: (thinnedWrites[thinnedWrites.length - 1] as Write).seq,
    cells: 64,
  });
  assert.equal(map.writesTotal, v0.length);
});
