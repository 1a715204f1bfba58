// Consumer lag: pending, ack-pending and redeliveries of every durable consumer, and projector lag.
import type { JetStreamManager } from '@nats-io/jetstream';
import type { Sql } from '../../shared/db.js';
import type { Names } from '../../streams/subjects.js';

export interface ConsumerLag {
  name: string;
  filter: string;
  pending: number;
  ack_pending: number;
  redelivered: number;
  waiting: number;
}

export async function consumerLag(jsm: JetStreamManager, n: Names): Promise<ConsumerLag[]> {
  const out: ConsumerLag[] = [];
  for await (const c of jsm.consumers.list(n.stream)) {
    out.push({
      name: c.name,
      filter: c.config.filter_subject ?? '',
      pending: c.num_pending,
      ack_pending: c.num_ack_pending,
      redelivered: c.num_redelivered,
      waiting: c.num_waiting,
    });
  }
  return out.sort((a, b) => a.name.localeCompare(b.name));
}

export async function projectorLag(
  jsm: JetStreamManager,
  n: Names,
  sql: Sql,
): Promise<{ head: number; checkpoint: number; lag: number }> {
  const [info, rows] = await Promise.all([
    jsm.streams.info(n.stream),
    sql<{ last_seq: number }[]>`select last_seq from projection_checkpoint where name = 'main'`,
  ]);
  const head = info.state.last_seq;
  const checkpoint = Number(rows[0]?.last_seq ?? 0);
  return { head, checkpoint, lag: Math.max(0, head - checkpoint) };
}
