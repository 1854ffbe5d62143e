// The web console in a real browser (Debian's chromium driven by playwright-core, nothing
// downloaded) against one real `rewind up`, with real NBD clients writing and reading: empty and
// error states; the overview's numbers moving while nbdsh writes, without a reload; the timeline
// zoomed by dragging down to single writes; a snapshot opened at a clicked moment, read with
// nbdcopy and compared with a model replay, stepped by button and key and compared again; a
// restore run from the page (dry-run figures checked against the model, the confirmation, the
// undo point) leaving production equal to the model; the block map and a range's history; and the
// token asked for by a `rewind manager` that needs one. Screenshots go to a temp directory.
import assert from 'node:assert/strict';
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { replay, type ModelWrite } from '../support/model.js';
import {
  apiToken,
  bearer,
  BIN,
  exited,
  freePort,
  startRewind,
  startUpProcess,
  type RewindProcess,
} from '../support/process.js';

const CHROMIUM = '/usr/bin/chromium';
const NBDSH_PATH = `/usr/bin:${process.env['PATH'] ?? ''}`;
const KiB = 1024;
const MiB = 1024 * KiB;
const SIZES = [8 * MiB, 2 * MiB]; // volumes v and w
const SLOW_WRITES = 40;
const BURST_WRITES = 2000;
/** Every wait in the page is bounded by this. */
const WAIT_MS = 30_000;

const tools = ['qemu-io', 'nbdcopy', 'nbdsh'].filter(
  (t) => spawnSync('which', [t], { env: { ...process.env, PATH: NBDSH_PATH } }).status !== 0,
);
const skip = !fs.existsSync(CHROMIUM)
  ? `${CHROMIUM} is missing (apt-get install chromium)`
  : tools.length > 0
    ? `missing ${tools.join(', ')}`
    : false;

/** The writes the clients make, in seq order: the model the browser's results are checked against. */
function modelWrites(): ModelWrite[] {
  const writes: ModelWrite[] = [];
  for (let i = 0; i < SLOW_WRITES; i++)
    writes.push(dataWrite(writes.length + 1, 0, i * 64 * KiB, 4 * KiB, i + 1));
  for (let k = 0; k < BURST_WRITES; k++)
    writes.push(
      dataWrite(writes.length + 1, 0, ((k * 7919) % 2048) * 4 * KiB, 4 * KiB, (k % 251) + 1),
    );
  writes.push(dataWrite(writes.length + 1, 1, 0, 64 * KiB, 0x77));
  return writes;
}

function dataWrite(
  seq: number,
  volume: number,
  offset: number,
  length: number,
  byte: number,
): ModelWrite {
  return { seq, volume, kind: 'write', offset, length, data: Buffer.alloc(length, byte) };
}

const SLOW_SCRIPT = `
import time
for i in range(${SLOW_WRITES}):
    h.pwrite(bytes([i + 1]) * 4096, i * 65536)
    time.sleep(0.05)
`;
const BURST_SCRIPT = `
for k in range(${BURST_WRITES}):
    h.pwrite(bytes([k % 251 + 1]) * 4096, ((k * 7919) % 2048) * 4096)
`;

function nbdsh(uri: string, script: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('nbdsh', ['-u', uri, '-c', script], {
      env: { ...process.env, PATH: NBDSH_PATH },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let err = '';
    child.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.once('exit', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new Error(`nbdsh exited ${code}: ${err}`));
    });
  });
}

function usFromIso(text: string): number {
  const fraction = /\.(\d+)Z$/.exec(text)?.[1] ?? '';
  return (
    Date.parse(text.replace(/\.\d+Z$/, 'Z')) * 1000 + Number(fraction.padEnd(6, '0').slice(0, 6))
  );
}

/** Bytes of the merged ranges of `writes` (what a restore writes back, from the log). */
function mergedBytes(writes: ModelWrite[]): number {
  const ranges = writes
    .map((w) => [w.offset, w.offset + w.length] as const)
    .sort((a, b) => a[0] - b[0]);
  let total = 0;
  let end = -1;
  for (const [start, stop] of ranges) {
    if (start > end) total += stop - start;
    else if (stop > end) total += stop - end;
    end = Math.max(end, stop);
  }
  return total;
}

