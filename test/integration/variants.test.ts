// The variant pipeline end to end on real camera photos: every outcome the plan allows, orientation,
// metadata, GPS stripped, broken files never stuck, and a worker killed mid-batch.
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import {
  FIXTURES,
  getJson,
  makeUser,
  spawnNode,
  startInProcess,
  testEnv,
  uploadFile,
  waitFor,
  waitForStatus,
} from '../helpers/stack.js';

const jpgs = async (dir: string) =>
  (await fs.readdir(dir)).filter((f) => f.toLowerCase().endsWith('.jpg')).map((f) => path.join(dir, f));

interface Variant {
  type: string;
  format: string;
  size: string;
  width: number;
  height: number;
  url: string;
}

t.test('camera photos, orientation, GPS, plans, broken files', async (t) => {
  const env = await testEnv(t);
  // avif_max_megapixels 2: the camera photos (up to 8 MP) get a capped full-size AVIF, as a 50 MP one
  // would at the default 24 MP
  await env.sql()`insert into settings (key, value) values ('upload_rate_limit_per_minute', '100000'), ('upload_user_rate_limit_per_minute', '100000'), ('job_queue_worker_count', '2'), ('avif_max_megapixels', '2')`;
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const max = await makeUser(env, 'premium_max');
  const premium = await makeUser(env, 'premium');
  const free = await makeUser(env, 'free');
  const poolDir = path.join(env.dataDir, 'pools', 'default');

  const upload = async (user: { apiKey: string }, file: string) => {
    const r = await uploadFile(node.url, user.apiKey, await fs.readFile(file), path.basename(file));
    return r;
  };
  const variantsOf = async (user: { apiKey: string }, id: string) =>
    ((await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey)).body.variants ?? []) as Variant[];

  await t.test('every camera photo completes with the variants its plan allows', async (t) => {
    const files = await jpgs(FIXTURES);
    const ids: [string, string][] = [];
    for (const f of files) {
      const r = await upload(max, f);
      if (r.status === 201 || r.status === 200) ids.push([f, String(r.body.image_uuid)]);
      else if (!f.endsWith('corrupted.jpg'))
        t.fail(`${path.basename(f)} refused: ${r.status} ${JSON.stringify(r.body)}`);
    }
    t.ok(ids.length >= files.length - 1, `${ids.length} of ${files.length} accepted`);
    for (const [f, id] of ids) {
      const s = await waitForStatus(node.url, max.apiKey, id, ['completed', 'failed'], 120_000);
      t.equal(s.status, 'completed', `${path.basename(f)} completed`);
      const v = await variantsOf(max, id);
      const types = v.map((x) => x.type).sort();
      const img = (await getJson(`${node.url}/api/v1/images/${id}`, max.apiKey)).body as {
        width: number;
        height: number;
      };
      const expected = [
        'medium_avif',
        'medium_jpeg',
        'medium_webp',
        'small_avif',
        'small_jpeg',
        'small_webp',
        'webp',
      ];
      if (img.width > 64 || img.height > 64) expected.push('avif');
      t.same(types, expected.sort(), `${path.basename(f)}: all premium_max variants`);
    }
  });

  await t.test('plans: free gets original-format thumbnails only, premium adds WebP', async (t) => {
    const f = path.join(FIXTURES, 'gps', 'DSCN0010.jpg');
    const rf = await upload(free, f);
    const rp = await upload(premium, f);
    await waitForStatus(node.url, free.apiKey, String(rf.body.image_uuid));
    await waitForStatus(node.url, premium.apiKey, String(rp.body.image_uuid));
    t.same((await variantsOf(free, String(rf.body.image_uuid))).map((v) => v.type).sort(), [
      'medium_jpeg',
      'small_jpeg',
    ]);
    t.same((await variantsOf(premium, String(rp.body.image_uuid))).map((v) => v.type).sort(), [
      'medium_jpeg',
      'medium_webp',
      'small_jpeg',
      'small_webp',
      'webp',
    ]);
  });

  await t.test('full-size AVIF above avif_max_megapixels: downscaled, its real size recorded', async (t) => {
    const make = (width: number, height: number) =>
      sharp(path.join(FIXTURES, 'mobile', 'jolla.jpg'))
        .resize(width, height, { fit: 'fill' })
        .jpeg()
        .toBuffer();
    for (const [width, height, avif] of [
      [2400, 1800, '1632x1224'], // 4.3 MP: the largest 4:3 size within 2 MP
      [1200, 900, '1200x900'], // 1.1 MP: full size
    ] as const) {
      const r = await uploadFile(node.url, max.apiKey, await make(width, height), `cap-${width}.jpg`);
      const id = String(r.body.image_uuid);
      t.equal((await waitForStatus(node.url, max.apiKey, id)).status, 'completed');
      const v = await variantsOf(max, id);
      const full = (format: string) => v.find((x) => x.size === 'full' && x.format === format);
      t.equal(
        `${full('avif')?.width}x${full('avif')?.height}`,
        avif,
        `${width}×${height}: AVIF in the read model`,
      );
      t.equal(`${full('webp')?.width}x${full('webp')?.height}`, `${width}x${height}`, 'WebP at full size');
      const bytes = Buffer.from(await (await fetch(full('avif')?.url ?? '')).arrayBuffer());
      const m = await sharp(bytes).metadata();
      t.equal(`${m.width}x${m.height}`, avif, `${width}×${height}: the AVIF file is that size`);
    }
  });

  await t.test('all 8 EXIF orientations give upright thumbnails', async (t) => {
    for (const kind of ['landscape', 'portrait'] as const) {
      for (let i = 1; i <= 8; i++) {
        const r = await upload(max, path.join(FIXTURES, 'orientation', `${kind}_${i}.jpg`));
        const id = String(r.body.image_uuid);
        t.equal((await waitForStatus(node.url, max.apiKey, id)).status, 'completed');
        const img = (await getJson(`${node.url}/api/v1/images/${id}`, max.apiKey)).body as {
          width: number;
          height: number;
        };
        t.equal(img.width > img.height, kind === 'landscape', `${kind}_${i}: image record is rotated`);
        for (const v of await variantsOf(max, id)) {
          const bytes = Buffer.from(await (await fetch(v.url)).arrayBuffer());
          const m = await sharp(bytes).metadata();
          t.equal(
            (m.width ?? 0) > (m.height ?? 0),
            kind === 'landscape',
            `${kind}_${i} ${v.type} is ${kind}`,
          );
          t.notOk(m.orientation && m.orientation !== 1, `${kind}_${i} ${v.type} has no orientation tag left`);
        }
      }
    }
  });

  await t.test('GPS lands in image_metadata and in no variant file', async (t) => {
    for (const f of await jpgs(path.join(FIXTURES, 'gps'))) {
      const r = await upload(max, f);
      const id = String(r.body.image_uuid);
      await waitForStatus(node.url, max.apiKey, id);
      const body = (await getJson(`${node.url}/api/v1/images/${id}`, max.apiKey)).body as {
        metadata: { gps: { latitude: number; longitude: number } | null };
      };
      t.ok(
        body.metadata.gps &&
          Number.isFinite(body.metadata.gps.latitude) &&
          Number.isFinite(body.metadata.gps.longitude),
        `${path.basename(f)} has GPS`,
      );
      for (const v of await variantsOf(max, id)) {
        const bytes = Buffer.from(await (await fetch(v.url)).arrayBuffer());
        const m = await sharp(bytes).metadata();
        t.notOk(m.exif, `${path.basename(f)} ${v.type}: no EXIF`);
        t.notOk(m.xmp, `${path.basename(f)} ${v.type}: no XMP`);
        t.notOk(
          bytes.includes(Buffer.from('GPS')) && bytes.includes(Buffer.from('Exif\0\0')),
          `${v.type}: no GPS block`,
        );
      }
    }
  });

  await t.test('broken files end completed or failed, never stuck; the worker goes on', async (t) => {
    const files = [...(await jpgs(path.join(FIXTURES, 'invalid'))), path.join(FIXTURES, 'corrupted.jpg')];
    for (const f of files) {
      const r = await upload(max, f);
      if (r.status >= 400) {
        t.ok(r.status < 500, `${path.basename(f)} refused at upload with ${r.status}`);
        continue;
      }
      const s = await waitForStatus(
        node.url,
        max.apiKey,
        String(r.body.image_uuid),
        ['completed', 'failed'],
        120_000,
      );
      t.ok(
        ['completed', 'failed'].includes(String(s.status)),
        `${path.basename(f)}: ${String(s.status)} ${String(s.reason ?? '')}`,
      );
      if (s.status === 'failed') t.ok(s.reason, 'failed with a readable reason');
    }
    const next = await upload(max, path.join(FIXTURES, 'Nikon_D70.jpg'));
    t.equal(
      (await waitForStatus(node.url, max.apiKey, String(next.body.image_uuid))).status,
      'completed',
      'the next image still completes',
    );
  });

  const leftovers = (await fs.readdir(poolDir, { recursive: true })).filter(
    (f) => String(f) !== '.tmp' && /\.tmp$|\.part$/.test(String(f)),
  );
  t.same(leftovers, [], 'no temp files left anywhere in the pool');
});

