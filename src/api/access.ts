// Who may call what on the HTTP API: the roles of tokens and the one table that gives every route
// the roles allowed to call it. A route registered without an entry fails the start (onRoute), so
// no route can be added open by mistake; test/unit/api-access.test.ts checks the table both ways.
import type { FastifyInstance } from 'fastify';
import { AssertionError, RewindError } from '../core/index.js';

/**
 * audit: reads everything (status, log, views, metrics, the audit log), changes nothing.
 * (The audit log is read by audit and admin tokens only.)
 * operator: also views and clones, stepping, bookmarks and pins, seal, image exports.
 * admin: also production restores, the retention policy, and the API tokens.
 */
export type Role = 'audit' | 'operator' | 'admin';
export const ROLES: readonly Role[] = ['audit', 'operator', 'admin'];

/** Who may call a route: anyone (the console's page and assets), or tokens of these roles. */
export type Access = 'public' | readonly Role[];

const READ: readonly Role[] = ['audit', 'operator', 'admin'];
const OPERATE: readonly Role[] = ['operator', 'admin'];
const ADMIN: readonly Role[] = ['admin'];
/** The audit log is for the auditors and the administrators, not for the operators it records. */
const AUDITORS: readonly Role[] = ['audit', 'admin'];

/** Every route of the API, `METHOD URL` as fastify registers it (HEAD is checked as GET). */
export const ROUTE_ACCESS: Readonly<Record<string, Access>> = {
  // The console's page and assets hold no data; the page then asks for a token.
  'GET /': 'public',
  'GET /*': 'public',
  'GET /api/info': READ,
  'GET /api/status': READ,
  'GET /metrics': READ,
  'GET /api/overview': READ,
  'GET /api/events': READ,
  'GET /api/points/resolve': READ,
  'GET /api/timeline': READ,
  'GET /api/log': READ,
  'GET /api/views': READ,
  'GET /api/bookmarks': READ,
  'GET /api/restores': READ,
  'GET /api/restores/:id': READ,
  'GET /api/exports': READ,
  'GET /api/exports/:id': READ,
  'GET /api/volumes/:volume/history': READ,
  'GET /api/volumes/:volume/blockmap': READ,
  'GET /api/volumes/:volume/diff': READ,
  'GET /api/retention': READ,
  // A dry run of another policy: it changes nothing.
  'POST /api/retention/simulate': READ,
  'POST /api/seal': OPERATE,
  'POST /api/views': OPERATE,
  'DELETE /api/views/:name': OPERATE,
  'POST /api/views/:name/step': OPERATE,
  'POST /api/bookmarks': OPERATE,
  'DELETE /api/bookmarks/:name': OPERATE,
  'PUT /api/bookmarks/:name/pin': OPERATE,
  'DELETE /api/bookmarks/:name/pin': OPERATE,
  'POST /api/exports': OPERATE,
  // A restore rewrites production (its dry run shares the route, and the role).
  'POST /api/restores': ADMIN,
  'POST /api/restores/:id/abandon': ADMIN,
  'PUT /api/retention/policy': ADMIN,
  'GET /api/archive': READ,
  'GET /api/archive/objects': READ,
  'GET /api/archive/plan': READ,
  'GET /api/archive/fulls': READ,
  // A full image reads every volume through a view and uploads what changed.
  'POST /api/archive/full': OPERATE,
  // Fetching into the local cache and reading every object back cost the store requests.
  'POST /api/archive/fetch': OPERATE,
  'POST /api/archive/verify': OPERATE,
  'GET /api/tokens': ADMIN,
  'POST /api/tokens': ADMIN,
  'DELETE /api/tokens/:name': ADMIN,
  'GET /api/audit': AUDITORS,
};

/** The table's key of a route; HEAD is answered by the GET route and needs what GET needs. */
export function routeKey(method: string, url: string): string {
  return `${method === 'HEAD' ? 'GET' : method} ${url}`;
}

/** Who may call `METHOD URL` (a registered route's URL); undefined for a route not in the table. */
export function accessOf(method: string, url: string): Access | undefined {
  return ROUTE_ACCESS[routeKey(method, url)];
}

export function parseRole(text: unknown): Role {
  if (typeof text === 'string' && (ROLES as readonly string[]).includes(text)) return text as Role;
  throw new RewindError('REWIND_BAD_ARGUMENT', `role ${JSON.stringify(text)} is not a role`, {
    hint: `roles: ${ROLES.join(', ')}`,
  });
}

/** Why `role` may not call the route, or null when it may. */
export function refusal(access: Access, role: Role, method: string, url: string): string | null {
  if (access === 'public' || access.includes(role)) return null;
  return `a token with role ${role} may not ${method} ${url} (it needs ${access.join(' or ')})`;
}

/**
 * Every route registered on `app` from now on must be in the table: an assertion at start, so a
 * new route without an entry never serves a single request.
 */
export function requireRouteAccess(app: FastifyInstance): void {
  app.addHook('onRoute', (route) => {
    const methods = Array.isArray(route.method) ? route.method : [route.method];
    for (const method of methods) {
      if (accessOf(String(method), route.url) === undefined)
        throw new AssertionError(
          `route ${String(method)} ${route.url} has no entry in ROUTE_ACCESS (src/api/access.ts)`,
        );
    }
  });
}
