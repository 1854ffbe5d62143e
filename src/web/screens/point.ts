// A picked point: the seq a POINT (seq, time, @bookmark) resolves to and the writes around it; from
// here a snapshot or clone is opened, the point bookmarked, a volume exported, production restored.
import { rethrowIfBug } from '../bugs.js';
import { getJson, getLines, postJson, query } from '../api.js';
import { errorBox, field, formatBytes, h, kindOf, loading, replace, table } from '../dom.js';
import type { App, Screen } from '../screen.js';
import type { LogEntry, ResolvedPoint, ViewInfo } from '../types.js';
import { bookmarkForm, exportForm } from '../forms.js';

/** Writes shown on each side of the point. */
const AROUND_WRITES = 5;

export const point: Screen = {
  path: 'point',
  title: 'Point',
  async render({ root, params, app }) {
    const at = params.get('at') ?? '';
    replace(root, h('h1', {}, `Point ${at}`), loading('the point'));
    let resolved: ResolvedPoint;
    try {
      resolved = await getJson<ResolvedPoint>(`/api/points/resolve${query({ at })}`);
    } catch (error) {
      rethrowIfBug(error);
      replace(
        root,
        h('h1', {}, `Point ${at}`),
        errorBox(error, `Resolving ${at || 'an empty point'}`),
        h('p', {}, h('a', { href: app.href('timeline') }, 'Back to the timeline')),
      );
      return;
    }
    const seq = resolved.seq;
    const around = h(
      'section',
      { 'aria-label': 'writes around the point' },
      loading('the writes around it'),
    );
    replace(
      root,
      h('h1', {}, `Seq ${seq}`),
      h(
        'p',
        { class: 'lead', 'data-testid': 'point' },
        h('strong', { 'data-testid': 'point-seq' }, `seq ${seq}`),
        resolved.time ? ` · captured ${resolved.time}` : ' · before the first write',
        at !== String(seq) ? h('span', { class: 'muted' }, ` (from ${at})`) : null,
      ),
      h(
        'p',
        { class: 'muted' },
        `The volume set as it was just after write ${seq}: every write up to and including seq ${seq}, none after.`,
      ),
      h(
        'div',
        { class: 'cards' },
        openForm(app, seq),
        bookmarkForm(() => seq),
        h(
          'section',
          { class: 'card' },
          h('h2', {}, 'Restore production'),
          h('p', {}, 'Write back what changed after this point; shows the dry run first.'),
          h(
            'a',
            { class: 'button', href: app.href('restore', { at: seq }) },
            `Restore to seq ${seq}…`,
          ),
        ),
        h(
          'section',
          { class: 'card' },
          h('h2', {}, 'What changed since'),
          h(
            'a',
            { class: 'button', href: app.href('blockmap', { from: seq }) },
            'Block map from here',
          ),
        ),
        exportForm(app, () => String(seq)),
      ),
      around,
    );
    try {
      const from = Math.max(1, seq - AROUND_WRITES + 1);
      const { items } = await getLines<LogEntry>(
        `/api/log${query({ from, limit: 2 * AROUND_WRITES })}`,
      );
      replace(
        around,
        h('h2', {}, 'Writes around it'),
        table(
          ['', 'seq', 'time', 'volume', 'kind', 'offset', 'length'],
          items.map((e) => [
            e.seq <= seq ? 'included' : 'after',
            String(e.seq),
            e.time,
            e.volume,
            kindOf(e),
            String(e.offset),
            formatBytes(e.length),
          ]),
        ),
      );
    } catch (error) {
      rethrowIfBug(error);
      replace(around, errorBox(error, 'Loading the writes around the point'));
    }
  },
};

function openForm(app: App, seq: number): HTMLElement {
  const name = h('input', {
    type: 'text',
    name: 'name',
    value: `at-${seq}`,
    required: true,
    pattern: '[A-Za-z0-9][A-Za-z0-9._\\-]{0,63}',
  });
  const kind = h(
    'select',
    { name: 'kind' },
    h('option', { value: 'snapshot' }, 'snapshot (read-only)'),
    h('option', { value: 'clone' }, 'clone (writable, private overlay)'),
  );
  const result = h('div', { 'aria-live': 'polite' });
  return h(
    'section',
    { class: 'card' },
    h('h2', {}, 'Open it'),
    h(
      'form',
      {
        onsubmit: async (event: Event) => {
          event.preventDefault();
          replace(result, loading('the view'));
          try {
            const view = await postJson<ViewInfo>('/api/views', {
              name: name.value,
              kind: kind.value,
              at: String(seq),
            });
            app.navigate('view', { name: view.name });
          } catch (error) {
            rethrowIfBug(error);
            replace(result, errorBox(error, `Opening ${name.value}`));
          }
        },
      },
      field('Name', name),
      field('As', kind),
      h('button', { type: 'submit', class: 'primary' }, 'Open snapshot or clone'),
    ),
    result,
  );
}
