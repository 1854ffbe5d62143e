// Ships sealed segments to the manager in index order over one authenticated connection, a bounded
// window ahead of the acknowledgements; reconnects with backoff and resends whatever is unacked.
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import { crashPoint, crc32c, errorMessage, rethrowIfBug } from '../core/index.js';
import { FrameReader, PROTOCOL_VERSION, sendFrame, type Message } from '../ship/index.js';
import type { Agent } from './agent.js';
import type { SealedSegment, Spool } from './spool.js';

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
}

const WINDOW_SEGMENTS_MAX = 4;
const BACKOFF_MS_MAX = 5000;
const STATUS_INTERVAL_MS = 250;

export class Shipper {
  private readonly agent: Agent;
  private readonly spool: Spool;
  private readonly target: ShipperTarget;
  private readonly log: (
    level: 'info' | 'warn' | 'error',
    message: string,
    fields?: object,
  ) => void;
  private socket: net.Socket | undefined;
  private welcomed = false;
  private inFlight = new Set<number>();
  private sendChain: Promise<void> = Promise.resolve();
  private stopped = false;
  private backoffMs = 100;
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

  constructor(agent: Agent, spool: Spool, target: ShipperTarget, log: Shipper['log']) {
    this.agent = agent;
    this.spool = spool;
    this.target = target;
    this.log = log;
  }

  start(): void {
    this.connect();
  }

  private connect(): void {
    if (this.stopped) return;
    const onConnected = (): void => {
      this.backoffMs = 100;
      const hello: Message = {
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        token: this.target.token,
        volumeSetId: this.agent.volumeSetId,
        volumeSetName: this.agent.volumeSetName,
        volumes: this.agent.volumeInfo(),
        seqNext: this.spool.seqNextExpected,
      };
      sendFrame(socket, hello);
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
        for (const frame of reader.push(chunk)) this.onMessage(frame.message, frame.payload);
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

  /** Failing to get in at all (wrong certificate, nothing listening, a reset during the TLS handshake) is logged once per distinct reason, not once per retry. */
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
    this.inFlight.clear();
    clearInterval(this.statusTimer);
    if (this.stopped) return;
    this.reconnectTimer = setTimeout(() => this.connect(), this.backoffMs);
    this.backoffMs = Math.min(BACKOFF_MS_MAX, this.backoffMs * 2);
  }

  private reply(message: Message): void {
    if (this.socket && !this.socket.destroyed) sendFrame(this.socket, message);
  }

  private onMessage(message: Message, payload: Buffer): void {
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
        void this.acked(message.segmentCommitted, message.seqCommitted).then(() => this.kick());
        this.sendStatus();
        this.statusTimer = setInterval(() => this.sendStatus(), STATUS_INTERVAL_MS);
        return;
      case 'ack':
        this.inFlight.delete(message.index);
        this.busy = undefined;
        this.busyRetryMs = 250;
        void this.acked(message.index, message.seqLast).then(() => this.kick());
        return;
      case 'refused':
        this.inFlight.clear();
        if (message.code === 'REWIND_BUSY') {
          // Backpressure (the manager's disk is full): keep the segment, resend later.
          if (this.busy === undefined) this.log('warn', `manager busy: ${message.message}`);
          this.busy = message.message;
          clearTimeout(this.busyTimer);
          this.busyTimer = setTimeout(() => this.kick(), this.busyRetryMs);
          this.busyRetryMs = Math.min(BACKOFF_MS_MAX, this.busyRetryMs * 2);
          return;
        }
        this.refusal = `segment ${message.index} refused by the manager: ${message.code}: ${message.message}`;
        this.log('error', this.refusal);
        return; // keep the segment; shipping waits for an operator (it is never deleted here)
      case 'seal':
        void this.agent.seal().then((seqLast) => {
          if (this.socket) sendFrame(this.socket, { type: 'sealed', id: message.id, seqLast });
          this.kick();
        });
        return;
      case 'restore-begin':
        this.agent.restoreBegin(message.id, message.volumes).then(
          (seqLast) => this.reply({ type: 'restore-ready', id: message.id, seqLast }),
          (error: unknown) =>
            this.reply({ type: 'restore-failed', id: message.id, message: errorMessage(error) }),
        );
        return;
      case 'restore-write':
        try {
          this.agent.restoreWrite(
            message.volume,
            message.offset,
            message.length,
            message.zero ? undefined : payload,
            (errno) =>
              this.reply({ type: 'restore-written', id: message.id, chunk: message.chunk, errno }),
          );
        } catch (error) {
          rethrowIfBug(error);
          this.reply({ type: 'restore-failed', id: message.id, message: errorMessage(error) });
        }
        return;
      case 'restore-end':
        this.agent.restoreEnd(message.id, message.abandon).then(
          (seqLast) => {
            this.reply({ type: 'restore-done', id: message.id, seqLast });
            this.kick();
          },
          (error: unknown) =>
            this.reply({ type: 'restore-failed', id: message.id, message: errorMessage(error) }),
        );
        return;
      case 'error':
        this.log('error', `manager refused the connection: ${message.code}: ${message.message}`);
        this.refusal = `${message.code}: ${message.message}`;
        return;
      default:
        this.log('warn', `unexpected message from manager: ${message.type}`);
    }
  }

  private async acked(index: number, seqLast: number): Promise<void> {
    try {
      await this.agent.committed(index, seqLast);
    } catch (error) {
      rethrowIfBug(error);
      this.log(
        'error',
        `cleaning up after commit of segment ${index} failed: ${errorMessage(error)}`,
      );
    }
  }

  /** Sends the next sealed segments, up to the window. */
  kick(): void {
    const socket = this.socket;
    if (!socket || !this.welcomed || this.refusal) return;
    const toSend = this.spool.sealed.filter(
      (s) => !this.inFlight.has(s.index) && s.index > this.highestInFlight(),
    );
    for (const segment of toSend) {
      if (this.inFlight.size >= WINDOW_SEGMENTS_MAX) break;
      this.inFlight.add(segment.index);
      // Sends are chained: segments must reach the manager in index order, whatever order
      // the file reads finish in (the manager refuses a gap).
      this.sendChain = this.sendChain.then(() => this.send(socket, segment));
    }
  }

  private highestInFlight(): number {
    let max = 0;
    for (const index of this.inFlight) max = Math.max(max, index);
    return max;
  }

  private async send(socket: net.Socket, segment: SealedSegment): Promise<void> {
    if (this.target.localFiles) {
      sendFrame(socket, {
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
      sendFrame(
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

  private sendStatus(): void {
    if (!this.socket || !this.welcomed) return;
    const status = this.agent.status();
    const failure =
      this.refusal ?? status.failure ?? (this.busy ? `manager busy: ${this.busy}` : undefined);
    sendFrame(this.socket, {
      type: 'status',
      seqCaptured: status.seqCaptured,
      timeCapturedNs: status.timeCapturedNs.toString(),
      spoolBytes: status.spoolBytes,
      sealedPending: status.sealedPending,
      mode: status.mode,
      ...(failure ? { failure } : {}),
      ...(status.restoring ? { restoring: status.restoring } : {}),
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
