// The archive's settings from the command line and the config file: the file's "archive"
// section with the flags over it, sizes and durations parsed, unknown settings and a key file
// without an archive refused.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { archiveFromOptions } from '../../src/cli/archive.js';

function config(content: object): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-flags-'));
  const file = path.join(dir, 'config.json');
  fs.writeFileSync(file, JSON.stringify(content));
  return file;
}

describe('archive settings', () => {
  it('none given: no archive', () => {
    assert.equal(archiveFromOptions({}), undefined);
  });

  it('flags, with defaults for batching and the cache', () => {
    const options = archiveFromOptions({
      archive: 's3://bucket/prefix',
      archiveKeyFile: '/k',
      s3Endpoint: 'http://127.0.0.1:9000',
      s3PathStyle: true,
      s3Region: 'us-east-1',
    });
    assert.deepEqual(options, {
      url: 's3://bucket/prefix',
      keyFile: '/k',
      s3Endpoint: 'http://127.0.0.1:9000',
      s3Region: 'us-east-1',
      s3PathStyle: true,
      cacheBytesMax: 1024 ** 3,
      batchBytesMax: 64 * 1024 ** 2,
      batchMs: 10_000,
    });
  });

  it('object lock required, by flag or config', () => {
    assert.equal(archiveFromOptions({ archive: '/a' })?.requireObjectLock, undefined);
    const flag = archiveFromOptions({ archive: '/a', archiveRequireObjectLock: true });
    assert.equal(flag?.requireObjectLock, true);
    const file = config({ archive: { url: '/a', requireObjectLock: true } });
    assert.equal(archiveFromOptions({ config: file })?.requireObjectLock, true);
  });

  it('the config file, with the flags over it', () => {
    const file = config({
      retention: { journalMax: '1G' },
      archive: { url: '/srv/archive', keyFile: '/etc/key', batchMs: 500, cacheMax: '2G' },
    });
    const options = archiveFromOptions({ config: file, archiveKeyFile: '/other' });
    assert.equal(options?.url, '/srv/archive');
    assert.equal(archiveFromOptions({ archive: 'rel/dir' })?.url, path.resolve('rel/dir'));
    assert.equal(options?.keyFile, '/other');
    assert.equal(options?.batchMs, 500);
    assert.equal(options?.cacheBytesMax, 2 * 1024 ** 3);
  });

  it('refuses an unknown setting and a key file without an archive', () => {
    assert.throws(() => archiveFromOptions({ config: config({ archive: { bucket: 'x' } }) }), {
      code: 'REWIND_BAD_ARGUMENT',
      message: /"bucket" is not an archive setting/,
    });
    assert.throws(() => archiveFromOptions({ archiveKeyFile: '/k' }), /needs --archive/);
  });
});
