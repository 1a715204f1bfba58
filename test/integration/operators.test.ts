// Operator tools against a real stack: projection rebuild (while the API serves, partial, resumed after
// an abort and after kill -9 of the CLI), verify, the event CLI (tail, history), the example subscriber,
// failed jobs (a poison message and a delete that ran out of deliveries) and a disaster-recovery drill.
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import t from 'tap';
import sharp from 'sharp';
import { connect } from '@nats-io/transport-node';
import type { NatsConnection } from '@nats-io/nats-core';
import { jetstream, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { readCheckpoint, SWAP_LOCK, waitForCheckpoint } from '../../projections/projector.js';
import { BUILD, compareSchemas, LIVE, rebuild, verify } from '../../projections/rebuild.js';
import { READ_MODEL_TABLES } from '../../projections/schema.js';
import { createLogger } from '../../shared/logger.js';
import type { Sql } from '../../shared/db.js';
import { names, type Names } from '../../streams/subjects.js';
import { imageLife, publishAll } from '../helpers/events.js';
import {
  FIXTURES,
  getJson,
  makeUser,
  NATS_URL,
  ROOT,
  startInProcess,
  testEnv,
  uploadFile,
  waitFor,
  waitForStatus,
  type InProcess,
  type TestEnv,
} from '../helpers/stack.js';

const log = createLogger('warn');
const REAL_PHOTOS = ['Canon_40D.jpg', 'Nikon_D70.jpg', 'gps/DSCN0010.jpg'];

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a process of this test's system (the CLI, the example subscriber) to its end. */
function run(env: TestEnv, args: string[], extra: Record<string, string> = {}, timeoutMs = 60_000) {
  const child = spawn(process.execPath, args, {
    cwd: ROOT,
    env: { ...process.env, ...env.env(extra) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const done = new Promise<Run>((resolve) =>
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    }),
  );
  return { child, done, output: () => stdout + stderr };
}

/** The assertion message for an exit code: the process's stderr only when it failed. */
const exited = (r: Run) => (r.code === 0 ? 'exit 0' : `exit ${r.code}: ${r.stderr}`);

const cli = (env: TestEnv, args: string[], extra?: Record<string, string>) =>
  run(env, [path.join(ROOT, 'bin', 'pixelfox.mjs'), ...args], extra).done;

const jsonLines = (s: string) =>
  s
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as Record<string, unknown>);

async function connectNats(t: { teardown(fn: () => unknown): void }) {
  const nc = await connect({ servers: NATS_URL });
  t.teardown(() => nc.close());
  return { nc, js: jetstream(nc), jsm: await jetstreamManager(nc) };
}

async function head(jsm: JetStreamManager, n: Names): Promise<number> {
  return (await jsm.streams.info(n.stream)).state.last_seq;
}

/** A small JPEG of one colour (each call a different file, so uploads do not dedupe). */
async function generatedJpeg(i: number): Promise<Buffer> {
  return sharp({
    create: { width: 96 + i, height: 64, channels: 3, background: { r: (i * 53) % 256, g: 90, b: 200 } },
  })
    .jpeg()
    .toBuffer();
}

/** Uploads the real photos and `generated` made-up ones; waits until each is processed. */
async function uploadImages(node: InProcess, apiKey: string, generated: number): Promise<string[]> {
  const files: [string, Buffer][] = [];
  for (const f of REAL_PHOTOS) files.push([path.basename(f), await fs.readFile(path.join(FIXTURES, f))]);
  for (let i = 0; i < generated; i++) files.push([`gen-${i}.jpg`, await generatedJpeg(i)]);
  const ids: string[] = [];
  for (const [name, bytes] of files) {
    const r = await uploadFile(node.url, apiKey, bytes, name);
    if (r.status !== 201) throw new Error(`upload of ${name}: ${r.status} ${JSON.stringify(r.body)}`);
    ids.push(String(r.body.image_uuid));
  }
  for (const id of ids) await waitForStatus(node.url, apiKey, id, ['completed']);
  return ids;
}

/** Synthetic image lives of `userId` in the node's default pool (backups, moves, deletes, purges). */
async function publishLives(
  sql: Sql,
  nc: NatsConnection,
  n: Names,
  userId: string,
  count: number,
) {
  const [pool] = await sql<{ id: string }[]>`select id from storage_pools where name = 'default'`;
  const pools = { a: pool?.id ?? randomUUID(), b: randomUUID(), s3: randomUUID() };
  const lives = Array.from({ length: count }, (_, i) => imageLife(i, pools, userId));
  const last = await publishAll(nc, n, lives.flat());
  // the images that are still there at the end (every 7th is deleted)
  const alive = lives.filter((_, i) => i % 7 !== 0).map((l) => l[0]?.image_id ?? '');
  return { last, alive };
}

/** A copy of the live read models, to compare with after a rebuild. */
async function snapshot(sql: Sql, schema: string): Promise<void> {
  await sql.unsafe(`drop schema if exists "${schema}" cascade; create schema "${schema}"`);
  for (const table of Object.keys(READ_MODEL_TABLES))
    await sql.unsafe(`create table "${schema}"."${table}" as table "${LIVE}"."${table}"`);
}

/** GET /api/v1/images/:uuid in a loop (two at a time) until stopped; every answer's status is kept. */
function keepReading(url: string, apiKey: string, ids: string[]) {
  let stopped = false;
  const statuses: number[] = [];
  const loop = async (offset: number) => {
    for (let i = offset; !stopped; i++) {
      const r = await fetch(`${url}/api/v1/images/${ids[i % ids.length]}`, {
        headers: { authorization: `Bearer ${apiKey}` },
      });
      await r.arrayBuffer();
      statuses.push(r.status);
    }
  };
  const loops = [loop(0), loop(1)];
  return {
    statuses,
    stop: async () => {
      stopped = true;
      await Promise.all(loops);
      return statuses;
    },
  };
}

const schemaExists = async (sql: Sql, schema: string) =>
  (await sql`select 1 from information_schema.schemata where schema_name = ${schema}`).length > 0;

/** Index names (without their schema) and definitions of a read-model schema, for comparing two. */
async function indexNames(sql: Sql, schema: string): Promise<string[]> {
  const rows = await sql<{ d: string }[]>`
    select indexdef as d from pg_indexes where schemaname = ${schema} order by indexname`;
  return rows.map((r) => r.d.replaceAll(`${schema}.`, '').replaceAll(`"${schema}".`, ''));
}

t.test('rebuild while the API serves; partial; resumed after abort and kill -9; verify', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const { nc, js, jsm } = await connectNats(t);
  const n = names(env.namespace);
  const sql = env.sql();
  const user = await makeUser(env, 'premium');
  const real = await uploadImages(node, user.apiKey, 1);
  const { alive } = await publishLives(sql, nc, n, user.id, 1600);
  const end = await head(jsm, n);
  await waitForCheckpoint(sql, end, 60_000);
  const o = { sql, js, jsm, names: n, log };

  await t.test('full rebuild while the API keeps answering', async (t) => {
    await snapshot(sql, 'before_full');
    const indexesBefore = await indexNames(sql, LIVE);
    const reading = keepReading(node.url, user.apiKey, [...real, ...alive.slice(0, 40)]);
    await waitFor('the first reads', async () => reading.statuses.length > 0);
    const seq = await rebuild(o);
    const statuses = await reading.stop();
    t.equal(seq, end, 'switched in at the head of the stream');
    t.ok(statuses.length >= 10, `${statuses.length} reads during the rebuild`);
    t.same(
      statuses.filter((s) => s !== 200),
      [],
      'every read during the rebuild and the switch answered 200',
    );
    t.equal(await readCheckpoint(sql, LIVE, 'main'), end, 'live checkpoint at the head');
    t.notOk(await schemaExists(sql, BUILD), 'the build schema became the live one');
    t.same(await compareSchemas(sql, 'before_full', LIVE), [], 'the rebuilt tables equal the old ones');
    t.same(
      await indexNames(sql, LIVE),
      indexesBefore,
      'the indexes a rebuild defers until its tables are filled are all there after the switch',
    );
    const v = await verify(o);
    t.same(v, { seq: end, differences: [] }, 'verify: a clean replay gives the same tables');

    // The live projector goes on after the switch.
    const more = await uploadFile(node.url, user.apiKey, await generatedJpeg(50), 'after.jpg');
    t.equal(more.status, 201);
    await waitForStatus(node.url, user.apiKey, String(more.body.image_uuid), ['completed']);
    t.ok((await readCheckpoint(sql, LIVE, 'main')) > end, 'the live projector applies new events');
  });

  await t.test('partial rebuild of one read model', async (t) => {
    const indexesBefore = await indexNames(sql, LIVE);
    await waitForCheckpoint(sql, await head(jsm, n));
    await snapshot(sql, 'before_partial');
    const seq = await rebuild(o, { tables: ['images'] });
    t.equal(seq, await readCheckpoint(sql, LIVE, 'main'));
    t.same(await compareSchemas(sql, 'before_partial', LIVE), []);
    t.notOk(await schemaExists(sql, BUILD));
    await t.rejects(rebuild(o, { tables: ['imagez'] }), /unknown read model imagez/);
    const cli1 = await cli(env, ['projections', 'rebuild', '--projection', 'images,image_variants']);
    t.equal(cli1.code, 0, exited(cli1));
    t.match(cli1.stdout, /switched in at sequence \d+/);
    t.same(await compareSchemas(sql, 'before_partial', LIVE), [], 'the CLI form too');
    t.same(await indexNames(sql, LIVE), indexesBefore, 'the swapped tables keep their indexes');
  });

  await t.test('a rebuild aborted midway continues where it stopped', async (t) => {
    const target = await head(jsm, n);
    await waitForCheckpoint(sql, target);
    const ac = new AbortController();
    await t.rejects(
      rebuild({
        ...o,
        batchSize: 500,
        signal: ac.signal,
        onProgress: (done, total) => {
          if (done > 0 && done < total / 2) ac.abort();
        },
      }),
      { name: 'AbortError' },
    );
    const stoppedAt = await readCheckpoint(sql, BUILD, 'main');
    t.ok(stoppedAt > 0 && stoppedAt < target, `stopped at ${stoppedAt} of ${target}`);
    const starts: number[] = [];
    const seq = await rebuild({ ...o, onProgress: (done) => starts.push(done) });
    t.equal(starts[0], stoppedAt, 'the second run started from the build checkpoint, not from 0');
    t.equal(seq, target);
    t.same((await verify(o)).differences, []);
  });

  await t.test('kill -9 of `pixelfox projections rebuild`, then run it again', async (t) => {
    const target = await head(jsm, n);
    const first = run(env, [path.join(ROOT, 'bin', 'pixelfox.mjs'), 'projections', 'rebuild']);
    const killedAt = await waitFor(
      'the build to commit its first batch',
      async () => {
        if (first.child.exitCode !== null) throw new Error(`finished before the kill:\n${first.output()}`);
        if (!(await schemaExists(sql, BUILD))) return null;
        const cp = await sql
          .unsafe<{ last_seq: number }[]>(`select last_seq from "${BUILD}".projection_checkpoint`)
          .catch(() => []);
        const at = Number(cp[0]?.last_seq ?? 0);
        if (at <= 0) return null;
        first.child.kill('SIGKILL');
        return at;
      },
      60_000,
    );
    const r1 = await first.done;
    t.equal(r1.code, null, 'killed');
    const stoppedAt = await readCheckpoint(sql, BUILD, 'main');
    t.ok(stoppedAt >= killedAt && stoppedAt < target, `killed at ${stoppedAt} of ${target}`);
    const again = await cli(env, ['projections', 'rebuild']);
    t.equal(again.code, 0, exited(again));
    t.match(again.stdout, `switched in at sequence ${target}`);
    const firstProgress = /rebuild: (\d+)\/(\d+)/.exec(again.stderr);
    t.equal(Number(firstProgress?.[1]), stoppedAt, 'it continued from the build checkpoint');
    t.notOk(await schemaExists(sql, BUILD));
  });

  await t.test('`projections verify` says identical, then finds a row broken by hand', async (t) => {
    const ok = await cli(env, ['projections', 'verify']);
    t.equal(ok.code, 0, exited(ok));
    t.match(ok.stdout, /^identical \(at sequence \d+\)/);
    const broken = real[0] ?? '';
    await sql.unsafe(`update "${LIVE}".images set width = width + 1 where id = $1`, [broken]);
    const bad = await cli(env, ['projections', 'verify']);
    t.equal(bad.code, 1, 'exit code 1 on a difference');
    t.match(bad.stdout, /2 difference\(s\) at sequence \d+/);
    t.match(bad.stdout, new RegExp(`images live_only: .*"id":"${broken}"`));
    t.match(bad.stdout, new RegExp(`images rebuilt_only: .*"id":"${broken}"`));
    const asJson = await cli(env, ['projections', 'verify', '--json']);
    t.equal(asJson.code, 1);
    const parsed = JSON.parse(asJson.stdout) as { differences: { table: string; row: { id: string } }[] };
    t.same(
      parsed.differences.map((d) => [d.table, d.row.id]),
      [
        ['images', broken],
        ['images', broken],
      ],
    );
    // A rebuild repairs it.
    await rebuild(o);
    t.same((await verify(o)).differences, [], 'repaired by a rebuild');
  });
});

