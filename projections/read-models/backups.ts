// image_backups: one row per image and backup target, status pending|uploading|completed|failed|deleted.
import { rowsJson, type ReadModel } from './types.js';

export const backups: ReadModel = {
  BackupRequested: (tx, g) => [
    tx`insert into image_backups (image_id, target_pool_id, status, bucket, retry_count, due_at, requested_at, updated_at)
       select image_id, target_pool_id, 'pending', bucket, retry_count, due_at, at, at
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({
           image_id: e.image_id,
           target_pool_id: e.data.target_pool_id,
           bucket: e.data.bucket,
           retry_count: e.data.attempt - 1,
           due_at: e.data.due_at,
           at: e.occurred_at,
         })),
       )}::text::json) as x(image_id uuid, target_pool_id uuid, bucket text, retry_count integer, due_at timestamptz,
                      at timestamptz)
       on conflict (image_id, target_pool_id) do update set
         status = case when image_backups.status in ('completed', 'deleted') then image_backups.status else 'pending' end,
         due_at = excluded.due_at, updated_at = excluded.updated_at,
         retry_count = greatest(image_backups.retry_count, excluded.retry_count)`,
  ],
  BackupStarted: (tx, g) => [
    tx`update image_backups b set status = 'uploading', started_at = x.at, updated_at = x.at
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({
           image_id: e.image_id,
           target_pool_id: e.data.target_pool_id,
           at: e.occurred_at,
         })),
       )}::text::json) as x(image_id uuid, target_pool_id uuid, at timestamptz)
       where b.image_id = x.image_id and b.target_pool_id = x.target_pool_id
         and b.status not in ('completed', 'deleted')`,
  ],
  BackupCompleted: (tx, g) => [
    tx`update image_backups b set status = 'completed', bucket = x.bucket, object_key = x.key, size = x.size,
         checksum = x.checksum, completed_at = x.at, last_error = null, updated_at = x.at
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({ image_id: e.image_id, at: e.occurred_at, ...e.data })),
       )}::text::json) as x(image_id uuid, target_pool_id uuid, bucket text, key text, size bigint, checksum text,
                      at timestamptz)
       where b.image_id = x.image_id and b.target_pool_id = x.target_pool_id and b.status <> 'deleted'`,
  ],
  BackupFailed: (tx, g) => [
    tx`update image_backups b set status = x.status, last_error = x.error,
         retry_count = greatest(b.retry_count, x.attempt), updated_at = x.at
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({
           image_id: e.image_id,
           target_pool_id: e.data.target_pool_id,
           status: e.data.final ? 'failed' : 'pending',
           error: e.data.error,
           attempt: e.data.attempt,
           at: e.occurred_at,
         })),
       )}::text::json) as x(image_id uuid, target_pool_id uuid, status text, error text, attempt integer, at timestamptz)
       where b.image_id = x.image_id and b.target_pool_id = x.target_pool_id
         and b.status not in ('completed', 'deleted')`,
  ],
  BackupDeleted: (tx, g) => [
    tx`update image_backups b set status = 'deleted', deleted_at = x.at, updated_at = x.at
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({
           image_id: e.image_id,
           target_pool_id: e.data.target_pool_id,
           at: e.occurred_at,
         })),
       )}::text::json) as x(image_id uuid, target_pool_id uuid, at timestamptz)
       where b.image_id = x.image_id and b.target_pool_id = x.target_pool_id`,
  ],
  ImagePurged: (tx, g) => [
    tx`delete from image_backups where image_id in (
         select id from json_to_recordset(${rowsJson(g.map(({ event: e }) => ({ id: e.image_id })))}::text::json)
         as x(id uuid))`,
  ],
  ImageStored: null,
  ImageProcessingStarted: null,
  VariantCreated: null,
  ImageMetadataExtracted: null,
  ImageProcessed: null,
  ImageProcessingFailed: null,
  ImageReprocessRequested: null,
  ImageDeleted: null,
  ImageFilesDeleted: null,
  MoveRequested: null,
  ImageMoved: null,
  SourceFilesDeleted: null,
  MoveFailed: null,
};
