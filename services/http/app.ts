// The fastify app shell: one error shape, security headers, request ids, health. Route plugins are
// registered by the stack according to the roles this process runs.
import { randomUUID } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type RawServerDefault,
} from 'fastify';
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { isConnectionLost } from '../../shared/db.js';
import { AppError } from '../../shared/errors.js';
import { ErrorSchema, ImageSchema } from '../api/schemas.js';
import type { Logger } from '../../shared/logger.js';

export type App = FastifyInstance<
  RawServerDefault,
  IncomingMessage,
  ServerResponse<IncomingMessage>,
  FastifyBaseLogger,
  TypeBoxTypeProvider
>;

/** Route plugins get the instance with the TypeBox type provider (schemas type the handlers). */
export function typed(a: FastifyInstance): App {
  return a.withTypeProvider<TypeBoxTypeProvider>();
}

export interface ErrorBody {
  error: { code: string; message: string; details?: unknown };
}

export function errorBody(code: string, message: string, details?: unknown): ErrorBody {
  return { error: details === undefined ? { code, message } : { code, message, details } };
}

export function buildApp(log: Logger): App {
  const app = Fastify({
    loggerInstance: log,
    genReqId: (req) => {
      const given = req.headers['x-request-id'];
      return typeof given === 'string' && /^[A-Za-z0-9._-]{1,64}$/.test(given) ? given : randomUUID();
    },
    // JSON bodies are small; uploads are streamed by the multipart plugin with their own limits.
    bodyLimit: 1024 * 1024,
    routerOptions: { maxParamLength: 200 },
    // Explicit timeouts: a slow-loris client cannot hold a connection forever; a 100 MB upload at
    // 1 MB/s still fits in the request timeout.
    connectionTimeout: 0,
    requestTimeout: 15 * 60_000,
    keepAliveTimeout: 10_000,
    http: { maxHeaderSize: 16 * 1024 },
    // While closing, requests get our 503 error shape (the onRequest hook below), not fastify's own.
    return503OnClosing: false,
    // One log line per request (below, onResponse) instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: 'array', useDefaults: true } },
  }).withTypeProvider<TypeBoxTypeProvider>();

  // OpenAPI 3.1 generated from the route schemas; served at /openapi.json and /docs.
  void app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'PixelFox Storage API',
        version: '1.0.0',
        description:
          'Direct-to-storage image uploads, variants, metadata and backups. Errors: { "error": { "code", "message", "details?" } }.',
      },
      components: {
        securitySchemes: {
          apiKey: {
            type: 'http',
            scheme: 'bearer',
            description: 'API key: Authorization: Bearer <api_key> (or X-API-Key)',
          },
          uploadToken: {
            type: 'http',
            scheme: 'bearer',
            description: 'Upload token from POST /api/v1/upload/sessions',
          },
          adminToken: { type: 'http', scheme: 'bearer', description: 'ADMIN_TOKEN' },
        },
      },
    },
  });
  void app.register(swaggerUi, { routePrefix: '/docs' });
  // Shared schemas, referenced by $ref from every route plugin.
  app.addSchema(ErrorSchema);
  app.addSchema(ImageSchema);
  app.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  let closing = false;
  app.addHook('preClose', async () => {
    closing = true;
  });
  // The per-request hooks take callbacks, not async functions: no promise and no extra microtask turns
  // per request and hook (they run on every request, including the cached reads).
  app.addHook('onRequest', (req, reply, done) => {
    reply.header('x-content-type-options', 'nosniff');
    reply.header('x-request-id', req.id);
    // Shutting down: no new work, in the one error shape (fastify already set `connection: close`).
    if (closing) {
      void reply
        .status(503)
        .header('retry-after', '1')
        .send(errorBody('shutting_down', 'this node is shutting down; retry shortly'));
      return; // answered: the request goes no further (done is not called)
    }
    done();
  });

  app.addHook('onResponse', (req, reply, done) => {
    if (log.isLevelEnabled('info'))
      req.log.info(
        {
          req: { method: req.method, url: req.url, ip: req.ip },
          res: { statusCode: reply.statusCode },
          ms: Math.round(reply.elapsedTime * 10) / 10,
        },
        'request',
      );
    done();
  });

  app.setErrorHandler((err: FastifyError | AppError | Error, req, reply) => {
    if (err instanceof AppError) {
      if (err.headers) void reply.headers(err.headers);
      if (err.status >= 500) req.log.error({ err }, err.message);
      return reply.status(err.status).send(errorBody(err.code, err.message, err.details));
    }
    const fe = err as FastifyError;
    if (fe.validation) {
      return reply.status(400).send(errorBody('validation_failed', fe.message, fe.validation));
    }
    // Postgres (or another backing service) unreachable: an outage to retry, not a bug of ours.
    if (isConnectionLost(err) || ['ECONNREFUSED', 'CONNECT_TIMEOUT'].includes(String(fe.code))) {
      req.log.warn({ err }, 'backing service unavailable');
      return reply
        .status(503)
        .header('retry-after', '2')
        .send(errorBody('service_unavailable', 'a backing service is unreachable; retry shortly'));
    }
    const status =
      typeof fe.statusCode === 'number' && fe.statusCode >= 400 && fe.statusCode < 600 ? fe.statusCode : 500;
    if (status >= 500) {
      req.log.error({ err }, 'unhandled error');
      return reply.status(status).send(errorBody('internal_error', 'internal error'));
    }
    const code = (fe.code ?? 'bad_request').replace(/^FST_(ERR_)?/, '').toLowerCase();
    return reply.status(status).send(errorBody(code, fe.message));
  });

  app.setNotFoundHandler((req, reply) => {
    void reply
      .status(404)
      .send(errorBody('not_found', `no route for ${req.method} ${req.url.split('?')[0]}`));
  });
  return app as unknown as App;
}
