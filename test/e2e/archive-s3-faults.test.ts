// The archive under a failing S3 server: a fault proxy (test/support/fault-proxy.ts) between an
// in-process manager and a real one (Swift s3api on loopback) answers every request with 503
// SlowDown, then holds every answer back under the store's timeout, then past it. Through all of
// it commits go on and nothing is lost: archiving waits and resumes, the backlog and the error
// are shown, no history is dropped before it is archived. A point older than the journal (the
// step every export and restore of such a point starts with) fails with a clear
// REWIND_ARCHIVE_UNAVAILABLE while the server errs or stalls past the timeout, waits while it
// is only slow, and every point read afterwards equals a replay of the model's writes.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { openStore } from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';
import { FaultProxy } from '../support/fault-proxy.js';
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';
import { SwiftS3, swiftS3Missing } from '../support/swift-s3.js';

const missing = swiftS3Missing();
const BUCKET = 'rewind-faults';
const VOLUMES = [{ name: 'a', sizeBytes: 512 * 1024 }];
const VOLUME_SET_ID = '0d0d0d0d-0d0d-0d0d-0d0d-0d0d0d0d0d0d';
const TOKEN = 't';
const LIMIT = 160 * 1024;
const TIMEOUT_MS = 1500;

let swift: SwiftS3 | undefined;
let proxy: FaultProxy | undefined;
const savedEnv = { ...process.env };

function segment(s: number, writes: ModelWrite[]): FakeRecord[] {
  const records: FakeRecord[] = [];
  for (let r = 0; r < 3; r++) {
    const offset = ((s * 5 + r * 11) % 128) * 4096;
    const data = crypto.randomBytes(4096);
    records.push({ volume: 0, kind: 'write', offset, length: 4096, data, timeNs: 0n });
    writes.push({ seq: writes.length + 1, volume: 0, kind: 'write', offset, length: 4096, data });
  }
  return records.map((rec, i) => ({ ...rec, timeNs: BigInt(Date.now() + i) * 1_000_000n }));
}

function replay(writes: readonly ModelWrite[], seq: number): Buffer {
  const model = new ModelVolumeSet(VOLUMES.map((v) => v.sizeBytes));
  for (const w of writes) if (w.seq <= seq) model.apply(w);
  return model.image(0);
}

