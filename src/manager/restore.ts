// Production restore, driven by the manager over the agent link (the same in `rewind up` and a
// split deployment): the volumes go offline on the agent, everything captured before is
// committed, then exactly the byte ranges written after POINT are written back with their content
// at POINT (or a clone's current content) through the agent's normal write path, so the restore
// is itself logged, replicated and undoable. Then the volumes come back online.
//
// A restore is a catalog row before anything is touched. It is idempotent (the ranges are always
// recomputed from the log, which includes a partial earlier attempt), so an interrupted restore
// (link lost, manager or agent killed) is simply run again when the agent is back; until then the
// agent keeps the volumes offline, also across its restarts.
import {
  errorMessage,
  mergeRanges,
  rethrowIfBug,
  RewindError,
  type ByteRange,
  type LogFunction,
} from '../core/index.js';
import { isZero } from '../platform/index.js';
import type { View } from '../views/index.js';
import { LinkLostError, type AgentLink } from './agent-link.js';
import type { Catalog, RestoreRow } from './catalog.js';
import { checkRange, writtenRanges, type LogSource } from './queries.js';

/** What a restore needs from the manager. */
export interface RestoreHost extends LogSource {
  volumeNames(): string[];
  seqCommitted(): number;
  waitCommitted(seq: number, timeoutMs: number): Promise<void>;
  /** A private view at `seq`, held still while `work` runs. */
  withView<T>(seq: number, work: (view: View) => Promise<T>): Promise<T>;
  /**
   * Fetches into the archive cache what restoring to `seq` reads (its view and the archived
   * writes since it) when `seq` is older than the journal; nothing otherwise.
   */
  prefetch(seq: number): Promise<void>;
  clone(name: string): View;
  /** NBD clients connected to a production volume, as the agent last said (undefined: unknown). */
  clientsOf(volume: string): number | undefined;
  /** Resolves once the agent reported after `afterMs` (epoch ms), or after `timeoutMs` anyway. */
  agentReportAfter(afterMs: number, timeoutMs: number): Promise<void>;
  /** The agent's end of the restore commands. */
  readonly agent: Pick<AgentLink, 'connected' | 'restoreBegin' | 'restoreWrite' | 'restoreEnd'>;
  readonly restores: Pick<
    Catalog,
    'addRestore' | 'restore' | 'restores' | 'runningRestores' | 'updateRestore'
  >;
  /** The manager's logging. */
  note: LogFunction;
}

export interface RestoreSpec {
  volumes: string[];
  /** POINT to restore to (or `fromClone`, whose seq is the point). */
  at?: string;
  /** Only these ranges (one volume only). */
  ranges?: ByteRange[];
  /** Take the bytes from this clone's current content instead of the history at POINT. */
  fromClone?: string;
  /** Restore even with NBD clients connected (they are disconnected as the volume goes offline). */
  force?: boolean;
}

export interface RestorePlan {
  seq: number;
  /** Committed seq the plan was computed against (a dry run does not wait for the agent). */
  asOfSeq: number;
  source: string;
  /** `clients`: NBD clients connected to the volume now (null: the agent has not said). */
  volumes: { volume: string; ranges: ByteRange[]; bytes: number; clients: number | null }[];
  bytes: number;
}

export interface RestoreStatus {
  id: number;
  state: RestoreRow['state'];
  volumes: string[];
  seq: number;
  source: string;
  bytesTotal: number;
  bytesDone: number;
  /** Last seq captured before the restore wrote anything: restoring to it undoes the restore. */
  seqBefore: number | null;
  seqLast: number | null;
  message: string | null;
  startedAt: string;
  finishedAt: string | null;
  /** In the answer to a start with `force`: the NBD clients it disconnects. */
  clientsDisconnected?: number;
}

const CHUNK_BYTES = 1024 * 1024;
/** How long after a client closed the agent's report surely no longer counts it (4 reports). */
const AGENT_REPORT_SETTLE_MS = 1000;
/** A zero run is sent as one record up to this size (a record's length is a u64; keep it sane). */
const ZERO_RUN_BYTES_MAX = 1024 * 1024 * 1024;
const WINDOW_CHUNKS = 8;
const PROGRESS_SAVE_MS = 1000;

