// The agent's spool: one active redo segment being appended to, and sealed segments waiting to
// ship. Owns segment file naming, the log space each batch reserves and the running checksum,
// sealing, recovery of a torn active segment, and the segment files themselves: released files
// are recycled and new ones preallocated in the background, so appends overwrite blocks that
// exist.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  assert,
  crashPoint,
  crc32c,
  errorMessage,
  nowNs,
  rethrowIfBug,
  RewindError,
  SegmentError,
} from '../core/index.js';
import {
  chainRecordHeader,
  chainRedoHeader,
  encodePadAt,
  encodeRedoHeader,
  encodeRedoTrailer,
  PAD_ALIGN_BYTES,
  padBytesAt,
  parseSealedRedo,
  REDO_HEADER_BYTES,
  REDO_HEADER_CRC_OFFSET,
  REDO_VERSION,
  scanRedo,
  SEGMENT_FLAG_RESYNC,
} from '../log/index.js';
import {
  DIR_MODE_PRIVATE,
  FILE_MODE_PRIVATE,
  fdatasyncAsync,
  fileSystemIsMemory,
  fsyncDir,
  isZero,
  preallocateTools,
  writeFullySync,
  writevAsync,
} from '../platform/index.js';

/** Appends up to this many bytes are written synchronously (see append). */
const SYNC_APPEND_BYTES_MAX = 256 * 1024;
/**
 * Batches of at least this many bytes end with a pad record on a 4 KiB boundary, and go to the
 * disk with direct I/O from their first 4 KiB boundary on (not on a memory file system). Measured
 * on this machine kind, ext4, Node writing 1-8 MiB from a mapping (2026-12-04): direct 1.6-2.5
 * GB/s into a new file, 1.6-2.4 GB/s into a preallocated one, buffered 0.38-0.78 GB/s into new
 * page-cache pages (fio: direct 1.7-1.8 GB/s, buffered 0.42-0.54 GB/s). The pad wastes at most
 * 4 KiB, under 1.6 % of such a batch.
 */
export const ALIGNED_BATCH_BYTES_MIN = 256 * 1024;
/** At most this many spare segment files (recycled or preallocated) are kept for reuse. */
export const FREE_FILES_MAX = 2;
/** Preallocation runs util-linux fallocate; it may take this long before it is given up. */
const PREALLOCATE_TIMEOUT_MS = 60_000;

export interface SealedSegment {
  index: number;
  file: string;
  seqFirst: number;
  seqLast: number;
  bytes: number;
  resync: boolean;
}

interface ActiveSegment {
  index: number;
  file: string;
  fd: number;
  /** A second descriptor with O_DIRECT for the aligned part of large batches (not on tmpfs). */
  directFd: number | undefined;
  /** End of the bytes reserved so far (header, records, pads); the next batch starts here. */
  positionBytes: number;
  /** Body chain CRC up to committedBytes. */
  crc: number;
  /** End of the batches whose writes returned: the prefix a seal may close. */
  committedBytes: number;
  seqFirst: number;
  recordCount: number;
  timeFirstNs: bigint;
  timeLastNs: bigint;
  createdMs: number;
  flags: number;
  /**
   * Format version of the header: a version 1 or 2 segment recovered after an upgrade is sealed
   * as one.
   */
  version: number;
  /** Size of the file when this segment took it (a recycled or preallocated file), else 0. */
  fileBytes: number;
}

/** A batch's place in the active segment, reserved before its bytes are written. */
export interface LogReservation {
  readonly segmentIndex: number;
  readonly fd: number;
  /**
   * Set when the batch goes to the disk with direct I/O through this descriptor: its bytes from
   * `directFromBytes` (a 4 KiB boundary) to its end (another); the head before it through `fd`.
   */
  readonly directFd: number | undefined;
  /** Where the direct part starts (the batch's end when there is none). */
  readonly directFromBytes: number;
  readonly positionBytes: number;
  /** Bytes of the records (headers and payloads). */
  readonly recordBytes: number;
  /** Bytes of the pad record after them (0: none). */
  readonly padBytes: number;
  readonly seqFirst: number;
  readonly recordCount: number;
  readonly timeFirstNs: bigint;
  readonly timeLastNs: bigint;
  /** Body chain CRC before this batch (the batches before it are committed). */
  readonly chainIn: number;
}

