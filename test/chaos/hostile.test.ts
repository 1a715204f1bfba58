// Hostile input against a spawned storage node whose memory is watched (VmRSS from /proc every 100 ms):
// the hostile corpus, protocol abuse (100 KB of headers, odd filenames, two file parts, no boundary) and
// authentication attacks. Every request gets a 4xx JSON answer or a correct result, never a 5xx; the
// process survives; nothing is left on disk beyond the originals (and variants) of accepted images; RSS
// stays bounded.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import fs from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { signUploadToken } from '../../shared/security/upload-token.js';
import { caseBytes, gif, hostileCases } from '../fixtures/hostile/generate.js';
import { getJson, makeUser, uploadFile } from '../helpers/stack.js';
import { chaosEnv, liftRateLimits, proc } from './helpers/env.js';
import { sleep } from './helpers/random.js';
import { filesUnder, summary, waitConverged } from './helpers/verify.js';

const RSS_GROWTH_LIMIT_MB = 300;

function rssMb(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/**
 * A raw HTTP/1.1 exchange (Connection: close), for requests fetch will not send as written. With
 * `pacedChunk`, the head goes out in pieces of that size and writing stops once the server answered:
 * a server that refuses a request early closes with our unread bytes in its buffer, which makes the
 * kernel send a reset that can discard its answer before we read it.
 */
async function raw(port: number, head: string, body: Buffer = Buffer.alloc(0), pacedChunk = 0) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('error', (err: NodeJS.ErrnoException) => {
      // The server may answer and close while we are still writing: what it said (if anything arrived
      // before the reset) is what counts; 'close' follows.
      if (err.code === 'EPIPE' || err.code === 'ECONNRESET') return;
      reject(err);
    });
    s.on('close', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0);
      resolve({ status, body: text.slice(text.indexOf('\r\n\r\n') + 4) });
    });
    s.setTimeout(30_000, () => s.destroy(new Error('raw request timed out')));
    if (!pacedChunk) {
      s.write(head);
      s.end(body);
      return;
    }
    void (async () => {
      for (let i = 0; i < head.length && chunks.length === 0 && !s.destroyed; i += pacedChunk) {
        s.write(head.slice(i, i + pacedChunk));
        await new Promise((r) => setTimeout(r, 20));
      }
      if (chunks.length === 0 && !s.destroyed) s.end(body);
    })();
  });
}

