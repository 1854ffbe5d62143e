// The retention policy and its pure plan: what an operator may set (refusals with their reasons),
// and for a synthetic history, that the plan keeps every write inside the window, thins older
// history into one point per tier interval, keeps bookmarks as points, drops the oldest first at
// the limit (no further than a pin), drops what is older than every tier, and under
// stop-applying drops nothing and says why.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  DEFAULT_POLICY,
  plan,
  roomDrop,
  policyFrom,
  type PlanInput,
  type PlanTx,
  type RetentionAction,
} from '../../src/manager/retention-policy.js';

const MIN_US = 60_000_000;
const NOW_US = Date.UTC(2026, 11, 2, 12, 0, 0) * 1000;

describe('retention policy: what may be set', () => {
  it('the defaults and a policy from flags', () => {
    assert.equal(DEFAULT_POLICY.keepEveryWriteMs, 24 * 3_600_000);
    assert.equal(DEFAULT_POLICY.onFull, 'drop-oldest');
    const policy = policyFrom({
      journalMax: '200G',
      journalWarn: '160G',
      keepEveryWrite: '4h',
      keep: '1m:24h,1h:7d,1d:90d',
    });
    assert.equal(policy.journalBytesMax, 200 * 2 ** 30);
    assert.equal(policy.keepEveryWriteMs, 4 * 3_600_000);
    assert.deepEqual(
      policy.tiers.map((t) => [t.everyMs, t.forMs]),
      [
        [60_000, 24 * 3_600_000],
        [3_600_000, 7 * 86_400_000],
        [86_400_000, 90 * 86_400_000],
      ],
    );
  });

  for (const [text, pattern] of [
    [{ keep: '1m:24h' }, /not after the tier before it \(1d\)/], // the default 24 h window
    [{ keepEveryWrite: '1h', keep: '1h:7d,1m:30d' }, /finer than the tier before it/],
    [{ keepEveryWrite: '1h', keep: '1m:7d,1h:2d' }, /not after the tier before it/],
    [{ journalMax: '1G', journalWarn: '2G' }, /warn|journal/],
    [{ journalMax: '0' }, /more than 0/],
    [{ keepEveryWrite: 'soon' }, /duration|keep-every-write/],
    [{ keep: '1m' }, /EVERY:FOR/],
    [{ onFull: 'panic' }, /not a choice/],
  ] as const) {
    it(`refuses ${JSON.stringify(text)}`, () => {
      assert.throws(
        () => policyFrom(text),
        (error: Error & { code?: string }) =>
          error.code === 'REWIND_BAD_ARGUMENT' && pattern.test(error.message),
      );
    });
  }
});

/** One transaction of one write every 10 s over the last `minutes`, `bytes` each. */
function history(minutes: number, bytes = 1000): PlanTx[] {
  const txs: PlanTx[] = [];
  const count = minutes * 6;
  for (let i = 0; i < count; i++) {
    const timeUs = NOW_US - (count - i) * 10_000_000;
    txs.push({
      idx: i + 1,
      kind: 'redo',
      seqFirst: i + 1,
      seqLast: i + 1,
      timeFirstUs: timeUs,
      timeLastUs: timeUs,
      bytes,
      redoBytes: bytes / 2,
      tier: null,
    });
  }
  return txs;
}

function input(txs: PlanTx[], overrides: Partial<PlanInput> & { policyText?: object }): PlanInput {
  const { policyText, ...rest } = overrides;
  return {
    txs,
    nowUs: NOW_US,
    policy: policyFrom({ keepEveryWrite: '10m', keep: '1m:1h', ...policyText }),
    journalBytesMax: Number.MAX_SAFE_INTEGER,
    journalBytes: txs.reduce((sum, tx) => sum + tx.bytes, 0),
    mergeTxsMax: 256,
    keepPoints: [],
    frozenAfterSeq: undefined,
    dropFloorSeq: undefined,
    ...rest,
  };
}

const merges = (actions: RetentionAction[]): Extract<RetentionAction, { kind: 'merge' }>[] =>
  actions.filter((a): a is Extract<RetentionAction, { kind: 'merge' }> => a.kind === 'merge');

