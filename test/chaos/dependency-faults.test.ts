// Dependency faults: the event store (private NATS), the read-model database (private Postgres) and the
// S3 backup endpoint go away mid-load and come back. Services must reconnect by themselves, refuse work
// quickly and honestly while a dependency is missing (503 JSON; never a 2xx without its event), report
// it on /ready, and catch up afterwards without anyone's help.
import t from 'tap';
import { addPool } from '../../shared/pools.js';
import { startS3 } from '../helpers/s3.js';
import { makeUser } from '../helpers/stack.js';
import { chaosEnv, liftRateLimits, proc, setSetting, type ChaosEnv } from './helpers/env.js';
import { corpus, LoadClient, percentile } from './helpers/load.js';
import { pollReady, steadyUploads, type TimedOutcome } from './helpers/probe.js';
import { sleep } from './helpers/random.js';
import { startPrivateNats, startPrivatePostgres } from './helpers/servers.js';
import { streamFacts, summary, verifyAcked, waitConverged } from './helpers/verify.js';

const ALL = ['api', 'storage', 'worker', 'projector'] as const;
/** "Fails fast": an upload during an outage is answered within this (the NATS request timeout is 5 s). */
const FAIL_FAST_MS = 8_000;

const is2xx = (s: number) => s >= 200 && s < 300;

t.test('NATS restarted mid-load: 503 fast, /ready follows, reconnect, nothing lost', async (t) => {
  const nats = await startPrivateNats(t, 'restart');
  const env = await chaosEnv(t, { natsUrl: nats.url });
  await liftRateLimits(env);
  const node = await proc(t, env, 'node', ALL);
  const user = await makeUser(env, 'premium_max');
  const items = await corpus(100, { photos: 4 });
  const client = new LoadClient(() => node.url, user.apiKey, { retry: false, requestTimeoutMs: 30_000 });
  // Two kinds of clients: whole flows (session, then upload), and clients that got their session before
  // the outage and now send the file to the storage node.
  const flowItems = items.slice(0, 40);
  const directItems = items.slice(40);
  const sessions = new Map<string, Record<string, unknown>>();
  for (const item of directItems) sessions.set(item.name, (await client.session(item)).body);
  const ready = pollReady(() => node.url);
  const flows = steadyUploads(client, flowItems, { concurrency: 1, gapMs: 200 });
  const directs = steadyUploads(client, directItems, { concurrency: 2, gapMs: 500, sessions });
  t.teardown(() => Promise.all([flows.stop(), directs.stop(), ready.stop()]));

  await sleep(3_000);
  const downAt = Date.now();
  await nats.stop();
  await sleep(10_000);
  const upAt = Date.now();
  await nats.start();
  const readyAgain = await waitReady(ready, upAt, 30_000);
  const resumedAt = await waitStored([flows.results, directs.results], readyAgain, 20_000);
  // The projector follows the stream again: it reaches the head as of now while the load goes on.
  const caughtUpAt = await checkpointReaches(env, await streamHead(env), 30_000);
  await Promise.all([flows.stop(), directs.stop(), ready.stop()]);

  const results = [...flows.results, ...directs.results];
  if (process.env.CHAOS_DEBUG)
    t.comment(
      client.attempts
        .map((a) => `${a.step} ${a.startedAt - downAt} +${a.ms} ${a.status} ${a.code ?? ''} ${a.error ?? ''}`)
        .join('\n'),
      ready.samples.map((s) => `${s.at - downAt} +${s.ms} ${s.status}`).join(' | '),
    );
  // Started while NATS was down (after the clients could notice): answered fast, and refused with 503
  // JSON when answered before NATS came back.
  const started = results.filter((r) => r.startedAt >= downAt + 500 && r.startedAt < upAt);
  const during = started.filter((r) => r.startedAt + r.ms <= upAt);
  t.ok(
    directs.results.filter((r) => during.includes(r)).length >= 2,
    `${during.length} uploads answered during the outage`,
  );
  t.same(
    during.filter((r) => r.status !== 503).map((r) => `${r.item.name}:${r.status}`),
    [],
    'every upload answered during the outage: 503',
  );
  t.same(
    during.filter((r) => !(r.body.error as { code?: string } | undefined)?.code).map((r) => r.item.name),
    [],
    'each 503 in the JSON error shape',
  );
  const slow = started.filter((r) => r.ms > FAIL_FAST_MS);
  t.same(
    slow.map((r) => `${r.item.name}:${r.ms}ms`),
    [],
    `every upload started during the outage answered within ${FAIL_FAST_MS} ms`,
  );
  const after = results.filter((r) => r.startedAt >= readyAgain);
  t.ok(
    after.some((r) => r.status === 201),
    `uploads succeed again ${resumedAt - upAt} ms after NATS is back (no restart of the node)`,
  );
  const readyDuring = ready.samples.filter((s) => s.at >= downAt + 500 && s.at + s.ms <= upAt);
  t.ok(
    readyDuring.length > 0 && readyDuring.every((s) => s.status === 503),
    `/ready 503 during the outage (${readyDuring.length} probes)`,
  );
  t.ok(readyAgain - upAt < 15_000, `/ready 200 ${readyAgain - upAt} ms after NATS is back`);

  const retrying = new LoadClient(() => node.url, user.apiKey, { deadlineMs: 60_000 });
  const retried = [...(await flows.retryFailed(retrying)), ...(await directs.retryFailed(retrying))];
  if (process.env.CHAOS_DEBUG)
    t.comment(
      'retries:',
      retrying.attempts
        .map((a) => `${a.step} ${a.startedAt - downAt} +${a.ms} ${a.status} ${a.code ?? ''} ${a.error ?? ''}`)
        .join('\n'),
    );
  t.ok(
    retried.every((o) => is2xx(o.status)),
    'every refused upload is stored when tried again',
  );
  const outcomes = [...results.filter((r) => is2xx(r.status)), ...retried];
  // Every 2xx has its ImageStored in the stream (verifyAcked counts an acknowledged image without one as lost).
  const convergeMs = await waitConverged(env, acked(outcomes), 90_000);
  const projectorMs = caughtUpAt - upAt;
  t.ok(projectorMs < 15_000, `projector caught up with the stream ${projectorMs} ms after NATS is back`);
  const v = await verifyAcked(t, env, outcomes);
  summary(t, 'nats-restart', {
    faults: 1,
    outage_ms: upAt - downAt,
    uploads_tried: results.length,
    during_outage: during.length,
    during_statuses: [...new Set(during.map((r) => r.status))].join(','),
    started_during_p50_ms: percentile(
      started.map((r) => r.ms),
      50,
    ),
    started_during_max_ms: Math.max(0, ...started.map((r) => r.ms)),
    ready_again_ms: readyAgain - upAt,
    uploads_resumed_ms: resumedAt - upAt,
    projector_caught_up_ms: projectorMs,
    acked: v.acked,
    lost: v.lost,
    duplicates: v.duplicates + v.duplicateEvents,
    completed: v.completed,
    converge_ms: Date.now() - upAt,
    converge_after_load_ms: convergeMs,
  });
});

