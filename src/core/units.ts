// Byte sizes and ranges: parsing operator input with binary suffixes, and range arithmetic.
import { RewindError } from './errors.js';

const SUFFIX_SHIFT: Record<string, number> = { '': 0, K: 10, M: 20, G: 30, T: 40, P: 50 };

/**
 * Parses "4096", "64K", "2G", "1T" (binary: K = KiB). Refuses anything else with a clear message.
 */
export function parseSize(text: string, what = 'size'): number {
  const match = /^\s*(\d+)\s*([KMGTP]?)(i?B)?\s*$/i.exec(text);
  if (!match) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not a size`, {
      hint: 'use a number of bytes with an optional binary suffix K, M, G or T (e.g. 64M, 2G)',
    });
  }
  const digits = match[1] ?? '';
  const suffix = (match[2] ?? '').toUpperCase();
  const shift = SUFFIX_SHIFT[suffix] ?? 0;
  const value = BigInt(digits) << BigInt(shift);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is too large`);
  }
  return Number(value);
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return unit === 0
    ? `${bytes} B`
    : `${value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${units[unit]}`;
}

/** A half-open byte range [offset, offset + length). */
export interface ByteRange {
  offset: number;
  length: number;
}

/** Sorts and merges overlapping or touching ranges. */
export function mergeRanges(ranges: readonly ByteRange[]): ByteRange[] {
  const sorted = ranges.filter((r) => r.length > 0).sort((a, b) => a.offset - b.offset);
  const merged: ByteRange[] = [];
  for (const range of sorted) {
    const last = merged[merged.length - 1];
    if (last && range.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, range.offset + range.length - last.offset);
    } else {
      merged.push({ offset: range.offset, length: range.length });
    }
  }
  return merged;
}
