// S3 pools: the pure decisions (session kind, URLs, routes of moves, paths of redirects).
import t from 'tap';
import type { Pool } from '../../shared/pools.js';
import { poolFileUrl } from '../../services/api/present.js';
import { sessionKind, stagingPath } from '../../services/api/s3-uploads.js';
import { moverNodeFor, planMoveRoute } from '../../services/mover/plan.js';
import { contentTypeOf } from '../../services/storage/pool-store.js';
import { isServableS3Pool } from '../../services/storage/s3-health.js';
import { imageIdOfPath } from '../../services/storage/s3-serve.js';

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
    s3_force_path_style: true,
    s3_prefix: '',
    description: '',
    created_at: new Date(0),
    updated_at: new Date(0),
    ...over,
  };
}

const A = pool({ id: '00000000-0000-4000-8000-00000000000a', name: 'a', base_path: '/srv/a' });
const B = pool({
  id: '00000000-0000-4000-8000-00000000000b',
  name: 'b',
  node_id: 'node-b',
  base_path: '/srv/b',
  upload_api_url: 'https://b.example/api/internal/upload',
});
const S = pool({
  id: '00000000-0000-4000-8000-000000000005',
  name: 's',
  storage_type: 's3',
  base_path: null,
  upload_api_url: null,
  node_id: '_any',
  s3_bucket: 'bucket',
  public_base_url: 'https://cdn.example/bucket',
});
const S2 = pool({ ...S, id: '00000000-0000-4000-8000-000000000006', name: 's2', s3_bucket: 'other' });

void t.test('sessionKind: from the filename and/or content type, never contradicting', async (t) => {
  t.equal(sessionKind('a.jpg', undefined), 'jpeg');
  t.equal(sessionKind('a.JPEG', 'image/jpeg'), 'jpeg');
  t.equal(sessionKind(undefined, 'image/png'), 'png');
  t.equal(sessionKind('x', 'image/webp'), 'webp', 'no extension: the type decides');
  t.equal(sessionKind('a.avif', undefined), 'avif');
  t.equal(sessionKind('a.bmp', 'image/x-ms-bmp'), 'bmp');
  t.equal(sessionKind('a.svg', undefined), null);
  t.equal(sessionKind('a.jpg', 'image/png'), null, 'contradiction');
  t.equal(sessionKind(undefined, 'text/html'), null);
  t.equal(sessionKind(undefined, undefined), null);
  t.equal(stagingPath('u', 'jpg'), 'incoming/u.jpg');
});

void t.test('poolFileUrl: node pools, public and private S3 pools', async (t) => {
  const rel = 'original/2025/01/02/x.jpg';
  const base = { s3_prefix: '', s3_private: false };
  t.equal(
    poolFileUrl({ ...base, public_base_url: 'http://n1', storage_type: 'local' }, 'http://api', rel),
    `http://n1/uploads/${rel}`,
  );
  t.equal(
    poolFileUrl({ ...base, public_base_url: null, storage_type: null }, 'http://api', rel),
    `http://api/uploads/${rel}`,
  );
  t.equal(
    poolFileUrl({ ...base, public_base_url: 'https://cdn/b', storage_type: 's3' }, 'http://api', rel),
    `https://cdn/b/${rel}`,
  );
  t.equal(
    poolFileUrl(
      { public_base_url: 'https://cdn/b', storage_type: 's3', s3_prefix: '/px/', s3_private: false },
      'http://api',
      rel,
    ),
    `https://cdn/b/px/${rel}`,
    'with the pool prefix',
  );
  t.equal(
    poolFileUrl(
      { ...base, public_base_url: 'https://cdn/b', storage_type: 's3', s3_private: true },
      'http://api',
      rel,
    ),
    `http://api/uploads/${rel}`,
    'private: through the node',
  );
  t.equal(
    poolFileUrl({ ...base, public_base_url: '', storage_type: 's3' }, 'http://api', rel),
    `http://api/uploads/${rel}`,
    'no public URL: through the node',
  );
});

void t.test('moves with S3 pools: routes and the node that runs them', async (t) => {
  t.match(planMoveRoute(A, S, 'node-a'), { ok: true, mode: 'to-s3', sourceBase: '/srv/a' });
  t.match(planMoveRoute(S, A, 'node-a'), { ok: true, mode: 'from-s3', targetBase: '/srv/a' });
  t.match(planMoveRoute(S, S2, '_any'), { ok: true, mode: 'to-s3', sourceBase: null });
  t.equal(moverNodeFor(A, S), 'node-a', 'into S3: the source node reads its files');
  t.equal(moverNodeFor(S, B), 'node-b', 'out of S3: the target node writes locally');
  t.equal(moverNodeFor(S, S2), '_any');
  const refused: [Pool, Pool, string, RegExp][] = [
    [S, B, 'node-a', /target's node node-b/],
    [A, pool({ ...S, s3_bucket: null }), 'node-a', /no bucket/],
    [A, pool({ ...S, node_id: 'node-a' }), 'node-a', /S3 pool s must be served by every node/],
    [S, pool({ ...A, is_active: false }), 'node-a', /inactive/],
    [A, pool({ ...S, is_active: false }), 'node-a', /inactive/],
    [B, S, 'node-a', /belongs to node node-b/],
  ];
  for (const [from, to, node, reason] of refused) {
    const r = planMoveRoute(from, to, node);
    t.equal(r.ok, false, String(reason));
    if (!r.ok) t.match(r.reason, reason);
  }
});

void t.test('paths, types and pools of S3 serving', async (t) => {
  const id = '0b8e5c2a-3d0a-4d35-9c6b-0d8c0b6a6c11';
  t.equal(imageIdOfPath(`original/2025/01/02/${id}.jpg`), id);
  t.equal(imageIdOfPath(`variants/2025/01/02/${id}_small.webp`), id);
  t.equal(imageIdOfPath(`variants/2025/01/02/${id}.avif`), id);
  t.equal(imageIdOfPath(`incoming/${id}.jpg`), null);
  t.equal(imageIdOfPath(`original/2025/01/02/../${id}.jpg`), null);
  t.equal(contentTypeOf('variants/x_small.webp'), 'image/webp');
  t.equal(contentTypeOf('original/x.JPG'), 'image/jpeg');
  t.equal(contentTypeOf('x.bin'), 'application/octet-stream');
  t.ok(isServableS3Pool(S));
  t.notOk(isServableS3Pool(A));
  t.notOk(isServableS3Pool(pool({ ...S, node_id: 'local' })), 'an S3 pool tied to one node is not used');
});
