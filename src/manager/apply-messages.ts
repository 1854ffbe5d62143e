// The messages between the manager's main thread and its apply worker (apply-pool.ts and
// apply-worker.ts / apply-handler.ts): requests by id, each answered once, errors as data.
import type { SerializedError } from '../core/index.js';
import type { RedoRecord, UndoHeader } from '../log/index.js';
import type { UndoResult } from './apply.js';

export interface ReplicaRef {
  index: number;
  file: string;
  ino: number;
  /** The replica's allocation bitmap (shared memory, written by the main thread only). */
  alloc: SharedArrayBuffer;
}

export type ApplyRequest =
  | {
      id: number;
      type: 'undo';
      file: string;
      header: UndoHeader;
      records: readonly RedoRecord[];
      replicas: ReplicaRef[];
    }
  | {
      id: number;
      type: 'apply';
      redoFile: string;
      redoBytes: number;
      records: readonly RedoRecord[];
      replicas: ReplicaRef[];
    }
  | { id: number; type: 'sync'; replicas: ReplicaRef[] }
  | {
      id: number;
      type: 'merge';
      inputs: readonly string[];
      file: string;
      indexFile: string;
      header: UndoHeader;
      volumeCount: number;
    }
  | { id: number; type: 'close' };

export type ApplyResponse = { id: number; undo?: UndoResult; error?: SerializedError };
