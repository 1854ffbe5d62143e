// An in-memory simulated file system for the deterministic simulation (dst.ts). It replaces the
// functions the product uses on the `node:fs` and `node:fs/promises` module objects (as mock-fs
// does) for paths under the simulated disks' prefixes and for the fds it issued; everything else
// goes to the real functions, so the runtime and libraries keep the real file system.
//
// The model (what a real disk and an ext4-like file system do on power loss):
// - Content. Every file (inode) has `cached` content (what reads see: the page cache) and
//   `durable` content (what is on the platters), plus the ordered list of content operations
//   (write at offset, truncate) made since its last successful fsync/fdatasync. fsync applies
//   that list to `durable` and clears it. On power loss the list is replayed on `durable` where
//   each 512-byte sector of a write survives independently with probability 1/2 (torn writes) and
//   each truncate with probability 1/2; the result becomes both durable and cached content.
//   A lost sector at the end of an extending write leaves the file shorter; a lost one inside it
//   leaves a hole (zeroes) or the old bytes.
// - fsync EIO (Linux semantics): the pending operations are dropped from the durable path; the
//   cache keeps them, so reads still see them, but no later fsync will ever persist them. On the
//   disks named in `Faults.fsyncEioEvicts` the cache drops them too, as when the kernel evicts
//   those (now clean) pages right after the error: reads see the durable bytes again.
// - Metadata. Each disk has an ordered journal of directory operations (create, mkdir, unlink,
//   rename, each atomic). Calls see the cached tree. fsync of a DIRECTORY fd commits the whole
//   journal (a prefix, ext4's ordered commit). fsync of a regular file commits nothing (POSIX only
//   promises its data). On power loss a uniformly random prefix of the uncommitted journal survives,
//   and the tree is rebuilt from it: a rename that did not survive leaves the file at its old name,
//   a file whose create did not survive is gone.
// - Processes. Each call belongs to `hooks.caller()`. A dead process's sync calls throw SimCrashed;
//   its async calls never complete. Async calls take effect when they complete (after a seeded
//   latency), and not at all if the issuing process died meanwhile. fds belong to the process that
//   opened them: a kill -9 closes them (the page cache survives), a power loss closes every fd on
//   the disk.
// - Space: the sum of the cached sizes of the files on a disk (holes count) may not exceed its
//   capacity: a write or truncate that would is refused whole with ENOSPC.
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import path from 'node:path';

export interface SimProcess {
  readonly name: string;
  alive: boolean;
}

/** Thrown by sync calls made by a dead process (its leftover code is still running). */
export class SimCrashed extends Error {
  constructor(message = 'the simulated process is dead') {
    super(message);
    this.name = 'SimCrashed';
  }
}

export interface SimFsHooks {
  /** Seeded uniform random in [0, 1). All randomness must come from here (determinism). */
  random(): number;
  /** The simulated process making the current call (the driver tracks it with AsyncLocalStorage). */
  caller(): SimProcess;
  /** Runs fn after delayMs of simulated time, in the caller's context (the driver implements it). */
  schedule(delayMs: number, fn: () => void): void;
  /**
   * Called after each call of `proc` took effect (or failed), before the caller sees the result:
   * the driver may crash `proc` here, which is a crash right after that step.
   */
  afterOp?(proc: SimProcess): void;
}

export interface DiskSpec {
  prefix: string;
  capacityBytes: number;
}

/** Probabilities per call (0..1) and the latency bound of async calls. */
export interface Faults {
  readEio: number;
  writeEio: number;
  fsyncEio: number;
  maxLatencyMs: number;
  /** Prefixes of the disks whose cache also loses the writes an fsync EIO dropped (see above). */
  fsyncEioEvicts?: readonly string[];
}

const FD_BASE = 1_000_000;
const SECTOR = 512;
/** Content is stored sparsely in chunks of this size (absent chunk = zeroes). */
const CHUNK = 64 * 1024;
const { O_RDONLY, O_WRONLY, O_RDWR, O_CREAT, O_EXCL, O_TRUNC, O_APPEND, O_DIRECT } = fs.constants;
/** Direct I/O's unit on the simulated disks (a logical sector). */
const DIRECT_ALIGN_BYTES = 512;

const FLAGS: Readonly<Record<string, number>> = {
  r: O_RDONLY,
  rs: O_RDONLY,
  'r+': O_RDWR,
  'rs+': O_RDWR,
  w: O_TRUNC | O_CREAT | O_WRONLY,
  wx: O_TRUNC | O_CREAT | O_WRONLY | O_EXCL,
  'w+': O_TRUNC | O_CREAT | O_RDWR,
  'wx+': O_TRUNC | O_CREAT | O_RDWR | O_EXCL,
  a: O_APPEND | O_CREAT | O_WRONLY,
  ax: O_APPEND | O_CREAT | O_WRONLY | O_EXCL,
  as: O_APPEND | O_CREAT | O_WRONLY,
  'a+': O_APPEND | O_CREAT | O_RDWR,
  'ax+': O_APPEND | O_CREAT | O_RDWR | O_EXCL,
  'as+': O_APPEND | O_CREAT | O_RDWR,
};

const ERRNO = {
  ENOENT: [-2, 'no such file or directory'],
  EIO: [-5, 'i/o error'],
  EBADF: [-9, 'bad file descriptor'],
  EBUSY: [-16, 'resource busy or locked'],
  EEXIST: [-17, 'file already exists'],
  EXDEV: [-18, 'cross-device link not permitted'],
  ENOTDIR: [-20, 'not a directory'],
  EISDIR: [-21, 'illegal operation on a directory'],
  EINVAL: [-22, 'invalid argument'],
  ENOSPC: [-28, 'no space left on device'],
  ENOTEMPTY: [-39, 'directory not empty'],
} as const;
type Code = keyof typeof ERRNO;

/** An error shaped like Node's: `ENOENT: no such file or directory, open '/sim/x'`. */
function fsError(code: Code, syscall: string, file?: string, dest?: string): NodeJS.ErrnoException {
  const [errno, description] = ERRNO[code];
  let message = `${code}: ${description}, ${syscall}`;
  if (file !== undefined) message += ` '${file}'`;
  if (dest !== undefined) message += ` -> '${dest}'`;
  const error: NodeJS.ErrnoException = new Error(message);
  Object.assign(
    error,
    { errno, code, syscall },
    file === undefined ? {} : { path: file },
    dest === undefined ? {} : { dest },
  );
  return error;
}

