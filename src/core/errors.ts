// Operating errors: expected failures with a stable code, the failing step and a hint for the
// operator; the one errno classifier; the rule that programmer errors are never swallowed; and
// errors carried across a worker boundary with their identity.
import { AssertionError, isProgrammerError } from './assert.js';

export type ErrorCode =
  | 'REWIND_BAD_ARGUMENT'
  | 'REWIND_NOT_FOUND'
  | 'REWIND_CONFLICT'
  | 'REWIND_SEGMENT_CORRUPT'
  | 'REWIND_SEGMENT_TRUNCATED'
  | 'REWIND_SEGMENT_ORDER'
  | 'REWIND_SEQ_GAP'
  | 'REWIND_AGENT_BEHIND'
  | 'REWIND_POINT_INVALID'
  | 'REWIND_AUTH'
  | 'REWIND_FORBIDDEN'
  | 'REWIND_PROTOCOL'
  | 'REWIND_IO'
  | 'REWIND_CONFIG'
  | 'REWIND_BUSY'
  | 'REWIND_SHUTDOWN'
  | 'REWIND_ARCHIVE_NOT_FOUND'
  | 'REWIND_ARCHIVE_EXISTS'
  | 'REWIND_ARCHIVE_UNAVAILABLE'
  | 'REWIND_ARCHIVE_AUTH'
  | 'REWIND_ARCHIVE_CORRUPT'
  | 'REWIND_ARCHIVE_KEY';

/**
 * Brands RewindErrors so `instanceof` holds for one made by another copy of this module (undici
 * does the same); a revived worker error is a real RewindError of this copy.
 */
const REWIND_ERROR_BRAND = Symbol.for('rewind.error');

export class RewindError extends Error {
  override name = 'RewindError';
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  readonly [REWIND_ERROR_BRAND] = true;
  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
  }

  static override [Symbol.hasInstance](value: unknown): boolean {
    if (this !== RewindError) return Function.prototype[Symbol.hasInstance].call(this, value);
    return typeof value === 'object' && value !== null && REWIND_ERROR_BRAND in value;
  }
}

export type SegmentErrorCode =
  'REWIND_SEGMENT_CORRUPT' | 'REWIND_SEGMENT_TRUNCATED' | 'REWIND_SEGMENT_ORDER' | 'REWIND_SEQ_GAP';

/** A segment failed verification: names the file, byte offset and what was expected. */
export class SegmentError extends RewindError {
  override name = 'SegmentError';
  readonly file: string;
  readonly offsetBytes: number;
  constructor(code: SegmentErrorCode, file: string, offsetBytes: number, detail: string) {
    super(code, `${file} at byte ${offsetBytes}: ${detail}`);
    this.file = file;
    this.offsetBytes = offsetBytes;
  }
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}

/**
 * The first line of every catch: assertion failures, TypeErrors and RangeErrors mean the code is
 * wrong, and the only correct way to handle wrong code is to crash.
 */
export function rethrowIfBug(error: unknown): void {
  if (isProgrammerError(error)) throw error;
}

/** The errno-style code of a system, SQLite or Rewind error (`ENOSPC`, `SQLITE_FULL`), if any. */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}

/** The disk (files or SQLite) is full: backpressure or degraded mode, never a failure. */
export function isDiskFull(error: unknown): boolean {
  const code = errorCode(error);
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL';
}

/** The disk is full or failing (EIO, SQLite I/O errors). */
export function isDiskError(error: unknown): boolean {
  const code = errorCode(error) ?? '';
  return isDiskFull(error) || code === 'EIO' || code.startsWith('SQLITE_IOERR');
}

/** An error as plain data that survives postMessage: what it was, its code and its causes. */
export interface SerializedError {
  name: string;
  message: string;
  code: string | undefined;
  hint: string | undefined;
  errno: number | undefined;
  syscall: string | undefined;
  /** SegmentError: the file and the offset it names. */
  file: string | undefined;
  offsetBytes: number | undefined;
  stack: string;
  cause: SerializedError | undefined;
}

/** Causes kept across a boundary; deeper ones are cut (a cause chain is a few links). */
const CAUSE_DEPTH_MAX = 4;

