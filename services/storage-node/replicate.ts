// PUT /api/internal/replicate: server-to-server replication of one file into a pool of this node (the
// target side of a pool move, see services/mover/). Fields travel in the query, the body is the file:
//
//   PUT /api/internal/replicate?pool_id=<uuid>&stored_path=<original/…|variants/…>&size=<bytes>&sha256=<hex>
//   Authorization: Bearer <REPLICATION_SECRET>
//   Content-Type: application/octet-stream
//   <the file's bytes, streamed>
//
// `size` and `sha256` are optional unless the `replication_require_checksum` setting makes sha256
// mandatory. Answers: 201 {status:'stored', size, sha256} · 200 {status:'skipped', …} (the same file is
// already there) · 400 bad or escaping path, missing checksum · 401 missing/wrong secret · 404 pool not
// served by this node · 409 a different file already has that name, or the pool is inactive · 413 too
// large · 415 not application/octet-stream · 422 size or checksum mismatch (nothing kept) · 429 too many
// failed authentications from this address.
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Type } from '@sinclair/typebox';
import type { FastifyRequest } from 'fastify';
import {
  AppError,
  badRequest,
  conflict,
  tooManyRequests,
  unauthorized,
  unavailable,
} from '../../shared/errors.js';
import { hitRateLimit, kvKeyPart } from '../../shared/kv.js';
import type { Pool } from '../../shared/pools.js';
import { safeEqual } from '../../shared/security/secrets.js';
import { LocalStore } from '../../shared/storage/local.js';
import { assertNoSymlinkEscape, normaliseStoredPath, PathEscapeError } from '../../shared/storage/paths.js';
import { docOnlyBody, errors } from '../api/schemas.js';
import type { App } from '../http/app.js';
import type { Ctx } from '../context.js';
import {
  ContentMismatchError,
  FileExistsError,
  fingerprint,
  TooLargeError,
  writeVerified,
} from '../mover/files.js';
import { REPLICATE_PATH } from '../mover/plan.js';

const MiB = 1024 * 1024;
/**
 * Largest file one request may carry: five times the biggest original any plan admits (100 MiB), room
 * for variants and future plans, while bounding the disk one request can fill before it is refused.
 */
export const MAX_REPLICATE_BYTES = 512 * MiB;
/** Failed authentications per address and minute before every request from it gets 429 for the rest of it. */
export const AUTH_FAILURES_PER_MINUTE = 20;
const AUTH_SCOPE = 'replicate-auth';

export function bearerToken(header: string | string[] | undefined): string | undefined {
  if (typeof header !== 'string' || !/^bearer /i.test(header)) return undefined;
  const token = header.slice(7).trim();
  return token === '' ? undefined : token;
}

/** Constant-time; an unset secret matches nothing. */
export function secretMatches(given: string | undefined, secret: string): boolean {
  if (!secret || given === undefined) return false;
  return safeEqual(given, secret);
}

export interface ReplicateInput {
  /** the pool named by pool_id among this node's local/NFS pools */
  pool: Pool | undefined;
  storedPath: string;
  size?: number;
  sha256?: string;
  requireChecksum: boolean;
  /** Content-Length header, when sent */
  contentLength?: number;
  maxBytes: number;
}

export type ReplicateCheck =
  | { ok: true; pool: Pool & { base_path: string }; rel: string; sha256?: string }
  | { ok: false; status: number; code: string; message: string };

/** Everything about a replicate request that can be decided before touching the disk (pure). */
export function checkReplicateRequest(i: ReplicateInput): ReplicateCheck {
  const norm = normaliseStoredPath(i.storedPath);
  if (!norm.ok)
    return { ok: false, status: 400, code: 'invalid_path', message: `stored_path refused: ${norm.reason}` };
  if (i.requireChecksum && i.sha256 === undefined)
    return {
      ok: false,
      status: 400,
      code: 'checksum_required',
      message: 'this node requires sha256 for replication',
    };
  if (!i.pool || !i.pool.base_path || i.pool.storage_type === 's3')
    return {
      ok: false,
      status: 404,
      code: 'pool_not_found',
      message: 'the pool is not a local pool of this node',
    };
  if (!i.pool.is_active)
    return { ok: false, status: 409, code: 'pool_inactive', message: `pool ${i.pool.name} is inactive` };
  if ((i.size ?? 0) > i.maxBytes || (i.contentLength ?? 0) > i.maxBytes)
    return {
      ok: false,
      status: 413,
      code: 'too_large',
      message: `a replicated file may be at most ${i.maxBytes} bytes`,
    };
  if (i.size !== undefined && i.contentLength !== undefined && i.size !== i.contentLength)
    return {
      ok: false,
      status: 422,
      code: 'size_mismatch',
      message: `size is ${i.size} but the body has ${i.contentLength} bytes`,
    };
  const pool = i.pool as Pool & { base_path: string };
  return {
    ok: true,
    pool,
    rel: norm.path,
    ...(i.sha256 !== undefined ? { sha256: i.sha256.toLowerCase() } : {}),
  };
}

