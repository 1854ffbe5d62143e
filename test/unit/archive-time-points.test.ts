// A time among the writes of one archived transaction, older than the journal: refused until that
// transaction's object is in the archive cache (the refusal says how to fetch it), then, after
// `fetchTimes` (what `GET /api/archive/plan` and so every CLI command taking a POINT does first),
// resolved to the last write at or before it, and the view there equals the model's replay. Times
// just before and after each write of the transaction land on the right side of it.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../src/archive/index.js';
import { formatTimeNs, RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { replay, rng, type ModelWrite } from '../support/model.js';

const VOLUMES = [{ name: 'a', sizeBytes: 128 * 1024 }];
const SIZES = VOLUMES.map((v) => v.sizeBytes);
const VOLUME_SET_ID = '0a0a0a0a-0a0a-4a0a-8a0a-0a0a0a0a0a0a';

/** An ISO-8601 time with microseconds, as `rewind log` prints them. */
function isoMicros(us: number): string {
  return formatTimeNs(BigInt(us) * 1000n);
}

describe('a time among the writes of an archived transaction', () => {
  it('is refused until fetched, then resolves to its exact seq', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-times-'));
    const manager = await Manager.open({
      dataDir: dir,
      token: 't',
      log: () => undefined,
      applier: new InThreadApply(),
      retentionMerger: new InThreadApply(),
      startRetention: false,
      archive: {
        store: await openStore(path.join(dir, 'archive')),
        key: undefined,
        batchBytesMax: 8 * 1024,
        batchMs: 0,
      },
    });
    let agent: FakeAgent | undefined;
    try {
      manager.retention.setPolicy({ keepEveryWrite: '3650d', keep: 'none', journalMax: '48K' });
      const { port } = await manager.listen('127.0.0.1', 0);
      agent = await FakeAgent.connect(port, {
        token: 't',
        volumeSetId: VOLUME_SET_ID,
        volumes: VOLUMES,
      });
      const random = rng(12);
      const writes: ModelWrite[] = [];
      /** Capture time of each seq, µs: four writes per transaction, 1 ms apart, a minute between. */
      const timeUs: number[] = [0];
      const startMs = Date.now() - 3_600_000;
      for (let s = 0; s < 20; s++) {
        const records: FakeRecord[] = [];
        for (let r = 0; r < 4; r++) {
          const offset = random.int(28) * 4096;
          const data = random.bytes(4096);
          const atMs = startMs + s * 60_000 + r;
          records.push({
            volume: 0,
            kind: 'write',
            offset,
            length: 4096,
            data,
            timeNs: BigInt(atMs) * 1_000_000n,
          });
          writes.push({
            seq: writes.length + 1,
            volume: 0,
            kind: 'write',
            offset,
            length: 4096,
            data,
          });
          timeUs.push(atMs * 1000);
        }
        await agent.ship(records);
        await manager.archiver?.drain(20_000);
      }
      const oldest = manager.retention.status().oldestSeq;
      assert.ok(oldest > 8, `the journal dropped the first transactions (oldest ${oldest})`);

      // Seqs 5..8, the second transaction: archived only.
      const at = isoMicros(timeUs[6] as number);
      await assert.rejects(manager.createView('t', 'snapshot', at), (error) => {
        assert.ok(error instanceof RewindError && error.code === 'REWIND_POINT_INVALID');
        assert.match(error.message, /among the archived writes of seqs 5\.\.8.*not fetched/);
        assert.match(error.hint ?? '', /rewind archive fetch/);
        return true;
      });
      await manager.fetchTimes(at);
      const cases: [number, number][] = [
        [timeUs[6] as number, 6],
        [(timeUs[6] as number) + 999, 6],
        [(timeUs[7] as number) - 1, 6],
        [timeUs[5] as number, 5],
        [timeUs[7] as number, 7],
        [(timeUs[8] as number) - 1, 7],
      ];
      for (const [us, seq] of cases) {
        const view = await manager.createView('t', 'snapshot', isoMicros(us));
        assert.equal(view.seq, seq, `time ${isoMicros(us)}`);
        assert.ok(
          view.read(0, 0, SIZES[0] as number).equals(replay(SIZES, writes, seq)[0] as Buffer),
        );
        await manager.removeView('t');
      }
      // The plan route's own step: fetchPoint resolves such a time too.
      await manager.fetchPoint(isoMicros(timeUs[10] as number));
      const view = await manager.createView('t', 'snapshot', isoMicros(timeUs[10] as number));
      assert.equal(view.seq, 10);
      await manager.removeView('t');
    } finally {
      agent?.close();
      await manager.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
