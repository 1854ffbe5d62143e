// The HTTP API's door: every request but the console's page and assets needs a token
// (Authorization: Bearer), and the token's role must be one the route allows (access.ts); and the
// routes that manage tokens. Refusals are 401 REWIND_AUTH (no or unknown token) and 403
// REWIND_FORBIDDEN (a role that may not), logged, and answered a little later each time.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { assert } from '../core/index.js';
import type { Manager } from '../manager/index.js';
import { accessOf, refusal, requireRouteAccess, ROLES, type Access } from './access.js';
import { TOKEN_SCHEMA } from './schemas.js';
import { TokenStore, TOKEN_TEXT_MAX, type Identity } from './tokens.js';

/** A request no route matched still needs some token before it learns that (then 404). */
const UNMATCHED_ACCESS: Access = ROLES;

/** Failures in the current window add this much delay each, up to the cap. */
const FAILURE_DELAY_STEP_MS = 10;
const FAILURE_DELAY_MS_MAX = 500;
/** The failure count starts again after this long. */
const FAILURE_WINDOW_MS = 60_000;

/** The delay before a refused call is answered: it grows with recent failures, capped. */
class FailureDelay {
  private count = 0;
  private windowStartMs = 0;

  next(): number {
    const nowMs = Date.now();
    if (nowMs - this.windowStartMs > FAILURE_WINDOW_MS) {
      this.windowStartMs = nowMs;
      this.count = 0;
    }
    this.count += 1;
    return Math.min(FAILURE_DELAY_MS_MAX, FAILURE_DELAY_STEP_MS * this.count);
  }
}

/** Who made each request that got past the door (read by the audit log). */
export type Identities = WeakMap<FastifyRequest, Identity>;

/**
 * Installs the door on `app` (before any route is registered, so that every route is checked
 * against the table) and the token routes; returns who made each request.
 */
export function registerAuth(
  app: FastifyInstance,
  manager: Manager,
  adminToken: string,
): Identities {
  const tokens = new TokenStore(manager.catalog, adminToken);
  const identities: Identities = new WeakMap();
  const failures = new FailureDelay();
  requireRouteAccess(app);
  const refuse = async (
    reply: FastifyReply,
    status: 401 | 403,
    error: { code: string; message: string; hint: string },
  ): Promise<void> => {
    // Guessing is slowed down and logged; a token is 192 random bits or more, so this keeps the log
    // and the CPU quiet.
    await new Promise((resolve) => setTimeout(resolve, failures.next()));
    await reply.code(status).send({ error });
  };
  app.addHook('onRequest', async (request, reply) => {
    const url = request.routeOptions.url;
    const access = url === undefined ? UNMATCHED_ACCESS : accessOf(request.method, url);
    assert(access !== undefined, `route ${request.method} ${url} is in the access table`);
    if (access === 'public') return;
    const header = request.headers.authorization ?? '';
    const given =
      header.length <= TOKEN_TEXT_MAX + 7 ? (/^Bearer (.+)$/.exec(header)?.[1] ?? '') : '';
    const identity = tokens.authenticate(given);
    const what = `${request.method} ${(url ?? request.url).slice(0, 200)}`;
    if (!identity) {
      const problem = given ? 'wrong' : header ? 'malformed' : 'missing';
      manager.note('warn', `HTTP API: ${problem} token from ${request.ip} for ${what}`);
      return refuse(reply, 401, {
        code: 'REWIND_AUTH',
        message: `${problem} API token`,
        hint: 'send Authorization: Bearer TOKEN; the CLI of the user who started Rewind finds it, others give REWIND_TOKEN or --api-token-file (the admin token is in DATA/api-token)',
      });
    }
    identities.set(request, identity);
    const why = refusal(access, identity.role, request.method, url ?? request.url);
    if (why === null) return;
    manager.note('warn', `HTTP API: token "${identity.name}" refused for ${what}: ${why}`);
    return refuse(reply, 403, {
      code: 'REWIND_FORBIDDEN',
      message: why,
      hint: 'ask an administrator for a token with that role (rewind token create NAME --role ROLE)',
    });
  });
  app.get('/api/tokens', async () => tokens.list());
  app.post<{ Body: { name?: unknown; role?: unknown } }>(
    '/api/tokens',
    { schema: TOKEN_SCHEMA },
    async (request, reply) => {
      const body = request.body ?? {};
      return reply.code(201).send(tokens.create(body.name, body.role));
    },
  );
  app.delete<{ Params: { name: string } }>('/api/tokens/:name', async (request) => {
    tokens.revoke(request.params.name);
    return { revoked: request.params.name };
  });
  return identities;
}

/** A call refused by the door has no identity; one past it always has. */
export function identityOf(identities: Identities, request: FastifyRequest): Identity | undefined {
  return identities.get(request);
}