/** What Node's rm throws for a directory without `recursive`. */
function rmIsDirectory(file: string): Error {
  const error = new Error(`Path is a directory: rm returned EISDIR (is a directory) ${file}`);
  const info = { code: 'EISDIR', message: 'is a directory', path: file, syscall: 'rm', errno: 21 };
  return Object.assign(error, {
    name: 'SystemError',
    code: 'ERR_FS_EISDIR',
    info,
    errno: 21,
    syscall: 'rm',
    path: file,
  });
}

/** Sparse byte content: `size` bytes, chunks that were never written read as zeroes. */
class Content {
  size = 0;
  private chunks = new Map<number, Buffer>();

  /** Copies up to `length` bytes at `position` into `target`; returns the count (0 past EOF). */
  read(position: number, target: Buffer, targetOffset: number, length: number): number {
    const n = Math.max(0, Math.min(length, this.size - position));
    for (let done = 0; done < n;) {
      const at = position + done;
      const within = at % CHUNK;
      const step = Math.min(n - done, CHUNK - within);
      const chunk = this.chunks.get(Math.floor(at / CHUNK));
      if (chunk) chunk.copy(target, targetOffset + done, within, within + step);
      else target.fill(0, targetOffset + done, targetOffset + done + step);
      done += step;
    }
    return n;
  }

  write(position: number, data: Buffer): void {
    if (data.length === 0) return;
    for (let done = 0; done < data.length;) {
      const at = position + done;
      const index = Math.floor(at / CHUNK);
      const within = at % CHUNK;
      const step = Math.min(data.length - done, CHUNK - within);
      let chunk = this.chunks.get(index);
      if (!chunk) this.chunks.set(index, (chunk = Buffer.alloc(CHUNK)));
      data.copy(chunk, within, done, done + step);
      done += step;
    }
    this.size = Math.max(this.size, position + data.length);
  }

  /** Invariant kept here: bytes past `size` in a stored chunk are zero, so growing exposes zeroes. */
  truncate(size: number): void {
    if (size < this.size) {
      for (const index of [...this.chunks.keys()])
        if (index * CHUNK >= size) this.chunks.delete(index);
      this.chunks.get(Math.floor(size / CHUNK))?.fill(0, size % CHUNK);
    }
    this.size = size;
  }

  clone(): Content {
    const copy = new Content();
    copy.size = this.size;
    for (const [index, chunk] of this.chunks) copy.chunks.set(index, Buffer.from(chunk));
    return copy;
  }

  bytes(): Buffer {
    const out = Buffer.alloc(this.size);
    this.read(0, out, 0, this.size);
    return out;
  }
}

type ContentOp =
  { kind: 'write'; position: number; data: Buffer } | { kind: 'truncate'; size: number };
/** Journal entries; paths are relative to the disk prefix ('' is its root, '/a/b' below it). */
type MetaOp =
  | { kind: 'create' | 'mkdir'; path: string; ino: number }
  | { kind: 'unlink'; path: string }
  | { kind: 'rename'; from: string; to: string; dir: boolean };

function applyContent(content: Content, op: ContentOp): void {
  if (op.kind === 'write') content.write(op.position, op.data);
  else content.truncate(op.size);
}

/** Applies a journal entry to a tree (path → ino); returns the inode it unlinked or replaced. */
function applyMeta(tree: Map<string, number>, op: MetaOp): number | undefined {
  switch (op.kind) {
    case 'create':
    case 'mkdir':
      tree.set(op.path, op.ino);
      return undefined;
    case 'unlink': {
      const ino = tree.get(op.path);
      tree.delete(op.path);
      return ino;
    }
    case 'rename': {
      const replaced = tree.get(op.to); // a file, or an empty directory (checked when issued)
      const moves: [string, number][] = [];
      for (const [key, ino] of op.dir ? tree : [[op.from, tree.get(op.from)] as const]) {
        if (ino !== undefined && (key === op.from || key.startsWith(`${op.from}/`)))
          moves.push([key, ino]);
      }
      for (const [key] of moves) tree.delete(key);
      tree.delete(op.to);
      for (const [key, ino] of moves) tree.set(op.to + key.slice(op.from.length), ino);
      return replaced;
    }
  }
}

interface Inode {
  readonly ino: number;
  readonly dir: boolean;
  cached: Content;
  durable: Content;
  /** Content operations since the last successful fsync, in order. */
  pending: ContentOp[];
  mtimeMs: number;
  /** In the cached tree. Space is charged while linked or open (as on a real disk). */
  linked: boolean;
  openCount: number;
}

interface Disk {
  readonly index: number;
  readonly prefix: string;
  readonly capacity: number;
  readonly inodes: Map<number, Inode>;
  /** What calls see. */
  tree: Map<string, number>;
  /** What survives a power loss for sure: `tree` = `durableTree` + `journal`. */
  durableTree: Map<string, number>;
  journal: MetaOp[];
  used: number;
  /** Bumped by each power loss: async calls issued before it fail with EIO. */
  epoch: number;
}

interface OpenFile {
  readonly disk: Disk;
  readonly inode: Inode;
  readonly owner: SimProcess;
  readonly readable: boolean;
  readonly writable: boolean;
  readonly append: boolean;
  /** Opened with O_DIRECT: every write must start and end on a 512-byte sector (else EINVAL). */
  readonly direct: boolean;
  position: number;
}

type Encoding = BufferEncoding | { encoding?: BufferEncoding | null } | null | undefined;
function decode(data: Buffer, options: Encoding): Buffer | string {
  const encoding = typeof options === 'string' ? options : options?.encoding;
  return encoding ? data.toString(encoding) : data;
}

/** A view (no copy) of a Buffer, typed array or string argument. */
function asBuffer(data: unknown, encoding?: unknown): Buffer {
  if (typeof data === 'string')
    return Buffer.from(data, typeof encoding === 'string' ? (encoding as BufferEncoding) : 'utf8');
  if (ArrayBuffer.isView(data)) return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('The "buffer" argument must be a Buffer, TypedArray, DataView or string');
}

