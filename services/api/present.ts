// The image resource as API consumers see it, assembled from the read models.
import type { Sql } from '../../shared/db.js';
import { poolKey } from '../../shared/s3/client.js';

export interface ImageRow {
  id: string;
  user_id: string;
  storage_pool_id: string;
  node_id: string;
  stored_path: string;
  ext: string;
  mime: string;
  size: number;
  sha256: string;
  width: number;
  height: number;
  original_filename: string | null;
  share_link: string;
  status: 'pending' | 'processing' | 'completed' | 'failed';
  status_reason: string | null;
  variant_count: number;
  created_at: Date;
  updated_at: Date;
  processed_at: Date | null;
  deleted_at: Date | null;
  public_base_url: string | null;
  /** of the image's pool (null when the pool row is gone) */
  storage_type: string | null;
  s3_prefix: string | null;
  s3_private: boolean | null;
}

export interface VariantRow {
  variant_type: string;
  format: string;
  size_name: string;
  width: number;
  height: number;
  bytes: number;
  path: string;
  storage_pool_id: string;
  public_base_url: string | null;
  storage_type: string | null;
  s3_prefix: string | null;
  s3_private: boolean | null;
}

export interface MetadataRow {
  make: string | null;
  model: string | null;
  lens: string | null;
  taken_at: string | null;
  iso: number | null;
  f_number: number | null;
  exposure_time: number | null;
  focal_length: number | null;
  orientation: number | null;
  gps_latitude: number | null;
  gps_longitude: number | null;
  gps_altitude: number | null;
  exif: Record<string, unknown>;
}

export interface BackupRow {
  target_pool_id: string;
  status: string;
  bucket: string;
  object_key: string | null;
  size: number | null;
  checksum: string | null;
  retry_count: number;
  last_error: string | null;
  due_at: Date | null;
  requested_at: Date;
  completed_at: Date | null;
  updated_at: Date;
}

