// Corruption sweep: every way a redo or undo segment can be damaged on disk or on the wire must end
// in a named refusal, never in a crash and never in an acceptance of other content; a refused
// segment must leave the manager's history unchanged. Seeded and reproducible.
// - Parser level (src/log): valid random segments (writes, zeroes and trims over a few volumes;
//   undo extents) are truncated, bit-flipped, sector-zeroed, hit by misdirected sectors, have
//   records reordered, duplicated or dropped, absurd lengths, seq gaps, out-of-range volumes or
//   rewritten reserved fields (sim/corruption-mutations.ts). Each must be refused with a
//   SegmentError whose code is allowed for the class and whose offset lies in the file, or parse to
//   exactly the original content (reported as accepted-identical).
// - Manager level: a fake agent ships damaged, misdirected, stale, replayed, out-of-order, gapped,
//   wrong-volume and out-of-volume segments to a real in-process Manager
//   (sim/corruption-manager.ts): each must be refused with a named code (an exact replay of a
//   committed segment: acknowledged without re-applying) and leave catalog and replicas unchanged.
// Usage: node dist/sim/corruption-sweep.js [--seed S] [--per-class N] [--class NAME]... [--json]
// Exits 1 on any violation, printing the seed, the class, the mutation and what happened.
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { MANAGER_CLASSES, ManagerBench, type ManagerClass } from './corruption-manager.js';
import { PARSER_CLASSES, type ParserClass } from './corruption-mutations.js';
import {
  DEFAULT_SHAPE,
  describeError,
  judgeParse,
  NAMED_CODES,
  randomRedoSubject,
  randomUndoSubject,
  randomVolumeSet,
  Rng,
  type Outcome,
  type SegmentFormat,
  type Subject,
} from './corruption-segments.js';

export interface ViolationReport {
  mutation: number;
  label: string;
  detail: string;
  outcome: string;
}

export interface ClassResult {
  name: string;
  mutations: number;
  refused: Record<string, number>;
  identical: number;
  /** Which mutations were read as the original content, by label (possible findings). */
  identicalLabels: Record<string, number>;
  violations: number;
  /** The first violations, to reproduce. */
  examples: ViolationReport[];
  /** Why the class stopped early, if it did. */
  stopped?: string;
}

export interface SweepResult {
  seed: number;
  perClass: number;
  classes: ClassResult[];
  violations: number;
}

export interface SweepOptions {
  seed: number;
  perClass: number;
  /** Run only these classes (names as in the table); all when absent. */
  only?: readonly string[];
  /** Called as each class finishes (progress). */
  onClass?: (result: ClassResult) => void;
}

const EXAMPLES_MAX = 20;
const EXAMPLES_PRINTED = 3;
const PARSER_VOLUME_BYTES_MIN = 64 * 1024;
const PARSER_VOLUME_BYTES_MAX = 16 * 1024 * 1024;

interface SweepClass {
  name: string;
  run(seed: number, perClass: number): Promise<ClassResult>;
}

function sweepClasses(): SweepClass[] {
  const classes: SweepClass[] = [];
  for (const format of ['redo', 'undo'] as const) {
    for (const cls of PARSER_CLASSES.filter((c) => c.formats.includes(format))) {
      const name = `${format}/${cls.name}`;
      classes.push({
        name,
        run: async (seed, perClass) => runParserClass(name, seed, perClass, cls, format),
      });
    }
  }
  for (const cls of MANAGER_CLASSES) {
    const name = `manager/${cls.name}`;
    classes.push({ name, run: (seed, perClass) => runManagerClass(name, seed, perClass, cls) });
  }
  return classes;
}

export function classNames(): string[] {
  return sweepClasses().map((c) => c.name);
}

function emptyResult(name: string): ClassResult {
  return {
    name,
    mutations: 0,
    refused: {},
    identical: 0,
    identicalLabels: {},
    violations: 0,
    examples: [],
  };
}

