// Operator actions on images, shared by the CLI and the admin API.
import type { Sql } from '../../shared/db.js';
import type { Publisher } from '../../shared/publish.js';
import { makeEvent } from '../../streams/events/codec.js';

export async function requestReprocess(
  sql: Sql,
  pub: Publisher,
  target: { imageId?: string; failed?: boolean },
  by: string,
  /** called after each published ImageReprocessRequested (the CLI's progress bar) */
  onProgress?: (published: number, total: number) => void,
): Promise<string[]> {
  const rows = target.failed
    ? await sql<{ id: string; node_id: string; storage_pool_id: string }[]>`
        select id, node_id, storage_pool_id from images where status = 'failed' and deleted_at is null order by created_at`
    : await sql<{ id: string; node_id: string; storage_pool_id: string }[]>`
        select id, node_id, storage_pool_id from images where id = ${target.imageId ?? ''} and deleted_at is null`;
  onProgress?.(0, rows.length);
  for (const [i, r] of rows.entries()) {
    await pub.publish(
      makeEvent('ImageReprocessRequested', {
        image_id: r.id,
        node_id: r.node_id,
        pool_id: r.storage_pool_id,
        data: { requested_by: by },
      }),
    );
    onProgress?.(i + 1, rows.length);
  }
  return rows.map((r) => r.id);
}
