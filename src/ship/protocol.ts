// Agent <-> manager wire protocol: length-prefixed frames, each a JSON header plus optional bytes.
// Every length is checked before allocation; a frame larger than FRAME_BYTES_MAX ends the session;
// every header is decoded into a typed message at the edge (decodeMessage).
import { createHash, timingSafeEqual } from 'node:crypto';
import type { Duplex } from 'node:stream';
import { assert, assertNever, RewindError } from '../core/index.js';

/**
 * 2: `history-gap` (the agent resyncs a manager that lost history) and the refusal of an agent
 * behind the manager. Version 1 agents are refused: they would stall on a manager that is behind.
 */
export const PROTOCOL_VERSION = 2;
/** u32 total length, u32 JSON length. */
export const FRAME_PREFIX_BYTES = 8;
export const FRAME_JSON_BYTES_MAX = 64 * 1024;
/** Largest segment shipped in one frame: the largest seal size plus one maximal record. */
export const FRAME_BYTES_MAX = 1024 * 1024 * 1024 + 64 * 1024 * 1024;

export interface VolumeInfo {
  name: string;
  sizeBytes: number;
}

/** What the agent sends the manager. */
export type AgentMessage =
  | {
      type: 'hello';
      protocol: number;
      token: string;
      volumeSetId: string;
      volumeSetName: string;
      volumes: VolumeInfo[];
      seqNext: number;
    }
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
  | { type: 'sealed'; id: number; seqLast: number }
  // The manager committed less than the agent had acknowledged (its data was lost or restored
  // from an older copy): seqs after its committed one up to seqFirst - 1 are gone, and a resync of
  // every region of every volume starts at segment `segmentFirst`, seq `seqFirst`.
  | { type: 'history-gap'; segmentFirst: number; seqFirst: number }
  | {
      type: 'status';
      seqCaptured: number;
      timeCapturedNs: string;
      spoolBytes: number;
      sealedPending: number;
      mode: string;
      failure?: string;
      restoring?: RestoringState;
      /** Per volume index: client writes logged since the agent started, and their bytes. */
      captured?: { writes: number; bytes: number }[];
      /** Per volume index: NBD clients connected to the production export now. */
      clients?: number[];
    }
  // Replies to the manager's production-restore commands.
  | { type: 'restore-ready'; id: number; seqLast: number }
  | { type: 'restore-written'; id: number; chunk: number; errno: number }
  | { type: 'restore-done'; id: number; seqLast: number }
  | { type: 'restore-failed'; id: number; message: string };

/** What the manager sends the agent. */
export type ManagerMessage =
  | { type: 'welcome'; seqCommitted: number; segmentCommitted: number }
  | { type: 'error'; code: string; message: string }
  | { type: 'ack'; index: number; seqLast: number }
  | { type: 'refused'; index: number; code: string; message: string }
  | { type: 'seal'; id: number }
  // Production restore: take volumes offline, write through the normal write path, bring them back
  // online. The agent answers each with the matching reply.
  | { type: 'restore-begin'; id: number; volumes: string[] }
  | {
      type: 'restore-write';
      id: number;
      chunk: number;
      volume: string;
      offset: number;
      length: number;
      zero: boolean;
    }
  | { type: 'restore-end'; id: number; abandon: boolean };

export type Message = AgentMessage | ManagerMessage;

/** The kinds of field a message carries; every message is checked against its row below. */
type FieldKind =
  'int' | 'u32' | 'string' | 'bool' | 'strings' | 'ints' | 'volumes' | 'restoring' | 'counts';
type Schema = Readonly<Record<string, FieldKind>>;

/** Each message's required fields (optional ones in OPTIONAL_FIELDS); exhaustive over types. */
const FIELDS: { readonly [K in Message['type']]: Schema } = {
  hello: {
    protocol: 'int',
    token: 'string',
    volumeSetId: 'string',
    volumeSetName: 'string',
    volumes: 'volumes',
    seqNext: 'int',
  },
  segment: { index: 'int', seqFirst: 'int', seqLast: 'int', fileCrc: 'u32', bytes: 'int' },
  'segment-file': { index: 'int', seqFirst: 'int', seqLast: 'int', bytes: 'int', name: 'string' },
  sealed: { id: 'int', seqLast: 'int' },
  'history-gap': { segmentFirst: 'int', seqFirst: 'int' },
  status: {
    seqCaptured: 'int',
    timeCapturedNs: 'string',
    spoolBytes: 'int',
    sealedPending: 'int',
    mode: 'string',
  },
  'restore-ready': { id: 'int', seqLast: 'int' },
  'restore-written': { id: 'int', chunk: 'int', errno: 'int' },
  'restore-done': { id: 'int', seqLast: 'int' },
  'restore-failed': { id: 'int', message: 'string' },
  welcome: { seqCommitted: 'int', segmentCommitted: 'int' },
  error: { code: 'string', message: 'string' },
  ack: { index: 'int', seqLast: 'int' },
  refused: { index: 'int', code: 'string', message: 'string' },
  seal: { id: 'int' },
  'restore-begin': { id: 'int', volumes: 'strings' },
  'restore-write': {
    id: 'int',
    chunk: 'int',
    volume: 'string',
    offset: 'int',
    length: 'int',
    zero: 'bool',
  },
  'restore-end': { id: 'int', abandon: 'bool' },
};

