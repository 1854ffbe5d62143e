// The shapes of the HTTP API's answers as the console reads them (docs/CLI.md, docs/CONSOLE.md).
// Kept here rather than imported from the server so that the page's bundle holds no server code.

export interface LogEntry {
  seq: number;
  time: string;
  volume: string;
  /** `thinned`: ranges written somewhere in seqFirst..seq, kept by retention as one point. */
  kind: 'write' | 'zero' | 'trim' | 'thinned';
  offset: number;
  length: number;
  resync: boolean;
  seqFirst?: number;
}

export interface RestoreStatus {
  id: number;
  state: 'running' | 'done' | 'failed';
  volumes: string[];
  seq: number;
  source: string;
  bytesTotal: number;
  bytesDone: number;
  seqBefore: number | null;
  seqLast: number | null;
  message: string | null;
  startedAt: string;
  finishedAt: string | null;
}

export interface ExportJob {
  id: number;
  volume: string;
  seq: number;
  file: string;
  state: 'running' | 'done' | 'failed';
  bytesTotal: number;
  bytesDone: number;
  bytesWritten: number;
  sha256: string | null;
  message: string | null;
}

export interface ViewInfo {
  name: string;
  kind: 'snapshot' | 'clone';
  seq: number;
  exports: string[];
}

export interface Overview {
  volumeSet: { id: string | null; name: string | null };
  agentConnected: boolean;
  seqCaptured: number;
  seqCommitted: number;
  lagWrites: number;
  lagSeconds: number;
  lastCommittedTime: string | null;
  spoolBytes: number;
  sealedPending: number;
  mode: string;
  resyncing: boolean;
  failure: string | null;
  offline: { restore: number; volumes: string[] } | null;
  transactions: number;
  journalBytes: number;
  volumes: {
    name: string;
    sizeBytes: number;
    offline: boolean;
    writesCaptured: number | null;
    bytesCaptured: number | null;
  }[];
  views: ViewInfo[];
  bookmarks: number;
  restores: RestoreStatus[];
  exports: ExportJob[];
}

export interface CommitEvent {
  idx: number;
  kind: string;
  seqFirst: number;
  seqLast: number;
  writes: number;
  fromUs: number;
  toUs: number;
  applyMs: number | null;
}

export interface TimelineWrite extends LogEntry {
  timeUs: number;
}

export interface Timeline {
  fromUs: number;
  toUs: number;
  bucketUs: number;
  writes: number[];
  bytes: number[];
  exact: boolean;
  resolution: 'transactions' | 'writes';
  seqFirst: number | null;
  seqLast: number | null;
  writesTotal: number;
  list: TimelineWrite[] | null;
  transactions: {
    idx: number;
    kind: string;
    seqFirst: number;
    seqLast: number;
    fromUs: number;
    toUs: number;
    writes: number;
  }[];
  transactionsTruncated: boolean;
  bookmarks: { name: string; seq: number; timeUs: number }[];
  gaps: { seqFirst: number; seqLast: number | null; fromUs: number; toUs: number | null }[];
  thinned: {
    seqFirst: number;
    seqLast: number;
    fromUs: number;
    toUs: number;
    tier: string | null;
  }[];
  restores: {
    id: number;
    state: string;
    volumes: string[];
    seq: number;
    seqBefore: number | null;
    seqLast: number | null;
    fromUs: number;
    toUs: number | null;
  }[];
  history: { firstUs: number | null; lastUs: number | null; seqCommitted: number };
}

export interface Bookmark {
  name: string;
  seq: number;
  time: string;
}

export interface ResolvedPoint {
  seq: number;
  /** Capture time of the write at seq; null for seq 0 (before the first write). */
  time: string | null;
}

export interface RestorePlan {
  seq: number;
  asOfSeq: number;
  source: string;
  /** `clients`: NBD clients connected to the volume now (null: the agent has not said). */
  volumes: {
    volume: string;
    ranges: { offset: number; length: number }[];
    bytes: number;
    clients: number | null;
  }[];
  bytes: number;
}

export interface BlockMap {
  volume: string;
  fromSeq: number;
  toSeq: number;
  sizeBytes: number;
  cellBytes: number;
  writes: number[];
  bytes: number[];
  changedBytes: number;
  ranges: number;
  writesTotal: number;
}

export interface StepResult {
  from: number;
  to: number;
  crossed: LogEntry[];
}

export interface Info {
  role: 'up' | 'manager';
  nbd: { host: string; port: number } | null;
  /** The only directory image exports write to; a relative file name goes inside it. */
  exportDir?: string;
}
