// The S3 backend of the archive store (AWS SDK for JavaScript v3): objects under
// s3://BUCKET/PREFIX, the probe of conditional writes and object lock, and the mapping of S3
// failures to the store's codes.
import crypto from 'node:crypto';
import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { errorMessage, rethrowIfBug, RewindError, type ErrorCode } from '../core/index.js';
import {
  checkKey,
  checkPrefix,
  checkRange,
  closedError,
  isValidKey,
  LIST_KEYS_MAX,
  PROBE_DIRECTORY,
  type ObjectStore,
  type StoreCapabilities,
} from './store.js';

/** Attempts per request, first one included (the SDK's standard strategy: backoff, quota). */
export const S3_ATTEMPTS_MAX = 3;
/** S3's own limit on keys per DeleteObjects request. */
export const DELETE_BATCH_KEYS_MAX = 1000;
/** Keys per ListObjectsV2 page (S3's maximum). */
const LIST_PAGE_KEYS = 1000;
/** How long the object-lock probe locks its object (GOVERNANCE, removed at once when allowed). */
const PROBE_LOCK_MS = 60_000;

export interface S3Location {
  bucket: string;
  /** '' or ending in '/': what every key is stored under. */
  prefix: string;
}

export interface S3StoreConfig {
  endpoint: string | undefined;
  pathStyle: boolean;
  region: string | undefined;
  timeoutMs: number;
}

export class S3Store implements ObjectStore {
  readonly url: string;
  private readonly client: S3Client;
  private capabilities: Promise<StoreCapabilities> | undefined;
  private closed = false;

  private constructor(
    private readonly location: S3Location,
    config: S3StoreConfig,
  ) {
    this.url = `s3://${location.bucket}/${location.prefix.replace(/\/$/, '')}`;
    const clientConfig: S3ClientConfig = {
      forcePathStyle: config.pathStyle,
      // Default checksums send stream bodies aws-chunked with a trailing CRC32, which
      // S3-compatible servers (Swift's s3api) refuse; Content-MD5 is sent instead (put, delete).
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: S3_ATTEMPTS_MAX,
      retryMode: 'standard',
      // Idle time, not total: a large upload that keeps moving is not cut off.
      requestHandler: { connectionTimeout: config.timeoutMs, socketTimeout: config.timeoutMs },
      ...(config.endpoint === undefined ? {} : { endpoint: config.endpoint }),
      ...(config.region === undefined ? {} : { region: config.region }),
    };
    this.client = new S3Client(clientConfig);
    this.client.middlewareStack.add(
      (next, context) => async (args) => {
        if (context.commandName === 'DeleteObjectsCommand') addContentMd5(args.request);
        return next(args);
      },
      { step: 'build', name: 'rewindDeleteObjectsContentMd5' },
    );
  }

  /** A client for `location`; no request is made until the first operation (or probe). */
  static open(location: S3Location, config: S3StoreConfig): S3Store {
    return new S3Store(location, config);
  }

  async probe(): Promise<StoreCapabilities> {
    this.checkOpen();
    const probing = this.probeServer();
    this.capabilities = probing;
    try {
      return await probing;
    } catch (error) {
      rethrowIfBug(error);
      // A later put probes again rather than keep a failure.
      if (this.capabilities === probing) this.capabilities = undefined;
      throw error;
    }
  }

  async put(key: string, body: Buffer): Promise<void> {
    this.checkOpen();
    checkKey(key);
    const { conditionalWrite } = await (this.capabilities ?? this.probe());
    const command = this.putCommand(this.location.prefix + key, body, conditionalWrite);
    await this.call('put', key, () => this.client.send(command));
  }

