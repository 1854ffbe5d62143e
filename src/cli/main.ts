// The `rewind` command line: argv to API calls (or to starting the processes); no domain logic.
import { Command, Option } from 'commander';
import { errorMessage, formatBytes, parseSize, rethrowIfBug, RewindError } from '../core/index.js';
import { Presets, SingleBar } from 'cli-progress';
import path from 'node:path';
import type { VolumeSpec } from '../agent/index.js';
import fs from 'node:fs';
import type { RestoreStatus } from '../manager/index.js';
import {
  startAgent,
  startManager,
  startUp,
  type Endpoint,
  type Running,
} from '../runtime/index.js';
import {
  registerRetentionCommand,
  retentionFromOptions,
  withRetentionOptions,
  type RetentionFlags,
} from './retention.js';

function endpoint(text: string, what: string): Endpoint {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text);
  if (!match) throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not HOST:PORT`);
  return { host: (match[1] as string).replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

function volumeSpec(text: string, previous: VolumeSpec[]): VolumeSpec[] {
  const at = text.indexOf(':');
  if (at <= 0)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `--volume "${text}" is not NAME:SIZE or NAME:PATH`,
    );
  const name = text.slice(0, at);
  const rest = text.slice(at + 1);
  const spec: VolumeSpec = rest.includes('/')
    ? { name, path: rest }
    : { name, sizeBytes: parseSize(rest, `size of volume ${name}`) };
  return [...previous, spec];
}

let apiToken: string | undefined = process.env.REWIND_TOKEN;

function server(options: { server?: string; apiTokenFile?: string }): string {
  if (options.apiTokenFile) apiToken = fs.readFileSync(options.apiTokenFile, 'utf8').trim();
  return (options.server ?? process.env.REWIND_SERVER ?? 'http://127.0.0.1:7420').replace(
    /\/$/,
    '',
  );
}

async function call(base: string, method: string, route: string, body?: object): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(`${base}${route}`, {
      method,
      headers: {
        ...(body ? { 'content-type': 'application/json' } : {}),
        ...(apiToken ? { authorization: `Bearer ${apiToken}` } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
  } catch (error) {
    throw new RewindError(
      'REWIND_BUSY',
      `cannot reach the Rewind API at ${base}: ${errorMessage((error as Error).cause ?? error)}`,
      { hint: 'is rewind up running? set --server or REWIND_SERVER' },
    );
  }
  if (!response.ok) {
    const payload = (await response.json().catch(() => ({}))) as {
      error?: { code?: string; message?: string; hint?: string | null };
    };
    const hint = payload.error?.hint;
    throw new RewindError(
      (payload.error?.code as never) ?? 'REWIND_IO',
      payload.error?.message ?? `HTTP ${response.status}`,
      hint ? { hint } : {},
    );
  }
  return response;
}

async function json<T>(base: string, method: string, route: string, body?: object): Promise<T> {
  return (await (await call(base, method, route, body)).json()) as T;
}

const program = new Command('rewind')
  .description('Continuous data protection for block devices over NBD')
  .showHelpAfterError();
const withServer = (command: Command): Command =>
  command
    .option('--server <url>', 'Rewind API (default $REWIND_SERVER or http://127.0.0.1:7420)')
    .option(
      '--api-token-file <file>',
      'API token file (default $REWIND_TOKEN; needed off loopback and for rewind manager)',
    );

withRetentionOptions(
  program
    .command('up')
    .description('run agent and manager in one process (the embedded default)')
    .option('--data <dir>', 'data directory', './rewind-data')
    .option('--nbd <host:port>', 'NBD listen address', '127.0.0.1:10809')
    .option('--http <host:port>', 'HTTP API listen address', '127.0.0.1:7420')
    .option(
      '--volume <name:size|name:path>',
      'protect a volume (repeatable): NAME:SIZE creates a sparse image, NAME:PATH uses an existing file or device',
      volumeSpec,
      [],
    )
    .option('--seal-bytes <size>', 'seal the active segment at this size', '64M')
    .option('--seal-ms <ms>', 'seal the active segment at this age', '1000')
    .option(
      '--spool-bytes <size>',
      'bound on segments waiting to ship; past it the agent runs degraded (dirty map only)',
      '16G',
    ),
).action(
  async (
    options: {
      data: string;
      nbd: string;
      http: string;
      volume: VolumeSpec[];
      sealBytes: string;
      sealMs: string;
      spoolBytes: string;
    } & RetentionFlags,
  ) => {
    const retention = retentionFromOptions(options);
    const running = await startUp({
      ...(retention ? { retention } : {}),
      dataDir: options.data,
      nbd: endpoint(options.nbd, '--nbd'),
      http: endpoint(options.http, '--http'),
      volumes: options.volume,
      sealBytes: parseSize(options.sealBytes, '--seal-bytes'),
      sealMs: Number(options.sealMs),
      spoolBytes: parseSize(options.spoolBytes, '--spool-bytes'),
    });
    printVolumes(running);
    console.log(`API: ${running.httpAddress}`);
    console.log(`console: ${running.consoleUrl}`);
    if (running.apiTokenFile)
      console.log(`API token: ${running.apiTokenFile} (CLI: --api-token-file or REWIND_TOKEN)`);
    stopOnSignals(running);
  },
);

function printVolumes(running: Running): void {
  const { host, port } = running.nbdAddress;
  for (const volume of running.agent?.volumes ?? [])
    console.log(
      `volume ${volume.name}: nbd://${host}:${port}/${volume.name} (${volume.sizeBytes} bytes)`,
    );
}

