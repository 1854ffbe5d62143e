// Option haggling of the fixed newstyle handshake: decodes each option, decides the replies and
// whether the connection continues, aborts, closes, starts TLS or enters transmission, and who may
// use which export (TLS mode and access rules). No sockets here.
import type { AccessPolicy, Peer, TlsMode } from './access.js';
import type { ExportBackend, ExportRegistry } from './backend.js';
import {
  BASE_ALLOCATION,
  ClientFlag,
  CLIENT_FLAGS_KNOWN,
  InfoType,
  Option,
  OptionReply,
  STRING_BYTES_MAX,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContext,
  encodeOptionReply,
  encodeServerEntry,
  encodeString,
  optionName,
  type BlockSizes,
  type OptionErrorReply,
} from './protocol.js';
import { transmissionFlagsFor, type Session } from './transmission.js';

/** Context id the server hands out for base:allocation after SET_META_CONTEXT. */
export const ALLOCATION_CONTEXT_ID = 1;

export type OptionOutcome =
  | { kind: 'continue'; replies: Buffer[] }
  | { kind: 'abort'; replies: Buffer[] }
  | { kind: 'close'; reason: string }
  /** The ACK goes out in plain text, then the TLS handshake starts; haggling restarts after it. */
  | { kind: 'starttls'; replies: Buffer[] }
  | { kind: 'transmission'; replies: Buffer[]; session: Session };

export interface HandshakeContext {
  registry: ExportRegistry;
  blockSizes: BlockSizes;
  maxPayloadBytes: number;
  tlsMode: TlsMode;
  access: AccessPolicy;
  /** What the client proved: `plain` until STARTTLS, then fixed for the connection. */
  peer: Peer;
  isShuttingDown(): boolean;
}

/** True when the client flags hold only bits the server knows (otherwise the server must close). */
export function clientFlagsValid(clientFlags: number): boolean {
  return (clientFlags & ~CLIENT_FLAGS_KNOWN) === 0;
}

/**
 * Why a client with these flags cannot be served in this TLS mode, or null. TLS needs the fixed
 * newstyle handshake (the spec keeps other clients in NOTLS mode), so under `require` such a
 * client could only ever be refused: it is closed at once.
 */
export function clientFlagsRefusal(clientFlags: number, tlsMode: TlsMode): string | null {
  if (tlsMode === 'require' && (clientFlags & ClientFlag.FIXED_NEWSTYLE) === 0)
    return 'TLS is required and the client does not speak the fixed newstyle handshake';
  return null;
}

/** Bounds-checked reader over one option's data; every read returns undefined past the end. */
class OptionReader {
  private positionBytes = 0;
  constructor(private readonly data: Buffer) {}

  get remainingBytes(): number {
    return this.data.length - this.positionBytes;
  }

  u16(): number | undefined {
    if (this.remainingBytes < 2) return undefined;
    const value = this.data.readUInt16BE(this.positionBytes);
    this.positionBytes += 2;
    return value;
  }

  u32(): number | undefined {
    if (this.remainingBytes < 4) return undefined;
    const value = this.data.readUInt32BE(this.positionBytes);
    this.positionBytes += 4;
    return value;
  }

  /** A u32-length-prefixed string of at most STRING_BYTES_MAX bytes. */
  string(): string | undefined {
    const lengthBytes = this.u32();
    if (
      lengthBytes === undefined ||
      lengthBytes > STRING_BYTES_MAX ||
      lengthBytes > this.remainingBytes
    )
      return undefined;
    const text = this.data.toString('utf8', this.positionBytes, this.positionBytes + lengthBytes);
    this.positionBytes += lengthBytes;
    return text;
  }
}

interface InfoRequest {
  exportName: string;
  infoTypes: number[];
}

interface MetaRequest {
  exportName: string;
  queries: string[];
}

