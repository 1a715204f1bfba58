// Wires a process: connections, streams, read models, then the roles it runs (API, storage node,
// workers, projector) on one HTTP server. `npm start` runs all roles; `pixelfox serve <role…>` some.
import type { Config } from '../shared/config.js';
import { createSql, ensureDatabase } from '../shared/db.js';
import { openBuckets } from '../shared/kv.js';
import type { Logger } from '../shared/logger.js';
import { migrate } from '../shared/migrate.js';
import { connectNats } from '../shared/nats.js';
import { addPool, listPools, type Pool } from '../shared/pools.js';
import { startProjectionWatch } from '../shared/projection-watch.js';
import { publisher } from '../shared/publish.js';
import { SettingsStore } from '../shared/settings.js';
import { LocalStore } from '../shared/storage/local.js';
import { applyConsumers, applyStream } from '../streams/apply.js';
import { names } from '../streams/subjects.js';
import { newProjectorState, runProjector } from '../projections/projector.js';
import path from 'node:path';
import { apiRoutes } from './api/routes.js';
import { adminRoutes } from './api/admin.js';
import { adminUiRoutes } from './api/admin-ui.js';
import { metricsRoutes, observeHttp } from './http/metrics.js';
import { replicateRoutes } from './storage-node/replicate.js';
import type { Ctx } from './context.js';
import { buildApp, typed } from './http/app.js';
import { healthRoutes } from './http/health.js';
import { startHealthReporter } from './storage-node/health.js';
import { storageNodeRoutes } from './storage-node/routes.js';
import { serveUpload } from './storage-node/serve.js';
import { startWorkers, type Workers } from './workers.js';
import { startFailedJobsRecorder } from './ops/failed-jobs.js';
import { sweepTempRoot } from './storage/pool-store.js';
import { startS3HealthReporter } from './storage/s3-health.js';
import { s3Redirect } from './storage/s3-serve.js';

export type Role = 'api' | 'storage' | 'worker' | 'projector';
export const ALL_ROLES: readonly Role[] = ['api', 'storage', 'worker', 'projector'];

export interface Stack {
  ctx: Ctx;
  url: string;
  close(): Promise<void>;
}

/** The default pool on first start: local, hot, under DATA_DIR, served by this node. */
async function ensureDefaultPool(ctx: Ctx): Promise<void> {
  const pools = await listPools(ctx.sql);
  if (pools.length > 0) return;
  const pool = await addPool(ctx.sql, {
    name: 'default',
    storage_type: 'local',
    storage_tier: 'hot',
    priority: 100,
    base_path: path.join(ctx.config.dataDir, 'pools', 'default'),
    public_base_url: ctx.config.publicDomain,
    upload_api_url: `${ctx.config.publicDomain}/api/internal/upload`,
    node_id: ctx.config.nodeId,
    description: 'created on first start',
  }).catch((err: unknown) => {
    if (/duplicate key/.test(String(err))) return null; // another node created it at the same moment
    throw err;
  });
  if (pool) ctx.log.info({ poolId: pool.id, basePath: pool.base_path }, 'created default pool');
}

