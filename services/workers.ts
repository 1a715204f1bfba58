// The node's job workers: one consumer runner per durable consumer of this node.
import type { Pool } from '../shared/pools.js';
import { runConsumer, type ConsumerRunner, type Handler } from '../shared/consumer.js';
import { CONSUMERS, type ConsumerName } from '../streams/definitions.js';
import { ANY_NODE } from '../streams/subjects.js';
import { sweepS3Uploads } from './api/s3-uploads.js';
import type { Ctx } from './context.js';
import { deleteHandler } from './deleter/worker.js';
import { moveHandler } from './mover/worker.js';
import { variantHandler } from './variants/worker.js';
import { backupHandler, backupSchedulerHandler, requeueFailedBackups } from './backup/worker.js';
import { recordTerminated } from './ops/failed-jobs.js';

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
      // Re-queue ids are deterministic: nodes that re-queue the same `_any` failures publish them once.
      for (const nodeId of [ctx.config.nodeId, ANY_NODE]) {
        const n = await requeueFailedBackups(ctx, { nodeId, olderThanMs: every });
        if (n) ctx.log.info({ count: n, nodeId }, 're-queued failed backups');
      }
    })().catch((err: unknown) => ctx.log.warn({ err }, 'backup re-queue failed'));
  }, 30_000);
  // Staging objects of direct-to-S3 uploads whose URL expired: every minute, or as often as a shorter
  // upload lifetime needs.
  const sweeper = setInterval(
    () => {
      sweepS3Uploads(ctx).then(
        (n) => void (n && ctx.log.info({ count: n }, 'swept expired S3 uploads')),
        (err: unknown) => ctx.log.warn({ err }, 'S3 upload sweep failed'),
      );
    },
    Math.min(60_000, Math.max(1_000, ctx.config.s3UploadTtlSeconds * 1_000)),
  );
  // Each node runs its own consumers and, shared with every other worker node, those of `_any`: the
  // events of S3 pools, which no node owns (a shared durable hands each message to one of them).
  const runners = [...new Set([ctx.config.nodeId, ANY_NODE])].flatMap((nodeId) =>
    Object.entries(handlers).map(([name, h]) => {
      const c = CONSUMERS[name as ConsumerName];
      return runConsumer({
        js: ctx.nats.js,
        stream: ctx.names.stream,
        durable: ctx.names.durable(c.kind, nodeId),
        handler: h.handler,
        log: ctx.log,
        concurrency: h.concurrency,
        // With a backoff list the first redelivery comes after backoff[0], not ack_wait: heartbeat within both.
        ackWaitMs: Math.min(c.ackWaitMs, ...c.backoffMs),
        onDrop: (seq, reason, deliveries) =>
          void recordTerminated(ctx, ctx.names.durable(c.kind, nodeId), seq, reason, deliveries),
      });
    }),
  );
  return {
    runners,
    async stop(graceMs) {
      clearInterval(refresh);
      clearInterval(requeue);
      clearInterval(sweeper);
      await Promise.all(runners.map((r) => r.stop(graceMs)));
    },
  };
}