  async get(key: string, range?: { offset: number; length: number }): Promise<Buffer> {
    this.checkOpen();
    checkKey(key);
    if (range !== undefined) checkRange(range);
    if (range?.length === 0) {
      // "bytes=N-(N-1)" is no range at all to S3 (the whole object would come back).
      if ((await this.head(key)) === undefined) throw notFound(this.url, key);
      return Buffer.alloc(0);
    }
    const Range =
      range === undefined ? undefined : `bytes=${range.offset}-${range.offset + range.length - 1}`;
    const command = new GetObjectCommand({
      Bucket: this.location.bucket,
      Key: this.location.prefix + key,
      ...(Range === undefined ? {} : { Range }),
    });
    let output;
    try {
      output = await this.client.send(command);
    } catch (error) {
      rethrowIfBug(error);
      // 416: the range starts at or past the end of an object that exists.
      if (range !== undefined && statusOf(error) === 416) return Buffer.alloc(0);
      throw s3Error(this.url, 'get', key, error);
    }
    let bytes: Uint8Array;
    try {
      bytes = (await output.Body?.transformToByteArray()) ?? new Uint8Array(0);
    } catch (error) {
      rethrowIfBug(error);
      throw s3Error(this.url, 'get', key, error);
    }
    let body = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    if (output.ContentLength !== undefined && output.ContentLength !== body.length) {
      throw s3Error(
        this.url,
        'get',
        key,
        new Error(`${body.length} bytes received of ${output.ContentLength}`),
      );
    }
    // A server that ignored the Range header sent the whole object.
    if (range !== undefined && output.ContentRange === undefined) {
      body = body.subarray(range.offset, range.offset + range.length);
    }
    return body;
  }

  async head(key: string): Promise<{ size: number } | undefined> {
    this.checkOpen();
    checkKey(key);
    const command = new HeadObjectCommand({
      Bucket: this.location.bucket,
      Key: this.location.prefix + key,
    });
    try {
      const output = await this.client.send(command);
      return { size: output.ContentLength ?? 0 };
    } catch (error) {
      rethrowIfBug(error);
      if (statusOf(error) === 404 && nameOf(error) !== 'NoSuchBucket') return undefined;
      throw s3Error(this.url, 'head', key, error);
    }
  }

  async delete(keys: string[]): Promise<void> {
    this.checkOpen();
    for (const key of keys) checkKey(key);
    const unique = [...new Set(keys)];
    for (let first = 0; first < unique.length; first += DELETE_BATCH_KEYS_MAX) {
      const batch = unique.slice(first, first + DELETE_BATCH_KEYS_MAX);
      const command = new DeleteObjectsCommand({
        Bucket: this.location.bucket,
        Delete: { Objects: batch.map((key) => ({ Key: this.location.prefix + key })), Quiet: true },
      });
      const named = batch.length > 1 ? `${batch[0]} and ${batch.length - 1} more` : `${batch[0]}`;
      const output = await this.call('delete', named, () => this.client.send(command));
      const failed = (output.Errors ?? []).filter((e) => e.Code !== 'NoSuchKey');
      const firstFailed = failed[0];
      if (firstFailed !== undefined) {
        const key = (firstFailed.Key ?? '').slice(this.location.prefix.length);
        const cause = Object.assign(new Error(firstFailed.Message ?? 'refused'), {
          name: firstFailed.Code ?? 'Error',
          $metadata: { httpStatusCode: firstFailed.Code === 'AccessDenied' ? 403 : 500 },
        });
        const error = s3Error(
          this.url,
          `delete (${failed.length} of ${batch.length} keys)`,
          key,
          cause,
        );
        throw error;
      }
    }
  }

  async list(prefix: string): Promise<string[]> {
    this.checkOpen();
    checkPrefix(prefix);
    const keys: string[] = [];
    let token: string | undefined;
    for (let pages = 0; pages === 0 || token !== undefined; pages++) {
      if (pages * LIST_PAGE_KEYS > LIST_KEYS_MAX) {
        throw new RewindError(
          'REWIND_ARCHIVE_UNAVAILABLE',
          `${this.url}: list ${prefix}: more than the ${LIST_KEYS_MAX} keys a listing holds`,
        );
      }
      const command = new ListObjectsV2Command({
        Bucket: this.location.bucket,
        Prefix: this.location.prefix + prefix,
        MaxKeys: LIST_PAGE_KEYS,
        ...(token === undefined ? {} : { ContinuationToken: token }),
      });
      const output = await this.call('list', prefix, () => this.client.send(command));
      for (const entry of output.Contents ?? []) {
        const key = (entry.Key ?? '').slice(this.location.prefix.length);
        // Probe objects and anything else that is not a store key are not the store's.
        if (isValidKey(key)) keys.push(key);
      }
      token = output.IsTruncated === true ? output.NextContinuationToken : undefined;
    }
    return keys.sort();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.client.destroy();
  }