export interface SpoolRecovery {
  /** Bytes cut from the end of the active segment because they were torn, corrupt or stale. */
  tornBytes: number;
  tornReason: SegmentError | undefined;
  /** Records kept from the active segment found at start (sealed during recovery). */
  recoveredRecords: number;
}

export interface SpoolOptions {
  /** Segments are sealed near this size: preallocated files get it. */
  segmentBytes?: number;
  /** Preallocate the next segment's file in the background (fallocate). Default true. */
  preallocate?: boolean;
  /** Direct I/O for the aligned part of large batches: 'auto' uses it except on tmpfs. */
  direct?: 'auto' | 'off';
  /** Batches of at least this many bytes are aligned (tests and the simulation use less). */
  alignedBatchBytesMin?: number;
  /** A preallocation that failed, or direct I/O that the file system refused. */
  onWarning?: (message: string) => void;
}

const SEALED_SUFFIX = '.redo';
const ACTIVE_SUFFIX = '.redo.active';
/** A released segment's file, kept to be overwritten by a later segment (blocks written). */
const RECYCLED_SUFFIX = '.free';
/** A file preallocated (fallocate) for a later segment. */
const PREALLOCATED_SUFFIX = '.prealloc';
const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;

interface FreeFile {
  file: string;
  recycled: boolean;
}

function isFreeName(name: string): boolean {
  return name.endsWith(RECYCLED_SUFFIX) || name.endsWith(PREALLOCATED_SUFFIX);
}

function segmentName(index: number, suffix: string): string {
  return `${String(index).padStart(16, '0')}${suffix}`;
}

export class Spool {
  readonly dir: string;
  private readonly volumeSetId: Buffer;
  private readonly volumeCount: number;
  private readonly segmentBytes: number;
  private readonly alignedBatchBytesMin: number;
  private readonly warn: (message: string) => void;
  private preallocate: boolean;
  private direct: boolean;
  private active: ActiveSegment | undefined;
  readonly sealed: SealedSegment[] = [];
  private readonly free: FreeFile[] = [];
  private nextFreeName = 0;
  private preparing: Promise<void> | undefined;
  private nextIndex: number;
  /** The seq the next reserved record must carry. */
  private seqNext: number;

  private constructor(
    dir: string,
    volumeSetId: Buffer,
    volumeCount: number,
    position: { nextIndex: number; seqNext: number },
    options: SpoolOptions,
  ) {
    this.dir = dir;
    this.volumeSetId = volumeSetId;
    this.volumeCount = volumeCount;
    this.nextIndex = position.nextIndex;
    this.seqNext = position.seqNext;
    this.segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.alignedBatchBytesMin = options.alignedBatchBytesMin ?? ALIGNED_BATCH_BYTES_MIN;
    this.preallocate = options.preallocate ?? true;
    this.direct = (options.direct ?? 'auto') === 'auto' && !fileSystemIsMemory(dir);
    this.warn = options.onWarning ?? (() => undefined);
  }

