// Transmission fuzzing: pipelined batches of valid, invalid and mutated requests on one connection,
// every reply parsed and judged (cookie, framing, errno against the oracle, data against the slot
// model), and a final act that ends the connection: DISC (clean, malformed or in the middle of a
// batch), a hang-up, bad magic, random bytes, an option, or a WRITE whose payload is cut short or
// overlong. Writes that may succeed only ever target the connection's own scratch slot.
import {
  ContentChecker,
  SlotModel,
  slotStart,
  type ContentView,
  type Layout,
} from './nbd-fuzz-model.js';
import {
  WRITE_LIKE,
  encodeRequest,
  decodeRequest,
  judge,
  newRequest,
  type RequestHeader,
  type Verdict,
} from './nbd-fuzz-oracle.js';
import { Stats, Violation } from './nbd-fuzz-report.js';
import type { Rng } from './nbd-fuzz-rng.js';
import type { Session } from './nbd-fuzz-handshake.js';
import { encodeOption, infoData } from './nbd-fuzz-handshake.js';
import {
  CFlag,
  CHUNK_HEADER_BYTES,
  Chunk,
  Cmd,
  Opt,
  REPLY_FLAG_DONE,
  REQUEST_MAGIC,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRING_BYTES_MAX,
  STRUCTURED_REPLY_MAGIC,
  TFlag,
  U32_MAX,
  WIRE_ERRNOS,
  commandName,
  errnoName,
} from './nbd-fuzz-spec.js';
import { PeerClosed, ReadTimeout, hex, type Wire } from './nbd-fuzz-wire.js';

export interface SlotContext {
  layout: Layout;
  checker: ContentChecker;
  slot: number;
  model: SlotModel;
  stats: Stats;
  /** Oracle rules whose errno is not enforced (a known deviation, still counted). */
  tolerated: ReadonlySet<string>;
}

/** WRITE payloads the fuzzer actually sends; longer WRITEs are sent truncated, as a final act. */
const WRITE_PAYLOAD_CAP = 1 << 20;
const CLOSE_GRACE_MS = 250;
/** Only the first bytes of a batch are sent in small pieces; the rest goes in one write. */
const SPLIT_BYTES_MAX = 64 * 1024;
const ZERO_PIECE = Buffer.alloc(1 << 20);
let zeroPayload = Buffer.alloc(0);

/** A zero-filled payload, shared (its content does not matter to a WRITE that must be refused). */
function zeroes(lengthBytes: number): Buffer {
  if (zeroPayload.length < lengthBytes) zeroPayload = Buffer.alloc(lengthBytes);
  return zeroPayload.subarray(0, lengthBytes);
}

interface Entry {
  header: RequestHeader;
  verdict: Verdict;
  /** WRITE payload, to update the model on success. */
  payload: Buffer | undefined;
  /** Part of the own slot this request writes (effective write) or looks at (read, block status). */
  slotRange: [number, number] | undefined;
  /** An overlapping write was in flight: the outcome in `slotRange` is not known. */
  tainted: boolean;
  /** Its reply must arrive: the server may not drop it by closing the connection. */
  mandatory: boolean;
  /** Why success would be a violation (a WRITE whose payload never fully arrived). */
  mustNotSucceed: string | undefined;
  content: [number, number][];
  statusChunks: number;
  errno: number;
}

type RequestKind =
  | 'read'
  | 'write'
  | 'trim'
  | 'zero'
  | 'flush'
  | 'status'
  | 'cache'
  | 'beyondEnd'
  | 'zeroLength'
  | 'hugeLength'
  | 'unknownCommand'
  | 'badFlags'
  | 'flushArgs'
  | 'drainedWrite'
  | 'mutated';

const REQUEST_WEIGHTS: Readonly<Record<RequestKind, number>> = {
  read: 26,
  write: 16,
  trim: 3,
  zero: 4,
  flush: 2,
  status: 5,
  cache: 1,
  beyondEnd: 6,
  zeroLength: 3,
  hugeLength: 3,
  unknownCommand: 3,
  badFlags: 7,
  flushArgs: 1,
  drainedWrite: 0.02,
  mutated: 20,
};

type FinalAct =
  | 'disc'
  | 'discMalformed'
  | 'interleavedDisc'
  | 'hangup'
  | 'hangupPending'
  | 'fin'
  | 'badMagic'
  | 'random'
  | 'option'
  | 'shortPayload'
  | 'longPayload'
  | 'truncatedWrite';

const FINAL_WEIGHTS: Readonly<Record<FinalAct, number>> = {
  disc: 40,
  discMalformed: 5,
  interleavedDisc: 8,
  hangup: 8,
  hangupPending: 4,
  fin: 5,
  badMagic: 8,
  random: 7,
  option: 4,
  shortPayload: 5,
  longPayload: 5,
  truncatedWrite: 5,
};

type PlainKind = Exclude<RequestKind, 'mutated'>;
const VALID_KINDS: readonly PlainKind[] = ['read', 'write', 'trim', 'zero', 'flush', 'status'];

interface Built {
  header: RequestHeader;
  payload: Buffer | undefined;
}

