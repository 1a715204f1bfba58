// Process faults: the roles run as separate processes (api+storage, worker, projector) and each is
// killed with SIGKILL at random moments while a client uploads, then started again. The client retries
// what failed, like a real one. Afterwards every acknowledged upload must be complete and exactly once.
import t from 'tap';
import { makeUser } from '../helpers/stack.js';
import { chaosEnv, liftRateLimits, proc, type Proc } from './helpers/env.js';
import { corpus, LoadClient, pool, type Outcome } from './helpers/load.js';
import { rng, sleep } from './helpers/random.js';
import { summary, verifyAcked, waitConverged } from './helpers/verify.js';

const N = 40;

t.test('kill -9 of worker, projector and storage node under upload load', async (t) => {
  const r = rng();
  t.comment(`CHAOS_SEED=${r.seed}`);
  const env = await chaosEnv(t);
  await liftRateLimits(env);
  // The storage node first: the default pool is created by the first process, with its URL.
  const storage = await proc(t, env, 'storage', ['api', 'storage']);
  const worker = await proc(t, env, 'worker', ['worker']);
  const projector = await proc(t, env, 'projector', ['projector']);
  const user = await makeUser(env, 'premium_max');
  const items = await corpus(N, { photos: 6, corrupt: true });
  const client = new LoadClient(() => storage.url, user.apiKey, { deadlineMs: 200_000 });

  // Load: uploads spread over ~32 s, as long as the faults go on (4 at a time at most), then a few of
  // them again (a client that never saw its answer uploads again: must be the same image).
  const t0 = Date.now();
  let loadDone = false;
  let loadEndAt = 0;
  const load = (async () => {
    const first = await pool(items, 4, async (item, i) => {
      await sleep(i * 800 - (Date.now() - t0));
      return client.upload(item);
    });
    const again = await pool(items.slice(0, 6), 3, (item) => client.upload(item));
    loadDone = true;
    loadEndAt = Date.now();
    return [...first, ...again];
  })();

  // Faults: every role killed twice, in random order, at random moments during the load.
  const faults: string[] = [];
  const plan: Proc[] = r.shuffle([worker, projector, storage, worker, projector, storage]);
  const restarts: number[] = [];
  for (const p of plan) {
    await sleep(r.between(300, 2_500));
    await p.kill9();
    faults.push(p.name);
    await sleep(r.between(200, 2_000));
    const s0 = Date.now();
    await p.restart();
    restarts.push(Date.now() - s0);
  }
  const healedAt = Date.now();
  const outcomes: Outcome[] = await load;
  const loadMs = loadEndAt - t0;
  t.ok(loadDone, 'load finished');

  if (process.env.CHAOS_DEBUG)
    t.comment(
      client.attempts
        .map((a) => `${a.startedAt - t0} +${a.ms} ${a.step} ${a.status} ${a.code ?? ''} ${a.item}`)
        .join('\n'),
    );
  const refused = outcomes.filter((o) => o.status >= 400);
  const acked = outcomes.filter((o) => o.status >= 200 && o.status < 300);
  t.same(
    refused.map((o) => `${o.item.name}:${o.status}`),
    items.filter((i) => i.corrupt).map((i) => `${i.name}:422`),
    'only the corrupt file is refused, every other upload is acknowledged in the end',
  );
  for (const o of outcomes.slice(N + 1)) t.equal(o.duplicate, true, `${o.item.name} again: a duplicate`);

  const imageIds = [...new Set(acked.map((o) => o.imageId ?? ''))];
  // A worker killed mid-image holds its message until ack_wait (60 s) passes: allow for that.
  const convergeMs = await waitConverged(env, imageIds, 150_000).catch((err: unknown) => {
    t.comment(worker.output().slice(-3000));
    throw err;
  });
  const v = await verifyAcked(t, env, outcomes);
  t.equal(v.lost, 0, 'no acknowledged upload lost');
  t.equal(v.duplicates, 0, 'no duplicate images');
  t.equal(v.duplicateEvents, 0, 'no duplicate variant/processed events');
  const failedAttempts = client.attempts.filter((a) => a.status === 0 || a.status >= 500 || a.status === 409);
  const codes = new Map<string, number>();
  for (const a of failedAttempts) {
    const k = `${a.step}:${a.status}${a.code ? `:${a.code}` : ''}`;
    codes.set(k, (codes.get(k) ?? 0) + 1);
  }
  summary(t, 'process-faults', {
    seed: r.seed,
    faults: faults.length,
    kills: faults.join(','),
    uploads: outcomes.length,
    acked: v.acked,
    images: v.images,
    retried_attempts: failedAttempts.length,
    retry_reasons: [...codes].map(([k, n]) => `${k}×${n}`).join(' '),
    max_attempts: Math.max(...outcomes.map((o) => o.attempts)),
    load_ms: loadMs,
    restart_ms_max: Math.max(...restarts),
    lost: v.lost,
    duplicates: v.duplicates + v.duplicateEvents,
    completed: v.completed,
    failed: v.failed,
    orphan_originals: v.orphanOriginals,
    converge_ms: Date.now() - healedAt,
    converge_after_load_ms: convergeMs,
  });
});
