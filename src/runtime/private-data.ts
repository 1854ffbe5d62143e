// Data at rest is private: the umask of `rewind up/agent/manager`, and the check at start that
// neither the data directory nor the secrets given on the command line can be read by others.
import { RewindError } from '../core/index.js';
import { UMASK_PRIVATE, modeOf, scanExposed, type ExposureReport } from '../platform/index.js';
import type { LogFunction } from '../nbd/index.js';

export interface PrivacyCheck {
  dataDir: string;
  /** Files holding keys or tokens (a TLS private key, a PSK file): they must be private too. */
  secretFiles: readonly string[];
  /** Refuse to start instead of warning (`--strict-permissions`). */
  strict: boolean;
  log: LogFunction;
}

/** From now on nothing this process creates is readable by group or others. */
export function makeProcessPrivate(): void {
  process.umask(UMASK_PRIVATE);
}

/** Reports (or, strictly, refuses) a data directory or secret file that others can read. */
export async function checkPrivate(check: PrivacyCheck): Promise<void> {
  const problems: { message: string; fix: string }[] = [];
  const report = await scanExposed(check.dataDir);
  if (report.exposed > 0) problems.push(describeDataDir(check.dataDir, report));
  for (const file of check.secretFiles) {
    const mode = modeOf(file);
    if (mode === undefined || (mode & 0o077) === 0) continue;
    problems.push({
      message: `${file} holds a secret and is open to group or others (${octal(mode)})`,
      fix: `chmod 600 ${shellQuote(file)}`,
    });
  }
  for (const problem of problems) {
    if (check.strict)
      throw new RewindError('REWIND_CONFIG', `${problem.message} (--strict-permissions)`, {
        hint: `fix it with: ${problem.fix}`,
      });
    check.log('warn', `${problem.message}; fix it with: ${problem.fix}`, { fix: problem.fix });
  }
}

function describeDataDir(
  dataDir: string,
  report: ExposureReport,
): { message: string; fix: string } {
  const examples = report.examples.map((entry) => `${entry.path} ${octal(entry.mode)}`).join(', ');
  const more = report.exposed > report.examples.length ? ', ...' : '';
  const scanned = report.truncated ? ` (scan stopped after ${report.entries} entries)` : '';
  return {
    message: `data directory ${dataDir} is open to group or others: ${report.exposed} of ${report.entries} entries${scanned} (${examples}${more}), so other users can read its history`,
    fix: `chmod -R go-rwx ${shellQuote(dataDir)}`,
  };
}

function octal(mode: number): string {
  return `0${mode.toString(8).padStart(3, '0')}`;
}

/** A path as one shell word, for a command the operator copies. */
export function shellQuote(text: string): string {
  if (/^[\w@%+=:,./-]+$/.test(text)) return text;
  return `'${text.replace(/'/g, `'\\''`)}'`;
}
