// image_variants + each variant's share of pool_usage (a re-created variant charges only the difference).
import type { Evolve } from './types.js';

export const evolveVariants: Evolve = (tx, e) => {
  switch (e.type) {
    case 'VariantCreated': {
      const d = e.data;
      const pool = e.pool_id;
      return [
        tx`with old as (
             select bytes from image_variants where image_id = ${e.image_id} and variant_type = ${d.variant_type}),
           img as (select 1 from images where id = ${e.image_id} and deleted_at is null),
           up as (
             insert into image_variants (image_id, variant_type, format, size_name, width, height, bytes, path, sha256,
                                         storage_pool_id, created_at)
             select ${e.image_id}, ${d.variant_type}, ${d.format}, ${d.size_name}, ${d.width}, ${d.height}, ${d.bytes},
                    ${d.path}, ${d.sha256}, ${pool}, ${e.occurred_at}
             where exists (select 1 from img)
             on conflict (image_id, variant_type) do update set format = excluded.format, size_name = excluded.size_name,
               width = excluded.width, height = excluded.height, bytes = excluded.bytes, path = excluded.path,
               sha256 = excluded.sha256
             returning bytes)
           insert into pool_usage (pool_id, used_bytes, file_count)
           select ${pool}, up.bytes - coalesce((select bytes from old), 0),
                  case when exists (select 1 from old) then 0 else 1 end
           from up
           on conflict (pool_id) do update set used_bytes = pool_usage.used_bytes + excluded.used_bytes,
                                               file_count = pool_usage.file_count + excluded.file_count`,
      ];
    }
    case 'ImagePurged':
      return [tx`delete from image_variants where image_id = ${e.image_id}`];
    case 'ImageStored':
    case 'ImageProcessingStarted':
    case 'ImageMetadataExtracted':
    case 'ImageProcessed':
    case 'ImageProcessingFailed':
    case 'ImageReprocessRequested':
    case 'ImageDeleted':
    case 'ImageFilesDeleted':
    case 'BackupRequested':
    case 'BackupStarted':
    case 'BackupCompleted':
    case 'BackupFailed':
    case 'BackupDeleted':
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
