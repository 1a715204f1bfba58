// Starting a pool move (shared by `npx pixelfox pools move` and `POST /api/admin/moves`): one
// MoveRequested per image of the source pool, all with one move_id, routed to the node that serves the
// source pool (its mover consumer does the work, see ./worker.ts); out of an S3 pool, to the target's
// node (see moverNodeFor).
import { randomUUID } from 'node:crypto';
import { AppError, badRequest, notFound } from '../../shared/errors.js';
import { getPool } from '../../shared/pools.js';
import { deterministicId, makeEvent } from '../../streams/events/codec.js';
import type { Ctx } from '../context.js';
import { moverNodeFor, planMoveRoute } from './plan.js';

export interface StartMoveOptions {
  /** source pool: id or name */
  fromPoolId: string;
  /** target pool: id or name */
  toPoolId: string;
  /** move at most this many images (oldest first); all when absent */
  limit?: number;
  /** request id of the HTTP request (or CLI run) that started the move, kept as correlation_id */
  correlationId?: string;
  /** called after each published MoveRequested */
  onProgress?: (published: number, total: number) => void;
}

export interface StartMoveResult {
  move_id: string;
  /** MoveRequested events published (images to move) */
  count: number;
  from_pool_id: string;
  to_pool_id: string;
}

/**
 * Publishes one MoveRequested per non-deleted image of the source pool (oldest first, at most `limit`).
 * Refuses (AppError: 404 unknown pool, 400 otherwise) what the mover would refuse for every image:
 * same pool, S3 pools not served by every node, an inactive target, a remote target without
 * upload_api_url. Starting the same move twice is harmless: the mover moves each image once and ignores
 * the rest.
 */
export async function startMove(
  ctx: Pick<Ctx, 'sql' | 'pub'>,
  o: StartMoveOptions,
): Promise<StartMoveResult> {
  if (o.limit !== undefined && (!Number.isInteger(o.limit) || o.limit < 1))
    throw badRequest('invalid_limit', 'limit must be a positive integer');
  const [from, to] = await Promise.all([getPool(ctx.sql, o.fromPoolId), getPool(ctx.sql, o.toPoolId)]);
  if (!from) throw notFound(`source pool ${o.fromPoolId} not found`);
  if (!to) throw notFound(`target pool ${o.toPoolId} not found`);
  // Decided as the mover's node will decide it: the same refusals, before anything is published.
  const moverNode = moverNodeFor(from, to);
  const route = planMoveRoute(from, to, moverNode);
  if (!route.ok) throw new AppError(400, 'move_refused', route.reason);

  const moveId = randomUUID();
  const images = await ctx.sql<{ id: string }[]>`
    select id from images where storage_pool_id = ${from.id} and deleted_at is null
    order by created_at, id ${o.limit !== undefined ? ctx.sql`limit ${o.limit}` : ctx.sql``}`;
  let count = 0;
  for (const img of images) {
    await ctx.pub.publish(
      makeEvent('MoveRequested', {
        // Deterministic, so a publish retried after a timeout is stored once.
        id: deterministicId(moveId, img.id, 'requested'),
        image_id: img.id,
        node_id: moverNode,
        pool_id: from.id,
        correlation_id: o.correlationId ?? null,
        data: { move_id: moveId, from_pool_id: from.id, to_pool_id: to.id },
      }),
    );
    count++;
    o.onProgress?.(count, images.length);
  }
  return { move_id: moveId, count, from_pool_id: from.id, to_pool_id: to.id };
}