export class TransmissionFuzzer {
  private readonly outstanding = new Map<bigint, Entry>();
  /** Cookies of requests that must never be answered (DISC, bad magic, a write cut short). */
  private readonly silent = new Map<bigint, string>();
  private nextCookie: bigint;
  private readonly readOnly: boolean;
  private readonly ownStart: number;
  private ended = false;

  constructor(
    private readonly wire: Wire,
    private readonly rng: Rng,
    private readonly session: Session,
    private readonly slot: SlotContext,
  ) {
    this.nextCookie = rng.u64();
    this.readOnly = (session.transmissionFlags & TFlag.READ_ONLY) !== 0;
    this.ownStart = slotStart(slot.layout, slot.slot);
  }

  /** Sends `budget` requests (the last one is the final act) and checks every reply. */
  async run(budget: number): Promise<void> {
    let remaining = budget - 1;
    while (remaining > 0 && !this.ended) {
      const slowReader = this.rng.chance(0.002);
      const count = Math.min(
        remaining,
        slowReader
          ? this.rng.int(64, 160)
          : this.rng.chance(0.02)
            ? this.rng.logSize(48, 2000)
            : this.rng.logSize(1, 48),
      );
      const parts: Buffer[] = [];
      for (let index = 0; index < count; index += 1)
        parts.push(
          ...this.queue(
            slowReader ? this.bigRead() : this.build(this.rng.weighted(REQUEST_WEIGHTS)),
            true,
          ),
        );
      await this.send(parts);
      // A client that stops reading while tens of MiB of replies are due: the server must apply
      // back-pressure (stop reading) and resume once the client reads again, losing nothing.
      if (slowReader) this.wire.pauseReading(this.rng.int(20, 200));
      await this.drain();
      remaining -= count;
    }
    if (!this.ended) await this.finalAct(this.rng.weighted(FINAL_WEIGHTS));
  }

  // ---- building requests -------------------------------------------------------------------------

  private cookie(): bigint {
    const cookie = this.nextCookie;
    this.nextCookie = (this.nextCookie + 1n) & 0xffffffffffffffffn;
    return cookie;
  }

  /** A request of `kind`; requests that could change data outside the own slot are redrawn. */
  private build(kind: RequestKind): Built {
    for (let attempt = 0; attempt < 12; attempt += 1) {
      const built = kind === 'mutated' ? this.mutated() : this.plain(kind);
      if (built && this.safe(built.header)) return built;
    }
    return this.validRead();
  }

  private validRead(): Built {
    return { header: this.readHeader(), payload: undefined };
  }

  /** A valid READ of 256 KiB to 1 MiB anywhere in the export. */
  private bigRead(): Built {
    const length = this.rng.int(1 << 18, 1 << 20);
    return {
      header: newRequest(
        Cmd.READ,
        this.cookie(),
        this.rng.below(this.session.sizeBytes - length + 1),
        length,
      ),
      payload: undefined,
    };
  }

  /** A request that may succeed and change data must lie inside the own slot. */
  private safe(header: RequestHeader): boolean {
    if (!judge(header, this.session, this.slot.tolerated).effective) return true;
    const start = BigInt(this.ownStart);
    return (
      header.offset >= start &&
      header.offset + BigInt(header.length) <= start + BigInt(this.slot.layout.slotBytes)
    );
  }

  private plain(kind: PlainKind): Built | undefined {
    switch (kind) {
      case 'read':
        return this.validRead();
      case 'write':
        return this.withPayload(this.writeLike(Cmd.WRITE, 0));
      case 'trim':
        return this.withPayload(this.writeLike(Cmd.TRIM, 0));
      case 'zero':
        return this.withPayload(
          this.writeLike(Cmd.WRITE_ZEROES, this.rng.chance(0.3) ? CFlag.NO_HOLE : 0),
        );
      case 'flush':
        return this.withPayload(newRequest(Cmd.FLUSH, this.cookie(), 0, 0, this.fua(0.2)));
      case 'status':
        return this.withPayload(this.statusHeader());
      case 'cache':
        return this.withPayload(
          newRequest(
            Cmd.CACHE,
            this.cookie(),
            this.rng.below(this.session.sizeBytes),
            this.rng.logSize(1, 1 << 20),
          ),
        );
      case 'beyondEnd':
        return this.withPayload(this.beyondEnd());
      case 'zeroLength':
        return this.withPayload(
          newRequest(
            this.rangedType(),
            this.cookie(),
            this.rng.below(this.session.sizeBytes + 1),
            0,
          ),
        );
      case 'hugeLength':
        return this.withPayload(this.hugeLength());
      case 'unknownCommand':
        return this.withPayload(
          newRequest(
            this.rng.chance(0.5) ? this.rng.int(8, 15) : this.rng.int(16, 0xffff),
            this.cookie(),
            this.rng.below(this.session.sizeBytes),
            this.rng.logSize(1, 1 << 16),
            this.rng.chance(0.3) ? this.rng.below(0x10000) : 0,
          ),
        );
      case 'badFlags':
        return this.withPayload(this.badFlags());
      case 'flushArgs':
        return this.withPayload(
          newRequest(
            Cmd.FLUSH,
            this.cookie(),
            this.rng.chance(0.5) ? this.rng.u64() : 0n,
            this.rng.int(1, U32_MAX),
          ),
        );
      case 'drainedWrite':
        return this.drainedWrite();
    }
  }

