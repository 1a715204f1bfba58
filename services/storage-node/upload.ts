// POST /api/internal/upload: the direct upload to a storage node. Streamed to a temp file (never
// buffered whole), hashed and scanned while streaming, validated, deduplicated, renamed into place, and
// committed by publishing ImageStored. A publish failure removes the file: no file without its event,
// no event without its file.
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { MultipartFile } from '@fastify/multipart';
import { makeEvent } from '../../streams/events/codec.js';
import {
  AppError,
  badRequest,
  errorMessage,
  payloadTooLarge,
  tooManyRequests,
  unauthorized,
  unavailable,
} from '../../shared/errors.js';
import {
  claimHash,
  dedupeKey,
  hitRateLimit,
  releaseHash,
  replaceClaim,
  type RateResult,
} from '../../shared/kv.js';
import { transaction } from '../../shared/db.js';
import { planOf } from '../../shared/plans.js';
import { getPool, type Pool } from '../../shared/pools.js';
import { randomBase62 } from '../../shared/security/secrets.js';
import { verifyUploadToken, type UploadClaims } from '../../shared/security/upload-token.js';
import { createNewFileStream, LocalStore } from '../../shared/storage/local.js';
import { originalRelPath } from '../../shared/storage/paths.js';
import { getUser, type User } from '../../shared/users.js';
import { recordUpload } from '../../shared/metrics.js';
import type { Ctx } from '../context.js';
import { presentImage, loadImageView } from '../api/present.js';
import { awaitProjection } from '../api/routes.js';
import { inspectImage } from './inspect.js';
import { checkUploadHead, KIND_INFO, MarkupScanner, SNIFF_HEAD_BYTES, type ImageKind } from './sniff.js';

/** Multipart framing around the file never needs more than this. */
const MULTIPART_OVERHEAD = 64 * 1024;
/** A claim older than this whose image never appeared was left by a crash between claim and publish. */
export const STALE_CLAIM_MS = 2 * 60_000;

export interface NodePools {
  /** Local/NFS pools of this node, by id (refreshed by the stack). */
  byId(): Map<string, Pool>;
}

function setRateHeaders(reply: FastifyReply, r: RateResult) {
  void reply.header('x-ratelimit-limit', String(r.limit));
  void reply.header('x-ratelimit-remaining', String(r.remaining));
  void reply.header('x-ratelimit-reset', String(r.reset));
}

async function enforceRate(ctx: Ctx, reply: FastifyReply, scope: string, id: string, limit: number) {
  let r: RateResult;
  try {
    r = await hitRateLimit(ctx.kv.rateLimit, scope, id, limit);
  } catch {
    return; // fail open: NATS being down fails the upload at publish anyway
  }
  setRateHeaders(reply, r);
  if (!r.allowed)
    throw tooManyRequests(
      `rate limit of ${r.limit} uploads per minute reached`,
      Math.max(1, r.reset - Math.floor(Date.now() / 1000)),
    );
}

function bearer(req: FastifyRequest): string | undefined {
  const h = req.headers.authorization;
  if (typeof h === 'string' && /^bearer /i.test(h)) return h.slice(7).trim();
  return undefined;
}

interface Received {
  tmp: string;
  size: number;
  sha256: string;
  head: Buffer;
  markup: string | null;
  filename: string | undefined;
}

