// The simulated file system of the deterministic simulation (sim/dst/sim-fs.ts), used through the
// patched node:fs and node:fs/promises module objects as the product uses them: fsynced data
// survives a power loss; unsynced writes are kept, lost or torn per 512-byte sector; directory
// operations survive only as a journal prefix unless a directory fsync committed them; fsync EIO
// loses the data for good; ENOSPC at capacity; a dead process's calls throw or never complete;
// other paths and fds reach the real file system; uninstall restores the originals.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { SimCrashed, SimFs, type Faults, type SimProcess } from '../../sim/dst/sim-fs.js';

const A = '/sim/a';
const NO_FAULTS: Faults = { readEio: 0, writeEio: 0, fsyncEio: 0, maxLatencyMs: 0 };

function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** A SimFs over disks /sim/a and /sim/b with a manual, time-ordered completion queue. */
class Harness {
  current: SimProcess = { name: 'p1', alive: true };
  readonly sim: SimFs;
  private queue: { at: number; seq: number; fn: () => void }[] = [];
  private now = 0;
  private seq = 0;

  constructor(seed: number, options: { faults?: Faults; capacity?: number } = {}) {
    const random = mulberry32(seed);
    const schedule = (delayMs: number, fn: () => void): void => {
      const owner = this.current;
      this.queue.push({ at: this.now + delayMs, seq: this.seq++, fn: () => this.as(owner, fn) });
    };
    this.sim = new SimFs(
      { random, caller: () => this.current, schedule },
      [
        { prefix: A, capacityBytes: options.capacity ?? 1 << 20 },
        { prefix: '/sim/b', capacityBytes: 1 << 20 },
      ],
      options.faults ?? NO_FAULTS,
    );
  }

  as<T>(proc: SimProcess, fn: () => T): T {
    const previous = this.current;
    this.current = proc;
    try {
      return fn();
    } finally {
      this.current = previous;
    }
  }

  /** Runs completions in time order, with the promise continuations they cause, until none is left. */
  async drain(): Promise<void> {
    for (;;) {
      await tick();
      if (this.queue.length === 0) {
        await tick();
        if (this.queue.length === 0) return;
      }
      this.queue.sort((x, y) => x.at - y.at || x.seq - y.seq);
      const next = this.queue.shift() as { at: number; fn: () => void };
      this.now = next.at;
      next.fn();
    }
  }

  async run<T>(promise: Promise<T>): Promise<T> {
    promise.catch(() => undefined); // the caller handles the rejection after the drain
    await this.drain();
    return promise;
  }
}

/** Installs a fresh SimFs for `fn`, uninstalling it afterwards whatever happens. */
async function withSim<T>(
  seed: number,
  fn: (h: Harness) => T | Promise<T>,
  options: { faults?: Faults; capacity?: number } = {},
): Promise<T> {
  const h = new Harness(seed, options);
  h.sim.install();
  try {
    return await fn(h);
  } finally {
    h.sim.uninstall();
  }
}

function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  fs.fsyncSync(fd);
  fs.closeSync(fd);
}

/** A file whose entry and content are durable. */
function durableFile(file: string, data: Buffer): void {
  const fd = fs.openSync(file, 'w');
  fs.writeSync(fd, data);
  fs.fdatasyncSync(fd);
  fs.closeSync(fd);
  fsyncDir(path.dirname(file));
}

function code(expected: string): (error: unknown) => boolean {
  return (error) => (error as NodeJS.ErrnoException).code === expected;
}

