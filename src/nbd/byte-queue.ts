// Byte accumulator for a TCP stream: received chunks in order, taken out as whole messages.
// TCP has no framing, so a message may span many chunks and one chunk may hold many messages.
import { assert } from '../core/index.js';

export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Index of the first live chunk in `chunks` (shifting arrays per message costs O(n)). */
  private head = 0;
  /** Bytes already consumed from chunks[head]. */
  private headOffset = 0;
  private lengthBytesValue = 0;

  get lengthBytes(): number {
    return this.lengthBytesValue;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.lengthBytesValue += chunk.length;
  }

  /**
   * Removes and returns the next `lengthBytes` bytes. Zero-copy (a view of the received chunk) when
   * they lie in one chunk, otherwise one allocation. The caller checks `lengthBytes` first.
   */
  take(lengthBytes: number): Buffer {
    assert(lengthBytes <= this.lengthBytesValue, 'take beyond queued bytes');
    const first = this.chunks[this.head];
    assert(first !== undefined || lengthBytes === 0, 'queue accounting broken');
    if (first === undefined) return Buffer.alloc(0);
    if (first.length - this.headOffset >= lengthBytes) {
      const view = first.subarray(this.headOffset, this.headOffset + lengthBytes);
      this.consume(lengthBytes);
      return view;
    }
    const joined = Buffer.allocUnsafe(lengthBytes);
    let filledBytes = 0;
    while (filledBytes < lengthBytes) {
      const chunk = this.chunks[this.head];
      assert(chunk !== undefined, 'queue accounting broken');
      const copiedBytes = chunk.copy(
        joined,
        filledBytes,
        this.headOffset,
        this.headOffset + lengthBytes - filledBytes,
      );
      filledBytes += copiedBytes;
      this.consume(copiedBytes);
    }
    return joined;
  }

  /**
   * Removes the next `lengthBytes` bytes as views of the received chunks, in order (no copy, one
   * piece per chunk they lie in). The caller checks `lengthBytes` first.
   */
  takePieces(lengthBytes: number): Buffer[] {
    assert(lengthBytes <= this.lengthBytesValue, 'take beyond queued bytes');
    const pieces: Buffer[] = [];
    let remainingBytes = lengthBytes;
    while (remainingBytes > 0) {
      const chunk = this.chunks[this.head];
      assert(chunk !== undefined, 'queue accounting broken');
      const stepBytes = Math.min(remainingBytes, chunk.length - this.headOffset);
      pieces.push(chunk.subarray(this.headOffset, this.headOffset + stepBytes));
      this.consume(stepBytes);
      remainingBytes -= stepBytes;
    }
    return pieces;
  }

  /** True when the next `lengthBytes` bytes lie in one received chunk (take() would not copy). */
  contiguous(lengthBytes: number): boolean {
    const first = this.chunks[this.head];
    return first !== undefined && first.length - this.headOffset >= lengthBytes;
  }

  /** Discards up to `lengthBytes` bytes without copying; returns how many were discarded. */
  skip(lengthBytes: number): number {
    const skippedBytes = Math.min(lengthBytes, this.lengthBytesValue);
    let remainingBytes = skippedBytes;
    while (remainingBytes > 0) {
      const chunk = this.chunks[this.head];
      assert(chunk !== undefined, 'queue accounting broken');
      const stepBytes = Math.min(remainingBytes, chunk.length - this.headOffset);
      this.consume(stepBytes);
      remainingBytes -= stepBytes;
    }
    return skippedBytes;
  }

  clear(): void {
    this.chunks.length = 0;
    this.head = 0;
    this.headOffset = 0;
    this.lengthBytesValue = 0;
  }

  /** Advances within the head chunk only; `lengthBytes` never crosses a chunk boundary. */
  private consume(lengthBytes: number): void {
    const chunk = this.chunks[this.head];
    assert(chunk !== undefined, 'queue accounting broken');
    this.headOffset += lengthBytes;
    this.lengthBytesValue -= lengthBytes;
    assert(this.headOffset <= chunk.length, 'consumed past a chunk');
    if (this.headOffset < chunk.length) return;
    // Drop the reference so the chunk can be collected once nothing else views it.
    this.chunks[this.head] = EMPTY;
    this.head += 1;
    this.headOffset = 0;
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head >= 1024) {
      this.chunks.splice(0, this.head);
      this.head = 0;
    }
  }
}

const EMPTY = Buffer.alloc(0);
