// Deterministic simulation of the agent and the manager (issue 4). Both run in this one process
// over a simulated disk (sim-fs.ts: lost and torn unsynced writes, lost directory operations,
// EIO, ENOSPC), a simulated network (link.ts: delays, splits, cuts mid-frame, partitions) and a
// fake clock (world.ts). One seed derives the workload and every fault, so a failure replays
// exactly from its seed.
//
// A run: a fault phase (writes, flushes, crashes and power losses of either side, link faults,
// disk faults), then a healing phase (faults off, both sides up, the agent drained), then checks
// against an independent model:
// - durability: every write acknowledged durable (FUA, or before a completed FLUSH, or any reply
//   when the machine kept its page cache) is in production, or a later write to its sectors is;
// - the history at its last seq equals production, byte for byte, on every volume;
// - every write record in the history carries exactly the bytes the client wrote (each sector is
//   stamped with the write's id), in an order consistent with the client's;
// - views at sampled seqs (--every-seq: at every point) equal a plain in-memory replay of the
//   history's records 1..N.
//
// Crash at every step (--crash-steps): for each seed, each side dies right after each of its disk
// calls in turn (a kill, then a power loss), with no other faults; every run heals and is checked.
//
// Usage: node dist/sim/dst/dst.js [--seed S | --seeds A..B] [--minutes M] [--ops N] [--every-seq]
//        [--verbose] [--json]
//        node dist/sim/dst/dst.js --crash-steps --seed S [--ops N (200)] [--stride K (1)] [--json]
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { Agent, type AgentOptions } from '../../src/agent/agent.js';
import {
  parseSealedRedo,
  SEGMENT_FLAG_RESYNC,
  SEGMENT_FLAG_RESYNC_END,
  type SealedRedo,
} from '../../src/log/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Catalog } from '../../src/manager/catalog.js';
import { Manager, type CommitEvent } from '../../src/manager/manager.js';
import type { PolicyText } from '../../src/manager/retention-policy.js';
import type { ExportBackend } from '../../src/nbd/backend.js';
import { preallocateTools, zeroTools } from '../../src/platform/index.js';
import { SimNetwork } from './link.js';
import { SimFs } from './sim-fs.js';
import { World, type SimProcess } from './world.js';

const SECTOR = 512;
const VOLUMES = [
  { name: 'a', sizeBytes: 2 * 1024 * 1024 },
  { name: 'b', sizeBytes: 1024 * 1024 },
];
const AGENT_DIR = '/sim/agent';
const MANAGER_DIR = '/sim/manager';
const TOKEN = 'simulated-token';

export interface RunOptions {
  seed: number;
  /** Client operations in the fault phase. */
  ops: number;
  verbose?: boolean;
  /** Check a view at every point of the history, not only at six sampled seqs and the last. */
  everySeq?: boolean;
  /**
   * Crash-at-every-step mode: no random crashes, partitions, link cuts or EIO; instead `who` (its
   * first process) dies right after its `step`-th disk call of the fault phase, by a kill or a
   * power loss, and is restarted. `step: 0` crashes nothing and only counts the steps.
   */
  crashAt?: { who: 'agent' | 'manager'; step: number; powerLoss: boolean };
}

export interface RunReport {
  seed: number;
  ops: { writes: number; zeroes: number; flushes: number; failed: number; unknown: number };
  crashes: {
    agentKill: number;
    agentPowerLoss: number;
    managerKill: number;
    managerPowerLoss: number;
  };
  /** Agents whose write path stopped and that an operator then stopped cleanly (SIGTERM) and restarted. */
  agentCleanStops: number;
  link: { cuts: number; partitions: number; connections: number };
  disk: { injectedEio: number; injectedEnospc: number };
  /** Disk calls of the first agent and the first manager process during the fault phase. */
  steps: { agent: number; manager: number };
  /** In crash-at-every-step mode: whether the crash happened (the step was reached). */
  crashedAtStep: boolean;
  /** ... and whether it hit the manager inside a retention step (a merge or a drop). */
  crashedInRetention: boolean;
  seqLast: number;
  transactions: number;
  resyncRecords: number;
  viewsChecked: number;
  /** Segments whose redo copy and undo the managers began while the previous one was being made durable. */
  earlyStores: number;
  /** What retention did: runs thinned, drops, and sampled points it refused as no longer kept. */
  retention: { merges: number; drops: number; refusedPoints: number };
  simulatedSeconds: number;
  /** Digest of the run's event trace and final state: equal for equal seeds (determinism). */
  digest: string;
}

/** One committed write as the simulation captured it. */
interface CapturedRecord {
  seq: number;
  volume: number;
  kind: string;
  offset: number;
  length: number;
  data: Buffer | undefined;
  resync: boolean;
  resyncEnd: boolean;
  tx: number;
}

type OpKind = 'write' | 'zero';
interface Op {
  id: number;
  volume: number;
  kind: OpKind;
  offset: number;
  length: number;
  data?: Buffer;
  fua: boolean;
  state: 'pending' | 'ok' | 'failed' | 'unknown';
}

/** The bytes write `id` puts at (volume, offset): each sector starts with a stamp naming it. */
function payload(id: number, volume: number, offset: number, length: number): Buffer {
  const data = Buffer.alloc(length);
  let x = (id * 2654435761) >>> 0;
  for (let at = 0; at < length; at += 4) {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    data.writeUInt32LE(x, at);
  }
  for (let at = 0; at < length; at += SECTOR) {
    data.writeUInt32LE(0x52574e44, at); // 'RWND'
    data.writeUInt32LE(id, at + 4);
    data.writeUInt32LE(volume, at + 8);
    data.writeUInt32LE((offset + at) / SECTOR, at + 12);
  }
  return data;
}

function stampOf(sector: Buffer): number | undefined {
  return sector.readUInt32LE(0) === 0x52574e44 ? sector.readUInt32LE(4) : undefined;
}

/** What the client did, sector by sector: the independent model of durability. */
class ClientModel {
  readonly ops: Op[] = [undefined as unknown as Op];
  /** Per volume and sector: ids of the operations issued to it, in issue order. */
  private readonly touched: number[][][];
  /** Per volume and sector: the latest operation known durable (0: the initial zeroes). */
  private readonly floor: Uint32Array[];
  private ackedSinceFlush = new Set<number>();
  /** Sectors with an operation in flight: the workload never overlaps two. */
  private readonly busy: Uint8Array[];

