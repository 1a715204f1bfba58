// image_backups: one row per image and backup target, status pending|uploading|completed|failed|deleted.
import type { Evolve } from './types.js';

export const evolveBackups: Evolve = (tx, e) => {
  const at = e.occurred_at;
  switch (e.type) {
    case 'BackupRequested': {
      const d = e.data;
      return [
        tx`insert into image_backups (image_id, target_pool_id, status, bucket, retry_count, due_at, requested_at, updated_at)
           values (${e.image_id}, ${d.target_pool_id}, 'pending', ${d.bucket}, ${d.attempt - 1}, ${d.due_at}, ${at}, ${at})
           on conflict (image_id, target_pool_id) do update set
             status = case when image_backups.status in ('completed', 'deleted') then image_backups.status else 'pending' end,
             due_at = excluded.due_at, updated_at = excluded.updated_at,
             retry_count = greatest(image_backups.retry_count, excluded.retry_count)`,
      ];
    }
    case 'BackupStarted':
      return [
        tx`update image_backups set status = 'uploading', started_at = ${at}, updated_at = ${at}
           where image_id = ${e.image_id} and target_pool_id = ${e.data.target_pool_id}
             and status not in ('completed', 'deleted')`,
      ];
    case 'BackupCompleted': {
      const d = e.data;
      return [
        tx`update image_backups set status = 'completed', bucket = ${d.bucket}, object_key = ${d.key}, size = ${d.size},
             checksum = ${d.checksum}, completed_at = ${at}, last_error = null, updated_at = ${at}
           where image_id = ${e.image_id} and target_pool_id = ${d.target_pool_id} and status <> 'deleted'`,
      ];
    }
    case 'BackupFailed': {
      const d = e.data;
      return [
        tx`update image_backups set status = ${d.final ? 'failed' : 'pending'}, last_error = ${d.error},
             retry_count = greatest(retry_count, ${d.attempt}), updated_at = ${at}
           where image_id = ${e.image_id} and target_pool_id = ${d.target_pool_id}
             and status not in ('completed', 'deleted')`,
      ];
    }
    case 'BackupDeleted':
      return [
        tx`update image_backups set status = 'deleted', deleted_at = ${at}, updated_at = ${at}
           where image_id = ${e.image_id} and target_pool_id = ${e.data.target_pool_id}`,
      ];
    case 'ImagePurged':
      return [tx`delete from image_backups where image_id = ${e.image_id}`];
    case 'ImageStored':
    case 'ImageProcessingStarted':
    case 'VariantCreated':
    case 'ImageMetadataExtracted':
    case 'ImageProcessed':
    case 'ImageProcessingFailed':
    case 'ImageReprocessRequested':
    case 'ImageDeleted':
    case 'ImageFilesDeleted':
    case 'MoveRequested':
    case 'ImageMoved':
    case 'SourceFilesDeleted':
    case 'MoveFailed':
      return [];
    default: {
      const unreachable: never = e;
      return unreachable;
    }
  }
};
