// The archive object format: a versioned 96-byte header, a zstd-compressed payload and, with a
// key, AES-256-GCM over it. Pure (no I/O); docs/FORMATS.md "Archive objects" has it byte by byte.
import crypto from 'node:crypto';
import { compress, decompress } from 'zstd-napi';
import zstdBinding from 'zstd-napi/binding.js';
import { assert, crc32c, rethrowIfBug, RewindError } from '../core/index.js';

export const OBJECT_MAGIC = 'RWAO';
export const OBJECT_VERSION = 1;
export const OBJECT_HEADER_BYTES = 96;
/** AES-GCM's tag, after the payload of an encrypted object. */
export const OBJECT_TAG_BYTES = 16;
export const OBJECT_NONCE_BYTES = 12;
export const ARCHIVE_KEY_BYTES = 32;
/**
 * The largest object: redo and undo segments and 4 MiB chunks are far below it, and decode
 * allocates the plain length the header names, so a forged header cannot ask for more.
 */
export const OBJECT_PLAIN_BYTES_MAX = 2 ** 30;
export const ZSTD_LEVEL_DEFAULT = 3;
/** zstd's levels 1..19 (20..22 need far more memory to decompress; negative ones barely pack). */
export const ZSTD_LEVEL_MIN = 1;
export const ZSTD_LEVEL_MAX = 19;

export const FLAG_COMPRESSED = 1;
export const FLAG_ENCRYPTED = 2;
const FLAGS_KNOWN = FLAG_COMPRESSED | FLAG_ENCRYPTED;

/** Field offsets of the header (docs/FORMATS.md). */
const AT = {
  magic: 0,
  version: 4,
  headerBytes: 6,
  flags: 8,
  payloadCrc: 12,
  plainBytes: 16,
  payloadBytes: 24,
  digest: 32,
  nonce: 64,
  keyId: 76,
  reserved: 84,
  headerCrc: 92,
} as const;
const DIGEST_BYTES = 32;
const KEY_ID_BYTES = 8;
const RESERVED_BYTES = 8;

export interface EncodeOptions {
  /** 32 bytes: the object is encrypted (always, when given). Not changed after first use. */
  key?: Buffer;
  /** zstd level, ZSTD_LEVEL_MIN..ZSTD_LEVEL_MAX; ZSTD_LEVEL_DEFAULT when not given. */
  level?: number;
}

export interface DecodeOptions {
  /** The archive's key: needed for encrypted objects. */
  key?: Buffer;
  /** The object's name for error messages (its key in the store). */
  name: string;
  /**
   * With a key configured, an object stored without encryption is refused (anyone who can write
   * to the bucket could plant one) unless this is set, e.g. for objects archived before the key.
   */
  allowUnencrypted?: boolean;
}

/** What a header says, once its own checks passed. */
export interface ObjectHeader {
  version: number;
  compressed: boolean;
  encrypted: boolean;
  payloadCrc: number;
  plainBytes: number;
  payloadBytes: number;
  /** SHA-256 of the plain bytes; HMAC-SHA-256 with the key's digest key when encrypted. */
  digest: Buffer;
  nonce: Buffer;
  keyId: Buffer;
}

/** The keys used for one archive key, derived once (HKDF-SHA-256, one `info` per use). */
interface DerivedKeys {
  cipher: Buffer;
  digest: Buffer;
  id: Buffer;
}
const derived = new WeakMap<Buffer, DerivedKeys>();

function deriveKeys(key: Buffer): DerivedKeys {
  const known = derived.get(key);
  if (known !== undefined) return known;
  if (key.length !== ARCHIVE_KEY_BYTES) {
    throw new RewindError(
      'REWIND_ARCHIVE_KEY',
      `the archive key has ${key.length} bytes, not ${ARCHIVE_KEY_BYTES}`,
      { hint: 'a key file holds 32 raw bytes or 64 hex digits' },
    );
  }
  const hkdf = (info: string, bytes: number): Buffer =>
    Buffer.from(crypto.hkdfSync('sha256', key, Buffer.alloc(0), `rewind archive ${info}`, bytes));
  const keys = {
    cipher: hkdf('v1 aes-256-gcm', 32),
    digest: hkdf('v1 digest', 32),
    id: hkdf('v1 key id', KEY_ID_BYTES),
  };
  derived.set(key, keys);
  return keys;
}

