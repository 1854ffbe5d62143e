// Real NBD clients (nbdinfo, qemu-io, qemu-img, nbdcopy, nbdsh, fio) against NbdServer with the
// in-memory backend on 127.0.0.1. Each test skips with a reason when its tool is missing.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { MemoryBackend, MemoryRegistry, NbdServer } from '../../src/nbd/index.js';

const MIB = 1024 * 1024;
const TOOL_TIMEOUT_MS = 60_000;
/** Debian's python3 has the libnbd module; a pyenv python earlier in PATH may not. */
const NBDSH_PATH = `/usr/bin:${process.env['PATH'] ?? ''}`;

function missing(tool: string): string | false {
  const found =
    spawnSync('which', [tool], { encoding: 'utf8', env: { ...process.env, PATH: NBDSH_PATH } })
      .status === 0;
  return found ? false : `${tool} is not installed`;
}

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a tool with a timeout; never rejects on a nonzero exit (the test checks `code`). */
function run(command: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(
      command,
      args,
      // cwd in the scratch directory: some tools (fio --verify) leave state files behind.
      {
        cwd: workDir,
        timeout: TOOL_TIMEOUT_MS,
        maxBuffer: 64 * MIB,
        env: { ...process.env, ...env },
        encoding: 'utf8',
      },
      (error, stdout, stderr) => {
        if (error && typeof error.code !== 'number') {
          reject(new Error(`${command} failed to run: ${error.message}\n${stderr}`));
          return;
        }
        resolve({ code: error ? (error.code as number) : 0, stdout, stderr });
      },
    );
  });
}

async function runOk(
  command: string,
  args: string[],
  env: NodeJS.ProcessEnv = {},
): Promise<string> {
  const result = await run(command, args, env);
  assert.equal(result.code, 0, `${command} ${args.join(' ')}\n${result.stderr}${result.stdout}`);
  return result.stdout;
}

const exports = {
  vol: new MemoryBackend({ name: 'vol', sizeBytes: 64 * MIB, description: 'qemu-io volume' }),
  ro: new MemoryBackend({ name: 'ro', sizeBytes: 4 * MIB, readOnly: true, multiConn: false }),
  img: new MemoryBackend({ name: 'img', sizeBytes: 8 * MIB }),
  copy: new MemoryBackend({ name: 'copy', sizeBytes: 16 * MIB }),
  errors: new MemoryBackend({ name: 'errors', sizeBytes: 1 * MIB }),
  fio: new MemoryBackend({ name: 'fio', sizeBytes: 16 * MIB }),
};
const transmissions = new Map<string, number>();
const warnings: string[] = [];
let server: NbdServer;
let port = 0;
let workDir = '';

function uri(exportName: string): string {
  return `nbd://127.0.0.1:${port}/${exportName}`;
}

before(async () => {
  exports.ro.writeSync(0, Buffer.alloc(64 * 1024, 0xab));
  const registry = new MemoryRegistry(Object.values(exports), 'vol');
  server = new NbdServer(registry, {
    log: (level, msg, fields) => {
      const exportName = (fields as { export?: string } | undefined)?.export;
      if (msg === 'nbd client entered transmission' && exportName !== undefined) {
        transmissions.set(exportName, (transmissions.get(exportName) ?? 0) + 1);
      }
      if (level !== 'info') warnings.push(`${msg} ${JSON.stringify(fields)}`);
    },
  });
  ({ port } = await server.listen('127.0.0.1', 0));
  workDir = mkdtempSync(path.join(tmpdir(), 'rewind-nbd-e2e-'));
});

after(async () => {
  await server.close();
  rmSync(workDir, { recursive: true, force: true });
});

interface NbdinfoExport {
  'export-name': string;
  'export-size': number;
  is_read_only: boolean;
  can_multi_conn: boolean;
  can_flush: boolean;
  can_fua: boolean;
  can_trim: boolean;
  can_zero: boolean;
  can_df: boolean;
  can_cache: boolean;
  block_size_minimum: number;
  block_size_preferred: number;
  block_size_maximum: number;
  contexts: string[];
  description?: string;
}

