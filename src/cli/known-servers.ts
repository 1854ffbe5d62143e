// Where the CLI finds the API token of a server this user started: `rewind up` and `rewind
// manager` record, per API address, the path of its token file (DATA/api-token) in a private
// per-user directory; a client command looks its --server up there when no token is given.
// One small file per address, so two servers starting at once never lose each other's entry.
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { errorCode, rethrowIfBug } from '../core/index.js';

export interface KnownServer {
  version: 1;
  /** The API address as the CLI spells it (`http://127.0.0.1:7420`). */
  server: string;
  /** The token file (absolute); the token itself is never copied here. */
  tokenFile: string;
  /** The process that wrote the entry (removed again when it stops). */
  pid: number;
}

/** A record larger than this is not ours: it is ignored rather than parsed. */
const RECORD_BYTES_MAX = 64 * 1024;
/** Records looked at for pruning per start (a killed server leaves its record behind). */
const PRUNE_RECORDS_MAX = 1000;

/**
 * The per-user directory: $REWIND_CONFIG_DIR, else $XDG_CONFIG_HOME/rewind, else
 * ~/.config/rewind; the records live in its `tokens` directory (0700, files 0600).
 */
export function knownServersDir(): string {
  if (process.env.REWIND_CONFIG_DIR)
    return path.join(path.resolve(process.env.REWIND_CONFIG_DIR), 'tokens');
  const config = process.env.XDG_CONFIG_HOME || path.join(os.homedir(), '.config');
  return path.join(config, 'rewind', 'tokens');
}

/** One spelling per address: no trailing slash, `localhost` and `[::1]` as 127.0.0.1 / ::1. */
export function normalizeServer(server: string): string {
  return server
    .trim()
    .replace(/\/+$/, '')
    .replace(/^(https?:\/\/)localhost(:|$)/, '$1127.0.0.1$2');
}

function recordFile(server: string): string {
  const id = createHash('sha256').update(normalizeServer(server)).digest('hex').slice(0, 16);
  return path.join(knownServersDir(), `${id}.json`);
}

/**
 * Records `tokenFile` for each of `servers` (a wildcard listener is reached as 127.0.0.1 too).
 * Written as a temporary file renamed over the record, so a reader never sees half of one.
 */
export function rememberServer(servers: readonly string[], tokenFile: string): void {
  const dir = knownServersDir();
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  pruneDead(dir);
  for (const server of servers) {
    const record: KnownServer = {
      version: 1,
      server: normalizeServer(server),
      tokenFile: path.resolve(tokenFile),
      pid: process.pid,
    };
    const file = recordFile(server);
    const temporary = `${file}.${process.pid}.tmp`;
    fs.writeFileSync(temporary, `${JSON.stringify(record)}\n`, { mode: 0o600 });
    fs.renameSync(temporary, file);
  }
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    rethrowIfBug(error);
    return errorCode(error) !== 'ESRCH'; // EPERM: alive, another user's
  }
}

/** Removes the records of servers that are gone (killed before they could remove their own). */
function pruneDead(dir: string): void {
  const names = fs.readdirSync(dir).filter((name) => name.endsWith('.json'));
  for (const name of names.slice(0, PRUNE_RECORDS_MAX)) {
    const file = path.join(dir, name);
    let record: KnownServer | undefined;
    try {
      record = parseRecord(fs.readFileSync(file, 'utf8').slice(0, RECORD_BYTES_MAX));
    } catch (error) {
      rethrowIfBug(error);
      if (errorCode(error) === 'ENOENT') continue; // removed by another start meanwhile
      throw error;
    }
    if (record && !isAlive(record.pid)) fs.rmSync(file, { force: true });
  }
}

/** Removes the records this process wrote (another process may have taken the address since). */
export function forgetServer(servers: readonly string[]): void {
  for (const server of servers) {
    const known = lookUpServer(server);
    if (known?.pid !== process.pid) continue;
    fs.rmSync(recordFile(server), { force: true });
  }
}

/** The record of `server`, if this user has one that can be read. */
export function lookUpServer(server: string): KnownServer | undefined {
  let text: string;
  try {
    const file = recordFile(server);
    if (fs.statSync(file).size > RECORD_BYTES_MAX) return undefined;
    text = fs.readFileSync(file, 'utf8');
  } catch (error) {
    rethrowIfBug(error);
    if (errorCode(error) === 'ENOENT' || errorCode(error) === 'EACCES') return undefined;
    throw error;
  }
  const record = parseRecord(text);
  return record?.server === normalizeServer(server) ? record : undefined;
}

/** The token recorded for `server`, when its token file can be read by this user. */
export function knownToken(server: string): string | undefined {
  const known = lookUpServer(server);
  if (!known) return undefined;
  try {
    return fs.readFileSync(known.tokenFile, 'utf8').trim() || undefined;
  } catch (error) {
    rethrowIfBug(error);
    if (errorCode(error) === 'ENOENT' || errorCode(error) === 'EACCES') return undefined;
    throw error;
  }
}

function parseRecord(text: string): KnownServer | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    rethrowIfBug(error);
    return undefined; // a torn or foreign file: as if there were none
  }
  if (typeof value !== 'object' || value === null) return undefined;
  const record = value as Partial<KnownServer>;
  if (record.version !== 1 || typeof record.server !== 'string') return undefined;
  if (typeof record.tokenFile !== 'string' || typeof record.pid !== 'number') return undefined;
  return record as KnownServer;
}
