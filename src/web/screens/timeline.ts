// Timeline, the point picker: writes/s and bytes/s over a window of capture time (uPlot), zooming
// from the whole history down to single writes, with transactions, bookmarks, resync windows and
// restores marked; under it the writes of the window, a page at a time (the log is paged by seq,
// never loaded whole). Quick picks (latest, a bookmark, a time, a seq) and a click on the chart
// open that point.
import { rethrowIfBug } from '../bugs.js';
import { getJson, getLines, query } from '../api.js';
import { TimelineChart } from '../chart.js';
import {
  emptyState,
  errorBox,
  field,
  formatBytes,
  formatCount,
  formatDuration,
  h,
  isoFromUs,
  kindOf,
  loading,
  replace,
  table,
  typingInField,
} from '../dom.js';
import type { App, Screen } from '../screen.js';
import type { Bookmark, LogEntry, Timeline } from '../types.js';

/** Buckets asked for: about one per 3 pixels of the chart. */
const BUCKETS_PER_PX = 1 / 3;
const BUCKETS_MAX = 4000;
/** Writes per page of the table. */
const PAGE_ROWS = 50;
/** Zooming in or out changes the window's width by this factor. */
const ZOOM_FACTOR = 4;
/** Narrowest window (µs). */
const WINDOW_MIN_US = 2;
/**
 * While following, the chart is redrawn at most this often, and never sooner than this many times
 * the last answer took (a long history's whole timeline costs the server a scan of its rows).
 */
const FOLLOW_REFRESH_MS = 1000;
const FOLLOW_COST_FACTOR = 20;

export const timeline: Screen = {
  path: 'timeline',
  title: 'Timeline',
  nav: { key: 't' },
  async render({ root, params, signal, app }) {
    const fromParam = params.get('from');
    const toParam = params.get('to');
    const windowGiven = fromParam !== null && toParam !== null;
    const chart = new TimelineChart({
      onSelect: (fromUs, toUs) => go(app, fromUs, toUs),
      onPick: (us) => app.navigate('point', { at: isoFromUs(us) }),
    });
    signal.addEventListener('abort', () => chart.destroy());
    const summary = h('div', { class: 'window', 'data-testid': 'window' });
    const chartBox = h('div', { class: 'chart-box' }, chart.element);
    const writes = h('section', { 'aria-label': 'writes in the window' });
    const status = h('div', {}, loading('the timeline'));
    const follow = h('input', { type: 'checkbox', checked: !windowGiven });
    let current: Timeline | undefined;
    let lastLoadMs = 0;

    const load = async (): Promise<void> => {
      const buckets = Math.min(
        BUCKETS_MAX,
        Math.max(10, Math.round((chart.element.clientWidth || 900) * BUCKETS_PER_PX)),
      );
      const path = `/api/timeline${query({
        from: windowGiven && !follow.checked ? fromParam : undefined,
        to: windowGiven && !follow.checked ? toParam : undefined,
        buckets,
      })}`;
      try {
        const startedMs = performance.now();
        current = await getJson<Timeline>(path);
        lastLoadMs = performance.now() - startedMs;
      } catch (error) {
        rethrowIfBug(error);
        replace(status, errorBox(error, 'Loading the timeline'));
        return;
      }
      if (signal.aborted) return;
      if (current.history.firstUs === null) {
        replace(status, emptyState('No writes yet', 'The timeline fills in as clients write.'));
        chartBox.hidden = true;
        return;
      }
      chartBox.hidden = false;
      replace(status);
      chart.update(current);
      drawSummary(summary, current, app);
      drawWrites(writes, current, app, signal);
    };

    const zoom = (factor: number): void => {
      if (!current) return;
      const center = (current.fromUs + current.toUs) / 2;
      const half = Math.max(WINDOW_MIN_US / 2, ((current.toUs - current.fromUs) * factor) / 2);
      go(app, Math.max(0, Math.round(center - half)), Math.round(center + half));
    };
    const pan = (direction: number): void => {
      if (!current) return;
      const shift = Math.round(((current.toUs - current.fromUs) / 2) * direction);
      go(app, Math.max(0, current.fromUs + shift), current.toUs + shift);
    };
    const button = (label: string, title: string, onclick: () => void): HTMLButtonElement =>
      h('button', { type: 'button', title, onclick }, label);
    replace(
      root,
      h('h1', {}, 'Timeline'),
      await quickPicks(app),
      h(
        'div',
        { class: 'toolbar', role: 'toolbar', 'aria-label': 'zoom' },
        button('Whole history', 'key 0', () => app.navigate('timeline')),
        button('Zoom in +', 'key +', () => zoom(1 / ZOOM_FACTOR)),
        button('Zoom out −', 'key −', () => zoom(ZOOM_FACTOR)),
        button('◀ Earlier', 'key ←', () => pan(-1)),
        button('Later ▶', 'key →', () => pan(1)),
        h('label', { class: 'inline' }, follow, ' follow new writes'),
      ),
      summary,
      status,
      chartBox,
      h(
        'p',
        { class: 'legend muted' },
        'Drag across the chart to zoom into a window; click a moment to open the volume set as of then. ',
        h('span', { class: 'swatch gap' }),
        ' resync window (no per-write history) ',
        h('span', { class: 'swatch thinned' }),
        ' thinned by retention ',
        h('span', { class: 'swatch restore' }),
        ' restore ',
        h('span', { class: 'swatch bookmark' }),
        ' bookmark ',
        h('span', { class: 'swatch tx' }),
        ' transactions',
      ),
      writes,
    );
    follow.addEventListener('change', () => void load());
    document.addEventListener(
      'keydown',
      (event) => {
        if (event.ctrlKey || event.metaKey || event.altKey || typingInField(event)) return;
        if (document.querySelector('dialog[open]')) return;
        const action: Record<string, () => void> = {
          '+': () => zoom(1 / ZOOM_FACTOR),
          '=': () => zoom(1 / ZOOM_FACTOR),
          '-': () => zoom(ZOOM_FACTOR),
          ArrowLeft: () => pan(-1),
          ArrowRight: () => pan(1),
          '0': () => app.navigate('timeline'),
        };
        const run = action[event.key];
        if (run && !event.shiftKey) {
          event.preventDefault();
          run();
        }
      },
      { signal },
    );
    let refreshAt = 0;
    let refreshTimer: number | undefined;
    signal.addEventListener('abort', () => clearTimeout(refreshTimer));
    app.feed.onCommit(() => {
      if (!follow.checked || refreshTimer !== undefined) return;
      const everyMs = Math.max(FOLLOW_REFRESH_MS, FOLLOW_COST_FACTOR * lastLoadMs);
      const waitMs = Math.max(0, refreshAt + everyMs - Date.now());
      refreshTimer = window.setTimeout(() => {
        refreshTimer = undefined;
        refreshAt = Date.now();
        void load();
      }, waitMs);
    }, signal);
    await load();
  },
};

