// Prefix replay (CrashMonkey style): an ext4 workload through nbdfuse + loop is captured twice,
// by Rewind and, independently, by a recording proxy between nbdfuse and Rewind that decodes the
// client's NBD requests from the wire (written here from the protocol spec, sharing no code with
// the server). Every prefix of the write log is then rebuilt by stepping a snapshot one write at a
// time and compared byte for byte with a plain replay of the recorded requests; at every FLUSH the
// client sent, the image passes e2fsck -fn (after replaying only its journal, on a copy).
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { startUp, type Running } from '../../src/runtime/up.js';
import { nbdPort } from '../support/process.js';

const SIZE = 32 * 1024 * 1024;
const tools = [
  'nbdfuse',
  'losetup',
  'mkfs.ext4',
  'e2fsck',
  'dumpe2fs',
  'fusermount3',
  'mount',
  'umount',
];
const missing = tools.filter((t) => spawnSync('which', [t]).status !== 0);
const skip =
  missing.length > 0
    ? `missing ${missing.join(', ')}`
    : process.getuid?.() !== 0
      ? 'needs root'
      : !fs.existsSync('/dev/fuse')
        ? 'needs /dev/fuse'
        : false;
const execFileAsync = promisify(execFile);
const run = async (cmd: string, args: string[]): Promise<string> =>
  (await execFileAsync(cmd, args, { timeout: 60_000 })).stdout;
const runStatus = async (cmd: string, args: string[]): Promise<number> => {
  try {
    await run(cmd, args);
    return 0;
  } catch (error) {
    return (error as { code?: number }).code ?? 1;
  }
};

type Op =
  | { kind: 'write'; offset: number; data: Buffer }
  | { kind: 'zero' | 'trim'; offset: number; length: number }
  | { kind: 'flush' };

/** Forwards one client connection and decodes its requests (NBD fixed newstyle, from the spec). */
class RecordingProxy {
  readonly ops: Op[] = [];
  private server: net.Server | undefined;
  private readonly sockets = new Set<net.Socket>();

