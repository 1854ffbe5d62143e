// How a process serves NBD: on TCP, on a Unix socket (mode and group), or both; with STARTTLS
// from certificate or PSK files; with per-export access rules. Reads the credential files, builds
// the server and starts its listeners.
import fs from 'node:fs';
import { RewindError, errorMessage, rethrowIfBug } from '../core/index.js';
import {
  NbdServer,
  checkServerSecurity,
  parseAccessRule,
  parsePskFile,
  type AccessRule,
  type ExportRegistry,
  type LogFunction,
  type TlsMode,
  type TlsSettings,
  type UnixListenOptions,
} from '../nbd/index.js';
import { groupId } from '../platform/index.js';
import { listenOn } from './start.js';

export interface Endpoint {
  host: string;
  port: number;
}

export interface UnixSocketSpec {
  path: string;
  /** Permission bits; by default 0600, or 0660 when a group is given. */
  mode?: number;
  /** Group name or gid of the socket file. */
  group?: string;
}

/** STARTTLS credential files: a certificate and key (and maybe a client CA), or a PSK file. */
export interface NbdTlsFiles {
  /** By default `require` when credentials are given. */
  mode?: TlsMode;
  certFile?: string;
  keyFile?: string;
  caFile?: string;
  pskFile?: string;
}

export interface NbdSecurity {
  unix?: UnixSocketSpec;
  tls?: NbdTlsFiles;
  /** Access rules, `PATTERN=CREDENTIAL[,CREDENTIAL...]` (docs/SECURITY.md). */
  allow?: readonly string[];
}

export interface NbdServing {
  server: NbdServer;
  tcp: Endpoint | undefined;
  unixPath: string | undefined;
  tlsMode: TlsMode;
}

const SOCKET_MODE_DEFAULT = 0o600;
const SOCKET_MODE_GROUP_DEFAULT = 0o660;

/** The files holding secrets that the privacy check at start looks at. */
export function nbdSecretFiles(security: NbdSecurity | undefined): string[] {
  const tlsFiles = security?.tls;
  return [tlsFiles?.keyFile, tlsFiles?.pskFile].filter(
    (file): file is string => file !== undefined,
  );
}

/** An NBD configuration checked whole (files read, group found, rules parsed) up front. */
export interface NbdPlan {
  tcp: Endpoint | undefined;
  unix: { path: string; options: UnixListenOptions } | undefined;
  tls: TlsSettings | undefined;
  access: AccessRule[];
}

export function planNbd(tcp: Endpoint | undefined, security: NbdSecurity | undefined): NbdPlan {
  const unix = security?.unix;
  if (tcp === undefined && unix === undefined)
    throw new RewindError('REWIND_BAD_ARGUMENT', 'NBD would listen nowhere', {
      hint: 'give --nbd HOST:PORT, --nbd-unix PATH, or both',
    });
  const tls = loadTls(security?.tls);
  const access = (security?.allow ?? []).map(parseAccessRule);
  checkServerSecurity({ ...(tls ? { tls } : {}), access });
  const mode =
    unix?.mode ?? (unix?.group === undefined ? SOCKET_MODE_DEFAULT : SOCKET_MODE_GROUP_DEFAULT);
  return {
    tcp,
    unix:
      unix === undefined
        ? undefined
        : {
            path: unix.path,
            options: { mode, ...(unix.group === undefined ? {} : { gid: groupId(unix.group) }) },
          },
    tls,
    access,
  };
}

/** Builds the NBD server and starts every listener of the plan; nothing listens if one fails. */
export async function serveNbd(
  registry: ExportRegistry,
  plan: NbdPlan,
  log: LogFunction,
): Promise<NbdServing> {
  const server = new NbdServer(registry, {
    log,
    ...(plan.tls ? { tls: plan.tls } : {}),
    access: plan.access,
  });
  try {
    const tcp = plan.tcp;
    const address =
      tcp === undefined
        ? undefined
        : await listenOn('NBD', '--nbd', tcp, () => server.listen(tcp.host, tcp.port));
    const unix = plan.unix;
    const unixPath =
      unix === undefined ? undefined : await server.listenUnix(unix.path, unix.options);
    return { server, tcp: address, unixPath, tlsMode: plan.tls?.mode ?? 'off' };
  } catch (error) {
    await server.close();
    throw error;
  }
}

function loadTls(files: NbdTlsFiles | undefined): TlsSettings | undefined {
  const hasX509 = files?.certFile !== undefined || files?.keyFile !== undefined;
  const hasPsk = files?.pskFile !== undefined;
  const mode = files?.mode ?? (hasX509 || hasPsk ? 'require' : 'off');
  const hint = 'see docs/SECURITY.md for the NBD TLS options';
  if (files?.caFile !== undefined && !hasX509)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      '--nbd-tls-ca needs --nbd-tls-cert/--nbd-tls-key',
      {
        hint,
      },
    );
  if (mode === 'off') {
    if (hasX509 || hasPsk)
      throw new RewindError('REWIND_BAD_ARGUMENT', '--nbd-tls off with TLS credentials given', {
        hint,
      });
    return undefined;
  }
  if (hasX509 && hasPsk)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      'give either --nbd-tls-cert/--nbd-tls-key or --nbd-tls-psk, not both',
      { hint },
    );
  if (hasPsk) {
    const pskFile = files?.pskFile as string;
    return {
      mode,
      credentials: { kind: 'psk', keys: parsePskFile(readCredential(pskFile), pskFile) },
    };
  }
  if (files?.certFile === undefined || files.keyFile === undefined)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `--nbd-tls ${mode} needs --nbd-tls-cert and --nbd-tls-key, or --nbd-tls-psk`,
      { hint },
    );
  return {
    mode,
    credentials: {
      kind: 'x509',
      certificate: Buffer.from(readCredential(files.certFile)),
      privateKey: Buffer.from(readCredential(files.keyFile)),
      ...(files.caFile === undefined
        ? {}
        : { clientCa: Buffer.from(readCredential(files.caFile)) }),
    },
  };
}

function readCredential(file: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (error) {
    rethrowIfBug(error);
    throw new RewindError('REWIND_CONFIG', `cannot read ${file}: ${errorMessage(error)}`, {
      cause: error,
    });
  }
}

/** The URI a client uses for `exportName`: nbds when TLS is required, nbd+unix on the socket. */
export function nbdUris(
  serving: Pick<NbdServing, 'tcp' | 'unixPath' | 'tlsMode'>,
  exportName: string,
): string[] {
  const scheme = serving.tlsMode === 'require' ? 'nbds' : 'nbd';
  const uris: string[] = [];
  if (serving.tcp) {
    const host = serving.tcp.host.includes(':') ? `[${serving.tcp.host}]` : serving.tcp.host;
    uris.push(`${scheme}://${host}:${serving.tcp.port}/${exportName}`);
  }
  if (serving.unixPath)
    uris.push(`${scheme}+unix:///${exportName}?socket=${uriPath(serving.unixPath)}`);
  return uris;
}

/** A path as a URI query value: safe characters kept (so `/run/x.sock` reads as itself). */
function uriPath(file: string): string {
  return file.replace(/[^A-Za-z0-9/._~-]/g, (char) => encodeURIComponent(char));
}
