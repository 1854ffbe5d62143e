// The transaction pipeline of the manager: each sealed segment from the agent becomes a
// transaction that passes, in seq order and one at a time, through the stages below, each made
// durable before the next begins. Owns the turn queue (transactions and view builds never
// interleave), the committed position and its waiters, the early store of the next segment, and
// the recovery of a transaction a crash interrupted. Views learn of new undo extents through one
// callback, before the replica changes under them.
//
//   arrived ─ checked ─ storing ─ stored ─ applying ─ written ─ syncing ─ committed
//             (turn)    redo copy  catalog   views take  replica     replica    catalog,
//                       + undo     row as    the undo    writes in   fdatasync  then ack
//                       (or early) undo-saved            page cache
import fsp from 'node:fs/promises';
import {
  assert,
  crashPoint,
  errorMessage,
  isDiskError,
  isDiskFull,
  rethrowIfBug,
  RewindError,
  SegmentError,
  type LogFunction,
} from '../core/index.js';
import {
  parseSealedRedo,
  parseUndo,
  SEGMENT_FLAG_RESYNC,
  SEGMENT_FLAG_RESYNC_END,
  type RedoRecord,
  type SealedRedo,
  type UndoExtent,
} from '../log/index.js';
import { linkFileDurable, writeFileDurable } from '../platform/index.js';
import { markApplied, replicasOf } from './apply.js';
import type { Applier } from './apply-pool.js';
import type { Catalog, TxKind, TxRow } from './catalog.js';
import type { ReplicaVolume } from './replica.js';
import type { TxFiles } from './txfiles.js';

/** A transaction's stage while it has its turn (see the diagram above). */
export type TxStage =
  'checked' | 'storing' | 'stored' | 'applying' | 'written' | 'syncing' | 'committed';

/** The stages each stage may go to; a transaction that fails leaves its turn from any stage. */
const NEXT_STAGE: { readonly [S in TxStage]: readonly TxStage[] } = {
  checked: ['storing', 'stored', 'applying'], // a resent or recovered transaction skips ahead
  storing: ['stored'],
  stored: ['applying'],
  applying: ['written'],
  written: ['syncing', 'committed'], // a recovered 'applied' transaction has nothing to sync
  syncing: ['committed'],
  committed: [],
};

/** One copy of a segment as it arrived from the agent, announced and (when it parsed) verified. */
export interface Arrival {
  index: number;
  seqFirst: number;
  seqLast: number;
  fileCrc: number;
  payload: Buffer;
  parsing: { parsed: SealedRedo } | { error: unknown };
  /** `rewind up`: the agent's sealed file holding `payload`, hard-linked as the redo copy. */
  linkFrom?: string;
}

/** How a segment's turn ended: the agent is told either way. */
export type SegmentOutcome =
  | { kind: 'ack'; index: number; seqLast: number }
  | { kind: 'refused'; index: number; code: string; message: string };

/** The last committed transaction: the replica equals the history up to here. */
export interface CommittedPosition {
  readonly idx: number;
  readonly seq: number;
  readonly timeNs: bigint;
}

export interface TxPipelineOptions {
  catalog: Catalog;
  txFiles: TxFiles;
  /** The replicas, by volume index (the link adds volumes when an agent brings new ones). */
  replicas: readonly ReplicaVolume[];
  applier: Applier;
  log: LogFunction;
  /** Open views take a transaction's undo extents, before its replica writes (the one callback). */
  onUndo: (idx: number, extents: readonly UndoExtent[]) => void;
  /** Why a new segment must wait now (the journal is full and its policy stops applying). */
  admission?: () => string | undefined;
  /**
   * A stored transaction of `bytes` (redo plus undo) is about to be applied: retention makes
   * room for it under the journal limit, or says why it must wait (it is refused as busy).
   */
  makeRoom?: (bytes: number, resync: boolean) => string | undefined;
  /**
   * A transaction committed: retention looks at the journal again, the console's events, the
   * metrics and the simulation take it. It must not throw.
   */
  onCommitted?: (event: CommitEvent) => void;
}

/** A transaction just committed, for observers. */
export interface CommitEvent {
  tx: TxRow;
  records: readonly RedoRecord[];
  /** Replica writes and their fdatasync; undefined when recovery found them already done. */
  applyMs: number | undefined;
}

type StoreResult = Awaited<ReturnType<Applier['saveUndo']>>;

