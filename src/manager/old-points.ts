// Points older than the local journal, served from the archive, planned two ways. (a) undo: the
// view at P is the local view at B (the nearest local point after P: the end of the thinned run
// holding P, or the oldest local point) with the archived undo of every transaction in (P, B]
// laid over it, newest to oldest, and the records at or before P of the archived transaction
// holding P+1. (b) full: the newest full image F at or before P, materialised with the archived
// redo of (F.seq, P] replayed over it, read as a replica with no transactions after it. (b) is
// taken when (a) is impossible (a gap in the archived history) or fetches more. The objects
// needed are fetched into a bounded cache (DATA/archive-cache, least recently used out first,
// objects open views read never): batches as one redo and one undo file per transaction, so the
// view code reads them like the journal's own files, and images as one file per volume.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  chunkId,
  decodeBatch,
  decodeManifest,
  decodeObject,
  FULL_CHUNK_BYTES,
  type FullManifest,
} from '../archive/index.js';
import { assert, rethrowIfBug, RewindError, type LogFunction } from '../core/index.js';
import { parseSealedRedo, parseUndo, type RedoRecord, type UndoExtent } from '../log/index.js';
import { FILE_MODE_PRIVATE, DIR_MODE_PRIVATE } from '../platform/index.js';
import type { History, HistoryTx, View } from '../views/index.js';
import type { Archiver } from './archiving.js';
import type { ArchiveTxRow, Catalog, TxRow } from './catalog.js';
import type { StoredHistory } from './stored-history.js';

/**
 * What serving a point from the archive takes: which way, the transactions, their objects, the
 * full image (way `full`) and the bytes to fetch.
 */
export interface OldPointPlan {
  seq: number;
  /** `undo`: local anchor + archived undo; `full`: a full image + archived redo after it. */
  way: 'undo' | 'full';
  /** `undo`: the local point the archived undo is laid over; `full`: the full image's seq. */
  anchorSeq: number;
  /** `undo`: the transactions in (seq, anchor]; `full`: those holding (full seq, seq]. */
  txs: ArchiveTxRow[];
  objects: { key: string; storedBytes: number; cached: boolean }[];
  /** Way `full`: the image, its chunks and whether the image at `seq` is materialised. */
  full: {
    id: number;
    seq: number;
    manifestKey: string;
    chunks: number;
    chunkBytes: number;
    cached: boolean;
  } | null;
  /** Increments replayed over the full (way `full`), or undo laid over the anchor (`undo`). */
  increments: number;
  /** Stored bytes of the objects (and chunks) not in the cache yet. */
  fetchBytes: number;
  /** Why the other way was not taken. */
  otherWay: string;
}

/** Progress of materialising a full image: chunks done of total, bytes fetched. */
export interface ImageProgress {
  done: number;
  total: number;
  key: string;
  bytes: number;
}

export interface FetchProgress {
  done: number;
  total: number;
  key: string;
  bytes: number;
}

interface CachedObject {
  dir: string;
  bytes: number;
  usedAtMs: number;
  /** Views reading it: never evicted while any does. */
  pins: number;
}

/** Where the local history begins and how it is thinned (PointResolver and the catalog). */
export interface LocalStart {
  historyStart(): number | undefined;
  txContaining(seq: number): TxRow | undefined;
}

export class OldPoints {
  private readonly catalog: Catalog;
  private readonly archiver: Archiver;
  private readonly local: LocalStart;
  private readonly dir: string;
  private readonly cacheBytesMax: number;
  private readonly log: LogFunction;
  private readonly cached = new Map<string, CachedObject>();
  /** Images materialised from full images, by `imageKey(full, seq)`. */
  private readonly images = new Map<string, CachedObject>();
  private fetching: Promise<void> = Promise.resolve();

