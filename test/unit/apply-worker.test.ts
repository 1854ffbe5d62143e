// The apply worker (src/manager/apply-worker.ts) against the same steps run on this thread: the
// undo segment and the replica it writes (from the redo file mapped) are byte-identical; a redo
// file of the wrong size is refused; errors keep their codes (a full disk
// must stay ENOSPC to be backpressure); a worker that died is replaced by the next request.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { RewindError } from '../../src/core/index.js';
import { buildSealedRedo, parseSealedRedo, type RecordMeta } from '../../src/log/index.js';
import { applyRedo, markApplied, saveUndo } from '../../src/manager/apply.js';
import { ApplyWorker } from '../../src/manager/apply-pool.js';
import { ReplicaVolume } from '../../src/manager/replica.js';

const SIZE = 8 * 1024 * 1024;
const ID = Buffer.alloc(16, 5);

function history(seed: number, count: number): (RecordMeta & { data?: Buffer })[] {
  let state = seed;
  const next = (max: number): number => {
    state = (state * 1103515245 + 12345) % 2 ** 31;
    return state % max;
  };
  return Array.from({ length: count }, (_, i) => {
    const kind = next(5) === 0 ? 'zero' : 'write';
    const lengthBytes = (1 + next(64)) * 512;
    const offsetBytes = next((SIZE - lengthBytes) / 512) * 512;
    const meta: RecordMeta = {
      kind,
      volume: 0,
      seq: i + 1,
      timeNs: BigInt(i + 1),
      offsetBytes,
      lengthBytes,
    };
    return kind === 'write' ? { ...meta, data: Buffer.alloc(lengthBytes, (i % 250) + 1) } : meta;
  });
}

describe('apply worker', () => {
  it('builds the same undo and writes the same replica as the in-thread functions', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-applyw-'));
    const worker = new ApplyWorker();
    try {
      const records = history(7, 300);
      const redoFile = path.join(dir, 'seg.redo');
      fs.writeFileSync(
        redoFile,
        Buffer.concat(
          buildSealedRedo(
            { volumeSetId: ID, segmentIndex: 1, seqFirst: 1, createdNs: 1n, flags: 0 },
            records,
          ),
        ),
      );
      const parsed = parseSealedRedo(fs.readFileSync(redoFile), redoFile, 1);
      const header = { volumeSetId: ID, segmentIndex: 1, seqFirst: 1, seqLast: records.length };
      // Both replicas start with the same data, so the undo has data and zero extents.
      const here = ReplicaVolume.open(path.join(dir, 'here'), 0, 'v', SIZE);
      const there = ReplicaVolume.open(path.join(dir, 'there'), 0, 'v', SIZE);
      const base = history(99, 40);
      const baseFile = path.join(dir, 'base.redo');
      fs.writeFileSync(
        baseFile,
        Buffer.concat(
          buildSealedRedo(
            { volumeSetId: ID, segmentIndex: 0, seqFirst: 1, createdNs: 1n, flags: 0 },
            base,
          ),
        ),
      );
      const baseParsed = parseSealedRedo(fs.readFileSync(baseFile), baseFile, 1);
      await applyRedo(fs.readFileSync(baseFile), baseParsed.records, [here]);
      await markApplied(baseParsed.records, [there]);
      await worker.writeRedo(baseFile, fs.statSync(baseFile).size, baseParsed.records, [there]);
      await worker.syncReplicas([there]);
      assert.deepEqual(fs.readFileSync(there.file), fs.readFileSync(here.file), 'base layer');

      const undoHere = await saveUndo(path.join(dir, 'here.undo'), header, parsed.records, [here]);
      const undoThere = await worker.saveUndo(
        path.join(dir, 'there.undo'),
        header,
        parsed.records,
        [there],
      );
      assert.deepEqual(
        fs.readFileSync(path.join(dir, 'there.undo')),
        fs.readFileSync(path.join(dir, 'here.undo')),
      );
      assert.deepEqual(undoThere, undoHere);
      assert.ok(
        undoHere.extents.some((e) => e.kind === 'data') &&
          undoHere.extents.some((e) => e.kind === 'zero'),
      );

      await applyRedo(fs.readFileSync(redoFile), parsed.records, [here]);
      await markApplied(parsed.records, [there]);
      const before = fs.readFileSync(there.file);
      // A redo file that is not the size its transaction was stored with is refused, nothing written.
      await assert.rejects(
        worker.writeRedo(redoFile, fs.statSync(redoFile).size + 512, parsed.records, [there]),
        // It arrives as a RewindError of this thread, code and message kept.
        (error: unknown) =>
          error instanceof RewindError &&
          error.code === 'REWIND_SEGMENT_CORRUPT' &&
          /holds \d+ bytes/.test(error.message) &&
          /in the apply worker/.test(error.stack ?? ''),
      );
      assert.deepEqual(
        fs.readFileSync(there.file),
        before,
        'nothing written from a file of the wrong size',
      );
      await worker.writeRedo(redoFile, fs.statSync(redoFile).size, parsed.records, [there]);
      await worker.syncReplicas([there]);
      assert.deepEqual(
        fs.readFileSync(there.file),
        fs.readFileSync(here.file),
        'after the segment',
      );
      here.close();
      there.close();
    } finally {
      await worker.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('keeps error codes, and replaces a worker that died', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-applyw-'));
    const worker = new ApplyWorker();
    try {
      const replica = ReplicaVolume.open(dir, 0, 'v', SIZE);
      await assert.rejects(
        worker.writeRedo(path.join(dir, 'missing.redo'), 0, [], [replica]),
        (error: NodeJS.ErrnoException) => error.code === 'ENOENT' && error.syscall === 'open',
      );
      // Kill the thread under it: the next request gets a new one.
      await (worker as unknown as { worker: { terminate(): Promise<number> } }).worker.terminate();
      const undo = await worker.saveUndo(
        path.join(dir, 'x.undo'),
        { volumeSetId: ID, segmentIndex: 1, seqFirst: 1, seqLast: 1 },
        [],
        [replica],
      );
      assert.equal(undo.extents.length, 0);
      replica.close();
    } finally {
      await worker.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
