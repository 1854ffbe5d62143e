// Assertions for programmer errors: they stay on in production and crash, never get caught.

export class AssertionError extends Error {
  override name = 'AssertionError';
}

export function assert(condition: unknown, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function assertNever(value: never, what = 'value'): never {
  throw new AssertionError(`unexpected ${what}: ${JSON.stringify(value)}`);
}

/** True for errors that mean the code is wrong (rethrow, never swallow). */
export function isProgrammerError(error: unknown): boolean {
  return (
    error instanceof AssertionError || error instanceof TypeError || error instanceof RangeError
  );
}
