// The write worker thread: takes a batch laid out in shared memory by the main thread
// (worker-engine.ts), computes its checksums and writes it to the redo log (direct I/O when the
// reservation says so), and answers with the chain CRC or the error. Meanwhile the main thread's
// side writes the same payloads to production: two threads copying at once, and the checksums
// (which read every byte) off the event loop.
import { parentPort, workerData } from 'node:worker_threads';
import { assert, rethrowIfBug, serializeError } from '../core/index.js';
import { mapShared } from '../platform/index.js';
import { finishBatch, writeRangeSync } from './batch-io.js';
import type { WorkerRequest, WorkerResponse, WorkerSetup } from './worker-engine.js';

const port = parentPort;
assert(port !== null, 'write-worker runs as a worker thread');
const setup = workerData as WorkerSetup;
const arena = mapShared(setup.arenaFd, setup.arenaBytes);

port.on('message', (request: WorkerRequest) => {
  // Whatever handle() throws (a bug) goes back as an error, to be thrown again on the main thread.
  Promise.resolve(request)
    .then(handle)
    .then(
      (response) => port.postMessage(response),
      (error: unknown) =>
        port.postMessage({
          id: request.id,
          chainOut: 0,
          logError: undefined,
          error: serializeError(error),
        } satisfies WorkerResponse),
    );
});

function handle(request: WorkerRequest): WorkerResponse {
  const { placement } = request;
  const chainOut = finishBatch(arena, placement);
  let logError: WorkerResponse['logError'];
  try {
    // The head up to the first 4 KiB boundary is written buffered, the rest (whole pages, from a
    // page-aligned place in the arena) direct when the reservation says so.
    const direct = request.directFd !== undefined;
    const headBytes = direct ? request.directFromBytes - placement.logPositionBytes : 0;
    const splitBytes = placement.startBytes + headBytes;
    if (headBytes > 0)
      writeRangeSync(
        request.logFd,
        arena,
        placement.startBytes,
        splitBytes,
        placement.logPositionBytes,
      );
    writeRangeSync(
      request.directFd ?? request.logFd,
      arena,
      splitBytes,
      placement.endBytes,
      placement.logPositionBytes + headBytes,
    );
  } catch (error) {
    rethrowIfBug(error);
    logError = serializeError(error);
  }
  return { id: request.id, chainOut, logError };
}
