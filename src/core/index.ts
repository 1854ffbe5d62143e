// Core: assertions, typed errors, units, checksums, time. Imported by every other module.
export * from './assert.js';
export * from './errors.js';
export * from './units.js';
export * from './checksum.js';
export * from './time.js';
export * from './crash.js';
export * from './log.js';
export * from './bits.js';
