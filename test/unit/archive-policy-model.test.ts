// The archive's retention policy against the model: an in-process manager with a fake agent, a
// small journal limit and a directory archive takes twelve days of history (writes, zeroes and
// trims on two volumes) with a full image taken once a day, then applies the policy "every write
// for 3 days, then a full image a day until 8 days old". Every seq is tried: the ones the policy
// keeps (each from the window's start on, and each kept full image's) rebuild byte-identical to a
// replay of writes 1..N; the ones it let go are refused REWIND_POINT_INVALID naming what the
// archive keeps; any other seq that is still served equals the replay too. What the catalog
// forgot is gone from the store, verify --deep is clean, and the same holds after a restart.
// Then the backup host is lost: its data directory is deleted and `rewind archive rebuild` works
// from what the policy left, which no longer starts at seq 1: the replica is rebuilt over the base
// full image (taken inside a transaction, so the replay starts mid-transaction) and every kept
// point is served, byte-identical, by a manager on the rebuilt directory.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { openStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { archivePolicyFrom, Manager, rebuildFromArchive } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { ModelVolumeSet, rng, type ModelWrite } from '../support/model.js';

const VOLUMES = [
  { name: 'a', sizeBytes: 192 * 1024 },
  { name: 'b', sizeBytes: 64 * 1024 },
];
const VOLUME_SET_ID = '0c0c0c0c-0c0c-0c0c-0c0c-0c0c0c0c0c0c';
const TOKEN = 't';
const SECTOR = 512;
const DAY_MS = 86_400_000;
const SEEDS = Number(process.env.REWIND_ARCHIVE_SEEDS ?? 2);

/** One segment of 1..4 writes, zeroes or trims at `atMs`. */
function segment(
  next: (n: number) => number,
  atMs: number,
  writes: ModelWrite[],
  recordsMin = 1,
): FakeRecord[] {
  const records: FakeRecord[] = [];
  for (let r = 0; r < recordsMin + next(4); r++) {
    const volume = next(VOLUMES.length);
    const size = (VOLUMES[volume] as { sizeBytes: number }).sizeBytes;
    const length = (1 + next(16)) * SECTOR;
    const offset = next((size - length) / SECTOR) * SECTOR;
    const kind = next(8) === 0 ? 'zero' : next(12) === 0 ? 'trim' : 'write';
    const data = kind === 'write' ? Buffer.alloc(length, 1 + next(255)) : undefined;
    records.push({
      volume,
      kind,
      offset,
      length,
      ...(data ? { data } : {}),
      timeNs: BigInt(atMs + r) * 1_000_000n,
    });
    writes.push({
      seq: writes.length + 1,
      volume,
      kind,
      offset,
      length,
      ...(data ? { data } : {}),
    });
  }
  return records;
}

function replay(writes: readonly ModelWrite[], seq: number): Buffer[] {
  const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
  for (const w of writes) if (w.seq <= seq) model.apply(w);
  return VOLUMES.map((_v, i) => model.image(i));
}

async function imagesAt(manager: Manager, seq: number): Promise<Buffer[] | RewindError> {
  try {
    const view = await manager.createView(`check-${seq}`, 'snapshot', String(seq));
    const images = VOLUMES.map((v, i) => view.read(i, 0, v.sizeBytes));
    await manager.removeView(`check-${seq}`);
    return images;
  } catch (error) {
    if (error instanceof RewindError) return error;
    throw error;
  }
}

