// The agent of one volume set: opens production images, exports them over NBD through the write
// pipeline, seals segments, ships them to the manager and cleans up once they are committed.
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import path from 'node:path';
import {
  assert,
  errorMessage,
  rethrowIfBug,
  RewindError,
  type LogFunction,
} from '../core/index.js';
import type {
  BlockStatusCallback,
  DoneCallback,
  ExportBackend,
  ReadCallback,
} from '../nbd/index.js';
import { NbdErrno } from '../nbd/index.js';
import {
  ensureDir,
  FILE_MODE_PRIVATE,
  fdatasyncAsync,
  isBlockDevice,
  lockExclusive,
  sizeOf,
  writeFileDurable,
  type FileLock,
} from '../platform/index.js';
import { DirtyMap } from './dirty-map.js';
import {
  WritePipeline,
  type ProductionVolume,
  type ResyncResult,
  type ResyncTarget,
} from './pipeline.js';
import { Spool, type SealedSegment, type SpoolOptions, type SpoolRecovery } from './spool.js';
import { InThreadEngine } from './write-engine.js';
import { WorkerEngine } from './worker-engine.js';
import {
  Shipper,
  type AgentCommands,
  type AgentReport,
  type ShipperSource,
  type ShipperTarget,
} from './shipper.js';
import type { RestoringState } from '../ship/index.js';

export interface VolumeSpec {
  name: string;
  /** Existing file or block device; or a new sparse image of `sizeBytes` under the data dir. */
  path?: string;
  sizeBytes?: number;
}

export interface AgentOptions {
  dataDir: string;
  volumes: VolumeSpec[];
  volumeSetName?: string;
  sealBytes: number;
  sealMs: number;
  /** Spool bound (sealed + active): past it the agent runs degraded (dirty map only). */
  spoolBytes?: number;
  manager: ShipperTarget;
  log: LogFunction;
  /**
   * Locks a production image for the life of the agent (default: lockExclusive, a flock). The
   * deterministic simulation's disk has no kernel locks and runs one agent: it passes its own.
   */
  lockImage?: (file: string, options: Parameters<typeof lockExclusive>[1]) => FileLock;
  /** Where batches are written: a worker thread (default) or this thread (the simulation). */
  writeEngine?: 'worker' | 'in-thread';
  /** Spool tuning (tests and the simulation): preallocation, direct I/O, aligned batch size. */
  spool?: SpoolOptions;
}

interface StoredVolume {
  name: string;
  sizeBytes: number;
  path: string;
}
interface AgentState {
  version: 1;
  volumeSetId: string;
  volumeSetName: string;
  volumes: StoredVolume[];
  seqAcked: number;
  segmentAcked: number;
  cleanShutdown: boolean;
  /** A production restore in progress: these volumes stay offline until the manager ends it. */
  restoring?: RestoringState | undefined;
}

const SPOOL_BYTES_DEFAULT = 16 * 1024 ** 3;
/** A committed dirty region is cleared once quiet this long, or at once past this many hot ones. */
const DIRTY_QUIET_MS = 2000;
const DIRTY_HOT_MAX = 4096;
/** While the manager is idle, the active segment is sealed at this age (see sealIfOld). */
const SEAL_IDLE_MS = 100;
const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
/** The clean pass (see cleanDirty) runs this often. */
const DIRTY_CLEAN_INTERVAL_MS = 1000;

/** What `Agent.open` brings up before the agent object exists. */
interface OpenedState {
  options: AgentOptions;
  state: AgentState;
  volumes: ProductionVolume[];
  spool: Spool;
  recovery: SpoolRecovery;
  /** The production images, locked for the life of the agent. */
  imageLocks: FileLock[];
}

export class Agent implements ShipperSource, AgentCommands {
  readonly options: AgentOptions;
  readonly volumes: readonly ProductionVolume[];
  readonly pipeline: WritePipeline;
  /** What the spool's recovery found at start (a torn tail cut, records kept). */
  readonly recovery: SpoolRecovery;
  /**
   * Regions found dirty on disk at start after an unclean stop (they may differ from the replica).
   */
  readonly dirtyAtStart: number;
  private readonly state: AgentState;
  private readonly spool: Spool;
  private readonly shipper: Shipper;
  private readonly imageLocks: FileLock[];
  private sealTimer: NodeJS.Timeout | undefined;
  private cleanTimer: NodeJS.Timeout | undefined;

