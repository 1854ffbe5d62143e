// File names of segments, one scheme for the agent's spool and the manager's transaction files:
// the segment index in 16 decimal digits, then the kind (`0000000000000042.redo`).
import { assert } from '../core/index.js';

export type SegmentFileKind = 'redo' | 'redo.active' | 'undo' | 'idx';

const INDEX_DIGITS = 16;
const NAME = /^([0-9]{16})\.(redo|redo\.active|undo|idx)$/;

export function segmentFileName(index: number, kind: SegmentFileKind): string {
  assert(Number.isSafeInteger(index) && index >= 0, 'a segment index is a non-negative integer');
  return `${String(index).padStart(INDEX_DIGITS, '0')}.${kind}`;
}

/** The index and kind a segment file name stands for, or undefined for any other name. */
export function parseSegmentFileName(
  name: string,
): { index: number; kind: SegmentFileKind } | undefined {
  const match = NAME.exec(name);
  if (!match) return undefined;
  return { index: Number(match[1]), kind: match[2] as SegmentFileKind };
}
