// images + user_usage + the original's share of pool_usage.
import type { Evolve } from './types.js';

export const evolveImages: Evolve = (tx, e, seq) => {
  const at = e.occurred_at;
  switch (e.type) {
    case 'ImageStored': {
      const d = e.data;
      return [
        tx`
        with ins as (
          insert into images (id, user_id, storage_pool_id, node_id, stored_path, ext, mime, size, sha256, width, height,
                              original_filename, share_link, status, created_at, updated_at, last_seq)
          values (${e.image_id}, ${d.user_id}, ${e.pool_id}, ${e.node_id}, ${d.stored_path}, ${d.ext}, ${d.mime}, ${d.size},
                  ${d.sha256}, ${d.width}, ${d.height}, ${d.original_filename}, ${d.share_link}, 'pending', ${at}, ${at}, ${seq})
          on conflict (id) do nothing
          returning user_id, storage_pool_id, size
        ), uu as (
          insert into user_usage (user_id, used_bytes, image_count) select user_id, size, 1 from ins
          on conflict (user_id) do update set used_bytes = user_usage.used_bytes + excluded.used_bytes,
                                              image_count = user_usage.image_count + 1
        ), pu as (
          insert into pool_usage (pool_id, used_bytes, file_count) select storage_pool_id, size, 1 from ins
          on conflict (pool_id) do update set used_bytes = pool_usage.used_bytes + excluded.used_bytes,
                                              file_count = pool_usage.file_count + 1
        )
        delete from public.upload_reservations where image_id = ${e.image_id}`,
      ];
    }
    case 'ImageProcessingStarted':
      return [
        tx`update images set status = 'processing', status_reason = null, updated_at = ${at}, last_seq = ${seq},
             processing_attempts = greatest(processing_attempts, ${e.data.attempt})
           where id = ${e.image_id} and last_seq < ${seq}`,
      ];
    case 'ImageProcessed':
      return [
        tx`update images set status = 'completed', status_reason = null, width = ${e.data.width}, height = ${e.data.height},
             variant_count = ${e.data.variant_count}, processed_at = ${at}, updated_at = ${at}, last_seq = ${seq}
           where id = ${e.image_id} and last_seq < ${seq}`,
      ];
    case 'ImageProcessingFailed':
      return [
        tx`update images set status = 'failed', status_reason = ${e.data.reason}, updated_at = ${at}, last_seq = ${seq}
           where id = ${e.image_id} and last_seq < ${seq}`,
      ];
    case 'ImageReprocessRequested':
      return [
        tx`update images set status = 'pending', status_reason = null, updated_at = ${at}, last_seq = ${seq}
           where id = ${e.image_id} and last_seq < ${seq}`,
      ];
    case 'ImageDeleted':
      return [
        tx`with d as (
             update images set deleted_at = ${at}, updated_at = ${at} where id = ${e.image_id} and deleted_at is null
             returning user_id, size)
           update user_usage u set used_bytes = u.used_bytes - d.size, image_count = u.image_count - 1
           from d where u.user_id = d.user_id`,
      ];
    case 'ImageFilesDeleted':
      // The pool gives back exactly what it was charged: the original plus every recorded variant.
      return [
        tx`with d as (
             update images set files_deleted_at = ${at} where id = ${e.image_id} and files_deleted_at is null
             returning storage_pool_id, size),
           v as (select coalesce(sum(bytes), 0) as bytes, count(*) as n from image_variants where image_id = ${e.image_id})
           update pool_usage p set used_bytes = p.used_bytes - d.size - v.bytes, file_count = p.file_count - 1 - v.n
           from d, v where p.pool_id = d.storage_pool_id`,
      ];
    case 'MoveRequested':
      return [
        tx`update images set moving_to_pool_id = ${e.data.to_pool_id}
           where id = ${e.image_id} and storage_pool_id = ${e.data.from_pool_id} and deleted_at is null`,
      ];
    case 'ImageMoved': {
      const d = e.data;
      // Pointers switch in one statement; the target pool is charged for the copies now, the source
      // gives its bytes back when SourceFilesDeleted says they are gone.
      return [
        tx`with m as (
             update images set storage_pool_id = ${d.to_pool_id}, node_id = ${d.to_node_id}, moving_to_pool_id = null,
                    last_move_id = ${d.move_id}, updated_at = ${at}
             where id = ${e.image_id} and storage_pool_id = ${d.from_pool_id} and deleted_at is null
             returning size),
           v as (
             update image_variants set storage_pool_id = ${d.to_pool_id}
             where image_id = ${e.image_id} and storage_pool_id = ${d.from_pool_id} and exists (select 1 from m)
             returning bytes)
           insert into pool_usage (pool_id, used_bytes, file_count)
           select ${d.to_pool_id}, m.size + coalesce((select sum(bytes) from v), 0), 1 + (select count(*) from v) from m
           on conflict (pool_id) do update set used_bytes = pool_usage.used_bytes + excluded.used_bytes,
                                               file_count = pool_usage.file_count + excluded.file_count`,
      ];
    }
    case 'SourceFilesDeleted': {
      const d = e.data;
      return [
        tx`with g as (
             update images set last_cleanup_move_id = ${d.move_id}
             where id = ${e.image_id} and last_move_id = ${d.move_id}
               and last_cleanup_move_id is distinct from ${d.move_id} returning id)
           update pool_usage set used_bytes = used_bytes - ${d.bytes}, file_count = file_count - ${d.files.length}
           where pool_id = ${d.from_pool_id} and exists (select 1 from g)`,
      ];
    }
    case 'MoveFailed':
      return [
        tx`update images set moving_to_pool_id = null
           where id = ${e.image_id} and moving_to_pool_id = ${e.data.to_pool_id}`,
      ];
    case 'ImagePurged':
      return [tx`delete from images where id = ${e.image_id}`];
    case 'VariantCreated':
    case 'ImageMetadataExtracted':
    case 'BackupRequested':
    case 'BackupStarted':
    case 'BackupCompleted':
    case 'BackupFailed':
    case 'BackupDeleted':
      return [];
    default: {
      const unreachable: never = e;
      return unreachable;
    }
  }
};