  private constructor(opened: OpenedState) {
    this.options = opened.options;
    this.state = opened.state;
    this.volumes = opened.volumes;
    this.spool = opened.spool;
    this.recovery = opened.recovery;
    this.imageLocks = opened.imageLocks;
    this.dirtyAtStart = opened.volumes.reduce((sum, v) => sum + v.dirty.markedCount, 0);
    const log = this.options.log;
    this.pipeline = new WritePipeline(this.spool, {
      engine:
        this.options.writeEngine === 'in-thread' ? new InThreadEngine() : WorkerEngine.start(),
      sealBytes: this.options.sealBytes,
      spoolBytesMax: this.spoolBytesMax,
      onDegraded: (reason) =>
        log(
          'warn',
          `degraded mode: ${reason}; writes are recorded in the dirty map only until the manager catches up`,
        ),
      onSealed: () => this.shipper.shipNext(),
      onFatal: (error) => log('error', `write path stopped: ${errorMessage(error)}`, {}),
      onResync: (reason, result) => this.logResync(reason, result),
    });
    this.shipper = new Shipper({ source: this, commands: this, target: this.options.manager, log });
  }

  /**
   * Opens the agent of `options.dataDir`: its state, production images, dirty maps and spool
   * (recovering an active segment a crash left), then logs a resync where history must catch up
   * with production (an unclean stop, a first protection), starts sealing and shipping.
   */
  static async open(options: AgentOptions): Promise<Agent> {
    const stateDir = agentStateDir(options.dataDir);
    await ensureDir(stateDir);
    const state = await loadState(stateDir, options.volumeSetName);
    const storedNames = new Set(state.volumes.map((v) => v.name));
    state.volumes = reconcileVolumes(state.volumes, options.volumes, options.dataDir);
    // A volume added with an existing image holds data the replica does not have yet.
    const preexisting = new Set(
      state.volumes
        .filter((v) => !storedNames.has(v.name) && fs.existsSync(v.path))
        .map((v) => v.name),
    );
    const wasClean = state.cleanShutdown;
    const volumes: ProductionVolume[] = [];
    const imageLocks: FileLock[] = [];
    const lockImage = (stored: StoredVolume): void => {
      imageLocks.push(
        (options.lockImage ?? lockExclusive)(stored.path, {
          create: false,
          describe: `production image ${stored.path} (volume ${stored.name})`,
          hint: 'an image can be protected by one agent only: stop the other one, or give this volume another image',
        }),
      );
    };
    let agent: Agent | undefined;
    try {
      // Every image that exists is locked before anything is written (the others are created in
      // the data directory, which the runtime holds locked, and locked once created).
      for (const stored of state.volumes) if (fs.existsSync(stored.path)) lockImage(stored);
      for (const [index, stored] of state.volumes.entries()) {
        const created = !fs.existsSync(stored.path);
        volumes.push(await openVolume(stateDir, index, stored));
        if (created) lockImage(stored);
      }
      // Write-ahead for the first sync: every region of a pre-existing image is marked before the
      // state that names the volume is saved, so a crash during the sync resyncs it all again.
      for (const volume of volumes) if (preexisting.has(volume.name)) await volume.dirty.markAll();
      state.cleanShutdown = false;
      await writeState(stateDir, state);
      const opened = await Spool.open(
        agentSpoolDir(options.dataDir),
        uuidBytes(state.volumeSetId),
        volumes.length,
        state.seqAcked,
        state.segmentAcked,
        {
          segmentBytes: options.sealBytes,
          onWarning: (message) => options.log('warn', message),
          ...options.spool,
        },
      );
      agent = new Agent({
        options,
        state,
        volumes,
        spool: opened.spool,
        recovery: opened.recovery,
        imageLocks,
      });
      await agent.start({ wasClean, preexisting: volumes.filter((v) => preexisting.has(v.name)) });
      return agent;
    } catch (error) {
      rethrowIfBug(error);
      await agent?.pipeline.close(); // its write engine (a worker thread) stops with it
      for (const volume of volumes) {
        fs.closeSync(volume.fd);
        volume.dirty.close();
      }
      for (const lock of imageLocks) lock.release();
      throw error;
    }
  }

