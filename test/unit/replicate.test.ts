// Replication and pool moves: the pure decisions (routes, request checks, answer classification) and the
// verified write against a real temporary directory.
import { createHash } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import t from 'tap';
import type { Pool } from '../../shared/pools.js';
import { LocalStore } from '../../shared/storage/local.js';
import {
  bearerToken,
  checkReplicateRequest,
  MAX_REPLICATE_BYTES,
  secretMatches,
  type ReplicateInput,
} from '../../services/storage-node/replicate.js';
import {
  classifyReplicateStatus,
  filesOf,
  moveRetryDelayMs,
  planMoveRoute,
  replicateUrlFor,
  totalBytes,
} from '../../services/mover/plan.js';
import {
  ContentMismatchError,
  copyLocal,
  FileExistsError,
  TooLargeError,
  writeVerified,
} from '../../services/mover/files.js';

const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

function pool(over: Partial<Pool>): Pool {
  return {
    id: '00000000-0000-4000-8000-000000000001',
    name: 'p',
    storage_type: 'local',
    storage_tier: 'hot',
    priority: 100,
    base_path: '/srv/p',
    public_base_url: 'http://a.example',
    upload_api_url: 'http://a.example/api/internal/upload',
    node_id: 'node-a',
    max_capacity_bytes: null,
    is_active: true,
    is_backup_target: false,
    s3_bucket: null,
    s3_region: null,
    s3_endpoint: null,
    s3_access_key: null,
    s3_secret_key: null,
    s3_force_path_style: false,
    s3_prefix: '',
    description: '',
    created_at: new Date(0),
    updated_at: new Date(0),
    ...over,
  };
}

const A = pool({ id: '00000000-0000-4000-8000-00000000000a', name: 'a', base_path: '/srv/a' });
const A2 = pool({ id: '00000000-0000-4000-8000-0000000000a2', name: 'a2', base_path: '/srv/a2' });
const B = pool({
  id: '00000000-0000-4000-8000-00000000000b',
  name: 'b',
  node_id: 'node-b',
  base_path: '/srv/b',
  public_base_url: 'https://b.example',
  upload_api_url: 'https://b.example/pf/api/internal/upload',
});

void t.test('replicateUrlFor derives the endpoint from upload_api_url', async (t) => {
  t.equal(replicateUrlFor('http://a.example/api/internal/upload'), 'http://a.example/api/internal/replicate');
  t.equal(
    replicateUrlFor('https://b.example:8443/pf/api/internal/upload/'),
    'https://b.example:8443/pf/api/internal/replicate',
  );
  t.equal(
    replicateUrlFor('http://a.example/api/internal/upload?x=1#h'),
    'http://a.example/api/internal/replicate',
  );
  for (const bad of [
    null,
    undefined,
    '',
    'not a url',
    'ftp://a.example/api/internal/upload',
    'http://a.example/upload',
    'http://a.example/api/internal/upload/x',
  ]) {
    t.equal(replicateUrlFor(bad), null, String(bad));
  }
});

void t.test('planMoveRoute: local, remote and every refusal', async (t) => {
  t.match(planMoveRoute(A, A2, 'node-a'), {
    ok: true,
    mode: 'local',
    sourceBase: '/srv/a',
    targetBase: '/srv/a2',
  });
  t.match(planMoveRoute(A, B, 'node-a'), {
    ok: true,
    mode: 'remote',
    url: 'https://b.example/pf/api/internal/replicate',
  });
  t.match(
    planMoveRoute(pool({ ...A, is_active: false }), B, 'node-a'),
    { ok: true },
    'draining an inactive source is fine',
  );
  const refused: [Pool | undefined, Pool | undefined, string, RegExp][] = [
    [undefined, B, 'node-a', /source pool is unknown/],
    [A, undefined, 'node-a', /target pool is unknown/],
    [A, A, 'node-a', /same pool/],
    [A, pool({ ...B, storage_type: 's3', base_path: null }), 'node-a', /S3/],
    [pool({ ...A, storage_type: 's3' }), B, 'node-a', /S3/],
    [A, B, 'node-b', /belongs to node node-a/],
    [pool({ ...A, base_path: null }), B, 'node-a', /source pool has no base_path/],
    [A, pool({ ...B, is_active: false }), 'node-a', /inactive/],
    [A, pool({ ...A2, base_path: null }), 'node-a', /target pool has no base_path/],
    [A, pool({ ...B, upload_api_url: null }), 'node-a', /upload_api_url/],
    [A, pool({ ...B, upload_api_url: 'https://b.example/elsewhere' }), 'node-a', /upload_api_url/],
  ];
  for (const [from, to, node, reason] of refused) {
    const r = planMoveRoute(from, to, node);
    t.equal(r.ok, false, String(reason));
    if (!r.ok) t.match(r.reason, reason);
  }
});

