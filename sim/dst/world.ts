// The simulated world of the deterministic simulation: one seeded random stream, a fake clock
// (@sinonjs/fake-timers), and simulated processes. Every timer, I/O completion and link delivery
// belongs to the process that caused it (AsyncLocalStorage carries it through promises and
// callbacks); when a process crashes, everything it still had pending simply never happens, as
// with a real kill -9 or power loss.
import { AsyncLocalStorage } from 'node:async_hooks';
import * as FakeTimers from '@sinonjs/fake-timers';
import { SimCrashed } from './sim-fs.js';

export { SimCrashed };

/** mulberry32: small, fast, good enough for workloads and fault choices; seeded, so replayable. */
export class Random {
  private state: number;
  constructor(seed: number) {
    this.state = seed >>> 0;
  }
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  /** An integer in [0, max). */
  int(max: number): number {
    return Math.floor(this.next() * max);
  }
  chance(p: number): boolean {
    return this.next() < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
}

export class SimProcess {
  alive = true;
  constructor(
    readonly name: string,
    private readonly world: World,
  ) {}
  /** Runs `fn` as this process: what it schedules belongs to it. */
  run<T>(fn: () => T): T {
    return this.world.als.run(this, fn);
  }
}

export class World {
  readonly als = new AsyncLocalStorage<SimProcess>();
  readonly random: Random;
  readonly clock: FakeTimers.Clock;
  /** The simulation driver itself (workload, checks): never crashes. */
  readonly driver: SimProcess;
  /** Unhandled rejections and timer exceptions raised by live processes: each fails the run. */
  readonly failures: string[] = [];
  private readonly restore: (() => void)[] = [];

  constructor(seed: number) {
    this.random = new Random(seed);
    this.driver = new SimProcess('driver', this);
    this.clock = FakeTimers.install({
      now: Date.UTC(2026, 0, 1),
      toFake: [
        'setTimeout',
        'clearTimeout',
        'setInterval',
        'clearInterval',
        'setImmediate',
        'clearImmediate',
        'Date',
        'hrtime',
        'performance',
      ],
      shouldClearNativeTimers: false,
    });
    this.wrapTimers();
    const onRejection = (reason: unknown): void => this.unexpected(reason);
    process.on('unhandledRejection', onRejection);
    this.restore.push(() => process.off('unhandledRejection', onRejection));
  }

  /** The process running now (the driver outside any process). */
  caller(): SimProcess {
    return this.als.getStore() ?? this.driver;
  }

  spawn(name: string): SimProcess {
    return new SimProcess(name, this);
  }

  /** Runs `fn` after `delayMs` of simulated time as the calling process, unless it dies first. */
  schedule(delayMs: number, fn: () => void): void {
    setTimeout(fn, delayMs);
  }

  /** Advances simulated time by `ms`, running every timer and promise continuation on the way. */
  async advance(ms: number): Promise<void> {
    await this.clock.tickAsync(ms);
  }

  /** Advances in `stepMs` steps until `done()` or `limitMs` passed; true when done. */
  async until(done: () => boolean, limitMs: number, stepMs = 10): Promise<boolean> {
    for (let waited = 0; waited < limitMs; waited += stepMs) {
      if (done()) return true;
      await this.advance(stepMs);
    }
    return done();
  }

  /**
   * Awaits `promise` while advancing simulated time; throws after `limitMs`, or with SimCrashed as
   * soon as `proc` (the process the promise belongs to) is dead: its promise will never settle.
   */
  async settle<T>(
    promise: Promise<T>,
    limitMs: number,
    what: string,
    proc?: SimProcess,
  ): Promise<T> {
    let result: { value: T } | { error: unknown } | undefined;
    promise.then(
      (value) => (result = { value }),
      (error: unknown) => (result = { error }),
    );
    await this.until(() => result !== undefined || proc?.alive === false, limitMs, 5);
    if (!result && proc?.alive === false) throw new SimCrashed(`${what}: ${proc.name} died`);
    if (!result) throw new Error(`${what}: still pending after ${limitMs} ms of simulated time`);
    if ('error' in result) throw result.error;
    return result.value;
  }

  unexpected(reason: unknown): void {
    if (reason instanceof SimCrashed) return;
    const proc = this.als.getStore();
    if (proc && !proc.alive) return;
    // A dead manager's catalog is closed under its leftover continuations.
    if (reason instanceof Error && /database connection is not open/.test(reason.message)) return;
    this.failures.push(reason instanceof Error ? (reason.stack ?? reason.message) : String(reason));
  }

  uninstall(): void {
    for (const undo of this.restore.reverse()) undo();
    this.clock.uninstall();
  }

  /**
   * Wraps the fake timers so each callback runs as the process that set it, and not at all once
   * that process is dead. Exceptions from live callbacks are recorded as failures.
   */
  private wrapTimers(): void {
    type TimerFn = (fn: (...args: unknown[]) => void, ...rest: unknown[]) => unknown;
    const g = globalThis as unknown as Record<string, TimerFn>;
    for (const name of ['setTimeout', 'setInterval', 'setImmediate']) {
      const fake = g[name] as TimerFn;
      const wrapped: TimerFn = (fn, ...rest) => {
        const owner = this.caller();
        const delayAndArgs = name === 'setImmediate' ? [] : [rest.shift()];
        const args = rest;
        return fake(
          () => {
            if (!owner.alive) return;
            try {
              owner.run(() => fn(...args));
            } catch (error) {
              if (owner.alive) this.unexpected(error);
            }
          },
          ...delayAndArgs,
        );
      };
      g[name] = wrapped;
      this.restore.push(() => (g[name] = fake));
    }
  }
}
