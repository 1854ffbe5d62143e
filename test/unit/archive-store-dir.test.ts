// The archive store's directory backend: the conformance suite, plus what only a directory shows
// (private modes, no temporary files left, file:// URLs, a key where a directory is).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { openStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { storeConformance } from '../support/store-conformance.js';

const ROOT = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-dir-'));
after(() => fs.rmSync(ROOT, { recursive: true, force: true }));
let opened = 0;
const freshDir = (): string => path.join(ROOT, `store-${(opened += 1)}`);

storeConformance('directory', {
  open: async (options) => openStore(freshDir(), options ?? {}),
  capabilities: { conditionalWrite: true, objectLock: false },
});

describe('archive store: directory only', () => {
  it('files are 0600 and directories 0700; no temporary file is left', async () => {
    const dir = freshDir();
    const store = await openStore(pathToFileURL(dir).href, {});
    await store.put('a/b/c', Buffer.from('x'));
    await assert.rejects(store.put('a/b/c', Buffer.from('y')));
    assert.equal(fs.statSync(path.join(dir, 'a/b/c')).mode & 0o777, 0o600);
    for (const d of ['', 'a', 'a/b'])
      assert.equal(fs.statSync(path.join(dir, d)).mode & 0o777, 0o700);
    assert.deepEqual(fs.readdirSync(path.join(dir, 'a/b')), ['c']);
    assert.equal(store.url, dir);
    await store.close();
  });

  it('a key whose parent is an object, or that is a directory, is refused naming the clash', async () => {
    const store = await openStore(freshDir(), {});
    await store.put('a', Buffer.from('x'));
    await store.put('d/e', Buffer.from('x'));
    for (const key of ['a/b', 'd']) {
      await assert.rejects(store.put(key, Buffer.from('y')), (error: unknown) => {
        assert.ok(error instanceof RewindError);
        assert.equal(error.code, 'REWIND_BAD_ARGUMENT');
        assert.match(error.message, /directory/);
        return true;
      });
    }
    await store.close();
  });

  it('unknown URL schemes and malformed file URLs are refused', async () => {
    for (const url of ['http://x/y', 'file://host/x', '']) {
      await assert.rejects(openStore(url, {}), (error: unknown) => {
        assert.ok(error instanceof RewindError);
        assert.equal(error.code, 'REWIND_BAD_ARGUMENT');
        return true;
      });
    }
  });
});