void t.test('filesOf lists the original first, one entry per variant row', async (t) => {
  const files = filesOf({ stored_path: 'original/2025/01/01/x.jpg', size: 1000, sha256: 'a'.repeat(64) }, [
    { path: 'variants/2025/01/01/x_small.jpg', bytes: 100, sha256: 'b'.repeat(64) },
    { path: 'variants/2025/01/01/x_medium.jpg', bytes: 300, sha256: 'c'.repeat(64) },
  ]);
  t.same(
    files.map((f) => f.path),
    ['original/2025/01/01/x.jpg', 'variants/2025/01/01/x_small.jpg', 'variants/2025/01/01/x_medium.jpg'],
  );
  t.equal(totalBytes(files), 1400);
  t.equal(totalBytes([]), 0);
});

void t.test('classifyReplicateStatus and retry delays', async (t) => {
  t.equal(classifyReplicateStatus(201), 'ok');
  t.equal(classifyReplicateStatus(200), 'ok');
  for (const s of [408, 425, 429, 500, 502, 503, 504])
    t.equal(classifyReplicateStatus(s), 'transient', String(s));
  for (const s of [204, 301, 400, 401, 403, 404, 409, 413, 415, 422])
    t.equal(classifyReplicateStatus(s), 'permanent', String(s));
  t.same(
    [1, 2, 3, 4, 5, 6, 7, 10].map(moveRetryDelayMs),
    [2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000, 60_000],
  );
  t.equal(moveRetryDelayMs(0), 2_000);
});

void t.test('bearerToken and secretMatches', async (t) => {
  t.equal(bearerToken('Bearer abc'), 'abc');
  t.equal(bearerToken('bearer   abc  '), 'abc');
  for (const bad of [undefined, '', 'Bearer ', 'Basic abc', 'abc', ['Bearer abc']])
    t.equal(bearerToken(bad), undefined, JSON.stringify(bad));
  const secret = 'replicate-0123456789abcdef';
  t.ok(secretMatches(secret, secret));
  t.notOk(secretMatches(`${secret}x`, secret));
  t.notOk(secretMatches(secret.slice(0, -1), secret));
  t.notOk(secretMatches(undefined, secret));
  t.notOk(secretMatches('', ''), 'an unset secret matches nothing');
});

void t.test('checkReplicateRequest', async (t) => {
  const ok: ReplicateInput = {
    pool: A,
    storedPath: 'original/2025/01/01/x.jpg',
    size: 10,
    sha256: 'A'.repeat(64),
    requireChecksum: false,
    contentLength: 10,
    maxBytes: MAX_REPLICATE_BYTES,
  };
  t.match(
    checkReplicateRequest(ok),
    { ok: true, rel: 'original/2025/01/01/x.jpg', sha256: 'a'.repeat(64) },
    'checksum lower-cased',
  );
  t.match(checkReplicateRequest({ ...ok, size: undefined, sha256: undefined, contentLength: undefined }), {
    ok: true,
  });
  const cases: [Partial<ReplicateInput>, number, string][] = [
    [{ storedPath: '../x' }, 400, 'invalid_path'],
    [{ storedPath: 'original/../../x' }, 400, 'invalid_path'],
    [{ storedPath: 'uploads/x.jpg' }, 400, 'invalid_path'],
    [{ storedPath: 'original/%2e%2e/x' }, 400, 'invalid_path'],
    [{ sha256: undefined, requireChecksum: true }, 400, 'checksum_required'],
    [{ pool: undefined }, 404, 'pool_not_found'],
    [{ pool: pool({ ...A, base_path: null }) }, 404, 'pool_not_found'],
    [{ pool: pool({ ...A, storage_type: 's3' }) }, 404, 'pool_not_found'],
    [{ pool: pool({ ...A, is_active: false }) }, 409, 'pool_inactive'],
    [{ size: MAX_REPLICATE_BYTES + 1, contentLength: undefined }, 413, 'too_large'],
    [{ size: undefined, contentLength: MAX_REPLICATE_BYTES + 1 }, 413, 'too_large'],
    [{ size: 10, contentLength: 11 }, 422, 'size_mismatch'],
  ];
  for (const [over, status, code] of cases) {
    t.match(
      checkReplicateRequest({ ...ok, ...over }),
      { ok: false, status, code },
      `${JSON.stringify(over)} → ${status} ${code}`,
    );
  }
});

