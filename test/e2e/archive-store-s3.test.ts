// The archive store's S3 backend against a real S3-compatible server on loopback (OpenStack Swift
// with s3api, test/support/swift-s3.ts): the conformance suite, the capabilities this server has
// (probed and then tried), and faults: the server stopped or frozen mid-run, wrong credentials,
// a missing bucket.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import { openStore, S3_ATTEMPTS_MAX, type StoreOptions } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { storeConformance } from '../support/store-conformance.js';
import { SwiftS3, swiftS3Missing } from '../support/swift-s3.js';

const missing = swiftS3Missing();
const BUCKET = 'rewind-test';
/** Short, so that the faults below resolve in seconds (Swift deletes 1000 keys slower). */
const TIMEOUT_MS = 1500;

let swift: SwiftS3 | undefined;
let prefixes = 0;
const savedEnv = { ...process.env };

function server(): SwiftS3 {
  assert.ok(swift, 'the server was started');
  return swift;
}

function rawClient(): S3Client {
  return new S3Client({
    endpoint: server().endpoint,
    forcePathStyle: true,
    region: 'us-east-1',
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
  });
}

async function open(options: StoreOptions = {}, bucket = BUCKET) {
  prefixes += 1;
  return openStore(`s3://${bucket}/run-${process.pid}/p${prefixes}`, {
    s3Endpoint: server().endpoint,
    s3PathStyle: true,
    timeoutMs: TIMEOUT_MS,
    ...options,
  });
}

async function rejectsWith(promise: Promise<unknown>, code: string): Promise<RewindError> {
  let caught: unknown;
  await assert.rejects(promise, (error: unknown) => {
    caught = error;
    return true;
  });
  assert.ok(caught instanceof RewindError, `a RewindError, not ${String(caught)}`);
  assert.equal(caught.code, code, caught.message);
  return caught;
}

if (missing !== undefined) {
  it('archive store on S3 (Swift)', { skip: missing }, () => undefined);
} else {
  before(async () => {
    swift = await SwiftS3.start();
    // The store takes credentials and region from the SDK's default chain, as in production.
    Object.assign(process.env, swift.env());
    const client = rawClient();
    await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
    client.destroy();
  });
  after(async () => {
    await swift?.stop();
    process.env = savedEnv;
  });

  storeConformance('S3 (Swift s3api)', {
    open: async (options) => open({ timeoutMs: 30_000, ...options }),
    // Verified on Swift 2.30: If-None-Match on PUT is 501; object lock is accepted and ignored.
    capabilities: { conditionalWrite: false, objectLock: false },
    objectLockEnforced: async () => {
      const client = rawClient();
      const Key = `lock-check/${crypto.randomBytes(6).toString('hex')}`;
      try {
        const put = await client.send(
          new PutObjectCommand({
            Bucket: BUCKET,
            Key,
            Body: 'locked',
            ObjectLockMode: 'COMPLIANCE',
            ObjectLockRetainUntilDate: new Date(Date.now() + 86_400_000),
          }),
        );
        try {
          await client.send(
            new DeleteObjectCommand({
              Bucket: BUCKET,
              Key,
              ...(put.VersionId === undefined ? {} : { VersionId: put.VersionId }),
            }),
          );
        } catch {
          return true;
        }
        // The delete answered success: the object must really be gone.
        await assert.rejects(client.send(new HeadObjectCommand({ Bucket: BUCKET, Key })));
        return false;
      } finally {
        client.destroy();
      }
    },
  });

  describe('archive store on S3: faults', () => {
    it('server stopped: REWIND_ARCHIVE_UNAVAILABLE quickly, then works once it is back', async () => {
      const store = await open();
      try {
        await store.put('before', Buffer.from('x'));
        await server().stopProxy();
        const started = Date.now();
        const error = await rejectsWith(
          store.put('during', Buffer.from('y')),
          'REWIND_ARCHIVE_UNAVAILABLE',
        );
        const elapsedMs = Date.now() - started;
        assert.ok(elapsedMs < S3_ATTEMPTS_MAX * TIMEOUT_MS + 3000, `${elapsedMs} ms`);
        assert.match(error.message, new RegExp(`${store.url}: put during: .*ECONNREFUSED`));
        assert.match(error.hint ?? '', /reachable/);
        await rejectsWith(store.get('before'), 'REWIND_ARCHIVE_UNAVAILABLE');
        await rejectsWith(store.list(''), 'REWIND_ARCHIVE_UNAVAILABLE');
        await server().startProxy();
        await store.put('during', Buffer.from('y'));
        assert.equal((await store.get('before')).toString(), 'x');
        assert.deepEqual(await store.list(''), ['before', 'during']);
      } finally {
        await store.close();
      }
    });

    it('server frozen (accepts, never answers): REWIND_ARCHIVE_UNAVAILABLE within the timeout', async () => {
      const store = await open();
      try {
        await store.put('k', Buffer.from('x'));
        server().pauseProxy();
        const started = Date.now();
        const error = await rejectsWith(store.get('k'), 'REWIND_ARCHIVE_UNAVAILABLE');
        const elapsedMs = Date.now() - started;
        // Every attempt waits one timeout; the standard strategy backs off under a second between.
        assert.ok(elapsedMs >= TIMEOUT_MS, `${elapsedMs} ms`);
        assert.ok(elapsedMs < S3_ATTEMPTS_MAX * (TIMEOUT_MS + 1500), `${elapsedMs} ms`);
        assert.match(error.message, /get k/);
        server().resumeProxy();
        assert.equal((await store.get('k')).toString(), 'x');
      } finally {
        server().resumeProxy();
        await store.close();
      }
    });

    it('wrong credentials: REWIND_ARCHIVE_AUTH with a hint', async () => {
      for (const [name, value] of [
        ['AWS_SECRET_ACCESS_KEY', 'not-the-key'],
        ['AWS_ACCESS_KEY_ID', 'nobody:none'],
      ] as const) {
        const saved = process.env[name];
        process.env[name] = value;
        const store = await open();
        try {
          const error = await rejectsWith(store.put('k', Buffer.from('x')), 'REWIND_ARCHIVE_AUTH');
          assert.match(error.hint ?? '', /credentials/);
          await rejectsWith(store.get('k'), 'REWIND_ARCHIVE_AUTH');
        } finally {
          process.env[name] = saved;
          await store.close();
        }
      }
    });

    it('every probe removed its objects (this server has no lock to keep one)', async () => {
      const client = rawClient();
      try {
        const listed = await client.send(
          new ListObjectsV2Command({ Bucket: BUCKET, MaxKeys: 1000 }),
        );
        const probes = (listed.Contents ?? []).filter((o) => o.Key?.includes('.rewind-probe/'));
        assert.deepEqual(
          probes.map((o) => o.Key),
          [],
        );
      } finally {
        client.destroy();
      }
    });

    it('a bucket that does not exist: REWIND_CONFIG naming it', async () => {
      const store = await open({}, 'no-such-bucket-here');
      try {
        const error = await rejectsWith(store.get('k'), 'REWIND_CONFIG');
        assert.match(error.message, /no-such-bucket-here/);
      } finally {
        await store.close();
      }
    });
  });
}