  constructor() {
    this.touched = VOLUMES.map((v) => Array.from({ length: v.sizeBytes / SECTOR }, () => []));
    this.floor = VOLUMES.map((v) => new Uint32Array(v.sizeBytes / SECTOR));
    this.busy = VOLUMES.map((v) => new Uint8Array(v.sizeBytes / SECTOR));
  }

  free(volume: number, offset: number, length: number): boolean {
    const busy = this.busy[volume] as Uint8Array;
    for (let s = offset / SECTOR; s < (offset + length) / SECTOR; s++) if (busy[s]) return false;
    return true;
  }

  issue(op: Op): void {
    this.ops.push(op);
    const busy = this.busy[op.volume] as Uint8Array;
    const touched = this.touched[op.volume] as number[][];
    for (let s = op.offset / SECTOR; s < (op.offset + op.length) / SECTOR; s++) {
      busy[s] = 1;
      (touched[s] as number[]).push(op.id);
    }
  }

  replied(op: Op, ok: boolean): void {
    op.state = ok ? 'ok' : 'failed';
    this.release(op);
    if (!ok) return;
    if (op.fua) this.promote([op.id]);
    else this.ackedSinceFlush.add(op.id);
  }

  private release(op: Op): void {
    const busy = this.busy[op.volume] as Uint8Array;
    for (let s = op.offset / SECTOR; s < (op.offset + op.length) / SECTOR; s++) busy[s] = 0;
  }

  /** A FLUSH was issued on `volume`'s export: returns what its success makes durable there. */
  flushIssued(volume: number): number[] {
    return [...this.ackedSinceFlush].filter((id) => (this.ops[id] as Op).volume === volume);
  }

  promote(ids: Iterable<number>): void {
    for (const id of ids) {
      const op = this.ops[id] as Op;
      this.ackedSinceFlush.delete(id);
      const floor = this.floor[op.volume] as Uint32Array;
      for (let s = op.offset / SECTOR; s < (op.offset + op.length) / SECTOR; s++)
        floor[s] = Math.max(floor[s] as number, id);
    }
  }

  /**
   * The agent's process died: its in-flight requests have no answer. Acknowledged writes are still
   * in the page cache but no more durable than before: the next successful FLUSH covers them (it
   * covers every write completed before it), a power loss before it may lose them.
   */
  agentKilled(inFlight: Op[]): void {
    for (const op of inFlight) {
      op.state = 'unknown';
      this.release(op);
    }
  }

  /** The agent's machine lost power: acknowledged writes not yet flushed may be gone. */
  agentPowerLost(inFlight: Op[]): void {
    for (const op of inFlight) {
      op.state = 'unknown';
      this.release(op);
    }
    this.ackedSinceFlush.clear();
  }

  /** Checks one volume's production bytes: each sector holds a durable write or a later one. */
  checkDurable(volume: number, image: Buffer): void {
    const floor = this.floor[volume] as Uint32Array;
    const touched = this.touched[volume] as number[][];
    for (let s = 0; s < floor.length; s++) {
      const sector = image.subarray(s * SECTOR, (s + 1) * SECTOR);
      const allowed = (touched[s] as number[]).filter((id) => id >= (floor[s] as number));
      const matches = (id: number): boolean => sector.equals(this.sectorOf(id, s));
      const zeroAllowed = (floor[s] as number) === 0;
      if (zeroAllowed && sector.every((b) => b === 0)) continue;
      if (allowed.some(matches)) continue;
      const stamp = stampOf(sector);
      throw new Error(
        `volume ${VOLUMES[volume]?.name} sector ${s}: holds ${stamp !== undefined ? `bytes of write ${stamp}` : 'bytes no write put there'}, but write ${floor[s]} was acknowledged durable there and only writes ${allowed.join(', ') || '(none)'} came after it`,
      );
    }
  }

  /** The bytes operation `id` puts in sector `s` of its volume. */
  sectorOf(id: number, s: number): Buffer {
    const op = this.ops[id] as Op;
    if (op.kind === 'zero') return Buffer.alloc(SECTOR);
    const at = s * SECTOR - op.offset;
    return (op.data as Buffer).subarray(at, at + SECTOR);
  }
}

class Simulation {
  readonly world: World;
  readonly disk: SimFs;
  readonly net: SimNetwork;
  readonly model = new ClientModel();
  readonly trace = createHash('sha256');
  readonly logLines: string[] = [];
  agentProc: SimProcess | undefined;
  agent: Agent | undefined;
  backends: ExportBackend[] = [];
  managerProc: SimProcess | undefined;
  manager: Manager | undefined;
  catalogDb: Database.Database | undefined;
  /** The catalog as the manager left it when it closed it (set by the close itself). */
  closedCatalogImage: Buffer | undefined;
  catalogImage: Buffer | undefined;
  inFlight = new Set<Op>();
  report: RunReport;
  agentGeneration = 0;
  managerGeneration = 0;
  /** Share of client operations that are FLUSH: some seeds never flush (nothing is promised). */
  flushRate = 0.06;
  /** When each side may restart after a crash (simulated ms). */
  downUntil = { agent: 0, manager: 0 };
  /** Disk calls are counted (and a crash-at-step may fire) during the fault phase only. */
  counting = false;
  /**
   * Every committed write as the manager committed it, captured at commit (and at each manager's
   * start, for one committed just before a crash), before retention may thin or drop its redo.
   */
  readonly captured = new Map<number, CapturedRecord>();
  /** The managers' retention policy: scaled to seconds of simulated time; drawn per seed. */
  readonly retention: PolicyText;

