// The command line of the archive: its flags on `rewind up` and `rewind manager` (or the
// `{"archive": {...}}` section of the JSON config file), `rewind archive status | ls | verify` as
// clients of the manager's API, and `rewind archive rebuild`, which runs here (no manager yet).
import fs from 'node:fs';
import path from 'node:path';
import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';
import { formatBytes, parseSize, RewindError } from '../core/index.js';
import {
  archivePolicyFrom,
  parseDuration,
  type ArchiveFullRow,
  type ArchiveObjectRow,
  type ArchiveStatus,
  type FullProgress,
  type FullResult,
  type FullsStatus,
  type OldPointPlan,
  type VerifyResult,
} from '../manager/index.js';
import type { RebuildProgress, RebuildResult } from '../manager/index.js';
import { rebuildArchive, type ArchiveRunOptions } from '../runtime/index.js';

export function withArchiveOptions(command: Command): Command {
  return command
    .option('--archive <dir|s3://bucket/prefix>', 'archive committed history to this store')
    .option('--archive-key-file <file>', 'encrypt archive objects with this key (32 bytes or hex)')
    .option('--s3-endpoint <url>', 'S3 endpoint for S3-compatible servers ($AWS_ENDPOINT_URL)')
    .option('--s3-path-style', 'path-style bucket addressing ($REWIND_S3_PATH_STYLE=1)')
    .option('--s3-region <region>', 'S3 region (default: the AWS SDK chain, $AWS_REGION)')
    .option(
      '--archive-require-object-lock',
      'refuse to start unless the store enforces S3 Object Lock (probed by trying a delete)',
    )
    .option('--archive-cache-max <size>', 'bound on DATA/archive-cache (old points)', '1G')
    .option('--archive-batch-bytes <size>', 'close an archive batch at this many bytes', '64M')
    .option('--archive-batch-ms <ms>', 'close an archive batch this long after its first', '10000')
    .option(
      '--archive-keep-every-write <duration>',
      'the archive keeps every write for this long (default 30d)',
    )
    .option(
      '--archive-keep <tiers>',
      'then one full image per EVERY until FOR old: EVERY:FOR,... or none (default 1d:365d)',
    )
    .option(
      '--full-every <duration|off>',
      'take a virtual full image this long after the newest one (default 24h; the first one ' +
        '10 minutes after start when there is none), or off',
    );
}

export interface ArchiveFlags {
  archive?: string;
  archiveKeyFile?: string;
  s3Endpoint?: string;
  s3PathStyle?: boolean;
  s3Region?: string;
  archiveRequireObjectLock?: boolean;
  archiveCacheMax?: string;
  archiveBatchBytes?: string;
  archiveBatchMs?: string;
  archiveKeepEveryWrite?: string;
  archiveKeep?: string;
  fullEvery?: string;
  config?: string;
}

const CONFIG_KEYS = [
  'url',
  'keyFile',
  's3Endpoint',
  's3PathStyle',
  's3Region',
  'requireObjectLock',
  'cacheMax',
  'batchBytes',
  'batchMs',
  'keepEveryWrite',
  'keep',
  'fullEvery',
] as const;
type ConfigKey = (typeof CONFIG_KEYS)[number];

