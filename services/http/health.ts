// GET /health: the process is up. GET /ready: NATS, Postgres and the projector are connected.
import { Type } from '@sinclair/typebox';
import type { App } from './app.js';
import type { Ctx } from '../context.js';

const Ready = Type.Object(
  {
    status: Type.Union([Type.Literal('ready'), Type.Literal('not_ready')]),
    nats: Type.Boolean({ description: 'JetStream answered within 1.5 s' }),
    postgres: Type.Boolean({ description: 'Postgres answered within 1.5 s' }),
    projector: Type.Object(
      {
        running: Type.Boolean({ description: 'this process runs the projector role' }),
        connected: Type.Boolean(),
        leader: Type.Boolean({ description: 'this projector holds the lease and applies events' }),
        last_seq: Type.Union([Type.Integer(), Type.Null()], {
          description: 'last stream sequence applied (null without the projector role)',
        }),
      },
      { description: 'always connected when this process does not run the projector' },
    ),
  },
  {
    examples: [
      {
        status: 'ready',
        nats: true,
        postgres: true,
        projector: { running: true, connected: true, leader: true, last_seq: 1200 },
      },
    ],
  },
);

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
        response: { 200: Type.Object({ status: Type.Literal('ok') }, { examples: [{ status: 'ok' }] }) },
      },
    },
    async () => ({ status: 'ok' as const }),
  );
  app.get(
    '/ready',
    {
      schema: {
        tags: ['health'],
        summary: 'Readiness: NATS, Postgres and the projector connected',
        response: {
          200: Ready,
          // Not ready: the same checks; while shutting down: the error shape (code shutting_down).
          503: Type.Union([Ready, Type.Ref('Error')]),
        },
      },
    },
    async (_req, reply) => {
      const r = await readiness(ctx);
      return reply.status(r.ready ? 200 : 503).send({ status: r.ready ? 'ready' : 'not_ready', ...r.checks });
    },
  );
}
