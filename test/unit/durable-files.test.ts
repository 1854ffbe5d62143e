// linkFileDurable, the manager's redo copy in `rewind up`: a hard link to the agent's sealed file
// where the file system allows it, otherwise a durable copy of the same bytes; never a partial
// file under the final name, and errors other than "cannot link here" are not papered over.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { linkFileDurable } from '../../src/platform/index.js';
import { rng } from '../support/model.js';

function errnoError(code: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated`), { code });
}

/** Runs `work` with fsp.link replaced (the product calls it through the module object). */
async function withLink(
  replacement: (original: typeof fsp.link) => typeof fsp.link,
  work: () => Promise<void>,
): Promise<void> {
  const original = fsp.link;
  fsp.link = replacement(original);
  try {
    await work();
  } finally {
    fsp.link = original;
  }
}

describe('linkFileDurable', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-durable-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const data = rng(11).bytes(256 * 1024 + 17);
  const source = path.join(dir, 'source.redo');
  fs.writeFileSync(source, data);
  const leftovers = (): string[] => fs.readdirSync(dir).filter((name) => name.includes('.tmp-'));

  it('links the source where it can: same inode, same bytes, no temp file', async () => {
    const file = path.join(dir, 'linked.redo');
    await linkFileDurable(source, file, data);
    assert.equal(fs.statSync(file).ino, fs.statSync(source).ino);
    assert.ok(fs.readFileSync(file).equals(data));
    assert.deepEqual(leftovers(), []);
  });

  it('replaces a file left under the name (a crash before the row was written)', async () => {
    const file = path.join(dir, 'stale.redo');
    fs.writeFileSync(file, 'stale bytes of an earlier attempt');
    fs.writeFileSync(`${file}.tmp-${process.pid}`, 'a temp file left by a crash');
    await linkFileDurable(source, file, data);
    assert.equal(fs.statSync(file).ino, fs.statSync(source).ino);
    assert.deepEqual(leftovers(), []);
  });

  for (const code of ['EXDEV', 'EPERM', 'EMLINK', 'ENOTSUP', 'EOPNOTSUPP']) {
    it(`copies the bytes when the file system refuses the link (${code})`, async () => {
      const file = path.join(dir, `copied-${code}.redo`);
      await withLink(
        () => () => Promise.reject(errnoError(code)),
        () => linkFileDurable(source, file, data),
      );
      const stat = fs.statSync(file);
      assert.notEqual(stat.ino, fs.statSync(source).ino, 'a copy, not a link');
      assert.equal(stat.nlink, 1);
      assert.ok(fs.readFileSync(file).equals(data));
      assert.deepEqual(leftovers(), []);
    });
  }

  it('copies across file systems for real (EXDEV) when /dev/shm is another one', async (t) => {
    const shm = '/dev/shm';
    if (!fs.existsSync(shm) || fs.statSync(shm).dev === fs.statSync(dir).dev) {
      t.skip('no second file system at /dev/shm');
      return;
    }
    const otherDir = fs.mkdtempSync(path.join(shm, 'rewind-durable-'));
    try {
      const otherSource = path.join(otherDir, 'source.redo');
      fs.writeFileSync(otherSource, data);
      const file = path.join(dir, 'cross-device.redo');
      let linkError: string | undefined;
      await withLink(
        (original) => async (from, to) => {
          try {
            await original(from, to);
          } catch (error) {
            linkError = (error as NodeJS.ErrnoException).code;
            throw error;
          }
        },
        () => linkFileDurable(otherSource, file, data),
      );
      assert.equal(linkError, 'EXDEV', 'the kernel refused the link across devices');
      assert.ok(fs.readFileSync(file).equals(data));
      assert.deepEqual(leftovers(), []);
    } finally {
      fs.rmSync(otherDir, { recursive: true, force: true });
    }
  });

  it('fails on any other link error and leaves nothing under the name', async () => {
    const file = path.join(dir, 'failed.redo');
    await withLink(
      () => () => Promise.reject(errnoError('EIO')),
      () =>
        assert.rejects(
          linkFileDurable(source, file, data),
          (error: NodeJS.ErrnoException) => error.code === 'EIO',
        ),
    );
    assert.equal(fs.existsSync(file), false);
    assert.deepEqual(leftovers(), []);
  });

  it('fails when the source is missing (no copy of bytes it never saw)', async () => {
    const file = path.join(dir, 'missing.redo');
    await assert.rejects(
      linkFileDurable(path.join(dir, 'no-such.redo'), file, data),
      (error: NodeJS.ErrnoException) => error.code === 'ENOENT',
    );
    assert.equal(fs.existsSync(file), false);
  });
});
