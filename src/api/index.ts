// HTTP API: the manager's control plane; the CLI and the web console are its clients.
export { startApi, parseRange } from './server.js';
