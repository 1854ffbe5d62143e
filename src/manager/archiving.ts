// The archiver: committed transactions, in order, packed into batch objects (redo and undo as
// stored here, plus an index) and written once to the archive store; the catalog records every
// object and every archived transaction, so steady running needs no LIST. A store that is down
// is waited for with a capped back-off (nothing is lost: the journal keeps the backlog, and
// retention keeps what is not archived yet); a refusal that retrying will not change (AUTH, KEY,
// CONFIG) stops archiving with an error alert and is tried again after the idle interval.
import crypto from 'node:crypto';
import fsp from 'node:fs/promises';
import {
  decodeObject,
  encodeBatch,
  batchKey,
  archiveKeyId,
  descriptorKey,
  encodeDescriptor,
  CodecThread,
  type BatchTx,
  type ObjectStore,
  type StoreCapabilities,
} from '../archive/index.js';
import {
  errorCode,
  errorMessage,
  rethrowIfBug,
  RewindError,
  type LogFunction,
} from '../core/index.js';
import type { ArchiveRetentionStatus } from './archive-retention.js';
import type { ArchivePolicy } from './archive-retention-policy.js';
import type { ArchiveTxRow, Catalog, TxRow } from './catalog.js';
import type { TxFiles } from './txfiles.js';

/** A batch closes at this many plain bytes (redo and undo as stored) ... */
export const ARCHIVE_BATCH_BYTES_DEFAULT = 64 * 1024 * 1024;
/** ... or this long after its first transaction committed, whichever comes first. */
export const ARCHIVE_BATCH_MS_DEFAULT = 10_000;
/** The first wait after the store was unavailable; doubled each time up to the cap. */
const RETRY_MS_FIRST = 1000;
export const ARCHIVE_RETRY_MS_MAX_DEFAULT = 60_000;
/** After AUTH, KEY or CONFIG refusals archiving stops; it is tried again after this long. */
export const ARCHIVE_IDLE_RETRY_MS_DEFAULT = 10 * 60_000;
/** Transactions read from the catalog per batch at most. */
const BATCH_TXS_READ_MAX = 4096;
/** Other names tried when an object under a batch's key exists with other content. */
const KEY_VARIANTS_MAX = 8;

export interface ArchiveSettings {
  store: ObjectStore;
  /** The archive key (32 bytes): every object is encrypted with it. */
  key: Buffer | undefined;
  batchBytesMax?: number;
  batchMs?: number;
  retryMsMax?: number;
  idleRetryMs?: number;
  /** Bound on DATA/archive-cache, where objects for points older than the journal go. */
  cacheBytesMax?: number;
  /** The archive's own retention policy (DEFAULT_ARCHIVE_POLICY when not given). */
  policy?: ArchivePolicy;
  /** How often the archive's policy is applied (ARCHIVE_RETENTION_INTERVAL_MS_DEFAULT). */
  retentionIntervalMs?: number;
  /** A full image this long after the newest one (FULL_EVERY_MS_DEFAULT); null: no schedule. */
  fullEveryMs?: number | null;
}

export interface ArchiverHost {
  catalog: Catalog;
  txFiles: TxFiles;
  log: LogFunction;
}

export type ArchiverState =
  'starting' | 'idle' | 'batching' | 'uploading' | 'waiting' | 'stopped' | 'closed';

export interface ArchiveStatus {
  url: string;
  state: ArchiverState;
  capabilities: StoreCapabilities | null;
  encryption: { enabled: boolean; keyId: string | null };
  /** Every transaction up to this seq is archived or was dropped before it could be. */
  archivedThroughSeq: number;
  archivedThroughTime: string | null;
  /** The oldest seq the archive holds history after (its first transaction's seqFirst - 1). */
  archivedFromSeq: number | null;
  backlog: { transactions: number; bytes: number };
  objects: number;
  plainBytes: number;
  storedBytes: number;
  /** Plain bytes over stored bytes (1 when nothing is stored). */
  compressionRatio: number;
  requests: { put: number; get: number; head: number };
  batch: { bytesMax: number; ms: number };
  lastError: string | null;
  lastErrorAt: string | null;
  alerts: { level: 'warn' | 'error'; message: string }[];
  /** The archive's own policy and what it has deleted (added by the manager). */
  retention?: ArchiveRetentionStatus;
}