describe('retention plan', () => {
  it('keeps every write inside the window and thins older ones into one point a minute', () => {
    const txs = history(60);
    const { actions, stuck } = plan(input(txs, {}));
    assert.equal(stuck, undefined);
    assert.ok(
      actions.every((a) => a.kind === 'merge'),
      'nothing to drop',
    );
    const byIdx = new Map(txs.map((t) => [t.idx, t]));
    const merged = new Set<number>();
    for (const m of merges(actions)) {
      const first = byIdx.get(m.firstIdx) as PlanTx;
      const last = byIdx.get(m.lastIdx) as PlanTx;
      assert.equal(m.tier, '1m:1h');
      // One run per minute of capture time, all of it older than the 10-minute window.
      assert.equal(Math.floor(first.timeLastUs / MIN_US), Math.floor(last.timeLastUs / MIN_US));
      assert.ok(NOW_US - last.timeLastUs > 10 * MIN_US, `run ${m.firstIdx}..${m.lastIdx} is old`);
      for (let idx = m.firstIdx; idx <= m.lastIdx; idx++) merged.add(idx);
    }
    for (const tx of txs) {
      const old = NOW_US - tx.timeLastUs > 10 * MIN_US;
      if (!old) assert.ok(!merged.has(tx.idx), `seq ${tx.seqLast} in the window is kept`);
    }
    // About 50 minutes of history older than the window: one point per minute left of each.
    assert.ok(merges(actions).length >= 48 && merges(actions).length <= 51);
  });

  it('a bookmark strictly inside a run splits it, so its point stays', () => {
    const txs = history(60);
    const bookmark = 40; // seq 40 is about 53 minutes old, inside the 1m tier
    for (const m of merges(plan(input(txs, { keepPoints: [bookmark] })).actions))
      assert.ok(
        !(m.firstIdx <= bookmark && bookmark < m.lastIdx),
        `run ${m.firstIdx}..${m.lastIdx} does not swallow the bookmark at seq ${bookmark}`,
      );
  });

  it('drops what is older than every tier, and the oldest first at the limit, no further than a pin', () => {
    const txs = history(120); // two hours: the first hour is past the 1m:1h tier
    const expired = plan(input(txs, {})).actions.find((a) => a.kind === 'drop');
    assert.ok(expired && expired.kind === 'drop' && !expired.promised);
    const past = txs.filter((t) => NOW_US - t.timeLastUs > 60 * MIN_US);
    assert.equal(expired.lastIdx, (past[past.length - 1] as PlanTx).idx);

    const recent = history(60);
    const total = recent.reduce((sum, tx) => sum + tx.bytes, 0);
    const full = plan(input(recent, { journalBytesMax: total / 4 }));
    const drop = full.actions.find((a) => a.kind === 'drop');
    assert.ok(
      drop && drop.kind === 'drop' && drop.promised,
      'promised history dropped at the limit',
    );
    assert.equal(full.actions[0], drop, 'the drop for space runs first');

    const pinned = plan(input(recent, { journalBytesMax: total / 4, dropFloorSeq: 30 }));
    const pinnedDrop = pinned.actions.find((a) => a.kind === 'drop');
    assert.ok(!pinnedDrop || (pinnedDrop.kind === 'drop' && pinnedDrop.lastIdx <= 30));
    assert.match(pinned.stuck ?? '', /pinned bookmark or an open view holds seq 30/);
  });

  it('stop-applying drops nothing at the limit and says why', () => {
    const txs = history(60);
    const total = txs.reduce((sum, tx) => sum + tx.bytes, 0);
    const result = plan(
      input(txs, { journalBytesMax: total / 4, policyText: { onFull: 'stop-applying' } }),
    );
    assert.ok(result.actions.every((a) => a.kind === 'merge'));
    assert.match(result.stuck ?? '', /applying waits/);
  });
});

describe('retention: room for a transaction about to commit', () => {
  const txs = (kinds: PlanTx['kind'][]): PlanTx[] =>
    history(1, 100)
      .slice(0, kinds.length)
      .map((tx, i) => ({ ...tx, kind: kinds[i] as PlanTx['kind'] }));

  it('drops the oldest until the incoming bytes fit under the target', () => {
    const oldest = txs(['redo', 'redo', 'redo', 'redo', 'redo']);
    const room = (incomingBytes: number, targetBytes: number): ReturnType<typeof roomDrop> =>
      roomDrop({
        txs: oldest,
        journalBytes: 500,
        incomingBytes,
        targetBytes,
        dropFloorSeq: undefined,
      });
    assert.deepEqual(room(0, 500), { lastIdx: undefined, short: false }, 'it fits already');
    assert.deepEqual(room(100, 550), { lastIdx: oldest[0]?.idx, short: false });
    assert.deepEqual(room(100, 400), { lastIdx: oldest[1]?.idx, short: false });
    assert.deepEqual(room(600, 600), { lastIdx: oldest[4]?.idx, short: false }, 'all of it');
    assert.deepEqual(room(700, 600), { lastIdx: oldest[4]?.idx, short: true }, 'not enough');
  });

  it('never ends inside a resync window, and never passes the floor', () => {
    const oldest = txs(['resync', 'resync', 'redo', 'redo']);
    const room = (targetBytes: number, floor?: number): ReturnType<typeof roomDrop> =>
      roomDrop({
        txs: oldest,
        journalBytes: 400,
        incomingBytes: 0,
        targetBytes,
        dropFloorSeq: floor,
      });
    assert.deepEqual(room(350), { lastIdx: oldest[2]?.idx, short: false }, 'through the window');
    const floor = oldest[1]?.seqLast;
    assert.deepEqual(
      room(350, floor),
      { lastIdx: undefined, short: true },
      'a window the floor cuts',
    );
    assert.deepEqual(room(50, oldest[2]?.seqLast), { lastIdx: oldest[2]?.idx, short: true });
  });
});