/** null for "the fd's current position", as Node treats null, undefined and -1. */
function positionOf(position: unknown): number | null {
  if (typeof position === 'bigint') return Number(position);
  return typeof position === 'number' && position >= 0 ? position : null;
}

/** Node's (buffer, offset?, length?, position?) or (string, position?, encoding?) write forms. */
function writeArgs(
  buffer: unknown,
  a: unknown,
  b: unknown,
  c: unknown,
): { data: Buffer; position: unknown } {
  if (typeof buffer === 'string') return { data: asBuffer(buffer, b), position: a };
  const view = asBuffer(buffer);
  if (a !== null && typeof a === 'object') {
    const o = a as { offset?: number; length?: number; position?: unknown };
    return {
      data: view.subarray(
        o.offset ?? 0,
        (o.offset ?? 0) + (o.length ?? view.length - (o.offset ?? 0)),
      ),
      position: o.position,
    };
  }
  const offset = typeof a === 'number' ? a : 0;
  const length = typeof b === 'number' ? b : view.length - offset;
  if (offset < 0 || length < 0 || offset + length > view.length)
    throw new RangeError(`write of ${length} bytes at ${offset} is outside the buffer`);
  return { data: view.subarray(offset, offset + length), position: c };
}

/** Splits a callback API's arguments into (the arguments before the callback, the callback). */
function splitCallback(args: unknown[]): [unknown[], (...result: unknown[]) => void] {
  const callback = args[args.length - 1];
  if (typeof callback !== 'function')
    throw new TypeError('The "cb" argument must be of type function');
  return [args.slice(0, -1), callback as (...result: unknown[]) => void];
}

type Route = 'path' | 'fd' | 'either' | 'two-paths';
type Impl = (...args: any[]) => unknown; // eslint-disable-line @typescript-eslint/no-explicit-any

export class SimFs {
  private readonly disks: Disk[];
  private faults: Faults;
  private readonly fds = new Map<number, OpenFile>();
  private nextFd = FD_BASE;
  private nextIno = 1000;
  private readonly counters = { injectedEio: 0, injectedEnospc: 0, ops: 0 };
  private saved: { target: Record<string, unknown>; name: string; original: unknown }[] | undefined;
  /** The process whose call is running now (it owns the fds that call opens). */
  private acting: SimProcess | undefined;

  constructor(
    private readonly hooks: SimFsHooks,
    disks: DiskSpec[],
    faults: Faults = { readEio: 0, writeEio: 0, fsyncEio: 0, maxLatencyMs: 0 },
  ) {
    this.faults = { ...faults };
    this.disks = disks.map((spec, index) => {
      const prefix = path.posix.normalize(spec.prefix).replace(/\/+$/, '');
      const disk: Disk = {
        index,
        prefix,
        capacity: spec.capacityBytes,
        inodes: new Map(),
        tree: new Map(),
        durableTree: new Map(),
        journal: [],
        used: 0,
        epoch: 0,
      };
      const root = this.newInode(disk, true);
      disk.tree.set('', root.ino);
      disk.durableTree.set('', root.ino);
      return disk;
    });
    // Longest prefix first, so nested prefixes resolve to the innermost disk.
    this.disks.sort((x, y) => y.prefix.length - x.prefix.length);
  }

  /** Grows (or shrinks) the disk holding `prefix`, as an operator adding space would. */
  setCapacity(prefix: string, capacityBytes: number): void {
    const disk = this.disks.find((d) => d.prefix === prefix);
    if (!disk) throw new Error(`no simulated disk at ${prefix}`);
    (disk as { capacity: number }).capacity = capacityBytes;
  }

  setFaults(faults: Faults): void {
    this.faults = { ...faults };
  }

  // ---- driver API ----

  install(): void {
    if (this.saved) throw new Error('SimFs is already installed');
    const saved: NonNullable<SimFs['saved']> = [];
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the wrapper needs fs's `this` and the simulator
    const sim = this;
    for (const [where, name, route, impl] of this.table()) {
      const target = (where === 'fs' ? fs : fs.promises) as unknown as Record<string, unknown>;
      const original = target[name] as Impl;
      const wrapper = function (this: unknown, ...args: unknown[]): unknown {
        return sim.owns(route, args) ? impl.apply(sim, args) : original.apply(this, args);
      };
      // Keep util.promisify.custom and friends, and realpathSync.native.
      for (const key of Reflect.ownKeys(original)) {
        if (typeof key === 'symbol' || key === 'native')
          Object.defineProperty(
            wrapper,
            key,
            Object.getOwnPropertyDescriptor(original, key) as PropertyDescriptor,
          );
      }
      saved.push({ target, name, original });
      target[name] = wrapper;
    }
    this.saved = saved;
    syncBuiltinESMExports();
  }

  uninstall(): void {
    for (const { target, name, original } of (this.saved ?? []).reverse()) target[name] = original;
    this.saved = undefined;
    syncBuiltinESMExports();
  }

  /** kill -9 of `proc`: its fds are closed; nothing written is lost (page cache survives). */
  processCrash(proc: SimProcess): void {
    proc.alive = false;
    for (const [fd, file] of this.fds) if (file.owner === proc) this.closeFile(fd, file);
  }

  /** Power loss of the disk holding `prefix` (see the header). Closes every fd on it. */
  powerLoss(prefix: string): {
    filesTouched: number;
    sectorsLost: number;
    metadataOpsLost: number;
  } {
    const found = this.locate(prefix);
    if (!found) throw new Error(`no simulated disk holds ${prefix}`);
    const disk = found.disk;
    for (const [fd, file] of this.fds) if (file.disk === disk) this.fds.delete(fd);
    // Metadata: a random prefix of the uncommitted journal survives.
    const n = disk.journal.length;
    const keep = Math.min(n, Math.floor(this.hooks.random() * (n + 1)));
    for (const op of disk.journal.slice(0, keep)) applyMeta(disk.durableTree, op);
    disk.journal = [];
    disk.tree = new Map(disk.durableTree);
    // Content: replay each surviving file's pending operations, torn, over its durable content.
    const live = new Set(disk.tree.values());
    let filesTouched = 0;
    let sectorsLost = 0;
    disk.used = 0;
    for (const inode of [...disk.inodes.values()]) {
      if (!live.has(inode.ino)) {
        disk.inodes.delete(inode.ino);
        continue;
      }
      inode.linked = true;
      inode.openCount = 0;
      if (inode.pending.length > 0) {
        filesTouched += 1;
        for (const op of inode.pending) sectorsLost += this.replayTorn(inode.durable, op);
        inode.pending = [];
      }
      inode.cached = inode.durable.clone(); // also drops what an fsync EIO left only in the cache
      disk.used += inode.cached.size;
    }
    disk.epoch += 1;
    return { filesTouched, sectorsLost, metadataOpsLost: n - keep };
  }

