// The agent's spool: one active redo segment being appended to, and sealed segments waiting to
// ship. Owns segment file naming, the running checksum, sealing, and recovery of a torn active
// segment.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { assert, crashPoint, crc32c, nowNs, RewindError, SegmentError } from '../core/index.js';
import {
  chainRecordHeader,
  chainRedoHeader,
  encodeRedoHeader,
  encodeRedoTrailer,
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
  fsyncDir,
  writevAsync,
} from '../platform/index.js';

/** Appends up to this many bytes are written synchronously (see append). */
const SYNC_APPEND_BYTES_MAX = 256 * 1024;

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
  positionBytes: number;
  crc: number;
  seqFirst: number;
  recordCount: number;
  timeFirstNs: bigint;
  timeLastNs: bigint;
  createdMs: number;
  flags: number;
  /**
   * Format version of the header: a version 1 segment recovered after an upgrade is sealed as one.
   */
  version: number;
}

export interface SpoolRecovery {
  /** Bytes cut from the end of the active segment because they were torn or corrupt. */
  tornBytes: number;
  tornReason: SegmentError | undefined;
  /** Records kept from the active segment found at start (sealed during recovery). */
  recoveredRecords: number;
}

const SEALED_SUFFIX = '.redo';
const ACTIVE_SUFFIX = '.redo.active';

function segmentName(index: number, suffix: string): string {
  return `${String(index).padStart(16, '0')}${suffix}`;
}

export class Spool {
  readonly dir: string;
  private readonly volumeSetId: Buffer;
  private readonly volumeCount: number;
  private active: ActiveSegment | undefined;
  readonly sealed: SealedSegment[] = [];
  private nextIndex: number;
  /** The seq the next record must carry. */
  private seqNext: number;

