// Split deployment: `rewind manager` and `rewind agent` halves linked over TLS with a shared token.
// The right token ships and commits; a wrong token is refused and changes nothing on the manager.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { until } from '../support/process.js';
import { startAgent, startManager, type Running } from '../../src/runtime/up.js';

const missing = ['openssl'].filter((t) => spawnSync('which', [t]).status !== 0);

function call(fn: (done: (errno: number) => void) => void): Promise<void> {
  return new Promise((resolve, reject) =>
    fn((errno) => (errno === 0 ? resolve() : reject(new Error(`errno ${errno}`)))),
  );
}

test(
  'agent and manager over TLS: the token is required, history is shipped and committed',
  { skip: missing.length ? `missing ${missing.join(', ')}` : false },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-split-'));
    const cert = path.join(dir, 'cert.pem');
    const key = path.join(dir, 'key.pem');
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        key,
        '-out',
        cert,
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
      ],
      { stdio: 'ignore', timeout: 30_000 },
    );
    const any = { host: '127.0.0.1', port: 0 };
    const running: Running[] = [];
    try {
      const manager = await startManager({
        dataDir: path.join(dir, 'm'),
        listen: any,
        nbd: any,
        http: any,
        token: 'right-token',
        tls: { cert: fs.readFileSync(cert), key: fs.readFileSync(key) },
        quiet: true,
      });
      running.push(manager);
      const link = { host: '127.0.0.1', port: manager.linkAddress.port };
      const base = {
        nbd: any,
        manager: link,
        tlsCa: fs.readFileSync(cert),
        volumes: [{ name: 'db', sizeBytes: 1024 * 1024 }],
        sealBytes: 1 << 20,
        sealMs: 100,
        quiet: true,
      };

      const intruder = await startAgent({
        ...base,
        dataDir: path.join(dir, 'bad'),
        token: 'wrong-token',
      });
      running.push(intruder);
      await new Promise((r) => setTimeout(r, 500));
      const before = manager.manager!.status() as {
        volumeSet: { id: string | null };
        agentConnected: boolean;
      };
      assert.equal(before.volumeSet.id, null, 'a wrong token registers nothing');
      assert.equal(before.agentConnected, false);
      await intruder.close();
      running.pop();

      const agent = await startAgent({
        ...base,
        dataDir: path.join(dir, 'a'),
        token: 'right-token',
      });
      running.push(agent);
      await until(
        'agent connects over TLS',
        () => (manager.manager!.status() as { agentConnected: boolean }).agentConnected,
      );
      const exp = agent.agent!.exports()[0]!;
      await call((d) => exp.write(4096, Buffer.alloc(4096, 0x5a), true, d));
      const { seqLast } = await manager.manager!.seal(true);
      assert.equal(seqLast, 1);
      const view = await manager.manager!.createView('s', 'snapshot', '1');
      assert.ok(view.read(0, 4096, 4096).equals(Buffer.alloc(4096, 0x5a)));
      assert.ok(view.read(0, 0, 4096).equals(Buffer.alloc(4096)));
      assert.ok(manager.manager!.exports().some((e) => e.name === 'db@s'));

      // The manager's HTTP API needs its token (created in DATA/api-token), compared in constant time.
      assert.equal(manager.apiTokenFile, path.join(dir, 'm', 'api-token'));
      assert.equal(fs.statSync(manager.apiTokenFile).mode & 0o777, 0o600);
      const apiToken = fs.readFileSync(manager.apiTokenFile, 'utf8').trim();
      const status = (authorization?: string): Promise<Response> =>
        fetch(
          `${manager.httpAddress}/api/status`,
          authorization ? { headers: { authorization } } : {},
        );
      assert.equal((await status()).status, 401, 'no token: refused');
      const wrong = await status('Bearer not-the-token');
      assert.equal(wrong.status, 401, 'a wrong token: refused');
      assert.equal(((await wrong.json()) as { error: { code: string } }).error.code, 'REWIND_AUTH');
      assert.equal((await status(`Bearer ${apiToken}`)).status, 200, 'the right token: served');
      const views = await fetch(`${manager.httpAddress}/api/views/s`, {
        method: 'DELETE',
        headers: { authorization: 'Bearer nope' },
      });
      assert.equal(views.status, 401);
      assert.ok(manager.manager!.views.has('s'), 'a refused request changes nothing');
    } finally {
      for (const r of running.reverse()) await r.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('the manager stops while an agent connection is open (it does not wait for the agent to leave)', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-split-close-'));
  const any = { host: '127.0.0.1', port: 0 };
  try {
    const manager = await startManager({
      dataDir: path.join(dir, 'm'),
      listen: any,
      nbd: any,
      http: any,
      token: 't',
      apiToken: 'a',
      quiet: true,
    });
    const socket = net.connect(manager.linkAddress.port, '127.0.0.1');
    socket.on('error', () => undefined);
    await new Promise((r) => socket.once('connect', r));
    const closed = await Promise.race([
      manager.close().then(() => true),
      new Promise((r) => setTimeout(() => r(false), 5000)),
    ]);
    assert.equal(closed, true, 'close() returns with a connection still open');
    socket.destroy();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
