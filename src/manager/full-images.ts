// Virtual full images (`rewind full`, `--full-every`): every chosen volume at one seq, read
// through a private view (never production), cut into 4 MiB chunks; zero chunks and chunks the
// catalog already knows are skipped, new ones uploaded (encoded and named on the codec thread),
// then the manifest, then one catalog record. One full at a time; a store that is down is waited
// for, a refusal that waiting will not change stops the full; nothing is recorded half.
import {
  chunkCount,
  chunkKey,
  CodecThread,
  decodeManifest,
  decodeObject,
  encodeManifest,
  FULL_CHUNK_BYTES,
  isZeroChunk,
  manifestKey,
  type ChunkRef,
  type FullManifest,
  type ObjectStore,
} from '../archive/index.js';
import {
  errorCode,
  errorMessage,
  rethrowIfBug,
  RewindError,
  type LogFunction,
} from '../core/index.js';
import type { View } from '../views/index.js';
import type { ArchiveFullRow, Catalog } from './catalog.js';

/** The schedule's interval when `--full-every` is not given: one full a day. */
export const FULL_EVERY_MS_DEFAULT = 24 * 3600_000;
/** With no full yet, the first scheduled one waits this long after start (history settles). */
export const FULL_FIRST_DELAY_MS = 10 * 60_000;
/** The schedule looks at most this often whether a full is due. */
const SCHEDULE_CHECK_MS_MAX = 60_000;
/** Store retries per request for UNAVAILABLE: 1 s doubling to the cap, then the full fails. */
const RETRIES_MAX = 12;
const RETRY_MS_FIRST = 1000;

export interface FullHost {
  catalog: Catalog;
  store: ObjectStore;
  key: Buffer | undefined;
  /** Counts a request in the archive's status (put, get, head). */
  counted(kind: 'put' | 'get' | 'head'): void;
  /** A private view at `seq`, held still while `work` runs (old points fetched first). */
  withView<T>(seq: number, work: (view: View) => Promise<T>): Promise<T>;
  seqCommitted(): number;
  /** Capture time of write `seq`, µs (0 for seq 0). */
  seqTimeUs(seq: number): Promise<number>;
  log: LogFunction;
  /** The most a store request waits between retries (the archiver's cap). */
  retryMsMax: number;
  /**
   * Runs a full with the archive's retention held off (archive-retention.ts `exclusive`): a chunk
   * the full finds stored must not be deleted before the full that references it is recorded.
   */
  exclusive?<T>(work: () => Promise<T>): Promise<T>;
}

export interface FullProgress {
  seq: number;
  volumes: string[];
  chunksDone: number;
  chunksTotal: number;
  chunksNew: number;
  chunksZero: number;
  bytesUploaded: number;
  /** Set while a store request waits to be retried. */
  waiting: string | null;
  startedAt: string;
}

export interface FullResult {
  id: number;
  seq: number;
  time: string | null;
  manifestKey: string;
  volumes: string[];
  logicalBytes: number;
  chunks: { total: number; new: number; zero: number; known: number };
  bytesNew: number;
  durationMs: number;
}

export interface FullRequest {
  seq: number;
  /** Volume indexes; every volume when empty. */
  volumes: number[];
  reason: 'command' | 'schedule';
}

/** Who asked, for the REWIND_BUSY refusal of a second full. */
interface Running {
  progress: FullProgress;
  reason: FullRequest['reason'];
}

export class FullImages {
  private readonly host: FullHost;
  private readonly codec = new CodecThread();
  private running: Running | undefined;
  private closed = false;
  private timer: NodeJS.Timeout | undefined;
  private everyMs: number | undefined;
  private readonly startedAtMs = Date.now();
  private lastError: string | null = null;

  constructor(host: FullHost) {
    this.host = host;
  }

  /** The full being taken now, if any. */
  progress(): FullProgress | null {
    return this.running ? { ...this.running.progress } : null;
  }

  /** The schedule's interval (undefined: off) and the last scheduled failure. */
  schedule(): { everyMs: number | null; nextAt: string | null; lastError: string | null } {
    const next = this.everyMs === undefined ? undefined : this.nextDueMs(this.everyMs);
    return {
      everyMs: this.everyMs ?? null,
      nextAt: next === undefined ? null : new Date(next).toISOString(),
      lastError: this.lastError,
    };
  }

