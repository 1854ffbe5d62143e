// Runtime: assembles the processes (`rewind up`, `rewind agent`, `rewind manager`).
export * from './up.js';
export * from './nbd-serving.js';
