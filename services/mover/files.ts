// Moving bytes between pools without ever exposing a half-written or unverified file: the verified
// write (temp file, hash while streaming, compare, then rename; never over a different file), the local
// copy between two pools of one node, and the push to another node's replicate endpoint.
//
// The replicate endpoint (services/storage-node/replicate.ts) receives through the same verified write.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { MovedFile } from '../../streams/events/catalog.js';
import { createNewFileStream, type LocalStore } from '../../shared/storage/local.js';
import { classifyReplicateStatus, type PushVerdict } from './plan.js';

/** The received bytes are not the ones announced (size or SHA-256). */
export class ContentMismatchError extends Error {
  readonly code = 'content_mismatch';
  constructor(
    readonly field: 'size' | 'sha256',
    readonly expected: string | number,
    readonly actual: string | number,
  ) {
    super(`${field} mismatch: expected ${expected}, got ${actual}`);
    this.name = 'ContentMismatchError';
  }
}

/** A different file already has this name: files are never overwritten silently. */
export class FileExistsError extends Error {
  readonly code = 'file_exists';
  constructor(readonly rel: string) {
    super(`a different file already exists at ${rel}`);
    this.name = 'FileExistsError';
  }
}

/** More bytes than the cap, with no declared size to blame. */
export class TooLargeError extends Error {
  readonly code = 'too_large';
  constructor(readonly maxBytes: number) {
    super(`more than ${maxBytes} bytes`);
    this.name = 'TooLargeError';
  }
}

export interface Expected {
  /** exact byte count, when known */
  size?: number;
  /** lower-case hex SHA-256, when known */
  sha256?: string;
  /** hard cap when `size` is not given */
  maxBytes: number;
}

export interface WriteResult {
  /** `skipped`: the very same bytes were already there */
  status: 'stored' | 'skipped';
  size: number;
  sha256: string;
}

/**
 * Streams `source` into `rel` of `store`: temp file (under the pool, so the rename stays on one file
 * system), SHA-256 and byte count while streaming, stop at the first byte over the expected size, compare
 * with `expect`, and only then rename into place. An existing file with the same bytes makes this a
 * no-op (`skipped`); one with different bytes is a FileExistsError. Nothing is left behind on failure.
 */
export async function writeVerified(
  store: LocalStore,
  rel: string,
  source: Readable,
  expect: Expected,
): Promise<WriteResult> {
  await store.ensureReady();
  const tmp = store.tmpPath();
  const hash = createHash('sha256');
  const limit = expect.size ?? expect.maxBytes;
  let size = 0;
  const meter = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      size += chunk.length;
      if (size > limit) {
        cb(
          expect.size !== undefined
            ? new ContentMismatchError('size', expect.size, `more`)
            : new TooLargeError(limit),
        );
        return;
      }
      hash.update(chunk);
      cb(null, chunk);
    },
  });
  let committed = false;
  try {
    await pipeline(source, meter, await createNewFileStream(tmp));
    const sha256 = hash.digest('hex');
    if (expect.size !== undefined && size !== expect.size)
      throw new ContentMismatchError('size', expect.size, size);
    if (expect.sha256 !== undefined && sha256 !== expect.sha256)
      throw new ContentMismatchError('sha256', expect.sha256, sha256);
    // Checked again right before the rename: a file that appeared meanwhile is compared, not replaced.
    // TODO(storage): a link()-based LocalStore.commitNoReplace would close the remaining check-then-rename
    // window; both writers would have to be racing on the same path with different bytes to hit it.
    const existing = await store.stat(rel);
    if (existing) {
      if (existing.size === size && (await store.sha256(rel)) === sha256)
        return { status: 'skipped', size, sha256 };
      throw new FileExistsError(rel);
    }
    await store.commit(tmp, rel);
    committed = true;
    return { status: 'stored', size, sha256 };
  } finally {
    if (!committed) await fs.rm(tmp, { force: true });
  }
}

/** Size and SHA-256 of a stored file, or null when it is not there. */
export async function fingerprint(
  store: LocalStore,
  rel: string,
): Promise<{ size: number; sha256: string } | null> {
  const st = await store.stat(rel);
  if (!st) return null;
  return { size: st.size, sha256: await store.sha256(rel) };
}

/**
 * Copies one file between two pools of this node. The target is written through the verified write
 * (against the size and hash the read model recorded, so a corrupt source is refused too), then read
 * back from disk once more: the rename is only as good as the bytes behind it.
 */