  /**
   * Takes a full at `request.seq` of the given volumes. A second full while one runs is refused
   * REWIND_BUSY naming the running one (the schedule skips its turn instead).
   */
  async take(
    request: FullRequest,
    onProgress?: (progress: FullProgress) => void,
  ): Promise<FullResult> {
    if (this.closed) throw new RewindError('REWIND_SHUTDOWN', 'the manager is closing');
    const now = this.running;
    if (now) {
      const p = now.progress;
      throw new RewindError(
        'REWIND_BUSY',
        `a full image at seq ${p.seq} (${now.reason}) is being taken: chunk ${p.chunksDone} of ${p.chunksTotal}`,
        { hint: 'one full at a time: wait for it (rewind archive status shows its progress)' },
      );
    }
    const volumes = this.volumesOf(request.volumes);
    const progress: FullProgress = {
      seq: request.seq,
      volumes: volumes.map((v) => v.name),
      chunksDone: 0,
      chunksTotal: volumes.reduce((sum, v) => sum + chunkCount(v.sizeBytes), 0),
      chunksNew: 0,
      chunksZero: 0,
      bytesUploaded: 0,
      waiting: null,
      startedAt: new Date().toISOString(),
    };
    this.running = { progress, reason: request.reason };
    try {
      const work = (): Promise<FullResult> =>
        this.takeNow(request.seq, volumes, progress, onProgress);
      return await (this.host.exclusive ? this.host.exclusive(work) : work());
    } finally {
      this.running = undefined;
    }
  }

  /** Starts the schedule: a full every `everyMs` after the newest one (undefined: off). */
  startSchedule(everyMs: number | undefined): void {
    this.everyMs = everyMs;
    if (everyMs === undefined) return;
    this.arm(everyMs);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.codec.close();
  }

  // ---- the schedule ----

  /** When the next scheduled full is due: `everyMs` after the newest taken, or after start. */
  private nextDueMs(everyMs: number): number {
    const latest = this.host.catalog.latestTakenFull();
    if (latest === undefined) return this.startedAtMs + FULL_FIRST_DELAY_MS;
    return Date.parse(latest.createdAt) + everyMs;
  }

  private arm(everyMs: number): void {
    if (this.closed) return;
    const waitMs = Math.min(
      Math.max(this.nextDueMs(everyMs) - Date.now(), 0),
      SCHEDULE_CHECK_MS_MAX,
    );
    this.timer = setTimeout(() => {
      void this.tick(everyMs).finally(() => this.arm(everyMs));
    }, waitMs);
    this.timer.unref();
  }

  private async tick(everyMs: number): Promise<void> {
    if (this.closed || this.running || Date.now() < this.nextDueMs(everyMs)) return;
    const seq = this.host.seqCommitted();
    const newest = this.host.catalog.newestFull();
    const all = this.host.catalog.volumes().length;
    // Nothing written since a full of every volume: that full still shows the newest state.
    if (all === 0 || (newest && newest.seq === seq && newest.volumes.length === all)) return;
    try {
      const result = await this.take({ seq, volumes: [], reason: 'schedule' });
      this.lastError = null;
      this.host.log('info', `scheduled full image at seq ${result.seq}: ${summary(result)}`);
    } catch (error) {
      rethrowIfBug(error);
      this.lastError = errorMessage(error);
      this.host.log('error', `the scheduled full image failed: ${this.lastError}`);
    }
  }

  // ---- taking one ----

  private volumesOf(indexes: number[]): { idx: number; name: string; sizeBytes: number }[] {
    const all = this.host.catalog.volumes();
    if (all.length === 0) {
      throw new RewindError('REWIND_NOT_FOUND', 'no volumes yet: the agent has not connected');
    }
    if (indexes.length === 0) return all;
    return [...new Set(indexes)]
      .sort((a, b) => a - b)
      .map((idx) => {
        const volume = all.find((v) => v.idx === idx);
        if (!volume) throw new RewindError('REWIND_NOT_FOUND', `no volume ${idx}`);
        return volume;
      });
  }