/** The key's id as stored in the headers of objects it encrypted (hex, for messages). */
export function archiveKeyId(key: Buffer): string {
  return deriveKeys(key).id.toString('hex');
}

function plainDigest(plain: Buffer, keys: DerivedKeys | undefined): Buffer {
  if (keys === undefined) return crypto.createHash('sha256').update(plain).digest();
  return crypto.createHmac('sha256', keys.digest).update(plain).digest();
}

/**
 * Encodes `plain` as a stored object: compressed with zstd unless that does not shrink it, and
 * encrypted whenever a key is given (never plaintext then).
 */
export function encodeObject(plain: Buffer, opts: EncodeOptions = {}): Buffer {
  const level = opts.level ?? ZSTD_LEVEL_DEFAULT;
  if (!Number.isInteger(level) || level < ZSTD_LEVEL_MIN || level > ZSTD_LEVEL_MAX) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `zstd level ${level} is not an integer in ${ZSTD_LEVEL_MIN}..${ZSTD_LEVEL_MAX}`,
    );
  }
  if (plain.length > OBJECT_PLAIN_BYTES_MAX) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `an archive object holds at most ${OBJECT_PLAIN_BYTES_MAX} bytes, not ${plain.length}`,
    );
  }
  const keys = opts.key === undefined ? undefined : deriveKeys(opts.key);
  const packed = compress(plain, { compressionLevel: level });
  const compressed = packed.length < plain.length;
  const body = compressed ? packed : plain;

  const header = Buffer.alloc(OBJECT_HEADER_BYTES);
  header.write(OBJECT_MAGIC, AT.magic, 'latin1');
  header.writeUInt16LE(OBJECT_VERSION, AT.version);
  header.writeUInt16LE(OBJECT_HEADER_BYTES, AT.headerBytes);
  header.writeUInt32LE((compressed ? FLAG_COMPRESSED : 0) | (keys ? FLAG_ENCRYPTED : 0), AT.flags);
  header.writeBigUInt64LE(BigInt(plain.length), AT.plainBytes);
  header.writeBigUInt64LE(BigInt(body.length), AT.payloadBytes);
  plainDigest(plain, keys).copy(header, AT.digest);

  let stored: Buffer;
  if (keys === undefined) {
    stored = Buffer.concat([header, body]);
  } else {
    const nonce = crypto.randomBytes(OBJECT_NONCE_BYTES);
    nonce.copy(header, AT.nonce);
    keys.id.copy(header, AT.keyId);
    // The payload CRC (still zero) covers the ciphertext, so it cannot be in the AAD.
    const cipher = crypto.createCipheriv('aes-256-gcm', keys.cipher, nonce);
    cipher.setAAD(header.subarray(0, AT.headerCrc));
    const sealed = Buffer.concat([cipher.update(body), cipher.final()]);
    const tag = cipher.getAuthTag();
    assert(sealed.length === body.length, 'GCM keeps the length');
    assert(tag.length === OBJECT_TAG_BYTES, 'GCM tag length');
    stored = Buffer.concat([header, sealed, tag]);
  }
  const out = stored.subarray(OBJECT_HEADER_BYTES);
  stored.writeUInt32LE(crc32c(out), AT.payloadCrc);
  stored.writeUInt32LE(crc32c(stored.subarray(0, AT.headerCrc)), AT.headerCrc);
  return stored;
}

function corrupt(name: string, detail: string): RewindError {
  return new RewindError('REWIND_ARCHIVE_CORRUPT', `archive object ${name}: ${detail}`, {
    hint: 'the object was damaged in storage or in transit; rewind archive verify checks them all',
  });
}

