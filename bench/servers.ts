// One runner per server. The peers (nbdkit's file plugin and qemu-nbd) serve a fresh sparse file
// in a temp dir on the same disk as Rewind's data dir; Rewind runs as `rewind up` (agent and
// manager in one process, its default deployment) or split into `rewind manager` and
// `rewind agent`. Every runner waits until its server is ready and leaves stopping it to the scope.
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
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

/** Where a server's files go and what its image holds when it starts. */
export interface Placement {
  /** The directory its temp dirs are made in (the system temp dir, or a tmpfs). */
  base: string;
  /** A fresh sparse file, or one written whole once (zeroes, fsynced) before the server starts. */
  image: 'sparse' | 'written';
}

export const ON_DISK_SPARSE: Placement = { base: os.tmpdir(), image: 'sparse' };

/** Zeroes written over the whole image at this size per write. */
const FILL_CHUNK_BYTES = 1024 * 1024;

/** The image file of `sizeBytes` in a new temp dir of the scope, sparse or written once. */
function imageFile(scope: Scope, label: string, sizeBytes: number, placement: Placement): string {
  const file = path.join(scope.dir(label, placement.base), 'disk.img');
  fs.writeFileSync(file, '');
  if (placement.image === 'sparse') {
    fs.truncateSync(file, sizeBytes);
    return file;
  }
  // Every block allocated and written (what a volume in use looks like), then made durable so its
  // writeback does not run into the measurement.
  const fd = fs.openSync(file, 'r+');
  try {
    const zeroes = Buffer.alloc(FILL_CHUNK_BYTES);
    for (let at = 0; at < sizeBytes; at += FILL_CHUNK_BYTES)
      fs.writeSync(fd, zeroes, 0, Math.min(FILL_CHUNK_BYTES, sizeBytes - at), at);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

function sparseFile(scope: Scope, label: string, sizeBytes: number): string {
  return imageFile(scope, label, sizeBytes, ON_DISK_SPARSE);
}

async function waitNbd(server: Managed, uri: string): Promise<void> {
  await server.waitUntil(`NBD export ${uri}`, () => nbdReachable(uri), READY_TIMEOUT_MS);
}

/** nbdkit's file plugin with its defaults (parallel thread model, 16 threads, no cache flags). */
export async function startNbdkit(
  scope: Scope,
  sizeBytes: number,
  placement: Placement = ON_DISK_SPARSE,
): Promise<NbdEndpoint> {
  const file = imageFile(scope, 'nbdkit', sizeBytes, placement);
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

/** `rewind up` with default seal size and age (and `extraArgs`), on a fresh data dir. */
export async function startRewindUp(
  scope: Scope,
  volumes: readonly VolumeSize[],
  extraArgs: readonly string[] = [],
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
    ...extraArgs,
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

/**
 * `rewind agent` alone, the deployment with the manager on another host, here one that is not
 * reachable at all (nobody listens on its port): segments pile up in the spool, which is what the
 * agent does while its manager is away. Its data dir (spool, state, production image) is placed
 * like the peer's image; a written-once image is given by path (its first protection reads it
 * all and logs nothing, as it holds only zeroes).
 */
export async function startAgentAlone(
  scope: Scope,
  sizeBytes: number,
  placement: Placement,
): Promise<NbdEndpoint> {
  const dataDir = scope.dir('agent', placement.base);
  const volume =
    placement.image === 'sparse'
      ? `v:${sizeBytes}`
      : `v:${imageFile(scope, 'agent-image', sizeBytes, placement)}`;
  const [nbdPort, unreachablePort] = [await freePort(), await freePort()];
  const server = scope.start('rewind agent', process.execPath, [
    REWIND_BIN,
    'agent',
    '--manager',
    `127.0.0.1:${unreachablePort}`,
    '--data',
    dataDir,
    '--nbd',
    `127.0.0.1:${nbdPort}`,
    '--token',
    randomBytes(16).toString('hex'),
    '--volume',
    volume,
  ]);
  await server.waitUntil(
    'its volume line',
    () => server.output.includes('volume v: nbd://'),
    READY_TIMEOUT_MS,
  );
  return { uri: `nbd://127.0.0.1:${nbdPort}/v`, process: server };
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
