// Public API v1: upload sessions and the read API over the projections.
import { Type } from '@sinclair/typebox';
import { makeEvent } from '../../streams/events/codec.js';
import { notFound, unavailable, errorMessage, badRequest } from '../../shared/errors.js';
import { waitForCheckpoint } from '../../projections/projector.js';
import type { App } from '../http/app.js';
import type { Ctx } from '../context.js';
import { optionalUserCached, requireUser } from './auth.js';
import { loadImageView, presentImage } from './present.js';
import { cachedImage, startReadCache, type CachedImage } from './read-cache.js';
import type { User } from '../../shared/users.js';
import { UuidParam, UploadResultSchema, errors } from './schemas.js';
import { completeS3Upload } from './s3-uploads.js';
import { createUploadSession } from './sessions.js';
import { renderViewPage } from './view-page.js';

/** The longest `wait` of a status long-poll (seconds). */
const MAX_STATUS_WAIT_S = 30;

/** Read-your-writes: after publishing, wait (bounded) until the projector has applied the event. */
export async function awaitProjection(ctx: Ctx, seq: number, ms = 2_000): Promise<void> {
  if (ctx.projection) await ctx.projection.waitForSeq(seq, ms).catch(() => undefined);
  else await waitForCheckpoint(ctx.sql, seq, ms).catch(() => undefined);
}

