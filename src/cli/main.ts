// The `rewind` command line: argv to API calls (or to starting the processes); no domain logic.
import { Command, CommanderError, Option } from 'commander';
import { errorMessage, formatBytes, parseSize, rethrowIfBug, RewindError } from '../core/index.js';
import { Presets, SingleBar } from 'cli-progress';
import path from 'node:path';
import type { VolumeSpec } from '../agent/index.js';
import fs from 'node:fs';
import type { RestoreStatus } from '../manager/index.js';
import type {
  Endpoint,
  NbdTlsFiles,
  ProcessOptions,
  Running,
  UnixSocketSpec,
} from '../runtime/index.js';
import { FROZEN_MS_DEFAULT, HOOK_MS_DEFAULT, takeConsistentBookmark } from './freeze.js';
import { refuseIfMapped, stepMapped, type MapApi } from './map.js';
import { addMapCommands } from './map-commands.js';
import { forgetServer, knownToken, rememberServer } from './known-servers.js';
import { registerAccessCommands } from './access.js';

/**
 * The processes' code (agent, manager, HTTP server, SQLite) is loaded only by the commands that
 * start them: it is most of a client command's start-up time otherwise (0.5 s of 0.7 s here).
 */
const runtime = (): Promise<typeof import('../runtime/index.js')> => import('../runtime/index.js');
import {
  fetchOldPoint,
  type ArchiveApi,
  archiveFromOptions,
  registerArchiveCommand,
  registerFullCommand,
  withArchiveOptions,
  type ArchiveFlags,
} from './archive.js';
import {
  registerRetentionCommand,
  retentionFromOptions,
  withRetentionOptions,
  type RetentionFlags,
} from './retention.js';

