// S3 storage pools end to end against a real S3 protocol server (s3rver): direct-to-S3 uploads with a
// completion call, processing out of and into the bucket, serving (public bucket URLs, presigned
// redirects for private pools), the sweeper of uncompleted uploads, deletes, and moves local ↔ S3.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { HeadObjectCommand } from '@aws-sdk/client-s3';
import { addPool, type Pool } from '../../shared/pools.js';
import { s3ClientFor } from '../../shared/s3/client.js';
import { imageHistory } from '../../services/ops/events.js';
import { startMove } from '../../services/mover/enqueue.js';
import { startS3, type S3Harness } from '../helpers/s3.js';
import {
  FIXTURES,
  freePort,
  getJson,
  makeUser,
  startInProcess,
  testEnv,
  uploadFile,
  waitFor,
  waitForStatus,
  type TestEnv,
} from '../helpers/stack.js';

const HOSTILE = path.resolve(import.meta.dirname, '..', 'fixtures', 'hostile');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function s3Pool(
  env: TestEnv,
  s3: S3Harness,
  o: { name: string; private?: boolean; tier?: 'hot' | 'cold'; prefix?: string },
): Promise<Pool> {
  return addPool(env.sql(), {
    name: o.name,
    storage_type: 's3',
    storage_tier: o.tier ?? 'hot',
    public_base_url: `${s3.endpoint}/${s3.bucket}`,
    upload_api_url: null,
    node_id: '_any',
    is_active: true,
    s3_bucket: s3.bucket,
    s3_region: 'us-east-1',
    s3_endpoint: s3.endpoint,
    s3_access_key: s3.accessKey,
    s3_secret_key: s3.secretKey,
    s3_force_path_style: true,
    s3_prefix: o.prefix ?? '',
    s3_private: o.private ?? false,
  });
}

async function settings(env: TestEnv, values: Record<string, unknown>) {
  for (const [key, value] of Object.entries(values))
    await env.sql()`insert into settings (key, value) values (${key}, ${env.sql().json(value as never)})
                    on conflict (key) do update set value = excluded.value`;
}

interface S3Flow {
  session: Record<string, unknown>;
  put: number;
  complete: { status: number; body: Record<string, unknown> };
}

/** The client's side of a direct-to-S3 upload: session, PUT to the bucket, completion. */
async function s3Upload(
  api: string,
  apiKey: string,
  bytes: Buffer,
  filename: string,
  o: { put?: boolean; complete?: boolean; declaredSize?: number } = {},
): Promise<S3Flow> {
  const s = await fetch(`${api}/api/v1/upload/sessions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ file_size: o.declaredSize ?? Math.max(1, bytes.length), filename }),
  });
  const session = (await s.json()) as Record<string, unknown>;
  if (s.status !== 201) throw new Error(`session ${s.status}: ${JSON.stringify(session)}`);
  let put = 0;
  if (o.put !== false) {
    const r = await fetch(String(session.upload_url), {
      method: 'PUT',
      headers: session.headers as Record<string, string>,
      body: new Uint8Array(bytes),
    });
    await r.arrayBuffer();
    put = r.status;
  }
  const complete = o.complete === false ? { status: 0, body: {} } : await completeUpload(session, apiKey);
  return { session, put, complete };
}

async function completeUpload(session: Record<string, unknown>, apiKey: string) {
  const r = await fetch(String(session.complete_url), {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}` },
  });
  return { status: r.status, body: (await r.json()) as Record<string, unknown> };
}

/** Every file below `dir` (none when it does not exist). */
async function filesUnder(dir: string): Promise<string[]> {
  const all = await fs.readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
  return all.filter((e) => e.isFile()).map((e) => path.join(e.parentPath, e.name));
}

async function fetchBytes(url: string): Promise<{ status: number; bytes: Buffer; headers: Headers }> {
  const r = await fetch(url);
  return { status: r.status, bytes: Buffer.from(await r.arrayBuffer()), headers: r.headers };
}

/** A small generated image: PNG for even i, JPEG for odd i, each with different pixels. */
const tiny = (i: number) => {
  const img = sharp({
    create: {
      width: 80 + (i % 13),
      height: 60 + (i % 7),
      channels: 3,
      background: { r: (i * 37) % 255, g: (i * 11) % 255, b: 200 },
    },
  });
  return (i % 2 === 0 ? img.png() : img.jpeg()).toBuffer();
};

