// The archiver on a directory archive, in-process: committed transactions reach batch objects in
// order (the catalog records each object and where each transaction's redo and undo lie, and
// the objects hold exactly the files the journal had); a restart resumes from the catalog and an
// object uploaded but not recorded is taken back when it is the same; retention merges and
// drops as expired only what is archived, and at the journal limit drops anyway, loudly.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import Database from 'better-sqlite3';
import { decodeBatch, decodeObject, openStore, type ObjectStore } from '../../src/archive/index.js';
import { crc32c, RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager, type PolicyText } from '../../src/manager/index.js';
import { FakeAgent, type FakeRecord } from '../support/fake-agent.js';

const VOLUMES = [{ name: 'a', sizeBytes: 256 * 1024 }];
const VOLUME_SET_ID = '0d0d0d0d-0d0d-0d0d-0d0d-0d0d0d0d0d0d';
const TOKEN = 't';
const DAY_MS = 86_400_000;

/** Segment `s` of `count`: three 4 KiB writes, spread over the last ten days. */
function segment(s: number, count: number, nowMs: number): FakeRecord[] {
  const timeMs = nowMs - 10 * DAY_MS + Math.floor((s * 9.5 * DAY_MS) / count);
  return [0, 1, 2].map((r) => ({
    volume: 0,
    kind: 'write' as const,
    offset: ((s * 5 + r * 11) % 64) * 4096,
    length: 4096,
    data: Buffer.alloc(4096, 1 + ((s * 3 + r) % 250)),
    timeNs: BigInt(timeMs + r) * 1_000_000n,
  }));
}

interface Harness {
  dir: string;
  archiveDir: string;
  open(options?: {
    startArchiver?: boolean;
    retention?: PolicyText;
    log?: (level: string, message: string) => void;
    store?: (store: ObjectStore) => ObjectStore;
  }): Promise<Manager>;
  /** Closes a manager this harness opened (closing one twice would close reused fds). */
  close(manager: Manager): Promise<void>;
}

