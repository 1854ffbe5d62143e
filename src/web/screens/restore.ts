// Restore production from the page: whole volumes or byte ranges of one, to a point of the history
// or from a clone. The dry run's figures come first; then a confirmation that names the volumes
// going offline; then progress while it runs, and the point that undoes it once it is done.
import { rethrowIfBug } from '../bugs.js';
import { getJson, postJson } from '../api.js';
import {
  emptyState,
  errorBox,
  field,
  formatBytes,
  formatCount,
  h,
  loading,
  progress,
  replace,
  table,
} from '../dom.js';
import type { App, Screen } from '../screen.js';
import type { Overview, RestorePlan, RestoreStatus, ViewInfo } from '../types.js';

/** How often a running restore is asked for its progress, and for how long at most (a day). */
const POLL_MS = 300;
const POLLS_MAX = (24 * 3600 * 1000) / POLL_MS;
/** Restores listed under the form, newest first. */
const HISTORY_SHOWN = 20;

export const restore: Screen = {
  path: 'restore',
  title: 'Restore',
  nav: { key: 'r' },
  async render({ root, params, signal, app }) {
    replace(root, h('h1', {}, 'Restore production'), loading('the volumes'));
    let overview: Overview;
    let views: ViewInfo[];
    let restores: RestoreStatus[];
    try {
      [overview, views, restores] = await Promise.all([
        getJson<Overview>('/api/overview'),
        getJson<ViewInfo[]>('/api/views'),
        getJson<RestoreStatus[]>('/api/restores'),
      ]);
    } catch (error) {
      rethrowIfBug(error);
      replace(root, h('h1', {}, 'Restore production'), errorBox(error, 'Loading the volumes'));
      return;
    }
    const status = h('section', { 'aria-label': 'restore progress', 'aria-live': 'polite' });
    const shownId = params.get('id');
    replace(
      root,
      h('h1', {}, 'Restore production'),
      overview.volumes.length === 0
        ? emptyState('No volumes yet', 'An agent has not connected to this manager yet.')
        : form(app, overview, views, params, status, signal),
      status,
      h('h2', {}, 'Restores'),
      restores.length === 0
        ? emptyState('No restores yet')
        : table(
            ['#', 'state', 'volumes', 'to', 'written', 'before (undo point)', 'message'],
            [...restores]
              .reverse()
              .slice(0, HISTORY_SHOWN)
              .map((r) => [
                h('a', { href: app.href('restore', { id: r.id }) }, `#${r.id}`),
                r.state,
                r.volumes.join(', '),
                r.source,
                `${formatBytes(r.bytesDone)} of ${formatBytes(r.bytesTotal)}`,
                r.seqBefore === null ? '—' : String(r.seqBefore),
                r.message ?? '',
              ]),
            { 'data-testid': 'restores' },
          ),
    );
    if (shownId !== null) void follow(app, status, Number(shownId), signal);
  },
};