const OPTIONAL_FIELDS: { readonly [K in Message['type']]?: Schema } = {
  status: { failure: 'string', restoring: 'restoring', captured: 'counts', clients: 'ints' },
};

const AGENT_TYPES: ReadonlySet<string> = new Set<AgentMessage['type']>([
  'hello',
  'segment',
  'segment-file',
  'sealed',
  'history-gap',
  'status',
  'restore-ready',
  'restore-written',
  'restore-done',
  'restore-failed',
]);

/** Bounds on decoded fields: a string or a list longer than a frame header is refused. */
const STRING_CHARS_MAX = FRAME_JSON_BYTES_MAX;
const LIST_ITEMS_MAX = 4096;

function fieldOk(kind: FieldKind, value: unknown): boolean {
  switch (kind) {
    case 'int':
      return Number.isSafeInteger(value) && (value as number) >= 0;
    case 'u32':
      return (
        Number.isSafeInteger(value) && (value as number) >= 0 && (value as number) <= 0xffffffff
      );
    case 'string':
      return typeof value === 'string' && value.length <= STRING_CHARS_MAX;
    case 'bool':
      return typeof value === 'boolean';
    case 'strings':
      return (
        Array.isArray(value) &&
        value.length <= LIST_ITEMS_MAX &&
        value.every((item) => fieldOk('string', item))
      );
    case 'volumes':
      return (
        Array.isArray(value) &&
        value.length <= LIST_ITEMS_MAX &&
        value.every(
          (item: unknown) =>
            typeof item === 'object' &&
            item !== null &&
            fieldOk('string', (item as VolumeInfo).name) &&
            fieldOk('int', (item as VolumeInfo).sizeBytes),
        )
      );
    case 'ints':
      return (
        Array.isArray(value) &&
        value.length <= LIST_ITEMS_MAX &&
        value.every((item: unknown) => fieldOk('int', item))
      );
    case 'counts':
      return (
        Array.isArray(value) &&
        value.length <= LIST_ITEMS_MAX &&
        value.every(
          (item: unknown) =>
            typeof item === 'object' &&
            item !== null &&
            fieldOk('int', (item as { writes: unknown }).writes) &&
            fieldOk('int', (item as { bytes: unknown }).bytes),
        )
      );
    case 'restoring':
      return (
        typeof value === 'object' &&
        value !== null &&
        fieldOk('int', (value as RestoringState).id) &&
        fieldOk('strings', (value as RestoringState).volumes)
      );
    default:
      return assertNever(kind, 'field kind');
  }
}

/**
 * A frame's JSON header as a typed message, or a REWIND_PROTOCOL error naming what is wrong: an
 * unknown type, a missing field or one of the wrong kind. Fields a message does not define are
 * dropped, so nothing unchecked gets past the edge.
 */
export function decodeMessage(header: unknown): Message {
  if (typeof header !== 'object' || header === null) {
    throw new RewindError('REWIND_PROTOCOL', 'bad frame: header is not an object');
  }
  const fields = header as Record<string, unknown>;
  const type = fields.type;
  if (typeof type !== 'string' || !Object.hasOwn(FIELDS, type)) {
    throw new RewindError(
      'REWIND_PROTOCOL',
      `bad frame: unknown message type ${JSON.stringify(type)?.slice(0, 64)}`,
    );
  }
  const known = type as Message['type'];
  const out: Record<string, unknown> = { type: known };
  for (const [name, kind] of Object.entries(FIELDS[known])) {
    if (!fieldOk(kind, fields[name])) {
      throw new RewindError('REWIND_PROTOCOL', `bad frame: ${known} needs ${name} (${kind})`);
    }
    out[name] = fields[name];
  }
  for (const [name, kind] of Object.entries(OPTIONAL_FIELDS[known] ?? {})) {
    if (fields[name] === undefined) continue;
    if (!fieldOk(kind, fields[name])) {
      throw new RewindError('REWIND_PROTOCOL', `bad frame: ${known} has a bad ${name} (${kind})`);
    }
    out[name] = fields[name];
  }
  return out as Message;
}

export function isAgentMessage(message: Message): message is AgentMessage {
  return AGENT_TYPES.has(message.type);
}

export function isManagerMessage(message: Message): message is ManagerMessage {
  return !AGENT_TYPES.has(message.type);
}

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
    // Every frame takes at least its prefix: the loop ends within buffered / prefix turns.
    const turnsMax = Math.ceil(this.buffered / FRAME_PREFIX_BYTES);
    for (let turn = 0; this.buffered >= FRAME_PREFIX_BYTES; turn++) {
      assert(turn <= turnsMax, 'each frame consumes its prefix');
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
      let header: unknown;
      try {
        header = JSON.parse(
          frame.subarray(FRAME_PREFIX_BYTES, FRAME_PREFIX_BYTES + jsonBytes).toString('utf8'),
        ) as unknown;
      } catch (error) {
        throw new RewindError('REWIND_PROTOCOL', 'bad frame: header is not JSON', { cause: error });
      }
      const message = decodeMessage(header);
      frames.push({ message, payload: frame.subarray(FRAME_PREFIX_BYTES + jsonBytes) });
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
