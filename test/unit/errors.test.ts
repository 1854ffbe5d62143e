// Error rules: worker errors keep their class, code, hint and cause; the errno classifier;
// rethrowIfBug lets operating errors through and rethrows programmer errors.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  AssertionError,
  errorCode,
  isDiskError,
  isDiskFull,
  rethrowIfBug,
  reviveError,
  RewindError,
  SegmentError,
  serializeError,
} from '../../src/core/index.js';

/** Through structured clone, as postMessage does. */
function roundTrip(error: unknown): Error {
  return reviveError(structuredClone(serializeError(error)), 'a test worker');
}

describe('errors across a worker boundary', () => {
  it('a RewindError keeps its class, code, hint and cause chain', () => {
    const system = Object.assign(new Error('no space left on device'), {
      code: 'ENOSPC',
      errno: -28,
      syscall: 'write',
    });
    const original = new RewindError('REWIND_BUSY', 'cannot store segment 7', {
      hint: 'free some space',
      cause: system,
    });
    const revived = roundTrip(original);
    assert.ok(revived instanceof RewindError);
    assert.equal(revived.code, 'REWIND_BUSY');
    assert.equal(revived.hint, 'free some space');
    assert.equal(revived.message, 'cannot store segment 7');
    assert.match(revived.stack ?? '', /in a test worker/);
    const cause = revived.cause as NodeJS.ErrnoException;
    assert.equal(cause.code, 'ENOSPC');
    assert.equal(cause.errno, -28);
    assert.equal(cause.syscall, 'write');
    assert.ok(isDiskFull(cause));
  });

  it('a SegmentError keeps the file and offset it names', () => {
    const revived = roundTrip(new SegmentError('REWIND_SEQ_GAP', '/x/7.redo', 40, 'expected 9'));
    assert.ok(revived instanceof SegmentError);
    assert.ok(revived instanceof RewindError);
    assert.equal(revived.code, 'REWIND_SEQ_GAP');
    assert.equal(revived.file, '/x/7.redo');
    assert.equal(revived.offsetBytes, 40);
    assert.equal(revived.message, '/x/7.redo at byte 40: expected 9');
  });

  it('programmer errors stay programmer errors, so they still crash', () => {
    for (const error of [new AssertionError('bad'), new TypeError('t'), new RangeError('r')]) {
      const revived = roundTrip(error);
      assert.equal(revived.constructor, error.constructor);
      assert.throws(() => rethrowIfBug(revived));
    }
  });

  it('an unknown code is not made into a RewindError', () => {
    const revived = roundTrip(Object.assign(new Error('odd'), { code: 'REWIND_NOT_A_CODE' }));
    assert.ok(!(revived instanceof RewindError));
    assert.equal(errorCode(revived), 'REWIND_NOT_A_CODE');
  });

  it('a RewindError made by another copy of the module is still one (brand)', () => {
    const foreign = Object.assign(new Error('x'), {
      code: 'REWIND_IO',
      [Symbol.for('rewind.error')]: true,
    });
    assert.ok(foreign instanceof RewindError);
    assert.ok(!(new Error('plain') instanceof RewindError));
    assert.ok(!(new RewindError('REWIND_IO', 'x') instanceof SegmentError));
  });
});

describe('the errno classifier and rethrowIfBug', () => {
  it('classifies full and failing disks, of files and of SQLite', () => {
    const coded = (code: string): Error => Object.assign(new Error(code), { code });
    for (const code of ['ENOSPC', 'EDQUOT', 'SQLITE_FULL']) assert.ok(isDiskFull(coded(code)));
    for (const code of ['EIO', 'SQLITE_IOERR_WRITE']) {
      assert.ok(!isDiskFull(coded(code)));
      assert.ok(isDiskError(coded(code)));
    }
    for (const value of [coded('ENOENT'), new Error('x'), 'ENOSPC', undefined, null, 28]) {
      assert.ok(!isDiskError(value));
    }
  });

  it('lets operating errors through', () => {
    rethrowIfBug(new RewindError('REWIND_IO', 'x'));
    rethrowIfBug(Object.assign(new Error('x'), { code: 'EIO' }));
    rethrowIfBug('a string');
  });
});
