// One client connection: parses the byte stream through the handshake and transmission phases,
// upgrades it to TLS on STARTTLS, dispatches requests to the export backend, bounds in-flight work,
// and writes replies batched per event-loop turn. Anything the network sends is handled here
// without throwing.
import type { Socket } from 'node:net';
import { assert, assertNever, type LogFunction, type LogLevel } from '../core/index.js';
import { describePeer, type AccessPolicy, type Peer, type TlsMode } from './access.js';
import { NbdErrno, type BlockStatusExtent, type ExportRegistry } from './backend.js';
import { ByteQueue } from './byte-queue.js';
import {
  Handshake,
  clientFlagsRefusal,
  clientFlagsValid,
  type OptionOutcome,
} from './handshake.js';
import {
  CLIENT_FLAGS_BYTES,
  Command,
  CommandFlag,
  EXTENTS_MAX,
  OPTION_HEADER_BYTES,
  OPTION_MAGIC,
  Option,
  PAYLOAD_BYTES_NOT_DOS,
  REQUEST_HEADER_BYTES,
  commandName,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeGreeting,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  encodeSimpleReplyAt,
  optionName,
  SIMPLE_REPLY_BYTES,
  type BlockSizes,
  type CommandType,
} from './protocol.js';
import {
  cookieOf,
  decodeRequestHeader,
  shapeExtents,
  validateRequest,
  wireErrno,
  type Rejection,
  type Request,
  type Session,
} from './transmission.js';

export type { LogFunction, LogLevel } from '../core/index.js';

export interface ConnectionLimits {
  maxPayloadBytes: number;
  maxOptions: number;
  maxOptionDataBytes: number;
  inflightBytesMax: number;
  handshakeTimeoutMs: number;
}

/** The outcome of a TLS handshake; exactly one of the two runs. */
export interface TlsHandshakeDone {
  secure(socket: Socket, peer: Peer, details: { protocol: string; cipher: string }): void;
  failed(reason: string): void;
}

/** What a connection needs from its server. */
export interface ConnectionHost {
  readonly registry: ExportRegistry;
  readonly limits: ConnectionLimits;
  readonly blockSizes: BlockSizes;
  readonly log: LogFunction;
  readonly tlsMode: TlsMode;
  readonly access: AccessPolicy;
  isShuttingDown(): boolean;
  /** Runs the server side of a TLS handshake on `socket`, whose STARTTLS ACK has been sent. */
  startTls(socket: Socket, done: TlsHandshakeDone): void;
  onTransmission(connection: Connection): void;
  onClosed(connection: Connection): void;
}

/** Requests in flight per connection, whatever their size (kernel queue depth is 128). */
export const INFLIGHT_REQUESTS_MAX = 4096;
/** Accounting cost of a request on top of its payload, so tiny requests are bounded too. */
const REQUEST_OVERHEAD_BYTES = 256;
/**
 * A rejected or oversized WRITE payload up to this size is read and discarded (no allocation) and
 * answered with an error; beyond it the stream is treated as a denial of service and closed. The
 * spec says payloads up to 2^25 bytes SHOULD NOT be treated as such; fio sends up to 64 MiB.
 */
export const WRITE_DRAIN_BYTES_MAX = 4 * PAYLOAD_BYTES_NOT_DOS;
/**
 * Successful simple replies (every write, flush, trim, zero) are encoded into shared buffers of
 * this size (128 replies), so a batch's replies leave as one buffer, not one per reply.
 */
const REPLY_BUFFER_BYTES = 128 * SIMPLE_REPLY_BYTES;
/** How long a gracefully ending connection may take to flush its last replies. */
const END_LINGER_MS = 30_000;
/** Oversized option data up to this size is skipped and answered ERR_TOO_BIG; beyond it, close. */
export const OPTION_DRAIN_BYTES_MAX = PAYLOAD_BYTES_NOT_DOS;

type Phase =
  | { kind: 'clientFlags' }
  | { kind: 'optionHeader' }
  | { kind: 'optionData'; option: number; lengthBytes: number }
  | { kind: 'optionDrain'; option: number; remainingBytes: number }
  | { kind: 'requestHeader' }
  | { kind: 'writePayload'; request: Request }
  | { kind: 'writeDrain'; request: Request; rejection: Rejection; remainingBytes: number }
  /** STARTTLS acknowledged: the TLS handshake owns the socket until it ends. */
  | { kind: 'tls' }
  | { kind: 'closing' };

