// The HTTP API of the archive: its state, the objects and full images the catalog records, and
// verify, fetches and full images (streamed as NDJSON: progress lines, then the result), so the
// CLI can show progress on long work.
import { PassThrough } from 'node:stream';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import type { Manager } from '../manager/index.js';
import { ARCHIVE_FETCH_SCHEMA, ARCHIVE_FULL_SCHEMA, ARCHIVE_VERIFY_SCHEMA } from './schemas.js';

export function registerArchiveRoutes(app: FastifyInstance, manager: Manager): void {
  app.get('/api/archive', async () => {
    const status = manager.archiveStatus();
    if (status) return status;
    manager.requireArchiver();
    return undefined;
  });
  app.get('/api/archive/objects', async () => manager.archiveObjects());
  // What a POINT takes from the archive ({plan: null}: the journal serves it, or no archive).
  app.get<{ Querystring: { point?: string } }>('/api/archive/plan', async (request) => {
    const point = request.query.point;
    if (typeof point !== 'string' || point === '') {
      throw new RewindError('REWIND_BAD_ARGUMENT', 'give ?point=POINT');
    }
    if (manager.archiver) await manager.fetchTimes(point);
    return { plan: manager.archiver ? manager.archivePlan(point) : null };
  });
  app.get('/api/archive/fulls', async () => manager.fulls());
  const fullOptions = { schema: ARCHIVE_FULL_SCHEMA };
  app.post<{ Body: { volumes?: string[]; at?: string | number } | null }>(
    '/api/archive/full',
    fullOptions,
    async (request, reply) => {
      const body = request.body ?? {};
      manager.requireArchiver();
      const at = body.at === undefined ? undefined : String(body.at);
      // Refusals that need no work (a bad POINT or volume, a full running) are answered as errors.
      const volumes = body.volumes ?? [];
      for (const name of volumes) manager.volumeIndex(name);
      if (at !== undefined) manager.resolvePoint(at);
      const running = manager.fullImages?.progress();
      if (running) {
        throw new RewindError(
          'REWIND_BUSY',
          `a full image at seq ${running.seq} is being taken: chunk ${running.chunksDone} of ${running.chunksTotal}`,
          { hint: 'one full at a time: wait for it (rewind archive status shows its progress)' },
        );
      }
      return streamed(reply, (line) =>
        manager.takeFull({ volumes, ...(at !== undefined ? { at } : {}) }, (progress) =>
          line({ type: 'progress', ...progress }),
        ),
      );
    },
  );
  const fetchOptions = { schema: ARCHIVE_FETCH_SCHEMA };
  const verifyOptions = { schema: ARCHIVE_VERIFY_SCHEMA };
  app.post<{ Body: { point?: unknown } | null }>(
    '/api/archive/fetch',
    fetchOptions,
    async (request, reply) => {
      const point = request.body?.point;
      if (typeof point !== 'string' || point === '') {
        throw new RewindError('REWIND_BAD_ARGUMENT', 'give {"point": POINT}');
      }
      manager.requireArchiver();
      return streamed(reply, (line) =>
        manager.fetchPoint(point, (progress) => line({ type: 'progress', ...progress })),
      );
    },
  );
  app.post<{ Body: { deep?: unknown } | null }>(
    '/api/archive/verify',
    verifyOptions,
    async (request, reply) => {
      const deep = request.body?.deep;
      if (deep !== undefined && typeof deep !== 'boolean') {
        throw new RewindError('REWIND_BAD_ARGUMENT', 'deep must be true or false');
      }
      manager.requireArchiver();
      return streamed(reply, (line) =>
        manager.verifyArchive({
          deep: deep === true,
          onProgress: (progress) => line({ type: 'progress', ...progress }),
        }),
      );
    },
  );
}

/**
 * Answers with NDJSON lines: what `work` reports as it goes, then `{"type": "result", ...}`, or
 * `{"type": "error", code, message}` when it fails after the answer began.
 */
function streamed(
  reply: FastifyReply,
  work: (line: (value: object) => void) => Promise<object | void>,
): FastifyReply {
  const stream = new PassThrough();
  const line = (value: object): void => {
    stream.write(`${JSON.stringify(value)}\n`);
  };
  void work(line)
    .then((result) => line({ type: 'result', ...(result ?? {}) }))
    .catch((error: unknown) => {
      rethrowIfBug(error);
      const code = error instanceof RewindError ? error.code : 'REWIND_IO';
      const hint = error instanceof RewindError ? (error.hint ?? null) : null;
      line({ type: 'error', code, message: errorMessage(error), hint });
    })
    .finally(() => stream.end());
  return reply.type('application/x-ndjson').send(stream);
}
