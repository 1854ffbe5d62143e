// The archive object codec and key file: round trips with and without compression and key, every
// single-byte corruption and every truncation refused, a wrong or missing key named, no plaintext.
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import fc from 'fast-check';
import {
  decodeHeader,
  decodeObject,
  encodeObject,
  loadArchiveKey,
  OBJECT_HEADER_BYTES,
  OBJECT_TAG_BYTES,
} from '../../src/archive/index.js';
import { crc32c, RewindError } from '../../src/core/index.js';

const KEY = crypto.randomBytes(32);
const OTHER_KEY = crypto.randomBytes(32);
const MARKER = Buffer.from('REWIND-PLAINTEXT-MARKER-7f3a');

function compressible(bytes: number): Buffer {
  const text = 'the quick brown fox jumps over the lazy dog; '.repeat(Math.ceil(bytes / 45));
  return Buffer.from(text.slice(0, bytes));
}

function code(run: () => unknown): string {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof RewindError, `a RewindError, not ${String(error)}`);
    return error.code;
  }
  return 'no error';
}

function errorOf(run: () => unknown): RewindError {
  try {
    run();
  } catch (error) {
    assert.ok(error instanceof RewindError, `a RewindError, not ${String(error)}`);
    return error;
  }
  assert.fail('expected an error');
}

describe('archive codec: round trips', () => {
  const cases: [string, Buffer][] = [
    ['empty', Buffer.alloc(0)],
    ['one byte', Buffer.from([7])],
    ['compressible 1 MiB', compressible(1024 * 1024)],
    ['random 256 KiB', crypto.randomBytes(256 * 1024)],
    ['zeroes 4 MiB', Buffer.alloc(4 * 1024 * 1024)],
  ];
  for (const [what, plain] of cases) {
    for (const key of [undefined, KEY]) {
      it(`${what}, ${key ? 'encrypted' : 'plain'}`, () => {
        const stored = encodeObject(plain, key ? { key } : {});
        const header = decodeHeader(stored, 'x');
        assert.equal(header.encrypted, key !== undefined);
        assert.equal(header.plainBytes, plain.length);
        const back = decodeObject(stored, { name: 'x', ...(key ? { key } : {}) });
        assert.ok(back.equals(plain));
      });
    }
  }

  it('compresses what shrinks and stores the rest as it is', () => {
    const text = compressible(1024 * 1024);
    const packed = decodeHeader(encodeObject(text), 'text');
    assert.equal(packed.compressed, true);
    assert.ok(packed.payloadBytes < text.length / 10, `${packed.payloadBytes} bytes`);
    const random = crypto.randomBytes(64 * 1024);
    const stored = encodeObject(random);
    const raw = decodeHeader(stored, 'random');
    assert.equal(raw.compressed, false);
    assert.equal(raw.payloadBytes, random.length);
    assert.equal(stored.length, OBJECT_HEADER_BYTES + random.length);
    const sealed = encodeObject(random, { key: KEY });
    assert.equal(sealed.length, OBJECT_HEADER_BYTES + random.length + OBJECT_TAG_BYTES);
  });

  it('levels 1 and 19 both read back; a level outside 1..19 is refused', () => {
    const text = compressible(200_000);
    for (const level of [1, 19]) {
      assert.ok(decodeObject(encodeObject(text, { level }), { name: 'x' }).equals(text));
    }
    for (const level of [0, 20, 2.5, -1]) {
      assert.equal(
        code(() => encodeObject(text, { level })),
        'REWIND_BAD_ARGUMENT',
      );
    }
  });

  it('the header is laid out as docs/FORMATS.md says', () => {
    const plain = compressible(10_000);
    const stored = encodeObject(plain, { key: KEY });
    assert.equal(stored.toString('latin1', 0, 4), 'RWAO');
    assert.equal(stored.readUInt16LE(4), 1);
    assert.equal(stored.readUInt16LE(6), 96);
    assert.equal(stored.readUInt32LE(8), 3);
    assert.equal(Number(stored.readBigUInt64LE(16)), plain.length);
    const payload = Number(stored.readBigUInt64LE(24));
    assert.equal(stored.length, 96 + payload + 16);
    // Encrypted: the digest is keyed, so it does not confirm a guess of the plain bytes.
    const sha = crypto.createHash('sha256').update(plain).digest();
    assert.ok(!stored.subarray(32, 64).equals(sha));
    assert.ok(encodeObject(plain).subarray(32, 64).equals(sha));
  });

  it('property: any bytes, any level, with or without key', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 4096 }),
        fc.integer({ min: 1, max: 19 }),
        fc.boolean(),
        fc.boolean(),
        (bytes, level, encrypted, repeat) => {
          const plain = repeat ? Buffer.concat([bytes, bytes, bytes]) : Buffer.from(bytes);
          const key = encrypted ? { key: KEY } : {};
          const back = decodeObject(encodeObject(plain, { level, ...key }), { name: 'p', ...key });
          assert.ok(back.equals(plain));
        },
      ),
      { numRuns: 200 },
    );
  });
});

