// The HTTP API of the archive: its state, the objects the catalog records, and verify (streamed
// as NDJSON: progress lines, then the result), so the CLI can show progress on a long check.
import { PassThrough } from 'node:stream';
import type { FastifyInstance } from 'fastify';
import { errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import type { Manager } from '../manager/index.js';

export function registerArchiveRoutes(app: FastifyInstance, manager: Manager): void {
  app.get('/api/archive', async () => {
    const status = manager.archiveStatus();
    if (status) return status;
    manager.requireArchiver();
    return undefined;
  });
  app.get('/api/archive/objects', async () => manager.archiveObjects());
  app.post<{ Body: { deep?: unknown } | null }>('/api/archive/verify', async (request, reply) => {
    const deep = request.body?.deep;
    if (deep !== undefined && typeof deep !== 'boolean') {
      throw new RewindError('REWIND_BAD_ARGUMENT', 'deep must be true or false');
    }
    manager.requireArchiver();
    const stream = new PassThrough();
    const line = (value: object): void => {
      stream.write(`${JSON.stringify(value)}\n`);
    };
    void manager
      .verifyArchive({
        deep: deep === true,
        onProgress: (progress) => line({ type: 'progress', ...progress }),
      })
      .then((result) => line({ type: 'result', ...result }))
      .catch((error: unknown) => {
        rethrowIfBug(error);
        const code = error instanceof RewindError ? error.code : 'REWIND_IO';
        line({ type: 'error', code, message: errorMessage(error) });
      })
      .finally(() => stream.end());
    return reply.type('application/x-ndjson').send(stream);
  });
}
