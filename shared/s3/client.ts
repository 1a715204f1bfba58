// S3 access for storage pools: one cached client per pool configuration, and the handful of object
// operations the product needs. Every upload is integrity-checked end to end with SHA-256.
//
// What s3rver 3.7 (our test server) does with checksums, found by experiment:
// - It ignores `x-amz-checksum-*` headers: a wrong ChecksumSHA256 is accepted, and no checksum is
//   returned on PUT or HEAD. It never verifies Content-MD5 either.
// - It does not understand `aws-chunked` bodies. The SDK's default (`WHEN_SUPPORTED`) streams a
//   Readable body as aws-chunked with a CRC32 trailer, and s3rver stores the chunk framing as object
//   bytes: a silently corrupt object. The same happens with `ChecksumAlgorithm` on a streamed PutObject.
//   Hence `requestChecksumCalculation`/`responseChecksumValidation: 'WHEN_REQUIRED'`; several other
//   S3-compatible stores have the same gap.
// - Multipart upload works (create / upload part / complete); the ETag of the result is the MD5 of the
//   whole object, not AWS's `md5-of-md5s-N`, so ETags are never used for integrity here.
//   AbortMultipartUpload is answered with 405 MethodNotAllowed.
// - SigV4 signatures are not verified (a wrong secret with a known access key is accepted); only an
//   unknown access key is rejected, with 403 InvalidAccessKeyId.
//
// Decision: we send SHA-256 checksums in headers where that is safe (a precomputed ChecksumSHA256 on a
// single PutObject; per-part SHA-256 on multipart parts, which lib-storage sends as in-memory buffers)
// so that real S3 verifies them, AND we always verify after upload ourselves, because s3rver and some
// S3-compatible stores ignore those headers: HEAD must show the expected size and our `sha256` object
// metadata, and `verify: 'full'` re-reads the object and re-hashes it.
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { pipeline as pipelineCallback, Readable, Transform, Writable } from 'node:stream';
import type { TransformCallback } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  AbortMultipartUploadCommand,
  CreateBucketCommand,
  DeleteObjectCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  PutObjectCommand,
  S3Client,
} from '@aws-sdk/client-s3';
import type { BucketLocationConstraint, S3ClientConfig } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { getSignedUrl } from '@aws-sdk/s3-request-presigner';
import { createNewFileStream } from '../storage/local.js';

export interface S3PoolConfig {
  bucket: string;
  region: string;
  endpoint: string | null;
  accessKey: string;
  secretKey: string;
  forcePathStyle: boolean;
  prefix?: string;
}

export interface PutResult {
  bucket: string;
  key: string;
  size: number;
  /** hex SHA-256 of the bytes read from disk, verified against the stored object */
  sha256: string;
  etag: string | null;
  /** 1 for a single PutObject, else the number of multipart parts */
  parts: number;
}

export interface ObjectHead {
  size: number;
  contentType: string | null;
  /** user metadata, keys lower-case, values decoded (see encodeMetadataValue) */
  metadata: Record<string, string>;
  etag: string | null;
  cacheControl: string | null;
}

/** 'head': size + `sha256` metadata via HEAD; 'full': also re-download and re-hash the object. */
export type VerifyMode = 'head' | 'full';

/** The stored object does not match what we sent. Transient: the upload can simply be retried. */
export class S3IntegrityError extends Error {
  override readonly name = 'S3IntegrityError';
  readonly code = 'S3_INTEGRITY';
}

const MiB = 1024 * 1024;
/** Parts of 8 MiB keep a part's buffer small while staying far from S3's 10,000-part limit (80 GB). */
export const DEFAULT_PART_SIZE = 8 * MiB;
/** S3's minimum part size (all parts but the last). */
const MIN_PART_SIZE = 5 * MiB;
/** lib-storage buffers at most queueSize × partSize bytes: 4 × 8 MiB = 32 MiB per upload. */
const UPLOAD_QUEUE_SIZE = 4;
/** Read files in 1 MiB chunks: fewer syscalls than the 64 KiB default, still small. */
const READ_CHUNK = MiB;
/** Idle-socket timeout: a peer that stops sending for this long is treated as gone. */
const DEFAULT_TIMEOUT_MS = 30_000;
/** TCP connect timeout: an unreachable (black-holed) endpoint fails within seconds, not minutes. */
const CONNECT_TIMEOUT_MS = 3_000;
/** One quick retry for a stale keep-alive socket; the product's own back-off handles real outages. */
const DEFAULT_MAX_ATTEMPTS = 2;
/** Longest presigned URL lifetime SigV4 allows (7 days). */
const MAX_PRESIGN_SECONDS = 604_800;
const SHA256_METADATA_KEY = 'sha256';

