// The live feed from GET /api/events (server-sent events read with fetch, since EventSource cannot
// send the Bearer header): the latest overview and each committed transaction, to whichever screen
// listens, reconnecting after a lost stream. The connection state is shown in the header.
import { createParser } from 'eventsource-parser';
import { authHeaders, errorOf } from './api.js';
import type { CommitEvent, Overview } from './types.js';

/** Waits between reconnection attempts, growing to the last one. */
const RECONNECT_MS = [500, 1000, 2000, 5000];

export type FeedState = 'connecting' | 'live' | 'lost' | 'unauthorized';

type Listener<T> = (value: T) => void;

export class Feed {
  overview: Overview | undefined;
  state: FeedState = 'connecting';
  private readonly overviewListeners = new Set<Listener<Overview>>();
  private readonly commitListeners = new Set<Listener<CommitEvent>>();
  private readonly stateListeners = new Set<Listener<FeedState>>();
  private failures = 0;
  private controller: AbortController | undefined;

  /** Listens until `signal` aborts (the screen is left); the current overview is given at once. */
  onOverview(listener: Listener<Overview>, signal: AbortSignal): void {
    this.overviewListeners.add(listener);
    signal.addEventListener('abort', () => this.overviewListeners.delete(listener));
    if (this.overview) listener(this.overview);
  }

  onCommit(listener: Listener<CommitEvent>, signal: AbortSignal): void {
    this.commitListeners.add(listener);
    signal.addEventListener('abort', () => this.commitListeners.delete(listener));
  }

  onState(listener: Listener<FeedState>): void {
    this.stateListeners.add(listener);
    listener(this.state);
  }

  /** (Re)connects; called at start and after a token was given. */
  connect(): void {
    this.controller?.abort();
    const controller = new AbortController();
    this.controller = controller;
    void this.run(controller.signal);
  }

  private setState(state: FeedState): void {
    this.state = state;
    for (const listener of this.stateListeners) listener(state);
  }

  private async run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      this.setState(this.failures === 0 ? 'connecting' : 'lost');
      try {
        await this.stream(signal);
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof Unauthorized) {
          this.setState('unauthorized');
          return; // connect() runs again once the operator gives a token
        }
        // A lost stream (the server stopped, the network dropped) is retried; a bug is not.
        if (!(error instanceof TypeError) && !(error instanceof StreamEnded)) throw error;
      }
      this.failures += 1;
      const waitMs = RECONNECT_MS[Math.min(this.failures, RECONNECT_MS.length) - 1] ?? 5000;
      await new Promise((resolve) => setTimeout(resolve, waitMs));
    }
  }

  private async stream(signal: AbortSignal): Promise<void> {
    const response = await fetch('/api/events', { headers: authHeaders(), signal });
    if (response.status === 401) throw new Unauthorized((await errorOf(response)).message);
    if (!response.ok || !response.body) throw new StreamEnded(`HTTP ${response.status}`);
    const parser = createParser({
      onEvent: (message) => {
        if (message.event === 'overview') {
          this.overview = JSON.parse(message.data) as Overview;
          for (const listener of this.overviewListeners) listener(this.overview);
        } else if (message.event === 'commit') {
          const event = JSON.parse(message.data) as CommitEvent;
          for (const listener of this.commitListeners) listener(event);
        }
      },
    });
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) throw new StreamEnded('the server ended the stream');
      if (this.state !== 'live') {
        this.failures = 0;
        this.setState('live');
      }
      parser.feed(value);
    }
  }
}

class Unauthorized extends Error {}
class StreamEnded extends Error {}
