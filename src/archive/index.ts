// Archive: the object store history goes to after the local journal (a directory or S3), and the
// format of the objects in it (compressed, checksummed, optionally encrypted).
export * from './store.js';
export { openStore, parseS3Url } from './open.js';
export { DirectoryStore } from './dir-store.js';
export { S3Store, S3_ATTEMPTS_MAX, DELETE_BATCH_KEYS_MAX } from './s3-store.js';
export * from './codec.js';
export { loadArchiveKey, parseArchiveKey } from './key-file.js';
export * from './batch.js';
export { CodecThread } from './codec-thread.js';
export * from './full.js';
export * from './descriptor.js';
