// image_metadata: selected EXIF fields plus the full EXIF as JSON.
import type { Evolve } from './types.js';

export const evolveMetadata: Evolve = (tx, e) => {
  switch (e.type) {
    case 'ImageMetadataExtracted': {
      const d = e.data;
      return [
        tx`insert into image_metadata (image_id, make, model, lens, taken_at, iso, f_number, exposure_time, focal_length,
                                       orientation, gps_latitude, gps_longitude, gps_altitude, exif, extracted_at)
           values (${e.image_id}, ${d.make}, ${d.model}, ${d.lens}, ${d.taken_at}, ${d.iso}, ${d.f_number},
                   ${d.exposure_time}, ${d.focal_length}, ${d.orientation}, ${d.gps_latitude}, ${d.gps_longitude},
                   ${d.gps_altitude}, ${tx.json(d.exif as never)}, ${e.occurred_at})
           on conflict (image_id) do update set make = excluded.make, model = excluded.model, lens = excluded.lens,
             taken_at = excluded.taken_at, iso = excluded.iso, f_number = excluded.f_number,
             exposure_time = excluded.exposure_time, focal_length = excluded.focal_length,
             orientation = excluded.orientation, gps_latitude = excluded.gps_latitude,
             gps_longitude = excluded.gps_longitude, gps_altitude = excluded.gps_altitude, exif = excluded.exif,
             extracted_at = excluded.extracted_at`,
      ];
    }
    case 'ImagePurged':
      return [tx`delete from image_metadata where image_id = ${e.image_id}`];
    case 'ImageStored':
    case 'ImageProcessingStarted':
    case 'VariantCreated':
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
