// A real kernel filesystem on a protected volume: nbdfuse exposes the export as a file, a loop
// device turns it into a block device, ext4 lives on it.
// - Files are written and synced at several points; a snapshot at each sync point passes
//   e2fsck -fn and holds exactly the files of that moment.
// - The seed scenario: files are damaged and garbage is written into the device; a clone is
//   stepped back until e2fsck passes and the files are back; production is restored and mounts.
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { startUp, type Running } from '../../src/runtime/up.js';
import { nbdPort } from '../support/process.js';
import type { View } from '../../src/views/view.js';

const SIZE = 64 * 1024 * 1024;
const tools = [
  'nbdfuse',
  'losetup',
  'mkfs.ext4',
  'e2fsck',
  'debugfs',
  'dumpe2fs',
  'dd',
  'fusermount3',
  'mount',
  'umount',
];
const missingTools = tools.filter((t) => spawnSync('which', [t]).status !== 0);
const skipReason =
  missingTools.length > 0
    ? `missing ${missingTools.join(', ')}`
    : process.getuid?.() !== 0
      ? 'needs root for losetup and mount'
      : !fs.existsSync('/dev/fuse')
        ? 'needs /dev/fuse'
        : false;

// Every command and every file access on the mount runs asynchronously: the NBD server answering
// nbdfuse lives in this process, and a synchronous exec or read would block the event loop it
// needs (a deadlock).
const execFileAsync = promisify(execFile);
const run = async (cmd: string, args: string[]): Promise<string> =>
  (await execFileAsync(cmd, args, { timeout: 60_000, maxBuffer: 64 << 20 })).stdout;
const runStatus = async (cmd: string, args: string[]): Promise<{ status: number; out: string }> => {
  try {
    return { status: 0, out: await run(cmd, args) };
  } catch (error) {
    return {
      status: (error as { code?: number }).code ?? 1,
      out: String((error as { stdout?: string }).stdout ?? error),
    };
  }
};

/** nbdfuse exposes an export as a file, losetup makes it a block device; detach undoes both. */
class Attached {
  loop: string | undefined;
  mounted = false;
  private fuse: ChildProcess | undefined;
  constructor(
    private readonly fuseDir: string,
    private readonly mnt: string,
  ) {}

  async attach(uri: string): Promise<string> {
    this.fuse = spawn('nbdfuse', [this.fuseDir, uri], { stdio: 'ignore' });
    for (let waited = 0; !fs.existsSync(path.join(this.fuseDir, 'nbd')); waited += 50) {
      assert.ok(waited < 15_000, 'nbdfuse exposes the export');
      await new Promise((r) => setTimeout(r, 50));
    }
    this.loop = (await run('losetup', ['-f', '--show', path.join(this.fuseDir, 'nbd')])).trim();
    return this.loop;
  }

  async mount(): Promise<void> {
    await run('mount', [this.loop as string, this.mnt]);
    this.mounted = true;
  }

  async umount(): Promise<void> {
    if (this.mounted) await runStatus('umount', [this.mnt]);
    this.mounted = false;
  }

  async detach(): Promise<void> {
    await this.umount();
    if (this.loop) await runStatus('losetup', ['-d', this.loop]);
    this.loop = undefined;
    await runStatus('fusermount3', ['-u', this.fuseDir]);
    if (this.fuse && this.fuse.exitCode === null) {
      const exited = new Promise((r) => this.fuse?.once('exit', r));
      this.fuse.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    }
    this.fuse = undefined;
  }
}

function setup(prefix: string): { dir: string; attached: Attached; mnt: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const fuseDir = path.join(dir, 'fuse');
  const mnt = path.join(dir, 'mnt');
  fs.mkdirSync(fuseDir);
  fs.mkdirSync(mnt);
  return { dir, attached: new Attached(fuseDir, mnt), mnt };
}

async function startFs(dir: string): Promise<Running> {
  return startUp({
    dataDir: path.join(dir, 'data'),
    nbd: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    volumes: [{ name: 'fs', sizeBytes: SIZE }],
    sealBytes: 8 << 20,
    sealMs: 200,
    quiet: true,
  });
}

/** Writes a view of the volume to an image file. */
function saveView(view: View, image: string): void {
  const fd = fs.openSync(image, 'w');
  for (let at = 0; at < SIZE; at += 4 << 20)
    fs.writeSync(fd, view.read(0, at, 4 << 20), 0, 4 << 20, at);
  fs.closeSync(fd);
}

/**
 * e2fsck -fn on a copy of `image`. A snapshot of a mounted ext4 has a journal to replay, which -n
 * will not do: when the superblock says so (needs_recovery), the journal alone is replayed on the
 * copy first (journal_only repairs nothing). A damaged superblock is never "replayed" into shape.
 */
async function fsck(image: string): Promise<{ status: number; out: string }> {
  const copy = `${image}.copy`;
  fs.copyFileSync(image, copy);
  const header = await runStatus('dumpe2fs', ['-h', copy]);
  if (header.status !== 0) return header;
  if (/Filesystem features:.*needs_recovery/.test(header.out))
    await runStatus('e2fsck', ['-y', '-E', 'journal_only', copy]);
  return runStatus('e2fsck', ['-fn', copy]);
}

