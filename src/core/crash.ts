// Named crash points for the kill -9 sweep (sim/kill-sweep.ts, docs/RESILIENCE.md): with
// REWIND_CRASH_AT=NAME:N in the environment, the process kills itself with SIGKILL the N-th time it
// passes the point NAME. Without that variable a crash point is a comparison against undefined.
const spec = /^([a-z-]+):(\d+)$/.exec(process.env.REWIND_CRASH_AT ?? '');
const target = spec ? { name: spec[1] as string, hit: Number(spec[2]) } : undefined;
let hits = 0;

export type CrashPointName =
  'append' | 'fsync' | 'seal' | 'ship' | 'undo' | 'apply' | 'commit' | 'merge' | 'swap';

export function crashPoint(name: CrashPointName): void {
  if (target === undefined || target.name !== name) return;
  hits += 1;
  if (hits === target.hit) process.kill(process.pid, 'SIGKILL');
}
