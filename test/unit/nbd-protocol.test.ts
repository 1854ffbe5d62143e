// Raw-socket tests of the NBD server: handshake paths, transmission errors and their order, stream
// framing, out-of-order completion, flow control, shutdown, plus property tests of the pure parts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import fc from 'fast-check';
import {
  MemoryBackend,
  MemoryRegistry,
  NbdErrno,
  NbdServer,
  nbdProtocol as P,
  type BlockStatusCallback,
  type DoneCallback,
  type ExportBackend,
  type NbdServerOptions,
  type ReadCallback,
} from '../../src/nbd/index.js';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import {
  cookieOf,
  decodeRequestHeader,
  shapeExtents,
  validateRequest,
  transmissionFlagsFor,
  type Session,
} from '../../src/nbd/transmission.js';

const SIZE_BYTES = 1024 * 1024;
const TIMEOUT_MS = 3000;

// ---- raw client ---------------------------------------------------------------------------------

class RawClient {
  private buffered = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  closed = false;
  socketError: Error | undefined;

  private constructor(readonly socket: net.Socket) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.notify();
    });
    socket.on('close', () => {
      this.closed = true;
      this.notify();
    });
    // Resets are expected when the server hard-disconnects; remember them for the test to inspect.
    socket.on('error', (error) => {
      this.socketError = error;
    });
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => resolve(new RawClient(socket)));
      socket.once('error', reject);
    });
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private waitForEvent(deadline: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error('timed out waiting for the server')),
        Math.max(0, deadline - Date.now()),
      );
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  async read(lengthBytes: number, timeoutMs = TIMEOUT_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buffered.length < lengthBytes) {
      if (this.closed)
        throw new Error(`connection closed after ${this.buffered.length}/${lengthBytes} bytes`);
      await this.waitForEvent(deadline);
    }
    const result = this.buffered.subarray(0, lengthBytes);
    this.buffered = this.buffered.subarray(lengthBytes);
    return result;
  }

  /** Waits for the server to close; returns whatever it sent before closing. */
  async expectClose(timeoutMs = TIMEOUT_MS): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) await this.waitForEvent(deadline);
    return this.buffered;
  }

  get pendingBytes(): number {
    return this.buffered.length;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// ---- wire helpers -------------------------------------------------------------------------------

function optionBytes(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(P.OPTION_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value, 0);
  return buffer;
}

function u16(value: number): Buffer {
  const buffer = Buffer.alloc(2);
  buffer.writeUInt16BE(value, 0);
  return buffer;
}

function lengthPrefixed(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  return Buffer.concat([u32(bytes.length), bytes]);
}

function infoData(exportName: string, infoTypes: number[] = []): Buffer {
  return Buffer.concat([lengthPrefixed(exportName), u16(infoTypes.length), ...infoTypes.map(u16)]);
}

function metaData(exportName: string, queries: string[]): Buffer {
  return Buffer.concat([
    lengthPrefixed(exportName),
    u32(queries.length),
    ...queries.map(lengthPrefixed),
  ]);
}

interface OptionReplyMessage {
  option: number;
  type: number;
  data: Buffer;
}

async function readOptionReply(client: RawClient): Promise<OptionReplyMessage> {
  const header = await client.read(20);
  assert.equal(header.readBigUInt64BE(0), P.OPTION_REPLY_MAGIC);
  const lengthBytes = header.readUInt32BE(16);
  return {
    option: header.readUInt32BE(8),
    type: header.readUInt32BE(12),
    data: await client.read(lengthBytes),
  };
}

/** Reads replies until the final one (ACK or an error). */
async function readOptionReplies(client: RawClient): Promise<OptionReplyMessage[]> {
  const replies: OptionReplyMessage[] = [];
  for (;;) {
    const reply = await readOptionReply(client);
    replies.push(reply);
    if (
      reply.type !== P.OptionReply.SERVER &&
      reply.type !== P.OptionReply.INFO &&
      reply.type !== P.OptionReply.META_CONTEXT
    ) {
      return replies;
    }
  }
}

interface RequestFields {
  type: number;
  flags?: number;
  cookie?: bigint;
  offsetBytes?: bigint;
  lengthBytes?: number;
  magic?: number;
}

function requestBytes(fields: RequestFields, payload?: Buffer): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(fields.magic ?? P.REQUEST_MAGIC, 0);
  header.writeUInt16BE(fields.flags ?? 0, 4);
  header.writeUInt16BE(fields.type, 6);
  header.writeBigUInt64BE(fields.cookie ?? 1n, 8);
  header.writeBigUInt64BE(fields.offsetBytes ?? 0n, 16);
  header.writeUInt32BE(fields.lengthBytes ?? payload?.length ?? 0, 24);
  return payload ? Buffer.concat([header, payload]) : header;
}

async function readSimpleReply(client: RawClient): Promise<{ errno: number; cookie: bigint }> {
  const reply = await client.read(16);
  assert.equal(reply.readUInt32BE(0), P.SIMPLE_REPLY_MAGIC, 'simple reply magic');
  return { errno: reply.readUInt32BE(4), cookie: reply.readBigUInt64BE(8) };
}

interface Chunk {
  flags: number;
  type: number;
  cookie: bigint;
  payload: Buffer;
}

async function readChunk(client: RawClient): Promise<Chunk> {
  const header = await client.read(20);
  assert.equal(header.readUInt32BE(0), P.STRUCTURED_REPLY_MAGIC, 'structured reply magic');
  const payload = await client.read(header.readUInt32BE(16));
  return {
    flags: header.readUInt16BE(4),
    type: header.readUInt16BE(6),
    cookie: header.readBigUInt64BE(8),
    payload,
  };
}

/** Reads one reply, simple or structured, and reports its errno and cookie. */
async function readAnyReply(
  client: RawClient,
): Promise<{ errno: number; cookie: bigint; data?: Buffer }> {
  const magic = (await client.read(4)).readUInt32BE(0);
  if (magic === P.SIMPLE_REPLY_MAGIC) {
    const rest = await client.read(12);
    return { errno: rest.readUInt32BE(0), cookie: rest.readBigUInt64BE(4) };
  }
  assert.equal(magic, P.STRUCTURED_REPLY_MAGIC);
  const rest = await client.read(16);
  const type = rest.readUInt16BE(2);
  const payload = await client.read(rest.readUInt32BE(12));
  const cookie = rest.readBigUInt64BE(4);
  if (type === P.ChunkType.ERROR) return { errno: payload.readUInt32BE(0), cookie };
  if (type === P.ChunkType.OFFSET_DATA) return { errno: 0, cookie, data: payload.subarray(8) };
  return { errno: 0, cookie };
}