t.test('event CLI: events tail, images history; the example subscriber', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const { nc, jsm } = await connectNats(t);
  const n = names(env.namespace);
  const user = await makeUser(env, 'premium');
  const uploaded = await uploadImages(node, user.apiKey, 0);
  const image = uploaded[0] ?? '';
  const stored = await head(jsm, n);
  const tA = Date.now();
  await waitFor('the clock to move on', async () => Date.now() > tA + 1);
  const since = new Date();
  const { last } = await publishLives(env.sql(), nc, n, user.id, 20);
  const firstOfLives = stored + 1;

  const [byType, byImage, fromSeq, bySince, history, historyJson, subscriber] = await Promise.all([
    cli(env, ['events', 'tail', '--type', 'ImageStored', '--json-lines']),
    cli(env, ['events', 'tail', '--image', image]),
    cli(env, ['events', 'tail', '--from-seq', String(last - 4)]),
    cli(env, ['events', 'tail', '--since', since.toISOString()]),
    cli(env, ['images', 'history', image]),
    cli(env, ['images', 'history', image, '--json']),
    run(env, ['--import', 'tsx', path.join(ROOT, 'streams', 'examples', 'subscriber.ts')], {
      LIMIT: '1',
      DURABLE: `${env.namespace}_example-test`,
    }).done,
  ]);

  const typed = jsonLines(byType.stdout);
  t.equal(byType.code, 0, exited(byType));
  t.equal(typed.length, 3 + 20, 'one line per ImageStored (3 real uploads, 20 synthetic)');
  t.ok(
    typed.every((e) => e.type === 'ImageStored' && typeof e.seq === 'number' && e.version === 2),
    'only ImageStored, each with its sequence',
  );
  t.same(
    typed.map((e) => e.seq),
    [...typed.map((e) => Number(e.seq))].sort((a, b) => a - b),
    'in stream order',
  );

  const mine = jsonLines(byImage.stdout);
  t.ok(mine.length >= 5, `${mine.length} events of the image`);
  t.ok(
    mine.every((e) => e.image_id === image),
    'only the image',
  );
  t.equal(mine[0]?.type, 'ImageStored');
  t.ok(
    mine.some((e) => e.type === 'ImageProcessed'),
    'processed',
  );

  const tail = jsonLines(fromSeq.stdout);
  t.same(
    tail.map((e) => e.seq),
    [last - 4, last - 3, last - 2, last - 1, last],
    '--from-seq N starts at N',
  );

  const after = jsonLines(bySince.stdout);
  t.equal(after[0]?.seq, firstOfLives, '--since starts with the first event after that time');
  t.equal(after.length, last - stored);

  t.equal(history.code, 0, exited(history));
  const lines = history.stdout.trim().split('\n');
  t.equal(lines.length, mine.length, 'history: one line per event');
  t.match(lines[0], /^\s*\d+\s+\S+\s+ImageStored\s+node=local /);
  const seqs = lines.map((l) => Number(l.trim().split(/\s+/)[0]));
  t.same(
    seqs,
    mine.map((e) => e.seq),
    'history: in stream order, the same events as the tail',
  );
  const hj = JSON.parse(historyJson.stdout) as { seq: number; type: string; image_id: string }[];
  t.same(
    hj.map((e) => [e.seq, e.type, e.image_id]),
    mine.map((e) => [e.seq, e.type, e.image_id]),
  );
  const none = await cli(env, ['images', 'history', randomUUID()]);
  t.equal(none.code, 1, 'an image without events: exit 1');

  t.equal(subscriber.code, 0, exited(subscriber));
  const seen = jsonLines(subscriber.stdout);
  t.equal(seen.length, 1, 'LIMIT=1: one line, then it exits');
  const first = String(seen[0]?.image);
  t.ok(uploaded.includes(first), 'the first processed image is one of the uploads');
  const view = await getJson(`${node.url}/api/v1/images/${first}`, user.apiKey);
  t.match(seen[0], {
    width: view.body.width,
    height: view.body.height,
    variants: (view.body.variants as unknown[]).length,
  });
});

