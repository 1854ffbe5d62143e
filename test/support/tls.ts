// Test credentials made with the real tools: an X.509 CA, a server certificate for localhost and
// 127.0.0.1, a client certificate it signed, a self-signed "rogue" one with the same name, laid
// out as libnbd (tls-certificates=DIR) and qemu (tls-creds-x509 dir=DIR) read them; and PSK files
// written by GnuTLS's psktool when it is there.
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

export const haveTool = (tool: string): boolean => spawnSync('which', [tool]).status === 0;

export interface Pki {
  dir: string;
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** ca-cert.pem + client-cert.pem + client-key.pem (CN=alice, signed by the CA). */
  clientDir: string;
  /** The same layout with a self-signed CN=alice certificate the CA never signed. */
  rogueDir: string;
  /** ca-cert.pem only: a client that trusts the server but has no certificate of its own. */
  anonymousDir: string;
  clientCommonName: string;
}

const DAYS = '2';

function openssl(args: string[]): void {
  execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
}

/** A P-256 key and a certificate, self-signed or signed by `ca`. */
function issue(
  dir: string,
  name: string,
  subject: string,
  options: { ca?: { cert: string; key: string }; extensions?: string },
): { cert: string; key: string } {
  const key = path.join(dir, `${name}-key.pem`);
  const cert = path.join(dir, `${name}-cert.pem`);
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key]);
  if (!options.ca) {
    openssl(['req', '-x509', '-new', '-key', key, '-out', cert, '-days', DAYS, '-subj', subject]);
    return { cert, key };
  }
  const csr = path.join(dir, `${name}.csr`);
  openssl(['req', '-new', '-key', key, '-out', csr, '-subj', subject]);
  const args = ['x509', '-req', '-in', csr, '-CA', options.ca.cert, '-CAkey', options.ca.key];
  args.push('-CAcreateserial', '-out', cert, '-days', DAYS);
  if (options.extensions) {
    const ext = path.join(dir, `${name}.ext`);
    fs.writeFileSync(ext, options.extensions);
    args.push('-extfile', ext);
  }
  openssl(args);
  return { cert, key };
}

function clientLayout(dir: string, caCert: string, client?: { cert: string; key: string }): string {
  fs.mkdirSync(dir, { recursive: true });
  fs.copyFileSync(caCert, path.join(dir, 'ca-cert.pem'));
  if (client) {
    fs.copyFileSync(client.cert, path.join(dir, 'client-cert.pem'));
    fs.copyFileSync(client.key, path.join(dir, 'client-key.pem'));
  }
  return dir;
}

export function makePki(dir: string): Pki {
  fs.mkdirSync(dir, { recursive: true });
  const ca = issue(dir, 'ca', '/CN=Rewind test CA', {});
  // openssl req -x509 makes a CA certificate (basicConstraints CA:TRUE) by default.
  const server = issue(dir, 'server', '/CN=localhost', {
    ca,
    extensions: 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n',
  });
  const client = issue(dir, 'client', '/CN=alice', {
    ca,
    extensions: 'extendedKeyUsage=clientAuth\n',
  });
  const rogue = issue(dir, 'rogue', '/CN=alice', {});
  return {
    dir,
    caCert: ca.cert,
    serverCert: server.cert,
    serverKey: server.key,
    clientDir: clientLayout(path.join(dir, 'client'), ca.cert, client),
    rogueDir: clientLayout(path.join(dir, 'rogue'), ca.cert, rogue),
    anonymousDir: clientLayout(path.join(dir, 'anonymous'), ca.cert),
    clientCommonName: 'alice',
  };
}

/**
 * A PSK file for `identities`, written by psktool (GnuTLS, the format nbdkit, libnbd and qemu
 * read) when installed, else in the same `identity:hexkey` format by hand. Returns the keys.
 */
export function writePskFile(file: string, identities: readonly string[]): Map<string, string> {
  fs.rmSync(file, { force: true });
  if (haveTool('psktool')) {
    for (const identity of identities)
      execFileSync('psktool', ['-u', identity, '-p', file], { stdio: 'ignore', timeout: 10_000 });
  } else {
    const lines = identities.map((identity) => `${identity}:${randomBytes(32).toString('hex')}`);
    fs.writeFileSync(file, `${lines.join('\n')}\n`);
  }
  const keys = new Map<string, string>();
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    const colon = line.lastIndexOf(':');
    if (colon > 0) keys.set(line.slice(0, colon), line.slice(colon + 1));
  }
  return keys;
}
