// Durable file operations: the only place that knows how to make creates, renames and unlinks
// survive a crash (fsync of the directory), and how to zero a range without writing it.
import type MmapIo from '@riaskov/mmap-io';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { rethrowIfBug, RewindError } from '../core/index.js';
import { runTool } from './tool-helper.js';

/**
 * Data at rest is private: every file Rewind creates is the owner's alone, every directory too
 * (history holds every past version of every block). Given explicitly at each create, so the
 * process umask cannot widen them; `rewind up/agent/manager` also set UMASK_PRIVATE for anything
 * a library creates (SQLite's WAL and SHM files take the database file's mode).
 */
export const FILE_MODE_PRIVATE = 0o600;
export const DIR_MODE_PRIVATE = 0o700;
export const UMASK_PRIVATE = 0o077;

// CommonJS whose types declare a default export it does not have at run time: required as it is.
const mmap = createRequire(import.meta.url)('@riaskov/mmap-io') as typeof MmapIo.default;

export async function fsyncDir(dir: string): Promise<void> {
  const handle = await fsp.open(dir, 'r');
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** fsyncDir for the few places that must stay synchronous (opening a replica at a hello). */
export function fsyncDirSync(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** Writes `data` to `file` atomically: temp file, fdatasync, rename, fsync of the directory. */
export async function writeFileDurable(
  file: string,
  data: Buffer | string | readonly Buffer[],
): Promise<void> {
  const temp = `${file}.tmp-${process.pid}`;
  const handle = await fsp.open(temp, 'w', FILE_MODE_PRIVATE);
  try {
    if (Array.isArray(data)) await handle.writev(data as Buffer[]);
    else await handle.writeFile(data as Buffer | string);
    await handle.datasync();
  } finally {
    await handle.close();
  }
  await fsp.rename(temp, file);
  await fsyncDir(path.dirname(file));
}

/**
 * Makes `file` a durable hard link to `source`, a durable file that is never written again; where
 * the file system cannot link the two, `file` becomes a durable copy of `data` (source's bytes).
 */
export async function linkFileDurable(source: string, file: string, data: Buffer): Promise<void> {
  const temp = `${file}.tmp-${process.pid}`;
  await fsp.rm(temp, { force: true });
  try {
    await fsp.link(source, temp);
  } catch (error) {
    if (!LINK_UNSUPPORTED.has((error as { code?: string }).code ?? '')) throw error;
    await writeFileDurable(file, data);
    return;
  }
  await fsp.rename(temp, file);
  await fsyncDir(path.dirname(file));
}
const LINK_UNSUPPORTED = new Set(['EXDEV', 'EPERM', 'EMLINK', 'ENOTSUP', 'EOPNOTSUPP']);

export async function ensureDir(dir: string): Promise<void> {
  await fsp.mkdir(dir, { recursive: true, mode: DIR_MODE_PRIVATE });
}

export function isBlockDevice(file: string): boolean {
  try {
    return fs.statSync(file).isBlockDevice();
  } catch (error) {
    rethrowIfBug(error);
    return false;
  }
}

/** True when `file` exists and is a regular file (the console's built assets, for one). */
export function isFile(file: string): boolean {
  try {
    return fs.statSync(file).isFile();
  } catch (error) {
    rethrowIfBug(error);
    return false;
  }
}

/** Shared zero buffer for small zero writes; never written into. */
export const ZERO_CHUNK = Buffer.alloc(1024 * 1024);
/** Ranges at least this long are punched (files) or discarded (devices) rather than written. */
/** True when every byte of `data` is zero. */
export function isZero(data: Buffer): boolean {
  for (let at = 0; at < data.length; at += ZERO_CHUNK.length) {
    const end = Math.min(data.length, at + ZERO_CHUNK.length);
    if (data.compare(ZERO_CHUNK, 0, end - at, at, end) !== 0) return false;
  }
  return true;
}

export const PUNCH_THRESHOLD_BYTES = 1024 * 1024;

/**
 * How zeroRange runs util-linux (`fallocate`, `blkdiscard`); the deterministic simulation, whose
 * files exist only in memory, replaces it.
 */
export const zeroTools = {
  run: (command: 'fallocate' | 'blkdiscard', args: string[]): Promise<void> =>
    runTool(command, args, 120_000),
};

/**
 * Makes [offset, offset + length) read as zeroes. Short ranges are written with zeroes on the
 * calling thread; long ones become a hole (files, util-linux fallocate --punch-hole) or a zeroout
 * (block devices, blkdiscard --zeroout), so a discard of a terabyte writes nothing.
 */
export async function zeroRange(
  fd: number,
  file: string,
  blockDevice: boolean,
  offsetBytes: number,
  lengthBytes: number,
): Promise<void> {
  if (lengthBytes < PUNCH_THRESHOLD_BYTES) {
    writeZeroesSync(fd, offsetBytes, lengthBytes);
    return;
  }
  const args = blockDevice
    ? ['--zeroout', '--offset', String(offsetBytes), '--length', String(lengthBytes), file]
    : [
        '--punch-hole',
        '--keep-size',
        '--offset',
        String(offsetBytes),
        '--length',
        String(lengthBytes),
        file,
      ];
  try {
    await zeroTools.run(blockDevice ? 'blkdiscard' : 'fallocate', args);
  } catch (error) {
    throw new RewindError(
      'REWIND_IO',
      `zeroing ${lengthBytes} bytes at ${offsetBytes} of ${file} failed`,
      { cause: error, hint: 'is util-linux installed (fallocate, blkdiscard)?' },
    );
  }
}

/**
 * How files are preallocated (util-linux `fallocate --length`: blocks reserved, nothing written);
 * the deterministic simulation, whose files exist only in memory, replaces it.
 */
export const preallocateTools = {
  run: (file: string, lengthBytes: number, timeoutMs: number): Promise<void> =>
    runTool('fallocate', ['--length', String(lengthBytes), file], timeoutMs),
};

/** statfs magic numbers of the memory file systems (linux/magic.h). */
const MEMORY_FILE_SYSTEMS: ReadonlySet<number> = new Set([0x01021994, 0x858458f6]); // tmpfs, ramfs

/**
 * True when `dir` lies on tmpfs or ramfs, where there is no disk to write to directly; false
 * when it does not or cannot be told (a directory that does not exist yet, no statfs).
 */
export function fileSystemIsMemory(dir: string): boolean {
  try {
    return MEMORY_FILE_SYSTEMS.has(fs.statfsSync(dir).type);
  } catch (error) {
    rethrowIfBug(error);
    return false;
  }
}

/**
 * Writes all of `data` at `positionBytes`: a write may take fewer bytes than asked (a signal, a
 * file system near full), so it is repeated for the rest; one that takes none is an error.
 */
export function writeFullySync(fd: number, data: Uint8Array, positionBytes: number): void {
  let done = 0;
  while (done < data.length) {
    const n = fs.writeSync(fd, data, done, data.length - done, positionBytes + done);
    if (n <= 0)
      throw new RewindError('REWIND_IO', `a write at ${positionBytes + done} wrote nothing`);
    done += n;
  }
}

export function writeZeroesSync(fd: number, offsetBytes: number, lengthBytes: number): void {
  for (let done = 0; done < lengthBytes; done += ZERO_CHUNK.length) {
    const n = Math.min(ZERO_CHUNK.length, lengthBytes - done);
    writeFullySync(fd, ZERO_CHUNK.subarray(0, n), offsetBytes + done);
  }
}

export function preadFully(
  fd: number,
  target: Buffer,
  targetOffset: number,
  lengthBytes: number,
  positionBytes: number,
): void {
  let done = 0;
  while (done < lengthBytes) {
    const n = fs.readSync(
      fd,
      target,
      targetOffset + done,
      lengthBytes - done,
      positionBytes + done,
    );
    if (n === 0) {
      // past EOF of a sparse file reads as zeroes
      target.fill(0, targetOffset + done, targetOffset + lengthBytes);
      return;
    }
    done += n;
  }
}

/**
 * Files larger than this are not mapped (the mapping library takes the size as a 32-bit int), nor
 * are empty ones: their readers pread instead.
 */
const MAP_BYTES_MAX = 1024 ** 3;

/**
 * The whole of an open file that never changes again, mapped read-only (MAP_SHARED: the page cache
 * itself, no copy), or undefined when it cannot be mapped (empty, too large, no address space or
 * map count left): the caller then preads. Reading it costs no system call once its pages are
 * mapped, which is what makes a view read of many small pieces of many files cheap. The mapping is
 * released when the Buffer is garbage-collected; an unlinked file keeps its blocks until then.
 *
 * Only for files that are never truncated or rewritten while mapped (committed transaction
 * files): a read of a page past a file's end, or one the disk cannot read, is SIGBUS, not an error.
 */
export function mapReadOnly(fd: number): Buffer | undefined {
  try {
    const size = fs.fstatSync(fd).size;
    if (size === 0 || size > MAP_BYTES_MAX) return undefined;
    return mmap.map(size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0, mmap.MADV_NORMAL);
  } catch (error) {
    rethrowIfBug(error);
    return undefined;
  }
}

/** Where memory shared between threads is made: a tmpfs every Linux has, so no disk behind it. */
const SHARED_MEMORY_DIR = '/dev/shm';

/**
 * Memory that this thread and a worker thread both map: a file on /dev/shm, unlinked at once,
 * mapped read-write and shared. The mapping is page-aligned (direct I/O can write from it) and
 * reaches the worker as the descriptor number (`mapShared(fd, bytes)` there): descriptors belong
 * to the process. Undefined when there is no /dev/shm or the mapping is refused; the caller then
 * works without a worker. The caller closes `fd` when neither thread needs the memory any more.
 */
export function createSharedMemory(bytes: number): { buffer: Buffer; fd: number } | undefined {
  const file = path.join(
    SHARED_MEMORY_DIR,
    `rewind-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`,
  );
  let fd: number;
  try {
    fd = fs.openSync(file, 'wx+', 0o600);
  } catch (error) {
    rethrowIfBug(error);
    return undefined;
  }
  try {
    fs.unlinkSync(file);
    fs.ftruncateSync(fd, bytes);
    return { buffer: mapShared(fd, bytes), fd };
  } catch (error) {
    rethrowIfBug(error);
    fs.closeSync(fd);
    return undefined;
  }
}

/** The shared memory of createSharedMemory, mapped again (in the worker thread) from its fd. */
export function mapShared(fd: number, bytes: number): Buffer {
  const readWrite = (mmap.PROT_READ | mmap.PROT_WRITE) as 3;
  return mmap.map(bytes, readWrite, mmap.MAP_SHARED, fd, 0);
}

/** A whole file that never changes again, mapped read-only (see mapReadOnly), or undefined. */
export function mapFile(file: string): Buffer | undefined {
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (error) {
    rethrowIfBug(error);
    return undefined;
  }
  try {
    return mapReadOnly(fd); // the mapping outlives the descriptor
  } finally {
    fs.closeSync(fd);
  }
}

/** Reads exactly `target.length` bytes at `positionBytes` from `fd` (zeroes past the end). */
export function readFullyAsync(fd: number, target: Buffer, positionBytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done === target.length) return resolve();
      fs.read(fd, target, done, target.length - done, positionBytes + done, (error, bytesRead) => {
        if (error) return reject(error);
        if (bytesRead === 0) {
          target.fill(0, done);
          return resolve();
        }
        step(done + bytesRead);
      });
    };
    step(0);
  });
}

export function fdatasyncAsync(fd: number): Promise<void> {
  return new Promise((resolve, reject) =>
    fs.fdatasync(fd, (error) => (error ? reject(error) : resolve())),
  );
}

export function writevAsync(
  fd: number,
  buffers: readonly Buffer[],
  positionBytes: number,
): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.writev(fd, buffers as Buffer[], positionBytes, (error, written) =>
      error ? reject(error) : resolve(written),
    ),
  );
}

export function writeAsync(fd: number, data: Buffer, positionBytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done === data.length) return resolve();
      fs.write(fd, data, done, data.length - done, positionBytes + done, (error, written) =>
        error ? reject(error) : step(done + written),
      );
    };
    step(0);
  });
}

/** Size of a file or block device in bytes. */
export function sizeOf(file: string): number {
  const stat = fs.statSync(file);
  if (!stat.isBlockDevice()) return stat.size;
  const fd = fs.openSync(file, 'r');
  try {
    // lseek(SEEK_END) is not exposed; reading sysfs is the portable way for a block device.
    const name = path.basename(fs.realpathSync(file));
    return Number(fs.readFileSync(`/sys/class/block/${name}/size`, 'utf8').trim()) * 512;
  } finally {
    fs.closeSync(fd);
  }
}
