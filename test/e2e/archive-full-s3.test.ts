// Virtual full images through the real CLI against a real S3 server on loopback (Swift s3api,
// test/support/swift-s3.ts): `rewind up --archive s3://...` with a small journal, writes by
// qemu-io, `rewind full` with progress on stderr and its answer, `rewind archive ls --json` and
// `archive fulls --json` listing it, `archive status` naming it; then a snapshot at a point the
// journal has dropped, which the CLI plans from the full plus one archived increment (fewer bytes
// than the undo of everything since), read through a real NBD client (nbdcopy) and compared
// with the model's replay; a second full uploads only the chunk that changed. Then the host is
// lost with the archive's first batches gone (as its retention leaves it): `rewind archive
// rebuild` from S3 starts over the newest full image, and a `rewind manager` on the rebuilt
// directory serves an archived point older than that full, read with nbdcopy, equal to the model.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  CreateBucketCommand,
  DeleteObjectCommand,
  ListObjectsV2Command,
  S3Client,
} from '@aws-sdk/client-s3';
import {
  BIN,
  exited,
  freePort,
  startRewind,
  startUpProcess,
  until,
  type RewindProcess,
} from '../support/process.js';
import { SwiftS3, swiftS3Missing } from '../support/swift-s3.js';

const tools = ['qemu-io', 'nbdcopy'].filter((t) => spawnSync('which', [t]).status !== 0);
const missing = tools.length > 0 ? `missing ${tools.join(', ')}` : swiftS3Missing();
const BUCKET = 'rewind-fulls';
const VOLUME_BYTES = 8 * 1024 * 1024;
const WRITE_BYTES = 65536;

let swift: SwiftS3 | undefined;

