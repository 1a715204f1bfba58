// The event store and the projection engine against the real NATS and Postgres.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { decodeEvent, EventValidationError, makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import { applyStream } from '../../streams/apply.js';
import { names } from '../../streams/subjects.js';
import { publisher } from '../../shared/publish.js';
import { createLogger } from '../../shared/logger.js';
import { readCheckpoint, waitForCheckpoint } from '../../projections/projector.js';
import { verify } from '../../projections/rebuild.js';
import { readEvents } from '../../services/ops/events.js';
import { imageLife, publishAll } from '../helpers/events.js';
import { NATS_URL, spawnNode, testEnv, waitFor } from '../helpers/stack.js';

const log = createLogger('warn');

t.test('event store: dedupe by id, validation at publish, every stored event decodes', async (t) => {
  const env = await testEnv(t);
  const nc = await connect({ servers: NATS_URL });
  t.teardown(() => nc.close());
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const n = names(env.namespace);
  t.equal(await applyStream(jsm, n, 1), 'created');
  t.equal(await applyStream(jsm, n, 1), 'updated', 'apply is idempotent');
  const info = await jsm.streams.info(n.stream);
  t.equal(info.config.max_age, 0, 'events never expire');
  t.equal(info.config.max_bytes, -1);
  t.equal(info.config.storage, 'file');

  const pub = publisher(nc, n);
  const userId = randomUUID();
  const pool = randomUUID();
  const [stored] = imageLife(1, { a: pool, b: randomUUID(), s3: randomUUID() }, userId);
  if (!stored) throw new Error('no event');
  const a1 = await pub.publish(stored);
  const a2 = await pub.publish(stored);
  t.equal(a2.seq, a1.seq, 'the same event id is stored once');
  t.ok(a2.duplicate, 'the second publish is reported as duplicate');

  const bad = {
    ...stored,
    data: { ...(stored as Extract<AnyEvent, { type: 'ImageStored' }>).data, size: -5 },
  } as AnyEvent;
  await t.rejects(pub.publish(bad), EventValidationError, 'invalid data refused at publish');
  const wrongType = { ...stored, id: randomUUID(), type: 'ImageExploded' } as unknown as AnyEvent;
  await t.rejects(pub.publish(wrongType), EventValidationError, 'unknown type refused');
  const noImage = { ...stored, id: randomUUID(), image_id: 'nope' } as AnyEvent;
  await t.rejects(pub.publish(noImage), EventValidationError, 'bad envelope refused');
  t.equal((await jsm.streams.info(n.stream)).state.messages, 1, 'nothing invalid reached the stream');

  // Subjects carry type, node and image: one image's history is one filter.
  await pub.publish(
    makeEvent('ImageProcessingStarted', {
      image_id: stored.image_id,
      node_id: 'n1',
      pool_id: pool,
      data: { attempt: 1 },
    }),
  );
  const history = [];
  for await (const e of readEvents(js, n, { filter: n.imageFilter(stored.image_id) })) history.push(e);
  t.same(
    history.map((h) => h.event?.type),
    ['ImageStored', 'ImageProcessingStarted'],
  );
  for (const h of history) t.ok(decodeEvent(h.raw), `seq ${h.seq} decodes and validates`);
});

t.test('upcasting: an ImageStored v1 in the stream is read as v2', async (t) => {
  const env = await testEnv(t);
  const nc = await connect({ servers: NATS_URL });
  t.teardown(() => nc.close());
  const js = jetstream(nc);
  const n = names(env.namespace);
  await applyStream(await jetstreamManager(nc), n, 1);
  const imageId = randomUUID();
  const v1 = {
    id: randomUUID(),
    type: 'ImageStored',
    version: 1,
    occurred_at: new Date().toISOString(),
    image_id: imageId,
    node_id: 'n1',
    pool_id: randomUUID(),
    causation_id: null,
    correlation_id: null,
    data: {
      user_id: randomUUID(),
      stored_path: `original/2025/01/02/${imageId}.png`,
      bytes: 42,
      hash: 'b'.repeat(64),
      mime: 'image/png',
      width: 3,
      height: 4,
      filename: 'old.png',
    },
  };
  await js.publish(n.eventSubject('ImageStored', 'n1', imageId), JSON.stringify(v1), { msgID: v1.id });
  const [read] = await (async () => {
    const out = [];
    for await (const e of readEvents(js, n)) out.push(e);
    return out;
  })();
  const e = read?.event;
  if (!e || e.type !== 'ImageStored') throw new Error('not decoded');
  t.equal(e.version, 2);
  t.equal(e.data.size, 42);
  t.equal(e.data.sha256, 'b'.repeat(64));
  t.equal(e.data.ext, 'png');
  t.equal(e.data.original_filename, 'old.png');
  t.match(e.data.share_link, /^[A-Za-z0-9]{10}$/);
});

t.test('projector: kill -9 mid-batch, restart, read models identical to a clean replay', async (t) => {
  const env = await testEnv(t);
  const nc = await connect({ servers: NATS_URL });
  t.teardown(() => nc.close());
  const js = jetstream(nc);
  const jsm = await jetstreamManager(nc);
  const n = names(env.namespace);
  await applyStream(jsm, n, 1);
  const pools = { a: randomUUID(), b: randomUUID(), s3: randomUUID() };
  const user = randomUUID();
  const events: AnyEvent[] = [];
  for (let i = 0; i < 2500; i++) events.push(...imageLife(i, pools, user));
  const last = await publishAll(nc, n, events);
  t.ok(last >= 19_000, `${last} events published`);
  // A delivered-twice event (same content, new id after the dedupe window) must change nothing.
  const again = events.slice(0, 300).map((e) => ({ ...e, id: randomUUID() }) as AnyEvent);
  const lastWithDupes = await publishAll(nc, n, again);

  const sql = env.sql();
  const node = await spawnNode(env, { roles: ['projector'] });
  // Kill while it is applying: after the first batches, before the end.
  const seenAt = await waitFor('projector to start applying', async () => {
    const cp = await readCheckpoint(sql, 'rm', 'main');
    return cp > 0 ? cp : null;
  });
  node.kill9();
  await node.exited;
  const atKill = await readCheckpoint(sql, 'rm', 'main');
  t.ok(seenAt > 0 && atKill < lastWithDupes, `killed at checkpoint ${atKill} of ${lastWithDupes}`);

  const again2 = await spawnNode(env, { roles: ['projector'] });
  t.teardown(() => again2.stop());
  await waitForCheckpoint(sql, lastWithDupes, 60_000);

  const o = { sql, js, jsm, names: n, log };
  const result = await verify(o);
  t.equal(result.seq, lastWithDupes);
  t.same(result.differences, [], 'a clean replay gives exactly the same read models');
  const [{ count }] = (await sql`select count(*)::int as count from images`) as unknown as [
    { count: number },
  ];
  t.equal(count, 2500 - Math.ceil(2500 / 14), 'purged images are gone, the rest is there');
  const [u] = await sql<
    { image_count: number }[]
  >`select image_count from user_usage where user_id = ${user}`;
  t.equal(
    Number(u?.image_count),
    2500 - Math.ceil(2500 / 7),
    'usage counts each live image once despite duplicates',
  );
});