export class Restorer {
  private readonly host: RestoreHost;
  /** Restores running in this process (a second request for one of their volumes is refused). */
  private readonly active = new Map<number, Promise<void>>();
  private readonly progress = new Map<number, number>();

  constructor(host: RestoreHost) {
    this.host = host;
  }

  // ---- Planning ----
  private validate(spec: RestoreSpec): void {
    if (!Array.isArray(spec.volumes) || spec.volumes.length === 0)
      throw new RewindError('REWIND_BAD_ARGUMENT', 'name at least one volume to restore');
    for (const volume of spec.volumes) this.host.volumeIndex(volume);
    if (new Set(spec.volumes).size !== spec.volumes.length)
      throw new RewindError('REWIND_BAD_ARGUMENT', 'a volume is named twice');
    if (spec.ranges && spec.ranges.length > 0) {
      if (spec.volumes.length !== 1)
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          '--range restores part of one volume; name exactly one',
        );
      for (const range of spec.ranges) checkRange(this.host, spec.volumes[0] as string, range);
    }
    if ((spec.at === undefined) === (spec.fromClone === undefined))
      throw new RewindError('REWIND_BAD_ARGUMENT', 'give either --at POINT or --from-clone NAME');
  }

  /** The seq a restore goes to: its POINT, or the clone's seq. */
  private targetSeq(spec: RestoreSpec): number {
    if (spec.at !== undefined) return this.host.resolvePoint(spec.at);
    return this.host.clone(spec.fromClone as string).seq;
  }

  /**
   * The byte ranges of `volume` a clone wrote itself (its overlay), merged: what
   * `restore --from-clone` takes from it beyond the history, and what `rewind diff --clone` lists.
   */
  cloneRanges(
    volume: string,
    cloneName: string,
  ): { clone: string; seq: number; ranges: ByteRange[]; bytes: number } {
    this.host.volumeIndex(volume); // refuses an unknown volume by name
    const clone = this.host.clone(cloneName);
    const ranges = mergeRanges(cloneWrites(clone, this.host, volume));
    return {
      clone: clone.name,
      seq: clone.seq,
      ranges,
      bytes: ranges.reduce((sum, r) => sum + r.length, 0),
    };
  }

  /** The ranges to write per volume, against the history committed now. */
  async plan(spec: RestoreSpec): Promise<RestorePlan> {
    this.validate(spec);
    const clone = spec.fromClone === undefined ? undefined : this.host.clone(spec.fromClone);
    const seq = this.targetSeq(spec);
    const asOfSeq = this.host.seqCommitted();
    const volumes: RestorePlan['volumes'] = [];
    for (const volume of spec.volumes) {
      let ranges = await writtenRanges(this.host, volume, seq, asOfSeq);
      if (clone) ranges = mergeRanges([...ranges, ...cloneWrites(clone, this.host, volume)]);
      if (spec.ranges && spec.ranges.length > 0)
        ranges = intersect(ranges, mergeRanges(spec.ranges));
      volumes.push({
        volume,
        ranges,
        bytes: ranges.reduce((sum, r) => sum + r.length, 0),
        clients: this.host.clientsOf(volume) ?? null,
      });
    }
    return {
      seq,
      asOfSeq,
      source: clone ? `clone ${clone.name}` : `history at seq ${seq}`,
      volumes,
      bytes: volumes.reduce((sum, v) => sum + v.bytes, 0),
    };
  }

  // ---- Running ----
  /** Records the restore and starts it; returns its id at once (progress via `status`). */
  async start(spec: RestoreSpec): Promise<RestoreStatus> {
    this.validate(spec);
    if (!this.host.agent.connected)
      throw new RewindError(
        'REWIND_BUSY',
        'no agent is connected, so production cannot be restored now',
        { hint: 'start the agent, or check rewind status' },
      );
    const busy = this.host.restores
      .runningRestores()
      .filter((row) => this.volumesOf(row).some((v) => spec.volumes.includes(v)));
    if (busy.length > 0)
      throw new RewindError(
        'REWIND_CONFLICT',
        `restore #${(busy[0] as RestoreRow).id} is still running on ${spec.volumes.join(', ')}`,
        { hint: 'wait for it (rewind restores), or abandon it with rewind restore --abandon ID' },
      );
    const seq = this.targetSeq(spec);
    const disconnected = await this.refuseConnected(spec);
    const id = this.host.restores.addRestore(JSON.stringify(spec), seq);
    if (disconnected > 0)
      this.host.note(
        'warn',
        `restore #${id}: --force given, ${disconnected} NBD clients of ${spec.volumes.join(', ')} are disconnected`,
      );
    this.launch(id);
    return {
      ...this.status(id),
      ...(disconnected > 0 ? { clientsDisconnected: disconnected } : {}),
    };
  }

  /**
   * A restore under a connected client is refused unless forced: a mounted filesystem would hit
   * I/O errors, and a client that reconnects could write its stale cache back over the restored
   * volume. Returns how many clients a forced restore disconnects.
   */
  private async refuseConnected(spec: RestoreSpec): Promise<number> {
    const count = (): { volume: string; clients: number }[] =>
      spec.volumes
        .map((volume) => ({ volume, clients: this.host.clientsOf(volume) ?? 0 }))
        .filter((v) => v.clients > 0);
    let connected = count();
    if (connected.length > 0 && spec.force !== true) {
      // A client that went away a moment ago (`rewind unmap` just before the restore) may still
      // be in the agent's last report: its next reports decide.
      await this.host.agentReportAfter(Date.now() + AGENT_REPORT_SETTLE_MS, 2000);
      connected = count();
    }
    const total = connected.reduce((sum, v) => sum + v.clients, 0);
    if (total > 0 && spec.force !== true)
      throw new RewindError(
        'REWIND_CONFLICT',
        `${connected.map((v) => `volume ${v.volume} has ${v.clients} NBD client${v.clients === 1 ? '' : 's'} connected`).join(', ')}: a mounted filesystem would see its device change under it`,
        {
          hint: 'unmount the filesystem and disconnect the clients (rewind unmap, nbdfuse, qemu) first, or give --force to disconnect them',
        },
      );
    return total;
  }

  /** Runs every restore left running (after a restart or a lost link), once the agent is back. */
  resumeAll(): void {
    for (const row of this.host.restores.runningRestores())
      if (!this.active.has(row.id)) this.launch(row.id);
  }

  /** Gives up on a failed or stuck restore: the volumes come back online as they are now. */
  async abandon(id: number): Promise<RestoreStatus> {
    const row = this.host.restores.restore(id);
    if (!row) throw new RewindError('REWIND_NOT_FOUND', `no restore #${id}`);
    if (row.state === 'done')
      throw new RewindError('REWIND_CONFLICT', `restore #${id} already finished`);
    if (this.active.has(id))
      throw new RewindError(
        'REWIND_CONFLICT',
        `restore #${id} is running in this process; wait for it to finish or fail`,
      );
    const seqLast = await this.host.agent.restoreEnd(id, true);
    this.host.restores.updateRestore(id, {
      state: 'failed',
      message: `abandoned by the operator; production of ${this.volumesOf(row).join(', ')} is partially restored (now at seq ${seqLast})`,
    });
    return this.status(id);
  }

  private launch(id: number): void {
    const run = this.run(id)
      .catch((error: unknown) => {
        rethrowIfBug(error);
        this.recordFailure(id, error);
      })
      .finally(() => {
        this.active.delete(id);
        this.progress.delete(id);
      });
    this.active.set(id, run);
  }

  private recordFailure(id: number, error: unknown): void {
    const message = errorMessage(error);
    this.host.note('error', `restore #${id}: ${message}`);
    try {
      // A lost link leaves the restore running: it resumes when the agent is back.
      if (error instanceof LinkLostError) {
        this.host.restores.updateRestore(id, { message: `waiting for the agent: ${message}` });
      } else {
        this.host.restores.updateRestore(id, {
          state: 'failed',
          message: `${message}; production is partially restored and stays offline: run the same restore again to finish it, or rewind restore --abandon ${id}`,
        });
      }
    } catch (recordError) {
      rethrowIfBug(recordError);
      // The catalog is closing (shutdown): the row stays running and resumes at the next start.
      this.host.note(
        'warn',
        `restore #${id}: could not record its state: ${errorMessage(recordError)}`,
      );
    }
  }

  private volumesOf(row: RestoreRow): string[] {
    return (JSON.parse(row.spec) as RestoreSpec).volumes;
  }

  private async run(id: number): Promise<void> {
    const restores = this.host.restores;
    const row = restores.restore(id);
    if (!row) return;
    const spec = JSON.parse(row.spec) as RestoreSpec;
    // A point older than the journal is fetched from the archive before the volumes go offline:
    // a store that is down or refuses fails the restore with production untouched and online.
    if (row.seqFirst === null && spec.fromClone === undefined) {
      restores.updateRestore(id, { message: 'fetching from the archive' });
      try {
        await this.host.prefetch(row.seq);
      } catch (error) {
        rethrowIfBug(error);
        const message = errorMessage(error);
        this.host.note('error', `restore #${id}: ${message}`);
        restores.updateRestore(id, {
          state: 'failed',
          message: `${message}; nothing was restored, and production (${spec.volumes.join(', ')}) stayed online as it was`,
        });
        return;
      }
    }
    restores.updateRestore(id, { message: 'taking the volumes offline' });
    const seqBefore = await this.host.agent.restoreBegin(id, spec.volumes);
    await this.host.waitCommitted(seqBefore, COMMIT_WAIT_MS);
    // The seq before the restore's own writes is kept from the first attempt: restoring to it
    // undoes the restore.
    if (row.seqFirst === null) restores.updateRestore(id, { seqFirst: seqBefore });
    const plan = await this.plan(
      spec.fromClone === undefined ? { ...spec, at: String(row.seq) } : spec,
    );
    restores.updateRestore(id, {
      bytesTotal: plan.bytes,
      bytesDone: 0,
      message: `writing ${plan.bytes} bytes`,
    });
    if (spec.fromClone !== undefined)
      await this.writePlan(id, plan, this.host.clone(spec.fromClone));
    else await this.host.withView(row.seq, (view) => this.writePlan(id, plan, view));
    const seqLast = await this.host.agent.restoreEnd(id, false);
    restores.updateRestore(id, { state: 'done', seqLast, message: null });
    this.host.note(
      'info',
      `restore #${id} done: ${spec.volumes.join(', ')} at seq ${row.seq}, ${plan.bytes} bytes written`,
    );
  }

  /**
   * Writes the planned ranges with their content in `view` through the agent, up to WINDOW_CHUNKS
   * at once. Runs the view knows to be zero go as one payload-free zero record each (up to
   * ZERO_RUN_BYTES_MAX); the rest is read and sent in chunks (an all-zero chunk as a zero run).
   */
  private async writePlan(id: number, plan: RestorePlan, view: View): Promise<void> {
    const writer = new WindowedWrites(id, this.host, (done) => this.progress.set(id, done));
    for (const { volume, ranges } of plan.volumes) {
      const index = this.host.volumeIndex(volume);
      for (const range of ranges) {
        let at = range.offset;
        for (const piece of view.zeroPieces(index, range.offset, range.length)) {
          const pieceEnd = at + piece.lengthBytes;
          for (let offset = at; offset < pieceEnd;) {
            const length = Math.min(
              piece.zero ? ZERO_RUN_BYTES_MAX : CHUNK_BYTES,
              pieceEnd - offset,
            );
            const data = piece.zero ? undefined : view.read(index, offset, length);
            await writer.send({
              volume,
              offset,
              length,
              data: data && !isZero(data) ? data : undefined,
            });
            offset += length;
          }
          at = pieceEnd;
        }
      }
    }
    await writer.drain();
  }

  /** Waits for the running restore `id` to settle (tests and the CLI's --wait). */
  async settled(id: number): Promise<RestoreStatus> {
    await this.active.get(id);
    return this.status(id);
  }

  status(id: number): RestoreStatus {
    const row = this.host.restores.restore(id);
    if (!row)
      throw new RewindError('REWIND_NOT_FOUND', `no restore #${id}`, {
        hint: 'rewind restores lists them',
      });
    const spec = JSON.parse(row.spec) as RestoreSpec;
    return {
      id: row.id,
      state: row.state,
      volumes: spec.volumes,
      seq: row.seq,
      source: spec.fromClone ? `clone ${spec.fromClone}` : `history at seq ${row.seq}`,
      bytesTotal: row.bytesTotal,
      bytesDone: this.progress.get(id) ?? row.bytesDone,
      seqBefore: row.seqFirst,
      seqLast: row.seqLast,
      message: row.message,
      startedAt: row.startedAt,
      finishedAt: row.finishedAt,
    };
  }

  list(): RestoreStatus[] {
    return this.host.restores.restores().map((row) => this.status(row.id));
  }
}

