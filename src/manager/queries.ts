// Read-only questions about the history of one volume, answered from the log (never by comparing
// images): which writes touched a byte range (the block map), and which ranges were written
// between two points.
import { mergeRanges, RewindError, type ByteRange } from '../core/index.js';
import type { LogEntry, LogFilter } from './stored-history.js';

/** What the history queries read: volumes, the log, and POINT resolution. */
export interface LogSource {
  volumeIndex(name: string): number;
  volumeSize(volume: number): number;
  log(filter: LogFilter): AsyncGenerator<LogEntry>;
  resolvePoint(text: string): number;
}

/** Checks that a byte range lies inside the volume. */
export function checkRange(source: LogSource, volume: string, range: ByteRange): void {
  const size = source.volumeSize(source.volumeIndex(volume));
  if (
    !Number.isSafeInteger(range.offset) ||
    !Number.isSafeInteger(range.length) ||
    range.offset < 0 ||
    range.length <= 0 ||
    range.offset + range.length > size
  ) {
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `range ${range.offset}:${range.length} is not inside volume ${volume} (${size} bytes)`,
      { hint: 'OFFSET:LENGTH with LENGTH > 0, both with optional K/M/G/T suffixes' },
    );
  }
}

/** Every committed write that touched [offset, offset + length) of `volume`, newest first. */
export async function blockHistory(
  source: LogSource,
  volume: string,
  range: ByteRange,
): Promise<LogEntry[]> {
  checkRange(source, volume, range);
  const out: LogEntry[] = [];
  for await (const entry of source.log({ volume })) {
    if (entry.offset < range.offset + range.length && range.offset < entry.offset + entry.length)
      out.push(entry);
  }
  return out.reverse();
}

/**
 * The byte ranges of `volume` written after seq `from` up to and including seq `to` (merged,
 * ascending): everything that can differ between the two points. A range rewritten with the
 * same bytes is listed too; the log cannot know better without reading data.
 */
export async function writtenRanges(
  source: LogSource,
  volume: string,
  from: number,
  to: number,
): Promise<ByteRange[]> {
  source.volumeIndex(volume);
  if (to <= from) return [];
  const ranges: ByteRange[] = [];
  for await (const entry of source.log({ volume, from: from + 1, to }))
    ranges.push({ offset: entry.offset, length: entry.length });
  return mergeRanges(ranges);
}

/** `writtenRanges` between two points given in either order, with totals. */
export async function diff(
  source: LogSource,
  volume: string,
  fromText: string,
  toText: string,
): Promise<{ volume: string; from: number; to: number; ranges: ByteRange[]; bytes: number }> {
  const a = source.resolvePoint(fromText);
  const b = source.resolvePoint(toText);
  const ranges = await writtenRanges(source, volume, Math.min(a, b), Math.max(a, b));
  return { volume, from: a, to: b, ranges, bytes: ranges.reduce((sum, r) => sum + r.length, 0) };
}
