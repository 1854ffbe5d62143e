// GET /metrics of a real `rewind up` scraped while nbdsh and qemu-io write: the rewind_ names with
// their volume_set and volume labels, counters and gauges that move by what the clients wrote,
// the apply-duration histograms, promtool's check of the format (when Debian's prometheus package
// is installed), the Grafana dashboard naming only metrics that exist, and the API's token rule
// on a `rewind manager`.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  apiToken,
  bearer,
  BIN,
  exited,
  freePort,
  startRewind,
  startUpProcess,
} from '../support/process.js';

const NBDSH_PATH = `/usr/bin:${process.env['PATH'] ?? ''}`;
const missing = ['qemu-io', 'nbdsh'].filter(
  (t) => spawnSync('which', [t], { env: { ...process.env, PATH: NBDSH_PATH } }).status !== 0,
);
const skip = missing.length > 0 ? `missing ${missing.join(', ')}` : false;
const hasPromtool = spawnSync('which', ['promtool']).status === 0;

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** The text format parsed on its own (not with prom-client): samples, and the TYPE of each family. */
function parse(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split('\n')) {
    const type = /^# TYPE (\S+) (\S+)$/.exec(line);
    if (type) types.set(type[1] as string, type[2] as string);
    if (line === '' || line.startsWith('#')) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    assert.ok(match, `a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g))
      labels[pair[1] as string] = pair[2] as string;
    samples.push({ name: match[1] as string, labels, value: Number(match[3]) });
  }
  return { samples, types };
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  assert.equal(found.length, 1, `one sample ${name} ${JSON.stringify(labels)}: ${found.length}`);
  return (found[0] as Sample).value;
}

test(
  'GET /metrics: names, labels and counters that move while clients write',
  { skip },
  async (t) => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-metrics-'));
    const [nbd, http] = [await freePort(), await freePort()];
    let child: ChildProcess | undefined;
    const scrape = async (): Promise<{
      text: string;
      samples: Sample[];
      types: Map<string, string>;
    }> => {
      const response = await fetch(`http://127.0.0.1:${http}/metrics`, {
        headers: bearer(apiToken(path.join(dir, 'data'))),
      });
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      const text = await response.text();
      return { text, ...parse(text) };
    };
    try {
      child = await startUpProcess([
        '--data',
        path.join(dir, 'data'),
        '--nbd',
        `127.0.0.1:${nbd}`,
        '--http',
        `127.0.0.1:${http}`,
        '--volume',
        'v:8M',
        '--volume',
        'w:2M',
        '--seal-ms',
        '100',
      ]);
      const first = await scrape();
      const set = { volume_set: 'default' };
      for (const [name, type] of [
        ['rewind_writes_captured_total', 'counter'],
        ['rewind_bytes_captured_total', 'counter'],
        ['rewind_writes_committed_total', 'counter'],
        ['rewind_seq_captured', 'gauge'],
        ['rewind_seq_committed', 'gauge'],
        ['rewind_lag_seconds', 'gauge'],
        ['rewind_spool_bytes', 'gauge'],
        ['rewind_journal_bytes', 'gauge'],
        ['rewind_degraded', 'gauge'],
        ['rewind_apply_duration_seconds', 'histogram'],
        ['rewind_transaction_duration_seconds', 'histogram'],
      ] as const)
        assert.equal(first.types.get(name), type, `${name} is a ${type}`);
      assert.equal(value(first.samples, 'rewind_seq_committed', set), 0);
      assert.equal(value(first.samples, 'rewind_degraded', set), 0);
      assert.equal(value(first.samples, 'rewind_agent_connected', set), 1);
      assert.equal(value(first.samples, 'rewind_mode', { ...set, mode: 'logging' }), 1);
      assert.equal(
        value(first.samples, 'rewind_volume_size_bytes', { ...set, volume: 'v' }),
        8 << 20,
      );
      for (const s of first.samples.filter(
        (s) =>
          s.name.startsWith('rewind_') &&
          !s.name.startsWith('rewind_process') &&
          !s.name.startsWith('rewind_nodejs'),
      ))
        assert.equal(s.labels['volume_set'], 'default', `${s.name} has the volume_set label`);

      // 300 writes of 4 KiB on v, 20 ms apart, scraped while they run: seq_captured only rises.
      const writing = new Promise<void>((resolve, reject) => {
        const nbdsh: ChildProcess = spawn(
          'nbdsh',
          [
            '-u',
            `nbd://127.0.0.1:${nbd}/v`,
            '-c',
            'import time\nfor i in range(300):\n    h.pwrite(b"\\x5a" * 4096, i * 4096)\n    time.sleep(0.003)\n',
          ],
          { env: { ...process.env, PATH: NBDSH_PATH }, stdio: 'ignore' },
        );
        const timer = setTimeout(() => nbdsh.kill('SIGKILL'), 60_000);
        nbdsh.once('exit', (code) => {
          clearTimeout(timer);
          if (code === 0) resolve();
          else reject(new Error(`nbdsh exited ${code}`));
        });
      });
      let done = false;
      void writing.then(
        () => (done = true),
        () => (done = true),
      );
      const seen: number[] = [];
      for (let polls = 0; !done; polls++) {
        assert.ok(polls < 600, 'the writes end');
        seen.push(value((await scrape()).samples, 'rewind_seq_captured', set));
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      await writing;
      assert.deepEqual(
        [...seen].sort((a, b) => a - b),
        seen,
        'seq_captured never goes back',
      );
      assert.ok(new Set(seen).size >= 2, `seq_captured moved while writing: ${seen.join(' ')}`);
      execFileSync(
        'qemu-io',
        [
          '-f',
          'raw',
          `nbd://127.0.0.1:${nbd}/w`,
          '-c',
          'write -P 1 0 64k',
          '-c',
          'write -z 64k 64k',
        ],
        {
          timeout: 60_000,
        },
      );
      execFileSync(process.execPath, [BIN, 'seal', '--wait'], {
        env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
        timeout: 60_000,
      });
      const last = await scrape();
      const v = { ...set, volume: 'v' };
      const w = { ...set, volume: 'w' };
      assert.equal(value(last.samples, 'rewind_writes_captured_total', v), 300);
      assert.equal(value(last.samples, 'rewind_bytes_captured_total', v), 300 * 4096);
      assert.equal(value(last.samples, 'rewind_writes_captured_total', w), 2);
      assert.equal(value(last.samples, 'rewind_bytes_captured_total', w), 128 * 1024); // the zeroes count
      assert.equal(value(last.samples, 'rewind_writes_committed_total', v), 300);
      assert.equal(value(last.samples, 'rewind_bytes_committed_total', w), 64 * 1024); // zeroes carry no payload
      assert.equal(value(last.samples, 'rewind_seq_captured', set), 302);
      assert.equal(value(last.samples, 'rewind_seq_committed', set), 302);
      assert.equal(value(last.samples, 'rewind_lag_writes', set), 0);
      assert.equal(value(last.samples, 'rewind_lag_seconds', set), 0);
      const transactions = value(last.samples, 'rewind_transactions', set);
      assert.ok(transactions >= 2, `several transactions: ${transactions}`);
      assert.equal(value(last.samples, 'rewind_apply_duration_seconds_count', set), transactions);
      assert.equal(
        value(last.samples, 'rewind_transaction_duration_seconds_count', set),
        transactions,
      );
      assert.equal(
        value(last.samples, 'rewind_transactions_committed_total', { ...set, kind: 'redo' }),
        transactions,
      );
      // The journal holds every payload byte at least once (redo) plus the undo of what they overwrote.
      assert.ok(value(last.samples, 'rewind_journal_bytes', set) > 300 * 4096 + 64 * 1024);

      // The dashboard names only metrics this endpoint exports.
      const dashboard = fs.readFileSync('docs/grafana/rewind.json', 'utf8');
      JSON.parse(dashboard);
      const families = new Set(last.samples.map((s) => s.name));
      for (const name of new Set(dashboard.match(/rewind_[a-z_]+/g) ?? []))
        assert.ok(
          families.has(name),
          `docs/grafana/rewind.json uses ${name}, which /metrics exports`,
        );

      await t.test(
        'promtool check metrics accepts the text',
        { skip: hasPromtool ? false : 'promtool is not installed (apt-get install prometheus)' },
        () => {
          const checked = spawnSync('promtool', ['check', 'metrics'], {
            input: last.text,
            timeout: 30_000,
          });
          assert.equal(
            checked.status,
            0,
            `promtool check metrics: ${checked.stdout.toString()}${checked.stderr.toString()}`,
          );
        },
      );

      // The CLI's console commands on the same history: 300 writes of 4 KiB at i * 4 KiB on v
      // (seqs 1..300), then on w a write and a zero (301, 302).
      const cli = (...args: string[]): { stdout: string; stderr: string } => {
        const result = spawnSync(process.execPath, [BIN, ...args], {
          env: { ...process.env, REWIND_SERVER: `http://127.0.0.1:${http}` },
          timeout: 60_000,
        });
        assert.equal(result.status, 0, `rewind ${args.join(' ')}: ${result.stderr.toString()}`);
        return { stdout: result.stdout.toString(), stderr: result.stderr.toString() };
      };
      const page = cli('log', '--from', '101', '--limit', '50', '--json');
      const seqs = page.stdout
        .trim()
        .split('\n')
        .map((line) => (JSON.parse(line) as { seq: number; offset: number }).seq);
      assert.deepEqual(
        seqs,
        Array.from({ length: 50 }, (_, i) => 101 + i),
      );
      assert.match(page.stderr, /more: rewind log --from 151 --limit 50/);
      const timeline = JSON.parse(cli('timeline', '--buckets', '40', '--json').stdout) as {
        writes: number[];
        bytes: number[];
        seqFirst: number;
        seqLast: number;
      };
      assert.equal(
        timeline.writes.reduce((a, b) => a + b, 0),
        302,
      );
      assert.equal(
        timeline.bytes.reduce((a, b) => a + b, 0),
        300 * 4096 + 64 * 1024,
      );
      assert.deepEqual([timeline.seqFirst, timeline.seqLast], [1, 302]);
      assert.match(cli('timeline').stdout, /302 writes \(seq 1\.\.302\)/);
      const map = JSON.parse(
        cli('blockmap', 'v', '--from', '100', '--to', '200', '--cells', '2048', '--json').stdout,
      ) as {
        cellBytes: number;
        writes: number[];
        changedBytes: number;
      };
      assert.equal(map.cellBytes, 4096);
      const expectedCells = map.writes.map((_, cell) => (cell >= 100 && cell < 200 ? 1 : 0));
      assert.deepEqual(map.writes, expectedCells, 'writes 101..200 touched blocks 100..199');
      assert.equal(map.changedBytes, 100 * 4096);
      const point = JSON.parse(cli('point', '7', '--json').stdout) as { seq: number };
      assert.equal(point.seq, 7);
      assert.match(cli('history', 'v', '--range', '8K:4K', '--limit', '1').stdout, /^3\t/);
    } finally {
      if (child && child.exitCode === null) {
        const gone = new Promise((resolve) => child?.once('exit', resolve));
        child.kill('SIGTERM');
        await gone;
      }
      fs.rmSync(dir, { recursive: true, force: true });
    }
  },
);

