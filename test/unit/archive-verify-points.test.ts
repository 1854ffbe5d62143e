// A deep verify rebuilds a sample of points from the archive alone (a full image plus archived
// redo) and compares each with the journal's view at the same seq: clean when they agree, and a
// byte changed in the local replica (bit rot on the backup host) is named by point, volume and
// offset, while the object checks, which see only the archive, stay clean. A shallow verify
// rebuilds nothing.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../src/archive/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { rng, type Rng } from '../support/model.js';

const VOLUMES = [
  { name: 'a', sizeBytes: 192 * 1024 },
  { name: 'b', sizeBytes: 64 * 1024 },
];
const VOLUME_SET_ID = '0d0d0d0d-0d0d-4d0d-8d0d-0d0d0d0d0d0d';
const TOKEN = 't';

/** One segment of one or two writes; the last write's volume and offset are returned too. */
function segment(random: Rng): { records: FakeRecord[]; volume: number; offset: number } {
  const records: FakeRecord[] = [];
  const timeNs = BigInt(Date.now()) * 1_000_000n;
  let volume = 0;
  let offset = 0;
  for (let r = 0; r < 1 + random.int(2); r++) {
    volume = random.int(VOLUMES.length);
    const length = 4096;
    offset = random.int(((VOLUMES[volume]?.sizeBytes ?? 0) - length) / 4096) * 4096;
    records.push({ volume, kind: 'write', offset, length, data: random.bytes(length), timeNs });
  }
  return { records, volume, offset };
}

describe('archive verify --deep, points', () => {
  it('rebuilds sampled points from the archive and compares them with the journal', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-verify-points-'));
    const manager = await Manager.open({
      dataDir: dir,
      token: TOKEN,
      log: () => undefined,
      applier: new InThreadApply(),
      retentionMerger: new InThreadApply(),
      startRetention: false,
      archive: {
        store: await openStore(path.join(dir, 'archive')),
        key: undefined,
        batchBytesMax: 16 * 1024,
        batchMs: 0,
      },
    });
    try {
      const { port } = await manager.listen('127.0.0.1', 0);
      const agent = await FakeAgent.connect(port, {
        token: TOKEN,
        volumeSetId: VOLUME_SET_ID,
        volumes: VOLUMES,
      });
      const random = rng(77);
      let last = { volume: 0, offset: 0 };
      for (let s = 0; s < 16; s++) {
        const shipped = segment(random);
        await agent.ship(shipped.records);
        last = shipped;
        if (s === 7) {
          await manager.archiver?.drain(20_000);
          await manager.takeFull({ volumes: [] });
        }
      }
      await manager.archiver?.drain(20_000);
      agent.close();
      const committed = manager.status().seqCommitted;
      const fullSeq = manager.fulls()[0]?.seq as number;

      assert.deepEqual((await manager.verifyArchive({ deep: false })).pointsCompared, []);
      const clean = await manager.verifyArchive({ deep: true });
      assert.deepEqual(clean.problems, []);
      assert.ok(clean.pointsCompared.includes(fullSeq), `the full's seq ${fullSeq}`);
      assert.ok(clean.pointsCompared.includes(committed), 'the last archived seq');
      assert.ok(clean.pointsCompared.length >= 3, JSON.stringify(clean.pointsCompared));
      assert.ok(
        clean.pointsCompared.every((seq) => seq >= fullSeq && seq <= committed),
        'each one the archive reaches from a full image',
      );
      assert.equal(clean.objectsOk, clean.objects);

      // Bit rot in the backup host's replica, at the newest write: the journal's view at the last
      // seq reads it, the archive's rebuild does not.
      const name = VOLUMES[last.volume]?.name as string;
      const replica = path.join(dir, 'manager', 'replica', `${name}.img`);
      const fd = fs.openSync(replica, 'r+');
      const byte = Buffer.alloc(1);
      fs.readSync(fd, byte, 0, 1, last.offset + 100);
      byte[0] = (byte[0] as number) ^ 0x01;
      fs.writeSync(fd, byte, 0, 1, last.offset + 100);
      fs.closeSync(fd);
      const rotten = await manager.verifyArchive({ deep: true });
      const named = rotten.problems.filter((p) => p.key === `point ${committed}`);
      assert.equal(named.length, 1, JSON.stringify(rotten.problems));
      assert.match(
        named[0]?.problem ?? '',
        new RegExp(`volume ${name} differs at byte ${last.offset + 100}`),
      );
      assert.ok(
        rotten.problems.every((p) => p.key.startsWith('point ')),
        'the archive itself is clean',
      );
    } finally {
      await manager.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