/** The archive given: the config file's section, with the flags over it; undefined when none. */
export function archiveFromOptions(options: ArchiveFlags): ArchiveRunOptions | undefined {
  const config = options.config ? configArchive(options.config) : {};
  const pick = (flag: string | undefined, key: ConfigKey): string | undefined => {
    if (flag !== undefined) return flag;
    const value = config[key];
    if (value === undefined) return undefined;
    if (typeof value === 'string' || typeof value === 'number') return String(value);
    throw new RewindError('REWIND_BAD_ARGUMENT', `--config: archive "${key}" is not a string`);
  };
  const url = pick(options.archive, 'url');
  const keepEveryWrite = pick(options.archiveKeepEveryWrite, 'keepEveryWrite');
  const keep = pick(options.archiveKeep, 'keep');
  if (url === undefined) {
    if (options.archiveKeyFile !== undefined)
      throw new RewindError('REWIND_BAD_ARGUMENT', '--archive-key-file needs --archive');
    if (keepEveryWrite !== undefined || keep !== undefined)
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        '--archive-keep-every-write and --archive-keep need --archive',
      );
    if (options.fullEvery !== undefined)
      throw new RewindError('REWIND_BAD_ARGUMENT', '--full-every needs --archive', {
        hint: 'full images are stored in the archive: give --archive DIR or s3://BUCKET/PREFIX',
      });
    return undefined;
  }
  const policy = archivePolicyFrom({
    ...(keepEveryWrite !== undefined ? { keepEveryWrite } : {}),
    ...(keep !== undefined ? { keep } : {}),
  });
  const keyFile = pick(options.archiveKeyFile, 'keyFile');
  const endpoint = pick(options.s3Endpoint, 's3Endpoint');
  const region = pick(options.s3Region, 's3Region');
  const pathStyle = options.s3PathStyle ?? (config.s3PathStyle === true ? true : undefined);
  const requireObjectLock =
    options.archiveRequireObjectLock ?? (config.requireObjectLock === true ? true : undefined);
  const batchMs = Number(pick(options.archiveBatchMs, 'batchMs') ?? '10000');
  if (!Number.isSafeInteger(batchMs) || batchMs < 0)
    throw new RewindError('REWIND_BAD_ARGUMENT', '--archive-batch-ms is not a number of ms');
  const fullEvery = pick(options.fullEvery, 'fullEvery');
  const fullEveryMs = fullEvery === undefined ? undefined : parseFullEvery(fullEvery);
  return {
    // A directory is kept absolute: the catalog records the URL and compares it at each start.
    url: /^[a-z][a-z0-9+.-]*:\/\//i.test(url) ? url : path.resolve(url),
    ...(keyFile !== undefined ? { keyFile } : {}),
    ...(endpoint !== undefined ? { s3Endpoint: endpoint } : {}),
    ...(region !== undefined ? { s3Region: region } : {}),
    ...(pathStyle !== undefined ? { s3PathStyle: pathStyle } : {}),
    ...(requireObjectLock === true ? { requireObjectLock } : {}),
    cacheBytesMax: parseSize(
      pick(options.archiveCacheMax, 'cacheMax') ?? '1G',
      '--archive-cache-max',
    ),
    batchBytesMax: parseSize(
      pick(options.archiveBatchBytes, 'batchBytes') ?? '64M',
      '--archive-batch-bytes',
    ),
    batchMs,
    policy,
    ...(fullEveryMs !== undefined ? { fullEveryMs } : {}),
  };
}

/** `--full-every`: a duration of at least a minute, or `off` (null). */
function parseFullEvery(text: string): number | null {
  if (text.trim() === 'off') return null;
  const ms = parseDuration(text, '--full-every');
  if (ms < 60_000) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `--full-every ${text} is under a minute`, {
      hint: 'a full reads every volume: give e.g. 6h, 24h or 7d, or off',
    });
  }
  return ms;
}

function configArchive(file: string): Partial<Record<ConfigKey, unknown>> {
  let config: unknown;
  try {
    config = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (error) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `--config ${file}: ${(error as Error).message}`);
  }
  const archive = (config as { archive?: unknown } | null)?.archive;
  if (archive === undefined) return {};
  if (typeof archive !== 'object' || archive === null)
    throw new RewindError('REWIND_BAD_ARGUMENT', `--config ${file}: "archive" must be an object`);
  for (const key of Object.keys(archive)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(key)) {
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `--config ${file}: "${key}" is not an archive setting`,
        { hint: `settings: ${CONFIG_KEYS.join(', ')}` },
      );
    }
  }
  return archive;
}

export interface ArchiveApi {
  json(options: object, method: string, route: string, body?: object): Promise<unknown>;
  stream(options: object, method: string, route: string, body?: object): Promise<Response>;
}

