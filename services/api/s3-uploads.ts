// Direct-to-S3 uploads: the session hands out a presigned PUT, the client uploads straight into the
// bucket, then calls POST /api/v1/uploads/:upload_id/complete. Only the completion makes an image: it
// checks the object as the node upload checks a request body (size, magic bytes, markup anywhere,
// headers and pixel limits), deduplicates, reserves quota, and publishes ImageStored.
//
// The client uploads to a staging key (`incoming/<upload_id>.<ext>`), never to the image's key. The
// presigned URL stays valid until it expires, so an object the client can write could be replaced after
// it was checked (a different file, or a far bigger one past the quota). The image's key
// (`original/YYYY/MM/DD/<uuid>.<ext>`) is therefore written by this server from the very bytes it
// inspected (the bounded temp file, SHA-256 verified), and the staging object is deleted: at completion,
// and once more by the sweeper after the URL expired, so a PUT after completion leaves nothing behind.
//
// Pending uploads are rows of `s3_uploads` (coordination state, like upload_reservations; not facts).
import { createHash, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AppError, badRequest, errorMessage, unavailable } from '../../shared/errors.js';
import { claimHash, dedupeKey, releaseHash, replaceClaim } from '../../shared/kv.js';
import { recordUpload } from '../../shared/metrics.js';
import { planOf } from '../../shared/plans.js';
import { getPool, type Pool } from '../../shared/pools.js';
import {
  classifyS3Error,
  deleteObject,
  getObjectStream,
  headObject,
  poolKey,
  presignPut,
  putFileStreamed,
  s3ClientFor,
} from '../../shared/s3/client.js';
import { s3ConfigOf } from '../../shared/s3/pools.js';
import { randomBase62 } from '../../shared/security/secrets.js';
import { signUploadToken } from '../../shared/security/upload-token.js';
import { createNewFileStream } from '../../shared/storage/local.js';
import { originalRelPath } from '../../shared/storage/paths.js';
import type { User } from '../../shared/users.js';
import { deterministicId, makeEvent } from '../../streams/events/codec.js';
import type { Ctx } from '../context.js';
import { inspectImage } from '../storage-node/inspect.js';
import {
  checkUploadHead,
  KIND_INFO,
  MarkupScanner,
  SNIFF_HEAD_BYTES,
  type ImageKind,
} from '../storage-node/sniff.js';
import { reserveQuota, sanitizeFilename, STALE_CLAIM_MS, waitForImage } from '../storage-node/upload.js';
import { IMMUTABLE_CACHE_CONTROL, tempRoot } from '../storage/pool-store.js';
import { awaitProjection } from './routes.js';
import { loadImageView, poolFileUrl, presentImage } from './present.js';

/** A completion that crashed leaves its claim; after this long another call may take over. */
const CLAIM_STALE_SECONDS = 120;

// ---------------------------------------------------------------------------------------------------
// Pure parts

/**
 * The image kind a session announces, from the filename's extension and/or the content type. Null when
 * neither names one of the six accepted formats, or when the two disagree.
 */
export function sessionKind(filename: string | undefined, contentType: string | undefined): ImageKind | null {
  const byExt = (() => {
    if (!filename) return undefined;
    const base = filename.slice(Math.max(filename.lastIndexOf('/'), filename.lastIndexOf('\\')) + 1);
    const dot = base.lastIndexOf('.');
    if (dot === -1) return undefined;
    const ext = base.slice(dot + 1).toLowerCase();
    return (Object.keys(KIND_INFO) as ImageKind[]).find((k) => KIND_INFO[k].exts.includes(ext)) ?? null;
  })();
  const byType = (() => {
    if (!contentType) return undefined;
    const mime = contentType.split(';')[0]?.trim().toLowerCase() ?? '';
    const alias: Record<string, string> = { 'image/jpg': 'image/jpeg', 'image/x-ms-bmp': 'image/bmp' };
    const m = alias[mime] ?? mime;
    return (Object.keys(KIND_INFO) as ImageKind[]).find((k) => KIND_INFO[k].mime === m) ?? null;
  })();
  if (byExt === null || byType === null) return null;
  if (byExt !== undefined && byType !== undefined && byExt !== byType) return null;
  return byExt ?? byType ?? null;
}

