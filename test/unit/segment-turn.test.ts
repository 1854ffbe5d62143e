// Every outcome of a segment's turn reaches the agent: a turn that fails with an operating error
// that is not a full or failing disk (here a RewindError from the replica writes) is refused
// with its code, shows in the agent's status and the manager's, and loses nothing: a restart of
// the manager finishes the transaction from its durable state.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { Agent } from '../../src/agent/index.js';
import { RewindError } from '../../src/core/index.js';
import { InThreadApply } from '../../src/manager/apply-pool.js';
import { Manager } from '../../src/manager/index.js';

/** Replica writes that fail as a corrupt transaction file would make them fail. */
class FailingApply extends InThreadApply {
  override writeRedo(): Promise<void> {
    return Promise.reject(
      new RewindError('REWIND_SEGMENT_CORRUPT', 'redo file holds 0 bytes, expected 4160'),
    );
  }
}

async function until(what: string, check: () => boolean, timeoutMs = 15_000): Promise<void> {
  for (let waited = 0; !check(); waited += 20) {
    assert.ok(waited < timeoutMs, `timed out waiting: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function write(agent: Agent, offset: number, data: Buffer): Promise<number> {
  const [volume] = agent.exports();
  return new Promise((resolve) => volume!.write(offset, data, false, resolve));
}

describe('a segment turn that fails', () => {
  it('is refused to the agent with its code, and nothing is lost', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-turn-'));
    const logged: string[] = [];
    const log = (_level: string, message: string): void => void logged.push(message);
    let manager = await Manager.open({
      dataDir: dir,
      token: 't',
      log,
      applier: new FailingApply(),
    });
    let agent: Agent | undefined;
    try {
      const link = await manager.listen('127.0.0.1', 0);
      agent = await Agent.open({
        dataDir: dir,
        volumes: [{ name: 'v', sizeBytes: 1024 * 1024 }],
        sealBytes: 1024 * 1024,
        sealMs: 60_000,
        manager: { host: '127.0.0.1', port: link.port, token: 't' },
        log,
      });
      await until('connected', () => manager.agentConnected);
      assert.equal(await write(agent, 4096, Buffer.alloc(4096, 7)), 0);
      await agent.seal();
      const status = (): string => agent?.status().failure ?? '';
      await until('the agent reports the refusal', () => /REWIND_SEGMENT_CORRUPT/.test(status()));
      assert.match(status(), /segment 1 refused by the manager/);
      assert.ok(logged.some((line) => /refused segment 1: failed in its turn/.test(line)));
      await until('the manager shows it', () =>
        /REWIND_SEGMENT_CORRUPT/.test(manager.status().failure ?? ''),
      );
      assert.equal(manager.seqCommitted(), 0, 'nothing committed');
      await agent.close();
      agent = undefined;
      await manager.close();
      // The transaction was cataloged as undo-saved before the replica writes failed: a manager
      // with working replica writes finishes it at start.
      manager = await Manager.open({ dataDir: dir, token: 't', log, applier: new InThreadApply() });
      assert.equal(manager.seqCommitted(), 1);
      const replica = fs.readFileSync(manager.replicas[0]!.file);
      assert.deepEqual(replica.subarray(4096, 8192), Buffer.alloc(4096, 7));
    } finally {
      await agent?.close();
      await manager.close();
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