  constructor(options: {
    catalog: Catalog;
    archiver: Archiver;
    local: LocalStart;
    dir: string;
    cacheBytesMax: number;
    log: LogFunction;
  }) {
    this.catalog = options.catalog;
    this.archiver = options.archiver;
    this.local = options.local;
    this.dir = options.dir;
    this.cacheBytesMax = options.cacheBytesMax;
    this.log = options.log;
    // A cache: what a previous run left is not trusted, and fetched again when needed.
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true, mode: DIR_MODE_PRIVATE });
  }

  /** The local point after `seq` that serves it, when the local journal cannot serve it itself. */
  anchorOf(seq: number): number | undefined {
    const start = this.local.historyStart();
    if (start === undefined) return undefined;
    if (seq < start) return start;
    const tx = this.local.txContaining(seq);
    if (tx && tx.kind === 'merged' && seq > tx.seqFirst - 1 && seq < tx.seqLast) return tx.seqLast;
    return undefined;
  }

  /**
   * The plan for point `seq` the local journal cannot serve, or why the archive cannot either.
   * Both ways are planned; `undo` is taken unless it is impossible or fetches more bytes. `only`
   * restricts it to one way (a restore needs the archived writes after `seq`: `undo`).
   */
  plan(seq: number, only?: 'undo'): { plan: OldPointPlan } | { refused: string } {
    const anchorSeq = this.anchorOf(seq);
    if (anchorSeq === undefined) return { refused: 'the local journal serves it' };
    const undo = this.planUndo(seq, anchorSeq);
    if (only === 'undo') return undo;
    const full = this.planFull(seq);
    if ('plan' in undo && 'plan' in full) {
      if (full.plan.fetchBytes < undo.plan.fetchBytes) {
        const otherWay = `local anchor + archived undo fetches ${undo.plan.fetchBytes} bytes`;
        return { plan: { ...full.plan, otherWay } };
      }
      const otherWay = `full image + archived redo fetches ${full.plan.fetchBytes} bytes`;
      return { plan: { ...undo.plan, otherWay } };
    }
    if ('plan' in undo) {
      const why = 'refused' in full ? full.refused : '';
      return { plan: { ...undo.plan, otherWay: `full image + archived redo: ${why}` } };
    }
    if ('plan' in full) {
      return { plan: { ...full.plan, otherWay: `local anchor + archived undo: ${undo.refused}` } };
    }
    return {
      refused: undo.refused === full.refused ? undo.refused : `${undo.refused}; ${full.refused}`,
    };
  }

  /** Way (a): the local view at the anchor with the archived undo of (seq, anchor] over it. */
  private planUndo(seq: number, anchorSeq: number): { plan: OldPointPlan } | { refused: string } {
    const txs = this.catalog.archiveTxsBetweenSeqs(seq + 1, anchorSeq);
    const first = txs[0];
    const last = txs[txs.length - 1];
    if (!first || !last || first.seqFirst > seq + 1 || last.seqLast !== anchorSeq) {
      return { refused: this.coverage() };
    }
    if (!contiguous(txs)) return { refused: this.coverage() };
    if (first.kind === 'resync' || (first.kind === 'resync-end' && seq !== first.seqLast)) {
      if (seq >= first.seqFirst)
        return { refused: `seq ${seq} lies inside a resync, which has no per-write history` };
    }
    const objects = this.objectsOf(txs);
    const fetchBytes = objects.reduce((sum, o) => sum + (o.cached ? 0 : o.storedBytes), 0);
    return {
      plan: {
        seq,
        way: 'undo',
        anchorSeq,
        txs,
        objects,
        full: null,
        increments: txs.length,
        fetchBytes,
        otherWay: '',
      },
    };
  }

  /**
   * Way (b): the newest full image at or before `seq` holding every volume, with the archived
   * redo of (full seq, seq] replayed over it (a gap-free run of transactions; `seq` not inside
   * a resync).
   */
  private planFull(seq: number): { plan: OldPointPlan } | { refused: string } {
    const volumes = this.catalog.volumes().map((v) => v.idx);
    const full = this.catalog
      .fullsAtOrBefore(seq)
      .find((f) => volumes.every((idx) => f.volumes.includes(idx)));
    if (full === undefined) return { refused: this.coverage() };
    const txs = seq === full.seq ? [] : this.catalog.archiveTxsBetweenSeqs(full.seq + 1, seq);
    const first = txs[0];
    const last = txs[txs.length - 1];
    if (seq !== full.seq) {
      if (!first || !last || first.seqFirst > full.seq + 1 || last.seqLast < seq) {
        return { refused: this.coverage() };
      }
      if (!contiguous(txs)) return { refused: this.coverage() };
      if (last.kind === 'resync' || (last.kind === 'resync-end' && seq !== last.seqLast)) {
        return { refused: `seq ${seq} lies inside a resync, which has no per-write history` };
      }
    }
    const objects = this.objectsOf(txs);
    const cached = this.images.has(imageKey(full, seq));
    const chunkBytes = this.catalog.fullChunkStoredBytes(full.id);
    const chunks = this.catalog.fullChunkIds(full.id).length;
    const fetchBytes =
      (cached ? 0 : chunkBytes) +
      (cached ? 0 : objects.reduce((sum, o) => sum + (o.cached ? 0 : o.storedBytes), 0));
    return {
      plan: {
        seq,
        way: 'full',
        anchorSeq: full.seq,
        txs,
        objects,
        full: {
          id: full.id,
          seq: full.seq,
          manifestKey: full.manifestKey,
          chunks,
          chunkBytes,
          cached,
        },
        increments: txs.length,
        fetchBytes,
        otherWay: '',
      },
    };
  }

  private objectsOf(txs: readonly ArchiveTxRow[]): OldPointPlan['objects'] {
    const keys = [...new Set(txs.map((tx) => tx.objectKey))];
    return keys.map((key) => ({
      key,
      storedBytes: this.catalog.archiveObject(key)?.storedBytes ?? 0,
      cached: this.cached.has(key),
    }));
  }

  /** What the archive holds, for refusals: "the archive keeps seqs A..B". */
  coverage(): string {
    const first = this.catalog.firstArchivedTx();
    const last = this.catalog.lastArchivedTx();
    const fulls = this.catalog.fulls().map((f) => f.seq);
    const images =
      fulls.length === 0
        ? ''
        : `; full images at seqs ${fulls.slice(-8).join(', ')}${fulls.length > 8 ? ` (${fulls.length} in all)` : ''}, each serving the seqs after it that archived redo reaches`;
    if (!first || !last) return `the archive holds no per-write history yet${images}`;
    return `the archive keeps per-write history of seqs ${first.seqFirst - 1}..${last.seqLast} (with gaps where history was dropped before it was archived)${images}`;
  }

  /**
   * Fetches the objects of `plan` not cached yet (one at a time), evicting the least recently
   * used unpinned objects beyond the bound. A store error (REWIND_ARCHIVE_UNAVAILABLE) leaves
   * the cache as it was, with nothing half written.
   */
  async fetch(plan: OldPointPlan, onProgress?: (progress: FetchProgress) => void): Promise<void> {
    // One fetch at a time; a failed one is its caller's error, and the next one still runs.
    const run = this.fetching.then(() => this.fetchNow(plan, onProgress));
    this.fetching = run.catch((error: unknown) => {
      rethrowIfBug(error);
    });
    await run;
  }

  private async fetchNow(
    plan: OldPointPlan,
    onProgress?: (progress: FetchProgress) => void,
  ): Promise<void> {
    const missing = plan.objects.filter((o) => !this.cached.has(o.key));
    let bytes = 0;
    for (const [i, object] of missing.entries()) {
      if (this.cached.has(object.key)) continue;
      this.archiver.counted('get');
      const stored = await this.archiver.store.get(object.key);
      bytes += stored.length;
      const plain = decodeObject(stored, {
        name: object.key,
        ...(this.archiver.key ? { key: this.archiver.key } : {}),
      });
      const entries = decodeBatch(plain, object.key);
      const dir = path.join(this.dir, crypto.createHash('sha256').update(object.key).digest('hex'));
      fs.rmSync(dir, { recursive: true, force: true });
      fs.mkdirSync(`${dir}.tmp`, { recursive: true, mode: DIR_MODE_PRIVATE });
      for (const entry of entries) {
        const write = (name: string, offset: number, length: number): void => {
          fs.writeFileSync(path.join(`${dir}.tmp`, name), plain.subarray(offset, offset + length), {
            mode: FILE_MODE_PRIVATE,
          });
        };
        write(`${entry.idx}.redo`, entry.redoOffset, entry.redoLength);
        write(`${entry.idx}.undo`, entry.undoOffset, entry.undoLength);
      }
      fs.renameSync(`${dir}.tmp`, dir);
      this.cached.set(object.key, { dir, bytes: plain.length, usedAtMs: Date.now(), pins: 0 });
      onProgress?.({ done: i + 1, total: missing.length, key: object.key, bytes });
      this.log(
        'info',
        `archive: fetched ${object.key} (${stored.length} bytes) for seq ${plan.seq}`,
      );
    }
    const keep = new Set(plan.objects.map((o) => o.key));
    if (plan.full !== null) {
      const key = imageKey(plan.full, plan.seq);
      keep.add(key);
      if (!this.images.has(key)) await this.materialise(plan, plan.full, onProgress);
    }
    this.evict(keep);
  }

  /**
   * Builds the image at `plan.seq` in the cache: the full's chunks (each checked against its
   * content address) written into one sparse file per volume, then the archived redo records of
   * (full seq, seq] applied in seq order. Written under `.tmp` and renamed.
   */
  private async materialise(
    plan: OldPointPlan,
    full: NonNullable<OldPointPlan['full']>,
    onProgress?: (progress: FetchProgress) => void,
  ): Promise<void> {
    const manifest = await this.manifestOf(full);
    const key = imageKey(full, plan.seq);
    const dir = path.join(this.dir, `image-${full.id}-${plan.seq}`);
    fs.rmSync(`${dir}.tmp`, { recursive: true, force: true });
    fs.mkdirSync(`${dir}.tmp`, { recursive: true, mode: DIR_MODE_PRIVATE });
    const total = manifest.volumes.reduce((sum, v) => sum + v.chunks.filter(Boolean).length, 0);
    const fds = new Map<number, number>();
    let done = 0;
    let bytes = 0;
    let plainBytes = 0;
    try {
      for (const volume of manifest.volumes) {
        const fd = fs.openSync(
          path.join(`${dir}.tmp`, `${volume.idx}.img`),
          'w+',
          FILE_MODE_PRIVATE,
        );
        fds.set(volume.idx, fd);
        fs.ftruncateSync(fd, volume.sizeBytes);
        for (const [c, id] of volume.chunks.entries()) {
          if (id === null) continue;
          const plain = await this.chunk(id);
          bytes += plain.stored;
          plainBytes += plain.plain.length;
          fs.writeSync(fd, plain.plain, 0, plain.plain.length, c * volume.chunkBytes);
          done += 1;
          onProgress?.({ done, total, key: `chunk ${id.slice(0, 12)}`, bytes });
        }
      }
      this.replay(plan, manifest, fds, dir);
    } finally {
      for (const fd of fds.values()) fs.closeSync(fd);
    }
    fs.rmSync(dir, { recursive: true, force: true });
    fs.renameSync(`${dir}.tmp`, dir);
    this.images.set(key, { dir, bytes: plainBytes, usedAtMs: Date.now(), pins: 0 });
    this.log(
      'info',
      `archive: seq ${plan.seq} materialised from full image ${full.id} (seq ${full.seq}, ${done} chunks, ${bytes} bytes fetched) and ${plan.txs.length} archived increments`,
    );
  }

  private async manifestOf(full: NonNullable<OldPointPlan['full']>): Promise<FullManifest> {
    this.archiver.counted('get');
    const stored = await this.archiver.store.get(full.manifestKey);
    const plain = decodeObject(stored, {
      name: full.manifestKey,
      ...(this.archiver.key ? { key: this.archiver.key } : {}),
    });
    const manifest = decodeManifest(plain, full.manifestKey);
    if (manifest.seq !== full.seq || manifest.volumeSetId !== this.catalog.getMeta('volumeSetId')) {
      throw new RewindError(
        'REWIND_ARCHIVE_CORRUPT',
        `archive manifest ${full.manifestKey}: seq ${manifest.seq} of volume set ${manifest.volumeSetId}, the catalog says seq ${full.seq}`,
        { hint: 'rewind archive verify --deep checks every full image' },
      );
    }
    return manifest;
  }

  /** A chunk's plain bytes, fetched and checked against its id (its content address). */
  private async chunk(id: string): Promise<{ plain: Buffer; stored: number }> {
    const row = this.catalog.knownChunk(id);
    if (row === undefined) {
      throw new RewindError('REWIND_ARCHIVE_CORRUPT', `full image chunk ${id} is not recorded`, {
        hint: 'rewind archive verify checks every full image against the catalog',
      });
    }
    this.archiver.counted('get');
    const stored = await this.archiver.store.get(row.key);
    const plain = decodeObject(stored, {
      name: row.key,
      ...(this.archiver.key ? { key: this.archiver.key } : {}),
    });
    if (chunkId(plain, this.archiver.key) !== id || plain.length > FULL_CHUNK_BYTES) {
      throw new RewindError(
        'REWIND_ARCHIVE_CORRUPT',
        `archive chunk ${row.key}: its bytes do not have the id it is stored under`,
        { hint: 'rewind archive verify --deep names every damaged object' },
      );
    }
    return { plain, stored: stored.length };
  }

  /** Applies the archived records of (full seq, seq] to the image files, in seq order. */
  private replay(
    plan: OldPointPlan,
    manifest: FullManifest,
    fds: ReadonlyMap<number, number>,
    dir: string,
  ): void {
    const volumes = manifest.volumes.length;
    const zero = Buffer.alloc(FULL_CHUNK_BYTES);
    for (const tx of plan.txs) {
      const object = this.cached.get(tx.objectKey);
      assert(object !== undefined, 'increments are replayed from fetched objects');
      const file = path.join(object.dir, `${tx.idx}.redo`);
      const redo = fs.readFileSync(file);
      for (const record of parseSealedRedo(redo, file, volumes).records) {
        if (record.seq <= manifest.seq || record.seq > plan.seq) continue;
        const fd = fds.get(record.volume);
        assert(fd !== undefined, `the full image holds volume ${record.volume}`);
        if (record.kind === 'write') {
          const payload = redo.subarray(
            record.payloadOffsetBytes,
            record.payloadOffsetBytes + record.lengthBytes,
          );
          fs.writeSync(fd, payload, 0, payload.length, record.offsetBytes);
          continue;
        }
        // Zero and trim read back as zeroes, as in every view.
        for (let at = 0; at < record.lengthBytes; at += zero.length) {
          const length = Math.min(zero.length, record.lengthBytes - at);
          fs.writeSync(fd, zero, 0, length, record.offsetBytes + at);
        }
      }
    }
    assert(fs.existsSync(`${dir}.tmp`), 'the image is replayed in its temporary directory');
  }

  /** Removes the least recently used objects and images, unpinned and not in `keep`. */
  private evict(keep: ReadonlySet<string>): void {
    const entries = [
      ...[...this.cached.entries()].map(([key, c]) => ({ key, c, from: this.cached })),
      ...[...this.images.entries()].map(([key, c]) => ({ key, c, from: this.images })),
    ];
    let total = entries.reduce((sum, e) => sum + e.c.bytes, 0);
    entries.sort((a, b) => a.c.usedAtMs - b.c.usedAtMs);
    for (const { key, c, from } of entries) {
      if (total <= this.cacheBytesMax) break;
      if (c.pins > 0 || keep.has(key)) continue;
      fs.rmSync(c.dir, { recursive: true, force: true });
      from.delete(key);
      total -= c.bytes;
    }
  }

  /** The history a view at `plan.seq` reads; pins what it reads until `release()`. */
  history(plan: OldPointPlan, local: StoredHistory): ArchivedHistory | ImageHistory {
    if (plan.full !== null) return this.imageHistory(plan, plan.full, local);
    return this.undoHistory(plan, local);
  }

  private imageHistory(
    plan: OldPointPlan,
    full: NonNullable<OldPointPlan['full']>,
    local: StoredHistory,
  ): ImageHistory {
    const key = imageKey(full, plan.seq);
    const image = this.images.get(key);
    assert(image !== undefined, 'a point from a full image is built from its materialised image');
    image.usedAtMs = Date.now();
    image.pins += 1;
    const sizes = Array.from({ length: local.volumeCount }, (_, v) => local.volumeSize(v));
    const files = sizes.map((_, v) => path.join(image.dir, `${v}.img`));
    let released = false;
    return new ImageHistory(plan, sizes, files, () => {
      if (released) return;
      released = true;
      image.pins -= 1;
      this.evict(new Set());
    });
  }

  private undoHistory(plan: OldPointPlan, local: StoredHistory): ArchivedHistory {
    const files = new Map<number, { redo: string; undo: string }>();
    for (const tx of plan.txs) {
      const object = this.cached.get(tx.objectKey);
      assert(object !== undefined, 'an old point is built from fetched objects');
      object.usedAtMs = Date.now();
      files.set(tx.idx, {
        redo: path.join(object.dir, `${tx.idx}.redo`),
        undo: path.join(object.dir, `${tx.idx}.undo`),
      });
    }
    const keys = [...new Set(plan.txs.map((tx) => tx.objectKey))];
    for (const key of keys) (this.cached.get(key) as CachedObject).pins += 1;
    let released = false;
    return new ArchivedHistory(plan, local, files, () => {
      if (released) return;
      released = true;
      for (const key of keys) {
        const object = this.cached.get(key);
        if (object) object.pins -= 1;
      }
      this.evict(new Set());
    });
  }

  /**
   * The capture times of the archived writes `seqFirst..seqLast`, in seq order, read from their
   * transactions' redo in the cache; undefined when one of those objects is not cached.
   */
  recordTimes(seqFirst: number, seqLast: number): { seq: number; timeNs: bigint }[] | undefined {
    const txs = this.catalog.archiveTxsBetweenSeqs(seqFirst, seqLast);
    const volumes = this.catalog.volumes().length;
    const times: { seq: number; timeNs: bigint }[] = [];
    for (const tx of txs) {
      const object = this.cached.get(tx.objectKey);
      if (object === undefined) return undefined;
      object.usedAtMs = Date.now();
      const file = path.join(object.dir, `${tx.idx}.redo`);
      for (const record of parseSealedRedo(fs.readFileSync(file), file, volumes).records) {
        if (record.seq >= seqFirst && record.seq <= seqLast)
          times.push({ seq: record.seq, timeNs: record.timeNs });
      }
    }
    return times.sort((a, b) => a.seq - b.seq);
  }

  /** Fetches the objects holding the archived writes `seqFirst..seqLast` into the cache. */
  async fetchSeqs(
    seqFirst: number,
    seqLast: number,
    onProgress?: (progress: FetchProgress) => void,
  ): Promise<void> {
    const txs = this.catalog.archiveTxsBetweenSeqs(seqFirst, seqLast);
    const plan: OldPointPlan = {
      seq: seqLast,
      way: 'undo',
      anchorSeq: seqLast,
      txs,
      objects: this.objectsOf(txs),
      full: null,
      increments: txs.length,
      fetchBytes: 0,
      otherWay: '',
    };
    await this.fetch(plan, onProgress);
  }

  /**
   * Seqs for a deep verify to rebuild from the archive alone (a full image plus archived redo)
   * and compare with the journal: the first seq both reach (the journal's first point or the
   * oldest full image's seq, the later), the newest full image's seq, the last archived seq and
   * the one halfway; each one the journal serves itself and the archive reaches that way.
   */
  verifySample(): number[] {
    const volumes = this.catalog.volumes().map((v) => v.idx);
    const fulls = this.catalog
      .fulls()
      .filter((f) => volumes.every((idx) => f.volumes.includes(idx)))
      .map((f) => f.seq);
    const start = this.local.historyStart();
    const last = this.catalog.lastArchivedTx()?.seqLast;
    const oldest = fulls[0];
    if (start === undefined || last === undefined || oldest === undefined) return [];
    const from = Math.max(start, oldest);
    if (last < from) return [];
    const seqs = new Set([from, Math.floor((from + last) / 2), last]);
    const newest = fulls.at(-1) as number;
    if (newest >= from && newest <= last) seqs.add(newest);
    return [...seqs]
      .sort((a, b) => a - b)
      .filter((seq) => this.anchorOf(seq) === undefined && 'plan' in this.planFull(seq));
  }

  /**
   * Rebuilds `seq` from a full image plus archived redo (fetched into the cache) and compares it,
   * volume by volume, with the local view `withView` gives: the first differing offset of each
   * volume that differs, as text; nothing when they are equal.
   */
  async compareWithJournal(
    seq: number,
    local: StoredHistory,
    withView: (seq: number, work: (view: View) => Promise<string[]>) => Promise<string[]>,
  ): Promise<{ differences: string[]; bytes: number }> {
    const planned = this.planFull(seq);
    if ('refused' in planned) return { differences: [planned.refused], bytes: 0 };
    await this.fetch(planned.plan);
    const image = this.history(planned.plan, local) as ImageHistory;
    let bytes = 0;
    try {
      const differences = await withView(seq, async (view) => {
        const found: string[] = [];
        const archived = Buffer.alloc(FULL_CHUNK_BYTES);
        for (let volume = 0; volume < local.volumeCount; volume++) {
          const size = local.volumeSize(volume);
          for (let offset = 0; offset < size; offset += FULL_CHUNK_BYTES) {
            const length = Math.min(FULL_CHUNK_BYTES, size - offset);
            const journal = view.read(volume, offset, length);
            const read = fs.readSync(image.replicaFd(volume), archived, 0, length, offset);
            archived.fill(0, read, length);
            bytes += length;
            const want = archived.subarray(0, length);
            if (journal.equals(want)) continue;
            let at = 0;
            while (journal[at] === want[at]) at += 1;
            found.push(
              `volume ${local.volumeNames()[volume] ?? volume} differs at byte ${offset + at}: the archive's rebuild (full image ${planned.plan.full?.id} at seq ${planned.plan.anchorSeq} + ${planned.plan.increments} increments) against the journal`,
            );
            break;
          }
        }
        return found;
      });
      return { differences, bytes };
    } finally {
      image.release();
    }
  }

  /** The objects and images the cache holds and their bytes. */
  cacheStatus(): { objects: number; images: number; bytes: number; bytesMax: number } {
    const objects = [...this.cached.values()];
    const images = [...this.images.values()];
    return {
      objects: objects.length,
      images: images.length,
      bytes: [...objects, ...images].reduce((sum, c) => sum + c.bytes, 0),
      bytesMax: this.cacheBytesMax,
    };
  }
}

