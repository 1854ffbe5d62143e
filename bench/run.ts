// `npm run bench`: starts Rewind and its peers (nbdkit's file plugin, qemu-nbd) itself, drives them
// with fio's nbd ioengine, and prints one table of absolute figures, ratios and the issue's targets
// (PASS/MISS; a MISS never fails the process). --json prints the same rows as JSON, --short runs
// every measurement briefly (about 2 s per workload, one repetition, small histories and volumes),
// --only agent,ingest,rpo,apply,views,memory,soak runs some sections (to rerun a disturbed one;
// the retention soak alone takes about 20 minutes: `npm run bench -- --only soak`).
// Progress goes to stderr so that stdout holds only the result.
import os from 'node:os';
import { parseArgs } from 'node:util';
import { measureAgentAlone } from './agent-alone.js';
import { measureApply } from './apply.js';
import { FULL, SHORT, type Mode } from './config.js';
import { measureIngest } from './ingest.js';
import { measureSparseAgent, peakRows } from './memory.js';
import { killAll, missingTools, runTool } from './processes.js';
import { formatTable, PeakMemory, type Row } from './report.js';
import { measureRpo } from './rpo.js';
import { measureSoak } from './soak.js';
import { measureViews } from './views.js';

const TOOLS = ['fio', 'nbdkit', 'qemu-nbd', 'nbdcopy', 'nbdinfo'] as const;

interface Machine {
  cpus: number;
  cpuModel: string;
  kernel: string;
  memoryGiB: number;
  disk: string;
  node: string;
  tools: Record<string, string>;
}

interface Report {
  date: string;
  command: string;
  mode: Mode['name'];
  machine: Machine;
  seconds: number;
  rows: Row[];
  /** Sections that could not be measured (the process exits 1 when there is any). */
  failures: Failure[];
}

async function firstLine(command: string, args: string[]): Promise<string> {
  const result = await runTool(command, args, 10_000);
  return (
    `${result.stdout}${result.stderr}`
      .split('\n')
      .find((line) => line.trim().length > 0)
      ?.trim() ?? 'unknown'
  );
}

async function describeMachine(): Promise<Machine> {
  const df = (
    await runTool('df', ['-h', '--output=source,fstype,size,avail', os.tmpdir()], 10_000)
  ).stdout
    .trim()
    .split('\n');
  return {
    cpus: os.availableParallelism(),
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    kernel: os.release(),
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    disk: `${os.tmpdir()}: ${(df[df.length - 1] ?? '').replace(/\s+/g, ' ')}`,
    node: process.version,
    tools: {
      fio: await firstLine('fio', ['--version']),
      nbdkit: await firstLine('nbdkit', ['--version']),
      'qemu-nbd': await firstLine('qemu-nbd', ['--version']),
      nbdcopy: await firstLine('nbdcopy', ['--version']),
    },
  };
}

type Section = (mode: Mode, memory: PeakMemory, progress: (text: string) => void) => Promise<Row[]>;

/** The sections in the order they run; --only picks some of them. */
const SECTIONS: Record<string, Section> = {
  agent: measureAgentAlone,
  ingest: measureIngest,
  rpo: measureRpo,
  apply: measureApply,
  views: measureViews,
  memory: async (mode, memory, progress) => [await measureSparseAgent(mode, memory, progress)],
  soak: measureSoak,
};

/** A section that could not be measured; the others still run and are reported. */
interface Failure {
  section: string;
  message: string;
}

async function measureAll(
  mode: Mode,
  only: readonly string[],
  progress: (text: string) => void,
): Promise<{ rows: Row[]; failures: Failure[] }> {
  const memory = new PeakMemory();
  const rows: Row[] = [];
  const failures: Failure[] = [];
  for (const [name, section] of Object.entries(SECTIONS)) {
    if (only.length > 0 && !only.includes(name)) continue;
    try {
      rows.push(...(await section(mode, memory, progress)));
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      failures.push({ section: name, message });
      progress(`${name}: FAILED, going on with the other sections: ${message}`);
    }
  }
  return { rows: [...rows, ...peakRows(memory)], failures };
}

function parseOnly(text: string | undefined): string[] {
  const names = (text ?? '').split(',').filter((name) => name.length > 0);
  const unknown = names.filter((name) => !(name in SECTIONS));
  if (unknown.length > 0)
    throw new Error(
      `--only: unknown section ${unknown.join(', ')} (sections: ${Object.keys(SECTIONS).join(', ')})`,
    );
  return names;
}

function printText(report: Report): void {
  const m = report.machine;
  console.log(
    `Rewind benchmark, ${report.mode} mode, ${report.date}, ${report.seconds.toFixed(0)} s`,
  );
  console.log(
    `machine: ${m.cpus} cores (${m.cpuModel}), ${m.memoryGiB} GiB RAM, Linux ${m.kernel}, disk ${m.disk}`,
  );
  console.log(`node ${m.node}; ${Object.values(m.tools).join('; ')}`);
  console.log('');
  console.log(formatTable(report.rows));
  const missed = report.rows.filter((r) => r.result === 'MISS');
  console.log('');
  console.log(
    `targets: ${report.rows.filter((r) => r.result === 'PASS').length} PASS, ${missed.length} MISS${missed.length ? ` (${missed.map((r) => r.id).join(', ')})` : ''}`,
  );
  for (const failure of report.failures) {
    console.log('');
    console.log(`section ${failure.section} FAILED (no rows): ${failure.message.slice(0, 3000)}`);
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      short: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      only: { type: 'string' },
    },
  });
  const mode = values.short ? SHORT : FULL;
  const only = parseOnly(values.only);
  const missing = await missingTools(TOOLS);
  if (missing.length > 0)
    throw new Error(
      `missing tools: ${missing.join(', ')} (install fio, nbdkit, qemu-utils, libnbd-bin)`,
    );
  const began = performance.now();
  const progress = (text: string): void => {
    process.stderr.write(
      `[bench ${((performance.now() - began) / 1000).toFixed(0).padStart(4)} s] ${text}\n`,
    );
  };
  const machine = await describeMachine();
  const { rows, failures } = await measureAll(mode, only, progress);
  const report: Report = {
    date: new Date().toISOString(),
    command: ['node', ...process.argv.slice(1)].join(' '),
    mode: mode.name,
    machine,
    seconds: (performance.now() - began) / 1000,
    rows,
    failures,
  };
  if (values.json) console.log(JSON.stringify(report, null, 2));
  else printText(report);
  if (failures.length > 0) process.exitCode = 1;
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.on(signal, () => {
    killAll();
    process.exit(130);
  });
}

main().catch((error: unknown) => {
  console.error(
    `bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
  );
  process.exitCode = 1;
});