/**
 * The next segment's redo copy and undo, begun before its turn (see storeEarly): registered on
 * arrival, started once the transaction before it has its replica writes issued.
 */
interface EarlyStore {
  readonly arrival: Arrival;
  readonly parsed: SealedRedo;
  stage: 'waiting' | 'storing' | 'settled';
  result: Promise<StoreResult> | undefined;
  settled: Promise<void> | undefined;
}

export class TxPipeline {
  private readonly catalog: Catalog;
  private readonly txFiles: TxFiles;
  private readonly replicas: readonly ReplicaVolume[];
  private readonly applier: Applier;
  private readonly log: LogFunction;
  private readonly onUndo: TxPipelineOptions['onUndo'];
  private readonly admission: () => string | undefined;
  private readonly makeRoom: (bytes: number, resync: boolean) => string | undefined;
  private readonly onCommitted: (event: CommitEvent) => void;
  /** Transactions, view builds and other exclusive work, one after the other. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Set from the catalog by recover(), which must run before anything else. */
  private committedPosition: CommittedPosition = { idx: 0, seq: 0, timeNs: 0n };
  private recovered = false;
  /** The transaction whose turn it is, and its stage. */
  private turn: { idx: number; seqLast: number; stage: TxStage } | undefined;
  /** Early stores by segment index: at most one per index, whichever copy arrived first. */
  private readonly early = new Map<number, EarlyStore>();
  /** A segment refused for lack of space: later ones wait behind it. */
  private busyFrom: number | undefined;
  private commitWaiters: { seq: number; resolve: () => void }[] = [];
  private closing = false;
  /** Segments whose early store was used by their turn (the simulation checks it happens). */
  earlyStores = 0;
  /**
   * The agent said this manager lost history: the segment that starts the resync after the gap
   * (this index, this seq) is accepted without continuity, once, and the gap recorded with it.
   */
  private gapExpected: { idx: number; seqFirst: number } | undefined;

  constructor(options: TxPipelineOptions) {
    this.catalog = options.catalog;
    this.txFiles = options.txFiles;
    this.replicas = options.replicas;
    this.applier = options.applier;
    this.log = options.log;
    this.onUndo = options.onUndo;
    this.admission = options.admission ?? (() => undefined);
    this.makeRoom = options.makeRoom ?? (() => undefined);
    this.onCommitted = options.onCommitted ?? (() => undefined);
  }

  // ---- positions ----

  get committed(): CommittedPosition {
    return this.committedPosition;
  }

  /**
   * The last transaction whose replica writes are issued (in the page cache; its fdatasync and
   * commit may still be running): the replica as the next segment's undo must read it.
   */
  private get written(): { idx: number; seq: number } {
    const turn = this.turn;
    if (turn && (turn.stage === 'written' || turn.stage === 'syncing')) {
      return { idx: turn.idx, seq: turn.seqLast };
    }
    return { idx: this.committedPosition.idx, seq: this.committedPosition.seq };
  }

  private lastCommitted(): CommittedPosition {
    const last = this.catalog.lastTx();
    assert(!last || last.state === 'committed', 'no uncommitted transaction outside a turn');
    return {
      idx: last?.idx ?? 0,
      seq: last?.seqLast ?? 0,
      timeNs: BigInt(last?.timeLastUs ?? 0) * 1000n,
    };
  }

  /**
   * The agent reports that seqs after the committed one up to `seqFirst - 1` are lost to this
   * manager, and that a resync of everything starts at segment `segmentFirst`. Refused unless it
   * lies after the committed position; the gap is only recorded once that segment is stored.
   */
  expectGap(gap: { segmentFirst: number; seqFirst: number }): void {
    const committed = this.committedPosition;
    if (gap.segmentFirst <= committed.idx || gap.seqFirst <= committed.seq + 1) {
      throw new RewindError(
        'REWIND_PROTOCOL',
        `a history gap must start after the committed segment ${committed.idx} (seq ${committed.seq}); the agent named segment ${gap.segmentFirst} at seq ${gap.seqFirst}`,
      );
    }
    this.gapExpected = { idx: gap.segmentFirst, seqFirst: gap.seqFirst };
  }

  // ---- the queue ----

  /**
   * Runs `work` after everything queued before it: transactions and view builds never interleave.
   */
  exclusive<T>(work: () => Promise<T>): Promise<T> {
    assert(this.recovered, 'the pipeline recovers before it takes work');
    const next = this.queue.then(work, work);
    // The caller gets the error; the queue only goes on (a refused request is not logged here).
    this.queue = next.then(
      () => undefined,
      (error: unknown) => {
        rethrowIfBug(error);
      },
    );
    return next;
  }

