// Manager: receives segments, saves undo, applies and commits, serves views, restores and exports.
export {
  Manager,
  type Bookmark,
  type CommitEvent,
  type ManagerOptions,
  type ManagerStatus,
} from './manager.js';
export type { AgentStatus } from './agent-link.js';
export type { LogEntry, LogFilter } from './stored-history.js';
export type { StepRequest, StepResult } from './view-registry.js';
export type { RestoreSpec, RestorePlan, RestoreStatus } from './restore.js';
export type { ExportJob } from './image-export.js';
export { blockHistory, diff } from './queries.js';
export type { RetentionStatus, Simulation } from './retention.js';
export {
  Archiver,
  ARCHIVE_BATCH_BYTES_DEFAULT,
  ARCHIVE_BATCH_MS_DEFAULT,
  type ArchiveSettings,
  type ArchiveStatus,
} from './archiving.js';
export type { ArchiveFullRow, ArchiveObjectRow, ArchiveTxRow } from './catalog.js';
export {
  FULL_EVERY_MS_DEFAULT,
  FULL_FIRST_DELAY_MS,
  type FullProgress,
  type FullResult,
} from './full-images.js';
export type { FullsStatus } from './manager.js';
export {
  archivePolicyFrom,
  archivePolicyText,
  DEFAULT_ARCHIVE_POLICY,
  type ArchivePolicy,
} from './archive-retention-policy.js';
export type { ArchiveRetentionStatus } from './archive-retention.js';
export type { OldPointPlan, FetchProgress } from './old-points.js';
export type { VerifyProblem, VerifyProgress, VerifyResult } from './archive-verify.js';
export { rebuildFromArchive, type RebuildProgress, type RebuildResult } from './archive-rebuild.js';
export {
  parseDuration,
  policyFrom,
  policyText,
  DEFAULT_POLICY,
  type PolicyText,
  type RetentionPolicy,
} from './retention-policy.js';
export {
  Timeline,
  TIMELINE_BUCKETS_MAX,
  TIMELINE_WRITES_MAX,
  LOG_PAGE_MAX,
  BLOCKMAP_CELLS_MAX,
  type TimelineAnswer,
  type TimelineHistory,
  type TimelineCatalog,
  type RecordColumns,
  type LogPage,
  type RangeHistoryPage,
  type BlockMap,
} from './timeline.js';
export type { TxRow, TxKind, ApiTokenRow, AuditRow } from './catalog.js';
export { parsePoint, type Point } from './points.js';
