// The HTTP API of retention: the journal's state and policy, a dry run of another policy, and
// pinning bookmarks so that retention keeps history from them on.
import type { FastifyInstance } from 'fastify';
import { RewindError } from '../core/index.js';
import type { Manager, PolicyText } from '../manager/index.js';
import { PIN_SCHEMA, POLICY_SCHEMA } from './schemas.js';

const POLICY_KEYS = ['journalMax', 'journalWarn', 'keepEveryWrite', 'keep', 'onFull'] as const;

/** A policy change from a request body: only the known keys, each a string. */
export function policyTextFrom(body: unknown): PolicyText {
  if (typeof body !== 'object' || body === null) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `a policy is an object with any of: ${POLICY_KEYS.join(', ')}`,
    );
  }
  const text: PolicyText = {};
  for (const [key, value] of Object.entries(body)) {
    if (!(POLICY_KEYS as readonly string[]).includes(key)) {
      throw new RewindError('REWIND_BAD_ARGUMENT', `"${key}" is not a retention setting`, {
        hint: `settings: ${POLICY_KEYS.join(', ')}`,
      });
    }
    if (typeof value !== 'string' && typeof value !== 'number') {
      throw new RewindError('REWIND_BAD_ARGUMENT', `retention setting ${key} must be a string`);
    }
    text[key as (typeof POLICY_KEYS)[number]] = String(value);
  }
  return text;
}

export function registerRetentionRoutes(app: FastifyInstance, manager: Manager): void {
  app.get('/api/retention', async () => manager.retention.status());
  app.put('/api/retention/policy', { schema: POLICY_SCHEMA }, async (request) => {
    manager.retention.setPolicy(policyTextFrom(request.body));
    return manager.retention.status();
  });
  app.post('/api/retention/simulate', { schema: POLICY_SCHEMA }, async (request) =>
    manager.retention.simulate(policyTextFrom(request.body ?? {})),
  );
  app.put<{ Params: { name: string }; Body: { until?: string } }>(
    '/api/bookmarks/:name/pin',
    { schema: PIN_SCHEMA },
    async (request) => {
      const until = request.body?.until;
      if (until !== undefined && typeof until !== 'string') {
        throw new RewindError('REWIND_BAD_ARGUMENT', 'until must be an ISO-8601 time');
      }
      return manager.pinBookmark(request.params.name, until ?? 'forever');
    },
  );
  app.delete<{ Params: { name: string } }>('/api/bookmarks/:name/pin', async (request) =>
    manager.pinBookmark(request.params.name, null),
  );
}
