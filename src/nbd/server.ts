// NbdServer: accepts TCP connections, owns the set of live connections and the per-export counts
// (so an export can be disconnected when it is removed), and shuts down in order.
import net from 'node:net';
import { assert } from '../core/index.js';
import type { ExportRegistry } from './backend.js';
import {
  Connection,
  type ConnectionHost,
  type ConnectionLimits,
  type LogFunction,
} from './connection.js';
import { PAYLOAD_BYTES_NOT_DOS, type BlockSizes } from './protocol.js';

export interface NbdServerOptions {
  log?: LogFunction;
  /**
   * Largest READ or WRITE payload accepted, and the advertised maximum block size. Default 32 MiB.
   */
  maxPayloadBytes?: number;
  /** Options per handshake before the connection is dropped. Default 32 (as nbdkit). */
  maxOptions?: number;
  /** Largest option data read; larger gets ERR_TOO_BIG (or a close). Default 64 KiB. */
  maxOptionDataBytes?: number;
  /**
   * Request bytes in flight plus reply bytes queued per connection before reading pauses. Default
   * 64 MiB.
   */
  inflightBytesMax?: number;
  /** A client that has not finished the handshake by then is dropped; 0 disables. Default 60 s. */
  handshakeTimeoutMs?: number;
}

export interface ListenAddress {
  host: string;
  port: number;
}

const MIB = 1024 * 1024;
const PREFERRED_BLOCK_BYTES = 4096;
/**
 * The smallest in-flight budget: above a socket's write high-water mark so 'drain' always follows a
 * pause.
 */
const INFLIGHT_BYTES_MAX_MIN = MIB;

function noLog(): void {
  // Logging is optional; without a sink messages are dropped on purpose.
}

function resolveLimits(options: NbdServerOptions): ConnectionLimits {
  const limits: ConnectionLimits = {
    maxPayloadBytes: options.maxPayloadBytes ?? PAYLOAD_BYTES_NOT_DOS,
    maxOptions: options.maxOptions ?? 32,
    maxOptionDataBytes: options.maxOptionDataBytes ?? 64 * 1024,
    inflightBytesMax: options.inflightBytesMax ?? 64 * MIB,
    handshakeTimeoutMs: options.handshakeTimeoutMs ?? 60_000,
  };
  // The advertised block sizes need maximum >= preferred, and lengths travel as u32.
  assert(Number.isInteger(limits.maxPayloadBytes), 'maxPayloadBytes must be an integer');
  assert(limits.maxPayloadBytes >= PREFERRED_BLOCK_BYTES, 'maxPayloadBytes must be at least 4096');
  assert(limits.maxPayloadBytes <= 0xffffffff, 'maxPayloadBytes must fit in u32');
  assert(
    Number.isInteger(limits.maxOptions) && limits.maxOptions >= 1,
    'maxOptions must be a positive integer',
  );
  assert(
    Number.isInteger(limits.maxOptionDataBytes) && limits.maxOptionDataBytes >= 4096 + 64,
    'maxOptionDataBytes too small',
  );
  assert(
    limits.inflightBytesMax >= INFLIGHT_BYTES_MAX_MIN,
    'inflightBytesMax must be at least 1 MiB',
  );
  assert(limits.handshakeTimeoutMs >= 0, 'handshakeTimeoutMs must not be negative');
  return limits;
}

export class NbdServer {
  private readonly host: ConnectionHost;
  private readonly connections = new Set<Connection>();
  private readonly byExport = new Map<string, Set<Connection>>();
  private netServer: net.Server | undefined;
  private shuttingDown = false;
  private closedPromise: Promise<void> | undefined;
  private readonly idleWaiters: Array<() => void> = [];

  constructor(registry: ExportRegistry, options: NbdServerOptions = {}) {
    const limits = resolveLimits(options);
    const blockSizes: BlockSizes = {
      minimumBytes: 1,
      preferredBytes: PREFERRED_BLOCK_BYTES,
      maximumBytes: limits.maxPayloadBytes,
    };
    this.host = {
      registry,
      limits,
      blockSizes,
      log: options.log ?? noLog,
      isShuttingDown: () => this.shuttingDown,
      onTransmission: (connection) => this.onTransmission(connection),
      onClosed: (connection) => this.onClosed(connection),
    };
  }

  /** Starts listening; port 0 picks a free port. Resolves with the bound address. */
  listen(host: string, port: number): Promise<ListenAddress> {
    assert(this.netServer === undefined, 'listen called twice');
    assert(!this.shuttingDown, 'listen after close');
    const netServer = net.createServer({ noDelay: true }, (socket) => this.handleSocket(socket));
    this.netServer = netServer;
    return new Promise((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      netServer.once('error', onError);
      netServer.listen(port, host, () => {
        netServer.off('error', onError);
        netServer.on('error', (error) =>
          this.host.log('error', 'nbd listener error', { error: error.message }),
        );
        const address = netServer.address();
        assert(address !== null && typeof address === 'object', 'TCP listener has no address');
        this.host.log('info', 'nbd server listening', {
          host: address.address,
          port: address.port,
        });
        resolve({ host: address.address, port: address.port });
      });
    });
  }

  /** Serves one already-connected socket (the listener uses this; tests can inject sockets). */
  handleSocket(socket: net.Socket): void {
    if (this.shuttingDown || socket.destroyed) {
      socket.destroy();
      return;
    }
    this.connections.add(new Connection(socket, this.host));
  }

  /**
   * Stops accepting, answers new requests with ESHUTDOWN, lets in-flight requests finish, then
   * closes every socket. Resolves when the listener and all connections are closed.
   */
  close(): Promise<void> {
    if (this.closedPromise) return this.closedPromise;
    this.shuttingDown = true;
    const listenerClosed = new Promise<void>((resolve) => {
      if (!this.netServer) return resolve();
      this.netServer.close(() => resolve());
    });
    const connectionsClosed = new Promise<void>((resolve) => {
      if (this.connections.size === 0) return resolve();
      this.idleWaiters.push(resolve);
    });
    for (const connection of [...this.connections]) connection.shutdown();
    this.closedPromise = Promise.all([listenerClosed, connectionsClosed]).then(() => {
      this.host.log('info', 'nbd server closed');
    });
    return this.closedPromise;
  }

  /** Drops every connection using `exportName` at once; returns how many were dropped. */
  disconnectExport(exportName: string): number {
    const connections = this.byExport.get(exportName);
    if (!connections) return 0;
    const victims = [...connections].filter((connection) => !connection.isClosed);
    for (const connection of victims) connection.destroy(`export ${exportName} disconnected`);
    return victims.length;
  }

  /**
   * Open connections using `exportName`, or all open connections (handshakes included) without it.
   */
  connectionCount(exportName?: string): number {
    if (exportName === undefined) return this.connections.size;
    return this.byExport.get(exportName)?.size ?? 0;
  }

  private onTransmission(connection: Connection): void {
    const exportName = connection.exportName;
    assert(exportName !== undefined, 'transmission without an export');
    let set = this.byExport.get(exportName);
    if (!set) {
      set = new Set();
      this.byExport.set(exportName, set);
    }
    set.add(connection);
  }

  private onClosed(connection: Connection): void {
    this.connections.delete(connection);
    const exportName = connection.exportName;
    if (exportName !== undefined) {
      const set = this.byExport.get(exportName);
      set?.delete(connection);
      if (set?.size === 0) this.byExport.delete(exportName);
    }
    if (this.connections.size === 0) {
      for (const resolve of this.idleWaiters.splice(0)) resolve();
    }
  }
}
