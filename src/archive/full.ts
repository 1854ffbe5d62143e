// Virtual full images in the archive: a volume cut into 4 MiB content-addressed chunks, chunk ids
// and keys, and the manifest that lists every volume's chunks at one seq. Pure (no I/O); each
// chunk and manifest is stored through the object codec. docs/FORMATS.md "Archive full images".
import crypto from 'node:crypto';
import { assert, crc32c, RewindError } from '../core/index.js';

/** Chunks are this long (the last one of a volume may be shorter). */
export const FULL_CHUNK_BYTES = 4 * 1024 * 1024;
export const MANIFEST_MAGIC = 'RWAF';
export const MANIFEST_VERSION = 1;
export const MANIFEST_HEADER_BYTES = 48;
/** Each volume's entry before its name and chunk ids. */
export const MANIFEST_VOLUME_BYTES = 32;
/** A chunk id: 32 bytes (hex: 64 digits); all zero bytes in a manifest mean an all-zero chunk. */
export const CHUNK_ID_BYTES = 32;
const TRAILER_BYTES = 4;
/** Bounds a manifest can claim (a forged one cannot make the reader allocate more). */
export const MANIFEST_VOLUMES_MAX = 4096;
const VOLUME_NAME_BYTES_MAX = 1024;
/** 2^24 chunks of 4 MiB: a 64 TiB volume. */
const VOLUME_CHUNKS_MAX = 2 ** 24;

/** One chunk of a volume in a manifest: its id (hex), or null for an all-zero chunk. */
export type ChunkRef = string | null;

export interface ManifestVolume {
  idx: number;
  name: string;
  sizeBytes: number;
  chunkBytes: number;
  chunks: ChunkRef[];
}

export interface FullManifest {
  /** The volume set's UUID (with dashes, as the catalog keeps it). */
  volumeSetId: string;
  seq: number;
  /** Capture time of write `seq` (µs since the epoch; 0 for seq 0). */
  timeUs: number;
  volumes: ManifestVolume[];
}

/** How many chunks a volume of `sizeBytes` has. */
export function chunkCount(sizeBytes: number, chunkBytes = FULL_CHUNK_BYTES): number {
  return Math.ceil(sizeBytes / chunkBytes);
}

/**
 * The id of a chunk: hex SHA-256 of its plain bytes, or with the archive key hex
 * HMAC-SHA-256(key, plain), so an object's name does not let anyone confirm a guess of its content.
 */
export function chunkId(plain: Uint8Array, key: Uint8Array | undefined): string {
  const hash = key === undefined ? crypto.createHash('sha256') : crypto.createHmac('sha256', key);
  return hash.update(plain).digest('hex');
}

/** True when every byte is zero (such chunks are not stored). */
export function isZeroChunk(plain: Uint8Array): boolean {
  const view = Buffer.from(plain.buffer, plain.byteOffset, plain.byteLength);
  return view.equals(zeroes(plain.byteLength));
}

let zeroBuffer = Buffer.alloc(0);
function zeroes(bytes: number): Buffer {
  if (zeroBuffer.length < bytes) zeroBuffer = Buffer.alloc(Math.max(bytes, FULL_CHUNK_BYTES));
  return zeroBuffer.subarray(0, bytes);
}

/** `VOLUMESETID/chunks/ID[0..2]/ID`: the first two hex digits spread chunks over 256 prefixes. */
export function chunkKey(volumeSetId: string, id: string): string {
  assert(/^[0-9a-f]{64}$/.test(id), 'a chunk id is 64 hex digits');
  return `${volumeSetId}/chunks/${id.slice(0, 2)}/${id}`;
}

/** `VOLUMESETID/full/SEQ`, the seq padded to 16 digits so keys sort in history order. */
export function manifestKey(volumeSetId: string, seq: number): string {
  return `${volumeSetId}/full/${String(seq).padStart(16, '0')}`;
}

function uuidBytes(volumeSetId: string): Buffer {
  const bytes = Buffer.from(volumeSetId.replace(/-/g, ''), 'hex');
  assert(bytes.length === 16, 'a volume set id is a 16-byte UUID');
  return bytes;
}

