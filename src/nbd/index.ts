// NBD module: the server, the backend contract it serves, an in-memory backend, and wire constants.
export * from './backend.js';
export { NbdServer, type NbdServerOptions, type ListenAddress } from './server.js';
export type { LogFunction, LogLevel } from './connection.js';
export { MemoryBackend, MemoryRegistry, MEMORY_CHUNK_BYTES } from './memory-backend.js';
export type { MemoryBackendOptions, MemoryBackendStats } from './memory-backend.js';
export * as nbdProtocol from './protocol.js';
