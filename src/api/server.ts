// The manager's HTTP API (fastify): status, log, seal, snapshots and clones, recovery, the
// console's timeline, events and page, and the Prometheus metrics. The CLI and the web console
// are its clients. Errors are JSON {error: {code, message, hint}} with a fitting HTTP status.
import { STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import { Readable, type Duplex } from 'node:stream';
import Fastify, { type FastifyInstance, type FastifyReply } from 'fastify';
import { formatTimeNs, parseSize, RewindError, type ByteRange } from '../core/index.js';
import type { CommitEvent, Manager } from '../manager/index.js';
import { blockHistory, diff, parsePoint, Timeline } from '../manager/index.js';
import { registerRetentionRoutes } from './retention-routes.js';
import { registerArchiveRoutes } from './archive-routes.js';
import type { RestoreSpec } from '../manager/index.js';
import { registerAudit } from './audit.js';
import { registerAuth } from './auth.js';
import {
  BOOKMARK_SCHEMA,
  EMPTY_SCHEMA,
  EXPORT_SCHEMA,
  RESTORE_SCHEMA,
  SEAL_SCHEMA,
  STEP_SCHEMA,
  VIEW_SCHEMA,
} from './schemas.js';
import { registerConsole, type ConsoleInfo } from './console.js';
import { EventStreams } from './events.js';
import { Metrics } from './metrics.js';
import { OverviewSource } from './overview.js';

const STATUS_BY_CODE: Record<string, number> = {
  REWIND_BAD_ARGUMENT: 400,
  REWIND_POINT_INVALID: 422,
  REWIND_NOT_FOUND: 404,
  REWIND_CONFLICT: 409,
  REWIND_BUSY: 503,
  REWIND_ARCHIVE_UNAVAILABLE: 503,
  REWIND_AUTH: 401,
  REWIND_FORBIDDEN: 403,
};

/** What the API serves besides the manager's own state (the console's /api/info). */
export type ApiOptions = ConsoleInfo & {
  /** Serve HTTPS with this certificate chain and key (PEM), e.g. off loopback. */
  tls?: { cert: Buffer; key: Buffer };
};

/** Largest request body (JSON): the biggest real one, a restore's range list, is far smaller. */
const BODY_BYTES_MAX = 1024 * 1024;
/** Longest URL, query string included, and longest path parameter (a name). */
const URL_BYTES_MAX = 8 * 1024;
const PARAM_BYTES_MAX = 512;

/**
 * A request Node's parser refuses (malformed, headers too large, or the rest of a body sent after
 * an answer that closed the connection): a typed error on a connection that has had no answer
 * yet, else the connection is only closed, so no second answer follows the first.
 */
function answerClientError(error: Error & { code?: string }, socket: Duplex): void {
  if (!socket.writable || (socket as Socket).bytesWritten > 0) {
    socket.destroy();
    return;
  }
  const status =
    error.code === 'HPE_HEADER_OVERFLOW'
      ? 431
      : error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? 408
        : 400;
  const body = JSON.stringify({
    error: {
      code: 'REWIND_BAD_ARGUMENT',
      message: `malformed HTTP request (${error.code ?? 'parse error'})`,
      hint: null,
    },
  });
  socket.end(
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
}

/** Timeline buckets when none are asked for. */
const TIMELINE_BUCKETS_DEFAULT = 200;
/** Log entries per page of GET /api/log?limit= and history entries per answer, by default. */
const PAGE_DEFAULT = 1000;
/** Block map cells by default. */
const BLOCKMAP_CELLS_DEFAULT = 256;

export async function startApi(
  manager: Manager,
  host: string,
  port: number,
  token: string,
  options: ApiOptions = { role: 'up', nbd: null },
): Promise<{ app: FastifyInstance; address: string }> {
  // One instance type for both: the routes do not care whether the socket under them is TLS.
  const app = Fastify({
    ...(options.tls
      ? { https: { cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' } }
      : {}),
    logger: false,
    bodyLimit: BODY_BYTES_MAX,
    routerOptions: { maxParamLength: PARAM_BYTES_MAX },
    // Bodies are checked as sent: an unknown field is refused, not dropped, and nothing coerced.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false } },
    clientErrorHandler: answerClientError,
    // The router's own refusals (a parameter over the limit, a malformed URL) are typed too.
    frameworkErrors: (error, _request, untyped) => {
      const reply = untyped as unknown as FastifyReply;
      void reply.code(error.statusCode ?? 400).send({
        error: { code: 'REWIND_BAD_ARGUMENT', message: error.message.slice(0, 300), hint: null },
      });
    },
  });
  // Bounded before anything else: a long URL (the query string with it) is refused unread.
  app.addHook('onRequest', async (request, reply) => {
    if (request.url.length <= URL_BYTES_MAX) return;
    await reply.code(414).send({
      error: {
        code: 'REWIND_BAD_ARGUMENT',
        message: `the URL is over ${URL_BYTES_MAX} bytes`,
        hint: null,
      },
    });
  });
  registerAudit(app, manager, registerAuth(app, manager, token));
  // A POST or PUT without a body is an empty object, so its schema names what is missing.
  app.addHook('preValidation', async (request) => {
    if (request.body === undefined && (request.method === 'POST' || request.method === 'PUT'))
      request.body = {};
  });
  app.setNotFoundHandler(async (request, reply) =>
    reply.code(404).send({
      error: {
        code: 'REWIND_NOT_FOUND',
        message: `no route ${request.method} ${request.url.split('?')[0]?.slice(0, 200) ?? ''}`,
        hint: 'see docs/CLI.md (HTTP API)',
      },
    }),
  );
  app.setErrorHandler(async (error, _request, reply) => {
    if (error instanceof RewindError) {
      return reply
        .code(STATUS_BY_CODE[error.code] ?? 500)
        .send({ error: { code: error.code, message: error.message, hint: error.hint ?? null } });
    }
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    return reply.code(status).send({
      error: {
        code: status < 500 ? 'REWIND_BAD_ARGUMENT' : 'REWIND_INTERNAL',
        message: (error as Error).message,
      },
    });
  });
  app.get('/api/status', async () => manager.status());
  registerRetentionRoutes(app, manager);
  registerArchiveRoutes(app, manager);
  const overview = new OverviewSource(manager);
  const timeline = Timeline.of(manager.history, manager.catalog);
  const onCommit = (event: CommitEvent): void => timeline.committed(event.tx);
  manager.commitObservers.add(onCommit);
  const metrics = new Metrics(manager, overview, options.role);
  app.addHook('onClose', async () => {
    manager.commitObservers.delete(onCommit);
    metrics.close();
    overview.close();
  });
  app.get('/metrics', async (_request, reply) => {
    const { contentType, body } = await metrics.text();
    return reply.type(contentType).send(body);
  });
  app.get('/api/overview', async () => overview.overview());
  app.get<{ Querystring: { at?: string } }>('/api/points/resolve', async (request) => {
    if (typeof request.query.at !== 'string')
      throw new RewindError('REWIND_BAD_ARGUMENT', 'resolve needs at (a POINT)');
    const seq = manager.resolvePoint(request.query.at);
    return { seq, time: seq === 0 ? null : formatTimeNs(await manager.history.seqTimeNs(seq)) };
  });
  new EventStreams(manager, overview).register(app);
  await registerConsole(app, {
    role: options.role,
    nbd: options.nbd,
    exportDir: manager.exporter.exportDir,
  });
  app.get<{ Querystring: { from?: string; to?: string; buckets?: string } }>(
    '/api/timeline',
    async (request) => {
      const q = request.query;
      const span = manager.catalog.timeSpan();
      const nowUs = Date.now() * 1000;
      // By default the whole history, with a margin so that its first and last writes show.
      const marginUs = span ? Math.max(1, Math.ceil((span.lastUs - span.firstUs) / 50)) : 0;
      const toUs =
        q.to !== undefined ? parseTimeUs(q.to, 'to') : (span?.lastUs ?? nowUs) + marginUs + 1;
      const fromUs =
        q.from !== undefined
          ? parseTimeUs(q.from, 'from')
          : Math.max(0, Math.min((span?.firstUs ?? nowUs) - marginUs, toUs - 1));
      const buckets =
        q.buckets !== undefined ? parseCount(q.buckets, 'buckets') : TIMELINE_BUCKETS_DEFAULT;
      return timeline.buckets({ fromUs, toUs, buckets });
    },
  );
  app.post<{ Body: { wait?: boolean; timeoutMs?: number } }>(
    '/api/seal',
    { schema: SEAL_SCHEMA },
    async (request) => manager.seal(request.body?.wait === true, request.body?.timeoutMs ?? 60_000),
  );
  app.get('/api/views', async () =>
    [...manager.views.values()].map((v) => ({
      name: v.name,
      kind: v.kind,
      seq: v.seq,
      exports: manager.replicas.map((r) => `${r.name}@${v.name}`),
    })),
  );
  app.post<{ Body: { name: string; kind: 'snapshot' | 'clone'; at: string } }>(
    '/api/views',
    { schema: VIEW_SCHEMA },
    async (request, reply) => {
      const { name, kind, at } = request.body ?? ({} as never);
      if (
        typeof name !== 'string' ||
        (kind !== 'snapshot' && kind !== 'clone') ||
        typeof at !== 'string'
      ) {
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          'body needs name, kind (snapshot or clone) and at (a POINT)',
        );
      }
      const view = await manager.createView(name, kind, at);
      return reply.code(201).send({
        name: view.name,
        kind: view.kind,
        seq: view.seq,
        exports: manager.replicas.map((r) => `${r.name}@${view.name}`),
      });
    },
  );
  app.delete<{ Params: { name: string } }>('/api/views/:name', async (request) => {
    await manager.removeView(request.params.name);
    return { removed: request.params.name };
  });
  // A log bound is a seq (inclusive, as it always was) or any other POINT: --from a POINT lists
  // the writes after it, --to a POINT the writes up to it.
  const logFrom = (text: string): number =>
    /^\d+$/.test(text) ? parseSeq(text, 'from') : manager.seqAtOrBefore(text) + 1;
  const logTo = (text: string): number =>
    /^\d+$/.test(text) ? parseSeq(text, 'to') : manager.seqAtOrBefore(text);
  app.get<{ Querystring: { volume?: string; from?: string; to?: string; limit?: string } }>(
    '/api/log',
    async (request, reply) => {
      const q = request.query;
      if (q.limit !== undefined) {
        // One page: at most `limit` entries, and where the next page starts (header, and 204 when
        // the range is exhausted at once).
        const page = await timeline.logPage({
          fromSeq: q.from ? logFrom(q.from) : 1,
          ...(q.to ? { toSeq: logTo(q.to) } : {}),
          limit: parseCount(q.limit, 'limit'),
          ...(q.volume ? { volume: q.volume } : {}),
        });
        if (page.nextSeq !== null) void reply.header('rewind-next-seq', String(page.nextSeq));
        return reply
          .type('application/x-ndjson')
          .send(page.entries.map((entry) => `${JSON.stringify(entry)}\n`).join(''));
      }
      const filter = {
        ...(q.volume ? { volume: q.volume } : {}),
        ...(q.from ? { from: logFrom(q.from) } : {}),
        ...(q.to ? { to: logTo(q.to) } : {}),
      };
      // Streamed: a long history is never held in memory. A bad filter fails before the first line.
      const entries = manager.log(filter);
      const first = await entries.next();
      async function* lines(): AsyncGenerator<string> {
        if (first.done) return;
        yield `${JSON.stringify(first.value)}\n`;
        for await (const entry of entries) yield `${JSON.stringify(entry)}\n`;
      }
      return reply.type('application/x-ndjson').send(Readable.from(lines()));
    },
  );
  // ---- Recovery ----
  app.post<{
    Params: { name: string };
    Body: { forward?: number; back?: number; to?: string; discardWrites?: boolean };
  }>('/api/views/:name/step', { schema: STEP_SCHEMA }, async (request) => {
    const body = request.body ?? {};
    return manager.stepView(request.params.name, {
      ...(body.forward !== undefined ? { forward: body.forward } : {}),
      ...(body.back !== undefined ? { back: body.back } : {}),
      ...(body.to !== undefined ? { to: String(body.to) } : {}),
      discardWrites: body.discardWrites === true,
    });
  });
  app.get('/api/bookmarks', async () => manager.bookmarks());
  app.post<{ Body: { name?: string; at?: string } }>(
    '/api/bookmarks',
    { schema: BOOKMARK_SCHEMA },
    async (request, reply) => {
      const { name, at } = request.body ?? {};
      if (typeof name !== 'string')
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          'body needs name (and optionally at, a POINT)',
        );
      return reply
        .code(201)
        .send(await manager.addBookmark(name, at === undefined ? undefined : String(at)));
    },
  );
  app.delete<{ Params: { name: string } }>('/api/bookmarks/:name', async (request) => {
    manager.removeBookmark(request.params.name);
    return { removed: request.params.name };
  });
  app.get('/api/restores', async () => manager.restorer.list());
  app.get<{ Params: { id: string } }>('/api/restores/:id', async (request) =>
    manager.restorer.status(parseId(request.params.id)),
  );
  app.post<{ Body: RestoreSpec & { dryRun?: boolean; ranges?: (ByteRange | string)[] } }>(
    '/api/restores',
    { schema: RESTORE_SCHEMA },
    async (request, reply) => {
      const body = request.body ?? ({} as never);
      const spec: RestoreSpec = {
        volumes: body.volumes,
        ...(body.at !== undefined ? { at: String(body.at) } : {}),
        ...(body.fromClone !== undefined ? { fromClone: String(body.fromClone) } : {}),
        ...(body.ranges !== undefined ? { ranges: body.ranges.map(parseRange) } : {}),
        ...(body.force === true ? { force: true } : {}),
      };
      if (body.dryRun === true) return manager.restorer.plan(spec);
      return reply.code(202).send(await manager.restorer.start(spec));
    },
  );
  app.post<{ Params: { id: string } }>(
    '/api/restores/:id/abandon',
    { schema: EMPTY_SCHEMA },
    async (request) => manager.restorer.abandon(parseId(request.params.id)),
  );
  app.post<{ Body: { volume?: string; at?: string; file?: string; force?: boolean } }>(
    '/api/exports',
    { schema: EXPORT_SCHEMA },
    async (request, reply) => {
      const { volume, at, file, force } = request.body ?? {};
      if (typeof volume !== 'string' || typeof at !== 'string' || typeof file !== 'string')
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          'body needs volume, at (a POINT) and file (a name inside the export directory)',
        );
      return reply
        .code(202)
        .send(await manager.exporter.start({ volume, at, file, overwrite: force === true }));
    },
  );
  app.get<{ Params: { id: string } }>('/api/exports/:id', async (request) =>
    manager.exporter.status(parseId(request.params.id)),
  );
  app.get('/api/exports', async () => manager.exporter.list());
  app.get<{
    Params: { volume: string };
    Querystring: { range?: string; limit?: string; before?: string };
  }>('/api/volumes/:volume/history', async (request, reply) => {
    const q = request.query;
    if (typeof q.range !== 'string')
      throw new RewindError('REWIND_BAD_ARGUMENT', 'history needs range=OFFSET:LENGTH');
    const range = parseRange(q.range);
    if (q.limit === undefined && q.before === undefined)
      return blockHistory(manager, request.params.volume, range);
    // Bounded: the newest `limit` entries at or before seq `before`, and where older ones start.
    const page = await timeline.rangeHistory({
      volume: request.params.volume,
      range,
      limit: q.limit !== undefined ? parseCount(q.limit, 'limit') : PAGE_DEFAULT,
      ...(q.before !== undefined ? { beforeSeq: parseSeq(q.before, 'before') } : {}),
    });
    if (page.nextBeforeSeq !== null)
      void reply.header('rewind-next-before-seq', String(page.nextBeforeSeq));
    return page.entries;
  });
  app.get<{
    Params: { volume: string };
    Querystring: { from?: string; to?: string; cells?: string };
  }>('/api/volumes/:volume/blockmap', async (request) => {
    const q = request.query;
    const fromSeq = q.from !== undefined ? seqOrPoint(manager, q.from) : 0;
    const toSeq = q.to !== undefined ? seqOrPoint(manager, q.to) : manager.seqCommitted();
    return timeline.blockMap({
      volume: request.params.volume,
      fromSeq,
      toSeq,
      cells: q.cells !== undefined ? parseCount(q.cells, 'cells') : BLOCKMAP_CELLS_DEFAULT,
    });
  });
  app.get<{
    Params: { volume: string };
    Querystring: { from?: string; to?: string; clone?: string };
  }>('/api/volumes/:volume/diff', async (request) => {
    const { from, to, clone } = request.query;
    if (typeof clone === 'string') {
      if (from !== undefined || to !== undefined)
        throw new RewindError('REWIND_BAD_ARGUMENT', 'give either clone or from and to');
      return manager.restorer.cloneRanges(request.params.volume, clone);
    }
    if (typeof from !== 'string' || typeof to !== 'string')
      throw new RewindError('REWIND_BAD_ARGUMENT', 'diff needs from and to (POINTs), or clone');
    return diff(manager, request.params.volume, from, to);
  });
  const address = await app.listen({ host, port });
  return { app, address };
}

function parseSeq(text: string, what: string): number {
  if (!/^\d+$/.test(text))
    throw new RewindError('REWIND_BAD_ARGUMENT', `--${what} "${text}" is not a seq`);
  return Number(text);
}

function parseCount(text: string, what: string): number {
  if (!/^\d+$/.test(text))
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not a positive number`);
  return Number(text);
}

/** A time as µs since the epoch, an ISO-8601 time or a relative time ("1 hour ago"). */
function parseTimeUs(text: string, what: string): number {
  if (/^\d+$/.test(text.trim())) return Number(text.trim());
  const point = parsePoint(text);
  if (point.kind !== 'time')
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not a time`);
  return Number(point.timeNs / 1000n);
}

