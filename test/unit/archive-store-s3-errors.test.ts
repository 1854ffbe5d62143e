// The S3 backend's edges without a server: how S3 and network failures map to the store's codes
// (a programmer error is never mapped), and the parsing of s3:// URLs and endpoints.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { openStore, parseS3Url } from '../../src/archive/index.js';
import { s3Error } from '../../src/archive/s3-store.js';
import { RewindError } from '../../src/core/index.js';

function s3Failure(name: string, status?: number, message = 'refused'): Error {
  return Object.assign(new Error(message), {
    name,
    ...(status === undefined ? {} : { $metadata: { httpStatusCode: status } }),
  });
}

describe('archive store S3: failures as codes', () => {
  const cases: [Error, string][] = [
    [s3Failure('NoSuchKey', 404), 'REWIND_ARCHIVE_NOT_FOUND'],
    [s3Failure('NoSuchBucket', 404), 'REWIND_CONFIG'],
    [s3Failure('PreconditionFailed', 412), 'REWIND_ARCHIVE_EXISTS'],
    [s3Failure('AccessDenied', 403), 'REWIND_ARCHIVE_AUTH'],
    [s3Failure('SignatureDoesNotMatch', 403), 'REWIND_ARCHIVE_AUTH'],
    [s3Failure('AuthorizationHeaderMalformed', 400), 'REWIND_ARCHIVE_AUTH'],
    [
      s3Failure('CredentialsProviderError', undefined, 'Could not load credentials'),
      'REWIND_ARCHIVE_AUTH',
    ],
    [s3Failure('InternalError', 500), 'REWIND_ARCHIVE_UNAVAILABLE'],
    [s3Failure('ServiceUnavailable', 503), 'REWIND_ARCHIVE_UNAVAILABLE'],
    [s3Failure('SlowDown', 503), 'REWIND_ARCHIVE_UNAVAILABLE'],
    [s3Failure('RequestTimeout', 400), 'REWIND_ARCHIVE_UNAVAILABLE'],
    [s3Failure('TimeoutError', undefined, 'socket timed out'), 'REWIND_ARCHIVE_UNAVAILABLE'],
    [
      Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:9'), { code: 'ECONNREFUSED' }),
      'REWIND_ARCHIVE_UNAVAILABLE',
    ],
    [new Error('Region is missing'), 'REWIND_CONFIG'],
    [s3Failure('InvalidArgument', 400), 'REWIND_CONFIG'],
  ];
  for (const [cause, code] of cases) {
    it(`${cause.name} ${cause.message} -> ${code}`, () => {
      const error = s3Error('s3://b/p', 'put', 'k/1', cause);
      assert.equal(error.code, code);
      assert.match(error.message, /^s3:\/\/b\/p: put k\/1: /);
      assert.ok(error.hint !== undefined && error.hint.length > 0);
      assert.equal(error.cause, cause);
    });
  }
});

describe('archive store S3: URLs', () => {
  it('parses bucket and prefix', () => {
    assert.deepEqual(parseS3Url('s3://my-bucket'), { bucket: 'my-bucket', prefix: '' });
    assert.deepEqual(parseS3Url('s3://my-bucket/'), { bucket: 'my-bucket', prefix: '' });
    assert.deepEqual(parseS3Url('s3://b.c.d/a/b/'), { bucket: 'b.c.d', prefix: 'a/b/' });
  });

  it('refuses bad buckets, prefixes, endpoints and timeouts with REWIND_BAD_ARGUMENT', async () => {
    const bad = async (url: string, options = {}): Promise<void> => {
      await assert.rejects(openStore(url, options), (error: unknown) => {
        assert.ok(error instanceof RewindError, String(error));
        assert.equal(error.code, 'REWIND_BAD_ARGUMENT', error.message);
        return true;
      });
    };
    await bad('s3://');
    await bad('s3://UPPER/x');
    await bad('s3://ab/x');
    await bad('s3://bucket/../x');
    await bad('s3://bucket/a//b');
    await bad('s3://bucket/p', { s3Endpoint: 'ftp://x' });
    await bad('s3://bucket/p', { s3Endpoint: 'not a url' });
    await bad('s3://bucket/p', { timeoutMs: 0 });
  });
});
