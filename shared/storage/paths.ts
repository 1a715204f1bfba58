// Where files live inside a pool, and the checks that keep every path there.
//
// Layout (relative to the pool's base_path):  original/YYYY/MM/DD/<uuid>.<ext>  and  variants/...
// Client-supplied paths (replication, moves) are refused rather than repaired: a request that needs
// normalising is either a bug or an attack, and silently rewriting it would hide both.
import { lstat, realpath } from 'node:fs/promises';
import path from 'node:path';

export class PathEscapeError extends Error {
  readonly code = 'path_escape';
  constructor(message: string) {
    super(message);
    this.name = 'PathEscapeError';
  }
}

/** Roots a stored path may start with; everything in a pool lives under one of them. */
export const STORED_ROOTS = ['original', 'variants'] as const;
export const MAX_STORED_PATH_LENGTH = 512;
/** NAME_MAX on ext4/xfs. */
export const MAX_SEGMENT_LENGTH = 255;

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const EXT = /^[a-z0-9]{1,8}$/;
// Deliberately ASCII-only: this one rule rules out fullwidth dots (U+FF0E), one-dot leaders (U+2024),
// homoglyphs, RTL overrides and normalisation-form tricks without listing them.
const SEGMENT = /^[A-Za-z0-9._-]+$/;
// eslint-disable-next-line no-control-regex -- matching control characters is the point
const CONTROL = /[\u0000-\u001f\u007f-\u009f]/;

/** 'YYYY/MM/DD' of `d` in UTC. */
export function datePath(d: Date): string {
  const t = d.getTime();
  if (!Number.isFinite(t)) throw new RangeError('datePath: invalid date');
  const yyyy = String(d.getUTCFullYear()).padStart(4, '0');
  const mm = String(d.getUTCMonth() + 1).padStart(2, '0');
  const dd = String(d.getUTCDate()).padStart(2, '0');
  return `${yyyy}/${mm}/${dd}`;
}

/** `original/YYYY/MM/DD/<uuid>.<ext>`; the id is lower-cased so one image has exactly one path. */
export function originalRelPath(imageId: string, ext: string, d: Date): string {
  const id = imageId.toLowerCase();
  if (!UUID.test(id))
    throw new TypeError(`originalRelPath: image id must be a UUID, got ${JSON.stringify(imageId)}`);
  if (!EXT.test(ext)) throw new TypeError(`originalRelPath: bad extension ${JSON.stringify(ext)}`);
  return `original/${datePath(d)}/${id}.${ext}`;
}

export type NormalisedPath = { ok: true; path: string } | { ok: false; reason: string };

/**
 * Validates a client-supplied relative path (e.g. replication's `stored_path`). Accepted paths are
 * returned unchanged: `original/…` or `variants/…`, segments of [A-Za-z0-9._-] that do not start with
 * '.' or '-', no empty segments, at most 512 characters.
 */
export function normaliseStoredPath(input: string): NormalisedPath {
  if (typeof input !== 'string' || input.length === 0) return { ok: false, reason: 'empty path' };
  if (input.length > MAX_STORED_PATH_LENGTH)
    return { ok: false, reason: `path longer than ${MAX_STORED_PATH_LENGTH}` };
  if (CONTROL.test(input)) return { ok: false, reason: 'control character in path' };
  if (input.includes('\\')) return { ok: false, reason: 'backslash in path' };
  if (input.startsWith('/') || /^[A-Za-z]:/.test(input)) return { ok: false, reason: 'absolute path' };
  // Any '%' is refused: a stored name never needs one, and refusing it ends every single/double-decoding trick.
  if (input.includes('%')) return { ok: false, reason: 'percent-encoding in path' };

  const segments = input.split('/');
  const root = segments[0];
  if (!STORED_ROOTS.some((r) => r === root))
    return { ok: false, reason: 'path must start with original/ or variants/' };
  if (segments.length < 2) return { ok: false, reason: 'path names no file' };
  for (const seg of segments) {
    if (seg === '') return { ok: false, reason: 'empty path segment' };
    if (seg === '.' || seg === '..') return { ok: false, reason: 'dot segment in path' };
    if (seg.length > MAX_SEGMENT_LENGTH)
      return { ok: false, reason: `path segment longer than ${MAX_SEGMENT_LENGTH}` };
    if (!SEGMENT.test(seg))
      return { ok: false, reason: 'path segment contains a character outside [A-Za-z0-9._-]' };
    // Hidden files (.htaccess) and option-looking names (-rf) have no business in a pool.
    if (seg.startsWith('.') || seg.startsWith('-'))
      return { ok: false, reason: 'path segment starts with "." or "-"' };
  }
  return { ok: true, path: input };
}

function isStrictlyInside(base: string, candidate: string): boolean {
  const prefix = base.endsWith(path.sep) ? base : base + path.sep;
  return candidate.length > prefix.length && candidate.startsWith(prefix);
}

/**
 * Absolute path of `rel` inside the pool at `basePath`. Lexical check only (no file system access);
 * throws PathEscapeError unless the result is strictly below `basePath`.
 */
export function resolveInPool(basePath: string, rel: string): string {
  if (basePath.includes('\0') || rel.includes('\0')) throw new PathEscapeError('NUL byte in path');
  const base = path.resolve(basePath);
  const abs = path.resolve(base, rel);
  if (!isStrictlyInside(base, abs)) throw new PathEscapeError(`path escapes pool: ${JSON.stringify(rel)}`);
  return abs;
}

function isMissing(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * File-system check to run right before writing or reading `absPath`: the deepest existing ancestor
 * must resolve (realpath, all symlinks followed) inside realpath(basePath), and the target itself must
 * not be a symlink or anything other than a regular file. Paths still to be created are fine.
 *
 * This narrows but cannot close the race with a concurrent local attacker who swaps a directory for a
 * symlink between check and use; that attacker already has write access to the pool.
 */
export async function assertNoSymlinkEscape(basePath: string, absPath: string): Promise<void> {
  const base = path.resolve(basePath);
  const target = path.resolve(absPath);
  if (!isStrictlyInside(base, target)) throw new PathEscapeError('path is not inside the pool');
  const realBase = await realpath(base);

  try {
    const st = await lstat(target);
    if (st.isSymbolicLink()) throw new PathEscapeError('target is a symlink');
    if (!st.isFile()) throw new PathEscapeError('target is not a regular file');
  } catch (err) {
    if (!isMissing(err)) throw err;
  }

  // realpath of the deepest existing ancestor resolves every symlink above it in one step.
  let dir = path.dirname(target);
  for (;;) {
    let real: string;
    try {
      real = await realpath(dir);
    } catch (err) {
      if (!isMissing(err)) throw err;
      dir = path.dirname(dir);
      continue;
    }
    if (real !== realBase && !isStrictlyInside(realBase, real)) {
      throw new PathEscapeError('a directory on the path resolves outside the pool');
    }
    return;
  }
}
