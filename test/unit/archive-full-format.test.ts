// The full image format: manifests round trip (fast-check), zero chunks are null, every damaged
// byte and truncation of a manifest is refused REWIND_ARCHIVE_CORRUPT naming its key, chunk ids
// are SHA-256 without a key and a keyed HMAC with one (object names do not reveal the content
// hash), the codec thread names chunks as full.ts does, and the catalog records fulls with refs.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  chunkCount,
  chunkId,
  chunkKey,
  CodecThread,
  decodeManifest,
  decodeObject,
  encodeManifest,
  encodeObject,
  FULL_CHUNK_BYTES,
  isZeroChunk,
  manifestKey,
  type FullManifest,
} from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { Catalog } from '../../src/manager/catalog.js';

const SET_ID = '0e0e0e0e-0e0e-0e0e-0e0e-0e0e0e0e0e0e';
const KEY = crypto.randomBytes(32);

function refusal(run: () => unknown): RewindError {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof RewindError, `a RewindError, not ${String(error)}`);
    return error;
  }
  assert.fail('expected a refusal');
}

const hexId = fc.uint8Array({ minLength: 32, maxLength: 32 }).map((bytes) => {
  const id = Buffer.from(bytes).toString('hex');
  return /^0+$/.test(id) ? null : id;
});

const manifestArb: fc.Arbitrary<FullManifest> = fc
  .record({
    seq: fc.nat({ max: 2 ** 40 }),
    timeUs: fc.nat({ max: 2 ** 50 }),
    volumes: fc.array(
      fc.record({
        name: fc.string({ minLength: 1, maxLength: 12 }),
        chunkBytes: fc.constantFrom(FULL_CHUNK_BYTES, 4096, 65_536),
        sizeBytes: fc.nat({ max: 20 * 65_536 }),
        ids: fc.array(hexId, { maxLength: 400 }),
      }),
      { maxLength: 4 },
    ),
  })
  .map(({ seq, timeUs, volumes }) => ({
    volumeSetId: SET_ID,
    seq,
    timeUs,
    volumes: volumes.map((v, idx) => {
      const count = chunkCount(v.sizeBytes, v.chunkBytes);
      const chunks = Array.from(
        { length: count },
        (_, i) => v.ids[i % (v.ids.length || 1)] ?? null,
      );
      return { idx, name: v.name, sizeBytes: v.sizeBytes, chunkBytes: v.chunkBytes, chunks };
    }),
  }));

describe('full image manifest', () => {
  it('round trips, zero chunks as null', () => {
    fc.assert(
      fc.property(manifestArb, (manifest) => {
        const plain = encodeManifest(manifest);
        assert.deepEqual(decodeManifest(plain, 'm'), manifest);
      }),
      { numRuns: 200 },
    );
  });

  it('keeps a last chunk shorter than the chunk size and all-zero chunks', () => {
    const manifest: FullManifest = {
      volumeSetId: SET_ID,
      seq: 42,
      timeUs: 1_700_000_000_000_000,
      volumes: [
        {
          idx: 0,
          name: 'vol0',
          sizeBytes: 2 * FULL_CHUNK_BYTES + 512,
          chunkBytes: FULL_CHUNK_BYTES,
          chunks: [null, chunkId(Buffer.from('x'), undefined), null],
        },
      ],
    };
    const decoded = decodeManifest(encodeManifest(manifest), 'k');
    assert.equal(decoded.volumes[0]?.chunks.length, 3);
    assert.equal(decoded.volumes[0]?.chunks[0], null);
    assert.deepEqual(decoded, manifest);
  });

  it('refuses every damaged byte and every truncation, naming the key', () => {
    const manifest: FullManifest = {
      volumeSetId: SET_ID,
      seq: 7,
      timeUs: 123,
      volumes: [
        {
          idx: 0,
          name: 'a',
          sizeBytes: 3 * 4096,
          chunkBytes: 4096,
          chunks: [null, 'ab'.repeat(32), null],
        },
        { idx: 1, name: 'bb', sizeBytes: 100, chunkBytes: 4096, chunks: ['cd'.repeat(32)] },
      ],
    };
    const plain = encodeManifest(manifest);
    const name = 'set/full/0000000000000007';
    for (let at = 0; at < plain.length; at++) {
      const damaged = Buffer.from(plain);
      damaged[at] = (damaged[at] as number) ^ 0x40;
      const error = refusal(() => decodeManifest(damaged, name));
      assert.equal(error.code, 'REWIND_ARCHIVE_CORRUPT', `byte ${at}`);
      assert.match(error.message, new RegExp(name));
    }
    for (let length = 0; length < plain.length; length++) {
      const error = refusal(() => decodeManifest(plain.subarray(0, length), name));
      assert.equal(error.code, 'REWIND_ARCHIVE_CORRUPT', `truncated to ${length}`);
    }
    // Stored through the codec: a damaged stored manifest is refused before it is parsed.
    const stored = encodeObject(plain, { key: KEY });
    stored[stored.length - 20] = (stored[stored.length - 20] as number) ^ 1;
    assert.equal(
      refusal(() => decodeObject(stored, { name, key: KEY })).code,
      'REWIND_ARCHIVE_CORRUPT',
    );
  });
});

