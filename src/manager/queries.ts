// Read-only questions about the history of one volume, answered from the log (never by comparing
// images): which writes touched a byte range (the block map), and which ranges were written
// between two points.
import { mergeRanges, RewindError, type ByteRange } from '../core/index.js';
import type { LogEntry, Manager } from './manager.js';

function volumeIndex(manager: Manager, volume: string): number {
  const index = manager.replicas.findIndex((r) => r.name === volume);
  if (index === -1)
    throw new RewindError('REWIND_NOT_FOUND', `no volume named "${volume}"`, {
      hint: `volumes: ${manager.replicas.map((r) => r.name).join(', ') || 'none yet'}`,
    });
  return index;
}

/** Checks that a byte range lies inside the volume. */
export function checkRange(manager: Manager, volume: string, range: ByteRange): void {
  const size = manager.volumeSize(volumeIndex(manager, volume));
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
  manager: Manager,
  volume: string,
  range: ByteRange,
): Promise<LogEntry[]> {
  checkRange(manager, volume, range);
  const out: LogEntry[] = [];
  for await (const entry of manager.log({ volume })) {
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
  manager: Manager,
  volume: string,
  from: number,
  to: number,
): Promise<ByteRange[]> {
  volumeIndex(manager, volume);
  if (to <= from) return [];
  const ranges: ByteRange[] = [];
  for await (const entry of manager.log({ volume, from: from + 1, to }))
    ranges.push({ offset: entry.offset, length: entry.length });
  return mergeRanges(ranges);
}

/** `writtenRanges` between two points given in either order, with totals. */
export async function diff(
  manager: Manager,
  volume: string,
  fromText: string,
  toText: string,
): Promise<{ volume: string; from: number; to: number; ranges: ByteRange[]; bytes: number }> {
  const a = manager.resolvePoint(fromText);
  const b = manager.resolvePoint(toText);
  const ranges = await writtenRanges(manager, volume, Math.min(a, b), Math.max(a, b));
  return { volume, from: a, to: b, ranges, bytes: ranges.reduce((sum, r) => sum + r.length, 0) };
}
