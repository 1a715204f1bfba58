// The one consumer runner. Handlers return an outcome instead of throwing; the runner maps it to the
// JetStream acknowledgement, owns concurrency, sends `working()` heartbeats during long work, and
// drains on shutdown (in-flight work finishes, or is handed back with nak when the grace time is over).
import type { JetStreamClient, JsMsg } from '@nats-io/jetstream';
import { decodeEvent } from '../streams/events/codec.js';
import type { AnyEvent } from '../streams/events/catalog.js';
import type { Logger } from './logger.js';
import { errorMessage } from './errors.js';

export type Outcome =
  | { readonly kind: 'ack' }
  | { readonly kind: 'retry'; readonly delayMs: number; readonly reason: string }
  | { readonly kind: 'drop'; readonly reason: string };

export const ack: Outcome = Object.freeze({ kind: 'ack' });
export const retry = (delayMs: number, reason: string): Outcome => ({ kind: 'retry', delayMs, reason });
export const drop = (reason: string): Outcome => ({ kind: 'drop', reason });

export interface Delivery {
  seq: number;
  /** 1 on the first delivery. */
  deliveryCount: number;
  /** Keep the message from being redelivered while long work goes on. */
  working(): void;
  signal: AbortSignal;
}

export type Handler = (event: AnyEvent, delivery: Delivery) => Promise<Outcome>;

export interface ConsumerRunner {
  readonly name: string;
  /** Stop fetching; wait for in-flight work up to `graceMs`, then nak what is left. */
  stop(graceMs: number): Promise<void>;
  readonly done: Promise<void>;
  inFlight(): number;
}

export interface RunConsumerOptions {
  js: JetStreamClient;
  stream: string;
  durable: string;
  handler: Handler;
  log: Logger;
  /** How many messages are worked on at once (may change at run time, e.g. from a setting). */
  concurrency: () => number;
  ackWaitMs: number;
  /** Delay before redelivery when the handler itself crashes (a bug, not an outcome). */
  crashRetryMs?: number;
  /**
   * Told of every dropped (terminated) message, so it can be recorded as failed work: nats-server 2.9
   * sends no advisory for a terminated message (MSG_TERMINATED came with 2.10).
   */
  onDrop?: (seq: number, reason: string, deliveryCount: number) => void;
}

export function runConsumer(o: RunConsumerOptions): ConsumerRunner {
  const log = o.log.child({ consumer: o.durable });
  const controller = new AbortController();
  const inflight = new Map<number, { msg: JsMsg; done: Promise<void> }>();
  /** Acks sent and not yet confirmed by the server. */
  const acking = new Set<Promise<void>>();
  let stopping = false;
  let wake: (() => void) | null = null;

  const settle = async (msg: JsMsg, outcome: Outcome, seq: number) => {
    switch (outcome.kind) {
      case 'ack': {
        // ackAck: a lost ack would mean the work runs again; waiting for the server's confirmation
        // makes that rare (the handler is idempotent for when it still happens). The slot is free at
        // once, though: the next message is fetched while the confirmation is on its way (one round
        // trip less per job on the worker's critical path); stop() still waits for it.
        const confirmed = msg
          .ackAck()
          .then(
            () => undefined,
            (err: unknown) => log.warn({ err, seq }, 'ack not confirmed'),
          )
          .finally(() => acking.delete(confirmed));
        acking.add(confirmed);
        return;
      }
      case 'retry':
        log.warn({ seq, reason: outcome.reason, delayMs: outcome.delayMs }, 'retry later');
        msg.nak(outcome.delayMs);
        return;
      case 'drop':
        log.error({ seq, reason: outcome.reason }, 'dropping message');
        msg.term(outcome.reason.slice(0, 200));
        o.onDrop?.(seq, outcome.reason.slice(0, 200), msg.info.deliveryCount);
        return;
      default: {
        const unreachable: never = outcome;
        return unreachable;
      }
    }
  };

  const handle = async (msg: JsMsg) => {
    const seq = msg.seq;
    const heartbeat = setInterval(() => msg.working(), Math.max(1000, Math.floor(o.ackWaitMs / 3)));
    // A handler may report progress after every step (the variant worker does, per output); the server
    // only needs to hear of it often enough to hold the ack deadline, not a message per step.
    const workingGapMs = Math.min(1000, Math.floor(o.ackWaitMs / 10));
    let lastWorking = 0;
    const working = () => {
      const now = performance.now();
      if (now - lastWorking < workingGapMs) return;
      lastWorking = now;
      msg.working();
    };
    try {
      let event: AnyEvent;
      try {
        event = decodeEvent(msg.data);
      } catch (err) {
        await settle(msg, drop(`undecodable event: ${errorMessage(err)}`), seq);
        return;
      }
      let outcome: Outcome;
      try {
        outcome = await o.handler(event, {
          seq,
          deliveryCount: msg.info.deliveryCount,
          working,
          signal: controller.signal,
        });
      } catch (err) {
        log.error({ err, seq, imageId: event.image_id }, 'handler crashed');
        outcome = retry(o.crashRetryMs ?? 5_000, `handler crashed: ${errorMessage(err)}`);
      }
      if (controller.signal.aborted && outcome.kind !== 'ack') {
        msg.nak(1_000);
        return;
      }
      await settle(msg, outcome, seq);
    } finally {
      clearInterval(heartbeat);
    }
  };

  const loop = async () => {
    while (!stopping) {
      try {
        const consumer = await o.js.consumers.get(o.stream, o.durable);
        while (!stopping) {
          const free = o.concurrency() - inflight.size;
          if (free <= 0) {
            await new Promise<void>((r) => (wake = r));
            continue;
          }
          const batch = await consumer.fetch({ max_messages: free, expires: 5_000 });
          for await (const msg of batch) {
            if (stopping) {
              msg.nak();
              continue;
            }
            const seq = msg.seq;
            const done = handle(msg).finally(() => {
              inflight.delete(seq);
              wake?.();
              wake = null;
            });
            inflight.set(seq, { msg, done });
          }
        }
      } catch (err) {
        if (stopping) break;
        log.warn({ err: errorMessage(err) }, 'consumer fetch failed; retrying');
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  };

  const done = loop();
  return {
    name: o.durable,
    inFlight: () => inflight.size,
    done,
    async stop(graceMs) {
      stopping = true;
      wake?.();
      const all = Promise.all([...inflight.values()].map((f) => f.done)).then(() => Promise.all(acking));
      const timedOut = await Promise.race([
        all.then(() => false),
        new Promise<boolean>((r) => setTimeout(() => r(true), graceMs).unref()),
      ]);
      if (timedOut) {
        // Hand unfinished work back so another instance picks it up at once.
        controller.abort();
        for (const { msg } of inflight.values()) msg.nak();
      }
      await Promise.race([done, new Promise((r) => setTimeout(r, 6_000).unref())]);
    },
  };
}
