// Platform: the Node implementations of disk access (the only module touching node:fs directly).
export * from './files.js';
export * from './lock.js';
export * from './devices.js';
