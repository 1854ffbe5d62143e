// TLS credentials of the NBD server, pure: the PSK file format (nbdkit's and psktool's
// `identity:hexkey` lines), the X.509 or PSK choice, and the checks that a configuration is whole
// (a mode that needs credentials has them, rules name only credentials the server can verify).
import { RewindError } from '../core/index.js';
import { PSK_IDENTITY_BYTES_MAX, type AccessPolicy, type TlsMode } from './access.js';

export type TlsCredentials =
  | {
      kind: 'x509';
      /** PEM: the server's certificate chain and its private key. */
      certificate: Buffer;
      privateKey: Buffer;
      /** PEM: when given, every client must present a certificate that chains to it. */
      clientCa?: Buffer;
    }
  | { kind: 'psk'; keys: ReadonlyMap<string, Buffer> };

export interface TlsSettings {
  mode: Exclude<TlsMode, 'off'>;
  credentials: TlsCredentials;
}

/** A PSK file larger than this is refused (psktool writes about 80 bytes per identity). */
export const PSK_FILE_BYTES_MAX = 1024 * 1024;
/** Identities per PSK file. */
export const PSK_IDENTITIES_MAX = 10_000;
/** Key bytes per identity; psktool writes 32 by default, OpenSSL takes at most 512. */
export const PSK_KEY_BYTES_MAX = 256;

/** Parses a PSK file: `identity:hexkey` lines (blank ones ignored); `file` names it in errors. */
export function parsePskFile(text: string, file: string): Map<string, Buffer> {
  if (Buffer.byteLength(text) > PSK_FILE_BYTES_MAX)
    throw pskError(file, 0, `is larger than ${PSK_FILE_BYTES_MAX} bytes`);
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (const [index, raw] of lines.entries()) {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '') continue;
    const lineNumber = index + 1;
    const colon = line.lastIndexOf(':');
    const identity = colon < 0 ? '' : line.slice(0, colon);
    const hex = colon < 0 ? '' : line.slice(colon + 1);
    if (identity === '' || hex === '') throw pskError(file, lineNumber, 'is not IDENTITY:HEXKEY');
    if (Buffer.byteLength(identity) > PSK_IDENTITY_BYTES_MAX)
      throw pskError(
        file,
        lineNumber,
        `has an identity longer than ${PSK_IDENTITY_BYTES_MAX} bytes`,
      );
    if (!/^(?:[0-9a-fA-F]{2})+$/.test(hex))
      throw pskError(file, lineNumber, 'has a key that is not an even number of hex digits');
    const key = Buffer.from(hex, 'hex');
    if (key.length > PSK_KEY_BYTES_MAX)
      throw pskError(file, lineNumber, `has a key longer than ${PSK_KEY_BYTES_MAX} bytes`);
    if (keys.has(identity)) throw pskError(file, lineNumber, `repeats identity "${identity}"`);
    if (keys.size >= PSK_IDENTITIES_MAX)
      throw pskError(file, lineNumber, `holds more than ${PSK_IDENTITIES_MAX} identities`);
    keys.set(identity, key);
  }
  if (keys.size === 0) throw pskError(file, 0, 'holds no identity');
  return keys;
}

function pskError(file: string, lineNumber: number, problem: string): RewindError {
  const where = lineNumber > 0 ? `${file} line ${lineNumber}` : file;
  return new RewindError('REWIND_CONFIG', `PSK file ${where} ${problem}`, {
    hint: 'write it with psktool -u IDENTITY -p FILE (lines IDENTITY:HEXKEY)',
  });
}

/**
 * Refuses a configuration that cannot do what it says: rules without TLS, or rules naming PSK
 * identities or certificate names the configured credentials can never prove.
 */
export function checkSecurity(tls: TlsSettings | undefined, access: AccessPolicy): void {
  if (access.isEmpty) return;
  const hint = 'see docs/SECURITY.md: rules need --nbd-tls on|require and matching credentials';
  if (tls === undefined)
    throw new RewindError('REWIND_BAD_ARGUMENT', 'NBD access rules need TLS (--nbd-tls)', { hint });
  const kinds = access.credentialKinds();
  if (kinds.has('psk') && tls.credentials.kind !== 'psk')
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      'an NBD access rule names a PSK identity but the server has no PSK file (--nbd-tls-psk)',
      { hint },
    );
  const verifiesCertificates =
    tls.credentials.kind === 'x509' && tls.credentials.clientCa !== undefined;
  if (kinds.has('certificate') && !verifiesCertificates)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      'an NBD access rule names a client certificate but the server verifies none (--nbd-tls-ca)',
      { hint },
    );
}