  /** Catches history up with production where it must, then starts sealing and shipping. */
  private async start(at: {
    wasClean: boolean;
    preexisting: readonly ProductionVolume[];
  }): Promise<void> {
    if (this.recovery.tornBytes > 0) {
      this.options.log(
        'warn',
        `cut a torn tail of ${this.recovery.tornBytes} bytes from the active segment`,
        {
          reason: this.recovery.tornReason?.message,
        },
      );
    }
    if (!at.wasClean && this.dirtyAtStart > 0) {
      // Writes may have reached production without reaching the log (or without a reply): log the
      // current content of every region marked dirty, so the replica converges on production.
      this.options.log('warn', `unclean stop: resyncing ${this.dirtyAtStart} dirty regions`);
      await this.resyncMarked(this.volumes, {
        reason: 'unclean stop',
        skipZero: false,
        rewrite: true,
      });
    } else if (at.preexisting.length > 0) {
      this.options.log(
        'info',
        `first protection of ${at.preexisting.map((v) => v.name).join(', ')}: copying existing data (zero regions skipped)`,
      );
      await this.resyncMarked(at.preexisting, { reason: 'first protection', skipZero: true });
    }
    this.sealTimer = setInterval(
      () => this.sealIfOld(),
      Math.max(10, Math.min(this.options.sealMs, SEAL_IDLE_MS) / 2),
    );
    this.cleanTimer = setInterval(() => this.cleanDirty(), DIRTY_CLEAN_INTERVAL_MS);
    this.shipper.start();
  }

  get volumeSetId(): string {
    return this.state.volumeSetId;
  }

  get stateDir(): string {
    return agentStateDir(this.options.dataDir);
  }

  /**
   * Logs every marked region of `volumes` (but those only marked ahead) as one resync, with
   * progress, before any client writes.
   */
  private async resyncMarked(
    volumes: readonly ProductionVolume[],
    how: { reason: string; skipZero: boolean; endsDegraded?: boolean; rewrite?: boolean },
  ): Promise<ResyncResult> {
    const { reason, skipZero, endsDegraded = false, rewrite = false } = how;
    const targets = (): ResyncTarget[] =>
      volumes
        .map((volume) => ({ volume, regions: volume.dirty.regionsToResync() }))
        .filter((t) => t.regions.length > 0);
    let lastReportMs = Date.now();
    const result = await this.pipeline.resync(targets, {
      reason,
      skipZero,
      endsDegraded,
      rewrite,
      onProgress: (done, total) => {
        const nowMs = Date.now();
        if (nowMs - lastReportMs < 2000) return;
        lastReportMs = nowMs;
        this.options.log(
          'info',
          `resync (${reason}): ${done} of ${total} regions read (${Math.floor((100 * done) / total)}%)`,
        );
      },
    });
    for (const volume of volumes)
      volume.dirty.adoptMarked(Math.max(result.seqLast, this.state.seqAcked), Date.now());
    this.logResync(reason, result);
    return result;
  }

  /** The resync logged for a manager that lost history, by the manager's committed seq. */
  private gapResync:
    | {
        managerSeq: number;
        start: Promise<{ segmentFirst: number; seqFirst: number }>;
        /** Set once logged: the resync's first segment. */
        segmentFirst: number | undefined;
      }
    | undefined;

  acked(): { index: number; seq: number } {
    return { index: this.state.segmentAcked, seq: this.state.seqAcked };
  }

  resyncForGap(managerSeq: number): Promise<{ segmentFirst: number; seqFirst: number }> {
    const known = this.gapResync;
    // The same resync serves every session to the same manager while its first segment is still
    // spooled (logging, or logged and not yet committed); otherwise a new one is logged.
    if (
      known &&
      known.managerSeq === managerSeq &&
      (known.segmentFirst === undefined || this.spool.sealed[0]?.index === known.segmentFirst)
    )
      return known.start;
    const entry: NonNullable<Agent['gapResync']> = {
      managerSeq,
      start: this.resyncEverything(managerSeq).then((start) => {
        entry.segmentFirst = start.segmentFirst;
        return start;
      }),
      segmentFirst: undefined,
    };
    void entry.start.catch((error: unknown) => {
      rethrowIfBug(error);
      if (this.gapResync === entry) this.gapResync = undefined; // the next session tries again
    });
    this.gapResync = entry;
    return entry.start;
  }

