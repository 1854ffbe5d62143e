// A whole fuzzing run: start the target, write the canaries and freeze a read-only copy, then run the
// planned connections on parallel workers (one scratch slot each), probe liveness every N
// connections, and finish with whole-export checks: canaries intact, gaps zero, every slot as its
// model says, the stored image equal to what NBD serves (and, for rewind, to the history's latest view).
import { PlainClient, type Endpoint } from './nbd-fuzz-client.js';
import {
  HANDSHAKE_WEIGHTS,
  HandshakeFuzzer,
  type ExportInfo,
  type HandshakeScenario,
  type ServedExports,
} from './nbd-fuzz-handshake.js';
import {
  ContentChecker,
  EXPORT_BYTES,
  SlotModel,
  makeLayout,
  type ContentView,
  type Layout,
} from './nbd-fuzz-model.js';
import { Stats, Violation, sortedRecord, type ViolationReport } from './nbd-fuzz-report.js';
import { Rng } from './nbd-fuzz-rng.js';
import { startTarget, type Target, type TargetKind } from './nbd-fuzz-target.js';
import { TransmissionFuzzer } from './nbd-fuzz-transmission.js';
import { PeerClosed, ReadTimeout, Wire } from './nbd-fuzz-wire.js';

export interface FuzzOptions {
  /** Total transmission requests to send (the plan stops adding connections once it reaches this). */
  requests: number;
  seed: number;
  /** Reported, and started by runFuzz. */
  target: TargetKind;
  /** Parallel connections, each with its own scratch slot. */
  concurrency: number;
  /** A liveness probe (fresh handshake + READ) after every this many connections. */
  checkEvery: number;
  /** Longest wait for any single reply or close. */
  timeoutMs: number;
  /** Run only this connection and those before it on its slot (on a fresh target), to reproduce a violation. */
  replay?: number;
  /** Oracle rules whose errno is not enforced: known server deviations, counted in the report instead. */
  tolerate?: readonly string[];
  progress?: (line: string) => void;
}

export interface FuzzReport {
  ok: boolean;
  seed: number;
  target: TargetKind;
  requestsPlanned: number;
  /** The connection replayed (--replay), if this was a replay. */
  replayed: number | undefined;
  requests: number;
  connections: number;
  transmissions: number;
  options: number;
  replies: number;
  errnos: Record<string, number>;
  optionErrors: Record<string, number>;
  serverDisconnects: number;
  probes: number;
  bytesSent: number;
  bytesRead: number;
  seconds: number;
  requestsPerSecond: number;
  scenarios: Record<string, number>;
  /** Replies that broke a tolerated rule (see FuzzOptions.tolerate). */
  deviations: Record<string, number>;
  violations: ViolationReport[];
}

interface Plan {
  scenario: HandshakeScenario;
  budget: number;
  rng: Rng;
}

const PROGRESS_MS = 10_000;
const EXIT_GRACE_MS = 1000;

/** Connection `index` of the plan: its scenario, its request budget, and its own PRNG stream. */
function planConnection(seed: number, index: number): Plan {
  const rng = new Rng(seed, index + 1);
  const scenario = rng.weighted(HANDSHAKE_WEIGHTS);
  const roll = rng.below(100);
  const budget =
    roll < 30 ? rng.logSize(1, 8) : roll < 75 ? rng.logSize(8, 96) : rng.logSize(96, 600);
  return { scenario, budget: scenario === 'valid' ? budget : 0, rng };
}

/** Connections per worker (worker w runs connections w, w + C, ...) until the budget is planned. */
function planWorkers(options: FuzzOptions): number[][] {
  const queues: number[][] = Array.from({ length: options.concurrency }, () => []);
  if (options.replay !== undefined) {
    // The connections before it on the same slot shaped the slot's content: replay them too.
    for (
      let index = options.replay % options.concurrency;
      index <= options.replay;
      index += options.concurrency
    )
      queues[index % options.concurrency]?.push(index);
    return queues;
  }
  let planned = 0;
  for (let index = 0; planned < options.requests; index += 1) {
    planned += planConnection(options.seed, index).budget;
    queues[index % options.concurrency]?.push(index);
  }
  return queues;
}

class Run {
  readonly stats = new Stats();
  readonly violations: ViolationReport[] = [];
  readonly models: SlotModel[];
  readonly checker: ContentChecker;
  private stopped = false;
  private reportedProblems = 0;
  private served: ServedExports | undefined;

  constructor(
    readonly options: FuzzOptions,
    readonly layout: Layout,
    readonly target: Target,
  ) {
    this.models = Array.from({ length: layout.slotCount }, () => new SlotModel(layout.slotBytes));
    this.checker = new ContentChecker(layout, this.models);
  }