/**
 * A refusal that waiting will not change: archiving stops (and says so) rather than retrying
 * in a loop.
 */
function isLasting(error: unknown): boolean {
  const code = errorCode(error);
  return (
    code === 'REWIND_ARCHIVE_AUTH' || code === 'REWIND_ARCHIVE_KEY' || code === 'REWIND_CONFIG'
  );
}

export class Archiver {
  private readonly host: ArchiverHost;
  private readonly settings: Required<
    Omit<
      ArchiveSettings,
      'key' | 'cacheBytesMax' | 'policy' | 'retentionIntervalMs' | 'fullEveryMs'
    >
  > & {
    key: Buffer | undefined;
  };
  private stateNow: ArchiverState = 'starting';
  private capabilities: StoreCapabilities | undefined;
  private loop: Promise<void> | undefined;
  private closed = false;
  private wake: (() => void) | undefined;
  private retryMs = RETRY_MS_FIRST;
  private lastError: { message: string; at: string } | undefined;
  private requests = { put: 0, get: 0, head: 0 };
  /** Batches written (the tests wait for them). */
  batches = 0;
  private readonly codec = new CodecThread();

  constructor(host: ArchiverHost, settings: ArchiveSettings) {
    this.host = host;
    this.settings = {
      store: settings.store,
      key: settings.key,
      batchBytesMax: settings.batchBytesMax ?? ARCHIVE_BATCH_BYTES_DEFAULT,
      batchMs: settings.batchMs ?? ARCHIVE_BATCH_MS_DEFAULT,
      retryMsMax: settings.retryMsMax ?? ARCHIVE_RETRY_MS_MAX_DEFAULT,
      idleRetryMs: settings.idleRetryMs ?? ARCHIVE_IDLE_RETRY_MS_DEFAULT,
    };
  }

  get store(): ObjectStore {
    return this.settings.store;
  }

  get key(): Buffer | undefined {
    return this.settings.key;
  }

  /** The most a retry waits (full images retry their requests the same way). */
  get retryMsMax(): number {
    return this.settings.retryMsMax;
  }

  get state(): ArchiverState {
    return this.stateNow;
  }

  /** Counts a request made for someone else (verify, old-point fetches). */
  counted(kind: 'put' | 'get' | 'head'): void {
    this.requests[kind] += 1;
  }

  /**
   * Refuses a start whose archive or key does not match what the catalog recorded: another
   * store URL once objects are recorded, a key other than the one that encrypted them, or no key
   * for an encrypted archive (never plaintext when a key was asked for before). Then records
   * both, so the next start is checked against them.
   */
  static checkAgainstCatalog(catalog: Catalog, settings: ArchiveSettings): void {
    const url = settings.store.url;
    const keyId = settings.key ? archiveKeyId(settings.key) : 'none';
    const knownUrl = catalog.getMeta('archiveUrl');
    const knownKeyId = catalog.getMeta('archiveKeyId');
    const hasObjects = catalog.archiveTotals().objects > 0;
    if (hasObjects && knownUrl !== undefined && knownUrl !== url) {
      throw new RewindError(
        'REWIND_CONFIG',
        `the archive recorded in this catalog is ${knownUrl}, not ${url}`,
        { hint: `give --archive ${knownUrl}` },
      );
    }
    if (knownKeyId !== undefined && knownKeyId !== keyId) {
      const detail =
        knownKeyId === 'none'
          ? `its objects are not encrypted, and a key (id ${keyId}) was given`
          : keyId === 'none'
            ? `its objects are encrypted with key id ${knownKeyId}, and no key was given`
            : `wrong key: its objects are encrypted with key id ${knownKeyId}, the key given has id ${keyId}`;
      throw new RewindError('REWIND_ARCHIVE_KEY', `archive ${url}: ${detail}`, {
        hint:
          knownKeyId === 'none'
            ? 'start without --archive-key-file, or use a new archive for encrypted objects'
            : 'give --archive-key-file with the key the archive was written with',
      });
    }
    catalog.setMeta('archiveUrl', url);
    catalog.setMeta('archiveKeyId', keyId);
  }

  start(): void {
    if (this.loop !== undefined) return;
    this.loop = this.run();
  }

  /** A transaction committed: a waiting batch may close sooner. */
  committed(): void {
    if (this.stateNow === 'idle' || this.stateNow === 'batching') this.wake?.();
  }