// ---------------------------------------------------------------------------------------------------
// Clients

const clients = new Map<string, S3Client>();
/** Secrets of every configured pool, scrubbed from error messages as defence in depth. */
const knownSecrets = new Set<string>();
/** Shorter strings would mangle ordinary words when scrubbed; real secret keys are 40 characters. */
const MIN_SCRUBBED_SECRET_LENGTH = 8;

// The SDK logs to console by default (e.g. "non-retryable streaming request"); our callers classify
// and log every failure themselves with the structured logger.
const noop = (): void => {};
const SILENT_SDK_LOGGER: NonNullable<S3ClientConfig['logger']> = {
  trace: noop,
  debug: noop,
  info: noop,
  warn: noop,
  error: noop,
};

export function s3ClientFor(
  cfg: S3PoolConfig,
  opts: { timeoutMs?: number; maxAttempts?: number } = {},
): S3Client {
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const maxAttempts = opts.maxAttempts ?? DEFAULT_MAX_ATTEMPTS;
  // The bucket and prefix are not part of a client; the secret is keyed by its hash only.
  const cacheKey = JSON.stringify([
    cfg.endpoint,
    cfg.region,
    cfg.forcePathStyle,
    cfg.accessKey,
    sha256Hex(cfg.secretKey),
    timeoutMs,
    maxAttempts,
  ]);
  const cached = clients.get(cacheKey);
  if (cached) return cached;

  if (cfg.secretKey.length >= MIN_SCRUBBED_SECRET_LENGTH) knownSecrets.add(cfg.secretKey);
  const client = new S3Client({
    region: cfg.region,
    ...(cfg.endpoint !== null ? { endpoint: cfg.endpoint } : {}),
    forcePathStyle: cfg.forcePathStyle,
    credentials: { accessKeyId: cfg.accessKey, secretAccessKey: cfg.secretKey },
    maxAttempts,
    // See the header comment: default CRC32 trailers corrupt objects on s3rver and similar stores.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    requestHandler: {
      connectionTimeout: Math.min(CONNECT_TIMEOUT_MS, timeoutMs),
      // An idle timeout rather than `requestTimeout`, which bounds a whole request and would cut off
      // slow but healthy transfers of large bodies.
      socketTimeout: timeoutMs,
    },
    logger: SILENT_SDK_LOGGER,
  });
  clients.set(cacheKey, client);
  return client;
}

/** Destroys every cached client (closing keep-alive sockets); for shutdown and tests. */
export function closeS3Clients(): void {
  for (const client of clients.values()) client.destroy();
  clients.clear();
}

/** The object key for `key` inside a pool, honouring the pool's optional prefix. */
export function poolKey(cfg: Pick<S3PoolConfig, 'prefix'>, key: string): string {
  const prefix = cfg.prefix?.replace(/^\/+|\/+$/g, '') ?? '';
  const rest = key.replace(/^\/+/, '');
  return prefix === '' ? rest : `${prefix}/${rest}`;
}

export function redactS3Config(
  cfg: S3PoolConfig,
): Omit<S3PoolConfig, 'secretKey' | 'accessKey'> & { accessKey: string } {
  const { secretKey: _secret, accessKey, ...rest } = cfg;
  // Keys of four characters or fewer would be shown whole.
  return { ...rest, accessKey: accessKey.length > 4 ? `${accessKey.slice(0, 4)}…` : '…' };
}

// ---------------------------------------------------------------------------------------------------
// Upload

