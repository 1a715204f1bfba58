-- Direct-to-S3 uploads waiting for their completion call. Coordination state like upload_reservations,
-- not a fact: the fact is the ImageStored that a successful completion publishes. Rows are kept after
-- completion so that a repeated completion call gets the same answer, and so that the sweeper deletes
-- the objects of uploads never completed (driven by these rows, never by a bucket listing).
create table s3_uploads (
  upload_id uuid primary key,
  user_id uuid not null,
  pool_id uuid not null,
  -- the uuid in the object key; becomes the image id when the upload is accepted
  image_id uuid not null unique,
  -- path inside the pool (original/YYYY/MM/DD/<uuid>.<ext>) and the bucket key (with the pool's prefix)
  stored_path text not null,
  object_key text not null,
  ext text not null,
  original_filename text,
  max_bytes bigint not null check (max_bytes > 0),
  expires_at timestamptz not null,
  created_at timestamptz not null default now(),
  -- set while one completion call (or the sweeper) works on the row; a stale claim may be taken over
  claimed_at timestamptz,
  completed_at timestamptz,
  -- pending | stored | duplicate | rejected | expired
  status text not null default 'pending'
    check (status in ('pending', 'stored', 'duplicate', 'rejected', 'expired')),
  -- the answer of the completion, replayed to a repeated call
  response_status integer,
  response jsonb,
  -- the staging object was deleted after the URL expired (nothing the client wrote can remain)
  swept_at timestamptz
);
create index s3_uploads_unswept on s3_uploads(expires_at) where swept_at is null;

-- A private S3 pool: its objects are not publicly readable; /uploads/<path> on any node redirects to a
-- short-lived presigned GET instead of the API handing out bucket URLs.
alter table storage_pools add column s3_private boolean not null default false;