describe('SimFs', () => {
  it('keeps fsynced data and committed entries across a power loss', async () => {
    for (let seed = 1; seed <= 20; seed++) {
      await withSim(seed, async (h) => {
        fs.mkdirSync(`${A}/d/e`, { recursive: true });
        fsyncDir(A);
        fsyncDir(`${A}/d`);
        const data = Buffer.alloc(3000, seed);
        durableFile(`${A}/d/e/f`, data);
        // The product's writeFileDurable: temp file, datasync, rename, fsync of the directory.
        const handle = await h.run(fsp.open(`${A}/d/tmp`, 'w'));
        await h.run(handle.writeFile('state'));
        await h.run(handle.datasync());
        await h.run(handle.close());
        await h.run(fsp.rename(`${A}/d/tmp`, `${A}/d/state`));
        const dir = await h.run(fsp.open(`${A}/d`, 'r'));
        await h.run(dir.sync());
        await h.run(dir.close());
        h.sim.powerLoss(A);
        assert.deepEqual(h.sim.peek(`${A}/d/e/f`), data);
        assert.equal(await h.run(fsp.readFile(`${A}/d/state`, 'utf8')), 'state');
        assert.deepEqual((await h.run(fsp.readdir(`${A}/d`))).sort(), ['e', 'state']);
      });
    }
  });

  it('keeps, loses or tears an unsynced write per 512-byte sector, never inventing bytes', async () => {
    const outcomes = new Set<string>();
    for (let seed = 0; seed < 200; seed++) {
      await withSim(seed, (h) => {
        durableFile(`${A}/f`, Buffer.alloc(2048, 0xaa));
        const fd = fs.openSync(`${A}/f`, 'r+');
        fs.writeSync(fd, Buffer.alloc(1500, 0xbb), 0, 1500, 300); // bytes 300..1800: sectors 0-3, partly
        fs.writeSync(fd, Buffer.alloc(1024, 0xcc), 0, 1024, 2048); // extends the file by sectors 4-5
        fs.closeSync(fd);
        h.sim.powerLoss(A);
        const after = h.sim.peek(`${A}/f`) as Buffer;
        assert.ok([2048, 2560, 3072].includes(after.length), `size ${after.length}`);
        const sectorsOfFirst: string[] = [];
        for (let sector = 0; sector * 512 < after.length; sector++) {
          const seen = new Set<number>();
          for (let i = sector * 512; i < Math.min(after.length, sector * 512 + 512); i++) {
            const allowed = i >= 2048 ? [0xcc, 0] : i >= 300 && i < 1800 ? [0xaa, 0xbb] : [0xaa];
            assert.ok(
              allowed.includes(after[i] as number),
              `seed ${seed}: byte ${i} is ${after[i]}`,
            );
            if (i >= 300 && i < 1800) seen.add(after[i] as number);
          }
          assert.ok(seen.size <= 1, `seed ${seed}: sector ${sector} holds a mix`);
          if (sector < 4) sectorsOfFirst.push(seen.has(0xbb) ? 'new' : 'old');
        }
        const kinds = new Set(sectorsOfFirst);
        outcomes.add(kinds.size === 2 ? 'torn' : kinds.has('new') ? 'kept' : 'lost');
      });
    }
    assert.deepEqual([...outcomes].sort(), ['kept', 'lost', 'torn']);
  });

  it('loses a rename that no directory fsync committed, and keeps one that was', async () => {
    const outcomes = new Set<string>();
    for (let seed = 0; seed < 40; seed++) {
      for (const commit of [false, true]) {
        await withSim(seed, async (h) => {
          durableFile(`${A}/x`, Buffer.from('old'));
          durableFile(`${A}/x.tmp`, Buffer.from('new'));
          const inode = fs.statSync(`${A}/x.tmp`).ino;
          await h.run(fsp.rename(`${A}/x.tmp`, `${A}/x`));
          assert.equal(fs.statSync(`${A}/x`).ino, inode, 'a rename keeps the inode');
          if (commit) fsyncDir(A);
          else {
            // fsync of the file itself does not make its directory entry durable.
            const fd = fs.openSync(`${A}/x`, 'r');
            fs.fsyncSync(fd);
            fs.closeSync(fd);
          }
          h.sim.powerLoss(A);
          const x = h.sim.peek(`${A}/x`)?.toString();
          const tmp = h.sim.peek(`${A}/x.tmp`)?.toString();
          if (x === 'new') assert.equal(tmp, undefined);
          else assert.deepEqual([x, tmp], ['old', 'new']);
          if (commit) assert.equal(x, 'new');
          else outcomes.add(x as string);
        });
      }
    }
    assert.deepEqual([...outcomes].sort(), ['new', 'old']);
  });

  it('keeps a prefix of the uncommitted directory operations, never a later one without an earlier', async () => {
    // create a, create b, unlink a, mkdir d, rename b -> d/c: the states after each prefix.
    const states = [[], ['a'], ['a', 'b'], ['b'], ['b', 'd'], ['d', 'd/c']];
    const seen = new Set<number>();
    for (let seed = 0; seed < 60; seed++) {
      await withSim(seed, (h) => {
        fs.closeSync(fs.openSync(`${A}/a`, 'w'));
        fs.closeSync(fs.openSync(`${A}/b`, 'w'));
        fs.rmSync(`${A}/a`);
        fs.mkdirSync(`${A}/d`);
        fs.writeFileSync(`${A}/b`, 'b'); // content, not a directory operation
        fs.rmSync(`${A}/nothing`, { force: true });
        fs.closeSync(fs.openSync(`${A}/b`, 'r'));
        return h.run(fsp.rename(`${A}/b`, `${A}/d/c`)).then(() => {
          const { metadataOpsLost } = h.sim.powerLoss(A);
          const names = ['a', 'b', 'd', 'd/c'].filter((name) => fs.existsSync(`${A}/${name}`));
          const kept = 5 - metadataOpsLost;
          assert.deepEqual(names, states[kept], `seed ${seed}: ${metadataOpsLost} lost`);
          seen.add(kept);
        });
      });
    }
    assert.ok(seen.has(0) && seen.has(5) && seen.size >= 4, `prefixes seen: ${[...seen]}`);
  });

  it('drops the pending data from the durable path when fsync fails with EIO', async () => {
    for (let seed = 0; seed < 20; seed++) {
      await withSim(seed, (h) => {
        durableFile(`${A}/f`, Buffer.alloc(1024, 0x11));
        const fd = fs.openSync(`${A}/f`, 'r+');
        fs.writeSync(fd, Buffer.alloc(1024, 0x22), 0, 1024, 0);
        h.sim.setFaults({ ...NO_FAULTS, fsyncEio: 1 });
        assert.throws(
          () => fs.fsyncSync(fd),
          (error: NodeJS.ErrnoException) =>
            error.code === 'EIO' && error.errno === -5 && error.syscall === 'fsync',
        );
        h.sim.setFaults(NO_FAULTS);
        assert.deepEqual(
          h.sim.peek(`${A}/f`),
          Buffer.alloc(1024, 0x22),
          'the cache keeps the data',
        );
        fs.fsyncSync(fd); // succeeds, but has nothing left to persist
        h.sim.powerLoss(A);
        assert.deepEqual(h.sim.peek(`${A}/f`), Buffer.alloc(1024, 0x11));
        assert.equal(h.sim.stats().injectedEio, 1);
      });
    }
  });

  it('refuses with ENOSPC what would exceed the capacity, changing nothing', async () => {
    await withSim(
      1,
      (h) => {
        const fd = fs.openSync(`${A}/big`, 'w+');
        assert.equal(fs.writeSync(fd, Buffer.alloc(4096, 1)), 4096);
        const enospc = (error: NodeJS.ErrnoException): boolean =>
          error.code === 'ENOSPC' && error.errno === -28;
        assert.throws(() => fs.writeSync(fd, Buffer.alloc(1, 2), 0, 1, 4096), enospc);
        assert.throws(
          () => fs.writevSync(fd, [Buffer.alloc(1, 3), Buffer.alloc(1, 3)], 4095),
          enospc,
        );
        assert.throws(() => fs.ftruncateSync(fd, 8192), enospc);
        assert.deepEqual(h.sim.peek(`${A}/big`), Buffer.alloc(4096, 1));
        fs.writeSync(fd, Buffer.alloc(10, 4), 0, 10, 0); // overwriting needs no space
        const other = fs.openSync(`${A}/other`, 'w');
        assert.throws(() => fs.writeSync(other, Buffer.alloc(1)), enospc);
        fs.rmSync(`${A}/big`); // still open: its space is freed on close
        assert.throws(() => fs.writeSync(other, Buffer.alloc(1)), enospc);
        fs.closeSync(fd);
        assert.equal(fs.writeSync(other, Buffer.alloc(100)), 100);
        fs.closeSync(other);
        assert.equal(h.sim.stats().injectedEnospc, 5);
      },
      { capacity: 4096 },
    );
  });

  it('throws SimCrashed at a dead process and never completes its async calls', async () => {
    await withSim(3, async (h) => {
      const victim: SimProcess = { name: 'victim', alive: true };
      const fd = h.as(victim, () => fs.openSync(`${A}/f`, 'w'));
      h.as(victim, () => fs.writeSync(fd, Buffer.from('kept in the page cache')));
      // Issued while alive, killed before it completes: no effect, no settlement.
      let settled = false;
      h.as(victim, () => fsp.writeFile(`${A}/late`, 'x')).then(
        () => (settled = true),
        () => (settled = true),
      );
      h.sim.processCrash(victim);
      assert.equal(victim.alive, false);
      assert.throws(() => h.as(victim, () => fs.existsSync(`${A}/f`)), SimCrashed);
      assert.throws(() => h.as(victim, () => fs.writeSync(fd, Buffer.from('x'))), SimCrashed);
      let called = false;
      h.as(victim, () => fs.fsync(fd, () => (called = true)));
      h.as(victim, () => fsp.readFile(`${A}/f`)).then(
        () => (settled = true),
        () => (settled = true),
      );
      await h.drain();
      assert.equal(settled, false);
      assert.equal(called, false);
      assert.equal(fs.existsSync(`${A}/late`), false);
      assert.equal(h.sim.peek(`${A}/f`)?.toString(), 'kept in the page cache');
      assert.throws(() => fs.writeSync(fd, Buffer.from('x')), code('EBADF'), 'its fds were closed');
    });
  });

  it('completes concurrent async calls in a seeded order', async () => {
    const finals = new Set<string>();
    for (let seed = 0; seed < 20; seed++) {
      const once = (): Promise<string> =>
        withSim(
          seed,
          async (h) => {
            const fd = fs.openSync(`${A}/f`, 'w+');
            const write = (text: string): Promise<void> =>
              new Promise((resolve, reject) =>
                fs.write(fd, Buffer.from(text), 0, 1, 0, (error) =>
                  error ? reject(error) : resolve(),
                ),
              );
            const both = Promise.all([write('1'), write('2')]);
            assert.equal(h.sim.peek(`${A}/f`)?.length, 0, 'no effect before completion');
            await h.run(both);
            const bytes = Buffer.alloc(1);
            const read = new Promise<number>((resolve) =>
              fs.read(fd, bytes, 0, 1, 0, (_error, n) => resolve(n)),
            );
            assert.equal(await h.run(read), 1);
            return bytes.toString();
          },
          { faults: { ...NO_FAULTS, maxLatencyMs: 5 } },
        );
      const first = await once();
      assert.equal(await once(), first, 'same seed, same order');
      finals.add(first);
    }
    assert.deepEqual([...finals].sort(), ['1', '2']);
  });

  it('gives Node-shaped errors and directory semantics', async () => {
    await withSim(5, async (h) => {
      assert.throws(
        () => fs.openSync(`${A}/nope`, 'r'),
        (error: NodeJS.ErrnoException) =>
          error.message === `ENOENT: no such file or directory, open '${A}/nope'` &&
          error.errno === -2 &&
          error.syscall === 'open' &&
          error.path === `${A}/nope`,
      );
      assert.equal(fs.statSync(`${A}/nope`, { throwIfNoEntry: false }), undefined);
      fs.mkdirSync(`${A}/d`);
      assert.throws(() => fs.mkdirSync(`${A}/d`), code('EEXIST'));
      const dir = fs.openSync(`${A}/d`, 'r');
      assert.throws(() => fs.writeSync(dir, Buffer.alloc(1)), code('EISDIR'));
      assert.throws(() => fs.openSync(`${A}/d`, 'r+'), code('EISDIR'));
      fs.closeSync(dir);
      assert.throws(() => fs.closeSync(dir), code('EBADF'));
      fs.writeFileSync(`${A}/d/f`, 'hello');
      assert.throws(() => fs.openSync(`${A}/d/f/g`, 'w'), code('ENOTDIR'));
      const stat = fs.statSync(`${A}/d/f`);
      assert.ok(
        stat.isFile() &&
          !stat.isDirectory() &&
          !stat.isBlockDevice() &&
          stat.size === 5 &&
          stat.ino >= 1000,
      );
      assert.ok(fs.statSync(`${A}/d`).isDirectory());
      assert.equal(fs.readFileSync(`${A}/d/f`, { encoding: 'utf8' }), 'hello');
      const fd = fs.openSync(`${A}/d/f`, 'r');
      const buf = Buffer.alloc(10, 9);
      assert.equal(fs.readSync(fd, buf, 0, 10, 3), 2);
      assert.equal(fs.readSync(fd, buf, 0, 10, 100), 0, 'nothing past EOF');
      assert.equal(fs.readFileSync(fd, 'utf8'), 'hello');
      fs.closeSync(fd);
      const hole = fs.openSync(`${A}/hole`, 'w+');
      fs.writeSync(hole, Buffer.from('z'), 0, 1, 1000);
      const holeBytes = Buffer.alloc(1001, 7);
      assert.equal(fs.readSync(hole, holeBytes, 0, 1001, 0), 1001);
      assert.ok(holeBytes.subarray(0, 1000).every((b) => b === 0) && holeBytes[1000] === 0x7a);
      assert.equal(fs.fstatSync(hole).size, 1001);
      fs.closeSync(hole);
      assert.throws(
        () => fs.rmSync(`${A}/d`),
        (error: NodeJS.ErrnoException) => error.code === 'ERR_FS_EISDIR',
      );
      assert.throws(() => fs.rmSync(`${A}/missing`), code('ENOENT'));
      await assert.rejects(
        h.run(fsp.rename(`${A}/missing`, `${A}/x`)),
        (error: NodeJS.ErrnoException) =>
          error.code === 'ENOENT' && error.message.endsWith(`-> '${A}/x'`),
      );
      await assert.rejects(h.run(fsp.unlink(`${A}/d`)), code('EISDIR'));
      await assert.rejects(h.run(fsp.access(`${A}/missing`)), code('ENOENT'));
      await h.run(fsp.access(`${A}/d/f`));
      assert.equal((await h.run(fsp.stat(`${A}/d/f`))).size, 5);
      assert.deepEqual(await h.run(fsp.readdir(`${A}/d`)), ['f']);
      assert.equal(await h.run(fsp.mkdir(`${A}/m/n`, { recursive: true })), `${A}/m`);
      await h.run(fsp.writeFile(`${A}/m/n/w`, Buffer.from('w')));
      await assert.rejects(h.run(fsp.rename(`${A}/m`, `${A}/d`)), code('ENOTEMPTY'));
      await assert.rejects(h.run(fsp.rename(`${A}/d/f`, '/sim/b/f')), code('EXDEV'));
      await h.run(fsp.rm(`${A}/m`, { recursive: true, force: true }));
      assert.equal(fs.existsSync(`${A}/m`), false);
      fs.chmodSync(`${A}/d/f`, 0o600);
      assert.equal(fs.realpathSync(`${A}/d/f`), `${A}/d/f`);
      const hd = await h.run(fsp.open(`${A}/d/f`, 'r+'));
      await h.run(hd.truncate(2));
      assert.deepEqual(await h.run(hd.writev([Buffer.from('y'), Buffer.from('z')], 2)), {
        bytesWritten: 2,
        buffers: [Buffer.from('y'), Buffer.from('z')],
      });
      const into = Buffer.alloc(4);
      assert.equal((await h.run(hd.read(into, 0, 4, 0))).bytesRead, 4);
      assert.equal(into.toString(), 'heyz');
      assert.equal((await h.run(hd.stat())).size, 4);
      await h.run(hd.close());
      assert.equal(hd.fd, -1);
    });
  });

  it('passes other paths and fds to the real file system', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sim-fs-'));
    try {
      await withSim(7, async (h) => {
        const real = path.join(dir, 'real');
        fs.writeFileSync(real, 'hello');
        assert.equal(fs.readFileSync(real, 'utf8'), 'hello');
        const fd = fs.openSync(real, 'r');
        assert.ok(fd < 1_000_000);
        assert.equal(fs.fstatSync(fd).size, 5);
        fs.closeSync(fd);
        assert.equal(
          await fsp.readFile(real, 'utf8'),
          'hello',
          'a real promise, no simulated completion needed',
        );
        assert.equal(fs.existsSync('/sim/abc'), false, 'outside /sim/a although it starts with it');
        assert.equal(h.sim.peek(real), undefined);
        const simFd = fs.openSync(`${A}/f`, 'w');
        assert.ok(simFd >= 1_000_000);
        assert.equal(fs.existsSync(path.join(dir, 'f')), false);
        fs.closeSync(simFd);
      });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('restores the original functions on uninstall', async () => {
    const named = await import('node:fs');
    const originals = { openSync: fs.openSync, read: fs.read, open: fsp.open, rename: fsp.rename };
    const h = new Harness(1);
    h.sim.install();
    try {
      assert.notEqual(fs.openSync, originals.openSync);
      assert.notEqual(fsp.open, originals.open);
      assert.equal(named.openSync, fs.openSync, 'ESM named exports follow the patch');
    } finally {
      h.sim.uninstall();
    }
    assert.equal(fs.openSync, originals.openSync);
    assert.equal(fs.read, originals.read);
    assert.equal(fsp.open, originals.open);
    assert.equal(fs.promises.rename, originals.rename);
    assert.equal(named.openSync, originals.openSync);
  });
});