/** How long a restore waits for the writes captured before it to be committed. */
const COMMIT_WAIT_MS = 120_000;

/**
 * Restore writes in flight to the agent, at most WINDOW_CHUNKS: `send` waits while the window is
 * full; the first failure fails the restore; progress is saved every PROGRESS_SAVE_MS.
 */
class WindowedWrites {
  private chunk = 0;
  private done = 0;
  private savedAtMs = Date.now();
  private readonly inFlight = new Set<Promise<void>>();
  private failure: Error | undefined = undefined;

  constructor(
    private readonly id: number,
    private readonly host: RestoreHost,
    private readonly onProgress: (bytesDone: number) => void,
  ) {}

  async send(write: {
    volume: string;
    offset: number;
    length: number;
    data: Buffer | undefined;
  }): Promise<void> {
    this.throwIfFailed();
    const sent = this.host.agent.restoreWrite(this.id, ++this.chunk, write).then((errno) => {
      if (errno !== 0) {
        throw new RewindError(
          'REWIND_IO',
          `the agent could not write ${write.volume} at ${write.offset} (errno ${errno})`,
        );
      }
      this.done += write.length;
      this.onProgress(this.done);
    });
    const tracked = sent.then(
      () => {
        this.inFlight.delete(tracked);
      },
      (error: unknown) => {
        this.inFlight.delete(tracked);
        rethrowIfBug(error);
        this.failure ??= error instanceof Error ? error : new Error(errorMessage(error));
      },
    );
    this.inFlight.add(tracked);
    if (this.inFlight.size >= WINDOW_CHUNKS) await Promise.race(this.inFlight);
    if (Date.now() - this.savedAtMs >= PROGRESS_SAVE_MS) {
      this.host.restores.updateRestore(this.id, { bytesDone: this.done });
      this.savedAtMs = Date.now();
    }
  }

