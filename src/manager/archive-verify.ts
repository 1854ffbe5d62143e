// `rewind archive verify`: every object the catalog records is HEADed (it must exist with the
// recorded size); deep, each is read and decoded (checksums, key), its index compared with the
// catalog's rows, every transaction's redo and undo CRC-32C checked, and the bytes compared with
// the local journal where it still holds the transaction unthinned. Reads only.
import crypto from 'node:crypto';
import fs from 'node:fs';
import { decodeBatch, decodeObject, type BatchEntry } from '../archive/index.js';
import { crc32c, errorMessage, rethrowIfBug } from '../core/index.js';
import type { Archiver } from './archiving.js';
import type { ArchiveTxRow, Catalog } from './catalog.js';
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
  bytesRead: number;
  problems: VerifyProblem[];
}

export async function verifyArchive(
  parts: { catalog: Catalog; txFiles: TxFiles; archiver: Archiver },
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
    bytesRead: 0,
    problems: [],
  };
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
      total: objects.length,
      key: object.key,
      bytes: result.bytesRead,
    });
  }
  return result;
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