describe('archive codec: damage is refused', () => {
  const plain = Buffer.concat([compressible(3000), crypto.randomBytes(300)]);
  for (const key of [undefined, KEY]) {
    const opts = { name: 'vol/redo/17', ...(key ? { key } : {}) };
    const stored = encodeObject(plain, key ? { key } : {});
    const label = key ? 'encrypted' : 'plain';

    it(`${label}: every single-byte change (header, payload, tag) is REWIND_ARCHIVE_CORRUPT`, () => {
      assert.ok(stored.length < 8192, 'a small object, so every byte is tried');
      const regions = new Map<string, number>();
      for (let i = 0; i < stored.length; i++) {
        for (const mask of [0x01, 0x80, 0xff]) {
          const damaged = Buffer.from(stored);
          damaged[i] = (damaged[i] as number) ^ mask;
          const error = errorOf(() => decodeObject(damaged, opts));
          assert.equal(error.code, 'REWIND_ARCHIVE_CORRUPT', `byte ${i}: ${error.message}`);
          assert.match(error.message, /vol\/redo\/17/);
        }
        const region =
          i < OBJECT_HEADER_BYTES
            ? 'header'
            : key && i >= stored.length - OBJECT_TAG_BYTES
              ? 'tag'
              : 'payload';
        regions.set(region, (regions.get(region) ?? 0) + 1);
      }
      assert.deepEqual(
        [...regions.keys()].sort(),
        key ? ['header', 'payload', 'tag'] : ['header', 'payload'],
      );
    });

    it(`${label}: every truncation and an appended byte are refused`, () => {
      for (let length = 0; length < stored.length; length++) {
        const error = errorOf(() => decodeObject(stored.subarray(0, length), opts));
        assert.equal(error.code, 'REWIND_ARCHIVE_CORRUPT', `length ${length}: ${error.message}`);
      }
      const longer = Buffer.concat([stored, Buffer.from([0])]);
      assert.equal(
        code(() => decodeObject(longer, opts)),
        'REWIND_ARCHIVE_CORRUPT',
      );
    });

    it(`${label}: a changed payload with both CRCs recomputed is still refused`, () => {
      const forged = Buffer.from(stored);
      const at = OBJECT_HEADER_BYTES + 10;
      forged[at] = (forged[at] as number) ^ 0x20;
      resealCrcs(forged);
      const error = errorOf(() => decodeObject(forged, opts));
      if (key) {
        assert.equal(error.code, 'REWIND_ARCHIVE_KEY');
        assert.match(error.message, /wrong key or corrupt object/);
      } else {
        assert.equal(error.code, 'REWIND_ARCHIVE_CORRUPT');
      }
    });
  }

  it('an unknown version, flag or reserved byte is refused even with a valid CRC', () => {
    const stored = encodeObject(compressible(1000));
    for (const [at, value] of [
      [4, 2],
      [8, 0x7],
      [84, 1],
    ] as const) {
      const forged = Buffer.from(stored);
      forged[at] = value;
      resealCrcs(forged);
      assert.equal(
        code(() => decodeObject(forged, { name: 'x' })),
        'REWIND_ARCHIVE_CORRUPT',
      );
    }
  });
});

