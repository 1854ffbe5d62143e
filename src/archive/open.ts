// openStore: an archive URL (a directory, file://, or s3://BUCKET/PREFIX) and its options, checked
// at the edge, as the backend that serves it; `requireObjectLock` probed before anything is kept.
import { fileURLToPath } from 'node:url';
import { rethrowIfBug, RewindError } from '../core/index.js';
import { DirectoryStore } from './dir-store.js';
import { S3Store, type S3Location } from './s3-store.js';
import {
  checkPrefix,
  STORE_TIMEOUT_MS_DEFAULT,
  type ObjectStore,
  type StoreOptions,
} from './store.js';

/** S3's bucket names (3-63 of lowercase letters, digits, '.', '-'). */
const BUCKET_PATTERN = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;

/**
 * The store behind `url`: a directory path or `file://` URL (the directory backend), or
 * `s3://BUCKET/PREFIX` (S3; credentials from the SDK's default chain, the endpoint from the
 * option or AWS_ENDPOINT_URL, path style from the option or REWIND_S3_PATH_STYLE=1). Opening
 * makes no request unless `requireObjectLock` asks for a probe.
 */
export async function openStore(url: string, options: StoreOptions = {}): Promise<ObjectStore> {
  const timeoutMs = options.timeoutMs ?? STORE_TIMEOUT_MS_DEFAULT;
  if (!Number.isSafeInteger(timeoutMs) || timeoutMs <= 0) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `archive timeout ${timeoutMs} ms is not > 0`);
  }
  let store: ObjectStore;
  if (url.startsWith('s3://')) {
    store = S3Store.open(parseS3Url(url), {
      endpoint: s3Endpoint(options),
      pathStyle: options.s3PathStyle ?? process.env.REWIND_S3_PATH_STYLE === '1',
      region: options.region,
      timeoutMs,
    });
  } else if (url.startsWith('file://')) {
    store = await DirectoryStore.open(fileUrlPath(url));
  } else if (/^[a-z][a-z0-9+.-]*:\/\//i.test(url) || url === '') {
    throw new RewindError('REWIND_BAD_ARGUMENT', `archive ${JSON.stringify(url)} is not known`, {
      hint: 'give a directory, file:///PATH or s3://BUCKET/PREFIX',
    });
  } else {
    store = await DirectoryStore.open(url);
  }
  if (options.requireObjectLock === true) await requireObjectLock(store);
  return store;
}

async function requireObjectLock(store: ObjectStore): Promise<void> {
  let enforced: boolean;
  try {
    enforced = (await store.probe()).objectLock;
  } catch (error) {
    rethrowIfBug(error);
    await store.close();
    throw error;
  }
  if (enforced) return;
  await store.close();
  throw new RewindError(
    'REWIND_CONFIG',
    `archive ${store.url} does not enforce object lock (a delete of a locked version succeeded ` +
      'or the lock was not accepted), and it is required',
    {
      hint:
        'use a bucket created with object lock enabled and a default retention, on a server ' +
        'that enforces it, or drop the requirement',
    },
  );
}

export function parseS3Url(url: string): S3Location {
  const rest = url.slice('s3://'.length);
  const slash = rest.indexOf('/');
  const bucket = slash < 0 ? rest : rest.slice(0, slash);
  const path = slash < 0 ? '' : rest.slice(slash + 1).replace(/\/+$/, '');
  if (!BUCKET_PATTERN.test(bucket)) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `archive ${url}: bucket name ${JSON.stringify(bucket)} is not valid`,
      {
        hint: 'S3 bucket names are 3-63 lowercase letters, digits, "." and "-"',
      },
    );
  }
  if (path !== '') {
    checkPrefix(`${path}/`);
  }
  return { bucket, prefix: path === '' ? '' : `${path}/` };
}

function s3Endpoint(options: StoreOptions): string | undefined {
  const endpoint = options.s3Endpoint ?? (process.env.AWS_ENDPOINT_URL || undefined);
  if (endpoint === undefined) return undefined;
  if (!URL.canParse(endpoint) || !/^https?:$/.test(new URL(endpoint).protocol)) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `S3 endpoint ${JSON.stringify(endpoint)} is not an http(s) URL`,
      {
        hint: 'e.g. --s3-endpoint http://127.0.0.1:9000',
      },
    );
  }
  return endpoint;
}

function fileUrlPath(url: string): string {
  // Checked first: fileURLToPath throws a TypeError (a programmer error here) on a host or an
  // encoded '/'.
  const parsed = URL.canParse(url) ? new URL(url) : undefined;
  if (parsed === undefined || parsed.host !== '' || /%2f/i.test(parsed.pathname)) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `archive ${url} is not a file:// URL of a path`, {
      hint: 'e.g. file:///var/lib/rewind-archive',
    });
  }
  return fileURLToPath(parsed);
}
