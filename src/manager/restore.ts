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
  type ByteRange,
  errorMessage,
  mergeRanges,
  rethrowIfBug,
  RewindError,
} from '../core/index.js';
import { isZero } from '../platform/index.js';
import type { Message } from '../ship/index.js';
import type { View } from '../views/index.js';
import type { RestoreRow } from './catalog.js';
import type { Manager } from './manager.js';
import { checkRange, writtenRanges } from './queries.js';

export interface RestoreSpec {
  volumes: string[];
  /** POINT to restore to (or `fromClone`, whose seq is the point). */
  at?: string;
  /** Only these ranges (one volume only). */
  ranges?: ByteRange[];
  /** Take the bytes from this clone's current content instead of the history at POINT. */
  fromClone?: string;
}

export interface RestorePlan {
  seq: number;
  /** Committed seq the plan was computed against (a dry run does not wait for the agent). */
  asOfSeq: number;
  source: string;
  volumes: { volume: string; ranges: ByteRange[]; bytes: number }[];
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
}

const CHUNK_BYTES = 1024 * 1024;
/** A zero run is sent as one record up to this size (a record's length is a u64; keep it sane). */
const ZERO_RUN_BYTES_MAX = 1024 * 1024 * 1024;
const WINDOW_CHUNKS = 8;
const PROGRESS_SAVE_MS = 1000;

type Waiter = { resolve: (message: Message) => void; reject: (error: Error) => void };

export class Restorer {
  private readonly manager: Manager;
  private readonly waiters = new Map<string, Waiter>();
  /** Restores running in this process (a second request for one of their volumes is refused). */
  private readonly active = new Map<number, Promise<void>>();
  private readonly progress = new Map<number, number>();

  constructor(manager: Manager) {
    this.manager = manager;
  }

