// GET /health: the process is up. GET /ready: NATS, Postgres and the projector are connected.
import { Type } from '@sinclair/typebox';
import type { App } from './app.js';
import type { Ctx } from '../context.js';

async function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error('timeout')), ms))),
    ]);
  } finally {
    clearTimeout(t);
  }
}

export async function readiness(ctx: Ctx) {
  const [nats, postgres] = await Promise.all([
    withTimeout(ctx.nats.jsm.getAccountInfo(), 1_500).then(
      () => true,
      () => false,
    ),
    withTimeout(ctx.sql`select 1`, 1_500).then(
      () => true,
      () => false,
    ),
  ]);
  const projector = ctx.projector
    ? {
        running: true,
        connected: ctx.projector.connected && postgres,
        leader: ctx.projector.leader,
        last_seq: ctx.projector.lastSeq,
      }
    : { running: false, connected: true, leader: false, last_seq: null };
  return { ready: nats && postgres && projector.connected, checks: { nats, postgres, projector } };
}

export async function healthRoutes(app: App, ctx: Ctx) {
  app.get(
    '/health',
    {
      schema: {
        tags: ['health'],
        summary: 'Liveness',
        response: { 200: Type.Object({ status: Type.Literal('ok') }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );
  app.get(
    '/ready',
    { schema: { tags: ['health'], summary: 'Readiness: NATS, Postgres and the projector connected' } },
    async (_req, reply) => {
      const r = await readiness(ctx);
      return reply.status(r.ready ? 200 : 503).send({ status: r.ready ? 'ready' : 'not_ready', ...r.checks });
    },
  );
}
