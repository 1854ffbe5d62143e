// The console's client of the HTTP API (same origin): the token (from the URL fragment or the
// operator, kept in sessionStorage, sent as a Bearer header), JSON and NDJSON calls, and API errors
// as ApiError with the server's code, message and hint. A 401 asks for the token, then retries.

const TOKEN_KEY = 'rewind.api-token';
/** A call that takes longer is abandoned with a clear error (the API answers in milliseconds). */
const CALL_TIMEOUT_MS = 60_000;

export class ApiError extends Error {
  override name = 'ApiError';
  readonly code: string;
  readonly hint: string | null;
  readonly status: number;
  constructor(status: number, code: string, message: string, hint: string | null) {
    super(message);
    this.status = status;
    this.code = code;
    this.hint = hint;
  }
}

let tokenAsker: ((reason: string) => Promise<string | null>) | undefined;

/** Takes `#token=...` from the address (then removes it from the address bar and history). */
export function adoptTokenFromFragment(): void {
  const match = /^#token=([^&]*)/.exec(location.hash);
  if (!match) return;
  setToken(decodeURIComponent(match[1] ?? ''));
  history.replaceState(null, '', `${location.pathname}${location.search}#/overview`);
}

export function token(): string | null {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value: string | null): void {
  if (value === null || value === '') sessionStorage.removeItem(TOKEN_KEY);
  else sessionStorage.setItem(TOKEN_KEY, value.trim());
}

/** How the console asks the operator for a token (a dialog); resolves null when they cancel. */
export function onTokenNeeded(ask: (reason: string) => Promise<string | null>): void {
  tokenAsker = ask;
}

export function authHeaders(): Record<string, string> {
  const value = token();
  return value ? { authorization: `Bearer ${value}` } : {};
}

/** One call; on 401 the operator is asked for the token and the call is made again. */
export async function call(method: string, path: string, body?: unknown): Promise<Response> {
  for (let attempt = 0; ; attempt++) {
    const response = await send(method, path, body);
    if (response.status !== 401 || attempt >= 3 || !tokenAsker) {
      if (!response.ok) throw await errorOf(response);
      return response;
    }
    const error = await errorOf(response);
    const given = await tokenAsker(error.message);
    if (given === null) throw error;
    setToken(given);
  }
}

async function send(method: string, path: string, body: unknown): Promise<Response> {
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), CALL_TIMEOUT_MS);
  try {
    return await fetch(path, {
      method,
      headers: {
        ...authHeaders(),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
      signal: controller.signal,
    });
  } catch (error) {
    // fetch fails a lost connection with a TypeError and a timeout with an AbortError; anything
    // else is a bug and propagates as it is.
    const unreachable =
      error instanceof TypeError || (error instanceof DOMException && error.name === 'AbortError');
    if (!unreachable) throw error;
    throw new ApiError(
      0,
      'REWIND_UNREACHABLE',
      `cannot reach the Rewind API (${error instanceof Error ? error.message : String(error)})`,
      'is rewind up or rewind manager still running?',
    );
  } finally {
    clearTimeout(timer);
  }
}

export async function errorOf(response: Response): Promise<ApiError> {
  let payload: { error?: { code?: string; message?: string; hint?: string | null } } = {};
  try {
    payload = (await response.json()) as typeof payload;
  } catch (error) {
    // Not JSON (a proxy's page, say): the status line is all there is to say.
    if (!(error instanceof SyntaxError)) throw error;
  }
  return new ApiError(
    response.status,
    payload.error?.code ?? `HTTP_${response.status}`,
    payload.error?.message ?? `HTTP ${response.status} ${response.statusText}`,
    payload.error?.hint ?? null,
  );
}

export async function getJson<T>(path: string): Promise<T> {
  return (await (await call('GET', path)).json()) as T;
}

export async function postJson<T>(path: string, body: unknown): Promise<T> {
  return (await (await call('POST', path, body)).json()) as T;
}

export async function deleteJson<T>(path: string): Promise<T> {
  return (await (await call('DELETE', path)).json()) as T;
}

/** An NDJSON answer as objects, with the response (for its headers). */
export async function getLines<T>(path: string): Promise<{ items: T[]; response: Response }> {
  const response = await call('GET', path);
  const text = await response.text();
  const items = text
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line) as T);
  return { items, response };
}

/** Query string from defined values. */
export function query(params: Record<string, string | number | undefined | null>): string {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params))
    if (value !== undefined && value !== null && value !== '') search.set(key, String(value));
  const text = search.toString();
  return text ? `?${text}` : '';
}