function form(
  app: App,
  overview: Overview,
  views: ViewInfo[],
  params: URLSearchParams,
  status: HTMLElement,
  signal: AbortSignal,
): HTMLElement {
  const chosen = new Set((params.get('volumes') ?? '').split(',').filter((v) => v));
  if (chosen.size === 0) for (const v of overview.volumes) chosen.add(v.name);
  const boxes = overview.volumes.map((v) =>
    h('input', { type: 'checkbox', name: 'volume', value: v.name, checked: chosen.has(v.name) }),
  );
  const clones = views.filter((v) => v.kind === 'clone');
  const cloneParam = params.get('clone');
  const sourceHistory = h('input', {
    type: 'radio',
    name: 'source',
    value: 'history',
    checked: cloneParam === null,
  });
  const sourceClone = h('input', {
    type: 'radio',
    name: 'source',
    value: 'clone',
    checked: cloneParam !== null,
    disabled: clones.length === 0,
  });
  const at = h('input', {
    type: 'text',
    name: 'at',
    value: params.get('at') ?? '',
    placeholder: 'seq, time or @bookmark',
  });
  const clone = h(
    'select',
    { name: 'clone' },
    ...clones.map((c) =>
      h('option', { value: c.name, selected: c.name === cloneParam }, `${c.name} (seq ${c.seq})`),
    ),
  );
  const ranges = h('textarea', {
    name: 'ranges',
    rows: 3,
    placeholder: 'OFFSET:LENGTH, one per line (e.g. 1M:64K); empty: the whole volume',
  });
  const planBox = h('div', { 'aria-live': 'polite', 'data-testid': 'plan' });
  const restoreButton = h(
    'button',
    { type: 'button', class: 'danger', disabled: true },
    'Restore…',
  );
  let plan: RestorePlan | undefined;
  const spec = (): Record<string, unknown> => {
    const volumes = boxes.filter((b) => b.checked).map((b) => b.value);
    const list = ranges.value
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line);
    return {
      volumes,
      ...(sourceClone.checked
        ? { fromClone: clone.value }
        : at.value.trim()
          ? { at: at.value.trim() }
          : {}),
      ...(list.length > 0 ? { ranges: list } : {}),
    };
  };
  const invalidate = (): void => {
    plan = undefined;
    restoreButton.disabled = true;
    replace(
      planBox,
      h('p', { class: 'muted' }, 'Run the dry run to see what the restore would write.'),
    );
  };
  invalidate();
  const dryRun = async (): Promise<void> => {
    invalidate();
    replace(planBox, loading('the dry run'));
    try {
      plan = await postJson<RestorePlan>('/api/restores', { ...spec(), dryRun: true });
    } catch (error) {
      rethrowIfBug(error);
      replace(planBox, errorBox(error, 'The dry run'));
      return;
    }
    replace(
      planBox,
      h(
        'p',
        { 'data-testid': 'plan-total' },
        `Restoring to ${plan.source} would write ${formatBytes(plan.bytes)} (${formatCount(plan.bytes)} bytes), as of committed seq ${plan.asOfSeq}.`,
      ),
      table(
        ['volume', 'ranges', 'bytes', 'NBD clients connected'],
        plan.volumes.map((v) => [
          v.volume,
          formatCount(v.ranges.length),
          `${formatBytes(v.bytes)} (${formatCount(v.bytes)})`,
          v.clients === null ? 'unknown' : formatCount(v.clients),
        ]),
      ),
    );
    restoreButton.disabled = false;
  };
  restoreButton.addEventListener('click', () => {
    if (!plan) return;
    const planned = plan;
    confirmRestore(spec(), planned, async (body) => {
      try {
        const started = await postJson<RestoreStatus>('/api/restores', body);
        invalidate();
        history.replaceState(null, '', app.href('restore', { id: started.id }));
        await follow(app, status, started.id, signal);
      } catch (error) {
        rethrowIfBug(error);
        replace(status, errorBox(error, 'Starting the restore'));
      }
    });
  });
  const element = h(
    'form',
    {
      class: 'card wide',
      onsubmit: (event: Event) => {
        event.preventDefault();
        void dryRun();
      },
    },
    h(
      'fieldset',
      {},
      h('legend', {}, 'Volumes'),
      ...boxes.map((box) => h('label', { class: 'inline' }, box, ` ${box.value}`)),
    ),
    h(
      'fieldset',
      {},
      h('legend', {}, 'Restore to'),
      h('label', { class: 'inline' }, sourceHistory, ' the history at '),
      at,
      h('br'),
      h('label', { class: 'inline' }, sourceClone, " a clone's current content "),
      clones.length > 0 ? clone : h('span', { class: 'muted' }, '(no clones open)'),
    ),
    field('Only these byte ranges (one volume)', ranges),
    h(
      'div',
      { class: 'toolbar' },
      h('button', { type: 'submit', class: 'primary' }, 'Dry run'),
      restoreButton,
    ),
    planBox,
  );
  element.addEventListener('input', invalidate);
  element.addEventListener('change', invalidate);
  return element;
}

