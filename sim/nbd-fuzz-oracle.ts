// The fuzzer's oracle for transmission requests: given a request header (as the fuzzer sent it, possibly
// mutated) and what the handshake negotiated, which replies the NBD specification allows. Each rule
// cites the spec's wording: a request the spec names an error for must fail with that error; where the
// spec leaves the outcome open, any wire errno (or success) is accepted.
import {
  CFlag,
  Cmd,
  DF_GUARANTEED_BYTES,
  Errno,
  PAYLOAD_NOT_DOS_BYTES,
  REQUEST_HEADER_BYTES,
  REQUEST_MAGIC,
  TFlag,
  WIRE_ERRNOS,
} from './nbd-fuzz-spec.js';

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

export function encodeRequest(header: RequestHeader): Buffer {
  const buffer = Buffer.allocUnsafe(REQUEST_HEADER_BYTES);
  buffer.writeUInt32BE(header.magic >>> 0, 0);
  buffer.writeUInt16BE(header.flags & 0xffff, 4);
  buffer.writeUInt16BE(header.type & 0xffff, 6);
  buffer.writeBigUInt64BE(header.cookie, 8);
  buffer.writeBigUInt64BE(header.offset, 16);
  buffer.writeUInt32BE(header.length >>> 0, 24);
  return buffer;
}

export function decodeRequest(buffer: Buffer): RequestHeader {
  return {
    magic: buffer.readUInt32BE(0),
    flags: buffer.readUInt16BE(4),
    type: buffer.readUInt16BE(6),
    cookie: buffer.readBigUInt64BE(8),
    offset: buffer.readBigUInt64BE(16),
    length: buffer.readUInt32BE(24),
  };
}

export function newRequest(
  type: number,
  cookie: bigint,
  offset: number | bigint,
  length: number,
  flags = 0,
): RequestHeader {
  return { magic: REQUEST_MAGIC, flags, type, cookie, offset: BigInt(offset), length };
}

/** What the handshake settled for this connection. */
export interface Negotiated {
  sizeBytes: number;
  transmissionFlags: number;
  structured: boolean;
  /** base:allocation selected for the export in use: yes, no, or maybe (ambiguous export names). */
  context: 'yes' | 'no' | 'maybe';
  contextId: number | undefined;
  minimumBlockBytes: number;
  maximumPayloadBytes: number;
}

export interface Verdict {
  /** Errnos a reply may carry; 0 means success is allowed. */
  allowed: ReadonlySet<number>;
  /** The same without tolerated rules: a reply outside it but inside `allowed` is a tolerated deviation. */
  strict: ReadonlySet<number>;
  /** Why the request must or may fail; empty for a valid request. */
  rules: string[];
  /** On success the command changes the export (a write-like command in range on a writable export). */
  effective: boolean;
  /** The payload is large enough that the server may hard-disconnect instead of answering. */
  mayDisconnect: boolean;
}

interface Finding {
  rule: string;
  errnos: readonly number[];
  successAllowed: boolean;
}

const ANY_ERRNO = [...WIRE_ERRNOS];
const KNOWN_FLAGS =
  CFlag.FUA | CFlag.NO_HOLE | CFlag.DF | CFlag.REQ_ONE | CFlag.FAST_ZERO | CFlag.PAYLOAD_LEN;
const RANGED: ReadonlySet<number> = new Set([
  Cmd.READ,
  Cmd.WRITE,
  Cmd.TRIM,
  Cmd.CACHE,
  Cmd.WRITE_ZEROES,
  Cmd.BLOCK_STATUS,
]);
export const WRITE_LIKE: ReadonlySet<number> = new Set([Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]);

/** "The server SHOULD return X if ...": the request must fail, with X. */
function named(rule: string, errno: number): Finding {
  return { rule, errnos: [errno], successAllowed: false };
}

/** "Which error to return in any other case is not specified": any wire errno, or success. */
function unspecified(rule: string): Finding {
  return { rule, errnos: ANY_ERRNO, successAllowed: true };
}

/** The spec permits specific errors but also allows the server to honour the request. */
function permitted(rule: string, errnos: readonly number[]): Finding {
  return { rule, errnos, successAllowed: true };
}

/** Flags documented for each command besides FUA (valid on every command once SEND_FUA is advertised). */
function applicableFlags(type: number): number {
  switch (type) {
    case Cmd.READ:
      return CFlag.DF;
    case Cmd.WRITE_ZEROES:
      return CFlag.NO_HOLE | CFlag.FAST_ZERO;
    case Cmd.BLOCK_STATUS:
      return CFlag.REQ_ONE;
    default:
      return 0;
  }
}

function flagFindings(header: RequestHeader, session: Negotiated): Finding[] {
  const { flags, type } = header;
  const advertised = session.transmissionFlags;
  const findings: Finding[] = [];
  if ((flags & ~KNOWN_FLAGS) !== 0) findings.push(named('unknown command flag', Errno.EINVAL));
  const misplaced = flags & KNOWN_FLAGS & ~CFlag.FUA & ~applicableFlags(type);
  if (misplaced !== 0) findings.push(named('flag not documented for this command', Errno.EINVAL));
  const unnegotiated =
    ((flags & CFlag.FUA) !== 0 && (advertised & TFlag.SEND_FUA) === 0) ||
    ((flags & CFlag.DF) !== 0 && (advertised & TFlag.SEND_DF) === 0) ||
    (flags & CFlag.PAYLOAD_LEN) !== 0;
  if (unnegotiated) findings.push(named('flag not negotiated', Errno.EINVAL));
  if (
    type === Cmd.WRITE_ZEROES &&
    (flags & CFlag.FAST_ZERO) !== 0 &&
    (advertised & TFlag.SEND_FAST_ZERO) === 0
  ) {
    // "If the server did not advertise NBD_FLAG_SEND_FAST_ZERO, then it SHOULD NOT fail with
    // NBD_ENOTSUP ... and SHOULD fail with NBD_EINVAL if the NBD_CMD_FLAG_FAST_ZERO flag was set".
    findings.push(named(FAST_ZERO_NOT_ADVERTISED, Errno.EINVAL));
  }
  return findings;
}