/** A materialised image's cache key: the full it starts from and the seq it was replayed to. */
function imageKey(full: { id: number }, seq: number): string {
  return `image:${full.id}:${seq}`;
}

/** True when each transaction starts right after the one before it ends. */
function contiguous(txs: readonly ArchiveTxRow[]): boolean {
  for (let i = 1; i < txs.length; i++) {
    if ((txs[i] as ArchiveTxRow).seqFirst !== (txs[i - 1] as ArchiveTxRow).seqLast + 1)
      return false;
  }
  return true;
}

/**
 * The history of a point served from a full image: its replica is the image materialised at
 * the point (one file per volume in the cache) and no transaction follows it, so a view reads
 * the image and nothing else; new local transactions do not concern it.
 */
export class ImageHistory implements History {
  readonly plan: OldPointPlan;
  private readonly sizes: readonly number[];
  private readonly files: readonly string[];
  private readonly fds = new Map<number, number>();
  readonly replicas: History['replicas'];
  readonly release: () => void;

  constructor(
    plan: OldPointPlan,
    sizes: readonly number[],
    files: readonly string[],
    release: () => void,
  ) {
    this.plan = plan;
    this.sizes = sizes;
    this.files = files;
    this.replicas = sizes.map(() => ({
      allocChunkBytes: FULL_CHUNK_BYTES,
      chunkMayHoldData: () => true,
    }));
    this.release = () => {
      for (const fd of this.fds.values()) fs.closeSync(fd);
      this.fds.clear();
      release();
    };
  }

