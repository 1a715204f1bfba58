// image_metadata: selected EXIF fields plus the full EXIF as JSON.
import { rowsJson, type ReadModel } from './types.js';

export const metadata: ReadModel = {
  ImageMetadataExtracted: (tx, g) => [
    tx`insert into image_metadata (image_id, make, model, lens, taken_at, iso, f_number, exposure_time, focal_length,
                                   orientation, gps_latitude, gps_longitude, gps_altitude, exif, extracted_at)
       select image_id, make, model, lens, taken_at, iso, f_number, exposure_time, focal_length,
              orientation, gps_latitude, gps_longitude, gps_altitude, exif, at
       from json_to_recordset(${rowsJson(
         g.map(({ event: e }) => ({ image_id: e.image_id, at: e.occurred_at, ...e.data })),
       )}::text::json) as x(image_id uuid, make text, model text, lens text, taken_at text, iso double precision,
                      f_number double precision, exposure_time double precision, focal_length double precision,
                      orientation integer, gps_latitude double precision, gps_longitude double precision,
                      gps_altitude double precision, exif jsonb, at timestamptz)
       on conflict (image_id) do update set make = excluded.make, model = excluded.model, lens = excluded.lens,
         taken_at = excluded.taken_at, iso = excluded.iso, f_number = excluded.f_number,
         exposure_time = excluded.exposure_time, focal_length = excluded.focal_length,
         orientation = excluded.orientation, gps_latitude = excluded.gps_latitude,
         gps_longitude = excluded.gps_longitude, gps_altitude = excluded.gps_altitude, exif = excluded.exif,
         extracted_at = excluded.extracted_at`,
  ],
  ImagePurged: (tx, g) => [
    tx`delete from image_metadata where image_id in (
         select id from json_to_recordset(${rowsJson(g.map(({ event: e }) => ({ id: e.image_id })))}::text::json)
         as x(id uuid))`,
  ],
  ImageStored: null,
  ImageProcessingStarted: null,
  VariantCreated: null,
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
