// A restore to a point older than the journal reads the archive. When the store cannot be read
// (down, refusing), the restore fails with the store's error before the volumes go offline: the
// agent never gets a restore-begin, production stays online as it was, and the restore's record
// says nothing was restored. Without the fetch first, the volumes went offline and the restore
// was recorded as "partially restored" with nothing written.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openStore, type ObjectStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { rng } from '../support/model.js';

const VOLUMES = [{ name: 'a', sizeBytes: 256 * 1024 }];
const VOLUME_SET_ID = '0e0e0e0e-0e0e-4e0e-8e0e-0e0e0e0e0e0e';

/** A directory store whose reads fail as an unreachable server's do while `down`. */
function flaky(inner: ObjectStore): ObjectStore & { down: boolean } {
  const store = Object.create(inner) as ObjectStore & { down: boolean };
  store.down = false;
  store.get = (key, range) => {
    if (store.down)
      return Promise.reject(
        new RewindError('REWIND_ARCHIVE_UNAVAILABLE', `get ${key}: connect ECONNREFUSED`),
      );
    return inner.get(key, range);
  };
  return store;
}

describe('a restore to an archived point while the store is down', () => {
  it('fails before the volumes go offline, and says nothing was restored', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-restore-down-'));
    const store = flaky(await openStore(path.join(dir, 'archive')));
    const manager = await Manager.open({
      dataDir: dir,
      token: 't',
      log: () => undefined,
      applier: new InThreadApply(),
      retentionMerger: new InThreadApply(),
      startRetention: false,
      archive: { store, key: undefined, batchBytesMax: 16 * 1024, batchMs: 0 },
    });
    let agent: FakeAgent | undefined;
    try {
      manager.retention.setPolicy({ keepEveryWrite: '3650d', keep: 'none', journalMax: '64K' });
      const { port } = await manager.listen('127.0.0.1', 0);
      agent = await FakeAgent.connect(port, {
        token: 't',
        volumeSetId: VOLUME_SET_ID,
        volumes: VOLUMES,
      });
      const random = rng(3);
      for (let s = 0; s < 24; s++) {
        const offset = random.int(60) * 4096;
        const record: FakeRecord = {
          volume: 0,
          kind: 'write',
          offset,
          length: 4096,
          data: random.bytes(4096),
          timeNs: BigInt(Date.now()) * 1_000_000n,
        };
        await agent.ship([record]);
        await manager.archiver?.drain(20_000);
      }
      const oldest = manager.retention.status().oldestSeq;
      assert.ok(oldest > 2, `the journal dropped its first seqs (oldest ${oldest})`);
      assert.ok(manager.archivePlan('1'), 'seq 1 is served by the archive');

      store.down = true;
      const started = await manager.restorer.start({ volumes: ['a'], at: '1' });
      let row = manager.restorer.status(started.id);
      for (let waited = 0; row.state === 'running' && waited < 10_000; waited += 20) {
        await new Promise((resolve) => setTimeout(resolve, 20));
        row = manager.restorer.status(started.id);
      }
      assert.equal(row.state, 'failed', JSON.stringify(row));
      assert.match(row.message ?? '', /ECONNREFUSED/);
      assert.match(
        row.message ?? '',
        /nothing was restored, and production \(a\) stayed online as it was/,
      );
      assert.equal(agent.received('restore-begin'), 0, 'the volume never went offline');
    } finally {
      agent?.close();
      await manager.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
