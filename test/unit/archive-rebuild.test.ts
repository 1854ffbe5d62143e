// `rewind archive rebuild` against the model: a manager with a directory archive takes a random
// history from a fake agent; its data directory is deleted; a rebuild from the archive alone
// gives a manager whose every point from 0 to the last rebuilds byte-identical to a replay of
// writes 1..N, whose volume-set descriptor was written once per volume list, and which the agent
// resumes against. A damaged object stops the rebuild at the last contiguous point before it
// (named), and a directory holding a catalog is refused. An archive whose first batches are gone
// (its retention dropped them) is rebuilt over the oldest full image at or after its first point,
// the next one when that one is damaged, and refused, naming the seq, when none can stand in.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import {
  decodeDescriptor,
  decodeManifest,
  decodeObject,
  openStore,
  parseDescriptorKey,
  type ObjectStore,
} from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager, rebuildFromArchive } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { rng, type ModelWrite, replay, type Rng } from '../support/model.js';

const VOLUMES = [
  { name: 'a', sizeBytes: 192 * 1024 },
  { name: 'b', sizeBytes: 64 * 1024 },
];
const SIZES = VOLUMES.map((v) => v.sizeBytes);
const VOLUME_SET_ID = '0f0f0f0f-0f0f-4f0f-8f0f-0f0f0f0f0f0f';
const TOKEN = 't';
const SECTOR = 512;

function open(dataDir: string, store: ObjectStore): Promise<Manager> {
  return Manager.open({
    dataDir,
    token: TOKEN,
    log: () => undefined,
    applier: new InThreadApply(),
    retentionMerger: new InThreadApply(),
    startRetention: false,
    archive: { store, key: undefined, batchBytesMax: 24 * 1024, batchMs: 0 },
  });
}

