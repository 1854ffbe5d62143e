// Device numbers: Linux's dev_t split into its major and minor numbers, as /proc/locks and
// /proc/self/mountinfo print them.

// The major number is bits 8-19 and 32-43 of a dev_t, the minor bits 0-7 and 20-31 (and 44-63).
// These are numbers past 2^32, so the arithmetic is done with BigInt.
export function deviceMajor(dev: number): number {
  const d = BigInt(dev);
  return Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn));
}

export function deviceMinor(dev: number): number {
  const d = BigInt(dev);
  return Number((d & 0xffn) | ((d >> 12n) & ~0xffn));
}