describe('the web console in chromium', { skip }, () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-console-'));
  const shots = fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-console-shots-'));
  const writes = modelWrites();
  let up: ChildProcess | undefined;
  let context: BrowserContext | undefined;
  let page: Page;
  let base = '';
  let nbdPort = 0;
  let httpPort = 0;
  let times: number[] = []; // capture time (µs) of each seq, from the log
  const pageErrors: string[] = [];

  /** A screenshot of what the viewport shows (or the whole page). */
  const shot = async (name: string, options: { fullPage?: boolean } = {}): Promise<void> => {
    await page.screenshot({ path: path.join(shots, `${name}.png`), ...options });
  };
  const text = async (selector: string): Promise<string> =>
    (await page.locator(selector).first().textContent({ timeout: WAIT_MS })) ?? '';
  let token = '';
  const api = async <T>(route: string): Promise<T> =>
    (await (await fetch(`${base}${route}`, { headers: bearer(token) })).json()) as T;
  const copy = (name: string): Buffer => {
    const file = path.join(dir, `${name.replace('@', '-')}.img`);
    execFileSync('nbdcopy', [`nbd://127.0.0.1:${nbdPort}/${name}`, file], { timeout: 60_000 });
    const bytes = fs.readFileSync(file);
    fs.rmSync(file);
    return bytes;
  };
  const model = (seq: number, volume = 0): Buffer => replay(SIZES, writes, seq)[volume] as Buffer;
  const open = async (hash: string): Promise<void> => {
    await page.goto(`${base}/${hash}`);
    await page.waitForSelector('.screen', { timeout: WAIT_MS });
  };
  /** The chart's plot area and window, to turn a capture time into a pixel. */
  const chart = async (): Promise<{
    xOf: (us: number) => number;
    y: number;
    fromUs: number;
    toUs: number;
  }> => {
    const element = page.locator('[data-testid=chart]');
    const fromUs = Number(await element.getAttribute('data-from-us', { timeout: WAIT_MS }));
    const toUs = Number(await element.getAttribute('data-to-us'));
    const box = await page.locator('.u-over').boundingBox({ timeout: WAIT_MS });
    assert.ok(box, 'the chart has a plot area');
    return {
      xOf: (us) => box.x + ((us - fromUs) / (toUs - fromUs)) * box.width,
      y: box.y + box.height / 2,
      fromUs,
      toUs,
    };
  };
  /** Drags across the chart from one capture time to another, then waits for that window. */
  const zoomTo = async (fromUs: number, toUs: number): Promise<void> => {
    const { xOf, y } = await chart();
    await page.mouse.move(xOf(fromUs), y);
    await page.mouse.down();
    await page.mouse.move(xOf(toUs), y, { steps: 8 });
    await page.mouse.up();
    await page.waitForFunction(
      ({ from, to }) => {
        // The new window is shown (a pixel of the old one is the precision of a drag).
        const element = document.querySelector<HTMLElement>('[data-testid=chart]');
        const shown = Number(element?.dataset.fromUs);
        const asked = Number(new URLSearchParams(location.hash.split('?')[1] ?? '').get('from'));
        return shown === asked && Math.abs(shown - from) < (to - from) / 4;
      },
      { from: fromUs, to: toUs },
      { timeout: WAIT_MS },
    );
  };
  const seqsInTable = async (): Promise<number[]> =>
    (await page.locator('[data-testid=writes] tbody tr td:first-child').allTextContents()).map(
      Number,
    );

  before(async () => {
    nbdPort = await freePort();
    httpPort = await freePort();
    up = await startUpProcess([
      '--data',
      path.join(dir, 'data'),
      '--nbd',
      `127.0.0.1:${nbdPort}`,
      '--http',
      `127.0.0.1:${httpPort}`,
      '--volume',
      `v:${SIZES[0]}`,
      '--volume',
      `w:${SIZES[1]}`,
      '--seal-ms',
      '100',
    ]);
    base = `http://127.0.0.1:${httpPort}`;
    token = apiToken(path.join(dir, 'data'));
    context = await chromium.launchPersistentContext(fs.mkdtempSync(path.join(dir, 'profile-')), {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      viewport: { width: 1280, height: 900 },
      timeout: WAIT_MS,
    });
    page = context.pages()[0] ?? (await context.newPage());
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (error) => pageErrors.push(error.message));
    // The console URL `rewind up` prints: the page keeps the token for this tab.
    await page.goto(`${base}/#token=${encodeURIComponent(token)}`);
    await page.waitForSelector('.screen', { timeout: WAIT_MS });
  });

  after(async () => {
    await context?.close();
    if (up && up.exitCode === null) {
      const gone = new Promise((resolve) => up?.once('exit', resolve));
      up.kill('SIGTERM');
      await gone;
    }
    fs.rmSync(dir, { recursive: true, force: true });
    console.log(`# console screenshots: ${shots}`);
  });

  test('empty and error states render', async () => {
    await open('#/overview');
    await page.waitForSelector('text=No writes yet');
    assert.equal(await text('[data-testid=seq-committed]'), '0');
    await shot('empty-overview');
    await open('#/timeline');
    await page.waitForSelector('text=No writes yet');
    await open('#/point?at=5');
    await page.waitForSelector('.error[data-code=REWIND_POINT_INVALID]');
    assert.match(await text('.error'), /seq 5 is not committed yet/);
    await shot('error-point');
    await open('#/restore');
    await page.click('text=Dry run');
    await page.waitForSelector('.error[data-code=REWIND_BAD_ARGUMENT]');
    assert.match(await text('.error'), /give either --at POINT or --from-clone NAME/);
    await open('#/no-such-screen');
    await page.waitForSelector('text=No such screen');
    await open('#/view?name=missing');
    await page.waitForSelector('text=No snapshot or clone named "missing"');
  });

  test("the overview's numbers change while a client writes, without a reload", async () => {
    await open('#/overview');
    await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
    const seen = new Set<string>();
    const writing = nbdsh(`nbd://127.0.0.1:${nbdPort}/v`, SLOW_SCRIPT);
    let done = false;
    void writing.then(() => (done = true));
    for (
      let waited = 0;
      !done || (await text('[data-testid=seq-committed]')) !== String(SLOW_WRITES);
      waited += 100
    ) {
      assert.ok(
        waited < WAIT_MS,
        `the overview reached seq ${SLOW_WRITES}: saw ${[...seen].join(', ')}`,
      );
      seen.add(await text('[data-testid=seq-captured]'));
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    await writing;
    const values = [...seen].map(Number);
    assert.ok(values.length >= 4, `the captured seq moved while writing: ${values.join(', ')}`);
    assert.ok(
      values.some((v) => v > 0 && v < SLOW_WRITES),
      `intermediate values: ${values.join(', ')}`,
    );
    assert.equal(await page.evaluate(() => (window as unknown as { marker?: number }).marker), 42);
    assert.equal(await text('[data-testid=seq-captured]'), String(SLOW_WRITES));
    assert.equal(await text('[data-testid=lag]'), '0 writes');
    assert.equal(await text('[data-testid=feed-state]'), 'live');
    await shot('overview');
    const bookmark = await fetch(`${base}/api/bookmarks`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...bearer(token) },
      body: JSON.stringify({ name: 'before-burst', at: String(SLOW_WRITES) }),
    });
    assert.equal(bookmark.status, 201);
    // The rest of the history: a burst on v, then one write on w.
    await nbdsh(`nbd://127.0.0.1:${nbdPort}/v`, BURST_SCRIPT);
    execFileSync(
      'qemu-io',
      ['-f', 'raw', `nbd://127.0.0.1:${nbdPort}/w`, '-c', 'write -P 0x77 0 64k'],
      {
        timeout: 60_000,
      },
    );
    execFileSync(process.execPath, [BIN, 'seal', '--wait'], {
      env: { ...process.env, REWIND_SERVER: base },
      timeout: 60_000,
    });
    await page.waitForFunction(
      (seq) => document.querySelector('[data-testid=seq-committed]')?.textContent === seq,
      writes.length.toLocaleString('en-US'),
    );
    const log = await fetch(`${base}/api/log?from=1&limit=${writes.length}`, {
      headers: bearer(token),
    }).then((r) => r.text());
    const entries = log
      .split('\n')
      .filter((line) => line)
      .map(
        (line) =>
          JSON.parse(line) as {
            seq: number;
            offset: number;
            length: number;
            volume: string;
            time: string;
          },
      );
    assert.equal(entries.length, writes.length);
    entries.forEach((e, i) => {
      const w = writes[i] as ModelWrite;
      assert.deepEqual(
        [e.seq, e.volume, e.offset, e.length],
        [w.seq, ['v', 'w'][w.volume], w.offset, w.length],
      );
    });
    times = [0, ...entries.map((e) => usFromIso(e.time))];
  });

  test('the timeline zooms from the whole history down to single writes', async () => {
    await open('#/timeline');
    await page.waitForSelector('[data-testid=chart][data-from-us]');
    assert.notEqual(await page.getAttribute('[data-testid=chart]', 'data-resolution'), 'single');
    assert.match(
      await text('[data-testid=window-writes]'),
      new RegExp(`^${writes.length.toLocaleString('en-US')} writes`),
    );
    await shot('timeline');
    const t = (seq: number): number => times[seq] as number;
    // Writes 1..20, listed one by one. The writes are at least 50 ms apart and a drag is precise
    // to a pixel (a few ms of the whole history), so each window has 25 ms to spare.
    await zoomTo(t(1) - 25_000, t(20) + 25_000);
    await page.waitForSelector('[data-testid=chart][data-resolution=single]');
    await page.waitForFunction(
      () => document.querySelectorAll('[data-testid=writes] tbody tr').length === 20,
    );
    assert.deepEqual(
      await seqsInTable(),
      Array.from({ length: 20 }, (_, i) => i + 1),
    );
    // One write alone in the window: seq 7, at 6 * 64 KiB.
    await zoomTo(t(7) - 20_000, t(7) + 20_000);
    await page.waitForFunction(
      () => document.querySelectorAll('[data-testid=writes] tbody tr').length === 1,
    );
    assert.deepEqual(await seqsInTable(), [7]);
    const row = await page
      .locator('[data-testid=writes] tbody tr')
      .first()
      .locator('td')
      .allTextContents();
    assert.equal(row[4], String(6 * 64 * KiB));
    assert.match(await text('[data-testid=resolution]'), /single writes/);
    await shot('timeline-single-write');
    // The keyboard zooms back out (4 times wider each press) until the neighbours are in again.
    for (let press = 0; (await seqsInTable()).length === 1; press++) {
      assert.ok(press < 4, 'zooming out brings in the writes around seq 7');
      const width = async (): Promise<number> => {
        const { fromUs, toUs } = await chart();
        return toUs - fromUs;
      };
      const before = await width();
      await page.locator('body').press('-');
      await page.waitForFunction((narrow) => {
        const element = document.querySelector<HTMLElement>('[data-testid=chart]');
        return Number(element?.dataset.toUs) - Number(element?.dataset.fromUs) > 3 * narrow;
      }, before);
      await page.waitForFunction(() => !document.querySelector('[data-testid=writes] .loading'));
    }
    assert.ok((await seqsInTable()).includes(7));
  });

  test('a snapshot opened at a clicked moment equals the model; stepped, it still does', async () => {
    await open('#/timeline');
    await page.waitForSelector('[data-testid=chart][data-from-us]');
    const t = (seq: number): number => times[seq] as number;
    await zoomTo(t(10) - 25_000, t(14) + 25_000);
    await page.waitForFunction(
      () => document.querySelectorAll('[data-testid=writes] tbody tr').length === 5,
    );
    // Between write 12 and write 13: the moment just after write 12.
    const { xOf, y } = await chart();
    await page.mouse.click(xOf((t(12) + t(13)) / 2), y);
    await page.waitForSelector('[data-testid=point-seq]');
    assert.equal(await text('[data-testid=point-seq]'), 'seq 12');
    await shot('point');
    await page.fill('input[name=name]', 'clicked');
    await page.click('text=Open snapshot or clone');
    await page.waitForSelector('[data-testid=view-seq]');
    assert.equal(await text('[data-testid=view-seq]'), 'seq 12');
    assert.equal(await text('[data-testid=nbd-uri]'), `nbd://127.0.0.1:${nbdPort}/v@clicked`);
    assert.ok(
      copy('v@clicked').equals(model(12)),
      'the snapshot at the clicked moment equals the model at seq 12',
    );
    // Three back by the -N button, then one forward by the key.
    await page.fill('input[name=n]', '3');
    await page.click('button:text-is("−N")');
    await page.waitForFunction(
      () => document.querySelector('[data-testid=view-seq]')?.textContent === 'seq 9',
    );
    assert.match(await text('[data-testid=crossed]'), /seq 12 → 9: 3 writes undone/);
    assert.ok(copy('v@clicked').equals(model(9)), 'stepped back to seq 9');
    await page.locator('body').press('ArrowRight');
    await page.waitForFunction(
      () => document.querySelector('[data-testid=view-seq]')?.textContent === 'seq 10',
    );
    assert.ok(copy('v@clicked').equals(model(10)), 'stepped forward to seq 10');
    await page.fill('input[name=to]', '2');
    await page.click('text=Step to');
    await page.waitForFunction(
      () => document.querySelector('[data-testid=view-seq]')?.textContent === 'seq 2',
    );
    assert.ok(copy('v@clicked').equals(model(2)), 'stepped to seq 2');
    await shot('view');
  });

  test('the block map shows the regions a window changed, and a range’s history on click', async () => {
    await open(`#/blockmap?volume=v&from=0&to=${SLOW_WRITES}`);
    await page.waitForSelector('[data-testid=grid]');
    const cells = await page.$$eval('[data-testid=grid] button', (buttons) =>
      buttons.map((b) => Number((b as HTMLElement).dataset.writes)),
    );
    assert.equal(cells.length, 1024); // 8 MiB in 8 KiB cells
    const changed = cells.flatMap((n, i) => (n > 0 ? [i] : []));
    assert.deepEqual(
      changed,
      Array.from({ length: SLOW_WRITES }, (_, i) => (i * 64 * KiB) / (8 * KiB)),
    );
    // Write 6 lies in cell 40 (offset 320 KiB); its range's history, newest first.
    await page.click('[data-testid=grid] button[data-offset="327680"]');
    await page.waitForSelector('[data-testid=range-history]');
    const seqs = (
      await page.locator('[data-testid=range-history] tbody tr td:first-child').allTextContents()
    ).map(Number);
    const expected = writes
      .filter((w) => w.volume === 0 && w.offset < 327680 + 8 * KiB && 327680 < w.offset + w.length)
      .map((w) => w.seq)
      .reverse();
    assert.ok(expected.length > 1 && expected.includes(6));
    assert.deepEqual(seqs, expected.slice(0, 50));
    await shot('blockmap', { fullPage: true });
  });

  test('a restore run from the page leaves production equal to the model, and its undo point undoes it', async () => {
    const last = writes.length;
    const restore = async (at: number, expectedBytes: number, ranges = ''): Promise<number> => {
      await page.fill('input[name=at]', String(at));
      await page.uncheck('input[name=volume][value=w]');
      await page.fill('textarea[name=ranges]', ranges);
      await page.click('text=Dry run');
      await page.waitForSelector('[data-testid=plan-total]');
      const total = Number(
        /\(([\d,]+) bytes\)/.exec(await text('[data-testid=plan-total]'))?.[1]?.replace(/,/g, ''),
      );
      assert.equal(total, expectedBytes, `dry run of a restore to seq ${at}`);
      await page.click('button:text-is("Restore…")');
      await page.waitForSelector('[data-testid=confirm]');
      assert.match(await text('[data-testid=confirm]'), /v goes offline now/);
      await shot(`restore-confirm-${at}`);
      await page.check('input[name=stopped]');
      await page.click('text=Take v offline and restore');
      await page.waitForSelector('[data-testid=restore-result]', { timeout: 60_000 });
      assert.match(await text('[data-testid=restore-result]'), /done/);
      return Number(/seq (\d+)/.exec(await text('[data-testid=undo-seq]'))?.[1]);
    };
    await open('#/restore');
    const after20 = writes.filter((w) => w.volume === 0 && w.seq > 20);
    const before = await restore(20, mergedBytes(after20));
    assert.equal(before, last, 'the undo point is the last seq before the restore');
    await shot('restore-done');
    assert.ok(copy('v').equals(model(20)), 'production v equals the model at seq 20');
    assert.ok(copy('w').equals(model(last, 1)), 'w was not touched');
    // Undo: restore to the seq before the restore.
    await page.click('text=Undo this restore…');
    await page.waitForFunction(() => location.hash.includes('at='));
    await page.waitForSelector('input[name=at]');
    assert.equal(await page.inputValue('input[name=at]'), String(last));
    const undone = await restore(last, mergedBytes(after20));
    assert.ok(undone > last);
    assert.ok(
      copy('v').equals(model(last)),
      'after the undo, production v equals the model at the last seq',
    );
    // Partial: 64 KiB of v back to seq 20, around a block nothing wrote after seq 20 (so that the
    // range is only partly written since).
    const touched = new Uint8Array(SIZES[0] as number);
    for (const w of after20) touched.fill(1, w.offset, w.offset + w.length);
    const quiet = touched.indexOf(0, 64 * KiB);
    assert.ok(quiet > 0, 'some block of v was not written after seq 20');
    const start = Math.floor(quiet / (4 * KiB)) * 4 * KiB - 32 * KiB;
    const partial = touched.subarray(start, start + 64 * KiB).reduce((sum, b) => sum + b, 0);
    assert.ok(
      partial > 0 && partial < 64 * KiB,
      `a partial restore writes some of 64 KiB: ${partial}`,
    );
    await open('#/restore');
    await restore(20, partial, `${start}:64K`);
    const expected = model(last);
    model(20).copy(expected, start, start, start + 64 * KiB);
    assert.ok(copy('v').equals(expected), `only ${start}:64K of v is back at seq 20`);
    // The restores are marked on the timeline, and their writes (committed after the timeline
    // loaded its running totals) are counted in it.
    const timeline = await api<{
      restores: { id: number }[];
      writesTotal: number;
      history: { seqCommitted: number };
    }>(`/api/timeline?from=${times[1]}&to=${Date.now() * 1000}`);
    assert.ok(timeline.history.seqCommitted > last);
    assert.equal(timeline.writesTotal, timeline.history.seqCommitted);
    assert.deepEqual(
      timeline.restores.map((r) => r.id),
      [1, 2, 3],
    );
    await open('#/timeline');
    await page.waitForSelector('[data-testid=chart][data-from-us]');
    await shot('timeline-restores');
    assert.deepEqual(pageErrors, [], 'no uncaught errors in the page');
  });

  test('a manager that needs a token: the console asks for it, or takes it from the URL', async () => {
    const managerDir = path.join(dir, 'manager');
    const http = await freePort();
    const manager: RewindProcess = startRewind([
      'manager',
      '--data',
      managerDir,
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
      for (let waited = 0; !manager.out().includes('console:'); waited += 50) {
        assert.ok(
          waited < WAIT_MS && manager.child.exitCode === null,
          `manager started: ${manager.out()}`,
        );
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const url = /console: (\S+)/.exec(manager.out())?.[1] ?? '';
      const apiToken = fs.readFileSync(path.join(managerDir, 'api-token'), 'utf8').trim();
      assert.equal(url, `http://127.0.0.1:${http}/#token=${apiToken}`);
      const second = await context?.newPage();
      assert.ok(second);
      // Without the token: asked for; a wrong one is refused and asked for again.
      await second.goto(`http://127.0.0.1:${http}/`);
      await second.waitForSelector('[data-testid=token-dialog]');
      await second.waitForSelector('text=The API answered: missing API token');
      await second.fill('[data-testid=token-dialog] input', 'wrong');
      await second.click('text=Use token');
      await second.waitForSelector('text=The API answered: wrong API token');
      await second.screenshot({ path: path.join(shots, 'token.png') });
      await second.fill('[data-testid=token-dialog] input', apiToken);
      await second.click('text=Use token');
      await second.waitForSelector('text=No volumes yet');
      await second.waitForFunction(
        () => document.querySelector('[data-testid=feed-state]')?.textContent === 'live',
      );
      await second.close();
      // With the console URL: no question, and the token leaves the address bar.
      const third = await context?.newPage();
      assert.ok(third);
      await third.goto(url);
      await third.waitForSelector('text=No volumes yet');
      assert.equal(new URL(third.url()).hash, '#/overview');
      assert.equal(await third.locator('[data-testid=token-dialog]').count(), 0);
      await third.close();
    } finally {
      manager.child.kill('SIGTERM');
      await exited(manager);
    }
  });
});