/** The staging key a client may write (inside the pool's prefix). */
export function stagingPath(uploadId: string, ext: string): string {
  return `incoming/${uploadId}.${ext}`;
}

// ---------------------------------------------------------------------------------------------------
// Session

export interface S3Session {
  upload_url: string;
  method: 'PUT';
  headers: Record<string, string>;
  token: string;
  pool_id: string;
  expires_at: string;
  max_bytes: number;
  upload_id: string;
  complete_url: string;
}

export async function createS3Session(
  ctx: Ctx,
  user: User,
  pool: Pool,
  body: { filename?: string; content_type?: string },
  maxBytes: number,
): Promise<S3Session> {
  const kind = sessionKind(body.filename, body.content_type);
  if (!kind) {
    throw badRequest(
      'unsupported_type',
      'this upload goes straight to object storage: name the file (filename with one of the extensions ' +
        'jpg, png, gif, webp, avif, bmp) or its content_type, and keep the two consistent',
    );
  }
  const { ext, mime } = KIND_INFO[kind];
  const ttl = ctx.config.s3UploadTtlSeconds;
  const now = new Date();
  const { token, claims } = signUploadToken(
    ctx.config.uploadTokenSecret,
    { user_id: user.id, pool_id: pool.id, max_bytes: maxBytes },
    now,
    ttl,
  );
  const uploadId = randomUUID();
  const imageId = randomUUID();
  const cfg = s3ConfigOf(pool);
  const storedPath = originalRelPath(imageId, ext, now);
  const staging = poolKey(cfg, stagingPath(uploadId, ext));
  const expiresAt = new Date(claims.exp * 1000);
  let url: string;
  try {
    url = await presignPut(s3ClientFor(cfg), cfg.bucket, staging, { expiresSeconds: ttl, contentType: mime });
  } catch (err) {
    throw unavailable('storage_unavailable', `cannot sign the upload: ${classifyS3Error(err).message}`);
  }
  await ctx.sql`
    insert into s3_uploads (upload_id, user_id, pool_id, image_id, stored_path, object_key, ext,
                            original_filename, max_bytes, expires_at)
    values (${uploadId}, ${user.id}, ${pool.id}, ${imageId}, ${storedPath}, ${staging}, ${ext},
            ${sanitizeFilename(body.filename)}, ${maxBytes}, ${expiresAt})`;
  return {
    upload_url: url,
    method: 'PUT',
    // Signed into the URL: S3 refuses the PUT with any other Content-Type.
    headers: { 'content-type': mime },
    token,
    pool_id: pool.id,
    expires_at: expiresAt.toISOString(),
    max_bytes: maxBytes,
    upload_id: uploadId,
    complete_url: `${ctx.config.publicDomain}/api/v1/uploads/${uploadId}/complete`,
  };
}

// ---------------------------------------------------------------------------------------------------
// Completion

interface UploadRow {
  upload_id: string;
  user_id: string;
  pool_id: string;
  image_id: string;
  stored_path: string;
  object_key: string;
  ext: string;
  original_filename: string | null;
  max_bytes: number;
  expires_at: Date;
  claimed_at: Date | null;
  completed_at: Date | null;
  status: 'pending' | 'stored' | 'duplicate' | 'rejected' | 'expired';
  response_status: number | null;
  response: unknown;
}

export interface Completion {
  /** 201 a new image, 200 a duplicate; refusals are thrown as AppError */
  status: 200 | 201;
  body: Record<string, unknown>;
}

/** A refusal of the object itself: the object is deleted and the answer is final (replayed). */
class Rejection extends AppError {}

const rejection = (status: number, code: string, message: string, details?: unknown) =>
  new Rejection(status, code, message, details);

function replay(row: UploadRow): Completion {
  const body = (row.response ?? {}) as Record<string, unknown>;
  const status = row.response_status ?? 500;
  if (status !== 200 && status !== 201) {
    const e = (body.error ?? {}) as { code?: string; message?: string; details?: unknown };
    throw new AppError(status, e.code ?? 'upload_rejected', e.message ?? 'upload rejected', e.details);
  }
  return { status, body };
}

