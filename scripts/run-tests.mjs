// Runs the compiled test files with node's test runner: all, or only `unit` / `e2e`.
import { spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';

const which = process.argv[2];
const roots = which ? [`dist/test/${which}`] : ['dist/test/unit', 'dist/test/e2e'];
const files = [];
const walk = (dir) => {
  for (const name of readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) walk(full);
    else if (name.endsWith('.test.js')) files.push(full);
  }
};
for (const root of roots) walk(root);
if (files.length === 0) {
  console.error('no test files found; run npm run build first');
  process.exit(1);
}
const result = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], {
  stdio: 'inherit',
});
process.exit(result.status ?? 1);