t.test('direct-to-S3 uploads into a public S3 pool (the only pool)', async (t) => {
  const env = await testEnv(t);
  const s3 = await startS3();
  t.teardown(() => s3.close());
  // The S3 pool exists before the first start: no default local pool is created.
  const pool = await s3Pool(env, s3, { name: 'bucket', prefix: 'px' });
  await settings(env, { thumbnail_avif: false });
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const user = await makeUser(env, 'premium');
  const client = s3ClientFor(s3.config());
  const photo = await fs.readFile(path.join(FIXTURES, 'Canon_40D.jpg'));

  let imageId = '';
  await t.test('session → PUT → complete → processed, variants in the bucket', async (t) => {
    const up = await s3Upload(node.url, user.apiKey, photo, 'Canon_40D.jpg');
    t.match(up.session, {
      method: 'PUT',
      pool_id: pool.id,
      upload_id: /^[0-9a-f-]{36}$/,
      complete_url: `${node.url}/api/v1/uploads/${String(up.session.upload_id)}/complete`,
      headers: { 'content-type': 'image/jpeg' },
    });
    t.ok(
      String(up.session.upload_url).startsWith(`${s3.endpoint}/${s3.bucket}/px/incoming/`),
      'presigned PUT',
    );
    t.equal(up.put, 200);
    t.equal(up.complete.status, 201, JSON.stringify(up.complete.body));
    const body = up.complete.body;
    imageId = String(body.image_uuid);
    t.match(body, { duplicate: false, status: 'pending', size: photo.length, sha256: sha(photo) });
    t.match(
      String(body.url),
      new RegExp(`^${s3.endpoint}/${s3.bucket}/px/original/\\d{4}/\\d{2}/\\d{2}/${imageId}\\.jpg$`),
    );
    const again = await completeUpload(up.session, user.apiKey);
    t.equal(again.status, 201, 'completing twice: same status');
    t.same(again.body, body, 'completing twice: same answer');

    const status = await waitForStatus(node.url, user.apiKey, imageId);
    t.equal(status.status, 'completed');
    const img = (await getJson(`${node.url}/api/v1/images/${imageId}`, user.apiKey)).body;
    t.equal(img.storage_pool_id, pool.id);
    const original = await fetchBytes(String(img.url));
    t.equal(original.status, 200, 'original straight from the bucket');
    t.equal(sha(original.bytes), sha(photo), 'the original is the uploaded bytes');
    t.equal(original.headers.get('content-type'), 'image/jpeg');
    const variants = img.variants as { url: string; format: string; type: string }[];
    t.ok(variants.length >= 4, `${variants.length} variants`);
    for (const v of variants) {
      t.match(v.url, new RegExp(`^${s3.endpoint}/${s3.bucket}/px/variants/`), `${v.type} in the bucket`);
      const r = await fetchBytes(v.url);
      t.equal(r.status, 200, `${v.type} fetchable`);
      t.equal(r.headers.get('content-type'), `image/${v.format}`, `${v.type} Content-Type`);
      t.equal(
        r.headers.get('cache-control'),
        'public, max-age=31536000, immutable',
        `${v.type} Cache-Control`,
      );
      const key = new URL(v.url).pathname.slice(`/${s3.bucket}/`.length);
      const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: key }));
      t.equal(head.ContentType, `image/${v.format}`);
    }
    t.same(await s3.listKeys('px/incoming/'), [], 'the staging object is gone');
    t.same(
      await filesUnder(path.join(env.dataDir, 'pools')),
      [],
      'nothing in any pool directory of the node',
    );
    t.same(await filesUnder(path.join(env.dataDir, 'tmp')), [], 'no temp file left');
    const history = await imageHistory(node.stack.ctx.nats.js, node.stack.ctx.names, imageId);
    t.ok(
      history.length > 0 && history.every((e) => e.event.node_id === '_any'),
      'every event of the image is addressed to _any',
    );
    // Old-style node URLs redirect to the bucket.
    const viaNode = await fetch(`${node.url}/uploads/${String(img.url).split('/px/')[1]}`, {
      redirect: 'manual',
    });
    t.equal(viaNode.status, 302);
    t.equal(viaNode.headers.get('location'), img.url);
    // Usage is charged to the S3 pool.
    const [usage] = await env.sql()<{ used_bytes: string; file_count: string }[]>`
      select used_bytes, file_count from pool_usage where pool_id = ${pool.id}`;
    t.equal(Number(usage?.file_count), 1 + variants.length, 'pool usage counts original + variants');
  });

  await t.test('the same bytes again: 200 duplicate, the new object deleted', async (t) => {
    const up = await s3Upload(node.url, user.apiKey, photo, 'again.jpg');
    t.equal(up.complete.status, 200);
    t.match(up.complete.body, { duplicate: true, image_uuid: imageId });
    t.same(await s3.listKeys('px/incoming/'), []);
    t.equal((await s3.listKeys('px/original/')).length, 1, 'one original in the bucket');
  });

  await t.test('lying clients', async (t) => {
    const free = await makeUser(env, 'free');
    // A session for a small file, then 6 MiB PUT: more than the free plan's 5 MiB max_bytes.
    const big = Buffer.concat([photo.subarray(0, 4096), Buffer.alloc(6 * 1024 * 1024)]);
    const tooBig = await s3Upload(node.url, free.apiKey, big, 'big.jpg', { declaredSize: 50_000 });
    t.equal(tooBig.complete.status, 413, 'bigger than max_bytes');
    t.equal((tooBig.complete.body.error as { code: string }).code, 'file_too_large');
    t.same(await s3.listKeys('px/incoming/'), [], 'the oversized object is deleted');

    const html = await fs.readFile(path.join(HOSTILE, 'page.jpg'));
    const h = await s3Upload(node.url, user.apiKey, html, 'photo.jpg');
    t.equal(h.complete.status, 415, 'HTML instead of a JPEG');
    t.equal((h.complete.body.error as { code: string }).code, 'markup_content');
    t.same(await s3.listKeys('px/incoming/'), [], 'the HTML object is deleted');
    const h2 = await completeUpload(h.session, user.apiKey);
    t.equal(h2.status, 415, 'completing a refused upload again: the same refusal');

    const poly = await fs.readFile(path.join(HOSTILE, 'comment-script.jpg'));
    const p = await s3Upload(node.url, user.apiKey, poly, 'poly.jpg');
    t.equal(p.complete.status, 415, 'a script inside a valid JPEG');
    t.equal((p.complete.body.error as { code: string }).code, 'active_content');

    const trunc = await fs.readFile(path.join(HOSTILE, 'truncated.jpg'));
    const tr = await s3Upload(node.url, user.apiKey, trunc, 'trunc.jpg');
    t.equal(tr.complete.status, 422, 'a truncated JPEG');

    const png = await tiny(2);
    const mismatch = await s3Upload(node.url, user.apiKey, png, 'really-a-png.jpg');
    t.equal(mismatch.complete.status, 415, 'a PNG announced as .jpg');
    t.same(await s3.listKeys('px/incoming/'), [], 'every refused object is deleted');

    const early = await s3Upload(node.url, user.apiKey, photo, 'early.jpg', { put: false, complete: false });
    const missing = await completeUpload(early.session, user.apiKey);
    t.equal(missing.status, 409, 'completion before the PUT');
    t.equal((missing.body.error as { code: string }).code, 'upload_missing');

    const s = await fetch(`${node.url}/api/v1/upload/sessions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${user.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ file_size: 10, filename: 'x.svg' }),
    });
    t.equal(s.status, 400, 'a session for an unsupported type');

    const other = await makeUser(env);
    const stranger = await completeUpload(early.session, other.apiKey);
    t.equal(stranger.status, 404, "someone else's upload");
  });

  await t.test('delete removes every object of the image from the bucket', async (t) => {
    const del = await fetch(`${node.url}/api/v1/images/${imageId}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${user.apiKey}` },
    });
    t.equal(del.status, 202);
    await waitFor('purge', async () => {
      const [row] = await env.sql()`select 1 from images where id = ${imageId}`;
      return row ? null : true;
    });
    t.same(
      (await s3.listKeys('px/')).filter((k) => k.includes(imageId)),
      [],
      'no object of the image is left',
    );
  });
});

t.test('a private S3 pool: URLs go through the node, which redirects to presigned GETs', async (t) => {
  const env = await testEnv(t);
  const s3 = await startS3();
  t.teardown(() => s3.close());
  await s3Pool(env, s3, { name: 'private', private: true });
  // Backups too: the original is read from the bucket (the only S3 pool is also the backup target).
  await settings(env, { thumbnail_avif: false, s3_backup_enabled: true, s3_backup_delay_minutes: 0 });
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const user = await makeUser(env, 'premium');
  const bytes = await tiny(6);
  const up = await s3Upload(node.url, user.apiKey, bytes, 'p.png');
  t.equal(up.complete.status, 201, JSON.stringify(up.complete.body));
  const id = String(up.complete.body.image_uuid);
  await waitForStatus(node.url, user.apiKey, id, ['completed']);
  const img = (await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey)).body;
  const urls = [String(img.url), ...(img.variants as { url: string }[]).map((v) => v.url)];
  t.ok(urls.length >= 3);
  for (const u of urls) {
    t.ok(u.startsWith(`${node.url}/uploads/`), `${u} goes through the node`);
    const r = await fetch(u, { redirect: 'manual' });
    t.equal(r.status, 302);
    const location = r.headers.get('location') ?? '';
    t.match(location, /X-Amz-Signature=/, 'to a presigned URL');
    t.match(r.headers.get('cache-control'), /^private/);
    const got = await fetchBytes(location);
    t.equal(got.status, 200);
  }
  t.equal(
    sha((await fetchBytes(String(img.url))).bytes),
    sha(bytes),
    'following the redirect gives the bytes',
  );
  t.equal(
    (await fetch(`${node.url}/uploads/original/2020/01/01/${'0'.repeat(8)}-0000-4000-8000-000000000000.png`))
      .status,
    404,
  );
  // A process with the API role only (no storage role) answers these URLs too.
  const apiOnly = await startInProcess(env, { roles: ['api'] });
  t.teardown(() => apiOnly.close());
  const rel = String(img.url).slice(`${node.url}/uploads/`.length);
  const viaApi = await fetch(`${apiOnly.url}/uploads/${rel}`, { redirect: 'manual' });
  t.equal(viaApi.status, 302, 'an API-only process redirects as well');
  t.match(viaApi.headers.get('location'), /X-Amz-Signature=/);

  const backup = await waitFor('the backup of an S3-pool image', async () => {
    const r = await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey);
    return r.body.backup_status === 'completed' ? r.body : null;
  });
  const b = (backup.backups as { object_key: string; checksum: string }[])[0];
  t.match(b?.object_key, new RegExp(`^images/\\d{4}/\\d{2}/\\d{2}/${id}\\.png$`));
  t.equal(b?.checksum, sha(bytes), 'the backup holds the original bytes');
  t.same(await filesUnder(path.join(env.dataDir, 'tmp')), [], 'no temp file left');
});

t.test('uploads never completed are removed after their lifetime', async (t) => {
  const env = await testEnv(t);
  const s3 = await startS3();
  t.teardown(() => s3.close());
  await s3Pool(env, s3, { name: 'bucket' });
  const node = await startInProcess(env, { extra: { S3_UPLOAD_TTL_SECONDS: '2' } });
  t.teardown(() => node.close());
  const user = await makeUser(env, 'premium');
  const up = await s3Upload(node.url, user.apiKey, await tiny(4), 'never.png', { complete: false });
  t.equal(up.put, 200);
  t.equal((await s3.listKeys('incoming/')).length, 1, 'the object is in the bucket');
  await waitFor('the sweeper', async () => (await s3.listKeys('incoming/')).length === 0, 20_000);
  // The sweeper deletes the object first and then marks the row: wait for the second step too.
  const status = async () => {
    const [row] = await env.sql()<{ status: string }[]>`
      select status from s3_uploads where upload_id = ${String(up.session.upload_id)}`;
    return row?.status;
  };
  await waitFor('the row marked', async () => (await status()) !== 'pending', 20_000);
  t.equal(await status(), 'expired');
  const late = await completeUpload(up.session, user.apiKey);
  t.equal(late.status, 410, 'completing after the lifetime');
  t.same(await s3.listKeys(), [], 'nothing left in the bucket');
});

t.test('50 images move local → S3 → local: every URL works, every byte identical', async (t) => {
  const env = await testEnv(t);
  const s3 = await startS3();
  t.teardown(() => s3.close());
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const diskDir = path.join(env.dataDir, 'pools', 'disk');
  const disk = await addPool(env.sql(), {
    name: 'disk',
    storage_type: 'local',
    storage_tier: 'hot',
    base_path: diskDir,
    public_base_url: url,
    upload_api_url: `${url}/api/internal/upload`,
    node_id: 'local',
  });
  const bucket = await s3Pool(env, s3, { name: 'bucket', tier: 'cold' });
  await settings(env, {
    thumbnail_avif: false,
    upload_rate_limit_per_minute: 100_000,
    upload_user_rate_limit_per_minute: 100_000,
  });
  const node = await startInProcess(env, { extra: { APP_PORT: String(port), PUBLIC_DOMAIN: url } });
  t.teardown(() => node.close());
  const user = await makeUser(env, 'premium');
  const N = 50;
  const ids: string[] = [];
  for (let i = 0; i < N; i++) {
    const bytes = await tiny(i);
    const r = await uploadFile(node.url, user.apiKey, bytes, i % 2 === 0 ? `m${i}.png` : `m${i}.jpg`);
    t.equal(r.status, 201);
    ids.push(String(r.body.image_uuid));
  }
  for (const id of ids) await waitForStatus(node.url, user.apiKey, id, ['completed']);

  /** Every presented URL of every image with the SHA-256 of what it serves. */
  const snapshot = async () => {
    const out = new Map<string, { url: string; sha256: string }[]>();
    for (const id of ids) {
      const img = (await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey)).body;
      const urls = [String(img.url), ...(img.variants as { url: string }[]).map((v) => v.url)];
      const files = [];
      for (const u of urls) {
        const r = await fetchBytes(u);
        if (r.status !== 200) throw new Error(`${u}: ${r.status}`);
        files.push({ url: u, sha256: sha(r.bytes) });
      }
      out.set(id, files);
    }
    return out;
  };
  const before = await snapshot();
  const hashes = (s: Map<string, { sha256: string }[]>) =>
    [...s.entries()].map(([id, f]) => [id, f.map((x) => x.sha256)]);

  const moveAll = async (from: Pool, to: Pool) => {
    const m = await startMove(node.stack.ctx, { fromPoolId: from.id, toPoolId: to.id });
    t.equal(m.count, N, `${N} moves requested ${from.name} → ${to.name}`);
    await waitFor(
      `every image in ${to.name} and ${from.name} cleaned up`,
      async () => {
        const [r] = await env.sql()<{ n: string }[]>`
          select count(*) as n from images where storage_pool_id = ${to.id} and last_cleanup_move_id = ${m.move_id}`;
        return Number(r?.n) === N;
      },
      180_000,
    );
    const failed = await env.sql()`select 1 from images where moving_to_pool_id is not null`;
    t.equal(failed.length, 0, 'no move left open');
  };

  await moveAll(disk, bucket);
  const inS3 = await snapshot();
  t.same(hashes(inS3), hashes(before), 'in S3: every byte identical');
  t.ok(
    [...inS3.values()].flat().every((f) => f.url.startsWith(`${s3.endpoint}/${s3.bucket}/`)),
    'URLs point at the bucket',
  );
  t.same(await filesUnder(path.join(diskDir, 'original')), [], 'no original left on disk');
  t.same(await filesUnder(path.join(diskDir, 'variants')), [], 'no variant left on disk');
  // The node URLs handed out before the move still work (a redirect to the bucket).
  for (const [id, files] of before) {
    for (const f of files) {
      const r = await fetchBytes(f.url);
      t.equal(r.status, 200, `old URL of ${id}`);
      if (sha(r.bytes) !== f.sha256) t.fail(`old URL ${f.url} serves other bytes`);
    }
  }
  const usage = async (p: Pool) =>
    Number(
      (
        await env.sql()<{ used_bytes: string }[]>`select used_bytes from pool_usage where pool_id = ${p.id}`
      )[0]?.used_bytes ?? 0,
    );
  const total = await usage(bucket);
  t.ok(total > 0, 'the bucket pool is charged');
  t.equal(await usage(disk), 0, 'the disk pool got its bytes back');

  await moveAll(bucket, disk);
  const back = await snapshot();
  t.same(hashes(back), hashes(before), 'back on disk: every byte identical');
  t.same(
    [...back.entries()].map(([id, f]) => [id, f.map((x) => x.url)]),
    [...before.entries()].map(([id, f]) => [id, f.map((x) => x.url)]),
    'the URLs are the original ones again',
  );
  t.same(
    (await s3.listKeys()).filter((k) => k.startsWith('original/') || k.startsWith('variants/')),
    [],
    'nothing left in the bucket',
  );
  t.equal(await usage(bucket), 0, 'the bucket pool got its bytes back');
  t.equal(await usage(disk), total, 'the disk pool is charged the same bytes');
  t.same(await filesUnder(path.join(env.dataDir, 'tmp')), [], 'no temp file left');
});