t.test('Postgres restarted mid-load: /ready 503, projector catches up, uploads resume', async (t) => {
  const pg = await startPrivatePostgres(t);
  const env = await chaosEnv(t, { pgBase: pg.url });
  await liftRateLimits(env);
  const node = await proc(
    t,
    env,
    'node',
    ALL,
    process.env.CHAOS_TRACE
      ? { extra: { NODE_OPTIONS: `--stack-trace-limit=50 --import ${process.env.CHAOS_TRACE}` } }
      : {},
  );
  const user = await makeUser(env, 'premium_max');
  const items = await corpus(80, { photos: 4 });
  const client = new LoadClient(() => node.url, user.apiKey, { retry: false, requestTimeoutMs: 30_000 });
  const ready = pollReady(() => node.url);
  const load = steadyUploads(client, items, { concurrency: 2, gapMs: 150 });
  t.teardown(() => Promise.all([load.stop(), ready.stop()]));

  await sleep(3_000);
  const downAt = Date.now();
  await pg.stop();
  await sleep(6_000);
  const upAt = Date.now();
  await pg.start();
  const readyAgain = await waitReady(ready, upAt, 30_000).catch((err: unknown) => {
    t.comment(node.output().slice(-8000));
    throw err;
  });
  const resumedAt = await waitStored(load.results, readyAgain, 20_000);
  await load.stop();
  await ready.stop();

  const during = load.results.filter((r) => r.startedAt >= downAt + 500 && r.startedAt + r.ms <= upAt);
  const after = load.results.filter((r) => r.startedAt >= readyAgain);
  if (process.env.CHAOS_DEBUG)
    t.comment(
      client.attempts
        .map((a) => `${a.step} ${a.startedAt - downAt} +${a.ms} ${a.status} ${a.code ?? ''} ${a.error ?? ''}`)
        .join('\n'),
      ready.samples.map((s) => `${s.at - downAt} +${s.ms} ${s.status} ${JSON.stringify(s.body)}`).join('\n'),
    );
  t.ok(during.length >= 3, `${during.length} uploads tried during the outage`);
  t.same(
    during.filter((r) => r.status !== 503).map((r) => `${r.item.name}:${r.status}`),
    [],
    'uploads during the outage: 503 (the client retries them)',
  );
  t.same(
    during.filter((r) => !(r.body.error as { code?: string } | undefined)?.code).map((r) => r.item.name),
    [],
    'each 503 in the JSON error shape',
  );
  t.ok(
    after.some((r) => r.status === 201),
    `uploads succeed again ${resumedAt - upAt} ms after Postgres is back`,
  );
  const readyDuring = ready.samples.filter((s) => s.at >= downAt + 500 && s.at + s.ms <= upAt);
  t.ok(
    readyDuring.length > 0 && readyDuring.every((s) => s.status === 503),
    `/ready 503 during the outage (${readyDuring.length} probes)`,
  );
  t.ok(readyAgain - upAt < 15_000, `/ready 200 ${readyAgain - upAt} ms after Postgres is back`);

  const retried = await load.retryFailed(new LoadClient(() => node.url, user.apiKey, { deadlineMs: 60_000 }));
  t.ok(
    retried.every((o) => is2xx(o.status)),
    'every refused upload is stored when tried again',
  );
  const outcomes = [...load.results.filter((r) => is2xx(r.status)), ...retried];
  const convergeMs = await waitConverged(env, acked(outcomes), 90_000);
  const facts = await streamFacts(env);
  const [cp] = await env.sql()<
    { last_seq: number }[]
  >`select last_seq from projection_checkpoint where name = 'main'`;
  t.equal(Number(cp?.last_seq), facts.lastSeq, 'projector checkpoint == stream head');
  const v = await verifyAcked(t, env, outcomes);
  summary(t, 'postgres-restart', {
    faults: 1,
    outage_ms: upAt - downAt,
    uploads_tried: load.results.length,
    during_outage: during.length,
    during_statuses: [...new Set(during.map((r) => r.status))].join(','),
    during_max_ms: Math.max(0, ...during.map((r) => r.ms)),
    ready_again_ms: readyAgain - upAt,
    uploads_resumed_ms: resumedAt - upAt,
    acked: v.acked,
    lost: v.lost,
    duplicates: v.duplicates + v.duplicateEvents,
    completed: v.completed,
    converge_ms: Date.now() - upAt,
    converge_after_load_ms: convergeMs,
  });
});

