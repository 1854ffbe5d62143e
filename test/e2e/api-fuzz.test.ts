// A short, seeded fuzz of `rewind up`'s HTTP API: malformed and huge bodies, deep JSON, odd
// methods, paths and headers, missing, wrong and read-only tokens, and admin calls whose bodies
// are always invalid. Every answer is a typed error (or a read), never a 5xx; the process stays
// up, its memory stays bounded, and nothing changes. Bounded in count and in time.
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { ROUTE_ACCESS } from '../../src/api/access.js';
import { rng, type Rng } from '../support/model.js';
import { apiToken, bearer, freePort, startUpProcess } from '../support/process.js';

const SEED = Number(process.env.REWIND_API_FUZZ_SEED ?? 20261202);
const REQUESTS = 1500;
const CONCURRENCY = 16;
const TIME_MS_MAX = 120_000;
/** Growth of the server's resident memory over the run that still counts as bounded. */
const RSS_GROWTH_BYTES_MAX = 96 * 1024 * 1024;

interface Request {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: Buffer | undefined;
  /** The request may change state: it must be refused (or invalid by construction). */
  label: string;
}

interface Answer {
  status: number;
  body: string;
}

function send(port: number, request: Request): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const outgoing = http.request(
      {
        host: '127.0.0.1',
        port,
        method: request.method,
        path: request.path,
        headers: request.headers,
        agent: false,
        timeout: 30_000,
      },
      (response) => {
        const chunks: Buffer[] = [];
        let bytes = 0;
        response.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
          if (bytes <= 1 << 20) chunks.push(chunk);
        });
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString() }),
        );
        response.on('error', reject);
      },
    );
    outgoing.on('timeout', () => outgoing.destroy(new Error(`timeout: ${request.label}`)));
    // A server may answer (413, 401) and close before a large body is sent: that is an answer.
    outgoing.on('error', (error: NodeJS.ErrnoException) =>
      error.code === 'ECONNRESET' || error.code === 'EPIPE'
        ? resolve({ status: -1, body: '' })
        : reject(new Error(`${request.label}: ${error.message}`)),
    );
    outgoing.end(request.body);
  });
}

const ROUTES = Object.keys(ROUTE_ACCESS).filter((key) => key !== 'GET /api/events');
const ODD_PATHS = [
  '/',
  '//',
  '/api',
  '/api/',
  '/api/views/%00',
  '/api/views/..%2f..%2fetc',
  '/../../etc/passwd',
  '/api/bookmarks/%ff%fe',
  '/assets/../../../etc/passwd',
  '/api/log?from=-1&limit=99999999999999999999',
  '/api/timeline?buckets=0',
  '/api/volumes/v/history?range=zz',
  '/api/volumes/nope/blockmap?cells=1',
  '/api/points/resolve?at=%40%40%40',
  '/api/exports/999999999999999999999',
  '/metrics?x=1',
];
const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'TRACE', 'PROPFIND'];

function garbage(random: Rng, length: number): string {
  return random.bytes(length).toString('latin1');
}

function fuzzPath(random: Rng): string {
  if (random.bool(0.2)) return random.pick(ODD_PATHS);
  if (random.bool(0.05)) return `/api/${'a'.repeat(9000 + random.int(3000))}`;
  const [, url] = random.pick(ROUTES).split(' ') as [string, string];
  const filled = url
    .replace(/:(\w+)/g, () =>
      random.pick(['s1', 'b1', 'v', '1', encodeURIComponent(garbage(random, 8)), 'x'.repeat(600)]),
    )
    .replace('/*', `/${random.pick(['index.html', 'assets/app.js', 'nope', '%2e%2e/x'])}`);
  return random.bool(0.2)
    ? `${filled}?${encodeURIComponent(garbage(random, random.int(200)))}`
    : filled;
}

function fuzzBody(random: Rng): Buffer | undefined {
  switch (random.int(9)) {
    case 0:
      return undefined;
    case 1:
      return Buffer.from('{"name":');
    case 2:
      return Buffer.alloc((1 << 20) + 1 + random.int(1 << 20), 0x20); // over the limit
    case 3:
      return Buffer.from(`${'['.repeat(50_000)}${']'.repeat(50_000)}`);
    case 4:
      return random.bytes(random.int(2000));
    case 5:
      return Buffer.from(JSON.stringify({ __fuzz: true, name: 7, at: [], volumes: 'v' }));
    case 6:
      return Buffer.from(JSON.stringify([{ name: 'x' }]));
    case 7:
      return Buffer.from('null');
    default:
      return Buffer.from(JSON.stringify({ __fuzz: garbage(random, 100), wait: 'yes' }));
  }
}

function fuzzRequest(random: Rng, tokens: { audit: string; admin: string }): Request {
  const method = random.bool(0.6) ? random.pick(METHODS.slice(0, 4)) : random.pick(METHODS);
  const requestPath = fuzzPath(random);
  const body = method === 'GET' || method === 'HEAD' ? undefined : fuzzBody(random);
  const headers: Record<string, string> = {};
  const contentType = random.pick([
    'application/json',
    'application/json',
    'text/plain',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=x',
    '',
  ]);
  if (body && contentType) headers['content-type'] = contentType;
  // Who: nobody, a wrong or malformed token, the audit token; the admin token only with bodies
  // that can never be valid (an unknown field, malformed JSON, the wrong shape or size).
  const admin = body !== undefined && !body.equals(Buffer.from('null')) && random.bool(0.25);
  const who = admin
    ? 'admin'
    : random.pick(['none', 'wrong', 'malformed', 'long', 'audit', 'audit']);
  const value: Record<string, string | undefined> = {
    none: undefined,
    wrong: `Bearer rwt_${random.bytes(16).toString('hex')}`,
    malformed: random.pick([
      'Bearer',
      'Basic YWRtaW46YWRtaW4=',
      `Bearer  ${tokens.audit}`,
      'bearer x',
    ]),
    long: `Bearer ${'x'.repeat(5000)}`,
    audit: `Bearer ${tokens.audit}`,
    admin: `Bearer ${tokens.admin}`,
  };
  if (value[who] !== undefined) headers.authorization = value[who];
  if (admin && (body.length < 3 || body[0] !== 0x7b)) headers['content-type'] = 'application/json';
  return {
    method,
    path: requestPath,
    headers,
    body,
    label: `${method} ${requestPath.slice(0, 80)} as ${who}`,
  };
}

