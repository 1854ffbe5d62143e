// File names of segments, one scheme for the agent's spool and the manager's transaction files: the
// segment index in 16 decimal digits, then the kind (`0000000000000042.redo`); an undo or index
// rewritten by retention carries its generation (`0000000000000042.g3.undo`).
import { assert } from '../core/index.js';

export type SegmentFileKind = 'redo' | 'redo.active' | 'undo' | 'idx';

const INDEX_DIGITS = 16;
const NAME = /^([0-9]{16})(?:\.g([1-9][0-9]{0,8}))?\.(redo|redo\.active|undo|idx)$/;

export function segmentFileName(index: number, kind: SegmentFileKind, generation = 0): string {
  assert(Number.isSafeInteger(index) && index >= 0, 'a segment index is a non-negative integer');
  assert(
    generation === 0 || kind === 'undo' || kind === 'idx',
    'only undo and index files have generations',
  );
  const gen = generation === 0 ? '' : `.g${generation}`;
  return `${String(index).padStart(INDEX_DIGITS, '0')}${gen}.${kind}`;
}

/** The index, kind and generation a segment file name stands for, or undefined for any other. */
export function parseSegmentFileName(
  name: string,
): { index: number; kind: SegmentFileKind; generation: number } | undefined {
  const match = NAME.exec(name);
  if (!match) return undefined;
  const kind = match[3] as SegmentFileKind;
  const generation = match[2] === undefined ? 0 : Number(match[2]);
  if (generation !== 0 && kind !== 'undo' && kind !== 'idx') return undefined;
  return { index: Number(match[1]), kind, generation };
}
