// Virtual full images against the model: an in-process manager with a fake agent, a small journal
// limit and a directory archive. Fulls are taken at several seqs; a second full after writes to one
// chunk uploads only the chunks whose content is new (counted by the store's puts and new_chunks).
// Then the manager restarts with archiving stopped while the limit drops history it never
// archived: a gap after the fulls. Every seq is tried: those after a full that archived redo
// reaches are served from the full plus redo and equal the model's replay byte for byte, the
// others the archive cannot reach are refused REWIND_POINT_INVALID naming what it keeps. A full
// taken --at an old point equals the model at that point, read back from its stored chunks.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import {
  decodeManifest,
  decodeObject,
  FULL_CHUNK_BYTES,
  openStore,
  type ObjectStore,
} from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';

const MIB = 1024 * 1024;
/** Three chunks, the last one short; and one whole chunk. */
const VOLUMES = [
  { name: 'a', sizeBytes: 2 * FULL_CHUNK_BYTES + 64 * 1024 },
  { name: 'b', sizeBytes: FULL_CHUNK_BYTES },
];
const VOLUME_SET_ID = '0f0f0f0f-0f0f-0f0f-0f0f-0f0f0f0f0f0f';
const TOKEN = 't';
const SECTOR = 512;
const SEEDS = Number(process.env.REWIND_ARCHIVE_SEEDS ?? 2);

function rng(seed: number): (n: number) => number {
  let state = seed >>> 0 || 1;
  return (n) => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) % n;
  };
}

/** Where writes may land: a volume and byte range, or anywhere. */
type Region = { volume: number; fromBytes: number; toBytes: number } | undefined;

/** `count` segments, each a few writes, zeroes and trims, an hour or so apart. */
function segments(
  next: (n: number) => number,
  clock: { ms: number },
  count: number,
  writes: ModelWrite[],
  region?: Region,
): FakeRecord[][] {
  const out: FakeRecord[][] = [];
  for (let s = 0; s < count; s++) {
    clock.ms += 3_600_000;
    const records: FakeRecord[] = [];
    for (let r = 0; r < 1 + next(4); r++) {
      const volume = region?.volume ?? next(VOLUMES.length);
      const from = region?.fromBytes ?? 0;
      const to = region?.toBytes ?? (VOLUMES[volume] as { sizeBytes: number }).sizeBytes;
      const length = (1 + next(24)) * SECTOR;
      const offset = from + next((to - from - length) / SECTOR) * SECTOR;
      const kind = next(8) === 0 ? 'zero' : next(12) === 0 ? 'trim' : 'write';
      const data = kind === 'write' ? Buffer.alloc(length, 1 + next(255)) : undefined;
      const seq = writes.length + 1;
      records.push({
        volume,
        kind,
        offset,
        length,
        ...(data ? { data } : {}),
        timeNs: BigInt(clock.ms + r) * 1_000_000n,
      });
      writes.push({ seq, volume, kind, offset, length, ...(data ? { data } : {}) });
    }
    out.push(records);
  }
  return out;
}

function replay(writes: readonly ModelWrite[], seq: number): Buffer[] {
  const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
  for (const w of writes) if (w.seq <= seq) model.apply(w);
  return VOLUMES.map((_v, i) => model.image(i));
}

/** The directory store, counting puts by kind of key. */
function counting(store: ObjectStore, puts: { chunks: number; manifests: number }): ObjectStore {
  return {
    url: store.url,
    probe: () => store.probe(),
    put: (key, body) => {
      if (key.includes('/chunks/')) puts.chunks += 1;
      if (key.includes('/full/')) puts.manifests += 1;
      return store.put(key, body);
    },
    get: (key, range) => store.get(key, range),
    head: (key) => store.head(key),
    delete: (keys) => store.delete(keys),
    list: (prefix) => store.list(prefix),
    close: () => store.close(),
  };
}