function tally(result: ClassResult, label: string, detail: string, outcome: Outcome): void {
  result.mutations += 1;
  if (outcome.kind === 'refused') {
    result.refused[outcome.code] = (result.refused[outcome.code] ?? 0) + 1;
  } else if (outcome.kind === 'identical') {
    result.identical += 1;
    result.identicalLabels[label] = (result.identicalLabels[label] ?? 0) + 1;
  } else {
    result.violations += 1;
    if (result.examples.length < EXAMPLES_MAX)
      result.examples.push({ mutation: result.mutations, label, detail, outcome: outcome.detail });
  }
}

function runParserClass(
  name: string,
  seed: number,
  perClass: number,
  cls: ParserClass,
  format: SegmentFormat,
): ClassResult {
  const rng = new Rng(seed, name);
  const set = randomVolumeSet(rng, PARSER_VOLUME_BYTES_MIN, PARSER_VOLUME_BYTES_MAX);
  const make = (shape = DEFAULT_SHAPE): Subject =>
    format === 'redo' ? randomRedoSubject(rng, set, shape) : randomUndoSubject(rng, set, shape);
  const result = emptyResult(name);
  // Every segment contributes all its mutations (truncation: every byte of its last record).
  for (let segments = 0; result.mutations < perClass; segments++) {
    if (segments > 10 * perClass + 100)
      throw new Error(`${name}: no mutation applies to the segments generated`);
    const subject = make(cls.shape);
    for (const m of cls.mutate(rng, subject, () => make()))
      tally(result, m.label, m.detail, judgeParse(subject, m.bytes, m.allowed));
  }
  return result;
}

async function runManagerClass(
  name: string,
  seed: number,
  perClass: number,
  cls: ManagerClass,
): Promise<ClassResult> {
  const rng = new Rng(seed, name);
  const bench = await ManagerBench.open(rng);
  const result = emptyResult(name);
  try {
    while (result.mutations < perClass) {
      const shipment = cls.next(rng, bench);
      tally(result, shipment.label, shipment.detail, await bench.ship(shipment));
      if (bench.unreachable) {
        result.stopped = `stopped after ${result.mutations} mutations: ${bench.unreachable}`;
        break;
      }
    }
  } finally {
    await bench.close();
  }
  return result;
}

export async function runSweep(options: SweepOptions): Promise<SweepResult> {
  const all = sweepClasses();
  const unknown = (options.only ?? []).filter((name) => !all.some((c) => c.name === name));
  if (unknown.length > 0)
    throw new Error(
      `unknown class ${unknown.join(', ')}; classes: ${all.map((c) => c.name).join(', ')}`,
    );
  const chosen = options.only ? all.filter((c) => options.only?.includes(c.name)) : all;
  const classes: ClassResult[] = [];
  for (const cls of chosen) {
    const result = await cls.run(options.seed, options.perClass);
    classes.push(result);
    options.onClass?.(result);
  }
  return {
    seed: options.seed,
    perClass: options.perClass,
    classes,
    violations: classes.reduce((sum, c) => sum + c.violations, 0),
  };
}

const SHORT_CODE = (code: string): string =>
  code.replace('REWIND_SEGMENT_', '').replace('REWIND_', '');

export function formatTable(result: SweepResult): string {
  const header = [
    'class',
    'mutations',
    'refused',
    ...NAMED_CODES.map(SHORT_CODE),
    'accepted-identical',
    'violations',
  ];
  const rows = result.classes.map((c) => {
    const refused = Object.values(c.refused).reduce((sum, n) => sum + n, 0);
    return [
      c.name,
      c.mutations,
      refused,
      ...NAMED_CODES.map((code) => c.refused[code] ?? 0),
      c.identical,
      c.violations,
    ].map(String);
  });
  const widths = header.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => (r[i] as string).length)),
  );
  const line = (cells: string[]): string =>
    `| ${cells.map((cell, i) => (i === 0 ? cell.padEnd(widths[i] as number) : cell.padStart(widths[i] as number))).join(' | ')} |`;
  const rule = `|${widths.map((w, i) => (i === 0 ? `:${'-'.repeat(w + 1)}` : `${'-'.repeat(w + 1)}:`)).join('|')}|`;
  return [line(header), rule, ...rows.map(line)].join('\n');
}

