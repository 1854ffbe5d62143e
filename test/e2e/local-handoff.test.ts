// `rewind up` hands sealed segments to its manager by name: the manager reads the agent's spool
// file and links it into its redo directory. The history this gives is checked by every test that
// runs `up`; here, the edges of the message: only a manager given the spool directory takes it,
// only names of sealed segments are read (no path leaves the spool), and a name that cannot be read
// is refused with a named error, with nothing applied and the agent still shipping afterwards.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { startManager, startUp, type Running } from '../../src/runtime/up.js';
import {
  encodeFrame,
  FrameReader,
  PROTOCOL_VERSION,
  type Message,
} from '../../src/ship/protocol.js';

const MiB = 1024 * 1024;

function write(e: ExportBackend, offset: number, data: Buffer): Promise<number> {
  return new Promise((resolve) => e.write(offset, data, false, resolve));
}

/** A raw agent connection handed straight to `manager` (an in-process socket pair). */
async function rawSession(
  accept: (socket: net.Socket) => void,
): Promise<{ send(message: Message): void; next(type: string): Promise<Message>; close(): void }> {
  const server = net.createServer(accept);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  const socket = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
  const reader = new FrameReader();
  const inbox: Message[] = [];
  socket.on('data', (chunk: Buffer) => inbox.push(...reader.push(chunk).map((f) => f.message)));
  return {
    send: (message) => socket.write(Buffer.concat(encodeFrame(message))),
    async next(type) {
      for (let waited = 0; ; waited += 10) {
        const at = inbox.findIndex((m) => m.type === type);
        if (at >= 0) return inbox.splice(at, 1)[0] as Message;
        assert.ok(
          waited < 10_000,
          `a ${type} message arrives (got ${inbox.map((m) => m.type).join(', ')})`,
        );
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
    },
    close() {
      socket.destroy();
      server.close();
    },
  };
}

test(
  'segment-file: read from the spool only, by a manager given it; bad names and unreadable files are refused',
  { timeout: 60_000 },
  async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-handoff-'));
    let running: Running | undefined;
    let split: Running | undefined;
    const sessions: { close(): void }[] = [];
    try {
      const dataDir = path.join(dir, 'up');
      running = await startUp({
        dataDir,
        nbd: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        volumes: [{ name: 'v', sizeBytes: 4 * MiB }],
        sealBytes: MiB,
        sealMs: 60_000,
        quiet: true,
      });
      const manager = running.manager!;
      const agent = running.agent!;
      for (let waited = 0; !manager.agentConnected; waited += 10) {
        assert.ok(waited < 10_000, 'agent connects');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      const e = agent.exports()[0] as ExportBackend;
      for (let i = 0; i < 3; i++)
        assert.equal(await write(e, i * 8192, Buffer.alloc(4096, i + 1)), 0);
      const first = await manager.seal(true);
      assert.equal(first.committed, 3, 'three writes committed through the hand-over');
      const redoDir = path.join(dataDir, 'manager', 'redo');
      const redoBefore = fs.readdirSync(redoDir).sort();

      // A second session with the link token (it takes over from the agent, which reconnects later).
      const token = fs.readFileSync(path.join(dataDir, 'link-token'), 'utf8').trim();
      const session = await rawSession((socket) => manager.acceptAgent(socket));
      sessions.push(session);
      session.send({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        token,
        volumeSetId: agent.volumeSetId,
        volumeSetName: agent.volumeSetName,
        volumes: agent.volumeInfo(),
        seqNext: 4,
      });
      const welcome = (await session.next('welcome')) as Extract<Message, { type: 'welcome' }>;
      const index = welcome.segmentCommitted + 1;
      const fileMessage = (name: string): Message => ({
        type: 'segment-file',
        index,
        seqFirst: 4,
        seqLast: 4,
        bytes: 100,
        name,
      });
      // All at once: the agent reconnects about 100 ms after it was replaced, and its new session
      // then replaces this one, so the answers must come back within that time, even on a busy
      // machine.
      const badNames = [
        '../production/v.img',
        '/etc/passwd',
        `${'0'.repeat(15)}1.redo/../../x`,
        'state.json',
      ];
      for (const name of badNames) session.send(fileMessage(name));
      session.send(fileMessage(`${String(index + 1000).padStart(16, '0')}.redo`));
      const answers: Extract<Message, { type: 'refused' }>[] = [];
      for (let i = 0; i < badNames.length + 1; i++) {
        answers.push((await session.next('refused')) as Extract<Message, { type: 'refused' }>);
      }
      const byName = answers.filter((a) => /bad segment file name/.test(a.message));
      assert.equal(byName.length, badNames.length, answers.map((a) => a.message).join('\n'));
      for (const refused of byName) assert.equal(refused.code, 'REWIND_PROTOCOL', refused.message);
      const missing = answers.find((a) => /cannot read/.test(a.message));
      assert.ok(missing, answers.map((a) => a.message).join('\n'));
      assert.equal(missing.code, 'REWIND_IO', missing.message);
      assert.match(missing.message, /cannot read .*ENOENT/);
      session.close();
      assert.equal(manager.seqCommitted(), 3, 'nothing applied');
      assert.deepEqual(fs.readdirSync(redoDir).sort(), redoBefore, 'no redo file added');

      // The agent reconnects and ships on.
      for (let waited = 0; manager.agentConnected; waited += 10) {
        assert.ok(waited < 10_000, 'the raw session ends');
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      for (let waited = 0; !manager.agentConnected; waited += 50) {
        assert.ok(waited < 15_000, 'the agent reconnects');
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      assert.equal(await write(e, 3 * 8192, Buffer.alloc(4096, 9)), 0);
      assert.equal((await manager.seal(true)).committed, 4, 'the agent still ships');

      // A manager that was not given a spool directory (`rewind manager`) never reads one.
      split = await startManager({
        dataDir: path.join(dir, 'split'),
        listen: { host: '127.0.0.1', port: 0 },
        nbd: { host: '127.0.0.1', port: 0 },
        http: { host: '127.0.0.1', port: 0 },
        token: 'split-token',
        apiToken: 'api',
        quiet: true,
      });
      const other = await rawSession((socket) => split!.manager!.acceptAgent(socket));
      sessions.push(other);
      other.send({
        type: 'hello',
        protocol: PROTOCOL_VERSION,
        token: 'split-token',
        volumeSetId: agent.volumeSetId,
        volumeSetName: 'x',
        volumes: agent.volumeInfo(),
        seqNext: 1,
      });
      await other.next('welcome');
      other.send({
        type: 'segment-file',
        index: 1,
        seqFirst: 1,
        seqLast: 1,
        bytes: 100,
        name: path.basename(redoBefore[0] as string),
      });
      const refused = (await other.next('refused')) as Extract<Message, { type: 'refused' }>;
      assert.equal(refused.code, 'REWIND_PROTOCOL');
      assert.match(refused.message, /over the link only/);
      other.close();
      assert.equal(split.manager!.seqCommitted(), 0);
    } finally {
      for (const session of sessions) session.close();
      await running?.close();
      await split?.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);
