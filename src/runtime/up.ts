// Assembles the processes: `rewind up` (agent + manager in one process, linked over the same
// authenticated connection a split deployment uses), `rewind agent` and `rewind manager`.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import pino from 'pino';
import { Agent, agentSpoolDir, type ShipperTarget, type VolumeSpec } from '../agent/index.js';
import { consoleUrl, startApi } from '../api/index.js';
import { Manager, type PolicyText } from '../manager/index.js';
import { NbdServer } from '../nbd/index.js';
import type { ExportBackend } from '../nbd/index.js';
import { ensureDir, writeFileDurable } from '../platform/index.js';
import { CombinedRegistry } from './registry.js';

export interface Endpoint {
  host: string;
  port: number;
}

export interface UpOptions {
  dataDir: string;
  nbd: Endpoint;
  http: Endpoint;
  volumes: VolumeSpec[];
  sealBytes: number;
  sealMs: number;
  spoolBytes?: number;
  quiet?: boolean;
  /** Retention settings given at start (the rest as stored, or the defaults). */
  retention?: PolicyText;
}

export interface Running {
  nbdAddress: Endpoint;
  httpAddress: string;
  /** The console's URL (with #token= when the API needs one); '' for an agent. */
  consoleUrl: string;
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

export async function startUp(options: UpOptions): Promise<Running> {
  const log = makeLog(options.quiet ?? false);
  await ensureDir(options.dataDir);
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
  const link = await manager.listen('127.0.0.1', 0);
  const { agent, nbd, nbdAddress } = await openAgent(
    options,
    { host: '127.0.0.1', port: link.port, token, localFiles: true },
    log,
    [() => manager.exports()],
  );
  nbdRef.server = nbd;
  // On loopback the API is as open as the machine; anywhere else it needs the token.
  const apiToken = isLoopback(options.http.host)
    ? undefined
    : await loadOrCreateSecret(apiTokenFile(options.dataDir));
  const api = await startApi(manager, options.http.host, options.http.port, apiToken, {
    role: 'up',
    nbd: nbdAddress,
  });
  return {
    nbdAddress,
    httpAddress: api.address,
    consoleUrl: consoleUrl(api.address, apiToken),
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
  options: Pick<UpOptions, 'dataDir' | 'nbd' | 'volumes' | 'sealBytes' | 'sealMs' | 'spoolBytes'>,
  manager: ShipperTarget,
  log: ReturnType<typeof makeLog>,
  moreExports: (() => ExportBackend[])[],
): Promise<{ agent: Agent; nbd: NbdServer; nbdAddress: Endpoint }> {
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
  const nbd = new NbdServer(
    new CombinedRegistry([() => agentExports, ...moreExports], (name) => agent.refusal(name)),
    { log },
  );
  agent.onOffline = (names) => names.forEach((name) => nbd.disconnectExport(name));
  const nbdAddress = await nbd.listen(options.nbd.host, options.nbd.port);
  return { agent, nbd, nbdAddress };
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

export interface ManagerRunOptions {
  dataDir: string;
  listen: Endpoint;
  nbd: Endpoint;
  http: Endpoint;
  token: string;
  /** HTTP API token; by default one is created in DATA/api-token. */
  apiToken?: string;
  tls?: { cert: Buffer; key: Buffer };
  quiet?: boolean;
  retention?: PolicyText;
}

/** `rewind manager`: receives segments from an agent, serves views over NBD and the HTTP API. */
export async function startManager(
  options: ManagerRunOptions,
): Promise<Running & { linkAddress: Endpoint }> {
  const log = makeLog(options.quiet ?? false);
  await ensureDir(options.dataDir);
  const nbdRef: { server?: NbdServer } = {};
  const manager = await openManager({
    dataDir: options.dataDir,
    token: options.token,
    log,
    nbdRef,
    ...(options.tls ? { tls: options.tls } : {}),
    ...(options.retention ? { retention: options.retention } : {}),
  });
  const linkAddress = await manager.listen(options.listen.host, options.listen.port);
  const nbd = new NbdServer(new CombinedRegistry([() => manager.exports()]), { log });
  nbdRef.server = nbd;
  const nbdAddress = await nbd.listen(options.nbd.host, options.nbd.port);
  // The manager's API always needs a token (it is the backup host's control plane).
  const apiToken = options.apiToken ?? (await loadOrCreateSecret(apiTokenFile(options.dataDir)));
  const api = await startApi(manager, options.http.host, options.http.port, apiToken, {
    role: 'manager',
    nbd: nbdAddress,
  });
  return {
    nbdAddress,
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
    },
  };
}

export interface AgentRunOptions {
  dataDir: string;
  nbd: Endpoint;
  manager: Endpoint;
  token: string;
  tlsCa?: Buffer;
  volumes: VolumeSpec[];
  sealBytes: number;
  sealMs: number;
  spoolBytes?: number;
  quiet?: boolean;
}

/** `rewind agent`: protects production volumes and ships their segments to a remote manager. */
export async function startAgent(options: AgentRunOptions): Promise<Running> {
  const log = makeLog(options.quiet ?? false);
  await ensureDir(options.dataDir);
  const manager = {
    ...options.manager,
    token: options.token,
    ...(options.tlsCa ? { tls: { ca: options.tlsCa.toString('utf8') } } : {}),
  };
  const { agent, nbd, nbdAddress } = await openAgent(options, manager, log, []);
  return {
    nbdAddress,
    httpAddress: '',
    consoleUrl: '',
    agent,
    manager: undefined,
    async close() {
      await nbd.close();
      await agent.close();
    },
  };
}
