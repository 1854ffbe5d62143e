// The HTTP API over HTTPS (--http-tls-cert/--http-tls-key): the console URL and the address are
// https://, a client that trusts the CA is served (the token rule unchanged), plain HTTP and a
// client that does not trust the certificate get nothing, and credentials that do not belong
// together are refused at start.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { startUp, type Running, type UpOptions } from '../../src/runtime/up.js';
import { apiEnv, BIN } from '../support/process.js';
import { haveTool, makePki } from '../support/tls.js';

const skip = haveTool('openssl') ? false : 'missing openssl';
const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-api-tls-'));
after(() => fs.rmSync(scratch, { recursive: true, force: true }));

function options(dataDir: string, tls: UpOptions['httpTls']): UpOptions {
  return {
    dataDir,
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    volumes: [{ name: 'v', sizeBytes: 1 << 20 }],
    sealBytes: 1 << 20,
    sealMs: 100,
    quiet: true,
    ...(tls ? { httpTls: tls } : {}),
  };
}

function get(url: string, ca: Buffer | undefined, token?: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const request = https.get(
      url,
      {
        ...(ca ? { ca } : {}),
        headers: token ? { authorization: `Bearer ${token}` } : {},
        timeout: 10_000,
      },
      (response) => {
        response.resume();
        resolve(response.statusCode ?? 0);
      },
    );
    request.on('error', reject);
    request.on('timeout', () => request.destroy(new Error('timeout')));
  });
}

test('the HTTP API over HTTPS', { skip, timeout: 120_000 }, async () => {
  const pki = makePki(path.join(scratch, 'pki'));
  let running: Running | undefined;
  try {
    running = await startUp(
      options(path.join(scratch, 'data'), { certFile: pki.serverCert, keyFile: pki.serverKey }),
    );
    assert.match(running.httpAddress, /^https:\/\/127\.0\.0\.1:\d+$/);
    assert.match(running.consoleUrl, /^https:\/\/127\.0\.0\.1:\d+\/#token=/);
    const ca = fs.readFileSync(pki.caCert);
    const token = fs.readFileSync(running.apiTokenFile as string, 'utf8').trim();
    const status = `${running.httpAddress}/api/status`;
    assert.equal(await get(status, ca), 401, 'TLS does not replace the token');
    assert.equal(await get(status, ca, token), 200);
    assert.equal(await get(`${running.httpAddress}/`, ca), 200, 'the console page');
    await assert.rejects(get(status, undefined, token), /self[- ]signed|unable to verify/i);
    // Plain HTTP on the same port gets no answer from the API.
    await assert.rejects(
      fetch(status.replace('https:', 'http:'), { headers: { authorization: `Bearer ${token}` } }),
    );
    // The CLI trusts the CA through NODE_EXTRA_CA_CERTS; without it, the certificate is refused.
    // (Asynchronously: the server runs in this process.)
    const cli = (env: NodeJS.ProcessEnv): Promise<{ status: number | null; out: string }> =>
      new Promise((resolve) => {
        execFile(
          process.execPath,
          [BIN, 'status', '--json'],
          { env, encoding: 'utf8', timeout: 30_000 },
          (error, stdout, stderr) =>
            resolve({ status: error ? (error.code as number) : 0, out: `${stdout}${stderr}` }),
        );
      });
    const trusted = await cli({ ...apiEnv(running), NODE_EXTRA_CA_CERTS: pki.caCert });
    assert.equal(trusted.status, 0, trusted.out);
    assert.equal((JSON.parse(trusted.out) as { seqCommitted: number }).seqCommitted, 0);
    const untrusted = await cli(apiEnv(running));
    assert.notEqual(untrusted.status, 0);
    assert.match(untrusted.out, /cannot reach the Rewind API/);
  } finally {
    await running?.close();
  }
  // A key that is not the certificate's: refused at start, before anything listens.
  const other = makePki(path.join(scratch, 'other'));
  await assert.rejects(
    startUp(
      options(path.join(scratch, 'data2'), { certFile: pki.serverCert, keyFile: other.serverKey }),
    ),
    (error: Error & { code?: string }) =>
      error.code === 'REWIND_CONFIG' && /--http-tls-cert\/--http-tls-key/.test(error.message),
  );
});
