// Views built in bulk and read with coalesced preads, against the independent model: a small
// history (real redo and undo segments, real undo building and apply, the manager's TxFiles with its
// cache and index files) in a temp dir. Covers every seq, reads of any range (pieces of one file
// read in one pread, replica runs spanning other pieces, read-ahead of sequential reads), block
// status with replica holes, clones, stepping, views that stay put while transactions are applied,
// and index files that are missing, damaged or stale.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { RewindError } from '../../src/core/index.js';
import { buildSealedRedo, parseSealedRedo } from '../../src/log/index.js';
import { applyRedo, saveUndo } from '../../src/manager/apply.js';
import { ReplicaVolume } from '../../src/manager/replica.js';
import { TxFiles } from '../../src/manager/txfiles.js';
import { Overlay } from '../../src/views/overlay.js';
import { View, type History, type HistoryTx } from '../../src/views/view.js';
import {
  ModelVolumeSet,
  randomHistory,
  replay,
  rng,
  type ModelWrite,
  type Rng,
} from '../support/model.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const VOLUME_SET_ID = Buffer.alloc(16, 0xab);

/** Transactions applied the way the manager does, served through the History interface views use. */
class MiniHistory implements History {
  readonly txs: HistoryTx[] = [];
  readonly files: TxFiles;
  readonly replicas: ReplicaVolume[];
  readonly views: View[] = [];
  readonly sizes: number[];
  readonly writes: ModelWrite[] = [];
  /** Whether views get the transaction files mapped (false: they pread them, as when mapping fails). */
  mapFiles = true;

  constructor(
    readonly dir: string,
    sizes: number[],
  ) {
    this.sizes = sizes;
    fs.mkdirSync(path.join(dir, 'redo'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'undo'), { recursive: true });
    this.files = new TxFiles(dir, () => sizes.length);
    this.replicas = sizes.map((size, i) =>
      ReplicaVolume.open(path.join(dir, 'replica'), i, `v${i}`, size),
    );
  }

  /** The same directory with a fresh TxFiles: nothing cached, indexes come from files. */
  reopen(): MiniHistory {
    const again = new MiniHistory(this.dir, this.sizes);
    again.txs.push(...this.txs);
    again.writes.push(...this.writes);
    return again;
  }

  get volumeCount(): number {
    return this.sizes.length;
  }
  volumeSize(volume: number): number {
    return this.sizes[volume] as number;
  }
  seqCommitted(): number {
    return this.txs[this.txs.length - 1]?.seqLast ?? 0;
  }
  txsAfter(seq: number, upTo = Number.MAX_SAFE_INTEGER): HistoryTx[] {
    return this.txs.filter((tx) => tx.seqLast > seq && tx.seqFirst <= upTo);
  }
  txIndex(idx: number): ReturnType<History['txIndex']> {
    return this.files.index(idx);
  }
  redoFd(idx: number): number {
    return this.files.fd(this.files.redoPath(idx));
  }
  undoFd(idx: number): number {
    return this.files.fd(this.files.undoPath(idx));
  }
  mappedFile(idx: number, kind: 'redo' | 'undo'): Buffer | undefined {
    return this.mapFiles ? this.files.mapped(idx, kind) : undefined;
  }
  replicaFd(volume: number): number {
    return (this.replicas[volume] as ReplicaVolume).fd;
  }