if (missing === undefined) {
  before(async () => {
    swift = await SwiftS3.start();
    const client = new S3Client({
      endpoint: swift.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      credentials: { accessKeyId: 'test:tester', secretAccessKey: 'testing' },
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
    client.destroy();
  });
  after(async () => {
    await swift?.stop();
  });
}

test(
  'rewind full on S3: progress, listed, and an old point served from the full plus redo',
  { skip: missing ?? false, timeout: 180_000 },
  async () => {
    const server = swift as SwiftS3;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-full-s3-'));
    const [nbd, http] = [await freePort(), await freePort()];
    const env = { ...process.env, ...server.env(), REWIND_SERVER: `http://127.0.0.1:${http}` };
    const rewind = (...args: string[]): { status: number | null; out: string; err: string } => {
      const result = spawnSync(process.execPath, [BIN, ...args], { env, timeout: 60_000 });
      return {
        status: result.status,
        out: result.stdout.toString(),
        err: result.stderr.toString(),
      };
    };
    const ok = (...args: string[]): string => {
      const result = rewind(...args);
      assert.equal(result.status, 0, `rewind ${args.join(' ')}: ${result.err}`);
      return result.out;
    };
    // The model: every write in order; the image at seq N replays the first N.
    const writes: { offset: number; data: Buffer }[] = [];
    const replay = (seq: number): Buffer => {
      const image = Buffer.alloc(VOLUME_BYTES);
      for (const w of writes.slice(0, seq)) w.data.copy(image, w.offset);
      return image;
    };
    const write = async (offset: number): Promise<void> => {
      const data = crypto.randomBytes(WRITE_BYTES);
      const source = path.join(dir, `w${writes.length}`);
      fs.writeFileSync(source, data);
      execFileSync('qemu-io', [
        '-f',
        'raw',
        `nbd://127.0.0.1:${nbd}/v`,
        '-c',
        `write -s ${source} ${offset} 64k`,
      ]);
      writes.push({ offset, data });
      await new Promise((resolve) => setTimeout(resolve, 300)); // one transaction each
    };
    const savedEnv = { ...process.env };
    let up: ChildProcess | undefined;
    try {
      Object.assign(process.env, server.env());
      up = await startUpProcess([
        '--data',
        path.join(dir, 'data'),
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--volume',
        'v:8M',
        '--seal-ms',
        '100',
        '--archive',
        `s3://${BUCKET}/run-${process.pid}`,
        '--s3-endpoint',
        server.endpoint,
        '--s3-path-style',
        '--archive-batch-ms',
        '50',
        '--journal-max',
        '384K',
        '--full-every',
        '24h',
      ]);
      for (let i = 0; i < 2; i++) await write(i * WRITE_BYTES);
      ok('seal', '--wait');
      const full = rewind('full', '--json');
      assert.equal(full.status, 0, full.err);
      const first = JSON.parse(full.out) as {
        id: number;
        seq: number;
        manifestKey: string;
        chunks: { total: number; new: number; zero: number; known: number };
        bytesNew: number;
      };
      assert.equal(first.seq, 2);
      assert.deepEqual(first.chunks, { total: 2, new: 1, zero: 1, known: 0 });
      assert.ok(first.bytesNew > WRITE_BYTES * 2, 'random bytes do not compress');
      assert.match(full.err, /full: 2\/2 chunks, 1 new/, 'progress on stderr');

      // Writes in the second chunk (the full's chunk 0 stays as it was), archived, then dropped
      // from the journal by its limit.
      for (let i = 0; i < 10; i++) await write(4 * 1024 * 1024 + (i % 4) * WRITE_BYTES);
      ok('seal', '--wait');
      for (let waited = 0; ; waited += 200) {
        const status = JSON.parse(ok('archive', 'status', '--json')) as {
          archivedThroughSeq: number;
          fulls: { count: number; newest: { seq: number } | null; every: string };
        };
        if (status.archivedThroughSeq >= 12) {
          assert.equal(status.fulls.count, 1);
          assert.equal(status.fulls.newest?.seq, 2);
          assert.equal(status.fulls.every, '1d');
          break;
        }
        assert.ok(waited < 30_000, 'the archive has every write');
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      assert.match(ok('archive', 'status'), /newest full: full 1\tseq 2/);
      const listed = JSON.parse(ok('archive', 'ls', '--json')) as {
        kind: string;
        key: string;
        seq?: number;
      }[];
      const fullsListed = listed.filter((o) => o.kind === 'full');
      assert.deepEqual(
        fullsListed.map((f) => [f.key, f.seq]),
        [[first.manifestKey, 2]],
      );
      assert.ok(listed.some((o) => o.kind === 'batch'));
      const fulls = JSON.parse(ok('archive', 'fulls', '--json')) as {
        seq: number;
        volumes: number[];
      }[];
      assert.deepEqual(
        fulls.map((f) => [f.seq, f.volumes]),
        [[2, [0]]],
      );
      const retention = JSON.parse(ok('retention', '--json')) as { oldestSeq: number };
      assert.ok(
        retention.oldestSeq > 3,
        `the journal dropped seq 3 (oldest ${retention.oldestSeq})`,
      );

      // Seq 3: the full at 2 plus one increment fetches less than the undo of seqs 4..oldest.
      const snapshot = rewind('snapshot', 'old', '--at', '3');
      assert.equal(snapshot.status, 0, snapshot.err);
      assert.match(
        snapshot.err,
        /seq 3 is older than the journal: full image 1 at seq 2 \(1 chunks, [^)]+\) plus 1 archived increments/,
      );
      assert.match(
        snapshot.err,
        /not by the journal's anchor: local anchor \+ archived undo fetches \d+ bytes/,
      );
      const read = path.join(dir, 'old.img');
      execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/v@old`, read], { timeout: 60_000 });
      const got = fs.readFileSync(read);
      assert.equal(got.length, VOLUME_BYTES);
      assert.ok(got.equals(replay(3)), 'the view at seq 3 reads the model replayed to seq 3');
      ok('rm', 'old');

      // A second full: chunk 0 is known, chunk 1 is new.
      const second = JSON.parse(ok('full', '--json')) as {
        seq: number;
        chunks: { new: number; known: number };
      };
      assert.equal(second.seq, 12);
      assert.deepEqual([second.chunks.new, second.chunks.known], [1, 1]);
      const text = rewind('full');
      assert.equal(text.status, 1, 'the same full again is refused');
      assert.match(text.err, /holds these volumes already/);
      assert.match(ok('archive', 'fulls'), /2 full images/);
      const verify = rewind('archive', 'verify', '--deep', '--json');
      assert.equal(verify.status, 0, verify.err);
      const result = JSON.parse(verify.out) as {
        fulls: number;
        chunks: number;
        problems: unknown[];
      };
      assert.deepEqual([result.fulls, result.chunks, result.problems], [2, 2, []]);

      // The host is lost, and the archive no longer holds its first five transactions.
      up.kill('SIGKILL');
      await new Promise((resolve) => up?.once('exit', resolve));
      up = undefined;
      const prefix = `run-${process.pid}/`;
      const client = new S3Client({
        endpoint: server.endpoint,
        forcePathStyle: true,
        region: 'us-east-1',
        credentials: { accessKeyId: 'test:tester', secretAccessKey: 'testing' },
        requestChecksumCalculation: 'WHEN_REQUIRED',
        responseChecksumValidation: 'WHEN_REQUIRED',
      });
      const keys = (
        await client.send(new ListObjectsV2Command({ Bucket: BUCKET, Prefix: prefix }))
      ).Contents?.map((o) => o.Key ?? '');
      const early = (keys ?? []).filter((k) => Number(/\/tx\/\d{16}-(\d{16})$/.exec(k)?.[1]) <= 5);
      assert.ok(early.length > 0, `batch objects of the first transactions (${keys?.join(' ')})`);
      for (const Key of early) await client.send(new DeleteObjectCommand({ Bucket: BUCKET, Key }));
      client.destroy();
      const rebuiltDir = path.join(dir, 'rebuilt');
      const archiveUrl = `s3://${BUCKET}/run-${process.pid}`;
      const s3 = ['--archive', archiveUrl, '--s3-endpoint', server.endpoint, '--s3-path-style'];
      const rebuilt = rewind('archive', 'rebuild', ...s3, '--data', rebuiltDir, '--json');
      assert.equal(rebuilt.status, 0, rebuilt.err);
      const summary = JSON.parse(rebuilt.out) as {
        seq: number;
        seqFrom: number;
        base: { seq: number } | null;
        fulls: { seq: number }[];
      };
      assert.equal(summary.seq, 12);
      assert.ok(summary.seqFrom >= 5 && summary.seqFrom < 12, `archive from ${summary.seqFrom}`);
      assert.equal(summary.base?.seq, 12, 'the full image at 12 is the base');
      assert.deepEqual(
        summary.fulls.map((f) => f.seq),
        [2, 12],
      );
      const [link, nbd2, http2] = [await freePort(), await freePort(), await freePort()];
      const manager: RewindProcess = startRewind([
        'manager',
        '--data',
        rebuiltDir,
        '--listen',
        `127.0.0.1:${link}`,
        '--nbd',
        `127.0.0.1:${nbd2}`,
        '--http',
        `127.0.0.1:${http2}`,
        '--token',
        't',
        ...s3,
      ]);
      try {
        await until('the rebuilt manager is up', () => manager.out().includes('API:'), 60_000);
        const api = [
          '--server',
          `http://127.0.0.1:${http2}`,
          '--api-token-file',
          path.join(rebuiltDir, 'api-token'),
        ];
        for (const seq of [summary.seqFrom + 1, 12]) {
          ok('snapshot', `lost-${seq}`, '--at', String(seq), ...api);
          const file = path.join(dir, `lost-${seq}.img`);
          execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbd2}/v@lost-${seq}`, file], {
            timeout: 60_000,
          });
          assert.ok(fs.readFileSync(file).equals(replay(seq)), `seq ${seq} after the rebuild`);
        }
        const afterRebuild = JSON.parse(ok('archive', 'verify', '--deep', '--json', ...api)) as {
          problems: unknown[];
        };
        assert.deepEqual(afterRebuild.problems, []);
      } finally {
        manager.child.kill('SIGTERM');
        await exited(manager);
      }
    } finally {
      process.env = savedEnv;
      up?.kill('SIGTERM');
      if (up) await new Promise((resolve) => up?.once('exit', resolve));
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