  /** Attaches a payload to WRITEs (of exactly the header's length); too long a WRITE is not sendable here. */
  private withPayload(header: RequestHeader): Built | undefined {
    if (header.type !== Cmd.WRITE) return { header, payload: undefined };
    if (header.length > WRITE_PAYLOAD_CAP) return undefined;
    return { header, payload: this.rng.bytes(header.length) };
  }

  /**
   * A WRITE beyond the end whose payload exceeds the maximum block size but stays within what the
   * server must not treat as abuse ("any payload not exceeding 2^25 bytes SHOULD NOT be considered a
   * denial of service") or just above it: it must be refused, payload and all, and the stream go on.
   */
  private drainedWrite(): Built {
    const length = this.session.maximumPayloadBytes + this.rng.logSize(1, 1 << 20);
    const header = newRequest(
      Cmd.WRITE,
      this.cookie(),
      this.session.sizeBytes - this.rng.below(4096),
      length,
    );
    return { header, payload: zeroes(length) };
  }

  private mutated(): Built | undefined {
    const base = this.plain(this.rng.pick(VALID_KINDS));
    if (!base) return undefined;
    const bytes = encodeRequest(base.header);
    const field = this.rng.below(10);
    // Flags and type, offset, or length; the cookie stays intact so replies can be matched, and bad
    // magic is a final act of its own.
    if (field < 4) this.rng.flipBits(bytes, 4, 8, 3);
    else if (field < 7) this.rng.flipBits(bytes, 16, 24, 3);
    else this.rng.flipBits(bytes, 24, 28, 2);
    const header = decodeRequest(bytes);
    if (header.type === Cmd.DISC) return undefined;
    if (header.type !== Cmd.WRITE) return { header, payload: undefined };
    if (base.payload && base.payload.length === header.length)
      return { header, payload: base.payload };
    return this.withPayload(header);
  }

  private fua(probability: number): number {
    return (this.session.transmissionFlags & TFlag.SEND_FUA) !== 0 && this.rng.chance(probability)
      ? CFlag.FUA
      : 0;
  }

  private readHeader(): RequestHeader {
    const size = this.session.sizeBytes;
    const roll = this.rng.below(1000);
    const length = Math.min(
      size,
      roll < 940
        ? this.rng.logSize(1, 1 << 16)
        : roll < 999
          ? this.rng.logSize(1 << 16, 1 << 20)
          : this.rng.logSize(1 << 20, 1 << 25),
    );
    const region = this.rng.below(10);
    let offset: number;
    if (region < 4 && !this.readOnly)
      offset = this.ownStart + this.rng.below(Math.max(1, this.slot.layout.slotBytes - length));
    else if (region < 6)
      offset = this.rng.pick(this.slot.layout.canaries).offsetBytes + this.rng.below(1 << 19);
    else offset = this.rng.below(size - length + 1);
    offset = Math.min(offset, size - length);
    const df =
      (this.session.transmissionFlags & TFlag.SEND_DF) !== 0 && this.rng.chance(0.2) ? CFlag.DF : 0;
    return newRequest(Cmd.READ, this.cookie(), offset, length, df | this.fua(0.05));
  }

  /** A write-like request in the own slot (on a read-only export: anywhere, it must fail). */
  private writeLike(type: number, flags: number): RequestHeader {
    const slotBytes = this.slot.layout.slotBytes;
    const length = this.rng.chance(0.98)
      ? this.rng.logSize(1, 1 << 16)
      : this.rng.logSize(1 << 16, 1 << 18);
    const offset = this.readOnly
      ? this.rng.below(this.session.sizeBytes - length)
      : this.ownStart + this.rng.below(slotBytes - length + 1);
    return newRequest(type, this.cookie(), offset, length, flags | this.fua(0.1));
  }

  private statusHeader(): RequestHeader {
    const length = this.rng.logSize(1, this.session.sizeBytes);
    const offset =
      this.rng.chance(0.3) && !this.readOnly
        ? this.ownStart
        : this.rng.below(this.session.sizeBytes - length + 1);
    return newRequest(
      Cmd.BLOCK_STATUS,
      this.cookie(),
      offset,
      length,
      this.rng.chance(0.3) ? CFlag.REQ_ONE : 0,
    );
  }

  private rangedType(): number {
    return this.rng.pick([
      Cmd.READ,
      Cmd.WRITE,
      Cmd.TRIM,
      Cmd.WRITE_ZEROES,
      Cmd.BLOCK_STATUS,
      Cmd.CACHE,
    ]);
  }

  private beyondEnd(): RequestHeader {
    const size = this.session.sizeBytes;
    const length = this.rng.logSize(1, 1 << 16);
    const choice = this.rng.below(4);
    let offset: bigint;
    if (choice === 0)
      offset = BigInt(
        size - this.rng.below(Math.min(length, size)) + (this.rng.chance(0.5) ? 0 : length),
      );
    else if (choice === 1) offset = BigInt(size);
    else if (choice === 2) offset = 0xffffffffffffffffn - BigInt(this.rng.below(length));
    else offset = BigInt(size) + (this.rng.u64() % (1n << 60n));
    const header = newRequest(
      this.rangedType(),
      this.cookie(),
      0,
      length,
      this.rng.chance(0.2) ? this.fua(1) : 0,
    );
    header.offset = offset;
    return header;
  }

