// Small DOM helpers for the console (no framework): an element builder, the error, empty and
// loading states every screen uses, and the formatting of sizes, times and seqs.
import { ApiError } from './api.js';

type Child = Node | string | number | null | undefined | false;
/**
 * A listener may be async: it handles its own errors, and a rejection it lets through is a bug,
 * shown by the console's bug banner.
 */
type Listener = (event: Event) => void | Promise<void>;
type Attributes = Record<string, string | number | boolean | null | undefined | Listener>;

/** `h('button', { onclick: go }, 'Go')`: attributes, `on*` listeners, then the children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attributes: Attributes = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (typeof value === 'function')
      element.addEventListener(name.slice(2), (event) => void value(event));
    else if (value === true) element.setAttribute(name, '');
    else element.setAttribute(name, String(value));
  }
  append(element, ...children);
  return element;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, ...children);
}

/** An API error as the operator reads it: what failed, the server's message, its hint and code. */
export function errorBox(error: unknown, doing?: string): HTMLElement {
  const api = error instanceof ApiError ? error : undefined;
  const message = error instanceof Error ? error.message : String(error);
  return h(
    'div',
    { class: 'error', role: 'alert', 'data-code': api?.code ?? 'ERROR' },
    h('strong', {}, doing ? `${doing} failed: ` : 'Error: '),
    message,
    api?.hint ? h('div', { class: 'hint' }, `Hint: ${api.hint}`) : null,
    h(
      'div',
      { class: 'code' },
      api ? `${api.code}${api.status ? ` (HTTP ${api.status})` : ''}` : '',
    ),
  );
}

export function emptyState(title: string, detail?: string): HTMLElement {
  return h(
    'div',
    { class: 'empty', role: 'status' },
    h('strong', {}, title),
    detail ? h('div', {}, detail) : null,
  );
}

export function loading(what: string): HTMLElement {
  return h('div', { class: 'loading', role: 'status', 'aria-live': 'polite' }, `Loading ${what}…`);
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

export function formatBytes(bytes: number): string {
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  if (unit === 0) return `${Math.round(bytes)} B`;
  return `${value.toFixed(value >= 100 ? 0 : value >= 10 ? 1 : 2)} ${UNITS[unit]}`;
}

export function formatCount(n: number): string {
  return Number.isInteger(n) ? n.toLocaleString('en-US') : n.toFixed(1);
}

/** µs since the epoch as ISO-8601 UTC with the microseconds (what the API's POINTs take). */
export function isoFromUs(us: number): string {
  const ms = Math.floor(us / 1000);
  const micros = Math.round(us - ms * 1000);
  const iso = new Date(ms).toISOString(); // ...T15:03:12.123Z
  return `${iso.slice(0, 23)}${String(micros).padStart(3, '0')}Z`;
}

/** An ISO time of the API (microseconds) as µs since the epoch. */
export function usFromIso(text: string): number {
  const fraction = /\.(\d+)Z$/.exec(text)?.[1] ?? '';
  const ms = Date.parse(text.replace(/\.\d+Z$/, 'Z'));
  return ms * 1000 + Number(fraction.padEnd(6, '0').slice(0, 6));
}

/** A duration in the unit that reads best. */
export function formatDuration(us: number): string {
  const abs = Math.abs(us);
  if (abs < 1000) return `${Math.round(us)} µs`;
  if (abs < 1_000_000) return `${(us / 1000).toFixed(abs < 10_000 ? 2 : 1)} ms`;
  if (abs < 120_000_000) return `${(us / 1e6).toFixed(abs < 10_000_000 ? 2 : 1)} s`;
  if (abs < 7_200_000_000) return `${(us / 6e7).toFixed(1)} min`;
  if (abs < 172_800_000_000) return `${(us / 3.6e9).toFixed(1)} h`;
  return `${(us / 8.64e10).toFixed(1)} d`;
}

/** An input with its label, for forms. */
export function field(label: string, input: HTMLElement, hint?: string): HTMLElement {
  return h(
    'label',
    { class: 'field' },
    h('span', { class: 'label' }, label),
    input,
    hint ? h('span', { class: 'field-hint' }, hint) : null,
  );
}

/** A table from a header row and rows of cells. */
export function table(
  headers: string[],
  rows: Child[][],
  attributes: Attributes = {},
): HTMLTableElement {
  return h(
    'table',
    attributes,
    h('thead', {}, h('tr', {}, ...headers.map((title) => h('th', { scope: 'col' }, title)))),
    h('tbody', {}, ...rows.map((cells) => h('tr', {}, ...cells.map((cell) => h('td', {}, cell))))),
  );
}

/** The kind of a log entry as the CLI prints it (resync records marked). */
export function kindOf(entry: { kind: string; resync: boolean; seqFirst?: number }): string {
  if (entry.kind === 'thinned') return `thinned (${entry.seqFirst ?? '?'}…)`;
  return entry.resync ? `resync-${entry.kind}` : entry.kind;
}

/** A progress bar with its figures. */
export function progress(done: number, total: number, label: string): HTMLElement {
  const fraction = total > 0 ? Math.min(1, done / total) : 0;
  return h(
    'div',
    { class: 'progress' },
    h('progress', { max: 1, value: fraction, 'aria-label': label }),
    h(
      'span',
      {},
      `${(fraction * 100).toFixed(0)} % · ${formatBytes(done)} of ${formatBytes(total)}`,
    ),
  );
}

/** Keys typed into a form field are the field's, not the page's shortcuts. */
export function typingInField(event: KeyboardEvent): boolean {
  const target = event.target;
  return (
    target instanceof HTMLInputElement ||
    target instanceof HTMLTextAreaElement ||
    target instanceof HTMLSelectElement ||
    (target instanceof HTMLElement && target.isContentEditable)
  );
}