function commandFindings(header: RequestHeader, session: Negotiated): Finding[] {
  const { type } = header;
  const advertised = session.transmissionFlags;
  const readOnly = (advertised & TFlag.READ_ONLY) !== 0;
  if (type > Cmd.BLOCK_STATUS) return [named('unknown command', Errno.EINVAL)];
  // "SHOULD return NBD_EPERM if it receives a write or trim request on a read-only export" (and write zeroes).
  if (readOnly && WRITE_LIKE.has(type)) return [named('write to a read-only export', Errno.EPERM)];
  const notAdvertised =
    (type === Cmd.FLUSH && (advertised & TFlag.SEND_FLUSH) === 0) ||
    (type === Cmd.TRIM && (advertised & TFlag.SEND_TRIM) === 0) ||
    (type === Cmd.WRITE_ZEROES && (advertised & TFlag.SEND_WRITE_ZEROES) === 0) ||
    (type === Cmd.CACHE && (advertised & TFlag.SEND_CACHE) === 0);
  if (notAdvertised) return [unspecified('command not advertised')];
  if (type === Cmd.BLOCK_STATUS && session.context === 'no') {
    // "Servers SHOULD reply with NBD_EINVAL to clients sending NBD_CMD_BLOCK_STATUS without selecting ... context".
    return [named('block status without a metadata context', Errno.EINVAL)];
  }
  if (type === Cmd.BLOCK_STATUS && session.context === 'maybe')
    return [unspecified('metadata context selected under another name')];
  return [];
}

function rangeFindings(header: RequestHeader, session: Negotiated): Finding[] {
  const { type, offset, length } = header;
  if (type === Cmd.FLUSH)
    return offset !== 0n || length !== 0 ? [unspecified('flush with offset or length')] : [];
  if (!RANGED.has(type)) return [];
  const findings: Finding[] = [];
  if (length === 0) findings.push(unspecified('zero length'));
  if (offset + BigInt(length) > BigInt(session.sizeBytes)) {
    // "SHOULD return NBD_ENOSPC if it receives a write request including one or more sectors beyond the
    // size" (write zeroes alike); NBD_EINVAL for read, trim and block status beyond the end.
    const errno = type === Cmd.WRITE || type === Cmd.WRITE_ZEROES ? Errno.ENOSPC : Errno.EINVAL;
    findings.push(named('beyond the end of the export', errno));
  }
  const minimum = BigInt(session.minimumBlockBytes);
  if (minimum > 1n && (offset % minimum !== 0n || BigInt(length) % minimum !== 0n)) {
    findings.push(named('not aligned to the minimum block size', Errno.EINVAL));
  }
  findings.push(...sizeFindings(header, session));
  return findings;
}

function sizeFindings(header: RequestHeader, session: Negotiated): Finding[] {
  const { type, length, flags } = header;
  const findings: Finding[] = [];
  if ((type === Cmd.READ || type === Cmd.WRITE) && length > session.maximumPayloadBytes) {
    findings.push(unspecified('payload above the maximum block size'));
  }
  if ((type === Cmd.TRIM || type === Cmd.WRITE_ZEROES) && length > session.maximumPayloadBytes) {
    // "the server SHOULD NOT disconnect, but MAY reply with an NBD_EOVERFLOW or NBD_EINVAL error".
    findings.push(
      permitted('effect length above the maximum block size', [Errno.EOVERFLOW, Errno.EINVAL]),
    );
  }
  if (type === Cmd.READ && (flags & CFlag.DF) !== 0 && length > DF_GUARANTEED_BYTES) {
    findings.push(permitted('unfragmented read above 64 KiB', [Errno.EOVERFLOW]));
  }
  return findings;
}

/** Rule of the oracle for WRITE_ZEROES with FAST_ZERO on a server that did not advertise it. */
export const FAST_ZERO_NOT_ADVERTISED = 'fast zero not advertised';

function allowedBy(findings: readonly Finding[]): Set<number> {
  const allowed = new Set<number>();
  for (const finding of findings) for (const errno of finding.errnos) allowed.add(errno);
  if (findings.every((finding) => finding.successAllowed)) allowed.add(0);
  return allowed;
}

/**
 * The replies the spec allows for `header` (never DISC, which has no reply). Rules named in
 * `tolerated` still require a failure, but accept any wire errno for it.
 */
export function judge(
  header: RequestHeader,
  session: Negotiated,
  tolerated: ReadonlySet<string> = new Set(),
): Verdict {
  const findings = [
    ...commandFindings(header, session),
    ...flagFindings(header, session),
    ...rangeFindings(header, session),
  ];
  const mustFail = findings.some((finding) => !finding.successAllowed);
  const relaxed = findings.map((finding) =>
    tolerated.has(finding.rule) ? { ...finding, errnos: ANY_ERRNO } : finding,
  );
  const carriesPayload = header.type === Cmd.READ || header.type === Cmd.WRITE;
  return {
    allowed: allowedBy(relaxed),
    strict: allowedBy(findings),
    rules: findings.map((finding) => finding.rule),
    effective: !mustFail && WRITE_LIKE.has(header.type) && header.length > 0,
    mayDisconnect: carriesPayload && header.length > PAYLOAD_NOT_DOS_BYTES,
  };
}
