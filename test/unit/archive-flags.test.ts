// The archive's settings from the command line and the config file: the file's "archive"
// section with the flags over it, sizes and durations parsed, unknown settings and a key file
// without an archive refused.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { archiveFromOptions } from '../../src/cli/archive.js';
import { DEFAULT_ARCHIVE_POLICY } from '../../src/manager/index.js';

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
      policy: DEFAULT_ARCHIVE_POLICY,
    });
  });

  it("the archive's retention policy, by flag or config, refused without an archive", () => {
    const flags = archiveFromOptions({
      archive: '/a',
      archiveKeepEveryWrite: '7d',
      archiveKeep: '1d:30d,7d:365d',
    });
    assert.equal(flags?.policy?.keepEveryWriteMs, 7 * 86_400_000);
    assert.deepEqual(flags?.policy?.tiers, [
      { everyMs: 86_400_000, forMs: 30 * 86_400_000 },
      { everyMs: 7 * 86_400_000, forMs: 365 * 86_400_000 },
    ]);
    const file = config({ archive: { url: '/a', keepEveryWrite: '2d', keep: 'none' } });
    const fromConfig = archiveFromOptions({ config: file });
    assert.equal(fromConfig?.policy?.keepEveryWriteMs, 2 * 86_400_000);
    assert.deepEqual(fromConfig?.policy?.tiers, []);
    assert.throws(
      () => archiveFromOptions({ archiveKeep: '1d:30d' }),
      /--archive-keep-every-write and --archive-keep need --archive/,
    );
    assert.throws(
      () => archiveFromOptions({ archive: '/a', archiveKeep: '1d:20d' }),
      /--archive-keep: tier 1d:20d ends at 20d, not after the tier before it \(30d\)/,
    );
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
