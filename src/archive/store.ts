// The archive's object store: the narrow interface every backend implements (directory, S3), the
// grammar of its keys, and the options a store is opened with.
import { RewindError } from '../core/index.js';

/** What a store's server really does, found by trying (`ObjectStore.probe`), never assumed. */
export interface StoreCapabilities {
  /** A put of an existing key is refused (S3 `If-None-Match: *`; a directory's hard link). */
  conditionalWrite: boolean;
  /** A locked object version cannot be deleted (S3 Object Lock, enforced). */
  objectLock: boolean;
}

/**
 * Objects written once under `/`-separated keys. Every method throws RewindErrors:
 * REWIND_ARCHIVE_NOT_FOUND, REWIND_ARCHIVE_EXISTS, REWIND_ARCHIVE_UNAVAILABLE (network, 5xx,
 * timeouts, a failing disk: try again later), REWIND_ARCHIVE_AUTH (credentials, permissions),
 * REWIND_CONFIG (a store that cannot work as configured: no bucket, no region, a refusal that
 * retrying will not change), REWIND_BAD_ARGUMENT (a key outside the grammar, see `checkKey`) and
 * REWIND_SHUTDOWN (used after close).
 */
export interface ObjectStore {
  /** For messages, e.g. 's3://bucket/prefix' or the directory path. */
  readonly url: string;
  /**
   * Probes what the server supports by trying it (a second PUT with If-None-Match on a probe key;
   * a delete of a locked version), with objects under a `.rewind-probe/` name that no key can
   * take. Never assumes. The S3 backend probes once by itself before its first put.
   */
  probe(): Promise<StoreCapabilities>;
  /**
   * Writes an object once. If it exists: with conditionalWrite, refuses with
   * REWIND_ARCHIVE_EXISTS; the directory backend always refuses. Without conditionalWrite an S3
   * put of an existing key replaces it (callers name objects so that a second put holds the same
   * bytes). Durable when the promise resolves (dir: temp file, fdatasync, hard link, fsync of the
   * directory). A put that failed may still have stored the object.
   */
  put(key: string, body: Buffer): Promise<void>;
  /**
   * The whole object or a byte range of it; a missing key throws REWIND_ARCHIVE_NOT_FOUND. A
   * range is clipped to the object: one that starts at or past its end gives an empty Buffer.
   */
  get(key: string, range?: { offset: number; length: number }): Promise<Buffer>;
  /** The object's size, or undefined when there is none under the key. */
  head(key: string): Promise<{ size: number } | undefined>;
  /** Deletes keys (S3: DeleteObjects, up to 1000 per request); missing keys are not an error. */
  delete(keys: string[]): Promise<void>;
  /**
   * Every key under a prefix (a plain string prefix, not only whole segments), sorted; used only
   * by rebuild and verify, never in steady running (LIST is what costs on S3).
   */
  list(prefix: string): Promise<string[]>;
  /** Releases connections; every later call throws REWIND_SHUTDOWN. */
  close(): Promise<void>;
}

export interface StoreOptions {
  /** S3 endpoint URL for S3-compatible servers (else `AWS_ENDPOINT_URL`, else AWS's). */
  s3Endpoint?: string;
  /** Path-style bucket addressing (else `REWIND_S3_PATH_STYLE=1`). */
  s3PathStyle?: boolean;
  /** S3 region (else the SDK's chain: `AWS_REGION`, the AWS config file). */
  region?: string;
  /** Refuse to open unless the server enforces object lock (probed). */
  requireObjectLock?: boolean;
  /** S3: per request, to connect and then without a byte moving (STORE_TIMEOUT_MS_DEFAULT). */
  timeoutMs?: number;
}

/** A request that stalls this long is given up (and retried by the SDK's retry strategy). */
export const STORE_TIMEOUT_MS_DEFAULT = 30_000;
/** S3's own limit on key length (bytes; keys here are ASCII). */
export const KEY_BYTES_MAX = 1024;
/** list() returns at most this many keys: an archive's rebuild lists far fewer. */
export const LIST_KEYS_MAX = 10_000_000;
/** Keys, and the directory names probe and temporary files live under (`.` first). */
export const PROBE_DIRECTORY = '.rewind-probe';

/** Segments start with a letter, digit, `_` or `-` (never `.`: no `.`/`..`, room for temps). */
const SEGMENT = '[A-Za-z0-9_-][A-Za-z0-9._-]*';
const KEY_PATTERN = new RegExp(`^${SEGMENT}(/${SEGMENT})*$`);
const PREFIX_PATTERN = new RegExp(`^(${SEGMENT}/)*(${SEGMENT})?$`);

/**
 * A segment is a file or directory name in the directory backend: NAME_MAX is 255 there, and a
 * temporary file adds 19 characters to the name.
 */
export const SEGMENT_BYTES_MAX = 200;

function segmentsFit(key: string): boolean {
  return key.split('/').every((segment) => segment.length <= SEGMENT_BYTES_MAX);
}

export function isValidKey(key: string): boolean {
  return key.length <= KEY_BYTES_MAX && KEY_PATTERN.test(key) && segmentsFit(key);
}

/**
 * Refuses a key outside the grammar: `/`-separated segments of `[A-Za-z0-9._-]`, none empty and
 * none starting with `.`, each at most SEGMENT_BYTES_MAX and all at most KEY_BYTES_MAX bytes.
 */
export function checkKey(key: string): void {
  if (typeof key === 'string' && isValidKey(key)) return;
  throw new RewindError('REWIND_BAD_ARGUMENT', `archive key ${JSON.stringify(key)} is not valid`, {
    hint: `/-separated segments of [A-Za-z0-9._-], none empty, starting with "." or over ${SEGMENT_BYTES_MAX} bytes`,
  });
}

/** A list() prefix: whole segments, then possibly the start of one (or nothing). */
export function checkPrefix(prefix: string): void {
  const valid =
    typeof prefix === 'string' &&
    prefix.length <= KEY_BYTES_MAX &&
    PREFIX_PATTERN.test(prefix) &&
    segmentsFit(prefix);
  if (valid) return;
  throw new RewindError(
    'REWIND_BAD_ARGUMENT',
    `archive prefix ${JSON.stringify(prefix)} is not valid`,
    { hint: 'a prefix is the start of a key: [A-Za-z0-9._/-], no empty or "."-led segment' },
  );
}

/** A range for get(), checked at the edge. */
export function checkRange(range: { offset: number; length: number }): void {
  const ok = (n: number): boolean => Number.isSafeInteger(n) && n >= 0;
  if (ok(range.offset) && ok(range.length)) return;
  throw new RewindError(
    'REWIND_BAD_ARGUMENT',
    `archive range offset ${range.offset} length ${range.length} is not two integers >= 0`,
  );
}

export function closedError(url: string): RewindError {
  return new RewindError('REWIND_SHUTDOWN', `archive store ${url} is closed`);
}
