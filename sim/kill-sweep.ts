// kill -9 sweep: a real `rewind manager` and `rewind agent` (separate processes) under two write
// loads at once: fio (nbd engine, queue depth 16, mixed sizes, FLUSH every 16 writes) on the last
// 16 MiB of the volume and a libnbd client stamping 4 KiB blocks with their ids on the first 32 MiB. In
// each iteration one process dies by SIGKILL, either at a named crash point (REWIND_CRASH_AT,
// src/core/crash.ts: append, fsync, seal, ship on the agent; undo, apply, commit on the manager) or
// at a random time. Both are restarted and checked:
// - seqs are gap-free and the history at the last seq equals production byte for byte;
// - every write the stamping client saw answered is in the history;
// - every write fio saw answered is in the history: fio logs each completed write (its latency log,
//   with offsets), and a verify-only fio pass over the history at the last seq reads every block of
//   the pass back; none of the answered ones may fail (each block is written once per iteration,
//   with a seed of its own, so a lost or stale block fails the header's seed, offset or CRC check);
// - at sampled seqs a snapshot holds exactly that write's bytes and not the next one's.
// When the manager is the victim, the agent is killed too (0.1 to 0.5 s later, under load), so
// that what the clients saw answered is final before the checks.
// With --journal-max SIZE the manager runs with that journal limit, every write kept for 1 s and a
// point per second after it (up to the limit), so that retention thins and drops all through; the
// manager's crash points then include merge and swap (the merged undo written, the catalog's swap),
// the log is checked as runs of seqs (a thinned run covers its seqs; the history starts after the
// oldest seq retention reports), and the sampled seqs are taken where every write is a point.
// Usage: node dist/sim/kill-sweep.js [--iterations N] [--seed S] [--manager-share P (0.5)]
//        [--journal-max SIZE] [--manager-points merge,swap,...] [--json]
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BIN, freePort, prng, PYTHON, sleep } from './process-support.js';

const BLOCK = 4096;
const VOLUME_BYTES = 48 * 1024 * 1024;
/** The stamping client's blocks: the first 32 MiB. fio has the last 16 MiB. */
const FIO_OFFSET = 32 * 1024 * 1024;
const BLOCKS = FIO_OFFSET / BLOCK;
const AGENT_POINTS = ['append', 'fsync', 'seal', 'ship'] as const;
const MANAGER_POINTS = ['undo', 'apply', 'commit'] as const;
const RETENTION_POINTS = ['merge', 'swap'] as const;

/** Writes block after block (each holds its id), FLUSH every 32; prints each id once answered. */
const LOAD = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
first, blocks = int(sys.argv[2]), int(sys.argv[3])
i = first
while True:
    buf = (i).to_bytes(8, 'little') * ${BLOCK / 8}
    h.pwrite(buf, (i % blocks) * ${BLOCK})
    if i % 32 == 0:
        h.flush()
    print(i, flush=True)
    i += 1
`;

/** Prints the id held by each block offset given (as "offset id"). */
const PROBE = `
import nbd, sys
h = nbd.NBD()
h.connect_uri(sys.argv[1])
for off in sys.argv[2:]:
    b = h.pread(8, int(off))
    print(off, int.from_bytes(b, 'little'), flush=True)
