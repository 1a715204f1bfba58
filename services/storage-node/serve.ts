// GET/HEAD /uploads/*: files of this node's pools, streamed, with ETag, long immutable caching and
// single-range requests. Anything that does not resolve inside a pool is a 404.
import type { FastifyReply, FastifyRequest } from 'fastify';
import { notFound } from '../../shared/errors.js';
import type { Pool } from '../../shared/pools.js';
import { LocalStore } from '../../shared/storage/local.js';
import { normaliseStoredPath } from '../../shared/storage/paths.js';

const MIME_BY_EXT: Record<string, string> = {
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  png: 'image/png',
  gif: 'image/gif',
  webp: 'image/webp',
  avif: 'image/avif',
  bmp: 'image/bmp',
};

export async function serveUpload(
  pools: Pool[],
  req: FastifyRequest<{ Params: { '*': string } }>,
  reply: FastifyReply,
  /** Files not on this node: where they are instead (S3 pools), or null. */
  redirect?: (rel: string) => Promise<{ location: string; cacheControl: string } | null>,
) {
  let raw: string;
  try {
    raw = decodeURIComponent(req.params['*']);
  } catch {
    throw notFound();
  }
  const norm = normaliseStoredPath(raw);
  if (!norm.ok) throw notFound();
  const rel = norm.path;
  const ext = rel.slice(rel.lastIndexOf('.') + 1).toLowerCase();
  const type = MIME_BY_EXT[ext];
  if (!type) throw notFound();
  for (const pool of pools) {
    if (!pool.base_path) continue;
    const store = new LocalStore(pool.base_path);
    const st = await store.stat(rel);
    if (!st) continue;
    // Stored files never change under their name (new content gets a new uuid), so size+mtime is a
    // strong enough validator and the cache may keep them forever.
    const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
    void reply.header('etag', etag);
    void reply.header('cache-control', 'public, max-age=31536000, immutable');
    void reply.header('accept-ranges', 'bytes');
    void reply.header('access-control-allow-origin', '*');
    void reply.type(type);
    if (req.headers['if-none-match'] === etag) return reply.status(304).send();
    const range = parseRange(req.headers.range, st.size);
    if (range === 'invalid') {
      void reply.header('content-range', `bytes */${st.size}`);
      return reply
        .status(416)
        .send({ error: { code: 'range_not_satisfiable', message: 'range not satisfiable' } });
    }
    if (range) {
      void reply.header('content-range', `bytes ${range.start}-${range.end}/${st.size}`);
      void reply.header('content-length', String(range.end - range.start + 1));
      if (req.method === 'HEAD') return reply.status(206).send();
      return reply.status(206).send(store.openRead(rel, range));
    }
    void reply.header('content-length', String(st.size));
    if (req.method === 'HEAD') return reply.status(200).send();
    return reply.status(200).send(store.openRead(rel));
  }
  const elsewhere = redirect ? await redirect(rel) : null;
  if (elsewhere) {
    void reply.header('cache-control', elsewhere.cacheControl);
    void reply.header('access-control-allow-origin', '*');
    return reply.redirect(elsewhere.location, 302);
  }
  throw notFound();
}

/** One `bytes=` range (multi-range answers the whole file, which RFC 9110 allows). */
export function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | null | 'invalid' {
  if (!header) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m) return null;
  const [, a = '', b = ''] = m;
  if (a === '' && b === '') return 'invalid';
  let start: number;
  let end: number;
  if (a === '') {
    const suffix = Number(b);
    if (suffix === 0) return 'invalid';
    start = Math.max(0, size - suffix);
    end = size - 1;
  } else {
    start = Number(a);
    end = b === '' ? size - 1 : Math.min(Number(b), size - 1);
  }
  if (start >= size || start > end) return 'invalid';
  return { start, end };
}