  private hugeLength(): RequestHeader {
    const type = this.rng.pick([Cmd.READ, Cmd.TRIM, Cmd.WRITE_ZEROES, Cmd.BLOCK_STATUS, Cmd.CACHE]);
    const length = this.rng.chance(0.3)
      ? U32_MAX - this.rng.below(4096)
      : this.rng.logSize(1 << 25, U32_MAX);
    return newRequest(type, this.cookie(), this.rng.below(this.session.sizeBytes), length);
  }

  /** A valid request with one flag it may not carry; write-likes sometimes aimed at the canaries. */
  private badFlags(): RequestHeader {
    const kind = this.rng.pick(VALID_KINDS);
    const base = this.plain(kind)?.header ?? this.readHeader();
    const choice = this.rng.below(6);
    let flag: number;
    if (choice === 0) flag = 1 << this.rng.int(6, 15);
    else if (choice === 1) flag = CFlag.PAYLOAD_LEN;
    else if (choice === 2) flag = CFlag.FAST_ZERO;
    else flag = this.rng.pick([CFlag.DF, CFlag.REQ_ONE, CFlag.NO_HOLE, CFlag.FUA]);
    base.flags |= flag;
    if (WRITE_LIKE.has(base.type) && this.rng.chance(0.3))
      base.offset = BigInt(
        this.rng.pick(this.slot.layout.canaries).offsetBytes + this.rng.below(4096),
      );
    return base;
  }

  // ---- bookkeeping -------------------------------------------------------------------------------

  /** Registers the request as outstanding (answer expected) and returns its wire bytes. */
  private queue(built: Built, mandatory: boolean): Buffer[] {
    const { header, payload } = built;
    const verdict = judge(header, this.session, this.slot.tolerated);
    const entry: Entry = {
      header,
      verdict,
      payload,
      slotRange: this.slotRangeOf(header, verdict),
      tainted: false,
      mandatory,
      mustNotSucceed: undefined,
      content: [],
      statusChunks: 0,
      errno: 0,
    };
    this.taint(entry);
    this.outstanding.set(header.cookie, entry);
    this.wire.note(
      `→ ${describe(header)}${verdict.rules.length > 0 ? ` [${verdict.rules.join('; ')}]` : ''}`,
    );
    this.slot.stats.requests += 1;
    return payload ? [encodeRequest(header), payload] : [encodeRequest(header)];
  }

  /** Own-slot bytes the request changes (effective writes) or inspects (reads, block status). */
  private slotRangeOf(header: RequestHeader, verdict: Verdict): [number, number] | undefined {
    const inspects = header.type === Cmd.READ || header.type === Cmd.BLOCK_STATUS;
    if (this.readOnly || !(verdict.effective || (inspects && verdict.allowed.has(0))))
      return undefined;
    const start = Math.max(Number(header.offset) - this.ownStart, 0);
    const end = Math.min(
      Number(header.offset) + header.length - this.ownStart,
      this.slot.layout.slotBytes,
    );
    return start < end ? [start, end] : undefined;
  }

  /** Requests overlapping an in-flight write may see either version: their outcome is not checked. */
  private taint(entry: Entry): void {
    if (!entry.slotRange) return;
    const [start, end] = entry.slotRange;
    for (const other of this.outstanding.values()) {
      if (!other.slotRange || other.slotRange[0] >= end || other.slotRange[1] <= start) continue;
      if (other.verdict.effective) entry.tainted = true;
      if (entry.verdict.effective) other.tainted = true;
    }
  }

  /** Sends the bytes, sometimes with their start split into pieces so the server sees messages cut anywhere. */
  private async send(parts: readonly Buffer[]): Promise<void> {
    const bytes = Buffer.concat(parts);
    this.slot.stats.bytesSent += bytes.length;
    const splitEnd = this.rng.chance(0.15) ? Math.min(bytes.length, SPLIT_BYTES_MAX) : 0;
    let position = 0;
    while (position < splitEnd) {
      const step = Math.min(splitEnd - position, this.rng.logSize(1, 4096));
      this.wire.write(bytes.subarray(position, position + step));
      position += step;
      await new Promise((resolve) => setImmediate(resolve));
    }
    if (position < bytes.length) this.wire.write(bytes.subarray(position));
  }

  // ---- replies -----------------------------------------------------------------------------------

  /** Reads replies until nothing is outstanding. */
  private async drain(): Promise<void> {
    while (this.outstanding.size > 0) {
      try {
        await this.readReply(undefined);
      } catch (error) {
        if (error instanceof PeerClosed) return this.closedByServer();
        throw this.asViolation(error);
      }
    }
  }

  /** The server closed mid-run: only allowed where a request was big enough to count as abuse. */
  private closedByServer(): void {
    this.ended = true;
    const excuse = [...this.outstanding.values()].some((entry) => entry.verdict.mayDisconnect);
    const missing = [...this.outstanding.values()].filter((entry) => entry.mandatory);
    if (!excuse && missing.length > 0) {
      throw new Violation(
        'unexpected disconnect',
        `server closed the connection with ${missing.length} requests unanswered, first ${describe(missing[0]?.header)}`,
      );
    }
    this.forgetOutstanding();
  }

