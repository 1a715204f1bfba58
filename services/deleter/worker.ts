// The delete flow, on the node that owns the image's pool: remove the files (ImageFilesDeleted), delete
// every completed S3 backup (BackupDeleted each), then purge the image from the read models
// (ImagePurged). Each step checks what is already done, so a redelivery after a crash resumes.
import { ack, retry, type Handler, type Outcome } from '../../shared/consumer.js';
import { errorMessage } from '../../shared/errors.js';
import { dedupeKey, releaseHash } from '../../shared/kv.js';
import { getPool, type Pool } from '../../shared/pools.js';
import { classifyS3Error, deleteObject, s3ClientFor } from '../../shared/s3/client.js';
import { s3ConfigOf } from '../../shared/s3/pools.js';
import { deterministicId, makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import type { Ctx } from '../context.js';
import { handOnIfMoved } from '../routing.js';
import { isTransientStoreError, poolStore } from '../storage/pool-store.js';

export function deleteHandler(ctx: Ctx, pools: () => Pool[]): Handler {
  return async (event: AnyEvent): Promise<Outcome> => {
    if (event.type !== 'ImageDeleted') return ack;
    const [img] = await ctx.sql<
      {
        storage_pool_id: string;
        node_id: string;
        stored_path: string;
        sha256: string;
        user_id: string;
        files_deleted_at: Date | null;
        deleted_at: Date | null;
      }[]
    >`
      select storage_pool_id, node_id, stored_path, sha256, user_id, files_deleted_at, deleted_at
      from images where id = ${event.image_id}`;
    if (!img) return ack; // already purged
    if (!img.deleted_at) return retry(500, 'delete not projected yet');
    const handedOn = await handOnIfMoved(ctx, event, img.node_id);
    if (handedOn) return handedOn;
    const base = {
      image_id: event.image_id,
      node_id: event.node_id,
      causation_id: event.id,
      correlation_id: event.correlation_id,
    };

    // 1. Files: the original and every variant, in the pool that holds them now (a directory, or the
    //    bucket of an S3 pool).
    if (!img.files_deleted_at) {
      const pool = pools().find((p) => p.id === img.storage_pool_id);
      const store = pool ? poolStore(pool, ctx.config) : null;
      if (!pool || !store) return retry(10_000, `pool ${img.storage_pool_id} not served here`);
      const variants = await ctx.sql<
        { path: string; bytes: number }[]
      >`select path, bytes from image_variants where image_id = ${event.image_id}`;
      const files = [img.stored_path, ...variants.map((v) => v.path)];
      let bytes = 0;
      try {
        for (const f of files) {
          const st = await store.stat(f);
          if (st) bytes += st.size;
          await store.remove(f);
        }
      } catch (err) {
        return retry(
          isTransientStoreError(err) ? 15_000 : 5 * 60_000,
          `file delete failed: ${errorMessage(err)}`,
        );
      }
      await ctx.pub.publish(
        makeEvent('ImageFilesDeleted', {
          ...base,
          pool_id: pool.id,
          id: deterministicId(event.id, 'files'),
          data: { files, bytes },
        }),
      );
      // The same bytes may be uploaded again as a new image.
      await releaseHash(ctx.kv.dedupe, dedupeKey(img.user_id, img.sha256));
    }

    // 2. Backups: every completed one is deleted from its bucket.
    const backups = await ctx.sql<
      { target_pool_id: string; status: string; bucket: string; object_key: string | null }[]
    >`
      select target_pool_id, status, bucket, object_key from image_backups where image_id = ${event.image_id}`;
    if (backups.some((b) => b.status === 'uploading')) return retry(15_000, 'a backup is still uploading');
    for (const b of backups.filter((x) => x.status === 'completed' && x.object_key)) {
      const target = await getPool(ctx.sql, b.target_pool_id);
      if (!target) return retry(60_000, `backup pool ${b.target_pool_id} unknown`);
      try {
        await deleteObject(s3ClientFor(s3ConfigOf(target)), b.bucket, b.object_key ?? '');
      } catch (err) {
        const c = classifyS3Error(err);
        return retry(c.transient ? 15_000 : 5 * 60_000, `backup delete failed: ${c.message}`);
      }
      await ctx.pub.publish(
        makeEvent('BackupDeleted', {
          ...base,
          pool_id: img.storage_pool_id,
          id: deterministicId(event.id, 'backup-deleted', b.target_pool_id),
          data: { target_pool_id: b.target_pool_id, bucket: b.bucket, key: b.object_key ?? '' },
        }),
      );
    }

    // 3. Nothing completed remains: purge the rows.
    try {
      await ctx.pub.publish(
        makeEvent('ImagePurged', {
          ...base,
          pool_id: img.storage_pool_id,
          id: deterministicId(event.id, 'purged'),
          data: {},
        }),
      );
    } catch (err) {
      return retry(5_000, errorMessage(err));
    }
    return ack;
  };
}