export async function completeS3Upload(
  ctx: Ctx,
  user: User,
  uploadId: string,
  requestId: string,
): Promise<Completion> {
  const load = async () => {
    const [r] = await ctx.sql<UploadRow[]>`
      select * from s3_uploads where upload_id = ${uploadId} and user_id = ${user.id}`;
    return r ?? null;
  };
  const row = await load();
  if (!row) throw new AppError(404, 'not_found', 'upload not found');
  if (row.completed_at) return finished(row);

  const [claimed] = await ctx.sql<UploadRow[]>`
    update s3_uploads set claimed_at = now()
    where upload_id = ${uploadId} and completed_at is null and expires_at > now()
      and (claimed_at is null or claimed_at < now() - make_interval(secs => ${CLAIM_STALE_SECONDS}))
    returning *`;
  if (!claimed) {
    const now = await load();
    if (now?.completed_at) return finished(now);
    if (now && now.expires_at.getTime() <= Date.now())
      throw new AppError(410, 'upload_expired', 'the upload expired; start a new upload session');
    throw new AppError(409, 'completion_in_progress', 'this upload is being completed right now', undefined, {
      'retry-after': '2',
    });
  }

  const release = () =>
    ctx.sql`update s3_uploads set claimed_at = null where upload_id = ${uploadId} and completed_at is null`.catch(
      () => undefined,
    );
  const finish = async (
    status: UploadRow['status'],
    c: { status: number; body: Record<string, unknown> },
  ) => {
    await ctx.sql`
      update s3_uploads set completed_at = now(), claimed_at = null, status = ${status},
                            response_status = ${c.status}, response = ${ctx.sql.json(c.body as never)}
      where upload_id = ${uploadId}`;
  };

  const pool = await getPool(ctx.sql, claimed.pool_id);
  if (!pool || pool.storage_type !== 's3' || !pool.s3_bucket) {
    await release();
    throw unavailable('pool_unavailable', 'the pool of this upload is gone');
  }
  const cfg = s3ConfigOf(pool);
  const client = s3ClientFor(cfg);
  const dropStaging = () => deleteObject(client, cfg.bucket, claimed.object_key);
  try {
    const c = await verifyAndStore(ctx, user, pool, claimed, requestId);
    await dropStaging().catch((err: unknown) =>
      ctx.log.warn({ err, uploadId }, 'staging object not deleted (the sweeper retries)'),
    );
    await finish(c.body.duplicate === true ? 'duplicate' : 'stored', c);
    return c;
  } catch (err) {
    if (err instanceof Rejection) {
      // Hostile or broken files do not stay in the bucket.
      await dropStaging().catch((e: unknown) =>
        ctx.log.warn({ err: e, uploadId }, 'rejected object not deleted (the sweeper retries)'),
      );
      ctx.log.info({ uploadId, code: err.code }, 'S3 upload rejected');
      await finish('rejected', {
        status: err.status,
        body: { error: { code: err.code, message: err.message, details: err.details } },
      });
      throw new AppError(err.status, err.code, err.message, err.details);
    }
    await release();
    if (err instanceof AppError) throw err;
    const c = classifyS3Error(err);
    throw unavailable('storage_unavailable', `the upload could not be checked: ${c.message}`);
  }
}

function finished(row: UploadRow): Completion {
  if (row.status === 'expired')
    throw new AppError(410, 'upload_expired', 'the upload expired; start a new upload session');
  return replay(row);
}

interface Inspected {
  tmp: string;
  size: number;
  sha256: string;
  kind: ImageKind;
  width: number;
  height: number;
}

