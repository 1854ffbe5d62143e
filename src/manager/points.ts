// Parsing a POINT given by an operator: a seq ("1234"; "0" is the state before the first write),
// an ISO-8601 time, or a relative time ("5 minutes ago"). Resolution against history is the
// manager's job; this only says what was asked for.
import * as chrono from 'chrono-node';
import { RewindError } from '../core/index.js';

export type Point = { kind: 'seq'; seq: number } | { kind: 'time'; timeNs: bigint; text: string };

const ISO = /^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?(Z|[+-]\d{2}:?\d{2})?$/;

export function parsePoint(text: string, now = new Date()): Point {
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) {
    const seq = Number(trimmed);
    if (!Number.isSafeInteger(seq))
      throw new RewindError('REWIND_BAD_ARGUMENT', `point "${text}" is too large for a seq`);
    return { kind: 'seq', seq };
  }
  if (ISO.test(trimmed)) return { kind: 'time', timeNs: isoToNs(trimmed), text: trimmed };
  const parsed = chrono.parseDate(trimmed, now);
  if (!parsed || /^\s*$/.test(trimmed)) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `point "${text}" is not a seq, an ISO-8601 time or a relative time`,
      {
        hint: 'examples: 1234, 0, 2026-11-24T15:03:12Z, "5 minutes ago"',
      },
    );
  }
  return { kind: 'time', timeNs: BigInt(parsed.getTime()) * 1_000_000n, text: trimmed };
}

/** ISO-8601 to ns, keeping sub-millisecond digits that Date would drop. */
function isoToNs(text: string): bigint {
  const fraction = /\.(\d{1,9})/.exec(text);
  const withoutFraction = text.replace(/\.\d{1,9}/, '');
  const ms = Date.parse(
    withoutFraction.includes('T') || withoutFraction.includes(' ')
      ? withoutFraction
      : `${withoutFraction}T00:00:00Z`,
  );
  if (Number.isNaN(ms))
    throw new RewindError('REWIND_BAD_ARGUMENT', `time "${text}" is not a valid ISO-8601 time`);
  const fractionNs = fraction ? BigInt((fraction[1] ?? '').padEnd(9, '0')) : 0n;
  return BigInt(ms) * 1_000_000n + fractionNs;
}
