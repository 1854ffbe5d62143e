// Ships sealed segments to the manager in index order over one authenticated connection, a bounded
// window ahead of the acknowledgements; reconnects with backoff and resends whatever is unacked,
// also when the manager leaves a segment unanswered too long. Only the segment transport lives
// here: the manager's commands (seal, production restore) go to the agent's command port.
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  assertNever,
  crashPoint,
  crc32c,
  errorMessage,
  rethrowIfBug,
  type LogFunction,
} from '../core/index.js';
import {
  FrameReader,
  isManagerMessage,
  PROTOCOL_VERSION,
  sendFrame,
  type AgentMessage,
  type ManagerMessage,
  type RestoringState,
  type VolumeInfo,
} from '../ship/index.js';
import type { SealedSegment } from './spool.js';

export interface ShipperTarget {
  host: string;
  port: number;
  token: string;
  tls?: { ca?: string; rejectUnauthorized?: boolean; servername?: string };
  /** Opens the connection instead of TCP/TLS to host:port (the deterministic simulation's link). */
  connect?: (onConnected: () => void) => net.Socket;
  /**
   * The manager runs in this process and reads sealed segments from the spool itself, so only
   * their names cross the link (`rewind up`).
   */
  localFiles?: boolean;
  /**
   * How long the oldest unacknowledged segment may wait for an answer; by default from its size.
   */
  ackTimeoutMs?: number;
}

/** What the agent reports to the manager every STATUS_INTERVAL_MS. */
export interface AgentReport {
  seqCaptured: number;
  timeCapturedNs: bigint;
  spoolBytes: number;
  sealedPending: number;
  mode: string;
  failure: string | undefined;
  restoring: RestoringState | undefined;
  /** Per volume index: client writes logged since the agent started, and their bytes. */
  captured?: { writes: number; bytes: number }[];
  /** Per volume index: NBD clients connected to the production export now. */
  clients?: number[];
}

/** What the shipper ships and reports: the volume set, the spool's sealed segments, the status. */
export interface ShipperSource {
  hello(): { volumeSetId: string; volumeSetName: string; volumes: VolumeInfo[]; seqNext: number };
  /** Sealed segments waiting in the spool, in index order. */
  sealed(): readonly SealedSegment[];
  /** The manager committed everything up to segment `index` (seq `seqLast`). */
  committed(index: number, seqLast: number): Promise<void>;
  /** The last segment and seq the manager acknowledged (the spool holds what follows). */
  acked(): { index: number; seq: number };
  /**
   * The manager committed less than it had acknowledged (it lost history, seq `managerSeq` is all
   * it has): logs a resync of every region of every volume, drops the spooled segments before it
   * and resolves where the resync starts. Asked again by a later session while the manager is
   * still behind, it resolves the same resync as long as the spool still holds it.
   */
  resyncForGap(managerSeq: number): Promise<{ segmentFirst: number; seqFirst: number }>;
  report(): AgentReport;
}

/** The manager's commands to the agent; each resolves what the reply carries. */
export interface AgentCommands {
  /** Seals the active segment; resolves its last seq. */
  seal(): Promise<number>;
  restoreBegin(id: number, volumes: string[]): Promise<number>;
  restoreWrite(
    write: { volume: string; offset: number; length: number; data: Buffer | undefined },
    done: (errno: number) => void,
  ): void;
  restoreEnd(id: number, abandon: boolean): Promise<number>;
}

const WINDOW_SEGMENTS_MAX = 4;
const BACKOFF_MS_MIN = 100;
const BACKOFF_MS_MAX = 5000;
const STATUS_INTERVAL_MS = 250;
/**
 * An unanswered segment is given this long, plus a second per ACK_TIMEOUT_BYTES_PER_S of its size
 * (a manager applying a 1 GiB segment of small writes on a slow disk takes minutes).
 */
const ACK_TIMEOUT_MS_MIN = 120_000;
const ACK_TIMEOUT_BYTES_PER_S = 4 * 1024 * 1024;

