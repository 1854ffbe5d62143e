// The manager of one volume set: receives sealed segments from the agent, takes each transaction
// through undo-saved -> committed, recovers any state after a crash, and
// serves views and clones of any committed seq.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  assert,
  crashPoint,
  errorMessage,
  formatTimeNs,
  isDiskError,
  isDiskFull,
  rethrowIfBug,
  RewindError,
  SegmentError,
} from '../core/index.js';
import {
  decodeRedoHeader,
  parseSealedRedo,
  parseUndo,
  REDO_HEADER_BYTES,
  SEGMENT_FLAG_RESYNC,
  SEGMENT_FLAG_RESYNC_END,
  type RedoRecord,
  type SealedRedo,
  type UndoExtent,
} from '../log/index.js';
import type { ExportBackend } from '../nbd/index.js';
import { ensureDir, linkFileDurable, preadFully, writeFileDurable } from '../platform/index.js';
import {
  FRAME_BYTES_MAX_UNAUTHENTICATED,
  FrameReader,
  PROTOCOL_VERSION,
  sendFrame,
  tokensEqual,
  type Message,
  type RestoringState,
  type VolumeInfo,
} from '../ship/index.js';
import { Overlay } from '../views/index.js';
import { View, type History, type HistoryTx } from '../views/index.js';
import { markApplied, replicasOf } from './apply.js';
import { ApplyWorker, type Applier } from './apply-pool.js';
import { Catalog, type TxKind, type TxRow } from './catalog.js';
import { parsePoint } from './points.js';
import { ReplicaVolume } from './replica.js';
import { Restorer } from './restore.js';
import { ImageExporter } from './image-export.js';
import { TxFiles } from './txfiles.js';
import { ViewExport } from './view-export.js';

export interface ManagerOptions {
  dataDir: string;
  token: string;
  tls?: { cert: string | Buffer; key: string | Buffer };
  log: (level: 'info' | 'warn' | 'error', message: string, fields?: object) => void;
  /** Called when exports appear or disappear (views created or removed). */
  onExportsChanged?: (removed: string[]) => void;
  /**
   * The deterministic simulation's hooks: where undo building and replica writes run (default: a
   * worker thread) and how the catalog's SQLite database is opened (default: the file).
   */
  applier?: Applier;
  openCatalog?: (file: string) => Catalog;
  /**
   * `rewind up`: the spool directory of the agent in this process. Segments it names are read
   * from there and linked into the redo directory rather than sent over the link and copied.
   */
  localSpoolDir?: string;
}

/** A sealed segment's file name in an agent's spool (spool.ts). */
const SPOOL_SEGMENT_NAME = /^[0-9]{16}\.redo$/;

export interface AgentStatus {
  seqCaptured: number;
  timeCapturedNs: bigint;
  spoolBytes: number;
  sealedPending: number;
  mode: string;
  failure: string | undefined;
  restoring: RestoringState | undefined;
  receivedAtMs: number;
}

export interface LogEntry {
  seq: number;
  time: string;
  volume: string;
  kind: 'write' | 'zero' | 'trim';
  offset: number;
  length: number;
  /** Part of a resync transaction: the region's content at that moment, not a client write. */
  resync: boolean;
}

