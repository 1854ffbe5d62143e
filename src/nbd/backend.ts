// The contract between the NBD server (protocol only) and what it exports (volumes, views, clones).
// Callbacks rather than promises: the write path handles tens of thousands of requests a second and
// a promise per request costs measurable time (docs/BENCHMARKS.md).

/** NBD error numbers a backend may answer with (NBD spec "Error values"). */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** Called exactly once per request. `errno` 0 means success. */
export type DoneCallback = (errno: number) => void;
/** For reads: on success `data` holds exactly `length` bytes (one buffer or several in order). */
export type ReadCallback = (errno: number, data?: Buffer | readonly Buffer[]) => void;
export interface BlockStatusExtent {
  lengthBytes: number;
  /** base:allocation flags: HOLE = 1, ZERO = 2. */
  flags: number;
}
export type BlockStatusCallback = (errno: number, extents?: readonly BlockStatusExtent[]) => void;

/**
 * One export. The server validates every request against `sizeBytes`, `readOnly` and the advertised
 * capabilities before calling in, so a backend only ever sees in-range requests on writable exports
 * (it asserts this). Requests may be issued concurrently; the backend decides ordering.
 */
export interface ExportBackend {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  /** True only when FLUSH/FUA on any connection covers writes replied on every connection. */
  readonly multiConn: boolean;
  read(offsetBytes: number, lengthBytes: number, done: ReadCallback): void;
  write(offsetBytes: number, data: Buffer, fua: boolean, done: DoneCallback): void;
  /**
   * Optional: a WRITE whose payload arrived in several socket reads, given as those pieces in
   * order (views, no copy; their lengths sum to the request's). Without it the server joins them
   * into one Buffer for write().
   */
  writePieces?(
    offsetBytes: number,
    pieces: readonly Buffer[],
    fua: boolean,
    done: DoneCallback,
  ): void;
  writeZeroes(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void;
  trim(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void;
  flush(done: DoneCallback): void;
  /**
   * base:allocation extents starting at offsetBytes and covering at least one byte of the range.
   */
  blockStatus(offsetBytes: number, lengthBytes: number, done: BlockStatusCallback): void;
}

/** Where the server finds exports by name; exports may come and go while it runs. */
export interface ExportRegistry {
  get(name: string): ExportBackend | undefined;
  list(): readonly ExportBackend[];
  /** Export used when a client asks for the empty name "" (NBD default export), if any. */
  defaultName(): string | undefined;
  /** Non-null while an export is refusing new connections (e.g. during restore): the reason. */
  refusal?(name: string): string | null;
}
