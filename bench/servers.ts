// One runner per server. The peers (nbdkit's file plugin and qemu-nbd) serve a fresh sparse file
// in a temp dir on the same disk as Rewind's data dir; Rewind runs as `rewind up` (agent and
// manager in one process, its default deployment) or split into `rewind manager` and
// `rewind agent`. Every runner waits until its server is ready and leaves stopping it to the scope.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, nbdReachable, type Managed, type Scope } from './processes.js';
import { RewindApi } from './rewind-api.js';

const REWIND_BIN = fileURLToPath(new URL('../../bin/rewind.js', import.meta.url));
const READY_TIMEOUT_MS = 30_000;

export type ServerKind = 'nbdkit' | 'qemu-nbd' | 'rewind';
export const SERVER_KINDS: readonly ServerKind[] = ['nbdkit', 'qemu-nbd', 'rewind'];

export interface NbdEndpoint {
  uri: string;
  process: Managed;
}

export interface VolumeSize {
  name: string;
  sizeBytes: number;
}

/** A sparse file of `sizeBytes` in a new temp dir of the scope. */
function sparseFile(scope: Scope, label: string, sizeBytes: number): string {
  const file = path.join(scope.dir(label), 'disk.img');
  fs.writeFileSync(file, '');
  fs.truncateSync(file, sizeBytes);
  return file;
}

async function waitNbd(server: Managed, uri: string): Promise<void> {
  await server.waitUntil(`NBD export ${uri}`, () => nbdReachable(uri), READY_TIMEOUT_MS);
}

/** nbdkit's file plugin with its defaults (parallel thread model, 16 threads, no cache flags). */
export async function startNbdkit(scope: Scope, sizeBytes: number): Promise<NbdEndpoint> {
  const file = sparseFile(scope, 'nbdkit', sizeBytes);
  const port = await freePort();
  const server = scope.start('nbdkit', 'nbdkit', [
    '--foreground',
    '--exit-with-parent',
    '--ipaddr=127.0.0.1',
    `--port=${port}`,
    'file',
    file,
  ]);
  const uri = `nbd://127.0.0.1:${port}`;
  await waitNbd(server, uri);
  return { uri, process: server };
}

/** qemu-nbd on a raw file: writeback cache and thread aio (its defaults), persistent, 8 clients. */
export async function startQemuNbd(scope: Scope, sizeBytes: number): Promise<NbdEndpoint> {
  const file = sparseFile(scope, 'qemu-nbd', sizeBytes);
  const port = await freePort();
  const server = scope.start('qemu-nbd', 'qemu-nbd', [
    '--format=raw',
    '--bind=127.0.0.1',
    `--port=${port}`,
    '--persistent',
    '--shared=8',
    '--cache=writeback',
    '--aio=threads',
    file,
  ]);
  const uri = `nbd://127.0.0.1:${port}`;
  await waitNbd(server, uri);
  return { uri, process: server };
}

export interface RewindUp {
  process: Managed;
  dataDir: string;
  api: RewindApi;
  uri(exportName: string): string;
}

const volumeArgs = (volumes: readonly VolumeSize[]): string[] =>
  volumes.flatMap((v) => ['--volume', `${v.name}:${v.sizeBytes}`]);

/** `rewind up` with default seal size and age, on a fresh data dir. */
export async function startRewindUp(
  scope: Scope,
  volumes: readonly VolumeSize[],
): Promise<RewindUp> {
  const dataDir = scope.dir('rewind');
  const [nbdPort, httpPort] = [await freePort(), await freePort()];
  const args = [
    REWIND_BIN,
    'up',
    '--data',
    dataDir,
    '--nbd',
    `127.0.0.1:${nbdPort}`,
    '--http',
    `127.0.0.1:${httpPort}`,
    ...volumeArgs(volumes),
  ];
  const server = scope.start('rewind up', process.execPath, args);
  await server.waitUntil('its API line', () => server.output.includes('API: '), READY_TIMEOUT_MS);
  return {
    process: server,
    dataDir,
    api: new RewindApi(`http://127.0.0.1:${httpPort}`, dataDir),
    uri: (name) => `nbd://127.0.0.1:${nbdPort}/${name}`,
  };
}

export interface SplitLink {
  token: string;
  linkPort: number;
}

/** A token and a port for the agent-manager link, chosen before either half starts. */
export async function splitLink(): Promise<SplitLink> {
  return { token: randomBytes(16).toString('hex'), linkPort: await freePort() };
}

/** `rewind manager` listening for the agent on `link.linkPort`. */
export async function startRewindManager(scope: Scope, link: SplitLink): Promise<RewindUp> {
  const dataDir = scope.dir('manager');
  const [nbdPort, httpPort] = [await freePort(), await freePort()];
  const args = [
    REWIND_BIN,
    'manager',
    '--data',
    dataDir,
    '--listen',
    `127.0.0.1:${link.linkPort}`,
    '--nbd',
    `127.0.0.1:${nbdPort}`,
    '--http',
    `127.0.0.1:${httpPort}`,
    '--token',
    link.token,
  ];
  const server = scope.start('rewind manager', process.execPath, args);
  await server.waitUntil('its API line', () => server.output.includes('API: '), READY_TIMEOUT_MS);
  return {
    process: server,
    dataDir,
    api: new RewindApi(`http://127.0.0.1:${httpPort}`, dataDir),
    uri: (name) => `nbd://127.0.0.1:${nbdPort}/${name}`,
  };
}

export interface RewindAgent {
  process: Managed;
  dataDir: string;
  uri(volume: string): string;
}

/** `rewind agent` shipping to `link.linkPort` (which may have no manager yet: it retries). */
export async function startRewindAgent(
  scope: Scope,
  link: SplitLink,
  volumes: readonly VolumeSize[],
): Promise<RewindAgent> {
  const dataDir = scope.dir('agent');
  const nbdPort = await freePort();
  const args = [
    REWIND_BIN,
    'agent',
    '--manager',
    `127.0.0.1:${link.linkPort}`,
    '--data',
    dataDir,
    '--nbd',
    `127.0.0.1:${nbdPort}`,
    '--token',
    link.token,
    ...volumeArgs(volumes),
  ];
  const server = scope.start('rewind agent', process.execPath, args);
  const last = volumes[volumes.length - 1];
  await server.waitUntil(
    'its volume lines',
    () => last !== undefined && server.output.includes(`volume ${last.name}: nbd://`),
    READY_TIMEOUT_MS,
  );
  return { process: server, dataDir, uri: (name) => `nbd://127.0.0.1:${nbdPort}/${name}` };
}

/** The ingest runner of each server: a fresh one serving one volume of `sizeBytes`. */
export const INGEST_RUNNERS: Record<
  ServerKind,
  (scope: Scope, sizeBytes: number) => Promise<NbdEndpoint>
> = {
  nbdkit: startNbdkit,
  'qemu-nbd': startQemuNbd,
  rewind: async (scope, sizeBytes) => {
    const up = await startRewindUp(scope, [{ name: 'v', sizeBytes }]);
    return { uri: up.uri('v'), process: up.process };
  },
};