/** Accepted-identical mutations by label, and every violation with how to reproduce it. */
export function formatFindings(result: SweepResult): string {
  const out: string[] = [];
  for (const c of result.classes) {
    for (const [label, n] of Object.entries(c.identicalLabels))
      out.push(`accepted-identical: ${c.name}: ${label} (${n})`);
  }
  for (const c of result.classes) {
    if (c.stopped) out.push(`${c.name}: ${c.stopped}`);
    for (const v of c.examples.slice(0, EXAMPLES_PRINTED)) {
      out.push(
        `VIOLATION seed ${result.seed} class ${c.name} mutation #${v.mutation} [${v.label}] ${v.detail}\n  -> ${v.outcome}`,
      );
    }
    const printed = Math.min(c.examples.length, EXAMPLES_PRINTED);
    if (c.violations > printed)
      out.push(
        `  ... and ${c.violations - printed} more in ${c.name} (--json lists ${EXAMPLES_MAX})`,
      );
    const first = c.examples[0];
    if (first)
      out.push(
        `  reproduce: node dist/sim/corruption-sweep.js --seed ${result.seed} --class ${c.name} --per-class ${first.mutation}`,
      );
  }
  return out.join('\n');
}

interface CliOptions {
  seed: number;
  perClass: number;
  only: string[] | undefined;
  json: boolean;
}

function parseArgs(argv: readonly string[]): CliOptions {
  const value = (name: string): string | undefined => {
    const at = argv.indexOf(name);
    return at >= 0 ? argv[at + 1] : undefined;
  };
  const integer = (name: string, fallback: number): number => {
    const text = value(name);
    const n = text === undefined ? fallback : Number(text);
    if (!Number.isSafeInteger(n) || n < 0)
      throw new Error(`${name} needs a non-negative integer, not ${text}`);
    return n;
  };
  const only = argv
    .flatMap((arg, i) => (arg === '--class' ? (argv[i + 1] ?? '').split(',') : []))
    .filter((name) => name !== '');
  return {
    seed: integer('--seed', Math.floor(Math.random() * 2 ** 31)),
    perClass: Math.max(1, integer('--per-class', 1000)),
    only: only.length > 0 ? only : undefined,
    json: argv.includes('--json'),
  };
}

async function main(): Promise<number> {
  const options = parseArgs(process.argv.slice(2));
  if (!options.json)
    console.log(`corruption sweep: seed ${options.seed}, ${options.perClass} mutations per class`);
  const started = Date.now();
  const result = await runSweep({
    seed: options.seed,
    perClass: options.perClass,
    ...(options.only ? { only: options.only } : {}),
    onClass: (c) => {
      if (!options.json)
        console.error(
          `  ${c.name}: ${c.mutations} mutations, ${c.violations} violations (${((Date.now() - started) / 1000).toFixed(1)} s)`,
        );
    },
  });
  if (options.json) {
    console.log(JSON.stringify(result, null, 2));
  } else {
    console.log(formatTable(result));
    const findings = formatFindings(result);
    if (findings) console.log(findings);
    console.log(
      `${result.violations === 0 ? 'OK' : 'FAILED'}: ${result.violations} violations (seed ${result.seed}, ${((Date.now() - started) / 1000).toFixed(1)} s)`,
    );
  }
  return result.violations === 0 ? 0 : 1;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(`corruption-sweep: ${describeError(error)}`);
      process.exit(2);
    },
  );
}
