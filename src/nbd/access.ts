// Who may use which export: the TLS mode, the identity a client proved during STARTTLS, per-export
// rules (a glob over export names and the credentials it accepts), and the decision for a client at
// INFO, GO, EXPORT_NAME, LIST and the meta-context options. Pure: no sockets, no files.
import picomatch from 'picomatch';
import { RewindError } from '../core/index.js';

/** `off`: no TLS (NOTLS). `on`: TLS when the client asks (SELECTIVETLS). `require`: FORCEDTLS. */
export type TlsMode = 'off' | 'on' | 'require';
export const TLS_MODES: readonly TlsMode[] = ['off', 'on', 'require'];

/** What a client proved about itself. */
export type Peer =
  | { kind: 'plain' }
  /** TLS with the server's certificate only (no client certificate was asked for). */
  | { kind: 'tls' }
  | { kind: 'psk'; identity: string }
  /** A client certificate that chains to the configured CA. */
  | { kind: 'certificate'; commonName: string; subject: string };

/** What a rule accepts. */
export type Credential =
  { kind: 'tls' } | { kind: 'psk'; identity: string } | { kind: 'certificate'; commonName: string };

export interface AccessRule {
  /** A glob over export names (`*` any run, `?` one character, `{a,b}` either), e.g. `*@*`. */
  pattern: string;
  credentials: readonly Credential[];
}

export type AccessDecision =
  | { kind: 'allowed' }
  /** Only over TLS (the client is plain): ERR_TLS_REQD where the spec allows it. */
  | { kind: 'tls-required'; reason: string }
  | { kind: 'refused'; reason: string };

/** Rules per server; the first whose pattern matches an export decides. */
export const ACCESS_RULES_MAX = 256;
/** Credentials per rule. */
export const RULE_CREDENTIALS_MAX = 64;
/** A pattern is matched against export names (at most 4096 bytes); longer ones are refused. */
const PATTERN_BYTES_MAX = 512;
/** OpenSSL bounds PSK identities (PSK_MAX_IDENTITY_LEN); ours are at most this long. */
export const PSK_IDENTITY_BYTES_MAX = 128;

/** `PATTERN=CREDENTIAL[,CREDENTIAL...]`, credentials being `tls`, `psk:IDENTITY`, `cert:CN`. */
export function parseAccessRule(text: string): AccessRule {
  const equals = text.indexOf('=');
  const pattern = equals < 0 ? '' : text.slice(0, equals).trim();
  const list = equals < 0 ? '' : text.slice(equals + 1).trim();
  if (pattern === '' || list === '')
    throw ruleError(text, 'is not PATTERN=CREDENTIAL[,CREDENTIAL...]');
  if (Buffer.byteLength(pattern) > PATTERN_BYTES_MAX)
    throw ruleError(text, `has a pattern longer than ${PATTERN_BYTES_MAX} bytes`);
  const parts = list.split(',').map((part) => part.trim());
  if (parts.length > RULE_CREDENTIALS_MAX)
    throw ruleError(text, `names more than ${RULE_CREDENTIALS_MAX} credentials`);
  return { pattern, credentials: parts.map((part) => parseCredential(text, part)) };
}

function parseCredential(rule: string, text: string): Credential {
  if (text === 'tls') return { kind: 'tls' };
  const colon = text.indexOf(':');
  const kind = colon < 0 ? text : text.slice(0, colon);
  const value = colon < 0 ? '' : text.slice(colon + 1);
  if (value === '' || (kind !== 'psk' && kind !== 'cert'))
    throw ruleError(rule, `has "${text}", which is not tls, psk:IDENTITY or cert:COMMON-NAME`);
  if (kind === 'psk') {
    if (Buffer.byteLength(value) > PSK_IDENTITY_BYTES_MAX)
      throw ruleError(rule, `has a PSK identity longer than ${PSK_IDENTITY_BYTES_MAX} bytes`);
    return { kind: 'psk', identity: value };
  }
  return { kind: 'certificate', commonName: value };
}

function ruleError(rule: string, problem: string): RewindError {
  return new RewindError('REWIND_BAD_ARGUMENT', `NBD access rule "${rule}" ${problem}`, {
    hint: 'e.g. --nbd-allow "*@*=psk:backup-admin,cert:ops.example.com" (docs/SECURITY.md)',
  });
}

export function describePeer(peer: Peer): string {
  switch (peer.kind) {
    case 'plain':
      return 'a client without TLS';
    case 'tls':
      return 'a TLS client without a client certificate';
    case 'psk':
      return `PSK identity "${peer.identity}"`;
    case 'certificate':
      return `certificate "${peer.subject}"`;
  }
}

function describeCredential(credential: Credential): string {
  switch (credential.kind) {
    case 'tls':
      return 'any TLS client';
    case 'psk':
      return `psk:${credential.identity}`;
    case 'certificate':
      return `cert:${credential.commonName}`;
  }
}

function accepts(credential: Credential, peer: Peer): boolean {
  switch (credential.kind) {
    case 'tls':
      return peer.kind !== 'plain';
    case 'psk':
      return peer.kind === 'psk' && peer.identity === credential.identity;
    case 'certificate':
      return peer.kind === 'certificate' && peer.commonName === credential.commonName;
  }
}

interface CompiledRule {
  rule: AccessRule;
  matches: (name: string) => boolean;
}

/** The rules of one server, compiled once. */
export class AccessPolicy {
  private readonly rules: readonly CompiledRule[];

  constructor(rules: readonly AccessRule[] = []) {
    if (rules.length > ACCESS_RULES_MAX)
      throw new RewindError(
        'REWIND_BAD_ARGUMENT',
        `more than ${ACCESS_RULES_MAX} NBD access rules`,
      );
    // Export names never hold "/", so picomatch's path rules do not apply; `dot` lets * match
    // every character a name may hold.
    this.rules = rules.map((rule) => ({
      rule,
      matches: picomatch(rule.pattern, { dot: true, nonegate: true }),
    }));
  }

  get isEmpty(): boolean {
    return this.rules.length === 0;
  }

  /** The credential kinds the rules name, to check them against the configured TLS credentials. */
  credentialKinds(): Set<Credential['kind']> {
    return new Set(this.rules.flatMap(({ rule }) => rule.credentials.map((c) => c.kind)));
  }

  /** The rule that governs `exportName`, if any: the first whose pattern matches. */
  ruleFor(exportName: string): AccessRule | undefined {
    return this.rules.find(({ matches }) => matches(exportName))?.rule;
  }

  decide(exportName: string, peer: Peer): AccessDecision {
    const rule = this.ruleFor(exportName);
    if (rule === undefined) return { kind: 'allowed' };
    if (peer.kind === 'plain')
      return {
        kind: 'tls-required',
        reason: `export "${exportName}" is served over TLS only (rule ${rule.pattern}): use STARTTLS (an nbds:// URI) with the right credentials`,
      };
    if (rule.credentials.some((credential) => accepts(credential, peer)))
      return { kind: 'allowed' };
    const wanted = rule.credentials.map(describeCredential).join(', ');
    return {
      kind: 'refused',
      reason: `export "${exportName}" does not accept ${describePeer(peer)} (rule ${rule.pattern} accepts ${wanted})`,
    };
  }
}
