// Handshake fuzzing: one connection's option haggling. Valid negotiations (with harmless, unknown,
// malformed, mutated and oversized options along the way) end in transmission; hostile ones (bad
// magic, unknown client flags, truncated or absurdly long options, unknown or oversized EXPORT_NAME,
// ABORT, floods, random bytes) must end with the typed reply the spec names, or a close with no reply.
// Against a TLS server the same runs go through STARTTLS: before TLS under `require` every option
// but STARTTLS and ABORT must get ERR_TLS_REQD (EXPORT_NAME a close), after it the negotiation
// starts over and STARTTLS again is ERR_INVALID. Every reply is checked against the fuzzer's own
// reading of the spec.
import type tls from 'node:tls';
import type { Negotiated } from './nbd-fuzz-oracle.js';
import { Stats, Violation } from './nbd-fuzz-report.js';
import type { Rng } from './nbd-fuzz-rng.js';
import {
  BASE_ALLOCATION,
  CLIENT_FLAG_FIXED_NEWSTYLE,
  CLIENT_FLAG_NO_ZEROES,
  EXPORT_NAME_ZEROES_BYTES,
  GREETING_BYTES,
  HANDSHAKE_FLAG_FIXED_NEWSTYLE,
  INIT_MAGIC,
  Info,
  OPTION_MAGIC,
  OPTION_REPLY_HEADER_BYTES,
  OPTION_REPLY_MAGIC,
  Opt,
  PAYLOAD_NOT_DOS_BYTES,
  Rep,
  STRING_BYTES_MAX,
  TFlag,
  U32_MAX,
  isErrorReply,
  optionName,
  replyName,
} from './nbd-fuzz-spec.js';
import { PeerClosed, ReadTimeout, hex, type Wire } from './nbd-fuzz-wire.js';

export interface ExportInfo {
  name: string;
  sizeBytes: number;
  readOnly: boolean;
}

export interface ServedExports {
  all: readonly ExportInfo[];
  /** Served for the empty name "". */
  defaultName: string;
  writable: ExportInfo;
  readOnly: ExportInfo;
}

export interface Session extends Negotiated {
  export: ExportInfo;
}

/** How the target speaks TLS, and the credentials the fuzzer proves itself with. */
export interface FuzzTls {
  mode: 'on' | 'require';
  client: tls.ConnectionOptions;
}

/** Option data above this may also be refused with ERR_TOO_BIG (a valid INFO/GO/META request is smaller). */
const BIG_OPTION_BYTES = 8192;
/** Larger option replies than this are not something this server's exports can produce. */
const OPTION_REPLY_BYTES_MAX = 1 << 20;
/** How long a server that should close by itself gets before the fuzzer half-closes. */
const CLOSE_GRACE_MS = 250;

const ANY_ERROR: readonly number[] = [
  Rep.ERR_UNSUP,
  Rep.ERR_POLICY,
  Rep.ERR_INVALID,
  Rep.ERR_PLATFORM,
  Rep.ERR_UNKNOWN,
  Rep.ERR_TOO_BIG,
];
const INTERMEDIATES: ReadonlyMap<number, number> = new Map([
  [Opt.LIST, Rep.SERVER],
  [Opt.INFO, Rep.INFO],
  [Opt.GO, Rep.INFO],
  [Opt.LIST_META_CONTEXT, Rep.META_CONTEXT],
  [Opt.SET_META_CONTEXT, Rep.META_CONTEXT],
]);

// ---- encoding ------------------------------------------------------------------------------------

function u32(value: number): Buffer {
  const buffer = Buffer.allocUnsafe(4);
  buffer.writeUInt32BE(value >>> 0, 0);
  return buffer;
}

function u16(value: number): Buffer {
  const buffer = Buffer.allocUnsafe(2);
  buffer.writeUInt16BE(value & 0xffff, 0);
  return buffer;
}

export function encodeOption(
  option: number,
  data: Buffer,
  lengthBytes = data.length,
  magic = OPTION_MAGIC,
): Buffer {
  const header = Buffer.allocUnsafe(16);
  header.writeBigUInt64BE(magic, 0);
  header.writeUInt32BE(option >>> 0, 8);
  header.writeUInt32BE(lengthBytes >>> 0, 12);
  return Buffer.concat([header, data]);
}

function prefixed(bytes: Buffer): Buffer {
  return Buffer.concat([u32(bytes.length), bytes]);
}

export function infoData(name: Buffer, infoTypes: readonly number[]): Buffer {
  return Buffer.concat([prefixed(name), u16(infoTypes.length), ...infoTypes.map(u16)]);
}

function metaData(name: Buffer, queries: readonly Buffer[]): Buffer {
  return Buffer.concat([prefixed(name), u32(queries.length), ...queries.map(prefixed)]);
}

// ---- the oracle's own decoding of option data ------------------------------------------------------

interface InfoRequest {
  name: Buffer;
  infoTypes: number[];
}

interface MetaRequest {
  name: Buffer;
  queries: Buffer[];
}

function decodeInfo(data: Buffer): InfoRequest | undefined {
  if (data.length < 4) return undefined;
  const nameBytes = data.readUInt32BE(0);
  if (4 + nameBytes + 2 > data.length) return undefined;
  const count = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 4 + nameBytes + 2 + 2 * count) return undefined;
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index += 1)
    infoTypes.push(data.readUInt16BE(4 + nameBytes + 2 + 2 * index));
  return { name: data.subarray(4, 4 + nameBytes), infoTypes };
}

