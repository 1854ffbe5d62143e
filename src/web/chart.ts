// The timeline chart (uPlot): writes/s as bars and bytes/s as a line over one window of capture
// time, with its marks drawn over the plot: resync windows (no per-write history) hatched, runs
// thinned by retention and restores as bands, transactions as a strip along the bottom, bookmarks
// as dashed lines, and, once the window is narrow enough to list them, every single write as a
// tick with its seq. Dragging selects a window to zoom into; a click picks that moment.
import uPlot from 'uplot';
import { formatBytes, formatDuration, isoFromUs } from './dom.js';
import type { Timeline } from './types.js';

const CHART_HEIGHT_PX = 260;
/** A drag narrower than this is a click. */
const DRAG_MIN_PX = 4;
/** Seq labels of single writes are drawn when they are at least this far apart. */
const WRITE_LABEL_SPACING_PX = 28;

const COLORS = {
  writes: '#3b6fd8',
  bytes: '#1f9d6b',
  gap: 'rgba(214, 69, 65, 0.22)',
  gapLine: '#d64541',
  restore: 'rgba(142, 68, 173, 0.18)',
  restoreLine: '#8e44ad',
  bookmark: '#e67e22',
  thinned: 'rgba(120, 130, 145, 0.18)',
  thinnedText: '#5b6779',
  tx: ['#9aa7b8', '#c7d0dc'],
  write: '#1b2b45',
};

export interface ChartEvents {
  /** A window was selected by dragging (µs since the epoch). */
  onSelect(fromUs: number, toUs: number): void;
  /** A moment was clicked. */
  onPick(us: number): void;
}

export class TimelineChart {
  readonly element: HTMLElement;
  private plot: uPlot | undefined;
  private data: Timeline | undefined;
  private readonly events: ChartEvents;
  private readonly resize = (): void => this.fit();
  private downX = 0;

  constructor(events: ChartEvents) {
    this.events = events;
    this.element = document.createElement('div');
    this.element.className = 'chart';
    this.element.dataset.testid = 'chart';
    window.addEventListener('resize', this.resize);
  }

  update(data: Timeline): void {
    this.data = data;
    this.element.dataset.fromUs = String(data.fromUs);
    this.element.dataset.toUs = String(data.toUs);
    this.element.dataset.resolution = data.list ? 'single' : data.resolution;
    const seconds = data.bucketUs / 1e6;
    const xs = data.writes.map((_, i) => ((i + 0.5) * data.bucketUs) / 1e6);
    const columns: uPlot.AlignedData = [
      xs,
      data.writes.map((n) => n / seconds),
      data.bytes.map((n) => n / seconds),
    ];
    if (this.plot) {
      this.plot.setData(columns, false);
      this.plot.setScale('x', { min: 0, max: (data.toUs - data.fromUs) / 1e6 });
      return;
    }
    this.plot = new uPlot(this.options(), columns, this.element);
    this.plot.setScale('x', { min: 0, max: (data.toUs - data.fromUs) / 1e6 });
    const over = this.plot.over;
    over.addEventListener('mousedown', (event) => (this.downX = event.clientX));
    over.addEventListener('click', (event) => {
      if (Math.abs(event.clientX - this.downX) >= DRAG_MIN_PX || !this.plot || !this.data) return;
      const x = this.plot.posToVal(event.offsetX, 'x');
      this.events.onPick(Math.round(this.data.fromUs + x * 1e6));
    });
    this.fit();
  }

  destroy(): void {
    window.removeEventListener('resize', this.resize);
    this.plot?.destroy();
    this.plot = undefined;
  }

  private fit(): void {
    const width = Math.max(320, this.element.clientWidth || 800);
    this.plot?.setSize({ width, height: CHART_HEIGHT_PX });
  }

  private options(): uPlot.Options {
    const axisTime = (_u: uPlot, values: number[]): string[] =>
      values.map((x) => this.tickLabel(x));
    return {
      width: Math.max(320, this.element.clientWidth || 800),
      height: CHART_HEIGHT_PX,
      scales: { x: { time: false, auto: false }, writes: { auto: true }, bytes: { auto: true } },
      cursor: { drag: { x: true, y: false, setScale: false } },
      select: { show: true, left: 0, top: 0, width: 0, height: 0 },
      legend: { live: true },
      axes: [
        { values: axisTime, space: 90 },
        {
          scale: 'writes',
          label: 'writes/s',
          size: 60,
          values: (_u, v) => v.map((n) => compact(n)),
        },
        {
          scale: 'bytes',
          side: 1,
          size: 80,
          label: 'bytes/s',
          grid: { show: false },
          values: (_u, v) => v.map((n) => `${formatBytes(n)}`),
        },
      ],
      series: [
        { label: 'time', value: (_u, x) => (x === null ? '—' : this.absolute(x)) },
        {
          label: 'writes/s',
          scale: 'writes',
          stroke: COLORS.writes,
          fill: 'rgba(59, 111, 216, 0.35)',
          paths: pathBuilder(uPlot.paths.bars, { size: [0.9, 100] }),
          value: (_u, v) => (v === null ? '—' : compact(v)),
        },
        {
          label: 'bytes/s',
          scale: 'bytes',
          stroke: COLORS.bytes,
          width: 1.5,
          paths: pathBuilder(uPlot.paths.stepped, { align: 1 }),
          value: (_u, v) => (v === null ? '—' : `${formatBytes(v)}/s`),
        },
      ],
      hooks: {
        setSelect: [(u) => this.selected(u)],
        draw: [(u) => this.drawMarks(u)],
      },
    };
  }

