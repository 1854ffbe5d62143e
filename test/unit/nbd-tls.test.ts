// NBD security against raw sockets and Node's own TLS client: STARTTLS in the modes off, on and
// require (the replies the spec names before and after TLS, the negotiation starting over after
// it), PSK and X.509 with client certificates (right, wrong, untrusted, missing), per-export
// access rules, bytes pipelined behind STARTTLS, shutdown and timeouts during a TLS handshake,
// Unix socket listeners (mode, group, stale and foreign files), and the pure parsers.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import tls from 'node:tls';
import {
  AccessPolicy,
  MemoryBackend,
  MemoryRegistry,
  NbdServer,
  checkSecurity,
  nbdProtocol as P,
  parseAccessRule,
  parsePskFile,
  type NbdServerOptions,
  type TlsSettings,
} from '../../src/nbd/index.js';
import { RewindError } from '../../src/core/index.js';
import { haveTool, makePki, type Pki } from '../support/tls.js';

const SIZE_BYTES = 1024 * 1024;
const TIMEOUT_MS = 5000;
const ALICE_KEY = Buffer.alloc(32, 0xa1);
const BOB_KEY = Buffer.alloc(32, 0xb0);
const PSK_KEYS = new Map([
  ['alice', ALICE_KEY],
  ['bob', BOB_KEY],
]);

// ---- a client that can switch its socket to TLS -------------------------------------------------

class WireClient {
  private buffered = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  closed = false;
  private socket: net.Socket;
  private readonly listeners = {
    data: (chunk: Buffer): void => {
      this.buffered = Buffer.concat([this.buffered, chunk]);
      this.notify();
    },
    close: (): void => {
      this.closed = true;
      this.notify();
    },
    error: (): void => {
      // Resets are expected when the server refuses; the close that follows is what tests check.
    },
  };

  private constructor(socket: net.Socket) {
    this.socket = socket;
    this.attach(socket);
  }

  static connect(target: number | string): Promise<WireClient> {
    return new Promise((resolve, reject) => {
      const socket =
        typeof target === 'number' ? net.connect(target, '127.0.0.1') : net.connect(target);
      socket.once('connect', () => resolve(new WireClient(socket)));
      socket.once('error', reject);
    });
  }

  private attach(socket: net.Socket): void {
    socket.on('data', this.listeners.data);
    socket.on('close', this.listeners.close);
    socket.on('error', this.listeners.error);
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

  async read(lengthBytes: number): Promise<Buffer> {
    const deadline = Date.now() + TIMEOUT_MS;
    while (this.buffered.length < lengthBytes) {
      if (this.closed)
        throw new Error(`connection closed after ${this.buffered.length}/${lengthBytes} bytes`);
      await this.waitForEvent(deadline);
    }
    const result = this.buffered.subarray(0, lengthBytes);
    this.buffered = this.buffered.subarray(lengthBytes);
    return result;
  }

  /** Waits for the server to close; returns what it sent and was not read yet. */
  async expectClose(): Promise<Buffer> {
    const deadline = Date.now() + TIMEOUT_MS;
    while (!this.closed) await this.waitForEvent(deadline);
    return this.buffered;
  }

  write(data: Buffer): void {
    this.socket.write(data);
  }

  /** Runs the client side of TLS on the connection; resolves once secure, rejects on failure. */
  async upgrade(options: tls.ConnectionOptions): Promise<void> {
    assert.equal(this.buffered.length, 0, 'nothing unread before TLS');
    const plain = this.socket;
    plain.off('data', this.listeners.data);
    plain.off('close', this.listeners.close);
    const secure = tls.connect({ ...options, socket: plain });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
      secure.once('close', () => reject(new Error('closed during the TLS handshake')));
    });
    this.socket = secure;
    this.attach(secure);
  }

  destroy(): void {
    this.socket.destroy();
  }
}

// ---- wire helpers -------------------------------------------------------------------------------

function u32(value: number): Buffer {
  const buffer = Buffer.alloc(4);
  buffer.writeUInt32BE(value, 0);
  return buffer;
}

