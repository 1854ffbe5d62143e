// Roles and tokens of the HTTP API: the route table covers exactly the registered routes (a new
// route without an entry fails), each role gets what the table says over real HTTP, and the token
// store keeps only hashes, compares every token and refuses what it should.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import Database from 'better-sqlite3';
import Fastify, { type FastifyInstance } from 'fastify';
import {
  accessOf,
  refusal,
  requireRouteAccess,
  ROLES,
  ROUTE_ACCESS,
  type Role,
} from '../../src/api/access.js';
import { summarize } from '../../src/api/audit.js';
import { startApi } from '../../src/api/index.js';
import { ADMIN_TOKEN_NAME, TokenStore } from '../../src/api/tokens.js';
import { Catalog } from '../../src/manager/catalog.js';
import { Manager } from '../../src/manager/index.js';

const ADMIN_SECRET = 'the-admin-token-of-this-test';

describe('the route table and the roles over HTTP', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-api-access-'));
  let manager: Manager | undefined;
  let app: FastifyInstance | undefined;
  let base = '';
  const call = async (
    method: string,
    route: string,
    secret: string | undefined,
    body?: object,
  ): Promise<{ status: number; code: string | undefined; json: unknown }> => {
    const response = await fetch(`${base}${route}`, {
      method,
      headers: {
        ...(secret === undefined ? {} : { authorization: `Bearer ${secret}` }),
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    const text = await response.text();
    const json: unknown = text.startsWith('{') || text.startsWith('[') ? JSON.parse(text) : text;
    const code = (json as { error?: { code?: string } }).error?.code;
    return { status: response.status, code, json };
  };

  before(async () => {
    manager = await Manager.open({ dataDir: dir, token: 'link', log: () => undefined });
    const api = await startApi(manager, '127.0.0.1', 0, ADMIN_SECRET);
    app = api.app;
    base = api.address;
  });
  after(async () => {
    await app?.close();
    await manager?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('every entry of the table is a registered route', () => {
    assert.ok(app);
    for (const key of Object.keys(ROUTE_ACCESS)) {
      // GET / is its own route only in a checkout without the built console (the 503 page).
      if (key === 'GET /') continue;
      const [method, url] = key.split(' ') as [string, string];
      assert.ok(app.hasRoute({ method, url }), `${key} is registered`);
    }
  });

  test('a route registered without an entry fails at once', () => {
    const fresh = Fastify();
    requireRouteAccess(fresh);
    fresh.get('/api/status', async () => ({}));
    assert.throws(
      () => fresh.post('/api/new-thing', async () => ({})),
      /POST \/api\/new-thing has no entry in ROUTE_ACCESS/,
    );
    assert.throws(() => fresh.delete('/api/status', async () => ({})), /no entry/);
  });

  test('the roles: audit reads, operator operates, admin restores and manages tokens', () => {
    const changes = Object.entries(ROUTE_ACCESS).filter(
      ([key]) => !key.startsWith('GET ') && key !== 'POST /api/retention/simulate',
    );
    assert.ok(changes.length >= 14, `${changes.length} state-changing routes`);
    for (const [key, access] of changes) {
      const [method, url] = key.split(' ') as [string, string];
      assert.notEqual(refusal(access, 'audit', method, url), null, `audit may not ${key}`);
      assert.equal(refusal(access, 'admin', method, url), null, `admin may ${key}`);
    }
    const operatorMay = (key: string): boolean => {
      const [method, url] = key.split(' ') as [string, string];
      return refusal(accessOf(method, url) ?? 'public', 'operator', method, url) === null;
    };
    for (const key of [
      'POST /api/seal',
      'POST /api/views',
      'DELETE /api/views/:name',
      'POST /api/views/:name/step',
      'POST /api/bookmarks',
      'DELETE /api/bookmarks/:name',
      'PUT /api/bookmarks/:name/pin',
      'POST /api/exports',
    ])
      assert.ok(operatorMay(key), `operator may ${key}`);
    for (const key of [
      'POST /api/restores',
      'POST /api/restores/:id/abandon',
      'PUT /api/retention/policy',
      'POST /api/tokens',
      'GET /api/tokens',
      'DELETE /api/tokens/:name',
    ])
      assert.ok(!operatorMay(key), `operator may not ${key}`);
    // HEAD needs what GET needs; only the console's page and assets are public.
    assert.equal(accessOf('HEAD', '/api/status'), accessOf('GET', '/api/status'));
    const open = Object.entries(ROUTE_ACCESS).filter(([, access]) => access === 'public');
    assert.deepEqual(
      open.map(([key]) => key),
      ['GET /', 'GET /*'],
    );
  });

  test('over HTTP: no token 401, a role that may not 403, each role what the table says', async () => {
    assert.equal((await call('GET', '/api/status', undefined)).status, 401);
    assert.equal((await call('GET', '/api/status', 'wrong')).code, 'REWIND_AUTH');
    assert.equal((await call('GET', '/', undefined)).status, 200, 'the console page is public');
    const secrets = new Map<Role, string>();
    for (const role of ROLES) {
      const made = await call('POST', '/api/tokens', ADMIN_SECRET, { name: `t-${role}`, role });
      assert.equal(made.status, 201);
      secrets.set(role, (made.json as { token: string }).token);
    }
    const audit = secrets.get('audit') as string;
    const operator = secrets.get('operator') as string;
    assert.equal((await call('GET', '/api/status', audit)).status, 200);
    assert.equal((await call('GET', '/metrics', audit)).status, 200);
    const sealed = await call('POST', '/api/seal', audit, {});
    assert.equal(sealed.status, 403);
    assert.equal(sealed.code, 'REWIND_FORBIDDEN');
    assert.match(
      (sealed.json as { error: { message: string } }).error.message,
      /role audit may not POST \/api\/seal \(it needs operator or admin\)/,
    );
    assert.equal(
      (await call('POST', '/api/tokens', operator, { name: 'x', role: 'admin' })).status,
      403,
    );
    assert.equal((await call('POST', '/api/restores', operator, { volumes: [] })).status, 403);
    assert.equal((await call('PUT', '/api/retention/policy', operator, {})).status, 403);
    const listed = await call('GET', '/api/tokens', ADMIN_SECRET);
    assert.deepEqual(
      (listed.json as { name: string; role: string }[]).map((t) => [t.name, t.role]),
      [
        [ADMIN_TOKEN_NAME, 'admin'],
        ['t-admin', 'admin'],
        ['t-audit', 'audit'],
        ['t-operator', 'operator'],
      ],
    );
    assert.ok(!JSON.stringify(listed.json).includes('rwt_'), 'no secret is listed');
    assert.equal((await call('DELETE', '/api/tokens/t-audit', ADMIN_SECRET)).status, 200);
    assert.equal((await call('GET', '/api/status', audit)).status, 401, 'a revoked token');
    assert.equal((await call('DELETE', '/api/tokens/t-audit', ADMIN_SECRET)).status, 404);

    // The audit log: every state-changing call, refused ones too, by token name, never a secret.
    assert.equal((await call('POST', '/api/seal', undefined, {})).status, 401);
    assert.equal((await call('GET', '/api/audit', operator)).status, 403);
    const log = await call('GET', '/api/audit?limit=100', ADMIN_SECRET);
    assert.equal(log.status, 200);
    const rows = log.json as {
      token: string | null;
      method: string;
      route: string;
      status: number;
      summary: string;
    }[];
    const seen = rows.map((r) => `${r.token ?? '-'} ${r.method} ${r.route} ${r.status}`);
    for (const expected of [
      '- POST /api/seal 401',
      'admin DELETE /api/tokens/:name 404',
      'admin DELETE /api/tokens/:name 200',
      't-operator PUT /api/retention/policy 403',
      't-operator POST /api/restores 403',
      't-audit POST /api/seal 403',
      'admin POST /api/tokens 201',
    ])
      assert.ok(seen.includes(expected), `audited: ${expected} (in ${seen.join('; ')})`);
    assert.equal(seen[0], '- POST /api/seal 401', 'newest first');
    assert.ok(!rows.some((r) => r.method === 'GET'), 'reads are not audited');
    const text = JSON.stringify(rows);
    for (const secret of [ADMIN_SECRET, ...secrets.values()])
      assert.ok(!text.includes(secret), 'no secret in the audit log');
    assert.match(
      rows.find((r) => r.route === '/api/tokens/:name')?.summary ?? '',
      /"name":"t-audit"/,
    );
    assert.equal((await call('GET', '/api/audit?limit=0', ADMIN_SECRET)).status, 400);
  });

  test('audit summaries are short and hold no secret', () => {
    assert.equal(summarize({ name: 'x' }, { at: '3' }), '{"name":"x","body":{"at":"3"}}');
    assert.equal(
      summarize({}, { token: 'rwt_secret', nested: { apiKey: 'k' } }),
      '{"body":{"token":"[redacted]","nested":{"apiKey":"[redacted]"}}}',
    );
    assert.ok(summarize({}, { file: 'x'.repeat(10_000) }).length < 200);
    assert.ok(summarize({}, { list: Array.from({ length: 1000 }, (_, i) => i) }).length <= 403);
  });
});

describe('the token store', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-tokens-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('only a SHA-256 of each secret is stored; authenticate, list, revoke', () => {
    const file = path.join(dir, 'catalog.sqlite');
    const catalog = new Catalog(file);
    const store = new TokenStore(catalog, ADMIN_SECRET);
    assert.deepEqual(store.authenticate(ADMIN_SECRET), { name: ADMIN_TOKEN_NAME, role: 'admin' });
    const made = store.create('ci', 'operator');
    assert.match(made.token, /^rwt_[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(store.authenticate(made.token), { name: 'ci', role: 'operator' });
    for (const wrong of ['', 'x', made.token.slice(0, -1), `${made.token}x`, 'a'.repeat(100_000)])
      assert.equal(store.authenticate(wrong), undefined, `refused: ${wrong.slice(0, 20)}`);
    catalog.close();
    // Nothing on disk holds the secret; a new store on the same catalog knows the token.
    const raw = new Database(file, { readonly: true });
    const rows = raw.prepare('SELECT * FROM api_tokens').all();
    raw.close();
    assert.ok(!JSON.stringify(rows).includes(made.token), 'the secret is not in the catalog');
    for (const name of fs.readdirSync(dir))
      assert.ok(!fs.readFileSync(path.join(dir, name)).includes(made.token), `not in ${name}`);
    const reopened = new Catalog(file);
    const again = new TokenStore(reopened, ADMIN_SECRET);
    assert.deepEqual(again.authenticate(made.token), { name: 'ci', role: 'operator' });
    assert.deepEqual(
      again.list().map((t) => [t.name, t.role, t.builtIn]),
      [
        [ADMIN_TOKEN_NAME, 'admin', true],
        ['ci', 'operator', false],
      ],
    );
    assert.throws(() => again.create('ci', 'audit'), /exists/);
    assert.throws(() => again.create(ADMIN_TOKEN_NAME, 'audit'), /DATA\/api-token/);
    assert.throws(() => again.create('bad name', 'audit'), /invalid/);
    assert.throws(() => again.create('../x', 'audit'), /invalid/);
    assert.throws(() => again.create('ok', 'root'), /not a role/);
    assert.throws(() => again.create(7, 'audit'), /invalid/);
    assert.throws(() => again.revoke(ADMIN_TOKEN_NAME), /cannot be revoked/);
    again.revoke('ci');
    assert.equal(again.authenticate(made.token), undefined);
    assert.throws(() => again.revoke('ci'), /no token named/);
    reopened.close();
  });
});