  constructor(readonly options: RunOptions) {
    this.world = new World(options.seed);
    const random = this.world.random;
    this.disk = new SimFs(
      {
        random: () => random.next(),
        caller: () => this.world.caller(),
        schedule: (ms, fn) => this.world.schedule(ms, fn),
        afterOp: (proc) => this.afterDiskOp(proc),
      },
      [
        { prefix: AGENT_DIR, capacityBytes: 64 * 1024 * 1024 },
        // Some seeds run the manager on a disk that fills: it must push back, not fail.
        {
          prefix: MANAGER_DIR,
          capacityBytes: random.chance(0.3) ? 12 * 1024 * 1024 : 256 * 1024 * 1024,
        },
      ],
    );
    this.net = new SimNetwork(this.world);
    const drawn: PolicyText = {
      keepEveryWrite: random.pick(['1s', '2s', '4s']),
      keep: random.pick(['1s:6s,3s:60s', '2s:10s,5s:90s', '1s:5s,2s:9s,4s:120s', '2s:20s']),
      journalMax: random.pick(['2M', '8M', '1G', '1G']),
      onFull: random.chance(0.2) ? 'stop-applying' : 'drop-oldest',
    };
    // A crash-at-every-step run's fault phase lasts about a second: its retention thins and
    // drops within it, so that crashes land inside merges and drops too.
    this.retention = options.crashAt
      ? { keepEveryWrite: '100ms', keep: '1s:2s,1s:60s', journalMax: '256K', onFull: 'drop-oldest' }
      : drawn;
    this.report = {
      seed: options.seed,
      ops: { writes: 0, zeroes: 0, flushes: 0, failed: 0, unknown: 0 },
      crashes: { agentKill: 0, agentPowerLoss: 0, managerKill: 0, managerPowerLoss: 0 },
      agentCleanStops: 0,
      link: { cuts: 0, partitions: 0, connections: 0 },
      disk: { injectedEio: 0, injectedEnospc: 0 },
      steps: { agent: 0, manager: 0 },
      crashedAtStep: false,
      crashedInRetention: false,
      seqLast: 0,
      transactions: 0,
      resyncRecords: 0,
      viewsChecked: 0,
      earlyStores: 0,
      retention: { merges: 0, drops: 0, refusedPoints: 0 },
      simulatedSeconds: 0,
      digest: '',
    };
  }

  /** Counts the first processes' disk calls in the fault phase; crashes one at its step. */
  afterDiskOp(proc: { name: string }): void {
    if (!this.counting) return;
    const who =
      proc.name === 'agent#1' ? 'agent' : proc.name === 'manager#1' ? 'manager' : undefined;
    if (!who) return;
    const step = ++this.report.steps[who];
    const crashAt = this.options.crashAt;
    if (crashAt?.who !== who || crashAt.step !== step) return;
    this.report.crashedAtStep = true;
    const retention = who === 'manager' ? this.manager?.retention : undefined;
    const inStep =
      retention?.working ?? (retention && retention.removalsPending > 0 ? 'drop' : undefined);
    this.report.crashedInRetention = inStep !== undefined;
    this.event(
      `${proc.name}: crash right after its disk call ${step}${inStep ? ` (in a retention ${inStep})` : ''}`,
    );
    if (who === 'agent') this.crashAgent(crashAt.powerLoss);
    else this.crashManager(crashAt.powerLoss);
    this.downUntil[who] = Date.now() + this.world.random.int(1000);
  }

  event(text: string): void {
    const line = `${(Date.now() - Date.UTC(2026, 0, 1)).toString().padStart(7)} ms  ${text}`;
    this.trace.update(line + '\n');
    this.logLines.push(line);
    if (this.logLines.length > 400) this.logLines.shift();
    if (this.options.verbose) console.error(line);
  }

  log(who: string): (level: 'info' | 'warn' | 'error', message: string) => void {
    return (level, message) => this.event(`${who} ${level}: ${message}`);
  }

  // ---- processes ----

  async startManager(): Promise<void> {
    const proc = this.world.spawn(`manager#${++this.managerGeneration}`);
    const options = {
      dataDir: MANAGER_DIR,
      token: TOKEN,
      log: this.log(proc.name),
      applier: new InThreadApply(),
      retentionMerger: new InThreadApply(),
      retention: this.retention,
      startRetention: false,
      retentionIdleMs: 250,
      onCommitted: (event: CommitEvent) => this.capture(event.tx.idx, event.tx.kind),
      openCatalog: () => {
        // The catalog is SQLite with synchronous=FULL: a commit is durable, nothing else is. A
        // crash keeps exactly the committed state, which serialize() captures.
        const db = this.catalogImage ? new Database(this.catalogImage) : new Database(':memory:');
        // A manager that closes its catalog (a start that failed) leaves its committed state in
        // the file; an in-memory database loses it at close, so it is kept here first.
        const close = db.close.bind(db);
        db.close = () => {
          this.closedCatalogImage = db.serialize();
          return close();
        };
        this.catalogDb = db;
        return new Catalog(db);
      },
    };
    this.managerProc = proc;
    let manager: Manager;
    try {
      manager = await this.world.settle(
        proc.run(() => Manager.open(options)),
        60_000,
        `${proc.name} open`,
        proc,
      );
    } catch (error) {
      if (!proc.alive) return; // crashed while starting (crash-at-every-step)
      // A failing disk may keep the manager down; a full one must not (it pushes back instead).
      if (!isInjected(error) || (error as { code?: string }).code === 'ENOSPC') throw error;
      this.event(`${proc.name} failed to start: ${(error as Error).message}`);
      this.crashManager(false);
      return;
    }
    this.manager = manager;
    // A transaction committed just before a crash was not seen at its commit: captured now,
    // before this manager's retention runs at all.
    for (const tx of manager.history.txsAfter(0))
      this.capture(tx.idx, manager.catalog.tx(tx.idx)?.kind ?? 'redo');
    proc.run(() => manager.retention.start());
    this.event(`${proc.name} up, committed seq ${manager.seqCommitted()}`);
  }

  /** Adds what the current manager's retention did to the report (before it goes). */
  countRetention(): void {
    const steps = this.manager?.retention.status().steps;
    if (!steps) return;
    this.report.retention.merges += steps.merges;
    this.report.retention.drops += steps.drops;
  }

