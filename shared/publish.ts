// The publish is the commit: an event is stored once (Nats-Msg-Id = event id, deduplicated by the
// stream) and validated before it leaves the process.
import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import { encodeEvent } from '../streams/events/codec.js';
import type { AnyEvent } from '../streams/events/catalog.js';
import type { Names } from '../streams/subjects.js';

export interface Publisher {
  publish(event: AnyEvent): Promise<PubAck>;
}

export function publisher(js: JetStreamClient, n: Names): Publisher {
  return {
    publish: async (event) =>
      js.publish(n.eventSubject(event.type, event.node_id, event.image_id), encodeEvent(event), {
        msgID: event.id,
        expect: { streamName: n.stream },
        // A retried publish is safe: the msgID dedupes it within the stream's duplicate window.
        retries: 2,
      }),
  };
}
