// A production restore under a connected NBD client (a mounted filesystem, a VM) is refused and
// changes nothing; the dry run names the clients; with force the clients are disconnected, the
// restore runs and production equals the model at the point. The client is a real libnbd
// connection (python3-libnbd) held open against `rewind up`'s production export.
import assert from 'node:assert/strict';
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';
import { startUp, type Running } from '../../src/runtime/up.js';

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const hasLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { timeout: 10_000 }).status === 0;
const SIZE = 1024 * 1024;

/** Connects, prints "connected", then reads a block whenever a line arrives on stdin. */
const CLIENT = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
print("connected", flush=True)
for line in sys.stdin:
    try:
        h.pread(512, 0)
        print("read", flush=True)
    except Exception as e:
        print("error", flush=True)
        break
`;

async function until(what: string, check: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (let waited = 0; !check(); waited += 20) {
    assert.ok(waited < timeoutMs, what);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

class Client {
  readonly child: ChildProcess;
  out = '';
  constructor(uri: string) {
    this.child = spawn(PYTHON, ['-c', CLIENT, uri], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout?.on('data', (chunk: Buffer) => (this.out += chunk.toString()));
  }
  /** Asks for one read; resolves with "read" or "error". */
  async read(): Promise<string> {
    const before = this.out.length;
    this.child.stdin?.write('go\n');
    await until('the client answers', () => /(read|error)\n/.test(this.out.slice(before)));
    return /error/.test(this.out.slice(before)) ? 'error' : 'read';
  }
  stop(): void {
    this.child.kill('SIGKILL');
  }
}

test(
  'a restore with an NBD client connected is refused and changes nothing; --force disconnects it',
  { skip: hasLibnbd ? false : 'missing python3-libnbd', timeout: 60_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-restore-clients-'));
    let running: Running | undefined;
    let client: Client | undefined;
    try {
      running = await startUp({
        dataDir: dir,
        nbd: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        volumes: [{ name: 'v', sizeBytes: SIZE }],
        sealBytes: 256 * 1024,
        sealMs: 60_000,
        quiet: true,
      });
      const manager = running.manager!;
      const uri = `nbd://127.0.0.1:${running.nbdAddress!.port}/v`;
      await until('the agent connects', () => manager.agentConnected);
      // Two writes through a real client: seq 1 (0x11 at 0) and seq 2 (0x22 at 64 KiB).
      for (const [pattern, offset] of [
        [0x11, 0],
        [0x22, 65536],
      ] as const) {
        // Asynchronously: the server answering it runs on this event loop.
        await promisify(execFile)(
          'qemu-io',
          ['-f', 'raw', uri, '-c', `write -P ${pattern} ${offset} 4k`],
          { timeout: 20_000 },
        );
      }
      await manager.seal(true);
      const production = path.join(dir, 'production', 'v.img');
      const before = fs.readFileSync(production);

      client = new Client(uri);
      await until('the client connects', () => client!.out.includes('connected'));
      await until('the agent reports the client', () => manager.agentStatus?.clients?.[0] === 1);
      const plan = await manager.restorer.plan({ volumes: ['v'], at: '1' });
      assert.equal(plan.volumes[0]?.clients, 1, 'the dry run names the connected client');
      await assert.rejects(
        manager.restorer.start({ volumes: ['v'], at: '1' }),
        (error: Error & { code?: string }) =>
          error.code === 'REWIND_CONFLICT' &&
          /volume v has 1 NBD client connected/.test(error.message),
      );
      assert.deepEqual(manager.restorer.list(), [], 'no restore was recorded');
      assert.equal(running.agent!.restoring, undefined, 'the volume stayed online');
      assert.equal(await client.read(), 'read', 'the client still works');
      assert.ok(fs.readFileSync(production).equals(before), 'production is unchanged');

      // Disconnected a moment before the restore (as after rewind unmap): taken, not refused.
      client.stop();
      await new Promise((resolve) => client!.child.once('exit', resolve));
      const right = await manager.restorer.start({ volumes: ['v'], at: '2' });
      assert.equal(right.clientsDisconnected, undefined);
      const rightDone = await manager.restorer.settled(right.id);
      assert.equal(rightDone.state, 'done', rightDone.message ?? '');

      client = new Client(uri);
      await until('the client connects again', () => client!.out.includes('connected'));
      await until(
        'the agent reports the client again',
        () => manager.agentStatus?.clients?.[0] === 1,
      );
      const started = await manager.restorer.start({ volumes: ['v'], at: '1', force: true });
      assert.equal(started.clientsDisconnected, 1);
      const done = await manager.restorer.settled(started.id);
      assert.equal(done.state, 'done', done.message ?? '');
      assert.equal(await client.read(), 'error', 'the client was disconnected');
      // At seq 1 only the first write is there.
      const expected = Buffer.alloc(SIZE);
      expected.fill(0x11, 0, 4096);
      assert.ok(fs.readFileSync(production).equals(expected), 'production equals seq 1');
    } finally {
      client?.stop();
      await running?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