function endpoint(text: string, what: string): Endpoint {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text);
  if (!match || Number(match[2]) > 65535)
    throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not HOST:PORT`);
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

/** A duration option in whole milliseconds (at least 1). */
function milliseconds(text: string, what: string): number {
  if (!/^\d+$/.test(text) || Number(text) < 1 || !Number.isSafeInteger(Number(text)))
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `${what} "${text}" is not a number of milliseconds`,
    );
  return Number(text);
}

/** Commander's collector for a repeatable option. */
const appendTo = (value: string, previous: string[]): string[] => [...previous, value];

/** The NBD and data-directory flags `up`, `agent` and `manager` share (docs/SECURITY.md). */
interface ServingFlags {
  nbd: string;
  nbdUnix?: string;
  nbdUnixMode?: string;
  nbdUnixGroup?: string;
  nbdTls?: 'off' | 'on' | 'require';
  nbdTlsCert?: string;
  nbdTlsKey?: string;
  nbdTlsCa?: string;
  nbdTlsPsk?: string;
  nbdAllow: string[];
  strictPermissions?: boolean;
}

function withServing(command: Command, nbdDefault: string, nbdWhat: string): Command {
  return command
    .option('--nbd <host:port|off>', `NBD listen address ${nbdWhat} (off: no TCP)`, nbdDefault)
    .option(
      '--nbd-unix <path>',
      'also serve NBD on this Unix socket (nbd+unix:///EXPORT?socket=PATH)',
    )
    .option(
      '--nbd-unix-mode <mode>',
      'permission bits of the NBD socket (default 0600, 0660 with --nbd-unix-group)',
    )
    .option('--nbd-unix-group <group>', 'group of the NBD socket (name or gid)')
    .addOption(
      new Option(
        '--nbd-tls <mode>',
        'NBD STARTTLS: off, on (the client chooses) or require (default: require with credentials, else off)',
      ).choices(['off', 'on', 'require']),
    )
    .option('--nbd-tls-cert <file>', 'NBD TLS certificate chain (PEM)')
    .option('--nbd-tls-key <file>', 'NBD TLS private key (PEM)')
    .option('--nbd-tls-ca <file>', 'NBD clients must present a certificate signed by this CA (PEM)')
    .option('--nbd-tls-psk <file>', 'NBD TLS-PSK keys: IDENTITY:HEXKEY lines, as psktool writes')
    .option(
      '--nbd-allow <rule>',
      'only these clients may use matching exports: PATTERN=psk:ID|cert:CN|tls[,...] (repeatable)',
      appendTo,
      [],
    )
    .option(
      '--strict-permissions',
      'refuse to start when the data directory or a key file is open to group or others',
    );
}

function socketMode(text: string): number {
  if (!/^0?[0-7]{3}$/.test(text))
    throw new RewindError('REWIND_BAD_ARGUMENT', `--nbd-unix-mode "${text}" is not an octal mode`, {
      hint: 'e.g. 0660 (owner and group may connect)',
    });
  return Number.parseInt(text, 8);
}

function servingOptions(
  flags: ServingFlags,
): Pick<ProcessOptions, 'nbd' | 'nbdSecurity' | 'strictPermissions'> {
  if (flags.nbdUnix === undefined && (flags.nbdUnixMode ?? flags.nbdUnixGroup) !== undefined)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      '--nbd-unix-mode and --nbd-unix-group need --nbd-unix',
    );
  const unix: UnixSocketSpec | undefined =
    flags.nbdUnix === undefined
      ? undefined
      : {
          path: path.resolve(flags.nbdUnix),
          ...(flags.nbdUnixMode === undefined ? {} : { mode: socketMode(flags.nbdUnixMode) }),
          ...(flags.nbdUnixGroup === undefined ? {} : { group: flags.nbdUnixGroup }),
        };
  const tls: NbdTlsFiles = {
    ...(flags.nbdTls === undefined ? {} : { mode: flags.nbdTls }),
    ...(flags.nbdTlsCert === undefined ? {} : { certFile: flags.nbdTlsCert }),
    ...(flags.nbdTlsKey === undefined ? {} : { keyFile: flags.nbdTlsKey }),
    ...(flags.nbdTlsCa === undefined ? {} : { caFile: flags.nbdTlsCa }),
    ...(flags.nbdTlsPsk === undefined ? {} : { pskFile: flags.nbdTlsPsk }),
  };
  return {
    nbd: flags.nbd === 'off' ? undefined : endpoint(flags.nbd, '--nbd'),
    nbdSecurity: { ...(unix ? { unix } : {}), tls, allow: flags.nbdAllow },
    strictPermissions: flags.strictPermissions === true,
  };
}

function printServing(running: Running): void {
  const mode = running.nbdServing.tlsMode;
  if (mode !== 'off')
    console.log(
      `NBD TLS: ${mode}${mode === 'on' ? ' (nbds:// URIs for TLS, nbd:// without)' : ''}`,
    );
}

const EXPORT_DIR_HELP =
  'the only directory rewind export writes to (default DATA/exports; relative names go inside it)';

function exportDirOption(options: { exportDir?: string }): { exportDir?: string } {
  return options.exportDir === undefined ? {} : { exportDir: path.resolve(options.exportDir) };
}

const HTTP_TLS_CERT_HELP = 'serve the HTTP API over HTTPS with this certificate chain (PEM)';
const HTTP_TLS_KEY_HELP = 'the private key (PEM) of --http-tls-cert';

function httpTlsOption(options: {
  httpTlsCert?: string;
  httpTlsKey?: string;
}): Pick<ProcessOptions, 'httpTls'> {
  if (options.httpTlsCert === undefined && options.httpTlsKey === undefined) return {};
  if (options.httpTlsCert === undefined || options.httpTlsKey === undefined)
    throw new RewindError('REWIND_BAD_ARGUMENT', '--http-tls-cert and --http-tls-key go together');
  return {
    httpTls: {
      certFile: path.resolve(options.httpTlsCert),
      keyFile: path.resolve(options.httpTlsKey),
    },
  };
}

let apiToken: string | undefined;

/**
 * The API address of a client command, and its token: --api-token-file, else REWIND_TOKEN, else
 * the token file `rewind up`/`rewind manager` recorded for that address (known-servers.ts).
 */
function server(options: { server?: string; apiTokenFile?: string }): string {
  const base = (options.server ?? process.env.REWIND_SERVER ?? 'http://127.0.0.1:7420').replace(
    /\/$/,
    '',
  );
  if (options.apiTokenFile) apiToken = fs.readFileSync(options.apiTokenFile, 'utf8').trim();
  else apiToken = process.env.REWIND_TOKEN || knownToken(base);
  return base;
}

async function call(
  base: string,
  method: string,
  route: string,
  body?: object,
  signal?: AbortSignal,
): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(`${base}${route}`, {
      method,
      ...(signal ? { signal } : {}),
      headers: {
        ...(body ? { 'content-type': 'application/json' } : {}),
        ...(apiToken ? { authorization: `Bearer ${apiToken}` } : {}),
      },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
  } catch (error) {
    if (signal?.aborted) throw error;
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

async function json<T>(
  base: string,
  method: string,
  route: string,
  body?: object,
  signal?: AbortSignal,
): Promise<T> {
  return (await (await call(base, method, route, body, signal)).json()) as T;
}

/** The archive commands' way to the API (JSON answers, and NDJSON streams with progress). */
const archiveApi: ArchiveApi = {
  json: (options, method, route, body) =>
    json(server(options as { server?: string; apiTokenFile?: string }), method, route, body),
  stream: (options, method, route, body) => call(server(options), method, route, body),
};

// Commander's own errors become the one documented line (main() prints them): the settings are
// made before any subcommand is added, so every subcommand inherits them.
const program = new Command('rewind')
  .description('Continuous data protection for block devices over NBD')
  .version(packageVersion(), '-V, --version', 'print the version')
  .exitOverride()
  .configureOutput({ outputError: () => undefined });

function packageVersion(): string {
  // dist/src/cli/main.js -> the package.json of the checkout or the installed package.
  const file = new URL('../../../package.json', import.meta.url);
  return (JSON.parse(fs.readFileSync(file, 'utf8')) as { version: string }).version;
}
const withServer = (command: Command): Command =>
  command
    .option('--server <url>', 'Rewind API (default $REWIND_SERVER or http://127.0.0.1:7420)')
    .option(
      '--api-token-file <file>',
      'API token file (default $REWIND_TOKEN, else the token of a server this user started)',
    );

withRetentionOptions(
  withServing(
    withArchiveOptions(program.command('up'))
      .description('run agent and manager in one process (the embedded default)')
      .option('--data <dir>', 'data directory', './rewind-data'),
    '127.0.0.1:10809',
    'for volumes, snapshots and clones',
  )
    .option('--http <host:port>', 'HTTP API listen address', '127.0.0.1:7420')
    .option('--export-dir <dir>', EXPORT_DIR_HELP)
    .option('--http-tls-cert <file>', HTTP_TLS_CERT_HELP)
    .option('--http-tls-key <file>', HTTP_TLS_KEY_HELP)
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
    options: ServingFlags & {
      data: string;
      http: string;
      volume: VolumeSpec[];
      sealBytes: string;
      sealMs: string;
      spoolBytes: string;
      exportDir?: string;
      httpTlsCert?: string;
      httpTlsKey?: string;
    } & RetentionFlags &
      ArchiveFlags,
  ) => {
    const retention = retentionFromOptions(options);
    const archive = archiveFromOptions(options);
    const running = await (
      await runtime()
    ).startUp({
      ...(retention ? { retention } : {}),
      ...exportDirOption(options),
      ...httpTlsOption(options),
      ...(archive ? { archive } : {}),
      dataDir: options.data,
      ...servingOptions(options),
      http: endpoint(options.http, '--http'),
      volumes: options.volume,
      sealBytes: parseSize(options.sealBytes, '--seal-bytes'),
      sealMs: milliseconds(options.sealMs, '--seal-ms'),
      spoolBytes: parseSize(options.spoolBytes, '--spool-bytes'),
    });
    await printVolumes(running);
    printServing(running);
    printApi(running);
    stopOnSignals(running);
  },
);

async function printVolumes(running: Running): Promise<void> {
  const { nbdUris } = await runtime();
  for (const volume of running.agent?.volumes ?? [])
    for (const uri of nbdUris(running.nbdServing, volume.name))
      console.log(`volume ${volume.name}: ${uri} (${volume.sizeBytes} bytes)`);
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
  withServing(
    withArchiveOptions(program.command('manager')).description(
      'run the manager alone (backup host): receives segments from an agent, serves views and the API',
    ),
    '127.0.0.1:10810',
    'for snapshots and clones',
  ),
)
  .option('--data <dir>', 'data directory', './rewind-manager')
  .option('--listen <host:port>', 'address agents connect to', '127.0.0.1:7421')
  .option('--http <host:port>', 'HTTP API listen address', '127.0.0.1:7420')
  .option('--export-dir <dir>', EXPORT_DIR_HELP)
  .option('--http-tls-cert <file>', HTTP_TLS_CERT_HELP)
  .option('--http-tls-key <file>', HTTP_TLS_KEY_HELP)
  .option('--token <token>', 'shared secret agents must present')
  .option('--token-file <file>', 'read the shared secret from a file')
  .option('--tls-cert <file>', 'TLS certificate (PEM) for the agent link')
  .option('--tls-key <file>', 'TLS private key (PEM) for the agent link')
  .action(
    async (
      options: ServingFlags & {
        data: string;
        listen: string;
        http: string;
        token?: string;
        tokenFile?: string;
        tlsCert?: string;
        tlsKey?: string;
        exportDir?: string;
        httpTlsCert?: string;
        httpTlsKey?: string;
      } & RetentionFlags &
        ArchiveFlags,
    ) => {
      if ((options.tlsCert === undefined) !== (options.tlsKey === undefined))
        throw new RewindError('REWIND_BAD_ARGUMENT', '--tls-cert and --tls-key go together');
      const retention = retentionFromOptions(options);
      const archive = archiveFromOptions(options);
      const running = await (
        await runtime()
      ).startManager({
        ...(retention ? { retention } : {}),
        ...exportDirOption(options),
        ...httpTlsOption(options),
        ...(archive ? { archive } : {}),
        dataDir: options.data,
        listen: endpoint(options.listen, '--listen'),
        ...servingOptions(options),
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
      for (const uri of (await runtime()).nbdUris(running.nbdServing, 'VOLUME@NAME'))
        console.log(`views: ${uri}`);
      printServing(running);
      printApi(running);
      stopOnSignals(running);
    },
  );

withServing(
  program
    .command('agent')
    .description(
      'run the agent alone (production host): protects volumes, ships segments to a manager',
    )
    .option('--data <dir>', 'data directory', './rewind-agent'),
  '127.0.0.1:10809',
  'for the protected volumes',
)
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
    async (
      options: ServingFlags & {
        data: string;
        manager: string;
        token?: string;
        tokenFile?: string;
        tlsCa?: string;
        volume: VolumeSpec[];
        sealBytes: string;
        sealMs: string;
        spoolBytes: string;
      },
    ) => {
      const running = await (
        await runtime()
      ).startAgent({
        dataDir: options.data,
        ...servingOptions(options),
        manager: endpoint(options.manager, '--manager'),
        token: token(options),
        ...(options.tlsCa ? { tlsCa: fs.readFileSync(options.tlsCa) } : {}),
        volumes: options.volume,
        sealBytes: parseSize(options.sealBytes, '--seal-bytes'),
        sealMs: milliseconds(options.sealMs, '--seal-ms'),
        spoolBytes: parseSize(options.spoolBytes, '--spool-bytes'),
      });
      await printVolumes(running);
      printServing(running);
      stopOnSignals(running);
    },
  );

/** API addresses a client on this machine may use for `running` (a wildcard as loopback too). */
function apiAddresses(running: Running): string[] {
  const address = running.httpAddress;
  const loopback = address.replace(/^(https?:\/\/)(0\.0\.0\.0|\[::\])(:\d+)$/, '$1127.0.0.1$3');
  return loopback === address ? [address] : [address, loopback];
}

/**
 * Prints the API address, the console URL (the token in its fragment) and the token file, and
 * records the token file for this user's CLI under the API address (known-servers.ts).
 */
function printApi(running: Running): void {
  // Recorded before anything is printed: a script that waits for "API:" finds the token. A
  // home directory that cannot take it costs only the convenience: say so and go on.
  if (running.apiTokenFile) {
    try {
      rememberServer(apiAddresses(running), running.apiTokenFile);
    } catch (error) {
      rethrowIfBug(error);
      console.error(
        `rewind: the CLI will not find the API token by itself (${errorMessage(error)}); use --api-token-file or REWIND_TOKEN`,
      );
    }
  }
  console.log(`API: ${running.httpAddress}`);
  console.log(`console: ${running.consoleUrl}`);
  if (!running.apiTokenFile) return;
  console.log(
    `API token: ${running.apiTokenFile} (found by this user's CLI; others: --api-token-file or REWIND_TOKEN)`,
  );
}

