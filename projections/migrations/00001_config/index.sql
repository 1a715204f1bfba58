-- Configuration tables: plain Postgres, not event-sourced (operators edit them directly).
create table storage_pools (
  id uuid primary key default gen_random_uuid(),
  name text not null unique,
  storage_type text not null check (storage_type in ('local', 'nfs', 's3')),
  storage_tier text not null default 'hot' check (storage_tier in ('hot', 'warm', 'cold', 'archive')),
  priority integer not null default 100,
  base_path text,
  public_base_url text not null,
  upload_api_url text,
  node_id text not null default 'local' check (node_id ~ '^[A-Za-z0-9_-]{1,64}$'),
  max_capacity_bytes bigint check (max_capacity_bytes is null or max_capacity_bytes > 0),
  is_active boolean not null default true,
  is_backup_target boolean not null default false,
  s3_bucket text,
  s3_region text,
  s3_endpoint text,
  s3_access_key text,
  s3_secret_key text,
  s3_force_path_style boolean not null default true,
  s3_prefix text not null default '',
  description text not null default '',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  check (storage_type = 's3' or base_path is not null),
  check (storage_type <> 's3' or s3_bucket is not null)
);

create table settings (
  key text primary key,
  value jsonb not null,
  updated_at timestamptz not null default now()
);

create table users (
  id uuid primary key default gen_random_uuid(),
  email text not null unique,
  plan text not null default 'free' check (plan in ('free', 'premium', 'premium_max')),
  prefs jsonb not null default '{}',
  created_at timestamptz not null default now(),
  disabled_at timestamptz
);

create table api_keys (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references users(id) on delete cascade,
  name text not null default 'default',
  prefix text not null,
  key_hash text not null unique,
  created_at timestamptz not null default now(),
  revoked_at timestamptz,
  last_used_at timestamptz
);
create index api_keys_user on api_keys(user_id);

-- Quota reservations: bytes of uploads that were accepted but whose ImageStored is not projected yet.
-- Written under a per-user advisory lock by the storage node, deleted by the projector in the same
-- transaction that counts the image, so concurrent uploads can never overshoot a quota.
create table upload_reservations (
  image_id uuid primary key,
  user_id uuid not null,
  bytes bigint not null,
  created_at timestamptz not null default now()
);
create index upload_reservations_user on upload_reservations(user_id);
