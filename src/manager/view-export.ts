// The NBD face of one volume of a view: read-only for snapshots, writable into the overlay for
// clones. Reads are synchronous so that none can straddle a transaction being applied. An operating
// error (a file cut short, a disk error) is answered EIO and logged; a programmer error crashes.
import { assert, errorMessage, rethrowIfBug, type LogFunction } from '../core/index.js';
import {
  NbdErrno,
  type BlockStatusCallback,
  type DoneCallback,
  type ExportBackend,
  type ReadCallback,
} from '../nbd/index.js';
import type { Overlay } from '../views/index.js';
import type { View } from '../views/index.js';

export class ViewExport implements ExportBackend {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly multiConn = true; // no per-connection cache; FLUSH syncs the shared overlay
  private readonly view: View;
  private readonly volume: number;
  private readonly log: LogFunction;

  constructor(
    view: View,
    options: { volume: number; name: string; sizeBytes: number; log: LogFunction },
  ) {
    this.view = view;
    this.volume = options.volume;
    this.name = options.name;
    this.sizeBytes = options.sizeBytes;
    this.log = options.log;
    this.readOnly = view.kind === 'snapshot';
    this.description = `${view.kind} ${view.name} at seq ${view.seq}`;
  }

  private get overlay(): Overlay {
    const overlay = this.view.overlays?.[this.volume];
    assert(overlay !== undefined, 'writes reach clones only');
    return overlay;
  }

  read(offsetBytes: number, lengthBytes: number, done: ReadCallback): void {
    let data: Buffer;
    try {
      data = this.view.read(this.volume, offsetBytes, lengthBytes);
    } catch (error) {
      rethrowIfBug(error);
      this.failed('read', offsetBytes, lengthBytes, error);
      return done(NbdErrno.EIO);
    }
    done(0, data);
  }

  write(offsetBytes: number, data: Buffer, fua: boolean, done: DoneCallback): void {
    this.guarded(() => this.overlay.write(offsetBytes, data), fua, done);
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void {
    this.guarded(() => this.overlay.zero(offsetBytes, lengthBytes), fua, done);
  }

  trim(offsetBytes: number, lengthBytes: number, fua: boolean, done: DoneCallback): void {
    this.guarded(() => this.overlay.zero(offsetBytes, lengthBytes), fua, done);
  }

  flush(done: DoneCallback): void {
    this.guarded(() => undefined, true, done);
  }

  private guarded(work: () => void, sync: boolean, done: DoneCallback): void {
    try {
      work();
    } catch (error) {
      rethrowIfBug(error);
      this.failed('write', -1, 0, error);
      return done(NbdErrno.EIO);
    }
    if (!sync) return done(0);
    this.overlay.flush().then(
      () => done(0),
      (error: unknown) => {
        rethrowIfBug(error);
        this.failed('flush', -1, 0, error);
        done(NbdErrno.EIO);
      },
    );
  }

  private failed(what: string, offsetBytes: number, lengthBytes: number, error: unknown): void {
    const where = offsetBytes >= 0 ? ` at ${offsetBytes} (${lengthBytes} bytes)` : '';
    this.log('error', `${this.name}: ${what}${where} failed, answered EIO: ${errorMessage(error)}`);
  }

  blockStatus(offsetBytes: number, lengthBytes: number, done: BlockStatusCallback): void {
    const pieces = this.view.zeroPieces(this.volume, offsetBytes, lengthBytes);
    done(
      0,
      pieces.map((p) => ({ lengthBytes: p.lengthBytes, flags: p.zero ? 3 : 0 })),
    );
  }
}
