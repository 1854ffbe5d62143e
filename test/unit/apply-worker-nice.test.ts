// Retention's merges run in a worker thread of lower priority than ingest's: the thread's own
// nice value changes (Linux keeps one per thread), the process's and the other threads' do not.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { it } from 'node:test';
import { ApplyWorker } from '../../src/manager/apply-pool.js';

/** The nice value of every thread of this process, from /proc. */
function threadNices(): number[] {
  return fs.readdirSync('/proc/self/task').map((tid) => {
    const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
    // Fields after the command's closing parenthesis; nice is field 19 of stat(5).
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[16]);
  });
}

it('a worker made with a nice value runs at it, and only that thread', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-nice-'));
  const before = threadNices();
  const worker = new ApplyWorker({ nice: 7 });
  try {
    const header = { volumeSetId: Buffer.alloc(16), segmentIndex: 1, seqFirst: 1, seqLast: 1 };
    await worker.saveUndo(path.join(dir, 'u'), header, [], []); // spawns the thread
    const after = threadNices();
    assert.equal(after.filter((n) => n === 7).length, 1, `thread nices: ${after.join(',')}`);
    assert.equal(os.getPriority(0), 0, 'the main thread keeps its priority');
    assert.ok(!before.includes(7));
  } finally {
    await worker.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