  private selected(u: uPlot): void {
    const { left, width } = u.select;
    if (!this.data || width < DRAG_MIN_PX) return;
    const fromUs = Math.round(this.data.fromUs + u.posToVal(left, 'x') * 1e6);
    const toUs = Math.round(this.data.fromUs + u.posToVal(left + width, 'x') * 1e6);
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (toUs > fromUs) this.events.onSelect(fromUs, Math.max(toUs, fromUs + 1));
  }

  private absolute(x: number): string {
    return this.data ? isoFromUs(this.data.fromUs + x * 1e6) : '';
  }

  /** Tick labels: the date and time for wide windows, the seconds with µs for narrow ones. */
  private tickLabel(x: number): string {
    if (!this.data) return '';
    const widthUs = this.data.toUs - this.data.fromUs;
    const iso = isoFromUs(this.data.fromUs + x * 1e6); // 2026-11-24T15:03:12.123456Z
    if (widthUs > 2 * 86_400_000_000) return `${iso.slice(5, 10)} ${iso.slice(11, 16)}`;
    if (widthUs > 600_000_000) return iso.slice(11, 19);
    if (widthUs > 2_000_000) return iso.slice(11, 23);
    return `${iso.slice(17, 26)}`;
  }

  private drawMarks(u: uPlot): void {
    const data = this.data;
    if (!data) return;
    const ctx = u.ctx;
    const { top, height, left, width } = u.bbox;
    const xOf = (us: number): number =>
      u.valToPos(Math.min(Math.max(us - data.fromUs, 0), data.toUs - data.fromUs) / 1e6, 'x', true);
    const ratio = window.devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(left, top, width, height);
    ctx.clip();
    ctx.font = `${11 * ratio}px system-ui, sans-serif`;
    for (const gap of data.gaps) {
      const x0 = xOf(gap.fromUs);
      const x1 = Math.max(x0 + 2 * ratio, xOf(gap.toUs ?? data.toUs));
      ctx.fillStyle = COLORS.gap;
      ctx.fillRect(x0, top, x1 - x0, height);
      ctx.strokeStyle = COLORS.gapLine;
      ctx.lineWidth = ratio;
      ctx.strokeRect(x0, top, x1 - x0, height);
      ctx.fillStyle = COLORS.gapLine;
      ctx.fillText(
        `resync: no per-write history (seq ${gap.seqFirst}…)`,
        x0 + 3 * ratio,
        top + 24 * ratio,
      );
    }
    for (const run of data.thinned) {
      const x0 = xOf(run.fromUs);
      const x1 = Math.max(x0 + 2 * ratio, xOf(run.toUs));
      ctx.fillStyle = COLORS.thinned;
      ctx.fillRect(x0, top, x1 - x0, height);
      ctx.fillStyle = COLORS.thinnedText;
      const label = `thinned${run.tier ? ` (${run.tier})` : ''}: one point at seq ${run.seqLast}`;
      ctx.fillText(label, x0 + 3 * ratio, top + 52 * ratio);
    }
    for (const restore of data.restores) {
      const x0 = xOf(restore.fromUs);
      const x1 = Math.max(x0 + 2 * ratio, xOf(restore.toUs ?? data.toUs));
      ctx.fillStyle = COLORS.restore;
      ctx.fillRect(x0, top, x1 - x0, height);
      ctx.fillStyle = COLORS.restoreLine;
      ctx.fillText(
        `restore #${restore.id} to seq ${restore.seq}`,
        x0 + 3 * ratio,
        top + 38 * ratio,
      );
    }
    if (!data.transactionsTruncated) {
      data.transactions.forEach((tx, i) => {
        const x0 = xOf(tx.fromUs);
        const x1 = Math.max(x0 + ratio, xOf(tx.toUs));
        ctx.fillStyle = tx.kind === 'redo' ? (COLORS.tx[i % 2] as string) : COLORS.gapLine;
        ctx.fillRect(x0, top + height - 6 * ratio, x1 - x0, 6 * ratio);
      });
    }
    ctx.setLineDash([4 * ratio, 3 * ratio]);
    for (const bookmark of data.bookmarks) {
      const x = xOf(bookmark.timeUs);
      ctx.strokeStyle = COLORS.bookmark;
      ctx.lineWidth = 1.5 * ratio;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.fillStyle = COLORS.bookmark;
      ctx.fillText(`@${bookmark.name}`, x + 3 * ratio, top + 12 * ratio);
    }
    ctx.setLineDash([]);
    let lastLabel = -Infinity;
    for (const write of data.list ?? []) {
      const x = xOf(write.timeUs);
      ctx.strokeStyle = COLORS.write;
      ctx.lineWidth = ratio;
      ctx.beginPath();
      ctx.moveTo(x, top + height - 20 * ratio);
      ctx.lineTo(x, top + height - 8 * ratio);
      ctx.stroke();
      if (x - lastLabel >= WRITE_LABEL_SPACING_PX * ratio) {
        ctx.fillStyle = COLORS.write;
        ctx.fillText(String(write.seq), x + 2 * ratio, top + height - 24 * ratio);
        lastLabel = x;
      }
    }
    ctx.restore();
  }

  /** The width of one bucket, for the legend under the chart. */
  static bucketLabel(data: Timeline): string {
    return formatDuration(data.bucketUs);
  }
}

/** uPlot's path builders (bars, stepped): this build has them, so a missing one is a bug. */
function pathBuilder<O>(
  make: ((options: O) => uPlot.Series.PathBuilder) | undefined,
  options: O,
): uPlot.Series.PathBuilder {
  if (!make) throw new Error('this uPlot build lacks a path builder the chart uses');
  return make(options);
}

function compact(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return n >= 10 ? n.toFixed(0) : n.toFixed(n === 0 ? 0 : 2);
}
