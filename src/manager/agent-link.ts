// The manager's end of the agent link: listens, authenticates each connection's hello (constant
// time, slower after each failure), keeps the one live agent session, turns its frames into
// segment arrivals for the transaction pipeline and sends back how each turn ended, and carries
// the manager's requests to the agent (seal, the production-restore commands) as typed calls
// matched to their replies.
import fsp from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import tls from 'node:tls';
import {
  assertNever,
  errorMessage,
  RewindError,
  rethrowIfBug,
  type LogFunction,
} from '../core/index.js';
import { parseSegmentFileName } from '../log/index.js';
import {
  FRAME_BYTES_MAX_UNAUTHENTICATED,
  FrameReader,
  isAgentMessage,
  PROTOCOL_VERSION,
  sendFrame,
  tokensEqual,
  type AgentMessage,
  type ManagerMessage,
  type RestoringState,
} from '../ship/index.js';
import { parseArrival, type Arrival, type SegmentOutcome } from './transactions.js';

const HELLO_TIMEOUT_MS = 10_000;
/** Each failed hello delays the refusal by this much more, up to the maximum. */
const AUTH_DELAY_MS_STEP = 100;
const AUTH_DELAY_MS_MAX = 5000;

/** What the agent last reported about itself (every 250 ms while connected). */
export interface AgentStatus {
  seqCaptured: number;
  timeCapturedNs: bigint;
  spoolBytes: number;
  sealedPending: number;
  mode: string;
  failure: string | undefined;
  restoring: RestoringState | undefined;
  receivedAtMs: number;
  /** Per volume index, the client writes the agent has logged since it started, and their bytes. */
  captured: readonly { writes: number; bytes: number }[] | undefined;
  /** Per volume index, NBD clients connected to the production export (undefined: not told). */
  clients: readonly number[] | undefined;
}

type Hello = Extract<AgentMessage, { type: 'hello' }>;

/** What the link needs from the rest of the manager. */
export interface LinkHost {
  /** Checks the agent's volume set and volumes (adopting them the first time); throws to refuse. */
  adoptVolumeSet(hello: Hello): void;
  /** The committed position, for the welcome. */
  committed(): { idx: number; seq: number };
  /**
   * The agent says this manager lost history: a resync starts at `segmentFirst`/`seqFirst` after
   * the committed position. Throws a RewindError when that is not a gap after it.
   */
  expectGap(gap: { segmentFirst: number; seqFirst: number }): void;
  volumeCount(): number;
  /** A segment copy for its turn; resolves how the turn ended. */
  receive(arriving: Promise<Arrival>): Promise<SegmentOutcome>;
  /** An agent session began (interrupted production restores run again). */
  onAgentConnected(): void;
}

export interface AgentLinkOptions {
  token: string;
  tls?: { cert: string | Buffer; key: string | Buffer };
  log: LogFunction;
  /**
   * `rewind up`: the spool directory of the agent in this process. Segments it names are read
   * from there and linked into the redo directory rather than sent over the link and copied.
   */
  localSpoolDir?: string;
  host: LinkHost;
}

/** A request to the agent whose session ended before its reply: it is sent again later. */
export class LinkLostError extends RewindError {
  override name = 'LinkLostError';
  constructor(reason: string) {
    super('REWIND_BUSY', reason, { hint: 'the request runs again when the agent is back' });
  }
}

interface Waiter<T> {
  resolve: (value: T) => void;
  reject: (error: Error) => void;
}

/** The replies awaited for one production restore, by kind (and by chunk for writes). */
interface RestoreCalls {
  ready: Waiter<number> | undefined;
  done: Waiter<number> | undefined;
  written: Map<number, Waiter<number>>;
}

export class AgentLink {
  private readonly options: AgentLinkOptions;
  private readonly host: LinkHost;
  private server: net.Server | undefined;
  /** Every agent connection, authenticated or not (closed on shutdown). */
  private readonly sockets = new Set<net.Socket>();
  /** The authenticated agent session (a reconnecting agent replaces it). */
  private session: net.Socket | undefined;
  private authFailures = 0;
  private status: AgentStatus | undefined;
  private sealId = 0;
  private readonly sealWaiters = new Map<number, Waiter<number>>();
  private readonly restoreCalls = new Map<number, RestoreCalls>();

  constructor(options: AgentLinkOptions) {
    this.options = options;
    this.host = options.host;
  }