test(
  'nbdinfo --json reports size, flags, block sizes and multi-conn',
  { skip: missing('nbdinfo') },
  async () => {
    const vol = JSON.parse(await runOk('nbdinfo', ['--json', uri('vol')])) as {
      structured: boolean;
      exports: NbdinfoExport[];
    };
    assert.equal(vol.structured, true);
    const info = vol.exports[0];
    assert.ok(info);
    assert.equal(info['export-size'], 64 * MIB);
    assert.equal(info.description, 'qemu-io volume');
    assert.deepEqual(
      [
        info.is_read_only,
        info.can_multi_conn,
        info.can_flush,
        info.can_fua,
        info.can_trim,
        info.can_zero,
        info.can_df,
        info.can_cache,
      ],
      [false, true, true, true, true, true, true, false],
    );
    assert.deepEqual(
      [info.block_size_minimum, info.block_size_preferred, info.block_size_maximum],
      [1, 4096, 32 * MIB],
    );
    assert.ok(info.contexts.includes('base:allocation'));

    const ro = JSON.parse(await runOk('nbdinfo', ['--json', uri('ro')])) as {
      exports: NbdinfoExport[];
    };
    assert.deepEqual(
      [ro.exports[0]?.is_read_only, ro.exports[0]?.can_multi_conn, ro.exports[0]?.can_flush],
      [true, false, false],
    );
    assert.equal(
      (await run('nbdinfo', ['--can', 'multi-conn', uri('ro')])).code,
      2,
      'exit 2 means false',
    );
  },
);

test('nbdinfo --list --json lists every export', { skip: missing('nbdinfo') }, async () => {
  const listing = JSON.parse(
    await runOk('nbdinfo', ['--list', '--json', `nbd://127.0.0.1:${port}`]),
  ) as { exports: NbdinfoExport[] };
  const names = listing.exports.map((entry) => entry['export-name']).sort();
  assert.deepEqual(names, Object.keys(exports).sort());
  const ro = listing.exports.find((entry) => entry['export-name'] === 'ro');
  assert.deepEqual([ro?.['export-size'], ro?.is_read_only], [4 * MIB, true]);
});

test(
  'nbdinfo --map shows base:allocation holes and data',
  { skip: missing('nbdinfo') },
  async () => {
    exports.img.writeSync(MIB, Buffer.alloc(128 * 1024, 1));
    const map = JSON.parse(await runOk('nbdinfo', ['--map', '--json', uri('img')])) as Array<{
      offset: number;
      length: number;
      type: number;
    }>;
    assert.deepEqual(
      map.map((extent) => [extent.offset, extent.length, extent.type]),
      [
        [0, MIB, 3],
        [MIB, 128 * 1024, 0],
        [MIB + 128 * 1024, 8 * MIB - MIB - 128 * 1024, 3],
      ],
    );
    exports.img.writeSync(MIB, Buffer.alloc(128 * 1024, 0));
  },
);

test(
  'qemu-io (writethrough) patterned write, read, flush, write -z, discard, aio',
  { skip: missing('qemu-io') },
  async () => {
    const vol = exports.vol;
    const fuaBefore = vol.stats.fuaWrites;
    await runOk('qemu-io', [
      '-f',
      'raw',
      uri('vol'),
      '-c',
      'write -P 0xab 0 64k',
      '-c',
      'read -P 0xab 0 64k',
      '-c',
      'flush',
      '-c',
      'write -P 0xcd 64k 64k',
      '-c',
      'write -z 64k 32k',
      '-c',
      'discard 128k 64k',
      '-c',
      'aio_write -P 0x11 1M 4k',
      '-c',
      'aio_write -P 0x22 2M 4k',
      '-c',
      'aio_flush',
      '-c',
      'read -P 0x11 1M 4k',
      '-c',
      'read -P 0 64k 32k',
      '-c',
      'read -P 0xcd 96k 32k',
    ]);
    assert.deepEqual(vol.readSync(0, 64 * 1024), Buffer.alloc(64 * 1024, 0xab));
    assert.deepEqual(vol.readSync(64 * 1024, 32 * 1024), Buffer.alloc(32 * 1024, 0));
    assert.deepEqual(vol.readSync(96 * 1024, 32 * 1024), Buffer.alloc(32 * 1024, 0xcd));
    assert.deepEqual(vol.readSync(2 * MIB, 4096), Buffer.alloc(4096, 0x22));
    assert.ok(vol.stats.fuaWrites >= fuaBefore + 4, 'writethrough sends FUA on every write');
    assert.ok(vol.stats.trims >= 1 && vol.stats.zeroes >= 1);
  },
);

test(
  'qemu-io -t writeback writes without FUA and flushes',
  { skip: missing('qemu-io') },
  async () => {
    const vol = exports.vol;
    const fuaBefore = vol.stats.fuaWrites;
    const flushesBefore = vol.stats.flushes;
    await runOk('qemu-io', [
      '-t',
      'writeback',
      '-f',
      'raw',
      uri('vol'),
      '-c',
      'write -P 0x5a 4M 256k',
      '-c',
      'flush',
      '-c',
      'read -P 0x5a 4M 256k',
    ]);
    assert.equal(vol.stats.fuaWrites, fuaBefore);
    assert.ok(vol.stats.flushes > flushesBefore);
    assert.deepEqual(vol.readSync(4 * MIB, 256 * 1024), Buffer.alloc(256 * 1024, 0x5a));
  },
);

