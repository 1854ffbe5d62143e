// Log formats: redo segments (captured writes) and undo segments (overwritten replica bytes).
export * from './redo.js';
export * from './undo.js';
export * from './names.js';