export async function startStack(config: Config, roles: readonly Role[], log: Logger): Promise<Stack> {
  const has = (r: Role) => roles.includes(r);
  await ensureDatabase(config.databaseUrl, log);
  await migrate(config.databaseUrl, log);
  const sql = createSql(config.databaseUrl);
  const abort = new AbortController();
  const background: Promise<unknown>[] = [];
  const timers: NodeJS.Timeout[] = [];
  let nats: Awaited<ReturnType<typeof connectNats>> | null = null;
  let app: ReturnType<typeof buildApp> | null = null;
  let workers: Workers | null = null;
  let reporter: ReturnType<typeof startHealthReporter> | null = null;
  let s3Reporter: ReturnType<typeof startS3HealthReporter> | null = null;
  let closeWatch: (() => Promise<void>) | null = null;

  let closing: Promise<void> | null = null;
  const close = () =>
    (closing ??= (async () => {
      for (const t of timers) clearInterval(t);
      reporter?.stop();
      s3Reporter?.stop();
      // Stop taking new work first, then let in-flight work finish (or hand it back).
      await app?.close();
      await workers?.stop(config.shutdownTimeoutMs);
      abort.abort();
      await Promise.allSettled(background);
      await closeWatch?.();
      await nats?.nc.drain().catch(() => undefined);
      await sql.end({ timeout: 5 });
    })());

  try {
    nats = await connectNats(config.natsUrl, log, `pixelfox-${config.nodeId}-${roles.join('+')}`);
    const n = names(config.namespace);
    await applyStream(nats.jsm, n, config.natsReplicas);
    const kv = await openBuckets(nats.js, n, config.natsReplicas);
    const ctx: Ctx = {
      config,
      log,
      sql,
      nats,
      names: n,
      pub: publisher(nats.nc, n),
      settings: new SettingsStore(sql),
      kv,
      projector: has('projector') ? newProjectorState() : null,
      projection: null,
    };
    if (has('api') || has('storage')) {
      const w = startProjectionWatch(config.databaseUrl, sql, n, log);
      ctx.projection = w.watch;
      closeWatch = w.close;
    }
    await ensureDefaultPool(ctx);

    // This node's local/NFS pools, refreshed so pools added by an operator are picked up without restart.
    let allPools: Pool[] = await listPools(sql);
    const nodePools = () => allPools.filter((p) => p.node_id === config.nodeId && p.storage_type !== 's3');
    timers.push(
      setInterval(() => {
        listPools(sql).then(
          (p) => (allPools = p),
          (err: unknown) => log.warn({ err }, 'pool refresh failed'),
        );
      }, 5_000),
    );
    await applyConsumers(nats.jsm, n, [config.nodeId, ...allPools.map((p) => p.node_id)]);

    if (ctx.projector) {
      background.push(
        runProjector({ js: nats.js, sql, names: n, log, signal: abort.signal, state: ctx.projector }),
      );
      background.push(startFailedJobsRecorder(sql, nats, n, log, abort.signal));
    }

    app = buildApp(log);
    // Root-level hook, before any route plugin: hooks are encapsulated, so this sees every route.
    observeHttp(app);
    await app.register(async (a) => healthRoutes(typed(a), ctx));
    if (has('api')) {
      await app.register(async (a) => apiRoutes(typed(a), ctx));
      await app.register(async (a) => adminRoutes(typed(a), ctx));
      await app.register(async (a) => adminUiRoutes(typed(a), ctx));
    }
    await app.register(async (a) => metricsRoutes(typed(a), ctx));
    if (has('storage')) {
      for (const p of nodePools()) {
        if (!p.base_path) continue;
        const store = new LocalStore(p.base_path);
        await store.ensureReady();
        await store.sweepTemp(60 * 60_000);
      }
      await app.register(async (a) =>
        storageNodeRoutes(typed(a), ctx, nodePools, (rel) => s3Redirect(sql, log, () => allPools, rel)),
      );
      await app.register(async (a) => replicateRoutes(typed(a), ctx, nodePools));
      reporter = startHealthReporter(ctx, nodePools);
      await reporter.tick();
    } else if (has('api')) {
      // URLs of private S3 pools point at PUBLIC_DOMAIN/uploads/…: an API without the storage role still
      // answers them (the redirect to a presigned GET; it has no files of its own).
      await app.register(async (a) => {
        a.get<{ Params: { '*': string } }>('/uploads/*', { schema: { hide: true } }, (req, reply) =>
          serveUpload([], req, reply, (rel) => s3Redirect(sql, log, () => allPools, rel)),
        );
      });
    }
    if (has('worker') && !config.disableJobWorkers) workers = startWorkers(ctx, () => allPools);
    if (has('api') || has('worker')) {
      // Temp files of S3 work (DATA_DIR/tmp) left by a crash; nothing there is older than an hour in use.
      await sweepTempRoot(config.dataDir, 60 * 60_000).catch(() => undefined);
      // S3 pools belong to no node: processes that hand out sessions or do the work report their health.
      s3Reporter = startS3HealthReporter(ctx, () => allPools);
      await s3Reporter.tick();
    }

    await app.listen({ host: config.appHost, port: config.appPort });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : config.appPort;
    const url = `http://${config.appHost === '0.0.0.0' ? '127.0.0.1' : config.appHost}:${port}`;
    log.info({ url, roles, nodeId: config.nodeId, namespace: config.namespace }, 'pixelfox is up');
    return { ctx, url, close };
  } catch (err) {
    await close().catch(() => undefined);
    throw err;
  }
}