function decodeMeta(data: Buffer): MetaRequest | undefined {
  if (data.length < 4) return undefined;
  let position = 4 + data.readUInt32BE(0);
  if (position + 4 > data.length) return undefined;
  const name = data.subarray(4, position);
  const count = data.readUInt32BE(position);
  position += 4;
  const queries: Buffer[] = [];
  for (let index = 0; index < count; index += 1) {
    if (position + 4 > data.length) return undefined;
    const length = data.readUInt32BE(position);
    position += 4;
    if (position + length > data.length) return undefined;
    queries.push(data.subarray(position, position + length));
    position += length;
  }
  return position === data.length ? { name, queries } : undefined;
}

/**
 * A query whose handling the spec fixes: base:allocation, the base: wildcard when listing, or an unknown
 * namespace (which "the server MUST ignore"). Others (no namespace, unknown base: leaves) MAY be refused.
 */
function plainQuery(option: number, query: Buffer): boolean {
  if (!validString(query)) return false;
  const text = query.toString('utf8');
  const colon = text.indexOf(':');
  if (colon <= 0) return false;
  if (text.slice(0, colon) !== 'base') return true;
  return text === BASE_ALLOCATION || (text === 'base:' && option === Opt.LIST_META_CONTEXT);
}

/** A string the spec allows: UTF-8, no NUL, at most 4096 bytes. */
function validString(bytes: Buffer): boolean {
  return (
    bytes.length <= STRING_BYTES_MAX &&
    !bytes.includes(0) &&
    Buffer.from(bytes.toString('utf8'), 'utf8').equals(bytes)
  );
}

// ---- replies ---------------------------------------------------------------------------------------

interface OptionReply {
  type: number;
  payload: Buffer;
}

interface Expectation {
  finals: ReadonlySet<number>;
  /** The reply type that may come before the final one (SERVER, INFO or META_CONTEXT), if any. */
  intermediate: number | undefined;
  /** The server may close instead of answering (a denial-of-service sized request or a flood). */
  mayClose: boolean;
}

interface OptionOutcome {
  final: OptionReply;
  intermediates: OptionReply[];
}

type PreludeKind =
  | 'list'
  | 'info'
  | 'infoUnknown'
  | 'goUnknown'
  | 'goMalformed'
  | 'unknownOption'
  | 'starttls'
  | 'structured'
  | 'metaList'
  | 'metaSet'
  | 'oversizedName'
  | 'bigOption'
  | 'mutated';

const PRELUDE_WEIGHTS: Readonly<Record<PreludeKind, number>> = {
  list: 8,
  info: 10,
  infoUnknown: 6,
  goUnknown: 5,
  goMalformed: 5,
  unknownOption: 10,
  starttls: 4,
  structured: 14,
  metaList: 6,
  metaSet: 14,
  oversizedName: 3,
  bigOption: 2,
  mutated: 12,
};

export type HandshakeScenario =
  | 'valid'
  | 'badClientFlags'
  | 'truncatedClientFlags'
  | 'badOptionMagic'
  | 'truncatedOption'
  | 'absurdOptionLength'
  | 'exportNameUnknown'
  | 'exportNameOversized'
  | 'abort'
  | 'optionFlood'
  | 'randomBytes'
  | 'hangup'
  | 'pipelinedAfterGo';

export const HANDSHAKE_WEIGHTS: Readonly<Record<HandshakeScenario, number>> = {
  valid: 720,
  badClientFlags: 25,
  truncatedClientFlags: 15,
  badOptionMagic: 25,
  truncatedOption: 30,
  absurdOptionLength: 30,
  exportNameUnknown: 20,
  exportNameOversized: 15,
  abort: 30,
  optionFlood: 10,
  randomBytes: 30,
  hangup: 20,
  pipelinedAfterGo: 15,
};

/** One connection's handshake; `run` resolves with the session, or undefined when it ended there. */
export class HandshakeFuzzer {
  private structured = false;
  private fixed = true;
  private noZeroes = true;
  private lastSet: { name: Buffer; id: number | undefined } | undefined;
  private blockSizes: { minimum: number; maximum: number } | undefined;
  private tlsActive = false;

  constructor(
    private readonly wire: Wire,
    private readonly rng: Rng,
    private readonly exports: ServedExports,
    private readonly stats: Stats,
    private readonly tls?: FuzzTls,
  ) {}

  async run(scenario: HandshakeScenario): Promise<Session | undefined> {
    await this.readGreeting();
    this.stats.scenario(`handshake:${scenario}`);
    switch (scenario) {
      case 'valid':
        return this.valid();
      case 'pipelinedAfterGo':
        return this.pipelinedAfterGo();
      default:
        await this.hostile(scenario);
        return undefined;
    }
  }

  /** A clean negotiation: optionally structured replies, then GO (every reply still checked). */
  async negotiate(exportInfo: ExportInfo, structured: boolean): Promise<Session> {
    await this.readGreeting();
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    if (this.tls?.mode === 'require') await this.option(Opt.STARTTLS, Buffer.alloc(0));
    if (structured) await this.option(Opt.STRUCTURED_REPLY, Buffer.alloc(0));
    const session = await this.go(infoData(Buffer.from(exportInfo.name), [Info.BLOCK_SIZE]));
    if (!session)
      throw new Violation('handshake', `GO for ${exportInfo.name} did not enter transmission`);
    return session;
  }

  // ---- scenarios ---------------------------------------------------------------------------------