async function greet(client: RawClient, clientFlags = 3): Promise<void> {
  const greeting = await client.read(18);
  assert.equal(greeting.readBigUInt64BE(0), P.INIT_MAGIC);
  assert.equal(greeting.readBigUInt64BE(8), P.OPTION_MAGIC);
  assert.equal(greeting.readUInt16BE(16), 3, 'FIXED_NEWSTYLE | NO_ZEROES');
  client.write(u32(clientFlags));
}

interface OpenOptions {
  exportName?: string;
  structured?: boolean;
  meta?: string[];
}

/** Connects and negotiates with GO (no info requests); returns the client and transmission flags. */
async function openSession(
  port: number,
  options: OpenOptions = {},
): Promise<{ client: RawClient; flags: number }> {
  const client = await RawClient.connect(port);
  await greet(client);
  const exportName = options.exportName ?? 'vol';
  if (options.structured) {
    client.write(optionBytes(P.Option.STRUCTURED_REPLY));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ACK);
  }
  if (options.meta) {
    client.write(optionBytes(P.Option.SET_META_CONTEXT, metaData(exportName, options.meta)));
    await readOptionReplies(client);
  }
  client.write(optionBytes(P.Option.GO, infoData(exportName)));
  const replies = await readOptionReplies(client);
  const last = replies[replies.length - 1];
  assert.equal(last?.type, P.OptionReply.ACK, 'GO acknowledged');
  const exportInfo = replies.find(
    (reply) => reply.type === P.OptionReply.INFO && reply.data.readUInt16BE(0) === 0,
  );
  assert.ok(exportInfo, 'INFO_EXPORT sent');
  return { client, flags: exportInfo.data.readUInt16BE(10) };
}

// ---- fixtures -----------------------------------------------------------------------------------

interface Fixture {
  server: NbdServer;
  port: number;
  registry: MemoryRegistry;
  vol: MemoryBackend;
  ro: MemoryBackend;
  logs: Array<{ level: string; msg: string }>;
}

async function withServer(
  body: (fixture: Fixture) => Promise<void>,
  options: NbdServerOptions = {},
  extra: ExportBackend[] = [],
): Promise<void> {
  const vol = new MemoryBackend({ name: 'vol', sizeBytes: SIZE_BYTES, description: 'test volume' });
  const ro = new MemoryBackend({
    name: 'ro',
    sizeBytes: SIZE_BYTES,
    readOnly: true,
    multiConn: false,
  });
  const registry = new MemoryRegistry([vol, ro, ...extra], 'vol');
  const logs: Array<{ level: string; msg: string }> = [];
  const server = new NbdServer(registry, {
    log: (level, msg) => logs.push({ level, msg }),
    ...options,
  });
  const { port } = await server.listen('127.0.0.1', 0);
  try {
    await body({ server, port, registry, vol, ro, logs });
    await assertServerServes(port);
  } finally {
    await server.close();
  }
}

/** The server still completes a fresh handshake and a read after whatever the test did. */
async function assertServerServes(port: number): Promise<void> {
  const { client } = await openSession(port);
  client.write(requestBytes({ type: P.Command.READ, cookie: 77n, lengthBytes: 512 }));
  const reply = await readSimpleReply(client);
  assert.deepEqual(reply, { errno: 0, cookie: 77n });
  await client.read(512);
  client.write(requestBytes({ type: P.Command.DISC }));
  await client.expectClose();
}

async function eventually(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + TIMEOUT_MS;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Wraps a MemoryBackend and holds every call until the test releases it. */
class DeferredBackend implements ExportBackend {
  readonly name: string;
  readonly description = '';
  readonly sizeBytes: number;
  readonly readOnly = false;
  readonly multiConn = true;
  readonly held: Array<{ kind: string; lengthBytes: number; run: () => void }> = [];
  inflightBytesPeak = 0;

  constructor(readonly inner: MemoryBackend) {
    this.name = inner.name;
    this.sizeBytes = inner.sizeBytes;
  }

  private hold(kind: string, lengthBytes: number, run: () => void): void {
    this.held.push({ kind, lengthBytes, run });
    const heldBytes = this.held.reduce((sum, call) => sum + call.lengthBytes, 0);
    this.inflightBytesPeak = Math.max(this.inflightBytesPeak, heldBytes);
  }

  release(index: number): void {
    const [call] = this.held.splice(index, 1);
    assert.ok(call, `no held call at ${index}`);
    call.run();
  }

  releaseAll(): void {
    for (const call of this.held.splice(0)) call.run();
  }

  read(offsetBytes: number, lengthBytes: number, done: ReadCallback): void {
    this.hold('read', lengthBytes, () => this.inner.read(offsetBytes, lengthBytes, done));
  }
  write(offsetBytes: number, data: Buffer, fua: boolean, done: DoneCallback): void {
    this.hold('write', data.length, () => this.inner.write(offsetBytes, data, fua, done));
  }
  writeZeroes(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void {
    this.hold('zero', 0, () => this.inner.writeZeroes(offsetBytes, lengthBytes, fua, done));
  }
  trim(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void {
    this.hold('trim', 0, () => this.inner.trim(offsetBytes, lengthBytes, fua, done));
  }
  flush(done: DoneCallback): void {
    this.hold('flush', 0, () => this.inner.flush(done));
  }
  blockStatus(offsetBytes: number, lengthBytes: number, done: BlockStatusCallback): void {
    this.hold('status', 0, () => this.inner.blockStatus(offsetBytes, lengthBytes, done));
  }
}

// ---- handshake ----------------------------------------------------------------------------------

test('GO with zero info requests (kernel nbd-client) gets INFO_EXPORT and ACK, then transmission', async () => {
  await withServer(async ({ port }) => {
    const { client, flags } = await openSession(port);
    const T = P.TransmissionFlag;
    assert.equal(
      flags,
      T.HAS_FLAGS |
        T.SEND_FLUSH |
        T.SEND_FUA |
        T.SEND_TRIM |
        T.SEND_WRITE_ZEROES |
        T.CAN_MULTI_CONN,
    );
    client.write(
      requestBytes(
        { type: P.Command.WRITE, cookie: 5n, offsetBytes: 4096n },
        Buffer.alloc(4096, 0xab),
      ),
    );
    assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 5n });
    client.write(
      requestBytes({ type: P.Command.READ, cookie: 6n, offsetBytes: 4096n, lengthBytes: 4096 }),
    );
    assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 6n });
    assert.deepEqual(await client.read(4096), Buffer.alloc(4096, 0xab));
    client.destroy();
  });
});