/** Removes this process's token records on stop; one that cannot be removed is only stale. */
function forgetRecord(running: Running): void {
  try {
    forgetServer(apiAddresses(running));
  } catch (error) {
    rethrowIfBug(error);
    console.error(`rewind: the CLI's token record stays behind: ${errorMessage(error)}`);
  }
}

function stopOnSignals(running: Running): void {
  let stopping = false;
  const stop = (): void => {
    if (stopping) return;
    stopping = true;
    if (running.apiTokenFile) forgetRecord(running);
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
    await fetchOldPoint(archiveApi, options, options.at);
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
  await refuseIfMapped(
    server(options),
    { name, volume: undefined, production: false },
    {
      action: { what: `remove ${name}`, why: 'its NBD clients (nbdfuse) would be cut off' },
      mountedOnly: false,
    },
  );
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
    .option('--from <point>', 'first seq, or the writes after a POINT (time, @bookmark)')
    .option('--to <point>', 'last seq, or the writes up to a POINT (time, @bookmark, latest)')
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
    // A view this machine has mapped has its device's caches dropped around the step, so no
    // read after it returns a block from before (and the step is refused while it is mounted).
    const { result, flushed } = await stepMapped({ server: server(options) }, name, () =>
      json<{ from: number; to: number; crossed: LogLine[] }>(
        server(options),
        'POST',
        `/api/views/${encodeURIComponent(name)}/step`,
        body,
      ),
    );
    for (const record of flushed)
      process.stderr.write(`${record.volume}@${name}: caches of ${record.loop} dropped\n`);
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
    .option(
      '--unpin',
      'take the pin away: retention may drop the history from the bookmark on again',
    )
    .option('--wait', 'seal first and name the sealed seq once it is committed')
    .option(
      '--freeze <dir>',
      'fsfreeze this mounted filesystem around the seal (repeatable; implies --wait)',
      appendTo,
      [],
    )
    .option('--freeze-ms <ms>', 'longest the filesystems stay frozen', String(FROZEN_MS_DEFAULT))
    .option('--pre <command>', 'run before freezing (sh -c), e.g. a database checkpoint')
    .option('--post <command>', 'run after the thaw, also when something failed after --pre')
    .option('--hook-ms <ms>', 'longest a --pre or --post command may run', String(HOOK_MS_DEFAULT))
    .addHelpText(
      'after',
      '\nA bookmark taken right after writing a file may lack it (it is still in the filesystem cache): --freeze makes the filesystem write it out first.',
    ),
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
      wait?: boolean;
      freeze: string[];
      freezeMs: string;
      pre?: string;
      post?: string;
      hookMs: string;
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
    const consistent =
      options.wait === true ||
      options.freeze.length > 0 ||
      options.pre !== undefined ||
      options.post !== undefined;
    if (consistent && options.at !== undefined)
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        '--at names a point that exists; --wait, --freeze, --pre and --post make a new one',
      );
    if (options.pin && options.at === undefined && !consistent) {
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
    const b = consistent
      ? await consistentBookmark(server(options), name, options)
      : await json<{ name: string; seq: number; time: string }>(
          server(options),
          'POST',
          '/api/bookmarks',
          { name, ...(options.at !== undefined ? { at: options.at } : {}) },
        );
    const frozen =
      'frozenMs' in b && options.freeze.length > 0
        ? `; ${options.freeze.join(', ')} frozen ${String(b.frozenMs)} ms`
        : '';
    console.log(`bookmark @${b.name} = seq ${b.seq} (${b.time})${frozen}`);
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

/** pre hook, freeze, seal and wait for the commit, thaw, bookmark at the sealed seq, post hook. */
function consistentBookmark(
  base: string,
  name: string,
  options: {
    freeze: string[];
    freezeMs: string;
    pre?: string;
    post?: string;
    hookMs: string;
  },
): Promise<{ name: string; seq: number; time: string; frozenMs: number }> {
  return takeConsistentBookmark({
    name,
    freeze: options.freeze,
    pre: options.pre,
    post: options.post,
    frozenMsMax: milliseconds(options.freezeMs, '--freeze-ms'),
    hookMsMax: milliseconds(options.hookMs, '--hook-ms'),
    sealCommitted: async (timeoutMs, signal) =>
      (
        await json<{ seqLast: number }>(
          base,
          'POST',
          '/api/seal',
          { wait: true, timeoutMs },
          signal,
        )
      ).seqLast,
    bookmark: (seq) =>
      json<{ name: string; seq: number; time: string }>(base, 'POST', '/api/bookmarks', {
        name,
        at: String(seq),
      }),
  });
}

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
      appendTo,
      [],
    )
    .option('--from-clone <name>', "write the clone's current content instead of the history")
    .option(
      '--dry-run',
      'report the ranges and bytes it would write and the NBD clients connected, change nothing',
    )
    .option(
      '--force',
      'restore even with NBD clients connected or the volume mapped here (they are disconnected)',
    )
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
      force?: boolean;
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
    if (!options.dryRun && options.force !== true)
      await refuseRestoreWhileMapped(base, volumes, options.fromClone);
    if (options.at !== undefined) await fetchOldPoint(archiveApi, options, options.at);
    const body = {
      volumes,
      ...(options.force === true ? { force: true } : {}),
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
        volumes: {
          volume: string;
          ranges: { offset: number; length: number }[];
          bytes: number;
          clients: number | null;
        }[];
      }>(base, 'POST', '/api/restores', { ...body, dryRun: true });
      if (options.json) return console.log(JSON.stringify(plan));
      console.log(
        `dry run: restoring to ${plan.source} would write ${formatBytes(plan.bytes)} (as of committed seq ${plan.asOfSeq})`,
      );
      for (const v of plan.volumes) {
        const clients =
          v.clients === null
            ? 'NBD clients unknown (no agent report)'
            : `${v.clients} NBD client${v.clients === 1 ? '' : 's'} connected${v.clients > 0 ? ' (the restore is refused without --force)' : ''}`;
        console.log(
          `  ${v.volume}: ${v.ranges.length} ranges, ${formatBytes(v.bytes)}; ${clients}`,
        );
        for (const r of v.ranges) console.log(`    ${r.offset}:${r.length}`);
      }
      return;
    }
    const started = await json<RestoreStatus>(base, 'POST', '/api/restores', body);
    if (started.clientsDisconnected !== undefined && !options.json)
      console.error(
        `--force: ${started.clientsDisconnected} NBD client${started.clientsDisconnected === 1 ? '' : 's'} disconnected`,
      );
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