  get endpoint(): Endpoint {
    return this.target.endpoint;
  }

  get exports(): ServedExports {
    if (!this.served) throw new Error('exports are known after setup');
    return this.served;
  }

  get ok(): boolean {
    return this.violations.length === 0;
  }

  /** Writes the canaries through NBD (FUA, then FLUSH), then freezes the read-only copy. */
  async setup(): Promise<void> {
    const writable = this.target.writable;
    const exports: ServedExports = {
      all: [writable],
      defaultName: writable.name,
      writable,
      readOnly: writable,
    };
    const client = await PlainClient.open(
      this.endpoint,
      this.options.timeoutMs,
      exports,
      writable,
      false,
      this.target.tls,
    );
    try {
      for (const canary of this.layout.canaries)
        await client.write(canary.offsetBytes, canary.data);
      await client.flush();
      await client.disconnect();
    } finally {
      client.destroy();
    }
    this.served = await this.target.freeze();
  }

  async worker(slot: number, indexes: readonly number[]): Promise<void> {
    for (const index of indexes) {
      if (this.stopped) return;
      await this.guard(index, () =>
        this.connection(slot, planConnection(this.options.seed, index)),
      );
      if ((index + 1) % this.options.checkEvery === 0)
        await this.guard(undefined, () => this.probe(index));
    }
  }

  private async connection(slot: number, plan: Plan): Promise<void> {
    const wire = await Wire.connect(this.endpoint.host, this.endpoint.port, this.options.timeoutMs);
    this.stats.connections += 1;
    try {
      const session = await new HandshakeFuzzer(
        wire,
        plan.rng,
        this.exports,
        this.stats,
        this.target.tls,
      ).run(plan.scenario);
      if (!session) return;
      this.stats.transmissions += 1;
      const model = this.models[slot];
      if (!model) throw new Error(`no model for slot ${slot}`);
      const context = {
        layout: this.layout,
        checker: this.checker,
        slot,
        model,
        stats: this.stats,
        tolerated: new Set(this.options.tolerate ?? []),
      };
      await new TransmissionFuzzer(wire, plan.rng, session, context).run(plan.budget);
    } catch (error) {
      throw withExchange(error, wire);
    } finally {
      if (wire.serverClosedFirst) this.stats.serverDisconnects += 1;
      wire.destroy();
    }
  }

  /** A fresh handshake and a READ of a canary: the server is alive and the canary intact. */
  private async probe(salt: number): Promise<void> {
    const rng = new Rng(this.options.seed, -1 - salt);
    const client = await PlainClient.open(
      this.endpoint,
      this.options.timeoutMs,
      this.exports,
      this.exports.writable,
      rng.chance(0.5),
      this.target.tls,
    );
    try {
      const canary = rng.pick(this.layout.canaries);
      const offset = canary.offsetBytes + rng.below(canary.data.length - 65536);
      this.expectContent(
        await client.read(offset, 65536),
        offset,
        { readOnly: false, checkSlot: () => false },
        'probe',
      );
      await client.disconnect();
    } finally {
      client.destroy();
    }
    this.stats.probes += 1;
  }

  /** Runs `step`; a violation (or a server problem noticed afterwards) is recorded and stops the run. */
  async guard(connection: number | undefined, step: () => Promise<void>): Promise<void> {
    try {
      await step();
    } catch (error) {
      const violation = asViolation(error);
      this.violations.push({
        rule: violation.rule,
        detail: violation.detail,
        connection,
        exchange: exchangeOf(error),
      });
      this.stopped = true;
    }
    this.checkServer(connection);
  }

  /** Records (as a violation) errors the server logged and its death, if new since the last look. */
  checkServer(connection: number | undefined): void {
    const problems = this.target.problems();
    if (problems.length > this.reportedProblems) {
      this.violations.push({
        rule: 'server problem',
        detail: problems.slice(this.reportedProblems).join('\n'),
        connection,
        exchange: [],
      });
      this.reportedProblems = problems.length;
      this.stopped = true;
    }
  }

  /** Whole-export checks once fuzzing is over. */
  async finalChecks(): Promise<void> {
    await this.probe(-1);
    const everything: ContentView = { readOnly: false, checkSlot: () => true };
    const live = await this.readExport(this.exports.writable, true);
    this.expectContent(live, 0, everything, `export ${this.exports.writable.name} over NBD`);
    this.expectContent(
      await this.readExport(this.exports.readOnly, false),
      0,
      { readOnly: true, checkSlot: () => true },
      `export ${this.exports.readOnly.name} over NBD`,
    );
    const stored = await this.target.readStored(0, this.layout.sizeBytes);
    if (!stored.equals(live))
      throw new Violation('stored image', 'the stored image differs from what NBD serves');
    const latest = await this.target.latestFromHistory();
    if (latest && !(await this.readExport(latest, false)).equals(stored)) {
      throw new Violation(
        'history',
        `${latest.name} (latest point of the history) differs from production`,
      );
    }
  }

