// The fuzzer's deterministic PRNG (sfc32, seeded through splitmix32). Every connection draws from its
// own stream derived from (seed, connection index), so a connection's traffic depends only on the
// seed and its index, never on timing: `--seed S --replay K` regenerates connection K exactly.

function splitmix32(state: number): [number, number] {
  const next = (state + 0x9e3779b9) | 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return [next, (z ^ (z >>> 16)) >>> 0];
}

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  /** A stream of `seed`; different `stream` values give independent sequences. */
  constructor(seed: number, stream = 0) {
    let state = (seed ^ Math.imul(stream + 1, 0x27d4eb2f)) | 0;
    const words: number[] = [];
    for (let index = 0; index < 4; index += 1) {
      const [next, word] = splitmix32(state);
      state = next;
      words.push(word);
    }
    [this.a, this.b, this.c, this.d] = words as [number, number, number, number];
    for (let index = 0; index < 12; index += 1) this.u32();
  }

  u32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform in [0, n) for n up to 2^53. */
  below(n: number): number {
    if (n <= 0x100000000) return Math.floor((this.u32() / 0x100000000) * n);
    const high = this.u32() & 0x1fffff;
    return Math.floor(((high * 0x100000000 + this.u32()) / 2 ** 53) * n);
  }

  /** Uniform integer in [low, high]. */
  int(low: number, high: number): number {
    return low + this.below(high - low + 1);
  }

  chance(probability: number): boolean {
    return this.u32() / 0x100000000 < probability;
  }

  pick<T>(items: readonly T[]): T {
    const item = items[this.below(items.length)];
    if (item === undefined) throw new Error('pick from an empty list');
    return item;
  }

  /** A key of `table`, with probability proportional to its weight. */
  weighted<K extends string>(table: Readonly<Record<K, number>>): K {
    const entries = Object.entries(table) as [K, number][];
    let total = 0;
    for (const [, weight] of entries) total += weight;
    let point = (this.u32() / 0x100000000) * total;
    for (const [key, weight] of entries) {
      if (point < weight) return key;
      point -= weight;
    }
    throw new Error('weighted pick from an empty table');
  }

  /** A length drawn log-uniformly from [low, high], so small and large sizes are both common. */
  logSize(low: number, high: number): number {
    const bits = Math.log2(low) + (this.u32() / 0x100000000) * (Math.log2(high) - Math.log2(low));
    return Math.min(high, Math.max(low, Math.floor(2 ** bits)));
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(lengthBytes: number): Buffer {
    const words = new Uint32Array(Math.ceil(lengthBytes / 4));
    for (let index = 0; index < words.length; index += 1) words[index] = this.u32();
    return Buffer.from(words.buffer, 0, lengthBytes);
  }

  /** Flips 1..maxBits random bits of `buffer` within [start, end). */
  flipBits(buffer: Buffer, start: number, end: number, maxBits: number): void {
    const flips = this.int(1, maxBits);
    for (let index = 0; index < flips; index += 1) {
      const position = this.int(start, end - 1);
      buffer[position] = (buffer[position] ?? 0) ^ (1 << this.below(8));
    }
  }
}
