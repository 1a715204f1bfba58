// The /admin status page: three static files (no build step) and the one admin endpoint they read,
// GET /api/admin/overview. The page holds the admin token in sessionStorage and sends it as a Bearer
// token like any other admin client; the static files themselves are public (they contain no data).
import fs from 'node:fs/promises';
import { Type } from '@sinclair/typebox';
import { notFound } from '../../shared/errors.js';
import { readHealth } from '../../shared/kv.js';
import type { PoolHealth } from '../../shared/pools.js';
import type { App } from '../http/app.js';
import { parseDurable } from '../http/metrics.js';
import type { Ctx } from '../context.js';
import { consumerLag, projectorLag } from '../ops/consumers.js';
import { requireAdmin } from './auth.js';
import { errors } from './schemas.js';

const ASSET_DIR = new URL('./admin-ui/', import.meta.url);
const ASSETS = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
} as const;
type AssetName = keyof typeof ASSETS;

/**
 * Scripts and styles only from this origin (no inline code, so injected markup could not run); images
 * and uploads may go to other origins because pools and storage nodes have their own URLs.
 */
export const ADMIN_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' http: https: data: blob:",
  "connect-src 'self' http: https:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const security = [{ adminToken: [] }];
const Nullable = <T extends ReturnType<typeof Type.Object>>(t: T) => Type.Union([t, Type.Null()]);
const Count = Type.Integer({ minimum: 0 });

const OverviewSchema = Type.Object({
  generated_at: Type.String({ format: 'date-time' }),
  node_id: Type.String({ description: 'The node that answered', examples: ['local'] }),
  pools: Type.Array(
    Type.Object({
      id: Type.String({ format: 'uuid' }),
      name: Type.String({ examples: ['default'] }),
      node_id: Type.String({ examples: ['local'] }),
      storage_type: Type.String({ examples: ['local'] }),
      storage_tier: Type.String({ examples: ['hot'] }),
      is_active: Type.Boolean(),
      is_backup_target: Type.Boolean(),
      max_capacity_bytes: Type.Union([Type.Integer(), Type.Null()]),
      used_bytes: Type.Integer({
        description: 'Bytes charged to the pool by the read model',
        examples: [123456789],
      }),
      file_count: Type.Integer({ examples: [420] }),
      health: Nullable(
        Type.Object({
          healthy: Type.Boolean(),
          reachable: Type.Boolean(),
          free_bytes: Type.Union([Type.Number(), Type.Null()]),
          used_bytes: Type.Union([Type.Number(), Type.Null()]),
          checked_at: Type.String({ format: 'date-time' }),
        }),
      ),
    }),
  ),
  consumers: Type.Union(
    [
      Type.Array(
        Type.Object({
          name: Type.String({ examples: ['pixelfox_processor-local'] }),
          kind: Type.String({ examples: ['processor'] }),
          node: Type.String({ examples: ['local'] }),
          filter: Type.String({ examples: ['pixelfox.ev.ImageStored.local.*'] }),
          pending: Count,
          ack_pending: Count,
          redelivered: Count,
          waiting: Count,
        }),
      ),
      Type.Null(),
    ],
    { description: 'null when JetStream could not be asked' },
  ),
  projector: Nullable(Type.Object({ head: Count, checkpoint: Count, lag: Count })),
  images: Type.Object({ pending: Count, processing: Count, failed: Count }),
  backups: Type.Array(Type.Object({ status: Type.String({ examples: ['completed'] }), count: Count })),
  failed_jobs: Type.Array(
    Type.Object({
      consumer: Type.String(),
      stream_seq: Count,
      kind: Type.String({ examples: ['max_deliveries'] }),
      image_id: Type.Union([Type.String(), Type.Null()]),
      event_type: Type.Union([Type.String(), Type.Null()]),
      deliveries: Type.Union([Type.Integer(), Type.Null()]),
      reason: Type.Union([Type.String(), Type.Null()]),
      failed_at: Type.String({ format: 'date-time' }),
    }),
  ),
  failed_images: Type.Array(
    Type.Object({
      image_id: Type.String({ format: 'uuid' }),
      original_filename: Type.Union([Type.String(), Type.Null()]),
      reason: Type.Union([Type.String(), Type.Null()]),
      failed_at: Type.String({ format: 'date-time' }),
    }),
  ),
});

/** Recent failures shown on the page; the full lists are GET /api/admin/jobs/failed and the CLI. */
const RECENT = 20;

