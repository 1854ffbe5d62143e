// Forms two screens share (a picked point, an open snapshot or clone): bookmark the point, and
// export one volume at it as a raw image on the manager's host, with its progress.
import { getJson, postJson } from './api.js';
import { rethrowIfBug } from './bugs.js';
import { errorBox, field, h, progress, replace } from './dom.js';
import type { App } from './screen.js';
import type { Bookmark, ExportJob } from './types.js';

/** How often a running export is asked for its progress, and for how long at most (a day). */
const EXPORT_POLL_MS = 300;
const EXPORT_POLLS_MAX = (24 * 3600 * 1000) / EXPORT_POLL_MS;

export function bookmarkForm(seq: () => number): HTMLElement {
  const name = h('input', {
    type: 'text',
    name: 'bookmark',
    required: true,
    placeholder: 'before-upgrade',
  });
  const result = h('div', { 'aria-live': 'polite' });
  return h(
    'section',
    { class: 'card' },
    h('h2', {}, 'Bookmark it'),
    h(
      'form',
      {
        onsubmit: async (event: Event) => {
          event.preventDefault();
          try {
            const bookmark = await postJson<Bookmark>('/api/bookmarks', {
              name: name.value,
              at: String(seq()),
            });
            replace(
              result,
              h('div', { class: 'ok', role: 'status' }, `@${bookmark.name} = seq ${bookmark.seq}`),
            );
          } catch (error) {
            rethrowIfBug(error);
            replace(result, errorBox(error, `Bookmarking seq ${seq()}`));
          }
        },
      },
      field('Name', name),
      h('button', { type: 'submit' }, 'Bookmark'),
    ),
    result,
  );
}

/** Writes a raw image of one volume at `at` to a file on the manager's host, with progress. */
export function exportForm(app: App, at: () => string): HTMLElement {
  const volumes = app.feed.overview?.volumes.map((v) => v.name) ?? [];
  const volume = h(
    'select',
    { name: 'volume' },
    ...volumes.map((v) => h('option', { value: v }, v)),
  );
  const file = h('input', {
    type: 'text',
    name: 'file',
    required: true,
    placeholder: 'db.img (in the export directory)',
  });
  const result = h('div', { 'aria-live': 'polite' });
  return h(
    'section',
    { class: 'card' },
    h('h2', {}, 'Export an image'),
    h(
      'form',
      {
        onsubmit: async (event: Event) => {
          event.preventDefault();
          try {
            let job = await postJson<ExportJob>('/api/exports', {
              volume: volume.value,
              at: at(),
              file: file.value,
            });
            for (let polls = 0; job.state === 'running' && polls < EXPORT_POLLS_MAX; polls++) {
              replace(result, progress(job.bytesDone, job.bytesTotal, `export #${job.id}`));
              await new Promise((resolve) => setTimeout(resolve, EXPORT_POLL_MS));
              job = await getJson<ExportJob>(`/api/exports/${job.id}`);
            }
            replace(
              result,
              job.state === 'done'
                ? h(
                    'div',
                    { class: 'ok', role: 'status' },
                    `${job.file}: sha256 ${job.sha256 ?? ''}`,
                  )
                : errorBox(new Error(job.message ?? 'failed'), `Export #${job.id}`),
            );
          } catch (error) {
            rethrowIfBug(error);
            replace(result, errorBox(error, 'Exporting'));
          }
        },
      },
      field('Volume', volume),
      field(
        'File',
        file,
        `a name inside the export directory${app.info?.exportDir ? ` ${app.info.exportDir}` : ''} on the manager host; sparse; SHA-256 printed`,
      ),
      h('button', { type: 'submit' }, 'Export'),
    ),
    result,
  );
}
