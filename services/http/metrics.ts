// GET /metrics (Prometheus) and GET /asyncapi.json, on every process.
//
// Counters and histograms (HTTP latency, uploads, processing) live in shared/metrics.ts and are
// incremented where things happen. State is read when Prometheus scrapes: consumer lag from JetStream,
// projector lag, backups by status, pool usage from the read models and pool health from KV. A scrape
// costs one consumer listing, one stream info and three small queries, cached for 2 s so several
// scrapers (or a dashboard refreshing fast) cost no more.
import { Type } from '@sinclair/typebox';
import { Gauge, Registry } from 'prom-client';
import { readHealth } from '../../shared/kv.js';
import { httpRequestDuration, registry } from '../../shared/metrics.js';
import type { PoolHealth } from '../../shared/pools.js';
import { asyncApiDocument } from '../../streams/asyncapi.js';
import { CONSUMERS } from '../../streams/definitions.js';
import type { Names } from '../../streams/subjects.js';
import { consumerLag, projectorLag, type ConsumerLag } from '../ops/consumers.js';
import type { Ctx } from '../context.js';
import type { App } from './app.js';

/** How long one reading of the scrape-time state is reused. */
const SNAPSHOT_TTL_MS = 2_000;

/**
 * Observes every request of the app in the latency histogram. Hooks are encapsulated per plugin, so this
 * must be called on the root instance before any route plugin is registered (services/stack.ts).
 */
export function observeHttp(app: App): void {
  app.addHook('onResponse', (req, reply, done) => {
    httpRequestDuration.observe(
      {
        method: req.method,
        // The pattern, not the URL: one series per route, whatever the ids in the path.
        route: req.routeOptions.url ?? '(unmatched)',
        status_code: String(reply.statusCode),
      },
      reply.elapsedTime / 1000,
    );
    done();
  });
}

interface PoolRow {
  id: string;
  name: string;
  node_id: string;
  is_active: boolean;
  max_capacity_bytes: number | null;
  used_bytes: number;
  file_count: number;
}

interface Snapshot {
  consumers: ConsumerLag[] | null;
  projector: { head: number; checkpoint: number; lag: number } | null;
  backups: { status: string; count: number }[] | null;
  pools: PoolRow[] | null;
  health: Map<string, PoolHealth> | null;
  failedJobs: number | null;
}

/**
 * `<ns>_<kind>-<node>` → kind and node (longest kind first: `backup-scheduler` before `backup`). Other
 * durables of the namespace keep their name as kind; consumers without the prefix are ephemeral (the
 * projector's ordered consumer, a subscriber's).
 */
export function parseDurable(n: Names, durable: string): { kind: string; node: string } {
  const kinds = Object.values(CONSUMERS)
    .map((c) => c.kind as string)
    .sort((a, b) => b.length - a.length);
  for (const kind of kinds) {
    const prefix = `${n.ns}_${kind}-`;
    if (durable.startsWith(prefix)) return { kind, node: durable.slice(prefix.length) };
  }
  if (durable.startsWith(`${n.ns}_`)) return { kind: durable.slice(n.ns.length + 1), node: '' };
  return { kind: 'ephemeral', node: '' };
}

async function readSnapshot(ctx: Ctx): Promise<Snapshot> {
  const soft = <T>(what: string, p: Promise<T>): Promise<T | null> =>
    p.catch((err: unknown) => {
      ctx.log.warn({ err, source: what }, 'metrics: could not read');
      return null;
    });
  const [consumers, projector, backups, pools, failedJobs] = await Promise.all([
    soft('consumers', consumerLag(ctx.nats.jsm, ctx.names)),
    soft('projector', projectorLag(ctx.nats.jsm, ctx.names, ctx.sql)),
    soft(
      'backups',
      ctx.sql<{ status: string; count: number }[]>`
        select status, count(*)::int as count from image_backups group by status`,
    ),
    soft(
      'pools',
      ctx.sql<PoolRow[]>`
        select p.id, p.name, p.node_id, p.is_active, p.max_capacity_bytes,
               coalesce(u.used_bytes, 0) as used_bytes, coalesce(u.file_count, 0) as file_count
        from storage_pools p left join pool_usage u on u.pool_id = p.id`,
    ),
    soft(
      'failed_jobs',
      ctx.sql<{ n: number }[]>`select count(*)::int as n from failed_jobs where retried_at is null`.then(
        (r) => r[0]?.n ?? 0,
      ),
    ),
  ]);
  const health = pools
    ? await soft(
        'pool_health',
        readHealth(
          ctx.kv.health,
          pools.map((p) => p.id),
        ),
      )
    : null;
  return { consumers, projector, backups, pools, health, failedJobs };
}