export function registerArchiveCommand(
  program: Command,
  withServer: (command: Command) => Command,
  api: ArchiveApi,
): void {
  const archive = program
    .command('archive')
    .description('the archive: where committed history goes after the local journal');
  withServer(
    archive.command('status').description("the archive's state").option('--json', 'print JSON'),
  ).action(async (options: { json?: boolean }) => {
    const status = (await api.json(options, 'GET', '/api/archive')) as ArchiveStatus;
    if (options.json) return console.log(JSON.stringify(status));
    printStatus(status);
  });
  withServer(
    archive
      .command('ls')
      .description('the archived batch objects and full images, oldest first')
      .option('--json', 'print JSON'),
  ).action(async (options: { json?: boolean }) => {
    const objects = (await api.json(options, 'GET', '/api/archive/objects')) as ArchiveObjectRow[];
    const fulls = (await api.json(options, 'GET', '/api/archive/fulls')) as ArchiveFullRow[];
    if (options.json) {
      // One list: batch objects (kind "batch"), then full images (kind "full", by manifest key).
      const listed = [
        ...objects.map((o) => ({ kind: 'batch', ...o })),
        ...fulls.map((f) => ({ kind: 'full', key: f.manifestKey, ...f })),
      ];
      return console.log(JSON.stringify(listed));
    }
    for (const o of objects) {
      console.log(
        `${o.key}\tseq ${o.seqFirst}..${o.seqLast}\t${o.txCount} transactions\t${formatBytes(o.plainBytes)} plain\t${formatBytes(o.storedBytes)} stored\t${o.createdAt}`,
      );
    }
    for (const f of fulls) console.log(fullLine(f));
    console.log(`${objects.length} objects, ${fulls.length} full images`);
  });
  withServer(
    archive
      .command('fulls')
      .description('the virtual full images in the archive, oldest first (rewind full takes one)')
      .option('--json', 'print JSON'),
  ).action(async (options: { json?: boolean }) => {
    const fulls = (await api.json(options, 'GET', '/api/archive/fulls')) as ArchiveFullRow[];
    if (options.json) return console.log(JSON.stringify(fulls));
    for (const f of fulls) console.log(fullLine(f));
    console.log(`${fulls.length} full images`);
  });
  withServer(
    archive
      .command('verify')
      .description('check every archived object against the catalog (exit 1 on any problem)')
      .option('--deep', 'read and decode every object; compare with the local journal')
      .option('--json', 'print JSON'),
  ).action(async (options: { deep?: boolean; json?: boolean }) => {
    const result = await verify(api, options);
    if (options.json) console.log(JSON.stringify(result));
    else printVerify(result);
    if (result.problems.length > 0) process.exitCode = 1;
  });
  registerRebuild(archive);
}

function registerRebuild(archive: Command): void {
  archive
    .command('rebuild')
    .description(
      "recreate a manager's catalog and replica in DIR from the archive alone (the backup host was lost); then start `rewind manager --data DIR --archive URL` on it",
    )
    .requiredOption('--archive <dir|s3://bucket/prefix>', 'the archive to rebuild from')
    .requiredOption('--data <dir>', 'the new, empty data directory of the manager')
    .option('--archive-key-file <file>', 'the key the archive is encrypted with')
    .option('--volume-set <id>', 'the volume set to rebuild, when the archive holds several')
    .option('--s3-endpoint <url>', 'S3 endpoint for S3-compatible servers ($AWS_ENDPOINT_URL)')
    .option('--s3-path-style', 'path-style bucket addressing ($REWIND_S3_PATH_STYLE=1)')
    .option('--s3-region <region>', 'S3 region (default: the AWS SDK chain, $AWS_REGION)')
    .option('--json', 'print the summary as JSON')
    .action(
      async (options: ArchiveFlags & { data: string; volumeSet?: string; json?: boolean }) => {
        const archive = archiveFromOptions(options);
        if (archive === undefined)
          throw new RewindError('REWIND_BAD_ARGUMENT', 'rebuild needs --archive');
        const report = progressReporter();
        const result = await rebuildArchive({
          archive,
          dataDir: options.data,
          ...(options.volumeSet !== undefined ? { volumeSetId: options.volumeSet } : {}),
          onProgress: report,
        });
        report(undefined);
        if (options.json) return console.log(JSON.stringify(result));
        printRebuild(result, options);
      },
    );
}

