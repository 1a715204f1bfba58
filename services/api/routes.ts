// Public API v1: upload sessions and the read API over the projections.
import { Type } from '@sinclair/typebox';
import { makeEvent } from '../../streams/events/codec.js';
import { notFound, unavailable, errorMessage, badRequest } from '../../shared/errors.js';
import { waitForCheckpoint } from '../../projections/projector.js';
import type { App } from '../http/app.js';
import type { Ctx } from '../context.js';
import { optionalUser, requireUser } from './auth.js';
import { loadImageView, presentImage } from './present.js';
import { UuidParam, errors } from './schemas.js';
import { createUploadSession } from './sessions.js';
import { renderViewPage } from './view-page.js';

/** Read-your-writes: after publishing, wait (bounded) until the projector has applied the event. */
export async function awaitProjection(ctx: Ctx, seq: number, ms = 2_000): Promise<void> {
  await waitForCheckpoint(ctx.sql, seq, ms).catch(() => undefined);
}

export async function apiRoutes(app: App, ctx: Ctx) {
  app.post(
    '/api/v1/upload/sessions',
    {
      schema: {
        tags: ['uploads'],
        summary: 'Start a direct upload: returns the storage node URL and a 30-minute upload token',
        security: [{ apiKey: [] }],
        body: Type.Object(
          {
            file_size: Type.Integer({ minimum: 1, description: 'bytes', examples: [2_345_678] }),
            filename: Type.Optional(Type.String({ maxLength: 255, examples: ['holiday.jpg'] })),
            content_type: Type.Optional(Type.String({ maxLength: 100, examples: ['image/jpeg'] })),
          },
          { additionalProperties: false },
        ),
        response: {
          201: Type.Object({
            upload_url: Type.String({ examples: ['http://127.0.0.1:3000/api/internal/upload'] }),
            token: Type.String(),
            pool_id: Type.String({ format: 'uuid' }),
            expires_at: Type.String({ format: 'date-time' }),
            max_bytes: Type.Integer(),
          }),
          ...errors(400, 401, 403, 413, 503),
        },
      },
    },
    async (req, reply) => {
      const user = await requireUser(ctx, req);
      return reply.status(201).send(await createUploadSession(ctx, user, req.body));
    },
  );

  app.get(
    '/api/v1/images',
    {
      schema: {
        tags: ['images'],
        summary: "The caller's images, newest first (cursor paging)",
        security: [{ apiKey: [] }],
        querystring: Type.Object({
          cursor: Type.Optional(Type.String({ maxLength: 200 })),
          limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20 })),
        }),
        response: {
          200: Type.Object({
            images: Type.Array(Type.Ref('Image')),
            next_cursor: Type.Union([Type.String(), Type.Null()]),
          }),
          ...errors(400, 401),
        },
      },
    },
    async (req) => {
      const user = await requireUser(ctx, req);
      const limit = req.query.limit ?? 20;
      let after: { at: string; id: string } | null = null;
      if (req.query.cursor) {
        try {
          const [at, id] = Buffer.from(req.query.cursor, 'base64url').toString().split('|');
          if (!at || !id || Number.isNaN(Date.parse(at)) || !/^[0-9a-f-]{36}$/.test(id))
            throw new Error('bad');
          after = { at, id };
        } catch {
          throw badRequest('invalid_cursor', 'cursor is not one this API handed out');
        }
      }
      const rows = after
        ? await ctx.sql<{ id: string; created_at: Date }[]>`
            select id, created_at from images where user_id = ${user.id} and deleted_at is null
              and (created_at, id) < (${after.at}::timestamptz, ${after.id}::uuid)
            order by created_at desc, id desc limit ${limit + 1}`
        : await ctx.sql<{ id: string; created_at: Date }[]>`
            select id, created_at from images where user_id = ${user.id} and deleted_at is null
            order by created_at desc, id desc limit ${limit + 1}`;
      const page = rows.slice(0, limit);
      const views = await Promise.all(page.map((r) => loadImageView(ctx.sql, r.id)));
      const last = page[page.length - 1];
      return {
        images: views.filter((v) => v !== null).map((v) => presentImage(v, ctx.config.publicDomain)),
        next_cursor:
          rows.length > limit && last
            ? Buffer.from(`${last.created_at.toISOString()}|${last.id}`).toString('base64url')
            : null,
      };
    },
  );

  app.get(
    '/api/v1/images/:uuid',
    {
      schema: {
        tags: ['images'],
        summary: 'One image: original URL, dimensions, status, variants, metadata, backups',
        description: 'The owner (API key) sees it; anyone else only with `?share=<share_link>`.',
        security: [{ apiKey: [] }],
        params: UuidParam,
        querystring: Type.Object({ share: Type.Optional(Type.String({ maxLength: 32 })) }),
        response: { 200: Type.Ref('Image'), ...errors(401, 404) },
      },
    },
    async (req) => {
      const user = await optionalUser(ctx, req);
      const view = await loadImageView(ctx.sql, req.params.uuid);
      if (!view || view.image.deleted_at) throw notFound('image not found');
      const owner = user !== null && view.image.user_id === user.id;
      if (!owner && !(req.query.share && req.query.share === view.image.share_link))
        throw notFound('image not found');
      return presentImage(view, ctx.config.publicDomain, { includeExif: owner });
    },
  );

  app.get(
    '/api/v1/images/:uuid/status',
    {
      schema: {
        tags: ['images'],
        summary: 'Processing status (poll until complete)',
        security: [{ apiKey: [] }],
        params: UuidParam,
        response: {
          200: Type.Object({
            image_uuid: Type.String(),
            status: Type.String({ enum: ['pending', 'processing', 'completed', 'failed'] }),
            complete: Type.Boolean(),
            reason: Type.Union([Type.String(), Type.Null()]),
          }),
          ...errors(401, 404),
        },
      },
    },
    async (req) => {
      const user = await requireUser(ctx, req);
      const [row] = await ctx.sql<
        { status: 'pending' | 'processing' | 'completed' | 'failed'; status_reason: string | null }[]
      >`
        select status, status_reason from images where id = ${req.params.uuid} and user_id = ${user.id} and deleted_at is null`;
      if (!row) throw notFound('image not found');
      return {
        image_uuid: req.params.uuid,
        status: row.status,
        complete: row.status === 'completed',
        reason: row.status_reason,
      };
    },
  );

  app.delete(
    '/api/v1/images/:uuid',
    {
      schema: {
        tags: ['images'],
        summary:
          'Delete an image: gone from the API at once; files, backups and rows are removed asynchronously',
        security: [{ apiKey: [] }],
        params: UuidParam,
        response: {
          202: Type.Object({ image_uuid: Type.String(), status: Type.Literal('deleting') }),
          ...errors(401, 404, 503),
        },
      },
    },
    async (req, reply) => {
      const user = await requireUser(ctx, req);
      const [img] = await ctx.sql<{ node_id: string; storage_pool_id: string }[]>`
        select node_id, storage_pool_id from images where id = ${req.params.uuid} and user_id = ${user.id} and deleted_at is null`;
      if (!img) throw notFound('image not found');
      let seq: number;
      try {
        const ack = await ctx.pub.publish(
          makeEvent('ImageDeleted', {
            image_id: req.params.uuid,
            node_id: img.node_id,
            pool_id: img.storage_pool_id,
            correlation_id: req.id,
            data: { user_id: user.id },
          }),
        );
        seq = ack.seq;
      } catch (err) {
        throw unavailable(
          'event_store_unavailable',
          `the delete could not be recorded: ${errorMessage(err)}`,
        );
      }
      await awaitProjection(ctx, seq);
      return reply.status(202).send({ image_uuid: req.params.uuid, status: 'deleting' as const });
    },
  );

  app.get(
    '/i/:link',
    {
      schema: {
        tags: ['images'],
        summary: 'Public view page of a shared image (HTML)',
        params: Type.Object({ link: Type.String({ pattern: '^[A-Za-z0-9]{10}$' }) }),
      },
    },
    async (req, reply) => {
      const [row] = await ctx.sql<
        { id: string }[]
      >`select id from images where share_link = ${req.params.link} and deleted_at is null limit 1`;
      const view = row ? await loadImageView(ctx.sql, row.id) : null;
      if (!view) throw notFound('image not found');
      return reply
        .type('text/html; charset=utf-8')
        .header('content-security-policy', "default-src 'none'; img-src * data:; style-src 'unsafe-inline'")
        .send(renderViewPage(presentImage(view, ctx.config.publicDomain)));
    },
  );
}
