// The journal limit holds at every commit, not only after the next background step: a manager
// with a small limit takes a stream of segments, and at each commit (checked in the commit event,
// before anything else runs) the journal is within the limit. Under drop-oldest the oldest
// history goes in the transaction's own turn, and every point still kept equals a replay; under
// stop-applying the segment that would pass the limit is refused as busy, nothing is dropped, and
// it commits once the limit is raised. A view pinning the oldest history lets the journal pass
// the limit, and that is reported.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager, type PolicyText } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';

const VOLUMES = [{ name: 'a', sizeBytes: 1024 * 1024 }];
const VOLUME_SET_ID = '0c0c0c0c-0c0c-0c0c-0c0c-0c0c0c0c0c0c';
const TOKEN = 't';
const LIMIT = 256 * 1024;
const SEGMENTS = 60;

/** Segment `s`: four 4 KiB writes at offsets that differ from segment to segment. */
function segment(s: number, seqFirst: number, writes: ModelWrite[]): FakeRecord[] {
  const records: FakeRecord[] = [];
  for (let r = 0; r < 4; r++) {
    const offset = ((s * 7 + r * 13) % 256) * 4096;
    const data = Buffer.alloc(4096, 1 + ((s * 4 + r) % 255));
    records.push({ volume: 0, kind: 'write', offset, length: 4096, data, timeNs: 0n });
    writes.push({ seq: seqFirst + r, volume: 0, kind: 'write', offset, length: 4096, data });
  }
  return records.map((rec, i) => ({ ...rec, timeNs: BigInt(Date.now() + i) * 1_000_000n }));
}

async function withManager(
  policy: PolicyText,
  body: (manager: Manager, agent: FakeAgent, over: () => number) => Promise<void>,
): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-limit-'));
  const manager = await Manager.open({
    dataDir: dir,
    token: TOKEN,
    log: () => undefined,
    applier: new InThreadApply(),
    retentionMerger: new InThreadApply(),
    retention: policy,
  });
  // The journal as each transaction commits, before the background steps get a turn.
  let worst = 0;
  const miscounts: string[] = [];
  manager.commitObservers.add(() => {
    const { journalBytes, journalBytesMax } = manager.retention.status();
    worst = Math.max(worst, journalBytes - journalBytesMax);
    const counted = manager.catalog.journalBytesCounted();
    if (journalBytes !== counted) miscounts.push(`${journalBytes} kept, ${counted} counted`);
  });
  let agent: FakeAgent | undefined;
  try {
    const { port } = await manager.listen('127.0.0.1', 0);
    agent = await FakeAgent.connect(port, {
      token: TOKEN,
      volumeSetId: VOLUME_SET_ID,
      volumes: VOLUMES,
    });
    await body(manager, agent, () => worst);
    assert.deepEqual(miscounts, [], 'the journal bytes kept by the catalog equal a recount');
  } finally {
    agent?.close();
    await manager.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function replay(writes: readonly ModelWrite[], seq: number): Buffer {
  const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
  for (const w of writes) if (w.seq <= seq) model.apply(w);
  return model.image(0);
}

describe('the journal limit at every commit', () => {
  it('drop-oldest: the oldest history goes in the turn, the rest equals the replay', async () => {
    const policy: PolicyText = { journalMax: String(LIMIT), keepEveryWrite: '30d', keep: 'none' };
    await withManager(policy, async (manager, agent, over) => {
      const writes: ModelWrite[] = [];
      for (let s = 0; s < SEGMENTS; s++) await agent.ship(segment(s, writes.length + 1, writes));
      assert.ok(over() <= 0, `the journal passed its limit by ${over()} bytes at a commit`);
      const status = manager.retention.status();
      assert.ok(manager.retention.roomDrops > 0, 'drops were made in the turn');
      assert.ok(status.oldestSeq > 0, 'the oldest history was dropped');
      assert.ok(
        status.journalBytes > LIMIT * 0.9,
        `the journal is used (${status.journalBytes} of ${LIMIT})`,
      );
      assert.ok(
        status.alerts.some((a) => /promised|policy keeps|dropped/.test(a.message)),
        `promised history dropped is reported: ${JSON.stringify(status.alerts)}`,
      );
      const last = writes.length;
      for (const seq of [status.oldestSeq, Math.floor((status.oldestSeq + last) / 2), last]) {
        const view = await manager.createView(`at-${seq}`, 'snapshot', String(seq));
        assert.ok(view.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, seq)));
        await manager.removeView(`at-${seq}`);
      }
      await assert.rejects(
        manager.createView('gone', 'snapshot', String(status.oldestSeq - 1)),
        /REWIND_POINT_INVALID|no longer kept|before the history/,
      );
    });
  });

  it('stop-applying: the segment that would pass the limit waits, then commits', async () => {
    const policy: PolicyText = {
      journalMax: String(LIMIT),
      keepEveryWrite: '30d',
      keep: 'none',
      onFull: 'stop-applying',
    };
    await withManager(policy, async (manager, agent, over) => {
      const writes: ModelWrite[] = [];
      let refused: { code: string; message: string } | undefined;
      let pending: FakeRecord[] | undefined;
      for (let s = 0; s < SEGMENTS && refused === undefined; s++) {
        const seqFirst = writes.length + 1;
        const records = segment(s, seqFirst, writes);
        const reply = await agent.offer(records);
        if (reply.type === 'refused') {
          refused = reply;
          pending = records;
        }
      }
      assert.ok(refused, 'a segment was refused at the limit');
      assert.equal(refused.code, 'REWIND_BUSY');
      assert.match(refused.message, /would pass its limit|over its limit/);
      assert.ok(over() <= 0, `the journal passed its limit by ${over()} bytes at a commit`);
      assert.equal(manager.retention.status().oldestSeq, 0, 'nothing was dropped');
      manager.retention.setPolicy({ journalMax: String(4 * LIMIT) });
      const reply = await agent.offer(pending ?? []);
      assert.equal(reply.type, 'ack', JSON.stringify(reply));
      const last = writes.length;
      const view = await manager.createView('last', 'snapshot', String(last));
      assert.ok(view.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, last)));
      const first = await manager.createView('first', 'snapshot', '0');
      assert.ok(first.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, 0)));
    });
  });

  it('a view on the oldest point holds it: the journal passes the limit, and says so', async () => {
    const policy: PolicyText = { journalMax: String(LIMIT), keepEveryWrite: '30d', keep: 'none' };
    await withManager(policy, async (manager, agent, over) => {
      const writes: ModelWrite[] = [];
      await agent.ship(segment(0, 1, writes));
      await manager.createView('held', 'snapshot', '0');
      for (let s = 1; s < SEGMENTS; s++) await agent.ship(segment(s, writes.length + 1, writes));
      assert.ok(over() > 0, 'the pinned history was kept over the limit');
      const view = manager.views.get('held');
      assert.ok(view?.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, 0)));
      await manager.retention.settle(100);
      const status = manager.retention.status();
      assert.equal(status.oldestSeq, 0);
      assert.ok(
        status.alerts.some((a) => a.level === 'error'),
        `over the limit is an error alert: ${JSON.stringify(status.alerts)}`,
      );
    });
  });
});