async function withHarness(body: (h: Harness) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-'));
  const archiveDir = path.join(dir, 'archive');
  const opened: Manager[] = [];
  const harness: Harness = {
    dir,
    archiveDir,
    async open(options = {}) {
      const manager = await Manager.open({
        dataDir: path.join(dir, 'data'),
        token: TOKEN,
        log: options.log ?? (() => undefined),
        applier: new InThreadApply(),
        retentionMerger: new InThreadApply(),
        startRetention: false,
        retention: options.retention ?? { keepEveryWrite: '3650d', keep: 'none' },
        startArchiver: options.startArchiver ?? true,
        archive: {
          store: (options.store ?? ((store) => store))(await openStore(archiveDir)),
          key: undefined,
          batchBytesMax: 64 * 1024,
          batchMs: 50,
          retryMsMax: 200,
          idleRetryMs: 300,
        },
      });
      opened.push(manager);
      return manager;
    },
    async close(manager) {
      opened.splice(opened.indexOf(manager), 1);
      await manager.close();
    },
  };
  try {
    await body(harness);
  } finally {
    for (const manager of opened) await manager.close().catch(() => undefined);
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

async function ship(manager: Manager, segments: number): Promise<FakeAgent> {
  const { port } = await manager.listen('127.0.0.1', 0);
  const agent = await FakeAgent.connect(port, {
    token: TOKEN,
    volumeSetId: VOLUME_SET_ID,
    volumes: VOLUMES,
  });
  const nowMs = Date.now();
  for (let s = 0; s < segments; s++) await agent.ship(segment(s, segments, nowMs));
  return agent;
}

describe('the archiver', () => {
  it('archives every transaction in order, as the journal stored it; a restart resumes', async () => {
    await withHarness(async (h) => {
      let manager = await h.open();
      let agent = await ship(manager, 40);
      await manager.archiver?.drain(20_000);
      const objects = manager.catalog.archiveObjects();
      assert.ok(objects.length >= 3, `batches closed at 64 KiB: ${objects.length} objects`);
      let idxNext = 1;
      const store = await openStore(h.archiveDir);
      try {
        for (const object of objects) {
          assert.match(object.key, /^0d0d0d0d-0d0d-0d0d-0d0d-0d0d0d0d0d0d\/tx\/\d{16}-\d{16}$/);
          const stored = await store.get(object.key);
          assert.equal(stored.length, object.storedBytes);
          assert.equal(crypto.createHash('sha256').update(stored).digest('hex'), object.sha256);
          const plain = decodeObject(stored, { name: object.key });
          const entries = decodeBatch(plain, object.key);
          const rows = manager.catalog.archiveTxsOf(object.key);
          assert.deepEqual(
            entries.map((e) => e.idx),
            rows.map((r) => r.idx),
          );
          for (const row of rows) {
            assert.equal(row.idx, idxNext++, 'transactions archived in order, none skipped');
            const redo = fs.readFileSync(
              path.join(h.dir, 'data/manager/redo', pad(row.idx) + '.redo'),
            );
            const undo = fs.readFileSync(
              path.join(h.dir, 'data/manager/undo', pad(row.idx) + '.undo'),
            );
            const slice = (o: number, n: number): Buffer => plain.subarray(o, o + n);
            assert.ok(slice(row.redoOffset, row.redoLength).equals(redo), `redo of ${row.idx}`);
            assert.ok(slice(row.undoOffset, row.undoLength).equals(undo), `undo of ${row.idx}`);
            assert.equal(row.redoCrc, crc32c(redo));
            assert.equal(row.undoCrc, crc32c(undo));
          }
        }
        assert.equal(idxNext, 41, 'all 40 transactions archived');
        const status = manager.archiveStatus();
        assert.equal(status?.backlog.transactions, 0);
        assert.equal(status?.archivedThroughSeq, 120);
        assert.ok((status?.requests.put ?? 0) >= objects.length);
        // A restart: archiving resumes after the last recorded transaction. The newest object
        // is forgotten by the catalog (a crash between the upload and the record): it is
        // written again under the same key, refused as existing, read back and taken.
        agent.close();
        await h.close(manager);
        const lastKey = (objects.at(-1) as { key: string }).key;
        forgetObject(path.join(h.dir, 'data/manager/catalog.sqlite'), lastKey);
        manager = await h.open();
        agent = await ship(manager, 0);
        await manager.archiver?.drain(20_000);
        const again = manager.catalog.archiveObjects();
        assert.deepEqual(
          again.map((o) => o.key),
          objects.map((o) => o.key),
          'the same objects, the forgotten one recorded again under its key',
        );
        assert.equal(manager.archiveStatus()?.archivedThroughSeq, 120);
        agent.close();
      } finally {
        await store.close();
      }
    });
  });

  it('a refusal retrying will not change stops archiving, with an error alert, until it is fixed', async () => {
    await withHarness(async (h) => {
      let refuse = true;
      const manager = await h.open({
        store: (store) => ({
          url: store.url,
          probe: () => store.probe(),
          get: (key, range) => store.get(key, range),
          head: (key) => store.head(key),
          delete: (keys) => store.delete(keys),
          list: (prefix) => store.list(prefix),
          close: () => store.close(),
          put: async (key, body) => {
            if (refuse) throw new RewindError('REWIND_ARCHIVE_AUTH', `archive: put ${key}: 403`);
            await store.put(key, body);
          },
        }),
      });
      const agent = await ship(manager, 5);
      const deadline = Date.now() + 10_000;
      while (manager.archiver?.state !== 'stopped' && Date.now() < deadline)
        await new Promise((resolve) => setTimeout(resolve, 20));
      const stopped = manager.archiveStatus();
      assert.equal(stopped?.state, 'stopped');
      assert.equal(stopped?.backlog.transactions, 5);
      assert.ok(
        stopped?.alerts.some(
          (a) => a.level === 'error' && /archiving stopped: .*403/.test(a.message),
        ),
      );
      // Fixed (credentials renewed, say): the next try after the idle interval archives it all.
      refuse = false;
      await manager.archiver?.drain(10_000);
      assert.equal(manager.archiveStatus()?.backlog.transactions, 0);
      assert.equal(manager.archiveStatus()?.alerts.length, 0);
      agent.close();
    });
  });

  it('retention merges and drops as expired only what is archived', async () => {
    await withHarness(async (h) => {
      const manager = await h.open({ startArchiver: false });
      const agent = await ship(manager, 30);
      manager.retention.setPolicy({ keepEveryWrite: '1d', keep: '1d:5d' });
      await manager.retention.settle(1000);
      let status = manager.retention.status();
      assert.equal(status.steps.merges, 0, 'nothing merged before it is archived');
      assert.equal(status.steps.drops, 0, 'nothing dropped before it is archived');
      assert.equal(status.oldestSeq, 0);
      manager.archiver?.start();
      await manager.archiver?.drain(20_000);
      await manager.retention.settle(1000);
      status = manager.retention.status();
      assert.ok(status.steps.merges > 0, 'merged once archived');
      assert.ok(status.steps.drops > 0, 'expired history dropped once archived');
      assert.equal(manager.retention.unarchivedDrops, 0);
      agent.close();
    });
  });

  it('at the journal limit history goes even unarchived, and that is an error alert', async () => {
    await withHarness(async (h) => {
      const logged: string[] = [];
      const manager = await h.open({
        startArchiver: false,
        retention: { keepEveryWrite: '3650d', keep: 'none', journalMax: String(160 * 1024) },
        log: (level, message) => logged.push(`${level}: ${message}`),
      });
      const agent = await ship(manager, 30);
      assert.ok(manager.retention.roomDrops > 0, 'dropped at the limit');
      assert.ok(manager.retention.unarchivedDrops > 0);
      const alerts = manager.retention.status().alerts;
      assert.ok(
        alerts.some(
          (a) =>
            a.level === 'error' &&
            /seqs \d+\.\.\d+ dropped before they were archived/.test(a.message),
        ),
        JSON.stringify(alerts),
      );
      assert.ok(logged.some((l) => /^error: .*dropped before they were archived/.test(l)));
      // The archiver then starts after the gap and archives what is left.
      manager.archiver?.start();
      await manager.archiver?.drain(20_000);
      const first = manager.catalog.firstArchivedTx();
      assert.ok(first && first.seqFirst > 1, 'the archive begins after the dropped history');
      agent.close();
    });
  });
});

function pad(idx: number): string {
  return String(idx).padStart(16, '0');
}

function forgetObject(catalogFile: string, key: string): void {
  // better-sqlite3 directly: the test plays the crash between the upload and the record.
  const db = new Database(catalogFile);
  db.prepare('DELETE FROM archive_txs WHERE object_key = ?').run(key);
  db.prepare('DELETE FROM archive_objects WHERE key = ?').run(key);
  db.close();
}
