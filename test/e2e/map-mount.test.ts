// `rewind map` / `mount` / `unmap` against a real `rewind up`, with the kernel's block layer and
// ext4 as the clients:
// - a mapped clone stepped back and forth reads (through /dev/loopN held open, whose page cache
//   would show the old content) exactly the model's bytes at each seq; a mapped snapshot is read-only; unmap
//   leaves no loop device, FUSE mount or record;
// - a clone mounts read-write and its journal replays into the clone, never into the history; a
//   snapshot mounts read-only without replay and says so; step, restore and rm are refused with
//   what to do while what they would change is mounted or mapped here; unmap of a busy mount is
//   refused and detaches nothing.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { blockDeviceSkipReason, run, runStatus } from '../support/blockdev.js';
import { ModelVolumeSet, replay, type ModelWrite } from '../support/model.js';
import { BIN, freePort, startUpProcess } from '../support/process.js';

const skip = blockDeviceSkipReason([
  'nbdfuse',
  'nbdcopy',
  'qemu-io',
  'losetup',
  'blkid',
  'blockdev',
  'mkfs.ext4',
  'fusermount3',
  'mount',
  'umount',
]);
const MiB = 1024 * 1024;

interface Env {
  dir: string;
  nbd: number;
  http: number;
  up: ChildProcess;
  env: NodeJS.ProcessEnv;
}

async function start(prefix: string, size: string): Promise<Env> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const [nbd, http] = [await freePort(), await freePort()];
  const up = await startUpProcess([
    '--data',
    path.join(dir, 'data'),
    '--nbd',
    `127.0.0.1:${nbd}`,
    '--http',
    `127.0.0.1:${http}`,
    '--volume',
    `v:${size}`,
    '--seal-ms',
    '100',
  ]);
  const env = {
    ...process.env,
    REWIND_SERVER: `http://127.0.0.1:${http}`,
    REWIND_NBD: `127.0.0.1:${nbd}`,
    REWIND_RUNTIME_DIR: path.join(dir, 'run'),
  };
  return { dir, nbd, http, up, env };
}

/** `rewind ARGS`, asynchronously (the kernel calls back into rewind up while commands run). */
async function rewind(
  e: Env,
  ...args: string[]
): Promise<{ status: number; stdout: string; stderr: string }> {
  return runStatus(process.execPath, [BIN, ...args], { env: e.env, timeoutMs: 90_000 });
}

async function ok(e: Env, ...args: string[]): Promise<string> {
  const result = await rewind(e, ...args);
  assert.equal(result.status, 0, `rewind ${args.join(' ')}: ${result.stderr}`);
  return result.stdout;
}

/** Whatever a failed test left: mounts, loop devices, FUSE mounts, nbdfuse (from the records). */
async function cleanUp(e: Env): Promise<void> {
  const records = path.join(e.dir, 'run', 'maps');
  for (const name of fs.existsSync(records) ? fs.readdirSync(records) : []) {
    if (!name.endsWith('.json')) continue;
    const r = JSON.parse(fs.readFileSync(path.join(records, name), 'utf8')) as {
      mountpoint: string | null;
      loop: string;
      fuseDir: string;
      fuseFile: string;
    };
    if (r.mountpoint) await runStatus('umount', ['-l', r.mountpoint]);
    const backing = `/sys/block/${path.basename(r.loop)}/loop/backing_file`;
    if (fs.existsSync(backing) && fs.readFileSync(backing, 'utf8').trim() === r.fuseFile)
      await runStatus('losetup', ['-d', r.loop]);
    await runStatus('fusermount3', ['-u', '-z', r.fuseDir]);
  }
  const exited = new Promise((r) => e.up.once('exit', r));
  e.up.kill('SIGTERM');
  await exited;
  fs.rmSync(e.dir, { recursive: true, force: true });
}

/** One qemu-io run: its commands go out one after the other, each write taking the next seq. */
function qemuWrites(e: Env, writes: ModelWrite[]): void {
  const commands = writes.flatMap((w) => [
    '-c',
    w.kind === 'write'
      ? `write -P ${(w.data as Buffer)[0]} ${w.offset} ${w.length}`
      : `write -z ${w.offset} ${w.length}`,
  ]);
  execFileSync('qemu-io', ['-f', 'raw', `nbd://127.0.0.1:${e.nbd}/v`, ...commands], {
    timeout: 20_000,
  });
}