  /**
   * Takes a segment copy through its turn. The outcome (ack or refusal) is for the agent; anything
   * the turn throws but a programmer error becomes a refusal with the error's code, so no
   * segment is ever left unanswered. `arriving` resolves once the payload is in memory.
   */
  receive(arriving: Promise<Arrival>): Promise<SegmentOutcome> {
    void arriving.then((arrival) => this.storeEarly(arrival));
    return this.exclusive(async () => {
      const arrival = await arriving;
      try {
        return await this.segmentTurn(arrival);
      } catch (error) {
        rethrowIfBug(error);
        this.turn = undefined;
        const code = error instanceof RewindError ? error.code : 'REWIND_IO';
        return this.refusal(arrival.index, code, `failed in its turn: ${errorMessage(error)}`);
      }
    });
  }

  private refusal(index: number, code: string, message: string): SegmentOutcome {
    this.log('error', `refused segment ${index}: ${message}`);
    return { kind: 'refused', index, code, message };
  }

  private async segmentTurn(arrival: Arrival): Promise<SegmentOutcome> {
    const { index } = arrival;
    const committed = this.committedPosition;
    if (index <= committed.idx) {
      const row = this.catalog.tx(index);
      if (row === undefined || row.kind === 'merged') {
        // Committed, and since thinned or dropped by retention: nothing to compare it with, and
        // nothing of it is applied again.
        this.log(
          'info',
          `segment ${index} was committed and its history since thinned or dropped; acknowledged again`,
        );
        return { kind: 'ack', index, seqLast: arrival.seqLast };
      }
      // A resend after a lost ack is answered idempotently (applied once) when it is byte for
      // byte the committed segment; anything else under that index is refused.
      if (
        row &&
        row.redoCrc === arrival.fileCrc >>> 0 &&
        (await this.sameAsStored(row.idx, arrival.payload))
      ) {
        return { kind: 'ack', index: row.idx, seqLast: row.seqLast };
      }
      return this.refusal(
        index,
        'REWIND_SEGMENT_ORDER',
        `segment ${index} is already committed with different content`,
      );
    }
    if (this.busyFrom !== undefined && index > this.busyFrom) {
      // Segments pipelined behind one refused for lack of space wait with it (not a gap).
      return this.refusal(
        index,
        'REWIND_BUSY',
        `segment ${index} waits behind segment ${this.busyFrom}, which the manager could not store`,
      );
    }
    // A resync window already begun is let through to its end: history must get back to a
    // consistent point (a full journal cannot drop a window that has no end yet).
    const inResync = this.catalog.tx(committed.idx)?.kind === 'resync';
    const waiting = inResync ? undefined : this.admission();
    if (waiting !== undefined) {
      this.busyFrom = index;
      return this.refusal(index, 'REWIND_BUSY', waiting);
    }
    const gap = this.gapExpected;
    const afterGap = gap !== undefined && gap.idx === index && gap.seqFirst === arrival.seqFirst;
    if (!afterGap && (index !== committed.idx + 1 || arrival.seqFirst !== committed.seq + 1)) {
      return this.refusal(
        index,
        'REWIND_SEQ_GAP',
        `segment ${index} starts at seq ${arrival.seqFirst}; expected segment ${committed.idx + 1} at seq ${committed.seq + 1}`,
      );
    }
    let parsed: SealedRedo;
    try {
      if ('error' in arrival.parsing) throw arrival.parsing.error;
      parsed = arrival.parsing.parsed;
      this.checkSegment(parsed, arrival, afterGap ? arrival.seqFirst : committed.seq + 1);
      if (afterGap && (parsed.header.flags & SEGMENT_FLAG_RESYNC) === 0)
        throw new RewindError(
          'REWIND_SEQ_GAP',
          `segment ${index} follows a history gap but is not a resync: nothing would vouch for the replica`,
        );
    } catch (error) {
      rethrowIfBug(error);
      if (error instanceof RewindError) return this.refusal(index, error.code, error.message);
      throw error;
    }
    // A full or failing disk is backpressure, not a failure: the agent keeps the segment and
    // resends it later; a transaction stopped half-way resumes from its durable state.
    try {
      await this.storeAndRun(arrival, parsed, afterGap);
    } catch (error) {
      rethrowIfBug(error);
      const full = error instanceof RewindError && error.code === 'REWIND_BUSY';
      if (!full && !isDiskError(error)) throw error;
      this.turn = undefined;
      this.busyFrom = index;
      return this.refusal(
        index,
        'REWIND_BUSY',
        `the manager cannot ${full ? 'apply' : 'store'} segment ${index} now (${errorMessage(error)}); the agent keeps it and resends`,
      );
    }
    this.busyFrom = undefined;
    if (afterGap) this.gapExpected = undefined;
    return { kind: 'ack', index, seqLast: parsed.trailer.seqLast };
  }