export interface PutFileArgs {
  bucket: string;
  key: string;
  filePath: string;
  contentType: string;
  metadata?: Record<string, string>;
  cacheControl?: string;
  partSizeBytes?: number;
  /** bytes read and sent so far */
  onProgress?: (loaded: number) => void;
  /** hex SHA-256 of the file if the caller already knows it (saves a hashing pass over the file) */
  sha256?: string;
  /** default 'head' */
  verify?: VerifyMode;
  /** send SHA-256 checksum headers for S3 to verify; default true (false for stores that reject them) */
  sendChecksum?: boolean;
  signal?: AbortSignal;
}

export async function putFileStreamed(client: S3Client, args: PutFileArgs): Promise<PutResult> {
  const partSize = args.partSizeBytes ?? DEFAULT_PART_SIZE;
  if (!Number.isSafeInteger(partSize) || partSize < MIN_PART_SIZE) {
    throw new RangeError(`partSizeBytes must be an integer >= ${MIN_PART_SIZE}, got ${partSize}`);
  }
  args.signal?.throwIfAborted();
  const { size } = await stat(args.filePath);
  // Metadata travels with the first request, so the hash must be known before upload starts. Unless
  // the caller knows it, hash the file once up front; the upload then re-hashes what it actually
  // reads, which catches a file that changes underneath us.
  const expectedSha256 = (args.sha256 ?? (await hashFile(args.filePath)).sha256).toLowerCase();
  if (!/^[0-9a-f]{64}$/.test(expectedSha256)) throw new TypeError('sha256 must be 64 hex characters');

  const metadata = encodeMetadata({ ...args.metadata, [SHA256_METADATA_KEY]: expectedSha256 });
  const sendChecksum = args.sendChecksum ?? true;
  const multipart = size > partSize;

  const hasher = new HashingPassThrough(multipart ? undefined : args.onProgress);
  const source = createReadStream(args.filePath, { highWaterMark: READ_CHUNK });
  // Errors on either side destroy both; the SDK sees them through `hasher`, its request body.
  pipelineCallback(source, hasher, noop);

  let etag: string | null;
  let parts: number;
  try {
    if (multipart) {
      ({ etag, parts } = await uploadMultipart(client, args, hasher, size, partSize, metadata, sendChecksum));
    } else {
      const out = await client.send(
        new PutObjectCommand({
          Bucket: args.bucket,
          Key: args.key,
          Body: hasher,
          ContentLength: size,
          ContentType: args.contentType,
          ...(args.cacheControl !== undefined ? { CacheControl: args.cacheControl } : {}),
          Metadata: metadata,
          // A header, not a trailer: safe everywhere; real S3 rejects the PUT if the bytes differ.
          ...(sendChecksum ? { ChecksumSHA256: Buffer.from(expectedSha256, 'hex').toString('base64') } : {}),
        }),
        args.signal ? { abortSignal: args.signal } : {},
      );
      etag = out.ETag ?? null;
      parts = 1;
    }
  } finally {
    hasher.destroy();
  }

  const readSha256 = hasher.digestHex();
  if (hasher.bytes !== size || readSha256 !== expectedSha256) {
    // What S3 holds is not the file we meant to store (it changed on disk, or the given hash was wrong).
    await deleteObject(client, args.bucket, args.key).catch(noop);
    throw new S3IntegrityError(
      `bytes read from ${path.basename(args.filePath)} for ${args.key} do not match: ` +
        `read ${hasher.bytes} of ${size} bytes, sha256 ${readSha256} expected ${expectedSha256}`,
    );
  }

  await verifyStored(client, args.bucket, args.key, size, expectedSha256, args.verify ?? 'head');
  return { bucket: args.bucket, key: args.key, size, sha256: expectedSha256, etag, parts };
}

