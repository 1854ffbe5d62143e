// A plain, one-request-at-a-time NBD client for the fuzzer's own bookkeeping: writing the canaries,
// liveness probes (a fresh handshake and READ), and reading whole exports back for the final checks.
import { newRequest, encodeRequest } from './nbd-fuzz-oracle.js';
import {
  HandshakeFuzzer,
  type ExportInfo,
  type FuzzTls,
  type ServedExports,
  type Session,
} from './nbd-fuzz-handshake.js';
import { Stats, Violation } from './nbd-fuzz-report.js';
import { Rng } from './nbd-fuzz-rng.js';
import {
  CFlag,
  CHUNK_HEADER_BYTES,
  Chunk,
  Cmd,
  REPLY_FLAG_DONE,
  SIMPLE_REPLY_BYTES,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  errnoName,
} from './nbd-fuzz-spec.js';
import { Wire } from './nbd-fuzz-wire.js';

export interface Endpoint {
  host: string;
  port: number;
}

/** Largest single READ/WRITE the client issues (well below the portable 32 MiB maximum). */
const PIECE_BYTES = 4 * 1024 * 1024;

export class PlainClient {
  private cookie = 1n;

  private constructor(
    private readonly wire: Wire,
    readonly session: Session,
  ) {}

  static async open(
    endpoint: Endpoint,
    timeoutMs: number,
    exports: ServedExports,
    exportInfo: ExportInfo,
    structured: boolean,
    tls?: FuzzTls,
  ): Promise<PlainClient> {
    const wire = await Wire.connect(endpoint.host, endpoint.port, timeoutMs);
    try {
      const handshake = new HandshakeFuzzer(wire, new Rng(0), exports, new Stats(), tls);
      return new PlainClient(wire, await handshake.negotiate(exportInfo, structured));
    } catch (error) {
      wire.destroy();
      throw error;
    }
  }

  async read(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const parts: Buffer[] = [];
    for (let done = 0; done < lengthBytes; done += PIECE_BYTES)
      parts.push(
        await this.readPiece(offsetBytes + done, Math.min(PIECE_BYTES, lengthBytes - done)),
      );
    return Buffer.concat(parts);
  }

  async write(offsetBytes: number, data: Buffer): Promise<void> {
    for (let done = 0; done < data.length; done += PIECE_BYTES) {
      const piece = data.subarray(done, done + PIECE_BYTES);
      const header = newRequest(
        Cmd.WRITE,
        this.cookie++,
        offsetBytes + done,
        piece.length,
        CFlag.FUA,
      );
      this.wire.write(Buffer.concat([encodeRequest(header), piece]));
      await this.expectDone(header.cookie, 'WRITE');
    }
  }

  async flush(): Promise<void> {
    const header = newRequest(Cmd.FLUSH, this.cookie++, 0, 0);
    this.wire.write(encodeRequest(header));
    await this.expectDone(header.cookie, 'FLUSH');
  }

  /** DISC, then the server must close without a reply. */
  async disconnect(): Promise<void> {
    this.wire.write(encodeRequest(newRequest(Cmd.DISC, this.cookie++, 0, 0)));
    try {
      await this.wire.waitClosed();
    } finally {
      this.wire.destroy();
    }
    if (this.wire.pendingBytes > 0)
      throw new Violation('reply to unanswerable request', 'server answered DISC');
  }

  destroy(): void {
    this.wire.destroy();
  }

  private async readPiece(offsetBytes: number, lengthBytes: number): Promise<Buffer> {
    const header = newRequest(Cmd.READ, this.cookie++, offsetBytes, lengthBytes);
    this.wire.write(encodeRequest(header));
    if (!this.session.structured) {
      await this.expectDone(header.cookie, 'READ');
      return this.wire.read(lengthBytes);
    }
    const data = Buffer.alloc(lengthBytes);
    for (;;) {
      const chunk = await this.wire.read(CHUNK_HEADER_BYTES);
      const payload = await this.wire.read(chunk.readUInt32BE(16));
      const type = chunk.readUInt16BE(6);
      if (
        chunk.readUInt32BE(0) !== STRUCTURED_REPLY_MAGIC ||
        chunk.readBigUInt64BE(8) !== header.cookie
      )
        throw new Violation('structured reply', 'unexpected chunk for a plain READ');
      if (type === Chunk.OFFSET_DATA)
        payload.copy(data, Number(payload.readBigUInt64BE(0)) - offsetBytes, 8);
      else if (type !== Chunk.OFFSET_HOLE && type !== Chunk.NONE)
        throw new Violation(
          'plain READ failed',
          `chunk type ${type} reading ${lengthBytes} bytes at ${offsetBytes}`,
        );
      if ((chunk.readUInt16BE(4) & REPLY_FLAG_DONE) !== 0) return data;
    }
  }

  private async expectDone(cookie: bigint, what: string): Promise<void> {
    const reply = await this.wire.read(SIMPLE_REPLY_BYTES);
    const errno = reply.readUInt32BE(4);
    if (
      reply.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC ||
      reply.readBigUInt64BE(8) !== cookie ||
      errno !== 0
    ) {
      throw new Violation(
        `plain ${what} failed`,
        `reply magic 0x${reply.readUInt32BE(0).toString(16)}, ${errnoName(errno)}`,
      );
    }
  }
}