function optionBytes(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const header = Buffer.alloc(16);
  header.writeBigUInt64BE(P.OPTION_MAGIC, 0);
  header.writeUInt32BE(option, 8);
  header.writeUInt32BE(data.length, 12);
  return Buffer.concat([header, data]);
}

function prefixed(text: string): Buffer {
  const bytes = Buffer.from(text);
  return Buffer.concat([u32(bytes.length), bytes]);
}

function infoData(exportName: string): Buffer {
  return Buffer.concat([prefixed(exportName), Buffer.alloc(2)]);
}

function metaData(exportName: string, queries: string[]): Buffer {
  return Buffer.concat([prefixed(exportName), u32(queries.length), ...queries.map(prefixed)]);
}

interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

async function readReply(client: WireClient): Promise<OptionReply> {
  const header = await client.read(20);
  assert.equal(header.readBigUInt64BE(0), P.OPTION_REPLY_MAGIC);
  return {
    option: header.readUInt32BE(8),
    type: header.readUInt32BE(12),
    data: await client.read(header.readUInt32BE(16)),
  };
}

/** Sends an option and reads its replies up to the final one. */
async function ask(client: WireClient, option: number, data?: Buffer): Promise<OptionReply[]> {
  client.write(optionBytes(option, data));
  const replies: OptionReply[] = [];
  for (;;) {
    const reply = await readReply(client);
    assert.equal(reply.option, option, 'reply echoes the option');
    replies.push(reply);
    const intermediate = [P.OptionReply.SERVER, P.OptionReply.INFO, P.OptionReply.META_CONTEXT];
    if (!(intermediate as number[]).includes(reply.type)) return replies;
  }
}

async function finalType(client: WireClient, option: number, data?: Buffer): Promise<number> {
  const replies = await ask(client, option, data);
  return replies.at(-1)?.type ?? -1;
}

async function greet(client: WireClient, clientFlags = 3): Promise<void> {
  const greeting = await client.read(18);
  assert.equal(greeting.readBigUInt64BE(0), P.INIT_MAGIC);
  client.write(u32(clientFlags));
}

function request(type: number, cookie: bigint, offset: number, length: number): Buffer {
  const header = Buffer.alloc(28);
  header.writeUInt32BE(P.REQUEST_MAGIC, 0);
  header.writeUInt16BE(type, 6);
  header.writeBigUInt64BE(cookie, 8);
  header.writeBigUInt64BE(BigInt(offset), 16);
  header.writeUInt32BE(length, 24);
  return header;
}

/** GO on `exportName`; returns the transmission flags. */
async function go(client: WireClient, exportName: string): Promise<number> {
  const replies = await ask(client, P.Option.GO, infoData(exportName));
  assert.equal(replies.at(-1)?.type, P.OptionReply.ACK, `GO ${exportName} acknowledged`);
  const info = replies.find((reply) => reply.type === P.OptionReply.INFO);
  assert.ok(info, 'INFO_EXPORT sent');
  return info.data.readUInt16BE(10);
}

/** A write then a read of the same bytes, both with simple replies; returns what was read. */
async function writeThenRead(client: WireClient, offset: number, data: Buffer): Promise<Buffer> {
  client.write(Buffer.concat([request(P.Command.WRITE, 1n, offset, data.length), data]));
  const written = await client.read(16);
  assert.equal(written.readUInt32BE(4), 0, 'write succeeded');
  client.write(request(P.Command.READ, 2n, offset, data.length));
  const header = await client.read(16);
  assert.equal(header.readUInt32BE(0), P.SIMPLE_REPLY_MAGIC, 'a simple reply');
  assert.equal(header.readUInt32BE(4), 0, 'read succeeded');
  return client.read(data.length);
}

function pskClient(identity: string, key: Buffer): tls.ConnectionOptions {
  return {
    pskCallback: () => ({ identity, psk: key }),
    ciphers: 'ECDHE-PSK-CHACHA20-POLY1305',
    maxVersion: 'TLSv1.2',
    checkServerIdentity: () => undefined,
  };
}

// ---- fixtures -----------------------------------------------------------------------------------

interface Fixture {
  server: NbdServer;
  port: number;
  vol: MemoryBackend;
  logs: string[];
}

