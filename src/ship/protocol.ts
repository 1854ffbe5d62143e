// Agent <-> manager wire protocol: length-prefixed frames, each a JSON header plus optional bytes.
// Every length is checked before allocation; a frame larger than FRAME_BYTES_MAX ends the session.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { RewindError } from '../core/index.js';

export const PROTOCOL_VERSION = 1;
/** u32 total length, u32 JSON length. */
export const FRAME_PREFIX_BYTES = 8;
export const FRAME_JSON_BYTES_MAX = 64 * 1024;
/** Largest segment shipped in one frame: the largest seal size plus one maximal record. */
export const FRAME_BYTES_MAX = 1024 * 1024 * 1024 + 64 * 1024 * 1024;

export interface VolumeInfo {
  name: string;
  sizeBytes: number;
}

export type Message =
  | {
      type: 'hello';
      protocol: number;
      token: string;
      volumeSetId: string;
      volumeSetName: string;
      volumes: VolumeInfo[];
      seqNext: number;
    }
  | { type: 'welcome'; seqCommitted: number; segmentCommitted: number }
  | { type: 'error'; code: string; message: string }
  | {
      type: 'segment';
      index: number;
      seqFirst: number;
      seqLast: number;
      fileCrc: number;
      bytes: number;
    }
  // A sealed segment the manager reads from the agent's spool itself (`rewind up` only: same
  // process, same file system); `name` is the file's name in the spool directory.
  | {
      type: 'segment-file';
      index: number;
      seqFirst: number;
      seqLast: number;
      bytes: number;
      name: string;
    }
  | { type: 'ack'; index: number; seqLast: number }
  | { type: 'refused'; index: number; code: string; message: string }
  | { type: 'seal'; id: number }
  | { type: 'sealed'; id: number; seqLast: number }
  | {
      type: 'status';
      seqCaptured: number;
      timeCapturedNs: string;
      spoolBytes: number;
      sealedPending: number;
      mode: string;
      failure?: string;
      restoring?: RestoringState;
    }
  // Production restore (manager -> agent): take volumes offline, write through the normal write
  // path, bring them back online. The agent answers each with the matching reply.
  | { type: 'restore-begin'; id: number; volumes: string[] }
  | { type: 'restore-ready'; id: number; seqLast: number }
  | {
      type: 'restore-write';
      id: number;
      chunk: number;
      volume: string;
      offset: number;
      length: number;
      zero: boolean;
    }
  | { type: 'restore-written'; id: number; chunk: number; errno: number }
  | { type: 'restore-end'; id: number; abandon: boolean }
  | { type: 'restore-done'; id: number; seqLast: number }
  | { type: 'restore-failed'; id: number; message: string };

/** Volumes an agent holds offline for a restore (kept in its state across restarts). */
export interface RestoringState {
  id: number;
  volumes: string[];
}

export function encodeFrame(message: Message, payload?: Buffer): Buffer[] {
  const json = Buffer.from(JSON.stringify(message), 'utf8');
  const prefix = Buffer.allocUnsafe(FRAME_PREFIX_BYTES);
  prefix.writeUInt32LE(json.length + (payload?.length ?? 0), 0);
  prefix.writeUInt32LE(json.length, 4);
  return payload ? [prefix, json, payload] : [prefix, json];
}

export function sendFrame(stream: Duplex, message: Message, payload?: Buffer): boolean {
  const pieces = encodeFrame(message, payload);
  let ok = true;
  for (const piece of pieces) ok = stream.write(piece) && ok;
  return ok;
}

/**
 * The largest frame accepted before a connection has authenticated: a hello is a few KiB, so an
 * unauthenticated peer cannot make the manager buffer a segment-sized frame.
 */
export const FRAME_BYTES_MAX_UNAUTHENTICATED = FRAME_JSON_BYTES_MAX;

/** Incremental frame parser: feed chunks, get whole frames; throws RewindError on a bad frame. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  /** `maxBytes`: the largest frame (after its 8-byte prefix) accepted; see raise(). */
  constructor(private maxBytes = FRAME_BYTES_MAX) {}

  /** Accepts frames up to FRAME_BYTES_MAX from now on (once the peer has authenticated). */
  raise(): void {
    this.maxBytes = FRAME_BYTES_MAX;
  }

  push(chunk: Buffer): { message: Message; payload: Buffer }[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: { message: Message; payload: Buffer }[] = [];
    for (let guard = 0; this.buffered >= FRAME_PREFIX_BYTES; guard++) {
      const prefix = this.peek(FRAME_PREFIX_BYTES);
      const total = prefix.readUInt32LE(0);
      const jsonBytes = prefix.readUInt32LE(4);
      if (jsonBytes > FRAME_JSON_BYTES_MAX || jsonBytes > total || total > this.maxBytes) {
        throw new RewindError(
          'REWIND_PROTOCOL',
          `bad frame: ${total} bytes with ${jsonBytes} bytes of header${total > this.maxBytes ? ` (at most ${this.maxBytes} accepted here)` : ''}`,
        );
      }
      if (this.buffered < FRAME_PREFIX_BYTES + total) break;
      const frame = this.take(FRAME_PREFIX_BYTES + total);
      let message: Message;
      try {
        message = JSON.parse(
          frame.subarray(FRAME_PREFIX_BYTES, FRAME_PREFIX_BYTES + jsonBytes).toString('utf8'),
        ) as Message;
      } catch (error) {
        throw new RewindError('REWIND_PROTOCOL', 'bad frame: header is not JSON', { cause: error });
      }
      if (typeof message !== 'object' || message === null || typeof message.type !== 'string') {
        throw new RewindError('REWIND_PROTOCOL', 'bad frame: header has no type');
      }
      frames.push({ message, payload: frame.subarray(FRAME_PREFIX_BYTES + jsonBytes) });
      if (guard > 1_000_000)
        throw new RewindError('REWIND_PROTOCOL', 'too many frames in one read');
    }
    return frames;
  }

  private peek(n: number): Buffer {
    const first = this.chunks[0] as Buffer;
    if (first.length >= n) return first.subarray(0, n);
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined.subarray(0, n);
  }

  private take(n: number): Buffer {
    const joined =
      this.chunks.length === 1 ? (this.chunks[0] as Buffer) : Buffer.concat(this.chunks);
    const frame = joined.subarray(0, n);
    const rest = joined.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return frame;
  }
}

/** Constant-time token comparison (hash first so lengths do not leak). */
export function tokensEqual(given: string, expected: string): boolean {
  const a = createHash('sha256').update(given, 'utf8').digest();
  const b = createHash('sha256').update(expected, 'utf8').digest();
  return timingSafeEqual(a, b);
}
