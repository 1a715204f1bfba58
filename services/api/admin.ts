// Admin API (Authorization: Bearer <ADMIN_TOKEN>): everything the CLI does, over HTTP.
import { Type } from '@sinclair/typebox';
import { badRequest, notFound } from '../../shared/errors.js';
import { readHealth } from '../../shared/kv.js';
import {
  addPool,
  getPool,
  listPools,
  publicPool,
  updatePool,
  STORAGE_TIERS,
  STORAGE_TYPES,
  type PoolInput,
} from '../../shared/pools.js';
import { isSettingKey, parseSettingValue } from '../../shared/settings.js';
import {
  createApiKey,
  createUser,
  getUser,
  listApiKeys,
  listUsers,
  revokeApiKey,
  rotateApiKey,
  updateUser,
} from '../../shared/users.js';
import type { App } from '../http/app.js';
import type { Ctx } from '../context.js';
import { requeueFailedBackups } from '../backup/worker.js';
import { startMove } from '../mover/enqueue.js';
import { consumerLag, projectorLag } from '../ops/consumers.js';
import { imageHistory } from '../ops/events.js';
import { listFailedJobs, retryFailedJobs } from '../ops/failed-jobs.js';
import { requestReprocess } from '../ops/images.js';
import {
  ApiKeySchema,
  BackupCountsSchema,
  ConsumersSchema,
  counted,
  CreatedUserSchema,
  FailedJobSchema,
  HistoryEventSchema,
  NewKeySchema,
  PoolSchema,
  PoolWithUsageSchema,
  SettingsSchema,
  SettingValue,
  UserSchema,
} from './admin-schemas.js';
import { requireAdmin } from './auth.js';
import { errors } from './schemas.js';

const PoolBody = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: 100 }),
    storage_type: Type.Optional(Type.Union(STORAGE_TYPES.map((t) => Type.Literal(t)))),
    storage_tier: Type.Optional(Type.Union(STORAGE_TIERS.map((t) => Type.Literal(t)))),
    priority: Type.Optional(Type.Integer()),
    base_path: Type.Optional(Type.Union([Type.String({ minLength: 1 }), Type.Null()])),
    public_base_url: Type.String({ minLength: 1, examples: ['https://img1.example.com'] }),
    upload_api_url: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    node_id: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' })),
    max_capacity_bytes: Type.Optional(Type.Union([Type.Integer({ minimum: 1 }), Type.Null()])),
    is_active: Type.Optional(Type.Boolean()),
    is_backup_target: Type.Optional(Type.Boolean()),
    s3_bucket: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    s3_region: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    s3_endpoint: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    s3_access_key: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    s3_secret_key: Type.Optional(Type.Union([Type.String(), Type.Null()])),
    s3_force_path_style: Type.Optional(Type.Boolean()),
    s3_prefix: Type.Optional(Type.String()),
    s3_private: Type.Optional(
      Type.Boolean({
        description: 'S3 pools: objects are private; /uploads/... redirects to presigned GETs',
      }),
    ),
    description: Type.Optional(Type.String()),
  },
  {
    additionalProperties: false,
    examples: [
      {
        name: 'img2',
        storage_type: 'local',
        base_path: '/var/lib/pixelfox/pools/img2',
        public_base_url: 'https://img2.example.com',
        node_id: 'node-b',
      },
    ],
  },
);

const IdParam = Type.Object({ id: Type.String({ minLength: 1, maxLength: 200 }) });
const security = [{ adminToken: [] }];

