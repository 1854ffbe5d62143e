// Manager level of the corruption sweep (sim/corruption-sweep.ts): a real in-process Manager
// (src/manager/manager.ts) on a loopback port and a fake agent speaking the framed protocol
// (src/ship/protocol.ts: hello with the right token, then `segment` frames, one at a time). Each
// class ships segments a correct agent never would (damaged, misdirected, stale, replayed, out of
// order, with seq gaps, wrong volumes, absurd or out-of-volume lengths) and checks the answer: a
// `refused` frame with a named code, or for an exact replay of a committed segment an idempotent
// `ack`; and that the catalog (committed seq, transactions) and replica bytes did not change.
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { crc32c } from '../src/core/index.js';
import { Manager } from '../src/manager/manager.js';
import { FrameReader, PROTOCOL_VERSION, sendFrame, type Message } from '../src/ship/protocol.js';
import {
  REDO_ABSURD_LENGTHS,
  REDO_DAMAGE,
  type Mutation,
  type ParserClass,
} from './corruption-mutations.js';
import {
  buildRedo,
  DEFAULT_SHAPE,
  describeError,
  isNamedCode,
  randomRecords,
  randomVolumeSet,
  redoSubject,
  uuidOf,
  type Outcome,
  type Rec,
  type Rng,
  type VolumeSet,
} from './corruption-segments.js';

export interface Announce {
  index: number;
  seqFirst: number;
  seqLast: number;
  fileCrc: number;
}

/** A segment file and what an agent says about it in the `segment` frame. */
export interface Segment {
  bytes: Buffer;
  announce: Announce;
}

export interface Shipment extends Segment {
  label: string;
  detail: string;
  /** `replay`: an exact resend of a committed segment, to be acknowledged without re-applying. */
  expect: 'refusal' | 'replay';
}

export interface ManagerClass {
  name: string;
  next(rng: Rng, bench: ManagerBench): Shipment;
}

type Reply =
  | { type: 'ack'; index: number; seqLast: number }
  | { type: 'refused'; code: string; message: string }
  | { type: 'silent'; reason: string };

interface HistorySnapshot {
  seqCommitted: number;
  transactions: number;
  lastTx: string;
  files: number;
  replicas: string[];
}

const TOKEN = 'corruption-sweep-token';
const REPLY_TIMEOUT_MS = 10_000;
const BASELINE_SEGMENTS = 3;
const VOLUME_BYTES_MIN = 64 * 1024;
const VOLUME_BYTES_MAX = 512 * 1024;

/** The fake agent's connection: one frame out, the next frame back (or why none came). */
class FakeAgentLink {
  private readonly socket: net.Socket;
  private readonly reader = new FrameReader();
  private waiting: ((reply: Message | string) => void) | undefined;
  /** Why no further answer can come (connection gone, or the manager stopped answering). */
  dead: string | undefined;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const { message } of this.reader.push(chunk)) this.settle(message);
      } catch (error) {
        this.settle(`bad frame from the manager: ${describeError(error)}`);
      }
    });
    socket.on('error', (error) => this.settle(`connection error: ${error.message}`));
    socket.on('close', () => {
      this.dead ??= 'the manager closed the connection';
      this.settle(this.dead);
    });
  }

  static async connect(port: number): Promise<FakeAgentLink> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    socket.setNoDelay(true);
    return new FakeAgentLink(socket);
  }

  /** Sends one frame and resolves with the next frame received, or a reason when none comes. */
  exchange(message: Message, payload?: Buffer): Promise<Message | string> {
    if (this.dead) return Promise.resolve(this.dead);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.dead = `no answer within ${REPLY_TIMEOUT_MS} ms`;
        this.settle(this.dead);
      }, REPLY_TIMEOUT_MS);
      this.waiting = (reply) => {
        clearTimeout(timer);
        resolve(reply);
      };
      sendFrame(this.socket, message, payload);
    });
  }

  /** Ends the current wait: with the frame received, or with why no answer will come. */
  settle(reply: Message | string): void {
    const waiting = this.waiting;
    this.waiting = undefined;
    waiting?.(reply);
  }

  close(): void {
    this.socket.destroy();
  }
}