  /**
   * Opens the spool: verifies sealed segments, keeps the valid prefix of an active segment left by
   * a crash (cutting a torn tail) and seals it. `seqAcked`/`indexAcked` come from the agent state.
   */
  static async open(
    dir: string,
    volumeSetId: Buffer,
    volumeCount: number,
    seqAcked: number,
    indexAcked: number,
    options: SpoolOptions = {},
  ): Promise<{ spool: Spool; recovery: SpoolRecovery }> {
    await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE_PRIVATE });
    const names = (await fsp.readdir(dir)).sort();
    const spool = new Spool(
      dir,
      volumeSetId,
      volumeCount,
      { nextIndex: indexAcked + 1, seqNext: seqAcked + 1 },
      options,
    );
    const recovery: SpoolRecovery = { tornBytes: 0, tornReason: undefined, recoveredRecords: 0 };
    // Spare files are numbered by their own counter, which must not reuse a name on disk.
    for (const name of names) {
      const number = Number.parseInt(name, 10);
      if (isFreeName(name) && Number.isSafeInteger(number))
        spool.nextFreeName = Math.max(spool.nextFreeName, number + 1);
    }
    for (const name of names) {
      const file = path.join(dir, name);
      if (name.endsWith('.tmp') || name.includes('.tmp-')) {
        await fsp.rm(file, { force: true });
      } else if (name.endsWith(SEALED_SUFFIX)) {
        spool.adoptSealed(file, await fsp.readFile(file));
      } else if (name.endsWith(ACTIVE_SUFFIX)) {
        Object.assign(recovery, await spool.recoverActive(file));
      } else if (isFreeName(name)) {
        await spool.adoptFree(file, name.endsWith(RECYCLED_SUFFIX));
      }
    }
    await fsyncDir(dir);
    return { spool, recovery };
  }

  private adoptSealed(file: string, buf: Buffer): void {
    const parsed = parseSealedRedo(buf, file, this.volumeCount);
    if (parsed.header.segmentIndex < this.nextIndex) {
      // Already acknowledged by the manager before a crash cut the cleanup short.
      fs.rmSync(file, { force: true });
      return;
    }
    if (parsed.header.seqFirst !== this.seqNext) {
      throw new RewindError(
        'REWIND_SEQ_GAP',
        `spool segment ${file} starts at seq ${parsed.header.seqFirst}, expected ${this.seqNext}`,
        {
          hint: 'the spool is not continuous; keep the files for inspection and contact support',
        },
      );
    }
    this.sealed.push({
      index: parsed.header.segmentIndex,
      file,
      seqFirst: parsed.header.seqFirst,
      seqLast: parsed.trailer.seqLast,
      bytes: buf.length,
      resync: (parsed.header.flags & SEGMENT_FLAG_RESYNC) !== 0,
    });
    this.nextIndex = parsed.header.segmentIndex + 1;
    this.seqNext = parsed.trailer.seqLast + 1;
  }

  /** A spare file found at start: kept for reuse while there is room, else deleted. */
  private async adoptFree(file: string, recycled: boolean): Promise<void> {
    if (this.free.length >= FREE_FILES_MAX) {
      await fsp.rm(file, { force: true });
      return;
    }
    this.free.push({ file, recycled });
  }

  private async recoverActive(file: string): Promise<SpoolRecovery> {
    const buf = await fsp.readFile(file);
    if (buf.length < REDO_HEADER_BYTES) {
      await fsp.rm(file, { force: true }); // created but header never written: holds no record
      return { tornBytes: buf.length, tornReason: undefined, recoveredRecords: 0 };
    }
    if (
      crc32c(buf.subarray(0, REDO_HEADER_CRC_OFFSET)) !== buf.readUInt32LE(REDO_HEADER_CRC_OFFSET)
    ) {
      // The header is the first thing written and every fdatasync of the segment covers it, so a
      // header that fails its own CRC was never made durable, and neither was any record after it
      // (a power loss kept some later sectors but not the first). The valid prefix is empty; the
      // dirty map's resync logs what the lost records wrote. (A whole header of another format
      // version is not torn: scanRedo refuses it below.)
      await fsp.rm(file, { force: true });
      const reason = new SegmentError(
        'REWIND_SEGMENT_TRUNCATED',
        file,
        0,
        'the header never reached the disk whole',
      );
      return { tornBytes: buf.length, tornReason: reason, recoveredRecords: 0 };
    }
    const scan = scanRedo(buf, file, this.volumeCount);
    if (scan.header.segmentIndex < this.nextIndex && scan.header.seqFirst < this.seqNext) {
      // A recycled file renamed for a new segment whose header never reached the disk: it still
      // holds the header of the segment it was before. Nothing in it was ever made durable for
      // the new segment (an fdatasync would have covered that header), so it holds no record;
      // the dirty map's resync logs what its lost records wrote.
      await this.recycleFile(file);
      return { tornBytes: 0, tornReason: undefined, recoveredRecords: 0 };
    }
    if (scan.trailer !== undefined) {
      // The crash came after the trailer was written but before the rename: finish the seal.
      const fd = fs.openSync(file, 'r+');
      fs.ftruncateSync(fd, scan.validBytes); // a recycled file may hold more after the trailer
      rewriteDurably(file, buf, scan.validBytes, fd);
      fs.closeSync(fd);
      const sealedFile = path.join(this.dir, segmentName(scan.header.segmentIndex, SEALED_SUFFIX));
      await fsp.rename(file, sealedFile);
      await fsyncDir(this.dir);
      this.adoptSealed(sealedFile, buf.subarray(0, scan.validBytes));
      return { tornBytes: 0, tornReason: undefined, recoveredRecords: scan.records.length };
    }
    if (scan.header.seqFirst !== this.seqNext || scan.header.segmentIndex !== this.nextIndex) {
      throw new RewindError(
        'REWIND_SEQ_GAP',
        `active segment ${file} does not continue the spool (seq ${scan.header.seqFirst}, expected ${this.seqNext})`,
      );
    }
    const fd = fs.openSync(file, 'r+');
    fs.ftruncateSync(fd, scan.validBytes);
    if (scan.records.length > 0) rewriteDurably(file, buf, scan.validBytes, fd);
    const first = scan.records[0];
    const last = scan.records[scan.records.length - 1];
    this.active = {
      index: scan.header.segmentIndex,
      file,
      fd,
      directFd: undefined,
      positionBytes: scan.validBytes,
      committedBytes: scan.validBytes,
      crc: scan.validCrc,
      seqFirst: scan.header.seqFirst,
      recordCount: scan.records.length,
      timeFirstNs: first?.timeNs ?? 0n,
      timeLastNs: last?.timeNs ?? 0n,
      createdMs: Date.now(),
      flags: scan.header.flags,
      version: buf.readUInt16LE(8),
      fileBytes: 0,
    };
    this.seqNext = scan.header.seqFirst + scan.records.length;
    this.nextIndex = scan.header.segmentIndex + 1;
    if (scan.records.length === 0) {
      fs.closeSync(fd);
      await fsp.rm(file, { force: true });
      this.active = undefined;
      this.nextIndex = scan.header.segmentIndex;
    } else {
      await this.seal();
    }
    return {
      tornBytes: nonZeroTailBytes(buf, scan.validBytes),
      tornReason: scan.stopReason,
      recoveredRecords: scan.records.length,
    };
  }

  get seqNextExpected(): number {
    return this.seqNext;
  }

  get activeBytes(): number {
    return this.active?.positionBytes ?? 0;
  }

  get activeRecords(): number {
    return this.active?.recordCount ?? 0;
  }

  get activeAgeMs(): number {
    return this.active ? Date.now() - this.active.createdMs : 0;
  }

  /**
   * Bytes of per-write history waiting (sealed redo segments and the active one): what the spool
   * bound limits. Resync segments are not counted; they are bounded by the dirty regions.
   */
  get redoBytes(): number {
    const active =
      this.active && (this.active.flags & SEGMENT_FLAG_RESYNC) === 0
        ? this.active.positionBytes
        : 0;
    return this.sealed.reduce((sum, s) => sum + (s.resync ? 0 : s.bytes), 0) + active;
  }

  get totalBytes(): number {
    return this.sealed.reduce((sum, s) => sum + s.bytes, 0) + this.activeBytes;
  }

  /** Spare files kept for the next segments (recycled or preallocated), for status and tests. */
  get freeFiles(): readonly { file: string; recycled: boolean }[] {
    return this.free;
  }

  /**
   * Reserves the place of a batch of `recordCount` records (`recordBytes` of headers and
   * payloads, seqs from `seqFirst`) at the end of the active segment, starting a segment first if
   * there is none. A batch of at least ALIGNED_BATCH_BYTES_MIN bytes gets a pad after it so that
   * it ends on a 4 KiB boundary, and direct I/O (where the spool uses it) from its first 4 KiB
   * boundary on; the head before that boundary is written buffered.
   * Reservations are committed (or rolled back, the last one first) in the order they were made.
   */
  async reserve(batch: {
    recordCount: number;
    recordBytes: number;
    seqFirst: number;
    timeFirstNs: bigint;
    timeLastNs: bigint;
    flags?: number;
    createdNs?: bigint;
  }): Promise<LogReservation> {
    const flags = batch.flags ?? 0;
    assert(
      batch.seqFirst === this.seqNext,
      `reserve at seq ${batch.seqFirst}, spool expects ${this.seqNext}`,
    );
    assert(batch.recordCount > 0, 'a batch holds records');
    const active = this.active ?? (await this.startSegment(flags, batch.createdNs));
    assert(active.flags === flags, 'a segment holds records of one kind');
    assert(active.version === REDO_VERSION, 'only current-version segments are appended to');
    assert(active.committedBytes === active.positionBytes, 'one batch in flight at a time');
    const positionBytes = active.positionBytes;
    const aligned = batch.recordBytes >= this.alignedBatchBytesMin;
    const padBytes = aligned ? padBytesAt(positionBytes + batch.recordBytes) : 0;
    const end = positionBytes + batch.recordBytes + padBytes;
    // An aligned batch ends on a boundary; from the first boundary inside it, it goes direct.
    const directFromBytes = Math.ceil(positionBytes / PAD_ALIGN_BYTES) * PAD_ALIGN_BYTES;
    const direct = aligned && active.directFd !== undefined && directFromBytes < end;
    const reservation: LogReservation = {
      segmentIndex: active.index,
      fd: active.fd,
      directFd: direct ? active.directFd : undefined,
      directFromBytes: direct ? directFromBytes : end,
      positionBytes,
      recordBytes: batch.recordBytes,
      padBytes,
      seqFirst: batch.seqFirst,
      recordCount: batch.recordCount,
      timeFirstNs: batch.timeFirstNs,
      timeLastNs: batch.timeLastNs,
      chainIn: active.crc,
    };
    active.positionBytes = end;
    this.seqNext += batch.recordCount;
    return reservation;
  }

  /** The batch's bytes reached the kernel: the segment holds its records, `chainOut` after them. */
  commit(reservation: LogReservation, chainOut: number): void {
    const active = this.active;
    assert(
      active !== undefined && active.index === reservation.segmentIndex,
      'commit to its segment',
    );
    assert(active.committedBytes === reservation.positionBytes, 'commits in reservation order');
    active.committedBytes =
      reservation.positionBytes + reservation.recordBytes + reservation.padBytes;
    active.crc = chainOut;
    if (active.recordCount === 0) active.timeFirstNs = reservation.timeFirstNs;
    active.recordCount += reservation.recordCount;
    active.timeLastNs = reservation.timeLastNs;
  }

  /**
   * The batch's log write failed: nothing of it counts. The segment ends where it ended before
   * (truncated there, so a full disk can be handled by the caller, e.g. by going degraded); only
   * the last reservation can be rolled back.
   */
  rollback(reservation: LogReservation): void {
    const active = this.active;
    assert(
      active !== undefined && active.index === reservation.segmentIndex,
      'rollback in its segment',
    );
    const end = reservation.positionBytes + reservation.recordBytes + reservation.padBytes;
    assert(active.positionBytes === end, 'only the last reservation is rolled back');
    assert(
      this.seqNext === reservation.seqFirst + reservation.recordCount,
      'seqs of the last reservation',
    );
    active.positionBytes = reservation.positionBytes;
    this.seqNext = reservation.seqFirst;
    fs.ftruncateSync(active.fd, reservation.positionBytes);
    active.fileBytes = 0; // the file now ends here: nothing past it to cut at the seal
  }

  /**
   * Appends encoded records (headers and payloads, in seq order) with one positional writev, on
   * this thread (resync records, tests). `recordHeaders` are the record headers among `pieces`,
   * for the body chain CRC; `timeFirstNs`/`timeLastNs` are the batch's capture times.
   */
  async append(
    pieces: Buffer[],
    recordHeaders: readonly Buffer[],
    seqFirst: number,
    recordCount: number,
    timeFirstNs: bigint,
    timeLastNs: bigint,
    flags = 0,
    createdNs?: bigint,
  ): Promise<void> {
    assert(recordHeaders.length === recordCount, 'one header per record');
    let bytes = 0;
    for (const piece of pieces) bytes += piece.length;
    const reservation = await this.reserve({
      recordCount,
      recordBytes: bytes,
      seqFirst,
      timeFirstNs,
      timeLastNs,
      flags,
      ...(createdNs === undefined ? {} : { createdNs }),
    });
    let crc = reservation.chainIn;
    for (const header of recordHeaders) crc = chainRecordHeader(header, crc);
    const all = reservation.padBytes > 0 ? [...pieces, padPiece(reservation)] : pieces;
    try {
      await writeAllAt(reservation.fd, all, reservation.positionBytes);
    } catch (error) {
      this.rollback(reservation);
      throw error;
    }
    this.commit(
      reservation,
      reservation.padBytes > 0 ? chainRecordHeader(all[all.length - 1] as Buffer, crc) : crc,
    );
  }

  /** `createdNs` of a resync segment is where its window without per-write history starts. */
  private async startSegment(flags: number, createdNs = nowNs()): Promise<ActiveSegment> {
    const index = this.nextIndex;
    this.nextIndex += 1;
    const file = path.join(this.dir, segmentName(index, ACTIVE_SUFFIX));
    const header = encodeRedoHeader({
      volumeSetId: this.volumeSetId,
      segmentIndex: index,
      seqFirst: this.seqNext,
      createdNs,
      flags,
    });
    const spare = this.takeFree();
    let fd: number;
    let fileBytes = 0;
    if (spare === undefined) {
      fd = fs.openSync(file, 'w+', FILE_MODE_PRIVATE);
    } else {
      fs.renameSync(spare.file, file);
      fd = fs.openSync(file, 'r+');
      fileBytes = fs.fstatSync(fd).size;
    }
    // Direct I/O for the aligned part of large batches, in a new file as in a reused one.
    const directFd = this.openDirect(file);
    writeFullySync(fd, header, 0);
    const active: ActiveSegment = {
      index,
      file,
      fd,
      directFd,
      positionBytes: header.length,
      committedBytes: header.length,
      crc: chainRedoHeader(header),
      seqFirst: this.seqNext,
      recordCount: 0,
      timeFirstNs: 0n,
      timeLastNs: 0n,
      createdMs: Date.now(),
      flags,
      version: REDO_VERSION,
      fileBytes,
    };
    this.active = active;
    await fsyncDir(this.dir); // the new file's name must survive a crash once a FLUSH covers it
    this.prepareNext();
    return active;
  }

  /** A spare file for the next segment: a recycled one first (its blocks are written). */
  private takeFree(): FreeFile | undefined {
    const index = this.free.findIndex((f) => f.recycled);
    if (index >= 0) return this.free.splice(index, 1)[0];
    return this.free.shift();
  }

  private openDirect(file: string): number | undefined {
    if (!this.direct) return undefined;
    try {
      return fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
    } catch (error) {
      rethrowIfBug(error);
      this.direct = false;
      this.warn(`direct I/O refused for the spool (${errorMessage(error)}); using buffered writes`);
      return undefined;
    }
  }

  /**
   * Makes sure a spare file waits for the segment after this one: none recycled, so a new one is
   * preallocated in the background (util-linux fallocate), and appends into it overwrite blocks
   * that exist instead of allocating them on the write path. A failure turns preallocation off.
   */
  private prepareNext(): void {
    if (!this.preallocate || this.preparing !== undefined || this.free.length > 0) return;
    const file = path.join(this.dir, segmentName(this.nextFreeName++, PREALLOCATED_SUFFIX));
    const temp = `${file}.tmp`;
    this.preparing = (async () => {
      fs.closeSync(fs.openSync(temp, 'w'));
      await preallocateTools.run(temp, this.segmentBytes, PREALLOCATE_TIMEOUT_MS);
      fs.renameSync(temp, file);
      this.free.push({ file, recycled: false });
    })().then(
      () => {
        this.preparing = undefined;
      },
      (error: unknown) => {
        rethrowIfBug(error);
        // A half-made temp file stays until the next start removes it (names with .tmp).
        this.preparing = undefined;
        this.preallocate = false;
        this.warn(
          `preallocating spool files failed (${errorMessage(error)}); new segments grow as they are written`,
        );
      },
    );
  }

  /** A segment file no longer needed: kept for a later segment while there is room. */
  private async recycleFile(file: string): Promise<boolean> {
    if (this.free.length >= FREE_FILES_MAX) {
      await fsp.rm(file, { force: true });
      return false;
    }
    const target = path.join(this.dir, segmentName(this.nextFreeName++, RECYCLED_SUFFIX));
    await fsp.rename(file, target);
    this.free.push({ file: target, recycled: true });
    return true;
  }

  /** Makes every appended record durable (FLUSH and FUA). */
  async sync(): Promise<void> {
    if (this.active) await fdatasyncAsync(this.active.fd);
  }

  /** Seals the active segment (trailer, fdatasync, rename). Returns it, or undefined when empty. */
  async seal(): Promise<SealedSegment | undefined> {
    const active = this.active;
    if (!active || active.recordCount === 0) return undefined;
    assert(active.committedBytes === active.positionBytes, 'no batch in flight at a seal');
    this.active = undefined;
    const trailer = encodeRedoTrailer(
      {
        recordCount: active.recordCount,
        seqFirst: active.seqFirst,
        seqLast: active.seqFirst + active.recordCount - 1,
        timeFirstNs: active.timeFirstNs,
        timeLastNs: active.timeLastNs,
        bodyBytes: active.positionBytes,
        bodyCrc: active.crc,
      },
      active.version,
    );
    const bytes = active.positionBytes + trailer.length;
    await writevAsync(active.fd, [trailer], active.positionBytes);
    // A recycled or preallocated file is longer than the segment: a sealed segment ends at its
    // trailer, and the cut is made durable by the same fdatasync.
    if (active.fileBytes > bytes) fs.ftruncateSync(active.fd, bytes);
    await fdatasyncAsync(active.fd);
    crashPoint('seal'); // trailer durable, not yet renamed
    fs.closeSync(active.fd);
    if (active.directFd !== undefined) fs.closeSync(active.directFd);
    const sealedFile = path.join(this.dir, segmentName(active.index, SEALED_SUFFIX));
    await fsp.rename(active.file, sealedFile);
    await fsyncDir(this.dir);
    const segment: SealedSegment = {
      index: active.index,
      file: sealedFile,
      seqFirst: active.seqFirst,
      seqLast: active.seqFirst + active.recordCount - 1,
      bytes,
      resync: (active.flags & SEGMENT_FLAG_RESYNC) !== 0,
    };
    this.sealed.push(segment);
    return segment;
  }

  /**
   * Frees sealed segments up to and including `index` once the manager committed them. Their
   * files are kept for later segments (up to FREE_FILES_MAX) unless another name links them (in
   * `rewind up` the manager keeps the same file as its redo copy), and deleted otherwise.
   */
  async release(index: number): Promise<number> {
    let freed = 0;
    while (this.sealed.length > 0 && (this.sealed[0]?.index ?? Infinity) <= index) {
      const segment = this.sealed.shift() as SealedSegment;
      const links = (await fsp.stat(segment.file).catch(missingFile))?.nlink ?? 0;
      if (links === 1) await this.recycleFile(segment.file);
      else await fsp.rm(segment.file, { force: true });
      freed += segment.bytes;
    }
    if (freed > 0) await fsyncDir(this.dir);
    return freed;
  }

  /** Waits for a preallocation under way (it writes into the spool directory). */
  async settle(): Promise<void> {
    await this.preparing;
  }

  close(): void {
    if (this.active) {
      fs.closeSync(this.active.fd);
      if (this.active.directFd !== undefined) fs.closeSync(this.active.directFd);
    }
    this.active = undefined;
  }
}

