// The archiver against a real S3 server on loopback (Swift s3api, test/support/swift-s3.ts), with
// an in-process manager and a scripted agent: history archived encrypted, verify --deep clean, a
// point older than the journal served from S3; the server stopped while archiving (commits go
// on, nothing is lost, the backlog and the error are shown, archiving resumes once it is back);
// the server stopped during an old point's fetch (a clear REWIND_ARCHIVE_UNAVAILABLE, no view
// made, and the same point served once it is back).
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
import { ModelVolumeSet, type ModelWrite } from '../support/model.js';
import { SwiftS3, swiftS3Missing } from '../support/swift-s3.js';

const missing = swiftS3Missing();
const BUCKET = 'rewind-archiver';
const VOLUMES = [{ name: 'a', sizeBytes: 512 * 1024 }];
const VOLUME_SET_ID = '0f0f0f0f-0f0f-0f0f-0f0f-0f0f0f0f0f0f';
const TOKEN = 't';
const LIMIT = 160 * 1024;

let swift: SwiftS3 | undefined;
const savedEnv = { ...process.env };

function segment(s: number, writes: ModelWrite[]): FakeRecord[] {
  const records: FakeRecord[] = [];
  for (let r = 0; r < 3; r++) {
    const offset = ((s * 7 + r * 13) % 128) * 4096;
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

if (missing !== undefined) {
  it('the archiver on S3 (Swift)', { skip: missing }, () => undefined);
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
  });
  after(async () => {
    await swift?.stop();
    process.env = savedEnv;
  });

  describe('the archiver on S3 (Swift s3api)', () => {
    it('archives, verifies, serves old points, and rides out the server stopping', async () => {
      const server = swift as SwiftS3;
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-s3-'));
      const keyFile = path.join(dir, 'key');
      fs.writeFileSync(keyFile, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
      const key = Buffer.from(fs.readFileSync(keyFile, 'utf8'), 'hex');
      const open = async (): Promise<Manager> =>
        Manager.open({
          dataDir: path.join(dir, 'data'),
          token: TOKEN,
          log: () => undefined,
          applier: new InThreadApply(),
          retentionMerger: new InThreadApply(),
          retention: { keepEveryWrite: '3650d', keep: 'none', journalMax: String(LIMIT) },
          archive: {
            store: await openStore(`s3://${BUCKET}/run-${process.pid}`, {
              s3Endpoint: server.endpoint,
              s3PathStyle: true,
              timeoutMs: 1500,
            }),
            key,
            batchBytesMax: 48 * 1024,
            batchMs: 100,
            retryMsMax: 500,
          },
        });
      let manager = await open();
      let agent: FakeAgent | undefined;
      const connect = async (m: Manager): Promise<FakeAgent> => {
        const { port } = await m.listen('127.0.0.1', 0);
        return FakeAgent.connect(port, {
          token: TOKEN,
          volumeSetId: VOLUME_SET_ID,
          volumes: VOLUMES,
        });
      };
      const writes: ModelWrite[] = [];
      try {
        agent = await connect(manager);
        // Archived as it goes: the journal limit drops the oldest, the archive keeps them.
        for (let s = 0; s < 30; s++) {
          await agent.ship(segment(s, writes));
          await manager.archiver?.drain(20_000);
        }
        const status = manager.archiveStatus();
        assert.ok(status);
        assert.equal(status.encryption.enabled, true);
        assert.deepEqual(status.capabilities, { conditionalWrite: false, objectLock: false });
        assert.equal(status.archivedFromSeq, 0);
        assert.equal(status.archivedThroughSeq, writes.length);
        assert.ok(manager.retention.roomDrops > 0, 'the journal dropped its oldest history');
        assert.equal(manager.retention.unarchivedDrops, 0);
        const deep = await manager.verifyArchive({ deep: true });
        assert.deepEqual(deep.problems, []);
        assert.equal(deep.descriptors, 1, 'the volume-set descriptor is checked too');
        assert.equal(deep.objectsOk, status.objects + deep.descriptors);
        const oldest = manager.retention.status().oldestSeq;
        assert.ok(oldest > 3);
        for (const seq of [0, 1, Math.floor(oldest / 2), oldest - 1]) {
          const plan = manager.archivePlan(String(seq));
          assert.ok(plan, `seq ${seq} is served from the archive`);
          const view = await manager.createView(`old-${seq}`, 'snapshot', String(seq));
          assert.ok(view.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, seq)));
          await manager.removeView(`old-${seq}`);
        }

        // The server stops while history keeps coming: commits go on, the backlog grows.
        await server.stopProxy();
        const through = manager.archiveStatus()?.archivedThroughSeq ?? 0;
        for (let s = 30; s < 34; s++) await agent.ship(segment(s, writes));
        await until('archiving waits for the store', () => manager.archiver?.state === 'waiting');
        const waiting = manager.archiveStatus();
        assert.ok(waiting);
        assert.equal(waiting.archivedThroughSeq, through);
        assert.equal(waiting.backlog.transactions, 4);
        assert.ok(waiting.backlog.bytes > 0);
        assert.match(waiting.lastError ?? '', /unavailable|ECONNREFUSED|connect/i);
        assert.ok(waiting.alerts.some((a) => /archive is unavailable/.test(a.message)));
        // Nothing unarchived is merged meanwhile, and nothing was dropped before archiving.
        assert.equal(manager.retention.unarchivedDrops, 0);
        await server.startProxy();
        await until('archiving resumes', () => manager.archiveStatus()?.backlog.transactions === 0);
        assert.equal(manager.archiveStatus()?.archivedThroughSeq, writes.length);
        assert.deepEqual((await manager.verifyArchive({ deep: true })).problems, []);

        // A start while the server is down is not refused: archiving waits and says so. An old
        // point's fetch (the cache starts empty) fails with a clear error.
        agent.close();
        agent = undefined;
        await manager.close();
        await server.stopProxy();
        manager = await open();
        await until('archiving waits at start', () => manager.archiver?.state === 'waiting');
        assert.equal(manager.archiveStatus()?.capabilities, null);
        let caught: unknown;
        try {
          await manager.createView('old', 'snapshot', '2');
        } catch (error) {
          caught = error;
        }
        assert.ok(caught instanceof RewindError, String(caught));
        assert.equal(caught.code, 'REWIND_ARCHIVE_UNAVAILABLE', caught.message);
        assert.equal(manager.views.size, 0, 'no view was made');
        await server.startProxy();
        await until('archiving resumes', () => manager.archiver?.state === 'idle');
        const view = await manager.createView('old', 'snapshot', '2');
        assert.ok(view.read(0, 0, VOLUMES[0]?.sizeBytes ?? 0).equals(replay(writes, 2)));
      } finally {
        agent?.close();
        await manager.close();
        fs.rmSync(dir, { recursive: true, force: true });
      }
    });
  });
}