/**
 * A production volume this machine has mapped would lose its filesystem under it (the restore
 * disconnects its NBD clients), and a mounted clone may not have written back what the restore
 * is to copy from it: both are refused, with what to do.
 */
async function refuseRestoreWhileMapped(
  base: string,
  volumes: string[],
  fromClone: string | undefined,
): Promise<void> {
  for (const volume of volumes)
    await refuseIfMapped(
      base,
      { name: volume, volume: undefined, production: true },
      {
        action: {
          what: `restore ${volume}`,
          why: 'the restore disconnects its NBD clients: a filesystem on it would fail, and its cache could be written back over the restored volume',
        },
        mountedOnly: false,
      },
    );
  if (fromClone !== undefined)
    await refuseIfMapped(
      base,
      { name: fromClone, volume: undefined, production: false },
      {
        action: {
          what: `restore from ${fromClone}`,
          why: 'what the mounted filesystem has not written back yet is not in the clone',
        },
        mountedOnly: true,
      },
    );
}

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
    .requiredOption(
      '--to <file>',
      "the image file to create, a name inside the manager's export directory",
    )
    .option('--force', 'replace the file if it exists')
    .option('--json', 'print JSON'),
).action(
  async (
    volume: string,
    options: { server?: string; at: string; to: string; force?: boolean; json?: boolean },
  ) => {
    const base = server(options);
    await fetchOldPoint(archiveApi, options, options.at);
    const started = await json<{ id: number }>(base, 'POST', '/api/exports', {
      volume,
      at: options.at,
      // As given: the manager resolves it inside its export directory, and refuses a path out.
      file: options.to,
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
    .description(
      'byte ranges written between two points (from the log, not by comparing images), or by a clone',
    )
    .option('--from <point>', 'one point')
    .option('--to <point>', 'the other point')
    .option(
      '--clone <name>',
      'the ranges this clone wrote itself (what restore --from-clone takes)',
    )
    .option('--json', 'print JSON'),
).action(
  async (
    volume: string,
    options: { server?: string; from?: string; to?: string; clone?: string; json?: boolean },
  ) => {
    if (options.clone !== undefined) {
      if (options.from !== undefined || options.to !== undefined)
        throw new RewindError('REWIND_BAD_ARGUMENT', 'give either --clone or --from and --to');
      const written = await json<{
        clone: string;
        seq: number;
        ranges: { offset: number; length: number }[];
        bytes: number;
      }>(
        server(options),
        'GET',
        `/api/volumes/${encodeURIComponent(volume)}/diff?${new URLSearchParams({ clone: options.clone }).toString()}`,
      );
      if (options.json) return console.log(JSON.stringify(written));
      console.log(
        `${volume}: clone ${written.clone} (from seq ${written.seq}) wrote ${written.ranges.length} ranges, ${formatBytes(written.bytes)}`,
      );
      for (const r of written.ranges) console.log(`${r.offset}:${r.length}`);
      return;
    }
    if (options.from === undefined || options.to === undefined)
      throw new RewindError('REWIND_BAD_ARGUMENT', 'diff needs --from and --to, or --clone');
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

function mapApi(options: { server?: string; apiTokenFile?: string; nbd?: string }): MapApi {
  const base = server(options);
  return {
    server: base,
    nbd: endpoint(options.nbd ?? process.env.REWIND_NBD ?? '127.0.0.1:10809', '--nbd'),
    views: () =>
      json<{ name: string; kind: 'snapshot' | 'clone'; seq: number; exports: string[] }[]>(
        base,
        'GET',
        '/api/views',
      ),
    volumes: async () =>
      (await json<{ volumes: { name: string }[] }>(base, 'GET', '/api/status')).volumes.map(
        (v) => v.name,
      ),
  };
}

addMapCommands(program, { withServer, api: mapApi });

program.addOption(new Option('--debug', 'print stack traces').hideHelp());

registerRetentionCommand(program, withServer, (options, method, route, body) =>
  json(server(options as { server?: string; apiTokenFile?: string }), method, route, body),
);
registerAccessCommands(program, withServer, (options, method, route, body) =>
  json(server(options as { server?: string; apiTokenFile?: string }), method, route, body),
);
registerArchiveCommand(program, withServer, archiveApi);
registerFullCommand(program, withServer, archiveApi);

/** A start that failed closes what it opened; should anything still hold the process, it ends. */
const FAILED_EXIT_GRACE_MS = 10_000;

export async function main(argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (error) {
    rethrowIfBug(error); // a bug prints its stack and exits non-zero
    if (error instanceof CommanderError) {
      // --help and --version end this way with status 0; help shown for a missing command, 1.
      process.exitCode = error.exitCode;
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return;
      if (error.code === 'commander.help') return;
      const command = argv.slice(2).find((a) => program.commands.some((c) => c.name() === a));
      console.error(
        `rewind: ${error.message.replace(/^error: /, '')} (see rewind ${command ?? ''}${command ? ' ' : ''}--help)`,
      );
      return;
    }
    const hint = error instanceof RewindError && error.hint ? ` (${error.hint})` : '';
    console.error(`rewind: ${errorMessage(error)}${hint}`);
    if (process.argv.includes('--debug')) console.error(error);
    // A command interrupted by a signal has set 128 + its number already (130 for Ctrl-C).
    const interrupted = typeof process.exitCode === 'number' && process.exitCode > 128;
    if (!interrupted) process.exitCode = 1;
    const guard = setTimeout(() => {
      console.error('rewind: exiting with handles still open after the failure');
      process.exit(1);
    }, FAILED_EXIT_GRACE_MS);
    guard.unref();
  }
}
