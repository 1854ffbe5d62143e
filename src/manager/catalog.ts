// The manager's catalog in SQLite (WAL): the volume set, its volumes, every transaction with its
// durable state, views and bookmarks. The single source of truth for what is committed.
import Database from 'better-sqlite3';
import { RewindError } from '../core/index.js';

export type TxState = 'received' | 'undo-saved' | 'applied' | 'committed';
/** `resync-end` is the last transaction of a resync: its seqLast is consistent again. */
export type TxKind = 'redo' | 'resync' | 'resync-end';

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
CREATE TABLE IF NOT EXISTS views (
  name TEXT PRIMARY KEY, kind TEXT NOT NULL, seq INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS bookmarks (
  name TEXT PRIMARY KEY, seq INTEGER NOT NULL, time_us INTEGER NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS restores (
  id INTEGER PRIMARY KEY, spec TEXT NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL,
  bytes_total INTEGER NOT NULL DEFAULT 0, bytes_done INTEGER NOT NULL DEFAULT 0,
  seq_first INTEGER, seq_last INTEGER, message TEXT, started_at TEXT NOT NULL, finished_at TEXT);
`;

export interface BookmarkRow {
  name: string;
  seq: number;
  timeUs: number;
  createdAt: string;
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
  undo_bytes AS undoBytes, undo_crc AS undoCrc, state, received_at AS receivedAt, committed_at AS committedAt`;

export class Catalog {
  private readonly db: Database.Database;

  /** Opens the catalog in `file`, or in an open database (the simulation's in-memory one). */
  constructor(file: string | Database.Database) {
    this.db = typeof file === 'string' ? new Database(file) : file;
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL'); // a commit is the durable point of a transaction
    this.db.exec(SCHEMA);
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

  insertTx(row: Omit<TxRow, 'committedAt'>): void {
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
  }

  setState(idx: number, state: TxState): void {
    const committedAt = state === 'committed' ? new Date().toISOString() : null;
    this.db
      .prepare('UPDATE transactions SET state = ?, committed_at = ? WHERE idx = ?')
      .run(state, committedAt, idx);
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
        `SELECT ${TX_COLUMNS} FROM transactions WHERE state = 'committed' AND record_count > 0 AND time_first_us <= ? ORDER BY idx DESC LIMIT 1`,
      )
      .get(timeUs) as TxRow | undefined;
  }

  firstTx(): TxRow | undefined {
    return this.db.prepare(`SELECT ${TX_COLUMNS} FROM transactions ORDER BY idx LIMIT 1`).get() as
      TxRow | undefined;
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
      .prepare(
        'SELECT name, seq, time_us AS timeUs, created_at AS createdAt FROM bookmarks ORDER BY seq, name',
      )
      .all() as BookmarkRow[];
  }

  bookmark(name: string): BookmarkRow | undefined {
    return this.db
      .prepare(
        'SELECT name, seq, time_us AS timeUs, created_at AS createdAt FROM bookmarks WHERE name = ?',
      )
      .get(name) as BookmarkRow | undefined;
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

  close(): void {
    this.db.close();
  }
}