`;

interface Options {
  iterations: number;
  seed: number;
  json: boolean;
  /** Share of iterations whose victim is the manager (0.5 unless --manager-share P). */
  managerShare?: number;
  /** The manager's --journal-max (retention thins and drops all the time); none by default. */
  journalMax?: string;
  /** Only these crash points on the manager (e.g. merge,swap); all of them by default. */
  managerPoints?: string[];
}

function parseArgs(argv: string[]): Options {
  const get = (name: string): string | undefined => {
    const at = argv.indexOf(name);
    return at >= 0 ? argv[at + 1] : undefined;
  };
  const journalMax = get('--journal-max');
  const managerPoints = get('--manager-points')?.split(',');
  return {
    iterations: Number(get('--iterations') ?? 20),
    seed: Number(get('--seed') ?? Math.floor(Math.random() * 2 ** 31)),
    json: argv.includes('--json'),
    managerShare: Number(get('--manager-share') ?? 0.5),
    ...(journalMax === undefined ? {} : { journalMax }),
    ...(managerPoints === undefined ? {} : { managerPoints }),
  };
}

class Proc {
  out = '';
  readonly child: ChildProcess;
  constructor(args: string[], env: NodeJS.ProcessEnv) {
    this.child = spawn(process.execPath, [BIN, ...args], {
      env: { ...process.env, ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.child.stdout?.on('data', (c: Buffer) => (this.out += c.toString()));
    this.child.stderr?.on(
      'data',
      (c: Buffer) => (this.out = (this.out + c.toString()).slice(-20_000)),
    );
  }
  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }
  async ready(marker: string): Promise<void> {
    for (let waited = 0; !this.out.includes(marker); waited += 25) {
      if (!this.alive || waited > 30_000)
        throw new Error(`process did not start: ${this.out.slice(-2000)}`);
      await sleep(25);
    }
  }
  async kill(signal: NodeJS.Signals): Promise<void> {
    if (!this.alive) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    this.child.kill(signal);
    await exited;
  }
  async exited(timeoutMs: number): Promise<boolean> {
    if (!this.alive) return true;
    return Promise.race([
      new Promise<boolean>((r) => this.child.once('exit', () => r(true))),
      sleep(timeoutMs).then(() => false),
    ]);
  }
}

interface Ports {
  link: number;
  managerNbd: number;
  http: number;
  agentNbd: number;
}

class Cluster {
  manager: Proc | undefined;
  agent: Proc | undefined;
  constructor(
    readonly dir: string,
    readonly ports: Ports,
    readonly journalMax: string | undefined,
  ) {}

  startManager(crashAt?: string): Proc {
    this.manager = new Proc(
      [
        'manager',
        '--data',
        path.join(this.dir, 'm'),
        '--listen',
        `127.0.0.1:${this.ports.link}`,
        '--nbd',
        `127.0.0.1:${this.ports.managerNbd}`,
        '--http',
        `127.0.0.1:${this.ports.http}`,
        '--token',
        'sweep',
        ...(this.journalMax === undefined
          ? []
          : ['--journal-max', this.journalMax, '--keep-every-write', '1s', '--keep', '1s:1h']),
      ],
      crashAt ? { REWIND_CRASH_AT: crashAt } : {},
    );
    return this.manager;
  }

  startAgent(crashAt?: string): Proc {
    this.agent = new Proc(
      [
        'agent',
        '--manager',
        `127.0.0.1:${this.ports.link}`,
        '--data',
        path.join(this.dir, 'a'),
        '--nbd',
        `127.0.0.1:${this.ports.agentNbd}`,
        '--token',
        'sweep',
        '--volume',
        `v:${VOLUME_BYTES}`,
        '--seal-ms',
        '100',
        '--seal-bytes',
        '256K',
      ],
      crashAt ? { REWIND_CRASH_AT: crashAt } : {},
    );
    return this.agent;
  }

  api<T>(method: string, route: string, body?: object): Promise<T> {
    const token = fs.readFileSync(path.join(this.dir, 'm', 'api-token'), 'utf8').trim();
    return fetch(`http://127.0.0.1:${this.ports.http}${route}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body ? { 'content-type': 'application/json' } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    }).then(async (r) => {
      const text = await r.text();
      if (!r.ok) throw new Error(`${method} ${route}: ${r.status} ${text}`);
      return (route === '/api/log' ? text : JSON.parse(text)) as T;
    });
  }

  async stop(): Promise<void> {
    await this.agent?.kill('SIGKILL');
    await this.manager?.kill('SIGKILL');
  }
}