  private async takeNow(
    seq: number,
    volumes: { idx: number; name: string; sizeBytes: number }[],
    progress: FullProgress,
    onProgress: ((progress: FullProgress) => void) | undefined,
  ): Promise<FullResult> {
    const startedMs = Date.now();
    const { catalog } = this.host;
    const volumeSetId = catalog.getMeta('volumeSetId');
    if (volumeSetId === undefined) {
      throw new RewindError('REWIND_NOT_FOUND', 'no volume set yet: the agent has not connected');
    }
    const same = catalog
      .fullsAtOrBefore(seq)
      .find((f) => f.seq === seq && f.volumes.join() === volumes.map((v) => v.idx).join());
    if (same !== undefined) {
      throw new RewindError(
        'REWIND_CONFLICT',
        `full image ${same.id} at seq ${seq} holds these volumes already (${same.manifestKey})`,
        { hint: 'rewind archive fulls lists them; a full at another POINT needs --at' },
      );
    }
    const uploaded = { chunks: 0, bytes: 0 };
    const referenced = new Set<string>();
    const manifestVolumes = await this.host.withView(seq, async (view) => {
      const out: FullManifest['volumes'] = [];
      for (const volume of volumes) {
        const chunks: ChunkRef[] = [];
        for (let offset = 0; offset < volume.sizeBytes; offset += FULL_CHUNK_BYTES) {
          if (this.closed) throw new RewindError('REWIND_SHUTDOWN', 'the manager is closing');
          const length = Math.min(FULL_CHUNK_BYTES, volume.sizeBytes - offset);
          const plain = view.read(volume.idx, offset, length);
          const id = await this.storeChunk(volumeSetId, plain, progress, uploaded);
          chunks.push(id);
          if (id === null) progress.chunksZero += 1;
          else referenced.add(id);
          progress.chunksDone += 1;
          onProgress?.({ ...progress });
        }
        out.push({
          idx: volume.idx,
          name: volume.name,
          sizeBytes: volume.sizeBytes,
          chunkBytes: FULL_CHUNK_BYTES,
          chunks,
        });
      }
      return out;
    });
    const timeUs = await this.host.seqTimeUs(seq);
    const manifest: FullManifest = { volumeSetId, seq, timeUs, volumes: manifestVolumes };
    const key = manifestKey(volumeSetId, seq);
    const plain = encodeManifest(manifest);
    const storedKey = await this.putManifest(key, plain, uploaded);
    const row: Omit<ArchiveFullRow, 'id'> = {
      seq,
      timeUs,
      manifestKey: storedKey,
      volumes: volumes.map((v) => v.idx),
      logicalBytes: volumes.reduce((sum, v) => sum + v.sizeBytes, 0),
      chunkCount: progress.chunksTotal - progress.chunksZero,
      newChunks: uploaded.chunks,
      storedBytes: uploaded.bytes,
      createdAt: new Date().toISOString(),
    };
    const id = catalog.recordFull(row, [...referenced]);
    const result: FullResult = {
      id,
      seq,
      time: timeUs === 0 ? null : new Date(timeUs / 1000).toISOString(),
      manifestKey: row.manifestKey,
      volumes: volumes.map((v) => v.name),
      logicalBytes: row.logicalBytes,
      chunks: {
        total: progress.chunksTotal,
        new: uploaded.chunks,
        zero: progress.chunksZero,
        known: progress.chunksTotal - progress.chunksZero - uploaded.chunks,
      },
      bytesNew: uploaded.bytes,
      durationMs: Date.now() - startedMs,
    };
    this.host.log(
      'info',
      `full image at seq ${seq} stored as ${row.manifestKey}: ${summary(result)}`,
    );
    return result;
  }

  /** Stores one chunk unless zero or known; returns its id (null: zero). */
  private async storeChunk(
    volumeSetId: string,
    plain: Buffer,
    progress: FullProgress,
    uploaded: { chunks: number; bytes: number },
  ): Promise<ChunkRef> {
    if (isZeroChunk(plain)) return null;
    const { catalog } = this.host;
    const id = await this.codec.chunkId(plain, this.host.key);
    if (catalog.knownChunk(id) !== undefined) return id;
    const encoded = await this.codec.encode(plain, this.host.key);
    const key = chunkKey(volumeSetId, id);
    await this.withRetries(`put ${key}`, progress, () => this.putChunk(key, encoded.stored));
    catalog.recordChunk({
      id,
      key,
      plainBytes: plain.length,
      storedBytes: encoded.stored.length,
      createdAt: new Date().toISOString(),
    });
    uploaded.chunks += 1;
    uploaded.bytes += encoded.stored.length;
    progress.chunksNew += 1;
    progress.bytesUploaded += encoded.stored.length;
    return id;
  }

