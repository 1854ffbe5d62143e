// The two write engines against each other and against a plain model: the worker thread (large
// batches checksummed and logged from shared memory, direct I/O into recycled files) and the
// in-thread engine (the simulation's) put the same bytes in the log and in production, batch
// after batch, whichever thread each batch went to; overlapping writes of consecutive batches
// reach production in seq order; every record reads back with the client's bytes.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DirtyMap } from '../../src/agent/dirty-map.js';
import type { ProductionVolume } from '../../src/agent/pipeline.js';
import { ALIGNED_BATCH_BYTES_MIN, Spool } from '../../src/agent/spool.js';
import { WORKER_BYTES_MIN, WorkerEngine } from '../../src/agent/worker-engine.js';
import {
  InThreadEngine,
  type EngineRecord,
  type WriteEngine,
} from '../../src/agent/write-engine.js';
import { parseSealedRedo, REDO_HEADER_BYTES, TRAILER_BYTES } from '../../src/log/redo.js';

const VOLUME_SET = Buffer.alloc(16, 5);
const VOLUME_BYTES = 64 * 1024 * 1024;
const KiB = 1024;

interface Side {
  dir: string;
  spool: Spool;
  engine: WriteEngine;
  volumes: ProductionVolume[];
}

async function openSide(root: string, name: string, engine: WriteEngine): Promise<Side> {
  const dir = path.join(root, name);
  fs.mkdirSync(dir);
  const volumes = [0, 1].map((index) => {
    const file = path.join(dir, `prod${index}.img`);
    fs.writeFileSync(file, '');
    fs.truncateSync(file, VOLUME_BYTES);
    return {
      name: `v${index}`,
      index,
      sizeBytes: VOLUME_BYTES,
      path: file,
      fd: fs.openSync(file, 'r+'),
      blockDevice: false,
      dirty: DirtyMap.open(path.join(dir, `map${index}`), VOLUME_BYTES),
    };
  });
  const { spool } = await Spool.open(path.join(dir, 'spool'), VOLUME_SET, 2, 0, 0, {
    segmentBytes: 4 * 1024 * 1024,
    preallocate: false,
  });
  return { dir, spool, engine, volumes };
}

async function closeSide(side: Side): Promise<void> {
  await side.engine.close();
  side.spool.close();
  for (const volume of side.volumes) {
    fs.closeSync(volume.fd);
    volume.dirty.close();
  }
}

/** Deterministic payload bytes of write `seq` (every byte names it). */
function bytesOf(seq: number, lengthBytes: number): Buffer {
  const data = Buffer.alloc(lengthBytes);
  for (let at = 0; at < lengthBytes; at += 4) data.writeUInt32LE(seq * 7919 + at, at);
  return data;
}

/** A payload cut into uneven views, as socket reads of 64 KiB would leave it. */
function inPieces(data: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  for (let at = 0; at < data.length;) {
    const end = Math.min(data.length, at + 65536 - (pieces.length % 3) * 1000);
    pieces.push(data.subarray(at, end));
    at = end;
  }
  return pieces;
}

interface Spec {
  volume: number;
  offsetBytes: number;
  lengthBytes: number;
}

/** Writes one batch through a side's spool and engine, as the pipeline does; true when it went direct. */
async function writeBatch(side: Side, seqFirst: number, specs: readonly Spec[]): Promise<boolean> {
  const records: EngineRecord[] = specs.map((spec, i) => ({
    type: 'write',
    volume: side.volumes[spec.volume] as ProductionVolume,
    seq: seqFirst + i,
    timeNs: BigInt(1_000_000 + seqFirst + i),
    offsetBytes: spec.offsetBytes,
    lengthBytes: spec.lengthBytes,
    // Large payloads come in the pieces the socket delivered them in (every other one here).
    data:
      spec.lengthBytes >= 64 * KiB && (seqFirst + i) % 2 === 0
        ? inPieces(bytesOf(seqFirst + i, spec.lengthBytes))
        : bytesOf(seqFirst + i, spec.lengthBytes),
  }));
  const reservation = await side.spool.reserve({
    recordCount: records.length,
    recordBytes: records.reduce((sum, r) => sum + 48 + r.lengthBytes, 0),
    seqFirst,
    timeFirstNs: (records[0] as EngineRecord).timeNs,
    timeLastNs: (records[records.length - 1] as EngineRecord).timeNs,
  });
  const outcome = await side.engine.write({ records, reservation });
  assert.equal(outcome.logError, undefined, 'the log write succeeded');
  assert.equal(outcome.productionErrnos.size, 0, 'every production write succeeded');
  side.spool.commit(reservation, outcome.chainOut);
  return reservation.directFd !== undefined;
}

