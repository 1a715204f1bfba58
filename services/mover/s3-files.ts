// Copies of a pool move that involve an S3 pool, with the same guarantees as the local copy
// (./files.ts): the source is checked against the size and SHA-256 the read model recorded, the target
// is verified after the write, an identical file already there is a no-op, and a different one is never
// overwritten.
//
// - into S3: a readable copy of the source (the file itself, or a bounded temp file when the source is
//   S3 too) is hashed, uploaded with our `sha256` object metadata, then HEAD-checked and re-read in full;
// - out of S3: the object is streamed through the verified write into the local pool, then the file is
//   read back and re-hashed.
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { LocalStore } from '../../shared/storage/local.js';
import type { MovedFile } from '../../streams/events/catalog.js';
import { contentTypeOf, type PoolStore, type S3PoolStore } from '../storage/pool-store.js';
import { ContentMismatchError, FileExistsError, fingerprint, writeVerified } from './files.js';

async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}

/** One file of a move into an S3 pool. */
export async function copyToS3(
  source: PoolStore,
  target: S3PoolStore,
  file: MovedFile,
  onProgress?: () => void,
): Promise<'stored' | 'skipped'> {
  const there = await target.stat(file.path);
  if (there) {
    if (there.size === file.size && there.sha256 === file.sha256) return 'skipped';
    throw new FileExistsError(file.path);
  }
  const copy = await source.fetchToTemp(file.path, {
    maxBytes: file.size,
    size: file.size,
    sha256: file.sha256,
  });
  try {
    // A local source is read in place (not hashed by fetchToTemp): a corrupt file is refused here,
    // permanently, rather than as an integrity failure of the upload that retrying cannot fix.
    const actual = await sha256File(copy.path);
    if (actual !== file.sha256) throw new ContentMismatchError('sha256', file.sha256, actual);
    await target.putFile(file.path, copy.path, contentTypeOf(file.path), {
      sha256: file.sha256,
      verify: 'full',
      ...(onProgress !== undefined ? { onProgress } : {}),
    });
  } finally {
    await copy.release();
  }
  return 'stored';
}

/** One file of a move out of an S3 pool into a local pool of this node. */
export async function copyFromS3(
  source: S3PoolStore,
  target: LocalStore,
  file: MovedFile,
): Promise<'stored' | 'skipped'> {
  const there = await fingerprint(target, file.path);
  if (there) {
    if (there.size === file.size && there.sha256 === file.sha256) return 'skipped';
    throw new FileExistsError(file.path);
  }
  const r = await writeVerified(target, file.path, await source.openRead(file.path), {
    size: file.size,
    sha256: file.sha256,
    maxBytes: file.size,
  });
  const check = await fingerprint(target, file.path);
  if (!check || check.size !== file.size || check.sha256 !== file.sha256) {
    if (r.status === 'stored') await target.remove(file.path);
    throw new ContentMismatchError('sha256', file.sha256, check?.sha256 ?? 'missing after write');
  }
  return r.status;
}

/** Removes the copies of a failed move from an S3 target: only objects holding exactly our bytes. */
export async function undoS3Copies(target: S3PoolStore, files: readonly MovedFile[]): Promise<void> {
  for (const f of files) {
    const there = await target.stat(f.path);
    if (there && there.size === f.size && there.sha256 === f.sha256) await target.remove(f.path);
  }
}