/** The explicit confirmation: which volumes go offline, what is written, how to undo it. */
function confirmRestore(
  body: Record<string, unknown>,
  plan: RestorePlan,
  start: (body: Record<string, unknown>) => Promise<void>,
): void {
  const volumes = plan.volumes.map((v) => v.volume);
  const clients = plan.volumes.reduce((sum, v) => sum + (v.clients ?? 0), 0);
  const stopped = h('input', { type: 'checkbox', name: 'stopped', required: true });
  // The manager refuses a restore under connected clients unless told to disconnect them.
  const force = h('input', { type: 'checkbox', name: 'force', 'data-testid': 'force' });
  const go = h(
    'button',
    { type: 'submit', value: 'restore', class: 'danger', disabled: true },
    `Take ${volumes.join(', ')} offline and restore`,
  );
  const ready = (): boolean => stopped.checked && (clients === 0 || force.checked);
  stopped.addEventListener('change', () => (go.disabled = !ready()));
  force.addEventListener('change', () => (go.disabled = !ready()));
  const dialog = h(
    'dialog',
    { class: 'confirm', 'data-testid': 'confirm', 'aria-label': 'confirm the restore' },
    h('h2', {}, `Restore ${volumes.join(', ')}?`),
    h(
      'p',
      { class: 'warning' },
      h(
        'strong',
        {},
        `${volumes.join(', ')} ${volumes.length === 1 ? 'goes' : 'go'} offline now. `,
      ),
      'Their NBD clients are disconnected and new connections are refused until the restore ends.',
    ),
    h(
      'p',
      {},
      `${formatBytes(plan.bytes)} will be written back (${plan.source}). The restore is logged like any write, so it can be undone afterwards.`,
    ),
    h(
      'form',
      { method: 'dialog' },
      h(
        'label',
        { class: 'inline' },
        stopped,
        ` I have stopped the applications using ${volumes.join(', ')}`,
      ),
      clients > 0
        ? h(
            'label',
            { class: 'inline warning' },
            force,
            ` ${formatCount(clients)} NBD client${clients === 1 ? ' is' : 's are'} still connected (a mounted filesystem, a VM): disconnect ${clients === 1 ? 'it' : 'them'} and restore anyway`,
          )
        : '',
      h(
        'div',
        { class: 'toolbar' },
        go,
        h('button', { type: 'submit', value: 'cancel', formnovalidate: true }, 'Cancel'),
      ),
    ),
  );
  dialog.addEventListener('close', () => {
    const confirmed = dialog.returnValue === 'restore' && ready();
    dialog.remove();
    if (confirmed) void start(clients > 0 ? { ...body, force: true } : body);
  });
  document.body.append(dialog);
  dialog.showModal();
}

/** Shows restore `id` until it settles: progress, then the result and its undo point. */
async function follow(
  app: App,
  element: HTMLElement,
  id: number,
  signal: AbortSignal,
): Promise<void> {
  for (let polls = 0; polls < POLLS_MAX && !signal.aborted; polls++) {
    let r: RestoreStatus;
    try {
      r = await getJson<RestoreStatus>(`/api/restores/${id}`);
    } catch (error) {
      rethrowIfBug(error);
      replace(element, errorBox(error, `Following restore #${id}`));
      return;
    }
    if (r.state === 'running') {
      replace(
        element,
        h('h2', {}, `Restore #${r.id} running`),
        h('p', {}, `${r.volumes.join(', ')} offline, restoring to ${r.source}`),
        progress(r.bytesDone, r.bytesTotal, `restore #${r.id}`),
        r.message ? h('p', { class: 'muted' }, r.message) : null,
      );
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      continue;
    }
    replace(element, settled(app, r));
    return;
  }
}

function settled(app: App, r: RestoreStatus): HTMLElement {
  if (r.state === 'failed')
    return h(
      'div',
      { class: 'error', role: 'alert', 'data-testid': 'restore-result' },
      h('strong', {}, `Restore #${r.id} failed: `),
      r.message ?? '',
      h(
        'div',
        { class: 'toolbar' },
        h(
          'button',
          {
            type: 'button',
            onclick: async () => {
              try {
                await postJson(`/api/restores/${r.id}/abandon`, {});
                app.navigate('restore', { id: r.id });
              } catch (error) {
                rethrowIfBug(error);
                alert(error instanceof Error ? error.message : String(error));
              }
            },
          },
          'Abandon: bring the volumes back online as they are',
        ),
      ),
    );
  return h(
    'div',
    { class: 'ok', role: 'status', 'data-testid': 'restore-result' },
    h('h2', {}, `Restore #${r.id} done`),
    h(
      'p',
      {},
      `${r.volumes.join(', ')} restored to ${r.source}; ${formatBytes(r.bytesDone)} written; back online.`,
    ),
    r.seqBefore !== null
      ? h(
          'p',
          {},
          'Before the restore: ',
          h('strong', { 'data-testid': 'undo-seq' }, `seq ${r.seqBefore}`),
          '. ',
          h(
            'a',
            {
              class: 'button',
              href: app.href('restore', { at: r.seqBefore, volumes: r.volumes.join(',') }),
            },
            'Undo this restore…',
          ),
        )
      : null,
  );
}
