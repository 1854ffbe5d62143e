// The manager's catalog in SQLite (WAL): the volume set, its volumes, every transaction with its
// durable state, views, bookmarks and what retention did to the history. The single source of truth
// for what is committed and what is kept.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import { RewindError } from '../core/index.js';
import { FILE_MODE_PRIVATE } from '../platform/index.js';

export type TxState = 'received' | 'undo-saved' | 'applied' | 'committed';
/**
 * `resync-end` is the last transaction of a resync: its seqLast is consistent again. `merged` is a
 * run of transactions thinned into one (retention): no redo, one undo holding the earliest
 * before-image of every byte the run wrote, so only its first and last points remain.
 */
export type TxKind = 'redo' | 'resync' | 'resync-end' | 'merged';

export interface TxRow {
  idx: number;
  kind: TxKind;
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  recordCount: number;
  redoBytes: number;
  redoCrc: number;
  undoBytes: number;
  undoCrc: number;
  state: TxState;
  receivedAt: string;
  committedAt: string | null;
  /** Generation of the undo file: 0 is the one written at receive, a merge writes the next. */
  undoGen: number;
  /** A merged transaction: the first segment index merged into it. */
  firstIdx: number | null;
  /** A merged transaction: the tier it was thinned into (its label, e.g. `1h`) and when. */
  tier: string | null;
  thinnedAt: string | null;
}

/** What retention did to a span of history: thinned into a tier, or dropped (and why). */
export interface RetentionEventRow {
  kind: 'dropped';
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  reason: string;
  at: string;
}

/** A merged transaction's new undo, written durably before the rows are swapped. */
export interface MergedUndo {
  undoGen: number;
  undoBytes: number;
  undoCrc: number;
  tier: string;
}

export interface ViewRow {
  name: string;
  kind: 'snapshot' | 'clone';
  seq: number;
  createdAt: string;
}

