// CRC-32C (Castagnoli) for every record and segment, from @node-rs/crc32 (SIMD, incremental).
import { crc32c as nativeCrc32c } from '@node-rs/crc32';

/** CRC-32C of `data`, continuing from `previous` (0 to start). */
export function crc32c(data: Uint8Array, previous = 0): number {
  return nativeCrc32c(data, previous) >>> 0;
}
