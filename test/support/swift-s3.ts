// A real S3-compatible server on loopback for the archive's tests: OpenStack Swift (all in one:
// proxy with s3api and tempauth, account, container and object servers) with memcached, under the
// test's own directory, started and stopped by this file (test/support/swift_s3.py does Swift's
// side). Every process dies with the test: stop() kills them, an exit hook SIGKILLs what is left,
// and the launcher asks the kernel to kill them if the test process itself is killed.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from './process.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const LAUNCHER = path.join(ROOT, 'test/support/swift_s3.py');
/** Debian's python, where python3-swift lives (a pyenv python3 first in PATH would not have it). */
const PYTHON = '/usr/bin/python3';
const SERVERS = ['proxy', 'account', 'container', 'object'] as const;
type Server = (typeof SERVERS)[number];
const READY_MS_MAX = 30_000;
const STOP_MS_MAX = 5_000;
/** Output kept per process for a failure's message. */
const OUTPUT_BYTES_MAX = 16 * 1024;

export const SWIFT_S3_ACCESS_KEY = 'test:tester';
export const SWIFT_S3_SECRET_KEY = 'testing';
export const SWIFT_S3_REGION = 'us-east-1';

/** Why these tests cannot run here (undefined: they can). */
export function swiftS3Missing(): string | undefined {
  const swift = spawnSync(PYTHON, ['-c', 'import swift'], { stdio: 'ignore' });
  if (swift.status !== 0) return `python3-swift is not installed (scripts/install.sh installs it)`;
  const memcached = spawnSync('sh', ['-c', 'command -v memcached'], { stdio: 'ignore' });
  if (memcached.status !== 0) return 'memcached is not installed (scripts/install.sh installs it)';
  return undefined;
}

interface Running {
  child: ChildProcess;
  output: () => string;
}

const everyChild = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of everyChild) child.kill('SIGKILL');
});

export class SwiftS3 {
  readonly endpoint: string;
  private readonly running = new Map<Server | 'memcached', Running>();

  private constructor(
    readonly dir: string,
    private readonly ports: Record<Server | 'memcached', number>,
    private readonly ownsDir: boolean,
  ) {
    this.endpoint = `http://127.0.0.1:${ports.proxy}`;
  }

  /** Configures and starts a fresh server under `dir` (a new temporary directory by default). */
  static async start(options: { dir?: string } = {}): Promise<SwiftS3> {
    const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-swift-'));
    const ports = {
      proxy: await freePort(),
      account: await freePort(),
      container: await freePort(),
      object: await freePort(),
      memcached: await freePort(),
    };
    const init = spawnSync(
      PYTHON,
      [
        LAUNCHER,
        'init',
        dir,
        ...[ports.proxy, ports.account, ports.container, ports.object, ports.memcached].map(String),
      ],
      { encoding: 'utf8', timeout: 20_000 },
    );
    if (init.status !== 0) throw new Error(`swift init failed: ${init.stderr}${init.stdout}`);
    const swift = new SwiftS3(dir, ports, options.dir === undefined);
    try {
      await swift.startAll();
    } catch (error) {
      await swift.stop();
      throw error;
    }
    return swift;
  }

  /** Environment for the SDK's default credential chain, as an operator would set it. */
  env(): Record<string, string> {
    return {
      AWS_ACCESS_KEY_ID: SWIFT_S3_ACCESS_KEY,
      AWS_SECRET_ACCESS_KEY: SWIFT_S3_SECRET_KEY,
      AWS_REGION: SWIFT_S3_REGION,
    };
  }