/** Reads and checks a stored object's header (magic, version, sizes, flags, CRC), or throws. */
export function decodeHeader(stored: Buffer, name: string): ObjectHeader {
  if (stored.length < OBJECT_HEADER_BYTES) {
    throw corrupt(
      name,
      `${stored.length} bytes, shorter than the ${OBJECT_HEADER_BYTES}-byte header`,
    );
  }
  const magic = stored.toString('latin1', AT.magic, AT.magic + 4);
  if (magic !== OBJECT_MAGIC) {
    throw corrupt(name, `magic ${JSON.stringify(magic)} at byte 0, expected "${OBJECT_MAGIC}"`);
  }
  const crcStored = stored.readUInt32LE(AT.headerCrc);
  const crcActual = crc32c(stored.subarray(0, AT.headerCrc));
  if (crcStored !== crcActual) {
    throw corrupt(name, `header CRC ${hex(crcActual)}, the header says ${hex(crcStored)}`);
  }
  const version = stored.readUInt16LE(AT.version);
  if (version !== OBJECT_VERSION) {
    throw corrupt(name, `format version ${version}; this build reads version ${OBJECT_VERSION}`);
  }
  const headerBytes = stored.readUInt16LE(AT.headerBytes);
  if (headerBytes !== OBJECT_HEADER_BYTES) {
    throw corrupt(name, `header of ${headerBytes} bytes, expected ${OBJECT_HEADER_BYTES}`);
  }
  const flags = stored.readUInt32LE(AT.flags);
  if ((flags & ~FLAGS_KNOWN) !== 0) throw corrupt(name, `unknown flags ${hex(flags)}`);
  const reserved = stored.subarray(AT.reserved, AT.reserved + RESERVED_BYTES);
  if (!reserved.equals(Buffer.alloc(RESERVED_BYTES))) throw corrupt(name, 'reserved bytes not 0');
  const encrypted = (flags & FLAG_ENCRYPTED) !== 0;
  const nonce = Buffer.from(stored.subarray(AT.nonce, AT.nonce + OBJECT_NONCE_BYTES));
  const keyId = Buffer.from(stored.subarray(AT.keyId, AT.keyId + KEY_ID_BYTES));
  if (!encrypted && !(isZero(nonce) && isZero(keyId))) {
    throw corrupt(name, 'nonce or key id set in an object that is not encrypted');
  }
  const plainBytes = Number(stored.readBigUInt64LE(AT.plainBytes));
  const payloadBytes = Number(stored.readBigUInt64LE(AT.payloadBytes));
  if (plainBytes > OBJECT_PLAIN_BYTES_MAX) {
    throw corrupt(name, `plain length ${plainBytes} over the ${OBJECT_PLAIN_BYTES_MAX} maximum`);
  }
  const compressed = (flags & FLAG_COMPRESSED) !== 0;
  if (compressed ? payloadBytes >= plainBytes : payloadBytes !== plainBytes) {
    throw corrupt(name, `payload of ${payloadBytes} bytes for ${plainBytes} plain bytes`);
  }
  return {
    version,
    compressed,
    encrypted,
    payloadCrc: stored.readUInt32LE(AT.payloadCrc),
    plainBytes,
    payloadBytes,
    digest: Buffer.from(stored.subarray(AT.digest, AT.digest + DIGEST_BYTES)),
    nonce,
    keyId,
  };
}

/**
 * The plain bytes of a stored object, after every check: header, length, payload CRC, then the
 * GCM tag (encrypted), zstd frame and size (compressed), and the digest of the plain bytes.
 * Throws REWIND_ARCHIVE_CORRUPT naming the object and what did not match, or REWIND_ARCHIVE_KEY.
 */
export function decodeObject(stored: Buffer, opts: DecodeOptions): Buffer {
  const { name } = opts;
  const header = decodeHeader(stored, name);
  const storedBytes =
    OBJECT_HEADER_BYTES + header.payloadBytes + (header.encrypted ? OBJECT_TAG_BYTES : 0);
  if (stored.length !== storedBytes) {
    const what = stored.length < storedBytes ? 'truncated' : 'bytes after the end';
    throw corrupt(name, `${what}: ${stored.length} bytes, the header says ${storedBytes}`);
  }
  const crcActual = crc32c(stored.subarray(OBJECT_HEADER_BYTES));
  if (crcActual !== header.payloadCrc) {
    throw corrupt(name, `payload CRC ${hex(crcActual)}, the header says ${hex(header.payloadCrc)}`);
  }
  const keys = keysFor(header, opts);
  const payloadEnd = OBJECT_HEADER_BYTES + header.payloadBytes;
  let body = stored.subarray(OBJECT_HEADER_BYTES, payloadEnd);
  if (keys !== undefined) body = decrypt(stored, body, header, keys, name);
  const plain = header.compressed ? inflate(body, header.plainBytes, name) : body;
  const digest = plainDigest(plain, keys);
  if (!digest.equals(header.digest)) {
    throw corrupt(
      name,
      `${keys ? 'HMAC' : 'SHA-256'} of the plain bytes does not match the header`,
    );
  }
  return plain;
}

