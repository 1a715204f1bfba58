// images + user_usage + the original's share of pool_usage.
// Each step applies a group of events of one type, each about a different image (see ./types.ts).
// Usage counters are sums, so the group's changes are added up per user or pool and applied once.
import { rowsJson, type ReadModel } from './types.js';

export const images: ReadModel = {
  ImageStored: (tx, g) => [
    tx`
    with x as (
      select * from json_to_recordset(${rowsJson(
        g.map(({ seq, event: e }) => ({
          id: e.image_id,
          user_id: e.data.user_id,
          pool_id: e.pool_id,
          node_id: e.node_id,
          stored_path: e.data.stored_path,
          ext: e.data.ext,
          mime: e.data.mime,
          size: e.data.size,
          sha256: e.data.sha256,
          width: e.data.width,
          height: e.data.height,
          original_filename: e.data.original_filename,
          share_link: e.data.share_link,
          at: e.occurred_at,
          seq,
        })),
      )}::text::json) as x(id uuid, user_id uuid, pool_id uuid, node_id text, stored_path text, ext text, mime text,
                     size bigint, sha256 text, width integer, height integer, original_filename text,
                     share_link text, at timestamptz, seq bigint)
    ), ins as (
      insert into images (id, user_id, storage_pool_id, node_id, stored_path, ext, mime, size, sha256, width, height,
                          original_filename, share_link, status, created_at, updated_at, last_seq)
      select id, user_id, pool_id, node_id, stored_path, ext, mime, size, sha256, width, height,
             original_filename, share_link, 'pending', at, at, seq from x
      on conflict (id) do nothing
      returning user_id, storage_pool_id, size
    ), uu as (
      insert into user_usage (user_id, used_bytes, image_count)
      select user_id, sum(size), count(*) from ins group by user_id
      on conflict (user_id) do update set used_bytes = user_usage.used_bytes + excluded.used_bytes,
                                          image_count = user_usage.image_count + excluded.image_count
    ), pu as (
      insert into pool_usage (pool_id, used_bytes, file_count)
      select storage_pool_id, sum(size), count(*) from ins group by storage_pool_id
      on conflict (pool_id) do update set used_bytes = pool_usage.used_bytes + excluded.used_bytes,
                                          file_count = pool_usage.file_count + excluded.file_count
    )
    delete from public.upload_reservations r using x where r.image_id = x.id`,
  ],
  ImageProcessingStarted: (tx, g) => [
    tx`update images i set status = 'processing', status_reason = null, updated_at = x.at, last_seq = x.seq,
         processing_attempts = greatest(i.processing_attempts, x.attempt)
       from json_to_recordset(${rowsJson(
         g.map(({ seq, event: e }) => ({ id: e.image_id, at: e.occurred_at, seq, attempt: e.data.attempt })),
       )}::text::json) as x(id uuid, at timestamptz, seq bigint, attempt integer)
       where i.id = x.id and i.last_seq < x.seq`,
  ],
  ImageProcessed: (tx, g) => [
    tx`update images i set status = 'completed', status_reason = null, width = x.width, height = x.height,
         variant_count = x.variant_count, processed_at = x.at, updated_at = x.at, last_seq = x.seq
       from json_to_recordset(${rowsJson(
         g.map(({ seq, event: e }) => ({
           id: e.image_id,
           at: e.occurred_at,
           seq,
           width: e.data.width,
           height: e.data.height,
           variant_count: e.data.variant_count,
         })),
       )}::text::json) as x(id uuid, at timestamptz, seq bigint, width integer, height integer, variant_count integer)
       where i.id = x.id and i.last_seq < x.seq`,
  ],
  ImageProcessingFailed: (tx, g) => [
    tx`update images i set status = 'failed', status_reason = x.reason, updated_at = x.at, last_seq = x.seq
       from json_to_recordset(${rowsJson(
         g.map(({ seq, event: e }) => ({ id: e.image_id, at: e.occurred_at, seq, reason: e.data.reason })),
       )}::text::json) as x(id uuid, at timestamptz, seq bigint, reason text)
       where i.id = x.id and i.last_seq < x.seq`,
  ],
  ImageReprocessRequested: (tx, g) => [
    tx`update images i set status = 'pending', status_reason = null, updated_at = x.at, last_seq = x.seq
       from json_to_recordset(${rowsJson(
         g.map(({ seq, event: e }) => ({ id: e.image_id, at: e.occurred_at, seq })),
       )}::text::json) as x(id uuid, at timestamptz, seq bigint)
       where i.id = x.id and i.last_seq < x.seq`,
  ],
  ImageDeleted: (tx, g) => [
    tx`with d as (
         update images i set deleted_at = x.at, updated_at = x.at
         from json_to_recordset(${rowsJson(
           g.map(({ event: e }) => ({ id: e.image_id, at: e.occurred_at })),
         )}::text::json) as x(id uuid, at timestamptz)
         where i.id = x.id and i.deleted_at is null
         returning i.user_id, i.size),
       s as (select user_id, sum(size) as size, count(*) as n from d group by user_id)
       update user_usage u set used_bytes = u.used_bytes - s.size, image_count = u.image_count - s.n
       from s where u.user_id = s.user_id`,
  ],
  // The pool gives back exactly what it was charged: the original plus every recorded variant.
  ImageFilesDeleted: (tx, g) => [
    tx`with d as (
         update images i set files_deleted_at = x.at
         from json_to_recordset(${rowsJson(
           g.map(({ event: e }) => ({ id: e.image_id, at: e.occurred_at })),
         )}::text::json) as x(id uuid, at timestamptz)
         where i.id = x.id and i.files_deleted_at is null
         returning i.id, i.storage_pool_id, i.size),
       v as (
         select v.image_id, sum(v.bytes) as bytes, count(*) as n
         from image_variants v where v.image_id in (select id from d) group by v.image_id),
       s as (
         select d.storage_pool_id, sum(d.size + coalesce(v.bytes, 0)) as bytes, sum(1 + coalesce(v.n, 0)) as n
         from d left join v on v.image_id = d.id group by d.storage_pool_id)
       update pool_usage p set used_bytes = p.used_bytes - s.bytes, file_count = p.file_count - s.n
       from s where p.pool_id = s.storage_pool_id`,
  ],
  MoveRequested: (tx, g) => [
    tx`update images i set moving_to_pool_id = x.to_pool_id
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({
           id: e.image_id,
           from_pool_id: e.data.from_pool_id,
           to_pool_id: e.data.to_pool_id,
         })),
       )}::text::json) as x(id uuid, from_pool_id uuid, to_pool_id uuid)
       where i.id = x.id and i.storage_pool_id = x.from_pool_id and i.deleted_at is null`,
  ],
  // Pointers switch in one statement; the target pool is charged for the copies now, the source gives
  // its bytes back when SourceFilesDeleted says they are gone.
  ImageMoved: (tx, g) => [
    tx`with m as (
         update images i set storage_pool_id = x.to_pool_id, node_id = x.to_node_id, moving_to_pool_id = null,
                last_move_id = x.move_id, updated_at = x.at
         from json_to_recordset(${rowsJson(
           g.map(({ event: e }) => ({
             id: e.image_id,
             at: e.occurred_at,
             move_id: e.data.move_id,
             from_pool_id: e.data.from_pool_id,
             to_pool_id: e.data.to_pool_id,
             to_node_id: e.data.to_node_id,
           })),
         )}::text::json) as x(id uuid, at timestamptz, move_id uuid, from_pool_id uuid, to_pool_id uuid, to_node_id text)
         where i.id = x.id and i.storage_pool_id = x.from_pool_id and i.deleted_at is null
         returning i.id, i.size, x.from_pool_id, x.to_pool_id),
       v as (
         update image_variants iv set storage_pool_id = m.to_pool_id
         from m where iv.image_id = m.id and iv.storage_pool_id = m.from_pool_id
         returning iv.image_id, iv.bytes),
       vs as (select image_id, sum(bytes) as bytes, count(*) as n from v group by image_id),
       s as (
         select m.to_pool_id, sum(m.size + coalesce(vs.bytes, 0)) as bytes, sum(1 + coalesce(vs.n, 0)) as n
         from m left join vs on vs.image_id = m.id group by m.to_pool_id)
       insert into pool_usage (pool_id, used_bytes, file_count)
       select to_pool_id, bytes, n from s
       on conflict (pool_id) do update set used_bytes = pool_usage.used_bytes + excluded.used_bytes,
                                           file_count = pool_usage.file_count + excluded.file_count`,
  ],
  SourceFilesDeleted: (tx, g) => [
    tx`with g as (
         update images i set last_cleanup_move_id = x.move_id
         from json_to_recordset(${rowsJson(
           g.map(({ event: e }) => ({
             id: e.image_id,
             move_id: e.data.move_id,
             from_pool_id: e.data.from_pool_id,
             bytes: e.data.bytes,
             files: e.data.files.length,
           })),
         )}::text::json) as x(id uuid, move_id uuid, from_pool_id uuid, bytes bigint, files integer)
         where i.id = x.id and i.last_move_id = x.move_id and i.last_cleanup_move_id is distinct from x.move_id
         returning x.from_pool_id, x.bytes, x.files),
       s as (select from_pool_id, sum(bytes) as bytes, sum(files) as files from g group by from_pool_id)
       update pool_usage p set used_bytes = p.used_bytes - s.bytes, file_count = p.file_count - s.files
       from s where p.pool_id = s.from_pool_id`,
  ],
  MoveFailed: (tx, g) => [
    tx`update images i set moving_to_pool_id = null
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({ id: e.image_id, to_pool_id: e.data.to_pool_id })),
       )}::text::json) as x(id uuid, to_pool_id uuid)
       where i.id = x.id and i.moving_to_pool_id = x.to_pool_id`,
  ],
  ImagePurged: (tx, g) => [
    tx`delete from images where id in (
         select id from json_to_recordset(${rowsJson(g.map(({ event: e }) => ({ id: e.image_id })))}::text::json)
         as x(id uuid))`,
  ],
  VariantCreated: null,
  ImageMetadataExtracted: null,
  BackupRequested: null,
  BackupStarted: null,
  BackupCompleted: null,
  BackupFailed: null,
  BackupDeleted: null,
};
