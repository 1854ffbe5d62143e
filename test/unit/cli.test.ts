// The CLI's own behaviour without a server: --version, commander's errors as the one documented
// line (`rewind: message (hint)`, status 1), refusals made before anything is frozen, and the
// mount point list that keeps --freeze from freezing the filesystem that merely holds a directory.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { mountPoints } from '../../src/cli/freeze.js';
import { BIN } from '../support/process.js';

function rewind(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, REWIND_SERVER: 'http://127.0.0.1:9' },
    timeout: 20_000,
  });
  return {
    status: result.status,
    stdout: result.stdout.toString(),
    stderr: result.stderr.toString(),
  };
}

test('--version prints the package version', () => {
  const version = (JSON.parse(fs.readFileSync('package.json', 'utf8')) as { version: string })
    .version;
  for (const flag of ['--version', '-V']) {
    const result = rewind(flag);
    assert.equal(result.status, 0);
    assert.equal(result.stdout, `${version}\n`);
  }
});

test("commander's errors are one line with a hint, status 1", () => {
  const cases: [string[], RegExp][] = [
    [['status', '--bogus'], /^rewind: unknown option '--bogus' \(see rewind status --help\)\n$/],
    [['frobnicate'], /^rewind: unknown command 'frobnicate' \(see rewind --help\)\n$/],
    [['restore', 'v', '--range'], /^rewind: option '--range <offset:length>' argument missing/],
    [
      ['snapshot', 's'],
      /^rewind: required option '--at <point>' not specified \(see rewind snapshot --help\)\n$/,
    ],
  ];
  for (const [args, expected] of cases) {
    const result = rewind(...args);
    assert.equal(result.status, 1, args.join(' '));
    assert.match(result.stderr, expected, args.join(' '));
    assert.equal(result.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line`);
    assert.equal(result.stdout, '');
  }
});

test('bookmark refusals that come before any freeze or API call', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-cli-'));
  try {
    const both = rewind('bookmark', 'b', '--at', '5', '--wait');
    assert.equal(both.status, 1);
    assert.match(both.stderr, /--at names a point that exists/);
    // A directory that is not a mount point: FIFREEZE would freeze the filesystem holding it.
    const notMounted = rewind('bookmark', 'b', '--freeze', dir, '--pre', `touch ${dir}/ran`);
    assert.equal(notMounted.status, 1);
    assert.match(notMounted.stderr, /--freeze .* is not a mount point/);
    assert.equal(fs.existsSync(path.join(dir, 'ran')), false, 'no hook ran');
    const badName = rewind('bookmark', 'no spaces', '--wait');
    assert.match(badName.stderr, /bookmark name "no spaces" is invalid/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('mount points from /proc/self/mountinfo, octal escapes undone', () => {
  const text = [
    '22 27 0:21 / /proc rw,relatime - proc proc rw',
    '27 1 254:0 / / rw,relatime - ext4 /dev/vda rw',
    '90 27 7:3 / /mnt/with\\040space rw - ext4 /dev/loop3 rw',
    '',
  ].join('\n');
  assert.deepEqual([...mountPoints(text)].sort(), ['/', '/mnt/with space', '/proc']);
});

test('REWIND_LOG_FORMAT is json or pretty; anything else is refused before a data directory exists', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-cli-'));
  try {
    const result = spawnSync(
      process.execPath,
      [
        BIN,
        'up',
        '--data',
        path.join(dir, 'data'),
        '--nbd',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
      ],
      { env: { ...process.env, REWIND_LOG_FORMAT: 'xml' }, timeout: 20_000 },
    );
    assert.equal(result.status, 1);
    assert.match(
      result.stderr.toString(),
      /^rewind: REWIND_LOG_FORMAT "xml" is not json or pretty\n$/,
    );
    assert.equal(fs.existsSync(path.join(dir, 'data')), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