  /** Test/driver access: current (cached) bytes of a file, or undefined if no such file. */
  peek(file: string): Buffer | undefined {
    const found = this.locate(file);
    const ino = found?.disk.tree.get(found.rel);
    const inode = ino === undefined ? undefined : found?.disk.inodes.get(ino);
    return inode && !inode.dir ? inode.cached.bytes() : undefined;
  }

  stats(): { injectedEio: number; injectedEnospc: number; ops: number } {
    return { ...this.counters };
  }

  // ---- routing ----

  /** The disk and the path relative to its prefix of an absolute sim path, else undefined. */
  private locate(file: unknown): { disk: Disk; rel: string } | undefined {
    if (typeof file !== 'string' || !file.startsWith('/')) return undefined;
    const p = path.posix.normalize(file).replace(/(.)\/+$/, '$1');
    for (const disk of this.disks) {
      if (p === disk.prefix || p.startsWith(`${disk.prefix}/`))
        return { disk, rel: p.slice(disk.prefix.length) };
    }
    return undefined;
  }

  private isSimFd(fd: unknown): boolean {
    return typeof fd === 'number' && fd >= FD_BASE && fd < this.nextFd;
  }

  private owns(route: Route, args: unknown[]): boolean {
    switch (route) {
      case 'path':
        return this.locate(args[0]) !== undefined;
      case 'fd':
        return this.isSimFd(args[0]);
      case 'either':
        return typeof args[0] === 'number'
          ? this.isSimFd(args[0])
          : this.locate(args[0]) !== undefined;
      case 'two-paths':
        return this.locate(args[0]) !== undefined || this.locate(args[1]) !== undefined;
    }
  }

  /** A sync call: refused with SimCrashed when the caller is dead. */
  private sync<T>(fn: () => T): T {
    const proc = this.hooks.caller();
    if (!proc.alive) throw new SimCrashed(`${proc.name} is dead`);
    this.counters.ops += 1;
    try {
      return this.as(proc, fn);
    } finally {
      this.hooks.afterOp?.(proc);
    }
  }

  private as<T>(proc: SimProcess, fn: () => T): T {
    const previous = this.acting;
    this.acting = proc;
    try {
      return fn();
    } finally {
      this.acting = previous;
    }
  }

  /**
   * An async call: `fn` runs (takes effect) when the call completes, after a seeded latency, as the
   * issuing process; nothing happens at all if that process is dead at issue or at completion.
   */
  private later<T>(
    disk: Disk | undefined,
    fn: () => T,
    settle: (error: unknown, value?: T) => void,
  ): void {
    const proc = this.hooks.caller();
    if (!proc.alive) return;
    const epoch = disk?.epoch;
    const delay = Math.floor(this.hooks.random() * (this.faults.maxLatencyMs + 1));
    this.hooks.schedule(delay, () => {
      if (!proc.alive) return;
      this.counters.ops += 1;
      let value: T;
      try {
        if (disk && disk.epoch !== epoch) throw fsError('EIO', 'io'); // the disk lost power meanwhile
        value = this.as(proc, fn);
      } catch (error) {
        this.hooks.afterOp?.(proc);
        if (proc.alive) settle(error);
        return;
      }
      this.hooks.afterOp?.(proc);
      if (proc.alive) settle(null, value);
    });
  }

  private promise<T>(disk: Disk | undefined, fn: () => T): Promise<T> {
    return new Promise<T>((resolve, reject) =>
      this.later(disk, fn, (error, value) =>
        error ? reject(error as Error) : resolve(value as T),
      ),
    );
  }

  private callback(
    disk: Disk | undefined,
    args: unknown[],
    fn: (rest: unknown[]) => unknown[],
  ): void {
    const [rest, cb] = splitCallback(args);
    this.later(
      disk,
      () => fn(rest),
      (error, result) => (error ? cb(error) : cb(null, ...(result ?? []))),
    );
  }

  private diskOfFd(fd: unknown): Disk | undefined {
    return typeof fd === 'number' ? this.fds.get(fd)?.disk : undefined;
  }

  private fault(kind: 'readEio' | 'writeEio' | 'fsyncEio'): boolean {
    const p = this.faults[kind];
    if (p > 0 && this.hooks.random() < p) {
      this.counters.injectedEio += 1;
      return true;
    }
    return false;
  }

  // ---- the replaced functions: [module, name, how to tell a sim call, implementation] ----

