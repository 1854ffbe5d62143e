// Tests for the compact transaction index: the lists it holds, its file encoding, and that a
// damaged index file, or one that does not belong to the current redo and undo files, is refused.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { SegmentError } from '../../src/core/index.js';
import type { RedoRecord, UndoExtent } from '../../src/log/index.js';
import {
  TX_INDEX_BINDING_BYTES,
  TX_INDEX_HEADER_BYTES,
  TxIndex,
} from '../../src/views/tx-index.js';
import { rng } from '../support/model.js';

function sample(
  records: number,
  extents: number,
  volumes = 3,
): { records: RedoRecord[]; undo: UndoExtent[] } {
  const random = rng(records * 31 + extents);
  const kinds = ['write', 'zero', 'trim'] as const;
  const list: RedoRecord[] = Array.from({ length: records }, (_, i) => {
    const payloadOffsetBytes = 112 + i * 4096;
    return {
      kind: random.pick(kinds),
      volume: random.int(volumes),
      seq: 1000 + i,
      timeNs: 1_795_562_945_697_000_000n + BigInt(i * 17),
      offsetBytes: random.int(2 ** 40) * 512,
      lengthBytes: 512 * (1 + random.int(64)),
      recordOffsetBytes: payloadOffsetBytes - 48,
      payloadOffsetBytes,
    };
  });
  const undo: UndoExtent[] = [];
  let volume = 0;
  let at = 0;
  for (let i = 0; i < extents; i++) {
    if (random.bool(0.2) && volume < volumes - 1) {
      volume += 1;
      at = 0;
    }
    at += random.int(10_000);
    const lengthBytes = 1 + random.int(9000);
    undo.push({
      kind: random.bool(0.3) ? 'zero' : 'data',
      volume,
      offsetBytes: at,
      lengthBytes,
      payloadOffsetBytes: 96 + i * 10_000,
    });
    at += lengthBytes;
  }
  return { records: list, undo };
}

const BINDING = Buffer.alloc(TX_INDEX_BINDING_BYTES, 7);

describe('TxIndex', () => {
  it('holds the lists it was made from, and gives them back as objects', () => {
    const { records, undo } = sample(300, 250);
    const index = TxIndex.fromLists(records, undo);
    assert.equal(index.seqFirst, 1000);
    assert.equal(index.items, 550);
    assert.deepEqual(index.records, records);
    assert.deepEqual(index.undo, undo);
    assert.deepEqual(index.record(7), records[7]);
  });

  it('extentRange finds each volume, empty or not', () => {
    const { records, undo } = sample(1, 400, 4);
    const index = TxIndex.fromLists(records, undo);
    for (let volume = 0; volume < 6; volume++) {
      const { from, to } = index.extentRange(volume);
      const expected = undo
        .map((e, i) => [e.volume, i] as const)
        .filter(([v]) => v === volume)
        .map(([, i]) => i);
      assert.deepEqual(
        Array.from({ length: to - from }, (_, i) => from + i),
        expected,
        `volume ${volume}`,
      );
    }
  });

  it('encodes and decodes to the same lists (empty lists too)', () => {
    for (const [r, e] of [
      [0, 0],
      [1, 0],
      [0, 3],
      [333, 129],
    ] as const) {
      const { records, undo } = sample(r, e);
      const encoded = TxIndex.fromLists(records, undo).encode(42, BINDING);
      const decoded = TxIndex.decode(encoded, 'x.idx', 42, BINDING, 3);
      assert.deepEqual(decoded.records, records);
      assert.deepEqual(decoded.undo, undo);
    }
  });

  it('refuses every single-byte change, truncation and extension of the file', () => {
    const { records, undo } = sample(20, 15);
    const encoded = TxIndex.fromLists(records, undo).encode(5, BINDING);
    for (let at = 0; at < encoded.length; at++) {
      const damaged = Buffer.from(encoded);
      damaged[at] = (damaged[at] as number) ^ 0x10;
      assert.throws(
        () => TxIndex.decode(damaged, 'x.idx', 5, BINDING, 3),
        SegmentError,
        `byte ${at}`,
      );
    }
    assert.throws(
      () => TxIndex.decode(encoded.subarray(0, encoded.length - 8), 'x.idx', 5, BINDING, 3),
      SegmentError,
    );
    assert.throws(
      () => TxIndex.decode(encoded.subarray(0, TX_INDEX_HEADER_BYTES), 'x.idx', 5, BINDING, 3),
      SegmentError,
    );
    assert.throws(
      () => TxIndex.decode(Buffer.concat([encoded, Buffer.alloc(8)]), 'x.idx', 5, BINDING, 3),
      SegmentError,
    );
  });

  it('refuses an index of another transaction, of other files, or with volumes out of range', () => {
    const { records, undo } = sample(20, 15);
    const encoded = TxIndex.fromLists(records, undo).encode(5, BINDING);
    assert.throws(
      () => TxIndex.decode(encoded, 'x.idx', 6, BINDING, 3),
      /index of transaction 5, expected 6/,
    );
    const other = Buffer.from(BINDING);
    other[200] = 0;
    assert.throws(
      () => TxIndex.decode(encoded, 'x.idx', 5, other, 3),
      /differs from the one indexed/,
    );
    assert.throws(() => TxIndex.decode(encoded, 'x.idx', 5, BINDING, 2), /invalid/);
  });
});
