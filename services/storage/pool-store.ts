// The file access of the workers, whatever the pool type: a local/NFS pool is a directory (LocalStore),
// an S3 pool is a bucket. Workers ask for a readable local copy of a stored file, stage their outputs,
// remove and stat files, and never branch on the pool type themselves.
//
// S3 pools never leave files on a node: an original is streamed into a bounded temp file under
// DATA_DIR/tmp (refused past the caller's size limit, checked against the recorded size and SHA-256)
// and removed after use; outputs are rendered into a temp directory there and uploaded one by one.
import { createHash, randomUUID } from 'node:crypto';
import { createReadStream } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { S3Client } from '@aws-sdk/client-s3';
import type { Pool } from '../../shared/pools.js';
import {
  classifyS3Error,
  deleteObject,
  getObjectStream,
  headObject,
  poolKey,
  putFileStreamed,
  s3ClientFor,
  type S3PoolConfig,
} from '../../shared/s3/client.js';
import { s3ConfigOf } from '../../shared/s3/pools.js';
import { createNewFileStream, LocalStore } from '../../shared/storage/local.js';
import { resolveInPool } from '../../shared/storage/paths.js';

/** Stored files never change under their name (new content gets a new uuid): caches may keep them. */
export const IMMUTABLE_CACHE_CONTROL = 'public, max-age=31536000, immutable';

const CONTENT_TYPES: Readonly<Record<string, string>> = {
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  png: 'image/png',
  gif: 'image/gif',
  webp: 'image/webp',
  avif: 'image/avif',
  bmp: 'image/bmp',
};

/** The Content-Type of a stored file by its extension (every stored name ends in one of ours). */
export function contentTypeOf(rel: string): string {
  return CONTENT_TYPES[rel.slice(rel.lastIndexOf('.') + 1).toLowerCase()] ?? 'application/octet-stream';
}

/** Temp files of S3 work live here; the directory is per node (DATA_DIR), never inside a pool. */
export function tempRoot(dataDir: string): string {
  return path.join(dataDir, 'tmp');
}

/** Removes temp files and directories older than `maxAgeMs` (left by a crash mid-work). */
export async function sweepTempRoot(dataDir: string, maxAgeMs: number): Promise<number> {
  const dir = tempRoot(dataDir);
  let removed = 0;
  for (const name of await fs.readdir(dir).catch(() => [] as string[])) {
    const p = path.join(dir, name);
    const st = await fs.stat(p).catch(() => null);
    if (st && Date.now() - st.mtimeMs > maxAgeMs) {
      await fs.rm(p, { recursive: true, force: true });
      removed++;
    }
  }
  return removed;
}

/**
 * A failure of the store with its retry class. S3 failures are classified once here (network, 5xx and
 * integrity problems are transient; credentials, a missing key or an oversized object are not).
 */
