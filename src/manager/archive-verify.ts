// `rewind archive verify`: every object the catalog records is HEADed (it must exist with the
// recorded size); deep, each is read and decoded (checksums, key), its index compared with the
// catalog's rows, every transaction's redo and undo CRC-32C checked, and the bytes compared with
// the local journal where it still holds the transaction unthinned. Full images too: every
// manifest and chunk the catalog records is HEADed; deep, each manifest is decoded and compared
// with its catalog row and chunk refs, each chunk decoded and checked against its content
// address. The volume-set descriptors too (what a rebuild reads first): HEADed; deep, each is
// read, its SHA-256 and plain SHA-256 compared with the catalog's, decoded, and its volume set and
// volumes compared with the catalog's. Last, deep only, a sample of points the journal still
// serves (its first, the newest full image's, the last archived and one between) is rebuilt from
// the archive alone, a full image plus archived redo, and compared byte for byte with the
// journal's view at the same seq. Reads only (the rebuilds go to the archive cache).
import crypto from 'node:crypto';
import fs from 'node:fs';
import {
  chunkId,
  decodeBatch,
  decodeDescriptor,
  decodeManifest,
  decodeObject,
  type BatchEntry,
} from '../archive/index.js';
import { crc32c, errorMessage, rethrowIfBug } from '../core/index.js';
import type { Archiver } from './archiving.js';
import type { ArchiveFullRow, ArchiveTxRow, Catalog } from './catalog.js';
import type { TxFiles } from './txfiles.js';

export interface VerifyProblem {
  key: string;
  /** What did not match, e.g. "size 1234, the catalog recorded 1240". */
  problem: string;
}

export interface VerifyProgress {
  done: number;
  total: number;
  key: string;
  bytes: number;
}

export interface VerifyResult {
  deep: boolean;
  objects: number;
  objectsOk: number;
  transactions: number;
  /** Transactions whose redo and undo were also compared with the local journal. */
  comparedLocally: number;
  /** Full images and chunks checked (their manifests and chunks count in `objects` too). */
  fulls: number;
  chunks: number;
  /** Volume-set descriptors checked (they count in `objects` too). */
  descriptors: number;
  /** Deep: the seqs rebuilt from the archive alone and compared with the journal's views. */
  pointsCompared: number[];
  bytesRead: number;
  problems: VerifyProblem[];
}

/** Rebuilds points from the archive alone and compares them with the journal (OldPoints). */
export interface PointSampler {
  sample(): number[];
  compare(seq: number): Promise<{ differences: string[]; bytes: number }>;
}

export async function verifyArchive(
  parts: { catalog: Catalog; txFiles: TxFiles; archiver: Archiver; points?: PointSampler },
  options: { deep: boolean; onProgress?: (progress: VerifyProgress) => void },
): Promise<VerifyResult> {
  const { catalog, archiver } = parts;
  const objects = catalog.archiveObjects();
  const result: VerifyResult = {
    deep: options.deep,
    objects: objects.length,
    objectsOk: 0,
    transactions: 0,
    comparedLocally: 0,
    fulls: 0,
    chunks: 0,
    descriptors: 0,
    pointsCompared: [],
    bytesRead: 0,
    problems: [],
  };
  const fulls = catalog.fulls();
  const chunks = catalog.archiveChunks();
  const sets = catalog.archiveSets();
  const sample = options.deep && parts.points ? parts.points.sample() : [];
  const total = objects.length + fulls.length + chunks.length + sets.length + sample.length;
  result.objects = total - sample.length;
  for (const [i, object] of objects.entries()) {
    const before = result.problems.length;
    const rows = catalog.archiveTxsOf(object.key);
    result.transactions += rows.length;
    archiver.counted('head');
    const head = await archiver.store.head(object.key);
    if (head === undefined) {
      result.problems.push({ key: object.key, problem: 'missing from the store' });
    } else if (head.size !== object.storedBytes) {
      result.problems.push({
        key: object.key,
        problem: `size ${head.size}, the catalog recorded ${object.storedBytes}`,
      });
    } else if (options.deep) {
      await verifyDeep(parts, object, rows, result);
    }
    if (result.problems.length === before) result.objectsOk += 1;
    options.onProgress?.({
      done: i + 1,
      total,
      key: object.key,
      bytes: result.bytesRead,
    });
  }
  await verifyFulls(parts, { ...options, total }, result);
  await verifyDescriptors(parts, { ...options, total }, result);
  if (parts.points) await verifyPoints(parts.points, sample, { ...options, total }, result);
  return result;
}

