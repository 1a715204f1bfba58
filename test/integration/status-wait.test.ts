// The status long poll (`GET /api/v1/images/:uuid/status?wait=N`) and the projection watch behind it
// (shared/projection-watch.ts), against a real stack: answered by the commit that completes the image,
// not by a timer; a pending image is answered with its status when the wait runs out; with the LISTEN
// connection killed the wait still sees the change (it reads Postgres instead).
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import { WATCH_APPLICATION_NAME } from '../../shared/pg-listen.js';
import {
  FIXTURES,
  getJson,
  makeUser,
  startInProcess,
  testEnv,
  uploadFile,
  waitFor,
} from '../helpers/stack.js';

const jpeg = (name = 'Canon_40D.jpg') => fs.readFile(path.join(FIXTURES, name));

t.test('a long poll is answered by the completing commit', async (t) => {
  const env = await testEnv(t);
  // No workers yet: the image stays pending until they are started below.
  const api = await startInProcess(env, { roles: ['api', 'storage', 'projector'] });
  t.teardown(() => api.close());
  const user = await makeUser(env);
  const up = await uploadFile(api.url, user.apiKey, await jpeg(), 'a.jpg');
  t.equal(up.status, 201);
  const id = String(up.body.image_uuid);
  const status = (wait?: number) =>
    getJson(`${api.url}/api/v1/images/${id}/status${wait === undefined ? '' : `?wait=${wait}`}`, user.apiKey);

  t.equal((await status()).body.status, 'pending', 'no worker: pending');
  const short = await status(1);
  t.equal(short.status, 200);
  t.equal(short.body.status, 'pending', 'the wait ran out: answered with the status it has');

  // A 30 s long poll, open before the worker exists; the worker then makes the variants.
  let answeredAt = 0;
  const long = status(30).then((r) => {
    answeredAt = Date.now();
    return r;
  });
  await new Promise((r) => setTimeout(r, 300));
  t.equal(answeredAt, 0, 'still waiting while nothing changes');
  const worker = await startInProcess(env, { roles: ['worker'] });
  t.teardown(() => worker.close());
  const r = await long;
  t.equal(r.status, 200);
  t.equal(r.body.status, 'completed', 'one request saw the image through to completed');
  t.equal(r.body.complete, true);
  t.equal((await status(30)).body.status, 'completed', 'a finished image is answered at once');

  // Bad waits are refused; someone else's image is not found, waiting or not.
  t.equal((await status(31)).status, 400);
  t.equal((await status(-1)).status, 400);
  const other = await makeUser(env, 'premium');
  const theirs = await getJson(`${api.url}/api/v1/images/${id}/status?wait=5`, other.apiKey);
  t.equal(theirs.status, 404);
});

t.test('without the LISTEN connection the wait falls back to Postgres', async (t) => {
  const env = await testEnv(t);
  const api = await startInProcess(env, { roles: ['api', 'storage', 'projector'] });
  t.teardown(() => api.close());
  const sql = env.sql();
  const user = await makeUser(env);
  const up = await uploadFile(api.url, user.apiKey, await jpeg(), 'b.jpg');
  t.equal(up.status, 201);
  const id = String(up.body.image_uuid);
  // Read-your-writes held without notifications too: the 201 came after the projection.
  t.equal(
    (await getJson(`${api.url}/api/v1/images/${id}/status`, user.apiKey)).body.status,
    'pending',
    'visible at once after the 201',
  );

  const watchers = () => sql<{ pid: number }[]>`
    select pid from pg_stat_activity
    where datname = current_database() and application_name = ${WATCH_APPLICATION_NAME}`;
  const [w] = await watchers();
  t.ok(w, 'the node watches the projection');
  // Kill it and keep killing it while the image is processed: notifications are lost.
  let killing = true;
  const killer = (async () => {
    while (killing) {
      await sql`select pg_terminate_backend(pid) from pg_stat_activity
        where datname = current_database() and application_name = ${WATCH_APPLICATION_NAME}`;
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  t.teardown(async () => {
    killing = false;
    await killer;
  });
  const long = getJson(`${api.url}/api/v1/images/${id}/status?wait=30`, user.apiKey);
  const worker = await startInProcess(env, { roles: ['worker'] });
  t.teardown(() => worker.close());
  const r = await long;
  t.equal(r.body.status, 'completed', 'seen through the fallback reads');
  killing = false;
  await killer;

  // Uploads after the outage get read-your-writes again, and the watch reconnects.
  await waitFor('the watch to reconnect', async () => (await watchers()).length === 1);
  const up2 = await uploadFile(api.url, user.apiKey, await jpeg('Canon_PowerShot_S40.jpg'), 'c.jpg');
  t.equal(up2.status, 201, 'another upload');
  const r2 = await getJson(
    `${api.url}/api/v1/images/${String(up2.body.image_uuid)}/status?wait=30`,
    user.apiKey,
  );
  t.equal(r2.body.status, 'completed');
});
