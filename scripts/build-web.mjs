// Builds the web console (src/web/) into dist/web/: one bundled, minified script and stylesheet
// (esbuild, with uPlot and its CSS inside), gzipped copies of both, and the page. Nothing is built
// when Rewind runs.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { gzipSync } from 'node:zlib';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const out = path.join(root, 'dist/web');
rmSync(out, { recursive: true, force: true });
mkdirSync(path.join(out, 'assets'), { recursive: true });
await build({
  entryPoints: [path.join(root, 'src/web/main.ts')],
  outfile: path.join(out, 'assets/app.js'),
  bundle: true,
  minify: true,
  sourcemap: 'linked',
  format: 'esm',
  target: ['chrome110', 'firefox110', 'safari16'],
  legalComments: 'linked',
  logLevel: 'warning',
});
copyFileSync(path.join(root, 'src/web/index.html'), path.join(out, 'index.html'));
// Served precompressed (@fastify/static preCompressed) when the browser accepts gzip.
for (const file of ['assets/app.js', 'assets/app.css']) {
  const full = path.join(out, file);
  writeFileSync(`${full}.gz`, gzipSync(readFileSync(full), { level: 9 }));
}
