// The `rewind` command line: argv to API calls (or to starting the processes); no domain logic.
import { Command, Option } from 'commander';
import { errorMessage, parseSize, RewindError } from '../core/index.js';
import type { VolumeSpec } from '../agent/agent.js';
import fs from 'node:fs';
import { startAgent, startManager, startUp, type Endpoint, type Running } from '../runtime/up.js';

function endpoint(text: string, what: string): Endpoint {
  const match = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(text);
  if (!match) throw new RewindError('REWIND_BAD_ARGUMENT', `${what} "${text}" is not HOST:PORT`);
  return { host: (match[1] as string).replace(/^\[|\]$/g, ''), port: Number(match[2]) };
}

function volumeSpec(text: string, previous: VolumeSpec[]): VolumeSpec[] {
  const at = text.indexOf(':');
  if (at <= 0) throw new RewindError('REWIND_BAD_ARGUMENT', `--volume "${text}" is not NAME:SIZE or NAME:PATH`);
  const name = text.slice(0, at);
  const rest = text.slice(at + 1);
  const spec: VolumeSpec = rest.includes('/') ? { name, path: rest } : { name, sizeBytes: parseSize(rest, `size of volume ${name}`) };
  return [...previous, spec];
}

function server(options: { server?: string }): string {
  return (options.server ?? process.env.REWIND_SERVER ?? 'http://127.0.0.1:7420').replace(/\/$/, '');
}

async function call(base: string, method: string, route: string, body?: object): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(`${base}${route}`, {
      method,
      headers: { ...(body ? { 'content-type': 'application/json' } : {}), ...(process.env.REWIND_TOKEN ? { authorization: `Bearer ${process.env.REWIND_TOKEN}` } : {}) },
      ...(body ? { body: JSON.stringify(body) } : {}),
    });
  } catch (error) {
    throw new RewindError('REWIND_BUSY', `cannot reach the Rewind API at ${base}: ${errorMessage((error as Error).cause ?? error)}`, { hint: 'is rewind up running? set --server or REWIND_SERVER' });
  }
  if (!response.ok) {
    const payload = (await response.json().catch(() => ({}))) as { error?: { code?: string; message?: string; hint?: string | null } };
    const hint = payload.error?.hint;
    throw new RewindError((payload.error?.code as never) ?? 'REWIND_IO', payload.error?.message ?? `HTTP ${response.status}`, hint ? { hint } : {});
  }
  return response;
}

async function json<T>(base: string, method: string, route: string, body?: object): Promise<T> {
  return (await (await call(base, method, route, body)).json()) as T;
}

const program = new Command('rewind').description('Continuous data protection for block devices over NBD').showHelpAfterError();
const withServer = (command: Command): Command => command.option('--server <url>', 'Rewind API (default $REWIND_SERVER or http://127.0.0.1:7420)');

program
  .command('up')
  .description('run agent and manager in one process (the embedded default)')
  .option('--data <dir>', 'data directory', './rewind-data')
  .option('--nbd <host:port>', 'NBD listen address', '127.0.0.1:10809')
  .option('--http <host:port>', 'HTTP API listen address', '127.0.0.1:7420')
  .option('--volume <name:size|name:path>', 'protect a volume (repeatable): NAME:SIZE creates a sparse image, NAME:PATH uses an existing file or device', volumeSpec, [])
  .option('--seal-bytes <size>', 'seal the active segment at this size', '64M')
  .option('--seal-ms <ms>', 'seal the active segment at this age', '1000')
  .action(async (options: { data: string; nbd: string; http: string; volume: VolumeSpec[]; sealBytes: string; sealMs: string }) => {
    const running = await startUp({
      dataDir: options.data,
      nbd: endpoint(options.nbd, '--nbd'),
      http: endpoint(options.http, '--http'),
      volumes: options.volume,
      sealBytes: parseSize(options.sealBytes, '--seal-bytes'),
      sealMs: Number(options.sealMs),
    });
    printVolumes(running);
    console.log(`API: ${running.httpAddress}`);
    stopOnSignals(running);
  });

function printVolumes(running: Running): void {
  const { host, port } = running.nbdAddress;
  for (const volume of running.agent?.volumes ?? []) console.log(`volume ${volume.name}: nbd://${host}:${port}/${volume.name} (${volume.sizeBytes} bytes)`);
}

