// Graceful shutdown: SIGTERM to a `pixelfox serve` process (every role) while it renders variants and
// while clients keep sending. It must stop taking new work (refused connections or 503, never a hang,
// never a 2xx without its event), finish or hand back its in-flight messages, close its connections and
// exit 0 within SHUTDOWN_TIMEOUT_MS plus a margin. After a restart everything completes, sooner than a
// message abandoned without nak could come back (ack_wait/backoff: 60 s).
import t from 'tap';
import sharp from 'sharp';
import { makeUser } from '../helpers/stack.js';
import { chaosEnv, liftRateLimits, proc } from './helpers/env.js';
import { corpus, LoadClient, type Item, type Outcome } from './helpers/load.js';
import { sleep } from './helpers/random.js';
import { summary, verifyAcked, waitConverged } from './helpers/verify.js';
import { createHash } from 'node:crypto';

const SHUTDOWN_TIMEOUT_MS = 5_000;
/** The runner waits up to 6 s for its fetch loop after the grace time; then NATS drain and SQL end. */
const EXIT_BOUND_MS = SHUTDOWN_TIMEOUT_MS + 8_000;

/** A photo-sized noisy JPEG: its variants take a few seconds, so SIGTERM finds work in flight. */
async function heavy(i: number): Promise<Item> {
  const bytes = await sharp({
    create: {
      width: 2400 + i * 8,
      height: 1600,
      channels: 3,
      background: { r: 40 + i, g: 90, b: 160 },
      noise: { type: 'gaussian', mean: 120, sigma: 30 },
    },
  })
    .jpeg({ quality: 80 })
    .toBuffer();
  return { name: `heavy-${i}.jpg`, bytes, sha256: createHash('sha256').update(bytes).digest('hex') };
}

t.test('SIGTERM while processing: stop intake, drain, exit 0, complete after restart', async (t) => {
  const env = await chaosEnv(t);
  await liftRateLimits(env);
  const node = await proc(t, env, 'node', ['api', 'storage', 'worker', 'projector']);
  const user = await makeUser(env, 'premium_max');
  const client = new LoadClient(() => node.url, user.apiKey, { retry: false, requestTimeoutMs: 30_000 });

  const heavyItems = await Promise.all([0, 1, 2, 3, 4, 5].map(heavy));
  const small = await corpus(30, { photos: 2 });
  const outcomes: Outcome[] = [];
  for (const item of heavyItems) outcomes.push(await client.upload(item));
  t.ok(
    outcomes.every((o) => o.status === 201),
    `heavy uploads stored (${outcomes.map((o) => o.status).join(',')})`,
  );
  // Wait until the worker is busy with them.
  const deadline = Date.now() + 30_000;
  for (;;) {
    const [row] = await env.sql()<
      { n: number }[]
    >`select count(*)::int as n from images where status = 'processing'`;
    if ((row?.n ?? 0) > 0) break;
    if (Date.now() > deadline) throw new Error('worker never started processing');
    await sleep(50);
  }

  // Clients keep coming: small uploads two at a time, each answer recorded with its start time.
  let stopClients = false;
  const during: (Outcome & { startedAt: number; ms: number })[] = [];
  const clients = [0, 1].map(async (k) => {
    for (let i = k; !stopClients && i < small.length; i += 2) {
      const item = small[i] as Item;
      const t0 = Date.now();
      const o = await client.upload(item);
      during.push({ ...o, startedAt: t0, ms: Date.now() - t0 });
      await sleep(100);
    }
  });
  await sleep(500);

  const sigAt = Date.now();
  const pid = node.pid();
  const code = await node.stop();
  const exitMs = Date.now() - sigAt;
  // Requests after the exit: refused outright.
  const after = await client.once(small[small.length - 1] as Item);
  stopClients = true;
  await Promise.all(clients);
  t.equal(code, 0, `exit code 0 (pid ${pid})`);
  t.ok(exitMs < EXIT_BOUND_MS, `exited in ${exitMs} ms (< ${EXIT_BOUND_MS})`);
  t.notMatch(node.output(), /shutdown took too long/, 'no forced exit');
  t.equal(after.status, 0, 'connection refused once the process is gone');

  // Every answer during the shutdown: 2xx (then its event exists, checked below), 503 JSON, or refused.
  const afterSig = during.filter((o) => o.startedAt >= sigAt);
  const bad = afterSig.filter(
    (o) => !(o.status === 0 || o.status === 503 || (o.status >= 200 && o.status < 300)),
  );
  t.same(
    bad.map((o) => `${o.item.name}:${o.status}`),
    [],
    'requests after SIGTERM: refused, 503 or (finished in time) 2xx',
  );
  t.ok(
    afterSig.every((o) => o.ms < EXIT_BOUND_MS + 2_000),
    `no request hung (max ${Math.max(0, ...afterSig.map((o) => o.ms))} ms)`,
  );
  for (const o of afterSig.filter((o) => o.status === 503))
    t.match(o.body, { error: { code: String } }, `${o.item.name}: 503 is JSON`);
  outcomes.push(...during);

  // Restart: what was in flight comes back at once (finished or nak'd), not after ack_wait.
  const restartAt = Date.now();
  await node.restart();
  const acked = outcomes.filter((o) => o.status >= 200 && o.status < 300);
  const convergeMs = await waitConverged(env, [...new Set(acked.map((o) => o.imageId ?? ''))], 50_000);
  const sinceRestart = Date.now() - restartAt;
  t.ok(sinceRestart < 45_000, `everything completed ${sinceRestart} ms after the restart (< ack_wait 60 s)`);
  const v = await verifyAcked(t, env, outcomes);
  summary(t, 'graceful-shutdown', {
    faults: 1,
    uploads: outcomes.length,
    acked: v.acked,
    after_sigterm: afterSig.length,
    after_sigterm_statuses: [...new Set(afterSig.map((o) => o.status))].join(','),
    exit_code: code,
    exit_ms: exitMs,
    lost: v.lost,
    duplicates: v.duplicates + v.duplicateEvents,
    completed: v.completed,
    failed: v.failed,
    converge_ms: sinceRestart,
    converge_wait_ms: convergeMs,
  });
});
