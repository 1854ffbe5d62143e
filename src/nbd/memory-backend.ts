// In-memory ExportBackend (a sparse map of 64 KiB chunks) and a map-based ExportRegistry, for tests
// and examples. Callbacks run synchronously, which also exercises the server's re-entrant paths.
import { assert } from '../core/index.js';
import type {
  BlockStatusCallback,
  BlockStatusExtent,
  DoneCallback,
  ExportBackend,
  ExportRegistry,
  ReadCallback,
} from './backend.js';
import { AllocationFlag } from './protocol.js';

export const MEMORY_CHUNK_BYTES = 64 * 1024;

export interface MemoryBackendOptions {
  name: string;
  sizeBytes: number;
  description?: string;
  readOnly?: boolean;
  multiConn?: boolean;
}

/** Counts of calls, so tests can check what a client actually sent. */
export interface MemoryBackendStats {
  reads: number;
  writes: number;
  fuaWrites: number;
  flushes: number;
  trims: number;
  zeroes: number;
  blockStatus: number;
}

export class MemoryBackend implements ExportBackend {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly multiConn: boolean;
  readonly stats: MemoryBackendStats = {
    reads: 0,
    writes: 0,
    fuaWrites: 0,
    flushes: 0,
    trims: 0,
    zeroes: 0,
    blockStatus: 0,
  };
  private readonly chunks = new Map<number, Buffer>();

  constructor(options: MemoryBackendOptions) {
    assert(
      Number.isSafeInteger(options.sizeBytes) && options.sizeBytes >= 0,
      'sizeBytes must be a safe integer',
    );
    this.name = options.name;
    this.description = options.description ?? '';
    this.sizeBytes = options.sizeBytes;
    this.readOnly = options.readOnly ?? false;
    this.multiConn = options.multiConn ?? true;
  }

  /** Bytes held in allocated chunks (never-written and fully trimmed chunks hold none). */
  get allocatedBytes(): number {
    return this.chunks.size * MEMORY_CHUNK_BYTES;
  }

  read(offsetBytes: number, lengthBytes: number, done: ReadCallback): void {
    this.assertRange(offsetBytes, lengthBytes);
    this.stats.reads += 1;
    done(0, this.readSync(offsetBytes, lengthBytes));
  }

  write(offsetBytes: number, data: Buffer, fua: boolean, done: DoneCallback): void {
    this.assertWritable(offsetBytes, data.length);
    this.stats.writes += 1;
    if (fua) this.stats.fuaWrites += 1;
    this.writeSync(offsetBytes, data);
    done(0);
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, _fua: boolean, done: DoneCallback): void {
    this.assertWritable(offsetBytes, lengthBytes);
    this.stats.zeroes += 1;
    this.zeroRange(offsetBytes, lengthBytes);
    done(0);
  }

  trim(offsetBytes: number, lengthBytes: number, _fua: boolean, done: DoneCallback): void {
    this.assertWritable(offsetBytes, lengthBytes);
    this.stats.trims += 1;
    this.zeroRange(offsetBytes, lengthBytes);
    done(0);
  }

  flush(done: DoneCallback): void {
    assert(!this.readOnly, 'flush on a read-only export');
    this.stats.flushes += 1;
    done(0);
  }

  /** Allocated chunks are data (flags 0); never-written chunks are holes that read as zero. */
  blockStatus(offsetBytes: number, lengthBytes: number, done: BlockStatusCallback): void {
    this.assertRange(offsetBytes, lengthBytes);
    this.stats.blockStatus += 1;
    const extents: BlockStatusExtent[] = [];
    const endBytes = offsetBytes + lengthBytes;
    let positionBytes = offsetBytes;
    while (positionBytes < endBytes) {
      const index = Math.floor(positionBytes / MEMORY_CHUNK_BYTES);
      const chunkEndBytes = Math.min((index + 1) * MEMORY_CHUNK_BYTES, endBytes);
      const flags = this.chunks.has(index) ? 0 : AllocationFlag.HOLE | AllocationFlag.ZERO;
      const last = extents[extents.length - 1];
      if (last !== undefined && last.flags === flags)
        last.lengthBytes += chunkEndBytes - positionBytes;
      else extents.push({ lengthBytes: chunkEndBytes - positionBytes, flags });
      positionBytes = chunkEndBytes;
    }
    done(0, extents);
  }

