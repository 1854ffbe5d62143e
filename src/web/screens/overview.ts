// Overview: the volume set and each volume, the agent's connection and mode, captured and
// committed seq, lag in writes and seconds, spool and journal bytes, open snapshots and clones,
// and running tasks (restores, image exports). Live: redrawn from each overview event.
import { rethrowIfBug } from '../bugs.js';
import { getJson } from '../api.js';
import {
  emptyState,
  errorBox,
  formatBytes,
  formatCount,
  h,
  loading,
  progress,
  replace,
  table,
} from '../dom.js';
import type { Screen, ScreenContext } from '../screen.js';
import type { Overview } from '../types.js';

export const overview: Screen = {
  path: 'overview',
  title: 'Overview',
  nav: { key: 'o' },
  async render(context) {
    const { root, signal, app } = context;
    const body = h('div', {}, loading('the overview'));
    replace(root, h('h1', {}, 'Overview'), body);
    // One call first (it asks for the token when the API needs one), then the live feed.
    try {
      draw(context, body, app.feed.overview ?? (await getJson<Overview>('/api/overview')));
    } catch (error) {
      rethrowIfBug(error);
      replace(body, errorBox(error, 'Loading the overview'));
    }
    app.feed.onOverview((value) => draw(context, body, value), signal);
  },
};

function draw(context: ScreenContext, body: HTMLElement, o: Overview): void {
  const { app } = context;
  const mode = o.resyncing && o.mode === 'logging' ? 'resyncing' : o.mode;
  const stat = (label: string, value: string | number, id: string, note?: string): HTMLElement =>
    h(
      'div',
      { class: 'stat' },
      h('div', { class: 'stat-label' }, label),
      h('div', { class: 'stat-value', 'data-testid': id }, String(value)),
      note ? h('div', { class: 'stat-note' }, note) : null,
    );
  const lagClass = o.lagSeconds > 60 ? 'bad' : o.lagSeconds > 5 ? 'warn' : 'good';
  replace(
    body,
    h(
      'section',
      { class: 'summary', 'aria-label': 'volume set' },
      h(
        'div',
        { class: 'set' },
        h('h2', {}, `Volume set ${o.volumeSet.name ?? '—'}`),
        h('div', { class: 'muted' }, o.volumeSet.id ?? 'no agent has connected yet'),
        h(
          'div',
          { class: 'badges' },
          h(
            'span',
            { class: `badge ${o.agentConnected ? 'good' : 'bad'}`, 'data-testid': 'agent' },
            o.agentConnected ? 'agent connected' : 'agent not connected',
          ),
          h('span', { class: `badge mode-${mode}`, 'data-testid': 'mode' }, mode),
        ),
        o.failure ? h('div', { class: 'error', role: 'alert' }, o.failure) : null,
        o.offline
          ? h(
              'div',
              { class: 'warning', role: 'status' },
              `Offline for restore #${o.offline.restore}: ${o.offline.volumes.join(', ')}`,
            )
          : null,
      ),
      h(
        'div',
        { class: 'stats' },
        stat('captured seq', formatCount(o.seqCaptured), 'seq-captured'),
        stat(
          'committed seq',
          formatCount(o.seqCommitted),
          'seq-committed',
          o.lastCommittedTime ?? 'nothing committed yet',
        ),
        h(
          'div',
          { class: `stat ${lagClass}` },
          h('div', { class: 'stat-label' }, 'lag (RPO)'),
          h(
            'div',
            { class: 'stat-value', 'data-testid': 'lag' },
            `${formatCount(o.lagWrites)} writes`,
          ),
          h(
            'div',
            { class: 'stat-note', 'data-testid': 'lag-seconds' },
            `${o.lagSeconds.toFixed(3)} s`,
          ),
        ),
        stat(
          'spool',
          formatBytes(o.spoolBytes),
          'spool',
          `${o.sealedPending} sealed segments waiting`,
        ),
        stat(
          'journal',
          formatBytes(o.journalBytes),
          'journal',
          `${formatCount(o.transactions)} transactions`,
        ),
        stat('bookmarks', o.bookmarks, 'bookmarks'),
      ),
    ),
    volumes(context, o),
    h('h2', {}, 'Snapshots and clones'),
    o.views.length === 0
      ? emptyState('No snapshots or clones', 'Pick a point on the timeline to open one.')
      : table(
          ['name', 'kind', 'seq', 'exports', ''],
          o.views.map((v) => [
            h('a', { href: app.href('view', { name: v.name }) }, v.name),
            v.kind,
            formatCount(v.seq),
            v.exports.join(' '),
            h('a', { href: app.href('view', { name: v.name }) }, 'open'),
          ]),
          { 'data-testid': 'views' },
        ),
    h('h2', {}, 'Tasks'),
    tasks(context, o),
  );
}

function volumes(context: ScreenContext, o: Overview): HTMLElement {
  const { app } = context;
  if (o.volumes.length === 0)
    return emptyState(
      'No volumes yet',
      'The manager learns the volume set when an agent connects for the first time.',
    );
  return h(
    'section',
    { 'aria-label': 'volumes' },
    h('h2', {}, 'Volumes'),
    o.seqCommitted === 0
      ? emptyState('No writes yet', 'Every write a client makes to a volume will show up here.')
      : null,
    table(
      ['volume', 'size', 'state', 'writes captured', 'bytes captured', ''],
      o.volumes.map((v) => [
        v.name,
        formatBytes(v.sizeBytes),
        v.offline ? h('span', { class: 'badge bad' }, 'offline (restore)') : 'online',
        v.writesCaptured === null ? '—' : formatCount(v.writesCaptured),
        v.bytesCaptured === null ? '—' : formatBytes(v.bytesCaptured),
        h(
          'span',
          { class: 'links' },
          h('a', { href: app.href('timeline') }, 'timeline'),
          h('a', { href: app.href('blockmap', { volume: v.name }) }, 'block map'),
          h('a', { href: app.href('restore', { volumes: v.name }) }, 'restore'),
        ),
      ]),
      { 'data-testid': 'volumes' },
    ),
  );
}

function tasks(context: ScreenContext, o: Overview): HTMLElement {
  const { app } = context;
  if (o.restores.length === 0 && o.exports.length === 0)
    return emptyState(
      'No restores or exports',
      'Restores and image exports show their progress here.',
    );
  return h(
    'div',
    { 'data-testid': 'tasks' },
    ...o.restores.map((r) =>
      h(
        'div',
        { class: `task ${r.state}` },
        h(
          'div',
          {},
          h('a', { href: app.href('restore', { id: r.id }) }, `restore #${r.id}`),
          ` ${r.state}: ${r.volumes.join(', ')} to ${r.source}`,
        ),
        r.state === 'running' ? progress(r.bytesDone, r.bytesTotal, `restore #${r.id}`) : null,
        r.message ? h('div', { class: 'muted' }, r.message) : null,
      ),
    ),
    ...o.exports.map((e) =>
      h(
        'div',
        { class: `task ${e.state}` },
        h('div', {}, `export #${e.id} ${e.state}: ${e.volume} at seq ${e.seq} to ${e.file}`),
        e.state === 'running' ? progress(e.bytesDone, e.bytesTotal, `export #${e.id}`) : null,
        e.sha256 ? h('div', { class: 'muted' }, `sha256 ${e.sha256}`) : null,
        e.message ? h('div', { class: 'muted' }, e.message) : null,
      ),
    ),
  );
}