function token(options: { token?: string; tokenFile?: string }): string {
  const value = options.tokenFile
    ? fs.readFileSync(options.tokenFile, 'utf8').trim()
    : (options.token ?? process.env.REWIND_LINK_TOKEN);
  if (!value)
    throw new RewindError('REWIND_BAD_ARGUMENT', 'a shared token is required', {
      hint: 'give --token-file FILE, --token TOKEN or REWIND_LINK_TOKEN',
    });
  return value;
}

withRetentionOptions(
  program
    .command('manager')
    .description(
      'run the manager alone (backup host): receives segments from an agent, serves views and the API',
    ),
)
  .option('--data <dir>', 'data directory', './rewind-manager')
  .option('--listen <host:port>', 'address agents connect to', '127.0.0.1:7421')
  .option('--nbd <host:port>', 'NBD listen address for snapshots and clones', '127.0.0.1:10810')
  .option('--http <host:port>', 'HTTP API listen address', '127.0.0.1:7420')
  .option('--token <token>', 'shared secret agents must present')
  .option('--token-file <file>', 'read the shared secret from a file')
  .option('--tls-cert <file>', 'TLS certificate (PEM) for the agent link')
  .option('--tls-key <file>', 'TLS private key (PEM) for the agent link')
  .action(
    async (
      options: {
        data: string;
        listen: string;
        nbd: string;
        http: string;
        token?: string;
        tokenFile?: string;
        tlsCert?: string;
        tlsKey?: string;
      } & RetentionFlags,
    ) => {
      if ((options.tlsCert === undefined) !== (options.tlsKey === undefined))
        throw new RewindError('REWIND_BAD_ARGUMENT', '--tls-cert and --tls-key go together');
      const retention = retentionFromOptions(options);
      const running = await startManager({
        ...(retention ? { retention } : {}),
        dataDir: options.data,
        listen: endpoint(options.listen, '--listen'),
        nbd: endpoint(options.nbd, '--nbd'),
        http: endpoint(options.http, '--http'),
        token: token(options),
        ...(options.tlsCert && options.tlsKey
          ? {
              tls: { cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey) },
            }
          : {}),
      });
      console.log(
        `agents: ${running.linkAddress.host}:${running.linkAddress.port}${options.tlsCert ? ' (TLS)' : ''}`,
      );
      console.log(`views: nbd://${running.nbdAddress.host}:${running.nbdAddress.port}/VOLUME@NAME`);
      console.log(`API: ${running.httpAddress}`);
      console.log(`console: ${running.consoleUrl}`);
      if (running.apiTokenFile)
        console.log(`API token: ${running.apiTokenFile} (CLI: --api-token-file or REWIND_TOKEN)`);
      stopOnSignals(running);
    },
  );

