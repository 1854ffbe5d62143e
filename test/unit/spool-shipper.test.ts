// The agent's spool across crashes at each step of a seal, and the shipper's ordering guarantee:
// segments reach the manager in index order even when their file reads finish out of order.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { crc32c } from '../../src/core/index.js';
import {
  encodeRecordHeader,
  encodeRedoTrailer,
  parseSealedRedo,
  RECORD_HEADER_BYTES,
  REDO_VERSION,
  scanRedo,
} from '../../src/log/redo.js';
import { Spool } from '../../src/agent/spool.js';
import { Shipper, type AgentCommands, type ShipperSource } from '../../src/agent/shipper.js';
import { FrameReader, sendFrame } from '../../src/ship/protocol.js';

const VOLUME_SET = Buffer.alloc(16, 9);
/** These tests are about recovery and shipping: no spare files in the directory listings. */
const PLAIN = { preallocate: false } as const;

/** The agent as the shipper sees it, over a real spool; commits are recorded. */
function fakeSource(spool: Spool, committed: number[] = []): ShipperSource {
  return {
    hello: () => ({
      volumeSetId: '09090909-0909-0909-0909-090909090909',
      volumeSetName: 'test',
      volumes: [{ name: 'v', sizeBytes: 1 << 30 }],
      seqNext: 1,
    }),
    sealed: () => spool.sealed,
    committed: async (index) => {
      committed.push(index);
      await spool.release(index); // as the agent does: an acknowledged segment leaves the spool
    },
    acked: () => ({ index: committed[committed.length - 1] ?? 0, seq: 0 }),
    resyncForGap: () => Promise.reject(new Error('unexpected history gap')),
    report: () => ({
      seqCaptured: 15,
      timeCapturedNs: 15n,
      spoolBytes: spool.totalBytes,
      sealedPending: spool.sealed.length,
      mode: 'logging',
      failure: undefined,
      restoring: undefined,
    }),
  };
}

/** These tests send no commands; one that arrives fails the test. */
const refusingCommands: AgentCommands = {
  seal: () => Promise.reject(new Error('unexpected seal')),
  restoreBegin: () => Promise.reject(new Error('unexpected restore')),
  restoreWrite: () => assert.fail('unexpected restore write'),
  restoreEnd: () => Promise.reject(new Error('unexpected restore')),
};

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-spool-'));
}

/** Encodes `count` 4 KiB writes starting at `seq`, as the pipeline does. */
function records(seq: number, count: number, payloadBytes = 4096): [Buffer[], Buffer[]] {
  const pieces: Buffer[] = [];
  const headers: Buffer[] = [];
  for (let i = 0; i < count; i++) {
    const data = Buffer.alloc(payloadBytes, (seq + i) & 0xff);
    const header = Buffer.allocUnsafe(RECORD_HEADER_BYTES);
    encodeRecordHeader(
      {
        kind: 'write',
        volume: 0,
        seq: seq + i,
        timeNs: BigInt(seq + i),
        offsetBytes: i * payloadBytes,
        lengthBytes: payloadBytes,
      },
      crc32c(data),
      header,
    );
    pieces.push(header, data);
    headers.push(header);
  }
  return [pieces, headers];
}

