// The node's job workers: one consumer runner per durable consumer of this node.
import type { Pool } from '../shared/pools.js';
import { runConsumer, type ConsumerRunner, type Handler } from '../shared/consumer.js';
import { CONSUMERS, type ConsumerName } from '../streams/definitions.js';
import type { Ctx } from './context.js';
import { deleteHandler } from './deleter/worker.js';
import { moveHandler } from './mover/worker.js';
import { variantHandler } from './variants/worker.js';
import { backupHandler, backupSchedulerHandler, requeueFailedBackups } from './backup/worker.js';

export interface Workers {
  runners: ConsumerRunner[];
  stop(graceMs: number): Promise<void>;
}

export function startWorkers(ctx: Ctx, pools: () => Pool[]): Workers {
  let concurrency = 2;
  const refresh = setInterval(() => {
    ctx.settings.all().then(
      (s) => (concurrency = s.job_queue_worker_count),
      () => undefined,
    );
  }, 2_000);
  void ctx.settings.all().then(
    (s) => (concurrency = s.job_queue_worker_count),
    () => undefined,
  );

  const variants = variantHandler(ctx, pools);
  const handlers: Partial<Record<ConsumerName, { handler: Handler; concurrency: () => number }>> = {
    processor: { handler: variants, concurrency: () => concurrency },
    reprocessor: { handler: variants, concurrency: () => 1 },
    deleter: { handler: deleteHandler(ctx, pools), concurrency: () => 4 },
    backupScheduler: { handler: backupSchedulerHandler(ctx), concurrency: () => 8 },
    backup: { handler: backupHandler(ctx), concurrency: () => 4 },
    mover: { handler: moveHandler(ctx, pools), concurrency: () => 2 },
  };
  // Failed backups get a new round of attempts every `s3_retry_interval` minutes.
  let lastRequeue = Date.now();
  const requeue = setInterval(() => {
    void (async () => {
      const s = await ctx.settings.all();
      const every = Math.max(1, s.s3_retry_interval) * 60_000;
      if (Date.now() - lastRequeue < every) return;
      lastRequeue = Date.now();
      const n = await requeueFailedBackups(ctx, { nodeId: ctx.config.nodeId, olderThanMs: every });
      if (n) ctx.log.info({ count: n }, 're-queued failed backups');
    })().catch((err: unknown) => ctx.log.warn({ err }, 'backup re-queue failed'));
  }, 30_000);
  const runners = Object.entries(handlers).map(([name, h]) => {
    const c = CONSUMERS[name as ConsumerName];
    return runConsumer({
      js: ctx.nats.js,
      stream: ctx.names.stream,
      durable: ctx.names.durable(c.kind, ctx.config.nodeId),
      handler: h.handler,
      log: ctx.log,
      concurrency: h.concurrency,
      // With a backoff list the first redelivery comes after backoff[0], not ack_wait: heartbeat within both.
      ackWaitMs: Math.min(c.ackWaitMs, ...c.backoffMs),
    });
  });
  return {
    runners,
    async stop(graceMs) {
      clearInterval(refresh);
      clearInterval(requeue);
      await Promise.all(runners.map((r) => r.stop(graceMs)));
    },
  };
}
