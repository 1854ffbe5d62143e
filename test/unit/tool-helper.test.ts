// The long-lived tool helper (util-linux fallocate and blkdiscard without a fork per call): runs
// the tool, answers many requests in order, passes a tool's failure back with its message and
// goes on, and a call does not block the event loop the way spawning a child did.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { preallocateTools, zeroRange } from '../../src/platform/index.js';
import { runTool } from '../../src/platform/tool-helper.js';

const MiB = 1024 * 1024;

describe('tool helper', () => {
  it('preallocates, punches, answers concurrent requests in order, reports failures and goes on', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-tools-'));
    try {
      const files = Array.from({ length: 40 }, (_, i) => path.join(dir, `f${i}`));
      for (const file of files) fs.writeFileSync(file, '');
      await Promise.all(
        files.map((file, i) => preallocateTools.run(file, (i + 1) * 64 * 1024, 10_000)),
      );
      for (const [i, file] of files.entries()) {
        const stat = fs.statSync(file);
        assert.equal(stat.size, (i + 1) * 64 * 1024, `${file} has its length`);
        assert.ok(stat.blocks * 512 >= stat.size, `${file} has its blocks allocated`);
      }
      // A failure comes back with the tool's own message; the helper still serves the next one.
      await assert.rejects(
        runTool('fallocate', ['--length', '4096', path.join(dir, 'no-such-dir', 'f')], 10_000),
        /fallocate --length 4096 .* failed: .*No such file or directory/,
      );
      // Punching a hole through the helper (zeroRange for 1 MiB or more).
      const image = path.join(dir, 'image');
      fs.writeFileSync(image, Buffer.alloc(4 * MiB, 0xab));
      const fd = fs.openSync(image, 'r+');
      try {
        await zeroRange(fd, image, false, MiB, 2 * MiB);
      } finally {
        fs.closeSync(fd);
      }
      const bytes = fs.readFileSync(image);
      assert.ok(bytes.subarray(MiB, 3 * MiB).equals(Buffer.alloc(2 * MiB)), 'the range reads zero');
      assert.ok(bytes.subarray(0, MiB).equals(Buffer.alloc(MiB, 0xab)), 'before it unchanged');
      assert.ok(bytes.subarray(3 * MiB).equals(Buffer.alloc(MiB, 0xab)), 'after it unchanged');
      // Once the helper runs, a call costs the event loop a pipe write, not a fork.
      const began = performance.now();
      const pending = preallocateTools.run(files[0] as string, MiB, 10_000);
      const blockedMs = performance.now() - began;
      await pending;
      assert.ok(blockedMs < 5, `the call returned in ${blockedMs.toFixed(2)} ms`);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
