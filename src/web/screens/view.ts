// An open snapshot or clone: its NBD URIs with ready-to-paste nbdcopy, qemu-img and nbdfuse
// commands; stepping it by buttons or keys (one write, N, to a point) showing the writes crossed;
// bookmarking its point, exporting a volume, restoring production from it, removing it.
import { rethrowIfBug } from '../bugs.js';
import { deleteJson, getJson, postJson } from '../api.js';
import {
  emptyState,
  errorBox,
  field,
  formatBytes,
  h,
  kindOf,
  loading,
  replace,
  table,
  typingInField,
} from '../dom.js';
import type { App, Screen } from '../screen.js';
import type { StepResult, ViewInfo } from '../types.js';
import { bookmarkForm, exportForm } from '../forms.js';

/** Writes crossed listed after a step (the count is always given). */
const CROSSED_SHOWN_MAX = 200;

export const view: Screen = {
  path: 'view',
  title: 'Snapshot or clone',
  async render({ root, params, signal, app }) {
    const name = params.get('name') ?? '';
    replace(root, h('h1', {}, name), loading(name));
    let views: ViewInfo[];
    try {
      views = await getJson<ViewInfo[]>('/api/views');
    } catch (error) {
      rethrowIfBug(error);
      replace(root, h('h1', {}, name), errorBox(error, 'Loading the snapshots and clones'));
      return;
    }
    const found = views.find((v) => v.name === name);
    if (!found) {
      replace(
        root,
        h('h1', {}, name),
        emptyState(`No snapshot or clone named "${name}"`, 'It may have been removed.'),
        h('p', {}, h('a', { href: app.href('timeline') }, 'Pick a point on the timeline')),
      );
      return;
    }
    const state = { seq: found.seq };
    const heading = h('h1', {}, `${found.kind} ${found.name}`);
    const position = h('p', { class: 'lead' });
    const crossed = h('section', { 'aria-label': 'writes crossed', 'aria-live': 'polite' });
    const drawPosition = (): void =>
      replace(
        position,
        'at ',
        h('strong', { 'data-testid': 'view-seq' }, `seq ${state.seq}`),
        h('span', { class: 'muted' }, ` (the volume set just after write ${state.seq})`),
      );
    drawPosition();
    const count = h('input', {
      type: 'number',
      name: 'n',
      min: 1,
      value: 10,
      'aria-label': 'N writes',
    });
    const to = h('input', {
      type: 'text',
      name: 'to',
      placeholder: 'seq, time or @bookmark',
      'aria-label': 'step to',
    });
    const discard = h('input', { type: 'checkbox', name: 'discard' });
    let busy = false;
    const step = async (how: { forward?: number; back?: number; to?: string }): Promise<void> => {
      if (busy) return;
      busy = true;
      replace(crossed, loading('the step'));
      try {
        const result = await postJson<StepResult>(`/api/views/${encodeURIComponent(name)}/step`, {
          ...how,
          discardWrites: discard.checked,
        });
        state.seq = result.to;
        drawPosition();
        drawCrossed(crossed, result);
      } catch (error) {
        rethrowIfBug(error);
        replace(crossed, errorBox(error, 'Stepping'));
      } finally {
        busy = false;
      }
    };
    const n = (): number => Math.max(1, Math.floor(Number(count.value) || 1));
    const button = (label: string, title: string, onclick: () => void): HTMLButtonElement =>
      h('button', { type: 'button', title, onclick }, label);
    replace(
      root,
      heading,
      position,
      h(
        'section',
        { class: 'card wide', 'aria-label': 'step' },
        h('h2', {}, 'Step through the history'),
        h(
          'div',
          { class: 'toolbar', role: 'toolbar', 'aria-label': 'step' },
          button('−N', 'Shift+←', () => void step({ back: n() })),
          button('−1', '←', () => void step({ back: 1 })),
          button('+1', '→', () => void step({ forward: 1 })),
          button('+N', 'Shift+→', () => void step({ forward: n() })),
          field('N', count),
          h(
            'form',
            {
              class: 'pick',
              onsubmit: (event: Event) => {
                event.preventDefault();
                if (to.value.trim()) void step({ to: to.value.trim() });
              },
            },
            field('To', to),
            h('button', { type: 'submit' }, 'Step to'),
          ),
          found.kind === 'clone'
            ? h('label', { class: 'inline' }, discard, " discard the clone's own writes to step")
            : null,
        ),
        h(
          'p',
          { class: 'muted' },
          'NBD clients read the new content on their next read; a mounted filesystem caches, so unmount, step and mount again.',
        ),
        crossed,
      ),
      uris(app, found),
      h(
        'div',
        { class: 'cards' },
        h(
          'section',
          { class: 'card' },
          h('h2', {}, 'Restore production'),
          h(
            'button',
            { type: 'button', onclick: () => app.navigate('restore', { at: state.seq }) },
            'Restore to this point…',
          ),
          found.kind === 'clone'
            ? h(
                'a',
                { class: 'button', href: app.href('restore', { clone: found.name }) },
                'Restore from this clone…',
              )
            : null,
        ),
        bookmarkForm(() => state.seq),
        exportForm(app, () => String(state.seq)),
        h(
          'section',
          { class: 'card' },
          h('h2', {}, 'Remove'),
          h(
            'button',
            {
              type: 'button',
              class: 'danger',
              onclick: async () => {
                if (!confirm(`Remove ${found.kind} ${name}? Its NBD clients are disconnected.`))
                  return;
                try {
                  await deleteJson(`/api/views/${encodeURIComponent(name)}`);
                  app.navigate('overview');
                } catch (error) {
                  rethrowIfBug(error);
                  replace(crossed, errorBox(error, `Removing ${name}`));
                }
              },
            },
            `Remove ${name}`,
          ),
        ),
      ),
    );
    document.addEventListener(
      'keydown',
      (event) => {
        if (event.ctrlKey || event.metaKey || event.altKey || typingInField(event)) return;
        if (document.querySelector('dialog[open]')) return;
        if (event.key === 'ArrowLeft' || event.key === 'ArrowRight') {
          event.preventDefault();
          const writes = event.shiftKey ? n() : 1;
          void step(event.key === 'ArrowLeft' ? { back: writes } : { forward: writes });
        }
      },
      { signal },
    );
  },
};

