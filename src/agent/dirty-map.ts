// Persistent dirty map of one volume: a bitmap of regions whose production bytes may differ from
// the replica. Write-ahead: a region is marked durably before any production write into it.
// Cleaning is lazy (DRBD activity-log style): a committed region is cleared only once it has gone
// quiet, so a busy region costs one durable mark, not one per commit.
import fs from 'node:fs';
import { assert, bitClear, bitGet, bitSet } from '../core/index.js';
import { FILE_MODE_PRIVATE, fdatasyncAsync, writeFullySync } from '../platform/index.js';

export const REGION_BYTES_DEFAULT = 1024 * 1024;
/**
 * A write that newly marks a region right after a marked one looks sequential: this many regions
 * after it are marked in the same durable write, so a sequential stream pays one dirty-map
 * fdatasync per 32 MiB rather than one per batch. A region marked ahead holds no write yet: it is
 * owned by no seq (cleaned once quiet) and a resync of this process skips it until a write lands
 * in it; the price is at most this many regions more to resync after a crash.
 */
export const MARK_AHEAD_REGIONS = 32;

export class DirtyMap {
  readonly regionBytes: number;
  readonly regionCount: number;
  private readonly bits: Buffer;
  private readonly fd: number;
  /**
   * Newest seq that touched each marked region (only regions marked since this process started).
   */
  private readonly lastSeq = new Map<number, number>();
  private readonly lastTouchMs = new Map<number, number>();
  /** Regions this process marked ahead that no write has touched since: equal to the replica. */
  private readonly aheadOnly = new Set<number>();

  private constructor(fd: number, bits: Buffer, regionBytes: number, regionCount: number) {
    this.fd = fd;
    this.bits = bits;
    this.regionBytes = regionBytes;
    this.regionCount = regionCount;
  }

  static open(file: string, volumeSizeBytes: number, regionBytes = REGION_BYTES_DEFAULT): DirtyMap {
    const regionCount = Math.max(1, Math.ceil(volumeSizeBytes / regionBytes));
    const byteCount = Math.ceil(regionCount / 8);
    const exists = fs.existsSync(file);
    const fd = fs.openSync(file, exists ? 'r+' : 'w+', FILE_MODE_PRIVATE);
    const bits = Buffer.alloc(byteCount);
    if (exists) {
      fs.readSync(fd, bits, 0, Math.min(byteCount, fs.fstatSync(fd).size), 0);
    } else {
      writeFullySync(fd, bits, 0);
      fs.fdatasyncSync(fd);
    }
    return new DirtyMap(fd, bits, regionBytes, regionCount);
  }

  isMarked(region: number): boolean {
    return bitGet(this.bits, region);
  }

  /** Regions marked on disk: after an unclean stop these may differ from the replica. */
  markedRegions(): number[] {
    const out: number[] = [];
    for (let region = 0; region < this.regionCount; region++)
      if (this.isMarked(region)) out.push(region);
    return out;
  }

  /**
   * Marked regions that may differ from the replica: all marked ones but those this process
   * marked ahead and nothing has written since (a resync of them would log bytes the replica has).
   */
  regionsToResync(): number[] {
    return this.markedRegions().filter((region) => !this.aheadOnly.has(region));
  }

  /** How many marked regions are marked ahead only (for tests and status). */
  get aheadOnlyCount(): number {
    return this.aheadOnly.size;
  }

  get markedCount(): number {
    let count = 0;
    for (const byte of this.bits) {
      let b = byte;
      while (b) {
        count += b & 1;
        b >>= 1;
      }
    }
    return count;
  }

