// fio's nbd engine with crc32c verify through a protected volume, at queue depth 16 over two jobs;
// then the history rebuilds production: a snapshot at the committed seq equals production.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { startUp } from '../../src/runtime/up.js';
import { nbdPort } from '../support/process.js';

const missing = ['fio'].filter((t) => spawnSync('which', [t]).status !== 0);

test(
  'fio random writes with verify through rewind; snapshot at the last seq equals production',
  { skip: missing.length ? `missing ${missing.join(', ')}` : false },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-fio-'));
    const running = await startUp({
      dataDir: dir,
      nbd: { host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0 },
      volumes: [{ name: 'v', sizeBytes: 32 * 1024 * 1024 }],
      sealBytes: 4 * 1024 * 1024,
      sealMs: 200,
      quiet: true,
    });
    try {
      const uri = `nbd://127.0.0.1:${nbdPort(running)}/v`;
      const fio = await new Promise<{ status: number | null; out: string }>((resolve) => {
        const child = spawnTool(
          'fio',
          [
            '--name=v',
            '--ioengine=nbd',
            `--uri=${uri}`,
            '--rw=randwrite',
            '--bs=4k',
            '--size=16M',
            '--iodepth=16',
            '--numjobs=2',
            '--offset_increment=16M',
            '--verify=crc32c',
            '--do_verify=1',
            '--verify_state_save=0',
            `--directory=${dir}`,
          ],
          dir,
        );
        let out = '';
        child.stdout.on('data', (c: Buffer) => (out += c.toString()));
        child.stderr.on('data', (c: Buffer) => (out += c.toString()));
        child.on('exit', (status: number | null) => resolve({ status, out }));
      });
      assert.equal(fio.status, 0, fio.out);
      assert.doesNotMatch(fio.out, /verify: bad/);
      const { seqLast } = await running.manager!.seal(true);
      assert.ok(seqLast >= 8192, `all 8192 writes captured (got ${seqLast})`);
      const view = await running.manager!.createView('end', 'snapshot', String(seqLast));
      const production = fs.readFileSync(running.agent!.volumes[0]!.path);
      assert.ok(
        view.read(0, 0, production.length).equals(production),
        'the history rebuilds production byte for byte',
      );
    } finally {
      await running.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

function spawnTool(cmd: string, args: string[], cwd: string) {
  return spawn(cmd, args, { cwd, timeout: 120_000 });
}