  private async readExport(exportInfo: ExportInfo, flushFirst: boolean): Promise<Buffer> {
    const known = this.exports.all.includes(exportInfo)
      ? this.exports
      : { ...this.exports, all: [...this.exports.all, exportInfo] };
    const client = await PlainClient.open(
      this.endpoint,
      this.options.timeoutMs,
      known,
      exportInfo,
      false,
      this.target.tls,
    );
    try {
      if (flushFirst) await client.flush();
      const data = await client.read(0, exportInfo.sizeBytes);
      await client.disconnect();
      return data;
    } finally {
      client.destroy();
    }
  }

  private expectContent(data: Buffer, offset: number, view: ContentView, what: string): void {
    const problem = this.checker.check(view, offset, data);
    if (problem)
      throw new Violation(
        problem.startsWith('canary') ? 'canary altered' : 'data',
        `${what}: ${problem}`,
      );
  }

  report(started: number): FuzzReport {
    const seconds = (Date.now() - started) / 1000;
    const s = this.stats;
    return {
      ok: this.ok,
      seed: this.options.seed,
      target: this.options.target,
      requestsPlanned: this.options.requests,
      replayed: this.options.replay,
      requests: s.requests,
      connections: s.connections,
      transmissions: s.transmissions,
      options: s.options,
      replies: s.replies,
      errnos: sortedRecord(s.errnos),
      optionErrors: sortedRecord(s.optionErrors),
      serverDisconnects: s.serverDisconnects,
      probes: s.probes,
      bytesSent: s.bytesSent,
      bytesRead: s.bytesRead,
      seconds: Math.round(seconds * 10) / 10,
      requestsPerSecond: Math.round(s.requests / Math.max(seconds, 0.001)),
      scenarios: sortedRecord(s.scenarios),
      deviations: sortedRecord(s.deviations),
      violations: this.violations,
    };
  }
}

function asViolation(error: unknown): Violation {
  if (error instanceof Violation) return error;
  if (error instanceof ReadTimeout) return new Violation('hang', error.message);
  if (error instanceof PeerClosed) return new Violation('unexpected disconnect', error.message);
  if (error instanceof Error && 'code' in error)
    return new Violation('connection failed', error.message);
  throw error;
}

const EXCHANGE = Symbol('exchange');

function withExchange(error: unknown, wire: Wire): unknown {
  if (error instanceof Error) Object.assign(error, { [EXCHANGE]: wire.recentExchange() });
  return error;
}

function exchangeOf(error: unknown): string[] {
  if (error instanceof Error && EXCHANGE in error)
    return (error as unknown as Record<typeof EXCHANGE, string[]>)[EXCHANGE];
  return [];
}

/** Fuzzes an already running target (the caller closes it). */
export async function runFuzzOn(target: Target, options: FuzzOptions): Promise<FuzzReport> {
  const started = Date.now();
  const layout = makeLayout(options.seed, options.concurrency);
  if (target.writable.sizeBytes !== layout.sizeBytes)
    throw new Error(`the target's export must be ${layout.sizeBytes} bytes`);
  const run = new Run(options, layout, target);
  await run.guard(undefined, () => run.setup());
  const timer = setInterval(
    () => options.progress?.(progressLine(run.stats, options, started)),
    PROGRESS_MS,
  );
  try {
    if (run.ok)
      await Promise.all(planWorkers(options).map((indexes, slot) => run.worker(slot, indexes)));
  } finally {
    clearInterval(timer);
  }
  if (run.ok) await run.guard(undefined, () => run.finalChecks());
  // After a failure, give a dying server time to be seen exiting (the exit can trail its closed sockets).
  if (!run.ok) await new Promise((resolve) => setTimeout(resolve, EXIT_GRACE_MS));
  run.checkServer(undefined);
  return run.report(started);
}

/** Starts the target named in `options`, fuzzes it, and stops it. */
export async function runFuzz(options: FuzzOptions): Promise<FuzzReport> {
  const target = await startTarget(options.target, EXPORT_BYTES);
  try {
    return await runFuzzOn(target, options);
  } finally {
    await target.close();
  }
}

function progressLine(stats: Stats, options: FuzzOptions, started: number): string {
  const seconds = (Date.now() - started) / 1000;
  return `nbd-fuzz: ${stats.requests}/${options.requests} requests, ${stats.connections} connections, ${Math.round(stats.requests / seconds)} requests/s`;
}
