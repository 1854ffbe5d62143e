// Losing the backup host, with real processes: `rewind agent` and `rewind manager` split, a
// directory archive, a model-driven write load over NBD (nbdsh). Once archiving has drained, the
// manager is killed and its data directory deleted; `rewind archive rebuild` recreates it from the
// archive alone and a manager started on it serves archived points byte-identical to the model
// (a seeded sample, always the first and the last); the agent resumes (what it wrote meanwhile
// arrives), the newest point equals production, and new writes are protected.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  BIN,
  exited,
  freePort,
  startRewind,
  until,
  type RewindProcess,
} from '../support/process.js';
import { replay, rng, type ModelWrite, type Rng } from '../support/model.js';

const KiB = 1024;
const SIZE = 4 * 1024 * KiB;
const PATH = `/usr/bin:${process.env['PATH'] ?? ''}`;
const missing = ['nbdsh', 'nbdcopy'].filter(
  (t) => spawnSync('which', [t], { env: { ...process.env, PATH } }).status !== 0,
);

/** Writes `count` random extents through NBD in order (seqs follow), recorded in `writes`. */
async function load(
  uri: string,
  dir: string,
  random: Rng,
  writes: ModelWrite[],
  count: number,
): Promise<void> {
  const plan: [number, number, number][] = [];
  const payloads: Buffer[] = [];
  let at = 0;
  for (let i = 0; i < count; i++) {
    const length = (1 + random.int(16)) * 4 * KiB;
    const offset = random.int((SIZE - length) / (4 * KiB)) * 4 * KiB;
    const data = random.bytes(length);
    plan.push([offset, length, at]);
    payloads.push(data);
    at += length;
    writes.push({ seq: writes.length + 1, volume: 0, kind: 'write', offset, length, data });
  }
  const payloadFile = path.join(dir, 'payload');
  fs.writeFileSync(payloadFile, Buffer.concat(payloads));
  const script = `
data = open(${JSON.stringify(payloadFile)}, 'rb').read()
for (offset, length, at) in ${JSON.stringify(plan)}:
    h.pwrite(data[at:at + length], offset)
`;
  await new Promise<void>((resolve, reject) => {
    const child = spawn('nbdsh', ['-u', uri, '-c', script], {
      env: { ...process.env, PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`nbdsh exited ${code}: ${err}`));
    });
  });
}

