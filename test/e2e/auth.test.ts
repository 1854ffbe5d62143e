// Authentication negatives on the agent-manager link, with real `rewind manager` and `rewind agent`
// processes over TLS: a wrong token (refusals slowed down more and more, and logged), a wrong
// certificate, a plaintext agent, the right token for another volume set, and an unauthenticated
// peer announcing a huge frame. Each is refused, and the manager's volume set, log and committed
// seq stay exactly as they were; the legitimate agent keeps shipping afterwards.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import tls from 'node:tls';
import {
  encodeFrame,
  FrameReader,
  PROTOCOL_VERSION,
  type Message,
} from '../../src/ship/protocol.js';
import { BIN, freePort, startRewind, until, type RewindProcess } from '../support/process.js';

const PYTHON = fs.existsSync('/usr/bin/python3') ? '/usr/bin/python3' : 'python3';
const missing = ['openssl'].filter((t) => spawnSync('which', [t]).status !== 0);
const hasLibnbd = spawnSync(PYTHON, ['-c', 'import nbd'], { timeout: 10_000 }).status === 0;
const skip =
  missing.length > 0
    ? `missing ${missing.join(', ')}`
    : !hasLibnbd
      ? 'missing python3-libnbd'
      : false;

function certificate(dir: string, name: string): { cert: string; key: string } {
  const cert = path.join(dir, `${name}.pem`);
  const key = path.join(dir, `${name}.key`);
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'rsa:2048',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      `/CN=${name}`,
      '-addext',
      'subjectAltName=DNS:localhost,IP:127.0.0.1',
    ],
    { stdio: 'ignore', timeout: 30_000 },
  );
  return { cert, key };
}

/** One raw exchange over TLS: sends `frames`, returns the frames answered and how long after them the peer closed. */
async function raw(
  port: number,
  ca: string,
  frames: Buffer[],
): Promise<{ answers: Message[]; closedAfterMs: number }> {
  const socket = tls.connect({ host: '127.0.0.1', port, ca: fs.readFileSync(ca) });
  const reader = new FrameReader();
  const answers: Message[] = [];
  socket.on('data', (chunk: Buffer) => answers.push(...reader.push(chunk).map((f) => f.message)));
  socket.on('error', () => undefined);
  await new Promise<void>((resolve) => socket.once('secureConnect', () => resolve()));
  const started = Date.now(); // from the request, not the TLS handshake
  for (const frame of frames) socket.write(frame);
  await new Promise<void>((resolve) => {
    const timer = setTimeout(() => {
      socket.destroy();
      resolve();
    }, 15_000);
    socket.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
  });
  return { answers, closedAfterMs: Date.now() - started };
}

