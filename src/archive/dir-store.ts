// The directory backend of the archive store: one file per object under a root directory, written
// once (temp file, fdatasync, hard link that fails if the key exists, fsync of the directory).
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { errorCode, rethrowIfBug, RewindError, type ErrorCode } from '../core/index.js';
import {
  checkKey,
  checkPrefix,
  checkRange,
  closedError,
  LIST_KEYS_MAX,
  PROBE_DIRECTORY,
  type ObjectStore,
  type StoreCapabilities,
} from './store.js';

/** Archived history is private data, like the data directory (0600 files, 0700 directories). */
const FILE_MODE = 0o600;
const DIR_MODE = 0o700;
/** Unlinks in flight at once during delete(). */
const DELETE_PARALLEL_MAX = 32;
/** Directories visited by one list(), a bound on the walk beside LIST_KEYS_MAX. */
const LIST_DIRECTORIES_MAX = 1_000_000;
/** Read in pieces so that a ranged read of a huge object never asks for more than this at once. */
const READ_CHUNK_BYTES = 16 * 1024 * 1024;

export class DirectoryStore implements ObjectStore {
  readonly url: string;
  private closed = false;

  private constructor(readonly root: string) {
    this.url = root;
  }

  /** Opens (creating it, private, when missing) the archive directory `dir`. */
  static async open(dir: string): Promise<DirectoryStore> {
    const root = path.resolve(dir);
    try {
      await fsp.mkdir(root, { recursive: true, mode: DIR_MODE });
      const stat = await fsp.stat(root);
      if (!stat.isDirectory()) {
        throw new RewindError('REWIND_CONFIG', `archive ${root} is not a directory`);
      }
    } catch (error) {
      rethrowIfBug(error);
      if (error instanceof RewindError) throw error;
      throw fileError(root, 'open', root, error);
    }
    return new DirectoryStore(root);
  }

  async probe(): Promise<StoreCapabilities> {
    this.checkOpen();
    // Write-once here rests on link(2) failing with EEXIST: tried, since some file systems
    // (vfat, some FUSE) have no hard links at all.
    const dir = path.join(this.root, PROBE_DIRECTORY);
    const name = crypto.randomBytes(8).toString('hex');
    const source = path.join(dir, `${name}.a`);
    const target = path.join(dir, `${name}.b`);
    let conditionalWrite = false;
    try {
      await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE });
      await fsp.writeFile(source, 'probe', { mode: FILE_MODE });
      await fsp.link(source, target);
      try {
        await fsp.link(source, target);
      } catch (error) {
        rethrowIfBug(error);
        if (errorCode(error) !== 'EEXIST') throw error;
        conditionalWrite = true;
      }
      await fsp.rm(source, { force: true });
      await fsp.rm(target, { force: true });
    } catch (error) {
      rethrowIfBug(error);
      throw fileError(this.url, 'probe', PROBE_DIRECTORY, error);
    }
    return { conditionalWrite, objectLock: false };
  }

  async put(key: string, body: Buffer): Promise<void> {
    this.checkOpen();
    checkKey(key);
    const file = this.fileOf(key);
    const dir = path.dirname(file);
    const temp = path.join(
      dir,
      `.${path.basename(file)}.tmp-${crypto.randomBytes(6).toString('hex')}`,
    );
    await this.ensureDirectory(key, dir);
    try {
      const handle = await fsp.open(temp, 'wx', FILE_MODE);
      try {
        await handle.writeFile(body);
        await handle.datasync();
      } finally {
        await handle.close();
      }
      try {
        await fsp.link(temp, file);
      } finally {
        await fsp.rm(temp, { force: true });
      }
      await fsyncDirectory(dir);
    } catch (error) {
      rethrowIfBug(error);
      if (errorCode(error) === 'EEXIST') {
        if ((await this.head(key)) === undefined) throw pathConflict(this.url, key);
        throw new RewindError('REWIND_ARCHIVE_EXISTS', `${this.url}: put ${key}: already stored`, {
          hint: 'archive objects are written once and never replaced',
        });
      }
      throw fileError(this.url, 'put', key, error);
    }
  }

  async get(key: string, range?: { offset: number; length: number }): Promise<Buffer> {
    this.checkOpen();
    checkKey(key);
    if (range !== undefined) checkRange(range);
    try {
      const handle = await fsp.open(this.fileOf(key), 'r');
      try {
        const stat = await handle.stat();
        const start = Math.min(range?.offset ?? 0, stat.size);
        const end = range === undefined ? stat.size : Math.min(stat.size, start + range.length);
        return await readFully(handle, start, end - start);
      } finally {
        await handle.close();
      }
    } catch (error) {
      rethrowIfBug(error);
      throw fileError(this.url, 'get', key, error);
    }
  }

  async head(key: string): Promise<{ size: number } | undefined> {
    this.checkOpen();
    checkKey(key);
    try {
      const stat = await fsp.stat(this.fileOf(key));
      return stat.isFile() ? { size: stat.size } : undefined;
    } catch (error) {
      rethrowIfBug(error);
      if (isMissing(error)) return undefined;
      throw fileError(this.url, 'head', key, error);
    }
  }

  async delete(keys: string[]): Promise<void> {
    this.checkOpen();
    for (const key of keys) checkKey(key);
    const dirs = new Set<string>();
    for (let first = 0; first < keys.length; first += DELETE_PARALLEL_MAX) {
      const batch = keys.slice(first, first + DELETE_PARALLEL_MAX);
      await Promise.all(batch.map(async (key) => this.unlink(key, dirs)));
    }
    for (const dir of dirs) {
      try {
        await fsyncDirectory(dir);
      } catch (error) {
        rethrowIfBug(error);
        throw fileError(this.url, 'delete', path.relative(this.root, dir), error);
      }
    }
  }

  async list(prefix: string): Promise<string[]> {
    this.checkOpen();
    checkPrefix(prefix);
    const base = prefix.slice(0, prefix.lastIndexOf('/') + 1);
    const keys: string[] = [];
    const pending = [base];
    for (let visited = 0; pending.length > 0; visited++) {
      if (visited >= LIST_DIRECTORIES_MAX) throw tooMany(this.url, prefix, 'directories');
      const relative = pending.pop() as string;
      let entries;
      try {
        entries = await fsp.readdir(path.join(this.root, relative), { withFileTypes: true });
      } catch (error) {
        rethrowIfBug(error);
        if (isMissing(error)) continue;
        throw fileError(this.url, 'list', prefix, error);
      }
      for (const entry of entries) {
        // Probe and temporary files start with '.', as no key does.
        if (entry.name.startsWith('.')) continue;
        const key = `${relative}${entry.name}`;
        if (entry.isDirectory()) {
          if (prefix.startsWith(`${key}/`) || key.startsWith(prefix)) pending.push(`${key}/`);
        } else if (entry.isFile() && key.startsWith(prefix)) {
          keys.push(key);
          if (keys.length > LIST_KEYS_MAX) throw tooMany(this.url, prefix, 'keys');
        }
      }
    }
    return keys.sort();
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private checkOpen(): void {
    if (this.closed) throw closedError(this.url);
  }

  private fileOf(key: string): string {
    return path.join(this.root, ...key.split('/'));
  }

  private async unlink(key: string, dirs: Set<string>): Promise<void> {
    const file = this.fileOf(key);
    try {
      await fsp.unlink(file);
      dirs.add(path.dirname(file));
    } catch (error) {
      rethrowIfBug(error);
      // A key that names a directory of other keys is no object either.
      if (isMissing(error) || errorCode(error) === 'EISDIR') return;
      throw fileError(this.url, 'delete', key, error);
    }
  }

  /** Creates `dir` (for `key`) and its missing parents, each made durable in its parent. */
  private async ensureDirectory(key: string, dir: string): Promise<void> {
    try {
      const first = await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE });
      if (first === undefined) return;
      // Every directory from `first` down to `dir` is new: each one's entry is in its parent.
      const created = path.relative(path.dirname(first), dir).split(path.sep);
      let parent = path.dirname(first);
      for (const name of created) {
        await fsyncDirectory(parent);
        parent = path.join(parent, name);
      }
    } catch (error) {
      rethrowIfBug(error);
      const code = errorCode(error);
      if (code === 'EEXIST' || code === 'ENOTDIR') throw pathConflict(this.url, key);
      throw fileError(this.url, 'put', key, error);
    }
  }
}