export async function copyLocal(
  source: LocalStore,
  target: LocalStore,
  file: MovedFile,
): Promise<WriteResult['status']> {
  const there = await fingerprint(target, file.path);
  if (there) {
    if (there.size === file.size && there.sha256 === file.sha256) return 'skipped';
    throw new FileExistsError(file.path);
  }
  const r = await writeVerified(target, file.path, source.openRead(file.path), {
    size: file.size,
    sha256: file.sha256,
    maxBytes: file.size,
  });
  const check = await fingerprint(target, file.path);
  if (!check || check.size !== file.size || check.sha256 !== file.sha256) {
    if (r.status === 'stored') await target.remove(file.path);
    throw new ContentMismatchError('sha256', file.sha256, check?.sha256 ?? 'missing after write');
  }
  return r.status;
}

export interface PushOptions {
  /** replicate endpoint of the target node */
  url: string;
  secret: string;
  poolId: string;
  file: MovedFile;
  source: Readable;
  signal?: AbortSignal;
  /** socket idle timeout */
  timeoutMs?: number;
}

export type PushResult =
  | { verdict: 'ok'; status: number; result: 'stored' | 'skipped' }
  | { verdict: Exclude<PushVerdict, 'ok'>; status: number | null; reason: string };

/**
 * PUTs one file to another node's replicate endpoint (streamed, Content-Length set, size and SHA-256 in
 * the query for the target to verify). Never throws: network trouble is `transient`, the target's
 * refusals are classified by status (see classifyReplicateStatus).
 */
export function pushFile(o: PushOptions): Promise<PushResult> {
  const u = new URL(o.url);
  u.searchParams.set('pool_id', o.poolId);
  u.searchParams.set('stored_path', o.file.path);
  u.searchParams.set('size', String(o.file.size));
  u.searchParams.set('sha256', o.file.sha256);
  const client = u.protocol === 'https:' ? https : http;
  return new Promise<PushResult>((resolve) => {
    let settled = false;
    const done = (r: PushResult) => {
      if (settled) return;
      settled = true;
      resolve(r);
    };
    const req = client.request(u, {
      method: 'PUT',
      headers: {
        authorization: `Bearer ${o.secret}`,
        'content-type': 'application/octet-stream',
        'content-length': String(o.file.size),
      },
      signal: o.signal,
      timeout: o.timeoutMs ?? 60_000,
    });
    req.on('timeout', () => req.destroy(new Error('replicate request timed out')));
    req.on('error', (err) =>
      done({ verdict: 'transient', status: null, reason: `replicate request failed: ${err.message}` }),
    );
    req.on('response', (res) => {
      const chunks: Buffer[] = [];
      let len = 0;
      res.on('data', (c: Buffer) => {
        // The answer is a small JSON object; anything longer is not read into memory.
        if (len < 64 * 1024) chunks.push(c);
        len += c.length;
      });
      res.on('error', (err) =>
        done({ verdict: 'transient', status: null, reason: `replicate answer broken: ${err.message}` }),
      );
      res.on('end', () => {
        const status = res.statusCode ?? 0;
        const text = Buffer.concat(chunks).toString('utf8').slice(0, 2000);
        let body: { status?: unknown; error?: { code?: unknown; message?: unknown } } = {};
        try {
          body = JSON.parse(text) as typeof body;
        } catch {
          // not JSON: the status decides
        }
        const verdict = classifyReplicateStatus(status);
        if (verdict === 'ok') {
          done({ verdict, status, result: body.status === 'skipped' ? 'skipped' : 'stored' });
          return;
        }
        const why = body.error
          ? `${String(body.error.code)}: ${String(body.error.message)}`
          : text || 'no body';
        done({ verdict, status, reason: `target answered ${status} (${why})` });
      });
    });
    // A source that fails mid-way (or a target that hangs up early) ends the request; the outcome is
    // whatever the request reports first.
    pipeline(o.source, req).catch((err: unknown) => {
      // The target may refuse early (409, 422 …) and hang up while the body is still going out: give its
      // answer a moment to arrive, since it decides between transient and permanent.
      const reason = `replicate upload failed: ${err instanceof Error ? err.message : String(err)}`;
      setTimeout(() => done({ verdict: 'transient', status: null, reason }), 1_000).unref();
    });
  });
}