/** The batches: single small writes, bursts of 4 KiB, large batches, overlaps across batches. */
function batches(): Spec[][] {
  const out: Spec[][] = [];
  let cursor = 0;
  const next = (lengthBytes: number, volume = 0): Spec => {
    const spec = { volume, offsetBytes: cursor % (VOLUME_BYTES - lengthBytes), lengthBytes };
    cursor += lengthBytes + 512;
    return spec;
  };
  for (let round = 0; round < 6; round++) {
    out.push([next(4 * KiB)]); // one record: the event loop
    out.push(Array.from({ length: 80 }, (_, i) => next(4 * KiB, i % 2))); // 320 KiB: the worker
    out.push([next(1024 * KiB), next(1024 * KiB, 1), next(512)]); // large, aligned with a pad
    // Overlaps the previous batch's writes (a later seq must win in production).
    const previous = (out[out.length - 1] as Spec[])[0] as Spec;
    out.push([
      { volume: 0, offsetBytes: previous.offsetBytes + 512 * KiB, lengthBytes: 300 * KiB },
    ]);
    out.push(Array.from({ length: 3 }, () => next(1536))); // small and unaligned
    // Overlaps inside one batch: a small write after a large one it overlaps must land after it.
    const large = next(4 * 1024 * KiB);
    out.push([
      large,
      { volume: 0, offsetBytes: large.offsetBytes + 1024 * KiB, lengthBytes: 64 * KiB },
    ]);
  }
  return out;
}

describe('write engines', () => {
  it('the worker and the in-thread engine write the same log and production bytes, batch after batch', async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-engines-'));
    const worker = await openSide(root, 'worker', WorkerEngine.start());
    const inThread = await openSide(root, 'in-thread', new InThreadEngine());
    assert.ok(worker.engine instanceof WorkerEngine, 'this machine has /dev/shm: a real worker');
    try {
      const all = batches();
      assert.ok(
        all.some((b) => b.reduce((s, r) => s + 48 + r.lengthBytes, 0) >= WORKER_BYTES_MIN),
        'some batches go to the worker',
      );
      assert.ok(
        all.some((b) => b.reduce((s, r) => s + 48 + r.lengthBytes, 0) >= ALIGNED_BATCH_BYTES_MIN),
        'some batches end on a pad',
      );
      let seq = 1;
      let direct = 0;
      const model = [Buffer.alloc(VOLUME_BYTES), Buffer.alloc(VOLUME_BYTES)];
      for (const [index, specs] of all.entries()) {
        if (await writeBatch(worker, seq, specs)) direct += 1;
        await writeBatch(inThread, seq, specs);
        for (const [i, spec] of specs.entries())
          bytesOf(seq + i, spec.lengthBytes).copy(model[spec.volume] as Buffer, spec.offsetBytes);
        seq += specs.length;
        // Every few batches a seal, and the sealed file released: the next segment then takes the
        // recycled file (direct I/O for the worker's aligned batches).
        if (index % 7 === 6) {
          const [a, b] = [await worker.spool.seal(), await inThread.spool.seal()];
          assert.ok(a && b);
          // The same bytes but for the header's creation time (and the chain CRCs that cover it).
          const [bytesA, bytesB] = [fs.readFileSync(a.file), fs.readFileSync(b.file)];
          assert.equal(bytesA.length, bytesB.length, `segment ${a.index} length`);
          const body = (bytes: Buffer): Buffer =>
            bytes.subarray(REDO_HEADER_BYTES, bytes.length - TRAILER_BYTES);
          assert.ok(body(bytesA).equals(body(bytesB)), `segment ${a.index}: same records and pads`);
          parseSealedRedo(bytesB, b.file, 2);
          const parsed = parseSealedRedo(fs.readFileSync(a.file), a.file, 2);
          for (const record of parsed.records) {
            const data = fs
              .readFileSync(a.file)
              .subarray(record.payloadOffsetBytes, record.payloadOffsetBytes + record.lengthBytes);
            assert.deepEqual(data, bytesOf(record.seq, record.lengthBytes), `record ${record.seq}`);
          }
          await worker.spool.release(a.index);
          await inThread.spool.release(b.index);
          assert.ok(
            worker.spool.freeFiles.some((f) => f.recycled),
            'the released file is kept',
          );
        }
      }
      assert.ok(direct > 0, 'aligned batches in recycled files went to the disk directly');
      for (const side of [worker, inThread])
        for (const [v, volume] of side.volumes.entries())
          assert.ok(
            fs.readFileSync(volume.path).equals(model[v] as Buffer),
            `${path.basename(side.dir)} volume ${v} equals the model (later seqs win)`,
          );
    } finally {
      await closeSide(worker);
      await closeSide(inThread);
      fs.rmSync(root, { recursive: true, force: true });
    }
  });
});