export class ManagerBench {
  readonly set: VolumeSet;
  /** Segments the manager committed (the baseline, and any it accepted by mistake). */
  readonly committed: Segment[] = [];
  private readonly dir: string;
  private readonly manager: Manager;
  private readonly link: FakeAgentLink;
  private last: HistorySnapshot;

  private constructor(dir: string, manager: Manager, link: FakeAgentLink, set: VolumeSet) {
    this.dir = dir;
    this.manager = manager;
    this.link = link;
    this.set = set;
    this.last = this.snapshot();
  }

  /** A fresh manager in a temp dir, a fake agent welcomed by it, and a few committed segments. */
  static async open(rng: Rng): Promise<ManagerBench> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-corruption-'));
    const set = randomVolumeSet(rng, VOLUME_BYTES_MIN, VOLUME_BYTES_MAX);
    // Every turn is answered (an ack, or a refusal with the error's code), so the log is not read.
    const log = (): void => undefined;
    const manager = await Manager.open({ dataDir: dir, token: TOKEN, log });
    const { port } = await manager.listen('127.0.0.1', 0);
    const link = await FakeAgentLink.connect(port);
    const volumes = set.sizes.map((sizeBytes, i) => ({ name: `vol${i}`, sizeBytes }));
    const welcome = await link.exchange({
      type: 'hello',
      protocol: PROTOCOL_VERSION,
      token: TOKEN,
      volumeSetId: uuidOf(set.id),
      volumeSetName: 'sweep',
      volumes,
      seqNext: 1,
    });
    if (typeof welcome === 'string' || welcome.type !== 'welcome')
      throw new Error(`the manager did not welcome the fake agent: ${JSON.stringify(welcome)}`);
    const bench = new ManagerBench(dir, manager, link, set);
    for (let i = 0; i < BASELINE_SEGMENTS; i++) {
      const segment = bench.nextSegment(rng);
      const reply = await bench.send(segment);
      if (reply.type !== 'ack')
        throw new Error(
          `baseline segment ${segment.announce.index} not committed: ${JSON.stringify(reply)}`,
        );
      bench.committed.push(segment);
    }
    bench.last = bench.snapshot();
    return bench;
  }

  /** Set once the manager can no longer answer: the class cannot go on. */
  get unreachable(): string | undefined {
    return this.link.dead;
  }

  get volumeCount(): number {
    return this.set.sizes.length;
  }

  get nextIndex(): number {
    return (this.manager.catalog.lastTx()?.idx ?? 0) + 1;
  }

  get nextSeq(): number {
    return this.manager.seqCommitted() + 1;
  }

  /** A valid sealed segment with its truthful announcement. */
  segment(
    rng: Rng,
    at: { index: number; seqFirst: number; set?: VolumeSet; count?: number; records?: Rec[] },
  ): Segment {
    const set = at.set ?? this.set;
    const records =
      at.records ??
      randomRecords(
        rng,
        set,
        at.seqFirst,
        at.count === undefined ? DEFAULT_SHAPE : { ...DEFAULT_SHAPE, count: at.count },
      );
    const bytes = buildRedo(
      set,
      { segmentIndex: at.index, seqFirst: at.seqFirst, createdNs: rng.u64(), flags: 0 },
      records,
    );
    return {
      bytes,
      announce: {
        index: at.index,
        seqFirst: at.seqFirst,
        seqLast: at.seqFirst + records.length - 1,
        fileCrc: crc32c(bytes),
      },
    };
  }

  /** The segment the manager expects next, as a correct agent would ship it. */
  nextSegment(rng: Rng): Segment {
    return this.segment(rng, { index: this.nextIndex, seqFirst: this.nextSeq });
  }

  async send(segment: Segment): Promise<Reply> {
    const { announce, bytes } = segment;
    const reply = await this.link.exchange(
      { type: 'segment', ...announce, bytes: bytes.length },
      bytes,
    );
    if (typeof reply === 'string') return { type: 'silent', reason: reply };
    if (reply.type === 'ack') return { type: 'ack', index: reply.index, seqLast: reply.seqLast };
    if (reply.type === 'refused')
      return { type: 'refused', code: reply.code, message: reply.message };
    return { type: 'silent', reason: `unexpected ${reply.type} frame` };
  }

  /** What must not change when a segment is refused: catalog, transaction files, replica bytes. */
  snapshot(): HistorySnapshot {
    const last = this.manager.catalog.lastTx();
    const root = path.join(this.dir, 'manager');
    return {
      seqCommitted: this.manager.seqCommitted(),
      transactions:
        this.manager.catalog.committedTxs().length + this.manager.catalog.uncommitted().length,
      lastTx: last
        ? `${last.idx}:${last.seqFirst}..${last.seqLast}:${last.redoCrc}:${last.state}`
        : 'none',
      files: ['redo', 'undo'].reduce(
        (sum, sub) => sum + fs.readdirSync(path.join(root, sub)).length,
        0,
      ),
      replicas: this.manager.replicas.map((r) => {
        const bytes = fs.readFileSync(r.file);
        return `${r.name}:${bytes.length}:${crc32c(bytes)}`;
      }),
    };
  }

  /** Ships one segment and judges the answer and the history after it. */
  async ship(shipment: Shipment): Promise<Outcome> {
    const before = this.last;
    const reply = await this.send(shipment);
    const after = this.snapshot();
    this.last = after;
    const changes = historyChanges(before, after);
    if (reply.type === 'ack' && shipment.expect === 'refusal') this.adoptAccepted(shipment);
    if (reply.type === 'silent')
      return { kind: 'violation', detail: `no answer (${reply.reason})${changes}` };
    if (shipment.expect === 'replay') {
      const { index, seqLast } = shipment.announce;
      if (
        reply.type === 'ack' &&
        reply.index === index &&
        reply.seqLast === seqLast &&
        changes === ''
      )
        return { kind: 'identical' };
      return {
        kind: 'violation',
        detail: `exact replay answered ${describeReply(reply)}${changes}`,
      };
    }
    if (reply.type === 'refused' && isNamedCode(reply.code) && changes === '')
      return { kind: 'refused', code: reply.code };
    return { kind: 'violation', detail: `${describeReply(reply)}${changes}` };
  }

  /** A segment the manager committed though it should not have: later segments continue after it. */
  private adoptAccepted(shipment: Shipment): void {
    const row = this.manager.catalog.tx(shipment.announce.index);
    if (
      !row ||
      row.redoCrc !== crc32c(shipment.bytes) ||
      this.committed.some((c) => c.announce.index === row.idx)
    )
      return;
    this.committed.push({
      bytes: shipment.bytes,
      announce: {
        index: row.idx,
        seqFirst: row.seqFirst,
        seqLast: row.seqLast,
        fileCrc: row.redoCrc,
      },
    });
  }

  async close(): Promise<void> {
    this.link.close();
    await this.manager.close();
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}

