// The publish is the commit: an event is stored once (Nats-Msg-Id = event id, deduplicated by the
// stream) and validated before it leaves the process.
//
// Publishes are pipelined the way the Go client's PublishAsync is: every publisher on a connection
// shares one wildcard reply subscription, each publish is a plain PUB with its own reply token, and
// one sweep timer handles deadlines. nats.js's `js.publish` is a request: a timer, a Promise.race and
// an Error object per call (even on success), which was most of the client CPU of a publish
// (bench/publish.ts). Semantics are those of `js.publish(subject, bytes, { msgID, expect: {
// streamName }, retries })`: resolve on the stream's PubAck only, retry a timeout or "no responders"
// with the same msgID (the stream dedupes it), reject a JetStream API error at once.
import { createInbox, headers, type Msg, type NatsConnection, type Subscription } from '@nats-io/nats-core';
import { JetStreamApiError, PubHeaders, type ApiError, type PubAck } from '@nats-io/jetstream';
import { encodeEvent } from '../streams/events/codec.js';
import type { AnyEvent } from '../streams/events/catalog.js';
import type { Names } from '../streams/subjects.js';

export interface Publisher {
  publish(event: AnyEvent): Promise<PubAck>;
}

export interface PublisherOptions {
  /** per attempt, like nats.js's JetStream `timeout` (default 5 000 ms) */
  timeoutMs?: number;
  /** attempts in all for a timeout or no responders (default 2, as `js.publish` with `retries: 2`) */
  attempts?: number;
}

/** The ack did not arrive in time (name matches the transient-error checks, like nats.js's). */
export class PublishTimeoutError extends Error {
  override name = 'PublishTimeoutError';
}
/** No stream listens on the subject (NATS answered 503). */
export class PublishNoRespondersError extends Error {
  override name = 'PublishNoRespondersError';
}
/** The connection closed with the publish unanswered. */
export class PublishConnectionClosedError extends Error {
  override name = 'PublishConnectionClosedError';
}

interface Pending {
  subject: string;
  data: Uint8Array;
  msgId: string;
  stream: string;
  attempt: number;
  deadline: number;
  resolve(ack: PubAck): void;
  reject(err: Error): void;
}

const SWEEP_MS = 100;
const decoder = new TextDecoder();

/** One reply subscription and one deadline sweep per connection, shared by its publishers. */
class AckMux {
  private readonly prefix: string;
  private readonly pending = new Map<string, Pending>();
  private readonly sub: Subscription;
  private next = 0;
  private sweeper: NodeJS.Timeout | undefined;

  constructor(
    private readonly nc: NatsConnection,
    private readonly timeoutMs: number,
    private readonly attempts: number,
  ) {
    this.prefix = `${createInbox()}.`;
    this.sub = nc.subscribe(`${this.prefix}*`, { callback: (err, m) => this.onReply(err, m) });
    void this.sub.closed.then(() => this.failAll(new PublishConnectionClosedError('connection closed')));
  }

  publish(subject: string, data: Uint8Array, msgId: string, stream: string): Promise<PubAck> {
    return new Promise<PubAck>((resolve, reject) => {
      this.send({ subject, data, msgId, stream, attempt: 1, deadline: 0, resolve, reject });
    });
  }