/** Progress of a rebuild on stderr: a bar on a terminal, else a line every 2 s. */
function progressReporter(): (progress: RebuildProgress | undefined) => void {
  const bar = process.stderr.isTTY
    ? new SingleBar(
        {
          format:
            'rebuild [{bar}] {value}/{total} objects {read}, {txs} transactions applied{base}',
          stream: process.stderr,
        },
        Presets.shades_classic,
      )
    : undefined;
  let lastMs = 0;
  let started = false;
  return (progress) => {
    if (progress === undefined) return bar?.stop();
    const fields = {
      read: formatBytes(progress.bytesRead),
      txs: progress.transactionsApplied,
      base:
        progress.chunksTotal > 0
          ? `, base full image ${progress.chunksRead}/${progress.chunksTotal} chunks`
          : '',
    };
    if (bar) {
      if (!started) bar.start(progress.objectsTotal, 0, fields);
      started = true;
      return bar.update(progress.objectsRead, fields);
    }
    if (Date.now() - lastMs < 2000 && progress.objectsRead < progress.objectsTotal) return;
    lastMs = Date.now();
    process.stderr.write(
      `rebuild: ${progress.objectsRead}/${progress.objectsTotal} objects, ${fields.read} read, ${fields.txs} transactions applied${fields.base}\n`,
    );
  };
}

function printRebuild(r: RebuildResult, options: { data: string; archive?: string }): void {
  console.log(`volume set ${r.volumeSetName} (${r.volumeSetId}), descriptor ${r.descriptorKey}`);
  for (const v of r.volumes) console.log(`volume ${v.name}: ${formatBytes(v.sizeBytes)}`);
  console.log(
    `read ${r.objects} objects (${formatBytes(r.bytesRead)}), applied ${r.transactions} transactions`,
  );
  if (r.base)
    console.log(
      `base: full image ${r.base.manifestKey} at seq ${r.base.seq} (${r.base.chunks} chunks), the archive's redo replayed over it`,
    );
  console.log(
    `full images recorded: ${r.fulls.length}${r.fulls.length > 0 ? ` (seqs ${r.fulls.map((f) => f.seq).join(', ')})` : ''}`,
  );
  for (const f of r.fullsSkipped) console.log(`full image ${f.manifestKey} not used: ${f.problem}`);
  for (const gap of r.gaps)
    console.log(`history gap: seqs ${gap.seqFirst}..${gap.seqLast} (refused as points)`);
  if (r.stoppedAt)
    console.log(
      `stopped early: ${r.stoppedAt.key}: ${r.stoppedAt.problem}; history after seq ${r.seq} is not rebuilt (the agent resyncs it)`,
    );
  console.log(`replica at seq ${r.seq}; archived points from seq ${r.seqFrom} are served`);
  console.log(
    `next: rewind manager --data ${options.data} --archive ${options.archive ?? 'URL'} --token ... (the agent reconnects and resumes)`,
  );
}

/**
 * `rewind full [VOLUME...] [--at POINT]`: a virtual full image in the archive, with progress on
 * stderr, then what was stored.
 */
export function registerFullCommand(
  program: Command,
  withServer: (command: Command) => Command,
  api: ArchiveApi,
): void {
  withServer(
    program
      .command('full')
      .description(
        'store a virtual full image of the volumes (all when none is named) in the archive, ' +
          'read through a view (no production I/O); only chunks changed since earlier fulls ' +
          'are uploaded',
      )
      .argument('[volumes...]', 'volume names (default: every volume, at one seq)')
      .option('--at <point>', 'the POINT to image (default: the newest committed write)')
      .option('--json', 'print JSON'),
  ).action(async (volumes: string[], options: { at?: string; json?: boolean }) => {
    if (options.at !== undefined) await fetchOldPoint(api, options, options.at);
    const response = await api.stream(options, 'POST', '/api/archive/full', {
      volumes,
      ...(options.at !== undefined ? { at: options.at } : {}),
    });
    const result = (await readStream(
      response,
      'full',
      'chunks',
      fullProgress,
    )) as unknown as FullResult & { type?: string };
    delete result.type;
    if (options.json) return console.log(JSON.stringify(result));
    const c = result.chunks;
    console.log(
      `full image ${result.id} at seq ${result.seq}${result.time ? ` (${result.time})` : ''}: ${result.volumes.join(', ')}, ${formatBytes(result.logicalBytes)}`,
    );
    console.log(
      `chunks: ${c.total} (${c.new} new, ${c.known} already stored, ${c.zero} zero); ${formatBytes(result.bytesNew)} stored new in ${(result.durationMs / 1000).toFixed(1)} s as ${result.manifestKey}`,
    );
  });
}

