// Assembles the processes: `rewind up` (agent + manager in one process, linked over the same
// authenticated connection a split deployment uses), `rewind agent` and `rewind manager`.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { createSecureContext } from 'node:tls';
import pino from 'pino';
import { errorMessage, RewindError, rethrowIfBug } from '../core/index.js';
import {
  Agent,
  agentSpoolDir,
  checkVolumes,
  type ShipperTarget,
  type VolumeSpec,
} from '../agent/index.js';
import { consoleUrl, startApi } from '../api/index.js';
import { loadArchiveKey, openStore } from '../archive/index.js';
import {
  Manager,
  rebuildFromArchive,
  type ArchivePolicy,
  type ArchiveSettings,
  type PolicyText,
  type RebuildProgress,
  type RebuildResult,
} from '../manager/index.js';
import type { NbdServer, ExportBackend } from '../nbd/index.js';
import { writeFileDurable } from '../platform/index.js';
import {
  nbdSecretFiles,
  planNbd,
  serveNbd,
  type Endpoint,
  type NbdPlan,
  type NbdSecurity,
  type NbdServing,
} from './nbd-serving.js';
import { checkPrivate, makeProcessPrivate } from './private-data.js';
import { CombinedRegistry } from './registry.js';
import { logDestination, logFormat } from './log.js';
import { listenOn, StartScope } from './start.js';

/** What every process of Rewind shares: where it keeps its data and how it serves NBD. */
export interface ProcessOptions {
  dataDir: string;
  /** NBD on TCP; undefined serves NBD only on the Unix socket of `nbdSecurity`. */
  nbd: Endpoint | undefined;
  /** Unix socket, STARTTLS and access rules of the NBD server. */
  nbdSecurity?: NbdSecurity;
  /** Refuse to start when the data directory or a secret file is open to others. */
  strictPermissions?: boolean;
  quiet?: boolean;
  /** HTTPS for the HTTP API (--http-tls-cert, --http-tls-key); the key is checked as private. */
  httpTls?: HttpTlsFiles;
}

export interface HttpTlsFiles {
  certFile: string;
  keyFile: string;
}

/** The archive of a manager, as the flags or the config file give it. */
export interface ArchiveRunOptions {
  url: string;
  keyFile?: string;
  s3Endpoint?: string;
  s3PathStyle?: boolean;
  s3Region?: string;
  /** Refuse to start unless the store enforces object lock (probed before anything is kept). */
  requireObjectLock?: boolean;
  /** Bound on DATA/archive-cache, where objects for old points are fetched to. */
  cacheBytesMax: number;
  batchBytesMax: number;
  batchMs: number;
  /** The archive's own retention policy (parsed at the edge). */
  policy?: ArchivePolicy;
  /** A full image this long after the newest (undefined: the default, 24h); null: off. */
  fullEveryMs?: number | null;
}

/**
 * The archive's store opened and its key loaded: a key file that is missing, unsafe or not a
 * key refuses the start (objects are never stored in plain when a key was asked for). Opening
 * makes no request (a store unreachable now is waited for by the archiver), except when object
 * lock is required: then the store is probed, and a store that does not enforce it, or cannot be
 * reached to find out, refuses the start.
 */
async function openArchive(
  options: ArchiveRunOptions,
  log: ReturnType<typeof makeLog>,
): Promise<ArchiveSettings> {
  const key = options.keyFile === undefined ? undefined : await loadArchiveKey(options.keyFile);
  const store = await openStore(options.url, {
    ...(options.s3Endpoint !== undefined ? { s3Endpoint: options.s3Endpoint } : {}),
    ...(options.s3PathStyle !== undefined ? { s3PathStyle: options.s3PathStyle } : {}),
    ...(options.s3Region !== undefined ? { region: options.s3Region } : {}),
    ...(options.requireObjectLock === true ? { requireObjectLock: true } : {}),
  });
  log(
    'info',
    `archive: ${store.url}, encryption ${key ? 'on' : 'off'}${options.requireObjectLock === true ? ', object lock enforced (probed)' : ''}`,
  );
  return {
    store,
    key,
    batchBytesMax: options.batchBytesMax,
    batchMs: options.batchMs,
    cacheBytesMax: options.cacheBytesMax,
    ...(options.policy ? { policy: options.policy } : {}),
    ...(options.fullEveryMs !== undefined ? { fullEveryMs: options.fullEveryMs } : {}),
  };
}

/**
 * `rewind archive rebuild`: a manager's catalog and replica recreated in `dataDir` from the
 * archive alone; the store is opened and the key loaded as for a manager with --archive.
 */
