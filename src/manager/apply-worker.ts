// The manager's apply worker thread: builds undo segments and writes redo segments into the
// replicas, so the thousands of synchronous preads and pwrites a segment of small writes costs do
// not block the event loop that serves agents, views and the API (and, in `rewind up`, the
// production write path). The main thread keeps the order of the transaction steps, the catalog
// and the replicas' allocation bitmaps (shared memory, read here, written only there).
import os from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { assert, rethrowIfBug, serializeError } from '../core/index.js';
import { ApplyHandler } from './apply-handler.js';
import type { ApplyRequest, ApplyResponse } from './apply-messages.js';

const port = parentPort;
assert(port !== null, 'apply-worker runs as a worker thread');
const handler = new ApplyHandler();

// Background work (retention's merges) yields the CPU to ingest on a small host: on Linux,
// setpriority(2) on pid 0 from this thread sets this thread's nice value only.
const { nice } = (workerData ?? {}) as { nice?: number };
if (nice) {
  try {
    os.setPriority(0, nice);
  } catch (error) {
    rethrowIfBug(error); // lowering one's own priority is always allowed; nothing else to do
  }
}

port.on('message', (request: ApplyRequest) => {
  handler.handle(request).then(
    (response) => port.postMessage(response),
    (error: unknown) =>
      port.postMessage({ id: request.id, error: serializeError(error) } satisfies ApplyResponse),
  );
});