interface Iteration {
  victim: 'agent' | 'manager';
  point: string;
  crashedAtPoint: boolean;
  replied: number;
  /** Writes fio saw answered, each checked in the history by fio's verify pass; -1 when fio hung and was killed. */
  fioVerified: number;
  seqLast: number;
  resyncRecords: number;
  /** With --journal-max: the oldest seq retention reports and the thinned runs in the log. */
  oldestSeq: number;
  thinnedRuns: number;
  /** With --journal-max: merges and drops the manager made since it last started. */
  retentionSteps: number;
}

/**
 * fio's job: every block of its 16 MiB written once in a seeded random order (randommap).
 * `randrw` with no reads rather than `randwrite`: fio checks each header's random seed only when a
 * job has both directions, and that check is what tells a block of this pass from a stale one.
 */
function fioJob(uri: string, seed: number): string[] {
  return [
    '--name=k',
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--rw=randrw',
    '--rwmixread=0',
    '--bssplit=4k/60:16k/25:64k/15',
    `--offset=${FIO_OFFSET}`,
    `--size=${VOLUME_BYTES - FIO_OFFSET}`,
    `--randseed=${seed}`,
    '--verify=crc32c',
    '--output-format=json',
  ];
}

const FIO_HEAD_START_MS = 300;

/**
 * Starts fio's write phase in `dir`. Its completion latency log (`fio_clat.1.log`, with offsets)
 * lists every write fio saw answered without error; fio writes it when it exits, which it does
 * when the connection dies.
 */
export function startFio(dir: string, uri: string, seed: number): ChildProcess {
  for (const f of fs.readdirSync(dir)) if (f.startsWith('fio')) fs.rmSync(path.join(dir, f));
  const job = [
    ...fioJob(uri, seed),
    '--iodepth=16',
    '--fsync=16',
    '--do_verify=0',
    '--verify_state_save=0',
    `--write_lat_log=${path.join(dir, 'fio')}`,
    '--log_offset=1',
    `--output=${path.join(dir, 'fio-write.json')}`,
  ];
  return spawn('fio', job, { cwd: dir, stdio: 'ignore' });
}

/**
 * Checks that every write fio saw answered is in the image at `uri`: a verify-only fio pass with
 * the same seed regenerates the whole write pass and reads every block back. Blocks fio never got
 * an answer for may fail (never written, or left from an earlier pass with another seed); a block
 * whose write was answered must not. Returns how many answered writes were checked.
 */
export function checkFioWrites(dir: string, uri: string, seed: number): number {
  const written = readFioReport(path.join(dir, 'fio-write.json'));
  const clat = path.join(dir, 'fio_clat.1.log');
  if (!fs.existsSync(clat)) {
    assert.equal(
      written.write.total_ios,
      0,
      `fio completed ${written.write.total_ios} writes but left no completion log`,
    );
    return 0; // killed before it connected
  }
  const lines = fs
    .readFileSync(clat, 'utf8')
    .split('\n')
    .map((line) => line.split(',').map((f) => f.trim()))
    .filter((fields) => fields[2] === '1');
  const answered = new Set(lines.map((fields) => Number(fields[4])));
  assert.equal(answered.size, lines.length, 'each block is written once in a pass');
  assert.ok(
    answered.size <= written.write.total_ios,
    `the completion log lists ${answered.size} writes, fio issued ${written.write.total_ios}`,
  );
  const out = path.join(dir, 'fio-verify.json');
  const run = spawnSync(
    'fio',
    [
      ...fioJob(uri, seed),
      '--iodepth=8',
      '--do_verify=1',
      '--verify_only=1',
      '--continue_on_error=verify',
      `--output=${out}`,
    ],
    { cwd: dir, timeout: 120_000 },
  );
  const text = `${run.stderr}\n${fs.existsSync(out) ? fs.readFileSync(out, 'utf8') : ''}`;
  const verify = readFioReport(out);
  assert.equal(
    verify.read.total_ios,
    verify.write.total_ios,
    `fio's verify pass read ${verify.read.total_ios} of the ${verify.write.total_ios} writes of the pass: ${text.slice(0, 2000)}`,
  );
  const failed = new Set(
    [...text.matchAll(/requested block: offset=(\d+)/g)].map((m) => Number(m[1])),
  );
  const missing = [...answered].filter((offset) => failed.has(offset));
  assert.equal(
    missing.length,
    0,
    `${missing.length} writes fio saw answered are missing or wrong in the image, first at offsets ${missing.slice(0, 5).join(', ')}: ${text
      .split('\n')
      .filter((l) => l.startsWith('verify:'))
      .slice(0, 5)
      .join('\n')}`,
  );
  return answered.size;
}