  // ---- Planning ----
  private validate(spec: RestoreSpec): void {
    if (!Array.isArray(spec.volumes) || spec.volumes.length === 0)
      throw new RewindError('REWIND_BAD_ARGUMENT', 'name at least one volume to restore');
    const known = this.manager.replicas.map((r) => r.name);
    for (const volume of spec.volumes) {
      if (!known.includes(volume))
        throw new RewindError('REWIND_NOT_FOUND', `no volume named "${volume}"`, {
          hint: `volumes: ${known.join(', ') || 'none yet'}`,
        });
    }
    if (new Set(spec.volumes).size !== spec.volumes.length)
      throw new RewindError('REWIND_BAD_ARGUMENT', 'a volume is named twice');
    if (spec.ranges && spec.ranges.length > 0) {
      if (spec.volumes.length !== 1)
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          '--range restores part of one volume; name exactly one',
        );
      for (const range of spec.ranges) checkRange(this.manager, spec.volumes[0] as string, range);
    }
    if ((spec.at === undefined) === (spec.fromClone === undefined))
      throw new RewindError('REWIND_BAD_ARGUMENT', 'give either --at POINT or --from-clone NAME');
  }

  private clone(name: string): View {
    const view = this.manager.views.get(name);
    if (!view || view.kind !== 'clone')
      throw new RewindError('REWIND_NOT_FOUND', `no clone named "${name}"`, {
        hint: 'rewind ls lists snapshots and clones',
      });
    return view;
  }

  /** The ranges to write per volume, against the history committed now. */
  async plan(spec: RestoreSpec): Promise<RestorePlan> {
    this.validate(spec);
    const clone = spec.fromClone === undefined ? undefined : this.clone(spec.fromClone);
    const seq = spec.at !== undefined ? this.manager.resolvePoint(spec.at) : (clone as View).seq;
    const asOfSeq = this.manager.seqCommitted();
    const volumes: RestorePlan['volumes'] = [];
    for (const volume of spec.volumes) {
      let ranges = await writtenRanges(this.manager, volume, seq, asOfSeq);
      if (clone) {
        // The clone's own writes differ from history too.
        const index = this.manager.replicas.findIndex((r) => r.name === volume);
        const overlay = clone.overlays?.[index];
        const own = overlay
          ? overlay.map
              .query(0, this.manager.volumeSize(index))
              .filter((p) => p.value !== undefined)
              .map((p) => ({ offset: p.start, length: p.end - p.start }))
          : [];
        ranges = mergeRanges([...ranges, ...own]);
      }
      if (spec.ranges && spec.ranges.length > 0)
        ranges = intersect(ranges, mergeRanges(spec.ranges));
      volumes.push({ volume, ranges, bytes: ranges.reduce((sum, r) => sum + r.length, 0) });
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
    if (!this.manager.agentConnected)
      throw new RewindError(
        'REWIND_BUSY',
        'no agent is connected, so production cannot be restored now',
        { hint: 'start the agent, or check rewind status' },
      );
    const busy = this.manager.catalog
      .runningRestores()
      .filter((row) =>
        (JSON.parse(row.spec) as RestoreSpec).volumes.some((v) => spec.volumes.includes(v)),
      );
    if (busy.length > 0)
      throw new RewindError(
        'REWIND_CONFLICT',
        `restore #${(busy[0] as RestoreRow).id} is still running on ${spec.volumes.join(', ')}`,
        { hint: 'wait for it (rewind restores), or abandon it with rewind restore --abandon ID' },
      );
    const clone = spec.fromClone === undefined ? undefined : this.clone(spec.fromClone);
    const seq = spec.at !== undefined ? this.manager.resolvePoint(spec.at) : (clone as View).seq;
    const id = this.manager.catalog.addRestore(JSON.stringify(spec), seq);
    this.launch(id);
    return this.status(id);
  }

  /** Runs every restore left running (after a restart or a lost link), once the agent is back. */
  resumeAll(): void {
    for (const row of this.manager.catalog.runningRestores())
      if (!this.active.has(row.id)) this.launch(row.id);
  }

  /** Gives up on a failed or stuck restore: the volumes come back online as they are now. */
  async abandon(id: number): Promise<RestoreStatus> {
    const row = this.manager.catalog.restore(id);
    if (!row) throw new RewindError('REWIND_NOT_FOUND', `no restore #${id}`);
    if (row.state === 'done')
      throw new RewindError('REWIND_CONFLICT', `restore #${id} already finished`);
    if (this.active.has(id))
      throw new RewindError(
        'REWIND_CONFLICT',
        `restore #${id} is running in this process; wait for it to finish or fail`,
      );
    const done = await this.ask({ type: 'restore-end', id, abandon: true }, `restore-done:${id}`);
    this.manager.catalog.updateRestore(id, {
      state: 'failed',
      message: `abandoned by the operator; production of ${this.volumesOf(row).join(', ')} is partially restored (now at seq ${(done as { seqLast: number }).seqLast})`,
    });
    return this.status(id);
  }

  private launch(id: number): void {
    const run = this.run(id)
      .catch((error: unknown) => {
        const message = errorMessage(error);
        this.manager.note('error', `restore #${id}: ${message}`);
        try {
          // A lost link leaves the restore running: it resumes when the agent is back.
          if (error instanceof LinkLost) {
            this.manager.catalog.updateRestore(id, {
              message: `waiting for the agent: ${message}`,
            });
          } else {
            this.manager.catalog.updateRestore(id, {
              state: 'failed',
              message: `${message}; production is partially restored and stays offline: run the same restore again to finish it, or rewind restore --abandon ${id}`,
            });
          }
        } catch (recordError) {
          rethrowIfBug(recordError);
          // The catalog is closing (shutdown): the row stays running and resumes at the next start.
          this.manager.note(
            'warn',
            `restore #${id}: could not record its state: ${errorMessage(recordError)}`,
          );
        }
      })
      .finally(() => {
        this.active.delete(id);
        this.progress.delete(id);
      });
    this.active.set(id, run);
  }

  private volumesOf(row: RestoreRow): string[] {
    return (JSON.parse(row.spec) as RestoreSpec).volumes;
  }

  private async run(id: number): Promise<void> {
    const row = this.manager.catalog.restore(id);
    if (!row) return;
    const spec = JSON.parse(row.spec) as RestoreSpec;
    const catalog = this.manager.catalog;
    catalog.updateRestore(id, { message: 'taking the volumes offline' });
    const ready = (await this.ask(
      { type: 'restore-begin', id, volumes: spec.volumes },
      `restore-ready:${id}`,
    )) as { seqLast: number };
    await this.manager.waitCommitted(ready.seqLast, 120_000);
    // The seq before the restore's own writes is kept from the first attempt: restoring to it undoes the restore.
    if (row.seqFirst === null) catalog.updateRestore(id, { seqFirst: ready.seqLast });
    const plan = await this.plan(
      spec.fromClone === undefined ? { ...spec, at: String(row.seq) } : spec,
    );
    catalog.updateRestore(id, {
      bytesTotal: plan.bytes,
      bytesDone: 0,
      message: `writing ${plan.bytes} bytes`,
    });
    const clone = spec.fromClone === undefined ? undefined : this.clone(spec.fromClone);
    const write = async (view: View): Promise<void> => {
      let chunk = 0;
      let done = 0;
      let savedAt = Date.now();
      const inFlight = new Set<Promise<void>>();
      const send = async (
        volume: string,
        offset: number,
        length: number,
        data: Buffer | undefined,
      ): Promise<void> => {
        const number = ++chunk;
        const sent = this.ask(
          {
            type: 'restore-write',
            id,
            chunk: number,
            volume,
            offset,
            length,
            zero: data === undefined,
          },
          `restore-written:${id}:${number}`,
          data,
        ).then((reply) => {
          const errno = (reply as { errno: number }).errno;
          if (errno !== 0)
            throw new RewindError(
              'REWIND_IO',
              `the agent could not write ${volume} at ${offset} (errno ${errno})`,
            );
          done += length;
          this.progress.set(id, done);
        });
        inFlight.add(sent);
        void sent.finally(() => inFlight.delete(sent)).catch(() => undefined);
        if (inFlight.size >= WINDOW_CHUNKS) await Promise.race(inFlight);
        if (Date.now() - savedAt >= PROGRESS_SAVE_MS) {
          catalog.updateRestore(id, { bytesDone: done });
          savedAt = Date.now();
        }
      };
      for (const { volume, ranges } of plan.volumes) {
        const index = this.manager.replicas.findIndex((r) => r.name === volume);
        for (const range of ranges) {
          // Runs the view knows to be zero go as one payload-free zero record each (up to
          // ZERO_RUN_BYTES_MAX); the rest is read and sent in chunks (an all-zero chunk as a zero).
          let at = range.offset;
          for (const piece of view.zeroPieces(index, range.offset, range.length)) {
            const pieceEnd = at + piece.lengthBytes;
            for (let offset = at; offset < pieceEnd;) {
              if (piece.zero) {
                const length = Math.min(ZERO_RUN_BYTES_MAX, pieceEnd - offset);
                await send(volume, offset, length, undefined);
                offset += length;
              } else {
                const length = Math.min(CHUNK_BYTES, pieceEnd - offset);
                const data = view.read(index, offset, length);
                await send(volume, offset, length, isZero(data) ? undefined : data);
                offset += length;
              }
            }
            at = pieceEnd;
          }
        }
      }
      await Promise.all(inFlight);
      catalog.updateRestore(id, { bytesDone: done });
    };
    if (clone) await write(clone);
    else await this.manager.withView(row.seq, write);
    const end = (await this.ask(
      { type: 'restore-end', id, abandon: false },
      `restore-done:${id}`,
    )) as { seqLast: number };
    catalog.updateRestore(id, { state: 'done', seqLast: end.seqLast, message: null });
    this.manager.note(
      'info',
      `restore #${id} done: ${spec.volumes.join(', ')} at seq ${row.seq}, ${plan.bytes} bytes written`,
    );
  }

  /** Waits for the running restore `id` to settle (tests and the CLI's --wait). */
  async settled(id: number): Promise<RestoreStatus> {
    await this.active.get(id);
    return this.status(id);
  }

  status(id: number): RestoreStatus {
    const row = this.manager.catalog.restore(id);
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
    return this.manager.catalog.restores().map((row) => this.status(row.id));
  }

  // ---- Link ----
  private ask(message: Message, key: string, payload?: Buffer): Promise<Message> {
    return new Promise((resolve, reject) => {
      if (!this.manager.sendToAgent(message, payload))
        return reject(new LinkLost('the agent is not connected'));
      this.waiters.set(key, { resolve, reject });
    });
  }

  /** Replies from the agent; returns false when the message is not a restore reply. */
  onAgentMessage(message: Message): boolean {
    let key: string;
    switch (message.type) {
      case 'restore-ready':
      case 'restore-done':
        key = `${message.type}:${message.id}`;
        break;
      case 'restore-written':
        key = `restore-written:${message.id}:${message.chunk}`;
        break;
      case 'restore-failed': {
        // Fail every request of that restore.
        for (const [k, waiter] of this.waiters) {
          if (k.split(':')[1] === String(message.id)) {
            this.waiters.delete(k);
            waiter.reject(new RewindError('REWIND_IO', `the agent refused: ${message.message}`));
          }
        }
        return true;
      }
      default:
        return false;
    }
    const waiter = this.waiters.get(key);
    this.waiters.delete(key);
    waiter?.resolve(message);
    return true;
  }

  onAgentLost(): void {
    for (const waiter of this.waiters.values())
      waiter.reject(new LinkLost('the link to the agent was lost'));
    this.waiters.clear();
  }
}

class LinkLost extends Error {}

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
