// Full images when the store fails: an unavailable store is waited for and the full completes
// (progress says it waits); an AUTH refusal of a chunk or of the manifest ends the full at once
// with that error and records no full (chunks stored before it are recorded and reused by the
// next full, which uploads none of them again); an unknown volume is refused before any work.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { openStore, type ObjectStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager, type FullProgress } from '../../src/manager/index.js';
import { FakeAgent } from '../support/fake-agent.js';

const VOLUMES = [{ name: 'a', sizeBytes: 12 * 1024 * 1024 }];
const TOKEN = 't';

/** The directory store, failing puts whose key matches while `fail` says so. */
function failing(
  store: ObjectStore,
  fail: {
    match: RegExp;
    code: 'REWIND_ARCHIVE_UNAVAILABLE' | 'REWIND_ARCHIVE_AUTH';
    times: number;
  },
): ObjectStore {
  return {
    url: store.url,
    probe: () => store.probe(),
    put: async (key, body) => {
      if (fail.times > 0 && fail.match.test(key)) {
        fail.times -= 1;
        throw new RewindError(fail.code, `test: put ${key} refused`);
      }
      await store.put(key, body);
    },
    get: (key, range) => store.get(key, range),
    head: (key) => store.head(key),
    delete: (keys) => store.delete(keys),
    list: (prefix) => store.list(prefix),
    close: () => store.close(),
  };
}

it('full images ride out an unavailable store and stop at a refusal, recording no half', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-full-errors-'));
  const fail = { match: /x^/, code: 'REWIND_ARCHIVE_AUTH' as const, times: 0 } as {
    match: RegExp;
    code: 'REWIND_ARCHIVE_UNAVAILABLE' | 'REWIND_ARCHIVE_AUTH';
    times: number;
  };
  const manager = await Manager.open({
    dataDir: path.join(dir, 'data'),
    token: TOKEN,
    log: () => undefined,
    applier: new InThreadApply(),
    retentionMerger: new InThreadApply(),
    startRetention: false,
    archive: {
      store: failing(await openStore(path.join(dir, 'archive')), fail),
      key: undefined,
      batchMs: 0,
      retryMsMax: 1000,
      fullEveryMs: null,
    },
  });
  let agent: FakeAgent | undefined;
  try {
    const { port } = await manager.listen('127.0.0.1', 0);
    agent = await FakeAgent.connect(port, {
      token: TOKEN,
      volumeSetId: '0d0d0d0d-0d0d-0d0d-0d0d-0d0d0d0d0d0d',
      volumes: VOLUMES,
    });
    // Data in each of the three chunks.
    await agent.ship(
      [0, 1, 2].map((c) => ({
        volume: 0,
        kind: 'write' as const,
        offset: c * 4 * 1024 * 1024 + 4096,
        length: 4096,
        data: Buffer.alloc(4096, 10 + c),
        timeNs: BigInt(Date.now() + c) * 1_000_000n,
      })),
    );
    await assert.rejects(manager.takeFull({ volumes: ['nope'] }), (error: RewindError) => {
      assert.equal(error.code, 'REWIND_NOT_FOUND');
      return true;
    });

    // A refused chunk: the full ends at once with that error; nothing is recorded.
    Object.assign(fail, { match: /\/chunks\//, code: 'REWIND_ARCHIVE_AUTH', times: 1 });
    await assert.rejects(manager.takeFull({ volumes: [] }), (error: RewindError) => {
      assert.equal(error.code, 'REWIND_ARCHIVE_AUTH');
      return true;
    });
    assert.deepEqual(manager.fulls(), []);
    assert.equal(manager.catalog.archiveChunks().length, 0);

    // A refused manifest: the chunks are stored and recorded, the full is not.
    Object.assign(fail, { match: /\/full\//, code: 'REWIND_ARCHIVE_AUTH', times: 1 });
    await assert.rejects(manager.takeFull({ volumes: [] }), (error: RewindError) => {
      assert.equal(error.code, 'REWIND_ARCHIVE_AUTH');
      return true;
    });
    assert.deepEqual(manager.fulls(), []);
    assert.equal(manager.catalog.archiveChunks().length, 3);

    // Unavailable twice: waited for, then done; the chunks recorded before are not uploaded again.
    Object.assign(fail, { match: /\/full\//, code: 'REWIND_ARCHIVE_UNAVAILABLE', times: 2 });
    const seen: FullProgress[] = [];
    const taking = manager.takeFull({ volumes: [] }, (p) => seen.push(p));
    let waited = false;
    for (let i = 0; i < 100 && !waited; i++) {
      waited = manager.archiveStatus()?.fulls.running?.waiting?.includes('refused') ?? false;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    assert.ok(waited, 'the running full says it waits for the store');
    const result = await taking;
    assert.deepEqual(result.chunks, { total: 3, new: 0, zero: 0, known: 3 });
    assert.equal(manager.fulls().length, 1);
    assert.equal(fail.times, 0);
    assert.equal(seen.at(-1)?.chunksDone, 3);
    assert.equal(manager.archiveStatus()?.fulls.newest?.seq, 3);
  } finally {
    agent?.close();
    await manager.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
