// The manager's HTTP API (fastify): status, log, seal, snapshots and clones. The CLI and any UI are
// its clients. Errors are JSON {error: {code, message, hint}} with a fitting HTTP status.
import Fastify, { type FastifyInstance } from 'fastify';
import { RewindError } from '../core/index.js';
import type { Manager } from '../manager/manager.js';

const STATUS_BY_CODE: Record<string, number> = {
  REWIND_BAD_ARGUMENT: 400,
  REWIND_POINT_INVALID: 422,
  REWIND_NOT_FOUND: 404,
  REWIND_CONFLICT: 409,
  REWIND_BUSY: 503,
  REWIND_AUTH: 401,
};

export async function startApi(manager: Manager, host: string, port: number, token: string | undefined): Promise<{ app: FastifyInstance; address: string }> {
  const app = Fastify({ logger: false });
  app.addHook('onRequest', async (request, reply) => {
    if (token === undefined) return;
    if (request.headers.authorization !== `Bearer ${token}`) {
      await reply.code(401).send({ error: { code: 'REWIND_AUTH', message: 'missing or wrong API token' } });
    }
  });
  app.setErrorHandler(async (error, _request, reply) => {
    if (error instanceof RewindError) {
      return reply.code(STATUS_BY_CODE[error.code] ?? 500).send({ error: { code: error.code, message: error.message, hint: error.hint ?? null } });
    }
    const status = (error as { statusCode?: number }).statusCode ?? 500;
    return reply.code(status).send({ error: { code: status < 500 ? 'REWIND_BAD_ARGUMENT' : 'REWIND_INTERNAL', message: (error as Error).message } });
  });
  app.get('/api/status', async () => manager.status());
  app.post<{ Body: { wait?: boolean; timeoutMs?: number } }>('/api/seal', async (request) => manager.seal(request.body?.wait === true, request.body?.timeoutMs ?? 60_000));
  app.get('/api/views', async () =>
    [...manager.views.values()].map((v) => ({ name: v.name, kind: v.kind, seq: v.seq, exports: manager.replicas.map((r) => `${r.name}@${v.name}`) })),
  );
  app.post<{ Body: { name: string; kind: 'snapshot' | 'clone'; at: string } }>('/api/views', async (request, reply) => {
    const { name, kind, at } = request.body ?? ({} as never);
    if (typeof name !== 'string' || (kind !== 'snapshot' && kind !== 'clone') || typeof at !== 'string') {
      throw new RewindError('REWIND_BAD_ARGUMENT', 'body needs name, kind (snapshot or clone) and at (a POINT)');
    }
    const view = await manager.createView(name, kind, at);
    return reply.code(201).send({ name: view.name, kind: view.kind, seq: view.seq, exports: manager.replicas.map((r) => `${r.name}@${view.name}`) });
  });
  app.delete<{ Params: { name: string } }>('/api/views/:name', async (request) => {
    await manager.removeView(request.params.name);
    return { removed: request.params.name };
  });
  app.get<{ Querystring: { volume?: string; from?: string; to?: string } }>('/api/log', async (request, reply) => {
    const q = request.query;
    const filter = {
      ...(q.volume ? { volume: q.volume } : {}),
      ...(q.from ? { from: parseSeq(q.from, 'from') } : {}),
      ...(q.to ? { to: parseSeq(q.to, 'to') } : {}),
    };
    const lines: string[] = [];
    for await (const entry of manager.log(filter)) lines.push(JSON.stringify(entry));
    return reply.type('application/x-ndjson').send(lines.length > 0 ? `${lines.join('\n')}\n` : '');
  });
  const address = await app.listen({ host, port });
  return { app, address };
}

function parseSeq(text: string, what: string): number {
  if (!/^\d+$/.test(text)) throw new RewindError('REWIND_BAD_ARGUMENT', `--${what} "${text}" is not a seq`);
  return Number(text);
}