  /** Keeps a committed transaction's records with their payloads (read past the disk's faults). */
  capture(idx: number, kind: string): void {
    if (kind === 'merged') return; // thinned after it was captured
    const file = path.join(MANAGER_DIR, 'manager', 'redo', `${String(idx).padStart(16, '0')}.redo`);
    const bytes = this.disk.peek(file);
    if (!bytes) throw new Error(`committed transaction ${idx} has no redo file to capture`);
    const parsed: SealedRedo = parseSealedRedo(Buffer.from(bytes), `redo ${idx}`, VOLUMES.length);
    const resync = (parsed.header.flags & SEGMENT_FLAG_RESYNC) !== 0;
    const resyncEnd = (parsed.header.flags & SEGMENT_FLAG_RESYNC_END) !== 0;
    for (const r of parsed.records) {
      if (this.captured.has(r.seq)) continue;
      this.captured.set(r.seq, {
        seq: r.seq,
        volume: r.volume,
        kind: r.kind,
        offset: r.offsetBytes,
        length: r.lengthBytes,
        data:
          r.kind === 'write'
            ? Buffer.from(
                bytes.subarray(r.payloadOffsetBytes, r.payloadOffsetBytes + r.lengthBytes),
              )
            : undefined,
        resync,
        resyncEnd,
        tx: idx,
      });
    }
  }

  async startAgent(): Promise<void> {
    const proc = this.world.spawn(`agent#${++this.agentGeneration}`);
    const options: AgentOptions = {
      dataDir: AGENT_DIR,
      volumes: VOLUMES,
      // flock is the kernel's, not the simulated disk's; the simulation runs one agent anyway.
      lockImage: (file) => ({ file, release: () => undefined }),
      sealBytes: 64 * 1024,
      sealMs: 300,
      spoolBytes: 1024 * 1024,
      // Its disk lives on this thread: a worker would escape it. Batches of 8 KiB and more end
      // on a 4 KiB boundary (the pad records of large batches), and segment files are recycled
      // and preallocated as in production.
      writeEngine: 'in-thread',
      spool: { alignedBatchBytesMin: 8 * 1024 },
      manager: {
        host: 'manager.sim',
        port: 0,
        token: TOKEN,
        connect: (onConnected) =>
          this.net.connect(
            proc,
            () =>
              this.manager && this.managerProc?.alive
                ? { proc: this.managerProc, accept: (socket) => this.manager?.acceptAgent(socket) }
                : undefined,
            onConnected,
          ),
      },
      log: this.log(proc.name),
    };
    this.agentProc = proc;
    let agent: Agent;
    try {
      agent = await this.world.settle(
        proc.run(() => Agent.open(options)),
        60_000,
        `${proc.name} open`,
        proc,
      );
    } catch (error) {
      if (!proc.alive) return; // crashed while starting (crash-at-every-step)
      if (!isInjected(error)) throw error;
      this.event(`${proc.name} failed to start: ${(error as Error).message}`);
      this.crashAgent(false);
      return;
    }
    this.agent = agent;
    this.backends = proc.run(() => agent.exports());
    this.event(`${proc.name} up, captured seq ${agent.status().seqCaptured}`);
  }

  /**
   * An agent whose write path stopped is restarted as an operator would: every other time with a
   * clean stop (SIGTERM: close() drains, seals, saves its state), otherwise killed. A close that
   * fails on an injected fault ends as a kill.
   */
  async restartFailedAgent(): Promise<void> {
    const proc = this.agentProc;
    const agent = this.agent;
    if (!proc?.alive || !agent) return;
    if (this.agentGeneration % 2 === 0) {
      this.crashAgent(false);
      return;
    }
    try {
      await this.world.settle(
        proc.run(() => agent.close()),
        60_000,
        `${proc.name} close`,
        proc,
      );
    } catch (error) {
      if (!proc.alive) return;
      if (!isInjected(error)) throw error;
      this.event(`${proc.name} failed to stop cleanly: ${(error as Error).message}`);
      this.crashAgent(false);
      return;
    }
    proc.alive = false;
    this.agent = undefined;
    this.net.cutAll(proc);
    const inFlight = [...this.inFlight];
    this.inFlight.clear();
    this.disk.processCrash(proc);
    this.model.agentKilled(inFlight);
    this.report.ops.unknown += inFlight.length;
    this.report.agentCleanStops += 1;
    this.event(`${proc.name} stopped cleanly: ${inFlight.length} requests unanswered`);
  }

  crashAgent(powerLoss: boolean): void {
    const proc = this.agentProc;
    if (!proc?.alive) return;
    proc.alive = false;
    this.agent = undefined;
    this.net.cutAll(proc);
    const inFlight = [...this.inFlight];
    this.inFlight.clear();
    if (powerLoss) {
      const lost = this.disk.powerLoss(AGENT_DIR);
      this.model.agentPowerLost(inFlight);
      this.report.crashes.agentPowerLoss += 1;
      this.event(
        `${proc.name} power loss: ${inFlight.length} requests unanswered, ${lost.sectorsLost} sectors and ${lost.metadataOpsLost} directory operations lost`,
      );
    } else {
      this.disk.processCrash(proc);
      this.model.agentKilled(inFlight);
      this.report.crashes.agentKill += 1;
      this.event(`${proc.name} killed: ${inFlight.length} requests unanswered`);
    }
    this.report.ops.unknown += inFlight.length;
  }

  crashManager(powerLoss: boolean): void {
    const proc = this.managerProc;
    if (!proc?.alive) return;
    proc.alive = false;
    this.report.earlyStores += this.manager?.earlyStores ?? 0;
    this.countRetention();
    this.manager = undefined;
    this.net.cutAll(proc);
    if (this.catalogDb !== undefined)
      this.catalogImage = this.catalogDb.open
        ? this.catalogDb.serialize()
        : this.closedCatalogImage;
    // Not closed: the dead process's code may still run up to its next disk call, and its
    // catalog calls must find an open database (as a killed process's last statements would);
    // nothing reads that handle again, and the garbage collector closes it.
    this.catalogDb = undefined;
    if (powerLoss) {
      const lost = this.disk.powerLoss(MANAGER_DIR);
      this.report.crashes.managerPowerLoss += 1;
      this.event(
        `${proc.name} power loss: ${lost.sectorsLost} sectors and ${lost.metadataOpsLost} directory operations lost`,
      );
    } else {
      this.disk.processCrash(proc);
      this.report.crashes.managerKill += 1;
      this.event(`${proc.name} killed`);
    }
  }

  // ---- workload ----

