// The archive codec's worker thread: encodes a batch's or chunk's plain bytes (zstd, digest,
// AES-256-GCM), hashes the result and names full image chunks, so the event loop that serves
// agents, views and, in `rewind up`, the production write path is not held for the hundreds of
// milliseconds a 64 MiB batch takes.
import crypto from 'node:crypto';
import os from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { assert, rethrowIfBug, serializeError } from '../core/index.js';
import { encodeObject } from './codec.js';
import { chunkId } from './full.js';
import type { CodecRequest, CodecResponse } from './codec-thread.js';

const port = parentPort;
assert(port !== null, 'codec-worker runs as a worker thread');

// Archiving is background work: on Linux, setpriority(2) on pid 0 sets this thread's nice only.
const { nice } = (workerData ?? {}) as { nice?: number };
if (nice) {
  try {
    os.setPriority(0, nice);
  } catch (error) {
    rethrowIfBug(error); // lowering one's own priority is always allowed; nothing else to do
  }
}

port.on('message', (request: CodecRequest) => {
  try {
    const plain = Buffer.from(request.plain.buffer, request.plain.byteOffset, request.plain.length);
    const key = request.key ? Buffer.from(request.key) : undefined;
    if (request.op === 'chunk-id') {
      port.postMessage({ id: request.id, chunkId: chunkId(plain, key) } satisfies CodecResponse);
      return;
    }
    const stored = encodeObject(plain, key ? { key } : {});
    const sha256 = crypto.createHash('sha256').update(stored).digest('hex');
    const response: CodecResponse = { id: request.id, stored, sha256 };
    port.postMessage(response);
  } catch (error) {
    rethrowIfBug(error);
    port.postMessage({ id: request.id, error: serializeError(error) } satisfies CodecResponse);
  }
});