async function verifyAndStore(
  ctx: Ctx,
  user: User,
  pool: Pool,
  row: UploadRow,
  requestId: string,
): Promise<Completion> {
  const cfg = s3ConfigOf(pool);
  const client = s3ClientFor(cfg);
  const head = await headObject(client, cfg.bucket, row.object_key);
  if (!head)
    throw new AppError(
      409,
      'upload_missing',
      'nothing has been uploaded to upload_url yet (PUT the file first)',
    );
  const limit = Math.min(Number(row.max_bytes), planOf(user.plan).maxFileBytes);
  if (head.size === 0) throw rejection(422, 'empty_file', 'the file is empty');
  if (head.size > limit)
    throw rejection(413, 'file_too_large', `the upload may be at most ${limit} bytes`, {
      max_bytes: limit,
      size: head.size,
    });

  // 1. The head: magic bytes and leading markup, before anything else is read.
  const headBytes = await readAll(
    await getObjectStream(client, cfg.bucket, row.object_key, {
      start: 0,
      end: Math.min(SNIFF_HEAD_BYTES, head.size) - 1,
    }),
    SNIFF_HEAD_BYTES,
  );
  const check = checkUploadHead(headBytes, `upload.${row.ext}`);
  if (!check.ok) throw rejection(check.status, check.code, check.message);

  // 2. The whole object once: hash, markup scan and a bounded temp file for the header inspection.
  const inspected = await fetchAndInspect(ctx, client, cfg.bucket, row.object_key, check.kind, head.size);
  try {
    return await store(ctx, user, pool, row, inspected, requestId);
  } finally {
    await fs.rm(inspected.tmp, { force: true });
  }
}

async function readAll(body: Readable, max: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let n = 0;
  for await (const chunk of body as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    n += chunk.length;
    if (n >= max) break;
  }
  body.destroy();
  return Buffer.concat(chunks).subarray(0, max);
}

async function fetchAndInspect(
  ctx: Ctx,
  client: ReturnType<typeof s3ClientFor>,
  bucket: string,
  key: string,
  kind: ImageKind,
  size: number,
): Promise<Inspected> {
  const dir = tempRoot(ctx.config.dataDir);
  await fs.mkdir(dir, { recursive: true });
  const tmp = path.join(dir, randomUUID());
  const hash = createHash('sha256');
  const scanner = new MarkupScanner();
  let got = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      got += chunk.length;
      // The object changed since the HEAD (a second PUT): refuse rather than read an unbounded body.
      if (got > size) {
        cb(rejection(409, 'upload_changed', 'the object changed while it was checked; upload again'));
        return;
      }
      hash.update(chunk);
      scanner.push(chunk);
      cb(null, chunk);
    },
  });
  try {
    await pipeline(await getObjectStream(client, bucket, key), meter, await createNewFileStream(tmp));
    if (got !== size)
      throw rejection(409, 'upload_changed', 'the object changed while it was checked; upload again');
    const markup = scanner.rejection;
    if (markup) throw rejection(markup.status, markup.code, markup.message);
    const info = await inspectImage(tmp, kind, { pixelLimit: ctx.config.maxImagePixels });
    if (!info.ok) throw rejection(info.status, info.code, info.message);
    return { tmp, size, sha256: hash.digest('hex'), kind, width: info.width, height: info.height };
  } catch (err) {
    await fs.rm(tmp, { force: true });
    throw err;
  }
}

