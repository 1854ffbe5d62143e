// Platform: the Node implementations of disk access and file permissions (node:fs lives here).
export * from './files.js';
export * from './lock.js';
export * from './devices.js';
export * from './permissions.js';