  /**
   * Brings a manager that lost history back to production: every region of every volume is
   * marked (write-ahead), then logged as one resync, zero regions as zero records (the manager's
   * replica holds whatever its history left there, not zeroes). The spooled segments before the
   * resync can never be applied by that manager (seqs before them are gone) and their writes are
   * in the resync's reads, so they are dropped; the spool's base moves to the resync's start,
   * saved before any file goes, so a restart finds a continuous spool.
   */
  private async resyncEverything(
    managerSeq: number,
  ): Promise<{ segmentFirst: number; seqFirst: number }> {
    for (const volume of this.volumes) await volume.dirty.markAll();
    const result = await this.resyncMarked(this.volumes, {
      reason: 'manager lost history',
      skipZero: false,
      endsDegraded: true,
    });
    const first = this.spool.sealed.find((segment) => segment.seqFirst === result.seqFirst);
    if (result.records === 0 || first === undefined)
      throw new RewindError('REWIND_IO', 'the resync for the manager logged no segment', {
        hint: 'the agent has no volume with data to resync; check its volume list',
      });
    const dropped = this.spool.sealed.filter((segment) => segment.index < first.index);
    this.state.segmentAcked = first.index - 1;
    this.state.seqAcked = first.seqFirst - 1;
    await this.saveState();
    await this.spool.release(first.index - 1);
    const lostLast = first.seqFirst - 1;
    this.options.log(
      'warn',
      dropped.length === 0
        ? `the manager lost seqs ${managerSeq + 1}..${lostLast}; nothing spooled had to be dropped`
        : `the manager lost seqs ${managerSeq + 1}..${lostLast}: dropped ${dropped.length} spooled segments (seqs ${dropped[0]?.seqFirst}..${dropped[dropped.length - 1]?.seqLast}) it can no longer apply; their writes are covered by the resync from seq ${first.seqFirst}`,
    );
    return { segmentFirst: first.index, seqFirst: first.seqFirst };
  }

  private logResync(reason: string, result: ResyncResult): void {
    const range =
      result.records > 0 ? `seq ${result.seqFirst}..${result.seqLast}` : 'nothing to log';
    this.options.log(
      reason === 'first protection' ? 'info' : 'warn',
      `resync (${reason}): ${result.records} regions logged, ${result.bytesRead} bytes read; ${range}`,
    );
    this.lastResync = { reason, ...result };
  }

  // ---- Production restore (driven by the manager over the link) ----
  /** Called with export names whose NBD clients must be disconnected (set by the runtime). */
  onOffline: ((names: string[]) => void) | undefined;
  /** NBD clients connected to an export now (set by the runtime; reported to the manager). */
  clientCount: ((name: string) => number) | undefined;

  /** Why a new NBD connection to `name` is refused, or null when it is online. */
  refusal(name: string): string | null {
    const restoring = this.state.restoring;
    if (restoring && restoring.volumes.includes(name)) {
      return `volume ${name} is offline: production restore #${restoring.id} is running; it comes back online when the restore ends (rewind restores shows progress)`;
    }
    return null;
  }

  get restoring(): RestoringState | undefined {
    return this.state.restoring;
  }

  private volumeNamed(name: string): ProductionVolume {
    const volume = this.volumes.find((v) => v.name === name);
    if (!volume)
      throw new RewindError('REWIND_NOT_FOUND', `the agent has no volume named "${name}"`);
    return volume;
  }

  /**
   * Takes `volumes` offline durably (clients disconnected, new ones refused, also after a
   * restart), then seals; resolves the seq of the last write captured before the restore.
   */
  async restoreBegin(id: number, volumes: string[]): Promise<number> {
    for (const name of volumes) this.volumeNamed(name);
    const held = this.state.restoring?.volumes ?? [];
    this.state.restoring = { id, volumes: [...new Set([...held, ...volumes])] };
    await this.saveState();
    this.onOffline?.(volumes);
    this.options.log('warn', `restore #${id}: ${volumes.join(', ')} offline`);
    return this.pipeline.seal();
  }