  async start(targetPort: number): Promise<number> {
    this.server = net.createServer((client) => {
      const upstream = net.connect(targetPort, '127.0.0.1');
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.on('error', () => undefined);
        s.on('close', () => this.sockets.delete(s));
      }
      upstream.pipe(client);
      const decoder = this.decoder();
      decoder.next();
      client.on('data', (chunk: Buffer) => {
        decoder.next(chunk);
        upstream.write(chunk);
      });
      client.on('close', () => upstream.end());
      upstream.on('close', () => client.destroy());
    });
    await new Promise<void>((resolve) => this.server?.listen(0, '127.0.0.1', resolve));
    return (this.server?.address() as net.AddressInfo).port;
  }

  /** A coroutine fed with the client's bytes: options until GO, then requests. */
  private *decoder(): Generator<void, void, Buffer> {
    let buf = Buffer.alloc(0);
    const need = function* (n: number): Generator<void, Buffer, Buffer> {
      while (buf.length < n) buf = Buffer.concat([buf, yield]);
      const out = buf.subarray(0, n);
      buf = buf.subarray(n);
      return out;
    };
    yield* need(4); // client flags
    for (;;) {
      const header = yield* need(16); // IHAVEOPT, option, length
      const option = header.readUInt32BE(8);
      yield* need(header.readUInt32BE(12));
      if (option === 7 || option === 1) break; // GO or EXPORT_NAME: transmission follows
    }
    for (;;) {
      const request = yield* need(28);
      assert.equal(request.readUInt32BE(0), 0x25609513, 'request magic');
      const type = request.readUInt16BE(6);
      const offset = Number(request.readBigUInt64BE(16));
      const length = request.readUInt32BE(24);
      if (type === 1)
        this.ops.push({ kind: 'write', offset, data: Buffer.from(yield* need(length)) });
      else if (type === 3) this.ops.push({ kind: 'flush' });
      else if (type === 4) this.ops.push({ kind: 'trim', offset, length });
      else if (type === 6) this.ops.push({ kind: 'zero', offset, length });
    }
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

async function fsckClean(image: string): Promise<boolean> {
  const copy = `${image}.copy`;
  await fsp.copyFile(image, copy);
  const header = await run('dumpe2fs', ['-h', copy]).catch(() => '');
  if (header === '') return false;
  if (/Filesystem features:.*needs_recovery/.test(header))
    await runStatus('e2fsck', ['-y', '-E', 'journal_only', copy]);
  return (await runStatus('e2fsck', ['-fn', copy])) === 0;
}

test(
  'prefix replay: every prefix of an ext4 workload rebuilds exactly; every FLUSH point passes e2fsck',
  { skip, timeout: 600_000 },
  async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-prefix-'));
    const fuseDir = path.join(dir, 'fuse');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(fuseDir);
    fs.mkdirSync(mnt);
    let running: Running | undefined = await startUp({
      dataDir: path.join(dir, 'data'),
      nbd: { host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0 },
      volumes: [{ name: 'fs', sizeBytes: SIZE }],
      sealBytes: 4 << 20,
      sealMs: 200,
      quiet: true,
    });
    const proxy = new RecordingProxy();
    let loop: string | undefined;
    let mounted = false;
    let fuse: ChildProcess | undefined;
    try {
      const port = await proxy.start(nbdPort(running));
      fuse = spawn('nbdfuse', ['-C', '1', fuseDir, `nbd://127.0.0.1:${port}/fs`], {
        stdio: 'ignore',
      });
      for (let waited = 0; !fs.existsSync(path.join(fuseDir, 'nbd')); waited += 50) {
        assert.ok(waited < 15_000, 'nbdfuse exposes the export');
        await new Promise((r) => setTimeout(r, 50));
      }
      loop = (await run('losetup', ['-f', '--show', path.join(fuseDir, 'nbd')])).trim();
      // The workload: mkfs, files written, renamed, deleted, synced, and unmounted.
      await run('mkfs.ext4', ['-q', '-F', '-E', 'lazy_itable_init=0,lazy_journal_init=0', loop]);
      await run('mount', [loop, mnt]);
      mounted = true;
      for (let i = 0; i < 12; i++) {
        await fsp.writeFile(path.join(mnt, `f${i}`), Buffer.alloc(50_000 + i * 20_000, 0x41 + i));
        if (i % 2 === 1) await run('sync', []);
      }
      await fsp.rename(path.join(mnt, 'f1'), path.join(mnt, 'g1'));
      await fsp.rm(path.join(mnt, 'f2'));
      await run('sync', []);
      await run('umount', [mnt]);
      mounted = false;
      await runStatus('losetup', ['-d', loop]);
      loop = undefined;
      await runStatus('fusermount3', ['-u', fuseDir]);
      fuse.kill('SIGTERM');
      await running.manager!.seal(true);

      // Rewind's log and the proxy's record agree request for request.
      const records: { seq: number; kind: string; offset: number; length: number }[] = [];
      for await (const e of running.manager!.log({})) records.push(e);
      const changes = proxy.ops.filter((op) => op.kind !== 'flush');
      assert.deepEqual(
        records.map((r) => [r.seq, r.kind, r.offset, r.length]),
        changes.map((op, i) => [
          i + 1,
          op.kind,
          op.offset,
          op.kind === 'write' ? op.data.length : (op as { length: number }).length,
        ]),
      );
      // Step a snapshot through every prefix and compare it with the replay of the recorded requests.
      const model = Buffer.alloc(SIZE);
      const view = await running.manager!.createView('prefix', 'snapshot', '0');
      assert.ok(view.read(0, 0, SIZE).equals(model), 'prefix 0 is all zeroes');
      let seq = 0;
      let flushes = 0;
      const image = path.join(dir, 'prefix.img');
      for (const op of proxy.ops) {
        if (op.kind === 'flush') {
          flushes += 1;
          await fsp.writeFile(image, model);
          // Before mkfs wrote a superblock there is no filesystem to check yet.
          if (seq > 0 && model.readUInt16LE(1024 + 56) === 0xef53)
            assert.ok(await fsckClean(image), `e2fsck -fn passes at the FLUSH after seq ${seq}`);
          continue;
        }
        if (op.kind === 'write') op.data.copy(model, op.offset);
        else model.fill(0, op.offset, op.offset + op.length);
        seq += 1;
        await running.manager!.stepView('prefix', { forward: 1 });
        assert.ok(
          view.read(0, 0, SIZE).equals(model),
          `prefix ${seq} equals the replay of the recorded requests`,
        );
      }
      assert.equal(seq, records.length);
      t.diagnostic(
        `${records.length} writes, ${flushes} flushes: every prefix rebuilt and compared; every FLUSH point checked with e2fsck`,
      );
      assert.ok(flushes >= 3 && records.length >= 50, 'the workload is not trivial');
    } finally {
      if (mounted) await runStatus('umount', [mnt]);
      if (loop) await runStatus('losetup', ['-d', loop]);
      await runStatus('fusermount3', ['-u', fuseDir]);
      fuse?.kill('SIGTERM');
      await proxy.close();
      await running?.close();
      running = undefined;
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