export function serializeError(error: unknown, depth = 0): SerializedError {
  const e = (typeof error === 'object' && error !== null ? error : {}) as Record<string, unknown>;
  const text = (value: unknown): string | undefined =>
    typeof value === 'string' ? value : undefined;
  const cause = e.cause;
  return {
    name: text(e.name) ?? 'Error',
    message: text(e.message) ?? errorMessage(error),
    code: errorCode(error),
    hint: text(e.hint),
    errno: typeof e.errno === 'number' ? e.errno : undefined,
    syscall: text(e.syscall),
    file: error instanceof SegmentError ? error.file : undefined,
    offsetBytes: error instanceof SegmentError ? error.offsetBytes : undefined,
    stack: text(e.stack) ?? '',
    cause:
      cause !== undefined && depth < CAUSE_DEPTH_MAX ? serializeError(cause, depth + 1) : undefined,
  };
}

/**
 * The error again on this side, of the class it had where it was thrown: a RewindError (or
 * SegmentError) keeps its code, hint and cause; an assertion stays an AssertionError (so it still
 * crashes); a system error keeps code, errno and syscall. `where` is added to the stack.
 */
export function reviveError(data: SerializedError, where: string): Error {
  const cause = data.cause === undefined ? undefined : reviveError(data.cause, where);
  let revived: Error;
  if (data.name === 'SegmentError' && isSegmentCode(data.code)) {
    revived = Object.assign(
      new SegmentError(data.code, data.file ?? '?', data.offsetBytes ?? 0, ''),
      {
        message: data.message,
      },
    );
  } else if (
    isRewindCode(data.code) &&
    (data.name === 'RewindError' || data.name === 'SegmentError')
  ) {
    revived = new RewindError(data.code, data.message, {
      ...(data.hint !== undefined ? { hint: data.hint } : {}),
      ...(cause !== undefined ? { cause } : {}),
    });
  } else if (data.name === 'AssertionError') {
    revived = new AssertionError(data.message);
  } else if (data.name === 'TypeError') {
    revived = new TypeError(data.message);
  } else if (data.name === 'RangeError') {
    revived = new RangeError(data.message);
  } else {
    revived = new Error(data.message, cause === undefined ? undefined : { cause });
    revived.name = data.name;
    const system = revived as Error & { code?: string; errno?: number; syscall?: string };
    if (data.code !== undefined) system.code = data.code;
    if (data.errno !== undefined) system.errno = data.errno;
    if (data.syscall !== undefined) system.syscall = data.syscall;
  }
  const frames = data.stack.split('\n').slice(1).join('\n');
  revived.stack = `${data.name}: ${data.message}\n    (in ${where})\n${frames}`;
  return revived;
}

const REWIND_CODES: ReadonlySet<string> = new Set<ErrorCode>([
  'REWIND_BAD_ARGUMENT',
  'REWIND_NOT_FOUND',
  'REWIND_CONFLICT',
  'REWIND_SEGMENT_CORRUPT',
  'REWIND_SEGMENT_TRUNCATED',
  'REWIND_SEGMENT_ORDER',
  'REWIND_SEQ_GAP',
  'REWIND_POINT_INVALID',
  'REWIND_AUTH',
  'REWIND_FORBIDDEN',
  'REWIND_PROTOCOL',
  'REWIND_IO',
  'REWIND_CONFIG',
  'REWIND_BUSY',
  'REWIND_SHUTDOWN',
  'REWIND_ARCHIVE_NOT_FOUND',
  'REWIND_ARCHIVE_EXISTS',
  'REWIND_ARCHIVE_UNAVAILABLE',
  'REWIND_ARCHIVE_AUTH',
  'REWIND_ARCHIVE_CORRUPT',
  'REWIND_ARCHIVE_KEY',
]);

function isRewindCode(code: string | undefined): code is ErrorCode {
  return code !== undefined && REWIND_CODES.has(code);
}

function isSegmentCode(code: string | undefined): code is SegmentErrorCode {
  return (
    code === 'REWIND_SEGMENT_CORRUPT' ||
    code === 'REWIND_SEGMENT_TRUNCATED' ||
    code === 'REWIND_SEGMENT_ORDER' ||
    code === 'REWIND_SEQ_GAP'
  );
}