/** The derived keys an object needs (undefined: not encrypted), or a REWIND_ARCHIVE_KEY error. */
function keysFor(header: ObjectHeader, opts: DecodeOptions): DerivedKeys | undefined {
  if (!header.encrypted) {
    if (opts.key !== undefined && opts.allowUnencrypted !== true) {
      throw new RewindError(
        'REWIND_ARCHIVE_KEY',
        `archive object ${opts.name} is not encrypted, but an archive key is configured`,
        { hint: 'an object written without encryption into an encrypted archive is refused' },
      );
    }
    return undefined;
  }
  if (opts.key === undefined) {
    throw new RewindError(
      'REWIND_ARCHIVE_KEY',
      `archive object ${opts.name} is encrypted (key id ${header.keyId.toString('hex')}) ` +
        'and no archive key is configured',
      { hint: 'give the key file the archive was written with (--archive-key FILE)' },
    );
  }
  const keys = deriveKeys(opts.key);
  if (!keys.id.equals(header.keyId)) {
    throw new RewindError(
      'REWIND_ARCHIVE_KEY',
      `archive object ${opts.name} was encrypted with key id ${header.keyId.toString('hex')}; ` +
        `the configured key has id ${keys.id.toString('hex')} (wrong key)`,
      { hint: 'give the key file the archive was written with' },
    );
  }
  return keys;
}

function decrypt(
  stored: Buffer,
  sealed: Buffer,
  header: ObjectHeader,
  keys: DerivedKeys,
  name: string,
): Buffer {
  const aad = Buffer.from(stored.subarray(0, AT.headerCrc));
  aad.fill(0, AT.payloadCrc, AT.payloadCrc + 4);
  const decipher = crypto.createDecipheriv('aes-256-gcm', keys.cipher, header.nonce);
  decipher.setAAD(aad);
  decipher.setAuthTag(stored.subarray(stored.length - OBJECT_TAG_BYTES));
  const opened = decipher.update(sealed);
  try {
    decipher.final();
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError(
      'REWIND_ARCHIVE_KEY',
      `archive object ${name}: authentication failed (wrong key or corrupt object)`,
      { hint: 'check the key file; rewind archive verify tells a damaged object from a wrong key' },
    );
  }
  return opened;
}

/** Decompresses one zstd frame that must hold exactly `plainBytes` bytes. */
function inflate(body: Buffer, plainBytes: number, name: string): Buffer {
  let frameBytes: number;
  let contentBytes: number | null;
  try {
    frameBytes = zstdBinding.findFrameCompressedSize(body);
    contentBytes = zstdBinding.getFrameContentSize(body);
  } catch (error) {
    rethrowIfBug(error);
    throw corrupt(name, `the payload is not a zstd frame (${String(error)})`);
  }
  // Checked before decompressing: zstd allocates what the frame header claims.
  if (frameBytes !== body.length || contentBytes !== plainBytes) {
    throw corrupt(
      name,
      `zstd frame of ${frameBytes} bytes for ${contentBytes ?? 'unknown'} bytes; the header ` +
        `says ${body.length} for ${plainBytes}`,
    );
  }
  let plain: Buffer;
  try {
    plain = decompress(body);
  } catch (error) {
    rethrowIfBug(error);
    throw corrupt(name, `zstd: ${String(error)}`);
  }
  if (plain.length !== plainBytes) {
    throw corrupt(name, `decompressed to ${plain.length} bytes, the header says ${plainBytes}`);
  }
  return plain;
}

function isZero(data: Buffer): boolean {
  for (const byte of data) if (byte !== 0) return false;
  return true;
}

function hex(value: number): string {
  return `0x${value.toString(16).padStart(8, '0')}`;
}