  private table(): [where: 'fs' | 'promises', name: string, route: Route, impl: Impl][] {
    const fdOf = (args: unknown[]): Disk | undefined => this.diskOfFd(args[0]);
    const diskOf = (file: unknown): Disk | undefined => this.locate(file)?.disk;
    return [
      [
        'fs',
        'openSync',
        'path',
        (file: string, flags?: string | number) => this.sync(() => this.open(file, flags, 'open')),
      ],
      ['fs', 'closeSync', 'fd', (fd: number) => this.sync(() => this.close(fd))],
      [
        'fs',
        'existsSync',
        'path',
        (file: string) => this.sync(() => this.lookup(file) !== undefined),
      ],
      [
        'fs',
        'writeSync',
        'fd',
        (fd: number, buffer: unknown, a?: unknown, b?: unknown, c?: unknown) =>
          this.sync(() => {
            const { data, position } = writeArgs(buffer, a, b, c);
            return this.write(fd, [data], position, 'write');
          }),
      ],
      [
        'fs',
        'readSync',
        'fd',
        (fd: number, buffer: Buffer, a?: unknown, length?: number, position?: unknown) =>
          this.sync(() => {
            const o = (
              a !== null && typeof a === 'object' ? a : { offset: a, length, position }
            ) as { offset?: number; length?: number; position?: unknown };
            return this.read(
              fd,
              asBuffer(buffer),
              o.offset ?? 0,
              o.length ?? buffer.byteLength - (o.offset ?? 0),
              o.position,
            );
          }),
      ],
      [
        'fs',
        'writevSync',
        'fd',
        (fd: number, buffers: unknown[], position?: unknown) =>
          this.sync(() =>
            this.write(
              fd,
              buffers.map((b) => asBuffer(b)),
              position,
              'writev',
            ),
          ),
      ],
      [
        'fs',
        'ftruncateSync',
        'fd',
        (fd: number, len?: number) => this.sync(() => this.truncate(fd, len ?? 0)),
      ],
      [
        'fs',
        'fstatSync',
        'fd',
        (fd: number) => this.sync(() => this.statOf(this.file(fd, 'fstat'))),
      ],
      [
        'fs',
        'statSync',
        'path',
        (file: string, options?: { throwIfNoEntry?: boolean }) =>
          this.sync(() => {
            try {
              return this.stat(file);
            } catch (error) {
              const code = (error as NodeJS.ErrnoException).code;
              if (options?.throwIfNoEntry === false && (code === 'ENOENT' || code === 'ENOTDIR'))
                return undefined;
              throw error;
            }
          }),
      ],
      [
        'fs',
        'mkdirSync',
        'path',
        (file: string, options?: unknown) => this.sync(() => this.mkdir(file, options)),
      ],
      [
        'fs',
        'rmSync',
        'path',
        (file: string, options?: { force?: boolean; recursive?: boolean }) =>
          this.sync(() => this.rm(file, options)),
      ],
      [
        'fs',
        'readFileSync',
        'either',
        (target: string | number, options?: Encoding) =>
          this.sync(() => decode(this.readFile(target), options)),
      ],
      [
        'fs',
        'writeFileSync',
        'either',
        (target: string | number, data: unknown, options?: Encoding) =>
          this.sync(() => this.writeFile(target, data, options)),
      ],
      ['fs', 'fsyncSync', 'fd', (fd: number) => this.sync(() => this.fsync(fd, 'fsync'))],
      ['fs', 'fdatasyncSync', 'fd', (fd: number) => this.sync(() => this.fsync(fd, 'fdatasync'))],
      [
        'fs',
        'realpathSync',
        'path',
        (file: string) => this.sync(() => (this.require(file, 'lstat'), file)),
      ],
      [
        'fs',
        'chmodSync',
        'path',
        (file: string) => this.sync(() => void this.require(file, 'chmod')),
      ],
      ['fs', 'readdirSync', 'path', (file: string) => this.sync(() => this.readdir(file))],
      [
        'fs',
        'renameSync',
        'two-paths',
        (from: string, to: string) => this.sync(() => this.rename(from, to)),
      ],
      [
        'fs',
        'read',
        'fd',
        (...args: unknown[]) =>
          this.callback(fdOf(args), args, ([fd, buffer, offset, length, position]) => {
            const view = asBuffer(buffer);
            const at = typeof offset === 'number' ? offset : 0;
            return [
              this.read(
                fd as number,
                view,
                at,
                typeof length === 'number' ? length : view.length - at,
                position,
              ),
              buffer,
            ];
          }),
      ],
      [
        'fs',
        'write',
        'fd',
        (...args: unknown[]) =>
          this.callback(fdOf(args), args, ([fd, buffer, a, b, c]) => {
            const { data, position } = writeArgs(buffer, a, b, c);
            return [this.write(fd as number, [data], position, 'write'), buffer];
          }),
      ],
      [
        'fs',
        'writev',
        'fd',
        (...args: unknown[]) =>
          this.callback(fdOf(args), args, ([fd, buffers, position]) => [
            this.write(
              fd as number,
              (buffers as unknown[]).map((b) => asBuffer(b)),
              position,
              'writev',
            ),
            buffers,
          ]),
      ],
      [
        'fs',
        'fdatasync',
        'fd',
        (...args: unknown[]) =>
          this.callback(fdOf(args), args, ([fd]) => (this.fsync(fd as number, 'fdatasync'), [])),
      ],
      [
        'fs',
        'fsync',
        'fd',
        (...args: unknown[]) =>
          this.callback(fdOf(args), args, ([fd]) => (this.fsync(fd as number, 'fsync'), [])),
      ],
      [
        'promises',
        'open',
        'path',
        (file: string, flags?: string | number) =>
          this.promise(diskOf(file), () => this.handle(this.open(file, flags, 'open'))),
      ],
      [
        'promises',
        'readFile',
        'path',
        (file: string, options?: Encoding) =>
          this.promise(diskOf(file), () => decode(this.readFile(file), options)),
      ],
      [
        'promises',
        'writeFile',
        'path',
        (file: string, data: unknown, options?: Encoding) =>
          this.promise(diskOf(file), () => this.writeFile(file, data, options)),
      ],
      [
        'promises',
        'rm',
        'path',
        (file: string, options?: { force?: boolean; recursive?: boolean }) =>
          this.promise(diskOf(file), () => this.rm(file, options)),
      ],
      [
        'promises',
        'rename',
        'two-paths',
        (from: string, to: string) =>
          this.promise(diskOf(from) ?? diskOf(to), () => this.rename(from, to)),
      ],
      [
        'promises',
        'readdir',
        'path',
        (file: string) => this.promise(diskOf(file), () => this.readdir(file)),
      ],
      [
        'promises',
        'mkdir',
        'path',
        (file: string, options?: unknown) =>
          this.promise(diskOf(file), () => this.mkdir(file, options)),
      ],
      [
        'promises',
        'stat',
        'path',
        (file: string) => this.promise(diskOf(file), () => this.stat(file)),
      ],
      [
        'promises',
        'unlink',
        'path',
        (file: string) => this.promise(diskOf(file), () => this.unlink(file)),
      ],
      [
        'promises',
        'access',
        'path',
        (file: string) => this.promise(diskOf(file), () => void this.require(file, 'access')),
      ],
    ];
  }

