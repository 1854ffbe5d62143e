// The one conformance suite every archive store backend passes (directory, S3): registers node:test
// cases for a harness that opens fresh, empty stores. What a backend may differ in (write-once
// without conditional writes) follows from what its probe found, and the probe is held to it.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { describe, it } from 'node:test';
import type { ObjectStore, StoreCapabilities, StoreOptions } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';

export interface StoreHarness {
  /** A fresh, empty store (its own directory or prefix); closed by the test. */
  open(options?: StoreOptions): Promise<ObjectStore>;
  /** What the probe must find on this backend, when the test set-up knows it. */
  capabilities?: StoreCapabilities;
  /**
   * Tries object lock without the store: puts a locked version and tries to delete it; true when
   * the delete was refused. Absent where the backend has no such thing (a directory).
   */
  objectLockEnforced?: () => Promise<boolean>;
}

/** Keys written at once by the tests (the suite's own concurrency bound). */
const PARALLEL_MAX = 32;
/** More than one DeleteObjects request and one ListObjectsV2 page hold. */
const MANY_KEYS = 1100;
const LARGE_BYTES = 64 * 1024 * 1024;

async function rejectsWith(
  promise: Promise<unknown>,
  code: string,
  pattern?: RegExp,
): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(error instanceof RewindError, `a RewindError, not ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (pattern !== undefined) assert.match(error.message, pattern);
    return true;
  });
}

async function inBatches<T>(items: T[], run: (item: T) => Promise<void>): Promise<void> {
  for (let first = 0; first < items.length; first += PARALLEL_MAX) {
    await Promise.all(items.slice(first, first + PARALLEL_MAX).map(run));
  }
}

async function withStore(
  harness: StoreHarness,
  run: (store: ObjectStore) => Promise<void>,
): Promise<void> {
  const store = await harness.open();
  try {
    await run(store);
  } finally {
    await store.close();
  }
}

const BAD_KEYS = [
  '',
  '/a',
  'a/',
  'a//b',
  '..',
  '../x',
  'a/../b',
  './a',
  '.hidden',
  'a/.b',
  'a b',
  'a\\b',
  'ü',
  'a\nb',
  'a:b',
  'x'.repeat(1025),
  `a/${'x'.repeat(201)}`,
];
const BAD_PREFIXES = ['/', '/a', '../', 'a//', '.x', 'a/.b', 'a b'];

export function storeConformance(name: string, harness: StoreHarness): void {
  describe(`archive store conformance: ${name}`, () => {
    it('put, get, head: bytes and sizes round trip', async () => {
      await withStore(harness, async (store) => {
        const bodies = new Map([
          ['empty', Buffer.alloc(0)],
          ['one/byte', Buffer.from([0x5a])],
          ['vol-a/redo/0000000001.obj', crypto.randomBytes(1024 * 1024 + 7)],
        ]);
        for (const [key, body] of bodies) await store.put(key, body);
        for (const [key, body] of bodies) {
          assert.ok((await store.get(key)).equals(body), key);
          assert.deepEqual(await store.head(key), { size: body.length });
        }
      });
    });

    it('ranged get: inside, clipped at the end, at or past the end, empty', async () => {
      await withStore(harness, async (store) => {
        const body = crypto.randomBytes(10_000);
        await store.put('r', body);
        const range = async (offset: number, length: number): Promise<Buffer> =>
          store.get('r', { offset, length });
        assert.ok((await range(0, 10)).equals(body.subarray(0, 10)));
        assert.ok((await range(4096, 4096)).equals(body.subarray(4096, 8192)));
        assert.ok((await range(9990, 100)).equals(body.subarray(9990)));
        assert.equal((await range(10_000, 10)).length, 0);
        assert.equal((await range(20_000, 10)).length, 0);
        assert.equal((await range(5, 0)).length, 0);
        await rejectsWith(
          store.get('absent', { offset: 0, length: 10 }),
          'REWIND_ARCHIVE_NOT_FOUND',
        );
        await rejectsWith(store.get('r', { offset: -1, length: 1 }), 'REWIND_BAD_ARGUMENT');
        await rejectsWith(store.get('r', { offset: 0, length: 1.5 }), 'REWIND_BAD_ARGUMENT');
      });
    });

    it('a missing key: get is REWIND_ARCHIVE_NOT_FOUND naming store and key, head undefined', async () => {
      await withStore(harness, async (store) => {
        await store.put('present', Buffer.from('x'));
        const url = store.url.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
        await rejectsWith(
          store.get('no/such/key'),
          'REWIND_ARCHIVE_NOT_FOUND',
          new RegExp(`${url}.*no/such/key`),
        );
        assert.equal(await store.head('no/such/key'), undefined);
        // A key that is only a prefix of others is no object either.
        await store.put('dir/child', Buffer.from('x'));
        assert.equal(await store.head('dir'), undefined);
        await rejectsWith(store.get('dir'), 'REWIND_ARCHIVE_NOT_FOUND');
      });
    });

    it('capabilities are probed, and writing twice does what the probe said', async () => {
      await withStore(harness, async (store) => {
        const found = await store.probe();
        if (harness.capabilities !== undefined) assert.deepEqual(found, harness.capabilities);
        await store.put('once', Buffer.from('first'));
        if (found.conditionalWrite) {
          await rejectsWith(
            store.put('once', Buffer.from('second')),
            'REWIND_ARCHIVE_EXISTS',
            /once/,
          );
          assert.equal((await store.get('once')).toString(), 'first');
        } else {
          // Documented: without conditional writes a second put replaces the object.
          await store.put('once', Buffer.from('second'));
          assert.equal((await store.get('once')).toString(), 'second');
        }
        if (harness.objectLockEnforced !== undefined) {
          assert.equal(await harness.objectLockEnforced(), found.objectLock, 'probe vs trying');
        } else {
          assert.equal(found.objectLock, false);
        }
        // The probe leaves nothing a listing shows.
        assert.deepEqual(await store.list(''), ['once']);
      });
    });

    it('several puts at once; racing puts of one key with conditional writes: one wins', async () => {
      await withStore(harness, async (store) => {
        const bodies = Array.from({ length: 16 }, () => crypto.randomBytes(256 * 1024));
        await Promise.all(bodies.map(async (body, i) => store.put(`c/${i}`, body)));
        for (const [i, body] of bodies.entries())
          assert.ok((await store.get(`c/${i}`)).equals(body));
        const { conditionalWrite } = await store.probe();
        if (!conditionalWrite) return;
        const results = await Promise.allSettled(
          bodies.slice(0, 8).map(async (body) => store.put('race', body)),
        );
        const won = results.filter((r) => r.status === 'fulfilled');
        assert.equal(won.length, 1, 'exactly one put of the key succeeds');
        for (const r of results) {
          if (r.status === 'rejected') {
            assert.ok(r.reason instanceof RewindError);
            assert.equal(r.reason.code, 'REWIND_ARCHIVE_EXISTS');
          }
        }
        const stored = await store.get('race');
        assert.ok(bodies.slice(0, 8).some((body) => body.equals(stored)));
      });
    });

    it(`${MANY_KEYS} keys: list pages and filters by prefix, delete batches, missing keys`, async () => {
      await withStore(harness, async (store) => {
        const keys = Array.from(
          { length: MANY_KEYS },
          (_, i) => `many/${String(i).padStart(5, '0')}`,
        );
        await inBatches(keys, async (key) => store.put(key, Buffer.from(key)));
        await store.put('other/x', Buffer.from('x'));
        await store.put('manyx', Buffer.from('x'));
        assert.deepEqual(await store.list('many/'), keys);
        assert.deepEqual(await store.list('many/001'), keys.slice(100, 200));
        assert.deepEqual(await store.list('many'), [...keys, 'manyx']);
        assert.deepEqual(await store.list(''), [...keys, 'manyx', 'other/x']);
        assert.deepEqual(await store.list('nothing/'), []);
        await store.delete([...keys, 'never/was', 'many/99999']);
        assert.deepEqual(await store.list('many'), ['manyx']);
        assert.equal(await store.head('many/00000'), undefined);
        await store.delete([]);
        await store.delete(['manyx', 'manyx', 'never/was']);
        assert.deepEqual(await store.list(''), ['other/x']);
      });
    });

    it('keys outside the grammar are refused everywhere with REWIND_BAD_ARGUMENT', async () => {
      await withStore(harness, async (store) => {
        for (const key of BAD_KEYS) {
          await rejectsWith(store.put(key, Buffer.from('x')), 'REWIND_BAD_ARGUMENT');
          await rejectsWith(store.get(key), 'REWIND_BAD_ARGUMENT');
          await rejectsWith(store.head(key), 'REWIND_BAD_ARGUMENT');
          await rejectsWith(store.delete(['ok', key]), 'REWIND_BAD_ARGUMENT');
        }
        for (const prefix of BAD_PREFIXES)
          await rejectsWith(store.list(prefix), 'REWIND_BAD_ARGUMENT');
        const good = 'A.b/c-d_e/F9.redo.zst';
        const long = `${'y'.repeat(200)}/${'z'.repeat(200)}`;
        await store.put(good, Buffer.from('ok'));
        await store.put(long, Buffer.from('ok'));
        assert.deepEqual(await store.list(''), [good, long]);
        assert.deepEqual(await store.list('y'), [long]);
      });
    });

    it('a 64 MiB object round trips whole and by range', async () => {
      await withStore(harness, async (store) => {
        const body = crypto.randomBytes(LARGE_BYTES);
        await store.put('large', body);
        assert.deepEqual(await store.head('large'), { size: LARGE_BYTES });
        const back = await store.get('large');
        assert.equal(back.length, LARGE_BYTES);
        assert.ok(back.equals(body));
        const tail = await store.get('large', {
          offset: LARGE_BYTES - 1_000_000,
          length: 2_000_000,
        });
        assert.ok(tail.equals(body.subarray(LARGE_BYTES - 1_000_000)));
      });
    });

    it('a closed store refuses with REWIND_SHUTDOWN', async () => {
      const store = await harness.open();
      await store.close();
      await rejectsWith(store.get('x'), 'REWIND_SHUTDOWN');
      await rejectsWith(store.put('x', Buffer.from('x')), 'REWIND_SHUTDOWN');
    });

    it('requireObjectLock opens only where the probe finds object lock enforced', async () => {
      const expected = harness.capabilities?.objectLock;
      const opening = harness.open({ requireObjectLock: true });
      if (expected === true) {
        await (await opening).close();
      } else {
        await rejectsWith(opening, 'REWIND_CONFIG', /object lock/);
      }
    });
  });
}
