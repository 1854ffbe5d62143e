// Capture times: nanoseconds since the Unix epoch as bigint, formatted as ISO-8601 with
// microseconds.

const originNs = BigInt(Date.now()) * 1_000_000n - process.hrtime.bigint();

/** Wall-clock nanoseconds, monotonic within a process (hrtime anchored to the epoch at start). */
export function nowNs(): bigint {
  return originNs + process.hrtime.bigint();
}

export function formatTimeNs(ns: bigint): string {
  const ms = ns / 1_000_000n;
  const iso = new Date(Number(ms)).toISOString(); // 2026-11-24T15:03:12.123Z
  const micros = (ns / 1000n) % 1_000_000n;
  return `${iso.slice(0, 19)}.${micros.toString().padStart(6, '0')}Z`;
}