  /** A FileHandle-like object over a sim fd; every method is an async call. */
  private handle(fd: number): object {
    const disk = this.diskOfFd(fd);
    const handle = {
      fd,
      read: (buffer?: Buffer, offset = 0, length?: number, position?: unknown) =>
        this.promise(disk, () => {
          const target = buffer ?? Buffer.alloc(16384);
          return {
            bytesRead: this.read(
              handle.fd,
              asBuffer(target),
              offset,
              length ?? target.byteLength - offset,
              position,
            ),
            buffer: target,
          };
        }),
      write: (buffer: unknown, a?: unknown, b?: unknown, c?: unknown) =>
        this.promise(disk, () => {
          const { data, position } = writeArgs(buffer, a, b, c);
          return { bytesWritten: this.write(handle.fd, [data], position, 'write'), buffer };
        }),
      writev: (buffers: unknown[], position?: unknown) =>
        this.promise(disk, () => ({
          bytesWritten: this.write(
            handle.fd,
            buffers.map((b) => asBuffer(b)),
            position,
            'writev',
          ),
          buffers,
        })),
      // Like Node's: from the current position, not truncating.
      writeFile: (data: unknown, options?: Encoding) =>
        this.promise(
          disk,
          () =>
            void this.write(
              handle.fd,
              [asBuffer(data, typeof options === 'string' ? options : options?.encoding)],
              null,
              'write',
            ),
        ),
      readFile: (options?: Encoding) =>
        this.promise(disk, () => decode(this.readFile(handle.fd), options)),
      datasync: () => this.promise(disk, () => this.fsync(handle.fd, 'fdatasync')),
      sync: () => this.promise(disk, () => this.fsync(handle.fd, 'fsync')),
      stat: () => this.promise(disk, () => this.statOf(this.file(handle.fd, 'fstat'))),
      truncate: (len = 0) => this.promise(disk, () => this.truncate(handle.fd, len)),
      close: () =>
        this.promise(disk, () => {
          this.close(handle.fd);
          handle.fd = -1;
        }),
    };
    return handle;
  }

  // ---- the operations, run when a sync call is made or an async one completes ----

  private newInode(disk: Disk, dir: boolean): Inode {
    const inode: Inode = {
      ino: this.nextIno++,
      dir,
      cached: new Content(),
      durable: new Content(),
      pending: [],
      mtimeMs: Date.now(),
      linked: true,
      openCount: 0,
    };
    disk.inodes.set(inode.ino, inode);
    return inode;
  }

  private lookup(file: string): { disk: Disk; rel: string; inode: Inode } | undefined {
    const found = this.locate(file);
    const ino = found?.disk.tree.get(found.rel);
    const inode = ino === undefined ? undefined : found?.disk.inodes.get(ino);
    return found && inode ? { ...found, inode } : undefined;
  }

  /** The inode at `file`, or ENOENT (ENOTDIR when an ancestor is a file). */
  private require(
    file: string,
    syscall: string,
    dest?: string,
  ): { disk: Disk; rel: string; inode: Inode } {
    const found = this.lookup(file);
    if (found) return found;
    const { disk, rel } = this.locate(file) as { disk: Disk; rel: string };
    throw this.missing(disk, rel, syscall, file, dest);
  }

  private missing(
    disk: Disk,
    rel: string,
    syscall: string,
    file: string,
    dest?: string,
  ): NodeJS.ErrnoException {
    for (let at = rel.indexOf('/', 1); at > 0; at = rel.indexOf('/', at + 1)) {
      const ino = disk.tree.get(rel.slice(0, at));
      if (ino !== undefined && !disk.inodes.get(ino)?.dir)
        return fsError('ENOTDIR', syscall, file, dest);
    }
    return fsError('ENOENT', syscall, file, dest);
  }

  /** Checks that the parent directory of `rel` exists (for creating `rel`). */
  private requireParent(
    disk: Disk,
    rel: string,
    syscall: string,
    file: string,
    dest?: string,
  ): void {
    const parent = rel.slice(0, rel.lastIndexOf('/'));
    const ino = disk.tree.get(parent);
    if (ino === undefined) throw this.missing(disk, parent, syscall, file, dest);
    if (!disk.inodes.get(ino)?.dir) throw fsError('ENOTDIR', syscall, file, dest);
  }

  /** Records a directory operation in the journal and applies it to the cached tree. */
  private meta(disk: Disk, op: MetaOp): void {
    disk.journal.push(op);
    const removed = applyMeta(disk.tree, op);
    const inode = removed === undefined ? undefined : disk.inodes.get(removed);
    if (inode) {
      inode.linked = false;
      if (inode.openCount === 0) disk.used -= inode.cached.size;
    }
  }

  /** Applies a content operation to the cache and queues it for the durable path; ENOSPC first. */
  private content(disk: Disk, inode: Inode, op: ContentOp, syscall: string): void {
    const size =
      op.kind === 'write' ? Math.max(inode.cached.size, op.position + op.data.length) : op.size;
    const growth = size - inode.cached.size;
    if (growth > 0 && disk.used + growth > disk.capacity) {
      this.counters.injectedEnospc += 1;
      throw fsError('ENOSPC', syscall);
    }
    applyContent(inode.cached, op);
    inode.pending.push(op);
    disk.used += growth;
    inode.mtimeMs = Date.now();
  }

  /** The inode `file` names after open(2) with `flags` (creating or truncating it). */
  private openInode(file: string, flags: number, syscall: string): { disk: Disk; inode: Inode } {
    const { disk, rel } = this.locate(file) as { disk: Disk; rel: string };
    const writable = (flags & 3) !== O_RDONLY;
    const ino = disk.tree.get(rel);
    if (ino === undefined) {
      if (!(flags & O_CREAT)) throw this.missing(disk, rel, syscall, file);
      this.requireParent(disk, rel, syscall, file);
      const inode = this.newInode(disk, false);
      this.meta(disk, { kind: 'create', path: rel, ino: inode.ino });
      return { disk, inode };
    }
    const inode = disk.inodes.get(ino) as Inode;
    if (flags & O_CREAT && flags & O_EXCL) throw fsError('EEXIST', syscall, file);
    if (inode.dir && writable) throw fsError('EISDIR', syscall, file);
    if (flags & O_TRUNC && writable && !inode.dir)
      this.content(disk, inode, { kind: 'truncate', size: 0 }, syscall);
    return { disk, inode };
  }

