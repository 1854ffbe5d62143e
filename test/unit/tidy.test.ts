// The tidy check: rules of this codebase that neither the compiler nor the linter states, over
// every file of src/ (each rule is also shown to catch its violation on a small example).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const COMMENT_COLUMNS_MAX = 100;

interface Source {
  file: string;
  text: string;
}

function sources(dir: string): Source[] {
  const out: Source[] = [];
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) out.push(...sources(full));
    else if (entry.name.endsWith('.ts'))
      out.push({ file: path.relative(ROOT, full), text: fs.readFileSync(full, 'utf8') });
  }
  return out;
}

function lineOf(text: string, index: number): number {
  return text.slice(0, index).split('\n').length;
}

/** The body of the block whose `{` is at `open` (string and comment braces are rare enough here). */
function blockBody(text: string, open: number): string {
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === '{') depth += 1;
    else if (text[i] === '}' && --depth === 0) return text.slice(open + 1, i);
  }
  return text.slice(open + 1);
}

/** A catch that neither rethrows programmer errors (rethrowIfBug) nor rethrows at all. */
function swallowingCatches(source: Source): string[] {
  const found: string[] = [];
  for (const match of source.text.matchAll(/catch\s*(\((\w+)\))?\s*\{/g)) {
    const name = match[2];
    const body = blockBody(source.text, (match.index ?? 0) + match[0].length - 1);
    const rethrows = /\bthrow\b/.test(body);
    const checked = name !== undefined && new RegExp(`rethrowIfBug\\(${name}\\)`).test(body);
    if (name === undefined || !(rethrows || checked)) {
      found.push(`${source.file}:${lineOf(source.text, match.index ?? 0)}`);
    }
  }
  return found;
}

function silentCatchCalls(source: Source): string[] {
  const pattern = /\.catch\(\s*\(\s*\w*\s*\)\s*=>\s*(undefined|\{\s*\}|null)\s*\)/g;
  return [...source.text.matchAll(pattern)].map(
    (m) => `${source.file}:${lineOf(source.text, m.index ?? 0)}`,
  );
}

function missingHeader(source: Source): string[] {
  return source.text.startsWith('// ') ? [] : [source.file];
}

function wideComments(source: Source): string[] {
  return source.text
    .split('\n')
    .map((line, i) => ({ line, i }))
    .filter(({ line }) => line.length > COMMENT_COLUMNS_MAX && /^\s*(\/\/|\*|\/\*)/.test(line))
    .map(({ i }) => `${source.file}:${i + 1}`);
}

function outsideReferences(source: Source): string[] {
  return [...source.text.matchAll(/DESIGN\.md|\.\.\/shared\/|\/work\//g)].map(
    (m) => `${source.file}:${lineOf(source.text, m.index ?? 0)}`,
  );
}

function consoleOutsideCli(source: Source): string[] {
  if (/^src\/(cli|web)\//.test(source.file)) return [];
  return [...source.text.matchAll(/\bconsole\.\w+\(/g)].map(
    (m) => `${source.file}:${lineOf(source.text, m.index ?? 0)}`,
  );
}

/** Relative imports of each file, resolved to repository paths (type imports count too). */
function importGraph(all: Source[]): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const source of all) {
    const deps: string[] = [];
    for (const m of source.text.matchAll(/(?:import|export)\s[^'";]*?from\s+'(\.[^']+)'/g)) {
      const target = path.normalize(path.join(path.dirname(source.file), m[1] as string));
      deps.push(target.replace(/\.js$/, '.ts'));
    }
    graph.set(source.file, deps);
  }
  return graph;
}

/** Every import cycle, as the files on it (Tarjan's strongly connected components). */
function importCycles(graph: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const cycles: string[][] = [];
  let next = 0;
  const visit = (v: string): void => {
    index.set(v, next);
    low.set(v, next);
    next += 1;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue;
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
      }
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    for (let w = stack.pop(); w !== undefined; w = stack.pop()) {
      onStack.delete(w);
      component.push(w);
      if (w === v) break;
    }
    if (component.length > 1) cycles.push(component.sort());
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return cycles;
}

const SRC = sources(path.join(ROOT, 'src'));

describe('tidy: src/', () => {
  it('is read from the repository', () => {
    assert.ok(SRC.length > 40, `found ${SRC.length} source files under ${ROOT}/src`);
  });

  const rules: [string, (source: Source) => string[]][] = [
    ['every catch rethrows programmer errors (rethrowIfBug) or rethrows', swallowingCatches],
    ['no .catch(() => undefined) swallowing an error', silentCatchCalls],
    ['every file opens with a // line saying what it owns', missingHeader],
    [`comments fit in ${COMMENT_COLUMNS_MAX} columns`, wideComments],
    ['no references to files outside the repository', outsideReferences],
    ['console output only from the CLI (the rest logs)', consoleOutsideCli],
  ];
  for (const [rule, check] of rules) {
    it(rule, () => {
      const found = SRC.flatMap(check);
      assert.deepEqual(found, [], `${rule}:\n${found.join('\n')}`);
    });
  }

  it('has no import cycles', () => {
    assert.deepEqual(importCycles(importGraph(SRC)), []);
  });
});

describe('tidy: each rule catches what it forbids', () => {
  const bad = (text: string): Source => ({ file: 'src/x/y.ts', text });
  it('catches', () => {
    assert.equal(swallowingCatches(bad('try { a(); } catch { return; }')).length, 1);
    assert.equal(swallowingCatches(bad('try { a(); } catch (error) { log(error); }')).length, 1);
    assert.equal(
      swallowingCatches(bad('try { a(); } catch (e) { rethrowIfBug(e); b(); }')).length,
      0,
    );
    assert.equal(swallowingCatches(bad('try { a(); } catch (e) { if (x) throw e; }')).length, 0);
  });
  it('silent .catch', () => {
    assert.equal(silentCatchCalls(bad('p.catch(() => undefined);')).length, 1);
    assert.equal(silentCatchCalls(bad('p.catch(() => {});')).length, 1);
    assert.equal(silentCatchCalls(bad('p.catch((error) => log(error));')).length, 0);
  });
  it('headers, widths, references, console', () => {
    assert.equal(missingHeader(bad('import x from "y";')).length, 1);
    assert.equal(wideComments(bad(`// ${'w'.repeat(COMMENT_COLUMNS_MAX)}`)).length, 1);
    assert.equal(outsideReferences(bad('// see DESIGN.md')).length, 1);
    assert.equal(consoleOutsideCli(bad('console.log(1);')).length, 1);
    assert.equal(consoleOutsideCli({ file: 'src/cli/main.ts', text: 'console.log(1);' }).length, 0);
  });
  it('import cycles, type imports included', () => {
    const graph = importGraph([
      { file: 'src/a/a.ts', text: "import { b } from '../b/b.js';" },
      { file: 'src/b/b.ts', text: "import type { A } from '../a/a.js';" },
      { file: 'src/c/c.ts', text: "import { b } from '../b/b.js';" },
    ]);
    assert.deepEqual(importCycles(graph), [['src/a/a.ts', 'src/b/b.ts']]);
  });
});
