// From an S3 storage pool row to a client configuration (credentials stay inside this process).
import type { Pool } from '../pools.js';
import type { Sql } from '../db.js';
import type { S3PoolConfig } from './client.js';

export function s3ConfigOf(pool: Pool): S3PoolConfig {
  if (pool.storage_type !== 's3' || !pool.s3_bucket) throw new Error(`pool ${pool.name} is not an S3 pool`);
  return {
    bucket: pool.s3_bucket,
    region: pool.s3_region || 'us-east-1',
    endpoint: pool.s3_endpoint || null,
    accessKey: pool.s3_access_key ?? '',
    secretKey: pool.s3_secret_key ?? '',
    forcePathStyle: pool.s3_force_path_style,
    prefix: pool.s3_prefix,
  };
}

/** The backup target: the active S3 pool marked is_backup_target, else the active S3 pool with the highest priority. */
export async function backupTarget(sql: Sql): Promise<Pool | null> {
  const [pool] = await sql<Pool[]>`
    select * from storage_pools where storage_type = 's3' and is_active
    order by is_backup_target desc, priority desc, created_at limit 1`;
  return pool ?? null;
}