  async drain(): Promise<void> {
    await Promise.all(this.inFlight);
    this.throwIfFailed();
    this.host.restores.updateRestore(this.id, { bytesDone: this.done });
  }

  private throwIfFailed(): void {
    if (this.failure !== undefined) throw this.failure;
  }
}

/** The ranges a clone wrote to `volume` itself (they differ from history too). */
function cloneWrites(clone: View, host: RestoreHost, volume: string): ByteRange[] {
  const index = host.volumeIndex(volume);
  const overlay = clone.overlays?.[index];
  if (!overlay) return [];
  return overlay.map
    .query(0, host.volumeSize(index))
    .filter((p) => p.value !== undefined)
    .map((p) => ({ offset: p.start, length: p.end - p.start }));
}
/** Intersection of two merged, ascending range lists. */
function intersect(a: readonly ByteRange[], b: readonly ByteRange[]): ByteRange[] {
  const out: ByteRange[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) {
    const x = a[i] as ByteRange;
    const y = b[j] as ByteRange;
    const start = Math.max(x.offset, y.offset);
    const end = Math.min(x.offset + x.length, y.offset + y.length);
    if (start < end) out.push({ offset: start, length: end - start });
    if (x.offset + x.length < y.offset + y.length) i++;
    else j++;
  }
  return out;
}
