// Bit sets kept in byte arrays, bit i in byte i >> 3 at position i & 7 (least significant first):
// the layout the dirty maps and the replicas' allocation bitmaps have on disk.

export function bitBytes(count: number): number {
  return Math.ceil(count / 8);
}

export function bitGet(bits: Uint8Array, index: number): boolean {
  return ((bits[index >> 3] ?? 0) & (1 << (index & 7))) !== 0;
}

export function bitSet(bits: Uint8Array, index: number): void {
  bits[index >> 3] = (bits[index >> 3] ?? 0) | (1 << (index & 7));
}

export function bitClear(bits: Uint8Array, index: number): void {
  bits[index >> 3] = (bits[index >> 3] ?? 0) & ~(1 << (index & 7));
}