  /** Unanswered effective writes may or may not have happened. */
  private forgetOutstanding(): void {
    for (const entry of this.outstanding.values()) {
      if (entry.verdict.effective && entry.slotRange && !entry.mustNotSucceed)
        this.slot.model.forget(entry.slotRange[0], entry.slotRange[1] - entry.slotRange[0]);
    }
    this.outstanding.clear();
  }

  private asViolation(error: unknown): unknown {
    if (error instanceof ReadTimeout) {
      const waiting = [...this.outstanding.values()]
        .map((entry) => describe(entry.header))
        .slice(0, 3);
      return new Violation(
        'hang',
        `${error.message}; waiting for ${waiting.join(', ') || 'the connection to close'}`,
      );
    }
    if (error instanceof PeerClosed)
      return new Violation(
        'unexpected disconnect',
        'server closed the connection in the middle of a reply',
      );
    return error;
  }

  private async readReply(firstTimeoutMs: number | undefined): Promise<void> {
    const magic = (await this.wire.read(4, firstTimeoutMs)).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) return this.readSimpleReply();
    if (magic === STRUCTURED_REPLY_MAGIC) return this.readChunk();
    throw new Violation('reply magic', `reply starts with 0x${magic.toString(16)}`);
  }

  private claim(cookie: bigint): Entry {
    const entry = this.outstanding.get(cookie);
    if (entry) return entry;
    const silent = this.silent.get(cookie);
    if (silent) throw new Violation('reply to unanswerable request', `server answered ${silent}`);
    throw new Violation(
      'unknown cookie',
      `reply carries cookie ${cookie}, which no outstanding request has`,
    );
  }

  private async readSimpleReply(): Promise<void> {
    const rest = await this.wire.read(SIMPLE_REPLY_BYTES - 4);
    const errno = rest.readUInt32BE(0);
    const entry = this.claim(rest.readBigUInt64BE(4));
    const { header } = entry;
    this.wire.note(`← simple reply ${errnoName(errno)} for ${describe(header)}`);
    if (this.session.structured && header.type === Cmd.READ)
      throw new Violation(
        'simple reply to READ',
        'structured replies were negotiated, READ must be answered with chunks',
      );
    if (errno === 0 && header.type === Cmd.BLOCK_STATUS)
      throw new Violation('block status', 'success without a BLOCK_STATUS chunk');
    if (errno === 0 && header.type === Cmd.READ && entry.verdict.allowed.has(0)) {
      const data = await this.wire.read(header.length);
      this.slot.stats.bytesRead += data.length;
      this.checkContent(entry, Number(header.offset), data);
    }
    this.finish(entry, errno);
  }

  private async readChunk(): Promise<void> {
    const head = await this.wire.read(CHUNK_HEADER_BYTES - 4);
    const flags = head.readUInt16BE(0);
    const type = head.readUInt16BE(2);
    const entry = this.claim(head.readBigUInt64BE(4));
    const lengthBytes = head.readUInt32BE(12);
    if (!this.session.structured)
      throw new Violation(
        'structured reply',
        'chunk sent although structured replies were not negotiated',
      );
    if ((flags & ~REPLY_FLAG_DONE) !== 0)
      throw new Violation('structured reply', `unknown reply flags 0x${flags.toString(16)}`);
    if (lengthBytes > this.chunkLimit(entry, type))
      throw new Violation(
        'structured reply',
        `chunk type ${type} of ${lengthBytes} bytes for ${describe(entry.header)}`,
      );
    const payload = await this.wire.read(lengthBytes);
    this.wire.note(
      `← chunk type ${type} flags ${flags} ${hex(payload, 16)} for ${describe(entry.header)}`,
    );
    this.applyChunk(entry, type, payload, (flags & REPLY_FLAG_DONE) !== 0);
    if ((flags & REPLY_FLAG_DONE) !== 0) this.finishStructured(entry);
  }

  private chunkLimit(entry: Entry, type: number): number {
    if (type === Chunk.OFFSET_DATA) return entry.header.length + 8;
    if (type === Chunk.BLOCK_STATUS) return 4 + 8 * (1 << 20);
    return 14 + STRING_BYTES_MAX;
  }

  private applyChunk(entry: Entry, type: number, payload: Buffer, done: boolean): void {
    const command = entry.header.type;
    switch (type) {
      case Chunk.NONE:
        if (payload.length !== 0 || !done)
          throw new Violation('structured reply', 'NONE chunk with a payload or without DONE');
        return;
      case Chunk.OFFSET_DATA:
        if (command !== Cmd.READ || payload.length < 9)
          throw new Violation(
            'structured reply',
            `OFFSET_DATA of ${payload.length} bytes for ${commandName(command)}`,
          );
        this.content(entry, payload.readBigUInt64BE(0), payload.subarray(8));
        return;
      case Chunk.OFFSET_HOLE:
        if (command !== Cmd.READ || payload.length !== 12 || payload.readUInt32BE(8) === 0)
          throw new Violation('structured reply', 'malformed OFFSET_HOLE');
        this.hole(entry, payload.readBigUInt64BE(0), payload.readUInt32BE(8));
        return;
      case Chunk.BLOCK_STATUS:
        if (command !== Cmd.BLOCK_STATUS)
          throw new Violation('structured reply', `BLOCK_STATUS chunk for ${commandName(command)}`);
        this.blockStatus(entry, payload);
        return;
      case Chunk.ERROR:
      case Chunk.ERROR_OFFSET:
        this.errorChunk(entry, type, payload);
        return;
      default:
        throw new Violation('structured reply', `chunk type ${type} was never negotiated`);
    }
  }

  private content(entry: Entry, offset: bigint, data: Buffer): void {
    this.claimRange(entry, offset, data.length);
    this.slot.stats.bytesRead += data.length;
    this.checkContent(entry, Number(offset), data);
  }

  private hole(entry: Entry, offset: bigint, lengthBytes: number): void {
    this.claimRange(entry, offset, lengthBytes);
    this.checkZeroes(entry, Number(offset), lengthBytes);
  }

  /** Content chunks lie inside the request, never overlap, and DF allows only one. */
  private claimRange(entry: Entry, offset: bigint, lengthBytes: number): void {
    const start = Number(offset - entry.header.offset);
    const end = start + lengthBytes;
    if (offset < entry.header.offset || end > entry.header.length)
      throw new Violation(
        'structured reply',
        `content [${offset}, +${lengthBytes}) outside ${describe(entry.header)}`,
      );
    if (entry.content.some(([a, b]) => a < end && start < b))
      throw new Violation('structured reply', 'overlapping content chunks');
    entry.content.push([start, end]);
    if ((entry.header.flags & CFlag.DF) !== 0 && entry.content.length > 1)
      throw new Violation('structured reply', 'DF read answered with more than one content chunk');
  }

  private blockStatus(entry: Entry, payload: Buffer): void {
    const { header } = entry;
    if (payload.length < 12 || (payload.length - 4) % 8 !== 0)
      throw new Violation('block status', `chunk of ${payload.length} bytes`);
    const contextId = payload.readUInt32BE(0);
    if (contextId !== this.session.contextId)
      throw new Violation(
        'block status',
        `context id ${contextId}, negotiated ${String(this.session.contextId)}`,
      );
    const count = (payload.length - 4) / 8;
    if ((header.flags & CFlag.REQ_ONE) !== 0 && count !== 1)
      throw new Violation('block status', `REQ_ONE answered with ${count} extents`);
    let position = Number(header.offset);
    for (let index = 0; index < count; index += 1) {
      const lengthBytes = payload.readUInt32BE(4 + 8 * index);
      const flags = payload.readUInt32BE(8 + 8 * index);
      const covered = position - Number(header.offset);
      if (lengthBytes === 0 || covered >= header.length)
        throw new Violation(
          'block status',
          `extent ${index} of ${lengthBytes} bytes starts ${covered} bytes into a ${header.length}-byte request`,
        );
      if ((header.flags & CFlag.REQ_ONE) !== 0 && lengthBytes > header.length)
        throw new Violation('block status', 'REQ_ONE extent longer than the request');
      if (position + lengthBytes > this.session.sizeBytes)
        throw new Violation('block status', 'extent beyond the end of the export');
      // base:allocation bit 1 (NBD_STATE_ZERO): "the block contents read as all zeroes".
      if ((flags & 2) !== 0)
        this.checkZeroes(
          entry,
          position,
          Math.min(lengthBytes, Number(header.offset) + header.length - position),
        );
      position += lengthBytes;
    }
    entry.statusChunks += 1;
  }

  private errorChunk(entry: Entry, type: number, payload: Buffer): void {
    const fixed = type === Chunk.ERROR ? 6 : 14;
    if (payload.length < fixed)
      throw new Violation('structured reply', `error chunk of ${payload.length} bytes`);
    const errno = payload.readUInt32BE(0);
    const messageBytes = payload.readUInt16BE(4);
    if (errno === 0 || messageBytes > payload.length - fixed)
      throw new Violation(
        'structured reply',
        `error chunk errno ${errno}, message ${messageBytes} bytes in ${payload.length}`,
      );
    if (type === Chunk.ERROR_OFFSET) {
      const offset = payload.readBigUInt64BE(6 + messageBytes);
      if (
        offset < entry.header.offset ||
        offset >= entry.header.offset + BigInt(entry.header.length)
      )
        throw new Violation('structured reply', 'ERROR_OFFSET outside the request');
    }
    if (entry.errno === 0) entry.errno = errno;
  }

  private finishStructured(entry: Entry): void {
    const { header } = entry;
    if (entry.errno === 0 && header.type === Cmd.READ) {
      const covered = entry.content.reduce((sum, [start, end]) => sum + end - start, 0);
      if (covered !== header.length)
        throw new Violation(
          'structured reply',
          `successful READ covered ${covered} of ${header.length} bytes`,
        );
    }
    if (entry.errno === 0 && header.type === Cmd.BLOCK_STATUS && entry.statusChunks !== 1) {
      throw new Violation(
        'block status',
        `${entry.statusChunks} BLOCK_STATUS chunks for one context`,
      );
    }
    this.finish(entry, entry.errno);
  }

  /** The final verdict on one reply, and what it means for the slot model. */
  private finish(entry: Entry, errno: number): void {
    const { header, verdict } = entry;
    this.outstanding.delete(header.cookie);
    this.slot.stats.replies += 1;
    this.slot.stats.errno(errno);
    if (errno !== 0 && !WIRE_ERRNOS.has(errno))
      throw new Violation('errno outside the spec', `${describe(header)} failed with ${errno}`);
    if (errno === 0 && entry.mustNotSucceed)
      throw new Violation(
        'success without a payload',
        `${describe(header)} succeeded, but ${entry.mustNotSucceed}`,
      );
    if (!verdict.allowed.has(errno)) {
      const allowed = [...verdict.allowed].map(errnoName).join(' or ');
      const why = verdict.rules.length > 0 ? verdict.rules.join('; ') : 'a valid request';
      throw new Violation(
        errno === 0 ? 'success where the spec requires an error' : 'wrong errno',
        `${describe(header)} (${why}) answered ${errnoName(errno)}, expected ${allowed}`,
      );
    }
    if (!verdict.strict.has(errno))
      this.slot.stats.deviation(`${verdict.rules.join('; ')}: ${errnoName(errno)}`);
    this.settle(entry, errno);
  }

  private settle(entry: Entry, errno: number): void {
    const range = entry.slotRange;
    if (!entry.verdict.effective || !range || entry.mustNotSucceed) return;
    const [start, end] = range;
    const model = this.slot.model;
    if (errno !== 0 || entry.tainted || entry.header.type === Cmd.TRIM) {
      // Failed, raced with an overlapping write, or trimmed ("MUST NOT make any assumptions about the contents").
      model.forget(start, end - start);
    } else if (entry.header.type === Cmd.WRITE && entry.payload) {
      model.write(start, entry.payload);
    } else {
      model.zero(start, end - start);
    }
  }

  private view(entry: Entry): ContentView {
    const own = this.slot.slot;
    return { readOnly: this.readOnly, checkSlot: (slot) => slot === own && !entry.tainted };
  }

  private checkContent(entry: Entry, offset: number, data: Buffer): void {
    const problem = this.slot.checker.check(this.view(entry), offset, data);
    if (problem)
      throw new Violation('data', `${problem} (${describe(entry.header)}, ${hex(data, 16)})`);
  }

  private checkZeroes(entry: Entry, offset: number, lengthBytes: number): void {
    for (let done = 0; done < lengthBytes; done += ZERO_PIECE.length) {
      const piece = ZERO_PIECE.subarray(0, Math.min(ZERO_PIECE.length, lengthBytes - done));
      const problem = this.slot.checker.check(this.view(entry), offset + done, piece);
      if (problem)
        throw new Violation(
          'data',
          `server reports zeroes, but ${problem} (${describe(entry.header)})`,
        );
    }
  }

  // ---- final acts --------------------------------------------------------------------------------

  private async finalAct(act: FinalAct): Promise<void> {
    this.slot.stats.scenario(`final:${act}`);
    switch (act) {
      case 'disc':
      case 'discMalformed':
        await this.drain();
        return this.disconnect(act === 'discMalformed');
      case 'interleavedDisc':
        return this.interleavedDisc();
      case 'hangup':
        await this.drain();
        this.wire.destroy();
        return;
      case 'hangupPending':
        return this.hangupPending();
      case 'fin':
        await this.drain();
        this.wire.end();
        return this.readUntilClosed('already');
      case 'badMagic':
      case 'random':
      case 'option':
        return this.garbage(act);
      case 'shortPayload':
      case 'longPayload':
      case 'truncatedWrite':
        await this.drain();
        return this.brokenWrite(act);
    }
  }

  /** DISC: no reply, the server finishes what is outstanding and closes ("There is no reply to an NBD_CMD_DISC"). */
  private async disconnect(malformed: boolean): Promise<void> {
    const header = newRequest(Cmd.DISC, this.cookie(), 0, 0);
    if (malformed) {
      header.flags = this.rng.below(0x10000);
      header.offset = this.rng.u64();
      header.length = this.rng.u32();
    }
    this.silent.set(header.cookie, describe(header));
    this.wire.note(`→ ${describe(header)}`);
    this.wire.requestEnd();
    this.slot.stats.requests += 1;
    await this.send([encodeRequest(header)]);
    return this.readUntilClosed('never');
  }

  /** Requests, then a hang-up before their replies: the server must cope with replies nobody reads. */
  private async hangupPending(): Promise<void> {
    const parts: Buffer[] = [];
    for (let count = this.rng.int(1, 32); count > 0; count -= 1)
      parts.push(...this.queue(this.build(this.rng.weighted(REQUEST_WEIGHTS)), false));
    await this.send(parts);
    this.wire.destroy();
    // Whatever was in flight may or may not have happened.
    this.forgetOutstanding();
    this.ended = true;
  }

  /** Requests, DISC, then requests the client must not send: all before DISC must still be answered. */
  private async interleavedDisc(): Promise<void> {
    const before: Buffer[] = [];
    for (let count = this.rng.int(1, 8); count > 0; count -= 1)
      before.push(...this.queue(this.build(this.rng.weighted(REQUEST_WEIGHTS)), true));
    const after: Buffer[] = [];
    for (let count = this.rng.int(1, 4); count > 0; count -= 1)
      after.push(...this.queue(this.validRead(), false));
    const header = newRequest(Cmd.DISC, this.cookie(), 0, 0);
    this.silent.set(header.cookie, describe(header));
    this.wire.note(`→ ${describe(header)} between requests`);
    this.wire.requestEnd();
    this.slot.stats.requests += 1;
    await this.send([...before, encodeRequest(header), ...after]);
    return this.readUntilClosed('never');
  }

  /** Bytes that break the framing; what is outstanding may be lost to the hard disconnect that follows. */
  private async garbage(act: 'badMagic' | 'random' | 'option'): Promise<void> {
    if (act === 'option' || this.rng.chance(0.5)) await this.drain();
    for (const entry of this.outstanding.values()) entry.mandatory = false;
    let bytes: Buffer;
    if (act === 'badMagic') {
      const header = this.readHeader();
      const encoded = encodeRequest(header);
      while (encoded.readUInt32BE(0) === REQUEST_MAGIC) this.rng.flipBits(encoded, 0, 4, 4);
      this.silent.set(header.cookie, `a request with bad magic ${hex(encoded.subarray(0, 4))}`);
      this.slot.stats.requests += 1;
      bytes = encoded;
    } else if (act === 'random') {
      bytes = this.rng.bytes(this.rng.int(1, 256));
      if (bytes.length >= 4 && bytes.readUInt32BE(0) === REQUEST_MAGIC)
        bytes[0] = (bytes[0] ?? 0) ^ 1;
      this.slot.stats.requests += 1;
    } else {
      bytes = encodeOption(Opt.GO, infoData(Buffer.from(this.session.export.name), []));
    }
    this.wire.note(`→ ${act} ${hex(bytes)}`);
    await this.send([bytes]);
    return this.readUntilClosed(act === 'badMagic' ? 'afterGrace' : 'now');
  }

  /** A WRITE whose payload is shorter or longer than its header says, or cut off by a hang-up. */
  private async brokenWrite(act: 'shortPayload' | 'longPayload' | 'truncatedWrite'): Promise<void> {
    const header = this.rng.chance(0.7) ? this.writeLike(Cmd.WRITE, 0) : this.badWrite();
    if (act === 'truncatedWrite' && this.rng.chance(0.3))
      header.length = this.rng.logSize(WRITE_PAYLOAD_CAP, U32_MAX);
    const payload = this.rng.bytes(Math.min(header.length, WRITE_PAYLOAD_CAP));
    const parts = this.queue({ header, payload: undefined }, false);
    const entry = this.outstanding.get(header.cookie);
    if (act === 'longPayload') {
      const extra = this.rng.bytes(this.rng.int(1, 64));
      if (extra.length >= 4 && extra.readUInt32BE(0) === REQUEST_MAGIC)
        extra[0] = (extra[0] ?? 0) ^ 1;
      if (entry) entry.payload = payload;
      await this.send([...parts, payload, extra]);
      this.wire.end();
      return this.readUntilClosed('already');
    }
    const sent = payload.subarray(0, this.rng.below(payload.length));
    if (entry)
      entry.mustNotSucceed = `only ${sent.length} of its ${header.length} payload bytes were sent`;
    this.silent.set(header.cookie, describe(header));
    await this.send([...parts, sent]);
    if (act === 'truncatedWrite' && this.rng.chance(0.5)) {
      this.wire.destroy();
      return;
    }
    this.wire.end();
    return this.readUntilClosed('already');
  }

  /** A WRITE the server must refuse: beyond the end, or with a flag it may not carry. */
  private badWrite(): RequestHeader {
    const header = this.writeLike(Cmd.WRITE, 0);
    if (this.rng.chance(0.5))
      header.offset = BigInt(this.session.sizeBytes - this.rng.below(header.length));
    else header.flags |= this.rng.pick([CFlag.DF, CFlag.REQ_ONE, CFlag.NO_HOLE, 1 << 9]);
    return header;
  }

  /**
   * Reads (and checks) whatever replies still come until the server closes. `fin` says whether the
   * fuzzer has half-closed already, does so now, does so after a grace period, or never does (after
   * DISC the server itself must close).
   */
  private async readUntilClosed(fin: 'already' | 'now' | 'afterGrace' | 'never'): Promise<void> {
    if (fin === 'now') this.wire.end();
    let finSent = fin === 'already' || fin === 'now';
    for (;;) {
      try {
        await this.readReply(fin === 'afterGrace' && !finSent ? CLOSE_GRACE_MS : undefined);
      } catch (error) {
        if (error instanceof PeerClosed) break;
        if (
          error instanceof ReadTimeout &&
          !finSent &&
          fin === 'afterGrace' &&
          this.wire.pendingBytes === 0
        ) {
          this.wire.end();
          finSent = true;
          continue;
        }
        throw this.asViolation(error);
      }
    }
    const missing = [...this.outstanding.values()].filter((entry) => entry.mandatory);
    if (missing.length > 0)
      throw new Violation(
        'reply missing',
        `connection closed before ${describe(missing[0]?.header)} was answered`,
      );
    this.forgetOutstanding();
    this.ended = true;
  }
}

function describe(header: RequestHeader | undefined): string {
  if (!header) return 'nothing';
  return `${commandName(header.type)} cookie ${header.cookie} flags 0x${header.flags.toString(16)} offset ${header.offset} length ${header.length}`;
}
