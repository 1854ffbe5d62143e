// The Rewind web console: takes the token from the address, starts the live feed, draws the header
// and navigation, and routes `#/screen?params` to the screens of routes.ts. Keyboard: each screen
// in the navigation has a key, `?` lists them all.
import { rethrowIfBug, showBugs } from './bugs.js';
import 'uplot/dist/uPlot.min.css';
import './style.css';
import { adoptTokenFromFragment, getJson, onTokenNeeded, setToken } from './api.js';
import { append, errorBox, h, replace, typingInField } from './dom.js';
import { Feed, type FeedState } from './events.js';
import { DEFAULT_SCREEN, SCREENS } from './routes.js';
import type { App, Screen } from './screen.js';
import type { Info } from './types.js';

const FEED_LABELS: Record<FeedState, string> = {
  connecting: 'connecting…',
  live: 'live',
  lost: 'reconnecting…',
  unauthorized: 'token needed',
};

class Console implements App {
  readonly feed = new Feed();
  info: Info | undefined;
  private readonly main: HTMLElement;
  private readonly nav: HTMLElement;
  private current: AbortController | undefined;
  private tokenPrompt: Promise<string | null> | undefined;

  constructor() {
    this.main = h('main', { id: 'main', tabindex: -1 });
    this.nav = h('nav', { 'aria-label': 'screens' });
    const state = h('span', { class: 'feed', 'data-testid': 'feed-state', role: 'status' });
    this.feed.onState((value) => {
      state.textContent = FEED_LABELS[value];
      state.dataset.state = value;
    });
    const header = h(
      'header',
      {},
      h('a', { class: 'brand', href: this.href('overview') }, 'Rewind'),
      this.nav,
      state,
      h('button', { class: 'link', type: 'button', onclick: () => this.showKeys() }, 'Keys (?)'),
    );
    document.body.replaceChildren(header, this.main);
    for (const screen of SCREENS.filter((s) => s.nav)) {
      append(
        this.nav,
        h(
          'a',
          {
            href: this.href(screen.path),
            'data-path': screen.path,
            title: `key ${screen.nav?.key}`,
          },
          screen.title,
          h('kbd', {}, screen.nav?.key ?? ''),
        ),
      );
    }
  }

  async start(): Promise<void> {
    showBugs();
    adoptTokenFromFragment();
    onTokenNeeded((reason) => this.askToken(reason));
    window.addEventListener('hashchange', () => this.route());
    document.addEventListener('keydown', (event) => this.onKey(event));
    try {
      this.info = await getJson<Info>('/api/info');
    } catch (error) {
      rethrowIfBug(error);
      replace(this.main, errorBox(error, 'Loading the console'));
      return;
    }
    this.feed.connect();
    this.route();
  }

  href(path: string, params: Record<string, string | number | undefined> = {}): string {
    const search = new URLSearchParams();
    for (const [key, value] of Object.entries(params))
      if (value !== undefined && value !== '') search.set(key, String(value));
    const text = search.toString();
    return `#/${path}${text ? `?${text}` : ''}`;
  }

  navigate(path: string, params: Record<string, string | number | undefined> = {}): void {
    const target = this.href(path, params);
    if (location.hash === target) this.route();
    else location.hash = target;
  }