/** Distinct non-zero 4 MiB chunk contents of images (hex of the bytes' identity). */
function chunkContents(images: readonly Buffer[]): Set<string> {
  const out = new Set<string>();
  for (const image of images) {
    for (let at = 0; at < image.length; at += FULL_CHUNK_BYTES) {
      const chunk = image.subarray(at, Math.min(at + FULL_CHUNK_BYTES, image.length));
      if (chunk.some((byte) => byte !== 0)) out.add(chunk.toString('base64'));
    }
  }
  return out;
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

/** A stored full image read back: its manifest and chunks from the store, as volume images. */
async function storedImages(store: ObjectStore, manifestKey: string): Promise<Buffer[]> {
  const manifest = decodeManifest(
    decodeObject(await store.get(manifestKey), { name: manifestKey }),
    manifestKey,
  );
  const images: Buffer[] = [];
  for (const volume of manifest.volumes) {
    const image = Buffer.alloc(volume.sizeBytes);
    for (const [c, id] of volume.chunks.entries()) {
      if (id === null) continue;
      const key = `${manifest.volumeSetId}/chunks/${id.slice(0, 2)}/${id}`;
      decodeObject(await store.get(key), { name: key }).copy(image, c * volume.chunkBytes);
    }
    images.push(image);
  }
  return images;
}

describe('virtual full images, against the model', () => {
  const totals = { fromFull: 0, refused: 0, unarchivedDrops: 0, fulls: 0 };
  for (let seed = 1; seed <= SEEDS; seed++) {
    it(`seed ${seed}: fulls upload what changed; points after them equal the replay`, async () => {
      const next = rng(seed * 7919);
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-full-model-'));
      const puts = { chunks: 0, manifests: 0 };
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
            store: counting(await openStore(path.join(dir, 'archive')), puts),
            key: undefined,
            batchBytesMax: 16 * 1024 + next(64 * 1024),
            batchMs: 0,
            cacheBytesMax: 24 * MIB,
            fullEveryMs: null,
          },
        });
      let manager = await open();
      let agent: FakeAgent | undefined;
      const connect = async (): Promise<FakeAgent> => {
        const { port } = await manager.listen('127.0.0.1', 0);
        return FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
      };
      try {
        const journalMax = 96 * 1024 + next(64 * 1024);
        manager.retention.setPolicy({
          keepEveryWrite: '3650d',
          keep: 'none',
          journalMax: String(journalMax),
        });
        agent = await connect();
        const writes: ModelWrite[] = [];
        const clock = { ms: Date.now() - 20 * 86_400_000 };
        manager.archiver?.start();
        for (const segment of segments(next, clock, 6 + next(4), writes)) {
          await agent.ship(segment);
          await manager.archiver?.drain(20_000);
        }
        // The first full: every non-zero chunk is new.
        const first = await manager.takeFull({ volumes: [] });
        const contents1 = chunkContents(replay(writes, first.seq));
        assert.equal(first.seq, writes.length);
        assert.equal(first.chunks.new, contents1.size, 'the first full uploads each chunk once');
        assert.equal(puts.chunks, contents1.size);
        assert.equal(puts.manifests, 1);
        assert.deepEqual(
          await storedImages(manager.archiver?.store as ObjectStore, first.manifestKey),
          replay(writes, first.seq),
        );
        // Writes to volume a's first chunk only: the second full uploads that chunk alone.
        const region = { volume: 0, fromBytes: 0, toBytes: FULL_CHUNK_BYTES };
        for (const segment of segments(next, clock, 2, writes, region)) {
          await agent.ship(segment);
          await manager.archiver?.drain(20_000);
        }
        const before = puts.chunks;
        const second = await manager.takeFull({ volumes: [] });
        const contents2 = chunkContents(replay(writes, second.seq));
        const fresh = [...contents2].filter((c) => !contents1.has(c)).length;
        assert.ok(fresh <= 1, 'writes to one chunk change one chunk at most');
        assert.equal(second.chunks.new, fresh, 'only the changed chunk is uploaded');
        assert.equal(puts.chunks - before, fresh, 'the store saw one chunk put at most');
        assert.equal(second.chunks.known, second.chunks.total - second.chunks.zero - fresh);
        const row = manager.fulls().find((f) => f.id === second.id);
        assert.equal(row?.newChunks, fresh);
        assert.deepEqual(row?.volumes, [0, 1]);
        // A full of one volume, recorded with its volume only.
        const onlyB = await manager.takeFull({ volumes: ['b'] });
        assert.deepEqual(manager.fulls().find((f) => f.id === onlyB.id)?.volumes, [1]);
        assert.equal(onlyB.chunks.new, 0, 'b did not change since the last full');
        // One at a time: a second request while one runs is refused REWIND_BUSY.
        for (const segment of segments(next, clock, 3, writes)) {
          await agent.ship(segment);
          await manager.archiver?.drain(20_000);
        }
        const running = manager.takeFull({ volumes: [] });
        await assert.rejects(manager.takeFull({ volumes: [] }), (error: RewindError) => {
          assert.equal(error.code, 'REWIND_BUSY');
          assert.match(error.message, /is being taken/);
          return true;
        });
        const third = await running;
        totals.fulls += 4;
        // More history, archived.
        for (const segment of segments(next, clock, 6 + next(6), writes)) {
          await agent.ship(segment);
          await manager.archiver?.drain(20_000);
        }
        const archivedThrough = writes.length;
        agent.close();
        agent = undefined;
        await manager.close();
        // Archiving stopped: the limit drops history the archive never gets (a gap after it).
        manager = await open();
        agent = await connect();
        for (const segment of segments(next, clock, 20 + next(10), writes))
          await agent.ship(segment);
        totals.unarchivedDrops += manager.retention.unarchivedDrops;
        assert.ok(
          manager.retention.unarchivedDrops > 0,
          'history was dropped before it was archived',
        );
        manager.archiver?.start();
        await manager.archiver?.drain(20_000);
        const oldest = manager.retention.status().oldestSeq;
        assert.ok(oldest > archivedThrough, `the journal starts after the gap (${oldest})`);
        const label = `seed ${seed} (journal ${journalMax})`;
        for (let seq = 0; seq <= writes.length; seq++) {
          const got = await imagesAt(manager, seq);
          if (got instanceof RewindError) {
            assert.equal(got.code, 'REWIND_POINT_INVALID', `${label}: seq ${seq}: ${got.message}`);
            assert.match(
              got.hint ?? '',
              /full images at seqs [\d, ]+/,
              `${label}: names the fulls`,
            );
            assert.ok(seq < first.seq || seq > archivedThrough, `${label}: seq ${seq} refused`);
            totals.refused += 1;
            continue;
          }
          const plan = seq < oldest ? manager.archivePlan(String(seq)) : null;
          const want = replay(writes, seq);
          got.forEach((image, i) =>
            assert.ok(
              image.equals(want[i] as Buffer),
              `${label}: volume ${i} at seq ${seq} differs`,
            ),
          );
          if (seq >= first.seq && seq <= archivedThrough) {
            assert.equal(plan?.way, 'full', `${label}: seq ${seq} is served from a full image`);
            const base = [first, second, third].filter((f) => f.seq <= seq).at(-1);
            assert.equal(plan?.anchorSeq, base?.seq, `${label}: from the newest full before it`);
            totals.fromFull += 1;
          }
        }
        for (let seq = first.seq; seq <= archivedThrough; seq++) {
          assert.ok(manager.archivePlan(String(seq))?.way === 'full', `${label}: seq ${seq} kept`);
        }
        // A full --at an old point (served from a full + redo) equals the model there.
        const taken = new Set([first.seq, second.seq, third.seq]);
        const candidates = [...Array(archivedThrough - first.seq).keys()]
          .map((i) => first.seq + 1 + i)
          .filter((seq) => !taken.has(seq));
        const at = candidates[next(candidates.length)] as number;
        const old = await manager.takeFull({ volumes: [], at: String(at) });
        assert.equal(old.seq, at);
        const stored = await storedImages(manager.archiver?.store as ObjectStore, old.manifestKey);
        const then = replay(writes, at);
        stored.forEach((image, i) =>
          assert.ok(image.equals(then[i] as Buffer), `${label}: the full at ${at}, volume ${i}`),
        );
        const cache = manager.oldPoints?.cacheStatus();
        assert.ok(cache && cache.bytes <= cache.bytesMax, JSON.stringify(cache));
        // Verify checks manifests and chunks; deep, a damaged chunk is named.
        const clean = await manager.verifyArchive({ deep: true });
        assert.deepEqual(clean.problems, []);
        assert.equal(clean.fulls, manager.fulls().length);
        assert.equal(clean.chunks, manager.catalog.archiveChunks().length);
        const victim = manager.catalog.archiveChunks()[0];
        assert.ok(victim);
        const file = path.join(dir, 'archive', victim.key);
        const bytes = fs.readFileSync(file);
        bytes[bytes.length - 1] = (bytes[bytes.length - 1] as number) ^ 0xff;
        fs.chmodSync(file, 0o600);
        fs.writeFileSync(file, bytes);
        assert.deepEqual((await manager.verifyArchive({ deep: false })).problems, []);
        const damaged = await manager.verifyArchive({ deep: true });
        assert.deepEqual(
          damaged.problems.map((p) => p.key),
          [victim.key],
        );
        assert.match(damaged.problems[0]?.problem ?? '', /CRC|corrupt|damaged/i);
      } finally {
        agent?.close();
        await manager.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  }
  it('points came from fulls, others were refused, history was lost before archiving', () => {
    assert.ok(totals.fromFull > 0 && totals.refused > 0, JSON.stringify(totals));
    assert.ok(totals.unarchivedDrops > 0, JSON.stringify(totals));
  });
});