  issueOne(): void {
    const random = this.world.random;
    const proc = this.agentProc;
    if (!proc?.alive || !this.agent) return;
    if (random.chance(this.flushRate)) {
      const volume = random.int(this.backends.length);
      const covers = this.model.flushIssued(volume);
      this.report.ops.flushes += 1;
      const backend = this.backends[volume] as ExportBackend;
      proc.run(() =>
        backend.flush((errno) => {
          this.event(`flush of ${VOLUMES[volume]?.name} (${covers.length} writes) -> ${errno}`);
          if (this.options.verbose) console.error(`      flush covered ${covers.join(',')}`);
          if (errno === 0) this.model.promote(covers);
        }),
      );
      return;
    }
    const volume = random.int(VOLUMES.length);
    const size = (VOLUMES[volume] as { sizeBytes: number }).sizeBytes;
    const sectors = random.chance(0.8) ? 1 + random.int(8) : 1 + random.int(128);
    const length = sectors * SECTOR;
    const offset = random.int((size - length) / SECTOR + 1) * SECTOR;
    if (!this.model.free(volume, offset, length)) return;
    const kind: OpKind = random.chance(0.1) ? 'zero' : 'write';
    const id = this.model.ops.length;
    const op: Op = { id, volume, kind, offset, length, fua: random.chance(0.1), state: 'pending' };
    if (kind === 'write') op.data = payload(id, volume, offset, length);
    this.model.issue(op);
    this.inFlight.add(op);
    if (kind === 'write') this.report.ops.writes += 1;
    else this.report.ops.zeroes += 1;
    const backend = this.backends[volume] as ExportBackend;
    if (this.options.verbose)
      console.error(
        `      op ${id} ${kind} ${VOLUMES[volume]?.name} ${offset}+${length}${op.fua ? ' fua' : ''}`,
      );
    const done = (errno: number): void => {
      if (this.options.verbose) console.error(`      op ${id} -> ${errno}`);
      if (!this.inFlight.delete(op)) return;
      this.model.replied(op, errno === 0);
      if (errno !== 0) this.report.ops.failed += 1;
      this.trace.update(`${op.id}:${errno};`);
    };
    proc.run(() =>
      kind === 'write'
        ? backend.write(offset, op.data as Buffer, op.fua, done)
        : backend.writeZeroes(offset, length, op.fua, done),
    );
  }

  // ---- phases ----

  async faultPhase(): Promise<void> {
    const random = this.world.random;
    // After an fsync EIO the manager's disk also evicts the dropped writes from the cache (the
    // worst case: a replica read then sees the bytes from before the failed transaction).
    const eio = random.chance(0.5)
      ? {
          readEio: 0,
          writeEio: 0.0005,
          fsyncEio: 0.002,
          maxLatencyMs: 3,
          fsyncEioEvicts: [MANAGER_DIR],
        }
      : { readEio: 0, writeEio: 0, fsyncEio: 0, maxLatencyMs: 3 };
    const calm = this.options.crashAt !== undefined; // the one crash is the step's
    this.disk.setFaults(calm ? { readEio: 0, writeEio: 0, fsyncEio: 0, maxLatencyMs: 3 } : eio);
    const cuts = random.chance(0.5) ? 0.002 : 0;
    this.net.faults = { maxDelayMs: 5, cutPerChunk: calm ? 0 : cuts };
    this.flushRate = random.pick([0, 0.005, 0.03, 0.08]);
    const downUntil = this.downUntil;
    this.counting = true;
    let issued = 0;
    while (issued < this.options.ops) {
      const now = Date.now();
      // Restart what is down once its downtime is over; an agent whose write path stopped (an
      // fsync failed) is restarted as an operator would.
      if (!this.managerProc?.alive && now >= downUntil.manager) await this.startManager();
      if (!this.agentProc?.alive && now >= downUntil.agent) await this.startAgent();
      if (this.agent && this.agent.status().mode === 'failed' && random.chance(0.2)) {
        this.event(`agent write path failed (${this.agent.status().failure}): restarting it`);
        await this.restartFailedAgent();
        downUntil.agent = now + 50;
      }
      const roll = calm ? 1 : random.next();
      if (roll < 0.004) {
        this.crashAgent(random.chance(0.5));
        downUntil.agent = now + random.int(3000);
      } else if (roll < 0.008) {
        this.crashManager(random.chance(0.5));
        downUntil.manager = now + random.int(3000);
      } else if (roll < 0.01) {
        const ms = 100 + random.int(8000);
        this.net.partition(ms);
        this.report.link.partitions += 1;
        this.event(`partition for ${ms} ms`);
      }
      const burst = 1 + random.int(4);
      for (let i = 0; i < burst && this.inFlight.size < 8; i++) {
        this.issueOne();
        issued += 1;
      }
      // Now and then the client pauses long enough for regions to go quiet and the dirty map to
      // clear them; a power loss right after such a pause tests what a clear may rely on.
      if (random.chance(0.005)) {
        await this.world.advance(2000 + random.int(4000));
        if (random.chance(0.3) && !calm) {
          this.crashAgent(true);
          downUntil.agent = Date.now() + random.int(1000);
        }
      } else {
        await this.world.advance(1 + random.int(20));
      }
      if (this.world.failures.length > 0)
        throw new Error(`unexpected error in a live process: ${this.world.failures[0]}`);
    }
    this.counting = false;
  }

  async healingPhase(): Promise<void> {
    this.disk.setFaults({ readEio: 0, writeEio: 0, fsyncEio: 0, maxLatencyMs: 3 });
    this.net.faults = { maxDelayMs: 5, cutPerChunk: 0 };
    // An operator facing a full manager disk adds space (the manager pushed back until then).
    this.disk.setCapacity(MANAGER_DIR, 256 * 1024 * 1024);
    this.event('healing: faults off, disks large enough');
    await this.world.advance(10_000); // any partition ends
    for (let round = 0; round < 5; round++) {
      if (!this.managerProc?.alive) await this.startManager();
      if (!this.agentProc?.alive) await this.startAgent();
      if (this.agent?.status().mode === 'failed') {
        await this.restartFailedAgent();
        continue;
      }
      // Let every request answer, then wait for the history to catch up with production.
      await this.world.until(() => this.inFlight.size === 0, 30_000);
      const caughtUp = (): boolean => {
        const status = this.agent?.status();
        return (
          status !== undefined &&
          status.mode === 'logging' &&
          status.sealedPending === 0 &&
          this.manager !== undefined &&
          this.manager.seqCommitted() === status.seqCaptured
        );
      };
      if (await this.world.until(caughtUp, 120_000, 50)) {
        // A seal of the idle active segment may still be on its way; wait for a quiet moment.
        await this.world.advance(2000);
        if (caughtUp()) return;
      }
    }
    const status = this.agent?.status();
    throw new Error(
      `healing: the history did not catch up (agent ${JSON.stringify(status, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}, manager committed ${this.manager?.seqCommitted()})`,
    );
  }