  /** One transaction: redo file, undo (before the replica changes), open views take it, apply. */
  async commit(writes: ModelWrite[]): Promise<void> {
    const idx = this.txs.length + 1;
    const seqFirst = this.seqCommitted() + 1;
    writes.forEach((w, i) => assert.equal(w.seq, seqFirst + i));
    const records = writes.map((w) => ({
      kind: w.kind,
      volume: w.volume,
      seq: w.seq,
      timeNs: BigInt(w.seq) * 1000n,
      offsetBytes: w.offset,
      lengthBytes: w.length,
      ...(w.data ? { data: w.data } : {}),
    }));
    const buf = Buffer.concat(
      buildSealedRedo(
        { volumeSetId: VOLUME_SET_ID, segmentIndex: idx, seqFirst, createdNs: 0n, flags: 0 },
        records,
      ),
    );
    const redoFile = this.files.redoPath(idx);
    fs.writeFileSync(redoFile, buf);
    const parsed = parseSealedRedo(buf, redoFile, this.sizes.length);
    const seqLast = seqFirst + writes.length - 1;
    const undo = await saveUndo(
      this.files.undoPath(idx),
      { volumeSetId: VOLUME_SET_ID, segmentIndex: idx, seqFirst, seqLast },
      parsed.records,
      this.replicas,
    );
    this.files.remember(idx, { records: parsed.records, undo: undo.extents });
    for (const view of this.views) view.addUndo(idx, undo.extents);
    await applyRedo(buf, parsed.records, this.replicas);
    this.txs.push({ idx, seqFirst, seqLast });
    this.writes.push(...writes);
  }

  /** Commits `writes` in transactions of random sizes. */
  async commitAll(random: Rng, writes: ModelWrite[], maxPerTx: number): Promise<void> {
    for (let at = 0; at < writes.length;) {
      const count = 1 + random.int(maxPerTx);
      await this.commit(writes.slice(at, at + count));
      at += count;
    }
  }

  images(seq: number): Buffer[] {
    return replay(this.sizes, this.writes, seq);
  }

  close(): void {
    this.files.close();
    for (const replica of this.replicas) replica.close();
  }
}

function tempDir(label: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `rewind-views-${label}-`));
}

/** Renumbers writes to follow `seqLast`. */
function renumber(writes: ModelWrite[], seqLast: number): ModelWrite[] {
  return writes.map((w, i) => ({ ...w, seq: seqLast + 1 + i }));
}

async function checkEverySeq(history: MiniHistory, label: string): Promise<void> {
  for (let seq = 0; seq <= history.seqCommitted(); seq++) {
    const view = await View.build(`${label}-${seq}`, 'snapshot', seq, history);
    const images = history.images(seq);
    for (let v = 0; v < history.volumeCount; v++) {
      assert.ok(
        view.read(v, 0, history.volumeSize(v)).equals(images[v] as Buffer),
        `${label}: volume ${v} at seq ${seq} differs from the model`,
      );
    }
  }
}