async function uploadMultipart(
  client: S3Client,
  args: PutFileArgs,
  body: Readable,
  size: number,
  partSize: number,
  metadata: Record<string, string>,
  sendChecksum: boolean,
): Promise<{ etag: string | null; parts: number }> {
  const abortController = new AbortController();
  const onAbort = (): void => abortController.abort();
  args.signal?.addEventListener('abort', onAbort, { once: true });
  const upload = new Upload({
    client,
    params: {
      Bucket: args.bucket,
      Key: args.key,
      Body: body,
      // Lets lib-storage check that it uploaded exactly ceil(size / partSize) parts.
      ContentLength: size,
      ContentType: args.contentType,
      ...(args.cacheControl !== undefined ? { CacheControl: args.cacheControl } : {}),
      Metadata: metadata,
      // Parts are in-memory buffers, so the SDK sends a per-part SHA-256 header (never a trailer).
      ...(sendChecksum ? { ChecksumAlgorithm: 'SHA256' as const } : {}),
    },
    partSize,
    queueSize: UPLOAD_QUEUE_SIZE,
    // lib-storage would abort the upload itself but then throw the abort's error instead of the
    // original one (s3rver answers aborts with 405, which would look permanent). We abort ourselves.
    leavePartsOnError: true,
    abortController,
  });
  const onProgress = args.onProgress;
  if (onProgress) {
    upload.on('httpUploadProgress', (p) => {
      if (p.loaded !== undefined) onProgress(p.loaded);
    });
  }
  try {
    const out = await upload.done();
    return { etag: out.ETag ?? null, parts: Math.ceil(size / partSize) };
  } catch (err) {
    abortController.abort();
    if (upload.uploadId !== undefined) {
      // Best effort; a bucket lifecycle rule (AbortIncompleteMultipartUpload) collects what remains.
      await client
        .send(
          new AbortMultipartUploadCommand({ Bucket: args.bucket, Key: args.key, UploadId: upload.uploadId }),
        )
        .catch(noop);
    }
    throw err;
  } finally {
    args.signal?.removeEventListener('abort', onAbort);
  }
}

async function verifyStored(
  client: S3Client,
  bucket: string,
  key: string,
  size: number,
  sha256: string,
  mode: VerifyMode,
): Promise<void> {
  const head = await headObject(client, bucket, key);
  if (head === null) throw new S3IntegrityError(`object ${key} is missing right after upload`);
  if (head.size !== size || head.metadata[SHA256_METADATA_KEY] !== sha256) {
    throw new S3IntegrityError(
      `object ${key} after upload: size ${head.size} (expected ${size}), ` +
        `sha256 metadata ${head.metadata[SHA256_METADATA_KEY] ?? 'missing'} (expected ${sha256})`,
    );
  }
  if (mode === 'full') {
    const hasher = new HashingPassThrough();
    await pipeline(await getObjectStream(client, bucket, key), hasher, new NullSink());
    const actual = hasher.digestHex();
    if (hasher.bytes !== size || actual !== sha256) {
      throw new S3IntegrityError(
        `object ${key} re-read: ${hasher.bytes} bytes sha256 ${actual}, expected ${size} ${sha256}`,
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Other object operations

/** null when the object does not exist (a HEAD cannot tell a missing bucket from a missing key). */
export async function headObject(client: S3Client, bucket: string, key: string): Promise<ObjectHead | null> {
  try {
    const out = await client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }));
    return {
      size: out.ContentLength ?? 0,
      contentType: out.ContentType ?? null,
      metadata: decodeMetadata(out.Metadata ?? {}),
      etag: out.ETag ?? null,
      cacheControl: out.CacheControl ?? null,
    };
  } catch (err) {
    if (isS3NotFound(err)) return null;
    throw err;
  }
}

/** Idempotent: deleting a missing key succeeds (S3 answers 204; some compatible stores answer 404). */
export async function deleteObject(client: S3Client, bucket: string, key: string): Promise<void> {
  try {
    await client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }));
  } catch (err) {
    if (!isS3NotFound(err)) throw err;
  }
}

/** `range` is inclusive on both ends, like the HTTP Range header. */
export async function getObjectStream(
  client: S3Client,
  bucket: string,
  key: string,
  range?: { start: number; end: number },
): Promise<Readable> {
  if (range !== undefined) {
    const { start, end } = range;
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 0 || end < start) {
      throw new RangeError(`invalid byte range ${start}-${end}`);
    }
  }
  const out = await client.send(
    new GetObjectCommand({
      Bucket: bucket,
      Key: key,
      ...(range !== undefined ? { Range: `bytes=${range.start}-${range.end}` } : {}),
    }),
  );
  return bodyAsReadable(out.Body, key);
}

/**
 * Streams the object to `filePath` through a temp file in the same directory, fsyncs it, then renames
 * it into place, so a crash never leaves a partial file under the final name. Verifies the length and,
 * when the object carries our `sha256` metadata, the hash.
 */
