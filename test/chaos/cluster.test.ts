// Clustered JetStream: a 3-node NATS cluster on loopback, the stack with NATS_REPLICAS=3 (event stream,
// advisory stream and KV buckets at R3), uploads under load while one NATS node is killed with SIGKILL
// and started again. Every acknowledged upload completes; nothing lost, nothing doubled.
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import t from 'tap';
import { makeUser } from '../helpers/stack.js';
import { chaosEnv, liftRateLimits, proc } from './helpers/env.js';
import { corpus, LoadClient, pool } from './helpers/load.js';
import { rng, sleep } from './helpers/random.js';
import { startNatsCluster, type NatsServer } from './helpers/servers.js';
import { summary, verifyAcked, waitConverged } from './helpers/verify.js';

t.test('3-node JetStream cluster, R3: kill -9 one NATS node mid-load, restart it', async (t) => {
  const r = rng();
  t.comment(`CHAOS_SEED=${r.seed}`);
  const servers = await startNatsCluster(t, 3);
  const natsUrl = servers.map((s) => s.url).join(',');
  const env = await chaosEnv(t, { natsUrl });
  await liftRateLimits(env);
  const extra = { NATS_REPLICAS: '3' };
  const storage = await proc(t, env, 'storage', ['api', 'storage', 'projector'], { extra });
  await proc(t, env, 'worker', ['worker'], { extra });

  // Everything the stack created is replicated three times.
  const nc = await connect({ servers: natsUrl.split(',') });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  const streams: { name: string; replicas: number; leader?: string }[] = [];
  for await (const s of jsm.streams.list())
    if (s.config.name.includes(env.namespace))
      streams.push({ name: s.config.name, replicas: s.config.num_replicas, leader: s.cluster?.leader });
  t.ok(streams.length >= 5, `${streams.length} streams of this namespace (events, advisories, KV buckets)`);
  t.same(
    streams.filter((s) => s.replicas !== 3).map((s) => s.name),
    [],
    'stream and every KV bucket at R3',
  );
  const events = await jsm.streams.info(env.names.stream);
  // Kill the leader of the event stream when possible: the hardest case (a new leader must be elected).
  const victim: NatsServer =
    servers.find((s) => s.name === events.cluster?.leader) ?? (servers[r.between(0, 3)] as NatsServer);

  const user = await makeUser(env, 'premium_max');
  const items = await corpus(40, { photos: 4 });
  const client = new LoadClient(() => storage.url, user.apiKey, { deadlineMs: 120_000 });
  const t0 = Date.now();
  const load = pool(items, 3, async (item, i) => {
    await sleep(i * 400 - (Date.now() - t0));
    return client.upload(item);
  });

  await sleep(r.between(3_000, 6_000));
  const killedAt = Date.now();
  await victim.kill9();
  await sleep(r.between(4_000, 8_000));
  const restartAt = Date.now();
  await victim.start();
  const outcomes = await load;
  const loadEnd = Date.now();

  t.ok(
    outcomes.every((o) => o.status >= 200 && o.status < 300),
    `every upload acknowledged in the end (${outcomes.filter((o) => o.status >= 300).length} not)`,
  );
  const ids = [...new Set(outcomes.map((o) => o.imageId ?? '').filter(Boolean))];
  const convergeMs = await waitConverged(env, ids, 120_000);
  const v = await verifyAcked(t, env, outcomes);
  // The restarted node caught up: the event stream is current on all three replicas.
  const after = await jsm.streams.info(env.names.stream);
  const replicas = after.cluster?.replicas ?? [];
  t.equal(replicas.length, 2, 'two followers besides the leader');
  const caughtUp = async () => {
    const info = await jsm.streams.info(env.names.stream);
    return (info.cluster?.replicas ?? []).every((p) => p.current && !p.offline);
  };
  const deadline = Date.now() + 30_000;
  while (!(await caughtUp()) && Date.now() < deadline) await sleep(250);
  t.ok(await caughtUp(), 'every replica current again');
  const refused = client.attempts.filter((a) => a.status === 0 || a.status >= 500);
  summary(t, 'nats-cluster-node-kill', {
    seed: r.seed,
    faults: 1,
    killed: victim.name,
    killed_was_leader: victim.name === events.cluster?.leader,
    down_ms: restartAt - killedAt,
    uploads: outcomes.length,
    acked: v.acked,
    retried_attempts: refused.length,
    lost: v.lost,
    duplicates: v.duplicates + v.duplicateEvents,
    completed: v.completed,
    converge_ms: Date.now() - restartAt,
    converge_after_load_ms: convergeMs,
    load_ms: loadEnd - t0,
  });
});
