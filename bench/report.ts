// The benchmark's result: rows with an absolute figure, an optional ratio and an optional target
// (PASS/MISS, never a failure of the process), the statistics used to compute them, and the text
// table. The same rows are printed as JSON with --json.

export interface Row {
  /** Stable identifier, e.g. "ingest.randwrite-4k-qd32.rewind". */
  id: string;
  section: string;
  label: string;
  value: number;
  unit: string;
  /** Other figures of the same measurement, for the reader. */
  detail: string;
  ratio?: number;
  /** What the ratio divides by, e.g. "nbdkit". */
  ratioTo?: string;
  target?: string;
  result?: 'PASS' | 'MISS';
}

export interface Target {
  text: string;
  pass: boolean;
}

export function atLeast(value: number, minimum: number, text: string): Target {
  return { text, pass: value >= minimum };
}

export function atMost(value: number, maximum: number, text: string): Target {
  return { text, pass: value <= maximum };
}

/** A row, with its target's verdict spelled out when it has one. */
export function row(fields: Omit<Row, 'target' | 'result'>, target?: Target): Row {
  if (!target) return fields;
  return { ...fields, target: target.text, result: target.pass ? 'PASS' : 'MISS' };
}

export function median(values: readonly number[]): number {
  if (values.length === 0) throw new Error('median of nothing');
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

/** The nearest-rank percentile `p` (0..100) of `values`. */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) throw new Error('percentile of nothing');
  const sorted = [...values].sort((a, b) => a - b);
  const rank = Math.min(sorted.length, Math.max(1, Math.ceil((p / 100) * sorted.length)));
  return sorted[rank - 1] as number;
}

/** Peak resident memory seen per process role over all the runs. */
export class PeakMemory {
  private readonly peaks = new Map<string, number>();

  record(role: string, bytes: number): void {
    this.peaks.set(role, Math.max(bytes, this.peaks.get(role) ?? 0));
  }

  get(role: string): number | undefined {
    return this.peaks.get(role);
  }
}

export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return String(value);
  const magnitude = Math.abs(value);
  if (magnitude >= 1000) return Math.round(value).toLocaleString('en-US');
  if (magnitude >= 100) return value.toFixed(0);
  if (magnitude >= 10) return value.toFixed(1);
  if (magnitude >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

function cells(r: Row): string[] {
  const ratio = r.ratio === undefined ? '' : `${r.ratio.toFixed(2)}x ${r.ratioTo ?? ''}`.trim();
  return [r.label, formatNumber(r.value), r.unit, ratio, r.target ?? '', r.result ?? '', r.detail];
}

/** A plain-text table grouped by section. */
export function formatTable(rows: readonly Row[]): string {
  const header = ['measure', 'value', 'unit', 'ratio', 'target', 'result', 'detail'];
  const body = rows.map(cells);
  const widths = header.map((h, column) =>
    Math.max(h.length, ...body.map((line) => (line[column] ?? '').length)),
  );
  const line = (values: string[]): string =>
    values
      .map((v, column) =>
        column === 1 ? v.padStart(widths[column] ?? 0) : v.padEnd(widths[column] ?? 0),
      )
      .join('  ')
      .trimEnd();
  const out = [line(header), line(widths.map((w) => '-'.repeat(w)))];
  let section = '';
  rows.forEach((r, index) => {
    if (r.section !== section) {
      section = r.section;
      out.push(`[${section}]`);
    }
    out.push(line(body[index] as string[]));
  });
  return out.join('\n');
}
