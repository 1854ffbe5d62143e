// Where an image export may write: only inside the export directory (DATA/exports, or the one the
// administrator gave at start). A relative name is taken inside it; `..`, an absolute path
// outside it, and a symlink anywhere on the way (a parent that resolves outside, or the file
// itself) are refused with REWIND_FORBIDDEN. The image is written to NAME.partial opened with
// O_EXCL|O_NOFOLLOW, checked again through /proc/self/fd, then renamed over NAME (a rename
// replaces a symlink, never what it points to), so a file outside is never opened for writing.
import fs from 'node:fs';
import path from 'node:path';
import { errorCode, rethrowIfBug, RewindError } from '../core/index.js';
import { FILE_MODE_PRIVATE } from '../platform/index.js';

/** A longer export file name is refused unread (Linux's PATH_MAX). */
const EXPORT_PATH_BYTES_MAX = 4096;

function forbidden(file: string, why: string, exportDir: string): RewindError {
  return new RewindError('REWIND_FORBIDDEN', `export file "${file}" ${why}`, {
    hint: `exports are written only inside the export directory ${exportDir} (a name like db.img; rewind up/manager --export-dir DIR sets it)`,
  });
}

/** The real path of `dir`, or undefined when it does not exist. */
function realDir(dir: string): string | undefined {
  try {
    return fs.realpathSync(dir);
  } catch (error) {
    rethrowIfBug(error);
    if (errorCode(error) === 'ENOENT' || errorCode(error) === 'ENOTDIR') return undefined;
    throw error;
  }
}

function isInside(root: string, candidate: string): boolean {
  return candidate === root || candidate.startsWith(`${root}${path.sep}`);
}

function lstatOrUndefined(file: string): fs.Stats | undefined {
  try {
    return fs.lstatSync(file);
  } catch (error) {
    rethrowIfBug(error);
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  }
}

/**
 * The absolute path an export of `file` writes, after every check but the open: inside
 * `exportDir` through real directories only, not a symlink, and existing only with `overwrite`.
 */
export function resolveExportFile(exportDir: string, file: unknown, overwrite: boolean): string {
  if (typeof file !== 'string' || file === '' || file.includes('\0'))
    throw new RewindError('REWIND_BAD_ARGUMENT', 'the export file must be a non-empty name');
  if (Buffer.byteLength(file) > EXPORT_PATH_BYTES_MAX)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `export file name is over ${EXPORT_PATH_BYTES_MAX} bytes`,
    );
  const root = realDir(exportDir);
  if (root === undefined)
    throw new RewindError('REWIND_CONFIG', `the export directory ${exportDir} does not exist`);
  if (file.split('/').includes('..')) throw forbidden(file, 'contains ".."', exportDir);
  const lexical = path.isAbsolute(file) ? path.normalize(file) : path.join(root, file);
  if (!isInside(path.resolve(exportDir), lexical) && !isInside(root, lexical))
    throw forbidden(file, 'is outside the export directory', exportDir);
  const name = path.basename(lexical);
  if (lexical === root || lexical === path.resolve(exportDir) || name === '' || name === '.')
    throw new RewindError('REWIND_BAD_ARGUMENT', `export file "${file}" names no file`);
  const parent = realDir(path.dirname(lexical));
  if (parent === undefined)
    throw new RewindError(
      'REWIND_BAD_ARGUMENT',
      `directory ${path.dirname(lexical)} does not exist`,
      {
        hint: 'exports create files, not directories: give a name in an existing directory',
      },
    );
  if (!isInside(root, parent))
    throw forbidden(file, 'leads out of the export directory through a symlink', exportDir);
  const target = path.join(parent, name);
  const existing = lstatOrUndefined(target);
  if (existing?.isSymbolicLink()) throw forbidden(file, 'is a symlink', exportDir);
  if (existing && !existing.isFile()) throw forbidden(file, 'is not a regular file', exportDir);
  if (existing && !overwrite)
    throw new RewindError('REWIND_CONFLICT', `${target} exists`, {
      hint: 'give another file, or --force to replace it',
    });
  return target;
}

/**
 * Opens `target`.partial for writing, created anew (O_EXCL) and never through a symlink
 * (O_NOFOLLOW); a leftover of a failed export is removed first (unlinking a symlink removes the
 * link only). The opened file's real path is checked to be `target`.partial.
 */
export function openExportPartial(target: string): number {
  const partial = `${target}.partial`;
  const flags =
    fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  if (lstatOrUndefined(partial) !== undefined) fs.unlinkSync(partial);
  const fd = fs.openSync(partial, flags, FILE_MODE_PRIVATE);
  let opened: string;
  try {
    opened = fs.readlinkSync(`/proc/self/fd/${fd}`);
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
  if (opened !== partial) {
    fs.closeSync(fd);
    throw new RewindError(
      'REWIND_FORBIDDEN',
      `export file ${partial} moved while opened (${opened})`,
    );
  }
  return fd;
}

/** Before the rename: the directory still resolves to where it was checked. */
export function checkExportParent(target: string): void {
  const parent = realDir(path.dirname(target));
  if (parent !== path.dirname(target))
    throw new RewindError(
      'REWIND_FORBIDDEN',
      `the directory of ${target} changed during the export (now ${parent ?? 'gone'})`,
    );
}