function go(app: App, fromUs: number, toUs: number): void {
  app.navigate('timeline', { from: fromUs, to: Math.max(toUs, fromUs + WINDOW_MIN_US) });
}

async function quickPicks(app: App): Promise<HTMLElement> {
  let bookmarks: Bookmark[] = [];
  try {
    bookmarks = await getJson<Bookmark[]>('/api/bookmarks');
  } catch (error) {
    rethrowIfBug(error);
    return errorBox(error, 'Loading the bookmarks');
  }
  const open = (at: string): void => {
    if (at.trim()) app.navigate('point', { at: at.trim() });
  };
  const time = h('input', {
    type: 'text',
    name: 'time',
    placeholder: '2026-11-24T15:03:12Z or 5 minutes ago',
  });
  const seq = h('input', {
    type: 'number',
    name: 'seq',
    min: 0,
    placeholder: 'seq',
    'data-testid': 'pick-seq',
  });
  const select = h(
    'select',
    { name: 'bookmark', 'aria-label': 'bookmark' },
    h('option', { value: '' }, bookmarks.length === 0 ? 'no bookmarks' : 'a bookmark…'),
    ...bookmarks.map((b) => h('option', { value: `@${b.name}` }, `@${b.name} (seq ${b.seq})`)),
  );
  const form = (label: string, input: HTMLElement, value: () => string): HTMLFormElement =>
    h(
      'form',
      {
        class: 'pick',
        onsubmit: (event: Event) => {
          event.preventDefault();
          open(value());
        },
      },
      field(label, input),
      h('button', { type: 'submit' }, 'Open'),
    );
  return h(
    'section',
    { class: 'picks', 'aria-label': 'quick picks' },
    h(
      'button',
      {
        type: 'button',
        class: 'primary',
        onclick: () => open(String(app.feed.overview?.seqCommitted ?? 'now')),
      },
      'Latest',
    ),
    form('Bookmark', select, () => select.value),
    form('Time', time, () => time.value),
    form('Seq', seq, () => seq.value),
  );
}

