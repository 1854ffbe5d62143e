// Application-consistent bookmarks (`rewind bookmark NAME --freeze DIR --pre CMD --post CMD
// --wait`): a pre hook, fsfreeze of each filesystem, a seal that waits for its commit, the thaw,
// the bookmark at the sealed seq, a post hook. The frozen window is bounded, and the thaw happens
// whatever fails, Ctrl-C included (only a SIGKILL of this process can leave a filesystem frozen).
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { errorMessage, rethrowIfBug, RewindError } from '../core/index.js';

/** Longest a filesystem stays frozen by default (freeze, seal, commit); VSS allows 10 s too. */
export const FROZEN_MS_DEFAULT = 10_000;
/** Longest a pre or post hook may run by default. */
export const HOOK_MS_DEFAULT = 60_000;
/** Attempts at `fsfreeze -u` before the thaw is reported as failed (each a separate command). */
const THAW_ATTEMPTS_MAX = 3;
const THAW_RETRY_MS = 200;
/** The bookmark name rule of the manager, checked before anything is frozen. */
const BOOKMARK_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export interface ConsistentBookmark {
  name: string;
  /** Mount points to freeze, in this order (thawed in reverse). */
  freeze: string[];
  pre: string | undefined;
  post: string | undefined;
  frozenMsMax: number;
  hookMsMax: number;
  /** Seals and waits until the seal is committed, within `timeoutMs`; resolves its last seq. */
  sealCommitted: (timeoutMs: number, signal: AbortSignal) => Promise<number>;
  /** Names `seq`. */
  bookmark: (seq: number) => Promise<{ name: string; seq: number; time: string }>;
}

export interface ConsistentBookmarkResult {
  name: string;
  seq: number;
  time: string;
  /** How long the filesystems were frozen (0 when none was). */
  frozenMs: number;
}

/**
 * Takes the bookmark. Ctrl-C, SIGTERM and SIGHUP abort it (the filesystems are thawed and the
 * post hook runs first), and it then fails with "interrupted".
 */
export async function takeConsistentBookmark(
  options: ConsistentBookmark,
): Promise<ConsistentBookmarkResult> {
  checkBeforeFreezing(options);
  const abort = new AbortController();
  let signalled: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals): void => {
    signalled ??= signal;
    abort.abort(new RewindError('REWIND_SHUTDOWN', `interrupted by ${signal}`));
  };
  const signals: NodeJS.Signals[] = ['SIGINT', 'SIGTERM', 'SIGHUP'];
  for (const signal of signals) process.on(signal, onSignal);
  try {
    return await withHooks(options, abort.signal);
  } finally {
    for (const signal of signals) process.off(signal, onSignal);
    if (signalled) process.exitCode = signalled === 'SIGINT' ? 130 : 143;
  }
}

/** pre, then the frozen part, then post (whenever pre was run, even if it failed). */
async function withHooks(
  options: ConsistentBookmark,
  signal: AbortSignal,
): Promise<ConsistentBookmarkResult> {
  let result: ConsistentBookmarkResult | undefined;
  try {
    if (options.pre !== undefined)
      await runHook('pre', options.pre, { REWIND_BOOKMARK: options.name }, options, signal);
    result = await frozenSeal(options, signal);
    return result;
  } finally {
    if (options.post !== undefined && (options.pre !== undefined || result !== undefined))
      await runHook(
        'post',
        options.post,
        {
          REWIND_BOOKMARK: options.name,
          REWIND_BOOKMARK_RESULT: result ? 'ok' : 'failed',
          ...(result ? { REWIND_BOOKMARK_SEQ: String(result.seq) } : {}),
        },
        options,
        undefined, // the post hook is the undo of the pre hook: it runs even after Ctrl-C
      );
  }
}

/** Freeze, seal and wait for the commit, thaw (always), then name the sealed seq. */
async function frozenSeal(
  options: ConsistentBookmark,
  signal: AbortSignal,
): Promise<ConsistentBookmarkResult> {
  const frozen: string[] = [];
  const startedMs = Date.now();
  let frozenMs = 0;
  // The bound covers the freezes, the seal and its commit: past it everything is thawed. (A
  // timer of our own, not AbortSignal.timeout/any: Node may collect those signals before they
  // fire, and then the wait would never end.)
  const bound = new AbortController();
  const deadline = bound.signal;
  const onInterrupt = (): void => bound.abort(signal.reason);
  signal.addEventListener('abort', onInterrupt, { once: true });
  if (signal.aborted) onInterrupt();
  const timer = setTimeout(() => bound.abort(frozenTooLong(options)), options.frozenMsMax);
  let seq: number;
  try {
    for (const mountpoint of options.freeze) {
      await runCommand('fsfreeze', ['-f', mountpoint], undefined);
      frozen.push(mountpoint);
      if (deadline.aborted) throw boundExceeded(options, deadline);
    }
    const remainingMs = Math.max(1, options.frozenMsMax - (Date.now() - startedMs));
    try {
      seq = await options.sealCommitted(remainingMs, deadline);
    } catch (error) {
      if (deadline.aborted) throw boundExceeded(options, deadline);
      throw error;
    }
  } finally {
    clearTimeout(timer);
    signal.removeEventListener('abort', onInterrupt);
    await thawAll(frozen);
    if (frozen.length > 0) frozenMs = Date.now() - startedMs;
  }
  signal.throwIfAborted();
  const bookmark = await options.bookmark(seq);
  return { ...bookmark, frozenMs };
}