test(
  'the backup host is lost: rebuilt from the archive, every archived point is served and the agent resumes',
  { skip: missing.length ? `missing ${missing.join(', ')}` : false, timeout: 240_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-host-loss-'));
    const procs: RewindProcess[] = [];
    try {
      const [link, nbd, http, agentNbd] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const managerDir = path.join(dir, 'm');
      const archiveDir = path.join(dir, 'archive');
      const managerArgs = [
        'manager',
        '--data',
        managerDir,
        '--listen',
        `127.0.0.1:${link}`,
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--token',
        't',
        '--archive',
        archiveDir,
        '--archive-batch-ms',
        '50',
        '--archive-batch-bytes',
        '128K',
      ];
      const startManager = async (): Promise<RewindProcess> => {
        const manager = startRewind(managerArgs);
        procs.push(manager);
        await until('manager up', () => manager.out().includes('API:'));
        return manager;
      };
      const cli = (...args: string[]): { status: number | null; out: string } => {
        const r = spawnSync(
          process.execPath,
          [
            BIN,
            ...args,
            '--server',
            `http://127.0.0.1:${http}`,
            '--api-token-file',
            path.join(managerDir, 'api-token'),
          ],
          { timeout: 60_000 },
        );
        return { status: r.status, out: `${r.stdout}${r.stderr}` };
      };
      const imageAt = (point: string): Buffer => {
        const name = `at-${point}`;
        const made = cli('snapshot', name, '--at', point);
        assert.equal(made.status, 0, made.out);
        const copy = path.join(dir, `${name}.img`);
        const r = spawnSync('nbdcopy', [`nbd://127.0.0.1:${nbd}/v@${name}`, copy], {
          timeout: 60_000,
        });
        assert.equal(r.status, 0, `nbdcopy ${point}: ${r.stderr}`);
        assert.equal(cli('rm', name).status, 0);
        const bytes = fs.readFileSync(copy);
        fs.rmSync(copy);
        return bytes;
      };

      let manager = await startManager();
      const agent = startRewind([
        'agent',
        '--manager',
        `127.0.0.1:${link}`,
        '--data',
        path.join(dir, 'a'),
        '--nbd',
        `127.0.0.1:${agentNbd}`,
        '--token',
        't',
        '--volume',
        'v:4M',
        '--seal-ms',
        '100',
      ]);
      procs.push(agent);
      await until('agent up', () => agent.out().includes('volume v:'));
      const uri = `nbd://127.0.0.1:${agentNbd}/v`;
      const random = rng(2026);
      const writes: ModelWrite[] = [];
      await load(uri, dir, random, writes, 40);
      const sealed = cli('seal', '--wait');
      assert.equal(sealed.status, 0, sealed.out);
      await until(
        'archiving drained',
        () => {
          const r = cli('archive', 'status', '--json');
          if (r.status !== 0) return false;
          const status = JSON.parse(r.out) as {
            archivedThroughSeq: number;
            backlog: { transactions: number };
          };
          return status.archivedThroughSeq === 40 && status.backlog.transactions === 0;
        },
        60_000,
      );

      // The backup host is lost: the manager dies and its data directory goes with it. The
      // agent goes on taking writes into its spool.
      manager.child.kill('SIGKILL');
      await exited(manager);
      fs.rmSync(managerDir, { recursive: true, force: true });
      await load(uri, dir, random, writes, 10);

      const rebuilt = spawnSync(
        process.execPath,
        [BIN, 'archive', 'rebuild', '--archive', archiveDir, '--data', managerDir, '--json'],
        { timeout: 120_000 },
      );
      assert.equal(rebuilt.status, 0, `${rebuilt.stdout}${rebuilt.stderr}`);
      const result = JSON.parse(`${rebuilt.stdout}`) as {
        seq: number;
        objects: number;
        stoppedAt?: unknown;
      };
      assert.equal(result.seq, 40, 'the replica is at the end of the archive');
      assert.equal(result.stoppedAt, undefined);
      assert.match(`${rebuilt.stderr}`, /rebuild: \d+\/\d+ objects/, 'progress on stderr');
      const again = spawnSync(
        process.execPath,
        [BIN, 'archive', 'rebuild', '--archive', archiveDir, '--data', managerDir],
        { timeout: 60_000 },
      );
      assert.notEqual(again.status, 0, 'a directory holding a catalog is refused');
      assert.match(`${again.stderr}`, /holds a manager catalog already/);

      manager = await startManager();
      // Archived points from the rebuilt manager, before the agent's new writes land: a seeded
      // sample, always the first and the last.
      const sample = new Set([0, 1, 40]);
      const pick = rng(31);
      while (sample.size < 7) sample.add(1 + pick.int(40));
      for (const seq of [...sample].sort((a, b) => a - b))
        assert.ok(
          imageAt(String(seq)).equals(replay([SIZE], writes, seq)[0] as Buffer),
          `seq ${seq}`,
        );

      // The agent resumes: what it wrote while the manager was gone arrives, then new writes.
      await until('the agent reconnects', () => cli('seal', '--wait').status === 0, 60_000);
      const production = (): Buffer => fs.readFileSync(path.join(dir, 'a', 'production', 'v.img'));
      const latest = imageAt('latest');
      assert.ok(latest.equals(production()), 'the newest point equals production');
      assert.ok(latest.equals(replay([SIZE], writes, 50)[0] as Buffer), 'and the model at seq 50');
      await load(uri, dir, random, writes, 10);
      assert.equal(cli('seal', '--wait').status, 0);
      for (const seq of [45, 50, 55, 60])
        assert.ok(
          imageAt(String(seq)).equals(replay([SIZE], writes, seq)[0] as Buffer),
          `seq ${seq}`,
        );
      assert.ok(imageAt('latest').equals(production()), 'production after the new writes');
    } finally {
      for (const p of procs.reverse()) {
        p.child.kill('SIGTERM');
        const gone = await Promise.race([
          exited(p).then(() => true),
          new Promise((r) => setTimeout(() => r(false), 10_000)),
        ]);
        if (!gone) p.child.kill('SIGKILL');
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
