// An HTTP proxy on loopback between a client and a real server that injects faults on demand:
// pass (forward as is), slow (every answer held back `delayMs` before it is forwarded), or
// errors (every request answered with an S3 error document and a status, nothing forwarded).
// Counts what it saw, so a test can tell that requests were made through each mode.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export type FaultMode =
  | { kind: 'pass' }
  | { kind: 'slow'; delayMs: number }
  | { kind: 'errors'; status: number; code: string };

export class FaultProxy {
  mode: FaultMode = { kind: 'pass' };
  /** Requests seen in each mode. */
  readonly seen = { pass: 0, slow: 0, errors: 0 };
  private readonly server: http.Server;
  private readonly target: URL;
  private readonly timers = new Set<NodeJS.Timeout>();

  private constructor(target: string) {
    this.target = new URL(target);
    this.server = http.createServer((request, response) => this.handle(request, response));
  }

  /** A proxy to `target` (e.g. http://127.0.0.1:PORT) listening on a free loopback port. */
  static async start(target: string): Promise<FaultProxy> {
    const proxy = new FaultProxy(target);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', resolve));
    return proxy;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  async stop(): Promise<void> {
    for (const timer of this.timers) clearTimeout(timer);
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }

  private handle(request: http.IncomingMessage, response: http.ServerResponse): void {
    const mode = this.mode;
    this.seen[mode.kind] += 1;
    if (mode.kind === 'errors') {
      // The body is read first: a client still sending would see a reset, not the answer.
      request.resume();
      request.on('end', () => {
        response.writeHead(mode.status, { 'content-type': 'application/xml' });
        response.end(
          `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${mode.code}</Code>` +
            `<Message>injected by the test's fault proxy</Message></Error>`,
        );
      });
      return;
    }
    const upstream = http.request(
      {
        host: this.target.hostname,
        port: this.target.port,
        method: request.method,
        path: request.url,
        headers: request.headers,
      },
      (answer) => {
        const forward = (): void => {
          if (response.destroyed) return void answer.destroy();
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
        };
        if (mode.kind === 'pass') return forward();
        const timer = setTimeout(() => {
          this.timers.delete(timer);
          forward();
        }, mode.delayMs);
        this.timers.add(timer);
      },
    );
    upstream.on('error', () => response.destroy());
    response.on('close', () => upstream.destroy());
    request.pipe(upstream);
  }
}