export interface VolumeRow {
  idx: number;
  name: string;
  sizeBytes: number;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
  idx INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, size_bytes INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS transactions (
  idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, seq_first INTEGER NOT NULL, seq_last INTEGER NOT NULL,
  time_first_us INTEGER NOT NULL, time_last_us INTEGER NOT NULL, record_count INTEGER NOT NULL,
  redo_bytes INTEGER NOT NULL, redo_crc INTEGER NOT NULL, undo_bytes INTEGER NOT NULL DEFAULT 0,
  undo_crc INTEGER NOT NULL DEFAULT 0, state TEXT NOT NULL, received_at TEXT NOT NULL, committed_at TEXT);
CREATE INDEX IF NOT EXISTS transactions_seq ON transactions (seq_last);
CREATE INDEX IF NOT EXISTS transactions_time ON transactions (time_last_us);
CREATE INDEX IF NOT EXISTS transactions_resync ON transactions (idx) WHERE kind != 'redo';
CREATE TABLE IF NOT EXISTS views (
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, seq INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bookmarks (
  name TEXT PRIMARY KEY, seq INTEGER NOT NULL, time_us INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS retention_events (
  id INTEGER PRIMARY KEY, kind TEXT NOT NULL, seq_first INTEGER NOT NULL, seq_last INTEGER NOT NULL,
  time_first_us INTEGER NOT NULL, time_last_us INTEGER NOT NULL, reason TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS restores (
  id INTEGER PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL,
  bytes_total INTEGER NOT NULL DEFAULT 0, bytes_done INTEGER NOT NULL DEFAULT 0,
  seq_first INTEGER, seq_last INTEGER, message TEXT, started_at TEXT NOT NULL, finished_at TEXT);
CREATE TABLE IF NOT EXISTS api_tokens (
  name TEXT PRIMARY KEY, role TEXT NOT NULL, sha256 TEXT NOT NULL UNIQUE, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY, at TEXT NOT NULL, token TEXT, method TEXT NOT NULL, route TEXT NOT NULL,
  summary TEXT NOT NULL, status INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS archive_objects (
  key TEXT PRIMARY KEY, first_idx INTEGER NOT NULL, last_idx INTEGER NOT NULL,
  seq_first INTEGER NOT NULL, seq_last INTEGER NOT NULL, time_first_us INTEGER NOT NULL,
  time_last_us INTEGER NOT NULL, tx_count INTEGER NOT NULL, plain_bytes INTEGER NOT NULL,
  stored_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS archive_objects_seq ON archive_objects (seq_last);
CREATE TABLE IF NOT EXISTS archive_txs (
  idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, seq_first INTEGER NOT NULL, seq_last INTEGER NOT NULL,
  time_first_us INTEGER NOT NULL, time_last_us INTEGER NOT NULL, object_key TEXT NOT NULL,
  redo_offset INTEGER NOT NULL, redo_length INTEGER NOT NULL, redo_crc INTEGER NOT NULL,
  undo_offset INTEGER NOT NULL, undo_length INTEGER NOT NULL, undo_crc INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS archive_txs_seq ON archive_txs (seq_last);
CREATE INDEX IF NOT EXISTS archive_txs_time ON archive_txs (time_first_us);
CREATE TABLE IF NOT EXISTS archive_fulls (
  id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, time_us INTEGER NOT NULL,
  manifest_key TEXT NOT NULL UNIQUE, volumes TEXT NOT NULL, logical_bytes INTEGER NOT NULL,
  chunk_count INTEGER NOT NULL, new_chunks INTEGER NOT NULL, stored_bytes INTEGER NOT NULL,
  created_at TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS archive_fulls_seq ON archive_fulls (seq);
CREATE TABLE IF NOT EXISTS archive_chunks (
  id TEXT PRIMARY KEY, key TEXT NOT NULL, plain_bytes INTEGER NOT NULL,
  stored_bytes INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS archive_full_chunks (
  full_id INTEGER NOT NULL, chunk_id TEXT NOT NULL, PRIMARY KEY (full_id, chunk_id));
CREATE INDEX IF NOT EXISTS archive_full_chunks_chunk ON archive_full_chunks (chunk_id);
CREATE TABLE IF NOT EXISTS archive_deletions (
  key TEXT PRIMARY KEY, reason TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS archive_sets (
  version INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, volume_count INTEGER NOT NULL,
  plain_sha256 TEXT NOT NULL, stored_bytes INTEGER NOT NULL, sha256 TEXT NOT NULL,
  created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history_gaps (
  seq_first INTEGER PRIMARY KEY, seq_last INTEGER NOT NULL, idx_before INTEGER NOT NULL,
  idx_after INTEGER NOT NULL, time_before_us INTEGER NOT NULL, time_after_us INTEGER NOT NULL,
  recorded_at TEXT NOT NULL);
`;

/**
 * Seqs this manager never received: it lost its history (its data directory, or a rebuild from
 * an archive that ends earlier) while the agent went on, and the agent resynced every volume.
 */
export interface HistoryGap {
  seqFirst: number;
  seqLast: number;
  /** The last transaction before the gap (0: none) and the resync's first one after it. */
  idxBefore: number;
  idxAfter: number;
  /** Capture times of the last write before the gap and of the resync after it. */
  timeBeforeUs: number;
  timeAfterUs: number;
  recordedAt: string;
}

const GAP_COLUMNS = `seq_first AS seqFirst, seq_last AS seqLast, idx_before AS idxBefore,
  idx_after AS idxAfter, time_before_us AS timeBeforeUs, time_after_us AS timeAfterUs,
  recorded_at AS recordedAt`;

/** An HTTP API token made with `rewind token create`: only the SHA-256 of its secret is kept. */
export interface ApiTokenRow {
  name: string;
  role: string;
  /** Hex SHA-256 of the secret. */
  sha256: string;
  createdAt: string;
}

/** One state-changing HTTP API call: who (a token's name, never its secret), what, the outcome. */
export interface AuditRow {
  id: number;
  at: string;
  /** The token's name; null when the call had no valid token. */
  token: string | null;
  method: string;
  route: string;
  summary: string;
  status: number;
}

export interface BookmarkRow {
  name: string;
  seq: number;
  timeUs: number;
  createdAt: string;
  /** Pinned: retention never drops history from this point on ('forever', or until an ISO time). */
  pinnedUntil: string | null;
}

/** A production restore: `spec` is its JSON request; `running` until done or failed. */
export interface RestoreRow {
  id: number;
  spec: string;
  seq: number;
  state: 'running' | 'done' | 'failed';
  bytesTotal: number;
  bytesDone: number;
  seqFirst: number | null;
  seqLast: number | null;
  message: string | null;
  startedAt: string;
  finishedAt: string | null;
}

const RESTORE_COLUMNS = `id, spec, seq, state, bytes_total AS bytesTotal, bytes_done AS bytesDone, seq_first AS seqFirst,
  seq_last AS seqLast, message, started_at AS startedAt, finished_at AS finishedAt`;

const TX_COLUMNS = `idx, kind, seq_first AS seqFirst, seq_last AS seqLast, time_first_us AS timeFirstUs,
  time_last_us AS timeLastUs, record_count AS recordCount, redo_bytes AS redoBytes, redo_crc AS redoCrc,
  undo_bytes AS undoBytes, undo_crc AS undoCrc, state, received_at AS receivedAt, committed_at AS committedAt,
  undo_gen AS undoGen, first_idx AS firstIdx, tier, thinned_at AS thinnedAt`;

/** Columns added after the first catalogs were written: added to an older catalog when opened. */
const ADDED_COLUMNS: { table: string; column: string; definition: string }[] = [
  { table: 'transactions', column: 'undo_gen', definition: 'INTEGER NOT NULL DEFAULT 0' },
  { table: 'transactions', column: 'first_idx', definition: 'INTEGER' },
  { table: 'transactions', column: 'tier', definition: 'TEXT' },
  { table: 'transactions', column: 'thinned_at', definition: 'TEXT' },
  { table: 'bookmarks', column: 'pinned_until', definition: 'TEXT' },
];

/** One object of the archive (archiving.ts): a batch of consecutive archived transactions. */
export interface ArchiveObjectRow {
  key: string;
  firstIdx: number;
  lastIdx: number;
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  txCount: number;
  plainBytes: number;
  storedBytes: number;
  /** SHA-256 of the stored bytes (hex). */
  sha256: string;
  createdAt: string;
}

/** One version of the volume-set descriptor written to the archive (src/archive/descriptor.ts). */
export interface ArchiveSetRow {
  version: number;
  key: string;
  volumeCount: number;
  /** SHA-256 of the plain descriptor (hex): a new version is written when it changes. */
  plainSha256: string;
  storedBytes: number;
  /** SHA-256 of the stored bytes (hex). */
  sha256: string;
  createdAt: string;
}

const ARCHIVE_SET_COLUMNS = `version, key, volume_count AS volumeCount,
  plain_sha256 AS plainSha256, stored_bytes AS storedBytes, sha256, created_at AS createdAt`;

/** One archived transaction: where its redo and undo lie in its object's plain payload. */
export interface ArchiveTxRow {
  idx: number;
  kind: TxKind;
  seqFirst: number;
  seqLast: number;
  timeFirstUs: number;
  timeLastUs: number;
  objectKey: string;
  redoOffset: number;
  redoLength: number;
  redoCrc: number;
  undoOffset: number;
  undoLength: number;
  undoCrc: number;
}

/**
 * A virtual full image in the archive (full-images.ts): its manifest's key, the seq it shows,
 * the volumes it holds and what it cost. `storedBytes` counts only the chunks it uploaded new
 * (and its manifest); the chunks it shares with older fulls were stored by them.
 */
export interface ArchiveFullRow {
  id: number;
  seq: number;
  /** Capture time of write `seq`, µs (0 for seq 0). */
  timeUs: number;
  manifestKey: string;
  /** The volume indexes it holds. */
  volumes: number[];
  /** The bytes of those volumes (their sizes summed). */
  logicalBytes: number;
  /** Chunks the manifest lists that are not all zero. */
  chunkCount: number;
  newChunks: number;
  storedBytes: number;
  createdAt: string;
}

/** One stored chunk of full images: its id (hex SHA-256 or HMAC), key, plain and stored bytes. */
export interface ArchiveChunkRow {
  id: string;
  key: string;
  plainBytes: number;
  storedBytes: number;
  createdAt: string;
}

const ARCHIVE_FULL_COLUMNS = `id, seq, time_us AS timeUs, manifest_key AS manifestKey, volumes,
  logical_bytes AS logicalBytes, chunk_count AS chunkCount, new_chunks AS newChunks,
  stored_bytes AS storedBytes, created_at AS createdAt`;
const ARCHIVE_CHUNK_COLUMNS =
  'id, key, plain_bytes AS plainBytes, stored_bytes AS storedBytes, created_at AS createdAt';

function fullRow(row: Omit<ArchiveFullRow, 'volumes'> & { volumes: string }): ArchiveFullRow {
  return { ...row, volumes: JSON.parse(row.volumes) as number[] };
}

const ARCHIVE_OBJECT_COLUMNS = `key, first_idx AS firstIdx, last_idx AS lastIdx, seq_first AS seqFirst,
  seq_last AS seqLast, time_first_us AS timeFirstUs, time_last_us AS timeLastUs, tx_count AS txCount,
  plain_bytes AS plainBytes, stored_bytes AS storedBytes, sha256, created_at AS createdAt`;
const ARCHIVE_TX_COLUMNS = `idx, kind, seq_first AS seqFirst, seq_last AS seqLast,
  time_first_us AS timeFirstUs, time_last_us AS timeLastUs, object_key AS objectKey,
  redo_offset AS redoOffset, redo_length AS redoLength, redo_crc AS redoCrc,
  undo_offset AS undoOffset, undo_length AS undoLength, undo_crc AS undoCrc`;

const BOOKMARK_COLUMNS =
  'name, seq, time_us AS timeUs, created_at AS createdAt, pinned_until AS pinnedUntil';

export class Catalog {
  private readonly db: Database.Database;
  /**
   * journalBytes(), kept as rows commit: a full scan on every commit costs milliseconds once the
   * history holds 100,000 rows. Merges, drops and other rewrites recount at the next ask.
   */
  private journalCached: number | undefined;

  /** Opens the catalog in `file`, or in an open database (the simulation's in-memory one). */
  constructor(file: string | Database.Database) {
    if (typeof file === 'string') {
      // SQLite gives its WAL and SHM files the database file's mode: create that one private.
      fs.closeSync(fs.openSync(file, 'a', FILE_MODE_PRIVATE));
    }
    this.db = typeof file === 'string' ? new Database(file) : file;
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL'); // a commit is the durable point of a transaction
    this.db.exec(SCHEMA);
    for (const added of ADDED_COLUMNS) {
      const columns = this.db.prepare(`PRAGMA table_info(${added.table})`).all() as {
        name: string;
      }[];
      if (!columns.some((c) => c.name === added.column)) {
        this.db.exec(`ALTER TABLE ${added.table} ADD COLUMN ${added.column} ${added.definition}`);
      }
    }
  }

  getMeta(key: string): string | undefined {
    const row = this.db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as
      { value: string } | undefined;
    return row?.value;
  }

  setMeta(key: string, value: string): void {
    this.db
      .prepare(
        'INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value',
      )
      .run(key, value);
  }

  volumes(): VolumeRow[] {
    return this.db
      .prepare('SELECT idx, name, size_bytes AS sizeBytes FROM volumes ORDER BY idx')
      .all() as VolumeRow[];
  }

  addVolume(idx: number, name: string, sizeBytes: number): void {
    this.db
      .prepare('INSERT INTO volumes (idx, name, size_bytes, created_at) VALUES (?, ?, ?, ?)')
      .run(idx, name, sizeBytes, new Date().toISOString());
  }

  /**
   * Catalogs the first transaction after a history gap and the gap itself, in one SQLite
   * transaction: a gap is never recorded without the resync that follows it.
   */
  insertTxAfterGap(
    row: Parameters<Catalog['insertTx']>[0],
    gap: Omit<HistoryGap, 'recordedAt' | 'idxAfter' | 'timeAfterUs'>,
  ): void {
    this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT OR REPLACE INTO history_gaps (seq_first, seq_last, idx_before, idx_after,
             time_before_us, time_after_us, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          gap.seqFirst,
          gap.seqLast,
          gap.idxBefore,
          row.idx,
          gap.timeBeforeUs,
          row.timeFirstUs,
          new Date().toISOString(),
        );
      this.insertTx(row);
    })();
  }

  /** Records a history gap read from the archive (a rebuild: its transactions are archived). */
  recordHistoryGap(gap: Omit<HistoryGap, 'recordedAt'>): void {
    this.db
      .prepare(
        `INSERT OR REPLACE INTO history_gaps (seq_first, seq_last, idx_before, idx_after,
           time_before_us, time_after_us, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        gap.seqFirst,
        gap.seqLast,
        gap.idxBefore,
        gap.idxAfter,
        gap.timeBeforeUs,
        gap.timeAfterUs,
        new Date().toISOString(),
      );
  }

  /** The history gap holding `seq`, if any. */
  gapContaining(seq: number): HistoryGap | undefined {
    return this.db
      .prepare(`SELECT ${GAP_COLUMNS} FROM history_gaps WHERE seq_first <= ? AND seq_last >= ?`)
      .get(seq, seq) as HistoryGap | undefined;
  }

  /** The history gap whose time span holds `timeUs` strictly inside, if any. */
  gapAtTime(timeUs: number): HistoryGap | undefined {
    return this.db
      .prepare(
        `SELECT ${GAP_COLUMNS} FROM history_gaps WHERE time_before_us < ? AND time_after_us > ?
         ORDER BY seq_first LIMIT 1`,
      )
      .get(timeUs, timeUs) as HistoryGap | undefined;
  }

  /** Every history gap, oldest first. */
  historyGaps(): HistoryGap[] {
    return this.db
      .prepare(`SELECT ${GAP_COLUMNS} FROM history_gaps ORDER BY seq_first`)
      .all() as HistoryGap[];
  }

  insertTx(row: Omit<TxRow, 'committedAt' | 'undoGen' | 'firstIdx' | 'tier' | 'thinnedAt'>): void {
    if (row.state === 'committed') this.journalCached = undefined;
    this.db
      .prepare(
        `INSERT INTO transactions (idx, kind, seq_first, seq_last, time_first_us, time_last_us, record_count,
           redo_bytes, redo_crc, undo_bytes, undo_crc, state, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        row.idx,
        row.kind,
        row.seqFirst,
        row.seqLast,
        row.timeFirstUs,
        row.timeLastUs,
        row.recordCount,
        row.redoBytes,
        row.redoCrc,
        row.undoBytes,
        row.undoCrc,
        row.state,
        row.receivedAt,
      );
  }

  /**
   * Forgets transaction `idx` and every later one, all still 'received' (nothing of them reached
   * the replica, and the agent keeps their segments until they commit). Returns how many.
   */
  forgetReceivedFrom(idx: number): number {
    const later = this.db
      .prepare(`SELECT COUNT(*) AS n FROM transactions WHERE idx >= ? AND state != 'received'`)
      .get(idx) as { n: number };
    if (later.n > 0) throw new Error(`transactions from ${idx} on are not all in state received`);
    return this.db.prepare('DELETE FROM transactions WHERE idx >= ?').run(idx).changes;
  }

  setUndoSaved(idx: number, undoBytes: number, undoCrc: number): void {
    this.db
      .prepare(
        `UPDATE transactions SET state = 'undo-saved', undo_bytes = ?, undo_crc = ? WHERE idx = ?`,
      )
      .run(undoBytes, undoCrc, idx);
    this.journalCached = undefined;
  }

  setState(idx: number, state: TxState): void {
    const committedAt = state === 'committed' ? new Date().toISOString() : null;
    const before = this.journalCached === undefined ? undefined : this.tx(idx);
    this.db
      .prepare('UPDATE transactions SET state = ?, committed_at = ? WHERE idx = ?')
      .run(state, committedAt, idx);
    if (this.journalCached === undefined || before === undefined) return;
    const bytes = before.redoBytes + before.undoBytes;
    const was = before.state === 'committed';
    const now = state === 'committed';
    if (!was && now) this.journalCached += bytes;
    else if (was && !now) this.journalCached -= bytes;
  }

  tx(idx: number): TxRow | undefined {
    return this.db.prepare(`SELECT ${TX_COLUMNS} FROM transactions WHERE idx = ?`).get(idx) as
      TxRow | undefined;
  }

  lastTx(): TxRow | undefined {
    return this.db
      .prepare(`SELECT ${TX_COLUMNS} FROM transactions ORDER BY idx DESC LIMIT 1`)
      .get() as TxRow | undefined;
  }

  uncommitted(): TxRow[] {
    return this.db
      .prepare(`SELECT ${TX_COLUMNS} FROM transactions WHERE state != 'committed' ORDER BY idx`)
      .all() as TxRow[];
  }

  /** Committed transactions, oldest first, optionally only those overlapping a seq range. */
  committedTxs(seqFrom = 0, seqTo = Number.MAX_SAFE_INTEGER): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' AND seq_last >= ? AND seq_first <= ? ORDER BY idx`,
      )
      .all(seqFrom, seqTo) as TxRow[];
  }

  /** The committed transaction holding `seq`, if any. */
  txContaining(seq: number): TxRow | undefined {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' AND seq_first <= ? AND seq_last >= ? ORDER BY idx LIMIT 1`,
      )
      .get(seq, seq) as TxRow | undefined;
  }

  /** The last committed transaction whose first write was captured at or before `timeUs`. */
  txAtOrBeforeTime(timeUs: number): TxRow | undefined {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed'
           AND (record_count > 0 OR kind = 'merged') AND time_first_us <= ? ORDER BY idx DESC LIMIT 1`,
      )
      .get(timeUs) as TxRow | undefined;
  }

  firstTx(): TxRow | undefined {
    return this.db.prepare(`SELECT ${TX_COLUMNS} FROM transactions ORDER BY idx LIMIT 1`).get() as
      TxRow | undefined;
  }

  // ---- The console's timeline (timeline.ts) ----
  // Capture time follows seq order, so the transactions overlapping a window of time are a run of
  // consecutive indexes: two seeks on the time index find it, and every query below reads only
  // the rows of that run (by rowid), not the whole table.

  /**
   * The run of transaction indexes that may overlap [fromUs, toUs): from the first one ending at
   * or after `fromUs` to the first one ending at or after `toUs` (or the last one).
   */
  private idxRun(fromUs: number, toUs: number): { first: number; last: number } | undefined {
    const seek = this.db.prepare(
      `SELECT idx FROM transactions WHERE time_last_us >= ? ORDER BY time_last_us, idx LIMIT 1`,
    );
    const first = (seek.get(fromUs) as { idx: number } | undefined)?.idx;
    if (first === undefined) return undefined;
    const last =
      (seek.get(toUs) as { idx: number } | undefined)?.idx ??
      (this.db.prepare('SELECT MAX(idx) AS idx FROM transactions').get() as { idx: number }).idx;
    return { first, last };
  }

  /** Committed transactions with records captured in [fromUs, toUs), oldest first. */
  txsInTime(fromUs: number, toUs: number, limit: number): TxRow[] {
    const run = this.idxRun(fromUs, toUs);
    if (!run) return [];
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE idx BETWEEN ? AND ? AND state = 'committed'
           AND record_count > 0 AND time_last_us >= ? AND time_first_us < ? ORDER BY idx LIMIT ?`,
      )
      .all(run.first, run.last, fromUs, toUs, limit) as TxRow[];
  }

  /** Committed transactions with writes (or thinned ones) after `afterIdx`, for the timeline. */
  txSummariesAfter(
    afterIdx: number,
    limit: number,
  ): Pick<
    TxRow,
    | 'idx'
    | 'kind'
    | 'timeFirstUs'
    | 'timeLastUs'
    | 'seqFirst'
    | 'seqLast'
    | 'recordCount'
    | 'redoBytes'
  >[] {
    return this.db
      .prepare(
        `SELECT idx, kind, time_first_us AS timeFirstUs, time_last_us AS timeLastUs,
           seq_first AS seqFirst, seq_last AS seqLast, record_count AS recordCount,
           redo_bytes AS redoBytes
         FROM transactions WHERE idx > ? AND state = 'committed'
           AND (record_count > 0 OR kind = 'merged') ORDER BY idx LIMIT ?`,
      )
      .all(afterIdx, limit) as ReturnType<Catalog['txSummariesAfter']>;
  }

  /** Committed transactions holding a seq at or after `seq`, oldest first (a seek on seq_last). */
  txsFromSeq(seq: number, limit: number): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE seq_last >= ? AND state = 'committed'
           AND (record_count > 0 OR kind = 'merged') ORDER BY seq_last, idx LIMIT ?`,
      )
      .all(seq, limit) as TxRow[];
  }

  /** Committed transactions holding a seq at or before `seq`, newest first. */
  txsBeforeSeq(seq: number, limit: number): TxRow[] {
    // The transaction holding `seq` is the first ending at or after it; the rest precede it.
    const holding = this.db
      .prepare(`SELECT idx FROM transactions WHERE seq_last >= ? ORDER BY seq_last, idx LIMIT 1`)
      .get(seq) as { idx: number } | undefined;
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE idx <= ? AND seq_first <= ?
           AND state = 'committed' AND (record_count > 0 OR kind = 'merged')
         ORDER BY idx DESC LIMIT ?`,
      )
      .all(holding?.idx ?? Number.MAX_SAFE_INTEGER, seq, limit) as TxRow[];
  }

  /** Thinned (merged) transactions whose time span overlaps [fromUs, toUs), oldest first. */
  mergedInTime(fromUs: number, toUs: number, limit: number): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE kind != 'redo' AND kind = 'merged'
           AND time_last_us >= ? AND time_first_us < ? ORDER BY idx LIMIT ?`,
      )
      .all(fromUs, toUs, limit) as TxRow[];
  }

  /**
   * Resync windows (a run of resync transactions and the resync-end closing it) that may overlap
   * [fromUs, toUs): the first transaction of each, the one closing it (none while it is still
   * arriving), and the capture time of the last write before it (0 when it is the first).
   */
  resyncWindows(
    fromUs: number,
    toUs: number,
    limit: number,
  ): { first: TxRow; last: TxRow | undefined; beforeUs: number }[] {
    // The partial index on resync transactions keeps this to them, however long the history.
    const starts = this.db
      .prepare(
        `SELECT s.idx AS idx, IFNULL(p.time_last_us, 0) AS beforeUs,
           (SELECT MIN(e.idx) FROM transactions e WHERE e.kind = 'resync-end' AND e.idx >= s.idx
              AND e.state = 'committed') AS endIdx
         FROM transactions s LEFT JOIN transactions p ON p.idx = s.idx - 1
         WHERE s.kind != 'redo' AND s.kind IN ('resync', 'resync-end') AND s.state = 'committed'
           AND (p.idx IS NULL OR p.kind != 'resync')
           AND IFNULL(p.time_last_us, s.time_first_us) < ?
         ORDER BY s.idx`,
      )
      .all(toUs) as { idx: number; beforeUs: number; endIdx: number | null }[];
    const windows: { first: TxRow; last: TxRow | undefined; beforeUs: number }[] = [];
    for (const start of starts) {
      const last = start.endIdx === null ? undefined : this.tx(start.endIdx);
      if (last && last.timeLastUs < fromUs) continue;
      windows.push({ first: this.tx(start.idx) as TxRow, last, beforeUs: start.beforeUs });
      if (windows.length >= limit) break;
    }
    return windows;
  }

  /** The capture times of the first and the last committed write, if any (two seeks). */
  timeSpan(): { firstUs: number; lastUs: number } | undefined {
    const edge = (order: 'ASC' | 'DESC'): number | undefined =>
      (
        this.db
          .prepare(
            `SELECT time_first_us AS firstUs, time_last_us AS lastUs FROM transactions
             WHERE state = 'committed' AND record_count > 0 ORDER BY idx ${order} LIMIT 1`,
          )
          .get() as { firstUs: number; lastUs: number } | undefined
      )?.[order === 'ASC' ? 'firstUs' : 'lastUs'];
    const firstUs = edge('ASC');
    const lastUs = edge('DESC');
    return firstUs === undefined || lastUs === undefined ? undefined : { firstUs, lastUs };
  }

  /**
   * What retention changes when it thins or drops history, cheaply (the partial index on
   * non-redo transactions): the first transaction, and the merged ones. Commits leave it as it is.
   */
  historyShape(): string {
    const first = this.db.prepare('SELECT MIN(idx) AS idx FROM transactions').get() as {
      idx: number | null;
    };
    const merged = this.db
      .prepare(
        `SELECT COUNT(*) AS n, IFNULL(SUM(idx), 0) AS idxSum, IFNULL(SUM(seq_first), 0) AS seqSum
         FROM transactions WHERE kind != 'redo' AND kind = 'merged'`,
      )
      .get() as { n: number; idxSum: number; seqSum: number };
    return `${first.idx ?? 0}:${merged.n}:${merged.idxSum}:${merged.seqSum}`;
  }

  views(): ViewRow[] {
    return this.db
      .prepare(
        'SELECT name, kind, seq, created_at AS createdAt FROM views ORDER BY created_at, name',
      )
      .all() as ViewRow[];
  }

  addView(row: ViewRow): void {
    try {
      this.db
        .prepare('INSERT INTO views (name, kind, seq, created_at) VALUES (?, ?, ?, ?)')
        .run(row.name, row.kind, row.seq, row.createdAt);
    } catch (error) {
      if ((error as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new RewindError(
          'REWIND_CONFLICT',
          `a snapshot or clone named "${row.name}" already exists`,
          { hint: 'pick another name or remove it with rewind rm' },
        );
      }
      throw error;
    }
  }

  updateViewSeq(name: string, seq: number): void {
    this.db.prepare('UPDATE views SET seq = ? WHERE name = ?').run(seq, name);
  }

  removeView(name: string): boolean {
    return this.db.prepare('DELETE FROM views WHERE name = ?').run(name).changes > 0;
  }

  bookmarks(): BookmarkRow[] {
    return this.db
      .prepare(`SELECT ${BOOKMARK_COLUMNS} FROM bookmarks ORDER BY seq, name`)
      .all() as BookmarkRow[];
  }

  bookmark(name: string): BookmarkRow | undefined {
    return this.db.prepare(`SELECT ${BOOKMARK_COLUMNS} FROM bookmarks WHERE name = ?`).get(name) as
      BookmarkRow | undefined;
  }

  addBookmark(row: BookmarkRow): void {
    try {
      this.db
        .prepare('INSERT INTO bookmarks (name, seq, time_us, created_at) VALUES (?, ?, ?, ?)')
        .run(row.name, row.seq, row.timeUs, row.createdAt);
    } catch (error) {
      if ((error as { code?: string }).code === 'SQLITE_CONSTRAINT_PRIMARYKEY') {
        throw new RewindError(
          'REWIND_CONFLICT',
          `a bookmark named "${row.name}" already exists (seq ${this.bookmark(row.name)?.seq ?? '?'})`,
          { hint: 'pick another name or remove it with rewind bookmark --remove' },
        );
      }
      throw error;
    }
  }

  removeBookmark(name: string): boolean {
    return this.db.prepare('DELETE FROM bookmarks WHERE name = ?').run(name).changes > 0;
  }

  /** Pins a bookmark ('forever' or until an ISO time) or unpins it (null); false when unknown. */
  pinBookmark(name: string, until: string | null): boolean {
    return (
      this.db.prepare('UPDATE bookmarks SET pinned_until = ? WHERE name = ?').run(until, name)
        .changes > 0
    );
  }

  // ---- Retention (retention.ts) ----

  /** Bytes of every committed transaction's redo and undo files: the journal on this host. */
  journalBytes(): number {
    if (this.journalCached === undefined) this.journalCached = this.journalBytesCounted();
    return this.journalCached;
  }

  /** journalBytes() counted from the rows now (the tests check the kept count against it). */
  journalBytesCounted(): number {
    const row = this.db
      .prepare(
        `SELECT IFNULL(SUM(redo_bytes + undo_bytes), 0) AS bytes FROM transactions WHERE state = 'committed'`,
      )
      .get() as { bytes: number };
    return row.bytes;
  }

  /** Journal bytes of transactions committed at or after `sinceIso` (the rate it grows at). */
  journalBytesSince(sinceIso: string): number {
    const row = this.db
      .prepare(
        `SELECT IFNULL(SUM(redo_bytes + undo_bytes), 0) AS bytes FROM transactions
           WHERE state = 'committed' AND kind != 'merged' AND committed_at >= ?`,
      )
      .get(sinceIso) as { bytes: number };
    return row.bytes;
  }

  /**
   * Swaps the committed transactions `firstIdx`..`lastIdx` for one merged transaction under
   * `lastIdx`, in one SQLite transaction: its undo (already durable) is `merged`, it spans their
   * seqs and capture times, it has no redo and no records of its own.
   */
  mergeTxs(firstIdx: number, lastIdx: number, merged: MergedUndo, thinnedAt: string): TxRow {
    const swap = this.db.transaction((): TxRow => {
      const rows = this.txsBetween(firstIdx, lastIdx);
      const first = rows[0];
      const last = rows[rows.length - 1];
      // Earlier merges took rows out, so indexes have gaps; seqs never do.
      const contiguous = rows.every(
        (row, i) => i === 0 || row.seqFirst === (rows[i - 1] as TxRow).seqLast + 1,
      );
      if (!first || !last || first.idx !== firstIdx || last.idx !== lastIdx || !contiguous) {
        throw new Error(`transactions ${firstIdx}..${lastIdx} are not one committed, gap-free run`);
      }
      this.db.prepare('DELETE FROM transactions WHERE idx >= ? AND idx < ?').run(firstIdx, lastIdx);
      this.db
        .prepare(
          `UPDATE transactions SET kind = 'merged', seq_first = ?, time_first_us = ?, record_count = 0,
             redo_bytes = 0, redo_crc = 0, undo_gen = ?, undo_bytes = ?, undo_crc = ?, first_idx = ?,
             tier = ?, thinned_at = ? WHERE idx = ?`,
        )
        .run(
          first.seqFirst,
          first.timeFirstUs,
          merged.undoGen,
          merged.undoBytes,
          merged.undoCrc,
          first.firstIdx ?? first.idx,
          merged.tier,
          thinnedAt,
          lastIdx,
        );
      return this.tx(lastIdx) as TxRow;
    });
    const row = swap();
    this.journalCached = undefined; // recounted at the next ask
    return row;
  }

  /**
   * Drops every committed transaction up to `lastIdx`, in one SQLite transaction, and records why:
   * the oldest restorable point becomes `lastIdx`'s last seq.
   */
  dropTxs(lastIdx: number, reason: string, at: string): { seqFirst: number; seqLast: number } {
    const drop = this.db.transaction(() => {
      const first = this.firstTx();
      const last = this.tx(lastIdx);
      if (!first || !last || last.state !== 'committed') {
        throw new Error(`no committed transaction ${lastIdx} to drop up to`);
      }
      this.db.prepare('DELETE FROM transactions WHERE idx <= ?').run(lastIdx);
      this.setMeta('oldestSeq', String(last.seqLast));
      this.setMeta('oldestTimeUs', String(last.timeLastUs));
      const previous = this.db
        .prepare(
          `SELECT id, reason, seq_last AS seqLast FROM retention_events ORDER BY id DESC LIMIT 1`,
        )
        .get() as { id: number; reason: string; seqLast: number } | undefined;
      if (previous && previous.reason === reason && previous.seqLast === first.seqFirst - 1) {
        this.db
          .prepare(
            'UPDATE retention_events SET seq_last = ?, time_last_us = ?, at = ? WHERE id = ?',
          )
          .run(last.seqLast, last.timeLastUs, at, previous.id);
      } else {
        this.db
          .prepare(
            `INSERT INTO retention_events (kind, seq_first, seq_last, time_first_us, time_last_us, reason, at)
               VALUES ('dropped', ?, ?, ?, ?, ?, ?)`,
          )
          .run(first.seqFirst, last.seqLast, first.timeFirstUs, last.timeLastUs, reason, at);
      }
      return { seqFirst: first.seqFirst, seqLast: last.seqLast };
    });
    const range = drop();
    this.journalCached = undefined;
    return range;
  }

  /** The oldest restorable point once history was dropped (undefined: nothing dropped yet). */
  oldestPoint(): { seq: number; timeUs: number } | undefined {
    const seq = this.getMeta('oldestSeq');
    if (seq === undefined) return undefined;
    return { seq: Number(seq), timeUs: Number(this.getMeta('oldestTimeUs') ?? 0) };
  }

  /** The drop that took point `seq` away (its records were seq + 1 on), if one did. */
  droppedAt(seq: number): RetentionEventRow | undefined {
    return this.db
      .prepare(
        `SELECT kind, seq_first AS seqFirst, seq_last AS seqLast, time_first_us AS timeFirstUs,
           time_last_us AS timeLastUs, reason, at FROM retention_events
         WHERE seq_first <= ? AND seq_last > ? ORDER BY id DESC LIMIT 1`,
      )
      .get(seq + 1, seq) as RetentionEventRow | undefined;
  }

  /** Committed transactions `firstIdx`..`lastIdx`, oldest first. */
  txsBetween(firstIdx: number, lastIdx: number): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' AND idx BETWEEN ? AND ? ORDER BY idx`,
      )
      .all(firstIdx, lastIdx) as TxRow[];
  }

  /** The oldest committed transactions, up to `limit`, whose last write is before `timeUs`. */
  committedTxsBefore(timeUs: number, limit: number): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' AND time_last_us < ?
           ORDER BY idx LIMIT ?`,
      )
      .all(timeUs, limit) as TxRow[];
  }

  /** The oldest committed transactions, up to `limit`. */
  oldestTxs(limit: number): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' ORDER BY idx LIMIT ?`,
      )
      .all(limit) as TxRow[];
  }

  /** The last seq of the newest merged transaction: every write after it is still a point. */
  lastMergedSeq(): number | undefined {
    const row = this.db
      .prepare(`SELECT MAX(seq_last) AS seq FROM transactions WHERE kind = 'merged'`)
      .get() as { seq: number | null };
    return row.seq ?? undefined;
  }

  /**
   * Per span of last-write times [fromUs, toUs): its transactions, the points they keep (every
   * record of an unmerged one, one per merged one), their bytes and their first and last times.
   */
  spanStats(
    fromUs: number,
    toUs: number,
  ): {
    transactions: number;
    points: number;
    bytes: number;
    firstUs: number | null;
    lastUs: number | null;
  } {
    return this.db
      .prepare(
        `SELECT COUNT(*) AS transactions,
           IFNULL(SUM(CASE WHEN kind = 'merged' THEN 1 ELSE record_count END), 0) AS points,
           IFNULL(SUM(redo_bytes + undo_bytes), 0) AS bytes,
           MIN(time_first_us) AS firstUs, MAX(time_last_us) AS lastUs
         FROM transactions WHERE state = 'committed' AND time_last_us >= ? AND time_last_us < ?`,
      )
      .get(fromUs, toUs) as {
      transactions: number;
      points: number;
      bytes: number;
      firstUs: number | null;
      lastUs: number | null;
    };
  }

  /** Merged transactions, oldest first (the undo generation of each is in its row). */
  mergedTxs(): TxRow[] {
    return this.db
      .prepare(`SELECT ${TX_COLUMNS} FROM transactions WHERE kind = 'merged' ORDER BY idx`)
      .all() as TxRow[];
  }

  // ---- The archive (archiving.ts) ----

  /** Committed transactions with per-write history after `afterIdx` (not merged), oldest first. */
  unarchivedTxs(afterIdx: number, limit: number): TxRow[] {
    return this.db
      .prepare(
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' AND idx > ?
           AND kind != 'merged' ORDER BY idx LIMIT ?`,
      )
      .all(afterIdx, limit) as TxRow[];
  }

  /** Bytes and count of committed, unmerged transactions after `afterIdx` (the backlog). */
  unarchivedTotals(afterIdx: number): { transactions: number; bytes: number } {
    return this.db
      .prepare(
        `SELECT COUNT(*) AS transactions, IFNULL(SUM(redo_bytes + undo_bytes), 0) AS bytes
           FROM transactions WHERE state = 'committed' AND idx > ? AND kind != 'merged'`,
      )
      .get(afterIdx) as { transactions: number; bytes: number };
  }

  /** The newest archived transaction, if any. */
  lastArchivedTx(): ArchiveTxRow | undefined {
    return this.db
      .prepare(`SELECT ${ARCHIVE_TX_COLUMNS} FROM archive_txs ORDER BY idx DESC LIMIT 1`)
      .get() as ArchiveTxRow | undefined;
  }

  /** Records an uploaded object and its transactions in one SQLite transaction. */
  recordArchiveObject(object: ArchiveObjectRow, txs: readonly ArchiveTxRow[]): void {
    const record = this.db.transaction(() => {
      this.db
        .prepare(
          `INSERT INTO archive_objects (key, first_idx, last_idx, seq_first, seq_last, time_first_us,
             time_last_us, tx_count, plain_bytes, stored_bytes, sha256, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        )
        .run(
          object.key,
          object.firstIdx,
          object.lastIdx,
          object.seqFirst,
          object.seqLast,
          object.timeFirstUs,
          object.timeLastUs,
          object.txCount,
          object.plainBytes,
          object.storedBytes,
          object.sha256,
          object.createdAt,
        );
      const insert = this.db.prepare(
        `INSERT INTO archive_txs (idx, kind, seq_first, seq_last, time_first_us, time_last_us,
           object_key, redo_offset, redo_length, redo_crc, undo_offset, undo_length, undo_crc)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      );
      for (const tx of txs) {
        insert.run(
          tx.idx,
          tx.kind,
          tx.seqFirst,
          tx.seqLast,
          tx.timeFirstUs,
          tx.timeLastUs,
          tx.objectKey,
          tx.redoOffset,
          tx.redoLength,
          tx.redoCrc,
          tx.undoOffset,
          tx.undoLength,
          tx.undoCrc,
        );
      }
    });
    record();
  }

  archiveObjects(): ArchiveObjectRow[] {
    return this.db
      .prepare(`SELECT ${ARCHIVE_OBJECT_COLUMNS} FROM archive_objects ORDER BY first_idx`)
      .all() as ArchiveObjectRow[];
  }

  /** The newest descriptor version recorded, if any. */
  latestArchiveSet(): ArchiveSetRow | undefined {
    return this.db
      .prepare(`SELECT ${ARCHIVE_SET_COLUMNS} FROM archive_sets ORDER BY version DESC LIMIT 1`)
      .get() as ArchiveSetRow | undefined;
  }

  archiveSet(key: string): ArchiveSetRow | undefined {
    return this.db
      .prepare(`SELECT ${ARCHIVE_SET_COLUMNS} FROM archive_sets WHERE key = ?`)
      .get(key) as ArchiveSetRow | undefined;
  }

  archiveSets(): ArchiveSetRow[] {
    return this.db
      .prepare(`SELECT ${ARCHIVE_SET_COLUMNS} FROM archive_sets ORDER BY version`)
      .all() as ArchiveSetRow[];
  }

  recordArchiveSet(row: ArchiveSetRow): void {
    this.db
      .prepare(
        `INSERT INTO archive_sets (version, key, volume_count, plain_sha256, stored_bytes, sha256,
           created_at) VALUES (?, ?, ?, ?, ?, ?, ?)`,
      )
      .run(
        row.version,
        row.key,
        row.volumeCount,
        row.plainSha256,
        row.storedBytes,
        row.sha256,
        row.createdAt,
      );
  }

  archiveObject(key: string): ArchiveObjectRow | undefined {
    return this.db
      .prepare(`SELECT ${ARCHIVE_OBJECT_COLUMNS} FROM archive_objects WHERE key = ?`)
      .get(key) as ArchiveObjectRow | undefined;
  }

  archiveTxsOf(key: string): ArchiveTxRow[] {
    return this.db
      .prepare(`SELECT ${ARCHIVE_TX_COLUMNS} FROM archive_txs WHERE object_key = ? ORDER BY idx`)
      .all(key) as ArchiveTxRow[];
  }

  /** Archived transactions holding seqs in [seqFrom, seqTo], oldest first. */
  archiveTxsBetweenSeqs(seqFrom: number, seqTo: number): ArchiveTxRow[] {
    return this.db
      .prepare(
        `SELECT ${ARCHIVE_TX_COLUMNS} FROM archive_txs WHERE seq_last >= ? AND seq_first <= ?
           ORDER BY idx`,
      )
      .all(seqFrom, seqTo) as ArchiveTxRow[];
  }

  /** The archived transaction holding `seq`, if any. */
  archiveTxContaining(seq: number): ArchiveTxRow | undefined {
    return this.db
      .prepare(
        `SELECT ${ARCHIVE_TX_COLUMNS} FROM archive_txs WHERE seq_first <= ? AND seq_last >= ?
           ORDER BY idx LIMIT 1`,
      )
      .get(seq, seq) as ArchiveTxRow | undefined;
  }

  /** The last archived transaction whose first write was captured at or before `timeUs`. */
  archiveTxAtOrBeforeTime(timeUs: number): ArchiveTxRow | undefined {
    return this.db
      .prepare(
        `SELECT ${ARCHIVE_TX_COLUMNS} FROM archive_txs WHERE time_first_us <= ?
           ORDER BY time_first_us DESC, idx DESC LIMIT 1`,
      )
      .get(timeUs) as ArchiveTxRow | undefined;
  }

  /** The oldest archived transaction, if any. */
  firstArchivedTx(): ArchiveTxRow | undefined {
    return this.db
      .prepare(`SELECT ${ARCHIVE_TX_COLUMNS} FROM archive_txs ORDER BY idx LIMIT 1`)
      .get() as ArchiveTxRow | undefined;
  }

  archiveTotals(): { objects: number; plainBytes: number; storedBytes: number; txs: number } {
    const objects = this.db
      .prepare(
        `SELECT COUNT(*) AS objects, IFNULL(SUM(plain_bytes), 0) AS plainBytes,
           IFNULL(SUM(stored_bytes), 0) AS storedBytes FROM archive_objects`,
      )
      .get() as { objects: number; plainBytes: number; storedBytes: number };
    const txs = this.db.prepare('SELECT COUNT(*) AS n FROM archive_txs').get() as { n: number };
    return { ...objects, txs: txs.n };
  }

  // ---- Full images in the archive (full-images.ts) ----

  /** The chunk row of `id` when the archive stores it (recorded only after its put resolved). */
  knownChunk(id: string): ArchiveChunkRow | undefined {
    return this.db
      .prepare(`SELECT ${ARCHIVE_CHUNK_COLUMNS} FROM archive_chunks WHERE id = ?`)
      .get(id) as ArchiveChunkRow | undefined;
  }

  /** Records a stored chunk; a chunk already recorded (same id, same content) is kept. */
  recordChunk(chunk: ArchiveChunkRow): void {
    this.db
      .prepare(
        `INSERT OR IGNORE INTO archive_chunks (id, key, plain_bytes, stored_bytes, created_at)
           VALUES (?, ?, ?, ?, ?)`,
      )
      .run(chunk.id, chunk.key, chunk.plainBytes, chunk.storedBytes, chunk.createdAt);
  }

  /**
   * Records a full whose manifest is stored, with the chunks it references, in one SQLite
   * transaction; every chunk must be recorded already. Returns its id.
   */
  recordFull(full: Omit<ArchiveFullRow, 'id'>, chunkIds: readonly string[]): number {
    const record = this.db.transaction((): number => {
      const id = Number(
        this.db
          .prepare(
            `INSERT INTO archive_fulls (seq, time_us, manifest_key, volumes, logical_bytes,
               chunk_count, new_chunks, stored_bytes, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)`,
          )
          .run(
            full.seq,
            full.timeUs,
            full.manifestKey,
            JSON.stringify(full.volumes),
            full.logicalBytes,
            full.chunkCount,
            full.newChunks,
            full.storedBytes,
            full.createdAt,
          ).lastInsertRowid,
      );
      const known = this.db.prepare('SELECT 1 FROM archive_chunks WHERE id = ?');
      const insert = this.db.prepare(
        'INSERT OR IGNORE INTO archive_full_chunks (full_id, chunk_id) VALUES (?, ?)',
      );
      for (const chunkId of chunkIds) {
        if (known.get(chunkId) === undefined) {
          throw new RewindError(
            'REWIND_CONFLICT',
            `full image ${full.manifestKey} references chunk ${chunkId}, which is not recorded`,
          );
        }
        insert.run(id, chunkId);
      }
      return id;
    });
    return record();
  }

  /** Every full image, oldest first. */
  fulls(): ArchiveFullRow[] {
    const rows = this.db
      .prepare(`SELECT ${ARCHIVE_FULL_COLUMNS} FROM archive_fulls ORDER BY seq, id`)
      .all() as (Omit<ArchiveFullRow, 'volumes'> & { volumes: string })[];
    return rows.map(fullRow);
  }

  /** The full image with the manifest `key`, if recorded. */
  fullByKey(key: string): ArchiveFullRow | undefined {
    const row = this.db
      .prepare(`SELECT ${ARCHIVE_FULL_COLUMNS} FROM archive_fulls WHERE manifest_key = ?`)
      .get(key) as (Omit<ArchiveFullRow, 'volumes'> & { volumes: string }) | undefined;
    return row && fullRow(row);
  }

  /** Full images at or before `seq`, newest first (a caller picks one covering its volumes). */
  fullsAtOrBefore(seq: number): ArchiveFullRow[] {
    const rows = this.db
      .prepare(
        `SELECT ${ARCHIVE_FULL_COLUMNS} FROM archive_fulls WHERE seq <= ? ORDER BY seq DESC, id DESC`,
      )
      .all(seq) as (Omit<ArchiveFullRow, 'volumes'> & { volumes: string })[];
    return rows.map(fullRow);
  }

  /** The newest full image at or before `seq`, if any. */
  fullAtOrBefore(seq: number): ArchiveFullRow | undefined {
    return this.fullsAtOrBefore(seq)[0];
  }

  /** The newest full image (by seq), if any. */
  newestFull(): ArchiveFullRow | undefined {
    return this.fullAtOrBefore(Number.MAX_SAFE_INTEGER);
  }

  /** The newest full image by when it was taken (the schedule counts from it). */
  latestTakenFull(): ArchiveFullRow | undefined {
    const row = this.db
      .prepare(`SELECT ${ARCHIVE_FULL_COLUMNS} FROM archive_fulls ORDER BY id DESC LIMIT 1`)
      .get() as (Omit<ArchiveFullRow, 'volumes'> & { volumes: string }) | undefined;
    return row && fullRow(row);
  }

  /** The ids of the chunks a full image references. */
  fullChunkIds(fullId: number): string[] {
    return (
      this.db
        .prepare(
          'SELECT chunk_id AS id FROM archive_full_chunks WHERE full_id = ? ORDER BY chunk_id',
        )
        .all(fullId) as { id: string }[]
    ).map((row) => row.id);
  }

  /** Stored bytes of the chunks a full image references. */
  fullChunkStoredBytes(fullId: number): number {
    const row = this.db
      .prepare(
        `SELECT IFNULL(SUM(c.stored_bytes), 0) AS bytes FROM archive_full_chunks f
           JOIN archive_chunks c ON c.id = f.chunk_id WHERE f.full_id = ?`,
      )
      .get(fullId) as { bytes: number };
    return row.bytes;
  }

  /** Every stored chunk, by id. */
  archiveChunks(): ArchiveChunkRow[] {
    return this.db
      .prepare(`SELECT ${ARCHIVE_CHUNK_COLUMNS} FROM archive_chunks ORDER BY id`)
      .all() as ArchiveChunkRow[];
  }

  /** Counts of full images and chunks, and the chunks' stored bytes. */
  fullTotals(): { fulls: number; chunks: number; chunkStoredBytes: number } {
    const fulls = this.db.prepare('SELECT COUNT(*) AS n FROM archive_fulls').get() as { n: number };
    const chunks = this.db
      .prepare('SELECT COUNT(*) AS n, IFNULL(SUM(stored_bytes), 0) AS bytes FROM archive_chunks')
      .get() as { n: number; bytes: number };
    return { fulls: fulls.n, chunks: chunks.n, chunkStoredBytes: chunks.bytes };
  }

  addRestore(spec: string, seq: number): number {
    return Number(
      this.db
        .prepare(`INSERT INTO restores (spec, seq, state, started_at) VALUES (?, ?, 'running', ?)`)
        .run(spec, seq, new Date().toISOString()).lastInsertRowid,
    );
  }

  restore(id: number): RestoreRow | undefined {
    return this.db.prepare(`SELECT ${RESTORE_COLUMNS} FROM restores WHERE id = ?`).get(id) as
      RestoreRow | undefined;
  }

  restores(): RestoreRow[] {
    return this.db
      .prepare(`SELECT ${RESTORE_COLUMNS} FROM restores ORDER BY id`)
      .all() as RestoreRow[];
  }

  runningRestores(): RestoreRow[] {
    return this.db
      .prepare(`SELECT ${RESTORE_COLUMNS} FROM restores WHERE state = 'running' ORDER BY id`)
      .all() as RestoreRow[];
  }

  updateRestore(
    id: number,
    fields: Partial<
      Pick<RestoreRow, 'state' | 'bytesTotal' | 'bytesDone' | 'seqFirst' | 'seqLast' | 'message'>
    >,
  ): void {
    const row = this.restore(id);
    if (!row) return;
    const next = { ...row, ...fields };
    const finishedAt =
      next.state === 'running' ? null : (row.finishedAt ?? new Date().toISOString());
    this.db
      .prepare(
        'UPDATE restores SET state = ?, bytes_total = ?, bytes_done = ?, seq_first = ?, seq_last = ?, message = ?, finished_at = ? WHERE id = ?',
      )
      .run(
        next.state,
        next.bytesTotal,
        next.bytesDone,
        next.seqFirst,
        next.seqLast,
        next.message,
        finishedAt,
        id,
      );
  }

  apiTokens(): ApiTokenRow[] {
    return this.db
      .prepare('SELECT name, role, sha256, created_at AS createdAt FROM api_tokens ORDER BY name')
      .all() as ApiTokenRow[];
  }

  /** Adds a token; a name or hash already there is refused (REWIND_CONFLICT). */
  addApiToken(row: ApiTokenRow): void {
    const taken = this.db.prepare('SELECT 1 FROM api_tokens WHERE name = ?').get(row.name);
    if (taken) throw new RewindError('REWIND_CONFLICT', `a token named "${row.name}" exists`);
    this.db
      .prepare('INSERT INTO api_tokens (name, role, sha256, created_at) VALUES (?, ?, ?, ?)')
      .run(row.name, row.role, row.sha256, row.createdAt);
  }

  /** Removes a token; false when there was none of that name. */
  removeApiToken(name: string): boolean {
    return this.db.prepare('DELETE FROM api_tokens WHERE name = ?').run(name).changes > 0;
  }

  /** Appends to the audit log, keeping at most `rowsMax` rows (the oldest go first). */
  appendAudit(row: Omit<AuditRow, 'id'>, rowsMax: number): void {
    const inserted = this.db
      .prepare(
        'INSERT INTO audit (at, token, method, route, summary, status) VALUES (?, ?, ?, ?, ?, ?)',
      )
      .run(row.at, row.token, row.method, row.route, row.summary, row.status);
    const id = Number(inserted.lastInsertRowid);
    if (id > rowsMax) this.db.prepare('DELETE FROM audit WHERE id <= ?').run(id - rowsMax);
  }

  /** The newest `limit` audit rows, newest first. */
  audit(limit: number): AuditRow[] {
    return this.db
      .prepare(
        'SELECT id, at, token, method, route, summary, status FROM audit ORDER BY id DESC LIMIT ?',
      )
      .all(limit) as AuditRow[];
  }

  // ---- The archive's retention (archive-retention.ts) ----

  /**
   * Forgets what the archive's policy deletes, in one SQLite transaction: the batch objects
   * under `objectKeys` and their transactions, the full images `fullIds` and their references,
   * and the chunks no full image references any more. Every object key forgotten is queued in
   * archive_deletions, so a crash before the store's deletes leaves them to be deleted at the
   * next start rather than stored for ever. Returns what was queued.
   */
  forgetArchived(
    objectKeys: readonly string[],
    fullIds: readonly number[],
    reason: string,
  ): { objects: number; txs: number; fulls: number; chunks: number; keys: string[] } {
    const run = this.db.transaction(() => {
      const at = new Date().toISOString();
      const queue = this.db.prepare(
        'INSERT OR IGNORE INTO archive_deletions (key, reason, at) VALUES (?, ?, ?)',
      );
      const keys: string[] = [];
      let txs = 0;
      let objects = 0;
      for (const key of objectKeys) {
        txs += this.db.prepare('DELETE FROM archive_txs WHERE object_key = ?').run(key).changes;
        objects += this.db.prepare('DELETE FROM archive_objects WHERE key = ?').run(key).changes;
        queue.run(key, reason, at);
        keys.push(key);
      }
      let fulls = 0;
      for (const id of fullIds) {
        const row = this.db
          .prepare('SELECT manifest_key AS key FROM archive_fulls WHERE id = ?')
          .get(id) as { key: string } | undefined;
        if (row === undefined) continue;
        this.db.prepare('DELETE FROM archive_full_chunks WHERE full_id = ?').run(id);
        this.db.prepare('DELETE FROM archive_fulls WHERE id = ?').run(id);
        queue.run(row.key, reason, at);
        keys.push(row.key);
        fulls += 1;
      }
      const orphans = this.db
        .prepare(
          `SELECT id, key FROM archive_chunks WHERE NOT EXISTS
             (SELECT 1 FROM archive_full_chunks r WHERE r.chunk_id = archive_chunks.id)`,
        )
        .all() as { id: string; key: string }[];
      const forget = this.db.prepare('DELETE FROM archive_chunks WHERE id = ?');
      for (const chunk of orphans) {
        forget.run(chunk.id);
        queue.run(chunk.key, `${reason} (no full image references it)`, at);
        keys.push(chunk.key);
      }
      return { objects, txs, fulls, chunks: orphans.length, keys };
    });
    return run();
  }

  /** Object keys the catalog forgot and the store may still hold, oldest first. */
  pendingArchiveDeletions(limit: number): { key: string; reason: string; at: string }[] {
    return this.db
      .prepare('SELECT key, reason, at FROM archive_deletions ORDER BY at, key LIMIT ?')
      .all(limit) as { key: string; reason: string; at: string }[];
  }

  pendingArchiveDeletionCount(): number {
    return (this.db.prepare('SELECT COUNT(*) AS n FROM archive_deletions').get() as { n: number })
      .n;
  }

  /** The store deleted these keys. */
  archiveDeletionsDone(keys: readonly string[]): void {
    const done = this.db.prepare('DELETE FROM archive_deletions WHERE key = ?');
    this.db.transaction(() => {
      for (const key of keys) done.run(key);
    })();
  }

  close(): void {
    this.db.close();
  }
}
