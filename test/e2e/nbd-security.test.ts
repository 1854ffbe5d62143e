// NBD security and private data with real processes and real clients: `rewind up` (as root)
// serving over TCP and a Unix socket with STARTTLS; nbdinfo, nbdcopy, qemu-img and qemu-io with
// nbds://, nbds+unix:// and nbd+unix:// URIs, X.509 certificates made by openssl and PSK files
// made by psktool; every byte read back compared with the test's own model; plain clients against
// `require`, an untrusted certificate, a wrong PSK and the wrong identity for a view refused; a
// Unix socket of mode 0660 refusing `nobody` outside its group; as `nobody`, nothing of the data
// directory readable; and `rewind manager` with `rewind agent` serving only on Unix sockets over TLS.
import assert from 'node:assert/strict';
import { execFile, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { startAgent, startManager, type Running } from '../../src/runtime/up.js';
import { BIN, freePort, startRewind, startUpProcess, until } from '../support/process.js';
import { haveTool, makePki, writePskFile } from '../support/tls.js';

const MIB = 1024 * 1024;
const SIZE = 8 * MIB;
const TOOL_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 20_000;

const asRoot = process.getuid?.() === 0;
const missingTools = ['nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io', 'openssl', 'psktool'].filter(
  (tool) => !haveTool(tool),
);
const skipClients = missingTools.length > 0 ? `missing ${missingTools.join(', ')}` : false;
const skipAsNobody = !asRoot
  ? 'needs root: runs clients as nobody against a Rewind started as root'
  : !haveTool('runuser') || !haveTool('setpriv')
    ? 'needs runuser and setpriv (util-linux)'
    : skipClients;

const scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-nbd-security-'));
// Clients run as nobody need to reach the sockets and files under here (never the data dirs).
fs.chmodSync(scratch, 0o755);
after(() => fs.rmSync(scratch, { recursive: true, force: true }));

interface Result {
  status: number | null;
  stdout: string;
  stderr: string;
}

function run(command: string, args: string[]): Result {
  const result = spawnSync(command, args, { encoding: 'utf8', timeout: TOOL_TIMEOUT_MS });
  if (result.error) throw result.error;
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

function runOk(command: string, args: string[]): string {
  const result = run(command, args);
  assert.equal(result.status, 0, `${command} ${args.join(' ')}\n${result.stderr}`);
  return result.stdout;
}

/** For servers in this process: the event loop must keep running while the client does. */
function runAsync(command: string, args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      { encoding: 'utf8', timeout: TOOL_TIMEOUT_MS },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number')
          reject(new Error(`${command} failed to run: ${error.message}`));
        else resolve({ status: error ? (error.code as number) : 0, stdout, stderr });
      },
    );
  });
}

function runFails(command: string, args: string[], what: string): Result {
  const result = run(command, args);
  assert.notEqual(result.status, 0, `${what} should fail: ${command} ${args.join(' ')}`);
  return result;
}

function cli(httpPort: number, ...args: string[]): string {
  return runOk(process.execPath, [BIN, ...args, '--server', `http://127.0.0.1:${httpPort}`]);
}

async function stop(child: ChildProcess | undefined): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await exited;
  clearTimeout(timer);
}

/** A fresh directory under the scratch one, for one test. */
function dirFor(name: string, mode = 0o700): string {
  const dir = path.join(scratch, name);
  fs.mkdirSync(dir, { mode });
  fs.chmodSync(dir, mode);
  return dir;
}

/** The model: what the volume must hold. Random data in the first MiB, zeroes elsewhere. */
function makeModel(file: string): Buffer {
  const model = Buffer.alloc(SIZE);
  randomBytes(MIB).copy(model, 0);
  fs.writeFileSync(file, model);
  fs.chmodSync(file, 0o644); // whatever the umask (in-process starts set 077): nobody reads it
  return model;
}

function applyPattern(model: Buffer, pattern: number, offset: number, length: number): void {
  model.fill(pattern, offset, offset + length);
}

function assertImage(file: string, model: Buffer, what: string): void {
  const actual = fs.readFileSync(file);
  assert.equal(actual.length, model.length, `${what}: size`);
  assert.ok(actual.equals(model), `${what}: bytes differ from the model`);
}

async function up(dataDir: string, args: string[]): Promise<{ child: ChildProcess; http: number }> {
  const http = await freePort();
  const child = await startUpProcess([
    '--data',
    dataDir,
    '--http',
    `127.0.0.1:${http}`,
    '--volume',
    `v:${SIZE}`,
    '--seal-ms',
    '100',
    ...args,
  ]);
  return { child, http };
}

