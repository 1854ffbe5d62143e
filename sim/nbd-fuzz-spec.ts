// NBD wire numbers as the fuzzer knows them, written down from the protocol specification
// (NetworkBlockDevice/nbd doc/proto.md) rather than imported from the server, so that the fuzzer's
// oracle stays independent of the implementation it checks.

export const INIT_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const OPTION_MAGIC = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const HANDSHAKE_FLAG_FIXED_NEWSTYLE = 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1;
export const CLIENT_FLAG_NO_ZEROES = 2;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

const ERR = 0x80000000;
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: ERR + 1,
  ERR_POLICY: ERR + 2,
  ERR_INVALID: ERR + 3,
  ERR_PLATFORM: ERR + 4,
  ERR_TLS_REQD: ERR + 5,
  ERR_UNKNOWN: ERR + 6,
  ERR_SHUTDOWN: ERR + 7,
  ERR_BLOCK_SIZE_REQD: ERR + 8,
  ERR_TOO_BIG: ERR + 9,
  ERR_EXT_HEADER_REQD: ERR + 10,
} as const;

export function isErrorReply(replyType: number): boolean {
  return replyType >= ERR;
}

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TFlag = {
  HAS_FLAGS: 0x1,
  READ_ONLY: 0x2,
  SEND_FLUSH: 0x4,
  SEND_FUA: 0x8,
  SEND_TRIM: 0x20,
  SEND_WRITE_ZEROES: 0x40,
  SEND_DF: 0x80,
  SEND_CACHE: 0x400,
  SEND_FAST_ZERO: 0x800,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CFlag = {
  FUA: 1,
  NO_HOLE: 2,
  DF: 4,
  REQ_ONE: 8,
  FAST_ZERO: 16,
  PAYLOAD_LEN: 32,
} as const;

export const REPLY_FLAG_DONE = 1;
export const Chunk = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

/** The error values a server may put on the wire ("Error values"). */
export const Errno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;
export const WIRE_ERRNOS: ReadonlySet<number> = new Set(Object.values(Errno));

export function errnoName(errno: number): string {
  if (errno === 0) return 'OK';
  for (const [name, value] of Object.entries(Errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

export function commandName(type: number): string {
  for (const [name, value] of Object.entries(Cmd)) if (value === type) return name;
  return `CMD(${type})`;
}

export function optionName(option: number): string {
  for (const [name, value] of Object.entries(Opt)) if (value === option) return name;
  return `OPT(${option})`;
}

export function replyName(replyType: number): string {
  for (const [name, value] of Object.entries(Rep)) if (value === replyType) return name;
  return `REP(0x${replyType.toString(16)})`;
}

export const GREETING_BYTES = 18;
export const OPTION_REPLY_HEADER_BYTES = 20;
export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_BYTES = 16;
export const CHUNK_HEADER_BYTES = 20;
export const EXPORT_NAME_ZEROES_BYTES = 124;
/** Strings (export names, messages) MUST be no longer than this. */
export const STRING_BYTES_MAX = 4096;
/** Payloads up to this size SHOULD NOT be treated as a denial of service; also the portable maximum block size. */
export const PAYLOAD_NOT_DOS_BYTES = 1 << 25;
/** A server MUST support unfragmented (DF) reads up to this length. */
export const DF_GUARANTEED_BYTES = 65536;
export const U32_MAX = 0xffffffff;
export const BASE_ALLOCATION = 'base:allocation';
