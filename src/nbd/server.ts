// NbdServer: accepts connections on TCP and Unix sockets, runs the server side of STARTTLS (X.509
// or PSK), owns the set of live connections and the per-export counts (so an export can be
// disconnected when it is removed), and shuts down in order.
import net from 'node:net';
import tls from 'node:tls';
import { assert, errorCode, errorMessage, rethrowIfBug, RewindError } from '../core/index.js';
import { removeStaleSocket, setSocketAccess, socketPathState } from '../platform/index.js';
import { AccessPolicy, type AccessRule, type Peer } from './access.js';
import type { ExportRegistry } from './backend.js';
import {
  Connection,
  type ConnectionHost,
  type ConnectionLimits,
  type LogFunction,
  type TlsHandshakeDone,
} from './connection.js';
import { checkSecurity, type TlsSettings } from './credentials.js';
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
  /** STARTTLS with these credentials; without it the server is NOTLS (STARTTLS gets ERR_POLICY). */
  tls?: TlsSettings;
  /** Per-export rules: the first whose pattern matches an export decides who may use it. */
  access?: readonly AccessRule[];
}

export interface ListenAddress {
  host: string;
  port: number;
}

export interface UnixListenOptions {
  /** Permission bits of the socket file; connecting needs write permission. */
  mode: number;
  /** Group of the socket file; by default the process's. */
  gid?: number;
}

/**
 * TLS 1.2 suites for PSK, forward-secret ones only (what libnbd and qemu offer through GnuTLS's
 * +ECDHE-PSK:+DHE-PSK); TLS 1.3 uses its own suites with the PSK (psk_dhe_ke).
 */
