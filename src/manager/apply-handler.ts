// What the apply worker does with one request, apart from the thread it runs on: the worker thread
// (apply-worker.ts) calls it for the manager, and the deterministic simulation calls it on the
// main thread (InThreadApply in apply-pool.ts), where the simulated disk and clock live.
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import { assert, bitGet, RewindError } from '../core/index.js';
import { mapFile } from '../platform/index.js';
import { saveUndo, syncReplicas, writeRedo, type ReplicaTarget } from './apply.js';
import { mergeUndos } from './retention-merge.js';
import { writeIndexFile } from './txfiles.js';
import type { ApplyRequest, ApplyResponse, ReplicaRef } from './apply-messages.js';

export class ApplyHandler {
  /**
   * Own handles of the replica files, by path; reopened when the file at the path is another one.
   */
  private readonly handles = new Map<string, { fd: number; ino: number }>();

  private target(ref: ReplicaRef): ReplicaTarget {
    let handle = this.handles.get(ref.file);
    if (handle && handle.ino !== ref.ino) {
      fs.closeSync(handle.fd);
      handle = undefined;
    }
    if (!handle) {
      const fd = fs.openSync(ref.file, 'r+');
      handle = { fd, ino: fs.fstatSync(fd).ino };
      assert(handle.ino === ref.ino, `replica ${ref.file} is the file the manager opened`);
      this.handles.set(ref.file, handle);
    }
    const bits = new Uint8Array(ref.alloc);
    return {
      index: ref.index,
      file: ref.file,
      fd: handle.fd,
      chunkMayHoldData: (chunk) => bitGet(bits, chunk),
    };
  }

  async handle(request: ApplyRequest): Promise<ApplyResponse> {
    switch (request.type) {
      case 'undo': {
        // Buffers arrive as plain Uint8Arrays (structured clone).
        const header = { ...request.header, volumeSetId: Buffer.from(request.header.volumeSetId) };
        const result = await saveUndo(
          request.file,
          header,
          request.records,
          request.replicas.map((ref) => this.target(ref)),
        );
        return { id: request.id, undo: result };
      }
      case 'apply': {
        // Mapped, not read: a copy of the whole segment cost about a third of the apply's turn.
        const buf = mapFile(request.redoFile) ?? (await fsp.readFile(request.redoFile));
        if (buf.length !== request.redoBytes) {
          throw new RewindError(
            'REWIND_SEGMENT_CORRUPT',
            `${request.redoFile} holds ${buf.length} bytes; its transaction was stored with ${request.redoBytes}`,
          );
        }
        await writeRedo(
          buf,
          request.records,
          request.replicas.map((ref) => this.target(ref)),
        );
        return { id: request.id };
      }
      case 'merge': {
        const header = { ...request.header, volumeSetId: Buffer.from(request.header.volumeSetId) };
        const merged = await mergeUndos(request.inputs, request.file, header, request.volumeCount);
        // The index is a cache (verified against the files when loaded): a failure to write it
        // only means the first view over this transaction parses the undo in full.
        writeIndexFile(request.indexFile, header.segmentIndex, undefined, request.file, {
          records: [],
          undo: merged.extents,
        });
        return { id: request.id, undo: { ...merged, extents: [] } };
      }
      case 'sync':
        // Runs beside the next transaction's undo (the fdatasync waits in the threadpool).
        await syncReplicas(request.replicas.map((ref) => this.target(ref)));
        return { id: request.id };
      case 'close':
        for (const { fd } of this.handles.values()) fs.closeSync(fd);
        this.handles.clear();
        return { id: request.id };
    }
  }
}
