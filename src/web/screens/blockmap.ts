// Block map: which regions of a volume the writes between two points changed (from the log), as
// a grid of equal cells; a cell (clicked, or chosen with the arrow keys and Enter) shows the
// history of its range, newest first, a page at a time.
import { rethrowIfBug } from '../bugs.js';
import { call, getJson, query } from '../api.js';
import {
  emptyState,
  errorBox,
  field,
  formatBytes,
  formatCount,
  h,
  kindOf,
  loading,
  replace,
  table,
} from '../dom.js';
import type { App, Screen } from '../screen.js';
import type { BlockMap, LogEntry, Overview } from '../types.js';

/** Cells of the grid, and per row. */
const CELLS = 1024;
const CELLS_PER_ROW = 64;
/** Writes of a range's history per page. */
const HISTORY_PAGE = 50;

export const blockMap: Screen = {
  path: 'blockmap',
  title: 'Block map',
  nav: { key: 'b' },
  async render({ root, params, signal, app }) {
    replace(root, h('h1', {}, 'Block map'), loading('the volumes'));
    let overview: Overview;
    try {
      overview = await getJson<Overview>('/api/overview');
    } catch (error) {
      rethrowIfBug(error);
      replace(root, h('h1', {}, 'Block map'), errorBox(error, 'Loading the volumes'));
      return;
    }
    if (overview.volumes.length === 0) {
      replace(
        root,
        h('h1', {}, 'Block map'),
        emptyState('No volumes yet', 'An agent has not connected yet.'),
      );
      return;
    }
    const volumeName = params.get('volume') ?? overview.volumes[0]?.name ?? '';
    const from = params.get('from') ?? '0';
    const to = params.get('to') ?? String(overview.seqCommitted);
    const volume = h(
      'select',
      { name: 'volume' },
      ...overview.volumes.map((v) =>
        h('option', { value: v.name, selected: v.name === volumeName }, v.name),
      ),
    );
    const fromInput = h('input', {
      type: 'text',
      name: 'from',
      value: from,
      'aria-label': 'after point',
    });
    const toInput = h('input', {
      type: 'text',
      name: 'to',
      value: to,
      'aria-label': 'up to point',
    });
    const grid = h('div', { 'aria-live': 'polite' }, loading('the block map'));
    const detail = h('section', { 'aria-label': 'history of the range', 'aria-live': 'polite' });
    replace(
      root,
      h('h1', {}, 'Block map'),
      h(
        'form',
        {
          class: 'toolbar',
          onsubmit: (event: Event) => {
            event.preventDefault();
            app.navigate('blockmap', {
              volume: volume.value,
              from: fromInput.value,
              to: toInput.value,
            });
          },
        },
        field('Volume', volume),
        field('After', fromInput, 'seq, time or @bookmark'),
        field('Up to', toInput),
        h('button', { type: 'submit', class: 'primary' }, 'Show'),
      ),
      grid,
      detail,
    );
    let map: BlockMap;
    try {
      map = await getJson<BlockMap>(
        `/api/volumes/${encodeURIComponent(volumeName)}/blockmap${query({ from, to, cells: CELLS })}`,
      );
    } catch (error) {
      rethrowIfBug(error);
      replace(grid, errorBox(error, 'Loading the block map'));
      return;
    }
    if (signal.aborted) return;
    drawGrid(grid, detail, map, app);
  },
};

