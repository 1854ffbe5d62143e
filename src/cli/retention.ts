// The command line of retention: the policy flags of `rewind up` and `rewind manager` (or a JSON
// config file with the same settings), and `rewind retention` to show the journal, change the
// policy of a running manager, or see what another policy would keep and free.
import fs from 'node:fs';
import { Option, type Command } from 'commander';
import { formatBytes, RewindError } from '../core/index.js';
import type { PolicyText, RetentionStatus, Simulation } from '../manager/index.js';

/** The flags of a policy, on a command; `--config FILE` takes the same as JSON. */
export function withRetentionOptions(command: Command): Command {
  return command
    .option(
      '--journal-max <size>',
      "the journal's size limit on this host (or 'auto': half its file system)",
    )
    .option('--journal-warn <size>', "warn above this size (or 'auto': 80 % of the limit)")
    .option('--keep-every-write <duration>', 'keep every write for this long (e.g. 4h)')
    .option(
      '--keep <tiers>',
      'then coarser points, EVERY:FOR,... (default 1m:7d,1h:30d,1d:365d; FOR is the age a tier reaches, past --keep-every-write)',
    )
    .addOption(
      new Option('--on-journal-full <what>', 'at the limit with only kept history left').choices([
        'drop-oldest',
        'stop-applying',
      ]),
    )
    .option('--config <file>', 'a JSON file: {"retention": {"journalMax": "200G", "keep": ...}}');
}

export interface RetentionFlags {
  journalMax?: string;
  journalWarn?: string;
  keepEveryWrite?: string;
  keep?: string;
  onJournalFull?: string;
  config?: string;
}

/** The settings given: the config file's, with the flags over them; undefined when none. */
export function retentionFromOptions(options: RetentionFlags): PolicyText | undefined {
  const text: PolicyText = options.config ? configRetention(options.config) : {};
  if (options.journalMax !== undefined) text.journalMax = options.journalMax;
  if (options.journalWarn !== undefined) text.journalWarn = options.journalWarn;
  if (options.keepEveryWrite !== undefined) text.keepEveryWrite = options.keepEveryWrite;
  if (options.keep !== undefined) text.keep = options.keep;
  if (options.onJournalFull !== undefined) text.onFull = options.onJournalFull;
  return Object.keys(text).length > 0 ? text : undefined;
}

function configRetention(file: string): PolicyText {
  let config: unknown;
  try {
    config = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (error) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `--config ${file}: ${(error as Error).message}`);
  }
  const retention = (config as { retention?: unknown } | null)?.retention;
  if (retention === undefined) return {};
  if (typeof retention !== 'object' || retention === null) {
    throw new RewindError('REWIND_BAD_ARGUMENT', `--config ${file}: "retention" must be an object`);
  }
  const text: PolicyText = {};
  for (const [key, value] of Object.entries(retention)) {
    if (!['journalMax', 'journalWarn', 'keepEveryWrite', 'keep', 'onFull'].includes(key)) {
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `--config ${file}: "${key}" is not a retention setting`,
        {
          hint: 'settings: journalMax, journalWarn, keepEveryWrite, keep, onFull',
        },
      );
    }
    text[key as keyof PolicyText] = String(value);
  }
  return text;
}

type Request = (options: object, method: string, route: string, body?: object) => Promise<unknown>;

