// Replica images of a volume set on the manager, plus a per-volume allocation bitmap (1 MiB chunks
// that may hold data). Node cannot ask the kernel for holes (no SEEK_DATA), so the bitmap is how
// building the undo of a huge trim over a sparse replica skips reading terabytes of zeroes.
import fs from 'node:fs';
import path from 'node:path';
import { bitBytes, bitGet, bitSet } from '../core/index.js';
import {
  DIR_MODE_PRIVATE,
  FILE_MODE_PRIVATE,
  fdatasyncAsync,
  fsyncDirSync,
  preadFully,
  writeFullySync,
} from '../platform/index.js';

export const ALLOC_CHUNK_BYTES = 1024 * 1024;

export class ReplicaVolume {
  readonly index: number;
  readonly name: string;
  readonly sizeBytes: number;
  readonly file: string;
  readonly fd: number;
  /** Inode of the open image (the apply worker checks it opens the same file). */
  readonly ino: number;
  private readonly allocFd: number;
  private readonly alloc: Buffer;
  private allocChanged = false;

  private constructor(
    index: number,
    name: string,
    sizeBytes: number,
    file: string,
    fd: number,
    allocFd: number,
    alloc: Buffer,
  ) {
    this.index = index;
    this.name = name;
    this.sizeBytes = sizeBytes;
    this.file = file;
    this.fd = fd;
    this.ino = fs.fstatSync(fd).ino;
    this.allocFd = allocFd;
    this.alloc = alloc;
  }

  static open(dir: string, index: number, name: string, sizeBytes: number): ReplicaVolume {
    fs.mkdirSync(dir, { recursive: true, mode: DIR_MODE_PRIVATE });
    const file = path.join(dir, `${name}.img`);
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, FILE_MODE_PRIVATE);
    // New, or created by an open whose fsync failed (its size may not have reached the disk):
    // sized now and made durable, file and name.
    if (fs.fstatSync(fd).size < sizeBytes) {
      fs.ftruncateSync(fd, sizeBytes);
      fs.fsyncSync(fd);
      fsyncDirSync(dir);
    }
    const allocFile = path.join(dir, `${name}.alloc`);
    const chunks = Math.ceil(sizeBytes / ALLOC_CHUNK_BYTES);
    // Shared memory: the apply worker reads the bitmap while building undo; only this thread writes
    // it.
    const alloc = Buffer.from(new SharedArrayBuffer(bitBytes(chunks)));
    const exists = fs.existsSync(allocFile);
    const allocFd = fs.openSync(allocFile, exists ? 'r+' : 'w+', FILE_MODE_PRIVATE);
    if (exists) preadFully(allocFd, alloc, 0, alloc.length, 0);
    else writeFullySync(allocFd, alloc, 0);
    return new ReplicaVolume(index, name, sizeBytes, file, fd, allocFd, alloc);
  }

  get allocShared(): SharedArrayBuffer {
    return this.alloc.buffer as SharedArrayBuffer;
  }

  /** The granularity of the allocation bitmap. */
  get allocChunkBytes(): number {
    return ALLOC_CHUNK_BYTES;
  }

  /** False only when no byte of the chunk was ever written with data. */
  chunkMayHoldData(chunk: number): boolean {
    return bitGet(this.alloc, chunk);
  }

  markData(offsetBytes: number, lengthBytes: number): void {
    const first = Math.floor(offsetBytes / ALLOC_CHUNK_BYTES);
    const last = Math.floor((offsetBytes + lengthBytes - 1) / ALLOC_CHUNK_BYTES);
    for (let chunk = first; chunk <= last; chunk++) {
      if (!this.chunkMayHoldData(chunk)) {
        bitSet(this.alloc, chunk);
        this.allocChanged = true;
      }
    }
  }

  /** Persists the bitmap before any data is written under new bits (a superset is always safe). */
  async persistAlloc(): Promise<void> {
    if (!this.allocChanged) return;
    writeFullySync(this.allocFd, this.alloc, 0);
    await fdatasyncAsync(this.allocFd);
    this.allocChanged = false;
  }

  close(): void {
    fs.closeSync(this.fd);
    fs.closeSync(this.allocFd);
  }
}
