// `rewind token create|ls|revoke` (the HTTP API's named tokens and their roles) and `rewind audit`
// (the log of state-changing calls): arguments to API calls, and what they print.
import { Command, Option } from 'commander';

type Request = (options: object, method: string, route: string, body?: object) => Promise<unknown>;

interface TokenInfo {
  name: string;
  role: string;
  createdAt: string | null;
  builtIn: boolean;
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
}