function describeReply(reply: Reply): string {
  if (reply.type === 'ack') return `ack (index ${reply.index}, seqLast ${reply.seqLast})`;
  if (reply.type === 'refused') return `refused ${reply.code}: ${reply.message}`;
  return `no answer (${reply.reason})`;
}

function historyChanges(before: HistorySnapshot, after: HistorySnapshot): string {
  const changes: string[] = [];
  if (before.seqCommitted !== after.seqCommitted)
    changes.push(`committed seq ${before.seqCommitted} -> ${after.seqCommitted}`);
  if (before.transactions !== after.transactions)
    changes.push(`transactions ${before.transactions} -> ${after.transactions}`);
  if (before.lastTx !== after.lastTx)
    changes.push(`last transaction ${before.lastTx} -> ${after.lastTx}`);
  if (before.files !== after.files)
    changes.push(`transaction files ${before.files} -> ${after.files}`);
  before.replicas.forEach((was, i) => {
    const now = after.replicas[i] ?? 'gone';
    if (now !== was)
      changes.push(
        `replica ${was.split(':').slice(0, 2).join(' (')} bytes) -> ${now.split(':')[1] ?? '?'} bytes, content changed`,
      );
  });
  return changes.length > 0 ? `; history changed: ${changes.join(', ')}` : '';
}