async function until(what: string, check: () => boolean, timeoutMs = 30_000): Promise<void> {
  for (let waited = 0; !check(); waited += 50) {
    assert.ok(waited < timeoutMs, `timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

async function refused(promise: Promise<unknown>): Promise<RewindError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof RewindError, String(error));
    return error;
  }
  assert.fail('expected a refusal');
}

if (missing !== undefined) {
  it('the archive under S3 faults (Swift)', { skip: missing }, () => undefined);
} else {
  before(async () => {
    swift = await SwiftS3.start();
    Object.assign(process.env, swift.env());
    const client = new S3Client({
      endpoint: swift.endpoint,
      forcePathStyle: true,
      region: 'us-east-1',
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
    await client.send(new CreateBucketCommand({ Bucket: BUCKET }));
    client.destroy();
    proxy = await FaultProxy.start(swift.endpoint);
  });
  after(async () => {
    await proxy?.stop();
    await swift?.stop();
    process.env = savedEnv;
  });

  describe('the archive under S3 faults (Swift s3api behind a fault proxy)', () => {
    it('errors, a slow server and one slower than the timeout: nothing lost', async () => {
      const faults = proxy as FaultProxy;
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-faults-'));
      const manager = await Manager.open({
        dataDir: path.join(dir, 'data'),
        token: TOKEN,
        log: () => undefined,
        applier: new InThreadApply(),
        retentionMerger: new InThreadApply(),
        retention: { keepEveryWrite: '3650d', keep: 'none', journalMax: String(LIMIT) },
        archive: {
          store: await openStore(`s3://${BUCKET}/run-${process.pid}`, {
            s3Endpoint: faults.endpoint,
            s3PathStyle: true,
            timeoutMs: TIMEOUT_MS,
          }),
          key: crypto.randomBytes(32),
          batchBytesMax: 48 * 1024,
          batchMs: 50,
          retryMsMax: 300,
          // Every old point is fetched again: each one below asks the server.
          cacheBytesMax: 1,
        },
      });
      const { port } = await manager.listen('127.0.0.1', 0);
      const agent = await FakeAgent.connect(port, {
        token: TOKEN,
        volumeSetId: VOLUME_SET_ID,
        volumes: VOLUMES,
      });
      const writes: ModelWrite[] = [];
      const archived = (): number => manager.archiveStatus()?.archivedThroughSeq ?? 0;
      const backlog = (): number => manager.archiveStatus()?.backlog.transactions ?? -1;
      try {
        for (let s = 0; s < 20; s++) {
          await agent.ship(segment(s, writes));
          await manager.archiver?.drain(20_000);
        }
        assert.ok(manager.retention.roomDrops > 0, 'the journal dropped archived history');
        assert.ok(manager.archivePlan('2'), 'seq 2 is served from the archive');

        // 503 SlowDown on every request: commits go on, archiving waits and says why.
        faults.mode = { kind: 'errors', status: 503, code: 'SlowDown' };
        const through = archived();
        for (let s = 20; s < 23; s++) await agent.ship(segment(s, writes));
        await until('archiving waits', () => manager.archiver?.state === 'waiting');
        const waiting = manager.archiveStatus();
        assert.equal(waiting?.archivedThroughSeq, through);
        assert.equal(waiting?.backlog.transactions, 3);
        assert.match(waiting?.lastError ?? '', /SlowDown|unavailable/i);
        assert.ok(waiting?.alerts.some((a) => /archive is unavailable/.test(a.message)));
        const erring = await refused(manager.createView('old', 'snapshot', '2'));
        assert.equal(erring.code, 'REWIND_ARCHIVE_UNAVAILABLE', erring.message);
        assert.equal(manager.views.size, 0, 'no view was made');
        assert.ok(faults.seen.errors > 0);

        // Slow but within the timeout: archiving catches up, an old point waits and is served.
        faults.mode = { kind: 'slow', delayMs: 400 };
        await until('archiving catches up while slow', () => backlog() === 0);
        assert.equal(archived(), writes.length);
        const slowStart = Date.now();
        const slowView = await manager.createView('old', 'snapshot', '2');
        assert.ok(Date.now() - slowStart >= 400, 'the view waited for the slow server');
        assert.ok(slowView.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, 2)));
        await manager.removeView('old');
        assert.ok(faults.seen.slow > 0);

        // Slower than the timeout: requests are given up, archiving waits, the point fails.
        faults.mode = { kind: 'slow', delayMs: TIMEOUT_MS * 3 };
        const before = archived();
        for (let s = 23; s < 25; s++) await agent.ship(segment(s, writes));
        await until('archiving waits past the timeout', () => {
          const status = manager.archiveStatus();
          return status?.state === 'waiting' && /time/i.test(status.lastError ?? '');
        });
        assert.equal(archived(), before);
        const stalled = await refused(manager.createView('old', 'snapshot', '2'));
        assert.equal(stalled.code, 'REWIND_ARCHIVE_UNAVAILABLE', stalled.message);
        assert.equal(manager.views.size, 0);

        // The server is well again: everything is archived, nothing was dropped unarchived.
        faults.mode = { kind: 'pass' };
        await until('archiving resumes', () => backlog() === 0, 60_000);
        assert.equal(archived(), writes.length);
        assert.equal(manager.retention.unarchivedDrops, 0);
        assert.deepEqual((await manager.verifyArchive({ deep: true })).problems, []);
        const oldest = manager.retention.status().oldestSeq;
        for (const seq of [0, 1, 2, Math.floor(oldest / 2), oldest - 1, oldest, writes.length]) {
          const view = await manager.createView(`at-${seq}`, 'snapshot', String(seq));
          assert.ok(
            view.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, seq)),
            `seq ${seq} equals the model`,
          );
          await manager.removeView(`at-${seq}`);
        }
      } finally {
        agent.close();
        await manager.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
