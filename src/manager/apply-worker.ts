// The manager's apply worker thread: builds undo segments and writes redo segments into the
// replicas, so the thousands of synchronous preads and pwrites a segment of small writes costs do
// not block the event loop that serves agents, views and the API (and, in `rewind up`, the
// production write path). The main thread keeps the order of the transaction steps, the catalog
// and the replicas' allocation bitmaps (shared memory, read here, written only there).
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { parentPort } from 'node:worker_threads';
import { assert } from '../core/index.js';
import { saveUndo, writeRedo, type ReplicaTarget } from './apply.js';
import type { ApplyRequest, ApplyResponse, ReplicaRef } from './apply-pool.js';

const port = parentPort;
assert(port !== null, 'apply-worker runs as a worker thread');

/** Own handles of the replica files, by path; reopened when the file at the path is another one. */
const handles = new Map<string, { fd: number; ino: number }>();

function target(ref: ReplicaRef): ReplicaTarget {
  let handle = handles.get(ref.file);
  if (handle && handle.ino !== ref.ino) {
    fs.closeSync(handle.fd);
    handle = undefined;
  }
  if (!handle) {
    const fd = fs.openSync(ref.file, 'r+');
    handle = { fd, ino: fs.fstatSync(fd).ino };
    assert(handle.ino === ref.ino, `replica ${ref.file} is the file the manager opened`);
    handles.set(ref.file, handle);
  }
  const bits = new Uint8Array(ref.alloc);
  return { index: ref.index, file: ref.file, fd: handle.fd, chunkMayHoldData: (chunk) => ((bits[chunk >> 3] ?? 0) & (1 << (chunk & 7))) !== 0 };
}

async function handle(request: ApplyRequest): Promise<ApplyResponse> {
  switch (request.type) {
    case 'undo': {
      // Buffers arrive as plain Uint8Arrays (structured clone).
      const header = { ...request.header, volumeSetId: Buffer.from(request.header.volumeSetId) };
      const result = await saveUndo(request.file, header, request.records, request.replicas.map(target));
      return { id: request.id, undo: result };
    }
    case 'apply': {
      const buf = await fsp.readFile(request.redoFile);
      await writeRedo(buf, request.records, request.replicas.map(target));
      return { id: request.id };
    }
    case 'close':
      for (const { fd } of handles.values()) fs.closeSync(fd);
      handles.clear();
      return { id: request.id };
  }
}

port.on('message', (request: ApplyRequest) => {
  handle(request).then(
    (response) => port.postMessage(response),
    (error: unknown) => {
      const e = error as { name?: unknown; message?: unknown; code?: unknown; errno?: unknown; syscall?: unknown; stack?: unknown };
      port.postMessage({
        id: request.id,
        error: { name: String(e.name ?? 'Error'), message: String(e.message ?? error), code: e.code === undefined ? undefined : String(e.code), errno: typeof e.errno === 'number' ? e.errno : undefined, syscall: typeof e.syscall === 'string' ? e.syscall : undefined, stack: String(e.stack ?? '') },
      } satisfies ApplyResponse);
    },
  );
});
