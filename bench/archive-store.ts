// Benchmark of the archive's storage layer: codec throughput (zstd levels 1 and 3, AES-256-GCM,
// decode) in one thread, and PUT/GET MiB/s of 4 MiB objects against Swift's s3api on loopback.
// Run: node dist/bench/archive-store.js [--no-s3]   (about 20 s; prints one table)
import crypto from 'node:crypto';
import fs from 'node:fs';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { decodeObject, decodeHeader, encodeObject, openStore } from '../src/archive/index.js';
import { SwiftS3, swiftS3Missing } from '../test/support/swift-s3.js';

const MIB = 1024 * 1024;
const SAMPLE_BYTES = 32 * MIB;
/** Each codec figure repeats until this much time has passed (at least once). */
const CODEC_MS_MIN = 1500;
const OBJECT_BYTES = 4 * MIB;
const OBJECTS = 48;
const PARALLEL = 4;

interface Row {
  what: string;
  mibPerS: number;
  note: string;
}

/** Bytes that compress like programs do: the node binary itself. */
function binarySample(): Buffer {
  const data = fs.readFileSync(process.execPath);
  return data.subarray(0, Math.min(SAMPLE_BYTES, data.length));
}

function rate(bytes: number, run: () => void): number {
  const started = process.hrtime.bigint();
  let done = 0;
  for (let rounds = 0; rounds < 1000; rounds++) {
    run();
    done += bytes;
    if (Number(process.hrtime.bigint() - started) / 1e6 >= CODEC_MS_MIN) break;
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return done / MIB / seconds;
}

function codecRows(): Row[] {
  const binary = binarySample();
  const random = crypto.randomBytes(SAMPLE_BYTES);
  const key = crypto.randomBytes(32);
  const rows: Row[] = [];
  for (const level of [1, 3]) {
    const stored = encodeObject(binary, { level });
    const ratio = binary.length / decodeHeader(stored, 'bench').payloadBytes;
    rows.push({
      what: `encode zstd ${level}, node binary`,
      mibPerS: rate(binary.length, () => encodeObject(binary, { level })),
      note: `ratio ${ratio.toFixed(2)}`,
    });
    rows.push({
      what: `decode zstd ${level}, node binary`,
      mibPerS: rate(binary.length, () => decodeObject(stored, { name: 'bench' })),
      note: 'CRC, zstd, SHA-256',
    });
  }
  rows.push({
    what: 'encode, random (stored plain)',
    mibPerS: rate(random.length, () => encodeObject(random)),
    note: 'zstd tried, SHA-256, CRC',
  });
  const sealed = encodeObject(random, { key });
  rows.push({
    what: 'encode, random, AES-256-GCM',
    mibPerS: rate(random.length, () => encodeObject(random, { key })),
    note: 'zstd tried, HMAC, GCM, CRC',
  });
  rows.push({
    what: 'decode, random, AES-256-GCM',
    mibPerS: rate(random.length, () => decodeObject(sealed, { name: 'bench', key })),
    note: 'CRC, GCM, HMAC',
  });
  const binarySealed = encodeObject(binary, { key, level: 3 });
  rows.push({
    what: 'encode zstd 3 + AES-256-GCM, binary',
    mibPerS: rate(binary.length, () => encodeObject(binary, { key, level: 3 })),
    note: 'what archiving a segment costs',
  });
  rows.push({
    what: 'decode zstd 3 + AES-256-GCM, binary',
    mibPerS: rate(binary.length, () => decodeObject(binarySealed, { name: 'bench', key })),
    note: '',
  });
  return rows;
}

async function s3Rows(): Promise<Row[]> {
  const swift = await SwiftS3.start();
  try {
    Object.assign(process.env, swift.env());
    const client = new S3Client({ endpoint: swift.endpoint, forcePathStyle: true });
    await client.send(new CreateBucketCommand({ Bucket: 'bench' }));
    client.destroy();
    const store = await openStore('s3://bench/objects', {
      s3Endpoint: swift.endpoint,
      s3PathStyle: true,
    });
    const bodies = Array.from({ length: OBJECTS }, () => crypto.randomBytes(OBJECT_BYTES));
    await store.probe();
    const rows: Row[] = [];
    const timed = async (what: string, run: () => Promise<void>): Promise<void> => {
      const started = process.hrtime.bigint();
      await run();
      const seconds = Number(process.hrtime.bigint() - started) / 1e9;
      const mib = (OBJECTS * OBJECT_BYTES) / MIB;
      rows.push({
        what,
        mibPerS: mib / seconds,
        note: `${OBJECTS} x 4 MiB, ${((seconds * 1000) / OBJECTS).toFixed(1)} ms each`,
      });
    };
    await timed('S3 PUT, one at a time', async () => {
      for (const [i, body] of bodies.entries()) await store.put(`a/${i}`, body);
    });
    await timed('S3 GET, one at a time', async () => {
      for (let i = 0; i < OBJECTS; i++) await store.get(`a/${i}`);
    });
    await timed(`S3 PUT, ${PARALLEL} at once`, async () => {
      for (let first = 0; first < OBJECTS; first += PARALLEL) {
        await Promise.all(
          bodies
            .slice(first, first + PARALLEL)
            .map(async (body, j) => store.put(`b/${first + j}`, body)),
        );
      }
    });
    await timed(`S3 GET, ${PARALLEL} at once`, async () => {
      for (let first = 0; first < OBJECTS; first += PARALLEL) {
        await Promise.all(
          Array.from({ length: PARALLEL }, async (_, j) => store.get(`b/${first + j}`)),
        );
      }
    });
    await store.close();
    return rows;
  } finally {
    await swift.stop();
  }
}

async function main(): Promise<void> {
  const rows = codecRows();
  const skip = process.argv.includes('--no-s3') ? '--no-s3' : swiftS3Missing();
  if (skip === undefined) rows.push(...(await s3Rows()));
  else console.error(`S3 figures skipped: ${skip}`);
  const width = Math.max(...rows.map((r) => r.what.length));
  console.log(`${'measure'.padEnd(width)}  MiB/s  note`);
  for (const row of rows) {
    console.log(`${row.what.padEnd(width)}  ${row.mibPerS.toFixed(0).padStart(5)}  ${row.note}`);
  }
}

await main();