  /** One restore write (or zero run) through the normal write path: logged and replicated. */
  restoreWrite(
    write: { volume: string; offset: number; length: number; data: Buffer | undefined },
    done: (errno: number) => void,
  ): void {
    const { offset: offsetBytes, length: lengthBytes, data } = write;
    const volume = this.volumeNamed(write.volume);
    if (
      offsetBytes < 0 ||
      lengthBytes <= 0 ||
      offsetBytes + lengthBytes > volume.sizeBytes ||
      (data !== undefined && data.length !== lengthBytes)
    ) {
      done(NbdErrno.EINVAL);
      return;
    }
    this.pipeline.submitRecord(
      data ? 'write' : 'zero',
      volume,
      offsetBytes,
      lengthBytes,
      data,
      false,
      done,
    );
  }

  /** Makes the restore durable, brings the volumes back online and seals; resolves the last seq. */
  async restoreEnd(id: number, abandon: boolean): Promise<number> {
    const restoring = this.state.restoring;
    if (!restoring) return this.pipeline.seal();
    const errnos = await Promise.all(
      restoring.volumes.map(
        (name) =>
          new Promise<number>((resolve) =>
            this.pipeline.submitFlush(this.volumeNamed(name), resolve),
          ),
      ),
    );
    if (errnos.some((e) => e !== 0))
      throw new RewindError(
        'REWIND_IO',
        `restore #${id}: flushing production failed; the volumes stay offline`,
      );
    this.state.restoring = undefined;
    await this.saveState();
    this.options.log(
      'warn',
      `restore #${id} ${abandon ? 'abandoned' : 'finished'}: ${restoring.volumes.join(', ')} online`,
    );
    return this.pipeline.seal();
  }

  /** The most recent resync, for status. */
  lastResync: (ResyncResult & { reason: string }) | undefined;

  /** State writes are serialised: concurrent writers would race on the same temp file. */
  saveState(): Promise<void> {
    const write = (): Promise<void> => writeState(this.stateDir, this.state);
    const next = this.stateWrites.then(write, write);
    this.stateWrites = next.then(noop, noop); // the caller of `next` gets its error
    return next;
  }

  private stateWrites: Promise<void> = Promise.resolve();

  exports(): ExportBackend[] {
    return this.volumes.map((volume) => new ProductionExport(this, volume));
  }

  get spoolBytesMax(): number {
    return this.options.spoolBytes ?? SPOOL_BYTES_DEFAULT;
  }

  /** Called by the shipper when the manager committed everything up to `index`/`seqLast`. */
  async committed(index: number, seqLast: number): Promise<void> {
    if (index > this.state.segmentAcked) {
      this.state.segmentAcked = index;
      this.state.seqAcked = seqLast;
      await this.saveState();
      await this.spool.release(index);
      this.cleanDirty();
    }
    this.maybeEndDegraded();
  }

  private endingDegraded = false;

  /**
   * Once the link is up and the spool has drained to half its bound, one resync logs the current
   * content of every dirty region, and per-write logging resumes behind it.
   */
  maybeEndDegraded(): void {
    if (
      !this.pipeline.degraded ||
      this.endingDegraded ||
      this.spool.redoBytes > this.spoolBytesMax / 2 ||
      // The previous resync first: until it is committed its regions cannot be cleaned, and
      // this one would log them all again (a resync of the whole volume after each spell).
      (this.lastResync !== undefined && this.state.seqAcked < this.lastResync.seqLast)
    )
      return;
    this.endingDegraded = true;
    const writes = this.pipeline.degraded.writes;
    this.options.log(
      'warn',
      `link back and spool drained: resyncing the dirty regions of ${writes} writes made in degraded mode`,
    );
    // The cleaning the last acknowledgement started clears the regions committed since; the
    // resync waits for it, or it would log them all again (and, when it outgrows what the
    // manager takes in before the spool fills, lead straight back into degraded mode).
    void this.cleaningDone
      .then(() => {
        // Quiet or not: the regions committed now hold nothing the replica lacks.
        this.cleanDirty(0);
        return this.cleaningDone;
      })
      .then(() =>
        this.resyncMarked(this.volumes, {
          reason: 'degraded mode ended',
          skipZero: false,
          endsDegraded: true,
        }),
      )
      .catch((error: unknown) =>
        this.options.log('error', `resync after degraded mode failed: ${errorMessage(error)}`),
      )
      .finally(() => {
        this.endingDegraded = false;
      });
  }

  get seqCommitted(): number {
    return this.state.seqAcked;
  }

  private cleaning = false;
  /** The cleaning under way (close() waits for it before it closes the files it uses). */
  private cleaningDone: Promise<void> = Promise.resolve();