  private async sameAsStored(idx: number, payload: Buffer): Promise<boolean> {
    let stored: Buffer;
    try {
      stored = await fsp.readFile(this.txFiles.redoPath(idx));
    } catch (error) {
      rethrowIfBug(error);
      return false; // a committed transaction without its redo file: not the same
    }
    return stored.equals(payload);
  }

  /** `seqNext`: the seq the segment must start at (the committed one's successor, in its turn). */
  private checkSegment(parsed: SealedRedo, arrival: Arrival, seqNext: number): void {
    const known = this.catalog.getMeta('volumeSetId') ?? '';
    const source = `segment ${arrival.index} from agent`;
    if (parsed.header.volumeSetId.toString('hex') !== known.replace(/-/g, '')) {
      throw new RewindError(
        'REWIND_SEGMENT_CORRUPT',
        `segment ${arrival.index} belongs to another volume set`,
      );
    }
    if (
      parsed.header.segmentIndex !== arrival.index ||
      parsed.header.seqFirst !== arrival.seqFirst ||
      parsed.trailer.seqLast !== arrival.seqLast ||
      parsed.fileCrc !== arrival.fileCrc >>> 0
    ) {
      throw new SegmentError(
        'REWIND_SEGMENT_CORRUPT',
        source,
        0,
        'header, seq range or checksum differ from what the agent announced',
      );
    }
    // Continuity is checked on the segment's own header, not only on the announcement.
    if (parsed.header.seqFirst !== seqNext) {
      throw new SegmentError(
        'REWIND_SEQ_GAP',
        source,
        40,
        `segment starts at seq ${parsed.header.seqFirst}; expected seq ${seqNext}`,
      );
    }
    for (const record of parsed.records) {
      const size = (this.replicas[record.volume] as ReplicaVolume).sizeBytes;
      if (record.offsetBytes + record.lengthBytes > size) {
        throw new SegmentError(
          'REWIND_SEGMENT_CORRUPT',
          source,
          record.recordOffsetBytes,
          `record seq ${record.seq} ends at ${record.offsetBytes + record.lengthBytes}, past the end of volume ${record.volume} (${size} bytes)`,
        );
      }
    }
  }

  // ---- stages ----

  private begin(idx: number, seqLast: number): void {
    assert(this.turn === undefined, 'one transaction has its turn at a time');
    this.turn = { idx, seqLast, stage: 'checked' };
  }

  private advance(stage: TxStage): void {
    const turn = this.turn;
    assert(turn !== undefined, 'a stage belongs to the transaction in its turn');
    assert(
      NEXT_STAGE[turn.stage].includes(stage),
      `transaction ${turn.idx}: ${turn.stage} -> ${stage}`,
    );
    turn.stage = stage;
  }