test('INFO returns export, name, description and block sizes when asked, then GO still works', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    const I = P.InfoType;
    client.write(
      optionBytes(P.Option.INFO, infoData('', [I.NAME, I.DESCRIPTION, I.BLOCK_SIZE, 999])),
    );
    const replies = await readOptionReplies(client);
    assert.equal(replies.at(-1)?.type, P.OptionReply.ACK);
    const infos = new Map(
      replies
        .filter((r) => r.type === P.OptionReply.INFO)
        .map((r) => [r.data.readUInt16BE(0), r.data]),
    );
    assert.equal(infos.get(I.EXPORT)?.readBigUInt64BE(2), BigInt(SIZE_BYTES));
    assert.equal(
      infos.get(I.NAME)?.subarray(2).toString(),
      'vol',
      'default export resolves to its name',
    );
    assert.equal(infos.get(I.DESCRIPTION)?.subarray(2).toString(), 'test volume');
    const blockSize = infos.get(I.BLOCK_SIZE);
    assert.ok(blockSize);
    assert.deepEqual(
      [blockSize.readUInt32BE(2), blockSize.readUInt32BE(6), blockSize.readUInt32BE(10)],
      [1, 4096, 32 * 1024 * 1024],
    );
    assert.equal(infos.size, 4, 'unknown info request ignored');
    client.write(optionBytes(P.Option.GO, infoData('vol')));
    assert.equal((await readOptionReplies(client)).at(-1)?.type, P.OptionReply.ACK);
    client.destroy();
  });
});

test('INFO and GO for an unknown export get ERR_UNKNOWN and haggling continues', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.INFO, infoData('nope')));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_UNKNOWN);
    client.write(optionBytes(P.Option.GO, infoData('nope')));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_UNKNOWN);
    client.write(optionBytes(P.Option.GO, Buffer.from([0, 0, 0, 9, 1]))); // name length beyond the data
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_INVALID);
    client.write(optionBytes(P.Option.GO, infoData('ro')));
    assert.equal((await readOptionReplies(client)).at(-1)?.type, P.OptionReply.ACK);
    client.destroy();
  });
});

test('a refusing export answers ERR_POLICY with the reason as message', async () => {
  await withServer(async ({ port, registry }) => {
    registry.setRefusal('vol', 'restore in progress');
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.GO, infoData('vol')));
    const reply = await readOptionReply(client);
    assert.equal(reply.type, P.OptionReply.ERR_POLICY);
    assert.equal(reply.data.toString(), 'restore in progress');
    client.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('vol')));
    await client.expectClose();
    registry.setRefusal('vol', null);
  });
});

test('EXPORT_NAME without NO_ZEROES sends size, flags and 124 zero bytes', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client, P.ClientFlag.FIXED_NEWSTYLE);
    client.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('vol')));
    const reply = await client.read(10 + 124);
    assert.equal(reply.readBigUInt64BE(0), BigInt(SIZE_BYTES));
    assert.equal(reply.readUInt16BE(8) & P.TransmissionFlag.HAS_FLAGS, 1);
    assert.ok(reply.subarray(10).equals(Buffer.alloc(124)));
    client.write(requestBytes({ type: P.Command.READ, cookie: 9n, lengthBytes: 8 }));
    assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 9n });
    await client.read(8);
    client.destroy();
  });
});

test('EXPORT_NAME with NO_ZEROES sends exactly 10 bytes; a client with flags 0 gets the old path', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client, P.ClientFlag.FIXED_NEWSTYLE | P.ClientFlag.NO_ZEROES);
    client.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('')));
    const reply = await client.read(10);
    assert.equal(reply.readBigUInt64BE(0), BigInt(SIZE_BYTES), 'empty name is the default export');
    client.write(requestBytes({ type: P.Command.FLUSH, cookie: 3n }));
    assert.deepEqual(
      await readSimpleReply(client),
      { errno: 0, cookie: 3n },
      'no padding before the reply',
    );
    client.destroy();

    const oldClient = await RawClient.connect(port);
    await greet(oldClient, 0);
    oldClient.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('ro')));
    const oldReply = await oldClient.read(134);
    assert.equal(
      oldReply.readUInt16BE(8) & P.TransmissionFlag.READ_ONLY,
      P.TransmissionFlag.READ_ONLY,
    );
    oldClient.destroy();
  });
});

test('EXPORT_NAME for an unknown export closes the connection', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('missing')));
    assert.equal((await client.expectClose()).length, 0);
  });
});

test('LIST sends one SERVER reply per export then ACK; LIST with data is ERR_INVALID', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.LIST));
    const replies = await readOptionReplies(client);
    assert.equal(replies.at(-1)?.type, P.OptionReply.ACK);
    const names = replies
      .filter((reply) => reply.type === P.OptionReply.SERVER)
      .map((reply) => reply.data.subarray(4, 4 + reply.data.readUInt32BE(0)).toString());
    assert.deepEqual(names, ['vol', 'ro']);
    const volEntry = replies[0]?.data;
    assert.equal(volEntry?.subarray(4 + 3).toString(), 'test volume', 'description after the name');
    client.write(optionBytes(P.Option.LIST, Buffer.from('x')));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_INVALID);
    client.destroy();
  });
});

test('ABORT is acknowledged and the server closes', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.ABORT));
    const reply = await readOptionReply(client);
    assert.deepEqual([reply.option, reply.type], [P.Option.ABORT, P.OptionReply.ACK]);
    await client.expectClose();
  });
});

test('unknown options and EXTENDED_HEADERS get ERR_UNSUP with their data skipped; STARTTLS without TLS gets ERR_POLICY', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(4242, Buffer.alloc(300, 7)));
    assert.deepEqual(Object.values(await readOptionReply(client)).slice(0, 2), [
      4242,
      P.OptionReply.ERR_UNSUP,
    ]);
    client.write(optionBytes(P.Option.STARTTLS));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_POLICY);
    client.write(optionBytes(P.Option.EXTENDED_HEADERS));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_UNSUP);
    client.write(optionBytes(P.Option.GO, infoData('vol')));
    assert.equal((await readOptionReplies(client)).at(-1)?.type, P.OptionReply.ACK);
    client.destroy();
  });
});

test('client flags with unknown bits close the connection', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client, 0x7);
    await client.expectClose();
  });
});

test('more options than maxOptions close the connection', async () => {
  await withServer(
    async ({ port }) => {
      const client = await RawClient.connect(port);
      await greet(client);
      for (let index = 0; index < 4; index += 1) {
        client.write(optionBytes(P.Option.STRUCTURED_REPLY));
        assert.equal((await readOptionReply(client)).type, P.OptionReply.ACK);
      }
      client.write(optionBytes(P.Option.STRUCTURED_REPLY));
      assert.equal((await client.expectClose()).length, 0);
    },
    { maxOptions: 4 },
  );
});

test('oversized option data is skipped with ERR_TOO_BIG; beyond the drain bound the server closes', async () => {
  await withServer(
    async ({ port }) => {
      const client = await RawClient.connect(port);
      await greet(client);
      client.write(optionBytes(P.Option.LIST, Buffer.alloc(20_000)));
      assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_TOO_BIG);
      client.write(optionBytes(P.Option.GO, infoData('vol')));
      assert.equal((await readOptionReplies(client)).at(-1)?.type, P.OptionReply.ACK);
      client.destroy();

      const hostile = await RawClient.connect(port);
      await greet(hostile);
      const header = optionBytes(P.Option.INFO);
      header.writeUInt32BE(0xffffffff, 12); // claims 4 GiB of data and sends none
      hostile.write(header);
      await hostile.expectClose();
    },
    { maxOptionDataBytes: 8192 },
  );
});

