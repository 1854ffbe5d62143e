// A sealed segment that rots in the agent's spool before it ships: the manager (split deployment,
// in-process) commits segment 1 and goes away, the agent (restarted) seals segment 2 and one bit of
// it flips on disk; when the manager is back it refuses segment 2 with a named code and its history stays
// exactly as it was, while the agent keeps the file byte for byte (also after it stops) and reports
// the refusal in its status.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { crc32c } from '../../src/core/index.js';
import { RECORD_HEADER_BYTES, REDO_HEADER_BYTES } from '../../src/log/index.js';
import { startAgent, startManager, type Running } from '../../src/runtime/up.js';

const TOKEN = 'corruption-agent-token';
const ANY = { host: '127.0.0.1', port: 0 };
const VOLUME_BYTES = 1024 * 1024;

function call(fn: (done: (errno: number) => void) => void): Promise<void> {
  return new Promise((resolve, reject) =>
    fn((errno) => (errno === 0 ? resolve() : reject(new Error(`errno ${errno}`)))),
  );
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let waited = 0; !check(); waited += 20) {
    assert.ok(waited < 15_000, `timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface ManagerStatus {
  seqCommitted: number;
  transactions: number;
  failure: string | null;
  agentConnected: boolean;
}

type ManagerRun = Running & { linkAddress: { host: string; port: number } };

/** What a refused segment must not change: catalog rows, transaction files, replica bytes. */
function history(run: ManagerRun, dataDir: string): string {
  const manager = run.manager;
  assert.ok(manager);
  const status = manager.status() as ManagerStatus;
  const txs = manager.catalog
    .committedTxs()
    .map((t) => `${t.idx}:${t.seqFirst}..${t.seqLast}:${t.redoCrc}:${t.state}`);
  const files = ['redo', 'undo'].flatMap((sub) =>
    fs.readdirSync(path.join(dataDir, 'manager', sub)).map((name) => `${sub}/${name}`),
  );
  const replicas = manager.replicas.map((r) => `${r.name}:${crc32c(fs.readFileSync(r.file))}`);
  return JSON.stringify({
    seqCommitted: status.seqCommitted,
    transactions: status.transactions,
    uncommitted: manager.catalog.uncommitted().length,
    txs,
    files,
    replicas,
  });
}

describe('a spool segment corrupted after sealing', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-corruption-agent-'));
  const managerDir = path.join(dir, 'm');
  const spoolDir = path.join(dir, 'a', 'agent', 'spool');
  let agent: Running | undefined;
  let manager: ManagerRun | undefined;
  let historyBefore = '';
  let spoolFile = '';
  let corrupted = Buffer.alloc(0);

  const startTheManager = async (port: number): Promise<ManagerRun> =>
    startManager({
      dataDir: managerDir,
      listen: { host: '127.0.0.1', port },
      nbd: ANY,
      http: ANY,
      token: TOKEN,
      quiet: true,
    });
  const startTheAgent = async (port: number): Promise<Running> =>
    startAgent({
      dataDir: path.join(dir, 'a'),
      nbd: ANY,
      manager: { host: '127.0.0.1', port },
      token: TOKEN,
      volumes: [{ name: 'db', sizeBytes: VOLUME_BYTES }],
      sealBytes: 1 << 20,
      sealMs: 60_000,
      quiet: true,
    });
  const managerStatus = (): ManagerStatus => manager?.manager?.status() as ManagerStatus;
  const write = (offset: number, data: Buffer): Promise<void> => {
    const volume = agent?.agent?.exports()[0];
    assert.ok(volume);
    return call((done) => volume.write(offset, data, true, done));
  };

  before(async () => {
    manager = await startTheManager(0);
    const port = manager.linkAddress.port;
    agent = await startTheAgent(port);

    // Segment 1 ships and commits.
    await write(0, Buffer.alloc(4096, 0x11));
    assert.equal(await agent.agent?.seal(), 1);
    await until(
      'segment 1 is committed and released',
      () => managerStatus().seqCommitted === 1 && agent?.agent?.status().sealedPending === 0,
    );
    historyBefore = history(manager, managerDir);
    // Both stop (the agent first: Manager.close() waits for a connected agent to go away), and the
    // agent comes back while the manager stays away.
    await agent.close();
    await manager.close();
    manager = undefined;
    agent = await startTheAgent(port);

    // Segment 2 is sealed while the manager is away, then one bit of its first payload flips on disk.
    await write(8192, Buffer.alloc(4096, 0x22));
    await write(0, Buffer.alloc(512, 0x33));
    assert.equal(await agent.agent?.seal(), 3);
    const sealed = fs.readdirSync(spoolDir).filter((name) => name.endsWith('.redo'));
    assert.deepEqual(sealed, ['0000000000000002.redo']);
    spoolFile = path.join(spoolDir, sealed[0] as string);
    corrupted = fs.readFileSync(spoolFile);
    const at = REDO_HEADER_BYTES + RECORD_HEADER_BYTES + 1000;
    corrupted[at] = (corrupted[at] as number) ^ 0x04;
    fs.writeFileSync(spoolFile, corrupted);

    manager = await startTheManager(port);
    await until(
      'the agent reconnects and reports the refusal',
      () => managerStatus().agentConnected && managerStatus().failure !== null,
    );
  });

  after(async () => {
    await agent?.close();
    await manager?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });

  it('the manager refuses it with a named code and its history is unchanged', () => {
    assert.ok(manager);
    assert.match(
      managerStatus().failure ?? '',
      /^segment 2 refused by the manager: REWIND_SEGMENT_CORRUPT: segment 2 from agent at byte \d+: payload crc32c/,
    );
    assert.equal(history(manager, managerDir), historyBefore);
    const view = manager.manager?.replicas[0];
    assert.ok(view);
    const replica = fs.readFileSync(view.file);
    assert.ok(
      replica.subarray(0, 4096).equals(Buffer.alloc(4096, 0x11)),
      'the replica holds segment 1 only',
    );
    assert.ok(
      replica.subarray(8192, 12288).equals(Buffer.alloc(4096)),
      'nothing of segment 2 was applied',
    );
  });

  it('the agent reports the refusal in agent.status().failure', () => {
    assert.match(agent?.agent?.status().failure ?? '', /REWIND_SEGMENT_CORRUPT/);
  });

  it('the agent keeps the refused file unchanged, also after it stops', async () => {
    await new Promise((r) => setTimeout(r, 1000)); // several status rounds: nothing resends or deletes it
    assert.equal(agent?.agent?.status().sealedPending, 1);
    assert.ok(fs.readFileSync(spoolFile).equals(corrupted));
    assert.equal(managerStatus().seqCommitted, 1);
    await agent?.close();
    agent = undefined;
    assert.ok(fs.readFileSync(spoolFile).equals(corrupted));
  });
});
