// Counters and violations of a fuzzing run. A violation is anything the NBD specification (or the
// "nothing stored is lost or altered" promise) forbids; it carries the recent exchange so the report
// shows what was sent and what came back.
import { errnoName } from './nbd-fuzz-spec.js';

export class Violation extends Error {
  constructor(
    readonly rule: string,
    readonly detail: string,
  ) {
    super(`${rule}: ${detail}`);
  }
}

export interface ViolationReport {
  rule: string;
  detail: string;
  /** The connection (its index replays it with --replay), or undefined for whole-run checks. */
  connection: number | undefined;
  exchange: string[];
}

export class Stats {
  requests = 0;
  options = 0;
  connections = 0;
  transmissions = 0;
  replies = 0;
  /** Connections the server closed before the fuzzer ended them (hard disconnects after bad input). */
  serverDisconnects = 0;
  probes = 0;
  bytesSent = 0;
  bytesRead = 0;
  readonly errnos = new Map<string, number>();
  readonly optionErrors = new Map<string, number>();
  readonly scenarios = new Map<string, number>();
  /** Replies that break a tolerated rule, by rule and errno. */
  readonly deviations = new Map<string, number>();

  errno(errno: number): void {
    bump(this.errnos, errnoName(errno));
  }

  optionError(name: string): void {
    bump(this.optionErrors, name);
  }

  deviation(what: string): void {
    bump(this.deviations, what);
  }

  scenario(name: string): void {
    bump(this.scenarios, name);
  }
}

function bump(map: Map<string, number>, key: string): void {
  map.set(key, (map.get(key) ?? 0) + 1);
}

export function sortedRecord(map: ReadonlyMap<string, number>): Record<string, number> {
  return Object.fromEntries([...map.entries()].sort((a, b) => b[1] - a[1]));
}