export async function handleUpload(ctx: Ctx, pools: NodePools, req: FastifyRequest, reply: FastifyReply) {
  // Without the event store nothing can be committed: say so now, not after every KV call timed out.
  if (!ctx.nats.connected())
    throw new AppError(
      503,
      'event_store_unavailable',
      'the event store is unreachable; retry shortly',
      undefined,
      { 'retry-after': '2' },
    );
  const settings = await ctx.settings.all();
  await enforceRate(ctx, reply, 'ip', req.ip, settings.upload_rate_limit_per_minute);
  if (!settings.image_upload_enabled || !settings.direct_upload_enabled) {
    throw new AppError(403, 'uploads_disabled', 'uploads are disabled by the operator');
  }
  if (!req.isMultipart())
    throw new AppError(415, 'not_multipart', 'send multipart/form-data with a "file" part');

  const verify = (token: string | undefined): UploadClaims => {
    const v = verifyUploadToken(ctx.config.uploadTokenSecret, token);
    if (!v.ok) {
      const messages: Record<typeof v.reason, string> = {
        missing: 'upload token missing (Authorization: Bearer <token> or a "token" field before the file)',
        malformed: 'upload token malformed',
        bad_signature: 'upload token signature invalid',
        expired: 'upload token expired',
        wrong_pool: 'upload token is for a pool this node does not serve',
      };
      throw unauthorized(`token_${v.reason}`, messages[v.reason]);
    }
    return v.claims;
  };

  let claims: UploadClaims | null = bearer(req) !== undefined ? verify(bearer(req)) : null;
  let user: User | null = null;
  let limit = 0;
  let pool: Pool | null = null;

  const authorize = async (c: UploadClaims) => {
    user = await getUser(ctx.sql, c.user_id);
    if (!user || user.disabled_at)
      throw unauthorized('token_user_unknown', 'the token belongs to no active user');
    await enforceRate(ctx, reply, 'user', user.id, settings.upload_user_rate_limit_per_minute);
    // Read fresh (not the node's cached list): an operator's change applies to the very next upload.
    pool = await getPool(ctx.sql, c.pool_id);
    if (!pool || pool.node_id !== ctx.config.nodeId || pool.storage_type === 's3' || !pool.base_path) {
      throw unauthorized('token_wrong_pool', 'upload token is for a pool this node does not serve');
    }
    if (!pool.is_active) throw unavailable('pool_unavailable', 'the pool of this token is not active');
    limit = Math.min(c.max_bytes, planOf(user.plan).maxFileBytes);
    const declared = Number(req.headers['content-length']);
    if (Number.isFinite(declared) && declared > limit + MULTIPART_OVERHEAD) {
      void reply.header('connection', 'close');
      throw payloadTooLarge('file_too_large', `the upload may be at most ${limit} bytes`, {
        max_bytes: limit,
      });
    }
  };
  if (claims) await authorize(claims);

  let received: Received | null = null;
  try {
    const parts = req.parts({
      limits: {
        fileSize: Number.MAX_SAFE_INTEGER,
        files: 2,
        fields: 8,
        fieldSize: 4096,
        parts: 10,
        headerPairs: 64,
      },
    });
    for await (const part of parts) {
      if (part.type === 'field') {
        if (part.fieldname === 'token' && !claims && typeof part.value === 'string') {
          claims = verify(part.value);
          await authorize(claims);
        }
        continue;
      }
      if (part.fieldname !== 'file') {
        part.file.resume();
        throw badRequest('unexpected_file_field', `file part must be named "file", got "${part.fieldname}"`);
      }
      if (received) {
        part.file.resume();
        throw badRequest('multiple_files', 'send exactly one "file" part');
      }
      if (!claims || !pool) {
        part.file.resume();
        throw unauthorized(
          'token_missing',
          'upload token missing (Authorization: Bearer <token> or a "token" field before the file)',
        );
      }
      received = await receive(new LocalStore((pool as Pool).base_path ?? ''), part, limit, reply);
    }
  } catch (err) {
    if (received) await fs.rm(received.tmp, { force: true });
    if (err instanceof AppError) throw err;
    const code = (err as { code?: string }).code;
    if (code === 'FST_PARTS_LIMIT' || code === 'FST_FILES_LIMIT' || code === 'FST_FIELDS_LIMIT')
      throw badRequest('too_many_parts', errorMessage(err));
    throw badRequest('malformed_multipart', errorMessage(err));
  }
  if (!received || !claims || !pool || !user)
    throw badRequest('file_missing', 'no "file" part in the upload');
  const r: Received = received;
  try {
    return await store(ctx, reply, r, claims, pool, user, req.id);
  } finally {
    await fs.rm(r.tmp, { force: true });
  }
}