t.test('S3 down for 60 s during 20 uploads with backups on: every backup completes, once', async (t) => {
  const env = await chaosEnv(t);
  const s3 = await startS3();
  t.teardown(() => s3.close());
  await liftRateLimits(env);
  await setSetting(env, 's3_backup_enabled', true);
  await setSetting(env, 's3_backup_delay_minutes', 0);
  const node = await proc(t, env, 'node', ALL);
  // The S3 pool after the first start: the default local pool is only created when there is none.
  await addPool(env.sql(), {
    name: 'backup',
    storage_type: 's3',
    storage_tier: 'cold',
    public_base_url: `${s3.endpoint}/${s3.bucket}`,
    upload_api_url: null,
    node_id: '_any',
    is_backup_target: true,
    is_active: true,
    s3_bucket: s3.bucket,
    s3_region: 'us-east-1',
    s3_endpoint: s3.endpoint,
    s3_access_key: s3.accessKey,
    s3_secret_key: s3.secretKey,
    s3_force_path_style: true,
  });
  const user = await makeUser(env, 'premium_max');
  const items = await corpus(20, { photos: 3 });
  const client = new LoadClient(() => node.url, user.apiKey, { deadlineMs: 60_000 });

  const downAt = Date.now();
  await s3.stop();
  const outcomes = [];
  for (const item of items) outcomes.push(await client.upload(item));
  t.ok(
    outcomes.every((o) => o.status === 201),
    'uploads do not depend on S3',
  );
  const ids = acked(outcomes);
  // The first attempts fail while S3 is down (the backup worker does not wait for it).
  const failedFirst = await waitRows(env, ids, `last_error is not null`, 30_000);
  t.ok(failedFirst, 'backup attempts failed during the outage');
  await sleep(Math.max(0, 60_000 - (Date.now() - downAt)));
  const upAt = Date.now();
  await s3.start();
  const completed = await waitRows(env, ids, `status = 'completed'`, 120_000);
  t.ok(completed, 'every backup completed without manual action');
  const converged = Date.now();
  const keys = await s3.listKeys('images/');
  t.equal(keys.length, ids.length, `${keys.length} objects for ${ids.length} images: no duplicate objects`);
  const rows = await env.sql()<{ image_id: string; object_key: string; retry_count: number }[]>`
    select image_id, object_key, retry_count from image_backups where status = 'completed'`;
  t.same(
    [...new Set(rows.map((r) => r.object_key))].sort(),
    keys,
    'each object is the recorded key of one completed backup',
  );
  await waitConverged(env, ids, 60_000);
  const v = await verifyAcked(t, env, outcomes);
  const facts = await streamFacts(env);
  const backupsCompleted = [...facts.onceCounts.entries()].filter(([k]) => k.startsWith('BackupCompleted:'));
  t.equal(backupsCompleted.length, ids.length, 'one BackupCompleted per image');
  summary(t, 's3-outage', {
    faults: 1,
    outage_ms: upAt - downAt,
    uploads: outcomes.length,
    acked: v.acked,
    backups_completed: rows.length,
    s3_objects: keys.length,
    lost: v.lost,
    duplicates: v.duplicates + v.duplicateEvents + (keys.length - ids.length),
    max_backup_attempts: Math.max(0, ...rows.map((r) => r.retry_count)),
    converge_ms: converged - upAt,
  });
});

