// Transmission phase, pure parts: request header decoding, request validation (errno and order),
// reply errno sanitising and the shaping of base:allocation extents. No sockets here.
import { assert } from '../core/index.js';
import { NbdErrno, type BlockStatusExtent, type ExportBackend } from './backend.js';
import {
  AllocationFlag,
  Command,
  CommandFlag,
  REQUEST_MAGIC,
  TransmissionFlag,
  readSafeU64,
  type WireExtent,
} from './protocol.js';

export interface Request {
  type: number;
  flags: number;
  /** The client's 64-bit cookie as two u32 halves: no BigInt per request on the hot path. */
  cookieHigh: number;
  cookieLow: number;
  /** Undefined when the wire offset is beyond Number.MAX_SAFE_INTEGER (always out of range). */
  offsetBytes: number | undefined;
  lengthBytes: number;
}

/** What a connection negotiated for transmission; fixed once the handshake ends. */
export interface Session {
  backend: ExportBackend;
  transmissionFlags: number;
  structuredReplies: boolean;
  /** Context id selected for base:allocation, or undefined when none was selected. */
  allocationContextId: number | undefined;
  maxPayloadBytes: number;
}

export interface Rejection {
  errno: number;
  message: string;
}

/** Decodes a 28-byte request header; undefined on bad magic (the caller must hard-disconnect). */
export function decodeRequestHeader(header: Buffer): Request | undefined {
  if (header.readUInt32BE(0) !== REQUEST_MAGIC) return undefined;
  return {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    cookieHigh: header.readUInt32BE(8),
    cookieLow: header.readUInt32BE(12),
    offsetBytes: readSafeU64(header, 16),
    lengthBytes: header.readUInt32BE(24),
  };
}

/** The request's cookie as one bigint, for the reply encoders off the hot path. */
export function cookieOf(request: Request): bigint {
  return (BigInt(request.cookieHigh) << 32n) | BigInt(request.cookieLow);
}

export function transmissionFlagsFor(backend: ExportBackend, structuredReplies: boolean): number {
  let flags: number = TransmissionFlag.HAS_FLAGS;
  if (backend.readOnly) {
    flags |= TransmissionFlag.READ_ONLY;
  } else {
    flags |= TransmissionFlag.SEND_FLUSH | TransmissionFlag.SEND_FUA;
    flags |= TransmissionFlag.SEND_TRIM | TransmissionFlag.SEND_WRITE_ZEROES;
  }
  // DF only means something with structured replies; the spec forbids it otherwise.
  if (structuredReplies) flags |= TransmissionFlag.SEND_DF;
  if (backend.multiConn) flags |= TransmissionFlag.CAN_MULTI_CONN;
  return flags;
}

const FLAGS_KNOWN =
  CommandFlag.FUA |
  CommandFlag.NO_HOLE |
  CommandFlag.DF |
  CommandFlag.REQ_ONE |
  CommandFlag.FAST_ZERO;

/**
 * Flags valid per command, FUA aside (FUA is valid on every command once SEND_FUA is advertised).
 */
function flagsAllowed(type: number): number {
  switch (type) {
    case Command.READ:
      return CommandFlag.DF;
    case Command.WRITE_ZEROES:
      return CommandFlag.NO_HOLE | CommandFlag.FAST_ZERO;
    case Command.BLOCK_STATUS:
      return CommandFlag.REQ_ONE;
    default:
      return 0;
  }
}

function isKnownCommand(type: number): boolean {
  return type >= Command.READ && type <= Command.BLOCK_STATUS && type !== Command.DISC;
}

function isWriteLike(type: number): boolean {
  return type === Command.WRITE || type === Command.TRIM || type === Command.WRITE_ZEROES;
}

function reject(errno: number, message: string): Rejection {
  return { errno, message };
}

function checkFlags(request: Request, session: Session): Rejection | undefined {
  const { flags, type } = request;
  if ((flags & ~FLAGS_KNOWN) !== 0)
    return reject(NbdErrno.EINVAL, `unknown command flags 0x${flags.toString(16)}`);
  if (
    (flags & CommandFlag.FUA) !== 0 &&
    (session.transmissionFlags & TransmissionFlag.SEND_FUA) === 0
  ) {
    return reject(NbdErrno.EINVAL, 'FUA was not advertised');
  }
  const misplaced = flags & ~CommandFlag.FUA & ~flagsAllowed(type);
  if (misplaced !== 0)
    return reject(NbdErrno.EINVAL, `flags 0x${misplaced.toString(16)} not valid for this command`);
  if ((flags & CommandFlag.DF) !== 0 && !session.structuredReplies) {
    return reject(NbdErrno.EINVAL, 'DF needs structured replies');
  }
  return undefined;
}