export interface ImageView {
  image: ImageRow;
  variants: VariantRow[];
  metadata: MetadataRow | null;
  backups: BackupRow[];
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

type BackupJson = Omit<BackupRow, 'due_at' | 'requested_at' | 'completed_at' | 'updated_at'> & {
  due_at: string | null;
  requested_at: string;
  completed_at: string | null;
  updated_at: string;
};

const toDate = (s: string | null): Date | null => (s === null ? null : new Date(s));

/**
 * The image with its variants, metadata and backups in ONE statement (one round trip, one snapshot):
 * the read API's hot path. Four separate queries cost ~2× the throughput under load (bench/read-api.ts).
 * Variants, metadata and backups come back as JSON (numbers stay numbers: bigint and float8 columns
 * fit in a double); the backup timestamps are turned back into Dates.
 */
export async function loadImageView(sql: Sql, id: string): Promise<ImageView | null> {
  if (!UUID.test(id)) return null;
  const [row] = await sql<
    (ImageRow & {
      variants_json: VariantRow[];
      metadata_json: MetadataRow | null;
      backups_json: BackupJson[];
    })[]
  >`
    select i.*, p.public_base_url, p.storage_type, p.s3_prefix, p.s3_private,
      coalesce((select json_agg(v order by v.size_name, v.variant_type) from (
        select v.variant_type, v.format, v.size_name, v.width, v.height, v.bytes, v.path, v.storage_pool_id,
               vp.public_base_url, vp.storage_type, vp.s3_prefix, vp.s3_private
        from image_variants v left join storage_pools vp on vp.id = v.storage_pool_id
        where v.image_id = i.id) v), '[]') as variants_json,
      (select to_json(m) from (
        select make, model, lens, taken_at, iso, f_number, exposure_time, focal_length, orientation,
               gps_latitude, gps_longitude, gps_altitude, exif
        from image_metadata where image_id = i.id) m) as metadata_json,
      coalesce((select json_agg(b order by b.requested_at) from (
        select target_pool_id, status, bucket, object_key, size, checksum, retry_count, last_error, due_at,
               requested_at, completed_at, updated_at
        from image_backups where image_id = i.id) b), '[]') as backups_json
    from images i left join storage_pools p on p.id = i.storage_pool_id
    where i.id = ${id}`;
  if (!row) return null;
  const { variants_json: variants, metadata_json: metadata, backups_json: backups, ...image } = row;
  return {
    image,
    variants,
    metadata,
    backups: backups.map((b) => ({
      ...b,
      due_at: toDate(b.due_at),
      requested_at: new Date(b.requested_at),
      completed_at: toDate(b.completed_at),
      updated_at: new Date(b.updated_at),
    })),
  };
}

export function fileUrl(publicBaseUrl: string | null, fallback: string, rel: string): string {
  return `${publicBaseUrl ?? fallback}/uploads/${rel}`;
}

export interface PoolUrlInfo {
  public_base_url: string | null;
  storage_type: string | null;
  s3_prefix: string | null;
  s3_private?: boolean | null;
}

/**
 * The URL of a stored file. Node pools serve `<public_base_url>/uploads/<path>`; a public S3 pool is
 * read straight from the bucket (`<public_base_url>/<key>`, the key with the pool's prefix); a private
 * one (s3_private, or no public_base_url) through `<PUBLIC_DOMAIN>/uploads/<path>`, which redirects to a
 * short-lived presigned URL.
 */
export function poolFileUrl(p: PoolUrlInfo, publicDomain: string, rel: string): string {
  if (p.storage_type !== 's3') return fileUrl(p.public_base_url, publicDomain, rel);
  if (p.s3_private === true || !p.public_base_url) return `${publicDomain}/uploads/${rel}`;
  return `${p.public_base_url}/${poolKey({ prefix: p.s3_prefix ?? '' }, rel)}`;
}

export function presentImage(v: ImageView, publicDomain: string, opts: { includeExif?: boolean } = {}) {
  const i = v.image;
  return {
    image_uuid: i.id,
    status: i.status,
    complete: i.status === 'completed',
    status_reason: i.status_reason,
    url: poolFileUrl(i, publicDomain, i.stored_path),
    view_url: `${publicDomain}/i/${i.share_link}`,
    share_link: i.share_link,
    width: i.width,
    height: i.height,
    size: i.size,
    sha256: i.sha256,
    mime: i.mime,
    original_filename: i.original_filename,
    storage_pool_id: i.storage_pool_id,
    created_at: i.created_at.toISOString(),
    processed_at: i.processed_at?.toISOString() ?? null,
    variants: v.variants.map((x) => ({
      type: x.variant_type,
      format: x.format,
      size: x.size_name,
      width: x.width,
      height: x.height,
      bytes: x.bytes,
      url: poolFileUrl(x, publicDomain, x.path),
    })),
    metadata: v.metadata
      ? {
          make: v.metadata.make,
          model: v.metadata.model,
          lens: v.metadata.lens,
          taken_at: v.metadata.taken_at,
          iso: v.metadata.iso,
          f_number: v.metadata.f_number,
          exposure_time: v.metadata.exposure_time,
          focal_length: v.metadata.focal_length,
          orientation: v.metadata.orientation,
          gps:
            v.metadata.gps_latitude !== null && v.metadata.gps_longitude !== null
              ? {
                  latitude: v.metadata.gps_latitude,
                  longitude: v.metadata.gps_longitude,
                  altitude: v.metadata.gps_altitude,
                }
              : null,
          ...(opts.includeExif ? { exif: v.metadata.exif } : {}),
        }
      : null,
    backups: v.backups.map((b) => ({
      target_pool_id: b.target_pool_id,
      status: b.status,
      bucket: b.bucket,
      object_key: b.object_key,
      size: b.size,
      checksum: b.checksum,
      retry_count: b.retry_count,
      last_error: b.last_error,
      due_at: b.due_at?.toISOString() ?? null,
      completed_at: b.completed_at?.toISOString() ?? null,
    })),
    backup_status: v.backups.length === 0 ? null : summariseBackups(v.backups),
  };
}

function summariseBackups(b: BackupRow[]): string {
  const statuses = new Set(b.map((x) => x.status));
  for (const s of ['failed', 'uploading', 'pending', 'completed', 'deleted']) if (statuses.has(s)) return s;
  return 'pending';
}