function token(options: { token?: string; tokenFile?: string }): string {
  const value = options.tokenFile ? fs.readFileSync(options.tokenFile, 'utf8').trim() : (options.token ?? process.env.REWIND_LINK_TOKEN);
  if (!value) throw new RewindError('REWIND_BAD_ARGUMENT', 'a shared token is required', { hint: 'give --token-file FILE, --token TOKEN or REWIND_LINK_TOKEN' });
  return value;
}

program
  .command('manager')
  .description('run the manager alone (backup host): receives segments from an agent, serves views and the API')
  .option('--data <dir>', 'data directory', './rewind-manager')
  .option('--listen <host:port>', 'address agents connect to', '127.0.0.1:7421')
  .option('--nbd <host:port>', 'NBD listen address for snapshots and clones', '127.0.0.1:10810')
  .option('--http <host:port>', 'HTTP API listen address', '127.0.0.1:7420')
  .option('--token <token>', 'shared secret agents must present')
  .option('--token-file <file>', 'read the shared secret from a file')
  .option('--tls-cert <file>', 'TLS certificate (PEM) for the agent link')
  .option('--tls-key <file>', 'TLS private key (PEM) for the agent link')
  .action(async (options: { data: string; listen: string; nbd: string; http: string; token?: string; tokenFile?: string; tlsCert?: string; tlsKey?: string }) => {
    if ((options.tlsCert === undefined) !== (options.tlsKey === undefined)) throw new RewindError('REWIND_BAD_ARGUMENT', '--tls-cert and --tls-key go together');
    const running = await startManager({
      dataDir: options.data,
      listen: endpoint(options.listen, '--listen'),
      nbd: endpoint(options.nbd, '--nbd'),
      http: endpoint(options.http, '--http'),
      token: token(options),
      ...(options.tlsCert && options.tlsKey ? { tls: { cert: fs.readFileSync(options.tlsCert), key: fs.readFileSync(options.tlsKey) } } : {}),
    });
    console.log(`agents: ${running.linkAddress.host}:${running.linkAddress.port}${options.tlsCert ? ' (TLS)' : ''}`);
    console.log(`views: nbd://${running.nbdAddress.host}:${running.nbdAddress.port}/VOLUME@NAME`);
    console.log(`API: ${running.httpAddress}`);
    stopOnSignals(running);
  });

program
  .command('agent')
  .description('run the agent alone (production host): protects volumes, ships segments to a manager')
  .option('--data <dir>', 'data directory', './rewind-agent')
  .option('--nbd <host:port>', 'NBD listen address', '127.0.0.1:10809')
  .requiredOption('--manager <host:port>', 'manager address (its --listen)')
  .option('--token <token>', 'shared secret')
  .option('--token-file <file>', 'read the shared secret from a file')
  .option('--tls-ca <file>', 'connect with TLS, trusting this CA certificate (PEM)')
  .option('--volume <name:size|name:path>', 'protect a volume (repeatable)', volumeSpec, [])
  .option('--seal-bytes <size>', 'seal the active segment at this size', '64M')
  .option('--seal-ms <ms>', 'seal the active segment at this age', '1000')
  .action(async (options: { data: string; nbd: string; manager: string; token?: string; tokenFile?: string; tlsCa?: string; volume: VolumeSpec[]; sealBytes: string; sealMs: string }) => {
    const running = await startAgent({
      dataDir: options.data,
      nbd: endpoint(options.nbd, '--nbd'),
      manager: endpoint(options.manager, '--manager'),
      token: token(options),
      ...(options.tlsCa ? { tlsCa: fs.readFileSync(options.tlsCa) } : {}),
      volumes: options.volume,
      sealBytes: parseSize(options.sealBytes, '--seal-bytes'),
      sealMs: Number(options.sealMs),
    });
    printVolumes(running);
    stopOnSignals(running);
  });

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

