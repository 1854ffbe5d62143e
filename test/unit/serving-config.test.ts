// How a process is told to serve NBD and keep its data, checked before anything starts: the NBD
// plan's refusals (no listener, contradictory or missing credentials, rules that cannot work, an
// unknown group), the URIs printed for clients, and the scan that reports a data directory or a
// key file open to others (with the chmod that fixes it) or refuses it when strict.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { RewindError } from '../../src/core/index.js';
import { scanExposed } from '../../src/platform/index.js';
import { nbdUris, planNbd } from '../../src/runtime/index.js';
import { checkPrivate } from '../../src/runtime/private-data.js';

const tcp = { host: '127.0.0.1', port: 10809 };

function scratch(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-serving-'));
}

function refused(run: () => unknown, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(error instanceof RewindError, `a RewindError, not ${String(error)}`);
    assert.match(error.message, pattern);
    return true;
  });
}

test('the NBD plan refuses what cannot work, before anything listens', () => {
  const dir = scratch();
  const psk = path.join(dir, 'keys.psk');
  fs.writeFileSync(psk, 'alice:00112233\n');
  refused(() => planNbd(undefined, {}), /listen nowhere/);
  refused(() => planNbd(tcp, { tls: { mode: 'on' } }), /needs --nbd-tls-cert and --nbd-tls-key/);
  refused(() => planNbd(tcp, { tls: { mode: 'off', pskFile: psk } }), /off with TLS credentials/);
  refused(
    () => planNbd(tcp, { tls: { pskFile: psk, certFile: psk, keyFile: psk } }),
    /either .* not both/,
  );
  refused(() => planNbd(tcp, { tls: { caFile: psk } }), /--nbd-tls-ca needs/);
  refused(() => planNbd(tcp, { tls: { pskFile: path.join(dir, 'missing') } }), /cannot read/);
  refused(() => planNbd(tcp, { allow: ['*@*=psk:alice'] }), /need TLS/);
  refused(
    () => planNbd(tcp, { tls: { pskFile: psk }, allow: ['*@*=cert:alice'] }),
    /verifies none/,
  );
  refused(
    () => planNbd(tcp, { tls: { certFile: psk, keyFile: psk } }),
    /certificate, key or CA cannot be used/,
  );
  refused(
    () => planNbd(tcp, { unix: { path: path.join(dir, 's'), group: 'no-such-group-here' } }),
    /does not exist/,
  );
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the NBD plan fills in defaults: require with credentials, 0600 or 0660 for the socket', () => {
  const dir = scratch();
  const psk = path.join(dir, 'keys.psk');
  fs.writeFileSync(psk, 'alice:00112233\n');
  const plan = planNbd(tcp, { tls: { pskFile: psk }, allow: ['*@*=psk:alice'] });
  assert.equal(plan.tls?.mode, 'require');
  assert.equal(plan.access.length, 1);
  assert.equal(planNbd(tcp, undefined).tls, undefined, 'off without credentials');
  const socket = path.join(dir, 's');
  assert.equal(planNbd(undefined, { unix: { path: socket } }).unix?.options.mode, 0o600);
  const grouped = planNbd(undefined, { unix: { path: socket, group: '0' } });
  assert.deepEqual(grouped.unix?.options, { mode: 0o660, gid: 0 });
  fs.rmSync(dir, { recursive: true, force: true });
});

test('printed URIs: nbd or nbds by the TLS mode, nbd+unix with the socket path', () => {
  const both = { tcp, unixPath: '/run/rewind/nbd.sock' };
  assert.deepEqual(nbdUris({ ...both, tlsMode: 'off' }, 'db@x'), [
    'nbd://127.0.0.1:10809/db@x',
    'nbd+unix:///db@x?socket=/run/rewind/nbd.sock',
  ]);
  assert.deepEqual(nbdUris({ ...both, tlsMode: 'require' }, 'db'), [
    'nbds://127.0.0.1:10809/db',
    'nbds+unix:///db?socket=/run/rewind/nbd.sock',
  ]);
  assert.deepEqual(
    nbdUris({ tcp: { host: '::1', port: 1 }, unixPath: '/tmp/a b&c', tlsMode: 'on' }, 'v'),
    ['nbd://[::1]:1/v', 'nbd+unix:///v?socket=/tmp/a%20b%26c'],
  );
});

test('the data directory scan finds what group or others can use, and says how to fix it', async () => {
  const dir = scratch();
  const data = path.join(dir, 'data');
  fs.mkdirSync(path.join(data, 'manager'), { recursive: true, mode: 0o700 });
  fs.chmodSync(data, 0o700);
  fs.chmodSync(path.join(data, 'manager'), 0o700);
  fs.writeFileSync(path.join(data, 'manager', 'catalog.sqlite'), 'x');
  fs.chmodSync(path.join(data, 'manager', 'catalog.sqlite'), 0o600);
  const key = path.join(dir, 'key.pem');
  fs.writeFileSync(key, 'k');
  fs.chmodSync(key, 0o600);
  const warnings: string[] = [];
  const log = (_level: string, message: string): number => warnings.push(message);
  const check = { dataDir: data, secretFiles: [key], strict: false, log };
  assert.deepEqual(await scanExposed(data), {
    entries: 3,
    exposed: 0,
    examples: [],
    truncated: false,
  });
  await checkPrivate(check);
  assert.deepEqual(warnings, [], 'a private directory is not reported');

  fs.chmodSync(path.join(data, 'manager', 'catalog.sqlite'), 0o640);
  fs.chmodSync(data, 0o711);
  fs.chmodSync(key, 0o644);
  fs.symlinkSync('/etc/passwd', path.join(data, 'link')); // lstat: a symlink is not followed
  const report = await scanExposed(data);
  assert.equal(report.exposed, 2);
  assert.deepEqual(
    report.examples.map((entry) => [path.relative(data, entry.path), entry.mode]),
    [
      ['', 0o711],
      ['manager/catalog.sqlite', 0o640],
    ],
  );
  await checkPrivate(check);
  assert.equal(warnings.length, 2, warnings.join('\n'));
  assert.match(warnings[0] ?? '', /2 of 4 entries .*0711.*catalog\.sqlite 0640.*chmod -R go-rwx /);
  assert.match(warnings[1] ?? '', /key\.pem holds a secret .*0644.*chmod 600 /);
  await assert.rejects(
    checkPrivate({ ...check, strict: true }),
    (error: unknown) =>
      error instanceof RewindError &&
      error.code === 'REWIND_CONFIG' &&
      /strict-permissions/.test(error.message) &&
      /chmod -R go-rwx/.test(error.hint ?? ''),
  );
  assert.deepEqual(await scanExposed(path.join(dir, 'missing')), {
    entries: 0,
    exposed: 0,
    examples: [],
    truncated: false,
  });
  fs.rmSync(dir, { recursive: true, force: true });
});