function decodeInfoRequest(data: Buffer): InfoRequest | undefined {
  const reader = new OptionReader(data);
  const exportName = reader.string();
  const count = reader.u16();
  if (exportName === undefined || count === undefined || reader.remainingBytes !== count * 2)
    return undefined;
  const infoTypes: number[] = [];
  for (let index = 0; index < count; index += 1) infoTypes.push(reader.u16() ?? 0);
  return { exportName, infoTypes };
}

function decodeMetaRequest(data: Buffer): MetaRequest | undefined {
  const reader = new OptionReader(data);
  const exportName = reader.string();
  const count = reader.u32();
  // Each query needs at least its 4-byte length, which bounds the loop by the data already held.
  if (exportName === undefined || count === undefined || count * 4 > reader.remainingBytes)
    return undefined;
  const queries: string[] = [];
  for (let index = 0; index < count; index += 1) {
    const query = reader.string();
    if (query === undefined) return undefined;
    queries.push(query);
  }
  if (reader.remainingBytes !== 0) return undefined;
  return { exportName, queries };
}

export class Handshake {
  readonly noZeroes: boolean;
  private readonly fixedNewstyle: boolean;
  private structuredReplies = false;
  /** base:allocation selected by the last SET_META_CONTEXT, for this export name only. */
  private allocationSelectedFor: string | undefined;

  constructor(
    private readonly context: HandshakeContext,
    clientFlags: number,
  ) {
    this.noZeroes = (clientFlags & ClientFlag.NO_ZEROES) !== 0;
    this.fixedNewstyle = (clientFlags & ClientFlag.FIXED_NEWSTYLE) !== 0;
  }

  /** Handles one complete option; `data` has already been bounded by the caller. */
  handleOption(option: number, data: Buffer): OptionOutcome {
    if (option === Option.ABORT)
      return { kind: 'abort', replies: [encodeOptionReply(option, OptionReply.ACK)] };
    if (this.tlsRequired() && option !== Option.STARTTLS) return this.beforeTls(option);
    if (option === Option.EXPORT_NAME) return this.exportName(data);
    if (this.context.isShuttingDown())
      return this.error(option, OptionReply.ERR_SHUTDOWN, 'server is shutting down');
    switch (option) {
      case Option.LIST:
        return this.list(option, data);
      case Option.INFO:
      case Option.GO:
        return this.infoOrGo(option, data);
      case Option.STRUCTURED_REPLY:
        return this.structuredReply(option, data);
      case Option.LIST_META_CONTEXT:
      case Option.SET_META_CONTEXT:
        return this.metaContext(option, data);
      case Option.STARTTLS:
        return this.startTls(option, data);
      case Option.EXTENDED_HEADERS:
        return this.error(option, OptionReply.ERR_UNSUP, 'extended headers are not supported');
      default:
        return this.error(
          option,
          OptionReply.ERR_UNSUP,
          `option ${optionName(option)} is not supported`,
        );
    }
  }

  /** Reply for an option whose data exceeded the limit (its data was skipped, not read). */
  tooBig(option: number): OptionOutcome {
    return this.error(option, OptionReply.ERR_TOO_BIG, 'option data too long');
  }

  /** FORCEDTLS: before TLS, every option but STARTTLS and ABORT is refused. */
  private tlsRequired(): boolean {
    return this.context.tlsMode === 'require' && this.context.peer.kind === 'plain';
  }

  private beforeTls(option: number): OptionOutcome {
    // EXPORT_NAME cannot be answered with an error: the spec says terminate.
    if (option === Option.EXPORT_NAME)
      return { kind: 'close', reason: 'EXPORT_NAME without TLS while TLS is required' };
    return this.error(
      option,
      OptionReply.ERR_TLS_REQD,
      'TLS is required on this server: negotiate STARTTLS first (an nbds:// URI)',
    );
  }

