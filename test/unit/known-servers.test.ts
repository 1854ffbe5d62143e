// Where the CLI finds the token of a server this user started: records per API address (private
// files), looked up with the address spelled either way, removed by their writer, pruned when
// their server is gone, and ignored when torn or pointing at a file that cannot be read.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  forgetServer,
  knownServersDir,
  knownToken,
  lookUpServer,
  rememberServer,
} from '../../src/cli/known-servers.js';

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-known-servers-'));
const saved = process.env.REWIND_CONFIG_DIR;
process.env.REWIND_CONFIG_DIR = path.join(scratch, 'config');
after(() => {
  if (saved === undefined) delete process.env.REWIND_CONFIG_DIR;
  else process.env.REWIND_CONFIG_DIR = saved;
  fs.rmSync(scratch, { recursive: true, force: true });
});

test('remember, look up, forget', () => {
  const tokenFile = path.join(scratch, 'api-token');
  fs.writeFileSync(tokenFile, 'secret-1\n', { mode: 0o600 });
  rememberServer(['http://127.0.0.1:7420', 'http://0.0.0.0:7421'], tokenFile);
  const dir = knownServersDir();
  assert.equal(dir, path.join(scratch, 'config', 'tokens'));
  assert.equal(fs.statSync(dir).mode & 0o777, 0o700);
  for (const name of fs.readdirSync(dir))
    assert.equal(fs.statSync(path.join(dir, name)).mode & 0o777, 0o600);
  assert.ok(
    !fs
      .readdirSync(dir)
      .some((name) => fs.readFileSync(path.join(dir, name), 'utf8').includes('secret-1')),
    'the token itself is not copied',
  );
  assert.equal(knownToken('http://127.0.0.1:7420'), 'secret-1');
  assert.equal(knownToken('http://localhost:7420/'), 'secret-1');
  assert.equal(knownToken('http://127.0.0.1:7422'), undefined);
  // The token file is read at each call: a new token is found, a missing one is no token.
  fs.writeFileSync(tokenFile, 'secret-2\n');
  assert.equal(knownToken('http://127.0.0.1:7420'), 'secret-2');
  fs.rmSync(tokenFile);
  assert.equal(knownToken('http://127.0.0.1:7420'), undefined);
  forgetServer(['http://127.0.0.1:7420']);
  assert.equal(lookUpServer('http://127.0.0.1:7420'), undefined);
  assert.ok(lookUpServer('http://0.0.0.0:7421'), 'only what was asked is forgotten');
});

test('dead servers are pruned; torn and foreign records are ignored', () => {
  const dir = knownServersDir();
  fs.mkdirSync(dir, { recursive: true });
  const dead = path.join(dir, 'dead.json');
  // A pid above the kernel's pid_max never runs.
  fs.writeFileSync(
    dead,
    JSON.stringify({ version: 1, server: 'http://x:1', tokenFile: '/x', pid: 2 ** 22 + 7 }),
  );
  fs.writeFileSync(path.join(dir, 'torn.json'), '{"version":1,"ser');
  rememberServer(['http://127.0.0.1:9000'], path.join(scratch, 'none'));
  assert.equal(fs.existsSync(dead), false, 'the dead server record is removed');
  assert.equal(fs.existsSync(path.join(dir, 'torn.json')), true, 'a torn file is left alone');
  // A record under another address's file name does not answer for this one.
  const file = fs
    .readdirSync(dir)
    .map((name) => path.join(dir, name))
    .find((f) => fs.readFileSync(f, 'utf8').includes('9000')) as string;
  fs.writeFileSync(
    file,
    JSON.stringify({ version: 1, server: 'http://evil:1', tokenFile: '/x', pid: process.pid }),
  );
  assert.equal(lookUpServer('http://127.0.0.1:9000'), undefined);
});
