// GET /uploads/<path> for files that live in an S3 pool: any node answers with a redirect. A public pool
// sends the reader to the bucket URL (old node URLs keep working after a move to S3); a private pool to
// a short-lived presigned GET. The image is found by the id inside the path, so no path index is needed.
import type { Sql } from '../../shared/db.js';
import type { Pool } from '../../shared/pools.js';
import { classifyS3Error, poolKey, presignGet, s3ClientFor } from '../../shared/s3/client.js';
import { s3ConfigOf } from '../../shared/s3/pools.js';
import type { Logger } from '../../shared/logger.js';

/** Lifetime of a presigned GET handed out by a redirect: long enough to load a page, short enough to not be a share link. */
export const PRESIGNED_GET_SECONDS = 300;

// original/YYYY/MM/DD/<uuid>.<ext> and variants/YYYY/MM/DD/<uuid>[_small|_medium].<ext>
const IMAGE_ID_IN_PATH =
  /^(?:original|variants)\/\d{4}\/\d{2}\/\d{2}\/([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:_[a-z]+)?\.[a-z0-9]+$/;

/** The image id a stored path belongs to (pure), or null for a path of no known shape. */
export function imageIdOfPath(rel: string): string | null {
  return IMAGE_ID_IN_PATH.exec(rel)?.[1] ?? null;
}

export interface Redirect {
  location: string;
  cacheControl: string;
}

/** Where to send a reader of `rel` when it is a file of an S3 pool; null when it is not. */
export async function s3Redirect(
  sql: Sql,
  log: Logger,
  pools: () => Pool[],
  rel: string,
): Promise<Redirect | null> {
  const imageId = imageIdOfPath(rel);
  if (!imageId) return null;
  const [row] = await sql<{ storage_pool_id: string }[]>`
    select storage_pool_id from images where id = ${imageId} and deleted_at is null and stored_path = ${rel}
    union all
    select v.storage_pool_id from image_variants v join images i on i.id = v.image_id
    where v.image_id = ${imageId} and v.path = ${rel} and i.deleted_at is null
    limit 1`;
  if (!row) return null;
  const pool = pools().find((p) => p.id === row.storage_pool_id);
  if (!pool || pool.storage_type !== 's3' || !pool.s3_bucket) return null;
  const cfg = s3ConfigOf(pool);
  const key = poolKey(cfg, rel);
  if (pool.s3_private !== true && pool.public_base_url) {
    // Not immutable: the image may move again, and then this answer changes.
    return { location: `${pool.public_base_url}/${key}`, cacheControl: 'public, max-age=300' };
  }
  try {
    const location = await presignGet(s3ClientFor(cfg), cfg.bucket, key, PRESIGNED_GET_SECONDS);
    // Cached for less than the URL lives, and only by the reader's own cache.
    return { location, cacheControl: `private, max-age=${Math.floor(PRESIGNED_GET_SECONDS / 2)}` };
  } catch (err) {
    log.warn({ poolId: pool.id, error: classifyS3Error(err).message }, 'could not presign a GET');
    return null;
  }
}
