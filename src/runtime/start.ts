// One start of `rewind up`, `agent` or `manager` as a unit: the data directory is locked before
// anything in it is created or changed (a second process on it is refused at once, naming the
// first), and when a later step fails, everything opened so far is closed again, newest first,
// and a data directory this start created is removed, so a failed start leaves nothing behind.
import fs from 'node:fs';
import path from 'node:path';
import { errorCode, errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import { describeLockOwner, ensureDir, lockExclusive, type FileLock } from '../platform/index.js';

/** The lock file of a data directory (its content says who holds it; the lock is a flock). */
export const DATA_LOCK_FILE = 'lock';

type Log = (level: 'info' | 'warn' | 'error', message: string, fields?: object) => void;

export class StartScope {
  readonly dataDir: string;
  /** The data directory did not exist before this start (so a failed start removes it). */
  private readonly created: boolean;
  private readonly lock: FileLock;
  private readonly log: Log;
  /** What to close if a later step fails, in the order it was opened. */
  private readonly closers: { what: string; close: () => Promise<void> }[] = [];

  private constructor(dataDir: string, created: boolean, lock: FileLock, log: Log) {
    this.dataDir = dataDir;
    this.created = created;
    this.lock = lock;
    this.log = log;
  }

  /**
   * Locks `dataDir` (creating it when missing) for `command`, or throws REWIND_CONFLICT naming
   * the process that holds it. Nothing in the directory is touched before the lock is held.
   */
  static async open(dataDir: string, command: string, log: Log): Promise<StartScope> {
    const created = !fs.existsSync(dataDir);
    await ensureDir(dataDir);
    const lock = lockExclusive(path.join(dataDir, DATA_LOCK_FILE), {
      create: true,
      describe: `data directory ${path.resolve(dataDir)}`,
      hint: 'one process per data directory: stop that one first (SIGTERM), or give another --data; the lock ends with its process, so a crash leaves nothing to clean up',
    });
    describeLockOwner(
      lock,
      `${JSON.stringify({ pid: process.pid, command, argv: process.argv, startedAt: new Date().toISOString() })}\n`,
    );
    return new StartScope(dataDir, created, lock, log);
  }

  /** `close` undoes a step just taken if a later one fails. */
  onFailure(what: string, close: () => Promise<void>): void {
    this.closers.push({ what, close });
  }

  /**
   * Runs the rest of the start. If it throws, closes what it opened (newest first; a close that
   * fails is logged and the others still run), removes the data directory if this start created
   * it, releases the lock and rethrows the start's error.
   */
  async run<T>(start: () => Promise<T>): Promise<T> {
    try {
      return await start();
    } catch (error) {
      await this.rollBack();
      throw error;
    }
  }

  /** Releases the data directory's lock (after a clean stop, once everything is closed). */
  release(): void {
    this.lock.release();
  }

  private async rollBack(): Promise<void> {
    for (const { what, close } of [...this.closers].reverse()) {
      try {
        await close();
      } catch (error) {
        rethrowIfBug(error);
        // The start failed already; a close that fails as well must not hide why it failed.
        this.log('warn', `failed start: closing ${what} failed too: ${errorMessage(error)}`);
      }
    }
    if (this.created) fs.rmSync(this.dataDir, { recursive: true, force: true });
    this.lock.release();
  }
}

/**
 * Runs `listen` for the address an option names; an address in use (or not ours to bind) becomes
 * a RewindError naming the option, instead of a bare EADDRINUSE.
 */
export async function listenOn<T>(
  what: string,
  option: string,
  address: { host: string; port: number },
  listen: () => Promise<T>,
): Promise<T> {
  try {
    return await listen();
  } catch (error) {
    const code = errorCode(error);
    if (code !== 'EADDRINUSE' && code !== 'EADDRNOTAVAIL' && code !== 'EACCES') throw error;
    const reason =
      code === 'EADDRINUSE'
        ? 'is in use by another process'
        : code === 'EACCES'
          ? 'needs privileges this process lacks'
          : 'is not an address of this machine';
    throw new RewindError(
      'REWIND_CONFIG',
      `${what} address ${address.host}:${address.port} (${option}) ${reason}`,
      { hint: `give another ${option}, or stop what listens there`, cause: error },
    );
  }
}
