// Thinning's one piece of file work: the undo of a run of consecutive transactions merged into
// one, keeping for every byte the earliest before-image (the first undo in the run that holds
// it). Its bytes are the state at the start of the run, so a view at any point outside the run
// reads the same bytes from it as from the undos it replaces. Runs where the undo work runs (the
// retention worker thread, or in-thread in the simulation); writes one new file, reads the rest.
import fs from 'node:fs';
import { assert } from '../core/index.js';
import { parseUndo, type UndoExtent, type UndoHeader } from '../log/index.js';
import { mapFile } from '../platform/index.js';
import { IntervalMap } from '../views/index.js';
import { UNDO_FLUSH_BYTES, writeUndoFile, type UndoResult } from './apply.js';

/** Where a merged byte range's before-image is: undo number `input` of the run, or zeroes. */
const ZERO_SOURCE = -1;

/**
 * Merges the undo files `inputs` (oldest first) into `file`. Every input is verified as it is
 * read; the output is verified after it is written (writeUndoFile).
 */
export async function mergeUndos(
  inputs: readonly string[],
  file: string,
  header: UndoHeader,
  volumeCount: number,
): Promise<UndoResult> {
  assert(inputs.length > 0, 'a merge has at least one undo');
  const buffers = inputs.map((input) => mapFile(input) ?? fs.readFileSync(input));
  const maps = Array.from({ length: volumeCount }, () => new IntervalMap<number>());
  const ends = new Array<number>(volumeCount).fill(0);
  buffers.forEach((buf, i) => {
    for (const extent of parseUndo(buf, inputs[i] as string, volumeCount).extents) {
      earliestFirst(maps, extent, i);
      ends[extent.volume] = Math.max(
        ends[extent.volume] as number,
        extent.offsetBytes + extent.lengthBytes,
      );
    }
  });
  return writeUndoFile(file, header, volumeCount, async (builder, flush) => {
    for (const [volume, map] of maps.entries()) {
      const end = ends[volume] as number;
      const pieces = end === 0 ? [] : map.query(0, end);
      for (const piece of pieces) {
        if (piece.value === undefined) continue;
        const lengthBytes = piece.end - piece.start;
        if (piece.value === ZERO_SOURCE) {
          builder.add({ kind: 'zero', volume, offsetBytes: piece.start, lengthBytes });
        } else {
          const bytes = (buffers[piece.value] as Buffer).subarray(
            piece.valueOffset,
            piece.valueOffset + lengthBytes,
          );
          builder.add({ kind: 'data', volume, offsetBytes: piece.start, lengthBytes }, bytes);
        }
        if (builder.pendingBytes >= UNDO_FLUSH_BYTES) await flush();
      }
    }
  });
}

/** Maps an extent of undo `input` where no earlier undo of the run did. */
function earliestFirst(maps: IntervalMap<number>[], extent: UndoExtent, input: number): void {
  const map = maps[extent.volume] as IntervalMap<number>;
  const end = extent.offsetBytes + extent.lengthBytes;
  if (extent.kind === 'data')
    map.fillGaps(extent.offsetBytes, end, input, extent.payloadOffsetBytes);
  else map.fillGaps(extent.offsetBytes, end, ZERO_SOURCE, extent.offsetBytes);
}
