// `rewind export`: writes a full raw image of one volume at a point to a file on the manager's
// host, sparse where the view holds zeroes (never-written, zeroed or trimmed ranges), with a
// SHA-256 of the whole logical image so it can be checked with sha256sum. The file is written as
// FILE.partial and renamed when complete and durable, so a FILE never holds half an image. FILE
// is always inside the export directory (export-path.ts).
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { errorMessage, RewindError, type LogFunction } from '../core/index.js';
import { fdatasyncAsync, fsyncDir, isZero, writeAsync, ZERO_CHUNK } from '../platform/index.js';
import type { View } from '../views/index.js';
import { checkExportParent, openExportPartial, resolveExportFile } from './export-path.js';

/** What an image export needs from the manager. */
export interface ExportHost {
  volumeIndex(name: string): number;
  volumeSize(volume: number): number;
  resolvePoint(text: string): number;
  /** A private view at `seq`, held still while `work` runs. */
  withView<T>(seq: number, work: (view: View) => Promise<T>): Promise<T>;
  /** The manager's logging. */
  note: LogFunction;
  /** The only directory exports write to (created at start). */
  exportDir: string;
}

export interface ExportJob {
  id: number;
  volume: string;
  seq: number;
  file: string;
  state: 'running' | 'done' | 'failed';
  bytesTotal: number;
  bytesDone: number;
  /** Bytes actually written (the rest is holes). */
  bytesWritten: number;
  sha256: string | null;
  message: string | null;
}

const CHUNK_BYTES = 4 * 1024 * 1024;

export class ImageExporter {
  private readonly host: ExportHost;
  private readonly jobs = new Map<number, ExportJob>();
  private readonly running = new Map<number, Promise<void>>();
  private nextId = 1;

  constructor(host: ExportHost) {
    this.host = host;
  }

  /** The only directory exports write to. */
  get exportDir(): string {
    return this.host.exportDir;
  }

  /** Checks the request, then starts the export; progress via `status`. */
  async start(request: {
    volume: string;
    at: string;
    file: string;
    overwrite: boolean;
  }): Promise<ExportJob> {
    const { volume } = request;
    const index = this.host.volumeIndex(volume);
    const file = resolveExportFile(this.host.exportDir, request.file, request.overwrite);
    // Two exports to one file would share (and remove) each other's FILE.partial.
    const busy = [...this.jobs.values()].find((j) => j.state === 'running' && j.file === file);
    if (busy)
      throw new RewindError('REWIND_CONFLICT', `export #${busy.id} is writing ${file}`, {
        hint: 'wait for it (rewind export shows its progress), or give another file',
      });
    const seq = this.host.resolvePoint(request.at);
    const job: ExportJob = {
      id: this.nextId++,
      volume,
      seq,
      file,
      state: 'running',
      bytesTotal: this.host.volumeSize(index),
      bytesDone: 0,
      bytesWritten: 0,
      sha256: null,
      message: null,
    };
    this.jobs.set(job.id, job);
    const run = this.host
      .withView(seq, (view) =>
        this.write(
          job,
          (offset, length) => view.read(index, offset, length),
          (offset, length) => view.zeroPieces(index, offset, length),
        ),
      )
      .then(
        () => {
          job.state = 'done';
        },
        (error: unknown) => {
          job.state = 'failed';
          job.message = errorMessage(error);
          this.host.note('error', `export of ${volume} to ${file} failed: ${job.message}`);
        },
      )
      .finally(() => this.running.delete(job.id));
    this.running.set(job.id, run);
    return { ...job };
  }

  private async write(
    job: ExportJob,
    read: (offset: number, length: number) => Buffer,
    zeroPieces: (offset: number, length: number) => { lengthBytes: number; zero: boolean }[],
  ): Promise<void> {
    const partial = `${job.file}.partial`;
    const fd = openExportPartial(job.file);
    try {
      fs.ftruncateSync(fd, job.bytesTotal); // all holes; data is written where the view has any
      const hash = createHash('sha256');
      for (let offset = 0; offset < job.bytesTotal; offset += CHUNK_BYTES) {
        const length = Math.min(CHUNK_BYTES, job.bytesTotal - offset);
        let at = offset;
        for (const piece of zeroPieces(offset, length)) {
          if (piece.zero) {
            hashZeroes(hash, piece.lengthBytes);
          } else {
            const data = read(at, piece.lengthBytes);
            hash.update(data);
            if (!isZero(data)) {
              await writeAsync(fd, data, at);
              job.bytesWritten += data.length;
            }
          }
          at += piece.lengthBytes;
        }
        job.bytesDone = offset + length;
      }
      await fdatasyncAsync(fd);
      job.sha256 = hash.digest('hex');
    } finally {
      fs.closeSync(fd);
    }
    checkExportParent(job.file);
    await fsp.rename(partial, job.file);
    await fsyncDir(path.dirname(job.file));
  }

  status(id: number): ExportJob {
    const job = this.jobs.get(id);
    if (!job) throw new RewindError('REWIND_NOT_FOUND', `no export #${id}`);
    return { ...job };
  }

  /** Every export of this process, oldest first (they are not kept across restarts). */
  list(): ExportJob[] {
    return [...this.jobs.values()].map((job) => ({ ...job }));
  }

  async settled(id: number): Promise<ExportJob> {
    await this.running.get(id);
    return this.status(id);
  }
}

function hashZeroes(hash: ReturnType<typeof createHash>, lengthBytes: number): void {
  for (let left = lengthBytes; left > 0; left -= ZERO_CHUNK.length)
    hash.update(left >= ZERO_CHUNK.length ? ZERO_CHUNK : ZERO_CHUNK.subarray(0, left));
}
