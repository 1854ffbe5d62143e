// Exclusive locks that die with their process: flock(2) on a file held open for the life of the
// process, and who holds a lock when one is refused (from /proc/locks, with its command line).
//
// Why flock and not a pid file: the kernel drops a flock when the last descriptor of its open file
// goes away, so a process killed with SIGKILL (or a machine that lost power) leaves no stale lock
// behind, and there is no liveness check to get wrong (a pid file's pid can be reused by another
// process after a crash). Descriptors are opened close-on-exec by libuv, so children (nbdfuse,
// hooks) never inherit a lock. On NFS, Linux emulates flock with fcntl byte-range locks, which
// the server arbitrates across clients.
import fs from 'node:fs';
import { createRequire } from 'node:module';
import type FsExt from 'fs-ext';
import { errorCode, rethrowIfBug, RewindError } from '../core/index.js';
import { deviceMajor, deviceMinor } from './devices.js';

/**
 * fs-ext, loaded on first use: its addon is not context-aware, and loading it in a worker thread
 * (the manager's apply worker imports platform/) crashes the process. Locks are taken on the main
 * thread only. CommonJS: required as it is (its types name the functions it exports).
 */
let fsExt: typeof FsExt | undefined;
function flockSync(fd: number, flags: 'exnb'): void {
  fsExt ??= createRequire(import.meta.url)('fs-ext') as typeof FsExt;
  fsExt.flockSync(fd, flags);
}

/** A lock held by this process until `release` (or until the process ends, however it ends). */
export interface FileLock {
  readonly file: string;
  release(): void;
}

/** The process that holds a lock, as far as this machine can tell. */
export interface LockHolder {
  pid: number;
  /** Its command line (arguments joined by spaces), when /proc shows it. */
  commandLine: string | undefined;
}

/** A command line longer than this is cut in messages (it names the process, nothing more). */
const COMMAND_LINE_CHARS_MAX = 300;

/**
 * Takes an exclusive lock on `file` without waiting, or throws REWIND_CONFLICT naming the holder.
 * `create` makes the file when it is missing (a lock file); otherwise the file must exist (a
 * production image or block device, which is only opened for reading and never written here).
 * `describe` says what the file is, for the message ("data directory /x", "production image ...").
 */
export function lockExclusive(
  file: string,
  options: { create: boolean; describe: string; hint: string },
): FileLock {
  const fd = fs.openSync(file, options.create ? 'a+' : 'r');
  try {
    flockSync(fd, 'exnb');
  } catch (error) {
    fs.closeSync(fd);
    if (errorCode(error) !== 'EAGAIN' && errorCode(error) !== 'EWOULDBLOCK') throw error;
    const holder = lockHolder(file);
    const who = holder
      ? `process ${holder.pid}${holder.commandLine ? ` (${holder.commandLine})` : ''}`
      : 'another process';
    throw new RewindError('REWIND_CONFLICT', `${options.describe} is in use by ${who}`, {
      hint: options.hint,
    });
  }
  let released = false;
  return {
    file,
    release(): void {
      if (released) return;
      released = true;
      fs.closeSync(fd); // closing the only descriptor of the open file drops the flock
    },
  };
}

/**
 * Writes `text` into the lock file held by `lock` (who holds it, for people reading the file);
 * the lock itself is the flock, never this content.
 */
export function describeLockOwner(lock: FileLock, text: string): void {
  fs.writeFileSync(lock.file, text);
}

/** The process holding a flock on `file`, from /proc/locks (undefined when none is listed). */
export function lockHolder(file: string): LockHolder | undefined {
  let stat: fs.Stats;
  let table: string;
  try {
    stat = fs.statSync(file);
    table = fs.readFileSync('/proc/locks', 'utf8');
  } catch (error) {
    rethrowIfBug(error);
    return undefined; // no /proc (or the file went away): the message says "another process"
  }
  const pid = flockHolderPid(table, stat.dev, stat.ino);
  return pid === undefined ? undefined : { pid, commandLine: commandLineOf(pid) };
}

/**
 * The pid of the FLOCK entry on (dev, ino) in a /proc/locks table, whose lines read
 * `1: FLOCK  ADVISORY  WRITE 22706 fe:00:2146341 0 EOF` (major:minor in hex, inode in decimal).
 */
export function flockHolderPid(table: string, dev: number, ino: number): number | undefined {
  const wanted = `${hex2(deviceMajor(dev))}:${hex2(deviceMinor(dev))}:${ino}`;
  for (const line of table.split('\n')) {
    const fields = line.trim().split(/\s+/);
    // A blocked waiter's line ("1: -> FLOCK ...") is not the holder, and does not match here.
    if (fields[1] !== 'FLOCK' || fields[5] !== wanted) continue;
    const pid = Number(fields[4]);
    if (Number.isSafeInteger(pid) && pid > 0) return pid;
  }
  return undefined;
}

function commandLineOf(pid: number): string | undefined {
  try {
    const text = fs
      .readFileSync(`/proc/${pid}/cmdline`, 'utf8')
      .replace(/[\0\s]+/g, ' ')
      .trim();
    if (text.length === 0) return undefined;
    return text.length > COMMAND_LINE_CHARS_MAX
      ? `${text.slice(0, COMMAND_LINE_CHARS_MAX)}...`
      : text;
  } catch (error) {
    rethrowIfBug(error);
    return undefined; // it ended meanwhile, or another pid namespace hides it
  }
}

function hex2(n: number): string {
  return n.toString(16).padStart(2, '0');
}
