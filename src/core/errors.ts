// Operating errors: expected failures with a stable code, the failing step and a hint for the operator.

export type ErrorCode =
  | 'REWIND_BAD_ARGUMENT'
  | 'REWIND_NOT_FOUND'
  | 'REWIND_CONFLICT'
  | 'REWIND_SEGMENT_CORRUPT'
  | 'REWIND_SEGMENT_TRUNCATED'
  | 'REWIND_SEGMENT_ORDER'
  | 'REWIND_SEQ_GAP'
  | 'REWIND_POINT_INVALID'
  | 'REWIND_AUTH'
  | 'REWIND_PROTOCOL'
  | 'REWIND_IO'
  | 'REWIND_CONFIG'
  | 'REWIND_BUSY'
  | 'REWIND_SHUTDOWN';

export class RewindError extends Error {
  override name = 'RewindError';
  readonly code: ErrorCode;
  readonly hint: string | undefined;
  constructor(code: ErrorCode, message: string, options: { hint?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.hint = options.hint;
  }
}

/** A segment failed verification: names the file, byte offset and what was expected. */
export class SegmentError extends RewindError {
  override name = 'SegmentError';
  readonly file: string;
  readonly offsetBytes: number;
  constructor(
    code:
      | 'REWIND_SEGMENT_CORRUPT'
      | 'REWIND_SEGMENT_TRUNCATED'
      | 'REWIND_SEGMENT_ORDER'
      | 'REWIND_SEQ_GAP',
    file: string,
    offsetBytes: number,
    detail: string,
  ) {
    super(code, `${file} at byte ${offsetBytes}: ${detail}`);
    this.file = file;
    this.offsetBytes = offsetBytes;
  }
}

export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