/** The files in the root directory of the replayed copy and their contents. */
async function filesOf(image: string): Promise<Record<string, string>> {
  const copy = `${image}.copy`;
  const listing = await run('debugfs', ['-R', 'ls -p /', copy]);
  const names = [...listing.matchAll(/\/\d+\/\d+\/\d+\/\d+\/([^/]+)\//g)]
    .map((m) => m[1] as string)
    .filter((n) => n !== '.' && n !== '..' && n !== 'lost+found');
  const out: Record<string, string> = {};
  for (const name of names.sort()) out[name] = await run('debugfs', ['-R', `cat /${name}`, copy]);
  return out;
}

test(
  'ext4 on nbdfuse + loop: snapshots at sync points pass e2fsck and hold that moment',
  { skip: skipReason },
  async () => {
    const { dir, attached, mnt } = setup('rewind-ext4-');
    const running = await startFs(dir);
    try {
      const loop = await attached.attach(`nbd://127.0.0.1:${nbdPort(running)}/fs`);
      await run('mkfs.ext4', ['-q', '-F', loop]);
      await attached.mount();
      const points: { seq: number; files: Record<string, string> }[] = [];
      const files: Record<string, string> = {};
      for (let step = 1; step <= 3; step++) {
        const name = `file${step}.txt`;
        const content = `step ${step} `.repeat(1000 * step);
        await fsp.writeFile(path.join(mnt, name), content);
        files[name] = content;
        if (step === 3) {
          await fsp.rm(path.join(mnt, 'file1.txt'));
          delete files['file1.txt'];
        }
        await run('sync', []);
        const { seqLast } = await running.manager!.seal(true);
        points.push({ seq: seqLast, files: { ...files } });
      }
      for (const [i, point] of points.entries()) {
        const view = await running.manager!.createView(`p${i}`, 'snapshot', String(point.seq));
        const image = path.join(dir, `p${i}.img`);
        saveView(view, image);
        const check = await fsck(image);
        assert.equal(check.status, 0, `e2fsck -fn at seq ${point.seq}: ${check.out}`);
        assert.deepEqual(
          await filesOf(image),
          Object.fromEntries(Object.entries(point.files).sort()),
          `files at seq ${point.seq}`,
        );
      }
    } finally {
      await attached.detach();
      await running.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'the seed scenario: files damaged and garbage written into the device; a clone is stepped back until e2fsck passes and the files are back; production is restored and mounts',
  { skip: skipReason },
  async (t) => {
    const { dir, attached, mnt } = setup('rewind-seed-');
    const running = await startFs(dir);
    const manager = (): NonNullable<Running['manager']> =>
      running.manager as NonNullable<Running['manager']>;
    try {
      const uri = `nbd://127.0.0.1:${nbdPort(running)}/fs`;
      const loop = await attached.attach(uri);
      await run('mkfs.ext4', ['-q', '-F', loop]);
      await attached.mount();
      const good: Record<string, string> = {};
      for (let step = 1; step <= 3; step++) {
        const name = `file${step}.txt`;
        good[name] = `important record ${step} `.repeat(2000 * step);
        await fsp.writeFile(path.join(mnt, name), good[name]);
        await run('sync', []);
      }
      const { seqLast: goodSeq } = await manager().seal(true);
      // The damage: one file overwritten, one deleted, then after unmounting, garbage written
      // straight into the device over the superblock and group descriptors.
      await fsp.writeFile(path.join(mnt, 'file2.txt'), 'garbage '.repeat(5000));
      await fsp.rm(path.join(mnt, 'file1.txt'));
      await run('sync', []);
      await attached.umount();
      await run('dd', ['if=/dev/urandom', `of=${loop}`, 'bs=64K', 'count=16', 'conv=fsync']);
      await attached.detach();
      const { seqLast: damagedSeq } = await manager().seal(true);
      const production = path.join(dir, 'data', 'production', 'fs.img');
      assert.notEqual(
        (await fsck(production)).status,
        0,
        'the damaged production filesystem fails e2fsck',
      );

      // Step a clone back, write by write, until the filesystem checks clean and the files are back.
      const clone = await manager().createView('rescue', 'clone', String(damagedSeq));
      let found: number | undefined;
      let fsckPassedAt: number | undefined;
      let steps = 0;
      for (; steps < 500 && found === undefined; steps++) {
        const image = path.join(dir, 'rescue.img');
        saveView(clone, image);
        if ((await fsck(image)).status === 0) {
          fsckPassedAt ??= clone.seq;
          const files = await filesOf(image);
          if (
            JSON.stringify(files) ===
            JSON.stringify(Object.fromEntries(Object.entries(good).sort()))
          )
            found = clone.seq;
        }
        if (found === undefined) await manager().stepView('rescue', { back: 1 });
      }
      assert.ok(
        fsckPassedAt !== undefined && fsckPassedAt < damagedSeq,
        'stepping back past the garbage makes e2fsck pass',
      );
      assert.ok(found !== undefined, 'a point with the original files was found');
      assert.ok(
        found >= goodSeq && found <= damagedSeq,
        `found seq ${found} lies between the last good sync (${goodSeq}) and the damage (${damagedSeq})`,
      );
      t.diagnostic(
        `good sync at seq ${goodSeq}, damaged at seq ${damagedSeq}; e2fsck passes from seq ${fsckPassedAt}, the files are back at seq ${found} (${steps} steps back)`,
      );

      // Restore production to that point, then mount it and read the original files.
      const restore = await manager().restorer.settled(
        (await manager().restorer.start({ volumes: ['fs'], at: String(found) })).id,
      );
      assert.equal(restore.state, 'done', restore.message ?? '');
      assert.equal(
        (await fsck(production)).status,
        0,
        'the restored production filesystem checks clean',
      );
      await attached.attach(uri);
      await attached.mount();
      for (const [name, content] of Object.entries(good))
        assert.equal(
          await fsp.readFile(path.join(mnt, name), 'utf8'),
          content,
          `${name} after the restore`,
        );
    } finally {
      await attached.detach();
      await running.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