  private async valid(): Promise<Session | undefined> {
    const flagChoice = this.rng.below(10);
    this.fixed = flagChoice < 9;
    this.noZeroes = flagChoice < 6 || flagChoice === 9;
    this.sendClientFlags(
      (this.fixed ? CLIENT_FLAG_FIXED_NEWSTYLE : 0) | (this.noZeroes ? CLIENT_FLAG_NO_ZEROES : 0),
    );
    const target = this.pickTarget();
    if (!this.fixed && this.tls?.mode === 'require') {
      // TLS needs fixed newstyle, so such a client can only be refused.
      await this.closeWithoutReply('a client without fixed newstyle under TLS require', false);
      return undefined;
    }
    if (!this.fixed) return this.exportName(target);
    if (this.tls) await this.beforeTls(target);
    const preludes = this.rng.int(0, 5);
    for (let index = 0; index < preludes; index += 1) {
      const session = await this.prelude(this.rng.weighted(PRELUDE_WEIGHTS), target);
      if (session) return session;
    }
    // Under require a plain EXPORT_NAME would be closed: TLS first (unless a prelude did it).
    if (this.tls?.mode === 'require' && !this.tlsActive)
      await this.option(Opt.STARTTLS, Buffer.alloc(0));
    if (this.rng.chance(0.15)) return this.exportName(target);
    const infoTypes = this.rng.chance(0.3)
      ? [Info.BLOCK_SIZE, ...this.randomInfoTypes()]
      : this.randomInfoTypes();
    return this.go(infoData(target, infoTypes));
  }

  /**
   * Before TLS: under require, a few options that must all get ERR_TLS_REQD (or, for an oversized
   * one, ERR_TOO_BIG), then STARTTLS; under on, STARTTLS now half of the time.
   */
  private async beforeTls(target: Buffer): Promise<void> {
    if (this.tls?.mode === 'require') {
      for (let index = this.rng.int(0, 2); index > 0; index -= 1)
        await this.prelude(this.rng.weighted(PRELUDE_WEIGHTS), target);
      if (this.rng.chance(0.1)) await this.option(Opt.STARTTLS, this.rng.bytes(4)); // ERR_INVALID
    }
    if (!this.tlsActive && (this.tls?.mode === 'require' || this.rng.chance(0.5)))
      await this.option(Opt.STARTTLS, Buffer.alloc(0));
  }

  /** After STARTTLS was acknowledged: TLS on the wire, and nothing negotiated before it is kept. */
  private async startTls(): Promise<void> {
    if (!this.tls) throw new Violation('option reply', 'STARTTLS acknowledged by a NOTLS server');
    try {
      await this.wire.upgrade(this.tls.client);
    } catch (error) {
      throw new Violation(
        'tls',
        `TLS handshake after the STARTTLS ACK failed: ${error instanceof Error ? error.message : String(error)}`,
      );
    }
    this.wire.note('⇄ TLS started');
    this.stats.scenario('tls:started');
    this.tlsActive = true;
    this.structured = false;
    this.lastSet = undefined;
    this.blockSizes = undefined;
  }

  /** Under require before TLS, every option but STARTTLS and ABORT is ERR_TLS_REQD. */
  private get tlsRequiredNow(): boolean {
    return this.tls?.mode === 'require' && !this.tlsActive;
  }

