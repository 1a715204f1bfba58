// The projector applies a batch as a few set-based statements (one per event type and round, see
// groupBatch). Its read models must be exactly those of applying the events one at a time in stream
// order — the same engine with batches of one event is that reference — for histories with every twist:
// interleaved images, failures and reprocessing, re-created variants, backup retries, failed and
// completed moves, late work after a delete, purges, and events stored twice.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { runProjector } from '../../projections/projector.js';
import { compareSchemas } from '../../projections/rebuild.js';
import { ensureReadModels } from '../../projections/schema.js';
import { createLogger } from '../../shared/logger.js';
import { applyStream } from '../../streams/apply.js';
import { names } from '../../streams/subjects.js';
import { publishAll } from '../helpers/events.js';
import { interleave, richLife, seeded } from '../helpers/histories.js';
import { NATS_URL, testEnv } from '../helpers/stack.js';

const log = createLogger('warn');

t.test('batched application equals one event at a time', async (t) => {
  const env = await testEnv(t);
  const nc = await connect({ servers: NATS_URL });
  t.teardown(() => nc.close());
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const n = names(env.namespace);
  await applyStream(jsm, n, 1);
  const sql = env.sql();
  const pools = { a: randomUUID(), b: randomUUID(), s3: randomUUID() };
  const users = [randomUUID(), randomUUID(), randomUUID()];
  const LIVES = 180;
  const lives = Array.from({ length: LIVES }, (_, i) => richLife(i, pools, users[i % 3] ?? ''));
  const last = await publishAll(nc, n, interleave(lives, seeded(20261128)));

  const build = async (schema: string, batchSize: number) => {
    await ensureReadModels(sql, schema);
    await runProjector({
      js,
      sql,
      names: n,
      log,
      signal: new AbortController().signal,
      schema,
      exclusive: true,
      stopAtSeq: last,
      batchSize,
    });
  };
  await build('one_by_one', 1);
  await build('batched', 5000);
  await build('small_batches', 37);
  t.same(await compareSchemas(sql, 'one_by_one', 'batched'), [], 'one batch: identical');
  t.same(await compareSchemas(sql, 'one_by_one', 'small_batches'), [], 'batches of 37: identical');
  // Two appliers on one schema (no leader lock between them): each batch moves the checkpoint by
  // compare-and-set inside its transaction, so the loser's whole transaction is rolled back, however
  // far its pipelined statements got, and no event is applied twice.
  await ensureReadModels(sql, 'raced');
  const race = () =>
    runProjector({
      js,
      sql,
      names: n,
      log,
      signal: new AbortController().signal,
      schema: 'raced',
      exclusive: true,
      stopAtSeq: last,
      batchSize: 23,
    });
  await Promise.all([race(), race()]);
  t.same(await compareSchemas(sql, 'one_by_one', 'raced'), [], 'two racing appliers: identical');

  // And the reference itself is right where the history says what to expect.
  const [late] = await sql<
    { n: number }[]
  >`select count(*)::int as n from batched.image_variants where bytes = 999`;
  t.equal(late?.n, 0, 'a variant reported after the delete is not recorded');
  const usage = await sql<{ ok: boolean }[]>`
    select u.image_count = count(i.id) and u.used_bytes = coalesce(sum(i.size), 0) as ok
    from batched.user_usage u left join batched.images i on i.user_id = u.user_id and i.deleted_at is null
    group by u.user_id, u.image_count, u.used_bytes`;
  t.same(
    usage.map((u) => u.ok),
    [true, true, true],
    "each user's usage counts each live image once, despite duplicates",
  );
  const [failed] = await sql<{ n: number }[]>`
    select count(*)::int as n from batched.image_backups where status = 'failed' and last_error = 'denied'`;
  t.ok((failed?.n ?? 0) > 0, 'final backup failures are kept');
  const [purged] = await sql<{ n: number }[]>`select count(*)::int as n from batched.images`;
  t.equal(purged?.n, LIVES - Math.ceil(LIVES / 21), 'purged images are gone');
});