export async function adminRoutes(app: App, ctx: Ctx) {
  app.addHook('onRequest', async (req) => requireAdmin(ctx, req));
  const dbError = (err: unknown): never => {
    const msg = String(err);
    if (/duplicate key/.test(msg))
      throw badRequest('duplicate', 'a pool or user with that name already exists');
    if (/violates check constraint|invalid input/.test(msg))
      throw badRequest('invalid', msg.replace(/^PostgresError: /, ''));
    throw err;
  };

  app.get(
    '/api/admin/pools',
    {
      schema: {
        tags: ['admin'],
        summary: 'Pools with usage and health',
        security,
        response: { 200: Type.Array(PoolWithUsageSchema), ...errors(401) },
      },
    },
    async () => {
      const pools = await listPools(ctx.sql);
      const [usage, health] = await Promise.all([
        ctx.sql<{ pool_id: string; used_bytes: number; file_count: number }[]>`select * from pool_usage`,
        readHealth(
          ctx.kv.health,
          pools.map((p) => p.id),
        ).catch(() => new Map()),
      ]);
      const u = new Map(usage.map((x) => [x.pool_id, x]));
      return pools.map((p) => ({
        ...publicPool(p),
        used_bytes: u.get(p.id)?.used_bytes ?? 0,
        file_count: u.get(p.id)?.file_count ?? 0,
        health: health.get(p.id) ?? null,
      }));
    },
  );
  app.post(
    '/api/admin/pools',
    {
      schema: {
        tags: ['admin'],
        summary: 'Add a pool',
        security,
        body: PoolBody,
        response: { 201: PoolSchema, ...errors(400, 401) },
      },
    },
    async (req, reply) => {
      const body = req.body as PoolInput;
      const pool = await addPool(ctx.sql, {
        ...body,
        upload_api_url:
          body.upload_api_url ??
          (body.storage_type === 's3'
            ? null
            : `${body.public_base_url.replace(/\/+$/, '')}/api/internal/upload`),
      }).catch(dbError);
      return reply.status(201).send(publicPool(pool));
    },
  );
  app.get(
    '/api/admin/pools/:id',
    {
      schema: {
        tags: ['admin'],
        summary: 'One pool (by id or name)',
        security,
        params: IdParam,
        response: { 200: PoolSchema, ...errors(401, 404) },
      },
    },
    async (req) => {
      const pool = await getPool(ctx.sql, req.params.id);
      if (!pool) throw notFound('pool not found');
      return publicPool(pool);
    },
  );
  app.patch(
    '/api/admin/pools/:id',
    {
      schema: {
        tags: ['admin'],
        summary: 'Change a pool',
        security,
        params: IdParam,
        body: Type.Partial(PoolBody, { examples: [{ is_active: false }] }),
        response: { 200: PoolSchema, ...errors(400, 401, 404) },
      },
    },
    async (req) => {
      const existing = await getPool(ctx.sql, req.params.id);
      if (!existing) throw notFound('pool not found');
      const pool = await updatePool(ctx.sql, existing.id, req.body as Partial<PoolInput>).catch(dbError);
      if (!pool) throw notFound('pool not found');
      return publicPool(pool);
    },
  );

  app.get(
    '/api/admin/settings',
    {
      schema: {
        tags: ['admin'],
        summary: 'All settings (defaults where unset)',
        security,
        response: { 200: SettingsSchema, ...errors(401) },
      },
    },
    async () => ctx.settings.all(),
  );
  app.put(
    '/api/admin/settings/:key',
    {
      schema: {
        tags: ['admin'],
        summary: 'Change a setting',
        security,
        params: Type.Object({ key: Type.String({ examples: ['job_queue_worker_count'] }) }),
        body: Type.Object(
          {
            value: Type.Unknown({ description: "the new value (strings are parsed to the setting's type)" }),
          },
          { examples: [{ value: 4 }] },
        ),
        response: {
          200: Type.Object(
            { key: Type.String(), value: SettingValue },
            { examples: [{ key: 'job_queue_worker_count', value: 4 }] },
          ),
          ...errors(400, 401, 404),
        },
      },
    },
    async (req) => {
      const key = req.params.key;
      if (!isSettingKey(key)) throw notFound(`unknown setting ${key}`);
      try {
        parseSettingValue(key, req.body.value);
      } catch (err) {
        throw badRequest('invalid_setting', (err as Error).message);
      }
      return { key, value: await ctx.settings.set(key, req.body.value) };
    },
  );

  app.get(
    '/api/admin/users',
    {
      schema: {
        tags: ['admin'],
        summary: 'Users',
        security,
        response: { 200: Type.Array(UserSchema), ...errors(401) },
      },
    },
    async () => listUsers(ctx.sql),
  );
  app.post(
    '/api/admin/users',
    {
      schema: {
        tags: ['admin'],
        summary: 'Create a user and its first API key (shown once)',
        security,
        body: Type.Object({
          email: Type.String({ examples: ['ada@example.com'] }),
          plan: Type.Optional(
            Type.Union([Type.Literal('free'), Type.Literal('premium'), Type.Literal('premium_max')]),
          ),
        }),
        response: { 201: CreatedUserSchema, ...errors(400, 401) },
      },
    },
    async (req, reply) => {
      try {
        const r = await createUser(ctx.sql, req.body.email, req.body.plan ?? 'free');
        return reply
          .status(201)
          .send({ user_id: r.user.id, api_key: r.apiKey, email: r.user.email, plan: r.user.plan });
      } catch (err) {
        if (/duplicate key/.test(String(err))) throw badRequest('duplicate', 'a user with that email exists');
        throw badRequest('invalid_user', (err as Error).message);
      }
    },
  );
  app.patch(
    '/api/admin/users/:id',
    {
      schema: {
        tags: ['admin'],
        summary: 'Change plan, preferences or disable a user',
        security,
        params: IdParam,
        body: Type.Object(
          {
            plan: Type.Optional(Type.String()),
            prefs: Type.Optional(
              Type.Object({ webp: Type.Optional(Type.Boolean()), avif: Type.Optional(Type.Boolean()) }),
            ),
            disabled: Type.Optional(Type.Boolean()),
          },
          { examples: [{ plan: 'premium', prefs: { avif: false } }] },
        ),
        response: { 200: UserSchema, ...errors(400, 401, 404) },
      },
    },
    async (req) => {
      const u = await getUser(ctx.sql, req.params.id);
      if (!u) throw notFound('user not found');
      let updated;
      try {
        updated = await updateUser(ctx.sql, u.id, req.body);
      } catch (err) {
        throw badRequest('invalid_user', (err as Error).message);
      }
      // Deleted between the two statements.
      if (!updated) throw notFound('user not found');
      return updated;
    },
  );
  app.get(
    '/api/admin/users/:id/keys',
    {
      schema: {
        tags: ['admin'],
        summary: "A user's API keys",
        security,
        params: IdParam,
        response: { 200: Type.Array(ApiKeySchema), ...errors(401, 404) },
      },
    },
    async (req) => {
      const u = await getUser(ctx.sql, req.params.id);
      if (!u) throw notFound('user not found');
      return listApiKeys(ctx.sql, u.id);
    },
  );
  app.post(
    '/api/admin/users/:id/keys',
    {
      schema: {
        tags: ['admin'],
        summary: 'Create an API key',
        security,
        params: IdParam,
        body: Type.Object({ name: Type.Optional(Type.String({ maxLength: 100, examples: ['ci'] })) }),
        response: { 201: NewKeySchema, ...errors(400, 401, 404) },
      },
    },
    async (req, reply) => {
      const u = await getUser(ctx.sql, req.params.id);
      if (!u) throw notFound('user not found');
      const k = await createApiKey(ctx.sql, u.id, req.body.name ?? 'default');
      return reply.status(201).send({ key_id: k.id, api_key: k.key });
    },
  );
  app.post(
    '/api/admin/keys/:id/revoke',
    {
      schema: {
        tags: ['admin'],
        summary: 'Revoke an API key',
        security,
        params: IdParam,
        response: {
          200: Type.Object({ revoked: Type.Literal(true) }, { examples: [{ revoked: true }] }),
          ...errors(401, 404),
        },
      },
    },
    async (req) => {
      if (!(await revokeApiKey(ctx.sql, req.params.id))) throw notFound('key not found or already revoked');
      return { revoked: true as const };
    },
  );
  app.post(
    '/api/admin/keys/:id/rotate',
    {
      schema: {
        tags: ['admin'],
        summary: 'Rotate an API key (new key, old one revoked)',
        security,
        params: IdParam,
        response: { 200: NewKeySchema, ...errors(401, 404) },
      },
    },
    async (req) => {
      const k = await rotateApiKey(ctx.sql, req.params.id);
      if (!k) throw notFound('key not found or already revoked');
      return { key_id: k.id, api_key: k.key };
    },
  );

  app.post(
    '/api/admin/images/:id/reprocess',
    {
      schema: {
        tags: ['admin'],
        summary: 'Reprocess one image',
        security,
        params: IdParam,
        response: { 202: counted('requested', 'reprocess requests published'), ...errors(401, 404) },
      },
    },
    async (req, reply) => {
      const ids = await requestReprocess(ctx.sql, ctx.pub, { imageId: req.params.id }, 'admin-api');
      if (ids.length === 0) throw notFound('image not found');
      return reply.status(202).send({ requested: ids.length });
    },
  );
  app.post(
    '/api/admin/images/reprocess-failed',
    {
      schema: {
        tags: ['admin'],
        summary: 'Reprocess every failed image',
        security,
        response: { 202: counted('requested', 'reprocess requests published'), ...errors(401) },
      },
    },
    async (_req, reply) =>
      reply.status(202).send({
        requested: (await requestReprocess(ctx.sql, ctx.pub, { failed: true }, 'admin-api')).length,
      }),
  );
  app.get(
    '/api/admin/images/:id/history',
    {
      schema: {
        tags: ['admin'],
        summary: "One image's events in stream order (empty for an unknown image)",
        security,
        params: IdParam,
        response: { 200: Type.Array(HistoryEventSchema), ...errors(401) },
      },
    },
    async (req) =>
      (await imageHistory(ctx.nats.js, ctx.names, req.params.id)).map((e) => ({ seq: e.seq, ...e.event })),
  );
  app.post(
    '/api/admin/backups/retry',
    {
      schema: {
        tags: ['admin'],
        summary: 'Re-queue failed backups',
        security,
        body: Type.Object(
          { image_id: Type.Optional(Type.String({ format: 'uuid' })) },
          { description: 'no image_id: every failed backup', examples: [{}] },
        ),
        response: { 202: counted('requeued', 'backups re-queued'), ...errors(400, 401) },
      },
    },
    async (req, reply) =>
      reply.status(202).send({
        requeued: await requeueFailedBackups(ctx, req.body.image_id ? { imageId: req.body.image_id } : {}),
      }),
  );
  app.get(
    '/api/admin/jobs/failed',
    {
      schema: {
        tags: ['admin'],
        summary: 'Failed jobs (max deliveries or terminated)',
        security,
        querystring: Type.Object({
          all: Type.Optional(Type.Boolean({ description: 'include retried ones' })),
        }),
        response: { 200: Type.Array(FailedJobSchema), ...errors(400, 401) },
      },
    },
    async (req) => listFailedJobs(ctx.sql, { includeRetried: req.query.all === true }),
  );
  app.post(
    '/api/admin/jobs/failed/retry',
    {
      schema: {
        tags: ['admin'],
        summary: 'Retry one failed job or all',
        security,
        body: Type.Union(
          [
            Type.Object({ all: Type.Literal(true) }),
            Type.Object({ consumer: Type.String(), stream_seq: Type.Integer() }),
          ],
          { examples: [{ all: true }, { consumer: 'pixelfox_processor-local', stream_seq: 42 }] },
        ),
        response: { 202: counted('retried', 'jobs asked for again'), ...errors(400, 401) },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const n = await retryFailedJobs(
        ctx,
        'all' in b ? { all: true } : { consumer: b.consumer, streamSeq: b.stream_seq },
      );
      return reply.status(202).send({ retried: n });
    },
  );
  app.post(
    '/api/admin/moves',
    {
      schema: {
        tags: ['admin'],
        summary: 'Move the images of a pool to another pool',
        security,
        body: Type.Object(
          {
            from_pool_id: Type.String({ minLength: 1, description: 'pool id or name' }),
            to_pool_id: Type.String({ minLength: 1, description: 'pool id or name' }),
            limit: Type.Optional(Type.Integer({ minimum: 1 })),
          },
          { examples: [{ from_pool_id: 'default', to_pool_id: 'img2', limit: 1000 }] },
        ),
        response: {
          202: Type.Object(
            {
              move_id: Type.String(),
              count: Type.Integer(),
              from_pool_id: Type.String(),
              to_pool_id: Type.String(),
            },
            {
              examples: [
                {
                  move_id: '7c9e6679-7425-40de-944b-e07fc1f90ae7',
                  count: 1000,
                  from_pool_id: '0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11',
                  to_pool_id: '9d0c6a8e-3f57-4a4e-8c1e-6f1b2a3c4d5e',
                },
              ],
            },
          ),
          ...errors(400, 401, 404),
        },
      },
    },
    async (req, reply) =>
      reply.status(202).send(
        await startMove(ctx, {
          fromPoolId: req.body.from_pool_id,
          toPoolId: req.body.to_pool_id,
          ...(req.body.limit !== undefined ? { limit: req.body.limit } : {}),
          correlationId: req.id,
        }),
      ),
  );
  app.get(
    '/api/admin/consumers',
    {
      schema: {
        tags: ['admin'],
        summary: 'Consumer lag and projector lag',
        security,
        response: { 200: ConsumersSchema, ...errors(401) },
      },
    },
    async () => ({
      consumers: await consumerLag(ctx.nats.jsm, ctx.names),
      projector: await projectorLag(ctx.nats.jsm, ctx.names, ctx.sql),
    }),
  );
  app.get(
    '/api/admin/backups',
    {
      schema: {
        tags: ['admin'],
        summary: 'Backups by status',
        security,
        response: { 200: BackupCountsSchema, ...errors(401) },
      },
    },
    async () =>
      ctx.sql<
        { status: string; count: number }[]
      >`select status, count(*)::int as count from image_backups group by status order by status`,
  );
}
