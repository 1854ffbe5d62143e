// Where an image export may write: inside the export directory only, never through `..`, an
// absolute path outside, or a symlink (a parent, the file, or a leftover NAME.partial).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import {
  checkExportParent,
  openExportPartial,
  resolveExportFile,
} from '../../src/manager/export-path.js';

const scratch = fs.realpathSync(fs.mkdtempSync(path.join(os.tmpdir(), 'rewind-export-path-')));
after(() => fs.rmSync(scratch, { recursive: true, force: true }));

const root = path.join(scratch, 'exports');
const outside = path.join(scratch, 'outside');
fs.mkdirSync(path.join(root, 'sub'), { recursive: true });
fs.mkdirSync(outside);
fs.writeFileSync(path.join(outside, 'victim'), 'precious');
fs.symlinkSync(outside, path.join(root, 'link'));
fs.symlinkSync(path.join(outside, 'victim'), path.join(root, 'victim.img'));
fs.writeFileSync(path.join(root, 'old.img'), 'old');

const code = (work: () => unknown): string => {
  try {
    work();
  } catch (error) {
    return (error as { code?: string }).code ?? String(error);
  }
  return 'accepted';
};

test('names inside the export directory resolve inside it', () => {
  assert.equal(resolveExportFile(root, 'a.img', false), path.join(root, 'a.img'));
  assert.equal(resolveExportFile(root, 'sub/a.img', false), path.join(root, 'sub', 'a.img'));
  assert.equal(resolveExportFile(root, './sub//a.img', false), path.join(root, 'sub', 'a.img'));
  assert.equal(resolveExportFile(root, path.join(root, 'b.img'), false), path.join(root, 'b.img'));
  // An existing file: only with overwrite.
  assert.equal(
    code(() => resolveExportFile(root, 'old.img', false)),
    'REWIND_CONFLICT',
  );
  assert.equal(resolveExportFile(root, 'old.img', true), path.join(root, 'old.img'));
});

test('.., absolute paths out, symlinks and odd names are refused', () => {
  for (const [file, expected] of [
    ['../outside/victim', 'REWIND_FORBIDDEN'],
    ['sub/../a.img', 'REWIND_FORBIDDEN'],
    ['..', 'REWIND_FORBIDDEN'],
    [path.join(outside, 'victim'), 'REWIND_FORBIDDEN'],
    ['/etc/passwd', 'REWIND_FORBIDDEN'],
    [`${root}-sibling/a.img`, 'REWIND_FORBIDDEN'],
    ['link/victim', 'REWIND_FORBIDDEN'],
    ['link/new.img', 'REWIND_FORBIDDEN'],
    ['victim.img', 'REWIND_FORBIDDEN'],
    ['sub', 'REWIND_FORBIDDEN'],
    ['missing/a.img', 'REWIND_BAD_ARGUMENT'],
    ['', 'REWIND_BAD_ARGUMENT'],
    ['a\0b', 'REWIND_BAD_ARGUMENT'],
    [root, 'REWIND_BAD_ARGUMENT'],
    ['x'.repeat(5000), 'REWIND_BAD_ARGUMENT'],
  ] as const) {
    for (const overwrite of [false, true])
      assert.equal(
        code(() => resolveExportFile(root, file, overwrite)),
        expected,
        `${file.slice(0, 40)} (overwrite ${overwrite})`,
      );
  }
  assert.equal(
    code(() => resolveExportFile(root, 7, false)),
    'REWIND_BAD_ARGUMENT',
  );
  assert.equal(fs.readFileSync(path.join(outside, 'victim'), 'utf8'), 'precious');
});

test('an export directory reached through a symlink accepts its own paths', () => {
  const alias = path.join(scratch, 'alias');
  fs.symlinkSync(root, alias);
  assert.equal(resolveExportFile(alias, 'c.img', false), path.join(root, 'c.img'));
  assert.equal(
    resolveExportFile(alias, path.join(alias, 'c.img'), false),
    path.join(root, 'c.img'),
  );
});

test('NAME.partial is made anew, never written through a symlink', () => {
  const target = resolveExportFile(root, 'p.img', false);
  fs.symlinkSync(path.join(outside, 'victim'), `${target}.partial`);
  const fd = openExportPartial(target);
  fs.writeSync(fd, 'image');
  fs.closeSync(fd);
  assert.equal(fs.lstatSync(`${target}.partial`).isFile(), true);
  assert.equal(fs.statSync(`${target}.partial`).mode & 0o777, 0o600);
  assert.equal(fs.readFileSync(path.join(outside, 'victim'), 'utf8'), 'precious');
  checkExportParent(target);
  // A directory swapped for a symlink during the export is noticed before the rename.
  const moving = path.join(root, 'moving');
  fs.mkdirSync(moving);
  const inMoving = resolveExportFile(root, 'moving/x.img', false);
  fs.rmSync(moving, { recursive: true });
  fs.symlinkSync(outside, moving);
  assert.equal(
    code(() => checkExportParent(inMoving)),
    'REWIND_FORBIDDEN',
  );
});