program
  .command('agent')
  .description(
    'run the agent alone (production host): protects volumes, ships segments to a manager',
  )
  .option('--data <dir>', 'data directory', './rewind-agent')
  .option('--nbd <host:port>', 'NBD listen address', '127.0.0.1:10809')
  .requiredOption('--manager <host:port>', 'manager address (its --listen)')
  .option('--token <token>', 'shared secret')
  .option('--token-file <file>', 'read the shared secret from a file')
  .option('--tls-ca <file>', 'connect with TLS, trusting this CA certificate (PEM)')
  .option('--volume <name:size|name:path>', 'protect a volume (repeatable)', volumeSpec, [])
  .option('--seal-bytes <size>', 'seal the active segment at this size', '64M')
  .option('--seal-ms <ms>', 'seal the active segment at this age', '1000')
  .option(
    '--spool-bytes <size>',
    'bound on segments waiting to ship; past it the agent runs degraded (dirty map only)',
    '16G',
  )
  .action(
    async (options: {
      data: string;
      nbd: string;
      manager: string;
      token?: string;
      tokenFile?: string;
      tlsCa?: string;
      volume: VolumeSpec[];
      sealBytes: string;
      sealMs: string;
      spoolBytes: string;
    }) => {
      const running = await startAgent({
        dataDir: options.data,
        nbd: endpoint(options.nbd, '--nbd'),
        manager: endpoint(options.manager, '--manager'),
        token: token(options),
        ...(options.tlsCa ? { tlsCa: fs.readFileSync(options.tlsCa) } : {}),
        volumes: options.volume,
        sealBytes: parseSize(options.sealBytes, '--seal-bytes'),
        sealMs: Number(options.sealMs),
        spoolBytes: parseSize(options.spoolBytes, '--spool-bytes'),
      });
      printVolumes(running);
      stopOnSignals(running);
    },
  );