interface FioJobReport {
  error: number;
  read: { total_ios: number };
  write: { total_ios: number; io_bytes: number };
}

function readFioReport(file: string): FioJobReport {
  assert.ok(fs.existsSync(file), `fio wrote no report (${file})`);
  const text = fs.readFileSync(file, 'utf8');
  const job = (JSON.parse(text.slice(text.indexOf('{'))) as { jobs: FioJobReport[] }).jobs[0];
  assert.ok(job, `fio report without a job: ${text.slice(0, 500)}`);
  return job;
}

async function iterate(
  cluster: Cluster,
  random: (max: number) => number,
  victimDraw: number,
  firstId: number,
  managerShare: number,
  managerPoints: readonly string[] | undefined,
): Promise<{ result: Iteration; nextId: number }> {
  const victim = victimDraw < 1000 * managerShare ? 'manager' : 'agent';
  const points: readonly string[] =
    victim === 'agent'
      ? AGENT_POINTS
      : (managerPoints ??
        (cluster.journalMax === undefined
          ? MANAGER_POINTS
          : [...MANAGER_POINTS, ...RETENTION_POINTS]));
  const named = random(4) !== 0; // three in four at a named point, the rest at a random time
  const point = named ? (points[random(points.length)] as string) : 'random';
  // A process reaches a retention step a few times in its short life, an append hundreds.
  const hits = point === 'append' ? 200 : point === 'merge' || point === 'swap' ? 2 : 8;
  const crashAt = named ? `${point}:${1 + random(hits)}` : undefined;
  // The manager keeps running across agent kills; it is restarted (with its crash point) when it
  // is the victim.
  let manager = cluster.manager;
  if (victim === 'manager' || !manager?.alive) {
    await manager?.kill('SIGTERM');
    manager = cluster.startManager(victim === 'manager' ? crashAt : undefined);
    await manager.ready('API:');
  }
  const agent = cluster.startAgent(victim === 'agent' ? crashAt : undefined);
  await agent.ready('volume v:');
  // Load until the victim dies (or a random moment, when it is killed from outside).
  // fio first: it takes a few hundred ms to connect, and the agent's crash points count from its
  // first write, so the stamping client starts once fio is under way.
  const fioSeed = 1 + random(2 ** 30);
  const fio = startFio(cluster.dir, `nbd://127.0.0.1:${cluster.ports.agentNbd}/v`, fioSeed);
  await sleep(FIO_HEAD_START_MS + random(600));
  let replied = firstId - 1;
  const load = spawn(
    PYTHON,
    ['-c', LOAD, `nbd://127.0.0.1:${cluster.ports.agentNbd}/v`, String(firstId), String(BLOCKS)],
    { stdio: ['ignore', 'pipe', 'ignore'] },
  );
  let pending = '';
  load.stdout?.on('data', (c: Buffer) => {
    pending += c.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const line of lines) if (line) replied = Number(line);
  });
  const proc = victim === 'agent' ? agent : manager;
  const crashed = named ? await proc.exited(3000) : false;
  if (!crashed) {
    await sleep(named ? 0 : 200 + random(1500));
    await proc.kill('SIGKILL');
  }
  if (victim === 'manager') await sleep(100 + random(400)); // the agent keeps writing into its spool
  // The client sees the agent die (or is stopped); what it saw answered is final.
  await agent.kill('SIGKILL');
  await new Promise((r) => (load.exitCode === null ? load.once('exit', r) : r(null)));
  // fio 3.33's nbd engine can spin on a dead connection, printing "nothing to poll for in state
  // DEAD" into its output for ever (it once filled this machine's disk). Normally it exits at once;
  // one that has not after 5 s is killed, and its writes go unchecked in this iteration (counted).
  const fioExited = await Promise.race([
    new Promise<boolean>((r) =>
      fio.exitCode === null && fio.signalCode === null ? fio.once('exit', () => r(true)) : r(true),
    ),
    sleep(5000).then(() => false),
  ]);
  if (!fioExited) {
    fio.kill('SIGKILL');
    await new Promise((r) =>
      fio.exitCode === null && fio.signalCode === null ? fio.once('exit', r) : r(null),
    );
  }
  // Restart without crash points and check.
  if (victim === 'manager') {
    await manager.kill('SIGKILL');
    await cluster.startManager().ready('API:');
  }
  await cluster.startAgent().ready('volume v:');
  for (
    let waited = 0;
    !(await cluster.api<{ agentConnected: boolean }>('GET', '/api/status')).agentConnected;
    waited += 50
  ) {
    assert.ok(waited < 30_000, 'the agent reconnects after the restart');
    await sleep(50);
  }
  const sealed = await cluster.api<{ seqLast: number; committed: number }>('POST', '/api/seal', {
    wait: true,
    timeoutMs: 60_000,
  });
  const log = (await cluster.api<string>('GET', '/api/log'))
    .trim()
    .split('\n')
    .filter(Boolean)
    .map(
      (l) =>
        JSON.parse(l) as {
          seq: number;
          kind: string;
          offset: number;
          length: number;
          resync: boolean;
          seqFirst?: number;
        },
    );
  const retention =
    cluster.journalMax === undefined
      ? undefined
      : await cluster.api<{ oldestSeq: number; steps: { merges: number; drops: number } }>(
          'GET',
          '/api/retention',
        );
  const oldestSeq = retention?.oldestSeq ?? 0;
  const seqLast = checkSeqRuns(log, oldestSeq);
  assert.equal(sealed.committed, seqLast, 'everything captured is committed');
  const checked = await checkHistory(
    cluster,
    log,
    firstId,
    replied,
    random,
    fioExited ? fioSeed : undefined,
  );
  await cluster.agent?.kill('SIGTERM');
  return {
    result: {
      victim,
      point,
      crashedAtPoint: crashed,
      replied: replied - firstId + 1,
      fioVerified: checked.fioVerified,
      seqLast,
      resyncRecords: checked.resync,
      oldestSeq,
      retentionSteps: (retention?.steps.merges ?? 0) + (retention?.steps.drops ?? 0),
      thinnedRuns: new Set(log.filter((e) => e.kind === 'thinned').map((e) => e.seq)).size,
    },
    nextId: replied + 2,
  };
}