async function store(
  ctx: Ctx,
  user: User,
  pool: Pool,
  row: UploadRow,
  r: Inspected,
  requestId: string,
): Promise<Completion> {
  const imageId = row.image_id;
  const key = dedupeKey(user.id, r.sha256);
  const claim = await claimHash(ctx.kv.dedupe, key, { image_id: imageId, at: Date.now() }).catch(
    (err: unknown) => {
      throw unavailable('event_store_unavailable', `cannot reach the event store: ${errorMessage(err)}`);
    },
  );
  // Our own claim from a completion that crashed after claiming: carry on (every step is idempotent).
  if (!claim.claimed && claim.existing.image_id !== imageId) {
    const existing = await waitForImage(ctx, claim.existing.image_id, user.id);
    if (existing) {
      recordUpload('duplicate', r.size);
      return { status: 200, body: { ...presentImage(existing, ctx.config.publicDomain), duplicate: true } };
    }
    const busy = new AppError(
      409,
      'duplicate_in_progress',
      'the same file is being uploaded right now; retry shortly',
      undefined,
      { 'retry-after': '2' },
    );
    if (Date.now() - claim.existing.at < STALE_CLAIM_MS) throw busy;
    if (!(await replaceClaim(ctx.kv.dedupe, key, { image_id: imageId, at: Date.now() }, claim.revision)))
      throw busy;
  }

  const cfg = s3ConfigOf(pool);
  const client = s3ClientFor(cfg);
  const finalKey = poolKey(cfg, row.stored_path);
  const mime = KIND_INFO[r.kind].mime;
  let reserved = false;
  let written = false;
  try {
    const already = await loadImageView(ctx.sql, imageId);
    if (!already) {
      // A reservation left by a completion of this very upload that crashed before its publish.
      await ctx.sql`delete from upload_reservations where image_id = ${imageId}`;
      await reserveQuota(ctx, user, imageId, r.size);
      reserved = true;
    }
    // The image's object is written from the inspected bytes, never copied from the client's key.
    await putFileStreamed(client, {
      bucket: cfg.bucket,
      key: finalKey,
      filePath: r.tmp,
      contentType: mime,
      cacheControl: IMMUTABLE_CACHE_CONTROL,
      sha256: r.sha256,
      metadata: { 'upload-source': 'pixelfox/s3-upload' },
    });
    written = true;
    const createdAt = already?.image.created_at ?? new Date();
    const shareLink = already?.image.share_link ?? randomBase62(10);
    const event = makeEvent('ImageStored', {
      // Derived from the upload: a completion retried after a crash publishes the same event once.
      id: deterministicId(row.upload_id, 'stored'),
      image_id: imageId,
      node_id: pool.node_id,
      pool_id: pool.id,
      correlation_id: requestId,
      occurred_at: createdAt,
      data: {
        user_id: user.id,
        stored_path: row.stored_path,
        size: r.size,
        sha256: r.sha256,
        mime,
        ext: KIND_INFO[r.kind].ext,
        width: r.width,
        height: r.height,
        original_filename: row.original_filename,
        share_link: shareLink,
      },
    });
    let seq: number;
    try {
      seq = (await ctx.pub.publish(event)).seq;
    } catch (err) {
      throw unavailable('event_store_unavailable', `the upload could not be recorded: ${errorMessage(err)}`);
    }
    written = false; // from here on the object belongs to its event
    await awaitProjection(ctx, seq, 1_000);
    recordUpload('stored', r.size);
    return {
      status: 201,
      body: {
        image_uuid: imageId,
        view_url: `${ctx.config.publicDomain}/i/${event.data.share_link}`,
        url: poolFileUrl(pool, ctx.config.publicDomain, row.stored_path),
        variants: [],
        duplicate: false,
        status: 'pending',
        width: r.width,
        height: r.height,
        size: r.size,
        sha256: r.sha256,
      },
    };
  } catch (err) {
    if (written) await deleteObject(client, cfg.bucket, finalKey).catch(() => undefined);
    if (reserved)
      await ctx.sql`delete from upload_reservations where image_id = ${imageId}`.catch(() => undefined);
    await releaseHash(ctx.kv.dedupe, key);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------------
// Sweeper

/**
 * Deletes the staging objects of uploads whose URL has expired: never completed (the row ends
 * `expired`), or completed (a PUT after completion would otherwise stay). Driven by the rows, never by
 * listing the bucket. Runs in the worker role; idempotent, so several nodes may run it.
 */
export async function sweepS3Uploads(ctx: Pick<Ctx, 'sql' | 'log'>, limit = 100): Promise<number> {
  const rows = await ctx.sql<{ upload_id: string; pool_id: string; object_key: string }[]>`
    select upload_id, pool_id, object_key from s3_uploads
    where expires_at < now() and swept_at is null
      and (completed_at is not null or claimed_at is null
           or claimed_at < now() - make_interval(secs => ${CLAIM_STALE_SECONDS}))
    order by expires_at limit ${limit}`;
  let swept = 0;
  for (const r of rows) {
    const pool = await getPool(ctx.sql, r.pool_id);
    try {
      if (pool?.storage_type === 's3' && pool.s3_bucket) {
        const cfg = s3ConfigOf(pool);
        await deleteObject(s3ClientFor(cfg), cfg.bucket, r.object_key);
      }
    } catch (err) {
      ctx.log.warn(
        { uploadId: r.upload_id, error: classifyS3Error(err).message },
        'staging object not swept',
      );
      continue;
    }
    await ctx.sql`
      update s3_uploads set swept_at = now(),
        status = case when completed_at is null then 'expired' else status end,
        completed_at = coalesce(completed_at, now()), claimed_at = null
      where upload_id = ${r.upload_id}`;
    swept++;
  }
  return swept;
}
