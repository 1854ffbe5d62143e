// The JSON bodies the API accepts, as JSON schemas fastify checks before a handler runs: a missing
// field, a field of the wrong type, or a field the route does not know is a 400
// REWIND_BAD_ARGUMENT naming it, never a 500 from inside. Strings and arrays are bounded too.

/** Longest name (view, bookmark, volume, token), POINT or other string field accepted. */
const TEXT_BYTES_MAX = 4096;
/** Most volumes or ranges in one restore. */
const LIST_MAX = 10_000;

const text = { type: 'string', maxLength: TEXT_BYTES_MAX } as const;
const count = { type: 'integer', minimum: 0, maximum: Number.MAX_SAFE_INTEGER } as const;

function body(
  properties: Record<string, object>,
  required: readonly string[] = [],
): { body: object } {
  return {
    body: { type: 'object', additionalProperties: false, properties, required: [...required] },
  };
}

export const SEAL_SCHEMA = body({
  wait: { type: 'boolean' },
  timeoutMs: { type: 'integer', minimum: 1, maximum: 3_600_000 },
});

export const VIEW_SCHEMA = body({ name: text, kind: { enum: ['snapshot', 'clone'] }, at: text }, [
  'name',
  'kind',
  'at',
]);

export const STEP_SCHEMA = body({
  forward: count,
  back: count,
  to: { anyOf: [text, count] },
  discardWrites: { type: 'boolean' },
});

export const BOOKMARK_SCHEMA = body({ name: text, at: { anyOf: [text, count] } }, ['name']);

export const PIN_SCHEMA = body({ until: text });

const range = {
  anyOf: [
    text,
    {
      type: 'object',
      additionalProperties: false,
      properties: { offset: count, length: count },
      required: ['offset', 'length'],
    },
  ],
} as const;

export const RESTORE_SCHEMA = body(
  {
    volumes: { type: 'array', items: text, maxItems: LIST_MAX },
    at: { anyOf: [text, count] },
    fromClone: text,
    ranges: { type: 'array', items: range, maxItems: LIST_MAX },
    force: { type: 'boolean' },
    dryRun: { type: 'boolean' },
  },
  ['volumes'],
);

export const EMPTY_SCHEMA = body({});

export const EXPORT_SCHEMA = body(
  { volume: text, at: text, file: text, force: { type: 'boolean' } },
  ['volume', 'at', 'file'],
);

export const ARCHIVE_FETCH_SCHEMA = body({ point: text }, ['point']);

/** `rewind full [VOLUME...] [--at POINT]`: no volumes means every volume. */
export const ARCHIVE_FULL_SCHEMA = body({
  volumes: { type: 'array', items: text, maxItems: LIST_MAX },
  at: { anyOf: [text, count] },
});

export const ARCHIVE_VERIFY_SCHEMA = body({ deep: { type: 'boolean' } });

export const TOKEN_SCHEMA = body({ name: text, role: text }, ['name', 'role']);

/** Retention settings are checked by policyTextFrom (names and values); here only the shape. */
export const POLICY_SCHEMA = { body: { type: 'object' } };