/**
 * The log covers every seq after `oldestSeq` once, in order: a write is its own seq, a thinned run
 * (one entry per range it wrote, all at its last seq) covers seqFirst..seq. Returns the last seq.
 */
function checkSeqRuns(
  log: readonly { seq: number; kind: string; seqFirst?: number }[],
  oldestSeq: number,
): number {
  let covered = oldestSeq;
  for (const e of log) {
    if (e.kind === 'thinned') {
      if (e.seq === covered && e.seqFirst !== undefined && e.seqFirst <= covered) continue; // same run
      assert.equal(e.seqFirst, covered + 1, `a thinned run at seq ${e.seq} starts after a gap`);
    } else assert.equal(e.seq, covered + 1, `seq gap at ${covered + 1}`);
    covered = e.seq;
  }
  return covered;
}

function probe(uri: string, offsets: number[]): Map<number, number> {
  const out = spawnSync(PYTHON, ['-c', PROBE, uri, ...offsets.map(String)], { timeout: 60_000 });
  assert.equal(out.status, 0, `probe failed: ${out.stderr}`);
  const ids = new Map<number, number>();
  for (const line of out.stdout.toString().trim().split('\n').filter(Boolean)) {
    const [offset, id] = line.split(' ').map(Number);
    ids.set(offset as number, id as number);
  }
  return ids;
}