function missingFile(error: unknown): undefined {
  rethrowIfBug(error);
  if ((error as { code?: string }).code === 'ENOENT') return undefined;
  throw error;
}

/** The pad record (zero filler) after a reserved batch, as its own buffer. */
function padPiece(reservation: LogReservation): Buffer {
  const at = reservation.positionBytes + reservation.recordBytes;
  const piece = Buffer.allocUnsafe(reservation.padBytes);
  encodePadAt(piece, 0, at, reservation.seqFirst + reservation.recordCount);
  return piece;
}

/** Writes `pieces` back to back at `positionBytes`: small ones here, large on the threadpool. */
export async function writeAllAt(
  fd: number,
  pieces: readonly Buffer[],
  positionBytes: number,
): Promise<void> {
  let bytes = 0;
  for (const piece of pieces) bytes += piece.length;
  let written = 0;
  // writev may write less than asked (large batches): continue with what is left.
  for (let guard = 0; written < bytes; guard++) {
    assert(guard < 1_000_000, 'writev makes progress');
    const rest = sliceFrom(pieces, written);
    written +=
      bytes <= SYNC_APPEND_BYTES_MAX
        ? fs.writevSync(fd, rest, positionBytes + written)
        : await writevAsync(fd, rest, positionBytes + written);
  }
}

