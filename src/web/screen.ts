// What a screen of the console is: a file in screens/ exporting one Screen, listed in routes.ts.
// The router gives it its element, its query parameters and a signal that aborts when the operator
// leaves it (listeners and polls stop with it).
import type { Feed } from './events.js';
import type { Info } from './types.js';

export interface App {
  readonly feed: Feed;
  readonly info: Info | undefined;
  /** Goes to `#/path?params`; the current screen is left first. */
  navigate(path: string, params?: Record<string, string | number | undefined>): void;
  /** The link of a screen, for <a href>. */
  href(path: string, params?: Record<string, string | number | undefined>): string;
}

export interface ScreenContext {
  readonly root: HTMLElement;
  readonly params: URLSearchParams;
  readonly signal: AbortSignal;
  readonly app: App;
}

export interface Screen {
  /** `#/path` */
  readonly path: string;
  readonly title: string;
  /** Shown in the top navigation, with its keyboard shortcut (a single key). */
  readonly nav?: { key: string };
  render(context: ScreenContext): void | Promise<void>;
}