/** One raw-damage mutation of `segment` from a random class among `classes`. */
function damage(
  rng: Rng,
  bench: ManagerBench,
  segment: Segment,
  classes: readonly ParserClass[],
): Mutation {
  const subject = redoSubject(segment.bytes, bench.volumeCount);
  const another = (): ReturnType<typeof redoSubject> => {
    const following = bench.segment(rng, {
      index: segment.announce.index + 1,
      seqFirst: segment.announce.seqLast + 1,
    });
    return redoSubject(following.bytes, bench.volumeCount);
  };
  for (let attempt = 0; attempt < 100; attempt++) {
    const cls = rng.pick(classes);
    const mutations = cls.mutate(rng, subject, another);
    if (mutations.length > 0) {
      const m = rng.pick(mutations);
      return { ...m, label: `${cls.name}: ${m.label}` };
    }
  }
  throw new Error('no damage applies to this segment');
}

function countOf(announce: Announce): number {
  return announce.seqLast - announce.seqFirst + 1;
}

function refusal(label: string, detail: string, segment: Segment): Shipment {
  return { label, detail, bytes: segment.bytes, announce: segment.announce, expect: 'refusal' };
}

/** The expected next segment, damaged; announced as shipped (original CRC) or with the damaged file's CRC. */
const mutated: ManagerClass = {
  name: 'mutated',
  next(rng, bench) {
    const base = bench.nextSegment(rng);
    const m = damage(rng, bench, base, REDO_DAMAGE);
    const ownCrc = rng.chance(0.5);
    const announce = ownCrc ? { ...base.announce, fileCrc: crc32c(m.bytes) } : base.announce;
    return refusal(
      m.label,
      `${m.detail}; announced with the ${ownCrc ? 'damaged' : 'original'} file's CRC`,
      { bytes: m.bytes, announce },
    );
  },
};

/** A whole valid file shipped under the expected segment's announcement. */
const misdirected: ManagerClass = {
  name: 'misdirected',
  next(rng, bench) {
    const base = bench.nextSegment(rng);
    const { index, seqFirst, seqLast } = base.announce;
    const variant = rng.below(3);
    if (variant === 0) {
      const following = bench.segment(rng, { index: index + 1, seqFirst: seqLast + 1 });
      return refusal(
        'the following segment',
        `segment ${index + 1}'s file announced as segment ${index}`,
        { bytes: following.bytes, announce: base.announce },
      );
    }
    if (variant === 1) {
      const twin = bench.segment(rng, { index, seqFirst, count: countOf(base.announce) });
      return refusal(
        'same index and seqs, other content',
        `another file for segment ${index} (seq ${seqFirst}..${seqLast})`,
        { bytes: twin.bytes, announce: base.announce },
      );
    }
    const old = rng.pick(bench.committed);
    return refusal(
      'a committed segment',
      `committed segment ${old.announce.index}'s file announced as segment ${index}`,
      { bytes: old.bytes, announce: base.announce },
    );
  },
};

/** A committed segment with other content: a different valid file, or a damaged copy. */
function staleCopy(
  rng: Rng,
  bench: ManagerBench,
  old: Segment,
): { label: string; detail: string; bytes: Buffer } {
  const { index, seqFirst } = old.announce;
  if (rng.chance(0.5)) {
    const other = bench.segment(rng, { index, seqFirst, count: countOf(old.announce) });
    return {
      label: 'other valid content',
      detail: `another valid file for committed segment ${index}`,
      bytes: other.bytes,
    };
  }
  const m = damage(rng, bench, old, REDO_DAMAGE);
  return {
    label: `damaged copy (${m.label})`,
    detail: `committed segment ${index}: ${m.detail}`,
    bytes: m.bytes,
  };
}

