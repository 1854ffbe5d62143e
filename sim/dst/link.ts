// The simulated agent-manager network: a pair of Duplex streams standing in for a TCP connection.
// Bytes arrive in order (as TCP guarantees) but split at seeded places and after seeded delays;
// the link can be cut at any moment, mid-frame included, and a partition refuses new connections
// for a while. Each side's events run as the process that owns that side.
import { Duplex } from 'node:stream';
import type net from 'node:net';
import type { SimProcess, World } from './world.js';

export interface LinkFaults {
  /** Upper bound of the one-way delay of a chunk. */
  maxDelayMs: number;
  /** Chance per written chunk that the connection is cut after part of it arrived. */
  cutPerChunk: number;
}

class SimSocket extends Duplex {
  peer: SimSocket | undefined;
  remoteAddress = 'sim';
  /** When the last chunk written here reaches the peer: later chunks never overtake it. */
  private lastArrivalMs = 0;

  constructor(
    readonly owner: SimProcess,
    private readonly net: SimNetwork,
  ) {
    super({ allowHalfOpen: false });
  }

  setNoDelay(): this {
    return this;
  }
  setKeepAlive(): this {
    return this;
  }

  override _read(): void {}

  override _write(
    chunk: Buffer,
    _encoding: BufferEncoding,
    callback: (error?: Error | null) => void,
  ): void {
    const peer = this.peer;
    if (!peer || peer.destroyed) {
      callback();
      return;
    }
    const world = this.net.world;
    const faults = this.net.faults;
    // Split into up to three pieces at seeded places, each with its own arrival time.
    const pieces: Buffer[] = [];
    let rest = chunk;
    while (rest.length > 1 && pieces.length < 2 && world.random.chance(0.3)) {
      const at = 1 + world.random.int(rest.length - 1);
      pieces.push(rest.subarray(0, at));
      rest = rest.subarray(at);
    }
    pieces.push(rest);
    const cutAfter = world.random.chance(faults.cutPerChunk) ? world.random.int(pieces.length) : -1;
    const now = Date.now();
    for (const [i, piece] of pieces.entries()) {
      this.lastArrivalMs = Math.max(
        this.lastArrivalMs,
        now + world.random.int(faults.maxDelayMs + 1),
      );
      const copy = Buffer.from(piece);
      const last = i === cutAfter;
      world.schedule(this.lastArrivalMs - now, () => {
        if (peer.destroyed) return;
        peer.owner.run(() => peer.push(copy));
        if (last) this.net.cut(this, 'cut mid-stream');
      });
      if (last) break;
    }
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const peer = this.peer;
    this.peer = undefined;
    if (peer && !peer.destroyed) {
      // The other side learns of it after a delay, as its own process (even when this one died).
      const delay = 1 + this.net.world.random.int(this.net.faults.maxDelayMs + 1);
      peer.owner.run(() =>
        this.net.world.schedule(delay, () => {
          if (!peer.destroyed) peer.destroy();
        }),
      );
    }
    callback(error);
  }
}

export class SimNetwork {
  faults: LinkFaults = { maxDelayMs: 2, cutPerChunk: 0 };
  private partitionedUntilMs = 0;
  private readonly open = new Set<SimSocket>();
  cuts = 0;
  connections = 0;

  constructor(readonly world: World) {}

  partition(ms: number): void {
    this.partitionedUntilMs = Math.max(this.partitionedUntilMs, Date.now() + ms);
    for (const socket of this.open) this.cut(socket, 'partition');
  }

  get partitioned(): boolean {
    return Date.now() < this.partitionedUntilMs;
  }

  /**
   * The agent side of a new connection to `accept` (the manager's acceptAgent, run as `server`);
   * `onConnected` runs when it is up, or the socket errors and closes during a partition.
   */
  connect(
    client: SimProcess,
    server: () => { proc: SimProcess; accept: (socket: net.Socket) => void } | undefined,
    onConnected: () => void,
  ): net.Socket {
    const socket = new SimSocket(client, this);
    const delay = 1 + this.world.random.int(this.faults.maxDelayMs + 1);
    this.world.schedule(delay, () => {
      const target = server();
      if (this.partitioned || !target || !target.proc.alive) {
        socket.destroy(
          Object.assign(new Error('connect ECONNREFUSED (simulated)'), { code: 'ECONNREFUSED' }),
        );
        return;
      }
      const remote = new SimSocket(target.proc, this);
      socket.peer = remote;
      remote.peer = socket;
      this.open.add(socket);
      this.open.add(remote);
      socket.once('close', () => this.open.delete(socket));
      remote.once('close', () => this.open.delete(remote));
      this.connections += 1;
      target.proc.run(() => target.accept(remote as unknown as net.Socket));
      onConnected();
    });
    return socket as unknown as net.Socket;
  }

  /** Cuts the connection `socket` belongs to: both sides see it close. */
  cut(socket: SimSocket, why: string): void {
    if (socket.destroyed) return;
    this.cuts += 1;
    socket.owner.run(() =>
      socket.destroy(
        Object.assign(new Error(`connection reset (simulated: ${why})`), { code: 'ECONNRESET' }),
      ),
    );
  }

  /** Cuts every connection a process has (it crashed or its machine lost power). */
  cutAll(proc: SimProcess): void {
    for (const socket of [...this.open])
      if (socket.owner === proc || socket.peer?.owner === proc)
        this.cut(socket, `${proc.name} crashed`);
  }
}
