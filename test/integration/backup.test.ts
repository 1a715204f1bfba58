// S3 backups and the delete flow against a real S3 protocol server (s3rver).
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { GetObjectCommand, HeadObjectCommand } from '@aws-sdk/client-s3';
import { addPool } from '../../shared/pools.js';
import { s3ClientFor } from '../../shared/s3/client.js';
import { imageHistory } from '../../services/ops/events.js';
import { startS3, type S3Harness } from '../helpers/s3.js';
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
  type TestEnv,
} from '../helpers/stack.js';

async function s3Pool(
  env: TestEnv,
  s3: S3Harness,
  opts: { name: string; backupTarget?: boolean; secret?: string; accessKey?: string },
) {
  return addPool(env.sql(), {
    name: opts.name,
    storage_type: 's3',
    storage_tier: 'cold',
    public_base_url: `${s3.endpoint}/${s3.bucket}`,
    upload_api_url: null,
    node_id: '_any',
    is_backup_target: opts.backupTarget ?? true,
    is_active: true,
    s3_bucket: s3.bucket,
    s3_region: 'us-east-1',
    s3_endpoint: s3.endpoint,
    s3_access_key: opts.accessKey ?? s3.accessKey,
    s3_secret_key: opts.secret ?? s3.secretKey,
    s3_force_path_style: true,
  });
}

async function setSetting(env: TestEnv, key: string, value: unknown) {
  await env.sql()`insert into settings (key, value) values (${key}, ${env.sql().json(value as never)})
                  on conflict (key) do update set value = excluded.value`;
}

const tinyImage = (i: number) =>
  sharp({
    create: {
      width: 16 + (i % 7),
      height: 12,
      channels: 3,
      background: { r: i % 255, g: (i * 7) % 255, b: 99 },
    },
  })
    .png()
    .toBuffer();

t.test(
  'immediate backups: 20 uploads → 20 objects with keys, sizes, types, checksums; delete removes everything',
  async (t) => {
    const env = await testEnv(t);
    const s3 = await startS3();
    t.teardown(() => s3.close());
    await setSetting(env, 's3_backup_enabled', true);
    await setSetting(env, 's3_backup_delay_minutes', 0);
    // The stack before the S3 pool: it creates the default local pool on a first start without pools.
    const node = await startInProcess(env);
    t.teardown(() => node.close());
    await s3Pool(env, s3, { name: 'backup' });
    const user = await makeUser(env, 'premium');
    const ids: string[] = [];
    const bodies = new Map<string, Buffer>();
    for (let i = 0; i < 20; i++) {
      const bytes = i === 0 ? await fs.readFile(path.join(FIXTURES, 'Canon_40D.jpg')) : await tinyImage(i);
      const r = await uploadFile(node.url, user.apiKey, bytes, i === 0 ? 'c.jpg' : `i${i}.png`);
      t.equal(r.status, 201);
      ids.push(String(r.body.image_uuid));
      bodies.set(String(r.body.image_uuid), bytes);
    }
    for (const id of ids) {
      await waitFor(
        `backup of ${id}`,
        async () => {
          const r = await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey);
          return r.body.backup_status === 'completed' ? r : null;
        },
        60_000,
      );
    }
    const keys = await s3.listKeys('images/');
    t.equal(keys.length, 20, '20 objects, no duplicates');
    const client = s3ClientFor(s3.config());
    for (const id of ids) {
      const img = await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey);
      const b = (
        img.body.backups as { object_key: string; size: number; checksum: string; status: string }[]
      )[0];
      t.match(b?.object_key, new RegExp(`^images/\\d{4}/\\d{2}/\\d{2}/${id}\\.(jpg|png)$`));
      const head = await client.send(new HeadObjectCommand({ Bucket: s3.bucket, Key: b?.object_key }));
      const bytes = bodies.get(id) ?? Buffer.alloc(0);
      t.equal(head.ContentLength, bytes.length);
      t.equal(head.ContentType, String(img.body.mime));
      t.ok(head.Metadata?.['original-path']?.startsWith('original/'), 'original-path metadata');
      t.ok(head.Metadata?.['upload-source'], 'upload-source metadata');
      const got = await client.send(new GetObjectCommand({ Bucket: s3.bucket, Key: b?.object_key }));
      const body = Buffer.from(await got.Body!.transformToByteArray());
      t.equal(createHash('sha256').update(body).digest('hex'), b?.checksum, 'checksum matches the object');
    }

    // Delete flow: files, S3 object, then rows; every step in the history.
    const victim = ids[0] ?? '';
    const del = await fetch(`${node.url}/api/v1/images/${victim}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${user.apiKey}` },
    });
    t.equal(del.status, 202);
    t.equal(
      (await getJson(`${node.url}/api/v1/images/${victim}`, user.apiKey)).status,
      404,
      'gone from the API at once',
    );
    await waitFor('purge', async () => {
      const [row] = await env.sql()`select 1 from images where id = ${victim}`;
      return row ? null : true;
    });
    t.equal((await s3.listKeys('images/')).length, 19, 'its backup object is deleted');
    const poolDir = path.join(env.dataDir, 'pools', 'default');
    const left = await fs.readdir(poolDir, { recursive: true });
    t.notOk(
      left.some((f) => String(f).includes(victim)),
      'no file of the image is left',
    );
    const history = (await imageHistory(node.stack.ctx.nats.js, node.stack.ctx.names, victim)).map(
      (e) => e.event.type,
    );
    for (const step of [
      'ImageStored',
      'BackupCompleted',
      'ImageDeleted',
      'ImageFilesDeleted',
      'BackupDeleted',
      'ImagePurged',
    ])
      t.ok(history.includes(step as never), `history has ${step}`);
  },
);