export async function downloadToFile(
  client: S3Client,
  bucket: string,
  key: string,
  filePath: string,
): Promise<{ size: number; sha256: string }> {
  const out = await client.send(new GetObjectCommand({ Bucket: bucket, Key: key }));
  const body = bodyAsReadable(out.Body, key);
  const tmpPath = path.join(
    path.dirname(filePath),
    `.${path.basename(filePath)}.${randomBytes(6).toString('hex')}.part`,
  );
  const hasher = new HashingPassThrough();
  try {
    await pipeline(body, hasher, await createNewFileStream(tmpPath));
    const sha256 = hasher.digestHex();
    const expectedSha256 = decodeMetadata(out.Metadata ?? {})[SHA256_METADATA_KEY];
    if (out.ContentLength !== undefined && hasher.bytes !== out.ContentLength) {
      throw new S3IntegrityError(
        `download of ${key}: got ${hasher.bytes} bytes, expected ${out.ContentLength}`,
      );
    }
    if (expectedSha256 !== undefined && sha256 !== expectedSha256) {
      throw new S3IntegrityError(
        `download of ${key}: sha256 ${sha256}, object metadata says ${expectedSha256}`,
      );
    }
    await fsyncPath(tmpPath, 'r+');
    await rename(tmpPath, filePath);
    // Make the rename itself durable; not supported everywhere, and the data is already safe.
    await fsyncPath(path.dirname(filePath), 'r').catch(noop);
    return { size: hasher.bytes, sha256 };
  } catch (err) {
    body.destroy();
    await rm(tmpPath, { force: true });
    throw err;
  }
}

export async function ensureBucket(client: S3Client, bucket: string): Promise<void> {
  if (await bucketExists(client, bucket)) return;
  const region = await client.config.region();
  try {
    await client.send(
      new CreateBucketCommand({
        Bucket: bucket,
        // us-east-1 is the default location and must not be named explicitly.
        ...(region !== 'us-east-1'
          ? { CreateBucketConfiguration: { LocationConstraint: region as BucketLocationConstraint } }
          : {}),
      }),
    );
  } catch (err) {
    const name = errorName(err);
    if (name === 'BucketAlreadyOwnedByYou') return;
    // s3rver (and a concurrent creator) answer BucketAlreadyExists; on AWS it means someone else owns
    // the name, which the HEAD tells apart (403 there).
    if (name === 'BucketAlreadyExists' && (await bucketExists(client, bucket))) return;
    throw err;
  }
}

/** HEAD on the bucket: true when it is there and readable with these credentials (pool health checks). */
export async function bucketExists(client: S3Client, bucket: string): Promise<boolean> {
  try {
    await client.send(new HeadBucketCommand({ Bucket: bucket }));
    return true;
  } catch (err) {
    if (httpStatus(err) === 404) return false;
    throw err;
  }
}

export async function presignGet(
  client: S3Client,
  bucket: string,
  key: string,
  expiresSeconds: number,
): Promise<string> {
  return getSignedUrl(client, new GetObjectCommand({ Bucket: bucket, Key: key }), {
    expiresIn: checkExpiry(expiresSeconds),
  });
}

/**
 * The uploader must send exactly this Content-Type (it is signed) and, when given, this
 * Content-Length. Note that s3rver does not check signatures, so only real S3 enforces either.
 */
export async function presignPut(
  client: S3Client,
  bucket: string,
  key: string,
  opts: { expiresSeconds: number; contentType: string; contentLength?: number },
): Promise<string> {
  return getSignedUrl(
    client,
    new PutObjectCommand({
      Bucket: bucket,
      Key: key,
      ContentType: opts.contentType,
      ...(opts.contentLength !== undefined ? { ContentLength: opts.contentLength } : {}),
    }),
    // The presigner leaves content-type unsigned by default, which would let a client store any type.
    { expiresIn: checkExpiry(opts.expiresSeconds), signableHeaders: new Set(['content-type']) },
  );
}

function checkExpiry(seconds: number): number {
  if (!Number.isInteger(seconds) || seconds < 1 || seconds > MAX_PRESIGN_SECONDS) {
    throw new RangeError(`presigned URL expiry must be 1..${MAX_PRESIGN_SECONDS} seconds, got ${seconds}`);
  }
  return seconds;
}

