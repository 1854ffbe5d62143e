// The web console's side of the HTTP server: the page and its bundled assets at the root (built
// by `npm run build` into dist/web; nothing is built at run time), served without a token
// (access.ts) so the page can load and ask for one, with headers that keep it to its own origin;
// /api/info for what the console needs to know of this process; and the console URL printed.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance } from 'fastify';
import { isFile } from '../platform/index.js';

/** dist/web, from this file's place in dist/src/api/. */
const ASSETS_DIR = fileURLToPath(new URL('../../web/', import.meta.url));

/** The page keeps to its own origin: scripts, styles and API calls come from Rewind only. */
const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy':
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
};

export interface ConsoleInfo {
  /** `up`: agent and manager in this process; `manager`: the manager alone. */
  role: 'up' | 'manager';
  /** Where the views' NBD exports are served (VOLUME@NAME), as clients should reach it. */
  nbd: { host: string; port: number } | null;
  /** The only directory image exports write to (filled in by the API). */
  exportDir?: string;
}

export async function registerConsole(app: FastifyInstance, info: ConsoleInfo): Promise<void> {
  app.get('/api/info', async () => info);
  if (!isFile(path.join(ASSETS_DIR, 'index.html'))) {
    // A checkout built with tsc alone: say so rather than answer 404.
    app.get('/', async (_request, reply) =>
      reply
        .code(503)
        .type('text/plain; charset=utf-8')
        .send(`The Rewind console is not built (${ASSETS_DIR} is missing): run npm run build.\n`),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root: ASSETS_DIR,
    prefix: '/',
    index: ['index.html'],
    // Precompressed by the build (app.js.gz); file names carry no hash, so always revalidate.
    preCompressed: true,
    maxAge: 0,
    setHeaders: (reply) => {
      for (const [name, value] of Object.entries(SECURITY_HEADERS)) void reply.header(name, value);
    },
  });
}

/** The console's URL for an API address, carrying the token in its fragment. */
export function consoleUrl(address: string, token: string): string {
  return `${address.replace(/\/$/, '')}/#token=${encodeURIComponent(token)}`;
}
