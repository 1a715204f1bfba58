// Each storage node reports its pools' health every few seconds to the shared KV bucket. Reports expire
// (bucket TTL), so a node that stops reporting stops receiving upload sessions.
import fs from 'node:fs/promises';
import { writeHealth, HEALTH_REPORT_INTERVAL_MS } from '../../shared/kv.js';
import type { Pool } from '../../shared/pools.js';
import { LocalStore } from '../../shared/storage/local.js';
import type { Ctx } from '../context.js';

export async function checkPool(ctx: Ctx, pool: Pool): Promise<void> {
  let healthy = false;
  let free: number | null = null;
  let total: number | null = null;
  if (pool.base_path) {
    try {
      const store = new LocalStore(pool.base_path);
      await store.ensureReady();
      // Writable, not only present: a read-only remount must take the pool out of selection.
      const probe = `${store.tmpPath()}.probe`;
      await fs.writeFile(probe, 'ok');
      await fs.rm(probe, { force: true });
      const du = await store.diskUsage();
      free = du.free;
      total = du.total;
      healthy = true;
    } catch (err) {
      ctx.log.warn({ err, poolId: pool.id }, 'pool unhealthy');
    }
  }
  const [usage] = await ctx.sql<
    { used_bytes: number }[]
  >`select used_bytes from pool_usage where pool_id = ${pool.id}`.catch(() => [] as { used_bytes: number }[]);
  await writeHealth(ctx.kv.health, {
    pool_id: pool.id,
    node_id: pool.node_id,
    healthy,
    // This node answers the pool's upload URL: it is the one reporting.
    reachable: healthy,
    free_bytes: free,
    used_bytes: usage?.used_bytes ?? null,
    checked_at: new Date().toISOString(),
  });
  void total;
}

export function startHealthReporter(ctx: Ctx, pools: () => Pool[]): { stop(): void; tick(): Promise<void> } {
  const tick = async () => {
    await Promise.all(
      pools().map((p) =>
        checkPool(ctx, p).catch((err: unknown) => ctx.log.warn({ err }, 'health report failed')),
      ),
    );
  };
  const timer = setInterval(() => void tick(), HEALTH_REPORT_INTERVAL_MS);
  return { stop: () => clearInterval(timer), tick };
}