function fullProgress(line: Record<string, unknown>): ProgressShown & { bytes: string } {
  const p = line as unknown as FullProgress;
  return {
    done: p.chunksDone,
    total: p.chunksTotal,
    detail: `chunks, ${p.chunksNew} new, ${formatBytes(p.bytesUploaded)} uploaded${p.waiting ? ` (waiting: ${p.waiting})` : ''}`,
    bytes: `${formatBytes(p.bytesUploaded)} uploaded`,
  };
}

function fullLine(f: ArchiveFullRow): string {
  const time = f.timeUs === 0 ? '-' : new Date(f.timeUs / 1000).toISOString();
  return `full ${f.id}\tseq ${f.seq}\t${time}\tvolumes ${f.volumes.join(',')}\t${formatBytes(f.logicalBytes)}\t${f.chunkCount} chunks (${f.newChunks} new)\t${formatBytes(f.storedBytes)} stored new\t${f.manifestKey}`;
}

async function verify(api: ArchiveApi, options: { deep?: boolean }): Promise<VerifyResult> {
  const response = await api.stream(options, 'POST', '/api/archive/verify', {
    deep: options.deep === true,
  });
  return (await readStream(response, 'verify', 'objects')) as unknown as VerifyResult;
}

/**
 * A POINT older than the journal: prints what it takes from the archive (objects, bytes to
 * fetch) and fetches it with progress on stderr. Nothing when the journal serves it.
 */
export async function fetchOldPoint(
  api: ArchiveApi,
  options: object,
  point: string,
): Promise<void> {
  const route = `/api/archive/plan?point=${encodeURIComponent(point)}`;
  const { plan } = (await api.json(options, 'GET', route)) as { plan: OldPointPlan | null };
  if (plan === null) return;
  const cached = plan.objects.filter((o) => o.cached).length;
  const objects = `${plan.objects.length} objects (${plan.objects.length - cached} to fetch; ${cached} cached)`;
  // On stderr, with the progress: stdout stays the command's own answer (--json).
  if (plan.way === 'full' && plan.full) {
    const full = plan.full;
    console.error(
      `seq ${plan.seq} is older than the journal: full image ${full.id} at seq ${full.seq} (${full.chunks} chunks, ${full.cached ? 'materialised already' : `${formatBytes(full.chunkBytes)}`}) plus ${plan.increments} archived increments from ${objects}; ${formatBytes(plan.fetchBytes)} to fetch (not by the journal's anchor: ${plan.otherWay})`,
    );
  } else {
    console.error(
      `seq ${plan.seq} is older than the journal: the view at seq ${plan.anchorSeq} with the archived undo of ${plan.increments} transactions from ${objects}; ${formatBytes(plan.fetchBytes)} to fetch`,
    );
  }
  if (plan.fetchBytes === 0) return;
  const response = await api.stream(options, 'POST', '/api/archive/fetch', { point });
  await readStream(response, 'fetch', 'objects');
}

/** What a progress line shows: how far, of how much, and a detail. */
interface ProgressShown {
  done: number;
  total: number;
  detail: string;
}

/** Verify and fetch lines: objects done of total, the key, the bytes read. */
function objectProgress(line: Record<string, unknown>): ProgressShown & { bytes: string } {
  return {
    done: line.done as number,
    total: line.total as number,
    detail: String(line.key),
    bytes: formatBytes(line.bytes as number),
  };
}

/** Reads an NDJSON answer: progress lines to stderr (a bar on a terminal), then the result. */
async function readStream(
  response: Response,
  what: string,
  unit: string,
  shown: (line: Record<string, unknown>) => ProgressShown & { bytes: string } = objectProgress,
): Promise<Record<string, unknown>> {
  const bar = process.stderr.isTTY
    ? new SingleBar(
        { format: `${what} [{bar}] {value}/{total} ${unit} {read}`, stream: process.stderr },
        Presets.shades_classic,
      )
    : undefined;
  let result: Record<string, unknown> | undefined;
  let started = false;
  let buffered = '';
  const decoder = new TextDecoder();
  const handle = (text: string): void => {
    if (text.trim() === '') return;
    const line = JSON.parse(text) as { type: string } & Record<string, unknown>;
    if (line.type === 'progress') {
      const { done, total, detail, bytes } = shown(line);
      if (bar) {
        if (!started) bar.start(total, 0, { read: '' });
        started = true;
        bar.update(done, { read: bytes });
      } else {
        process.stderr.write(`${what}: ${done}/${total} ${detail}\n`);
      }
    } else if (line.type === 'result') {
      result = line;
    } else {
      const hint = typeof line.hint === 'string' ? { hint: line.hint } : {};
      throw new RewindError((line.code as never) ?? 'REWIND_IO', String(line.message), hint);
    }
  };
  try {
    for await (const chunk of response.body ?? []) {
      buffered += decoder.decode(chunk, { stream: true });
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      lines.forEach(handle);
    }
    handle(buffered);
  } finally {
    bar?.stop();
  }
  if (!result) throw new RewindError('REWIND_IO', `${what}: the answer ended without a result`);
  return result;
}