export async function rebuildArchive(options: {
  archive: Pick<ArchiveRunOptions, 'url' | 'keyFile' | 's3Endpoint' | 's3PathStyle' | 's3Region'>;
  dataDir: string;
  volumeSetId?: string;
  onProgress?: (progress: RebuildProgress) => void;
}): Promise<RebuildResult> {
  const archive = options.archive;
  const key = archive.keyFile === undefined ? undefined : await loadArchiveKey(archive.keyFile);
  const store = await openStore(archive.url, {
    ...(archive.s3Endpoint !== undefined ? { s3Endpoint: archive.s3Endpoint } : {}),
    ...(archive.s3PathStyle !== undefined ? { s3PathStyle: archive.s3PathStyle } : {}),
    ...(archive.s3Region !== undefined ? { region: archive.s3Region } : {}),
  });
  try {
    return await rebuildFromArchive({
      store,
      key,
      dataDir: path.resolve(options.dataDir),
      ...(options.volumeSetId !== undefined ? { volumeSetId: options.volumeSetId } : {}),
      ...(options.onProgress ? { onProgress: options.onProgress } : {}),
    });
  } finally {
    await store.close();
  }
}

export interface UpOptions extends ProcessOptions {
  http: Endpoint;
  volumes: VolumeSpec[];
  sealBytes: number;
  sealMs: number;
  spoolBytes?: number;
  /** Retention settings given at start (the rest as stored, or the defaults). */
  retention?: PolicyText;
  /** The only directory image exports write to (default DATA/exports). */
  exportDir?: string;
  archive?: ArchiveRunOptions;
}

export interface Running {
  /** The NBD TCP address, when NBD listens on TCP. */
  nbdAddress: Endpoint | undefined;
  /** How NBD is served (TCP, Unix socket, TLS mode), to print the URIs clients use. */
  nbdServing: Pick<NbdServing, 'tcp' | 'unixPath' | 'tlsMode'>;
  httpAddress: string;
  /** The console's URL (with #token=); '' for an agent. */
  consoleUrl: string;
  /** Where the HTTP API's admin token is (absent for an agent, or a token given in-process). */
  apiTokenFile?: string;
  agent: Agent | undefined;
  manager: Manager | undefined;
  close(): Promise<void>;
}

export function makeLog(
  quiet: boolean,
): (level: 'info' | 'warn' | 'error', message: string, fields?: object) => void {
  const logger = pino({ level: quiet ? 'warn' : 'info' }, logDestination(logFormat()));
  return (level, message, fields) => logger[level](fields ?? {}, message);
}

/**
 * Before anything is created: the NBD plan checked (listeners, TLS credentials, access rules), a
 * private umask, the data directory and key files checked for group or other access
 * (SECURITY.md); then the data directory is locked (StartScope).
 */
async function prepareStart(
  options: ProcessOptions,
  command: string,
  log: ReturnType<typeof makeLog>,
): Promise<{ plan: NbdPlan; scope: StartScope }> {
  const plan = planNbd(options.nbd, options.nbdSecurity);
  makeProcessPrivate();
  await checkPrivate({
    dataDir: options.dataDir,
    secretFiles: [
      ...nbdSecretFiles(options.nbdSecurity),
      ...(options.httpTls ? [options.httpTls.keyFile] : []),
    ],
    strict: options.strictPermissions ?? false,
    log,
  });
  return { plan, scope: await StartScope.open(options.dataDir, command, log) };
}

/**
 * `rewind up`. The volume list and the NBD plan are checked and the data directory locked before
 * anything is created; a start that fails later closes what it opened and leaves no data
 * directory it made.
 */
export async function startUp(options: UpOptions): Promise<Running> {
  const log = makeLog(options.quiet ?? false);
  checkVolumes(options.dataDir, options.volumes);
  const { plan, scope } = await prepareStart(options, 'rewind up', log);
  return scope.run(() => openUp(options, plan, scope, log));
}

async function openUp(
  options: UpOptions,
  plan: NbdPlan,
  scope: StartScope,
  log: ReturnType<typeof makeLog>,
): Promise<Running> {
  const token = await localToken(options.dataDir);
  const nbdRef: { server?: NbdServer } = {};
  // Agent and manager share the process and the data directory: sealed segments are handed over
  // by name (the manager reads and links the agent's file) rather than sent over the link.
  const manager = await openManager({
    dataDir: options.dataDir,
    token,
    log,
    nbdRef,
    localSpoolDir: agentSpoolDir(options.dataDir),
    ...(options.retention ? { retention: options.retention } : {}),
    ...(options.exportDir !== undefined ? { exportDir: options.exportDir } : {}),
    ...(options.archive ? { archive: options.archive } : {}),
  });
  scope.onFailure('manager', () => manager.close());
  const link = await manager.listen('127.0.0.1', 0);
  const { agent, nbd, serving } = await openAgent(
    options,
    plan,
    { host: '127.0.0.1', port: link.port, token, localFiles: true },
    log,
    [() => manager.exports()],
    scope,
  );
  nbdRef.server = nbd;
  // Every call needs a token, loopback included: any local user can reach 127.0.0.1.
  const apiToken = await loadOrCreateSecret(apiTokenFile(options.dataDir));
  const api = await listenOn('HTTP API', '--http', options.http, () =>
    startApi(manager, options.http.host, options.http.port, apiToken, {
      role: 'up',
      nbd: serving.tcp ?? null,
      ...httpTls(options, log),
    }),
  );
  return {
    nbdAddress: serving.tcp,
    nbdServing: serving,
    httpAddress: api.address,
    consoleUrl: consoleUrl(api.address, apiToken),
    apiTokenFile: apiTokenFile(options.dataDir),
    agent,
    manager,
    async close() {
      await api.app.close();
      await nbd.close();
      await agent.close();
      await manager.close();
      scope.release();
    },
  };
}