export async function apiRoutes(app: App, ctx: Ctx) {
  // What GET /api/v1/images/:uuid reads, kept per process and emptied by the writers' NOTIFYs.
  const reads = startReadCache(ctx.config.databaseUrl, ctx.names, ctx.log);
  app.addHook('onClose', () => reads.close());

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
        description:
          'For a storage-node pool, POST the file (multipart, field "file") to `upload_url` with the token. ' +
          'For an S3 pool (`method: PUT`), PUT the bytes to the presigned `upload_url` with `headers`, then ' +
          'POST `complete_url` with your API key: only the completion checks the file and creates the image.',
        response: {
          201: Type.Object({
            upload_url: Type.String({ examples: ['http://127.0.0.1:3000/api/internal/upload'] }),
            token: Type.String(),
            pool_id: Type.String({ format: 'uuid' }),
            expires_at: Type.String({ format: 'date-time' }),
            max_bytes: Type.Integer(),
            method: Type.Optional(Type.Literal('PUT', { description: 'S3 pools: PUT to upload_url' })),
            headers: Type.Optional(
              Type.Record(Type.String(), Type.String(), {
                description: 'S3 pools: headers the PUT must carry (signed)',
                examples: [{ 'content-type': 'image/jpeg' }],
              }),
            ),
            upload_id: Type.Optional(Type.String({ format: 'uuid' })),
            complete_url: Type.Optional(
              Type.String({
                examples: [
                  'http://127.0.0.1:3000/api/v1/uploads/0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11/complete',
                ],
              }),
            ),
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

  app.post(
    '/api/v1/uploads/:upload_id/complete',
    {
      schema: {
        tags: ['uploads'],
        summary: 'Finish a direct-to-S3 upload: the object is checked, deduplicated and stored as an image',
        description:
          'Answers like the storage-node upload: 201 with the new image, 200 with `duplicate: true` for ' +
          'bytes you already uploaded. A refused file (413 too large, 415 not an image or active content, ' +
          '422 broken) is deleted from the bucket. Calling it again gives the same answer.',
        security: [{ apiKey: [] }],
        params: Type.Object({
          upload_id: Type.String({ format: 'uuid', examples: ['0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11'] }),
        }),
        response: {
          201: UploadResultSchema,
          200: Type.Ref('Image'),
          ...errors(401, 404, 409, 410, 413, 415, 422, 503),
        },
      },
    },
    async (req, reply) => {
      const user = await requireUser(ctx, req);
      const c = await completeS3Upload(ctx, user, req.params.upload_id, req.id);
      return reply.status(c.status).send(c.body as never);
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
          limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, default: 20, examples: [50] })),
        }),
        response: {
          200: Type.Object({
            images: Type.Array(Type.Ref('Image')),
            next_cursor: Type.Union([Type.String(), Type.Null()], {
              description: 'pass as ?cursor= for the next page; null on the last page',
              examples: ['MjAyNS0wOS0wMVQxMjowMDowMC4wMDBafDBiOGU1YzJh'],
            }),
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
    (req, reply) => {
      const id = req.params.uuid;
      // Both at once: on a miss one round-trip time instead of two (nothing of the image leaves before
      // the checks); on a hit no promise at all (a plain handler: fastify catches what it throws). The
      // image is cached whoever asks: the checks below are made for every request.
      const u = optionalUserCached(ctx, req, reads.cache);
      const i = reads.cache.image(id, async () => {
        const view = await loadImageView(ctx.sql, id);
        return (
          view &&
          cachedImage(view, (includeExif) =>
            // This route's response schema, exactly as a returned object would be serialised.
            String(reply.serialize(presentImage(view, ctx.config.publicDomain, { includeExif }))),
          )
        );
      });
      const answer = ([user, image]: [User | null, CachedImage | null]) => {
        if (!image || image.deleted) throw notFound('image not found');
        const owner = user !== null && image.userId === user.id;
        if (!owner && !(req.query.share && req.query.share === image.shareLink))
          throw notFound('image not found');
        // Sent here, nothing returned: a plain handler that returned the reply would be sent again
        // (fastify then logs "Reply was already sent" with a new Error, per request).
        void reply
          .type('application/json; charset=utf-8')
          .send((owner ? image.ownerJson : image.publicJson) as never);
      };
      if (u instanceof Promise || i instanceof Promise) return Promise.all([u, i]).then(answer);
      answer([u, i]);
      return undefined;
    },
  );

  app.get(
    '/api/v1/images/:uuid/status',
    {
      schema: {
        tags: ['images'],
        summary: 'Processing status: poll until complete, or long-poll with `wait`',
        description:
          'With `wait=N` (seconds, at most 30) an image still pending or processing is answered when it ' +
          'completes or fails, or after N seconds with its status then, whichever comes first. The answer ' +
          'follows the commit of the change within milliseconds (no polling interval).',
        security: [{ apiKey: [] }],
        params: UuidParam,
        querystring: Type.Object({
          wait: Type.Optional(
            Type.Integer({
              minimum: 0,
              maximum: MAX_STATUS_WAIT_S,
              description: 'seconds to wait for completed or failed (default 0: answer at once)',
              examples: [20],
            }),
          ),
        }),
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
    async (req, reply) => {
      const user = await requireUser(ctx, req);
      const id = req.params.uuid;
      const load = async () => {
        const [row] = await ctx.sql<
          { status: 'pending' | 'processing' | 'completed' | 'failed'; status_reason: string | null }[]
        >`
          select status, status_reason from images where id = ${id} and user_id = ${user.id} and deleted_at is null`;
        if (!row) throw notFound('image not found');
        return row;
      };
      const watch = ctx.projection;
      const waitMs = (req.query.wait ?? 0) * 1000;
      const deadline = Date.now() + waitMs;
      // The client going away ends the wait (its answer would go nowhere).
      const gone = new AbortController();
      const onClose = () => gone.abort();
      reply.raw.once('close', onClose);
      try {
        for (;;) {
          // The waiter is registered before the read, so a change committed in between still wakes it.
          const left = deadline - Date.now();
          const stop = new AbortController();
          const changed =
            watch && left > 0 && !gone.signal.aborted
              ? watch.waitForImage(id, left, AbortSignal.any([stop.signal, gone.signal]))
              : null;
          const row = await load().catch((err: unknown) => {
            stop.abort();
            throw err;
          });
          if (!changed || row.status === 'completed' || row.status === 'failed') {
            stop.abort();
            return {
              image_uuid: id,
              status: row.status,
              complete: row.status === 'completed',
              reason: row.status_reason,
            };
          }
          await changed;
        }
      } finally {
        reply.raw.off('close', onClose);
      }
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
      // The projector's NOTIFY is on its way; this node does not wait for it (read-your-writes here).
      reads.cache.apply({ kind: 'images', seq, ids: [req.params.uuid] });
      return reply.status(202).send({ image_uuid: req.params.uuid, status: 'deleting' as const });
    },
  );

  app.get(
    '/i/:link',
    {
      schema: {
        tags: ['images'],
        summary: 'Public view page of a shared image (HTML)',
        params: Type.Object({
          link: Type.String({ pattern: '^[A-Za-z0-9]{10}$', examples: ['Ab3dE6gH9k'] }),
        }),
        response: {
          200: {
            description: 'The page: the image, its size and a link to the original',
            content: {
              'text/html': {
                schema: Type.String({
                  examples: [
                    '<!doctype html><html><head><title>holiday.jpg</title>…</head><body>…</body></html>',
                  ],
                }),
              },
            },
          },
          ...errors(400, 404),
        },
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