/** A snapshot of everything committed so far; its name. */
function snapshotNow(httpPort: number, name: string): string {
  cli(httpPort, 'seal', '--wait');
  const status = JSON.parse(cli(httpPort, 'status', '--json')) as { seqCommitted: number };
  cli(httpPort, 'snapshot', name, '--at', String(status.seqCommitted));
  return `v@${name}`;
}

test(
  'X.509 over TCP and a Unix socket (TLS required, client certificates): real clients read back the model; plain and untrusted clients are refused',
  { skip: skipClients, timeout: 120_000 },
  async () => {
    const dir = dirFor('x509');
    const pki = makePki(path.join(dir, 'pki'));
    const socket = path.join(dir, 'nbd.sock');
    const nbdPort = await freePort();
    let child: ChildProcess | undefined;
    try {
      const started = await up(path.join(dir, 'data'), [
        '--nbd',
        `127.0.0.1:${nbdPort}`,
        '--nbd-unix',
        socket,
        '--nbd-tls',
        'require',
        '--nbd-tls-cert',
        pki.serverCert,
        '--nbd-tls-key',
        pki.serverKey,
        '--nbd-tls-ca',
        pki.caCert,
      ]);
      child = started.child;
      const tcpUri = (name: string, certs: string): string =>
        `nbds://localhost:${nbdPort}/${name}?tls-certificates=${certs}`;
      const unixUri = (name: string, certs: string): string =>
        `nbds+unix:///${name}?socket=${socket}&tls-certificates=${certs}`;
      const qemuCreds = `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.clientDir}`;
      const qemuUnix = `driver=nbd,server.type=unix,server.path=${socket},export=v,tls-creds=tls0,tls-hostname=localhost`;

      const model = makeModel(path.join(dir, 'model.img'));
      runOk('nbdcopy', [path.join(dir, 'model.img'), tcpUri('v', pki.clientDir)]);
      runOk('qemu-io', [
        '--object',
        qemuCreds,
        '--image-opts',
        qemuUnix,
        '-c',
        'write -P 0x5a 4M 64k',
      ]);
      applyPattern(model, 0x5a, 4 * MIB, 64 * 1024);

      const info = JSON.parse(runOk('nbdinfo', ['--json', unixUri('v', pki.clientDir)])) as {
        exports: { 'export-size': number }[];
      };
      assert.equal(info.exports[0]?.['export-size'], SIZE, 'nbdinfo over nbds+unix');
      const viaQemu = path.join(dir, 'qemu.img');
      runOk('qemu-img', [
        'convert',
        '--object',
        qemuCreds,
        '--image-opts',
        qemuUnix,
        '-O',
        'raw',
        viaQemu,
      ]);
      assertImage(viaQemu, model, 'qemu-img convert over nbds+unix');
      const viaNbdcopy = path.join(dir, 'nbdcopy.img');
      runOk('nbdcopy', [unixUri('v', pki.clientDir), viaNbdcopy]);
      assertImage(viaNbdcopy, model, 'nbdcopy over nbds+unix');

      // A snapshot is served the same way; it holds the model as of now.
      const view = snapshotNow(started.http, 'tls');
      const viaView = path.join(dir, 'view.img');
      runOk('nbdcopy', [tcpUri(view, pki.clientDir), viaView]);
      assertImage(viaView, model, 'snapshot over nbds://');

      // Plain clients are refused during the handshake, with the reason.
      const plainQemu = runFails(
        'qemu-io',
        ['-f', 'raw', `nbd://127.0.0.1:${nbdPort}/v`, '-c', 'read 0 512'],
        'plain qemu-io',
      );
      assert.match(plainQemu.stderr, /TLS negotiation required/);
      assert.match(plainQemu.stderr, /server reported: TLS is required/);
      runFails('nbdinfo', [`nbd+unix:///v?socket=${socket}`], 'plain nbdinfo on the socket');
      // Certificates the CA did not sign, or none, are refused; so is qemu with the rogue one.
      runFails('nbdinfo', [tcpUri('v', pki.rogueDir)], 'a self-signed client certificate');
      runFails('nbdinfo', [tcpUri('v', pki.anonymousDir)], 'no client certificate');
      runFails(
        'qemu-img',
        [
          'info',
          '--object',
          `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.rogueDir}`,
          '--image-opts',
          qemuUnix,
        ],
        'qemu with a rogue certificate',
      );
      // None of that changed a byte.
      runOk('nbdcopy', [unixUri('v', pki.clientDir), viaNbdcopy]);
      assertImage(viaNbdcopy, model, 'after the refused clients');
    } finally {
      await stop(child);
    }
  },
);