export class StoreError extends Error {
  override readonly name = 'StoreError';
  constructor(
    message: string,
    readonly transient: boolean,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isTransientStoreError(err: unknown): boolean {
  return err instanceof StoreError && err.transient;
}

export interface FetchOptions {
  /** refuse (permanently) anything bigger: the caller's plan or request limit */
  maxBytes: number;
  /** the exact size the read model recorded, when known */
  size?: number;
  /** lower-case hex SHA-256 the read model recorded, when known */
  sha256?: string;
}

/** A readable local file holding a stored file's bytes; release() removes it when it is a temp copy. */
export interface LocalCopy {
  path: string;
  release(): Promise<void>;
}

/** Where a worker writes its outputs before they are in the pool. */
export interface OutputStage {
  /** absolute path to write the output `rel` to */
  toAbs(rel: string): string;
  /** makes the written output `rel` part of the pool (no-op when it was written in place) */
  commit(rel: string, opts: { contentType: string; sha256?: string; onProgress?: () => void }): Promise<void>;
  /** removes whatever is left of the stage */
  dispose(): Promise<void>;
}

export interface PoolStore {
  readonly pool: Pool;
  /** true when the bytes are not on this node's disk (S3) */
  readonly remote: boolean;
  fetchToTemp(rel: string, opts: FetchOptions): Promise<LocalCopy>;
  /** Stores the local file `filePath` as `rel` (verified), with the given Content-Type. */
  putFile(
    rel: string,
    filePath: string,
    contentType: string,
    opts?: { sha256?: string; onProgress?: () => void; verify?: 'head' | 'full' },
  ): Promise<{ size: number; sha256: string }>;
  /** Idempotent: a missing file is fine. */
  remove(rel: string): Promise<void>;
  /** Size (and, for S3, the SHA-256 our uploads record as object metadata), or null when missing. */
  stat(rel: string): Promise<{ size: number; sha256: string | null } | null>;
  openRead(rel: string): Promise<Readable>;
  stageOutputs(): Promise<OutputStage>;
}

/** The store of a pool, or null for a pool this process cannot reach (no base path, no bucket). */
export function poolStore(pool: Pool, opts: { dataDir: string }): PoolStore | null {
  if (pool.storage_type === 's3') {
    if (!pool.s3_bucket) return null;
    return new S3PoolStore(pool, s3ConfigOf(pool), tempRoot(opts.dataDir));
  }
  return pool.base_path ? new LocalPoolStore(pool, new LocalStore(pool.base_path)) : null;
}

export class LocalPoolStore implements PoolStore {
  readonly remote = false;
  constructor(
    readonly pool: Pool,
    readonly local: LocalStore,
  ) {}

  /** The file itself: it is already on this node's disk (nothing to copy, nothing to release). */
  async fetchToTemp(rel: string, opts: FetchOptions): Promise<LocalCopy> {
    const st = await this.local.stat(rel);
    if (!st) throw new StoreError(`${rel} is missing in pool ${this.pool.name}`, false);
    if (st.size > opts.maxBytes)
      throw new StoreError(`${rel} has ${st.size} bytes, more than ${opts.maxBytes}`, false);
    return { path: this.local.resolve(rel), release: async () => undefined };
  }

  async putFile(rel: string, filePath: string): Promise<{ size: number; sha256: string }> {
    return this.local.writeStream(rel, createReadStream(filePath));
  }

  async remove(rel: string): Promise<void> {
    await this.local.remove(rel);
  }

  async stat(rel: string): Promise<{ size: number; sha256: string | null } | null> {
    const st = await this.local.stat(rel);
    return st ? { size: st.size, sha256: null } : null;
  }

  async openRead(rel: string): Promise<Readable> {
    return this.local.openRead(rel);
  }

  /** Outputs are written in place (renderVariants writes atomically: temp file, fsync, rename). */
  async stageOutputs(): Promise<OutputStage> {
    return {
      toAbs: (rel) => this.local.resolve(rel),
      commit: async () => undefined,
      dispose: async () => undefined,
    };
  }
}

export class S3PoolStore implements PoolStore {
  readonly remote = true;
  readonly client: S3Client;
  constructor(
    readonly pool: Pool,
    readonly cfg: S3PoolConfig,
    readonly tmpRoot: string,
  ) {
    this.client = s3ClientFor(cfg);
  }

  key(rel: string): string {
    return poolKey(this.cfg, rel);
  }

  async fetchToTemp(rel: string, opts: FetchOptions): Promise<LocalCopy> {
    await fs.mkdir(this.tmpRoot, { recursive: true });
    const tmp = path.join(this.tmpRoot, randomUUID());
    const release = () => fs.rm(tmp, { force: true });
    try {
      const r = await this.#download(rel, tmp, opts);
      if (opts.size !== undefined && r.size !== opts.size)
        throw new StoreError(`${rel}: ${r.size} bytes in the bucket, ${opts.size} recorded`, false);
      if (opts.sha256 !== undefined && r.sha256 !== opts.sha256)
        throw new StoreError(`${rel}: sha256 ${r.sha256} in the bucket, ${opts.sha256} recorded`, false);
      return { path: tmp, release };
    } catch (err) {
      await release();
      throw err;
    }
  }

  /** Streams the object into `file`, stopping at the first byte over the limit; returns size and hash. */
  async #download(rel: string, file: string, opts: FetchOptions): Promise<{ size: number; sha256: string }> {
    const limit = Math.min(opts.maxBytes, opts.size ?? Infinity);
    const hash = createHash('sha256');
    let size = 0;
    const meter = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        size += chunk.length;
        if (size > limit) {
          cb(new StoreError(`${rel} is bigger than ${limit} bytes`, false));
          return;
        }
        hash.update(chunk);
        cb(null, chunk);
      },
    });
    try {
      const body = await getObjectStream(this.client, this.cfg.bucket, this.key(rel));
      await pipeline(body, meter, await createNewFileStream(file));
    } catch (err) {
      throw wrapS3(err, `download of ${rel}`);
    }
    return { size, sha256: hash.digest('hex') };
  }

  async putFile(
    rel: string,
    filePath: string,
    contentType: string,
    opts: { sha256?: string; onProgress?: () => void; verify?: 'head' | 'full' } = {},
  ): Promise<{ size: number; sha256: string }> {
    try {
      const r = await putFileStreamed(this.client, {
        bucket: this.cfg.bucket,
        key: this.key(rel),
        filePath,
        contentType,
        cacheControl: IMMUTABLE_CACHE_CONTROL,
        ...(opts.sha256 !== undefined ? { sha256: opts.sha256 } : {}),
        ...(opts.onProgress !== undefined ? { onProgress: opts.onProgress } : {}),
        verify: opts.verify ?? 'head',
      });
      return { size: r.size, sha256: r.sha256 };
    } catch (err) {
      throw wrapS3(err, `upload of ${rel}`);
    }
  }

  async remove(rel: string): Promise<void> {
    try {
      await deleteObject(this.client, this.cfg.bucket, this.key(rel));
    } catch (err) {
      throw wrapS3(err, `delete of ${rel}`);
    }
  }

  async stat(rel: string): Promise<{ size: number; sha256: string | null } | null> {
    try {
      const h = await headObject(this.client, this.cfg.bucket, this.key(rel));
      return h ? { size: h.size, sha256: h.metadata.sha256 ?? null } : null;
    } catch (err) {
      throw wrapS3(err, `stat of ${rel}`);
    }
  }

  async openRead(rel: string): Promise<Readable> {
    try {
      return await getObjectStream(this.client, this.cfg.bucket, this.key(rel));
    } catch (err) {
      throw wrapS3(err, `read of ${rel}`);
    }
  }

  /** Outputs go to a private temp directory and are uploaded on commit. */
  async stageOutputs(): Promise<OutputStage> {
    const dir = path.join(this.tmpRoot, randomUUID());
    await fs.mkdir(dir, { recursive: true });
    const toAbs = (rel: string) => resolveInPool(dir, rel);
    return {
      toAbs,
      commit: async (rel, o) => {
        const abs = toAbs(rel);
        try {
          await this.putFile(rel, abs, o.contentType, {
            ...(o.sha256 !== undefined ? { sha256: o.sha256 } : {}),
            ...(o.onProgress !== undefined ? { onProgress: o.onProgress } : {}),
          });
        } finally {
          // Each output leaves the disk as soon as it is in the bucket.
          await fs.rm(abs, { force: true });
        }
      },
      dispose: () => fs.rm(dir, { recursive: true, force: true }),
    };
  }
}

/** Errors of this machine's disk while staging: worth another attempt. */
const TRANSIENT_LOCAL_CODES = new Set(['ENOSPC', 'EIO', 'EMFILE', 'ENFILE', 'EAGAIN', 'EBUSY']);

function wrapS3(err: unknown, what: string): Error {
  if (err instanceof StoreError) return err;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && TRANSIENT_LOCAL_CODES.has(code))
    return new StoreError(`${what}: ${code}`, true, { cause: err });
  const c = classifyS3Error(err);
  return new StoreError(`${what}: ${c.message}`, c.transient, { cause: err });
}
