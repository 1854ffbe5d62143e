// `rewind map`, `unmap`, `mount`, and what `step`, `rm` and `restore` must know about them: a
// snapshot, clone or production volume attached as a local block device (nbdfuse, then a loop
// device with direct I/O over nbdfuse's file, read-only for snapshots), a filesystem on it mounted
// (a clone's journal replays into the clone; a snapshot mounts read-only without replay), and
// taken down in the safe order (umount, losetup -d, fusermount3 -u). The CLI keeps what it mapped
// in map-state.ts, so it can refuse or redo what would otherwise show stale content.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import { lockExclusive, type FileLock } from '../platform/index.js';
import {
  loopBackingFile,
  loopDirectIo,
  mapKey,
  mountsOf,
  processAlive,
  readRecord,
  recordAlive,
  recordsDir,
  recordsOf,
  removeRecord,
  runCommand,
  runtimeDir,
  unescapeMountField,
  writeRecord,
  type MapRecord,
  type MapTarget,
} from './map-state.js';

/** Longest nbdfuse may take to connect and write its pid file (it is "ready" then). */
const NBDFUSE_READY_MS_MAX = 15_000;
/** Longest nbdfuse may take to exit after fusermount3 -u. */
const NBDFUSE_EXIT_MS_MAX = 10_000;
const POLL_MS = 20;

/** What the map commands need from the API. */
export interface MapApi {
  server: string;
  /** The NBD address views (and, in `rewind up`, production volumes) are exported on. */
  nbd: { host: string; port: number };
  views(): Promise<{ name: string; kind: 'snapshot' | 'clone'; seq: number; exports: string[] }[]>;
  volumes(): Promise<string[]>;
}

export interface MapWhat {
  /** A view's name, or a production volume's with `production`. */
  name: string;
  volume: string | undefined;
  production: boolean;
}

/** Attaches `what` as a block device (again, if its record is stale); resolves its record. */
export async function mapView(api: MapApi, what: MapWhat): Promise<MapRecord> {
  const { target, volume } = await resolveTarget(api, what);
  const key = mapKey(api.server, target, volume);
  return withKeyLock(key, async () => {
    const existing = readRecord(key);
    if (existing && recordAlive(existing)) return existing;
    if (existing) await takeDown(key, existing, { quiet: true });
    return attach(api, key, target, volume);
  });
}

/** Unmounts (if `rewind mount` mounted it) and detaches; refuses while anything still uses it. */
export async function unmapView(api: MapApi, what: MapWhat): Promise<MapRecord[]> {
  const found = recordsOf(api.server).filter(({ record }) => matches(record, what));
  if (found.length === 0)
    throw new RewindError('REWIND_NOT_FOUND', `${describeWhat(what)} is not mapped here`, {
      hint: 'rewind maps lists what this machine has mapped',
    });
  for (const { key, record } of found)
    await withKeyLock(key, () => takeDown(key, record, { quiet: false }));
  return found.map((f) => f.record);
}

/**
 * Mounts the filesystem of `what` on `dir`, mapping it first when needed. A clone or production
 * volume mounts read-write (a journal replays into the clone, never into the history); a snapshot
 * mounts read-only without replaying its journal. Resolves the record and a note for the operator.
 */
export async function mountView(
  api: MapApi,
  what: MapWhat,
  dir: string,
): Promise<{ record: MapRecord; note: string | undefined }> {
  const wasMapped = await mappedRecord(api, what);
  const record = await mapView(api, what);
  const key = mapKey(api.server, record.target, record.volume);
  try {
    return await withKeyLock(key, () => mountRecord(key, record, path.resolve(dir)));
  } catch (error) {
    if (!wasMapped) await withKeyLock(key, () => takeDown(key, record, { quiet: true }));
    throw error;
  }
}

/**
 * `rewind step` on a view this machine has mapped: refused while it is mounted (a mounted
 * filesystem keeps what it read); otherwise the loop devices' buffers are written back before the
 * step (so the clone holds what was written through them) and dropped after it, also while some
 * program holds the device open, so no read after the step returns a block from before it. The
 * loop device reads nbdfuse's file with direct I/O, so that file has no page cache to go stale;
 * where direct I/O could not be set, its cache is dropped too.
 */