test('a client that stalls in the handshake is dropped after handshakeTimeoutMs; transmission has no timeout', async () => {
  await withServer(
    async ({ port }) => {
      const stalled = await RawClient.connect(port);
      await greet(stalled);
      const started = Date.now();
      await stalled.expectClose();
      assert.ok(Date.now() - started >= 100, 'not before the timeout');
      const { client } = await openSession(port);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.equal(client.closed, false, 'an idle transmission stays open');
      client.destroy();
    },
    { handshakeTimeoutMs: 150 },
  );
});

test('bad option magic closes the connection', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    const bytes = optionBytes(P.Option.LIST);
    bytes[0] = 0;
    client.write(bytes);
    await client.expectClose();
  });
});

test('meta contexts: LIST and SET rules for base:allocation', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    const L = P.Option.LIST_META_CONTEXT;
    const S = P.Option.SET_META_CONTEXT;
    client.write(optionBytes(S, metaData('vol', [P.BASE_ALLOCATION])));
    assert.equal(
      (await readOptionReply(client)).type,
      P.OptionReply.ERR_INVALID,
      'SET needs structured replies',
    );
    client.write(optionBytes(P.Option.STRUCTURED_REPLY));
    await readOptionReply(client);
    const contextNames = async (
      option: number,
      queries: string[],
      exportName = 'vol',
    ): Promise<string[]> => {
      client.write(optionBytes(option, metaData(exportName, queries)));
      const replies = await readOptionReplies(client);
      assert.equal(replies.at(-1)?.type, P.OptionReply.ACK);
      return replies
        .filter((r) => r.type === P.OptionReply.META_CONTEXT)
        .map((r) => r.data.subarray(4).toString());
    };
    assert.deepEqual(
      await contextNames(L, []),
      [P.BASE_ALLOCATION],
      'LIST with no query lists all',
    );
    assert.deepEqual(
      await contextNames(L, ['base:']),
      [P.BASE_ALLOCATION],
      'base: is a LIST wildcard',
    );
    assert.deepEqual(
      await contextNames(L, ['qemu:dirty-bitmap:x']),
      [],
      'unknown namespace ignored',
    );
    assert.deepEqual(await contextNames(S, ['base:']), [], 'no wildcard for SET');
    assert.deepEqual(await contextNames(S, []), [], 'SET with zero queries selects nothing');
    assert.deepEqual(await contextNames(S, ['x-foo:bar', P.BASE_ALLOCATION]), [P.BASE_ALLOCATION]);
    client.write(optionBytes(S, metaData('nope', [P.BASE_ALLOCATION])));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_UNKNOWN);
    client.write(optionBytes(S, Buffer.from([0, 0, 0, 3, 0x76])));
    assert.equal((await readOptionReply(client)).type, P.OptionReply.ERR_INVALID, 'truncated data');
    client.destroy();
  });
});

// ---- transmission: block status -----------------------------------------------------------------

test('BLOCK_STATUS reports base:allocation; REQ_ONE gives exactly one extent within the request', async () => {
  await withServer(async ({ port, vol }) => {
    vol.writeSync(65536, Buffer.alloc(65536, 1));
    const { client, flags } = await openSession(port, {
      structured: true,
      meta: [P.BASE_ALLOCATION],
    });
    assert.equal(
      flags & P.TransmissionFlag.SEND_DF,
      P.TransmissionFlag.SEND_DF,
      'DF with structured replies',
    );
    const extentsOf = async (
      flags: number,
      offsetBytes: bigint,
      lengthBytes: number,
    ): Promise<number[][]> => {
      client.write(
        requestBytes({ type: P.Command.BLOCK_STATUS, flags, cookie: 4n, offsetBytes, lengthBytes }),
      );
      const chunk = await readChunk(client);
      assert.equal(chunk.type, P.ChunkType.BLOCK_STATUS);
      assert.equal(chunk.flags, P.ReplyFlag.DONE);
      assert.equal(chunk.payload.readUInt32BE(0), 1, 'context id from SET');
      const pairs: number[][] = [];
      for (let at = 4; at < chunk.payload.length; at += 8)
        pairs.push([chunk.payload.readUInt32BE(at), chunk.payload.readUInt32BE(at + 4)]);
      return pairs;
    };
    assert.deepEqual(await extentsOf(0, 0n, 3 * 65536), [
      [65536, 3],
      [65536, 0],
      [65536, 3],
    ]);
    assert.deepEqual(await extentsOf(P.CommandFlag.REQ_ONE, 4096n, 100_000), [[61440, 3]]);
    assert.deepEqual(
      await extentsOf(P.CommandFlag.REQ_ONE, 65536n, 512),
      [[512, 0]],
      'clipped to the request',
    );
    client.write(
      requestBytes({
        type: P.Command.BLOCK_STATUS,
        cookie: 8n,
        offsetBytes: BigInt(SIZE_BYTES),
        lengthBytes: 1,
      }),
    );
    const error = await readChunk(client);
    assert.deepEqual(
      [error.type, error.payload.readUInt32BE(0)],
      [P.ChunkType.ERROR, NbdErrno.EINVAL],
    );
    client.destroy();
  });
});

test('BLOCK_STATUS without a selected context (or selected for another export) is EINVAL', async () => {
  await withServer(async ({ port }) => {
    const client = await RawClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.STRUCTURED_REPLY));
    await readOptionReply(client);
    client.write(optionBytes(P.Option.SET_META_CONTEXT, metaData('ro', [P.BASE_ALLOCATION])));
    await readOptionReplies(client);
    client.write(optionBytes(P.Option.GO, infoData('vol')));
    await readOptionReplies(client);
    client.write(requestBytes({ type: P.Command.BLOCK_STATUS, cookie: 2n, lengthBytes: 512 }));
    const chunk = await readChunk(client);
    assert.deepEqual(
      [chunk.type, chunk.payload.readUInt32BE(0), chunk.cookie],
      [P.ChunkType.ERROR, NbdErrno.EINVAL, 2n],
    );
    client.destroy();
  });
});

// ---- transmission: errors -----------------------------------------------------------------------

interface ErrorCase {
  name: string;
  exportName?: string;
  request: RequestFields;
  payloadBytes?: number;
  errno: number;
  /** Valid once structured replies are negotiated, so only an error without them. */
  simpleOnly?: boolean;
}