export class Shipper {
  private readonly source: ShipperSource;
  private readonly commands: AgentCommands;
  private readonly target: ShipperTarget;
  private readonly log: LogFunction;
  private socket: net.Socket | undefined;
  private welcomed = false;
  /** Segments sent and not yet answered, with when the wait for each began. */
  private readonly inFlight = new Map<number, { bytes: number; waitingSinceMs: number }>();
  private sendChain: Promise<void> = Promise.resolve();
  private stopped = false;
  private backoffMs = BACKOFF_MS_MIN;
  private statusTimer: NodeJS.Timeout | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  /** The manager's last backpressure message, until a segment is acknowledged again. */
  busy: string | undefined;
  private busyTimer: NodeJS.Timeout | undefined;
  private busyRetryMs = 250;
  /** A segment the manager refused: kept in the spool, shipping paused, reported in status. */
  refusal: string | undefined;
  connected = false;
  /** Why the last attempt to reach the manager failed (TLS, refused, reset), until one succeeds. */
  private linkError: string | undefined;
  /** Segments resent because the manager left them unanswered too long. */
  ackTimeouts = 0;
  /** The manager lost history: nothing is shipped until the resync that covers it is logged. */
  private resyncingForGap = false;

  constructor(options: {
    source: ShipperSource;
    commands: AgentCommands;
    target: ShipperTarget;
    log: LogFunction;
  }) {
    this.source = options.source;
    this.commands = options.commands;
    this.target = options.target;
    this.log = options.log;
  }