export function registerRetentionCommand(
  program: Command,
  withServer: (command: Command) => Command,
  request: Request,
): void {
  withRetentionOptions(
    withServer(
      program
        .command('retention')
        .description(
          'the journal on the backup host: its size, limits, tiers, oldest point and alerts',
        )
        .option(
          '--simulate',
          'show what the policy given by the flags would keep and free (changes nothing)',
        )
        .option('--set', 'change the running policy to the one given by the flags')
        .option('--json', 'print JSON'),
    ),
  ).action(
    async (
      options: RetentionFlags & {
        simulate?: boolean;
        set?: boolean;
        json?: boolean;
        server?: string;
      },
    ) => {
      const text = retentionFromOptions(options) ?? {};
      if (options.simulate && options.set) {
        throw new RewindError('REWIND_BAD_ARGUMENT', 'give --simulate or --set, not both');
      }
      if (options.simulate) {
        const simulation = (await request(
          options,
          'POST',
          '/api/retention/simulate',
          text,
        )) as Simulation;
        if (options.json) return console.log(JSON.stringify(simulation));
        return printSimulation(simulation);
      }
      if (options.set) {
        if (Object.keys(text).length === 0) {
          throw new RewindError('REWIND_BAD_ARGUMENT', '--set needs at least one policy flag');
        }
        await request(options, 'PUT', '/api/retention/policy', text);
      }
      const status = (await request(options, 'GET', '/api/retention')) as RetentionStatus;
      if (options.json) return console.log(JSON.stringify(status));
      printStatus(status);
    },
  );
}

function printStatus(status: RetentionStatus): void {
  const p = status.policy;
  console.log(
    `journal: ${formatBytes(status.journalBytes)} of ${formatBytes(status.journalBytesMax)} (warn at ${formatBytes(status.journalBytesWarn)})`,
  );
  console.log(
    `policy: every write for ${p.keepEveryWrite}, then ${p.keep}; at the limit: ${p.onFull}`,
  );
  console.log(
    `oldest point: seq ${status.oldestSeq}${status.oldestTime ? ` (${status.oldestTime})` : ''}`,
  );
  console.log(`every write kept from seq ${status.everyWriteFromSeq}`);
  for (const tier of status.tiers) {
    const span = tier.oldest && tier.newest ? `${tier.oldest} .. ${tier.newest}` : 'empty';
    console.log(
      `  ${tier.tier.padEnd(12)} ${String(tier.points).padStart(9)} points  ${formatBytes(tier.bytes).padStart(10)}  ${span}`,
    );
  }
  const archive = status.archive;
  if (archive) {
    const range =
      archive.fromSeq === null ? 'empty' : `seq ${archive.fromSeq}..${archive.throughSeq}`;
    console.log(
      `  ${'archive'.padEnd(12)} ${range}, ${archive.objects} objects, ${formatBytes(archive.storedBytes)} stored, ${archive.backlogTransactions} transactions waiting (${archive.url})`,
    );
    if (archive.policy) {
      const from =
        archive.everyWriteFromSeq === null || archive.everyWriteFromSeq === undefined
          ? ''
          : ` (from seq ${archive.everyWriteFromSeq})`;
      const base =
        archive.baseSeq === null || archive.baseSeq === undefined
          ? 'no full image before it yet'
          : `full images before seq ${archive.baseSeq}: ${archive.coarsePoints ?? 0} points`;
      console.log(
        `  ${'archive'.padEnd(12)} every write for ${archive.policy.keepEveryWrite}${from}, then ${archive.policy.keep} as full images; ${base}`,
      );
    }
    if (archive.stuck) console.log(`  ${''.padEnd(12)} ${archive.stuck}`);
  }
  const until =
    status.secondsUntilLimit === null
      ? ''
      : `; the limit in about ${Math.round(status.secondsUntilLimit / 60)} min at this rate`;
  console.log(`growth: ${formatBytes(status.bytesPerSecond)}/s${until}`);
  if (status.applyingStopped)
    console.log('applying is stopped: the journal is full of history the policy keeps');
  for (const alert of status.alerts) console.log(`${alert.level}: ${alert.message}`);
}

function printSimulation(simulation: Simulation): void {
  if (simulation.actions.length === 0) console.log('nothing would change');
  for (const a of simulation.actions) {
    console.log(
      `${a.kind}\tseq ${a.seqFirst}..${a.seqLast}\t${a.transactions} transactions\tfrees at least ${formatBytes(a.freedBytesAtLeast)}\t${a.detail}`,
    );
  }
  console.log(
    `frees at least ${formatBytes(simulation.freedBytesAtLeast)}; the oldest point would be seq ${simulation.oldestSeqAfter}`,
  );
  if (simulation.stuck) console.log(`note: ${simulation.stuck}`);
}
