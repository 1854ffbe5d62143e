// HTTP API: the manager's control plane; the CLI and the web console are its clients.
export { startApi, parseRange, type ApiOptions } from './server.js';
export { consoleUrl } from './console.js';