  productionImage(volume: number): Buffer {
    const name = (VOLUMES[volume] as { name: string }).name;
    const bytes = this.disk.peek(path.join(AGENT_DIR, 'production', `${name}.img`));
    if (!bytes) throw new Error(`production image of ${name} is missing`);
    const image = Buffer.alloc((VOLUMES[volume] as { sizeBytes: number }).sizeBytes);
    bytes.copy(image, 0, 0, Math.min(bytes.length, image.length));
    return image;
  }

  async viewImages(seq: number): Promise<Buffer[]> {
    const images = await this.viewImagesOrRefusal(seq);
    if (images instanceof RewindError) throw images;
    return images;
  }

  /** The images at `seq`, or the refusal of a point retention no longer keeps. */
  async viewImagesOrRefusal(seq: number): Promise<Buffer[] | RewindError> {
    const manager = this.manager as Manager;
    const proc = this.managerProc as SimProcess;
    const name = `check-${seq}`;
    let view;
    try {
      view = await this.world.settle(
        proc.run(() => manager.createView(name, 'snapshot', String(seq))),
        60_000,
        `view at ${seq}`,
      );
    } catch (error) {
      if (
        error instanceof RewindError &&
        /no longer kept|before the history starts/.test(error.message)
      )
        return error;
      throw error;
    }
    const images = VOLUMES.map((v, i) => proc.run(() => view.read(i, 0, v.sizeBytes)));
    await this.world.settle(
      proc.run(() => manager.removeView(name)),
      60_000,
      `remove view ${name}`,
    );
    this.report.viewsChecked += 1;
    return images;
  }

  /** Every committed write, with its payload, in seq order (as captured at commit). */
  history(): CapturedRecord[] {
    const manager = this.manager as Manager;
    this.report.transactions = manager.history.txsAfter(0).length;
    const seqLast = manager.seqCommitted();
    const out: CapturedRecord[] = [];
    for (let seq = 1; seq <= seqLast; seq++) {
      const record = this.captured.get(seq);
      if (!record) throw new Error(`history: seq ${seq} was committed but never captured`);
      out.push(record);
    }
    return out;
  }

  async check(): Promise<void> {
    const manager = this.manager as Manager;
    const seqLast = manager.seqCommitted();
    this.report.seqLast = seqLast;
    // 1. Durability of what the client was told, against production.
    const production = VOLUMES.map((_v, i) => this.productionImage(i));
    production.forEach((image, i) => this.model.checkDurable(i, image));
    // 2. The history at its last seq is production.
    if (seqLast > 0) {
      const last = await this.viewImages(seqLast);
      last.forEach((image, i) => {
        if (!image.equals(production[i] as Buffer))
          throw new Error(
            `volume ${VOLUMES[i]?.name}: the history at its last seq ${seqLast} differs from production at byte ${firstDifference(image, production[i] as Buffer)}`,
          );
      });
    }
    // 3. Every client write in the history is exactly what the client wrote, in client order.
    const records = this.history();
    const lastWriter = VOLUMES.map((v) => new Uint32Array(v.sizeBytes / SECTOR));
    for (const r of records) {
      if (r.resync) {
        this.report.resyncRecords += 1;
        continue;
      }
      if (r.kind !== 'write') continue; // zeroes carry no stamp; the replay below checks them
      const id = stampOf(r.data as Buffer);
      const op = id === undefined ? undefined : this.model.ops[id];
      if (
        !op ||
        op.kind !== 'write' ||
        op.volume !== r.volume ||
        op.offset !== r.offset ||
        op.length !== r.length ||
        !(op.data as Buffer).equals(r.data as Buffer)
      ) {
        throw new Error(
          `seq ${r.seq}: a write record of ${r.length} bytes at ${r.offset} on volume ${r.volume} is not the bytes any client write put there`,
        );
      }
      const writers = lastWriter[r.volume] as Uint32Array;
      for (let s = r.offset / SECTOR; s < (r.offset + r.length) / SECTOR; s++) {
        if ((writers[s] as number) > op.id)
          throw new Error(
            `seq ${r.seq}: write ${op.id} logged after write ${writers[s]} to the same sector, which the client issued later`,
          );
        writers[s] = op.id;
      }
    }
    // 4. Views at sampled seqs equal a plain replay of records 1..N.
    const first = records[0]?.seq ?? 1;
    const samples = new Set<number>();
    // A point inside a resync has no per-write history (views refuse it); its last seq is a point.
    const points = records
      .filter((r, i) => !r.resync || (r.resyncEnd && records[i + 1]?.tx !== r.tx))
      .map((r) => r.seq);
    // Retention's points: the oldest kept one and both ends of every thinned run must be kept.
    const status = manager.retention.status();
    const counted = manager.catalog.journalBytesCounted();
    if (status.journalBytes !== counted) {
      throw new Error(
        `the catalog keeps ${status.journalBytes} journal bytes, a recount finds ${counted}`,
      );
    }
    const keptRegion = points.filter((seq) => seq >= status.everyWriteFromSeq);
    for (let i = 0; i < 6 && keptRegion.length > 0; i++)
      samples.add(this.world.random.pick(keptRegion));
    for (let i = 0; i < 2 && points.length > 0; i++) samples.add(this.world.random.pick(points));
    if (this.options.everySeq) for (const seq of points) samples.add(seq);
    const mustKeep = new Set<number>([status.oldestSeq]);
    for (const tx of manager.catalog.mergedTxs()) {
      mustKeep.add(tx.seqLast);
      if (tx.seqFirst - 1 >= status.oldestSeq) mustKeep.add(tx.seqFirst - 1);
      samples.add(tx.seqFirst); // inside the run (unless it is one write): refused
    }
    for (const seq of mustKeep) samples.add(seq);
    if (status.oldestSeq > 0) samples.add(status.oldestSeq - 1); // dropped: refused
    const model = VOLUMES.map((v) => Buffer.alloc(v.sizeBytes));
    let applied = 0;
    for (const seq of [...samples].sort((a, b) => a - b)) {
      while (applied < records.length && (records[applied] as { seq: number }).seq <= seq) {
        const r = records[applied++] as (typeof records)[number];
        const image = model[r.volume] as Buffer;
        if (r.data) r.data.copy(image, r.offset);
        else image.fill(0, r.offset, r.offset + r.length);
      }
      const images = await this.viewImagesOrRefusal(seq);
      if (images instanceof RewindError) {
        const tx = manager.catalog.txContaining(seq);
        const thinned = tx?.kind === 'merged' && seq < tx.seqLast;
        if (mustKeep.has(seq) || !(thinned || seq < status.oldestSeq)) {
          throw new Error(`seq ${seq} was refused though retention keeps it: ${images.message}`);
        }
        this.report.retention.refusedPoints += 1;
        continue;
      }
      images.forEach((image, i) => {
        if (!image.equals(model[i] as Buffer))
          throw new Error(
            `volume ${VOLUMES[i]?.name}: the view at seq ${seq} differs from the replay of records ${first}..${seq} at byte ${firstDifference(image, model[i] as Buffer)}`,
          );
      });
    }
    for (const image of production) this.trace.update(createHash('sha256').update(image).digest());
  }