  private send(p: Pending): void {
    if (this.sub.isClosed()) {
      p.reject(new PublishConnectionClosedError('connection closed'));
      return;
    }
    const token = (this.next++).toString(36);
    const h = headers();
    h.set(PubHeaders.MsgIdHdr, p.msgId);
    h.set(PubHeaders.ExpectedStreamHdr, p.stream);
    p.deadline = Date.now() + this.timeoutMs;
    this.pending.set(token, p);
    try {
      this.nc.publish(p.subject, p.data, { reply: this.prefix + token, headers: h });
    } catch (err) {
      this.pending.delete(token);
      p.reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    this.sweeper ??= setInterval(() => this.sweep(), SWEEP_MS).unref();
  }

  private settle(token: string): Pending | undefined {
    const p = this.pending.get(token);
    if (!p) return undefined;
    this.pending.delete(token);
    if (this.pending.size === 0 && this.sweeper) {
      clearInterval(this.sweeper);
      this.sweeper = undefined;
    }
    return p;
  }

  /** Re-sends with a new token after `delayMs`, or rejects with `err` when attempts are used up. */
  private retryOr(p: Pending, err: Error, delayMs: number): void {
    if (p.attempt >= this.attempts) {
      p.reject(err);
      return;
    }
    p.attempt++;
    if (delayMs === 0) this.send(p);
    else setTimeout(() => this.send(p), delayMs).unref();
  }

  private onReply(err: Error | null, m: Msg): void {
    if (err) return; // only a closed subscription errs here; `closed` fails what is left
    const p = this.settle(m.subject.slice(this.prefix.length));
    if (!p) return; // a late ack of an attempt already retried or timed out: the retry owns it
    if (m.data.length === 0 && m.headers?.code === 503) {
      this.retryOr(p, new PublishNoRespondersError(`no stream answers on ${p.subject}`), 250 * p.attempt);
      return;
    }
    let ack: PubAck & { error?: ApiError };
    try {
      ack = JSON.parse(decoder.decode(m.data)) as PubAck & { error?: ApiError };
    } catch {
      p.reject(new Error(`invalid publish ack on ${p.subject}`));
      return;
    }
    if (ack.error) p.reject(new JetStreamApiError(ack.error));
    else if (!ack.stream) p.reject(new Error(`invalid publish ack on ${p.subject}`));
    else p.resolve({ ...ack, duplicate: ack.duplicate ?? false });
  }

  private sweep(): void {
    const now = Date.now();
    for (const [token, p] of this.pending) {
      if (p.deadline > now) continue;
      this.settle(token);
      this.retryOr(p, new PublishTimeoutError(`publish to ${p.subject} timed out`), 0);
    }
  }

  private failAll(err: Error): void {
    for (const token of [...this.pending.keys()]) this.settle(token)?.reject(err);
  }
}

const muxes = new WeakMap<NatsConnection, Map<string, AckMux>>();

/** Publishes already-encoded bytes through the shared pipelined path (no validation: the benchmark's
 *  measure of what validation and encoding cost on top of it). */
export type BytesPublish = (
  subject: string,
  data: Uint8Array,
  msgId: string,
  stream: string,
) => Promise<PubAck>;

export function bytesPublisher(nc: NatsConnection, opts: PublisherOptions = {}): BytesPublish {
  const mux = muxFor(nc, opts.timeoutMs ?? 5_000, opts.attempts ?? 2);
  return (subject, data, msgId, stream) => mux.publish(subject, data, msgId, stream);
}

function muxFor(nc: NatsConnection, timeoutMs: number, attempts: number): AckMux {
  let byOpts = muxes.get(nc);
  if (!byOpts) muxes.set(nc, (byOpts = new Map()));
  const key = `${timeoutMs}/${attempts}`;
  let mux = byOpts.get(key);
  if (!mux) byOpts.set(key, (mux = new AckMux(nc, timeoutMs, attempts)));
  return mux;
}

export function publisher(nc: NatsConnection, n: Names, opts: PublisherOptions = {}): Publisher {
  let mux: AckMux | undefined;
  return {
    publish: (event) => {
      if (nc.isClosed()) return Promise.reject(new PublishConnectionClosedError('connection closed'));
      let data: Uint8Array;
      try {
        data = encodeEvent(event);
        mux ??= muxFor(nc, opts.timeoutMs ?? 5_000, opts.attempts ?? 2);
      } catch (err) {
        return Promise.reject(err instanceof Error ? err : new Error(String(err)));
      }
      return mux.publish(n.eventSubject(event.type, event.node_id, event.image_id), data, event.id, n.stream);
    },
  };
}
