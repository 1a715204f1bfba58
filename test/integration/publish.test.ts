// The pipelined publisher (shared/publish.ts) against the real NATS: the same answers as nats.js's
// js.publish for acks, duplicates, a wrong stream, no stream, a silent responder and a closed
// connection, and a burst of concurrent publishes each acked once.
import { randomUUID } from 'node:crypto';
import t from 'tap';
import { connect } from '@nats-io/transport-node';
import { JetStreamApiError, jetstreamManager } from '@nats-io/jetstream';
import type { Msg } from '@nats-io/nats-core';
import { EventValidationError, makeEvent } from '../../streams/events/codec.js';
import type { EventOf } from '../../streams/events/catalog.js';
import { derivedShareLink } from '../../streams/events/upcast.js';
import { applyStream } from '../../streams/apply.js';
import { names, type Names } from '../../streams/subjects.js';
import {
  PublishConnectionClosedError,
  PublishNoRespondersError,
  PublishTimeoutError,
  publisher,
} from '../../shared/publish.js';
import { cleanupNamespace, NATS_URL } from '../helpers/stack.js';

function stored(i = 0): EventOf<'ImageStored'> {
  const image_id = randomUUID();
  return makeEvent('ImageStored', {
    image_id,
    node_id: 'node-a',
    pool_id: randomUUID(),
    data: {
      user_id: randomUUID(),
      stored_path: `original/2026/11/28/${image_id}.jpg`,
      size: 1000 + i,
      sha256: 'a'.repeat(64),
      mime: 'image/jpeg',
      ext: 'jpg',
      width: 10,
      height: 10,
      original_filename: null,
      share_link: derivedShareLink(image_id),
    },
  });
}

function uniqueNames(): Names {
  return names(`pft_${randomUUID().replace(/-/g, '').slice(0, 10)}`);
}

t.test('acks, duplicates and a burst of pipelined publishes', async (t) => {
  const nc = await connect({ servers: NATS_URL, noAsyncTraces: true });
  t.teardown(() => nc.close());
  const n = uniqueNames();
  t.teardown(() => cleanupNamespace(n.ns));
  await applyStream(await jetstreamManager(nc), n, 1);
  const pub = publisher(nc, n);

  const e = stored();
  const a1 = await pub.publish(e);
  t.equal(a1.stream, n.stream);
  t.equal(a1.duplicate, false);
  const a2 = await pub.publish(e);
  t.equal(a2.duplicate, true, 'the same event id again is a duplicate');
  t.equal(a2.seq, a1.seq, 'and answers with the first sequence');

  // 3 000 at once on one connection: every publish gets its own ack, sequences are distinct.
  const burst = Array.from({ length: 3000 }, (_, i) => stored(i));
  const acks = await Promise.all(burst.map((ev) => pub.publish(ev)));
  t.equal(new Set(acks.map((a) => a.seq)).size, 3000, 'distinct sequences');
  t.ok(
    acks.every((a) => !a.duplicate),
    'none reported as duplicate',
  );
  const info = await (await jetstreamManager(nc)).streams.info(n.stream);
  t.equal(info.state.messages, 3001, 'exactly one stored message per event');

  // A second publisher on the same connection shares the reply subscription.
  const again = await publisher(nc, n).publish(burst[0] as EventOf<'ImageStored'>);
  t.equal(again.duplicate, true);
  t.equal(again.seq, acks[0]?.seq);

  await t.rejects(
    pub.publish({ ...e, data: { ...e.data, size: -1 } }),
    EventValidationError,
    'an invalid event is refused before it is sent',
  );
  t.equal((await (await jetstreamManager(nc)).streams.info(n.stream)).state.messages, 3001);
});

t.test('a wrong stream, no stream, a silent responder, a closed connection', async (t) => {
  const nc = await connect({ servers: NATS_URL, noAsyncTraces: true });
  t.teardown(() => nc.close());
  const n = uniqueNames();
  t.teardown(() => cleanupNamespace(n.ns));
  await applyStream(await jetstreamManager(nc), n, 1);

  // The subject belongs to n's stream, but the publisher expects another one: the server refuses.
  const wrong = publisher(nc, { ...n, stream: `${n.stream}_OTHER` });
  const err = await wrong.publish(stored()).catch((e: unknown) => e);
  t.type(err, JetStreamApiError, 'expected-stream mismatch is a JetStream API error');
  t.match((err as Error).message, /stream/i);
  t.equal((await (await jetstreamManager(nc)).streams.info(n.stream)).state.messages, 0, 'nothing stored');

  // No stream listens on another namespace's subjects: NATS answers 503, retried, then refused.
  const none = uniqueNames();
  const started = Date.now();
  await t.rejects(
    publisher(nc, none, { attempts: 2 }).publish(stored()),
    PublishNoRespondersError,
    'no responders after the attempts',
  );
  t.ok(Date.now() - started >= 200, 'the retry waited before sending again');

  // Something answers nothing: each attempt times out and is sent again with the same msg id.
  const silent = uniqueNames();
  const seen: string[] = [];
  const sub = nc.subscribe(`${silent.ns}.>`, {
    callback: (_e, m: Msg) => {
      seen.push(m.headers?.get('Nats-Msg-Id') ?? '');
    },
  });
  t.teardown(() => sub.unsubscribe());
  await nc.flush();
  const ev = stored();
  await t.rejects(
    publisher(nc, silent, { timeoutMs: 150, attempts: 3 }).publish(ev),
    PublishTimeoutError,
  );
  t.same(seen, [ev.id, ev.id, ev.id], 'three attempts, all with the event id as Nats-Msg-Id');

  // A publish in flight when the connection closes is refused, and so is one after.
  const nc2 = await connect({ servers: NATS_URL, noAsyncTraces: true });
  const sub2 = nc2.subscribe(`${silent.ns}.>`, { callback: () => undefined });
  await nc2.flush();
  const pending = publisher(nc2, silent, { timeoutMs: 60_000 }).publish(stored());
  await nc2.close();
  await t.rejects(pending, PublishConnectionClosedError, 'in flight at close');
  await t.rejects(publisher(nc2, silent).publish(stored()), PublishConnectionClosedError, 'after close');
  t.ok(sub2.isClosed());
});
