// NBD module: the server, the backend contract it serves, an in-memory backend, wire constants,
// and its security: TLS settings, PSK files and per-export access rules.
export * from './backend.js';
export {
  NbdServer,
  checkServerSecurity,
  type NbdServerOptions,
  type ListenAddress,
  type UnixListenOptions,
} from './server.js';
export type { LogFunction, LogLevel } from './connection.js';
export { MemoryBackend, MemoryRegistry, MEMORY_CHUNK_BYTES } from './memory-backend.js';
export type { MemoryBackendOptions, MemoryBackendStats } from './memory-backend.js';
export {
  AccessPolicy,
  TLS_MODES,
  describePeer,
  parseAccessRule,
  type AccessDecision,
  type AccessRule,
  type Credential,
  type Peer,
  type TlsMode,
} from './access.js';
export {
  checkSecurity,
  parsePskFile,
  type TlsCredentials,
  type TlsSettings,
} from './credentials.js';
export * as nbdProtocol from './protocol.js';
