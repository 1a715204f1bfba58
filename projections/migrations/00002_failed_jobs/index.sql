-- Failed work, recorded from JetStream advisories (max deliveries reached, message terminated).
-- Lives in `public`, not in the rebuilt read-model schema: its source is the advisories, not the stream.
create table failed_jobs (
  consumer text not null,
  stream_seq bigint not null,
  kind text not null check (kind in ('max_deliveries', 'terminated')),
  image_id uuid,
  event_type text,
  deliveries integer,
  reason text,
  failed_at timestamptz not null default now(),
  retried_at timestamptz,
  primary key (consumer, stream_seq)
);
create index failed_jobs_open on failed_jobs(failed_at desc) where retried_at is null;