async function checkHistory(
  cluster: Cluster,
  log: { seq: number; kind: string; offset: number; length: number; resync: boolean }[],
  firstId: number,
  replied: number,
  random: (max: number) => number,
  fioSeed: number | undefined,
): Promise<{ resync: number; fioVerified: number }> {
  const seqLast = log[log.length - 1]?.seq ?? 0;
  const uri = (view: string): string => `nbd://127.0.0.1:${cluster.ports.managerNbd}/v@${view}`;
  await cluster.api('POST', '/api/views', { name: 'last', kind: 'snapshot', at: String(seqLast) });
  // History at the last seq equals production.
  const image = path.join(cluster.dir, 'last.img');
  const copy = spawnSync('nbdcopy', [uri('last'), image], { timeout: 120_000 });
  assert.equal(copy.status, 0, `nbdcopy: ${copy.stderr}`);
  assert.ok(
    fs
      .readFileSync(image)
      .equals(fs.readFileSync(path.join(cluster.dir, 'a', 'production', 'v.img'))),
    'history at the last seq equals production',
  );
  fs.rmSync(image);
  // Every answered write of this iteration is in the history (its block holds its id, unless a
  // later answered write reused the block).
  const offsets = new Map<number, number>();
  for (let id = Math.max(firstId, replied - BLOCKS + 1); id <= replied; id++)
    offsets.set((id % BLOCKS) * BLOCK, id);
  const sample = [...offsets.entries()]
    .filter(() => random(4) === 0 || offsets.size < 200)
    .slice(0, 400);
  const seen = probe(
    uri('last'),
    sample.map(([offset]) => offset),
  );
  for (const [offset, id] of sample)
    assert.equal(
      seen.get(offset),
      id,
      `answered write ${id} at ${offset} is missing from the history`,
    );
  const fioVerified =
    fioSeed === undefined ? -1 : checkFioWrites(cluster.dir, uri('last'), fioSeed);
  await cluster.api('DELETE', '/api/views/last');
  // Sampled seqs: the block of the write at seq s holds its bytes at s and something else before
  // (at s - 1, which must be a point too: a write whose previous entry is the write before it).
  const writes = log.filter(
    (e, i) =>
      e.kind !== 'thinned' &&
      !e.resync &&
      e.length === BLOCK &&
      e.offset < FIO_OFFSET &&
      i > 0 &&
      log[i - 1]?.kind !== 'thinned' &&
      log[i - 1]?.seq === e.seq - 1,
  );
  for (let i = 0; i < 3 && writes.length > 1; i++) {
    const e = writes[1 + random(writes.length - 1)] as { seq: number; offset: number };
    // With a small journal, retention may thin or drop the sampled point while this runs: the
    // refusal says so, and the sample is skipped (anything else fails the sweep).
    const kept = await refusedAsGone(() =>
      cluster.api('POST', '/api/views', { name: 'at', kind: 'snapshot', at: String(e.seq) }),
    );
    if (!kept) continue;
    const after = probe(uri('at'), [e.offset]).get(e.offset);
    const stepped = await refusedAsGone(() =>
      cluster.api('POST', `/api/views/at/step`, { back: 1 }),
    );
    const before = stepped ? probe(uri('at'), [e.offset]).get(e.offset) : undefined;
    await cluster.api('DELETE', '/api/views/at');
    if (!stepped) continue;
    assert.ok(
      after !== undefined && after !== before,
      `seq ${e.seq}: the snapshot at it differs from the one before it in its own block`,
    );
    assert.equal(
      (after % BLOCKS) * BLOCK,
      e.offset,
      `seq ${e.seq}: its block holds a write addressed to it`,
    );
  }
  return { resync: log.filter((e) => e.resync).length, fioVerified };
}