t.test(
  'worker killed (kill -9) while processing 20 images: all completed, one row per variant',
  async (t) => {
    const env = await testEnv(t);
    await env.sql()`insert into settings (key, value) values ('upload_rate_limit_per_minute', '100000'), ('upload_user_rate_limit_per_minute', '100000'), ('job_queue_worker_count', '2')`;
    const api = await spawnNode(env, { roles: ['api', 'storage', 'projector'] });
    t.teardown(() => api.stop());
    let worker = await spawnNode(env, { roles: ['worker'] });
    const user = await makeUser(env, 'premium_max');
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const img = await sharp({
        create: {
          width: 1200 + i,
          height: 900,
          channels: 3,
          background: '#000',
          noise: { type: 'gaussian', mean: 120, sigma: 40 },
        },
      })
        .jpeg({ quality: 85 })
        .toBuffer();
      const r = await uploadFile(api.url, user.apiKey, img, `k${i}.jpg`);
      t.equal(r.status, 201);
      ids.push(String(r.body.image_uuid));
    }
    await waitFor('some images to be processing', async () => {
      const [row] = await env.sql()<
        { n: number }[]
      >`select count(*)::int as n from images where status in ('processing', 'completed')`;
      return (row?.n ?? 0) >= 2;
    });
    worker.kill9();
    await worker.exited;
    const [mid] = await env.sql()<
      { n: number }[]
    >`select count(*)::int as n from images where status = 'completed'`;
    t.ok((mid?.n ?? 0) < 20, `killed with ${mid?.n} of 20 completed`);
    worker = await spawnNode(env, { roles: ['worker'] });
    t.teardown(() => worker.stop());
    for (const id of ids)
      t.equal(
        (await waitForStatus(api.url, user.apiKey, id, ['completed', 'failed'], 240_000)).status,
        'completed',
      );
    const rows = await env.sql()<
      { image_id: string; n: number }[]
    >`select image_id, count(*)::int as n from image_variants group by image_id`;
    t.equal(rows.length, 20);
    for (const r of rows) t.equal(r.n, 8, 'one row per variant type (8 for premium_max)');
    const dupes =
      await env.sql()`select image_id, variant_type, count(*) from image_variants group by 1, 2 having count(*) > 1`;
    t.equal(dupes.length, 0, 'no duplicate variant rows');
  },
);