  /**
   * Clears dirty regions whose writes are committed at the manager AND durable in production: a
   * region is only clean when a power loss can no longer take production away from the history.
   * So production is fdatasynced first, and only writes answered before that sync started count.
   * A failed fdatasync stops the write path (the restart resyncs and rewrites the dirty regions).
   */
  private cleanDirty(quietMs = DIRTY_QUIET_MS): void {
    const seqLimit = Math.min(this.state.seqAcked, this.pipeline.seqCaptured);
    const nowMs = Date.now();
    const volumes = this.volumes.filter((v) =>
      v.dirty.cleanable(seqLimit, nowMs, quietMs, DIRTY_HOT_MAX),
    );
    if (
      this.closing ||
      this.cleaning ||
      volumes.length === 0 ||
      this.pipeline.failure !== undefined
    )
      return;
    this.cleaning = true;
    this.cleaningDone = Promise.all(volumes.map((v) => fdatasyncAsync(v.fd)))
      .then(() => {
        for (const volume of volumes) volume.dirty.clean(seqLimit, nowMs, quietMs, DIRTY_HOT_MAX);
      })
      .catch((error: unknown) => {
        if (!this.closing) this.pipeline.fatal(error);
      })
      .finally(() => {
        this.cleaning = false;
      });
  }

  /**
   * Seals the active segment at the age limit, or sooner once it is SEAL_IDLE_MS old while the
   * manager is idle (connected, no sealed segment waiting or unacknowledged). A quiet manager thus
   * gets small segments and the recovery point stays close behind the writes; a busy one gets
   * bigger segments, which it applies more efficiently.
   */
  private sealIfOld(): void {
    if (this.spool.activeRecords === 0) return;
    const age = this.spool.activeAgeMs;
    const managerIdle = this.shipper.connected && this.spool.sealed.length === 0;
    if (age >= this.options.sealMs || (managerIdle && age >= SEAL_IDLE_MS))
      void this.pipeline.seal();
  }

  seal(): Promise<number> {
    return this.pipeline.seal();
  }

  report(): AgentReport {
    return this.status();
  }

  status(): AgentReport {
    const clientCount = this.clientCount;
    return {
      restoring: this.state.restoring,
      captured: this.volumes.map((v) => ({
        ...(this.pipeline.captured[v.index] ?? { writes: 0, bytes: 0 }),
      })),
      ...(clientCount ? { clients: this.volumes.map((v) => clientCount(v.name)) } : {}),
      seqCaptured: this.pipeline.seqCaptured,
      timeCapturedNs: this.pipeline.timeCapturedNs,
      spoolBytes: this.spool.totalBytes,
      sealedPending: this.spool.sealed.length,
      mode: this.pipeline.failure ? 'failed' : this.pipeline.degraded ? 'degraded' : 'logging',
      failure: this.pipeline.failure ?? this.shipper.refusal,
    };
  }

  private closing = false;

  async close(): Promise<void> {
    this.closing = true;
    clearInterval(this.sealTimer);
    clearInterval(this.cleanTimer);
    await this.pipeline.close();
    // After a failure the active segment is left as it is: a failed fsync may have dropped some of
    // its records from the way to the disk while the cache still shows them, and sealing would
    // make a segment look durable that is not. The next start's recovery writes its valid prefix
    // back and seals it (Spool.open).
    if (this.pipeline.failure === undefined) await this.spool.seal();
    await this.shipper.stop();
    // A cleaning started before close() still writes the dirty maps: their descriptors stay open
    // until it is done (a closed number could by then name another file).
    await this.cleaningDone;
    await this.spool.settle();
    this.spool.close();
    for (const volume of this.volumes) {
      fs.fsyncSync(volume.fd);
      fs.closeSync(volume.fd);
      volume.dirty.close();
    }
    // Writes made in degraded mode are only in the dirty map: an unclean mark makes the next start
    // resync them. So after a failed write path: an fsync that failed may have dropped writes
    // the log holds, and the fsync above then succeeds without having written them (Linux reports
    // the error once); only the unclean start's resync writes the dirty regions back.
    this.state.cleanShutdown =
      this.pipeline.degraded === undefined && this.pipeline.failure === undefined;
    await this.saveState();
    for (const lock of this.imageLocks) lock.release();
  }

  // ---- what the shipper ships and reports ----