/** Each sampled seq rebuilt from the archive and compared with the journal's view of it. */
async function verifyPoints(
  points: PointSampler,
  seqs: readonly number[],
  options: { total: number; onProgress?: (progress: VerifyProgress) => void },
  result: VerifyResult,
): Promise<void> {
  const before = options.total - seqs.length;
  for (const [i, seq] of seqs.entries()) {
    const key = `point ${seq}`;
    try {
      const compared = await points.compare(seq);
      for (const problem of compared.differences) result.problems.push({ key, problem });
    } catch (error) {
      rethrowIfBug(error);
      result.problems.push({ key, problem: errorMessage(error) });
    }
    result.pointsCompared.push(seq);
    options.onProgress?.({
      done: before + i + 1,
      total: options.total,
      key,
      bytes: result.bytesRead,
    });
  }
}

/** Each recorded descriptor: present, of the recorded size; deep, its digests and volumes. */
async function verifyDescriptors(
  parts: { catalog: Catalog; archiver: Archiver },
  options: { deep: boolean; total: number; onProgress?: (progress: VerifyProgress) => void },
  result: VerifyResult,
): Promise<void> {
  const { catalog, archiver } = parts;
  const volumes = new Map(catalog.volumes().map((v) => [v.idx, v]));
  const volumeSetId = catalog.getMeta('volumeSetId');
  let done = options.total - catalog.archiveSets().length;
  for (const set of catalog.archiveSets()) {
    const before = result.problems.length;
    result.descriptors += 1;
    const problem = (text: string): void => {
      result.problems.push({ key: set.key, problem: text });
    };
    archiver.counted('head');
    const head = await archiver.store.head(set.key);
    if (head === undefined) problem('missing from the store');
    else if (head.size !== set.storedBytes) {
      problem(`size ${head.size}, the catalog recorded ${set.storedBytes}`);
    } else if (options.deep) {
      archiver.counted('get');
      const stored = await archiver.store.get(set.key);
      result.bytesRead += stored.length;
      const sha256 = sha256Hex(stored);
      if (sha256 !== set.sha256) problem(`SHA-256 ${sha256}, the catalog recorded ${set.sha256}`);
      try {
        const plain = decodeObject(stored, {
          name: set.key,
          ...(archiver.key ? { key: archiver.key } : {}),
        });
        if (sha256Hex(plain) !== set.plainSha256) {
          problem('its plain bytes differ from those the catalog recorded');
        }
        const descriptor = decodeDescriptor(plain, set.key);
        if (descriptor.volumeSetId !== volumeSetId) {
          problem(`volume set ${descriptor.volumeSetId}, the catalog's is ${volumeSetId}`);
        }
        if (descriptor.volumes.length !== set.volumeCount) {
          problem(`${descriptor.volumes.length} volumes, the catalog recorded ${set.volumeCount}`);
        }
        for (const v of descriptor.volumes) {
          const known = volumes.get(v.idx);
          if (known?.name !== v.name || known.sizeBytes !== v.sizeBytes) {
            problem(
              `volume ${v.idx} is ${v.name} of ${v.sizeBytes} bytes, the catalog's ${known ? `${known.name} of ${known.sizeBytes}` : 'has none'}`,
            );
          }
        }
      } catch (error) {
        rethrowIfBug(error);
        problem(errorMessage(error));
      }
    }
    if (result.problems.length === before) result.objectsOk += 1;
    done += 1;
    options.onProgress?.({ done, total: options.total, key: set.key, bytes: result.bytesRead });
  }
}