const ERROR_CASES: ErrorCase[] = [
  {
    name: 'read past end',
    request: { type: P.Command.READ, offsetBytes: BigInt(SIZE_BYTES - 512), lengthBytes: 1024 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'read at u64 max',
    request: { type: P.Command.READ, offsetBytes: 0xffffffffffffff00n, lengthBytes: 16 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'write past end',
    request: { type: P.Command.WRITE, offsetBytes: BigInt(SIZE_BYTES) },
    payloadBytes: 4096,
    errno: NbdErrno.ENOSPC,
  },
  {
    name: 'write zeroes past end',
    request: { type: P.Command.WRITE_ZEROES, offsetBytes: 4096n, lengthBytes: SIZE_BYTES },
    errno: NbdErrno.ENOSPC,
  },
  {
    name: 'trim past end',
    request: { type: P.Command.TRIM, offsetBytes: 4096n, lengthBytes: SIZE_BYTES },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'write on read-only',
    exportName: 'ro',
    request: { type: P.Command.WRITE },
    payloadBytes: 4096,
    errno: NbdErrno.EPERM,
  },
  {
    name: 'trim on read-only',
    exportName: 'ro',
    request: { type: P.Command.TRIM, lengthBytes: 4096 },
    errno: NbdErrno.EPERM,
  },
  {
    name: 'zero on read-only',
    exportName: 'ro',
    request: { type: P.Command.WRITE_ZEROES, lengthBytes: 4096 },
    errno: NbdErrno.EPERM,
  },
  {
    name: 'write on read-only past end',
    exportName: 'ro',
    request: { type: P.Command.WRITE, offsetBytes: BigInt(SIZE_BYTES) },
    payloadBytes: 512,
    errno: NbdErrno.EPERM,
  },
  {
    name: 'flush on read-only (not advertised)',
    exportName: 'ro',
    request: { type: P.Command.FLUSH },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'FUA on read-only (not advertised)',
    exportName: 'ro',
    request: { type: P.Command.READ, flags: P.CommandFlag.FUA, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
  },
  { name: 'unknown command', request: { type: 99, lengthBytes: 4096 }, errno: NbdErrno.EINVAL },
  {
    name: 'CACHE (not advertised)',
    request: { type: P.Command.CACHE, lengthBytes: 4096 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'unknown flag',
    request: { type: P.Command.READ, flags: 0x100, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'unknown flag on write',
    request: { type: P.Command.WRITE, flags: 0x8000 },
    payloadBytes: 1024,
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'REQ_ONE on read',
    request: { type: P.Command.READ, flags: P.CommandFlag.REQ_ONE, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'NO_HOLE on write',
    request: { type: P.Command.WRITE, flags: P.CommandFlag.NO_HOLE },
    payloadBytes: 512,
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'DF without structured replies',
    request: { type: P.Command.READ, flags: P.CommandFlag.DF, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
    simpleOnly: true,
  },
  {
    name: 'FAST_ZERO on write zeroes (never advertised: EINVAL, as the spec asks)',
    request: { type: P.Command.WRITE_ZEROES, flags: P.CommandFlag.FAST_ZERO, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'zero-length read',
    request: { type: P.Command.READ, lengthBytes: 0 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'zero-length write',
    request: { type: P.Command.WRITE, lengthBytes: 0 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'zero-length trim',
    request: { type: P.Command.TRIM, lengthBytes: 0 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'flush with a length',
    request: { type: P.Command.FLUSH, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'block status without structured replies',
    request: { type: P.Command.BLOCK_STATUS, lengthBytes: 512 },
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'write over maxPayloadBytes (drained)',
    request: { type: P.Command.WRITE },
    payloadBytes: 64 * 1024 + 1,
    errno: NbdErrno.EINVAL,
  },
  {
    name: 'read over maxPayloadBytes',
    request: { type: P.Command.READ, lengthBytes: 64 * 1024 + 1 },
    errno: NbdErrno.EINVAL,
  },
];

for (const structured of [false, true]) {
  test(`transmission errors have the right errno, drain payloads and keep the stream (structured=${structured})`, async () => {
    await withServer(
      async ({ port, vol, ro }) => {
        for (const errorCase of ERROR_CASES.filter(
          (candidate) => !(structured && candidate.simpleOnly),
        )) {
          const { client } = await openSession(port, {
            exportName: errorCase.exportName ?? 'vol',
            structured,
          });
          const payload =
            errorCase.payloadBytes === undefined
              ? undefined
              : Buffer.alloc(errorCase.payloadBytes, 0xee);
          // The rejected request, then a valid one: its reply proves the stream stayed in sync.
          client.write(
            Buffer.concat([
              requestBytes({ cookie: 100n, ...errorCase.request }, payload),
              requestBytes({ type: P.Command.READ, cookie: 101n, lengthBytes: 512 }),
            ]),
          );
          const rejected = await readAnyReply(client);
          assert.deepEqual(
            [rejected.errno, rejected.cookie],
            [errorCase.errno, 100n],
            errorCase.name,
          );
          assert.equal(rejected.data, undefined, `${errorCase.name}: an error carries no data`);
          const next = await readAnyReply(client);
          assert.deepEqual([next.errno, next.cookie], [0, 101n], `${errorCase.name}: next request`);
          if (structured) assert.equal(next.data?.length, 512);
          else await client.read(512);
          client.write(requestBytes({ type: P.Command.DISC }));
          await client.expectClose();
        }
        assert.equal(vol.allocatedBytes, 0, 'no bytes from rejected writes');
        assert.equal(ro.allocatedBytes, 0);
      },
      { maxPayloadBytes: 64 * 1024 },
    );
  });
}

test('structured READ replies are one OFFSET_DATA chunk with DONE; FUA and DF are accepted on READ', async () => {
  await withServer(async ({ port, vol }) => {
    vol.writeSync(1000, Buffer.from('hello'));
    const { client } = await openSession(port, { structured: true });
    client.write(
      requestBytes({
        type: P.Command.READ,
        flags: P.CommandFlag.FUA | P.CommandFlag.DF,
        cookie: 0xfedcba9876543210n,
        offsetBytes: 1000n,
        lengthBytes: 5,
      }),
    );
    const chunk = await readChunk(client);
    assert.equal(chunk.cookie, 0xfedcba9876543210n);
    assert.deepEqual([chunk.type, chunk.flags], [P.ChunkType.OFFSET_DATA, P.ReplyFlag.DONE]);
    assert.equal(chunk.payload.readBigUInt64BE(0), 1000n);
    assert.equal(chunk.payload.subarray(8).toString(), 'hello');
    client.destroy();
  });
});

test('write zeroes with NO_HOLE and trim zero the range; FUA reaches the backend', async () => {
  await withServer(async ({ port, vol }) => {
    const { client } = await openSession(port);
    client.write(
      requestBytes(
        { type: P.Command.WRITE, flags: P.CommandFlag.FUA, cookie: 1n },
        Buffer.alloc(3 * 65536, 9),
      ),
    );
    assert.equal((await readSimpleReply(client)).errno, 0);
    assert.equal(vol.stats.fuaWrites, 1);
    client.write(
      requestBytes({
        type: P.Command.WRITE_ZEROES,
        flags: P.CommandFlag.NO_HOLE,
        cookie: 2n,
        offsetBytes: 10n,
        lengthBytes: 100,
      }),
    );
    client.write(
      requestBytes({ type: P.Command.TRIM, cookie: 3n, offsetBytes: 65536n, lengthBytes: 65536 }),
    );
    assert.equal((await readSimpleReply(client)).errno, 0);
    assert.equal((await readSimpleReply(client)).errno, 0);
    assert.ok(vol.readSync(10, 100).equals(Buffer.alloc(100)));
    assert.equal(vol.readSync(9, 1)[0], 9);
    assert.equal(vol.allocatedBytes, 2 * 65536, 'a fully trimmed chunk is released');
    client.destroy();
  });
});

test('a WRITE longer than the drain bound disconnects; bad request magic disconnects', async () => {
  await withServer(async ({ port }) => {
    const { client } = await openSession(port, { exportName: 'ro' });
    client.write(requestBytes({ type: P.Command.WRITE, lengthBytes: 0xffffffff }));
    await client.expectClose();
    const { client: second } = await openSession(port);
    second.write(requestBytes({ type: P.Command.READ, magic: 0x12345678, lengthBytes: 512 }));
    assert.equal((await second.expectClose()).length, 0, 'no reply to a bad magic');
  });
});

// ---- framing ------------------------------------------------------------------------------------

test('requests split into 1-byte TCP writes are reassembled', async () => {
  await withServer(async ({ port, vol }) => {
    const { client } = await openSession(port);
    const payload = Buffer.from(Array.from({ length: 300 }, (_, index) => index % 251));
    const bytes = Buffer.concat([
      requestBytes({ type: P.Command.WRITE, cookie: 1n, offsetBytes: 777n }, payload),
      requestBytes({ type: P.Command.READ, cookie: 2n, offsetBytes: 777n, lengthBytes: 300 }),
    ]);
    for (const byte of bytes) {
      client.write(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 1n });
    assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 2n });
    assert.deepEqual(await client.read(300), payload);
    assert.deepEqual(vol.readSync(777, 300), payload);
    client.destroy();
  });
});

test('many requests in one TCP write are all answered, in order for a synchronous backend', async () => {
  await withServer(async ({ port }) => {
    const { client } = await openSession(port);
    const requests: Buffer[] = [];
    for (let index = 0; index < 200; index += 1) {
      const offsetBytes = BigInt(index * 512);
      requests.push(
        requestBytes(
          { type: P.Command.WRITE, cookie: BigInt(2 * index), offsetBytes },
          Buffer.alloc(512, index),
        ),
      );
      requests.push(
        requestBytes({
          type: P.Command.READ,
          cookie: BigInt(2 * index + 1),
          offsetBytes,
          lengthBytes: 512,
        }),
      );
    }
    client.write(Buffer.concat(requests));
    for (let index = 0; index < 200; index += 1) {
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: BigInt(2 * index) });
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: BigInt(2 * index + 1) });
      assert.deepEqual(await client.read(512), Buffer.alloc(512, index));
    }
    client.destroy();
  });
});

// ---- concurrency, flow control, lifecycle -------------------------------------------------------

test('replies go out in completion order (out-of-order backend)', async () => {
  const deferred = new DeferredBackend(new MemoryBackend({ name: 'slow', sizeBytes: SIZE_BYTES }));
  deferred.inner.writeSync(0, Buffer.alloc(4096, 1));
  deferred.inner.writeSync(4096, Buffer.alloc(4096, 2));
  await withServer(
    async ({ port }) => {
      const { client } = await openSession(port, { exportName: 'slow', structured: true });
      client.write(
        requestBytes({ type: P.Command.READ, cookie: 1n, offsetBytes: 0n, lengthBytes: 4096 }),
      );
      client.write(
        requestBytes({ type: P.Command.READ, cookie: 2n, offsetBytes: 4096n, lengthBytes: 4096 }),
      );
      client.write(requestBytes({ type: P.Command.FLUSH, cookie: 3n }));
      await eventually(() => deferred.held.length === 3, 'three held calls');
      deferred.release(2);
      deferred.release(1);
      deferred.release(0);
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 3n });
      const second = await readChunk(client);
      assert.deepEqual([second.cookie, second.payload[8]], [2n, 2]);
      const first = await readChunk(client);
      assert.deepEqual([first.cookie, first.payload[8]], [1n, 1]);
      client.destroy();
    },
    {},
    [deferred],
  );
});

test('reading pauses when in-flight bytes exceed inflightBytesMax and resumes as requests finish', async () => {
  const deferred = new DeferredBackend(
    new MemoryBackend({ name: 'slow', sizeBytes: 8 * 1024 * 1024 }),
  );
  const writeBytes = 512 * 1024;
  await withServer(
    async ({ port }) => {
      const { client } = await openSession(port, { exportName: 'slow' });
      for (let index = 0; index < 8; index += 1) {
        client.write(
          requestBytes(
            {
              type: P.Command.WRITE,
              cookie: BigInt(index),
              offsetBytes: BigInt(index * writeBytes),
            },
            Buffer.alloc(writeBytes, index + 1),
          ),
        );
      }
      await eventually(() => deferred.held.length === 2, 'two held writes');
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(deferred.held.length, 2, 'no third write while over the limit');
      let replies = 0;
      while (replies < 8) {
        await eventually(() => deferred.held.length > 0, 'a held write');
        const released = deferred.held.length;
        deferred.releaseAll();
        for (let index = 0; index < released; index += 1) {
          assert.equal((await readSimpleReply(client)).errno, 0);
          replies += 1;
        }
      }
      assert.ok(deferred.inflightBytesPeak <= 2 * writeBytes, `peak ${deferred.inflightBytesPeak}`);
      assert.deepEqual(deferred.inner.readSync(7 * writeBytes, 4), Buffer.alloc(4, 8));
      client.destroy();
    },
    { inflightBytesMax: 1024 * 1024 },
    [deferred],
  );
});

test('DISC waits for in-flight requests, sends their replies, then closes without replying to DISC', async () => {
  const deferred = new DeferredBackend(new MemoryBackend({ name: 'slow', sizeBytes: SIZE_BYTES }));
  await withServer(
    async ({ port }) => {
      const { client } = await openSession(port, { exportName: 'slow' });
      client.write(requestBytes({ type: P.Command.WRITE, cookie: 1n }, Buffer.alloc(512, 3)));
      client.write(requestBytes({ type: P.Command.DISC, cookie: 2n }));
      await eventually(() => deferred.held.length === 1, 'held write');
      await new Promise((resolve) => setTimeout(resolve, 20));
      assert.equal(client.closed, false, 'not closed while a request is in flight');
      deferred.releaseAll();
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 1n });
      assert.equal((await client.expectClose()).length, 0, 'nothing for DISC');
    },
    {},
    [deferred],
  );
});

test('close() answers new requests with ESHUTDOWN, finishes in-flight ones, then closes sockets', async () => {
  const deferred = new DeferredBackend(new MemoryBackend({ name: 'slow', sizeBytes: SIZE_BYTES }));
  const registry = new MemoryRegistry([deferred]);
  const server = new NbdServer(registry);
  const { port } = await server.listen('127.0.0.1', 0);
  const { client } = await openSession(port, { exportName: 'slow' });
  const idle = await RawClient.connect(port);
  await greet(idle);
  client.write(requestBytes({ type: P.Command.READ, cookie: 1n, lengthBytes: 512 }));
  await eventually(() => deferred.held.length === 1, 'held read');
  const closing = server.close();
  await idle.expectClose();
  client.write(requestBytes({ type: P.Command.WRITE, cookie: 2n }, Buffer.alloc(100)));
  assert.deepEqual(await readSimpleReply(client), { errno: NbdErrno.ESHUTDOWN, cookie: 2n });
  deferred.releaseAll();
  assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 1n });
  await client.read(512);
  await client.expectClose();
  await closing;
  assert.equal(deferred.inner.allocatedBytes, 0);
  await assert.rejects(RawClient.connect(port), 'listener closed');
});

