// Exclusive locks that die with their process: a lock held by another process is refused at once
// naming that process (pid and command line, as /proc shows them), a lock of a process killed
// with SIGKILL is free again at once, and /proc/locks lines are read for the right file only.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { RewindError } from '../../src/core/index.js';
import { flockHolderPid, lockExclusive, lockHolder } from '../../src/platform/index.js';

const LOCK_MODULE = path.resolve('dist/src/platform/lock.js');

/** A child process holding a lock on `file` until it is killed. */
async function holder(file: string): Promise<ChildProcess> {
  const script = `
    const { lockExclusive } = await import(${JSON.stringify(LOCK_MODULE)});
    lockExclusive(process.argv[2], { create: true, describe: 'x', hint: 'y' });
    console.log('locked');
    setInterval(() => {}, 1000);`;
  const scriptFile = `${file}.holder.mjs`;
  fs.writeFileSync(scriptFile, script);
  const child = spawn(process.execPath, [scriptFile, file, 'marker-arg'], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout?.on('data', (chunk: Buffer) => (out += chunk.toString()));
  for (let waited = 0; !out.includes('locked'); waited += 20) {
    assert.ok(waited < 10_000 && child.exitCode === null, `the holder locks ${file}: ${out}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return child;
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await exited;
}

test('a lock held by another process is refused naming it; SIGKILL frees it at once', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-lock-'));
  const file = path.join(dir, 'lock');
  const child = await holder(file);
  try {
    const pid = child.pid as number;
    assert.deepEqual(lockHolder(file)?.pid, pid, '/proc/locks names the holder');
    assert.throws(
      () => lockExclusive(file, { create: true, describe: 'data directory D', hint: 'stop it' }),
      (error: unknown) => {
        assert.ok(error instanceof RewindError);
        assert.equal(error.code, 'REWIND_CONFLICT');
        assert.match(error.message, new RegExp(`^data directory D is in use by process ${pid} `));
        assert.match(error.message, /marker-arg/, 'the command line is named');
        assert.equal(error.hint, 'stop it');
        return true;
      },
    );
    await kill(child);
    // No waiting and no stale-lock check: the kernel dropped the lock with the process.
    const lock = lockExclusive(file, { create: true, describe: 'x', hint: 'y' });
    assert.equal(lockHolder(file)?.pid, process.pid);
    lock.release();
    assert.equal(lockHolder(file), undefined, 'released');
  } finally {
    await kill(child);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('two locks on one file in the same process conflict too (one open file each)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-lock-'));
  const file = path.join(dir, 'image');
  fs.writeFileSync(file, 'x');
  try {
    const first = lockExclusive(file, { create: false, describe: 'image I', hint: 'h' });
    assert.throws(
      () => lockExclusive(file, { create: false, describe: 'image I', hint: 'h' }),
      new RegExp(`image I is in use by process ${process.pid}`),
    );
    first.release();
    lockExclusive(file, { create: false, describe: 'image I', hint: 'h' }).release();
    assert.throws(
      () => lockExclusive(path.join(dir, 'missing'), { create: false, describe: 'm', hint: 'h' }),
      /ENOENT/,
      'without create, a missing file is an error, not a new file',
    );
    assert.equal(fs.existsSync(path.join(dir, 'missing')), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('/proc/locks lines: the FLOCK holder of exactly that device and inode', () => {
  // dev 0xfe00 is major 254, minor 0. A minor past 8 bits keeps its upper bits at bit 20 and up,
  // so major 0x103, minor 0x100012 is dev 0x12 | 0x103 << 8 | 0x1000 << 20 (past 2^32).
  const table = [
    '1: POSIX  ADVISORY  WRITE 700 fe:00:42 0 EOF',
    '2: FLOCK  ADVISORY  WRITE 701 fe:00:421 0 EOF',
    '3: FLOCK  ADVISORY  WRITE 702 fe:00:42 0 EOF',
    '3: -> FLOCK  ADVISORY  WRITE 703 fe:00:42 0 EOF',
    '4: FLOCK  ADVISORY  WRITE 704 103:100012:42 0 EOF',
  ].join('\n');
  assert.equal(flockHolderPid(table, 0xfe00, 42), 702);
  assert.equal(flockHolderPid(table, 0xfe00, 421), 701);
  assert.equal(flockHolderPid(table, 0xfe00, 43), undefined);
  const bigDev = Number(0x12n | (0x103n << 8n) | (0x1000n << 20n));
  assert.equal(flockHolderPid(table, bigDev, 42), 704);
});
