// A scripted agent for manager-level tests: says hello over a real link, then ships segments it
// builds from given records (with the capture times the test wants), one at a time, and waits for
// each answer. Shares only the wire codecs with the product.
import assert from 'node:assert/strict';
import net from 'node:net';
import { crc32c } from '../../src/core/index.js';
import { buildSealedRedo, type RecordMeta } from '../../src/log/index.js';
import { FrameReader, PROTOCOL_VERSION, sendFrame, type Message } from '../../src/ship/index.js';

export interface FakeRecord {
  volume: number;
  kind: 'write' | 'zero' | 'trim';
  offset: number;
  length: number;
  data?: Buffer;
  timeNs: bigint;
}

/** The next seq a fake agent claims in its hello (far past any test's history). */
const FAKE_SEQ_NEXT = 2 ** 40;

export class FakeAgent {
  private readonly socket: net.Socket;
  private readonly reader = new FrameReader();
  private readonly frames: Message[] = [];
  private wake: (() => void) | undefined;
  private readonly volumeSetId: string;
  nextIndex = 1;
  nextSeq = 1;

  private constructor(socket: net.Socket, volumeSetId: string) {
    this.socket = socket;
    this.volumeSetId = volumeSetId;
    socket.on('data', (chunk: Buffer) => {
      for (const { message } of this.reader.push(chunk)) this.frames.push(message);
      this.wake?.();
    });
    socket.on('error', () => undefined);
  }

  static async connect(
    port: number,
    hello: { token: string; volumeSetId: string; volumes: { name: string; sizeBytes: number }[] },
  ): Promise<FakeAgent> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const agent = new FakeAgent(socket, hello.volumeSetId);
    sendFrame(socket, {
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      token: hello.token,
      volumeSetId: hello.volumeSetId,
      volumeSetName: 'test',
      volumes: hello.volumes,
      // The fake agent makes up whatever segment the manager expects next (from the welcome), so
      // its history never ends before the manager's: it is never an agent behind the manager.
      seqNext: FAKE_SEQ_NEXT,
    });
    const welcome = await agent.next('welcome');
    assert.equal(welcome.type, 'welcome');
    if (welcome.type === 'welcome') {
      agent.nextIndex = welcome.segmentCommitted + 1;
      agent.nextSeq = welcome.seqCommitted + 1;
    }
    return agent;
  }

  /** How many frames of `type` arrived and were not taken by `next` (e.g. commands never answered). */
  received(type: Message['type']): number {
    return this.frames.filter((m) => m.type === type).length;
  }

  /** The next frame of `type` (others are dropped), within a bound. */
  async next(type: Message['type'], timeoutMs = 20_000): Promise<Message> {
    for (let waited = 0; ;) {
      const i = this.frames.findIndex((m) => m.type === type || m.type === 'refused');
      if (i >= 0) return this.frames.splice(i, 1)[0] as Message;
      assert.ok(waited < timeoutMs, `no ${type} from the manager within ${timeoutMs} ms`);
      const started = Date.now();
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      waited += Date.now() - started;
    }
  }

  /** Ships one segment of `records` (seqs assigned in order) and waits for its ack. */
  async ship(records: readonly FakeRecord[]): Promise<void> {
    const reply = await this.offer(records);
    assert.equal(reply.type, 'ack', `segment ${this.nextIndex - 1}: ${JSON.stringify(reply)}`);
  }

  /**
   * Ships one segment and returns the manager's answer (an ack or a refusal); the next segment
   * index and seq move on only after an ack, so a refused segment is offered again the same.
   */
  async offer(records: readonly FakeRecord[]): Promise<Message> {
    const seqFirst = this.nextSeq;
    const index = this.nextIndex;
    const metas = records.map((r, i) => {
      const meta: RecordMeta = {
        kind: r.kind,
        volume: r.volume,
        seq: seqFirst + i,
        timeNs: r.timeNs,
        offsetBytes: r.offset,
        lengthBytes: r.length,
      };
      return r.kind === 'write' ? { ...meta, data: r.data as Buffer } : meta;
    });
    const header = {
      volumeSetId: Buffer.from(this.volumeSetId.replace(/-/g, ''), 'hex'),
      segmentIndex: index,
      seqFirst,
      createdNs: 0n,
      flags: 0,
    };
    const bytes = Buffer.concat(buildSealedRedo(header, metas));
    const seqLast = seqFirst + records.length - 1;
    sendFrame(
      this.socket,
      { type: 'segment', index, seqFirst, seqLast, fileCrc: crc32c(bytes), bytes: bytes.length },
      bytes,
    );
    const reply = await this.next('ack');
    if (reply.type === 'ack') {
      this.nextIndex += 1;
      this.nextSeq = seqLast + 1;
    }
    return reply;
  }

  close(): void {
    this.socket.destroy();
  }
}
