// NBD wire constants (magics, options, replies, flags, commands, chunk types) and the small
// encoders for fixed-layout messages. Every number the server puts on or reads from the wire is
// named here.
import { assert } from '../core/index.js';

export const INIT_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const OPTION_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags the server sends. */
export const HandshakeFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;
/** Client flags; any other bit means the server must close. */
export const ClientFlag = { FIXED_NEWSTYLE: 1, NO_ZEROES: 2 } as const;
export const CLIENT_FLAGS_KNOWN = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;

export const Option = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const REP_ERROR_BIT = 0x80000000;
export const OptionReply = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERROR_BIT + 1,
  ERR_POLICY: REP_ERROR_BIT + 2,
  ERR_INVALID: REP_ERROR_BIT + 3,
  ERR_PLATFORM: REP_ERROR_BIT + 4,
  ERR_TLS_REQD: REP_ERROR_BIT + 5,
  ERR_UNKNOWN: REP_ERROR_BIT + 6,
  ERR_SHUTDOWN: REP_ERROR_BIT + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERROR_BIT + 8,
  ERR_TOO_BIG: REP_ERROR_BIT + 9,
  ERR_EXT_HEADER_REQD: REP_ERROR_BIT + 10,
} as const;
export type OptionErrorReply = Exclude<
  (typeof OptionReply)[keyof typeof OptionReply],
  1 | 2 | 3 | 4
>;

export const InfoType = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

/** Transmission flags (u16), sent with INFO_EXPORT or after EXPORT_NAME. */
export const TransmissionFlag = {
  HAS_FLAGS: 0x1,
  READ_ONLY: 0x2,
  SEND_FLUSH: 0x4,
  SEND_FUA: 0x8,
  ROTATIONAL: 0x10,
  SEND_TRIM: 0x20,
  SEND_WRITE_ZEROES: 0x40,
  SEND_DF: 0x80,
  CAN_MULTI_CONN: 0x100,
  SEND_RESIZE: 0x200,
  SEND_CACHE: 0x400,
  SEND_FAST_ZERO: 0x800,
  BLOCK_STATUS_PAYLOAD: 0x1000,
} as const;

export const Command = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;
export type CommandType = (typeof Command)[keyof typeof Command];

export const CommandFlag = {
  FUA: 1,
  NO_HOLE: 2,
  DF: 4,
  REQ_ONE: 8,
  FAST_ZERO: 16,
  PAYLOAD_LEN: 32,
} as const;

export const ReplyFlag = { DONE: 1 } as const;

export const ChunkType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  BLOCK_STATUS_EXT: 6,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** base:allocation extent flags. */
export const AllocationFlag = { HOLE: 1, ZERO: 2 } as const;
export const BASE_ALLOCATION = 'base:allocation';

// Fixed sizes of wire messages.
export const GREETING_BYTES = 18;
export const CLIENT_FLAGS_BYTES = 4;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const CHUNK_HEADER_BYTES = 20;
export const EXPORT_NAME_ZEROES_BYTES = 124;
/** Spec: strings (export names, messages) MUST be no longer than 4096 bytes. */
export const STRING_BYTES_MAX = 4096;
/** Spec: at most 2^20 extents in one BLOCK_STATUS chunk. */
export const EXTENTS_MAX = 1 << 20;
/** Spec: payloads up to 2^25 bytes SHOULD NOT be treated as a denial of service. */
export const PAYLOAD_BYTES_NOT_DOS = 1 << 25;

const U32_MAX = 0xffffffff;

const COMMAND_NAMES = new Map<number, string>(
  Object.entries(Command).map(([name, value]) => [value, name]),
);

export function commandName(type: number): string {
  return COMMAND_NAMES.get(type) ?? `UNKNOWN(${type})`;
}

export function optionName(option: number): string {
  for (const [name, value] of Object.entries(Option)) if (value === option) return name;
  return `UNKNOWN(${option})`;
}