  async stop(): Promise<void> {
    this.closed = true;
    this.wake?.();
    await this.loop;
    await this.codec.close();
    this.stateNow = 'closed';
  }

  /** Every transaction up to this seq is archived (or was dropped before it could be). */
  archivedThroughSeq(): number {
    return this.host.catalog.lastArchivedTx()?.seqLast ?? 0;
  }

  /** Runs until everything committed now is archived, or the deadline (tests, `rewind seal`). */
  async drain(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const target = this.host.catalog.unarchivedTxs(this.lastIdx(), BATCH_TXS_READ_MAX).at(-1)?.idx;
    if (target === undefined) return;
    const saved = this.settings.batchMs;
    this.settings.batchMs = 0;
    try {
      this.wake?.();
      while (this.lastIdx() < target) {
        if (Date.now() > deadline) {
          throw new RewindError(
            'REWIND_BUSY',
            `archiving did not reach transaction ${target} within ${timeoutMs} ms (${this.lastError?.message ?? this.stateNow})`,
          );
        }
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    } finally {
      this.settings.batchMs = saved;
    }
  }

  status(): ArchiveStatus {
    const catalog = this.host.catalog;
    const totals = catalog.archiveTotals();
    const last = catalog.lastArchivedTx();
    const first = catalog.firstArchivedTx();
    const alerts: ArchiveStatus['alerts'] = [];
    if (this.stateNow === 'stopped' && this.lastError) {
      alerts.push({ level: 'error', message: `archiving stopped: ${this.lastError.message}` });
    } else if (this.stateNow === 'waiting' && this.lastError) {
      alerts.push({
        level: 'warn',
        message: `the archive is unavailable, archiving retries: ${this.lastError.message}`,
      });
    }
    return {
      url: this.settings.store.url,
      state: this.stateNow,
      capabilities: this.capabilities ?? null,
      encryption: {
        enabled: this.settings.key !== undefined,
        keyId: this.settings.key ? archiveKeyId(this.settings.key) : null,
      },
      archivedThroughSeq: last?.seqLast ?? 0,
      archivedThroughTime: last ? new Date(last.timeLastUs / 1000).toISOString() : null,
      archivedFromSeq: first ? first.seqFirst - 1 : null,
      backlog: catalog.unarchivedTotals(last?.idx ?? 0),
      objects: totals.objects,
      plainBytes: totals.plainBytes,
      storedBytes: totals.storedBytes,
      compressionRatio:
        totals.storedBytes > 0
          ? Math.round((totals.plainBytes / totals.storedBytes) * 100) / 100
          : 1,
      requests: { ...this.requests },
      batch: { bytesMax: this.settings.batchBytesMax, ms: this.settings.batchMs },
      lastError: this.lastError?.message ?? null,
      lastErrorAt: this.lastError?.at ?? null,
      alerts,
    };
  }

  // ---- the loop ----

  private lastIdx(): number {
    return this.host.catalog.lastArchivedTx()?.idx ?? 0;
  }

  private async run(): Promise<void> {
    while (!this.closed) {
      let waitMs: number | undefined;
      try {
        if (this.capabilities === undefined) await this.probe();
        waitMs = await this.step();
        this.retryMs = RETRY_MS_FIRST;
      } catch (error) {
        rethrowIfBug(error);
        waitMs = this.failed(error);
      }
      if (waitMs !== 0 && !this.closed) await this.sleep(waitMs);
    }
  }

  private async probe(): Promise<void> {
    const capabilities = await this.settings.store.probe();
    this.capabilities = capabilities;
    this.host.log(
      'info',
      `archive ${this.settings.store.url}: conditional writes ${capabilities.conditionalWrite ? 'yes' : 'no'}, object lock ${capabilities.objectLock ? 'enforced' : 'no'}, encryption ${this.settings.key ? `on (key id ${archiveKeyId(this.settings.key)})` : 'off'}`,
    );
  }

  /** How long to wait after a failure: capped back-off, or the idle interval once stopped. */
  private failed(error: unknown): number {
    const message = errorMessage(error);
    this.lastError = { message, at: new Date().toISOString() };
    if (isLasting(error)) {
      this.stateNow = 'stopped';
      this.host.log(
        'error',
        `archiving stopped: ${message}; tried again in ${this.settings.idleRetryMs} ms`,
      );
      return this.settings.idleRetryMs;
    }
    this.stateNow = 'waiting';
    const waitMs = this.retryMs;
    this.retryMs = Math.min(this.retryMs * 2, this.settings.retryMsMax);
    this.host.log('warn', `archiving waits ${waitMs} ms and retries: ${message}`);
    return waitMs;
  }

  private sleep(ms: number | undefined): Promise<void> {
    return new Promise((resolve) => {
      const timer = ms === undefined ? undefined : setTimeout(done, ms);
      timer?.unref();
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = () => {
        this.wake = undefined;
        done();
      };
    });
  }

  /**
   * Archives the next batch if it is due; returns how long to wait before looking again (0: at
   * once, undefined: until the next commit).
   */
  private async step(): Promise<number | undefined> {
    const catalog = this.host.catalog;
    const rows = catalog.unarchivedTxs(this.lastIdx(), BATCH_TXS_READ_MAX);
    if (rows.length === 0) {
      this.stateNow = 'idle';
      return undefined;
    }
    const batch: TxRow[] = [];
    let bytes = 0;
    for (const row of rows) {
      batch.push(row);
      bytes += row.redoBytes + row.undoBytes;
      if (bytes >= this.settings.batchBytesMax) break;
    }
    const full = bytes >= this.settings.batchBytesMax || batch.length === BATCH_TXS_READ_MAX;
    const first = batch[0] as TxRow;
    const firstAtMs = first.committedAt === null ? Date.now() : Date.parse(first.committedAt);
    const dueInMs = firstAtMs + this.settings.batchMs - Date.now();
    if (!full && dueInMs > 0) {
      this.stateNow = 'batching';
      return dueInMs;
    }
    const txs = await this.read(batch);
    if (txs === undefined) return 0; // a transaction was dropped meanwhile: plan again
    this.stateNow = 'uploading';
    await this.describe();
    await this.upload(txs);
    this.batches += 1;
    return 0;
  }

  /** The files of `rows`; undefined when one of them was dropped since (its files are gone). */
  private async read(rows: readonly TxRow[]): Promise<BatchTx[] | undefined> {
    const { txFiles, catalog } = this.host;
    const txs: BatchTx[] = [];
    for (const row of rows) {
      try {
        const redo = await fsp.readFile(txFiles.redoPath(row.idx));
        const undo = await fsp.readFile(txFiles.undoPath(row.idx, row.undoGen));
        txs.push({
          idx: row.idx,
          kind: row.kind as BatchTx['kind'],
          seqFirst: row.seqFirst,
          seqLast: row.seqLast,
          timeFirstUs: row.timeFirstUs,
          timeLastUs: row.timeLastUs,
          redo,
          undo,
        });
      } catch (error) {
        rethrowIfBug(error);
        const now = catalog.tx(row.idx);
        if (errorCode(error) === 'ENOENT' && (now === undefined || now.kind === 'merged'))
          return undefined;
        throw error;
      }
    }
    return txs;
  }

  /**
   * Writes a new version of the volume-set descriptor when the catalog's volume set differs from
   * the newest one written (the first batch, a volume added): a rebuild reads it to recreate
   * the volumes. Compared by the plain bytes' SHA-256 recorded in the catalog, so no request is
   * made while nothing changed.
   */
  private async describe(): Promise<void> {
    const catalog = this.host.catalog;
    const volumeSetId = catalog.getMeta('volumeSetId') ?? '';
    const plain = encodeDescriptor({
      volumeSetId,
      volumeSetName: catalog.getMeta('volumeSetName') ?? '',
      volumes: catalog.volumes().map((v) => ({ idx: v.idx, name: v.name, sizeBytes: v.sizeBytes })),
    });
    const plainSha256 = crypto.createHash('sha256').update(plain).digest('hex');
    const latest = catalog.latestArchiveSet();
    if (latest?.plainSha256 === plainSha256) return;
    const version = (latest?.version ?? 0) + 1;
    const encoded = await this.codec.encode(plain, this.settings.key);
    // A version left by a crash before its record, with other volumes, moves this to the next.
    const written = await this.putOnce(
      (variant) => descriptorKey(volumeSetId, version + variant - 1),
      (key) => catalog.archiveSet(key) !== undefined,
      encoded,
      plain,
    );
    const writtenVersion = version + written.variant - 1;
    catalog.recordArchiveSet({
      version: writtenVersion,
      key: written.key,
      volumeCount: catalog.volumes().length,
      plainSha256,
      storedBytes: written.stored.length,
      sha256: written.sha256,
      createdAt: new Date().toISOString(),
    });
    this.host.log('info', `archived the volume-set descriptor version ${writtenVersion}`);
  }

  private async upload(txs: BatchTx[]): Promise<void> {
    const catalog = this.host.catalog;
    const volumeSetId = catalog.getMeta('volumeSetId') ?? '';
    const idBytes = Buffer.from(volumeSetId.replace(/-/g, ''), 'hex');
    const { plain, entries } = encodeBatch(idBytes, txs);
    const first = txs[0] as BatchTx;
    const last = txs[txs.length - 1] as BatchTx;
    const base = batchKey(volumeSetId, first.idx, last.idx);
    // Encoded (zstd, digest, AES-GCM) and hashed on the codec thread, off the event loop.
    const encoded = await this.codec.encode(plain, this.settings.key);
    const written = await this.putOnce(
      (variant) => (variant === 1 ? base : `${base}.${variant}`),
      (key) => catalog.archiveObject(key) !== undefined,
      encoded,
      plain,
    );
    const objectKey = written.key;
    const archived: ArchiveTxRow[] = entries.map((entry) => ({ ...entry, objectKey }));
    catalog.recordArchiveObject(
      {
        key: objectKey,
        firstIdx: first.idx,
        lastIdx: last.idx,
        seqFirst: first.seqFirst,
        seqLast: last.seqLast,
        timeFirstUs: first.timeFirstUs,
        timeLastUs: last.timeLastUs,
        txCount: txs.length,
        plainBytes: plain.length,
        storedBytes: written.stored.length,
        sha256: written.sha256,
        createdAt: new Date().toISOString(),
      },
      archived,
    );
    this.host.log(
      'info',
      `archived seq ${first.seqFirst}..${last.seqLast} (${txs.length} transactions, ${plain.length} bytes, ${written.stored.length} stored) as ${objectKey}`,
    );
  }

  /**
   * Writes `stored` under the first key of `keyOf` (variants 1, 2, ...) the catalog has not
   * `taken`. An object already there (a crash after the upload and before the catalog recorded
   * it; a backend that refuses a rewrite) is read back: the same plain bytes are taken as this
   * object; other content moves it to the next variant of the key.
   */
  private async putOnce(
    keyOf: (variant: number) => string,
    taken: (key: string) => boolean,
    encoded: { stored: Buffer; sha256: string },
    plain: Buffer,
  ): Promise<{ key: string; variant: number; stored: Buffer; sha256: string }> {
    const { stored } = encoded;
    const store = this.settings.store;
    for (let variant = 1; variant <= KEY_VARIANTS_MAX; variant++) {
      const key = keyOf(variant);
      if (taken(key)) continue;
      try {
        this.requests.put += 1;
        await store.put(key, stored);
        return { key, variant, ...encoded };
      } catch (error) {
        rethrowIfBug(error);
        if (errorCode(error) !== 'REWIND_ARCHIVE_EXISTS') throw error;
      }
      this.requests.get += 1;
      const existing = await store.get(key);
      if (this.samePlain(existing, key, plain)) {
        this.host.log('info', `archive: ${key} was already written (before a restart): kept`);
        const sha256 = crypto.createHash('sha256').update(existing).digest('hex');
        return { key, variant, stored: existing, sha256 };
      }
      this.host.log('warn', `archive: ${key} exists with other content; trying the next name`);
    }
    throw new RewindError(
      'REWIND_CONFIG',
      `archive ${store.url}: ${KEY_VARIANTS_MAX} objects named from ${keyOf(1)} on exist with other content`,
      { hint: 'another manager may be writing to this archive: give each its own prefix' },
    );
  }

  private samePlain(existing: Buffer, key: string, plain: Buffer): boolean {
    try {
      const decoded = decodeObject(existing, {
        name: key,
        ...(this.settings.key ? { key: this.settings.key } : {}),
      });
      return decoded.equals(plain);
    } catch (error) {
      rethrowIfBug(error);
      const code = errorCode(error);
      if (code === 'REWIND_ARCHIVE_CORRUPT' || code === 'REWIND_ARCHIVE_KEY') return false;
      throw error;
    }
  }
}