const HELLO_TIMEOUT_MS = 10_000;
const VIEW_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export class Manager implements History {
  readonly options: ManagerOptions;
  catalog!: Catalog;
  replicas: ReplicaVolume[] = [];
  /** Where undo building and replica writes run: a worker thread, off the event loop (or in-thread in the simulation). */
  private readonly applier: Applier;
  private txFiles!: TxFiles;
  readonly views = new Map<string, View>();
  /** Views used by restores and image exports: not exported, but they take undo like any view. */
  private readonly internalViews = new Set<View>();
  private viewExports = new Map<string, ExportBackend[]>();
  private queue: Promise<unknown> = Promise.resolve();
  private server: net.Server | undefined;
  private session: net.Socket | undefined;
  agentStatus: AgentStatus | undefined;
  private sealWaiters = new Map<number, (seqLast: number) => void>();
  private sealId = 0;
  private commitWaiters: { seq: number; resolve: () => void }[] = [];
  private authFailures = 0;
  private committedSeq = 0;
  private committedIdx = 0;
  private committedTimeNs = 0n;
  /**
   * The last transaction whose replica writes are issued (in the page cache; its fdatasync and
   * commit may still be running), and its last seq. The next segment's redo copy and undo can
   * start from then on, outside the queue (see storeEarly).
   */
  private writtenIdx = 0;
  private writtenSeq = 0;
  /** Redo copy and undo begun early, by the message they were begun for. */
  private readonly early = new WeakMap<object, Promise<StoreResult>>();
  /** Segments waiting for their predecessor's replica writes before their early start, by index. */
  private readonly earlyWaiting = new Map<number, () => void>();
  /** Early stores running, by index (another store of the same files waits for it). */
  private readonly earlyRunning = new Map<number, Promise<unknown>>();
  /**
   * Segments whose turn in the queue is writing their redo copy and undo, until the row is in the
   * catalog. No early store may begin for them: one begun for another copy of the segment (the
   * agent resends) would build an undo from a replica the turn is about to change, and write it
   * over the good one.
   */
  private readonly turnStoring = new Set<number>();
  private closing = false;
  /** Segments whose redo copy and undo were begun early and used (the simulation checks it happens). */
  earlyStores = 0;

  readonly restorer = new Restorer(this);
  readonly exporter = new ImageExporter(this);

  constructor(options: ManagerOptions) {
    this.options = options;
    this.applier = options.applier ?? new ApplyWorker();
  }

  note(level: 'info' | 'warn' | 'error', message: string): void {
    this.options.log(level, message);
  }

  get agentConnected(): boolean {
    return this.session !== undefined;
  }

  /** Sends a frame to the connected agent; false when none is connected. */
  sendToAgent(message: Message, payload?: Buffer): boolean {
    const session = this.session;
    if (!session || session.destroyed) return false;
    sendFrame(session, message, payload);
    return true;
  }

  get root(): string {
    return path.join(this.options.dataDir, 'manager');
  }

  async open(): Promise<void> {
    await ensureDir(this.root);
    const catalogFile = path.join(this.root, 'catalog.sqlite');
    this.catalog = this.options.openCatalog
      ? this.options.openCatalog(catalogFile)
      : new Catalog(catalogFile);
    this.txFiles = new TxFiles(this.root, () => this.replicas.length);
    await ensureDir(this.txFiles.redoDir);
    await ensureDir(this.txFiles.undoDir);
    for (const volume of this.catalog.volumes())
      this.replicas.push(
        ReplicaVolume.open(
          path.join(this.root, 'replica'),
          volume.idx,
          volume.name,
          volume.sizeBytes,
        ),
      );
    await this.recover();
    this.refreshCommitted();
    await this.loadViews();
  }

  private refreshCommitted(): void {
    const last = this.catalog.lastTx();
    assert(!last || last.state === 'committed', 'no uncommitted transaction outside the queue');
    this.committedSeq = last?.seqLast ?? 0;
    this.committedIdx = last?.idx ?? 0;
    this.committedTimeNs = BigInt(last?.timeLastUs ?? 0) * 1000n;
    this.writtenIdx = this.committedIdx;
    this.writtenSeq = this.committedSeq;
  }

  /** Finishes any transaction a crash interrupted, from its durable state (DESIGN.md). */
  private async recover(): Promise<void> {
    for (const tx of this.catalog.uncommitted()) {
      this.options.log('warn', `recovering transaction ${tx.idx} from state ${tx.state}`);
      const file = this.txFiles.redoPath(tx.idx);
      const buf = await fsp.readFile(file);
      const parsed = parseSealedRedo(buf, file, this.replicas.length);
      try {
        await this.runTx(tx, parsed);
      } catch (error) {
        // A full disk must not keep the manager down (views, restores and the status still work):
        // a transaction still in 'received' has changed nothing yet and the agent keeps its
        // segment until it commits, so it is forgotten here and applied when the agent resends it.
        if (!isDiskFull(error) || tx.state !== 'received') throw error;
        const forgotten = this.catalog.forgetReceivedFrom(tx.idx);
        this.options.log(
          'warn',
          `disk full: ${forgotten} received transaction(s) from ${tx.idx} on are left to the agent to resend (${errorMessage(error)})`,
        );
        break;
      }
    }
    const known = new Set(this.catalog.committedTxs().map((t) => t.idx));
    for (const dir of [this.txFiles.redoDir, this.txFiles.undoDir, this.txFiles.indexDir]) {
      if (!fs.existsSync(dir)) continue; // the index dir is made on first use
      for (const name of await fsp.readdir(dir)) {
        const idx = Number(name.split('.')[0]);
        if (name.includes('.tmp') || !known.has(idx)) {
          // Received but never cataloged: the agent still holds it and will resend (an index
          // file of such a transaction is a stale cache entry).
          await fsp.rm(path.join(dir, name), { force: true });
        }
      }
    }
  }

  private async loadViews(): Promise<void> {
    for (const row of this.catalog.views()) {
      const overlays = row.kind === 'clone' ? this.openOverlays(row.name) : undefined;
      const view = await View.build(
        row.name,
        row.kind,
        Math.min(row.seq, this.committedSeq),
        this,
        overlays,
      );
      this.registerView(view);
    }
  }

  // ---- History (for views) ----
  get volumeCount(): number {
    return this.replicas.length;
  }
  volumeSize(volume: number): number {
    return (this.replicas[volume] as ReplicaVolume).sizeBytes;
  }
  seqCommitted(): number {
    return this.committedSeq;
  }
  txsAfter(seq: number, upTo?: number): HistoryTx[] {
    return this.catalog.committedTxs(seq + 1, upTo).filter((tx) => tx.seqLast > seq);
  }
  txIndex(idx: number): Promise<{ records: RedoRecord[]; undo: UndoExtent[] }> {
    return this.txFiles.index(idx);
  }
  redoFd(idx: number): number {
    return this.txFiles.fd(this.txFiles.redoPath(idx));
  }
  undoFd(idx: number): number {
    return this.txFiles.fd(this.txFiles.undoPath(idx));
  }
  mappedFile(idx: number, kind: 'redo' | 'undo'): Buffer | undefined {
    return this.txFiles.mapped(idx, kind);
  }
  replicaFd(volume: number): number {
    return (this.replicas[volume] as ReplicaVolume).fd;
  }

  // ---- Agent sessions ----
  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const handler = (socket: net.Socket): void => this.onAgentSocket(socket);
    const server = this.options.tls
      ? tls.createServer({ cert: this.options.tls.cert, key: this.options.tls.key }, handler)
      : net.createServer(handler);
    server.on('tlsClientError', (error: Error) =>
      this.options.log('warn', `agent TLS handshake failed: ${error.message}`),
    );
    this.server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => resolve());
    });
    const address = server.address() as net.AddressInfo;
    return { host: address.address, port: address.port };
  }

  /** Every agent connection, authenticated or not (closed on shutdown). */
  private readonly sockets = new Set<net.Socket>();

  /** Serves one agent connection (from listen(), or a simulated link in the simulation). */
  acceptAgent(socket: net.Socket): void {
    this.onAgentSocket(socket);
  }

  private onAgentSocket(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    const reader = new FrameReader(FRAME_BYTES_MAX_UNAUTHENTICATED);
    let authenticated = false;
    const helloTimer = setTimeout(() => socket.destroy(), HELLO_TIMEOUT_MS);
    socket.on('error', (error) => this.options.log('info', `agent connection: ${error.message}`));
    socket.on('close', () => {
      clearTimeout(helloTimer);
      if (this.session === socket) {
        this.session = undefined;
        this.restorer.onAgentLost();
      }
    });
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (error) {
        rethrowIfBug(error);
        this.options.log('warn', `agent sent a bad frame: ${errorMessage(error)}`);
        socket.destroy();
        return;
      }
      for (const { message, payload } of frames) {
        if (!authenticated) {
          clearTimeout(helloTimer);
          authenticated = this.onHello(socket, message);
          if (!authenticated) return;
          reader.raise();
          continue;
        }
        this.onAgentMessage(socket, message, payload);
      }
    });
  }

  private onHello(socket: net.Socket, message: Message): boolean {
    const refuse = (code: string, text: string): false => {
      this.options.log('warn', `refused agent ${socket.remoteAddress ?? '?'}: ${text}`);
      sendFrame(socket, { type: 'error', code, message: text });
      socket.end();
      return false;
    };
    if (message.type !== 'hello') return refuse('REWIND_PROTOCOL', 'expected hello');
    if (!tokensEqual(String(message.token), this.options.token)) {
      this.authFailures += 1;
      // Rate-limit guessing: each failure delays the answer a little more (capped).
      const delayMs = Math.min(5000, 100 * this.authFailures);
      setTimeout(() => refuse('REWIND_AUTH', 'wrong token'), delayMs);
      return false;
    }
    if (message.protocol !== PROTOCOL_VERSION)
      return refuse(
        'REWIND_PROTOCOL',
        `protocol ${message.protocol}, expected ${PROTOCOL_VERSION}`,
      );
    try {
      this.adoptVolumeSet(message.volumeSetId, message.volumeSetName, message.volumes);
    } catch (error) {
      rethrowIfBug(error);
      return refuse((error as RewindError).code ?? 'REWIND_CONFIG', errorMessage(error));
    }
    if (this.session && this.session !== socket) {
      this.session.destroy(); // a reconnecting agent replaces a stale session
      this.restorer.onAgentLost();
    }
    this.session = socket;
    sendFrame(socket, {
      type: 'welcome',
      seqCommitted: this.committedSeq,
      segmentCommitted: this.committedIdx,
    });
    // An interrupted production restore runs again now (the agent kept its volumes offline).
    setImmediate(() => this.restorer.resumeAll());
    return true;
  }

  private adoptVolumeSet(volumeSetId: string, volumeSetName: string, volumes: VolumeInfo[]): void {
    const known = this.catalog.getMeta('volumeSetId');
    if (known && known !== volumeSetId) {
      throw new RewindError(
        'REWIND_CONFIG',
        `this manager protects volume set ${this.catalog.getMeta('volumeSetName') ?? ''} (${known}), not ${volumeSetId}`,
      );
    }
    const existing = this.catalog.volumes();
    for (const [idx, row] of existing.entries()) {
      const given = volumes[idx];
      if (!given || given.name !== row.name || given.sizeBytes !== row.sizeBytes) {
        throw new RewindError(
          'REWIND_CONFIG',
          `volume ${row.name} (${row.sizeBytes} bytes) changed or disappeared in the agent's volume list`,
        );
      }
    }
    if (!known) {
      this.catalog.setMeta('volumeSetId', volumeSetId);
      this.catalog.setMeta('volumeSetName', volumeSetName);
    }
    for (let idx = existing.length; idx < volumes.length; idx++) {
      const given = volumes[idx] as VolumeInfo;
      this.catalog.addVolume(idx, given.name, given.sizeBytes);
      this.replicas[idx] = ReplicaVolume.open(
        path.join(this.root, 'replica'),
        idx,
        given.name,
        given.sizeBytes,
      );
    }
  }

  private onAgentMessage(socket: net.Socket, message: Message, payload: Buffer): void {
    switch (message.type) {
      case 'segment': {
        // Parsed (and checksummed) on arrival, so it overlaps the transaction still being applied
        // on the apply worker; everything that depends on the committed state waits in the queue.
        const parsed = parseSegment(payload, message.index, this.replicas.length);
        this.storeEarly(message, payload, parsed);
        this.segmentTurn(socket, message.index, () =>
          this.receiveSegment(socket, message, payload, parsed),
        );
        return;
      }
      case 'segment-file':
        this.receiveSegmentFile(socket, message);
        return;
      case 'status':
        this.agentStatus = {
          seqCaptured: message.seqCaptured,
          timeCapturedNs: BigInt(message.timeCapturedNs),
          spoolBytes: message.spoolBytes,
          sealedPending: message.sealedPending,
          mode: message.mode,
          failure: message.failure,
          restoring: message.restoring,
          receivedAtMs: Date.now(),
        };
        return;
      case 'sealed': {
        const waiter = this.sealWaiters.get(message.id);
        this.sealWaiters.delete(message.id);
        waiter?.(message.seqLast);
        return;
      }
      default:
        if (!this.restorer.onAgentMessage(message))
          this.options.log('warn', `unexpected message from agent: ${message.type}`);
    }
  }

  /** Runs `work` after everything queued before it: transactions and view builds never interleave. */
  enqueue<T>(work: () => Promise<T>): Promise<T> {
    const next = this.queue.then(work, work);
    // The caller gets the error; only unexpected ones are logged here (a refused request is not).
    this.queue = next.catch((error: unknown) => {
      if (!(error instanceof RewindError))
        this.options.log('error', `manager task failed: ${errorMessage(error)}`);
    });
    return next;
  }

  /**
   * Queues a segment's turn. Every way it can end reaches the agent: an ack or a refusal sent by
   * the turn itself, or here, for anything it threw, a refusal with the error's code (the agent
   * keeps the segment and reports it). A programmer error is not answered: it crashes.
   */
  private segmentTurn(socket: net.Socket, index: number, turn: () => Promise<void>): void {
    this.enqueue(turn).catch((error: unknown) => {
      rethrowIfBug(error);
      const code = error instanceof RewindError ? error.code : 'REWIND_IO';
      const text = `segment ${index} failed in its turn: ${errorMessage(error)}`;
      this.options.log('error', `refused ${text}`);
      if (!socket.destroyed) sendFrame(socket, { type: 'refused', index, code, message: text });
    });
  }

  private async receiveSegment(
    socket: net.Socket,
    message: Extract<Message, { type: 'segment' }>,
    payload: Buffer,
    parsing: ReturnType<typeof parseSegment>,
    linkFrom?: string,
  ): Promise<void> {
    const refuse = (code: string, text: string): void => {
      this.options.log('error', `refused segment ${message.index}: ${text}`);
      if (!socket.destroyed)
        sendFrame(socket, { type: 'refused', index: message.index, code, message: text });
    };
    if (message.index <= this.committedIdx) {
      const row = this.catalog.tx(message.index);
      // A resend after a lost ack is answered idempotently (applied once) when it is byte for byte
      // the committed segment; anything else under that index is refused.
      if (
        row &&
        row.redoCrc === message.fileCrc >>> 0 &&
        (await this.sameAsStored(row.idx, payload))
      ) {
        if (!socket.destroyed)
          sendFrame(socket, { type: 'ack', index: row.idx, seqLast: row.seqLast });
        return;
      }
      return refuse(
        'REWIND_SEGMENT_ORDER',
        `segment ${message.index} is already committed with different content`,
      );
    }
    if (this.busyFrom !== undefined && message.index > this.busyFrom) {
      // Segments pipelined behind one refused for lack of space wait with it (not a gap).
      return refuse(
        'REWIND_BUSY',
        `segment ${message.index} waits behind segment ${this.busyFrom}, which the manager could not store`,
      );
    }
    if (message.index !== this.committedIdx + 1 || message.seqFirst !== this.committedSeq + 1) {
      return refuse(
        'REWIND_SEQ_GAP',
        `segment ${message.index} starts at seq ${message.seqFirst}; expected segment ${this.committedIdx + 1} at seq ${this.committedSeq + 1}`,
      );
    }
    let parsed: SealedRedo;
    try {
      if ('error' in parsing) throw parsing.error;
      parsed = parsing.parsed;
      this.checkSegment(parsed, message);
    } catch (error) {
      if (error instanceof RewindError) return refuse(error.code, error.message);
      throw error;
    }
    // A full or failing disk is backpressure, not a failure: the agent keeps the segment and
    // resends it later; a transaction stopped half-way resumes from its durable state.
    try {
      await this.storeAndRun(message, payload, parsed, linkFrom);
    } catch (error) {
      if (!isDiskError(error)) throw error;
      this.busyFrom = message.index;
      return refuse(
        'REWIND_BUSY',
        `the manager cannot store segment ${message.index} now (${errorMessage(error)}); the agent keeps it and resends`,
      );
    }
    this.busyFrom = undefined;
    if (!socket.destroyed)
      sendFrame(socket, { type: 'ack', index: message.index, seqLast: parsed.trailer.seqLast });
  }

  /**
   * `rewind up`: the agent in this process names a sealed segment in its spool; it is read (and
   * parsed) at once, then takes its turn like a segment sent over the link, except that the redo
   * copy is a hard link to the agent's file. Only a manager given the spool directory takes this.
   */
  private receiveSegmentFile(
    socket: net.Socket,
    message: Extract<Message, { type: 'segment-file' }>,
  ): void {
    const spoolDir = this.options.localSpoolDir;
    const name = String(message.name);
    if (spoolDir === undefined || !SPOOL_SEGMENT_NAME.test(name)) {
      const text =
        spoolDir === undefined
          ? 'this manager takes segments over the link only'
          : `bad segment file name ${JSON.stringify(name.slice(0, 100))}`;
      this.options.log('error', `refused segment ${message.index}: ${text}`);
      sendFrame(socket, {
        type: 'refused',
        index: message.index,
        code: 'REWIND_PROTOCOL',
        message: text,
      });
      return;
    }
    const file = path.join(spoolDir, name);
    const loading = fsp.readFile(file).then(
      (payload) => ({
        payload,
        parsing: parseSegment(payload, message.index, this.replicas.length),
      }),
      (error: unknown) => ({
        payload: Buffer.alloc(0),
        parsing: {
          error: new RewindError(
            'REWIND_IO',
            `segment ${message.index}: cannot read ${file}: ${errorMessage(error)}`,
          ),
        },
      }),
    );
    // Nothing crossed a wire, so the file's checksum is compared with itself; every record's
    // checksum and the trailer are still verified by the parse.
    const loaded = loading.then(({ payload, parsing }) => {
      const fileCrc = 'parsed' in parsing ? parsing.parsed.fileCrc : 0;
      const asSegment = {
        type: 'segment' as const,
        index: message.index,
        seqFirst: message.seqFirst,
        seqLast: message.seqLast,
        fileCrc,
        bytes: payload.length,
      };
      this.storeEarly(asSegment, payload, parsing, file);
      return { asSegment, payload, parsing };
    });
    this.segmentTurn(socket, message.index, async () => {
      const { asSegment, payload, parsing } = await loaded;
      await this.receiveSegment(socket, asSegment, payload, parsing, file);
    });
  }

  private async sameAsStored(idx: number, payload: Buffer): Promise<boolean> {
    try {
      return (await fsp.readFile(this.txFiles.redoPath(idx))).equals(payload);
    } catch (error) {
      rethrowIfBug(error);
      return false;
    }
  }

  /** Index of a segment refused for lack of space; later ones wait behind it. */
  private busyFrom: number | undefined;

  /**
   * Starts a segment's redo copy and undo before its turn in the queue, once the transaction before
   * it has its replica writes issued: the undo reads the replica as that transaction left it
   * (the page cache holds its writes), so it can be built while that transaction's fdatasync and
   * commit run. Nothing here touches the replica or the catalog; the segment's turn in the queue
   * then takes the result, checks everything as before, and writes the row. Only a segment that
   * continues the written transactions, passes every check, and has no row is started early. Its
   * turn may still refuse it when the transaction before it failed to commit (a full or failing
   * disk): then its files have no row; the agent resends the same bytes, which are stored again
   * over them, and a restart removes files without a row, like files left by a crash.
   */
  private storeEarly(
    message: Extract<Message, { type: 'segment' }>,
    payload: Buffer,
    parsing: ReturnType<typeof parseSegment>,
    linkFrom?: string,
  ): void {
    if (!('parsed' in parsing) || this.closing) return;
    const parsed = parsing.parsed;
    const idx = message.index;
    const start = (): void => {
      if (this.closing || idx !== this.writtenIdx + 1 || message.seqFirst !== this.writtenSeq + 1)
        return;
      if (
        this.busyFrom !== undefined ||
        this.earlyRunning.has(idx) ||
        this.turnStoring.has(idx) ||
        this.catalog.tx(idx) !== undefined
      )
        return;
      try {
        // Every check its turn in the queue makes, so that nothing is stored for a segment that
        // will be refused (the queue makes them again and answers the agent).
        this.checkSegment(parsed, message, this.writtenSeq + 1);
      } catch (error) {
        rethrowIfBug(error);
        return;
      }
      const stored = this.store(idx, payload, parsed, linkFrom);
      this.early.set(message, stored);
      const settled = stored.then(
        () => undefined,
        () => undefined,
      );
      this.earlyRunning.set(idx, settled);
      void settled.then(() => this.earlyRunning.delete(idx));
    };
    if (idx === this.writtenIdx + 1) start();
    else if (idx > this.writtenIdx + 1 && !this.earlyWaiting.has(idx))
      this.earlyWaiting.set(idx, start);
  }

  /** The transaction `idx` has its replica writes issued: the next segment may start early. */
  private written(idx: number, seqLast: number): void {
    this.writtenIdx = idx;
    this.writtenSeq = seqLast;
    for (const waiting of this.earlyWaiting.keys())
      if (waiting <= idx) this.earlyWaiting.delete(waiting);
    const next = this.earlyWaiting.get(idx + 1);
    this.earlyWaiting.delete(idx + 1);
    next?.();
  }

  /**
   * The redo copy and the undo of a segment, at once: they are independent of each other, and the
   * replica is untouched until the transaction is cataloged.
   */
  private async store(
    idx: number,
    payload: Buffer,
    parsed: SealedRedo,
    linkFrom?: string,
  ): Promise<StoreResult> {
    const undoFile = this.txFiles.undoPath(idx);
    const header = {
      volumeSetId: parsed.header.volumeSetId,
      segmentIndex: idx,
      seqFirst: parsed.header.seqFirst,
      seqLast: parsed.trailer.seqLast,
    };
    const [redoDone, undoDone] = await Promise.allSettled([
      linkFrom
        ? linkFileDurable(linkFrom, this.txFiles.redoPath(idx), payload)
        : writeFileDurable(this.txFiles.redoPath(idx), payload),
      this.applier.saveUndo(undoFile, header, parsed.records, this.replicas),
    ]);
    if (redoDone.status === 'rejected') throw redoDone.reason;
    if (undoDone.status === 'rejected') throw undoDone.reason;
    return undoDone.value;
  }

  /** `linkFrom`: the agent's sealed file holding `payload`, linked rather than copied. */
  private async storeAndRun(
    message: Extract<Message, { type: 'segment' }>,
    payload: Buffer,
    parsed: SealedRedo,
    linkFrom?: string,
  ): Promise<void> {
    // When the segment's turn came (the row is written later, once redo and undo are durable).
    const receivedAt = new Date().toISOString();
    const existing = this.catalog.tx(message.index);
    if (existing) {
      if (
        existing.redoCrc !== parsed.fileCrc ||
        !(await this.sameAsStored(existing.idx, payload))
      ) {
        throw new RewindError(
          'REWIND_SEGMENT_ORDER',
          `segment ${message.index} differs from the copy already received`,
        );
      }
      await this.runTx(existing, parsed);
      return;
    }
    // The redo copy and the undo (begun early when they could be, see storeEarly); the row goes in
    // only when both are durable, straight as undo-saved. Files left by a crash before that have
    // no row and are removed at start (the agent keeps the segment and resends it).
    const began = this.early.get(message);
    this.early.delete(message);
    // An early store is only used while the replica is as it was built on: this transaction's
    // predecessor committed, nothing written since (checked by receiveSegment's continuity checks).
    assert(this.writtenIdx === message.index - 1, 'no replica writes since the early store');
    if (began !== undefined) this.earlyStores += 1;
    let undo: StoreResult;
    let row: TxRow;
    this.turnStoring.add(message.index);
    try {
      if (began === undefined) await this.earlyRunning.get(message.index); // one begun for an earlier copy of this segment
      undo = await (began ?? this.store(message.index, payload, parsed, linkFrom));
      crashPoint('undo'); // redo and undo durable, no catalog row yet
      const first = parsed.records[0];
      const last = parsed.records[parsed.records.length - 1];
      row = {
        idx: message.index,
        kind: txKind(parsed.header.flags),
        seqFirst: parsed.header.seqFirst,
        seqLast: parsed.trailer.seqLast,
        timeFirstUs: Number((first?.timeNs ?? 0n) / 1000n),
        timeLastUs: Number((last?.timeNs ?? 0n) / 1000n),
        recordCount: parsed.records.length,
        redoBytes: payload.length,
        redoCrc: parsed.fileCrc,
        undoBytes: undo.bytes,
        undoCrc: undo.fileCrc,
        state: 'undo-saved',
        receivedAt,
        committedAt: null,
      };
      this.catalog.insertTx(row);
    } finally {
      this.turnStoring.delete(message.index);
    }
    await this.runTx(row, parsed, undo.extents);
  }

  /** `seqNext`: the seq the segment must start at (the committed one's successor, in the queue). */
  private checkSegment(
    parsed: SealedRedo,
    message: Extract<Message, { type: 'segment' }>,
    seqNext = this.committedSeq + 1,
  ): void {
    const known = this.catalog.getMeta('volumeSetId') ?? '';
    if (parsed.header.volumeSetId.toString('hex') !== known.replace(/-/g, '')) {
      throw new RewindError(
        'REWIND_SEGMENT_CORRUPT',
        `segment ${message.index} belongs to another volume set`,
      );
    }
    if (
      parsed.header.segmentIndex !== message.index ||
      parsed.header.seqFirst !== message.seqFirst ||
      parsed.trailer.seqLast !== message.seqLast ||
      parsed.fileCrc !== message.fileCrc >>> 0
    ) {
      throw new SegmentError(
        'REWIND_SEGMENT_CORRUPT',
        `segment ${message.index} from agent`,
        0,
        'header, seq range or checksum differ from what the agent announced',
      );
    }
    // Continuity is checked on the segment's own header, not only on the announcement.
    if (parsed.header.seqFirst !== seqNext) {
      throw new SegmentError(
        'REWIND_SEQ_GAP',
        `segment ${message.index} from agent`,
        40,
        `segment starts at seq ${parsed.header.seqFirst}; expected seq ${seqNext}`,
      );
    }
    for (const record of parsed.records) {
      const size = (this.replicas[record.volume] as ReplicaVolume).sizeBytes;
      if (record.offsetBytes + record.lengthBytes > size) {
        throw new SegmentError(
          'REWIND_SEGMENT_CORRUPT',
          `segment ${message.index} from agent`,
          record.recordOffsetBytes,
          `record seq ${record.seq} ends at ${record.offsetBytes + record.lengthBytes}, past the end of volume ${record.volume} (${size} bytes)`,
        );
      }
    }
  }

  /**
   * Takes a transaction from its durable state to committed. `savedExtents` are the undo extents
   * when the caller has just written the undo (state undo-saved).
   */
  private async runTx(row: TxRow, parsed: SealedRedo, savedExtents?: UndoExtent[]): Promise<void> {
    const undoFile = this.txFiles.undoPath(row.idx);
    let extents;
    if (row.state === 'received') {
      // Only catalogs written before redo and undo were saved together have this state. The
      // replica is untouched in it, so the undo built now is the true before-image.
      const undo = await this.applier.saveUndo(
        undoFile,
        {
          volumeSetId: parsed.header.volumeSetId,
          segmentIndex: row.idx,
          seqFirst: row.seqFirst,
          seqLast: row.seqLast,
        },
        parsed.records,
        this.replicas,
      );
      this.catalog.setUndoSaved(row.idx, undo.bytes, undo.fileCrc);
      extents = undo.extents;
    } else {
      extents =
        savedExtents ??
        parseUndo(await fsp.readFile(undoFile), undoFile, this.replicas.length).extents;
    }
    this.txFiles.remember(row.idx, { records: parsed.records, undo: extents });
    // Open views take the before-image now, before the replica changes under them.
    for (const view of this.views.values()) view.addUndo(row.idx, extents);
    for (const view of this.internalViews) view.addUndo(row.idx, extents);
    if (row.state !== 'applied') {
      await markApplied(parsed.records, this.replicas);
      await this.applier.writeRedo(
        this.txFiles.redoPath(row.idx),
        row.redoBytes,
        parsed.records,
        this.replicas,
      );
      // The next segment's undo may now be built from the replica (storeEarly) while this one's
      // writes are made durable.
      this.written(row.idx, row.seqLast);
      try {
        await this.applier.syncReplicas(replicasOf(parsed.records, this.replicas));
      } catch (error) {
        // After a failed fdatasync the page cache may no longer hold these writes: no early
        // store may read the replica until this transaction's writes are issued again.
        this.writtenIdx = this.committedIdx;
        this.writtenSeq = this.committedSeq;
        throw error;
      }
      crashPoint('apply'); // replica written, state still undo-saved (a restart applies it again)
    } else {
      this.written(row.idx, row.seqLast);
    }
    this.catalog.setState(row.idx, 'committed');
    crashPoint('commit'); // committed, not yet acknowledged
    this.committedSeq = row.seqLast;
    this.committedIdx = row.idx;
    const last = parsed.records[parsed.records.length - 1];
    if (last) this.committedTimeNs = last.timeNs;
    this.wakeCommitWaiters();
  }

  private wakeCommitWaiters(): void {
    const ready = this.commitWaiters.filter((w) => w.seq <= this.committedSeq);
    this.commitWaiters = this.commitWaiters.filter((w) => w.seq > this.committedSeq);
    for (const waiter of ready) waiter.resolve();
  }

  waitCommitted(seq: number, timeoutMs: number): Promise<void> {
    if (seq <= this.committedSeq) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.commitWaiters = this.commitWaiters.filter((w) => w !== waiter);
        reject(
          new RewindError(
            'REWIND_BUSY',
            `seq ${seq} not committed within ${timeoutMs} ms (committed: ${this.committedSeq})`,
            { hint: 'check rewind status for the lag and the agent connection' },
          ),
        );
      }, timeoutMs);
      const waiter = { seq, resolve: () => (clearTimeout(timer), resolve()) };
      this.commitWaiters.push(waiter);
    });
  }

  /** Asks the agent to seal its active segment; with `wait`, returns once it is committed. */
  async seal(wait: boolean, timeoutMs = 60_000): Promise<{ seqLast: number; committed: number }> {
    const session = this.session;
    if (!session)
      throw new RewindError('REWIND_BUSY', 'no agent is connected', {
        hint: 'start the agent, or check its log for why it cannot reach the manager',
      });
    const id = ++this.sealId;
    const seqLast = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.sealWaiters.delete(id);
        reject(new RewindError('REWIND_BUSY', 'the agent did not answer the seal request in time'));
      }, timeoutMs);
      this.sealWaiters.set(id, (value) => (clearTimeout(timer), resolve(value)));
      sendFrame(session, { type: 'seal', id });
    });
    if (wait) await this.waitCommitted(seqLast, timeoutMs);
    return { seqLast, committed: this.committedSeq };
  }

  // ---- Points, views, log ----
  /** Resolves an operator's POINT to a committed, restorable seq, or refuses saying why. */
  resolvePoint(text: string): number {
    const trimmed = text.trim();
    if (trimmed.startsWith('@')) {
      const bookmark = this.catalog.bookmark(trimmed.slice(1));
      if (!bookmark)
        throw new RewindError('REWIND_NOT_FOUND', `no bookmark named "${trimmed.slice(1)}"`, {
          hint: 'rewind bookmarks lists them',
        });
      return this.resolvePoint(String(bookmark.seq));
    }
    const point = parsePoint(text);
    const historyStart = this.historyStart();
    if (point.kind === 'seq') {
      if (point.seq > this.committedSeq) {
        throw new RewindError(
          'REWIND_POINT_INVALID',
          `seq ${point.seq} is not committed yet (last committed: ${this.committedSeq})`,
          { hint: 'wait, or run rewind seal --wait' },
        );
      }
      if (point.seq < historyStart) throw this.beforeHistory(`seq ${point.seq}`, historyStart);
      this.refuseInsideResync(point.seq);
      return point.seq;
    }
    return this.seqAtTime(point.timeNs, point.text);
  }

  /** The refusal of a point before `start` (historyStart()), also while the history has not begun. */
  private beforeHistory(what: string, start: number): RewindError {
    if (start === Number.MAX_SAFE_INTEGER) {
      return new RewindError(
        'REWIND_POINT_INVALID',
        `${what}: the history has not started yet (the first protection's resync of the data already on the volume is still arriving)`,
        {
          hint: 'wait until rewind status shows it committed',
        },
      );
    }
    return new RewindError(
      'REWIND_POINT_INVALID',
      `${what} is before the history starts (seq ${start})`,
    );
  }

  /** The first restorable seq: 0, or the end of a resync the history begins with (first protection). */
  private historyStart(): number {
    let tx = this.catalog.firstTx();
    if (!tx || tx.kind === 'redo') return tx ? tx.seqFirst - 1 : 0;
    while (tx && tx.kind === 'resync') tx = this.catalog.tx(tx.idx + 1);
    return tx && tx.kind === 'resync-end' ? tx.seqLast : Number.MAX_SAFE_INTEGER;
  }

  /**
   * Refuses a time inside a window without per-write history: after the write at `seq` and before
   * the resync that follows it has read production (from the window's start, when known).
   */
  private refuseInsideGap(seq: number, timeNs: bigint, text: string): void {
    const next = this.catalog.txContaining(seq + 1);
    if (!next || next.kind === 'redo' || next.seqFirst !== seq + 1) return;
    const header = decodeRedoHeader(
      this.readHead(this.txFiles.redoPath(next.idx)),
      this.txFiles.redoPath(next.idx),
    );
    const gapStartNs = header.createdNs > 0n ? header.createdNs : -1n;
    if (gapStartNs < 0n ? true : timeNs >= gapStartNs) {
      const from = gapStartNs > 0n ? formatTimeNs(gapStartNs) : `the write at seq ${seq}`;
      throw new RewindError(
        'REWIND_POINT_INVALID',
        `time ${text} falls in a window without per-write history (from ${from} until a resync from seq ${next.seqFirst})`,
        {
          hint: `choose seq ${seq}, or the end of that resync (rewind log marks its records)`,
        },
      );
    }
  }

  private readHead(file: string): Buffer {
    const head = Buffer.alloc(REDO_HEADER_BYTES);
    preadFully(this.txFiles.fd(file), head, 0, REDO_HEADER_BYTES, 0);
    return head;
  }

  private refuseInsideResync(seq: number): void {
    const tx = this.catalog.txContaining(seq);
    if (!tx || tx.kind === 'redo') return;
    if (tx.kind === 'resync-end' && seq === tx.seqLast) return; // the consistent point after it
    // One resync spans consecutive transactions up to its resync-end: the window is all of them.
    let first = tx;
    for (
      let prev = this.catalog.tx(first.idx - 1);
      prev?.kind === 'resync';
      prev = this.catalog.tx(first.idx - 1)
    )
      first = prev;
    let last: TxRow | undefined = tx;
    while (last && last.kind === 'resync') last = this.catalog.tx(last.idx + 1);
    const end =
      last && last.kind === 'resync-end' && last.state === 'committed'
        ? `seq ${last.seqLast}`
        : 'its end, once committed';
    throw new RewindError(
      'REWIND_POINT_INVALID',
      `seq ${seq} lies inside a resync (from seq ${first.seqFirst}), which has no per-write history`,
      {
        hint: `choose seq ${first.seqFirst - 1} or ${end}`,
      },
    );
  }

  private seqAtTime(timeNs: bigint, text: string): number {
    const lastCommittedTimeNs = this.committedTimeNs;
    if (timeNs > lastCommittedTimeNs) {
      const status = this.agentStatus;
      const nowNs = BigInt(Date.now()) * 1_000_000n;
      if (timeNs > nowNs)
        throw new RewindError('REWIND_POINT_INVALID', `time ${text} is in the future`);
      const quiet =
        status &&
        status.seqCaptured === this.committedSeq &&
        BigInt(status.receivedAtMs) * 1_000_000n >= timeNs;
      if (!quiet) {
        throw new RewindError(
          'REWIND_POINT_INVALID',
          `writes captured up to ${text} are not all committed yet (last committed write: ${formatTimeNs(lastCommittedTimeNs)})`,
          {
            hint: 'wait, or run rewind seal --wait',
          },
        );
      }
      this.refuseInsideResync(this.committedSeq);
      return this.committedSeq;
    }
    const tx = this.catalog.txAtOrBeforeTime(Number(timeNs / 1000n) + 1);
    if (!tx) {
      const start = this.historyStart();
      if (start === 0) return 0; // before the first write: the baseline
      throw new RewindError('REWIND_POINT_INVALID', `time ${text} is before the history starts`);
    }
    return this.seqAtTimeIn(tx, timeNs, text);
  }

  private seqAtTimeIn(tx: TxRow, timeNs: bigint, text: string): number {
    // The transaction's records are scanned synchronously from the cache when present.
    const file = this.txFiles.redoPath(tx.idx);
    const records =
      this.txFiles.cached(tx.idx)?.records ??
      parseSealedRedo(fs.readFileSync(file), file, this.replicas.length).records;
    let seq = tx.seqFirst - 1;
    let seqTimeNs = 0n;
    for (const record of records) {
      if (record.timeNs > timeNs) break;
      seq = record.seq;
      seqTimeNs = record.timeNs;
    }
    this.refuseInsideResync(seq);
    if (timeNs > seqTimeNs) this.refuseInsideGap(seq, timeNs, text);
    return seq;
  }

  async createView(name: string, kind: 'snapshot' | 'clone', pointText: string): Promise<View> {
    if (!VIEW_NAME.test(name))
      throw new RewindError('REWIND_BAD_ARGUMENT', `name "${name}" is invalid`, {
        hint: 'use letters, digits, dot, dash and underscore (at most 64)',
      });
    if (this.views.has(name))
      throw new RewindError(
        'REWIND_CONFLICT',
        `a snapshot or clone named "${name}" already exists`,
      );
    if (this.replicas.length === 0)
      throw new RewindError('REWIND_BUSY', 'no volume set is known yet: no agent has connected');
    return this.enqueue(async () => {
      const seq = this.resolvePoint(pointText);
      if (this.views.has(name))
        throw new RewindError(
          'REWIND_CONFLICT',
          `a snapshot or clone named "${name}" already exists`,
        );
      const overlays = kind === 'clone' ? this.openOverlays(name) : undefined;
      const view = await View.build(name, kind, seq, this, overlays);
      this.catalog.addView({ name, kind, seq, createdAt: new Date().toISOString() });
      this.registerView(view);
      return view;
    });
  }

  private openOverlays(name: string): Overlay[] {
    const dir = path.join(this.root, 'clones', name);
    fs.mkdirSync(dir, { recursive: true });
    return this.replicas.map((replica) =>
      Overlay.open(
        path.join(dir, `${replica.name}.img`),
        path.join(dir, `${replica.name}.journal`),
        replica.sizeBytes,
      ),
    );
  }

  private registerView(view: View): void {
    this.views.set(view.name, view);
    this.viewExports.set(
      view.name,
      this.replicas.map(
        (replica) =>
          new ViewExport(view, replica.index, `${replica.name}@${view.name}`, replica.sizeBytes),
      ),
    );
    this.options.onExportsChanged?.([]);
  }

  async removeView(name: string): Promise<void> {
    const view = this.views.get(name);
    if (!view)
      throw new RewindError('REWIND_NOT_FOUND', `no snapshot or clone named "${name}"`, {
        hint: 'rewind ls lists them',
      });
    await this.enqueue(async () => {
      const exports = this.viewExports.get(name) ?? [];
      this.views.delete(name);
      this.viewExports.delete(name);
      this.options.onExportsChanged?.(exports.map((e) => e.name));
      for (const overlay of view.overlays ?? []) overlay.close();
      this.catalog.removeView(name);
      await fsp.rm(path.join(this.root, 'clones', name), { recursive: true, force: true });
    });
  }

  exports(): ExportBackend[] {
    return [...this.viewExports.values()].flat();
  }

  /**
   * Runs `work` with a private view at `seq` that stays put while new transactions are applied
   * (it takes their undo like any view). Built in the queue, released when `work` settles.
   */
  async withView<T>(seq: number, work: (view: View) => Promise<T>): Promise<T> {
    const view = await this.enqueue(async () => {
      assert(seq <= this.committedSeq, 'internal view at a committed seq');
      const built = await View.build(`internal-${seq}`, 'snapshot', seq, this);
      this.internalViews.add(built);
      return built;
    });
    try {
      return await work(view);
    } finally {
      this.internalViews.delete(view);
    }
  }

  // ---- Stepping ----
  /**
   * Moves a snapshot (or a clone without writes of its own, or with `discardWrites`) to another
   * point; returns the writes crossed. Its NBD clients read the new content on their next read.
   */
  async stepView(
    name: string,
    how: { forward?: number; back?: number; to?: string; discardWrites?: boolean },
  ): Promise<{ from: number; to: number; crossed: LogEntry[] }> {
    const view = this.views.get(name);
    if (!view)
      throw new RewindError('REWIND_NOT_FOUND', `no snapshot or clone named "${name}"`, {
        hint: 'rewind ls lists them',
      });
    const given = [how.forward, how.back, how.to].filter((v) => v !== undefined).length;
    if (given !== 1)
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        'give exactly one of --forward N, --back N or --to POINT',
      );
    for (const n of [how.forward, how.back]) {
      if (n !== undefined && (!Number.isSafeInteger(n) || n < 1))
        throw new RewindError(
          'REWIND_BAD_ARGUMENT',
          `a step count must be a positive integer, not ${n}`,
        );
    }
    return this.enqueue(async () => {
      const from = view.seq;
      let target: number;
      if (how.to !== undefined) target = this.resolvePoint(how.to);
      else if (how.forward !== undefined) {
        target = from + how.forward;
        if (target > this.committedSeq) {
          throw new RewindError(
            'REWIND_POINT_INVALID',
            `${name} is at seq ${from}; ${how.forward} forward is seq ${target}, past the last committed seq ${this.committedSeq}`,
            { hint: 'wait, or run rewind seal --wait' },
          );
        }
        this.refuseInsideResync(target);
      } else {
        target = from - (how.back as number);
        const start = this.historyStart();
        if (target < start)
          throw this.beforeHistory(`${name} is at seq ${from}; ${how.back} back`, start);
        this.refuseInsideResync(target);
      }
      const overlays = view.overlays ?? [];
      if (overlays.some((o) => o.hasWrites)) {
        if (!how.discardWrites) {
          throw new RewindError(
            'REWIND_CONFLICT',
            `clone ${name} has writes of its own; stepping would mix them with another point`,
            { hint: 'add --discard-writes to drop them, or make a new clone' },
          );
        }
        for (const overlay of overlays) await overlay.discard();
      }
      const crossed = await view.stepTo(target);
      this.catalog.updateViewSeq(name, target);
      const kinds = new Map<number, TxKind>();
      const kindOf = (idx: number): TxKind =>
        kinds.get(idx) ?? (kinds.set(idx, this.catalog.tx(idx)?.kind ?? 'redo').get(idx) as TxKind);
      return {
        from,
        to: target,
        crossed: crossed.map(({ idx, record }) => this.logEntry(record, kindOf(idx))),
      };
    });
  }

  // ---- Bookmarks ----
  async addBookmark(
    name: string,
    pointText: string | undefined,
  ): Promise<{ name: string; seq: number; time: string }> {
    if (!VIEW_NAME.test(name))
      throw new RewindError('REWIND_BAD_ARGUMENT', `bookmark name "${name}" is invalid`, {
        hint: 'use letters, digits, dot, dash and underscore (at most 64)',
      });
    return this.enqueue(async () => {
      const seq = pointText === undefined ? this.committedSeq : this.resolvePoint(pointText);
      if (pointText === undefined) this.refuseInsideResync(seq);
      const timeNs = await this.seqTimeNs(seq);
      this.catalog.addBookmark({
        name,
        seq,
        timeUs: Number(timeNs / 1000n),
        createdAt: new Date().toISOString(),
      });
      return { name, seq, time: formatTimeNs(timeNs) };
    });
  }

  removeBookmark(name: string): void {
    if (!this.catalog.removeBookmark(name))
      throw new RewindError('REWIND_NOT_FOUND', `no bookmark named "${name}"`, {
        hint: 'rewind bookmarks lists them',
      });
  }

  bookmarks(): { name: string; seq: number; time: string; createdAt: string }[] {
    return this.catalog.bookmarks().map((b) => ({
      name: b.name,
      seq: b.seq,
      time: formatTimeNs(BigInt(b.timeUs) * 1000n),
      createdAt: b.createdAt,
    }));
  }

  /** Capture time of the write at `seq` (0: the first write's time, or now when there is none). */
  async seqTimeNs(seq: number): Promise<bigint> {
    const tx = this.catalog.txContaining(Math.max(seq, 1));
    if (!tx) return BigInt(Date.now()) * 1_000_000n;
    const { records } = await this.txFiles.index(tx.idx);
    const record = records.find((r) => r.seq === Math.max(seq, 1));
    return record?.timeNs ?? BigInt(tx.timeLastUs) * 1000n;
  }

  async *log(filter: { volume?: string; from?: number; to?: number }): AsyncGenerator<LogEntry> {
    const volumeIndex =
      filter.volume === undefined
        ? undefined
        : this.replicas.findIndex((r) => r.name === filter.volume);
    if (volumeIndex === -1)
      throw new RewindError('REWIND_NOT_FOUND', `no volume named "${filter.volume}"`);
    const from = filter.from ?? 1;
    const to = filter.to ?? Number.MAX_SAFE_INTEGER;
    for (const tx of this.catalog.committedTxs(from, to)) {
      const { records } = await this.txFiles.index(tx.idx);
      for (const record of records) {
        if (record.seq < from || record.seq > to) continue;
        if (volumeIndex !== undefined && record.volume !== volumeIndex) continue;
        yield this.logEntry(record, tx.kind);
      }
    }
  }

  logEntry(record: RedoRecord, kind: TxKind): LogEntry {
    return {
      seq: record.seq,
      time: formatTimeNs(record.timeNs),
      volume: (this.replicas[record.volume] as ReplicaVolume).name,
      kind: record.kind,
      offset: record.offsetBytes,
      length: record.lengthBytes,
      resync: kind !== 'redo',
    };
  }

  status(): object {
    const agent = this.agentStatus;
    const connected = this.session !== undefined;
    const seqCaptured = Math.max(agent?.seqCaptured ?? this.committedSeq, this.committedSeq);
    const lagSeconds =
      agent && seqCaptured > this.committedSeq
        ? Math.max(0, Number(agent.timeCapturedNs - this.committedTimeNs) / 1e9)
        : 0;
    return {
      volumeSet: {
        id: this.catalog.getMeta('volumeSetId') ?? null,
        name: this.catalog.getMeta('volumeSetName') ?? null,
      },
      volumes: this.replicas.map((r) => ({ name: r.name, sizeBytes: r.sizeBytes })),
      agentConnected: connected,
      seqCaptured,
      seqCommitted: this.committedSeq,
      lagWrites: seqCaptured - this.committedSeq,
      lagSeconds,
      lastCommittedTime: this.committedTimeNs > 0n ? formatTimeNs(this.committedTimeNs) : null,
      spoolBytes: agent?.spoolBytes ?? 0,
      sealedPending: agent?.sealedPending ?? 0,
      mode: connected ? (agent?.mode ?? 'logging') : 'disconnected',
      failure: agent?.failure ?? null,
      offline: agent?.restoring
        ? { restore: agent.restoring.id, volumes: agent.restoring.volumes }
        : null,
      transactions: this.committedIdx,
      views: this.views.size,
    };
  }

  async close(): Promise<void> {
    // server.close() waits for every connection to end: end them first, or a connected agent
    // keeps the manager from stopping.
    const closed = new Promise<void>((resolve) =>
      this.server ? this.server.close(() => resolve()) : resolve(),
    );
    for (const socket of this.sockets) socket.destroy();
    this.session?.destroy();
    await closed;
    await this.queue.catch(() => undefined);
    this.closing = true; // no early store starts now; wait for those running
    await Promise.all(this.earlyRunning.values());
    for (const view of this.views.values())
      for (const overlay of view.overlays ?? []) overlay.close();
    await this.applier.close();
    for (const replica of this.replicas) replica.close();
    this.txFiles.close();
    this.catalog.close();
  }
}

type StoreResult = Awaited<ReturnType<Applier['saveUndo']>>;

/** Parses a segment from the agent; what it throws is handled in the queue, in segment order. */
function parseSegment(
  payload: Buffer,
  index: number,
  volumeCount: number,
): { parsed: SealedRedo } | { error: unknown } {
  try {
    return { parsed: parseSealedRedo(payload, `segment ${index} from agent`, volumeCount) };
  } catch (error) {
    rethrowIfBug(error);
    return { error };
  }
}

function txKind(flags: number): TxKind {
  if ((flags & SEGMENT_FLAG_RESYNC) === 0) return 'redo';
  return (flags & SEGMENT_FLAG_RESYNC_END) !== 0 ? 'resync-end' : 'resync';
}