  /** `afterGap`: the segment starts the resync after a history gap (recorded with its row). */
  private async storeAndRun(
    arrival: Arrival,
    parsed: SealedRedo,
    afterGap: boolean,
  ): Promise<void> {
    // When the segment's turn came (the row is written later, once redo and undo are durable).
    const receivedAt = new Date().toISOString();
    const existing = this.catalog.tx(arrival.index);
    if (existing) {
      if (
        existing.redoCrc !== parsed.fileCrc ||
        !(await this.sameAsStored(existing.idx, arrival.payload))
      ) {
        throw new RewindError(
          'REWIND_SEGMENT_ORDER',
          `segment ${arrival.index} differs from the copy already received`,
        );
      }
      this.roomFor(existing);
      await this.runTx(existing, parsed);
      return;
    }
    // An early store is only used while the replica is as it was built on: this transaction's
    // predecessor committed, nothing written since (the continuity checks of the turn).
    assert(
      afterGap || this.written.idx === arrival.index - 1,
      'no replica writes since the early store',
    );
    // The turn begins before anything is awaited: from now on no early store starts for this
    // index (one for a copy arriving now would build an undo from a replica this turn changes).
    this.begin(arrival.index, parsed.trailer.seqLast);
    const early = this.takeEarly(arrival);
    if (early === undefined) await this.settledEarly(arrival.index); // one for another copy
    this.advance('storing');
    if (early !== undefined) this.earlyStores += 1;
    const undo = await (early ?? this.store(arrival, parsed));
    crashPoint('undo'); // redo and undo durable, no catalog row yet
    const row = rowOf(arrival, parsed, undo, receivedAt);
    if (afterGap) {
      const before = this.committedPosition;
      this.catalog.insertTxAfterGap(row, {
        seqFirst: before.seq + 1,
        seqLast: row.seqFirst - 1,
        idxBefore: before.idx,
        timeBeforeUs: Number(before.timeNs / 1000n),
      });
      this.log(
        'warn',
        `history gap recorded: seqs ${before.seq + 1}..${row.seqFirst - 1} were lost to this manager; the resync from segment ${row.idx} brings the replica back to production`,
      );
    } else {
      this.catalog.insertTx(row);
    }
    this.advance('stored');
    this.roomFor(row);
    await this.applyAndCommit(row, parsed, undo.extents);
  }

  /** Room under the journal limit for a stored transaction, or a busy refusal (stop-applying). */
  private roomFor(row: TxRow): void {
    const waiting = this.makeRoom(row.redoBytes + row.undoBytes, row.kind === 'resync');
    if (waiting !== undefined) throw new RewindError('REWIND_BUSY', waiting);
  }

  /**
   * Takes a transaction from its durable state to committed (a segment's turn after its row,
   * or recovery at start). `savedExtents`: the undo extents when the caller has just written it.
   */
  private async runTx(row: TxRow, parsed: SealedRedo): Promise<void> {
    this.begin(row.idx, row.seqLast);
    const undoFile = this.txFiles.undoPath(row.idx);
    let extents: readonly UndoExtent[];
    if (row.state === 'received') {
      // Only catalogs written before redo and undo were saved together have this state. The
      // replica is untouched in it, so the undo built now is the true before-image.
      this.advance('storing');
      const undo = await this.applier.saveUndo(
        undoFile,
        headerOf(parsed, row.idx),
        parsed.records,
        this.replicas,
      );
      this.catalog.setUndoSaved(row.idx, undo.bytes, undo.fileCrc);
      this.advance('stored');
      extents = undo.extents;
    } else {
      extents = parseUndo(await fsp.readFile(undoFile), undoFile, this.replicas.length).extents;
    }
    await this.applyAndCommit(row, parsed, extents);
  }

  private async applyAndCommit(
    row: TxRow,
    parsed: SealedRedo,
    extents: readonly UndoExtent[],
  ): Promise<void> {
    this.advance('applying');
    this.txFiles.remember(row.idx, { records: parsed.records, undo: extents });
    // Open views take the before-image now, before the replica changes under them.
    this.onUndo(row.idx, extents);
    let applyMs: number | undefined;
    if (row.state !== 'applied') {
      const applyStartedMs = performance.now();
      await markApplied(parsed.records, this.replicas);
      await this.applier.writeRedo(
        this.txFiles.redoPath(row.idx),
        row.redoBytes,
        parsed.records,
        this.replicas,
      );
      // The next segment's undo may now be built from the replica while these writes are made
      // durable. If the fdatasync fails, the page cache may no longer hold them: the turn ends
      // with the error, `written` falls back to the committed transaction, and no early store
      // reads the replica until a resend issues the writes again.
      this.advance('written');
      this.startEarlyAfter(row.idx);
      this.advance('syncing');
      await this.applier.syncReplicas(replicasOf(parsed.records, this.replicas));
      crashPoint('apply'); // replica written, state still undo-saved (a restart applies it again)
      applyMs = performance.now() - applyStartedMs;
    } else {
      this.advance('written');
      this.startEarlyAfter(row.idx);
    }
    this.catalog.setState(row.idx, 'committed');
    crashPoint('commit'); // committed, not yet acknowledged
    this.advance('committed');
    const last = parsed.records[parsed.records.length - 1];
    this.committedPosition = {
      idx: row.idx,
      seq: row.seqLast,
      timeNs: last ? last.timeNs : this.committedPosition.timeNs,
    };
    this.turn = undefined;
    this.wakeCommitWaiters();
    this.onCommitted({ tx: row, records: parsed.records, applyMs });
  }