  hello(): ReturnType<ShipperSource['hello']> {
    return {
      volumeSetId: this.state.volumeSetId,
      volumeSetName: this.state.volumeSetName,
      volumes: this.volumeInfo(),
      seqNext: this.spool.seqNextExpected,
    };
  }

  sealed(): readonly SealedSegment[] {
    return this.spool.sealed;
  }

  volumeInfo(): { name: string; sizeBytes: number }[] {
    return this.volumes.map((v) => ({ name: v.name, sizeBytes: v.sizeBytes }));
  }

  get volumeSetName(): string {
    return this.state.volumeSetName;
  }
}

/**
 * The checks of a volume list that need nothing opened: names, duplicates, existing images, and
 * the list the data directory already protects (volumes may only be added). Throws what
 * Agent.open would; reads the stored state and creates or changes nothing.
 */
export function checkVolumes(dataDir: string, given: VolumeSpec[]): void {
  const file = path.join(agentStateDir(dataDir), 'state.json');
  const stored = fs.existsSync(file)
    ? (JSON.parse(fs.readFileSync(file, 'utf8')) as AgentState).volumes
    : [];
  reconcileVolumes(stored, given, dataDir);
}

function sizeOfExisting(file: string): number {
  if (!fs.existsSync(file))
    throw new RewindError('REWIND_CONFIG', `production image ${file} does not exist`, {
      hint: 'give NAME:SIZE to create a new image, or the path of an existing file or block device',
    });
  return sizeOf(file);
}

export function uuidBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  assert(hex.length === 32, 'uuid has 32 hex digits');
  return Buffer.from(hex, 'hex');
}

/** The NBD face of a protected volume: reads from production, writes through the pipeline. */
class ProductionExport implements ExportBackend {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly = false;
  readonly multiConn = true; // one shared log and fdatasync: a FLUSH on any connection covers all
  private readonly agent: Agent;
  private readonly volume: ProductionVolume;

  constructor(agent: Agent, volume: ProductionVolume) {
    this.agent = agent;
    this.volume = volume;
    this.name = volume.name;
    this.description = `protected volume ${volume.name}`;
    this.sizeBytes = volume.sizeBytes;
  }

  read(offsetBytes: number, lengthBytes: number, done: ReadCallback): void {
    const buffer = Buffer.allocUnsafe(lengthBytes);
    fs.read(this.volume.fd, buffer, 0, lengthBytes, offsetBytes, (error, bytesRead) => {
      if (error) return done(NbdErrno.EIO);
      if (bytesRead < lengthBytes) buffer.fill(0, bytesRead);
      done(0, buffer);
    });
  }

  write(offsetBytes: number, data: Buffer, fua: boolean, done: DoneCallback): void {
    this.agent.pipeline.submitRecord(
      'write',
      this.volume,
      offsetBytes,
      data.length,
      data,
      fua,
      done,
    );
  }

