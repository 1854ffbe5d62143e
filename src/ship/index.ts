// Agent <-> manager link: frames, messages and the constant-time token check.
export * from './protocol.js';
