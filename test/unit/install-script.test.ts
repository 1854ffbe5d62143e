// scripts/install.sh and a shared node_modules: a checkout whose node_modules is a symbolic link
// (a tree shared with another checkout) must not run npm ci through it, which empties the tree it
// points to; a checkout with its own stale node_modules still reinstalls. The script runs for real
// from a copy, with every tool it looks for (npm, apt-get and the Debian tools) replaced by a stub
// that records its arguments, so nothing is installed or built.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const INSTALL_SCRIPT = fileURLToPath(new URL('../../../scripts/install.sh', import.meta.url));

/**
 * Every command install.sh looks up or calls by name: the tools of its `for pair in` list (read
 * from the script itself, so a tool added there is stubbed here too), memcached and apt-get.
 */
function stubbedCommands(): string[] {
  const script = fs.readFileSync(INSTALL_SCRIPT, 'utf8');
  const list = /for pair in ([^;]+); do/.exec(script);
  assert.ok(list?.[1] !== undefined, "install.sh's tool list is where this test reads it");
  const tools = list[1]
    .trim()
    .split(/\s+/)
    .map((pair) => pair.split(':')[0] as string);
  assert.ok(tools.includes('nbdkit') && tools.includes('g++'), 'the tool list was read');
  return [...tools, 'memcached', 'apt-get'];
}

interface Checkout {
  root: string;
  run(): { status: number | null; stderr: string; calls: string[] };
}

/** A copy of the script in a checkout of its own, with stubs first in PATH. */
function checkout(base: string): Checkout {
  const root = path.join(base, 'checkout');
  const bin = path.join(base, 'bin');
  const calls = path.join(base, 'calls.log');
  fs.mkdirSync(path.join(root, 'scripts'), { recursive: true });
  fs.mkdirSync(bin);
  fs.copyFileSync(INSTALL_SCRIPT, path.join(root, 'scripts', 'install.sh'));
  fs.chmodSync(path.join(root, 'scripts', 'install.sh'), 0o755);
  for (const name of stubbedCommands()) {
    fs.writeFileSync(path.join(bin, name), `#!/bin/sh\necho "${name} $*" >> '${calls}'\n`, {
      mode: 0o755,
    });
  }
  // npm: recorded; `npm run build` makes the dist directory the script then touches a file in.
  fs.writeFileSync(
    path.join(bin, 'npm'),
    `#!/bin/sh\necho "npm $*" >> '${calls}'\n[ "$1" = run ] && mkdir -p dist\nexit 0\n`,
    { mode: 0o755 },
  );
  return {
    root,
    run() {
      const result = spawnSync('bash', [path.join(root, 'scripts', 'install.sh')], {
        cwd: root,
        encoding: 'utf8',
        timeout: 30_000,
        env: { ...process.env, PATH: `${bin}:/usr/bin:/bin` },
      });
      const log = fs.existsSync(calls) ? fs.readFileSync(calls, 'utf8').trim().split('\n') : [];
      return { status: result.status, stderr: result.stderr, calls: log };
    },
  };
}

/** A node_modules tree installed before package.json last changed (so it looks stale). */
function staleTree(dir: string, packageJson: string): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, '.package-lock.json'), '{}');
  fs.writeFileSync(path.join(dir, 'marker'), 'installed packages');
  const old = new Date(Date.now() - 3600_000);
  fs.utimesSync(path.join(dir, '.package-lock.json'), old, old);
  fs.writeFileSync(packageJson, '{"name":"checkout"}');
  return dir;
}

describe('scripts/install.sh', () => {
  it('does not run npm ci through a node_modules that is a symbolic link', () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-install-'));
    try {
      const c = checkout(base);
      const shared = staleTree(
        path.join(base, 'other', 'node_modules'),
        path.join(c.root, 'package.json'),
      );
      fs.symlinkSync(shared, path.join(c.root, 'node_modules'));
      const { status, stderr, calls } = c.run();
      assert.equal(status, 0, stderr);
      assert.deepEqual(
        calls.filter((call) => call.startsWith('npm ')),
        ['npm run build'],
        'only the build ran',
      );
      assert.match(stderr, /node_modules is a symbolic link to .*other\/node_modules/);
      assert.equal(fs.readFileSync(path.join(shared, 'marker'), 'utf8'), 'installed packages');
    } finally {
      fs.rmSync(base, { recursive: true, force: true });
    }
  });

  it('reinstalls a node_modules of its own that is older than package.json', () => {
    const base = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-install-'));
    try {
      const c = checkout(base);
      staleTree(path.join(c.root, 'node_modules'), path.join(c.root, 'package.json'));
      const { status, stderr, calls } = c.run();
      assert.equal(status, 0, stderr);
      assert.deepEqual(
        calls.filter((call) => call.startsWith('npm ')),
        ['npm ci --no-audit --no-fund', 'npm run build'],
      );
    } finally {
      fs.rmSync(base, { recursive: true, force: true });
    }
  });
});