function printStatus(s: ArchiveStatus & { fulls?: FullsStatus }): void {
  console.log(`archive: ${s.url} (${s.state})`);
  const caps = s.capabilities;
  console.log(
    `capabilities: ${caps ? `conditional writes ${caps.conditionalWrite ? 'yes' : 'no'}, object lock ${caps.objectLock ? 'enforced' : 'no'}` : 'not probed yet'}`,
  );
  console.log(`encryption: ${s.encryption.enabled ? `on (key id ${s.encryption.keyId})` : 'off'}`);
  console.log(
    `archived: seq ${s.archivedFromSeq ?? 0}..${s.archivedThroughSeq}${s.archivedThroughTime ? ` (through ${s.archivedThroughTime})` : ''}`,
  );
  console.log(`backlog: ${s.backlog.transactions} transactions, ${formatBytes(s.backlog.bytes)}`);
  console.log(
    `stored: ${s.objects} objects, ${formatBytes(s.storedBytes)} (${formatBytes(s.plainBytes)} plain, ratio ${s.compressionRatio})`,
  );
  console.log(`requests: ${s.requests.put} PUT, ${s.requests.get} GET, ${s.requests.head} HEAD`);
  if (s.lastError) console.log(`last error: ${s.lastError} (${s.lastErrorAt})`);
  const r = s.retention;
  if (r) {
    console.log(
      `policy: every write for ${r.policy.keepEveryWrite}${r.everyWriteFromSeq === null ? '' : ` (from seq ${r.everyWriteFromSeq})`}, then ${r.policy.keep} as full images`,
    );
    console.log(
      `  base: ${r.baseSeq === null ? 'no full image before the window yet' : `full image at seq ${r.baseSeq}`}; ${r.coarsePoints.length} coarser points before it`,
    );
    const d = r.deleted;
    console.log(
      `  deleted since start: ${d.objects} objects (${d.txs} transactions), ${d.fulls} full images, ${d.chunks} chunks; ${r.pendingDeletions} deletes waiting`,
    );
    if (r.stuck) console.log(`  ${r.stuck}`);
    if (r.lastError) console.log(`  last delete error: ${r.lastError}`);
  }
  const fulls = s.fulls;
  if (fulls) {
    const newest = fulls.newest;
    console.log(
      `full images: ${fulls.count}, ${fulls.chunks} chunks, ${formatBytes(fulls.chunkStoredBytes)} stored; every ${fulls.every}${fulls.nextAt ? `, next due ${fulls.nextAt}` : ''}`,
    );
    console.log(`newest full: ${newest ? fullLine(newest) : 'none'}`);
    const running = fulls.running;
    if (running) {
      console.log(
        `taking a full at seq ${running.seq}: chunk ${running.chunksDone} of ${running.chunksTotal}, ${formatBytes(running.bytesUploaded)} uploaded${running.waiting ? ` (waiting: ${running.waiting})` : ''}`,
      );
    }
  }
  for (const alert of s.alerts) console.log(`${alert.level}: ${alert.message}`);
}

function printVerify(r: VerifyResult): void {
  for (const p of r.problems) console.log(`problem: ${p.key}: ${p.problem}`);
  console.log(
    `${r.deep ? 'deep ' : ''}verify: ${r.objectsOk} of ${r.objects} objects ok (${r.fulls} full image manifests, ${r.chunks} chunks, ${r.descriptors} volume-set descriptors), ${r.transactions} transactions${r.deep ? `, ${r.comparedLocally} compared with the journal, ${formatBytes(r.bytesRead)} read, points ${r.pointsCompared.join(', ') || 'none'} rebuilt from the archive and compared with the journal` : ''}; ${r.problems.length} problems`,
  );
}
