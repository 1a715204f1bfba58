// Health of S3 pools for upload-session selection. No node owns an S3 pool, so every process that runs
// the API or the workers reports it (the last report wins; they agree unless the network disagrees):
// a HEAD on the bucket every few seconds, and free space = max_capacity_bytes minus the pool's usage.
import { HEALTH_REPORT_INTERVAL_MS, writeHealth } from '../../shared/kv.js';
import type { Pool } from '../../shared/pools.js';
import { bucketExists, classifyS3Error, s3ClientFor } from '../../shared/s3/client.js';
import { s3ConfigOf } from '../../shared/s3/pools.js';
import { ANY_NODE } from '../../streams/subjects.js';
import type { Ctx } from '../context.js';

/** A health probe must answer well within the report interval; one attempt, no retry. */
const PROBE_TIMEOUT_MS = 3_000;

/** S3 pools that take part in uploads and processing: served by every node (`_any`), with a bucket. */
export function isServableS3Pool(p: Pool): boolean {
  return p.storage_type === 's3' && p.node_id === ANY_NODE && !!p.s3_bucket;
}

export async function checkS3Pool(ctx: Ctx, pool: Pool): Promise<void> {
  let healthy = false;
  try {
    const client = s3ClientFor(s3ConfigOf(pool), { timeoutMs: PROBE_TIMEOUT_MS, maxAttempts: 1 });
    healthy = await bucketExists(client, pool.s3_bucket ?? '');
    if (!healthy) ctx.log.warn({ poolId: pool.id }, 'S3 pool unhealthy: bucket does not exist');
  } catch (err) {
    ctx.log.warn({ poolId: pool.id, error: classifyS3Error(err).message }, 'S3 pool unhealthy');
  }
  const [usage] = await ctx.sql<{ used_bytes: number }[]>`
    select used_bytes from pool_usage where pool_id = ${pool.id}`.catch(() => [] as { used_bytes: number }[]);
  const used = usage ? Number(usage.used_bytes) : 0;
  await writeHealth(ctx.kv.health, {
    pool_id: pool.id,
    node_id: pool.node_id,
    healthy,
    reachable: healthy,
    // A bucket has no disk to fill: the operator's capacity (if any) is the only bound.
    free_bytes: pool.max_capacity_bytes === null ? null : Math.max(0, Number(pool.max_capacity_bytes) - used),
    used_bytes: used,
    checked_at: new Date().toISOString(),
  });
}

export function startS3HealthReporter(
  ctx: Ctx,
  pools: () => Pool[],
): { stop(): void; tick(): Promise<void> } {
  const tick = async () => {
    await Promise.all(
      pools()
        .filter((p) => p.is_active && isServableS3Pool(p))
        .map((p) =>
          checkS3Pool(ctx, p).catch((err: unknown) => ctx.log.warn({ err }, 'S3 health report failed')),
        ),
    );
  };
  const timer = setInterval(() => void tick(), HEALTH_REPORT_INTERVAL_MS);
  return { stop: () => clearInterval(timer), tick };
}
