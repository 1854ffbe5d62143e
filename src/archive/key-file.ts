// The archive's key file: 32 raw bytes or 64 hex digits, readable by its owner only. Every way it
// can be wrong is a REWIND_ARCHIVE_KEY naming the file, since archiving must stop, not go plain.
import fsp from 'node:fs/promises';
import { errorCode, rethrowIfBug, RewindError } from '../core/index.js';
import { ARCHIVE_KEY_BYTES } from './codec.js';

/** A key file is tiny; anything longer is not one (and is not read whole). */
const KEY_FILE_BYTES_MAX = 4096;
const HEX_KEY = /^[0-9a-fA-F]{64}$/;

function keyError(file: string, detail: string, hint: string, cause?: unknown): RewindError {
  return new RewindError('REWIND_ARCHIVE_KEY', `archive key file ${file}: ${detail}`, {
    hint,
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * Reads the archive key from `file`: exactly 32 raw bytes, or 64 hex digits (surrounding
 * whitespace allowed). Refuses a file group or others may read or write, and an all-zero key.
 */
export async function loadArchiveKey(file: string): Promise<Buffer> {
  let data: Buffer;
  try {
    const handle = await fsp.open(file, 'r');
    try {
      const stat = await handle.stat();
      if (!stat.isFile()) {
        throw keyError(file, 'not a regular file', 'give the path of a file holding the key');
      }
      if ((stat.mode & 0o077) !== 0) {
        throw keyError(
          file,
          `mode ${(stat.mode & 0o777).toString(8).padStart(4, '0')} lets group or others at it`,
          `chmod 600 ${file}`,
        );
      }
      if (stat.size > KEY_FILE_BYTES_MAX) {
        throw keyError(file, `${stat.size} bytes is not a key`, keyFormatHint());
      }
      data = await handle.readFile();
    } finally {
      await handle.close();
    }
  } catch (error) {
    rethrowIfBug(error);
    if (error instanceof RewindError) throw error;
    const code = errorCode(error);
    const detail = code === 'ENOENT' ? 'does not exist' : `cannot be read (${code ?? 'error'})`;
    throw keyError(file, detail, keyFormatHint(), error);
  }
  return parseArchiveKey(data, file);
}

/** The key in a key file's bytes (see loadArchiveKey); `file` names it in errors. */
export function parseArchiveKey(data: Buffer, file: string): Buffer {
  let key: Buffer;
  if (data.length === ARCHIVE_KEY_BYTES) {
    key = Buffer.from(data);
  } else {
    const text = data.toString('latin1').trim();
    if (!HEX_KEY.test(text)) {
      throw keyError(
        file,
        `${data.length} bytes, neither 32 raw bytes nor 64 hex digits`,
        keyFormatHint(),
      );
    }
    key = Buffer.from(text, 'hex');
  }
  if (key.every((byte) => byte === 0)) {
    throw keyError(file, 'the key is all zeroes', keyFormatHint());
  }
  return key;
}

function keyFormatHint(): string {
  return 'make one with: (umask 077; openssl rand -hex 32 > FILE)';
}
