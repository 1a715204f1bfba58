// PUT /api/internal/replicate against a real node: auth, brute-force limit, path hardening (nothing ever
// lands outside the pool), verification, idempotence and the require-checksum setting.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import http, { type IncomingHttpHeaders } from 'node:http';
import path from 'node:path';
import t from 'tap';
import { addPool } from '../../shared/pools.js';
import { MAX_REPLICATE_BYTES } from '../../services/storage-node/replicate.js';
import { startInProcess, testEnv, waitFor } from '../helpers/stack.js';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

interface Answer {
  status: number;
  body: { status?: string; size?: number; sha256?: string; error?: { code: string; message: string } };
  headers: IncomingHttpHeaders;
}

interface PutOptions {
  /** the raw query string, sent exactly as given */
  query: string;
  body?: Buffer | Buffer[];
  /** Authorization header; null for none */
  auth: string | null;
  contentType?: string | null;
  /** send without Content-Length (chunked) */
  chunked?: boolean;
}

/** A PUT with full control over the raw query, headers and framing (fetch would normalise them). */
function put(base: string, o: PutOptions): Promise<Answer> {
  const u = new URL(base);
  const chunks = o.body === undefined ? [] : Array.isArray(o.body) ? o.body : [o.body];
  const length = chunks.reduce((n, c) => n + c.length, 0);
  const headers: Record<string, string> = {};
  if (o.auth !== null) headers.authorization = o.auth;
  if (o.contentType !== null) headers['content-type'] = o.contentType ?? 'application/octet-stream';
  if (!o.chunked) headers['content-length'] = String(length);
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: u.hostname, port: u.port, method: 'PUT', path: `/api/internal/replicate?${o.query}`, headers },
      (res) => {
        const got: Buffer[] = [];
        res.on('data', (c: Buffer) => got.push(c));
        res.on('end', () => {
          const text = Buffer.concat(got).toString();
          let body: Answer['body'];
          try {
            body = JSON.parse(text) as Answer['body'];
          } catch {
            body = { error: { code: 'not_json', message: text } };
          }
          resolve({ status: res.statusCode ?? 0, body, headers: res.headers });
        });
      },
    );
    req.on('error', reject);
    for (const c of chunks) req.write(c);
    req.end();
  });
}