  get volumeCount(): number {
    return this.sizes.length;
  }

  volumeSize(volume: number): number {
    return this.sizes[volume] as number;
  }

  seqCommitted(): number {
    return this.plan.seq;
  }

  txsAfter(): HistoryTx[] {
    return [];
  }

  txIndex(idx: number): Promise<{ records: RedoRecord[]; undo: UndoExtent[] }> {
    return Promise.reject(new RewindError('REWIND_IO', `an image has no transaction ${idx}`));
  }

  redoFd(idx: number): number {
    throw new RewindError('REWIND_IO', `an image has no transaction ${idx}`);
  }

  undoFd(idx: number): number {
    throw new RewindError('REWIND_IO', `an image has no transaction ${idx}`);
  }

  mappedFile(): Buffer | undefined {
    return undefined;
  }

  replicaFd(volume: number): number {
    const known = this.fds.get(volume);
    if (known !== undefined) return known;
    const fd = fs.openSync(this.files[volume] as string, 'r');
    this.fds.set(volume, fd);
    return fd;
  }
}

/** The refusal of a point that neither the journal nor the archive keeps, naming both. */
export function neitherKeeps(local: RewindError, archive: string): RewindError {
  return new RewindError('REWIND_POINT_INVALID', local.message, {
    hint: `${local.hint ?? ''}${local.hint ? '; ' : ''}${archive}`,
  });
}