test(
  'qemu-io -r reads a read-only export and cannot write it',
  { skip: missing('qemu-io') },
  async () => {
    await runOk('qemu-io', [
      '-r',
      '-f',
      'raw',
      uri('ro'),
      '-c',
      'read -P 0xab 0 64k',
      '-c',
      'read -P 0 64k 64k',
    ]);
    const write = await run('qemu-io', ['-r', '-f', 'raw', uri('ro'), '-c', 'write -P 1 0 4k']);
    assert.notEqual(write.code, 0);
    assert.match(write.stderr + write.stdout, /read-only/i);
    const writable = await run('qemu-io', ['-f', 'raw', uri('ro'), '-c', 'read 0 4k']);
    assert.notEqual(writable.code, 0, 'opening a read-only export read-write is refused');
    assert.deepEqual(exports.ro.readSync(0, 4096), Buffer.alloc(4096, 0xab));
  },
);

test('qemu-img convert into the export, then compare', { skip: missing('qemu-img') }, async () => {
  const source = path.join(workDir, 'img-source.raw');
  const data = randomBytes(8 * MIB);
  data.fill(0, 2 * MIB, 3 * MIB); // a zero run exercises write-zeroes / sparse paths
  writeFileSync(source, data);
  await runOk('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', source, uri('img')]);
  const compare = await runOk('qemu-img', [
    'compare',
    '-f',
    'raw',
    '-F',
    'raw',
    source,
    uri('img'),
  ]);
  assert.match(compare, /identical/);
  assert.ok(exports.img.readSync(0, 8 * MIB).equals(data));
});

test('nbdcopy to and from a file with multi-conn', { skip: missing('nbdcopy') }, async () => {
  const source = path.join(workDir, 'copy-source.raw');
  const target = path.join(workDir, 'copy-target.raw');
  const data = randomBytes(16 * MIB);
  data.fill(0, 4 * MIB, 6 * MIB);
  writeFileSync(source, data);
  const before = transmissions.get('copy') ?? 0;
  await runOk('nbdcopy', ['--flush', '-C', '4', source, uri('copy')]);
  const connections = (transmissions.get('copy') ?? 0) - before;
  assert.ok(
    connections >= 2,
    `nbdcopy used ${connections} connection(s); multi-conn should allow several`,
  );
  assert.ok(exports.copy.readSync(0, 16 * MIB).equals(data));
  await runOk('nbdcopy', ['-C', '4', uri('copy'), target]);
  assert.ok(readFileSync(target).equals(data), 'copied back byte for byte');
});

test(
  'qemu-nbd --list shows every export with flags, block sizes and base:allocation',
  { skip: missing('qemu-nbd') },
  async () => {
    const listing = await runOk('qemu-nbd', ['--list', '-b', '127.0.0.1', '-p', String(port)]);
    assert.match(listing, new RegExp(`exports available: ${Object.keys(exports).length}`));
    assert.match(listing, /export: 'ro'\n\s+size:\s+4194304\n\s+flags: 0x83 \( readonly df \)/);
    assert.match(
      listing,
      /export: 'vol'\n\s+description: qemu-io volume\n\s+size:\s+67108864\n\s+flags: 0x1ed \( flush fua trim zeroes df multi \)/,
    );
    assert.match(listing, /max block: 33554432/);
    assert.match(listing, /base:allocation/);
  },
);

const NBDSH_ERRORS = `
import nbd, json, os, errno
port = os.environ["NBD_PORT"]
def code(fn):
    try:
        fn()
        return "ok"
    except nbd.Error as e:
        return e.errno if isinstance(e.errno, str) else errno.errorcode.get(e.errno, str(e.errno))
h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri("nbd://127.0.0.1:%s/errors" % port)
size = h.get_size()
ro = nbd.NBD()
ro.set_strict_mode(0)
ro.connect_uri("nbd://127.0.0.1:%s/ro" % port)
results = {
  "read_past_end": code(lambda: h.pread(512, size)),
  "read_zero_length": code(lambda: h.pread(0, 0)),
  "write_past_end": code(lambda: h.pwrite(b"x" * 512, size)),
  "zero_past_end": code(lambda: h.zero(512, size)),
  "trim_past_end": code(lambda: h.trim(512, size)),
  "block_status_no_context": code(lambda: h.block_status(512, 0, lambda *a: 0)),
  "read_ok_after_errors": code(lambda: h.pread(512, 0)),
  "ro_write": code(lambda: ro.pwrite(b"x" * 512, 0)),
  "ro_trim": code(lambda: ro.trim(512, 0)),
  "ro_flush": code(lambda: ro.flush()),
  "ro_read": code(lambda: ro.pread(512, 0)),
}
h.shutdown()
ro.shutdown()
print(json.dumps(results))
`;