// ---------------------------------------------------------------------------------------------------
// Errors

const NETWORK_ERROR_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENETDOWN',
  'EHOSTDOWN',
  'EAI_AGAIN',
  'ENOTFOUND',
]);
const TRANSIENT_NAMES = new Set([
  'TimeoutError',
  'RequestTimeout',
  'RequestTimeoutException',
  'SlowDown',
  'Throttling',
  'ThrottlingException',
  'RequestThrottled',
  'TooManyRequestsException',
  'RequestLimitExceeded',
  'InternalError',
  'ServiceUnavailable',
  'OperationAborted',
  'AbortError',
]);
const INTEGRITY_NAMES = new Set([
  'S3IntegrityError',
  'BadDigest',
  'InvalidDigest',
  'XAmzContentSHA256Mismatch',
]);
const CREDENTIAL_NAMES = new Set([
  'InvalidAccessKeyId',
  'SignatureDoesNotMatch',
  'AccessDenied',
  'InvalidToken',
  'ExpiredToken',
  'Forbidden',
]);
/** Local file errors: retrying does not make a missing or unreadable file appear. */
const LOCAL_FILE_CODES = new Set(['ENOENT', 'EACCES', 'EPERM', 'EISDIR', 'ENOTDIR', 'EEXIST']);

/**
 * Transient: network failures, timeouts, 5xx, throttling, integrity mismatches. Permanent: rejected
 * credentials, missing bucket or key, other 4xx, bad arguments, local file errors. The message names
 * the S3 error and status and never contains a configured secret key.
 */
export function classifyS3Error(err: unknown): { transient: boolean; message: string } {
  const e = rootCause(err);
  const name = errorName(e);
  const code = fieldString(e, 'code');
  const status = httpStatus(e);
  const raw = e instanceof Error ? e.message : String(e);
  const detail = raw && raw !== 'UnknownError' && raw !== name ? `: ${raw}` : '';
  const what = `${name ?? code ?? 'Error'}${status !== undefined ? ` (HTTP ${status})` : ''}`;
  const result = (transient: boolean, summary: string): { transient: boolean; message: string } => ({
    transient,
    message: scrub(`${summary}: ${what}${detail}`).slice(0, 500),
  });

  // BadDigest & co.: real S3 checked our checksum header and the bytes differ (e.g. the file changed).
  if (name !== undefined && INTEGRITY_NAMES.has(name))
    return result(true, 'S3 object failed the integrity check');
  if ((code !== undefined && NETWORK_ERROR_CODES.has(code)) || name === 'TimeoutError') {
    return result(true, 'S3 endpoint unreachable or not responding');
  }
  if (name !== undefined && CREDENTIAL_NAMES.has(name)) {
    return result(false, 'S3 rejected the credentials or denied access');
  }
  if (name === 'NoSuchBucket') return result(false, 'S3 bucket does not exist');
  if (name !== undefined && TRANSIENT_NAMES.has(name)) return result(true, 'S3 temporarily failed');
  if (status !== undefined) {
    if (status >= 500 || status === 408 || status === 429) return result(true, 'S3 temporarily failed');
    if (status === 403) return result(false, 'S3 rejected the credentials or denied access');
    if (status === 404) return result(false, 'S3 object or bucket not found');
    return result(false, 'S3 rejected the request');
  }
  if (code !== undefined && LOCAL_FILE_CODES.has(code)) return result(false, 'local file error');
  if (e instanceof RangeError || e instanceof TypeError) return result(false, 'invalid S3 request');
  // An SDK error without a response (the request never completed) is worth retrying.
  if (fieldString(e, '$fault') === 'server' || hasField(e, '$metadata'))
    return result(true, 'S3 request failed');
  return result(false, 'S3 operation failed');
}

/** True for a missing key (404 NoSuchKey / NotFound); a missing bucket looks the same to HEAD. */
export function isS3NotFound(err: unknown): boolean {
  const name = errorName(err);
  return name === 'NoSuchKey' || name === 'NotFound' || (httpStatus(err) === 404 && name !== 'NoSuchBucket');
}