  get connected(): boolean {
    return this.session !== undefined;
  }

  get agentStatus(): AgentStatus | undefined {
    return this.status;
  }

  async listen(host: string, port: number): Promise<{ host: string; port: number }> {
    const handler = (socket: net.Socket): void => this.accept(socket);
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

  /** Serves one agent connection (from listen(), or a simulated link in the simulation). */
  accept(socket: net.Socket): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    socket.setNoDelay(true);
    const reader = new FrameReader(FRAME_BYTES_MAX_UNAUTHENTICATED);
    let authenticated = false;
    const helloTimer = setTimeout(() => socket.destroy(), HELLO_TIMEOUT_MS);
    socket.on('error', (error) => this.options.log('info', `agent connection: ${error.message}`));
    socket.on('close', () => {
      clearTimeout(helloTimer);
      if (this.session === socket) this.sessionLost('the link to the agent was lost');
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
        if (!isAgentMessage(message)) {
          this.options.log('warn', `agent sent a manager's message: ${message.type}`);
          socket.destroy();
          return;
        }
        if (!authenticated) {
          clearTimeout(helloTimer);
          authenticated = this.onHello(socket, message);
          if (!authenticated) return;
          reader.raise();
          continue;
        }
        this.onMessage(socket, message, payload);
      }
    });
  }

  private send(socket: net.Socket, message: ManagerMessage, payload?: Buffer): boolean {
    if (socket.destroyed) return false;
    sendFrame(socket, message, payload);
    return true;
  }

  private onHello(socket: net.Socket, message: AgentMessage): boolean {
    const refuse = (code: string, text: string): false => {
      this.options.log('warn', `refused agent ${socket.remoteAddress ?? '?'}: ${text}`);
      this.send(socket, { type: 'error', code, message: text });
      socket.end();
      return false;
    };
    if (message.type !== 'hello') return refuse('REWIND_PROTOCOL', 'expected hello');
    if (!tokensEqual(message.token, this.options.token)) {
      this.authFailures += 1;
      // Rate-limit guessing: each failure delays the answer a little more (capped).
      const delayMs = Math.min(AUTH_DELAY_MS_MAX, AUTH_DELAY_MS_STEP * this.authFailures);
      setTimeout(() => refuse('REWIND_AUTH', 'wrong token'), delayMs);
      return false;
    }
    if (message.protocol !== PROTOCOL_VERSION) {
      return refuse(
        'REWIND_PROTOCOL',
        `protocol ${message.protocol}, expected ${PROTOCOL_VERSION}`,
      );
    }
    try {
      this.host.adoptVolumeSet(message);
    } catch (error) {
      rethrowIfBug(error);
      return refuse(
        error instanceof RewindError ? error.code : 'REWIND_CONFIG',
        errorMessage(error),
      );
    }
    const committed = this.host.committed();
    if (committed.seq > message.seqNext - 1) {
      // Acknowledged segments are gone from the agent, so it can never have lost what this
      // manager committed: its data directory is older than the history (an old disk image).
      return refuse(
        'REWIND_AGENT_BEHIND',
        `this manager has committed seq ${committed.seq}, but the agent's history ends at seq ${message.seqNext - 1}: the agent's data directory is older than what it shipped (restored from an old copy?)`,
      );
    }
    if (this.session && this.session !== socket) {
      this.session.destroy(); // a reconnecting agent replaces a stale session
      this.sessionLost('the agent reconnected');
    }
    this.session = socket;
    this.send(socket, {
      type: 'welcome',
      seqCommitted: committed.seq,
      segmentCommitted: committed.idx,
    });
    // An interrupted production restore runs again now (the agent kept its volumes offline).
    setImmediate(() => this.host.onAgentConnected());
    return true;
  }

  private onMessage(socket: net.Socket, message: AgentMessage, payload: Buffer): void {
    switch (message.type) {
      case 'hello':
        this.options.log('warn', 'agent sent a second hello; ignored');
        return;
      case 'segment': {
        // Parsed (and checksummed) on arrival, so it overlaps the transaction still being
        // applied on the apply worker; everything that depends on the committed state waits for
        // its turn.
        const arrival: Arrival = {
          index: message.index,
          seqFirst: message.seqFirst,
          seqLast: message.seqLast,
          fileCrc: message.fileCrc,
          payload,
          parsing: parseArrival(payload, message.index, this.host.volumeCount()),
        };
        this.answer(socket, message.index, this.host.receive(Promise.resolve(arrival)));
        return;
      }
      case 'segment-file':
        this.receiveSegmentFile(socket, message);
        return;
      case 'history-gap':
        try {
          this.host.expectGap({ segmentFirst: message.segmentFirst, seqFirst: message.seqFirst });
          this.options.log(
            'warn',
            `the agent reports that this manager lost history: seqs ${this.host.committed().seq + 1}..${message.seqFirst - 1} are gone; a resync of every volume follows from segment ${message.segmentFirst}`,
          );
        } catch (error) {
          rethrowIfBug(error);
          const code = error instanceof RewindError ? error.code : 'REWIND_PROTOCOL';
          this.options.log('error', `refused the agent's history gap: ${errorMessage(error)}`);
          this.send(socket, { type: 'error', code, message: errorMessage(error) });
          socket.destroy();
        }
        return;
      case 'status':
        this.status = {
          seqCaptured: message.seqCaptured,
          timeCapturedNs: BigInt(message.timeCapturedNs),
          spoolBytes: message.spoolBytes,
          sealedPending: message.sealedPending,
          mode: message.mode,
          failure: message.failure,
          restoring: message.restoring,
          receivedAtMs: Date.now(),
          captured: message.captured,
          clients: message.clients,
        };
        return;
      case 'sealed': {
        const waiter = this.sealWaiters.get(message.id);
        this.sealWaiters.delete(message.id);
        waiter?.resolve(message.seqLast);
        return;
      }
      case 'restore-ready':
        this.settleRestore(message.id, 'ready', message.seqLast);
        return;
      case 'restore-done':
        this.settleRestore(message.id, 'done', message.seqLast);
        return;
      case 'restore-written': {
        const calls = this.restoreCalls.get(message.id);
        const waiter = calls?.written.get(message.chunk);
        calls?.written.delete(message.chunk);
        waiter?.resolve(message.errno);
        return;
      }
      case 'restore-failed':
        this.failRestore(
          message.id,
          new RewindError('REWIND_IO', `the agent refused: ${message.message}`),
        );
        return;
      default:
        assertNever(message, 'agent message');
    }
  }

  /** Sends the turn's outcome to the session that delivered the segment, if it is still open. */
  private answer(socket: net.Socket, index: number, outcome: Promise<SegmentOutcome>): void {
    void outcome.then((result) => {
      if (result.kind === 'ack') {
        this.send(socket, { type: 'ack', index: result.index, seqLast: result.seqLast });
      } else {
        this.send(socket, { type: 'refused', index, code: result.code, message: result.message });
      }
    });
  }

  /**
   * `rewind up`: the agent in this process names a sealed segment in its spool; it is read (and
   * parsed) at once, then takes its turn like a segment sent over the link, except that the redo
   * copy is a hard link to the agent's file. Only a manager given the spool directory takes this.
   */
  private receiveSegmentFile(
    socket: net.Socket,
    message: Extract<AgentMessage, { type: 'segment-file' }>,
  ): void {
    const spoolDir = this.options.localSpoolDir;
    const name = message.name;
    if (spoolDir === undefined || parseSegmentFileName(name)?.kind !== 'redo') {
      const text =
        spoolDir === undefined
          ? 'this manager takes segments over the link only'
          : `bad segment file name ${JSON.stringify(name.slice(0, 100))}`;
      this.options.log('error', `refused segment ${message.index}: ${text}`);
      this.send(socket, {
        type: 'refused',
        index: message.index,
        code: 'REWIND_PROTOCOL',
        message: text,
      });
      return;
    }
    const file = path.join(spoolDir, name);
    // Nothing crossed a wire, so the file's checksum is compared with itself; every record's
    // checksum and the trailer are still verified by the parse.
    const arriving = fsp.readFile(file).then(
      (payload): Arrival => {
        const parsing = parseArrival(payload, message.index, this.host.volumeCount());
        const fileCrc = 'parsed' in parsing ? parsing.parsed.fileCrc : 0;
        return {
          index: message.index,
          seqFirst: message.seqFirst,
          seqLast: message.seqLast,
          fileCrc,
          payload,
          parsing,
          linkFrom: file,
        };
      },
      (error: unknown): Arrival => {
        rethrowIfBug(error);
        const failure = new RewindError(
          'REWIND_IO',
          `segment ${message.index}: cannot read ${file}: ${errorMessage(error)}`,
        );
        return {
          index: message.index,
          seqFirst: message.seqFirst,
          seqLast: message.seqLast,
          fileCrc: 0,
          payload: Buffer.alloc(0),
          parsing: { error: failure },
        };
      },
    );
    this.answer(socket, message.index, this.host.receive(arriving));
  }

  // ---- requests to the agent ----

  /** Asks the agent to seal its active segment; resolves the seq of its last write. */
  requestSeal(timeoutMs: number): Promise<number> {
    const session = this.session;
    if (!session) {
      return Promise.reject(
        new RewindError('REWIND_BUSY', 'no agent is connected', {
          hint: 'start the agent, or check its log for why it cannot reach the manager',
        }),
      );
    }
    const id = ++this.sealId;
    return new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.sealWaiters.delete(id);
        reject(new RewindError('REWIND_BUSY', 'the agent did not answer the seal request in time'));
      }, timeoutMs);
      this.sealWaiters.set(id, {
        resolve: (value) => (clearTimeout(timer), resolve(value)),
        reject: (error) => (clearTimeout(timer), reject(error)),
      });
      this.send(session, { type: 'seal', id });
    });
  }

  /** Takes volumes offline on the agent; resolves the seq of its last write before the restore. */
  restoreBegin(id: number, volumes: string[]): Promise<number> {
    return this.restoreCall(id, 'ready', { type: 'restore-begin', id, volumes });
  }

  /** One restore write (or zero run, without data) through the agent's write path; its errno. */
  restoreWrite(
    id: number,
    chunk: number,
    write: { volume: string; offset: number; length: number; data: Buffer | undefined },
  ): Promise<number> {
    const calls = this.callsOf(id);
    return new Promise<number>((resolve, reject) => {
      const message: ManagerMessage = {
        type: 'restore-write',
        id,
        chunk,
        volume: write.volume,
        offset: write.offset,
        length: write.length,
        zero: write.data === undefined,
      };
      if (!this.session || !this.send(this.session, message, write.data)) {
        reject(new LinkLostError('the agent is not connected'));
        return;
      }
      calls.written.set(chunk, { resolve, reject });
    });
  }

  /**
   * Makes the restore durable and brings the volumes back online; resolves the agent's last seq.
   */
  restoreEnd(id: number, abandon: boolean): Promise<number> {
    return this.restoreCall(id, 'done', { type: 'restore-end', id, abandon });
  }

  private restoreCall(
    id: number,
    reply: 'ready' | 'done',
    message: ManagerMessage,
  ): Promise<number> {
    const calls = this.callsOf(id);
    return new Promise<number>((resolve, reject) => {
      if (!this.session || !this.send(this.session, message)) {
        reject(new LinkLostError('the agent is not connected'));
        return;
      }
      calls[reply] = { resolve, reject };
    });
  }

  private callsOf(id: number): RestoreCalls {
    let calls = this.restoreCalls.get(id);
    if (calls === undefined) {
      calls = { ready: undefined, done: undefined, written: new Map() };
      this.restoreCalls.set(id, calls);
    }
    return calls;
  }

  private settleRestore(id: number, reply: 'ready' | 'done', seqLast: number): void {
    const calls = this.restoreCalls.get(id);
    const waiter = calls?.[reply];
    if (calls) calls[reply] = undefined;
    if (calls && reply === 'done') this.restoreCalls.delete(id);
    waiter?.resolve(seqLast);
  }

  /** Fails every request of restore `id`. */
  private failRestore(id: number, error: Error): void {
    const calls = this.restoreCalls.get(id);
    if (!calls) return;
    this.restoreCalls.delete(id);
    calls.ready?.reject(error);
    calls.done?.reject(error);
    for (const waiter of calls.written.values()) waiter.reject(error);
  }

  private sessionLost(reason: string): void {
    this.session = undefined;
    for (const id of [...this.restoreCalls.keys()]) this.failRestore(id, new LinkLostError(reason));
  }

  async close(): Promise<void> {
    // server.close() waits for every connection to end: end them first, or a connected agent
    // keeps the manager from stopping.
    const server = this.server;
    const closed = new Promise<void>((resolve) =>
      server ? server.close(() => resolve()) : resolve(),
    );
    for (const socket of this.sockets) socket.destroy();
    this.session?.destroy();
    await closed;
  }
}