t.test('failed jobs: a poison message and a delete out of deliveries; list and retry', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const { js, jsm } = await connectNats(t);
  const n = names(env.namespace);
  const sql = env.sql();
  const nodeId = node.config.nodeId;
  const admin = { authorization: `Bearer ${env.secrets.ADMIN_TOKEN}` };
  const user = await makeUser(env, 'premium');
  const photo = await uploadFile(node.url, user.apiKey, await generatedJpeg(7), 'doomed.jpg');
  const image = String(photo.body.image_uuid);
  await waitForStatus(node.url, user.apiKey, image, ['completed']);

  // 1. A poison message: bytes that are no event, on the subject this node's processor consumes.
  const poisonImage = randomUUID();
  const poison = await js.publish(
    n.eventSubject('ImageStored', nodeId, poisonImage),
    new TextEncoder().encode('{"type": "ImageStored", "version": 2, "data": '),
  );
  const poisonJobs = await waitFor('both ImageStored consumers to terminate it', async () => {
    const rows = await sql<
      { consumer: string; kind: string; event_type: string; image_id: string; reason: string }[]
    >`select * from failed_jobs where stream_seq = ${poison.seq} order by consumer`;
    return rows.length === 2 ? rows : null;
  });
  t.same(
    poisonJobs.map((j) => [j.consumer, j.kind, j.event_type, j.image_id]),
    [
      [n.durable('backup-scheduler', nodeId), 'terminated', 'ImageStored', poisonImage],
      [n.durable('processor', nodeId), 'terminated', 'ImageStored', poisonImage],
    ],
  );
  t.match(poisonJobs[0]?.reason, /undecodable event/);

  // 2. A delete that runs out of deliveries: the projector is held (as behind a long rebuild switch),
  //    so the deleter never sees the delete projected and retries until max_deliver. The deleter's real
  //    limits (20 deliveries, backoff 10 s / 1 min / 5 min) take far too long for a test: this
  //    namespace's deleter consumer is changed to 3 deliveries without backoff (the handler's own
  //    500 ms retry delay then applies).
  const deleter = n.durable('deleter', nodeId);
  const current = await jsm.consumers.info(n.stream, deleter);
  await jsm.consumers.update(n.stream, deleter, { ...current.config, max_deliver: 3, backoff: [] });
  const hold = await sql.reserve();
  await hold`select pg_advisory_lock(${SWAP_LOCK})`;
  let held = true;
  const release = async () => {
    if (!held) return;
    held = false;
    await hold`select pg_advisory_unlock(${SWAP_LOCK})`;
    hold.release();
  };
  t.teardown(release);
  const del = await fetch(`${node.url}/api/v1/images/${image}`, {
    method: 'DELETE',
    headers: { authorization: `Bearer ${user.apiKey}` },
  });
  t.equal(del.status, 202);
  const [deleteJob] = await waitFor(
    'the deleter to run out of deliveries',
    async () => {
      const rows = await sql<
        { stream_seq: number; kind: string; deliveries: number; event_type: string }[]
      >`select * from failed_jobs where consumer = ${deleter}`;
      return rows.length > 0 ? rows : null;
    },
    60_000,
  );
  t.match(deleteJob, { kind: 'max_deliveries', event_type: 'ImageDeleted', deliveries: 3 });
  await release();

  // Listed by the CLI and the admin API.
  const listed = await cli(env, ['jobs', 'failed', '--json']);
  t.equal(listed.code, 0, exited(listed));
  const jobs = JSON.parse(listed.stdout) as { consumer: string; stream_seq: number; kind: string }[];
  t.same(
    jobs.map((j) => `${j.consumer}:${j.stream_seq}:${j.kind}`).sort(),
    [
      `${deleter}:${deleteJob?.stream_seq}:max_deliveries`,
      `${n.durable('backup-scheduler', nodeId)}:${poison.seq}:terminated`,
      `${n.durable('processor', nodeId)}:${poison.seq}:terminated`,
    ].sort(),
  );
  const api = await fetch(`${node.url}/api/admin/jobs/failed`, { headers: admin });
  t.equal(api.status, 200);
  t.equal(((await api.json()) as unknown[]).length, 3);
  t.equal((await fetch(`${node.url}/api/admin/jobs/failed`)).status, 401, 'admin token required');

  // The poison message cannot be retried (there is nothing to ask for again): skipped, still listed.
  const retryPoison = await cli(env, [
    'jobs',
    'failed',
    '--retry',
    `${n.durable('processor', nodeId)}:${poison.seq}`,
  ]);
  t.equal(retryPoison.code, 1, 'nothing retried: exit 1');
  t.match(retryPoison.stdout, /retried 0 job\(s\)/);
  const viaApi = await fetch(`${node.url}/api/admin/jobs/failed/retry`, {
    method: 'POST',
    headers: { ...admin, 'content-type': 'application/json' },
    body: JSON.stringify({ consumer: n.durable('backup-scheduler', nodeId), stream_seq: poison.seq }),
  });
  t.equal(viaApi.status, 202);
  t.same(await viaApi.json(), { retried: 0 });
  const [stillOpen] = await sql<
    { n: number }[]
  >`select count(*)::int as n from failed_jobs where stream_seq = ${poison.seq} and retried_at is null`;
  t.equal(stillOpen?.n, 2, 'the poison message stays listed for an operator');
  const raw = await cli(env, ['events', 'tail', '--from-seq', String(poison.seq)]);
  t.match(jsonLines(raw.stdout)[0], { seq: poison.seq, undecodable: String }, 'its raw bytes can be read');

  // The delete is retried: a new request reaches the deleter, which removes the files and purges.
  const pool = path.join(env.dataDir, 'pools', 'default');
  const [row] = await sql<{ stored_path: string }[]>`select stored_path from images where id = ${image}`;
  const original = path.join(pool, row?.stored_path ?? 'missing');
  t.ok(await fs.stat(original), 'the original is still on disk');
  const retried = await cli(env, ['jobs', 'failed', '--retry', `${deleter}:${deleteJob?.stream_seq}`]);
  t.equal(retried.code, 0, exited(retried));
  t.match(retried.stdout, /retried 1 job\(s\)/);
  await waitFor(
    'the image to be purged',
    async () => (await sql`select 1 from images where id = ${image}`).length === 0,
    30_000,
  );
  await t.rejects(fs.stat(original), { code: 'ENOENT' }, 'the files are gone');
  const open = await fetch(`${node.url}/api/admin/jobs/failed`, { headers: admin });
  t.same(
    ((await open.json()) as { consumer: string }[]).map((j) => j.consumer).sort(),
    [n.durable('backup-scheduler', nodeId), n.durable('processor', nodeId)],
    'the retried job is no longer open',
  );
  const all = await fetch(`${node.url}/api/admin/jobs/failed?all=true`, { headers: admin });
  const retriedRow = ((await all.json()) as { consumer: string; retried_at: string | null }[]).find(
    (j) => j.consumer === deleter,
  );
  t.ok(retriedRow?.retried_at, 'kept with its retry time');
});

