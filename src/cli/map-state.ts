// What `rewind map` attached on this machine, and what the kernel says about it: one small JSON
// record per mapping in the runtime directory (it vanishes with a reboot, as loop devices and FUSE
// mounts do), the commands run for it, and the queries (mounts of a device, a loop device's
// backing file, whether nbdfuse still runs) that decide whether a record is still true.
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { errorCode, rethrowIfBug, RewindError } from '../core/index.js';
import { deviceMajor, deviceMinor } from '../platform/index.js';

/** What a mapping attaches: a snapshot or clone of the volume set, or a production volume. */
export type MapTarget =
  { kind: 'view'; view: string; viewKind: 'snapshot' | 'clone' } | { kind: 'production' };

export interface MapRecord {
  version: 1;
  /** The API the view belongs to (two managers on one machine may both have a view "x"). */
  server: string;
  target: MapTarget;
  volume: string;
  uri: string;
  readOnly: boolean;
  fuseDir: string;
  /** The file nbdfuse serves, the loop device's backing file. */
  fuseFile: string;
  nbdfusePid: number;
  loop: string;
  /** The loop device reads and writes the FUSE file with O_DIRECT (no second page cache). */
  directIo: boolean;
  mountpoint: string | null;
  mountOptions: string | null;
  createdAt: string;
}

/** Longest any one system command of a mapping may run (losetup, mount, umount, fusermount3). */
export const COMMAND_MS_MAX = 30_000;

/**
 * Where mappings are recorded: $REWIND_RUNTIME_DIR, else $XDG_RUNTIME_DIR/rewind, else
 * /run/rewind for root, else a directory of this user under the temporary directory.
 */
export function runtimeDir(): string {
  if (process.env.REWIND_RUNTIME_DIR) return path.resolve(process.env.REWIND_RUNTIME_DIR);
  if (process.env.XDG_RUNTIME_DIR) return path.join(process.env.XDG_RUNTIME_DIR, 'rewind');
  if (process.getuid?.() === 0) return '/run/rewind';
  return path.join(os.tmpdir(), `rewind-${process.getuid?.() ?? 'user'}`);
}

/** A mapping's name on disk; names of views and volumes cannot hold "+", so this is unique. */
export function mapKey(server: string, target: MapTarget, volume: string): string {
  const serverId = createHash('sha256').update(server).digest('hex').slice(0, 12);
  return target.kind === 'view'
    ? `${serverId}+view+${target.view}+${volume}`
    : `${serverId}+production+${volume}`;
}

export function recordsDir(): string {
  return path.join(runtimeDir(), 'maps');
}

export function readRecord(key: string): MapRecord | undefined {
  const file = path.join(recordsDir(), `${key}.json`);
  if (!fs.existsSync(file)) return undefined;
  return JSON.parse(fs.readFileSync(file, 'utf8')) as MapRecord;
}

/** Written whole (temp file, rename): a reader never sees half a record. */
export function writeRecord(key: string, record: MapRecord): void {
  fs.mkdirSync(recordsDir(), { recursive: true, mode: 0o700 });
  const file = path.join(recordsDir(), `${key}.json`);
  fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(record, null, 2)}\n`);
  fs.renameSync(`${file}.tmp`, file);
}

export function removeRecord(key: string): void {
  fs.rmSync(path.join(recordsDir(), `${key}.json`), { force: true });
}

/** Every mapping recorded for `server`. */
export function recordsOf(server: string): { key: string; record: MapRecord }[] {
  if (!fs.existsSync(recordsDir())) return [];
  return fs
    .readdirSync(recordsDir())
    .filter((name) => name.endsWith('.json'))
    .map((name) => ({ key: name.slice(0, -'.json'.length), record: readRecord(name.slice(0, -5)) }))
    .filter((r): r is { key: string; record: MapRecord } => r.record?.server === server);
}

/** Where the block device `device` is mounted now (from /proc/self/mountinfo). */
export function mountsOf(device: string): string[] {
  let rdev: number;
  try {
    rdev = fs.statSync(device).rdev;
  } catch (error) {
    rethrowIfBug(error);
    if (errorCode(error) === 'ENOENT') return [];
    throw error;
  }
  const wanted = `${deviceMajor(rdev)}:${deviceMinor(rdev)}`;
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((fields) => fields[2] === wanted)
    .map((fields) => unescapeMountField(fields[4] as string));
}

export function unescapeMountField(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
    String.fromCharCode(parseInt(octal, 8)),
  );
}

/** The file a loop device is attached to, or undefined when it is free. */
export function loopBackingFile(loop: string): string | undefined {
  const file = `/sys/block/${path.basename(loop)}/loop/backing_file`;
  if (!fs.existsSync(file)) return undefined;
  return fs.readFileSync(file, 'utf8').trim();
}

export function loopDirectIo(loop: string): boolean {
  const file = `/sys/block/${path.basename(loop)}/loop/dio`;
  return fs.existsSync(file) && fs.readFileSync(file, 'utf8').trim() === '1';
}

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    rethrowIfBug(error);
    return errorCode(error) === 'EPERM'; // alive, but not ours to signal
  }
}

/** The record still describes what the kernel has: nbdfuse running, the loop on its file. */
export function recordAlive(record: MapRecord): boolean {
  return processAlive(record.nbdfusePid) && loopBackingFile(record.loop) === record.fuseFile;
}

/** Runs a system command; a failure is a RewindError with its last line of stderr. */
export function runCommand(
  command: string,
  args: string[],
  timeoutMs = COMMAND_MS_MAX,
): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: timeoutMs }, (error, stdout, stderr) => {
      if (!error) return resolve(stdout);
      const detail = stderr.trim().split('\n').pop() || error.message;
      reject(
        new RewindError('REWIND_IO', `${command} ${args.join(' ')}: ${detail}`, { cause: error }),
      );
    });
  });
}