/** Failures so far in this minute's window (same key as hitRateLimit's). Read only: a peek, not a hit. */
async function failuresThisMinute(ctx: Ctx, ip: string): Promise<number> {
  const key = `${AUTH_SCOPE}.${kvKeyPart(ip)}.${Math.floor(Date.now() / 60_000)}`;
  const e = await ctx.kv.rateLimit.get(key).catch(() => null);
  return e && e.operation === 'PUT' ? Number(new TextDecoder().decode(e.value)) || 0 : 0;
}

/**
 * Runs before the body is read. Once an address used up its failures, everything from it is 429 for the
 * rest of the minute, the right secret included: a brute-forcer learns nothing from a late hit. (A node
 * behind the same address as an attacker is held up for that minute; its moves retry.)
 */
async function authenticate(ctx: Ctx, req: FastifyRequest): Promise<void> {
  const secret = ctx.config.replicationSecret;
  if (!secret) throw unavailable('replication_disabled', 'REPLICATION_SECRET is not configured on this node');
  const retryAfter = () => Math.max(1, 60 - Math.floor((Date.now() / 1000) % 60));
  if ((await failuresThisMinute(ctx, req.ip)) >= AUTH_FAILURES_PER_MINUTE)
    throw tooManyRequests('too many failed replication attempts; try again later', retryAfter());
  const given = bearerToken(req.headers.authorization);
  if (secretMatches(given, secret)) return;
  const hit = await hitRateLimit(ctx.kv.rateLimit, AUTH_SCOPE, req.ip, AUTH_FAILURES_PER_MINUTE).catch(
    () => null,
  );
  if (hit && !hit.allowed)
    throw tooManyRequests('too many failed replication attempts; try again later', retryAfter());
  if (given === undefined)
    throw unauthorized(
      'missing_replication_secret',
      'Authorization: Bearer <REPLICATION_SECRET> is required',
    );
  throw unauthorized('invalid_replication_secret', 'the replication secret is wrong');
}

/** Reads and discards a body known to be unneeded, refusing more than `max` bytes. */
async function drain(body: Readable, max: number): Promise<void> {
  let n = 0;
  await pipeline(
    body,
    new Writable({
      write(chunk: Buffer, _enc, cb) {
        n += chunk.length;
        cb(n > max ? new ContentMismatchError('size', max, n) : null);
      },
    }),
  );
}

function asAppError(err: unknown): unknown {
  if (err instanceof ContentMismatchError)
    return new AppError(422, `${err.field}_mismatch`, `${err.message}; nothing was kept`, {
      expected: err.expected,
      actual: err.actual,
    });
  if (err instanceof FileExistsError)
    return conflict('file_exists', `${err.message}; it is never overwritten`);
  if (err instanceof TooLargeError) return new AppError(413, 'too_large', `the body has ${err.message}`);
  if (err instanceof PathEscapeError) return badRequest('path_escape', err.message);
  const code = (err as { code?: unknown }).code;
  if (code === 'ERR_STREAM_PREMATURE_CLOSE' || code === 'ECONNRESET' || code === 'ECONNABORTED')
    return badRequest('body_incomplete', 'the body ended before it was complete');
  return err;
}

const Query = Type.Object(
  {
    pool_id: Type.String({ format: 'uuid', description: 'target pool (a local/NFS pool of this node)' }),
    stored_path: Type.String({
      minLength: 1,
      maxLength: 1024,
      examples: ['original/2025/09/01/0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11.jpg'],
    }),
    size: Type.Optional(Type.Integer({ minimum: 0, description: 'exact byte count of the body' })),
    sha256: Type.Optional(
      Type.String({ pattern: '^[0-9a-fA-F]{64}$', description: 'SHA-256 of the body (hex)' }),
    ),
  },
  { additionalProperties: false },
);