  // ---- the early store of the next segment ----

  /**
   * Starts a segment's redo copy and undo before its turn, once the transaction before it has its
   * replica writes issued: the undo reads the replica as that transaction left it (the page cache
   * holds its writes), so it is built while that transaction's fdatasync and commit run. Nothing
   * here touches the replica or the catalog; the segment's turn takes the result, checks
   * everything as before, and writes the row. Only a segment that continues the written
   * transactions, passes every check, has no row and is not being stored by its own turn is
   * started early. Its turn may still refuse it when the transaction before it failed to commit
   * (a full or failing disk): then its files have no row; the agent resends the same bytes, which
   * are stored again over them, and a restart removes files without a row, as after a crash.
   */
  private storeEarly(arrival: Arrival): void {
    if (this.closing || !('parsed' in arrival.parsing)) return;
    if (this.early.has(arrival.index) || arrival.index <= this.written.idx) return;
    this.early.set(arrival.index, {
      arrival,
      parsed: arrival.parsing.parsed,
      stage: 'waiting',
      result: undefined,
      settled: undefined,
    });
    if (arrival.index === this.written.idx + 1) this.tryStartEarly(arrival.index);
  }

  /** The transaction `idx` has its replica writes issued: the one after it may start. */
  private startEarlyAfter(idx: number): void {
    for (const [index, store] of this.early) {
      if (index <= idx && store.stage === 'waiting') this.early.delete(index);
    }
    this.tryStartEarly(idx + 1);
  }

  private tryStartEarly(idx: number): void {
    const store = this.early.get(idx);
    if (store === undefined || store.stage !== 'waiting') return;
    const written = this.written;
    const ownTurnStoring = this.turn?.idx === idx;
    if (
      this.closing ||
      idx !== written.idx + 1 ||
      store.arrival.seqFirst !== written.seq + 1 ||
      this.busyFrom !== undefined ||
      ownTurnStoring ||
      this.catalog.tx(idx) !== undefined ||
      !this.passesChecks(store, written.seq + 1)
    ) {
      this.early.delete(idx);
      return;
    }
    store.stage = 'storing';
    store.result = this.store(store.arrival, store.parsed);
    store.settled = store.result.then(
      () => undefined,
      (error: unknown) => rethrowIfBug(error), // its turn gets the error from `result`
    );
    void store.settled.then(() => {
      store.stage = 'settled';
    });
  }

  /** Every check the turn makes, so nothing is stored early for a segment that will be refused. */
  private passesChecks(store: EarlyStore, seqNext: number): boolean {
    try {
      this.checkSegment(store.parsed, store.arrival, seqNext);
      return true;
    } catch (error) {
      rethrowIfBug(error);
      return false; // its turn makes the same check and refuses it with the reason
    }
  }

  /** The early store begun for this very copy of the segment, if any; the entry is consumed. */
  private takeEarly(arrival: Arrival): Promise<StoreResult> | undefined {
    const store = this.early.get(arrival.index);
    if (store === undefined || store.arrival !== arrival) return undefined;
    this.early.delete(arrival.index);
    return store.result;
  }

  /** Waits for an early store of another copy of segment `idx` (both write the same files). */
  private async settledEarly(idx: number): Promise<void> {
    const store = this.early.get(idx);
    if (store === undefined) return;
    this.early.delete(idx);
    await store.settled;
  }

  /**
   * The redo copy and the undo of a segment, at once: they are independent of each other, and the
   * replica is untouched until the transaction is cataloged.
   */
  private async store(arrival: Arrival, parsed: SealedRedo): Promise<StoreResult> {
    const redoFile = this.txFiles.redoPath(arrival.index);
    const [redoDone, undoDone] = await Promise.allSettled([
      arrival.linkFrom
        ? linkFileDurable(arrival.linkFrom, redoFile, arrival.payload)
        : writeFileDurable(redoFile, arrival.payload),
      this.applier.saveUndo(
        this.txFiles.undoPath(arrival.index),
        headerOf(parsed, arrival.index),
        parsed.records,
        this.replicas,
      ),
    ]);
    if (redoDone.status === 'rejected') throw redoDone.reason;
    if (undoDone.status === 'rejected') throw undoDone.reason;
    return undoDone.value;
  }

  // ---- commit waiters ----