async function fsyncDirectory(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readFully(handle: fsp.FileHandle, start: number, length: number): Promise<Buffer> {
  const out = Buffer.allocUnsafe(length);
  let done = 0;
  // Each read returns at least one byte or the file shrank; the bound is the bytes wanted.
  for (let reads = 0; done < length; reads++) {
    if (reads > length) break;
    const want = Math.min(READ_CHUNK_BYTES, length - done);
    const { bytesRead } = await handle.read(out, done, want, start + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  if (done !== length) {
    throw new RewindError('REWIND_ARCHIVE_UNAVAILABLE', `read ${done} of ${length} bytes`, {
      hint: 'the file shrank while it was read: something else writes in the archive directory',
    });
  }
  return out;
}

/** On S3 'a' and 'a/b' can both be objects; in a directory one of them would be a directory. */
function pathConflict(url: string, key: string): RewindError {
  return new RewindError(
    'REWIND_BAD_ARGUMENT',
    `${url}: put ${key}: the key is a directory of other keys here, or one of its parents is an object`,
    { hint: 'in a directory archive no key may be a prefix of another key followed by "/"' },
  );
}

function isMissing(error: unknown): boolean {
  const code = errorCode(error);
  return code === 'ENOENT' || code === 'ENOTDIR';
}

function tooMany(url: string, prefix: string, what: string): RewindError {
  return new RewindError(
    'REWIND_ARCHIVE_UNAVAILABLE',
    `${url}: list ${prefix}: more ${what} than the ${what === 'keys' ? LIST_KEYS_MAX : LIST_DIRECTORIES_MAX} a listing holds`,
  );
}

/** A file system error as the store's: missing, permission, or (disk full, EIO) unavailable. */
function fileError(url: string, step: string, key: string, error: unknown): RewindError {
  if (error instanceof RewindError) return error;
  const code = errorCode(error) ?? 'error';
  const cause = error instanceof Error ? error.message : String(error);
  const [rewindCode, hint]: [ErrorCode, string] =
    isMissing(error) || code === 'EISDIR'
      ? ['REWIND_ARCHIVE_NOT_FOUND', 'no object is stored under this key']
      : code === 'EACCES' || code === 'EPERM'
        ? [
            'REWIND_ARCHIVE_AUTH',
            `the archive directory must be writable by the user running Rewind`,
          ]
        : [
            'REWIND_ARCHIVE_UNAVAILABLE',
            "check the archive directory's file system (space, errors, mount); archiving retries",
          ];
  return new RewindError(rewindCode, `${url}: ${step} ${key}: ${cause}`, { hint, cause: error });
}