  private route(): void {
    const hash = location.hash.startsWith('#/') ? location.hash.slice(2) : '';
    const [path = '', search = ''] = hash.split('?', 2);
    const screen: Screen | undefined =
      path === '' ? DEFAULT_SCREEN : SCREENS.find((s) => s.path === path);
    this.current?.abort();
    const controller = new AbortController();
    this.current = controller;
    for (const link of this.nav.querySelectorAll('a'))
      if (link.dataset.path === screen?.path) link.setAttribute('aria-current', 'page');
      else link.removeAttribute('aria-current');
    const root = h('div', { class: 'screen', 'data-screen': screen?.path ?? 'unknown' });
    replace(this.main, root);
    if (!screen) {
      document.title = 'Rewind: no such screen';
      replace(
        root,
        h('h1', {}, 'No such screen'),
        errorBox(new Error(`the console has no screen "${path}"`), 'Opening this address'),
        h('p', {}, h('a', { href: this.href('overview') }, 'Go to the overview')),
      );
      return;
    }
    document.title = `Rewind: ${screen.title}`;
    const rendering = screen.render({
      root,
      params: new URLSearchParams(search),
      signal: controller.signal,
      app: this,
    });
    void Promise.resolve(rendering).catch((error: unknown) => {
      rethrowIfBug(error);
      if (controller.signal.aborted) return;
      append(root, errorBox(error, `Showing ${screen.title}`));
    });
  }

  private onKey(event: KeyboardEvent): void {
    if (event.ctrlKey || event.metaKey || event.altKey || typingInField(event)) return;
    if (document.querySelector('dialog[open]')) return;
    if (event.key === '?') {
      event.preventDefault();
      this.showKeys();
      return;
    }
    const screen = SCREENS.find((s) => s.nav?.key === event.key);
    if (screen) {
      event.preventDefault();
      this.navigate(screen.path);
    }
  }

  private showKeys(): void {
    const dialog = h(
      'dialog',
      { class: 'keys', 'aria-label': 'keyboard shortcuts' },
      h('h2', {}, 'Keyboard'),
      h(
        'dl',
        {},
        ...SCREENS.filter((s) => s.nav).flatMap((s) => [
          h('dt', {}, s.nav?.key ?? ''),
          h('dd', {}, s.title),
        ]),
        h('dt', {}, '+ / −'),
        h('dd', {}, 'timeline: zoom in / out'),
        h('dt', {}, '← / →'),
        h('dd', {}, 'timeline: pan; snapshot or clone: step one write back / forward'),
        h('dt', {}, 'Shift + ← / →'),
        h('dd', {}, 'snapshot or clone: step N writes'),
        h('dt', {}, '0'),
        h('dd', {}, 'timeline: the whole history'),
        h('dt', {}, 'Esc'),
        h('dd', {}, 'close a dialog'),
      ),
      h('form', { method: 'dialog' }, h('button', { type: 'submit' }, 'Close')),
    );
    dialog.addEventListener('close', () => dialog.remove());
    document.body.append(dialog);
    dialog.showModal();
  }

  /** Asks once for the API token, however many calls need it at the same time. */
  private askToken(reason: string): Promise<string | null> {
    this.tokenPrompt ??= new Promise<string | null>((resolve) => {
      const input = h('input', {
        type: 'password',
        name: 'token',
        autocomplete: 'off',
        required: true,
        'aria-label': 'API token',
      });
      const dialog = h(
        'dialog',
        { class: 'token', 'data-testid': 'token-dialog' },
        h('h2', {}, 'API token needed'),
        h('p', {}, `The API answered: ${reason}.`),
        h(
          'p',
          {},
          'Paste the token from the data directory (',
          h('code', {}, 'DATA/api-token'),
          '), or open the console URL that rewind up or rewind manager printed.',
        ),
        h(
          'form',
          { method: 'dialog' },
          input,
          h('button', { type: 'submit', value: 'use', class: 'primary' }, 'Use token'),
          h('button', { type: 'submit', value: 'cancel', formnovalidate: true }, 'Cancel'),
        ),
      );
      dialog.addEventListener('close', () => {
        const given = dialog.returnValue === 'use' ? input.value.trim() : '';
        dialog.remove();
        this.tokenPrompt = undefined;
        if (given) {
          setToken(given);
          this.feed.connect();
        }
        resolve(given || null);
      });
      document.body.append(dialog);
      dialog.showModal();
      input.focus();
    });
    return this.tokenPrompt;
  }
}

// A 401 from any call asks for the token (one dialog); giving it reconnects the live feed too.
void new Console().start();
