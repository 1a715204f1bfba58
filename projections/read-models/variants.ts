// image_variants + each variant's share of pool_usage (a re-created variant charges only the difference).
import { rowsJson, type ReadModel } from './types.js';

export const variants: ReadModel = {
  VariantCreated: (tx, g) => [
    tx`with x as (
         select * from json_to_recordset(${rowsJson(
           g.map(({ event: e }) => ({
             image_id: e.image_id,
             variant_type: e.data.variant_type,
             format: e.data.format,
             size_name: e.data.size_name,
             width: e.data.width,
             height: e.data.height,
             bytes: e.data.bytes,
             path: e.data.path,
             sha256: e.data.sha256,
             pool_id: e.pool_id,
             at: e.occurred_at,
           })),
         )}::text::json) as x(image_id uuid, variant_type text, format text, size_name text, width integer,
                        height integer, bytes bigint, path text, sha256 text, pool_id uuid, at timestamptz)),
       old as (
         select v.image_id, v.variant_type, v.bytes from image_variants v
         join x on v.image_id = x.image_id and v.variant_type = x.variant_type),
       up as (
         insert into image_variants (image_id, variant_type, format, size_name, width, height, bytes, path, sha256,
                                     storage_pool_id, created_at)
         select image_id, variant_type, format, size_name, width, height, bytes, path, sha256, pool_id, at from x
         where exists (select 1 from images i where i.id = x.image_id and i.deleted_at is null)
         on conflict (image_id, variant_type) do update set format = excluded.format, size_name = excluded.size_name,
           width = excluded.width, height = excluded.height, bytes = excluded.bytes, path = excluded.path,
           sha256 = excluded.sha256
         returning image_id, variant_type, bytes),
       s as (
         -- the event's pool is charged (an updated row keeps its pool): join back to the event
         select x.pool_id, sum(up.bytes - coalesce(old.bytes, 0)) as bytes,
                sum(case when old.image_id is null then 1 else 0 end) as n
         from up join x on x.image_id = up.image_id and x.variant_type = up.variant_type
         left join old on old.image_id = up.image_id and old.variant_type = up.variant_type
         group by x.pool_id)
       insert into pool_usage (pool_id, used_bytes, file_count)
       select pool_id, bytes, n from s
       on conflict (pool_id) do update set used_bytes = pool_usage.used_bytes + excluded.used_bytes,
                                           file_count = pool_usage.file_count + excluded.file_count`,
  ],
  ImagePurged: (tx, g) => [
    tx`delete from image_variants where image_id in (
         select id from json_to_recordset(${rowsJson(g.map(({ event: e }) => ({ id: e.image_id })))}::text::json)
         as x(id uuid))`,
  ],
  ImageStored: null,
  ImageProcessingStarted: null,
  ImageMetadataExtracted: null,
  ImageProcessed: null,
  ImageProcessingFailed: null,
  ImageReprocessRequested: null,
  ImageDeleted: null,
  ImageFilesDeleted: null,
  BackupRequested: null,
  BackupStarted: null,
  BackupCompleted: null,
  BackupFailed: null,
  BackupDeleted: null,
  MoveRequested: null,
  ImageMoved: null,
  SourceFilesDeleted: null,
  MoveFailed: null,
};
