// Helpers for tests that run `rewind up` as a real child process.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';

export const BIN = path.resolve('bin/rewind.js');

export async function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/** Starts `rewind up` with `args` and waits until it printed its API address. */
export async function startUpProcess(args: string[]): Promise<ChildProcess> {
  const child = spawn(process.execPath, [BIN, 'up', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  for (let waited = 0; !out.includes('API:'); waited += 50) {
    if (waited >= 30_000 || child.exitCode !== null) {
      child.kill('SIGKILL'); // never leave a half-started server behind to hold the test runner open
      assert.fail(`rewind up did not start within ${waited} ms: ${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return child;
}

/** Polls `check` every 20 ms until it holds; fails with `what` after `timeoutMs`. */
export async function until(what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  for (let waited = 0; !check(); waited += 20) {
    assert.ok(waited < timeoutMs, `timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A `rewind` child process (any subcommand) with its combined output kept. */
export interface RewindProcess {
  child: ChildProcess;
  out: () => string;
}

/** Starts `rewind ARGS` (e.g. `manager ...`, `agent ...`) with extra environment variables. */
export function startRewind(args: string[], env: NodeJS.ProcessEnv = {}): RewindProcess {
  const child = spawn(process.execPath, [BIN, ...args], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr?.on('data', (c: Buffer) => (out += c.toString()));
  return { child, out: () => out };
}

/** Resolves once `p` has exited (at once if it already has). */
export function exited(p: RewindProcess): Promise<unknown> {
  return p.child.exitCode !== null || p.child.signalCode !== null
    ? Promise.resolve()
    : new Promise((r) => p.child.once('exit', r));
}

/** The NBD TCP port of an in-process Rewind (these tests serve NBD on TCP). */
export function nbdPort(running: { nbdAddress: { port: number } | undefined }): number {
  assert.ok(running.nbdAddress, 'NBD listens on TCP');
  return running.nbdAddress.port;
}

/** The admin API token of a data directory (DATA/api-token, made at the first start). */
export function apiToken(dataDir: string): string {
  return fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
}

/** Headers that authenticate an API call with `token`. */
export function bearer(token: string): { authorization: string } {
  return { authorization: `Bearer ${token}` };
}

/** The environment a `rewind` client child needs for an in-process server (no recorded token). */
export function apiEnv(running: { httpAddress: string; apiTokenFile?: string }): NodeJS.ProcessEnv {
  assert.ok(running.apiTokenFile, 'the API has a token file');
  return {
    ...process.env,
    REWIND_SERVER: running.httpAddress,
    REWIND_TOKEN: fs.readFileSync(running.apiTokenFile, 'utf8').trim(),
  };
}
