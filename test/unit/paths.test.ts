import { mkdir, mkdtemp, realpath, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import {
  assertNoSymlinkEscape,
  datePath,
  normaliseStoredPath,
  originalRelPath,
  PathEscapeError,
  resolveInPool,
} from '../../shared/storage/paths.js';

const ID = '0b6f4a52-3c1e-4d1a-9f0e-7c2b5d8e9a10';

void t.test('datePath and originalRelPath', async (t) => {
  t.equal(datePath(new Date('2025-03-01T12:00:00Z')), '2025/03/01');
  // UTC, not local time: 23:30 at UTC-5 is already the next day in UTC.
  t.equal(datePath(new Date('2024-12-31T23:30:00-05:00')), '2025/01/01');
  t.equal(datePath(new Date('0999-01-02T00:00:00Z')), '0999/01/02');
  t.throws(() => datePath(new Date('nope')), RangeError);

  const d = new Date('2025-03-01T00:00:00Z');
  t.equal(originalRelPath(ID, 'jpg', d), `original/2025/03/01/${ID}.jpg`);
  t.equal(originalRelPath(ID.toUpperCase(), 'webp', d), `original/2025/03/01/${ID}.webp`, 'id lower-cased');
  t.ok(normaliseStoredPath(originalRelPath(ID, 'avif', d)).ok, 'our own paths pass the client check');
  for (const badId of ['', '../etc/passwd', `${ID}/..`, 'not-a-uuid', `${ID}x`]) {
    t.throws(() => originalRelPath(badId, 'jpg', d), TypeError, `id ${badId}`);
  }
  for (const badExt of ['', 'JPG', 'jp/g', 'jpg.php', '../x', 'a'.repeat(9)]) {
    t.throws(() => originalRelPath(ID, badExt, d), TypeError, `ext ${badExt}`);
  }
});

void t.test('normaliseStoredPath accepts the layout', async (t) => {
  for (const p of [
    `original/2025/03/01/${ID}.jpg`,
    `variants/2025/03/01/${ID}_small.webp`,
    `variants/2025/03/01/${ID}_medium.avif`,
    'original/a',
    'variants/x/y/z.tar.gz',
  ]) {
    t.same(normaliseStoredPath(p), { ok: true, path: p }, p);
  }
});

void t.test('normaliseStoredPath refuses traversal and tricks', async (t) => {
  const refused = [
    '',
    '/etc/passwd',
    '/original/2025/x.jpg',
    'C:\\Windows\\win.ini',
    'C:/Windows/win.ini',
    'c:original/x',
    '\\\\server\\share\\x',
    '//server/share/x',
    '..',
    '../etc/passwd',
    'original/../../etc/passwd',
    'original/2025/../../../etc/passwd',
    'original/..',
    'variants/x/..',
    'original/./x.jpg',
    'original/.',
    './original/x.jpg',
    'original\\..\\..\\etc\\passwd',
    'original/..\\..\\etc',
    'original/x.jpg\0.png',
    'original/x\n.jpg',
    'original/x\r.jpg',
    'original/x\t.jpg',
    'original/x\u007f.jpg',
    'original/x\u0085.jpg',
    'original/%2e%2e/%2e%2e/etc/passwd',
    'original/%2E%2E%2Fetc',
    'original%2f..%2f..%2fetc',
    'original/%252e%252e/%252e%252e/etc',
    'original/%c0%ae%c0%ae/etc',
    'original/x%00.jpg',
    'original//x.jpg',
    'original/x.jpg/',
    'original/',
    'original',
    'variants',
    'Original/x.jpg',
    'ORIGINAL/x.jpg',
    'originals/x.jpg',
    'tmp/x.jpg',
    'original/\uff0e\uff0e/etc/passwd', // fullwidth full stops
    'original/\u2024\u2024/etc/passwd', // one-dot leaders
    'original/\u2025/etc', // two-dot leader
    'original/\u002e\u0307/x', // dot + combining dot above
    'original/x\u202ejpg.exe', // right-to-left override
    'original/caf\u00e9.jpg',
    'original/x y.jpg',
    'original/x;rm -rf.jpg',
    'original/.htaccess',
    'original/...',
    'original/.hidden/x.jpg',
    'original/-rf',
    `original/${'a'.repeat(256)}`,
    `original/${'a/'.repeat(300)}x`,
  ];
  t.ok(refused.length >= 15);
  for (const p of refused) {
    const r = normaliseStoredPath(p);
    t.equal(r.ok, false, `refused: ${JSON.stringify(p)}${r.ok ? '' : ` (${r.reason})`}`);
  }
  // Non-string input from a JSON body.
  t.equal(normaliseStoredPath(42 as unknown as string).ok, false);
  t.equal(normaliseStoredPath(null as unknown as string).ok, false);
  // 512 characters is the limit, inclusive.
  const long = `original/${'a'.repeat(250)}/${'b'.repeat(252)}`;
  t.equal(long.length, 512);
  t.ok(normaliseStoredPath(long).ok);
  t.notOk(normaliseStoredPath(`${long}c`).ok);
});

void t.test('resolveInPool', async (t) => {
  const base = path.resolve('/srv/pool1');
  t.equal(resolveInPool(base, 'original/2025/x.jpg'), path.join(base, 'original/2025/x.jpg'));
  t.equal(
    resolveInPool(`${base}/`, 'original/x.jpg'),
    path.join(base, 'original/x.jpg'),
    'trailing slash on base',
  );
  t.equal(resolveInPool(base, 'original/a/../b.jpg'), path.join(base, 'original/b.jpg'), 'lexically inside');

  for (const rel of [
    '..',
    '../x',
    '../pool10/x',
    '../pool1-evil/x',
    'original/../../x',
    '/etc/passwd',
    '.',
    '',
    'original/..',
    'a/../..',
    'x\0y',
  ]) {
    t.throws(() => resolveInPool(base, rel), PathEscapeError, `escape: ${JSON.stringify(rel)}`);
  }
  // A sibling directory sharing the prefix is not inside.
  t.throws(() => resolveInPool('/srv/pool', '../pool1/x'), PathEscapeError);
  const err = t.throws(() => resolveInPool(base, '../x'));
  t.match(err, { name: 'PathEscapeError', code: 'path_escape' });
});

void t.test('assertNoSymlinkEscape with real symlinks', async (t) => {
  const root = await realpath(await mkdtemp(path.join(os.tmpdir(), 'pixelfox-paths-')));
  t.teardown(() => rm(root, { recursive: true, force: true }));
  const pool = path.join(root, 'pool');
  const outside = path.join(root, 'outside');
  await mkdir(path.join(pool, 'original/2025/03/01'), { recursive: true });
  await mkdir(outside, { recursive: true });
  await writeFile(path.join(outside, 'secret.txt'), 'secret');
  await writeFile(path.join(pool, 'original/2025/03/01/ok.jpg'), 'x');

  // Normal paths: existing file, file still to be written, directories still to be created.
  await assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/03/01/ok.jpg'));
  await assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/03/01/new.jpg'));
  await assertNoSymlinkEscape(pool, path.join(pool, 'variants/2025/03/02/new.webp'));

  // A directory inside the pool that is a symlink to the outside.
  await symlink(outside, path.join(pool, 'original/2025/escape'));
  await t.rejects(
    assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/escape/secret.txt')),
    PathEscapeError,
    'existing file behind a symlinked directory',
  );
  await t.rejects(
    assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/escape/new/deeper/x.jpg')),
    PathEscapeError,
    'file to be created behind a symlinked directory',
  );

  // The target itself a symlink, pointing out or even inside.
  await symlink(path.join(outside, 'secret.txt'), path.join(pool, 'original/2025/03/01/link.jpg'));
  await t.rejects(
    assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/03/01/link.jpg')),
    PathEscapeError,
  );
  await symlink(
    path.join(pool, 'original/2025/03/01/ok.jpg'),
    path.join(pool, 'original/2025/03/01/inner.jpg'),
  );
  await t.rejects(
    assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/03/01/inner.jpg')),
    PathEscapeError,
  );
  // A dangling symlink is still a symlink.
  await symlink(path.join(outside, 'nope'), path.join(pool, 'original/2025/03/01/dangling.jpg'));
  await t.rejects(
    assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/03/01/dangling.jpg')),
    PathEscapeError,
  );
  // A directory where a file is expected.
  await t.rejects(assertNoSymlinkEscape(pool, path.join(pool, 'original/2025/03')), PathEscapeError);

  // Lexical escapes are refused before the file system is asked.
  await t.rejects(assertNoSymlinkEscape(pool, path.join(outside, 'secret.txt')), PathEscapeError);
  await t.rejects(assertNoSymlinkEscape(pool, pool), PathEscapeError);

  // A pool whose base path is itself a symlink (e.g. /data -> /mnt/disk1) works through either name.
  const alias = path.join(root, 'pool-alias');
  await symlink(pool, alias);
  await assertNoSymlinkEscape(alias, path.join(alias, 'original/2025/03/01/ok.jpg'));
  await t.rejects(
    assertNoSymlinkEscape(alias, path.join(alias, 'original/2025/escape/secret.txt')),
    PathEscapeError,
  );

  // resolveInPool + assertNoSymlinkEscape together, as a replication handler would use them.
  const rel = normaliseStoredPath('original/2025/escape/x.jpg');
  t.ok(rel.ok);
  if (rel.ok) await t.rejects(assertNoSymlinkEscape(pool, resolveInPool(pool, rel.path)), PathEscapeError);
});