const Stored = Type.Object(
  {
    status: Type.Union([Type.Literal('stored'), Type.Literal('skipped')], {
      description: 'skipped: the same file was already there (200)',
    }),
    size: Type.Integer(),
    sha256: Type.String(),
  },
  {
    examples: [
      {
        status: 'stored',
        size: 2345678,
        sha256: '6bfdabd4fc33d112283c147acccc574e770bbe6fbdbc3d4da968ba7b606ecc2f',
      },
    ],
  },
);

/** The raw file; read as a stream by the route (documented only, see docOnlyBody). */
const FileBytes = Type.String({
  contentMediaType: 'application/octet-stream',
  description: 'The file, exactly `size` bytes when given',
});

export async function replicateRoutes(app: App, ctx: Ctx, pools: () => Pool[]): Promise<void> {
  // The body is the file: handed to the route as the raw request stream (encapsulated in this plugin),
  // never buffered. The size cap is enforced while streaming (fastify's bodyLimit does not apply here).
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  app.put(
    REPLICATE_PATH,
    {
      schema: {
        tags: ['storage node'],
        summary:
          'Server-to-server replication of one file into a pool of this node (Bearer REPLICATION_SECRET)',
        consumes: ['application/octet-stream'],
        querystring: Query,
        response: { 200: Stored, 201: Stored, ...errors(400, 401, 404, 409, 413, 415, 422, 429, 503) },
      },
      config: docOnlyBody(FileBytes),
      onRequest: async (req) => authenticate(ctx, req),
      // An error answer may leave body bytes unread: close instead of keeping the connection for reuse.
      onError: async (_req, reply) => void reply.header('connection', 'close'),
    },
    async (req, reply) => {
      const q = req.query;
      const settings = await ctx.settings.all();
      const declared = Number(req.headers['content-length']);
      const check = checkReplicateRequest({
        pool: pools().find((p) => p.id === q.pool_id.toLowerCase()),
        storedPath: q.stored_path,
        size: q.size,
        sha256: q.sha256,
        requireChecksum: settings.replication_require_checksum,
        contentLength:
          req.headers['content-length'] !== undefined && Number.isFinite(declared) ? declared : undefined,
        maxBytes: MAX_REPLICATE_BYTES,
      });
      if (!check.ok) throw new AppError(check.status, check.code, check.message);
      const ct = String(req.headers['content-type'] ?? '');
      const body =
        req.body instanceof Readable ? req.body : req.body === undefined && !ct ? Readable.from([]) : null;
      if (!body)
        throw new AppError(415, 'octet_stream_required', 'send the file as application/octet-stream');

      const store = new LocalStore(check.pool.base_path);
      try {
        // Lexical (resolve) and on-disk (no directory on the way resolves outside the pool) checks first.
        await assertNoSymlinkEscape(store.basePath, store.resolve(check.rel));
        // The same file again is a no-op and a different one a conflict, both known without the body
        // when the checksum is given. Without it the body is received and compared (in writeVerified).
        if (check.sha256 !== undefined) {
          const there = await fingerprint(store, check.rel);
          if (there) {
            if (there.sha256 !== check.sha256 || (q.size !== undefined && q.size !== there.size))
              throw new FileExistsError(check.rel);
            await drain(body, there.size);
            return reply
              .status(200)
              .send({ status: 'skipped' as const, size: there.size, sha256: there.sha256 });
          }
        } else if (q.size !== undefined) {
          const st = await store.stat(check.rel);
          if (st && st.size !== q.size) throw new FileExistsError(check.rel);
        }
        const r = await writeVerified(store, check.rel, body, {
          size: q.size,
          sha256: check.sha256,
          maxBytes: MAX_REPLICATE_BYTES,
        });
        if (r.status === 'stored')
          req.log.info({ poolId: check.pool.id, path: check.rel, size: r.size }, 'replicated file stored');
        return reply.status(r.status === 'stored' ? 201 : 200).send(r);
      } catch (err) {
        throw asAppError(err);
      }
    },
  );
}