  /** Starts every process that is not running and waits until the server answers. */
  async startAll(): Promise<void> {
    if (!this.running.has('memcached')) {
      const user = process.getuid?.() === 0 ? ['-u', 'root'] : [];
      this.spawnProcess('memcached', [
        LAUNCHER,
        'exec',
        'memcached',
        '-l',
        '127.0.0.1',
        '-p',
        String(this.ports.memcached),
        '-U',
        '0',
        '-m',
        '64',
        ...user,
      ]);
    }
    for (const server of SERVERS) {
      if (!this.running.has(server)) this.spawnProcess(server, [LAUNCHER, 'run', this.dir, server]);
    }
    await this.waitReady();
  }

  /** Stops the S3 endpoint only (the proxy): connections are refused until startProxy(). */
  async stopProxy(): Promise<void> {
    await this.stopProcess('proxy');
  }

  async startProxy(): Promise<void> {
    await this.startAll();
  }

  /** Freezes the proxy (SIGSTOP): connections are accepted by the kernel and never answered. */
  pauseProxy(): void {
    this.running.get('proxy')?.child.kill('SIGSTOP');
  }

  resumeProxy(): void {
    this.running.get('proxy')?.child.kill('SIGCONT');
  }

  /** Stops every process (SIGTERM, then SIGKILL after STOP_MS_MAX) and removes its own directory. */
  async stop(): Promise<void> {
    for (const name of [...this.running.keys()]) await this.stopProcess(name);
    if (this.ownsDir) fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** What the processes printed, for a failure's message. */
  output(): string {
    return [...this.running].map(([name, p]) => `--- ${name}\n${p.output()}`).join('\n');
  }

  private spawnProcess(name: Server | 'memcached', args: string[]): void {
    const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    everyChild.add(child);
    let out = '';
    const keep = (chunk: Buffer): void => {
      out = (out + chunk.toString()).slice(-OUTPUT_BYTES_MAX);
    };
    child.stdout?.on('data', keep);
    child.stderr?.on('data', keep);
    child.once('exit', () => everyChild.delete(child));
    this.running.set(name, { child, output: () => out });
  }

  private async stopProcess(name: Server | 'memcached'): Promise<void> {
    const running = this.running.get(name);
    if (running === undefined) return;
    this.running.delete(name);
    const { child } = running;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill('SIGCONT'); // a paused process cannot act on SIGTERM
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), STOP_MS_MAX);
    await exited;
    clearTimeout(timer);
  }

  /** Ready: every server's /healthcheck says OK and tempauth gives a token that reads the account. */
  private async waitReady(): Promise<void> {
    const deadline = Date.now() + READY_MS_MAX;
    let last = '';
    while (Date.now() < deadline) {
      for (const [name, p] of this.running) {
        if (p.child.exitCode !== null) {
          throw new Error(`swift ${name} exited with ${p.child.exitCode}:\n${p.output()}`);
        }
      }
      try {
        for (const server of SERVERS) {
          const answer = await fetch(`http://127.0.0.1:${this.ports[server]}/healthcheck`, {
            signal: AbortSignal.timeout(2000),
          });
          const text = await answer.text();
          if (text !== 'OK') throw new Error(`${server} healthcheck: ${answer.status} ${text}`);
        }
        const auth = await fetch(`${this.endpoint}/auth/v1.0`, {
          headers: { 'X-Auth-User': SWIFT_S3_ACCESS_KEY, 'X-Auth-Key': SWIFT_S3_SECRET_KEY },
          signal: AbortSignal.timeout(2000),
        });
        const token = auth.headers.get('x-auth-token');
        const storage = auth.headers.get('x-storage-url');
        if (token === null || storage === null) throw new Error(`tempauth: ${auth.status}`);
        const account = await fetch(storage, {
          method: 'HEAD',
          headers: { 'X-Auth-Token': token },
          signal: AbortSignal.timeout(2000),
        });
        if (account.status < 200 || account.status > 299) {
          throw new Error(`HEAD account: ${account.status}`);
        }
        return;
      } catch (error) {
        last = String(error);
      }
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    throw new Error(`swift not ready after ${READY_MS_MAX} ms (${last}):\n${this.output()}`);
  }
}