/** Commands that reach the backend (DISC is handled inline, CACHE is never advertised). */
type DispatchedCommand = Exclude<CommandType, typeof Command.DISC | typeof Command.CACHE>;

/** One request handed to the backend; its callback must run exactly once. */
class Pending {
  completed = false;
  constructor(
    readonly request: Request,
    readonly costBytes: number,
  ) {}
}

const QUIET_SOCKET_ERRORS = new Set(['EPIPE', 'ECONNRESET', 'ETIMEDOUT', 'ECONNABORTED']);

export class Connection {
  private readonly queue = new ByteQueue();
  private phase: Phase = { kind: 'clientFlags' };
  /** The plain socket, then the TLS socket over it once STARTTLS succeeded. */
  private socket: Socket;
  private clientFlags = 0;
  private peer: Peer = { kind: 'plain' };
  private handshake: Handshake | undefined;
  private session: Session | undefined;
  private optionCount = 0;
  private inflightCount = 0;
  private inflightBytes = 0;
  private readingPaused = false;
  private pumping = false;
  /** Replies queued and not yet written, in completion order. */
  private outgoing: Buffer[] = [];
  private flushScheduled = false;
  private microtaskFlushQueued = false;
  /** Simple replies are encoded here; [gatheredStart, gatheredEnd) is not queued yet. */
  private gathered: Buffer | undefined;
  private gatheredStart = 0;
  private gatheredEnd = 0;
  private disconnectRequested = false;
  private ended = false;
  private closed = false;
  private readonly limits: ConnectionLimits;
  private readonly listeners = {
    data: (chunk: Buffer): void => this.onData(chunk),
    drain: (): void => this.maybeResume(),
    timeout: (): void => this.onTimeout(),
    error: (error: NodeJS.ErrnoException): void => this.onSocketError(error),
    close: (): void => this.onClose(),
  };

  /** `remote` names the peer in logs (`ADDRESS:PORT`, or the Unix socket's path). */
  constructor(
    socket: Socket,
    private readonly host: ConnectionHost,
    private readonly remote: string,
  ) {
    this.socket = socket;
    this.limits = host.limits;
    socket.setNoDelay(true);
    socket.setTimeout(this.limits.handshakeTimeoutMs);
    this.attach(socket);
    this.send([encodeGreeting()]);
  }