async function withServer(
  options: NbdServerOptions,
  body: (fixture: Fixture) => Promise<void>,
): Promise<void> {
  const vol = new MemoryBackend({ name: 'vol', sizeBytes: SIZE_BYTES, description: 'production' });
  const snap = new MemoryBackend({ name: 'vol@snap', sizeBytes: SIZE_BYTES, readOnly: true });
  const logs: string[] = [];
  const server = new NbdServer(new MemoryRegistry([vol, snap], 'vol'), {
    log: (_level, msg) => logs.push(msg),
    ...options,
  });
  const { port } = await server.listen('127.0.0.1', 0);
  try {
    await body({ server, port, vol, logs });
  } finally {
    await server.close();
  }
}

function pskSettings(mode: TlsSettings['mode']): TlsSettings {
  return { mode, credentials: { kind: 'psk', keys: PSK_KEYS } };
}

async function tlsSession(port: number, options: tls.ConnectionOptions): Promise<WireClient> {
  const client = await WireClient.connect(port);
  await greet(client);
  assert.equal(await finalType(client, P.Option.STARTTLS), P.OptionReply.ACK);
  await client.upgrade(options);
  return client;
}

const until = async (what: string, check: () => boolean): Promise<void> => {
  for (let waited = 0; !check(); waited += 10) {
    assert.ok(waited < TIMEOUT_MS, `timed out waiting: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
};

// ---- STARTTLS modes -----------------------------------------------------------------------------

test('require: every option but STARTTLS and ABORT gets ERR_TLS_REQD, its data skipped', async () => {
  await withServer({ tls: pskSettings('require') }, async ({ port }) => {
    const client = await WireClient.connect(port);
    await greet(client);
    for (const [option, data] of [
      [P.Option.LIST, undefined],
      [P.Option.INFO, infoData('vol')],
      [P.Option.GO, infoData('vol')],
      [P.Option.STRUCTURED_REPLY, undefined],
      [P.Option.SET_META_CONTEXT, metaData('vol', ['base:allocation'])],
      [4242, Buffer.alloc(100, 9)],
    ] as const) {
      const replies = await ask(client, option, data);
      assert.deepEqual(
        replies.map((reply) => reply.type),
        [P.OptionReply.ERR_TLS_REQD],
        `option ${option} before TLS`,
      );
      assert.match(replies[0]?.data.toString() ?? '', /STARTTLS/);
    }
    assert.equal(
      await finalType(client, P.Option.STARTTLS, Buffer.alloc(3)),
      P.OptionReply.ERR_INVALID,
    );
    assert.equal(await finalType(client, P.Option.ABORT), P.OptionReply.ACK);
    await client.expectClose();
  });
});

test('require: EXPORT_NAME before TLS closes without a reply; so does a client without fixed newstyle', async () => {
  await withServer({ tls: pskSettings('require') }, async ({ port, logs }) => {
    const client = await WireClient.connect(port);
    await greet(client);
    client.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('vol')));
    assert.equal((await client.expectClose()).length, 0, 'nothing sent before the close');
    const old = await WireClient.connect(port);
    await greet(old, 0); // neither FIXED_NEWSTYLE nor NO_ZEROES
    assert.equal((await old.expectClose()).length, 0);
    assert.ok(
      logs.some((line) => /fixed newstyle/.test(line)),
      logs.join('\n'),
    );
  });
});

test('require with PSK: after STARTTLS the negotiation starts over and the bytes round-trip', async () => {
  await withServer({ tls: pskSettings('require') }, async ({ port, vol, logs }) => {
    const client = await tlsSession(port, pskClient('alice', ALICE_KEY));
    assert.equal(await finalType(client, P.Option.STARTTLS), P.OptionReply.ERR_INVALID, 'twice');
    const listed = await ask(client, P.Option.LIST);
    assert.equal(listed.filter((reply) => reply.type === P.OptionReply.SERVER).length, 2);
    await go(client, 'vol');
    const data = Buffer.alloc(8192);
    for (let index = 0; index < data.length; index += 1) data[index] = (index * 7 + 3) & 0xff;
    assert.deepEqual(await writeThenRead(client, 4096, data), data);
    assert.deepEqual(vol.readSync(4096, data.length), data, 'the backend holds the bytes');
    client.destroy();
    assert.ok(
      logs.some((line) => line === 'nbd client started TLS'),
      logs.join('\n'),
    );
  });
});

test('on: state negotiated before STARTTLS is forgotten (structured replies, meta context)', async () => {
  await withServer({ tls: pskSettings('on') }, async ({ port }) => {
    const client = await WireClient.connect(port);
    await greet(client);
    assert.equal(await finalType(client, P.Option.STRUCTURED_REPLY), P.OptionReply.ACK);
    const meta = await ask(client, P.Option.SET_META_CONTEXT, metaData('vol', ['base:allocation']));
    assert.equal(meta.at(-1)?.type, P.OptionReply.ACK);
    assert.equal(await finalType(client, P.Option.STARTTLS), P.OptionReply.ACK);
    await client.upgrade(pskClient('bob', BOB_KEY));
    const flags = await go(client, 'vol');
    assert.equal(flags & P.TransmissionFlag.SEND_DF, 0, 'no DF: structured replies were reset');
    // A read answered with a simple reply proves structured replies are off after TLS.
    assert.deepEqual(await writeThenRead(client, 0, Buffer.alloc(512, 5)), Buffer.alloc(512, 5));
    // BLOCK_STATUS needs a context: the one selected before TLS is gone.
    client.write(request(P.Command.BLOCK_STATUS, 9n, 0, 4096));
    const reply = await client.read(16);
    assert.equal(reply.readUInt32BE(4), 22, 'EINVAL: no context selected');
    client.destroy();
  });
});

test('on: a plain client is served as before', async () => {
  await withServer({ tls: pskSettings('on') }, async ({ port }) => {
    const client = await WireClient.connect(port);
    await greet(client);
    await go(client, 'vol');
    assert.deepEqual(await writeThenRead(client, 0, Buffer.alloc(64, 1)), Buffer.alloc(64, 1));
    client.destroy();
  });
});

test('PSK: an unknown identity and a wrong key are refused in the TLS handshake and logged', async () => {
  await withServer({ tls: pskSettings('require') }, async ({ server, port, logs }) => {
    await assert.rejects(tlsSession(port, pskClient('mallory', ALICE_KEY)));
    await assert.rejects(tlsSession(port, pskClient('alice', BOB_KEY)));
    await until('refused connections closed', () => server.connectionCount() === 0);
    assert.ok(
      logs.some((line) => /"mallory" is not in the PSK file/.test(line)),
      logs.join('\n'),
    );
    assert.ok(
      logs.some((line) => /"alice" did not prove the key/.test(line)),
      logs.join('\n'),
    );
    const good = await tlsSession(port, pskClient('alice', ALICE_KEY));
    await go(good, 'vol');
    good.destroy();
  });
});

test('shutdown during a TLS handshake and a silent TLS client end their connections', async () => {
  const vol = new MemoryBackend({ name: 'vol', sizeBytes: SIZE_BYTES });
  const server = new NbdServer(new MemoryRegistry([vol], 'vol'), {
    tls: pskSettings('require'),
    handshakeTimeoutMs: 300,
  });
  const { port } = await server.listen('127.0.0.1', 0);
  const silent = await WireClient.connect(port);
  await greet(silent);
  assert.equal(await finalType(silent, P.Option.STARTTLS), P.OptionReply.ACK);
  await silent.expectClose(); // never started TLS: the handshake timeout ends it
  const stuck = await WireClient.connect(port);
  await greet(stuck);
  assert.equal(await finalType(stuck, P.Option.STARTTLS), P.OptionReply.ACK);
  await until('the handshake is under way', () => server.connectionCount() === 1);
  const closing = server.close();
  await stuck.expectClose();
  await closing;
  assert.equal(server.connectionCount(), 0);
});

test('a TLS ClientHello sent right behind STARTTLS (before its ACK is read) still works', async () => {
  await withServer({ tls: pskSettings('require') }, async ({ port }) => {
    const plain = net.connect(port, '127.0.0.1');
    await new Promise((resolve) => plain.once('connect', resolve));
    // The client side of TLS reads through a stream that first strips greeting and ACK.
    let skipBytes = 18 + 20;
    const inbound = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        plain.write(chunk, callback);
      },
    });
    plain.on('data', (chunk: Buffer) => {
      const skipped = Math.min(skipBytes, chunk.length);
      skipBytes -= skipped;
      if (chunk.length > skipped) inbound.push(chunk.subarray(skipped));
    });
    plain.cork();
    plain.write(Buffer.concat([u32(3), optionBytes(P.Option.STARTTLS)]));
    const secure = tls.connect({ ...pskClient('alice', ALICE_KEY), socket: inbound });
    setImmediate(() => plain.uncork()); // STARTTLS and the ClientHello leave in one segment
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', () => resolve());
      secure.once('error', reject);
    });
    secure.destroy();
    plain.destroy();
  });
});

// ---- X.509 --------------------------------------------------------------------------------------

const noOpenssl = haveTool('openssl') ? false : 'openssl is not installed';
let pkiCache: Pki | undefined;
function pki(): Pki {
  pkiCache ??= makePki(fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-nbd-pki-')));
  return pkiCache;
}

function x509Settings(mode: TlsSettings['mode'], verifyClients: boolean): TlsSettings {
  const p = pki();
  return {
    mode,
    credentials: {
      kind: 'x509',
      certificate: fs.readFileSync(p.serverCert),
      privateKey: fs.readFileSync(p.serverKey),
      ...(verifyClients ? { clientCa: fs.readFileSync(p.caCert) } : {}),
    },
  };
}

function x509Client(dir: string): tls.ConnectionOptions {
  const file = (name: string): Buffer | undefined =>
    fs.existsSync(path.join(dir, name)) ? fs.readFileSync(path.join(dir, name)) : undefined;
  const cert = file('client-cert.pem');
  const key = file('client-key.pem');
  return {
    ca: file('ca-cert.pem'),
    servername: 'localhost',
    ...(cert && key ? { cert, key } : {}),
  };
}

/** TLS 1.3 checks the client certificate after the client's Finished: probe with an option. */
async function certificateAccepted(port: number, dir: string): Promise<boolean> {
  let client: WireClient;
  try {
    client = await tlsSession(port, x509Client(dir));
  } catch {
    return false;
  }
  try {
    return (await finalType(client, P.Option.LIST)) === P.OptionReply.ACK;
  } catch {
    return false;
  } finally {
    client.destroy();
  }
}

test(
  'X.509 with a client CA: a signed certificate is accepted; a rogue one and none are refused',
  { skip: noOpenssl },
  async () => {
    await withServer({ tls: x509Settings('require', true) }, async ({ server, port, logs }) => {
      assert.equal(await certificateAccepted(port, pki().clientDir), true, 'signed by the CA');
      assert.equal(await certificateAccepted(port, pki().rogueDir), false, 'self-signed, same CN');
      assert.equal(await certificateAccepted(port, pki().anonymousDir), false, 'no certificate');
      await until('refused connections closed', () => server.connectionCount() === 0);
      assert.ok(
        logs.some((line) => /client certificate refused/.test(line)),
        logs.join('\n'),
      );
      assert.ok(
        logs.some((line) => /presented no certificate/.test(line)),
        logs.join('\n'),
      );
    });
  },
);

test(
  'X.509 without a client CA: any client that trusts the server gets in',
  { skip: noOpenssl },
  async () => {
    await withServer({ tls: x509Settings('require', false) }, async ({ port }) => {
      const client = await tlsSession(port, x509Client(pki().anonymousDir));
      await go(client, 'vol@snap');
      client.destroy();
    });
  },
);

test('a certificate whose key does not match is refused at start', { skip: noOpenssl }, () => {
  const p = pki();
  const registry = new MemoryRegistry([], undefined);
  assert.throws(
    () =>
      new NbdServer(registry, {
        tls: {
          mode: 'on',
          credentials: {
            kind: 'x509',
            certificate: fs.readFileSync(p.serverCert),
            privateKey: fs.readFileSync(path.join(p.dir, 'rogue-key.pem')),
          },
        },
      }),
    (error: unknown) => error instanceof RewindError && error.code === 'REWIND_CONFIG',
  );
});

// ---- access rules -------------------------------------------------------------------------------

test('access rules: a TLS-only view is hidden from LIST, ERR_TLS_REQD for plain GO, ERR_POLICY for the wrong identity', async () => {
  const options: NbdServerOptions = {
    tls: pskSettings('on'),
    access: [parseAccessRule('*@*=psk:alice')],
  };
  await withServer(options, async ({ port }) => {
    const plain = await WireClient.connect(port);
    await greet(plain);
    const listed = await ask(plain, P.Option.LIST);
    const names = listed
      .filter((reply) => reply.type === P.OptionReply.SERVER)
      .map((reply) => reply.data.subarray(4, 4 + reply.data.readUInt32BE(0)).toString());
    assert.deepEqual(names, ['vol'], 'the view is not listed to a plain client');
    const refused = await ask(plain, P.Option.GO, infoData('vol@snap'));
    assert.equal(refused.at(-1)?.type, P.OptionReply.ERR_TLS_REQD);
    assert.equal(
      await finalType(plain, P.Option.STRUCTURED_REPLY),
      P.OptionReply.ACK,
      'still negotiating',
    );
    const meta = await ask(
      plain,
      P.Option.SET_META_CONTEXT,
      metaData('vol@snap', ['base:allocation']),
    );
    assert.equal(meta.at(-1)?.type, P.OptionReply.ERR_POLICY, 'TLS_REQD is only for INFO/GO');
    plain.write(optionBytes(P.Option.EXPORT_NAME, Buffer.from('vol@snap')));
    assert.equal((await plain.expectClose()).length, 0);

    const bob = await tlsSession(port, pskClient('bob', BOB_KEY));
    const bobGo = await ask(bob, P.Option.GO, infoData('vol@snap'));
    assert.equal(bobGo.at(-1)?.type, P.OptionReply.ERR_POLICY);
    assert.match(bobGo.at(-1)?.data.toString() ?? '', /PSK identity "bob".*psk:alice/);
    await go(bob, 'vol'); // no rule for production: any client
    bob.destroy();

    const alice = await tlsSession(port, pskClient('alice', ALICE_KEY));
    await go(alice, 'vol@snap');
    alice.destroy();
  });
});

test('access rules by certificate common name', { skip: noOpenssl }, async () => {
  const options: NbdServerOptions = {
    tls: x509Settings('on', true),
    access: [parseAccessRule('vol@*=cert:bob'), parseAccessRule('vol=cert:alice')],
  };
  await withServer(options, async ({ port }) => {
    const alice = await tlsSession(port, x509Client(pki().clientDir));
    await go(alice, 'vol');
    alice.destroy();
    const again = await tlsSession(port, x509Client(pki().clientDir));
    assert.equal(
      (await ask(again, P.Option.INFO, infoData('vol@snap'))).at(-1)?.type,
      P.OptionReply.ERR_POLICY,
    );
    again.destroy();
  });
});

test('access rule parsing, decisions, and configurations that cannot work', () => {
  const rule = parseAccessRule(' *@* = psk:alice, cert:ops.example.com ,tls ');
  assert.equal(rule.pattern, '*@*');
  assert.deepEqual(rule.credentials, [
    { kind: 'psk', identity: 'alice' },
    { kind: 'certificate', commonName: 'ops.example.com' },
    { kind: 'tls' },
  ]);
  for (const bad of ['*@*', '=psk:a', '*@*=', '*@*=psk:', '*@*=user:x', '*@*=psk:a,,tls'])
    assert.throws(() => parseAccessRule(bad), RewindError, bad);
  const policy = new AccessPolicy([parseAccessRule('db@*=psk:dba'), parseAccessRule('*@*=tls')]);
  assert.deepEqual(policy.decide('db', { kind: 'plain' }), { kind: 'allowed' });
  assert.equal(policy.decide('db@x', { kind: 'plain' }).kind, 'tls-required');
  assert.equal(policy.decide('db@x', { kind: 'psk', identity: 'web' }).kind, 'refused');
  assert.equal(policy.decide('db@x', { kind: 'psk', identity: 'dba' }).kind, 'allowed');
  assert.equal(policy.decide('web@x', { kind: 'psk', identity: 'web' }).kind, 'allowed');
  assert.equal(policy.decide('dbx@x', { kind: 'tls' }).kind, 'allowed', 'db@* is not dbx@*');
  assert.throws(() => checkSecurity(undefined, policy), /need TLS/);
  assert.throws(
    () =>
      checkSecurity(
        {
          mode: 'on',
          credentials: { kind: 'x509', certificate: Buffer.alloc(0), privateKey: Buffer.alloc(0) },
        },
        policy,
      ),
    /no PSK file/,
  );
  const byCert = new AccessPolicy([parseAccessRule('*=cert:a')]);
  assert.throws(() => checkSecurity(pskSettings('on'), byCert), /verifies none/);
});

test('PSK files: psktool lines parse; malformed ones are refused with the line', () => {
  const keys = parsePskFile('alice:00ff10\r\n\nbob:0a:0b:AABB\n', 'keys.psk');
  assert.deepEqual(keys.get('alice'), Buffer.from([0, 0xff, 0x10]));
  assert.deepEqual(
    keys.get('bob:0a:0b'),
    Buffer.from([0xaa, 0xbb]),
    'the key follows the last colon',
  );
  for (const [text, pattern] of [
    ['alice', /line 1 is not IDENTITY:HEXKEY/],
    ['alice:abc', /line 1 .*even number of hex digits/],
    ['alice:zz', /line 1 .*hex/],
    ['a:00\na:11', /line 2 repeats identity "a"/],
    ['\n\n', /holds no identity/],
    [`a:${'00'.repeat(300)}`, /longer than 256 bytes/],
  ] as const)
    assert.throws(() => parsePskFile(text, 'keys.psk'), pattern);
});

// ---- Unix sockets -------------------------------------------------------------------------------

test('Unix socket: its mode and group are set, a stale socket is replaced, a live one and a file are not', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-nbd-unix-'));
  const socketPath = path.join(dir, 'nbd.sock');
  const vol = new MemoryBackend({ name: 'vol', sizeBytes: SIZE_BYTES });
  const asRoot = process.getuid?.() === 0;
  const gid = asRoot ? 65534 : undefined; // nogroup
  try {
    // A stale socket file, as a server killed with SIGKILL leaves it.
    spawnSync(
      process.execPath,
      [
        '-e',
        `require('net').createServer().listen(process.argv[1], () => process.kill(process.pid, 'SIGKILL'))`,
        socketPath,
      ],
      { timeout: TIMEOUT_MS },
    );
    assert.ok(fs.statSync(socketPath).isSocket(), 'stale socket file present');
    const server = new NbdServer(new MemoryRegistry([vol], 'vol'));
    await server.listenUnix(socketPath, { mode: 0o660, ...(gid === undefined ? {} : { gid }) });
    const stat = fs.statSync(socketPath);
    assert.ok(stat.isSocket());
    assert.equal(stat.mode & 0o777, 0o660);
    if (gid !== undefined) assert.equal(stat.gid, gid);
    const client = await WireClient.connect(socketPath);
    await greet(client);
    await go(client, 'vol');
    client.destroy();
    const second = new NbdServer(new MemoryRegistry([vol], 'vol'));
    await assert.rejects(
      second.listenUnix(socketPath, { mode: 0o600 }),
      /another server is listening/,
    );
    await second.close();
    await server.close();
    assert.equal(fs.existsSync(socketPath), false, 'the socket file is removed on close');
    const file = path.join(dir, 'not-a-socket');
    fs.writeFileSync(file, 'keep me');
    const third = new NbdServer(new MemoryRegistry([vol], 'vol'));
    await assert.rejects(third.listenUnix(file, { mode: 0o600 }), /is not a socket/);
    await third.close();
    assert.equal(fs.readFileSync(file, 'utf8'), 'keep me');
    const fourth = new NbdServer(new MemoryRegistry([vol], 'vol'));
    await assert.rejects(
      fourth.listenUnix(path.join(dir, 'missing', 'nbd.sock'), { mode: 0o600 }),
      /cannot listen on NBD socket .*missing/,
    );
    await fourth.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