export async function stepMapped<T>(
  api: Pick<MapApi, 'server'>,
  view: string,
  step: () => Promise<T>,
): Promise<{ result: T; flushed: MapRecord[] }> {
  const mapped = recordsOf(api.server).filter(
    ({ record }) =>
      record.target.kind === 'view' && record.target.view === view && recordAlive(record),
  );
  const action = {
    what: `step ${view}`,
    why: 'a mounted filesystem keeps what it read in its caches and would not see the step',
  };
  for (const { record } of mapped) refuseIfMounted(record, action);
  const locks = mapped.map(({ key }) => lockKey(key));
  try {
    for (const { record } of mapped) await runCommand('blockdev', ['--flushbufs', record.loop]);
    try {
      return { result: await step(), flushed: mapped.map(({ record }) => record) };
    } finally {
      for (const { record } of mapped) await dropCaches(record);
    }
  } finally {
    for (const lock of locks) lock.release();
  }
}

/** Drops the loop device's buffers and, without direct I/O, the page cache of nbdfuse's file. */
async function dropCaches(record: MapRecord): Promise<void> {
  await runCommand('blockdev', ['--flushbufs', record.loop]);
  // GNU dd: count=0 with iflag=nocache asks the kernel to drop the whole file's cached pages.
  if (!loopDirectIo(record.loop))
    await runCommand('dd', [`if=${record.fuseFile}`, 'iflag=nocache', 'count=0', 'status=none']);
}

/**
 * Before a command that needs `what` unused here (`rm` of a view, a production restore, a restore
 * from a clone): refuses while this machine has it mapped (`mountedOnly`: only while mounted), and
 * flushes the block device of a mapped one so written blocks have reached the export.
 */
export async function refuseIfMapped(
  server: string,
  what: MapWhat,
  options: { action: { what: string; why: string }; mountedOnly: boolean },
): Promise<void> {
  for (const { record } of recordsOf(server).filter(({ record }) => matches(record, what))) {
    if (!recordAlive(record)) continue;
    refuseIfMounted(record, options.action);
    if (!options.mountedOnly)
      throw new RewindError(
        'REWIND_CONFLICT',
        `cannot ${options.action.what}: ${describeRecord(record)} is mapped here as ${record.loop}; ${options.action.why}`,
        { hint: `rewind unmap ${unmapArgs(record)} first` },
      );
    await runCommand('blockdev', ['--flushbufs', record.loop]);
  }
}

/** Every mapping of `server`, with whether it still holds. */
export function listMaps(server: string): (MapRecord & { alive: boolean })[] {
  return recordsOf(server).map(({ record }) => ({ ...record, alive: recordAlive(record) }));
}

export function describeRecord(record: MapRecord): string {
  return record.target.kind === 'view'
    ? `${record.volume}@${record.target.view} (${record.target.viewKind})`
    : `production volume ${record.volume}`;
}

export function unmapArgs(record: MapRecord): string {
  return record.target.kind === 'view'
    ? `${record.target.view} ${record.volume}`
    : `--production ${record.volume}`;
}

// ---- attach and take down ----

async function attach(
  api: MapApi,
  key: string,
  target: MapTarget,
  volume: string,
): Promise<MapRecord> {
  const readOnly = target.kind === 'view' && target.viewKind === 'snapshot';
  const exportName = target.kind === 'view' ? `${volume}@${target.view}` : volume;
  const uri = `nbd://${api.nbd.host.includes(':') ? `[${api.nbd.host}]` : api.nbd.host}:${api.nbd.port}/${exportName}`;
  const fuseDir = path.join(runtimeDir(), 'fuse', key);
  const fuseFile = path.join(fuseDir, 'nbd');
  await clearStaleFuse(fuseDir);
  fs.mkdirSync(fuseDir, { recursive: true, mode: 0o700 });
  const nbdfusePid = await startNbdfuse(fuseDir, uri, readOnly);
  let loop: string | undefined;
  try {
    loop = (
      await runCommand('losetup', [
        '--find',
        '--show',
        '--direct-io=on',
        ...(readOnly ? ['--read-only'] : []),
        fuseFile,
      ])
    ).trim();
    const record: MapRecord = {
      version: 1,
      server: api.server,
      target,
      volume,
      uri,
      readOnly,
      fuseDir,
      fuseFile,
      nbdfusePid,
      loop,
      directIo: loopDirectIo(loop),
      mountpoint: null,
      mountOptions: null,
      createdAt: new Date().toISOString(),
    };
    writeRecord(key, record);
    return record;
  } catch (error) {
    if (loop !== undefined) await runCommand('losetup', ['-d', loop]).catch(logCleanup);
    await stopNbdfuse(fuseDir, nbdfusePid).catch(logCleanup);
    throw error;
  }
}

