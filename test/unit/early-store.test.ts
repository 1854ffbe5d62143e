// The early store of the next segment, driven directly on the transaction pipeline: a second copy
// of a segment (the agent resends after a reconnect) arriving after the first copy's early store
// has finished, but before its turn, must not start a second store of the same files. If it did,
// its undo could read the replica after the first copy's turn applied it and be renamed over the
// good undo: the history before that transaction would then read the transaction's own bytes.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import {
  buildSealedRedo,
  parseUndo,
  type RecordMeta,
  type RedoRecord,
} from '../../src/log/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Catalog } from '../../src/manager/catalog.js';
import { ReplicaVolume } from '../../src/manager/replica.js';
import { parseArrival, TxPipeline, type Arrival } from '../../src/manager/transactions.js';
import { TxFiles } from '../../src/manager/txfiles.js';

const ID = '0a0a0a0a-0a0a-0a0a-0a0a-0a0a0a0a0a0a';
const SIZE = 1024 * 1024;

/** A segment of one 4 KiB write of `fill` at offset 0. */
function arrival(index: number, fill: number): Arrival {
  const meta: RecordMeta = {
    kind: 'write',
    volume: 0,
    seq: index,
    timeNs: BigInt(index),
    offsetBytes: 0,
    lengthBytes: 4096,
  };
  const header = {
    volumeSetId: Buffer.from(ID.replace(/-/g, ''), 'hex'),
    segmentIndex: index,
    seqFirst: index,
    createdNs: 1n,
    flags: 0,
  };
  const payload = Buffer.concat(
    buildSealedRedo(header, [{ ...meta, data: Buffer.alloc(4096, fill) }]),
  );
  const parsing = parseArrival(payload, index, 1);
  assert.ok('parsed' in parsing);
  return {
    index,
    seqFirst: index,
    seqLast: index,
    fileCrc: parsing.parsed.fileCrc,
    payload,
    parsing,
  };
}

/** In-thread apply that can hold a transaction's replica sync, and counts undo builds per file. */
class GatedApply extends InThreadApply {
  readonly undoBuilds = new Map<string, number>();
  readonly writes: string[] = [];
  holdSync: Promise<void> | undefined;
  /** Undo builds of a file already built once wait for this (the race's bad interleaving). */
  secondBuildGate: Promise<void> | undefined;

  override async saveUndo(
    file: string,
    header: Parameters<InThreadApply['saveUndo']>[1],
    records: readonly RedoRecord[],
    replicas: Parameters<InThreadApply['saveUndo']>[3],
  ): ReturnType<InThreadApply['saveUndo']> {
    const builds = (this.undoBuilds.get(file) ?? 0) + 1;
    this.undoBuilds.set(file, builds);
    if (builds > 1) await this.secondBuildGate;
    return super.saveUndo(file, header, records, replicas);
  }

  override async writeRedo(...args: Parameters<InThreadApply['writeRedo']>): Promise<void> {
    await super.writeRedo(...args);
    this.writes.push(args[0]);
  }

  override async syncReplicas(...args: Parameters<InThreadApply['syncReplicas']>): Promise<void> {
    await this.holdSync;
    await super.syncReplicas(...args);
  }
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let waited = 0; !check(); waited += 10) {
    assert.ok(waited < 10_000, `timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('early store', () => {
  it('one store per segment index: a resent copy never builds a second undo over the first', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-early-'));
    const catalog = new Catalog(path.join(dir, 'catalog.sqlite'));
    const txFiles = new TxFiles(dir, () => 1);
    fs.mkdirSync(txFiles.redoDir);
    fs.mkdirSync(txFiles.undoDir);
    const replica = ReplicaVolume.open(path.join(dir, 'replica'), 0, 'v', SIZE);
    const applier = new GatedApply();
    catalog.setMeta('volumeSetId', ID);
    catalog.addVolume(0, 'v', SIZE);
    const pipeline = new TxPipeline({
      catalog,
      txFiles,
      replicas: [replica],
      applier,
      log: () => undefined,
      onUndo: () => undefined,
    });
    try {
      await pipeline.recover();
      assert.equal((await pipeline.receive(Promise.resolve(arrival(1, 1)))).kind, 'ack');
      // Transaction 2 is held in its replica sync: its writes are issued, so segment 3 may be
      // stored early meanwhile.
      let releaseSync = (): void => undefined;
      applier.holdSync = new Promise((resolve) => (releaseSync = resolve));
      const second = pipeline.receive(Promise.resolve(arrival(2, 2)));
      await until('transaction 2 issued its replica writes', () => applier.writes.length === 2);
      const firstCopy = arrival(3, 3);
      const third = pipeline.receive(Promise.resolve(firstCopy));
      const undo3 = txFiles.undoPath(3);
      await until('segment 3 stored early', () => applier.undoBuilds.get(undo3) === 1);
      await new Promise((r) => setTimeout(r, 50)); // its store settles
      // The agent resends segment 3 (a new session). Were a second early store started, its undo
      // would be built only after segment 3's turn wrote the replica.
      let openGate = (): void => undefined;
      applier.secondBuildGate = new Promise((resolve) => (openGate = resolve));
      const resent = pipeline.receive(Promise.resolve({ ...arrival(3, 3) }));
      applier.holdSync = undefined;
      releaseSync();
      assert.equal((await second).kind, 'ack');
      assert.equal((await third).kind, 'ack');
      openGate();
      assert.deepEqual(
        await resent,
        { kind: 'ack', index: 3, seqLast: 3 },
        'answered idempotently',
      );
      await new Promise((r) => setTimeout(r, 100)); // a stray store would finish by now
      assert.equal(applier.undoBuilds.get(undo3), 1, 'one undo build for segment 3');
      // The undo of transaction 3 holds the bytes transaction 2 left: its before-image.
      const extents = parseUndo(fs.readFileSync(undo3), undo3, 1).extents;
      const data = extents.find((e) => e.kind === 'data');
      assert.ok(data && data.kind === 'data');
      const bytes = fs
        .readFileSync(undo3)
        .subarray(data.payloadOffsetBytes, data.payloadOffsetBytes + 4096);
      assert.deepEqual(bytes, Buffer.alloc(4096, 2));
      assert.equal(pipeline.committed.seq, 3);
    } finally {
      await pipeline.close();
      await applier.close();
      replica.close();
      txFiles.close();
      catalog.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