withServer(program.command('status').description('per volume set: captured and committed seq, lag, spool, mode').option('--json', 'print JSON'))
  .action(async (options: { server?: string; json?: boolean }) => {
    const status = await json<Record<string, unknown>>(server(options), 'GET', '/api/status');
    if (options.json) return console.log(JSON.stringify(status));
    const s = status as { volumeSet: { name: string | null; id: string | null }; seqCaptured: number; seqCommitted: number; lagWrites: number; lagSeconds: number; spoolBytes: number; mode: string; failure: string | null; volumes: { name: string }[] };
    console.log(`volume set ${s.volumeSet.name ?? '-'} (${s.volumeSet.id ?? 'no agent yet'}): ${s.volumes.map((v) => v.name).join(', ')}`);
    console.log(`  captured ${s.seqCaptured}  committed ${s.seqCommitted}  lag ${s.lagWrites} writes / ${s.lagSeconds.toFixed(3)} s  spool ${s.spoolBytes} bytes  mode ${s.mode}`);
    if (s.failure) console.log(`  failure: ${s.failure}`);
  });

withServer(program.command('seal').description('seal the active segment now').option('--wait', 'return once every write captured before the call is committed'))
  .action(async (options: { server?: string; wait?: boolean }) => {
    const result = await json<{ seqLast: number; committed: number }>(server(options), 'POST', '/api/seal', { wait: options.wait === true });
    console.log(`sealed up to seq ${result.seqLast}; committed ${result.committed}`);
  });

for (const kind of ['snapshot', 'clone'] as const) {
  withServer(
    program
      .command(`${kind} <name>`)
      .description(kind === 'snapshot' ? 'create a read-only view of the volume set at a point' : 'create a writable clone of the volume set at a point')
      .requiredOption('--at <point>', 'seq (0 = before the first write), ISO-8601 time, or relative time ("5 minutes ago")'),
  ).action(async (name: string, options: { server?: string; at: string }) => {
    const view = await json<{ seq: number; exports: string[] }>(server(options), 'POST', '/api/views', { name, kind, at: options.at });
    console.log(`${kind} ${name} at seq ${view.seq}; exports: ${view.exports.join(', ')}`);
  });
}

withServer(program.command('ls').description('list snapshots and clones').option('--json', 'print JSON')).action(async (options: { server?: string; json?: boolean }) => {
  const views = await json<{ name: string; kind: string; seq: number; exports: string[] }[]>(server(options), 'GET', '/api/views');
  if (options.json) return console.log(JSON.stringify(views));
  if (views.length === 0) return console.log('no snapshots or clones');
  for (const v of views) console.log(`${v.name}\t${v.kind}\tseq ${v.seq}\t${v.exports.join(' ')}`);
});

withServer(program.command('rm <name>').description('remove a snapshot or clone (its NBD clients are disconnected)')).action(async (name: string, options: { server?: string }) => {
  await json(server(options), 'DELETE', `/api/views/${encodeURIComponent(name)}`);
  console.log(`removed ${name}`);
});

withServer(
  program
    .command('log')
    .description('list captured (committed) writes, oldest first')
    .option('--volume <name>', 'only this volume')
    .option('--from <seq>', 'first seq')
    .option('--to <seq>', 'last seq')
    .option('--json', 'one JSON object per line'),
).action(async (options: { server?: string; volume?: string; from?: string; to?: string; json?: boolean }) => {
  const query = new URLSearchParams();
  if (options.volume) query.set('volume', options.volume);
  if (options.from) query.set('from', options.from);
  if (options.to) query.set('to', options.to);
  const text = await (await call(server(options), 'GET', `/api/log?${query.toString()}`)).text();
  for (const line of text.split('\n')) {
    if (!line) continue;
    if (options.json) console.log(line);
    else {
      const e = JSON.parse(line) as { seq: number; time: string; volume: string; kind: string; offset: number; length: number; resync: boolean };
      console.log(`${e.seq}\t${e.time}\t${e.volume}\t${e.resync ? `resync-${e.kind}` : e.kind}\t${e.offset}\t${e.length}`);
    }
  }
});

program.addOption(new Option('--debug', 'print stack traces').hideHelp());

export async function main(argv: string[]): Promise<void> {
  try {
    await program.parseAsync(argv);
  } catch (error) {
    const hint = error instanceof RewindError && error.hint ? ` (${error.hint})` : '';
    console.error(`rewind: ${errorMessage(error)}${hint}`);
    if (process.argv.includes('--debug')) console.error(error);
    process.exitCode = 1;
  }
}