function checkAdvertised(type: number, session: Session): Rejection | undefined {
  const advertised = session.transmissionFlags;
  if (type === Command.FLUSH && (advertised & TransmissionFlag.SEND_FLUSH) === 0) {
    return reject(NbdErrno.EINVAL, 'FLUSH was not advertised');
  }
  if (type === Command.TRIM && (advertised & TransmissionFlag.SEND_TRIM) === 0) {
    return reject(NbdErrno.EINVAL, 'TRIM was not advertised');
  }
  if (type === Command.WRITE_ZEROES && (advertised & TransmissionFlag.SEND_WRITE_ZEROES) === 0) {
    return reject(NbdErrno.EINVAL, 'WRITE_ZEROES was not advertised');
  }
  if (type === Command.CACHE && (advertised & TransmissionFlag.SEND_CACHE) === 0) {
    return reject(NbdErrno.EINVAL, 'CACHE was not advertised');
  }
  if (type === Command.BLOCK_STATUS && session.allocationContextId === undefined) {
    return reject(NbdErrno.EINVAL, 'BLOCK_STATUS without a selected meta context');
  }
  return undefined;
}

function checkRange(request: Request, session: Session): Rejection | undefined {
  const { type, offsetBytes, lengthBytes } = request;
  if (lengthBytes === 0) return reject(NbdErrno.EINVAL, 'zero-length request');
  if ((type === Command.READ || type === Command.WRITE) && lengthBytes > session.maxPayloadBytes) {
    return reject(NbdErrno.EINVAL, `request of ${lengthBytes} bytes exceeds the maximum payload`);
  }
  const sizeBytes = session.backend.sizeBytes;
  // Written as subtraction so that offset + length never loses precision.
  const inRange =
    offsetBytes !== undefined && offsetBytes <= sizeBytes && lengthBytes <= sizeBytes - offsetBytes;
  if (inRange) return undefined;
  const errno =
    type === Command.WRITE || type === Command.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
  return reject(errno, 'request beyond the end of the export');
}

/**
 * Validates a request (never DISC). Order, close to nbdkit's validate_request: unknown command,
 * write on a read-only export (EPERM beats ENOSPC), flags, unadvertised command, FLUSH arguments,
 * zero length, payload size, range; FAST_ZERO last so that a bad range still reports as such.
 * FAST_ZERO is never advertised, so the spec asks for EINVAL (not ENOTSUP, which means "could not
 * zero fast").
 */
export function validateRequest(request: Request, session: Session): Rejection | undefined {
  const { type } = request;
  assert(type !== Command.DISC, 'DISC is never validated');
  if (!isKnownCommand(type)) return reject(NbdErrno.EINVAL, `unknown command ${type}`);
  if (session.backend.readOnly && isWriteLike(type))
    return reject(NbdErrno.EPERM, 'export is read-only');
  const rejection = checkFlags(request, session) ?? checkAdvertised(type, session);
  if (rejection) return rejection;
  if (type === Command.FLUSH) {
    if (request.offsetBytes !== 0 || request.lengthBytes !== 0) {
      return reject(NbdErrno.EINVAL, 'FLUSH needs offset and length 0');
    }
    return undefined;
  }
  const rangeRejection = checkRange(request, session);
  if (rangeRejection) return rangeRejection;
  if (type === Command.WRITE_ZEROES && (request.flags & CommandFlag.FAST_ZERO) !== 0) {
    return reject(NbdErrno.EINVAL, 'FAST_ZERO was not advertised');
  }
  return undefined;
}

const WIRE_ERRNOS: ReadonlySet<number> = new Set(Object.values(NbdErrno));

/** Backend errnos outside the NBD set become EIO (the spec allows only the listed values). */
export function wireErrno(errno: number): number {
  return WIRE_ERRNOS.has(errno) ? errno : NbdErrno.EIO;
}

/**
 * Turns backend extents into what goes on the wire: flags limited to base:allocation bits, equal
 * neighbours merged, total clipped to the request, REQ_ONE → exactly one extent, at most
 * `extentsMax`.
 */
export function shapeExtents(
  extents: readonly BlockStatusExtent[],
  lengthBytes: number,
  reqOne: boolean,
  extentsMax: number,
): WireExtent[] {
  assert(extents.length > 0, 'backend returned no extents');
  assert(lengthBytes > 0, 'block status of zero length');
  assert(extentsMax >= 1, 'extentsMax must allow one extent');
  const shaped: WireExtent[] = [];
  const limit = reqOne ? 1 : extentsMax;
  let coveredBytes = 0;
  for (const extent of extents) {
    if (coveredBytes >= lengthBytes) break;
    assert(
      Number.isSafeInteger(extent.lengthBytes) && extent.lengthBytes > 0,
      'backend extent length invalid',
    );
    const flags = extent.flags & (AllocationFlag.HOLE | AllocationFlag.ZERO);
    const stepBytes = Math.min(extent.lengthBytes, lengthBytes - coveredBytes);
    coveredBytes += stepBytes;
    const last = shaped[shaped.length - 1];
    if (last !== undefined && last.flags === flags) {
      last.lengthBytes += stepBytes;
    } else if (shaped.length < limit) {
      shaped.push({ lengthBytes: stepBytes, flags });
    } else {
      break;
    }
  }
  return shaped;
}
