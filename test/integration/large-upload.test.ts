// A 95 MB upload is streamed, never buffered: the storage node's RSS grows by far less than the file.
import { openAsBlob } from 'node:fs';
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { makeUser, spawnNode, testEnv } from '../helpers/stack.js';

async function rssBytes(pid: number): Promise<number> {
  const status = await fs.readFile(`/proc/${pid}/status`, 'utf8');
  const kb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return kb * 1024;
}

t.test('95 MB upload by a premium_max user: stored, RSS growth < 64 MB', async (t) => {
  const env = await testEnv(t);
  // Storage node alone: what we measure is the ingest, not the variant pipeline that follows.
  const node = await spawnNode(env, { roles: ['api', 'storage', 'projector'] });
  t.teardown(() => node.stop());
  const user = await makeUser(env, 'premium_max');
  // 4880 × 4880 RGBA, uncompressed PNG: ~95 MB of valid image.
  const file = path.join(env.dataDir, 'big.png');
  const raw = Buffer.alloc(4880 * 4880 * 4, 0x7f);
  await sharp(raw, { raw: { width: 4880, height: 4880, channels: 4 } }).png({ compressionLevel: 0 }).toFile(file);
  const size = (await fs.stat(file)).size;
  t.ok(size > 95e6 && size < 100 * 1024 * 1024, `${(size / 1048576).toFixed(1)} MB`);

  const s = (await (
    await fetch(`${node.url}/api/v1/upload/sessions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${user.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ file_size: size }),
    })
  ).json()) as { upload_url: string; token: string };

  const pid = node.child.pid ?? 0;
  const before = await rssBytes(pid);
  let peak = before;
  const sampler = setInterval(() => {
    void rssBytes(pid).then((r) => (peak = Math.max(peak, r)), () => undefined);
  }, 20);
  const form = new FormData();
  form.append('file', await openAsBlob(file), 'big.png');
  const r = await fetch(s.upload_url, { method: 'POST', headers: { authorization: `Bearer ${s.token}` }, body: form });
  clearInterval(sampler);
  const body = (await r.json()) as Record<string, unknown>;
  t.equal(r.status, 201, JSON.stringify(body).slice(0, 200));
  t.equal(body.size, size);
  const growth = peak - before;
  t.ok(growth < 64 * 1024 * 1024, `RSS grew by ${(growth / 1048576).toFixed(1)} MB (before ${(before / 1048576).toFixed(0)} MB)`);
  const stored = await fs.stat(path.join(env.dataDir, 'pools', 'default', String(body.url).split('/uploads/')[1] ?? ''));
  t.equal(stored.size, size, 'the stored file is complete');
});