  start(): void {
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    const onConnected = (): void => {
      this.backoffMs = BACKOFF_MS_MIN;
      this.send(socket, {
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        token: this.target.token,
        ...this.source.hello(),
      });
    };
    const socket = this.target.connect
      ? this.target.connect(onConnected)
      : this.target.tls
        ? tls.connect(
            { host: this.target.host, port: this.target.port, ...this.target.tls },
            onConnected,
          )
        : net.connect({ host: this.target.host, port: this.target.port }, onConnected);
    socket.setNoDelay(true);
    this.socket = socket;
    const reader = new FrameReader();
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const frame of reader.push(chunk)) this.onFrame(socket, frame.message, frame.payload);
      } catch (error) {
        rethrowIfBug(error);
        this.log('error', `manager connection: ${errorMessage(error)}`);
        socket.destroy();
      }
    });
    let errored = false;
    socket.on('error', (error: Error) => {
      errored = true;
      if (this.connected) {
        this.log('warn', `manager connection lost: ${error.message}`);
        return;
      }
      this.linkFailed(error.message);
    });
    socket.on('close', () => {
      // A peer that closes before its welcome without an error (a TLS manager answering a
      // plaintext hello, say) is a failure to get in too; a refusal was logged already.
      if (!errored && !this.welcomed && !this.refusal && !this.stopped)
        this.linkFailed('the connection closed before the manager welcomed the agent');
      this.onClose(socket);
    });
  }

  private send(socket: net.Socket, message: AgentMessage, payload?: Buffer): void {
    if (!socket.destroyed) sendFrame(socket, message, payload);
  }

  /**
   * Failing to get in at all (wrong certificate, nothing listening, a reset during the TLS
   * handshake) is logged once per distinct reason, not once per retry.
   */
  private linkFailed(reason: string): void {
    if (reason !== this.linkError)
      this.log(
        'warn',
        `cannot reach the manager at ${this.target.host}:${this.target.port}: ${reason} (retrying)`,
      );
    this.linkError = reason;
  }

  private onClose(socket: net.Socket): void {
    if (this.socket !== socket) return;
    this.socket = undefined;
    this.connected = false;
    this.welcomed = false;
    this.resyncingForGap = false;
    this.inFlight.clear();
    clearInterval(this.statusTimer);
    if (this.stopped) return;
    this.reconnectTimer = setTimeout(() => this.connect(), this.backoffMs);
    this.backoffMs = Math.min(BACKOFF_MS_MAX, this.backoffMs * 2);
  }

  private onFrame(
    socket: net.Socket,
    message: AgentMessage | ManagerMessage,
    payload: Buffer,
  ): void {
    if (!isManagerMessage(message)) {
      this.log('warn', `the manager sent an agent's message: ${message.type}`);
      socket.destroy();
      return;
    }
    switch (message.type) {
      case 'welcome':
        this.connected = true;
        this.welcomed = true;
        this.refusal = undefined;
        this.linkError = undefined;
        this.log(
          'info',
          `connected to manager ${this.target.host}:${this.target.port}; committed seq ${message.seqCommitted}`,
        );
        if (message.seqCommitted < this.source.acked().seq) {
          this.resyncForGap(socket, message.seqCommitted);
        } else {
          void this.acked(message.segmentCommitted, message.seqCommitted).then(() =>
            this.shipNext(),
          );
        }
        this.sendStatus();
        this.statusTimer = setInterval(() => this.tick(), STATUS_INTERVAL_MS);
        return;
      case 'ack':
        this.inFlight.delete(message.index);
        this.restartAckClocks();
        this.busy = undefined;
        this.busyRetryMs = 250;
        void this.acked(message.index, message.seqLast).then(() => this.shipNext());
        return;
      case 'refused':
        this.inFlight.clear();
        if (message.code === 'REWIND_BUSY') {
          // Backpressure (the manager's disk is full): keep the segment, resend later.
          if (this.busy === undefined) this.log('warn', `manager busy: ${message.message}`);
          this.busy = message.message;
          clearTimeout(this.busyTimer);
          this.busyTimer = setTimeout(() => this.shipNext(), this.busyRetryMs);
          this.busyRetryMs = Math.min(BACKOFF_MS_MAX, this.busyRetryMs * 2);
          return;
        }
        this.refusal = `segment ${message.index} refused by the manager: ${message.code}: ${message.message}`;
        this.log('error', this.refusal);
        return; // keep the segment; shipping waits for an operator (it is never deleted here)
      case 'error':
        this.log('error', `manager refused the connection: ${message.code}: ${message.message}`);
        this.refusal = `${message.code}: ${message.message}`;
        return;
      case 'seal':
      case 'restore-begin':
      case 'restore-write':
      case 'restore-end':
        this.command(message, payload);
        return;
      default:
        assertNever(message, 'manager message');
    }
  }

  /** Runs one of the manager's commands and answers it on the link it came on. */
  private command(
    message: Extract<
      ManagerMessage,
      { type: 'seal' | 'restore-begin' | 'restore-write' | 'restore-end' }
    >,
    payload: Buffer,
  ): void {
    const reply = (answer: AgentMessage): void => {
      if (this.socket) this.send(this.socket, answer);
    };
    const failed = (id: number) => (error: unknown) => {
      rethrowIfBug(error);
      reply({ type: 'restore-failed', id, message: errorMessage(error) });
    };
    switch (message.type) {
      case 'seal':
        void this.commands.seal().then((seqLast) => {
          reply({ type: 'sealed', id: message.id, seqLast });
          this.shipNext();
        });
        return;
      case 'restore-begin':
        this.commands
          .restoreBegin(message.id, message.volumes)
          .then(
            (seqLast) => reply({ type: 'restore-ready', id: message.id, seqLast }),
            failed(message.id),
          );
        return;
      case 'restore-write':
        try {
          const data = message.zero ? undefined : payload;
          this.commands.restoreWrite(
            { volume: message.volume, offset: message.offset, length: message.length, data },
            (errno) =>
              reply({ type: 'restore-written', id: message.id, chunk: message.chunk, errno }),
          );
        } catch (error) {
          rethrowIfBug(error);
          reply({ type: 'restore-failed', id: message.id, message: errorMessage(error) });
        }
        return;
      case 'restore-end':
        this.commands.restoreEnd(message.id, message.abandon).then((seqLast) => {
          reply({ type: 'restore-done', id: message.id, seqLast });
          this.shipNext();
        }, failed(message.id));
        return;
      default:
        assertNever(message, 'manager message');
    }
  }

  /**
   * The manager is behind what it acknowledged: the seqs between are lost to it, and the spooled
   * segments after them can never be applied there. Once a resync of everything is logged, the
   * manager is told where the gap ends and shipping resumes with the resync.
   */
  private resyncForGap(socket: net.Socket, managerSeq: number): void {
    this.resyncingForGap = true;
    this.log(
      'warn',
      `the manager has committed seq ${managerSeq} only, but had acknowledged seq ${this.source.acked().seq}: it lost history; resyncing every volume`,
    );
    this.source.resyncForGap(managerSeq).then(
      (start) => {
        if (this.socket !== socket || !this.welcomed) return; // the next session asks again
        this.resyncingForGap = false;
        this.send(socket, { type: 'history-gap', ...start });
        this.shipNext();
      },
      (error: unknown) => {
        rethrowIfBug(error);
        this.refusal = `the resync for the manager's lost history failed: ${errorMessage(error)}`;
        this.log('error', this.refusal);
      },
    );
  }

  private async acked(index: number, seqLast: number): Promise<void> {
    try {
      await this.source.committed(index, seqLast);
    } catch (error) {
      rethrowIfBug(error);
      this.log(
        'error',
        `cleaning up after commit of segment ${index} failed: ${errorMessage(error)}`,
      );
    }
  }

  /** Sends the next sealed segments, up to the window. */
  shipNext(): void {
    const socket = this.socket;
    if (!socket || !this.welcomed || this.refusal || this.resyncingForGap) return;
    const highest = Math.max(0, ...this.inFlight.keys());
    for (const segment of this.source.sealed()) {
      if (this.inFlight.size >= WINDOW_SEGMENTS_MAX) break;
      if (this.inFlight.has(segment.index) || segment.index <= highest) continue;
      this.inFlight.set(segment.index, { bytes: segment.bytes, waitingSinceMs: Date.now() });
      // Sends are chained: segments must reach the manager in index order, whatever order
      // the file reads finish in (the manager refuses a gap).
      this.sendChain = this.sendChain.then(() => this.sendSegment(socket, segment));
    }
  }

  private async sendSegment(socket: net.Socket, segment: SealedSegment): Promise<void> {
    if (this.target.localFiles) {
      this.send(socket, {
        type: 'segment-file',
        index: segment.index,
        seqFirst: segment.seqFirst,
        seqLast: segment.seqLast,
        bytes: segment.bytes,
        name: path.basename(segment.file),
      });
      crashPoint('ship');
      return;
    }
    try {
      const bytes = await fsp.readFile(segment.file);
      if (socket.destroyed) return;
      this.send(
        socket,
        {
          type: 'segment',
          index: segment.index,
          seqFirst: segment.seqFirst,
          seqLast: segment.seqLast,
          fileCrc: crc32c(bytes),
          bytes: bytes.length,
        },
        bytes,
      );
      crashPoint('ship');
    } catch (error) {
      rethrowIfBug(error);
      this.log('error', `reading segment ${segment.file} failed: ${errorMessage(error)}`);
      socket.destroy();
    }
  }

  /** The manager answers in order: after each answer, the oldest still waiting starts its clock. */
  private restartAckClocks(): void {
    const nowMs = Date.now();
    for (const waiting of this.inFlight.values()) waiting.waitingSinceMs = nowMs;
  }

  private ackTimeoutMs(bytes: number): number {
    return (
      this.target.ackTimeoutMs ?? ACK_TIMEOUT_MS_MIN + (1000 * bytes) / ACK_TIMEOUT_BYTES_PER_S
    );
  }

  private tick(): void {
    this.sendStatus();
    this.checkAckTimeout();
  }

  /**
   * A segment the manager leaves unanswered (a turn that never ends, a frame lost on a half-open
   * connection) must not stall shipping silently: past its timeout the link is dropped, which
   * reconnects and resends everything unacknowledged (the manager answers resends idempotently).
   */
  private checkAckTimeout(): void {
    const socket = this.socket;
    const oldest = Math.min(...this.inFlight.keys());
    const waiting = this.inFlight.get(oldest);
    if (!socket || waiting === undefined) return;
    const waitedMs = Date.now() - waiting.waitingSinceMs;
    if (waitedMs < this.ackTimeoutMs(waiting.bytes)) return;
    this.ackTimeouts += 1;
    this.log(
      'error',
      `segment ${oldest} unanswered by the manager for ${Math.round(waitedMs / 1000)} s; reconnecting to send it again`,
    );
    socket.destroy();
  }

  private sendStatus(): void {
    if (!this.socket || !this.welcomed) return;
    const status = this.source.report();
    const failure =
      this.refusal ?? status.failure ?? (this.busy ? `manager busy: ${this.busy}` : undefined);
    this.send(this.socket, {
      type: 'status',
      seqCaptured: status.seqCaptured,
      timeCapturedNs: status.timeCapturedNs.toString(),
      spoolBytes: status.spoolBytes,
      sealedPending: status.sealedPending,
      mode: status.mode,
      ...(failure ? { failure } : {}),
      ...(status.restoring ? { restoring: status.restoring } : {}),
      ...(status.captured ? { captured: status.captured } : {}),
      ...(status.clients ? { clients: status.clients } : {}),
    });
  }

  /** Gives in-flight segments a moment to be acknowledged, then closes. */
  async stop(): Promise<void> {
    for (let waited = 0; this.inFlight.size > 0 && this.socket && waited < 5000; waited += 20) {
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.busyTimer);
    clearInterval(this.statusTimer);
    this.socket?.destroy();
  }
}