  /** Name of the export once in transmission, else undefined. */
  get exportName(): string | undefined {
    return this.session?.backend.name;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Server shutdown: handshakes end now; transmissions finish in-flight requests first. */
  shutdown(): void {
    if (this.session === undefined) {
      this.hardClose('server shutting down', 'info');
      return;
    }
    this.maybeEnd();
  }

  /** Drops the connection at once (export removed); late backend callbacks are ignored. */
  destroy(reason: string): void {
    this.hardClose(reason, 'info');
  }

  // ---- reading -------------------------------------------------------------------------------

  private onData(chunk: Buffer): void {
    if (this.phase.kind === 'closing') return;
    this.queue.push(chunk);
    this.pump();
  }

  /** Parses as far as the queued bytes allow. Re-entrant calls (from sync callbacks) are no-ops. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (!this.closed && this.step()) {
        // Each step consumes one message (or part of a payload being drained).
      }
    } finally {
      this.pumping = false;
    }
  }

  /** One parsing step; false when more bytes are needed or reading must wait. */
  private step(): boolean {
    const phase = this.phase;
    switch (phase.kind) {
      case 'clientFlags':
        return this.readClientFlags();
      case 'optionHeader':
        return this.readOptionHeader();
      case 'optionData':
        return this.readOptionData(phase.option, phase.lengthBytes);
      case 'optionDrain':
        return this.drainOption(phase);
      case 'requestHeader':
        return this.readRequestHeader();
      case 'writePayload':
        return this.readWritePayload(phase.request);
      case 'writeDrain':
        return this.drainWrite(phase);
      case 'tls':
        return false;
      case 'closing':
        this.queue.clear();
        return false;
      default:
        return assertNever(phase, 'connection phase');
    }
  }

  private readClientFlags(): boolean {
    if (this.queue.lengthBytes < CLIENT_FLAGS_BYTES) return false;
    const clientFlags = this.queue.take(CLIENT_FLAGS_BYTES).readUInt32BE(0);
    if (!clientFlagsValid(clientFlags)) {
      this.hardClose('client sent unknown handshake flags', 'warn', { clientFlags });
      return false;
    }
    const refusal = clientFlagsRefusal(clientFlags, this.host.tlsMode);
    if (refusal !== null) {
      this.hardClose(refusal, 'warn', { clientFlags });
      return false;
    }
    this.clientFlags = clientFlags;
    this.handshake = this.newHandshake();
    this.phase = { kind: 'optionHeader' };
    return true;
  }

  /** A fresh negotiation: at the start, and again after STARTTLS (no state crosses it). */
  private newHandshake(): Handshake {
    return new Handshake(
      {
        registry: this.host.registry,
        blockSizes: this.host.blockSizes,
        maxPayloadBytes: this.limits.maxPayloadBytes,
        tlsMode: this.host.tlsMode,
        access: this.host.access,
        peer: this.peer,
        isShuttingDown: () => this.host.isShuttingDown(),
      },
      this.clientFlags,
    );
  }

  private readOptionHeader(): boolean {
    if (this.queue.lengthBytes < OPTION_HEADER_BYTES) return false;
    const header = this.queue.take(OPTION_HEADER_BYTES);
    if (header.readBigUInt64BE(0) !== OPTION_MAGIC) {
      this.hardClose('bad option magic');
      return false;
    }
    this.optionCount += 1;
    if (this.optionCount > this.limits.maxOptions) {
      this.hardClose('too many options', 'warn', { maxOptions: this.limits.maxOptions });
      return false;
    }
    const option = header.readUInt32BE(8);
    const lengthBytes = header.readUInt32BE(12);
    if (lengthBytes <= this.limits.maxOptionDataBytes) {
      this.phase = { kind: 'optionData', option, lengthBytes };
      return true;
    }
    // EXPORT_NAME cannot be answered with an error, so an oversized one can only close.
    if (option === Option.EXPORT_NAME || lengthBytes > OPTION_DRAIN_BYTES_MAX) {
      this.hardClose('option data too long', 'warn', { option: optionName(option), lengthBytes });
      return false;
    }
    this.phase = { kind: 'optionDrain', option, remainingBytes: lengthBytes };
    return true;
  }

  private readOptionData(option: number, lengthBytes: number): boolean {
    if (this.queue.lengthBytes < lengthBytes) return false;
    const data = this.queue.take(lengthBytes);
    this.applyOutcome(this.requireHandshake().handleOption(option, data));
    return true;
  }

  private drainOption(phase: Extract<Phase, { kind: 'optionDrain' }>): boolean {
    phase.remainingBytes -= this.queue.skip(phase.remainingBytes);
    if (phase.remainingBytes > 0) return false;
    this.applyOutcome(this.requireHandshake().tooBig(phase.option));
    return true;
  }

  private requireHandshake(): Handshake {
    assert(this.handshake !== undefined, 'option before client flags');
    return this.handshake;
  }

  private applyOutcome(outcome: OptionOutcome): void {
    switch (outcome.kind) {
      case 'continue':
        this.send(outcome.replies);
        this.phase = { kind: 'optionHeader' };
        return;
      case 'abort':
        this.send(outcome.replies);
        this.endGracefully();
        return;
      case 'close':
        this.hardClose(outcome.reason);
        return;
      case 'starttls':
        this.beginTls(outcome.replies);
        return;
      case 'transmission':
        this.send(outcome.replies);
        this.enterTransmission(outcome.session);
        return;
      default:
        assertNever(outcome, 'option outcome');
    }
  }

  // ---- TLS -----------------------------------------------------------------------------------

  /**
   * Sends the STARTTLS ACK in plain text and hands the socket to the TLS handshake once the ACK
   * is out. Bytes already read behind STARTTLS belong to the TLS handshake and are given back.
   */
  private beginTls(replies: Buffer[]): void {
    const plain = this.socket;
    this.phase = { kind: 'tls' };
    plain.pause();
    plain.off('data', this.listeners.data);
    plain.off('drain', this.listeners.drain);
    plain.off('timeout', this.listeners.timeout);
    plain.setTimeout(0); // the TLS handshake has its own timeout
    if (this.queue.lengthBytes > 0) plain.unshift(this.queue.take(this.queue.lengthBytes));
    this.queue.clear();
    this.flushReplies(); // replies queued before STARTTLS go out in plain text, in order
    plain.write(Buffer.concat(replies), (error) => {
      if (this.closed) return;
      if (error) {
        this.tlsFailed(`the STARTTLS reply could not be sent: ${error.message}`);
        return;
      }
      this.host.startTls(plain, {
        secure: (socket, peer, details) => this.onTlsSecure(plain, socket, peer, details),
        failed: (reason) => this.tlsFailed(reason),
      });
    });
  }

  private onTlsSecure(
    plain: Socket,
    socket: Socket,
    peer: Peer,
    details: { protocol: string; cipher: string },
  ): void {
    if (this.closed) {
      socket.destroy();
      return;
    }
    assert(this.phase.kind === 'tls', 'TLS secured outside the TLS phase');
    // From here on the TLS socket is the connection; the plain one only reports its own end.
    plain.off('close', this.listeners.close);
    this.socket = socket;
    this.peer = peer;
    socket.setTimeout(this.limits.handshakeTimeoutMs);
    this.attach(socket);
    this.handshake = this.newHandshake();
    this.phase = { kind: 'optionHeader' };
    this.host.log('info', 'nbd client started TLS', {
      remote: this.remote,
      peer: describePeer(peer),
      ...details,
    });
    this.pump();
  }

  private tlsFailed(reason: string): void {
    if (this.closed) return;
    this.host.log('warn', `nbd TLS handshake failed: ${reason}`, { remote: this.remote });
    this.phase = { kind: 'closing' };
    this.socket.destroy();
    // The TLS layer owns the plain socket now and may not report its close: end it here.
    this.onClose();
  }

  private attach(socket: Socket): void {
    socket.on('data', this.listeners.data);
    socket.on('drain', this.listeners.drain);
    socket.on('timeout', this.listeners.timeout);
    socket.on('error', this.listeners.error);
    socket.on('close', this.listeners.close);
  }

  private enterTransmission(session: Session): void {
    this.session = session;
    this.socket.setTimeout(0);
    this.phase = { kind: 'requestHeader' };
    this.host.onTransmission(this);
    this.host.log('info', 'nbd client entered transmission', {
      remote: this.remote,
      peer: describePeer(this.peer),
      export: session.backend.name,
      structuredReplies: session.structuredReplies,
      baseAllocation: session.allocationContextId !== undefined,
    });
  }

  private readRequestHeader(): boolean {
    if (this.overLimit()) {
      this.pauseReading();
      return false;
    }
    if (this.queue.lengthBytes < REQUEST_HEADER_BYTES) return false;
    const request = decodeRequestHeader(this.queue.take(REQUEST_HEADER_BYTES));
    if (!request) {
      this.hardClose('bad request magic');
      return false;
    }
    this.startRequest(request);
    return true;
  }

  private startRequest(request: Request): void {
    const session = this.requireSession();
    if (request.type === Command.DISC) {
      // No reply; the client sends nothing more. Close once in-flight requests are answered.
      this.disconnectRequested = true;
      this.phase = { kind: 'closing' };
      this.maybeEnd();
      return;
    }
    const rejection = this.host.isShuttingDown()
      ? { errno: NbdErrno.ESHUTDOWN, message: 'server is shutting down' }
      : validateRequest(request, session);
    if (request.type === Command.WRITE) {
      this.startWrite(request, rejection);
      return;
    }
    if (rejection) {
      this.replyError(request, rejection);
      return;
    }
    this.dispatch(request, undefined);
  }

  /** A WRITE's payload is always consumed: read for the backend, or drained when rejected. */
  private startWrite(request: Request, rejection: Rejection | undefined): void {
    if (rejection === undefined) {
      this.phase = { kind: 'writePayload', request };
      return;
    }
    if (request.lengthBytes > WRITE_DRAIN_BYTES_MAX) {
      this.hardClose('write payload too large to drain', 'warn', {
        lengthBytes: request.lengthBytes,
      });
      return;
    }
    this.phase = { kind: 'writeDrain', request, rejection, remainingBytes: request.lengthBytes };
  }

  private readWritePayload(request: Request): boolean {
    if (this.queue.lengthBytes < request.lengthBytes) return false;
    this.phase = { kind: 'requestHeader' };
    // A payload spread over several socket reads goes to a backend that takes pieces as those
    // pieces: joining a 1 MiB write copies it (and faults in a fresh MiB) on the event loop.
    const backend = this.requireSession().backend;
    if (backend.writePieces !== undefined && !this.queue.contiguous(request.lengthBytes)) {
      this.dispatchPieces(request, this.queue.takePieces(request.lengthBytes));
      return true;
    }
    this.dispatch(request, this.queue.take(request.lengthBytes));
    return true;
  }

  private drainWrite(phase: Extract<Phase, { kind: 'writeDrain' }>): boolean {
    phase.remainingBytes -= this.queue.skip(phase.remainingBytes);
    if (phase.remainingBytes > 0) return false;
    this.phase = { kind: 'requestHeader' };
    this.replyError(phase.request, phase.rejection);
    return true;
  }

  private requireSession(): Session {
    assert(this.session !== undefined, 'request before transmission');
    return this.session;
  }

  // ---- dispatch ------------------------------------------------------------------------------

  private dispatch(request: Request, payload: Buffer | undefined): void {
    const backend = this.requireSession().backend;
    const offsetBytes = request.offsetBytes;
    assert(offsetBytes !== undefined, 'dispatching an unvalidated offset');
    const carriesData = request.type === Command.READ || request.type === Command.WRITE;
    const pending = new Pending(
      request,
      REQUEST_OVERHEAD_BYTES + (carriesData ? request.lengthBytes : 0),
    );
    this.inflightCount += 1;
    this.inflightBytes += pending.costBytes;
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    const done = (errno: number): void => this.onDone(pending, errno);
    const type = request.type as DispatchedCommand;
    switch (type) {
      case Command.READ:
        backend.read(offsetBytes, request.lengthBytes, (errno, data) =>
          this.onReadDone(pending, errno, data),
        );
        return;
      case Command.WRITE:
        assert(
          payload !== undefined && payload.length === request.lengthBytes,
          'write payload missing',
        );
        backend.write(offsetBytes, payload, fua, done);
        return;
      case Command.FLUSH:
        backend.flush(done);
        return;
      case Command.TRIM:
        backend.trim(offsetBytes, request.lengthBytes, fua, done);
        return;
      case Command.WRITE_ZEROES:
        backend.writeZeroes(offsetBytes, request.lengthBytes, fua, done);
        return;
      case Command.BLOCK_STATUS:
        backend.blockStatus(offsetBytes, request.lengthBytes, (errno, extents) =>
          this.onBlockStatusDone(pending, errno, extents),
        );
        return;
      default:
        assertNever(type, 'dispatched command');
    }
  }

  /** A WRITE whose payload is in pieces, to a backend that takes them (see readWritePayload). */
  private dispatchPieces(request: Request, pieces: readonly Buffer[]): void {
    const backend = this.requireSession().backend;
    const offsetBytes = request.offsetBytes;
    assert(offsetBytes !== undefined, 'dispatching an unvalidated offset');
    assert(backend.writePieces !== undefined, 'pieces only for a backend that takes them');
    const pending = new Pending(request, REQUEST_OVERHEAD_BYTES + request.lengthBytes);
    this.inflightCount += 1;
    this.inflightBytes += pending.costBytes;
    const fua = (request.flags & CommandFlag.FUA) !== 0;
    backend.writePieces(offsetBytes, pieces, fua, (errno) => this.onDone(pending, errno));
  }

  /** Marks a request complete; a second call is a backend bug. */
  private complete(pending: Pending): void {
    if (pending.completed)
      assert(false, `backend completed ${commandName(pending.request.type)} twice`);
    pending.completed = true;
    this.inflightCount -= 1;
    this.inflightBytes -= pending.costBytes;
    assert(this.inflightCount >= 0 && this.inflightBytes >= 0, 'in-flight accounting broken');
  }

  private onDone(pending: Pending, errno: number): void {
    this.complete(pending);
    const request = pending.request;
    if (errno === 0) {
      this.queueSimpleReply(request);
    } else {
      this.replyError(request, this.backendRejection(request, errno));
    }
    this.afterCompletion();
  }

  private onReadDone(
    pending: Pending,
    errno: number,
    data: Buffer | readonly Buffer[] | undefined,
  ): void {
    this.complete(pending);
    const request = pending.request;
    if (errno !== 0) {
      this.replyError(request, this.backendRejection(request, errno));
    } else {
      this.replyRead(request, data);
    }
    this.afterCompletion();
  }

  private onBlockStatusDone(
    pending: Pending,
    errno: number,
    extents: readonly BlockStatusExtent[] | undefined,
  ): void {
    this.complete(pending);
    const request = pending.request;
    if (errno !== 0) {
      this.replyError(request, this.backendRejection(request, errno));
    } else {
      this.replyBlockStatus(request, extents);
    }
    this.afterCompletion();
  }

  private backendRejection(request: Request, errno: number): Rejection {
    const sent = wireErrno(errno);
    if (sent !== errno) {
      this.host.log('warn', 'backend answered a non-NBD errno; sending EIO', {
        remote: this.remote,
        command: commandName(request.type),
        errno,
      });
    }
    return { errno: sent, message: `${commandName(request.type)} failed` };
  }

  // ---- replies -------------------------------------------------------------------------------

  /** Errors never carry data; with structured replies they are ERROR chunks with a message. */
  private replyError(request: Request, rejection: Rejection): void {
    assert(rejection.errno !== 0, 'error reply with errno 0');
    if (this.session?.structuredReplies === true) {
      this.send([encodeErrorChunk(cookieOf(request), rejection.errno, rejection.message)]);
    } else {
      this.send([encodeSimpleReply(rejection.errno, cookieOf(request))]);
    }
  }

  private replyRead(request: Request, data: Buffer | readonly Buffer[] | undefined): void {
    assert(data !== undefined, 'read succeeded without data');
    const buffers: readonly Buffer[] = Buffer.isBuffer(data) ? [data] : data;
    let totalBytes = 0;
    for (const buffer of buffers) totalBytes += buffer.length;
    assert(totalBytes === request.lengthBytes, 'backend read returned the wrong length');
    const offsetBytes = request.offsetBytes;
    assert(offsetBytes !== undefined, 'read reply for an unvalidated offset');
    const header = this.requireSession().structuredReplies
      ? encodeOffsetDataHeader(cookieOf(request), offsetBytes, totalBytes)
      : encodeSimpleReply(0, cookieOf(request));
    this.send([header, ...buffers]);
  }

  private replyBlockStatus(
    request: Request,
    extents: readonly BlockStatusExtent[] | undefined,
  ): void {
    assert(extents !== undefined, 'block status succeeded without extents');
    const session = this.requireSession();
    assert(session.allocationContextId !== undefined, 'block status without a context');
    // Each extent is 8 bytes; keep the chunk within the maximum payload as well as the spec cap.
    const extentsMax = Math.max(
      1,
      Math.min(EXTENTS_MAX, Math.floor((session.maxPayloadBytes - 4) / 8)),
    );
    const reqOne = (request.flags & CommandFlag.REQ_ONE) !== 0;
    const shaped = shapeExtents(extents, request.lengthBytes, reqOne, extentsMax);
    this.send([encodeBlockStatusChunk(cookieOf(request), session.allocationContextId, shaped)]);
  }

  /**
   * Queues one reply's buffers back to back behind every reply queued before it, so replies leave
   * in the order they completed and one reply's buffers are never split by another's. Queued
   * replies go out together when this event-loop turn's callbacks are done (setImmediate), or
   * sooner when a batch of writes is answered (queueSimpleReply).
   */
  private send(buffers: readonly Buffer[]): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    this.takeGathered();
    for (const buffer of buffers) this.outgoing.push(buffer);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flushReplies());
    }
  }

  /**
   * A successful simple reply (write, flush, trim, zero), encoded into a shared buffer with its
   * neighbours. The backend answers a batch of writes in one synchronous loop, so a microtask
   * queued by the first reply runs once the loop is over and sends the batch's replies in one
   * socket write, without waiting for the next event-loop turn.
   */
  private queueSimpleReply(request: Request): void {
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (this.gathered === undefined || this.gatheredEnd === this.gathered.length) {
      this.takeGathered();
      this.gathered = Buffer.allocUnsafe(REPLY_BUFFER_BYTES);
      this.gatheredStart = 0;
      this.gatheredEnd = 0;
    }
    encodeSimpleReplyAt(this.gathered, this.gatheredEnd, 0, request.cookieHigh, request.cookieLow);
    this.gatheredEnd += SIMPLE_REPLY_BYTES;
    if (!this.microtaskFlushQueued) {
      this.microtaskFlushQueued = true;
      queueMicrotask(() => this.flushReplies());
    }
  }

  /** Moves the simple replies gathered so far to the outgoing queue, as one buffer. */
  private takeGathered(): void {
    if (this.gathered === undefined || this.gatheredEnd === this.gatheredStart) return;
    this.outgoing.push(this.gathered.subarray(this.gatheredStart, this.gatheredEnd));
    this.gatheredStart = this.gatheredEnd;
  }

  /** Writes every queued reply, in order; several buffers go out as one writev. */
  private flushReplies(): void {
    this.microtaskFlushQueued = false;
    this.flushScheduled = false;
    this.takeGathered();
    const outgoing = this.outgoing;
    if (outgoing.length === 0) return;
    this.outgoing = [];
    if (this.socket.destroyed || this.socket.writableEnded) return;
    if (outgoing.length === 1) {
      this.socket.write(outgoing[0] as Buffer);
      return;
    }
    this.socket.cork();
    for (const buffer of outgoing) this.socket.write(buffer);
    this.socket.uncork();
  }

  // ---- flow control and closing -------------------------------------------------------------

  private overLimit(): boolean {
    if (this.inflightCount >= INFLIGHT_REQUESTS_MAX) return true;
    return this.inflightBytes + this.socket.writableLength > this.limits.inflightBytesMax;
  }

  private pauseReading(): void {
    if (this.readingPaused) return;
    this.readingPaused = true;
    this.socket.pause();
  }

  private maybeResume(): void {
    if (!this.readingPaused || this.closed || this.overLimit()) return;
    this.readingPaused = false;
    this.socket.resume();
    this.pump();
  }

  private afterCompletion(): void {
    if (this.closed) return;
    this.maybeEnd();
    this.maybeResume();
  }

  /** After DISC, or on server shutdown, closes once nothing is in flight. */
  private maybeEnd(): void {
    if (this.closed || this.ended || this.inflightCount > 0) return;
    if (this.disconnectRequested || this.host.isShuttingDown()) this.endGracefully();
  }

  /** Flushes pending replies, then closes. */
  private endGracefully(): void {
    if (this.ended || this.closed) return;
    this.ended = true;
    this.phase = { kind: 'closing' };
    this.queue.clear();
    this.flushReplies();
    // A peer that never reads its last replies must not keep the socket forever.
    this.socket.setTimeout(END_LINGER_MS);
    this.socket.end(() => this.socket.destroy());
  }

  private hardClose(reason: string, level: LogLevel = 'warn', fields: object = {}): void {
    if (this.closed) return;
    if (this.socket.destroyed) {
      if (this.phase.kind === 'tls') this.onClose(); // the TLS layer ended it and may not say so
      return;
    }
    this.host.log(level, `nbd connection closed: ${reason}`, {
      remote: this.remote,
      export: this.exportName,
      ...fields,
    });
    const duringTls = this.phase.kind === 'tls';
    this.phase = { kind: 'closing' };
    this.queue.clear();
    this.socket.destroy();
    // During a TLS handshake the plain socket may not report its close (the TLS layer owns it).
    if (duringTls) this.onClose();
  }

  private onTimeout(): void {
    if (this.ended) this.hardClose('peer did not take its last replies', 'info');
    else if (this.session === undefined) this.hardClose('handshake timed out', 'info');
  }

  private onSocketError(error: NodeJS.ErrnoException): void {
    const level: LogLevel =
      error.code !== undefined && QUIET_SOCKET_ERRORS.has(error.code) ? 'info' : 'warn';
    this.host.log(level, 'nbd socket error', {
      remote: this.remote,
      export: this.exportName,
      code: error.code,
      error: error.message,
    });
  }

  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.phase = { kind: 'closing' };
    this.queue.clear();
    this.host.onClosed(this);
  }
}
