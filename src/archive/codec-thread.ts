// The archive codec on a worker thread of its own (codec-worker.ts): `encode` answers what
// `encodeObject` would, with the stored bytes' SHA-256, off the event loop. A worker that dies
// fails what it held (an operating error: archiving retries) and the next call starts another.
import { Worker } from 'node:worker_threads';
import { assert, reviveError, RewindError, type SerializedError } from '../core/index.js';

/** `encode`: the stored object and its SHA-256; `chunk-id`: a full image chunk's id only. */
export type CodecOp = 'encode' | 'chunk-id';

export interface CodecRequest {
  id: number;
  op: CodecOp;
  plain: Uint8Array;
  key?: Uint8Array;
}

export type CodecResponse =
  | { id: number; stored: Uint8Array; sha256: string; error?: undefined; chunkId?: undefined }
  | { id: number; chunkId: string; error?: undefined; stored?: undefined }
  | { id: number; error: SerializedError };

interface Pending {
  resolve(response: CodecResponse): void;
  reject(error: Error): void;
}

/** The nice value of the codec thread: archiving yields the CPU to ingest. */
const CODEC_NICE = 10;

export class CodecThread {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  /** `plain` encoded as an archive object (with `key`: encrypted), and its SHA-256 (hex). */
  async encode(
    plain: Buffer,
    key: Buffer | undefined,
  ): Promise<{ stored: Buffer; sha256: string }> {
    const response = await this.request('encode', plain, key);
    assert(response.stored !== undefined, 'an encode request answers the stored bytes');
    const stored = Buffer.from(
      response.stored.buffer,
      response.stored.byteOffset,
      response.stored.length,
    );
    return { stored, sha256: response.sha256 };
  }

  /** The id of a full image chunk (`chunkId` in full.ts: SHA-256, or HMAC with `key`). */
  async chunkId(plain: Buffer, key: Buffer | undefined): Promise<string> {
    const response = await this.request('chunk-id', plain, key);
    assert(response.chunkId !== undefined, 'a chunk-id request answers the id');
    return response.chunkId;
  }

  private async request(
    op: CodecOp,
    plain: Buffer,
    key: Buffer | undefined,
  ): Promise<Exclude<CodecResponse, { error: SerializedError }>> {
    const worker = this.worker ?? this.spawn();
    const id = this.nextId++;
    const request: CodecRequest = { id, op, plain, ...(key ? { key } : {}) };
    const response = await new Promise<CodecResponse>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref(); // a request in flight keeps the process alive; an idle worker does not
      worker.postMessage(request);
    });
    if (response.error !== undefined) throw reviveError(response.error, 'the archive codec thread');
    return response;
  }

  async close(): Promise<void> {
    const worker = this.worker;
    this.worker = undefined;
    if (worker) await worker.terminate();
  }

  private spawn(): Worker {
    const worker = new Worker(new URL('./codec-worker.js', import.meta.url), {
      workerData: { nice: CODEC_NICE },
    });
    worker.unref();
    worker.on('message', (response: CodecResponse) => {
      const waiter = this.pending.get(response.id);
      this.pending.delete(response.id);
      if (this.pending.size === 0) worker.unref();
      waiter?.resolve(response);
    });
    const lost = (why: string): void => {
      if (this.worker === worker) this.worker = undefined;
      const error = new RewindError('REWIND_IO', `the archive codec thread stopped: ${why}`);
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    worker.on('error', (error) => lost(error.message));
    worker.on('exit', (code) => lost(`exit code ${code}`));
    this.worker = worker;
    return worker;
  }
}