t.test(
  'S3 down for a while: backups retry and complete, no duplicates; wrong credentials → failed',
  async (t) => {
    const env = await testEnv(t);
    const s3 = await startS3();
    t.teardown(() => s3.close());
    await setSetting(env, 's3_backup_enabled', true);
    const node = await startInProcess(env);
    t.teardown(() => node.close());
    await s3Pool(env, s3, { name: 'backup' });
    const user = await makeUser(env, 'premium');
    await s3.stop();
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      const r = await uploadFile(node.url, user.apiKey, await tinyImage(100 + i), `d${i}.png`);
      ids.push(String(r.body.image_uuid));
    }
    await waitFor(
      'first failed attempts',
      async () => {
        const rows = await env.sql()`select 1 from image_backups where last_error is not null`;
        return rows.length === ids.length;
      },
      30_000,
    );
    await s3.start();
    for (const id of ids) {
      await waitFor(
        `backup of ${id} after the outage`,
        async () => {
          const [row] = await env.sql()<
            { status: string }[]
          >`select status from image_backups where image_id = ${id}`;
          return row?.status === 'completed';
        },
        90_000,
      );
    }
    t.equal((await s3.listKeys('images/')).length, 5, 'every backup once');

    await env.sql()`update storage_pools set s3_access_key = 'WRONGKEY' where storage_type = 's3'`;
    const r = await uploadFile(node.url, user.apiKey, await tinyImage(200), 'w.png');
    const id = String(r.body.image_uuid);
    const row = await waitFor(
      'failed backup',
      async () => {
        const [b] = await env.sql()<
          { status: string; last_error: string }[]
        >`select status, last_error from image_backups where image_id = ${id}`;
        return b?.status === 'failed' ? b : null;
      },
      30_000,
    );
    t.match(row.last_error, /credentials|denied|AccessKey/i, 'a clear error');
    t.notMatch(
      row.last_error,
      s3.secretKey.length > 8 ? s3.secretKey : '\u0000never',
      'no secret in the error',
    );
  },
);

t.test('delayed backups: nothing before the delay, everything after, across a worker restart', async (t) => {
  const env = await testEnv(t);
  const s3 = await startS3();
  t.teardown(() => s3.close());
  await setSetting(env, 's3_backup_enabled', true);
  await setSetting(env, 's3_backup_delay_minutes', 0.25); // 15 s keeps the test short; minutes are fractional-capable
  const api = await spawnNode(env, { roles: ['api', 'storage', 'projector'] });
  t.teardown(() => api.stop());
  await s3Pool(env, s3, { name: 'backup' });
  let worker = await spawnNode(env, { roles: ['worker'] });
  const user = await makeUser(env, 'premium');
  const started = Date.now();
  const ids: string[] = [];
  for (let i = 0; i < 3; i++)
    ids.push(
      String((await uploadFile(api.url, user.apiKey, await tinyImage(300 + i), `l${i}.png`)).body.image_uuid),
    );
  await waitFor(
    'pending backups',
    async () => (await env.sql()`select 1 from image_backups where status = 'pending'`).length === 3,
  );
  t.equal((await s3.listKeys('images/')).length, 0, 'nothing uploaded before the delay');
  worker.kill9();
  await worker.exited;
  worker = await spawnNode(env, { roles: ['worker'] });
  t.teardown(() => worker.stop());
  await waitFor('backups after the delay', async () => (await s3.listKeys('images/')).length === 3, 90_000);
  t.ok(Date.now() - started >= 15_000, 'not before the delay');
  for (const id of ids) await waitForStatus(api.url, user.apiKey, id);
});
