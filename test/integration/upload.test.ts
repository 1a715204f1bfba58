// Direct-to-storage uploads against a real stack (NATS, Postgres, files on disk).
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { signUploadToken } from '../../shared/security/upload-token.js';
import { hostileCases } from '../fixtures/hostile/generate.js';
import {
  FIXTURES,
  getJson,
  makeUser,
  startInProcess,
  testEnv,
  uploadFile,
  waitFor,
  waitForStatus,
} from '../helpers/stack.js';

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else out.push(path.relative(dir, p));
    }
  };
  await walk(dir);
  return out;
}

t.test('upload flow, dedupe, read API, serving, every status code', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const api = node.url;
  const user = await makeUser(env, 'premium_max');
  const other = await makeUser(env, 'premium');
  const photo = await fs.readFile(path.join(FIXTURES, 'Canon_40D.jpg'));
  const poolDir = path.join(env.dataDir, 'pools', 'default');
  // The per-IP limit is shared by every request of this test; the rate-limit test below lowers the per-user one.
  await env.sql()`insert into settings (key, value) values ('upload_rate_limit_per_minute', '100000')`;

  await t.test('sessions', async (t) => {
    const post = (body: unknown, key?: string) =>
      fetch(`${api}/api/v1/upload/sessions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...(key ? { 'x-api-key': key } : {}) },
        body: JSON.stringify(body),
      });
    const ok = await post({ file_size: photo.length, filename: 'a.jpg' }, user.apiKey);
    t.equal(ok.status, 201);
    const s = (await ok.json()) as Record<string, unknown>;
    t.match(s, {
      upload_url: `${api}/api/internal/upload`,
      token: String,
      pool_id: String,
      expires_at: String,
      max_bytes: 100 * 1024 * 1024,
    });
    t.equal(ok.headers.get('x-content-type-options'), 'nosniff');
    t.equal((await post({}, user.apiKey)).status, 400, 'file_size required');
    t.equal((await post({ file_size: 0 }, user.apiKey)).status, 400, 'file_size > 0');
    const noKey = await post({ file_size: 10 });
    t.equal(noKey.status, 401);
    t.match(await noKey.json(), { error: { code: 'missing_api_key', message: String } });
    t.equal((await post({ file_size: 10 }, 'pfx_nope_nope')).status, 401, 'unknown key');
    const free = await makeUser(env, 'free');
    const big = await post({ file_size: 6 * 1024 * 1024 }, free.apiKey);
    t.equal(big.status, 413);
    t.match(await big.json(), { error: { code: 'quota_exceeded' } });
    await env.sql()`insert into settings (key, value) values ('direct_upload_enabled', 'false')`;
    await waitFor(
      'setting to apply',
      async () => (await post({ file_size: 10 }, user.apiKey)).status === 403,
    );
    await env.sql()`delete from settings where key = 'direct_upload_enabled'`;
    await env.sql()`update storage_pools set is_active = false`;
    await waitFor('no pool', async () => (await post({ file_size: 10 }, user.apiKey)).status === 503);
    await env.sql()`update storage_pools set is_active = true`;
    await waitFor('pool back', async () => (await post({ file_size: 10 }, user.apiKey)).status === 201);
  });

  let imageId = '';
  await t.test('upload, status, read API, serving', async (t) => {
    const r = await uploadFile(api, user.apiKey, photo, 'Canon 40D.jpg');
    t.equal(r.status, 201, JSON.stringify(r.body));
    t.match(r.body, {
      image_uuid: String,
      duplicate: false,
      status: 'pending',
      variants: [],
      size: photo.length,
      width: Number,
      height: Number,
    });
    t.match(String(r.body.view_url), /\/i\/[A-Za-z0-9]{10}$/);
    t.match(String(r.body.url), /\/uploads\/original\/\d{4}\/\d{2}\/\d{2}\/[0-9a-f-]{36}\.jpg$/);
    imageId = String(r.body.image_uuid);

    const img = await getJson(`${api}/api/v1/images/${imageId}`, user.apiKey);
    t.equal(img.status, 200, 'readable right after the upload answered');
    t.equal(
      (await getJson(`${api}/api/v1/images/${imageId}`, other.apiKey)).status,
      404,
      "another user's image is 404",
    );
    t.equal(
      (await getJson(`${api}/api/v1/images/00000000-0000-4000-8000-000000000000`, user.apiKey)).status,
      404,
    );

    const original = await fetch(String(r.body.url));
    t.equal(original.status, 200);
    t.equal(original.headers.get('content-type'), 'image/jpeg');
    t.equal(original.headers.get('cache-control'), 'public, max-age=31536000, immutable');
    t.equal(original.headers.get('x-content-type-options'), 'nosniff');
    t.same(Buffer.from(await original.arrayBuffer()), photo, 'served bytes are the uploaded bytes');
    const etag = original.headers.get('etag') ?? '';
    t.equal((await fetch(String(r.body.url), { headers: { 'if-none-match': etag } })).status, 304);
    const ranged = await fetch(String(r.body.url), { headers: { range: 'bytes=0-9' } });
    t.equal(ranged.status, 206);
    t.same(Buffer.from(await ranged.arrayBuffer()), photo.subarray(0, 10));
    for (const bad of [
      '/uploads/../secrets.json',
      '/uploads/original/..%2f..%2fsecrets.json',
      '/uploads/.tmp/x.part',
      '/uploads/original/x.txt',
    ]) {
      t.equal((await fetch(`${api}${bad}`)).status, 404, `${bad} is 404`);
    }

    const done = await waitForStatus(api, user.apiKey, imageId);
    t.equal(done.status, 'completed');
    const full = await getJson(`${api}/api/v1/images/${imageId}`, user.apiKey);
    const variants = full.body.variants as { url: string; type: string }[];
    t.ok(variants.length >= 6, `${variants.length} variants listed`);
    for (const v of variants) t.equal((await fetch(v.url)).status, 200, `${v.type} is served`);
    t.match(full.body.metadata, { make: 'Canon', model: 'Canon EOS 40D' });

    const view = await fetch(String(r.body.view_url));
    t.equal(view.status, 200);
    t.match(await view.text(), /<picture>[\s\S]*image\/avif[\s\S]*image\/webp/);

    const list = await getJson(`${api}/api/v1/images?limit=1`, user.apiKey);
    t.equal((list.body.images as unknown[]).length, 1);
  });

  await t.test('dedupe: same bytes again → 200 duplicate, concurrent → one image', async (t) => {
    const again = await uploadFile(api, user.apiKey, photo, 'again.jpg');
    t.equal(again.status, 200);
    t.match(again.body, { duplicate: true, image_uuid: imageId });
    const other40 = await fs.readFile(path.join(FIXTURES, 'Nikon_D70.jpg'));
    const results = await Promise.all([1, 2, 3, 4].map(() => uploadFile(api, user.apiKey, other40, 'n.jpg')));
    const ids = new Set(results.map((r) => String(r.body.image_uuid)).filter((x) => x !== 'undefined'));
    t.equal(results.filter((r) => r.status === 201).length, 1, 'exactly one upload created the image');
    t.ok(
      results.every((r) => r.status === 201 || r.status === 200 || r.status === 409),
      results.map((r) => r.status).join(','),
    );
    t.equal(ids.size, 1, 'every answer names the same image');
    const originals = (await filesUnder(poolDir)).filter((f) => f.startsWith('original/'));
    t.equal(originals.length, 2, 'one original file per distinct image');
  });

  await t.test('tokens: missing, malformed, forged, expired, other pool → 401', async (t) => {
    const form = () => {
      const f = new FormData();
      f.append('file', new Blob([new Uint8Array(photo)]), 'x.jpg');
      return f;
    };
    const up = (auth?: string) =>
      fetch(`${api}/api/internal/upload`, {
        method: 'POST',
        headers: auth ? { authorization: auth } : {},
        body: form(),
      });
    const [pool] = await env.sql()<{ id: string }[]>`select id from storage_pools limit 1`;
    const good = signUploadToken(env.secrets.UPLOAD_TOKEN_SECRET, {
      user_id: user.id,
      pool_id: pool?.id ?? '',
      max_bytes: 1e6,
    }).token;
    const cases: [string, string | undefined, string][] = [
      ['missing', undefined, 'token_missing'],
      ['malformed', 'Bearer abc', 'token_malformed'],
      [
        'forged',
        `Bearer ${good.slice(0, -10)}${good.at(-10) === 'A' ? 'B' : 'A'}${good.slice(-9)}`,
        'token_bad_signature',
      ],
      ['truncated', `Bearer ${good.slice(0, 20)}`, 'token_malformed'],
      [
        'expired',
        `Bearer ${signUploadToken(env.secrets.UPLOAD_TOKEN_SECRET, { user_id: user.id, pool_id: pool?.id ?? '', max_bytes: 1e6, exp: 1000 }).token}`,
        'token_expired',
      ],
      [
        'other pool',
        `Bearer ${signUploadToken(env.secrets.UPLOAD_TOKEN_SECRET, { user_id: user.id, pool_id: '11111111-1111-4111-8111-111111111111', max_bytes: 1e6 }).token}`,
        'token_wrong_pool',
      ],
      [
        'other secret',
        `Bearer ${signUploadToken('another-secret-of-16+', { user_id: user.id, pool_id: pool?.id ?? '', max_bytes: 1e6 }).token}`,
        'token_bad_signature',
      ],
    ];
    for (const [name, auth, code] of cases) {
      const r = await up(auth);
      t.equal(r.status, 401, name);
      t.match(await r.json(), { error: { code } }, name);
    }
    t.equal((await fetch(`${api}/api/internal/upload`, { method: 'HEAD' })).status, 204);
    const pre = await fetch(`${api}/api/internal/upload`, {
      method: 'OPTIONS',
      headers: { origin: 'https://app.example', 'access-control-request-method': 'POST' },
    });
    t.equal(pre.status, 204);
    t.equal(pre.headers.get('access-control-allow-origin'), '*');
    t.match(pre.headers.get('access-control-allow-headers') ?? '', /authorization/);
  });

  await t.test('size limits: free user 6 MB → 413, nothing left behind', async (t) => {
    const free = await makeUser(env, 'free');
    const big = await sharp({
      create: {
        width: 1600,
        height: 1600,
        channels: 3,
        background: '#000',
        noise: { type: 'gaussian', mean: 128, sigma: 60 },
      },
    })
      .png({ compressionLevel: 0 })
      .toBuffer();
    t.ok(big.length > 6 * 1024 * 1024, `${big.length} bytes`);
    // Variants of earlier uploads appear asynchronously: compare originals and temp files.
    const stored = async () => (await filesUnder(poolDir)).filter((f) => !f.startsWith('variants/'));
    const before = await stored();
    // The session refuses it outright; a token for a smaller size is enforced while streaming.
    t.equal((await uploadFile(api, free.apiKey, big, 'big.png')).status, 413);
    const r = await uploadFile(api, free.apiKey, big, 'big.png', { sessionSize: 1000 });
    t.equal(r.status, 413);
    t.match(r.body, { error: { code: 'file_too_large' } });
    t.same(await stored(), before, 'no file left, not even a temp file');
  });

  await t.test('hostile corpus: 4xx JSON, nothing on disk, service keeps serving', async (t) => {
    const hostile = await makeUser(env, 'premium_max');
    for (const c of hostileCases()) {
      const bytes = typeof c.bytes === 'function' ? c.bytes() : c.bytes;
      // Variants of earlier (accepted) uploads appear asynchronously: compare originals and temp files.
      const stored = async () => (await filesUnder(poolDir)).filter((f) => !f.startsWith('variants/'));
      const before = await stored();
      const r = await uploadFile(api, hostile.apiKey, bytes, c.filename);
      if (c.expect === 'reject') {
        t.ok(
          r.status >= 400 && r.status < 500,
          `${c.name}: ${r.status} ${JSON.stringify(r.body).slice(0, 120)}`,
        );
        t.match(r.body, { error: { code: String, message: String } });
        t.same(await stored(), before, `${c.name}: nothing stored`);
      } else {
        t.ok(r.status === 201 || r.status === 200, `${c.name}: accepted (${r.status})`);
      }
    }
    t.same(await filesUnder(path.join(poolDir, '.tmp')), [], 'no temp files left');
    t.equal((await fetch(`${api}/health`)).status, 200, 'still serving');
  });

  await t.test('multipart abuse: no file, two files, wrong field, not multipart', async (t) => {
    const s = (await (
      await fetch(`${api}/api/v1/upload/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${user.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ file_size: 1000 }),
      })
    ).json()) as { token: string };
    const send = (f: FormData | string, ct?: string) =>
      fetch(`${api}/api/internal/upload`, {
        method: 'POST',
        headers: { authorization: `Bearer ${s.token}`, ...(ct ? { 'content-type': ct } : {}) },
        body: f,
      });
    const two = new FormData();
    two.append('file', new Blob([new Uint8Array(photo.subarray(0, 500))]), 'a.jpg');
    two.append('file', new Blob([new Uint8Array(photo.subarray(0, 500))]), 'b.jpg');
    t.equal((await send(two)).status, 400, 'two file parts');
    const none = new FormData();
    none.append('x', 'y');
    t.equal((await send(none)).status, 400, 'no file part');
    const wrong = new FormData();
    wrong.append('image', new Blob([new Uint8Array(photo.subarray(0, 500))]), 'a.jpg');
    t.equal((await send(wrong)).status, 400, 'wrong field name');
    t.equal((await send('hello', 'text/plain')).status, 415, 'not multipart');
    t.equal((await send('--x\r\n', 'multipart/form-data')).status, 400, 'missing boundary');
  });

  await t.test('rate limits: 429 with Retry-After and X-RateLimit headers', async (t) => {
    await env.sql()`insert into settings (key, value) values ('upload_user_rate_limit_per_minute', '2') on conflict (key) do update set value = excluded.value`;
    const rl = await makeUser(env, 'premium');
    await new Promise((r) => setTimeout(r, 2_100)); // settings cache
    const statuses: number[] = [];
    let last: Headers | null = null;
    for (let i = 0; i < 4; i++) {
      const img = await sharp({
        create: { width: 8, height: 8, channels: 3, background: { r: i * 40, g: 3, b: 4 } },
      })
        .png()
        .toBuffer();
      const r = await uploadFile(api, rl.apiKey, img, `r${i}.png`);
      statuses.push(r.status);
      last = r.headers;
      t.ok(r.headers.get('x-ratelimit-limit'), 'limit header on every response');
    }
    t.same(statuses.slice(0, 2), [201, 201]);
    t.equal(statuses[3], 429);
    t.ok(Number(last?.get('retry-after')) > 0, 'Retry-After');
    t.equal(last?.get('x-ratelimit-remaining'), '0');
  });
});