test(
  'the agent link refuses wrong tokens, certificates, plaintext, other volume sets and oversized unauthenticated frames, changing nothing',
  { skip, timeout: 180_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-auth-'));
    const procs: RewindProcess[] = [];
    try {
      const mine = certificate(dir, 'manager');
      const other = certificate(dir, 'other');
      const [link, nbd, http, agentNbd] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const manager = startRewind([
        'manager',
        '--data',
        path.join(dir, 'm'),
        '--listen',
        `127.0.0.1:${link}`,
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--token',
        'right-token',
        '--tls-cert',
        mine.cert,
        '--tls-key',
        mine.key,
      ]);
      procs.push(manager);
      await until('manager up', () => manager.out().includes('API:'));
      const cli = (...args: string[]): string => {
        const r = spawnSync(
          process.execPath,
          [
            BIN,
            ...args,
            '--server',
            `http://127.0.0.1:${http}`,
            '--api-token-file',
            path.join(dir, 'm', 'api-token'),
          ],
          { timeout: 30_000 },
        );
        assert.equal(r.status, 0, `rewind ${args.join(' ')}: ${r.stderr}`);
        return r.stdout.toString();
      };
      const agentArgs = (name: string, token: string, ca: string | undefined): string[] => [
        'agent',
        '--manager',
        `127.0.0.1:${link}`,
        '--data',
        path.join(dir, name),
        '--nbd',
        `127.0.0.1:${name === 'a' ? agentNbd : 0}`,
        '--token',
        token,
        ...(ca ? ['--tls-ca', ca] : []),
        '--volume',
        'v:1M',
        '--seal-ms',
        '100',
      ];

      // The legitimate agent: a volume set and a little history.
      const agent = startRewind(agentArgs('a', 'right-token', mine.cert));
      procs.push(agent);
      await until('agent connected', () => agent.out().includes('connected to manager'));
      const write = (offset: number, byte: number): void => {
        const r = spawnSync(
          PYTHON,
          [
            '-c',
            `import nbd; h = nbd.NBD(); h.connect_uri('nbd://127.0.0.1:${agentNbd}/v'); h.pwrite(bytes([${byte}]) * 4096, ${offset}); h.flush()`,
          ],
          { timeout: 30_000 },
        );
        assert.equal(r.status, 0, `${r.stderr}`);
      };
      write(0, 1);
      write(4096, 2);
      cli('seal', '--wait');
      const state = (): { volumeSet: unknown; seqCommitted: unknown; log: string } => {
        const status = JSON.parse(cli('status', '--json')) as {
          volumeSet?: unknown;
          seqCommitted?: unknown;
          volumeSets?: { id: unknown; seqCommitted: unknown }[];
        };
        return {
          volumeSet: status.volumeSet ?? status.volumeSets?.[0]?.id,
          seqCommitted: status.seqCommitted ?? status.volumeSets?.[0]?.seqCommitted,
          log: cli('log', '--json'),
        };
      };
      const before = state();
      assert.equal(before.log.trim().split('\n').length, 2, 'two writes in the history');

      // 1. A wrong token, from a real agent: refused, and the agent says so.
      const intruder = startRewind(agentArgs('wrong-token', 'not-the-token', mine.cert));
      procs.push(intruder);
      await until('the wrong token is refused', () => intruder.out().includes('REWIND_AUTH'));
      await until('the manager logs the failure', () =>
        /refused agent .*wrong token/.test(manager.out()),
      );
      intruder.child.kill('SIGKILL'); // its retries would add failures (and delay) of their own

      // 2. Repeated wrong tokens are answered more and more slowly (rate limit).
      const hello = (token: string, volumeSetId = '00000000-0000-4000-8000-000000000000'): Buffer =>
        Buffer.concat(
          encodeFrame({
            type: 'hello',
            protocol: PROTOCOL_VERSION,
            token,
            volumeSetId,
            volumeSetName: 'x',
            volumes: [],
            seqNext: 1,
          }),
        );
      const delays: number[] = [];
      for (let i = 0; i < 3; i++) {
        const r = await raw(link, mine.cert, [hello(`guess-${i}`)]);
        assert.equal(r.answers[0]?.type, 'error');
        assert.equal((r.answers[0] as { code?: string }).code, 'REWIND_AUTH');
        delays.push(r.closedAfterMs);
      }
      assert.ok(delays[2]! > delays[0]! + 100, `refusals slow down: ${delays.join(', ')} ms`);

      // 3. A certificate the agent does not trust: no connection, and the agent logs why.
      const wrongCa = startRewind(agentArgs('wrong-ca', 'right-token', other.cert));
      procs.push(wrongCa);
      await until('the agent reports the certificate failure', () =>
        /cannot reach the manager at .*certificate/i.test(wrongCa.out()),
      );

      // 4. A plaintext agent against the TLS link: no session.
      const plain = startRewind(agentArgs('plain', 'right-token', undefined));
      procs.push(plain);
      await until('the plaintext agent reports the failure', () =>
        /cannot reach the manager at /.test(plain.out()),
      );

      // 5. The right token, but another volume set (another data directory): refused.
      const stranger = startRewind(agentArgs('stranger', 'right-token', mine.cert));
      procs.push(stranger);
      await until('another volume set is refused', () =>
        /REWIND_CONFIG: this manager protects volume set/.test(stranger.out()),
      );

      // 6. An unauthenticated peer announcing a 512 MiB frame is cut off at once, before any hello.
      const prefix = Buffer.alloc(8);
      prefix.writeUInt32LE(512 * 1024 * 1024, 0);
      prefix.writeUInt32LE(100, 4);
      const huge = await raw(link, mine.cert, [prefix, Buffer.alloc(64 * 1024, 0x41)]);
      assert.ok(
        huge.closedAfterMs < 5000,
        `closed after ${huge.closedAfterMs} ms (the hello timeout is 10 s)`,
      );
      await until('the manager logs the bad frame', () =>
        /bad frame: 536870912 bytes .*at most 65536 accepted here/.test(manager.out()),
      );

      // Nothing changed, and the manager still serves the legitimate agent.
      for (const p of [intruder, wrongCa, plain, stranger]) p.child.kill('SIGKILL');
      assert.equal(manager.child.exitCode, null, 'the manager is up');
      assert.deepEqual(state(), before, 'volume set, committed seq and log unchanged');
      write(8192, 3);
      cli('seal', '--wait');
      assert.equal(state().log.trim().split('\n').length, 3, 'the legitimate agent still ships');
    } finally {
      for (const p of procs) p.child.kill('SIGKILL');
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
