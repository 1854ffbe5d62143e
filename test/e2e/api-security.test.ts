// The HTTP API against a local unprivileged user: `rewind up` runs as root, and `nobody` (setpriv)
// calls every state-changing route without a token, with a wrong one and with an audit token.
// Every call is refused (401/403) and nothing changes: views, bookmarks, tokens, policy,
// restores, exports, the production image and the target file are compared before and after.
// The export overwrite of issue 18 (a root-owned file replaced through POST /api/exports) is
// refused, and so are exports through .., symlinks and absolute paths out of the export
// directory, even with the admin token. The data directory cannot be read by nobody.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { ROUTE_ACCESS } from '../../src/api/access.js';
import { apiToken, BIN, bearer, freePort, startUpProcess } from '../support/process.js';

const asRoot = process.getuid?.() === 0;
const haveTool = (tool: string): boolean =>
  spawnSync('sh', ['-c', `command -v ${tool}`], { timeout: 10_000 }).status === 0;
const missing = ['setpriv', 'curl', 'qemu-io'].filter((tool) => !haveTool(tool));
const skip = !asRoot
  ? 'needs root: calls the API as nobody against a Rewind started as root'
  : missing.length > 0
    ? `missing ${missing.join(', ')}`
    : false;

const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups', '--'];
const scratch = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-api-security-')));
// nobody runs scripts and reads token files from here (never from the data directory).
fs.chmodSync(scratch, 0o755);
after(() => fs.rmSync(scratch, { recursive: true, force: true }));

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[], env: NodeJS.ProcessEnv = process.env): Result {
  const result = spawnSync(command, args, { timeout: 120_000, encoding: 'utf8', env });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function asNobody(command: string, ...args: string[]): Result {
  return run('setpriv', [...NOBODY, command, ...args]);
}

/** The calls nobody makes: one per state-changing route, with plausible arguments. */
function attackCalls(victim: string): { method: string; route: string; body?: object }[] {
  const bodies: Record<string, object> = {
    'POST /api/seal': { wait: true },
    'POST /api/views': { name: 'evil', kind: 'clone', at: '0' },
    'POST /api/views/:name/step': { back: 1 },
    'POST /api/bookmarks': { name: 'evil' },
    'PUT /api/bookmarks/:name/pin': {},
    'POST /api/exports': { volume: 'v', at: '0', file: victim, force: true },
    'POST /api/restores': { volumes: ['v'], at: '0', force: true },
    'POST /api/restores/:id/abandon': {},
    'PUT /api/retention/policy': { keepEveryWrite: '1m', keep: '' },
    'POST /api/tokens': { name: 'evil', role: 'admin' },
  };
  const params: Record<string, string> = { name: 's1', id: '1', volume: 'v' };
  return Object.keys(ROUTE_ACCESS)
    .filter((key) => !key.startsWith('GET ') && key !== 'POST /api/retention/simulate')
    .map((key) => {
      const [method, url] = key.split(' ') as [string, string];
      let route = url.replace(/:(\w+)/g, (_, name: string) => params[name] ?? name);
      if (key === 'DELETE /api/bookmarks/:name' || key.includes('/pin'))
        route = route.replace('/s1', '/b1');
      if (key === 'DELETE /api/tokens/:name') route = '/api/tokens/auditor';
      return { method, route, ...(bodies[key] ? { body: bodies[key] } : {}) };
    });
}

/** Run as nobody: makes each call with the token in argv[3] ('' for none), prints the statuses. */
const ATTACK_SCRIPT = `
const [base, callsJson, token] = process.argv.slice(2);
const out = [];
for (const call of JSON.parse(callsJson)) {
  const headers = { ...(token ? { authorization: 'Bearer ' + token } : {}) };
  if (call.body) headers['content-type'] = 'application/json';
  const response = await fetch(base + call.route, {
    method: call.method, headers, ...(call.body ? { body: JSON.stringify(call.body) } : {}),
  });
  const text = await response.text();
  let code = null;
  try { code = JSON.parse(text).error?.code ?? null; } catch {}
  out.push({ call: call.method + ' ' + call.route, status: response.status, code });
}
console.log(JSON.stringify(out));
`;

test('nobody cannot change anything through the HTTP API', { skip, timeout: 300_000 }, async () => {
  const dataDir = path.join(scratch, 'data');
  const exportDir = path.join(dataDir, 'exports');
  const victim = path.join(scratch, 'root-owned-file');
  fs.writeFileSync(victim, 'root-owned content\n', { mode: 0o644 });
  const [nbd, http] = [await freePort(), await freePort()];
  const base = `http://127.0.0.1:${http}`;
  let child: ChildProcess | undefined;
  try {
    child = await startUpProcess([
      '--data',
      dataDir,
      '--nbd',
      `127.0.0.1:${nbd}`,
      '--http',
      `127.0.0.1:${http}`,
      '--volume',
      'v:4M',
      '--seal-ms',
      '100',
    ]);
    // As root, the user who started it: the CLI finds the token with no flag at all.
    const cli = (...args: string[]): string =>
      execFileSync(process.execPath, [BIN, ...args, '--server', base], {
        encoding: 'utf8',
        timeout: 60_000,
      });
    execFileSync(
      'qemu-io',
      [
        '-f',
        'raw',
        `nbd://127.0.0.1:${nbd}/v`,
        '-c',
        'write -P 0x5a 0 64k',
        '-c',
        'write -P 0x6b 1M 4k',
      ],
      { timeout: 60_000 },
    );
    cli('seal', '--wait');
    cli('bookmark', 'b1', '--at', '1');
    cli('snapshot', 's1', '--at', '1');
    cli('clone', 'c1', '--at', '2');
    const auditor = JSON.parse(cli('token', 'create', 'auditor', '--role', 'audit', '--json')) as {
      token: string;
    };
    const operator = JSON.parse(cli('token', 'create', 'ops', '--role', 'operator', '--json')) as {
      token: string;
    };
    assert.match(cli('token', 'ls'), /auditor\s+audit/);
    assert.ok(!cli('token', 'ls', '--json').includes('rwt_'), 'token ls shows no secret');
    const admin = apiToken(dataDir);

    /** Everything nobody could change, read as root with the admin token. */
    const state = async (): Promise<string> => {
      const read = async (route: string): Promise<unknown> => {
        const response = await fetch(`${base}${route}`, { headers: bearer(admin) });
        assert.equal(response.status, 200, route);
        return response.json();
      };
      const production = fs.readFileSync(path.join(dataDir, 'production', 'v.img'));
      const victimStat = fs.statSync(victim);
      return JSON.stringify({
        views: await read('/api/views'),
        bookmarks: await read('/api/bookmarks'),
        tokens: await read('/api/tokens'),
        retention: ((await read('/api/retention')) as { policy: unknown }).policy,
        restores: await read('/api/restores'),
        exports: await read('/api/exports'),
        seq: ((await read('/api/status')) as { seqCommitted: number }).seqCommitted,
        production: createHash('sha256').update(production).digest('hex'),
        victim: [fs.readFileSync(victim, 'utf8'), victimStat.mode, victimStat.mtimeMs],
        exportFiles: fs.readdirSync(exportDir),
      });
    };
    const before = await state();

    const calls = attackCalls(victim);
    assert.ok(calls.length >= 14, `${calls.length} state-changing calls`);
    const script = path.join(scratch, 'attack.mjs');
    fs.writeFileSync(script, ATTACK_SCRIPT, { mode: 0o644 });
    const attack = (token: string): { call: string; status: number; code: string }[] => {
      const result = asNobody(process.execPath, script, base, JSON.stringify(calls), token);
      assert.equal(result.status, 0, result.stderr);
      return JSON.parse(result.stdout) as { call: string; status: number; code: string }[];
    };
    for (const [who, token, status, code] of [
      ['no token', '', 401, 'REWIND_AUTH'],
      ['a wrong token', 'rwt_guessed', 401, 'REWIND_AUTH'],
      ['the audit token', auditor.token, 403, 'REWIND_FORBIDDEN'],
    ] as const) {
      const answers = attack(token);
      assert.equal(answers.length, calls.length);
      for (const answer of answers)
        assert.deepEqual(
          [answer.status, answer.code],
          [status, code],
          `${who}: ${answer.call} refused`,
        );
    }
    // An operator token may make views, but not restore, change the policy or manage tokens.
    const adminOnly = calls.filter(
      (c) =>
        c.route.startsWith('/api/restores') ||
        c.route.startsWith('/api/tokens') ||
        c.route.includes('/policy'),
    );
    assert.equal(adminOnly.length, 5);
    const operatorAnswers = JSON.parse(
      asNobody(process.execPath, script, base, JSON.stringify(adminOnly), operator.token).stdout,
    ) as { status: number }[];
    assert.deepEqual(
      operatorAnswers.map((a) => a.status),
      adminOnly.map(() => 403),
    );

    // The exact call of issue 18, with curl, as nobody: refused, the file unchanged.
    const attackBody = JSON.stringify({ volume: 'v', at: '0', file: victim, force: true });
    for (const extra of [
      [],
      ['-H', 'content-type: application/json'],
      ['-H', `authorization: Bearer ${auditor.token}`, '-H', 'content-type: application/json'],
    ]) {
      const curl = asNobody(
        'curl',
        '-s',
        '-o',
        '/dev/null',
        '-w',
        '%{http_code}',
        '-X',
        'POST',
        `${base}/api/exports`,
        '-d',
        attackBody,
        ...extra,
      );
      assert.match(curl.stdout, extra.length > 2 ? /^403$/ : /^401$/, `curl ${extra.join(' ')}`);
    }
    // The CLI as nobody finds no token (root's record and DATA/api-token are not readable).
    const nobodyCli = asNobody(process.execPath, BIN, 'bookmark', 'evil', '--server', base);
    assert.notEqual(nobodyCli.status, 0);
    assert.match(nobodyCli.stderr, /missing API token/);
    // The data directory and everything in it: not readable, not listable.
    for (const target of [
      dataDir,
      path.join(dataDir, 'api-token'),
      path.join(dataDir, 'manager', 'catalog.sqlite'),
    ]) {
      const read = asNobody('cat', target);
      assert.notEqual(read.status, 0, `nobody cannot read ${target}`);
      assert.match(read.stderr, /Permission denied/);
    }
    assert.match(asNobody('ls', dataDir).stderr, /Permission denied/);
    assert.equal(fs.statSync(dataDir).mode & 0o777, 0o700);
    assert.equal(fs.statSync(path.join(dataDir, 'api-token')).mode & 0o777, 0o600);

    assert.equal(await state(), before, 'nothing changed');

    // Even the admin token exports only inside the export directory.
    fs.symlinkSync(victim, path.join(exportDir, 'link.img'));
    fs.symlinkSync(scratch, path.join(exportDir, 'out'));
    const exportAs = async (
      file: string,
      force: boolean,
    ): Promise<{ status: number; code: string }> => {
      const response = await fetch(`${base}/api/exports`, {
        method: 'POST',
        headers: { ...bearer(admin), 'content-type': 'application/json' },
        body: JSON.stringify({ volume: 'v', at: '1', file, force }),
      });
      const json = (await response.json()) as { error?: { code: string } };
      return { status: response.status, code: json.error?.code ?? '' };
    };
    for (const file of [
      victim,
      '../../root-owned-file',
      'out/root-owned-file',
      'link.img',
      path.join(exportDir, '..', '..', 'root-owned-file'),
      '/etc/passwd',
    ])
      for (const force of [false, true])
        assert.deepEqual(
          await exportAs(file, force),
          { status: 403, code: 'REWIND_FORBIDDEN' },
          file,
        );
    const victimAfter = fs.readFileSync(victim, 'utf8');
    assert.equal(victimAfter, 'root-owned content\n', 'the root-owned file is unchanged');
    const made = await exportAs('good.img', false);
    assert.equal(made.status, 202);
    // Once it is there, the same file is refused without force.
    for (let waited = 0; !fs.existsSync(path.join(exportDir, 'good.img')); waited += 50) {
      assert.ok(waited < 30_000, 'the export finishes');
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.deepEqual(await exportAs('good.img', false), { status: 409, code: 'REWIND_CONFLICT' });
    assert.match(
      cli('export', 'v', '--at', '1', '--to', 'good.img', '--force'),
      /good\.img: v at seq 1/,
    );
    assert.equal(fs.statSync(path.join(exportDir, 'good.img')).mode & 0o777, 0o600);

    // The audit log has nobody's attempts, by token name, and the admin's exports.
    const audit = JSON.parse(cli('audit', '--json', '--limit', '1000')) as {
      token: string | null;
      method: string;
      route: string;
      status: number;
    }[];
    const seen = new Set(audit.map((a) => `${a.token ?? '-'} ${a.method} ${a.route} ${a.status}`));
    for (const expected of [
      '- POST /api/exports 401',
      'auditor POST /api/exports 403',
      'auditor POST /api/restores 403',
      'ops POST /api/restores 403',
      'admin POST /api/exports 403',
      'admin POST /api/exports 202',
      'admin POST /api/tokens 201',
    ])
      assert.ok(seen.has(expected), `audited: ${expected}`);
  } finally {
    if (child && child.exitCode === null) {
      const gone = new Promise((resolve) => child?.once('exit', resolve));
      child.kill('SIGTERM');
      await gone;
    }
  }
});