describe('spool recovery', () => {
  it('a crash after the trailer was written but before the rename finishes the seal', async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, PLAIN);
      await spool.append(...records(1, 5), 1, 5, 1n, 5n);
      const active = path.join(dir, '0000000000000001.redo.active');
      const body = fs.readFileSync(active);
      // What seal() writes first: the trailer; the process dies before the rename.
      fs.appendFileSync(
        active,
        encodeRedoTrailer({
          recordCount: 5,
          seqFirst: 1,
          seqLast: 5,
          timeFirstNs: 1n,
          timeLastNs: 5n,
          bodyBytes: body.length,
          bodyCrc: scanRedo(body, 'active', 1).validCrc,
        }),
      );
      spool.close();
      const reopened = await Spool.open(dir, VOLUME_SET, 1, 0, 0, PLAIN);
      assert.equal(reopened.recovery.tornBytes, 0);
      assert.deepEqual(
        reopened.spool.sealed.map((s) => [s.index, s.seqFirst, s.seqLast]),
        [[1, 1, 5]],
      );
      assert.equal(reopened.spool.seqNextExpected, 6);
      assert.deepEqual(fs.readdirSync(dir), ['0000000000000001.redo']);
      parseSealedRedo(fs.readFileSync(path.join(dir, '0000000000000001.redo')), 'sealed', 1);
      // The spool continues after it.
      await reopened.spool.append(...records(6, 1), 6, 1, 6n, 6n);
      const next = await reopened.spool.seal();
      assert.deepEqual([next?.index, next?.seqFirst, next?.seqLast], [2, 6, 6]);
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a torn last record is cut, the valid prefix sealed, and a segment already acknowledged removed', async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, PLAIN);
      await spool.append(...records(1, 2), 1, 2, 1n, 2n);
      await spool.seal();
      await spool.append(...records(3, 3), 3, 3, 3n, 5n);
      spool.close();
      const active = path.join(dir, '0000000000000002.redo.active');
      const full = fs.statSync(active).size;
      fs.truncateSync(active, full - 100); // the last record lost its final 100 bytes
      // The manager had acknowledged segment 1 before the crash.
      const reopened = await Spool.open(dir, VOLUME_SET, 1, 2, 1, PLAIN);
      assert.equal(reopened.recovery.recoveredRecords, 2);
      assert.equal(reopened.recovery.tornBytes, RECORD_HEADER_BYTES + 4096 - 100);
      assert.deepEqual(
        reopened.spool.sealed.map((s) => [s.index, s.seqFirst, s.seqLast]),
        [[2, 3, 4]],
      );
      assert.equal(reopened.spool.seqNextExpected, 5);
      assert.deepEqual(fs.readdirSync(dir), ['0000000000000002.redo']);
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an active segment of format version 1 (written before an upgrade) is recovered and sealed as version 1', async () => {
    const dir = tmpDir();
    try {
      const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, PLAIN);
      await spool.append(...records(1, 3), 1, 3, 1n, 3n);
      spool.close();
      const active = path.join(dir, '0000000000000001.redo.active');
      const buf = fs.readFileSync(active);
      buf.writeUInt16LE(1, 8); // what a version 1 agent wrote: the records are the same
      buf.writeUInt32LE(crc32c(buf.subarray(0, 60)), 60);
      fs.writeFileSync(active, buf);
      const reopened = await Spool.open(dir, VOLUME_SET, 1, 0, 0, PLAIN);
      assert.equal(reopened.recovery.recoveredRecords, 3);
      const sealed = fs.readFileSync(path.join(dir, '0000000000000001.redo'));
      assert.equal(sealed.readUInt32LE(sealed.length - 64 + 4), 1, 'trailer version 1');
      assert.equal(parseSealedRedo(sealed, 'sealed', 1).records.length, 3);
      // New records go to a new, current-version segment.
      await reopened.spool.append(...records(4, 1), 4, 1, 4n, 4n);
      const next = await reopened.spool.seal();
      assert.equal(fs.readFileSync(next?.file as string).readUInt16LE(8), REDO_VERSION);
      reopened.spool.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('shipper', () => {
  it('sends segments in index order even when a large one is read more slowly than the small ones after it', async () => {
    const dir = tmpDir();
    const received: number[] = [];
    const server = net.createServer((socket) => {
      const reader = new FrameReader();
      socket.on('data', (chunk: Buffer) => {
        for (const { message } of reader.push(chunk)) {
          if (message.type === 'hello')
            sendFrame(socket, { type: 'welcome', seqCommitted: 0, segmentCommitted: 0 });
          if (message.type === 'segment') {
            received.push(message.index);
            sendFrame(socket, { type: 'ack', index: message.index, seqLast: message.seqLast });
          }
        }
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0, PLAIN);
    let shipper: Shipper | undefined;
    try {
      // Segment 1 is 48 MiB, segments 2..4 hold one small record each.
      await spool.append(...records(1, 12, 4 * 1024 * 1024), 1, 12, 1n, 12n);
      await spool.seal();
      for (let seq = 13; seq <= 15; seq++) {
        await spool.append(...records(seq, 1), seq, 1, BigInt(seq), BigInt(seq));
        await spool.seal();
      }
      shipper = new Shipper({
        source: fakeSource(spool),
        commands: refusingCommands,
        target: { host: '127.0.0.1', port, token: 't' },
        log: () => undefined,
      });
      shipper.start();
      for (let waited = 0; received.length < 4; waited += 20) {
        assert.ok(waited < 20_000, `all four segments arrive (got ${received.join(',')})`);
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(received, [1, 2, 3, 4]);
    } finally {
      await shipper?.stop();
      spool.close();
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a segment the manager leaves unanswered is resent on a new connection after its timeout', async () => {
    const dir = tmpDir();
    const sessions: number[][] = [];
    // The first session takes segment 1 and never answers (a turn that never ends); the next
    // one acknowledges it.
    const server = net.createServer((socket) => {
      const seen: number[] = [];
      sessions.push(seen);
      const answers = sessions.length > 1;
      const reader = new FrameReader();
      socket.on('data', (chunk: Buffer) => {
        for (const { message } of reader.push(chunk)) {
          if (message.type === 'hello')
            sendFrame(socket, { type: 'welcome', seqCommitted: 0, segmentCommitted: 0 });
          if (message.type === 'segment') {
            seen.push(message.index);
            if (answers)
              sendFrame(socket, { type: 'ack', index: message.index, seqLast: message.seqLast });
          }
        }
      });
      socket.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const { spool } = await Spool.open(dir, VOLUME_SET, 1, 0, 0);
    const committed: number[] = [];
    const logged: string[] = [];
    const shipper = new Shipper({
      source: fakeSource(spool, committed),
      commands: refusingCommands,
      target: { host: '127.0.0.1', port, token: 't', ackTimeoutMs: 600 },
      log: (_level, message) => logged.push(message),
    });
    try {
      await spool.append(...records(1, 2), 1, 2, 1n, 2n);
      await spool.seal();
      shipper.start();
      for (let waited = 0; !committed.includes(1); waited += 20) {
        assert.ok(
          waited < 20_000,
          `segment 1 is acknowledged in the end (sessions ${JSON.stringify(sessions)})`,
        );
        await new Promise((r) => setTimeout(r, 20));
      }
      assert.deepEqual(sessions.slice(0, 2), [[1], [1]], 'sent, unanswered, sent again');
      assert.equal(shipper.ackTimeouts, 1);
      assert.ok(
        logged.some((line) => /segment 1 unanswered by the manager/.test(line)),
        logged.join('\n'),
      );
    } finally {
      await shipper.stop();
      spool.close();
      server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