async function receive(
  store: LocalStore,
  part: MultipartFile,
  limit: number,
  reply: FastifyReply,
): Promise<Received> {
  await store.ensureReady();
  const tmp = store.tmpPath();
  const hash = createHash('sha256');
  const scanner = new MarkupScanner();
  const headChunks: Buffer[] = [];
  let headLen = 0;
  let size = 0;
  const inspector = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > limit) {
        // Enforced while streaming: stop at the first byte over the limit.
        void reply.header('connection', 'close');
        cb(
          payloadTooLarge('file_too_large', `the upload may be at most ${limit} bytes`, { max_bytes: limit }),
        );
        return;
      }
      hash.update(chunk);
      scanner.push(chunk);
      if (headLen < SNIFF_HEAD_BYTES) {
        headChunks.push(chunk.subarray(0, SNIFF_HEAD_BYTES - headLen));
        headLen += Math.min(chunk.length, SNIFF_HEAD_BYTES - headLen);
      }
      cb(null, chunk);
    },
  });
  try {
    await pipeline(part.file, inspector, await createNewFileStream(tmp));
  } catch (err) {
    await fs.rm(tmp, { force: true });
    part.file.resume();
    throw err;
  }
  return {
    tmp,
    size,
    sha256: hash.digest('hex'),
    head: Buffer.concat(headChunks),
    markup: scanner.found,
    filename: part.filename,
  };
}

async function store(
  ctx: Ctx,
  reply: FastifyReply,
  r: Received,
  claims: UploadClaims,
  pool: Pool,
  user: User,
  requestId: string,
) {
  if (r.size === 0) throw new AppError(422, 'empty_file', 'the file is empty');
  const head = checkUploadHead(r.head, r.filename);
  if (!head.ok) throw new AppError(head.status, head.code, head.message);
  if (r.markup)
    throw new AppError(415, 'active_content', `active content (${r.markup}) found inside the file`);
  const kind: ImageKind = head.kind;
  const info = await inspectImage(r.tmp, kind, { pixelLimit: ctx.config.maxImagePixels });
  if (!info.ok) throw new AppError(info.status, info.code, info.message);

  // Dedupe: the hash claim serialises concurrent uploads of the same bytes by the same user.
  const imageId = randomUUID();
  const key = dedupeKey(user.id, r.sha256);
  const claim = await claimHash(ctx.kv.dedupe, key, { image_id: imageId, at: Date.now() }).catch(
    (err: unknown) => {
      throw unavailable('event_store_unavailable', `cannot reach the event store: ${errorMessage(err)}`);
    },
  );
  if (!claim.claimed) {
    const existing = await waitForImage(ctx, claim.existing.image_id, user.id);
    if (existing) {
      recordUpload('duplicate', r.size);
      return reply.status(200).send({ ...presentImage(existing, ctx.config.publicDomain), duplicate: true });
    }
    if (Date.now() - claim.existing.at < STALE_CLAIM_MS) {
      throw new AppError(
        409,
        'duplicate_in_progress',
        'the same file is being uploaded right now; retry shortly',
        undefined,
        { 'retry-after': '2' },
      );
    }
    if (!(await replaceClaim(ctx.kv.dedupe, key, { image_id: imageId, at: Date.now() }, claim.revision))) {
      throw new AppError(
        409,
        'duplicate_in_progress',
        'the same file is being uploaded right now; retry shortly',
        undefined,
        { 'retry-after': '2' },
      );
    }
  }

  let reserved = false;
  let committedPath: string | null = null;
  const storeLayer = new LocalStore(pool.base_path ?? '');
  try {
    await reserveQuota(ctx, user, imageId, r.size);
    reserved = true;
    const now = new Date();
    const rel = originalRelPath(imageId, KIND_INFO[kind].ext, now);
    committedPath = await storeLayer.commit(r.tmp, rel);
    const shareLink = randomBase62(10);
    const event = makeEvent('ImageStored', {
      image_id: imageId,
      node_id: pool.node_id,
      pool_id: pool.id,
      correlation_id: requestId,
      occurred_at: now,
      data: {
        user_id: user.id,
        stored_path: rel,
        size: r.size,
        sha256: r.sha256,
        mime: KIND_INFO[kind].mime,
        ext: KIND_INFO[kind].ext,
        width: info.width,
        height: info.height,
        original_filename: sanitizeFilename(r.filename),
        share_link: shareLink,
      },
    });
    let seq: number;
    try {
      seq = (await ctx.pub.publish(event)).seq;
    } catch (err) {
      throw unavailable('event_store_unavailable', `the upload could not be recorded: ${errorMessage(err)}`);
    }
    committedPath = null; // from here on the file belongs to its event
    // Read-your-writes for the client: GET /api/v1/images/:uuid right after this answer finds the image.
    await awaitProjection(ctx, seq, 1_000);
    const base = pool.public_base_url;
    recordUpload('stored', r.size);
    return reply.status(201).send({
      image_uuid: imageId,
      view_url: `${ctx.config.publicDomain}/i/${shareLink}`,
      url: `${base}/uploads/${rel}`,
      variants: [],
      duplicate: false,
      status: 'pending',
      width: info.width,
      height: info.height,
      size: r.size,
      sha256: r.sha256,
    });
  } catch (err) {
    if (committedPath) await fs.rm(committedPath, { force: true });
    if (reserved)
      await ctx.sql`delete from upload_reservations where image_id = ${imageId}`.catch(() => undefined);
    await releaseHash(ctx.kv.dedupe, key);
    throw err;
  }
}

