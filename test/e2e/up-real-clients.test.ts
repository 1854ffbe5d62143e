// `rewind up` as a real process with real clients: qemu-io writes, nbdcopy of snapshots compared
// with the model, the CLI's log/status/ls, and a SIGKILL under load followed by a restart.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { BIN, freePort, startUpProcess } from '../support/process.js';
import { ModelVolumeSet } from '../support/model.js';

const SIZE = 4 * 1024 * 1024;
const have = (tool: string): boolean => spawnSync('which', [tool]).status === 0;
const skip = ['qemu-io', 'nbdcopy'].filter((t) => !have(t));

async function up(dir: string, nbdPort: number, httpPort: number): Promise<ChildProcess> {
  return startUpProcess([
    '--data',
    dir,
    '--nbd',
    `127.0.0.1:${nbdPort}`,
    '--http',
    `127.0.0.1:${httpPort}`,
    '--volume',
    `v:${SIZE}`,
    '--seal-ms',
    '100',
  ]);
}

function cli(httpPort: number, ...args: string[]): string {
  return execFileSync(process.execPath, [BIN, ...args], {
    env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${httpPort}` },
    timeout: 30_000,
  }).toString();
}

function qemuWrite(nbdPort: number, pattern: number, offset: number, length: number): void {
  execFileSync(
    'qemu-io',
    ['-f', 'raw', `nbd://127.0.0.1:${nbdPort}/v`, '-c', `write -P ${pattern} ${offset} ${length}`],
    { timeout: 20_000 },
  );
}

function copyExport(nbdPort: number, name: string, file: string): Buffer {
  execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbdPort}/${name}`, file], { timeout: 30_000 });
  return fs.readFileSync(file);
}

test(
  'rewind up with qemu-io, nbdcopy and the CLI; SIGKILL and restart keep history',
  { skip: skip.length > 0 ? `missing ${skip.join(', ')}` : false },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-up-'));
    const [nbdPort, httpPort] = [await freePort(), await freePort()];
    let child: ChildProcess | undefined;
    try {
      child = await up(dir, nbdPort, httpPort);
      const model = new ModelVolumeSet([SIZE]);
      const writes: [number, number, number][] = [
        [0xa1, 0, 65536],
        [0xb2, 32768, 65536],
        [0xc3, 1048576, 4096],
        [0xd4, SIZE - 4096, 4096],
      ];
      writes.forEach(([pattern, offset, length], i) => {
        qemuWrite(nbdPort, pattern, offset, length);
        model.apply({
          seq: i + 1,
          volume: 0,
          kind: 'write',
          offset,
          length,
          data: Buffer.alloc(length, pattern),
        });
      });
      cli(httpPort, 'seal', '--wait');
      const log = cli(httpPort, 'log', '--json')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { seq: number; kind: string; offset: number; length: number });
      assert.deepEqual(
        log.map((e) => [e.seq, e.kind, e.offset, e.length]),
        writes.map(([, o, l], i) => [i + 1, 'write', o, l]),
      );
      const replay = new ModelVolumeSet([SIZE]);
      for (let seq = 0; seq <= writes.length; seq++) {
        if (seq > 0) {
          const [pattern, offset, length] = writes[seq - 1] as [number, number, number];
          replay.apply({
            seq,
            volume: 0,
            kind: 'write',
            offset,
            length,
            data: Buffer.alloc(length, pattern),
          });
        }
        cli(httpPort, 'snapshot', `s${seq}`, '--at', String(seq));
        assert.ok(
          copyExport(nbdPort, `v@s${seq}`, path.join(dir, `s${seq}.img`)).equals(replay.image(0)),
          `snapshot at seq ${seq} equals the model`,
        );
      }
      assert.match(cli(httpPort, 'ls'), /s4\tsnapshot\tseq 4/);
      // Under load, kill -9; every replied write must be in history afterwards.
      const loader = spawnSync(
        'qemu-io',
        ['-f', 'raw', `nbd://127.0.0.1:${nbdPort}/v`, '-c', 'write -P 0xee 2097152 65536'],
        { timeout: 20_000 },
      );
      assert.equal(loader.status, 0);
      child.kill('SIGKILL');
      await new Promise((r) => child!.once('exit', r));
      child = await up(dir, nbdPort, httpPort);
      cli(httpPort, 'seal', '--wait');
      const after = cli(httpPort, 'log', '--json')
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l) as { seq: number; offset: number; resync: boolean });
      assert.deepEqual(
        after.map((e) => e.seq),
        after.map((_, i) => i + 1),
        'seq continuous',
      );
      assert.deepEqual(
        after.filter((e) => !e.resync).map((e) => e.seq),
        [1, 2, 3, 4, 5],
        'the replied write survived SIGKILL',
      );
      assert.equal(after[4]?.offset, 2097152);
      assert.ok(
        after.length > 5 && after.slice(5).every((e) => e.resync),
        'the restart after SIGKILL resynced the dirty regions',
      );
      assert.ok(
        copyExport(nbdPort, 'v@s2', path.join(dir, 's2b.img')).equals(
          new ModelVolumeSet([SIZE]).image(0).fill(0xa1, 0, 65536).fill(0xb2, 32768, 98304),
        ),
        'views survive the restart',
      );
      child.kill('SIGTERM');
      await new Promise((r) => child!.once('exit', r));
      child = undefined;
    } finally {
      if (child && child.exitCode === null) child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