/** Recomputes the payload CRC and the header CRC, as a forger would. */
function resealCrcs(stored: Buffer): void {
  stored.writeUInt32LE(crc32c(stored.subarray(OBJECT_HEADER_BYTES)), 12);
  stored.writeUInt32LE(crc32c(stored.subarray(0, 92)), 92);
}

describe('archive codec: keys', () => {
  const plain = Buffer.concat([crypto.randomBytes(20_000), MARKER, crypto.randomBytes(20_000)]);

  it('no plaintext in an encrypted object (the marker is found in a plain one)', () => {
    assert.ok(encodeObject(plain).includes(MARKER), 'the search finds the marker in plain form');
    const text = Buffer.concat([compressible(50_000), MARKER, compressible(50_000)]);
    for (const data of [plain, text]) {
      const stored = encodeObject(data, { key: KEY });
      assert.ok(!stored.includes(MARKER));
      assert.ok(!stored.includes(data.subarray(0, 16)));
    }
  });

  it('a wrong key is REWIND_ARCHIVE_KEY naming the key ids', () => {
    const stored = encodeObject(plain, { key: KEY });
    const error = errorOf(() => decodeObject(stored, { name: 'chunk/ab', key: OTHER_KEY }));
    assert.equal(error.code, 'REWIND_ARCHIVE_KEY');
    assert.match(error.message, /chunk\/ab.*wrong key/);
  });

  it('an encrypted object without a key, and a plain one with a key, are REWIND_ARCHIVE_KEY', () => {
    const sealed = encodeObject(plain, { key: KEY });
    assert.equal(
      code(() => decodeObject(sealed, { name: 'x' })),
      'REWIND_ARCHIVE_KEY',
    );
    const open = encodeObject(plain);
    assert.equal(
      code(() => decodeObject(open, { name: 'x', key: KEY })),
      'REWIND_ARCHIVE_KEY',
    );
    const allowed = decodeObject(open, { name: 'x', key: KEY, allowUnencrypted: true });
    assert.ok(allowed.equals(plain));
  });

  it('a key that is not 32 bytes is refused', () => {
    assert.equal(
      code(() => encodeObject(plain, { key: Buffer.alloc(16, 1) })),
      'REWIND_ARCHIVE_KEY',
    );
  });

  it('the same plain bytes encrypt differently each time (random nonce)', () => {
    const a = encodeObject(plain, { key: KEY });
    const b = encodeObject(plain, { key: KEY });
    assert.ok(!a.subarray(64, 76).equals(b.subarray(64, 76)));
    assert.ok(!a.equals(b));
  });
});

describe('archive key file', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-key-'));
  after(() => fs.rmSync(dir, { recursive: true, force: true }));
  const write = (name: string, data: Buffer | string, mode = 0o600): string => {
    const file = path.join(dir, name);
    fs.writeFileSync(file, data, { mode });
    fs.chmodSync(file, mode);
    return file;
  };
  const refused = async (file: string, pattern: RegExp): Promise<void> => {
    await assert.rejects(loadArchiveKey(file), (error: unknown) => {
      assert.ok(error instanceof RewindError);
      assert.equal(error.code, 'REWIND_ARCHIVE_KEY');
      assert.match(error.message, pattern);
      return true;
    });
  };

  it('reads 32 raw bytes and 64 hex digits', async () => {
    assert.ok((await loadArchiveKey(write('raw', KEY))).equals(KEY));
    assert.ok((await loadArchiveKey(write('hex', `${KEY.toString('hex')}\n`))).equals(KEY));
  });

  it('refuses a file open to group or others, naming the mode', async () => {
    await refused(write('open', KEY, 0o640), /mode 0640/);
    await refused(write('world', KEY, 0o604), /mode 0604/);
  });

  it('refuses a missing file, wrong lengths, bad hex and an all-zero key', async () => {
    await refused(path.join(dir, 'absent'), /does not exist/);
    await refused(write('short', Buffer.alloc(31, 1)), /31 bytes/);
    await refused(write('badhex', 'zz'.repeat(32)), /64 hex/);
    await refused(write('zero', Buffer.alloc(32)), /all zeroes/);
    await refused(dir, /not a regular file/);
  });
});
