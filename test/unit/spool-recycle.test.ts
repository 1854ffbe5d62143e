// Segment files reused across crashes: a recycled file's stale records and trailer are never read
// as the new segment's, a recycled file renamed for a segment whose header never reached the disk
// holds no record, a preallocated file's zeroes are not counted as a torn tail, and a batch
// written with direct I/O that a power loss tore is cut at its first incomplete record.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { DirtyMap } from '../../src/agent/dirty-map.js';
import type { ProductionVolume } from '../../src/agent/pipeline.js';
import { Spool } from '../../src/agent/spool.js';
import { WorkerEngine } from '../../src/agent/worker-engine.js';
import type { EngineRecord } from '../../src/agent/write-engine.js';
import { crc32c } from '../../src/core/index.js';
import {
  encodeRecordHeader,
  PAD_ALIGN_BYTES,
  parseSealedRedo,
  RECORD_HEADER_BYTES,
  scanRedo,
} from '../../src/log/redo.js';

const VOLUME_SET = Buffer.alloc(16, 3);

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-recycle-'));
}

/** Encodes `count` writes of `payloadBytes` from `seq`, as the pipeline does. */
function records(seq: number, count: number, payloadBytes = 4096): [Buffer[], Buffer[]] {
  const pieces: Buffer[] = [];
  const headers: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const data = Buffer.alloc(payloadBytes, (seq + i) & 0xff);
    const header = encodeRecordHeader(
      {
        kind: 'write',
        volume: 0,
        seq: seq + i,
        timeNs: BigInt(seq + i),
        offsetBytes: i * payloadBytes,
        lengthBytes: payloadBytes,
      },
      crc32c(data),
    );
    pieces.push(header, data);
    headers.push(header);
  }
  return [pieces, headers];
}

async function append(
  spool: Spool,
  seq: number,
  count: number,
  payloadBytes = 4096,
): Promise<void> {
  await spool.append(
    ...records(seq, count, payloadBytes),
    seq,
    count,
    BigInt(seq),
    BigInt(seq + count - 1),
  );
}

const activeName = (index: number): string => `${String(index).padStart(16, '0')}.redo.active`;

/** A 64 MiB sparse production volume with its dirty map, in `dir`. */
function productionVolume(dir: string): ProductionVolume {
  const prodFile = path.join(dir, 'prod.img');
  fs.writeFileSync(prodFile, '');
  fs.truncateSync(prodFile, 64 * 1024 * 1024);
  return {
    name: 'v',
    index: 0,
    sizeBytes: 64 * 1024 * 1024,
    path: prodFile,
    fd: fs.openSync(prodFile, 'r+'),
    blockDevice: false,
    dirty: DirtyMap.open(path.join(dir, 'map'), 64 * 1024 * 1024),
  };
}

function closeVolume(volume: ProductionVolume): void {
  fs.closeSync(volume.fd);
  volume.dirty.close();
}