/** Runs `call`; false when the manager refused it because retention thinned or dropped the point. */
async function refusedAsGone(call: () => Promise<unknown>): Promise<boolean> {
  try {
    await call();
    return true;
  } catch (error) {
    const message = (error as Error).message;
    if (
      /REWIND_POINT_INVALID/.test(message) &&
      /no longer kept|before the history starts/.test(message)
    )
      return false;
    throw error;
  }
}

export async function runSweep(
  options: Options,
  onProgress?: (i: number, it: Iteration) => void,
): Promise<Iteration[]> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-killsweep-'));
  const ports: Ports = {
    link: await freePort(),
    managerNbd: await freePort(),
    http: await freePort(),
    agentNbd: await freePort(),
  };
  const cluster = new Cluster(dir, ports, options.journalMax);
  const random = prng(options.seed);
  // Victims come from their own stream: `random` is also drawn from by the checks, as many times
  // as the history is long, so the victims of a seed would otherwise depend on timing.
  const victims = prng(options.seed + 1);
  const results: Iteration[] = [];
  let nextId = 1;
  try {
    for (let i = 0; i < options.iterations; i++) {
      const { result, nextId: next } = await iterate(
        cluster,
        random,
        victims(1000),
        nextId,
        options.managerShare ?? 0.5,
        options.managerPoints,
      );
      nextId = next;
      results.push(result);
      onProgress?.(i, result);
    }
    return results;
  } catch (error) {
    throw new Error(
      `kill sweep failed at iteration ${results.length + 1} (seed ${options.seed}): ${(error as Error).message}\n--- agent ---\n${cluster.agent?.out.slice(-3000) ?? ''}\n--- manager ---\n${cluster.manager?.out.slice(-3000) ?? ''}`,
    );
  } finally {
    await cluster.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function summarize(
  results: Iteration[],
): Record<string, { kills: number; atPoint: number; writesAnswered: number; fioVerified: number }> {
  const table: Record<
    string,
    { kills: number; atPoint: number; writesAnswered: number; fioVerified: number }
  > = {};
  for (const r of results) {
    const key = `${r.victim}:${r.point}`;
    const row = (table[key] ??= { kills: 0, atPoint: 0, writesAnswered: 0, fioVerified: 0 });
    row.kills += 1;
    row.atPoint += r.crashedAtPoint ? 1 : 0;
    row.writesAnswered += r.replied;
    row.fioVerified += Math.max(0, r.fioVerified);
  }
  return table;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const options = parseArgs(process.argv.slice(2));
  const started = Date.now();
  console.error(
    `kill sweep: ${options.iterations} iterations, seed ${options.seed}${options.journalMax ? `, journal limit ${options.journalMax}` : ''}`,
  );
  runSweep(options, (i, it) =>
    console.error(
      `${i + 1}/${options.iterations} ${it.victim} ${it.point}${it.crashedAtPoint ? ' (at the point)' : ''}: ${it.replied} stamped and ${it.fioVerified < 0 ? 'no (fio hung, killed)' : it.fioVerified} fio writes answered and found, history ${it.oldestSeq}..${it.seqLast} checked${options.journalMax ? `, ${it.thinnedRuns} thinned runs` : ''}`,
    ),
  )
    .then((results) => {
      const table = summarize(results);
      const summary = {
        seed: options.seed,
        iterations: results.length,
        seconds: Math.round((Date.now() - started) / 1000),
        byPoint: table,
      };
      if (options.json) console.log(JSON.stringify(summary));
      else {
        console.log(
          `kill sweep passed: ${results.length} kills, seed ${options.seed}, ${summary.seconds} s`,
        );
        for (const [key, row] of Object.entries(table).sort())
          console.log(
            `  ${key.padEnd(18)} kills ${String(row.kills).padStart(5)}  at the named point ${String(row.atPoint).padStart(5)}  stamped writes answered ${String(row.writesAnswered).padStart(8)}  fio writes verified ${row.fioVerified}`,
          );
      }
    })
    .catch((error: unknown) => {
      console.error((error as Error).message);
      process.exit(1);
    });
}