test(
  'a mapped clone stepped back and forth reads exactly the model at each seq; a mapped snapshot is read-only; unmap leaves nothing',
  { skip },
  async () => {
    const SIZE = 4 * MiB;
    const e = await start('rewind-map-', '4M');
    let held: fsp.FileHandle | undefined;
    try {
      // Overlapping pattern writes and zeroes, 4 KiB-aligned, each a different byte.
      const writes: ModelWrite[] = [];
      const model = new ModelVolumeSet([SIZE]);
      for (let seq = 1; seq <= 12; seq++) {
        const offset = ((seq * 37) % 900) * 4096;
        const length = (1 + ((seq * 11) % 48)) * 4096;
        const w: ModelWrite =
          seq % 5 === 0
            ? { seq, volume: 0, kind: 'zero', offset, length }
            : { seq, volume: 0, kind: 'write', offset, length, data: Buffer.alloc(length, seq) };
        model.apply(w);
        writes.push(w);
      }
      qemuWrites(e, writes);
      await ok(e, 'seal', '--wait');
      await ok(e, 'clone', 'c', '--at', '12');
      const loop = (await ok(e, 'map', 'c')).trim();
      assert.match(loop, /^\/dev\/loop\d+$/);
      // Held open across the steps, as a long-running reader would: the block device's page
      // cache lives as long as someone has it open (a fresh open after the last close starts empty).
      held = await fsp.open(loop, 'r');
      const handle = held;
      const device = async (): Promise<Buffer> => {
        const bytes = Buffer.alloc(SIZE);
        const { bytesRead } = await handle.read(bytes, 0, SIZE, 0);
        assert.equal(bytesRead, SIZE);
        return bytes;
      };
      assert.ok((await device()).equals(model.image(0)), 'the mapped clone at seq 12');
      for (const [move, seq] of [
        [['--back', '1'], 11],
        [['--back', '4'], 7],
        [['--forward', '2'], 9],
        [['--to', '0'], 0],
        [['--to', '12'], 12],
      ] as const) {
        const stepped = await rewind(e, 'step', 'c', ...move);
        assert.equal(stepped.status, 0, stepped.stderr);
        assert.match(stepped.stderr, new RegExp(`v@c: caches of ${loop} dropped`));
        const expected = replay([SIZE], writes, seq)[0] as Buffer;
        const bytes = await device();
        assert.ok(bytes.equals(expected), `after step ${move.join(' ')}: the model at seq ${seq}`);
        assert.ok((await fsp.readFile(loop)).equals(expected), 'and through a new open');
      }
      await held.close();
      held = undefined;

      // A snapshot maps read-only: the kernel refuses writes to the device.
      await ok(e, 'snapshot', 's', '--at', '5');
      const snapLoop = (await ok(e, 'map', 's', 'v')).trim();
      assert.equal((await run('blockdev', ['--getro', snapLoop])).trim(), '1');
      const write = await runStatus('dd', [
        'if=/dev/zero',
        `of=${snapLoop}`,
        'bs=4096',
        'count=1',
        'oflag=direct',
      ]);
      assert.notEqual(write.status, 0, 'a write to the snapshot device fails');
      assert.ok((await fsp.readFile(snapLoop)).equals(replay([SIZE], writes, 5)[0] as Buffer));
      assert.match(await ok(e, 'maps'), /v@c \(clone\)\t\/dev\/loop\d+\t-\trw/);

      const refused = await rewind(e, 'rm', 'c');
      assert.equal(refused.status, 1);
      assert.match(refused.stderr, /cannot remove c: v@c \(clone\) is mapped here as/);
      assert.match(refused.stderr, /rewind unmap c v first/);

      assert.match(await ok(e, 'unmap', 'c'), /v@c \(clone\): \/dev\/loop\d+ detached/);
      assert.match(await ok(e, 'umount', 's'), /v@s \(snapshot\): \/dev\/loop\d+ detached/);
      assert.equal((await ok(e, 'maps')).trim(), 'nothing mapped');
      const loops = await run('losetup', ['-a']);
      assert.ok(!loops.includes(e.dir), `no loop device left: ${loops}`);
      const mounts = fs.readFileSync('/proc/self/mountinfo', 'utf8');
      assert.ok(!mounts.includes(e.dir), 'no FUSE mount left');
      await ok(e, 'rm', 'c');
    } finally {
      await held?.close();
      await cleanUp(e);
    }
  },
);

