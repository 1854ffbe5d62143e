// Tests for the read-ahead of transaction files read sequentially by views: windows always hold the
// file's bytes, random reads make none, and many files read in turn (a view over a long history)
// never make windows evict each other on every read.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ReadAhead } from '../../src/views/file-reads.js';
import { rng } from '../support/model.js';

const KiB = 1024;
const MiB = 1024 * KiB;

describe('ReadAhead', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-readahead-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const random = rng(3);
  const content = random.bytes(8 * MiB);
  const file = path.join(dir, 'f');
  fs.writeFileSync(file, content);
  const fd = fs.openSync(file, 'r');
  after(() => fs.closeSync(fd));

  function checked(readAhead: ReadAhead, key: number, start: number, end: number): boolean {
    const window = readAhead.fetch(key, fd, start, end);
    if (window === undefined) return false;
    const from = start - window.start;
    assert.ok(
      window.bytes.subarray(from, from + end - start).equals(content.subarray(start, end)),
      `key ${key}: window bytes at ${start}`,
    );
    return true;
  }

  it('windows hold the file bytes, for sequential, skipping, backward and random reads', () => {
    const readAhead = new ReadAhead(2 * MiB);
    for (let key = 0; key < 6; key++) {
      let at = random.int(MiB);
      for (let step = 0; step < 300; step++) {
        const length = 1 + random.int(random.bool(0.9) ? 2 * KiB : 200 * KiB);
        if (at + length > content.length) at = 0;
        checked(readAhead, key, at, at + length);
        const roll = random.int(10);
        at +=
          length +
          (roll < 6
            ? 0
            : roll < 8
              ? random.int(64 * KiB)
              : roll < 9
                ? -random.int(at + 1)
                : random.int(4 * MiB));
        at = Math.max(0, Math.min(at, content.length - 1));
      }
      assert.ok(readAhead.windowBytes <= 2 * MiB, 'the budget holds');
    }
  });

  it('random reads make (almost) no window', () => {
    const readAhead = new ReadAhead(2 * MiB);
    for (let i = 0; i < 500; i++) {
      const at = random.int(content.length - 4096);
      checked(readAhead, 1, at, at + 512);
    }
    assert.ok(readAhead.fills <= 3, `${readAhead.fills} windows read`);
  });

  it('sequential reads of one file are served from a few windows', () => {
    const readAhead = new ReadAhead(2 * MiB);
    let served = 0;
    for (let at = 0; at + 4 * KiB <= 4 * MiB; at += 4 * KiB)
      if (checked(readAhead, 7, at, at + 4 * KiB)) served += 1;
    assert.ok(served >= 1000, `${served} of 1024 reads from windows`);
    assert.ok(readAhead.fills <= 40, `${readAhead.fills} windows read`);
  });

  it('more files read in turn than windows fit: no window is evicted while in use', () => {
    // 40 files advance 4 KiB per round, in turn; the budget holds 8 windows of the largest size.
    const readAhead = new ReadAhead(MiB);
    const files = 40;
    const rounds = 120;
    let served = 0;
    for (let round = 0; round < rounds; round++) {
      for (let key = 0; key < files; key++) {
        const at = key * 128 * KiB + round * 4 * KiB;
        if (checked(readAhead, key, at, at + 4 * KiB)) served += 1;
      }
    }
    // Evicting the least recently used window would refill one on every read (about 4,700 fills).
    assert.ok(readAhead.fills <= 300, `${readAhead.fills} windows read`);
    assert.ok(served >= 8 * (rounds - 10), `${served} reads from windows`);
    assert.ok(readAhead.windowBytes <= MiB);
  });

  it('windows no longer read make room for new ones', () => {
    const readAhead = new ReadAhead(512 * KiB);
    for (let key = 0; key < 4; key++)
      for (let at = 0; at < 1024 * KiB; at += 4 * KiB) checked(readAhead, key, at, at + 4 * KiB);
    const before = readAhead.fills;
    let served = 0;
    for (let at = 2 * MiB; at < 4 * MiB; at += 4 * KiB)
      if (checked(readAhead, 9, at, at + 4 * KiB)) served += 1;
    assert.ok(readAhead.fills > before, 'a new file gets windows');
    assert.ok(served >= 400, `${served} of 512 reads of the new file from windows`);
  });
});
