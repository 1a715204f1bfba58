// Storage-node routes: direct upload, its health probe and CORS preflight, and file serving.
import multipart from '@fastify/multipart';
import { Type } from '@sinclair/typebox';
import { AppError } from '../../shared/errors.js';
import { recordUploadRejection } from '../../shared/metrics.js';
import type { Pool } from '../../shared/pools.js';
import { docOnlyBody, errors, UploadResultSchema } from '../api/schemas.js';
import type { App } from '../http/app.js';
import type { Ctx } from '../context.js';
import { serveUpload } from './serve.js';
import { handleUpload } from './upload.js';

/** The form the client sends; parsed part by part and streamed to disk by handleUpload. */
const UploadForm = Type.Object(
  {
    file: Type.String({
      contentMediaType: 'application/octet-stream',
      description: "The image (JPEG, PNG, GIF, WebP, AVIF or BMP), at most the session's max_bytes",
    }),
  },
  { examples: [{ file: '<the image bytes>' }] },
);

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'POST, HEAD, OPTIONS',
  'access-control-allow-headers': 'authorization, content-type, x-request-id',
  'access-control-expose-headers':
    'x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset, retry-after, x-request-id',
  'access-control-max-age': '600',
};

export async function storageNodeRoutes(
  app: App,
  ctx: Ctx,
  pools: () => Pool[],
  /** Files of pools not on this node's disk (S3): where to send the reader (see serveUpload). */
  redirect?: Parameters<typeof serveUpload>[3],
) {
  await app.register(multipart, { throwFileSizeLimit: false });
  const byId = () => new Map(pools().map((p) => [p.id, p]));

  app.addHook('onSend', async (req, reply) => {
    if (req.url.startsWith('/api/internal/upload')) void reply.headers(CORS);
  });

  app.head('/api/internal/upload', { schema: { hide: true } }, async (_req, reply) =>
    reply.status(204).send(),
  );
  app.options('/api/internal/upload', { schema: { hide: true } }, async (_req, reply) =>
    reply.status(204).send(),
  );
  app.post(
    '/api/internal/upload',
    {
      schema: {
        tags: ['storage node'],
        summary: 'Direct upload (multipart, field "file")',
        description:
          'Authorization: Bearer <upload token> from POST /api/v1/upload/sessions. 201 with the new image; ' +
          '200 with the existing image and `duplicate: true` for bytes this user already uploaded.',
        security: [{ uploadToken: [] }],
        consumes: ['multipart/form-data'],
        response: {
          201: UploadResultSchema,
          200: Type.Ref('Image'),
          ...errors(400, 401, 403, 409, 413, 415, 422, 429, 503),
        },
      },
      config: docOnlyBody(UploadForm),
    },
    async (req, reply) => {
      try {
        return await handleUpload(ctx, { byId }, req, reply);
      } catch (err) {
        // Every refusal by its stable code; the error handler turns the error into the answer.
        recordUploadRejection(err instanceof AppError ? err.code : 'internal_error');
        throw err;
      }
    },
  );
  const serve = (req: Parameters<typeof serveUpload>[1], reply: Parameters<typeof serveUpload>[2]) =>
    serveUpload(pools(), req, reply, redirect);
  // fastify adds the HEAD route itself; serveUpload answers HEAD without a body.
  app.get('/uploads/*', { schema: { hide: true } }, serve);
}