t.test('disaster recovery: drop the read-model schema, rebuild, same API answers', async (t) => {
  const env = await testEnv(t);
  const node = await startInProcess(env);
  t.teardown(() => node.close());
  const { nc, js, jsm } = await connectNats(t);
  const n = names(env.namespace);
  const sql = env.sql();
  const user = await makeUser(env, 'premium');
  const real = await uploadImages(node, user.apiKey, 1);
  const { alive } = await publishLives(sql, nc, n, user.id, 400);
  const end = await head(jsm, n);
  await waitForCheckpoint(sql, end, 60_000);
  const [backedUp] = await sql<
    { n: number }[]
  >`select count(*)::int as n from image_backups where status = 'completed'`;
  t.ok((backedUp?.n ?? 0) > 0, 'some images have completed backups');

  const sample = [...real, ...alive.slice(0, 30)];
  const answers = async () => {
    const one: Record<string, unknown> = {};
    for (const id of sample) {
      const r = await getJson(`${node.url}/api/v1/images/${id}`, user.apiKey);
      if (r.status !== 200) return { ok: false, one, list: [] };
      one[id] = r.body;
    }
    const list: unknown[] = [];
    let cursor: string | null = null;
    do {
      const r = await getJson(
        `${node.url}/api/v1/images?limit=100${cursor ? `&cursor=${cursor}` : ''}`,
        user.apiKey,
      );
      if (r.status !== 200) return { ok: false, one, list };
      list.push(...(r.body.images as unknown[]));
      cursor = r.body.next_cursor as string | null;
    } while (cursor);
    return { ok: true, one, list };
  };
  const before = await answers();
  t.ok(before.ok);
  t.equal(before.list.length, real.length + alive.length, 'every live image is listed');
  const realView = before.one[real[0] ?? ''] as { variants: unknown[]; metadata: unknown; backups: unknown };
  t.ok(realView.variants.length > 0 && realView.metadata, 'a real upload has variants and metadata');

  await sql.unsafe(`drop schema "${LIVE}" cascade`);
  // Routes that read Postgres on every request (GET /api/v1/images/:uuid may answer from its cache,
  // which a hand-made DROP SCHEMA does not invalidate; the rebuild's switch flushes it below).
  t.not(
    (await getJson(`${node.url}/api/v1/images?limit=1`, user.apiKey)).status,
    200,
    'the API has lost its data (list)',
  );
  t.not(
    (await getJson(`${node.url}/api/v1/images/${real[0]}/status`, user.apiKey)).status,
    200,
    'the API has lost its data (status)',
  );

  const seq = await rebuild({ sql, js, jsm, names: n, log });
  t.equal(seq, end, 'rebuilt from the stream up to the head');
  await waitForCheckpoint(sql, end);
  const after = await waitFor('the API to answer again', async () => {
    const a = await answers();
    return a.ok ? a : null;
  });
  t.same(after.one, before.one, 'each image answers as before');
  t.same(after.list, before.list, 'the list answers as before');
  t.same((await verify({ sql, js, jsm, names: n, log })).differences, []);

  // The live projector (not restarted) goes on.
  const more = await uploadFile(node.url, user.apiKey, await generatedJpeg(99), 'after-dr.jpg');
  t.equal(more.status, 201);
  await waitForStatus(node.url, user.apiKey, String(more.body.image_uuid), ['completed']);
});
