// The audit log of the HTTP API: every call that may change state (any method but GET and HEAD),
// refused ones included, is recorded in the catalog with its time, the token's name (never its
// secret), the route, a short summary of its arguments and the status it got; GET /api/audit
// reads it back, newest first.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import type { AuditRow, Manager } from '../manager/index.js';
import type { Identities } from './auth.js';

/** Rows kept: the oldest go first (each is a few hundred bytes). */
export const AUDIT_ROWS_MAX = 100_000;
/** Rows one GET /api/audit returns by default, and at most. */
const AUDIT_LIMIT_DEFAULT = 100;
const AUDIT_LIMIT_MAX = 10_000;
/** A summary is cut here, and each string in it at a quarter of that. */
const SUMMARY_CHARS_MAX = 400;
const ROUTE_CHARS_MAX = 200;
/** Argument names whose values are never written to the log. */
const SECRET_KEY = /token|secret|password|psk|key$/i;

/** A short, secret-free text of a call's arguments: its path parameters and its JSON body. */
export function summarize(params: unknown, body: unknown): string {
  const value = {
    ...(typeof params === 'object' && params !== null ? params : {}),
    ...(body === undefined || body === null ? {} : { body }),
  };
  const text = JSON.stringify(value, (key, field: unknown) => {
    if (key !== '' && SECRET_KEY.test(key)) return '[redacted]';
    if (typeof field === 'string' && field.length > SUMMARY_CHARS_MAX / 4)
      return `${field.slice(0, SUMMARY_CHARS_MAX / 4)}...`;
    return field;
  });
  return text.length > SUMMARY_CHARS_MAX ? `${text.slice(0, SUMMARY_CHARS_MAX)}...` : text;
}

function changesState(request: FastifyRequest): boolean {
  return request.method !== 'GET' && request.method !== 'HEAD';
}

export function registerAudit(
  app: FastifyInstance,
  manager: Manager,
  identities: Identities,
): void {
  let misses = 0;
  app.addHook('onResponse', async (request, reply) => {
    if (!changesState(request)) return;
    const route = request.routeOptions.url ?? request.url.split('?')[0] ?? '';
    const row: Omit<AuditRow, 'id'> = {
      at: new Date().toISOString(),
      token: identities.get(request)?.name ?? null,
      method: request.method.slice(0, 16),
      route: route.slice(0, ROUTE_CHARS_MAX),
      summary: summarize(request.params, request.body),
      status: reply.statusCode,
    };
    try {
      manager.catalog.appendAudit(row, AUDIT_ROWS_MAX);
    } catch (error) {
      // The call has been answered already: say loudly that its record is missing.
      rethrowIfBug(error);
      misses += 1;
      manager.note(
        'error',
        `audit log: ${request.method} ${route} not recorded (${misses} so far): ${errorMessage(error)}`,
      );
    }
  });
  app.get<{ Querystring: { limit?: string } }>('/api/audit', async (request) => {
    const text = request.query.limit;
    const limit = text === undefined ? AUDIT_LIMIT_DEFAULT : Number(text);
    if (text !== undefined && (!/^\d+$/.test(text) || limit < 1 || limit > AUDIT_LIMIT_MAX))
      throw new RewindError('REWIND_BAD_ARGUMENT', `limit "${text}" is not 1..${AUDIT_LIMIT_MAX}`);
    return manager.catalog.audit(limit);
  });
}