test('GET /metrics follows the API token rule: rewind manager needs the token', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-metrics-token-'));
  const http = await freePort();
  const manager = startRewind([
    'manager',
    '--data',
    dir,
    '--listen',
    `127.0.0.1:${await freePort()}`,
    '--nbd',
    `127.0.0.1:${await freePort()}`,
    '--http',
    `127.0.0.1:${http}`,
    '--token',
    'link-secret',
  ]);
  try {
    for (let waited = 0; !manager.out().includes('API:'); waited += 50) {
      assert.ok(
        waited < 30_000 && manager.child.exitCode === null,
        `manager started: ${manager.out()}`,
      );
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    const token = fs.readFileSync(path.join(dir, 'api-token'), 'utf8').trim();
    const url = `http://127.0.0.1:${http}/metrics`;
    assert.equal((await fetch(url)).status, 401);
    assert.equal((await fetch(url, { headers: { authorization: 'Bearer wrong' } })).status, 401);
    const response = await fetch(url, { headers: { authorization: `Bearer ${token}` } });
    assert.equal(response.status, 200);
    const { samples } = parse(await response.text());
    assert.equal(value(samples, 'rewind_agent_connected', { volume_set: 'none' }), 0);
    assert.equal(value(samples, 'rewind_info', { volume_set: 'none', role: 'manager' }), 1);
    // The console's page loads without the token (it asks for one); the API behind it does not.
    assert.equal((await fetch(`http://127.0.0.1:${http}/`)).status, 200);
    assert.equal((await fetch(`http://127.0.0.1:${http}/api/overview`)).status, 401);
  } finally {
    manager.child.kill('SIGTERM');
    await exited(manager);
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
