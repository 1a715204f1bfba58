// Read-model tables, created inside one Postgres schema. The live models are in `rm`; a rebuild fills a
// fresh schema beside it with the same DDL and swaps it in atomically (see ./rebuild.ts).
import type { Sql } from '../shared/db.js';

/** Bump when a read model's shape changes: the next start rebuilds into a fresh schema. */
export const READ_MODEL_VERSION = 1;

export function readModelDDL(schema: string): string {
  const s = `"${schema}"`;
  return `
create schema if not exists ${s};

create table if not exists ${s}.projection_checkpoint (
  name text primary key,
  last_seq bigint not null default 0,
  model_version integer not null default ${READ_MODEL_VERSION},
  updated_at timestamptz not null default now()
);

create table if not exists ${s}.images (
  id uuid primary key,
  user_id uuid not null,
  storage_pool_id uuid not null,
  node_id text not null,
  stored_path text not null,
  ext text not null,
  mime text not null,
  size bigint not null,
  sha256 text not null,
  width integer not null,
  height integer not null,
  original_filename text,
  share_link text not null,
  status text not null default 'pending',
  status_reason text,
  variant_count integer not null default 0,
  processing_attempts integer not null default 0,
  created_at timestamptz not null,
  updated_at timestamptz not null,
  processed_at timestamptz,
  deleted_at timestamptz,
  files_deleted_at timestamptz,
  moving_to_pool_id uuid,
  last_move_id uuid,
  last_cleanup_move_id uuid,
  last_seq bigint not null
);

create table if not exists ${s}.image_variants (
  image_id uuid not null,
  variant_type text not null,
  format text not null,
  size_name text not null,
  width integer not null,
  height integer not null,
  bytes bigint not null,
  path text not null,
  sha256 text not null,
  storage_pool_id uuid not null,
  created_at timestamptz not null,
  primary key (image_id, variant_type)
);

create table if not exists ${s}.image_metadata (
  image_id uuid primary key,
  make text,
  model text,
  lens text,
  taken_at text,
  iso double precision,
  f_number double precision,
  exposure_time double precision,
  focal_length double precision,
  orientation integer,
  gps_latitude double precision,
  gps_longitude double precision,
  gps_altitude double precision,
  exif jsonb not null default '{}',
  extracted_at timestamptz not null
);

create table if not exists ${s}.image_backups (
  image_id uuid not null,
  target_pool_id uuid not null,
  status text not null,
  bucket text not null,
  object_key text,
  size bigint,
  checksum text,
  retry_count integer not null default 0,
  last_error text,
  due_at timestamptz,
  requested_at timestamptz not null,
  started_at timestamptz,
  completed_at timestamptz,
  deleted_at timestamptz,
  updated_at timestamptz not null,
  primary key (image_id, target_pool_id)
);

create table if not exists ${s}.pool_usage (
  pool_id uuid primary key,
  used_bytes bigint not null default 0,
  file_count bigint not null default 0
);

create table if not exists ${s}.user_usage (
  user_id uuid primary key,
  used_bytes bigint not null default 0,
  image_count bigint not null default 0
);

`;
}

/**
 * The secondary indexes: only the API's queries use them (every projection statement finds its rows by
 * primary key), so a rebuild creates them once its tables are filled, not row by row while replaying.
 */
export function readModelIndexDDL(schema: string): string {
  const s = `"${schema}"`;
  return `
create index if not exists images_share_link on ${s}.images(share_link);
create index if not exists images_user_created on ${s}.images(user_id, created_at desc, id desc) where deleted_at is null;
create index if not exists images_user_sha on ${s}.images(user_id, sha256) where deleted_at is null;
create index if not exists images_pool on ${s}.images(storage_pool_id) where deleted_at is null;
create index if not exists images_status on ${s}.images(status) where deleted_at is null;
create index if not exists image_backups_status on ${s}.image_backups(status);
`;
}

/** Creates the read-model tables in `schema`, with their secondary indexes unless `indexes` is false. */
export async function ensureReadModels(
  sql: Sql,
  schema: string,
  opts: { indexes?: boolean } = {},
): Promise<void> {
  await sql.unsafe(readModelDDL(schema));
  if (opts.indexes !== false) await ensureReadModelIndexes(sql, schema);
}

export async function ensureReadModelIndexes(sql: Sql, schema: string): Promise<void> {
  await sql.unsafe(readModelIndexDDL(schema));
}

/** The tables a rebuild copies and verify compares, each with its primary key for ordering. */
export const READ_MODEL_TABLES: Readonly<Record<string, string>> = Object.freeze({
  images: 'id',
  image_variants: 'image_id, variant_type',
  image_metadata: 'image_id',
  image_backups: 'image_id, target_pool_id',
  pool_usage: 'pool_id',
  user_usage: 'user_id',
});