describe('views over a history of transactions', () => {
  const dirs: string[] = [];
  after(() => {
    for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
  });
  const newHistory = (label: string, sizes: number[]): MiniHistory => {
    const dir = tempDir(label);
    dirs.push(dir);
    return new MiniHistory(dir, sizes);
  };

  it('every seq equals the model: cached indexes, index files, full parses, damaged index files', async () => {
    const sizes = [3 * MiB, 1536 * KiB];
    for (const seed of [1, 2]) {
      const random = rng(seed);
      const history = newHistory(`seqs${seed}`, sizes);
      await history.commitAll(
        random,
        randomHistory(random, sizes, 70, { maxLength: 96 * KiB, align: 512 }),
        9,
      );
      await checkEverySeq(history, `cached${seed}`);
      history.close();
      // A fresh TxFiles reads the index files written when the transactions were applied.
      const indexFiles = fs.readdirSync(path.join(history.dir, 'index'));
      assert.equal(indexFiles.length, history.txs.length, 'one index file per transaction');
      const fromIndexFiles = history.reopen();
      await checkEverySeq(fromIndexFiles, `files${seed}`);
      fromIndexFiles.close();
      // Without them (full parse) and with damaged ones (refused, then a full parse), the same.
      for (const name of indexFiles) {
        const file = path.join(history.dir, 'index', name);
        if (random.bool()) fs.rmSync(file);
        else {
          const bytes = fs.readFileSync(file);
          const at = random.int(bytes.length);
          bytes[at] = (bytes[at] as number) ^ 0x01;
          fs.writeFileSync(file, bytes);
        }
      }
      const parsed = history.reopen();
      await checkEverySeq(parsed, `parsed${seed}`);
      parsed.close();
      // The full parses wrote good index files again.
      const again = history.reopen();
      for (const tx of again.txs) {
        const bytes = fs.readFileSync(again.files.indexPath(tx.idx));
        assert.ok(bytes.length > 0);
      }
      await checkEverySeq(again, `rewritten${seed}`);
      again.close();
    }
  });

  it('an index file of other redo or undo files is not used', async () => {
    const sizes = [MiB];
    const random = rng(5);
    const first = newHistory('stale-a', sizes);
    await first.commitAll(
      random,
      randomHistory(random, sizes, 12, { maxLength: 32 * KiB, align: 512 }),
      12,
    );
    const second = newHistory('stale-b', sizes);
    await second.commitAll(
      random,
      randomHistory(random, sizes, 12, { maxLength: 32 * KiB, align: 512 }),
      12,
    );
    first.close();
    second.close();
    // Transaction 1 of the second history gets the first history's index file.
    fs.copyFileSync(first.files.indexPath(1), second.files.indexPath(1));
    const reopened = second.reopen();
    await checkEverySeq(reopened, 'stale');
    reopened.close();
  });

  for (const mapFiles of [true, false]) {
    const how = mapFiles ? 'mapped files' : 'preads';
    it(`reads of any range equal the model, across piece boundaries and file gaps (${how})`, async () => {
      const sizes = [2 * MiB];
      const history = newHistory('ranges', sizes);
      history.mapFiles = mapFiles;
      const random = rng(9);
      const base = random.bytes(2 * MiB);
      await history.commit([
        { seq: 1, volume: 0, kind: 'write', offset: 0, length: 2 * MiB, data: base },
      ]);
      const write = (offset: number, length: number): ModelWrite => ({
        seq: 0,
        volume: 0,
        kind: 'write',
        offset,
        length,
        data: random.bytes(length),
      });
      // Transaction 2: small writes close together (one pread for their undo, the replica read over
      // them), a middle range transaction 3 also writes (so 3's undo is used on both sides of a
      // 64 KiB extent it does not show: two preads), and a zero.
      await history.commit(
        renumber(
          [
            write(0, 512),
            write(1024, 512),
            write(40 * KiB, 512),
            write(200 * KiB, 4 * KiB),
            write(310 * KiB, 64 * KiB),
            { seq: 0, volume: 0, kind: 'zero', offset: 600 * KiB, length: 8 * KiB },
          ],
          history.seqCommitted(),
        ),
      );
      await history.commit(
        renumber(
          [
            write(300 * KiB, KiB),
            write(310 * KiB, 64 * KiB),
            write(380 * KiB, KiB),
            write(1000 * KiB, 100 * KiB),
          ],
          history.seqCommitted(),
        ),
      );
      // Many small transactions of 512-byte writes spread over the volume.
      for (let t = 0; t < 30; t++)
        await history.commit(
          renumber(
            Array.from({ length: 20 }, () => write(random.int(4096) * 512, 512)),
            history.seqCommitted(),
          ),
        );
      for (const seq of [1, 3, 4, 8, 40, history.seqCommitted() - 5, history.seqCommitted()]) {
        const view = await View.build(`r${seq}`, 'snapshot', seq, history);
        const image = history.images(seq)[0] as Buffer;
        assert.ok(view.read(0, 0, 2 * MiB).equals(image), `whole volume at seq ${seq}`);
        for (let i = 0; i < 400; i++) {
          const offset = random.int(2 * MiB);
          const length =
            1 + random.int(Math.min(2 * MiB - offset, random.bool() ? 5000 : 300 * KiB));
          assert.ok(
            view.read(0, offset, length).equals(image.subarray(offset, offset + length)),
            `seq ${seq}: ${length} bytes at ${offset}`,
          );
        }
      }
    });

    it(`sequential reads (read-ahead windows), backwards and interleaved streams equal the model (${how})`, async () => {
      const sizes = [4 * MiB];
      const history = newHistory('sequential', sizes);
      history.mapFiles = mapFiles;
      const random = rng(21);
      await history.commit([
        {
          seq: 1,
          volume: 0,
          kind: 'write',
          offset: 0,
          length: 4 * MiB,
          data: random.bytes(4 * MiB),
        },
      ]);
      for (let t = 0; t < 40; t++) {
        const writes = Array.from({ length: 60 }, (): ModelWrite => {
          const length = 512 * (1 + random.int(3));
          return {
            seq: 0,
            volume: 0,
            kind: 'write',
            offset: random.int(8192 - 3) * 512,
            length,
            data: random.bytes(length),
          };
        });
        await history.commit(renumber(writes, history.seqCommitted()));
      }
      const view = await View.build('seq', 'snapshot', 1, history);
      const image = history.images(1)[0] as Buffer;
      for (const chunk of [4 * KiB, 64 * KiB, MiB, 333 * KiB]) {
        for (let offset = 0; offset < 4 * MiB; offset += chunk) {
          const length = Math.min(chunk, 4 * MiB - offset);
          assert.ok(
            view.read(0, offset, length).equals(image.subarray(offset, offset + length)),
            `forward ${chunk} at ${offset}`,
          );
        }
        for (let offset = 4 * MiB - chunk; offset >= 0; offset -= chunk) {
          assert.ok(
            view.read(0, offset, chunk).equals(image.subarray(offset, offset + chunk)),
            `backward ${chunk} at ${offset}`,
          );
        }
      }
      // Two streams in turn, then random reads: windows left behind must not be served wrongly.
      for (let step = 0; step < 64; step++) {
        for (const stream of [0, 2 * MiB]) {
          const offset = stream + step * 32 * KiB;
          assert.ok(
            view.read(0, offset, 32 * KiB).equals(image.subarray(offset, offset + 32 * KiB)),
            `stream at ${offset}`,
          );
        }
      }
      for (let i = 0; i < 300; i++) {
        const offset = random.int(4 * MiB - 8 * KiB);
        assert.ok(
          view.read(0, offset, 8 * KiB).equals(image.subarray(offset, offset + 8 * KiB)),
          `random at ${offset}`,
        );
      }
    });
  }

  it('committed transaction files are mapped whole, and one shorter than its index fails the read with a typed error', async () => {
    const sizes = [2 * MiB];
    const history = newHistory('mapped', sizes);
    const random = rng(31);
    await history.commit([
      { seq: 1, volume: 0, kind: 'write', offset: 0, length: 2 * MiB, data: random.bytes(2 * MiB) },
    ]);
    await history.commit(
      renumber(
        [{ seq: 0, volume: 0, kind: 'write', offset: 4096, length: MiB, data: random.bytes(MiB) }],
        1,
      ),
    );
    await history.commit(
      renumber(
        [
          {
            seq: 0,
            volume: 0,
            kind: 'write',
            offset: 1536 * KiB,
            length: 4096,
            data: random.bytes(4096),
          },
        ],
        2,
      ),
    );
    const undo2 = history.files.mapped(2, 'undo');
    assert.ok(
      undo2 !== undefined && undo2.equals(fs.readFileSync(history.files.undoPath(2))),
      'the undo file mapped whole',
    );
    assert.ok(
      history.files.mapped(2, 'redo')?.equals(fs.readFileSync(history.files.redoPath(2))),
      'the redo file mapped whole',
    );
    // Transaction 3's undo cut short on disk before anyone mapped it (its index is cached).
    const undo3 = history.files.undoPath(3);
    fs.truncateSync(undo3, 64);
    const view = await View.build('short', 'snapshot', 1, history);
    assert.throws(
      () => view.read(0, 1536 * KiB, 4096),
      (error: unknown) =>
        error instanceof RewindError &&
        error.code === 'REWIND_SEGMENT_CORRUPT' &&
        /transaction 3/.test(error.message),
    );
    const image = history.images(1)[0] as Buffer;
    assert.ok(
      view.read(0, 16 * KiB, 64 * KiB).equals(image.subarray(16 * KiB, 80 * KiB)),
      'pieces from other files still read',
    );
  });

  it('a transaction file that cannot be read fails the read, and the view reads again once it can', async () => {
    const sizes = [2 * MiB];
    const history = newHistory('failing', sizes);
    const random = rng(24);
    await history.commit([
      { seq: 1, volume: 0, kind: 'write', offset: 0, length: 2 * MiB, data: random.bytes(2 * MiB) },
    ]);
    await history.commit(
      renumber(
        [
          {
            seq: 0,
            volume: 0,
            kind: 'write',
            offset: 4096,
            length: 2 * MiB - 8192,
            data: random.bytes(2 * MiB - 8192),
          },
        ],
        1,
      ),
    );
    // Undo files that cannot be read: a directory's handle (read fails with EISDIR).
    const directory = fs.openSync(history.dir, 'r');
    try {
      const broken = Object.assign(Object.create(history) as MiniHistory, {
        undoFd: (): number => directory,
        mappedFile: (): undefined => undefined,
      });
      const view = await View.build('f', 'snapshot', 1, broken);
      const image = history.images(1)[0] as Buffer;
      assert.ok(view.read(0, 0, 4096).equals(image.subarray(0, 4096)), 'replica only');
      for (const [offset, length] of [
        [0, MiB],
        [8192, 4096],
        [0, 2 * MiB],
      ] as const) {
        assert.throws(
          () => view.read(0, offset, length),
          /EISDIR|illegal operation on a directory/,
          `${length} bytes at ${offset}`,
        );
      }
      const good = await View.build('g', 'snapshot', 1, history);
      assert.ok(good.read(0, 0, 2 * MiB).equals(image));
    } finally {
      fs.closeSync(directory);
    }
  });

  it('block status: zero pieces and never-written replica chunks are holes, and holes read as zeroes', async () => {
    const sizes = [8 * MiB];
    const history = newHistory('status', sizes);
    const random = rng(33);
    const write = (offset: number, length: number): ModelWrite => ({
      seq: 0,
      volume: 0,
      kind: 'write',
      offset,
      length,
      data: random.bytes(length),
    });
    await history.commit(renumber([write(MiB + 4096, 64 * KiB), write(5 * MiB, MiB)], 0));
    await history.commit(
      renumber(
        [
          { seq: 0, volume: 0, kind: 'zero', offset: 5 * MiB + 128 * KiB, length: 256 * KiB },
          write(3 * MiB + 512, 4096),
        ],
        history.seqCommitted(),
      ),
    );
    await history.commit(
      renumber(
        [write(7 * MiB, 1000), { seq: 0, volume: 0, kind: 'trim', offset: MiB, length: 8 * KiB }],
        history.seqCommitted(),
      ),
    );
    for (let seq = 0; seq <= history.seqCommitted(); seq++) {
      const view = await View.build(`s${seq}`, 'snapshot', seq, history);
      const image = history.images(seq)[0] as Buffer;
      const pieces = view.zeroPieces(0, 0, 8 * MiB);
      let at = 0;
      for (const piece of pieces) {
        if (piece.zero)
          assert.ok(
            image.subarray(at, at + piece.lengthBytes).equals(Buffer.alloc(piece.lengthBytes)),
            `seq ${seq}: a hole at ${at} holds data`,
          );
        at += piece.lengthBytes;
      }
      assert.equal(at, 8 * MiB, 'the pieces cover the range');
      // Chunks no transaction ever wrote data to are holes in every view.
      for (const chunk of [0, 2, 4, 6]) {
        const status = view.zeroPieces(0, chunk * MiB + 100, MiB - 200);
        assert.deepEqual(
          status,
          [{ lengthBytes: MiB - 200, zero: true }],
          `seq ${seq}: chunk ${chunk}`,
        );
      }
    }
    // At the last seq, the data written is data; at seq 3 (inside transaction 2, just after its
    // zero record) the zeroed range is a hole; the replica holds it now and may hold data there.
    const last = await View.build('last', 'snapshot', history.seqCommitted(), history);
    assert.deepEqual(last.zeroPieces(0, 5 * MiB, 64 * KiB), [
      { lengthBytes: 64 * KiB, zero: false },
    ]);
    const inside = await View.build('inside', 'snapshot', 3, history);
    assert.deepEqual(inside.zeroPieces(0, 5 * MiB + 128 * KiB, 256 * KiB), [
      { lengthBytes: 256 * KiB, zero: true },
    ]);
    assert.deepEqual(last.zeroPieces(0, 5 * MiB + 128 * KiB, 256 * KiB), [
      { lengthBytes: 256 * KiB, zero: false },
    ]);
    // A clone: its overlay's zero ranges are holes, its writes data, the rest as the view.
    const dir = path.join(history.dir, 'clone');
    fs.mkdirSync(dir);
    const overlay = Overlay.open(path.join(dir, 'v0.img'), path.join(dir, 'v0.journal'), 8 * MiB);
    try {
      const clone = await View.build('clone', 'clone', history.seqCommitted(), history, [overlay]);
      overlay.write(2 * MiB, Buffer.alloc(4096, 7));
      overlay.zero(5 * MiB, 4096);
      assert.deepEqual(clone.zeroPieces(0, 2 * MiB, 8192), [
        { lengthBytes: 4096, zero: false },
        { lengthBytes: 4096, zero: true },
      ]);
      // Chunk 4 was never written, then the overlay's zero, then chunk 5's data.
      assert.deepEqual(clone.zeroPieces(0, 5 * MiB - 4096, 3 * 4096), [
        { lengthBytes: 8192, zero: true },
        { lengthBytes: 4096, zero: false },
      ]);
      assert.ok(clone.read(0, 2 * MiB, 4096).equals(Buffer.alloc(4096, 7)));
      assert.ok(clone.read(0, 5 * MiB, 4096).equals(Buffer.alloc(4096)));
    } finally {
      overlay.close();
    }
  });

  it('a view stays put while transactions are applied, and steps forward and back like the model', async () => {
    const sizes = [MiB, 512 * KiB];
    const history = newHistory('steps', sizes);
    const random = rng(44);
    const writes = randomHistory(random, sizes, 120, { maxLength: 48 * KiB, align: 512 });
    await history.commitAll(random, writes.slice(0, 40), 7);
    const early = await View.build('early', 'snapshot', 25, history);
    history.views.push(early);
    const earlyImages = history.images(25);
    await history.commitAll(random, renumber(writes.slice(40), 40), 7);
    for (let v = 0; v < sizes.length; v++)
      assert.ok(
        early.read(v, 0, sizes[v] as number).equals(earlyImages[v] as Buffer),
        `volume ${v} moved`,
      );
    const model = new ModelVolumeSet(sizes);
    let at = 25;
    for (const target of [0, 3, 60, 61, 119, 120, 118, 45, 1, 100, 40, 0, 120]) {
      const crossed = await early.stepTo(target);
      assert.equal(crossed.length, Math.abs(target - at), `writes crossed from ${at} to ${target}`);
      at = target;
      const images = history.images(target);
      for (let v = 0; v < sizes.length; v++)
        assert.ok(
          early.read(v, 0, sizes[v] as number).equals(images[v] as Buffer),
          `after stepping to ${target}: volume ${v}`,
        );
    }
    for (const w of history.writes) model.apply(w);
    for (let v = 0; v < sizes.length; v++)
      assert.ok(early.read(v, 0, sizes[v] as number).equals(model.image(v)));
  });
});

describe('view building at scale', () => {
  let dir = '';
  before(() => {
    dir = tempDir('scale');
  });
  after(() => fs.rmSync(dir, { recursive: true, force: true }));

  it('many transactions of small writes: every tenth seq equals the model', async () => {
    const sizes = [4 * MiB];
    const history = new MiniHistory(dir, sizes);
    const random = rng(55);
    const writes = randomHistory(random, sizes, 3000, {
      maxLength: 2048,
      align: 512,
      hotspot: false,
    });
    await history.commitAll(random, writes, 150);
    for (let seq = 0; seq <= history.seqCommitted(); seq += 97) {
      const view = await View.build(`x${seq}`, 'snapshot', seq, history);
      assert.ok(view.read(0, 0, 4 * MiB).equals(history.images(seq)[0] as Buffer), `seq ${seq}`);
    }
    history.close();
  });
});
