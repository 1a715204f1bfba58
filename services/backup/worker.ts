// S3 backups. The scheduler turns ImageStored into BackupRequested (with the due time from the
// `s3_backup_delay_minutes` setting); the backup worker holds a request until it is due (nak with the
// remaining delay: the message stays in JetStream, so a restart changes nothing), uploads the original
// streamed from disk with a checksum, and reports BackupStarted / BackupCompleted / BackupFailed.
// A failed attempt schedules the next one as a new BackupRequested (attempt + 1), 3 per round.
import { ack, retry, type Delivery, type Handler, type Outcome } from '../../shared/consumer.js';
import { errorMessage } from '../../shared/errors.js';
import { getPool } from '../../shared/pools.js';
import { classifyS3Error, poolKey, putFileStreamed, s3ClientFor } from '../../shared/s3/client.js';
import { backupTarget, s3ConfigOf } from '../../shared/s3/pools.js';
import { deterministicId, makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import type { Ctx } from '../context.js';
import { handOnIfMoved } from '../routing.js';
import { poolStore, StoreError, type LocalCopy } from '../storage/pool-store.js';
import { BACKUP_ATTEMPTS, backupKey, backupRetryDelayMs } from './key.js';

export function backupSchedulerHandler(ctx: Ctx): Handler {
  return async (event: AnyEvent): Promise<Outcome> => {
    if (event.type !== 'ImageStored') return ack;
    const settings = await ctx.settings.all();
    if (!settings.s3_backup_enabled) return ack;
    const target = await backupTarget(ctx.sql);
    if (!target?.s3_bucket) {
      ctx.log.warn({ imageId: event.image_id }, 's3 backup enabled but no active S3 pool: skipped');
      return ack;
    }
    const delayMs = Math.max(0, settings.s3_backup_delay_minutes) * 60_000;
    const due = new Date(Date.parse(event.occurred_at) + delayMs);
    await ctx.pub.publish(
      makeEvent('BackupRequested', {
        id: deterministicId(event.id, 'backup-requested', target.id),
        image_id: event.image_id,
        node_id: event.node_id,
        pool_id: event.pool_id,
        causation_id: event.id,
        correlation_id: event.correlation_id,
        data: { target_pool_id: target.id, bucket: target.s3_bucket, due_at: due.toISOString(), attempt: 1 },
      }),
    );
    return ack;
  };
}

interface ImageForBackup {
  id: string;
  storage_pool_id: string;
  node_id: string;
  stored_path: string;
  ext: string;
  mime: string;
  size: number;
  sha256: string;
  deleted_at: Date | null;
}

export function backupHandler(ctx: Ctx): Handler {
  return async (event: AnyEvent, d: Delivery): Promise<Outcome> => {
    if (event.type !== 'BackupRequested') return ack;
    const req = event.data;
    const wait = Date.parse(req.due_at) - Date.now();
    // Not due yet: hand it back until it is (bounded so a clock jump is corrected within minutes).
    if (wait > 0) return { kind: 'retry', delayMs: Math.min(wait, 5 * 60_000), reason: 'not due' };

    const [img] = await ctx.sql<ImageForBackup[]>`
      select id, storage_pool_id, node_id, stored_path, ext, mime, size, sha256, deleted_at from images where id = ${event.image_id}`;
    if (!img) return retry(1_000, 'image not projected yet');
    if (img.deleted_at) return ack; // deleted before its backup ran: nothing to keep
    const [state] = await ctx.sql<{ status: string }[]>`
      select status from image_backups where image_id = ${event.image_id} and target_pool_id = ${req.target_pool_id}`;
    if (state?.status === 'completed' || state?.status === 'deleted') return ack;
    const handedOn = await handOnIfMoved(ctx, event, img.node_id);
    if (handedOn) return handedOn;
    // Pools read fresh: an operator's change (new target, new credentials) applies to the next attempt.
    const [target, source] = await Promise.all([
      getPool(ctx.sql, req.target_pool_id),
      getPool(ctx.sql, img.storage_pool_id),
    ]);
    // A local source is read in place; an S3 source through a bounded temp file.
    const sourceStore = source ? poolStore(source, ctx.config) : null;
    if (!sourceStore) return retry(10_000, 'source pool unknown');

    const base = {
      image_id: event.image_id,
      node_id: img.node_id,
      pool_id: event.pool_id,
      causation_id: event.id,
      correlation_id: event.correlation_id,
    };
    const attemptId = (what: string) => deterministicId(event.id, what);
    await ctx.pub.publish(
      makeEvent('BackupStarted', {
        ...base,
        id: attemptId('started'),
        data: { target_pool_id: req.target_pool_id, attempt: req.attempt },
      }),
    );
    let copy: LocalCopy | null = null;
    try {
      if (!target || !target.is_active)
        throw Object.assign(new Error('backup target pool is gone or inactive'), { permanent: true });
      const cfg = s3ConfigOf(target);
      const key = poolKey(cfg, backupKey(img.id, img.stored_path, img.ext));
      copy = await sourceStore.fetchToTemp(img.stored_path, {
        maxBytes: Number(img.size),
        size: Number(img.size),
        sha256: img.sha256,
      });
      const result = await putFileStreamed(s3ClientFor(cfg), {
        bucket: cfg.bucket,
        key,
        filePath: copy.path,
        contentType: img.mime,
        sha256: img.sha256,
        metadata: { 'original-path': img.stored_path, 'upload-source': `pixelfox/${img.node_id}` },
        onProgress: () => d.working(),
      });
      await ctx.pub.publish(
        makeEvent('BackupCompleted', {
          ...base,
          id: attemptId('completed'),
          data: {
            target_pool_id: req.target_pool_id,
            bucket: result.bucket,
            key: result.key,
            size: result.size,
            checksum: result.sha256,
          },
        }),
      );
      return ack;
    } catch (err) {
      const c = (err as { permanent?: boolean }).permanent
        ? { transient: false, message: errorMessage(err) }
        : err instanceof StoreError
          ? { transient: err.transient, message: err.message }
          : classifyS3Error(err);
      const final = !c.transient || req.attempt >= BACKUP_ATTEMPTS;
      await ctx.pub.publish(
        makeEvent('BackupFailed', {
          ...base,
          id: attemptId('failed'),
          data: {
            target_pool_id: req.target_pool_id,
            error: c.message.slice(0, 500),
            attempt: req.attempt,
            final,
          },
        }),
      );
      if (!final) {
        const due = new Date(Date.now() + backupRetryDelayMs(req.attempt));
        await ctx.pub.publish(
          makeEvent('BackupRequested', {
            ...base,
            id: attemptId('next'),
            data: { ...req, attempt: req.attempt + 1, due_at: due.toISOString() },
          }),
        );
      }
      ctx.log.warn(
        { imageId: event.image_id, attempt: req.attempt, final, error: c.message },
        'backup attempt failed',
      );
      return ack;
    } finally {
      await copy?.release().catch(() => undefined);
    }
  };
}

/** Re-queues failed backups (a new round of attempts). Used by the retry loop and `backups retry --failed`. */
export async function requeueFailedBackups(
  ctx: Pick<Ctx, 'sql' | 'pub'>,
  opts: { nodeId?: string; olderThanMs?: number; imageId?: string } = {},
): Promise<number> {
  const rows = await ctx.sql<
    {
      image_id: string;
      target_pool_id: string;
      bucket: string;
      node_id: string;
      storage_pool_id: string;
      updated_at: Date;
    }[]
  >`
    select b.image_id, b.target_pool_id, b.bucket, i.node_id, i.storage_pool_id, b.updated_at
    from image_backups b join images i on i.id = b.image_id
    where b.status = 'failed' and i.deleted_at is null
      ${opts.nodeId ? ctx.sql`and i.node_id = ${opts.nodeId}` : ctx.sql``}
      ${opts.imageId ? ctx.sql`and b.image_id = ${opts.imageId}` : ctx.sql``}
      and b.updated_at < ${new Date(Date.now() - (opts.olderThanMs ?? 0))}`;
  for (const r of rows) {
    await ctx.pub.publish(
      makeEvent('BackupRequested', {
        // one re-queue per failure: the id changes only when the row changed again
        id: deterministicId('requeue', r.image_id, r.target_pool_id, r.updated_at.toISOString()),
        image_id: r.image_id,
        node_id: r.node_id,
        pool_id: r.storage_pool_id,
        data: {
          target_pool_id: r.target_pool_id,
          bucket: r.bucket,
          due_at: new Date().toISOString(),
          attempt: 1,
        },
      }),
    );
  }
  return rows.length;
}