/** Starts nbdfuse detached (it outlives this command) and waits until its pid file says ready. */
async function startNbdfuse(fuseDir: string, uri: string, readOnly: boolean): Promise<number> {
  const pidFile = `${fuseDir}.pid`;
  const logFile = `${fuseDir}.log`;
  fs.rmSync(pidFile, { force: true });
  const log = fs.openSync(logFile, 'w');
  const child = spawn('nbdfuse', [...(readOnly ? ['-r'] : []), '-P', pidFile, fuseDir, uri], {
    detached: true,
    stdio: ['ignore', log, log],
  });
  fs.closeSync(log);
  let exited: string | undefined;
  child.once('exit', (status, signal) => (exited = signal ?? `exit status ${status}`));
  child.once('error', (error) => (exited = error.message));
  for (let waitedMs = 0; !fs.existsSync(pidFile) || fs.statSync(pidFile).size === 0;) {
    if (exited !== undefined || waitedMs >= NBDFUSE_READY_MS_MAX) {
      if (exited === undefined) await stopNbdfuse(fuseDir, child.pid ?? 0).catch(logCleanup);
      const said = fs.readFileSync(logFile, 'utf8').trim().split('\n').pop() ?? '';
      throw new RewindError(
        'REWIND_IO',
        `nbdfuse could not attach ${uri}: ${exited ?? `not ready within ${NBDFUSE_READY_MS_MAX} ms`}${said ? ` (${said})` : ''}`,
        { hint: 'is the export there (rewind ls) and --nbd (or REWIND_NBD) its address?' },
      );
    }
    await sleep(POLL_MS);
    waitedMs += POLL_MS;
  }
  child.unref();
  return Number(fs.readFileSync(pidFile, 'utf8').trim());
}

/** fusermount3 -u, then waits for nbdfuse to end (it flushes and exits on its own). */
async function stopNbdfuse(fuseDir: string, pid: number): Promise<void> {
  if (isMountPoint(fuseDir)) await runCommand('fusermount3', ['-u', fuseDir]);
  for (let waitedMs = 0; pid > 0 && processAlive(pid); waitedMs += POLL_MS) {
    if (waitedMs >= NBDFUSE_EXIT_MS_MAX)
      throw new RewindError('REWIND_IO', `nbdfuse (pid ${pid}) did not exit after fusermount3 -u`);
    await sleep(POLL_MS);
  }
  fs.rmSync(fuseDir, { recursive: true, force: true });
  fs.rmSync(`${fuseDir}.pid`, { force: true });
  fs.rmSync(`${fuseDir}.log`, { force: true });
}

/** A FUSE mount whose nbdfuse died ("transport endpoint is not connected") is unmounted lazily. */
async function clearStaleFuse(fuseDir: string): Promise<void> {
  if (isMountPoint(fuseDir)) await runCommand('fusermount3', ['-u', '-z', fuseDir]);
}

async function takeDown(
  key: string,
  record: MapRecord,
  options: { quiet: boolean },
): Promise<void> {
  if (record.mountpoint !== null && mountsOf(record.loop).includes(record.mountpoint))
    await unmount(record);
  const ours = loopBackingFile(record.loop) === record.fuseFile;
  if (ours) {
    const elsewhere = mountsOf(record.loop);
    if (elsewhere.length > 0)
      throw new RewindError(
        'REWIND_CONFLICT',
        `${record.loop} (${describeRecord(record)}) is mounted at ${elsewhere.join(', ')}, not by rewind mount`,
        { hint: `umount ${elsewhere.join(' ')} first` },
      );
    await runCommand('losetup', ['-d', record.loop]);
  }
  try {
    await stopNbdfuse(record.fuseDir, record.nbdfusePid);
  } catch (error) {
    rethrowIfBug(error);
    if (!options.quiet) throw error;
  }
  removeRecord(key);
}

async function unmount(record: MapRecord): Promise<void> {
  const dir = record.mountpoint as string;
  try {
    await runCommand('umount', [dir]);
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError('REWIND_CONFLICT', `cannot unmount ${dir}: ${errorMessage(error)}`, {
      hint: `fuser -vm ${dir} lists the processes using it; nothing was detached`,
    });
  }
}

// ---- mount ----

async function mountRecord(
  key: string,
  record: MapRecord,
  dir: string,
): Promise<{ record: MapRecord; note: string | undefined }> {
  const mounted = mountsOf(record.loop);
  if (mounted.length > 0)
    throw new RewindError(
      'REWIND_CONFLICT',
      `${describeRecord(record)} is mounted at ${mounted.join(', ')} already`,
    );
  const type = (
    await runCommand('blkid', ['-p', '-o', 'value', '-s', 'TYPE', record.loop]).catch(
      (error: unknown) => {
        rethrowIfBug(error);
        return '';
      },
    )
  ).trim();
  if (type === '')
    throw new RewindError('REWIND_NOT_FOUND', `no filesystem found on ${describeRecord(record)}`, {
      hint: `${record.loop} is attached: rewind unmap ${unmapArgs(record)} detaches it`,
    });
  const options = record.readOnly ? readOnlyOptions(type) : null;
  await runCommand('mount', ['-t', type, ...(options ? ['-o', options] : []), record.loop, dir]);
  const updated = { ...record, mountpoint: dir, mountOptions: options };
  writeRecord(key, updated);
  const note = record.readOnly
    ? `a snapshot mounts read-only without replaying its journal (-o ${options}): what was only in the journal at that point is not shown; mount a clone to see the filesystem as it would recover`
    : undefined;
  return { record: updated, note };
}