/** Why the frozen part stopped: interrupted (a signal) or past --freeze-ms. */
function boundExceeded(options: ConsistentBookmark, deadline: AbortSignal): unknown {
  const reason: unknown = deadline.reason;
  return reason instanceof RewindError ? reason : frozenTooLong(options);
}

function frozenTooLong(options: ConsistentBookmark): RewindError {
  return new RewindError(
    'REWIND_BUSY',
    `no bookmark taken: the seal was not committed within --freeze-ms ${options.frozenMsMax} (the filesystems are thawed again)`,
    { hint: 'rewind status shows the lag; give a larger --freeze-ms if commits are slow' },
  );
}

/** Thaws newest first; every one is tried, and a thaw that keeps failing is an error. */
async function thawAll(frozen: string[]): Promise<void> {
  const failures: string[] = [];
  for (const mountpoint of [...frozen].reverse()) {
    for (let attempt = 1; ; attempt += 1) {
      try {
        await runCommand('fsfreeze', ['-u', mountpoint], undefined);
        break;
      } catch (error) {
        rethrowIfBug(error);
        if (attempt < THAW_ATTEMPTS_MAX) {
          await new Promise((resolve) => setTimeout(resolve, THAW_RETRY_MS));
          continue;
        }
        failures.push(`${mountpoint}: ${errorMessage(error)}`);
        break;
      }
    }
  }
  if (failures.length > 0)
    throw new RewindError('REWIND_IO', `could not thaw ${failures.join('; ')}`, {
      hint: `run fsfreeze -u ${frozen.join(' ')} now: writes to a frozen filesystem wait`,
    });
}

async function runHook(
  which: 'pre' | 'post',
  command: string,
  env: Record<string, string>,
  options: ConsistentBookmark,
  signal: AbortSignal | undefined,
): Promise<void> {
  try {
    await runCommand('sh', ['-c', command], signal, {
      env: { ...process.env, REWIND_HOOK: which, ...env },
      timeoutMs: options.hookMsMax,
      inheritOutput: true,
    });
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError('REWIND_IO', `--${which} hook failed: ${errorMessage(error)}`, {
      hint:
        which === 'pre'
          ? 'no bookmark was taken; the post hook ran'
          : 'the bookmark (if taken) stands; check what the post hook was to undo',
    });
  }
}

/**
 * Runs a command to its end; rejects with its status and stderr. `signal` or the timeout kill
 * it (its whole process group: a hook's children too).
 */
function runCommand(
  command: string,
  args: string[],
  signal: AbortSignal | undefined,
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number; inheritOutput?: boolean } = {},
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: options.env ?? process.env,
      detached: true,
      stdio: ['ignore', options.inheritOutput ? 'inherit' : 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      if (options.inheritOutput) process.stderr.write(chunk);
    });
    let why: string | undefined;
    const kill = (reason: string): void => {
      why ??= reason;
      if (child.pid !== undefined && child.exitCode === null) process.kill(-child.pid, 'SIGTERM');
    };
    const timer =
      options.timeoutMs === undefined
        ? undefined
        : setTimeout(() => kill(`still running after ${options.timeoutMs} ms`), options.timeoutMs);
    const onAbort = (): void => kill('interrupted');
    signal?.addEventListener('abort', onAbort, { once: true });
    if (signal?.aborted) onAbort();
    child.once('error', (error) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      reject(error);
    });
    child.once('close', (status, killedBy) => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (status === 0 && why === undefined) return resolve();
      const detail = stderr.trim().split('\n').pop() ?? '';
      reject(
        new RewindError(
          'REWIND_IO',
          `${command} ${args.join(' ')}: ${why ?? (killedBy ? `killed by ${killedBy}` : `exit status ${status}`)}${detail && !options.inheritOutput ? ` (${detail})` : ''}`,
        ),
      );
    });
  });
}

/** Refusals that need nothing frozen: the name, the bounds, and that each DIR is a mount point. */
function checkBeforeFreezing(options: ConsistentBookmark): void {
  if (!BOOKMARK_NAME.test(options.name))
    throw new RewindError('REWIND_BAD_ARGUMENT', `bookmark name "${options.name}" is invalid`, {
      hint: 'use letters, digits, dot, dash and underscore (at most 64)',
    });
  const mountpoints = mountPoints(fs.readFileSync('/proc/self/mountinfo', 'utf8'));
  for (const dir of options.freeze) {
    const real = fs.realpathSync(dir);
    // FIFREEZE on any directory freezes the filesystem holding it: a typo must not freeze "/".
    if (!mountpoints.has(real))
      throw new RewindError('REWIND_BAD_ARGUMENT', `--freeze ${dir} is not a mount point`, {
        hint: 'give the directory a filesystem is mounted on (findmnt lists them)',
      });
    if (real === '/')
      throw new RewindError('REWIND_BAD_ARGUMENT', '--freeze / would freeze the root filesystem', {
        hint: 'freeze the filesystems of the protected volumes only',
      });
  }
  if (new Set(options.freeze.map((d) => fs.realpathSync(d))).size !== options.freeze.length)
    throw new RewindError('REWIND_BAD_ARGUMENT', 'a mount point is given twice to --freeze');
}

/** The mount points listed in a /proc/self/mountinfo text (field 5, octal escapes undone). */
export function mountPoints(mountinfo: string): Set<string> {
  const out = new Set<string>();
  for (const line of mountinfo.split('\n')) {
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    out.add(
      path.normalize(
        field.replace(/\\([0-7]{3})/g, (_, octal: string) =>
          String.fromCharCode(parseInt(octal, 8)),
        ),
      ),
    );
  }
  return out;
}