  private startTls(option: number, data: Buffer): OptionOutcome {
    if (data.length !== 0)
      return this.error(option, OptionReply.ERR_INVALID, 'STARTTLS takes no data');
    if (this.context.tlsMode === 'off')
      return this.error(option, OptionReply.ERR_POLICY, 'TLS is off on this server');
    if (!this.fixedNewstyle)
      return this.error(option, OptionReply.ERR_POLICY, 'TLS needs the fixed newstyle handshake');
    if (this.context.peer.kind !== 'plain')
      return this.error(option, OptionReply.ERR_INVALID, 'TLS is already active');
    return { kind: 'starttls', replies: [encodeOptionReply(option, OptionReply.ACK)] };
  }

  private error(option: number, replyType: OptionErrorReply, message: string): OptionOutcome {
    const payload = encodeString(message);
    return { kind: 'continue', replies: [encodeOptionReply(option, replyType, payload)] };
  }

  private resolve(exportName: string): ExportBackend | undefined {
    const name = exportName === '' ? this.context.registry.defaultName() : exportName;
    return name === undefined ? undefined : this.context.registry.get(name);
  }

  private refusal(backend: ExportBackend): string | null {
    return this.context.registry.refusal?.(backend.name) ?? null;
  }

  private decide(backend: ExportBackend): ReturnType<AccessPolicy['decide']> {
    return this.context.access.decide(backend.name, this.context.peer);
  }

  private sessionFor(backend: ExportBackend): Session {
    const selected = this.allocationSelectedFor === backend.name;
    return {
      backend,
      transmissionFlags: transmissionFlagsFor(backend, this.structuredReplies),
      structuredReplies: this.structuredReplies,
      allocationContextId: selected ? ALLOCATION_CONTEXT_ID : undefined,
      maxPayloadBytes: this.context.maxPayloadBytes,
    };
  }

  /** The old path: no way to send an error, so anything wrong closes the connection. */
  private exportName(data: Buffer): OptionOutcome {
    if (this.context.isShuttingDown())
      return { kind: 'close', reason: 'EXPORT_NAME while shutting down' };
    if (data.length > STRING_BYTES_MAX)
      return { kind: 'close', reason: 'EXPORT_NAME name too long' };
    const exportName = data.toString('utf8');
    const backend = this.resolve(exportName);
    if (!backend)
      return { kind: 'close', reason: `EXPORT_NAME for unknown export "${exportName}"` };
    const decision = this.decide(backend);
    if (decision.kind !== 'allowed')
      return { kind: 'close', reason: `EXPORT_NAME refused: ${decision.reason}` };
    const refusal = this.refusal(backend);
    if (refusal !== null) return { kind: 'close', reason: `EXPORT_NAME refused: ${refusal}` };
    const session = this.sessionFor(backend);
    const reply = encodeExportNameReply(
      backend.sizeBytes,
      session.transmissionFlags,
      this.noZeroes,
    );
    return { kind: 'transmission', replies: [reply], session };
  }

  private list(option: number, data: Buffer): OptionOutcome {
    if (data.length !== 0) return this.error(option, OptionReply.ERR_INVALID, 'LIST takes no data');
    // Exports this client may not use are left out (the spec allows it for TLS-only exports).
    const replies = this.context.registry
      .list()
      .filter((backend) => this.decide(backend).kind === 'allowed')
      .map((backend) =>
        encodeOptionReply(
          option,
          OptionReply.SERVER,
          encodeServerEntry(backend.name, backend.description),
        ),
      );
    replies.push(encodeOptionReply(option, OptionReply.ACK));
    return { kind: 'continue', replies };
  }