/** The largest high half of a u64 that is still a safe integer (2^53 - 1 = 0x1fffff_ffffffff). */
const SAFE_HIGH_MAX = 0x1fffff;

/** u64 from the wire as a Number, or undefined when it is beyond Number.MAX_SAFE_INTEGER. */
export function readSafeU64(buffer: Buffer, offsetBytes: number): number | undefined {
  const high = buffer.readUInt32BE(offsetBytes);
  if (high > SAFE_HIGH_MAX) return undefined;
  return high * 2 ** 32 + buffer.readUInt32BE(offsetBytes + 4);
}

export function encodeGreeting(): Buffer {
  const buffer = Buffer.allocUnsafe(GREETING_BYTES);
  buffer.writeBigUInt64BE(INIT_MAGIC, 0);
  buffer.writeBigUInt64BE(OPTION_MAGIC, 8);
  buffer.writeUInt16BE(HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES, 16);
  return buffer;
}

/** One option reply: header plus payload, as a single buffer. */
export function encodeOptionReply(option: number, replyType: number, payload?: Buffer): Buffer {
  const payloadBytes = payload?.length ?? 0;
  assert(payloadBytes <= U32_MAX, 'option reply payload too long');
  const buffer = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + payloadBytes);
  buffer.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(replyType, 12);
  buffer.writeUInt32BE(payloadBytes, 16);
  if (payload) payload.copy(buffer, OPTION_REPLY_HEADER_BYTES);
  return buffer;
}

/** Strings the server sends are cut to the spec limit (on a UTF-8 boundary). */
export function encodeString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= STRING_BYTES_MAX) return bytes;
  let end = STRING_BYTES_MAX;
  // Back up over continuation bytes (10xxxxxx) so the cut never splits a character.
  while (end > 0 && ((bytes[end] ?? 0) & 0xc0) === 0x80) end -= 1;
  return bytes.subarray(0, end);
}

/** REP_SERVER payload: u32 name length, name, description. */
export function encodeServerEntry(name: string, description: string): Buffer {
  const nameBytes = encodeString(name);
  const descriptionBytes = encodeString(description);
  const buffer = Buffer.allocUnsafe(4 + nameBytes.length + descriptionBytes.length);
  buffer.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buffer, 4);
  descriptionBytes.copy(buffer, 4 + nameBytes.length);
  return buffer;
}

export function encodeInfoExport(sizeBytes: number, transmissionFlags: number): Buffer {
  const buffer = Buffer.allocUnsafe(12);
  buffer.writeUInt16BE(InfoType.EXPORT, 0);
  buffer.writeBigUInt64BE(BigInt(sizeBytes), 2);
  buffer.writeUInt16BE(transmissionFlags, 10);
  return buffer;
}

export function encodeInfoString(
  type: typeof InfoType.NAME | typeof InfoType.DESCRIPTION,
  text: string,
): Buffer {
  const textBytes = encodeString(text);
  const buffer = Buffer.allocUnsafe(2 + textBytes.length);
  buffer.writeUInt16BE(type, 0);
  textBytes.copy(buffer, 2);
  return buffer;
}

export interface BlockSizes {
  minimumBytes: number;
  preferredBytes: number;
  maximumBytes: number;
}

export function encodeInfoBlockSize(sizes: BlockSizes): Buffer {
  const buffer = Buffer.allocUnsafe(14);
  buffer.writeUInt16BE(InfoType.BLOCK_SIZE, 0);
  buffer.writeUInt32BE(sizes.minimumBytes, 2);
  buffer.writeUInt32BE(sizes.preferredBytes, 6);
  buffer.writeUInt32BE(sizes.maximumBytes, 10);
  return buffer;
}

/** REP_META_CONTEXT payload: u32 context id, then the name. */
export function encodeMetaContext(contextId: number, name: string): Buffer {
  const nameBytes = encodeString(name);
  const buffer = Buffer.allocUnsafe(4 + nameBytes.length);
  buffer.writeUInt32BE(contextId, 0);
  nameBytes.copy(buffer, 4);
  return buffer;
}

