// The HTTP API's tokens: the admin token of DATA/api-token, and the named tokens made with
// `rewind token create`, of which only a SHA-256 of the secret is stored (in the catalog). A
// secret is shown once, when it is made. Every check compares in constant time, against every
// token, so the answer's timing tells nothing of which token came close.
import { createHash, randomBytes } from 'node:crypto';
import { RewindError } from '../core/index.js';
import type { ApiTokenRow } from '../manager/index.js';
import { tokensEqual } from '../ship/index.js';
import { parseRole, type Role } from './access.js';

/** What the token store needs from the catalog. */
export interface TokenCatalog {
  apiTokens(): ApiTokenRow[];
  addApiToken(row: ApiTokenRow): void;
  removeApiToken(name: string): boolean;
}

/** Who made a call: the token's name (never its secret) and its role. */
export interface Identity {
  name: string;
  role: Role;
}

export interface TokenInfo {
  name: string;
  role: Role;
  createdAt: string | null;
  /** The admin token of DATA/api-token: it cannot be revoked here (delete the file instead). */
  builtIn: boolean;
}

/** The name under which the DATA/api-token token is listed and audited. */
export const ADMIN_TOKEN_NAME = 'admin';
/** Named tokens at most (each call compares against all of them). */
export const TOKENS_MAX = 1000;
/** A given Authorization header longer than this is refused unread. */
export const TOKEN_TEXT_MAX = 512;
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function sha256Hex(text: string): string {
  return createHash('sha256').update(text, 'utf8').digest('hex');
}

export class TokenStore {
  private readonly catalog: TokenCatalog;
  private readonly adminToken: string;
  /** The catalog's rows, read again after every change. */
  private rows: ApiTokenRow[];

  constructor(catalog: TokenCatalog, adminToken: string) {
    this.catalog = catalog;
    this.adminToken = adminToken;
    this.rows = catalog.apiTokens();
  }

  /** The identity of a secret, or undefined; every token is compared, each in constant time. */
  authenticate(secret: string): Identity | undefined {
    if (secret === '' || secret.length > TOKEN_TEXT_MAX) return undefined;
    let found: Identity | undefined = tokensEqual(secret, this.adminToken)
      ? { name: ADMIN_TOKEN_NAME, role: 'admin' }
      : undefined;
    const hash = sha256Hex(secret);
    for (const row of this.rows) {
      if (tokensEqual(hash, row.sha256) && found === undefined)
        found = { name: row.name, role: parseRole(row.role) };
    }
    return found;
  }

  /** Makes a token; its secret is in the answer and nowhere else. */
  create(name: unknown, role: unknown): TokenInfo & { token: string } {
    if (typeof name !== 'string' || !NAME_PATTERN.test(name))
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `token name ${JSON.stringify(name)} is invalid`,
        {
          hint: 'letters, digits, ".", "_" and "-", at most 64, starting with a letter or digit',
        },
      );
    if (name === ADMIN_TOKEN_NAME)
      throw new RewindError('REWIND_CONFLICT', `"${ADMIN_TOKEN_NAME}" is the DATA/api-token token`);
    const checked = parseRole(role);
    if (this.rows.length >= TOKENS_MAX)
      throw new RewindError('REWIND_CONFLICT', `${TOKENS_MAX} tokens exist already`, {
        hint: 'revoke tokens no longer used (rewind token revoke NAME)',
      });
    const token = `rwt_${randomBytes(32).toString('base64url')}`;
    const row: ApiTokenRow = {
      name,
      role: checked,
      sha256: sha256Hex(token),
      createdAt: new Date().toISOString(),
    };
    this.catalog.addApiToken(row);
    this.rows = this.catalog.apiTokens();
    return { name, role: checked, createdAt: row.createdAt, builtIn: false, token };
  }

  /** The tokens, without their secrets (and without their hashes). */
  list(): TokenInfo[] {
    return [
      { name: ADMIN_TOKEN_NAME, role: 'admin', createdAt: null, builtIn: true },
      ...this.rows.map((row) => ({
        name: row.name,
        role: parseRole(row.role),
        createdAt: row.createdAt,
        builtIn: false,
      })),
    ];
  }

  revoke(name: string): void {
    if (name === ADMIN_TOKEN_NAME)
      throw new RewindError('REWIND_BAD_ARGUMENT', 'the admin token cannot be revoked here', {
        hint: 'stop Rewind, delete DATA/api-token and start again: a new one is made',
      });
    if (!this.catalog.removeApiToken(name))
      throw new RewindError('REWIND_NOT_FOUND', `no token named "${name}"`);
    this.rows = this.catalog.apiTokens();
  }
}
