// What the fuzzer attacks. `memory`: an in-process NbdServer over a MemoryBackend (fast, and a thrown
// exception is caught as a violation); `memory-tls` and `memory-tls-on`: the same with STARTTLS
// (PSK) required, or offered. `rewind`: a real `rewind up` child process on a temporary data
// directory; its protected volume's bytes are in DATA/production/v.img, its views come from the
// replica. All serve a writable export and, after `freeze`, a read-only copy of it.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MemoryBackend, MemoryRegistry, NbdServer } from '../src/nbd/index.js';
import type { ExportInfo, FuzzTls, ServedExports } from './nbd-fuzz-handshake.js';
import type { Endpoint } from './nbd-fuzz-client.js';

export type TargetKind = 'memory' | 'memory-tls' | 'memory-tls-on' | 'rewind';
export const TARGET_KINDS: readonly TargetKind[] = [
  'memory',
  'memory-tls',
  'memory-tls-on',
  'rewind',
];

export interface Target {
  readonly endpoint: Endpoint;
  readonly writable: ExportInfo;
  /** How the target speaks TLS, if it does. */
  readonly tls?: FuzzTls;
  /** Copies the writable export's current content into a read-only export; returns what is served. */
  freeze(): Promise<ServedExports>;
  /** The writable export's stored bytes, read beside the server rather than through it. */
  readStored(offsetBytes: number, lengthBytes: number): Promise<Buffer>;
  /** An export holding what the server's history says the writable export holds now, if it keeps one. */
  latestFromHistory(): Promise<ExportInfo | undefined>;
  /** Errors the server logged, or why it is no longer running. */
  problems(): string[];
  close(): Promise<void>;
}

const VOLUME = 'v';

export function startTarget(kind: TargetKind, sizeBytes: number): Promise<Target> {
  switch (kind) {
    case 'memory':
      return startMemory(sizeBytes, undefined);
    case 'memory-tls':
      return startMemory(sizeBytes, 'require');
    case 'memory-tls-on':
      return startMemory(sizeBytes, 'on');
    case 'rewind':
      return startRewind(sizeBytes);
  }
}

/** The fuzzer's PSK identity and key (any key works: both sides are in this process). */
const FUZZ_PSK_IDENTITY = 'fuzzer';
const FUZZ_PSK_KEY = Buffer.alloc(32, 0x5f);

async function startMemory(
  sizeBytes: number,
  tlsMode: FuzzTls['mode'] | undefined,
): Promise<Target> {
  const problems: string[] = [];
  const volume = new MemoryBackend({ name: VOLUME, sizeBytes, description: 'fuzzed volume' });
  const registry = new MemoryRegistry([volume], VOLUME);
  const server = new NbdServer(registry, {
    log: (level, message, fields) => {
      if (level === 'error') problems.push(`${message} ${JSON.stringify(fields ?? {})}`);
    },
    ...(tlsMode === undefined
      ? {}
      : {
          tls: {
            mode: tlsMode,
            credentials: { kind: 'psk', keys: new Map([[FUZZ_PSK_IDENTITY, FUZZ_PSK_KEY]]) },
          },
        }),
  });
  const tls: FuzzTls | undefined =
    tlsMode === undefined
      ? undefined
      : {
          mode: tlsMode,
          client: {
            pskCallback: () => ({ identity: FUZZ_PSK_IDENTITY, psk: FUZZ_PSK_KEY }),
            checkServerIdentity: () => undefined,
          },
        };
  // The server runs in this process: an exception it throws from a socket handler lands here.
  const onUncaught = (error: Error): void => {
    problems.push(`uncaught exception in the server: ${error.stack ?? error.message}`);
  };
  process.on('uncaughtException', onUncaught);
  const endpoint = await server.listen('127.0.0.1', 0);
  const writable: ExportInfo = { name: VOLUME, sizeBytes, readOnly: false };
  return {
    endpoint,
    writable,
    ...(tls ? { tls } : {}),
    freeze: async () => {
      const frozen = new MemoryBackend({
        name: `${VOLUME}-frozen`,
        sizeBytes,
        readOnly: true,
        description: 'frozen copy',
      });
      frozen.writeSync(0, volume.readSync(0, sizeBytes));
      registry.add(frozen);
      const readOnly: ExportInfo = { name: frozen.name, sizeBytes, readOnly: true };
      return { all: [writable, readOnly], defaultName: VOLUME, writable, readOnly };
    },
    readStored: async (offsetBytes, lengthBytes) => volume.readSync(offsetBytes, lengthBytes),
    latestFromHistory: async () => undefined,
    problems: () => [...problems],
    close: async () => {
      await server.close();
      process.off('uncaughtException', onUncaught);
    },
  };
}

