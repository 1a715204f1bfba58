// Reading the event stream for people and tools: one image's history, a filtered tail.
import { DeliverPolicy, type JetStreamClient } from '@nats-io/jetstream';
import { decodeEvent } from '../../streams/events/codec.js';
import type { AnyEvent, EventType } from '../../streams/events/catalog.js';
import type { Names } from '../../streams/subjects.js';

export interface ReadOptions {
  filter?: string;
  fromSeq?: number;
  since?: Date;
  /** keep waiting for new events instead of stopping at the end of the stream */
  follow?: boolean;
  signal?: AbortSignal;
}

/** Yields events in stream order with their sequence; stops at the current end unless following. */
export async function* readEvents(
  js: JetStreamClient,
  n: Names,
  o: ReadOptions = {},
): AsyncGenerator<{ seq: number; event: AnyEvent | null; raw: Uint8Array }> {
  const jsm = await js.jetstreamManager();
  const info = await jsm.streams.info(n.stream);
  if (!o.follow && info.state.messages === 0) return;
  const consumer = await js.consumers.get(n.stream, {
    filter_subjects: o.filter ?? n.allEvents,
    ...(o.fromSeq !== undefined
      ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: Math.max(1, o.fromSeq) }
      : o.since
        ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: o.since.toISOString() }
        : { deliver_policy: DeliverPolicy.All }),
  });
  const messages = await consumer.consume({ max_messages: 512 });
  const stop = () => void messages.stop();
  o.signal?.addEventListener('abort', stop, { once: true });
  // An empty result for a filter would otherwise wait forever: stop after a quiet second.
  let quiet: NodeJS.Timeout | null = null;
  const arm = () => {
    if (o.follow) return;
    if (quiet) clearTimeout(quiet);
    quiet = setTimeout(stop, 1_000);
  };
  arm();
  try {
    for await (const m of messages) {
      arm();
      let event: AnyEvent | null = null;
      try {
        event = decodeEvent(m.data);
      } catch {
        event = null;
      }
      yield { seq: m.seq, event, raw: m.data };
      if (!o.follow && m.info.pending === 0) break;
    }
  } finally {
    if (quiet) clearTimeout(quiet);
    o.signal?.removeEventListener('abort', stop);
    messages.stop();
  }
}

export async function imageHistory(
  js: JetStreamClient,
  n: Names,
  imageId: string,
): Promise<{ seq: number; event: AnyEvent }[]> {
  const out: { seq: number; event: AnyEvent }[] = [];
  for await (const e of readEvents(js, n, { filter: n.imageFilter(imageId) }))
    if (e.event) out.push({ seq: e.seq, event: e.event });
  return out;
}

export function typeFilterOf(n: Names, type: EventType | undefined, imageId: string | undefined): string {
  if (type && imageId) return `${n.ns}.ev.${type}.*.${imageId}`;
  if (type) return n.typeFilter(type);
  if (imageId) return n.imageFilter(imageId);
  return n.allEvents;
}