/**
 * Opens the agent and the NBD server for its production exports (plus `moreExports`, the views in
 * `rewind up`); exports the agent has taken offline refuse new clients and drop connected ones.
 */
async function openAgent(
  options: Pick<UpOptions, 'dataDir' | 'volumes' | 'sealBytes' | 'sealMs' | 'spoolBytes'>,
  plan: NbdPlan,
  manager: ShipperTarget,
  log: ReturnType<typeof makeLog>,
  moreExports: (() => ExportBackend[])[],
  scope: StartScope,
): Promise<{ agent: Agent; nbd: NbdServer; serving: NbdServing }> {
  const agent = await Agent.open({
    dataDir: options.dataDir,
    volumes: options.volumes,
    sealBytes: options.sealBytes,
    sealMs: options.sealMs,
    ...(options.spoolBytes !== undefined ? { spoolBytes: options.spoolBytes } : {}),
    manager,
    log,
  });
  scope.onFailure('agent', () => agent.close());
  const agentExports = agent.exports();
  const serving = await serveNbd(
    new CombinedRegistry([() => agentExports, ...moreExports], (name) => agent.refusal(name)),
    plan,
    log,
  );
  const nbd = serving.server;
  agent.onOffline = (names) => names.forEach((name) => nbd.disconnectExport(name));
  agent.clientCount = (name) => nbd.connectionCount(name);
  scope.onFailure('NBD server', () => nbd.close());
  return { agent, nbd, serving };
}

/**
 * Opens a manager whose removed views drop their NBD clients on the server set in `nbdRef` later.
 */
async function openManager(options: {
  dataDir: string;
  token: string;
  tls?: { cert: Buffer; key: Buffer };
  log: ReturnType<typeof makeLog>;
  nbdRef: { server?: NbdServer };
  localSpoolDir?: string;
  retention?: PolicyText;
  exportDir?: string;
  archive?: ArchiveRunOptions;
}): Promise<Manager> {
  const { nbdRef, archive, ...rest } = options;
  const settings = archive ? await openArchive(archive, options.log) : undefined;
  try {
    return await Manager.open({
      ...rest,
      ...(settings ? { archive: settings } : {}),
      onExportsChanged: (removed) => {
        for (const name of removed) nbdRef.server?.disconnectExport(name);
      },
    });
  } catch (error) {
    rethrowIfBug(error);
    await settings?.store.close();
    throw error;
  }
}

/** A secret kept in `file` (mode 0600), created on first use so a restart reuses it. */
async function loadOrCreateSecret(file: string): Promise<string> {
  if (fs.existsSync(file)) return fs.readFileSync(file, 'utf8').trim();
  const token = randomBytes(24).toString('hex');
  await writeFileDurable(file, token);
  fs.chmodSync(file, 0o600);
  return token;
}

/** The token of the in-process agent-manager link. */
function localToken(dataDir: string): Promise<string> {
  return loadOrCreateSecret(path.join(dataDir, 'link-token'));
}

/**
 * The API's TLS credentials, read at start; off loopback without them, a warning (the token
 * would cross the network in clear text).
 */
function httpTls(
  options: Pick<UpOptions, 'http' | 'httpTls'>,
  log: ReturnType<typeof makeLog>,
): { tls?: { cert: Buffer; key: Buffer } } {
  if (!options.httpTls) {
    if (!isLoopback(options.http.host))
      log(
        'warn',
        `the HTTP API listens on ${options.http.host} without TLS: API tokens cross the network in clear text; give --http-tls-cert and --http-tls-key`,
      );
    return {};
  }
  const read = (file: string, what: string): Buffer => {
    try {
      return fs.readFileSync(file);
    } catch (error) {
      rethrowIfBug(error);
      throw new RewindError('REWIND_CONFIG', `cannot read ${what} ${file}: ${errorMessage(error)}`);
    }
  };
  const tls = {
    cert: read(options.httpTls.certFile, '--http-tls-cert'),
    key: read(options.httpTls.keyFile, '--http-tls-key'),
  };
  try {
    createSecureContext(tls); // a malformed file, or a key that is not the certificate's
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError(
      'REWIND_CONFIG',
      `--http-tls-cert/--http-tls-key: ${errorMessage(error)}`,
      {
        hint: 'give the PEM certificate chain and the private key that belongs to it',
      },
    );
  }
  return { tls };
}

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The HTTP API's admin token file of a data directory (created at the first start). */
export function apiTokenFile(dataDir: string): string {
  return path.join(dataDir, 'api-token');
}