/** A seq as given (any committed one, even inside a resync), or a POINT resolved to one. */
function seqOrPoint(manager: Manager, text: string): number {
  if (!/^\d+$/.test(text.trim())) return manager.resolvePoint(text);
  const seq = Number(text.trim());
  if (seq > manager.seqCommitted())
    throw new RewindError(
      'REWIND_POINT_INVALID',
      `seq ${seq} is not committed yet (last committed: ${manager.seqCommitted()})`,
    );
  return seq;
}

function parseId(text: string): number {
  if (!/^\d+$/.test(text)) throw new RewindError('REWIND_BAD_ARGUMENT', `"${text}" is not an id`);
  return Number(text);
}

/** OFFSET:LENGTH with size suffixes (K, M, G, T), or {offset, length}. */
export function parseRange(value: ByteRange | string): ByteRange {
  if (
    typeof value === 'object' &&
    value !== null &&
    typeof value.offset === 'number' &&
    typeof value.length === 'number'
  )
    return { offset: value.offset, length: value.length };
  const match = typeof value === 'string' ? /^([^:]+):([^:]+)$/.exec(value.trim()) : null;
  if (!match)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `range ${JSON.stringify(value)} is not OFFSET:LENGTH`,
      {
        hint: 'e.g. 1M:64K',
      },
    );
  return {
    offset: parseSize(match[1] as string, 'range offset'),
    length: parseSize(match[2] as string, 'range length'),
  };
}