function uuidText(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** The plain bytes of a manifest (before the codec compresses and encrypts them). */
export function encodeManifest(manifest: FullManifest): Buffer {
  assert(manifest.volumes.length <= MANIFEST_VOLUMES_MAX, 'manifest volume count');
  const header = Buffer.alloc(MANIFEST_HEADER_BYTES);
  header.write(MANIFEST_MAGIC, 0, 'latin1');
  header.writeUInt16LE(MANIFEST_VERSION, 4);
  header.writeUInt16LE(MANIFEST_HEADER_BYTES, 6);
  header.writeUInt32LE(manifest.volumes.length, 8);
  header.writeUInt32LE(MANIFEST_VOLUME_BYTES, 12);
  uuidBytes(manifest.volumeSetId).copy(header, 16);
  header.writeBigUInt64LE(BigInt(manifest.seq), 32);
  header.writeBigUInt64LE(BigInt(manifest.timeUs), 40);
  const parts: Buffer[] = [header];
  for (const volume of manifest.volumes) {
    assert(volume.chunks.length === chunkCount(volume.sizeBytes, volume.chunkBytes), 'chunks');
    const name = Buffer.from(volume.name, 'utf8');
    assert(name.length > 0 && name.length <= VOLUME_NAME_BYTES_MAX, 'volume name length');
    const entry = Buffer.alloc(MANIFEST_VOLUME_BYTES);
    entry.writeUInt32LE(volume.idx, 0);
    entry.writeUInt32LE(volume.chunkBytes, 4);
    entry.writeBigUInt64LE(BigInt(volume.sizeBytes), 8);
    entry.writeUInt32LE(volume.chunks.length, 16);
    entry.writeUInt16LE(name.length, 20);
    const ids = Buffer.alloc(CHUNK_ID_BYTES * volume.chunks.length);
    for (const [i, id] of volume.chunks.entries()) {
      if (id === null) continue;
      assert(/^[0-9a-f]{64}$/.test(id), 'a chunk id is 64 hex digits');
      ids.write(id, i * CHUNK_ID_BYTES, 'hex');
    }
    parts.push(entry, name, ids);
  }
  const body = Buffer.concat(parts);
  const trailer = Buffer.alloc(TRAILER_BYTES);
  trailer.writeUInt32LE(crc32c(body), 0);
  return Buffer.concat([body, trailer]);
}

function manifestError(name: string, detail: string): RewindError {
  return new RewindError('REWIND_ARCHIVE_CORRUPT', `archive manifest ${name}: ${detail}`, {
    hint: 'rewind archive verify --deep names every damaged object; take a new full image',
  });
}

/**
 * A manifest's plain bytes decoded, every field checked (magic, version, sizes, reserved bytes,
 * chunk counts against sizes, the trailing CRC-32C); `name` is its key, named in every refusal.
 */
export function decodeManifest(plain: Buffer, name: string): FullManifest {
  if (plain.length < MANIFEST_HEADER_BYTES + TRAILER_BYTES) {
    throw manifestError(name, `${plain.length} bytes, shorter than a header and trailer`);
  }
  const crcAt = plain.length - TRAILER_BYTES;
  if (crc32c(plain.subarray(0, crcAt)) !== plain.readUInt32LE(crcAt)) {
    throw manifestError(name, 'CRC-32C of the manifest does not match its trailer');
  }
  if (plain.toString('latin1', 0, 4) !== MANIFEST_MAGIC) throw manifestError(name, 'bad magic');
  const version = plain.readUInt16LE(4);
  if (version !== MANIFEST_VERSION) {
    throw manifestError(name, `version ${version}; this build reads ${MANIFEST_VERSION}`);
  }
  if (
    plain.readUInt16LE(6) !== MANIFEST_HEADER_BYTES ||
    plain.readUInt32LE(12) !== MANIFEST_VOLUME_BYTES
  ) {
    throw manifestError(name, 'header or volume entry size is not this version');
  }
  const count = plain.readUInt32LE(8);
  if (count > MANIFEST_VOLUMES_MAX) throw manifestError(name, `${count} volumes`);
  const seq = safe(plain.readBigUInt64LE(32), name, 'seq');
  const timeUs = safe(plain.readBigUInt64LE(40), name, 'capture time');
  const volumes: ManifestVolume[] = [];
  let at = MANIFEST_HEADER_BYTES;
  for (let i = 0; i < count; i++) {
    const read = readVolume(plain, at, crcAt, name);
    volumes.push(read.volume);
    at = read.end;
  }
  if (at !== crcAt) throw manifestError(name, `${crcAt - at} bytes after the last volume`);
  return { volumeSetId: uuidText(plain.subarray(16, 32)), seq, timeUs, volumes };
}

function readVolume(
  plain: Buffer,
  at: number,
  end: number,
  name: string,
): { volume: ManifestVolume; end: number } {
  if (at + MANIFEST_VOLUME_BYTES > end)
    throw manifestError(name, 'a volume entry runs past the end');
  const idx = plain.readUInt32LE(at);
  const chunkBytes = plain.readUInt32LE(at + 4);
  const sizeBytes = safe(plain.readBigUInt64LE(at + 8), name, 'volume size');
  const chunks = plain.readUInt32LE(at + 16);
  const nameBytes = plain.readUInt16LE(at + 20);
  if (plain.subarray(at + 22, at + MANIFEST_VOLUME_BYTES).some((byte) => byte !== 0)) {
    throw manifestError(name, `volume ${idx}: reserved bytes are not zero`);
  }
  if (
    chunkBytes === 0 ||
    chunks > VOLUME_CHUNKS_MAX ||
    chunks !== chunkCount(sizeBytes, chunkBytes)
  ) {
    throw manifestError(
      name,
      `volume ${idx}: ${chunks} chunks of ${chunkBytes} bytes for ${sizeBytes} bytes`,
    );
  }
  if (nameBytes === 0 || nameBytes > VOLUME_NAME_BYTES_MAX) {
    throw manifestError(name, `volume ${idx}: a name of ${nameBytes} bytes`);
  }
  const nameAt = at + MANIFEST_VOLUME_BYTES;
  const idsAt = nameAt + nameBytes;
  const next = idsAt + chunks * CHUNK_ID_BYTES;
  if (next > end) throw manifestError(name, `volume ${idx}: its chunk list runs past the end`);
  const ids: ChunkRef[] = [];
  for (let c = 0; c < chunks; c++) {
    const id = plain.subarray(idsAt + c * CHUNK_ID_BYTES, idsAt + (c + 1) * CHUNK_ID_BYTES);
    ids.push(id.every((byte) => byte === 0) ? null : id.toString('hex'));
  }
  const volumeName = plain.toString('utf8', nameAt, idsAt);
  return { volume: { idx, name: volumeName, sizeBytes, chunkBytes, chunks: ids }, end: next };
}

function safe(value: bigint, name: string, field: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw manifestError(name, `${field} is too large`);
  return Number(value);
}
