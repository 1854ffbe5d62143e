// NBD protocol fuzzer for Rewind's NBD server: many connections of valid and hostile handshakes and
// valid, invalid and mutated transmission requests, every reply checked against the NBD spec, a
// canary region that must survive untouched, and liveness probes along the way. Exits non-zero on
// any violation and prints the seed and the offending exchange (replay one connection with --replay).
//
//   node dist/sim/nbd-fuzz.js --requests 1000000 --target rewind [--seed S] [--json]
import { randomInt } from 'node:crypto';
import { parseArgs } from 'node:util';
import { SLOTS_MAX } from './nbd-fuzz-model.js';
import { FAST_ZERO_NOT_ADVERTISED } from './nbd-fuzz-oracle.js';
import { runFuzz, type FuzzOptions, type FuzzReport } from './nbd-fuzz-run.js';
import { TARGET_KINDS, type TargetKind } from './nbd-fuzz-target.js';

const USAGE = `usage: node dist/sim/nbd-fuzz.js [--requests N] [--seed S] [--target memory|memory-tls|memory-tls-on|rewind] [--concurrency C]
       [--check-every N] [--timeout-ms MS] [--replay CONNECTION] [--tolerate RULE]... [--json]
  --tolerate RULE  do not enforce the errno of one oracle rule (a known server deviation); such replies
                   are counted under "tolerated deviations" instead (rule names as in violation reports,
                   e.g. "${FAST_ZERO_NOT_ADVERTISED}").`;

/** A bad command line: printed as its message, without a stack. */
class UsageError extends Error {}

function integer(
  text: string | undefined,
  fallback: number,
  name: string,
  min: number,
  max: number,
): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min || value > max)
    throw new UsageError(`--${name} must be an integer in [${min}, ${max}]\n${USAGE}`);
  return value;
}

function parseOptions(argv: string[]): FuzzOptions & { json: boolean } {
  const { values } = parseArgs({
    args: argv,
    options: {
      requests: { type: 'string' },
      seed: { type: 'string' },
      target: { type: 'string' },
      concurrency: { type: 'string' },
      'check-every': { type: 'string' },
      'timeout-ms': { type: 'string' },
      replay: { type: 'string' },
      tolerate: { type: 'string', multiple: true },
      json: { type: 'boolean' },
      help: { type: 'boolean' },
    },
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  const target = (values.target ?? 'memory') as TargetKind;
  if (!TARGET_KINDS.includes(target))
    throw new UsageError(`--target must be one of ${TARGET_KINDS.join(', ')}\n${USAGE}`);
  const replay =
    values.replay === undefined
      ? undefined
      : integer(values.replay, 0, 'replay', 0, Number.MAX_SAFE_INTEGER);
  return {
    requests: integer(values.requests, 100_000, 'requests', 1, Number.MAX_SAFE_INTEGER),
    seed: integer(values.seed, randomInt(0x100000000), 'seed', 0, 0xffffffff),
    target,
    concurrency: integer(values.concurrency, 4, 'concurrency', 1, SLOTS_MAX),
    checkEvery: integer(values['check-every'], 200, 'check-every', 1, Number.MAX_SAFE_INTEGER),
    timeoutMs: integer(values['timeout-ms'], 15_000, 'timeout-ms', 100, 600_000),
    ...(replay !== undefined ? { replay } : {}),
    tolerate: values.tolerate ?? [],
    json: values.json === true,
  };
}

function printReport(report: FuzzReport): void {
  const lines = [
    `nbd-fuzz ${report.ok ? 'passed' : 'FAILED'}: target ${report.target}, seed ${report.seed}`,
    `  requests sent       ${report.requests}${report.replayed === undefined ? ` (planned ${report.requestsPlanned})` : ` (replay of connection ${report.replayed})`}`,
    `  connections         ${report.connections} (${report.transmissions} reached transmission), ${report.options} options`,
    `  replies             ${report.replies}`,
    `  errors by errno     ${Object.entries(report.errnos)
      .map(([name, count]) => `${name} ${count}`)
      .join(', ')}`,
    `  option errors       ${Object.entries(report.optionErrors)
      .map(([name, count]) => `${name} ${count}`)
      .join(', ')}`,
    `  protocol disconnects ${report.serverDisconnects} (server closed first)`,
    `  liveness probes     ${report.probes}`,
    `  tolerated deviations ${
      Object.entries(report.deviations)
        .map(([what, count]) => `${what} ${count}`)
        .join(', ') || 'none'
    }`,
    `  time                ${report.seconds} s, ${report.requestsPerSecond} requests/s`,
  ];
  console.log(lines.join('\n'));
  for (const violation of report.violations) {
    const where =
      violation.connection === undefined
        ? 'setup, probes or final checks'
        : `connection ${violation.connection} (replay: --seed ${report.seed} --replay ${violation.connection})`;
    console.log(`\nVIOLATION [${violation.rule}] in ${where}\n  ${violation.detail}`);
    if (violation.exchange.length > 0)
      console.log(`  recent exchange:\n    ${violation.exchange.join('\n    ')}`);
  }
}

async function main(): Promise<void> {
  const options = parseOptions(process.argv.slice(2));
  console.error(
    `nbd-fuzz: seed ${options.seed}, target ${options.target}, ${options.requests} requests`,
  );
  const report = await runFuzz({ ...options, progress: (line) => console.error(line) });
  if (options.json) console.log(JSON.stringify(report, null, 2));
  else printReport(report);
  process.exitCode = report.ok ? 0 : 1;
}

main().catch((error: unknown) => {
  if (
    error instanceof UsageError ||
    (error instanceof TypeError &&
      'code' in error &&
      String(error.code).startsWith('ERR_PARSE_ARGS'))
  ) {
    console.error(error.message);
  } else {
    console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
  }
  process.exitCode = 2;
});
