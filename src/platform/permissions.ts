// Who may read what Rewind keeps: the scan of a data directory for entries that group or others
// can use, the mode of a single file, and the ownership and mode of a listening Unix socket.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import { rethrowIfBug, RewindError } from '../core/index.js';

/** Permission bits for group and others: any of them set means someone else can use the entry. */
export const MODE_BITS_OTHERS = 0o077;
/** Entries named in a report; the count covers all of them. */
const EXAMPLES_MAX = 8;
/**
 * Directory entries a scan looks at before it stops: a data directory holds a few files per
 * transaction, so this covers years of history and still bounds the start-up time.
 */
export const SCAN_ENTRIES_MAX = 2_000_000;

export interface ExposedEntry {
  path: string;
  /** Permission bits (0o777). */
  mode: number;
  kind: 'file' | 'directory';
}

export interface ExposureReport {
  /** Entries examined (the root included). */
  entries: number;
  /** Entries that group or others can read, write or enter. */
  exposed: number;
  /** Up to EXAMPLES_MAX of them, in scan order (the root first). */
  examples: ExposedEntry[];
  /** True when the scan stopped at SCAN_ENTRIES_MAX. */
  truncated: boolean;
}

/**
 * Walks `root` (not following symlinks; sockets and other special files are skipped) and reports
 * every file or directory with a group or other permission bit. A missing root is an empty report.
 */
export async function scanExposed(root: string): Promise<ExposureReport> {
  const report: ExposureReport = { entries: 0, exposed: 0, examples: [], truncated: false };
  const pending = [root];
  while (pending.length > 0) {
    if (report.entries >= SCAN_ENTRIES_MAX) {
      report.truncated = true;
      break;
    }
    const entry = pending.pop() as string;
    let stat: fs.Stats;
    try {
      stat = await fsp.lstat(entry);
    } catch (error) {
      rethrowIfBug(error);
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue; // removed meanwhile
      throw scanError(entry, error);
    }
    report.entries += 1;
    const kind = stat.isDirectory() ? 'directory' : stat.isFile() ? 'file' : undefined;
    if (kind === undefined) continue;
    const mode = stat.mode & 0o777;
    if ((mode & MODE_BITS_OTHERS) !== 0) {
      report.exposed += 1;
      if (report.examples.length < EXAMPLES_MAX) report.examples.push({ path: entry, mode, kind });
    }
    if (kind === 'directory') {
      let names: string[];
      try {
        names = await fsp.readdir(entry);
      } catch (error) {
        rethrowIfBug(error);
        throw scanError(entry, error);
      }
      for (const name of names.sort().reverse()) pending.push(path.join(entry, name));
    }
  }
  return report;
}

function scanError(entry: string, error: unknown): RewindError {
  return new RewindError('REWIND_IO', `cannot check the permissions of ${entry}`, {
    cause: error,
    hint: `${(error as Error).message}; the data directory must belong to the user running Rewind`,
  });
}

/** Permission bits of `file` (following symlinks), or undefined when it does not exist. */
export function modeOf(file: string): number | undefined {
  try {
    return fs.statSync(file).mode & 0o777;
  } catch (error) {
    rethrowIfBug(error);
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw error;
  }
}

/** A group given by name or number, as its numeric id (names through NSS: `getent group`). */
export function groupId(group: string): number {
  if (/^\d+$/.test(group)) return Number(group);
  let line: string;
  try {
    line = execFileSync('getent', ['group', group], { encoding: 'utf8', timeout: 10_000 });
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError('REWIND_BAD_ARGUMENT', `group "${group}" does not exist`, {
      cause: error,
      hint: 'give an existing group name or a numeric gid (getent group NAME)',
    });
  }
  const gid = Number(line.split(':')[2]);
  if (!Number.isInteger(gid) || gid < 0)
    throw new RewindError('REWIND_BAD_ARGUMENT', `getent returned no gid for group "${group}"`);
  return gid;
}

/** Gives a Unix socket its mode and, when asked, its group (the owner stays the process's). */
export function setSocketAccess(socketPath: string, options: { mode: number; gid?: number }): void {
  if (options.gid !== undefined) fs.chownSync(socketPath, -1, options.gid);
  fs.chmodSync(socketPath, options.mode);
}

/** What is at a path a Unix socket is about to be bound to. */
export type SocketPathState = 'free' | 'socket' | 'other';

export function socketPathState(socketPath: string): SocketPathState {
  try {
    return fs.lstatSync(socketPath).isSocket() ? 'socket' : 'other';
  } catch (error) {
    rethrowIfBug(error);
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return 'free';
    throw error;
  }
}

/** Removes a socket file nothing listens on any more (left by a killed server). */
export function removeStaleSocket(socketPath: string): void {
  if (socketPathState(socketPath) !== 'socket') return;
  fs.rmSync(socketPath, { force: true });
}