const qs = (p: Record<string, string | number | undefined>) =>
  Object.entries(p)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${encodeURIComponent(String(v))}`)
    .join('&');

/** Every file under `dir` (relative), temp files excluded. */
async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (d: string) => {
    for (const e of await fs.readdir(d, { withFileTypes: true }).catch(() => [])) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== '.tmp') await walk(p);
      } else out.push(path.relative(dir, p));
    }
  };
  await walk(dir);
  return out.sort();
}

t.test('replicate endpoint', async (t) => {
  const env = await testEnv(t);
  const base = path.join(env.dataDir, 'pools', 'r');
  const pool = await addPool(env.sql(), {
    name: 'r',
    storage_type: 'local',
    base_path: base,
    public_base_url: 'http://127.0.0.1',
    node_id: 'local',
  });
  const off = await addPool(env.sql(), {
    name: 'r-off',
    storage_type: 'local',
    base_path: path.join(env.dataDir, 'pools', 'off'),
    public_base_url: 'http://127.0.0.1',
    node_id: 'local',
    is_active: false,
  });
  const elsewhere = await addPool(env.sql(), {
    name: 'other-node',
    storage_type: 'local',
    base_path: path.join(env.dataDir, 'pools', 'other'),
    public_base_url: 'http://127.0.0.1',
    node_id: 'node-x',
  });
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const url = node.url;
  const auth = `Bearer ${env.secrets.REPLICATION_SECRET}`;
  const file = randomBytes(4096);
  const rel = `original/2025/09/01/${randomUUID()}.jpg`;
  const good = (extra: Record<string, string | number | undefined> = {}) =>
    qs({ pool_id: pool.id, stored_path: rel, size: file.length, sha256: sha(file), ...extra });

  await t.test('missing or wrong secret → 401', async (t) => {
    const missing = await put(url, { query: good(), body: file, auth: null });
    t.equal(missing.status, 401);
    t.equal(missing.body.error?.code, 'missing_replication_secret');
    const wrong = await put(url, {
      query: good(),
      body: file,
      auth: `Bearer ${env.secrets.REPLICATION_SECRET}x`,
    });
    t.equal(wrong.status, 401);
    t.equal(wrong.body.error?.code, 'invalid_replication_secret');
    t.equal(
      (await put(url, { query: good(), body: file, auth: `Basic ${env.secrets.REPLICATION_SECRET}` })).status,
      401,
    );
    t.equal(await fs.stat(path.join(base, rel)).catch(() => null), null, 'nothing written');
  });

  await t.test('stored, served, then skipped; a different file is never overwritten', async (t) => {
    const r = await put(url, { query: good(), body: file, auth });
    t.equal(r.status, 201, JSON.stringify(r.body));
    t.same(r.body, { status: 'stored', size: file.length, sha256: sha(file) });
    t.same(await fs.readFile(path.join(base, rel)), file);
    const served = await fetch(`${url}/uploads/${rel}`);
    t.equal(served.status, 200);
    t.same(Buffer.from(await served.arrayBuffer()), file);

    const again = await put(url, { query: good(), body: file, auth });
    t.equal(again.status, 200);
    t.same(again.body, { status: 'skipped', size: file.length, sha256: sha(file) });
    const bare = await put(url, { query: qs({ pool_id: pool.id, stored_path: rel }), body: file, auth });
    t.equal(bare.status, 200, 'no size or checksum: compared after receiving');
    t.equal(bare.body.status, 'skipped');

    const other = randomBytes(4096);
    const conflict = await put(url, { query: good({ sha256: sha(other) }), body: other, auth });
    t.equal(conflict.status, 409);
    t.equal(conflict.body.error?.code, 'file_exists');
    const sameSize = await put(url, {
      query: qs({ pool_id: pool.id, stored_path: rel, size: other.length }),
      body: other,
      auth,
    });
    t.equal(sameSize.status, 409, 'same size, different bytes, no checksum');
    const otherSize = await put(url, {
      query: qs({ pool_id: pool.id, stored_path: rel, size: 10 }),
      body: other.subarray(0, 10),
      auth,
    });
    t.equal(otherSize.status, 409);
    t.same(await fs.readFile(path.join(base, rel)), file, 'the original bytes are still there');

    const twin = `variants/2025/09/01/${randomUUID()}_small.jpg`;
    const both = await Promise.all(
      [1, 2].map(() =>
        put(url, {
          query: qs({ pool_id: pool.id, stored_path: twin, size: file.length, sha256: sha(file) }),
          body: file,
          auth,
        }),
      ),
    );
    t.ok(
      both.every((b) => b.status === 201 || b.status === 200),
      `concurrent identical PUTs: ${both.map((b) => b.status).join(',')}`,
    );
    t.same(await fs.readFile(path.join(base, twin)), file);
  });

  await t.test('size and checksum mismatches → 422 and nothing kept', async (t) => {
    const target = `original/2025/09/02/${randomUUID()}.png`;
    const q = (p: Record<string, string | number | undefined>) =>
      qs({ pool_id: pool.id, stored_path: target, ...p });
    const badSum = await put(url, {
      query: q({ size: file.length, sha256: sha(Buffer.from('something else')) }),
      body: file,
      auth,
    });
    t.equal(badSum.status, 422);
    t.equal(badSum.body.error?.code, 'sha256_mismatch');
    const declared = await put(url, { query: q({ size: file.length + 1 }), body: file, auth });
    t.equal(declared.status, 422, 'size differs from Content-Length');
    t.equal(declared.body.error?.code, 'size_mismatch');
    const short = await put(url, { query: q({ size: file.length + 1 }), body: file, auth, chunked: true });
    t.equal(short.status, 422, 'chunked body shorter than size');
    const long = await put(url, { query: q({ size: 100 }), body: [file, file], auth, chunked: true });
    t.equal(long.status, 422, 'chunked body longer than size');
    t.equal(long.body.error?.code, 'size_mismatch');
    t.equal(await fs.stat(path.join(base, target)).catch(() => null), null, 'no file kept');
    t.same(
      await fs.readdir(path.join(base, '.tmp')).then((f) => f.filter((n) => n.endsWith('.part'))),
      [],
      'no temp file kept',
    );
  });

  await t.test('pools, content type and size limits', async (t) => {
    const q = (poolId: string) =>
      qs({ pool_id: poolId, stored_path: `original/2025/09/03/${randomUUID()}.jpg`, size: file.length });
    const unknown = await put(url, { query: q(randomUUID()), body: file, auth });
    t.equal(unknown.status, 404);
    t.equal(unknown.body.error?.code, 'pool_not_found');
    t.equal(
      (await put(url, { query: q(elsewhere.id), body: file, auth })).status,
      404,
      "another node's pool",
    );
    t.equal((await put(url, { query: q(off.id), body: file, auth })).status, 409, 'inactive pool');
    const json = await put(url, {
      query: qs({ pool_id: pool.id, stored_path: `original/2025/09/03/${randomUUID()}.jpg` }),
      body: Buffer.from('{"a":1}'),
      auth,
      contentType: 'application/json',
    });
    t.equal(json.status, 415, 'a JSON body is not a file');
    t.equal(json.body.error?.code, 'octet_stream_required');
    t.equal((await put(url, { query: q(pool.id), body: file, auth, contentType: 'image/jpeg' })).status, 415);
    const huge = await put(url, {
      query: qs({
        pool_id: pool.id,
        stored_path: `original/2025/09/03/${randomUUID()}.jpg`,
        size: MAX_REPLICATE_BYTES + 1,
      }),
      body: file,
      auth,
    });
    t.equal(huge.status, 413);
    t.equal(
      (await put(url, { query: `${q(pool.id)}&extra=1`, body: file, auth })).status,
      400,
      'unknown parameter',
    );
    t.equal(
      (await put(url, { query: qs({ pool_id: pool.id, size: 1 }), body: file, auth })).status,
      400,
      'stored_path required',
    );
    t.equal(
      (await put(url, { query: `${q(pool.id)}&sha256=xyz`, body: file, auth })).status,
      400,
      'malformed checksum',
    );
  });

  await t.test('traversal in every form → 400, nothing written outside the pool', async (t) => {
    const outside = path.join(env.dataDir, 'outside');
    await fs.mkdir(outside, { recursive: true });
    const victim = path.join(outside, 'victim.jpg');
    await fs.writeFile(victim, 'do not touch');
    await fs.mkdir(path.join(base, 'original'), { recursive: true });
    await fs.symlink(outside, path.join(base, 'original', 'link'));
    await fs.symlink(victim, path.join(base, 'original', 'evil.jpg'));
    const before = await filesUnder(env.dataDir);

    const raw = (storedPath: string) => `pool_id=${pool.id}&stored_path=${storedPath}&size=${file.length}`;
    const enc = (p: string) => raw(encodeURIComponent(p));
    const forms: [string, string][] = [
      ['../escape.jpg', enc('../escape.jpg')],
      ['original/../../escape.jpg', enc('original/../../escape.jpg')],
      ['variants/../original/escape.jpg', enc('variants/../original/escape.jpg')],
      ['%2e%2e%2f (decoded once)', raw('%2e%2e%2fescape.jpg')],
      ['original%2F%2e%2e%2F%2e%2e%2F (decoded once)', raw('original%2F%2e%2e%2F%2e%2e%2Fescape.jpg')],
      ['double-encoded', raw('original%252F..%252F..%252Fescape.jpg')],
      ['double-encoded dots', raw('original/%252e%252e/%252e%252e/escape.jpg')],
      ['backslashes', enc('original\\..\\..\\escape.jpg')],
      ['absolute', enc('/tmp/escape.jpg')],
      ['absolute into outside', enc(path.join(outside, 'escape.jpg'))],
      ['windows drive', enc('C:/escape.jpg')],
      ['NUL', raw('original/escape.jpg%00.png')],
      ['newline', raw('original/esc%0Aape.jpg')],
      ['one-dot leaders', enc('original/\u2024\u2024/\u2024\u2024/escape.jpg')],
      ['fullwidth dots', enc('original/\uff0e\uff0e/\uff0e\uff0e/escape.jpg')],
      ['empty segment', enc('original//escape.jpg')],
      ['trailing slash', enc('original/')],
      ['dot segment', enc('original/./escape.jpg')],
      ['hidden file', enc('original/.htaccess')],
      ['outside the roots', enc('uploads/escape.jpg')],
      ['the pool root itself', enc('.tmp/escape.jpg')],
      ['symlinked directory inside the pool', enc('original/link/escape.jpg')],
      ['symlink as the target file', enc('original/evil.jpg')],
    ];
    for (const [name, query] of forms) {
      const r = await put(url, { query, body: file, auth });
      t.equal(r.status, 400, `${name}: ${JSON.stringify(r.body)}`);
      t.match(r.body.error?.code, /^(invalid_path|path_escape|validation_failed)$/, name);
    }
    t.same(await filesUnder(env.dataDir), before, 'no file created or changed anywhere under the data dir');
    t.equal(await fs.readFile(victim, 'utf8'), 'do not touch');
    t.same(await fs.readdir(outside), ['victim.jpg'], 'nothing written through the symlink');
    await fs.access(path.join(path.dirname(env.dataDir), 'escape.jpg')).then(
      () => t.fail('escape.jpg next to the data dir'),
      () => t.pass('nothing next to the data dir'),
    );
  });

  await t.test('replication_require_checksum makes sha256 mandatory', async (t) => {
    const target = () => `variants/2025/09/04/${randomUUID()}_medium.jpg`;
    t.equal(
      (
        await put(url, {
          query: qs({ pool_id: pool.id, stored_path: target(), size: file.length }),
          body: file,
          auth,
        })
      ).status,
      201,
      'optional by default',
    );
    await env.sql()`insert into settings (key, value) values ('replication_require_checksum', 'true')`;
    const refused = await waitFor('setting to apply', async () => {
      const r = await put(url, {
        query: qs({ pool_id: pool.id, stored_path: target(), size: file.length }),
        body: file,
        auth,
      });
      return r.status === 400 ? r : null;
    });
    t.equal(refused.body.error?.code, 'checksum_required');
    const withSum = await put(url, {
      query: qs({ pool_id: pool.id, stored_path: target(), size: file.length, sha256: sha(file) }),
      body: file,
      auth,
    });
    t.equal(withSum.status, 201);
    await env.sql()`delete from settings where key = 'replication_require_checksum'`;
  });

  // Last: it locks this address out for the rest of the minute.
  await t.test('brute force → 429, then even the right secret is refused', async (t) => {
    const statuses: number[] = [];
    let windowOf429 = -1;
    for (let i = 0; i < 45 && windowOf429 < 0; i++) {
      const r = await put(url, {
        query: good(),
        body: file,
        auth: `Bearer guess-${i}-${randomBytes(8).toString('hex')}`,
      });
      statuses.push(r.status);
      if (r.status === 429) {
        windowOf429 = Math.floor(Date.now() / 60_000);
        t.ok(Number(r.headers['retry-after']) >= 1, 'retry-after given');
        t.equal(r.body.error?.code, 'rate_limited');
      }
    }
    t.ok(windowOf429 >= 0, `429 after ${statuses.length} attempts`);
    t.ok(
      statuses.slice(0, -1).every((s) => s === 401),
      'every earlier guess was 401',
    );
    const right = await put(url, { query: good(), body: file, auth });
    if (Math.floor(Date.now() / 60_000) === windowOf429)
      t.equal(right.status, 429, 'locked out for the rest of the window');
  });
});
