// Manager: receives segments, saves undo, applies and commits, serves views, restores and exports.
export { Manager, type ManagerOptions, type AgentStatus, type LogEntry } from './manager.js';
export type { RestoreSpec, RestorePlan, RestoreStatus } from './restore.js';
export type { ExportJob } from './image-export.js';
export { blockHistory, diff } from './queries.js';
