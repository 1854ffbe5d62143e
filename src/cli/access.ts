// `rewind token create|ls|revoke` (the HTTP API's named tokens and their roles) and `rewind audit`
// (the log of state-changing calls): arguments to API calls, and what they print.
import { Command, Option } from 'commander';
import { RewindError } from '../core/index.js';

type Request = (options: object, method: string, route: string, body?: object) => Promise<unknown>;

interface TokenInfo {
  name: string;
  role: string;
  createdAt: string | null;
  builtIn: boolean;
}

interface AuditEntry {
  id: number;
  at: string;
  token: string | null;
  method: string;
  route: string;
  summary: string;
  status: number;
}

/** Entries `rewind audit` shows by default, and at most. */
const AUDIT_LIMIT_DEFAULT = 50;
const AUDIT_LIMIT_MAX = 10_000;

function auditLimit(text: string): number {
  const value = Number(text);
  if (!/^\d+$/.test(text) || value < 1 || value > AUDIT_LIMIT_MAX)
    throw new RewindError('REWIND_BAD_ARGUMENT', `--limit "${text}" is not 1..${AUDIT_LIMIT_MAX}`);
  return value;
}

export function registerAccessCommands(
  program: Command,
  withServer: (command: Command) => Command,
  request: Request,
): void {
  const token = program
    .command('token')
    .description('HTTP API tokens with roles: audit (read-only), operator, admin');
  withServer(
    token
      .command('create <name>')
      .description('make a token; its secret is printed once and stored only as a SHA-256')
      .addOption(
        new Option('--role <role>', 'what the token may do')
          .choices(['audit', 'operator', 'admin'])
          .makeOptionMandatory(),
      )
      .option('--json', 'print JSON'),
  ).action(async (name: string, options: { role: string; json?: boolean }) => {
    const made = (await request(options, 'POST', '/api/tokens', {
      name,
      role: options.role,
    })) as TokenInfo & { token: string };
    if (options.json) return console.log(JSON.stringify(made));
    console.log(made.token);
    console.error(
      `token ${made.name} (role ${made.role}) made: keep it now, it is not shown again (clients: REWIND_TOKEN or --api-token-file)`,
    );
  });
  withServer(
    token
      .command('ls')
      .description('the tokens and their roles (never their secrets)')
      .option('--json', 'print JSON'),
  ).action(async (options: { json?: boolean }) => {
    const list = (await request(options, 'GET', '/api/tokens')) as TokenInfo[];
    if (options.json) return console.log(JSON.stringify(list));
    for (const t of list)
      console.log(
        `${t.name.padEnd(24)} ${t.role.padEnd(8)} ${t.builtIn ? 'DATA/api-token' : (t.createdAt ?? '')}`,
      );
  });
  withServer(
    token.command('revoke <name>').description('revoke a token: it is refused from now on'),
  ).action(async (name: string, options: object) => {
    await request(options, 'DELETE', `/api/tokens/${encodeURIComponent(name)}`);
    console.log(`token ${name} revoked`);
  });
  withServer(
    program
      .command('audit')
      .description(
        'the log of state-changing API calls: time, token name, call, arguments, status (newest first)',
      )
      .option('--limit <n>', `at most n entries (1..${AUDIT_LIMIT_MAX})`, auditLimit)
      .option('--json', 'print JSON'),
  ).action(async (options: { limit?: number; json?: boolean }) => {
    const limit = options.limit ?? AUDIT_LIMIT_DEFAULT;
    const entries = (await request(options, 'GET', `/api/audit?limit=${limit}`)) as AuditEntry[];
    if (options.json) return console.log(JSON.stringify(entries));
    if (entries.length === 0) return console.log('no state-changing calls recorded');
    for (const e of entries)
      console.log(
        `${e.at}  ${(e.token ?? '-').padEnd(16)} ${e.status} ${e.method} ${e.route} ${e.summary}`,
      );
  });
}