/** Read-only, no journal replay: a snapshot's device is read-only, and a replay writes. */
function readOnlyOptions(type: string): string {
  switch (type) {
    case 'ext3':
    case 'ext4':
      return 'ro,noload';
    case 'xfs':
      return 'ro,norecovery';
    case 'btrfs':
      return 'ro,rescue=nologreplay';
    default:
      return 'ro';
  }
}

// ---- helpers ----

async function resolveTarget(
  api: MapApi,
  what: MapWhat,
): Promise<{ target: MapTarget; volume: string }> {
  if (what.production) {
    const volumes = await api.volumes();
    if (!volumes.includes(what.name))
      throw new RewindError('REWIND_NOT_FOUND', `no volume named "${what.name}"`, {
        hint: `the volumes are ${volumes.join(', ')}`,
      });
    return { target: { kind: 'production' }, volume: what.name };
  }
  const view = (await api.views()).find((v) => v.name === what.name);
  if (!view)
    throw new RewindError('REWIND_NOT_FOUND', `no snapshot or clone named "${what.name}"`, {
      hint: 'rewind ls lists them; rewind map --production VOLUME maps a production volume',
    });
  const volumes = view.exports.map((e) => e.slice(0, e.lastIndexOf('@')));
  const volume = what.volume ?? (volumes.length === 1 ? volumes[0] : undefined);
  if (volume === undefined || !volumes.includes(volume))
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      what.volume === undefined
        ? `${what.name} has several volumes: give one`
        : `${what.name} has no volume "${what.volume}"`,
      { hint: `its volumes are ${volumes.join(', ')}` },
    );
  return { target: { kind: 'view', view: view.name, viewKind: view.kind }, volume };
}

async function mappedRecord(api: MapApi, what: MapWhat): Promise<boolean> {
  return recordsOf(api.server).some(({ record }) => matches(record, what) && recordAlive(record));
}

function matches(record: MapRecord, what: MapWhat): boolean {
  if (what.production) return record.target.kind === 'production' && record.volume === what.name;
  return (
    record.target.kind === 'view' &&
    record.target.view === what.name &&
    (what.volume === undefined || record.volume === what.volume)
  );
}

function describeWhat(what: MapWhat): string {
  if (what.production) return `production volume ${what.name}`;
  return what.volume === undefined ? what.name : `${what.volume}@${what.name}`;
}

/** Refuses `action` on a mounted mapping, saying `why` it must not happen under a filesystem. */
function refuseIfMounted(record: MapRecord, action: { what: string; why: string }): void {
  const mounted = mountsOf(record.loop);
  if (mounted.length === 0) return;
  throw new RewindError(
    'REWIND_CONFLICT',
    `cannot ${action.what}: ${describeRecord(record)} is mounted at ${mounted.join(', ')} (${record.loop}); ${action.why}`,
    {
      hint: `rewind unmap ${unmapArgs(record)} (it unmounts first), then ${action.what}, then mount it again`,
    },
  );
}

function lockKey(key: string): FileLock {
  fs.mkdirSync(recordsDir(), { recursive: true, mode: 0o700 });
  return lockExclusive(path.join(recordsDir(), `${key}.lock`), {
    create: true,
    describe: `mapping ${key.split('+').slice(1).join(' ')}`,
    hint: 'another rewind map, unmap, mount or step is working on it; try again when it is done',
  });
}

async function withKeyLock<T>(key: string, work: () => Promise<T>): Promise<T> {
  const lock = lockKey(key);
  try {
    return await work();
  } finally {
    lock.release();
  }
}

function isMountPoint(dir: string): boolean {
  return (
    fs.existsSync('/proc/self/mountinfo') &&
    fs
      .readFileSync('/proc/self/mountinfo', 'utf8')
      .split('\n')
      .some((line) => unescapeMountField(line.split(' ')[4] ?? '') === dir)
  );
}

/** A clean-up after a failure failed too: the first failure is what the operator needs. */
function logCleanup(error: unknown): void {
  rethrowIfBug(error);
  process.stderr.write(`rewind: cleaning up failed too: ${errorMessage(error)}\n`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