/** Stale: an already committed index with different bytes, announced with their own CRC. */
const stale: ManagerClass = {
  name: 'stale',
  next(rng, bench) {
    const old = rng.pick(bench.committed);
    const copy = staleCopy(rng, bench, old);
    return refusal(copy.label, copy.detail, {
      bytes: copy.bytes,
      announce: { ...old.announce, fileCrc: crc32c(copy.bytes) },
    });
  },
};

/** Stale bytes announced with the CRC the manager committed (an agent whose spool copy rotted). */
const staleCommittedCrc: ManagerClass = {
  name: 'stale-committed-crc',
  next(rng, bench) {
    const old = rng.pick(bench.committed);
    const copy = staleCopy(rng, bench, old);
    return refusal(copy.label, `${copy.detail}; announced with the committed CRC`, {
      bytes: copy.bytes,
      announce: old.announce,
    });
  },
};

/** An exact resend of a committed segment (an ack was lost): acknowledged, applied once. */
const replay: ManagerClass = {
  name: 'replay',
  next(rng, bench) {
    const old = rng.pick(bench.committed);
    return {
      label: 'exact replay',
      detail: `committed segment ${old.announce.index} resent`,
      bytes: old.bytes,
      announce: old.announce,
      expect: 'replay',
    };
  },
};

const outOfOrder: ManagerClass = {
  name: 'out-of-order',
  next(rng, bench) {
    const ahead = rng.int(1, 4);
    const index = bench.nextIndex;
    const variant = rng.below(3);
    if (variant === 0) {
      const later = bench.segment(rng, {
        index: index + ahead,
        seqFirst: bench.nextSeq + rng.int(ahead, 50 * ahead),
      });
      return refusal(
        'a later segment first',
        `segment ${index + ahead} before segment ${index}`,
        later,
      );
    }
    if (variant === 1) {
      const base = bench.nextSegment(rng);
      return refusal(
        'announced index ahead',
        `segment ${index}'s file announced as ${index + ahead}`,
        { bytes: base.bytes, announce: { ...base.announce, index: index + ahead } },
      );
    }
    const later = bench.segment(rng, { index: index + ahead, seqFirst: bench.nextSeq });
    return refusal(
      'header index ahead',
      `a file whose header says segment ${index + ahead}, announced as ${index}`,
      { bytes: later.bytes, announce: { ...later.announce, index } },
    );
  },
};

/** A seqFirst after a gap, or overlapping committed seqs. */
function wrongSeqFirst(rng: Rng, bench: ManagerBench): { seqFirst: number; what: string } {
  const next = bench.nextSeq;
  const d = rng.int(1, 1000);
  if (rng.chance(0.5)) return { seqFirst: next + d, what: `gap of ${d} seqs` };
  const seqFirst = Math.max(1, next - d);
  return { seqFirst, what: `overlap of ${next - seqFirst} committed seqs` };
}

/** Seq gap or overlap with the committed history, announced truthfully. */
const seqGap: ManagerClass = {
  name: 'seq-gap',
  next(rng, bench) {
    const { seqFirst, what } = wrongSeqFirst(rng, bench);
    const segment = bench.segment(rng, { index: bench.nextIndex, seqFirst });
    return refusal(
      what.startsWith('gap') ? 'gap' : 'overlap',
      `segment ${segment.announce.index} from seq ${seqFirst} (${what}), announced so`,
      segment,
    );
  },
};

/** The header's seqFirst leaves a gap (or overlaps) while the frame announces the expected seqFirst. */
const seqGapInHeader: ManagerClass = {
  name: 'seq-gap-in-header',
  next(rng, bench) {
    const expected = bench.nextSeq;
    const { seqFirst, what } = wrongSeqFirst(rng, bench);
    const segment = bench.segment(rng, { index: bench.nextIndex, seqFirst });
    const label = what.startsWith('gap') ? 'gap in the header' : 'overlap in the header';
    return refusal(
      label,
      `segment ${segment.announce.index}: header from seq ${seqFirst} (${what}), announced from seq ${expected}`,
      {
        bytes: segment.bytes,
        announce: { ...segment.announce, seqFirst: expected },
      },
    );
  },
};