const BIN = fileURLToPath(new URL('../../bin/rewind.js', import.meta.url));
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 10_000;
/** pino's numeric level for "error"; "fatal" is above it. */
const PINO_ERROR = 50;

class RewindProcess {
  readonly problems: string[] = [];
  private stdout = '';
  private stderrTail = '';

  constructor(
    readonly child: ChildProcess,
    readonly dataDir: string,
  ) {
    child.stdout?.on('data', (chunk: Buffer) => (this.stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => this.onLog(chunk.toString()));
  }

  /** Waits for `rewind up` to print its NBD and API addresses. */
  async ready(): Promise<{ endpoint: Endpoint; api: string }> {
    const deadline = Date.now() + START_TIMEOUT_MS;
    for (;;) {
      const nbd = /volume v: nbd:\/\/([\d.]+):(\d+)\//.exec(this.stdout);
      const api = /API: (http:\/\/\S+)/.exec(this.stdout);
      if (nbd?.[1] && nbd[2] && api?.[1])
        return { endpoint: { host: nbd[1], port: Number(nbd[2]) }, api: api[1] };
      if (this.child.exitCode !== null || Date.now() > deadline)
        throw new Error(`rewind up did not start: ${this.stdout}${this.stderrTail}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async stop(): Promise<void> {
    if (this.running) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGTERM');
      const timer = setTimeout(() => this.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
      await exited;
      clearTimeout(timer);
    }
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }

  private onLog(text: string): void {
    this.stderrTail = (this.stderrTail + text).slice(-4000);
    for (const match of text.matchAll(/"level":(\d+)[^\n]*/g)) {
      if (Number(match[1]) >= PINO_ERROR) this.problems.push(match[0].slice(0, 500));
    }
  }
}

async function api<T>(
  base: string,
  token: string,
  method: string,
  route: string,
  body?: object,
): Promise<T> {
  const response = await fetch(`${base}${route}`, {
    method,
    headers: {
      authorization: `Bearer ${token}`,
      ...(body ? { 'content-type': 'application/json' } : {}),
    },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${route}: ${response.status} ${text}`);
  return JSON.parse(text) as T;
}

/** Seals what was written and opens a snapshot view of it; returns the view's export of the volume. */
async function snapshot(
  base: string,
  token: string,
  name: string,
  sizeBytes: number,
): Promise<ExportInfo> {
  const sealed = await api<{ seqLast: number }>(base, token, 'POST', '/api/seal', { wait: true });
  const view = await api<{ exports: string[] }>(base, token, 'POST', '/api/views', {
    name,
    kind: 'snapshot',
    at: String(sealed.seqLast),
  });
  const exportName = view.exports.find((candidate) => candidate.startsWith(`${VOLUME}@`));
  if (!exportName) throw new Error(`view ${name} has no export for ${VOLUME}`);
  return { name: exportName, sizeBytes, readOnly: true };
}

async function startRewind(sizeBytes: number): Promise<Target> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-nbd-fuzz-'));
  const args = [
    BIN,
    'up',
    '--data',
    dataDir,
    '--nbd',
    '127.0.0.1:0',
    '--http',
    '127.0.0.1:0',
    '--volume',
    `${VOLUME}:${sizeBytes}`,
  ];
  const rewind = new RewindProcess(
    spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] }),
    dataDir,
  );
  let started: { endpoint: Endpoint; api: string };
  try {
    started = await rewind.ready();
  } catch (error) {
    await rewind.stop();
    throw error;
  }
  const image = path.join(dataDir, 'production', `${VOLUME}.img`);
  // The API's admin token, which `rewind up` keeps in its data directory.
  const token = fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
  const writable: ExportInfo = { name: VOLUME, sizeBytes, readOnly: false };
  return {
    endpoint: started.endpoint,
    writable,
    freeze: async () => {
      const readOnly = await snapshot(started.api, token, 'fuzz-frozen', sizeBytes);
      return { all: [writable, readOnly], defaultName: VOLUME, writable, readOnly };
    },
    readStored: async (offsetBytes, lengthBytes) => {
      const handle = await fs.promises.open(image, 'r');
      try {
        const buffer = Buffer.alloc(lengthBytes);
        await handle.read(buffer, 0, lengthBytes, offsetBytes);
        return buffer;
      } finally {
        await handle.close();
      }
    },
    latestFromHistory: () => snapshot(started.api, token, 'fuzz-latest', sizeBytes),
    problems: () =>
      rewind.running
        ? [...rewind.problems]
        : [
            ...rewind.problems,
            `rewind up exited (code ${rewind.child.exitCode}, signal ${rewind.child.signalCode})`,
          ],
    close: () => rewind.stop(),
  };
}