describe('full image chunks', () => {
  it('are named by SHA-256, or by HMAC with the archive key', () => {
    const plain = crypto.randomBytes(10_000);
    const sha = crypto.createHash('sha256').update(plain).digest('hex');
    assert.equal(chunkId(plain, undefined), sha);
    const keyed = chunkId(plain, KEY);
    assert.notEqual(keyed, sha, 'an encrypted archive does not name chunks by their SHA-256');
    assert.equal(keyed, crypto.createHmac('sha256', KEY).update(plain).digest('hex'));
    assert.notEqual(chunkId(plain, crypto.randomBytes(32)), keyed, 'another key, other names');
    const key = chunkKey(SET_ID, keyed);
    assert.equal(key, `${SET_ID}/chunks/${keyed.slice(0, 2)}/${keyed}`);
    assert.ok(!key.includes(sha));
    assert.equal(manifestKey(SET_ID, 42), `${SET_ID}/full/0000000000000042`);
  });

  it('knows an all-zero chunk', () => {
    assert.ok(isZeroChunk(Buffer.alloc(FULL_CHUNK_BYTES)));
    assert.ok(isZeroChunk(Buffer.alloc(100)));
    const one = Buffer.alloc(FULL_CHUNK_BYTES);
    one[FULL_CHUNK_BYTES - 1] = 1;
    assert.ok(!isZeroChunk(one));
  });

  it('are named and encoded on the codec thread as in-thread', async () => {
    const codec = new CodecThread();
    try {
      const plain = crypto.randomBytes(FULL_CHUNK_BYTES);
      assert.equal(await codec.chunkId(plain, KEY), chunkId(plain, KEY));
      assert.equal(await codec.chunkId(plain, undefined), chunkId(plain, undefined));
      const { stored } = await codec.encode(plain, KEY);
      assert.ok(decodeObject(stored, { name: 'c', key: KEY }).equals(plain));
    } finally {
      await codec.close();
    }
  });
});

describe('full image catalog tables', () => {
  it('records a full with its chunk refs in one transaction, refusing unknown chunks', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-full-catalog-'));
    const catalog = new Catalog(path.join(dir, 'catalog.sqlite'));
    try {
      const at = new Date().toISOString();
      const a = 'aa'.repeat(32);
      const b = 'bb'.repeat(32);
      catalog.recordChunk({
        id: a,
        key: chunkKey(SET_ID, a),
        plainBytes: 10,
        storedBytes: 9,
        createdAt: at,
      });
      const base = {
        seq: 5,
        timeUs: 55,
        volumes: [0, 1],
        logicalBytes: 100,
        chunkCount: 2,
        newChunks: 1,
        storedBytes: 9,
        createdAt: at,
      };
      const refused = refusal(() =>
        catalog.recordFull({ ...base, manifestKey: manifestKey(SET_ID, 5) }, [a, b]),
      );
      assert.equal(refused.code, 'REWIND_CONFLICT');
      assert.deepEqual(catalog.fulls(), [], 'nothing half recorded');
      catalog.recordChunk({
        id: b,
        key: chunkKey(SET_ID, b),
        plainBytes: 10,
        storedBytes: 9,
        createdAt: at,
      });
      const id = catalog.recordFull({ ...base, manifestKey: manifestKey(SET_ID, 5) }, [a, b, a]);
      catalog.recordFull({ ...base, seq: 9, manifestKey: manifestKey(SET_ID, 9) }, [a]);
      assert.deepEqual(catalog.fullChunkIds(id), [a, b]);
      assert.equal(catalog.fullAtOrBefore(8)?.seq, 5);
      assert.equal(catalog.fullAtOrBefore(9)?.seq, 9);
      assert.equal(catalog.fullAtOrBefore(4), undefined);
      assert.deepEqual(
        catalog.fulls().map((f) => f.volumes),
        [
          [0, 1],
          [0, 1],
        ],
      );
      assert.equal(catalog.knownChunk(a)?.storedBytes, 9);
      assert.equal(catalog.knownChunk('cc'.repeat(32)), undefined);
      assert.deepEqual(catalog.fullTotals(), { fulls: 2, chunks: 2, chunkStoredBytes: 18 });
    } finally {
      catalog.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