  private infoOrGo(option: number, data: Buffer): OptionOutcome {
    const request = decodeInfoRequest(data);
    if (!request) return this.error(option, OptionReply.ERR_INVALID, 'malformed INFO/GO request');
    const backend = this.resolve(request.exportName);
    if (!backend)
      return this.error(option, OptionReply.ERR_UNKNOWN, `unknown export "${request.exportName}"`);
    const decision = this.decide(backend);
    if (decision.kind === 'tls-required')
      return this.error(option, OptionReply.ERR_TLS_REQD, decision.reason);
    if (decision.kind === 'refused')
      return this.error(option, OptionReply.ERR_POLICY, decision.reason);
    const refusal = this.refusal(backend);
    if (refusal !== null) return this.error(option, OptionReply.ERR_POLICY, refusal);
    const session = this.sessionFor(backend);
    const replies = this.infoReplies(option, backend, session, request.infoTypes);
    replies.push(encodeOptionReply(option, OptionReply.ACK));
    if (option === Option.GO) return { kind: 'transmission', replies, session };
    return { kind: 'continue', replies };
  }

  /**
   * INFO_EXPORT always; NAME, DESCRIPTION, BLOCK_SIZE when asked for (each once); others ignored.
   */
  private infoReplies(
    option: number,
    backend: ExportBackend,
    session: Session,
    infoTypes: number[],
  ): Buffer[] {
    const info = (payload: Buffer): Buffer => encodeOptionReply(option, OptionReply.INFO, payload);
    const replies = [info(encodeInfoExport(backend.sizeBytes, session.transmissionFlags))];
    for (const infoType of new Set(infoTypes)) {
      if (infoType === InfoType.NAME)
        replies.push(info(encodeInfoString(InfoType.NAME, backend.name)));
      if (infoType === InfoType.DESCRIPTION && backend.description !== '') {
        replies.push(info(encodeInfoString(InfoType.DESCRIPTION, backend.description)));
      }
      if (infoType === InfoType.BLOCK_SIZE)
        replies.push(info(encodeInfoBlockSize(this.context.blockSizes)));
    }
    return replies;
  }

  private structuredReply(option: number, data: Buffer): OptionOutcome {
    if (data.length !== 0)
      return this.error(option, OptionReply.ERR_INVALID, 'STRUCTURED_REPLY takes no data');
    this.structuredReplies = true;
    return { kind: 'continue', replies: [encodeOptionReply(option, OptionReply.ACK)] };
  }

  /**
   * LIST lists (zero queries: everything; "base:" is a wildcard); SET selects exact names only and
   * replaces the previous selection, even when it fails. Unknown namespaces are ignored.
   */
  private metaContext(option: number, data: Buffer): OptionOutcome {
    const isSet = option === Option.SET_META_CONTEXT;
    if (isSet) this.allocationSelectedFor = undefined;
    if (!this.structuredReplies) {
      return this.error(option, OptionReply.ERR_INVALID, 'meta contexts need structured replies');
    }
    const request = decodeMetaRequest(data);
    if (!request)
      return this.error(option, OptionReply.ERR_INVALID, 'malformed meta context request');
    const backend = this.resolve(request.exportName);
    if (!backend)
      return this.error(option, OptionReply.ERR_UNKNOWN, `unknown export "${request.exportName}"`);
    // ERR_TLS_REQD is only for INFO, GO and EXPORT_NAME; here a TLS-only export is a refusal.
    const decision = this.decide(backend);
    if (decision.kind !== 'allowed')
      return this.error(option, OptionReply.ERR_POLICY, decision.reason);
    const matches = isSet
      ? request.queries.some((query) => query === BASE_ALLOCATION)
      : request.queries.length === 0 ||
        request.queries.some((query) => query === 'base:' || query === BASE_ALLOCATION);
    const replies: Buffer[] = [];
    if (matches) {
      // LIST replies carry id 0 (reserved); SET hands out the id BLOCK_STATUS replies will use.
      const contextId = isSet ? ALLOCATION_CONTEXT_ID : 0;
      replies.push(
        encodeOptionReply(
          option,
          OptionReply.META_CONTEXT,
          encodeMetaContext(contextId, BASE_ALLOCATION),
        ),
      );
      if (isSet) this.allocationSelectedFor = backend.name;
    }
    replies.push(encodeOptionReply(option, OptionReply.ACK));
    return { kind: 'continue', replies };
  }
}
