// Failed work: JetStream advisories (max deliveries reached, message terminated) of our consumers are
// captured in a stream and recorded in `failed_jobs`; operators list and retry them.
import type { JsMsg } from '@nats-io/jetstream';
import type { Sql } from '../../shared/db.js';
import type { Logger } from '../../shared/logger.js';
import type { Nats } from '../../shared/nats.js';
import type { Publisher } from '../../shared/publish.js';
import { decodeEvent, makeEvent } from '../../streams/events/codec.js';
import type { AnyEvent } from '../../streams/events/catalog.js';
import { advisoryRecorderConfig } from '../../streams/definitions.js';
import type { Names } from '../../streams/subjects.js';
import { requeueFailedBackups } from '../backup/worker.js';

interface Advisory {
  type: string;
  stream: string;
  consumer: string;
  stream_seq: number;
  deliveries?: number;
  reason?: string;
  timestamp?: string;
}

export async function recordAdvisory(sql: Sql, nats: Nats, n: Names, adv: Advisory): Promise<void> {
  const kind = adv.type.includes('terminated') ? 'terminated' : 'max_deliveries';
  let imageId: string | null = null;
  let eventType: string | null = null;
  try {
    const m = await nats.jsm.streams.getMessage(n.stream, { seq: adv.stream_seq });
    const parsed = m ? n.parseSubject(m.subject) : null;
    imageId = parsed && /^[0-9a-f-]{36}$/.test(parsed.imageId) ? parsed.imageId : null;
    eventType = parsed?.type ?? null;
  } catch {
    // the message is still recorded without its details
  }
  await sql`
    insert into failed_jobs (consumer, stream_seq, kind, image_id, event_type, deliveries, reason, failed_at)
    values (${adv.consumer}, ${adv.stream_seq}, ${kind}, ${imageId}, ${eventType}, ${adv.deliveries ?? null},
            ${adv.reason ?? null}, ${adv.timestamp ?? new Date().toISOString()})
    on conflict (consumer, stream_seq) do update set kind = excluded.kind, reason = excluded.reason,
      deliveries = excluded.deliveries, failed_at = excluded.failed_at, retried_at = null`;
}

/**
 * A message our consumer runner terminated (a poison message): nats-server 2.9 sends no advisory for it
 * (MSG_TERMINATED came with 2.10), so the runner reports it here in the shape of that advisory. On a
 * newer server both arrive; the second changes nothing (same consumer and stream sequence).
 */
export async function recordTerminated(
  ctx: { sql: Sql; nats: Nats; names: Names; log: Logger },
  consumer: string,
  streamSeq: number,
  reason: string,
  deliveries: number,
): Promise<void> {
  try {
    await recordAdvisory(ctx.sql, ctx.nats, ctx.names, {
      type: 'io.nats.jetstream.advisory.v1.terminated',
      stream: ctx.names.stream,
      consumer,
      stream_seq: streamSeq,
      deliveries,
      reason,
      timestamp: new Date().toISOString(),
    });
  } catch (err) {
    ctx.log.warn({ err, consumer, seq: streamSeq }, 'could not record a terminated message');
  }
}

/** Runs until aborted: consumes the advisory stream into failed_jobs. */
export function startFailedJobsRecorder(
  sql: Sql,
  nats: Nats,
  n: Names,
  log: Logger,
  signal: AbortSignal,
): Promise<void> {
  const run = async () => {
    while (!signal.aborted) {
      try {
        const consumer = await nats.js.consumers.get(
          n.advisoryStream,
          advisoryRecorderConfig(n).durable_name,
        );
        const messages = await consumer.consume({ max_messages: 100 });
        const stop = () => void messages.stop();
        signal.addEventListener('abort', stop, { once: true });
        for await (const m of messages) await handle(m);
        signal.removeEventListener('abort', stop);
      } catch (err) {
        if (!signal.aborted) log.warn({ err }, 'failed-jobs recorder interrupted');
        await new Promise((r) => setTimeout(r, 1_000));
      }
    }
  };
  const handle = async (m: JsMsg) => {
    try {
      await recordAdvisory(sql, nats, n, m.json<Advisory>());
      m.ack();
    } catch (err) {
      log.warn({ err }, 'could not record advisory');
      m.nak(5_000);
    }
  };
  return run();
}

export interface FailedJob {
  consumer: string;
  stream_seq: number;
  kind: string;
  image_id: string | null;
  event_type: string | null;
  deliveries: number | null;
  reason: string | null;
  failed_at: Date;
  retried_at: Date | null;
}

export async function listFailedJobs(
  sql: Sql,
  opts: { includeRetried?: boolean; limit?: number } = {},
): Promise<FailedJob[]> {
  return sql<FailedJob[]>`
    select * from failed_jobs ${opts.includeRetried ? sql`` : sql`where retried_at is null`}
    order by failed_at desc limit ${opts.limit ?? 200}`;
}

/**
 * Retries failed work by asking again for what the message asked: reprocess for variant jobs, a new
 * backup round for backups, and the same request with a new id for deletes and moves (their handlers are
 * idempotent). JetStream cannot redeliver a message that was terminated or exhausted.
 */
export async function retryFailedJobs(
  ctx: { sql: Sql; nats: Nats; names: Names; pub: Publisher },
  which: { all: true } | { consumer: string; streamSeq: number },
): Promise<number> {
  const jobs =
    'all' in which
      ? await listFailedJobs(ctx.sql, { limit: 10_000 })
      : await ctx.sql<
          FailedJob[]
        >`select * from failed_jobs where consumer = ${which.consumer} and stream_seq = ${which.streamSeq}`;
  let retried = 0;
  for (const job of jobs) {
    const msg = await ctx.nats.jsm.streams
      .getMessage(ctx.names.stream, { seq: job.stream_seq })
      .catch(() => null);
    if (!msg) continue;
    let ev: AnyEvent;
    try {
      ev = decodeEvent(msg.data);
    } catch {
      // A poison message (not an event this code can read) cannot be asked for again: it stays listed,
      // unretried, for an operator to look at (`events tail --from-seq N` shows its raw bytes).
      continue;
    }
    const base = {
      image_id: ev.image_id,
      node_id: ev.node_id,
      pool_id: ev.pool_id,
      causation_id: ev.id,
      correlation_id: ev.correlation_id,
    };
    switch (ev.type) {
      case 'ImageStored':
      case 'ImageReprocessRequested':
        await ctx.pub.publish(
          makeEvent('ImageReprocessRequested', { ...base, data: { requested_by: 'failed-job-retry' } }),
        );
        break;
      case 'BackupRequested':
        await requeueFailedBackups(ctx, { imageId: ev.image_id });
        await ctx.pub.publish(
          makeEvent('BackupRequested', {
            ...base,
            data: { ...ev.data, attempt: 1, due_at: new Date().toISOString() },
          }),
        );
        break;
      case 'ImageDeleted':
        await ctx.pub.publish(makeEvent('ImageDeleted', { ...base, data: ev.data }));
        break;
      case 'MoveRequested':
        await ctx.pub.publish(makeEvent('MoveRequested', { ...base, data: ev.data }));
        break;
      default:
        continue;
    }
    await ctx.sql`update failed_jobs set retried_at = now() where consumer = ${job.consumer} and stream_seq = ${job.stream_seq}`;
    retried++;
  }
  return retried;
}