test(
  'PSK (psktool file) over TCP and a Unix socket: libnbd and qemu read back the model; a wrong key and the wrong identity for a view are refused',
  { skip: skipClients, timeout: 120_000 },
  async () => {
    const dir = dirFor('psk');
    const pskFile = path.join(dir, 'keys.psk');
    writePskFile(pskFile, ['alice', 'bob']);
    fs.chmodSync(pskFile, 0o600);
    // qemu's tls-creds-psk reads DIR/keys.psk; a copy with a wrong key for alice.
    const wrongFile = path.join(dir, 'wrong', 'keys.psk');
    fs.mkdirSync(path.dirname(wrongFile));
    fs.writeFileSync(wrongFile, `alice:${randomBytes(32).toString('hex')}\n`);
    const socket = path.join(dir, 'nbd.sock');
    const nbdPort = await freePort();
    let child: ChildProcess | undefined;
    try {
      const started = await up(path.join(dir, 'data'), [
        '--nbd',
        `127.0.0.1:${nbdPort}`,
        '--nbd-unix',
        socket,
        '--nbd-tls-psk',
        pskFile,
        '--nbd-allow',
        '*@*=psk:alice',
      ]);
      child = started.child;
      const tcpUri = (user: string, name: string, file = pskFile): string =>
        `nbds://${user}@localhost:${nbdPort}/${name}?tls-psk-file=${file}`;
      const unixUri = (user: string, name: string): string =>
        `nbds+unix://${user}@/${name}?socket=${socket}&tls-psk-file=${pskFile}`;
      const qemuCreds = (dirOfKeys: string): string =>
        `tls-creds-psk,id=tls0,endpoint=client,dir=${dirOfKeys},username=alice`;
      const qemuTcp = `driver=nbd,server.type=inet,server.host=localhost,server.port=${nbdPort},export=v,tls-creds=tls0`;

      const model = makeModel(path.join(dir, 'model.img'));
      runOk('nbdcopy', [path.join(dir, 'model.img'), unixUri('bob', 'v')]);
      runOk('qemu-io', [
        '--object',
        qemuCreds(dir),
        '--image-opts',
        qemuTcp,
        '-c',
        'write -P 0xc3 6M 128k',
      ]);
      applyPattern(model, 0xc3, 6 * MIB, 128 * 1024);
      const viaQemu = path.join(dir, 'qemu.img');
      runOk('qemu-img', [
        'convert',
        '--object',
        qemuCreds(dir),
        '--image-opts',
        qemuTcp,
        '-O',
        'raw',
        viaQemu,
      ]);
      assertImage(viaQemu, model, 'qemu-img convert with tls-creds-psk');

      const view = snapshotNow(started.http, 'psk');
      const viaView = path.join(dir, 'view.img');
      runOk('nbdcopy', [tcpUri('alice', view), viaView]);
      assertImage(viaView, model, 'the view, as alice');
      // bob may use production (no rule names it) but not the view; the rule hides it from him.
      runFails('nbdinfo', [unixUri('bob', view)], 'bob on a view limited to alice');
      const bobList = runOk('nbdinfo', ['--list', '--json', unixUri('bob', '')]);
      assert.doesNotMatch(bobList, /v@psk/, 'the view is not listed to bob');
      const aliceList = runOk('nbdinfo', ['--list', '--json', unixUri('alice', '')]);
      assert.match(aliceList, /v@psk/, 'the view is listed to alice');
      // A wrong key, an unknown identity and plain clients are refused.
      runFails('nbdinfo', [tcpUri('alice', 'v', wrongFile)], 'a wrong key for alice');
      runFails('nbdinfo', [tcpUri('mallory', 'v')], 'an identity not in the PSK file');
      runFails(
        'qemu-img',
        ['info', '--object', qemuCreds(path.dirname(wrongFile)), '--image-opts', qemuTcp],
        'qemu with a wrong key',
      );
      runFails('nbdinfo', [`nbd://127.0.0.1:${nbdPort}/v`], 'a plain client');
      const viaNbdcopy = path.join(dir, 'nbdcopy.img');
      runOk('nbdcopy', [unixUri('alice', 'v'), viaNbdcopy]);
      assertImage(viaNbdcopy, model, 'after the refused clients');
    } finally {
      await stop(child);
    }
  },
);