test(
  'nbdsh (strict mode off) sees EINVAL, ENOSPC and EPERM on the error paths',
  { skip: missing('nbdsh') },
  async () => {
    const output = await runOk('nbdsh', ['-c', NBDSH_ERRORS], {
      PATH: NBDSH_PATH,
      NBD_PORT: String(port),
    });
    assert.deepEqual(JSON.parse(output), {
      read_past_end: 'EINVAL',
      read_zero_length: 'EINVAL',
      write_past_end: 'ENOSPC',
      zero_past_end: 'ENOSPC',
      trim_past_end: 'EINVAL',
      block_status_no_context: 'EINVAL',
      read_ok_after_errors: 'ok',
      ro_write: 'EPERM',
      ro_trim: 'EPERM',
      ro_flush: 'EINVAL',
      ro_read: 'ok',
    });
    assert.equal(exports.errors.allocatedBytes, 0, 'rejected writes stored nothing');
    assert.equal(exports.ro.allocatedBytes, 64 * 1024);
  },
);

const NBDSH_HANDSHAKES = `
import nbd, json, os
port = os.environ["NBD_PORT"]
out = {}
old = nbd.NBD()
old.set_handshake_flags(0)
old.set_request_structured_replies(False)
old.connect_uri("nbd://127.0.0.1:%s/ro" % port)
out["old_protocol"] = old.get_protocol()
out["old_structured"] = old.get_structured_replies_negotiated()
out["old_size"] = old.get_size()
out["old_read"] = old.pread(4, 0).hex()
old.shutdown()
opt = nbd.NBD()
opt.set_opt_mode(True)
opt.connect_uri("nbd://127.0.0.1:%s/" % port)
names = []
opt.opt_list(lambda name, description: names.append(name) or 0)
out["listed"] = sorted(names)
opt.set_export_name("ro")
opt.opt_info()
out["info_size"] = opt.get_size()
out["info_read_only"] = opt.is_read_only()
contexts = []
opt.opt_list_meta_context(lambda name: contexts.append(name) or 0)
out["contexts"] = contexts
opt.opt_abort()
print(json.dumps(out))
`;

test(
  'nbdsh: old EXPORT_NAME path without structured replies, and opt-mode LIST/INFO/ABORT',
  { skip: missing('nbdsh') },
  async () => {
    const output = await runOk('nbdsh', ['-c', NBDSH_HANDSHAKES], {
      PATH: NBDSH_PATH,
      NBD_PORT: String(port),
    });
    assert.deepEqual(JSON.parse(output), {
      old_protocol: 'newstyle',
      old_structured: false,
      old_size: 4 * MIB,
      old_read: 'abababab',
      listed: Object.keys(exports).sort(),
      info_size: 4 * MIB,
      info_read_only: true,
      contexts: ['base:allocation'],
    });
  },
);

function fioNbdMissing(): string | false {
  const fio = missing('fio');
  if (fio) return fio;
  const help = spawnSync('fio', ['--enghelp=nbd'], { encoding: 'utf8', timeout: 10_000 });
  return help.status === 0 ? false : 'this fio build has no nbd ioengine';
}

test(
  'fio (ioengine=nbd) random writes with verification, then two jobs with fsync',
  { skip: fioNbdMissing() },
  async () => {
    await runOk('fio', [
      '--name=verify',
      '--ioengine=nbd',
      `--uri=${uri('fio')}`,
      '--rw=randwrite',
      '--bs=4k',
      '--size=4M',
      '--iodepth=16',
      '--verify=crc32c',
      '--do_verify=1',
      '--verify_state_save=0',
      '--numjobs=1',
    ]);
    await runOk('fio', [
      '--name=t',
      '--ioengine=nbd',
      `--uri=${uri('fio')}`,
      '--rw=randrw',
      '--bs=4k',
      '--size=8M',
      '--iodepth=8',
      '--numjobs=2',
      '--fsync=16',
    ]);
  },
);

test('no warnings were logged by the server during the client runs', () => {
  assert.deepEqual(warnings, []);
});
