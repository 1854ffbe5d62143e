// The archive as an operator drives it, through the CLI against a real `rewind up` with a
// directory archive and a key file: `rewind archive status`, `ls` and `verify --deep` (text and
// --json keys), the archive line of `rewind retention`, no plaintext in the stored objects, a
// damaged object named by verify with exit 1, and starts refused for a wrong or missing key.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { apiToken, bearer, BIN, freePort, startUpProcess, until } from '../support/process.js';

const skip = spawnSync('which', ['qemu-io']).status === 0 ? false : 'missing qemu-io';
const MARKER = 'REWIND-ARCHIVE-PLAINTEXT-MARKER-7f3a';

function keyFile(dir: string, name: string): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, crypto.randomBytes(32).toString('hex'), { mode: 0o600 });
  return file;
}

function filesUnder(dir: string): string[] {
  return fs
    .readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile() && !e.parentPath.includes('.rewind-probe'))
    .map((e) => path.join(e.parentPath, e.name));
}

test(
  'rewind archive: status, ls, verify --deep, encryption, a damaged object, key refusals',
  { skip, timeout: 120_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-archive-cli-'));
    const [nbd, http] = [await freePort(), await freePort()];
    const archiveDir = path.join(dir, 'archive');
    const key = keyFile(dir, 'archive.key');
    let up: ChildProcess | undefined;
    const rewind = (...args: string[]): { status: number | null; out: string; err: string } => {
      const result = spawnSync(process.execPath, [BIN, ...args], {
        env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
        timeout: 30_000,
      });
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
    const upArgs = (keyPath: string | undefined): string[] => [
      '--data',
      path.join(dir, 'data'),
      '--nbd',
      `127.0.0.1:${nbd}`,
      '--http',
      `127.0.0.1:${http}`,
      '--volume',
      'v:4M',
      '--seal-ms',
      '100',
      '--archive',
      archiveDir,
      ...(keyPath ? ['--archive-key-file', keyPath] : []),
      '--archive-batch-ms',
      '50',
      // Small enough that the oldest writes leave the journal (the archive has them by then).
      '--journal-max',
      '256K',
    ];
    try {
      up = await startUpProcess(upArgs(key));
      // Incompressible data with a marker inside: in plain, the marker would be in the object.
      const payload = crypto.randomBytes(65536);
      payload.write(MARKER, 30_000, 'latin1');
      const source = path.join(dir, 'payload');
      fs.writeFileSync(source, payload);
      for (let i = 0; i < 6; i++) {
        execFileSync('qemu-io', [
          '-f',
          'raw',
          `nbd://127.0.0.1:${nbd}/v`,
          '-c',
          `write -s ${source} ${i * 65536} 64k`,
        ]);
        await new Promise((resolve) => setTimeout(resolve, 400));
      }
      ok('seal', '--wait');
      type Status = {
        url: string;
        state: string;
        capabilities: { conditionalWrite: boolean; objectLock: boolean } | null;
        encryption: { enabled: boolean; keyId: string | null };
        archivedThroughSeq: number;
        backlog: { transactions: number; bytes: number };
        objects: number;
        storedBytes: number;
        plainBytes: number;
        compressionRatio: number;
        requests: { put: number; get: number; head: number };
        lastError: string | null;
      };
      let status: Status | undefined;
      await until(
        'the archive has every write',
        () => {
          status = JSON.parse(ok('archive', 'status', '--json')) as Status;
          return status.archivedThroughSeq >= 6 && status.backlog.transactions === 0;
        },
        30_000,
      );
      assert.ok(status);
      assert.equal(status.url, archiveDir);
      assert.deepEqual(status.capabilities, { conditionalWrite: true, objectLock: false });
      assert.equal(status.encryption.enabled, true);
      assert.match(status.encryption.keyId ?? '', /^[0-9a-f]{16}$/);
      assert.ok(status.objects >= 1 && status.requests.put >= status.objects);
      assert.equal(status.lastError, null);
      assert.ok(!JSON.stringify(status).includes(fs.readFileSync(key, 'utf8').trim()));
      const metrics = await (
        await fetch(`http://127.0.0.1:${http}/metrics`, {
          headers: bearer(apiToken(path.join(dir, 'data'))),
        })
      ).text();
      assert.match(
        metrics,
        new RegExp(`rewind_archive_seq\\{volume_set="default"\\} ${status.archivedThroughSeq}`),
      );
      assert.match(metrics, /rewind_archive_ok\{volume_set="default"\} 1/);
      assert.match(
        metrics,
        /rewind_archive_requests_total\{volume_set="default",kind="put"\} [1-9]/,
      );
      const text = ok('archive', 'status');
      assert.match(text, /encryption: on \(key id [0-9a-f]{16}\)/);
      assert.match(text, /backlog: 0 transactions/);
      assert.match(ok('retention'), /archive +seq 0\.\.\d+, \d+ objects/);

      const objects = JSON.parse(ok('archive', 'ls', '--json')) as {
        key: string;
        seqFirst: number;
        seqLast: number;
        storedBytes: number;
        sha256: string;
      }[];
      assert.equal(objects.length, status.objects);
      assert.equal(objects[0]?.seqFirst, 1);
      assert.match(ok('archive', 'ls'), new RegExp(`${objects.length} objects`));

      // Encrypted at rest: the marker is in the journal's redo, in no archived object.
      // Batch objects under tx/, and the volume set's descriptor under set/ (encrypted too).
      const files = filesUnder(archiveDir);
      const stored = files.filter((f) => f.includes('/tx/'));
      assert.equal(stored.length, objects.length);
      assert.equal(files.filter((f) => f.includes('/set/')).length, 1, 'one descriptor');
      assert.equal(files.length, stored.length + 1);
      for (const file of files)
        assert.ok(!fs.readFileSync(file).includes(MARKER), `${file} holds plaintext`);
      const redo = filesUnder(path.join(dir, 'data/manager/redo'));
      assert.ok(
        redo.some((f) => fs.readFileSync(f).includes(MARKER)),
        'the marker was written',
      );

      const verify = rewind('archive', 'verify', '--deep', '--json');
      assert.equal(verify.status, 0, verify.err);
      const result = JSON.parse(verify.out) as {
        objects: number;
        objectsOk: number;
        comparedLocally: number;
        problems: unknown[];
      };
      assert.equal(result.objectsOk, result.objects);
      assert.ok(result.comparedLocally >= 1);
      assert.deepEqual(result.problems, []);
      assert.match(verify.err, /verify: 1\/\d+ /, 'progress on stderr');

      // A point older than the journal: the CLI says what it fetches, and the view is right.
      const kept = JSON.parse(ok('retention', '--json')) as {
        oldestSeq: number;
        alerts: { message: string }[];
        archive: { fromSeq: number; throughSeq: number } | null;
      };
      assert.ok(kept.oldestSeq >= 1, `the journal dropped its oldest history: ${kept.oldestSeq}`);
      assert.ok(!kept.alerts.some((a) => /before they were archived/.test(a.message)));
      assert.equal(kept.archive?.fromSeq, 0);
      const snapshot = rewind('snapshot', 'old', '--at', '1');
      assert.equal(snapshot.status, 0, snapshot.err);
      assert.match(
        snapshot.err,
        /seq 1 is older than the journal: the view at seq \d+ with the archived undo of \d+ transactions from \d+ objects \(\d+ to fetch/,
      );
      assert.match(snapshot.out, /snapshot old at seq 1/);
      const image = path.join(dir, 'data', 'exports', 'at-1.img');
      ok('export', 'v', '--at', '1', '--to', image);
      const exported = fs.readFileSync(image);
      assert.ok(exported.subarray(0, 65536).equals(payload), 'seq 1 holds the first write');
      assert.ok(
        exported.subarray(65536).every((b) => b === 0),
        'and nothing after it',
      );
      ok('rm', 'old');

      // A damaged object: one byte flipped in the middle. Shallow verify sees the size only.
      const victim = stored[0] as string;
      fs.chmodSync(victim, 0o600);
      const bytes = fs.readFileSync(victim);
      const at = Math.floor(bytes.length / 2);
      bytes[at] = (bytes[at] as number) ^ 0x40;
      fs.writeFileSync(victim, bytes);
      assert.equal(rewind('archive', 'verify').status, 0);
      const deep = rewind('archive', 'verify', '--deep');
      assert.equal(deep.status, 1, deep.out);
      const victimKey = objects.find((o) => victim.endsWith(o.key))?.key ?? '';
      assert.ok(victimKey !== '');
      assert.match(deep.out, new RegExp(`problem: ${victimKey}: SHA-256`));
      assert.match(deep.out, /REWIND_ARCHIVE_CORRUPT|payload CRC|corrupt/i);

      up.kill('SIGTERM');
      await new Promise((resolve) => up?.once('exit', resolve));
      up = undefined;

      // Another key, or none, for this archive: the start is refused and says why.
      const wrong = spawnSync(process.execPath, [BIN, 'up', ...upArgs(keyFile(dir, 'other.key'))], {
        timeout: 30_000,
      });
      assert.notEqual(wrong.status, 0);
      assert.match(wrong.stderr.toString(), /wrong key/);
      const none = spawnSync(process.execPath, [BIN, 'up', ...upArgs(undefined)], {
        timeout: 30_000,
      });
      assert.notEqual(none.status, 0);
      assert.match(
        none.stderr.toString(),
        /encrypted with key id [0-9a-f]{16}, and no key was given/,
      );
      const missing = spawnSync(
        process.execPath,
        [BIN, 'up', ...upArgs(path.join(dir, 'no-such.key'))],
        { timeout: 30_000 },
      );
      assert.notEqual(missing.status, 0);
      assert.match(missing.stderr.toString(), /REWIND_ARCHIVE_KEY|does not exist/);
      // Object lock required: a directory cannot lock anything, so the start is refused.
      const unlocked = spawnSync(
        process.execPath,
        [BIN, 'up', ...upArgs(key), '--archive-require-object-lock'],
        { timeout: 30_000 },
      );
      assert.notEqual(unlocked.status, 0);
      assert.match(unlocked.stderr.toString(), /does not enforce object lock/);
    } finally {
      up?.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