/**
 * The local history with archived transactions before its anchor: `txsAfter(seq)` for a seq
 * before the anchor lists the archived transactions in (seq, anchor], then the local ones after
 * the anchor; files of archived transactions are the cache's.
 */
export class ArchivedHistory implements History {
  readonly plan: OldPointPlan;
  private readonly local: StoredHistory;
  private readonly files: ReadonlyMap<number, { redo: string; undo: string }>;
  private readonly fds = new Map<string, number>();
  private readonly indexes = new Map<number, { records: RedoRecord[]; undo: UndoExtent[] }>();
  readonly release: () => void;

  constructor(
    plan: OldPointPlan,
    local: StoredHistory,
    files: ReadonlyMap<number, { redo: string; undo: string }>,
    release: () => void,
  ) {
    this.plan = plan;
    this.local = local;
    this.files = files;
    this.release = () => {
      for (const fd of this.fds.values()) fs.closeSync(fd);
      this.fds.clear();
      release();
    };
  }

  get volumeCount(): number {
    return this.local.volumeCount;
  }

  get replicas(): History['replicas'] {
    return this.local.replicas;
  }

  volumeSize(volume: number): number {
    return this.local.volumeSize(volume);
  }

  seqCommitted(): number {
    return this.local.seqCommitted();
  }