describe('recycled and preallocated segment files', () => {
  it("a recycled file's stale records, valid checksums and all, are cut: their seqs are older", async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, { preallocate: false });
      await append(spool, 1, 50); // segment 1: seqs 1..50
      const first = await spool.seal();
      assert.ok(first);
      await spool.release(first.index);
      assert.deepEqual(
        spool.freeFiles.map((f) => f.recycled),
        [true],
        'segment 1 kept for reuse',
      );
      await append(spool, 51, 3); // segment 2 takes segment 1's file and writes over its start
      spool.close(); // killed: no seal
      const active = path.join(dir, activeName(2));
      const stale = scanRedo(fs.readFileSync(active), active, 1);
      assert.equal(stale.records.length, 3, 'a scan stops where the new records end');
      assert.equal(stale.stopReason?.code, 'REWIND_SEGMENT_ORDER', 'at a stale record of seq 4');

      const reopened = await Spool.open(dir, VOLUME_SET, 1, 50, 1, { preallocate: false });
      assert.equal(reopened.recovery.recoveredRecords, 3);
      assert.ok(reopened.recovery.tornBytes > 0, 'the stale tail is reported as cut');
      assert.deepEqual(
        reopened.spool.sealed.map((s) => [s.index, s.seqFirst, s.seqLast]),
        [[2, 51, 53]],
      );
      const sealed = reopened.spool.sealed[0];
      assert.ok(sealed);
      const parsed = parseSealedRedo(fs.readFileSync(sealed.file), sealed.file, 1);
      assert.deepEqual(
        parsed.records.map((r) => r.seq),
        [51, 52, 53],
        'nothing stale after them',
      );
      assert.equal(reopened.spool.seqNextExpected, 54);
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a stale trailer exactly where the new records end does not seal the segment: the chain names the new header', async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, { preallocate: false });
      await append(spool, 1, 20);
      const first = await spool.seal();
      assert.ok(first);
      await spool.release(first.index);
      await append(spool, 21, 20); // the same sizes: segment 1's trailer lies right after them
      spool.close();
      const reopened = await Spool.open(dir, VOLUME_SET, 1, 20, 1, { preallocate: false });
      assert.equal(reopened.recovery.recoveredRecords, 20);
      assert.equal(reopened.recovery.tornReason?.code, 'REWIND_SEGMENT_CORRUPT', 'trailer refused');
      const sealed = reopened.spool.sealed[0];
      assert.ok(sealed);
      const parsed = parseSealedRedo(fs.readFileSync(sealed.file), sealed.file, 1);
      assert.deepEqual([parsed.trailer.seqFirst, parsed.trailer.seqLast], [21, 40]);
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a recycled file renamed for a new segment whose header never reached the disk holds no record', async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, { preallocate: false });
      await append(spool, 1, 5);
      const first = await spool.seal();
      assert.ok(first);
      await spool.release(first.index);
      const free = spool.freeFiles[0];
      assert.ok(free);
      spool.close();
      // What a power loss can leave after startSegment renamed the file: the rename survived,
      // the new header did not (no fdatasync covered it), so the old segment's header is there.
      fs.renameSync(free.file, path.join(dir, activeName(2)));
      const reopened = await Spool.open(dir, VOLUME_SET, 1, 5, 1, { preallocate: false });
      assert.equal(reopened.recovery.recoveredRecords, 0);
      assert.deepEqual(reopened.spool.sealed, []);
      assert.equal(reopened.spool.seqNextExpected, 6);
      assert.equal(reopened.spool.freeFiles.length, 1, 'the file is a spare again');
      await append(reopened.spool, 6, 2);
      const next = await reopened.spool.seal();
      assert.deepEqual([next?.index, next?.seqFirst, next?.seqLast], [2, 6, 7]);
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a preallocated file's unwritten zeroes are cut without being counted as torn", async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, { segmentBytes: 1024 * 1024 });
      await append(spool, 1, 2); // segment 1 in a new file; a spare is preallocated meanwhile
      await spool.settle();
      assert.deepEqual(
        spool.freeFiles.map((f) => f.recycled),
        [false],
        'one preallocated spare',
      );
      await spool.seal();
      await append(spool, 3, 4); // segment 2 in the preallocated file
      spool.close();
      const active = path.join(dir, activeName(2));
      assert.equal(
        fs.statSync(active).size,
        1024 * 1024,
        'the active file is the preallocated one',
      );
      const reopened = await Spool.open(dir, VOLUME_SET, 1, 0, 0, { preallocate: false });
      assert.equal(reopened.recovery.recoveredRecords, 4);
      assert.equal(reopened.recovery.tornBytes, 0, 'zeroes are not a torn tail');
      const sealed = reopened.spool.sealed[1];
      assert.ok(sealed);
      assert.equal(
        parseSealedRedo(fs.readFileSync(sealed.file), sealed.file, 1).records.length,
        4,
        'the sealed file ends at its trailer',
      );
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a direct, aligned batch torn at its last page is cut at the record that page belongs to', async () => {
    const dir = tmpDir();
    const engine = WorkerEngine.start();
    const volume = productionVolume(dir);
    try {
      const { spool } = await Spool.open(path.join(dir, 'spool'), VOLUME_SET, 1, 0, 0, {
        preallocate: false,
      });
      // Segment 1 fills a file with 2 MiB, then is released: segment 2 recycles it.
      await append(spool, 1, 8, 256 * 1024);
      const first = await spool.seal();
      assert.ok(first);
      await spool.release(first.index);
      // A first small batch leaves segment 2 unaligned; a large one then ends on a pad, and the
      // next large one starts on a boundary inside the recycled file: direct I/O.
      const write = async (seq: number, count: number, bytes: number): Promise<boolean> => {
        const batch: EngineRecord[] = Array.from({ length: count }, (_, i) => ({
          type: 'write',
          volume,
          seq: seq + i,
          timeNs: BigInt(seq + i),
          offsetBytes: (seq + i) * bytes,
          lengthBytes: bytes,
          data: Buffer.alloc(bytes, (seq + i) & 0xff),
        }));
        const reservation = await spool.reserve({
          recordCount: count,
          recordBytes: count * (RECORD_HEADER_BYTES + bytes),
          seqFirst: seq,
          timeFirstNs: BigInt(seq),
          timeLastNs: BigInt(seq + count - 1),
        });
        const outcome = await engine.write({ records: batch, reservation });
        assert.equal(outcome.logError, undefined);
        spool.commit(reservation, outcome.chainOut);
        return reservation.directFd !== undefined;
      };
      assert.equal(await write(9, 1, 1000), false, 'small: buffered');
      assert.equal(
        await write(10, 3, 100 * 1024),
        true,
        'large with an unaligned start: its head buffered, direct from its first boundary, padded',
      );
      const directStart = spool.activeBytes;
      assert.equal(directStart % PAD_ALIGN_BYTES, 0, 'the pad ended it on a boundary');
      assert.equal(
        await write(13, 4, 128 * 1024),
        true,
        'large and aligned in a recycled file: direct',
      );
      const directEnd = spool.activeBytes;
      spool.close();
      // A power loss tore the direct write: its last page never reached the disk (the recycled
      // file's old bytes are there).
      const active = path.join(dir, 'spool', activeName(2));
      const bytes = fs.readFileSync(active);
      const lastPage = directEnd - PAD_ALIGN_BYTES;
      bytes.fill(0x5a, lastPage, directEnd);
      fs.writeFileSync(active, bytes);
      const reopened = await Spool.open(path.join(dir, 'spool'), VOLUME_SET, 1, 8, 1, {
        preallocate: false,
      });
      // Records 9..15 are whole; record 16 (the last of the direct batch) holds the torn page.
      assert.equal(reopened.recovery.recoveredRecords, 7);
      assert.equal(reopened.recovery.tornReason?.code, 'REWIND_SEGMENT_CORRUPT');
      const sealed = reopened.spool.sealed[0];
      assert.ok(sealed);
      const parsed = parseSealedRedo(fs.readFileSync(sealed.file), sealed.file, 1);
      assert.deepEqual(
        parsed.records.map((r) => r.seq),
        [9, 10, 11, 12, 13, 14, 15],
      );
      for (const record of parsed.records)
        assert.ok(
          fs
            .readFileSync(sealed.file)
            .subarray(record.payloadOffsetBytes, record.payloadOffsetBytes + record.lengthBytes)
            .equals(Buffer.alloc(record.lengthBytes, record.seq & 0xff)),
          `record ${record.seq} reads back whole`,
        );
      reopened.spool.close();
    } finally {
      await engine.close();
      closeVolume(volume);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a new file: the first large batch goes direct from its first boundary; a torn page there cuts it', async () => {
    const dir = tmpDir();
    const engine = WorkerEngine.start();
    const volume = productionVolume(dir);
    try {
      const { spool } = await Spool.open(path.join(dir, 'spool'), VOLUME_SET, 1, 0, 0, {
        preallocate: false,
      });
      // Nothing to recycle and nothing preallocated: segment 1 is a new, empty file. Its first
      // batch starts right after the header, off any boundary.
      const bytes = 100 * 1024;
      const batch: EngineRecord[] = Array.from({ length: 6 }, (_, i) => ({
        type: 'write',
        volume,
        seq: 1 + i,
        timeNs: BigInt(1 + i),
        offsetBytes: i * bytes,
        lengthBytes: bytes,
        data: Buffer.alloc(bytes, (1 + i) & 0xff),
      }));
      const reservation = await spool.reserve({
        recordCount: 6,
        recordBytes: 6 * (RECORD_HEADER_BYTES + bytes),
        seqFirst: 1,
        timeFirstNs: 1n,
        timeLastNs: 6n,
      });
      assert.ok(reservation.positionBytes % PAD_ALIGN_BYTES !== 0, 'it starts off a boundary');
      assert.ok(reservation.directFd !== undefined, 'a new file on a disk is written direct');
      assert.equal(reservation.directFromBytes, PAD_ALIGN_BYTES, 'from the first boundary');
      const outcome = await engine.write({ records: batch, reservation });
      assert.equal(outcome.logError, undefined);
      spool.commit(reservation, outcome.chainOut);
      const end = spool.activeBytes;
      assert.equal(end % PAD_ALIGN_BYTES, 0, 'the pad ended it on a boundary');
      spool.close();
      const active = path.join(dir, 'spool', activeName(1));
      const written = fs.readFileSync(active);
      assert.equal(written.length, end, 'the file holds the header, the records and the pad');
      // A power loss: one page inside record 4 (in the direct part) never reached the disk; a new
      // file reads zeroes there.
      const record4At = reservation.positionBytes + 3 * (RECORD_HEADER_BYTES + bytes);
      const tornPage = Math.ceil((record4At + 1000) / PAD_ALIGN_BYTES) * PAD_ALIGN_BYTES;
      written.fill(0, tornPage, tornPage + PAD_ALIGN_BYTES);
      fs.writeFileSync(active, written);
      const reopened = await Spool.open(path.join(dir, 'spool'), VOLUME_SET, 1, 0, 0, {
        preallocate: false,
      });
      assert.equal(reopened.recovery.recoveredRecords, 3, 'records 1..3 are whole');
      assert.equal(reopened.recovery.tornReason?.code, 'REWIND_SEGMENT_CORRUPT');
      const sealed = reopened.spool.sealed[0];
      assert.ok(sealed);
      const file = fs.readFileSync(sealed.file);
      const parsed = parseSealedRedo(file, sealed.file, 1);
      assert.deepEqual(
        parsed.records.map((r) => r.seq),
        [1, 2, 3],
      );
      for (const record of parsed.records)
        assert.ok(
          file
            .subarray(record.payloadOffsetBytes, record.payloadOffsetBytes + record.lengthBytes)
            .equals(Buffer.alloc(record.lengthBytes, record.seq & 0xff)),
          `record ${record.seq} reads back whole (its head buffered, the rest direct)`,
        );
      reopened.spool.close();
    } finally {
      await engine.close();
      closeVolume(volume);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