function sha256Hex(bytes: Buffer): string {
  return crypto.createHash('sha256').update(bytes).digest('hex');
}

/** Each recorded full's manifest, then each chunk: present, of the recorded size; deep, decoded. */
async function verifyFulls(
  parts: { catalog: Catalog; archiver: Archiver },
  options: { deep: boolean; total: number; onProgress?: (progress: VerifyProgress) => void },
  result: VerifyResult,
): Promise<void> {
  const { catalog, archiver } = parts;
  let done = catalog.archiveObjects().length;
  const step = (key: string): void => {
    done += 1;
    options.onProgress?.({ done, total: options.total, key, bytes: result.bytesRead });
  };
  for (const full of catalog.fulls()) {
    const before = result.problems.length;
    result.fulls += 1;
    archiver.counted('head');
    const head = await archiver.store.head(full.manifestKey);
    if (head === undefined) {
      result.problems.push({ key: full.manifestKey, problem: 'missing from the store' });
    } else if (options.deep) {
      await verifyManifest(parts, full, result);
    }
    if (result.problems.length === before) result.objectsOk += 1;
    step(full.manifestKey);
  }
  for (const chunk of catalog.archiveChunks()) {
    const before = result.problems.length;
    result.chunks += 1;
    const problem = (text: string): void => {
      result.problems.push({ key: chunk.key, problem: text });
    };
    archiver.counted('head');
    const head = await archiver.store.head(chunk.key);
    if (head === undefined) problem('missing from the store');
    else if (head.size !== chunk.storedBytes) {
      problem(`size ${head.size}, the catalog recorded ${chunk.storedBytes}`);
    } else if (options.deep) {
      archiver.counted('get');
      const stored = await archiver.store.get(chunk.key);
      result.bytesRead += stored.length;
      try {
        const plain = decodeObject(stored, {
          name: chunk.key,
          ...(archiver.key ? { key: archiver.key } : {}),
        });
        if (plain.length !== chunk.plainBytes) {
          problem(`${plain.length} plain bytes, the catalog recorded ${chunk.plainBytes}`);
        }
        if (chunkId(plain, archiver.key) !== chunk.id) {
          problem('its bytes do not have the id it is stored under');
        }
      } catch (error) {
        rethrowIfBug(error);
        problem(errorMessage(error));
      }
    }
    if (result.problems.length === before) result.objectsOk += 1;
    step(chunk.key);
  }
}

/** A manifest decoded and compared with its row (seq, volumes) and its chunk refs. */
async function verifyManifest(
  parts: { catalog: Catalog; archiver: Archiver },
  full: ArchiveFullRow,
  result: VerifyResult,
): Promise<void> {
  const { catalog, archiver } = parts;
  const problem = (text: string): void => {
    result.problems.push({ key: full.manifestKey, problem: text });
  };
  archiver.counted('get');
  const stored = await archiver.store.get(full.manifestKey);
  result.bytesRead += stored.length;
  let manifest;
  try {
    const plain = decodeObject(stored, {
      name: full.manifestKey,
      ...(archiver.key ? { key: archiver.key } : {}),
    });
    manifest = decodeManifest(plain, full.manifestKey);
  } catch (error) {
    rethrowIfBug(error);
    problem(errorMessage(error));
    return;
  }
  if (manifest.seq !== full.seq) problem(`seq ${manifest.seq}, the catalog recorded ${full.seq}`);
  const volumes = manifest.volumes.map((v) => v.idx).join(',');
  if (volumes !== full.volumes.join(',')) {
    problem(`volumes ${volumes}, the catalog recorded ${full.volumes.join(',')}`);
  }
  const ids = new Set(manifest.volumes.flatMap((v) => v.chunks.filter((c) => c !== null)));
  const refs = catalog.fullChunkIds(full.id);
  if (ids.size !== refs.length || refs.some((id) => !ids.has(id))) {
    problem(`${ids.size} distinct chunks listed, the catalog records ${refs.length} references`);
  }
  for (const id of ids) {
    if (catalog.knownChunk(id) === undefined) problem(`chunk ${id} is not recorded`);
  }
}

