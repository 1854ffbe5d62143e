// Block devices for tests that need a real kernel filesystem: what they need to run (root, FUSE,
// loop devices, the tools), a loop device over a plain image file, nbdfuse + loop over an NBD
// export (waiting for nbdfuse's pid file, so losetup never races it), and clean-up of both.
// Everything runs asynchronously: a test that serves NBD from its own process must not block the
// event loop that answers nbdfuse.
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** Why a test that needs root, /dev/fuse, loop devices and `tools` cannot run here, or false. */
export function blockDeviceSkipReason(tools: string[]): string | false {
  const missing = tools.filter((t) => spawnSync('which', [t]).status !== 0);
  if (missing.length > 0) return `missing ${missing.join(', ')}`;
  if (process.getuid?.() !== 0) return 'needs root for losetup and mount';
  if (!fs.existsSync('/dev/fuse')) return 'needs /dev/fuse';
  if (!fs.existsSync('/dev/loop-control')) return 'needs loop devices (/dev/loop-control)';
  return false;
}

export async function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return (await execFileAsync(cmd, args, { timeout: timeoutMs, maxBuffer: 64 << 20 })).stdout;
}

export async function runStatus(
  cmd: string,
  args: string[],
  options: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<{ status: number; stdout: string; stderr: string }> {
  try {
    const out = await execFileAsync(cmd, args, {
      timeout: options.timeoutMs ?? 60_000,
      maxBuffer: 64 << 20,
      ...(options.env ? { env: options.env } : {}),
    });
    return { status: 0, stdout: out.stdout, stderr: out.stderr };
  } catch (error) {
    const e = error as { code?: unknown; stdout?: string; stderr?: string; signal?: string };
    return {
      status: typeof e.code === 'number' ? e.code : -1,
      stdout: e.stdout ?? '',
      stderr: `${e.stderr ?? ''}${e.signal ? ` (killed by ${e.signal})` : ''}`,
    };
  }
}

/** A loop device over a sparse image file of `sizeBytes`. */
export async function loopOverFile(file: string, sizeBytes: number): Promise<string> {
  fs.writeFileSync(file, '');
  fs.truncateSync(file, sizeBytes);
  return (await run('losetup', ['-f', '--show', file])).trim();
}

/** nbdfuse on `dir` for `uri`, ready (its pid file written), and a loop device over its file. */
export async function loopOverNbd(
  dir: string,
  uri: string,
): Promise<{ loop: string; detach: () => Promise<void> }> {
  fs.mkdirSync(dir, { recursive: true });
  const pidFile = `${dir}.pid`;
  const fuse = spawn('nbdfuse', ['-P', pidFile, dir, uri], { stdio: 'ignore' });
  for (let waited = 0; !fs.existsSync(pidFile); waited += 20) {
    assert.ok(waited < 15_000 && fuse.exitCode === null, `nbdfuse serves ${uri}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  const loop = (await run('losetup', ['-f', '--show', path.join(dir, 'nbd')])).trim();
  return {
    loop,
    detach: async () => {
      await runStatus('losetup', ['-d', loop]);
      await runStatus('fusermount3', ['-u', dir]);
      if (fuse.exitCode === null && fuse.signalCode === null) {
        const exited = new Promise((r) => fuse.once('exit', r));
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (fuse.exitCode === null) fuse.kill('SIGKILL');
      }
    },
  };
}

/** True when the filesystem mounted at `mountpoint` is frozen (fsfreeze -f is refused as busy). */
export async function isFrozen(mountpoint: string): Promise<boolean> {
  const freeze = await runStatus('fsfreeze', ['-f', mountpoint], { timeoutMs: 10_000 });
  if (freeze.status === 0) {
    await run('fsfreeze', ['-u', mountpoint], 10_000);
    return false;
  }
  assert.match(freeze.stderr, /busy/i, `fsfreeze -f ${mountpoint}: ${freeze.stderr}`);
  return true;
}
