// The read API's cache (services/api/read-cache.ts) against a real stack: whatever it holds, a change that
// committed is what the next GET answers. Each check first shows the cache is really serving (a row edited
// behind the projector's back, with no NOTIFY, is not seen), then makes a change the cache must notice.
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { LISTEN_APPLICATION_NAME } from '../../shared/pg-listen.js';
import { imagePayloads, parseInvalidation, readModelChannel } from '../../shared/read-invalidation.js';
import { createApiKey, revokeApiKey, rotateApiKey, updateUser } from '../../shared/users.js';
import {
  FIXTURES,
  makeUser,
  startInProcess,
  testEnv,
  uploadFile,
  waitFor,
  waitForStatus,
} from '../helpers/stack.js';

interface Got {
  status: number;
  body: Record<string, unknown>;
  text: string;
}

t.test('notification payloads name every image, or say "everything"', async (t) => {
  const ids = Array.from({ length: 500 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
  const payloads = imagePayloads(77, [...ids, ...ids]);
  t.ok(payloads.length > 1, 'split into several notifications');
  t.ok(
    payloads.every((p) => Buffer.byteLength(p) < 8000),
    'each under the NOTIFY limit',
  );
  const channel = readModelChannel({ ns: 'x' });
  const named = payloads.flatMap((p) => {
    const inv = parseInvalidation(channel, p);
    return inv.kind === 'images' && inv.seq === 77 ? inv.ids : [];
  });
  t.same(new Set(named), new Set(ids));
  const many = Array.from(
    { length: 5_000 },
    (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`,
  );
  t.same(
    imagePayloads(78, many).map((p) => parseInvalidation(channel, p)),
    [{ kind: 'all-images', seq: 78 }],
  );
  t.same(parseInvalidation(channel, 'garbage'), { kind: 'all' });
});

t.test('GET /api/v1/images/:uuid from the cache is never stale after a commit', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const sql = env.sql();
  const user = await makeUser(env, 'premium_max');
  const other = await makeUser(env, 'premium');

  const up = await uploadFile(
    node.url,
    user.apiKey,
    await fs.readFile(path.join(FIXTURES, 'Canon_40D.jpg')),
    'canon.jpg',
  );
  t.equal(up.status, 201);
  const id = String(up.body.image_uuid);
  await waitForStatus(node.url, user.apiKey, id, ['completed']);

  const get = async (key: string | null, query = ''): Promise<Got> => {
    const r = await fetch(`${node.url}/api/v1/images/${id}${query}`, {
      headers: key ? { authorization: `Bearer ${key}` } : {},
    });
    const text = await r.text();
    return { status: r.status, body: JSON.parse(text) as Record<string, unknown>, text };
  };
  /** Edits the row without an event (so without a NOTIFY): a cached view keeps the old name. */
  const renameBehindProjector = (name: string) =>
    sql`update rm.images set original_filename = ${name} where id = ${id}`;
  /**
   * The API learns of a projected change by a NOTIFY delivered asynchronously right after the commit
   * (the window of this design, ~1 ms): the tests wait for it instead of racing it.
   */
  const notified = async () => {
    const [cp] = await sql<{ last_seq: number }[]>`
      select last_seq from rm.projection_checkpoint where name = 'main'`;
    const want = Number(cp?.last_seq ?? 0);
    const re = new RegExp(
      `^pixelfox_read_cache_invalidated_seq\\{namespace="${env.namespace}"\\} (\\d+)$`,
      'm',
    );
    await waitFor(`the API to be told of the changes up to ${want}`, async () => {
      const text = await (await fetch(`${node.url}/metrics`)).text();
      return Number(re.exec(text)?.[1] ?? 0) >= want;
    });
  };
  const lastSeq = async () => {
    const [row] = await sql<{ last_seq: number }[]>`select last_seq from rm.images where id = ${id}`;
    return Number(row?.last_seq ?? 0);
  };

  await t.test('the same answers as without a cache, for every caller', async (t) => {
    const first = await get(user.apiKey);
    const second = await get(user.apiKey);
    t.equal(first.status, 200);
    t.equal(second.text, first.text, 'a hit is byte for byte the miss');
    t.match(first.body, { image_uuid: id, status: 'completed', original_filename: 'canon.jpg' });
    const meta = first.body.metadata as Record<string, unknown>;
    t.ok(meta.exif, 'the owner sees EXIF');

    t.equal((await get(other.apiKey)).status, 404, 'a stranger: not found');
    t.equal((await get(null)).status, 404, 'nobody: not found');
    t.equal((await get('pfx_00000000_unknown-key-000000000000')).status, 401, 'an unknown key');
    const link = String(first.body.share_link);
    t.equal((await get(other.apiKey, '?share=wrongwrong1')).status, 404, 'a wrong share link');
    const shared = await get(other.apiKey, `?share=${link}`);
    const anon = await get(null, `?share=${link}`);
    t.equal(shared.status, 200);
    t.equal(anon.text, shared.text, 'the share view does not depend on the caller');
    t.notOk((shared.body.metadata as Record<string, unknown>).exif, 'no EXIF for a share link');
    t.same({ ...shared.body, metadata: null }, { ...first.body, metadata: null }, 'otherwise the same');
  });

  await t.test('an event the projector applies is seen by the next GET', async (t) => {
    t.equal((await get(user.apiKey)).body.original_filename, 'canon.jpg');
    await renameBehindProjector('renamed-without-event.jpg');
    t.equal(
      (await get(user.apiKey)).body.original_filename,
      'canon.jpg',
      'served from the cache (no event, no NOTIFY)',
    );
    const before = await lastSeq();
    const r = await fetch(`${node.url}/api/admin/images/${id}/reprocess`, {
      method: 'POST',
      headers: { authorization: `Bearer ${env.secrets.ADMIN_TOKEN}` },
    });
    t.equal(r.status, 202);
    await waitFor('the read model to apply the reprocess request', async () => (await lastSeq()) > before);
    await notified();
    // Whatever the reprocessing has reached meanwhile, the view now comes from the new row.
    t.equal((await get(user.apiKey)).body.original_filename, 'renamed-without-event.jpg');
    await waitForStatus(node.url, user.apiKey, id, ['completed']);
    t.equal((await get(user.apiKey)).body.status, 'completed');
  });

  await t.test('a revoked, rotated or disabled key is refused on the next request', async (t) => {
    const k = await createApiKey(sql, user.id, 'second');
    t.equal((await get(k.key)).status, 200);
    t.equal((await get(k.key)).status, 200, 'cached');
    t.ok(await revokeApiKey(sql, k.id));
    t.equal((await get(k.key)).status, 401, 'revoked');

    const k2 = await createApiKey(sql, user.id, 'third');
    t.equal((await get(k2.key)).status, 200);
    const rotated = await rotateApiKey(sql, k2.id);
    t.ok(rotated);
    t.equal((await get(k2.key)).status, 401, 'the rotated-out key');
    t.equal((await get(rotated?.key ?? '')).status, 200, 'its successor');

    t.equal((await get(user.apiKey)).status, 200);
    await updateUser(sql, user.id, { disabled: true });
    t.equal((await get(user.apiKey)).status, 401, 'a disabled user');
    await updateUser(sql, user.id, { disabled: false });
    t.equal((await get(user.apiKey)).status, 200, 'enabled again');
  });

  await t.test('a change committed while the LISTEN connection was down is not served', async (t) => {
    const cached = await get(user.apiKey);
    t.equal(cached.status, 200);
    await renameBehindProjector('not-notified.jpg');
    t.equal(
      (await get(user.apiKey)).body.original_filename,
      cached.body.original_filename,
      'served from the cache',
    );

    const listeners = () => sql<{ pid: number; state: string; query: string }[]>`
      select pid, state, query from pg_stat_activity
      where datname = current_database() and application_name = ${LISTEN_APPLICATION_NAME}`;
    const [old] = await listeners();
    t.ok(old, 'the API listens');
    // The outage and the change in one transaction: its NOTIFY (had there been one) would reach nobody.
    await sql.begin(async (tx) => {
      await tx`select pg_terminate_backend(${old?.pid ?? 0}, 5000)`;
      await tx`update rm.images set original_filename = 'changed-during-outage.jpg' where id = ${id}`;
    });
    await waitFor('the API to listen again', async () => {
      const now = await listeners();
      return now.some((l) => l.pid !== old?.pid && l.state === 'idle' && /^listen /.test(l.query));
    });
    t.equal((await get(user.apiKey)).body.original_filename, 'changed-during-outage.jpg');
  });

  await t.test('a delete through the API: the next GET is a 404', async (t) => {
    t.equal((await get(user.apiKey)).status, 200);
    const r = await fetch(`${node.url}/api/v1/images/${id}`, {
      method: 'DELETE',
      headers: { authorization: `Bearer ${user.apiKey}` },
    });
    t.equal(r.status, 202);
    t.equal((await get(user.apiKey)).status, 404);
  });
});