function drawGrid(element: HTMLElement, detail: HTMLElement, map: BlockMap, app: App): void {
  const busiest = Math.max(1, ...map.writes);
  const cells = map.writes.map((writes, i) => {
    const offset = i * map.cellBytes;
    const length = Math.min(map.cellBytes, map.sizeBytes - offset);
    // Darker for more writes (log scale), blank for none.
    const level = writes === 0 ? 0 : 1 + Math.round((Math.log(writes) / Math.log(busiest + 1)) * 4);
    return h('button', {
      type: 'button',
      class: `cell level-${Math.min(level, 5)}`,
      role: 'gridcell',
      tabindex: i === 0 ? 0 : -1,
      'data-offset': offset,
      'data-writes': writes,
      'aria-label': `${formatBytes(offset)} +${formatBytes(length)}: ${writes} writes`,
      title: `${offset}:${length} — ${writes} writes, ${formatBytes(map.bytes[i] ?? 0)}`,
      onclick: (event: Event) => {
        for (const cell of cells) cell.classList.remove('selected');
        (event.currentTarget as HTMLElement).classList.add('selected');
        void showHistory(detail, map, offset, length, app);
      },
    });
  });
  const grid = h(
    'div',
    {
      class: 'grid',
      role: 'grid',
      'aria-label': `block map of ${map.volume}`,
      'data-testid': 'grid',
    },
    ...cells,
  );
  // Roving focus: one tab stop for the grid, the arrow keys move inside it.
  grid.addEventListener('keydown', (event) => {
    const index = cells.indexOf(document.activeElement as HTMLButtonElement);
    if (index < 0) return;
    const moves: Record<string, number> = {
      ArrowLeft: -1,
      ArrowRight: 1,
      ArrowUp: -CELLS_PER_ROW,
      ArrowDown: CELLS_PER_ROW,
    };
    const move = moves[event.key];
    if (move === undefined) return;
    event.preventDefault();
    event.stopPropagation();
    const next = cells[Math.min(cells.length - 1, Math.max(0, index + move))];
    if (!next) return;
    for (const cell of cells) cell.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
  replace(
    element,
    h(
      'p',
      { 'data-testid': 'blockmap-summary' },
      `${map.volume}, writes after seq ${map.fromSeq} up to seq ${map.toSeq}: `,
      `${formatCount(map.writesTotal)} writes changed ${formatBytes(map.changedBytes)} in ${formatCount(map.ranges)} ranges. `,
      h('span', { class: 'muted' }, `Each cell is ${formatBytes(map.cellBytes)}.`),
    ),
    map.writesTotal === 0 ? emptyState('Nothing changed in this window') : null,
    grid,
  );
}

async function showHistory(
  element: HTMLElement,
  map: BlockMap,
  offset: number,
  length: number,
  app: App,
  before?: number,
): Promise<void> {
  replace(element, loading('the history of the range'));
  try {
    const response = await fetchHistory(map.volume, offset, length, before);
    const rows = response.entries;
    replace(
      element,
      h('h2', {}, `History of ${map.volume} ${offset}:${length}`),
      rows.length === 0
        ? emptyState('No write ever touched this range')
        : table(
            ['seq', 'time', 'kind', 'offset', 'length', ''],
            rows.map((e) => [
              String(e.seq),
              e.time,
              kindOf(e),
              String(e.offset),
              formatBytes(e.length),
              h(
                'span',
                { class: 'links' },
                h(
                  'a',
                  { href: app.href('point', { at: e.seq - 1 }) },
                  `before it (seq ${e.seq - 1})`,
                ),
                h('a', { href: app.href('point', { at: e.seq }) }, `after it`),
              ),
            ]),
            { 'data-testid': 'range-history' },
          ),
      response.next !== null
        ? h(
            'button',
            {
              type: 'button',
              onclick: () =>
                void showHistory(element, map, offset, length, app, response.next ?? undefined),
            },
            'Older writes',
          )
        : null,
    );
  } catch (error) {
    rethrowIfBug(error);
    replace(element, errorBox(error, 'Loading the history of the range'));
  }
}

async function fetchHistory(
  volume: string,
  offset: number,
  length: number,
  before: number | undefined,
): Promise<{ entries: LogEntry[]; next: number | null }> {
  const response = await call(
    'GET',
    `/api/volumes/${encodeURIComponent(volume)}/history${query({ range: `${offset}:${length}`, limit: HISTORY_PAGE, before })}`,
  );
  const next = response.headers.get('rewind-next-before-seq');
  return {
    entries: (await response.json()) as LogEntry[],
    next: next === null ? null : Number(next),
  };
}
