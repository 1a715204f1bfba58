// POST /api/v1/upload/sessions: choose a pool and hand out a short-lived upload token for it.
import { AppError, payloadTooLarge, unavailable } from '../../shared/errors.js';
import { readHealth } from '../../shared/kv.js';
import { planOf } from '../../shared/plans.js';
import { listPools, selectPool, type Candidate } from '../../shared/pools.js';
import { signUploadToken } from '../../shared/security/upload-token.js';
import type { User } from '../../shared/users.js';
import type { Ctx } from '../context.js';
import { isServableS3Pool } from '../storage/s3-health.js';
import { createS3Session } from './s3-uploads.js';

export interface SessionRequest {
  file_size: number;
  filename?: string;
  content_type?: string;
}

export async function remainingQuota(
  ctx: Ctx,
  user: User,
): Promise<{ quota: number; used: number; remaining: number }> {
  const quota = planOf(user.plan).quotaBytes;
  const [row] = await ctx.sql<{ used: number }[]>`
    select coalesce((select used_bytes from user_usage where user_id = ${user.id}), 0)
         + coalesce((select sum(bytes) from upload_reservations where user_id = ${user.id}
                     and created_at > now() - interval '1 hour'), 0) as used`;
  const used = Number(row?.used ?? 0);
  return { quota, used, remaining: Math.max(0, quota - used) };
}

export async function createUploadSession(ctx: Ctx, user: User, body: SessionRequest) {
  const settings = await ctx.settings.all();
  if (!settings.image_upload_enabled || !settings.direct_upload_enabled) {
    throw new AppError(403, 'uploads_disabled', 'uploads are disabled by the operator');
  }
  const plan = planOf(user.plan);
  const q = await remainingQuota(ctx, user);
  if (body.file_size > plan.maxFileBytes) {
    throw payloadTooLarge(
      'quota_exceeded',
      `your plan (${plan.name}) allows files up to ${plan.maxFileBytes} bytes`,
      {
        max_file_bytes: plan.maxFileBytes,
        file_size: body.file_size,
      },
    );
  }
  if (body.file_size > q.remaining) {
    throw payloadTooLarge('quota_exceeded', 'this upload would exceed your storage quota', {
      quota_bytes: q.quota,
      used_bytes: q.used,
      file_size: body.file_size,
    });
  }
  // Node pools take uploads at their node's upload URL; S3 pools (served by every node) take them
  // straight into the bucket through a presigned PUT (see ./s3-uploads.ts).
  const pools = (await listPools(ctx.sql)).filter(
    (p) => p.is_active && (p.storage_type === 's3' ? isServableS3Pool(p) : !!p.upload_api_url),
  );
  const [health, usage] = await Promise.all([
    readHealth(
      ctx.kv.health,
      pools.map((p) => p.id),
    ).catch(() => new Map()),
    ctx.sql<{ pool_id: string; used_bytes: number }[]>`select pool_id, used_bytes from pool_usage`,
  ]);
  const used = new Map(usage.map((u) => [u.pool_id, Number(u.used_bytes)]));
  const candidates: Candidate[] = pools.map((pool) => ({
    pool,
    health: health.get(pool.id) ?? null,
    usedBytes: used.get(pool.id) ?? 0,
  }));
  const pool = selectPool(candidates, body.file_size);
  if (!pool || (pool.storage_type !== 's3' && !pool.upload_api_url))
    throw unavailable('no_pool_available', 'no storage pool can take this upload right now');
  const maxBytes = Math.min(plan.maxFileBytes, q.remaining);
  if (pool.storage_type === 's3') return createS3Session(ctx, user, pool, body, maxBytes);
  const { token, claims } = signUploadToken(ctx.config.uploadTokenSecret, {
    user_id: user.id,
    pool_id: pool.id,
    max_bytes: maxBytes,
  });
  return {
    upload_url: pool.upload_api_url ?? '',
    token,
    pool_id: pool.id,
    expires_at: new Date(claims.exp * 1000).toISOString(),
    max_bytes: maxBytes,
  };
}