test(
  'a Unix socket of mode 0660 serves its group and refuses nobody outside it (nbd+unix://)',
  { skip: skipAsNobody, timeout: 120_000 },
  async () => {
    const dir = dirFor('unix', 0o755);
    const socket = path.join(dir, 'nbd.sock');
    const outDir = dirFor('unix-out', 0o777);
    let child: ChildProcess | undefined;
    try {
      child = (
        await up(path.join(scratch, 'unix-data'), [
          '--nbd',
          'off',
          '--nbd-unix',
          socket,
          '--nbd-unix-mode',
          '0660',
          '--nbd-unix-group',
          'daemon',
        ])
      ).child;
      const stat = fs.statSync(socket);
      assert.equal(stat.mode & 0o777, 0o660);
      assert.equal(stat.uid, 0, 'owned by root, who started Rewind');
      const uri = `nbd+unix:///v?socket=${socket}`;
      const asNobody = (...command: string[]): Result =>
        run('runuser', ['-u', 'nobody', '--', ...command]);
      const asNobodyInDaemon = (...command: string[]): Result =>
        run('setpriv', ['--reuid=nobody', '--regid=nogroup', '--groups=daemon', '--', ...command]);
      const refused = asNobody('nbdinfo', uri);
      assert.notEqual(refused.status, 0, 'nobody, not in group daemon, cannot connect');
      assert.match(refused.stderr, /Permission denied/);
      const model = makeModel(path.join(outDir, 'model.img'));
      const copied = asNobodyInDaemon('nbdcopy', path.join(outDir, 'model.img'), uri);
      assert.equal(copied.status, 0, `nobody in group daemon writes: ${copied.stderr}`);
      const back = path.join(outDir, 'back.img');
      const read = asNobodyInDaemon('nbdcopy', uri, back);
      assert.equal(read.status, 0, read.stderr);
      assertImage(back, model, 'nbdcopy over nbd+unix as a member of the group');
    } finally {
      await stop(child);
    }
  },
);

test(
  'as nobody, nothing in the data directory of a Rewind started as root can be read; an open one is reported, or refused when strict',
  { skip: skipAsNobody, timeout: 120_000 },
  async () => {
    const parent = dirFor('private', 0o755); // nobody may reach the data directory itself
    const dataDir = path.join(parent, 'data'); // created by Rewind
    const nbdPort = await freePort();
    let child: ChildProcess | undefined;
    try {
      const started = await up(dataDir, ['--nbd', `127.0.0.1:${nbdPort}`]);
      child = started.child;
      const uri = (name: string): string => `nbd://127.0.0.1:${nbdPort}/${name}`;
      runOk('qemu-io', [
        '-f',
        'raw',
        uri('v'),
        '-c',
        'write -P 0x11 0 64k',
        '-c',
        'write -P 0x22 1M 4k',
      ]);
      cli(started.http, 'seal', '--wait');
      cli(started.http, 'clone', 'scratch', '--at', '1');
      runOk('qemu-io', ['-f', 'raw', uri('v@scratch'), '-c', 'write -P 0x33 0 4k']);
      // Everything Rewind keeps is there: production image, replica, redo, undo, catalog with its
      // WAL and SHM, overlays, state and token files.
      const files = runOk('find', [dataDir, '-type', 'f']).trim().split('\n');
      for (const expected of [
        'production/v.img',
        'manager/replica/v.img',
        'catalog.sqlite-wal',
        'catalog.sqlite-shm',
        'clones/scratch/v.img',
        'agent/state.json',
        'link-token',
        '.redo',
        '.undo',
      ])
        assert.ok(
          files.some((file) => file.includes(expected)),
          `a file like ${expected} exists: ${files.join('\n')}`,
        );
      // Modes, read by find (not by Rewind): nothing open to group or others, directories 0700.
      assert.equal(runOk('find', [dataDir, '-perm', '/077']).trim(), '', 'entries open to others');
      assert.equal((fs.statSync(dataDir).mode & 0o777).toString(8), '700');
      // And as nobody: the directory cannot be listed, no file can be opened.
      assert.notEqual(run('runuser', ['-u', 'nobody', '--', 'ls', dataDir]).status, 0);
      const readable = run('runuser', [
        '-u',
        'nobody',
        '--',
        'sh',
        '-c',
        'for f in "$@"; do if cat "$f" >/dev/null 2>&1; then echo "$f"; fi; done',
        'sh',
        ...files,
      ]);
      assert.equal(readable.stdout.trim(), '', `readable by nobody:\n${readable.stdout}`);
      // Even with the directory opened up, the files themselves stay closed to nobody.
      fs.chmodSync(dataDir, 0o755);
      const throughOpenDir = run('runuser', [
        '-u',
        'nobody',
        '--',
        'sh',
        '-c',
        'for f in "$@"; do if cat "$f" >/dev/null 2>&1; then echo "$f"; fi; done',
        'sh',
        ...files.filter((file) => path.dirname(file) === dataDir),
      ]);
      assert.equal(
        throughOpenDir.stdout.trim(),
        '',
        `top-level files readable by nobody:\n${throughOpenDir.stdout}`,
      );
      await stop(child);
      child = undefined;
      // Restarted on that opened directory: the warning says how to fix it; strict refuses.
      const warned = startRewind([
        'up',
        '--data',
        dataDir,
        '--nbd',
        `127.0.0.1:${nbdPort}`,
        '--http',
        `127.0.0.1:${await freePort()}`,
        '--volume',
        `v:${SIZE}`,
      ]);
      child = warned.child;
      await until('rewind up started on the opened directory', () => warned.out().includes('API:'));
      assert.match(warned.out(), /data directory .* is open to group or others/);
      assert.match(warned.out(), /chmod -R go-rwx/);
      await stop(child);
      child = undefined;
      const strict = run(process.execPath, [
        BIN,
        'up',
        '--data',
        dataDir,
        '--nbd',
        '127.0.0.1:0',
        '--http',
        '127.0.0.1:0',
        '--volume',
        `v:${SIZE}`,
        '--strict-permissions',
      ]);
      assert.notEqual(strict.status, 0, 'strict refuses an open data directory');
      assert.match(
        strict.stderr,
        new RegExp(`chmod -R go-rwx ${dataDir.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`),
      );
    } finally {
      await stop(child);
    }
  },
);

