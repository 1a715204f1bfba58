// The JetStream stream and every durable consumer, declared as data and applied idempotently
// (created or updated, never deleted) at start-up and by `npx pixelfox streams apply`.
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type StreamConfig,
} from '@nats-io/jetstream';
import { nanos } from '@nats-io/nats-core';
import type { EventType } from './events/catalog.js';
import type { Names } from './subjects.js';

export function eventStreamConfig(n: Names, replicas: number): Partial<StreamConfig> & { name: string } {
  return {
    name: n.stream,
    subjects: [n.allEvents],
    // Events are the source of truth: on disk, kept forever, never dropped for age, size or count.
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    max_age: 0,
    max_bytes: -1,
    max_msgs: -1,
    max_msgs_per_subject: -1,
    // With no limits set this never triggers; "new" makes a mis-set limit refuse writes instead of
    // silently discarding old events.
    discard: DiscardPolicy.New,
    // 10 minutes: longer than any client retry loop, so a publish retried after a timeout or reconnect
    // is stored once. Longer windows cost memory per message id on the server.
    duplicate_window: nanos(10 * 60 * 1000),
    num_replicas: replicas,
    // Events are never edited: message delete and purge are refused by the server.
    deny_delete: true,
    deny_purge: true,
  };
}

/** A durable consumer kind: one per node, each filtering one event type of that node's pools. */
export interface ConsumerKind {
  readonly kind: string;
  readonly event: EventType;
  /** 1-line reason for each number lives next to the constants below. */
  readonly ackWaitMs: number;
  readonly maxDeliver: number;
  readonly backoffMs: readonly number[];
}

const MIN = 60_000;

export const CONSUMERS = {
  // Variants of a huge image take long; the runner sends `working()` every ackWait/3, so ack_wait only
  // bounds how long a crashed worker holds a message (60 s), not how long an image may take.
  processor: {
    kind: 'processor',
    event: 'ImageStored',
    ackWaitMs: MIN,
    maxDeliver: 5,
    backoffMs: [MIN, 2 * MIN, 5 * MIN, 10 * MIN],
  },
  reprocessor: {
    kind: 'reprocessor',
    event: 'ImageReprocessRequested',
    ackWaitMs: MIN,
    maxDeliver: 5,
    backoffMs: [MIN, 2 * MIN, 5 * MIN, 10 * MIN],
  },
  // Decides whether and when an image is backed up; cheap, so short ack_wait.
  backupScheduler: {
    kind: 'backup-scheduler',
    event: 'ImageStored',
    ackWaitMs: 30_000,
    maxDeliver: 10,
    backoffMs: [30_000, MIN, 5 * MIN],
  },
  // Delayed backups sit in this consumer (nak with the remaining delay) until due: survives restarts
  // because the message stays unacknowledged in JetStream. max_deliver -1: waiting must never exhaust it;
  // attempts are counted in the events instead (3 then `failed`).
  backup: { kind: 'backup', event: 'BackupRequested', ackWaitMs: 5 * MIN, maxDeliver: -1, backoffMs: [] },
  deleter: {
    kind: 'deleter',
    event: 'ImageDeleted',
    ackWaitMs: 2 * MIN,
    maxDeliver: 20,
    backoffMs: [10_000, MIN, 5 * MIN],
  },
  mover: {
    kind: 'mover',
    event: 'MoveRequested',
    ackWaitMs: 2 * MIN,
    maxDeliver: 10,
    backoffMs: [10_000, MIN, 5 * MIN],
  },
} as const satisfies Record<string, ConsumerKind>;

export type ConsumerName = keyof typeof CONSUMERS;

export function consumerConfig(
  n: Names,
  c: ConsumerKind,
  nodeId: string,
): Partial<ConsumerConfig> & { durable_name: string } {
  const cfg: Partial<ConsumerConfig> & { durable_name: string } = {
    durable_name: n.durable(c.kind, nodeId),
    description: `${c.kind} for node ${nodeId}: ${c.event} events of this node's pools`,
    filter_subject: n.typeFilter(c.event, nodeId),
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(c.ackWaitMs),
    max_deliver: c.maxDeliver,
    // Bounded so one node never holds more unacked work than it can finish in an ack window.
    max_ack_pending: 1000,
  };
  // The server requires max_deliver > len(backoff).
  if (c.backoffMs.length && (c.maxDeliver < 0 || c.maxDeliver > c.backoffMs.length)) {
    cfg.backoff = c.backoffMs.map((ms) => nanos(ms));
  }
  return cfg;
}

/** Advisories of our consumers (max deliveries reached, message terminated), kept for the failed_jobs model. */
export function advisoryStreamConfig(n: Names, replicas: number): Partial<StreamConfig> & { name: string } {
  return {
    name: n.advisoryStream,
    subjects: n.advisorySubjects,
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    // Advisories are operational records, not facts: 30 days is plenty to notice and retry.
    max_age: nanos(30 * 24 * 60 * 60_000),
    num_replicas: replicas,
  };
}

export function advisoryRecorderConfig(n: Names): Partial<ConsumerConfig> & { durable_name: string } {
  return {
    durable_name: `${n.ns}_failed-jobs-recorder`,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(30_000),
    max_deliver: -1,
  };
}
