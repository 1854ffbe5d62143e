// A real kernel filesystem on a protected volume: nbdfuse exposes the export as a file, a loop
// device turns it into a block device, ext4 lives on it. Files are written and synced at several
// points; a snapshot at each sync point passes e2fsck -fn and holds exactly the files of that moment.
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { startUp } from '../../src/runtime/up.js';

const SIZE = 64 * 1024 * 1024;
const tools = ['nbdfuse', 'losetup', 'mkfs.ext4', 'e2fsck', 'debugfs', 'fusermount3', 'mount', 'umount'];
const missingTools = tools.filter((t) => spawnSync('which', [t]).status !== 0);
const skipReason =
  missingTools.length > 0
    ? `missing ${missingTools.join(', ')}`
    : process.getuid?.() !== 0
      ? 'needs root for losetup and mount'
      : !fs.existsSync('/dev/fuse')
        ? 'needs /dev/fuse'
        : false;

// Every command runs asynchronously: the NBD server answering nbdfuse lives in this process, and a
// synchronous exec would block the event loop it needs (a deadlock).
const execFileAsync = promisify(execFile);
const run = async (cmd: string, args: string[]): Promise<string> => (await execFileAsync(cmd, args, { timeout: 60_000, maxBuffer: 64 << 20 })).stdout;
const runStatus = async (cmd: string, args: string[]): Promise<{ status: number; out: string }> => {
  try {
    return { status: 0, out: await run(cmd, args) };
  } catch (error) {
    return { status: (error as { code?: number }).code ?? 1, out: String((error as { stdout?: string }).stdout ?? error) };
  }
};

test('ext4 on nbdfuse + loop: snapshots at sync points pass e2fsck and hold that moment', { skip: skipReason }, async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-ext4-'));
  const fuseDir = path.join(dir, 'fuse');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(fuseDir);
  fs.mkdirSync(mnt);
  const running = await startUp({ dataDir: path.join(dir, 'data'), nbd: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 }, volumes: [{ name: 'fs', sizeBytes: SIZE }], sealBytes: 8 << 20, sealMs: 200, quiet: true });
  let fuse: ChildProcess | undefined;
  let loop: string | undefined;
  let mounted = false;
  try {
    fuse = spawn('nbdfuse', [fuseDir, `nbd://127.0.0.1:${running.nbdAddress.port}/fs`], { stdio: 'ignore' });
    for (let waited = 0; !fs.existsSync(path.join(fuseDir, 'nbd')); waited += 50) {
      assert.ok(waited < 15_000, 'nbdfuse exposes the export');
      await new Promise((r) => setTimeout(r, 50));
    }
    loop = (await run('losetup', ['-f', '--show', path.join(fuseDir, 'nbd')])).trim();
    await run('mkfs.ext4', ['-q', '-F', loop]);
    await run('mount', [loop, mnt]);
    mounted = true;
    const points: { seq: number; files: Record<string, string> }[] = [];
    const files: Record<string, string> = {};
    for (let step = 1; step <= 3; step++) {
      const name = `file${step}.txt`;
      const content = `step ${step} `.repeat(1000 * step);
      fs.writeFileSync(path.join(mnt, name), content);
      files[name] = content;
      if (step === 3) {
        fs.rmSync(path.join(mnt, 'file1.txt'));
        delete files['file1.txt'];
      }
      await run('sync', []);
      const { seqLast } = await running.manager!.seal(true);
      points.push({ seq: seqLast, files: { ...files } });
    }
    for (const [i, point] of points.entries()) {
      const view = await running.manager!.createView(`p${i}`, 'snapshot', String(point.seq));
      const image = path.join(dir, `p${i}.img`);
      const fd = fs.openSync(image, 'w');
      for (let at = 0; at < SIZE; at += 4 << 20) fs.writeSync(fd, view.read(0, at, 4 << 20), 0, 4 << 20, at);
      fs.closeSync(fd);
      // The snapshot of a mounted ext4 has a journal to replay, which e2fsck -n will not do: replay
      // it on a copy (the snapshot itself is never changed), then the copy must check clean with -fn.
      const copy = `${image}.copy`;
      fs.copyFileSync(image, copy);
      await runStatus('e2fsck', ['-fy', copy]); // replays the journal into the copy
      const check = await runStatus('e2fsck', ['-fn', copy]);
      assert.equal(check.status, 0, `e2fsck -fn at seq ${point.seq}: ${check.out}`);
      const listing = await run('debugfs', ['-R', 'ls -p /', copy]);
      const names = [...listing.matchAll(/\/\d+\/\d+\/\d+\/\d+\/([^/]+)\//g)].map((m) => m[1]).filter((n) => n !== '.' && n !== '..' && n !== 'lost+found');
      assert.deepEqual(names.sort(), Object.keys(point.files).sort(), `files at seq ${point.seq}`);
      for (const [name, content] of Object.entries(point.files)) {
        assert.equal(await run('debugfs', ['-R', `cat /${name}`, copy]), content, `${name} at seq ${point.seq}`);
      }
    }
  } finally {
    if (mounted) await runStatus('umount', [mnt]);
    if (loop) await runStatus('losetup', ['-d', loop]);
    await runStatus('fusermount3', ['-u', fuseDir]);
    fuse?.kill('SIGTERM');
    await running.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