test('disconnectExport drops every connection of that export and counts them', async () => {
  await withServer(async ({ server, port }) => {
    const a = await openSession(port);
    const b = await openSession(port);
    const c = await openSession(port, { exportName: 'ro' });
    await eventually(() => server.connectionCount('vol') === 2, 'two vol connections');
    assert.equal(server.connectionCount('ro'), 1);
    assert.equal(server.connectionCount(), 3);
    assert.equal(server.disconnectExport('vol'), 2);
    await a.client.expectClose();
    await b.client.expectClose();
    await eventually(() => server.connectionCount('vol') === 0, 'vol connections gone');
    assert.equal(server.disconnectExport('vol'), 0);
    c.client.write(requestBytes({ type: P.Command.READ, cookie: 1n, lengthBytes: 1 }));
    assert.equal((await readSimpleReply(c.client)).errno, 0);
    c.client.destroy();
  });
});

test('a backend callback after the socket died is ignored and the server stays up', async () => {
  const deferred = new DeferredBackend(new MemoryBackend({ name: 'slow', sizeBytes: SIZE_BYTES }));
  await withServer(
    async ({ server, port }) => {
      const { client } = await openSession(port, { exportName: 'slow' });
      client.write(requestBytes({ type: P.Command.READ, cookie: 1n, lengthBytes: 4096 }));
      client.write(requestBytes({ type: P.Command.WRITE, cookie: 2n }, Buffer.alloc(4096)));
      await eventually(() => deferred.held.length === 2, 'held calls');
      client.destroy();
      await eventually(() => server.connectionCount('slow') === 0, 'server saw the close');
      deferred.releaseAll();
    },
    {},
    [deferred],
  );
});