const PSK_CIPHERS_TLS12 = [
  'ECDHE-PSK-CHACHA20-POLY1305',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'DHE-PSK-CHACHA20-POLY1305',
].join(':');
/** The connect that tells a live server on an existing socket file from a stale file. */
const SOCKET_PROBE_TIMEOUT_MS = 2000;

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
  private readonly tls: TlsSettings | undefined;
  private readonly connections = new Set<Connection>();
  private readonly byExport = new Map<string, Set<Connection>>();
  private readonly netServers: net.Server[] = [];
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
    const access = checkServerSecurity(options);
    this.tls = options.tls;
    this.host = {
      registry,
      limits,
      blockSizes,
      log: options.log ?? noLog,
      tlsMode: options.tls?.mode ?? 'off',
      access,
      startTls: (socket, done) => this.startTls(socket, done),
      isShuttingDown: () => this.shuttingDown,
      onTransmission: (connection) => this.onTransmission(connection),
      onClosed: (connection) => this.onClosed(connection),
    };
  }

  /** Starts listening on TCP; port 0 picks a free port. Resolves with the bound address. */
  async listen(host: string, port: number): Promise<ListenAddress> {
    const netServer = await this.startListener((server) => server.listen(port, host));
    const address = netServer.address();
    assert(address !== null && typeof address === 'object', 'TCP listener has no address');
    this.host.log('info', 'nbd server listening', { host: address.address, port: address.port });
    return { host: address.address, port: address.port };
  }

  /**
   * Starts listening on a Unix socket at `socketPath` with the given mode and group. A socket file
   * left by a server that is gone is replaced; a live one, or anything not a socket, is not.
   */
  async listenUnix(socketPath: string, options: UnixListenOptions): Promise<string> {
    assert((options.mode & ~0o777) === 0, 'socket mode holds only permission bits');
    await this.clearSocketPath(socketPath);
    let netServer: net.Server;
    try {
      netServer = await this.startListener((server) => server.listen(socketPath), socketPath);
    } catch (error) {
      rethrowIfBug(error);
      throw new RewindError(
        'REWIND_CONFIG',
        `cannot listen on NBD socket ${socketPath}: ${errorMessage(error)}`,
        { cause: error, hint: "the socket's directory must exist and be writable by this user" },
      );
    }
    try {
      setSocketAccess(socketPath, options);
    } catch (error) {
      rethrowIfBug(error);
      await new Promise((resolve) => netServer.close(resolve));
      const group = options.gid === undefined ? '' : ` and group ${options.gid}`;
      throw new RewindError(
        'REWIND_CONFIG',
        `cannot give NBD socket ${socketPath} mode 0${options.mode.toString(8)}${group}: ${errorMessage(error)}`,
        { cause: error, hint: 'only root or a member of the group can give a file to a group' },
      );
    }
    this.host.log('info', 'nbd server listening', {
      socket: socketPath,
      mode: `0${options.mode.toString(8)}`,
      ...(options.gid === undefined ? {} : { gid: options.gid }),
    });
    return socketPath;
  }

  /** Serves one already-connected socket (the listeners use this; tests can inject sockets). */
  handleSocket(socket: net.Socket, remote?: string): void {
    if (this.shuttingDown || socket.destroyed) {
      socket.destroy();
      return;
    }
    const label = remote ?? `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    this.connections.add(new Connection(socket, this.host, label));
  }

  private startListener(
    listen: (server: net.Server) => void,
    socketPath?: string,
  ): Promise<net.Server> {
    assert(!this.shuttingDown, 'listen after close');
    const netServer = net.createServer({ noDelay: true }, (socket) =>
      this.handleSocket(socket, socketPath === undefined ? undefined : `unix:${socketPath}`),
    );
    return new Promise((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      netServer.once('error', onError);
      netServer.once('listening', () => {
        netServer.off('error', onError);
        netServer.on('error', (error) =>
          this.host.log('error', 'nbd listener error', { error: error.message }),
        );
        this.netServers.push(netServer);
        resolve(netServer);
      });
      listen(netServer);
    });
  }

  private async clearSocketPath(socketPath: string): Promise<void> {
    const state = socketPathState(socketPath);
    if (state === 'free') return;
    if (state === 'other')
      throw new RewindError(
        'REWIND_CONFIG',
        `${socketPath} exists and is not a socket; the NBD socket will not replace it`,
        { hint: 'choose another --nbd-unix path or remove that file' },
      );
    if (await socketAnswers(socketPath))
      throw new RewindError('REWIND_CONFIG', `another server is listening on ${socketPath}`, {
        hint: 'stop it or choose another --nbd-unix path',
      });
    removeStaleSocket(socketPath);
  }

  /**
   * The server side of STARTTLS. A TLS server per handshake (not listening; the plain socket is
   * handed to it) is what lets Node verify a client certificate and tell us which socket it was.
   */
  private startTls(socket: net.Socket, done: TlsHandshakeDone): void {
    const settings = this.tls;
    assert(settings !== undefined, 'STARTTLS accepted without TLS settings');
    const psk: PskOutcome = { offered: undefined, known: false };
    const options = tlsServerOptions(settings, this.host.limits.handshakeTimeoutMs, psk);
    const server = tls.createServer(options);
    server.once('secureConnection', (secure: tls.TLSSocket) => {
      const peer = peerOf(settings, secure, psk);
      if (typeof peer === 'string') {
        secure.destroy();
        done.failed(peer);
        return;
      }
      const protocol = secure.getProtocol() ?? 'unknown';
      done.secure(secure, peer, { protocol, cipher: secure.getCipher().name });
    });
    server.once('tlsClientError', (error: Error) => done.failed(tlsFailure(error, psk)));
    server.emit('connection', socket);
  }

  /**
   * Stops accepting, answers new requests with ESHUTDOWN, lets in-flight requests finish, then
   * closes every socket. Resolves when the listener and all connections are closed.
   */
  close(): Promise<void> {
    if (this.closedPromise) return this.closedPromise;
    this.shuttingDown = true;
    const listenerClosed = Promise.all(
      this.netServers.map((server) => new Promise((resolve) => server.close(resolve))),
    );
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

/**
 * Refuses, with a typed error, TLS settings and access rules that cannot work together or
 * credentials Node cannot use; a server would refuse the same options at construction.
 */
export function checkServerSecurity(
  options: Pick<NbdServerOptions, 'tls' | 'access'>,
): AccessPolicy {
  const access = new AccessPolicy(options.access ?? []);
  checkSecurity(options.tls, access);
  if (options.tls) checkCredentials(options.tls);
  return access;
}

/** Fails fast at start on a certificate, key or CA Node cannot use, instead of at each client. */
function checkCredentials(settings: TlsSettings): void {
  const credentials = settings.credentials;
  if (credentials.kind !== 'x509') return;
  try {
    tls.createSecureContext({
      cert: credentials.certificate,
      key: credentials.privateKey,
      ...(credentials.clientCa ? { ca: credentials.clientCa } : {}),
    });
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError('REWIND_CONFIG', 'the NBD TLS certificate, key or CA cannot be used', {
      cause: error,
      hint: `${errorMessage(error)}; give PEM files whose key matches the certificate`,
    });
  }
}

/** The identity a PSK client offered during its handshake, and whether the PSK file has it. */
interface PskOutcome {
  offered: string | undefined;
  known: boolean;
}

/** A failed handshake in the operator's words (OpenSSL's reason, plus what it means for PSK). */
function tlsFailure(error: Error, psk: PskOutcome): string {
  const reason = (error as { reason?: unknown }).reason;
  const text = typeof reason === 'string' ? reason : errorMessage(error).split('\n')[0];
  if (psk.offered !== undefined && !psk.known)
    return `PSK identity "${psk.offered}" is not in the PSK file (${text})`;
  if (psk.offered !== undefined)
    return `PSK identity "${psk.offered}" did not prove the key the PSK file holds for it (${text})`;
  return text ?? 'unknown TLS error';
}

function tlsServerOptions(
  settings: TlsSettings,
  handshakeTimeoutMs: number,
  psk: PskOutcome,
): tls.TlsOptions {
  const common: tls.TlsOptions = {
    minVersion: 'TLSv1.2',
    ...(handshakeTimeoutMs > 0 ? { handshakeTimeout: handshakeTimeoutMs } : {}),
  };
  const credentials = settings.credentials;
  if (credentials.kind === 'psk') {
    return {
      ...common,
      ciphers: PSK_CIPHERS_TLS12,
      dhparam: 'auto',
      pskCallback: (_socket: tls.TLSSocket, identity: string) => {
        const key = credentials.keys.get(identity);
        psk.offered = identity;
        psk.known = key !== undefined;
        return key ?? null;
      },
    };
  }
  return {
    ...common,
    cert: credentials.certificate,
    key: credentials.privateKey,
    // The certificate is checked after the handshake (peerOf), so the refusal can be logged.
    ...(credentials.clientCa
      ? { ca: credentials.clientCa, requestCert: true, rejectUnauthorized: false }
      : {}),
  };
}

/** Who the TLS client is, or why it is refused. */
function peerOf(settings: TlsSettings, socket: tls.TLSSocket, psk: PskOutcome): Peer | string {
  const credentials = settings.credentials;
  if (credentials.kind === 'psk') {
    if (psk.offered === undefined || !psk.known) return 'the client proved no PSK identity';
    return { kind: 'psk', identity: psk.offered };
  }
  if (!credentials.clientCa) return { kind: 'tls' };
  const certificate = socket.getPeerCertificate();
  if (Object.keys(certificate).length === 0) return 'the client presented no certificate';
  if (!socket.authorized)
    return `client certificate refused: ${String(socket.authorizationError ?? 'not verified')}`;
  const subject = certificate.subject as Record<string, string | string[]> | undefined;
  const commonName = subject?.CN;
  const subjectText = Object.entries(subject ?? {})
    .map(([key, value]) => `${key}=${Array.isArray(value) ? value.join('+') : value}`)
    .join(',');
  return {
    kind: 'certificate',
    commonName: typeof commonName === 'string' ? commonName : '',
    subject: subjectText,
  };
}

/** True when something accepts connections on the Unix socket at `socketPath`. */
function socketAnswers(socketPath: string): Promise<boolean> {
  return new Promise((resolve, reject) => {
    const probe = net.connect(socketPath);
    probe.setTimeout(SOCKET_PROBE_TIMEOUT_MS);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('timeout', () => {
      probe.destroy();
      resolve(true); // it accepted the file but did not answer: treat it as alive, never remove it
    });
    probe.once('error', (error) => {
      probe.destroy();
      if (errorCode(error) === 'ECONNREFUSED') resolve(false);
      else reject(error);
    });
  });
}
