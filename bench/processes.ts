// Child processes and temporary directories of the benchmark. Every server is spawned through a
// Scope, waits until it is ready, and is stopped (SIGTERM, then SIGKILL after a grace period) when
// its scope closes, even when the measurement failed; every tool (fio, nbdcopy, nbdinfo) runs with
// a timeout. A last-resort exit handler SIGKILLs whatever is still registered and removes the temp
// dirs, so the benchmark never leaves a process or a directory behind.
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const OUTPUT_KEPT_CHARS = 64 * 1024;
const READY_POLL_MS = 50;

const alive = new Set<ChildProcess>();
const tempDirs = new Set<string>();
process.on('exit', () => {
  for (const child of alive) child.kill('SIGKILL');
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

/** A free loopback TCP port: listen on port 0, note the port, close. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

/** A spawned long-running process with its recent output. */
export class Managed {
  readonly name: string;
  readonly child: ChildProcess;
  private text = '';
  private readonly exited: Promise<void>;

  constructor(name: string, command: string, args: string[]) {
    this.name = name;
    this.child = spawn(command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    alive.add(this.child);
    this.exited = new Promise((resolve) => {
      this.child.once('exit', () => {
        alive.delete(this.child);
        resolve();
      });
      this.child.once('error', (error) => {
        this.append(`spawn failed: ${error.message}\n`);
        alive.delete(this.child);
        resolve();
      });
    });
    this.child.stdout?.on('data', (chunk: Buffer) => this.append(chunk.toString()));
    this.child.stderr?.on('data', (chunk: Buffer) => this.append(chunk.toString()));
  }

  get pid(): number {
    if (this.child.pid === undefined)
      throw new Error(`${this.name} has no pid (spawn failed): ${this.output}`);
    return this.child.pid;
  }

  get output(): string {
    return this.text;
  }

  /** The last warnings and errors among the recent output (pino lines at level warn or above, `rewind:` lines). */
  complaints(max = 5): string[] {
    const found: string[] = [];
    for (const line of this.text.split('\n')) {
      if (line.startsWith('rewind:')) found.push(line);
      else if (/^\{"level":(4|5|6)0,/.test(line)) {
        try {
          found.push(String((JSON.parse(line) as { msg?: unknown }).msg));
        } catch {
          found.push(line); // cut short at the start of the kept output
        }
      }
    }
    return found.slice(-max);
  }

  get running(): boolean {
    return (
      this.child.exitCode === null && this.child.signalCode === null && this.child.pid !== undefined
    );
  }

  private append(chunk: string): void {
    this.text = (this.text + chunk).slice(-OUTPUT_KEPT_CHARS);
  }

  /** Resolves once `ready()` holds; throws if the process exits or `timeoutMs` passes first. */
  async waitUntil(
    what: string,
    ready: () => boolean | Promise<boolean>,
    timeoutMs: number,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (!this.running)
        throw new Error(`${this.name} exited before ${what}: ${this.output.slice(-2000)}`);
      if (await ready()) return;
      if (Date.now() > deadline)
        throw new Error(
          `${this.name}: no ${what} within ${timeoutMs} ms: ${this.output.slice(-2000)}`,
        );
      await sleep(READY_POLL_MS);
    }
  }

  /** Peak resident set size so far (VmHWM), in bytes. */
  peakRssBytes(): number {
    const status = fs.readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
    if (!match) throw new Error(`no VmHWM in /proc/${this.pid}/status`);
    return Number(match[1]) * 1024;
  }

  /** SIGTERM, then SIGKILL if it has not exited after `graceMs`. */
  async stop(graceMs: number): Promise<void> {
    if (!this.running) return this.exited;
    this.child.kill('SIGTERM');
    const timer = setTimeout(() => this.child.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** Owns the processes and directories of one measurement; close() releases them all. */
export class Scope {
  private readonly processes: Managed[] = [];
  private readonly dirs: string[] = [];
  private readonly graceMs: number;

  constructor(graceMs: number) {
    this.graceMs = graceMs;
  }

  /** A fresh directory under `base` (the system temp dir), removed when the scope closes. */
  dir(label: string, base = os.tmpdir()): string {
    const dir = fs.mkdtempSync(path.join(base, `rewind-bench-${label}-`));
    this.dirs.push(dir);
    tempDirs.add(dir);
    return dir;
  }

  start(name: string, command: string, args: string[]): Managed {
    const managed = new Managed(name, command, args);
    this.processes.push(managed);
    return managed;
  }

  /** What the processes of this scope logged as warnings or errors, one line each. */
  complaints(): string[] {
    return this.processes.flatMap((managed) =>
      managed.complaints().map((line) => `${managed.name}: ${line}`),
    );
  }

  /** Stops processes in reverse start order, then removes the directories. */
  async close(): Promise<void> {
    for (const managed of [...this.processes].reverse()) await managed.stop(this.graceMs);
    for (const dir of this.dirs) {
      fs.rmSync(dir, { recursive: true, force: true });
      tempDirs.delete(dir);
    }
  }
}

/** Runs `work` with a new scope and closes the scope afterwards, whatever happened. */
export async function withScope<T>(
  graceMs: number,
  work: (scope: Scope) => Promise<T>,
): Promise<T> {
  const scope = new Scope(graceMs);
  try {
    return await work(scope);
  } catch (error) {
    // A failed measurement says what the servers complained about (a full disk, a stopped write path).
    const said = scope.complaints();
    if (said.length === 0 || !(error instanceof Error)) throw error;
    throw new Error(
      `${error.message}\nthe servers logged:\n${said.map((line) => `  ${line}`).join('\n')}`,
      { cause: error },
    );
  } finally {
    await scope.close();
  }
}

export interface ToolResult {
  status: number | null;
  stdout: string;
  stderr: string;
  seconds: number;
}

/** Runs a command to completion (killed with SIGKILL after `timeoutMs`) and collects its output. */
export function runTool(command: string, args: string[], timeoutMs: number): Promise<ToolResult> {
  const began = performance.now();
  return new Promise((resolve) => {
    const child = spawn(command, args, {
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: timeoutMs,
      killSignal: 'SIGKILL',
    });
    alive.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on(
      'data',
      (chunk: Buffer) => (stdout = (stdout + chunk.toString()).slice(-OUTPUT_KEPT_CHARS)),
    );
    child.stderr.on(
      'data',
      (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-OUTPUT_KEPT_CHARS)),
    );
    child.once('error', (error) => {
      alive.delete(child);
      resolve({ status: null, stdout, stderr: `${stderr}${error.message}`, seconds: 0 });
    });
    child.once('close', (status) => {
      alive.delete(child);
      resolve({ status, stdout, stderr, seconds: (performance.now() - began) / 1000 });
    });
  });
}

/** Like runTool, but throws with the tool's output when it fails. */
export async function runToolOrThrow(
  command: string,
  args: string[],
  timeoutMs: number,
): Promise<ToolResult> {
  const result = await runTool(command, args, timeoutMs);
  if (result.status !== 0)
    throw new Error(
      `${command} ${args.join(' ')} exited with ${result.status}: ${result.stderr.slice(-2000)} ${result.stdout.slice(-1000)}`,
    );
  return result;
}

/** True when `nbdinfo` can connect to `uri` and read its size. */
export async function nbdReachable(uri: string): Promise<boolean> {
  return (await runTool('nbdinfo', ['--size', uri], 5000)).status === 0;
}

/** The commands of `commands` that are not on the PATH. */
export async function missingTools(commands: readonly string[]): Promise<string[]> {
  const missing: string[] = [];
  for (const command of commands)
    if ((await runTool('which', [command], 5000)).status !== 0) missing.push(command);
  return missing;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Sends SIGKILL to every child still running (for a signal that ends the benchmark). */
export function killAll(): void {
  for (const child of alive) child.kill('SIGKILL');
}
