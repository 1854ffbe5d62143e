// A clone's private overlay for one volume: a sparse data file at volume offsets plus a journal of
// written ranges (checksummed entries; a torn tail is cut on open). Writes never reach the replica.
import fs from 'node:fs';
import { crc32c } from '../core/index.js';
import {
  FILE_MODE_PRIVATE,
  fdatasyncAsync,
  writeFullySync,
  writeZeroesSync,
} from '../platform/index.js';
import { IntervalMap } from './interval-map.js';

const ENTRY_BYTES = 24; // u8 kind, 3 pad, u64 offset, u64 length, u32 crc32c of the first 20 bytes

export class Overlay {
  readonly map = new IntervalMap<'data' | 'zero'>();
  readonly dataFd: number;
  private readonly journalFd: number;
  private journalBytes: number;

  private constructor(dataFd: number, journalFd: number, journalBytes: number) {
    this.dataFd = dataFd;
    this.journalFd = journalFd;
    this.journalBytes = journalBytes;
  }

  static open(dataFile: string, journalFile: string, sizeBytes: number): Overlay {
    if (!fs.existsSync(dataFile)) {
      const fd = fs.openSync(dataFile, 'w', FILE_MODE_PRIVATE);
      fs.ftruncateSync(fd, sizeBytes);
      fs.closeSync(fd);
    }
    const dataFd = fs.openSync(dataFile, 'r+');
    const journalFd = fs.openSync(
      journalFile,
      fs.existsSync(journalFile) ? 'r+' : 'w+',
      FILE_MODE_PRIVATE,
    );
    const journal = fs.readFileSync(journalFile);
    const overlay = new Overlay(dataFd, journalFd, 0);
    let at = 0;
    for (; at + ENTRY_BYTES <= journal.length; at += ENTRY_BYTES) {
      const entry = journal.subarray(at, at + ENTRY_BYTES);
      if (crc32c(entry.subarray(0, 20)) !== entry.readUInt32LE(20)) break; // torn tail
      const kind = entry.readUInt8(0) === 1 ? 'data' : 'zero';
      const offset = Number(entry.readBigUInt64LE(4));
      const length = Number(entry.readBigUInt64LE(12));
      overlay.map.set(offset, offset + length, kind, offset);
    }
    fs.ftruncateSync(journalFd, at);
    overlay.journalBytes = at;
    return overlay;
  }

  get hasWrites(): boolean {
    return this.map.size > 0;
  }

  write(offsetBytes: number, data: Buffer): void {
    writeFullySync(this.dataFd, data, offsetBytes);
    this.record('data', offsetBytes, data.length);
  }

  zero(offsetBytes: number, lengthBytes: number): void {
    if (lengthBytes <= 1024 * 1024) writeZeroesSync(this.dataFd, offsetBytes, lengthBytes);
    this.record('zero', offsetBytes, lengthBytes);
  }

  private record(kind: 'data' | 'zero', offsetBytes: number, lengthBytes: number): void {
    const entry = Buffer.alloc(ENTRY_BYTES);
    entry.writeUInt8(kind === 'data' ? 1 : 2, 0);
    entry.writeBigUInt64LE(BigInt(offsetBytes), 4);
    entry.writeBigUInt64LE(BigInt(lengthBytes), 12);
    entry.writeUInt32LE(crc32c(entry.subarray(0, 20)), 20);
    writeFullySync(this.journalFd, entry, this.journalBytes);
    this.journalBytes += ENTRY_BYTES;
    this.map.set(offsetBytes, offsetBytes + lengthBytes, kind, offsetBytes);
  }

  /** Drops every write of the clone (data punched out, journal emptied), durably. */
  async discard(): Promise<void> {
    const size = fs.fstatSync(this.dataFd).size;
    fs.ftruncateSync(this.dataFd, 0);
    fs.ftruncateSync(this.dataFd, size);
    fs.ftruncateSync(this.journalFd, 0);
    this.journalBytes = 0;
    this.map.clear();
    await this.flush();
  }

  async flush(): Promise<void> {
    await Promise.all([fdatasyncAsync(this.dataFd), fdatasyncAsync(this.journalFd)]);
  }

  close(): void {
    fs.closeSync(this.dataFd);
    fs.closeSync(this.journalFd);
  }
}