  /**
   * A chunk object already under its key (a crash after its put and before its row, a put that
   * failed after storing) holds the same plain bytes: its name is their digest. It is taken.
   */
  private async putChunk(key: string, stored: Buffer): Promise<void> {
    try {
      this.host.counted('put');
      await this.host.store.put(key, stored);
    } catch (error) {
      rethrowIfBug(error);
      if (errorCode(error) !== 'REWIND_ARCHIVE_EXISTS') throw error;
    }
  }

  /**
   * Puts the manifest; one already under the key (a crash before its record) is read back and
   * taken when it is this manifest, else this one goes to `KEY.2`, ... Returns the key used.
   */
  private async putManifest(
    base: string,
    plain: Buffer,
    uploaded: { chunks: number; bytes: number },
  ): Promise<string> {
    const encoded = await this.codec.encode(plain, this.host.key);
    const progress = this.running?.progress;
    for (let variant = 1; variant <= 8; variant++) {
      const key = variant === 1 ? base : `${base}.${variant}`;
      if (this.host.catalog.fullByKey(key) !== undefined) continue;
      const stored = await this.withRetries(`put ${key}`, progress, async () => {
        try {
          this.host.counted('put');
          await this.host.store.put(key, encoded.stored);
          return true;
        } catch (error) {
          rethrowIfBug(error);
          if (errorCode(error) !== 'REWIND_ARCHIVE_EXISTS') throw error;
          return false;
        }
      });
      if (stored) {
        uploaded.bytes += encoded.stored.length;
        return key;
      }
      const existing = await this.withRetries(`get ${key}`, progress, () => {
        this.host.counted('get');
        return this.host.store.get(key);
      });
      if (this.sameManifest(existing, key, plain)) return key;
      this.host.log('warn', `archive: ${key} exists with other content; trying the next name`);
    }
    throw new RewindError('REWIND_CONFIG', `8 manifests named ${base}* exist with other content`, {
      hint: 'another manager may be writing to this archive: give each its own prefix',
    });
  }

  private sameManifest(existing: Buffer, key: string, plain: Buffer): boolean {
    try {
      const decoded = decodeObject(existing, {
        name: key,
        ...(this.host.key ? { key: this.host.key } : {}),
      });
      decodeManifest(decoded, key);
      return decoded.equals(plain);
    } catch (error) {
      rethrowIfBug(error);
      const code = errorCode(error);
      if (code === 'REWIND_ARCHIVE_CORRUPT' || code === 'REWIND_ARCHIVE_KEY') return false;
      throw error;
    }
  }

  /**
   * Runs a store request, waiting and trying again while the store is unavailable (1 s doubling
   * to the archiver's cap, RETRIES_MAX times); AUTH, KEY and CONFIG refusals end the full at once.
   */
  private async withRetries<T>(
    step: string,
    progress: FullProgress | undefined,
    request: () => Promise<T>,
  ): Promise<T> {
    let waitMs = RETRY_MS_FIRST;
    for (let attempt = 1; ; attempt++) {
      try {
        const result = await request();
        if (progress) progress.waiting = null;
        return result;
      } catch (error) {
        rethrowIfBug(error);
        if (errorCode(error) !== 'REWIND_ARCHIVE_UNAVAILABLE' || attempt >= RETRIES_MAX) {
          throw error;
        }
        if (this.closed) throw new RewindError('REWIND_SHUTDOWN', 'the manager is closing');
        const message = `${step}: ${errorMessage(error)}; retried in ${waitMs} ms`;
        if (progress) progress.waiting = message;
        this.host.log('warn', `full image: ${message}`);
        await new Promise((resolve) => setTimeout(resolve, waitMs).unref());
        waitMs = Math.min(waitMs * 2, this.host.retryMsMax);
      }
    }
  }
}

function summary(result: FullResult): string {
  const { chunks } = result;
  return `${chunks.total} chunks (${chunks.new} new, ${chunks.known} known, ${chunks.zero} zero), ${result.bytesNew} bytes stored, ${result.durationMs} ms`;
}