async function overview(ctx: Ctx) {
  const [pools, consumers, projector, images, backups, failedJobs, failedImages] = await Promise.all([
    ctx.sql<
      {
        id: string;
        name: string;
        node_id: string;
        storage_type: string;
        storage_tier: string;
        is_active: boolean;
        is_backup_target: boolean;
        max_capacity_bytes: number | null;
        used_bytes: number;
        file_count: number;
      }[]
    >`select p.id, p.name, p.node_id, p.storage_type, p.storage_tier, p.is_active, p.is_backup_target,
             p.max_capacity_bytes, coalesce(u.used_bytes, 0) as used_bytes, coalesce(u.file_count, 0) as file_count
      from storage_pools p left join pool_usage u on u.pool_id = p.id
      order by p.node_id, p.priority desc, p.name`,
    // NATS trouble must not hide the rest of the page: lag readings are null then.
    consumerLag(ctx.nats.jsm, ctx.names).catch((err: unknown) => {
      ctx.log.warn({ err }, 'overview: consumer lag unavailable');
      return null;
    }),
    projectorLag(ctx.nats.jsm, ctx.names, ctx.sql).catch(() => null),
    // Only unfinished and failed images are counted: the images_status index keeps this small.
    ctx.sql<{ status: string; n: number }[]>`
      select status, count(*)::int as n from images
      where deleted_at is null and status in ('pending', 'processing', 'failed') group by status`,
    ctx.sql<{ status: string; count: number }[]>`
      select status, count(*)::int as count from image_backups group by status order by status`,
    ctx.sql<
      {
        consumer: string;
        stream_seq: number;
        kind: string;
        image_id: string | null;
        event_type: string | null;
        deliveries: number | null;
        reason: string | null;
        failed_at: Date;
      }[]
    >`select consumer, stream_seq, kind, image_id, event_type, deliveries, reason, failed_at
      from failed_jobs where retried_at is null order by failed_at desc limit ${RECENT}`,
    ctx.sql<
      { id: string; original_filename: string | null; status_reason: string | null; updated_at: Date }[]
    >`
      select id, original_filename, status_reason, updated_at from images
      where status = 'failed' and deleted_at is null order by updated_at desc limit ${RECENT}`,
  ]);
  const health: Map<string, PoolHealth> = await readHealth(
    ctx.kv.health,
    pools.map((p) => p.id),
  ).catch(() => new Map<string, PoolHealth>());
  const byStatus = new Map(images.map((r) => [r.status, r.n]));
  return {
    generated_at: new Date().toISOString(),
    node_id: ctx.config.nodeId,
    pools: pools.map((p) => {
      const h = health.get(p.id);
      return {
        ...p,
        used_bytes: Number(p.used_bytes),
        file_count: Number(p.file_count),
        health: h
          ? {
              healthy: h.healthy,
              reachable: h.reachable,
              free_bytes: h.free_bytes,
              used_bytes: h.used_bytes,
              checked_at: h.checked_at,
            }
          : null,
      };
    }),
    consumers: consumers?.map((c) => ({ ...c, ...parseDurable(ctx.names, c.name) })) ?? null,
    projector,
    images: {
      pending: byStatus.get('pending') ?? 0,
      processing: byStatus.get('processing') ?? 0,
      failed: byStatus.get('failed') ?? 0,
    },
    backups,
    failed_jobs: failedJobs.map((j) => ({ ...j, failed_at: j.failed_at.toISOString() })),
    failed_images: failedImages.map((i) => ({
      image_id: i.id,
      original_filename: i.original_filename,
      reason: i.status_reason,
      failed_at: i.updated_at.toISOString(),
    })),
  };
}

export async function adminUiRoutes(app: App, ctx: Ctx): Promise<void> {
  // Read once at start: three small files, served from memory.
  const files = new Map<AssetName, Buffer>();
  for (const name of Object.keys(ASSETS) as AssetName[])
    files.set(name, await fs.readFile(new URL(name, ASSET_DIR)));
  const isAsset = (name: string): name is AssetName => Object.prototype.hasOwnProperty.call(ASSETS, name);

  app.addHook('onSend', async (req, reply) => {
    if (req.url === '/admin' || req.url.startsWith('/admin/') || req.url.startsWith('/admin?')) {
      void reply.headers({
        'content-security-policy': ADMIN_CSP,
        'x-frame-options': 'DENY',
        'referrer-policy': 'no-referrer',
        'cross-origin-opener-policy': 'same-origin',
        // The page shows live state and the files change with each deploy: always revalidate.
        'cache-control': 'no-cache',
      });
    }
  });

  const page = files.get('index.html');
  app.get('/admin', { schema: { hide: true } }, async (_req, reply) =>
    reply.type(ASSETS['index.html']).send(page),
  );
  app.get('/admin/', { schema: { hide: true } }, async (_req, reply) =>
    reply.type(ASSETS['index.html']).send(page),
  );
  app.get(
    '/admin/:file',
    { schema: { hide: true, params: Type.Object({ file: Type.String({ maxLength: 64 }) }) } },
    async (req, reply) => {
      const name = req.params.file;
      if (!isAsset(name) || name === 'index.html') throw notFound('no such file');
      return reply.type(ASSETS[name]).send(files.get(name));
    },
  );

  app.get(
    '/api/admin/overview',
    {
      onRequest: async (req) => requireAdmin(ctx, req),
      schema: {
        tags: ['admin'],
        summary: 'Everything the status page shows, in one call',
        description:
          'Pools with usage and health, consumer and projector lag, unfinished images, backups by status, recent failed jobs and failed images.',
        security,
        response: { 200: OverviewSchema, ...errors(401) },
      },
    },
    async () => overview(ctx),
  );
}