  txsAfter(seq: number, upTo?: number): HistoryTx[] {
    const anchor = this.plan.anchorSeq;
    if (seq >= anchor) return this.local.txsAfter(seq, upTo);
    const archived = this.plan.txs
      .filter((tx) => tx.seqLast > seq && (upTo === undefined || tx.seqFirst <= upTo))
      .map((tx) => ({ idx: tx.idx, seqFirst: tx.seqFirst, seqLast: tx.seqLast }));
    if (upTo !== undefined && upTo <= anchor) return archived;
    return [...archived, ...this.local.txsAfter(anchor, upTo)];
  }

  async txIndex(idx: number): Promise<{ records: RedoRecord[]; undo: UndoExtent[] }> {
    const files = this.files.get(idx);
    if (files === undefined) return this.local.txIndex(idx);
    const known = this.indexes.get(idx);
    if (known) return known;
    const volumes = this.local.volumeCount;
    const records = parseSealedRedo(fs.readFileSync(files.redo), files.redo, volumes).records;
    const undo = parseUndo(fs.readFileSync(files.undo), files.undo, volumes).extents;
    const index = { records, undo };
    this.indexes.set(idx, index);
    return index;
  }

  redoFd(idx: number): number {
    const files = this.files.get(idx);
    return files === undefined ? this.local.redoFd(idx) : this.fd(files.redo);
  }

  undoFd(idx: number): number {
    const files = this.files.get(idx);
    return files === undefined ? this.local.undoFd(idx) : this.fd(files.undo);
  }

  mappedFile(idx: number, kind: 'redo' | 'undo'): Buffer | undefined {
    return this.files.has(idx) ? undefined : this.local.mappedFile(idx, kind);
  }

  replicaFd(volume: number): number {
    return this.local.replicaFd(volume);
  }

  private fd(file: string): number {
    const known = this.fds.get(file);
    if (known !== undefined) return known;
    const fd = fs.openSync(file, 'r');
    this.fds.set(file, fd);
    return fd;
  }
}
