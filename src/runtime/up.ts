// Assembles the processes: `rewind up` (agent + manager in one process, linked over the same
// authenticated connection a split deployment uses), `rewind agent` and `rewind manager`.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { Agent, agentSpoolDir, type ShipperTarget, type VolumeSpec } from '../agent/index.js';
import { startApi } from '../api/index.js';
import { Manager, type PolicyText } from '../manager/index.js';
import type { NbdServer, ExportBackend } from '../nbd/index.js';
import { ensureDir, writeFileDurable } from '../platform/index.js';
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
}

export interface UpOptions extends ProcessOptions {
  http: Endpoint;
  volumes: VolumeSpec[];
  sealBytes: number;
  sealMs: number;
  spoolBytes?: number;
  /** Retention settings given at start (the rest as stored, or the defaults). */
  retention?: PolicyText;
}

export interface Running {
  /** The NBD TCP address, when NBD listens on TCP. */
  nbdAddress: Endpoint | undefined;
  /** How NBD is served (TCP, Unix socket, TLS mode), to print the URIs clients use. */
  nbdServing: Pick<NbdServing, 'tcp' | 'unixPath' | 'tlsMode'>;
  httpAddress: string;
  /** Where the HTTP API token is, when the API requires one. */
  apiTokenFile?: string;
  agent: Agent | undefined;
  manager: Manager | undefined;
  close(): Promise<void>;
}

export function makeLog(
  quiet: boolean,
): (level: 'info' | 'warn' | 'error', message: string, fields?: object) => void {
  const logger = pino({ level: quiet ? 'warn' : 'info' }, pino.destination(2));
  return (level, message, fields) => logger[level](fields ?? {}, message);
}

/** Before anything is created: a private umask, the data directory checked (SECURITY.md). */
async function prepareDataDir(
  options: ProcessOptions,
  log: ReturnType<typeof makeLog>,
): Promise<void> {
  makeProcessPrivate();
  await checkPrivate({
    dataDir: options.dataDir,
    secretFiles: nbdSecretFiles(options.nbdSecurity),
    strict: options.strictPermissions ?? false,
    log,
  });
  await ensureDir(options.dataDir);
}

/** Runs `start`; if it fails, closes what was opened before it (last first) and rethrows. */
async function orClose<T>(
  opened: readonly { close(): Promise<void> }[],
  start: () => Promise<T>,
): Promise<T> {
  try {
    return await start();
  } catch (error) {
    for (const item of [...opened].reverse()) await item.close();
    throw error;
  }
}

export async function startUp(options: UpOptions): Promise<Running> {
  const log = makeLog(options.quiet ?? false);
  const plan = planNbd(options.nbd, options.nbdSecurity);
  await prepareDataDir(options, log);
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
  });
  const { agent, nbd, serving } = await orClose([manager], async () => {
    const link = await manager.listen('127.0.0.1', 0);
    return openAgent(
      options,
      plan,
      { host: '127.0.0.1', port: link.port, token, localFiles: true },
      log,
      [() => manager.exports()],
    );
  });
  nbdRef.server = nbd;
  // On loopback the API is as open as the machine; anywhere else it needs the token.
  const apiToken = isLoopback(options.http.host)
    ? undefined
    : await loadOrCreateSecret(apiTokenFile(options.dataDir));
  const api = await orClose([manager, agent, nbd], () =>
    startApi(manager, options.http.host, options.http.port, apiToken),
  );
  return {
    nbdAddress: serving.tcp,
    nbdServing: serving,
    httpAddress: api.address,
    ...(apiToken ? { apiTokenFile: apiTokenFile(options.dataDir) } : {}),
    agent,
    manager,
    async close() {
      await api.app.close();
      await nbd.close();
      await agent.close();
      await manager.close();
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
  const agentExports = agent.exports();
  const serving = await orClose([agent], () =>
    serveNbd(
      new CombinedRegistry([() => agentExports, ...moreExports], (name) => agent.refusal(name)),
      plan,
      log,
    ),
  );
  const nbd = serving.server;
  agent.onOffline = (names) => names.forEach((name) => nbd.disconnectExport(name));
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
}): Promise<Manager> {
  const { nbdRef, ...rest } = options;
  return Manager.open({
    ...rest,
    onExportsChanged: (removed) => {
      for (const name of removed) nbdRef.server?.disconnectExport(name);
    },
  });
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

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The HTTP API token file of a data directory (created when the API needs a token). */
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
}

/** `rewind manager`: receives segments from an agent, serves views over NBD and the HTTP API. */
export async function startManager(
  options: ManagerRunOptions,
): Promise<Running & { linkAddress: Endpoint }> {
  const log = makeLog(options.quiet ?? false);
  const plan = planNbd(options.nbd, options.nbdSecurity);
  await prepareDataDir(options, log);
  const nbdRef: { server?: NbdServer } = {};
  const manager = await openManager({
    dataDir: options.dataDir,
    token: options.token,
    log,
    nbdRef,
    ...(options.tls ? { tls: options.tls } : {}),
    ...(options.retention ? { retention: options.retention } : {}),
  });
  const { linkAddress, serving } = await orClose([manager], async () => ({
    linkAddress: await manager.listen(options.listen.host, options.listen.port),
    serving: await serveNbd(new CombinedRegistry([() => manager.exports()]), plan, log),
  }));
  const nbd = serving.server;
  nbdRef.server = nbd;
  // The manager's API always needs a token (it is the backup host's control plane).
  const apiToken = options.apiToken ?? (await loadOrCreateSecret(apiTokenFile(options.dataDir)));
  const api = await orClose([manager, nbd], () =>
    startApi(manager, options.http.host, options.http.port, apiToken),
  );
  return {
    nbdAddress: serving.tcp,
    nbdServing: serving,
    httpAddress: api.address,
    ...(options.apiToken === undefined ? { apiTokenFile: apiTokenFile(options.dataDir) } : {}),
    linkAddress,
    agent: undefined,
    manager,
    async close() {
      await api.app.close();
      await nbd.close();
      await manager.close();
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
  const plan = planNbd(options.nbd, options.nbdSecurity);
  await prepareDataDir(options, log);
  const manager = {
    ...options.manager,
    token: options.token,
    ...(options.tlsCa ? { tls: { ca: options.tlsCa.toString('utf8') } } : {}),
  };
  const { agent, nbd, serving } = await openAgent(options, plan, manager, log, []);
  return {
    nbdAddress: serving.tcp,
    nbdServing: serving,
    httpAddress: '',
    agent,
    manager: undefined,
    async close() {
      await nbd.close();
      await agent.close();
    },
  };
}