/** The existing image of a duplicate, giving a just-published one a moment to be projected. */
export async function waitForImage(ctx: Ctx, imageId: string, userId: string) {
  for (let i = 0; i < 40; i++) {
    const view = await loadImageView(ctx.sql, imageId);
    if (view && view.image.user_id === userId && !view.image.deleted_at) return view;
    if (view?.image.deleted_at) return null;
    await new Promise((r) => setTimeout(r, 50));
  }
  return null;
}

/**
 * Atomic quota: under a per-user advisory lock, projected usage + not-yet-projected reservations + this
 * file must fit. The projector deletes the reservation in the transaction that counts the image.
 */
export async function reserveQuota(ctx: Ctx, user: User, imageId: string, size: number) {
  const quota = planOf(user.plan).quotaBytes;
  await transaction(ctx.sql, async (tx) => {
    await tx`select pg_advisory_xact_lock(hashtext(${'quota:' + user.id}))`;
    const [row] = await tx<{ used: number }[]>`
      select coalesce((select used_bytes from user_usage where user_id = ${user.id}), 0)
           + coalesce((select sum(bytes) from upload_reservations where user_id = ${user.id}
                             and created_at > now() - interval '1 hour'), 0) as used`;
    const used = Number(row?.used ?? 0);
    if (used + size > quota) {
      throw payloadTooLarge('quota_exceeded', 'this upload would exceed your storage quota', {
        quota_bytes: quota,
        used_bytes: used,
        file_size: size,
      });
    }
    await tx`insert into upload_reservations (image_id, user_id, bytes) values (${imageId}, ${user.id}, ${size})`;
  });
}

export function sanitizeFilename(name: string | undefined): string | null {
  if (!name) return null;
  // Keep it displayable: no control characters, no path, bounded length.
  const CONTROL = /[\p{Cc}]/gu;
  const base = name.replace(CONTROL, '').split(/[\\/]/).pop() ?? '';
  return base.slice(0, 255) || null;
}