function rootCause(err: unknown): unknown {
  // Node's happy-eyeballs connect reports an AggregateError holding the per-address errors.
  if (err instanceof AggregateError && err.errors.length > 0 && fieldString(err, 'code') === undefined) {
    return err.errors[0] as unknown;
  }
  return err;
}

function errorName(err: unknown): string | undefined {
  const name = fieldString(err, 'name') ?? fieldString(err, 'Code');
  return name === 'Error' ? (fieldString(err, 'Code') ?? undefined) : name;
}

function httpStatus(err: unknown): number | undefined {
  if (!hasField(err, '$metadata')) return undefined;
  const meta = err.$metadata;
  if (typeof meta !== 'object' || meta === null || !('httpStatusCode' in meta)) return undefined;
  return typeof meta.httpStatusCode === 'number' ? meta.httpStatusCode : undefined;
}

function hasField<K extends string>(value: unknown, field: K): value is Record<K, unknown> {
  return typeof value === 'object' && value !== null && field in value;
}

function fieldString(value: unknown, field: string): string | undefined {
  if (!hasField(value, field)) return undefined;
  const v = value[field];
  return typeof v === 'string' && v !== '' ? v : undefined;
}

function scrub(message: string): string {
  let out = message;
  for (const secret of knownSecrets) out = out.split(secret).join('[redacted]');
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Helpers

// S3 user metadata travels in HTTP headers, which carry only ASCII (Node throws on characters above
// U+00FF; Latin-1 ones arrive mangled). Other values are stored percent-encoded behind the RFC 5987
// marker `UTF-8''` and decoded again by headObject, so `original-path` can be any file name.
const UTF8_MARKER = "UTF-8''";
const PLAIN_METADATA = /^[\x20-\x7e]*$/;

export function encodeMetadataValue(value: string): string {
  return PLAIN_METADATA.test(value) && !value.startsWith(UTF8_MARKER)
    ? value
    : UTF8_MARKER + encodeURIComponent(value);
}

export function decodeMetadataValue(value: string): string {
  if (!value.startsWith(UTF8_MARKER)) return value;
  try {
    return decodeURIComponent(value.slice(UTF8_MARKER.length));
  } catch {
    return value;
  }
}

function encodeMetadata(metadata: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata)) {
    const key = k.toLowerCase();
    if (!/^[a-z0-9][a-z0-9._-]*$/.test(key)) throw new TypeError(`invalid S3 metadata key: ${k}`);
    out[key] = encodeMetadataValue(v);
  }
  return out;
}

function decodeMetadata(metadata: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(metadata)) out[k.toLowerCase()] = decodeMetadataValue(v);
  return out;
}

function bodyAsReadable(body: unknown, key: string): Readable {
  if (body instanceof Readable) return body;
  throw new Error(`GetObject for ${key} returned no Node.js stream body`);
}

function sha256Hex(value: string): string {
  return createHash('sha256').update(value).digest('hex');
}

async function hashFile(filePath: string): Promise<{ size: number; sha256: string }> {
  const hasher = new HashingPassThrough();
  await pipeline(createReadStream(filePath, { highWaterMark: READ_CHUNK }), hasher, new NullSink());
  return { size: hasher.bytes, sha256: hasher.digestHex() };
}

async function fsyncPath(p: string, flags: 'r' | 'r+'): Promise<void> {
  const fh = await open(p, flags);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Passes bytes through unchanged while counting them and computing their SHA-256. */
class HashingPassThrough extends Transform {
  bytes = 0;
  readonly #hash = createHash('sha256');
  readonly #onBytes: ((loaded: number) => void) | undefined;
  #digest: string | undefined;

  constructor(onBytes?: (loaded: number) => void) {
    super();
    this.#onBytes = onBytes;
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
    this.#onBytes?.(this.bytes);
    callback(null, chunk);
  }

  /** Hex digest of everything seen so far; further bytes are not counted after the first call. */
  digestHex(): string {
    this.#digest ??= this.#hash.digest('hex');
    return this.#digest;
  }
}

/** Discards everything written to it (a hashing pass needs a consumer). */
class NullSink extends Writable {
  override _write(_chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    callback();
  }
}