  private constructor(
    dir: string,
    volumeSetId: Buffer,
    volumeCount: number,
    nextIndex: number,
    seqNext: number,
  ) {
    this.dir = dir;
    this.volumeSetId = volumeSetId;
    this.volumeCount = volumeCount;
    this.nextIndex = nextIndex;
    this.seqNext = seqNext;
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
  ): Promise<{ spool: Spool; recovery: SpoolRecovery }> {
    await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE_PRIVATE });
    const names = (await fsp.readdir(dir)).sort();
    const spool = new Spool(dir, volumeSetId, volumeCount, indexAcked + 1, seqAcked + 1);
    const recovery: SpoolRecovery = { tornBytes: 0, tornReason: undefined, recoveredRecords: 0 };
    for (const name of names) {
      const file = path.join(dir, name);
      if (name.endsWith('.tmp') || name.includes('.tmp-')) {
        await fsp.rm(file, { force: true });
      } else if (name.endsWith(SEALED_SUFFIX)) {
        spool.adoptSealed(file, await fsp.readFile(file));
      } else if (name.endsWith(ACTIVE_SUFFIX)) {
        Object.assign(recovery, await spool.recoverActive(file));
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
    if (scan.trailer !== undefined) {
      // The crash came after the trailer was written but before the rename: finish the seal.
      rewriteDurably(file, buf, buf.length);
      const sealedFile = path.join(this.dir, segmentName(scan.header.segmentIndex, SEALED_SUFFIX));
      await fsp.rename(file, sealedFile);
      await fsyncDir(this.dir);
      this.adoptSealed(sealedFile, buf);
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
      positionBytes: scan.validBytes,
      crc: scan.validCrc,
      seqFirst: scan.header.seqFirst,
      recordCount: scan.records.length,
      timeFirstNs: first?.timeNs ?? 0n,
      timeLastNs: last?.timeNs ?? 0n,
      createdMs: Date.now(),
      flags: scan.header.flags,
      version: buf.readUInt16LE(8),
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
      tornBytes: buf.length - scan.validBytes,
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

  /**
   * Appends encoded records (headers and payloads, in seq order) with one positional writev.
   * `recordHeaders` are the record headers among `pieces`, for the body chain CRC. The caller
   * serialises appends; `timeFirstNs`/`timeLastNs` are the batch's capture times.
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
    assert(seqFirst === this.seqNext, `append at seq ${seqFirst}, spool expects ${this.seqNext}`);
    const active = this.active ?? (await this.startSegment(flags, createdNs));
    assert(active.flags === flags, 'a segment holds records of one kind');
    assert(active.version === REDO_VERSION, 'only current-version segments are appended to');
    const before = {
      seqNext: this.seqNext,
      crc: active.crc,
      positionBytes: active.positionBytes,
      recordCount: active.recordCount,
      timeFirstNs: active.timeFirstNs,
      timeLastNs: active.timeLastNs,
    };
    this.seqNext += recordCount;
    assert(recordHeaders.length === recordCount, 'one header per record');
    for (const header of recordHeaders) active.crc = chainRecordHeader(header, active.crc);
    let bytes = 0;
    for (const piece of pieces) bytes += piece.length;
    const position = active.positionBytes;
    active.positionBytes += bytes;
    if (active.recordCount === 0) active.timeFirstNs = timeFirstNs;
    active.recordCount += recordCount;
    active.timeLastNs = timeLastNs;
    let written = 0;
    try {
      // writev may write less than asked (large batches): continue with what is left.
      for (let guard = 0; written < bytes; guard++) {
        assert(guard < 1_000_000, 'writev makes progress');
        const rest = sliceFrom(pieces, written).slice(0, 1024);
        // A small batch is written on the event loop: a threadpool round trip costs more than the
        // copy into the page cache. A large one goes to the threadpool, so the copy runs on
        // another core while the production writes run here.
        written +=
          bytes <= SYNC_APPEND_BYTES_MAX
            ? fs.writevSync(active.fd, rest, position + written)
            : await writevAsync(active.fd, rest, position + written);
      }
    } catch (error) {
      // Nothing of this batch counts: the segment ends where it ended before (a full disk can
      // then be handled by the caller, e.g. by going degraded).
      Object.assign(active, {
        crc: before.crc,
        positionBytes: before.positionBytes,
        recordCount: before.recordCount,
        timeFirstNs: before.timeFirstNs,
        timeLastNs: before.timeLastNs,
      });
      this.seqNext = before.seqNext;
      fs.ftruncateSync(active.fd, before.positionBytes);
      throw error;
    }
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
    const fd = fs.openSync(file, 'w+', FILE_MODE_PRIVATE);
    fs.writeSync(fd, header, 0, header.length, 0);
    const active: ActiveSegment = {
      index,
      file,
      fd,
      positionBytes: header.length,
      crc: chainRedoHeader(header),
      seqFirst: this.seqNext,
      recordCount: 0,
      timeFirstNs: 0n,
      timeLastNs: 0n,
      createdMs: Date.now(),
      flags,
      version: REDO_VERSION,
    };
    this.active = active;
    await fsyncDir(this.dir); // the new file's name must survive a crash once a FLUSH covers it
    return active;
  }

  /** Makes every appended record durable (FLUSH and FUA). */
  async sync(): Promise<void> {
    if (this.active) await fdatasyncAsync(this.active.fd);
  }

  /** Seals the active segment (trailer, fdatasync, rename). Returns it, or undefined when empty. */
  async seal(): Promise<SealedSegment | undefined> {
    const active = this.active;
    if (!active || active.recordCount === 0) return undefined;
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
    await writevAsync(active.fd, [trailer], active.positionBytes);
    await fdatasyncAsync(active.fd);
    crashPoint('seal'); // trailer durable, not yet renamed
    fs.closeSync(active.fd);
    const sealedFile = path.join(this.dir, segmentName(active.index, SEALED_SUFFIX));
    await fsp.rename(active.file, sealedFile);
    await fsyncDir(this.dir);
    const segment: SealedSegment = {
      index: active.index,
      file: sealedFile,
      seqFirst: active.seqFirst,
      seqLast: active.seqFirst + active.recordCount - 1,
      bytes: active.positionBytes + trailer.length,
      resync: (active.flags & SEGMENT_FLAG_RESYNC) !== 0,
    };
    this.sealed.push(segment);
    return segment;
  }

  /** Deletes sealed segments up to and including `index` once the manager committed them. */
  async release(index: number): Promise<number> {
    let freed = 0;
    while (this.sealed.length > 0 && (this.sealed[0]?.index ?? Infinity) <= index) {
      const segment = this.sealed.shift() as SealedSegment;
      await fsp.rm(segment.file, { force: true });
      freed += segment.bytes;
    }
    if (freed > 0) await fsyncDir(this.dir);
    return freed;
  }

  close(): void {
    if (this.active) fs.closeSync(this.active.fd);
    this.active = undefined;
  }
}

function sliceFrom(pieces: readonly Buffer[], skipBytes: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = skipBytes;
  for (const piece of pieces) {
    if (skip >= piece.length) {
      skip -= piece.length;
      continue;
    }
    out.push(skip > 0 ? piece.subarray(skip) : piece);
    skip = 0;
  }
  return out;
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
