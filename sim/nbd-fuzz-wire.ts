// The fuzzer's raw client socket: exact-length reads that each carry a deadline (so the fuzzer never
// hangs on a silent server), detection of who closed the connection, the switch to TLS after
// STARTTLS, and a short transcript of the recent exchange that goes into every violation report.
import net from 'node:net';
import tls from 'node:tls';

/** The peer closed (or reset) the connection before the bytes asked for arrived. */
export class PeerClosed extends Error {
  constructor(readonly receivedBytes: number) {
    super(`connection closed by the server with ${receivedBytes} unread bytes`);
  }
}

/** Nothing (or not enough) arrived before the deadline. */
export class ReadTimeout extends Error {
  constructor(
    readonly wantedBytes: number,
    readonly timeoutMs: number,
  ) {
    super(`no reply: waited ${timeoutMs} ms for ${wantedBytes} bytes`);
  }
}

interface Waiter {
  lengthBytes: number;
  resolve: (data: Buffer) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

const TRANSCRIPT_LINES = 48;

export class Wire {
  private readonly chunks: Buffer[] = [];
  private bufferedBytes = 0;
  private waiter: Waiter | undefined;
  private closed = false;
  private localEnded = false;
  /** The fuzzer asked the server to end the session (DISC, ABORT): a close is not a protocol disconnect. */
  private endRequested = false;
  /** True once the server closed (or reset) the connection unasked, before the fuzzer ended it. */
  serverClosedFirst = false;
  private readonly transcript: string[] = [];
  private readonly closeListeners = new Set<() => void>();
  private readonly listeners = {
    data: (chunk: Buffer): void => this.onData(chunk),
    closed: (): void => this.onClosed(),
  };

  private constructor(
    private socket: net.Socket,
    readonly timeoutMs: number,
  ) {
    socket.setNoDelay(true);
    this.attach(socket);
  }

  private attach(socket: net.Socket): void {
    socket.on('data', this.listeners.data);
    socket.on('end', this.listeners.closed);
    socket.on('close', this.listeners.closed);
    // Resets are normal after a server-side hard disconnect; the close event reports them.
    socket.on('error', this.listeners.closed);
  }

  /**
   * Runs the client side of TLS on the connection (after STARTTLS was acknowledged); from then on
   * every read and write goes through it. Rejects when the TLS handshake fails or times out.
   */
  async upgrade(options: tls.ConnectionOptions): Promise<void> {
    if (this.bufferedBytes > 0) throw new Error('bytes left unread before TLS');
    const plain = this.socket;
    plain.off('data', this.listeners.data);
    plain.off('end', this.listeners.closed);
    plain.off('close', this.listeners.closed);
    const secure = tls.connect({ ...options, socket: plain });
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        secure.destroy();
        reject(new ReadTimeout(0, this.timeoutMs));
      }, this.timeoutMs);
      secure.once('secureConnect', () => {
        clearTimeout(timer);
        resolve();
      });
      secure.once('error', (error: Error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
    plain.off('error', this.listeners.closed);
    this.socket = secure;
    this.attach(secure);
  }

  static connect(host: string, port: number, timeoutMs: number): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ReadTimeout(0, timeoutMs));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeListener('error', reject);
        resolve(new Wire(socket, timeoutMs));
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  get isClosed(): boolean {
    return this.closed;
  }

  get pendingBytes(): number {
    return this.bufferedBytes;
  }

  /** Exactly `lengthBytes` bytes, or PeerClosed / ReadTimeout (after `timeoutMs`, by default the wire's). */
  read(lengthBytes: number, timeoutMs = this.timeoutMs): Promise<Buffer> {
    if (this.bufferedBytes >= lengthBytes) return Promise.resolve(this.take(lengthBytes));
    if (this.closed) return Promise.reject(new PeerClosed(this.bufferedBytes));
    if (this.waiter) return Promise.reject(new Error('two reads at once on one connection'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new ReadTimeout(lengthBytes, timeoutMs));
      }, timeoutMs);
      this.waiter = { lengthBytes, resolve, reject, timer };
    });
  }

  /** Resolves once the server closed the connection, or rejects with ReadTimeout. */
  waitClosed(timeoutMs = this.timeoutMs): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.closeListeners.delete(onClose);
        reject(new ReadTimeout(0, timeoutMs));
      }, timeoutMs);
      const onClose = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.closeListeners.add(onClose);
    });
  }

  write(data: Buffer): void {
    if (!this.closed && !this.socket.destroyed) this.socket.write(data);
  }

  /** Stops taking data from the socket for `ms` (replies pile up on the server's side meanwhile). */
  pauseReading(ms: number): void {
    this.socket.pause();
    setTimeout(() => this.socket.resume(), ms);
  }

  /** Marks that the fuzzer asked the server to end the session (DISC or ABORT). */
  requestEnd(): void {
    this.endRequested = true;
  }

  /** Half-closes (FIN): the server sees end of stream, replies already queued still arrive. */
  end(): void {
    this.localEnded = true;
    if (!this.socket.destroyed) this.socket.end();
  }

  destroy(): void {
    this.localEnded = true;
    this.socket.destroy();
  }

  note(line: string): void {
    this.transcript.push(line);
    if (this.transcript.length > TRANSCRIPT_LINES) this.transcript.shift();
  }

  recentExchange(): string[] {
    return [...this.transcript];
  }

  private onData(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.bufferedBytes += chunk.length;
    const waiter = this.waiter;
    if (waiter && this.bufferedBytes >= waiter.lengthBytes) {
      this.waiter = undefined;
      clearTimeout(waiter.timer);
      waiter.resolve(this.take(waiter.lengthBytes));
    }
  }

  private onClosed(): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.localEnded && !this.endRequested) this.serverClosedFirst = true;
    for (const listener of this.closeListeners) listener();
    this.closeListeners.clear();
    const waiter = this.waiter;
    if (waiter) {
      this.waiter = undefined;
      clearTimeout(waiter.timer);
      waiter.reject(new PeerClosed(this.bufferedBytes));
    }
  }

  private take(lengthBytes: number): Buffer {
    const first = this.chunks[0];
    if (first !== undefined && first.length >= lengthBytes) {
      this.bufferedBytes -= lengthBytes;
      if (first.length === lengthBytes) this.chunks.shift();
      else this.chunks[0] = first.subarray(lengthBytes);
      return first.subarray(0, lengthBytes);
    }
    const result = Buffer.allocUnsafe(lengthBytes);
    let filled = 0;
    while (filled < lengthBytes) {
      const chunk = this.chunks[0];
      if (chunk === undefined) throw new Error('wire accounting broken');
      const step = Math.min(chunk.length, lengthBytes - filled);
      chunk.copy(result, filled, 0, step);
      filled += step;
      if (step === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(step);
    }
    this.bufferedBytes -= lengthBytes;
    return result;
  }
}

export function hex(data: Buffer, maxBytes = 48): string {
  const shown = data.subarray(0, maxBytes).toString('hex');
  return data.length > maxBytes ? `${shown}… (${data.length} bytes)` : shown;
}