void t.test('writeVerified: temp + verify + rename, never over a different file', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pf-verified-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const store = new LocalStore(dir);
  const bytes = Buffer.from('hello replicated world');
  const rel = 'original/2025/01/01/f.jpg';
  const tmpFiles = async () => readdir(path.join(dir, '.tmp')).catch(() => [] as string[]);

  const stored = await writeVerified(store, rel, Readable.from([bytes]), {
    size: bytes.length,
    sha256: sha(bytes),
    maxBytes: 1000,
  });
  t.same(stored, { status: 'stored', size: bytes.length, sha256: sha(bytes) });
  t.same(await readFile(path.join(dir, rel)), bytes);

  const again = await writeVerified(store, rel, Readable.from([bytes]), { maxBytes: 1000 });
  t.equal(again.status, 'skipped', 'same bytes again: nothing to do');

  await t.rejects(
    writeVerified(store, rel, Readable.from([Buffer.from('other bytes')]), { maxBytes: 1000 }),
    FileExistsError,
  );
  t.same(await readFile(path.join(dir, rel)), bytes, 'never overwritten');

  const rel2 = 'original/2025/01/01/g.jpg';
  await t.rejects(
    writeVerified(store, rel2, Readable.from([bytes]), {
      size: bytes.length,
      sha256: sha('x'),
      maxBytes: 1000,
    }),
    { name: 'ContentMismatchError', field: 'sha256' },
  );
  await t.rejects(
    writeVerified(store, rel2, Readable.from([bytes]), { size: bytes.length + 1, maxBytes: 1000 }),
    { name: 'ContentMismatchError', field: 'size' },
  );
  await t.rejects(
    writeVerified(store, rel2, Readable.from([bytes, bytes]), { size: bytes.length, maxBytes: 1000 }),
    { name: 'ContentMismatchError', field: 'size' },
    'stops at the first byte over the announced size',
  );
  await t.rejects(writeVerified(store, rel2, Readable.from([bytes]), { maxBytes: 5 }), TooLargeError);
  t.equal(await store.stat(rel2), null, 'nothing kept after a mismatch');
  t.same(await tmpFiles(), [], 'no temp file left behind');
});

void t.test('copyLocal copies, verifies, skips and refuses', async (t) => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'pf-copy-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const src = new LocalStore(path.join(dir, 'a'));
  const dst = new LocalStore(path.join(dir, 'b'));
  const rel = 'variants/2025/01/01/v.webp';
  const bytes = Buffer.from('variant bytes');
  await mkdir(path.dirname(src.resolve(rel)), { recursive: true });
  await writeFile(src.resolve(rel), bytes);
  const file = { path: rel, size: bytes.length, sha256: sha(bytes) };

  t.equal(await copyLocal(src, dst, file), 'stored');
  t.same(await readFile(dst.resolve(rel)), bytes);
  t.equal(await copyLocal(src, dst, file), 'skipped', 'resumed copy is a no-op');

  const rel2 = 'variants/2025/01/01/w.webp';
  await writeFile(src.resolve(rel2), Buffer.from('corrupted on disk'));
  await t.rejects(
    copyLocal(src, dst, { path: rel2, size: 17, sha256: sha('what was recorded') }),
    ContentMismatchError,
    'corrupt source refused',
  );
  t.equal(await dst.stat(rel2), null);

  await mkdir(path.dirname(dst.resolve(rel2)), { recursive: true });
  await writeFile(dst.resolve(rel2), Buffer.from('someone else'));
  await t.rejects(
    copyLocal(src, dst, { path: rel2, size: 17, sha256: sha('corrupted on disk') }),
    FileExistsError,
  );
});