function multipart(boundary: string, parts: { name: string; filename?: Buffer | string; body: Buffer }[]) {
  const chunks: Buffer[] = [];
  for (const p of parts) {
    const fn =
      p.filename === undefined
        ? Buffer.alloc(0)
        : Buffer.concat([Buffer.from('; filename="'), Buffer.from(p.filename), Buffer.from('"')]);
    chunks.push(
      Buffer.from(`--${boundary}\r\nContent-Disposition: form-data; name="${p.name}"`),
      fn,
      Buffer.from(`\r\nContent-Type: application/octet-stream\r\n\r\n`),
      p.body,
      Buffer.from('\r\n'),
    );
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return Buffer.concat(chunks);
}

t.test('hostile input under memory watch, auth attacks', async (t) => {
  const env = await chaosEnv(t);
  await liftRateLimits(env);
  const node = await proc(t, env, 'storage', ['api', 'storage']);
  // Processing and projection in another process: the memory watched is the upload path's.
  await proc(t, env, 'worker', ['worker', 'projector']);
  const user = await makeUser(env, 'premium_max');
  const other = await makeUser(env, 'premium');
  const pid = node.pid() ?? 0;

  // Warm up (first upload loads sharp, multipart, …), then take the baseline.
  const warm = await sharp({ create: { width: 64, height: 64, channels: 3, background: '#123456' } })
    .jpeg()
    .toBuffer();
  const w = await uploadFile(node.url, user.apiKey, warm, 'warm.jpg');
  t.equal(w.status, 201, 'warm-up upload');
  await sleep(300);
  const baseline = rssMb(pid) ?? 0;
  let peak = baseline;
  const sampler = setInterval(() => {
    const r = rssMb(pid);
    if (r !== null && r > peak) peak = r;
  }, 100);
  t.teardown(() => clearInterval(sampler));

  const answers: { name: string; status: number; body: unknown }[] = [];
  const accepted = new Map<string, string>(); // image id → case
  const check = (name: string, status: number, body: unknown, ok: (s: number) => boolean) => {
    answers.push({ name, status, body });
    t.ok(ok(status) && status < 500, `${name}: ${status} ${JSON.stringify(body).slice(0, 100)}`);
    if (status >= 400)
      t.match(body, { error: { code: String, message: String } }, `${name}: JSON error shape`);
  };

  // 1. The hostile corpus, plus a 10 000-frame GIF on a big logical screen.
  const cases = [
    ...hostileCases(),
    {
      name: 'GIF with 10 000 frames on a 4000×4000 screen',
      filename: 'frames-big.gif',
      bytes: gif(10_000, 4000, 4000),
      expect: 'reject' as const,
    },
  ];
  for (const c of cases) {
    const r = await uploadFile(node.url, user.apiKey, caseBytes(c), c.filename);
    if (c.expect === 'reject') check(c.name, r.status, r.body, (s) => s >= 400 && s < 500);
    else {
      check(c.name, r.status, r.body, (s) => s === 201 || s === 200);
      if (typeof r.body.image_uuid === 'string') accepted.set(r.body.image_uuid, c.name);
    }
  }

  // 2. Protocol abuse.
  const session = async () =>
    (await (
      await fetch(`${node.url}/api/v1/upload/sessions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${user.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ file_size: 100_000 }),
      })
    ).json()) as { token: string; pool_id: string };
  const big = await raw(
    node.port,
    `GET /api/v1/images HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${user.apiKey}\r\n` +
      Array.from({ length: 100 }, (_, i) => `X-Pad-${i}: ${'a'.repeat(1000)}\r\n`).join('') +
      'Connection: close\r\n\r\n',
    Buffer.alloc(0),
    4096,
  );
  answers.push({ name: '100 KB of headers', status: big.status, body: big.body });
  t.equal(big.status, 431, '100 KB of headers → 431');

  let n = 0;
  const image = async () =>
    sharp({ create: { width: 40 + n++, height: 30, channels: 3, background: { r: n * 9, g: 50, b: 70 } } })
      .png()
      .toBuffer();
  const names: [string, Buffer | string][] = [
    ['../ traversal', '../../../../tmp/pixelfox-escape.png'],
    ['backslash traversal', '..\\..\\..\\escape.png'],
    ['absolute path', '/etc/cron.d/escape.png'],
    ['NUL in the name', Buffer.from('evil\u0000.php.png', 'latin1')],
    ['1000-char name', `${'n'.repeat(996)}.png`],
    ['unicode name', 'фото 📷 写真 é.png'],
    ['control characters', 'a\r\nb\tc.png'],
  ];
  for (const [name, filename] of names) {
    const s = await session();
    const boundary = `----pfx${n}`;
    const r = await fetch(`${node.url}/api/internal/upload`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${s.token}`,
        'content-type': `multipart/form-data; boundary=${boundary}`,
      },
      body: new Uint8Array(multipart(boundary, [{ name: 'file', filename, body: await image() }])),
    });
    const body = (await r.json()) as Record<string, unknown>;
    check(`filename: ${name}`, r.status, body, (st) => st === 201 || (st >= 400 && st < 500));
    if (r.status === 201) {
      const id = String(body.image_uuid);
      accepted.set(id, name);
      t.match(
        String(body.url),
        /\/uploads\/original\/\d{4}\/\d{2}\/\d{2}\/[0-9a-f-]{36}\.png$/,
        `${name}: stored by uuid`,
      );
      const img = await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey);
      const shown = String(img.body.original_filename ?? '');
      t.ok(
        !/[/\\\u0000-\u001f]/.test(shown) && shown.length <= 255,
        `${name}: original_filename sanitised (${JSON.stringify(shown.slice(0, 40))}, ${shown.length} chars)`,
      );
    }
  }
  {
    const s = await session();
    const boundary = '----pfxtwo';
    const png = await image();
    const r = await fetch(`${node.url}/api/internal/upload`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${s.token}`,
        'content-type': `multipart/form-data; boundary=${boundary}`,
      },
      body: new Uint8Array(
        multipart(boundary, [
          { name: 'file', filename: 'a.png', body: png },
          { name: 'file', filename: 'b.png', body: png },
        ]),
      ),
    });
    check('two file parts', r.status, await r.json(), (st) => st === 400);
    const nb = await fetch(`${node.url}/api/internal/upload`, {
      method: 'POST',
      headers: { authorization: `Bearer ${s.token}`, 'content-type': 'multipart/form-data' },
      body: new Uint8Array(multipart('x', [{ name: 'file', filename: 'a.png', body: png }])),
    });
    check('missing boundary', nb.status, await nb.json(), (st) => st === 400);
    const hdr = await raw(
      node.port,
      `POST /api/internal/upload HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${s.token}\r\n` +
        `Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n`,
      Buffer.from('--zz\r\nContent-Disposition: form-data; name="file"; filename="cut.png"\r\n\r\n'),
    );
    // The client goes away mid-body: the node must not crash or keep a temp file.
    answers.push({ name: 'body cut short', status: hdr.status, body: hdr.body });
    t.ok(
      hdr.status === 0 || (hdr.status >= 400 && hdr.status < 500),
      `body cut short: ${hdr.status || 'closed'}`,
    );
  }

  // 3. Authentication attacks.
  const [pool] = await env.sql()<{ id: string }[]>`select id from storage_pools limit 1`;
  const sign = (o: { pool_id?: string; exp?: number }, secret = env.secrets.UPLOAD_TOKEN_SECRET) =>
    signUploadToken(secret, {
      user_id: user.id,
      pool_id: o.pool_id ?? pool?.id ?? '',
      max_bytes: 1e6,
      ...(o.exp !== undefined ? { exp: o.exp } : {}),
    }).token;
  const good = sign({});
  const flip = (s: string) => `${s.slice(0, -3)}${s.at(-3) === 'A' ? 'B' : 'A'}${s.slice(-2)}`;
  const tokens: [string, string][] = [
    ['forged signature', flip(good)],
    ['other secret', sign({}, 'a-different-secret-of-enough-length')],
    ['expired', sign({ exp: Math.floor(Date.now() / 1000) - 60 })],
    ['other pool', sign({ pool_id: '11111111-1111-4111-8111-111111111111' })],
    ['truncated', good.slice(0, Math.floor(good.length / 2))],
    ['empty', ''],
  ];
  const png = await image();
  for (const [name, token] of tokens) {
    const form = new FormData();
    form.append('file', new Blob([new Uint8Array(png)]), 'x.png');
    const r = await fetch(`${node.url}/api/internal/upload`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
      body: form,
    });
    check(`token: ${name}`, r.status, await r.json(), (st) => st === 401);
  }
  const someId = [...accepted.keys()][0] ?? '';
  const theirs = await getJson(`${node.url}/api/v1/images/${someId}`, other.apiKey);
  check("another user's API key reads an image", theirs.status, theirs.body, (st) => st === 404);

  // Replication secret brute force: 20 wrong secrets per address and minute, then 429. The window is a
  // wall-clock minute: start early in one so all 25 tries fall into it.
  if (Date.now() % 60_000 > 50_000) await sleep(60_000 - (Date.now() % 60_000) + 50);
  const statuses: number[] = [];
  for (let i = 0; i < 25; i++) {
    const r = await fetch(
      `${node.url}/api/internal/replicate?pool_id=${pool?.id ?? ''}&stored_path=original/2025/01/01/x.png`,
      {
        method: 'PUT',
        headers: {
          authorization: `Bearer guess-${i}-${'x'.repeat(20)}`,
          'content-type': 'application/octet-stream',
        },
        body: new Uint8Array(png),
      },
    );
    statuses.push(r.status);
    answers.push({ name: `replicate guess ${i}`, status: r.status, body: await r.json() });
  }
  t.same(statuses.slice(0, 20), Array(20).fill(401), 'the first 20 wrong secrets: 401');
  t.same(statuses.slice(20), Array(5).fill(429), 'then 429');
  const right = await fetch(
    `${node.url}/api/internal/replicate?pool_id=${pool?.id ?? ''}&stored_path=original/2025/01/01/y.png`,
    {
      method: 'PUT',
      headers: {
        authorization: `Bearer ${env.secrets.REPLICATION_SECRET}`,
        'content-type': 'application/octet-stream',
      },
      body: new Uint8Array(png),
    },
  );
  t.equal(right.status, 429, 'even the right secret gets 429 for the rest of the minute');

  // 4. The process survived, nothing above 4xx, memory bounded, nothing left on disk.
  clearInterval(sampler);
  t.equal(node.current()?.child.exitCode ?? null, null, 'storage node still running');
  t.equal((await fetch(`${node.url}/health`)).status, 200, 'still serving');
  t.same(
    answers.filter((a) => a.status >= 500).map((a) => `${a.name}: ${a.status}`),
    [],
    'no 5xx at all',
  );
  const growth = peak - baseline;
  t.ok(
    growth < RSS_GROWTH_LIMIT_MB,
    `RSS ${baseline.toFixed(0)} → peak ${peak.toFixed(0)} MB (+${growth.toFixed(0)} < ${RSS_GROWTH_LIMIT_MB})`,
  );

  const ids = [...accepted.keys(), String(w.body.image_uuid)];
  await waitConverged(env, ids, 60_000);
  const rows = await env.sql()<{ stored_path: string }[]>`select stored_path from images`;
  const variants = await env.sql()<{ path: string }[]>`select path from image_variants`;
  const expected = new Set([...rows.map((r) => r.stored_path), ...variants.map((v) => v.path)]);
  const onDisk = (await filesUnder(env.dataDir)).map((f) => path.relative('pools/default', f));
  t.same(
    onDisk.filter((f) => !expected.has(f)),
    [],
    'no file on disk but the originals and variants of accepted images (no temp file, nothing escaped)',
  );
  t.equal(
    await fs.stat('/tmp/pixelfox-escape.png').then(
      () => true,
      () => false,
    ),
    false,
    'no escape to /tmp',
  );
  // The bytes on disk are the bytes sent (one accepted case, checked whole).
  const [one] = await env.sql()<
    { stored_path: string; sha256: string }[]
  >`select stored_path, sha256 from images limit 1`;
  if (one) {
    const b = await fs.readFile(path.join(env.poolDir, one.stored_path));
    t.equal(createHash('sha256').update(b).digest('hex'), one.sha256, 'stored bytes match their hash');
  }
  summary(t, 'hostile-input', {
    requests: answers.length,
    rejected_4xx: answers.filter((a) => a.status >= 400 && a.status < 500).length,
    accepted: accepted.size,
    server_errors: answers.filter((a) => a.status >= 500).length,
    rss_baseline_mb: Math.round(baseline),
    rss_peak_mb: Math.round(peak),
    rss_growth_mb: Math.round(growth),
    stray_files: onDisk.filter((f) => !expected.has(f)).length,
  });
});
