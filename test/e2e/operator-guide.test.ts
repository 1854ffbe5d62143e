// docs/OPERATOR-GUIDE.md runs as written: every ```sh block of the guide, in order, in one bash
// (set -euo pipefail), with `rewind` on PATH, against the real `rewind up` its first block starts
// (a block after `<!-- doc-test: service -->` is started in the background and waited for), with
// ext4 on nbdfuse + loop. A line `CMD   # -> TEXT` must print TEXT. It all runs in a private
// network namespace (the guide's default ports cannot meet another test's) and a private mount
// namespace with a tmpfs on /mnt (the guide's /mnt/... paths are its own), from a temporary
// directory, so the guide cannot drift from the tool again.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { blockDeviceSkipReason } from '../support/blockdev.js';
import { BIN } from '../support/process.js';

const GUIDE = path.resolve('docs/OPERATOR-GUIDE.md');
/** The whole walk-through (mkfs, two restores, clones) takes some 30 s here; this is its bound. */
const RUN_MS_MAX = 240_000;
const SERVICE_READY_S_MAX = 30;

const skip =
  blockDeviceSkipReason([
    'unshare',
    'ip',
    'nbdfuse',
    'losetup',
    'mkfs.ext4',
    'fsfreeze',
    'filefrag',
    'blkid',
    'fusermount3',
  ]) ||
  (spawnSync('unshare', ['--net', '--mount', 'true']).status !== 0
    ? 'unshare --net --mount is not permitted here'
    : false);

interface Block {
  line: number;
  service: boolean;
  lines: string[];
}

/** The ```sh blocks of a Markdown text, each with its line and whether it is a service. */
export function shellBlocks(markdown: string): Block[] {
  const blocks: Block[] = [];
  const lines = markdown.split('\n');
  for (let i = 0; i < lines.length; i++) {
    if (lines[i] !== '```sh') continue;
    const service = /<!-- doc-test: service -->/.test(lines[i - 1] ?? '');
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length && lines[j] !== '```'; j++) body.push(lines[j] as string);
    assert.ok(j < lines.length, `the block at line ${i + 1} is closed`);
    blocks.push({ line: i + 1, service, lines: body });
    i = j;
  }
  return blocks;
}

const quote = (text: string): string => `'${text.replace(/'/g, `'\\''`)}'`;

/** One line of the guide as bash: as written, plus the check of its `# -> TEXT`. */
function scriptLine(line: string, where: string): string {
  const claim = /^(.*?)\s+# -> (.*)$/.exec(line);
  if (!claim) return line;
  const [, command, expected] = claim as unknown as [string, string, string];
  return [
    `__out=$(${command})`,
    `printf '%s\\n' "$__out"`,
    `case "$__out" in *${quote(expected)}*) ;; *) echo "doc-test: ${where}: expected output containing ${quote(expected).replace(/"/g, '\\"')}" >&2; exit 1;; esac`,
  ].join('\n');
}

function script(blocks: Block[], dir: string): string {
  const out = [
    'set -euo pipefail',
    'ip link set lo up',
    'mount -t tmpfs guide-mnt /mnt',
    `cd ${quote(dir)}`,
    // Whatever the guide left attached is taken down, whether it succeeded or not.
    `cleanup() { for m in $(grep -o ' /mnt/[^ ]*' /proc/self/mountinfo | sort -r); do umount -l "$m" || true; done;` +
      ` for l in $(losetup -n -O NAME,BACK-FILE | awk -v d=${quote(dir)} 'index($2, d) == 1 {print $1}'); do losetup -d "$l" || true; done;` +
      ` for f in $(grep -o " ${dir}/run/fuse/[^ ]*" /proc/self/mountinfo); do fusermount3 -u -z "$f" || true; done;` +
      ' if [ -n "${UP_PID:-}" ]; then kill "$UP_PID" 2>/dev/null || true; wait "$UP_PID" || true; fi; }',
    'trap cleanup EXIT',
  ];
  for (const block of blocks) {
    const where = `docs/OPERATOR-GUIDE.md line ${block.line}`;
    out.push(`echo "== ${where}"`);
    if (block.service) {
      assert.equal(block.lines.length, 1, `${where}: a service block is one command`);
      out.push(
        `${block.lines[0]} > service.log 2>&1 &`,
        'UP_PID=$!',
        `for i in $(seq ${SERVICE_READY_S_MAX * 10}); do grep -q '^API:' service.log && break; kill -0 "$UP_PID" || { cat service.log; exit 1; }; sleep 0.1; done`,
        "grep -q '^API:' service.log || { cat service.log; exit 1; }",
      );
      continue;
    }
    for (const line of block.lines) out.push(scriptLine(line, where));
  }
  out.push('echo "== the guide ran to its end"');
  return out.join('\n');
}

/** This process's environment without Rewind's own variables: the guide runs on the defaults. */
function guideEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('REWIND_')) delete env[name];
  return env;
}

test('docs/OPERATOR-GUIDE.md: every sh block runs as written', { skip }, async () => {
  const blocks = shellBlocks(fs.readFileSync(GUIDE, 'utf8'));
  assert.ok(blocks.length >= 5, 'the guide has its walk-through');
  assert.ok(blocks[0]?.service, 'the first block starts rewind up');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-guide-'));
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(BIN, path.join(bin, 'rewind')); // as `npm link` or a symlink would install it
  const file = path.join(dir, 'guide.sh');
  fs.writeFileSync(file, script(blocks, dir));
  const child = spawn('unshare', ['--net', '--mount', '--propagation', 'private', 'bash', file], {
    env: {
      ...guideEnv(),
      PATH: `${bin}:${process.env.PATH ?? ''}`,
      REWIND_RUNTIME_DIR: path.join(dir, 'run'),
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  let output = '';
  child.stdout.on('data', (c: Buffer) => (output += c.toString()));
  child.stderr.on('data', (c: Buffer) => (output += c.toString()));
  const killer = setTimeout(() => process.kill(-(child.pid as number), 'SIGKILL'), RUN_MS_MAX);
  const status = await new Promise<number | null>((resolve) => child.once('close', resolve));
  clearTimeout(killer);
  try {
    assert.equal(status, 0, `the guide failed:\n${output.slice(-6000)}`);
    assert.match(output, /== the guide ran to its end/);
  } finally {
    // A loop device is not in the namespace: one the script could not detach is detached here.
    const left = spawnSync('losetup', ['-n', '-O', 'NAME,BACK-FILE']).stdout.toString();
    for (const line of left.split('\n'))
      if (line.includes(dir)) spawnSync('losetup', ['-d', line.trim().split(/\s+/)[0] as string]);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