  private checkOpen(): void {
    if (this.closed) throw closedError(this.url);
  }

  private putCommand(fullKey: string, body: Buffer, ifNoneMatch: boolean): PutObjectCommand {
    return new PutObjectCommand({
      Bucket: this.location.bucket,
      Key: fullKey,
      Body: body,
      ContentLength: body.length,
      // The server checks it: bytes damaged on the way are refused, not stored.
      ContentMD5: md5Base64(body),
      ...(ifNoneMatch ? { IfNoneMatch: '*' } : {}),
    });
  }

  /** Runs one request; its failure becomes the store's error naming `step` and `key`. */
  private async call<T>(step: string, key: string, request: () => Promise<T>): Promise<T> {
    try {
      return await request();
    } catch (error) {
      rethrowIfBug(error);
      throw s3Error(this.url, step, key, error);
    }
  }

  /** Tries both capabilities on probe objects, then removes them. */
  private async probeServer(): Promise<StoreCapabilities> {
    const name = `${this.location.prefix}${PROBE_DIRECTORY}/${crypto.randomBytes(8).toString('hex')}`;
    const body = Buffer.from('rewind probe');
    const bucket = this.location.bucket;
    const first = this.putCommand(name, body, false);
    await this.call('probe put', name, () => this.client.send(first));
    let conditionalWrite: boolean;
    try {
      await this.client.send(this.putCommand(name, body, true));
      conditionalWrite = false; // the header was ignored: the object was replaced
    } catch (error) {
      rethrowIfBug(error);
      const status = statusOf(error);
      if (status === 412) conditionalWrite = true;
      else if (status === 501 || status === 400) conditionalWrite = false;
      else throw s3Error(this.url, 'probe conditional put', name, error);
    }
    const objectLock = await this.probeObjectLock(`${name}-lock`, body);
    const remove = new DeleteObjectCommand({ Bucket: bucket, Key: name });
    await this.call('probe delete', name, () => this.client.send(remove));
    return { conditionalWrite, objectLock };
  }

  /**
   * Object lock is enforced when a delete of a locked version is refused. Accepting the lock
   * headers proves nothing (some servers accept and ignore them), so the delete is tried.
   */
  private async probeObjectLock(name: string, body: Buffer): Promise<boolean> {
    const bucket = this.location.bucket;
    let versionId: string | undefined;
    try {
      const output = await this.client.send(
        new PutObjectCommand({
          Bucket: bucket,
          Key: name,
          Body: body,
          ContentMD5: md5Base64(body),
          ObjectLockMode: 'GOVERNANCE',
          ObjectLockRetainUntilDate: new Date(Date.now() + PROBE_LOCK_MS),
        }),
      );
      versionId = output.VersionId;
    } catch (error) {
      rethrowIfBug(error);
      const status = statusOf(error);
      // 400 InvalidRequest: the bucket has no object lock configuration; 501: not implemented.
      if (status === 400 || status === 501) return false;
      throw s3Error(this.url, 'probe object lock', name, error);
    }
    // Without a version there is nothing a lock could hold: a plain delete removes the object.
    if (versionId === undefined || versionId === 'null') {
      const remove = new DeleteObjectCommand({ Bucket: bucket, Key: name });
      await this.call('probe delete', name, () => this.client.send(remove));
      return false;
    }
    try {
      await this.client.send(
        new DeleteObjectCommand({ Bucket: bucket, Key: name, VersionId: versionId }),
      );
      return false;
    } catch (error) {
      rethrowIfBug(error);
      if (statusOf(error) !== 403) throw s3Error(this.url, 'probe object lock', name, error);
    }
    try {
      await this.client.send(
        new DeleteObjectCommand({
          Bucket: bucket,
          Key: name,
          VersionId: versionId,
          BypassGovernanceRetention: true,
        }),
      );
    } catch (error) {
      rethrowIfBug(error);
      // Without s3:BypassGovernanceRetention the probe version stays (12 bytes; its retention
      // ends within PROBE_LOCK_MS). It is not a failure of the probe.
      if (statusOf(error) !== 403) throw s3Error(this.url, 'probe object lock', name, error);
    }
    return true;
  }
}