  /**
   * Records that `seq` will write [offset, offset + length). Returns true when a region was newly
   * marked, so the caller must `persist()` before issuing the production write.
   */
  touch(offsetBytes: number, lengthBytes: number, seq: number, nowMs: number): boolean {
    assert(lengthBytes > 0, 'touch of an empty range');
    const first = Math.floor(offsetBytes / this.regionBytes);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / this.regionBytes);
    assert(last < this.regionCount, 'touch inside the volume');
    let newlyMarked = false;
    for (let region = first; region <= last; region++) {
      this.lastSeq.set(region, seq);
      this.lastTouchMs.set(region, nowMs);
      this.aheadOnly.delete(region);
      if (!this.isMarked(region)) {
        this.mark(region);
        newlyMarked = true;
      }
    }
    if (newlyMarked && first > 0 && this.isMarked(first - 1)) {
      const end = Math.min(this.regionCount - 1, last + MARK_AHEAD_REGIONS);
      for (let region = last + 1; region <= end; region++) {
        if (this.isMarked(region)) continue;
        this.mark(region);
        this.lastSeq.set(region, 0);
        this.lastTouchMs.set(region, nowMs);
        this.aheadOnly.add(region);
      }
    }
    return newlyMarked;
  }

  private mark(region: number): void {
    bitSet(this.bits, region);
    this.dirtyBytesLow = Math.min(this.dirtyBytesLow, region >> 3);
    this.dirtyBytesHigh = Math.max(this.dirtyBytesHigh, (region >> 3) + 1);
  }

  private dirtyBytesLow = Number.MAX_SAFE_INTEGER;
  private dirtyBytesHigh = 0;

  /** Writes changed bitmap bytes (synchronously, so writes stay ordered) and makes them durable. */
  async persist(): Promise<void> {
    if (this.dirtyBytesHigh > this.dirtyBytesLow) {
      const low = this.dirtyBytesLow;
      writeFullySync(this.fd, this.bits.subarray(low, this.dirtyBytesHigh), low);
      this.dirtyBytesLow = Number.MAX_SAFE_INTEGER;
      this.dirtyBytesHigh = 0;
    }
    await fdatasyncAsync(this.fd);
  }

  /** True when clean() with the same arguments would clear a region. */
  cleanable(seqCommitted: number, nowMs: number, quietMs: number, hotMax: number): boolean {
    const pressure = this.lastSeq.size > hotMax;
    for (const [region, seq] of this.lastSeq)
      if (this.clearable(region, seq, seqCommitted, nowMs, quietMs, pressure)) return true;
    return false;
  }

  private clearable(
    region: number,
    seq: number,
    seqCommitted: number,
    nowMs: number,
    quietMs: number,
    pressure: boolean,
  ): boolean {
    return (
      seq <= seqCommitted && (pressure || nowMs - (this.lastTouchMs.get(region) ?? 0) >= quietMs)
    );
  }

  /**
   * Clears regions whose newest write is committed and that have been quiet for `quietMs`, or all
   * committed ones when more than `hotMax` are marked. Clearing needs no fsync: a lost clear only
   * costs a resync of a region that was already equal.
   */
  clean(seqCommitted: number, nowMs: number, quietMs: number, hotMax: number): number {
    let cleared = 0;
    const pressure = this.lastSeq.size > hotMax;
    for (const [region, seq] of this.lastSeq) {
      if (!this.clearable(region, seq, seqCommitted, nowMs, quietMs, pressure)) continue;
      bitClear(this.bits, region);
      this.dirtyBytesLow = Math.min(this.dirtyBytesLow, region >> 3);
      this.dirtyBytesHigh = Math.max(this.dirtyBytesHigh, (region >> 3) + 1);
      this.lastSeq.delete(region);
      this.lastTouchMs.delete(region);
      this.aheadOnly.delete(region);
      cleared += 1;
    }
    if (cleared > 0) {
      const low = this.dirtyBytesLow;
      writeFullySync(this.fd, this.bits.subarray(low, this.dirtyBytesHigh), low);
      this.dirtyBytesLow = Number.MAX_SAFE_INTEGER;
      this.dirtyBytesHigh = 0;
    }
    return cleared;
  }

  /** Marks every region and makes that durable (a pre-existing image before its first sync). */
  async markAll(): Promise<void> {
    for (let region = 0; region < this.regionCount; region++) bitSet(this.bits, region);
    this.aheadOnly.clear();
    this.dirtyBytesLow = 0;
    this.dirtyBytesHigh = this.bits.length;
    await this.persist();
  }

  /**
   * Makes `seq` (a resync's last) the owner of every marked region owned by an older seq or by
   * none (marked on disk at start, or skipped as zero): the resync covered them. A region a newer
   * write touched, or a degraded write the resync did not log, keeps its owner.
   */
  adoptMarked(seq: number, nowMs: number): void {
    for (const region of this.markedRegions()) {
      if ((this.lastSeq.get(region) ?? -1) >= seq) continue;
      this.lastSeq.set(region, seq);
      this.lastTouchMs.set(region, nowMs);
    }
  }

  close(): void {
    fs.closeSync(this.fd);
  }
}