  private wakeCommitWaiters(): void {
    const seq = this.committedPosition.seq;
    const ready = this.commitWaiters.filter((w) => w.seq <= seq);
    this.commitWaiters = this.commitWaiters.filter((w) => w.seq > seq);
    for (const waiter of ready) waiter.resolve();
  }

  waitCommitted(seq: number, timeoutMs: number): Promise<void> {
    if (seq <= this.committedPosition.seq) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.commitWaiters = this.commitWaiters.filter((w) => w !== waiter);
        reject(
          new RewindError(
            'REWIND_BUSY',
            `seq ${seq} not committed within ${timeoutMs} ms (committed: ${this.committedPosition.seq})`,
            {
              hint: 'check rewind status for the lag and the agent connection',
            },
          ),
        );
      }, timeoutMs);
      const waiter = { seq, resolve: () => (clearTimeout(timer), resolve()) };
      this.commitWaiters.push(waiter);
    });
  }

  // ---- recovery and shutdown ----

  /** Finishes any transaction a crash interrupted, from its durable state, then cleans up. */
  async recover(): Promise<void> {
    for (const tx of this.catalog.uncommitted()) {
      this.log('warn', `recovering transaction ${tx.idx} from state ${tx.state}`);
      const file = this.txFiles.redoPath(tx.idx);
      const parsed = parseSealedRedo(await fsp.readFile(file), file, this.replicas.length);
      try {
        await this.runTx(tx, parsed);
      } catch (error) {
        rethrowIfBug(error);
        this.turn = undefined;
        // A full disk must not keep the manager down (views, restores and the status still work):
        // a transaction still in 'received' has changed nothing yet and the agent keeps its
        // segment until it commits, so it is forgotten here and applied when the agent resends it.
        if (!isDiskFull(error) || tx.state !== 'received') throw error;
        const forgotten = this.catalog.forgetReceivedFrom(tx.idx);
        this.log(
          'warn',
          `disk full: ${forgotten} received transaction(s) from ${tx.idx} on are left to the agent to resend (${errorMessage(error)})`,
        );
        break;
      }
    }
    await this.txFiles.removeUncataloged(this.catalog.committedTxs());
    this.committedPosition = this.lastCommitted();
    this.recovered = true;
  }

  /** Waits for the queue and for early stores under way; none starts after this. */
  async close(): Promise<void> {
    await this.queue;
    this.closing = true;
    await Promise.all([...this.early.values()].map((store) => store.settled ?? Promise.resolve()));
  }
}

function headerOf(parsed: SealedRedo, idx: number): Parameters<Applier['saveUndo']>[1] {
  return {
    volumeSetId: parsed.header.volumeSetId,
    segmentIndex: idx,
    seqFirst: parsed.header.seqFirst,
    seqLast: parsed.trailer.seqLast,
  };
}

function rowOf(arrival: Arrival, parsed: SealedRedo, undo: StoreResult, receivedAt: string): TxRow {
  const first = parsed.records[0];
  const last = parsed.records[parsed.records.length - 1];
  return {
    idx: arrival.index,
    kind: txKind(parsed.header.flags),
    seqFirst: parsed.header.seqFirst,
    seqLast: parsed.trailer.seqLast,
    timeFirstUs: Number((first?.timeNs ?? 0n) / 1000n),
    timeLastUs: Number((last?.timeNs ?? 0n) / 1000n),
    recordCount: parsed.records.length,
    redoBytes: arrival.payload.length,
    redoCrc: parsed.fileCrc,
    undoBytes: undo.bytes,
    undoCrc: undo.fileCrc,
    state: 'undo-saved',
    receivedAt,
    committedAt: null,
    undoGen: 0,
    firstIdx: null,
    tier: null,
    thinnedAt: null,
  };
}

function txKind(flags: number): TxKind {
  if ((flags & SEGMENT_FLAG_RESYNC) === 0) return 'redo';
  return (flags & SEGMENT_FLAG_RESYNC_END) !== 0 ? 'resync-end' : 'resync';
}

/** Parses a segment from the agent; what it throws is answered in its turn, in segment order. */
export function parseArrival(
  payload: Buffer,
  index: number,
  volumeCount: number,
): Arrival['parsing'] {
  try {
    return { parsed: parseSealedRedo(payload, `segment ${index} from agent`, volumeCount) };
  } catch (error) {
    rethrowIfBug(error);
    return { error };
  }
}