  private open(file: string, flags: string | number | undefined, syscall: string): number {
    const bits = typeof flags === 'number' ? flags : FLAGS[flags ?? 'r'];
    if (bits === undefined)
      throw Object.assign(
        new TypeError(`The value "${String(flags)}" is invalid for option "flags"`),
        { code: 'ERR_INVALID_ARG_VALUE' },
      );
    const { disk, inode } = this.openInode(file, bits, syscall);
    const fd = this.nextFd++;
    const mode = bits & 3;
    inode.openCount += 1;
    this.fds.set(fd, {
      disk,
      inode,
      owner: this.acting ?? this.hooks.caller(),
      readable: mode !== O_WRONLY,
      writable: mode !== O_RDONLY,
      append: (bits & O_APPEND) !== 0,
      direct: (bits & O_DIRECT) !== 0,
      position: 0,
    });
    return fd;
  }

  private file(fd: number, syscall: string): OpenFile {
    const file = this.fds.get(fd);
    if (!file) throw fsError('EBADF', syscall);
    return file;
  }

  private closeFile(fd: number, file: OpenFile): void {
    this.fds.delete(fd);
    file.inode.openCount -= 1;
    if (file.inode.openCount === 0 && !file.inode.linked) file.disk.used -= file.inode.cached.size; // space of an unlinked file
  }

  private close(fd: number): void {
    this.closeFile(fd, this.file(fd, 'close'));
  }

  private read(
    fd: number,
    target: Buffer,
    offset: number,
    length: number,
    position: unknown,
  ): number {
    const file = this.file(fd, 'read');
    if (!file.readable) throw fsError('EBADF', 'read');
    if (file.inode.dir) throw fsError('EISDIR', 'read');
    if (offset < 0 || length < 0 || offset + length > target.length)
      throw new RangeError(`read of ${length} bytes at ${offset} is outside the buffer`);
    if (this.fault('readEio')) throw fsError('EIO', 'read');
    const at = positionOf(position);
    const n = file.inode.cached.read(at ?? file.position, target, offset, length);
    if (at === null) file.position += n;
    return n;
  }

  /** write(2) or pwritev(2) of `buffers` as one operation (refused whole on EIO or ENOSPC). */
  private write(fd: number, buffers: Buffer[], position: unknown, syscall: string): number {
    const file = this.file(fd, syscall);
    if (file.inode.dir) throw fsError('EISDIR', syscall);
    if (!file.writable) throw fsError('EBADF', syscall);
    const explicit = positionOf(position);
    const at = file.append ? file.inode.cached.size : (explicit ?? file.position);
    if (file.direct) {
      // Linux refuses a direct write whose position or length is not a multiple of the block.
      const bytes = buffers.reduce((sum, b) => sum + b.length, 0);
      if (at % DIRECT_ALIGN_BYTES !== 0 || bytes % DIRECT_ALIGN_BYTES !== 0)
        throw fsError('EINVAL', syscall);
    }
    const n = this.writeAt(file.disk, file.inode, at, buffers, syscall);
    if (file.append || explicit === null) file.position = at + n;
    return n;
  }

  private writeAt(
    disk: Disk,
    inode: Inode,
    position: number,
    buffers: Buffer[],
    syscall: string,
  ): number {
    if (this.fault('writeEio')) throw fsError('EIO', syscall);
    const data = Buffer.concat(buffers); // a copy: the caller may reuse its buffers
    if (data.length > 0) this.content(disk, inode, { kind: 'write', position, data }, syscall);
    return data.length;
  }

  private truncate(fd: number, size: number): void {
    const file = this.file(fd, 'ftruncate');
    if (!file.writable || file.inode.dir) throw fsError('EINVAL', 'ftruncate');
    this.content(file.disk, file.inode, { kind: 'truncate', size }, 'ftruncate');
  }

  /**
   * fsync/fdatasync. A regular file: its pending operations reach the durable content (its
   * directory entry does not). A directory: the disk's whole journal is committed. On an injected
   * EIO a file's pending operations are dropped from the durable path for good.
   */
  private fsync(fd: number, syscall: string): void {
    const { disk, inode } = this.file(fd, syscall);
    if (this.fault('fsyncEio')) {
      if (!inode.dir) {
        inode.pending = [];
        if (this.faults.fsyncEioEvicts?.includes(disk.prefix)) {
          disk.used -= inode.cached.size;
          inode.cached = inode.durable.clone();
          disk.used += inode.cached.size;
        }
      }
      throw fsError('EIO', syscall);
    }
    if (inode.dir) {
      for (const op of disk.journal) applyMeta(disk.durableTree, op);
      disk.journal = [];
      this.collect(disk);
    } else {
      for (const op of inode.pending) applyContent(inode.durable, op);
      inode.pending = [];
    }
  }

  /** Forgets inodes nothing can reach any more (no tree, no uncommitted create, no fd). */
  private collect(disk: Disk): void {
    const live = new Set<number>([...disk.tree.values(), ...disk.durableTree.values()]);
    for (const op of disk.journal)
      if (op.kind === 'create' || op.kind === 'mkdir') live.add(op.ino);
    for (const file of this.fds.values()) if (file.disk === disk) live.add(file.inode.ino);
    for (const ino of [...disk.inodes.keys()]) if (!live.has(ino)) disk.inodes.delete(ino);
  }

  private statOf(found: { disk: Disk; inode: Inode }): fs.Stats {
    const { disk, inode } = found;
    const dir = inode.dir;
    const size = dir ? 4096 : inode.cached.size;
    const time = new Date(inode.mtimeMs);
    const no = (): boolean => false;
    return {
      dev: disk.index + 1,
      ino: inode.ino,
      mode: dir ? 0o040755 : 0o100644,
      nlink: 1,
      uid: 0,
      gid: 0,
      rdev: 0,
      size,
      blksize: 4096,
      blocks: Math.ceil(size / 512),
      atimeMs: inode.mtimeMs,
      mtimeMs: inode.mtimeMs,
      ctimeMs: inode.mtimeMs,
      birthtimeMs: inode.mtimeMs,
      atime: time,
      mtime: time,
      ctime: time,
      birthtime: time,
      isFile: () => !dir,
      isDirectory: () => dir,
      isBlockDevice: no,
      isCharacterDevice: no,
      isSymbolicLink: no,
      isFIFO: no,
      isSocket: no,
    };
  }

