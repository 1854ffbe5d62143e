// One long-lived shell that runs util-linux tools (fallocate, blkdiscard) for this process, so the
// write path never forks: spawning a child from a Node process of a few hundred MiB blocked the
// event loop 20-170 ms on this machine kind (fork copies the page tables), and the agent needs
// fallocate for every new segment file and every large trim. Requests go down a pipe one line per
// field and are answered one line each, in order.
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import type { Socket } from 'node:net';
import { assert, RewindError } from '../core/index.js';

/** The tools the helper may run. */
export type HelperTool = 'fallocate' | 'blkdiscard';
const TOOLS: ReadonlySet<string> = new Set<HelperTool>(['fallocate', 'blkdiscard']);
/** Requests waiting for an answer at most; more is a caller that does not wait for its own. */
const PENDING_MAX = 256;

// Reads the tool's name, then its arguments until an empty line; answers "ok" or "fail MESSAGE".
const SCRIPT = [
  'while IFS= read -r tool; do',
  '  set --',
  '  while IFS= read -r arg; do [ -z "$arg" ] && break; set -- "$@" "$arg"; done',
  '  case "$tool" in fallocate|blkdiscard) ;; *) echo "fail unknown tool"; continue;; esac',
  '  if out=$("$tool" "$@" 2>&1); then echo ok; else echo "fail $(echo "$out" | tr "\\n" " ")"; fi',
  'done',
].join('\n');

interface Waiter {
  what: string;
  resolve: () => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

class ToolHelper {
  private child: ChildProcessWithoutNullStreams | undefined;
  private readonly waiting: Waiter[] = [];
  private output = '';

  run(tool: HelperTool, args: readonly string[], timeoutMs: number): Promise<void> {
    assert(TOOLS.has(tool), 'a tool the helper runs');
    for (const arg of args) assert(arg.length > 0 && !arg.includes('\n'), 'one line per argument');
    if (this.waiting.length >= PENDING_MAX)
      return Promise.reject(new RewindError('REWIND_BUSY', `${PENDING_MAX} tool runs waiting`));
    const child = this.child ?? this.spawn();
    const what = `${tool} ${args.join(' ')}`;
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.stop(`${what}: no answer in ${timeoutMs} ms`), timeoutMs);
      this.waiting.push({ what, resolve, reject, timer });
      child.stdin.write(`${tool}\n${args.map((arg) => `${arg}\n`).join('')}\n`);
    });
  }

  private spawn(): ChildProcessWithoutNullStreams {
    const child = spawn('/bin/sh', ['-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child = child;
    this.output = '';
    // An idle helper does not keep the process alive (a request's timer does while it waits).
    child.unref();
    for (const pipe of [child.stdin, child.stdout, child.stderr])
      (pipe as unknown as Socket).unref();
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (text: string) => this.onOutput(text));
    child.stderr.resume(); // the shell itself says nothing; never let a full pipe block it
    // Only this child's own end stops the helper (a replaced one's late exit changes nothing).
    const lost = (why: string): void => {
      if (this.child === child) this.stop(why);
    };
    child.stdin.on('error', (error) => lost(`its input failed: ${error.message}`));
    child.on('error', (error) => lost(`it could not run: ${error.message}`));
    child.on('exit', (code, signal) => lost(`it exited (${signal ?? code ?? '?'})`));
    return child;
  }

  private onOutput(text: string): void {
    this.output += text;
    for (let newline = this.output.indexOf('\n'); newline >= 0;) {
      const line = this.output.slice(0, newline);
      this.output = this.output.slice(newline + 1);
      this.answer(line);
      newline = this.output.indexOf('\n');
    }
  }

  private answer(line: string): void {
    const waiter = this.waiting.shift();
    assert(waiter !== undefined, 'the tool helper answers requests only');
    clearTimeout(waiter.timer);
    if (line === 'ok') waiter.resolve();
    else waiter.reject(new Error(`${waiter.what} failed: ${line.replace(/^fail /, '')}`));
  }

  /** The helper is gone or stuck: everything waiting fails, and the next run starts a new one. */
  private stop(why: string): void {
    const child = this.child;
    this.child = undefined;
    if (child !== undefined && child.exitCode === null) child.kill('SIGKILL');
    for (const waiter of this.waiting.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(new Error(`the tool helper stopped, ${why} (running ${waiter.what})`));
    }
  }
}

const helper = new ToolHelper();

/** Runs `tool` with `args` through the helper; rejects with the tool's message when it fails. */
export function runTool(
  tool: HelperTool,
  args: readonly string[],
  timeoutMs: number,
): Promise<void> {
  return helper.run(tool, args, timeoutMs);
}