/** The reply to EXPORT_NAME: u64 size, u16 flags, then 124 zero bytes unless NO_ZEROES. */
export function encodeExportNameReply(
  sizeBytes: number,
  transmissionFlags: number,
  noZeroes: boolean,
): Buffer {
  const buffer = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_ZEROES_BYTES));
  buffer.writeBigUInt64BE(BigInt(sizeBytes), 0);
  buffer.writeUInt16BE(transmissionFlags, 8);
  return buffer;
}

export function encodeSimpleReply(errno: number, cookie: bigint): Buffer {
  const buffer = Buffer.allocUnsafe(SIMPLE_REPLY_BYTES);
  buffer.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(errno, 4);
  buffer.writeBigUInt64BE(cookie, 8);
  return buffer;
}

/** A simple reply written into `buffer` at `at`, the cookie given as its u32 halves. */
export function encodeSimpleReplyAt(
  buffer: Buffer,
  at: number,
  errno: number,
  cookieHigh: number,
  cookieLow: number,
): void {
  buffer.writeUInt32BE(SIMPLE_REPLY_MAGIC, at);
  buffer.writeUInt32BE(errno, at + 4);
  buffer.writeUInt32BE(cookieHigh, at + 8);
  buffer.writeUInt32BE(cookieLow, at + 12);
}

function writeChunkHeader(
  buffer: Buffer,
  flags: number,
  type: number,
  cookie: bigint,
  payloadBytes: number,
): void {
  assert(payloadBytes <= U32_MAX, 'structured chunk payload too long');
  buffer.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  buffer.writeUInt16BE(flags, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeBigUInt64BE(cookie, 8);
  buffer.writeUInt32BE(payloadBytes, 16);
}

/** Header of a final OFFSET_DATA chunk (20-byte chunk header + u64 offset); the data follows it. */
export function encodeOffsetDataHeader(
  cookie: bigint,
  offsetBytes: number,
  dataBytes: number,
): Buffer {
  const buffer = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + 8);
  writeChunkHeader(buffer, ReplyFlag.DONE, ChunkType.OFFSET_DATA, cookie, 8 + dataBytes);
  buffer.writeBigUInt64BE(BigInt(offsetBytes), CHUNK_HEADER_BYTES);
  return buffer;
}

/** A final ERROR chunk: u32 errno, u16 message length, message. */
export function encodeErrorChunk(cookie: bigint, errno: number, message: string): Buffer {
  assert(errno !== 0, 'error chunk needs a nonzero errno');
  const messageBytes = encodeString(message);
  const buffer = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + 6 + messageBytes.length);
  writeChunkHeader(buffer, ReplyFlag.DONE, ChunkType.ERROR, cookie, 6 + messageBytes.length);
  buffer.writeUInt32BE(errno, CHUNK_HEADER_BYTES);
  buffer.writeUInt16BE(messageBytes.length, CHUNK_HEADER_BYTES + 4);
  messageBytes.copy(buffer, CHUNK_HEADER_BYTES + 6);
  return buffer;
}

export interface WireExtent {
  lengthBytes: number;
  flags: number;
}

/** A final BLOCK_STATUS chunk: u32 context id, then (u32 length, u32 flags) per extent. */
export function encodeBlockStatusChunk(
  cookie: bigint,
  contextId: number,
  extents: readonly WireExtent[],
): Buffer {
  assert(extents.length > 0, 'block status needs at least one extent');
  const payloadBytes = 4 + 8 * extents.length;
  const buffer = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + payloadBytes);
  writeChunkHeader(buffer, ReplyFlag.DONE, ChunkType.BLOCK_STATUS, cookie, payloadBytes);
  buffer.writeUInt32BE(contextId, CHUNK_HEADER_BYTES);
  let position = CHUNK_HEADER_BYTES + 4;
  for (const extent of extents) {
    buffer.writeUInt32BE(extent.lengthBytes, position);
    buffer.writeUInt32BE(extent.flags, position + 4);
    position += 8;
  }
  return buffer;
}