/** The pieces after the first `skipBytes` bytes (views), at most IOV_MAX of them. */
export function sliceFrom(pieces: readonly Buffer[], skipBytes: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = skipBytes;
  for (const piece of pieces) {
    if (skip >= piece.length) {
      skip -= piece.length;
      continue;
    }
    out.push(skip > 0 ? piece.subarray(skip) : piece);
    skip = 0;
    if (out.length === IOV_MAX) break;
  }
  return out;
}

/** Linux's limit on the buffers of one writev. */
const IOV_MAX = 1024;

/**
 * Bytes after `validBytes` up to the last one that is not zero: what was cut. The zeroes of a
 * preallocated file's unwritten end are not counted; a recycled file's stale records are.
 */
function nonZeroTailBytes(buf: Buffer, validBytes: number): number {
  const step = 64 * 1024;
  let end = buf.length;
  // Whole zero chunks from the end first (a preallocated file is mostly zeroes), then bytes.
  while (end - step >= validBytes && isZero(buf.subarray(end - step, end))) end -= step;
  while (end > validBytes && buf[end - 1] === 0) end -= 1;
  return end - validBytes;
}

/**
 * Writes `buf[0, length)` back over the same bytes of `file` and fdatasyncs it. What a crashed
 * agent left in the page cache is readable but not necessarily durable (never synced, or dropped
 * from the way to the disk by a failed fsync, which a later fsync does not report again); writing
 * it again makes the sync that follows cover it.
 */
function rewriteDurably(file: string, buf: Buffer, length: number, openFd?: number): void {
  const fd = openFd ?? fs.openSync(file, 'r+');
  try {
    for (let done = 0; done < length;) done += fs.writeSync(fd, buf, done, length - done, done);
    fs.fdatasyncSync(fd);
  } finally {
    if (openFd === undefined) fs.closeSync(fd);
  }
}