test(
  'mount: a clone replays its journal into itself, never into the history; a snapshot mounts read-only without replay; step, restore and unmap are refused while it would hurt',
  { skip },
  async () => {
    const e = await start('rewind-mount-', '64M');
    const dirs = ['prod', 'clone', 'snap'].map((name) => path.join(e.dir, name));
    const [prod, clone, snap] = dirs as [string, string, string];
    for (const d of dirs) fs.mkdirSync(d);
    let sleeper: ChildProcess | undefined;
    try {
      const loop = (await ok(e, 'map', '--production', 'v')).trim();
      await run('mkfs.ext4', ['-q', '-F', loop]);
      assert.match(await ok(e, 'mount', '--production', 'v', prod), /mounted at/);
      await fsp.writeFile(path.join(prod, 'kept.txt'), 'in the journal only\n');
      await run('sync', []); // data and journal on disk; the journal is not checkpointed yet
      const seq = /sealed up to seq (\d+)/.exec(await ok(e, 'seal', '--wait'))?.[1] as string;
      await ok(e, 'snapshot', 's', '--at', seq);
      await ok(e, 'clone', 'c', '--at', seq);
      const history = async (): Promise<Buffer> => {
        const image = path.join(e.dir, 's.img');
        await run('nbdcopy', [`nbd://127.0.0.1:${e.nbd}/v@s`, image]);
        return fsp.readFile(image);
      };
      const before = await history();

      assert.match(await ok(e, 'mount', 'c', clone), /v@c \(clone\): .* mounted at/);
      assert.equal(
        await fsp.readFile(path.join(clone, 'kept.txt'), 'utf8'),
        'in the journal only\n',
      );
      await fsp.writeFile(path.join(clone, 'scratch.txt'), 'clone only\n');
      const snapMount = await rewind(e, 'mount', 's', snap);
      assert.equal(snapMount.status, 0, snapMount.stderr);
      assert.match(snapMount.stdout, /\(-o ro,noload\)/);
      assert.match(snapMount.stderr, /without replaying its journal/);
      assert.ok((await history()).equals(before), 'mounting the clone changed no byte of history');

      const step = await rewind(e, 'step', 'c', '--back', '1', '--discard-writes');
      assert.equal(step.status, 1);
      assert.match(step.stderr, /cannot step c: v@c \(clone\) is mounted at .*clone/);
      const restore = await rewind(e, 'restore', 'v', '--at', seq);
      assert.equal(restore.status, 1);
      assert.match(restore.stderr, /cannot restore v: production volume v is mounted at .*prod/);
      await fsp.writeFile(path.join(prod, 'later.txt'), 'after the point\n');
      await ok(e, 'unmap', '--production', 'v');
      const fromClone = await rewind(e, 'restore', 'v', '--from-clone', 'c');
      assert.equal(fromClone.status, 1);
      assert.match(fromClone.stderr, /cannot restore from c: .* not written back yet/);

      // A busy mount: umount says "target is busy"; nothing is detached.
      sleeper = spawn('sleep', ['60'], { cwd: clone, stdio: 'ignore' });
      await new Promise((r) => setTimeout(r, 100));
      const busy = await rewind(e, 'unmap', 'c');
      assert.equal(busy.status, 1);
      assert.match(busy.stderr, /cannot unmount .*clone: .*busy/);
      assert.match(busy.stderr, /fuser -vm/);
      assert.equal(await fsp.readFile(path.join(clone, 'scratch.txt'), 'utf8'), 'clone only\n');
      sleeper.kill('SIGKILL');
      await new Promise((r) => sleeper?.once('exit', r));
      assert.match(await ok(e, 'unmap', 'c'), /unmounted .*clone, \/dev\/loop\d+ detached/);
      await ok(e, 'unmap', 's');

      // Production, taken down above: restored, then back with the filesystem of the point.
      assert.match(await ok(e, 'restore', 'v', '--at', seq), /restore #1 done/);
      await ok(e, 'mount', '--production', 'v', prod);
      assert.deepEqual(
        fs.readdirSync(prod).sort(),
        ['kept.txt', 'lost+found'],
        'the restored filesystem has the file of the point and not the later one',
      );
      await ok(e, 'unmap', '--production', 'v');
    } finally {
      sleeper?.kill('SIGKILL');
      await cleanUp(e);
    }
  },
);
