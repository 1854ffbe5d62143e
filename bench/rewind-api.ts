// Rewind as the benchmark sees it from outside: its public HTTP API (status, seal, views, log; with
// the API token from the data dir when the server made one) and its manager's SQLite catalog, read
// after the process stopped, for the transactions' timestamps.
import Database from 'better-sqlite3';
import fs from 'node:fs';
import path from 'node:path';
import { sleep } from './processes.js';

export interface Status {
  agentConnected: boolean;
  seqCaptured: number;
  seqCommitted: number;
  lagWrites: number;
  lagSeconds: number;
  spoolBytes: number;
}

export interface LogEntry {
  seq: number;
  /** Capture time, ISO-8601 with microseconds. */
  time: string;
  volume: string;
  kind: string;
  offset: number;
  length: number;
  resync: boolean;
}

/** The figures of GET /api/retention the soak reads. */
export interface RetentionFigures {
  journalBytes: number;
  journalBytesMax: number;
  oldestSeq: number;
  everyWriteFromSeq: number;
  alerts: { level: string; message: string }[];
  steps: { merges: number; drops: number; freedBytes: number; lastError: string | null };
}

export interface Transaction {
  idx: number;
  seqFirst: number;
  seqLast: number;
  recordCount: number;
  redoBytes: number;
  receivedAtMs: number;
  committedAtMs: number;
}

const POLL_MS = 100;

export class RewindApi {
  readonly base: string;
  private readonly token: string | undefined;

  /** `dataDir` is where the server keeps its API token (DATA/api-token), when it requires one. */
  constructor(base: string, dataDir: string) {
    this.base = base.replace(/\/$/, '');
    const tokenFile = path.join(dataDir, 'api-token');
    this.token = fs.existsSync(tokenFile) ? fs.readFileSync(tokenFile, 'utf8').trim() : undefined;
  }

  private async call(method: string, route: string, body?: object): Promise<Response> {
    const headers: Record<string, string> = {
      ...(body ? { 'content-type': 'application/json' } : {}),
      ...(this.token ? { authorization: `Bearer ${this.token}` } : {}),
    };
    const response = await fetch(`${this.base}${route}`, {
      method,
      headers,
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
    if (!response.ok)
      throw new Error(`${method} ${route}: HTTP ${response.status} ${await response.text()}`);
    return response;
  }

  async status(): Promise<Status> {
    return (await (await this.call('GET', '/api/status')).json()) as Status;
  }

  /** Seals the active segment and returns once everything captured before is committed. */
  async sealAndWait(): Promise<void> {
    await this.call('POST', '/api/seal', { wait: true });
  }

  /** Creates a snapshot at `seq` and returns the seconds the API call took. */
  async createSnapshot(name: string, seq: number): Promise<number> {
    const began = performance.now();
    await this.call('POST', '/api/views', { name, kind: 'snapshot', at: String(seq) });
    return (performance.now() - began) / 1000;
  }

  async removeView(name: string): Promise<void> {
    await this.call('DELETE', `/api/views/${encodeURIComponent(name)}`);
  }

  /** GET /api/retention: the journal, its limits, the oldest point, the every-write window. */
  async retention(): Promise<RetentionFigures> {
    return (await (await this.call('GET', '/api/retention')).json()) as RetentionFigures;
  }

  /** The capture time (epoch ms) of the write a POINT resolves to; undefined at seq 0. */
  async pointTimeMs(point: string): Promise<number | undefined> {
    const answer = (await (
      await this.call('GET', `/api/points/resolve?at=${encodeURIComponent(point)}`)
    ).json()) as { seq: number; time: string | null };
    return answer.time === null ? undefined : captureTimeMs(answer.time);
  }

  async log(): Promise<LogEntry[]> {
    const text = await (await this.call('GET', '/api/log')).text();
    return text
      .split('\n')
      .filter((line) => line.length > 0)
      .map((line) => JSON.parse(line) as LogEntry);
  }

  /** Waits until at least `seq` writes are captured and all of them committed, without sealing. */
  async waitCommitted(seq: number, timeoutMs: number): Promise<Status> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const status = await this.status();
      if (status.seqCaptured >= seq && status.seqCommitted === status.seqCaptured) return status;
      if (Date.now() > deadline)
        throw new Error(
          `Rewind did not commit seq ${seq} within ${timeoutMs} ms: ${JSON.stringify(status)}`,
        );
      await sleep(POLL_MS);
    }
  }
}

/** Parses a capture time such as 2026-11-24T15:03:12.123456Z into fractional epoch milliseconds. */
export function captureTimeMs(iso: string): number {
  const match = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$/.exec(iso);
  if (!match) throw new Error(`unexpected capture time ${iso}`);
  const fraction = match[2] ?? '0';
  return Date.parse(`${match[1] ?? ''}Z`) + Number(`0.${fraction}`) * 1000;
}

/** The committed transactions of a manager data directory (the process must have stopped). */
export function readTransactions(dataDir: string): Transaction[] {
  const db = new Database(path.join(dataDir, 'manager', 'catalog.sqlite'), {
    readonly: true,
    fileMustExist: true,
  });
  try {
    const rows = db
      .prepare(
        `SELECT idx, seq_first AS seqFirst, seq_last AS seqLast, record_count AS recordCount, redo_bytes AS redoBytes,
           received_at AS receivedAt, committed_at AS committedAt
         FROM transactions WHERE state = 'committed' ORDER BY idx`,
      )
      .all() as (Omit<Transaction, 'receivedAtMs' | 'committedAtMs'> & {
      receivedAt: string;
      committedAt: string;
    })[];
    return rows.map(({ receivedAt, committedAt, ...rest }) => ({
      ...rest,
      receivedAtMs: Date.parse(receivedAt),
      committedAtMs: Date.parse(committedAt),
    }));
  } finally {
    db.close();
  }
}

/** The commit time of the transaction holding each seq, by binary search over `txs` (ascending). */
export function commitTimeOf(txs: readonly Transaction[], seq: number): number | undefined {
  let low = 0;
  let high = txs.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    const tx = txs[middle] as Transaction;
    if (seq < tx.seqFirst) high = middle - 1;
    else if (seq > tx.seqLast) low = middle + 1;
    else return tx.committedAtMs;
  }
  return undefined;
}

/** True while the agent's spool still has an active (unsealed) segment. */
export function hasActiveSegment(agentDataDir: string): boolean {
  const spool = path.join(agentDataDir, 'agent', 'spool');
  return (
    fs.existsSync(spool) && fs.readdirSync(spool).some((name) => name.endsWith('.redo.active'))
  );
}