  /** GO and, without waiting for its replies, an option the server reads in transmission as garbage. */
  private async pipelinedAfterGo(): Promise<undefined> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    if (this.tls?.mode === 'require') await this.option(Opt.STARTTLS, Buffer.alloc(0));
    const target = Buffer.from(this.exports.writable.name);
    this.send(Opt.GO, infoData(target, []));
    this.wire.write(encodeOption(Opt.LIST, Buffer.alloc(0)));
    this.wire.note('→ LIST right behind GO (before its replies), then FIN');
    this.stats.options += 1;
    // The server cannot act on the 16 bytes it reads as a request header: end the stream for it.
    this.wire.end();
    try {
      await this.replies(Opt.GO, {
        finals: new Set([Rep.ACK]),
        intermediate: Rep.INFO,
        mayClose: true,
      });
    } catch (error) {
      if (!(error instanceof PeerClosed)) throw error;
    }
    await this.closeWithoutReply('option bytes after GO');
    return undefined;
  }

  private async hostile(
    scenario: Exclude<HandshakeScenario, 'valid' | 'pipelinedAfterGo'>,
  ): Promise<void> {
    switch (scenario) {
      case 'badClientFlags':
        return this.badClientFlags();
      case 'truncatedClientFlags':
        this.wire.write(this.rng.bytes(this.rng.int(1, 3)));
        this.wire.end();
        return this.closeWithoutReply('truncated client flags');
      case 'badOptionMagic':
        return this.badOptionMagic();
      case 'truncatedOption':
        return this.truncatedOption();
      case 'absurdOptionLength':
        return this.absurdOptionLength();
      case 'exportNameUnknown':
        return this.exportNameRefused(Buffer.from(`missing-${this.rng.u32().toString(16)}`));
      case 'exportNameOversized':
        return this.exportNameRefused(
          Buffer.alloc(this.rng.int(STRING_BYTES_MAX + 1, 3 * STRING_BYTES_MAX), 'x'),
        );
      case 'abort':
        return this.abort();
      case 'optionFlood':
        return this.optionFlood();
      case 'randomBytes':
        return this.randomBytes();
      case 'hangup':
        return this.hangup();
    }
  }

  private async badClientFlags(): Promise<void> {
    const unknownBit = 1 << this.rng.int(2, 31);
    this.sendClientFlags((unknownBit | this.rng.below(4)) >>> 0);
    // "the server MUST close the TCP connection if it does not recognize the client's flags".
    await this.closeWithoutReply('unknown client flags', false);
  }

  private async badOptionMagic(): Promise<void> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    const message = encodeOption(Opt.LIST, Buffer.alloc(0));
    while (message.readBigUInt64BE(0) === OPTION_MAGIC) this.rng.flipBits(message, 0, 8, 3);
    this.wire.write(message);
    this.wire.note(`→ option with bad magic ${hex(message)}`);
    this.stats.options += 1;
    await this.closeWithoutReply('bad option magic', false);
  }

  private async truncatedOption(): Promise<void> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    const full = encodeOption(
      this.rng.pick([Opt.GO, Opt.INFO, Opt.LIST, Opt.SET_META_CONTEXT, 0x1234]),
      infoData(Buffer.from('v'), [1, 2]),
    );
    const cut = this.rng.int(1, full.length - 1);
    this.wire.write(full.subarray(0, cut));
    this.wire.note(`→ option cut after ${cut} of ${full.length} bytes, then FIN`);
    this.stats.options += 1;
    this.wire.end();
    await this.closeWithoutReply('truncated option');
  }

  private async absurdOptionLength(): Promise<void> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    const lengthBytes = this.rng.chance(0.3)
      ? U32_MAX - this.rng.below(16)
      : this.rng.logSize(1 << 20, U32_MAX);
    const option = this.rng.pick([
      Opt.GO,
      Opt.INFO,
      Opt.EXPORT_NAME,
      Opt.LIST,
      Opt.STRUCTURED_REPLY,
      0xdead,
    ]);
    this.wire.write(encodeOption(option, this.rng.bytes(this.rng.int(0, 512)), lengthBytes));
    this.wire.note(`→ ${optionName(option)} claiming ${lengthBytes} bytes of data, then FIN`);
    this.stats.options += 1;
    this.wire.end();
    await this.closeWithoutReply('absurd option length');
  }

  /** EXPORT_NAME cannot be refused with an error: the server "MUST terminate the session". */
  private async exportNameRefused(name: Buffer): Promise<void> {
    this.sendClientFlags(
      CLIENT_FLAG_FIXED_NEWSTYLE | (this.rng.chance(0.5) ? CLIENT_FLAG_NO_ZEROES : 0),
    );
    this.send(Opt.EXPORT_NAME, name);
    await this.closeWithoutReply(`EXPORT_NAME of ${name.length} bytes that names no export`, false);
  }

  private async abort(): Promise<void> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    const target = this.pickTarget();
    for (let index = this.rng.int(0, 2); index > 0; index -= 1)
      await this.prelude(
        this.rng.pick(['list', 'info', 'structured', 'unknownOption'] as const),
        target,
      );
    // "The server MUST reply with NBD_REP_ACK"; data with ABORT SHOULD be ignored.
    this.wire.requestEnd();
    await this.option(Opt.ABORT, this.rng.chance(0.2) ? this.rng.bytes(8) : Buffer.alloc(0));
    this.wire.end();
    await this.closeWithoutReply('after ABORT');
  }

  private async optionFlood(): Promise<void> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    const count = this.rng.int(33, 80);
    for (let index = 0; index < count; index += 1) {
      const option = this.rng.pick([Opt.LIST, 0x4000 + index, Opt.STARTTLS]);
      this.send(option, Buffer.alloc(0));
      try {
        const outcome = await this.replies(option, this.expect(option, Buffer.alloc(0), true));
        if (option === Opt.STARTTLS && outcome.final.type === Rep.ACK) await this.startTls();
      } catch (error) {
        // A server may end a flood it deems a denial of service: a close, never a wrong reply.
        if (error instanceof PeerClosed && this.wire.pendingBytes === 0) return;
        throw error;
      }
    }
    this.wire.end();
    await this.closeWithoutReply('after an option flood');
  }

  private async randomBytes(): Promise<void> {
    let bytes = this.rng.bytes(this.rng.int(1, 300));
    if (this.rng.chance(0.5)) bytes = Buffer.concat([u32(CLIENT_FLAG_FIXED_NEWSTYLE), bytes]);
    // Keep the garbage from being a valid option by accident.
    if (bytes.length >= 12 && bytes.readBigUInt64BE(4) === OPTION_MAGIC)
      bytes[4] = (bytes[4] ?? 0) ^ 1;
    this.wire.write(bytes);
    this.wire.note(`→ random bytes ${hex(bytes)}, then FIN`);
    this.wire.end();
    await this.closeWithoutReply('random bytes in the handshake');
  }

  private async hangup(): Promise<void> {
    this.sendClientFlags(CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES);
    const message = encodeOption(
      Opt.GO,
      infoData(Buffer.from(this.exports.writable.name), [Info.NAME]),
    );
    this.wire.write(message.subarray(0, this.rng.int(0, message.length - 1)));
    this.wire.note('→ part of a GO, then hang up');
    this.wire.destroy();
  }

  // ---- prelude options ---------------------------------------------------------------------------

  /** One option before the final GO; resolves with a session only if a mutated GO entered transmission. */
  private async prelude(kind: PreludeKind, target: Buffer): Promise<Session | undefined> {
    switch (kind) {
      case 'list':
        await this.option(Opt.LIST, this.rng.chance(0.1) ? this.rng.bytes(4) : Buffer.alloc(0));
        return undefined;
      case 'info':
        await this.option(Opt.INFO, infoData(this.randomKnownName(), this.randomInfoTypes()));
        return undefined;
      case 'infoUnknown':
      case 'goUnknown':
        await this.option(
          kind === 'infoUnknown' ? Opt.INFO : Opt.GO,
          infoData(this.unknownName(), this.randomInfoTypes()),
        );
        return undefined;
      case 'goMalformed':
        await this.option(Opt.GO, this.malformedInfo(target));
        return undefined;
      case 'unknownOption':
        await this.option(this.unknownOptionCode(), this.rng.bytes(this.rng.int(0, 64)));
        return undefined;
      case 'starttls':
        await this.option(Opt.STARTTLS, this.rng.chance(0.2) ? this.rng.bytes(3) : Buffer.alloc(0));
        return undefined;
      case 'structured':
        await this.option(
          Opt.STRUCTURED_REPLY,
          this.rng.chance(0.1) ? this.rng.bytes(2) : Buffer.alloc(0),
        );
        return undefined;
      case 'metaList':
      case 'metaSet':
        await this.option(
          kind === 'metaList' ? Opt.LIST_META_CONTEXT : Opt.SET_META_CONTEXT,
          metaData(this.metaName(target), this.randomQueries()),
        );
        return undefined;
      case 'oversizedName':
        await this.option(
          this.rng.pick([Opt.INFO, Opt.GO, Opt.SET_META_CONTEXT]),
          infoData(Buffer.alloc(this.rng.int(STRING_BYTES_MAX + 1, 9000), 'n'), []),
        );
        return undefined;
      case 'bigOption':
        await this.option(
          this.rng.pick([Opt.INFO, Opt.LIST, Opt.STRUCTURED_REPLY, this.unknownOptionCode()]),
          this.rng.bytes(this.rng.int(BIG_OPTION_BYTES + 1, 300 * 1024)),
        );
        return undefined;
      case 'mutated':
        return this.mutatedOption(target);
    }
  }

  /** A valid INFO/GO/META request with bits flipped in its data; the framing (length) is kept. */
  private async mutatedOption(target: Buffer): Promise<Session | undefined> {
    const option = this.rng.pick([Opt.INFO, Opt.GO, Opt.LIST_META_CONTEXT, Opt.SET_META_CONTEXT]);
    const data =
      option === Opt.INFO || option === Opt.GO
        ? infoData(target, this.randomInfoTypes())
        : metaData(target, this.randomQueries());
    this.rng.flipBits(data, 0, data.length, 4);
    if (option === Opt.GO) return this.go(data);
    await this.option(option, data);
    return undefined;
  }

  // ---- sending and judging options ----------------------------------------------------------------

  private sendClientFlags(flags: number): void {
    this.wire.write(u32(flags));
    this.wire.note(`→ client flags 0x${flags.toString(16)}`);
  }

  private send(option: number, data: Buffer): void {
    this.wire.write(encodeOption(option, data));
    this.wire.note(`→ ${optionName(option)} data ${hex(data, 24)}`);
    this.stats.options += 1;
  }

  /** Sends an option that must not end the handshake and checks its replies. */
  private async option(option: number, data: Buffer): Promise<void> {
    this.send(option, data);
    const outcome = await this.replies(option, this.expect(option, data, false));
    this.afterOption(option, data, outcome);
    if (option === Opt.STARTTLS && outcome.final.type === Rep.ACK) await this.startTls();
  }

  /** GO, whose ACK enters transmission; undefined when it was refused (as expected). */
  private async go(data: Buffer): Promise<Session | undefined> {
    this.send(Opt.GO, data);
    const outcome = await this.replies(Opt.GO, this.expect(Opt.GO, data, false));
    this.afterOption(Opt.GO, data, outcome);
    if (outcome.final.type !== Rep.ACK) return undefined;
    const request = decodeInfo(data);
    if (!request) throw new Violation('option reply', 'GO with malformed data was acknowledged');
    const exportInfo = this.resolve(request.name);
    if (!exportInfo)
      throw new Violation('option reply', 'GO for an unknown export was acknowledged');
    const info = outcome.intermediates
      .map((reply) => reply.payload)
      .find((payload) => payload.readUInt16BE(0) === Info.EXPORT);
    if (!info) throw new Violation('option reply', 'GO acknowledged without NBD_INFO_EXPORT');
    return this.session(exportInfo, request.name, info.readUInt16BE(10));
  }

  private async exportName(target: Buffer): Promise<Session | undefined> {
    this.send(Opt.EXPORT_NAME, target);
    if (this.tlsRequiredNow) {
      // "as this request cannot error, it MUST terminate the session".
      await this.closeWithoutReply('EXPORT_NAME before TLS under require', false);
      return undefined;
    }
    const exportInfo = this.resolve(target);
    if (!exportInfo) {
      await this.closeWithoutReply('EXPORT_NAME for an unknown export', false);
      return undefined;
    }
    const reply = await this.read(
      10 + (this.noZeroes ? 0 : EXPORT_NAME_ZEROES_BYTES),
      'EXPORT_NAME reply',
    );
    this.wire.note(`← EXPORT_NAME reply ${hex(reply, 10)}`);
    const sizeBytes = reply.readBigUInt64BE(0);
    if (sizeBytes !== BigInt(exportInfo.sizeBytes))
      throw new Violation(
        'export size',
        `EXPORT_NAME reported ${sizeBytes}, export has ${exportInfo.sizeBytes}`,
      );
    if (!this.noZeroes && reply.subarray(10).some((byte) => byte !== 0))
      throw new Violation('export name reply', 'the 124 reserved bytes are not zero');
    return this.session(exportInfo, target, reply.readUInt16BE(8));
  }

  /** The replies the spec allows to `option` with `data`, in the current negotiation state. */
  private expect(option: number, data: Buffer, flood: boolean): Expectation {
    const finals = new Set<number>(this.finalsFor(option, data));
    if (data.length > BIG_OPTION_BYTES) finals.add(Rep.ERR_TOO_BIG);
    return {
      finals,
      intermediate: INTERMEDIATES.get(option),
      mayClose: flood || data.length > PAYLOAD_NOT_DOS_BYTES,
    };
  }

  private finalsFor(option: number, data: Buffer): readonly number[] {
    // FORCEDTLS: "it MUST reply with NBD_REP_ERR_TLS_REQD if TLS has not been initiated".
    if (this.tlsRequiredNow && option !== Opt.STARTTLS && option !== Opt.ABORT)
      return [Rep.ERR_TLS_REQD];
    switch (option) {
      case Opt.ABORT:
        return [Rep.ACK];
      case Opt.LIST:
        // "the server SHOULD reject a request that includes data with NBD_REP_ERR_INVALID".
        return data.length > 0 ? [Rep.ERR_INVALID] : [Rep.ACK];
      case Opt.STRUCTURED_REPLY:
        if (data.length > 0) return [Rep.ERR_INVALID];
        // A repeated request MAY be failed with ERR_INVALID.
        return this.structured ? [Rep.ACK, Rep.ERR_INVALID] : [Rep.ACK];
      case Opt.STARTTLS:
        if (!this.tls)
          // "MUST respond with NBD_REP_ERR_POLICY ..., NBD_REP_ERR_UNSUP ... or another error explicitly permitted".
          return data.length > 0
            ? [Rep.ERR_POLICY, Rep.ERR_UNSUP, Rep.ERR_INVALID]
            : [Rep.ERR_POLICY, Rep.ERR_UNSUP];
        // "The client MUST NOT send any additional data"; once TLS runs, "MUST reply with ERR_INVALID".
        if (data.length > 0 || this.tlsActive) return [Rep.ERR_INVALID];
        return [Rep.ACK];
      case Opt.INFO:
      case Opt.GO:
        return this.infoFinals(data);
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT:
        return this.metaFinals(option, data);
      default:
        // "NBD_REP_ERR_UNSUP to mark use of an option not known by this server". That includes the
        // withdrawn PEEK_EXPORT and EXTENDED_HEADERS, which this fuzzer (like the server) does not speak.
        return [Rep.ERR_UNSUP];
    }
  }

  private infoFinals(data: Buffer): readonly number[] {
    const request = decodeInfo(data);
    if (!request) return [Rep.ERR_INVALID];
    if (request.name.length > 0 && !validString(request.name)) return ANY_ERROR;
    return this.resolve(request.name) ? [Rep.ACK] : [Rep.ERR_UNKNOWN];
  }

  private metaFinals(option: number, data: Buffer): readonly number[] {
    const request = decodeMeta(data);
    // "If the option request is syntactically invalid ... the server MUST fail the request with NBD_REP_ERR_INVALID".
    if (!request) return [Rep.ERR_INVALID];
    if (!this.resolve(request.name)) return ANY_ERROR;
    // Without structured replies, or with semantically invalid queries, the server MAY fail with ERR_INVALID.
    const semanticsOpen =
      !this.structured || request.queries.some((query) => !plainQuery(option, query));
    return semanticsOpen ? [Rep.ACK, Rep.ERR_INVALID] : [Rep.ACK];
  }

  private async replies(option: number, expectation: Expectation): Promise<OptionOutcome> {
    const intermediates: OptionReply[] = [];
    for (;;) {
      const reply = await this.readOptionReply(option, expectation);
      if (reply.type === expectation.intermediate) {
        intermediates.push(reply);
        continue;
      }
      if (!expectation.finals.has(reply.type)) {
        const allowed = [...expectation.finals].map(replyName).join(' or ');
        throw new Violation(
          'option reply',
          `${optionName(option)} answered ${replyName(reply.type)}, the spec allows ${allowed}`,
        );
      }
      if (isErrorReply(reply.type)) {
        this.stats.optionError(replyName(reply.type));
        if (intermediates.length > 0 && reply.type === Rep.ERR_UNKNOWN) {
          throw new Violation(
            'option reply',
            `${optionName(option)} sent information before ERR_UNKNOWN`,
          );
        }
      }
      return { final: reply, intermediates };
    }
  }

  private async readOptionReply(option: number, expectation: Expectation): Promise<OptionReply> {
    let header: Buffer;
    try {
      header = await this.read(OPTION_REPLY_HEADER_BYTES, `reply to ${optionName(option)}`);
    } catch (error) {
      if (error instanceof Violation && expectation.mayClose && this.wire.isClosed)
        throw new PeerClosed(this.wire.pendingBytes);
      throw error;
    }
    if (header.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC)
      throw new Violation('option reply', `bad reply magic ${hex(header)}`);
    const echoed = header.readUInt32BE(8);
    if (echoed !== option >>> 0)
      throw new Violation('option reply', `reply names option ${echoed}, sent ${option}`);
    const type = header.readUInt32BE(12);
    const lengthBytes = header.readUInt32BE(16);
    if (lengthBytes > OPTION_REPLY_BYTES_MAX)
      throw new Violation('option reply', `reply of ${lengthBytes} bytes`);
    const payload = await this.read(lengthBytes, `payload of ${replyName(type)}`);
    this.wire.note(`← ${replyName(type)} for ${optionName(option)} ${hex(payload, 24)}`);
    this.checkReplyPayload(type, payload);
    return { type, payload };
  }

  private checkReplyPayload(type: number, payload: Buffer): void {
    if (isErrorReply(type) && payload.length > STRING_BYTES_MAX)
      throw new Violation('option reply', 'error message longer than 4096 bytes');
    const minimum =
      type === Rep.SERVER || type === Rep.META_CONTEXT ? 4 : type === Rep.INFO ? 2 : 0;
    if (payload.length < minimum)
      throw new Violation('option reply', `${replyName(type)} payload of ${payload.length} bytes`);
    if (type === Rep.SERVER && payload.readUInt32BE(0) > payload.length - 4)
      throw new Violation('option reply', 'REP_SERVER name length beyond its payload');
    if (type === Rep.ACK && payload.length !== 0)
      throw new Violation('option reply', 'ACK with a payload');
  }

  /** Semantic checks once an option's replies are complete, and what they change. */
  private afterOption(option: number, data: Buffer, outcome: OptionOutcome): void {
    const acked = outcome.final.type === Rep.ACK;
    if (option === Opt.STRUCTURED_REPLY && acked) this.structured = true;
    if (option === Opt.LIST && acked) this.checkList(outcome.intermediates);
    if ((option === Opt.INFO || option === Opt.GO) && acked)
      this.checkInfo(data, outcome.intermediates);
    if (option === Opt.LIST_META_CONTEXT || option === Opt.SET_META_CONTEXT)
      this.afterMeta(option, data, outcome);
  }

  private checkList(servers: readonly OptionReply[]): void {
    const listed = servers
      .map((reply) => reply.payload.subarray(4, 4 + reply.payload.readUInt32BE(0)).toString('utf8'))
      .sort();
    const served = this.exports.all.map((exportInfo) => exportInfo.name).sort();
    if (listed.join('\n') !== served.join('\n'))
      throw new Violation(
        'option reply',
        `LIST returned [${listed.join(', ')}], served are [${served.join(', ')}]`,
      );
  }

  private checkInfo(data: Buffer, infos: readonly OptionReply[]): void {
    const request = decodeInfo(data);
    const exportInfo = request && this.resolve(request.name);
    if (!exportInfo)
      throw new Violation('option reply', 'INFO/GO acknowledged for an export that does not exist');
    let sawExport = false;
    for (const { payload } of infos) {
      const infoType = payload.readUInt16BE(0);
      if (infoType === Info.EXPORT) {
        sawExport = true;
        this.checkInfoExport(exportInfo, payload);
      }
      if (infoType === Info.BLOCK_SIZE) this.checkBlockSize(payload);
    }
    if (!sawExport) throw new Violation('option reply', 'ACK without NBD_INFO_EXPORT');
  }

  private checkInfoExport(exportInfo: ExportInfo, payload: Buffer): void {
    if (payload.length !== 12)
      throw new Violation('option reply', `NBD_INFO_EXPORT of ${payload.length} bytes`);
    const sizeBytes = payload.readBigUInt64BE(2);
    if (sizeBytes !== BigInt(exportInfo.sizeBytes))
      throw new Violation(
        'export size',
        `INFO reported ${sizeBytes}, export ${exportInfo.name} has ${exportInfo.sizeBytes}`,
      );
    this.checkTransmissionFlags(exportInfo, payload.readUInt16BE(10));
  }

  private checkBlockSize(payload: Buffer): void {
    if (payload.length !== 14)
      throw new Violation('option reply', `NBD_INFO_BLOCK_SIZE of ${payload.length} bytes`);
    const minimum = payload.readUInt32BE(2);
    const preferred = payload.readUInt32BE(6);
    const maximum = payload.readUInt32BE(10);
    const powerOfTwo = (value: number): boolean => value > 0 && (value & (value - 1)) === 0;
    const sane =
      powerOfTwo(minimum) &&
      powerOfTwo(preferred) &&
      preferred >= minimum &&
      maximum >= minimum &&
      (maximum === U32_MAX || maximum % minimum === 0);
    if (!sane)
      throw new Violation(
        'option reply',
        `block sizes min ${minimum} preferred ${preferred} max ${maximum}`,
      );
    this.blockSizes = { minimum, maximum };
  }

  private checkTransmissionFlags(exportInfo: ExportInfo, flags: number): void {
    if ((flags & TFlag.HAS_FLAGS) === 0)
      throw new Violation('transmission flags', `0x${flags.toString(16)} lacks HAS_FLAGS`);
    if (((flags & TFlag.READ_ONLY) !== 0) !== exportInfo.readOnly) {
      throw new Violation(
        'transmission flags',
        `READ_ONLY is ${(flags & TFlag.READ_ONLY) !== 0} for ${exportInfo.name}`,
      );
    }
    if ((flags & TFlag.SEND_DF) !== 0 && !this.structured)
      throw new Violation('transmission flags', 'SEND_DF without structured replies');
  }

  private afterMeta(option: number, data: Buffer, outcome: OptionOutcome): void {
    const request = decodeMeta(data);
    const acked = outcome.final.type === Rep.ACK;
    let selectedId: number | undefined;
    for (const { payload } of outcome.intermediates) {
      const name = payload.subarray(4).toString('utf8');
      if (!name.startsWith('base:'))
        throw new Violation('option reply', `context "${name}" matches no query`);
      if (option === Opt.SET_META_CONTEXT) {
        const queried =
          request?.queries.some(
            (query) => query.toString('utf8') === name || query.toString('utf8') === 'base:',
          ) ?? false;
        if (!queried)
          throw new Violation(
            'option reply',
            `SET_META_CONTEXT selected "${name}", which was not asked for`,
          );
        if (name === BASE_ALLOCATION) selectedId = payload.readUInt32BE(0);
      }
    }
    // The final SET decides: on failure or without base:allocation nothing is selected.
    if (option === Opt.SET_META_CONTEXT)
      this.lastSet = { name: Buffer.from(request?.name ?? []), id: acked ? selectedId : undefined };
  }

  // ---- helpers -----------------------------------------------------------------------------------

  private session(exportInfo: ExportInfo, usedName: Buffer, transmissionFlags: number): Session {
    this.checkTransmissionFlags(exportInfo, transmissionFlags);
    return {
      export: exportInfo,
      sizeBytes: exportInfo.sizeBytes,
      transmissionFlags,
      structured: this.structured,
      ...this.contextFor(usedName),
      minimumBlockBytes: this.blockSizes?.minimum ?? 1,
      maximumPayloadBytes: this.blockSizes?.maximum ?? PAYLOAD_NOT_DOS_BYTES,
    };
  }

  /** The spec ties a context to "the same export name used to enter transmission phase". */
  private contextFor(usedName: Buffer): Pick<Session, 'context' | 'contextId'> {
    const set = this.lastSet;
    if (!set || set.id === undefined || !this.structured)
      return { context: 'no', contextId: undefined };
    if (set.name.equals(usedName)) return { context: 'yes', contextId: set.id };
    const sameExport =
      this.resolve(set.name) !== undefined && this.resolve(set.name) === this.resolve(usedName);
    return sameExport
      ? { context: 'maybe', contextId: set.id }
      : { context: 'no', contextId: undefined };
  }

  private resolve(name: Buffer): ExportInfo | undefined {
    const wanted = name.length === 0 ? this.exports.defaultName : name.toString('utf8');
    if (name.length > 0 && !validString(name)) return undefined;
    return this.exports.all.find((exportInfo) => exportInfo.name === wanted);
  }

  private pickTarget(): Buffer {
    const choice = this.rng.below(20);
    if (choice < 12) return Buffer.from(this.exports.writable.name);
    if (choice < 17) return Buffer.from(this.exports.readOnly.name);
    return Buffer.alloc(0);
  }

  private randomKnownName(): Buffer {
    return this.rng.chance(0.2)
      ? Buffer.alloc(0)
      : Buffer.from(this.rng.pick(this.exports.all).name);
  }

  private unknownName(): Buffer {
    const choice = this.rng.below(4);
    if (choice === 0) return Buffer.from(`${this.exports.writable.name}-missing`);
    if (choice === 1) return Buffer.from(`${this.exports.writable.name}\u0000`);
    if (choice === 2) return Buffer.from([0xff, 0xfe, 0x76]);
    return Buffer.from(`nope-${this.rng.u32().toString(36)}`);
  }

  private metaName(target: Buffer): Buffer {
    return this.rng.chance(0.75) ? target : this.randomKnownName();
  }

  private randomInfoTypes(): number[] {
    const count = this.rng.int(0, 4);
    const types: number[] = [];
    for (let index = 0; index < count; index += 1)
      types.push(this.rng.chance(0.8) ? this.rng.int(0, 3) : this.rng.below(0x10000));
    return types;
  }

  private randomQueries(): Buffer[] {
    const pool = [
      BASE_ALLOCATION,
      BASE_ALLOCATION,
      'base:',
      'fuzz:thing',
      'nocolon',
      'base:allocation:extra',
      '',
    ];
    const count = this.rng.int(0, 3);
    const queries: Buffer[] = [];
    for (let index = 0; index < count; index += 1) queries.push(Buffer.from(this.rng.pick(pool)));
    return queries;
  }

  private unknownOptionCode(): number {
    const choice = this.rng.below(4);
    if (choice === 0) return this.rng.pick([0, Opt.PEEK_EXPORT, Opt.EXTENDED_HEADERS]);
    if (choice === 1) return this.rng.int(12, 0xffff);
    return this.rng.int(0x10000, U32_MAX);
  }

  /** INFO/GO data whose inner lengths disagree with the option length. */
  private malformedInfo(target: Buffer): Buffer {
    const data = infoData(target, this.randomInfoTypes());
    const choice = this.rng.below(3);
    if (choice === 0) data.writeUInt32BE(target.length + this.rng.int(1, 1000), 0);
    if (choice === 1) return Buffer.concat([data, this.rng.bytes(this.rng.int(1, 3))]);
    if (choice === 2) return data.subarray(0, this.rng.int(0, data.length - 1));
    return data;
  }

  private async readGreeting(): Promise<void> {
    const greeting = await this.read(GREETING_BYTES, 'greeting');
    if (
      greeting.readBigUInt64BE(0) !== INIT_MAGIC ||
      greeting.readBigUInt64BE(8) !== OPTION_MAGIC
    ) {
      throw new Violation('greeting', `unexpected greeting ${hex(greeting)}`);
    }
    if ((greeting.readUInt16BE(16) & HANDSHAKE_FLAG_FIXED_NEWSTYLE) === 0)
      throw new Violation('greeting', 'server does not offer fixed newstyle');
  }

  private async read(lengthBytes: number, what: string): Promise<Buffer> {
    try {
      return await this.wire.read(lengthBytes);
    } catch (error) {
      if (error instanceof PeerClosed)
        throw new Violation(
          'unexpected disconnect',
          `server closed the connection while the fuzzer waited for the ${what}`,
        );
      if (error instanceof ReadTimeout)
        throw new Violation('hang', `no ${what} within ${error.timeoutMs} ms`);
      throw error;
    }
  }

  /**
   * The connection must end with nothing more from the server. When `halfClosed` is false the fuzzer
   * first gives the server a moment to close by itself (it should, after such input), then sends FIN.
   */
  async closeWithoutReply(what: string, halfClosed = true): Promise<void> {
    if (!halfClosed) {
      try {
        await this.wire.waitClosed(CLOSE_GRACE_MS);
      } catch (error) {
        if (!(error instanceof ReadTimeout)) throw error;
        this.wire.end();
      }
    }
    try {
      await this.wire.waitClosed();
    } catch (error) {
      if (error instanceof ReadTimeout)
        throw new Violation(
          'hang',
          `server kept the connection open ${error.timeoutMs} ms after ${what} and a FIN`,
        );
      throw error;
    }
    if (this.wire.pendingBytes > 0) {
      const unexpected = await this.wire.read(this.wire.pendingBytes);
      throw new Violation(
        'reply to unanswerable input',
        `server sent ${hex(unexpected)} after ${what}`,
      );
    }
  }
}