test(
  'rewind manager and rewind agent serve NBD on Unix sockets over TLS: production written through the agent, the view read from the manager',
  { skip: skipClients, timeout: 120_000 },
  async () => {
    const dir = dirFor('split');
    const pskFile = path.join(dir, 'keys.psk');
    writePskFile(pskFile, ['alice', 'bob']);
    fs.chmodSync(pskFile, 0o600);
    const managerSocket = path.join(dir, 'manager.sock');
    const agentSocket = path.join(dir, 'agent.sock');
    const any = { host: '127.0.0.1', port: 0 };
    const running: Running[] = [];
    try {
      const manager = await startManager({
        dataDir: path.join(dir, 'm'),
        listen: any,
        nbd: undefined,
        nbdSecurity: {
          unix: { path: managerSocket },
          tls: { pskFile },
          allow: ['*@*=psk:alice'],
        },
        http: any,
        token: 'link-token',
        quiet: true,
      });
      running.push(manager);
      assert.equal(manager.nbdAddress, undefined, 'no TCP listener');
      const agent = await startAgent({
        dataDir: path.join(dir, 'a'),
        nbd: undefined,
        nbdSecurity: { unix: { path: agentSocket, mode: 0o600 }, tls: { pskFile } },
        manager: { host: '127.0.0.1', port: manager.linkAddress.port },
        token: 'link-token',
        volumes: [{ name: 'v', sizeBytes: SIZE }],
        sealBytes: 1 << 20,
        sealMs: 100,
        quiet: true,
      });
      running.push(agent);
      for (const socket of [managerSocket, agentSocket])
        assert.equal(fs.statSync(socket).mode & 0o777, 0o600, `${socket} is the owner's only`);
      const uri = (socket: string, user: string, name: string): string =>
        `nbds+unix://${user}@/${name}?socket=${socket}&tls-psk-file=${pskFile}`;
      const model = makeModel(path.join(dir, 'model.img'));
      const written = await runAsync('nbdcopy', [
        path.join(dir, 'model.img'),
        uri(agentSocket, 'bob', 'v'),
      ]);
      assert.equal(written.status, 0, written.stderr);
      const plain = await runAsync('nbdinfo', [`nbd+unix:///v?socket=${agentSocket}`]);
      assert.notEqual(plain.status, 0, 'a plain client of the agent is refused');
      await until(
        'the agent is connected',
        () => (manager.manager?.status() as { agentConnected: boolean }).agentConnected,
      );
      const { seqLast } = await (manager.manager as NonNullable<Running['manager']>).seal(true);
      await (manager.manager as NonNullable<Running['manager']>).createView(
        'split',
        'snapshot',
        String(seqLast),
      );
      const viaView = path.join(dir, 'view.img');
      const read = await runAsync('nbdcopy', [uri(managerSocket, 'alice', 'v@split'), viaView]);
      assert.equal(read.status, 0, read.stderr);
      assertImage(viaView, model, 'the view from the manager, as alice');
      const bob = await runAsync('nbdinfo', [uri(managerSocket, 'bob', 'v@split')]);
      assert.notEqual(bob.status, 0, 'bob is refused the view');
    } finally {
      for (const item of running.reverse()) await item.close();
    }
  },
);