function stopOnSignals(running: Running): void {
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    running.close().then(
      () => process.exit(0),
      (error: unknown) => {
        console.error(`rewind: stopping failed: ${errorMessage(error)}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

withServer(
  program
    .command('status')
    .description('per volume set: captured and committed seq, lag, spool, mode')
    .option('--json', 'print JSON'),
).action(async (options: { server?: string; json?: boolean }) => {
  const status = await json<Record<string, unknown>>(server(options), 'GET', '/api/status');
  if (options.json) return console.log(JSON.stringify(status));
  const s = status as {
    volumeSet: { name: string | null; id: string | null };
    seqCaptured: number;
    seqCommitted: number;
    lagWrites: number;
    lagSeconds: number;
    spoolBytes: number;
    mode: string;
    failure: string | null;
    volumes: { name: string }[];
  };
  console.log(
    `volume set ${s.volumeSet.name ?? '-'} (${s.volumeSet.id ?? 'no agent yet'}): ${s.volumes.map((v) => v.name).join(', ')}`,
  );
  console.log(
    `  captured ${s.seqCaptured}  committed ${s.seqCommitted}  lag ${s.lagWrites} writes / ${s.lagSeconds.toFixed(3)} s  spool ${s.spoolBytes} bytes  mode ${s.mode}`,
  );
  if (s.failure) console.log(`  failure: ${s.failure}`);
});

withServer(
  program
    .command('seal')
    .description('seal the active segment now')
    .option('--wait', 'return once every write captured before the call is committed'),
).action(async (options: { server?: string; wait?: boolean }) => {
  const result = await json<{ seqLast: number; committed: number }>(
    server(options),
    'POST',
    '/api/seal',
    { wait: options.wait === true },
  );
  console.log(`sealed up to seq ${result.seqLast}; committed ${result.committed}`);
});

for (const kind of ['snapshot', 'clone'] as const) {
  withServer(
    program
      .command(`${kind} <name>`)
      .description(
        kind === 'snapshot'
          ? 'create a read-only view of the volume set at a point'
          : 'create a writable clone of the volume set at a point',
      )
      .requiredOption(
        '--at <point>',
        'seq (0 = before the first write), ISO-8601 time, or relative time ("5 minutes ago")',
      ),
  ).action(async (name: string, options: { server?: string; at: string }) => {
    const view = await json<{ seq: number; exports: string[] }>(
      server(options),
      'POST',
      '/api/views',
      { name, kind, at: options.at },
    );
    console.log(`${kind} ${name} at seq ${view.seq}; exports: ${view.exports.join(', ')}`);
  });
}

withServer(
  program.command('ls').description('list snapshots and clones').option('--json', 'print JSON'),
).action(async (options: { server?: string; json?: boolean }) => {
  const views = await json<{ name: string; kind: string; seq: number; exports: string[] }[]>(
    server(options),
    'GET',
    '/api/views',
  );
  if (options.json) return console.log(JSON.stringify(views));
  if (views.length === 0) return console.log('no snapshots or clones');
  for (const v of views) console.log(`${v.name}\t${v.kind}\tseq ${v.seq}\t${v.exports.join(' ')}`);
});

withServer(
  program
    .command('rm <name>')
    .description('remove a snapshot or clone (its NBD clients are disconnected)'),
).action(async (name: string, options: { server?: string }) => {
  await json(server(options), 'DELETE', `/api/views/${encodeURIComponent(name)}`);
  console.log(`removed ${name}`);
});

const positiveInt = (text: string): number => {
  if (!/^\d+$/.test(text) || Number(text) < 1)
    throw new RewindError('REWIND_BAD_ARGUMENT', `"${text}" is not a positive number`);
  return Number(text);
};

withServer(
  program
    .command('log')
    .description('list captured (committed) writes, oldest first')
    .option('--volume <name>', 'only this volume')
    .option('--from <seq>', 'first seq')
    .option('--to <seq>', 'last seq')
    .option('--limit <n>', 'at most n writes, then say where the next page starts', positiveInt)
    .option('--json', 'one JSON object per line'),
).action(
  async (options: {
    server?: string;
    volume?: string;
    from?: string;
    to?: string;
    limit?: number;
    json?: boolean;
  }) => {
    const query = new URLSearchParams();
    if (options.volume) query.set('volume', options.volume);
    if (options.from) query.set('from', options.from);
    if (options.to) query.set('to', options.to);
    if (options.limit !== undefined) query.set('limit', String(options.limit));
    const response = await call(server(options), 'GET', `/api/log?${query.toString()}`);
    const text = await response.text();
    for (const line of text.split('\n')) {
      if (!line) continue;
      if (options.json) console.log(line);
      else {
        console.log(logLine(JSON.parse(line) as LogLine));
      }
    }
    const next = response.headers.get('rewind-next-seq');
    // On stderr, so that --json output stays one object per line.
    if (options.limit !== undefined && next !== null)
      console.error(`more: rewind log --from ${next} --limit ${options.limit}`);
  },
);

withServer(
  program
    .command('timeline')
    .description(
      'writes and bytes over time, in buckets, with transactions, bookmarks, resync windows and restores',
    )
    .option(
      '--from <time>',
      'start: ISO-8601, relative ("1 hour ago") or µs since the epoch (default: the first write)',
    )
    .option('--to <time>', 'end, exclusive (default: just after the last committed write)')
    .option('--buckets <n>', 'number of buckets (default 200)', positiveInt)
    .option('--json', 'print JSON'),
).action(
  async (options: {
    server?: string;
    from?: string;
    to?: string;
    buckets?: number;
    json?: boolean;
  }) => {
    const query = new URLSearchParams();
    if (options.from) query.set('from', options.from);
    if (options.to) query.set('to', options.to);
    if (options.buckets !== undefined) query.set('buckets', String(options.buckets));
    const t = await json<TimelineLine>(server(options), 'GET', `/api/timeline?${query.toString()}`);
    if (options.json) return console.log(JSON.stringify(t));
    const iso = (us: number): string => new Date(us / 1000).toISOString();
    console.log(
      `${iso(t.fromUs)} .. ${iso(t.toUs)}: ${Math.round(t.writesTotal)} writes${t.seqFirst !== null ? ` (seq ${t.seqFirst}..${t.seqLast})` : ''}, buckets of ${t.bucketUs} µs${t.exact ? '' : ' (approximate)'}`,
    );
    t.writes.forEach((writes, i) => {
      if (writes > 0)
        console.log(
          `${iso(t.fromUs + i * t.bucketUs)}\t${Math.round(writes)} writes\t${formatBytes(Math.round(t.bytes[i] ?? 0))}`,
        );
    });
    for (const b of t.bookmarks) console.log(`bookmark @${b.name}\tseq ${b.seq}\t${iso(b.timeUs)}`);
    for (const g of t.gaps)
      console.log(
        `resync\tseq ${g.seqFirst}..${g.seqLast ?? '?'}\t${iso(g.fromUs)} .. ${g.toUs === null ? 'still arriving' : iso(g.toUs)} (no per-write history)`,
      );
    for (const r of t.thinned)
      console.log(
        `thinned\tseq ${r.seqFirst}..${r.seqLast}\t${iso(r.fromUs)} .. ${iso(r.toUs)} (one point at seq ${r.seqLast}${r.tier ? `, tier ${r.tier}` : ''})`,
      );
    for (const r of t.restores)
      console.log(`restore #${r.id}\t${r.state}\t${r.volumes.join(',')} to seq ${r.seq}`);
  },
);

withServer(
  program
    .command('point <point>')
    .description('the seq a POINT resolves to, and the capture time of that write (or the refusal)')
    .option('--json', 'print JSON'),
).action(async (point: string, options: { server?: string; json?: boolean }) => {
  const resolved = await json<{ seq: number; time: string | null }>(
    server(options),
    'GET',
    `/api/points/resolve?${new URLSearchParams({ at: point }).toString()}`,
  );
  if (options.json) return console.log(JSON.stringify(resolved));
  console.log(
    `seq ${resolved.seq}${resolved.time ? ` (captured ${resolved.time})` : ' (before the first write)'}`,
  );
});

withServer(
  program
    .command('blockmap <volume>')
    .description('which regions of a volume the writes between two points changed (from the log)')
    .option('--from <point>', 'after this point (default 0)')
    .option('--to <point>', 'up to and including this point (default: the last committed write)')
    .option('--cells <n>', 'number of equal cells (default 256)', positiveInt)
    .option('--json', 'print JSON'),
).action(
  async (
    volume: string,
    options: { server?: string; from?: string; to?: string; cells?: number; json?: boolean },
  ) => {
    const query = new URLSearchParams();
    if (options.from) query.set('from', options.from);
    if (options.to) query.set('to', options.to);
    if (options.cells !== undefined) query.set('cells', String(options.cells));
    const map = await json<{
      fromSeq: number;
      toSeq: number;
      cellBytes: number;
      writes: number[];
      bytes: number[];
      changedBytes: number;
      writesTotal: number;
    }>(
      server(options),
      'GET',
      `/api/volumes/${encodeURIComponent(volume)}/blockmap?${query.toString()}`,
    );
    if (options.json) return console.log(JSON.stringify(map));
    console.log(
      `${volume}: seq ${map.fromSeq} .. ${map.toSeq}: ${map.writesTotal} writes changed ${formatBytes(map.changedBytes)}; cells of ${formatBytes(map.cellBytes)}`,
    );
    map.writes.forEach((writes, cell) => {
      if (writes > 0)
        console.log(
          `${cell * map.cellBytes}:${map.cellBytes}\t${writes} writes\t${formatBytes(map.bytes[cell] ?? 0)}`,
        );
    });
  },
);

interface TimelineLine {
  fromUs: number;
  toUs: number;
  bucketUs: number;
  writes: number[];
  bytes: number[];
  exact: boolean;
  writesTotal: number;
  seqFirst: number | null;
  seqLast: number | null;
  bookmarks: { name: string; seq: number; timeUs: number }[];
  gaps: { seqFirst: number; seqLast: number | null; fromUs: number; toUs: number | null }[];
  thinned: {
    seqFirst: number;
    seqLast: number;
    fromUs: number;
    toUs: number;
    tier: string | null;
  }[];
  restores: { id: number; state: string; volumes: string[]; seq: number }[];
}

// ---- Recovery ----
interface LogLine {
  seq: number;
  time: string;
  volume: string;
  kind: string;
  offset: number;
  length: number;
  resync: boolean;
  /** A thinned range: written somewhere in seqFirst..seq, kept as one point at seq. */
  seqFirst?: number;
}
const logLine = (e: LogLine): string =>
  e.kind === 'thinned'
    ? `${e.seq}\t${e.time}\t${e.volume}\tthinned(${e.seqFirst ?? '?'}..${e.seq})\t${e.offset}\t${e.length}`
    : `${e.seq}\t${e.time}\t${e.volume}\t${e.resync ? `resync-${e.kind}` : e.kind}\t${e.offset}\t${e.length}`;
const collect = (value: string, previous: string[]): string[] => [...previous, value];

withServer(
  program
    .command('step <name>')
    .description(
      'move a snapshot (or a clone without writes of its own) in time; prints the writes crossed',
    )
    .option('--forward <n>', 'n writes forward', positiveInt)
    .option('--back <n>', 'n writes back', positiveInt)
    .option('--to <point>', 'to a POINT (seq, time, relative time or @bookmark)')
    .option('--discard-writes', "drop a clone's own writes so it can step")
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      '\nConnected NBD clients read the new content on their next read; a mounted filesystem caches, so remount it.',
    ),
).action(
  async (
    name: string,
    options: {
      server?: string;
      forward?: number;
      back?: number;
      to?: string;
      discardWrites?: boolean;
      json?: boolean;
    },
  ) => {
    const body = {
      ...(options.forward !== undefined ? { forward: options.forward } : {}),
      ...(options.back !== undefined ? { back: options.back } : {}),
      ...(options.to !== undefined ? { to: options.to } : {}),
      discardWrites: options.discardWrites === true,
    };
    const result = await json<{ from: number; to: number; crossed: LogLine[] }>(
      server(options),
      'POST',
      `/api/views/${encodeURIComponent(name)}/step`,
      body,
    );
    if (options.json) return console.log(JSON.stringify(result));
    console.log(
      `${name}: seq ${result.from} -> ${result.to} (${result.crossed.length} writes crossed)`,
    );
    for (const e of result.to < result.from ? [...result.crossed].reverse() : result.crossed)
      console.log(logLine(e));
  },
);

withServer(
  program
    .command('bookmark <name>')
    .description(
      'name a point (default: the last committed write); use it as @NAME wherever a POINT is taken',
    )
    .option('--at <point>', 'the point to name')
    .option('--remove', 'remove the bookmark instead')
    .option('--pin', 'keep history from this bookmark on: retention never drops it')
    .option('--until <time>', 'with --pin: only until this ISO-8601 time')
    .option('--unpin', 'let retention drop history before and after it again'),
).action(
  async (
    name: string,
    options: {
      server?: string;
      at?: string;
      remove?: boolean;
      pin?: boolean;
      until?: string;
      unpin?: boolean;
    },
  ) => {
    if (options.remove) {
      await json(server(options), 'DELETE', `/api/bookmarks/${encodeURIComponent(name)}`);
      return console.log(`removed bookmark ${name}`);
    }
    if (options.unpin) {
      await json(server(options), 'DELETE', `/api/bookmarks/${encodeURIComponent(name)}/pin`);
      return console.log(`bookmark @${name} unpinned`);
    }
    if (options.until !== undefined && !options.pin) {
      throw new RewindError('REWIND_BAD_ARGUMENT', '--until goes with --pin');
    }
    if (options.pin && options.at === undefined) {
      const pinned = await json<{ name: string; seq: number; pinnedUntil: string }>(
        server(options),
        'PUT',
        `/api/bookmarks/${encodeURIComponent(name)}/pin`,
        options.until !== undefined ? { until: options.until } : {},
      );
      return console.log(
        `bookmark @${pinned.name} (seq ${pinned.seq}) pinned ${pinned.pinnedUntil === 'forever' ? 'until unpinned' : `until ${pinned.pinnedUntil}`}`,
      );
    }
    const b = await json<{ name: string; seq: number; time: string }>(
      server(options),
      'POST',
      '/api/bookmarks',
      { name, ...(options.at !== undefined ? { at: options.at } : {}) },
    );
    console.log(`bookmark @${b.name} = seq ${b.seq} (${b.time})`);
    if (options.pin) {
      await json(
        server(options),
        'PUT',
        `/api/bookmarks/${encodeURIComponent(name)}/pin`,
        options.until !== undefined ? { until: options.until } : {},
      );
      console.log(
        `bookmark @${b.name} pinned ${options.until !== undefined ? `until ${options.until}` : 'until unpinned'}`,
      );
    }
  },
);

withServer(
  program
    .command('bookmarks')
    .description('list bookmarks with their seq and time')
    .option('--json', 'print JSON'),
).action(async (options: { server?: string; json?: boolean }) => {
  const list = await json<
    { name: string; seq: number; time: string; pinnedUntil: string | null }[]
  >(server(options), 'GET', '/api/bookmarks');
  if (options.json) return console.log(JSON.stringify(list));
  if (list.length === 0) return console.log('no bookmarks');
  for (const b of list) {
    const pin =
      b.pinnedUntil === null
        ? ''
        : `\tpinned${b.pinnedUntil === 'forever' ? '' : ` until ${b.pinnedUntil}`}`;
    console.log(`@${b.name}\tseq ${b.seq}\t${b.time}${pin}`);
  }
});

/** Polls a job until it settles, with a progress bar on a terminal. */
async function follow<T extends { state: string; bytesTotal: number; bytesDone: number }>(
  fetchStatus: () => Promise<T>,
  label: string,
): Promise<T> {
  const bar = process.stderr.isTTY
    ? new SingleBar(
        { format: `${label} [{bar}] {percentage}% {done}/{total}`, stream: process.stderr },
        Presets.shades_classic,
      )
    : undefined;
  let status = await fetchStatus();
  bar?.start(Math.max(1, status.bytesTotal), 0, {
    done: formatBytes(0),
    total: formatBytes(status.bytesTotal),
  });
  try {
    for (;;) {
      bar?.setTotal(Math.max(1, status.bytesTotal));
      bar?.update(status.bytesDone, {
        done: formatBytes(status.bytesDone),
        total: formatBytes(status.bytesTotal),
      });
      if (status.state !== 'running') return status;
      await new Promise((r) => setTimeout(r, 200));
      status = await fetchStatus();
    }
  } finally {
    bar?.stop();
  }
}

withServer(
  program
    .command('restore [volumes...]')
    .description(
      'restore production volumes to a point: offline, write back what changed, online again',
    )
    .option('--at <point>', 'the point to restore to (seq, time, relative time or @bookmark)')
    .option(
      '--range <offset:length>',
      'only this byte range (repeatable; one volume; K/M/G/T suffixes)',
      collect,
      [],
    )
    .option('--from-clone <name>', "write the clone's current content instead of the history")
    .option('--dry-run', 'report the ranges and bytes it would write, change nothing')
    .option(
      '--abandon <id>',
      'give up on a failed restore: its volumes come back online as they are',
    )
    .option('--json', 'print JSON')
    .addHelpText(
      'after',
      '\nThe restore writes are logged like any write: restore to the seq printed as "before" to undo it.',
    ),
).action(
  async (
    volumes: string[],
    options: {
      server?: string;
      at?: string;
      range: string[];
      fromClone?: string;
      dryRun?: boolean;
      abandon?: string;
      json?: boolean;
    },
  ) => {
    const base = server(options);
    if (options.abandon !== undefined) {
      const status = await json<RestoreStatus>(
        base,
        'POST',
        `/api/restores/${encodeURIComponent(options.abandon)}/abandon`,
      );
      if (options.json) return console.log(JSON.stringify(status));
      return console.log(`restore #${status.id} abandoned: ${status.message ?? ''}`);
    }
    const body = {
      volumes,
      ...(options.at !== undefined ? { at: options.at } : {}),
      ...(options.fromClone !== undefined ? { fromClone: options.fromClone } : {}),
      ...(options.range.length > 0 ? { ranges: options.range } : {}),
    };
    if (options.dryRun) {
      const plan = await json<{
        seq: number;
        asOfSeq: number;
        source: string;
        bytes: number;
        volumes: { volume: string; ranges: { offset: number; length: number }[]; bytes: number }[];
      }>(base, 'POST', '/api/restores', { ...body, dryRun: true });
      if (options.json) return console.log(JSON.stringify(plan));
      console.log(
        `dry run: restoring to ${plan.source} would write ${formatBytes(plan.bytes)} (as of committed seq ${plan.asOfSeq})`,
      );
      for (const v of plan.volumes) {
        console.log(`  ${v.volume}: ${v.ranges.length} ranges, ${formatBytes(v.bytes)}`);
        for (const r of v.ranges) console.log(`    ${r.offset}:${r.length}`);
      }
      return;
    }
    const started = await json<RestoreStatus>(base, 'POST', '/api/restores', body);
    const status = await follow(
      () => json<RestoreStatus>(base, 'GET', `/api/restores/${started.id}`),
      `restore #${started.id}`,
    );
    if (options.json) console.log(JSON.stringify(status));
    if (status.state !== 'done')
      throw new RewindError(
        'REWIND_IO',
        `restore #${status.id} ${status.state}: ${status.message ?? ''}`,
      );
    if (!options.json) {
      console.log(
        `restore #${status.id} done: ${status.volumes.join(', ')} restored to ${status.source}; ${formatBytes(status.bytesDone)} written; back online`,
      );
      console.log(
        `  before the restore: seq ${status.seqBefore ?? '?'} (rewind restore ${status.volumes.join(' ')} --at ${status.seqBefore ?? '?'} undoes it)`,
      );
    }
  },
);

withServer(
  program
    .command('restores')
    .description('list production restores and their state')
    .option('--json', 'print JSON'),
).action(async (options: { server?: string; json?: boolean }) => {
  const list = await json<RestoreStatus[]>(server(options), 'GET', '/api/restores');
  if (options.json) return console.log(JSON.stringify(list));
  if (list.length === 0) return console.log('no restores');
  for (const r of list)
    console.log(
      `#${r.id}\t${r.state}\t${r.volumes.join(',')}\tto ${r.source}\t${formatBytes(r.bytesDone)}/${formatBytes(r.bytesTotal)}${r.message ? `\t${r.message}` : ''}`,
    );
});

withServer(
  program
    .command('export <volume>')
    .description(
      "write a full raw image of a volume at a point to a file on the manager's host (sparse, SHA-256 printed)",
    )
    .requiredOption('--at <point>', 'the point (seq, time, relative time or @bookmark)')
    .requiredOption('--to <file>', 'the image file to create')
    .option('--force', 'replace the file if it exists')
    .option('--json', 'print JSON'),
).action(
  async (
    volume: string,
    options: { server?: string; at: string; to: string; force?: boolean; json?: boolean },
  ) => {
    const base = server(options);
    const started = await json<{ id: number }>(base, 'POST', '/api/exports', {
      volume,
      at: options.at,
      file: path.resolve(options.to),
      force: options.force === true,
    });
    const job = await follow(
      () =>
        json<{
          state: string;
          bytesTotal: number;
          bytesDone: number;
          bytesWritten: number;
          sha256: string | null;
          file: string;
          seq: number;
          message: string | null;
        }>(base, 'GET', `/api/exports/${started.id}`),
      `export ${volume}`,
    );
    if (options.json) console.log(JSON.stringify(job));
    if (job.state !== 'done')
      throw new RewindError('REWIND_IO', `export failed: ${job.message ?? ''}`);
    if (!options.json)
      console.log(
        `${job.file}: ${volume} at seq ${job.seq}, ${formatBytes(job.bytesTotal)} (${formatBytes(job.bytesWritten)} allocated)\nsha256 ${job.sha256 ?? ''}`,
      );
  },
);

withServer(
  program
    .command('history <volume>')
    .description(
      'every write that touched a byte range, newest first (which write last changed a block)',
    )
    .requiredOption('--range <offset:length>', 'the byte range (K/M/G/T suffixes)')
    .option('--limit <n>', 'only the newest n writes', positiveInt)
    .option('--json', 'print JSON'),
).action(
  async (
    volume: string,
    options: { server?: string; range: string; limit?: number; json?: boolean },
  ) => {
    const query = new URLSearchParams({ range: options.range });
    if (options.limit !== undefined) query.set('limit', String(options.limit));
    const list = await json<LogLine[]>(
      server(options),
      'GET',
      `/api/volumes/${encodeURIComponent(volume)}/history?${query.toString()}`,
    );
    if (options.json) return console.log(JSON.stringify(list));
    if (list.length === 0) return console.log('no write touched that range');
    for (const e of list) console.log(logLine(e));
  },
);

withServer(
  program
    .command('diff <volume>')
    .description('byte ranges written between two points (from the log, not by comparing images)')
    .requiredOption('--from <point>', 'one point')
    .requiredOption('--to <point>', 'the other point')
    .option('--json', 'print JSON'),
).action(
  async (
    volume: string,
    options: { server?: string; from: string; to: string; json?: boolean },
  ) => {
    const query = new URLSearchParams({ from: options.from, to: options.to });
    const result = await json<{
      from: number;
      to: number;
      ranges: { offset: number; length: number }[];
      bytes: number;
    }>(
      server(options),
      'GET',
      `/api/volumes/${encodeURIComponent(volume)}/diff?${query.toString()}`,
    );
    if (options.json) return console.log(JSON.stringify(result));
    console.log(
      `${volume}: seq ${result.from} .. ${result.to}: ${result.ranges.length} ranges, ${formatBytes(result.bytes)}`,
    );
    for (const r of result.ranges) console.log(`${r.offset}:${r.length}`);
  },
);

program.addOption(new Option('--debug', 'print stack traces').hideHelp());

registerRetentionCommand(program, withServer, (options, method, route, body) =>
  json(server(options as { server?: string; apiTokenFile?: string }), method, route, body),
);

export async function main(argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (error) {
    rethrowIfBug(error); // a bug prints its stack and exits non-zero
    const hint = error instanceof RewindError && error.hint ? ` (${error.hint})` : '';
    console.error(`rewind: ${errorMessage(error)}${hint}`);
    if (process.argv.includes('--debug')) console.error(error);
    process.exitCode = 1;
  }
}