function drawSummary(element: HTMLElement, t: Timeline, app: App): void {
  const resolution = t.list
    ? 'single writes'
    : t.resolution === 'writes'
      ? 'counted per write'
      : 'counted per transaction';
  replace(
    element,
    h('span', {}, `${isoFromUs(t.fromUs)} → ${isoFromUs(t.toUs)}`),
    h(
      'span',
      { class: 'muted' },
      ` (${formatDuration(t.toUs - t.fromUs)}, buckets of ${formatDuration(t.bucketUs)})`,
    ),
    ' ',
    h('span', { class: 'badge', 'data-testid': 'resolution' }, resolution),
    t.exact ? null : h('span', { class: 'badge warn' }, 'approximate'),
    ' ',
    h(
      'span',
      { 'data-testid': 'window-writes' },
      `${formatCount(Math.round(t.writesTotal))} ${Math.round(t.writesTotal) === 1 ? 'write' : 'writes'}, ${formatBytes(t.bytes.reduce((a, b) => a + b, 0))} in this window`,
    ),
    t.seqFirst !== null && t.seqLast !== null
      ? h(
          'a',
          {
            class: 'button small',
            href: app.href('blockmap', { from: t.seqFirst - 1, to: t.seqLast }),
            'data-testid': 'window-blockmap',
          },
          'Block map of this window',
        )
      : null,
  );
}

/**
 * The writes of the window, a page at a time: seqs are gap-free, so page k starts at
 * seqFirst + k * rows.
 */
function drawWrites(element: HTMLElement, t: Timeline, app: App, signal: AbortSignal): void {
  if (t.seqFirst === null || t.seqLast === null) {
    replace(
      element,
      h('h2', {}, 'Writes'),
      emptyState('No writes in this window', 'Zoom out or pan.'),
    );
    return;
  }
  const first = t.seqFirst;
  const last = t.seqLast;
  const pages = Math.ceil((last - first + 1) / PAGE_ROWS);
  const rows = h('div', { 'data-testid': 'writes' });
  const label = h('span', { 'data-testid': 'page' });
  const jump = h('input', {
    type: 'number',
    name: 'goto',
    min: first,
    max: last,
    placeholder: 'seq',
  });
  let page = 0;
  const show = async (target: number): Promise<void> => {
    page = Math.min(Math.max(0, target), pages - 1);
    const from = first + page * PAGE_ROWS;
    const to = Math.min(last, from + PAGE_ROWS - 1);
    label.textContent = `page ${page + 1} of ${formatCount(pages)} · seq ${from}–${to}`;
    try {
      const { items } = await getLines<LogEntry>(
        `/api/log${query({ from, to, limit: PAGE_ROWS })}`,
      );
      if (signal.aborted) return;
      replace(
        rows,
        table(
          ['seq', 'time', 'volume', 'kind', 'offset', 'length', ''],
          items.map((e) => [
            String(e.seq),
            e.time,
            e.volume,
            kindOf(e),
            String(e.offset),
            formatBytes(e.length),
            e.resync
              ? h(
                  'span',
                  { class: 'muted', title: 'points inside a resync are not restorable' },
                  'resync',
                )
              : h(
                  'button',
                  { type: 'button', onclick: () => app.navigate('point', { at: e.seq }) },
                  `Open seq ${e.seq}`,
                ),
          ]),
          { class: 'writes' },
        ),
      );
    } catch (error) {
      rethrowIfBug(error);
      replace(rows, errorBox(error, 'Loading the writes'));
    }
  };
  const nav = (text: string, target: () => number): HTMLButtonElement =>
    h('button', { type: 'button', onclick: () => void show(target()) }, text);
  replace(
    element,
    h(
      'h2',
      {},
      `Writes ${formatCount(first)}–${formatCount(last)} (${formatCount(last - first + 1)})`,
    ),
    h(
      'div',
      { class: 'toolbar', role: 'toolbar', 'aria-label': 'pages of writes' },
      nav('First', () => 0),
      nav('Previous', () => page - 1),
      label,
      nav('Next', () => page + 1),
      nav('Last', () => pages - 1),
      h(
        'form',
        {
          class: 'pick',
          onsubmit: (event: Event) => {
            event.preventDefault();
            void show(Math.floor((Number(jump.value) - first) / PAGE_ROWS));
          },
        },
        field('Go to seq', jump),
        h('button', { type: 'submit' }, 'Go'),
      ),
    ),
    rows,
  );
  void show(0);
}