describe("the archive's retention policy, against the model", () => {
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}: kept points equal the replay, the others are refused`, async () => {
      const random = rng(seed * 104_729);
      const next = (n: number): number => random.int(n);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-policy-'));
      const archiveDir = path.join(dir, 'archive');
      const open = async (): Promise<Manager> =>
        Manager.open({
          dataDir: path.join(dir, 'data'),
          token: TOKEN,
          log: () => undefined,
          applier: new InThreadApply(),
          retentionMerger: new InThreadApply(),
          startRetention: false,
          startArchiver: false,
          archive: {
            store: await openStore(archiveDir),
            key: undefined,
            batchBytesMax: 8 * 1024 + next(16 * 1024),
            batchMs: 0,
            fullEveryMs: null,
            policy: archivePolicyFrom({ keepEveryWrite: '3d', keep: '1d:8d' }),
          },
        });
      let manager = await open();
      let agent: FakeAgent | undefined;
      try {
        manager.retention.setPolicy({
          keepEveryWrite: '3650d',
          keep: 'none',
          journalMax: String(48 * 1024 + next(32 * 1024)),
        });
        const { port } = await manager.listen('127.0.0.1', 0);
        agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
        manager.archiver?.start();
        const writes: ModelWrite[] = [];
        const startMs = Date.now() - 12 * DAY_MS;
        // Four segments a day for twelve days; a full image at the end of each day, one write
        // before the end of its transaction (the last segment of a day has two records or more).
        for (let s = 0; s < 48; s++) {
          const dayEnd = s % 4 === 3;
          await agent.ship(segment(next, startMs + s * (DAY_MS / 4), writes, dayEnd ? 2 : 1));
          await manager.archiver?.drain(20_000);
          if (dayEnd) await manager.takeFull({ volumes: [], at: String(writes.length - 1) });
        }
        assert.equal(manager.fulls().length, 12);
        const objectsBefore = manager.archiveObjects().length;
        const retention = manager.archiveRetention;
        assert.ok(retention);
        const plan = await retention.run();
        assert.ok(plan.baseSeq !== null, 'a full image before the window is the base');
        assert.ok(plan.everyWriteFromSeq !== null && plan.baseSeq <= plan.everyWriteFromSeq);
        assert.ok(plan.deleteObjects.length > 0, 'objects before the base went');
        assert.ok(plan.deleteFulls.length > 0, 'full images past 8 days went');
        assert.equal(manager.archiveObjects().length, objectsBefore - plan.deleteObjects.length);
        const status = retention.status();
        assert.equal(status.pendingDeletions, 0, 'the store deleted what the catalog forgot');
        // The store holds exactly what the catalog records: nothing forgotten is left.
        const stored = fs
          .readdirSync(archiveDir, { recursive: true, withFileTypes: true })
          .filter((e) => e.isFile() && !e.parentPath.includes('.rewind-probe'))
          .map((e) => path.relative(archiveDir, path.join(e.parentPath, e.name)));
        const recorded = new Set([
          ...manager.archiveObjects().map((o) => o.key),
          ...manager.fulls().map((f) => f.manifestKey),
          ...manager.catalog.archiveChunks().map((c) => c.key),
          ...manager.catalog.archiveSets().map((d) => d.key),
        ]);
        assert.deepEqual(new Set(stored), recorded);
        assert.deepEqual((await manager.verifyArchive({ deep: true })).problems, []);

        const check = async (label: string): Promise<{ served: number; refused: number }> => {
          const from = plan.everyWriteFromSeq as number;
          const fullSeqs = new Set(manager.fulls().map((f) => f.seq));
          const counts = { served: 0, refused: 0 };
          for (let seq = 0; seq <= writes.length; seq++) {
            const got = await imagesAt(manager, seq);
            const promised = seq >= from || fullSeqs.has(seq);
            if (got instanceof RewindError) {
              assert.ok(!promised, `${label}: seq ${seq} is kept, refused: ${got.message}`);
              assert.equal(got.code, 'REWIND_POINT_INVALID', got.message);
              assert.match(got.hint ?? '', /full images at seqs/);
              counts.refused += 1;
              continue;
            }
            const want = replay(writes, seq);
            for (const [i, image] of got.entries()) {
              assert.ok(image.equals(want[i] as Buffer), `${label}: seq ${seq} volume ${i}`);
            }
            counts.served += 1;
          }
          return counts;
        };
        const first = await check('after the policy');
        assert.ok(first.refused > 0, 'points between the kept full images are no longer kept');

        // After a restart: the catalog's view of the archive is the same, so is every answer.
        agent.close();
        agent = undefined;
        await manager.close();
        manager = await open();
        assert.deepEqual(await check('after a restart'), first);

        // The backup host is lost; the archive alone rebuilds it, from the policy's base full.
        const fullsBefore = manager.fulls().map((f) => [f.seq, f.manifestKey]);
        await manager.close();
        fs.rmSync(path.join(dir, 'data'), { recursive: true, force: true });
        const store = await openStore(archiveDir);
        const rebuilt = await rebuildFromArchive({
          store,
          key: undefined,
          dataDir: path.join(dir, 'data'),
        });
        await store.close();
        assert.equal(rebuilt.stoppedAt, undefined);
        assert.equal(rebuilt.seq, writes.length);
        assert.ok(rebuilt.seqFrom > 0, 'the archive no longer starts at seq 1');
        assert.equal(rebuilt.base?.seq, plan.baseSeq, "the policy's base full image");
        assert.ok(rebuilt.transactions > 0 && rebuilt.transactions < 48);
        assert.deepEqual(rebuilt.fullsSkipped, []);
        manager = await open();
        assert.deepEqual(
          manager.fulls().map((f) => [f.seq, f.manifestKey]),
          fullsBefore,
          'every full image is known again',
        );
        assert.deepEqual((await manager.verifyArchive({ deep: true })).problems, []);
        const lost = await check('after the loss');
        assert.ok(lost.refused > 0);
      } finally {
        agent?.close();
        await manager.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});