const wrongVolume: ManagerClass = {
  name: 'wrong-volume',
  next(rng, bench) {
    const at = { index: bench.nextIndex, seqFirst: bench.nextSeq };
    if (rng.chance(0.5)) {
      const other = { id: rng.bytes(16), sizes: bench.set.sizes };
      return refusal(
        'another volume set',
        `segment ${at.index} of volume set ${uuidOf(other.id)}`,
        bench.segment(rng, { ...at, set: other }),
      );
    }
    const records = randomRecords(rng, bench.set, at.seqFirst, DEFAULT_SHAPE);
    const victim = rng.below(records.length);
    const volume = bench.volumeCount + rng.below(65536 - bench.volumeCount);
    records[victim] = { ...(records[victim] as Rec), volume };
    return refusal(
      'volume index out of range',
      `record ${victim} on volume ${volume} of ${bench.volumeCount}, sealed and announced truthfully`,
      bench.segment(rng, { ...at, records }),
    );
  },
};

const absurdLengths: ManagerClass = {
  name: 'absurd-lengths',
  next(rng, bench) {
    const base = bench.nextSegment(rng);
    const m = damage(rng, bench, base, [REDO_ABSURD_LENGTHS]);
    const ownCrc = rng.chance(0.5);
    const announce = ownCrc ? { ...base.announce, fileCrc: crc32c(m.bytes) } : base.announce;
    return refusal(
      m.label,
      `${m.detail}; announced with the ${ownCrc ? 'mutated' : 'original'} file's CRC`,
      { bytes: m.bytes, announce },
    );
  },
};

/** A record that ends (or starts) past its volume's end, in a correctly sealed and announced segment. */
function beyondEnd(rng: Rng, record: Rec, sizeBytes: number): Rec {
  const { seq, timeNs, volume } = record;
  if (rng.chance(0.5)) {
    const lengthBytes = rng.int(1, 8192);
    const offsetBytes = rng.chance(0.8)
      ? sizeBytes - lengthBytes + rng.int(1, lengthBytes)
      : sizeBytes + rng.below(1 << 20);
    return {
      kind: 'write',
      volume,
      seq,
      timeNs,
      offsetBytes,
      lengthBytes,
      data: rng.bytes(lengthBytes),
    };
  }
  const offsetBytes = rng.below(sizeBytes);
  return {
    kind: rng.pick(['zero', 'trim'] as const),
    volume,
    seq,
    timeNs,
    offsetBytes,
    lengthBytes: sizeBytes - offsetBytes + rng.int(1, 4 << 20),
  };
}

const beyondVolume: ManagerClass = {
  name: 'beyond-volume',
  next(rng, bench) {
    const at = { index: bench.nextIndex, seqFirst: bench.nextSeq };
    const records = randomRecords(rng, bench.set, at.seqFirst, DEFAULT_SHAPE);
    const victim = rng.below(records.length);
    const original = records[victim] as Rec;
    const sizeBytes = bench.set.sizes[original.volume] as number;
    const record = beyondEnd(rng, original, sizeBytes);
    records[victim] = record;
    const detail = `record ${victim}: ${record.kind} ${record.offsetBytes}+${record.lengthBytes} on a ${sizeBytes}-byte volume, sealed and announced truthfully`;
    return refusal(
      `${record.kind} past the volume end`,
      detail,
      bench.segment(rng, { ...at, records }),
    );
  },
};

export const MANAGER_CLASSES: readonly ManagerClass[] = [
  mutated,
  misdirected,
  stale,
  staleCommittedCrc,
  replay,
  outOfOrder,
  seqGap,
  seqGapInHeader,
  wrongVolume,
  absurdLengths,
  beyondVolume,
];