export interface ManagerRunOptions extends ProcessOptions {
  listen: Endpoint;
  http: Endpoint;
  token: string;
  /** HTTP API token; by default one is created in DATA/api-token. */
  apiToken?: string;
  tls?: { cert: Buffer; key: Buffer };
  retention?: PolicyText;
  /** The only directory image exports write to (default DATA/exports). */
  exportDir?: string;
  archive?: ArchiveRunOptions;
}

/** `rewind manager`: receives segments from an agent, serves views over NBD and the HTTP API. */
export async function startManager(
  options: ManagerRunOptions,
): Promise<Running & { linkAddress: Endpoint }> {
  const log = makeLog(options.quiet ?? false);
  const { plan, scope } = await prepareStart(options, 'rewind manager', log);
  return scope.run(() => openManagerRun(options, plan, scope, log));
}

async function openManagerRun(
  options: ManagerRunOptions,
  plan: NbdPlan,
  scope: StartScope,
  log: ReturnType<typeof makeLog>,
): Promise<Running & { linkAddress: Endpoint }> {
  const nbdRef: { server?: NbdServer } = {};
  const manager = await openManager({
    dataDir: options.dataDir,
    token: options.token,
    log,
    nbdRef,
    ...(options.tls ? { tls: options.tls } : {}),
    ...(options.retention ? { retention: options.retention } : {}),
    ...(options.exportDir !== undefined ? { exportDir: options.exportDir } : {}),
    ...(options.archive ? { archive: options.archive } : {}),
  });
  scope.onFailure('manager', () => manager.close());
  const linkAddress = await listenOn('agent link', '--listen', options.listen, () =>
    manager.listen(options.listen.host, options.listen.port),
  );
  const serving = await serveNbd(new CombinedRegistry([() => manager.exports()]), plan, log);
  const nbd = serving.server;
  nbdRef.server = nbd;
  scope.onFailure('NBD server', () => nbd.close());
  const apiToken = options.apiToken ?? (await loadOrCreateSecret(apiTokenFile(options.dataDir)));
  const api = await listenOn('HTTP API', '--http', options.http, () =>
    startApi(manager, options.http.host, options.http.port, apiToken, {
      role: 'manager',
      nbd: serving.tcp ?? null,
      ...httpTls(options, log),
    }),
  );
  return {
    nbdAddress: serving.tcp,
    nbdServing: serving,
    httpAddress: api.address,
    consoleUrl: consoleUrl(api.address, apiToken),
    ...(options.apiToken === undefined ? { apiTokenFile: apiTokenFile(options.dataDir) } : {}),
    linkAddress,
    agent: undefined,
    manager,
    async close() {
      await api.app.close();
      await nbd.close();
      await manager.close();
      scope.release();
    },
  };
}

export interface AgentRunOptions extends ProcessOptions {
  manager: Endpoint;
  token: string;
  tlsCa?: Buffer;
  volumes: VolumeSpec[];
  sealBytes: number;
  sealMs: number;
  spoolBytes?: number;
}

/** `rewind agent`: protects production volumes and ships their segments to a remote manager. */
export async function startAgent(options: AgentRunOptions): Promise<Running> {
  const log = makeLog(options.quiet ?? false);
  checkVolumes(options.dataDir, options.volumes);
  const { plan, scope } = await prepareStart(options, 'rewind agent', log);
  return scope.run(() => openAgentRun(options, plan, scope, log));
}

async function openAgentRun(
  options: AgentRunOptions,
  plan: NbdPlan,
  scope: StartScope,
  log: ReturnType<typeof makeLog>,
): Promise<Running> {
  const manager = {
    ...options.manager,
    token: options.token,
    ...(options.tlsCa ? { tls: { ca: options.tlsCa.toString('utf8') } } : {}),
  };
  const { agent, nbd, serving } = await openAgent(options, plan, manager, log, [], scope);
  return {
    nbdAddress: serving.tcp,
    nbdServing: serving,
    httpAddress: '',
    consoleUrl: '',
    agent,
    manager: undefined,
    async close() {
      await nbd.close();
      await agent.close();
      scope.release();
    },
  };
}