  /** Test helper: the current contents of a range (a copy). */
  readSync(offsetBytes: number, lengthBytes: number): Buffer {
    this.assertRange(offsetBytes, lengthBytes);
    // A copy, never a view: the socket may still hold the reply when a later write changes a chunk.
    const result = Buffer.alloc(lengthBytes);
    this.forEachChunkPiece(
      offsetBytes,
      lengthBytes,
      (index, chunkOffsetBytes, pieceBytes, resultOffsetBytes) => {
        this.chunks
          .get(index)
          ?.copy(result, resultOffsetBytes, chunkOffsetBytes, chunkOffsetBytes + pieceBytes);
      },
    );
    return result;
  }

  /** Test helper: fills a range directly (also on read-only exports, to prepare their contents). */
  writeSync(offsetBytes: number, data: Buffer): void {
    this.assertRange(offsetBytes, data.length);
    this.forEachChunkPiece(
      offsetBytes,
      data.length,
      (index, chunkOffsetBytes, pieceBytes, dataOffsetBytes) => {
        let chunk = this.chunks.get(index);
        if (!chunk) {
          chunk = Buffer.alloc(MEMORY_CHUNK_BYTES);
          this.chunks.set(index, chunk);
        }
        data.copy(chunk, chunkOffsetBytes, dataOffsetBytes, dataOffsetBytes + pieceBytes);
      },
    );
  }

  private zeroRange(offsetBytes: number, lengthBytes: number): void {
    this.forEachChunkPiece(offsetBytes, lengthBytes, (index, chunkOffsetBytes, pieceBytes) => {
      if (pieceBytes === MEMORY_CHUNK_BYTES) this.chunks.delete(index);
      else this.chunks.get(index)?.fill(0, chunkOffsetBytes, chunkOffsetBytes + pieceBytes);
    });
  }

  /** Calls `visit` for each chunk the range touches, with the piece's place in chunk and range. */
  private forEachChunkPiece(
    offsetBytes: number,
    lengthBytes: number,
    visit: (
      index: number,
      chunkOffsetBytes: number,
      pieceBytes: number,
      rangeOffsetBytes: number,
    ) => void,
  ): void {
    let doneBytes = 0;
    while (doneBytes < lengthBytes) {
      const positionBytes = offsetBytes + doneBytes;
      const index = Math.floor(positionBytes / MEMORY_CHUNK_BYTES);
      const chunkOffsetBytes = positionBytes - index * MEMORY_CHUNK_BYTES;
      const pieceBytes = Math.min(MEMORY_CHUNK_BYTES - chunkOffsetBytes, lengthBytes - doneBytes);
      visit(index, chunkOffsetBytes, pieceBytes, doneBytes);
      doneBytes += pieceBytes;
    }
  }

  // The server validates every request; these asserts catch a server that did not.
  private assertRange(offsetBytes: number, lengthBytes: number): void {
    assert(Number.isSafeInteger(offsetBytes) && offsetBytes >= 0, 'offset out of range');
    assert(Number.isSafeInteger(lengthBytes) && lengthBytes >= 0, 'length out of range');
    assert(offsetBytes + lengthBytes <= this.sizeBytes, 'request beyond the end of the export');
  }

  private assertWritable(offsetBytes: number, lengthBytes: number): void {
    assert(!this.readOnly, 'write on a read-only export');
    this.assertRange(offsetBytes, lengthBytes);
  }
}

/** A map of exports by name, with an optional default export and per-export refusals. */
export class MemoryRegistry implements ExportRegistry {
  private readonly exports = new Map<string, ExportBackend>();
  private readonly refusals = new Map<string, string>();
  private defaultExportName: string | undefined;

  constructor(backends: readonly ExportBackend[] = [], defaultExportName?: string) {
    for (const backend of backends) this.add(backend);
    this.defaultExportName = defaultExportName;
  }

  add(backend: ExportBackend): void {
    assert(!this.exports.has(backend.name), `export ${backend.name} already exists`);
    this.exports.set(backend.name, backend);
  }

  remove(name: string): boolean {
    this.refusals.delete(name);
    if (this.defaultExportName === name) this.defaultExportName = undefined;
    return this.exports.delete(name);
  }

  setDefault(name: string | undefined): void {
    this.defaultExportName = name;
  }

  /** A non-null reason makes the export refuse new connections until cleared with null. */
  setRefusal(name: string, reason: string | null): void {
    if (reason === null) this.refusals.delete(name);
    else this.refusals.set(name, reason);
  }

  get(name: string): ExportBackend | undefined {
    return this.exports.get(name);
  }

  list(): readonly ExportBackend[] {
    return [...this.exports.values()];
  }

  defaultName(): string | undefined {
    return this.defaultExportName;
  }

  refusal(name: string): string | null {
    return this.refusals.get(name) ?? null;
  }
}