  private stat(file: string): fs.Stats {
    return this.statOf(this.require(file, 'stat'));
  }

  private readFile(target: string | number): Buffer {
    if (typeof target === 'number') {
      const file = this.file(target, 'read');
      const rest = Buffer.alloc(Math.max(0, file.inode.cached.size - file.position));
      return rest.subarray(0, this.read(target, rest, 0, rest.length, null)); // from the fd's position
    }
    const { inode } = this.require(target, 'open');
    if (inode.dir) throw fsError('EISDIR', 'read');
    if (this.fault('readEio')) throw fsError('EIO', 'read');
    return inode.cached.bytes();
  }

  /** writeFile(path): open 'w' (create or truncate), then one write (which may fail after that). */
  private writeFile(target: string | number, data: unknown, options: Encoding): void {
    const bytes = asBuffer(data, typeof options === 'string' ? options : options?.encoding);
    if (typeof target === 'number') {
      this.write(target, [bytes], null, 'write');
      return;
    }
    const { disk, inode } = this.openInode(target, FLAGS.w as number, 'open');
    this.writeAt(disk, inode, 0, [bytes], 'write');
  }

  private mkdir(file: string, options: unknown): string | undefined {
    const recursive =
      typeof options === 'object' &&
      options !== null &&
      (options as { recursive?: boolean }).recursive === true;
    const { disk, rel } = this.locate(file) as { disk: Disk; rel: string };
    const existing = disk.tree.get(rel);
    if (existing !== undefined) {
      if (recursive && disk.inodes.get(existing)?.dir) return undefined;
      throw fsError('EEXIST', 'mkdir', file);
    }
    if (!recursive) {
      this.requireParent(disk, rel, 'mkdir', file);
      this.meta(disk, { kind: 'mkdir', path: rel, ino: this.newInode(disk, true).ino });
      return undefined;
    }
    let first: string | undefined;
    for (let at = rel.indexOf('/', 1); ; at = rel.indexOf('/', at + 1)) {
      const sub = at < 0 ? rel : rel.slice(0, at);
      const ino = disk.tree.get(sub);
      if (ino === undefined) {
        this.meta(disk, { kind: 'mkdir', path: sub, ino: this.newInode(disk, true).ino });
        first ??= disk.prefix + sub;
      } else if (!disk.inodes.get(ino)?.dir) {
        throw fsError('ENOTDIR', 'mkdir', file);
      }
      if (at < 0) return first;
    }
  }

  private children(disk: Disk, rel: string): string[] {
    const base = `${rel}/`;
    const names: string[] = [];
    for (const key of disk.tree.keys())
      if (key.startsWith(base) && !key.includes('/', base.length))
        names.push(key.slice(base.length));
    return names;
  }

  private readdir(file: string): string[] {
    const { disk, rel, inode } = this.require(file, 'scandir');
    if (!inode.dir) throw fsError('ENOTDIR', 'scandir', file);
    return this.children(disk, rel);
  }

  private unlink(file: string): void {
    const { disk, rel, inode } = this.require(file, 'unlink');
    if (inode.dir) throw fsError('EISDIR', 'unlink', file);
    this.meta(disk, { kind: 'unlink', path: rel });
  }

  /** rm: a file, or a directory tree with `recursive` (one unlink per entry, deepest first). */
  private rm(file: string, options?: { force?: boolean; recursive?: boolean }): void {
    const found = this.lookup(file);
    if (!found) {
      const { disk, rel } = this.locate(file) as { disk: Disk; rel: string };
      const error = this.missing(disk, rel, 'lstat', file);
      if (options?.force && error.code === 'ENOENT') return;
      throw error;
    }
    const { disk, rel, inode } = found;
    if (inode.dir) {
      if (!options?.recursive) throw rmIsDirectory(file);
      if (rel === '') throw fsError('EBUSY', 'rm', file);
      const below = [...disk.tree.keys()].filter((key) => key.startsWith(`${rel}/`));
      below.sort((x, y) => y.split('/').length - x.split('/').length || (x < y ? -1 : 1));
      for (const key of below) this.meta(disk, { kind: 'unlink', path: key });
    }
    this.meta(disk, { kind: 'unlink', path: rel });
  }

  /** rename(2): atomic, one journal entry; replaces a file, or an empty directory with a directory. */
  private rename(from: string, to: string): void {
    const source = this.locate(from);
    const target = this.locate(to);
    if (!source || !target || source.disk !== target.disk)
      throw fsError('EXDEV', 'rename', from, to);
    const disk = source.disk;
    const { inode } = this.require(from, 'rename', to);
    this.requireParent(disk, target.rel, 'rename', from, to);
    if (source.rel === target.rel) return;
    if (source.rel === '' || target.rel === '') throw fsError('EBUSY', 'rename', from, to);
    if (inode.dir && target.rel.startsWith(`${source.rel}/`))
      throw fsError('EINVAL', 'rename', from, to);
    const replacedIno = disk.tree.get(target.rel);
    const replaced = replacedIno === undefined ? undefined : disk.inodes.get(replacedIno);
    if (replaced) {
      if (inode.dir && !replaced.dir) throw fsError('ENOTDIR', 'rename', from, to);
      if (!inode.dir && replaced.dir) throw fsError('EISDIR', 'rename', from, to);
      if (replaced.dir && this.children(disk, target.rel).length > 0)
        throw fsError('ENOTEMPTY', 'rename', from, to);
    }
    this.meta(disk, { kind: 'rename', from: source.rel, to: target.rel, dir: inode.dir });
  }

  /** Replays one pending operation on durable content as a power loss does; returns sectors lost. */
  private replayTorn(content: Content, op: ContentOp): number {
    if (op.kind === 'truncate') {
      if (this.hooks.random() < 0.5) content.truncate(op.size);
      return 0;
    }
    let lost = 0;
    const end = op.position + op.data.length;
    for (let sector = Math.floor(op.position / SECTOR) * SECTOR; sector < end; sector += SECTOR) {
      const from = Math.max(sector, op.position);
      const to = Math.min(sector + SECTOR, end);
      if (this.hooks.random() < 0.5)
        content.write(from, op.data.subarray(from - op.position, to - op.position));
      else lost += 1;
    }
    return lost;
  }
}
