// Manager: receives segments, saves undo, applies and commits, serves views, restores and exports.
export { Manager, type Bookmark, type ManagerOptions, type ManagerStatus } from './manager.js';
export type { AgentStatus } from './agent-link.js';
export type { LogEntry, LogFilter } from './stored-history.js';
export type { StepRequest, StepResult } from './view-registry.js';
export type { RestoreSpec, RestorePlan, RestoreStatus } from './restore.js';
export type { ExportJob } from './image-export.js';
export { blockHistory, diff } from './queries.js';
export type { RetentionStatus, Simulation } from './retention.js';
export {
  policyFrom,
  policyText,
  DEFAULT_POLICY,
  type PolicyText,
  type RetentionPolicy,
} from './retention-policy.js';