/** One segment of a few random writes, zeroes and trims; the model takes them with their seqs. */
function segment(random: Rng, writes: ModelWrite[], volumeCount = VOLUMES.length): FakeRecord[] {
  const records: FakeRecord[] = [];
  const timeNs = BigInt(Date.now()) * 1_000_000n;
  for (let r = 0; r < 1 + random.int(4); r++) {
    const volume = random.int(volumeCount);
    const sectors = (SIZES[volume] ?? 64 * 1024) / SECTOR;
    const length = (1 + random.int(16)) * SECTOR;
    const offset = random.int(sectors - length / SECTOR) * SECTOR;
    const kind = random.int(8) === 0 ? 'zero' : random.int(12) === 0 ? 'trim' : 'write';
    const data = kind === 'write' ? random.bytes(length) : undefined;
    records.push({ volume, kind, offset, length, ...(data ? { data } : {}), timeNs });
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

async function imagesAt(manager: Manager, seq: number, sizes = SIZES): Promise<Buffer[]> {
  const view = await manager.createView(`check-${seq}`, 'snapshot', String(seq));
  const images = sizes.map((size, i) => view.read(i, 0, size));
  await manager.removeView(`check-${seq}`);
  return images;
}

async function assertEveryPoint(
  manager: Manager,
  writes: ModelWrite[],
  last: number,
): Promise<void> {
  for (let seq = 0; seq <= last; seq++) {
    const expected = replay(SIZES, writes, seq);
    const actual = await imagesAt(manager, seq);
    for (const [i, bytes] of expected.entries())
      assert.ok((actual[i] as Buffer).equals(bytes), `seq ${seq}: volume ${i} differs`);
  }
}

/** A history of `segments` segments archived by a manager in `dataDir`, which is then closed. */
async function archivedHistory(
  dataDir: string,
  archiveDir: string,
  random: Rng,
  segments: number,
): Promise<ModelWrite[]> {
  const manager = await open(dataDir, await openStore(archiveDir));
  const writes: ModelWrite[] = [];
  try {
    const { port } = await manager.listen('127.0.0.1', 0);
    const agent = await FakeAgent.connect(port, {
      token: TOKEN,
      volumeSetId: VOLUME_SET_ID,
      volumes: VOLUMES,
    });
    for (let s = 0; s < segments; s++) await agent.ship(segment(random, writes));
    await manager.archiver?.drain(20_000);
    agent.close();
  } finally {
    await manager.close();
  }
  return writes;
}

describe('archive rebuild', () => {
  it('recreates the catalog and replica from the archive: every point equals the model, the agent resumes', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rebuild-'));
    const archiveDir = path.join(dir, 'archive');
    try {
      const writes = await archivedHistory(path.join(dir, 'lost'), archiveDir, rng(5), 30);
      const last = writes.length;
      fs.rmSync(path.join(dir, 'lost'), { recursive: true, force: true });
      const store = await openStore(archiveDir);
      const keys = await store.list('');
      const descriptors = keys.filter((k) => parseDescriptorKey(k) !== undefined);
      assert.deepEqual(descriptors, [`${VOLUME_SET_ID}/set/0000000000000001`], 'written once');
      const descriptor = decodeDescriptor(
        decodeObject(await store.get(descriptors[0] as string), { name: 'd' }),
        'd',
      );
      assert.deepEqual(
        descriptor.volumes,
        VOLUMES.map((v, idx) => ({ idx, ...v })),
      );

      const progress: number[] = [];
      const rebuilt = path.join(dir, 'rebuilt');
      const result = await rebuildFromArchive({
        store,
        key: undefined,
        dataDir: rebuilt,
        onProgress: (p) => progress.push(p.objectsRead),
      });
      assert.equal(result.seq, last);
      assert.equal(result.seqFrom, 0);
      assert.equal(result.stoppedAt, undefined);
      assert.ok(result.objects > 2, `several batch objects (${result.objects})`);
      assert.equal(result.transactions, 30);
      assert.deepEqual(
        progress,
        [...Array(result.objects).keys()].map((i) => i + 1),
      );
      await assert.rejects(
        rebuildFromArchive({ store, key: undefined, dataDir: rebuilt }),
        (error) => error instanceof RewindError && error.code === 'REWIND_CONFLICT',
        'a directory holding a catalog is refused',
      );

      const manager = await open(rebuilt, await openStore(archiveDir));
      try {
        assert.equal(manager.status().seqCommitted, last);
        await assertEveryPoint(manager, writes, last);
        const verified = await manager.verifyArchive({ deep: true });
        assert.deepEqual(verified.problems, [], 'the rebuilt catalog matches the archive');
        assert.equal(verified.descriptors, 1);
        assert.equal(verified.objectsOk, result.objects + verified.descriptors);
        // The agent resumes where the archive ends, and new history is protected.
        const { port } = await manager.listen('127.0.0.1', 0);
        const agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
        assert.equal(agent.nextSeq, last + 1, 'the welcome names the end of the archive');
        const random = rng(6);
        for (let s = 0; s < 3; s++) await agent.ship(segment(random, writes));
        agent.close();
        await manager.archiver?.drain(20_000);
        const descriptorsNow = (await store.list('')).filter((k) => parseDescriptorKey(k));
        assert.equal(descriptorsNow.length, 1, 'the rebuilt catalog knows the descriptor');
        for (const seq of [last, last + 1, writes.length]) {
          const actual = await imagesAt(manager, seq);
          for (const [i, bytes] of replay(SIZES, writes, seq).entries())
            assert.ok((actual[i] as Buffer).equals(bytes), `seq ${seq} after the resume`);
        }
        // What the next rebuild reads first is verified too: a damaged descriptor is named.
        const descriptorFile = path.join(archiveDir, ...(descriptors[0] as string).split('/'));
        const bytes = fs.readFileSync(descriptorFile);
        bytes.writeUInt8((bytes.at(-1) as number) ^ 0x40, bytes.length - 1);
        fs.writeFileSync(descriptorFile, bytes);
        assert.deepEqual((await manager.verifyArchive({ deep: false })).problems, []);
        const damaged = await manager.verifyArchive({ deep: true });
        assert.deepEqual(
          damaged.problems.map((p) => p.key),
          [descriptors[0], descriptors[0]],
          'its SHA-256 and its decoding',
        );
      } finally {
        await manager.close();
      }
      await store.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a damaged object stops the rebuild at the last contiguous point before it, naming it', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rebuild-damaged-'));
    const archiveDir = path.join(dir, 'archive');
    try {
      const writes = await archivedHistory(path.join(dir, 'lost'), archiveDir, rng(8), 30);
      const store = await openStore(archiveDir);
      const batches = (await store.list('')).filter((k) => k.includes('/tx/'));
      assert.ok(batches.length >= 3, `several batch objects (${batches.length})`);
      const damaged = batches[Math.floor(batches.length / 2)] as string;
      const file = path.join(archiveDir, ...damaged.split('/'));
      const bytes = fs.readFileSync(file);
      bytes.writeUInt8((bytes.at(-1) as number) ^ 0x40, bytes.length - 1);
      fs.writeFileSync(file, bytes);
      const before = batches[batches.indexOf(damaged) - 1] as string;
      const lastBefore = Number(/-(\d{16})$/.exec(before)?.[1]);

      const result = await rebuildFromArchive({
        store,
        key: undefined,
        dataDir: path.join(dir, 'rebuilt'),
      });
      assert.equal(result.stoppedAt?.key, damaged);
      assert.match(result.stoppedAt?.problem ?? '', /corrupt|CRC|digest|checksum/i);
      const manager = await open(path.join(dir, 'rebuilt'), await openStore(archiveDir));
      try {
        const committed = manager.status().seqCommitted;
        assert.equal(committed, result.seq);
        assert.equal(manager.status().transactions, lastBefore);
        assert.ok(result.seq < writes.length, 'history after the damage is not claimed');
        await assertEveryPoint(manager, writes, result.seq);
      } finally {
        await manager.close();
      }
      await store.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a store out of reach fails the rebuild, leaving nothing, instead of cutting history short', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rebuild-unreachable-'));
    const archiveDir = path.join(dir, 'archive');
    try {
      await archivedHistory(path.join(dir, 'lost'), archiveDir, rng(9), 30);
      const inner = await openStore(archiveDir);
      const batches = (await inner.list('')).filter((k) => k.includes('/tx/'));
      const unreachable = batches[Math.floor(batches.length / 2)] as string;
      const store = Object.create(inner) as ObjectStore;
      store.get = (key, range) =>
        key === unreachable
          ? Promise.reject(
              new RewindError('REWIND_ARCHIVE_UNAVAILABLE', `get ${key}: 503 SlowDown (retried)`),
            )
          : inner.get(key, range);
      const rebuilt = path.join(dir, 'rebuilt');
      await assert.rejects(
        rebuildFromArchive({ store, key: undefined, dataDir: rebuilt }),
        (error) => error instanceof RewindError && error.code === 'REWIND_ARCHIVE_UNAVAILABLE',
      );
      assert.equal(fs.existsSync(path.join(rebuilt, 'manager')), false, 'nothing half made');
      await inner.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a new volume writes a new descriptor version; the rebuild takes the newest', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rebuild-volumes-'));
    const archiveDir = path.join(dir, 'archive');
    try {
      const manager = await open(path.join(dir, 'm'), await openStore(archiveDir));
      const writes: ModelWrite[] = [];
      const random = rng(11);
      const more = [...VOLUMES, { name: 'c', sizeBytes: 64 * 1024 }];
      try {
        const { port } = await manager.listen('127.0.0.1', 0);
        let agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
        for (let s = 0; s < 3; s++) await agent.ship(segment(random, writes));
        await manager.archiver?.drain(20_000);
        agent.close();
        agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: more,
        });
        for (let s = 0; s < 3; s++) await agent.ship(segment(random, writes, 3));
        await manager.archiver?.drain(20_000);
        agent.close();
      } finally {
        await manager.close();
      }
      const store = await openStore(archiveDir);
      const descriptors = (await store.list('')).filter((k) => parseDescriptorKey(k));
      assert.deepEqual(
        descriptors.map((k) => parseDescriptorKey(k)?.version),
        [1, 2],
      );
      const result = await rebuildFromArchive({
        store,
        key: undefined,
        dataDir: path.join(dir, 'rebuilt'),
      });
      assert.deepEqual(
        result.volumes.map((v) => v.name),
        ['a', 'b', 'c'],
      );
      assert.equal(result.seq, writes.length);
      const rebuilt = await open(path.join(dir, 'rebuilt'), await openStore(archiveDir));
      try {
        const sizes = more.map((v) => v.sizeBytes);
        const actual = await imagesAt(rebuilt, writes.length, sizes);
        for (const [i, bytes] of replay(sizes, writes, writes.length).entries())
          assert.ok((actual[i] as Buffer).equals(bytes), `volume ${i}`);
      } finally {
        await rebuilt.close();
      }
      await store.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('rebuilds over a full image when the first batches are gone, over the next when it is damaged', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-rebuild-full-'));
    const archiveDir = path.join(dir, 'archive');
    const fileOf = (key: string): string => path.join(archiveDir, ...key.split('/'));
    try {
      const manager = await open(path.join(dir, 'lost'), await openStore(archiveDir));
      const writes: ModelWrite[] = [];
      const random = rng(21);
      const fullSeqs: number[] = [];
      try {
        const { port } = await manager.listen('127.0.0.1', 0);
        const agent = await FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
        for (const segments of [10, 6, 6]) {
          for (let s = 0; s < segments; s++) await agent.ship(segment(random, writes));
          await manager.archiver?.drain(20_000);
          if (fullSeqs.length < 2) fullSeqs.push((await manager.takeFull({ volumes: [] })).seq);
        }
        agent.close();
      } finally {
        await manager.close();
      }
      const last = writes.length;
      // What the archive's retention leaves: the batch objects of the first ten transactions go.
      const store = await openStore(archiveDir);
      const keys = await store.list('');
      for (const key of keys.filter((k) => /\/tx\/\d{16}-\d{16}$/.test(k))) {
        if (Number(/-(\d{16})$/.exec(key)?.[1]) <= 10) fs.rmSync(fileOf(key));
      }
      const check = async (dataDir: string, from: number): Promise<void> => {
        const rebuilt = await open(dataDir, await openStore(archiveDir));
        try {
          assert.equal(rebuilt.status().seqCommitted, last);
          for (let seq = from; seq <= last; seq++) {
            const actual = await imagesAt(rebuilt, seq);
            for (const [i, bytes] of replay(SIZES, writes, seq).entries())
              assert.ok((actual[i] as Buffer).equals(bytes), `seq ${seq}: volume ${i} differs`);
          }
        } finally {
          await rebuilt.close();
        }
      };

      const first = await rebuildFromArchive({
        store,
        key: undefined,
        dataDir: path.join(dir, 'a'),
      });
      assert.ok(first.seqFrom > 0 && first.seqFrom <= (fullSeqs[0] as number), `${first.seqFrom}`);
      assert.equal(first.base?.seq, fullSeqs[0], 'the oldest full image at or after seqFrom');
      assert.deepEqual(
        first.fulls.map((f) => f.seq),
        fullSeqs,
      );
      assert.equal(first.seq, last);
      await check(path.join(dir, 'a'), first.seqFrom);

      // A chunk of the first full image that the second does not share is damaged.
      const manifestKeys = keys.filter((k) => k.includes('/full/'));
      const chunkSets = await Promise.all(
        manifestKeys.map(async (key) =>
          decodeManifest(decodeObject(await store.get(key), { name: key }), key).volumes.flatMap(
            (v) => v.chunks,
          ),
        ),
      );
      const own = (chunkSets[0] ?? []).find((id) => id !== null && !chunkSets[1]?.includes(id));
      assert.ok(own, 'the first full image has a chunk of its own');
      const chunkFile = fileOf(`${VOLUME_SET_ID}/chunks/${own.slice(0, 2)}/${own}`);
      const bytes = fs.readFileSync(chunkFile);
      bytes.writeUInt8((bytes.at(-1) as number) ^ 0x40, bytes.length - 1);
      fs.writeFileSync(chunkFile, bytes);
      const second = await rebuildFromArchive({
        store,
        key: undefined,
        dataDir: path.join(dir, 'b'),
      });
      assert.equal(second.base?.seq, fullSeqs[1], 'the next full image stands in');
      assert.deepEqual(
        second.fullsSkipped.map((f) => f.manifestKey),
        [manifestKeys[0]],
      );
      assert.match(second.fullsSkipped[0]?.problem ?? '', /CRC|digest|checksum|corrupt|id/i);
      await check(path.join(dir, 'b'), second.seqFrom);

      // No full image at all: refused, naming the first archived point, nothing half made.
      for (const key of manifestKeys) fs.rmSync(fileOf(key));
      await assert.rejects(
        rebuildFromArchive({ store, key: undefined, dataDir: path.join(dir, 'c') }),
        (error) =>
          error instanceof RewindError &&
          error.code === 'REWIND_ARCHIVE_NOT_FOUND' &&
          error.message.includes(`seq ${first.seqFrom} are not in it`),
      );
      assert.equal(fs.existsSync(path.join(dir, 'c', 'manager')), false, 'nothing half made');
      await store.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