  /**
   * zeroRange's punch of 1 MiB or more runs util-linux on a path; here the file is in memory, so
   * the range is written with zeroes through the simulated disk instead (same effect on reads and
   * on durability: the next fdatasync covers it).
   */
  private punchInMemory = async (_command: string, args: string[]): Promise<void> => {
    const value = (flag: string): number => Number(args[args.indexOf(flag) + 1]);
    const file = args[args.length - 1] as string;
    const offset = value('--offset');
    const length = value('--length');
    const fd = fs.openSync(file, 'r+');
    try {
      const zeroes = Buffer.alloc(Math.min(length, 1024 * 1024));
      for (let done = 0; done < length;)
        done += fs.writeSync(fd, zeroes, 0, Math.min(zeroes.length, length - done), offset + done);
    } finally {
      fs.closeSync(fd);
    }
  };

  /**
   * util-linux fallocate --length, on the simulated disk: the file grows to the length, reading
   * as zeroes (not durable until an fsync, like any size change there).
   */
  private preallocateInMemory = async (file: string, lengthBytes: number): Promise<void> => {
    const fd = fs.openSync(file, 'r+');
    try {
      if (fs.fstatSync(fd).size < lengthBytes) fs.ftruncateSync(fd, lengthBytes);
    } finally {
      fs.closeSync(fd);
    }
  };

  async run(): Promise<RunReport> {
    this.disk.install();
    const realZeroTools = zeroTools.run;
    zeroTools.run = this.punchInMemory;
    const realPreallocate = preallocateTools.run;
    preallocateTools.run = this.preallocateInMemory;
    try {
      await this.startManager();
      await this.startAgent();
      await this.faultPhase();
      await this.healingPhase();
      await this.check();
      if (this.world.failures.length > 0)
        throw new Error(`unexpected error in a live process: ${this.world.failures[0]}`);
      this.report.earlyStores += this.manager?.earlyStores ?? 0;
      this.countRetention();
      const stats = this.disk.stats();
      this.report.disk = { injectedEio: stats.injectedEio, injectedEnospc: stats.injectedEnospc };
      this.report.link = {
        ...this.report.link,
        cuts: this.net.cuts,
        connections: this.net.connections,
      };
      this.report.simulatedSeconds = Math.round((Date.now() - Date.UTC(2026, 0, 1)) / 1000);
      this.report.digest = this.trace.digest('hex').slice(0, 16);
      return this.report;
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      throw new Error(
        `simulation failed, seed ${this.options.seed}: ${message}\n--- last events ---\n${this.logLines.slice(-60).join('\n')}`,
      );
    } finally {
      // Stop what is still running (as a crash: nothing is waited for), then restore the real world.
      if (this.agentProc) this.agentProc.alive = false;
      if (this.managerProc) this.managerProc.alive = false;
      this.catalogDb = undefined; // left to the garbage collector, as after a crash
      zeroTools.run = realZeroTools;
      preallocateTools.run = realPreallocate;
      this.disk.uninstall();
      this.world.uninstall();
    }
  }
}

/** An injected disk fault, here or as the cause of a product error: a process may refuse to start. */
function isInjected(error: unknown): boolean {
  for (
    let e = error as { code?: string; cause?: unknown } | undefined;
    e;
    e = e.cause as typeof e
  ) {
    if (e.code === 'EIO' || e.code === 'ENOSPC') return true;
  }
  return false;
}

function firstDifference(a: Buffer, b: Buffer): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return i;
  return Math.min(a.length, b.length);
}

export async function runSimulation(options: RunOptions): Promise<RunReport> {
  return new Simulation(options).run();
}

export interface CrashStepsOptions {
  seed: number;
  ops: number;
  /** Every `stride`-th step (1: every step). */
  stride: number;
  sides: ('agent' | 'manager')[];
  modes: ('kill' | 'power')[];
}

export interface CrashStepsReport {
  seed: number;
  steps: { agent: number; manager: number };
  runs: number;
  crashed: number;
  /** Runs whose crash hit the manager inside a retention merge or drop. */
  inRetention: number;
  byCase: Record<string, number>;
}

/**
 * Crash at every step: one seed's workload, run once to count each side's disk calls in the fault
 * phase, then once per (side, step, kill or power loss) with the crash right after that call. Every
 * run goes through healing and all the checks. Steps past a run's own count (a crash changes what
 * follows) are reported as not reached.
 */
