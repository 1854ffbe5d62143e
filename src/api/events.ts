// Server-sent events for the console (GET /api/events): the overview whenever it changes (checked a
// few times a second) and one `commit` event per committed transaction. Bounded: a fixed number of
// streams, and a stream whose client does not read is closed rather than buffered without end.
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { CommitEvent, Manager } from '../manager/index.js';
import type { OverviewSource } from './overview.js';

/** How often the overview is rebuilt and compared with the last one sent. */
const OVERVIEW_TICK_MS = 250;
/** A comment line this often keeps proxies from closing an idle stream. */
const HEARTBEAT_MS = 15_000;
/** Streams open at once; one more is refused with 503. */
export const EVENT_STREAMS_MAX = 32;
/** Bytes a stream may have waiting in its socket before it is closed as not reading. */
const STREAM_BUFFERED_BYTES_MAX = 4 * 1024 * 1024;
/** The client waits this long before reconnecting after a lost stream. */
const RETRY_MS = 2000;

export class EventStreams {
  private readonly streams = new Set<FastifyReply>();
  private readonly source: OverviewSource;
  private lastOverview = '';
  private timer: NodeJS.Timeout | undefined;
  private heartbeat: NodeJS.Timeout | undefined;
  private readonly manager: Manager;
  private readonly onCommit = (event: CommitEvent): void => this.commit(event);

  constructor(manager: Manager, source: OverviewSource) {
    this.manager = manager;
    this.source = source;
  }

  register(app: FastifyInstance): void {
    app.get('/api/events', async (request, reply) => {
      if (this.streams.size >= EVENT_STREAMS_MAX) {
        return reply.code(503).send({
          error: {
            code: 'REWIND_BUSY',
            message: `${EVENT_STREAMS_MAX} event streams are open already`,
            hint: 'close other console tabs',
          },
        });
      }
      reply.hijack();
      reply.raw.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      reply.raw.write(`retry: ${RETRY_MS}\n\n`);
      this.streams.add(reply);
      request.raw.once('close', () => this.drop(reply));
      this.send(reply, 'overview', this.overviewText());
      this.start();
    });
    // Streams never end on their own: end them before the server waits for its connections.
    app.addHook('preClose', async () => this.close());
  }

  private start(): void {
    if (this.timer) return;
    this.manager.commitObservers.add(this.onCommit);
    this.timer = setInterval(() => this.tick(), OVERVIEW_TICK_MS);
    this.heartbeat = setInterval(() => {
      for (const stream of this.streams) this.write(stream, ': heartbeat\n\n');
    }, HEARTBEAT_MS);
  }

  private stop(): void {
    clearInterval(this.timer);
    clearInterval(this.heartbeat);
    this.timer = undefined;
    this.heartbeat = undefined;
    this.manager.commitObservers.delete(this.onCommit);
  }

  private overviewText(): string {
    this.lastOverview = JSON.stringify(this.source.overview());
    return this.lastOverview;
  }

  private tick(): void {
    const previous = this.lastOverview;
    const text = this.overviewText();
    if (text === previous) return;
    for (const stream of this.streams) this.send(stream, 'overview', text);
  }

  private commit(event: CommitEvent): void {
    const { tx } = event;
    const text = JSON.stringify({
      idx: tx.idx,
      kind: tx.kind,
      seqFirst: tx.seqFirst,
      seqLast: tx.seqLast,
      writes: tx.recordCount,
      fromUs: tx.timeFirstUs,
      toUs: tx.timeLastUs,
      applyMs: event.applyMs ?? null,
    });
    for (const stream of this.streams) this.send(stream, 'commit', text);
  }

  private send(stream: FastifyReply, event: string, data: string): void {
    this.write(stream, `event: ${event}\ndata: ${data}\n\n`);
  }

  private write(stream: FastifyReply, text: string): void {
    const raw = stream.raw;
    if (raw.destroyed || raw.writableEnded) return this.drop(stream);
    if (raw.writableLength > STREAM_BUFFERED_BYTES_MAX) {
      raw.destroy(); // the client does not read: it reconnects and starts from a fresh overview
      return this.drop(stream);
    }
    raw.write(text);
  }

  private drop(stream: FastifyReply): void {
    this.streams.delete(stream);
    if (this.streams.size === 0) this.stop();
  }

  close(): void {
    for (const stream of this.streams) stream.raw.end();
    this.streams.clear();
    this.stop();
  }
}