export async function metricsRoutes(app: App, ctx: Ctx): Promise<void> {
  // Per process state, in its own registry: several stacks in one process (tests) each report their own.
  const state = new Registry();
  const gauge = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
    new Gauge<L>({ name, help, labelNames, registers: [state] });
  const consumerLabels = ['consumer', 'kind', 'node'] as const;
  const g = {
    up: gauge('pixelfox_metrics_source_up', '1 when the source could be read at the last scrape', ['source']),
    pending: gauge(
      'pixelfox_consumer_pending_messages',
      'Messages not yet delivered to the durable consumer',
      consumerLabels,
    ),
    ackPending: gauge(
      'pixelfox_consumer_ack_pending_messages',
      'Messages delivered and not yet acknowledged (work in progress or waiting)',
      consumerLabels,
    ),
    redelivered: gauge(
      'pixelfox_consumer_redelivered_messages',
      'Messages delivered more than once and not yet acknowledged',
      consumerLabels,
    ),
    waiting: gauge(
      'pixelfox_consumer_waiting_pulls',
      'Open pull requests of the consumer (idle workers)',
      consumerLabels,
    ),
    head: gauge('pixelfox_stream_last_seq', 'Sequence of the last event in the stream'),
    checkpoint: gauge('pixelfox_projector_checkpoint_seq', 'Last stream sequence applied to the read models'),
    projectorLag: gauge(
      'pixelfox_projector_lag_events',
      'Events in the stream not yet applied to the read models',
    ),
    backups: gauge('pixelfox_backups', 'Backups by status (read model)', ['status']),
    failedJobs: gauge(
      'pixelfox_failed_jobs_open',
      'Failed jobs (max deliveries or terminated) not yet retried',
    ),
    used: gauge('pixelfox_pool_used_bytes', 'Bytes charged to the pool (originals and variants)', [
      'pool_id',
      'pool',
      'node',
    ]),
    files: gauge('pixelfox_pool_files', 'Files in the pool', ['pool_id', 'pool', 'node']),
    capacity: gauge('pixelfox_pool_capacity_bytes', 'Configured capacity of the pool (pools with a limit)', [
      'pool_id',
      'pool',
      'node',
    ]),
    active: gauge('pixelfox_pool_active', '1 when the pool takes new uploads (operator switch)', [
      'pool_id',
      'pool',
      'node',
    ]),
    healthy: gauge(
      'pixelfox_pool_healthy',
      "1 when the pool's node reports it healthy and reachable; 0 when not or silent",
      ['pool_id', 'pool', 'node'],
    ),
    free: gauge('pixelfox_pool_disk_free_bytes', "Free disk space reported by the pool's node", [
      'pool_id',
      'pool',
      'node',
    ]),
  };

  let cached: { at: number; snapshot: Promise<Snapshot> } | null = null;
  const snapshot = (): Promise<Snapshot> => {
    if (!cached || Date.now() - cached.at > SNAPSHOT_TTL_MS)
      cached = { at: Date.now(), snapshot: readSnapshot(ctx) };
    return cached.snapshot;
  };

  const render = async (): Promise<string> => {
    const s = await snapshot();
    for (const x of Object.values(g)) x.reset();
    g.up.set({ source: 'consumers' }, s.consumers ? 1 : 0);
    g.up.set({ source: 'projector' }, s.projector ? 1 : 0);
    g.up.set({ source: 'backups' }, s.backups ? 1 : 0);
    g.up.set({ source: 'pools' }, s.pools ? 1 : 0);
    g.up.set({ source: 'pool_health' }, s.health ? 1 : 0);
    g.up.set({ source: 'failed_jobs' }, s.failedJobs === null ? 0 : 1);
    for (const c of s.consumers ?? []) {
      const parsed = parseDurable(ctx.names, c.name);
      // Ephemeral consumers get a new random name at every restart: one summed series keeps the
      // number of series bounded.
      const labels = { consumer: parsed.kind === 'ephemeral' ? '(ephemeral)' : c.name, ...parsed };
      g.pending.inc(labels, c.pending);
      g.ackPending.inc(labels, c.ack_pending);
      g.redelivered.inc(labels, c.redelivered);
      g.waiting.inc(labels, c.waiting);
    }
    if (s.projector) {
      g.head.set(s.projector.head);
      g.checkpoint.set(s.projector.checkpoint);
      g.projectorLag.set(s.projector.lag);
    }
    for (const b of s.backups ?? []) g.backups.set({ status: b.status }, b.count);
    if (s.failedJobs !== null) g.failedJobs.set(s.failedJobs);
    for (const p of s.pools ?? []) {
      const labels = { pool_id: p.id, pool: p.name, node: p.node_id };
      g.used.set(labels, Number(p.used_bytes));
      g.files.set(labels, Number(p.file_count));
      if (p.max_capacity_bytes !== null) g.capacity.set(labels, Number(p.max_capacity_bytes));
      g.active.set(labels, p.is_active ? 1 : 0);
      const h = s.health?.get(p.id);
      g.healthy.set(labels, h?.healthy && h.reachable ? 1 : 0);
      if (h?.free_bytes !== null && h?.free_bytes !== undefined) g.free.set(labels, h.free_bytes);
    }
    return `${await registry.metrics()}\n${await state.metrics()}`;
  };

  app.get(
    '/metrics',
    {
      schema: {
        tags: ['operations'],
        summary: 'Prometheus metrics (text exposition format)',
        description:
          'HTTP latency per route, uploads, processing durations, consumer and projector lag, backups by status, pool usage and health.',
        produces: ['text/plain'],
        response: {
          200: Type.String({
            description: 'Prometheus text format 0.0.4',
            examples: [
              'pixelfox_consumer_pending_messages{consumer="pixelfox_processor-local",kind="processor",node="local"} 0',
            ],
          }),
        },
      },
    },
    async (_req, reply) => reply.type(registry.contentType).send(await render()),
  );

  let asyncApi: ReturnType<typeof asyncApiDocument> | null = null;
  app.get(
    '/asyncapi.json',
    {
      schema: {
        tags: ['operations'],
        summary: 'AsyncAPI 3.0 document of the event stream (every event type and its payload schema)',
        response: {
          200: Type.Object(
            {
              asyncapi: Type.String({ examples: ['3.0.0'] }),
              info: Type.Object({}, { additionalProperties: true }),
            },
            { additionalProperties: true },
          ),
        },
      },
    },
    async () => (asyncApi ??= asyncApiDocument()),
  );
}
