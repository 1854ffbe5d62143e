// A retention merge writes its merged undo's index file where it builds it (the merge thread),
// not on the main thread at the swap: after a restart, a view over the thinned history loads
// every transaction from its index file, with no full parse, and equals the replay.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Catalog } from '../../src/manager/catalog.js';
import { Manager } from '../../src/manager/index.js';
import { TxFiles } from '../../src/manager/txfiles.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';

const VOLUMES = [{ name: 'a', sizeBytes: 256 * 1024 }];
const VOLUME_SET_ID = '0d0d0d0d-0d0d-0d0d-0d0d-0d0d0d0d0d0d';

it('a merged transaction has its index file; a cold view loads it without a full parse', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-merge-index-'));
  const open = (): Promise<Manager> =>
    Manager.open({
      dataDir: dir,
      token: 't',
      log: () => undefined,
      applier: new InThreadApply(),
      retentionMerger: new InThreadApply(),
      retention: { keepEveryWrite: '3650d', keep: 'none', journalMax: '1T' },
    });
  let manager = await open();
  let agent: FakeAgent | undefined;
  const writes: ModelWrite[] = [];
  try {
    const { port } = await manager.listen('127.0.0.1', 0);
    agent = await FakeAgent.connect(port, {
      token: 't',
      volumeSetId: VOLUME_SET_ID,
      volumes: VOLUMES,
    });
    // Twenty segments an hour apart, ending two days ago: all past a one-hour window.
    const startMs = Date.now() - 2 * 86_400_000 - 20 * 3_600_000;
    for (let s = 0; s < 20; s++) {
      const records: FakeRecord[] = [];
      for (let r = 0; r < 3; r++) {
        const offset = ((s * 5 + r * 11) % 64) * 4096;
        const data = Buffer.alloc(4096, 1 + s * 3 + r);
        const timeNs = BigInt(startMs + s * 3_600_000 + r) * 1_000_000n;
        records.push({ volume: 0, kind: 'write', offset, length: 4096, data, timeNs });
        writes.push({
          seq: writes.length + 1,
          volume: 0,
          kind: 'write',
          offset,
          length: 4096,
          data,
        });
      }
      await agent.ship(records);
    }
    manager.retention.setPolicy({ keepEveryWrite: '1h', keep: '1d:30d' });
    await manager.retention.settle(1000);
    assert.ok(manager.retention.status().steps.merges > 0, 'retention merged');
    agent.close();
    agent = undefined;
    await manager.close();

    const root = path.join(dir, 'manager');
    const catalog = new Catalog(path.join(root, 'catalog.sqlite'));
    const merged = catalog.mergedTxs();
    catalog.close();
    assert.ok(merged.length > 0);
    const txFiles = new TxFiles(root, () => VOLUMES.length);
    for (const row of merged) {
      txFiles.setLayout(row.idx, { hasRedo: false, undoGen: row.undoGen });
      assert.ok(fs.existsSync(txFiles.indexPath(row.idx)), `index file of merged ${row.idx}`);
      await txFiles.index(row.idx);
    }
    assert.equal(txFiles.fullParses, 0, 'every merged transaction loaded from its index file');
    txFiles.close();

    manager = await open();
    const oldest = manager.retention.status().oldestSeq;
    const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
    for (const w of writes) if (w.seq <= oldest) model.apply(w);
    const view = await manager.createView('old', 'snapshot', String(oldest));
    assert.ok(view.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(model.image(0)));
  } finally {
    agent?.close();
    await manager.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
