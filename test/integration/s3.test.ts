// shared/s3/client.ts against a real S3 protocol server (s3rver on a loopback port); no mocked client.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import t from 'tap';
import {
  S3IntegrityError,
  classifyS3Error,
  closeS3Clients,
  deleteObject,
  downloadToFile,
  ensureBucket,
  getObjectStream,
  headObject,
  poolKey,
  presignGet,
  presignPut,
  putFileStreamed,
  redactS3Config,
  s3ClientFor,
} from '../../shared/s3/client.js';
import type { S3PoolConfig } from '../../shared/s3/client.js';
import { startS3 } from '../helpers/s3.js';

const MiB = 1024 * 1024;
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function readAll(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Awaits a promise expected to reject and returns the rejection with how long it took. */
async function rejection(p: Promise<unknown>): Promise<{ err: unknown; ms: number }> {
  const started = Date.now();
  try {
    await p;
  } catch (err) {
    return { err, ms: Date.now() - started };
  }
  throw new Error('expected the operation to fail');
}

const s3 = await startS3();
const dir = await mkdtemp(path.join(os.tmpdir(), 'pixelfox-s3-test-'));
t.teardown(async () => {
  closeS3Clients();
  await s3.close();
  await rm(dir, { recursive: true, force: true });
});

const client = s3ClientFor(s3.config());
const run = randomUUID();
const smallBytes = randomBytes(200 * 1024 + 17);
const smallPath = path.join(dir, 'small.jpg');
await writeFile(smallPath, smallBytes);
// Over the 8 MiB default part size: two parts.
const largeBytes = randomBytes(9 * MiB + 12345);
const largePath = path.join(dir, 'large.jpg');
await writeFile(largePath, largeBytes);

const smallKey = `${run}/originals/small.jpg`;
const largeKey = `${run}/originals/large.jpg`;
const originalPath = 'Ferien/Été 2023/日本 ☀.jpg';

await t.test('client cache and config redaction', async (t) => {
  t.equal(s3ClientFor(s3.config()), client, 'same config, same client');
  t.not(s3ClientFor(s3.config(), { timeoutMs: 1000 }), client, 'other options, other client');
  const redacted = redactS3Config({ ...s3.config(), secretKey: 'a-very-secret-key-value' });
  t.equal(redacted.accessKey, 'S3RV…');
  t.notOk('secretKey' in redacted);
  t.notMatch(JSON.stringify(redacted), 'a-very-secret-key-value');
  t.equal(poolKey({ ...s3.config(), prefix: '/pool-a/' }, '/x/y.jpg'), 'pool-a/x/y.jpg');
  t.equal(poolKey(s3.config(), 'x/y.jpg'), 'x/y.jpg');
});

await t.test('small file: single PutObject with metadata, verified', async (t) => {
  const before = s3.requests().length;
  const progress: number[] = [];
  const res = await putFileStreamed(client, {
    bucket: s3.bucket,
    key: smallKey,
    filePath: smallPath,
    contentType: 'image/jpeg',
    metadata: { 'original-path': originalPath, 'upload-source': 'web' },
    cacheControl: 'public, max-age=31536000, immutable',
    onProgress: (loaded) => progress.push(loaded),
  });
  t.same(res, {
    bucket: s3.bucket,
    key: smallKey,
    size: smallBytes.length,
    sha256: sha256(smallBytes),
    etag: res.etag,
    parts: 1,
  });
  t.equal(progress.at(-1), smallBytes.length, 'progress reaches the file size');

  const sent = s3.requests().slice(before);
  t.equal(sent.filter((r) => r.startsWith('PUT ')).length, 1, 'one PUT');
  t.notOk(
    sent.some((r) => r.includes('uploads')),
    'no multipart upload',
  );

  const head = await headObject(client, s3.bucket, smallKey);
  t.same(head, {
    size: smallBytes.length,
    contentType: 'image/jpeg',
    metadata: { 'original-path': originalPath, 'upload-source': 'web', sha256: sha256(smallBytes) },
    etag: res.etag,
    cacheControl: 'public, max-age=31536000, immutable',
  });
  t.ok(
    (await readAll(await getObjectStream(client, s3.bucket, smallKey))).equals(smallBytes),
    'bytes intact',
  );
});

await t.test('large file: multipart upload in parts, fully re-verified', async (t) => {
  const before = s3.requests().length;
  const progress: number[] = [];
  const res = await putFileStreamed(client, {
    bucket: s3.bucket,
    key: largeKey,
    filePath: largePath,
    contentType: 'image/jpeg',
    metadata: { 'original-path': 'big.jpg', 'upload-source': 'api' },
    sha256: sha256(largeBytes), // caller already knows the hash
    verify: 'full',
    onProgress: (loaded) => progress.push(loaded),
  });
  t.equal(res.size, largeBytes.length);
  t.equal(res.sha256, sha256(largeBytes));
  t.equal(res.parts, 2);
  t.equal(progress.at(-1), largeBytes.length);

  const sent = s3.requests().slice(before);
  t.ok(
    sent.some((r) => r.startsWith('POST ') && r.includes('uploads')),
    'CreateMultipartUpload',
  );
  t.equal(sent.filter((r) => r.startsWith('PUT ') && r.includes('partNumber=')).length, 2, 'two UploadPart');
  t.ok(
    sent.some((r) => r.startsWith('POST ') && r.includes('uploadId=')),
    'CompleteMultipartUpload',
  );

  const head = await headObject(client, s3.bucket, largeKey);
  t.equal(head?.size, largeBytes.length);
  t.equal(head?.contentType, 'image/jpeg');
  t.same(head?.metadata, { 'original-path': 'big.jpg', 'upload-source': 'api', sha256: sha256(largeBytes) });
  t.same(await s3.listKeys(`${run}/originals/`), [largeKey, smallKey].sort());
});

await t.test('a wrong expected sha256 fails the upload and leaves no object', async (t) => {
  const key = `${run}/wrong-hash.jpg`;
  const { err } = await rejection(
    putFileStreamed(client, {
      bucket: s3.bucket,
      key,
      filePath: smallPath,
      contentType: 'image/jpeg',
      sha256: sha256(Buffer.from('something else')),
    }),
  );
  t.type(err, S3IntegrityError);
  t.equal(classifyS3Error(err).transient, true);
  t.equal(await headObject(client, s3.bucket, key), null);
});

await t.test('edge cases: empty file, missing file, aborted upload', async (t) => {
  const emptyPath = path.join(dir, 'empty.bin');
  await writeFile(emptyPath, Buffer.alloc(0));
  const empty = await putFileStreamed(client, {
    bucket: s3.bucket,
    key: `${run}/empty.bin`,
    filePath: emptyPath,
    contentType: 'application/octet-stream',
  });
  t.equal(empty.size, 0);
  t.equal(empty.sha256, sha256(Buffer.alloc(0)));
  t.equal((await headObject(client, s3.bucket, `${run}/empty.bin`))?.size, 0);

  const missing = await rejection(
    putFileStreamed(client, {
      bucket: s3.bucket,
      key: `${run}/never.jpg`,
      filePath: path.join(dir, 'does-not-exist.jpg'),
      contentType: 'image/jpeg',
    }),
  );
  const c = classifyS3Error(missing.err);
  t.equal(c.transient, false, c.message);
  t.match(c.message, /local file/);

  // Abort once the first part is through: the upload stops and no object appears.
  const controller = new AbortController();
  const key = `${run}/aborted.jpg`;
  const aborted = await rejection(
    putFileStreamed(client, {
      bucket: s3.bucket,
      key,
      filePath: largePath,
      contentType: 'image/jpeg',
      sha256: sha256(largeBytes),
      signal: controller.signal,
      onProgress: () => controller.abort(),
    }),
  );
  t.equal((aborted.err as Error).name, 'AbortError');
  t.equal(classifyS3Error(aborted.err).transient, true);
  t.equal(await headObject(client, s3.bucket, key), null);
  await t.rejects(
    putFileStreamed(client, {
      bucket: s3.bucket,
      key,
      filePath: smallPath,
      contentType: 'image/jpeg',
      signal: controller.signal,
    }),
    { name: 'AbortError' },
    'an already aborted signal fails at once',
  );
});

await t.test('head, idempotent delete, ranged read', async (t) => {
  t.equal(await headObject(client, s3.bucket, `${run}/missing`), null, 'missing key → null');
  await deleteObject(client, s3.bucket, `${run}/missing`);

  const key = `${run}/to-delete.jpg`;
  await putFileStreamed(client, { bucket: s3.bucket, key, filePath: smallPath, contentType: 'image/jpeg' });
  t.not(await headObject(client, s3.bucket, key), null);
  await deleteObject(client, s3.bucket, key);
  await deleteObject(client, s3.bucket, key);
  t.equal(await headObject(client, s3.bucket, key), null, 'gone, and a second delete was fine');

  const range = await readAll(
    await getObjectStream(client, s3.bucket, largeKey, { start: 8 * MiB - 5, end: 8 * MiB + 4 }),
  );
  t.ok(range.equals(largeBytes.subarray(8 * MiB - 5, 8 * MiB + 5)), 'range across the part boundary');
  await t.rejects(getObjectStream(client, s3.bucket, largeKey, { start: 5, end: 4 }), RangeError);
});

await t.test('downloadToFile streams to a temp file and renames', async (t) => {
  const target = path.join(dir, 'downloaded.jpg');
  const res = await downloadToFile(client, s3.bucket, largeKey, target);
  t.same(res, { size: largeBytes.length, sha256: sha256(largeBytes) });
  t.ok((await readFile(target)).equals(largeBytes));
  t.same(
    (await readdir(dir)).filter((f) => f.endsWith('.part')),
    [],
    'no temp file left',
  );

  const missing = await rejection(
    downloadToFile(client, s3.bucket, `${run}/missing`, path.join(dir, 'nope')),
  );
  t.equal(classifyS3Error(missing.err).transient, false);
  t.notOk(
    (await readdir(dir)).some((f) => f.includes('nope')),
    'nothing written for a missing key',
  );
});

await t.test('presigned GET and PUT work with plain fetch', async (t) => {
  const getUrl = await presignGet(client, s3.bucket, smallKey, 300);
  const got = await fetch(getUrl);
  t.equal(got.status, 200);
  t.ok(Buffer.from(await got.arrayBuffer()).equals(smallBytes));

  const key = `${run}/presigned-upload.png`;
  const body = randomBytes(4096);
  const putUrl = await presignPut(client, s3.bucket, key, {
    expiresSeconds: 300,
    contentType: 'image/png',
    contentLength: body.length,
  });
  t.match(putUrl, /X-Amz-SignedHeaders=[^&]*content-type/, 'content type is signed');
  const put = await fetch(putUrl, { method: 'PUT', body, headers: { 'content-type': 'image/png' } });
  t.equal(put.status, 200);
  const head = await headObject(client, s3.bucket, key);
  t.equal(head?.size, body.length);
  t.equal(head?.contentType, 'image/png');
  t.ok((await readAll(await getObjectStream(client, s3.bucket, key))).equals(body));

  await t.rejects(presignGet(client, s3.bucket, key, 0), RangeError);
});

await t.test('ensureBucket creates a bucket once and is idempotent', async (t) => {
  const bucket = `pixelfox-ensure-${randomBytes(4).toString('hex')}`;
  await ensureBucket(client, bucket);
  await ensureBucket(client, bucket);
  const res = await putFileStreamed(client, {
    bucket,
    key: 'k.jpg',
    filePath: smallPath,
    contentType: 'image/jpeg',
  });
  t.equal(res.bucket, bucket);
});

await t.test('wrong credentials are permanent, and the message hides the secret', async (t) => {
  const secret = `wrong-secret-${randomBytes(8).toString('hex')}`;
  const cfg: S3PoolConfig = { ...s3.config(), accessKey: 'PIXELFOXWRONGKEY', secretKey: secret };
  const bad = s3ClientFor(cfg);

  const put = await rejection(
    putFileStreamed(bad, {
      bucket: s3.bucket,
      key: `${run}/denied.jpg`,
      filePath: smallPath,
      contentType: 'image/jpeg',
    }),
  );
  const c = classifyS3Error(put.err);
  t.equal(c.transient, false);
  t.match(c.message, /InvalidAccessKeyId/);
  t.match(c.message, /HTTP 403/);
  t.match(c.message, /credentials/);
  t.notMatch(c.message, secret);

  const head = await rejection(headObject(bad, s3.bucket, smallKey));
  t.equal(classifyS3Error(head.err).transient, false, 'HEAD without an error body is permanent too');

  // Even an error that quotes the secret (e.g. from a misbehaving proxy) is scrubbed.
  const quoted = classifyS3Error(Object.assign(new Error(`upstream said ${secret}`), { code: 'ECONNRESET' }));
  t.equal(quoted.transient, true);
  t.notMatch(quoted.message, secret);
  t.match(quoted.message, /\[redacted\]/);
});

await t.test('S3 down: fails fast and transient; back up: works again, data kept', async (t) => {
  await s3.stop();
  t.teardown(() => s3.start());

  const small = await rejection(
    putFileStreamed(client, {
      bucket: s3.bucket,
      key: `${run}/during-outage.jpg`,
      filePath: smallPath,
      contentType: 'image/jpeg',
    }),
  );
  t.ok(small.ms < 5000, `small put failed in ${small.ms} ms`);
  const c = classifyS3Error(small.err);
  t.equal(c.transient, true, c.message);
  t.match(c.message, /unreachable/);

  const large = await rejection(
    putFileStreamed(client, {
      bucket: s3.bucket,
      key: `${run}/during-outage-large.jpg`,
      filePath: largePath,
      contentType: 'image/jpeg',
      sha256: sha256(largeBytes),
    }),
  );
  t.ok(large.ms < 5000, `large put failed in ${large.ms} ms`);
  t.equal(classifyS3Error(large.err).transient, true);

  const head = await rejection(headObject(client, s3.bucket, smallKey));
  t.equal(classifyS3Error(head.err).transient, true);

  await s3.start();
  const res = await putFileStreamed(client, {
    bucket: s3.bucket,
    key: `${run}/after-outage.jpg`,
    filePath: smallPath,
    contentType: 'image/jpeg',
  });
  t.equal(res.sha256, sha256(smallBytes));
  t.equal(
    (await headObject(client, s3.bucket, largeKey))?.size,
    largeBytes.length,
    'data survived the restart',
  );
});

await t.test('an endpoint that accepts but never answers times out within the timeout', async (t) => {
  const sockets = new Set<net.Socket>();
  const silent = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        silent.close(() => resolve());
      }),
  );
  const address = silent.address();
  if (address === null || typeof address === 'string') throw new Error('no port');

  const hung = s3ClientFor(
    { ...s3.config(), endpoint: `http://127.0.0.1:${address.port}` },
    { timeoutMs: 500, maxAttempts: 1 },
  );
  const { err, ms } = await rejection(headObject(hung, s3.bucket, smallKey));
  t.ok(ms < 3000, `timed out after ${ms} ms`);
  const c = classifyS3Error(err);
  t.equal(c.transient, true, c.message);
});