function md5Base64(data: Uint8Array | string): string {
  return crypto.createHash('md5').update(data).digest('base64');
}

/** s3api (Swift 2.30) wants Content-MD5 on DeleteObjects; recent SDKs send a CRC32 instead. */
function addContentMd5(request: unknown): void {
  const http = request as { headers?: Record<string, string>; body?: unknown };
  if (http.headers === undefined) return;
  if (typeof http.body === 'string' || http.body instanceof Uint8Array) {
    http.headers['content-md5'] = md5Base64(http.body);
  }
}

function statusOf(error: unknown): number | undefined {
  const metadata = (error as { $metadata?: { httpStatusCode?: unknown } }).$metadata;
  const status = metadata?.httpStatusCode;
  return typeof status === 'number' ? status : undefined;
}

function nameOf(error: unknown): string {
  const name = (error as { name?: unknown }).name;
  return typeof name === 'string' ? name : 'Error';
}

function notFound(url: string, key: string): RewindError {
  return new RewindError('REWIND_ARCHIVE_NOT_FOUND', `${url}: get ${key}: no such object`, {
    hint: 'no object is stored under this key',
  });
}

const AUTH_ERRORS = new Set([
  'AccessDenied',
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'ExpiredToken',
  'InvalidToken',
  'TokenRefreshRequired',
  'CredentialsProviderError',
  'AuthorizationHeaderMalformed',
]);
const TRANSIENT_ERRORS = new Set([
  'SlowDown',
  'RequestTimeout',
  'RequestTimeTooSkewed',
  'BadDigest',
  'IncompleteBody',
  'TimeoutError',
  'AbortError',
  'ConditionalRequestConflict',
]);

/** The store's code for an S3 failure, with a hint for the operator. */
function classify(error: unknown): [ErrorCode, string] {
  const status = statusOf(error);
  const name = nameOf(error);
  const message = errorMessage(error);
  if (name === 'NoSuchBucket') {
    return ['REWIND_CONFIG', 'the bucket does not exist: create it, or fix --archive s3://BUCKET'];
  }
  if (/region is missing/i.test(message)) {
    return ['REWIND_CONFIG', 'set AWS_REGION or region in ~/.aws/config'];
  }
  if (status === 404 || name === 'NoSuchKey' || name === 'NotFound') {
    return ['REWIND_ARCHIVE_NOT_FOUND', 'no object is stored under this key'];
  }
  if (status === 412 || name === 'PreconditionFailed') {
    return ['REWIND_ARCHIVE_EXISTS', 'archive objects are written once and never replaced'];
  }
  if (status === 403 || AUTH_ERRORS.has(name) || status === 401) {
    return [
      'REWIND_ARCHIVE_AUTH',
      'check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ' +
        '~/.aws/credentials), the region and the permissions on the bucket',
    ];
  }
  if (status === undefined || status >= 500 || status === 429 || TRANSIENT_ERRORS.has(name)) {
    return [
      'REWIND_ARCHIVE_UNAVAILABLE',
      'check that the S3 endpoint is reachable and healthy (--s3-endpoint, AWS_ENDPOINT_URL); ' +
        'archiving retries',
    ];
  }
  return [
    'REWIND_CONFIG',
    'the server refused the request and will again: check the endpoint, the region and the bucket',
  ];
}

/** An S3 failure as the store's error, naming the store, the step, the key and the cause. */
export function s3Error(url: string, step: string, key: string, error: unknown): RewindError {
  if (error instanceof RewindError) return error;
  const [code, hint] = classify(error);
  const status = statusOf(error);
  const errno = (error as { code?: unknown }).code;
  const what = [
    nameOf(error),
    typeof errno === 'string' ? errno : undefined,
    status && `HTTP ${status}`,
  ]
    .filter((part) => part !== undefined && part !== 'Error')
    .join(', ');
  const cause = `${what === '' ? '' : `${what}: `}${errorMessage(error) || 'no message'}`;
  return new RewindError(code, `${url}: ${step} ${key}: ${cause}`, { hint, cause: error });
}