async function verifyDeep(
  parts: { catalog: Catalog; txFiles: TxFiles; archiver: Archiver },
  object: { key: string; sha256: string },
  rows: readonly ArchiveTxRow[],
  result: VerifyResult,
): Promise<void> {
  const { archiver } = parts;
  const problem = (text: string): void => {
    result.problems.push({ key: object.key, problem: text });
  };
  archiver.counted('get');
  const stored = await archiver.store.get(object.key);
  result.bytesRead += stored.length;
  const sha256 = crypto.createHash('sha256').update(stored).digest('hex');
  if (sha256 !== object.sha256) problem(`SHA-256 ${sha256}, the catalog recorded ${object.sha256}`);
  let entries: BatchEntry[];
  let plain: Buffer;
  try {
    plain = decodeObject(stored, {
      name: object.key,
      ...(archiver.key ? { key: archiver.key } : {}),
    });
    entries = decodeBatch(plain, object.key);
  } catch (error) {
    rethrowIfBug(error);
    problem(errorMessage(error));
    return;
  }
  const byIdx = new Map(entries.map((e) => [e.idx, e]));
  if (entries.length !== rows.length) {
    problem(`${entries.length} transactions inside, the catalog recorded ${rows.length}`);
  }
  for (const row of rows) {
    const entry = byIdx.get(row.idx);
    if (entry === undefined) {
      problem(`transaction ${row.idx} is not inside`);
      continue;
    }
    for (const field of FIELDS) {
      if (entry[field] !== row[field]) {
        problem(
          `transaction ${row.idx}: ${field} ${entry[field]}, the catalog recorded ${row[field]}`,
        );
      }
    }
    compareLocal(parts, row, plain, problem, result);
  }
}

const FIELDS = [
  'seqFirst',
  'seqLast',
  'redoOffset',
  'redoLength',
  'redoCrc',
  'undoOffset',
  'undoLength',
  'undoCrc',
] as const;

/** Where the journal still has the transaction as it was archived, the bytes must be equal. */
function compareLocal(
  parts: { catalog: Catalog; txFiles: TxFiles },
  row: ArchiveTxRow,
  plain: Buffer,
  problem: (text: string) => void,
  result: VerifyResult,
): void {
  const local = parts.catalog.tx(row.idx);
  if (local === undefined || local.kind === 'merged' || local.state !== 'committed') return;
  const redo = plain.subarray(row.redoOffset, row.redoOffset + row.redoLength);
  const undo = plain.subarray(row.undoOffset, row.undoOffset + row.undoLength);
  if (crc32c(redo) !== local.redoCrc)
    problem(`transaction ${row.idx}: redo differs from the journal's CRC`);
  if (crc32c(undo) !== local.undoCrc)
    problem(`transaction ${row.idx}: undo differs from the journal's CRC`);
  const files = [
    { what: 'redo', file: parts.txFiles.redoPath(row.idx), bytes: redo },
    { what: 'undo', file: parts.txFiles.undoPath(row.idx, local.undoGen), bytes: undo },
  ];
  for (const { what, file, bytes } of files) {
    let held: Buffer;
    try {
      held = fs.readFileSync(file);
    } catch (error) {
      rethrowIfBug(error);
      return; // dropped by retention meanwhile: nothing local to compare with
    }
    if (!held.equals(bytes)) problem(`transaction ${row.idx}: ${what} differs from ${file}`);
  }
  result.comparedLocally += 1;
}