function rssBytes(pid: number): number {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
}

test(
  `HTTP API fuzz (rewind up, seed ${SEED}): ${REQUESTS} requests, typed errors, nothing changes`,
  { timeout: TIME_MS_MAX + 60_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-api-fuzz-'));
    const [nbd, httpPort] = [await freePort(), await freePort()];
    const base = `http://127.0.0.1:${httpPort}`;
    let child: ChildProcess | undefined;
    try {
      child = await startUpProcess([
        '--data',
        path.join(dir, 'data'),
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${httpPort}`,
        '--volume',
        'v:1M',
      ]);
      const admin = apiToken(path.join(dir, 'data'));
      const api = async (method: string, route: string, body?: object): Promise<unknown> => {
        const response = await fetch(`${base}${route}`, {
          method,
          headers: { ...bearer(admin), ...(body ? { 'content-type': 'application/json' } : {}) },
          ...(body ? { body: JSON.stringify(body) } : {}),
        });
        assert.ok(response.status < 300, `${method} ${route}: ${response.status}`);
        return response.json();
      };
      await api('POST', '/api/bookmarks', { name: 'b1', at: '0' });
      await api('POST', '/api/views', { name: 's1', kind: 'snapshot', at: '0' });
      const audit = (
        (await api('POST', '/api/tokens', { name: 'a', role: 'audit' })) as { token: string }
      ).token;
      const state = async (): Promise<string> =>
        JSON.stringify([
          await api('GET', '/api/views'),
          await api('GET', '/api/bookmarks'),
          await api('GET', '/api/tokens'),
          ((await api('GET', '/api/retention')) as { policy: unknown }).policy,
          await api('GET', '/api/restores'),
          await api('GET', '/api/exports'),
          ((await api('GET', '/api/status')) as { seqCommitted: number }).seqCommitted,
          fs.readFileSync(path.join(dir, 'data', 'production', 'v.img')).toString('base64'),
        ]);
      const before = await state();
      const pid = child.pid as number;
      const rssBefore = rssBytes(pid);
      let rssMax = rssBefore;
      const random = rng(SEED);
      const requests = Array.from({ length: REQUESTS }, () =>
        fuzzRequest(random, { audit, admin }),
      );
      const statuses = new Map<number, number>();
      const problems: string[] = [];
      const startedMs = Date.now();
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < requests.length && Date.now() - startedMs < TIME_MS_MAX) {
          const request = requests[next++] as Request;
          const answer = await send(httpPort, request);
          statuses.set(answer.status, (statuses.get(answer.status) ?? 0) + 1);
          if (answer.status >= 500 || answer.status === 0)
            problems.push(`${request.label}: ${answer.status} ${answer.body.slice(0, 200)}`);
          const changing = request.method !== 'GET' && request.method !== 'HEAD';
          if (
            changing &&
            answer.status >= 200 &&
            answer.status < 300 &&
            !request.path.includes('simulate')
          )
            problems.push(`${request.label}: accepted (${answer.status})`);
          if (answer.status >= 400 && answer.body.startsWith('{')) {
            const code = (JSON.parse(answer.body) as { error?: { code?: string } }).error?.code;
            if (!/^REWIND_[A-Z_]+$/.test(code ?? ''))
              problems.push(`${request.label}: untyped error ${answer.body.slice(0, 200)}`);
          }
          if (next % 100 === 0) rssMax = Math.max(rssMax, rssBytes(pid));
        }
      };
      await Promise.all(Array.from({ length: CONCURRENCY }, worker));
      const elapsedMs = Date.now() - startedMs;
      rssMax = Math.max(rssMax, rssBytes(pid));
      const summary = [...statuses.entries()].sort((a, b) => a[0] - b[0]);
      console.log(
        `# api fuzz seed ${SEED}: ${next} requests in ${elapsedMs} ms; statuses ${JSON.stringify(summary)}; RSS ${(rssBefore / 2 ** 20).toFixed(0)} -> max ${(rssMax / 2 ** 20).toFixed(0)} MiB`,
      );
      assert.deepEqual(problems.slice(0, 20), [], `seed ${SEED}`);
      assert.ok(next >= REQUESTS / 2, `at least half the requests ran in ${TIME_MS_MAX} ms`);
      assert.equal(child.exitCode, null, 'the process stays up');
      assert.ok(rssMax - rssBefore < RSS_GROWTH_BYTES_MAX, `RSS grew by ${rssMax - rssBefore}`);
      assert.equal(await state(), before, `nothing changed (seed ${SEED})`);
      // Every state-changing fuzz call is in the audit log, none accepted.
      const log = (await api('GET', '/api/audit?limit=10000')) as { status: number }[];
      assert.ok(log.length > 100, `${log.length} audited calls`);
    } finally {
      if (child && child.exitCode === null) {
        const gone = new Promise((resolve) => child?.once('exit', resolve));
        child.kill('SIGTERM');
        await gone;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