function drawCrossed(element: HTMLElement, result: StepResult): void {
  const back = result.to < result.from;
  const list = back ? [...result.crossed].reverse() : result.crossed;
  replace(
    element,
    h(
      'h3',
      { 'data-testid': 'crossed' },
      `seq ${result.from} → ${result.to}: ${result.crossed.length} writes ${back ? 'undone' : 'applied'}`,
    ),
    table(
      ['seq', 'time', 'volume', 'kind', 'offset', 'length'],
      list
        .slice(0, CROSSED_SHOWN_MAX)
        .map((e) => [
          String(e.seq),
          e.time,
          e.volume,
          kindOf(e),
          String(e.offset),
          formatBytes(e.length),
        ]),
    ),
    list.length > CROSSED_SHOWN_MAX
      ? h('p', { class: 'muted' }, `…and ${list.length - CROSSED_SHOWN_MAX} more`)
      : null,
  );
}

/** The view's NBD exports and the commands that read them. */
function uris(app: App, found: ViewInfo): HTMLElement {
  const nbd = app.info?.nbd;
  if (!nbd)
    return emptyState('No NBD address known', 'This process does not serve views over NBD.');
  // A listener on every address is reached at the host the browser used.
  const host = nbd.host === '0.0.0.0' || nbd.host === '::' ? location.hostname : nbd.host;
  const hostPart = host.includes(':') ? `[${host}]` : host;
  return h(
    'section',
    { class: 'card wide', 'aria-label': 'NBD exports' },
    h('h2', {}, 'Read it'),
    ...found.exports.map((name) => {
      const uri = `nbd://${hostPart}:${nbd.port}/${name}`;
      const file = name.replace('@', '-');
      const commands = [
        `nbdcopy ${uri} ${file}.img`,
        `qemu-img convert -f raw -O qcow2 ${uri} ${file}.qcow2`,
        `mkdir -p /mnt/${file} && nbdfuse /mnt/${file} ${uri} &`,
        `losetup -f --show /mnt/${file}/nbd    # then mount -o ro /dev/loopN /mnt/x`,
      ];
      return h(
        'div',
        { class: 'export' },
        h('h3', {}, h('code', { 'data-testid': 'nbd-uri' }, uri)),
        ...commands.map((command) =>
          h('div', { class: 'command' }, h('code', {}, command), copyButton(command)),
        ),
      );
    }),
  );
}

function copyButton(text: string): HTMLButtonElement {
  const button = h(
    'button',
    { type: 'button', class: 'small', 'aria-label': `copy ${text}` },
    'Copy',
  );
  button.addEventListener('click', () => {
    navigator.clipboard.writeText(text).then(
      () => (button.textContent = 'Copied'),
      () => (button.textContent = 'Select and copy'),
    );
  });
  return button;
}