test('a backend calling done twice fails an assertion', async () => {
  class TwiceBackend extends MemoryBackend {
    secondCallError: unknown;
    override flush(done: DoneCallback): void {
      done(0);
      try {
        done(0);
      } catch (error) {
        this.secondCallError = error;
      }
    }
  }
  const twice = new TwiceBackend({ name: 'twice', sizeBytes: SIZE_BYTES });
  await withServer(
    async ({ port }) => {
      const { client } = await openSession(port, { exportName: 'twice' });
      client.write(requestBytes({ type: P.Command.FLUSH, cookie: 1n }));
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 1n });
      assert.equal((twice.secondCallError as Error | undefined)?.name, 'AssertionError');
      client.destroy();
    },
    {},
    [twice],
  );
});

test('backend errnos outside the NBD set are sent as EIO', async () => {
  class FailingBackend extends MemoryBackend {
    override read(_offsetBytes: number, _lengthBytes: number, done: ReadCallback): void {
      done(13); // EACCES is not an NBD error value
    }
  }
  await withServer(
    async ({ port }) => {
      const { client } = await openSession(port, { exportName: 'failing' });
      client.write(requestBytes({ type: P.Command.READ, cookie: 1n, lengthBytes: 16 }));
      assert.deepEqual(await readSimpleReply(client), { errno: NbdErrno.EIO, cookie: 1n });
      client.write(requestBytes({ type: P.Command.READ, cookie: 2n, lengthBytes: 16 }));
      assert.deepEqual(
        await readSimpleReply(client),
        { errno: NbdErrno.EIO, cookie: 2n },
        'no data after an error',
      );
      client.destroy();
    },
    {},
    [new FailingBackend({ name: 'failing', sizeBytes: SIZE_BYTES })],
  );
});

test('random bytes after the greeting or after GO never crash the server', async () => {
  await withServer(async ({ port, vol }) => {
    await fc.assert(
      fc.asyncProperty(
        fc.boolean(),
        fc.uint8Array({ minLength: 1, maxLength: 600 }),
        async (afterGo, bytes) => {
          const client = afterGo ? (await openSession(port)).client : await RawClient.connect(port);
          if (!afterGo) await greet(client);
          client.write(Buffer.from(bytes));
          await new Promise((resolve) => setTimeout(resolve, 2));
          client.destroy();
        },
      ),
      { numRuns: 60 },
    );
    // Random requests may have written; what matters is that the server answers afterwards.
    assert.ok(vol.allocatedBytes >= 0);
  });
});

test('listen rejects when the port is taken; handleSocket serves an injected socket', async () => {
  const registry = new MemoryRegistry([new MemoryBackend({ name: 'vol', sizeBytes: SIZE_BYTES })]);
  const first = new NbdServer(registry);
  const second = new NbdServer(registry);
  const { port } = await first.listen('127.0.0.1', 0);
  try {
    await assert.rejects(second.listen('127.0.0.1', port), /EADDRINUSE/);
    const injector = net.createServer((socket) => second.handleSocket(socket));
    await new Promise<void>((resolve) => injector.listen(0, '127.0.0.1', resolve));
    const address = injector.address();
    assert.ok(address !== null && typeof address === 'object');
    try {
      const { client } = await openSession(address.port);
      assert.equal(second.connectionCount('vol'), 1);
      client.write(requestBytes({ type: P.Command.DISC }));
      await client.expectClose();
    } finally {
      await second.close();
      await new Promise((resolve) => injector.close(resolve));
    }
  } finally {
    await first.close();
  }
});

// ---- pure parts -----------------------------------------------------------------------------------