export async function runCrashSteps(
  options: CrashStepsOptions,
  onRun?: (done: number, total: number, last: RunReport) => void,
): Promise<CrashStepsReport> {
  const probe = await runSimulation({
    seed: options.seed,
    ops: options.ops,
    crashAt: { who: 'agent', step: 0, powerLoss: false },
  });
  const cases: NonNullable<RunOptions['crashAt']>[] = [];
  for (const who of options.sides)
    for (let step = 1; step <= probe.steps[who]; step += options.stride)
      for (const mode of options.modes) cases.push({ who, step, powerLoss: mode === 'power' });
  const report: CrashStepsReport = {
    seed: options.seed,
    steps: probe.steps,
    runs: 0,
    crashed: 0,
    inRetention: 0,
    byCase: {},
  };
  for (const crashAt of cases) {
    const run = await runSimulation({ seed: options.seed, ops: options.ops, crashAt });
    report.runs += 1;
    if (run.crashedAtStep) {
      report.crashed += 1;
      if (run.crashedInRetention) report.inRetention += 1;
      const key = `${crashAt.who} ${crashAt.powerLoss ? 'power loss' : 'kill'}`;
      report.byCase[key] = (report.byCase[key] ?? 0) + 1;
    }
    onRun?.(report.runs, cases.length, run);
  }
  return report;
}

function parseArgs(argv: string[]): {
  seeds: number[];
  minutes: number | undefined;
  ops: number;
  verbose: boolean;
  json: boolean;
  everySeq: boolean;
  crashSteps: boolean;
  stride: number;
} {
  const get = (name: string): string | undefined => {
    const at = argv.indexOf(name);
    return at >= 0 ? argv[at + 1] : undefined;
  };
  let seeds: number[] = [];
  const range = get('--seeds');
  if (range) {
    const [a, b] = range.split('..').map(Number) as [number, number];
    for (let s = a; s <= (b ?? a); s++) seeds.push(s);
  }
  if (get('--seed')) seeds = [Number(get('--seed'))];
  const minutes = get('--minutes') === undefined ? undefined : Number(get('--minutes'));
  if (seeds.length === 0 && minutes === undefined) seeds = [1];
  const crashSteps = argv.includes('--crash-steps');
  return {
    seeds,
    minutes,
    ops: Number(get('--ops') ?? (crashSteps ? 200 : 3000)),
    verbose: argv.includes('--verbose'),
    json: argv.includes('--json'),
    everySeq: argv.includes('--every-seq'),
    crashSteps,
    stride: Number(get('--stride') ?? 1),
  };
}

async function crashStepsMain(args: ReturnType<typeof parseArgs>): Promise<void> {
  const started = performance.now();
  let runs = 0;
  let crashed = 0;
  for (const seed of args.seeds) {
    const report = await runCrashSteps(
      {
        seed,
        ops: args.ops,
        stride: args.stride,
        sides: ['agent', 'manager'],
        modes: ['kill', 'power'],
      },
      (done, total, last) => {
        if (done % 50 === 0 || done === total)
          console.error(
            `seed ${seed}: ${done}/${total} runs, last ${last.crashedAtStep ? 'crashed at its step' : 'ended before its step'}, ${((performance.now() - started) / 1000).toFixed(0)} s`,
          );
      },
    );
    runs += report.runs;
    crashed += report.crashed;
    if (args.json) console.log(JSON.stringify(report));
    else
      console.log(
        `seed ${seed}: ok  ${args.ops} client operations; disk calls in the fault phase: agent ${report.steps.agent}, manager ${report.steps.manager}; ${report.runs} runs, ${report.crashed} crashed at their step, ${report.inRetention} inside a retention step (${Object.entries(
          report.byCase,
        )
          .map(([k, v]) => `${k} ${v}`)
          .join(', ')})`,
      );
  }
  console.log(
    `crash at every step passed: ${args.seeds.length} seeds, ${runs} runs, ${crashed} crashes at their step, every run healed and checked, ${((performance.now() - started) / 1000).toFixed(1)} s`,
  );
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const args = parseArgs(process.argv.slice(2));
  if (args.crashSteps) {
    crashStepsMain(args).catch((error: unknown) => {
      console.error(error instanceof Error ? error.message : String(error));
      process.exit(1);
    });
  }
  const started = performance.now();
  const deadline = args.minutes === undefined ? Infinity : started + args.minutes * 60_000;
  const seeds = args.seeds.length > 0 ? args.seeds : [];
  let next = seeds.length > 0 ? undefined : Math.floor(Math.random() * 2 ** 31);
  const totals = { runs: 0, ops: 0, crashes: 0, cuts: 0, eio: 0 };
  (async () => {
    if (args.crashSteps) return;
    for (let i = 0; ; i++) {
      const seed = next === undefined ? seeds[i] : next++;
      if (seed === undefined || performance.now() > deadline) break;
      const report = await runSimulation({
        seed,
        ops: args.ops,
        verbose: args.verbose,
        everySeq: args.everySeq,
      });
      totals.runs += 1;
      totals.ops += report.ops.writes + report.ops.zeroes + report.ops.flushes;
      totals.crashes +=
        report.crashes.agentKill +
        report.crashes.agentPowerLoss +
        report.crashes.managerKill +
        report.crashes.managerPowerLoss;
      totals.cuts += report.link.cuts;
      totals.eio += report.disk.injectedEio;
      if (args.json) console.log(JSON.stringify(report));
      else
        console.log(
          `seed ${seed}: ok  ops ${report.ops.writes}w/${report.ops.zeroes}z/${report.ops.flushes}f (failed ${report.ops.failed}, unanswered ${report.ops.unknown})  crashes a:${report.crashes.agentKill}+${report.crashes.agentPowerLoss}p m:${report.crashes.managerKill}+${report.crashes.managerPowerLoss}p  clean stops ${report.agentCleanStops}  cuts ${report.link.cuts} partitions ${report.link.partitions}  eio ${report.disk.injectedEio} enospc ${report.disk.injectedEnospc}  seq ${report.seqLast} in ${report.transactions} tx (${report.resyncRecords} resync)  views ${report.viewsChecked}  retention ${report.retention.merges} thinned/${report.retention.drops} dropped/${report.retention.refusedPoints} refused  ${report.simulatedSeconds} s simulated  digest ${report.digest}`,
        );
    }
    console.log(
      `simulation passed: ${totals.runs} seeds, ${totals.ops} client operations, ${totals.crashes} crashes, ${totals.cuts} link cuts, ${totals.eio} injected EIO, ${((performance.now() - started) / 1000).toFixed(1)} s`,
    );
  })().catch((error: unknown) => {
    console.error(error instanceof Error ? error.message : String(error));
    process.exit(1);
  });
}
