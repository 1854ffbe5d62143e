// The main thread's side of the apply worker (apply-worker.ts): one worker thread, requests
// answered as they finish (a sync waiting for its fdatasync lets the next undo run), errors
// carried back with their codes (ENOSPC stays ENOSPC, so a full disk is still backpressure). A
// worker that dies is replaced on the next request.
import { Worker } from 'node:worker_threads';
import { rethrowIfBug, reviveError, RewindError } from '../core/index.js';
import type { RedoRecord, UndoHeader } from '../log/index.js';
import type { UndoResult } from './apply.js';
import type { ApplyRequest, ApplyResponse, ReplicaRef } from './apply-messages.js';
import { ApplyHandler } from './apply-handler.js';
import type { ReplicaVolume } from './replica.js';

type Pending = { resolve: (response: ApplyResponse) => void; reject: (error: Error) => void };

/** Where the manager's undo building and replica writes run. */
export interface Applier {
  /** Builds and durably saves the undo segment of `records` (see saveUndo). */
  saveUndo(
    file: string,
    header: UndoHeader,
    records: readonly RedoRecord[],
    replicas: readonly ReplicaVolume[],
  ): Promise<UndoResult>;
  /**
   * Writes the redo segment in `redoFile` (`redoBytes` long) to the replicas, not yet durably (see
   * writeRedo).
   */
  writeRedo(
    redoFile: string,
    redoBytes: number,
    records: readonly RedoRecord[],
    replicas: readonly ReplicaVolume[],
  ): Promise<void>;
  /** Makes the replicas durable (fdatasync); another request may run meanwhile. */
  syncReplicas(replicas: readonly ReplicaVolume[]): Promise<void>;
  /**
   * Merges undo files (oldest first) into `file`, earliest before-image first (retention), and
   * writes its view index to `indexFile`, so the main thread never handles the merged extents.
   * The result's `extents` is empty.
   */
  mergeUndo(
    inputs: readonly string[],
    file: string,
    indexFile: string,
    header: UndoHeader,
    volumeCount: number,
  ): Promise<UndoResult>;
  close(): Promise<void>;
}

/**
 * The same work on the calling thread. The deterministic simulation uses it: its disk, clock and
 * scheduler live on the main thread, and a worker would escape all three.
 */
export class InThreadApply implements Applier {
  private readonly handler = new ApplyHandler();
  private nextId = 1;

  async saveUndo(
    file: string,
    header: UndoHeader,
    records: readonly RedoRecord[],
    replicas: readonly ReplicaVolume[],
  ): Promise<UndoResult> {
    const response = await this.handler.handle({
      id: this.nextId++,
      type: 'undo',
      file,
      header,
      records,
      replicas: replicas.map(refOf),
    });
    if (!response.undo)
      throw new Error('the apply handler answered an undo request without a result');
    return response.undo;
  }

  async writeRedo(
    redoFile: string,
    redoBytes: number,
    records: readonly RedoRecord[],
    replicas: readonly ReplicaVolume[],
  ): Promise<void> {
    await this.handler.handle({
      id: this.nextId++,
      type: 'apply',
      redoFile,
      redoBytes,
      records,
      replicas: replicas.map(refOf),
    });
  }

  async syncReplicas(replicas: readonly ReplicaVolume[]): Promise<void> {
    await this.handler.handle({ id: this.nextId++, type: 'sync', replicas: replicas.map(refOf) });
  }

  async mergeUndo(
    inputs: readonly string[],
    file: string,
    indexFile: string,
    header: UndoHeader,
    volumeCount: number,
  ): Promise<UndoResult> {
    const response = await this.handler.handle({
      id: this.nextId++,
      type: 'merge',
      inputs,
      file,
      indexFile,
      header,
      volumeCount,
    });
    if (!response.undo) throw new Error('the apply handler answered a merge without a result');
    return response.undo;
  }

  async close(): Promise<void> {
    await this.handler.handle({ id: this.nextId++, type: 'close' });
  }
}

export class ApplyWorker implements Applier {
  private worker: Worker | undefined;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();
  /** The worker thread's nice value (Linux nice is per thread; 0 leaves it as the process's). */
  private readonly nice: number;

  constructor(options: { nice?: number } = {}) {
    this.nice = options.nice ?? 0;
  }

  async saveUndo(
    file: string,
    header: UndoHeader,
    records: readonly RedoRecord[],
    replicas: readonly ReplicaVolume[],
  ): Promise<UndoResult> {
    const response = await this.request({
      type: 'undo',
      file,
      header,
      records,
      replicas: replicas.map(refOf),
    });
    if (!response.undo) throw new Error('apply worker answered an undo request without a result');
    return response.undo;
  }

  async writeRedo(
    redoFile: string,
    redoBytes: number,
    records: readonly RedoRecord[],
    replicas: readonly ReplicaVolume[],
  ): Promise<void> {
    await this.request({
      type: 'apply',
      redoFile,
      redoBytes,
      records,
      replicas: replicas.map(refOf),
    });
  }

  async syncReplicas(replicas: readonly ReplicaVolume[]): Promise<void> {
    await this.request({ type: 'sync', replicas: replicas.map(refOf) });
  }

  async mergeUndo(
    inputs: readonly string[],
    file: string,
    indexFile: string,
    header: UndoHeader,
    volumeCount: number,
  ): Promise<UndoResult> {
    const response = await this.request({
      type: 'merge',
      inputs,
      file,
      indexFile,
      header,
      volumeCount,
    });
    if (!response.undo) throw new Error('apply worker answered a merge without a result');
    return response.undo;
  }

  async close(): Promise<void> {
    const worker = this.worker;
    if (!worker) return;
    try {
      await this.request({ type: 'close' });
    } catch (error) {
      rethrowIfBug(error); // a worker that already stopped has nothing left to close
    }
    this.worker = undefined;
    await worker.terminate();
  }

  private request(body: DistributiveOmit<ApplyRequest, 'id'>): Promise<ApplyResponse> {
    const worker = this.worker ?? this.spawn();
    const id = this.nextId++;
    return new Promise<ApplyResponse>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref(); // a request in flight keeps the process alive; an idle worker does not
      worker.postMessage({ ...body, id });
    }).then((response) => {
      if (response.error) throw reviveError(response.error, 'the apply worker');
      return response;
    });
  }

  private spawn(): Worker {
    const worker = new Worker(new URL('./apply-worker.js', import.meta.url), {
      workerData: { nice: this.nice },
    });
    worker.unref();
    worker.on('message', (response: ApplyResponse) => {
      const waiter = this.pending.get(response.id);
      this.pending.delete(response.id);
      if (this.pending.size === 0) worker.unref();
      waiter?.resolve(response);
    });
    const lost = (why: string): void => {
      if (this.worker === worker) this.worker = undefined;
      const error = new RewindError('REWIND_IO', `the apply worker stopped: ${why}`);
      for (const waiter of this.pending.values()) waiter.reject(error);
      this.pending.clear();
    };
    worker.on('error', (error) => lost(error.message));
    worker.on('exit', (code) => lost(`exit code ${code}`));
    this.worker = worker;
    return worker;
  }
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;

function refOf(replica: ReplicaVolume): ReplicaRef {
  return { index: replica.index, file: replica.file, ino: replica.ino, alloc: replica.allocShared };
}