test('ByteQueue returns exactly the bytes pushed, however they are chunked', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 0, maxLength: 40 }), { maxLength: 30 }),
      fc.array(fc.integer({ min: 0, max: 50 }), { maxLength: 40 }),
      (chunks, takes) => {
        const queue = new ByteQueue();
        const all = Buffer.concat(chunks.map((chunk) => Buffer.from(chunk)));
        for (const chunk of chunks) queue.push(Buffer.from(chunk));
        let position = 0;
        for (const [index, take] of takes.entries()) {
          const lengthBytes = Math.min(take, queue.lengthBytes);
          const taken = index % 3 === 2 ? queue.skip(lengthBytes) : queue.take(lengthBytes);
          if (typeof taken !== 'number')
            assert.deepEqual(taken, all.subarray(position, position + lengthBytes));
          position += lengthBytes;
          assert.equal(queue.lengthBytes, all.length - position);
        }
      },
    ),
  );
});

test('shapeExtents merges, clips to the request, honours REQ_ONE and the extent cap', () => {
  fc.assert(
    fc.property(
      fc.array(
        fc.record({
          lengthBytes: fc.integer({ min: 1, max: 5000 }),
          flags: fc.integer({ min: 0, max: 7 }),
        }),
        { minLength: 1, maxLength: 40 },
      ),
      fc.integer({ min: 1, max: 100_000 }),
      fc.boolean(),
      fc.integer({ min: 1, max: 10 }),
      (extents, lengthBytes, reqOne, extentsMax) => {
        const shaped = shapeExtents(extents, lengthBytes, reqOne, extentsMax);
        const totalBytes = shaped.reduce((sum, extent) => sum + extent.lengthBytes, 0);
        assert.ok(shaped.length >= 1 && shaped.length <= (reqOne ? 1 : extentsMax));
        assert.ok(totalBytes <= lengthBytes && totalBytes > 0);
        for (const [index, extent] of shaped.entries()) {
          assert.ok(extent.lengthBytes > 0 && extent.flags <= 3);
          if (index > 0)
            assert.notEqual(extent.flags, shaped[index - 1]?.flags, 'neighbours differ');
        }
        const inputBytes = extents.reduce((sum, extent) => sum + extent.lengthBytes, 0);
        if (!reqOne && shaped.length < extentsMax)
          assert.equal(totalBytes, Math.min(inputBytes, lengthBytes));
      },
    ),
  );
});

test('validateRequest: read-only beats range, range errno depends on the command', () => {
  const backend = new MemoryBackend({ name: 'ro', sizeBytes: 4096, readOnly: true });
  const session: Session = {
    backend,
    transmissionFlags: transmissionFlagsFor(backend, false),
    structuredReplies: false,
    allocationContextId: undefined,
    maxPayloadBytes: 1 << 20,
  };
  const request = {
    type: P.Command.WRITE,
    flags: 0,
    cookieHigh: 0,
    cookieLow: 0,
    offsetBytes: undefined,
    lengthBytes: 1,
  };
  assert.equal(validateRequest(request, session)?.errno, NbdErrno.EPERM);
  assert.equal(
    validateRequest({ ...request, type: P.Command.READ }, session)?.errno,
    NbdErrno.EINVAL,
  );
  assert.equal(
    validateRequest({ ...request, type: P.Command.READ, offsetBytes: 4095 }, session),
    undefined,
  );
  assert.equal(
    validateRequest({ ...request, type: P.Command.READ, offsetBytes: 4096 }, session)?.errno,
    NbdErrno.EINVAL,
  );
});

test('request headers decode without BigInt: u64 offsets up to 2^53 - 1, beyond it undefined; the cookie whole', () => {
  fc.assert(
    fc.property(
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      (offset, cookie) => {
        const header = Buffer.alloc(P.REQUEST_HEADER_BYTES);
        header.writeUInt32BE(P.REQUEST_MAGIC, 0);
        header.writeBigUInt64BE(cookie, 8);
        header.writeBigUInt64BE(offset, 16);
        const request = decodeRequestHeader(header);
        assert.ok(request);
        const safe = offset <= BigInt(Number.MAX_SAFE_INTEGER);
        assert.equal(request.offsetBytes, safe ? Number(offset) : undefined);
        assert.equal(cookieOf(request), cookie);
      },
    ),
  );
  for (const [offset, expected] of [
    [2n ** 53n - 1n, Number.MAX_SAFE_INTEGER],
    [2n ** 53n, undefined],
    [2n ** 64n - 1n, undefined],
    [2n ** 32n, 2 ** 32],
  ] as const) {
    const header = Buffer.alloc(P.REQUEST_HEADER_BYTES);
    header.writeUInt32BE(P.REQUEST_MAGIC, 0);
    header.writeBigUInt64BE(offset, 16);
    assert.equal(decodeRequestHeader(header)?.offsetBytes, expected, `offset ${offset}`);
  }
});

/** A memory backend that also takes writes as pieces, and counts how each write arrived. */
class PiecesBackend extends MemoryBackend {
  joined = 0;
  inPieces = 0;
  piecesSeen = 0;
  override write(offsetBytes: number, data: Buffer, fua: boolean, done: DoneCallback): void {
    this.joined += 1;
    super.write(offsetBytes, data, fua, done);
  }
  writePieces(
    offsetBytes: number,
    pieces: readonly Buffer[],
    fua: boolean,
    done: DoneCallback,
  ): void {
    this.inPieces += 1;
    this.piecesSeen += pieces.length;
    super.write(offsetBytes, Buffer.concat(pieces), fua, done);
  }
}

test('a write whose payload spans socket reads reaches a backend that takes pieces as those pieces, byte for byte', async () => {
  const backend = new PiecesBackend({ name: 'pieces', sizeBytes: 4 * SIZE_BYTES });
  await withServer(
    async ({ port }) => {
      const { client } = await openSession(port, { exportName: 'pieces' });
      const large = Buffer.alloc(SIZE_BYTES);
      for (let at = 0; at < large.length; at += 4) large.writeUInt32LE((at * 2654435761) >>> 0, at);
      const bytes = requestBytes(
        { type: P.Command.WRITE, cookie: 9n, offsetBytes: 4096n, lengthBytes: large.length },
        large,
      );
      // In several TCP writes, so the server surely reads it in several chunks.
      for (let at = 0; at < bytes.length; at += 100_000)
        client.write(bytes.subarray(at, at + 100_000));
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 9n });
      client.write(
        requestBytes(
          { type: P.Command.WRITE, cookie: 10n, lengthBytes: 512 },
          Buffer.alloc(512, 1),
        ),
      );
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 10n });
      client.write(
        requestBytes({
          type: P.Command.READ,
          cookie: 11n,
          offsetBytes: 4096n,
          lengthBytes: large.length,
        }),
      );
      assert.deepEqual(await readSimpleReply(client), { errno: 0, cookie: 11n });
      assert.ok((await client.read(large.length)).equals(large), 'read back equal');
      assert.equal(backend.inPieces, 1, 'the large write came as pieces');
      assert.ok(backend.piecesSeen > 1, 'more than one piece');
      assert.equal(backend.joined, 1, 'the small one in one chunk came whole');
      client.destroy();
    },
    {},
    [backend],
  );
});
