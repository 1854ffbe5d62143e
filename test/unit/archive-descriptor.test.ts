// The volume-set descriptor's plain payload and key: round trip, the same volume set always the
// same bytes, and every malformed field refused as REWIND_ARCHIVE_CORRUPT naming the object.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  decodeDescriptor,
  descriptorKey,
  encodeDescriptor,
  parseDescriptorKey,
} from '../../src/archive/index.js';
import { RewindError } from '../../src/core/index.js';

const ID = '0a0b0c0d-0e0f-4a1b-8c2d-3e4f5a6b7c8d';
const SET = {
  volumeSetId: ID,
  volumeSetName: 'prod',
  volumes: [
    { idx: 0, name: 'db', sizeBytes: 1 << 30 },
    { idx: 1, name: 'logs', sizeBytes: 4096 },
  ],
};

test('a descriptor round-trips, and the same volume set encodes to the same bytes', () => {
  const plain = encodeDescriptor(SET);
  assert.deepEqual(decodeDescriptor(plain, 'k'), SET);
  assert.ok(plain.equals(encodeDescriptor(structuredClone(SET))));
  assert.equal(descriptorKey(ID, 7), `${ID}/set/0000000000000007`);
  assert.deepEqual(parseDescriptorKey(descriptorKey(ID, 7)), { volumeSetId: ID, version: 7 });
  assert.equal(parseDescriptorKey(`${ID}/tx/0000000000000001-0000000000000002`), undefined);
  assert.equal(parseDescriptorKey(`${ID}/set/0000000000000000`), undefined);
  assert.throws(() => descriptorKey(ID, 0), /not 1 or more/);
});

test('a malformed descriptor is refused as corrupt, naming the object', () => {
  const json = JSON.parse(encodeDescriptor(SET).toString('utf8')) as Record<string, unknown>;
  const bad: [string, unknown][] = [
    ['not JSON', '{'],
    ['format', { ...json, format: 'other' }],
    ['version', { ...json, version: 2 }],
    ['volumeSetId', { ...json, volumeSetId: 'ABC' }],
    ['volumes', { ...json, volumes: 'x' }],
    ['has idx', { ...json, volumes: [{ idx: 1, name: 'db', sizeBytes: 1 }] }],
    ['valid name', { ...json, volumes: [{ idx: 0, name: '', sizeBytes: 1 }] }],
    ['sizeBytes', { ...json, volumes: [{ idx: 0, name: 'a', sizeBytes: -1 }] }],
    [
      'share a name',
      {
        ...json,
        volumes: [
          { idx: 0, name: 'a', sizeBytes: 1 },
          { idx: 1, name: 'a', sizeBytes: 1 },
        ],
      },
    ],
  ];
  for (const [what, value] of bad) {
    const plain = Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
    assert.throws(
      () => decodeDescriptor(plain, 'the-key'),
      (error) =>
        error instanceof RewindError &&
        error.code === 'REWIND_ARCHIVE_CORRUPT' &&
        error.message.includes('the-key') &&
        error.message.includes(what === 'not JSON' ? 'not JSON' : what),
      what,
    );
  }
});