function acked(outcomes: readonly { status: number; imageId: string | null }[]): string[] {
  return [...new Set(outcomes.filter((o) => is2xx(o.status) && o.imageId).map((o) => o.imageId ?? ''))];
}

async function waitReady(
  ready: ReturnType<typeof pollReady>,
  after: number,
  timeoutMs: number,
): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const s = ready.firstAfter(after, 200);
    if (s) return s.at;
    if (Date.now() > deadline)
      throw new Error(`/ready never answered 200 again: ${JSON.stringify(ready.samples.at(-1)?.body)}`);
    await sleep(100);
  }
}

async function streamHead(env: ChaosEnv): Promise<number> {
  const jsm = await (await env.js()).jetstreamManager();
  return (await jsm.streams.info(env.names.stream)).state.last_seq;
}

/** When the projector's checkpoint reaches `seq`. */
async function checkpointReaches(env: ChaosEnv, seq: number, timeoutMs: number): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await env.sql()<{ last_seq: number }[]>`
      select last_seq from projection_checkpoint where name = 'main'`.catch(() => []);
    if (Number(row?.last_seq ?? 0) >= seq) return Date.now();
    if (Date.now() > deadline) throw new Error(`projector did not reach seq ${seq} within ${timeoutMs} ms`);
    await sleep(100);
  }
}

/** When the first upload started after `after` was stored (the load keeps running meanwhile). */
async function waitStored(
  results: TimedOutcome[] | TimedOutcome[][],
  after: number,
  timeoutMs: number,
): Promise<number> {
  const lists = (Array.isArray(results[0]) ? results : [results]) as TimedOutcome[][];
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = lists.flat().find((r) => r.startedAt >= after && r.status === 201);
    if (ok) return ok.startedAt + ok.ms;
    if (Date.now() > deadline) throw new Error('no upload stored after the dependency came back');
    await sleep(100);
  }
}

async function waitRows(env: ChaosEnv, ids: string[], where: string, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [row] = await env
      .sql()
      .unsafe<{ n: number }[]>(
        `select count(*)::int as n from image_backups where image_id = any($1::uuid[]) and ${where}`,
        [ids],
      );
    if ((row?.n ?? 0) === ids.length) return true;
    if (Date.now() > deadline) return false;
    await sleep(250);
  }
}