  /** A large write as the socket pieces it arrived in: never joined on the event loop. */
  writePieces(
    offsetBytes: number,
    pieces: readonly Buffer[],
    fua: boolean,
    done: DoneCallback,
  ): void {
    let lengthBytes = 0;
    for (const piece of pieces) lengthBytes += piece.length;
    this.agent.pipeline.submitRecord(
      'write',
      this.volume,
      offsetBytes,
      lengthBytes,
      pieces,
      fua,
      done,
    );
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void {
    this.agent.pipeline.submitRecord(
      'zero',
      this.volume,
      offsetBytes,
      lengthBytes,
      undefined,
      fua,
      done,
    );
  }

  trim(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void {
    this.agent.pipeline.submitRecord(
      'trim',
      this.volume,
      offsetBytes,
      lengthBytes,
      undefined,
      fua,
      done,
    );
  }

  flush(done: DoneCallback): void {
    this.agent.pipeline.submitFlush(this.volume, done);
  }

  blockStatus(offsetBytes: number, lengthBytes: number, done: BlockStatusCallback): void {
    done(0, [{ lengthBytes, flags: 0 }]); // production may hold data anywhere; say so honestly
  }
}

function agentStateDir(dataDir: string): string {
  return path.join(dataDir, 'agent');
}

/** Where the agent of data directory `dataDir` keeps its redo segments. */
export function agentSpoolDir(dataDir: string): string {
  return path.join(agentStateDir(dataDir), 'spool');
}

async function loadState(stateDir: string, volumeSetName: string | undefined): Promise<AgentState> {
  const file = path.join(stateDir, 'state.json');
  if (fs.existsSync(file)) return JSON.parse(await fsp.readFile(file, 'utf8')) as AgentState;
  return {
    version: 1,
    volumeSetId: randomUUID(),
    volumeSetName: volumeSetName ?? 'default',
    volumes: [],
    seqAcked: 0,
    segmentAcked: 0,
    cleanShutdown: true,
  };
}

function writeState(stateDir: string, state: AgentState): Promise<void> {
  return writeFileDurable(path.join(stateDir, 'state.json'), JSON.stringify(state, null, 2));
}

function noop(): void {}

/** The stored volume list wins; new volumes may be added, nothing may change or disappear. */
function reconcileVolumes(
  stored: StoredVolume[],
  given: VolumeSpec[],
  dataDir: string,
): StoredVolume[] {
  if (given.length === 0) {
    if (stored.length > 0) return stored;
    given = [{ name: 'vol0', sizeBytes: 1024 ** 3 }];
  }
  const out = [...stored];
  const givenNames = new Set<string>();
  for (const spec of given) {
    if (!VOLUME_NAME.test(spec.name))
      throw new RewindError('REWIND_BAD_ARGUMENT', `volume name "${spec.name}" is invalid`, {
        hint: 'use letters, digits, dot, dash and underscore (at most 64)',
      });
    if (givenNames.has(spec.name))
      throw new RewindError('REWIND_BAD_ARGUMENT', `volume "${spec.name}" is given twice`);
    givenNames.add(spec.name);
    const existing = stored.find((v) => v.name === spec.name);
    const wantedPath = spec.path ? path.resolve(spec.path) : undefined;
    if (existing) {
      if (
        (wantedPath && wantedPath !== existing.path) ||
        (spec.sizeBytes !== undefined && !spec.path && spec.sizeBytes !== existing.sizeBytes)
      ) {
        throw new RewindError(
          'REWIND_CONFIG',
          `volume "${spec.name}" was ${existing.path} (${existing.sizeBytes} bytes) and cannot change`,
          {
            hint: 'use a new data directory to protect a different volume set',
          },
        );
      }
      continue;
    }
    const file = wantedPath ?? path.join(dataDir, 'production', `${spec.name}.img`);
    const twin = out.find((v) => v.path === file);
    if (twin)
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `volumes "${twin.name}" and "${spec.name}" name the same image ${file}`,
      );
    const sizeBytes = wantedPath ? sizeOfExisting(wantedPath) : (spec.sizeBytes as number);
    out.push({ name: spec.name, sizeBytes, path: file });
  }
  const missing = stored.filter((v) => !givenNames.has(v.name));
  if (missing.length > 0) {
    throw new RewindError(
      'REWIND_CONFIG',
      `volume list changed: ${missing.map((v) => v.name).join(', ')} missing`,
      {
        hint: `this data directory protects ${stored.map((v) => v.name).join(', ')}; give all of them (new volumes may be added) or none to resume`,
      },
    );
  }
  return out;
}

async function openVolume(
  stateDir: string,
  index: number,
  stored: StoredVolume,
): Promise<ProductionVolume> {
  if (!fs.existsSync(stored.path)) {
    await ensureDir(path.dirname(stored.path));
    const fd = fs.openSync(stored.path, 'w', FILE_MODE_PRIVATE);
    fs.ftruncateSync(fd, stored.sizeBytes);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
  }
  const blockDevice = isBlockDevice(stored.path);
  const actual = sizeOf(stored.path);
  if (actual < stored.sizeBytes) {
    throw new RewindError(
      'REWIND_CONFIG',
      `production image ${stored.path} is ${actual} bytes, expected ${stored.sizeBytes}`,
    );
  }
  const fd = fs.openSync(stored.path, 'r+');
  let dirty: DirtyMap;
  try {
    await ensureDir(path.join(stateDir, 'dirty'));
    dirty = DirtyMap.open(path.join(stateDir, 'dirty', `${stored.name}.map`), stored.sizeBytes);
  } catch (error) {
    rethrowIfBug(error);
    fs.closeSync(fd);
    throw error;
  }
  return {
    name: stored.name,
    index,
    sizeBytes: stored.sizeBytes,
    path: stored.path,
    fd,
    blockDevice,
    dirty,
  };
}
