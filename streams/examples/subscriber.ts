// Example: an internal service that reacts to every completed image, from where it last stopped.
// Run: PIXELFOX_NAMESPACE=pixelfox node --import tsx streams/examples/subscriber.ts
import { connect } from '@nats-io/transport-node';
import { AckPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { decodeEvent } from '../events/codec.js';
import { names } from '../subjects.js';

const n = names(process.env.PIXELFOX_NAMESPACE ?? 'pixelfox');
const nc = await connect({ servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' });
const jsm = await jetstreamManager(nc);
const durable = process.env.DURABLE ?? `${n.ns}_example-subscriber`;
// A durable consumer of our own, filtered to one event type of every node: it remembers its position.
await jsm.consumers.add(n.stream, {
  durable_name: durable,
  ack_policy: AckPolicy.Explicit,
  filter_subject: n.typeFilter('ImageProcessed'),
});
const consumer = await jetstream(nc).consumers.get(n.stream, durable);
const limit = Number(process.env.LIMIT ?? Infinity);
let seen = 0;
const messages = await consumer.consume();
for await (const m of messages) {
  const event = decodeEvent(m.data); // validated and upcast to the current version
  if (event.type === 'ImageProcessed') {
    console.log(
      JSON.stringify({
        image: event.image_id,
        width: event.data.width,
        height: event.data.height,
        variants: event.data.variant_count,
      }),
    );
  }
  m.ack();
  if (++seen >= limit) break;
}
await nc.drain();
