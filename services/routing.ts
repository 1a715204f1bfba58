// After a move, an image's later work belongs to the target node. A message that reached the old node
// (published before the move was projected) is handed on: the same request, addressed to the node that
// owns the image now. Every handler that acts on an image's files calls this first.
//
// The event's own node_id says which node's consumer took it (consumers filter on it): this node's, or
// `_any` (S3 pools) on any worker node. It is compared with the image's owner, not NODE_ID, so that the
// `_any` consumers running on every node hand on exactly as a node's own consumers do.
import { ack, type Outcome } from '../shared/consumer.js';
import { deterministicId } from '../streams/events/codec.js';
import type { AnyEvent } from '../streams/events/catalog.js';
import type { Ctx } from './context.js';

export async function handOnIfMoved(ctx: Ctx, event: AnyEvent, ownerNodeId: string): Promise<Outcome | null> {
  if (ownerNodeId === event.node_id) return null;
  const forwarded = {
    ...event,
    id: deterministicId(event.id, 'handed-on', ownerNodeId),
    node_id: ownerNodeId,
    causation_id: event.id,
  } as AnyEvent;
  await ctx.pub.publish(forwarded);
  ctx.log.info(
    { imageId: event.image_id, type: event.type, to: ownerNodeId },
    'handed on to the owning node',
  );
  return ack;
}
