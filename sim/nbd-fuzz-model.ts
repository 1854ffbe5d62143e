// What the fuzzed export must contain. The export is laid out as two canary regions (a seeded pattern
// written before fuzzing and never a legal write target), one scratch slot per fuzzing worker (the
// only place writes may land), and untouched gaps that must stay zero. Each slot has a byte model
// (value + known mask) so reads are checked against what the server acknowledged.
import { Rng } from './nbd-fuzz-rng.js';

const MIB = 1024 * 1024;
export const EXPORT_BYTES = 64 * MIB;
const CANARY_BYTES = MIB;
const SLOT_BASE_BYTES = 4 * MIB;
const SLOT_BYTES = 2 * MIB;
/** Slots fit between the first canary's gap and the last canary. */
export const SLOTS_MAX = Math.floor(
  (EXPORT_BYTES - SLOT_BASE_BYTES - 2 * CANARY_BYTES) / SLOT_BYTES,
);

export interface Canary {
  offsetBytes: number;
  data: Buffer;
}

export interface Layout {
  sizeBytes: number;
  canaries: Canary[];
  slotBaseBytes: number;
  slotBytes: number;
  slotCount: number;
}

export function makeLayout(seed: number, slotCount: number): Layout {
  if (slotCount < 1 || slotCount > SLOTS_MAX) throw new Error(`between 1 and ${SLOTS_MAX} slots`);
  const rng = new Rng(seed, 0x7fffffff);
  return {
    sizeBytes: EXPORT_BYTES,
    canaries: [
      { offsetBytes: 0, data: rng.bytes(CANARY_BYTES) },
      { offsetBytes: EXPORT_BYTES - CANARY_BYTES, data: rng.bytes(CANARY_BYTES) },
    ],
    slotBaseBytes: SLOT_BASE_BYTES,
    slotBytes: SLOT_BYTES,
    slotCount,
  };
}

export function slotStart(layout: Layout, slot: number): number {
  return layout.slotBaseBytes + slot * layout.slotBytes;
}

/** Bytes of one slot as the fuzzer believes them to be; unknown bytes are not checked. */
export class SlotModel {
  readonly data: Buffer;
  private readonly known: Uint8Array;

  constructor(sizeBytes: number) {
    // A fresh export reads as zeroes everywhere.
    this.data = Buffer.alloc(sizeBytes);
    this.known = new Uint8Array(sizeBytes).fill(1);
  }

  write(offsetBytes: number, bytes: Buffer): void {
    bytes.copy(this.data, offsetBytes);
    this.known.fill(1, offsetBytes, offsetBytes + bytes.length);
  }

  zero(offsetBytes: number, lengthBytes: number): void {
    this.data.fill(0, offsetBytes, offsetBytes + lengthBytes);
    this.known.fill(1, offsetBytes, offsetBytes + lengthBytes);
  }

  forget(offsetBytes: number, lengthBytes: number): void {
    this.known.fill(0, offsetBytes, offsetBytes + lengthBytes);
  }

  /** Offset (relative to `offsetBytes`) of the first known byte that differs, or -1. */
  firstMismatch(offsetBytes: number, actual: Buffer): number {
    const expected = this.data.subarray(offsetBytes, offsetBytes + actual.length);
    if (expected.equals(actual)) return -1;
    for (let index = 0; index < actual.length; index += 1) {
      if (this.known[offsetBytes + index] === 1 && expected[index] !== actual[index]) return index;
    }
    return -1;
  }
}

/** How to judge content read from an export. */
export interface ContentView {
  /** The read-only export holds the canaries and zeroes only (it was frozen before fuzzing). */
  readOnly: boolean;
  /** Slots whose model may be checked now (a slot another worker is writing is unknown). */
  checkSlot: (slot: number) => boolean;
}

interface Piece {
  startBytes: number;
  endBytes: number;
  expect: { kind: 'canary'; canary: Canary } | { kind: 'zero' } | { kind: 'slot'; slot: number };
}

function pieces(layout: Layout, readOnly: boolean): Piece[] {
  const result: Piece[] = [];
  let cursor = 0;
  const regions: Piece[] = layout.canaries.map((canary) => ({
    startBytes: canary.offsetBytes,
    endBytes: canary.offsetBytes + canary.data.length,
    expect: { kind: 'canary', canary },
  }));
  if (!readOnly) {
    for (let slot = 0; slot < layout.slotCount; slot += 1) {
      const start = slotStart(layout, slot);
      regions.push({
        startBytes: start,
        endBytes: start + layout.slotBytes,
        expect: { kind: 'slot', slot },
      });
    }
  }
  regions.sort((a, b) => a.startBytes - b.startBytes);
  for (const region of regions) {
    if (region.startBytes > cursor)
      result.push({ startBytes: cursor, endBytes: region.startBytes, expect: { kind: 'zero' } });
    result.push(region);
    cursor = region.endBytes;
  }
  if (cursor < layout.sizeBytes)
    result.push({ startBytes: cursor, endBytes: layout.sizeBytes, expect: { kind: 'zero' } });
  return result;
}

const ZEROES = Buffer.alloc(1024 * 1024);

function firstNonZero(data: Buffer): number {
  for (let start = 0; start < data.length; start += ZEROES.length) {
    const part = data.subarray(start, start + ZEROES.length);
    if (!part.equals(ZEROES.subarray(0, part.length)))
      return start + part.findIndex((byte) => byte !== 0);
  }
  return -1;
}

export class ContentChecker {
  private readonly writablePieces: Piece[];
  private readonly readOnlyPieces: Piece[];

  constructor(
    readonly layout: Layout,
    readonly models: readonly SlotModel[],
  ) {
    this.writablePieces = pieces(layout, false);
    this.readOnlyPieces = pieces(layout, true);
  }

  /** Undefined when `data` read at `offsetBytes` is what the export must hold, else why not. */
  check(view: ContentView, offsetBytes: number, data: Buffer): string | undefined {
    const endBytes = offsetBytes + data.length;
    for (const piece of view.readOnly ? this.readOnlyPieces : this.writablePieces) {
      const start = Math.max(piece.startBytes, offsetBytes);
      const end = Math.min(piece.endBytes, endBytes);
      if (start >= end) continue;
      const actual = data.subarray(start - offsetBytes, end - offsetBytes);
      const mismatch = this.mismatch(view, piece, start, actual);
      if (mismatch >= 0)
        return `${piece.expect.kind} content differs at export offset ${start + mismatch}`;
    }
    return undefined;
  }

  private mismatch(view: ContentView, piece: Piece, start: number, actual: Buffer): number {
    const expect = piece.expect;
    switch (expect.kind) {
      case 'zero':
        return firstNonZero(actual);
      case 'canary': {
        const from = start - expect.canary.offsetBytes;
        const expected = expect.canary.data.subarray(from, from + actual.length);
        return expected.equals(actual)
          ? -1
          : actual.findIndex((byte, index) => byte !== expected[index]);
      }
      case 'slot': {
        const model = this.models[expect.slot];
        if (!model || !view.checkSlot(expect.slot)) return -1;
        return model.firstMismatch(start - piece.startBytes, actual);
      }
    }
  }
}
