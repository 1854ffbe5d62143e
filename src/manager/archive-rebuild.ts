// `rewind archive rebuild`: a manager's catalog and replica recreated from the archive alone (the
// backup host was lost). LISTs the store, reads the newest volume-set descriptor and every batch
// object in history order (each checked against its digest), records them in a new catalog, and
// builds the replica at S, the end of the contiguous archived history, by replaying the archived
// redo over a base: a zeroed replica when the archive starts at seq 1, else the oldest full image
// at or after the archive's first point (the archive's retention drops the batches before its
// base full image). The transaction at S is kept as the local journal, so a manager started on DIR
// has S as its local anchor and serves every older archived point through the old-points path;
// the full images up to S are recorded too, so their own points and the retention stay known.
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import {
  chunkId,
  chunkKey,
  decodeBatch,
  decodeDescriptor,
  decodeManifest,
  decodeObject,
  parseDescriptorKey,
  archiveKeyId,
  type BatchEntry,
  type FullManifest,
  type ObjectStore,
  type VolumeSetDescriptor,
} from '../archive/index.js';
import { assert, errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import { parseSealedRedo, parseUndo } from '../log/index.js';
import { ensureDir, writeFileDurable, writeFullySync, writeZeroesSync } from '../platform/index.js';
import { markApplied, replicasOf, syncReplicas, writeRedo } from './apply.js';
import { Catalog, type ArchiveTxRow } from './catalog.js';
import { ReplicaVolume } from './replica.js';
import { TxFiles } from './txfiles.js';

export interface RebuildProgress {
  objectsRead: number;
  objectsTotal: number;
  bytesRead: number;
  transactionsApplied: number;
  /** Chunks of the base full image written into the replica, of its total (0 of 0: none). */
  chunksRead: number;
  chunksTotal: number;
}

export interface RebuildResult {
  volumeSetId: string;
  volumeSetName: string;
  volumes: { name: string; sizeBytes: number }[];
  descriptorKey: string;
  objects: number;
  transactions: number;
  bytesRead: number;
  /** The end of the contiguous archived history: the replica's seq, the manager's anchor. */
  seq: number;
  /** The archive's first point (its first transaction's seqFirst - 1). */
  seqFrom: number;
  /** History gaps (a manager that lost history, then a resync) recorded from the archive. */
  gaps: { seqFirst: number; seqLast: number }[];
  /** Why the rebuild stopped before the end of the archive, if it did (a damaged object). */
  stoppedAt: { key: string; problem: string } | undefined;
  /** The full image the replay started from; null when the archive starts at seq 1. */
  base: { seq: number; manifestKey: string; chunks: number } | null;
  /** Full images recorded in the new catalog (the base among them), oldest first. */
  fulls: { seq: number; manifestKey: string }[];
  /** Full images in the archive that were not recorded, and why (damaged, past S, a chunk gone). */
  fullsSkipped: { manifestKey: string; problem: string }[];
}

export interface RebuildOptions {
  store: ObjectStore;
  key: Buffer | undefined;
  dataDir: string;
  /** Required when the archive holds more than one volume set. */
  volumeSetId?: string;
  onProgress?: (progress: RebuildProgress) => void;
}

/**
 * An object that is damaged or missing: named, and the rebuild goes on without it (stops there, or
 * tries the next full image). A store that cannot be reached or refuses, or a wrong key, fails the
 * whole rebuild instead: going on would claim history lost that is only out of reach.
 */
function isDamage(error: unknown): error is RewindError {
  return (
    error instanceof RewindError &&
    (error.code === 'REWIND_ARCHIVE_CORRUPT' || error.code === 'REWIND_ARCHIVE_NOT_FOUND')
  );
}

/** The newest descriptor as read, recorded in the new catalog (the archiver writes no copy). */
interface DescriptorStored {
  version: number;
  plainSha256: string;
  storedBytes: number;
  sha256: string;
}

function sha256Of(bytes: Buffer): string {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const BATCH_KEY = new RegExp(`^(${UUID})/tx/(\\d{16})-(\\d{16})(?:\\.(\\d+))?$`);
const MANIFEST_KEY = new RegExp(`^(${UUID})/full/(\\d{16})(?:\\.(\\d+))?$`);

/** A full image's manifest in the store, named by its seq (a variant after its base). */
interface ManifestObject {
  key: string;
  seq: number;
  variant: number;
}

interface BatchObject {
  key: string;
  firstIdx: number;
  lastIdx: number;
  variant: number;
}

/** An archived transaction applied to the replica, and the object it came from. */
interface Applied {
  entry: BatchEntry;
  objectKey: string;
}

/** One archived transaction as read, with the object it came from. */
interface ReadTx {
  entry: BatchEntry;
  objectKey: string;
  redo: Buffer;
  undo: Buffer;
}

export async function rebuildFromArchive(options: RebuildOptions): Promise<RebuildResult> {
  const root = path.join(options.dataDir, 'manager');
  const catalogFile = path.join(root, 'catalog.sqlite');
  if (fs.existsSync(catalogFile)) {
    throw new RewindError('REWIND_CONFLICT', `${options.dataDir} holds a manager catalog already`, {
      hint: 'rebuild into a new, empty data directory; nothing was changed',
    });
  }
  const keys = await options.store.list('');
  const volumeSetId = chooseVolumeSet(keys, options.volumeSetId, options.store.url);
  const { descriptor, descriptorKey, stored } = await readDescriptor(options, keys, volumeSetId);
  const objects = batchObjects(keys, volumeSetId);
  const manifests = manifestObjects(keys, volumeSetId);
  if (objects.length === 0) {
    throw new RewindError(
      'REWIND_ARCHIVE_NOT_FOUND',
      `archive ${options.store.url} holds no transactions of volume set ${volumeSetId}`,
    );
  }
  const created = !fs.existsSync(root);
  await ensureDir(root);
  const catalog = new Catalog(catalogFile);
  const replicas: ReplicaVolume[] = [];
  let done = false;
  try {
    catalog.setMeta('volumeSetId', descriptor.volumeSetId);
    catalog.setMeta('volumeSetName', descriptor.volumeSetName);
    for (const volume of descriptor.volumes) {
      replicas.push(
        ReplicaVolume.open(path.join(root, 'replica'), volume.idx, volume.name, volume.sizeBytes),
      );
      catalog.addVolume(volume.idx, volume.name, volume.sizeBytes);
    }
    catalog.setMeta('archiveUrl', options.store.url);
    catalog.setMeta('archiveKeyId', options.key ? archiveKeyId(options.key) : 'none');
    catalog.recordArchiveSet({
      ...stored,
      key: descriptorKey,
      volumeCount: descriptor.volumes.length,
      createdAt: new Date().toISOString(),
    });
    const result = await replay({
      options,
      catalog,
      replicas,
      root,
      objects,
      manifests,
      descriptor,
      descriptorKey,
    });
    done = true;
    return result;
  } finally {
    for (const replica of replicas) replica.close();
    catalog.close();
    // A rebuild that failed leaves no half-made manager behind, so it can simply be run again.
    if (!done && created) fs.rmSync(root, { recursive: true, force: true });
  }
}

/** The one volume set of the archive, or the one asked for; several without a choice refused. */
function chooseVolumeSet(keys: readonly string[], wanted: string | undefined, url: string): string {
  const ids = [...new Set(keys.map((key) => /^([^/]+)\//.exec(key)?.[1] ?? ''))]
    .filter((id) => new RegExp(`^${UUID}$`).test(id))
    .sort();
  if (wanted !== undefined) {
    if (!ids.includes(wanted))
      throw new RewindError('REWIND_NOT_FOUND', `archive ${url} holds no volume set ${wanted}`, {
        hint: ids.length > 0 ? `it holds: ${ids.join(', ')}` : 'it holds no volume set',
      });
    return wanted;
  }
  if (ids.length === 0)
    throw new RewindError('REWIND_ARCHIVE_NOT_FOUND', `archive ${url} holds no volume set`, {
      hint: 'check --archive (and the prefix of an s3:// URL)',
    });
  if (ids.length > 1)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `archive ${url} holds ${ids.length} volume sets: ${ids.join(', ')}`,
      { hint: 'give --volume-set ID' },
    );
  return ids[0] as string;
}

async function readDescriptor(
  options: RebuildOptions,
  keys: readonly string[],
  volumeSetId: string,
): Promise<{ descriptor: VolumeSetDescriptor; descriptorKey: string; stored: DescriptorStored }> {
  const versions = keys
    .map((key) => ({ key, parsed: parseDescriptorKey(key) }))
    .filter((k) => k.parsed?.volumeSetId === volumeSetId)
    .sort((a, b) => (b.parsed?.version ?? 0) - (a.parsed?.version ?? 0));
  const newest = versions[0];
  if (newest === undefined) {
    throw new RewindError(
      'REWIND_ARCHIVE_NOT_FOUND',
      `archive ${options.store.url} has no volume-set descriptor for ${volumeSetId}`,
      { hint: 'it was written by a manager older than descriptors: the volumes are not known' },
    );
  }
  const stored = await options.store.get(newest.key);
  const plain = decodeObject(stored, {
    name: newest.key,
    ...(options.key ? { key: options.key } : {}),
  });
  const descriptor = decodeDescriptor(plain, newest.key);
  if (descriptor.volumeSetId !== volumeSetId)
    throw new RewindError(
      'REWIND_ARCHIVE_CORRUPT',
      `${newest.key} describes volume set ${descriptor.volumeSetId}`,
    );
  return {
    descriptor,
    descriptorKey: newest.key,
    stored: {
      version: newest.parsed?.version ?? 1,
      plainSha256: sha256Of(plain),
      storedBytes: stored.length,
      sha256: sha256Of(stored),
    },
  };
}

/** The batch objects of the volume set in history order (a variant after its base). */
function batchObjects(keys: readonly string[], volumeSetId: string): BatchObject[] {
  const objects: BatchObject[] = [];
  for (const key of keys) {
    const match = BATCH_KEY.exec(key);
    if (match === null || match[1] !== volumeSetId) continue;
    objects.push({
      key,
      firstIdx: Number(match[2]),
      lastIdx: Number(match[3]),
      variant: match[4] === undefined ? 1 : Number(match[4]),
    });
  }
  return objects.sort((a, b) => a.firstIdx - b.firstIdx || a.variant - b.variant);
}

/** The full images' manifests of the volume set, by seq (a variant after its base). */
function manifestObjects(keys: readonly string[], volumeSetId: string): ManifestObject[] {
  const manifests: ManifestObject[] = [];
  for (const key of keys) {
    const match = MANIFEST_KEY.exec(key);
    if (match === null || match[1] !== volumeSetId) continue;
    manifests.push({
      key,
      seq: Number(match[2]),
      variant: match[3] === undefined ? 1 : Number(match[3]),
    });
  }
  return manifests.sort((a, b) => a.seq - b.seq || a.variant - b.variant);
}

interface ReplayParts {
  options: RebuildOptions;
  catalog: Catalog;
  replicas: ReplicaVolume[];
  root: string;
  objects: BatchObject[];
  manifests: ManifestObject[];
  descriptor: VolumeSetDescriptor;
  descriptorKey: string;
}

/** The full image the replay starts from, as written into the replica. */
interface Base {
  seq: number;
  manifestKey: string;
  chunks: number;
}

/**
 * Reads the objects in order and applies their redo, as long as history stays contiguous: each
 * transaction starts right after the one before it, or after a seq gap that a resync follows (a
 * manager that lost history). The first damaged object, or a gap no resync follows (history
 * dropped before it was archived), ends the rebuild there.
 */
async function replay(parts: ReplayParts): Promise<RebuildResult> {
  const { options, catalog, replicas, objects, descriptor } = parts;
  const progress: RebuildProgress = {
    objectsRead: 0,
    objectsTotal: objects.length,
    bytesRead: 0,
    transactionsApplied: 0,
    chunksRead: 0,
    chunksTotal: 0,
  };
  const fullsSkipped: RebuildResult['fullsSkipped'] = [];
  let base: Base | null = null;
  const gaps: RebuildResult['gaps'] = [];
  let stoppedAt: RebuildResult['stoppedAt'];
  let last: ReadTx | undefined;
  /** The last transaction that ends at a consistent point (not inside a resync window). */
  let lastConsistent: ReadTx | undefined;
  let seqFrom: number | undefined;
  /** Transactions applied since lastConsistent (an open resync window). */
  let window: Applied[] = [];
  for (const object of objects) {
    if (last !== undefined && object.firstIdx <= last.entry.idx) continue; // a variant's base
    let read: Awaited<ReturnType<typeof readObject>>;
    try {
      read = await readObject(options, object.key, progress);
    } catch (error) {
      rethrowIfBug(error);
      if (!isDamage(error)) throw error;
      stoppedAt = { key: object.key, problem: errorMessage(error) };
      break;
    }
    const txs = read.txs;
    const first = txs[0] as ReadTx;
    if (last === undefined) {
      seqFrom = first.entry.seqFirst - 1;
      base = await loadBase(parts, first.entry, progress, fullsSkipped);
    } else if (first.entry.seqFirst !== last.entry.seqLast + 1) {
      if (first.entry.kind === 'redo') {
        stoppedAt = {
          key: object.key,
          problem: `history between seq ${last.entry.seqLast} and ${first.entry.seqFirst} was never archived (dropped before it could be)`,
        };
        break;
      }
      gaps.push({ seqFirst: last.entry.seqLast + 1, seqLast: first.entry.seqFirst - 1 });
      catalog.recordHistoryGap({
        seqFirst: last.entry.seqLast + 1,
        seqLast: first.entry.seqFirst - 1,
        idxBefore: last.entry.idx,
        idxAfter: first.entry.idx,
        timeBeforeUs: last.entry.timeLastUs,
        timeAfterUs: first.entry.timeFirstUs,
      });
    }
    const brokenAt = txs.findIndex(
      (tx, i) => i > 0 && tx.entry.seqFirst !== (txs[i - 1] as ReadTx).entry.seqLast + 1,
    );
    if (brokenAt > 0) {
      stoppedAt = { key: object.key, problem: `seqs inside the object are not contiguous` };
      break;
    }
    for (const tx of txs) {
      if (await applyTx(tx, replicas, descriptor.volumes.length, base?.seq ?? 0))
        progress.transactionsApplied += 1;
      if (tx.entry.kind === 'resync') {
        window.push({ entry: tx.entry, objectKey: tx.objectKey });
      } else {
        lastConsistent = tx;
        window = [];
      }
    }
    recordObject(catalog, { key: object.key, ...read });
    last = txs[txs.length - 1];
    options.onProgress?.({ ...progress });
  }
  if (lastConsistent === undefined) {
    throw new RewindError(
      'REWIND_ARCHIVE_CORRUPT',
      stoppedAt
        ? `${stoppedAt.key}: ${stoppedAt.problem}; nothing before it can be rebuilt`
        : 'the archive ends inside its first resync: no consistent point to rebuild',
    );
  }
  if (base !== null && lastConsistent.entry.seqLast < base.seq) {
    throw new RewindError(
      'REWIND_ARCHIVE_NOT_FOUND',
      `the archived history ends at seq ${lastConsistent.entry.seqLast}, before its base full image ${base.manifestKey} (seq ${base.seq})`,
      {
        hint: stoppedAt
          ? `${stoppedAt.key}: ${stoppedAt.problem}`
          : 'the archiver had not caught up with that full image',
      },
    );
  }
  // The archive ends inside a resync window: the replica goes back to the point before it.
  if (window.length > 0) {
    if (base !== null && (window[0] as Applied).entry.seqFirst <= base.seq) {
      throw new RewindError(
        'REWIND_ARCHIVE_CORRUPT',
        `full image ${base.manifestKey} (seq ${base.seq}) lies inside the resync window the archive ends in`,
      );
    }
    await rollBack(parts, window);
  }
  await syncReplicas(replicas);
  await keepLocally(parts, lastConsistent);
  const fulls = await recordFulls(parts, lastConsistent.entry.seqLast, base, fullsSkipped);
  return {
    volumeSetId: descriptor.volumeSetId,
    volumeSetName: descriptor.volumeSetName,
    volumes: descriptor.volumes.map((v) => ({ name: v.name, sizeBytes: v.sizeBytes })),
    descriptorKey: parts.descriptorKey,
    objects: progress.objectsRead,
    transactions: progress.transactionsApplied,
    bytesRead: progress.bytesRead,
    seq: lastConsistent.entry.seqLast,
    seqFrom: seqFrom ?? 0,
    gaps,
    stoppedAt,
    base,
    fulls,
    fullsSkipped,
  };
}

/**
 * The base the archived redo is replayed over: nothing (a zeroed replica) when the archive starts
 * at seq 1; else the oldest full image at or after the archive's first point that holds every
 * volume and reads back whole, written into the replica (chunks checked against their content
 * address) and recorded. Full images that cannot serve are named in `skipped`.
 */
async function loadBase(
  parts: ReplayParts,
  first: BatchEntry,
  progress: RebuildProgress,
  skipped: RebuildResult['fullsSkipped'],
): Promise<Base | null> {
  if (first.seqFirst === 1) return null;
  const from = first.seqFirst - 1;
  let attempts = 0;
  for (const object of parts.manifests.filter((m) => m.seq >= from)) {
    try {
      const { manifest, storedBytes } = await readManifest(parts, object);
      progress.chunksRead = 0;
      progress.chunksTotal = manifest.volumes.reduce(
        (sum, v) => sum + v.chunks.filter((id) => id !== null).length,
        0,
      );
      attempts += 1; // a later attempt zeroes what this one may have written
      const chunks = await writeBase(parts, manifest, progress, attempts > 1);
      recordFull(parts.catalog, object.key, manifest, storedBytes + chunks.storedBytes, chunks);
      return { seq: manifest.seq, manifestKey: object.key, chunks: chunks.ids.length };
    } catch (error) {
      rethrowIfBug(error);
      if (!isDamage(error)) throw error;
      skipped.push({ manifestKey: object.key, problem: error.message });
    }
  }
  throw new RewindError(
    'REWIND_ARCHIVE_NOT_FOUND',
    `archive ${parts.options.store.url} starts at seq ${first.seqFirst}: the volumes at seq ${from} are not in it, and no full image at or after that seq can stand in for them`,
    {
      hint:
        skipped.length > 0
          ? `full images tried: ${skipped.map((f) => `${f.manifestKey}: ${f.problem}`).join('; ')}`
          : 'a full image of that point or later is needed to rebuild from this archive',
    },
  );
}

/** A manifest read, decoded and checked against its key and the descriptor's volumes. */
async function readManifest(
  parts: ReplayParts,
  object: ManifestObject,
): Promise<{ manifest: FullManifest; storedBytes: number }> {
  const { options, descriptor } = parts;
  const stored = await options.store.get(object.key);
  const plain = decodeObject(stored, {
    name: object.key,
    ...(options.key ? { key: options.key } : {}),
  });
  const manifest = decodeManifest(plain, object.key);
  if (manifest.seq !== object.seq || manifest.volumeSetId !== descriptor.volumeSetId) {
    throw new RewindError(
      'REWIND_ARCHIVE_CORRUPT',
      `${object.key} holds seq ${manifest.seq} of volume set ${manifest.volumeSetId}`,
    );
  }
  const held = new Map(manifest.volumes.map((v) => [v.idx, v]));
  for (const volume of descriptor.volumes) {
    const image = held.get(volume.idx);
    if (image === undefined || image.sizeBytes !== volume.sizeBytes) {
      throw new RewindError(
        'REWIND_ARCHIVE_NOT_FOUND',
        image === undefined
          ? `it does not hold volume ${volume.name}`
          : `its volume ${volume.name} is ${image.sizeBytes} bytes, the volume set's ${volume.sizeBytes}`,
      );
    }
  }
  if (manifest.volumes.length !== descriptor.volumes.length) {
    throw new RewindError('REWIND_ARCHIVE_CORRUPT', `it holds volumes the volume set has not`);
  }
  return { manifest, storedBytes: stored.length };
}

/** The chunks a full image was written from: distinct ids, and the stored bytes of those new. */
interface ChunksRecorded {
  ids: string[];
  newIds: number;
  storedBytes: number;
}

/**
 * Writes a full image's chunks into the replicas (zero chunks left sparse, or zeroed over an
 * earlier attempt's bytes when `overwrite`), and records each chunk once it matched its id.
 */
async function writeBase(
  parts: ReplayParts,
  manifest: FullManifest,
  progress: RebuildProgress,
  overwrite: boolean,
): Promise<ChunksRecorded> {
  const { options, catalog, replicas } = parts;
  const recorded: ChunksRecorded = { ids: [], newIds: 0, storedBytes: 0 };
  const ids = new Set<string>();
  for (const volume of manifest.volumes) {
    const replica = replicas[volume.idx] as ReplicaVolume;
    const extent = (c: number): { offset: number; length: number } => ({
      offset: c * volume.chunkBytes,
      length: Math.min(volume.chunkBytes, volume.sizeBytes - c * volume.chunkBytes),
    });
    for (const [c, id] of volume.chunks.entries()) {
      if (id !== null) replica.markData(extent(c).offset, extent(c).length);
    }
    await replica.persistAlloc();
    for (const [c, id] of volume.chunks.entries()) {
      const { offset, length } = extent(c);
      if (id === null) {
        if (overwrite) writeZeroesSync(replica.fd, offset, length);
        continue;
      }
      const key = chunkKey(manifest.volumeSetId, id);
      const stored = await options.store.get(key);
      progress.bytesRead += stored.length;
      const plain = decodeObject(stored, {
        name: key,
        ...(options.key ? { key: options.key } : {}),
      });
      if (plain.length !== length || chunkId(plain, options.key) !== id) {
        throw new RewindError(
          'REWIND_ARCHIVE_CORRUPT',
          `chunk ${key}: its bytes do not have the id it is stored under`,
        );
      }
      writeFullySync(replica.fd, plain, offset);
      if (!ids.has(id)) {
        ids.add(id);
        if (catalog.knownChunk(id) === undefined) {
          recorded.newIds += 1;
          recorded.storedBytes += stored.length;
        }
        catalog.recordChunk(chunkRow(key, id, length, stored.length));
      }
      progress.chunksRead += 1;
      options.onProgress?.({ ...progress });
    }
  }
  recorded.ids = [...ids];
  return recorded;
}

function chunkRow(key: string, id: string, plainBytes: number, storedBytes: number) {
  return { id, key, plainBytes, storedBytes, createdAt: new Date().toISOString() };
}

function recordFull(
  catalog: Catalog,
  manifestKey: string,
  manifest: FullManifest,
  storedBytes: number,
  chunks: ChunksRecorded,
): void {
  catalog.recordFull(
    {
      seq: manifest.seq,
      timeUs: manifest.timeUs,
      manifestKey,
      volumes: manifest.volumes.map((v) => v.idx),
      logicalBytes: manifest.volumes.reduce((sum, v) => sum + v.sizeBytes, 0),
      chunkCount: manifest.volumes.reduce(
        (sum, v) => sum + v.chunks.filter((id) => id !== null).length,
        0,
      ),
      newChunks: chunks.newIds,
      storedBytes,
      createdAt: new Date().toISOString(),
    },
    chunks.ids,
  );
}

/**
 * Records the archive's other full images up to `seq` (the rebuilt history's end), so a point at
 * one of them is served and the archive's retention knows them; each chunk not read already is
 * only checked to be there (HEAD). One past `seq`, damaged, or missing a chunk is skipped, named.
 */
async function recordFulls(
  parts: ReplayParts,
  seq: number,
  base: Base | null,
  skipped: RebuildResult['fullsSkipped'],
): Promise<RebuildResult['fulls']> {
  const { options, catalog } = parts;
  const tried = new Set(skipped.map((f) => f.manifestKey));
  for (const object of parts.manifests) {
    if (object.key === base?.manifestKey || tried.has(object.key)) continue;
    if (object.seq > seq) {
      skipped.push({
        manifestKey: object.key,
        problem: `seq ${object.seq} is past the rebuilt history (seq ${seq})`,
      });
      continue;
    }
    try {
      const { manifest, storedBytes } = await readManifest(parts, object);
      const recorded: ChunksRecorded = { ids: [], newIds: 0, storedBytes: 0 };
      const rows: ReturnType<typeof chunkRow>[] = [];
      const ids = new Set<string>();
      for (const volume of manifest.volumes) {
        for (const [c, id] of volume.chunks.entries()) {
          if (id === null || ids.has(id)) continue;
          ids.add(id);
          if (catalog.knownChunk(id) !== undefined) continue;
          const key = chunkKey(manifest.volumeSetId, id);
          const head = await options.store.head(key);
          if (head === undefined) {
            throw new RewindError('REWIND_ARCHIVE_NOT_FOUND', `its chunk ${key} is not stored`);
          }
          const length = Math.min(volume.chunkBytes, volume.sizeBytes - c * volume.chunkBytes);
          rows.push(chunkRow(key, id, length, head.size));
          recorded.newIds += 1;
          recorded.storedBytes += head.size;
        }
      }
      for (const row of rows) catalog.recordChunk(row);
      recorded.ids = [...ids];
      recordFull(catalog, object.key, manifest, storedBytes + recorded.storedBytes, recorded);
    } catch (error) {
      rethrowIfBug(error);
      if (!isDamage(error)) throw error;
      skipped.push({ manifestKey: object.key, problem: error.message });
    }
  }
  return catalog.fulls().map((f) => ({ seq: f.seq, manifestKey: f.manifestKey }));
}

/** Reads and decodes one batch object (digest, CRCs); its transactions with their bytes. */
async function readObject(
  options: RebuildOptions,
  key: string,
  progress: RebuildProgress,
): Promise<{ txs: ReadTx[]; storedBytes: number; sha256: string }> {
  const stored = await options.store.get(key);
  progress.objectsRead += 1;
  progress.bytesRead += stored.length;
  const plain = decodeObject(stored, { name: key, ...(options.key ? { key: options.key } : {}) });
  const txs = decodeBatch(plain, key).map((entry) => ({
    entry,
    objectKey: key,
    redo: plain.subarray(entry.redoOffset, entry.redoOffset + entry.redoLength),
    undo: plain.subarray(entry.undoOffset, entry.undoOffset + entry.undoLength),
  }));
  return { txs, storedBytes: stored.length, sha256: sha256Of(stored) };
}

/**
 * Applies the records of `tx` after `baseSeq` (the base full image's seq; a transaction the base
 * ends inside is applied from there); false when the base holds all of it already.
 */
async function applyTx(
  tx: ReadTx,
  replicas: ReplicaVolume[],
  volumeCount: number,
  baseSeq: number,
): Promise<boolean> {
  if (tx.entry.seqLast <= baseSeq) return false;
  const parsed = parseSealedRedo(
    tx.redo,
    `${tx.objectKey} transaction ${tx.entry.idx}`,
    volumeCount,
  );
  assert(
    parsed.header.seqFirst === tx.entry.seqFirst,
    'a redo segment starts where its entry says',
  );
  const records =
    tx.entry.seqFirst > baseSeq ? parsed.records : parsed.records.filter((r) => r.seq > baseSeq);
  await markApplied(records, replicas);
  await writeRedo(tx.redo, records, replicasOf(records, replicas));
  return true;
}

function recordObject(
  catalog: Catalog,
  object: { key: string; txs: readonly ReadTx[]; storedBytes: number; sha256: string },
): void {
  const { key, txs } = object;
  const first = (txs[0] as ReadTx).entry;
  const last = (txs[txs.length - 1] as ReadTx).entry;
  const rows: ArchiveTxRow[] = txs.map(({ entry }) => ({
    idx: entry.idx,
    kind: entry.kind,
    seqFirst: entry.seqFirst,
    seqLast: entry.seqLast,
    timeFirstUs: entry.timeFirstUs,
    timeLastUs: entry.timeLastUs,
    objectKey: key,
    redoOffset: entry.redoOffset,
    redoLength: entry.redoLength,
    redoCrc: entry.redoCrc,
    undoOffset: entry.undoOffset,
    undoLength: entry.undoLength,
    undoCrc: entry.undoCrc,
  }));
  const plainBytes = last.undoOffset + last.undoLength;
  catalog.recordArchiveObject(
    {
      key,
      firstIdx: first.idx,
      lastIdx: last.idx,
      seqFirst: first.seqFirst,
      seqLast: last.seqLast,
      timeFirstUs: first.timeFirstUs,
      timeLastUs: last.timeLastUs,
      txCount: txs.length,
      plainBytes,
      storedBytes: object.storedBytes,
      sha256: object.sha256,
      createdAt: new Date().toISOString(),
    },
    rows,
  );
}

/**
 * Undoes `window` (the transactions of a resync window the archive ends inside, oldest first)
 * with their archived undo, newest first, so the replica is back at the consistent point before
 * it. Their objects are read again: a window left open is rare, and holding every resync's bytes
 * in memory until its end is not bounded.
 */
async function rollBack(parts: ReplayParts, window: readonly Applied[]): Promise<void> {
  const plains = new Map<string, Buffer>();
  for (const tx of [...window].reverse()) {
    let plain = plains.get(tx.objectKey);
    if (plain === undefined) {
      plain = decodeObject(await parts.options.store.get(tx.objectKey), {
        name: tx.objectKey,
        ...(parts.options.key ? { key: parts.options.key } : {}),
      });
      plains.set(tx.objectKey, plain);
    }
    const undo = plain.subarray(tx.entry.undoOffset, tx.entry.undoOffset + tx.entry.undoLength);
    const name = `${tx.objectKey} undo of transaction ${tx.entry.idx}`;
    const parsed = parseUndo(undo, name, parts.replicas.length);
    for (const extent of parsed.extents) {
      const replica = parts.replicas[extent.volume] as ReplicaVolume;
      if (extent.kind === 'zero') {
        writeZeroesSync(replica.fd, extent.offsetBytes, extent.lengthBytes);
        continue;
      }
      replica.markData(extent.offsetBytes, extent.lengthBytes);
      await replica.persistAlloc();
      const bytes = undo.subarray(
        extent.payloadOffsetBytes,
        extent.payloadOffsetBytes + extent.lengthBytes,
      );
      writeFullySync(replica.fd, bytes, extent.offsetBytes);
    }
  }
}

/**
 * The transaction at S becomes the local journal: its redo and undo files, and a committed row,
 * so the manager's committed position is S and its oldest local point the anchor for old points.
 */
async function keepLocally(parts: ReplayParts, tx: ReadTx): Promise<void> {
  const txFiles = new TxFiles(parts.root, () => parts.replicas.length);
  await ensureDir(txFiles.redoDir);
  await ensureDir(txFiles.undoDir);
  await writeFileDurable(txFiles.redoPath(tx.entry.idx), tx.redo);
  await writeFileDurable(txFiles.undoPath(tx.entry.idx, 0), tx.undo);
  const parsed = parseSealedRedo(tx.redo, `transaction ${tx.entry.idx}`, parts.replicas.length);
  const now = new Date().toISOString();
  parts.catalog.insertTx({
    idx: tx.entry.idx,
    kind: tx.entry.kind,
    seqFirst: tx.entry.seqFirst,
    seqLast: tx.entry.seqLast,
    timeFirstUs: tx.entry.timeFirstUs,
    timeLastUs: tx.entry.timeLastUs,
    recordCount: parsed.records.length,
    redoBytes: tx.redo.length,
    redoCrc: tx.entry.redoCrc,
    undoBytes: tx.undo.length,
    undoCrc: tx.entry.undoCrc,
    state: 'undo-saved',
    receivedAt: now,
  });
  parts.catalog.setState(tx.entry.idx, 'committed');
}
